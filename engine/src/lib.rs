//! evershard's engine: the sled journal with group commit, snapshots, and aggregates as
//! sharded ractor actors behind one entry type, [`Engine`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # struct ProductStock;
//! use evershard_engine::{Durability, Engine};
//! # /*
//! let engine = Engine::builder("./data")
//!     .register::<ProductStock>()
//!     .durability(Durability::Durable)
//!     .open()
//!     .await?;
//! let events = engine.execute::<ProductStock>("sku-1", command).await?;
//! engine.shutdown().await?;
//! # */
//! # Ok(()) }
//! ```
//!
//! The modules are private; this file is the public surface, re-exported by hand. sled's
//! types appear nowhere in it.

mod audit;
#[cfg(feature = "kafka")]
mod cluster;
/// Encryption at rest: key providers, master keys, erasure receipts (docs/security.md).
pub mod crypto;
mod engine;
mod error;
mod follower;
mod gate;
mod journal;
#[cfg(feature = "kafka")]
mod kafka;
mod publisher;
mod recovery;
mod saga;
mod sharding;
mod snapshots;
mod topics;

// The entry type and its configuration.
/// The running store and its builder.
pub use engine::{Engine, EngineBuilder, DEFAULT_SENSITIVE_TYPES};
/// The aggregate model the engine runs (`Aggregate`, envelopes, codec, testing).
pub use evershard_model as model;
/// Engine-level checks of rules that span aggregate instances.
pub use evershard_model::CommandGuard;
/// Which aggregate instance a stream belongs to.
pub use evershard_model::StreamId;
/// The time `decide` sees.
pub use evershard_model::{Clock, ManualClock, SystemClock};
/// When an append is acknowledged: after fdatasync (the default) or buffered.
pub use journal::Durability;
/// The stable shard of an aggregate instance (FNV-1a of type and id).
pub use sharding::shard_for;
/// Limits and timings of the actor layer (see `EngineBuilder`'s setters).
pub use sharding::ShardingConfig;

// Sagas: process managers driven by consumer groups over the engine's topics.
/// The saga runner (docs/saga.md): observers and a dispatcher, with deterministic step keys.
pub use evershard_model::{step_key, Outbound, Saga};
pub use saga::{
    send_to, BoxFuture as SagaFuture, RejectedStep, SagaBuilder, SagaRunner, SagaSend,
    SagaStartError, Sent, SAGA_GROUP_MEMBERS, SAGA_RETRY, SAGA_SOURCE_PREFIX,
};

// Topics: the journal as the outbox, consumers, subscriptions, the dead-letter topic.
pub use topics::{
    Consumer, ConsumerOptions, DeadLetter, DeadLetterReason, Handler, HandlerError, Health,
    Message, RetryPolicy, StartFrom, Subscription, SubscriptionOptions, TopicCatalog, TopicConfig,
    TopicError, TopicInfo, TopicLog, TopicPayloads, TopicRoute, WireFormat, DLQ_TOPIC,
};

/// Topic details: partitioning (Kafka's murmur2), limits, metrics and lag types, the
/// dead-letter record.
pub mod topic {
    pub use crate::topics::{
        murmur2, partition_for, valid_name, EventMetrics, GroupLag, PartitionLag, TopicMetrics,
        DEFAULT_PARTITIONS, PARTITIONS_MAX, TOPIC_NAME_BYTES_MAX,
    };
    /// The lag of every group on every topic it committed on, from a [`crate::TopicLog`].
    pub fn all_lags(log: &crate::TopicLog) -> Result<Vec<GroupLag>, crate::TopicError> {
        crate::engine::all_lags(log, &log.committed_offsets()?)
    }
}

