//! sled writes no blob file in a store of evershard's segment size, and a store made with
//! sled's default segment size (every store before evershard chose its own) still opens and
//! works, keeping its size.
//!
//! Why it matters: sled 0.34 writes every log item above its blob threshold (a quarter of a
//! segment) to `blobs/<lsn>`, and a power cut between the fdatasync of `db` and the sync of
//! such a file can leave a durable tree node pointing at nothing (docs/design.md, "What the
//! durability tests prove and how", points 5 and 8). `journal::segments` bounds every key,
//! value and tree node below the threshold of 16 MiB segments; these tests check it where it
//! counts, in sled's own files:
//!
//! - `no_blob_files_are_written`: records at every limit (payload, strings, audit context,
//!   the longest stream type and id), outbox writes of the longest key and value, snapshots
//!   of the largest size, pruned as they go and outbox entries removed (so that leaves shrink
//!   and sled merges them into their neighbours), then an engine with the topic indexer
//!   writing topic index entries of many long stream ids; `blobs/` stays empty throughout,
//!   while the same workload on a store of the default segment size does make blob files
//!   (so the workload is large enough to be a test).
//! - `a_store_with_the_default_segment_size_opens_and_works`: a store started as evershard
//!   made them before (marker file and sled's default `conf`, `tests/fixtures/store`), filled,
//!   reopened for writing and read-only: its `conf` keeps 512 KiB, events survive, `verify`
//!   is clean; a missing `conf` is rebuilt with the size judged from the log.
//! - `a_writer_keeps_writing_sleds_buffer_out`: a writer of a store of 16 MiB segments
//!   writes sled's buffer out while it runs (`segments::SledRoller`), so that no buffer fills
//!   a whole segment, which sled 0.34 would never write (its 24-bit offset overflows). Fails
//!   without the roller on the segment log (checked by mutation: sled's file stayed at 159
//!   bytes for 20 s).

mod common;

use common::{Counter, CounterCommand};
use evershard_engine::model::AuditContext;
use evershard_engine::record::{PAYLOAD_BYTES_MAX, RECORD_STRING_BYTES_MAX};
use evershard_engine::segments::{
    KEY_BYTES_MAX, LEGACY_SEGMENT_BYTES, SEGMENT_BYTES, VALUE_BYTES_MAX,
};
use evershard_engine::{
    AppendRequest, Durability, Engine, Journal, JournalConfig, JournalWriter, NewEvent, StreamId,
    WriteOp,
};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// The bytes of evershard's marker file `EVERSHARD` (journal/probe.rs), an on-disk format.
const MARKER_FILE_CONTENTS: &[u8] = b"evershard store; journal format evershard-journal-v1\n";
/// sled 0.34's `conf` for its default 512 KiB segments.
const LEGACY_CONF: &[u8] = include_bytes!("../../tests/fixtures/store/sled-0.34-conf-512k");

const STREAMS_COUNT: usize = 24;
const ROUNDS_COUNT: usize = 6;

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs")).map_or(0, |d| d.count())
}

fn conf_segment_bytes(dir: &Path) -> usize {
    let conf = std::fs::read(dir.join("conf")).unwrap();
    let text = String::from_utf8_lossy(&conf[..conf.len() - 4]).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("segment_size: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// The start of a store as evershard made them before it chose its own segment size.
fn make_legacy_store(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("EVERSHARD"), MARKER_FILE_CONTENTS).unwrap();
    std::fs::write(dir.join("conf"), LEGACY_CONF).unwrap();
}

/// A stream with the longest type and id the journal accepts, told apart by `n`.
fn long_stream(n: usize) -> StreamId {
    let ty = "T".repeat(evershard_engine::model::AGGREGATE_TYPE_BYTES_MAX);
    let id = format!(
        "{n:04}{}",
        "i".repeat(evershard_engine::model::AGGREGATE_ID_BYTES_MAX - 4)
    );
    StreamId::new(ty, id)
}

/// An event with every field at its limit.
fn largest_event(fill: u8) -> NewEvent {
    let long = |n: usize| "s".repeat(n);
    let mut audit = AuditContext::new()
        .ip_address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap())
        .user_agent(long(RECORD_STRING_BYTES_MAX));
    for _ in 0..AuditContext::COMPLIANCE_FLAGS_MAX {
        audit = audit.compliance_flag(long(AuditContext::COMPLIANCE_FLAG_BYTES_MAX));
    }
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: long(RECORD_STRING_BYTES_MAX),
        event_version: long(RECORD_STRING_BYTES_MAX),
        timestamp: chrono::Utc::now(),
        correlation_id: Uuid::new_v4(),
        causation_id: Some(Uuid::new_v4()),
        source: long(RECORD_STRING_BYTES_MAX),
        user_id: Some(long(RECORD_STRING_BYTES_MAX)),
        session_id: Some(Uuid::new_v4()),
        audit_context: Some(audit),
        payload: vec![fill; PAYLOAD_BYTES_MAX],
    }
}

