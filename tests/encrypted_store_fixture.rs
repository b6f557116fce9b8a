//! The first encrypted store format loads forever (fjall's fixture habit).
//!
//! `testing/fixtures/encrypted-store-xchacha20/` is a store written by main at commit 419381c,
//! the last code that sealed with XChaCha20-Poly1305 (keyring entry format 1, record flag bit
//! 4, snapshot format 2), with its test master key and the states the engine answered before
//! it shut down (`generate.rs` beside it is the program that wrote it). On a copy of it, the
//! tests prove that today's code:
//! - verifies it clean without any key, and reads every payload and snapshot with the key:
//!   full replays and snapshot loads give exactly the recorded states;
//! - still refuses the payloads of the subject forgotten in it, as erased, and reads its
//!   erasure event (written before a subject could have several keys);
//! - runs it in a live engine: an old subject written again gets a new AES-256-GCM key (a
//!   key is never used under two algorithms; its old records keep opening with their
//!   XChaCha20-Poly1305 key, no event rewritten), `Engine::upgrade_data_keys` does the same
//!   for the subjects not written, a new subject seals with AES-256-GCM (44 bytes of
//!   overhead instead of 56); all read back after a restart; a master key rotation re-wraps
//!   every key of both generations; forgetting an upgraded subject erases both of its keys
//!   (its old and new records all refused) and keeps everything else readable and `verify`
//!   clean;
//! - and the auditors' binary verifies and reads it the same way.

use evershard::aggregates::product_stock::ProductStock;
use evershard::engine::crypto::{Erasure, FileKeyProvider, KeyProvider, ERASURE_TYPE};
use evershard::engine::{repository, AtRest, Journal, LoadError, StorageError};
use evershard::model::{Aggregate, DecideContext, DemoRng, Workload};
use evershard::{Clock, Durability, Engine, ManualClock, StreamId};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FIXTURE: &str = "testing/fixtures/encrypted-store-xchacha20";
const KEPT: [&str; 2] = ["sku-kept-1", "sku-kept-2"];
const FORGOTTEN: &str = "sku-forgotten";
/// What XChaCha20-Poly1305 sealing adds to a payload (key id 16, nonce 24, tag 16), and
/// AES-256-GCM (nonce 12).
const XCHACHA_OVERHEAD_BYTES: usize = 56;
const GCM_OVERHEAD_BYTES: usize = 44;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
        .unwrap()
}

/// A private copy of the fixture's store (tests write to it; git keeps no empty `blobs/`).
fn copy_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    for entry in std::fs::read_dir(fixture().join("store")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), store.join(entry.file_name())).unwrap();
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    (dir, store)
}

fn keys() -> Arc<dyn KeyProvider> {
    Arc::new(FileKeyProvider::open(fixture().join("master.keys")).unwrap())
}

fn stream(id: &str) -> StreamId {
    StreamId::new(ProductStock::TYPE, id)
}

fn state_json(state: &<ProductStock as Aggregate>::State) -> Value {
    serde_json::to_value(state).unwrap()
}

/// Sealed payload length minus opened payload length, for every event of `id` in `range`.
fn overheads(journal: &Journal, id: &str, from: u64, to: u64) -> Vec<usize> {
    let sealed = journal.read_stream_sealed(&stream(id), from, to);
    let opened = journal.read_stream(&stream(id), from, to);
    sealed
        .zip(opened)
        .map(|(s, o)| {
            let (s, o) = (s.unwrap(), o.unwrap());
            assert_eq!(s.at_rest, AtRest::Sealed);
            assert_eq!(o.at_rest, AtRest::Opened);
            s.payload.len() - o.payload.len()
        })
        .collect()
}

fn assert_erased(journal: &Journal) {
    match repository::load::<ProductStock>(journal, &stream(FORGOTTEN), u64::MAX, false) {
        Err(LoadError::Storage(StorageError::Erased { .. })) => {}
        other => panic!("the forgotten subject must stay erased, got {other:?}"),
    }
}

