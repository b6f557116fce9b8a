//! Errors, one `#[non_exhaustive]` enum per operation (as redb draws them), with typed fields
//! and `#[source]` causes:
//!
//! | operation | error |
//! |---|---|
//! | opening a journal | [`OpenError`] |
//! | reading (history, streams, snapshots, stats) | [`StorageError`] |
//! | loading an aggregate's state (recovery, state at a sequence) | [`LoadError`] |
//! | appending to the journal | [`AppendError`] |
//! | executing a command, reading an aggregate's live state | [`CommandError`] |
//! | opening and shutting down an engine | [`EngineError`] |
//!
//! [`Error`] is the umbrella with a `From` for each, and [`Result`] its alias. Within each,
//! cqrs-es's split holds: a domain rejection (don't retry), a conflict, overload or an
//! unavailable actor (retry), a storage fault or a bug (log, alert).

use crate::journal::RecordError;
use evershard_model::{CodecError, StreamId, StreamIdError};
use std::path::PathBuf;
use std::sync::Arc;

/// `Result` with evershard's umbrella [`Error`] by default.
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// An error of sled, the storage engine under the journal. Opaque: sled's types are not part
/// of evershard's API; the error is kept as the [`source`](std::error::Error::source).
#[derive(Clone)]
pub struct SledError(Arc<sled::Error>);

impl SledError {
    pub(crate) fn new(e: sled::Error) -> Self {
        SledError(Arc::new(e))
    }
}

impl std::fmt::Debug for SledError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for SledError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SledError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What is wrong with stored data: the cause inside [`StorageError::Corrupt`]. (Its larger
/// fields are boxed so that every `Result` carrying a [`StorageError`] stays small.)
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The record's bytes fail their checks (length, format, CRC, fields).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record is intact but says it belongs elsewhere (copied or moved under this key).
    #[error("record says {found}#{found_sequence}, stored under another key")]
    Misplaced {
        found: Box<StreamId>,
        found_sequence: u64,
    },
    /// The record's `prev_hash` is not the SHA-256 of the stream's record before it.
    #[error("hash chain broken: previous-record hash does not match")]
    HashChain,
    /// A sequence is missing: the next stored one is `found`.
    #[error("gap: next stored sequence is {found}")]
    Gap { found: u64 },
    /// The stream's records end before its head.
    #[error("stream ends at {last}, head says {head}")]
    Truncated { last: u64, head: u64 },
    /// The payload does not decode as the aggregate's event (or its upcaster refused it).
    #[error("payload of {event_type} {event_version}: {source}")]
    Payload {
        event_type: Box<str>,
        event_version: Box<str>,
        #[source]
        source: Box<CodecError>,
    },
    /// The aggregate's `decode_event` (an upcaster) panicked on the record.
    #[error("decoding {event_type} {event_version} panicked")]
    DecodePanicked {
        event_type: Box<str>,
        event_version: Box<str>,
    },
    /// The aggregate's `apply` panicked on the event: the state cannot be rebuilt.
    #[error("apply panicked on this event")]
    ApplyPanicked,
    /// A stored key does not parse.
    #[error("malformed {keyspace} key")]
    MalformedKey { keyspace: &'static str },
    /// A global index entry does not parse.
    #[error("malformed global index entry")]
    MalformedGlobalEntry,
    /// The store's format marker is not evershard's.
    #[error("not an evershard journal (format marker {found:?})")]
    UnknownStoreFormat { found: Option<String> },
    /// The record read at a global position says it is at another: the global index (sled)
    /// or the log's frames disagree with the records.
    #[error("record at global position {position} says it is at {found}")]
    GlobalOrder { position: u64, found: u64 },
    /// A topic index entry of one partition points at an event whose aggregate hashes to
    /// another.
    #[error(
        "topic {topic} partition {partition}: the index points at an event of partition {found}"
    )]
    TopicPartition {
        topic: Box<str>,
        partition: u32,
        found: u32,
    },
    /// The record a test hook or an index points at does not exist.
    #[error("no such record")]
    MissingRecord,
    /// An encrypted payload does not open with its data key: the ciphertext belongs to
    /// another record, or its bytes were altered.
    #[error("the encrypted payload does not open with its data key: moved from another record, or altered")]
    Undecryptable,
    /// sled itself reports corruption of its files.
    #[error("sled reports corruption: {0}")]
    Sled(#[source] SledError),
    /// The segment log's frames or a stream's pointers fail their checks (the file, offset
    /// or position and the check, in words).
    #[error("segment log: {0}")]
    Log(Box<str>),
}

