//! The two write paths (docs/design.md, "The next write path"): a store keeps the layout it
//! was made with whatever a later open asks for; the same appends give the same records,
//! positions, heads, global order, listings, counts and Merkle leaves on the segment log as
//! in the sled layout (a seeded differential test: the seed is printed); and on the segment
//! log, the sled writes of acknowledged groups that a crash took from sled (SIGKILL before
//! sled ever flushed them) are re-applied from the log's frames at the next open — the test
//! first shows they were missing, so it fails if the re-application does not happen — and an
//! idempotency record kept in its frame holds after the clock stepped back; and a buffered group on the segment
//! log counts as synced for the followers only after the log's sync; and a timer entry
//! without its aggregate's reverse entry (what a buffered store's crash can leave) is removed
//! the first time it fires, not fired at every pass.

mod common;

use common::{Counter, CounterCommand};
use evershard_engine::model::{DemoRng, Metadata};
use evershard_engine::{
    keyspace_writes, AppendRequest, CommandError, Durability, Engine, Journal, JournalConfig,
    JournalWriter, NewEvent, StreamId, WriteOp, WritePath,
};
use evershard_testing::child::{self, TestChild};
use uuid::Uuid;

fn config(write_path: WritePath) -> JournalConfig {
    JournalConfig {
        write_path,
        ..JournalConfig::default()
    }
}

/// An event whose every byte follows from `n`: the same on both write paths.
fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::from_u128(0xe000 + n as u128),
        event_type: "Happened".into(),
        event_version: "1.0".into(),
        timestamp: chrono::DateTime::from_timestamp_micros(1_767_225_600_000_000 + n as i64)
            .unwrap(),
        correlation_id: Uuid::from_u128(0xc000 + n as u128),
        causation_id: None,
        source: "write-path-test".into(),
        user_id: None,
        session_id: None,
        audit_context: None,
        payload: vec![n as u8; 1 + (n % 300) as usize],
    }
}

/// The `t` and `T` entries of a timer of `stream`.
fn timer_entry(stream: &StreamId, deadline_micros: i64) -> Vec<WriteOp> {
    let deadline = chrono::DateTime::from_timestamp_micros(deadline_micros).unwrap();
    keyspace_writes::timer(stream, deadline)
}

#[test]
fn a_store_keeps_the_write_path_it_was_made_with() {
    for (made, asked) in [
        (WritePath::Log, WritePath::Sled),
        (WritePath::Sled, WritePath::Log),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let stream = StreamId::new("Thing", "t1");
        let journal = JournalWriter::open(dir.path(), config(made)).unwrap();
        let events = (1..=3).map(event).collect();
        journal
            .append_blocking(AppendRequest::new(stream.clone(), 0, events))
            .unwrap();
        journal.close().unwrap();
        let journal = JournalWriter::open(dir.path(), config(asked)).unwrap();
        assert_eq!(journal.write_path(), made);
        journal
            .append_blocking(AppendRequest::new(stream.clone(), 3, vec![event(4)]))
            .unwrap();
        let read: Vec<u64> = journal
            .read_stream(&stream, 1, u64::MAX)
            .map(|r| r.unwrap().sequence)
            .collect();
        assert_eq!(read, vec![1, 2, 3, 4]);
        assert_eq!(dir.path().join("log").exists(), made == WritePath::Log);
        journal.close().unwrap();
        let read_only = Journal::open_read_only(dir.path()).unwrap();
        assert_eq!(read_only.write_path(), made);
        assert!(read_only.verify().is_clean());
    }
}

#[test]
fn both_write_paths_store_and_read_the_same() {
    let seed = child::seed_or_clock("EVERSHARD_WRITE_PATH_SEED", "write path differential");
    let mut rng = DemoRng::new(seed);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let open_both = || {
        [
            JournalWriter::open(dirs[0].path(), config(WritePath::Sled)).unwrap(),
            JournalWriter::open(dirs[1].path(), config(WritePath::Log)).unwrap(),
        ]
    };
    let mut journals = open_both();
    let streams: Vec<StreamId> = (0..12)
        .map(|i| StreamId::new(if i % 3 == 0 { "Other" } else { "Thing" }, format!("s{i}")))
        .collect();
    let mut heads = vec![0u64; streams.len()];
    let mut n = 0u64;
    for _ in 0..300 {
        let s = rng.below(streams.len() as u64) as usize;
        let count = 1 + rng.below(4);
        let events: Vec<NewEvent> = (0..count)
            .map(|_| {
                n += 1;
                event(n)
            })
            .collect();
        for journal in &journals {
            let request = AppendRequest::new(streams[s].clone(), heads[s], events.clone());
            journal.append_blocking(request).unwrap();
        }
        heads[s] += count;
        // Now and then a reopen, so that both read what they stored, not what they cache.
        if rng.below(100) == 0 {
            for journal in &journals {
                journal.close().unwrap();
            }
            journals = open_both();
            compare(seed, &journals, &streams, &heads);
        }
    }
    compare(seed, &journals, &streams, &heads);
}

