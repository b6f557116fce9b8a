//! Power loss under load loses nothing acknowledged — and this test can tell when it would.
//!
//! How: each trial mounts a fresh `lossyfs` (writes stay volatile until fsync; names until
//! their directory's fsync) and re-runs this test binary as a child process that opens a
//! durable `Engine` in a new store on the mount and drives it with `CLIENTS_COUNT`
//! concurrent clients over `AGGREGATES_COUNT` aggregates (a quarter of them with events
//! near the payload limit, so that sled writes blob files). After each acknowledged
//! command the child prints `ack <id> <sequence> <event id> <payload bytes>` on its stdout,
//! a pipe outside the mount. At a random moment the parent SIGKILLs the child, unmounts,
//! cuts the power (all unsynced state dropped, or — half the rounds — random prefixes of
//! unsynced writes kept), mounts the durable image, and checks that every acknowledged
//! event is there with its sequence, event id and payload, and that `Journal::verify` is
//! clean. Each trial runs `ROUNDS_PER_TRIAL` rounds on the same store, so recovery after a
//! power cut is itself cut. Seeds are printed; `EVERSHARD_POWER_SEED` replays one trial.
//!
//! The mutation tests run the same trials with a sync removed from the engine
//! (`EVERSHARD_FAULT_SKIP_SYNC`, read only with the engine's `fault-injection` feature) and
//! assert that some trial detects the loss: proof that the crash test sees a missing sync.
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

use evershard_engine::model::{Aggregate, DecideContext, DomainEvent};
use evershard_engine::{Durability, Engine, Journal, StreamId};
use evershard_lossyfs::model::SplitMix64;
use evershard_lossyfs::{fuse_usable, LossyFs, TornWrites};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_DIR_ENV: &str = "EVERSHARD_POWER_CHILD_DIR";
const CHILD_SEED_ENV: &str = "EVERSHARD_POWER_CHILD_SEED";
const SKIP_SYNC_ENV: &str = "EVERSHARD_FAULT_SKIP_SYNC";
const CLIENTS_COUNT: u64 = 64;
const AGGREGATES_COUNT: u64 = 24;
/// Aggregates `big-*` (one in four) carry payloads this large, near the journal's 64 KiB
/// limit: sled consolidates their tree nodes into items over its blob threshold.
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

impl DomainEvent for Appended {
    fn event_type(&self) -> &'static str {
        "Appended"
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "test.ledger"
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

#[test]
#[ignore = "run by the power-loss tests as a child process"]
fn power_loss_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let engine = Engine::builder(&dir)
            .register::<Ledger>()
            .durability(Durability::Durable)
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
                                let line = format!(
                                    "ack {} {} {} {}",
                                    e.aggregate_id,
                                    e.sequence,
                                    e.event_id,
                                    e.payload.fill.len()
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
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------
// The parent.

#[derive(Clone, Debug)]
struct Ack {
    id: String,
    sequence: u64,
    event_id: String,
    payload_bytes: usize,
}

impl Ack {
    /// The line the child printed.
    fn line(&self) -> String {
        format!(
            "ack {} {} {} {}",
            self.id, self.sequence, self.event_id, self.payload_bytes
        )
    }
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    Some(Ack {
        id: parts.next()?.to_owned(),
        sequence: parts.next()?.parse().ok()?,
        event_id: parts.next()?.to_owned(),
        payload_bytes: parts.next()?.parse().ok()?,
    })
}

#[derive(Debug, Default)]
struct TrialReport {
    power_cuts: u64,
    acks_checked: u64,
    /// Each acknowledged event missing or wrong, or the store not opening, or verify issues.
    losses: Vec<String>,
}

fn fuse_or_skip() -> bool {
    match fuse_usable() {
        Ok(()) => true,
        Err(why) if std::env::var("EVERSHARD_REQUIRE_FUSE").as_deref() == Ok("1") => {
            panic!("FUSE is required (EVERSHARD_REQUIRE_FUSE=1) but unusable: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: FUSE is not usable here ({why}); the power-loss test did not run");
            false
        }
    }
}

/// Runs the child until `kill_after` acks (and a random few milliseconds more), kills it,
/// and returns every ack it printed.
fn run_child(
    store: &Path,
    seed: u64,
    skip_sync: Option<&str>,
    kill_after: u64,
    delay_ms: u64,
) -> Vec<Ack> {
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
    .env_remove(SKIP_SYNC_ENV)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(what) = skip_sync {
        cmd.env(SKIP_SYNC_ENV, what);
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
    let mut acks = Vec::new();
    let mut errors = Vec::new();
    while (acks.len() as u64) < kill_after {
        match rx.recv_timeout(Duration::from_millis(CHILD_SILENCE_MS_MAX)) {
            Ok(line) => match parse_ack(&line) {
                Some(ack) => acks.push(ack),
                None => errors.push(line),
            },
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the child went silent after {} acks; its errors: {errors:?}",
                    acks.len()
                )
            }
        }
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    // Acks printed before the kill landed were acknowledged too.
    acks.extend(rx.try_iter().filter_map(|l| parse_ack(&l)));
    acks
}

/// Checks every acknowledged event against the store on the (remounted) filesystem.
fn check(store: &Path, acked: &[Ack], report: &mut TrialReport) {
    // sled 0.34 can panic while recovering a power-cut image (docs/design.md): that is a
    // lost store too, and the next trials should still run.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_store(store, acked, report)
    }));
    if let Err(panic) = outcome {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        report
            .losses
            .push(format!("opening the store panicked: {what}"));
    }
}

