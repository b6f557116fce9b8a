//! Proves that a damaged snapshot never costs an aggregate whose events are intact: recovery
//! skips it, falls back to an older snapshot or to a full replay, recovers the exact state,
//! and says what it skipped — in `repository::load`'s `Loaded::skipped_snapshots` and in
//! `Engine::skipped_snapshots` — instead of refusing the aggregate.
//!
//! The damage is written through the `fault-injection` hook `put_raw_snapshot_for_tests`:
//! a snapshot record with a flipped byte (its CRC fails), and a key under the stream's
//! snapshot prefix that does not parse, which makes reading the stream's snapshots fail as a
//! damaged sled page does (issue #12: one flipped byte in a page made 957 of 1,785
//! aggregates refuse to load while their events were intact). Also a snapshot that decodes
//! to a state that is not the fold of its events (its invariants fail): the events decide.

mod common;

use common::{Counter, CounterCommand};
use evershard_engine::snapshot::{SkipReason, SnapshotError};
use evershard_engine::{repository, Durability, Engine, Journal, SnapshotPolicy, StreamId};
use std::path::Path;

async fn open_counters(dir: &Path) -> Engine {
    Engine::builder(dir)
        .register::<Counter>()
        .durability(Durability::Buffered { flush_every_ms: 20 })
        .snapshot_policy(SnapshotPolicy::every(5).keep(2))
        .open()
        .await
        .expect("engine opens")
}

/// Writes `n` events to each of `ids`, with snapshots at every 5th, and closes the engine.
async fn fill(dir: &Path, ids: &[&str], n: u64) {
    let engine = open_counters(dir).await;
    for id in ids {
        for _ in 0..n {
            engine
                .execute::<Counter>(id, CounterCommand::Add(1))
                .await
                .unwrap();
        }
    }
    // Snapshots are written off the command path: wait (bounded) for the last ones.
    for id in ids {
        let stream = StreamId::new("Counter", *id);
        let last = n - n % 5;
        let mut found = false;
        for _ in 0..500 {
            let stored = engine.journal().snapshots(&stream).unwrap();
            if stored.iter().any(|(seq, _)| *seq == last) {
                found = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(found, "the snapshot of {id} at {last} is written");
    }
    engine.shutdown().await.unwrap();
}

/// Stores a snapshot of `state` at `sequence` of `stream`, as a writer would have: the
/// record is well formed, whatever the state says.
fn plant_snapshot(
    journal: &Journal,
    stream: &StreamId,
    sequence: u64,
    state: &common::CounterState,
) {
    use evershard_engine::model::Aggregate;
    use evershard_engine::snapshot::SnapshotRecord;
    let record = SnapshotRecord::encode_state(Counter::STATE_SCHEMA_VERSION, sequence, state);
    journal
        .put_raw_snapshot_for_tests(stream, &sequence.to_be_bytes(), &record)
        .unwrap();
}

/// Flips one byte of the newest snapshot of `stream`, returning its sequence.
fn damage_newest(journal: &Journal, stream: &StreamId) -> u64 {
    let (seq, mut bytes) = journal.snapshots(stream).unwrap().remove(0);
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    journal
        .put_raw_snapshot_for_tests(stream, &seq.to_be_bytes(), &bytes)
        .unwrap();
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_falls_back_to_the_older_one_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &["a", "b"], 12).await;
    let stream = StreamId::new("Counter", "a");
    let journal = Journal::open_read_only(dir.path()).unwrap();
    assert_eq!(damage_newest(&journal, &stream), 10);
    let loaded = repository::load::<Counter>(&journal, &stream, u64::MAX, true).unwrap();
    assert_eq!((loaded.version, loaded.state.events), (12, 12));
    assert_eq!(loaded.from_snapshot, Some(5), "the older snapshot is used");
    assert_eq!(loaded.skipped_snapshots.len(), 1);
    let skipped = &loaded.skipped_snapshots[0];
    assert_eq!(skipped.sequence, Some(10));
    assert_eq!(skipped.fallback, Some(5));
    assert_eq!(
        skipped.reason,
        SkipReason::Unusable(SnapshotError::Checksum)
    );
    drop(journal);

    // Through the engine: the aggregate takes commands, and the engine says what it skipped.
    let engine = open_counters(dir.path()).await;
    let (state, version) = engine.state::<Counter>("a").await.unwrap();
    assert_eq!((state.events, version), (12, 12));
    let (state, _) = engine.state::<Counter>("b").await.unwrap();
    assert_eq!(state.events, 12);
    let skipped = engine.skipped_snapshots();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].stream, stream);
    let text = skipped[0].to_string();
    assert!(
        text.contains("snapshot at sequence 10") && text.contains("sequence 5"),
        "{text}"
    );
    engine
        .execute::<Counter>("a", CounterCommand::Add(1))
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_snapshots_fall_back_to_a_full_replay_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &["a", "b"], 11).await;
    let stream = StreamId::new("Counter", "a");
    let journal = Journal::open_read_only(dir.path()).unwrap();
    // A key under the stream's snapshot prefix that does not parse: reading the stream's
    // snapshots fails, as it does on a page sled reports as corrupt.
    journal
        .put_raw_snapshot_for_tests(&stream, &[0xff; 3], b"garbage")
        .unwrap();
    assert!(
        journal.snapshots(&stream).is_err(),
        "the snapshots are unreadable"
    );
    let loaded = repository::load::<Counter>(&journal, &stream, u64::MAX, true)
        .expect("the events alone recover the aggregate");
    assert_eq!((loaded.version, loaded.state.events), (11, 11));
    assert_eq!(loaded.from_snapshot, None, "a full replay");
    assert_eq!(loaded.events_replayed, 11);
    assert_eq!(loaded.skipped_snapshots.len(), 1);
    let skipped = &loaded.skipped_snapshots[0];
    assert_eq!((skipped.sequence, skipped.fallback), (None, None));
    assert!(matches!(skipped.reason, SkipReason::Unreadable(_)));
    assert!(
        skipped.to_string().contains("its events alone"),
        "{skipped}"
    );
    // The other aggregate's snapshots are untouched.
    let other = StreamId::new("Counter", "b");
    let loaded = repository::load::<Counter>(&journal, &other, u64::MAX, true).unwrap();
    assert_eq!(loaded.from_snapshot, Some(10));
    assert!(loaded.skipped_snapshots.is_empty());
    drop(journal);

    let engine = open_counters(dir.path()).await;
    let (state, version) = engine.state::<Counter>("a").await.unwrap();
    assert_eq!((state.events, version), (11, 11));
    assert_eq!(engine.skipped_snapshots().len(), 1);
    engine.shutdown().await.unwrap();
}

