//! Cluster mode (cargo feature `kafka`; docs/scale-out.md): several engines share the
//! aggregates through the partitions of a Kafka journal topic.
//!
//! - **Ownership.** A consumer group (`evershard.<cluster>.owners`, cooperative-sticky,
//!   dynamic membership unless [`ClusterConfig::static_membership`]) subscribed to the journal topic assigns partitions to nodes. A node
//!   serves partition `p` only once it has also *claimed* it: caught up with `p`, appended a
//!   [`wire::Claim`] with an epoch above every earlier one, and read up to that claim.
//! - **KafkaDurable acknowledgement.** Every command batch passes the gate ([`DurableGate`])
//!   before its local append: it is produced to `p` (`acks=all`), and acknowledged only when
//!   the tailer has walked `p` up to the batch's offset and found it valid under the rule of
//!   [`validity`] (no foreign claim in between). Otherwise the command fails with
//!   `NotOwner` and took no effect.
//! - **Local acknowledgement** ([`ClusterMode::Local`]). The gate ([`LocalGate`]) checks that
//!   this node serves `p` and that the replication lag is under its bound, and adds the
//!   batch's outbox entry ([`cursor`]) to the local append; once the append succeeded the
//!   batch is queued, and the publisher thread produces the queue in order per partition
//!   (idempotent producer). An outbox entry goes once the tailer walked its batch valid; a
//!   queued batch that another node's claim voids forks the partition on this node, which
//!   then refuses it ([`GateRefusal::Forked`]).
//! - **Replica.** One tailer thread reads every partition of the journal topic from the
//!   position stored in the local journal ([`cursor`]; the start for a new store), walks it
//!   through the validity rule and appends the valid batches of other writers to the local
//!   journal, so every node holds every valid batch, in each stream's order.
//!
//! Threads: the tailer, the group member and the lease ([`member`]), the claimer (takeovers
//! run there so that the group member keeps polling during a catch-up) and, in `Local`
//! mode, the publisher. Each is watched: one that ends or panics while the node runs stops
//! the node (`Watch`).

pub mod cursor;
mod member;
pub mod validity;
pub mod wire;

#[cfg(test)]
mod tests;

use crate::engine::Engine;
use crate::error::{AppendError, StorageError};
use crate::gate::{AfterAppend, AppendGate, GateFuture, GateRefusal};
use crate::journal::{AppendRequest, JournalWriter};
use crate::kafka::KafkaConfig;
use crate::topics::partition_for;
use cursor::{Applied, CursorError};
use evershard_model::StreamId;
use member::{Member, MemberContext};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use validity::{ClaimAt, Verdict, VoidReason, Walk};
use wire::{Batch, Claim, Entry};

/// Journal-topic partitions of a new cluster unless set ([`ClusterConfig::partitions`]).
pub const DEFAULT_CLUSTER_PARTITIONS: u32 = 24;

/// How long the tailer leaves a batch of this node's live claim to the entity that wrote it
/// (which appends it locally right after the check) before it appends the batch itself: the
/// entity's local append failed, and the replica must not keep a hole.
const OWN_APPEND_GRACE_MS: u64 = 10_000;

/// How long the tailer's poll blocks when there is nothing to read; also bounds how late it
/// sees the stop flag.
const TAILER_POLL_MS: u64 = 20;

/// When a command is acknowledged (docs/scale-out.md, "Modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClusterMode {
    /// After its batch is on the journal topic (`acks=all`) and checked valid, then appended
    /// locally. Nothing acknowledged is lost with a node's disk.
    #[default]
    KafkaDurable,
    /// After the local append (fdatasync with `Durability::Durable`); the batch is published
    /// to the journal topic afterwards. A node's disk lost takes the batches not yet
    /// published with it (the replication lag, bounded by
    /// [`ClusterConfig::replication_lag_max_batches`]).
    Local,
}

/// How many acknowledged batches a `Local` node may hold that are not yet on the journal
/// topic, unless set ([`ClusterConfig::replication_lag_max_batches`]).
pub const DEFAULT_REPLICATION_LAG_MAX_BATCHES: usize = 10_000;

/// The longest [`ClusterConfig::handover_timeout_ms`]: the hand-over runs inside the group
/// member's rebalance callback, and the group drops a member that takes longer than its
/// `max.poll.interval.ms` (librdkafka's default, 300,000, which the member keeps).
const HANDOVER_TIMEOUT_MS_MAX: u64 = 240_000;

/// How long a `Local` node that found a fork goes on publishing its other partitions'
/// acknowledged batches before it stops (`State::fork`). Not the hand-over's bound: a fork
/// often follows a hand-over that ran out of it.
const FORK_DRAIN_MS: u64 = 30_000;

/// How long the publisher waits before producing again after a failed produce.
const PUBLISH_RETRY_MS: u64 = 500;

/// The most batches the publisher hands to the producer in one round before it waits for
/// their acknowledgements. Unbounded, a round of a long queue outlived the produce timeout
/// on a slow broker (measured: tansu on a loaded 2-core machine, ~7,000 queued batches per
/// node); the batches that timed out were produced again, which slowed the broker further,
/// and two nodes' lags had not drained after 120 s.
const PUBLISH_ROUND_BATCHES_MAX: usize = 500;

/// How a node joins a cluster. Build with [`ClusterConfig::new`] and the setters.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Brokers, security and timeouts of every client (the publisher's configuration type).
    pub kafka: KafkaConfig,
    /// The cluster's name: topics `evershard.<cluster>.journal`, group
    /// `evershard.<cluster>.owners`.
    pub cluster: String,
    /// This node's name, unique in the cluster (it signs claims and batches).
    pub node: String,
    /// Where this node takes forwarded commands; carried by its claims, returned as the owner
    /// hint of `NotOwner`. Opaque to the engine.
    pub endpoint: String,
    /// Partitions of the journal topic (fixed when the cluster is created). Default 24.
    pub partitions: u32,
    /// The group's `session.timeout.ms`: how long after a node's last heartbeat the broker
    /// reassigns its partitions. Default 10,000.
    pub session_timeout_ms: u64,
    /// The group's `heartbeat.interval.ms`. Default 1,000.
    pub heartbeat_interval_ms: u64,
    /// How long a command batch may take to be produced and checked before the command fails
    /// with `Unavailable { ReplicationFailed }` (and the node re-claims the partition).
    /// Default 30,000.
    pub ack_timeout_ms: u64,
    /// How long a takeover waits to catch up with a partition before it gives up and tries
    /// again. Default 120,000.
    pub catch_up_timeout_ms: u64,
    /// After another node's claim took a partition this node is still assigned (the group's
    /// assignments overlap during a rebalance), how long this node leaves it before it claims
    /// it back. Default 5,000.
    pub reclaim_after_ms: u64,
    /// The tailer's `fetch.wait.max.ms`: how long the broker may hold a fetch with nothing
    /// new. A broker that answers as soon as data arrives (Kafka) makes it the idle cost
    /// only; one that holds every fetch this long (tansu 0.6.0) adds it to every command's
    /// latency. Default 10.
    pub fetch_wait_ms: u64,
    /// Static membership: the group member's `group.instance.id` is the node's name, so a
    /// node that restarts within the session timeout gets its partitions back without a
    /// rebalance. Default false: with it, tansu 0.6.0 (the test broker) left partitions
    /// unassigned for good (measured, docs/scale-out.md), so it is untested.
    pub static_membership: bool,
    /// When a command is acknowledged. Default [`ClusterMode::KafkaDurable`].
    pub mode: ClusterMode,
    /// `Local` mode: how long a node that gives a partition up (a rebalance moves it, or
    /// [`Cluster::leave`]) waits for the batches it acknowledged there to be on the journal
    /// topic before it lets the next owner claim it; batches still queued after it are void
    /// under the next claim (a fork). Default 30,000; at most 240,000 (the group waits for a
    /// member's rebalance at most its `max.poll.interval.ms`, 300,000).
    pub handover_timeout_ms: u64,
    /// The lease (docs/scale-out.md, "Fencing"): a node serves nothing once
    /// `session_timeout_ms − lease_margin_ms` has passed on its monotonic clock since the
    /// send of its last request the group coordinator answered, so it stops acknowledging
    /// before the broker can hand its partitions to another node. Default 2,000; at least
    /// `heartbeat_interval_ms`, below `session_timeout_ms`.
    pub lease_margin_ms: u64,
    /// `Local` mode: the most acknowledged batches this node holds that are not yet on the
    /// journal topic; past it a new batch is refused with
    /// `Unavailable { ReplicationLagging }` (retryable) and nothing is written. It bounds
    /// what the loss of this node's disk can take. Default
    /// [`DEFAULT_REPLICATION_LAG_MAX_BATCHES`].
    pub replication_lag_max_batches: usize,
}

impl ClusterConfig {
    pub fn new(
        kafka: KafkaConfig,
        cluster: impl Into<String>,
        node: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> ClusterConfig {
        ClusterConfig {
            kafka,
            cluster: cluster.into(),
            node: node.into(),
            endpoint: endpoint.into(),
            partitions: DEFAULT_CLUSTER_PARTITIONS,
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            ack_timeout_ms: 30_000,
            catch_up_timeout_ms: 120_000,
            reclaim_after_ms: 5_000,
            fetch_wait_ms: 10,
            static_membership: false,
            mode: ClusterMode::KafkaDurable,
            handover_timeout_ms: 30_000,
            replication_lag_max_batches: DEFAULT_REPLICATION_LAG_MAX_BATCHES,
            lease_margin_ms: 2_000,
        }
    }

    pub fn lease_margin_ms(mut self, ms: u64) -> Self {
        self.lease_margin_ms = ms;
        self
    }

    /// How long a contact with the group coordinator keeps this node serving.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms.saturating_sub(self.lease_margin_ms))
    }