/// A fault met while reading the journal, or the storage cause of a failed write.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("I/O error: {0}")]
    Io(#[source] Arc<std::io::Error>),
    #[error("sled error: {0}")]
    Sled(#[source] SledError),
    /// Stored data fails its checks. `stream` is `None` for store-level data (index, keys).
    #[error("corrupt data{}{}: {cause}", stream.as_ref().map(|s| format!(" in {s}")).unwrap_or_default(), sequence.map(|q| format!(" at sequence {q}")).unwrap_or_default())]
    Corrupt {
        stream: Option<StreamId>,
        sequence: Option<u64>,
        #[source]
        cause: Corruption,
    },
    #[error(
        "the journal refuses writes after an earlier write or flush failure; reopen the store"
    )]
    Poisoned,
    /// The journal was closed (the engine shut down): reopen the store.
    #[error("the journal is closed")]
    Closed,
    /// `close` waited `waited_ms` for the committer's last sync and gave up: sled 0.34's
    /// flush can wait forever for a log buffer no thread writes (spacejam/sled#1412). The
    /// one cause seen here, a buffer that fills a 16 MiB segment exactly, is kept away by
    /// the writer's flushes every 20 ms (`segments::SledRoller`); this bound stays for any
    /// other. What was acknowledged is durable (in durable mode its sync had returned); the
    /// store stays locked while this process lives, and a later `close` waits again.
    #[error("closing the journal: its last sync did not finish within {waited_ms} ms (sled's flush; spacejam/sled#1412); the store stays locked until this process exits")]
    CloseStalled { waited_ms: u64 },
    /// The operation does not read the segment log yet: the store keeps its events there
    /// (`WritePath::Log`), and this reader still knows only the sled layout
    /// (docs/design.md, "The next write path", increments 3 and 4).
    #[error("{what} does not read stores on the segment log yet (docs/design.md, \"The next write path\")")]
    NotOnLog { what: &'static str },
    /// A snapshot larger than `evershard_snapshots::SNAPSHOT_BYTES_MAX` was not written
    /// (one above the journal's value bound is stored in parts, each within it, so that no
    /// tree node outgrows sled's blob threshold: docs/design.md, "Snapshots in parts").
    /// Nothing is lost: recovery starts from an older snapshot and replays the events after.
    #[error(
        "a snapshot of {bytes} bytes exceeds {max}; not written (recovery replays the events)"
    )]
    SnapshotTooLarge { bytes: usize, max: usize },
    /// The payload's data subject was forgotten (`Engine::forget_subject`): its data key is
    /// destroyed and the payload can never be read again. The record's metadata stands and
    /// the chain still verifies.
    #[error("the payload of {stream} at sequence {sequence} is erased (its data key {key_id} was destroyed)")]
    Erased {
        stream: StreamId,
        sequence: u64,
        key_id: uuid::Uuid,
    },
    /// The payload is encrypted and its data key cannot be had: no master key configured,
    /// or the wrong one (docs/security.md).
    #[error("cannot open the payload{}{}: {source}", stream.as_ref().map(|s| format!(" of {s}")).unwrap_or_default(), sequence.map(|q| format!(" at sequence {q}")).unwrap_or_default())]
    Key {
        stream: Option<StreamId>,
        sequence: Option<u64>,
        #[source]
        source: crate::crypto::KeyError,
    },
}

impl StorageError {
    /// A corruption of one stream at one sequence.
    pub(crate) fn corrupt(stream: &StreamId, sequence: u64, cause: impl Into<Corruption>) -> Self {
        StorageError::Corrupt {
            stream: Some(stream.clone()),
            sequence: Some(sequence),
            cause: cause.into(),
        }
    }

    /// A corruption of store-level data.
    pub(crate) fn corrupt_store(cause: Corruption) -> Self {
        StorageError::Corrupt {
            stream: None,
            sequence: None,
            cause,
        }
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(Arc::new(plain_io_error(e)))
    }
}

