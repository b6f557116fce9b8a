//! Stand-ins for the flow's external parties, for the demo and the tests: a payment gateway
//! that answers the attempts the saga initiates, and a warehouse that hands over (or, for
//! the customer, cancels) orders ready to be handed over. Both are consumer groups over the engine's topics
//! like the saga itself, so they survive a crash and a redelivery the same way: each answer
//! carries an idempotency key derived from what it answers, and is sent only while the thing
//! it answers is still current (the attempt in progress, the confirmed order).

use evershard_aggregates::order::{
    CancelOrder, CancelReason, FulfilOrder, Order, OrderCommand, OrderEvent, OrderStatus,
    TOPIC as ORDERS_TOPIC,
};
use evershard_aggregates::order_saga::OrderSaga;
use evershard_aggregates::payment::{
    AttemptOutcome, CompletePayment, FailPayment, Payment, PaymentCommand, PaymentEvent,
    TargetType, TOPIC as PAYMENTS_TOPIC,
};
use evershard_engine::model::{step_key, Aggregate, EventEnvelope, Metadata};
use evershard_engine::{
    repository, send_to, ConsumerOptions, Engine, HandlerError, Message, StartFrom, StreamId,
    Subscription, SubscriptionOptions, TopicError, SAGA_RETRY,
};
use std::future::Future;
use std::sync::Arc;
use uuid::Uuid;

/// The `source` of the stand-ins' commands.
pub const SIMULATION_SOURCE: &str = "evershard-simulation";

/// What the gateway answers to an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayAnswer {
    Complete,
    Fail(String),
    /// No answer (yet): the attempt stays in progress.
    Silent,
}

/// What the warehouse does with an order ready to be handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarehouseAction {
    Fulfil,
    /// The customer cancels the paid order (the saga refunds it).
    CustomerCancels,
    Hold,
}

fn read_one<A: Aggregate>(
    engine: &Engine,
    message: &Message,
) -> Result<EventEnvelope<A::Event>, HandlerError> {
    let stream = StreamId::new(A::TYPE, message.key().to_owned());
    repository::read_events::<A>(
        engine.journal(),
        &stream,
        message.sequence,
        message.sequence,
    )
    .next()
    .ok_or_else(|| HandlerError::Processing(format!("{stream}#{} not found", message.sequence)))?
    .map_err(|e| HandlerError::Processing(e.to_string()))
}

/// Members of each stand-in's consumer group: the partitions are shared among them, so
/// answers to different orders do not wait for each other.
pub const SIMULATION_GROUP_MEMBERS: usize = 4;

/// A running stand-in: the members of its consumer group.
#[derive(Debug)]
pub struct Party {
    members: Vec<Subscription>,
    engine: Engine,
    group: String,
    topic: String,
}

impl Party {
    fn start<H: evershard_engine::Handler + Clone>(
        engine: &Engine,
        group: &str,
        topic: &str,
        handler: H,
        start: StartFrom,
    ) -> Result<Party, TopicError> {
        let members = (0..SIMULATION_GROUP_MEMBERS)
            .map(|_| engine.subscribe_with(group, topic, handler.clone(), options(start)))
            .collect::<Result<_, _>>()?;
        Ok(Party {
            members,
            engine: engine.clone(),
            group: group.to_owned(),
            topic: topic.to_owned(),
        })
    }

    /// Messages of its topic not yet handled and committed by its group.
    pub fn lag(&self) -> Result<u64, TopicError> {
        Ok(self.engine.consumer_lag(&self.group, &self.topic)?.total())
    }

    /// Messages its members dead-lettered.
    pub fn dead_lettered(&self) -> u64 {
        self.members.iter().map(Subscription::dead_lettered).sum()
    }

