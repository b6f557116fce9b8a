//! The Merkle tree maintainer hashes leaves from the record hashes the committer hands it, and
//! falls back to reading the stored records for what it was not handed (written before it
//! started, or in an earlier process). These tests prove that the stored nodes are the tree
//! the records determine in both cases: `Journal::check_tree` recomputes every leaf from the
//! stored records and compares every stored node.
//!
//! - a live run with many concurrent clients (groups of several commands from several
//!   streams), covered from the hand-over alone;
//! - a store written without the maintainer, then opened with it (the catch-up reads the
//!   records) and written further (the hand-over takes over mid-block).
//!
//! Buffered durability and a few hundred events per phase, so they hold on a loaded two-core
//! machine; nothing asserts on timing.

use evershard_aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard_engine::{Durability, Engine, Journal};
use std::path::Path;

async fn open(dir: &Path, tree: bool) -> Engine {
    Engine::builder(dir)
        .register::<ProductStock>()
        .durability(Durability::Buffered { flush_every_ms: 20 })
        .topic_indexer(false)
        .merkle_tree(tree)
        .open()
        .await
        .unwrap()
}

/// `clients` tasks, each sending `per_client` receipts to its own few aggregates at once.
async fn write(engine: &Engine, clients: u64, per_client: u64) {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_client {
                let id = format!("sku-{client}-{}", n % 3);
                engine
                    .execute::<ProductStock>(&id, ReceiveStock { quantity: 1 })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every stored node matches the tree over the stored records, and the nodes cover `events`.
fn assert_tree_matches_records(dir: &Path, events: u64) {
    let journal = Journal::open_read_only(dir).unwrap();
    assert_eq!(journal.tree_size_stored().unwrap(), events);
    let check = journal.check_tree(&[]).unwrap();
    assert_eq!(check.leaves, events);
    assert!(check.nodes_compared > 0, "nodes were stored and compared");
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
    assert_eq!(journal.tree_head(None).unwrap().root_hash, check.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_stores_the_tree_of_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = open(tmp.path(), true).await;
    write(&engine, 16, 40).await;
    engine.shutdown().await.unwrap();
    assert_tree_matches_records(tmp.path(), 640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_from_the_records_then_the_hand_over_store_one_tree() {
    let tmp = tempfile::tempdir().unwrap();
    // 300 events without the maintainer: nothing is handed over for them.
    let engine = open(tmp.path(), false).await;
    write(&engine, 4, 75).await;
    engine.shutdown().await.unwrap();
    // With it: the first 300 from the records, the next 420 handed over, the block of
    // 256 leaves at 257..=512 mixing both.
    let engine = open(tmp.path(), true).await;
    write(&engine, 6, 70).await;
    engine.shutdown().await.unwrap();
    assert_tree_matches_records(tmp.path(), 720);
}
