//! `Engine::checkpoint`: a consistent, read-only copy of a live store, taken under load.
//!
//! Proves, with clients committing stock commands (reservations with timers, idempotency
//! keys) all the while:
//! - the checkpoint holds exactly the events at global positions `1..=cut`, byte for byte
//!   the live store's, and nothing after the cut; commands kept committing after the cut;
//! - it verifies clean, its Merkle tree head at the cut equals the live store's digest at
//!   the cut, and its topic index covers the cut with the live store's messages;
//! - its timers and idempotency records are those of the states at the cut: every stream's
//!   stored timer equals what its state (loaded from the copy) asks for, and every
//!   idempotency record points at events the copy holds;
//! - `Engine::verify` under the same load checks every record up to the durable position
//!   and finds nothing wrong;
//! - it reads like any store through the CLI (`verify`, `stats`), refuses to be opened for
//!   writing, and a destination that is not empty or lies inside the live store is refused
//!   without writing anything.

mod common;
use common::*;
use evershard::aggregates::product_stock::{
    ProductStock, ProductStockCommand, ReceiveStock, ReleaseReason, ReleaseReservation,
};
use evershard::engine::merkle::JournalTree;
use evershard::engine::{repository, Journal, TopicCatalog};
use evershard::model::{Aggregate, Metadata};
use evershard::{
    CheckpointError, Durability, Engine, EngineError, ManualClock, OpenError, SnapshotPolicy,
    StreamId, TopicLog,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const CLIENTS: u64 = 4;
const SKUS: u64 = 20;

async fn open(dir: &std::path::Path, clock: Arc<ManualClock>) -> Engine {
    Engine::builder(dir)
        .register::<ProductStock>()
        .clock(clock)
        // Snapshots often, so that the copy has some to take (and to leave out).
        .snapshot_policy(SnapshotPolicy::every(10))
        .durability(Durability::Buffered { flush_every_ms: 20 })
        .open()
        .await
        .expect("engine opens")
}

/// One client: reserves, and releases every third reservation, across the SKUs; every other
/// command carries an idempotency key. Stops when `stop` is set.
async fn client(engine: Engine, n: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        let sku = format!("sku-{}", (n * 7 + i) % SKUS);
        let id = u128::from(n * 1_000_000 + i);
        let command: ProductStockCommand = if i % 3 == 2 {
            ReleaseReservation {
                reservation_id: uuid::Uuid::from_u128(id - 1),
                reason: ReleaseReason::Cancelled,
            }
            .into()
        } else {
            reserve(id, 1).into()
        };
        let mut metadata = Metadata::new("checkpoint-test");
        if i % 2 == 0 {
            metadata = metadata.idempotency_key(Uuid::from_u128(id));
        }
        // Rejections (a release of a reservation on another SKU) are fine: the load is what
        // matters, and a rejection writes nothing.
        let _ = engine
            .execute_with::<ProductStock>(&sku, command, metadata)
            .await;
        done.fetch_add(1, Ordering::AcqRel);
        i += 1;
    }
}

