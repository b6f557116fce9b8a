//! The saga runner: drives a [`Saga`] (a process manager that is itself an aggregate) from the
//! engine's own topics, with consumer groups — no in-memory callbacks.
//!
//! A runner is two kinds of subscriptions (see docs/saga.md):
//!
//! - **observers**, one consumer group per observed topic
//!   (`{prefix}.observe.{topic}`, prefix `saga.{Saga::TYPE}` unless
//!   [`SagaBuilder::group_prefix`] says otherwise): each message of a registered aggregate type is read
//!   back from the journal as a typed envelope, mapped by the saga author's function to
//!   `(saga id, command)`, and executed on the saga with an idempotency key derived from the
//!   observed event's id. A domain rejection of that command means "not this saga's
//!   business" (an event no saga started, a repeat the saga refuses) and is skipped.
//! - the **dispatcher**, one consumer group on the saga's own topic
//!   (`{prefix}.dispatch`): for each saga event it sends the commands of
//!   [`Saga::outbox`], in order, through the saga author's dispatch function, each with the
//!   idempotency key [`step_key`]`(saga type, saga id, step)`. A command the target rejects is
//!   reported back to the saga (the author's `on_rejected` turns it into a saga command),
//!   under an idempotency key derived from the step and the error, so the saga can
//!   compensate. A saga must treat a second report of a step's rejection as a repeat.
//!
//! Both are at-least-once (a crash redelivers from the group's committed offset); the keys
//! make every redelivery a repeat that writes nothing, so a command takes effect once.

use crate::engine::Engine;
use crate::error::CommandError;
use crate::topics::{
    Handler, HandlerError, Message, RetryPolicy, Subscription, SubscriptionOptions, TopicError,
};
use evershard_model::{step_key, Aggregate, EventEnvelope, Metadata, Outbound, Saga, StreamId};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A boxed, sendable future, as dispatch functions return it.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The `source` of every command a saga runner executes.
pub const SAGA_SOURCE_PREFIX: &str = "evershard-saga:";

/// One command of a saga's outbox, ready to send.
#[derive(Clone, Debug)]
pub struct SagaSend<C> {
    /// The saga instance that sends it.
    pub saga_id: String,
    /// The step name (unique within the saga instance).
    pub step: String,
    pub command: C,
    /// Correlation = the saga event's, causation = the saga event's id, idempotency key =
    /// [`step_key`] of the step: pass it unchanged to `Engine::execute_with`.
    pub metadata: Metadata,
}

/// What became of a sent command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Executed (or answered as a repeat of its key).
    Done,
    /// The target refused it; the text of its typed error is reported to the saga.
    Rejected(String),
}

/// A command a saga sent was rejected: what the saga's `on_rejected` is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedStep {
    pub saga_id: String,
    /// The saga event whose outbox held the command.
    pub saga_event_type: String,
    pub saga_sequence: u64,
    pub step: String,
    pub error: String,
}

type Observer<S> = Arc<
    dyn Fn(
            &Engine,
            &Message,
        ) -> Result<Option<(String, <S as Aggregate>::Command, Metadata)>, HandlerError>
        + Send
        + Sync,
>;
type Dispatch<S> = Arc<
    dyn Fn(Engine, SagaSend<<S as Saga>::Outbound>) -> BoxFuture<Result<Sent, HandlerError>>
        + Send
        + Sync,
>;
type OnRejected<S> = Arc<dyn Fn(&RejectedStep) -> <S as Aggregate>::Command + Send + Sync>;

