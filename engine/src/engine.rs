//! The one entry type: [`Engine::builder`] → register aggregate types → [`EngineBuilder::open`].

use crate::audit::maintainer::Maintainer;
use crate::audit::{AuditError, ConsistencyProof, InclusionProof, TreeHead};
use crate::crypto::KeyProvider;
use crate::error::ForgetError;
use crate::error::{
    CheckpointError, CommandError, ConfigError, EngineError, InvalidRequest, StorageError,
    UnavailableReason,
};
use crate::journal::{CheckpointInfo, Durability, Journal, JournalConfig, JournalWriter, StreamId};
use crate::recovery as repository;
use crate::sharding::{
    Direct, EntityMsg, Routes, Runtime, ShardActor, ShardArgs, ShardMsg, ShardingConfig,
};
use crate::snapshots::{SnapshotPolicy, Snapshotter};
use crate::topics::consumer::TopicsRuntime;
use crate::topics::index::Indexer;
use crate::topics::metrics::Metrics;
use crate::topics::{
    Consumer, ConsumerOptions, DeadLetter, GroupLag, Handler, HandlerError, Health, Message,
    PartitionLag, Subscription, SubscriptionOptions, TopicCatalog, TopicConfig, TopicError,
    TopicLog, TopicMetrics, TopicRoute,
};
use chrono::{DateTime, Utc};
use evershard_model::CommandGuard;
use evershard_model::{Aggregate, EventEnvelope, Metadata};
use evershard_model::{Clock, SystemClock};
use ractor::{Actor, ActorRef};
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type StartGroup = fn(Arc<Runtime>) -> BoxFuture<Result<Box<dyn AnyGroup>, EngineError>>;

/// Configures and opens an [`Engine`].
#[derive(Debug)]
pub struct EngineBuilder {
    data_dir: PathBuf,
    journal: JournalConfig,
    sharding: ShardingConfig,
    snapshot_policy: SnapshotPolicy,
    clock: Arc<dyn Clock>,
    source: String,
    types: Vec<(&'static str, StartGroupFn)>,
    guards: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
    catalog: TopicCatalog,
    topic_indexer: bool,
    merkle_tree: bool,
    timer_poll_ms: u64,
    joins_cluster: bool,
    idempotency_retention_ms: i64,
    guard_recoveries: HashMap<&'static str, GuardRecovery>,
    sensitive: std::collections::HashSet<&'static str>,
    key_provider: Option<Arc<dyn KeyProvider>>,
}

/// The aggregate types that are sensitive unless the builder says otherwise: health and
/// financial data (docs/security.md).
pub const DEFAULT_SENSITIVE_TYPES: [&str; 4] = ["Appointment", "Device", "Credit", "Payment"];

/// Replays the recent events of a type into its guard at open.
struct GuardRecovery(Box<RecoverFn>);

type RecoverFn = dyn FnOnce(&Journal, DateTime<Utc>) -> Result<usize, StorageError> + Send + Sync;

impl std::fmt::Debug for GuardRecovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardRecovery")
    }
}

/// Records read back past a guard's window before the scan stops: commits of one moment may
/// reach the journal slightly out of clock order (decided, then group-committed).
const GUARD_RECOVERY_SLACK_MS: i64 = 5_000;

