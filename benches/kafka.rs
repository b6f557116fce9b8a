//! The Kafka publisher against a local broker (feature `kafka`; a bench binary,
//! `harness = false`):
//!
//! ```text
//! cargo bench --features kafka --bench kafka
//! EVERSHARD_BENCH_KAFKA_EVENTS=200000 cargo bench --features kafka --bench kafka
//! ```
//!
//! It starts tansu 0.6.0 itself (127.0.0.1, a free port, the sqlite engine in a fresh
//! temporary directory, with the header index tansu lacks; killed at the end) — from PATH,
//! `<target>/tools/tansu` or `../shared/tools/` as the Kafka tests do — and in one run:
//! 1. fills a durable engine with `EVERSHARD_BENCH_KAFKA_EVENTS` (default 100,000)
//!    ProductStock events through commands, with no publisher running;
//! 2. **catch-up**: starts the publisher and times it until its lag is 0 (events/s);
//! 3. **live**: commits `EVERSHARD_BENCH_KAFKA_LIVE_COMMANDS` (default 20,000) more
//!    commands from 64 clients at full speed with the publisher running, then the same number
//!    paced at `EVERSHARD_BENCH_KAFKA_PACED_RATE` commands/s (default 1,000), and reports
//!    commit-to-acknowledgement latency (p50, p99, max) for each: from the event's timestamp
//!    (taken when its command is decided, just before the commit) to the broker's
//!    acknowledgement of its message (`KafkaPublisher::take_latencies`);
//! 4. **ceiling**: the broker's own rate — the same rdkafka producer configuration
//!    (`KafkaConfig::producer_config`) producing the same records (`KafkaPublisher::record`:
//!    same keys, headers, values, partitions) as the catch-up, directly, all in flight at
//!    once, to a second fresh broker (same binary, settings and header index: tansu's sqlite
//!    engine slows as its tables grow, so both start from an empty database); and the ratio
//!    catch-up rate / ceiling.
//!
//! Under `cargo test --benches` (no `--bench` argument) it runs a small smoke version.

#[path = "../engine/tests/kafka_support/mod.rs"]
mod kafka_support;

