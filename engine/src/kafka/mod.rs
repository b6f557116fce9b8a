//! The Kafka publisher (cargo feature `kafka`): relays the embedded topics to a Kafka cluster.
//!
//! A background task: per round it reads, for every partition with messages past its cursor,
//! up to `batch_max` messages (`TopicLog::read`: key, headers, value exactly as published),
//! produces them to the same partition of the same topic (idempotent producer, `acks=all`),
//! waits for every acknowledgement, and then moves the cursors of the partitions whose
//! messages were all acknowledged, in one store write (the `k` keyspace,
//! `journal::publisher`). On any failure it drops the producer, backs off, and before sending
//! that partition again *recovers* it: it reads the last message of the Kafka partition and
//! skips every embedded message up to that message's `global_position` header. Commands are
//! never involved: a broker that is down only makes the lag grow.

mod config;

pub use config::{KafkaConfig, Sasl, SaslMechanism};

use crate::engine::Engine;
use crate::error::StorageError;
use crate::journal::JournalWriter;
use crate::topics::read::ReadState;
use crate::topics::render::HEADER_NAMES;
use crate::topics::{Message, TopicError, TopicLog, DLQ_TOPIC};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What went wrong starting or running the publisher. Texts never hold credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    #[error("invalid Kafka configuration: {reason}")]
    Config { reason: String },
    #[error("Kafka client: {reason}")]
    Client { reason: String },
    #[error(
        "topic {topic} has {kafka} partitions on the Kafka cluster but {embedded} in the store; \
         the publisher maps partitions one to one and refuses to publish it"
    )]
    PartitionsMismatch {
        topic: String,
        kafka: u32,
        embedded: u32,
    },
    #[error("the Kafka publisher needs a tokio runtime")]
    NoRuntime,
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One partition's publication state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherLag {
    pub topic: String,
    pub partition: u32,
    /// The next offset to publish: every message below it was acknowledged by the broker.
    pub published: u64,
    /// The partition's end offset in the store.
    pub end: u64,
    pub lag: u64,
}

/// What [`KafkaPublisher::status`] reports.
#[derive(Clone, Debug, Default)]
pub struct PublisherStatus {
    pub publisher: String,
    /// The last round reached the broker and every message was acknowledged.
    pub connected: bool,
    /// The last error (cleared by a successful round); credentials redacted.
    pub last_error: Option<String>,
    /// An error that stopped the publisher (a partition-count mismatch, a closed store).
    pub fatal: Option<String>,
    /// Messages acknowledged since start.
    pub published: u64,
    /// Messages found already on the broker when recovering a partition (not sent again).
    pub skipped_on_recovery: u64,
    /// Rounds that failed and were retried.
    pub failed_rounds: u64,
    /// Recovery findings that break the one-to-one mirror (a foreign or missing message, a
    /// broker that lost data, duplicates): each a sentence.
    pub anomalies: Vec<String>,
    pub partitions: Vec<PublisherLag>,
}

impl PublisherStatus {
    /// The sum of the partitions' lag.
    pub fn lag(&self) -> u64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }

    /// Healthy: running, no anomaly, lag at most `lag_max`.
    pub fn healthy(&self, lag_max: u64) -> bool {
        self.fatal.is_none() && self.anomalies.is_empty() && self.lag() <= lag_max
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    published: AtomicU64,
    skipped: AtomicU64,
    failed_rounds: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    fatal: Mutex<Option<String>>,
    anomalies: Mutex<Vec<String>>,
    /// Next offset per (topic, partition), as committed.
    cursors: Mutex<BTreeMap<(String, u32), u64>>,
    /// Commit (the event's timestamp) to acknowledgement, microseconds, since the last
    /// `take_latencies` (at most `LATENCY_SAMPLES_MAX`).
    latencies: Mutex<Vec<u32>>,
    wake: tokio::sync::Notify,
}

const LATENCY_SAMPLES_MAX: usize = 1 << 20;