/// Executes a saga's outbound command on aggregate type `A` and classifies the outcome: the
/// building block of a dispatch function. A domain rejection is [`Sent::Rejected`]; a
/// retryable or storage error is a `Processing` error (the subscription retries it); an
/// idempotency conflict (a step name reused for another command: a bug in the saga) is a
/// `Validation` error (dead-lettered).
pub async fn send_to<A: Aggregate>(
    engine: &Engine,
    aggregate_id: &str,
    command: impl Into<A::Command>,
    metadata: Metadata,
) -> Result<Sent, HandlerError> {
    match engine
        .execute_with::<A>(aggregate_id, command, metadata)
        .await
    {
        Ok(_) => Ok(Sent::Done),
        Err(CommandError::Rejected(e)) => Ok(Sent::Rejected(e.to_string())),
        Err(e @ CommandError::IdempotencyConflict { .. }) => {
            Err(HandlerError::Validation(e.to_string()))
        }
        Err(e) => Err(HandlerError::Processing(e.to_string())),
    }
}

/// Builds a [`SagaRunner`] for saga type `S`: see the module docs.
pub struct SagaBuilder<S: Saga> {
    engine: Engine,
    saga_topic: String,
    observers: BTreeMap<String, Vec<(&'static str, Observer<S>)>>,
    dispatch: Option<Dispatch<S>>,
    on_rejected: Option<OnRejected<S>>,
    options: SubscriptionOptions,
    group_prefix: String,
    members: usize,
}

/// Members per consumer group of a saga runner by default: the partitions of a topic are
/// shared among them (8 by default), so steps of different sagas run in parallel while the
/// steps of one saga (one partition) stay in order.
pub const SAGA_GROUP_MEMBERS: usize = 4;

impl<S: Saga> std::fmt::Debug for SagaBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaBuilder")
            .field("saga", &S::TYPE)
            .field("saga_topic", &self.saga_topic)
            .field(
                "observed_topics",
                &self.observers.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The retries of a saga's subscriptions: a failed step stays in order until it succeeds, so
/// the default gives up late (20 attempts, 50 ms doubling to 5 s: about a minute and a half).
pub const SAGA_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 20,
    initial_backoff_ms: 50,
    multiplier: 2.0,
    max_backoff_ms: 5_000,
};

impl<S: Saga> SagaBuilder<S> {
    /// A runner of `S`, whose events are published on `saga_topic`.
    pub fn new(engine: &Engine, saga_topic: impl Into<String>) -> Self {
        Self {
            engine: engine.clone(),
            saga_topic: saga_topic.into(),
            observers: BTreeMap::new(),
            dispatch: None,
            on_rejected: None,
            options: SubscriptionOptions {
                retry: SAGA_RETRY,
                ..SubscriptionOptions::default()
            },
            group_prefix: format!("saga.{}", S::TYPE),
            members: SAGA_GROUP_MEMBERS,
        }
    }

    /// Members per consumer group (default [`SAGA_GROUP_MEMBERS`], at least 1).
    pub fn members(mut self, members: usize) -> Self {
        self.members = members.max(1);
        self
    }

    /// The prefix of the runner's consumer group names (default `saga.{Saga::TYPE}`). A runner
    /// under another prefix is another set of groups, with offsets of its own: two runners of
    /// one saga type under different prefixes would both act on every event.
    pub fn group_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.group_prefix = prefix.into();
        self
    }

    /// Feeds the events of aggregate type `A` published on `topic` to the saga: `map` names
    /// the saga instance and the command that reports the event, or `None` to ignore it.
    pub fn observe<A: Aggregate>(
        mut self,
        topic: impl Into<String>,
        map: impl Fn(&EventEnvelope<A::Event>) -> Option<(String, S::Command)> + Send + Sync + 'static,
    ) -> Self {
        let observer: Observer<S> = Arc::new(move |engine: &Engine, message: &Message| {
            let stream = StreamId::new(A::TYPE, message.key().to_owned());
            let envelope = crate::recovery::read_events::<A>(
                engine.journal(),
                &stream,
                message.sequence,
                message.sequence,
            )
            .next()
            .ok_or_else(|| {
                HandlerError::Processing(format!(
                    "{stream}#{} is on the topic but not in the journal",
                    message.sequence
                ))
            })?
            .map_err(|e| HandlerError::Processing(e.to_string()))?;
            Ok(map(&envelope).map(|(saga_id, command)| {
                let key = step_key(S::TYPE, &saga_id, &format!("observe:{}", envelope.event_id));
                let metadata = Metadata::new(format!("{SAGA_SOURCE_PREFIX}{}", S::TYPE))
                    .correlation_id(envelope.correlation_id)
                    .causation_id(envelope.event_id)
                    .idempotency_key(key);
                (saga_id, command, metadata)
            }))
        });
        self.observers
            .entry(topic.into())
            .or_default()
            .push((A::TYPE, observer));
        self
    }

