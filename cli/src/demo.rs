//! `evershard demo`: drives a generated workload through a real engine, restarts it, and
//! checks that every aggregate recovers to exactly the state it had.
//!
//! Determinism: aggregate ids derive from (type, index) and each aggregate draws its commands
//! from its own [`DemoRng`] stream seeded by (seed, type, id). One client task issues all of
//! an aggregate's commands, one at a time, so the commands an aggregate receives do not depend
//! on how the clients interleave or on `--clients`. (They do depend on the clock where a
//! workload looks at deadlines, as `decide` runs on the system clock.) On a store that holds
//! earlier runs, the streams are seeded by (seed, the store's size) instead ([`run_seed`]):
//! the same seed's streams again would draw an earlier run's idempotency keys (Order's
//! `CreateOrder` key) for other commands and other orders, which the engine refuses.
//!
//! The check after the workload, per aggregate:
//! 1. the state the client folded from the events `execute` returned equals `engine.state`
//!    (captured as the pre-restart state);
//! 2. after `shutdown` and a fresh engine on the same store, `engine.state` (recovery from
//!    snapshot + tail) equals the pre-restart state and version;
//! 3. a full replay from the journal without snapshots (`repository::load(.., false)`) equals
//!    it too. Finally the journal's own `verify` must be clean.
//!
//! Timers are real: the engine runs on the demo's clock, the system clock plus an offset.
//! After the workload the demo moves that clock [`DEMO_TIMER_ADVANCE_MINUTES`] ahead — past
//! every reservation's 30-minute TTL and every order's deadline — fires the due timers
//! through the engine (`run_due_timers`) and prints how many fired; each client then folds
//! the timer's events (source `evershard-timer`) into the state it expects before the check.

use crate::error::CliError;
use crate::registry::{dispatch, resolve, visit_all, TypeOp};
use crate::{DemoArgs, DurabilityArg, Outcome};
use evershard_aggregates::order_saga::OrderSaga;
use evershard_aggregates::payment::{Payment, PaymentDuplicateGuard};
use evershard_engine::model::{
    Aggregate, DecideContext, DemoRng, Metadata, Workload, WorkloadVisitor,
};
use evershard_engine::{
    repository, Clock, CommandError, Durability, Engine, EngineBuilder, Journal, SnapshotPolicy,
    StorageError, StreamId, SystemClock,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A boxed, sendable future: what type-erased drivers return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How far the demo moves its clock after the workload so that real timers come due.
pub const DEMO_TIMER_ADVANCE_MINUTES: i64 = 31;

/// The source of the events a timer's command writes (see the engine).
const TIMER_SOURCE: &str = "evershard-timer";

/// The demo's clock: the system clock plus an offset that only moves forward.
#[derive(Debug, Default)]
struct DemoClock {
    offset_micros: std::sync::atomic::AtomicI64,
}

impl DemoClock {
    fn advance(&self, by: chrono::TimeDelta) {
        let micros = by.num_microseconds().unwrap_or(i64::MAX);
        self.offset_micros
            .fetch_add(micros, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the clock to `at` if it is behind it.
    fn not_before(&self, at: chrono::DateTime<chrono::Utc>) {
        let behind = at - self.now();
        if behind > chrono::TimeDelta::zero() {
            self.advance(behind);
        }
    }
}

/// Events of the store's tail whose latest timestamp [`store_time`] looks for.
const STORE_TIME_EVENTS_MAX: u64 = 1_000;

/// The latest timestamp among the store's last events (None on an empty store). An earlier
/// run moved its demo clock ahead (timers, the saga phase), so a new run on the same store
/// starts its clock there: time on one store only moves forward, and a consumer group
/// started at "now" (the saga phase) does not take an earlier run's later-stamped events for
/// new ones.
fn store_time(journal: &Journal) -> Result<Option<chrono::DateTime<chrono::Utc>>, StorageError> {
    let last = journal.durable_position();
    if last == 0 {
        return Ok(None);
    }
    let mut latest = None;
    for entry in journal.read_global(last.saturating_sub(STORE_TIME_EVENTS_MAX).max(1)) {
        let (_, stream, sequence) = entry?;
        if let Some(record) = journal.read_stream(&stream, sequence, sequence).next() {
            let at = record?.timestamp;
            latest = latest.max(Some(at));
        }
    }
    Ok(latest)
}

impl Clock for DemoClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let offset = self.offset_micros.load(std::sync::atomic::Ordering::SeqCst);
        SystemClock.now() + chrono::TimeDelta::microseconds(offset)
    }
}

/// The one demo clock of this process: the engine's and the drivers'.
fn demo_clock() -> &'static std::sync::Arc<DemoClock> {
    static CLOCK: std::sync::OnceLock<std::sync::Arc<DemoClock>> = std::sync::OnceLock::new();
    CLOCK.get_or_init(Default::default)
}

