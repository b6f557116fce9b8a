//! Proves the actor layer's guarantees with the test `Counter` aggregate (its events carry the
//! total they were decided on, so a lost, duplicated or reordered command breaks the state):
//! - many concurrent tasks on one aggregate and on many: no lost update, no gap;
//! - a panic in one aggregate's handler fails that command only, and the aggregate's next
//!   command works from its recovered state while other aggregates are untouched;
//! - bounded mailboxes answer `Overloaded` instead of queueing without end;
//! - passivation removes idle aggregates from memory and they come back by recovery; an
//!   actor passivated to make room, handed to another aggregate, carries nothing over;
//! - snapshots are taken every N events and recovery after a restart uses them;
//! - shutdown drains in-flight commands and refuses new ones; a second or concurrent shutdown
//!   gets the same outcome; an engine dropped without shutdown still releases the store;
//! - a panic in `apply` after the commit answers with the committed events (never "nothing
//!   written"), and the aggregate then refuses to act on a state it cannot rebuild;
//! - times reach `decide`, the reply and the journal identically (microsecond resolution).
//!
//! Waits are bounded polls, never fixed sleeps that assume a fast machine.

mod common;

use common::{Counter, CounterCommand, CounterError};
use evershard_engine::{CommandError, Durability, Engine, SnapshotPolicy, StreamId};
use evershard_engine::{ManualClock, OpenError, StorageError};
use std::sync::Arc;
use std::time::Duration;

async fn open(dir: &std::path::Path) -> Engine {
    Engine::builder(dir)
        .register::<Counter>()
        .shards(4)
        .durability(Durability::Buffered { flush_every_ms: 50 })
        .snapshot_policy(SnapshotPolicy::every(10).keep(2))
        .open()
        .await
        .expect("engine opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_lose_nothing_and_leave_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let mut tasks = Vec::new();
    // 16 tasks hammer one aggregate; 16 more spread over 8 others.
    for t in 0..32u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let id = if t < 16 {
                "hot".to_string()
            } else {
                format!("c-{}", t % 8)
            };
            for _ in 0..25 {
                engine
                    .execute::<Counter>(&id, CounterCommand::Add(1))
                    .await
                    .expect("accepted");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (hot, version) = engine.state::<Counter>("hot").await.unwrap();
    assert_eq!((hot.total, version, hot.broken), (400, 400, false));
    for i in 0..8 {
        let (s, v) = engine.state::<Counter>(&format!("c-{i}")).await.unwrap();
        assert_eq!((s.total, v, s.broken), (50, 50, false));
    }
    let history = engine.history::<Counter>("hot").unwrap();
    let seqs: Vec<u64> = history.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    // Global positions are a total order without duplicates.
    let mut positions: Vec<u64> = history.iter().map(|e| e.global_position).collect();
    positions.dedup();
    assert_eq!(positions.len(), 400);
    engine.shutdown().await.unwrap();
    drop(engine);
    let report = evershard_engine::Journal::open_read_only(dir.path())
        .unwrap()
        .verify();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.events, 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_one_command_and_harms_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    engine
        .execute::<Counter>("a", CounterCommand::Add(5))
        .await
        .unwrap();
    engine
        .execute::<Counter>("b", CounterCommand::Add(7))
        .await
        .unwrap();
    let err = engine
        .execute::<Counter>("a", CounterCommand::Explode)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::HandlerPanicked { ref message, .. } if message.contains("boom")),
        "{err:?}"
    );
    // The same aggregate works on, from its recovered state; the other is untouched.
    engine
        .execute::<Counter>("a", CounterCommand::Add(1))
        .await
        .unwrap();
    assert_eq!(engine.state::<Counter>("a").await.unwrap().0.total, 6);
    assert_eq!(engine.state::<Counter>("b").await.unwrap().0.total, 7);
    // A rejection is typed and writes nothing.
    let err = engine
        .execute::<Counter>("b", CounterCommand::RequireAtLeast(100))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommandError::Rejected(CounterError::TooLow(7))
    ));
    assert_eq!(engine.history::<Counter>("b").unwrap().len(), 1);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailboxes_answer_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .shards(1)
        .entity_mailbox_commands_max(2)
        .durability(Durability::Durable)
        .open()
        .await
        .unwrap();
    // 64 commands at once to one aggregate whose mailbox holds 2, while the journal's syncer
    // is held so that no command can finish: exactly 2 are taken, 62 refused at once. Then
    // the syncer goes on and the 2 are applied exactly once. No timing involved.
    let gate = engine.journal().hold_syncs_for_tests();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..64 {
        let engine = engine.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(engine.execute::<Counter>("x", CounterCommand::Add(1)).await);
        });
    }
    drop(tx);
    let mut overloaded = 0;
    while overloaded < 62 {
        match rx.recv().await.expect("a task answered") {
            Err(CommandError::Overloaded { limit: 2, .. }) => overloaded += 1,
            other => panic!("only refusals can arrive while the syncer is held: {other:?}"),
        }
    }
    drop(gate);
    let mut accepted = 0;
    while let Some(result) = rx.recv().await {
        result.expect("the two queued commands are applied");
        accepted += 1;
    }
    assert_eq!(accepted, 2);
    let (state, version) = engine.state::<Counter>("x").await.unwrap();
    assert_eq!((state.total, version), (accepted, accepted));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_aggregates_are_passivated_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .shards(1)
        .active_per_shard_max(3)
        .passivate_idle_ms(50)
        .passivation_check_ms(10)
        .durability(Durability::Buffered { flush_every_ms: 50 })
        .open()
        .await
        .unwrap();
    for i in 0..6 {
        engine
            .execute::<Counter>(&format!("p-{i}"), CounterCommand::Add(i + 1))
            .await
            .unwrap();
    }
    assert!(
        engine.active_aggregates::<Counter>().await.unwrap() <= 3,
        "max-active not enforced"
    );
    // Idle past the timeout: everything leaves memory (bounded poll, up to 20 s).
    let mut active = usize::MAX;
    for _ in 0..2000 {
        active = engine.active_aggregates::<Counter>().await.unwrap();
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(active, 0);
    for i in 0..6 {
        let (s, v) = engine.state::<Counter>(&format!("p-{i}")).await.unwrap();
        assert_eq!((s.total, v), (i + 1, 1));
    }
    engine.shutdown().await.unwrap();
}

