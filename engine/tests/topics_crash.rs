//! Topics across crashes, sled-style: the test re-runs its own binary as a child process
//! that appends under load through a durable engine while a consumer group reads and commits;
//! it prints `ack <id> <sequence>` per acknowledged event and `commit <partition> <offset>`
//! after each durable commit. The parent kills it with SIGKILL at a seeded random moment
//! (the seed is printed), then checks:
//!
//! - the read-only view (stored index + the tail planned in memory, writing nothing) holds
//!   every acknowledged event exactly once, in per-aggregate order, at gapless offsets;
//! - reopening the engine, the indexer resumes from its durable cursor and assigns exactly
//!   the offsets the read-only view predicted — and the offsets of earlier rounds never change;
//! - every commit the child reported is in the store (commits are durable), and a consumer of
//!   the group resumes from there.
//!
//! Three rounds on one store. (Like engine/tests/crash.rs, a process kill keeps the page
//! cache: this proves resumption and determinism, not fsync placement.)

mod common;

use common::{Counter, CounterCommand};
use evershard_engine::model::DemoRng;
use evershard_engine::{Engine, Journal, TopicCatalog, TopicLog};
use evershard_testing::child::{self, TestChild};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Duration;

const CHILD_ENV: &str = "EVERSHARD_TOPICS_CRASH_CHILD_DIR";
const TOPIC: &str = "test.counters";
const GROUP: &str = "crash-group";

#[test]
#[ignore = "run by topics_survive_crashes as a child process"]
fn topics_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    evershard_testing::child::runtime().block_on(async move {
        let engine = Engine::builder(&dir)
            .register::<Counter>()
            .open()
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for client in 0..8u64 {
            let engine = engine.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    let id = format!("agg-{}", (client * 7 + i) % 24);
                    i += 1;
                    if let Ok(events) = engine.execute::<Counter>(&id, CounterCommand::Add(1)).await
                    {
                        for e in events {
                            let _ = tx.send(format!("ack {} {}", e.aggregate_id, e.sequence));
                        }
                    }
                }
            });
        }
        let mut consumer = engine.consumer(GROUP, TOPIC).unwrap();
        let ctx = tx.clone();
        tokio::spawn(async move {
            loop {
                let batch = consumer
                    .poll(200, Duration::from_millis(100))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    continue;
                }
                consumer.commit().await.unwrap();
                for p in consumer.assignment() {
                    let o = consumer.position(p).unwrap();
                    let _ = ctx.send(format!("commit {p} {o}"));
                }
            }
        });
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    });
}

fn catalog() -> TopicCatalog {
    let mut c = TopicCatalog::new();
    c.register::<Counter>();
    c
}

/// event id → (partition, offset), checking order and gaplessness on the way.
fn placements(log: &TopicLog) -> BTreeMap<String, (u32, u64)> {
    let mut out = BTreeMap::new();
    let Ok(info) = log.topic(TOPIC) else {
        return out;
    };
    let mut last: HashMap<String, u64> = HashMap::new();
    for p in 0..info.partitions {
        for (i, m) in log
            .read(TOPIC, p, 0, usize::MAX)
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(m.offset, i as u64);
            let prev = last.insert(m.key().to_owned(), m.sequence).unwrap_or(0);
            assert_eq!(m.sequence, prev + 1, "order of {}", m.key());
            assert!(out.insert(m.event_id.to_string(), (p, m.offset)).is_none());
        }
    }
    out
}