#[test]
fn the_first_format_verifies_without_keys_and_reads_exactly_with_them() {
    let (_dir, store) = copy_store();
    let expected = expected();
    let journal = Journal::open_read_only(&store).unwrap();
    let report = journal.verify();
    assert!(report.is_clean(), "{report:#?}");
    journal.set_key_provider(keys());
    for id in KEPT {
        let want = &expected[id];
        for use_snapshots in [false, true] {
            let loaded =
                repository::load::<ProductStock>(&journal, &stream(id), u64::MAX, use_snapshots)
                    .unwrap();
            assert_eq!(loaded.version, want["version"].as_u64().unwrap());
            assert_eq!(&state_json(&loaded.state), &want["state"], "{id}");
            assert!(loaded.skipped_snapshots.is_empty(), "{id}: snapshots open");
            if use_snapshots {
                assert!(
                    loaded.from_snapshot.is_some(),
                    "{id}: a sealed snapshot loads"
                );
            }
        }
        let snapshots = journal.snapshots(&stream(id)).unwrap();
        assert!(!snapshots.is_empty());
        assert!(snapshots.iter().all(|(_, bytes)| bytes[0] == 2), "format 2");
        // Every event of the first format: XChaCha20-Poly1305's 56 bytes around the payload.
        let overhead = overheads(&journal, id, 1, u64::MAX);
        assert_eq!(overhead.len() as u64, want["version"].as_u64().unwrap());
        assert!(overhead.iter().all(|&o| o == XCHACHA_OVERHEAD_BYTES));
    }
    assert_erased(&journal);
    // Its erasure event, recorded before subjects could have several keys, reads as the
    // erasure of one key.
    let erased = expected["erased_key_id"].as_str().unwrap();
    let erasure = journal
        .read_stream(&StreamId::new(ERASURE_TYPE, erased), 1, 1)
        .next()
        .unwrap()
        .unwrap();
    let body: Erasure = evershard::model::codec::decode(&erasure.payload).unwrap();
    assert_eq!(body.key_id.to_string(), erased);
    assert!(body.earlier_key_ids.is_empty());
}

/// The fixture's own time: a second after its last event. ProductStock's reservations expire
/// 30 minutes after they were made, so an engine on the wall clock would fire expiry timers
/// and add events depending on when the test runs.
fn fixture_clock(store: &Path) -> Arc<ManualClock> {
    let journal = Journal::open_read_only(store).unwrap();
    let last = [KEPT[0], KEPT[1], FORGOTTEN]
        .iter()
        .flat_map(|id| journal.read_stream_sealed(&stream(id), 1, u64::MAX))
        .map(|r| r.unwrap().timestamp)
        .max()
        .unwrap();
    Arc::new(ManualClock::new(last + chrono::Duration::seconds(1)))
}

async fn open_engine(
    store: &Path,
    provider: Arc<dyn KeyProvider>,
    clock: &Arc<ManualClock>,
) -> Engine {
    Engine::builder(store)
        .register::<ProductStock>()
        .sensitive::<ProductStock>(true)
        .key_provider(provider)
        .clock(clock.clone())
        .snapshot_policy(evershard::SnapshotPolicy::every(8))
        .durability(Durability::Durable)
        .open()
        .await
        .unwrap()
}

/// Runs accepted workload commands on `id` until it has `events` more events.
async fn grow(engine: &Engine, clock: &ManualClock, id: &str, events: u64, seed: u64) {
    let now = clock.now();
    let mut rng = DemoRng::new(seed);
    let (mut state, start) = engine.state::<ProductStock>(id).await.unwrap();
    let mut version = start;
    while version < start + events {
        let ctx = DecideContext::new(id, now);
        let command = ProductStock::sample_command(&state, &ctx, &mut rng);
        if let Ok(committed) = engine.execute::<ProductStock>(id, command).await {
            for e in &committed {
                ProductStock::apply(&mut state, &e.payload);
                version = e.sequence;
            }
        }
    }
}

/// Every record of `id` is refused as erased, those of both key generations.
fn assert_all_erased(journal: &Journal, id: &str) -> usize {
    let mut n = 0;
    for record in journal.read_stream(&stream(id), 1, u64::MAX) {
        match record {
            Err(StorageError::Erased { .. }) => n += 1,
            other => panic!("{id}: every record must be refused as erased, got {other:?}"),
        }
    }
    n
}