/// Past `active_per_shard_max` a new aggregate takes over the actor of the one passivated to
/// make room (no stop, no spawn). Ten aggregates through two actors, each command sent by
/// one of four tasks at once: every aggregate ends with exactly its own commands applied
/// (aggregate i adds i + 1 each time, and each event carries the total it was decided on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_handed_to_another_aggregate_carries_nothing_over() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .shards(1)
        .active_per_shard_max(2)
        .durability(Durability::Buffered { flush_every_ms: 50 })
        .open()
        .await
        .unwrap();
    const AGGREGATES: u64 = 10;
    const ROUNDS: u64 = 12;
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                // Each task walks the aggregates from its own starting point.
                let i = (round + task * 3) % AGGREGATES;
                engine
                    .execute::<Counter>(&format!("r-{i}"), CounterCommand::Add(i + 1))
                    .await
                    .unwrap_or_else(|e| panic!("task {task}, round {round}, r-{i}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut sent = [0u64; AGGREGATES as usize];
    for task in 0..4u64 {
        for round in 0..ROUNDS {
            sent[((round + task * 3) % AGGREGATES) as usize] += 1;
        }
    }
    for i in 0..AGGREGATES {
        let (state, version) = engine.state::<Counter>(&format!("r-{i}")).await.unwrap();
        let n = sent[i as usize];
        assert_eq!((state.total, version), (n * (i + 1), n), "r-{i}");
    }
    // Idle now: the limit holds again once the reads above are answered.
    assert!(engine.active_aggregates::<Counter>().await.unwrap() <= 2);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_from_snapshot_plus_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(dir.path()).await;
        for _ in 0..35 {
            engine
                .execute::<Counter>("s", CounterCommand::Add(2))
                .await
                .unwrap();
        }
        engine.shutdown().await.unwrap();
    }
    let journal = evershard_engine::Journal::open_read_only(dir.path()).unwrap();
    let stream = StreamId::new("Counter", "s");
    let snaps: Vec<u64> = journal
        .snapshots(&stream)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(snaps, vec![30, 20], "every 10 events, newest 2 kept");
    let loaded =
        evershard_engine::repository::load::<Counter>(&journal, &stream, u64::MAX, true).unwrap();
    assert_eq!(
        (loaded.from_snapshot, loaded.events_replayed, loaded.version),
        (Some(30), 5, 35)
    );
    let full =
        evershard_engine::repository::load::<Counter>(&journal, &stream, u64::MAX, false).unwrap();
    assert_eq!(full.state, loaded.state);
    drop(journal);

    let engine = open(dir.path()).await;
    let (state, version) = engine.state::<Counter>("s").await.unwrap();
    assert_eq!((state.total, version), (70, 35));
    engine
        .execute::<Counter>("s", CounterCommand::Add(1))
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .execute::<Counter>(&format!("d-{}", i % 5), CounterCommand::Add(1))
                .await
        }));
    }
    // Give the tasks a chance to start, then shut down while some may be in flight.
    tokio::task::yield_now().await;
    engine.shutdown().await.unwrap();
    let mut ok = 0u64;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CommandError::ShuttingDown) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(matches!(
        engine
            .execute::<Counter>("d-0", CounterCommand::Add(1))
            .await,
        Err(CommandError::ShuttingDown)
    ));
    // Every acknowledged command is in the journal.
    drop(engine);
    let journal = evershard_engine::Journal::open_read_only(dir.path()).unwrap();
    let total: u64 = journal.streams(Some("Counter")).map(|s| s.unwrap().1).sum();
    assert_eq!(total, ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_after_commit_answers_with_the_committed_events() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    engine
        .execute::<Counter>("u", CounterCommand::Add(1))
        .await
        .unwrap();
    let events = engine
        .execute::<Counter>("u", CounterCommand::AddUnlucky)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "the committed event is reported");
    assert_eq!(engine.history::<Counter>("u").unwrap().len(), 2);
    // The aggregate cannot be rebuilt (apply panics on that event): it refuses, typed.
    let err = engine
        .execute::<Counter>("u", CounterCommand::Add(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Storage(StorageError::Corrupt {
                sequence: Some(2),
                ..
            })
        ),
        "{err:?}"
    );
    engine
        .execute::<Counter>("other", CounterCommand::Add(1))
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_twice_and_concurrently_gets_one_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    engine
        .execute::<Counter>("s", CounterCommand::Add(1))
        .await
        .unwrap();
    let (a, b) = tokio::join!(engine.shutdown(), engine.shutdown());
    a.unwrap();
    b.unwrap();
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_dropped_without_shutdown_releases_the_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        // An hour between timer passes: the scheduler must not keep the engine alive for it
        // (it held the engine across its wait, so the store stayed locked that long).
        let engine = Engine::builder(dir.path())
            .register::<Counter>()
            .timer_poll_ms(3_600_000)
            .open()
            .await
            .unwrap();
        engine
            .execute::<Counter>("d", CounterCommand::Add(4))
            .await
            .unwrap();
    }
    // The actors stop asynchronously; poll (bounded) until sled's lock is free.
    let mut reopened = None;
    for _ in 0..500 {
        match Engine::builder(dir.path())
            .register::<Counter>()
            .open()
            .await
        {
            Ok(engine) => {
                reopened = Some(engine);
                break;
            }
            Err(evershard_engine::EngineError::Open(OpenError::Locked { .. })) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let engine = reopened.expect("the store was never released");
    assert_eq!(
        engine.state::<Counter>("d").await.unwrap().0.total,
        4,
        "durable ack survived the drop"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_are_identical_in_decide_reply_and_journal() {
    let dir = tempfile::tempdir().unwrap();
    // A clock with nanoseconds, which the journal cannot store.
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 123_456_789).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .clock(clock)
        .open()
        .await
        .unwrap();
    let events = engine
        .execute::<Counter>("t", CounterCommand::Add(1))
        .await
        .unwrap();
    let stored = engine.history::<Counter>("t").unwrap();
    assert_eq!(events[0].timestamp, stored[0].timestamp);
    assert_eq!(events[0].timestamp.timestamp_subsec_nanos(), 123_456_000);
    engine.shutdown().await.unwrap();
}