/// A snapshot is written only once the durable watermark covers its last event: in buffered
/// mode the entity hands it over at acknowledgement, before the segment log's sync, and a
/// snapshot stored then could outlive its events in a power cut (later events at the same
/// sequences would recover from the lost history's state). With the syncer held, the
/// acknowledged events have no snapshot; released, it comes. Fails when the snapshot writer
/// does not wait for the watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_snapshot_waits_for_its_events_to_be_durable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path()).await;
    let stream = StreamId::new("Counter", "c");
    let gate = engine.journal().hold_syncs_for_tests();
    for _ in 0..5 {
        engine
            .execute::<Counter>("c", CounterCommand::Add(1))
            .await
            .unwrap();
    }
    let durable = engine.journal().synced_position() >= 5;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if !durable {
            assert_eq!(
                engine.journal().snapshot_sequences(&stream).unwrap(),
                Vec::<u64>::new(),
                "a snapshot of events not yet synced"
            );
        }
    }
    drop(gate);
    let mut polls = 0;
    while engine
        .journal()
        .snapshot_sequences(&stream)
        .unwrap()
        .is_empty()
    {
        polls += 1;
        assert!(polls < 2_000, "the snapshot never came after the sync");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(engine.journal().snapshot_sequences(&stream).unwrap(), [5]);
    engine.shutdown().await.unwrap();
}

/// A snapshot that decodes, to a state that breaks the aggregate's invariants (as a state
/// type changed without its schema version would), while the events alone are sound: the
/// events decide, and the snapshot is reported. Before (found by review, 2026-11-28), the
/// aggregate was refused for good as an invariant violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_state_fails_the_invariants_falls_back_to_the_events() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &["a"], 10).await;
    let stream = StreamId::new("Counter", "a");
    let journal = Journal::open_read_only(dir.path()).unwrap();
    let bad = common::CounterState {
        total: 10,
        events: 10,
        broken: true,
    };
    plant_snapshot(&journal, &stream, 10, &bad);
    let loaded = repository::load::<Counter>(&journal, &stream, u64::MAX, true)
        .expect("the events alone recover the aggregate");
    assert_eq!((loaded.version, loaded.state.events), (10, 10));
    assert!(!loaded.state.broken);
    assert_eq!(loaded.from_snapshot, None, "a full replay");
    assert_eq!(loaded.skipped_snapshots.len(), 1);
    let skipped = &loaded.skipped_snapshots[0];
    assert_eq!(skipped.sequence, Some(10));
    assert!(
        matches!(skipped.reason, SkipReason::StateRejected(_)),
        "{skipped:?}"
    );
    drop(journal);
    let engine = open_counters(dir.path()).await;
    engine
        .execute::<Counter>("a", CounterCommand::Add(1))
        .await
        .unwrap();
    assert_eq!(engine.skipped_snapshots().len(), 1);
    engine.shutdown().await.unwrap();
}

