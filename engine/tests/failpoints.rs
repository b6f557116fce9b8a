//! Proves what a failure on each step of the write path does, with the named failpoints of the
//! `failpoints` feature (the `fail` crate; names in `evershard_engine::failpoints`):
//!
//! - the group's `apply_batch`, sled's flush, the fdatasync and the blob sync, each made to
//!   fail with EIO, with ENOSPC, and to panic: the append in flight gets a typed
//!   `AppendError::Storage` (never a hang: every wait is bounded), the journal is poisoned
//!   (`is_poisoned`, a `poison_cause` naming the step) and refuses every later append and
//!   sync with `StorageError::Poisoned`, as fjall does after a failed fsync, rather than
//!   pretend; after a reopen, `verify` is clean, every acknowledged append is there and the
//!   failed one is either absent or entirely present, and the store takes appends again;
//! - through the engine: a command in flight during a failed batch gets
//!   `CommandError::Storage`, later ones `Storage(Poisoned)`, shutdown returns (bounded), and
//!   the reopened engine has every acknowledged command;
//! - a failed or panicking snapshot write does not poison the journal and does not stop the
//!   snapshot thread (snapshots are optional: the next one is written);
//! - a failed topic indexer batch does not poison the journal either: the indexer retries
//!   and catches up once the failure clears; a batch that failed after its entries and
//!   before its cursor gives no message twice, to the read-only view or to the next batch;
//! - a failed consumer offset commit and a failed idempotency sweep (writes of their own,
//!   outside any command's batch; timers and idempotency keys of a command are in its batch,
//!   covered by `apply_batch`) answer a typed storage error, poison nothing, and succeed
//!   when retried once the failure clears;
//! - a scrub of an erasure's key entries from the segment log cut short part way through a
//!   write leaves the erasure whole, says so in the receipt, and the next open completes it.
//!
//! `fail` keeps one registry per process: each test holds a `FailScenario`, which serialises
//! the tests of this binary and clears every failpoint when dropped.

mod common;

use common::{log_bytes, occurrences, subject_entry_key, Counter, CounterCommand};
use evershard_engine::failpoints;
use evershard_engine::seglog::{SegmentLog, SEGMENT_BYTES};
use evershard_engine::{
    AppendError, AppendRequest, CommandError, Durability, Engine, EngineError, Journal,
    JournalConfig, JournalWriter, NewEvent, SnapshotPolicy, StorageError, StreamId, TopicError,
    TopicLog,
};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use uuid::Uuid;

/// The longest any single step here may take before the test calls it a hang.
const HANG_BOUND_MS: u64 = 20_000;

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Happened".into(),
        event_version: "1.0".into(),
        timestamp: chrono::DateTime::from_timestamp_micros(1_767_225_600_000_000).unwrap(),
        correlation_id: Uuid::new_v4(),
        causation_id: None,
        source: "failpoint-test".into(),
        user_id: None,
        session_id: None,
        audit_context: None,
        payload: n.to_le_bytes().to_vec(),
    }
}

/// Runs `f` on its own thread and waits for it at most [`HANG_BOUND_MS`]: a hang fails the
/// test with `what` instead of hanging it.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_millis(HANG_BOUND_MS))
        .unwrap_or_else(|_| panic!("{what} did not return within {HANG_BOUND_MS} ms: a hang"))
}

/// Appends `count` events to `stream` at `expected`, bounded.
fn append(
    journal: &JournalWriter,
    stream: &StreamId,
    expected: u64,
    count: u64,
) -> Result<u64, AppendError> {
    let journal = journal.clone();
    let events = (0..count).map(|i| event(expected + i + 1)).collect();
    let request = AppendRequest::new(stream.clone(), expected, events);
    bounded("an append", move || journal.append_blocking(request)).map(|c| c.version)
}

/// The events of `stream` as the payload numbers they carry.
fn stored(journal: &Journal, stream: &StreamId) -> Vec<u64> {
    journal
        .read_stream(stream, 1, u64::MAX)
        .map(|r| {
            let record = r.expect("a readable record");
            u64::from_le_bytes(record.payload.as_slice().try_into().unwrap())
        })
        .collect()
}

