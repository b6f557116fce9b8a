//! The aggregate types this build knows, as trait objects, so that every command can dispatch
//! on a type *name* read from the command line or from the store.
//!
//! One generic implementation, [`Kind<A>`], serves every `A: Aggregate + Workload`: adding a
//! type to the CLI is one line in [`KINDS`]. Everything typed (decoding payloads, folding,
//! comparing states) happens inside `Kind<A>`; what crosses the trait boundary is JSON, plain
//! report lines, or a boxed demo driver.

use crate::demo::{Driver, WorkloadDriver};
use crate::diff::first_difference;
use crate::error::CliError;
use crate::verify::{Check, Finding, StreamCheck};
use evershard_aggregates::appointment::Appointment;
use evershard_aggregates::credit::Credit;
use evershard_aggregates::device::Device;
use evershard_aggregates::order::Order;
use evershard_aggregates::payment::Payment;
use evershard_aggregates::plant::Plant;
use evershard_aggregates::product_stock::ProductStock;
use evershard_engine::model::{Aggregate, DomainEvent, EventEnvelope, Workload};
use evershard_engine::repository::{self, Loaded};
use evershard_engine::snapshot::{select, SnapshotError};
use evershard_engine::{EngineBuilder, Journal, LoadError, Record, StorageError, StreamId};
use serde_json::Value;
use std::marker::PhantomData;

/// A registered aggregate type, type-erased.
pub trait AggregateKind: Send + Sync + 'static {
    /// The stored type name (`Aggregate::TYPE`).
    fn name(&self) -> &'static str;

    /// `Aggregate::STATE_SCHEMA_VERSION`: the schema snapshots of this build carry.
    fn state_schema_version(&self) -> u32;

    /// Registers the type with an engine being built.
    fn register(&self, builder: EngineBuilder) -> EngineBuilder;

    /// The events of `stream` in sequence order, each envelope around its outbound JSON payload
    /// (`DomainEvent::payload_json`). A record that fails its checks or does not decode is an
    /// `Err` naming the stream and sequence.
    fn history_json<'j>(
        &self,
        journal: &'j Journal,
        stream: &StreamId,
    ) -> Box<dyn Iterator<Item = Result<EventEnvelope<Value>, StorageError>> + 'j>;

    /// One stored record of this type as an envelope around its JSON payload (upcast).
    fn record_json(&self, record: Record) -> Result<EventEnvelope<Value>, StorageError>;

    /// The state as of sequence `upto` (`u64::MAX`: the head) rendered as JSON, through
    /// `repository::load`.
    fn state_json(
        &self,
        journal: &Journal,
        stream: &StreamId,
        upto: u64,
        use_snapshots: bool,
    ) -> Result<Loaded<Value>, CliError>;

    /// Verifies one stream of this type: it fully decodes and folds from the first event (no
    /// snapshots), its final state holds the type's invariants, and every stored snapshot
    /// equals the replay up to its sequence. `head` is the stream's last sequence.
    fn check_stream(&self, journal: &Journal, stream: &StreamId, head: u64) -> StreamCheck;

    /// A demo driver for one aggregate instance: generates commands with `Workload`, keeps
    /// the state the client expects, and checks recovery after a restart.
    fn demo_driver(&self, aggregate_id: String, seed: u64, client: usize) -> Box<dyn Driver>;
}

/// The one implementation of [`AggregateKind`], for any aggregate with a workload.
pub struct Kind<A>(PhantomData<fn() -> A>);

impl<A> Kind<A> {
    pub const fn new() -> Self {
        Kind(PhantomData)
    }
}

impl<A> Default for Kind<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> std::fmt::Debug for Kind<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kind<{}>", A::TYPE)
    }
}

/// Every aggregate type of `evershard-aggregates`, in the order the CLI lists them.
pub static KINDS: &[&dyn AggregateKind] = &[
    &Kind::<ProductStock>::new(),
    &Kind::<Order>::new(),
    &Kind::<Payment>::new(),
    &Kind::<Appointment>::new(),
    &Kind::<Credit>::new(),
    &Kind::<Plant>::new(),
    &Kind::<Device>::new(),
];