/// `text` with each Rust debug dump of an OS error in it (`Os { code: 28, kind: StorageFull,
/// message: "No space left on device" }`, as sled 0.34 prints its rewrapped I/O errors)
/// replaced by the OS error's own words ("No space left on device (os error 28)").
pub(crate) fn plain_message(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("Os { code: ") {
        let after = &rest[start..];
        let (Some(end), Some(code)) = (
            after.find('}'),
            after["Os { code: ".len()..]
                .split(',')
                .next()
                .and_then(|c| c.trim().parse::<i32>().ok()),
        ) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&std::io::Error::from_raw_os_error(code).to_string());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// sled 0.34 rewraps some OS errors as `io::Error::new(kind, format!("{:?}", e))`, whose
/// message is Rust's debug dump (`Os { code: 28, kind: StorageFull, message: "No space left
/// on device" }`). This turns such an error back into the OS error it dumps, which prints as
/// "No space left on device (os error 28)"; any other error is returned as it is.
pub(crate) fn plain_io_error(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error().is_some() {
        return e;
    }
    let text = e.to_string();
    let code = text
        .strip_prefix("Os { code: ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|code| code.trim().parse::<i32>().ok());
    match code {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => e,
    }
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StorageError::Io(Arc::new(plain_io_error(io))),
            corruption @ sled::Error::Corruption { .. } => {
                StorageError::corrupt_store(Corruption::Sled(SledError::new(corruption)))
            }
            other => StorageError::Sled(SledError::new(other)),
        }
    }
}

impl From<crate::journal::seglog::SegLogError> for StorageError {
    fn from(e: crate::journal::seglog::SegLogError) -> Self {
        use crate::journal::seglog::SegLogError;
        match e {
            SegLogError::Io { path, source } => StorageError::Io(Arc::new(std::io::Error::new(
                source.kind(),
                format!("{}: {}", path.display(), plain_io_error(source)),
            ))),
            other => StorageError::corrupt_store(Corruption::Log(other.to_string().into())),
        }
    }
}

impl From<crate::journal::logindex::LogIndexError> for StorageError {
    fn from(e: crate::journal::logindex::LogIndexError) -> Self {
        use crate::journal::logindex::LogIndexError;
        match e {
            LogIndexError::Log(e) => e.into(),
            LogIndexError::Sled(e) => e.into(),
            LogIndexError::Record { source, .. } => {
                StorageError::corrupt_store(Corruption::Record(source))
            }
            LogIndexError::HashChain {
                stream, sequence, ..
            } => StorageError::corrupt(&stream, sequence, Corruption::HashChain),
            LogIndexError::Damaged {
                stream,
                sequence,
                source,
                ..
            } => StorageError::corrupt(&stream, sequence, Corruption::Record(source)),
            LogIndexError::Chain { ref stream, .. } => StorageError::Corrupt {
                stream: Some(stream.clone()),
                sequence: None,
                cause: Corruption::Log(e.to_string().into()),
            },
            other => StorageError::corrupt_store(Corruption::Log(other.to_string().into())),
        }
    }
}