fn streams() -> Vec<StreamId> {
    (0..4)
        .map(|i| StreamId::new("Thing", format!("t{i}")))
        .collect()
}

/// One failpoint with one action, through a `JournalWriter`: see the file's doc.
fn journal_step_fails(name: &str, action: &str) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
    let streams = streams();
    // Acknowledged before the failure: 3 events on each stream.
    for s in &streams {
        assert_eq!(append(&journal, s, 0, 3).unwrap(), 3);
    }
    fail::cfg(name, action).unwrap();
    let failed_stream = &streams[0];
    let err = append(&journal, failed_stream, 3, 2).expect_err("the append in flight fails");
    assert!(
        matches!(err, AppendError::Storage(_)),
        "{name} {action}: a typed storage error, got {err:?}"
    );
    if action == "return(enospc)" {
        assert!(
            err.to_string().contains("No space left on device"),
            "{name}: the cause is said: {err}"
        );
    }
    assert!(!err.to_string().contains("Os {"), "no debug dump: {err}");
    assert!(
        journal.is_poisoned(),
        "{name} {action}: the journal is poisoned"
    );
    let cause = journal.poison_cause().expect("a poisoned journal says why");
    assert!(!cause.contains("Os {"), "no debug dump: {cause}");
    // Every later write is refused, typed, at once, even with the failpoint cleared.
    fail::remove(name);
    let later = append(&journal, &streams[1], 3, 1).expect_err("refused after poisoning");
    assert!(
        matches!(later, AppendError::Storage(StorageError::Poisoned)),
        "{later:?}"
    );
    let j = journal.clone();
    let sync = bounded("a sync", move || j.sync());
    assert!(matches!(sync, Err(StorageError::Poisoned)), "{sync:?}");
    let j = journal.clone();
    let _ = bounded("close", move || j.close());
    drop(journal);

    let journal = bounded("a reopen", {
        let dir = dir.path().to_path_buf();
        move || JournalWriter::open(dir, JournalConfig::default())
    })
    .expect("the store reopens after the failure");
    let report = journal.verify();
    assert!(report.is_clean(), "{name} {action}: {report:?}");
    for s in &streams[1..] {
        assert_eq!(stored(&journal, s), vec![1, 2, 3], "{name} {action}: {s}");
    }
    let failed = stored(&journal, failed_stream);
    assert!(
        failed == vec![1, 2, 3] || failed == vec![1, 2, 3, 4, 5],
        "{name} {action}: the failed append is absent or whole, found {failed:?}"
    );
    // Healthy again: appends are acknowledged.
    let head = failed.len() as u64;
    assert_eq!(append(&journal, failed_stream, head, 1).unwrap(), head + 1);
    journal.close().unwrap();
    scenario.teardown();
}

#[test]
fn each_step_of_the_write_path_fails_typed_and_poisons() {
    // On the segment log a group's steps are its frame's write (and its sled writes after
    // the sync, behind the same failpoint) and the log's fdatasync: sled is not flushed
    // for it.
    let steps: &[&str] = match evershard_engine::WritePath::from_env() {
        evershard_engine::WritePath::Sled => &[
            failpoints::APPLY_BATCH,
            failpoints::FLUSH,
            failpoints::FDATASYNC,
            failpoints::BLOB_SYNC,
        ],
        evershard_engine::WritePath::Log => &[failpoints::APPLY_BATCH, failpoints::FDATASYNC],
    };
    for &name in steps {
        for action in ["return(eio)", "return(enospc)", "panic"] {
            eprintln!("failpoint {name} -> {action}");
            journal_step_fails(name, action);
        }
    }
}

async fn open_counters(dir: &Path, every: u64) -> Engine {
    Engine::builder(dir)
        .register::<Counter>()
        .durability(Durability::Durable)
        .snapshot_policy(SnapshotPolicy::every(every).keep(2))
        .open()
        .await
        .expect("engine opens")
}