    /// How the saga's outbound commands are executed: usually a `match` over the saga's
    /// command enum that calls [`send_to`] for the target type.
    pub fn dispatch(
        mut self,
        dispatch: impl Fn(Engine, SagaSend<S::Outbound>) -> BoxFuture<Result<Sent, HandlerError>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.dispatch = Some(Arc::new(dispatch));
        self
    }

    /// The saga command that reports a rejected step to the saga.
    pub fn on_rejected(
        mut self,
        report: impl Fn(&RejectedStep) -> S::Command + Send + Sync + 'static,
    ) -> Self {
        self.on_rejected = Some(Arc::new(report));
        self
    }

    /// The subscriptions' options (default: [`SAGA_RETRY`], otherwise
    /// `SubscriptionOptions::default()`: start at the committed offset).
    pub fn options(mut self, options: SubscriptionOptions) -> Self {
        self.options = options;
        self
    }

    /// Starts the subscriptions. Fails if a topic cannot be consumed (topics disabled, an
    /// unknown topic) or if `dispatch` or `on_rejected` was not given.
    pub fn start(self) -> Result<SagaRunner, SagaStartError> {
        let dispatch = self.dispatch.ok_or(SagaStartError::MissingDispatch)?;
        let on_rejected = self.on_rejected.ok_or(SagaStartError::MissingOnRejected)?;
        let mut subscriptions = Vec::new();
        let mut handlers: Vec<(String, Arc<dyn Handler>)> = Vec::new();
        for (topic, observers) in self.observers {
            let group = format!("{}.observe.{topic}", self.group_prefix);
            let engine = self.engine.clone();
            let observers = Arc::new(observers);
            let handler = move |message: Message| {
                let engine = engine.clone();
                let observers = observers.clone();
                async move { observe_one::<S>(&engine, &observers, message).await }
            };
            handlers.push((group.clone(), Arc::new(handler.clone())));
            for _ in 0..self.members {
                let subscription =
                    self.engine
                        .subscribe_with(&group, &topic, handler.clone(), self.options)?;
                subscriptions.push((group.clone(), topic.clone(), subscription));
            }
        }
        let group = format!("{}.dispatch", self.group_prefix);
        let engine = self.engine.clone();
        let handler = move |message: Message| {
            let engine = engine.clone();
            let dispatch = dispatch.clone();
            let on_rejected = on_rejected.clone();
            async move { dispatch_one::<S>(&engine, &dispatch, &on_rejected, message).await }
        };
        handlers.push((group.clone(), Arc::new(handler.clone())));
        for _ in 0..self.members {
            let subscription = self.engine.subscribe_with(
                &group,
                &self.saga_topic,
                handler.clone(),
                self.options,
            )?;
            subscriptions.push((group.clone(), self.saga_topic.clone(), subscription));
        }
        Ok(SagaRunner {
            engine: self.engine,
            subscriptions,
            handlers,
        })
    }
}

/// Why a saga runner did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaStartError {
    #[error("a saga runner needs a dispatch function")]
    MissingDispatch,
    #[error("a saga runner needs an on_rejected function")]
    MissingOnRejected,
    #[error(transparent)]
    Topic(#[from] TopicError),
}

