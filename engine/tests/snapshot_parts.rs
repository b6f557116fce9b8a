//! Proves that a snapshot larger than one journal value is stored in parts and used whole:
//! the engine's snapshot thread stores a ~200 KiB state as a manifest plus parts, each within
//! `VALUE_BYTES_MAX`; recovery starts from it and folds nothing after it; a lost part makes
//! recovery skip that snapshot (`SnapshotError::Incomplete`) and fall back to the older one,
//! never use a partial one; a rewrite at the same sequence and pruning leave no stale part;
//! a snapshot above `SNAPSHOT_BYTES_MAX` is refused with `SnapshotTooLarge`. Small snapshots
//! stay one value under their key, byte for byte the one-key layout every older store has.
//! A sealed (encrypted) snapshot is cut into parts the same way and opened after assembly.

use evershard_engine::crypto::{FileKeyProvider, KeyProvider};
use evershard_engine::model::{Aggregate, DecideContext, DomainEvent};
use evershard_engine::segments::VALUE_BYTES_MAX;
use evershard_engine::snapshot::{
    Manifest, SkipReason, SnapshotError, SnapshotRecord, SNAPSHOT_BYTES_MAX,
};
use evershard_engine::{
    repository, Durability, Engine, JournalConfig, JournalWriter, SnapshotPolicy, StorageError,
    StreamId,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// An aggregate whose state keeps every note it was given: it grows by a note per event.
#[derive(Debug)]
struct Notes;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum NotesEvent {
    Noted { text: String },
}

impl DomainEvent for NotesEvent {
    fn event_type(&self) -> &'static str {
        "Noted"
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "test.notes"
    }
    fn payload_json(&self) -> serde_json::Value {
        let NotesEvent::Noted { text } = self;
        serde_json::json!({ "text": text })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct NotesState {
    notes: Vec<String>,
}

impl Aggregate for Notes {
    const TYPE: &'static str = "Notes";
    type State = NotesState;
    type Command = String;
    type Event = NotesEvent;
    type Error = std::convert::Infallible;

    fn decide(
        _state: &NotesState,
        text: &String,
        _ctx: &DecideContext,
    ) -> Result<Vec<NotesEvent>, Self::Error> {
        Ok(vec![NotesEvent::Noted { text: text.clone() }])
    }

    fn apply(state: &mut NotesState, event: &NotesEvent) {
        let NotesEvent::Noted { text } = event;
        state.notes.push(text.clone());
    }
}

/// Notes of 1,000 bytes: 100 events make a state of ~100 KiB (one value), 200 of ~200 KiB.
const NOTE_BYTES: usize = 1000;
const EVENTS: u64 = 200;

fn note(i: u64) -> String {
    format!("{i:06}").repeat(NOTE_BYTES / 6)
}

/// Writes `EVENTS` notes through an engine with a snapshot every 100 (keep 2) and waits
/// (bounded) for the snapshot at `EVENTS`; with `keys`, Notes is sensitive (sealed at rest).
async fn fill(dir: &Path, keys: Option<Arc<dyn KeyProvider>>) {
    let mut builder = Engine::builder(dir)
        .register::<Notes>()
        .durability(Durability::Buffered { flush_every_ms: 20 })
        .snapshot_policy(SnapshotPolicy::every(100).keep(2));
    if let Some(keys) = keys {
        builder = builder.sensitive::<Notes>(true).key_provider(keys);
    }
    let engine = builder.open().await.expect("engine opens");
    for i in 0..EVENTS {
        engine.execute::<Notes>("n", note(i)).await.unwrap();
    }
    let stream = StreamId::new(Notes::TYPE, "n");
    let mut written = false;
    for _ in 0..500 {
        if engine.journal().snapshot_sequences(&stream).unwrap() == [EVENTS, 100] {
            written = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(written, "the snapshots at 100 and {EVENTS} are written");
    engine.shutdown().await.unwrap();
}

/// The keys under the stream's snapshot prefix, as (sequence, part or `None`, value length).
fn layout(journal: &JournalWriter, stream: &StreamId) -> Vec<(u64, Option<u16>, usize)> {
    journal
        .raw_snapshot_entries_for_tests(stream)
        .unwrap()
        .into_iter()
        .map(|(suffix, value)| {
            let seq = u64::from_be_bytes(suffix[..8].try_into().unwrap());
            let part = (suffix.len() == 10).then(|| u16::from_be_bytes([suffix[8], suffix[9]]));
            (seq, part, value.len())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_above_the_value_bound_is_stored_in_parts_and_recovered_whole() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), None).await;
    let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
    let stream = StreamId::new(Notes::TYPE, "n");
    let replayed = repository::load::<Notes>(&journal, &stream, u64::MAX, false).unwrap();
    assert_eq!(replayed.state.notes.len() as u64, EVENTS);

    // The snapshot at 100 is one value, as always; the one at 200 a manifest and 2 parts.
    let keys = layout(&journal, &stream);
    let whole = SnapshotRecord::encode_state(Notes::STATE_SCHEMA_VERSION, EVENTS, &replayed.state);
    assert!(whole.len() > VALUE_BYTES_MAX, "{} bytes", whole.len());
    let manifest = Manifest::for_record(whole.len(), VALUE_BYTES_MAX).unwrap();
    assert_eq!(manifest.parts, 2);
    assert_eq!(
        keys,
        vec![
            (100, None, keys[0].2),
            (EVENTS, None, Manifest::BYTES),
            (EVENTS, Some(1), manifest.part_bytes()),
            (EVENTS, Some(2), whole.len() - manifest.part_bytes()),
        ]
    );
    assert!(keys.iter().all(|(_, _, len)| *len <= VALUE_BYTES_MAX));
    assert_eq!(
        journal.snapshot(&stream, EVENTS).unwrap(),
        Some(whole.clone())
    );
    let all: Vec<_> = journal.all_snapshots().map(Result::unwrap).collect();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1], (stream.clone(), EVENTS, whole.clone()));
    assert_eq!(
        journal.stats().unwrap().snapshots,
        2,
        "a snapshot in parts counts once"
    );

    // Recovery starts from the parted snapshot, exactly.
    let loaded = repository::load::<Notes>(&journal, &stream, u64::MAX, true).unwrap();
    assert_eq!(loaded.from_snapshot, Some(EVENTS));
    assert_eq!(
        (loaded.events_replayed, loaded.skipped_snapshots.len()),
        (0, 0)
    );
    assert_eq!(loaded.state, replayed.state);

    // A lost part: the snapshot is skipped as incomplete, the older one used.
    let mut part2 = EVENTS.to_be_bytes().to_vec();
    part2.extend_from_slice(&2u16.to_be_bytes());
    journal
        .remove_raw_snapshot_for_tests(&stream, &part2)
        .unwrap();
    let loaded = repository::load::<Notes>(&journal, &stream, u64::MAX, true).unwrap();
    assert_eq!(loaded.from_snapshot, Some(100));
    assert_eq!(loaded.events_replayed, EVENTS - 100);
    assert_eq!(loaded.state, replayed.state);
    assert_eq!(loaded.skipped_snapshots.len(), 1);
    assert_eq!(loaded.skipped_snapshots[0].sequence, Some(EVENTS));
    assert_eq!(
        loaded.skipped_snapshots[0].reason,
        SkipReason::Unusable(SnapshotError::Incomplete)
    );

    // Written again: whole again. Then a one-value snapshot at the same sequence removes the
    // parts, and a parted one over it leaves only its own.
    journal.put_snapshot(&stream, EVENTS, &whole).unwrap();
    assert_eq!(
        journal.snapshot(&stream, EVENTS).unwrap(),
        Some(whole.clone())
    );
    let small = SnapshotRecord::encode_state(Notes::STATE_SCHEMA_VERSION, EVENTS, &0u8);
    journal.put_snapshot(&stream, EVENTS, &small).unwrap();
    let at_head: Vec<_> = layout(&journal, &stream)
        .into_iter()
        .filter(|k| k.0 == EVENTS)
        .collect();
    assert_eq!(at_head, vec![(EVENTS, None, small.len())]);
    journal.put_snapshot(&stream, EVENTS, &whole).unwrap();
    journal.put_snapshot(&stream, 100, &whole).unwrap();
    assert_eq!(layout(&journal, &stream).len(), 6);

    // Pruning removes a snapshot with all its parts.
    assert_eq!(journal.prune_snapshots(&stream, 1).unwrap(), 1);
    let keys = layout(&journal, &stream);
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|(seq, _, _)| *seq == EVENTS));

    // Above the bound on a whole snapshot: refused, typed; what was stored stays.
    let huge = vec![1u8; SNAPSHOT_BYTES_MAX + 1];
    match journal.put_snapshot(&stream, EVENTS, &huge) {
        Err(StorageError::SnapshotTooLarge { bytes, max }) => {
            assert_eq!((bytes, max), (SNAPSHOT_BYTES_MAX + 1, SNAPSHOT_BYTES_MAX));
        }
        other => panic!("expected SnapshotTooLarge, got {other:?}"),
    }
    assert_eq!(journal.snapshot(&stream, EVENTS).unwrap(), Some(whole));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_snapshot_in_parts_is_opened_after_assembly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key_file) = (dir.path().join("store"), dir.path().join("master.keys"));
    FileKeyProvider::append_new_key(&key_file, "m1").unwrap();
    let keys = || -> Arc<dyn KeyProvider> { Arc::new(FileKeyProvider::open(&key_file).unwrap()) };
    fill(&store, Some(keys())).await;
    let journal = JournalWriter::open(&store, JournalConfig::default()).unwrap();
    journal.set_key_provider(keys());
    let stream = StreamId::new(Notes::TYPE, "n");
    let parts = layout(&journal, &stream)
        .into_iter()
        .filter(|(seq, part, _)| *seq == EVENTS && part.is_some())
        .count();
    assert_eq!(parts, 2, "the sealed record is cut into parts");
    let sealed = journal.snapshot(&stream, EVENTS).unwrap().unwrap();
    assert_eq!(sealed[0], 2, "assembled, the record is sealed (format 2)");
    let loaded = repository::load::<Notes>(&journal, &stream, u64::MAX, true).unwrap();
    assert_eq!(loaded.from_snapshot, Some(EVENTS));
    assert_eq!(
        (loaded.events_replayed, loaded.skipped_snapshots.len()),
        (0, 0)
    );
    assert_eq!(loaded.state.notes.len() as u64, EVENTS);
    assert_eq!(loaded.state.notes[7], note(7));
}