/// Anomalies a publisher keeps (each once; the oldest goes first).
const ANOMALIES_MAX: usize = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running publisher. Dropping it stops the task (without waiting); [`KafkaPublisher::stop`]
/// waits for the round in flight to finish.
#[derive(Debug)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the status needs; the engine's health check holds it weakly.
#[derive(Debug)]
struct Inner {
    name: String,
    log: TopicLog,
    topics: Option<Vec<String>>,
    shared: Arc<Shared>,
}

impl Drop for KafkaPublisher {
    fn drop(&mut self) {
        self.inner.shared.stop.store(true, Ordering::SeqCst);
        self.inner.shared.wake.notify_one();
    }
}

impl KafkaConfig {
    /// The librdkafka client configuration of every client the publisher creates (brokers,
    /// client id, security, SASL, timeouts, then `extra`).
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.client_properties() {
            c.set(k, v);
        }
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// The configuration the publisher's producer is created with: [`Self::client_config`]
    /// plus the idempotent producer (`enable.idempotence=true`, `acks=all`), Kafka's murmur2
    /// partitioner, `retries`, `message.timeout.ms` = the request timeout, `linger.ms=5`
    /// (`extra` still wins). Public so that a tool or a benchmark can produce exactly like the
    /// publisher.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("retries", self.retries.to_string())
            .set("retry.backoff.ms", "100")
            .set("retry.backoff.max.ms", "1000")
            .set(
                "message.timeout.ms",
                self.request_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

impl KafkaPublisher {
    /// The record the publisher produces for a message: its topic and partition, key =
    /// aggregate id, the eight headers (null values kept), value = the envelope's JSON bytes,
    /// timestamp = the event's (milliseconds).
    pub fn record(m: &Message) -> FutureRecord<'_, [u8], [u8]> {
        let mut headers = OwnedHeaders::new_with_capacity(HEADER_NAMES.len());
        for (k, v) in m.headers() {
            headers = headers.insert(Header { key: k, value: v });
        }
        FutureRecord::to(m.topic())
            .partition(m.partition as i32)
            .key(m.key().as_bytes())
            .payload(m.value())
            .headers(headers)
            .timestamp(m.timestamp.timestamp_millis())
    }
}

impl crate::publisher::PublisherProbe for Inner {
    fn probe(&self) -> Option<Result<crate::PublisherHealth, TopicError>> {
        if self.shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.status().map(|s| crate::PublisherHealth {
            lag: s.lag(),
            publisher: s.publisher,
            connected: s.connected,
            last_error: s.last_error,
            fatal: s.fatal,
            anomalies: s.anomalies.len(),
        }))
    }
}

impl Engine {
    /// Starts a publisher relaying this engine's topics to Kafka. Fails at once on a bad
    /// configuration, and when the broker answers that a topic exists with another partition
    /// count; a broker that does not answer within the connection timeout is not an error —
    /// the publisher keeps trying in the background (see [`KafkaPublisher::status`]).
    pub async fn kafka_publisher(&self, config: KafkaConfig) -> Result<KafkaPublisher, KafkaError> {
        config
            .validate()
            .map_err(|reason| KafkaError::Config { reason })?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| KafkaError::NoRuntime)?;
        let rt = self.topics()?.clone();
        let log = rt.log.clone();
        let writer = rt.writer.clone();
        let moved = rt.status.moved.subscribe();
        let shared = Arc::new(Shared::default());
        let mut task = Task::new(config.clone(), log.clone(), writer, shared.clone())?;
        // One setup pass now, so that a mismatch is a typed error of this call.
        let first = {
            let mut t = task;
            let res = tokio::task::spawn_blocking(move || {
                let r = t.setup_topics();
                (t, r)
            })
            .await
            .map_err(|e| KafkaError::Client {
                reason: e.to_string(),
            })?;
            task = res.0;
            res.1
        };
        match first {
            Err(e @ KafkaError::PartitionsMismatch { .. }) => return Err(e),
            Err(e) => task.note_error(&e),
            Ok(()) => {}
        }
        let join = handle.spawn(task.run(moved));
        let inner = Arc::new(Inner {
            name: config.publisher.clone(),
            log,
            topics: config.topics.clone(),
            shared,
        });
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&inner);
        rt.publishers.register(weak);
        Ok(KafkaPublisher {
            inner,
            task: Mutex::new(Some(join)),
        })
    }
}

