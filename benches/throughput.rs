//! Headline throughput and recovery figures (a bench binary; `harness = false`).
//!
//! ```text
//! cargo bench --bench throughput                       # defaults below
//! EVERSHARD_BENCH_COMMANDS=200000 cargo bench --bench throughput
//! ```
//!
//! In one run, on the same disk:
//! 1. evershard, **durable** (ack after flush + fdatasync): ProductStock commands from the
//!    `Workload` generator over `AGGREGATES` aggregates and `CLIENTS` concurrent clients
//!    (each client owns a slice of the aggregates and has one command in flight).
//! 2. the ceiling, sled alone: the same number of records of the same average size, inserted in
//!    batches of 1,000 with `flush()` after each batch.
//! 3. the ceiling, a plain file: the same records appended with one `fdatasync` per 1,000.
//! 4. recovery of one aggregate with `EVERSHARD_BENCH_RECOVERY_EVENTS` (default 10,000)
//!    events: the p50 of `EVERSHARD_BENCH_RECOVERY_RUNS` (default 31) loads from the newest
//!    snapshot + tail (target < 1 ms), and of as many full replays, printed as the replay rate
//!    (target >= 1,000,000 events/s). `EVERSHARD_BENCH_ONLY=recovery` runs this section alone.
//! 5. topics: the workload of (1) on two engines open side by side on fresh stores, without
//!    and with the indexer and a consumer group live (reading and committing as it goes),
//!    taking turns in slices of `EVERSHARD_BENCH_SLICE_COMMANDS` (default 25,000) commands,
//!    `EVERSHARD_BENCH_PAIRS` (default 5) times the commands of (1) each; the ratio of the
//!    two engines' rates is the figure (target >= 0.9; see `paired_ratio`). Then a store of
//!    `EVERSHARD_BENCH_CATCHUP_EVENTS` (default 1,000,000) events is indexed and a consumer
//!    reads it from the beginning: the indexer's rate and the consumer's catch-up rate
//!    (rendered messages/s; target >= 500,000).
//! 6. idempotency keys: as the two engines of 5, with a fresh key on every command
//!    (`execute_with`) in place of topics (target >= 0.85; `EVERSHARD_BENCH_ONLY=idempotency`
//!    runs this section alone);
//! 7. timers: how fast due timers fire (ProductStock reservations expired by the scheduler
//!    through the command path, `EVERSHARD_BENCH_FIRED`, default 20,000), and the disk and
//!    memory cost of `EVERSHARD_BENCH_TIMERS` (default 1,000,000) pending timers and of as
//!    many idempotency keys, written through `JournalWriter` (the keyspaces alone, no events).
//!    Memory is the resident set (`VmRSS`) of a fresh process (this binary run again) before
//!    and after opening an engine on the store and running a timer pass and a sweep: the
//!    scheduler reads timers page by page. `EVERSHARD_BENCH_ONLY=keyspaces` runs this alone.
//!
//!    `EVERSHARD_BENCH_ONLY=catchup` runs this catch-up read alone;
//!    `EVERSHARD_BENCH_CATCHUP_STORE=DIR` keeps its filled store in DIR for later runs.
//! 8. `EVERSHARD_BENCH_ONLY=verify` (alone): how fast `verify` checks a store of
//!    `EVERSHARD_BENCH_VERIFY_EVENTS` (default 1,000,000) events (target >= 1,000,000 events/s).
//! 9. issue #13's goals, each printed with its target: the same commands through cqrs-es 0.5
//!    with an in-memory store (the peer), `EVERSHARD_BENCH_MANY_CLIENTS` (default 1,024)
//!    clients against the plain file, the p50/p99 latency of an open-loop load at half the
//!    rate of run 1, disk allocated per byte of event records, and
//!    `EVERSHARD_BENCH_MANY_AGGREGATES` (default 1,000,000) aggregates touched once each with
//!    passivation at the engine's defaults (rate ratio and resident set;
//!    `EVERSHARD_BENCH_ACTIVE_PER_SHARD_MAX` changes the active limit of every run,
//!    `EVERSHARD_BENCH_SLED_CACHE_MIB` sled's cache).
//!    `EVERSHARD_BENCH_ONLY=goals` runs run 1, the plain file and these alone.
//!
//! `EVERSHARD_BENCH_ONLY=writepath` (alone): run 1's workload on the sled layout and on the
//! segment log (`WritePath::Log`), two engines taking turns as in 5, each with its CPU per
//! command; every other section follows `EVERSHARD_WRITE_PATH` (default:
//! the segment log).
//!
//! For profiling the command path: `EVERSHARD_BENCH_ONLY=engine` stops after (1);
//! `EVERSHARD_BENCH_KEYED=1` gives (1) a fresh idempotency key per command;
//! `EVERSHARD_BENCH_TOPICS=1` gives (1) the topic indexer and a live consumer group.
//!
//! Note: this bench uses sled directly for the baseline only; the product touches sled solely
//! in `engine::journal`.

use evershard::aggregates::product_stock::ProductStock;
use evershard::aggregates::product_stock::{ReceiveStock, Reserve, RESERVATION_TTL_MS};
use evershard::engine::{keyspace_writes, AppendRequest, JournalConfig, ManualClock};
use evershard::engine::{
    repository, Durability, Engine, Journal, JournalWriter, SnapshotPolicy, StreamId, WritePath,
};
use evershard::model::{Aggregate, DecideContext, DemoRng, Metadata, Workload};
use std::io::Write;
use std::sync::Arc;

#[path = "common/cpu.rs"]
mod cpu;
use cpu::process_cpu;

// The allocator the `evershard` binary uses and the README recommends to embedders (the
// default `mimalloc` feature); `--no-default-features --features cli` measures glibc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which allocator this bench binary runs with.
const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "the system's (glibc malloc)"
};
#[path = "throughput_goals/cqrs_peer.rs"]
mod cqrs_peer;
#[path = "throughput_goals/latency.rs"]
mod latency;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `EVERSHARD_BENCH_DURABILITY=buffered` measures the buffered mode instead (the CPU ceiling
/// of the command path, without waiting for the disk).
fn durability() -> Durability {
    match std::env::var("EVERSHARD_BENCH_DURABILITY").as_deref() {
        Ok("buffered") => Durability::Buffered {
            flush_every_ms: 500,
        },
        _ => Durability::Durable,
    }
}

/// The engine's default active limit, or `EVERSHARD_BENCH_ACTIVE_PER_SHARD_MAX`.
fn active_per_shard_max() -> usize {
    let default = evershard::engine::ShardingConfig::default().active_per_shard_max;
    env("EVERSHARD_BENCH_ACTIVE_PER_SHARD_MAX", default as u64) as usize
}

/// The journal's default sled cache, or `EVERSHARD_BENCH_SLED_CACHE_MIB`.
fn sled_cache_bytes() -> u64 {
    let default_mib = JournalConfig::default().cache_bytes >> 20;
    env("EVERSHARD_BENCH_SLED_CACHE_MIB", default_mib) << 20
}

/// The workload of run 1, which the goals repeat in other shapes.
#[derive(Clone, Copy)]
struct Shape {
    aggregates: u64,
    commands: u64,
    clients: u64,
    seed: u64,
    smoke: bool,
}

/// What a paired run turns on in its second half (section 5 and 6's ratios).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feature {
    /// The topic indexer and a live consumer group.
    Topics,
    /// A fresh idempotency key on every command.
    Keys,
    /// The store on the segment log (`WritePath::Log`) instead of the sled layout.
    Log,
}