fn compare(seed: u64, journals: &[JournalWriter; 2], streams: &[StreamId], heads: &[u64]) {
    let [sled, log] = journals;
    assert_eq!(log.write_path(), WritePath::Log);
    for (stream, &head) in streams.iter().zip(heads) {
        assert_eq!(
            sled.head(stream).unwrap(),
            log.head(stream).unwrap(),
            "seed {seed}"
        );
        assert_eq!(sled.head(stream).unwrap().sequence, head);
        let a: Vec<_> = sled
            .read_stream(stream, 1, u64::MAX)
            .map(Result::unwrap)
            .collect();
        let b: Vec<_> = log
            .read_stream(stream, 1, u64::MAX)
            .map(Result::unwrap)
            .collect();
        assert_eq!(a, b, "seed {seed}: {stream}");
        let middle = (head / 2).max(1);
        let a: Vec<_> = sled
            .read_stream(stream, middle, middle + 2)
            .map(Result::unwrap)
            .collect();
        let b: Vec<_> = log
            .read_stream(stream, middle, middle + 2)
            .map(Result::unwrap)
            .collect();
        assert_eq!(a, b, "seed {seed}: {stream} from {middle}");
        assert_eq!(
            sled.record_bytes(stream, middle).unwrap(),
            log.record_bytes(stream, middle).unwrap()
        );
    }
    let global =
        |j: &JournalWriter, from| -> Vec<_> { j.read_global(from).map(Result::unwrap).collect() };
    assert_eq!(global(sled, 1), global(log, 1), "seed {seed}");
    assert_eq!(global(sled, 77), global(log, 77), "seed {seed}");
    for filter in [None, Some("Thing"), Some("Other"), Some("None")] {
        let a: Vec<_> = sled.streams(filter).map(Result::unwrap).collect();
        let b: Vec<_> = log.streams(filter).map(Result::unwrap).collect();
        assert_eq!(a, b, "seed {seed}: streams of {filter:?}");
    }
    let (a, b) = (sled.stats().unwrap(), log.stats().unwrap());
    assert_eq!(
        (a.events, a.event_bytes, a.last_global_position),
        (b.events, b.event_bytes, b.last_global_position)
    );
    let (a, b) = (sled.verify(), log.verify());
    assert!(a.is_clean() && b.is_clean(), "seed {seed}: {a:?} {b:?}");
    assert_eq!((a.streams, a.events), (b.streams, b.events));
    assert!(a.leaves.is_some());
    assert_eq!(a.leaves, b.leaves, "seed {seed}: the Merkle leaves");
}

/// A child's durable writer on the segment log in `dir`.
fn child_writer(dir: &str) -> JournalWriter {
    let config = JournalConfig {
        durability: Durability::Durable,
        ..config(WritePath::Log)
    };
    let journal = JournalWriter::open(dir, config).unwrap();
    // The test harness's own "test ... " line has no newline yet: end it.
    println!();
    journal
}

/// A child says it is done and waits to be killed (sled is never flushed meanwhile).
fn done_until_killed() -> ! {
    println!("done");
    std::thread::sleep(std::time::Duration::from_secs(600));
    panic!("the parent did not kill this child within 10 minutes");
}

const CHILD_ENV: &str = "EVERSHARD_WRITE_PATH_CHILD_DIR";
const CHILD_GROUPS: u64 = 40;

/// The child: appends `CHILD_GROUPS` acknowledged groups, each with a timer entry, on the
/// segment log, says so, and waits to be killed (sled is never flushed meanwhile).
#[test]
#[ignore = "run by sled_writes_lost_in_a_crash_are_reapplied_from_the_log as a child"]
fn write_path_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let journal = child_writer(&dir);
    for i in 0..CHILD_GROUPS {
        let stream = StreamId::new("Thing", format!("t{i}"));
        let mut request = AppendRequest::new(stream.clone(), 0, vec![event(i + 1)]);
        request.extra_writes = timer_entry(&stream, 1_800_000_000_000_000 + i as i64);
        journal.append_blocking(request).unwrap();
        println!("ack {i}");
    }
    done_until_killed();
}