/// The `source` recorded in every event the demo writes.
pub const DEMO_SOURCE: &str = "evershard-demo";
/// `--durability buffered` acknowledges before the flush; sled flushes this often.
pub const BUFFERED_FLUSH_EVERY_MS: u64 = 200;
/// Retries of a command refused with a retryable error (conflict, overload).
const RETRIES_MAX: u32 = 5;
const RETRY_BACKOFF_MS: u64 = 20;
/// A driver that draws this many ids of finished aggregates in a row (from earlier runs on
/// the same store) gives up: the store is then full of this seed's finished aggregates.
const FRESH_ID_ATTEMPTS_MAX: u32 = 10_000;
/// Failures and mismatches listed in full; the rest are counted.
const LISTED_MAX: usize = 20;

/// What one command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Accepted {
        events: u64,
    },
    Rejected,
    /// Not a domain rejection: a handler panic, a retryable error that kept failing, or events
    /// that do not continue the client's sequence. The demo fails at the end.
    Failed(String),
}

/// One aggregate instance in the demo, type-erased. `Err(String)` is fatal for the run (the
/// engine or the store stopped working).
pub trait Driver: Send + Sync {
    /// The aggregate the next command goes to.
    fn stream(&self) -> StreamId;
    /// How many aggregate instances this driver has worked on (finished ones included).
    fn instances(&self) -> usize;
    /// The version (last sequence) of every instance this driver has worked on.
    fn versions(&self) -> Vec<u64>;
    /// Loads the current state through the engine (the store may hold earlier runs).
    fn init<'a>(&'a mut self, engine: &'a Engine) -> BoxFuture<'a, Result<(), String>>;
    /// Generates and executes one command, folding the returned events into the state the
    /// client expects.
    fn step<'a>(&'a mut self, engine: &'a Engine) -> BoxFuture<'a, Result<Step, String>>;
    /// Reads `engine.state`, keeps it as the pre-restart state and compares it with the
    /// client's fold. Returns mismatches.
    fn capture<'a>(&'a mut self, engine: &'a Engine) -> BoxFuture<'a, Result<Vec<String>, String>>;
    /// After the restart: compares recovery and a full replay with the captured state.
    fn check_recovery<'a>(&'a self, engine: &'a Engine) -> BoxFuture<'a, Vec<String>>;
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The id of the demo's `index`-th aggregate of a type: a UUID (some aggregates require their
/// id to be one), the same for every seed, so that runs on one store continue the same
/// aggregates.
pub fn demo_aggregate_id(aggregate_type: &str, index: u64) -> String {
    let mut rng =
        DemoRng::new(fnv1a(aggregate_type.as_bytes()) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.uuid().to_string()
}

/// The seed of this run's command streams: `seed` on an empty store (so one seed always
/// issues the same commands there), mixed with the store's last global position otherwise.
pub fn run_seed(seed: u64, store_position: u64) -> u64 {
    if store_position == 0 {
        seed
    } else {
        DemoRng::new(seed ^ store_position.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
    }
}

/// The seed of one aggregate's command stream.
fn stream_seed(seed: u64, stream: &StreamId) -> u64 {
    DemoRng::new(seed ^ fnv1a(stream.to_string().as_bytes())).next_u64()
}

/// One aggregate instance a driver has worked on, with what its client expects of it.
struct Instance<A: Aggregate> {
    stream: StreamId,
    /// The state folded from the events the engine acknowledged to this client.
    expected: A::State,
    version: u64,
    captured: Option<(A::State, u64)>,
}

impl<A: Aggregate> Instance<A> {
    fn new(aggregate_id: String) -> Self {
        Self {
            stream: StreamId::new(A::TYPE, aggregate_id),
            expected: A::State::default(),
            version: 0,
            captured: None,
        }
    }

    /// Takes the state the store holds (the store may hold earlier runs) as the client's.
    async fn load(&mut self, engine: &Engine) -> Result<(), String> {
        let (state, version) = engine
            .state::<A>(&self.stream.aggregate_id)
            .await
            .map_err(|e| format!("{}: loading failed: {e}", self.stream))?;
        self.expected = state;
        self.version = version;
        Ok(())
    }

    /// Folds the events timers wrote after the client's last command into what it expects;
    /// returns how many. Stops at the first event of another source (a mismatch, reported
    /// by `capture`).
    fn catch_up_timers(&mut self, engine: &Engine) -> Result<u64, String> {
        let history = engine
            .history::<A>(&self.stream.aggregate_id)
            .map_err(|e| format!("{}: reading the history failed: {e}", self.stream))?;
        let mut folded = 0;
        for envelope in history.into_iter().skip(self.version as usize) {
            if envelope.source != TIMER_SOURCE || envelope.sequence != self.version + 1 {
                break;
            }
            A::apply(&mut self.expected, &envelope.payload);
            self.version = envelope.sequence;
            folded += 1;
        }
        Ok(folded)
    }

    async fn capture(&mut self, engine: &Engine) -> Result<Vec<String>, String> {
        self.catch_up_timers(engine)?;
        let (state, version) = engine
            .state::<A>(&self.stream.aggregate_id)
            .await
            .map_err(|e| format!("{}: reading the state failed: {e}", self.stream))?;
        let mut problems = Vec::new();
        if version != self.version {
            problems.push(format!(
                "{}: the engine is at version {version}, the client saw {}",
                self.stream, self.version
            ));
        } else if state != self.expected {
            let at = crate::diff::first_difference(&state, &self.expected).unwrap_or_default();
            problems.push(format!(
                "{}: the engine's state differs from the client's fold at {at} (engine vs client)",
                self.stream
            ));
        }
        self.captured = Some((state, version));
        Ok(problems)
    }

    async fn check_recovery(&self, engine: &Engine) -> Vec<String> {
        let Some((before, version)) = &self.captured else {
            return vec![format!(
                "{}: no pre-restart state was captured",
                self.stream
            )];
        };
        let mut problems = Vec::new();
        match engine.state::<A>(&self.stream.aggregate_id).await {
            Ok((_, recovered)) if recovered != *version => problems.push(format!(
                "{}: recovered version {recovered}, before the restart {version}",
                self.stream
            )),
            Ok((state, _)) if state != *before => {
                let at = crate::diff::first_difference(&state, before).unwrap_or_default();
                problems.push(format!(
                    "{}: the recovered state differs at {at} (recovered vs before)",
                    self.stream
                ));
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: recovery failed: {e}", self.stream)),
        }
        let journal = engine.journal().clone();
        let stream = self.stream.clone();
        let replay = tokio::task::spawn_blocking(move || {
            repository::load::<A>(&journal, &stream, u64::MAX, false)
        })
        .await;
        match replay {
            Ok(Ok(loaded)) if loaded.version != *version => problems.push(format!(
                "{}: a full replay ends at version {}, before the restart {version}",
                self.stream, loaded.version
            )),
            Ok(Ok(loaded)) if loaded.state != *before => {
                let at = crate::diff::first_difference(&loaded.state, before).unwrap_or_default();
                problems.push(format!(
                    "{}: a full replay without snapshots differs at {at} (replay vs before)",
                    self.stream
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => problems.push(format!("{}: the full replay failed: {e}", self.stream)),
            Err(e) => problems.push(format!("{}: the full replay panicked: {e}", self.stream)),
        }
        problems
    }
}

/// The generic [`Driver`] for an aggregate with a [`Workload`]. It drives one aggregate at a
/// time; when that one reaches a final state ([`Workload::is_finished`]) it moves on to a
/// fresh instance with an id drawn from its random stream, and keeps the finished ones for the
/// checks.
pub struct WorkloadDriver<A: Aggregate> {
    /// Every instance driven so far; the last one is current. Never empty.
    instances: Vec<Instance<A>>,
    rng: DemoRng,
    user_id: String,
}

impl<A: Aggregate> std::fmt::Debug for WorkloadDriver<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadDriver")
            .field("stream", &self.current_ref().stream)
            .field("instances", &self.instances.len())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> WorkloadDriver<A> {
    fn current(&mut self) -> &mut Instance<A> {
        self.instances.last_mut().expect("a driver has an instance")
    }

    fn current_ref(&self) -> &Instance<A> {
        self.instances.last().expect("a driver has an instance")
    }
}

impl<A: Workload> WorkloadDriver<A> {
    pub fn new(aggregate_id: String, seed: u64, client: usize) -> Self {
        let first = Instance::<A>::new(aggregate_id);
        let rng = DemoRng::new(stream_seed(seed, &first.stream));
        Self {
            instances: vec![first],
            rng,
            user_id: format!("demo-client-{client}"),
        }
    }

    async fn execute(&mut self, engine: &Engine, command: A::Command) -> Result<Step, String> {
        let user_id = self.user_id.clone();
        let current = self.current();
        let mut attempt = 0;
        loop {
            let metadata = Metadata::new(DEMO_SOURCE).user_id(user_id.clone());
            let result = engine
                .execute_with::<A>(&current.stream.aggregate_id, command.clone(), metadata)
                .await;
            match result {
                Ok(events) => {
                    // An idempotent repeat (Order's `CreateOrder` key) answers the original
                    // events, which the client has folded already.
                    if events.last().is_some_and(|e| e.sequence <= current.version) {
                        return Ok(Step::Accepted { events: 0 });
                    }
                    for envelope in &events {
                        if envelope.sequence != current.version + 1 {
                            return Ok(Step::Failed(format!(
                                "{}: the engine returned sequence {} after {}",
                                current.stream, envelope.sequence, current.version
                            )));
                        }
                        A::apply(&mut current.expected, &envelope.payload);
                        current.version = envelope.sequence;
                    }
                    return Ok(Step::Accepted {
                        events: events.len() as u64,
                    });
                }
                Err(CommandError::Rejected(_)) => return Ok(Step::Rejected),
                Err(e) if e.is_retryable() && attempt < RETRIES_MAX => {
                    attempt += 1;
                    let backoff = RETRY_BACKOFF_MS * u64::from(attempt);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                Err(
                    e @ (CommandError::HandlerPanicked { .. }
                    | CommandError::InvariantViolated { .. }
                    | CommandError::Invalid(_)),
                ) => return Ok(Step::Failed(format!("{}: {e}", current.stream))),
                Err(e) if e.is_retryable() => {
                    return Ok(Step::Failed(format!(
                        "{}: still refused after {RETRIES_MAX} retries: {e}",
                        current.stream
                    )))
                }
                Err(e) => return Err(format!("{}: {e}", current.stream)),
            }
        }
    }
}

impl<A: Workload> Driver for WorkloadDriver<A> {
    fn stream(&self) -> StreamId {
        self.current_ref().stream.clone()
    }

    fn instances(&self) -> usize {
        self.instances.len()
    }

    fn versions(&self) -> Vec<u64> {
        self.instances.iter().map(|i| i.version).collect()
    }

    fn init<'a>(&'a mut self, engine: &'a Engine) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.current().load(engine).await })
    }

    fn step<'a>(&'a mut self, engine: &'a Engine) -> BoxFuture<'a, Result<Step, String>> {
        Box::pin(async move {
            // Nothing can change a finished aggregate any more: move on to a new customer, a
            // new appointment. Its id comes from this driver's random stream, so a second run
            // on the same store meets the ids of the first: load each, and pass over those
            // that an earlier run already finished.
            let mut fresh = 0;
            while A::is_finished(&self.current_ref().expected) {
                if fresh == FRESH_ID_ATTEMPTS_MAX {
                    return Err(format!(
                        "{}: {FRESH_ID_ATTEMPTS_MAX} fresh aggregate ids in a row were taken \
                         by finished aggregates",
                        self.current_ref().stream
                    ));
                }
                fresh += 1;
                let id = self.rng.uuid().to_string();
                self.instances.push(Instance::new(id));
                self.current().load(engine).await?;
            }
            let current = self.instances.last().expect("a driver has an instance");
            let ctx = DecideContext::new(current.stream.aggregate_id.clone(), demo_clock().now());
            let command = A::sample_command(&current.expected, &ctx, &mut self.rng);
            self.execute(engine, command).await
        })
    }

    fn capture<'a>(&'a mut self, engine: &'a Engine) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let mut problems = Vec::new();
            for instance in &mut self.instances {
                problems.extend(instance.capture(engine).await?);
            }
            Ok(problems)
        })
    }

    fn check_recovery<'a>(&'a self, engine: &'a Engine) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut problems = Vec::new();
            for instance in &self.instances {
                problems.extend(instance.check_recovery(engine).await);
            }
            problems
        })
    }
}

/// One aggregate's driver and the commands it still has to issue.
struct Slot {
    driver: Box<dyn Driver>,
    commands: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Init,
    Workload,
    Capture,
    Check,
}

/// What one client task counted in one phase.
#[derive(Debug, Default)]
struct Tally {
    accepted: u64,
    rejected: u64,
    events: u64,
    failures: Vec<String>,
    mismatches: Vec<String>,
    fatal: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.events += other.events;
        self.failures.extend(other.failures);
        self.mismatches.extend(other.mismatches);
        self.fatal = self.fatal.take().or(other.fatal);
    }
}

