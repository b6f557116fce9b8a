//! Proves what a damaged sled snapshot file (`snap.<lsn>`, sled's cache of its page table)
//! does, and that it costs no event (issue #12: one corrupted byte in it made the whole store
//! unreadable, 34 of 34 trials, while deleting it brought every event back):
//!
//! - a read-only open refuses with `OpenError::DamagedSnapshotFile`, which names the file
//!   and the exact `mv` that moves it aside, and leaves every byte of the store as it was
//!   (its check runs on a copy in a temporary directory);
//! - the writer's open moves the file aside (renamed `damaged-snap.<lsn>`, with its damaged
//!   bytes, never deleted), opens the store from its log, and finds every event: `verify`
//!   is clean and each stream reads back whole; the store takes appends again;
//! - damage that is not in the snapshot file (a corrupted log) is not "repaired" this way:
//!   the copy without the snapshot does not read clean, so nothing is moved.

use evershard_engine::{
    AppendRequest, Journal, JournalConfig, JournalWriter, NewEvent, OpenError, StreamId,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "Happened".into(),
        event_version: "1.0".into(),
        timestamp: chrono::DateTime::from_timestamp_micros(1_767_225_600_000_000).unwrap(),
        correlation_id: Uuid::new_v4(),
        causation_id: None,
        source: "snap-file-test".into(),
        user_id: None,
        session_id: None,
        audit_context: None,
        payload: n.to_le_bytes().to_vec(),
    }
}

const STREAMS: u64 = 20;
const EVENTS_PER_STREAM: u64 = 30;

fn stream(i: u64) -> StreamId {
    StreamId::new("Thing", format!("t{i}"))
}

/// A store with STREAMS × EVENTS_PER_STREAM events, opened twice so that sled has written a
/// snapshot file; returns the snapshot files.
fn make_store(dir: &Path) -> Vec<PathBuf> {
    let journal = JournalWriter::open(dir, JournalConfig::default()).unwrap();
    for i in 0..STREAMS {
        let events = (1..=EVENTS_PER_STREAM).map(event).collect();
        journal
            .append_blocking(AppendRequest::new(stream(i), 0, events))
            .unwrap();
    }
    journal.close().unwrap();
    JournalWriter::open(dir, JournalConfig::default())
        .unwrap()
        .close()
        .unwrap();
    let snaps = snap_files(dir);
    assert!(!snaps.is_empty(), "sled wrote a snapshot file");
    snaps
}

fn snap_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .collect();
    found.sort();
    found
}

fn flip_byte(file: &Path, at_fraction: f64) {
    let mut bytes = std::fs::read(file).unwrap();
    let i = ((bytes.len() as f64 * at_fraction) as usize).min(bytes.len() - 1);
    bytes[i] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}

/// Every file's bytes under `dir`.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                all.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    all
}

fn check_every_event(journal: &Journal) {
    let report = journal.verify();
    assert!(report.is_clean(), "{report:?}");
    for i in 0..STREAMS {
        let read: Vec<u64> = journal
            .read_stream(&stream(i), 1, u64::MAX)
            .map(|r| u64::from_le_bytes(r.unwrap().payload.as_slice().try_into().unwrap()))
            .collect();
        assert_eq!(read, (1..=EVENTS_PER_STREAM).collect::<Vec<_>>(), "t{i}");
    }
}

#[test]
fn a_damaged_snapshot_file_is_named_read_only_and_moved_aside_by_the_writer() {
    // A byte near the start (the header), in the middle, and in the trailing length/CRC.
    for at in [0.05, 0.5, 0.999] {
        eprintln!("damaging the snapshot file at {at} of its length");
        snapshot_file_damaged_at(at);
    }
}

fn snapshot_file_damaged_at(at_fraction: f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let snaps = make_store(&store);
    let newest = snaps.last().unwrap().clone();
    flip_byte(&newest, at_fraction);
    let damaged = std::fs::read(&newest).unwrap();

    let before = contents(&store);
    let err = Journal::open_read_only(&store).expect_err("sled refuses the damaged snapshot");
    let OpenError::DamagedSnapshotFile { moves, .. } = &err else {
        panic!("a damaged snapshot file, got {err:?}");
    };
    assert!(moves.iter().any(|(f, _)| *f == newest), "{moves:?}");
    let text = err.to_string();
    assert!(
        text.contains("mv ") && text.contains("damaged-snap."),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(
        contents(&store) == before,
        "a read-only open changed the store"
    );

    let journal = JournalWriter::open(&store, JournalConfig::default())
        .expect("the writer recovers from the log");
    check_every_event(&journal);
    let aside = newest.with_file_name(format!(
        "damaged-{}",
        newest.file_name().unwrap().to_string_lossy()
    ));
    assert_eq!(
        std::fs::read(&aside).expect("the damaged file was moved aside, not deleted"),
        damaged
    );
    let appended = journal
        .append_blocking(AppendRequest::new(
            stream(0),
            EVENTS_PER_STREAM,
            vec![event(99)],
        ))
        .unwrap();
    assert_eq!(appended.version, EVENTS_PER_STREAM + 1);
    journal.close().unwrap();
    // And it stays readable for read-only commands.
    let journal = Journal::open_read_only(&store).unwrap();
    assert!(journal.verify().is_clean());
}

#[test]
fn damage_in_the_log_is_not_blamed_on_the_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let snaps = make_store(&store);
    flip_byte(snaps.last().unwrap(), 0.5);
    // The log itself: damage its first page too, so that no copy reads clean.
    let db = store.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    for b in bytes.iter_mut().take(4096).skip(16) {
        *b ^= 0xff;
    }
    std::fs::write(&db, bytes).unwrap();
    let before_snaps = snap_files(&store);
    match JournalWriter::open(&store, JournalConfig::default()) {
        Err(OpenError::DamagedSnapshotFile { .. }) => panic!("blamed the snapshot file"),
        Err(e) => assert!(e.to_string().contains("corrupt"), "sled's own error: {e}"),
        Ok(_) => panic!("a store with a damaged log and snapshot opened"),
    }
    assert_eq!(snap_files(&store), before_snaps, "nothing was moved");
}