#[tokio::test]
async fn a_live_engine_upgrades_old_subjects_to_gcm_and_forget_erases_both_generations() {
    let (dir, store) = copy_store();
    let expected = expected();
    let clock = fixture_clock(&store);
    let engine = open_engine(&store, keys(), &clock).await;
    for id in KEPT {
        let (state, version) = engine.state::<ProductStock>(id).await.unwrap();
        assert_eq!(version, expected[id]["version"].as_u64().unwrap());
        assert_eq!(&state_json(&state), &expected[id]["state"], "{id}");
    }
    // Written again, the old subject is upgraded: its new events are AES-256-GCM's, its
    // old ones stay XChaCha20-Poly1305's, byte for byte.
    grow(&engine, &clock, KEPT[0], 10, 1).await;
    grow(&engine, &clock, "sku-new", 10, 2).await;
    let old_version = expected[KEPT[0]]["version"].as_u64().unwrap();
    let journal = engine.journal();
    assert!(overheads(journal, KEPT[0], 1, old_version)
        .iter()
        .all(|&o| o == XCHACHA_OVERHEAD_BYTES));
    let upgraded = overheads(journal, KEPT[0], old_version + 1, u64::MAX);
    assert!(upgraded.len() >= 10 && upgraded.iter().all(|&o| o == GCM_OVERHEAD_BYTES));
    let new = overheads(journal, "sku-new", 1, u64::MAX);
    assert!(new.len() >= 10 && new.iter().all(|&o| o == GCM_OVERHEAD_BYTES));
    // The explicit upgrade finds only the subject not written since (once).
    assert_eq!(engine.upgrade_data_keys().await.unwrap(), 1);
    assert_eq!(engine.upgrade_data_keys().await.unwrap(), 0);
    grow(&engine, &clock, KEPT[1], 5, 3).await;
    let kept_1_old = expected[KEPT[1]]["version"].as_u64().unwrap();
    assert!(overheads(journal, KEPT[1], kept_1_old + 1, u64::MAX)
        .iter()
        .all(|&o| o == GCM_OVERHEAD_BYTES));
    let states: Vec<_> = [KEPT[0], KEPT[1], "sku-new"]
        .iter()
        .map(|id| {
            let loaded =
                repository::load::<ProductStock>(journal, &stream(id), u64::MAX, false).unwrap();
            (id.to_string(), state_json(&loaded.state), loaded.version)
        })
        .collect();
    engine.shutdown().await.unwrap();

    // Rotation re-wraps both generations; the old master key then goes.
    let rotated = dir.path().join("rotated.keys");
    std::fs::copy(fixture().join("master.keys"), &rotated).unwrap();
    FileKeyProvider::append_new_key(&rotated, "rotated-2026").unwrap();
    let engine = open_engine(
        &store,
        Arc::new(FileKeyProvider::open(&rotated).unwrap()),
        &clock,
    )
    .await;
    // Old and new keys of the two old subjects, and the new subject's (the fixture's
    // forgotten key is erased).
    assert_eq!(
        engine
            .rotate_master_key(Arc::new(FileKeyProvider::open(&rotated).unwrap()))
            .await
            .unwrap(),
        5
    );
    // Forgetting an upgraded subject destroys both of its keys in one erasure.
    let receipt = engine
        .forget_subject(KEPT[0], "fixture-test", "an erasure after the upgrade")
        .await
        .unwrap();
    assert_eq!(receipt.earlier_key_ids.len(), 1, "{receipt:?}");
    let erased = assert_all_erased(engine.journal(), KEPT[0]);
    assert_eq!(erased as u64, states[0].2, "old and new records alike");
    engine.shutdown().await.unwrap();
    let text = std::fs::read_to_string(&rotated).unwrap();
    let only_new: String = text
        .lines()
        .filter(|l| l.starts_with("rotated-2026"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&rotated, only_new + "\n").unwrap();
    let provider: Arc<dyn KeyProvider> = Arc::new(FileKeyProvider::open(&rotated).unwrap());

    // Restarted on the new master key alone: the same states (snapshots or replay), both
    // generations of the other old subject open, the erasures hold, and verify is clean.
    let engine = open_engine(&store, provider, &clock).await;
    for (id, state, version) in &states {
        if id == KEPT[0] {
            assert!(engine.state::<ProductStock>(id).await.is_err(), "forgotten");
            continue;
        }
        let (now, at) = engine.state::<ProductStock>(id).await.unwrap();
        assert_eq!((&state_json(&now), at), (state, *version), "{id}");
        let loaded =
            repository::load::<ProductStock>(engine.journal(), &stream(id), u64::MAX, false)
                .unwrap();
        assert_eq!(
            (&state_json(&loaded.state), loaded.version),
            (state, *version)
        );
    }
    assert_eq!(
        assert_all_erased(engine.journal(), KEPT[0]) as u64,
        states[0].2
    );
    let report = engine.verify().await.unwrap();
    assert!(report.is_clean(), "{report:#?}");
    assert_erased(engine.journal());
    engine.shutdown().await.unwrap();
}

#[test]
fn the_auditors_binary_verifies_and_reads_the_first_format() {
    let (_dir, store) = copy_store();
    let data = store.to_str().unwrap();
    let key_file = fixture().join("master.keys");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_evershard"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };
    let (code, out, err) = run(&["verify", "--data", data]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, err) = run(&[
        "--key-file",
        key_file.to_str().unwrap(),
        "verify",
        "--data",
        data,
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, err) = run(&[
        "--key-file",
        key_file.to_str().unwrap(),
        "history",
        ProductStock::TYPE,
        KEPT[0],
        "--data",
        data,
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let events = expected()[KEPT[0]]["version"].as_u64().unwrap() as usize;
    assert!(out.lines().count() >= events, "{out}");
    assert!(!out.contains("\"erased\""), "{out}");
}