/// One client task: runs `phase` for its aggregates. In the workload phase it issues one
/// command to each of its aggregates in turn until all have issued theirs, so an aggregate's
/// commands are sequential and its order is fixed.
async fn run_client(
    engine: Engine,
    mut slots: Vec<Slot>,
    phase: Phase,
    bar: ProgressBar,
) -> (Vec<Slot>, Tally) {
    let mut tally = Tally::default();
    match phase {
        Phase::Init => {
            for slot in &mut slots {
                if let Err(e) = slot.driver.init(&engine).await {
                    tally.fatal = Some(e);
                    break;
                }
            }
        }
        Phase::Workload => {
            let mut remaining: Vec<u64> = slots.iter().map(|s| s.commands).collect();
            'rounds: loop {
                let mut issued = false;
                for (slot, left) in slots.iter_mut().zip(remaining.iter_mut()) {
                    if *left == 0 {
                        continue;
                    }
                    *left -= 1;
                    issued = true;
                    match slot.driver.step(&engine).await {
                        Ok(Step::Accepted { events }) => {
                            tally.accepted += 1;
                            tally.events += events;
                        }
                        Ok(Step::Rejected) => tally.rejected += 1,
                        Ok(Step::Failed(why)) => tally.failures.push(why),
                        Err(fatal) => {
                            tally.fatal = Some(fatal);
                            break 'rounds;
                        }
                    }
                    bar.inc(1);
                }
                if !issued {
                    break;
                }
            }
        }
        Phase::Capture => {
            for slot in &mut slots {
                match slot.driver.capture(&engine).await {
                    Ok(problems) => tally.mismatches.extend(problems),
                    Err(e) => {
                        tally.fatal = Some(e);
                        break;
                    }
                }
            }
        }
        Phase::Check => {
            for slot in &slots {
                tally
                    .mismatches
                    .extend(slot.driver.check_recovery(&engine).await);
            }
        }
    }
    (slots, tally)
}

