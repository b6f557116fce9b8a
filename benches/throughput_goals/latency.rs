//! Latency of a durable command under an open-loop load: commands are sent on a fixed
//! schedule (`rate` per second) whether or not earlier ones have been answered, and each
//! command's latency is counted from the moment it was *due*, not from when it was sent, so
//! that a stall is not hidden by the sender waiting for it (coordinated omission).

use evershard::aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard::engine::{Durability, Engine};
use std::time::{Duration, Instant};

/// Latencies of one run, sorted.
pub struct Latencies {
    pub sent: u64,
    pub elapsed: Duration,
    sorted_us: Vec<u64>,
}

impl Latencies {
    /// The `q` quantile (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.sorted_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.sorted_us.len() - 1) as f64 * q).round() as usize;
        self.sorted_us[i] as f64 / 1000.0
    }
}

/// `ReceiveStock` commands on `aggregates` aggregates (round robin), `rate` per second for
/// `seconds`, through a durable engine on `dir`. Every command must be acknowledged.
pub async fn open_loop(
    dir: &std::path::Path,
    aggregates: u64,
    rate: f64,
    seconds: f64,
) -> Latencies {
    let engine = Engine::builder(dir)
        .register::<ProductStock>()
        .durability(Durability::Durable)
        .open()
        .await
        .expect("open engine");
    let total = (rate * seconds) as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sorted_us = Vec::with_capacity(total as usize);
    // `EVERSHARD_BENCH_LATENCY_TRACE=1`: the worst latency of each 100 ms of the schedule,
    // printed at the end, to place the stalls in time.
    let trace = std::env::var("EVERSHARD_BENCH_LATENCY_TRACE").as_deref() == Ok("1");
    let windows = std::sync::Arc::new(Windows::new(seconds));
    for i in 0..total {
        let windows = windows.clone();
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let engine = engine.clone();
        tasks.spawn(async move {
            let id = format!("sku-{}", i % aggregates);
            engine
                .execute::<ProductStock>(&id, ReceiveStock { quantity: 1 })
                .await
                .expect("a durable command");
            let latency_us = due.elapsed().as_micros() as u64;
            if trace {
                windows.note(due - start, latency_us);
            }
            latency_us
        });
        // Reap what is done so the set does not grow with the run.
        while let Some(done) = tasks.try_join_next() {
            sorted_us.push(done.expect("a command task"));
        }
    }
    sorted_us.extend(tasks.join_all().await);
    let elapsed = start.elapsed();
    engine.shutdown().await.expect("shutdown");
    sorted_us.sort_unstable();
    if trace {
        windows.print();
    }
    Latencies {
        sent: total,
        elapsed,
        sorted_us,
    }
}

/// The worst latency per 100 ms window of the schedule.
struct Windows(Vec<std::sync::atomic::AtomicU64>);

impl Windows {
    const WINDOW_MS: u64 = 100;

    fn new(seconds: f64) -> Windows {
        let n = (seconds * 1000.0 / Self::WINDOW_MS as f64).ceil() as usize + 1;
        Windows(
            (0..n)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        )
    }

    fn note(&self, at: Duration, latency_us: u64) {
        let i = (at.as_millis() as u64 / Self::WINDOW_MS) as usize;
        if let Some(w) = self.0.get(i) {
            w.fetch_max(latency_us, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn print(&self) {
        let worst: Vec<String> = self
            .0
            .iter()
            .map(|w| {
                format!(
                    "{:.1}",
                    w.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
                )
            })
            .collect();
        println!(
            "  worst latency (ms) per {} ms window: {}",
            Self::WINDOW_MS,
            worst.join(" ")
        );
    }
}