/// Hands a guard every event of `A` committed within its recovery window, oldest first;
/// returns how many. Reads the journal backwards from its newest event and stops at the
/// first record older than the window (plus a slack).
fn recover_guard<A: Aggregate>(
    journal: &Journal,
    guard: &dyn CommandGuard<A>,
    now: DateTime<Utc>,
) -> Result<usize, StorageError> {
    let Some(window) = guard.recovery_window() else {
        return Ok(0);
    };
    let since = now - window;
    let stop_before = since - chrono::TimeDelta::milliseconds(GUARD_RECOVERY_SLACK_MS);
    let mut recent = Vec::new();
    for item in journal.read_global_rev() {
        let (_, stream, sequence) = item?;
        // Sealed: the time is metadata; only the guard's own type is opened.
        let Some(record) = journal
            .read_stream_sealed(&stream, sequence, sequence)
            .next()
        else {
            continue;
        };
        let record = record?;
        if record.timestamp < stop_before {
            break;
        }
        if stream.aggregate_type == A::TYPE && record.timestamp >= since {
            match journal.open_record(record) {
                Ok(opened) => recent.push(repository::decode_record::<A>(opened)?),
                // A forgotten subject's events are not fed to the guard: nothing of them
                // can be read any more.
                Err(StorageError::Erased { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    for event in recent.iter().rev() {
        guard.recover(event);
    }
    Ok(recent.len())
}

/// Fires the timer of one aggregate of a registered type (type-erased for the scheduler),
/// found due at a deadline (microseconds).
type FireTimer = fn(Engine, String, i64) -> BoxFuture<Result<bool, String>>;

fn fire_timer<A: Aggregate>(
    engine: Engine,
    aggregate_id: String,
    deadline: i64,
) -> BoxFuture<Result<bool, String>> {
    Box::pin(async move {
        engine
            .send::<A, _>(&aggregate_id, |reply| EntityMsg::FireTimer {
                deadline,
                reply,
            })
            .await
            .map_err(|e| e.to_string())
    })
}

/// Timers read from the keyspace per page: the scheduler never holds more in memory.
const TIMER_PAGE_MAX: usize = 512;
/// Timer commands one scheduler pass runs at most before it lets the loop breathe (and
/// re-reads the clock); the next pass starts at once.
const TIMERS_PER_PASS_MAX: usize = 100_000;
/// Idempotency records one sweep removes at most.
const IDEMPOTENCY_SWEEP_MAX: usize = 10_000;
/// How long a checkpoint waits, with appends paused, for the topic indexer and the tree
/// maintainer to cover its cut (they normally trail the durable position by milliseconds).
const FOLLOWER_CATCH_UP_MS_MAX: u64 = 30_000;

/// A function pointer wrapper so the builder can be `Debug`.
#[derive(Clone, Copy)]
struct StartGroupFn(StartGroup, FireTimer);

impl std::fmt::Debug for StartGroupFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartGroup")
    }
}

impl EngineBuilder {
    /// The store's directory (created if missing).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            journal: JournalConfig::default(),
            sharding: ShardingConfig::default(),
            snapshot_policy: SnapshotPolicy::default(),
            clock: Arc::new(SystemClock),
            source: "evershard".into(),
            types: Vec::new(),
            guards: HashMap::new(),
            catalog: TopicCatalog::new(),
            topic_indexer: true,
            merkle_tree: true,
            timer_poll_ms: 1000,
            joins_cluster: false,
            idempotency_retention_ms: 24 * 60 * 60 * 1000,
            guard_recoveries: HashMap::new(),
            sensitive: DEFAULT_SENSITIVE_TYPES.into_iter().collect(),
            key_provider: None,
        }
    }

    /// The provider of the master key that wraps the data keys of encryption at rest
    /// (docs/security.md; [`crate::crypto::FileKeyProvider`] reads a key file). Without one,
    /// nothing is encrypted: sensitive types are stored in plain and `open` logs a warning —
    /// except on a store an earlier run wrote with encryption, which `open` refuses
    /// ([`ConfigError::KeyProviderRequired`]) while sensitive types are registered: declare
    /// them not sensitive (`sensitive::<T>(false)`) to store them in plain from then on.
    /// Default: none.
    pub fn key_provider(mut self, provider: Arc<dyn KeyProvider>) -> Self {
        self.key_provider = Some(provider);
        self
    }

    /// Declares `A` sensitive (`true`: its event payloads and snapshots are encrypted at rest
    /// with its data subject's key, see `Aggregate::data_subject`) or not. Default: sensitive
    /// for the types in [`DEFAULT_SENSITIVE_TYPES`]. Records already stored keep the form
    /// they were written in; both are always read.
    pub fn sensitive<A: Aggregate>(mut self, on: bool) -> Self {
        if on {
            self.sensitive.insert(A::TYPE);
        } else {
            self.sensitive.remove(A::TYPE);
        }
        self
    }

    /// Registers an aggregate type. Each type gets its own shard actors.
    pub fn register<A: Aggregate>(mut self) -> Self {
        self.types
            .push((A::TYPE, StartGroupFn(start_group::<A>, fire_timer::<A>)));
        self.catalog.register::<A>();
        self
    }

    /// Routes `A`'s events to another topic and/or envelope instead of
    /// `DomainEvent::topic()` in its family's format, without touching the aggregate. Several
    /// routes fan the events out to each. Routing is part of how offsets are assigned: change
    /// it only for positions not yet indexed (new topics, or a new store).
    pub fn route<A: Aggregate>(mut self, route: TopicRoute) -> Self {
        self.catalog.route(A::TYPE, route);
        self
    }

    /// Configures a topic (partitions, wire format). Fixed at creation: opening a store whose
    /// topic was created with another partition count or format fails with
    /// `EngineError::Topic(PartitionsMismatch | FormatMismatch)`.
    pub fn topic(mut self, config: TopicConfig) -> Self {
        self.catalog.topic(config);
        self
    }

    /// Runs the Merkle tree maintainer, which stores subtree hashes as events become durable
    /// so that `digest` and `prove` cost O(log n). Default true. Off, tree heads and proofs
    /// still work, computed from the records (slower on a large store).
    pub fn merkle_tree(mut self, on: bool) -> Self {
        self.merkle_tree = on;
        self
    }

    /// Runs the topic indexer (and so topics, consumers, subscriptions). Default true.
    pub fn topic_indexer(mut self, on: bool) -> Self {
        self.topic_indexer = on;
        self
    }

    /// How often, at most, the timer scheduler looks for due timers when none is known to be
    /// due sooner (by the clock). Default 1 s. It also runs at start-up and whenever
    /// [`Engine::run_due_timers`] or [`Engine::wake_timers`] is called.
    pub fn timer_poll_ms(mut self, ms: u64) -> Self {
        self.timer_poll_ms = ms.max(1);
        self
    }

    /// This engine joins a cluster (`Engine::join_cluster`, feature `kafka`) once open. Until
    /// it has, it appends nothing: due timers wait (a restarted node must not fire a timer
    /// of a partition another node serves now) and commands fail with
    /// `Unavailable { NotJoined }`. Default false.
    pub fn joins_cluster(mut self, on: bool) -> Self {
        self.joins_cluster = on;
        self
    }

    /// How long a command's idempotency key answers with its original result. Default 24
    /// hours (seed 9.1). Older keys are swept.
    pub fn idempotency_retention_ms(mut self, ms: u64) -> Self {
        self.idempotency_retention_ms = i64::try_from(ms).unwrap_or(i64::MAX);
        self
    }

    /// Adds a [`CommandGuard`] that every command to `A` passes in its aggregate, before
    /// `decide` (not an idempotent repeat, nor a timer command; one guard per type, a second
    /// call replaces the first). `A` must also be registered.
    ///
    /// A guard with a [`CommandGuard::recovery_window`] is handed the events of `A` committed
    /// within that window before the clock's now, at open, before any command.
    pub fn guard<A: Aggregate>(mut self, guard: impl CommandGuard<A>) -> Self {
        let guard: Arc<dyn CommandGuard<A>> = Arc::new(guard);
        self.guards.insert(A::TYPE, Box::new(guard.clone()));
        self.guard_recoveries.insert(
            A::TYPE,
            GuardRecovery(Box::new(move |journal: &Journal, now| {
                recover_guard::<A>(journal, &*guard, now)
            })),
        );
        self
    }

    /// Shard actors per aggregate type. Default 8.
    pub fn shards(mut self, shards: usize) -> Self {
        self.sharding.shards = shards;
        self
    }
    /// Default: every 100 events, keep 2.
    pub fn snapshot_policy(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshot_policy = policy;
        self
    }
    /// Default: [`Durability::Durable`] (acknowledge after flush + fdatasync).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.journal.durability = durability;
        self
    }
    /// Where a **new** store keeps its events (an existing store keeps its own). Default:
    /// [`WritePath::Log`], or what `EVERSHARD_WRITE_PATH` says (docs/design.md, "The next
    /// write path").
    pub fn write_path(mut self, write_path: crate::journal::WritePath) -> Self {
        self.journal.write_path = write_path;
        self
    }
    /// An aggregate idle this long leaves memory. Default 5 minutes.
    pub fn passivate_idle_ms(mut self, ms: u64) -> Self {
        self.sharding.passivate_idle_ms = ms;
        self
    }
    /// How often shards look for idle aggregates. Default 1 s.
    pub fn passivation_check_ms(mut self, ms: u64) -> Self {
        self.sharding.passivation_check_ms = ms;
        self
    }
    /// Active aggregates per shard before the least recently used idle one is passivated.
    /// Default 2,048 (an active aggregate costs about 10 KiB of memory besides its state).
    pub fn active_per_shard_max(mut self, max: usize) -> Self {
        self.sharding.active_per_shard_max = max;
        self
    }
    /// Queued commands per aggregate before `Overloaded`. Default 1,024.
    pub fn entity_mailbox_commands_max(mut self, max: usize) -> Self {
        self.sharding.entity_mailbox_commands_max = max;
        self
    }
    /// Queued commands per shard before `Overloaded`. Default 100,000.
    pub fn shard_mailbox_commands_max(mut self, max: usize) -> Self {
        self.sharding.shard_mailbox_commands_max = max;
        self
    }
    /// Events in one group commit at most. Default 4,096.
    pub fn batch_events_max(mut self, max: usize) -> Self {
        self.journal.batch_events_max = max;
        self
    }
    /// sled's page cache. Default 32 MiB (see `JournalConfig::cache_bytes`).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.journal.cache_bytes = bytes;
        self
    }
    /// The clock `decide` sees. Default: the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// The `source` recorded in events when a command's metadata does not override it.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Opens the journal and starts the shard actors. Must run inside a tokio runtime.
    pub async fn open(self) -> Result<Engine, EngineError> {
        if self.sharding.shards == 0 {
            return Err(ConfigError::NoShards.into());
        }
        if self.sharding.entity_mailbox_commands_max == 0
            || self.sharding.shard_mailbox_commands_max == 0
        {
            return Err(ConfigError::ZeroMailbox.into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((name, _)) = self.types.iter().find(|(name, _)| !seen.insert(*name)) {
            return Err(EngineError::DuplicateType(name));
        }
        if let Some(name) = self.guards.keys().find(|name| !seen.contains(*name)) {
            return Err(EngineError::NotRegistered(name));
        }
        let dir = self.data_dir.clone();
        let journal_config = self.journal.clone();
        let journal = tokio::task::spawn_blocking(move || JournalWriter::open(dir, journal_config))
            .await
            .map_err(actor_error)??;
        // Before anything reads: the topic indexer and guard recovery open payloads too.
        let registered: std::collections::HashSet<&'static str> =
            self.types.iter().map(|(name, _)| *name).collect();
        let sensitive: std::collections::HashSet<&'static str> = match &self.key_provider {
            Some(provider) => {
                journal.set_key_provider(provider.clone());
                self.sensitive.intersection(&registered).copied().collect()
            }
            None => {
                let mut plain: Vec<&'static str> =
                    self.sensitive.intersection(&registered).copied().collect();
                plain.sort_unstable();
                if !plain.is_empty() {
                    // A store written with encryption: refused rather than silently writing
                    // sensitive payloads in plain beside the sealed ones (found by review,
                    // 2026-11-28).
                    let encrypted = match journal.holds_data_keys() {
                        Ok(held) => held,
                        Err(e) => {
                            let j = journal.clone();
                            let _ = tokio::task::spawn_blocking(move || j.close()).await;
                            return Err(e.into());
                        }
                    };
                    if encrypted {
                        let j = journal.clone();
                        let _ = tokio::task::spawn_blocking(move || j.close()).await;
                        return Err(ConfigError::KeyProviderRequired { types: plain }.into());
                    }
                    tracing::warn!(types = ?plain, "no key provider: sensitive aggregate types are stored unencrypted (EngineBuilder::key_provider)");
                }
                Default::default()
            }
        };
        let topics = if self.topic_indexer {
            match start_topics(&journal, self.catalog).await {
                Ok(topics) => Some(topics),
                Err(e) => {
                    // Release the store's lock before answering, so a corrected open works.
                    let j = journal.clone();
                    let _ = tokio::task::spawn_blocking(move || j.close()).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let maintainer = if self.merkle_tree {
            let writer = journal.clone();
            match tokio::task::spawn_blocking(move || Maintainer::start(writer))
                .await
                .map_err(actor_error)?
            {
                Ok(m) => Some(m),
                Err(e) => {
                    if let Some((indexer, _)) = &topics {
                        indexer.stop_now();
                    }
                    let j = journal.clone();
                    let _ = tokio::task::spawn_blocking(move || j.close()).await;
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let now = self.clock.now();
        for (name, recover) in self.guard_recoveries {
            let reader = journal.reader().clone();
            let recovered = tokio::task::spawn_blocking(move || (recover.0)(&reader, now))
                .await
                .map_err(actor_error)??;
            tracing::debug!(
                aggregate_type = name,
                recovered,
                "guard recovered from the journal"
            );
        }
        let snapshotter = Snapshotter::start(journal.clone(), self.snapshot_policy.keep)
            .map_err(StorageError::from)?;
        let rt = Arc::new(Runtime {
            journal: journal.clone(),
            clock: self.clock,
            snapshot_policy: self.snapshot_policy,
            snapshotter,
            config: self.sharding,
            idempotency_retention_ms: self.idempotency_retention_ms,
            skipped_snapshots: Default::default(),
            sensitive,
            gate: Default::default(),
            awaits_gate: self.joins_cluster,
        });
        let fire: HashMap<&'static str, FireTimer> =
            self.types.iter().map(|(name, f)| (*name, f.1)).collect();
        let mut groups: HashMap<&'static str, Box<dyn AnyGroup>> = HashMap::new();
        for (name, start) in self.types {
            match (start.0)(rt.clone()).await {
                Ok(group) => {
                    groups.insert(name, group);
                }
                Err(e) => {
                    // Stop what already started, so the store's lock is released.
                    for group in groups.values() {
                        group.stop_now();
                    }
                    if let Some((indexer, _)) = &topics {
                        indexer.stop_now();
                    }
                    if let Some(m) = &maintainer {
                        m.stop_now();
                    }
                    return Err(e);
                }
            }
        }
        let (startup_pass_tx, startup_pass_rx) = tokio::sync::watch::channel(false);
        let engine = Engine {
            inner: Arc::new(Inner {
                journal,
                rt,
                groups,
                source: self.source,
                guards: self.guards,
                topics,
                maintainer,
                closing: AtomicBool::new(false),
                inflight: AtomicUsize::new(0),
                drained: Notify::new(),
                shutdown: tokio::sync::OnceCell::new(),
                fire,
                timer_pass: tokio::sync::Mutex::new(()),
                startup_pass: startup_pass_rx,
                timer_wake: Arc::new(Notify::new()),
                timer_task: std::sync::Mutex::new(None),
                key_locks: std::sync::Mutex::new(HashMap::new()),
                key_admin: tokio::sync::Mutex::new(()),
            }),
        };
        // The scheduler holds only a weak handle, so dropping the last `Engine` still drops
        // the engine (and stops the scheduler).
        let task = tokio::spawn(timer_loop(
            Arc::downgrade(&engine.inner),
            std::time::Duration::from_millis(self.timer_poll_ms),
            startup_pass_tx,
        ));
        *engine.inner.timer_task.lock().expect("timer task lock") = Some(task);
        Ok(engine)
    }
}

/// The timer scheduler: a pass at start-up (timers that came due while the process was down
/// fire now, in deadline order), then again when the next known deadline comes, after at
/// most `poll`, or when woken. Also sweeps idempotency keys past their retention.
async fn timer_loop(
    engine: std::sync::Weak<Inner>,
    poll: std::time::Duration,
    startup_pass: tokio::sync::watch::Sender<bool>,
) {
    // Dropped (the pass done, the loop ended or aborted): callers of the public passes stop
    // waiting for the start-up pass.
    let mut startup_pass = Some(startup_pass);
    loop {
        let (wait, woken) = {
            let Some(inner) = engine.upgrade() else {
                return;
            };
            if inner.closing.load(Ordering::SeqCst) {
                return;
            }
            let engine = Engine { inner };
            let fired = match engine.timer_pass().await {
                Ok(fired) => fired,
                Err(_) if engine.inner.closing.load(Ordering::SeqCst) => return,
                Err(e) => {
                    tracing::warn!(%e, "timer pass failed; retrying after the poll interval");
                    0
                }
            };
            let swept = match engine.sweep_pass().await {
                Ok(swept) => swept,
                Err(e) => {
                    tracing::warn!(%e, "idempotency sweep failed");
                    0
                }
            };
            if let Some(done) = startup_pass.take() {
                let _ = done.send(true);
            }
            // A full sweep means more are past their window: go on at once, so that keys
            // expire as fast as they are recorded (at one sweep per poll, a keyed load above
            // 10,000 commands/s grew the keyspace without bound; found by review).
            let wait = if fired >= TIMERS_PER_PASS_MAX || swept >= IDEMPOTENCY_SWEEP_MAX {
                std::time::Duration::ZERO
            } else {
                engine.until_next_timer(poll)
            };
            // Only the `Notify` across the wait, not the engine: an engine dropped without
            // `shutdown` meanwhile is dropped at once (its `Drop` aborts this task), not
            // after the wait, which can be the whole poll interval (found by review).
            let wake = engine.inner.timer_wake.clone();
            (wait, async move { wake.notified().await })
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = woken => {}
        }
    }
}

/// Checks the configured topics against the store, records new ones, starts the indexer.
async fn start_topics(
    journal: &JournalWriter,
    catalog: TopicCatalog,
) -> Result<(Indexer, Arc<TopicsRuntime>), EngineError> {
    let writer = journal.clone();
    tokio::task::spawn_blocking(move || {
        let stored: HashMap<String, crate::journal::topics::StoredTopic> =
            writer.stored_topics()?.into_iter().collect();
        for config in catalog.configured_topics() {
            crate::topics::index::check_config(config)?;
            match stored.get(&config.name) {
                Some(s) if s.partitions != config.partitions => {
                    return Err(TopicError::PartitionsMismatch {
                        topic: config.name.clone(),
                        stored: s.partitions,
                        configured: config.partitions,
                    })
                }
                Some(s) if s.format != config.format.code() => {
                    return Err(TopicError::FormatMismatch {
                        topic: config.name.clone(),
                        stored: crate::topics::WireFormat::from_code(s.format)
                            .map_or("unknown", |f| f.name()),
                        configured: config.format.name(),
                    })
                }
                Some(_) => {}
                None => writer.put_topic_config(
                    &config.name,
                    crate::journal::topics::StoredTopic {
                        partitions: config.partitions,
                        format: config.format.code(),
                    },
                )?,
            }
        }
        let catalog = Arc::new(catalog);
        let metrics = Arc::new(Metrics::default());
        let indexer = Indexer::start(writer.clone(), catalog.clone(), metrics.clone())?;
        let rt = Arc::new(TopicsRuntime::new(
            writer,
            catalog,
            indexer.status.clone(),
            metrics,
        ));
        Ok((indexer, rt))
    })
    .await
    .map_err(actor_error)?
    .map_err(EngineError::from)
}

/// A registered aggregate type's shards, type-erased for the registry.
trait AnyGroup: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    /// Stops the shards and waits for them (and their entities).
    fn stop(&self) -> BoxFuture<()>;
    /// Signals the shards to stop, without waiting (for `Drop`).
    fn stop_now(&self);
}

struct ShardGroup<A: Aggregate> {
    shards: Vec<ActorRef<ShardMsg<A>>>,
    queued: Vec<Arc<AtomicUsize>>,
    /// Each shard's routing table: commands to active aggregates skip the shard's mailbox.
    routes: Vec<Arc<Routes<A>>>,
}

impl<A: Aggregate> AnyGroup for ShardGroup<A> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn stop(&self) -> BoxFuture<()> {
        let shards = self.shards.clone();
        Box::pin(async move {
            for shard in shards {
                let _ = shard
                    .stop_and_wait(Some("engine shutdown".into()), None)
                    .await;
            }
        })
    }
    fn stop_now(&self) {
        for shard in &self.shards {
            shard.stop(Some("engine dropped".into()));
        }
    }
}

fn start_group<A: Aggregate>(
    rt: Arc<Runtime>,
) -> BoxFuture<Result<Box<dyn AnyGroup>, EngineError>> {
    Box::pin(async move {
        let mut shards = Vec::new();
        let mut queued = Vec::new();
        let mut routes = Vec::new();
        for index in 0..rt.config.shards {
            let q = Arc::new(AtomicUsize::new(0));
            let table = Arc::new(Routes::new());
            let args = ShardArgs {
                index,
                rt: rt.clone(),
                queued: q.clone(),
                routes: table.clone(),
            };
            let (actor, _) = Actor::spawn(None, ShardActor::<A>::new(), args)
                .await
                .map_err(actor_error)?;
            shards.push(actor);
            queued.push(q);
            routes.push(table);
        }
        Ok(Box::new(ShardGroup::<A> {
            shards,
            queued,
            routes,
        }) as Box<dyn AnyGroup>)
    })
}

/// An actor or task failure as an [`EngineError`].
fn actor_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Actor {
        message: e.to_string(),
    }
}

/// An idempotency key of an aggregate type.
type KeyLock = (&'static str, uuid::Uuid);

struct Inner {
    journal: JournalWriter,
    rt: Arc<Runtime>,
    groups: HashMap<&'static str, Box<dyn AnyGroup>>,
    source: String,
    /// `Arc<dyn CommandGuard<A>>` per aggregate type name.
    guards: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
    /// The topic indexer and what consumers share; `None` with `topic_indexer(false)`.
    topics: Option<(Indexer, Arc<TopicsRuntime>)>,
    /// The Merkle tree maintainer; `None` with `merkle_tree(false)`.
    maintainer: Option<Maintainer>,
    closing: AtomicBool,
    inflight: AtomicUsize,
    drained: Notify,
    /// The outcome of the one shutdown, shared by every caller of `shutdown`.
    shutdown: tokio::sync::OnceCell<Result<(), EngineError>>,
    /// How the scheduler fires a timer of each registered type.
    fire: HashMap<&'static str, FireTimer>,
    /// One timer pass at a time (the background scheduler and `run_due_timers`).
    timer_pass: tokio::sync::Mutex<()>,
    /// True once the scheduler's start-up pass (timers and sweep) is done, or its sender
    /// dropped: the public passes wait for it, so that once one has returned the start-up
    /// pass is behind it and never runs beside a later call (a test's exact count met a
    /// start-up pass that read the clock after the test's first calls). A clock moved before
    /// the first call may still be seen by the start-up pass, whose firings that call does
    /// not count.
    startup_pass: tokio::sync::watch::Receiver<bool>,
    timer_wake: Arc<Notify>,
    timer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Idempotency keys of commands in flight, per aggregate type: a second command with
    /// the same key waits for the first, then finds its result.
    key_locks: std::sync::Mutex<HashMap<KeyLock, Arc<tokio::sync::Mutex<()>>>>,
    /// One erasure or master-key rotation at a time: a rotation must never re-wrap a data
    /// key that an erasure is destroying.
    key_admin: tokio::sync::Mutex<()>,
}

impl Drop for Inner {
    /// Dropped without `shutdown`: stop the actors so that they release the journal; the
    /// committer then syncs what is queued and exits, and sled releases the directory lock.
    /// Commands answered before are durable in durable mode; nothing waits here.
    fn drop(&mut self) {
        if let Some(task) = self.timer_task.get_mut().ok().and_then(|t| t.take()) {
            task.abort();
        }
        if !self.closing.load(Ordering::SeqCst) {
            for group in self.groups.values() {
                group.stop_now();
            }
        }
        if let Some((indexer, _)) = &self.topics {
            indexer.stop_now();
        }
        if let Some(m) = &self.maintainer {
            m.stop_now();
        }
    }
}

/// The running store. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.inner.journal.dir())
            .field("types", &self.inner.groups.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Counts a command in flight for the lifetime of the guard, so shutdown can drain.
struct InflightGuard<'a>(&'a Inner);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Runs blocking journal work (an erasure's scrub, a rotation's re-wrap) on tokio's blocking
/// pool and waits for it; a panic there is the caller's, as in [`Engine::detached`], and a
/// runtime shutting down answers `Closed`.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StorageError::Closed),
    }
}

impl Engine {
    pub fn builder(data_dir: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder::new(data_dir)
    }

    /// Forgets a data subject (crypto-shredding, docs/security.md): destroys every data key
    /// the subject ever had (its current key and the earlier ones an upgrade left, see
    /// [`Engine::upgrade_data_keys`]) in one atomic, durable batch that also appends an
    /// audited erasure event (aggregate type [`crate::crypto::ERASURE_TYPE`], id the current
    /// key's id; `who` as its user id, `why` and the earlier key ids in its payload, the time
    /// as its timestamp). From then on the subject's payloads and snapshots cannot be read by
    /// anyone: reads answer [`StorageError::Erased`], its aggregates
    /// [`CommandError::Erased`]. Their records stay, so `verify`, digests and inclusion
    /// proofs are unchanged. The subject is the aggregate id, or what
    /// `Aggregate::data_subject` names (Appointment: `patient:<uuid>`).
    ///
    /// Messages already read from topics or published to Kafka are beyond the store's reach.
    ///
    /// It runs to its end (the scrub included) on a task of its own, holding the lock that
    /// keeps erasures and rotations apart, even if the caller stops waiting.
    pub async fn forget_subject(
        &self,
        subject: &str,
        who: &str,
        why: &str,
    ) -> Result<crate::crypto::ErasureReceipt, ForgetError> {
        let (subject, who, why) = (subject.to_owned(), who.to_owned(), why.to_owned());
        self.detached(|engine| async move { engine.forget_held(&subject, &who, &why).await })
            .await
            .unwrap_or(Err(ForgetError::ShuttingDown))
    }

    /// [`Engine::forget_subject`], on its own task.
    async fn forget_held(
        &self,
        subject: &str,
        who: &str,
        why: &str,
    ) -> Result<crate::crypto::ErasureReceipt, ForgetError> {
        let _inflight = self.enter().ok_or(ForgetError::ShuttingDown)?;
        let _admin = self.inner.key_admin.lock().await;
        let journal = &self.inner.journal;
        // Until the erasure's batch is done no key is made for the subject (no upgrade on
        // write either), so the list below is every key that can seal its payloads.
        let (forgetting, key_ids) = journal.begin_forget(subject)?;
        let (&key_id, earlier_key_ids) =
            key_ids.split_first().ok_or(ForgetError::UnknownSubject)?;
        let now = evershard_model::truncate_to_micros(self.inner.rt.clock.now());
        let stream = StreamId::new(crate::crypto::ERASURE_TYPE, key_id.to_string());
        let event = crate::journal::NewEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: crate::crypto::ERASURE_EVENT_TYPE.into(),
            event_version: "1.0".into(),
            timestamp: now,
            correlation_id: uuid::Uuid::new_v4(),
            causation_id: None,
            source: self.inner.source.clone(),
            user_id: Some(who.to_owned()),
            session_id: None,
            audit_context: None,
            payload: evershard_model::codec::encode(&crate::crypto::Erasure {
                key_id,
                reason: why.to_owned(),
                earlier_key_ids: earlier_key_ids.to_vec(),
            }),
        };
        let mut request = crate::journal::AppendRequest::new(stream, 0, vec![event]);
        request.erases = key_ids.clone();
        request.erases_subject = Some(subject.to_owned());
        request.key_writes = journal.erasure_writes(subject, &key_ids, now.timestamp_micros());
        let committed = journal.append(request).await?;
        // The batch is done: new data of the subject may have a new key again (not only
        // after the scrub below, which can take a while on a long log).
        drop(forgetting);
        tracing::info!(%key_id, earlier = earlier_key_ids.len(), who, "data subject forgotten");
        // The erasure is durable: a failed scrub is retried at the next writable open.
        let scrubber = journal.clone();
        // Not `blocking`: a panic of the scrub must not cost the caller the receipt of an
        // erasure that is done (its next open scrubs again).
        let scrub =
            match tokio::task::spawn_blocking(move || scrubber.scrub_superseded_keys()).await {
                Ok(result) => result.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(format!("the scrub did not finish: {e}")),
            };
        if let Err(error) = &scrub {
            tracing::error!(%error, "scrubbing the erased keys from the log failed; the next open retries");
        }
        // Frames written before frame format 2 keep their key entries (docs/security.md).
        let log_scrubbed = scrub.is_ok() && journal.unscrubbable_key_frames() == 0;
        Ok(crate::crypto::ErasureReceipt {
            key_id,
            earlier_key_ids: earlier_key_ids.to_vec(),
            global_position: committed.records[0].global_position,
            erased_at: now,
            log_scrubbed,
        })
    }

    /// Gives every data subject whose current key is older than AES-256-GCM (an
    /// XChaCha20-Poly1305 key, keyring entry format 1) a new AES-256-GCM key as its current
    /// key, without rewriting any event: old records keep opening with the key they name,
    /// new ones are sealed with the new key, and [`Engine::forget_subject`] erases both.
    /// Each subject's new key and its key list are written in one atomic, durable batch. A
    /// subject is upgraded anyway when it is next written; this does it for all at once
    /// (`evershard`'s auditors' binary reads either). Returns how many subjects it upgraded.
    /// Like [`Engine::forget_subject`], it runs to its end even if the caller stops waiting.
    pub async fn upgrade_data_keys(&self) -> Result<usize, StorageError> {
        self.detached(|engine| async move {
            let _inflight = engine.enter().ok_or(StorageError::Closed)?;
            let _admin = engine.inner.key_admin.lock().await;
            let journal = engine.inner.journal.clone();
            blocking(move || journal.upgrade_data_keys()).await
        })
        .await
        .unwrap_or(Err(StorageError::Closed))
    }

    /// Re-wraps every data key under `provider`'s current master key, which becomes the
    /// engine's provider; events and snapshots are not rewritten. `provider` must still hold
    /// the master keys being rotated away (a [`crate::crypto::FileKeyProvider`] file with
    /// the new key appended). Returns how many data keys were re-wrapped; once it returns,
    /// the old master keys can be removed from the provider. Durable when it returns. A
    /// provider that cannot open every stored data key, or lacks the current master key, is
    /// refused (a [`StorageError::Key`]) before anything changes: the engine keeps its
    /// provider.
    /// Like [`Engine::forget_subject`], it runs to its end even if the caller stops waiting.
    pub async fn rotate_master_key(
        &self,
        provider: Arc<dyn KeyProvider>,
    ) -> Result<usize, StorageError> {
        self.detached(|engine| async move {
            let _inflight = engine.enter().ok_or(StorageError::Closed)?;
            let _admin = engine.inner.key_admin.lock().await;
            let journal = engine.inner.journal.clone();
            // Checked before the switch: a provider that cannot open every stored key (it
            // lacks the old master key) would leave the engine unable to load aggregates
            // whose keys are not cached, and keys made meanwhile wrapped with a master key
            // the caller believes was never adopted (found by review, 2026-11-28).
            let check = (journal.clone(), provider.clone());
            blocking(move || check.0.check_key_successor(&*check.1)).await?;
            journal.set_key_provider(provider);
            blocking(move || journal.rewrap_data_keys()).await
        })
        .await
        .unwrap_or(Err(StorageError::Closed))
    }

    /// Runs `work` with a clone of the engine and waits for it: its first step in the
    /// caller's poll, the rest on a task of its own. A caller that drops the returned future
    /// (a timeout) does not cut the work short: what it holds (a keyed command's idempotency
    /// key, the lock that keeps erasures and rotations apart) is let go when the work is
    /// done, not while its command or batch is still on its way. `None`: the runtime is
    /// shutting down. A panic of the work is the caller's.
    async fn detached<T, F>(&self, work: impl FnOnce(Engine) -> F) -> Option<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        use std::task::Poll;
        // In the caller's span, as if it ran in place.
        let mut work = Box::pin(tracing::Instrument::in_current_span(work(self.clone())));
        // The first step runs here: a command it sends on that step (an uncontended key's)
        // reaches its aggregate in the order the caller sent its commands,
        // as an inline command does. Spawned whole, it was sent whenever the task first ran,
        // after commands the caller sent later (found by review, 2026-11-28).
        // Unconstrained: a caller whose task used up its cooperative budget would otherwise
        // see the key's lock answer "later", and the command would go out spawned, late.
        let first = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            Poll::Ready(work.as_mut().poll(cx))
        }))
        .await;
        if let Poll::Ready(value) = first {
            return Some(value);
        }
        match tokio::spawn(work).await {
            Ok(value) => Some(value),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }

    /// The journal's read view: history, streams, global order, verification, statistics.
    /// It cannot append: commands are the only way events get in. After [`Engine::shutdown`]
    /// its reads fail with [`StorageError::Closed`].
    pub fn journal(&self) -> &Journal {
        self.inner.journal.reader()
    }

    /// The snapshots that recovery of an aggregate could not use since this engine opened
    /// (unreadable or unusable records), oldest first, at most the last 1,024. Each one's
    /// aggregate was recovered anyway — from an older snapshot or from its events alone —
    /// so its state is exact; the list says what was damaged. Empty when all was well.
    pub fn skipped_snapshots(&self) -> Vec<crate::snapshot::SkippedSnapshot> {
        self.inner
            .rt
            .skipped_snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn group<A: Aggregate>(&self) -> Option<&ShardGroup<A>> {
        self.inner
            .groups
            .get(A::TYPE)?
            .as_any()
            .downcast_ref::<ShardGroup<A>>()
    }

    fn enter(&self) -> Option<InflightGuard<'_>> {
        // SeqCst pairs with `shutdown`: either it sees this command in flight, or this
        // command sees it closing. Weaker orderings allow both to miss each other.
        self.inner.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = InflightGuard(&self.inner);
        if self.inner.closing.load(Ordering::SeqCst) {
            return None; // the guard drops here and may wake the drainer
        }
        Some(guard)
    }

    async fn send<A: Aggregate, T>(
        &self,
        aggregate_id: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, CommandError<A::Error>>>) -> EntityMsg<A>,
    ) -> Result<T, CommandError<A::Error>> {
        let Some(_guard) = self.enter() else {
            return Err(CommandError::ShuttingDown);
        };
        StreamId::validate_parts(A::TYPE, aggregate_id)
            .map_err(|e| CommandError::Invalid(InvalidRequest::Stream(e)))?;
        let group = self
            .group::<A>()
            .ok_or(CommandError::NotRegistered(A::TYPE))?;
        let index = crate::sharding::shard_for(A::TYPE, aggregate_id, group.shards.len());
        let (tx, rx) = oneshot::channel();
        let routes = &group.routes[index];
        // An active aggregate gets the command straight into its mailbox.
        let entity_limit = self.inner.rt.config.entity_mailbox_commands_max;
        let msg = match routes.send_direct(aggregate_id, make(tx), entity_limit) {
            Direct::Sent => None,
            Direct::Overloaded(_) => {
                return Err(CommandError::Overloaded {
                    what: "the aggregate's mailbox",
                    limit: entity_limit,
                })
            }
            Direct::ViaShard(msg) => Some(msg),
        };
        if let Some(msg) = msg {
            let limit = self.inner.rt.config.shard_mailbox_commands_max;
            let queued = &group.queued[index];
            if queued.fetch_add(1, Ordering::AcqRel) >= limit {
                queued.fetch_sub(1, Ordering::AcqRel);
                routes.not_via_shard(aggregate_id);
                return Err(CommandError::Overloaded {
                    what: "the shard's mailbox",
                    limit,
                });
            }
            let route = ShardMsg::Route {
                aggregate_id: aggregate_id.to_owned(),
                msg,
            };
            if group.shards[index].cast(route).is_err() {
                queued.fetch_sub(1, Ordering::AcqRel);
                routes.not_via_shard(aggregate_id);
                return Err(CommandError::ShuttingDown);
            }
        }
        // A closed reply channel: the actor stopped (it failed, or the shard stopped) before
        // it handled the command. Nothing of it was written.
        rx.await.unwrap_or_else(|_| {
            Err(CommandError::Unavailable {
                stream: StreamId::new(A::TYPE, aggregate_id),
                reason: UnavailableReason::Stopped,
            })
        })
    }

    /// Executes a command on one aggregate instance; returns the committed events (none for
    /// an idempotent repeat) or a typed error. Commands to one instance run one at a time in
    /// arrival order.
    pub async fn execute<A: Aggregate>(
        &self,
        aggregate_id: &str,
        command: impl Into<A::Command>,
    ) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        let metadata = Metadata::new(self.inner.source.clone());
        self.execute_with::<A>(aggregate_id, command, metadata)
            .await
    }

    /// [`Engine::execute`] with explicit correlation, causation, source, user and
    /// idempotency key.
    ///
    /// With [`Metadata::idempotency_key`], a repeat of the key for the same aggregate type
    /// within the retention window answers the original result (the same envelopes, read
    /// back from the journal) without running `decide` or the guard and without writing;
    /// the same key with another command (or another aggregate id) is refused with
    /// [`CommandError::IdempotencyConflict`]. Concurrent commands with one key run one after
    /// the other, so one executes and the others get its result. A command that is refused
    /// (any error) records nothing: a retry with the key is decided afresh.
    ///
    /// A keyed command is sent from the caller's first poll, like any command (so one
    /// caller's commands reach their aggregate in the order it sent them, unless the key is
    /// held by a concurrent command with it), and then waited for on a task of its own: a
    /// caller that drops this future (a timeout) while the command is on its way leaves the
    /// key held until the command is answered, so a retry waits for it and gets its result
    /// instead of running beside it. The type's guard is asked and settled by the aggregate
    /// (see [`CommandGuard`](crate::model::CommandGuard)), whether or not the caller still
    /// waits.
    pub async fn execute_with<A: Aggregate>(
        &self,
        aggregate_id: &str,
        command: impl Into<A::Command>,
        metadata: Metadata,
    ) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        let command = command.into();
        let mut metadata = metadata;
        metadata.idempotency_key = metadata
            .idempotency_key
            .or_else(|| A::idempotency_key(&command));
        let guard = self.guard::<A>();
        let Some(key) = metadata.idempotency_key else {
            return self
                .send_execute::<A>(aggregate_id, command, metadata, guard)
                .await;
        };
        let aggregate_id = aggregate_id.to_owned();
        self.detached(|engine| async move {
            engine
                .execute_held::<A>(&aggregate_id, key, command, metadata, guard)
                .await
        })
        .await
        .unwrap_or(Err(CommandError::ShuttingDown))
    }

    /// [`Engine::execute_with`]'s command with idempotency key `key`, on its own task: one at
    /// a time per key.
    async fn execute_held<A: Aggregate>(
        &self,
        aggregate_id: &str,
        key: uuid::Uuid,
        command: A::Command,
        metadata: Metadata,
        guard: Option<crate::sharding::Guard<A>>,
    ) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        let lock = {
            let mut locks = self
                .inner
                .key_locks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            locks.entry((A::TYPE, key)).or_default().clone()
        };
        let result = {
            let _held = lock.lock().await;
            // The aggregate answers a repeat, and asks the guard only when it is none (see
            // `EntityState::execute`).
            self.send_execute::<A>(aggregate_id, command, metadata, guard)
                .await
        };
        let mut locks = self
            .inner
            .key_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The map's and ours: nobody else waits for this key.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&(A::TYPE, key));
        }
        result
    }

    /// The guard registered for `A`, if any.
    fn guard<A: Aggregate>(&self) -> Option<crate::sharding::Guard<A>> {
        self.inner
            .guards
            .get(A::TYPE)
            .and_then(|g| g.downcast_ref::<crate::sharding::Guard<A>>())
            .cloned()
    }

    /// Sends a command to its entity and waits for the answer.
    async fn send_execute<A: Aggregate>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: Metadata,
        guard: Option<crate::sharding::Guard<A>>,
    ) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        self.send::<A, _>(aggregate_id, |reply| EntityMsg::Execute {
            command,
            metadata,
            guard,
            reply,
        })
        .await
    }

    /// Fires every timer due by the engine's clock now, in deadline order, through the
    /// normal command path; returns how many timer commands ran. The background scheduler
    /// does the same at start-up, at the next deadline and at least every `timer_poll_ms`;
    /// tests that move a [`ManualClock`](crate::ManualClock) call this to fire at once.
    /// Passes never overlap: this waits for a running one, and for the start-up pass.
    pub async fn run_due_timers(&self) -> Result<usize, EngineError> {
        self.after_startup_pass().await;
        self.timer_pass().await
    }

    /// Waits until the scheduler's start-up pass is done (or will never be).
    async fn after_startup_pass(&self) {
        let mut done = self.inner.startup_pass.clone();
        let _ = done.wait_for(|done| *done).await;
    }

    /// [`Engine::run_due_timers`] without waiting for the start-up pass: the scheduler's.
    async fn timer_pass(&self) -> Result<usize, EngineError> {
        let _pass = self.inner.timer_pass.lock().await;
        let now = self.inner.rt.clock.now().timestamp_micros();
        let mut after = None;
        let mut fired = 0;
        while fired < TIMERS_PER_PASS_MAX {
            let page = self
                .inner
                .journal
                .due_timers(after.as_ref(), now, TIMER_PAGE_MAX)?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            // Dispatched in deadline order; different aggregates then run in parallel.
            let mut running = tokio::task::JoinSet::new();
            for timer in page {
                let Some(fire) = self.inner.fire.get(timer.stream.aggregate_type.as_str()) else {
                    tracing::debug!(stream = %timer.stream, "timer of a type this engine does not run");
                    continue;
                };
                running.spawn(fire(
                    self.clone(),
                    timer.stream.aggregate_id.clone(),
                    timer.deadline.timestamp_micros(),
                ));
            }
            while let Some(outcome) = running.join_next().await {
                match outcome {
                    Ok(Ok(true)) => fired += 1,
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(%e, "a timer command failed; it fires again at the next pass")
                    }
                    Err(e) => tracing::warn!(%e, "a timer task failed"),
                }
            }
            if self.inner.closing.load(Ordering::SeqCst) {
                return Err(EngineError::ShuttingDown);
            }
            after = Some(last);
        }
        Ok(fired)
    }

    /// Wakes the background scheduler for a pass now (e.g. after moving a manual clock),
    /// without waiting for it. [`Engine::run_due_timers`] waits.
    pub fn wake_timers(&self) {
        self.inner.timer_wake.notify_one();
    }

    /// How long the scheduler may sleep: until the earliest pending deadline by the clock,
    /// at most `poll`; `poll` when the earliest is already due (it did not fire: retry).
    fn until_next_timer(&self, poll: std::time::Duration) -> std::time::Duration {
        let next = match self.inner.journal.timers(None).next() {
            Some(Ok(timer)) => timer.deadline,
            _ => return poll,
        };
        let now = self.inner.rt.clock.now();
        match (next - now).to_std() {
            Ok(d) if !d.is_zero() => d.min(poll),
            _ => poll,
        }
    }

    /// Removes idempotency records older than the retention window (at most 10,000 per
    /// call); returns how many. The scheduler calls it on every pass; this waits for its
    /// start-up pass first.
    pub async fn sweep_idempotency_keys(&self) -> Result<usize, EngineError> {
        self.after_startup_pass().await;
        self.sweep_pass().await
    }

    /// [`Engine::sweep_idempotency_keys`] without waiting for the start-up pass.
    async fn sweep_pass(&self) -> Result<usize, EngineError> {
        let retention = self.inner.rt.idempotency_retention_ms.saturating_mul(1000);
        let before = self
            .inner
            .rt
            .clock
            .now()
            .timestamp_micros()
            .saturating_sub(retention)
            // A record is past its window when recorded_at + retention <= now, as the lookup
            // says: remove every record at or before now - retention.
            .saturating_add(1);
        let journal = self.inner.journal.clone();
        Ok(tokio::task::spawn_blocking(move || {
            journal.sweep_idempotency(before, IDEMPOTENCY_SWEEP_MAX)
        })
        .await
        .map_err(actor_error)??)
    }

    /// The live state and version of an aggregate, read through its actor (so it is ordered
    /// with that aggregate's commands).
    pub async fn state<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<(A::State, u64), CommandError<A::Error>> {
        self.send::<A, _>(aggregate_id, |reply| EntityMsg::GetState { reply })
            .await
    }

    /// Every committed event of an aggregate, in sequence order, read from the journal.
    pub fn history<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A::Event>>, StorageError> {
        let stream = StreamId::new(A::TYPE, aggregate_id);
        repository::read_events::<A>(&self.inner.journal, &stream, 1, u64::MAX).collect()
    }

    /// Aggregates of type `A` currently in memory (for tests and monitoring).
    pub async fn active_aggregates<A: Aggregate>(&self) -> Result<usize, EngineError> {
        let group = self
            .group::<A>()
            .ok_or(EngineError::NotRegistered(A::TYPE))?;
        let mut total = 0;
        for shard in &group.shards {
            let (tx, rx) = oneshot::channel();
            shard
                .cast(ShardMsg::ActiveCount { reply: tx })
                .map_err(actor_error)?;
            total += rx.await.map_err(actor_error)?;
        }
        Ok(total)
    }

    /// Graceful shutdown: refuses new commands, waits for those in flight to be answered,
    /// stops the actors, writes queued snapshots, flushes and syncs the journal, and closes
    /// it: when this returns, the store's directory lock is released — the same process may
    /// reopen the store at once, even while clones of this engine are alive (their commands
    /// then answer `ShuttingDown`, their journal reads `Closed`).
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        // Every caller, concurrent or later, gets the outcome of the one real shutdown.
        self.inner
            .shutdown
            .get_or_init(|| self.shutdown_once())
            .await
            .clone()
    }

    async fn shutdown_once(&self) -> Result<(), EngineError> {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.timer_wake.notify_one();
        loop {
            let drained = self.inner.drained.notified();
            if self.inner.inflight.load(Ordering::SeqCst) == 0 {
                break;
            }
            drained.await;
        }
        for group in self.inner.groups.values() {
            group.stop().await;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.rt.snapshotter.stop();
            if let Some((indexer, _)) = &inner.topics {
                // Everything committed is synced, then indexed, before the store closes.
                if inner.journal.sync().is_ok() {
                    indexer.drain_and_stop();
                } else {
                    indexer.stop_now();
                }
            }
            if let Some(m) = &inner.maintainer {
                // Everything committed is synced, then covered by the tree, before close.
                if inner.journal.sync().is_ok() {
                    m.drain_and_stop();
                } else {
                    m.stop_now();
                }
            }
            inner.journal.close()
        })
        .await
        .map_err(actor_error)??;
        Ok(())
    }
}