/// The figures of a paired section.
struct Paired {
    /// The rate with the feature over the rate without.
    ratio: f64,
    /// The rate with the feature.
    rate: f64,
    /// CPU per command without the feature over CPU per command with it: what the feature
    /// costs in CPU alone, which moves less from run to run on this machine than the rates
    /// (a rate also moves with the disk's latency and the scheduler).
    cpu_ratio: f64,
}

/// The command rate with `feature` on over the rate without, from two engines open side by
/// side on fresh stores that take turns: `rounds` x `shape.commands` commands each, in slices
/// of `slice_commands`, the engine that goes first alternating from round to round. Each slice
/// starts on a quiet disk (`quiesce_disk`) and runs alone.
///
/// Why slices and not one run per engine: a run's rate moves with the disk's sync latency and
/// the other core's load from second to second (two runs of the same build, a minute apart,
/// gave 44,000 and 79,000 commands/s on 2026-11-27). Runs of two seconds, one after the other,
/// each met a different machine: pairs of them gave ratios from 0.61 to 1.04 for one build.
/// Slices a fraction of a second long, interleaved, meet the same machine, and every slice of
/// one engine has a slice of the other next to it. The figure is the ratio of the two
/// engines' total rates (commands over the time of their slices); the spread of the slices'
/// own ratios is printed beside it.
///
/// A slice with topics ends when the live consumer group has committed every event the slice
/// wrote (`DurableEngine::drain`): the indexer's and the consumer's work is charged to the
/// engine that caused it, not left running into the other engine's slice.
fn paired_ratio(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    shape: &Shape,
    feature: Feature,
    rounds: usize,
    slice_commands: u64,
) -> Paired {
    let per_engine = shape.commands * rounds as u64;
    let slice_commands = slice_commands.clamp(shape.clients, per_engine.max(shape.clients));
    let slices = per_engine.div_ceil(slice_commands);
    let extras = |on: bool| Extras {
        topics: on && feature == Feature::Topics,
        keyed: on && feature == Feature::Keys,
        write_path: match (feature, on) {
            (Feature::Log, true) => WritePath::Log,
            (Feature::Log, false) => WritePath::Sled,
            _ => WritePath::from_env(),
        },
    };
    let mut engines = [false, true].map(|on| {
        rt.block_on(DurableEngine::open(
            &dir.join(format!("paired-{on}")),
            shape,
            per_engine,
            extras(on),
        ))
    });
    // Per engine: commands, seconds, CPU seconds, accepted, accepted with no events.
    let mut commands = [0u64; 2];
    let mut accepted = [0u64; 2];
    let mut secs = [0.0f64; 2];
    let mut cpu_secs = [0.0f64; 2];
    let mut empty = [0u64; 2];
    let mut slice_ratios = Vec::with_capacity(slices as usize);
    let mut done = 0;
    for slice in 0..slices {
        let size = slice_commands.min(per_engine - done);
        done += size;
        let order = if slice % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut rates = [0.0f64; 2];
        for i in order {
            quiesce_disk();
            let cpu_before = process_cpu();
            let ran = rt.block_on(engines[i].slice(size));
            cpu_secs[i] += process_cpu().saturating_sub(cpu_before).as_secs_f64();
            commands[i] += ran.commands;
            secs[i] += ran.elapsed.as_secs_f64();
            accepted[i] += ran.accepted;
            empty[i] += ran.accepted_empty;
            rates[i] = ran.commands as f64 / ran.elapsed.as_secs_f64();
        }
        slice_ratios.push(rates[1] / rates[0]);
    }
    for engine in engines {
        let store = engine.dir.clone();
        rt.block_on(engine.finish());
        let _ = std::fs::remove_dir_all(&store);
    }
    let rate = |i: usize| commands[i] as f64 / secs[i];
    let cpu_us = |i: usize| cpu_secs[i] * 1e6 / commands[i].max(1) as f64;
    slice_ratios.sort_by(f64::total_cmp);
    let at = |q: usize| slice_ratios[(slice_ratios.len() - 1) * q / 4];
    // With keys, every accepted command that decided nothing is a durable append of its
    // record, which the engine without answers from memory: were an append the whole cost
    // of a command, the ratio would be the appends without over the appends with.
    let appends = |i: usize| match feature {
        Feature::Keys if i == 1 => accepted[i],
        _ => accepted[i] - empty[i],
    };
    let empty = match feature {
        Feature::Keys => format!(
            ", {} accepted with no events; appends without over with: {:.2}",
            empty[1],
            appends(0) as f64 / appends(1).max(1) as f64
        ),
        _ => String::new(),
    };
    println!(
        "  {slices} slices of {slice_commands} commands each: without {:.0}/s ({:.1} µs CPU/command), with {:.0}/s ({:.1} µs CPU/command{empty})",
        rate(0),
        cpu_us(0),
        rate(1),
        cpu_us(1),
    );
    println!(
        "  the slices' own ratios: min {:.2}, quartiles {:.2} {:.2} {:.2}, max {:.2}",
        at(0),
        at(1),
        at(2),
        at(3),
        at(4)
    );
    Paired {
        ratio: rate(1) / rate(0),
        rate: rate(1),
        cpu_ratio: cpu_us(0) / cpu_us(1),
    }
}

/// Waits until the kernel has written back every dirty page (`sync`), so that a run does not
/// share the disk with the writeback of what an earlier run or section wrote: in the full
/// bench the pairs follow sections that fill 1,000,000 timers and keys (~770 MiB of sled
/// files), whose writeback slowed the runs of the pairs that write more (keys, topics) by
/// more than the others.
fn quiesce_disk() {
    let _ = std::process::Command::new("sync").status();
}

/// Client `client`'s aggregates (every `clients`-th of `aggregates`) and its generator.
fn client_slice(client: u64, aggregates: u64, clients: u64, seed: u64) -> (Vec<String>, DemoRng) {
    let ids = (client..aggregates)
        .step_by(clients as usize)
        .map(|i| format!("sku-{i}"))
        .collect();
    (ids, DemoRng::new(seed ^ client.wrapping_mul(0x9E37_79B9)))
}

struct Run {
    commands: u64,
    accepted: u64,
    /// Accepted commands that decided no events: without a key they touch no disk; with one,
    /// each is an append of its record that waits for a sync (docs/runtime-semantics.md).
    accepted_empty: u64,
    events: u64,
    elapsed: Duration,
    record_bytes_avg: u64,
    /// Resident set grown from before the engine opened to the end of the run.
    rss_growth_bytes: u64,
    /// The store's files after shutdown: apparent size, and blocks allocated.
    disk_bytes: u64,
    disk_allocated_bytes: u64,
}

/// What a durable run adds to the plain workload, and where its store keeps its events.
#[derive(Clone, Copy)]
struct Extras {
    /// The topic indexer and a live consumer group.
    topics: bool,
    /// A fresh idempotency key on every command.
    keyed: bool,
    write_path: WritePath,
}

impl Extras {
    fn plain() -> Extras {
        Extras {
            topics: false,
            keyed: false,
            write_path: WritePath::from_env(),
        }
    }
}

