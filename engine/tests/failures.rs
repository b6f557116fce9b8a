//! Proves how the engine fails, error by error, with typed errors:
//! - an invariant broken by committed events (a bug in `decide`): the committing command is
//!   answered `Ok` (the events are facts), every later command and state read of that
//!   aggregate gets `InvariantViolated` naming the invariant and sequence — also after
//!   passivation — other aggregates go on, and a reopened engine refuses too (recovery checks
//!   the invariants of what it recovers);
//! - recovery detects a broken hash chain: a record rewritten with a valid CRC but a wrong
//!   `prev_hash`, in a full replay and in the first record after a snapshot;
//! - a store held open is `OpenError::Locked`, detected from the lock itself (two opens in
//!   one process conflict: sled's `flock` is per open file description), and an engine's
//!   open waits for a reader holding the marker file before it opens sled;
//! - a panic in `decide` is `HandlerPanicked` (not retryable), an actor that stops before
//!   answering is `Unavailable` (retryable); a panic of `check_invariants` is a violation
//!   (after the commit: the command is `Ok`, later ones `InvariantViolated`, not retryable),
//!   never a stopped actor;
//! - `shutdown` releases the store's lock before it returns: the same process reopens at
//!   once, with a clone of the old engine still alive, whose calls then fail typed.
//!
//! Waits are bounded polls, never fixed sleeps.

mod common;