/// Why a journal could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process — or another open journal in this process — holds the store's lock.
    #[error("the store at {} is locked by another process (is an engine running on it?)", dir.display())]
    Locked { dir: PathBuf },
    /// A store on the segment log whose sled lacks the writes of its last frames (a crash
    /// came before sled held them; the next writable open re-applies them). A reader, which
    /// must not write the store, reads a private copy with them applied; this error says
    /// that no copy could be made.
    #[error("the store at {} needs the writes of its last log frames re-applied (the next writable open does it)", dir.display())]
    WritesPending { dir: PathBuf },
    /// A read-only open found no store.
    #[error("no evershard store at {}", dir.display())]
    NotFound { dir: PathBuf },
    /// The directory holds something other than an evershard store (another sled database,
    /// stray files, a `db` that is not a file): nothing was opened or written there. `found`
    /// says what, in a few words.
    #[error("{} is not an evershard store: it holds {found}", dir.display())]
    NotAStore { dir: PathBuf, found: String },
    /// sled refused its settings file `conf` as damaged. It holds no data, only sled's
    /// version and the store's segment size, which evershard judges from the log when `conf`
    /// is missing (stores differ: 512 KiB before evershard chose 16 MiB; see
    /// `docs/design.md`), so a store opens again without it.
    #[error(
        "the store at {} has a damaged sled settings file `conf` (its events are not affected): \
         move it out of the store (evershard writes a new one, with the segment size the \
         store's log was written with), then retry",
        dir.display()
    )]
    DamagedConf { dir: PathBuf },
    /// sled refused the store as corrupt because its snapshot file is damaged: `files` are
    /// sled's `snap.*` files (a cache of sled's page table, holding no event), and a copy of
    /// the store without them reads clean — nothing is lost. A read-only open changes
    /// nothing and says the step; a writer's open moves them aside itself. `moves` pairs
    /// each file with the name to move it to.
    #[error(
        "the store at {} has a damaged sled snapshot file {} (a cache of sled's page table, \
         no event is in it); a copy of the store without it reads clean, so nothing is lost: \
         move it aside ({}) and retry — opening the store for writing does this itself",
        dir.display(),
        moves.iter().map(|(f, _)| format!("`{}`", f.display())).collect::<Vec<_>>().join(", "),
        moves.iter().map(|(f, to)| format!("mv {} {}", f.display(), to.display())).collect::<Vec<_>>().join("; ")
    )]
    DamagedSnapshotFile {
        dir: PathBuf,
        moves: Vec<(PathBuf, PathBuf)>,
    },
    #[error("could not open the store at {}: {source}", dir.display())]
    Storage {
        dir: PathBuf,
        #[source]
        source: Box<StorageError>,
    },
    /// The directory is a checkpoint (`Engine::checkpoint`): a copy of another store at a
    /// global position, for reading. Writing to it would fork that store's history.
    #[error(
        "{} is a read-only checkpoint of {} at global position {cut_position}: \
         read it with the read-only commands; to write, open the store it was taken from",
        dir.display(),
        source_dir.display()
    )]
    Checkpoint {
        dir: PathBuf,
        source_dir: PathBuf,
        cut_position: u64,
    },
    /// A checkpoint whose copy never finished (the process taking it stopped midway).
    #[error(
        "{} is an unfinished checkpoint of {} (the copy stopped midway): delete it and take \
         the checkpoint again",
        dir.display(),
        source_dir.display()
    )]
    IncompleteCheckpoint { dir: PathBuf, source_dir: PathBuf },
}

/// Why `Engine::checkpoint` took no checkpoint. The live store is never changed by a
/// checkpoint; a destination directory the attempt created is removed again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The destination is unusable: not empty, the live store itself, or inside it.
    #[error("cannot take a checkpoint into {}: {reason}", dir.display())]
    Destination { dir: PathBuf, reason: String },
    /// A background follower (the topic indexer or the Merkle tree maintainer) did not
    /// reach the cut in time, so its keyspace could not be copied consistently. Its last
    /// error, if any, is in the engine's health and logs.
    #[error(
        "the {follower} covers global position {covered}, behind the checkpoint's cut \
         {cut_position}, and did not catch up within {waited_ms} ms"
    )]
    FollowerBehind {
        follower: &'static str,
        covered: u64,
        cut_position: u64,
        waited_ms: u64,
    },
    /// Reading the live store failed (it may be poisoned or closed).
    #[error("could not read the live store: {0}")]
    Source(#[source] Box<StorageError>),
    /// Creating the destination store failed.
    #[error(transparent)]
    Create(#[from] OpenError),
    /// Writing or syncing the destination failed (for example, its disk is full).
    #[error("could not write the checkpoint at {}: {source}", dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: Box<StorageError>,
    },
}

impl OpenError {
    pub(crate) fn storage(dir: &std::path::Path, source: impl Into<StorageError>) -> Self {
        OpenError::Storage {
            dir: dir.to_path_buf(),
            source: Box::new(source.into()),
        }
    }
}