/// Digests and proofs for auditors, answered while the engine runs (see `crate::audit`).
impl Engine {
    /// The tree head over every event committed so far: O(log n) stored subtree hashes plus
    /// at most 255 records. Blocking reads run on tokio's blocking pool.
    pub async fn digest(&self) -> Result<TreeHead, AuditError> {
        let journal = self.inner.journal.reader().clone();
        tokio::task::spawn_blocking(move || journal.tree_head(None))
            .await
            .map_err(|e| AuditError::Storage(StorageError::from(std::io::Error::other(e))))?
    }

    /// The tree head over the first `tree_size` events.
    pub async fn digest_at(&self, tree_size: u64) -> Result<TreeHead, AuditError> {
        let journal = self.inner.journal.reader().clone();
        tokio::task::spawn_blocking(move || journal.tree_head(Some(tree_size)))
            .await
            .map_err(|e| AuditError::Storage(StorageError::from(std::io::Error::other(e))))?
    }

    /// The inclusion proof of event `sequence` of aggregate `A`/`id` in the tree of
    /// `tree_size` events (an auditor's digest), with the record's bytes.
    pub async fn prove<A: Aggregate>(
        &self,
        id: &str,
        sequence: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, AuditError> {
        let journal = self.inner.journal.reader().clone();
        let stream = StreamId::new(A::TYPE, id);
        tokio::task::spawn_blocking(move || journal.prove_event(&stream, sequence, Some(tree_size)))
            .await
            .map_err(|e| AuditError::Storage(StorageError::from(std::io::Error::other(e))))?
    }

    /// The consistency proof from the tree of `first_size` events (an auditor's earlier
    /// digest) to the tree of every event committed so far.
    pub async fn prove_consistency(&self, first_size: u64) -> Result<ConsistencyProof, AuditError> {
        let journal = self.inner.journal.reader().clone();
        tokio::task::spawn_blocking(move || journal.prove_consistency(first_size, None))
            .await
            .map_err(|e| AuditError::Storage(StorageError::from(std::io::Error::other(e))))?
    }

    /// Verifies the live store without stopping it: every record at a global position up
    /// to the durable position when called (its bytes, CRC, place, and hash chain link) and
    /// the global index over them, while commands keep flowing. What lies beyond that cut is
    /// left to the next call. The full recomputation of the Merkle tree needs every record
    /// at one cut: take a [`checkpoint`](Engine::checkpoint) and verify it (or digest it and
    /// check consistency, docs/audit.md). Runs on a blocking thread.
    pub async fn verify(&self) -> Result<crate::journal::VerifyReport, EngineError> {
        let journal = self.inner.journal.reader().clone();
        tokio::task::spawn_blocking(move || {
            let cut = journal.durable_position();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
            journal.verify_with(&crate::journal::VerifyOptions {
                scope: crate::journal::VerifyScope {
                    positions: Some(1..=cut.max(1)),
                    ..Default::default()
                },
                threads,
                progress: None,
                visit: None,
            })
        })
        .await
        .map_err(|e| EngineError::Storage(StorageError::from(std::io::Error::other(e))))
    }

    /// Takes a checkpoint: a consistent, read-only copy of the store at a global-position
    /// cut, into `dir` (missing or empty), while commands keep flowing. Appends wait only
    /// while the keyspaces that commands rewrite (timers, idempotency records, offsets and
    /// cursors) are copied; the events, snapshots and indexes are copied afterwards. Every
    /// read-only command reads the copy like any store; opening it for writing is refused.
    /// See docs/audit.md, "Reading a live store".
    pub async fn checkpoint(
        &self,
        dir: impl Into<std::path::PathBuf>,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let dir = dir.into();
        let engine = self.clone();
        let taken_at = evershard_model::truncate_to_micros(self.inner.rt.clock.now());
        tokio::task::spawn_blocking(move || {
            let writer = &engine.inner.journal;
            writer.checkpoint(&dir, taken_at, |cut| engine.wait_followers(cut))
        })
        .await
        .map_err(|e| {
            CheckpointError::Source(Box::new(StorageError::from(std::io::Error::other(e))))
        })?
    }

    /// Blocks until the topic indexer and the tree maintainer (those running) cover `cut`,
    /// for at most [`FOLLOWER_CATCH_UP_MS_MAX`]. Called with the committer paused, so
    /// nothing newer than `cut` can become durable meanwhile.
    fn wait_followers(&self, cut: u64) -> Result<(), CheckpointError> {
        let started = std::time::Instant::now();
        let behind = |follower: &'static str, covered: u64| {
            if covered >= cut {
                return Ok(false);
            }
            let waited_ms = started.elapsed().as_millis() as u64;
            if waited_ms >= FOLLOWER_CATCH_UP_MS_MAX {
                return Err(CheckpointError::FollowerBehind {
                    follower,
                    covered,
                    cut_position: cut,
                    waited_ms,
                });
            }
            Ok(true)
        };
        loop {
            let mut waiting = false;
            if let Some((_, rt)) = &self.inner.topics {
                let covered = rt.status.cursor.load(Ordering::Acquire);
                waiting |= behind("topic indexer", covered)?;
            }
            if let Some(m) = &self.inner.maintainer {
                let covered = m.status.size.load(Ordering::Acquire);
                waiting |= behind("Merkle tree maintainer", covered)?;
            }
            if !waiting {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The tree size the maintainer has stored nodes for, and its last error, if any.
    pub fn tree_maintainer_status(&self) -> Option<(u64, Option<String>)> {
        self.inner.maintainer.as_ref().map(|m| {
            (
                m.status.size.load(Ordering::Acquire),
                m.status
                    .error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            )
        })
    }
}

/// Topics, consumers, subscriptions, metrics (see `crate::topics`).
impl Engine {
    /// The actors' shared runtime (a cluster installs its append gate there).
    #[cfg(feature = "kafka")]
    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.inner.rt
    }

    pub(crate) fn topics(&self) -> Result<&Arc<TopicsRuntime>, TopicError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(TopicError::ShuttingDown);
        }
        self.inner
            .topics
            .as_ref()
            .map(|(_, rt)| rt)
            .ok_or(TopicError::Disabled)
    }

