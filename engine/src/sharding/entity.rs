//! One aggregate instance as an actor. It recovers lazily on its first message, so spawning
//! one is cheap and recoveries of different aggregates run in parallel.

use super::Runtime;
use crate::crypto::DataKey;
use crate::error::{CommandError, LoadError, UnavailableReason};
use crate::journal::{keys, AppendRequest, NewEvent, Seal, StreamId, WriteOp};
use crate::recovery as repository;
use crate::snapshots::{SkipReason, SnapshotJob};
use evershard_model::{
    Aggregate, CommandGuard, DecideContext, DomainEvent, EventEnvelope, Metadata,
};
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

/// The guard of an aggregate type (see [`CommandGuard`]).
pub(crate) type Guard<A> = Arc<dyn CommandGuard<A>>;

pub(crate) enum EntityMsg<A: Aggregate> {
    Execute {
        command: A::Command,
        metadata: Metadata,
        /// The type's guard: asked by the aggregate once it knows the command is not an
        /// idempotent repeat, at the time `decide` sees (see `EntityState::execute`).
        guard: Option<Guard<A>>,
        reply: oneshot::Sender<ExecuteResult<A>>,
    },
    GetState {
        reply: oneshot::Sender<StateResult<A>>,
    },
    /// The scheduler found this aggregate's timer due (its `t` entry at `deadline`,
    /// microseconds): execute the command the current state asks for, if its deadline is
    /// due. Answers whether a timer command ran.
    FireTimer {
        deadline: i64,
        reply: oneshot::Sender<Result<bool, CommandError<A::Error>>>,
    },
    /// The shard passivated this actor's aggregate (idle: nothing in flight, out of the
    /// routing table) and hands the actor another one, whose commands follow in the
    /// mailbox: the state of the one before is dropped, as a stop would drop it. Spawning
    /// an actor for a new aggregate and stopping the one it replaced were 12% of the CPU of
    /// the durable bench over 400,000 aggregates (2026-11-27, perf). Not counted in flight.
    Rebind {
        stream: StreamId,
        inflight: Arc<AtomicUsize>,
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
            EntityMsg::FireTimer { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            // Nobody waits on it: the shard sends it and handles its failure itself.
            EntityMsg::Rebind { .. } => {}
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
    /// The deadline (microseconds) of this aggregate's stored timer entry, read with the
    /// state: what a commit must move or remove.
    timer: Option<i64>,
    /// The keyring's erasure epoch when the state was loaded: after a subject is forgotten
    /// every entity reloads once, and one whose payloads were erased meets the erasure.
    epoch: u64,
    /// Cluster mode: the claim epoch of the aggregate's partition the state was loaded
    /// under. A partition that moved away and back may have been written by another node
    /// in between, so a new claim reloads the state from the (replicated) local journal.
    claim_epoch: Option<u64>,
}

/// The writes that move a stream's timer entry from `old` to `new` (none when equal): the
/// `t` key sorted by deadline and the `T` reverse entry, in the same batch as the events.
pub(crate) fn timer_ops(stream: &StreamId, old: Option<i64>, new: Option<i64>) -> Vec<WriteOp> {
    if old == new {
        return Vec::new();
    }
    let mut ops = Vec::with_capacity(3);
    if let Some(old) = old {
        ops.push(WriteOp::Remove {
            key: keys::timer_key(old, stream),
        });
    }
    match new {
        Some(new) => {
            ops.push(WriteOp::Put {
                key: keys::timer_key(new, stream),
                value: Vec::new(),
            });
            ops.push(WriteOp::Put {
                key: keys::timer_by_stream_key(stream),
                value: new.to_le_bytes().to_vec(),
            });
        }
        None => ops.push(WriteOp::Remove {
            key: keys::timer_by_stream_key(stream),
        }),
    }
    ops
}

/// The write that records an idempotency key with its result, in the same batch as the
/// events: the record under its `i` key, which the committer files in its group's entry.
/// (Requests once carried a one-key `I` sweep entry beside it; the committer still takes and
/// drops one, from a cluster peer of an older build, but building it cost a key per command
/// for nothing.)
pub(crate) fn idempotency_ops(
    aggregate_type: &str,
    key: &Uuid,
    record: &keys::IdempotencyRecord,
) -> [WriteOp; 1] {
    [WriteOp::Put {
        key: keys::idempotency_key(aggregate_type, key),
        value: record.encode(),
    }]
}

/// SHA-256 of the aggregate id and the command (as [`Aggregate::idempotency_view`] shows it)
/// in the payload codec: what tells a repeat of an idempotency key from a reuse of it for
/// another command.
pub(crate) fn command_digest<A: Aggregate>(aggregate_id: &str, command: &A::Command) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((aggregate_id.len() as u64).to_le_bytes());
    h.update(aggregate_id.as_bytes());
    h.update(evershard_model::codec::encode(&*A::idempotency_view(
        command,
    )));
    h.finalize().into()
}

/// Settles an admitted command with the guard when dropped (see `EntityState::execute`).
struct Settle<'a, A: Aggregate> {
    guard: &'a Guard<A>,
    aggregate_id: String,
    command: &'a A::Command,
    now: chrono::DateTime<chrono::Utc>,
    accepted: bool,
}