    pub fn mode(mut self, mode: ClusterMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn replication_lag_max_batches(mut self, batches: usize) -> Self {
        self.replication_lag_max_batches = batches;
        self
    }

    pub fn handover_timeout_ms(mut self, ms: u64) -> Self {
        self.handover_timeout_ms = ms;
        self
    }

    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    pub fn session_timeout_ms(mut self, ms: u64) -> Self {
        self.session_timeout_ms = ms;
        self
    }

    pub fn heartbeat_interval_ms(mut self, ms: u64) -> Self {
        self.heartbeat_interval_ms = ms;
        self
    }

    pub fn ack_timeout_ms(mut self, ms: u64) -> Self {
        self.ack_timeout_ms = ms;
        self
    }

    pub fn catch_up_timeout_ms(mut self, ms: u64) -> Self {
        self.catch_up_timeout_ms = ms;
        self
    }

    pub fn reclaim_after_ms(mut self, ms: u64) -> Self {
        self.reclaim_after_ms = ms;
        self
    }

    pub fn fetch_wait_ms(mut self, ms: u64) -> Self {
        self.fetch_wait_ms = ms;
        self
    }

    pub fn static_membership(mut self, on: bool) -> Self {
        self.static_membership = on;
        self
    }

    /// The journal topic's name.
    pub fn journal_topic(&self) -> String {
        format!("evershard.{}.journal", self.cluster)
    }

    /// The ownership group's id.
    pub fn owners_group(&self) -> String {
        format!("evershard.{}.owners", self.cluster)
    }

    fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        if !crate::topics::valid_name(&self.journal_topic()) {
            return Err(format!(
                "cluster name {:?} makes no valid topic name",
                self.cluster
            ));
        }
        if self.node.is_empty() {
            return Err("the node name is empty".into());
        }
        if self.partitions == 0 || self.partitions > crate::topics::PARTITIONS_MAX {
            return Err(format!(
                "partitions must be 1..={}, not {}",
                crate::topics::PARTITIONS_MAX,
                self.partitions
            ));
        }
        // The broker's last heartbeat may be up to one interval older than the last answered
        // request the lease counts from (docs/scale-out.md, "Fencing").
        if self.lease_margin_ms >= self.session_timeout_ms
            || self.lease_margin_ms < self.heartbeat_interval_ms
        {
            return Err(
                "lease_margin_ms must be at least heartbeat_interval_ms and below session_timeout_ms"
                    .into(),
            );
        }
        let poll_interval_ms = self
            .kafka
            .extra
            .iter()
            .find(|(k, _)| k == "max.poll.interval.ms")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        if let Some(poll_ms) = poll_interval_ms {
            if self.handover_timeout_ms >= poll_ms {
                return Err(format!(
                    "handover_timeout_ms must be below max.poll.interval.ms ({poll_ms})"
                ));
            }
        }
        if self.handover_timeout_ms > HANDOVER_TIMEOUT_MS_MAX {
            return Err(format!(
                "handover_timeout_ms must be at most {HANDOVER_TIMEOUT_MS_MAX}"
            ));
        }
        if self.replication_lag_max_batches == 0 {
            return Err("replication_lag_max_batches must be above 0".into());
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.session_timeout_ms
        {
            return Err(
                "heartbeat_interval_ms must be above 0 and below session_timeout_ms".into(),
            );
        }
        Ok(())
    }
}

/// Why joining a cluster failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("invalid cluster configuration: {reason}")]
    Config { reason: String },
    #[error("Kafka client: {reason}")]
    Client { reason: String },
    #[error("journal topic {topic} has {kafka} partitions, the configuration says {configured}")]
    PartitionsMismatch {
        topic: String,
        kafka: u32,
        configured: u32,
    },
    #[error("this engine already joined a cluster")]
    AlreadyJoined,
    /// The engine was opened without [`crate::EngineBuilder::joins_cluster`]: it may have
    /// appended (a timer due at open, a command) outside the cluster's order, at sequences
    /// the journal topic gives to other events, which no check would see afterwards.
    #[error("the engine was not opened to join a cluster: open it with EngineBuilder::joins_cluster(true)")]
    NotOpenedToJoin,
    #[error("joining a cluster needs a tokio runtime")]
    NoRuntime,
    #[error("starting a cluster thread: {reason}")]
    Spawn { reason: String },
    #[error("reading the stored tailer position: {0}")]
    Position(#[from] CursorError),
    /// The store's position in a partition lies past the partition's end: the journal topic
    /// is not the one this store followed (recreated, or another broker).
    #[error(
        "partition {partition} of {topic} ends at offset {end}, this store's position is {stored}"
    )]
    PositionAhead {
        topic: String,
        partition: u32,
        stored: i64,
        end: i64,
    },
}

/// The owner of a partition as this node last read it: its latest effective claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub endpoint: String,
    pub epoch: u64,
    /// The claim's offset in the partition.
    pub offset: i64,
}

/// One completed takeover of a partition by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    pub partition: u32,
    pub epoch: u64,
    /// From the group's assignment to serving (catch-up, claim, read-back).
    pub took_ms: u64,
}

/// `Local` mode: what this node acknowledged that the broker has not acknowledged yet
/// (`acks=all`): what losing this node's disk now would lose. All zero in `KafkaDurable`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationLag {
    pub batches: usize,
    /// Age of the oldest such batch, since this process queued it (or loaded it from the
    /// outbox at join).
    pub oldest_ms: u64,
}

/// An acknowledged `Local` batch that another node's claim voided (docs/scale-out.md,
/// "Fork"): its events are in this node's journal and nowhere else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub stream: evershard_model::StreamId,
    pub first_sequence: u64,
    pub event_ids: Vec<uuid::Uuid>,
    pub epoch: u64,
}

/// A partition this node refuses because its store forked from the journal topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    pub partition: u32,
    /// The acknowledged batches no other node has, in queue order.
    pub orphans: Vec<Orphan>,
}

/// What [`Cluster::health`] reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterHealth {
    /// Why the node stopped on its own, if it did: one of its cluster threads ended or
    /// panicked, and it serves nothing until the engine is reopened and joins again.
    pub stopped: Option<String>,
    pub replication_lag: ReplicationLag,
    /// Partitions refused because they forked (see [`Fork`]).
    pub forked: Vec<u32>,
    pub last_error: Option<String>,
}

/// What a node does now ([`Cluster::status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStatus {
    pub node: String,
    /// Partitions served, with the epoch of this node's claim.
    pub serving: Vec<(u32, u64)>,
    /// Partitions the group assigns to this node.
    pub assigned: Vec<u32>,
    /// Every takeover since the node joined, oldest first.
    pub takeovers: Vec<Takeover>,
    /// Per partition, the offset of the next message the tailer walks.
    pub walked: Vec<i64>,
    /// Per partition, the stored position the tailer resumed from when the node joined
    /// (0: read from the start).
    pub resumed_from: Vec<i64>,
    /// Valid batches read but not yet in the local journal, over all partitions.
    pub pending_applies: usize,
    /// Batches this node's gate acknowledged / refused since it joined.
    pub acknowledged: u64,
    pub refused: u64,
    /// The last error of a cluster thread, if any.
    pub last_error: Option<String>,
    /// Why the node stopped on its own, if it did ([`ClusterHealth::stopped`]).
    pub stopped: Option<String>,
    /// `Local` mode: acknowledged batches the broker has not acknowledged yet.
    pub replication_lag: ReplicationLag,
    /// `Local` mode: partitions refused because they forked, with their orphaned batches.
    pub forked: Vec<Fork>,
}

/// A `Local` batch acknowledged here and not yet walked valid on the topic.
#[derive(Debug, Clone)]
struct Queued {
    /// Its outbox entry's number.
    number: u64,
    batch: Batch,
    queued_at: Instant,
    /// Handed to the producer (and not failed since).
    sent: bool,
    /// The broker acknowledged it (`acks=all`): it is on the topic, so losing this node's
    /// disk no longer loses it. It stays queued until walked valid.
    delivered: bool,
}

/// An admitted `Local` batch between its admission and its queueing (or its failed append):
/// counted against `replication_lag_max_batches`, so that concurrent admissions cannot pass
/// the bound together.
struct Reservation {
    shared: Arc<Shared>,
    partition: u32,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.reserved -= 1;
        st.reserved_in[self.partition as usize] -= 1;
    }
}

/// A message of a partition that moves the stored position once it is behind the applied
/// prefix: an effective claim, or a valid batch waiting for the local journal.
#[derive(Debug)]
struct Pending {
    offset: i64,
    step: Step,
}

#[derive(Debug, Clone)]
enum Step {
    Claim(ClaimAt),
    Batch {
        batch: Batch,
        /// Written under a claim of this process: the entity appends it after the check.
        own: bool,
        seen: Instant,
    },
}