impl KafkaPublisher {
    /// The publisher's state: per-partition cursor and lag, counters, errors, anomalies.
    pub fn status(&self) -> Result<PublisherStatus, KafkaError> {
        Ok(self.inner.status()?)
    }
}

impl Inner {
    fn status(&self) -> Result<PublisherStatus, TopicError> {
        let cursors = lock(&self.shared.cursors).clone();
        let mut partitions = Vec::new();
        for info in self.log.topics()? {
            if !selected(&self.topics, &info.name) {
                continue;
            }
            for (p, end) in info.end_offsets.iter().enumerate() {
                let published = cursors
                    .get(&(info.name.clone(), p as u32))
                    .copied()
                    .unwrap_or(0);
                partitions.push(PublisherLag {
                    topic: info.name.clone(),
                    partition: p as u32,
                    published,
                    end: *end,
                    lag: end.saturating_sub(published),
                });
            }
        }
        Ok(PublisherStatus {
            publisher: self.name.clone(),
            connected: self.shared.connected.load(Ordering::SeqCst),
            last_error: lock(&self.shared.last_error).clone(),
            fatal: lock(&self.shared.fatal).clone(),
            published: self.shared.published.load(Ordering::SeqCst),
            skipped_on_recovery: self.shared.skipped.load(Ordering::SeqCst),
            failed_rounds: self.shared.failed_rounds.load(Ordering::SeqCst),
            anomalies: lock(&self.shared.anomalies).clone(),
            partitions,
        })
    }
}

impl KafkaPublisher {
    /// Waits until every message the index holds at call time... and after it, until the
    /// lag is 0 (at most `timeout`); true when it is.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.status() {
                Ok(s) if s.lag() == 0 => return true,
                Ok(s) if s.fatal.is_some() => return false,
                Err(_) => return false,
                _ => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Commit-to-acknowledgement latencies (microseconds, from each event's timestamp) since
    /// the last call.
    pub fn take_latencies(&self) -> Vec<u32> {
        std::mem::take(&mut *lock(&self.inner.shared.latencies))
    }

    /// Stops the task after the round in flight (its acknowledgements and cursor write).
    pub async fn stop(&self) {
        self.inner.shared.stop.store(true, Ordering::SeqCst);
        self.inner.shared.wake.notify_one();
        let join = lock(&self.task).take();
        if let Some(join) = join {
            let _ = join.await;
        }
    }
}

/// Test hook (feature `fault-injection`): never store the cursor, as if every delivered batch
/// were followed by a crash before its cursor write — the restart must skip by recovery.
fn fault_skip_cursor() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        std::env::var_os("EVERSHARD_KAFKA_FAULT_SKIP_CURSOR").is_some()
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}