#[test]
fn sled_writes_lost_in_a_crash_are_reapplied_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = TestChild::spawn("write_path_child", &[(CHILD_ENV, dir.path())]);
    let mut acked = 0;
    while let Some(line) = child.next_line() {
        if line == "done" {
            break;
        }
        acked += u64::from(line.starts_with("ack "));
    }
    child.kill();
    assert_eq!(acked, CHILD_GROUPS, "the child acknowledged every group");
    let timers = |journal: &Journal| -> u64 {
        (0..CHILD_GROUPS)
            .filter(|i| {
                let stream = StreamId::new("Thing", format!("t{i}"));
                journal.timer(&stream).unwrap().is_some()
            })
            .count() as u64
    };
    // sled did not keep the groups' writes (applied after each frame's sync, never
    // flushed): a reader, which must not write the store, sees that and reads a private
    // copy with them re-applied — and sees every timer.
    let read_only = Journal::open_read_only(dir.path()).unwrap();
    assert!(
        read_only.reads_a_private_copy(),
        "sled kept every write: this test would not see a missing re-application"
    );
    assert_eq!(
        timers(&read_only),
        CHILD_GROUPS,
        "the reader sees every timer"
    );
    assert_eq!(
        read_only
            .head(&StreamId::new("Thing", "t39"))
            .unwrap()
            .sequence,
        1
    );
    drop(read_only);
    // A writer re-applies them in place.
    let journal = JournalWriter::open(dir.path(), config(WritePath::Log)).unwrap();
    assert_eq!(
        timers(&journal),
        CHILD_GROUPS,
        "every acknowledged timer is back"
    );
    for i in 0..CHILD_GROUPS {
        let stream = StreamId::new("Thing", format!("t{i}"));
        let deadline = journal.timer(&stream).unwrap().unwrap();
        assert_eq!(
            deadline.timestamp_micros(),
            1_800_000_000_000_000 + i as i64
        );
        assert_eq!(journal.head(&stream).unwrap().sequence, 1);
    }
    assert_eq!(journal.timers(None).count() as u64, CHILD_GROUPS);
    assert!(journal.verify().is_clean());
    journal.close().unwrap();
    // Now sled holds them: a reader opens the store in place.
    let read_only = Journal::open_read_only(dir.path()).unwrap();
    assert!(!read_only.reads_a_private_copy());
    assert_eq!(timers(&read_only), CHILD_GROUPS);
}

const TIMERS_CHILD_ENV: &str = "EVERSHARD_HELD_TIMERS_CHILD_DIR";
const TIMERS_CHILD_STREAMS: u64 = 30;

/// Where the held-timers child leaves stream `i`'s timer: set at `base + i`, then moved to
/// `base + 1000 + i` for every other stream, and removed for every third (in that order).
fn held_timer_history(i: u64) -> Vec<(Option<i64>, Option<i64>)> {
    let base = 1_800_000_000_000_000i64;
    let first = base + i as i64;
    let moved = base + 1_000 + i as i64;
    let mut history = vec![(None, Some(first))];
    let mut now = first;
    if i % 2 == 0 {
        history.push((Some(now), Some(moved)));
        now = moved;
    }
    if i % 3 == 0 {
        history.push((Some(now), None));
    }
    history
}

/// The child: sets, moves and removes timers in acknowledged groups on the segment log,
/// with a group carrying another keyspace's write (an outbox entry no reader looks at)
/// after every few, so that `m | "log-writes"` passes frames whose timer writes are still
/// held in memory (see `journal::deferred`); says so, and waits to be killed.
#[test]
#[ignore = "run by timer_writes_held_in_memory_come_back_after_a_crash as a child"]
fn held_timers_child() {
    let Ok(dir) = std::env::var(TIMERS_CHILD_ENV) else {
        return;
    };
    let journal = child_writer(&dir);
    let at =
        |micros: Option<i64>| micros.map(|m| chrono::DateTime::from_timestamp_micros(m).unwrap());
    let mut sequence = std::collections::HashMap::new();
    let mut n = 0u64;
    for step in 0..3 {
        for i in 0..TIMERS_CHILD_STREAMS {
            let Some(&(from, to)) = held_timer_history(i).get(step) else {
                continue;
            };
            let stream = StreamId::new("Thing", format!("t{i}"));
            let version = sequence.entry(i).or_insert(0u64);
            n += 1;
            let mut request = AppendRequest::new(stream.clone(), *version, vec![event(n)]);
            request.extra_writes = keyspace_writes::timer_moved(&stream, at(from), at(to));
            if n % 4 == 0 {
                request.extra_writes.push(WriteOp::Put {
                    key: format!("oheld-timers-test-{n}").into_bytes(),
                    value: vec![1],
                });
            }
            journal.append_blocking(request).unwrap();
            *version += 1;
        }
    }
    done_until_killed();
}

