//! Recovery, in one home: decoding records into typed envelopes and folding the newest
//! usable snapshot plus the events after it, checking the hash chain of what it replays and
//! the invariants of what it recovers. Shared by the actors and the auditors' CLI (state at a
//! sequence, verification); published as [`crate::repository`].

use crate::error::{Corruption, LoadError, StorageError};
use crate::journal::{Journal, Record, StreamId};
use crate::snapshots::{SkipReason, SkippedSnapshot};
use evershard_model::{Aggregate, EventEnvelope};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The envelope of a stored record around an already decoded payload.
pub fn envelope<E>(record: Record, payload: E) -> EventEnvelope<E> {
    EventEnvelope {
        event_id: record.event_id,
        event_type: record.event_type,
        event_version: record.event_version,
        aggregate_type: record.aggregate_type,
        aggregate_id: record.aggregate_id,
        sequence: record.sequence,
        global_position: record.global_position,
        timestamp: record.timestamp,
        correlation_id: record.correlation_id,
        causation_id: record.causation_id,
        source: record.source,
        user_id: record.user_id,
        session_id: record.session_id,
        audit_context: record.audit_context,
        payload,
    }
}

/// Decodes one stored record into a typed envelope (upcasting old event versions).
pub fn decode_record<A: Aggregate>(
    record: Record,
) -> Result<EventEnvelope<A::Event>, StorageError> {
    let payload = decode_payload::<A>(
        &record.aggregate_type,
        &record.aggregate_id,
        record.sequence,
        &record.event_type,
        &record.event_version,
        &record.payload,
    )?;
    Ok(envelope(record, payload))
}

/// Decodes a stored payload of the event at `sequence` of stream `(aggregate_type,
/// aggregate_id)`, naming that event in the error. Borrows everything: the stream is built
/// only for an error.
fn decode_payload<A: Aggregate>(
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    event_type: &str,
    event_version: &str,
    payload: &[u8],
) -> Result<A::Event, StorageError> {
    let corrupt = |cause: Corruption| {
        StorageError::corrupt(
            &StreamId::new(aggregate_type, aggregate_id),
            sequence,
            cause,
        )
    };
    // An upcaster is user code: a panic in it is a storage-level failure of this record,
    // not of the caller.
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        A::decode_event(event_type, event_version, payload)
    }));
    match decoded {
        Ok(Ok(payload)) => Ok(payload),
        Ok(Err(source)) => Err(corrupt(Corruption::Payload {
            event_type: event_type.into(),
            event_version: event_version.into(),
            source: Box::new(source),
        })),
        Err(_) => Err(corrupt(Corruption::DecodePanicked {
            event_type: event_type.into(),
            event_version: event_version.into(),
        })),
    }
}

/// The typed events of a stream with `from <= sequence <= to`.
pub fn read_events<'a, A: Aggregate>(
    journal: &'a Journal,
    stream: &StreamId,
    from: u64,
    to: u64,
) -> impl Iterator<Item = Result<EventEnvelope<A::Event>, StorageError>> + 'a {
    journal
        .read_stream(stream, from, to)
        .map(|r| r.and_then(decode_record::<A>))
}

/// How a state was loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<S> {
    pub state: S,
    /// The sequence of the last event folded in (0: no events).
    pub version: u64,
    /// The snapshot recovery started from, if any.
    pub from_snapshot: Option<u64>,
    /// Events folded after the snapshot.
    pub events_replayed: u64,
    /// Snapshots that could not be used and were skipped (recovery fell back to an older
    /// one or to a full replay): empty when all was well. Worth a warning to an operator —
    /// the state is still exact, rebuilt from the events.
    pub skipped_snapshots: Vec<SkippedSnapshot>,
}

/// Loads the state as of sequence `upto` (`u64::MAX`: the head): the newest usable snapshot
/// at or below it, then the events after the snapshot. A snapshot that cannot be read or
/// used is skipped and listed in [`Loaded::skipped_snapshots`], never an error. `use_snapshots = false` replays from
/// the first event. Checks what it replays — each record's hash-chain link (for the first
/// record after a snapshot, against the stored record at the snapshot's sequence), gapless
/// sequences up to the target, no panic in `apply` — and the aggregate's invariants on the
/// loaded state; a failure is a typed [`LoadError`], never a state to act on.
pub fn load<A: Aggregate>(
    journal: &Journal,
    stream: &StreamId,
    upto: u64,
    use_snapshots: bool,
) -> Result<Loaded<A::State>, LoadError> {
    let loaded = load_once::<A>(journal, stream, upto, use_snapshots)?;
    match loaded {
        Ok(loaded) => Ok(loaded),
        // A snapshot is a cache: when the state it gave fails where the events alone may
        // not, the events decide (found by review, 2026-11-28: a positional snapshot of a
        // state type changed without its schema version decodes, to another state, and
        // the aggregate was refused for good).
        Err((Some(sequence), rejected, skipped_before)) => {
            let mut replayed = match load_once::<A>(journal, stream, upto, false)? {
                Ok(replayed) => replayed,
                Err((_, error, _)) => return Err(error),
            };
            // What the first pass skipped (a snapshot beyond the head, say) is still to be
            // reported, and acted on; it fell back to a full replay in the end.
            replayed
                .skipped_snapshots
                .extend(skipped_before.into_iter().map(|skipped| SkippedSnapshot {
                    fallback: None,
                    ..skipped
                }));
            let skipped = SkippedSnapshot {
                stream: stream.clone(),
                sequence: Some(sequence),
                reason: SkipReason::StateRejected(rejected.to_string()),
                fallback: None,
            };
            tracing::warn!(%stream, sequence, reason = %skipped.reason, "snapshot skipped: its state failed where the events alone do not");
            replayed.skipped_snapshots.push(skipped);
            Ok(replayed)
        }
        Err((None, error, _)) => Err(error),
    }
}

