//! The cost of encryption at rest (docs/security.md), in one run, on the same disk
//! (a bench binary; `harness = false`):
//!
//! ```text
//! cargo bench --bench encryption
//! EVERSHARD_BENCH_COMMANDS=40000 EVERSHARD_BENCH_ROUNDS=7 cargo bench --bench encryption
//! ```
//!
//! Instruction counts of the replay alone, one store at a time (stable where rates are not;
//! the fill runs too but is not collected):
//!
//! ```text
//! cargo bench --bench encryption --no-run   # prints the binary's path
//! EVERSHARD_BENCH_REPLAY_ONLY=sealed EVERSHARD_BENCH_REPLAY_EVENTS=2000 valgrind --tool=callgrind \
//!     --toggle-collect='evershard_engine::recovery::load*' target/release/deps/encryption-HASH
//! ```
//!
//! 1. **Durable command rate** (ack after flush + fdatasync): ProductStock commands from its
//!    `Workload` generator, `CLIENTS` concurrent clients over `AGGREGATES` aggregates, with
//!    ProductStock declared sensitive (every payload and snapshot sealed, one data key per
//!    aggregate) and not (plain), alternating off/on for `EVERSHARD_BENCH_ROUNDS` rounds
//!    (default 5) on fresh stores so that disk noise hits both. Every round is printed; the
//!    figure is the median over rounds of each round's encrypted/plain ratio (a round's two
//!    runs are seconds apart, so a slow spell of the disk or the machine hits both), with
//!    the median rates beside it.
//! 2. **Replay rate**: one aggregate of `EVERSHARD_BENCH_REPLAY_EVENTS` events, loaded by full
//!    replay (`repository::load` without snapshots), sealed (AES-256-GCM, the AEAD of new
//!    data keys) and plain, alternating; median of 15 loads, and the median of the 15
//!    paired ratios. Also printed: what opening costs per record (the sealed store read as
//!    stored vs opened, same loop). `EVERSHARD_BENCH_REPLAY_ONLY=plain|sealed` fills and
//!    replays that store only (for callgrind, above).
//!
//! Target: encrypted rates at least 85% of the plain ones.

use evershard::aggregates::product_stock::ProductStock;
use evershard::engine::crypto::{FileKeyProvider, KeyProvider};
use evershard::engine::{repository, Durability, Engine, Journal, StreamId};
use evershard::model::{Aggregate, DecideContext, DemoRng, Workload};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: u64 = 64;
const AGGREGATES: u64 = 1_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn engine(dir: &Path, keys: &Path, sensitive: bool, durability: Durability) -> Engine {
    let provider: Arc<dyn KeyProvider> = Arc::new(FileKeyProvider::open(keys).unwrap());
    Engine::builder(dir)
        .register::<ProductStock>()
        .sensitive::<ProductStock>(sensitive)
        .key_provider(provider)
        .durability(durability)
        .shards(8)
        .active_per_shard_max(AGGREGATES as usize)
        .topic_indexer(false)
        .open()
        .await
        .expect("open engine")
}