impl<A: Aggregate> Drop for Settle<'_, A> {
    fn drop(&mut self) {
        let settled = catch_unwind(AssertUnwindSafe(|| {
            self.guard
                .settle(&self.aggregate_id, self.command, self.now, self.accepted)
        }));
        if let Err(panic) = settled {
            tracing::error!(aggregate_id = %self.aggregate_id, message = %panic_message(panic), "the guard's settle panicked");
        }
    }
}

/// What an idempotent command records with its events.
#[derive(Clone)]
struct IdempotencyClaim {
    key: Uuid,
    digest: [u8; 32],
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

impl<A: Aggregate> EntityState<A> {
    fn new(args: EntityArgs) -> Self {
        EntityState {
            args,
            loaded: None,
            timer: None,
            epoch: 0,
            claim_epoch: None,
        }
    }

    /// Becomes the actor of another aggregate, as freshly started (see `EntityMsg::Rebind`).
    fn rebind(&mut self, stream: StreamId, inflight: Arc<AtomicUsize>) {
        assert_eq!(
            self.args.inflight.load(Ordering::Acquire),
            0,
            "an aggregate with commands in flight was passivated"
        );
        let args = EntityArgs {
            stream,
            inflight,
            rt: self.args.rt.clone(),
            violations: self.args.violations.clone(),
        };
        *self = EntityState::new(args);
    }

    /// Cluster mode: refuses with `NotOwner` unless this node serves the aggregate's
    /// partition (so nothing is decided, not even a rejection, on a state another node may
    /// have moved on), and drops a state loaded under an earlier claim.
    fn check_served(&mut self) -> Result<(), CommandError<A::Error>> {
        let Some(gate) = self.args.rt.gate.get() else {
            if self.args.rt.awaits_gate {
                return Err(CommandError::Unavailable {
                    stream: self.args.stream.clone(),
                    reason: UnavailableReason::NotJoined,
                });
            }
            return Ok(());
        };
        let epoch = gate
            .serving(&self.args.stream)
            .map_err(|refusal| CommandError::from_gate(&self.args.stream, refusal))?;
        if self.claim_epoch != Some(epoch) {
            self.loaded = None;
            self.claim_epoch = Some(epoch);
        }
        Ok(())
    }

    /// Refuses once the state broke an invariant; recovers the state when it is not loaded.
    fn ensure_loaded(&mut self) -> Result<(), CommandError<A::Error>> {
        self.check_served()?;
        let stream = &self.args.stream;
        let epoch = self.args.rt.journal.keyring().epoch();
        if epoch != self.epoch {
            self.loaded = None;
        }
        if self.loaded.is_none() {
            // Taken before loading: an erasure during the load makes the next message
            // reload again.
            self.epoch = epoch;
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
            // A snapshot beyond the head (of events a crash took) goes: once new events
            // fill its sequences it would look usable. A failure is logged; the next load
            // tries again.
            for skipped in &loaded.skipped_snapshots {
                if let (
                    Some(sequence),
                    SkipReason::Unusable(evershard_snapshots::SnapshotError::BeyondHead { .. }),
                ) = (skipped.sequence, &skipped.reason)
                {
                    if let Err(e) = self.args.rt.journal.remove_snapshot(stream, sequence) {
                        tracing::warn!(%stream, sequence, %e, "a snapshot beyond the head could not be removed");
                    }
                }
            }
            self.args.rt.record_skipped(loaded.skipped_snapshots);
            // A stream's timer is written with its events, in their commit, so a stream with
            // none has none; not reading it spares a new aggregate a sled read (2% of the CPU
            // of the durable bench over 400,000 aggregates).
            self.timer = match loaded.version {
                0 => None,
                _ => self
                    .args
                    .rt
                    .journal
                    .timer_of(stream)
                    .map_err(CommandError::Storage)?,
            };
            self.loaded = Some((loaded.state, loaded.version));
        }
        Ok(())
    }