/// Runs `phase` on every partition concurrently, one task per client.
async fn run_phase(
    engine: &Engine,
    partitions: Vec<Vec<Slot>>,
    phase: Phase,
    bar: &ProgressBar,
) -> Result<(Vec<Vec<Slot>>, Tally), CliError> {
    let tasks: Vec<_> = partitions
        .into_iter()
        .map(|slots| tokio::spawn(run_client(engine.clone(), slots, phase, bar.clone())))
        .collect();
    let mut partitions = Vec::with_capacity(tasks.len());
    let mut total = Tally::default();
    for task in tasks {
        let (slots, tally) = task.await.map_err(|e| {
            CliError::Demo(format!("a client task failed in the {phase:?} phase: {e}"))
        })?;
        partitions.push(slots);
        total.add(tally);
    }
    Ok((partitions, total))
}

async fn open_engine(args: &DemoArgs) -> Result<Engine, CliError> {
    let durability = match args.durability {
        DurabilityArg::Durable => Durability::Durable,
        DurabilityArg::Buffered => Durability::Buffered {
            flush_every_ms: BUFFERED_FLUSH_EVERY_MS,
        },
    };
    let mut builder = Engine::builder(&args.data)
        .durability(durability)
        .write_path(match args.write_path {
            Some(crate::WritePathArg::Sled) => evershard_engine::WritePath::Sled,
            Some(crate::WritePathArg::Log) => evershard_engine::WritePath::Log,
            None => evershard_engine::WritePath::from_env(),
        })
        .clock(demo_clock().clone())
        .source(DEMO_SOURCE);
    if let Some(every) = args.snapshot_every {
        let policy = if every == 0 {
            SnapshotPolicy::disabled()
        } else {
            SnapshotPolicy::every(every)
        };
        builder = builder.snapshot_policy(policy);
    }
    let mut register = Register(Some(builder));
    visit_all(&mut register);
    builder = register.0.expect("every visit hands the builder back");
    // The saga phase executes `OrderSaga` commands on this engine; the workload visitor above
    // only knows the seven workload types, so the process manager is registered by name here
    // (without it every observation is refused as an unregistered type and dead-lettered).
    builder = builder.register::<OrderSaga>();
    // Payment's 10-second rule across payment ids lives in a guard beside the aggregate.
    builder = builder.guard::<Payment>(PaymentDuplicateGuard::new());
    // `shutdown` releases the store's lock before it returns, so the restart needs no retry.
    builder
        .open()
        .await
        .map_err(|e| CliError::engine(&args.data, e))
}

fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stdout().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} commands  {per_sec}  eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

pub(crate) fn write_listed(
    out: &mut dyn Write,
    what: &str,
    lines: &[String],
) -> Result<(), CliError> {
    for line in lines.iter().take(LISTED_MAX) {
        writeln!(out, "  {what}: {line}")?;
    }
    if lines.len() > LISTED_MAX {
        writeln!(out, "  … and {} more", lines.len() - LISTED_MAX)?;
    }
    Ok(())
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Registers every known type with an engine being built.
struct Register(Option<EngineBuilder>);

impl WorkloadVisitor for Register {
    fn visit<A: Workload>(&mut self) {
        self.0 = self.0.take().map(|builder| builder.register::<A>());
    }
}

/// A demo driver for one aggregate instance of the type chosen by name.
struct MakeDriver {
    aggregate_id: String,
    seed: u64,
    client: usize,
}

impl TypeOp for MakeDriver {
    type Output = Box<dyn Driver>;
    fn run<A: Workload>(self) -> Box<dyn Driver> {
        Box::new(WorkloadDriver::<A>::new(
            self.aggregate_id,
            self.seed,
            self.client,
        ))
    }
}

/// Runs the demo; see the module documentation.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let kinds: Vec<&'static str> = if args.types.is_empty() {
        crate::registry::workload_types()
    } else {
        let mut picked: Vec<&'static str> = Vec::new();
        for name in &args.types {
            let name = resolve(name)?;
            if !crate::registry::workload_types().contains(&name) {
                return Err(CliError::InvalidArgument(format!(
                    "{name} is a saga: the demo drives it through its runner (--saga-orders),                      not with a workload"
                )));
            }
            if !picked.contains(&name) {
                picked.push(name);
            }
        }
        picked
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(run_async(args, &kinds, out))
}