#[test]
fn topics_survive_crashes() {
    let seed = child::seed("EVERSHARD_CRASH_SEED", 0x0070_91c5_c4a5, "topics crash");
    let mut rng = DemoRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut earlier: BTreeMap<String, (u32, u64)> = BTreeMap::new();

    for round in 0..3 {
        let acks_before_kill = 100 + rng.below(600);
        let mut child = TestChild::spawn("topics_crash_child", &[(CHILD_ENV, dir.path())]);
        let mut commits: HashMap<u32, u64> = HashMap::new();
        let mut seen = 0;
        let mut record = |line: &str, acked: &mut HashMap<String, u64>| {
            if let Some(rest) = line.strip_prefix("ack ") {
                let (id, seq) = rest.split_once(' ').unwrap();
                let max = acked.entry(id.to_owned()).or_insert(0);
                *max = (*max).max(seq.parse().unwrap());
                return true;
            }
            if let Some(rest) = line.strip_prefix("commit ") {
                let (p, o) = rest.split_once(' ').unwrap();
                let max = commits.entry(p.parse().unwrap()).or_insert(0);
                *max = (*max).max(o.parse().unwrap());
            }
            false
        };
        while seen < acks_before_kill {
            let Some(line) = child.next_line() else { break };
            seen += u64::from(record(&line, &mut acked));
        }
        assert!(
            seen >= acks_before_kill,
            "round {round}: child stopped early"
        );
        std::thread::sleep(Duration::from_millis(rng.below(30)));
        for line in child.kill() {
            record(&line, &mut acked);
        }

        // Read-only: the index plus the tail planned in memory.
        let journal = Journal::open_read_only(dir.path()).unwrap();
        let log = TopicLog::read_only(&journal, catalog()).unwrap();
        let predicted = placements(&log);
        eprintln!(
            "round {round}: {} events, index cursor {} (the rest planned in memory), {} partitions committed",
            predicted.len(),
            log.cursor().unwrap(),
            commits.len()
        );
        assert_eq!(
            predicted.len(),
            journal.read_global(1).count(),
            "seed {seed} round {round}: every journal event once in the topic"
        );
        for (id, (p, o)) in &earlier {
            assert_eq!(
                predicted.get(id),
                Some(&(*p, *o)),
                "seed {seed}: offsets moved"
            );
        }
        let stored: HashMap<u32, u64> = log
            .committed_offsets()
            .unwrap()
            .into_iter()
            .filter(|(g, t, _, _)| g == GROUP && t == TOPIC)
            .map(|(_, _, p, o)| (p, o))
            .collect();
        for (p, o) in &commits {
            assert!(
                stored.get(p).copied().unwrap_or(0) >= *o,
                "seed {seed} round {round}: commit {p}@{o} reported, store has {stored:?}"
            );
        }
        drop(log);
        drop(journal);

        // Reopen: the indexer resumes from its cursor and assigns the predicted offsets.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let engine = Engine::builder(dir.path())
                .register::<Counter>()
                .open()
                .await
                .unwrap();
            let durable = engine.journal().durable_position();
            assert!(engine.wait_indexed(durable, Duration::from_secs(60)).await);
            let log = engine.topic_log().unwrap();
            let placed = placements(&log);
            assert_eq!(placed, predicted, "seed {seed} round {round}: same offsets");
            // Every acknowledged event is in the topic.
            let mut heads: HashMap<String, u64> = HashMap::new();
            for p in 0..8 {
                for m in log.read(TOPIC, p, 0, usize::MAX).unwrap() {
                    heads.insert(m.key().to_owned(), m.sequence);
                }
            }
            for (id, seq) in &acked {
                assert!(heads.get(id).copied().unwrap_or(0) >= *seq, "{id} lost");
            }
            // The group resumes at its committed offsets: it reads exactly the rest.
            let lag = engine.consumer_lag(GROUP, TOPIC).unwrap().total();
            let mut consumer = engine.consumer(GROUP, TOPIC).unwrap();
            let mut read = 0;
            loop {
                let batch = consumer.try_poll(10_000).unwrap();
                if batch.is_empty() {
                    break;
                }
                read += batch.len() as u64;
            }
            assert_eq!(read, lag, "seed {seed} round {round}");
            drop(consumer);
            engine.shutdown().await.unwrap();
            earlier = placed;
        });
    }
}