use evershard::aggregates::product_stock::ProductStock;
use evershard::engine::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use evershard::engine::rdkafka::client::DefaultClientContext;
use evershard::engine::rdkafka::producer::{FutureProducer, Producer};
use evershard::engine::rdkafka::types::RDKafkaErrorCode;
use evershard::engine::{
    Durability, Engine, Journal, KafkaConfig, KafkaPublisher, Message, TopicCatalog, TopicLog,
};
use evershard::model::{Aggregate, DecideContext, DemoRng, Workload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(bootstrap: &str) -> KafkaConfig {
    KafkaConfig::new(bootstrap)
        .client_id("evershard-bench")
        .replication_factor(1)
        .request_timeout(Duration::from_secs(30))
        .connection_timeout(Duration::from_secs(10))
}

/// Commands from `clients` clients over `aggregates` ProductStock aggregates until
/// `stop(commands, events)` says so; `pace` = the delay between one client's commands.
/// Returns (commands, events).
async fn drive(
    engine: &Engine,
    aggregates: u64,
    clients: u64,
    seed: u64,
    pace: Option<Duration>,
    stop: Arc<dyn Fn(u64, u64) -> bool + Send + Sync>,
) -> (u64, u64) {
    let commands = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (engine, commands, events, stop) = (
            engine.clone(),
            commands.clone(),
            events.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = DemoRng::new(seed ^ client.wrapping_mul(0x9E37_79B9));
            let ids: Vec<String> = (client..aggregates)
                .step_by(clients as usize)
                .map(|i| format!("sku-{i}"))
                .collect();
            let mut mirrors = vec![<ProductStock as Aggregate>::State::default(); ids.len()];
            let mut next = Instant::now();
            let mut n = 0usize;
            while !stop(
                commands.load(Ordering::Relaxed),
                events.load(Ordering::Relaxed),
            ) {
                if let Some(pace) = pace {
                    next += pace;
                    tokio::time::sleep_until(next.into()).await;
                }
                let k = n % ids.len();
                n += 1;
                let ctx = DecideContext::new(ids[k].clone(), chrono::Utc::now());
                let command = ProductStock::sample_command(&mirrors[k], &ctx, &mut rng);
                commands.fetch_add(1, Ordering::Relaxed);
                match engine.execute::<ProductStock>(&ids[k], command).await {
                    Ok(committed) => {
                        events.fetch_add(committed.len() as u64, Ordering::Relaxed);
                        for e in &committed {
                            ProductStock::apply(&mut mirrors[k], &e.payload);
                        }
                    }
                    Err(evershard::engine::CommandError::Rejected(_)) => {}
                    Err(e) => panic!("command failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        commands.load(Ordering::Relaxed),
        events.load(Ordering::Relaxed),
    )
}

fn percentiles(mut micros: Vec<u32>) -> String {
    if micros.is_empty() {
        return "no samples".into();
    }
    micros.sort_unstable();
    let at =
        |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)] as f64 / 1000.0;
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        at(0.5),
        at(0.99),
        *micros.last().unwrap() as f64 / 1000.0,
        micros.len()
    )
}

async fn caught_up(publisher: &KafkaPublisher, what: &str) {
    if !publisher.wait_caught_up(Duration::from_secs(1800)).await {
        panic!(
            "{what}: the publisher did not catch up: {:#?}",
            publisher.status()
        );
    }
}

/// The broker's ceiling: `messages` produced directly with the publisher's producer
/// configuration and records, to the same topics (same partitions) of another broker, all
/// in flight at once. Returns (messages, elapsed from producer creation to the last ack).
async fn ceiling(
    config: &KafkaConfig,
    topics: &[(String, u32)],
    messages: &[Message],
) -> (u64, Duration) {
    let admin: AdminClient<DefaultClientContext> = config.client_config().create().unwrap();
    let names: Vec<(String, u32)> = topics.iter().map(|(t, p)| (t.clone(), *p)).collect();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p as i32, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((n, e)) => panic!("creating {n}: {e}"),
        }
    }
    let start = Instant::now();
    let producer: FutureProducer = config.producer_config().create().unwrap();
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let mut record = KafkaPublisher::record(m);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => panic!("ceiling produce: {e}"),
            }
        }
    }
    let n = pending.len() as u64;
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let elapsed = start.elapsed();
    producer.flush(Duration::from_secs(30)).unwrap();
    (n, elapsed)
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let events_target = env(
        "EVERSHARD_BENCH_KAFKA_EVENTS",
        if smoke { 2_000 } else { 100_000 },
    );
    let live_commands = env(
        "EVERSHARD_BENCH_KAFKA_LIVE_COMMANDS",
        if smoke { 1_000 } else { 20_000 },
    );
    let paced_rate = env("EVERSHARD_BENCH_KAFKA_PACED_RATE", 1_000).max(1);
    let aggregates = env(
        "EVERSHARD_BENCH_AGGREGATES",
        if smoke { 100 } else { 10_000 },
    );
    let clients = env("EVERSHARD_BENCH_CLIENTS", 64).min(aggregates).max(1);
    let seed = env("EVERSHARD_BENCH_SEED", 42);
    let Some(tansu) = kafka_support::broker_tool("kafka bench") else {
        return;
    };
    let mut broker = kafka_support::Broker::start(&tansu);
    broker.index_headers();
    let base = std::env::var_os("EVERSHARD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(base).unwrap();
    let dir = tmp.path().join("evershard");
    println!(
        "evershard kafka bench: {events_target} events, then {live_commands} live commands at full \
         speed and {live_commands} at {paced_rate}/s; {aggregates} aggregates, {clients} clients, \
         seed {seed}; tansu at {} (sqlite, {})",
        broker.bootstrap(),
        broker.dir.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (catch_up_rate, caught_up_position) = rt.block_on(async {
        let engine = Engine::builder(&dir)
            .register::<ProductStock>()
            .durability(Durability::Durable)
            .shards(8)
            .active_per_shard_max(aggregates as usize)
            .open()
            .await
            .expect("open engine");

        // 1. Fill, no publisher.
        let t = Instant::now();
        let (commands, events) = drive(
            &engine,
            aggregates,
            clients,
            seed,
            None,
            Arc::new(move |_, e| e >= events_target),
        )
        .await;
        let fill = t.elapsed().as_secs_f64();
        let last = engine.journal().durable_position();
        assert!(engine.wait_indexed(last, Duration::from_secs(600)).await);
        println!(
            "fill (durable, no publisher): {commands} commands, {events} events in {fill:.1} s \
             ({:.0} commands/s)",
            commands as f64 / fill
        );

        // 2. Catch-up.
        let t = Instant::now();
        let publisher = engine
            .kafka_publisher(config(&broker.bootstrap()))
            .await
            .unwrap();
        let setup = t.elapsed();
        let t = Instant::now();
        caught_up(&publisher, "catch-up").await;
        let catch_up = t.elapsed().as_secs_f64();
        let published = publisher.status().unwrap().published;
        assert_eq!(published, events, "the publisher published every event");
        let catch_up_rate = published as f64 / catch_up;
        println!(
            "publisher catch-up: {published} events in {catch_up:.2} s = {catch_up_rate:.0} \
             events/s (after {:.2} s of topic setup; includes recovery and the idempotent \
             producer's start)",
            setup.as_secs_f64()
        );
        drop(publisher.take_latencies()); // catch-up samples measure the backlog, not latency

        // 3. Live, full speed, then paced.
        let t = Instant::now();
        let (c, _) = drive(
            &engine,
            aggregates,
            clients,
            seed ^ 1,
            None,
            Arc::new(move |c, _| c >= live_commands),
        )
        .await;
        let live = t.elapsed().as_secs_f64();
        caught_up(&publisher, "live").await;
        println!(
            "live, full speed: {c} commands in {live:.2} s ({:.0} commands/s) with the publisher \
             running; commit-to-ack {}",
            c as f64 / live,
            percentiles(publisher.take_latencies())
        );
        let paced_clients = clients.min(paced_rate);
        let pace = Duration::from_secs_f64(paced_clients as f64 / paced_rate as f64);
        let t = Instant::now();
        let (c, _) = drive(
            &engine,
            aggregates,
            paced_clients,
            seed ^ 2,
            Some(pace),
            Arc::new(move |c, _| c >= live_commands),
        )
        .await;
        let paced = t.elapsed().as_secs_f64();
        caught_up(&publisher, "paced").await;
        println!(
            "live, paced: {c} commands in {paced:.2} s ({:.0} commands/s); commit-to-ack {}",
            c as f64 / paced,
            percentiles(publisher.take_latencies())
        );
        let status = publisher.status().unwrap();
        assert!(status.anomalies.is_empty(), "{status:#?}");
        println!(
            "publisher: {} published, failed rounds {}, lag {}",
            status.published,
            status.failed_rounds,
            status.lag()
        );
        publisher.stop().await;
        engine.shutdown().await.unwrap();
        (catch_up_rate, last)
    });

    // 4. The ceiling: the catch-up's messages, on a fresh broker.
    let (topics, messages) = {
        let journal = Journal::open_read_only(&dir).unwrap();
        let mut catalog = TopicCatalog::new();
        catalog.register::<ProductStock>();
        let log = TopicLog::read_only(&journal, catalog).unwrap();
        let (mut topics, mut out) = (Vec::new(), Vec::new());
        for info in log.topics().unwrap() {
            if info.name == evershard::DLQ_TOPIC {
                continue;
            }
            topics.push((info.name.clone(), info.partitions));
            for p in 0..info.partitions {
                out.extend(
                    log.read(&info.name, p, 0, usize::MAX)
                        .unwrap()
                        .into_iter()
                        .filter(|m| m.global_position <= caught_up_position),
                );
            }
        }
        (topics, out)
    };
    drop(broker);
    let mut broker = kafka_support::Broker::start(&tansu);
    broker.index_headers();
    let (n, elapsed) = rt.block_on(ceiling(&config(&broker.bootstrap()), &topics, &messages));
    let ceiling_rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "ceiling (a fresh broker; same producer config, the catch-up's records, produced \
         directly): {n} messages in {:.2} s = {ceiling_rate:.0} messages/s",
        elapsed.as_secs_f64()
    );
    println!(
        "ratio publisher catch-up / ceiling: {:.2}",
        catch_up_rate / ceiling_rate
    );
    drop(broker);
}