    /// Stops every member (each commits first); returns the first error.
    pub async fn stop(self) -> Result<(), TopicError> {
        let mut first = Ok(());
        for member in self.members {
            let result = member.stop().await;
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// Starts a stand-in: consumer group `group` on `topic` (from `start` when the group never
/// committed) that hands each `event_type` event of `A`, read back whole from the store, to
/// `react`. Every other message is skipped.
fn react_to<A, F, Fut>(
    engine: &Engine,
    group: &str,
    topic: &str,
    event_type: &'static str,
    start: StartFrom,
    react: F,
) -> Result<Party, TopicError>
where
    A: Aggregate,
    F: Fn(Engine, EventEnvelope<A::Event>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let react = Arc::new(react);
    let handler_engine = engine.clone();
    let handler = move |message: Message| {
        let engine = handler_engine.clone();
        let react = react.clone();
        async move {
            if message.aggregate_type() != A::TYPE || message.event_type() != event_type {
                return Ok(());
            }
            let envelope = read_one::<A>(&engine, &message)?;
            react(engine, envelope).await
        }
    };
    Party::start(engine, group, topic, handler, start)
}

fn options(start: StartFrom) -> SubscriptionOptions {
    SubscriptionOptions {
        consumer: ConsumerOptions { start },
        retry: SAGA_RETRY,
        ..SubscriptionOptions::default()
    }
}

/// Starts a gateway (consumer group `group` on `business.payments`, from `start` when the
/// group never committed) that answers each attempt of an order payment with
/// `plan(payment id, attempt)`.
pub fn gateway(
    engine: &Engine,
    group: &str,
    start: StartFrom,
    plan: impl Fn(Uuid, u32) -> GatewayAnswer + Send + Sync + 'static,
) -> Result<Party, TopicError> {
    let plan = Arc::new(plan);
    let react = move |engine: Engine, envelope: EventEnvelope<PaymentEvent>| {
        let plan = plan.clone();
        async move {
            let PaymentEvent::PaymentInitiated(initiated) = envelope.payload else {
                return Ok(());
            };
            if initiated.target_type != TargetType::Order {
                return Ok(());
            }
            let id = initiated.payment_id.to_string();
            let command: PaymentCommand = match plan(initiated.payment_id, initiated.attempt) {
                GatewayAnswer::Complete => CompletePayment {
                    provider_reference: format!("psp-{id}-{}", initiated.attempt),
                    attempt: Some(initiated.attempt),
                }
                .into(),
                GatewayAnswer::Fail(reason) => FailPayment {
                    reason,
                    attempt: Some(initiated.attempt),
                }
                .into(),
                GatewayAnswer::Silent => return Ok(()),
            };
            // Answer only the attempt still in progress: a redelivered initiation of an
            // attempt already answered must not answer the next one.
            let (state, _) = engine
                .state::<Payment>(&id)
                .await
                .map_err(|e| HandlerError::Processing(e.to_string()))?;
            let current = state.attempts.last().is_some_and(|a| {
                a.attempt == initiated.attempt && a.outcome == AttemptOutcome::Pending
            });
            if !current {
                return Ok(());
            }
            let key = step_key("gateway", &id, &format!("answer:{}", initiated.attempt));
            let metadata = Metadata::new(SIMULATION_SOURCE)
                .correlation_id(envelope.correlation_id)
                .causation_id(envelope.event_id)
                .idempotency_key(key);
            send_to::<Payment>(&engine, &id, command, metadata).await?;
            Ok(())
        }
    };
    react_to::<Payment, _, _>(
        engine,
        group,
        PAYMENTS_TOPIC,
        "PaymentInitiated",
        start,
        react,
    )
}

/// Starts a warehouse (consumer group `group` on `business.orders`, from `start` when the
/// group never committed) that does `plan(order id)` with each order ready to be handed over
/// (`OrderReadyForFulfilment`: paid, and every line's reservation confirmed by its stock).
pub fn warehouse(
    engine: &Engine,
    group: &str,
    start: StartFrom,
    plan: impl Fn(Uuid) -> WarehouseAction + Send + Sync + 'static,
) -> Result<Party, TopicError> {
    let plan = Arc::new(plan);
    let react = move |engine: Engine, envelope: EventEnvelope<OrderEvent>| {
        let plan = plan.clone();
        async move {
            let OrderEvent::OrderReadyForFulfilment(ready) = envelope.payload else {
                return Ok(());
            };
            let command: OrderCommand = match plan(ready.order_id) {
                WarehouseAction::Fulfil => FulfilOrder.into(),
                WarehouseAction::CustomerCancels => CancelOrder {
                    reason: CancelReason::CustomerRequest,
                }
                .into(),
                WarehouseAction::Hold => return Ok(()),
            };
            let id = ready.order_id.to_string();
            let (state, _) = engine
                .state::<Order>(&id)
                .await
                .map_err(|e| HandlerError::Processing(e.to_string()))?;
            if state.status() != Some(OrderStatus::Confirmed) {
                return Ok(());
            }
            let metadata = Metadata::new(SIMULATION_SOURCE)
                .correlation_id(envelope.correlation_id)
                .causation_id(envelope.event_id)
                .idempotency_key(step_key("warehouse", &id, "handover"));
            send_to::<Order>(&engine, &id, command, metadata).await?;
            Ok(())
        }
    };
    react_to::<Order, _, _>(
        engine,
        group,
        ORDERS_TOPIC,
        "OrderReadyForFulfilment",
        start,
        react,
    )
}

/// Why settling could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    #[error("reading the store: {0}")]
    Storage(#[from] evershard_engine::StorageError),
    #[error("reading an aggregate through the engine: {0}")]
    State(String),
    #[error("firing timers: {0}")]
    Timers(#[from] evershard_engine::EngineError),
    #[error("the sagas did not become idle within {seconds} s")]
    NotIdle { seconds: u64 },
}

fn ids_of(engine: &Engine, aggregate_type: &str) -> Result<Vec<String>, SettleError> {
    engine
        .journal()
        .streams(Some(aggregate_type))
        .map(|s| Ok(s?.0.aggregate_id))
        .collect()
}

/// The gateway gives up on every attempt it never answered: fails each attempt still in
/// progress (`FailPayment`, "abandoned by the gateway"). Returns how many.
pub async fn abandon_open_attempts(engine: &Engine) -> Result<usize, SettleError> {
    let mut abandoned = 0;
    for id in ids_of(engine, Payment::TYPE)? {
        let (state, _) = engine
            .state::<Payment>(&id)
            .await
            .map_err(|e| SettleError::State(e.to_string()))?;
        let Some(open) = state
            .attempts
            .last()
            .filter(|a| a.outcome == AttemptOutcome::Pending)
        else {
            continue;
        };
        // Names the attempt read: a retry started meanwhile is not failed in its place.
        let fail = FailPayment {
            reason: "abandoned by the gateway".into(),
            attempt: Some(open.attempt),
        };
        // A refusal means the attempt was answered meanwhile: nothing to abandon.
        if let Ok(events) = engine.execute::<Payment>(&id, fail).await {
            abandoned += usize::from(!events.is_empty());
        }
    }
    Ok(abandoned)
}

/// Sagas that have not finished.
pub async fn unfinished_sagas(engine: &Engine) -> Result<usize, SettleError> {
    let mut unfinished = 0;
    for id in ids_of(engine, OrderSaga::TYPE)? {
        let (state, _) = engine
            .state::<OrderSaga>(&id)
            .await
            .map_err(|e| SettleError::State(e.to_string()))?;
        if state.saga.is_none_or(|s| s.outcome.is_none()) {
            unfinished += 1;
        }
    }
    Ok(unfinished)
}

/// Waits (a bounded poll, at most `timeout`) until the runner is idle
/// ([`SagaRunner::wait_idle`](evershard_engine::SagaRunner::wait_idle)) and so is every one
/// of `parties` (its group handled and committed everything), with nothing committed
/// meanwhile. The runner's idleness alone does not say the parties answered: a warehouse in
/// a retry's back-off still owes an answer the checker and [`settle`] wait for
/// (docs/saga.md). True if reached.
pub async fn wait_quiet(
    engine: &Engine,
    runner: &evershard_engine::SagaRunner,
    parties: &[&Party],
    timeout: std::time::Duration,
) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < timeout {
        let position = engine.journal().durable_position();
        let left = timeout.saturating_sub(started.elapsed());
        if runner.wait_idle(left).await
            && parties.iter().all(|p| p.lag().is_ok_and(|lag| lag == 0))
            && engine.journal().durable_position() == position
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    false
}

/// Lets the sagas finish: up to `rounds_max` times, the gateway abandons what it left open,
/// `advance` moves the engine's clock by `step`, due timers fire, and the runner and
/// `parties` are waited for ([`wait_quiet`], at most `idle_wait` per round); stops when no
/// saga is unfinished. Returns the sagas still unfinished (0 when settled).
pub async fn settle(
    engine: &Engine,
    runner: &evershard_engine::SagaRunner,
    parties: &[&Party],
    advance: &(dyn Fn(chrono::TimeDelta) + Sync),
    step: chrono::TimeDelta,
    rounds_max: usize,
    idle_wait: std::time::Duration,
) -> Result<usize, SettleError> {
    // The parties answer what came before (a warehouse in a retry's back-off): an order
    // still waiting for them is not a saga to abandon attempts and move the clock for.
    if !wait_quiet(engine, runner, parties, idle_wait).await {
        return Err(SettleError::NotIdle {
            seconds: idle_wait.as_secs(),
        });
    }
    let mut unfinished = unfinished_sagas(engine).await?;
    for _ in 0..rounds_max {
        if unfinished == 0 {
            break;
        }
        abandon_open_attempts(engine).await?;
        advance(step);
        engine.run_due_timers().await?;
        if !wait_quiet(engine, runner, parties, idle_wait).await {
            return Err(SettleError::NotIdle {
                seconds: idle_wait.as_secs(),
            });
        }
        unfinished = unfinished_sagas(engine).await?;
    }
    Ok(unfinished)
}