#[derive(Debug, Default)]
struct State {
    walks: Vec<Walk>,
    pending: Vec<VecDeque<Pending>>,
    /// Where the tailer resumed each partition at join.
    resumed_from: Vec<i64>,
    /// Partitions served, with this node's epoch.
    served: HashMap<u32, u64>,
    /// Partitions the group assigns to this node, with when they were assigned.
    assigned: HashMap<u32, Instant>,
    /// Claims this process wrote, (partition, epoch): their batches' verdicts are kept for the
    /// gate.
    my_epochs: HashSet<(u32, u64)>,
    /// Verdicts on this process's batches, by (partition, offset), until the gate takes them.
    own_verdicts: HashMap<(u32, i64), Verdict>,
    /// When another node's claim took a partition this node was assigned.
    taken_at: HashMap<u32, Instant>,
    takeovers: Vec<Takeover>,
    acknowledged: u64,
    refused: u64,
    last_error: Option<String>,
    /// `Local` mode, per partition: acknowledged batches not yet walked valid, in order.
    queue: Vec<VecDeque<Queued>>,
    /// `Local` mode, per partition: outbox numbers walked valid, for the tailer to remove.
    published: Vec<Vec<u64>>,
    /// The next outbox number.
    outbox_next: u64,
    /// Per partition: the offset the tailer must reach before the publisher produces that
    /// partition's queue loaded at join (its end then), so that a batch already on the topic
    /// (produced just before a crash) is found there instead of produced twice.
    publish_from: Vec<i64>,
    /// Partitions refused because a queued batch was voided.
    forked: BTreeMap<u32, Vec<Orphan>>,
    /// Until when the lease lets this node serve (`None`: no contact with the group
    /// coordinator yet).
    lease_until: Option<Instant>,
    /// `Local` mode: queued batches the broker has not acknowledged (the replication lag).
    undelivered: usize,
    /// `Local` mode: batches admitted and not yet queued ([`Reservation`]).
    reserved: usize,
    /// The same per partition, for a hand-over to wait for.
    reserved_in: Vec<usize>,
    /// `KafkaDurable`: this process's batches of no events that their entity appended, by
    /// (partition, offset), until the tailer passes them. A batch with events shows in its
    /// stream's head once appended; one with only keyspace writes (a timer correction, a
    /// keyed command that decided nothing) does not, so its entity says so.
    own_appended: HashSet<(u32, i64)>,
    /// [`Cluster::leave`] runs: nothing is claimed any more.
    leaving: bool,
    /// The thread a test asked to panic ([`Cluster::panic_thread_for_tests`]).
    #[cfg(feature = "fault-injection")]
    panic_thread: Option<String>,
    /// A test holds the publisher ([`Cluster::hold_publishing_for_tests`]).
    #[cfg(feature = "fault-injection")]
    publish_held: bool,
    /// A test holds entities' appends after the check (only
    /// `Cluster::hold_own_appends_for_tests` sets it).
    appends_held: bool,
    /// Why the node stopped on its own (a cluster thread ended or panicked, or a partition
    /// forked): it serves nothing from then on.
    failed: Option<String>,
    /// A fork stops the node once its other partitions' queues drained, or at this instant.
    stop_after_drain: Option<Instant>,
}

impl State {
    fn leased(&self) -> bool {
        self.lease_until.is_some_and(|t| Instant::now() < t)
    }

    /// The epoch under which this node serves `partition` now: assigned, claimed, and the
    /// lease running.
    fn served_epoch(&self, partition: u32) -> Option<u64> {
        self.served
            .get(&partition)
            .copied()
            .filter(|_| self.serving_at_all())
    }

    /// The lease runs and the node neither leaves nor stopped on its own: a claim that
    /// slipped into `served` meanwhile is not served either.
    fn serving_at_all(&self) -> bool {
        self.leased() && !self.leaving && self.failed.is_none()
    }

    fn lag(&self) -> ReplicationLag {
        ReplicationLag {
            batches: self.undelivered,
            oldest_ms: self
                .queue
                .iter()
                .filter_map(|q| q.iter().find(|q| !q.delivered))
                .map(|q| q.queued_at.elapsed().as_millis() as u64)
                .max()
                .unwrap_or(0),
        }
    }

    fn enqueue(&mut self, partition: u32, number: u64, batch: Batch) {
        self.queue[partition as usize].push_back(Queued {
            number,
            batch,
            queued_at: Instant::now(),
            sent: false,
            delivered: false,
        });
        self.undelivered += 1;
    }

    /// The broker acknowledged queued batch `number` of `partition` (if still queued).
    fn delivered(&mut self, partition: u32, number: u64) {
        if let Some(q) = self.queue[partition as usize]
            .iter_mut()
            .find(|q| q.number == number && !q.delivered)
        {
            q.delivered = true;
            self.undelivered -= 1;
        }
    }

    /// The partition's queued batches can never be valid any more: refuse the partition,
    /// keep their outbox entries (the audit of what only this node has) and list them, and
    /// stop the node (docs/scale-out.md, "Fork"): its store diverged, and while it held the
    /// group's assignment of the partition no node would serve it.
    fn fork(&mut self, shared: &Shared, partition: u32, why: &str) {
        let node = shared.config.node.as_str();
        let drained: Vec<Queued> = self.queue[partition as usize].drain(..).collect();
        self.undelivered -= drained.iter().filter(|q| !q.delivered).count();
        let orphans: Vec<Orphan> = drained
            .into_iter()
            .map(|q| Orphan {
                stream: q.batch.stream(),
                first_sequence: q.batch.first_sequence,
                event_ids: q.batch.events.iter().map(|e| e.event_id).collect(),
                epoch: q.batch.epoch,
            })
            .collect();
        self.served.remove(&partition);
        for o in &orphans {
            tracing::error!(node, partition, stream = %o.stream, first_sequence = o.first_sequence, epoch = o.epoch, event_ids = ?o.event_ids, "orphaned acknowledged batch (fork)");
        }
        tracing::error!(
            node,
            partition,
            orphans = orphans.len(),
            "partition forked: {why}; refused until the store is rebuilt"
        );
        self.forked.entry(partition).or_default().extend(orphans);
        // The node stops: stopping leaves the group (dynamic membership), so the other nodes
        // take every partition of this one, the forked one included. First its other
        // partitions' acknowledged batches go to the topic (at most `FORK_DRAIN_MS`: the
        // tailer stops the node, `stop_once_drained`): the nodes that take them claim at
        // once, which would void those too (found by review, 2026-11-28).
        let drain = Duration::from_millis(FORK_DRAIN_MS);
        self.stop_after_drain
            .get_or_insert_with(|| Instant::now() + drain);
        self.failed.get_or_insert_with(|| {
            format!(
                "partition {partition} forked ({why}): this store diverged from the journal topic; \
                 restart the node on an empty directory, keeping this one (it holds the orphaned batches)"
            )
        });
        self.served.clear();
        shared.walked.notify_all();
        shared.queued.notify_all();
        shared.notify.notify_waiters();
    }

    fn owner(&self, partition: u32) -> Option<Owner> {
        self.walks
            .get(partition as usize)
            .and_then(Walk::latest_claim)
            .map(|ClaimAt { offset, claim }| Owner {
                node: claim.node.clone(),
                endpoint: claim.endpoint.clone(),
                epoch: claim.epoch,
                offset: *offset,
            })
    }
}

#[derive(Debug)]
struct Shared {
    config: ClusterConfig,
    topic: String,
    state: Mutex<State>,
    /// Signalled after every tailer step, for the claimer's blocking waits.
    walked: Condvar,
    /// Signalled after every tailer step, for the gate's async waits.
    notify: tokio::sync::Notify,
    /// `Local` mode: signalled when a batch is queued, for the publisher.
    queued: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a fork: stops the node once the queues of its partitions that did not fork are
    /// empty (their batches walked valid) and nothing admitted is still being appended, or
    /// once the drain's time ran out.
    fn stop_once_drained(&self) {
        let mut st = self.lock();
        let Some(deadline) = st.stop_after_drain else {
            return;
        };
        let drained = (0..self.config.partitions).all(|p| {
            st.forked.contains_key(&p)
                || (st.queue[p as usize].is_empty() && st.reserved_in[p as usize] == 0)
        });
        if !drained && Instant::now() < deadline {
            return;
        }
        if !drained {
            let queued: usize = (0..self.config.partitions)
                .filter(|p| !st.forked.contains_key(p))
                .map(|p| st.queue[p as usize].len())
                .sum();
            let why = format!(
                "stopping after a fork with {queued} acknowledged batches of other partitions not yet on the journal topic: the next owners' claims void them"
            );
            tracing::error!(node = %self.config.node, "{why}");
            st.last_error = Some(why);
        }
        st.stop_after_drain = None;
        drop(st);
        self.stop.store(true, Ordering::Release);
        self.walked.notify_all();
        self.queued.notify_all();
        self.notify.notify_waiters();
    }

    fn error(&self, what: String) {
        tracing::warn!(node = %self.config.node, "{what}");
        self.lock().last_error = Some(what);
    }

    /// Stops serving `partition` if it is still served under `epoch` (the claimer claims it
    /// again, with a new epoch, while the group assigns it here).
    fn drop_serving(&self, partition: u32, epoch: u64, why: &str) {
        let mut st = self.lock();
        if st.served.get(&partition) == Some(&epoch) {
            st.served.remove(&partition);
            tracing::warn!(node = %self.config.node, partition, epoch, "stopped serving: {why}");
        }
    }