fn check_store(store: &Path, acked: &[Ack], report: &mut TrialReport) {
    let journal = match Journal::open_read_only(store) {
        Ok(j) => j,
        Err(e) => {
            report.losses.push(format!("the store does not open: {e}"));
            return;
        }
    };
    let mut by_id: HashMap<&str, Vec<&Ack>> = HashMap::new();
    for ack in acked {
        by_id.entry(ack.id.as_str()).or_default().push(ack);
    }
    for (id, acks) in by_id {
        let stream = StreamId::new(Ledger::TYPE, id);
        let mut records = HashMap::new();
        for record in journal.read_stream(&stream, 1, u64::MAX) {
            match record {
                Ok(r) => {
                    records.insert(r.sequence, r);
                }
                Err(e) => report.losses.push(format!("{id}: read failed: {e}")),
            }
        }
        for ack in acks {
            report.acks_checked += 1;
            let Some(record) = records.get(&ack.sequence) else {
                report
                    .losses
                    .push(format!("{id} #{}: acknowledged, missing", ack.sequence));
                continue;
            };
            let event: Result<Appended, _> =
                evershard_engine::model::codec::decode(&record.payload);
            let good = record.event_id.to_string() == ack.event_id
                && matches!(&event, Ok(e) if e.sequence == ack.sequence
                    && e.fill.len() == ack.payload_bytes
                    && e.fill == fill(ack.sequence, ack.payload_bytes as u32));
            if !good {
                report.losses.push(format!(
                    "{id} #{}: acknowledged, stored differently",
                    ack.sequence
                ));
            }
        }
    }
    let verify = journal.verify();
    if !verify.is_clean() {
        report.losses.push(format!("verify: {verify:?}"));
    }
}

/// One trial: a fresh filesystem and store, `ROUNDS_PER_TRIAL` kills and power cuts.
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
    let mut report = TrialReport::default();
    let mut acked = Vec::new();
    for _round in 0..ROUNDS_PER_TRIAL {
        let kill_after = ACKS_BEFORE_KILL_MIN + rng.below(ACKS_BEFORE_KILL_SPREAD);
        let delay_ms = rng.below(50);
        acked.extend(run_child(
            &store,
            rng.next_u64(),
            skip_sync,
            kill_after,
            delay_ms,
        ));
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
            let lines: Vec<String> = acked.iter().map(Ack::line).collect();
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
    if !fuse_or_skip() {
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
            "power-loss trial seed {seed} (EVERSHARD_POWER_SEED={seed} replays it): {} cuts, {} acks checked, {} losses, {:?}",
            report.power_cuts,
            report.acks_checked,
            report.losses.len(),
            started.elapsed()
        );
        print_losses(seed, &report);
        assert!(
            report.losses.is_empty(),
            "seed {seed}: acknowledged data lost"
        );
    }
}

/// Runs trials with `skip_sync` until one detects a loss; fails if none does.
fn mutation_is_detected(skip_sync: &str) {
    if !fuse_or_skip() {
        return;
    }
    let base = base_seed() ^ 0xdead;
    for i in 0..MUTATION_TRIALS_MAX {
        let seed = base.wrapping_add(i);
        let report = trial(seed, Some(skip_sync));
        eprintln!(
            "mutation {SKIP_SYNC_ENV}={skip_sync}, trial seed {seed}: {} cuts, {} acks checked, {} losses",
            report.power_cuts,
            report.acks_checked,
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

#[test]
#[ignore = "soak: cargo test --release -p evershard-lossyfs -- --ignored soak (EVERSHARD_SOAK_MINUTES)"]
fn soak_power_loss() {
    if !fuse_or_skip() {
        return;
    }
    let minutes: u64 = std::env::var("EVERSHARD_SOAK_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let base = base_seed() ^ 0x50a6;
    let (mut trials, mut cuts, mut checked, mut lossy) = (0u64, 0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        let seed = base.wrapping_add(trials);
        let report = trial(seed, None);
        trials += 1;
        cuts += report.power_cuts;
        checked += report.acks_checked;
        if !report.losses.is_empty() {
            lossy += 1;
            eprintln!("soak: seed {seed} LOST acknowledged data");
            print_losses(seed, &report);
        }
        eprintln!("soak: {trials} trials, {cuts} power cuts, {checked} acknowledged events checked, {lossy} trials with losses");
    }
    println!("soak: {trials} trials, {cuts} power cuts, {checked} acknowledged events checked, {lossy} trials with losses");
    assert_eq!(
        lossy, 0,
        "acknowledged data lost in {lossy} of {trials} trials"
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
    let acked: Vec<Ack> = std::fs::read_to_string(acks)
        .unwrap()
        .lines()
        .filter_map(parse_ack)
        .collect();
    let mut report = TrialReport::default();
    check(Path::new(&dir), &acked, &mut report);
    print_losses(0, &report);
    assert!(report.losses.is_empty(), "{} losses", report.losses.len());
}