async fn evershard_durable(
    dir: &std::path::Path,
    aggregates: u64,
    commands: u64,
    clients: u64,
    seed: u64,
    extras: Extras,
) -> Run {
    let shape = Shape {
        aggregates,
        commands,
        clients,
        seed,
        smoke: false,
    };
    let mut engine = DurableEngine::open(dir, &shape, commands, extras).await;
    let ran = engine.slice(commands).await;
    engine.finish_with(ran).await
}

/// An engine of the durable workload, with its clients' generators and mirrors kept between
/// slices (`paired_ratio` runs two of them in turns; `evershard_durable` one in one slice).
struct DurableEngine {
    engine: Engine,
    dir: std::path::PathBuf,
    clients: Vec<Client>,
    keyed: bool,
    /// The live consumer group (with topics): its stop flag and its task.
    live: Option<(
        Arc<std::sync::atomic::AtomicBool>,
        tokio::task::JoinHandle<u64>,
    )>,
    rss_before: u64,
}

/// One client: its aggregates (every `clients`-th), its generator, a mirror of each state
/// (kept by applying the events the engine returns, so the generator proposes plausible
/// commands), and how many commands it has sent.
struct Client {
    number: u64,
    ids: Vec<String>,
    rng: DemoRng,
    mirrors: Vec<<ProductStock as Aggregate>::State>,
    sent: u64,
}

/// What a slice of commands did.
#[derive(Default)]
struct Slice {
    commands: u64,
    accepted: u64,
    accepted_empty: u64,
    events: u64,
    elapsed: Duration,
}

impl DurableEngine {
    /// Opens the engine on `dir`, for `commands` commands in all (spread over the clients).
    async fn open(dir: &std::path::Path, shape: &Shape, commands: u64, extras: Extras) -> Self {
        let Extras {
            topics,
            keyed,
            write_path,
        } = extras;
        let rss_before = rss_bytes();
        let engine = Engine::builder(dir)
            .register::<ProductStock>()
            .durability(durability())
            .write_path(write_path)
            .shards(8)
            // Every aggregate stays active up to the engine's default limit; past it (the
            // 1,000,000-aggregate run) passivation works as configured by default.
            .active_per_shard_max((shape.aggregates as usize).min(active_per_shard_max()))
            .cache_bytes(sled_cache_bytes())
            .topic_indexer(topics)
            .open()
            .await
            .expect("open engine");
        // With topics: a consumer group reads business.inventory live and commits per batch.
        let live = topics.then(|| {
            let mut consumer = engine.consumer("bench", "business.inventory").unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stopped = stop.clone();
            let task = tokio::spawn(async move {
                let mut read = 0u64;
                while !stopped.load(std::sync::atomic::Ordering::Acquire) {
                    let batch = consumer
                        .poll(4096, Duration::from_millis(50))
                        .await
                        .unwrap();
                    if !batch.is_empty() {
                        read += batch.len() as u64;
                        consumer.commit().await.unwrap();
                    }
                }
                read
            });
            (stop, task)
        });
        let per_client = commands / shape.clients;
        let clients = (0..shape.clients)
            .map(|number| {
                let (ids, rng) = client_slice(number, shape.aggregates, shape.clients, shape.seed);
                // A client that touches each of its aggregates once (the 1,000,000-aggregate
                // run) keeps no mirrors: its own bookkeeping would otherwise be counted as the
                // engine's memory.
                let mirrors = match per_client > ids.len() as u64 {
                    true => vec![<ProductStock as Aggregate>::State::default(); ids.len()],
                    false => Vec::new(),
                };
                Client {
                    number,
                    ids,
                    rng,
                    mirrors,
                    sent: 0,
                }
            })
            .collect();
        DurableEngine {
            engine,
            dir: dir.to_path_buf(),
            clients,
            keyed,
            live,
            rss_before,
        }
    }

    /// Runs `commands` commands (spread over the clients, each with one in flight) and, with
    /// topics, waits until the live consumer group has committed what they wrote.
    async fn slice(&mut self, commands: u64) -> Slice {
        let per_client = commands / self.clients.len() as u64;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for mut client in std::mem::take(&mut self.clients) {
            let engine = self.engine.clone();
            let keyed = self.keyed;
            tasks.push(tokio::spawn(async move {
                let fresh = <ProductStock as Aggregate>::State::default();
                let mut ran = Slice::default();
                for _ in 0..per_client {
                    let n = client.sent;
                    client.sent += 1;
                    let k = (n as usize) % client.ids.len();
                    let ctx = DecideContext::new(client.ids[k].clone(), chrono::Utc::now());
                    let state = client.mirrors.get(k).unwrap_or(&fresh);
                    let command = ProductStock::sample_command(state, &ctx, &mut client.rng);
                    let mut metadata = Metadata::new("bench");
                    if keyed {
                        // A fresh key per command: every command records its result.
                        metadata = metadata.idempotency_key(Uuid::from_u128(
                            (u128::from(client.number) << 64) | u128::from(n),
                        ));
                    }
                    ran.commands += 1;
                    match engine
                        .execute_with::<ProductStock>(&client.ids[k], command, metadata)
                        .await
                    {
                        Ok(committed) => {
                            ran.accepted += 1;
                            ran.accepted_empty += u64::from(committed.is_empty());
                            ran.events += committed.len() as u64;
                            if let Some(mirror) = client.mirrors.get_mut(k) {
                                for e in &committed {
                                    ProductStock::apply(mirror, &e.payload);
                                }
                            }
                        }
                        Err(evershard::engine::CommandError::Rejected(_)) => {}
                        Err(e) => panic!("command failed: {e}"),
                    }
                }
                (client, ran)
            }));
        }
        let mut total = Slice::default();
        for task in tasks {
            let (client, ran) = task.await.unwrap();
            self.clients.push(client);
            total.commands += ran.commands;
            total.accepted += ran.accepted;
            total.accepted_empty += ran.accepted_empty;
            total.events += ran.events;
        }
        if self.live.is_some() {
            self.drain().await;
        }
        total.elapsed = start.elapsed();
        total
    }