    /// Waits (blocking, bounded) until `done` holds on the state; false on timeout or stop.
    fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if done(&st) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || self.stop.load(Ordering::Acquire) {
                return false;
            }
            // Bounded so that a stop is seen even without a tailer step.
            let wait = (deadline - now).min(Duration::from_millis(200));
            st = self
                .walked
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Watches one cluster thread: should it end (return or panic) while the node is not
/// stopping, the node stops as a whole — it serves nothing, says why in
/// [`ClusterHealth::stopped`], and its other threads end, the member's leaving the group so
/// that other nodes take its partitions at once. A node missing its tailer would hold
/// partitions it can no longer check or replicate (and in `Local` mode keep acknowledging
/// on a walk that misses other nodes' claims); one missing its member would keep serving
/// partitions the group may have given away.
struct Watch {
    shared: Arc<Shared>,
    what: &'static str,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.shared.stop.load(Ordering::Acquire) {
            return;
        }
        let how = if std::thread::panicking() {
            "panicked"
        } else {
            "ended"
        };
        let mut st = self.shared.lock();
        let last = st
            .last_error
            .as_deref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        let why = format!("the cluster's {} thread {how}{last}", self.what);
        tracing::error!(node = %self.shared.config.node, "{why}; the node stops serving");
        self.shared.stop.store(true, Ordering::Release);
        st.failed.get_or_insert(why);
        st.served.clear();
        drop(st);
        self.shared.walked.notify_all();
        self.shared.queued.notify_all();
        self.shared.notify.notify_waiters();
    }
}

/// Panics when a test asked this thread to ([`Cluster::panic_thread_for_tests`]).
fn fault_point(shared: &Shared, what: &str) {
    #[cfg(feature = "fault-injection")]
    {
        let asked = shared.lock().panic_thread.as_deref() == Some(what);
        if asked {
            panic!("the {what} thread panics, as a test asked");
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (shared, what);
}

/// A node's membership of a cluster ([`Engine::join_cluster`]). Dropping it leaves the
/// cluster like [`Cluster::leave`] without waiting.
#[derive(Debug)]
pub struct Cluster {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    /// The journal-topic partition of an aggregate id (Kafka's murmur2, like the topics).
    pub fn partition_for(&self, aggregate_id: &str) -> u32 {
        partition_for(aggregate_id, self.shared.config.partitions)
    }

    /// The owner of a partition as far as this node has read the journal topic.
    pub fn owner(&self, partition: u32) -> Option<Owner> {
        self.shared.lock().owner(partition)
    }

    /// True when this node serves the partition now (claimed, and its lease running).
    pub fn serves(&self, partition: u32) -> bool {
        self.shared.lock().served_epoch(partition).is_some()
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.shared.config
    }

    pub fn status(&self) -> ClusterStatus {
        let st = self.shared.lock();
        let mut serving: Vec<(u32, u64)> = st
            .served
            .iter()
            .filter(|_| st.serving_at_all())
            .map(|(p, e)| (*p, *e))
            .collect();
        serving.sort_unstable();
        let mut assigned: Vec<u32> = st.assigned.keys().copied().collect();
        assigned.sort_unstable();
        ClusterStatus {
            node: self.shared.config.node.clone(),
            serving,
            assigned,
            takeovers: st.takeovers.clone(),
            walked: st.walks.iter().map(|w| w.next_offset).collect(),
            resumed_from: st.resumed_from.clone(),
            pending_applies: st
                .pending
                .iter()
                .flatten()
                .filter(|p| matches!(p.step, Step::Batch { .. }))
                .count(),
            acknowledged: st.acknowledged,
            refused: st.refused,
            last_error: st.last_error.clone(),
            stopped: st.failed.clone(),
            replication_lag: st.lag(),
            forked: st
                .forked
                .iter()
                .map(|(p, orphans)| Fork {
                    partition: *p,
                    orphans: orphans.clone(),
                })
                .collect(),
        }
    }

    /// Whether the node stopped on its own, the replication lag (`Local` mode), the forked
    /// partitions and the last error.
    pub fn health(&self) -> ClusterHealth {
        let st = self.shared.lock();
        ClusterHealth {
            stopped: st.failed.clone(),
            replication_lag: st.lag(),
            forked: st.forked.keys().copied().collect(),
            last_error: st.last_error.clone(),
        }
    }

    /// Stops serving, leaves the group (its partitions move at once, without waiting for the
    /// session timeout) and stops the threads. The engine's gate stays installed: from here
    /// on every command fails with `NotOwner` (a node that left serves nothing). In `Local`
    /// mode it first waits, at most [`ClusterConfig::handover_timeout_ms`], until the
    /// batches it acknowledged are on the journal topic and walked valid: the nodes that get
    /// its partitions claim them at once, which would void what is still queued (a fork).
    /// Blocking (the drain, a few poll intervals and the group's leave request): call it
    /// where blocking is allowed (`spawn_blocking`, or a multi-threaded runtime's
    /// `block_in_place`), since the appends the drain waits for need the runtime's workers.
    pub fn leave(&self) {
        {
            let mut st = self.shared.lock();
            st.leaving = true;
            st.served.clear();
        }
        if self.shared.config.mode == ClusterMode::Local {
            let partitions: Vec<u32> = (0..self.shared.config.partitions).collect();
            member::hand_over(&self.shared, &partitions, true);
        }
        self.shared.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Cluster {
    /// Makes the named cluster thread (`"tailer"` or `"member"`) panic at its next turn: for
    /// tests of a node whose cluster machinery fails.
    pub fn panic_thread_for_tests(&self, thread: &str) {
        self.shared.lock().panic_thread = Some(thread.to_owned());
    }

    /// Holds (`true`) or releases every `KafkaDurable` batch between its check and its
    /// entity's local append, as a stalled local disk would: past the tailer's grace for it,
    /// the tailer appends it first. For tests of that race.
    pub fn hold_own_appends_for_tests(&self, held: bool) {
        self.shared.lock().appends_held = held;
        self.shared.notify.notify_waiters();
    }

    /// Holds (`true`) or releases the `Local` publisher: batches stay queued meanwhile, as
    /// with a broker that does not keep up. For tests of hand-overs with a queue.
    pub fn hold_publishing_for_tests(&self, held: bool) {
        self.shared.lock().publish_held = held;
        self.shared.queued.notify_all();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let mut st = self.shared.lock();
        st.leaving = true;
        st.served.clear();
    }
}

impl Engine {
    /// Joins a cluster (docs/scale-out.md): creates the journal topic if it is missing (and
    /// refuses one with another partition count), installs the `KafkaDurable` gate in front
    /// of every local append, and starts the tailer, the group member and the claimer. From
    /// here on a command is executed only for an aggregate whose partition this node serves;
    /// any other fails with `CommandError::NotOwner` and writes nothing. Once per engine.
    pub async fn join_cluster(&self, config: ClusterConfig) -> Result<Cluster, ClusterError> {
        config
            .validate()
            .map_err(|reason| ClusterError::Config { reason })?;
        tokio::runtime::Handle::try_current().map_err(|_| ClusterError::NoRuntime)?;
        let rt = self.runtime().clone();
        if rt.gate.get().is_some() {
            return Err(ClusterError::AlreadyJoined);
        }
        if !rt.awaits_gate {
            return Err(ClusterError::NotOpenedToJoin);
        }
        let topic = config.journal_topic();
        // Where this store stopped following each partition (offset 0 if it never did).
        let cursor::Loaded {
            walks,
            cursors,
            outbox,
        } = cursor::load(rt.journal.reader(), &config.cluster, config.partitions)?;
        // The outbox (`Local` batches acknowledged before a stop or crash) is published again
        // in any mode: it is what this node acknowledged.
        let publish_from = {
            let config = config.clone();
            let topic = topic.clone();
            let stored: Vec<i64> = cursors.iter().map(|c| c.next_offset).collect();
            let with_outbox: Vec<bool> = outbox.iter().map(|o| !o.is_empty()).collect();
            tokio::task::spawn_blocking(move || {
                ensure_topic(&config, &topic)?;
                check_positions(&config, &topic, &stored)?;
                end_offsets(&config, &topic, &with_outbox)
            })
            .await
            .map_err(|e| ClusterError::Spawn {
                reason: e.to_string(),
            })??
        };
        let outbox_next = outbox
            .iter()
            .flatten()
            .map(|o| o.number + 1)
            .max()
            .unwrap_or(0);
        let loaded_at = Instant::now();
        let queue: Vec<VecDeque<Queued>> = outbox
            .into_iter()
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|o| Queued {
                        number: o.number,
                        batch: o.batch,
                        queued_at: loaded_at,
                        sent: false,
                        delivered: false,
                    })
                    .collect()
            })
            .collect();
        let undelivered = queue.iter().map(VecDeque::len).sum();
        let resumed_from: Vec<i64> = cursors.iter().map(|c| c.next_offset).collect();
        let applied = Applied::new(&config.cluster, cursors);
        let client = |e: rdkafka::error::KafkaError| ClusterError::Client {
            reason: config.kafka.redact(&e.to_string()),
        };
        let mut pc = config.kafka.producer_config();
        // A command waits for its batch: no batching delay beyond what concurrent commands
        // fill in the meantime.
        pc.set("linger.ms", "1");
        let producer: FutureProducer = pc.create().map_err(client)?;
        // The publisher's own (`producer_config` is idempotent with `acks=all`: retries
        // neither repeat nor reorder a partition's batches within this process).
        let mut pc = config.kafka.producer_config();
        pc.set("linger.ms", "1");
        let publisher: FutureProducer = pc.create().map_err(client)?;
        let tail: BaseConsumer = consumer_config(&config, &format!("{}.replica", config.node))
            .create()
            .map_err(client)?;
        let mut members = consumer_config(&config, &config.owners_group());
        members
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                config.heartbeat_interval_ms.to_string(),
            );
        if config.static_membership {
            members.set("group.instance.id", &config.node);
        }
        let partitions = config.partitions as usize;
        let shared = Arc::new(Shared {
            topic,
            state: Mutex::new(State {
                walks,
                resumed_from,
                pending: (0..partitions).map(|_| VecDeque::new()).collect(),
                queue,
                published: vec![Vec::new(); partitions],
                outbox_next,
                publish_from,
                undelivered,
                reserved_in: vec![0; partitions],
                ..State::default()
            }),
            config,
            walked: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            queued: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let gate: Arc<dyn AppendGate> = match shared.config.mode {
            ClusterMode::KafkaDurable => Arc::new(DurableGate {
                shared: shared.clone(),
                producer: producer.clone(),
            }),
            ClusterMode::Local => Arc::new(LocalGate {
                shared: shared.clone(),
            }),
        };
        // Its callbacks hand revoked partitions over (`member::hand_over`).
        let client = |e: rdkafka::error::KafkaError| ClusterError::Client {
            reason: shared.config.kafka.redact(&e.to_string()),
        };
        let members: Arc<Member> = Arc::new(
            members
                .create_with_context(MemberContext {
                    shared: shared.clone(),
                })
                .map_err(client)?,
        );
        rt.gate.set(gate).map_err(|_| ClusterError::AlreadyJoined)?;
        // Each thread is watched: one that ends while the node runs stops the node (`Watch`).
        let spawn = |what: &'static str, f: Box<dyn FnOnce() + Send>| {
            let watched = shared.clone();
            std::thread::Builder::new()
                .name(format!("evershard-cluster-{what}"))
                .spawn(move || {
                    let _watch = Watch {
                        shared: watched,
                        what,
                    };
                    f()
                })
                .map_err(|e| {
                    // The threads started already end: the node serves nothing.
                    shared.stop.store(true, Ordering::Release);
                    ClusterError::Spawn {
                        reason: e.to_string(),
                    }
                })
        };
        let journal = rt.journal.clone();
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(spawn(
            "tailer",
            Box::new(move || run_tailer(&s, tail, &journal, applied)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "member",
            Box::new({
                let members = members.clone();
                move || member::run_member(&s, &members)
            }),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "lease",
            Box::new(move || member::run_lease(&s, &members)),
        )?);
        let s = shared.clone();
        let handle = tokio::runtime::Handle::current();
        threads.push(spawn(
            "claimer",
            Box::new(move || run_claimer(&s, &producer, &handle)),
        )?);
        let s = shared.clone();
        let handle = tokio::runtime::Handle::current();
        threads.push(spawn(
            "publisher",
            Box::new(move || run_publisher(&s, &publisher, &handle)),
        )?);
        Ok(Cluster {
            shared,
            threads: Mutex::new(threads),
        })
    }
}

fn consumer_config(config: &ClusterConfig, group: &str) -> ClientConfig {
    let mut c = config.kafka.client_config();
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        // The gate waits for the tailer to read its batch back. Kafka answers a fetch as soon
        // as there is data, but tansu 0.6.0 holds every fetch for the whole
        // fetch.wait.max.ms (measured with kafka-python: produce + read back took 261 ms at
        // the default 500 ms, 61 ms at 50 ms), so the wait bounds each command's latency.
        .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string());
    for (k, v) in &config.kafka.extra {
        c.set(k, v);
    }
    c
}

/// Refuses a stored position past its partition's end: the store followed another journal
/// topic (recreated, or on another broker), and resuming there would skip its messages.
fn check_positions(
    config: &ClusterConfig,
    topic: &str,
    stored: &[i64],
) -> Result<(), ClusterError> {
    if stored.iter().all(|o| *o == 0) {
        return Ok(());
    }
    let client = |e: rdkafka::error::KafkaError| ClusterError::Client {
        reason: config.kafka.redact(&e.to_string()),
    };
    let consumer: BaseConsumer = config.kafka.client_config().create().map_err(client)?;
    let timeout = config.kafka.connection_timeout + config.kafka.request_timeout;
    for (p, &position) in stored.iter().enumerate() {
        if position == 0 {
            continue;
        }
        let (_, end) = consumer
            .fetch_watermarks(topic, p as i32, timeout)
            .map_err(client)?;
        if position > end {
            return Err(ClusterError::PositionAhead {
                topic: topic.to_owned(),
                partition: p as u32,
                stored: position,
                end,
            });
        }
    }
    Ok(())
}

/// The end offset of each partition flagged (0 for the others): where the tailer must be
/// before the publisher produces a partition's outbox loaded at join.
fn end_offsets(
    config: &ClusterConfig,
    topic: &str,
    flagged: &[bool],
) -> Result<Vec<i64>, ClusterError> {
    let mut ends = vec![0; flagged.len()];
    if !flagged.iter().any(|f| *f) {
        return Ok(ends);
    }
    let client = |e: rdkafka::error::KafkaError| ClusterError::Client {
        reason: config.kafka.redact(&e.to_string()),
    };
    let consumer: BaseConsumer = config.kafka.client_config().create().map_err(client)?;
    let timeout = config.kafka.connection_timeout + config.kafka.request_timeout;
    for (p, _) in flagged.iter().enumerate().filter(|(_, f)| **f) {
        ends[p] = consumer
            .fetch_watermarks(topic, p as i32, timeout)
            .map_err(client)?
            .1;
    }
    Ok(ends)
}

/// Creates the journal topic if missing; refuses one with another partition count.
fn ensure_topic(config: &ClusterConfig, topic: &str) -> Result<(), ClusterError> {
    let client = |e: rdkafka::error::KafkaError| ClusterError::Client {
        reason: config.kafka.redact(&e.to_string()),
    };
    let admin: AdminClient<DefaultClientContext> =
        config.kafka.client_config().create().map_err(client)?;
    let timeout = config.kafka.connection_timeout + config.kafka.request_timeout;
    let count = |admin: &AdminClient<DefaultClientContext>| -> Result<Option<u32>, ClusterError> {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), timeout)
            .map_err(client)?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as u32))
    };
    if count(&admin)?.is_none() {
        let new = NewTopic::new(
            topic,
            config.partitions as i32,
            TopicReplication::Fixed(config.kafka.replication_factor),
        );
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let results =
            futures::executor::block_on(admin.create_topics(&[new], &opts)).map_err(client)?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(ClusterError::Client {
                        reason: format!("creating topic {name}: {code}"),
                    })
                }
            }
        }
    }
    match count(&admin)? {
        Some(n) if n == config.partitions => Ok(()),
        Some(n) => Err(ClusterError::PartitionsMismatch {
            topic: topic.to_owned(),
            kafka: n,
            configured: config.partitions,
        }),
        None => Err(ClusterError::Client {
            reason: format!("topic {topic} not visible after its creation"),
        }),
    }
}