/// Cluster mode (feature `kafka`, docs/scale-out.md): several engines share the aggregates
/// through the partitions of a Kafka journal topic, with claims fencing old owners.
#[cfg(feature = "kafka")]
pub use cluster::{
    Cluster, ClusterConfig, ClusterError, ClusterHealth, ClusterMode, ClusterStatus, Fork, Orphan,
    Owner, ReplicationLag, Takeover, DEFAULT_CLUSTER_PARTITIONS,
    DEFAULT_REPLICATION_LAG_MAX_BATCHES,
};
/// The Kafka publisher (feature `kafka`): relays the topics to a Kafka cluster, with a
/// cursor per partition in the store and recovery from the broker's last message.
#[cfg(feature = "kafka")]
pub use kafka::{
    KafkaConfig, KafkaError, KafkaPublisher, PublisherLag, PublisherStatus, Sasl, SaslMechanism,
};
/// The journal topic's messages and its validity rule, for readers and auditors of the
/// topic (feature `kafka`).
#[cfg(feature = "kafka")]
pub mod cluster_journal {
    pub use crate::cluster::validity::{ClaimAt, Verdict, VoidReason, Walk};
    pub use crate::cluster::wire::{
        Batch, Claim, Entry, WireError, WireEvent, WireWrite, HEADER_EPOCH, HEADER_KIND,
        HEADER_NODE,
    };
}
/// The Kafka client the publisher is built on (rdkafka 0.39), for code that wants to produce
/// or read exactly like it (`KafkaConfig::producer_config`, `KafkaPublisher::record`).
#[cfg(feature = "kafka")]
pub use rdkafka;

/// A publisher's stored cursor per topic partition (any build: the CLI shows them).
pub use publisher::{publisher_cursors, PublisherCursor, PublisherHealth};
// Digests and proofs: a Merkle tree (RFC 6962 / RFC 9162) over the global log.
/// A tree head, an inclusion proof, a consistency proof, and why one could not be made.
pub use audit::{AuditError, ConsistencyProof, InclusionProof, TreeHead};
/// The full recomputation of the tree that `verify` runs (`Journal::check_tree`).
pub use audit::{NodeMismatch, TreeCheck};

/// The tree's hashing and proof algorithms, pure (no storage): what an offline verifier
/// needs. Leaf = SHA-256(0x00 ‖ SHA-256(record bytes)), node = SHA-256(0x01 ‖ left ‖ right).
pub mod merkle {
    pub use crate::audit::merkle::{
        consistency_path, empty_root, inclusion_path, leaf_hash, node_hash, range_root,
        root_of_leaves, verify_consistency, verify_inclusion, Subtrees,
    };
    pub use crate::audit::JournalTree;
    /// The lowest level whose complete subtrees the maintainer stores (256 leaves).
    pub use crate::journal::merkle::STORED_LEVEL_MIN;
}

// Errors, one per operation, and the umbrella.
pub use error::{
    AppendError, CheckpointError, CommandError, ConfigError, Corruption, EngineError, Error,
    ForgetError, InvalidRequest, LoadError, OpenError, Result, SledError, StorageError,
    UnavailableReason,
};

// Reading the journal.
/// How a record's payload is stored (plain, sealed, opened).
pub use journal::AtRest;
/// The journal's read view (from `Engine::journal` or `Journal::open_read_only`).
pub use journal::Journal;
/// Counts of the store (`Journal::stats`).
pub use journal::JournalStats;
/// What the journal's scans return: a boxed iterator of reads.
pub use journal::Reads;
/// A stream's last sequence and the hash of its last record.
pub use journal::StreamHead;
/// Where a store keeps its events: the sled layout or the segment log.
pub use journal::WritePath;
/// A checkpoint (`Engine::checkpoint`): what one copied, and what a checkpoint store says
/// about itself (`Journal::checkpoint_mark`).
pub use journal::{CheckpointInfo, CheckpointMark};
/// A pending durable timer (`Journal::timers`) and a stored idempotency key
/// (`Journal::idempotency_keys`).
pub use journal::{IdempotencyEntry, PendingTimer};
/// What `Journal::verify` found.
pub use journal::{
    IssueKind, StreamVisitor, VerifyIssue, VerifyOptions, VerifyReport, VerifyScope,
    VisitorFactory, VERIFY_ISSUES_MAX,
};
/// A decoded event record and why bytes are not one.
pub use journal::{Record, RecordError};

/// The on-disk event record: its hash (the chain) and its limits.
pub mod record {
    pub use crate::journal::record::{
        hash, peek_position_and_time, Hash, RecordView, HEADER_BYTES, PAYLOAD_BYTES_MAX,
        RECORD_BYTES_MAX, RECORD_FORMAT_V1, RECORD_STRING_BYTES_MAX, ZERO_HASH,
    };
}

/// sled's segment size and the bounds on every key and value the journal writes, which keep
/// every tree node below sled's blob threshold (docs/design.md, "Writing: group commit and
/// durability").
pub mod segments {
    pub use crate::journal::segments::{
        blob_threshold_bytes, KEY_BYTES_MAX, LEGACY_SEGMENT_BYTES, NODE_BYTES_MAX, SEGMENT_BYTES,
        VALUE_BYTES_MAX,
    };
}