/// A policy written as a struct literal with `keep: 0` keeps the snapshot it writes (it
/// pruned each one as soon as it was written; found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_keeps_none_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .durability(Durability::Buffered { flush_every_ms: 20 })
        .snapshot_policy(SnapshotPolicy {
            every_events: 5,
            keep: 0,
        })
        .open()
        .await
        .unwrap();
    for _ in 0..10 {
        engine
            .execute::<Counter>("a", CounterCommand::Add(1))
            .await
            .unwrap();
    }
    // Read after shutdown, which lets the snapshot writer finish its queue: it stores a
    // snapshot and prunes in two steps, so a read while it runs saw [10, 5] (CI, once).
    engine.shutdown().await.unwrap();
    let journal = Journal::open_read_only(dir.path()).unwrap();
    let sequences: Vec<u64> = journal
        .snapshots(&StreamId::new("Counter", "a"))
        .unwrap()
        .iter()
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(sequences, [10]);
}

/// A malformed key under a stream's snapshot prefix does not stop pruning: the stream's
/// later snapshots are pruned to `keep` as usual (they piled up, one every 5 events here;
/// found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_snapshot_key_does_not_stop_pruning() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &["a"], 5).await;
    let stream = StreamId::new("Counter", "a");
    {
        let journal = Journal::open_read_only(dir.path()).unwrap();
        journal
            .put_raw_snapshot_for_tests(&stream, &[0xff; 3], b"garbage")
            .unwrap();
    }
    let engine = open_counters(dir.path()).await;
    for _ in 0..25 {
        engine
            .execute::<Counter>("a", CounterCommand::Add(1))
            .await
            .unwrap();
    }
    // Bounded wait for the snapshot at 30 and its pruning.
    let mut kept = Vec::new();
    for _ in 0..500 {
        kept = engine
            .journal()
            .raw_snapshot_entries_for_tests(&stream)
            .unwrap();
        if kept.len() <= 3 && kept.iter().any(|(key, _)| key == &30u64.to_be_bytes()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let keys: Vec<&Vec<u8>> = kept.iter().map(|(key, _)| key).collect();
    assert_eq!(
        keys,
        [
            &25u64.to_be_bytes().to_vec(),
            &30u64.to_be_bytes().to_vec(),
            &vec![0xff; 3]
        ],
        "keep 2, and the malformed key"
    );
    engine.shutdown().await.unwrap();
}

/// A snapshot beyond the stream's head (of events a crash took, in a store written before
/// snapshots waited for their events' sync) is reported, not passed over in silence, and the
/// entity removes it: once new events fill its sequences it would look usable (found by
/// review, 2026-11-28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_beyond_the_head_is_reported_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &["a"], 10).await;
    let stream = StreamId::new("Counter", "a");
    {
        let journal = Journal::open_read_only(dir.path()).unwrap();
        let lost = common::CounterState {
            total: 99,
            events: 20,
            broken: false,
        };
        plant_snapshot(&journal, &stream, 20, &lost);
        let loaded = repository::load::<Counter>(&journal, &stream, u64::MAX, true).unwrap();
        assert_eq!((loaded.version, loaded.from_snapshot), (10, Some(10)));
        let skipped: Vec<_> = loaded.skipped_snapshots.iter().map(|s| &s.reason).collect();
        assert_eq!(
            skipped,
            [&SkipReason::Unusable(SnapshotError::BeyondHead {
                sequence: 20,
                head: 10
            })]
        );
    }
    let engine = open_counters(dir.path()).await;
    engine
        .execute::<Counter>("a", CounterCommand::Add(1))
        .await
        .unwrap();
    let sequences = engine.journal().snapshot_sequences(&stream).unwrap();
    assert!(!sequences.contains(&20), "{sequences:?}");
    // Its sequences refilled, the stream recovers from its own events.
    for _ in 0..10 {
        engine
            .execute::<Counter>("a", CounterCommand::Add(1))
            .await
            .unwrap();
    }
    engine.shutdown().await.unwrap();
    let journal = Journal::open_read_only(dir.path()).unwrap();
    let loaded = repository::load::<Counter>(&journal, &stream, u64::MAX, true).unwrap();
    assert_eq!((loaded.version, loaded.state.total), (21, 21));
}

/// Both at once: a snapshot beyond the head and, below it, one whose state fails. The full
/// replay decides, and both are reported (the first pass's skips were dropped by the
/// fall-back; found by review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fall_back_to_the_events_keeps_what_the_first_pass_skipped() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), &["a"], 10).await;
    let stream = StreamId::new("Counter", "a");
    let journal = Journal::open_read_only(dir.path()).unwrap();
    let state = |broken| common::CounterState {
        total: 10,
        events: 10,
        broken,
    };
    for (sequence, broken) in [(20u64, false), (10, true)] {
        plant_snapshot(&journal, &stream, sequence, &state(broken));
    }
    let loaded = repository::load::<Counter>(&journal, &stream, u64::MAX, true).unwrap();
    assert_eq!((loaded.version, loaded.from_snapshot), (10, None));
    let mut reasons: Vec<String> = loaded
        .skipped_snapshots
        .iter()
        .map(|s| format!("{:?} {:?}", s.sequence, s.reason))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("Some(10) StateRejected"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("BeyondHead"), "{reasons:?}");
}