async fn run_async(
    args: &DemoArgs,
    kinds: &[&'static str],
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let per_type = args.aggregates;
    let aggregates_total = per_type * kinds.len() as u64;
    let clients = args.clients.min(aggregates_total).max(1) as usize;
    writeln!(
        out,
        "demo: {} × {per_type} aggregates ({aggregates_total} in all), {} commands, {clients} clients, \
         seed {}, durability {}, store {}",
        kinds.join(", "),
        args.commands,
        args.seed,
        args.durability,
        args.data.display()
    )?;
    out.flush()?;

    let engine = open_engine(args).await?;
    let seed = run_seed(args.seed, engine.journal().durable_position());
    let journal = engine.journal().clone();
    let resumed_at = tokio::task::spawn_blocking(move || store_time(&journal))
        .await
        .map_err(|e| CliError::Demo(format!("reading the store's time: {e}")))?
        .map_err(|e| CliError::storage(&args.data, e))?;
    if let Some(at) = resumed_at {
        demo_clock().not_before(at + chrono::TimeDelta::milliseconds(1));
    }

    // Aggregates are dealt to clients round-robin; commands are spread evenly over aggregates.
    let mut partitions: Vec<Vec<Slot>> = (0..clients).map(|_| Vec::new()).collect();
    let base = args.commands / aggregates_total;
    let extra = args.commands % aggregates_total;
    let mut j = 0u64;
    for name in kinds {
        for index in 0..per_type {
            let client = (j % clients as u64) as usize;
            let make = MakeDriver {
                aggregate_id: demo_aggregate_id(name, index),
                seed,
                client,
            };
            let commands = base + u64::from(j < extra);
            partitions[client].push(Slot {
                driver: dispatch(name, make).expect("resolved types are known"),
                commands,
            });
            j += 1;
        }
    }
    debug_assert_eq!(
        partitions.iter().flatten().map(|s| s.commands).sum::<u64>(),
        args.commands
    );

    let hidden = ProgressBar::hidden();
    let consumer = crate::demo_topics::DemoConsumer::start(&engine);
    #[cfg(feature = "kafka")]
    let mut kafka_failed = false;
    #[cfg(feature = "kafka")]
    let kafka = match &args.kafka {
        None => None,
        Some(brokers) => {
            let config = evershard_engine::KafkaConfig::new(brokers).client_id("evershard-demo");
            match engine.kafka_publisher(config).await {
                Ok(p) => {
                    writeln!(out, "kafka: publishing to {brokers}")?;
                    // The lag while the workload runs: sampled every 100 ms, the highest kept.
                    let p = std::sync::Arc::new(p);
                    let lag_max = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let sampler = {
                        let (p, lag_max) = (p.clone(), lag_max.clone());
                        tokio::spawn(async move {
                            loop {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                if let Ok(s) = p.status() {
                                    lag_max
                                        .fetch_max(s.lag(), std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        })
                    };
                    Some((p, sampler, lag_max, std::time::Instant::now()))
                }
                Err(e) => {
                    writeln!(out, "kafka publisher FAILED to start: {e}")?;
                    kafka_failed = true;
                    None
                }
            }
        }
    };
    let mut result = drive(&engine, partitions, args, &hidden, out)
        .await
        .map_err(|e| match e {
            CliError::Demo(message) => CliError::Demo(with_cause(&engine, message)),
            other => other,
        });
    #[cfg(feature = "kafka")]
    if kafka_failed {
        if let Ok((_, found)) = &mut result {
            *found += 1;
        }
    }
    #[cfg(feature = "kafka")]
    if let Some((publisher, sampler, lag_max, started)) = kafka {
        sampler.abort();
        let _ = sampler.await;
        let lag_max = lag_max.load(std::sync::atomic::Ordering::Relaxed);
        let caught_up = publisher
            .wait_caught_up(std::time::Duration::from_secs(300))
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let status = publisher.status();
        let mut lat = publisher.take_latencies();
        lat.sort_unstable();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |v| *v as f64 / 1000.0)
        };
        publisher.stop().await;
        match status {
            Ok(s) => {
                writeln!(
                    out,
                    "kafka: published {} messages in {elapsed:.1} s ({:.0}/s), lag {} (at most {} \
                     while the workload ran){}, commit-to-ack p50 {:.1} ms p99 {:.1} ms, failed \
                     rounds {}, anomalies {}",
                    s.published,
                    s.published as f64 / elapsed.max(1e-9),
                    s.lag(),
                    lag_max,
                    if caught_up {
                        ""
                    } else {
                        " (NOT caught up within 300 s)"
                    },
                    pct(0.5),
                    pct(0.99),
                    s.failed_rounds,
                    s.anomalies.len()
                )?;
                if let Some(e) = &s.last_error {
                    writeln!(out, "kafka: last error: {e}")?;
                }
                if !caught_up || !s.anomalies.is_empty() || s.fatal.is_some() {
                    if let Ok((_, found)) = &mut result {
                        *found += 1;
                    }
                }
            }
            Err(e) => writeln!(out, "kafka status FAILED: {e}")?,
        }
    }
    // Every event committed in this run must have reached its topic and the group once.
    match consumer.finish(&engine).await {
        Ok((lines, problems)) => {
            for line in lines {
                writeln!(out, "{line}")?;
            }
            if let Ok((_, found)) = &mut result {
                *found += problems;
            }
        }
        Err(e) => {
            writeln!(
                out,
                "topics check FAILED: {}",
                with_cause(&engine, e.to_string())
            )?;
            if let Ok((_, found)) = &mut result {
                *found += 1;
            }
        }
    }
    // Shut down whatever happened, so the store is left consistent and unlocked.
    let shutdown = engine.shutdown().await;
    drop(engine);
    let (partitions, mut problems) = result?;
    shutdown.map_err(|e| CliError::engine(&args.data, e))?;
    writeln!(out, "restart: engine shut down; reopening the store")?;
    out.flush()?;

    let engine = open_engine(args).await?;
    let instances: usize = partitions
        .iter()
        .flatten()
        .map(|slot| slot.driver.instances())
        .sum();
    let versions: Vec<u64> = partitions
        .iter()
        .flatten()
        .flat_map(|slot| slot.driver.versions())
        .collect();
    let checked = run_phase(&engine, partitions, Phase::Check, &hidden).await;
    let advance: std::sync::Arc<dyn Fn(chrono::TimeDelta) + Send + Sync> =
        std::sync::Arc::new(|by| demo_clock().advance(by));
    let saga_orders = crate::demo_saga::orders_to_place(args, kinds);
    let saga =
        crate::demo_saga::run(&engine, args, saga_orders, demo_clock().now(), advance, out).await;
    let journal = engine.journal().clone();
    let verify = tokio::task::spawn_blocking(move || journal.verify()).await;
    let shutdown = engine.shutdown().await;
    drop(engine);
    let (_, tally) = checked?;
    problems += saga?;
    shutdown.map_err(|e| CliError::engine(&args.data, e))?;

    if tally.mismatches.is_empty() {
        writeln!(
            out,
            "recovery check: all {instances} aggregates recover to their pre-restart state \
             and version, and equal a full replay without snapshots"
        )?;
    } else {
        writeln!(
            out,
            "recovery check FAILED: {} mismatches after the restart",
            tally.mismatches.len()
        )?;
        write_listed(out, "mismatch", &tally.mismatches)?;
        problems += tally.mismatches.len();
    }
    match verify {
        Ok(report) if report.is_clean() => writeln!(
            out,
            "journal verify: clean ({} streams, {} events, {} global index entries)",
            report.streams, report.events, report.global_entries
        )?,
        Ok(report) => {
            writeln!(out, "journal verify FAILED: {} issues", report.issues.len())?;
            let lines: Vec<String> = report
                .issues
                .iter()
                .map(|i| {
                    format!(
                        "{} sequence {}: {}",
                        i.stream.as_deref().unwrap_or("(store)"),
                        i.sequence.map_or_else(|| "-".into(), |s| s.to_string()),
                        i.problem
                    )
                })
                .collect();
            write_listed(out, "issue", &lines)?;
            problems += report.issues.len();
        }
        Err(e) => {
            writeln!(out, "journal verify FAILED: {e}")?;
            problems += 1;
        }
    }
    write_summary(out, args, kinds.len(), &versions)?;
    out.flush()?;
    Ok(if problems == 0 {
        Outcome::Clean
    } else {
        Outcome::ProblemsFound
    })
}

/// What the numbers above mean, so the output reads without the README.
fn write_summary(
    out: &mut dyn Write,
    args: &DemoArgs,
    types: usize,
    versions: &[u64],
) -> Result<(), CliError> {
    let every = args
        .snapshot_every
        .unwrap_or(SnapshotPolicy::default().every_events);
    let started = args.aggregates * types as u64;
    let touched = versions.len() as u64;
    let without_events = versions.iter().filter(|v| **v == 0).count();
    writeln!(out, "summary:")?;
    writeln!(
        out,
        "  aggregates: {touched} touched — {started} to start with ({} per type); each one that \
         reached a final state (a completed appointment, a repaid credit) was followed by a \
         fresh one; {without_events} of them have no event (every command to them was rejected)",
        args.aggregates
    )?;
    writeln!(
        out,
        "  commands: a rejected command is a domain rule saying no (the generators send some \
         invalid commands on purpose) and writes nothing; an accepted one writes its events, \
         none for an idempotent repeat"
    )?;
    if every == 0 {
        writeln!(
            out,
            "  snapshots: off (--snapshot-every 0); recovery replays every event"
        )?;
    } else {
        let with_snapshot = versions.iter().filter(|v| **v >= every).count();
        writeln!(
            out,
            "  snapshots: {with_snapshot} aggregates reached {every} events, so they recovered \
             from a snapshot plus the events after it; the others replayed from their first event"
        )?;
    }
    Ok(())
}

/// `message`, with the journal's first failure appended when it says the journal refuses
/// writes (that error itself carries no cause: the cause is kept by the journal).
fn with_cause(engine: &Engine, message: String) -> String {
    match engine.journal().poison_cause() {
        Some(cause) if message.contains("refuses writes") => {
            format!("{message} (first failure: {cause})")
        }
        _ => message,
    }
}

/// The workload and the pre-restart capture. Returns the drivers (holding the captured
/// states) and the number of problems found so far.
async fn drive(
    engine: &Engine,
    partitions: Vec<Vec<Slot>>,
    args: &DemoArgs,
    hidden: &ProgressBar,
    out: &mut dyn Write,
) -> Result<(Vec<Vec<Slot>>, usize), CliError> {
    let (partitions, init) = run_phase(engine, partitions, Phase::Init, hidden).await?;
    if let Some(fatal) = init.fatal {
        return Err(CliError::Demo(fatal));
    }

    let bar = progress_bar(args.commands);
    let started = Instant::now();
    let (partitions, work) = run_phase(engine, partitions, Phase::Workload, &bar).await?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(fatal) = work.fatal {
        return Err(CliError::Demo(fatal));
    }
    let issued = work.accepted + work.rejected + work.failures.len() as u64;
    writeln!(
        out,
        "workload: {issued} commands in {:.2} s: {} accepted ({} events), {} rejected, {} failed",
        elapsed.as_secs_f64(),
        work.accepted,
        work.events,
        work.rejected,
        work.failures.len()
    )?;
    writeln!(
        out,
        "throughput: {:.0} commands/s, {:.0} events/s",
        per_second(issued, elapsed),
        per_second(work.events, elapsed)
    )?;
    write_listed(out, "failed", &work.failures)?;
    out.flush()?;

    // Real timers: move the clock past every 30-minute deadline and let the engine fire
    // what came due (the drivers fold the timers' events in before the check below).
    let pending = engine.journal().timers(None).count();
    demo_clock().advance(chrono::TimeDelta::minutes(DEMO_TIMER_ADVANCE_MINUTES));
    let started = Instant::now();
    let fired = engine
        .run_due_timers()
        .await
        .map_err(|e| CliError::engine(&args.data, e))?;
    writeln!(
        out,
        "timers: {pending} pending; clock moved {DEMO_TIMER_ADVANCE_MINUTES} minutes ahead; \
         {fired} fired in {:.2} s (expired reservations released, unconfirmed orders cancelled); \
         {} still pending",
        started.elapsed().as_secs_f64(),
        engine.journal().timers(None).count()
    )?;
    out.flush()?;

    let (partitions, capture) = run_phase(engine, partitions, Phase::Capture, hidden).await?;
    if let Some(fatal) = capture.fatal {
        return Err(CliError::Demo(fatal));
    }
    if !capture.mismatches.is_empty() {
        writeln!(
            out,
            "client check FAILED: {} aggregates differ from what their client folded",
            capture.mismatches.len()
        )?;
        write_listed(out, "mismatch", &capture.mismatches)?;
    }
    Ok((partitions, work.failures.len() + capture.mismatches.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_seeds_are_stable_and_distinct() {
        let a = demo_aggregate_id("ProductStock", 0);
        assert_eq!(a, demo_aggregate_id("ProductStock", 0));
        assert_ne!(a, demo_aggregate_id("ProductStock", 1));
        assert_ne!(a, demo_aggregate_id("Order", 0));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        let s = StreamId::new("ProductStock", a);
        assert_eq!(stream_seed(1, &s), stream_seed(1, &s));
        assert_ne!(stream_seed(1, &s), stream_seed(2, &s));
    }
}
