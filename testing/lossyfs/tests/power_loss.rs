//! Power loss under load loses nothing acknowledged — events, durable timers, idempotency
//! keys, topics and consumer offsets — and this test can tell when it would.
//!
//! How: each trial mounts a fresh `lossyfs` (writes stay volatile until fsync; names until
//! their directory's fsync) and re-runs this test binary as a child process that opens a
//! durable `Engine` (topic indexer on) in a new store on the mount and drives it with
//! `CLIENTS_COUNT` concurrent clients over `AGGREGATES_COUNT` `Ledger` aggregates (a quarter
//! of them with events near the payload limit, so that tree nodes are large: in a store of
//! sled's default segment size sled writes them to blob files; in one of evershard's it must
//! not, and the test counts the blob files it sees), plus
//! `STOCK_CLIENTS_COUNT` clients over `STOCK_AGGREGATES_COUNT` `ProductStock` aggregates:
//! receipts, reservations (each sets or moves the product's durable timer; some products
//! get a TTL of one to three seconds of the child's clock, which runs 20 times fast, so
//! their timers fire and release reservations while the child writes), confirmations and
//! releases, half of them with an idempotency key. A
//! consumer group reads `business.inventory` and commits its offsets. The child prints on
//! its stdout, a pipe outside the mount, each acknowledged event (`ack <type> <id>
//! <sequence> <event id> <payload bytes>`), each acknowledged keyed command (`keyed <key>
//! <id> <sequences> <command as JSON>`) and each acknowledged offset commit (`offset <topic>
//! <partition> <offset>`). At a random moment the parent SIGKILLs the child, unmounts, cuts
//! the power (all unsynced state dropped, or — half the rounds — random prefixes of unsynced
//! writes kept), mounts the durable image and checks, first read-only:
//! - every acknowledged event is there with its sequence, event id and payload, and
//!   `Journal::verify` is clean;
//! - every product's stored timer is exactly the one `ProductStock::next_timer` asks for on
//!   its state as `repository::load` rebuilds it: no event without its timer, no timer
//!   without its event;
//!
//! then with the `Engine` reopened on it (a `ManualClock` before every stored deadline, so
//! that no timer fires and no key expires while it checks):
//! - every acknowledged keyed command, executed again with its key, answers the sequences it
//!   answered the child, and writes nothing (heads, timers and keys unchanged);
//! - once the indexer has caught up with the journal, every event is in its topic exactly
//!   once, in its aggregate's order, at the position the journal gives it; every offset the
//!   group was told was committed is still committed, at least that far, and no committed
//!   offset lies beyond its partition's end.
//!
//! Each trial runs `ROUNDS_PER_TRIAL` rounds on the same store, so recovery after a power
//! cut (and the timers that fire at start-up) is itself cut. Seeds are printed;
//! `EVERSHARD_POWER_SEED` replays one trial.
//!
//! The mutation tests run the same trials with a sync removed from the engine
//! (`EVERSHARD_FAULT_SKIP_SYNC`, read only with the engine's `fault-injection` feature) and
//! assert that some trial detects the loss: proof that the crash test sees a missing sync.
//! The blob syncs' mutations run on a store of sled's default 512 KiB segments (as evershard
//! made them before it chose 16 MiB), the only kind in which sled still writes blob files.
//!
//! `soak_power_loss` (ignored; `cargo test --release -p evershard-lossyfs -- --ignored soak`)
//! runs trials for `EVERSHARD_SOAK_MINUTES` minutes and prints what it checked.
//!
//! `EVERSHARD_POWER_DUMP=<dir>` keeps copies of the store before and after each power cut of
//! every trial that loses something, with its acknowledgements; `check_dumped_store` (ignored)
//! checks such a copy again, and sled's own log (`log` crate) can be read on it.
//!
//! Skips with a printed reason where FUSE cannot be mounted, unless
//! `EVERSHARD_REQUIRE_FUSE=1` (set by `.ci/run`) makes that a failure.

use chrono::{DateTime, TimeDelta, Utc};
use evershard_aggregates::product_stock::{
    self, ConfirmReservation, ProductStock, ProductStockCommand, ProductStockEvent, ReceiveStock,
    ReleaseReason, ReleaseReservation, Reserve, SetReservationTtl, RESERVATION_TTL_MS,
};
use evershard_engine::model::{Aggregate, DecideContext, DomainEvent, Metadata};
use evershard_engine::{
    repository, CommandError, Durability, Engine, Journal, ManualClock, StreamId,
};
use evershard_lossyfs::model::SplitMix64;
use evershard_lossyfs::{fuse_or_skip, LossyFs, TornWrites};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CHILD_DIR_ENV: &str = "EVERSHARD_POWER_CHILD_DIR";
const CHILD_SEED_ENV: &str = "EVERSHARD_POWER_CHILD_SEED";
const CHILD_EPOCH_ENV: &str = "EVERSHARD_POWER_CHILD_EPOCH_MICROS";
const SKIP_SYNC_ENV: &str = "EVERSHARD_FAULT_SKIP_SYNC";
const CLIENTS_COUNT: u64 = 64;
const AGGREGATES_COUNT: u64 = 24;
/// Aggregates `big-*` (one in four) carry payloads this large, near the journal's 64 KiB
/// limit: their consolidated tree nodes are over sled's blob threshold with the default
/// 512 KiB segments (the blob mutations' stores), below it with evershard's 16 MiB.
const BIG_PAYLOAD_BYTES_MIN: u32 = 40 * 1024;
const BIG_PAYLOAD_BYTES_MAX: u32 = 60 * 1024;
const SMALL_PAYLOAD_BYTES_MAX: u32 = 200;
const ROUNDS_PER_TRIAL: u32 = 2;
/// The kill comes after this many acknowledgements at least (plus a random number more).
const ACKS_BEFORE_KILL_MIN: u64 = 30;
const ACKS_BEFORE_KILL_SPREAD: u64 = 400;
/// A round whose child acknowledges nothing for this long has failed.
const CHILD_SILENCE_MS_MAX: u64 = 60_000;
/// Trials of the test CI runs (each `ROUNDS_PER_TRIAL` power cuts): about a minute in a
/// debug build on two cores.
const TRIALS_COUNT: u64 = 30;
/// Trials a mutation test may take to detect its missing sync.
const MUTATION_TRIALS_MAX: u64 = 12;
/// `ProductStock` clients and products, beside the ledger's: few products, so that
/// reservations, confirmations and releases meet on them and their timers move often.
const STOCK_CLIENTS_COUNT: u64 = 8;
const STOCK_AGGREGATES_COUNT: u64 = 6;
/// Short reservation TTLs some products get (`SetReservationTtl`), so that their durable
/// timers come due and fire while the child writes; the others keep the 30-minute default.
const SHORT_TTL_MS_MIN: i64 = 1_000;
const SHORT_TTL_MS_SPREAD: u64 = 2_000;
/// The child's timer scheduler looks this often, so due timers fire within the round.
const CHILD_TIMER_POLL_MS: u64 = 50;
/// The child's clock runs this many times faster than the system's (`FastClock`): a round
/// lasts about a second, and the shortest TTL `ProductStock` accepts is one.
const CHILD_CLOCK_SPEEDUP: i32 = 20;
/// Keys answer with their first result this long: far beyond a trial, so every key
/// acknowledged in a trial must still answer at its end.
const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// The group that consumes `business.inventory` in the child and commits its offsets.
const CONSUMER_GROUP: &str = "power-loss-check";
const CONSUMER_POLL_MESSAGES_MAX: usize = 100;
/// How long the parent waits for the reopened engine: to open, for the indexer to cover
/// the journal, for each repeated keyed command. Past it the check fails (it never hangs).
const REOPEN_MS_MAX: u64 = 60_000;
const INDEX_CATCH_UP_MS_MAX: u64 = 60_000;
const REPEAT_MS_MAX: u64 = 30_000;
/// Messages read per call when the parent reads a partition whole.
const TOPIC_READ_MESSAGES_MAX: usize = 1_000;

