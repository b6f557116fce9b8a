//! A caller that gives up on a command (its future dropped: a timeout, a client gone) does
//! not cut the command's bookkeeping short while the command is still on its way: a keyed
//! command keeps its idempotency key until it is answered, so a retry with the key waits
//! for it and gets its result, and a guarded command still gets its guard's `settle`. The
//! syncer is held, so that the commands stay in flight for as long as the test needs.
//!
//! And a keyed or guarded command, which runs apart from its caller so that it can outlive
//! it, still reaches its aggregate in the order its caller sent it: sent in one task
//! together with a plain command after it, it runs first.

mod common;

use common::{Counter, CounterCommand, CounterError};
use evershard_engine::model::{CommandGuard, Metadata};
use evershard_engine::{Durability, Engine};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts what the engine asks of a guard.
#[derive(Default)]
struct Counts {
    admitted: AtomicUsize,
    settled: AtomicUsize,
}

struct CountingGuard(Arc<Counts>);

impl CommandGuard<Counter> for CountingGuard {
    fn admit(
        &self,
        _aggregate_id: &str,
        _command: &CounterCommand,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), CounterError> {
        self.0.admitted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn settle(
        &self,
        _aggregate_id: &str,
        _command: &CounterCommand,
        _now: chrono::DateTime<chrono::Utc>,
        _accepted: bool,
    ) {
        self.0.settled.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `done` every 5 ms, at most 2,000 times.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..2_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

/// The first keyed command waits in its entity's mailbox behind an unacknowledged one when
/// its caller gives up. A retry with the key, sent then, is not admitted beside it: it
/// waits, and answers the first command's event. The first is settled all the same. With
/// the key's lock let go at the cancellation, the guard admitted the retry while the
/// first was in flight, and never settled the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_keyed_command_keeps_its_key_and_is_settled() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Arc::new(Counts::default());
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .guard::<Counter>(CountingGuard(counts.clone()))
        .durability(Durability::Durable)
        .open()
        .await
        .unwrap();
    let gate = engine.journal().hold_syncs_for_tests();
    let busy = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.execute::<Counter>("c", CounterCommand::Add(1)).await })
    };
    until("the entity's first command is written", || {
        engine.journal().stats().unwrap().last_global_position >= 1
    })
    .await;
    let keyed = || Metadata::new("test").idempotency_key(uuid::Uuid::from_u128(7));
    let first = {
        let (engine, metadata) = (engine.clone(), keyed());
        tokio::spawn(async move {
            engine
                .execute_with::<Counter>("c", CounterCommand::Add(10), metadata)
                .await
        })
    };
    until("the keyed command is admitted", || {
        counts.admitted.load(Ordering::SeqCst) == 2
    })
    .await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let retry = {
        let (engine, metadata) = (engine.clone(), keyed());
        tokio::spawn(async move {
            engine
                .execute_with::<Counter>("c", CounterCommand::Add(10), metadata)
                .await
        })
    };
    drop(gate);
    let retried = retry.await.unwrap().unwrap();
    busy.await.unwrap().unwrap();
    assert_eq!(retried.len(), 1, "the first command's event");
    assert_eq!(retried[0].sequence, 2);
    let (state, _) = engine.state::<Counter>("c").await.unwrap();
    assert_eq!(state.total, 11, "the keyed command took effect once");
    assert_eq!(
        counts.admitted.load(Ordering::SeqCst),
        2,
        "the retry found the first's result: it was never admitted beside it"
    );
    until("every admitted command is settled", || {
        counts.settled.load(Ordering::SeqCst) == 2
    })
    .await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_or_guarded_command_keeps_its_place_in_its_callers_order() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Arc::new(Counts::default());
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .guard::<Counter>(CountingGuard(counts.clone()))
        .open()
        .await
        .unwrap();
    for i in 0..50u128 {
        let id = format!("order-{i}");
        let keyed = Metadata::new("test").idempotency_key(uuid::Uuid::from_u128(i + 1));
        // Sent in this order by one task: the keyed (and guarded) Add, then a plain check
        // that needs it.
        let (added, checked) = tokio::join!(
            engine.execute_with::<Counter>(&id, CounterCommand::Add(5), keyed),
            engine.execute::<Counter>(&id, CounterCommand::RequireAtLeast(5)),
        );
        added.unwrap();
        checked.unwrap_or_else(|e| panic!("{id}: the check ran before the Add: {e}"));
    }
    engine.shutdown().await.unwrap();
}