/// Accepted commands per second, durable.
async fn command_rate(dir: &Path, keys: &Path, sensitive: bool, commands: u64) -> f64 {
    let engine = engine(dir, keys, sensitive, Durability::Durable).await;
    let per_client = commands / CLIENTS;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = DemoRng::new(0xe4c ^ client);
            let ids: Vec<String> = (client..AGGREGATES)
                .step_by(CLIENTS as usize)
                .map(|i| format!("sku-{i}"))
                .collect();
            let mut mirrors = vec![<ProductStock as Aggregate>::State::default(); ids.len()];
            let mut accepted = 0u64;
            for n in 0..per_client {
                let k = (n as usize) % ids.len();
                let ctx = DecideContext::new(ids[k].clone(), chrono::Utc::now());
                let command = ProductStock::sample_command(&mirrors[k], &ctx, &mut rng);
                match engine.execute::<ProductStock>(&ids[k], command).await {
                    Ok(committed) => {
                        accepted += 1;
                        for e in &committed {
                            ProductStock::apply(&mut mirrors[k], &e.payload);
                        }
                    }
                    Err(evershard::engine::CommandError::Rejected(_)) => {}
                    Err(e) => panic!("command failed: {e}"),
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let elapsed = start.elapsed();
    if sensitive {
        let stream = StreamId::new(ProductStock::TYPE, "sku-0");
        let record = engine
            .journal()
            .read_stream_sealed(&stream, 1, 1)
            .next()
            .unwrap()
            .unwrap();
        assert!(
            record.at_rest.is_encrypted(),
            "the sensitive run stores sealed"
        );
    }
    engine.shutdown().await.unwrap();
    accepted as f64 / elapsed.as_secs_f64()
}

/// Writes one aggregate of `events` events; returns its final state.
async fn fill_one(
    dir: &Path,
    keys: &Path,
    sensitive: bool,
    events: u64,
) -> <ProductStock as Aggregate>::State {
    let engine = engine(
        dir,
        keys,
        sensitive,
        Durability::Buffered {
            flush_every_ms: 200,
        },
    )
    .await;
    let id = "sku-replay";
    let mut rng = DemoRng::new(7);
    let mut mirror = <ProductStock as Aggregate>::State::default();
    let mut version = 0;
    while version < events {
        let ctx = DecideContext::new(id, chrono::Utc::now());
        let cmd = ProductStock::sample_command(&mirror, &ctx, &mut rng);
        if let Ok(committed) = engine.execute::<ProductStock>(id, cmd).await {
            for e in &committed {
                ProductStock::apply(&mut mirror, &e.payload);
                version = e.sequence;
            }
        }
    }
    engine.shutdown().await.unwrap();
    mirror
}

/// Full replays (`repository::load` without snapshots) of the plain and the sealed store,
/// alternating so that the machine's load hits both alike: events per second of each, the
/// median of `loads` loads.
fn replay_rates(
    (plain, plain_state): (&Path, &<ProductStock as Aggregate>::State),
    (sealed, sealed_state): (&Path, &<ProductStock as Aggregate>::State),
    keys: &Path,
    loads: usize,
) -> (f64, f64) {
    let stream = StreamId::new(ProductStock::TYPE, "sku-replay");
    let open = |dir: &Path| {
        let journal = Journal::open_read_only(dir).unwrap();
        journal.set_key_provider(Arc::new(FileKeyProvider::open(keys).unwrap()));
        journal
    };
    let (plain, sealed) = (open(plain), open(sealed));
    // New data keys are AES-256-GCM keys: key id 16 + nonce 12 + tag 16 around each payload
    // (XChaCha20-Poly1305, the first format, adds 56). Checked so that the figures below are
    // never silently those of the old algorithm.
    let first = |opened: bool| {
        let mut records = if opened {
            sealed.read_stream(&stream, 1, 1)
        } else {
            sealed.read_stream_sealed(&stream, 1, 1)
        };
        records.next().unwrap().unwrap().payload.len()
    };
    let overhead = first(false) - first(true);
    assert_eq!(
        overhead, 44,
        "the sealed store's payloads are AES-256-GCM's"
    );
    println!("sealed payloads: AES-256-GCM, {overhead} bytes per record (key id, nonce, tag)");
    let load = |journal: &Journal, expected: &<ProductStock as Aggregate>::State| {
        let t = Instant::now();
        let loaded = repository::load::<ProductStock>(journal, &stream, u64::MAX, false).unwrap();
        assert_eq!(&loaded.state, expected, "replayed state differs");
        t.elapsed()
    };
    let (mut p, mut s): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for _ in 0..loads {
        p.push(load(&plain, plain_state));
        s.push(load(&sealed, sealed_state));
    }
    let ratios: Vec<f64> = p
        .iter()
        .zip(&s)
        .map(|(p, s)| p.as_secs_f64() / s.as_secs_f64())
        .collect();
    println!(
        "replay, median of {loads} paired ratios (plain time / encrypted time): {:.1}%",
        100.0 * median_f64(ratios)
    );
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    // The opening alone: the sealed store's records read as stored vs opened, same loop.
    let read = |opened: bool| {
        let t = Instant::now();
        let records = if opened {
            sealed.read_stream(&stream, 1, u64::MAX)
        } else {
            sealed.read_stream_sealed(&stream, 1, u64::MAX)
        };
        let mut n = 0;
        for record in records {
            std::hint::black_box(record.unwrap());
            n += 1;
        }
        (t.elapsed(), n)
    };
    let (mut as_stored, mut as_opened) = (Vec::new(), Vec::new());
    for _ in 0..loads {
        as_stored.push(read(false));
        as_opened.push(read(true));
    }
    let n = as_opened[0].1 as f64;
    let per_record = |v: Vec<(Duration, usize)>| {
        let mut d: Vec<Duration> = v.into_iter().map(|(d, _)| d).collect();
        d.sort();
        d[d.len() / 2].as_nanos() as f64 / n
    };
    let (stored_ns, opened_ns) = (per_record(as_stored), per_record(as_opened));
    println!(
        "reading the sealed store: {stored_ns:.0} ns/record as stored, {opened_ns:.0} ns/record \
         opened: opening costs {:.0} ns/record",
        opened_ns - stored_ns
    );
    let version = plain.head(&stream).unwrap().sequence as f64;
    (
        version / median(p).as_secs_f64(),
        sealed.head(&stream).unwrap().sequence as f64 / median(s).as_secs_f64(),
    )
}

/// The median (the upper one of an even count).
fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `EVERSHARD_BENCH_REPLAY_ONLY=plain|sealed`: fills that store alone and replays it
/// `loads` times, for an instruction count of the replay (module docs).
fn replay_only(which: &str, keys: &Path, dir: &Path, rt: &tokio::runtime::Runtime, events: u64) {
    let sensitive = match which {
        "plain" => false,
        "sealed" => true,
        other => panic!("EVERSHARD_BENCH_REPLAY_ONLY={other}: plain or sealed"),
    };
    let store = dir.join("replay-only");
    let state = rt.block_on(fill_one(&store, keys, sensitive, events));
    let journal = Journal::open_read_only(&store).unwrap();
    journal.set_key_provider(Arc::new(FileKeyProvider::open(keys).unwrap()));
    let stream = StreamId::new(ProductStock::TYPE, "sku-replay");
    let loads = 3;
    for _ in 0..loads {
        let loaded = repository::load::<ProductStock>(&journal, &stream, u64::MAX, false).unwrap();
        assert_eq!(loaded.state, state, "replayed state differs");
    }
    let version = journal.head(&stream).unwrap().sequence;
    println!("replayed the {which} store ({version} events) {loads} times");
}

fn main() {
    // `cargo test --benches` runs this binary with `--bench`-less args: keep that quick.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let commands = env("EVERSHARD_BENCH_COMMANDS", if smoke { 640 } else { 20_000 });
    let rounds = env("EVERSHARD_BENCH_ROUNDS", if smoke { 1 } else { 5 }).max(1);
    let replay_events = env(
        "EVERSHARD_BENCH_REPLAY_EVENTS",
        if smoke { 500 } else { 10_000 },
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("master.keys");
    FileKeyProvider::append_new_key(&keys, "bench").unwrap();
    if let Ok(which) = std::env::var("EVERSHARD_BENCH_REPLAY_ONLY") {
        replay_only(&which, &keys, dir.path(), &rt, replay_events);
        return;
    }

    println!(
        "encryption at rest: {commands} durable ProductStock commands, {CLIENTS} clients, \
         {AGGREGATES} aggregates, {rounds} rounds (off, on alternating)"
    );
    let (mut plain, mut sealed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut rates = [0f64; 2];
        for (slot, sensitive) in [false, true].into_iter().enumerate() {
            let store = dir.path().join(format!("cmd-{round}-{sensitive}"));
            rates[slot] = rt.block_on(command_rate(&store, &keys, sensitive, commands));
            let _ = std::fs::remove_dir_all(&store);
        }
        let [p, s] = rates;
        println!(
            "  round {round}: plain {p:.0} commands/s, encrypted {s:.0} commands/s: {:.1}%",
            100.0 * s / p
        );
        plain.push(p);
        sealed.push(s);
        ratios.push(s / p);
    }
    println!(
        "durable commands, median of {rounds} rounds: plain {:.0}/s, encrypted {:.0}/s; \
         median ratio {:.1}% (target >= 85%)",
        median_f64(plain),
        median_f64(sealed),
        100.0 * median_f64(ratios)
    );
    let (plain_dir, sealed_dir) = (
        dir.path().join("replay-plain"),
        dir.path().join("replay-sealed"),
    );
    let plain_state = rt.block_on(fill_one(&plain_dir, &keys, false, replay_events));
    let sealed_state = rt.block_on(fill_one(&sealed_dir, &keys, true, replay_events));
    let loads = if smoke { 3 } else { 15 };
    let (replay_plain, replay_sealed) = replay_rates(
        (&plain_dir, &plain_state),
        (&sealed_dir, &sealed_state),
        &keys,
        loads,
    );
    println!(
        "full replay of {replay_events} events: plain {replay_plain:.0} events/s, encrypted \
         {replay_sealed:.0} events/s: {:.1}% (target >= 85%)",
        100.0 * replay_sealed / replay_plain
    );
}