async fn observe_one<S: Saga>(
    engine: &Engine,
    observers: &[(&'static str, Observer<S>)],
    message: Message,
) -> Result<(), HandlerError> {
    for (aggregate_type, observer) in observers {
        if *aggregate_type != message.aggregate_type() {
            continue;
        }
        let Some((saga_id, command, metadata)) = observer(engine, &message)? else {
            continue;
        };
        match engine.execute_with::<S>(&saga_id, command, metadata).await {
            Ok(_) => {}
            // Not this saga's business (see the module docs): skipped, like an event no
            // observer maps.
            Err(CommandError::Rejected(e)) => {
                tracing::debug!(saga = S::TYPE, %saga_id, error = %e, event = %message.event_id, "observation skipped")
            }
            Err(e @ CommandError::IdempotencyConflict { .. }) => {
                return Err(HandlerError::Validation(e.to_string()))
            }
            Err(e) => return Err(HandlerError::Processing(e.to_string())),
        }
    }
    Ok(())
}

/// Sends one outbound command of a saga event under its step's key.
async fn send_step<S: Saga>(
    engine: &Engine,
    dispatch: &Dispatch<S>,
    envelope: &EventEnvelope<S::Event>,
    source: &str,
    outbound: &Outbound<S::Outbound>,
) -> Result<Sent, HandlerError> {
    let metadata = Metadata::new(source.to_owned())
        .correlation_id(envelope.correlation_id)
        .causation_id(envelope.event_id)
        .idempotency_key(step_key(S::TYPE, &envelope.aggregate_id, &outbound.step));
    let send = SagaSend {
        saga_id: envelope.aggregate_id.clone(),
        step: outbound.step.clone(),
        command: outbound.command.clone(),
        metadata,
    };
    dispatch(engine.clone(), send).await
}

async fn dispatch_one<S: Saga>(
    engine: &Engine,
    dispatch: &Dispatch<S>,
    on_rejected: &OnRejected<S>,
    message: Message,
) -> Result<(), HandlerError> {
    if message.aggregate_type() != S::TYPE {
        return Ok(());
    }
    let stream = StreamId::new(S::TYPE, message.key().to_owned());
    let envelope = crate::recovery::read_events::<S>(
        engine.journal(),
        &stream,
        message.sequence,
        message.sequence,
    )
    .next()
    .ok_or_else(|| {
        HandlerError::Processing(format!(
            "{stream}#{} is on the topic but not in the journal",
            message.sequence
        ))
    })?
    .map_err(|e| HandlerError::Processing(e.to_string()))?;
    let source = format!("{SAGA_SOURCE_PREFIX}{}", S::TYPE);
    // The step before this one in the outbox and its refusal, if it was refused.
    let mut refused: Option<(String, String)> = None;
    for outbound in S::outbox(&envelope.payload) {
        let skipped = match (&refused, outbound.only_if_previous_accepted) {
            (Some((step, error)), true) => Some(format!("not sent: {step} was refused: {error}")),
            _ => None,
        };
        let error = match skipped {
            Some(error) => error,
            None => match send_step::<S>(engine, dispatch, &envelope, &source, &outbound).await? {
                Sent::Rejected(error) => error,
                Sent::Done => {
                    refused = None;
                    continue;
                }
            },
        };
        refused = Some((outbound.step.clone(), error.clone()));
        let rejected = RejectedStep {
            saga_id: envelope.aggregate_id.clone(),
            saga_event_type: envelope.event_type.clone(),
            saga_sequence: envelope.sequence,
            step: outbound.step.clone(),
            error,
        };
        let metadata = Metadata::new(source.clone())
            .correlation_id(envelope.correlation_id)
            .causation_id(envelope.event_id)
            // The error text is part of the key: a redelivered command is decided afresh
            // (a rejection records nothing) and may be refused with another text (another
            // available quantity); that report is another command, which the saga
            // recognises as a repeat of the step's rejection.
            .idempotency_key(step_key(
                S::TYPE,
                &envelope.aggregate_id,
                &format!("rejected:{}:{}", outbound.step, rejected.error),
            ));
        match engine
            .execute_with::<S>(&envelope.aggregate_id, on_rejected(&rejected), metadata)
            .await
        {
            Ok(_) => {}
            Err(CommandError::Rejected(e)) => {
                tracing::debug!(saga = S::TYPE, saga_id = %envelope.aggregate_id, step = %outbound.step, error = %e, "rejection report skipped")
            }
            Err(e @ CommandError::IdempotencyConflict { .. }) => {
                return Err(HandlerError::Validation(e.to_string()))
            }
            Err(e) => return Err(HandlerError::Processing(e.to_string())),
        }
    }
    Ok(())
}

/// A running saga: its subscriptions. `stop` commits and stops them; dropping it aborts them
/// (what was not committed is redelivered at the next start — harmless, see the module docs).
pub struct SagaRunner {
    engine: Engine,
    /// (group, topic, subscription)
    subscriptions: Vec<(String, String, Subscription)>,
    /// Each group's handler, for [`SagaRunner::redrive`].
    handlers: Vec<(String, Arc<dyn Handler>)>,
}

impl std::fmt::Debug for SagaRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaRunner")
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

impl SagaRunner {
    /// A builder for saga type `S` on `engine`.
    pub fn builder<S: Saga>(engine: &Engine, saga_topic: impl Into<String>) -> SagaBuilder<S> {
        SagaBuilder::new(engine, saga_topic)
    }

    /// The consumer groups of this runner, with their topics.
    pub fn groups(&self) -> Vec<(String, String)> {
        let mut groups: Vec<_> = self
            .subscriptions
            .iter()
            .map(|(g, t, _)| (g.clone(), t.clone()))
            .collect();
        groups.dedup();
        groups
    }

    /// Messages its subscriptions dead-lettered (a step that kept failing): each is a saga
    /// that will not move on by itself.
    pub fn dead_lettered(&self) -> u64 {
        self.subscriptions
            .iter()
            .map(|(_, _, s)| s.dead_lettered())
            .sum()
    }

    /// The total committed lag of its groups.
    pub fn lag(&self) -> Result<u64, TopicError> {
        let groups: std::collections::BTreeSet<_> =
            self.subscriptions.iter().map(|(g, t, _)| (g, t)).collect();
        let mut lag = 0;
        for (group, topic) in groups {
            lag += self.engine.consumer_lag(group, topic)?.total();
        }
        Ok(lag)
    }

    /// Waits (a bounded poll, at most `timeout`) until everything committed so far is indexed
    /// and handled by every group of the runner, and nothing new was committed meanwhile:
    /// the sagas are quiet until new input (a command, a due timer). True if reached.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            let position = self.engine.journal().durable_position();
            let left = timeout.saturating_sub(started.elapsed());
            if self.engine.wait_indexed(position, left).await
                && self.lag().is_ok_and(|lag| lag == 0)
                && self.engine.journal().durable_position() == position
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Hands the message of a dead letter of this runner (a message of `dlq.events.v1` whose
    /// group is one of [`SagaRunner::groups`]) to that group's handler again, once, as
    /// [`Engine::redrive`] does; returns the handler's outcome. A step that kept failing
    /// (its target down, a full disk) was dead-lettered and its saga waits: once the cause
    /// is gone, this moves it on. Steps are idempotent (their keys), so re-driving one that
    /// took effect meanwhile does nothing twice. A letter of another group is
    /// `TopicError::NotDeadLetter`.
    pub async fn redrive(
        &self,
        dead_letter: &Message,
    ) -> Result<Result<(), HandlerError>, TopicError> {
        let letter = crate::topics::DeadLetter::from_message(dead_letter)?;
        let Some((_, handler)) = self
            .handlers
            .iter()
            .find(|(group, _)| *group == letter.consumer_group)
        else {
            return Err(TopicError::NotDeadLetter {
                reason: format!(
                    "a dead letter of group {}, not of this saga runner",
                    letter.consumer_group
                ),
            });
        };
        let handler = handler.clone();
        self.engine
            .redrive(dead_letter, &move |message: Message| {
                handler.handle(message)
            })
            .await
    }

    /// Stops every subscription (each commits first); returns the first error.
    pub async fn stop(self) -> Result<(), TopicError> {
        let mut first = Ok(());
        for (_, _, subscription) in self.subscriptions {
            let result = subscription.stop().await;
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}
