//! The demo's consumer group: while the workload runs, one task reads every topic (found as
//! the indexer creates them) in consumer group `demo`, committing after each batch. Before
//! the demo shuts its engine down it waits until everything durable is indexed and consumed,
//! then checks: every event committed in this run (global positions after the one at start)
//! reached its topic and the group exactly once, and each aggregate's events arrived in
//! sequence order.

use evershard_engine::{Consumer, Engine, Message};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The demo's consumer group.
pub const DEMO_GROUP: &str = "demo";
/// Messages one poll of one topic takes at most.
const POLL_MESSAGES_MAX: usize = 4096;

#[derive(Debug, Default)]
struct Seen {
    /// Deliveries per global position (this run's only).
    deliveries: HashMap<u64, u32>,
    /// Last sequence per (topic, aggregate key).
    last_sequence: HashMap<(String, String), u64>,
    order_violations: Vec<String>,
    earlier_runs: u64,
}

/// The running consumer task.
#[derive(Debug)]
pub struct DemoConsumer {
    from_position: u64,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<Result<usize, String>>,
}

impl DemoConsumer {
    /// Starts consuming; events after `journal().durable_position()` now are this run's.
    pub fn start(engine: &Engine) -> DemoConsumer {
        let from_position = engine.journal().durable_position();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(consume(
            engine.clone(),
            from_position,
            stop.clone(),
            seen.clone(),
        ));
        DemoConsumer {
            from_position,
            stop,
            seen,
            task,
        }
    }

    /// Waits until every durable event is indexed and consumed, stops, and checks. Returns
    /// the report lines and the number of problems.
    pub async fn finish(self, engine: &Engine) -> Result<(Vec<String>, usize), String> {
        let target = engine.journal().durable_position();
        if !engine.wait_indexed(target, Duration::from_secs(120)).await {
            let indexed = engine.indexed_through().unwrap_or(0);
            return Err(if engine.journal().is_poisoned() {
                format!(
                    "the topic index stopped at position {indexed} of {target}: the journal \
                     refuses writes"
                )
            } else {
                format!("the topic index did not reach position {target} in 120 s (at {indexed})")
            });
        }
        self.stop.store(true, Ordering::Release);
        let topics = self.task.await.map_err(|e| e.to_string())??;
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut problems = Vec::new();
        let mut missing = 0u64;
        let mut duplicated = 0u64;
        for position in self.from_position + 1..=target {
            match seen.deliveries.get(&position).copied().unwrap_or(0) {
                0 => missing += 1,
                1 => {}
                _ => duplicated += 1,
            }
        }
        let committed = target - self.from_position;
        if missing > 0 {
            problems.push(format!(
                "{missing} committed events never reached the group"
            ));
        }
        if duplicated > 0 {
            problems.push(format!(
                "{duplicated} events reached the group more than once"
            ));
        }
        problems.extend(seen.order_violations.iter().take(20).cloned());
        let mut lines = Vec::new();
        if problems.is_empty() {
            lines.push(format!(
                "topics: all {committed} events committed in this run reached their topic and \
                 consumer group {DEMO_GROUP:?} exactly once, in per-aggregate order ({topics} \
                 topics, consumed while the workload ran{})",
                if seen.earlier_runs > 0 {
                    format!(
                        "; plus {} events of earlier runs not committed by the group then",
                        seen.earlier_runs
                    )
                } else {
                    String::new()
                }
            ));
        } else {
            lines.push(format!("topics check FAILED: {} problems", problems.len()));
            lines.extend(problems.iter().map(|p| format!("  {p}")));
        }
        let n = problems.len() + seen.order_violations.len().saturating_sub(20);
        Ok((lines, n))
    }
}

fn record(seen: &Mutex<Seen>, from_position: u64, batch: &[Message]) {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    for m in batch {
        let key = (m.topic().to_owned(), m.key().to_owned());
        let last = seen.last_sequence.get(&key).copied();
        if last.is_some_and(|l| m.sequence <= l) {
            let text = format!(
                "{} {}: sequence {} after {}",
                m.topic(),
                m.key(),
                m.sequence,
                last.unwrap_or(0)
            );
            seen.order_violations.push(text);
        }
        seen.last_sequence.insert(key, m.sequence);
        if m.global_position > from_position {
            *seen.deliveries.entry(m.global_position).or_default() += 1;
        } else {
            seen.earlier_runs += 1;
        }
    }
}

async fn consume(
    engine: Engine,
    from_position: u64,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Result<usize, String> {
    let e = |e: evershard_engine::TopicError| e.to_string();
    let mut consumers: BTreeMap<String, Consumer> = BTreeMap::new();
    loop {
        // Read the flag first: a pass that starts after stop was set sees every topic and
        // message indexed before it, so an empty such pass means everything is consumed.
        let stopping = stop.load(Ordering::Acquire);
        for info in engine.topic_log().map_err(e)?.topics().map_err(e)? {
            if let std::collections::btree_map::Entry::Vacant(slot) = consumers.entry(info.name) {
                let consumer = engine.consumer(DEMO_GROUP, slot.key()).map_err(e)?;
                slot.insert(consumer);
            }
        }
        let mut any = false;
        for consumer in consumers.values_mut() {
            let batch = consumer.try_poll(POLL_MESSAGES_MAX).map_err(e)?;
            if !batch.is_empty() {
                any = true;
                record(&seen, from_position, &batch);
                consumer.commit().await.map_err(e)?;
            }
        }
        if !any {
            if stopping {
                return Ok(consumers.len());
            }
            let cursor = engine.indexed_through().map_err(e)?;
            engine
                .wait_indexed(cursor + 1, Duration::from_millis(100))
                .await;
        }
    }
}