    /// Reads topics: "the messages of topic T, partition P, from offset O", end offsets,
    /// topic configurations.
    pub fn topic_log(&self) -> Result<TopicLog, TopicError> {
        Ok(self.topics()?.log.clone())
    }

    /// The global position the topic index covers: every event at or below it is in its
    /// topics.
    pub fn indexed_through(&self) -> Result<u64, TopicError> {
        Ok(self
            .topics()?
            .status
            .cursor
            .load(std::sync::atomic::Ordering::Acquire))
    }

    /// Sends the timer of `aggregate_id` (of a registered `aggregate_type`) found due at
    /// `deadline` (microseconds), as the scheduler does for an entry it read: for tests of
    /// an entry that moved between the scheduler's read and the fire.
    #[cfg(feature = "fault-injection")]
    pub async fn fire_timer_for_tests(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        deadline: i64,
    ) -> Result<bool, String> {
        let fire = self
            .inner
            .fire
            .get(aggregate_type)
            .ok_or("not registered")?;
        fire(self.clone(), aggregate_id.to_owned(), deadline).await
    }

    /// Where the segment log's frames end (`None` on the sled layout): a test's proof that
    /// nothing was written.
    #[cfg(feature = "fault-injection")]
    pub fn log_end_for_tests(&self) -> Option<u64> {
        self.inner.journal.reader().log_end()
    }

