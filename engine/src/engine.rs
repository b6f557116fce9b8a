//! The one entry type: [`Engine::builder`] → register aggregate types → [`EngineBuilder::open`].

use crate::error::{
    CommandError, ConfigError, EngineError, InvalidRequest, StorageError, UnavailableReason,
};
use crate::journal::{Durability, Journal, JournalConfig, JournalWriter, StreamId};
use crate::recovery as repository;
use crate::sharding::{EntityMsg, Runtime, ShardActor, ShardArgs, ShardMsg, ShardingConfig};
use crate::snapshots::{SnapshotPolicy, Snapshotter};
use crate::topics::consumer::TopicsRuntime;
use crate::topics::index::Indexer;
use crate::topics::metrics::Metrics;
use crate::topics::{
    Consumer, ConsumerOptions, DeadLetter, GroupLag, Handler, HandlerError, Health, Message,
    PartitionLag, Subscription, SubscriptionOptions, TopicCatalog, TopicConfig, TopicError,
    TopicLog, TopicMetrics, TopicRoute,
};
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
            catalog: TopicCatalog::new(),
            topic_indexer: true,
        }
    }

    /// Registers an aggregate type. Each type gets its own shard actors.
    pub fn register<A: Aggregate>(mut self) -> Self {
        self.types.push((A::TYPE, StartGroupFn(start_group::<A>)));
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

    /// Runs the topic indexer (and so topics, consumers, subscriptions). Default true.
    pub fn topic_indexer(mut self, on: bool) -> Self {
        self.topic_indexer = on;
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
                    if let Some((indexer, _)) = &topics {
                        indexer.stop_now();
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
                topics,
                closing: AtomicBool::new(false),
                inflight: AtomicUsize::new(0),
                drained: Notify::new(),
                shutdown: tokio::sync::OnceCell::new(),
            }),
        })
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
    /// The topic indexer and what consumers share; `None` with `topic_indexer(false)`.
    topics: Option<(Indexer, Arc<TopicsRuntime>)>,
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
        if let Some((indexer, _)) = &self.topics {
            indexer.stop_now();
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
            if let Some((indexer, _)) = &inner.topics {
                // Everything committed is synced, then indexed, before the store closes.
                if inner.journal.sync().is_ok() {
                    indexer.drain_and_stop();
                } else {
                    indexer.stop_now();
                }
            }
            inner.journal.close()
        })
        .await
        .map_err(actor_error)??;
        Ok(())
    }
}

/// Topics, consumers, subscriptions, metrics (see `crate::topics`).
impl Engine {
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

    /// Waits until the index covers `position` (at most `timeout`); true when it does.
    pub async fn wait_indexed(&self, position: u64, timeout: std::time::Duration) -> bool {
        let Ok(rt) = self.topics() else { return false };
        let mut moved = rt.status.moved.subscribe();
        let reached = match tokio::time::timeout(timeout, moved.wait_for(|c| *c >= position)).await
        {
            Ok(Ok(_)) => true,
            Ok(Err(_)) | Err(_) => false,
        };
        reached
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
    /// caller with [`Engine::dead_letter`].
    pub async fn redrive(
        &self,
        dead_letter: &Message,
        handler: &impl Handler,
    ) -> Result<Result<(), HandlerError>, TopicError> {
        let letter = DeadLetter::from_message(dead_letter)?;
        Ok(handler.handle(letter.original_message()).await)
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
            // them when no group reads it).
            let mut groups: HashMap<&str, u64> = HashMap::new();
            for (g, t, p, o) in &committed {
                if *t == info.name {
                    let end = info.end_offsets.get(*p as usize).copied().unwrap_or(0);
                    *groups.entry(g.as_str()).or_default() += end.saturating_sub(*o);
                }
            }
            let max = groups.values().copied().max().unwrap_or(info.messages());
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