fn headers(entry: &Entry) -> OwnedHeaders {
    let epoch = entry.epoch().to_string();
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: wire::HEADER_KIND,
            value: Some(entry.kind()),
        })
        .insert(Header {
            key: wire::HEADER_NODE,
            value: Some(entry.node()),
        })
        .insert(Header {
            key: wire::HEADER_EPOCH,
            value: Some(&epoch),
        })
}

/// The `KafkaDurable` gate: produce, read back, check, then let the entity append.
#[derive(Clone)]
struct DurableGate {
    shared: Arc<Shared>,
    producer: FutureProducer,
}

impl std::fmt::Debug for DurableGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableGate")
            .field("node", &self.shared.config.node)
            .finish()
    }
}

impl AppendGate for DurableGate {
    fn admit<'a>(&'a self, request: &'a mut AppendRequest) -> GateFuture<'a> {
        Box::pin(async move {
            let outcome = self.check(request).await;
            {
                let mut st = self.shared.lock();
                match outcome {
                    Ok(_) => st.acknowledged += 1,
                    Err(_) => st.refused += 1,
                }
            }
            let (partition, offset) = outcome?;
            loop {
                let released = self.shared.notify.notified();
                if !self.shared.lock().appends_held {
                    break;
                }
                // Woken by the release, or by the tailer's next step.
                let _ = tokio::time::timeout(Duration::from_millis(100), released).await;
            }
            if !request.events.is_empty() {
                return Ok(None); // its stream's head shows the tailer when it is appended
            }
            let shared = self.shared.clone();
            let after: AfterAppend =
                Box::new(move || mark_own_appended(&shared, partition, offset));
            Ok(Some(after))
        })
    }

    fn serving(&self, stream: &evershard_model::StreamId) -> Result<u64, GateRefusal> {
        serving(&self.shared, stream)
    }
}

/// `KafkaDurable`: this process's batch of no events at `offset` is in the local journal
/// (see `State::own_appended`). Only while the tailer has not passed it (after
/// `OWN_APPEND_GRACE_MS` it appends a batch itself), so that no mark outlives its batch.
fn mark_own_appended(shared: &Shared, partition: u32, offset: i64) {
    let mut st = shared.lock();
    if st.pending[partition as usize]
        .iter()
        .any(|p| p.offset == offset)
    {
        st.own_appended.insert((partition, offset));
    }
}

/// The claim epoch under which this node serves the stream's partition, or why not.
fn serving(shared: &Shared, stream: &evershard_model::StreamId) -> Result<u64, GateRefusal> {
    let partition = partition_for(&stream.aggregate_id, shared.config.partitions);
    let st = shared.lock();
    if st.forked.contains_key(&partition) {
        return Err(GateRefusal::Forked { partition });
    }
    st.served_epoch(partition)
        .ok_or_else(|| GateRefusal::NotOwner {
            partition,
            owner: st.owner(partition).map(|o| o.node),
        })
}

/// The `Local` gate: checks, adds the outbox write, and queues the batch after the append.
struct LocalGate {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGate")
            .field("node", &self.shared.config.node)
            .finish()
    }
}

impl AppendGate for LocalGate {
    fn admit<'a>(&'a self, request: &'a mut AppendRequest) -> GateFuture<'a> {
        let outcome = self.check(request);
        let mut st = self.shared.lock();
        match outcome {
            Ok(_) => st.acknowledged += 1,
            Err(_) => st.refused += 1,
        }
        Box::pin(std::future::ready(outcome.map(Some)))
    }