/// `n` commands `Add(1)` to counter `id`, each bounded.
async fn add_ones(engine: &Engine, id: &str, n: usize) {
    for _ in 0..n {
        within(
            "a command",
            engine.execute::<Counter>(id, CounterCommand::Add(1)),
        )
        .await
        .unwrap();
    }
}

/// Waits (bounded) until the topic indexer covers everything durable; false if it does not.
async fn indexed_all(engine: &Engine) -> bool {
    let durable = engine.journal().durable_position();
    engine
        .wait_indexed(durable, Duration::from_millis(HANG_BOUND_MS))
        .await
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_millis(HANG_BOUND_MS), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {HANG_BOUND_MS} ms: a hang"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_flight_gets_a_typed_error_and_shutdown_returns() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path(), 0).await;
    let mut acked = std::collections::HashMap::new();
    for id in ["a", "b", "c"] {
        for _ in 0..4 {
            within(
                "a command",
                engine.execute::<Counter>(id, CounterCommand::Add(1)),
            )
            .await
            .unwrap();
        }
        acked.insert(id, 4u64);
    }
    fail::cfg(failpoints::APPLY_BATCH, "return(enospc)").unwrap();
    let err = within(
        "a command",
        engine.execute::<Counter>("a", CounterCommand::Add(1)),
    )
    .await
    .expect_err("the batch fails");
    assert!(
        matches!(&err, CommandError::Storage(StorageError::Io(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("No space left on device"), "{err}");
    fail::remove(failpoints::APPLY_BATCH);
    let later = within(
        "a command",
        engine.execute::<Counter>("b", CounterCommand::Add(1)),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(later, CommandError::Storage(StorageError::Poisoned)),
        "{later:?}"
    );
    assert!(engine.journal().is_poisoned());
    let cause = engine.journal().poison_cause().unwrap();
    assert!(cause.contains("No space left on device"), "{cause}");
    let _ = within("shutdown", engine.shutdown()).await;

    let engine = within("reopen", open_counters(dir.path(), 0)).await;
    assert!(engine.journal().verify().is_clean());
    for (id, n) in &acked {
        let (state, _) = within("state", engine.state::<Counter>(id)).await.unwrap();
        assert_eq!(state.events, *n, "{id}");
        assert!(!state.broken);
    }
    within(
        "a command",
        engine.execute::<Counter>("a", CounterCommand::Add(1)),
    )
    .await
    .expect("writes again after reopen");
    within("shutdown", engine.shutdown()).await.unwrap();
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_write_neither_poisons_nor_stops_snapshots() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path(), 2).await;
    let stream = StreamId::new("Counter", "s");
    for action in ["return(eio)", "panic"] {
        fail::cfg(failpoints::SNAPSHOT_WRITE, action).unwrap();
        for _ in 0..4 {
            within(
                "a command",
                engine.execute::<Counter>("s", CounterCommand::Add(1)),
            )
            .await
            .expect("commands go on while snapshots fail");
        }
        assert!(!engine.journal().is_poisoned(), "{action}");
    }
    fail::remove(failpoints::SNAPSHOT_WRITE);
    // The snapshot thread survived the panic: the next due snapshot is written.
    add_ones(&engine, "s", 2).await;
    let mut written = false;
    for _ in 0..200 {
        if engine
            .journal()
            .snapshots(&stream)
            .unwrap()
            .iter()
            .any(|(seq, _)| *seq == 10)
        {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        written,
        "the snapshot at 10 is written once the failure clears"
    );
    within("shutdown", engine.shutdown()).await.unwrap();
    let engine = open_counters(dir.path(), 2).await;
    let (state, _) = engine.state::<Counter>("s").await.unwrap();
    assert_eq!(state.events, 10);
    within("shutdown", engine.shutdown()).await.unwrap();
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_topic_batch_is_retried_without_poisoning() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path(), 0).await;
    fail::cfg(failpoints::TOPIC_BATCH, "return(eio)").unwrap();
    for _ in 0..3 {
        within(
            "a command",
            engine.execute::<Counter>("t", CounterCommand::Add(1)),
        )
        .await
        .expect("commands do not wait for the indexer");
    }
    assert!(!engine.journal().is_poisoned());
    let durable = engine.journal().durable_position();
    let stuck = engine.indexed_through().unwrap();
    assert!(
        stuck < durable,
        "the indexer cannot move while its batch fails"
    );
    fail::remove(failpoints::TOPIC_BATCH);
    let caught_up = engine
        .wait_indexed(durable, Duration::from_millis(HANG_BOUND_MS))
        .await;
    assert!(caught_up, "the indexer retries and catches up");
    within("shutdown", engine.shutdown()).await.unwrap();
    scenario.teardown();
}

/// Every message of `test.counters`: (partition, offset, aggregate id, sequence), in
/// partition then offset order.
fn counter_messages(log: &TopicLog) -> Vec<(u32, u64, String, u64)> {
    let Ok(info) = log.topic("test.counters") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in 0..info.partitions {
        for m in log.read("test.counters", p, 0, usize::MAX).unwrap() {
            out.push((m.partition, m.offset, m.key().to_owned(), m.sequence));
        }
    }
    out
}

/// The indexer writes a batch's entries, then its cursor: a batch that fails (or crashes)
/// between the two leaves entries past the stored cursor. Neither the read-only view nor the
/// next batch may count their events twice: both start each partition at its end at the
/// cursor, and the indexer trims such entries before it plans again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_batch_left_past_its_cursor_give_no_message_twice() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path(), 0).await;
    fail::cfg(failpoints::TOPIC_BATCH_CURSOR, "return(eio)").unwrap();
    add_ones(&engine, "t", 3).await;
    // The failing batch wrote its entries (readers may already see them), not its cursor.
    let log = engine.topic_log().unwrap();
    let mut written = false;
    for _ in 0..HANG_BOUND_MS / 20 {
        if counter_messages(&log).len() == 3 {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(written, "the failing batch wrote its three entries");
    assert_eq!(log.cursor().unwrap(), 0, "and not its cursor");
    drop(log);
    // The shutdown's last batch fails the same way: the store is left as a crash there would.
    within("shutdown", engine.shutdown()).await.unwrap();
    let expected = |n: u64| -> Vec<(u64, String, u64)> {
        (0..n).map(|i| (i, "t".to_owned(), i + 1)).collect()
    };
    let placed = |messages: Vec<(u32, u64, String, u64)>| -> Vec<(u64, String, u64)> {
        messages
            .into_iter()
            .map(|(_, o, id, s)| (o, id, s))
            .collect()
    };

    // The read-only view plans the three events in memory from the stored cursor (0).
    let journal = Journal::open_read_only(dir.path()).unwrap();
    let mut catalog = evershard_engine::TopicCatalog::new();
    catalog.register::<Counter>();
    let view = TopicLog::read_only(&journal, catalog).unwrap();
    assert_eq!(placed(counter_messages(&view)), expected(3));
    drop(view);
    drop(journal);

    fail::remove(failpoints::TOPIC_BATCH_CURSOR);
    let engine = open_counters(dir.path(), 0).await;
    add_ones(&engine, "t", 2).await;
    assert!(indexed_all(&engine).await, "the indexer catches up");
    let log = engine.topic_log().unwrap();
    assert_eq!(placed(counter_messages(&log)), expected(5));
    assert_eq!(log.topic("test.counters").unwrap().messages(), 5);
    drop(log);
    within("shutdown", engine.shutdown()).await.unwrap();
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_offset_commits_and_sweeps_are_typed_and_poison_nothing() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path(), 0).await;
    add_ones(&engine, "o", 3).await;
    assert!(indexed_all(&engine).await);
    let mut consumer = engine.consumer("g", "test.counters").unwrap();
    let got = within("a poll", consumer.poll(100, Duration::from_millis(2_000)))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);

    fail::cfg(failpoints::COMMIT_OFFSETS, "return(enospc)").unwrap();
    let err = within("a commit", consumer.commit())
        .await
        .expect_err("the commit fails");
    assert!(
        matches!(err, TopicError::Storage(StorageError::Io(_))),
        "{err:?}"
    );
    assert!(!engine.journal().is_poisoned());
    fail::remove(failpoints::COMMIT_OFFSETS);
    within("a commit", consumer.commit())
        .await
        .expect("the retried commit succeeds");

    fail::cfg(failpoints::IDEMPOTENCY_SWEEP, "return(eio)").unwrap();
    let err = within("a sweep", engine.sweep_idempotency_keys())
        .await
        .expect_err("the sweep fails");
    assert!(
        matches!(err, EngineError::Storage(StorageError::Io(_))),
        "{err:?}"
    );
    assert!(!engine.journal().is_poisoned());
    fail::remove(failpoints::IDEMPOTENCY_SWEEP);
    within("a sweep", engine.sweep_idempotency_keys())
        .await
        .expect("the retried sweep succeeds");
    within("shutdown", engine.shutdown()).await.unwrap();
    scenario.teardown();
}

/// An erasure whose scrub of the log's frames fails after zeroing one range (the first
/// write it picked whole, the next one part way: its key zeroed, its value not): the
/// erasure is done and durable, the receipt says the log was not scrubbed, the subject's
/// name is still in the log, and the next open scrubs what is left, the torn write
/// included. Nothing else changes: the other subject reads back and `verify` is clean.
#[tokio::test]
async fn a_scrub_cut_short_is_completed_at_the_next_open() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let keys = dir.path().join("master.keys");
    evershard_engine::crypto::FileKeyProvider::append_new_key(&keys, "m1").unwrap();
    let open = || async {
        let provider = evershard_engine::crypto::FileKeyProvider::open(&keys).unwrap();
        Engine::builder(&store)
            .register::<Counter>()
            .sensitive::<Counter>(true)
            .key_provider(std::sync::Arc::new(provider))
            .durability(Durability::Durable)
            .open()
            .await
            .unwrap()
    };
    let engine = open().await;
    for id in ["alice", "bob"] {
        for _ in 0..3 {
            within(
                "a command",
                engine.execute::<Counter>(id, CounterCommand::Add(1)),
            )
            .await
            .unwrap();
        }
    }
    fail::cfg(failpoints::SCRUB, "1*off->return").unwrap();
    let receipt = within("a forget", engine.forget_subject("alice", "dpo", "test"))
        .await
        .unwrap();
    fail::remove(failpoints::SCRUB);
    let on_log = log_bytes(&store).is_some();
    assert_eq!(
        receipt.log_scrubbed, !on_log,
        "the sled layout has nothing to scrub"
    );
    within("shutdown", engine.shutdown()).await.unwrap();
    let alice = subject_entry_key("alice");
    // Writes a scrub zeroed part of: a key entry's key is never zeroes when written.
    let torn_writes = || {
        // Any frame may be part scrubbed here (the bound a reader of the store would take
        // from its writes cursor).
        let log =
            SegmentLog::open_read_only(&store.join("log"), SEGMENT_BYTES, 0, 1, u64::MAX).unwrap();
        let frames: Vec<_> = log.frames_from_address(0).map(Result::unwrap).collect();
        let torn = frames.iter().flat_map(|(_, f, _)| &f.writes);
        torn.filter(|w| w.key().first() == Some(&0)).count()
    };
    if let Some(log) = log_bytes(&store) {
        assert!(occurrences(&log, &alice) > 0, "the scrub was cut short");
        assert_eq!(torn_writes(), 1, "part way through a write");
    }

    let engine = open().await;
    within("shutdown", engine.shutdown()).await.unwrap();
    if let Some(log) = log_bytes(&store) {
        assert_eq!(occurrences(&log, &alice), 0, "the open completed the scrub");
        assert_eq!(torn_writes(), 0, "the open completed the torn write");
        assert_eq!(occurrences(&log, &subject_entry_key("bob")), 1);
    }
    let engine = open().await;
    assert!(matches!(
        engine.state::<Counter>("alice").await,
        Err(CommandError::Erased { .. })
    ));
    assert_eq!(engine.state::<Counter>("bob").await.unwrap().0.total, 3);
    assert!(engine.verify().await.unwrap().is_clean());
    within("shutdown", engine.shutdown()).await.unwrap();
    drop(scenario);
}