    /// Keeps the topic indexer from indexing anything new while `held`: for tests of readers
    /// that find the index behind the journal.
    #[cfg(feature = "fault-injection")]
    pub fn hold_topic_indexer_for_tests(&self, held: bool) {
        if let Some((indexer, _)) = &self.inner.topics {
            indexer.hold_for_tests(held);
        }
    }

    /// Waits until the index covers `position` (at most `timeout`); true when it does.
    /// Returns false at once when the journal is poisoned (see [`Journal::is_poisoned`]):
    /// the indexer cannot write any more, so the index will not move until the store is
    /// reopened, and waiting out the timeout would only hide the cause.
    pub async fn wait_indexed(&self, position: u64, timeout: std::time::Duration) -> bool {
        /// How often a waiter looks at the journal's poison flag (the indexer's progress
        /// wakes it at once).
        const POISON_CHECK_MS: u64 = 50;
        let Ok(rt) = self.topics() else { return false };
        let mut moved = rt.status.moved.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if *moved.borrow_and_update() >= position {
                return true;
            }
            if self.journal().is_poisoned() {
                return false;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(std::time::Duration::from_millis(POISON_CHECK_MS));
            if let Ok(Err(_)) = tokio::time::timeout(wait, moved.changed()).await {
                return false; // the indexer is gone
            }
        }
    }

