//! Commands/s through 1, 2 and 3 `evershard-node` instances (cluster mode, every command
//! `KafkaDurable`: produced with acks=all, read back and checked, then fdatasynced locally)
//! and one tansu broker, everything on this machine. The nodes, the broker and the clients
//! share its cores, so this is a correctness-under-load figure, not a scaling curve: on
//! separate machines each node's partitions are independent work, and what they share is the
//! broker (one produce and one fetch per command batch).
//!
//! `cargo bench -p evershard-cli --features kafka --bench cluster`
//! (`CLUSTER_BENCH_NODES=1,2,3`, `CLUSTER_BENCH_SECS=10`, `CLUSTER_SEED`,
//! `CLUSTER_BENCH_FETCH_WAIT_MS`: the nodes' `--fetch-wait-ms`, default theirs).

#[path = "../tests/cluster_support/mod.rs"]
mod cluster_support;
#[path = "../../engine/tests/kafka_support/mod.rs"]
mod kafka_support;

use cluster_support::{call, start_node, wait_served, Rng};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_evershard-node");
const PARTITIONS: u32 = 6;
const AGGREGATES: usize = 48;
const CLIENTS: usize = 16;

fn main() {
    let nodes: Vec<usize> = std::env::var("CLUSTER_BENCH_NODES")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("CLUSTER_BENCH_NODES: a list of counts")
        })
        .collect();
    let secs: u64 = std::env::var("CLUSTER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let Some(tansu) = kafka_support::broker_tool("cluster bench") else {
        return;
    };
    println!("CLUSTER_SEED={seed}; fetch wait {:?} ms; {CLIENTS} clients, {AGGREGATES} aggregates, {PARTITIONS} partitions, {secs} s per run", std::env::var("CLUSTER_BENCH_FETCH_WAIT_MS").unwrap_or_else(|_| "10 (default)".into()));
    for n in nodes {
        run(&tansu, n, Duration::from_secs(secs), seed);
    }
}

fn run(tansu: &std::path::Path, count: usize, duration: Duration, seed: u64) {
    let broker = kafka_support::Broker::start(tansu);
    let bootstrap = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let fetch_wait = std::env::var("CLUSTER_BENCH_FETCH_WAIT_MS").ok();
    let extra: Vec<&str> = match &fetch_wait {
        Some(ms) => vec!["--fetch-wait-ms", ms.as_str()],
        None => vec![],
    };
    let nodes: Vec<_> = (1..=count)
        .map(|i| {
            start_node(
                NODE,
                &bootstrap,
                dir.path(),
                &format!("n{i}"),
                PARTITIONS,
                6_000,
                &extra,
            )
        })
        .collect();
    let addrs: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.addr.clone()))
        .collect();
    let pairs: Vec<(&str, &str)> = addrs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    wait_served(&pairs, PARTITIONS, true, Duration::from_secs(180));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let forwarded = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addrs = addrs.clone();
            let (stop, measuring) = (stop.clone(), measuring.clone());
            let (latencies, forwarded) = (latencies.clone(), forwarded.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let mine: Vec<usize> = (c..AGGREGATES).step_by(CLIENTS).collect();
                let mut next = vec![1u64; mine.len()];
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    let k = i % mine.len();
                    let (_, addr) = &addrs[rng.below(addrs.len())];
                    let request =
                        json!({"op": "append", "id": format!("ledger-{}", mine[k]), "n": next[k]});
                    let started = Instant::now();
                    match call(addr, &request) {
                        Ok(answer) if answer["ok"] == true => {
                            next[k] += 1;
                            i += 1;
                            if measuring.load(Ordering::Acquire) {
                                latencies
                                    .lock()
                                    .unwrap()
                                    .push(started.elapsed().as_micros() as u32);
                                if answer.get("via").is_some() {
                                    *forwarded.lock().unwrap() += 1;
                                }
                            }
                        }
                        Ok(answer) => assert_eq!(answer["retryable"], true, "{answer}"),
                        Err(e) => panic!("{addr}: {e}"),
                    }
                }
            })
        })
        .collect();
    // Two seconds of warm-up (entities loaded, connections made), then the measured window.
    std::thread::sleep(Duration::from_secs(2));
    measuring.store(true, Ordering::Release);
    let started = Instant::now();
    std::thread::sleep(duration);
    measuring.store(false, Ordering::Release);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().expect("a client failed");
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{count} node(s): {} commands in {:.1} s = {:.0} commands/s; latency p50 {:.1} ms, p99 {:.1} ms; {:.0}% forwarded; loadavg {}",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        *forwarded.lock().unwrap() as f64 * 100.0 / lat.len().max(1) as f64,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let _ = call(&addrs[0].1, &json!({"op": "status"}));
    drop(nodes);
    drop(broker);
}