/// [`load`] without its fall-back: an error the state may owe to the snapshot it started
/// from (`apply` panicked on a later event, or the invariants failed) comes back as
/// `Ok(Err((Some(snapshot sequence), error, the snapshots skipped on the way)))`.
#[allow(clippy::type_complexity)]
fn load_once<A: Aggregate>(
    journal: &Journal,
    stream: &StreamId,
    upto: u64,
    use_snapshots: bool,
) -> Result<Result<Loaded<A::State>, (Option<u64>, LoadError, Vec<SkippedSnapshot>)>, LoadError> {
    let head = journal.head(stream)?.sequence;
    let target = upto.min(head);
    // A stream with no events (a new aggregate) has no snapshot to start from: one is of a
    // sequence of at least 1, past `target`. Listing them was a sled scan per new aggregate,
    // 3.8% of the CPU of the durable bench over 400,000 aggregates (2026-11-27, perf).
    let (start, skipped_snapshots) = if use_snapshots && target > 0 {
        crate::snapshots::recovery_start::<A>(journal, stream, target, head)
    } else {
        (None, Vec::new())
    };
    let from_snapshot = start.as_ref().map(|(seq, _)| *seq);
    let (version, state) = start.unwrap_or_else(|| (0, A::State::default()));
    let mut loaded = Loaded {
        state,
        version,
        from_snapshot,
        events_replayed: 0,
        skipped_snapshots,
    };
    if let Err(e) = fold_tail::<A>(journal, stream, target, &mut loaded) {
        let owed_to_snapshot = matches!(
            &e,
            StorageError::Corrupt {
                cause: Corruption::ApplyPanicked,
                ..
            }
        );
        return match (owed_to_snapshot, from_snapshot) {
            (true, Some(sequence)) => Ok(Err((
                Some(sequence),
                e.into(),
                std::mem::take(&mut loaded.skipped_snapshots),
            ))),
            _ => Err(e.into()),
        };
    }
    // A panic of the aggregate's check is a violation too: escaped, it stopped the entity's
    // actor (every later command `Stopped`, retryable) and the readers (found by review,
    // 2026-11-28).
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        A::check_invariants(&loaded.state)
    }))
    .unwrap_or_else(|panic| {
        let message = crate::sharding::panic_message(panic);
        Err(format!("check_invariants panicked: {message}"))
    });
    if let Err(invariant) = checked {
        let violated = LoadError::InvariantViolated {
            stream: stream.clone(),
            invariant,
            sequence: loaded.version,
        };
        return Ok(Err((from_snapshot, violated, loaded.skipped_snapshots)));
    }
    Ok(Ok(loaded))
}

/// Folds the events after `loaded.version` up to `target` into `loaded`. Reads each record
/// as a view of its stored bytes ([`Journal::visit_stream`]) and decodes its payload from
/// there: per event, no record copy and no envelope, only the event the fold applies.
fn fold_tail<A: Aggregate>(
    journal: &Journal,
    stream: &StreamId,
    target: u64,
    loaded: &mut Loaded<A::State>,
) -> Result<(), StorageError> {
    journal.visit_stream(stream, loaded.version + 1, target, |view, payload| {
        let expected = loaded.version + 1;
        if view.sequence != expected {
            let gap = Corruption::Gap {
                found: view.sequence,
            };
            return Err(StorageError::corrupt(stream, expected, gap));
        }
        let event = decode_payload::<A>(
            view.aggregate_type,
            view.aggregate_id,
            view.sequence,
            view.event_type,
            view.event_version,
            payload,
        )?;
        let state = &mut loaded.state;
        let applied = catch_unwind(AssertUnwindSafe(|| A::apply(state, &event)));
        if applied.is_err() {
            let cause = Corruption::ApplyPanicked;
            return Err(StorageError::corrupt(stream, view.sequence, cause));
        }
        loaded.version = view.sequence;
        loaded.events_replayed += 1;
        Ok(())
    })?;
    if loaded.version != target {
        let cause = Corruption::Truncated {
            last: loaded.version,
            head: target,
        };
        return Err(StorageError::corrupt(stream, loaded.version + 1, cause));
    }
    Ok(())
}
