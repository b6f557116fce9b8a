//! The tailer's applies against a real local journal, without a broker: the walk's output
//! (`State::pending`) is set up by hand, `apply_pending` runs, and the journal and the
//! position it would store are checked.
//!
//! - An append of this process's own batch (past the entity's grace) ends its partition's
//!   round: an append planned after it would store a position past it even when it fails
//!   with a conflict (its entity appended it meanwhile), without the writes it carried.
//! - A `KafkaDurable` batch of no events of this process is applied only once its entity
//!   marked it appended (or, past the grace, appended by the tailer): no head shows it, and
//!   a position stored before the entity's append would pass writes this journal never got.
//!   A `Local` one is appended before it is ever produced.
//! - A node that leaves or stopped on its own serves nothing, even a claim that slipped into
//!   `served` meanwhile; the hand-over's bound stays under the member's poll interval.

use super::cursor::{Applied, StoredCursor};
use super::wire::{Batch, WireEvent};
use super::*;
use crate::journal::{JournalConfig, JournalWriter};
use crate::kafka::KafkaConfig;

fn shared(mode: ClusterMode) -> Arc<Shared> {
    let config = ClusterConfig::new(KafkaConfig::new("127.0.0.1:9"), "unit", "n1", "127.0.0.1:1")
        .partitions(1)
        .mode(mode);
    Arc::new(Shared {
        topic: config.journal_topic(),
        state: Mutex::new(State {
            walks: vec![Walk::new()],
            pending: vec![VecDeque::new()],
            resumed_from: vec![0],
            queue: vec![VecDeque::new()],
            published: vec![Vec::new()],
            publish_from: vec![0],
            reserved_in: vec![0],
            ..State::default()
        }),
        config,
        walked: Condvar::new(),
        notify: tokio::sync::Notify::new(),
        queued: Condvar::new(),
        stop: AtomicBool::new(false),
    })
}

fn batch(node: &str, id: &str, first_sequence: u64, events: u8) -> Batch {
    Batch {
        node: node.into(),
        epoch: 1,
        aggregate_type: "Ledger".into(),
        aggregate_id: id.into(),
        first_sequence,
        events: (1..=events)
            .map(|n| WireEvent::from(&crate::journal::topics::test_event(n)))
            .collect(),
        writes: vec![],
    }
}

fn read(shared: &Shared, offset: i64, batch: Batch, own: bool, seen: Instant) {
    shared.lock().pending[0].push_back(Pending {
        offset,
        step: Step::Batch { batch, own, seen },
    });
}

fn head(journal: &JournalWriter, id: &str) -> u64 {
    journal
        .reader()
        .head(&StreamId::new("Ledger", id))
        .unwrap()
        .sequence
}

fn open_journal(dir: &std::path::Path) -> JournalWriter {
    JournalWriter::open(dir, JournalConfig::default()).unwrap()
}

#[test]
fn an_own_append_past_the_grace_is_the_last_of_its_partitions_round() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    let shared = shared(ClusterMode::KafkaDurable);
    let past_grace = Instant::now()
        .checked_sub(Duration::from_millis(OWN_APPEND_GRACE_MS + 1_000))
        .expect("the monotonic clock has run longer than the grace");
    read(&shared, 5, batch("n1", "mine", 1, 2), true, past_grace);
    read(
        &shared,
        6,
        batch("n2", "theirs", 1, 1),
        false,
        Instant::now(),
    );
    let mut applied = Applied::new("unit", vec![StoredCursor::default()]);

    apply_pending(&shared, &journal, &mut applied);
    assert_eq!(
        head(&journal, "mine"),
        2,
        "the tailer appended its own batch"
    );
    assert_eq!(
        head(&journal, "theirs"),
        0,
        "nothing is appended after an own batch in the same round"
    );
    assert_eq!(applied.next_offset(0), 6);
    assert_eq!(shared.lock().pending[0].len(), 1);

    apply_pending(&shared, &journal, &mut applied);
    assert_eq!(
        head(&journal, "theirs"),
        1,
        "the next round appends the rest"
    );
    assert_eq!(applied.next_offset(0), 7);
    assert!(shared.lock().pending[0].is_empty());
    journal.close().unwrap();
}

#[test]
fn an_own_empty_batch_counts_as_applied_once_its_entity_appended_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    let shared = shared(ClusterMode::KafkaDurable);
    read(&shared, 3, batch("n1", "quiet", 1, 0), true, Instant::now());
    let mut applied = Applied::new("unit", vec![StoredCursor::default()]);

    apply_pending(&shared, &journal, &mut applied);
    assert_eq!(
        applied.next_offset(0),
        0,
        "not applied before its entity's append"
    );
    assert_eq!(shared.lock().pending[0].len(), 1);

    // The entity appended it (what the gate's `AfterAppend` does).
    mark_own_appended(&shared, 0, 3);
    apply_pending(&shared, &journal, &mut applied);
    assert_eq!(applied.next_offset(0), 4);
    let st = shared.lock();
    assert!(st.pending[0].is_empty());
    assert!(st.own_appended.is_empty(), "the mark goes with its batch");
    drop(st);
    // A mark for a batch the tailer already passed is not kept.
    mark_own_appended(&shared, 0, 3);
    assert!(shared.lock().own_appended.is_empty());
    journal.close().unwrap();
}

#[test]
fn a_local_own_empty_batch_is_applied_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    let shared = shared(ClusterMode::Local);
    read(&shared, 0, batch("n1", "quiet", 1, 0), true, Instant::now());
    let mut applied = Applied::new("unit", vec![StoredCursor::default()]);
    apply_pending(&shared, &journal, &mut applied);
    assert_eq!(applied.next_offset(0), 1);
    assert!(shared.lock().pending[0].is_empty());
    journal.close().unwrap();
}

/// A claim that slipped into `served` while the node leaves or after it stopped on its own
/// (a takeover finishing meanwhile) is not served: only a running node serves.
#[test]
fn a_leaving_or_stopped_node_serves_nothing_it_holds() {
    let shared = shared(ClusterMode::Local);
    let mut st = shared.lock();
    st.served.insert(0, 3);
    st.lease_until = Some(Instant::now() + Duration::from_secs(60));
    assert_eq!(st.served_epoch(0), Some(3));
    st.leaving = true;
    assert_eq!(st.served_epoch(0), None);
    st.leaving = false;
    st.failed = Some("the tailer thread panicked".into());
    assert_eq!(st.served_epoch(0), None);
}

/// The hand-over runs inside the member's rebalance callback: its bound must stay under the
/// member's `max.poll.interval.ms`, the default's and one set through `extra`.
#[test]
fn the_handover_bound_stays_under_the_members_poll_interval() {
    let config = |handover_ms: u64, extra: Option<&str>| {
        let mut kafka = KafkaConfig::new("127.0.0.1:9");
        if let Some(v) = extra {
            kafka.extra.push(("max.poll.interval.ms".into(), v.into()));
        }
        ClusterConfig::new(kafka, "unit", "n1", "e").handover_timeout_ms(handover_ms)
    };
    assert!(config(30_000, None).validate().is_ok());
    assert!(config(HANDOVER_TIMEOUT_MS_MAX + 1, None)
        .validate()
        .is_err());
    assert!(config(30_000, Some("20000")).validate().is_err());
    assert!(config(10_000, Some("20000")).validate().is_ok());
}