    /// The stored result of an idempotency key, when it is within the retention window:
    /// `Some(Ok(envelopes))` for the same command, `Some(Err(IdempotencyConflict))` for
    /// another one, `None` when the key is new (or expired).
    fn idempotent_result(
        &self,
        claim: &IdempotencyClaim,
        now_micros: i64,
    ) -> Option<ExecuteResult<A>> {
        let rt = &self.args.rt;
        let record = match rt.journal.idempotency_record(A::TYPE, &claim.key) {
            Ok(Some(record)) => record,
            Ok(None) => return None,
            Err(e) => return Some(Err(CommandError::Storage(e))),
        };
        let retention = rt.idempotency_retention_ms.saturating_mul(1000);
        if record.recorded_at_micros.saturating_add(retention) <= now_micros {
            return None; // past the window: decided afresh, and recorded anew
        }
        if record.digest != claim.digest {
            return Some(Err(CommandError::IdempotencyConflict {
                aggregate_type: A::TYPE,
                key: claim.key,
            }));
        }
        if record.count == 0 {
            return Some(Ok(Vec::new()));
        }
        let last = record.first_sequence + record.count as u64 - 1;
        let events: Result<Vec<_>, _> = repository::read_events::<A>(
            &rt.journal,
            &self.args.stream,
            record.first_sequence,
            last,
        )
        .collect();
        Some(match events {
            Ok(events) if events.len() == record.count as usize => Ok(events),
            Ok(_) => Err(CommandError::Storage(crate::error::StorageError::corrupt(
                &self.args.stream,
                record.first_sequence,
                crate::error::Corruption::MissingRecord,
            ))),
            Err(e) => Err(CommandError::Storage(e)),
        })
    }

    /// A due timer: runs the command the current state asks for, if its deadline has come.
    /// When the state asks for no timer or a later one than the stored entry, the entry is
    /// corrected (an append of no events), so a stale entry never fires again.
    async fn fire_timer(&mut self, fired: i64) -> Result<bool, CommandError<A::Error>> {
        if let Some(gate) = self.args.rt.gate.get() {
            // Cluster mode: every node holds every partition's timer entries (replicated
            // with the batches); only the partition's owner fires them.
            if gate.serving(&self.args.stream).is_err() {
                return Ok(false);
            }
        } else if self.args.rt.awaits_gate {
            // Not joined yet: whether this node serves the partition is not known.
            return Ok(false);
        }
        self.ensure_loaded()?;
        let rt = self.args.rt.clone();
        let now = evershard_model::truncate_to_micros(rt.clock.now());
        let (state, version) = self.loaded.as_ref().expect("loaded above");
        let version = *version;
        let wanted = catch_unwind(AssertUnwindSafe(|| A::next_timer(state))).map_err(|panic| {
            CommandError::HandlerPanicked {
                stream: self.args.stream.clone(),
                message: panic_message(panic),
            }
        })?;
        match wanted {
            Some((deadline, command)) if deadline <= now => {
                let metadata = Metadata::new("evershard-timer");
                self.execute(command, metadata, None).await?;
                if let Some((state, _)) = &self.loaded {
                    if let Some((next, _)) = A::next_timer(state) {
                        if next <= now {
                            tracing::warn!(stream = %self.args.stream, %next, "a timer command left its deadline due; it fires again at the next pass");
                        }
                    }
                }
                Ok(true)
            }
            other => {
                let want = other.map(|(d, _)| d.timestamp_micros());
                let mut ops = timer_ops(&self.args.stream, self.timer, want);
                // The entry the scheduler fired is not this aggregate's timer (a buffered
                // store's crash can leave a `t` entry without its `T`): removed, or it would
                // fire at every pass (found by review, 2026-11-28). Only if it is there: a
                // command that moved the timer after the scheduler read its page removed
                // it, and a removal of nothing was a frame written by a timer that found
                // nothing to do (found by review, 2026-11-28).
                if Some(fired) != self.timer
                    && Some(fired) != want
                    && rt
                        .journal
                        .has_timer_entry(fired, &self.args.stream)
                        .map_err(CommandError::Storage)?
                {
                    ops.push(WriteOp::Remove {
                        key: keys::timer_key(fired, &self.args.stream),
                    });
                }
                if !ops.is_empty() {
                    let mut request = AppendRequest::new(self.args.stream.clone(), version, vec![]);
                    request.extra_writes = ops;
                    let mut after = None;
                    if let Some(gate) = rt.gate.get() {
                        // Cluster mode: the correction travels through the journal topic too.
                        match gate.admit(&mut request).await {
                            Ok(a) => after = a,
                            Err(refusal) => {
                                self.loaded = None;
                                return Err(CommandError::from_gate(&self.args.stream, refusal));
                            }
                        }
                    }
                    if let Err(e) = rt.journal.append(request).await {
                        self.loaded = None;
                        return Err(CommandError::from_append(e));
                    }
                    if let Some(after) = after {
                        after();
                    }
                    self.timer = want;
                }
                Ok(false)
            }
        }
    }