    /// A member of consumer group `group` on `topic`, starting from the group's committed
    /// offsets.
    pub fn consumer(&self, group: &str, topic: &str) -> Result<Consumer, TopicError> {
        self.consumer_with(group, topic, ConsumerOptions::default())
    }

    /// [`Engine::consumer`], starting from the beginning, an offset or a point in time.
    pub fn consumer_with(
        &self,
        group: &str,
        topic: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, TopicError> {
        Consumer::new(self.topics()?.clone(), group, topic, options)
    }

    /// Runs `handler` on every message of `topic` for consumer group `group`: at-least-once,
    /// retries with backoff, dead letters to `dlq.events.v1` (see `SubscriptionOptions`).
    pub fn subscribe(
        &self,
        group: &str,
        topic: &str,
        handler: impl Handler,
    ) -> Result<Subscription, TopicError> {
        self.subscribe_with(group, topic, handler, SubscriptionOptions::default())
    }

    /// [`Engine::subscribe`] with options (retries, dedup, start).
    pub fn subscribe_with(
        &self,
        group: &str,
        topic: &str,
        handler: impl Handler,
        options: SubscriptionOptions,
    ) -> Result<Subscription, TopicError> {
        if options.batch_messages_max == 0 {
            // A member that polls for nothing holds its partitions and never reads them.
            return Err(TopicError::InvalidOption {
                option: "batch_messages_max",
                reason: "must be at least 1",
            });
        }
        let consumer = self.consumer_with(group, topic, options.consumer)?;
        Ok(crate::topics::subscribe::start(
            consumer,
            Arc::new(handler),
            options,
        ))
    }

    /// Hands the original message of a dead letter (a message of `dlq.events.v1`) to
    /// `handler` again, once; returns the handler's outcome. Re-driving does not change the
    /// dead-letter topic (its messages are facts); a failure may be dead-lettered again by the
    /// caller with [`Engine::dead_letter`]. A letter that does not hold its message's value
    /// (an event encrypted at rest, or a value too large: [`DeadLetter::value_kept`]) is
    /// re-driven with the message read again from its topic.
    pub async fn redrive(
        &self,
        dead_letter: &Message,
        handler: &impl Handler,
    ) -> Result<Result<(), HandlerError>, TopicError> {
        let letter = DeadLetter::from_message(dead_letter)?;
        let original = if letter.value_kept() {
            letter.original_message()
        } else {
            let rt = self.topics()?;
            let read = rt
                .log
                .read(&letter.original_topic, letter.partition, letter.offset, 1)?;
            match read.into_iter().next() {
                Some(m) if m.offset == letter.offset => m,
                _ => {
                    return Err(TopicError::NotDeadLetter {
                        reason: format!(
                            "its original message ({} partition {} offset {}) is not in its topic",
                            letter.original_topic, letter.partition, letter.offset
                        ),
                    })
                }
            }
        };
        Ok(handler.handle(original).await)
    }

    /// Appends a dead letter for `message` (durably) to `dlq.events.v1`.
    pub async fn dead_letter(
        &self,
        message: &Message,
        letter: &DeadLetter,
    ) -> Result<(), TopicError> {
        let rt = self.topics()?;
        crate::topics::subscribe::dead_letter(&rt.writer, message, letter).await
    }

    /// The lag of a consumer group on every partition of `topic`.
    pub fn consumer_lag(&self, group: &str, topic: &str) -> Result<GroupLag, TopicError> {
        let rt = self.topics()?;
        lag_of(&rt.log, group, topic, &rt.committed(group, topic)?)
    }

    /// Counters per topic and event type since open, with each topic's queue depth.
    pub fn metrics(&self) -> Result<Vec<TopicMetrics>, TopicError> {
        let rt = self.topics()?;
        let committed = rt.writer.committed_offsets(None)?;
        let mut depth: HashMap<String, u64> = HashMap::new();
        for info in rt.log.topics()? {
            // Queue depth: messages the slowest group on the topic has not committed (all of
            // them when no group reads it), counted like `consumer_lag`: a partition the
            // group never committed counts whole (before 2026-11-28 it counted nothing).
            let mut groups: HashMap<&str, HashMap<u32, u64>> = HashMap::new();
            for (g, t, p, o) in &committed {
                if *t == info.name {
                    groups.entry(g.as_str()).or_default().insert(*p, *o);
                }
            }
            let max = groups
                .values()
                .map(|offsets| {
                    info.end_offsets
                        .iter()
                        .enumerate()
                        .map(|(p, end)| {
                            end.saturating_sub(offsets.get(&(p as u32)).copied().unwrap_or(0))
                        })
                        .sum::<u64>()
                })
                .max()
                .unwrap_or(info.messages());
            depth.insert(info.name.clone(), max);
        }
        Ok(rt
            .metrics
            .snapshot()
            .into_iter()
            .map(|((topic, event_type), metrics)| TopicMetrics {
                queue_depth: depth.get(&topic).copied().unwrap_or(0),
                topic,
                event_type,
                metrics,
            })
            .collect())
    }

    /// The health check: indexer lag, every group's lag, every running publisher's lag (the
    /// Kafka publisher, feature `kafka`), the dead-letter count. Healthy when the indexer
    /// has no error, no publisher has a fatal error or an anomaly, and no lag exceeds
    /// `lag_max` messages.
    pub fn health(&self, lag_max: u64) -> Result<Health, TopicError> {
        let rt = self.topics()?;
        let cursor = rt.status.cursor.load(Ordering::Acquire);
        let indexer_lag = rt.writer.durable_position().saturating_sub(cursor);
        let indexer_error = rt
            .status
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let consumer_lag = all_lags(&rt.log, &rt.writer.committed_offsets(None)?)?;
        let dead_letters = match rt.log.topic(crate::topics::DLQ_TOPIC) {
            Ok(info) => info.messages(),
            Err(TopicError::UnknownTopic { .. }) => 0,
            Err(e) => return Err(e),
        };
        let publisher_lag = rt.publishers.health()?;
        let healthy = indexer_error.is_none()
            && indexer_lag <= lag_max
            && consumer_lag
                .iter()
                .all(|g| g.partitions.iter().all(|p| p.lag <= lag_max))
            && publisher_lag.iter().all(|p| p.healthy(lag_max));
        Ok(Health {
            healthy,
            indexer_lag,
            indexer_error,
            consumer_lag,
            publisher_lag,
            dead_letters,
        })
    }
}

/// The lag of one group on one topic, given its committed offsets.
pub(crate) fn lag_of(
    log: &TopicLog,
    group: &str,
    topic: &str,
    committed: &HashMap<u32, u64>,
) -> Result<GroupLag, TopicError> {
    let info = match log.topic(topic) {
        Ok(info) => info,
        Err(TopicError::UnknownTopic { .. }) => {
            return Ok(GroupLag {
                group: group.to_owned(),
                partitions: Vec::new(),
            })
        }
        Err(e) => return Err(e),
    };
    let partitions = info
        .end_offsets
        .iter()
        .enumerate()
        .map(|(p, end)| {
            let committed = committed.get(&(p as u32)).copied().unwrap_or(0);
            PartitionLag {
                topic: topic.to_owned(),
                partition: p as u32,
                committed,
                end: *end,
                lag: end.saturating_sub(committed),
            }
        })
        .collect();
    Ok(GroupLag {
        group: group.to_owned(),
        partitions,
    })
}

/// The lag of every group on every topic it committed on.
pub(crate) fn all_lags(
    log: &TopicLog,
    committed: &[(String, String, u32, u64)],
) -> Result<Vec<GroupLag>, TopicError> {
    let mut by_group: std::collections::BTreeMap<
        &str,
        std::collections::BTreeMap<&str, HashMap<u32, u64>>,
    > = Default::default();
    for (g, t, p, o) in committed {
        by_group
            .entry(g.as_str())
            .or_default()
            .entry(t.as_str())
            .or_default()
            .insert(*p, *o);
    }
    let mut out = Vec::new();
    for (group, topics) in by_group {
        let mut lag = GroupLag {
            group: group.to_owned(),
            partitions: Vec::new(),
        };
        for (topic, offsets) in topics {
            lag.partitions
                .extend(lag_of(log, group, topic, &offsets)?.partitions);
        }
        out.push(lag);
    }
    Ok(out)
}