/// An outbox key of the longest length, told apart by `(n, round)`.
fn outbox_key(n: usize, round: usize) -> Vec<u8> {
    let mut key = vec![b'o'];
    key.extend_from_slice(&(n as u32).to_be_bytes());
    key.extend_from_slice(&(round as u32).to_be_bytes());
    key.resize(KEY_BYTES_MAX, b'k');
    key
}

/// Writes the journal-level workload; returns the blob files seen after each round.
fn journal_workload(dir: &Path) -> Vec<usize> {
    let config = JournalConfig {
        durability: Durability::Buffered {
            flush_every_ms: 100,
        },
        ..Default::default()
    };
    let journal = JournalWriter::open(dir, config).unwrap();
    let mut seen = Vec::new();
    for round in 0..ROUNDS_COUNT {
        for n in 0..STREAMS_COUNT {
            let stream = long_stream(n);
            let head = round as u64;
            let mut request =
                AppendRequest::new(stream.clone(), head, vec![largest_event((n + round) as u8)]);
            request.extra_writes.push(WriteOp::Put {
                key: outbox_key(n, round),
                value: vec![round as u8; VALUE_BYTES_MAX],
            });
            // Remove the previous round's outbox entries of every other stream: leaves of
            // the outbox keyspace shrink and sled merges them into their neighbours.
            if round > 0 && n % 2 == 0 {
                request.extra_writes.push(WriteOp::Remove {
                    key: outbox_key(n, round - 1),
                });
            }
            journal.append_blocking(request).unwrap();
            journal
                .put_snapshot(&stream, head + 1, &vec![n as u8; VALUE_BYTES_MAX])
                .unwrap();
            journal.prune_snapshots(&stream, 1).unwrap();
        }
        journal.sync().unwrap();
        seen.push(blob_files(dir));
    }
    assert!(journal.reader().verify().is_clean());
    journal.close().unwrap();
    seen
}