    /// A command: its recorded result if its key is a repeat; else, through the type's guard
    /// if it has one, decided and committed.
    ///
    /// The guard is asked here, after the repeat check and with the time `decide` sees, not
    /// by the engine before it sends the command: a repeat must not meet the guard (which
    /// would take it for a duplicate), and when the engine looked the key up itself, a key
    /// whose window ended (or that the sweep removed) between its look and this one was
    /// decided afresh past the guard (found by review, 2026-11-28). Settled here too, so a
    /// caller that gave up cannot leave a reservation behind.
    async fn execute(
        &mut self,
        command: A::Command,
        metadata: Metadata,
        guard: Option<Guard<A>>,
    ) -> ExecuteResult<A> {
        self.ensure_loaded()?;
        let rt = self.args.rt.clone();
        // `DecideContext::new` keeps the store's resolution, so what `decide` saw is stored.
        let ctx = DecideContext::new(self.args.stream.aggregate_id.clone(), rt.clock.now());
        // The aggregate's own code (here the command's encoding) runs under `catch_unwind`
        // wherever the entity calls it: a panic that escaped would stop the actor, and its
        // callers would be told `Stopped` (retryable) for ever (found by review, 2026-11-28).
        let claim = match metadata.idempotency_key {
            None => None,
            Some(key) => {
                let digest = catch_unwind(AssertUnwindSafe(|| {
                    command_digest::<A>(&self.args.stream.aggregate_id, &command)
                }))
                .map_err(|panic| CommandError::HandlerPanicked {
                    stream: self.args.stream.clone(),
                    message: panic_message(panic),
                })?;
                Some(IdempotencyClaim { key, digest })
            }
        };
        if let Some(claim) = &claim {
            if let Some(result) = self.idempotent_result(claim, ctx.now.timestamp_micros()) {
                return result;
            }
        }
        let Some(guard) = guard else {
            return self
                .decide_and_commit_fresh(&command, &metadata, ctx, claim)
                .await;
        };
        let aggregate_id = &self.args.stream.aggregate_id;
        let now = ctx.now;
        match catch_unwind(AssertUnwindSafe(|| {
            guard.admit(aggregate_id, &command, now)
        })) {
            Err(panic) => {
                return Err(CommandError::HandlerPanicked {
                    stream: self.args.stream.clone(),
                    message: panic_message(panic),
                })
            }
            Ok(Err(refusal)) => return Err(CommandError::Rejected(refusal)),
            Ok(Ok(())) => {}
        }
        // Settled when dropped: after the answer, or if the engine's own code panics on the
        // way (the actor then stops), as not accepted.
        let mut settle = Settle {
            guard: &guard,
            aggregate_id: aggregate_id.clone(),
            command: &command,
            now,
            accepted: false,
        };
        let result = self
            .decide_and_commit_fresh(&command, &metadata, ctx, claim)
            .await;
        settle.accepted = result.is_ok();
        result
    }