    fn serving(&self, stream: &evershard_model::StreamId) -> Result<u64, GateRefusal> {
        serving(&self.shared, stream)
    }
}

impl LocalGate {
    fn check(&self, request: &mut AppendRequest) -> Result<AfterAppend, GateRefusal> {
        let shared = &self.shared;
        if request.seal.is_some() {
            return Err(GateRefusal::Unsupported);
        }
        let partition = partition_for(&request.stream.aggregate_id, shared.config.partitions);
        let idx = partition as usize;
        let (epoch, number) = {
            let mut st = shared.lock();
            if st.forked.contains_key(&partition) {
                return Err(GateRefusal::Forked { partition });
            }
            let Some(epoch) = st.served_epoch(partition) else {
                return Err(GateRefusal::NotOwner {
                    partition,
                    owner: st.owner(partition).map(|o| o.node),
                });
            };
            // Refused rather than held: the entity's actor would hold its mailbox for as long
            // as the broker is away, and a caller learns more from a typed, retryable answer
            // than from a timeout.
            let batches = st.undelivered + st.reserved;
            if batches >= shared.config.replication_lag_max_batches {
                return Err(GateRefusal::Lagging { batches });
            }
            // The local journal is ahead of the partition's walk by the queue: the stream's
            // head is its latest queued batch's, if any.
            let head = st.queue[idx]
                .iter()
                .rev()
                .find(|q| {
                    q.batch.aggregate_id == request.stream.aggregate_id
                        && q.batch.aggregate_type == request.stream.aggregate_type
                        && !q.batch.events.is_empty()
                })
                .map(|q| q.batch.last_sequence())
                .unwrap_or_else(|| st.walks[idx].head(&request.stream));
            if head != request.expected_version {
                return Err(GateRefusal::Behind {
                    expected: request.expected_version,
                    actual: head,
                });
            }
            let number = st.outbox_next;
            st.outbox_next += 1;
            st.reserved += 1;
            st.reserved_in[idx] += 1;
            (epoch, number)
        };
        // Released when the closure runs (the batch is queued by then) or is dropped unrun
        // (the append failed).
        let reservation = Reservation {
            shared: shared.clone(),
            partition,
        };
        let batch = Batch::from_request(&shared.config.node, epoch, request);
        // In the batch's own sled batch: a crash keeps the events and their outbox entry, or
        // neither.
        request.extra_writes.push(cursor::outbox_put(
            &shared.config.cluster,
            partition,
            number,
            &batch,
        ));
        let shared = shared.clone();
        Ok(Box::new(move || {
            let mut st = shared.lock();
            st.enqueue(partition, number, batch);
            if st.forked.contains_key(&partition) {
                // Forked while this batch was being appended: it is an orphan too.
                st.fork(&shared, partition, "a batch appended after the fork");
            }
            drop(st);
            drop(reservation);
            shared.queued.notify_all();
        }))
    }
}

