//! One aggregate instance as an actor. It recovers lazily on its first message, so spawning
//! one is cheap and recoveries of different aggregates run in parallel.

use super::Runtime;
use crate::error::{AppendError, CommandError, LoadError};
use crate::journal::{AppendRequest, NewEvent, StreamId};
use crate::recovery as repository;
use crate::snapshots::SnapshotJob;
use evershard_model::{Aggregate, DecideContext, DomainEvent, EventEnvelope, Metadata};
use evershard_snapshots::SnapshotRecord;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use uuid::Uuid;

pub(crate) type ExecuteResult<A> =
    Result<Vec<EventEnvelope<<A as Aggregate>::Event>>, CommandError<<A as Aggregate>::Error>>;
pub(crate) type StateResult<A> =
    Result<(<A as Aggregate>::State, u64), CommandError<<A as Aggregate>::Error>>;

pub(crate) enum EntityMsg<A: Aggregate> {
    Execute {
        command: A::Command,
        metadata: Metadata,
        reply: oneshot::Sender<ExecuteResult<A>>,
    },
    GetState {
        reply: oneshot::Sender<StateResult<A>>,
    },
}

impl<A: Aggregate> EntityMsg<A> {
    /// Answers the message with an error without handling it.
    pub fn reject(self, err: CommandError<A::Error>) {
        match self {
            EntityMsg::Execute { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            EntityMsg::GetState { reply } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// An invariant an aggregate's state broke, and the sequence it was found at.
#[derive(Clone, Debug)]
pub(crate) struct Violation {
    invariant: String,
    sequence: u64,
}

impl Violation {
    pub fn error<E: std::error::Error>(&self, stream: StreamId) -> CommandError<E> {
        CommandError::InvariantViolated {
            stream,
            invariant: self.invariant.clone(),
            sequence: self.sequence,
        }
    }
}

/// The aggregates of one shard that broke an invariant, by id. Shared by the shard (which
/// outlives its entities, so passivation cannot clear it) and its entities (which record).
#[derive(Clone, Debug, Default)]
pub(crate) struct Violations(Arc<Mutex<HashMap<String, Violation>>>);

impl Violations {
    pub fn get(&self, id: &str) -> Option<Violation> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn record(&self, id: &str, violation: Violation) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id.to_owned(), violation);
    }
}

pub(crate) struct EntityActor<A>(PhantomData<fn() -> A>);

impl<A> EntityActor<A> {
    pub fn new() -> Self {
        EntityActor(PhantomData)
    }
}

pub(crate) struct EntityArgs {
    pub stream: StreamId,
    pub rt: Arc<Runtime>,
    /// Commands routed to this entity and not yet answered; the shard reads it to bound
    /// the mailbox and to passivate only idle entities.
    pub inflight: Arc<AtomicUsize>,
    /// Where this entity records a broken invariant (see [`Violations`]).
    pub violations: Violations,
}

pub(crate) struct EntityState<A: Aggregate> {
    args: EntityArgs,
    /// `None` until recovered, and again after a panic or a conflict: the next message
    /// recovers from the journal.
    loaded: Option<(A::State, u64)>,
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

impl<A: Aggregate> EntityState<A> {
    /// Refuses once the state broke an invariant; recovers the state when it is not loaded.
    fn ensure_loaded(&mut self) -> Result<(), CommandError<A::Error>> {
        let stream = &self.args.stream;
        if self.loaded.is_none() {
            // A violation leaves the state unloaded, so every later message comes here.
            if let Some(violation) = self.args.violations.get(&stream.aggregate_id) {
                return Err(violation.error(stream.clone()));
            }
            let loaded = match repository::load::<A>(&self.args.rt.journal, stream, u64::MAX, true)
            {
                Ok(loaded) => loaded,
                Err(LoadError::InvariantViolated {
                    invariant,
                    sequence,
                    ..
                }) => {
                    let violation = Violation {
                        invariant,
                        sequence,
                    };
                    self.args
                        .violations
                        .record(&stream.aggregate_id, violation.clone());
                    return Err(violation.error(stream.clone()));
                }
                Err(e) => return Err(CommandError::from_load(e)),
            };
            tracing::debug!(
                stream = %self.args.stream,
                version = loaded.version,
                from_snapshot = ?loaded.from_snapshot,
                replayed = loaded.events_replayed,
                "recovered"
            );
            self.loaded = Some((loaded.state, loaded.version));
        }
        Ok(())
    }

    async fn execute(&mut self, command: A::Command, metadata: Metadata) -> ExecuteResult<A> {
        self.ensure_loaded()?;
        let rt = self.args.rt.clone();
        let (state, version) = self.loaded.as_ref().expect("loaded above");
        let version = *version;
        // `DecideContext::new` keeps the store's resolution, so what `decide` saw is stored.
        let ctx = DecideContext::new(self.args.stream.aggregate_id.clone(), rt.clock.now());
        let events = match catch_unwind(AssertUnwindSafe(|| A::decide(state, &command, &ctx))) {
            Err(panic) => {
                self.loaded = None;
                let message = panic_message(panic);
                tracing::error!(stream = %self.args.stream, %message, "decide panicked; nothing written");
                return Err(CommandError::HandlerPanicked {
                    stream: self.args.stream.clone(),
                    message,
                });
            }
            Ok(Err(rejection)) => return Err(CommandError::Rejected(rejection)),
            Ok(Ok(events)) => events,
        };
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let new_events = events
            .iter()
            .map(|event| NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                event_version: event.event_version().to_owned(),
                timestamp: ctx.now,
                correlation_id: metadata.correlation_id,
                causation_id: metadata.causation_id,
                source: metadata.source.clone(),
                user_id: metadata.user_id.clone(),
                payload: A::encode_event(event),
            })
            .collect();
        let request = AppendRequest::new(self.args.stream.clone(), version, new_events);
        let committed = match rt.journal.append(request).await {
            Ok(c) => c,
            Err(e) => {
                // A conflict means someone else wrote this stream; a storage error leaves it
                // unknown whether sled holds the events. Either way: reload before deciding
                // again.
                if !matches!(e, AppendError::InvalidRequest(_)) {
                    self.loaded = None;
                }
                return Err(CommandError::from_append(e));
            }
        };
        assert_eq!(
            committed.version,
            version + events.len() as u64,
            "journal skipped sequences"
        );

        // From here on the events are committed: whatever happens, the answer is Ok with
        // them. A panic in `apply`, the invariant check or the snapshot clone only costs the
        // in-memory copy, which the next command rebuilds from the journal (and meets the
        // same panic, as a storage error, if `apply` itself is broken).
        self.after_commit(&events, version, committed.version);
        Ok(committed
            .records
            .into_iter()
            .zip(events)
            .map(|(record, event)| repository::envelope(record, event))
            .collect())
    }
}

impl<A: Aggregate> EntityState<A> {
    /// Applies committed events to the in-memory state, checks the invariants and hands a
    /// snapshot to the writer when one is due. Never fails the command: the events stand.
    fn after_commit(&mut self, events: &[A::Event], version: u64, new_version: u64) {
        let rt = self.args.rt.clone();
        let stream = &self.args.stream;
        let loaded = &mut self.loaded;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let (state, loaded_version) = loaded.as_mut().expect("loaded before deciding");
            for event in events {
                A::apply(state, event);
            }
            A::check_invariants(state)?;
            *loaded_version = new_version;
            if rt.snapshot_policy.is_due(version, new_version) {
                let snapshot_state = state.clone();
                rt.snapshotter.submit(SnapshotJob {
                    stream: stream.clone(),
                    sequence: new_version,
                    encode: Box::new(move || {
                        SnapshotRecord::encode_state(
                            A::STATE_SCHEMA_VERSION,
                            new_version,
                            &snapshot_state,
                        )
                    }),
                });
            }
            Ok(())
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(invariant)) => {
                // A bug in decide: it produced events that break an invariant. The events
                // stand (they are committed facts); this aggregate refuses every further
                // command and state read, typed, until the engine is reopened — and recovery
                // then finds the violation again, until the code (and the data) is fixed.
                tracing::error!(%stream, %invariant, sequence = new_version, "invariant broken after commit; the aggregate refuses further commands");
                self.loaded = None;
                let violation = Violation {
                    invariant,
                    sequence: new_version,
                };
                self.args.violations.record(&stream.aggregate_id, violation);
            }
            Err(panic) => {
                self.loaded = None;
                tracing::error!(%stream, message = %panic_message(panic), "panic after commit; state will be recovered");
            }
        }
    }
}

impl<A: Aggregate> Actor for EntityActor<A> {
    type Msg = EntityMsg<A>;
    type State = EntityState<A>;
    type Arguments = EntityArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: EntityArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(EntityState { args, loaded: None })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EntityMsg::Execute {
                command,
                metadata,
                reply,
            } => {
                let result = state.execute(command, metadata).await;
                let _ = reply.send(result);
            }
            EntityMsg::GetState { reply } => {
                let result = state
                    .ensure_loaded()
                    .map(|()| state.loaded.clone().expect("loaded"));
                let _ = reply.send(result);
            }
        }
        // Only after the reply: the shard may passivate us once this reaches zero.
        state.args.inflight.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }
}
