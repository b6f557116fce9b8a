//! Idempotency keys through the engine (`Metadata::idempotency_key`), with a `ManualClock`:
//!
//! - the same key and body again answers the same envelopes (ids, sequences, positions) and
//!   writes nothing — also after a restart;
//! - the same key with another body, or for another aggregate of the type, is refused with
//!   `CommandError::IdempotencyConflict` naming the key, and never executes;
//! - concurrent commands with one key: exactly one executes, the others get its result;
//! - a rejected command records nothing: a retry with the key is decided afresh;
//! - an empty result (an idempotent no-op) is recorded too;
//! - after the retention window the key is decided afresh, and the sweep removes old keys.

mod common;
use chrono::{DateTime, Duration, Utc};
use common::*;
use evershard::aggregates::product_stock::{ProductStock, ProductStockError, ReceiveStock};
use evershard::model::Metadata;
use evershard::{CommandError, Durability, Engine, ManualClock, StreamId};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

async fn open(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    Engine::builder(dir)
        .register::<ProductStock>()
        .clock(clock.clone())
        .durability(Durability::Buffered { flush_every_ms: 50 })
        .idempotency_retention_ms(60 * 60 * 1000)
        .timer_poll_ms(3_600_000)
        .open()
        .await
        .expect("engine opens")
}

fn keyed(key: u128) -> Metadata {
    Metadata::new("test").idempotency_key(Uuid::from_u128(key))
}

fn last_position(engine: &Engine) -> u64 {
    engine.journal().stats().unwrap().last_global_position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_answers_the_same_envelopes_without_writing_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    let first = engine
        .execute_with::<ProductStock>("sku", ReceiveStock { quantity: 10 }, keyed(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let position = last_position(&engine);
    clock.advance(Duration::minutes(5));
    let again = engine
        .execute_with::<ProductStock>("sku", ReceiveStock { quantity: 10 }, keyed(1))
        .await
        .unwrap();
    assert_eq!(again, first, "the same envelopes");
    assert_eq!(last_position(&engine), position, "nothing written");
    let (state, _) = engine.state::<ProductStock>("sku").await.unwrap();
    assert_eq!(state.on_hand, 10, "received once");
    let keys = engine
        .journal()
        .idempotency_keys(&StreamId::new("ProductStock", "sku"))
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key, Uuid::from_u128(1));
    engine.shutdown().await.unwrap();

    let engine = open(dir.path(), &clock).await;
    let after_restart = engine
        .execute_with::<ProductStock>("sku", ReceiveStock { quantity: 10 }, keyed(1))
        .await
        .unwrap();
    assert_eq!(after_restart, first);
    assert_eq!(last_position(&engine), position);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_body_or_another_aggregate_with_the_key_is_refused_typed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    engine
        .execute_with::<ProductStock>("sku", ReceiveStock { quantity: 10 }, keyed(2))
        .await
        .unwrap();
    let position = last_position(&engine);
    for (id, quantity) in [("sku", 11), ("other", 10)] {
        let err = engine
            .execute_with::<ProductStock>(id, ReceiveStock { quantity }, keyed(2))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CommandError::IdempotencyConflict { aggregate_type: "ProductStock", key } if *key == Uuid::from_u128(2)),
            "{err:?}"
        );
        assert!(err.to_string().contains(&Uuid::from_u128(2).to_string()));
        assert!(!err.is_retryable());
    }
    assert_eq!(last_position(&engine), position, "never executed");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_with_one_key_execute_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    engine
        .execute::<ProductStock>("sku", ReceiveStock { quantity: 100 })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .execute_with::<ProductStock>("sku", reserve(1, 3), keyed(3))
                .await
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(
        results.iter().all(|r| r == &results[0] && r.len() == 1),
        "{results:?}"
    );
    assert_eq!(engine.history::<ProductStock>("sku").unwrap().len(), 2);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_command_records_nothing_and_a_retry_is_decided_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    let err = engine
        .execute_with::<ProductStock>("sku", reserve(1, 5), keyed(4))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Rejected(ProductStockError::InsufficientStock { .. })
        ),
        "{err:?}"
    );
    let stream = StreamId::new("ProductStock", "sku");
    assert!(engine
        .journal()
        .idempotency_keys(&stream)
        .unwrap()
        .is_empty());
    engine
        .execute::<ProductStock>("sku", ReceiveStock { quantity: 10 })
        .await
        .unwrap();
    let retried = engine
        .execute_with::<ProductStock>("sku", reserve(1, 5), keyed(4))
        .await
        .unwrap();
    assert_eq!(retried.len(), 1, "decided afresh, accepted now");
    // An accepted command with no events (an identical Reserve) is recorded as well.
    let noop = engine
        .execute_with::<ProductStock>("sku", reserve(1, 5), keyed(5))
        .await
        .unwrap();
    assert!(noop.is_empty());
    assert_eq!(engine.journal().idempotency_keys(&stream).unwrap().len(), 2);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_retention_window_a_key_is_new_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    engine
        .execute_with::<ProductStock>("sku", ReceiveStock { quantity: 10 }, keyed(6))
        .await
        .unwrap();
    engine
        .execute_with::<ProductStock>("sku", ReceiveStock { quantity: 1 }, keyed(7))
        .await
        .unwrap();
    clock.advance(Duration::minutes(59));
    assert_eq!(
        engine.sweep_idempotency_keys().await.unwrap(),
        0,
        "within the window"
    );
    clock.advance(Duration::minutes(1));
    // Past the window: the key is decided afresh (a second receipt) and recorded anew.
    let fresh = engine
        .execute_with::<ProductStock>("sku", ReceiveStock { quantity: 10 }, keyed(6))
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1);
    let (state, _) = engine.state::<ProductStock>("sku").await.unwrap();
    assert_eq!(state.on_hand, 21);
    // The sweep removes key 7 and key 6's old index entry, and keeps key 6's new record.
    assert_eq!(engine.sweep_idempotency_keys().await.unwrap(), 2);
    let keys = engine
        .journal()
        .idempotency_keys(&StreamId::new("ProductStock", "sku"))
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key, Uuid::from_u128(6));
    assert_eq!(keys[0].recorded_at, clock_now(&clock));
    engine.shutdown().await.unwrap();
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use evershard::model::Clock;
    clock.now()
}