use common::{Counter, CounterCommand};
use evershard_engine::model::{Aggregate, DecideContext, DomainEvent};
use evershard_engine::{
    CommandError, Corruption, Durability, Engine, EngineError, Journal, JournalConfig,
    JournalWriter, OpenError, SnapshotPolicy, StorageError, StreamId, UnavailableReason,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// An account whose `decide` has a bug on purpose: `Overdraw` withdraws without checking the
/// balance, so its event breaks the invariant "the balance is never negative". Its state's
/// `Clone` panics once `fragile` is set, to make the entity actor itself fail.
#[derive(Debug)]
struct Account;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountCommand {
    Deposit(i64),
    /// The bug: no balance check.
    Overdraw(i64),
    /// The state's `Clone` panics from now on.
    MakeFragile,
    Explode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited(i64),
    Withdrawn(i64),
    MadeFragile,
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Deposited(_) => "Deposited",
            AccountEvent::Withdrawn(_) => "Withdrawn",
            AccountEvent::MadeFragile => "MadeFragile",
        }
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "test.accounts"
    }
    fn payload_json(&self) -> serde_json::Value {
        serde_json::json!({ "event": format!("{self:?}") })
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct AccountState {
    balance: i64,
    fragile: bool,
}

impl Clone for AccountState {
    fn clone(&self) -> Self {
        assert!(!self.fragile, "test: this state cannot be cloned");
        AccountState {
            balance: self.balance,
            fragile: self.fragile,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("never")]
struct Never;

const NEVER_NEGATIVE: &str = "the balance is never negative";

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = Never;

    fn decide(
        _: &AccountState,
        command: &AccountCommand,
        _: &DecideContext,
    ) -> Result<Vec<AccountEvent>, Never> {
        Ok(match command {
            AccountCommand::Deposit(n) => vec![AccountEvent::Deposited(*n)],
            AccountCommand::Overdraw(n) => vec![AccountEvent::Withdrawn(*n)],
            AccountCommand::MakeFragile => vec![AccountEvent::MadeFragile],
            AccountCommand::Explode => panic!("test: decide explodes"),
        })
    }

    fn apply(state: &mut AccountState, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited(n) => state.balance += n,
            AccountEvent::Withdrawn(n) => state.balance -= n,
            AccountEvent::MadeFragile => state.fragile = true,
        }
    }

    fn check_invariants(state: &AccountState) -> Result<(), String> {
        assert_ne!(state.balance, 13, "test: check_invariants panics at 13");
        if state.balance < 0 {
            return Err(NEVER_NEGATIVE.into());
        }
        Ok(())
    }
}

async fn open_accounts(dir: &Path) -> Engine {
    Engine::builder(dir)
        .register::<Account>()
        .shards(2)
        .passivate_idle_ms(20)
        .passivation_check_ms(5)
        .durability(Durability::Buffered { flush_every_ms: 20 })
        .open()
        .await
        .expect("engine opens")
}

fn is_violation<E: std::error::Error>(err: &CommandError<E>, id: &str, sequence: u64) -> bool {
    matches!(
        err,
        CommandError::InvariantViolated { stream, invariant, sequence: s }
            if stream == &StreamId::new("Account", id) && invariant == NEVER_NEGATIVE && *s == sequence
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_invariant_is_committed_then_refused_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_accounts(dir.path()).await;
    let exec = |id: &'static str, c: AccountCommand| {
        let engine = engine.clone();
        async move { engine.execute::<Account>(id, c).await }
    };
    exec("a", AccountCommand::Deposit(5)).await.unwrap();
    // The buggy command commits: Ok with its event, which stands.
    let events = exec("a", AccountCommand::Overdraw(8)).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sequence, 2);
    // From now on, typed refusals naming the invariant and the sequence; nothing written.
    let err = exec("a", AccountCommand::Deposit(100)).await.unwrap_err();
    assert!(is_violation(&err, "a", 2), "{err:?}");
    assert!(!err.is_retryable());
    let err = engine.state::<Account>("a").await.unwrap_err();
    assert!(is_violation(&err, "a", 2), "{err:?}");
    assert_eq!(engine.history::<Account>("a").unwrap().len(), 2);
    // Passivation drops the entity but not the refusal (the shard keeps it).
    let mut active = usize::MAX;
    for _ in 0..2000 {
        active = engine.active_aggregates::<Account>().await.unwrap();
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(active, 0, "the aggregates were never passivated");
    let err = exec("a", AccountCommand::Deposit(1)).await.unwrap_err();
    assert!(is_violation(&err, "a", 2), "{err:?}");
    // Other aggregates are untouched.
    exec("b", AccountCommand::Deposit(1)).await.unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);

    // A reopened engine refuses too: recovery checks the recovered state's invariants.
    let engine = open_accounts(dir.path()).await;
    let err = engine
        .execute::<Account>("a", AccountCommand::Deposit(1))
        .await
        .unwrap_err();
    assert!(is_violation(&err, "a", 2), "{err:?}");
    assert_eq!(engine.history::<Account>("a").unwrap().len(), 2);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_decide_is_not_retryable_a_stopped_actor_is() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_accounts(dir.path()).await;
    let err = engine
        .execute::<Account>("p", AccountCommand::Explode)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommandError::HandlerPanicked { stream, message }
            if stream.aggregate_id == "p" && message.contains("decide explodes")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // The state's Clone panics outside the entity's guarded sections: the actor fails, the
    // reply channel closes, and the caller hears "unavailable", which may be retried.
    engine
        .execute::<Account>("p", AccountCommand::MakeFragile)
        .await
        .unwrap();
    let err = engine.state::<Account>("p").await.unwrap_err();
    assert!(
        matches!(
            &err,
            CommandError::Unavailable {
                reason: UnavailableReason::Stopped,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    // Once the shard has heard of the failure (asynchronously: until then the command meets
    // the dead actor and is answered `Unavailable` again), a retry starts a fresh actor.
    let mut result = Err(err);
    for _ in 0..1000 {
        result = engine
            .execute::<Account>("p", AccountCommand::Deposit(1))
            .await;
        match &result {
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(5)).await,
            _ => break,
        }
    }
    assert_eq!(result.unwrap().len(), 1);
    engine.shutdown().await.unwrap();
}

async fn open_counters(dir: &Path, every: u64) -> Engine {
    Engine::builder(dir)
        .register::<Counter>()
        .durability(Durability::Buffered { flush_every_ms: 20 })
        .snapshot_policy(SnapshotPolicy::every(every).keep(2))
        .open()
        .await
        .expect("engine opens")
}

/// Writes `n` events to Counter `id`, then rewrites record `broken` with a wrong `prev_hash`
/// (and a valid CRC), and returns the error the reopened engine answers.
async fn break_chain(n: u64, every: u64, broken: u64) -> CommandError<common::CounterError> {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path(), every).await;
    for _ in 0..n {
        engine
            .execute::<Counter>("h", CounterCommand::Add(1))
            .await
            .unwrap();
    }
    engine.shutdown().await.unwrap();
    let stream = StreamId::new("Counter", "h");
    let journal = Journal::open_read_only(dir.path()).unwrap();
    journal
        .rewrite_record_for_tests(&stream, broken, |r| r.prev_hash = [7; 32])
        .unwrap();
    drop(journal);
    let engine = open_counters(dir.path(), every).await;
    let err = engine
        .execute::<Counter>("h", CounterCommand::Add(1))
        .await
        .unwrap_err();
    engine.shutdown().await.unwrap();
    err
}

fn is_broken_chain<E: std::error::Error>(err: &CommandError<E>, at: u64) -> bool {
    matches!(
        err,
        CommandError::Storage(StorageError::Corrupt {
            stream: Some(stream),
            sequence: Some(s),
            cause: Corruption::HashChain,
        }) if stream.aggregate_id == "h" && *s == at
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_detects_a_broken_hash_chain() {
    // Full replay (no snapshot): the record at 3 does not link to 2.
    let err = break_chain(5, 0, 3).await;
    assert!(is_broken_chain(&err, 3), "{err:?}");
    // From the snapshot at 10: the first record after it must link to the stored record 10.
    let err = break_chain(12, 10, 11).await;
    assert!(is_broken_chain(&err, 11), "{err:?}");
    // A replay long enough (over 512 records) that the segment log checks its chain on a
    // second thread while the fold runs (given more than one CPU): the fold has gone past 300 when the check fails.
    let err = break_chain(600, 0, 300).await;
    assert!(is_broken_chain(&err, 300), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_held_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path(), 0).await;
    let err = Journal::open_read_only(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err:?}");
    let err = Engine::builder(dir.path())
        .register::<Counter>()
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Open(OpenError::Locked { .. })),
        "{err:?}"
    );
    engine.shutdown().await.unwrap();
    // Another I/O failure is not mistaken for a lock: a file where the directory should be.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = JournalWriter::open(file.join("store"), JournalConfig::default()).unwrap_err();
    assert!(matches!(err, OpenError::Storage { .. }), "{err:?}");
    // A file where the store's directory should be is not a store, and is left alone.
    let err = JournalWriter::open(&file, JournalConfig::default()).unwrap_err();
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_lock_while_clones_live() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_counters(dir.path(), 0).await;
    engine
        .execute::<Counter>("s", CounterCommand::Add(3))
        .await
        .unwrap();
    let clone = engine.clone();
    engine.shutdown().await.unwrap();
    // No retry, no wait: the lock is free when shutdown returns.
    let reopened = open_counters(dir.path(), 0).await;
    let history = reopened.history::<Counter>("s").unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(reopened.state::<Counter>("s").await.unwrap().0.total, 3);
    // The old clones answer typed errors, and never touch the new engine's store.
    assert!(matches!(
        clone.execute::<Counter>("s", CounterCommand::Add(1)).await,
        Err(CommandError::ShuttingDown)
    ));
    assert!(matches!(
        clone.history::<Counter>("s"),
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        clone.journal().head(&StreamId::new("Counter", "s")),
        Err(StorageError::Closed)
    ));
    drop((engine, clone));
    reopened
        .execute::<Counter>("s", CounterCommand::Add(1))
        .await
        .unwrap();
    reopened.shutdown().await.unwrap();
}

/// A reader holds the store's marker file shared while it opens or copies the store: an
/// engine's open waits for it before sled's open (whose recovery writes the store), and then
/// opens. Fails when the writer opens sled first (as it did until 2026-11-28): sled's lock is
/// then taken while the reader still holds the marker. (A writer that does not get there in
/// the bounded wait below makes this pass without proving it, never fail.)
#[test]
fn an_engine_waits_for_a_reader_holding_the_marker_before_opening_sled() {
    use fs2::FileExt;
    let dir = tempfile::tempdir().unwrap();
    JournalWriter::open(dir.path(), JournalConfig::default())
        .unwrap()
        .close()
        .unwrap();
    let marker = std::fs::File::open(dir.path().join("EVERSHARD")).unwrap();
    FileExt::lock_shared(&marker).unwrap();
    let opening = {
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || JournalWriter::open(&dir, JournalConfig::default()))
    };
    let sled_file = std::fs::File::open(dir.path().join("db")).unwrap();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            FileExt::try_lock_shared(&sled_file).is_ok(),
            "the writer took sled's lock while a reader held the marker"
        );
        FileExt::unlock(&sled_file).unwrap();
        assert!(
            !opening.is_finished(),
            "the writer opened while a reader held the marker"
        );
    }
    FileExt::unlock(&marker).unwrap();
    let writer = opening
        .join()
        .unwrap()
        .expect("the writer opens once the reader is done");
    writer.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_invariant_check_is_a_violation_not_a_stopped_actor() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_accounts(dir.path()).await;
    // The commit stands: its check panics after the events are in.
    let events = engine
        .execute::<Account>("q", AccountCommand::Deposit(13))
        .await
        .unwrap();
    assert_eq!(events[0].sequence, 1);
    // Recovery's check panics too: a typed, non-retryable violation, every time.
    for _ in 0..3 {
        let err = engine
            .execute::<Account>("q", AccountCommand::Deposit(1))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CommandError::InvariantViolated { invariant, sequence: 1, .. }
                if invariant.contains("check_invariants panicked")),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }
    assert!(matches!(
        engine.state::<Account>("q").await.unwrap_err(),
        CommandError::InvariantViolated { .. }
    ));
    assert_eq!(engine.history::<Account>("q").unwrap().len(), 1);
    engine.shutdown().await.unwrap();
}