#[test]
fn no_blob_files_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let seen = journal_workload(&dir);
    assert_eq!(conf_segment_bytes(&dir), SEGMENT_BYTES);
    assert!(
        seen.iter().all(|&n| n == 0),
        "blob files after each round: {seen:?}"
    );

    // The same workload in a store of sled's default segments does write blob files: the
    // workload makes nodes large enough for the check above to mean something.
    let legacy = tmp.path().join("legacy");
    make_legacy_store(&legacy);
    let seen_legacy = journal_workload(&legacy);
    assert_eq!(conf_segment_bytes(&legacy), LEGACY_SEGMENT_BYTES);
    assert!(
        seen_legacy.iter().any(|&n| n > 0),
        "no blob file in a store of the default segment size either: {seen_legacy:?}"
    );

    // Topic index entries of many long stream ids, through an engine on the first store.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::builder(&dir)
            .register::<Counter>()
            .durability(Durability::Buffered { flush_every_ms: 50 })
            .topic_indexer(true)
            .open()
            .await
            .unwrap();
        let ids: Vec<String> = (0..96)
            .map(|n| {
                format!(
                    "{n:04}{}",
                    "c".repeat(evershard_engine::model::AGGREGATE_ID_BYTES_MAX - 4)
                )
            })
            .collect();
        for _ in 0..8 {
            let mut tasks = Vec::new();
            for id in &ids {
                let engine = engine.clone();
                let id = id.clone();
                tasks.push(tokio::spawn(async move {
                    engine
                        .execute::<Counter>(&id, CounterCommand::Add(1))
                        .await
                        .unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        let last = engine.journal().stats().unwrap().last_global_position;
        assert!(engine.wait_indexed(last, Duration::from_secs(60)).await);
        engine.shutdown().await.unwrap();
    });
    assert_eq!(
        blob_files(&dir),
        0,
        "blob files after the topic indexer ran"
    );
    let journal = Journal::open_read_only(&dir).unwrap();
    assert!(journal.verify().is_clean());
}

#[test]
fn a_store_with_the_default_segment_size_opens_and_works() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    make_legacy_store(&dir);
    let stream = long_stream(1);
    let config = || JournalConfig {
        durability: Durability::Durable,
        ..Default::default()
    };
    let append = |journal: &JournalWriter, head: u64| {
        let mut event = largest_event(head as u8);
        event.payload = vec![head as u8; 1000];
        journal
            .append_blocking(AppendRequest::new(stream.clone(), head, vec![event]))
            .unwrap();
    };
    let journal = JournalWriter::open(&dir, config()).unwrap();
    for head in 0..40 {
        append(&journal, head);
    }
    journal.close().unwrap();
    assert_eq!(conf_segment_bytes(&dir), LEGACY_SEGMENT_BYTES);

    // Reopened for writing: it keeps its size and takes more events.
    let journal = JournalWriter::open(&dir, config()).unwrap();
    assert_eq!(journal.reader().head(&stream).unwrap().sequence, 40);
    append(&journal, 40);
    journal.close().unwrap();
    assert_eq!(conf_segment_bytes(&dir), LEGACY_SEGMENT_BYTES);

    // Read-only, in place.
    let reader = Journal::open_read_only(&dir).unwrap();
    assert_eq!(reader.head(&stream).unwrap().sequence, 41);
    assert!(reader.verify().is_clean());
    drop(reader);

    // Without its `conf` (removed by an operator told it was damaged): the size is judged
    // from the log, and sled writes a new `conf` with it.
    std::fs::remove_file(dir.join("conf")).unwrap();
    let journal = JournalWriter::open(&dir, config()).unwrap();
    assert_eq!(journal.reader().head(&stream).unwrap().sequence, 41);
    journal.close().unwrap();
    assert_eq!(conf_segment_bytes(&dir), LEGACY_SEGMENT_BYTES);

    // And a new store beside it gets evershard's size.
    let fresh = tmp.path().join("fresh");
    let journal = JournalWriter::open(&fresh, config()).unwrap();
    journal.close().unwrap();
    assert_eq!(conf_segment_bytes(&fresh), SEGMENT_BYTES);
}

/// A writer of a store of 16 MiB segments flushes sled every 20 ms (`segments::SledRoller`):
/// sled 0.34 keeps an I/O buffer's offset in 24 bits, so a buffer that fills a whole 16 MiB
/// segment exactly is never written, and every later flush, close or read of a page from it
/// waits forever. On the segment log nothing else flushes sled between checkpoints, so the
/// sign of the roller is sled's file growing while the writer runs, with no sync, close or
/// checkpoint asked for. (On the sled layout every group flushes: the test holds there too,
/// without showing the roller.)
#[test]
fn a_writer_keeps_writing_sleds_buffer_out() {
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
    assert_eq!(conf_segment_bytes(dir.path()), SEGMENT_BYTES);
    let file = dir.path().join("db");
    let len = || std::fs::metadata(&file).unwrap().len();
    let before = len();
    for n in 0..4 {
        let mut request = AppendRequest::new(
            StreamId::new("Thing", format!("t{n}")),
            0,
            vec![largest_event(n as u8)],
        );
        request.extra_writes.push(WriteOp::Put {
            key: outbox_key(n, 0),
            value: vec![n as u8; VALUE_BYTES_MAX],
        });
        journal.append_blocking(request).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while len() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "sled's file stayed at {before} bytes for 20 s after the appends' writes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    journal.close().unwrap();
}