/// Timer writes wait in memory between their group's sync and their turn in sled, while
/// other keyspaces' writes go in at once and move `m | "log-writes"` past them: after a
/// SIGKILL, a reader (on its private copy) and a writer (in place) each find every stream's
/// last timer, and no timer a later group moved or removed. Fails when opening applies the
/// timer writes only from `m | "log-writes"` on.
#[test]
fn timer_writes_held_in_memory_come_back_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = TestChild::spawn("held_timers_child", &[(TIMERS_CHILD_ENV, dir.path())]);
    while let Some(line) = child.next_line() {
        if line == "done" {
            break;
        }
    }
    child.kill();
    let expected: Vec<(StreamId, Option<i64>)> = (0..TIMERS_CHILD_STREAMS)
        .map(|i| {
            let last = held_timer_history(i).last().unwrap().1;
            (StreamId::new("Thing", format!("t{i}")), last)
        })
        .collect();
    let check = |journal: &Journal, who: &str| {
        for (stream, deadline) in &expected {
            assert_eq!(
                journal.timer(stream).unwrap().map(|t| t.timestamp_micros()),
                *deadline,
                "{who}: the timer of {stream}"
            );
        }
        let mut listed: Vec<(String, i64)> = journal
            .timers(None)
            .map(|t| {
                let t = t.unwrap();
                (t.stream.aggregate_id, t.deadline.timestamp_micros())
            })
            .collect();
        listed.sort();
        let mut wanted: Vec<(String, i64)> = expected
            .iter()
            .filter_map(|(s, d)| d.map(|d| (s.aggregate_id.clone(), d)))
            .collect();
        wanted.sort();
        assert_eq!(listed, wanted, "{who}: the pending timers");
    };
    let read_only = Journal::open_read_only(dir.path()).unwrap();
    assert!(
        read_only.reads_a_private_copy(),
        "sled holds every timer write: this test would not see a missing re-application"
    );
    check(&read_only, "a reader");
    // The copy is the reader's alone, as the store is its owner's (docs/security.md).
    let mine = format!("evershard-read-{}-", std::process::id());
    let copies: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&mine))
        .collect();
    assert!(!copies.is_empty(), "the private copy under the temp dir");
    for copy in copies {
        use std::os::unix::fs::PermissionsExt;
        let mut paths = vec![copy.path()];
        while let Some(path) = paths.pop() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue; // another test's copy, removed meanwhile
            };
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(
                meta.permissions().mode() & 0o777,
                want,
                "{}",
                path.display()
            );
            if meta.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    paths.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
                }
            }
        }
    }
    drop(read_only);
    let journal = JournalWriter::open(dir.path(), config(WritePath::Log)).unwrap();
    check(&journal, "a writer");
    assert!(journal.verify().is_clean());
    journal.close().unwrap();
    let read_only = Journal::open_read_only(dir.path()).unwrap();
    assert!(!read_only.reads_a_private_copy());
    check(&read_only, "a reader after the writer's close");
}