async fn wait_until(what: &str, mut reached: impl FnMut() -> bool) {
    for _ in 0..6_000 {
        if reached() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} not reached within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_taken_under_load_is_the_store_up_to_its_cut() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let copy = dir.path().join("copy");
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(&live, clock.clone()).await;
    for s in 0..SKUS {
        engine
            .execute::<ProductStock>(
                &format!("sku-{s}"),
                ReceiveStock {
                    quantity: 1_000_000,
                },
            )
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(engine.clone(), n, stop.clone(), done.clone())))
        .collect();
    wait_until("500 events", || engine.journal().durable_position() >= 500).await;
    assert!(done.load(Ordering::Acquire) > 0);

    // An online verification under the same load: clean, up to the durable position.
    let online = engine.verify().await.expect("online verify");
    assert!(online.is_clean(), "{online:?}");
    assert!(online.events_checked >= 500, "{online:?}");

    let info = engine.checkpoint(&copy).await.expect("checkpoint");
    let cut = info.cut_position;
    println!("checkpoint: {info:?}");
    assert!(cut >= 500, "the cut covers the load so far: {cut}");
    assert_eq!(info.events, cut);
    assert_eq!(info.taken_at, t0());
    assert!(
        info.snapshots > 0,
        "snapshots at or below the cut are copied"
    );
    // Commands go on after the cut.
    wait_until("commits past the cut", || {
        engine.journal().durable_position() > cut + 200
    })
    .await;
    stop.store(true, Ordering::Release);
    for c in clients {
        c.await.unwrap();
    }
    let live_digest = engine.digest_at(cut).await.expect("live digest at the cut");
    engine.shutdown().await.unwrap();

    let ckpt = Journal::open_read_only(&copy).expect("the checkpoint opens read-only");
    let mark = ckpt
        .checkpoint_mark()
        .unwrap()
        .expect("it says it is a checkpoint");
    assert!(mark.complete);
    assert_eq!(mark.cut_position, cut);
    assert_eq!(mark.source_dir, std::fs::canonicalize(&live).unwrap());
    for entry in ckpt.all_snapshots() {
        let (stream, sequence, _) = entry.unwrap();
        assert!(
            sequence <= ckpt.head(&stream).unwrap().sequence,
            "{stream}@{sequence}"
        );
    }
    let report = ckpt.verify();
    assert!(
        report.is_clean(),
        "the checkpoint verifies clean: {report:?}"
    );
    assert_eq!(report.events, cut);

    // Byte for byte the live store's events, up to the cut and not beyond.
    let original = Journal::open_read_only(&live).unwrap();
    assert!(original.checkpoint_mark().unwrap().is_none());
    let mut compared = 0;
    for entry in original.read_global(1) {
        let (position, stream, sequence) = entry.unwrap();
        let live_bytes = original.record_bytes(&stream, sequence).unwrap();
        let copy_bytes = ckpt.record_bytes(&stream, sequence).unwrap();
        if position <= cut {
            assert_eq!(copy_bytes, live_bytes, "record at position {position}");
            compared += 1;
        } else {
            assert_eq!(copy_bytes, None, "position {position} lies after the cut");
        }
    }
    assert_eq!(compared, cut);

    // The Merkle tree of the copy is the live tree at the cut.
    assert_eq!(
        JournalTree::new(&ckpt).unwrap().stored_size(),
        cut,
        "the copied Merkle nodes cover the tree of the cut"
    );
    let head = ckpt.tree_head(None).expect("tree head");
    assert_eq!(head.tree_size, cut);
    assert_eq!(head.root_hash, live_digest.root_hash);

    // Timers and idempotency records are those of the states at the cut.
    let mut streams = 0;
    for entry in ckpt.streams(Some(ProductStock::TYPE)) {
        let (stream, head): (StreamId, u64) = entry.unwrap();
        streams += 1;
        let loaded = repository::load::<ProductStock>(&ckpt, &stream, head, true).unwrap();
        let wanted = ProductStock::next_timer(&loaded.state).map(|(deadline, _)| deadline);
        assert_eq!(ckpt.timer(&stream).unwrap(), wanted, "timer of {stream}");
        let keys = ckpt.idempotency_keys(&stream).unwrap();
        // Every command carried a key: a stream with events has its records (on the
        // segment log, copied as format 2 out of the live store's frames).
        assert!(
            head == 0 || !keys.is_empty(),
            "{stream}: no idempotency record in the copy"
        );
        for key in keys {
            assert!(
                key.first_sequence + u64::from(key.events) <= head + 1,
                "{stream}: idempotency record {key:?} points past the copy's head {head}"
            );
        }
    }
    assert_eq!(streams, SKUS);
    let timers = ckpt.timers(None).count();
    assert!(timers > 0, "the load left open reservations with timers");

    // The topic index covers the cut, with the live store's messages.
    let catalog = || {
        let mut c = TopicCatalog::new();
        c.register::<ProductStock>();
        c
    };
    let copy_log = TopicLog::read_only(&ckpt, catalog()).unwrap();
    let live_log = TopicLog::read_only(&original, catalog()).unwrap();
    assert_eq!(copy_log.indexed_through().unwrap(), cut);
    let mut messages = 0;
    for topic in copy_log.topics().unwrap() {
        for (partition, end) in topic.end_offsets.iter().enumerate() {
            let partition = partition as u32;
            let ours = copy_log
                .read(&topic.name, partition, 0, *end as usize)
                .unwrap();
            let theirs = live_log
                .read(&topic.name, partition, 0, *end as usize)
                .unwrap();
            assert_eq!(ours.len(), theirs.len());
            for (a, b) in ours.iter().zip(&theirs) {
                assert_eq!(a.offset, b.offset);
                assert_eq!(a.event_id, b.event_id);
                assert_eq!(a.global_position, b.global_position);
                assert!(a.global_position <= cut);
            }
            messages += ours.len() as u64;
        }
    }
    assert!(messages > 0);
    drop(copy_log);
    drop(live_log);
    drop(original);
    drop(ckpt);

    // Every read-only command reads it; the CLI's verify and stats say it is clean.
    let bin = env!("CARGO_BIN_EXE_evershard");
    let verify = std::process::Command::new(bin)
        .args(["verify", "--data"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "verify on the checkpoint: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    let stats = std::process::Command::new(bin)
        .args(["stats", "--data"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.status.success(), "{text}");
    assert!(
        text.contains(&format!("at global position {cut}")),
        "stats names the checkpoint: {text}"
    );

    // Opening it for writing is refused, and changes nothing.
    match Engine::builder(&copy)
        .register::<ProductStock>()
        .open()
        .await
    {
        Err(EngineError::Open(OpenError::Checkpoint { cut_position, .. })) => {
            assert_eq!(cut_position, cut)
        }
        other => panic!("opening a checkpoint for writing: {other:?}"),
    }
    let again = Journal::open_read_only(&copy).unwrap();
    assert!(again.verify().is_clean());
    assert_eq!(again.stats().unwrap().events, cut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_refuses_a_destination_that_is_not_empty_or_inside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(&live, clock).await;
    engine
        .execute::<ProductStock>("sku-1", ReceiveStock { quantity: 5 })
        .await
        .unwrap();

    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), b"keep me").unwrap();
    match engine.checkpoint(&busy).await {
        Err(CheckpointError::Destination { reason, .. }) => {
            assert!(reason.contains("not empty"), "{reason}")
        }
        other => panic!("a non-empty destination: {other:?}"),
    }
    assert_eq!(std::fs::read(busy.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    match engine.checkpoint(live.join("inner")).await {
        Err(CheckpointError::Destination { reason, .. }) => {
            assert!(reason.contains("inside"), "{reason}")
        }
        other => panic!("a destination inside the store: {other:?}"),
    }
    assert!(!live.join("inner").exists());

    // An empty directory is fine, and the engine goes on writing after it.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let info = engine.checkpoint(&empty).await.expect("checkpoint");
    assert_eq!(info.cut_position, 1);
    engine
        .execute::<ProductStock>("sku-1", ReceiveStock { quantity: 5 })
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
}
