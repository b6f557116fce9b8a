//! A caller that gives up on a command (its future dropped: a timeout, a client gone) does
//! not cut the command's bookkeeping short while the command is still on its way: a keyed
//! command keeps its idempotency key until it is answered, so a retry with the key waits
//! for it and gets its result, and a guarded command still gets its guard's `settle`. The
//! syncer is held, so that the commands stay in flight for as long as the test needs.
//!
//! And a keyed or guarded command, which runs apart from its caller so that it can outlive
//! it, still reaches its aggregate in the order its caller sent it: sent in one task
//! together with a plain command after it, it runs first.
//!
//! And a retry of a guarded keyed command whose key's window ends while the retry waits in
//! its aggregate's mailbox goes through the guard (the aggregate, not the engine before it,
//! says what is a repeat).

mod common;

use common::{Counter, CounterCommand, CounterError};
use evershard_engine::model::{CommandGuard, Metadata};
use evershard_engine::{Durability, Engine};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts what the engine asks of a guard; once `armed`, the guard refuses `Add(10)`.
#[derive(Default)]
struct Counts {
    admitted: AtomicUsize,
    settled: AtomicUsize,
    armed: std::sync::atomic::AtomicBool,
}

struct CountingGuard(Arc<Counts>);

impl CommandGuard<Counter> for CountingGuard {
    fn admit(
        &self,
        _aggregate_id: &str,
        command: &CounterCommand,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), CounterError> {
        if self.0.armed.load(Ordering::SeqCst) && *command == CounterCommand::Add(10) {
            return Err(CounterError::TooLow(0));
        }
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

/// Polls a command's future once, which must not be answered yet: a keyed command takes
/// its first step — into its aggregate's mailbox — in its caller's poll.
async fn first_step<F: std::future::Future + Unpin>(command: &mut F, not_yet: &str) {
    tokio::select! {
        biased;
        _ = command => panic!("{not_yet}"),
        _ = std::future::ready(()) => {}
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
/// waits, and answers the first command's event; the key sent to another aggregate waits
/// too, and is then refused as the first's. The first is admitted and settled all the same.
/// With the key's lock let go at the cancellation, the key ran on the other aggregate while
/// the first was in flight.
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
    {
        let first = engine.execute_with::<Counter>("c", CounterCommand::Add(10), keyed());
        let mut first = std::pin::pin!(first);
        // One poll: a keyed command takes its first step — into its aggregate's mailbox,
        // behind the plain one — in its caller's poll. Then its caller gives up.
        first_step(
            &mut first,
            "the keyed command cannot be answered before the sync",
        )
        .await;
    }
    let retry = {
        let (engine, metadata) = (engine.clone(), keyed());
        tokio::spawn(async move {
            engine
                .execute_with::<Counter>("c", CounterCommand::Add(10), metadata)
                .await
        })
    };
    // The key for another aggregate of the type: only the key's lock keeps it from running
    // beside the first (its aggregate is idle). Sent before the sync is let go.
    let elsewhere = engine.execute_with::<Counter>("d", CounterCommand::Add(10), keyed());
    let mut elsewhere = std::pin::pin!(elsewhere);
    first_step(&mut elsewhere, "the key is held by the first command").await;
    drop(gate);
    let retried = retry.await.unwrap().unwrap();
    busy.await.unwrap().unwrap();
    assert_eq!(retried.len(), 1, "the first command's event");
    assert_eq!(retried[0].sequence, 2);
    let elsewhere = elsewhere.await;
    assert!(
        matches!(
            elsewhere,
            Err(evershard_engine::CommandError::IdempotencyConflict { .. })
        ),
        "the key is the first command's, for another aggregate: {elsewhere:?}"
    );
    assert_eq!(engine.state::<Counter>("d").await.unwrap().0.total, 0);
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

/// A retry of a guarded keyed command is sent while its key is recorded (a millisecond
/// before its window ends) and reaches its aggregate, behind a command waiting for its sync,
/// once the window has ended. The aggregate decides it afresh, so it must go through the
/// guard, which refuses it. The engine used to look the key up itself and send a key it
/// found recorded straight to the aggregate, past the guard: the retry was applied unguarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_key_expires_on_its_way_goes_through_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::new(evershard_engine::ManualClock::new(t0));
    let counts = Arc::new(Counts::default());
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .guard::<Counter>(CountingGuard(counts.clone()))
        .clock(clock.clone())
        .idempotency_retention_ms(60_000)
        .durability(Durability::Durable)
        .open()
        .await
        .unwrap();
    let keyed = || Metadata::new("test").idempotency_key(uuid::Uuid::from_u128(7));
    engine
        .execute_with::<Counter>("c", CounterCommand::Add(10), keyed())
        .await
        .unwrap();
    counts.armed.store(true, Ordering::SeqCst);

    let gate = engine.journal().hold_syncs_for_tests();
    let busy = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.execute::<Counter>("c", CounterCommand::Add(1)).await })
    };
    until("the plain command is written", || {
        engine.journal().stats().unwrap().last_global_position >= 2
    })
    .await;
    clock.set(t0 + chrono::TimeDelta::milliseconds(59_999));
    let retry = engine.execute_with::<Counter>("c", CounterCommand::Add(10), keyed());
    let mut retry = std::pin::pin!(retry);
    // One poll: a keyed command takes its first step — up to its aggregate's mailbox — in
    // its caller's poll.
    first_step(&mut retry, "the retry cannot be answered before the sync").await;
    clock.set(t0 + chrono::TimeDelta::seconds(60));
    drop(gate);
    let retried = retry.await;
    busy.await.unwrap().unwrap();
    assert!(
        matches!(
            retried,
            Err(evershard_engine::CommandError::Rejected(
                CounterError::TooLow(0)
            ))
        ),
        "past its window the retry is a new command, and its guard refuses it: {retried:?}"
    );
    let (state, _) = engine.state::<Counter>("c").await.unwrap();
    assert_eq!(state.total, 11);
    assert_eq!(
        counts.admitted.load(Ordering::SeqCst),
        2,
        "the first and the plain command"
    );
    engine.shutdown().await.unwrap();
}