/// `m | "log-writes"` is not written for frames that carried no sled write until it lags
/// 16 MiB, so that it stays off the acknowledgement path: a clean close still writes it, and
/// a reader then opens the store in place, with nothing to re-apply.
#[test]
fn a_closed_store_has_no_writes_pending_after_groups_without_writes() {
    let dir = tempfile::tempdir().unwrap();
    let durable = || JournalConfig {
        durability: Durability::Durable,
        ..config(WritePath::Log)
    };
    let journal = JournalWriter::open(dir.path(), durable()).unwrap();
    // A group with a timer (its writes applied, the cursor due), then many with none.
    let first = StreamId::new("Thing", "t0");
    let mut request = AppendRequest::new(first.clone(), 0, vec![event(1)]);
    request.extra_writes = timer_entry(&first, 1_800_000_000_000_000);
    journal.append_blocking(request).unwrap();
    for i in 1..200u64 {
        let stream = StreamId::new("Thing", format!("t{i}"));
        journal
            .append_blocking(AppendRequest::new(stream, 0, vec![event(i + 1)]))
            .unwrap();
    }
    journal.close().unwrap();
    let read_only = Journal::open_read_only(dir.path()).unwrap();
    assert!(
        !read_only.reads_a_private_copy(),
        "the close left frames whose writes sled is not known to hold"
    );
    assert!(read_only.timer(&first).unwrap().is_some());
    assert_eq!(
        read_only
            .head(&StreamId::new("Thing", "t199"))
            .unwrap()
            .sequence,
        1
    );
    drop(read_only);
    // And the writer opens it with everything where it was.
    let journal = JournalWriter::open(dir.path(), durable()).unwrap();
    assert_eq!(journal.timers(None).count(), 1);
    assert!(journal.verify().is_clean());
    journal.close().unwrap();
}