/// `Local` mode: produces every partition's queue in order (the idempotent producer keeps a
/// partition's order across its retries), once the partition's queue may be published: the
/// tailer reached the end the partition had at join (for a queue loaded from the outbox) and
/// the partition's latest effective claim is still the one the batch was written under
/// (otherwise the batch is void wherever it lands: a fork). A batch leaves the queue when
/// the tailer walks it valid.
fn run_publisher(shared: &Shared, producer: &FutureProducer, handle: &tokio::runtime::Handle) {
    let timeout = shared.config.kafka.connection_timeout + shared.config.kafka.request_timeout;
    while !shared.stop.load(Ordering::Acquire) {
        let todo: Vec<(u32, u64, Entry)> = {
            let mut guard = shared.lock();
            let st = &mut *guard;
            let mut todo = Vec::new();
            #[cfg(feature = "fault-injection")]
            let partitions = if st.publish_held {
                0
            } else {
                shared.config.partitions
            };
            #[cfg(not(feature = "fault-injection"))]
            let partitions = shared.config.partitions;
            for p in 0..partitions {
                let idx = p as usize;
                if st.forked.contains_key(&p)
                    || st.walks[idx].next_offset < st.publish_from[idx]
                    || st.queue[idx].iter().all(|q| q.sent)
                {
                    continue;
                }
                let latest = st.walks[idx]
                    .latest_claim()
                    .map(|c| (c.claim.node.clone(), c.claim.epoch));
                let mine = |q: &Queued| latest == Some((shared.config.node.clone(), q.batch.epoch));
                if let Some(q) = st.queue[idx].iter().find(|q| !q.sent && !mine(q)) {
                    let why = format!(
                        "a batch of epoch {} queued while the latest claim is {latest:?}",
                        q.batch.epoch
                    );
                    st.fork(shared, p, &why);
                    continue;
                }
                // A prefix of each partition's unsent batches: the next round sends on from
                // there, so a partition's order holds.
                for q in st.queue[idx].iter_mut().filter(|q| !q.sent) {
                    if todo.len() >= PUBLISH_ROUND_BATCHES_MAX {
                        break;
                    }
                    q.sent = true;
                    todo.push((p, q.number, Entry::Batch(q.batch.clone())));
                }
            }
            if todo.is_empty() {
                // Bounded, so that a stop or a partition becoming publishable is seen.
                let _ = shared
                    .queued
                    .wait_timeout(guard, Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            todo
        };
        // Handed to the producer in queue order, then awaited: its queue keeps the order.
        let mut deliveries = Vec::with_capacity(todo.len());
        for (p, number, entry) in &todo {
            let value = entry.encode();
            let Entry::Batch(batch) = entry else {
                unreachable!("only batches are queued")
            };
            let record = FutureRecord::to(&shared.topic)
                .partition(*p as i32)
                .key(batch.aggregate_id.as_bytes())
                .payload(&value)
                .headers(headers(entry));
            // Enqueued at once (the record's bytes are copied); a full local queue is a
            // failed produce like any other.
            let delivery = producer.send_result(record).map_err(|(e, _)| e);
            deliveries.push((*p, *number, delivery));
        }
        let mut failed = false;
        // One bound for the round, not one per batch: a broker that is away costs one
        // timeout, then the round is retried.
        let deadline = tokio::time::Instant::now() + timeout;
        for (p, number, delivery) in deliveries {
            let outcome = match delivery {
                Ok(future) => match handle
                    .block_on(async { tokio::time::timeout_at(deadline, future).await })
                {
                    Ok(Ok(Ok(_))) => {
                        shared.lock().delivered(p, number);
                        Ok(())
                    }
                    Ok(Ok(Err((e, _)))) => Err(e.to_string()),
                    Ok(Err(_canceled)) => Err("the producer dropped the delivery".to_owned()),
                    Err(_elapsed) => Err(format!("no delivery report within {timeout:?}")),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = outcome {
                failed = true;
                shared.error(format!("publishing a batch to partition {p}: {e}"));
                // Produced again later, after the batches of its partition still in flight;
                // should one of those land first it is void (out of sequence) and is resent
                // too (see `walk_one`).
                let mut st = shared.lock();
                if let Some(q) = st.queue[p as usize].iter_mut().find(|q| q.number == number) {
                    q.sent = false;
                }
            }
        }
        if failed {
            std::thread::sleep(Duration::from_millis(PUBLISH_RETRY_MS));
        }
    }
}

impl DurableGate {
    /// The batch's (partition, offset) on the journal topic once it is valid there.
    async fn check(&self, request: &AppendRequest) -> Result<(u32, i64), GateRefusal> {
        let shared = &self.shared;
        if request.seal.is_some() {
            return Err(GateRefusal::Unsupported);
        }
        let partition = partition_for(&request.stream.aggregate_id, shared.config.partitions);
        let not_owner = |st: &State| GateRefusal::NotOwner {
            partition,
            owner: st.owner(partition).map(|o| o.node),
        };
        let epoch = {
            let st = shared.lock();
            let Some(epoch) = st.served_epoch(partition) else {
                return Err(not_owner(&st));
            };
            let head = st.walks[partition as usize].head(&request.stream);
            if head != request.expected_version {
                return Err(GateRefusal::Behind {
                    expected: request.expected_version,
                    actual: head,
                });
            }
            epoch
        };
        let entry = Entry::Batch(Batch::from_request(&shared.config.node, epoch, request));
        let value = entry.encode();
        // Refused before it is sent: the producer would fail it at once, and the failure
        // path gives the partition up (the batch "may still land"), so a retrying client
        // would bounce the partition between claims for ever (found by review).
        let max = JOURNAL_MESSAGE_BYTES_MAX - MESSAGE_HEADROOM_BYTES;
        let bytes = value.len() + request.stream.aggregate_id.len();
        if bytes > max {
            return Err(GateRefusal::TooLarge { bytes, max });
        }
        let record = FutureRecord::to(&shared.topic)
            .partition(partition as i32)
            .key(request.stream.aggregate_id.as_bytes())
            .payload(&value)
            .headers(headers(&entry));
        let ack_timeout = Duration::from_millis(shared.config.ack_timeout_ms);
        let deadline = tokio::time::Instant::now() + ack_timeout;
        let offset = match self
            .producer
            .send(record, Timeout::After(ack_timeout))
            .await
        {
            Ok(delivery) => delivery.offset,
            Err((e, _)) => {
                shared.error(format!("producing a batch to partition {partition}: {e}"));
                // It may still land, valid under this epoch: claim anew so that whatever
                // lands is either read back into the journal or void.
                shared.drop_serving(partition, epoch, "a batch's produce failed");
                return Err(GateRefusal::Replication);
            }
        };
        loop {
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = shared.lock();
                if let Some(verdict) = st.own_verdicts.remove(&(partition, offset)) {
                    return match verdict {
                        Verdict::Valid => Ok((partition, offset)),
                        Verdict::Void(VoidReason::OutOfSequence { expected_first, .. }) => {
                            Err(GateRefusal::Behind {
                                expected: request.expected_version,
                                actual: expected_first - 1,
                            })
                        }
                        Verdict::Void(_) | Verdict::Claimed => Err(not_owner(&st)),
                    };
                }
                if st.walks[partition as usize].next_offset > offset {
                    // Walked without a verdict kept: not this process's epoch any more.
                    return Err(not_owner(&st));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                shared.error(format!(
                    "partition {partition}: batch at offset {offset} not read back within {} ms",
                    shared.config.ack_timeout_ms
                ));
                shared.drop_serving(partition, epoch, "a batch was not read back in time");
                shared.lock().own_verdicts.remove(&(partition, offset));
                return Err(GateRefusal::Replication);
            }
        }
    }
}

/// Reads every partition of the journal topic from its stored position (the start if none),
/// walks it, keeps verdicts for the gate and appends the valid batches to the local journal,
/// storing the position as it goes ([`cursor`]).
fn run_tailer(
    shared: &Shared,
    consumer: BaseConsumer,
    journal: &JournalWriter,
    mut applied: Applied,
) {
    let mut tpl = TopicPartitionList::new();
    let from: Vec<i64> = shared.lock().walks.iter().map(|w| w.next_offset).collect();
    for p in 0..shared.config.partitions {
        let offset = match from[p as usize] {
            0 => Offset::Beginning,
            o => Offset::Offset(o),
        };
        if let Err(e) = tpl.add_partition_offset(&shared.topic, p as i32, offset) {
            shared.error(format!("tailer: {e}"));
            return;
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        shared.error(format!("tailer: assigning the journal topic: {e}"));
        return;
    }
    while !shared.stop.load(Ordering::Acquire) {
        fault_point(shared, "tailer");
        let mut wait = Duration::from_millis(TAILER_POLL_MS);
        let mut stepped = 0;
        // Up to 1,000 messages per step, then the applies and the wake-ups.
        while stepped < 1000 {
            match consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    shared.error(format!("tailer: {e}"));
                    break;
                }
                Some(Ok(m)) => {
                    let entry = m.payload().and_then(|v| Entry::decode(v).ok());
                    walk_one(shared, m.partition() as u32, m.offset(), entry);
                    stepped += 1;
                    wait = Duration::ZERO;
                }
            }
        }
        apply_pending(shared, journal, &mut applied);
        if let Err(e) = applied.store(journal, false) {
            shared.error(format!("tailer: storing the position: {e}"));
        }
        shared.stop_once_drained();
        shared.walked.notify_all();
        shared.notify.notify_waiters();
    }
    // A clean stop stores the position reached, so a restart re-reads nothing.
    if let Err(e) = applied.store(journal, true) {
        shared.error(format!("tailer: storing the position at stop: {e}"));
    }
}

fn walk_one(shared: &Shared, partition: u32, offset: i64, entry: Option<Entry>) {
    let mut guard = shared.lock();
    let st = &mut *guard;
    let Some(walk) = st.walks.get_mut(partition as usize) else {
        return;
    };
    if offset < walk.next_offset {
        return; // a re-delivery after a consumer reconnect
    }
    let verdict = walk.step(offset, entry.as_ref());
    if let (Some(Entry::Claim(claim)), Verdict::Claimed) = (&entry, &verdict) {
        st.pending[partition as usize].push_back(Pending {
            offset,
            step: Step::Claim(ClaimAt {
                offset,
                claim: claim.clone(),
            }),
        });
    }
    match (&entry, &verdict) {
        // Another node's claim, or one of this node's name from an earlier process.
        (Some(Entry::Claim(claim)), Verdict::Claimed)
            if claim.node != shared.config.node
                || !st.my_epochs.contains(&(partition, claim.epoch)) =>
        {
            // `Local`: a batch still queued under an earlier epoch lands after this claim
            // wherever it lands, so it is void: this node's store forked.
            if st.queue[partition as usize]
                .iter()
                .any(|q| q.batch.epoch < claim.epoch)
            {
                let why = format!(
                    "claim of {} epoch {} at offset {offset}",
                    claim.node, claim.epoch
                );
                st.fork(shared, partition, &why);
            }
            if st.served.remove(&partition).is_some() {
                tracing::warn!(node = %shared.config.node, partition, by = %claim.node, epoch = claim.epoch, "partition claimed by another node; stopped serving");
            }
            if st.assigned.contains_key(&partition) {
                st.taken_at.insert(partition, Instant::now());
            }
        }
        (Some(Entry::Batch(batch)), _) => {
            let own = batch.node == shared.config.node
                && st.my_epochs.contains(&(partition, batch.epoch));
            if own && shared.config.mode == ClusterMode::KafkaDurable {
                st.own_verdicts.insert((partition, offset), verdict.clone());
            }
            if batch.node == shared.config.node {
                local_verdict(shared, st, partition, offset, batch, &verdict);
            }
            if verdict == Verdict::Valid {
                st.pending[partition as usize].push_back(Pending {
                    offset,
                    step: Step::Batch {
                        batch: batch.clone(),
                        own,
                        seen: Instant::now(),
                    },
                });
            }
        }
        _ => {}
    }
}

/// `Local` mode: what a verdict on one of this node's batches means for its queue. Valid: it
/// is on the topic; its outbox entry goes with the next position write. Void because an
/// earlier batch of its stream is missing (a failed produce, resent): resend it after that
/// one. Void otherwise: it can never be valid (a fork).
fn local_verdict(
    shared: &Shared,
    st: &mut State,
    partition: u32,
    offset: i64,
    batch: &Batch,
    verdict: &Verdict,
) {
    let idx = partition as usize;
    // The whole batch, not its stream and first sequence: a batch of no events (a timer
    // correction, a keyed command that decided nothing) has the first sequence of the next
    // event batch of its stream, and a second copy of it on the topic (a produce whose
    // report timed out, sent again) would otherwise take that batch out of the queue, which
    // then never reaches the topic (found by review). A batch round-trips the wire equal.
    let Some(at) = st.queue[idx].iter().position(|q| {
        q.batch.epoch == batch.epoch
            && q.batch.first_sequence == batch.first_sequence
            && q.batch == *batch
    }) else {
        return; // a KafkaDurable batch, or a repeat of one already walked
    };
    match verdict {
        Verdict::Valid => {
            let q = st.queue[idx].remove(at).expect("found above");
            if !q.delivered {
                st.undelivered -= 1; // walked before its delivery report
            }
            st.published[idx].push(q.number);
        }
        Verdict::Void(VoidReason::OutOfSequence { expected_first, .. })
            if *expected_first < batch.first_sequence =>
        {
            let q = &mut st.queue[idx][at];
            q.sent = false;
            if q.delivered {
                q.delivered = false;
                st.undelivered += 1;
            }
        }
        other => {
            let why = format!("its batch at offset {offset} walked {other:?}");
            st.fork(shared, partition, &why);
        }
    }
}

/// Bytes of a journal topic message at most: librdkafka's default `message.max.bytes`, which
/// the producer keeps (a broker's default is 1,048,588). A `Local` batch is bounded far below
/// by its outbox entry (`segments::VALUE_BYTES_MAX`).
const JOURNAL_MESSAGE_BYTES_MAX: usize = 1_000_000;
/// Bytes of a journal message besides its value and key that the producer counts against
/// [`JOURNAL_MESSAGE_BYTES_MAX`]: its headers (kind, node, epoch) and librdkafka's
/// per-message overhead, with room to spare.
const MESSAGE_HEADROOM_BYTES: usize = 4096;

/// Appends the tailer submits in one round at most, before it takes their answers.
const TAILER_APPENDS_IN_FLIGHT_MAX: usize = 1024;

/// One step of a partition that a round of [`apply_pending`] planned, in offset order.
enum Planned {
    /// An effective claim, passed.
    Claim(ClaimAt),
    /// A valid batch the local journal has already.
    Found(Batch),
    /// A valid batch appended by the tailer: the append's answer.
    Appending(
        Batch,
        tokio::sync::oneshot::Receiver<Result<crate::journal::Committed, AppendError>>,
    ),
}

/// One partition's part of a round of [`apply_pending`].
struct Round {
    partition: u32,
    /// Its planned steps, by offset.
    steps: Vec<(i64, Planned)>,
    /// Whether they reach the end of its queue.
    whole: bool,
}

/// Appends the valid batches read to the local journal, per partition in offset order, each
/// when its stream's local head is just before it, and moves the partition's position past
/// every message applied ([`cursor`]: in the same append when the tailer appends). A batch
/// of this process's own claim is left to the entity that wrote it (it appends right after
/// the gate's check) for [`OWN_APPEND_GRACE_MS`].
///
/// A round submits its appends without waiting for each (up to
/// [`TAILER_APPENDS_IN_FLIGHT_MAX`]), then takes the answers in order: the committer puts
/// them in as few group commits as it can, one `fdatasync` each. Appended one at a time, a
/// catch-up was bounded by the disk's sync rate. Each append carries the position past its
/// batch as if the ones before it succeeded; the answers come in submission order, and a
/// failed append stops its partition's round there (nothing after it is taken as applied;
/// the next round finds in the journal what was appended after it). A failure is a conflict
/// — the entity appended its own batch meanwhile, so the journal has it — or a journal that
/// failed, which fails every append after it: so a stored position never passes a batch the
/// journal lacks.
fn apply_pending(shared: &Shared, journal: &JournalWriter, applied: &mut Applied) {
    let mut rounds: Vec<Round> = Vec::new();
    // The head each stream will have once the appends submitted so far are in.
    let mut planned_heads: HashMap<StreamId, u64> = HashMap::new();
    let mut in_flight = 0usize;
    for p in 0..shared.config.partitions {
        let idx = p as usize;
        // Before any position write of `p`: it never moves past a batch whose outbox entry
        // is still stored.
        let published = std::mem::take(&mut shared.lock().published[idx]);
        applied.published(p, published);
        let mut plan = applied.plan(p);
        let mut steps = Vec::new();
        let mut whole = true;
        for i in 0.. {
            let Some((offset, step)) = shared.lock().pending[idx]
                .get(i)
                .map(|f| (f.offset, f.step.clone()))
            else {
                break;
            };
            let (batch, own, seen) = match step {
                Step::Claim(at) => {
                    plan.claim(&at);
                    steps.push((offset, Planned::Claim(at)));
                    continue;
                }
                Step::Batch { batch, own, seen } => (batch, own, seen),
            };
            let stream = batch.stream();
            let head = match planned_heads.get(&stream) {
                Some(head) => *head,
                None => match journal.reader().head(&stream) {
                    Ok(h) => h.sequence,
                    Err(e) => {
                        shared.error(format!("replica: reading the head of {stream}: {e}"));
                        whole = false;
                        break;
                    }
                },
            };
            let done = if batch.events.is_empty() {
                // Only keyspace writes (a timer correction, a keyed command that decided
                // nothing): no head shows them. A `Local` batch of this process was appended
                // before it was produced; a `KafkaDurable` one is appended after the check,
                // and its entity marks it then (`DurableGate::admit`). Counted applied
                // before that, a position written meanwhile would pass writes this journal
                // never got, for good (found by review).
                let entity_wrote = own
                    && (shared.config.mode == ClusterMode::Local
                        || shared.lock().own_appended.contains(&(p, offset)));
                entity_wrote || head >= batch.first_sequence
            } else {
                head >= batch.last_sequence()
            };
            if done {
                plan.batch(offset, &batch);
                steps.push((offset, Planned::Found(batch)));
                continue;
            }
            // The entity appends its own batch in a moment; an earlier batch of the stream
            // is still on its way; or the round is full.
            let wait = (own && seen.elapsed() < Duration::from_millis(OWN_APPEND_GRACE_MS))
                || head + 1 != batch.first_sequence
                || in_flight == TAILER_APPENDS_IN_FLIGHT_MAX;
            if wait {
                whole = false;
                break;
            }
            let mut request = match batch.to_request() {
                Ok(r) => r,
                Err(e) => {
                    shared.error(format!("replica: batch of {stream}: {e}"));
                    whole = false;
                    break;
                }
            };
            // The position past this batch, in the same sled batch as its events.
            request
                .extra_writes
                .extend(plan.writes_with(offset, &batch));
            match journal.submit(request) {
                Ok(answer) => {
                    planned_heads.insert(stream, batch.last_sequence());
                    in_flight += 1;
                    steps.push((offset, Planned::Appending(batch, answer)));
                    if own {
                        // Its entity may append it meanwhile, and this append then fails
                        // with a conflict. An append planned after it would still succeed,
                        // storing a position past it without the writes this one carried
                        // (its stream's head, published outbox entries): after a crash the
                        // resumed walk would void that stream's next batch (found by
                        // review). So it is the partition's last append of the round.
                        whole = false;
                        break;
                    }
                }
                Err(e) => {
                    shared.error(format!("replica: appending a batch of {stream}: {e}"));
                    whole = false;
                    break;
                }
            }
        }
        rounds.push(Round {
            partition: p,
            steps,
            whole,
        });
    }
    for Round {
        partition: p,
        steps,
        whole,
    } in rounds
    {
        let idx = p as usize;
        // Taken in order, up to the first failed append (whose successors are still waited
        // for, so that the round ends with nothing of it in flight).
        let mut applying = true;
        for (offset, planned) in steps {
            let applies = match planned {
                Planned::Claim(at) => {
                    if applying {
                        applied.claim(p, &at);
                    }
                    true
                }
                Planned::Found(batch) => {
                    if applying {
                        applied.batch(p, offset, &batch);
                    }
                    true
                }
                Planned::Appending(batch, answer) => {
                    let answer = answer
                        .blocking_recv()
                        .unwrap_or_else(|_| Err(AppendError::Storage(StorageError::Closed)));
                    match answer {
                        Ok(_) => {
                            if applying {
                                applied.appended(p, offset, &batch);
                            }
                            true
                        }
                        // The entity appended it meanwhile; the next round sees that.
                        Err(AppendError::Conflict { .. }) => false,
                        Err(e) => {
                            let stream = batch.stream();
                            shared.error(format!("replica: appending a batch of {stream}: {e}"));
                            false
                        }
                    }
                }
            };
            applying &= applies;
            if applying {
                let mut st = shared.lock();
                st.pending[idx].pop_front();
                st.own_appended.remove(&(p, offset));
            }
        }
        if applying && whole {
            // Every message below the walk's position is applied or void.
            let st = shared.lock();
            if st.pending[idx].is_empty() {
                applied.walked_to(p, st.walks[idx].next_offset);
            }
        }
    }
}

/// Takes over the partitions assigned and not served, one at a time.
fn run_claimer(shared: &Shared, producer: &FutureProducer, handle: &tokio::runtime::Handle) {
    let reclaim_after = Duration::from_millis(shared.config.reclaim_after_ms);
    while !shared.stop.load(Ordering::Acquire) {
        let todo: Vec<u32> = {
            let st = shared.lock();
            let mut todo: Vec<u32> = st
                .assigned
                .keys()
                .filter(|p| !st.served.contains_key(p))
                // `Local`: a new claim would void the batches still queued under the old one
                // (published after a restart before claiming again); a forked partition is
                // refused.
                .filter(|p| st.queue[**p as usize].is_empty() && !st.forked.contains_key(p))
                // Without a running lease a claim could not be served; a node that leaves,
                // or stopped on its own (a fork drains before it stops), claims nothing.
                .filter(|_| st.leased() && !st.leaving && st.failed.is_none())
                .filter(|p| {
                    st.taken_at
                        .get(p)
                        .is_none_or(|t| t.elapsed() >= reclaim_after)
                })
                .copied()
                .collect();
            todo.sort_unstable();
            todo
        };
        if todo.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        for p in todo {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if let Err(why) = take_over(shared, producer, handle, p) {
                shared.error(format!("takeover of partition {p}: {why}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Catch up with `p`, claim it, read up to the claim, check it is the latest, wait for the
/// local journal to hold every valid batch before it, serve.
fn take_over(
    shared: &Shared,
    producer: &FutureProducer,
    handle: &tokio::runtime::Handle,
    p: u32,
) -> Result<(), String> {
    use rdkafka::producer::Producer as _;
    let timeout = shared.config.kafka.connection_timeout + shared.config.kafka.request_timeout;
    let catch_up = Duration::from_millis(shared.config.catch_up_timeout_ms);
    let (_, high) = producer
        .client()
        .fetch_watermarks(&shared.topic, p as i32, timeout)
        .map_err(|e| format!("reading the end offset: {e}"))?;
    let idx = p as usize;
    if !shared.wait_until(catch_up, |st| {
        st.walks[idx].next_offset >= high && st.pending[idx].is_empty()
    }) {
        return Err(format!("not caught up with offset {high} in time"));
    }
    let epoch = {
        let mut st = shared.lock();
        if !st.assigned.contains_key(&p) {
            return Ok(()); // revoked meanwhile
        }
        let epoch = st.walks[idx].highest_epoch() + 1;
        st.my_epochs.insert((p, epoch));
        epoch
    };
    let entry = Entry::Claim(Claim {
        node: shared.config.node.clone(),
        endpoint: shared.config.endpoint.clone(),
        epoch,
    });
    let value = entry.encode();
    let record = FutureRecord::to(&shared.topic)
        .partition(p as i32)
        .key(shared.config.node.as_bytes())
        .payload(&value)
        .headers(headers(&entry));
    let offset = handle
        .block_on(producer.send(record, Timeout::After(timeout)))
        .map_err(|(e, _)| format!("producing the claim: {e}"))?
        .offset;
    if !shared.wait_until(catch_up, |st| {
        st.walks[idx].next_offset > offset && st.pending[idx].is_empty()
    }) {
        return Err(format!("claim at offset {offset} not read back in time"));
    }
    let mut st = shared.lock();
    let latest = st.walks[idx].latest_claim().cloned();
    match latest {
        Some(ClaimAt { offset: o, claim }) if o == offset && claim.epoch == epoch => {
            if !st.assigned.contains_key(&p) || st.leaving || st.failed.is_some() {
                // Revoked, or the node leaves or stopped meanwhile: the next owner claims
                // over this one.
                return Ok(());
            }
            let took_ms = st.assigned[&p].elapsed().as_millis() as u64;
            st.served.insert(p, epoch);
            st.taken_at.remove(&p);
            st.takeovers.push(Takeover {
                partition: p,
                epoch,
                took_ms,
            });
            tracing::info!(node = %shared.config.node, partition = p, epoch, took_ms, "serving");
            Ok(())
        }
        other => Err(format!(
            "claim epoch {epoch} at offset {offset} lost to {:?}",
            other.map(|c| (c.claim.node, c.claim.epoch, c.offset))
        )),
    }
}
