//! Commands/s through 1, 2 and 3 `evershard-node` instances (cluster mode, every command
//! `KafkaDurable`: produced with acks=all, read back and checked, then fdatasynced locally)
//! and one tansu broker, everything on this machine. The nodes, the broker and the clients
//! share its cores, so this is a correctness-under-load figure, not a scaling curve: on
//! separate machines each node's partitions are independent work, and what they share is the
//! broker (one produce and one fetch per command batch).
//!
//! `cargo bench -p evershard-cli --features kafka --bench cluster`
//! (`CLUSTER_BENCH_NODES=1,2,3`, `CLUSTER_BENCH_SECS=10`, `CLUSTER_SEED`,
//! `CLUSTER_BENCH_FETCH_WAIT_MS`: the nodes' `--fetch-wait-ms`, default theirs;
//! `CLUSTER_BENCH_MODE=local`: the nodes run `--mode local`, acknowledging after the local
//! fdatasync and publishing after, and the run also reports each node's replication lag at
//! the end of the measured window and how long it took to fall to zero).
//!
//! With `CLUSTER_BENCH_RESTART=1`, after each run node `n1` is killed (SIGKILL) and started
//! again on its data directory, and a new node `fresh` starts on an empty one: how long each
//! takes from its start until its tailer has walked the whole journal topic and applied it,
//! and how many messages each read (the restarted one from its stored position); a node that
//! has not caught up after `CLUSTER_BENCH_CATCH_UP_SECS` (default 120) is reported with how
//! far it got.

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
    let mut extra: Vec<&str> = match &fetch_wait {
        Some(ms) => vec!["--fetch-wait-ms", ms.as_str()],
        None => vec![],
    };
    let local = std::env::var("CLUSTER_BENCH_MODE").is_ok_and(|m| m == "local");
    if local {
        extra.extend(["--mode", "local"]);
    }
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
    if local {
        // What a disk lost at the end of the window would have taken, and how long the
        // publishers took to catch up once the clients stopped.
        let lag =
            |addr: &str| call(addr, &json!({"op": "status"})).unwrap()["replication_lag"].clone();
        let at_end: Vec<_> = addrs
            .iter()
            .map(|(n, a)| format!("{n} {}", lag(a)))
            .collect();
        let drained = Instant::now();
        let deadline = drained + Duration::from_secs(120);
        while addrs.iter().any(|(_, a)| lag(a)["batches"] != 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "  replication lag when the clients stopped: {}; zero {:.2} s later",
            at_end.join(", "),
            drained.elapsed().as_secs_f64()
        );
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{count} node(s){}: {} commands in {:.1} s = {:.0} commands/s; latency p50 {:.1} ms, p99 {:.1} ms; {:.0}% forwarded; loadavg {}",
        if local { ", Local" } else { "" },
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        *forwarded.lock().unwrap() as f64 * 100.0 / lat.len().max(1) as f64,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let _ = call(&addrs[0].1, &json!({"op": "status"}));
    if std::env::var("CLUSTER_BENCH_RESTART").is_ok_and(|v| v == "1") {
        restart(nodes, &bootstrap, dir.path(), &extra);
    } else {
        drop(nodes);
    }
    drop(broker);
}

/// The node's per-partition tailer positions and whether nothing waits to be applied.
fn walked(addr: &str) -> Option<(Vec<u64>, bool)> {
    let s = call(addr, &json!({"op": "status"})).ok()?;
    let walked = s["walked"]
        .as_array()?
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    Some((walked, s["pending_applies"] == 0))
}

/// Starts `name` on `dir` and measures how long until it has walked to `end` with nothing
/// pending (at most `CLUSTER_BENCH_CATCH_UP_SECS`); prints and returns the node.
fn catch_up(
    bootstrap: &str,
    dir: &std::path::Path,
    name: &str,
    extra: &[&str],
    end: &[u64],
) -> cluster_support::Node {
    let bound = Duration::from_secs(
        std::env::var("CLUSTER_BENCH_CATCH_UP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    );
    let started = Instant::now();
    let node = start_node(NODE, bootstrap, dir, name, PARTITIONS, 6_000, extra);
    let resumed: Vec<u64> = call(&node.addr, &json!({"op": "status"})).unwrap()["resumed_from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    let to_read: u64 = end.iter().zip(&resumed).map(|(e, r)| e - r).sum();
    let mut last = resumed.clone();
    let caught_up = loop {
        if let Some((w, idle)) = walked(&node.addr) {
            if idle && w.iter().zip(end).all(|(w, e)| w >= e) {
                break true;
            }
            last = w;
        }
        if started.elapsed() >= bound {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    if caught_up {
        println!(
            "  {name}: resumed from {resumed:?}, read {to_read} messages, caught up in {:.2} s \
             (from its start); loadavg {load}",
            started.elapsed().as_secs_f64()
        );
    } else {
        let read: u64 = last.iter().zip(&resumed).map(|(w, r)| w - r).sum();
        println!(
            "  {name}: resumed from {resumed:?}, NOT caught up after {} s: read {read} of \
             {to_read} messages (walked {last:?}); loadavg {load}",
            bound.as_secs()
        );
    }
    node
}

fn restart(
    mut nodes: Vec<cluster_support::Node>,
    bootstrap: &str,
    dir: &std::path::Path,
    extra: &[&str],
) {
    // Every node walked the same topic: wait until n1 has applied all of it.
    let end = loop {
        let (w, idle) = walked(&nodes[0].addr).expect("n1 answers");
        std::thread::sleep(Duration::from_millis(500));
        let (again, still_idle) = walked(&nodes[0].addr).expect("n1 answers");
        if idle && still_idle && again == w {
            break w;
        }
    };
    let total: u64 = end.iter().sum();
    println!("  catch-up of the {total}-message journal topic (ends {end:?}):");
    let first = nodes.remove(0);
    let name = first.name.clone();
    drop(first); // SIGKILL
    let n1 = catch_up(bootstrap, dir, &name, extra, &end);
    let fresh = catch_up(bootstrap, dir, "fresh", extra, &end);
    drop((n1, fresh, nodes));
}