/// On the segment log an idempotency record is read from the frame that holds it (what a
/// power cut leaves — sled's pointer to a frame the log lost — is no record: the unit test
/// `on_the_segment_log_sled_holds_keys_and_a_frame_address_and_a_stale_address_is_no_record`).
/// A record so read is kept whatever the clock did: a command of no events decided after the
/// clock stepped back is recorded with a time before the event it was decided on, and its key
/// still answers its original result, before and after a reopen, and refuses another
/// command. It used to be taken for a record a crash half-kept (its time checked against that
/// event's), so a repeat was decided afresh and the key reused for another command applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_idempotency_record_holds_after_the_clock_stepped_back() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
        .unwrap()
        .to_utc();
    let clock = std::sync::Arc::new(evershard_engine::ManualClock::new(t0));
    let open = || {
        Engine::builder(dir.path())
            .register::<Counter>()
            .write_path(WritePath::Log)
            .clock(clock.clone())
            .open()
    };
    let keyed = |key: u128| Metadata::new("test").idempotency_key(Uuid::from_u128(key));
    let engine = open().await.unwrap();
    let first = engine
        .execute_with::<Counter>("c", CounterCommand::Add(1), keyed(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    clock.set(t0 - chrono::TimeDelta::seconds(1));
    let nothing = engine
        .execute_with::<Counter>("c", CounterCommand::Add(0), keyed(2))
        .await
        .unwrap();
    assert!(nothing.is_empty());
    for reopened in [false, true] {
        let engine = if reopened {
            open().await.unwrap()
        } else {
            engine.clone()
        };
        let written = engine.journal().durable_position();
        let repeat = engine
            .execute_with::<Counter>("c", CounterCommand::Add(0), keyed(2))
            .await
            .unwrap();
        assert!(repeat.is_empty(), "reopened {reopened}");
        let other = engine
            .execute_with::<Counter>("c", CounterCommand::Add(5), keyed(2))
            .await;
        assert!(
            matches!(other, Err(CommandError::IdempotencyConflict { .. })),
            "reopened {reopened}: {other:?}"
        );
        assert_eq!(
            engine.journal().durable_position(),
            written,
            "nothing written"
        );
        assert_eq!(engine.state::<Counter>("c").await.unwrap().1, 1);
        engine.shutdown().await.unwrap();
    }
}

/// In buffered mode a group is acknowledged before its sync: the durable watermark (what
/// was acknowledged) moves at once; the synced watermark, which the topic indexer, the tree
/// maintainer and the snapshot writer follow (and whose derived entries go into sled, which
/// may reach the disk first), moves on the segment log only after the log's `fdatasync`,
/// and on the sled layout at once (sled's prefix recovery keeps its followers' entries no
/// further than the events). Fails when a buffered group on the log moves the synced
/// watermark at acknowledgement.
#[test]
fn a_buffered_group_on_the_log_counts_as_synced_only_after_its_sync() {
    for (write_path, before_the_sync) in [(WritePath::Log, 0), (WritePath::Sled, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalWriter::open(
            dir.path(),
            JournalConfig {
                durability: Durability::Buffered { flush_every_ms: 10 },
                ..config(write_path)
            },
        )
        .unwrap();
        let gate = journal.hold_syncs_for_tests();
        journal
            .append_blocking(AppendRequest::new(
                StreamId::new("Thing", "t1"),
                0,
                vec![event(1)],
            ))
            .unwrap();
        assert_eq!(
            journal.durable_position(),
            1,
            "{write_path:?}: acknowledged"
        );
        assert_eq!(
            journal.synced_position(),
            before_the_sync,
            "{write_path:?}: the synced watermark while the sync is held"
        );
        drop(gate);
        let mut polls = 0;
        while journal.synced_position() < 1 {
            polls += 1;
            assert!(
                polls < 2_000,
                "{write_path:?}: the sync did not move the watermark"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        journal.close().unwrap();
    }
}

/// A log whose first segment is gone (a file removed by hand) no longer starts at global
/// position 1: `verify` says so, naming the missing positions, instead of hashing the events
/// that remain as the tree's first leaves. (The sled layout's own check of its first
/// position is in `verify.rs`.)
#[test]
fn a_log_without_its_first_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::open(dir.path(), config(WritePath::Log)).unwrap();
    let stream = StreamId::new("Thing", "t");
    // Over 1 MiB of records: a second segment.
    for batch in 0..40u64 {
        let events = (0..100).map(|i| {
            let mut e = event(batch * 100 + i);
            e.payload = vec![7; 300];
            e
        });
        journal
            .append_blocking(AppendRequest::new(
                stream.clone(),
                batch * 100,
                events.collect(),
            ))
            .unwrap();
    }
    journal.close().unwrap();
    let mut segments: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "{segments:?}");
    assert!(Journal::open_read_only(dir.path())
        .unwrap()
        .verify()
        .is_clean());
    std::fs::remove_file(&segments[0]).unwrap();
    let report = Journal::open_read_only(dir.path())
        .expect("the rest of the log opens: verify names what is missing")
        .verify();
    assert!(
        report
            .issues
            .iter()
            .any(|i| i.problem.contains("starts at global position") && i.problem.contains("1..=")),
        "{:?}",
        &report.issues[..report.issues.len().min(3)]
    );
    // Every segment gone: the log no longer reaches what the store says was synced.
    for segment in &segments[1..] {
        std::fs::remove_file(segment).unwrap();
    }
    assert!(
        Journal::open_read_only(dir.path()).is_err(),
        "a log with no segments left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_timer_entry_is_removed_when_it_fires() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::new("Counter", "c-1");
    let deadline = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    // Its `t` entry alone: no `T`, and an aggregate whose state asks for no timer.
    let store = dir.path().to_path_buf();
    let stray = stream.clone();
    tokio::task::spawn_blocking(move || {
        let journal = JournalWriter::open(store, config(WritePath::Log)).unwrap();
        let mut request = AppendRequest::new(stray.clone(), 0, Vec::new());
        request.extra_writes = keyspace_writes::timer(&stray, deadline)
            .into_iter()
            .take(1)
            .collect();
        journal.append_blocking(request).unwrap();
        journal.close().unwrap();
    })
    .await
    .unwrap();
    let clock = std::sync::Arc::new(evershard_engine::ManualClock::new(
        deadline + chrono::TimeDelta::hours(1),
    ));
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    assert_eq!(engine.journal().timers(None).count(), 1, "the stray entry");
    assert_eq!(
        engine.run_due_timers().await.unwrap(),
        0,
        "no timer command ran"
    );
    assert_eq!(
        engine.journal().timers(None).count(),
        0,
        "the stray entry was removed"
    );
    assert!(engine.history::<Counter>("c-1").unwrap().is_empty());
    assert!(engine.journal().timer(&stream).unwrap().is_none());
    engine.shutdown().await.unwrap();
}

/// A timer the scheduler read that a command moved (or removed) before it fired finds no
/// entry left: the fire does nothing and writes nothing (before, it wrote a frame removing
/// the entry that was no longer there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_of_a_timer_moved_since_the_scheduler_read_it_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .write_path(WritePath::Log)
        .open()
        .await
        .unwrap();
    engine
        .execute::<Counter>("c-1", CounterCommand::Add(1))
        .await
        .unwrap();
    let end = engine.log_end_for_tests().expect("a store on the log");
    // Counter asks for no timer: the entry of an hour ago is gone, as if moved.
    let gone = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    assert_eq!(
        engine.fire_timer_for_tests("Counter", "c-1", gone).await,
        Ok(false)
    );
    assert_eq!(engine.log_end_for_tests(), Some(end), "nothing was written");
    assert_eq!(engine.history::<Counter>("c-1").unwrap().len(), 1);
    engine.shutdown().await.unwrap();
}
