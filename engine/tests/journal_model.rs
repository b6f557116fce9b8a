//! Model-based test of the journal (sled-style): random appends — with right and wrong
//! expected versions — and reopenings run against the journal and against a `Vec` of
//! payloads per stream. After every step the journal must agree with the model: contents,
//! heads, conflicts, a gapless global order, and a clean `verify`.
//! Also: a failed flush poisons the journal instead of guessing; bad requests get typed
//! errors; concurrent durable appends share one flush (group commit); and a close whose last
//! sync does not finish answers `CloseStalled` within its bound (sled's flush can hang:
//! spacejam/sled#1412), then closes once the sync is through.

use evershard_engine::{
    AppendError, Durability, Journal, JournalConfig, JournalWriter, StorageError, StreamId,
};
use evershard_engine::{AppendRequest, NewEvent};
use proptest::prelude::*;
use uuid::Uuid;

const STREAMS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Append {
        stream: usize,
        events: usize,
        version_skew: i8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..STREAMS, 0..4usize, prop_oneof![6 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)])
            .prop_map(|(stream, events, version_skew)| Op::Append { stream, events, version_skew }),
        1 => Just(Op::Reopen),
    ]
}

fn stream(i: usize) -> StreamId {
    // Ids where one is a prefix of another, to catch key-prefix mistakes.
    StreamId::new("Model", ["a", "ab", "a\u{e9}", "b"][i])
}

fn event(payload: Vec<u8>) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Happened".into(),
        event_version: "1.0".into(),
        timestamp: chrono::DateTime::from_timestamp_micros(1_767_225_600_000_000).unwrap(),
        correlation_id: Uuid::new_v4(),
        causation_id: None,
        source: "model-test".into(),
        user_id: Some("u".into()),
        session_id: None,
        audit_context: None,
        payload,
    }
}

fn config() -> JournalConfig {
    JournalConfig {
        durability: Durability::Buffered {
            flush_every_ms: 1000,
        },
        ..JournalConfig::default()
    }
}

fn check(journal: &Journal, model: &[Vec<Vec<u8>>]) {
    let mut total = 0;
    for (i, expected) in model.iter().enumerate() {
        let s = stream(i);
        let records: Vec<_> = journal
            .read_stream(&s, 1, u64::MAX)
            .collect::<Result<_, _>>()
            .unwrap();
        let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(&payloads, expected, "stream {s}");
        assert!(records
            .iter()
            .enumerate()
            .all(|(k, r)| r.sequence == k as u64 + 1));
        assert_eq!(journal.head(&s).unwrap().sequence, expected.len() as u64);
        total += expected.len();
    }
    let global: Vec<_> = journal.read_global(1).collect::<Result<_, _>>().unwrap();
    assert_eq!(global.len(), total);
    assert!(
        global
            .iter()
            .enumerate()
            .all(|(k, (pos, _, _))| *pos == k as u64 + 1),
        "global order has a gap"
    );
    // Reading from the middle starts exactly there, even inside a group commit's index entry.
    let from = total as u64 / 2 + 1;
    let tail: Vec<u64> = journal.read_global(from).map(|r| r.unwrap().0).collect();
    assert_eq!(tail, (from..=total as u64).collect::<Vec<_>>());
    for (pos, s, seq) in &global {
        let rec = journal.read_stream(s, *seq, *seq).next().unwrap().unwrap();
        assert_eq!(rec.global_position, *pos);
    }
    let listed: Vec<_> = journal
        .streams(Some("Model"))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(listed.len(), model.iter().filter(|m| !m.is_empty()).count());
    let report = journal.verify();
    assert!(report.is_clean(), "{report:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn journal_agrees_with_a_vec_per_stream(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = JournalWriter::open(dir.path(), config()).unwrap();
        let mut model: Vec<Vec<Vec<u8>>> = vec![Vec::new(); STREAMS];
        let mut counter = 0u32;
        for op in ops {
            match op {
                Op::Append { stream: i, events, version_skew } => {
                    let current = model[i].len() as i64;
                    let expected = (current + version_skew as i64).max(0) as u64;
                    let payloads: Vec<Vec<u8>> = (0..events).map(|_| { counter += 1; counter.to_le_bytes().to_vec() }).collect();
                    let request = AppendRequest::new(stream(i), expected, payloads.iter().cloned().map(event).collect());
                    match journal.append_blocking(request) {
                        Ok(committed) => {
                            prop_assert_eq!(expected, current as u64);
                            prop_assert_eq!(committed.version, current as u64 + events as u64);
                            model[i].extend(payloads);
                        }
                        Err(AppendError::Conflict { expected: e, actual, .. }) => {
                            prop_assert_ne!(expected, current as u64);
                            prop_assert_eq!((e, actual), (expected, current as u64));
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
                Op::Reopen => {
                    journal.close().unwrap();
                    drop(journal);
                    journal = JournalWriter::open(dir.path(), config()).unwrap();
                }
            }
            check(&journal, &model);
        }
        journal.close().unwrap();
    }
}

#[test]
fn a_failed_flush_poisons_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
    let s = StreamId::new("Model", "p");
    journal
        .append_blocking(AppendRequest::new(s.clone(), 0, vec![event(vec![1])]))
        .unwrap();
    journal.fail_next_sync_for_tests();
    let err = journal
        .append_blocking(AppendRequest::new(s.clone(), 1, vec![event(vec![2])]))
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Storage(StorageError::Io(_))),
        "{err:?}"
    );
    assert!(journal.is_poisoned());
    let err = journal
        .append_blocking(AppendRequest::new(s.clone(), 1, vec![event(vec![3])]))
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Storage(StorageError::Poisoned)),
        "{err:?}"
    );
}