// ---------------------------------------------------------------------------------------
// The aggregate: each event carries its own sequence and a payload derived from it, so a
// record can be checked on its own.

#[derive(Debug)]
struct Ledger;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Append {
    payload_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Appended {
    sequence: u64,
    fill: Vec<u8>,
}

fn fill(sequence: u64, bytes: u32) -> Vec<u8> {
    (0..bytes as u64)
        .map(|i| (sequence.wrapping_mul(31).wrapping_add(i) % 251) as u8)
        .collect()
}

impl Appended {
    const TOPIC: &'static str = "test.ledger";
}

impl DomainEvent for Appended {
    fn event_type(&self) -> &'static str {
        "Appended"
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        Appended::TOPIC
    }
    fn payload_json(&self) -> serde_json::Value {
        serde_json::json!({ "sequence": self.sequence, "bytes": self.fill.len() })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LedgerState {
    events: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Ledger {
    const TYPE: &'static str = "Ledger";
    type State = LedgerState;
    type Command = Append;
    type Event = Appended;
    type Error = Never;

    fn decide(
        state: &LedgerState,
        cmd: &Append,
        _: &DecideContext,
    ) -> Result<Vec<Appended>, Never> {
        let sequence = state.events + 1;
        Ok(vec![Appended {
            sequence,
            fill: fill(sequence, cmd.payload_bytes),
        }])
    }

    fn apply(state: &mut LedgerState, event: &Appended) {
        state.events += 1;
        // Replay after a cut must see the sequences it was decided on.
        assert_eq!(event.sequence, state.events, "event out of sequence");
    }
}

fn aggregate_id(n: u64) -> String {
    if n % 4 == 0 {
        format!("big-{n}")
    } else {
        format!("small-{n}")
    }
}

// ---------------------------------------------------------------------------------------
// The child: writes until killed.

fn stock_id(n: u64) -> String {
    format!("sku-{n}")
}

fn uuid(rng: &mut SplitMix64) -> Uuid {
    Uuid::from_u128((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()))
}

/// The line of one acknowledged event.
fn ack_line(aggregate_type: &str, id: &str, sequence: u64, event_id: Uuid, bytes: usize) -> String {
    format!("ack {aggregate_type} {id} {sequence} {event_id} {bytes}")
}

/// The child's clock: the trial's start plus `CHILD_CLOCK_SPEEDUP` times the real time
/// since. Anchored to the trial's start, so it never goes back from one round to the next.
#[derive(Debug)]
struct FastClock {
    epoch: DateTime<Utc>,
}

impl evershard_engine::Clock for FastClock {
    fn now(&self) -> DateTime<Utc> {
        let real = Utc::now() - self.epoch;
        evershard_engine::model::truncate_to_micros(self.epoch + real * CHILD_CLOCK_SPEEDUP)
    }
}

/// One `ProductStock` client: random commands on random products, half of them keyed.
async fn stock_client(
    engine: Engine,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    mut rng: SplitMix64,
) {
    // Reservations this client opened, to confirm or release some of them later.
    let mut reservations: Vec<(String, Uuid)> = Vec::new();
    loop {
        let id = stock_id(rng.below(STOCK_AGGREGATES_COUNT));
        // One of the product's last few: most likely still open, so that confirming or
        // releasing it moves the product's timer.
        let earlier = reservations
            .iter()
            .rev()
            .filter(|(on, _)| *on == id)
            .map(|(_, r)| *r)
            .nth(rng.below(4) as usize);
        let command: ProductStockCommand = match (rng.below(12), earlier) {
            (0..=2, _) => ReceiveStock {
                quantity: 1 + rng.below(20) as i64,
            }
            .into(),
            (8, Some(reservation_id)) => ConfirmReservation { reservation_id }.into(),
            (9, Some(reservation_id)) => ReleaseReservation {
                reservation_id,
                reason: ReleaseReason::Cancelled,
            }
            .into(),
            (10, _) => SetReservationTtl {
                reservation_ttl_ms: if rng.below(2) == 0 {
                    SHORT_TTL_MS_MIN + rng.below(SHORT_TTL_MS_SPREAD) as i64
                } else {
                    RESERVATION_TTL_MS
                },
            }
            .into(),
            _ => {
                let reservation_id = uuid(&mut rng);
                reservations.push((id.clone(), reservation_id));
                Reserve {
                    reservation_id,
                    order_id: uuid(&mut rng),
                    quantity: 1 + rng.below(3) as i64,
                }
                .into()
            }
        };
        let key = (rng.below(2) == 0).then(|| uuid(&mut rng));
        let mut metadata = Metadata::new("power-loss");
        metadata.idempotency_key = key;
        match engine
            .execute_with::<ProductStock>(&id, command.clone(), metadata)
            .await
        {
            Ok(events) => {
                let mut sequences = Vec::new();
                for e in &events {
                    sequences.push(e.sequence.to_string());
                    let line = ack_line(ProductStock::TYPE, &id, e.sequence, e.event_id, 0);
                    let _ = tx.send(line);
                }
                if let Some(key) = key {
                    let sequences = if sequences.is_empty() {
                        "-".to_owned()
                    } else {
                        sequences.join(",")
                    };
                    let json = serde_json::to_string(&command).unwrap();
                    let _ = tx.send(format!("keyed {key} {id} {sequences} {json}"));
                }
            }
            // Rejections (no stock, an expired or closed reservation) are the domain's
            // answers, not failures: they write nothing and record no key.
            Err(CommandError::Rejected(_)) => {}
            Err(e) => {
                let _ = tx.send(format!("error {e}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// The consumer group: reads `business.inventory` and commits after every batch; reports
/// each commit that returned Ok (a durable commit, by `Consumer::commit`'s contract).
async fn consume_and_commit(engine: Engine, tx: tokio::sync::mpsc::UnboundedSender<String>) {
    let mut consumer = engine
        .consumer(CONSUMER_GROUP, product_stock::TOPIC)
        .unwrap();
    loop {
        match consumer
            .poll(CONSUMER_POLL_MESSAGES_MAX, Duration::from_millis(200))
            .await
        {
            Ok(batch) if batch.is_empty() => {}
            Ok(_) => match consumer.commit().await {
                Ok(()) => {
                    for p in consumer.assignment() {
                        if let Some(offset) = consumer.position(p) {
                            let topic = product_stock::TOPIC;
                            let _ = tx.send(format!("offset {topic} {p} {offset}"));
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(format!("error commit: {e}"));
                }
            },
            Err(e) => {
                let _ = tx.send(format!("error poll: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[test]
#[ignore = "run by the power-loss tests as a child process"]
fn power_loss_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let epoch: i64 = std::env::var(CHILD_EPOCH_ENV).unwrap().parse().unwrap();
    let clock = FastClock {
        epoch: DateTime::from_timestamp_micros(epoch).unwrap(),
    };
    let rt = runtime();
    rt.block_on(async move {
        let engine = Engine::builder(&dir)
            .register::<Ledger>()
            .register::<ProductStock>()
            .durability(Durability::Durable)
            .topic_indexer(true)
            .timer_poll_ms(CHILD_TIMER_POLL_MS)
            .idempotency_retention_ms(IDEMPOTENCY_RETENTION_MS)
            .clock(Arc::new(clock))
            .open()
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for client in 0..CLIENTS_COUNT {
            let engine = engine.clone();
            let tx = tx.clone();
            let mut rng = SplitMix64(seed ^ client.wrapping_mul(0x9E37_79B9));
            tokio::spawn(async move {
                loop {
                    let id = aggregate_id(rng.below(AGGREGATES_COUNT));
                    let payload_bytes = if id.starts_with("big") {
                        BIG_PAYLOAD_BYTES_MIN
                            + rng.below((BIG_PAYLOAD_BYTES_MAX - BIG_PAYLOAD_BYTES_MIN) as u64)
                                as u32
                    } else {
                        rng.below(SMALL_PAYLOAD_BYTES_MAX as u64) as u32
                    };
                    match engine
                        .execute::<Ledger>(&id, Append { payload_bytes })
                        .await
                    {
                        Ok(events) => {
                            for e in events {
                                let line = ack_line(
                                    Ledger::TYPE,
                                    &e.aggregate_id,
                                    e.sequence,
                                    e.event_id,
                                    e.payload.fill.len(),
                                );
                                let _ = tx.send(line);
                            }
                        }
                        // Conflicts and overload are retried; anything else is reported.
                        Err(e) => {
                            let _ = tx.send(format!("error {e}"));
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            });
        }
        for client in 0..STOCK_CLIENTS_COUNT {
            let rng = SplitMix64(seed ^ 0x5_70c4 ^ client.wrapping_mul(0x85EB_CA6B));
            tokio::spawn(stock_client(engine.clone(), tx.clone(), rng));
        }
        tokio::spawn(consume_and_commit(engine.clone(), tx.clone()));
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------
// The parent.

/// One acknowledged event.
#[derive(Clone, Debug)]
struct Ack {
    aggregate_type: String,
    id: String,
    sequence: u64,
    event_id: String,
    payload_bytes: usize,
}

/// One acknowledged command with an idempotency key: what it answered.
#[derive(Clone, Debug)]
struct Keyed {
    key: Uuid,
    id: String,
    sequences: Vec<u64>,
    command: ProductStockCommand,
    /// The line the child printed (the command's JSON as it was).
    line: String,
}

/// One acknowledged offset commit of `CONSUMER_GROUP`.
#[derive(Clone, Debug)]
struct Offset {
    topic: String,
    partition: u32,
    offset: u64,
}

/// Everything a trial's children were told was durable.
#[derive(Clone, Debug, Default)]
struct Acknowledged {
    events: Vec<Ack>,
    keyed: Vec<Keyed>,
    offsets: Vec<Offset>,
}

impl Acknowledged {
    /// Takes one line of the child; `false` when it is none of the acknowledgements.
    fn take(&mut self, line: &str) -> bool {
        if let Some(ack) = parse_ack(line) {
            self.events.push(ack);
        } else if let Some(keyed) = parse_keyed(line) {
            self.keyed.push(keyed);
        } else if let Some(offset) = parse_offset(line) {
            self.offsets.push(offset);
        } else {
            return false;
        }
        true
    }

    fn extend(&mut self, other: Acknowledged) {
        self.events.extend(other.events);
        self.keyed.extend(other.keyed);
        self.offsets.extend(other.offsets);
    }

    /// The lines the child printed.
    fn lines(&self) -> Vec<String> {
        let events = self.events.iter().map(|a| {
            ack_line(
                &a.aggregate_type,
                &a.id,
                a.sequence,
                a.event_id.parse().unwrap_or_default(),
                a.payload_bytes,
            )
        });
        let keyed = self.keyed.iter().map(|k| k.line.clone());
        let offsets = self
            .offsets
            .iter()
            .map(|o| format!("offset {} {} {}", o.topic, o.partition, o.offset));
        events.chain(keyed).chain(offsets).collect()
    }
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    Some(Ack {
        aggregate_type: parts.next()?.to_owned(),
        id: parts.next()?.to_owned(),
        sequence: parts.next()?.parse().ok()?,
        event_id: parts.next()?.to_owned(),
        payload_bytes: parts.next()?.parse().ok()?,
    })
}

fn parse_keyed(line: &str) -> Option<Keyed> {
    let mut parts = line.strip_prefix("keyed ")?.splitn(4, ' ');
    let key = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_owned();
    let sequences = match parts.next()? {
        "-" => Vec::new(),
        list => list
            .split(',')
            .map(|s| s.parse().ok())
            .collect::<Option<_>>()?,
    };
    let command = serde_json::from_str(parts.next()?).ok()?;
    Some(Keyed {
        key,
        id,
        sequences,
        command,
        line: line.to_owned(),
    })
}

fn parse_offset(line: &str) -> Option<Offset> {
    let mut parts = line.strip_prefix("offset ")?.split(' ');
    Some(Offset {
        topic: parts.next()?.to_owned(),
        partition: parts.next()?.parse().ok()?,
        offset: parts.next()?.parse().ok()?,
    })
}

#[derive(Debug, Default)]
struct TrialReport {
    power_cuts: u64,
    acks_checked: u64,
    /// Of `acks_checked`, events of `ProductStock`.
    stock_acks_checked: u64,
    timers_checked: u64,
    /// Reservations the durable timers released (`StockReleased`, reason expired) found in
    /// the checked stores: evidence that timers fired, and were cut, in the children.
    expired_by_timers: u64,
    keys_checked: u64,
    topic_messages_checked: u64,
    offsets_checked: u64,
    /// Files in the store's `blobs/` seen after each round (before the cut): none in a store
    /// of evershard's segment size, whose tree nodes all stay below sled's blob threshold.
    blob_files_seen: u64,
    /// Each acknowledged event missing or wrong, or the store not opening, or verify issues,
    /// or a timer, key, topic message or committed offset not as acknowledged.
    losses: Vec<String>,
}

impl TrialReport {
    fn checked(&self) -> String {
        format!(
            "{} acks ({} of products), {} timers ({} reservations expired by them), {} keys, {} topic messages, {} offsets checked, {} blob files seen",
            self.acks_checked,
            self.stock_acks_checked,
            self.timers_checked,
            self.expired_by_timers,
            self.keys_checked,
            self.topic_messages_checked,
            self.offsets_checked,
            self.blob_files_seen
        )
    }
}

/// Runs the child until `kill_after` acks (and a random few milliseconds more), kills it,
/// and returns everything it acknowledged.
fn run_child(
    store: &Path,
    epoch: DateTime<Utc>,
    seed: u64,
    skip_sync: Option<&str>,
    kill_after: u64,
    delay_ms: u64,
) -> Acknowledged {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "power_loss_child_writer",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DIR_ENV, store)
    .env(CHILD_SEED_ENV, seed.to_string())
    .env(CHILD_EPOCH_ENV, epoch.timestamp_micros().to_string())
    .env_remove(SKIP_SYNC_ENV)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(what) = skip_sync {
        cmd.env(SKIP_SYNC_ENV, what);
        // Blob files and their folder are sled's: only a store on the sled layout writes
        // events into sled (on the segment log sled's nodes stay small), so the blob
        // mutations run on one whatever `EVERSHARD_WRITE_PATH` says for the other trials.
        if what.starts_with("blob") {
            cmd.env(evershard_engine::WritePath::ENV, "sled");
        }
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked = Acknowledged::default();
    let mut errors = Vec::new();
    while (acked.events.len() as u64) < kill_after {
        match rx.recv_timeout(Duration::from_millis(CHILD_SILENCE_MS_MAX)) {
            Ok(line) => {
                if !acked.take(&line) {
                    errors.push(line);
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the child went silent after {} acks; its errors: {errors:?}",
                    acked.events.len()
                )
            }
        }
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    // Lines printed before the kill landed were acknowledged too.
    for line in rx.try_iter() {
        acked.take(&line);
    }
    acked
}

/// Runs one part of the check; a panic in it (sled 0.34 can panic while recovering a
/// power-cut image, docs/design.md) is a loss too, and the next trials should still run.
fn catching(what: &str, report: &mut TrialReport, part: impl FnOnce(&mut TrialReport)) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| part(report)));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        report.losses.push(format!("{what} panicked: {message}"));
    }
}

/// Checks everything acknowledged against the store on the (remounted) filesystem: first
/// read-only (events, verify, timers), then through a reopened engine (keys, topics,
/// offsets).
fn check(store: &Path, acked: &Acknowledged, report: &mut TrialReport) {
    let mut earliest_deadline = None;
    catching("opening the store read-only", report, |report| {
        earliest_deadline = check_store(store, acked, report)
    });
    // A store that lost events would only pile up consequences in the reopened engine.
    if report.losses.is_empty() {
        catching("the reopened engine", report, |report| {
            check_reopened(store, earliest_deadline, acked, report)
        });
    }
    // The engine's recovery and clean close must leave a store that opens again: stop 30's
    // open could store a writes cursor inside a frame, which only the next open refused.
    if report.losses.is_empty() {
        match Journal::open_read_only(store) {
            Ok(journal) if journal.reads_a_private_copy() => report
                .losses
                .push("after the engine's clean close a reader still needs a private copy".into()),
            Ok(_) => {}
            Err(e) => report.losses.push(format!(
                "the store does not open after the engine's close: {e}"
            )),
        }
    }
}

/// The read-only checks; returns the earliest stored timer deadline.
fn check_store(
    store: &Path,
    acked: &Acknowledged,
    report: &mut TrialReport,
) -> Option<DateTime<Utc>> {
    let journal = match Journal::open_read_only(store) {
        Ok(j) => j,
        Err(e) => {
            report.losses.push(format!("the store does not open: {e}"));
            return None;
        }
    };
    let mut by_stream: HashMap<(&str, &str), Vec<&Ack>> = HashMap::new();
    for ack in &acked.events {
        let stream = (ack.aggregate_type.as_str(), ack.id.as_str());
        by_stream.entry(stream).or_default().push(ack);
    }
    for ((aggregate_type, id), acks) in by_stream {
        let stream = StreamId::new(aggregate_type, id);
        let mut records = HashMap::new();
        for record in journal.read_stream(&stream, 1, u64::MAX) {
            match record {
                Ok(r) => {
                    records.insert(r.sequence, r);
                }
                Err(e) => report.losses.push(format!("{stream}: read failed: {e}")),
            }
        }
        for ack in acks {
            report.acks_checked += 1;
            if aggregate_type == ProductStock::TYPE {
                report.stock_acks_checked += 1;
            }
            let Some(record) = records.get(&ack.sequence) else {
                report
                    .losses
                    .push(format!("{stream} #{}: acknowledged, missing", ack.sequence));
                continue;
            };
            let good = record.event_id.to_string() == ack.event_id
                && if aggregate_type == Ledger::TYPE {
                    let event: Result<Appended, _> =
                        evershard_engine::model::codec::decode(&record.payload);
                    matches!(&event, Ok(e) if e.sequence == ack.sequence
                        && e.fill.len() == ack.payload_bytes
                        && e.fill == fill(ack.sequence, ack.payload_bytes as u32))
                } else {
                    repository::decode_record::<ProductStock>(record.clone()).is_ok()
                };
            if !good {
                report.losses.push(format!(
                    "{stream} #{}: acknowledged, stored differently",
                    ack.sequence
                ));
            }
        }
    }
    let verify = journal.verify();
    if !verify.is_clean() {
        report.losses.push(format!("verify: {verify:?}"));
    }
    check_timers(&journal, report);
    let earliest = journal.timers(None).next().and_then(Result::ok);
    earliest.map(|t| t.deadline)
}

/// Every product's stored timer is the one its state asks for: the timer entry is written
/// in the batch of the events that move it, so a cut can keep both or neither, never one.
/// Products with a timer but no events count too (a timer whose events were lost).
fn check_timers(journal: &Journal, report: &mut TrialReport) {
    let mut streams = BTreeSet::new();
    for stream in journal.streams(Some(ProductStock::TYPE)) {
        match stream {
            Ok((stream, _)) => {
                streams.insert(stream);
            }
            Err(e) => report.losses.push(format!("listing products failed: {e}")),
        }
    }
    for timer in journal.timers(None) {
        match timer {
            Ok(t) => {
                streams.insert(t.stream);
            }
            Err(e) => report.losses.push(format!("listing timers failed: {e}")),
        }
    }
    for stream in streams {
        report.timers_checked += 1;
        let wanted = match repository::load::<ProductStock>(journal, &stream, u64::MAX, true) {
            Ok(loaded) => {
                report.expired_by_timers +=
                    repository::read_events::<ProductStock>(journal, &stream, 1, loaded.version)
                        .filter(|e| {
                            matches!(e, Ok(e) if matches!(&e.payload,
                        ProductStockEvent::StockReleased(r) if r.reason == ReleaseReason::Expired))
                        })
                        .count() as u64;
                ProductStock::next_timer(&loaded.state).map(|(deadline, _)| deadline)
            }
            Err(e) => {
                report.losses.push(format!("{stream}: does not load: {e}"));
                continue;
            }
        };
        match journal.timer(&stream) {
            Ok(stored) if stored == wanted => {}
            Ok(stored) => report.losses.push(format!(
                "{stream}: timer stored {stored:?}, its state asks for {wanted:?}"
            )),
            Err(e) => report
                .losses
                .push(format!("{stream}: reading its timer failed: {e}")),
        }
    }
}

/// What a keyed repeat must leave as it was: each product's head, timer and stored keys,
/// and the journal's last position.
fn keyed_state(journal: &Journal) -> Result<(u64, Vec<String>), String> {
    let last = journal
        .stats()
        .map_err(|e| e.to_string())?
        .last_global_position;
    let mut products = Vec::new();
    for stream in journal.streams(Some(ProductStock::TYPE)) {
        let (stream, head) = stream.map_err(|e| e.to_string())?;
        let timer = journal.timer(&stream).map_err(|e| e.to_string())?;
        let keys = journal
            .idempotency_keys(&stream)
            .map_err(|e| e.to_string())?;
        products.push(format!(
            "{stream} head {head} timer {timer:?} keys {keys:?}"
        ));
    }
    Ok((last, products))
}

/// Reopens the engine on the store and checks keys, topics and offsets through it.
fn check_reopened(
    store: &Path,
    earliest_deadline: Option<DateTime<Utc>>,
    acked: &Acknowledged,
    report: &mut TrialReport,
) {
    // The clock stands before every stored deadline (and, the system's time at most, within
    // every key's retention), so that nothing fires or expires while the check runs: a
    // repeat must write nothing.
    let now = earliest_deadline
        .map(|d| d - TimeDelta::microseconds(1))
        .map_or(Utc::now(), |d| d.min(Utc::now()));
    let rt = runtime();
    rt.block_on(async {
        let opened = tokio::time::timeout(
            Duration::from_millis(REOPEN_MS_MAX),
            Engine::builder(store)
                .register::<Ledger>()
                .register::<ProductStock>()
                .durability(Durability::Durable)
                .topic_indexer(true)
                .idempotency_retention_ms(IDEMPOTENCY_RETENTION_MS)
                .clock(Arc::new(ManualClock::new(now)))
                .open(),
        )
        .await;
        let engine = match opened {
            Ok(Ok(engine)) => engine,
            Ok(Err(e)) => {
                report
                    .losses
                    .push(format!("the engine does not reopen: {e}"));
                return;
            }
            Err(_) => {
                report
                    .losses
                    .push(format!("the engine did not reopen in {REOPEN_MS_MAX} ms"));
                return;
            }
        };
        check_keys(&engine, acked, report).await;
        check_topics(&engine, acked, report).await;
        if let Err(e) = engine.shutdown().await {
            report
                .losses
                .push(format!("the engine's shutdown failed: {e}"));
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// Every acknowledged keyed command, repeated with its key, answers what it answered, and
/// writes nothing.
async fn check_keys(engine: &Engine, acked: &Acknowledged, report: &mut TrialReport) {
    let before = keyed_state(engine.journal());
    for keyed in &acked.keyed {
        report.keys_checked += 1;
        let mut metadata = Metadata::new("power-loss-check");
        metadata.idempotency_key = Some(keyed.key);
        let repeat =
            engine.execute_with::<ProductStock>(&keyed.id, keyed.command.clone(), metadata);
        match tokio::time::timeout(Duration::from_millis(REPEAT_MS_MAX), repeat).await {
            Ok(Ok(events)) => {
                let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
                if sequences != keyed.sequences {
                    report.losses.push(format!(
                        "key {} on {}: answered {:?} at first, {sequences:?} after the cut",
                        keyed.key, keyed.id, keyed.sequences
                    ));
                }
            }
            Ok(Err(e)) => report.losses.push(format!(
                "key {} on {}: the repeat failed: {e}",
                keyed.key, keyed.id
            )),
            Err(_) => report.losses.push(format!(
                "key {} on {}: no answer in {REPEAT_MS_MAX} ms",
                keyed.key, keyed.id
            )),
        }
    }
    let after = keyed_state(engine.journal());
    match (before, after) {
        (Ok(before), Ok(after)) if before == after => {}
        (Ok((last_before, before)), Ok((last_after, after))) => {
            let changed: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
            report.losses.push(format!(
                "repeating the keyed commands wrote: last position {last_before} -> {last_after}, now {changed:?}"
            ));
        }
        (before, after) => report.losses.push(format!(
            "reading heads, timers and keys failed: {:?}, {:?}",
            before.err(),
            after.err()
        )),
    }
}

/// Once the indexer covers the journal: every event is in its topic once, in its
/// aggregate's order, where the journal puts it; committed offsets never went back and
/// never lie beyond their partition's end.
async fn check_topics(engine: &Engine, acked: &Acknowledged, report: &mut TrialReport) {
    let journal = engine.journal();
    let last = match journal.stats() {
        Ok(stats) => stats.last_global_position,
        Err(e) => {
            report.losses.push(format!("journal stats failed: {e}"));
            return;
        }
    };
    let wait = Duration::from_millis(INDEX_CATCH_UP_MS_MAX);
    if !engine.wait_indexed(last, wait).await {
        report.losses.push(format!(
            "the indexer did not reach position {last} in {INDEX_CATCH_UP_MS_MAX} ms (at {:?})",
            engine.indexed_through()
        ));
        return;
    }
    // The journal's events by global position, each to be met once in the topics.
    let mut unseen: BTreeMap<u64, (StreamId, u64)> = BTreeMap::new();
    for entry in journal.read_global(1) {
        match entry {
            Ok((position, stream, sequence)) => {
                unseen.insert(position, (stream, sequence));
            }
            Err(e) => {
                report
                    .losses
                    .push(format!("reading the global log failed: {e}"));
                return;
            }
        }
    }
    let log = match engine.topic_log() {
        Ok(log) => log,
        Err(e) => {
            report.losses.push(format!("the topic log failed: {e}"));
            return;
        }
    };
    let topics = match log.topics() {
        Ok(t) => t,
        Err(e) => {
            report.losses.push(format!("listing topics failed: {e}"));
            return;
        }
    };
    // Each aggregate's last sequence met, and the (topic, partition) it was met in.
    let mut last_seen: HashMap<StreamId, (String, u32, u64)> = HashMap::new();
    for info in &topics {
        for (partition, &end) in info.end_offsets.iter().enumerate() {
            let partition = partition as u32;
            let mut offset = 0;
            while offset < end {
                let batch = match log.read(&info.name, partition, offset, TOPIC_READ_MESSAGES_MAX) {
                    Ok(b) if !b.is_empty() => b,
                    Ok(_) => {
                        report.losses.push(format!(
                            "{}/{partition}: nothing at offset {offset} before its end {end}",
                            info.name
                        ));
                        break;
                    }
                    Err(e) => {
                        report
                            .losses
                            .push(format!("{}/{partition}: read failed: {e}", info.name));
                        break;
                    }
                };
                for m in batch {
                    report.topic_messages_checked += 1;
                    let at = format!("{}/{partition}@{}", info.name, m.offset);
                    if m.offset != offset {
                        report
                            .losses
                            .push(format!("{at}: expected offset {offset}"));
                    }
                    offset = m.offset + 1;
                    let stream = StreamId::new(m.aggregate_type(), m.key());
                    let own_topic = match m.aggregate_type() {
                        t if t == Ledger::TYPE => Appended::TOPIC,
                        t if t == ProductStock::TYPE => product_stock::TOPIC,
                        _ => "none",
                    };
                    if info.name != own_topic {
                        report.losses.push(format!(
                            "{at}: {stream} #{} belongs in topic {own_topic}",
                            m.sequence
                        ));
                    }
                    match unseen.remove(&m.global_position) {
                        Some((s, q)) if s == stream && q == m.sequence => {}
                        Some((s, q)) => report.losses.push(format!(
                            "{at}: {stream} #{} at position {}, where the journal has {s} #{q}",
                            m.sequence, m.global_position
                        )),
                        None => report.losses.push(format!(
                            "{at}: {stream} #{} at position {}: not in the journal, or twice",
                            m.sequence, m.global_position
                        )),
                    }
                    let here = (info.name.clone(), partition, m.sequence);
                    if let Some((t, p, q)) = last_seen.insert(stream.clone(), here) {
                        if (t.as_str(), p) != (info.name.as_str(), partition) || q >= m.sequence {
                            report.losses.push(format!(
                                "{at}: {stream} #{} after #{q} in {t}/{p}: out of its order",
                                m.sequence
                            ));
                        }
                    }
                }
            }
        }
    }
    for (position, (stream, sequence)) in unseen.iter().take(5) {
        report.losses.push(format!(
            "{stream} #{sequence} (position {position}) is in no topic"
        ));
    }
    if unseen.len() > 5 {
        let more = unseen.len() - 5;
        report
            .losses
            .push(format!("… {more} more events in no topic"));
    }
    check_offsets(&log, &topics, acked, report);
}

fn check_offsets(
    log: &evershard_engine::TopicLog,
    topics: &[evershard_engine::TopicInfo],
    acked: &Acknowledged,
    report: &mut TrialReport,
) {
    let committed: HashMap<(String, u32), u64> = match log.committed_offsets() {
        Ok(all) => all
            .into_iter()
            .filter(|(group, ..)| group == CONSUMER_GROUP)
            .map(|(_, topic, p, o)| ((topic, p), o))
            .collect(),
        Err(e) => {
            report
                .losses
                .push(format!("reading committed offsets failed: {e}"));
            return;
        }
    };
    let mut acknowledged: HashMap<(String, u32), u64> = HashMap::new();
    for o in &acked.offsets {
        let highest = acknowledged
            .entry((o.topic.clone(), o.partition))
            .or_default();
        *highest = (*highest).max(o.offset);
    }
    for ((topic, partition), offset) in &acknowledged {
        report.offsets_checked += 1;
        match committed.get(&(topic.clone(), *partition)) {
            Some(stored) if stored >= offset => {}
            stored => report.losses.push(format!(
                "{CONSUMER_GROUP} on {topic}/{partition}: committed {offset} acknowledged, {stored:?} stored"
            )),
        }
    }
    for ((topic, partition), stored) in &committed {
        let end = topics
            .iter()
            .find(|t| t.name == *topic)
            .and_then(|t| t.end_offsets.get(*partition as usize));
        if end.is_none_or(|end| stored > end) {
            report.losses.push(format!(
                "{CONSUMER_GROUP} on {topic}/{partition}: committed {stored}, beyond the partition's end {end:?}"
            ));
        }
    }
}

/// One trial: a fresh filesystem and store, `ROUNDS_PER_TRIAL` kills and power cuts.
/// The bytes of evershard's marker file `EVERSHARD` (journal/probe.rs), an on-disk format.
const MARKER_FILE_CONTENTS: &[u8] = b"evershard store; journal format evershard-journal-v1\n";

/// sled 0.34's `conf` for its default 512 KiB segments, which every store made before
/// evershard chose its own segment size has (`tests/fixtures/store/`).
const LEGACY_CONF: &[u8] = include_bytes!("../../../tests/fixtures/store/sled-0.34-conf-512k");

/// Prepares `store` as the start of a store of sled's default segment size, as evershard made
/// them before it chose its own: the marker file and that `conf`, synced. The engine then
/// opens it with the size its `conf` names, and sled writes blob files for large tree nodes.
fn make_legacy_store(store: &Path) {
    std::fs::create_dir(store).unwrap();
    for (name, bytes) in [("EVERSHARD", MARKER_FILE_CONTENTS), ("conf", LEGACY_CONF)] {
        let mut f = std::fs::File::create(store.join(name)).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::File::open(store).unwrap().sync_all().unwrap();
    std::fs::File::open(store.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
}

fn blob_files(store: &Path) -> u64 {
    std::fs::read_dir(store.join("blobs")).map_or(0, |d| d.count() as u64)
}

/// The mutations of the blob syncs need blob files: their trials run on a store of sled's
/// default segment size (a store made before evershard chose its own), since a store of
/// evershard's size has none.
fn needs_legacy_store(skip_sync: Option<&str>) -> bool {
    matches!(skip_sync, Some("blob" | "blobdir"))
}

fn trial(seed: u64, skip_sync: Option<&str>) -> TrialReport {
    // One trial at a time in this process: the tests share two cores with everything else,
    // and a child's timing should not depend on how many other children run.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = SplitMix64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path().join("mnt");
    std::fs::create_dir(&at).unwrap();
    let fs = LossyFs::new();
    let mut mount = fs.mount(&at).unwrap();
    let store = at.join("store");
    if needs_legacy_store(skip_sync) {
        make_legacy_store(&store);
    }
    let epoch = Utc::now();
    let mut report = TrialReport::default();
    let mut acked = Acknowledged::default();
    for _round in 0..ROUNDS_PER_TRIAL {
        let kill_after = ACKS_BEFORE_KILL_MIN + rng.below(ACKS_BEFORE_KILL_SPREAD);
        let delay_ms = rng.below(50);
        acked.extend(run_child(
            &store,
            epoch,
            rng.next_u64(),
            skip_sync,
            kill_after,
            delay_ms,
        ));
        report.blob_files_seen += blob_files(&store);
        let dump = dump_dir(seed);
        if let Some(d) = &dump {
            copy_store(
                &store,
                &d.join(format!("cut{}-volatile", report.power_cuts + 1)),
            );
        }
        mount.unmount().unwrap();
        let force = std::env::var("EVERSHARD_POWER_TORN").ok();
        let torn = if force.as_deref() == Some("loseall") || (force.is_none() && rng.below(2) == 0)
        {
            TornWrites::LoseAll
        } else {
            TornWrites::RandomPrefix {
                seed: rng.next_u64(),
            }
        };
        fs.power_loss(torn);
        report.power_cuts += 1;
        if std::env::var_os("EVERSHARD_POWER_DEBUG").is_some() {
            eprintln!("  cut {}: {torn:?}, {:?}", report.power_cuts, fs.stats());
        }
        mount = fs.mount(&at).unwrap();
        if let Some(d) = &dump {
            copy_store(&store, &d.join(format!("cut{}-durable", report.power_cuts)));
            let lines = acked.lines();
            std::fs::write(
                d.join(format!("cut{}-acks", report.power_cuts)),
                lines.join("\n"),
            )
            .unwrap();
        }
        check(&store, &acked, &mut report);
        if !report.losses.is_empty() {
            break;
        }
    }
    mount.unmount().unwrap();
    if let Some(d) = dump_dir(seed).filter(|_| report.losses.is_empty()) {
        let _ = std::fs::remove_dir_all(d);
    }
    report
}

/// With `EVERSHARD_POWER_DUMP=<dir>`, each trial copies the store before and after each
/// power cut, with the acknowledgements so far, to `<dir>/<seed>/` (removed when the trial
/// loses nothing): `check_dumped_store` checks such a copy again, and sled can be traced on it.
fn dump_dir(seed: u64) -> Option<std::path::PathBuf> {
    let d = Path::new(&std::env::var_os("EVERSHARD_POWER_DUMP")?).join(seed.to_string());
    std::fs::create_dir_all(&d).unwrap();
    Some(d)
}

fn copy_store(store: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(store).arg(to).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "copying the store failed"
    );
}

fn base_seed() -> u64 {
    std::env::var("EVERSHARD_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x90_17e4_c0de)
}

fn print_losses(seed: u64, report: &TrialReport) {
    for loss in report.losses.iter().take(5) {
        eprintln!("  seed {seed}: {loss}");
    }
    if report.losses.len() > 5 {
        eprintln!("  seed {seed}: … {} more", report.losses.len() - 5);
    }
}

#[test]
fn power_loss_loses_nothing_acknowledged() {
    if !fuse_or_skip("the power-loss test") {
        return;
    }
    let base = base_seed();
    let trials = if std::env::var("EVERSHARD_POWER_SEED").is_ok() {
        1
    } else {
        TRIALS_COUNT
    };
    for i in 0..trials {
        let seed = base.wrapping_add(i);
        let started = Instant::now();
        let report = trial(seed, None);
        eprintln!(
            "power-loss trial seed {seed} (EVERSHARD_POWER_SEED={seed} replays it): {} cuts, {}, {} losses, {:?}",
            report.power_cuts,
            report.checked(),
            report.losses.len(),
            started.elapsed()
        );
        print_losses(seed, &report);
        assert!(
            report.losses.is_empty(),
            "seed {seed}: acknowledged data lost"
        );
        assert_eq!(
            report.blob_files_seen, 0,
            "seed {seed}: sled wrote blob files in a store of evershard's segment size"
        );
    }
}

/// Runs trials with `skip_sync` until one detects a loss; fails if none does.
fn mutation_is_detected(skip_sync: &str) {
    if !fuse_or_skip("the power-loss test") {
        return;
    }
    let base = base_seed() ^ 0xdead;
    for i in 0..MUTATION_TRIALS_MAX {
        let seed = base.wrapping_add(i);
        let report = trial(seed, Some(skip_sync));
        eprintln!(
            "mutation {SKIP_SYNC_ENV}={skip_sync}, trial seed {seed}: {} cuts, {}, {} losses",
            report.power_cuts,
            report.checked(),
            report.losses.len()
        );
        if !report.losses.is_empty() {
            print_losses(seed, &report);
            return;
        }
    }
    panic!(
        "with {SKIP_SYNC_ENV}={skip_sync} no trial of {MUTATION_TRIALS_MAX} lost acknowledged data: \
         the power-loss test cannot see this sync missing"
    );
}

#[test]
fn power_loss_detects_a_missing_fdatasync() {
    mutation_is_detected("fdatasync");
}

#[test]
fn power_loss_detects_missing_blob_syncs() {
    mutation_is_detected("blob");
}

#[test]
fn power_loss_detects_a_missing_blob_directory_sync() {
    mutation_is_detected("blobdir");
}

#[test]
fn power_loss_detects_a_missing_store_directory_sync() {
    mutation_is_detected("dir");
}

/// The checks are not vacuous: on a store a killed child left on an ordinary disk (no
/// power cut, so nothing is lost), each new check passes, and then reports the loss it
/// exists for when the acknowledgements or the store are made to disagree — a keyed
/// command answered otherwise, a committed offset that went back, an event in no topic, a
/// timer without its events. (Lost events and `verify` are proven by the mutation tests.)
/// Needs no FUSE.
#[test]
fn the_checks_see_each_kind_of_loss() {
    let seed = base_seed() ^ 0xc4ec;
    eprintln!(
        "checker self-test seed {seed} (EVERSHARD_POWER_SEED={} replays it)",
        seed ^ 0xc4ec
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let epoch = Utc::now();
    let mut rng = SplitMix64(seed);
    let mut acked = Acknowledged::default();
    // Rounds until the child has acknowledged a keyed receipt (always accepted, so a repeat
    // decided afresh writes) and offset commits.
    let keyed_receipt = |acked: &Acknowledged| {
        acked
            .keyed
            .iter()
            .find(|k| matches!(k.command, ProductStockCommand::ReceiveStock(_)))
            .cloned()
    };
    for _round in 0..5 {
        if keyed_receipt(&acked).is_some() && !acked.offsets.is_empty() {
            break;
        }
        let kill_after = 200 + rng.below(ACKS_BEFORE_KILL_SPREAD);
        acked.extend(run_child(
            &store,
            epoch,
            rng.next_u64(),
            None,
            kill_after,
            50,
        ));
    }
    assert!(
        keyed_receipt(&acked).is_some(),
        "seed {seed}: no keyed receipt in {} keyed commands",
        acked.keyed.len()
    );
    assert!(
        !acked.offsets.is_empty(),
        "seed {seed}: the child acknowledged {} keyed commands and {} offset commits",
        acked.keyed.len(),
        acked.offsets.len()
    );
    let losses = |acked: &Acknowledged| {
        let mut report = TrialReport::default();
        check(&store, acked, &mut report);
        report
    };

    let honest = losses(&acked);
    eprintln!("  honest: {}, losses {:?}", honest.checked(), honest.losses);
    assert!(honest.losses.is_empty(), "seed {seed}: {:?}", honest.losses);
    assert!(honest.keys_checked > 0 && honest.offsets_checked > 0 && honest.timers_checked > 0);

    let expect = |what: &str, report: TrialReport, needle: &str| {
        eprintln!("  {what}: {:?}", report.losses);
        assert!(
            report.losses.iter().any(|l| l.contains(needle)),
            "seed {seed}: {what} was not reported (wanted {needle:?}): {:?}",
            report.losses
        );
    };
    let mut lied = acked.clone();
    lied.keyed[0].sequences.push(u64::MAX);
    expect(
        "a key answered otherwise",
        losses(&lied),
        "18446744073709551615] at first",
    );
    let mut lied = acked.clone();
    let went_back = acked.offsets[0].clone();
    lied.offsets.push(Offset {
        offset: u64::MAX,
        ..went_back
    });
    expect("an offset gone back", losses(&lied), "acknowledged, Some(");

    // The store made to disagree, through the journal's test-only writer.
    let writer = evershard_engine::JournalWriter::open(&store, Default::default()).unwrap();
    let ghost = StreamId::new("Unpublished", "ghost");
    let event = evershard_engine::NewEvent {
        event_id: Uuid::from_u128(1),
        event_type: "Ghosted".into(),
        event_version: "1.0".into(),
        timestamp: Utc::now(),
        correlation_id: Uuid::from_u128(2),
        causation_id: None,
        source: "power-loss-check".into(),
        user_id: None,
        session_id: None,
        audit_context: None,
        payload: vec![0xc0],
    };
    let request = evershard_engine::AppendRequest::new(ghost, 0, vec![event]);
    writer.append_blocking(request).unwrap();
    writer.close().unwrap();
    drop(writer);
    expect("an event in no topic", losses(&acked), "is in no topic");

    // Every idempotency record swept: an engine whose retention is zero, with a clock a year
    // ahead (the child's clock ran faster than real time) and no aggregate type registered,
    // so that no timer fires. The repeats are then decided afresh and write, which a repeat
    // must not. (A record written again with an older time would not do: the newest record
    // of a key answers.)
    let rt = runtime();
    rt.block_on(async {
        let engine = Engine::builder(&store)
            .durability(Durability::Durable)
            .idempotency_retention_ms(0)
            .clock(Arc::new(ManualClock::new(epoch + TimeDelta::days(365))))
            .open()
            .await
            .unwrap();
        // (The scheduler's first pass may have swept them already.)
        engine.sweep_idempotency_keys().await.unwrap();
        engine.shutdown().await.unwrap();
    });
    drop(rt);
    expect(
        "a key that no longer answers",
        losses(&acked),
        "repeating the keyed commands wrote",
    );

    let writer = evershard_engine::JournalWriter::open(&store, Default::default()).unwrap();
    let product = StreamId::new(ProductStock::TYPE, "sku-without-events");
    let mut request = evershard_engine::AppendRequest::new(product.clone(), 0, vec![]);
    request.extra_writes =
        evershard_engine::keyspace_writes::timer(&product, Utc::now() + TimeDelta::days(1));
    writer.append_blocking(request).unwrap();
    writer.close().unwrap();
    drop(writer);
    expect(
        "a timer without its events",
        losses(&acked),
        "its state asks for None",
    );
}

#[test]
#[ignore = "soak: cargo test --release -p evershard-lossyfs -- --ignored soak (EVERSHARD_SOAK_MINUTES)"]
fn soak_power_loss() {
    if !fuse_or_skip("the power-loss test") {
        return;
    }
    let minutes: u64 = std::env::var("EVERSHARD_SOAK_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let base = base_seed() ^ 0x50a6;
    let (mut trials, mut cuts, mut checked, mut lossy) = (0u64, 0u64, 0u64, 0u64);
    let (mut timers, mut keys, mut messages, mut offsets) = (0u64, 0u64, 0u64, 0u64);
    let mut blobs = 0u64;
    while Instant::now() < deadline {
        let seed = base.wrapping_add(trials);
        let report = trial(seed, None);
        trials += 1;
        cuts += report.power_cuts;
        checked += report.acks_checked;
        timers += report.timers_checked;
        keys += report.keys_checked;
        messages += report.topic_messages_checked;
        offsets += report.offsets_checked;
        blobs += report.blob_files_seen;
        if !report.losses.is_empty() {
            lossy += 1;
            eprintln!("soak: seed {seed} LOST acknowledged data");
            print_losses(seed, &report);
        }
        eprintln!("soak: {trials} trials, {cuts} power cuts, {checked} acknowledged events, {timers} timers, {keys} keys, {messages} topic messages, {offsets} offsets checked, {blobs} blob files seen, {lossy} trials with losses");
    }
    println!("soak: {trials} trials, {cuts} power cuts, {checked} acknowledged events, {timers} timers, {keys} keys, {messages} topic messages, {offsets} offsets checked, {blobs} blob files seen, {lossy} trials with losses");
    assert_eq!(
        lossy, 0,
        "acknowledged data lost in {lossy} of {trials} trials"
    );
    assert_eq!(
        blobs, 0,
        "sled wrote blob files in a store of evershard's segment size"
    );
}

/// Checks a store copied by `EVERSHARD_POWER_DUMP` (`EVERSHARD_POWER_CHECK_DIR`, a copy: sled's
/// recovery writes) against its acknowledgements (`EVERSHARD_POWER_CHECK_ACKS`).
#[test]
#[ignore = "debug aid: EVERSHARD_POWER_CHECK_DIR=<copy> EVERSHARD_POWER_CHECK_ACKS=<cutN-acks>"]
fn check_dumped_store() {
    let Some(dir) = std::env::var_os("EVERSHARD_POWER_CHECK_DIR") else {
        return;
    };
    let acks = std::env::var("EVERSHARD_POWER_CHECK_ACKS").unwrap();
    let mut acked = Acknowledged::default();
    for line in std::fs::read_to_string(acks).unwrap().lines() {
        acked.take(line);
    }
    let mut report = TrialReport::default();
    check(Path::new(&dir), &acked, &mut report);
    print_losses(0, &report);
    assert!(report.losses.is_empty(), "{} losses", report.losses.len());
}

/// A runtime of two workers, as the child and the checks run engines.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