    /// [`Self::decide_and_commit`], once more on a reloaded state when a data subject was
    /// forgotten between the state's load and the commit: the committer refuses sealed
    /// events decided on a state read before an erasure (they could carry the forgotten
    /// data under a new key). Another erasure in between is answered `SubjectForgotten`.
    async fn decide_and_commit_fresh(
        &mut self,
        command: &A::Command,
        metadata: &Metadata,
        ctx: DecideContext,
        claim: Option<IdempotencyClaim>,
    ) -> ExecuteResult<A> {
        let result = self
            .decide_and_commit(command, metadata, ctx.clone(), claim.clone())
            .await;
        match result {
            Err(CommandError::Unavailable {
                reason: UnavailableReason::SubjectForgotten,
                ..
            }) => {
                self.ensure_loaded()?;
                self.decide_and_commit(command, metadata, ctx, claim).await
            }
            other => other,
        }
    }

    /// [`Self::execute`] of a command that is not a repeat and was admitted.
    async fn decide_and_commit(
        &mut self,
        command: &A::Command,
        metadata: &Metadata,
        ctx: DecideContext,
        claim: Option<IdempotencyClaim>,
    ) -> ExecuteResult<A> {
        let rt = self.args.rt.clone();
        let (state, version) = self.loaded.as_mut().expect("loaded above");
        let version = *version;
        let events = match catch_unwind(AssertUnwindSafe(|| A::decide(state, command, &ctx))) {
            Err(panic) => {
                self.loaded = None;
                let message = panic_message(panic);
                tracing::error!(stream = %self.args.stream, %message, "decide panicked; nothing written");
                return Err(CommandError::HandlerPanicked {
                    stream: self.args.stream.clone(),
                    message,
                });
            }
            // A rejection writes nothing and records no idempotency key: a retry is decided
            // afresh.
            Ok(Err(rejection)) => return Err(CommandError::Rejected(rejection)),
            Ok(Ok(events)) => events,
        };
        if events.is_empty() && claim.is_none() {
            return Ok(Vec::new());
        }
        // Apply before the append, so that the timer the new state asks for is written in
        // the same batch as the events. A panic in `apply` (or `next_timer`) is a bug found
        // here rather than after the commit: the events are still committed (as before
        // timers existed, see docs/runtime-semantics.md), the timer entry stays as it was,
        // and the state is rebuilt from the journal for the next command.
        let stream_id = &self.args.stream.aggregate_id;
        let applied = catch_unwind(AssertUnwindSafe(|| {
            // The subject the state was read under: the events may carry its data even if
            // they move the state to another subject.
            let read_under = rt
                .sensitive
                .contains(A::TYPE)
                .then(|| A::data_subject(state).unwrap_or_else(|| stream_id.clone()));
            for event in &events {
                A::apply(state, event);
            }
            (
                read_under,
                A::next_timer(state).map(|(deadline, _)| deadline.timestamp_micros()),
            )
        }));
        let (read_under, next_timer, apply_panic) = match applied {
            Ok((read_under, next)) => (read_under, next, None),
            Err(panic) => (None, self.timer, Some(panic_message(panic))),
        };
        if let (Some(message), true) = (&apply_panic, rt.sensitive.contains(A::TYPE)) {
            // A sensitive type's events are sealed with the key of the subject the new state
            // names, and a half-applied state may name another: events under the wrong key
            // would outlive their subject's erasure. Nothing is written (found by review,
            // 2026-11-28); the aggregate answers so until `apply` is fixed.
            self.loaded = None;
            tracing::error!(stream = %self.args.stream, %message, "apply panicked on a sensitive aggregate's new events; nothing written");
            return Err(CommandError::HandlerPanicked {
                stream: self.args.stream.clone(),
                message: message.clone(),
            });
        }
        let stream = &self.args.stream;
        let encoded = catch_unwind(AssertUnwindSafe(|| {
            let subject = rt
                .sensitive
                .contains(A::TYPE)
                .then(|| A::data_subject(state).unwrap_or_else(|| stream.aggregate_id.clone()));
            let payloads: Vec<Vec<u8>> = events.iter().map(A::encode_event).collect();
            (subject, payloads)
        }));
        let (subject, payloads) = match encoded {
            Ok(encoded) => encoded,
            Err(panic) => {
                self.loaded = None;
                let message = panic_message(panic);
                tracing::error!(stream = %self.args.stream, %message, "encoding the events panicked; nothing written");
                return Err(CommandError::HandlerPanicked {
                    stream: self.args.stream.clone(),
                    message,
                });
            }
        };
        let new_events = events
            .iter()
            .zip(payloads)
            .map(|(event, payload)| NewEvent {
                // A v4 id from the thread's CSPRNG (as uuid's `fast-rng` does), not a
                // getrandom system call per event.
                event_id: uuid::Builder::from_random_bytes(rand::random()).into_uuid(),
                event_type: event.event_type().to_owned(),
                event_version: event.event_version().to_owned(),
                timestamp: ctx.now,
                correlation_id: metadata.correlation_id,
                causation_id: metadata.causation_id,
                source: metadata.source.clone(),
                user_id: metadata.user_id.clone(),
                session_id: metadata.session_id,
                audit_context: metadata.audit_context.clone(),
                payload,
            })
            .collect();
        // A sensitive type's payloads are sealed with its data subject's key (the subject
        // named by the state the events lead to).
        let seal = if let Some(subject) = &subject {
            match rt.journal.sealing_key(subject) {
                Ok(Some(key)) => Some(key),
                Ok(None) => {
                    self.loaded = None;
                    return Err(CommandError::Unavailable {
                        stream: self.args.stream.clone(),
                        reason: UnavailableReason::SubjectForgotten,
                    });
                }
                Err(e) => {
                    self.loaded = None;
                    return Err(CommandError::Storage(e));
                }
            }
        } else {
            None
        };
        let mut new_events: Vec<NewEvent> = new_events;
        if let Some(key) = &seal {
            // Sealed here, in parallel across aggregates, not on the committer's one
            // thread; each event's sequence follows the version it was decided on.
            for (i, event) in new_events.iter_mut().enumerate() {
                let aad = crate::crypto::record_aad(
                    A::TYPE,
                    &self.args.stream.aggregate_id,
                    version + 1 + i as u64,
                );
                event.payload = key.key.seal(&event.payload, &aad);
            }
        }
        let mut request = AppendRequest::new(self.args.stream.clone(), version, new_events);
        request.seal = seal.clone().map(Seal);
        // Refused if either the subject the state was read under or the one it is sealed
        // for was erased since the state was read.
        request.decided_at = subject.map(|subject| {
            let mut subjects = vec![subject];
            subjects.extend(read_under.filter(|s| *s != subjects[0]));
            (self.epoch, subjects)
        });
        request.extra_writes = timer_ops(&self.args.stream, self.timer, next_timer);
        if let Some(claim) = &claim {
            let record = keys::IdempotencyRecord {
                recorded_at_micros: ctx.now.timestamp_micros(),
                digest: claim.digest,
                aggregate_id: self.args.stream.aggregate_id.clone(),
                first_sequence: version + 1,
                count: events.len() as u32,
            };
            request
                .extra_writes
                .extend(idempotency_ops(A::TYPE, &claim.key, &record));
        }
        let mut after = None;
        // The batch's event ids once a gate admitted it: a batch the gate found valid on the
        // journal topic may reach this journal through the cluster's tailer first.
        let mut admitted_ids = None;
        if let Some(gate) = rt.gate.get() {
            // Cluster mode (docs/scale-out.md): in KafkaDurable the batch is on the journal
            // topic and valid under this node's claim before it is appended here; in Local it
            // is queued for the topic after the append (`after`). A refusal means it is not
            // acknowledged; the state was applied ahead, so it is rebuilt.
            match gate.admit(&mut request).await {
                Ok(a) => after = a,
                Err(refusal) => {
                    self.loaded = None;
                    return Err(CommandError::from_gate(&self.args.stream, refusal));
                }
            }
            admitted_ids = Some(
                request
                    .events
                    .iter()
                    .map(|e| e.event_id)
                    .collect::<Vec<_>>(),
            );
        }
        let committed = match rt.journal.append(request).await {
            Ok(c) => c,
            Err(e) => {
                // Cluster mode: the tailer appended this very batch (valid on the journal
                // topic) while this append was late (past the tailer's grace for it). It
                // took effect; a `Conflict` would tell the caller to decide again, and so
                // to apply it twice.
                let replicated = match (&e, &admitted_ids) {
                    (crate::error::AppendError::Conflict { .. }, Some(ids)) if !ids.is_empty() => {
                        self.appended_by_replica(version, ids)
                    }
                    _ => None,
                };
                match replicated {
                    Some(committed) => committed,
                    None => {
                        // The state was applied ahead of the append: rebuild it from the
                        // journal before deciding again (also after a conflict, where someone
                        // else wrote, and a storage error, where it is unknown whether sled
                        // holds the events).
                        self.loaded = None;
                        return Err(CommandError::from_append(e));
                    }
                }
            }
        };
        // Local mode: only a batch that is in the local journal is queued for the topic.
        if let Some(after) = after {
            after();
        }
        assert_eq!(
            committed.version,
            version + events.len() as u64,
            "journal skipped sequences"
        );
        self.timer = next_timer;

        // From here on the events are committed: whatever happens, the answer is Ok with
        // them. A panic in `apply`, the invariant check or the snapshot clone only costs the
        // in-memory copy, which the next command rebuilds from the journal (and meets the
        // same panic, as a storage error, if `apply` itself is broken).
        match apply_panic {
            None => self.after_commit(
                version,
                committed.version,
                committed.records.last().map_or(0, |r| r.global_position),
                seal.map(|k| k.key.clone()),
            ),
            Some(message) => {
                self.loaded = None;
                tracing::error!(stream = %self.args.stream, %message, "apply panicked; the events are committed, the state will be recovered");
            }
        }
        Ok(committed
            .records
            .into_iter()
            .zip(events)
            .map(|(record, event)| repository::envelope(record, event))
            .collect())
    }
}

impl<A: Aggregate> EntityState<A> {
    /// The records after `version` when they are exactly the events `ids` (the batch this
    /// entity's gate admitted, appended by the cluster's tailer), as the append would have
    /// answered them.
    fn appended_by_replica(&self, version: u64, ids: &[Uuid]) -> Option<crate::journal::Committed> {
        let last = version + ids.len() as u64;
        let records: Vec<_> = self
            .args
            .rt
            .journal
            .reader()
            .read_stream(&self.args.stream, version + 1, last)
            .collect::<Result<_, _>>()
            .ok()?;
        let same =
            records.len() == ids.len() && records.iter().zip(ids).all(|(r, id)| r.event_id == *id);
        same.then_some(crate::journal::Committed {
            records,
            version: last,
        })
    }

