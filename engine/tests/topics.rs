//! Topics end to end through a durable engine: every committed event reaches its topic
//! exactly once, in per-aggregate order, in the partition Kafka's default partitioner picks,
//! at gapless offsets that survive a reopen; consumer groups commit durably, resume, split
//! partitions and are independent; waiting consumers are woken; subscriptions retry with
//! backoff and dead-letter to `dlq.events.v1`; a dead letter can be re-driven; a topic's
//! partition count is fixed at creation; a group started at a time after a reopen, whose
//! members join one by one, reads exactly the messages from that time and commits its start
//! positions (issue 9's demo stall); a start at a time or an offset waits for an index
//! that is behind the journal rather than reading from 0; a commit writes only the positions that moved; a
//! member that joins a group takes a partition only once its holder gave it up, after the
//! batch in hand and with its progress committed (never two members on one partition at
//! once); a stopped subscription commits only what it handled; a dead letter fits a record
//! whatever the message and the error text (the error is cut, a value too large stays in its
//! topic, where redrive reads it), so the subscription moves on. Every wait is a bounded poll
//! (no sleep assumes a speed); the randomised parts print their seed.

mod common;

use common::{Counter, CounterCommand};
use evershard_engine::model::DemoRng;
use evershard_engine::topic::partition_for;
use evershard_engine::{
    Clock, ConsumerOptions, Engine, EngineError, HandlerError, ManualClock, Message, RetryPolicy,
    StartFrom, SubscriptionOptions, TopicConfig, TopicError, DLQ_TOPIC,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "test.counters";
const WAIT: Duration = Duration::from_secs(60);

async fn open(dir: &std::path::Path) -> Engine {
    Engine::builder(dir)
        .register::<Counter>()
        .open()
        .await
        .unwrap()
}

/// Runs `n` commands over `ids` aggregates (seeded order); returns the last global position.
async fn write(engine: &Engine, seed: u64, ids: u64, n: u64) -> u64 {
    let mut rng = DemoRng::new(seed);
    let mut last = 0;
    for _ in 0..n {
        let id = format!("c-{}", rng.below(ids));
        let events = engine
            .execute::<Counter>(&id, CounterCommand::Add(1))
            .await
            .unwrap();
        last = events.last().unwrap().global_position;
    }
    last
}

/// Polls until `n` messages arrived (bounded by WAIT).
async fn drain(consumer: &mut evershard_engine::Consumer, n: usize) -> Vec<Message> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n {
        assert!(start.elapsed() < WAIT, "only {} of {n} messages", out.len());
        out.extend(
            consumer
                .poll(1000, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    out
}

/// Checks the topic holds every event of the journal exactly once, in per-aggregate order,
/// in the right partition, at gapless offsets; returns (partition, offset) per event id.
fn check_topic(engine: &Engine) -> BTreeMap<String, (u32, u64)> {
    let log = engine.topic_log().unwrap();
    let info = log.topic(TOPIC).unwrap();
    assert_eq!(info.partitions, 8);
    let mut placed = BTreeMap::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for p in 0..info.partitions {
        let messages = log.read(TOPIC, p, 0, usize::MAX).unwrap();
        assert_eq!(messages.len() as u64, info.end_offsets[p as usize]);
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m.offset, i as u64, "gapless offsets");
            assert_eq!(m.partition, partition_for(m.key(), 8));
            let prev = last_seq.insert(m.key().to_owned(), m.sequence).unwrap_or(0);
            assert_eq!(m.sequence, prev + 1, "per-aggregate order of {}", m.key());
            assert!(placed
                .insert(m.event_id.to_string(), (p, m.offset))
                .is_none());
        }
    }
    let journal_events = engine.journal().read_global(1).count();
    assert_eq!(placed.len(), journal_events, "every event exactly once");
    placed
}

/// A commit writes only the positions that moved since the last one: with nothing new it
/// writes nothing, waits for no sync, and the stored offsets stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_writes_only_the_positions_that_moved() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let last = write(&engine, 7, 1, 5).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let committed = |engine: &Engine| -> Vec<(u32, u64)> {
        let log = engine.topic_log().unwrap();
        let all = log.committed_offsets().unwrap();
        all.into_iter()
            .filter(|(g, t, _, _)| g == "g" && t == TOPIC)
            .map(|(_, _, p, o)| (p, o))
            .collect()
    };
    let mut c = engine.consumer("g", TOPIC).unwrap();
    assert_eq!(drain(&mut c, 5).await.len(), 5);
    assert!(c.has_uncommitted());
    let syncs = engine.journal().syncs_done();
    c.commit().await.unwrap();
    assert!(
        engine.journal().syncs_done() > syncs,
        "the first commit is a durable write"
    );
    assert!(!c.has_uncommitted());
    let stored = committed(&engine);
    assert_eq!(stored.iter().map(|(_, o)| o).sum::<u64>(), 5, "{stored:?}");

    let syncs = engine.journal().syncs_done();
    c.commit().await.unwrap();
    assert_eq!(
        engine.journal().syncs_done(),
        syncs,
        "nothing new: nothing written"
    );
    assert_eq!(committed(&engine), stored);
    drop(c);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_in_order_and_offsets_survive_reopen() {
    let seed = 0x0070_91c5;
    eprintln!("seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let last = write(&engine, seed, 40, 300).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let before = check_topic(&engine);

    // Consumer group "a" reads everything, commits; a restarted member reads nothing more.
    let mut a = engine.consumer("a", TOPIC).unwrap();
    let got = drain(&mut a, 300).await;
    assert_eq!(got.len(), 300);
    a.commit().await.unwrap();
    drop(a);
    let lag = engine.consumer_lag("a", TOPIC).unwrap();
    assert_eq!(lag.total(), 0, "{lag:?}");
    // Group "b" is independent: it has everything still to read.
    assert_eq!(engine.consumer_lag("b", TOPIC).unwrap().total(), 300);
    engine.shutdown().await.unwrap();

    let engine = open(dir.path()).await;
    assert_eq!(check_topic(&engine), before, "offsets never change");
    let mut a = engine.consumer("a", TOPIC).unwrap();
    assert!(a
        .poll(100, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    let last = write(&engine, seed + 1, 40, 20).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let more = drain(&mut a, 20).await;
    assert_eq!(more.len(), 20, "resumes from the committed offsets");
    // A consumer from the beginning sees all 320; from a time, only what came later.
    let mut from_start = engine
        .consumer_with(
            "c",
            TOPIC,
            ConsumerOptions {
                start: StartFrom::Beginning,
            },
        )
        .unwrap();
    assert_eq!(drain(&mut from_start, 320).await.len(), 320);
    let t = more.iter().map(|m| m.timestamp).min().unwrap();
    let mut from_time = engine
        .consumer_with(
            "d",
            TOPIC,
            ConsumerOptions {
                start: StartFrom::Time(t),
            },
        )
        .unwrap();
    let later = drain(&mut from_time, 20).await;
    assert!(later.iter().all(|m| m.timestamp >= t));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_partitions_and_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let last = write(&engine, 7, 64, 200).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let mut one = engine.consumer("g", TOPIC).unwrap();
    let mut two = engine.consumer("g", TOPIC).unwrap();
    let a = one.try_poll(10_000).unwrap();
    let b = two.try_poll(10_000).unwrap();
    let (pa, pb) = (one.assignment(), two.assignment());
    assert_eq!(pa.len() + pb.len(), 8);
    assert!(pa.iter().all(|p| !pb.contains(p)), "{pa:?} {pb:?}");
    assert_eq!(a.len() + b.len(), 200);
    one.commit().await.unwrap();
    // `two` leaves without committing: its partitions move to `one`, from the committed
    // offsets (0): redelivered, at least once.
    drop(two);
    let again = one.try_poll(10_000).unwrap();
    assert_eq!(one.assignment().len(), 8);
    assert_eq!(again.len(), b.len());
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_is_woken() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let mut consumer = engine.consumer("w", TOPIC).unwrap();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let got = consumer.poll(10, Duration::from_secs(60)).await.unwrap();
        (got.len(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let committed = Instant::now();
    write(&engine, 1, 1, 1).await;
    let (n, _) = waiter.await.unwrap();
    let latency = committed.elapsed();
    assert_eq!(n, 1);
    // Woken by notification: well under the 60 s poll timeout (generous for a loaded VM).
    assert!(latency < Duration::from_secs(10), "{latency:?}");
    eprintln!("commit-to-consumer latency {latency:?}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .topic(TopicConfig::new(TOPIC).partitions(3))
        .open()
        .await
        .unwrap();
    let last = write(&engine, 3, 10, 30).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let log = engine.topic_log().unwrap();
    let info = log.topic(TOPIC).unwrap();
    assert_eq!(info.partitions, 3);
    for p in 0..3 {
        for m in log.read(TOPIC, p, 0, 1000).unwrap() {
            assert_eq!(partition_for(m.key(), 3), p);
        }
    }
    engine.shutdown().await.unwrap();
    let err = Engine::builder(dir.path())
        .register::<Counter>()
        .topic(TopicConfig::new(TOPIC).partitions(4))
        .open()
        .await
        .expect_err("another partition count");
    assert!(
        matches!(
            err,
            EngineError::Topic(TopicError::PartitionsMismatch {
                stored: 3,
                configured: 4,
                ..
            })
        ),
        "{err:?}"
    );
    // Without a config the stored count holds.
    let engine = open(dir.path()).await;
    assert_eq!(
        engine.topic_log().unwrap().topic(TOPIC).unwrap().partitions,
        3
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_dead_letters_and_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    // c-0: fails processing twice then succeeds; c-1: always fails; c-2: invalid.
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let handler_attempts = attempts.clone();
    let handler = move |m: Message| {
        let attempts = handler_attempts.clone();
        async move {
            let n = {
                let mut a = attempts.lock().unwrap();
                let n = a.entry(m.key().to_owned()).or_default();
                *n += 1;
                *n
            };
            match m.key() {
                "c-0" if n < 3 => Err(HandlerError::Processing(format!("try {n}"))),
                "c-1" => Err(HandlerError::Processing("down".into())),
                "c-2" => Err(HandlerError::Validation("amount missing".into())),
                _ => Ok(()),
            }
        }
    };
    let options = SubscriptionOptions {
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff_ms: 1,
            multiplier: 2.0,
            max_backoff_ms: 8,
        },
        ..SubscriptionOptions::default()
    };
    let sub = engine.subscribe_with("h", TOPIC, handler, options).unwrap();
    for id in ["c-0", "c-1", "c-2", "c-3"] {
        engine
            .execute::<Counter>(id, CounterCommand::Add(5))
            .await
            .unwrap();
    }
    let start = Instant::now();
    while sub.handled() + sub.dead_lettered() < 4 {
        assert!(start.elapsed() < WAIT, "subscription stuck");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sub.stop().await.unwrap();
    assert_eq!(attempts.lock().unwrap()["c-0"], 3);
    assert_eq!(attempts.lock().unwrap()["c-1"], 4);
    assert_eq!(
        attempts.lock().unwrap()["c-2"],
        1,
        "validation errors are not retried"
    );
    assert_eq!(engine.consumer_lag("h", TOPIC).unwrap().total(), 0);

    let dlq_end = engine.journal().durable_position();
    assert!(engine.wait_indexed(dlq_end, WAIT).await);
    let mut dlq = engine
        .consumer_with(
            "inspect",
            DLQ_TOPIC,
            ConsumerOptions {
                start: StartFrom::Beginning,
            },
        )
        .unwrap();
    let mut letters = drain(&mut dlq, 2).await;
    letters.sort_by(|a, b| a.key().cmp(b.key()));
    let payload = |m: &Message| m.value_json()["payload"].clone();
    let p1 = payload(&letters[0]);
    assert_eq!(letters[0].key(), "c-1");
    assert_eq!(p1["reason"], "processing_error");
    assert_eq!(p1["error"], "down");
    assert_eq!(p1["attempts"], 4);
    assert_eq!(p1["originalTopic"], TOPIC);
    assert_eq!(p1["consumerGroup"], "h");
    assert!(p1["partition"].is_u64() && p1["offset"].is_u64());
    assert_eq!(p1["originalMessage"]["key"], "c-1");
    assert_eq!(p1["originalMessage"]["value"]["payload"]["amount"], 5);
    let p2 = payload(&letters[1]);
    assert_eq!(p2["reason"], "validation_error");
    assert_eq!(p2["attempts"], 1);
    // The DLQ envelope is the GACP one; the causation is the original event.
    assert_eq!(
        letters[0].value_json()["causationId"],
        p1["originalMessage"]["headers"]["event_id"]
    );
    let health = engine.health(1_000).unwrap();
    assert_eq!(health.dead_letters, 2);
    assert!(health.healthy, "{health:?}");
    assert!(health.publisher_lag.is_empty(), "no publisher runs");
    let metrics = engine.metrics().unwrap();
    let counters = metrics
        .iter()
        .find(|m| m.topic == TOPIC && m.event_type == "Added")
        .unwrap();
    assert_eq!(counters.metrics.produced, 4);
    assert_eq!(counters.metrics.dead_lettered, 2);
    assert_eq!(counters.metrics.retried, 2 + 3);
    assert_eq!(counters.metrics.failed, 2 + 4 + 1);

    // Re-drive the processing failure to a handler that now succeeds.
    let seen = Arc::new(AtomicU32::new(0));
    let seen2 = seen.clone();
    let fixed = move |m: Message| {
        let seen = seen2.clone();
        async move {
            assert_eq!(m.key(), "c-1");
            assert_eq!(m.topic(), TOPIC);
            assert_eq!(m.value_json()["payload"]["amount"], 5);
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    };
    let outcome = engine.redrive(&letters[0], &fixed).await.unwrap();
    assert_eq!(outcome, Ok(()));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    drop(dlq);
    engine.shutdown().await.unwrap();
    // The dead letters are journal records: verified like everything else.
    let journal = evershard_engine::Journal::open_read_only(dir.path()).unwrap();
    assert!(journal.verify().is_clean());
}

async fn open_on(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Engine {
    Engine::builder(dir)
        .register::<Counter>()
        .clock(clock.clone())
        .open()
        .await
        .unwrap()
}

/// The event ids on the topic whose timestamp is at or after `t`, and the count before it.
fn split_at(engine: &Engine, t: chrono::DateTime<chrono::Utc>) -> (BTreeSet<uuid::Uuid>, usize) {
    let log = engine.topic_log().unwrap();
    let (mut after, mut before) = (BTreeSet::new(), 0);
    for p in 0..8 {
        for m in log.read(TOPIC, p, 0, usize::MAX).unwrap() {
            if m.timestamp >= t {
                after.insert(m.event_id);
            } else {
                before += 1;
            }
        }
    }
    (after, before)
}

/// Regression for the demo's saga stall (issue 9): after a reopen, a group started at a
/// time gets four members that join one at a time, each polling before the next joins —
/// the interleaving of a saga runner's members starting on a multi-threaded runtime. A
/// partition that moves to a member after that member's first assignment used to start at
/// the group's durable committed offset, 0 for a new group: the whole history. Now every
/// member reads from the group's start position: all the messages from the time (once or
/// more, at least once), none before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_started_at_a_time_reads_from_it_while_members_join_after_a_reopen() {
    let seed = 0x5a6a_0009;
    eprintln!("seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::new(ManualClock::new(t0));
    let engine = open_on(dir.path(), &clock).await;
    let last = write(&engine, seed, 64, 200).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    engine.shutdown().await.unwrap();

    let engine = open_on(dir.path(), &clock).await;
    clock.advance(chrono::TimeDelta::minutes(1));
    let t = clock.now();
    let start = ConsumerOptions {
        start: StartFrom::Time(t),
    };
    // New messages before the members join and while they join.
    let last = write(&engine, seed + 1, 64, 20).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let mut members = Vec::new();
    let mut got: Vec<Message> = Vec::new();
    for _ in 0..4 {
        members.push(engine.consumer_with("late", TOPIC, start).unwrap());
        for member in &mut members {
            got.extend(member.try_poll(10_000).unwrap());
        }
        let last = write(&engine, seed + 2 + members.len() as u64, 64, 5).await;
        assert!(engine.wait_indexed(last, WAIT).await);
    }
    let (after, before) = split_at(&engine, t);
    assert_eq!((after.len(), before), (40, 200));
    let started = Instant::now();
    loop {
        for member in &mut members {
            got.extend(member.try_poll(10_000).unwrap());
        }
        let seen: BTreeSet<_> = got.iter().map(|m| m.event_id).collect();
        if seen.is_superset(&after) {
            break;
        }
        assert!(started.elapsed() < WAIT, "{} of 40 delivered", seen.len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A partition moves once its holder gave it up at its own poll, so the last join's
    // moves may take a second round of polls.
    for member in &mut members {
        got.extend(member.try_poll(10_000).unwrap());
    }
    let assigned: BTreeSet<u32> = members.iter().flat_map(|m| m.assignment()).collect();
    assert_eq!(assigned.len(), 8, "every partition has an owner");
    let early: Vec<_> = got.iter().filter(|m| m.timestamp < t).collect();
    assert!(
        early.is_empty(),
        "{} messages from before the group's start time, e.g. {}[{}]@{}",
        early.len(),
        early[0].topic(),
        early[0].partition,
        early[0].offset
    );
    drop(members);
    engine.shutdown().await.unwrap();
}

/// A consumer started at a time or at an offset while the topic index is behind the journal
/// (held here; in life an engine just opened on a journal it never indexed) decides its start
/// only once the index covers the journal as it was when the consumer was made. It used to
/// decide at once: a partition (or the whole topic) not indexed yet started at 0, and the
/// consumer read the history it asked to skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_or_offset_start_waits_for_the_index_to_cover_the_journal() {
    let seed = 0x5a6a_0011;
    eprintln!("seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::new(ManualClock::new(t0));
    let engine = open_on(dir.path(), &clock).await;
    engine.hold_topic_indexer_for_tests(true);
    write(&engine, seed, 64, 200).await;
    clock.advance(chrono::TimeDelta::minutes(1));
    let t = clock.now();
    let mut from_time = engine
        .consumer_with(
            "late",
            TOPIC,
            ConsumerOptions {
                start: StartFrom::Time(t),
            },
        )
        .unwrap();
    const SKIP: u64 = 10;
    let mut from_offset = engine
        .consumer_with(
            "skip",
            TOPIC,
            ConsumerOptions {
                start: StartFrom::Offset(SKIP),
            },
        )
        .unwrap();
    for consumer in [&mut from_time, &mut from_offset] {
        let early = consumer
            .poll(1000, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(early.is_empty(), "nothing is indexed yet");
    }
    let last = write(&engine, seed + 1, 64, 20).await;
    engine.hold_topic_indexer_for_tests(false);
    assert!(engine.wait_indexed(last, WAIT).await);

    let (after, before) = split_at(&engine, t);
    assert_eq!((after.len(), before), (20, 200));
    let got = drain(&mut from_time, 20).await;
    let rest = from_time
        .poll(1000, Duration::from_millis(20))
        .await
        .unwrap();
    let ids: BTreeSet<_> = got.iter().chain(&rest).map(|m| m.event_id).collect();
    assert_eq!(
        ids, after,
        "exactly the messages from the time, none before it"
    );

    let log = engine.topic_log().unwrap();
    let ends = log.topic(TOPIC).unwrap().end_offsets;
    let expected: u64 = ends.iter().map(|e| e.saturating_sub(SKIP)).sum();
    let got = drain(&mut from_offset, expected as usize).await;
    let rest = from_offset
        .poll(1000, Duration::from_millis(20))
        .await
        .unwrap();
    assert!(rest.is_empty());
    assert!(
        got.iter().all(|m| m.offset >= SKIP),
        "every partition from offset {SKIP}"
    );
    assert_eq!(got.len() as u64, expected);
    drop((from_time, from_offset));
    engine.shutdown().await.unwrap();
}

/// A consumer whose time start waits for the index (see above) is told when the index can
/// no longer move (the journal refuses writes after a failed sync): it gets the error
/// instead of an empty poll for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waiting_for_an_index_that_cannot_move_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    engine.hold_topic_indexer_for_tests(true);
    write(&engine, 0x5a6a_0012, 8, 20).await;
    let mut consumer = engine
        .consumer_with(
            "late",
            TOPIC,
            ConsumerOptions {
                start: StartFrom::Time(chrono::Utc::now()),
            },
        )
        .unwrap();
    engine.journal().fail_next_sync_for_tests();
    let failed = engine
        .execute::<Counter>("c-0", CounterCommand::Add(1))
        .await;
    assert!(failed.is_err(), "the failed sync refuses the command");
    assert!(engine.journal().is_poisoned());
    let polled = consumer.poll(1000, Duration::from_millis(20)).await;
    assert!(matches!(polled, Err(TopicError::Storage(_))), "{polled:?}");
    drop(consumer);
    drop(engine);
}

/// Regression for the demo's saga stall (issue 9), at the subscription level: a group of four
/// subscribed members started at a time commits its start position on every partition, also
/// where no message came after the time, so its lag reaches 0 (a saga runner's `wait_idle`
/// waits for that) and the group is listed with all eight partitions. It used to count the
/// messages before the time as lag forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_started_at_a_time_commits_its_start_and_reaches_lag_zero() {
    let seed = 0x5a6a_0010;
    eprintln!("seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::new(ManualClock::new(t0));
    let engine = open_on(dir.path(), &clock).await;
    let last = write(&engine, seed, 64, 200).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    engine.shutdown().await.unwrap();

    let engine = open_on(dir.path(), &clock).await;
    clock.advance(chrono::TimeDelta::minutes(1));
    let t = clock.now();
    let options = SubscriptionOptions {
        consumer: ConsumerOptions {
            start: StartFrom::Time(t),
        },
        ..SubscriptionOptions::default()
    };
    let handled: Arc<Mutex<Vec<Message>>> = Arc::default();
    let mut subscriptions = Vec::new();
    for _ in 0..4 {
        let handled = handled.clone();
        let handler = move |m: Message| {
            let handled = handled.clone();
            async move {
                handled.lock().unwrap().push(m);
                Ok(())
            }
        };
        subscriptions.push(
            engine
                .subscribe_with("sub", TOPIC, handler, options)
                .unwrap(),
        );
    }
    // New messages for two aggregates only: most partitions get none after the time.
    let last = write(&engine, seed + 1, 2, 10).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let (after, before) = split_at(&engine, t);
    assert_eq!((after.len(), before), (10, 200));
    let started = Instant::now();
    loop {
        let lag = engine.consumer_lag("sub", TOPIC).unwrap();
        let committed = engine
            .topic_log()
            .unwrap()
            .committed_offsets()
            .unwrap()
            .into_iter()
            .filter(|(g, topic, _, _)| g == "sub" && topic == TOPIC)
            .count();
        if lag.total() == 0 && committed == 8 {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "lag {} with {committed} partitions committed: {lag:?}",
            lag.total()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handled = handled.lock().unwrap().clone();
    assert!(handled.iter().all(|m| m.timestamp >= t));
    let seen: BTreeSet<_> = handled.iter().map(|m| m.event_id).collect();
    assert_eq!(seen, after);
    for subscription in subscriptions {
        subscription.stop().await.unwrap();
    }
    engine.shutdown().await.unwrap();
}

/// Every (partition, offset) a handler saw, with the member that saw it.
type Seen = Arc<Mutex<Vec<(&'static str, u32, u64)>>>;

/// A handler that records what it sees as `member` and, while `gate` has no permit, waits
/// at its first message.
/// With a handler: the engine, the group, and where the handler notes a commit that passed
/// the message it is about to handle.
type CommitCheck = (Engine, &'static str, Arc<Mutex<Vec<String>>>);

/// With `check`, it also notes every message whose group's committed offset already passed
/// it when the handler got it (a commit of a message not handled yet).
fn recording(
    member: &'static str,
    seen: Seen,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    check: Option<CommitCheck>,
) -> impl Fn(
    Message,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send>>
       + Send
       + Sync
       + 'static {
    move |m: Message| {
        let seen = seen.clone();
        let gate = gate.clone();
        if let Some((engine, group, passed)) = &check {
            let lag = engine.consumer_lag(group, TOPIC).unwrap();
            let committed = lag.partitions[m.partition as usize].committed;
            if committed > m.offset {
                passed.lock().unwrap().push(format!(
                    "{member}: partition {} committed at {committed} before offset {} was handled",
                    m.partition, m.offset
                ));
            }
        }
        Box::pin(async move {
            let first = {
                let mut seen = seen.lock().unwrap();
                seen.push((member, m.partition, m.offset));
                seen.iter().filter(|s| s.0 == member).count() == 1
            };
            if let (true, Some(gate)) = (first, gate) {
                let _permit = gate.acquire().await.unwrap();
            }
            Ok(())
        })
    }
}

/// 80 messages written, and member "a" of `group` subscribed, holding its first batch: its
/// handler waits at the first message until the returned gate gets a permit.
async fn holding_a_batch(
    engine: &Engine,
    seed: u64,
    group: &'static str,
    check: Option<CommitCheck>,
) -> (
    evershard_engine::Subscription,
    Seen,
    Arc<tokio::sync::Semaphore>,
) {
    let last = write(engine, seed, 40, 80).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let seen: Seen = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let a = engine
        .subscribe(
            group,
            TOPIC,
            recording("a", seen.clone(), Some(gate.clone()), check),
        )
        .unwrap();
    wait_until("a holds its first batch", || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    (a, seen, gate)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_takes_a_partition_only_after_its_holder_gave_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let check: CommitCheck = (engine.clone(), "g", Arc::default());
    let (a, seen, gate) = holding_a_batch(&engine, 11, "g", Some(check.clone())).await;

    // b joins while a is in the middle of a batch of every partition.
    let b = engine
        .subscribe(
            "g",
            TOPIC,
            recording("b", seen.clone(), None, Some(check.clone())),
        )
        .unwrap();
    // Whatever b could do on its own, give it time to do it (the claim is that it does
    // nothing, so this wait assumes no speed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        seen.lock().unwrap().iter().all(|s| s.0 == "a"),
        "b handled a partition a still held"
    );
    gate.add_permits(1);
    wait_until("a's batch handled", || seen.lock().unwrap().len() >= 80).await;
    // a handed b's partitions over in the middle of its batch, once the message in hand was
    // done: b handled the rest of them.
    assert!(
        seen.lock().unwrap()[..80].iter().any(|s| s.0 == "b"),
        "b waited for the whole of a's batch"
    );

    let last = write(&engine, 12, 40, 40).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    wait_until("everything handled", || seen.lock().unwrap().len() >= 120).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let mut once: BTreeMap<(u32, u64), &str> = BTreeMap::new();
    for (member, p, offset) in &seen {
        if let Some(first) = once.insert((*p, *offset), member) {
            panic!("partition {p} offset {offset} handled by {first} and {member}");
        }
    }
    assert_eq!(once.len(), 120);
    assert!(
        seen.iter().any(|s| s.0 == "b"),
        "b took its partitions once a gave them up"
    );
    // Each partition's offsets were handled in order, whoever handled them.
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, p, offset) in &seen {
        let expected = next.entry(*p).or_default();
        assert_eq!(offset, expected, "partition {p} out of order");
        *expected += 1;
    }
    assert_eq!(engine.consumer_lag("g", TOPIC).unwrap().total(), 0);
    let passed = check.2.lock().unwrap().clone();
    assert!(
        passed.is_empty(),
        "commits passed messages in hand: {passed:?}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_stopped_mid_batch_commits_only_what_it_handled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let (a, seen, gate) = holding_a_batch(&engine, 13, "s", None).await;
    // The stop is asked (its first poll sets the flag) while the first message is in hand;
    // then that message finishes.
    let mut stopping = Box::pin(a.stop());
    std::future::poll_fn(|cx| {
        let _ = std::future::Future::poll(stopping.as_mut(), cx);
        std::task::Poll::Ready(())
    })
    .await;
    gate.add_permits(1);
    stopping.await.unwrap();
    let handled = seen.lock().unwrap().len();
    assert!(
        handled < 80,
        "stop waited for the whole batch ({handled} handled)"
    );
    let lag = engine.consumer_lag("s", TOPIC).unwrap();
    assert_eq!(
        lag.total(),
        80 - handled as u64,
        "committed exactly what was handled"
    );

    let b = engine
        .subscribe("s", TOPIC, recording("b", seen.clone(), None, None))
        .unwrap();
    wait_until("the rest handled", || seen.lock().unwrap().len() >= 80).await;
    b.stop().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let unique: BTreeSet<(u32, u64)> = seen.iter().map(|(_, p, o)| (*p, *o)).collect();
    assert_eq!(unique.len(), 80);
    assert_eq!(seen.len(), 80, "nothing handled twice");
    engine.shutdown().await.unwrap();
}

/// An aggregate whose events carry a text of any size (up to the journal's payload limit).
#[derive(Debug)]
struct Note;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Written {
    text: String,
}

impl evershard_engine::model::DomainEvent for Written {
    fn event_type(&self) -> &'static str {
        "Written"
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "test.notes"
    }
    fn payload_json(&self) -> serde_json::Value {
        serde_json::json!({ "text": self.text })
    }
}

impl evershard_engine::model::Aggregate for Note {
    const TYPE: &'static str = "Note";
    type State = ();
    type Command = String;
    type Event = Written;
    type Error = std::convert::Infallible;

    fn decide(
        _: &(),
        text: &String,
        _: &evershard_engine::model::DecideContext,
    ) -> Result<Vec<Written>, Self::Error> {
        Ok(vec![Written { text: text.clone() }])
    }

    fn apply(_: &mut (), _: &Written) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_fits_whatever_the_message_and_redrive_reads_a_large_one_from_its_topic() {
    const NOTES: &str = "test.notes";
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Note>()
        .open()
        .await
        .unwrap();
    // Near the journal's payload limit (64 KiB): its dead letter could not hold it too.
    let big = "x".repeat(60 * 1024);
    engine.execute::<Note>("big", big.clone()).await.unwrap();
    engine
        .execute::<Note>("small", "hi".to_owned())
        .await
        .unwrap();
    // A handler whose error text is far larger than a record.
    let handler = |m: Message| async move {
        match m.key() {
            "big" => Err(HandlerError::Validation("e".repeat(100 * 1024))),
            _ => Ok(()),
        }
    };
    let sub = engine.subscribe("n", NOTES, handler).unwrap();
    wait_until("both messages done", || {
        sub.handled() + sub.dead_lettered() == 2
    })
    .await;
    sub.stop().await.unwrap();
    assert_eq!(
        sub_counts(&engine, "n", NOTES),
        0,
        "the subscription moved past both"
    );

    let end = engine.journal().durable_position();
    assert!(engine.wait_indexed(end, WAIT).await);
    let mut dlq = engine
        .consumer_with(
            "inspect",
            DLQ_TOPIC,
            ConsumerOptions {
                start: StartFrom::Beginning,
            },
        )
        .unwrap();
    let letters = drain(&mut dlq, 1).await;
    let letter = evershard_engine::DeadLetter::from_message(&letters[0]).unwrap();
    assert!(letter.error.len() < 5_000, "the error text is cut");
    assert!(letter
        .error
        .ends_with(&format!("[cut: {} bytes in all]", 100 * 1024)));
    assert!(
        !letter.value_kept(),
        "a value this large stays in its topic"
    );

    let log = engine.topic_log().unwrap();
    let original = log
        .read(NOTES, letter.partition, letter.offset, 1)
        .unwrap()
        .remove(0);
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = got.clone();
    let redriven = move |m: Message| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(m.value().to_vec());
            Ok(())
        }
    };
    assert_eq!(
        engine.redrive(&letters[0], &redriven).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        got.lock().unwrap().as_slice(),
        &[original.value().to_vec()],
        "redrive hands the original message, read from its topic"
    );
    assert_eq!(original.value_json()["payload"]["text"], big.as_str());
    engine.shutdown().await.unwrap();
}

/// The lag of a group on a topic.
fn sub_counts(engine: &Engine, group: &str, topic: &str) -> u64 {
    engine.consumer_lag(group, topic).unwrap().total()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_of_an_invalid_group_or_topic_name_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let long = "g".repeat(300);
    for (group, topic) in [("", TOPIC), (long.as_str(), TOPIC), ("g", ""), ("g", "a b")] {
        match engine.consumer_lag(group, topic) {
            Err(TopicError::InvalidName { .. }) => {}
            other => panic!("lag of {group:?} on {topic:?}: {other:?}"),
        }
    }
    engine.shutdown().await.unwrap();
}

/// A topic's queue depth counts the slowest group's whole backlog, a partition it never
/// committed included, as its lag does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_agrees_with_the_slowest_groups_lag() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let last = write(&engine, 21, 64, 120).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    // A group of two members of which only one ever commits: the other's four partitions
    // have no stored offset.
    let mut one = engine.consumer("slow", TOPIC).unwrap();
    let mut two = engine.consumer("slow", TOPIC).unwrap();
    let read = one.try_poll(10_000).unwrap().len() as u64;
    two.try_poll(10_000).unwrap();
    one.commit().await.unwrap();
    let lag = engine.consumer_lag("slow", TOPIC).unwrap().total();
    assert_eq!(lag, 120 - read);
    let depth = engine
        .metrics()
        .unwrap()
        .into_iter()
        .find(|m| m.topic == TOPIC)
        .unwrap()
        .queue_depth;
    assert_eq!(depth, lag, "queue depth is the slowest group's lag");
    drop((one, two));
    engine.shutdown().await.unwrap();
}

/// A message dead-lettered and then redelivered (the subscription died before committing
/// past it) is dead-lettered once, not once per delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_dead_lettered_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    // One counter, so both messages share a partition, in order: amount 1, then 2.
    engine
        .execute::<Counter>("c-9", CounterCommand::Add(1))
        .await
        .unwrap();
    let last = engine
        .execute::<Counter>("c-9", CounterCommand::Add(2))
        .await
        .unwrap()[0]
        .global_position;
    assert!(engine.wait_indexed(last, WAIT).await);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = |gate: Option<Arc<tokio::sync::Semaphore>>| {
        move |m: Message| {
            let gate = gate.clone();
            async move {
                if m.value_json()["payload"]["amount"] == 1 {
                    return Err(HandlerError::Validation("never valid".into()));
                }
                if let Some(gate) = gate {
                    // The first subscription dies here, before any commit past amount 1.
                    let _permit = gate.acquire().await.unwrap();
                }
                Ok(())
            }
        }
    };
    let options = SubscriptionOptions {
        commit_interval_ms: 3_600_000,
        ..SubscriptionOptions::default()
    };
    let first = engine
        .subscribe_with("d", TOPIC, handler(Some(gate.clone())), options)
        .unwrap();
    wait_until("amount 1 dead-lettered", || first.dead_lettered() == 1).await;
    drop(first); // aborted in amount 2's handler: nothing committed
    assert_eq!(
        engine.consumer_lag("d", TOPIC).unwrap().total(),
        2,
        "nothing committed"
    );
    let second = engine
        .subscribe_with("d", TOPIC, handler(None), options)
        .unwrap();
    wait_until("amount 2 handled again", || second.handled() == 1).await;
    assert_eq!(
        second.dead_lettered(),
        0,
        "amount 1 was dead-lettered before"
    );
    second.stop().await.unwrap();
    assert_eq!(engine.consumer_lag("d", TOPIC).unwrap().total(), 0);
    let letters: Vec<_> = engine
        .journal()
        .read_stream(
            &evershard_engine::StreamId::new("evershard.DeadLetter", "c-9"),
            1,
            u64::MAX,
        )
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(letters.len(), 1, "one dead letter for one message");
    engine.shutdown().await.unwrap();
}

/// A member waiting for messages with progress not committed (a long commit interval)
/// commits it before it gives a partition up to a member that joins: nothing is handled
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_member_commits_before_it_hands_a_partition_over() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let seen: Seen = Arc::default();
    let options = SubscriptionOptions {
        commit_interval_ms: 3_600_000,
        ..SubscriptionOptions::default()
    };
    let a = engine
        .subscribe_with(
            "i",
            TOPIC,
            recording("a", seen.clone(), None, None),
            options,
        )
        .unwrap();
    let last = write(&engine, 31, 40, 80).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    wait_until("a handled everything", || seen.lock().unwrap().len() >= 80).await;
    let b = engine
        .subscribe_with(
            "i",
            TOPIC,
            recording("b", seen.clone(), None, None),
            options,
        )
        .unwrap();
    let last = write(&engine, 32, 40, 40).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    wait_until("everything handled", || seen.lock().unwrap().len() >= 120).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let unique: BTreeSet<(u32, u64)> = seen.iter().map(|(_, p, o)| (*p, *o)).collect();
    assert_eq!(unique.len(), 120);
    assert_eq!(seen.len(), 120, "a message was handled twice");
    assert!(
        seen[80..].iter().any(|s| s.0 == "b"),
        "b took its partitions"
    );
    engine.shutdown().await.unwrap();
}

/// `offset_for_time` answers Kafka's `offsetsForTimes`: the first offset of a partition whose
/// message's timestamp is at or after the time (the end offset when none is), also when
/// timestamps do not rise with offsets (a clock that stepped back, equal timestamps), for a
/// time between two microseconds, and through a reopened store's read-only view. The model
/// is the partition read whole, message by message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_time_is_the_first_offset_at_or_after_the_time() {
    let seed = 0x0ff5_e7a7;
    eprintln!("seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
        .unwrap()
        .to_utc();
    let clock = Arc::new(ManualClock::new(t0));
    let engine = open_on(dir.path(), &clock).await;
    let mut rng = DemoRng::new(seed);
    let mut last = 0;
    for _ in 0..300 {
        // Times within 40 ms of t0, in any order: many equal, many earlier than the last.
        clock.set(t0 + chrono::TimeDelta::milliseconds(rng.below(40) as i64));
        let id = format!("c-{}", rng.below(24));
        let events = engine
            .execute::<Counter>(&id, CounterCommand::Add(1))
            .await
            .unwrap();
        last = events.last().unwrap().global_position;
    }
    assert!(engine.wait_indexed(last, WAIT).await);
    let check = |log: &evershard_engine::TopicLog| {
        let mut probes = vec![
            t0 - chrono::TimeDelta::seconds(1),
            t0 + chrono::TimeDelta::seconds(1),
        ];
        for ms in 0..40 {
            let t = t0 + chrono::TimeDelta::milliseconds(ms);
            probes.extend([
                t,
                t + chrono::TimeDelta::microseconds(1),
                t - chrono::TimeDelta::microseconds(1),
                // Between two microseconds: only a later message qualifies.
                t + chrono::TimeDelta::nanoseconds(500),
            ]);
        }
        let mut non_monotonic = 0;
        for p in 0..8 {
            let messages = log.read(TOPIC, p, 0, usize::MAX).unwrap();
            non_monotonic += messages
                .windows(2)
                .filter(|w| w[1].timestamp < w[0].timestamp)
                .count();
            let end = log.end_offset(TOPIC, p).unwrap();
            for &t in &probes {
                let expected = messages
                    .iter()
                    .find(|m| m.timestamp >= t)
                    .map_or(end, |m| m.offset);
                assert_eq!(
                    log.offset_for_time(TOPIC, p, t).unwrap(),
                    expected,
                    "partition {p}, time {t}"
                );
            }
        }
        assert!(
            non_monotonic > 20,
            "the timestamps go back and forth: {non_monotonic}"
        );
    };
    check(&engine.topic_log().unwrap());
    engine.shutdown().await.unwrap();
    // More events with no indexer: the read-only view routes them in memory (its tail).
    let engine = Engine::builder(dir.path())
        .register::<Counter>()
        .clock(clock.clone())
        .topic_indexer(false)
        .open()
        .await
        .unwrap();
    for _ in 0..100 {
        clock.set(t0 + chrono::TimeDelta::milliseconds(rng.below(40) as i64));
        let id = format!("c-{}", rng.below(24));
        engine
            .execute::<Counter>(&id, CounterCommand::Add(1))
            .await
            .unwrap();
    }
    engine.shutdown().await.unwrap();
    let journal = evershard_engine::Journal::open_read_only(dir.path()).unwrap();
    let mut catalog = evershard_engine::TopicCatalog::new();
    catalog.register::<Counter>();
    let view = evershard_engine::TopicLog::read_only(&journal, catalog).unwrap();
    assert!(
        view.cursor().unwrap() < journal.durable_position(),
        "the view has a tail"
    );
    check(&view);
}

/// A subscription on the dead-letter topic whose handler fails a letter does not
/// dead-letter it again (its letter would be a new message of the same topic, failed by the
/// same handler, without end): the topic keeps the one letter and the group reaches lag 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_its_handler_fails_is_not_dead_lettered_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let invalid = |_m: Message| async { Err(HandlerError::Validation("no".into())) };
    let sub = engine.subscribe("h", TOPIC, invalid).unwrap();
    let last = write(&engine, 0xd1, 1, 1).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    wait_until("the event is dead-lettered", || sub.dead_lettered() == 1).await;
    sub.stop().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let alerting = move |_m: Message| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Err(HandlerError::Processing("webhook down".into())) }
    };
    let options = SubscriptionOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff_ms: 1,
            multiplier: 1.0,
            max_backoff_ms: 1,
        },
        consumer: ConsumerOptions {
            start: StartFrom::Beginning,
        },
        ..SubscriptionOptions::default()
    };
    let alerts = engine
        .subscribe_with("alerts", DLQ_TOPIC, alerting, options)
        .unwrap();
    wait_until("the letter was tried twice", || {
        calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    // Whatever it wrote is durable and indexed once the group reached lag 0.
    wait_until("the alerts group reaches lag 0", || {
        engine.consumer_lag("alerts", DLQ_TOPIC).unwrap().total() == 0
    })
    .await;
    let end = engine.journal().durable_position();
    assert!(engine.wait_indexed(end, WAIT).await);
    assert_eq!(alerts.dead_lettered(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "tried twice, then passed");
    alerts.stop().await.unwrap();
    let log = engine.topic_log().unwrap();
    assert_eq!(log.topic(DLQ_TOPIC).unwrap().messages(), 1, "one letter");
    engine.shutdown().await.unwrap();
}

/// A poll for no message returns at once; a poll whose timeout no clock can hold
/// (`Duration::MAX`) returns the messages there; a subscription asking for batches of no
/// message is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_no_messages_or_for_ever_and_empty_batches_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let last = write(&engine, 0xb0, 4, 10).await;
    assert!(engine.wait_indexed(last, WAIT).await);
    let mut consumer = engine.consumer("g", TOPIC).unwrap();
    let started = Instant::now();
    assert!(consumer
        .poll(0, Duration::from_secs(3600))
        .await
        .unwrap()
        .is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "returned at once"
    );
    assert_eq!(
        consumer.poll(100, Duration::MAX).await.unwrap().len(),
        10,
        "no panic: the messages there"
    );
    let refused = engine
        .subscribe_with(
            "h",
            TOPIC,
            |_m: Message| async { Ok(()) },
            SubscriptionOptions {
                batch_messages_max: 0,
                ..SubscriptionOptions::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            refused,
            TopicError::InvalidOption {
                option: "batch_messages_max",
                ..
            }
        ),
        "{refused:?}"
    );
    engine.shutdown().await.unwrap();
}