/// Why an append request is malformed (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRequest {
    #[error(transparent)]
    Stream(#[from] StreamIdError),
    #[error("{count} events in one append; at most {max}")]
    TooManyEvents { count: usize, max: usize },
    #[error("payload of {bytes} bytes exceeds {max}")]
    PayloadTooLarge { bytes: usize, max: usize },
    #[error("a record string exceeds {max} bytes")]
    StringTooLong { max: usize },
    #[error("{count} compliance flags in an audit context; at most {max}")]
    TooManyComplianceFlags { count: usize, max: usize },
    #[error("extra writes may only target the outbox, timer or idempotency keyspaces")]
    ForbiddenKeyspace,
    /// An idempotency write that is not a record under its `i` key (as
    /// `keyspace_writes::idempotency` makes it), or a removal: the sweep removes records.
    #[error("an idempotency write must put a well-formed record under its `i` key")]
    MalformedIdempotencyWrite,
    /// An extra write's key or value exceeds the journal's bounds (which keep sled from
    /// writing blob files; see `docs/design.md`).
    #[error("an extra write of a {key_bytes}-byte key and a {value_bytes}-byte value exceeds {key_max} and {value_max}")]
    WriteTooLarge {
        key_bytes: usize,
        value_bytes: usize,
        key_max: usize,
        value_max: usize,
    },
    /// Cluster mode: the command's batch would be a message of `bytes` on the journal
    /// topic, more than the producer sends (`max`): it can never be replicated.
    #[error("the command's batch is a {bytes}-byte message on the journal topic; at most {max}")]
    ReplicatedBatchTooLarge { bytes: usize, max: usize },
}

/// Why an append was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The stream moved since the caller read it. Retry after reloading.
    #[error("version conflict on {stream}: expected version {expected}, stream is at {actual}")]
    Conflict {
        stream: StreamId,
        expected: u64,
        actual: u64,
    },
    #[error("invalid append: {0}")]
    InvalidRequest(#[from] InvalidRequest),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Sealed events decided on a state read before a data subject was forgotten: nothing
    /// was written (that state may hold the forgotten data). Reload and decide again.
    #[error("a data subject was forgotten since the state of {stream} was read; reload and decide again")]
    KeysChanged { stream: StreamId },
}

/// Why an aggregate's state could not be loaded from the journal.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A record, the hash chain or a payload fails its checks, or `apply` panicked.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The loaded state breaks one of the aggregate's invariants: committed events that
    /// `decide` should never have produced (a bug). Nothing may act on this state.
    #[error("{stream} breaks an invariant at sequence {sequence}: {invariant}")]
    InvariantViolated {
        stream: StreamId,
        invariant: String,
        sequence: u64,
    },
}

/// Why an aggregate's actor could not take a command (retryable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// The actor could not be started.
    #[error("its actor could not start")]
    StartFailed,
    /// The actor stopped (it failed, or was passivated) before it answered.
    #[error("its actor stopped before answering")]
    Stopped,
    /// A data subject was being forgotten while the command ran (its events would be sealed
    /// with a key the erasure does not destroy, or were decided on a state read before it);
    /// nothing was written. A retry decides on the state as the erasure left it.
    #[error("a data subject was being forgotten while it ran")]
    SubjectForgotten,
    /// Cluster mode: the batch could not be replicated to the journal topic and checked in
    /// time; it was not acknowledged (it may still land on the topic, unacknowledged).
    #[error("its batch could not be replicated in time")]
    ReplicationFailed,
    /// Cluster mode: the batch cannot be replicated (a sealed payload; encryption at rest
    /// is not built for cluster mode).
    #[error("its batch cannot be replicated (sealed payloads are not supported in cluster mode)")]
    NotReplicable,
    /// Cluster mode: the engine was opened to join a cluster (`EngineBuilder::joins_cluster`)
    /// and has not joined yet.
    #[error("this node has not joined its cluster yet")]
    NotJoined,
    /// Cluster `Local` mode: the node already holds its `replication_lag_max_batches` of
    /// acknowledged batches not yet on the journal topic (the broker is slow or down).
    /// Nothing was written; retry once the lag falls.
    #[error(
        "the node's replication lag is at its bound ({batches} batches not on the journal topic)"
    )]
    ReplicationLagging { batches: usize },
    /// Cluster `Local` mode: batches this node acknowledged in `partition` were voided by
    /// another node's claim (the node's store forked from the journal topic). The node
    /// refuses the partition until its store is rebuilt (docs/scale-out.md); another node
    /// may serve it.
    #[error("partition {partition} forked on this node: its store must be rebuilt")]
    Forked { partition: u32 },
}