    /// After the commit of events already applied to the in-memory state: checks the
    /// invariants and hands a snapshot to the writer when one is due. Never fails the
    /// command: the events stand.
    fn after_commit(
        &mut self,
        version: u64,
        new_version: u64,
        last_position: u64,
        seal: Option<DataKey>,
    ) {
        let rt = self.args.rt.clone();
        let stream = &self.args.stream;
        let loaded = &mut self.loaded;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let (state, loaded_version) = loaded.as_mut().expect("loaded before deciding");
            A::check_invariants(state)?;
            *loaded_version = new_version;
            if rt.snapshot_policy.is_due(version, new_version) && rt.snapshotter.has_room() {
                let snapshot_state = state.clone();
                let sealed_stream = stream.clone();
                rt.snapshotter.submit(SnapshotJob {
                    stream: stream.clone(),
                    sequence: new_version,
                    last_position,
                    encode: Box::new(move || {
                        let plain = SnapshotRecord::encode_state(
                            A::STATE_SCHEMA_VERSION,
                            new_version,
                            &snapshot_state,
                        );
                        match &seal {
                            None => plain,
                            Some(key) => crate::crypto::seal_snapshot(
                                key,
                                &sealed_stream,
                                new_version,
                                &plain,
                            ),
                        }
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
        Ok(EntityState::new(args))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The command's work is boxed: ractor keeps each idle actor's next `handle` future
        // allocated while it waits for a message, sized for the largest future awaited in
        // it. Inline, `execute` and `fire_timer` made that about 6 KiB per active aggregate
        // (valgrind massif, 10,000 active ProductStocks); boxed, an idle actor holds a
        // pointer, and a command pays one allocation.
        match message {
            EntityMsg::Execute {
                command,
                metadata,
                guard,
                reply,
            } => {
                let result = Box::pin(state.execute(command, metadata, guard)).await;
                let _ = reply.send(result);
            }
            EntityMsg::GetState { reply } => {
                let result = state
                    .ensure_loaded()
                    .map(|()| state.loaded.clone().expect("loaded"));
                let _ = reply.send(result);
            }
            EntityMsg::FireTimer { deadline, reply } => {
                let result = Box::pin(state.fire_timer(deadline)).await;
                let _ = reply.send(result);
            }
            EntityMsg::Rebind { stream, inflight } => {
                state.rebind(stream, inflight);
                return Ok(());
            }
        }
        // Only after the reply: the shard may passivate us once this reaches zero.
        state.args.inflight.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }
}