#[test]
fn bad_requests_get_typed_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::open(dir.path(), config()).unwrap();
    let long_id = StreamId::new("Model", "x".repeat(5000));
    let err = journal
        .append_blocking(AppendRequest::new(long_id, 0, vec![event(vec![1])]))
        .unwrap_err();
    assert!(matches!(err, AppendError::InvalidRequest(_)), "{err:?}");
    let mut sneaky = AppendRequest::new(stream(0), 0, vec![event(vec![1])]);
    sneaky.extra_writes.push(evershard_engine::WriteOp::Put {
        key: b"e-forged".to_vec(),
        value: vec![],
    });
    assert!(matches!(
        journal.append_blocking(sneaky),
        Err(AppendError::InvalidRequest(_))
    ));
    // Oversized strings and payloads are refused up front; the journal goes on working.
    let mut long_user = event(vec![1]);
    long_user.user_id = Some("u".repeat(70_000));
    let err = journal
        .append_blocking(AppendRequest::new(stream(0), 0, vec![long_user]))
        .unwrap_err();
    assert!(matches!(err, AppendError::InvalidRequest(_)), "{err:?}");
    let huge = event(vec![0; evershard_engine::record::PAYLOAD_BYTES_MAX + 1]);
    let err = journal
        .append_blocking(AppendRequest::new(stream(0), 0, vec![huge]))
        .unwrap_err();
    assert!(matches!(err, AppendError::InvalidRequest(_)), "{err:?}");
    assert_eq!(journal.read_global(1).count(), 0);
    journal
        .append_blocking(AppendRequest::new(stream(0), 0, vec![event(vec![1])]))
        .unwrap();
    journal.close().unwrap();
    journal.close().unwrap(); // idempotent
    assert!(matches!(
        journal.append_blocking(AppendRequest::new(stream(0), 1, vec![event(vec![2])])),
        Err(AppendError::Storage(StorageError::Closed))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_one_flush() {
    // Hold the syncer, queue 64 durable appends from 64 tasks, release: they must be
    // acknowledged by at most two syncs (one for whatever the syncer had taken when it was
    // held, one for everything queued behind it) — not 64.
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
    let before = journal.syncs_done();
    let gate = journal.hold_syncs_for_tests();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let own = StreamId::new("Group", format!("g{i}"));
            journal
                .append(AppendRequest::new(own, 0, vec![event(vec![i as u8])]))
                .await
        }));
    }
    // Wait (bounded) until every append is applied in sled, i.e. on its way to the held
    // syncer. None can be acknowledged before the release.
    for _ in 0..2000 {
        if journal.read_global(1).count() == 64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        journal.syncs_done(),
        before,
        "a durable append was synced while held"
    );
    drop(gate);
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 64);
    let syncs = journal.syncs_done() - before;
    assert!(
        (1..=2).contains(&syncs),
        "{syncs} syncs for 64 acknowledged appends"
    );
    tokio::task::spawn_blocking(move || journal.close().unwrap())
        .await
        .unwrap();
}

#[test]
fn a_close_whose_last_sync_hangs_answers_within_its_bound() {
    // The syncer held stands for sled's flush waiting forever: `close_within` gives up with
    // a typed error instead of hanging, and leaves the journal open; once the sync can go
    // on, a second close finishes, releases the lock, and the store reopens with every
    // acknowledged event.
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
    let stream = StreamId::new("Close", "c");
    journal
        .append_blocking(AppendRequest::new(stream.clone(), 0, vec![event(vec![1])]))
        .unwrap();
    let gate = journal.hold_syncs_for_tests();
    let started = std::time::Instant::now();
    let stalled = journal.close_within(std::time::Duration::from_millis(200));
    assert!(
        matches!(stalled, Err(StorageError::CloseStalled { waited_ms: 200 })),
        "{stalled:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert!(
        JournalWriter::open(dir.path(), JournalConfig::default()).is_err(),
        "a stalled close keeps the store locked"
    );
    drop(gate);
    journal.close().unwrap();
    let reopened = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
    assert_eq!(reopened.read_stream(&stream, 1, u64::MAX).count(), 1);
    reopened.close().unwrap();
}