/// Why a command was not executed (or a live state not read). `E` is the domain error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error> {
    /// The domain refused the command; nothing was written. Do not retry unchanged.
    #[error("rejected: {0}")]
    Rejected(E),
    /// Another writer appended to the same stream first. Retry.
    #[error("version conflict on {stream}: expected version {expected}, stream is at {actual}")]
    Conflict {
        stream: StreamId,
        expected: u64,
        actual: u64,
    },
    /// A mailbox bound was reached; the command was not queued. Retry later.
    #[error("overloaded: {what} holds {limit} commands already")]
    Overloaded { what: &'static str, limit: usize },
    /// `decide` panicked on this command; nothing was written. A bug: the same command will
    /// panic again. The aggregate recovers from the journal for its next command.
    #[error("the handler of {stream} panicked: {message}")]
    HandlerPanicked { stream: StreamId, message: String },
    /// The aggregate's actor is stopping or could not start; the command was not handled,
    /// nothing was written. Retry.
    #[error("{stream} is unavailable: {reason}")]
    Unavailable {
        stream: StreamId,
        reason: UnavailableReason,
    },
    /// The aggregate's state breaks an invariant (committed events that `decide` should never
    /// have produced, at `sequence`). It refuses every command and state read until the code
    /// is fixed; the committed events stand.
    #[error("{stream} breaks an invariant at sequence {sequence}: {invariant}; it refuses commands until fixed")]
    InvariantViolated {
        stream: StreamId,
        invariant: String,
        sequence: u64,
    },
    /// The idempotency key was used within its retention window for another command body
    /// (or another aggregate of the type). Nothing was executed or written. Do not retry
    /// with this key: use a new key for a new command.
    #[error("idempotency key {key} of {aggregate_type} was used for another command")]
    IdempotencyConflict {
        aggregate_type: &'static str,
        key: uuid::Uuid,
    },
    #[error("invalid command: {0}")]
    Invalid(#[source] InvalidRequest),
    #[error("aggregate type {0} is not registered with this engine")]
    NotRegistered(&'static str),
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The aggregate's data subject was forgotten: its payloads are erased, so it has no
    /// state to decide on. It refuses every command and state read, for good.
    #[error("{stream} is erased: its data subject was forgotten")]
    Erased { stream: StreamId },
    /// Cluster mode: this node does not own (or no longer owns) the aggregate's partition;
    /// nothing took effect. Retry at `owner` (the node of the partition's latest claim, when
    /// known).
    #[error("{stream} is not served here: partition {partition} is owned by {}", owner.as_deref().unwrap_or("no known node"))]
    NotOwner {
        stream: StreamId,
        partition: u32,
        owner: Option<String>,
    },
    #[error(transparent)]
    Storage(StorageError),
}

impl<E: std::error::Error> CommandError<E> {
    /// True for errors where the same command may succeed when retried: `Conflict`,
    /// `Overloaded`, `Unavailable` and `NotOwner`. Never for `HandlerPanicked` (a bug) or
    /// `InvariantViolated`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CommandError::Conflict { .. }
                | CommandError::Overloaded { .. }
                | CommandError::Unavailable { .. }
                | CommandError::NotOwner { .. }
        )
    }

    /// A gate's refusal of `stream`'s batch, as the command's error.
    pub(crate) fn from_gate(stream: &StreamId, refusal: crate::gate::GateRefusal) -> Self {
        use crate::gate::GateRefusal;
        match refusal {
            GateRefusal::NotOwner { partition, owner } => CommandError::NotOwner {
                stream: stream.clone(),
                partition,
                owner,
            },
            GateRefusal::Behind { expected, actual } => CommandError::Conflict {
                stream: stream.clone(),
                expected,
                actual,
            },
            GateRefusal::Replication => CommandError::Unavailable {
                stream: stream.clone(),
                reason: UnavailableReason::ReplicationFailed,
            },
            GateRefusal::Unsupported => CommandError::Unavailable {
                stream: stream.clone(),
                reason: UnavailableReason::NotReplicable,
            },
            GateRefusal::Lagging { batches } => CommandError::Unavailable {
                stream: stream.clone(),
                reason: UnavailableReason::ReplicationLagging { batches },
            },
            GateRefusal::TooLarge { bytes, max } => {
                CommandError::Invalid(InvalidRequest::ReplicatedBatchTooLarge { bytes, max })
            }
            GateRefusal::Forked { partition } => CommandError::Unavailable {
                stream: stream.clone(),
                reason: UnavailableReason::Forked { partition },
            },
        }
    }

    pub(crate) fn from_append(e: AppendError) -> Self {
        match e {
            AppendError::Conflict {
                stream,
                expected,
                actual,
            } => CommandError::Conflict {
                stream,
                expected,
                actual,
            },
            AppendError::InvalidRequest(m) => CommandError::Invalid(m),
            AppendError::Storage(StorageError::Erased { stream, .. }) => {
                CommandError::Erased { stream }
            }
            AppendError::Storage(s) => CommandError::Storage(s),
            AppendError::KeysChanged { stream } => CommandError::Unavailable {
                stream,
                reason: UnavailableReason::SubjectForgotten,
            },
        }
    }

    pub(crate) fn from_load(e: LoadError) -> Self {
        match e {
            LoadError::Storage(StorageError::Erased { stream, .. }) => {
                CommandError::Erased { stream }
            }
            LoadError::Storage(s) => CommandError::Storage(s),
            LoadError::InvariantViolated {
                stream,
                invariant,
                sequence,
            } => CommandError::InvariantViolated {
                stream,
                invariant,
                sequence,
            },
        }
    }
}