    /// Waits until the topic index covers every durable event and the live consumer group
    /// has committed all of it (bounded: a minute).
    async fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let end = self.engine.journal().durable_position();
        assert!(
            self.engine.wait_indexed(end, Duration::from_secs(60)).await,
            "the topic index did not reach position {end} within a minute"
        );
        loop {
            let lag = self
                .engine
                .consumer_lag("bench", "business.inventory")
                .unwrap()
                .total();
            if lag == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the live consumer group still lags {lag} messages after a minute"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops the live consumer group and shuts the engine down.
    async fn finish(self) {
        self.finish_with(Slice::default()).await;
    }

    /// Stops the live consumer group, shuts the engine down, and reports `ran` with the
    /// store's figures.
    async fn finish_with(self, ran: Slice) -> Run {
        if let Some((stop, task)) = self.live {
            stop.store(true, std::sync::atomic::Ordering::Release);
            let read = task.await.unwrap();
            println!("  live consumer group: {read} messages read");
        }
        let stats = self.engine.journal().stats().unwrap();
        let rss_growth_bytes = rss_bytes().saturating_sub(self.rss_before);
        self.engine.shutdown().await.unwrap();
        Run {
            commands: ran.commands,
            accepted: ran.accepted,
            accepted_empty: ran.accepted_empty,
            events: ran.events,
            elapsed: ran.elapsed,
            record_bytes_avg: stats.event_bytes / stats.events.max(1),
            rss_growth_bytes,
            disk_bytes: dir_bytes(&self.dir),
            disk_allocated_bytes: dir_allocated_bytes(&self.dir),
        }
    }
}

/// The journal alone (no actors, no domain logic): `clients` threads each appending one
/// event of `payload_bytes` at a time to their own streams, acknowledged under `durability()`.
fn journal_alone(
    dir: &std::path::Path,
    records: u64,
    payload_bytes: usize,
    clients: u64,
) -> Duration {
    use evershard::engine::{AppendRequest, NewEvent};
    let config = evershard::engine::JournalConfig {
        durability: durability(),
        ..Default::default()
    };
    let journal = JournalWriter::open(dir, config).unwrap();
    let per_client = records / clients;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..clients {
            let journal = journal.clone();
            scope.spawn(move || {
                let mut versions = [0u64; 16];
                for n in 0..per_client {
                    let k = (n % 16) as usize;
                    let stream = StreamId::new("Bench", format!("c{client}-{k}"));
                    let event = NewEvent {
                        event_id: uuid::Uuid::new_v4(),
                        event_type: "StockReserved".into(),
                        event_version: "1.0".into(),
                        timestamp: chrono::Utc::now(),
                        correlation_id: uuid::Uuid::new_v4(),
                        causation_id: None,
                        source: "bench".into(),
                        user_id: None,
                        session_id: None,
                        audit_context: None,
                        payload: vec![7u8; payload_bytes],
                    };
                    let committed = journal
                        .append_blocking(AppendRequest::new(stream, versions[k], vec![event]))
                        .unwrap();
                    versions[k] = committed.version;
                }
            });
        }
    });
    let elapsed = start.elapsed();
    journal.close().unwrap();
    elapsed
}

fn sled_ceiling(dir: &std::path::Path, records: u64, value_bytes: usize) -> Duration {
    let db = sled::Config::new().path(dir).open().unwrap();
    let value = vec![0xABu8; value_bytes];
    let start = Instant::now();
    let mut i = 0u64;
    while i < records {
        let mut batch = sled::Batch::default();
        for _ in 0..1000.min(records - i) {
            batch.insert(&i.to_be_bytes(), value.as_slice());
            i += 1;
        }
        db.apply_batch(batch).unwrap();
        db.flush().unwrap();
    }
    start.elapsed()
}

fn file_ceiling(dir: &std::path::Path, records: u64, record_bytes: usize) -> Duration {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("plain.log"))
        .unwrap();
    let record = vec![0xCDu8; record_bytes];
    let start = Instant::now();
    for i in 0..records {
        file.write_all(&record).unwrap();
        if (i + 1) % 1000 == 0 || i + 1 == records {
            file.sync_data().unwrap();
        }
    }
    start.elapsed()
}

/// Recovery figures of one aggregate (section 4): the p50 over `runs` loads of each kind.
struct RecoveryFigures {
    /// From the newest snapshot + the events after it.
    from_snapshot_p50: Duration,
    /// Every event folded from the first (`use_snapshots = false`).
    full_replay_p50: Duration,
    /// The snapshot the first kind started from.
    snapshot_at: Option<u64>,
    /// Events the snapshot load folded after its snapshot.
    tail_events: u64,
    /// The bytes a snapshot of the final state takes (a snapshot larger than the journal's
    /// value bound is not stored, and recovery starts from an older one).
    final_snapshot_bytes: usize,
}