/// The names of every registered type.
pub fn known_types() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// The registered type named `name`: exact match first, then ignoring ASCII case (so
/// `productstock` works). Unknown names are an error listing the known ones.
pub fn kind(name: &str) -> Result<&'static dyn AggregateKind, CliError> {
    KINDS
        .iter()
        .find(|k| k.name() == name)
        .or_else(|| KINDS.iter().find(|k| k.name().eq_ignore_ascii_case(name)))
        .copied()
        .ok_or_else(|| CliError::UnknownType {
            name: name.to_owned(),
            known: known_types(),
        })
}

/// The registered type with exactly this stored name, if any (for names read from the store).
pub fn stored_kind(name: &str) -> Option<&'static dyn AggregateKind> {
    KINDS.iter().find(|k| k.name() == name).copied()
}

fn finding(stream: &StreamId, sequence: Option<u64>, check: Check, message: String) -> Finding {
    Finding {
        check,
        aggregate_type: Some(stream.aggregate_type.clone()),
        aggregate_id: Some(stream.aggregate_id.clone()),
        sequence,
        message,
    }
}

/// A storage error of one stream as a finding (its own sequence when it names one).
fn storage_finding(stream: &StreamId, check: Check, err: StorageError) -> Finding {
    match err {
        StorageError::Corrupt {
            sequence, cause, ..
        } => finding(stream, sequence, check, cause.to_string()),
        other => finding(stream, None, check, other.to_string()),
    }
}

impl<A: Workload> AggregateKind for Kind<A> {
    fn name(&self) -> &'static str {
        A::TYPE
    }

    fn state_schema_version(&self) -> u32 {
        A::STATE_SCHEMA_VERSION
    }

    fn register(&self, builder: EngineBuilder) -> EngineBuilder {
        builder.register::<A>()
    }

    fn history_json<'j>(
        &self,
        journal: &'j Journal,
        stream: &StreamId,
    ) -> Box<dyn Iterator<Item = Result<EventEnvelope<Value>, StorageError>> + 'j> {
        Box::new(
            repository::read_events::<A>(journal, stream, 1, u64::MAX)
                .map(|r| r.map(|envelope| envelope.map(|event| event.payload_json()))),
        )
    }

    fn record_json(&self, record: Record) -> Result<EventEnvelope<Value>, StorageError> {
        repository::decode_record::<A>(record).map(|e| e.map(|event| event.payload_json()))
    }

    fn state_json(
        &self,
        journal: &Journal,
        stream: &StreamId,
        upto: u64,
        use_snapshots: bool,
    ) -> Result<Loaded<Value>, CliError> {
        let loaded = repository::load::<A>(journal, stream, upto, use_snapshots)
            .map_err(|e| CliError::load(journal.dir(), e))?;
        let state = serde_json::to_value(&loaded.state).map_err(|source| CliError::Json {
            what: format!("the state of {stream}"),
            source,
        })?;
        Ok(Loaded {
            state,
            version: loaded.version,
            from_snapshot: loaded.from_snapshot,
            events_replayed: loaded.events_replayed,
        })
    }

    fn check_stream(&self, journal: &Journal, stream: &StreamId, head: u64) -> StreamCheck {
        let mut check = StreamCheck::default();
        let replay_fails_at = replay_check::<A>(journal, stream, &mut check);
        let snapshots = match journal.snapshots(stream) {
            Ok(s) => s,
            Err(e) => {
                check
                    .problems
                    .push(storage_finding(stream, Check::Snapshot, e));
                return check;
            }
        };
        for candidate in snapshots.into_iter().rev() {
            let key_sequence = candidate.0;
            let at = Some(key_sequence);
            // The very selection recovery makes, one candidate at a time: its typed reason
            // for skipping is the finding.
            let selection = select::<A::State>(&[candidate], A::STATE_SCHEMA_VERSION, head);
            let snapshot_state = match (selection.chosen, selection.skipped.into_iter().next()) {
                (Some((_, state)), _) => state,
                (None, Some((_, reason))) => {
                    let (is_note, message) = snapshot_skip_message(&reason, head);
                    let not_compared = replay_fails_at.is_some_and(|f| f <= key_sequence)
                        && matches!(reason, SnapshotError::State(_));
                    if not_compared {
                        let fails_at = replay_fails_at.unwrap_or(1);
                        check.notes.push(not_compared_note(stream, at, fails_at));
                    } else if is_note {
                        check
                            .notes
                            .push(finding(stream, at, Check::Snapshot, message));
                    } else {
                        check
                            .problems
                            .push(finding(stream, at, Check::Snapshot, message));
                    }
                    continue;
                }
                (None, None) => continue,
            };
            if let Some(fails_at) = replay_fails_at.filter(|f| *f <= key_sequence) {
                check.notes.push(not_compared_note(stream, at, fails_at));
                continue;
            }
            check.snapshots_checked += 1;
            match repository::load::<A>(journal, stream, key_sequence, false) {
                Ok(replayed) if replayed.state == snapshot_state => {}
                Ok(replayed) => {
                    let at_path = first_difference(&snapshot_state, &replayed.state)
                        .unwrap_or_else(|| "(equal as JSON)".into());
                    let message = format!(
                        "snapshot differs from the replay up to its sequence at {at_path} \
                         (snapshot vs replay)"
                    );
                    check
                        .problems
                        .push(finding(stream, at, Check::Snapshot, message));
                }
                Err(LoadError::Storage(e)) => {
                    check
                        .problems
                        .push(storage_finding(stream, Check::Snapshot, e))
                }
                Err(other) => {
                    check
                        .problems
                        .push(finding(stream, at, Check::Snapshot, other.to_string()))
                }
            }
        }
        check
    }

    fn demo_driver(&self, aggregate_id: String, seed: u64, client: usize) -> Box<dyn Driver> {
        Box::new(WorkloadDriver::<A>::new(aggregate_id, seed, client))
    }
}