/// Why [`crate::Engine::forget_subject`] did not forget a subject.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ForgetError {
    /// The store holds no data key for the subject: nothing of it was ever encrypted, or it
    /// was forgotten already.
    #[error(
        "no data key for this subject: nothing of it is encrypted, or it was forgotten already"
    )]
    UnknownSubject,
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// An engine setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The store was written with encryption at rest, sensitive types are registered, and
    /// no key provider was given: opened anyway, their new payloads would be stored in
    /// plain beside the sealed ones, and no erasure could reach them.
    #[error(
        "the store holds encrypted data and sensitive types {types:?} are registered, but no key \
         provider was given (EngineBuilder::key_provider; to store them in plain from now on, \
         say so with EngineBuilder::sensitive::<T>(false))"
    )]
    KeyProviderRequired { types: Vec<&'static str> },
    #[error("shards must be at least 1")]
    NoShards,
    #[error("mailbox limits must be at least 1")]
    ZeroMailbox,
}

/// Errors of opening, querying and shutting down an engine (not of one command).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("aggregate type {0} is not registered with this engine")]
    NotRegistered(&'static str),
    #[error("aggregate type {0} is registered twice")]
    DuplicateType(&'static str),
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// An actor or a blocking task could not be started or joined.
    #[error("the actor system failed: {message}")]
    Actor { message: String },
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A topic's stored configuration disagrees with the builder's, or the indexer could not
    /// start.
    #[error(transparent)]
    Topic(#[from] crate::topics::TopicError),
}

/// Every evershard error, for callers that propagate them with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Topic(#[from] crate::topics::TopicError),
    /// A [`CommandError`], with its domain error type erased.
    #[error(transparent)]
    Command(Box<dyn std::error::Error + Send + Sync>),
}

impl<E: std::error::Error + Send + Sync + 'static> From<CommandError<E>> for Error {
    fn from(e: CommandError<E>) -> Self {
        Error::Command(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_dumped_by_sled_prints_as_the_os_error() {
        let dumped = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("{:?}", std::io::Error::from_raw_os_error(28)),
        );
        let err = StorageError::from(sled::Error::Io(dumped));
        let text = err.to_string();
        assert!(text.contains("(os error 28)"), "{text}");
        assert!(!text.contains("Os {"), "{text}");
        let dump = format!("IO error: {:?}", std::io::Error::from_raw_os_error(28));
        assert_eq!(
            plain_message(&dump),
            "IO error: No space left on device (os error 28)"
        );
        let other = StorageError::from(std::io::Error::other("plain words"));
        assert_eq!(other.to_string(), "I/O error: plain words");
    }
}