/// Writes one ProductStock aggregate with `events` events through an engine (snapshots every
/// 100, as by default), then loads it read-only `runs` times from its snapshot + tail and
/// `runs` times by full replay, each load checked against the state the writer folded.
async fn recovery(dir: &std::path::Path, events: u64, runs: usize) -> RecoveryFigures {
    let engine = Engine::builder(dir)
        .register::<ProductStock>()
        .durability(Durability::Buffered {
            flush_every_ms: 200,
        })
        .snapshot_policy(SnapshotPolicy::default())
        .open()
        .await
        .unwrap();
    let id = "sku-recovery";
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
    drop(engine);
    let journal = Journal::open_read_only(dir).unwrap();
    let stream = StreamId::new(ProductStock::TYPE, id);
    let p50 = |use_snapshots: bool| {
        let mut times: Vec<Duration> = (0..runs.max(1))
            .map(|_| {
                let t = Instant::now();
                let loaded =
                    repository::load::<ProductStock>(&journal, &stream, u64::MAX, use_snapshots)
                        .unwrap();
                let elapsed = t.elapsed();
                assert_eq!(loaded.state, mirror, "recovered state differs");
                assert_eq!(loaded.version, version);
                elapsed
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let from_snapshot_p50 = p50(true);
    let full_replay_p50 = p50(false);
    let loaded = repository::load::<ProductStock>(&journal, &stream, u64::MAX, true).unwrap();
    RecoveryFigures {
        from_snapshot_p50,
        full_replay_p50,
        snapshot_at: loaded.from_snapshot,
        tail_events: loaded.events_replayed,
        final_snapshot_bytes: evershard_snapshots::SnapshotRecord::encode_state(
            ProductStock::STATE_SCHEMA_VERSION,
            version,
            &mirror,
        )
        .len(),
    }
}

/// Section 4, printed: the replay rate and the recovery p50 beside their targets (issue #13).
fn print_recovery(figures: &RecoveryFigures, events: u64, runs: usize) {
    let replay_rate = events as f64 / figures.full_replay_p50.as_secs_f64();
    let snapshot_ms = figures.from_snapshot_p50.as_secs_f64() * 1e3;
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "replay            : {replay_rate:>9.0} events/s  full replay of one aggregate with {events} events, p50 of {runs}: {:.3} ms; target >= 1,000,000 events/s: {}",
        figures.full_replay_p50.as_secs_f64() * 1e3,
        met(replay_rate >= 1e6),
    );
    println!(
        "recovery          : {snapshot_ms:>9.3} ms p50  from snapshot {:?} + {} tail events ({events} events, p50 of {runs}; a snapshot of the final state is {} bytes); target < 1 ms: {}",
        figures.snapshot_at,
        figures.tail_events,
        figures.final_snapshot_bytes,
        met(snapshot_ms < 1.0),
    );
}

/// The process's resident set in bytes (Linux `VmRSS`), 0 where unknown.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Like `dir_bytes`, but the blocks the files occupy (sparse regions not counted).
fn dir_allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_allocated_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn t0() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// Timers fired per second: `count` products each get a reservation through the engine
/// (durable, 64 clients), then the clock moves past every deadline and one pass fires them.
async fn timers_fired(dir: &std::path::Path, count: u64, clients: u64) -> (u64, Duration) {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder(dir)
        .register::<ProductStock>()
        .durability(durability())
        .clock(clock.clone())
        .timer_poll_ms(3_600_000)
        .active_per_shard_max(count as usize)
        .open()
        .await
        .expect("open engine");
    let mut tasks = Vec::new();
    for client in 0..clients {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in (client..count).step_by(clients as usize) {
                let id = format!("sku-{i}");
                engine
                    .execute::<ProductStock>(&id, ReceiveStock { quantity: 10 })
                    .await
                    .unwrap();
                let reserve = Reserve {
                    reservation_id: Uuid::from_u128(u128::from(i) + 1),
                    order_id: Uuid::from_u128(u128::from(i) + 1),
                    quantity: 1,
                };
                engine.execute::<ProductStock>(&id, reserve).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    clock.advance(chrono::Duration::milliseconds(RESERVATION_TTL_MS + 1));
    let start = Instant::now();
    let fired = engine.run_due_timers().await.unwrap() as u64;
    let elapsed = start.elapsed();
    assert_eq!(
        engine.journal().timers(None).count(),
        0,
        "every timer fired"
    );
    engine.shutdown().await.unwrap();
    (fired, elapsed)
}

/// Fills a fresh store with `count` entries of one keyspace through `JournalWriter` (buffered,
/// 1,000 appends in flight, no events); returns the store's size on disk before and after.
async fn fill_keyspace(dir: &std::path::Path, count: u64, timers: bool) -> (u64, u64) {
    let config = JournalConfig {
        durability: Durability::Buffered {
            flush_every_ms: 500,
        },
        ..JournalConfig::default()
    };
    let journal = JournalWriter::open(dir, config).expect("open journal");
    tokio::task::block_in_place(|| journal.sync()).unwrap();
    let empty = dir_bytes(dir);
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..count {
        let stream = StreamId::new("ProductStock", format!("sku-{i}"));
        let at = t0() + chrono::Duration::milliseconds(i as i64);
        let writes = if timers {
            keyspace_writes::timer(&stream, at + chrono::Duration::hours(1))
        } else {
            keyspace_writes::idempotency(&stream, &Uuid::from_u128(u128::from(i) + 1), at, 1, 1)
        };
        let mut request = AppendRequest::new(stream, 0, Vec::new());
        request.extra_writes = writes;
        let journal = journal.clone();
        in_flight.spawn(async move { journal.append(request).await.unwrap() });
        if in_flight.len() >= 1000 {
            in_flight.join_next().await;
        }
    }
    while in_flight.join_next().await.is_some() {}
    let j = journal.clone();
    tokio::task::spawn_blocking(move || j.close().unwrap())
        .await
        .unwrap();
    (empty, dir_bytes(dir))
}

/// The variable that makes the bench binary measure [`engine_memory`] of the store it names
/// and print it, instead of running the bench.
const MEMORY_CHILD_ENV: &str = "EVERSHARD_BENCH_MEMORY_OF";

/// [`engine_memory`] in a fresh process (this binary again, with [`MEMORY_CHILD_ENV`]): in
/// the bench's own process the allocator reused the pages the fill had freed, so the
/// difference said more about the fill than the engine (+65 MiB one run, +124 the next,
/// +0.0 once, for the same code).
fn engine_memory_in_child(dir: &std::path::Path) -> (u64, u64) {
    let out = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .env(MEMORY_CHILD_ENV, dir)
        .output()
        .expect("run the memory child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "memory child failed: {text}");
    let mut numbers = text
        .lines()
        .find_map(|l| l.strip_prefix("rss "))
        .expect("the child prints `rss BEFORE AFTER`")
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("a byte count"));
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// The resident memory an engine adds when it opens a store holding the keyspaces filled
/// above, runs a timer pass (none due: the clock is before every deadline) and a sweep
/// (nothing expired), and looks up one idempotency key.
async fn engine_memory(dir: &std::path::Path) -> (u64, u64) {
    let before = rss_bytes();
    let engine = Engine::builder(dir)
        .register::<ProductStock>()
        .clock(Arc::new(ManualClock::new(t0())))
        .timer_poll_ms(3_600_000)
        .open()
        .await
        .expect("open engine");
    engine.run_due_timers().await.unwrap();
    engine.sweep_idempotency_keys().await.unwrap();
    let after = rss_bytes();
    engine.shutdown().await.unwrap();
    (before, after)
}

/// Section 6 of the module docs: timers fired/s and the cost of pending timers and keys.
fn timer_figures(rt: &tokio::runtime::Runtime, dir: &std::path::Path, clients: u64, smoke: bool) {
    let fired_count = env("EVERSHARD_BENCH_FIRED", if smoke { 500 } else { 20_000 });
    let (fired, elapsed) = rt.block_on(timers_fired(&dir.join("fired"), fired_count, clients));
    println!(
        "timers fired     : {:>9.0} timers/s     ({fired} reservations expired in one pass, {:.2} s)",
        fired as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let count = env(
        "EVERSHARD_BENCH_TIMERS",
        if smoke { 10_000 } else { 1_000_000 },
    );
    // What an engine adds over a store with nothing in it: the baseline of the two below.
    let empty_store = dir.join("empty");
    rt.block_on(fill_keyspace(&empty_store, 0, true));
    let (before, after) = engine_memory_in_child(&empty_store);
    println!(
        "an empty store   : an engine on it: +{:.1} MiB resident (threads, runtime, caches: included in the figures below)",
        after.saturating_sub(before) as f64 / 1048576.0
    );
    let _ = std::fs::remove_dir_all(&empty_store);
    for (what, timers) in [("pending timers", true), ("idempotency keys", false)] {
        let store = dir.join(if timers { "timers" } else { "keys" });
        let (empty, full) = rt.block_on(fill_keyspace(&store, count, timers));
        let (before, after) = engine_memory_in_child(&store);
        // On the segment log the frames hold what each append carried (an idempotency
        // entry's records), sled its keyspaces.
        let log = dir_bytes(&store.join("log"));
        println!(
            "{count} {what}: {:.1} MiB on disk ({:.0} B each; sled {:.1} MiB, the log {:.1} MiB); an engine on the store: +{:.1} MiB resident",
            (full.saturating_sub(empty)) as f64 / 1048576.0,
            full.saturating_sub(empty) as f64 / count as f64,
            full.saturating_sub(empty).saturating_sub(log) as f64 / 1048576.0,
            log as f64 / 1048576.0,
            after.saturating_sub(before) as f64 / 1048576.0
        );
        let _ = std::fs::remove_dir_all(&store);
    }
}

/// Fills a store with `events` ProductStock events (decided in process from the workload
/// generator, appended through the journal in large buffered requests), lets the indexer
/// index it, and reads it from the beginning with a consumer.
/// Writes `events` ProductStock events (100 per aggregate) through `JournalWriter` in
/// buffered mode, without an engine: a large store quickly. Returns the time it took.
async fn fill_product_stock(dir: &std::path::Path, events: u64, seed: u64) -> Duration {
    use evershard::engine::{AppendRequest, JournalConfig, NewEvent};
    let per_stream = 100u64;
    let streams = events.div_ceil(per_stream);
    let config = JournalConfig {
        durability: Durability::Buffered {
            flush_every_ms: 500,
        },
        ..JournalConfig::default()
    };
    let journal = JournalWriter::open(dir, config).unwrap();
    let fill_start = Instant::now();
    let mut written = 0u64;
    let mut pending = Vec::new();
    for s in 0..streams {
        let id = format!("sku-{s}");
        let mut rng = DemoRng::new(seed ^ s);
        let mut state = <ProductStock as Aggregate>::State::default();
        let mut batch = Vec::new();
        while (batch.len() as u64) < per_stream.min(events - written) {
            let ctx = DecideContext::new(id.clone(), chrono::Utc::now());
            let command = ProductStock::sample_command(&state, &ctx, &mut rng);
            let Ok(decided) = ProductStock::decide(&state, &command, &ctx) else {
                continue;
            };
            for e in decided {
                ProductStock::apply(&mut state, &e);
                use evershard::model::DomainEvent;
                batch.push(NewEvent {
                    event_id: rng.uuid(),
                    event_type: e.event_type().into(),
                    event_version: e.event_version().into(),
                    timestamp: ctx.now,
                    correlation_id: rng.uuid(),
                    causation_id: None,
                    source: "bench".into(),
                    user_id: None,
                    session_id: None,
                    audit_context: None,
                    payload: ProductStock::encode_event(&e),
                });
            }
        }
        written += batch.len() as u64;
        let stream = StreamId::new("ProductStock", id);
        let j = journal.clone();
        pending.push(tokio::spawn(async move {
            j.append(AppendRequest::new(stream, 0, batch))
                .await
                .unwrap();
        }));
        if pending.len() >= 64 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    let j = journal.clone();
    tokio::task::spawn_blocking(move || j.close())
        .await
        .unwrap()
        .unwrap();
    fill_start.elapsed()
}

async fn catch_up(dir: &std::path::Path, events: u64, seed: u64) {
    // `EVERSHARD_BENCH_CATCHUP_STORE=DIR`: fill DIR once and keep it (for profiling the
    // catch-up read alone); later runs reuse it, already indexed.
    let kept = std::env::var_os("EVERSHARD_BENCH_CATCHUP_STORE").map(std::path::PathBuf::from);
    let dir = kept.as_deref().unwrap_or(dir);
    let fill = if dir.join("db").exists() {
        Duration::ZERO
    } else {
        fill_product_stock(dir, events, seed).await
    };
    let engine = Engine::builder(dir)
        .register::<ProductStock>()
        .open()
        .await
        .unwrap();
    let last = engine.journal().durable_position();
    let index_start = Instant::now();
    assert!(engine.wait_indexed(last, Duration::from_secs(3600)).await);
    let index_t = index_start.elapsed();
    // The fill wrote the journal directly, without the engine's Merkle maintainer: it builds
    // the tree of the million leaves now. Measured beside it, the read met a one-off tree
    // build (a store an engine filled keeps its tree up to date as it goes).
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let (size, error) = engine.tree_maintainer_status().expect("a maintainer");
        assert!(error.is_none(), "the Merkle maintainer failed: {error:?}");
        if size >= last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Merkle maintainer is at {size} of {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut consumer = engine
        .consumer_with(
            "catch-up",
            "business.inventory",
            evershard::ConsumerOptions {
                start: evershard::StartFrom::Beginning,
            },
        )
        .unwrap();
    let (read_start, cpu_start) = (Instant::now(), process_cpu());
    let mut read = 0u64;
    loop {
        let batch = consumer.try_poll(8192).unwrap();
        if batch.is_empty() {
            break;
        }
        read += batch.len() as u64;
    }
    let (read_t, read_cpu) = (
        read_start.elapsed(),
        process_cpu().saturating_sub(cpu_start),
    );
    assert_eq!(read, last, "the consumer read every event");
    println!(
        "topics catch-up   : {last} events (filled in {:.1} s); indexer {:>9.0} events/s; consumer from the beginning {:>9.0} messages/s (rendered; target >= 500,000/s), {:.2} µs CPU/message",
        fill.as_secs_f64(),
        last as f64 / index_t.as_secs_f64(),
        read as f64 / read_t.as_secs_f64(),
        read_cpu.as_secs_f64() * 1e6 / read as f64,
    );
    drop(consumer);
    // A start at a time after every message: each partition scanned whole for the time
    // (`offset_for_time`, what `StartFrom::Time` and `consume --at` ask).
    let log = engine.topic_log().unwrap();
    let after_all = chrono::Utc::now() + chrono::TimeDelta::days(1);
    let scan_start = Instant::now();
    let mut scanned = 0u64;
    for p in 0..log.topic("business.inventory").unwrap().partitions {
        scanned += log
            .offset_for_time("business.inventory", p, after_all)
            .unwrap();
    }
    assert_eq!(scanned, last, "the scan for a time passed every message");
    println!(
        "  a start at a time : {:>9.0} messages/s scanned for their timestamps",
        scanned as f64 / scan_start.elapsed().as_secs_f64()
    );
    engine.shutdown().await.unwrap();
}

/// 8. verify: a store of `EVERSHARD_BENCH_VERIFY_EVENTS` (default 1,000,000) events, its
///    Merkle tree maintained by an engine, then verified read-only: the whole `evershard
///    verify` (`evershard_cli::audit`: records, chains, index, tree, and the replay of every
///    stream), then its two integrity parts alone: the journal's pass (`Journal::verify`:
///    every record's CRC and place, the chains, the global index, the Merkle leaves) and the
///    tree recomputed from those leaves against the stored nodes. Best of three runs each
///    (the machine is shared), each with the process's CPU time per event, which a loaded
///    machine changes far less than the wall time. `EVERSHARD_BENCH_VERIFY_WHOLE_ONLY=1` times
///    only the whole verify (for a profiler).
async fn verify_rate(dir: &std::path::Path, events: u64, seed: u64) {
    // `EVERSHARD_BENCH_VERIFY_STORE=DIR`: fill DIR once and keep it (for profiling `evershard
    // verify --data DIR`); later runs reuse it.
    let kept = std::env::var_os("EVERSHARD_BENCH_VERIFY_STORE").map(std::path::PathBuf::from);
    let dir = kept.as_deref().unwrap_or(dir);
    let fill = if dir.join("db").exists() {
        Duration::ZERO
    } else {
        fill_product_stock(dir, events, seed).await
    };
    let engine = Engine::builder(dir)
        .register::<ProductStock>()
        .topic_indexer(false)
        .open()
        .await
        .unwrap();
    let last = engine.journal().durable_position();
    let deadline = Instant::now() + Duration::from_secs(3600);
    while engine.tree_maintainer_status().map(|s| s.0) != Some(last) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.shutdown().await.unwrap();
    drop(engine);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let journal = Journal::open_read_only(&dir).unwrap();
        // Best of three by wall time; with it, the CPU time the process spent in that run
        // (both threads), so a figure taken on a loaded machine can be read for what it is.
        let timed = |f: &mut dyn FnMut()| {
            let (cpu, start) = (process_cpu(), Instant::now());
            f();
            (start.elapsed(), process_cpu().saturating_sub(cpu))
        };
        let best = |f: &mut dyn FnMut()| (0..3).map(|_| timed(&mut *f)).min().unwrap();
        let rate = |t: Duration| last as f64 / t.as_secs_f64();
        let cpu_ns = |t: Duration| t.as_nanos() as f64 / last as f64;
        // The whole verify first: its first run reads sled's pages from the files, as every
        // `evershard verify` does after opening the store; the best of three has them cached.
        let mut whole_run = || {
            let report = evershard_cli::audit(&journal);
            assert!(report.clean, "{:?}", report.problems.first());
            assert_eq!(report.events_replayed, last);
        };
        let first = timed(&mut whole_run);
        let whole = best(&mut whole_run).min(first);
        println!(
            "verify            : {:>9.0} events/s  the whole `evershard verify` of {last} events (records, chains, index, Merkle tree, every stream replayed; best of 3): {:.3} s, {:.0} ns CPU/event; first run after opening the store {:>9.0} events/s; target >= 1,000,000 events/s",
            rate(whole.0),
            whole.0.as_secs_f64(),
            cpu_ns(whole.1),
            rate(first.0),
        );
        // `EVERSHARD_BENCH_VERIFY_WHOLE_ONLY=1`: time only the whole verify (for profiling it).
        if std::env::var_os("EVERSHARD_BENCH_VERIFY_WHOLE_ONLY").is_none() {
            let mut leaves = Vec::new();
            let pass = best(&mut || {
                let mut report = journal.verify();
                assert!(report.is_clean(), "{:?}", report.issues.first());
                assert_eq!(report.events_checked, last);
                leaves = report.leaves.take().expect("a whole-store pass keeps the leaves");
            });
            let tree = best(&mut || {
                let tree = journal.check_tree_with(&leaves, &[]).unwrap();
                assert!(tree.mismatches.is_empty() && tree.nodes_compared > 0);
            });
            println!(
                "verify parts      : {last} events (filled in {:.1} s); records + chains + index + leaves (Journal::verify, 2 threads) {:>9.0} events/s ({:.0} ns CPU/event); Merkle tree from the leaves (2 threads) {:>9.0} events/s ({:.0} ns CPU/event); the two together {:>9.0} events/s",
                fill.as_secs_f64(),
                rate(pass.0),
                cpu_ns(pass.1),
                rate(tree.0),
                cpu_ns(tree.1),
                rate(pass.0 + tree.0),
            );
        }
    })
    .await
    .unwrap();
}

fn main() {
    if let Some(dir) = std::env::var_os(MEMORY_CHILD_ENV) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (before, after) = rt.block_on(engine_memory(std::path::Path::new(&dir)));
        println!("rss {before} {after}");
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Either way
    // a quick smoke run is enough under `cargo test`.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let aggregates = env(
        "EVERSHARD_BENCH_AGGREGATES",
        if smoke { 100 } else { 10_000 },
    );
    let commands = env(
        "EVERSHARD_BENCH_COMMANDS",
        if smoke { 1_000 } else { 100_000 },
    );
    let clients = env("EVERSHARD_BENCH_CLIENTS", 64).min(aggregates).max(1);
    let recovery_events = env(
        "EVERSHARD_BENCH_RECOVERY_EVENTS",
        if smoke { 500 } else { 10_000 },
    );
    // Loads of each kind whose p50 section 4 reports.
    let recovery_runs = env("EVERSHARD_BENCH_RECOVERY_RUNS", if smoke { 3 } else { 31 }) as usize;
    let seed = env("EVERSHARD_BENCH_SEED", 42);
    // The paired ratios (sections 5 and 6, and the write paths): two engines taking turns,
    // `EVERSHARD_BENCH_PAIRS` x the commands of run 1 each, in slices of
    // `EVERSHARD_BENCH_SLICE_COMMANDS` (see `paired_ratio`).
    let pairs = env("EVERSHARD_BENCH_PAIRS", if smoke { 1 } else { 5 }) as usize;
    let slice_commands = env(
        "EVERSHARD_BENCH_SLICE_COMMANDS",
        if smoke { 500 } else { 25_000 },
    );
    let shape = Shape {
        aggregates,
        commands,
        clients,
        seed,
        smoke,
    };
    let base = std::env::var_os("EVERSHARD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(base).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("evershard throughput bench: {aggregates} aggregates, {commands} commands, {clients} clients, seed {seed}, allocator {ALLOCATOR}");
    println!("data dir: {}", tmp.path().display());

    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("catchup") {
        let events = env(
            "EVERSHARD_BENCH_CATCHUP_EVENTS",
            if smoke { 5_000 } else { 1_000_000 },
        );
        rt.block_on(catch_up(&tmp.path().join("catchup"), events, seed));
        return;
    }
    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("recovery") {
        let figures = rt.block_on(recovery(
            &tmp.path().join("recovery"),
            recovery_events,
            recovery_runs,
        ));
        print_recovery(&figures, recovery_events, recovery_runs);
        return;
    }
    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("writepath") {
        // The two write paths, paired (docs/design.md, "The next write path"): run 1's
        // workload on the sled layout and on the segment log, alternately, on fresh stores.
        println!("write paths: run 1's workload, sled layout (without) and segment log (with)");
        let Paired { ratio, rate, .. } =
            paired_ratio(&rt, tmp.path(), &shape, Feature::Log, pairs, slice_commands);
        println!(
            "segment log over sled layout: ratio {ratio:.2} ({rate:.0} commands/s on the log)"
        );
        return;
    }
    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("keyspaces") {
        timer_figures(&rt, tmp.path(), clients, smoke);
        return;
    }
    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("verify") {
        let events = env(
            "EVERSHARD_BENCH_VERIFY_EVENTS",
            if smoke { 5_000 } else { 1_000_000 },
        );
        rt.block_on(verify_rate(&tmp.path().join("verify"), events, seed));
        return;
    }
    // `EVERSHARD_BENCH_KEYED=1` gives this first run a fresh idempotency key per command (to
    // profile the keyed path alone, with `EVERSHARD_BENCH_ONLY=engine`).
    let keyed_first = std::env::var("EVERSHARD_BENCH_KEYED").as_deref() == Ok("1");
    // `EVERSHARD_BENCH_TOPICS=1`: the same, with the topic indexer and a live consumer group.
    let topics_first = std::env::var("EVERSHARD_BENCH_TOPICS").as_deref() == Ok("1");
    let cpu_before = process_cpu();
    let run = rt.block_on(evershard_durable(
        &tmp.path().join("evershard"),
        aggregates,
        commands,
        clients,
        seed,
        Extras {
            keyed: keyed_first,
            topics: topics_first,
            ..Extras::plain()
        },
    ));
    let secs = run.elapsed.as_secs_f64();
    let cmds_per_s = run.commands as f64 / secs;
    let events_per_s = run.events as f64 / secs;
    println!(
        "evershard {:<8}: {:>9.0} commands/s  {:>9.0} events/s  ({} commands, {} accepted of which {} with no events, {} events, {:.2} s, {} B/record)",
        if durability() == Durability::Durable { "durable" } else { "buffered" },
        cmds_per_s,
        events_per_s,
        run.commands, run.accepted, run.accepted_empty, run.events, secs, run.record_bytes_avg
    );
    // Every thread's CPU, open and shutdown included: what bounds the rate on 2 cores once
    // the disk's sync is shared by a group (docs/design.md, "The next write path").
    let cpu = process_cpu().saturating_sub(cpu_before);
    println!(
        "  its cost         : {:.1} µs CPU/command; resident set +{:.1} MiB over the run; store {:.1} MiB on disk ({:.1} MiB allocated)",
        cpu.as_secs_f64() * 1e6 / run.commands.max(1) as f64,
        run.rss_growth_bytes as f64 / (1 << 20) as f64,
        run.disk_bytes as f64 / (1 << 20) as f64,
        run.disk_allocated_bytes as f64 / (1 << 20) as f64,
    );

    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("engine") {
        return; // for profiling the command path alone
    }
    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("latency") {
        latency_at_half(&rt, tmp.path(), aggregates, cmds_per_s, smoke);
        return;
    }
    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("goals") {
        // Issue #13's figures alone: they need the plain file's rate for one ratio.
        let records = run.events.max(1000);
        let file_t = file_ceiling(tmp.path(), records, run.record_bytes_avg as usize);
        let file_rate = records as f64 / file_t.as_secs_f64();
        println!("plain file        : {file_rate:>9.0} records/s  (one fdatasync per 1,000)");
        goals(&rt, tmp.path(), &run, file_rate, &shape);
        return;
    }
    let only = std::env::var("EVERSHARD_BENCH_ONLY").ok();
    if only.is_none() || only.as_deref() == Some("idempotency") {
        println!("with idempotency keys vs without, two engines taking turns:");
        let Paired {
            ratio,
            rate,
            cpu_ratio,
        } = paired_ratio(
            &rt,
            tmp.path(),
            &shape,
            Feature::Keys,
            pairs,
            slice_commands,
        );
        println!(
            "with idempotency : {rate:>9.0} commands/s  (a fresh key on every command); ratio to without: {ratio:.2} (target >= 0.85); CPU per command, without over with: {cpu_ratio:.2}"
        );
        if only.is_some() {
            return;
        }
    }
    if only.is_none() {
        timer_figures(&rt, tmp.path(), clients, smoke);
    }
    if only.is_none() || only.as_deref() == Some("topics") {
        println!("with topics vs without, two engines taking turns:");
        let Paired {
            ratio,
            rate,
            cpu_ratio,
        } = paired_ratio(
            &rt,
            tmp.path(),
            &shape,
            Feature::Topics,
            pairs,
            slice_commands,
        );
        println!(
            "with topics       : {rate:>9.0} commands/s  (indexer + a live consumer group); ratio to without: {ratio:.2} (target >= 0.90); CPU per command, without over with: {cpu_ratio:.2}"
        );
    }
    let catchup_events = env(
        "EVERSHARD_BENCH_CATCHUP_EVENTS",
        if smoke { 5_000 } else { 1_000_000 },
    );
    rt.block_on(catch_up(&tmp.path().join("catchup"), catchup_events, seed));
    if std::env::var("EVERSHARD_BENCH_ONLY").as_deref() == Ok("topics") {
        return;
    }
    let records = run.events.max(1000);
    let value_bytes = run.record_bytes_avg as usize;
    let journal_t = journal_alone(
        &tmp.path().join("journal"),
        records,
        value_bytes.saturating_sub(180),
        clients,
    );
    let journal_rate = (records / clients * clients) as f64 / journal_t.as_secs_f64();
    println!(
        "journal alone     : {:>9.0} events/s   (same clients, one event per append, no actors)",
        journal_rate
    );
    let sled_t = sled_ceiling(&tmp.path().join("sled"), records, value_bytes);
    let sled_rate = records as f64 / sled_t.as_secs_f64();
    println!("sled batch+flush  : {:>9.0} records/s  ({records} records of {value_bytes} B, batches of 1,000)", sled_rate);
    let file_t = file_ceiling(tmp.path(), records, value_bytes);
    let file_rate = records as f64 / file_t.as_secs_f64();
    println!(
        "plain file        : {:>9.0} records/s  (one fdatasync per 1,000)",
        file_rate
    );
    println!(
        "ratio             : evershard events/s = {:.2} x sled's batched rate, {:.2} x the plain file's",
        events_per_s / sled_rate,
        events_per_s / file_rate
    );

    let recovery_figures = rt.block_on(recovery(
        &tmp.path().join("recovery"),
        recovery_events,
        recovery_runs,
    ));
    print_recovery(&recovery_figures, recovery_events, recovery_runs);
    goals(&rt, tmp.path(), &run, file_rate, &shape);
}

/// The latency of an open-loop load at half of `rate` (run 1's), with its target.
fn latency_at_half(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    aggregates: u64,
    rate: f64,
    smoke: bool,
) {
    let seconds = if smoke { 0.5 } else { 5.0 };
    let lat = rt.block_on(latency::open_loop(
        &dir.join("latency"),
        aggregates,
        rate / 2.0,
        seconds,
    ));
    println!(
        "  latency at half that rate ({:.0}/s open loop, {} commands in {:.1} s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < 5 ms)",
        rate / 2.0,
        lat.sent,
        lat.elapsed.as_secs_f64(),
        lat.quantile_ms(0.5),
        lat.quantile_ms(0.99),
        lat.quantile_ms(1.0)
    );
}

/// Issue #13's figures that the sections above do not give, each with its target: the
/// in-memory cqrs-es peer, 1,024 clients against the plain file, the latency at half the
/// maximum rate, disk per byte of event records, and 1,000,000 aggregates with passivation.
fn goals(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    run: &Run,
    file_rate: f64,
    shape: &Shape,
) {
    let Shape {
        aggregates,
        commands,
        clients,
        seed,
        smoke,
    } = *shape;
    let rate = run.commands as f64 / run.elapsed.as_secs_f64();
    println!("issue #13 goals (ratios to the first run above, {rate:.0} commands/s):");

    let peer = rt.block_on(cqrs_peer::run(aggregates, commands, clients, seed));
    let peer_rate = peer.commands as f64 / peer.elapsed.as_secs_f64();
    println!(
        "  peer cqrs-es 0.5, in-memory store, same commands and clients: {peer_rate:>9.0} commands/s ({} accepted); evershard durable = {:.2} x (target >= 0.5)",
        peer.accepted,
        rate / peer_rate
    );

    let many_clients = env("EVERSHARD_BENCH_MANY_CLIENTS", 1024)
        .min(aggregates)
        .max(1);
    let wide = rt.block_on(evershard_durable(
        &dir.join("evershard-wide"),
        aggregates,
        commands,
        many_clients,
        seed,
        Extras::plain(),
    ));
    let wide_events = wide.events as f64 / wide.elapsed.as_secs_f64();
    println!(
        "  {many_clients} clients: {:>9.0} commands/s, {wide_events:>9.0} events/s = {:.2} x the plain file's records/s (target >= 0.3)",
        wide.commands as f64 / wide.elapsed.as_secs_f64(),
        wide_events / file_rate
    );

    latency_at_half(rt, dir, aggregates, rate, smoke);

    let record_bytes = (run.events * run.record_bytes_avg).max(1);
    println!(
        "  disk: {:.1} MiB allocated for {:.1} MiB of event records = {:.1} x (target <= 2)",
        run.disk_allocated_bytes as f64 / (1 << 20) as f64,
        record_bytes as f64 / (1 << 20) as f64,
        run.disk_allocated_bytes as f64 / record_bytes as f64
    );

    let million = env(
        "EVERSHARD_BENCH_MANY_AGGREGATES",
        if smoke { 2_000 } else { 1_000_000 },
    );
    let wide_run = rt.block_on(evershard_durable(
        &dir.join("evershard-million"),
        million,
        million,
        clients,
        seed,
        Extras::plain(),
    ));
    let million_rate = wide_run.commands as f64 / wide_run.elapsed.as_secs_f64();
    println!(
        "  {million} aggregates, one command each, passivation at the defaults: {million_rate:>9.0} commands/s = {:.2} x (target >= 0.7); resident set +{:.0} MiB (target < 512 MiB)",
        million_rate / rate,
        wide_run.rss_growth_bytes as f64 / (1 << 20) as f64
    );
}