fn selected(topics: &Option<Vec<String>>, name: &str) -> bool {
    match topics {
        Some(list) => list.iter().any(|t| t == name),
        None => name != DLQ_TOPIC,
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct PartState {
    next: u64,
    last_position: u64,
    recovered: bool,
}

struct Task {
    config: KafkaConfig,
    log: TopicLog,
    writer: JournalWriter,
    shared: Arc<Shared>,
    producer: Option<FutureProducer>,
    /// Topics verified or created on the cluster: name -> partitions.
    ready_topics: HashMap<String, u32>,
    parts: BTreeMap<(String, u32), PartState>,
    /// What the reads of each topic learned, for its next read (`TopicLog::read_with`).
    read_states: HashMap<String, ReadState>,
}

fn client_error(config: &KafkaConfig, e: impl std::fmt::Display) -> KafkaError {
    KafkaError::Client {
        reason: config.redact(&e.to_string()),
    }
}

impl Task {
    fn new(
        config: KafkaConfig,
        log: TopicLog,
        writer: JournalWriter,
        shared: Arc<Shared>,
    ) -> Result<Task, KafkaError> {
        let mut parts = BTreeMap::new();
        for c in log.journal().publisher_cursors(Some(&config.publisher))? {
            parts.insert(
                (c.topic, c.partition),
                PartState {
                    next: c.next_offset,
                    last_position: c.last_global_position,
                    recovered: false,
                },
            );
        }
        *lock(&shared.cursors) = parts.iter().map(|(k, s)| (k.clone(), s.next)).collect();
        Ok(Task {
            config,
            log,
            writer,
            shared,
            producer: None,
            ready_topics: HashMap::new(),
            parts,
            read_states: HashMap::new(),
        })
    }

    fn client_config(&self) -> ClientConfig {
        self.config.client_config()
    }

    fn note_error(&self, e: &KafkaError) {
        let text = self.config.redact(&e.to_string());
        tracing::warn!(publisher = %self.config.publisher, error = %text, "kafka publisher");
        *lock(&self.shared.last_error) = Some(text);
        self.shared.connected.store(false, Ordering::SeqCst);
    }

    /// Records an anomaly once (a recovery after every failed round finds the same ones
    /// again), keeping at most [`ANOMALIES_MAX`].
    fn anomaly(&self, text: String) {
        let mut anomalies = lock(&self.shared.anomalies);
        if anomalies.contains(&text) {
            return;
        }
        tracing::warn!(publisher = %self.config.publisher, "{text}");
        if anomalies.len() >= ANOMALIES_MAX {
            anomalies.remove(0);
        }
        anomalies.push(text);
    }

    /// Creates missing topics with the store's partition count; checks existing ones.
    /// Blocking.
    fn setup_topics(&mut self) -> Result<(), KafkaError> {
        let wanted: Vec<(String, u32)> = self
            .log
            .topics()?
            .into_iter()
            .filter(|t| selected(&self.config.topics, &t.name))
            .filter(|t| !self.ready_topics.contains_key(&t.name))
            .map(|t| (t.name, t.partitions))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(|e| client_error(&self.config, e))?;
        let timeout = self.config.connection_timeout + self.config.request_timeout;
        let existing = |admin: &AdminClient<DefaultClientContext>,
                        topic: &str|
         -> Result<Option<u32>, KafkaError> {
            let md = admin
                .inner()
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| client_error(&self.config, e))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .and_then(|t| {
                    if t.error().is_some() || t.partitions().is_empty() {
                        None
                    } else {
                        Some(t.partitions().len() as u32)
                    }
                }))
        };
        let mut missing = Vec::new();
        for (name, partitions) in &wanted {
            match existing(&admin, name)? {
                Some(n) if n == *partitions => {
                    self.ready_topics.insert(name.clone(), n);
                }
                Some(n) => {
                    return Err(KafkaError::PartitionsMismatch {
                        topic: name.clone(),
                        kafka: n,
                        embedded: *partitions,
                    })
                }
                None => missing.push((name.clone(), *partitions)),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(name, p)| {
                NewTopic::new(
                    name,
                    *p as i32,
                    TopicReplication::Fixed(self.config.replication_factor),
                )
            })
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let results = futures::executor::block_on(admin.create_topics(&new, &opts))
            .map_err(|e| client_error(&self.config, e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::Client {
                        reason: format!("creating topic {name}: {code}"),
                    })
                }
            }
        }
        // Check what the cluster holds now (a concurrent creator may have won).
        for (name, partitions) in &missing {
            match existing(&admin, name)? {
                Some(n) if n == *partitions => {
                    self.ready_topics.insert(name.clone(), n);
                }
                Some(n) => {
                    return Err(KafkaError::PartitionsMismatch {
                        topic: name.clone(),
                        kafka: n,
                        embedded: *partitions,
                    })
                }
                None => {
                    return Err(KafkaError::Client {
                        reason: format!("topic {name} not visible after its creation"),
                    })
                }
            }
        }
        Ok(())
    }

    /// Recovers every partition not yet recovered: from its stored cursor, skips the
    /// messages the Kafka partition already holds (up to its last message's
    /// `global_position`). Blocking.
    fn recover(&mut self) -> Result<(), KafkaError> {
        let todo: Vec<(String, u32)> = self
            .ready_topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .filter(|k| !self.parts.get(k).is_some_and(|s| s.recovered))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let mut cc = self.client_config();
        cc.set(
            "group.id",
            format!("evershard-{}-recovery", self.config.publisher),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = cc.create().map_err(|e| client_error(&self.config, e))?;
        let timeout = self.config.connection_timeout + self.config.request_timeout;
        let mut moved = Vec::new();
        for key in todo {
            let (topic, partition) = (&key.0, key.1);
            let state = self.parts.get(&key).copied().unwrap_or_default();
            let (low, high) = consumer
                .fetch_watermarks(topic, partition as i32, timeout)
                .map_err(|e| client_error(&self.config, e))?;
            let mut next = state.next;
            let mut last_position = state.last_position;
            if high > 0 && low >= high {
                // Emptied by the broker (retention: a record carries its event's time, so a
                // partition quiet for the retention period, or a backfill, loses them all;
                // or DeleteRecords). Its last message cannot be read, and waiting for it
                // stopped every partition's publishing for good (found by review,
                // 2026-11-28). Its offsets still count what was written: the store's
                // offsets below `high` were published.
                let published = (high as u64).min(self.log.end_offset(topic, partition)?);
                if published > next {
                    if let Some(m) = self.log.read(topic, partition, published - 1, 1)?.first() {
                        last_position = m.global_position;
                    }
                    next = published;
                }
                self.anomaly(format!(
                    "{topic}/{partition}: the Kafka partition's messages below offset {high} \
                     were removed by the broker; resuming at offset {next}"
                ));
            } else if high <= 0 {
                if state.next > 0 {
                    self.anomaly(format!(
                        "{topic}/{partition}: the Kafka partition is empty but {} messages were \
                         acknowledged before; not sending them again",
                        state.next
                    ));
                }
            } else {
                let last = self.last_message_position(&consumer, topic, partition, high - 1)?;
                match last {
                    None => self.anomaly(format!(
                        "{topic}/{partition}: the last Kafka message (offset {}) has no \
                         global_position header; resuming from the store's cursor {}",
                        high - 1,
                        state.next
                    )),
                    Some(g) if g < state.last_position => self.anomaly(format!(
                        "{topic}/{partition}: the last Kafka message has global position {g}, \
                         below the acknowledged {}; the broker lost messages",
                        state.last_position
                    )),
                    Some(g) => {
                        // Skip what is there: offsets past the cursor at positions <= g.
                        'skip: loop {
                            let batch = self.log.read(topic, partition, next, 1000)?;
                            for m in &batch {
                                if m.global_position > g {
                                    break 'skip;
                                }
                                next = m.offset + 1;
                                last_position = m.global_position;
                            }
                            if batch.len() < 1000 {
                                break;
                            }
                        }
                        if last_position != g {
                            self.anomaly(format!(
                                "{topic}/{partition}: the last Kafka message has global \
                                 position {g}, which this partition does not hold"
                            ));
                        }
                    }
                }
                if next as i64 != high {
                    self.anomaly(format!(
                        "{topic}/{partition}: the Kafka partition holds {high} messages, the \
                         store's offsets published are {next} (foreign messages or duplicates)"
                    ));
                }
            }
            if next != state.next {
                self.shared
                    .skipped
                    .fetch_add(next - state.next, Ordering::SeqCst);
                moved.push((topic.clone(), partition, next, last_position));
            }
            self.parts.insert(
                key.clone(),
                PartState {
                    next,
                    last_position,
                    recovered: true,
                },
            );
        }
        if !moved.is_empty() {
            self.writer
                .write_publisher_cursors(&self.config.publisher, &moved)?;
            let mut cursors = lock(&self.shared.cursors);
            for (t, p, next, _) in moved {
                cursors.insert((t, p), next);
            }
        }
        Ok(())
    }

    /// The `global_position` header of the message at `offset` of a Kafka partition.
    fn last_message_position(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<Option<u64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition as i32, Offset::Offset(offset))
            .map_err(|e| client_error(&self.config, e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| client_error(&self.config, e))?;
        let deadline =
            Instant::now() + self.config.connection_timeout + self.config.request_timeout;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(e)) => return Err(client_error(&self.config, e)),
                Some(Ok(m)) => {
                    if m.topic() != topic || m.partition() != partition as i32 {
                        continue;
                    }
                    if m.offset() < offset {
                        continue;
                    }
                    let position = m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "global_position")
                            .and_then(|h| h.value)
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|v| v.parse::<u64>().ok())
                    });
                    return Ok(position);
                }
            }
        }
        Err(KafkaError::Client {
            reason: format!("reading the last message of {topic}/{partition}: timed out"),
        })
    }

    fn producer(&mut self) -> Result<&FutureProducer, KafkaError> {
        if self.producer.is_none() {
            let c = self.config.producer_config();
            self.producer = Some(c.create().map_err(|e| client_error(&self.config, e))?);
        }
        Ok(self.producer.as_ref().expect("just created"))
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    async fn run(mut self, mut moved: tokio::sync::watch::Receiver<u64>) {
        let mut backoff = self.config.backoff_min;
        loop {
            if self.stopping() {
                break;
            }
            match self.round().await {
                Ok(sent) => {
                    backoff = self.config.backoff_min;
                    if sent == 0 {
                        // Idle: wait for the indexer to move (or a periodic re-check).
                        moved.borrow_and_update();
                        tokio::select! {
                            _ = moved.changed() => {}
                            _ = self.shared.wake.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
                Err(e) => {
                    let fatal = matches!(
                        e,
                        KafkaError::PartitionsMismatch { .. }
                            | KafkaError::Topic(TopicError::ShuttingDown)
                            | KafkaError::Storage(StorageError::Closed)
                    );
                    self.note_error(&e);
                    if fatal {
                        *lock(&self.shared.fatal) = Some(self.config.redact(&e.to_string()));
                        break;
                    }
                    self.shared.failed_rounds.fetch_add(1, Ordering::SeqCst);
                    // Start over with a fresh producer and recover the partitions.
                    self.producer = None;
                    for s in self.parts.values_mut() {
                        s.recovered = false;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shared.wake.notified() => {}
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
        if let Some(p) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(5))).await;
        }
    }

    /// One round: setup and recovery as needed, then one batch per partition with backlog.
    /// Returns how many messages were acknowledged.
    async fn round(&mut self) -> Result<u64, KafkaError> {
        // Setup, recovery and the reads are blocking: run them off the runtime's workers.
        let me = std::mem::replace(self, self.placeholder());
        let (me, batches) = tokio::task::spawn_blocking(move || {
            let mut me = me;
            let r = me.prepare();
            (me, r)
        })
        .await
        .map_err(|e| KafkaError::Client {
            reason: e.to_string(),
        })?;
        *self = me;
        let batches = batches?;
        if batches.is_empty() {
            self.shared
                .connected
                .store(lock(&self.shared.last_error).is_none(), Ordering::SeqCst);
            return Ok(0);
        }
        let producer = self.producer()?.clone();
        let mut pending: Vec<(usize, DeliveryFuture, i64)> = Vec::new();
        let mut first_error: Option<KafkaError> = None;
        let mut failed = vec![false; batches.len()];
        for (i, (_, messages)) in batches.iter().enumerate() {
            for m in messages {
                let ts = m.timestamp.timestamp_micros();
                let mut record = KafkaPublisher::record(m);
                loop {
                    match producer.send_result(record) {
                        Ok(f) => {
                            pending.push((i, f, ts));
                            break;
                        }
                        Err((e, r))
                            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                        {
                            record = r;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => {
                            failed[i] = true;
                            first_error.get_or_insert(client_error(&self.config, e));
                            break;
                        }
                    }
                }
                if failed[i] {
                    break;
                }
            }
        }
        let mut acked = 0u64;
        let mut samples = Vec::new();
        for (i, f, ts) in pending {
            match f.await {
                Ok(Ok(_)) => {
                    acked += 1;
                    let now = chrono::Utc::now().timestamp_micros();
                    samples.push((now - ts).clamp(0, u32::MAX as i64) as u32);
                }
                Ok(Err((e, _))) => {
                    failed[i] = true;
                    first_error.get_or_insert(client_error(&self.config, e));
                }
                Err(_) => {
                    failed[i] = true;
                    first_error.get_or_insert(KafkaError::Client {
                        reason: "the producer dropped a delivery".into(),
                    });
                }
            }
        }
        {
            let mut l = lock(&self.shared.latencies);
            if l.len() + samples.len() <= LATENCY_SAMPLES_MAX {
                l.extend(samples);
            }
        }
        // Move the cursors of the partitions whose whole batch was acknowledged.
        let mut moved = Vec::new();
        let mut acked_ok = 0u64;
        for (i, (key, messages)) in batches.iter().enumerate() {
            if failed[i] {
                continue;
            }
            if let Some(last) = messages.last() {
                moved.push((key.0.clone(), key.1, last.offset + 1, last.global_position));
                acked_ok += messages.len() as u64;
            }
        }
        if !moved.is_empty() && !fault_skip_cursor() {
            let writer = self.writer.clone();
            let name = self.config.publisher.clone();
            let m2 = moved.clone();
            tokio::task::spawn_blocking(move || writer.write_publisher_cursors(&name, &m2))
                .await
                .map_err(|e| KafkaError::Client {
                    reason: e.to_string(),
                })??;
        }
        if !moved.is_empty() {
            let mut cursors = lock(&self.shared.cursors);
            for (t, p, next, position) in moved {
                cursors.insert((t.clone(), p), next);
                let s = self.parts.entry((t, p)).or_default();
                s.next = next;
                s.last_position = position;
            }
        }
        self.shared.published.fetch_add(acked_ok, Ordering::SeqCst);
        let _ = acked;
        match first_error {
            Some(e) => Err(e),
            None => {
                *lock(&self.shared.last_error) = None;
                self.shared.connected.store(true, Ordering::SeqCst);
                Ok(acked_ok)
            }
        }
    }

    /// An empty task to hold `self`'s place while the real one is on a blocking thread.
    fn placeholder(&self) -> Task {
        Task {
            config: self.config.clone(),
            log: self.log.clone(),
            writer: self.writer.clone(),
            shared: self.shared.clone(),
            producer: None,
            ready_topics: HashMap::new(),
            parts: BTreeMap::new(),
            read_states: HashMap::new(),
        }
    }

    /// Blocking part of a round: topics, recovery, and the next batch of every partition.
    #[allow(clippy::type_complexity)]
    fn prepare(&mut self) -> Result<Vec<((String, u32), Vec<Message>)>, KafkaError> {
        self.setup_topics()?;
        self.recover()?;
        let mut out = Vec::new();
        for (topic, n) in self.ready_topics.clone() {
            for p in 0..n {
                let key = (topic.clone(), p);
                let next = self.parts.get(&key).map(|s| s.next).unwrap_or(0);
                if self.log.end_offset(&topic, p)? <= next {
                    continue;
                }
                let mut messages = Vec::new();
                let state = self.read_states.entry(topic.clone()).or_default();
                self.log
                    .read_with(state, &topic, p, next, self.config.batch_max, &mut messages)?;
                if !messages.is_empty() {
                    out.push((key, messages));
                }
            }
        }
        Ok(out)
    }
}
