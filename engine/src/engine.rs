//! The one entry type: [`Engine::builder`] → register aggregate types → [`EngineBuilder::open`].

use crate::error::{
    CommandError, ConfigError, EngineError, InvalidRequest, StorageError, UnavailableReason,
};
use crate::journal::{Durability, Journal, JournalConfig, JournalWriter, StreamId};
use crate::recovery as repository;
use crate::sharding::{EntityMsg, Runtime, ShardActor, ShardArgs, ShardMsg, ShardingConfig};
use crate::snapshots::{SnapshotPolicy, Snapshotter};
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
}

/// A function pointer wrapper so the builder can be `Debug`.
#[derive(Clone, Copy)]
struct StartGroupFn(StartGroup);

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
        }
    }

    /// Registers an aggregate type. Each type gets its own shard actors.
    pub fn register<A: Aggregate>(mut self) -> Self {
        self.types.push((A::TYPE, StartGroupFn(start_group::<A>)));
        self
    }

    /// Adds a [`CommandGuard`] that every command to `A` passes before it is routed (one
    /// guard per type; a second call replaces the first). `A` must also be registered.
    pub fn guard<A: Aggregate>(mut self, guard: impl CommandGuard<A>) -> Self {
        let guard: Arc<dyn CommandGuard<A>> = Arc::new(guard);
        self.guards.insert(A::TYPE, Box::new(guard));
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
    /// Default 10,000.
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
    /// sled's page cache. Default 256 MiB.
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
        let snapshotter = Snapshotter::start(journal.clone(), self.snapshot_policy.keep)
            .map_err(StorageError::from)?;
        let rt = Arc::new(Runtime {
            journal: journal.clone(),
            clock: self.clock,
            snapshot_policy: self.snapshot_policy,
            snapshotter,
            config: self.sharding,
        });
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
                    return Err(e);
                }
            }
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                journal,
                rt,
                groups,
                source: self.source,
                guards: self.guards,
                closing: AtomicBool::new(false),
                inflight: AtomicUsize::new(0),
                drained: Notify::new(),
                shutdown: tokio::sync::OnceCell::new(),
            }),
        })
    }
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
        for index in 0..rt.config.shards {
            let q = Arc::new(AtomicUsize::new(0));
            let args = ShardArgs {
                index,
                rt: rt.clone(),
                queued: q.clone(),
            };
            let (actor, _) = Actor::spawn(None, ShardActor::<A>::new(), args)
                .await
                .map_err(actor_error)?;
            shards.push(actor);
            queued.push(q);
        }
        Ok(Box::new(ShardGroup::<A> { shards, queued }) as Box<dyn AnyGroup>)
    })
}

/// An actor or task failure as an [`EngineError`].
fn actor_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Actor {
        message: e.to_string(),
    }
}

struct Inner {
    journal: JournalWriter,
    rt: Arc<Runtime>,
    groups: HashMap<&'static str, Box<dyn AnyGroup>>,
    source: String,
    /// `Arc<dyn CommandGuard<A>>` per aggregate type name.
    guards: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
    closing: AtomicBool,
    inflight: AtomicUsize,
    drained: Notify,
    /// The outcome of the one shutdown, shared by every caller of `shutdown`.
    shutdown: tokio::sync::OnceCell<Result<(), EngineError>>,
}

impl Drop for Inner {
    /// Dropped without `shutdown`: stop the actors so that they release the journal; the
    /// committer then syncs what is queued and exits, and sled releases the directory lock.
    /// Commands answered before are durable in durable mode; nothing waits here.
    fn drop(&mut self) {
        if !self.closing.load(Ordering::SeqCst) {
            for group in self.groups.values() {
                group.stop_now();
            }
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

impl Engine {
    pub fn builder(data_dir: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder::new(data_dir)
    }

    /// The journal's read view: history, streams, global order, verification, statistics.
    /// It cannot append: commands are the only way events get in. After [`Engine::shutdown`]
    /// its reads fail with [`StorageError::Closed`].
    pub fn journal(&self) -> &Journal {
        self.inner.journal.reader()
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
        let stream = StreamId::new(A::TYPE, aggregate_id);
        stream
            .validate()
            .map_err(|e| CommandError::Invalid(InvalidRequest::Stream(e)))?;
        let group = self
            .group::<A>()
            .ok_or(CommandError::NotRegistered(A::TYPE))?;
        let index = crate::sharding::shard_for(A::TYPE, aggregate_id, group.shards.len());
        let limit = self.inner.rt.config.shard_mailbox_commands_max;
        let queued = &group.queued[index];
        if queued.fetch_add(1, Ordering::AcqRel) >= limit {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(CommandError::Overloaded {
                what: "the shard's mailbox",
                limit,
            });
        }
        let (tx, rx) = oneshot::channel();
        let route = ShardMsg::Route {
            aggregate_id: aggregate_id.to_owned(),
            msg: make(tx),
        };
        if group.shards[index].cast(route).is_err() {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(CommandError::ShuttingDown);
        }
        // A closed reply channel: the actor stopped (it failed, or the shard stopped) before
        // it handled the command. Nothing of it was written.
        rx.await.unwrap_or(Err(CommandError::Unavailable {
            stream,
            reason: UnavailableReason::Stopped,
        }))
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

    /// [`Engine::execute`] with explicit correlation, causation, source and user.
    pub async fn execute_with<A: Aggregate>(
        &self,
        aggregate_id: &str,
        command: impl Into<A::Command>,
        metadata: Metadata,
    ) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        let command = command.into();
        let guard = self
            .inner
            .guards
            .get(A::TYPE)
            .and_then(|g| g.downcast_ref::<Arc<dyn CommandGuard<A>>>())
            .cloned();
        let Some(guard) = guard else {
            return self
                .send::<A, _>(aggregate_id, |reply| EntityMsg::Execute {
                    command,
                    metadata,
                    reply,
                })
                .await;
        };
        let now = self.inner.rt.clock.now();
        guard
            .admit(aggregate_id, &command, now)
            .map_err(CommandError::Rejected)?;
        let for_settle = command.clone();
        let result = self
            .send::<A, _>(aggregate_id, |reply| EntityMsg::Execute {
                command,
                metadata,
                reply,
            })
            .await;
        guard.settle(aggregate_id, &for_settle, now, result.is_ok());
        result
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
            inner.journal.close()
        })
        .await
        .map_err(actor_error)??;
        Ok(())
    }
}
