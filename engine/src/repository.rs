//! Loading aggregates from the journal: decoding records into typed envelopes and folding
//! the newest usable snapshot plus the events after it. Shared by the actors (recovery) and
//! the auditors' CLI (state at a sequence, verification).

use crate::error::StorageError;
use crate::journal::{Journal, Record, StreamId};
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
        payload,
    }
}

/// Decodes one stored record into a typed envelope (upcasting old event versions).
pub fn decode_record<A: Aggregate>(
    record: Record,
) -> Result<EventEnvelope<A::Event>, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        stream: Some(format!("{}/{}", record.aggregate_type, record.aggregate_id)),
        sequence: Some(record.sequence),
        reason,
    };
    // An upcaster is user code: a panic in it is a storage-level failure of this record,
    // not of the caller.
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        A::decode_event(&record.event_type, &record.event_version, &record.payload)
    }));
    let payload = match decoded {
        Ok(Ok(payload)) => payload,
        Ok(Err(e)) => {
            return Err(corrupt(format!(
                "payload of {} {}: {e}",
                record.event_type, record.event_version
            )))
        }
        Err(_) => {
            return Err(corrupt(format!(
                "decoding {} {} panicked",
                record.event_type, record.event_version
            )))
        }
    };
    Ok(envelope(record, payload))
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
}

/// Loads the state as of sequence `upto` (`u64::MAX`: the head): the newest usable snapshot
/// at or below it, then the events after the snapshot. `use_snapshots = false` replays from
/// the first event. A panic in `apply` is returned as an error, not propagated.
pub fn load<A: Aggregate>(
    journal: &Journal,
    stream: &StreamId,
    upto: u64,
    use_snapshots: bool,
) -> Result<Loaded<A::State>, StorageError> {
    let head = journal.head(stream)?.sequence;
    let target = upto.min(head);
    let start = if use_snapshots {
        let candidates: Vec<_> = journal
            .snapshots(stream)?
            .into_iter()
            .filter(|(seq, _)| *seq <= target)
            .collect();
        evershard_snapshots::select::<A::State>(
            &stream.to_string(),
            &candidates,
            A::STATE_SCHEMA_VERSION,
            head,
        )
    } else {
        None
    };
    let from_snapshot = start.as_ref().map(|(seq, _)| *seq);
    let (mut version, mut state) = start.unwrap_or_else(|| (0, A::State::default()));
    let mut events_replayed = 0;
    for envelope in read_events::<A>(journal, stream, version + 1, target) {
        let envelope = envelope?;
        if envelope.sequence != version + 1 {
            return Err(StorageError::Corrupt {
                stream: Some(stream.to_string()),
                sequence: Some(version + 1),
                reason: format!("gap: next stored sequence is {}", envelope.sequence),
            });
        }
        let applied = catch_unwind(AssertUnwindSafe(|| A::apply(&mut state, &envelope.payload)));
        if applied.is_err() {
            return Err(StorageError::Corrupt {
                stream: Some(stream.to_string()),
                sequence: Some(envelope.sequence),
                reason: "apply panicked on this event".into(),
            });
        }
        version = envelope.sequence;
        events_replayed += 1;
    }
    if version != target {
        return Err(StorageError::Corrupt {
            stream: Some(stream.to_string()),
            sequence: Some(version + 1),
            reason: format!("stream ends at {version}, head says {target}"),
        });
    }
    Ok(Loaded {
        state,
        version,
        from_snapshot,
        events_replayed,
    })
}