/// The full replay of one stream, exactly as recovery without snapshots does it (with its
/// hash-chain and invariant checks): records its findings in `check` and returns the
/// sequence the replay fails at, if it does.
fn replay_check<A: Aggregate>(
    journal: &Journal,
    stream: &StreamId,
    check: &mut StreamCheck,
) -> Option<u64> {
    match repository::load::<A>(journal, stream, u64::MAX, false) {
        Ok(loaded) => {
            check.events_replayed = loaded.events_replayed;
            None
        }
        Err(LoadError::InvariantViolated {
            invariant,
            sequence,
            ..
        }) => {
            check.events_replayed = sequence;
            check.problems.push(finding(
                stream,
                Some(sequence),
                Check::Replay,
                format!("the replayed state breaks an invariant: {invariant}"),
            ));
            None
        }
        Err(LoadError::Storage(e)) => {
            let failure = storage_finding(stream, Check::Replay, e);
            let at = failure.sequence.unwrap_or(1);
            check.problems.push(failure);
            Some(at)
        }
        Err(other) => {
            check
                .problems
                .push(finding(stream, None, Check::Replay, other.to_string()));
            Some(1)
        }
    }
}

/// How `verify` words a snapshot recovery skips: (is it only a note, the message).
fn snapshot_skip_message(reason: &SnapshotError, head: u64) -> (bool, String) {
    match reason {
        SnapshotError::Misplaced { key, record } => (
            false,
            format!("snapshot stored under sequence {key} says sequence {record}"),
        ),
        SnapshotError::BeyondHead { .. } => (
            false,
            format!("snapshot lies beyond the stream's head {head}"),
        ),
        // Recovery skips it and replays: harmless, but worth telling an auditor.
        SnapshotError::SchemaVersion { found, current } => (
            true,
            format!(
                "snapshot has state schema version {found}, this build's is {current}; \
                 recovery skips it, so it was not compared"
            ),
        ),
        SnapshotError::State(e) => (false, format!("snapshot state does not decode: {e}")),
        damaged => (false, format!("snapshot is damaged: {damaged}")),
    }
}

fn not_compared_note(stream: &StreamId, at: Option<u64>, fails_at: u64) -> Finding {
    let message =
        format!("snapshot not compared: the replay fails at sequence {fails_at}, before it");
    finding(stream, at, Check::Snapshot, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_holds_each_type_once_and_finds_names_ignoring_case() {
        let mut names = known_types();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        assert_eq!(kind("ProductStock").unwrap().name(), "ProductStock");
        assert_eq!(kind("productstock").unwrap().name(), "ProductStock");
        let err = kind("Nope").err().expect("unknown type");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("ProductStock"), "{err}");
    }
}
