//! The per-type checks of `evershard verify` (`check_stream::<A>`, generic over the
//! aggregate type), on streams written directly to a journal with a small test aggregate
//! whose `apply` panics on one event. Proves that an apply panic and a payload that does not
//! decode are reported with the aggregate and sequence (and never propagate), that a snapshot
//! equal to the replay passes and a different one is a problem, and that `audit` reports the
//! streams of a type the registry does not know, and that a replayed state breaking an
//! invariant (committed events a buggy `decide` produced) is reported at its sequence.

use chrono::{TimeZone, Utc};
use evershard_cli::{audit, check_stream, Check};
use evershard_engine::model::{codec, Aggregate, DecideContext, DemoRng, DomainEvent, Workload};
use evershard_engine::{AppendRequest, JournalConfig, JournalWriter, NewEvent, StreamId};
use evershard_snapshots::SnapshotRecord;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug)]
struct Tally;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TallyEvent {
    Added(u64),
    /// `apply` panics on this one: a stand-in for a bug in a fold.
    Poison,
}

impl DomainEvent for TallyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TallyEvent::Added(_) => "Added",
            TallyEvent::Poison => "Poison",
        }
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "test.tally"
    }
    fn payload_json(&self) -> serde_json::Value {
        serde_json::json!({ "event": format!("{self:?}") })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Tally {
    const TYPE: &'static str = "Tally";
    type State = u64;
    type Command = u64;
    type Event = TallyEvent;
    type Error = Never;

    fn decide(_: &u64, command: &u64, _: &DecideContext) -> Result<Vec<TallyEvent>, Never> {
        Ok(vec![TallyEvent::Added(*command)])
    }
    fn apply(state: &mut u64, event: &TallyEvent) {
        match event {
            TallyEvent::Added(n) => *state += n,
            TallyEvent::Poison => panic!("test: apply refuses Poison"),
        }
    }
    fn check_invariants(state: &u64) -> Result<(), String> {
        if *state >= TALLY_MAX {
            return Err(format!("a tally stays below {TALLY_MAX}"));
        }
        Ok(())
    }
}

/// Tally's invariant: the state stays below this.
const TALLY_MAX: u64 = 1000;

impl Workload for Tally {
    fn sample_command(_: &u64, _: &DecideContext, rng: &mut DemoRng) -> u64 {
        rng.below(10)
    }
}

fn new_event(event_type: &str, payload: Vec<u8>) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.into(),
        event_version: "1.0".into(),
        timestamp: Utc.timestamp_opt(1_767_225_600, 0).unwrap(),
        correlation_id: Uuid::new_v4(),
        causation_id: None,
        source: "test".into(),
        user_id: None,
        session_id: None,
        audit_context: None,
        payload,
    }
}

fn event(e: &TallyEvent) -> NewEvent {
    new_event(e.event_type(), codec::encode(e))
}

fn append(journal: &JournalWriter, id: &str, events: Vec<NewEvent>) -> StreamId {
    let stream = StreamId::new("Tally", id);
    let mut version = 0;
    for e in events {
        let committed = journal
            .append_blocking(AppendRequest::new(stream.clone(), version, vec![e]))
            .unwrap();
        version = committed.version;
    }
    stream
}

#[test]
fn replay_failures_and_snapshot_mismatches_name_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
    let added = |n| event(&TallyEvent::Added(n));

    // An apply panic at sequence 3.
    let poisoned = append(
        &journal,
        "poisoned",
        vec![added(1), added(2), event(&TallyEvent::Poison), added(3)],
    );
    let check = check_stream::<Tally>(&journal, &poisoned, 4);
    assert_eq!(check.problems.len(), 1, "{check:?}");
    assert_eq!(check.problems[0].check, Check::Replay);
    assert_eq!(check.problems[0].aggregate_id.as_deref(), Some("poisoned"));
    assert_eq!(check.problems[0].sequence, Some(3));
    assert!(
        check.problems[0].message.contains("apply panicked"),
        "{check:?}"
    );

    // A payload that does not decode at sequence 2.
    let garbled = append(
        &journal,
        "garbled",
        vec![added(1), new_event("Added", vec![1, 9, 9])],
    );
    let check = check_stream::<Tally>(&journal, &garbled, 2);
    assert_eq!(check.problems.len(), 1, "{check:?}");
    assert_eq!(check.problems[0].sequence, Some(2));
    assert!(
        check.problems[0].message.contains("payload of Added"),
        "{check:?}"
    );

    // Snapshots: equal to the replay at 2 (3), different at 3 (says 100, replay says 6).
    let healthy = append(&journal, "healthy", vec![added(1), added(2), added(3)]);
    let schema = Tally::STATE_SCHEMA_VERSION;
    journal
        .put_snapshot(&healthy, 2, &SnapshotRecord::encode_state(schema, 2, &3u64))
        .unwrap();
    let check = check_stream::<Tally>(&journal, &healthy, 3);
    assert_eq!(
        (check.problems.len(), check.snapshots_checked),
        (0, 1),
        "{check:?}"
    );
    assert_eq!(check.events_replayed, 3);
    journal
        .put_snapshot(
            &healthy,
            3,
            &SnapshotRecord::encode_state(schema, 3, &100u64),
        )
        .unwrap();
    let check = check_stream::<Tally>(&journal, &healthy, 3);
    assert_eq!(check.problems.len(), 1, "{check:?}");
    assert_eq!(
        (check.problems[0].check, check.problems[0].sequence),
        (Check::Snapshot, Some(3))
    );
    assert!(
        check.problems[0].message.contains("(root): 100 vs 6"),
        "{check:?}"
    );

    // Events that break the invariant at sequence 2: reported, with the sequence.
    let broken = append(&journal, "broken", vec![added(1), added(TALLY_MAX)]);
    let check = check_stream::<Tally>(&journal, &broken, 2);
    assert_eq!(check.problems.len(), 1, "{check:?}");
    assert_eq!(
        (check.problems[0].check, check.problems[0].sequence),
        (Check::Replay, Some(2))
    );
    assert!(
        check.problems[0]
            .message
            .contains("the replayed state breaks an invariant: a tally stays below 1000"),
        "{check:?}"
    );

    // The registry does not know Tally: audit names its streams in a note (an unknown type is
    // not damage) rather than skipping them, and still checks their records and chains.
    let report = audit(&journal);
    let unknown: Vec<_> = report
        .notes
        .iter()
        .filter(|p| p.check == Check::UnknownType)
        .collect();
    assert_eq!(unknown.len(), 1, "{report:?}");
    assert_eq!(unknown[0].aggregate_type.as_deref(), Some("Tally"));
    assert!(unknown[0].message.starts_with("4 streams"), "{report:?}");
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.check != Check::UnknownType),
        "{report:?}"
    );
    // Its journal-level checks still pass: the records themselves are intact.
    assert!(
        report.problems.iter().all(|p| p.check != Check::Journal),
        "{report:?}"
    );
    journal.close().unwrap();
}