/// Loading aggregates from the journal: typed envelopes, and the state as of a sequence
/// (newest usable snapshot plus the events after it), with the checks recovery makes.
pub mod repository {
    pub use crate::recovery::{decode_record, envelope, load, read_events, Loaded};
}

/// Snapshots: the policy, the record format, and the selection of the snapshot recovery
/// starts from, with a typed reason for each skipped one.
pub mod snapshot {
    pub use crate::snapshots::{
        select, Manifest, Selection, SkipReason, SkippedSnapshot, SnapshotError, SnapshotRecord,
        SNAPSHOT_BYTES_MAX,
    };
}
/// "Every N events, keep the newest K".
pub use snapshots::SnapshotPolicy;

// Writing to the journal directly bypasses `decide`: only tests and benchmarks do it, with
// the `fault-injection` feature (which also brings the hooks that damage records).
/// The writing side of the journal (tests and benchmarks only).
#[cfg(feature = "fault-injection")]
pub use journal::{
    AppendRequest, Committed, JournalConfig, JournalWriter, NewEvent, SyncHold, WriteOp,
    EVENTS_PER_APPEND_MAX,
};

/// The segment log that is to become the journal's write path (docs/design.md, "The next
/// write path"): frames, segments, torn tails (tests and benches only, until it is wired).
#[cfg(feature = "fault-injection")]
pub mod seglog {
    pub use crate::journal::logindex::{
        stored_head, ChainCheck, LogHead, LogIndex, LogIndexError, HEADS,
    };
    pub use crate::journal::seglog::{
        scrub_frames, Frame, FrameRecord, FrameWrite, OpenReport, ScrubbableFrames, SegLogError,
        SegmentLog, FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES, SEGMENT_BYTES, TABLE_EVERY_FRAMES,
    };
}

/// The writes the engine makes for a timer and an idempotency key, for benchmarks that fill
/// the keyspaces through `JournalWriter` without running commands (tests and benches only).
#[cfg(feature = "fault-injection")]
pub mod keyspace_writes {
    use crate::journal::{keys, WriteOp};
    use chrono::{DateTime, Utc};
    use evershard_model::StreamId;

    /// A new timer of `stream` at `deadline`: its `t` entry and `T` reverse entry.
    pub fn timer(stream: &StreamId, deadline: DateTime<Utc>) -> Vec<WriteOp> {
        timer_moved(stream, None, Some(deadline))
    }

    /// The timer of `stream` moved from `from` to `to` (`None`: none): what a commit writes
    /// when it changes the aggregate's next deadline.
    pub fn timer_moved(
        stream: &StreamId,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Vec<WriteOp> {
        crate::sharding::timer_ops(
            stream,
            from.map(|t| t.timestamp_micros()),
            to.map(|t| t.timestamp_micros()),
        )
    }

    /// An idempotency record of `key` (its `i` record, which the committer files in its
    /// group's `I` entry), for a command of
    /// `count` events from `first_sequence` of `stream`, recorded at `recorded_at`.
    pub fn idempotency(
        stream: &StreamId,
        key: &uuid::Uuid,
        recorded_at: DateTime<Utc>,
        first_sequence: u64,
        count: u32,
    ) -> Vec<WriteOp> {
        let record = keys::IdempotencyRecord {
            recorded_at_micros: recorded_at.timestamp_micros(),
            digest: [0; 32],
            aggregate_id: stream.aggregate_id.clone(),
            first_sequence,
            count,
        };
        crate::sharding::idempotency_ops(&stream.aggregate_type, key, &record).to_vec()
    }
}

/// The names of the write path's failpoints (with the `failpoints` feature, for tests that
/// configure them through the `fail` crate). See `engine/tests/failpoints.rs`.
#[cfg(feature = "failpoints")]
pub mod failpoints {
    pub use crate::journal::failpoint::{
        ALL, APPLY_BATCH, BLOB_SYNC, COMMIT_OFFSETS, FDATASYNC, FLUSH, IDEMPOTENCY_SWEEP, SCRUB,
        SNAPSHOT_WRITE, TOPIC_BATCH, TOPIC_BATCH_CURSOR,
    };
}
