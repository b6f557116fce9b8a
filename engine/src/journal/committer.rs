//! Group commit. One thread (the committer) owns every write to the event keyspaces: it
//! drains all queued append requests, checks each one's expected version against the stream
//! heads, builds the records (sequence, global position, hash chain) and writes them with one
//! atomic `apply_batch`. In durable mode it then hands the group's replies to a second thread
//! (the syncer), which runs one `flush` plus one `fdatasync` for everything handed to it so
//! far and only then acknowledges. Many actors' appends thus share one flush, and the CPU
//! work of the next group overlaps the disk wait of the previous one.

use super::deferred;
use super::keyring::SealingKey;
use super::logindex::LogHead;
use super::seglog::{Frame, FrameRecord, FrameWrite};
use super::{
    failpoint, fault, keys, logstore, record, segments, Durability, JournalConfig, Record, Shared,
    StreamHead, StreamId,
};
use crate::error::{AppendError, InvalidRequest, StorageError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fs::File;
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Heads kept in memory before the cache is dropped and reloaded lazily from sled.
const HEAD_CACHE_STREAMS_MAX: usize = 200_000;

/// One event to append; the journal assigns sequence, position and chain hash.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    pub timestamp: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub source: String,
    pub user_id: Option<String>,
    /// Stored in record format 2 (with `audit_context`); `None` keeps format 1.
    pub session_id: Option<Uuid>,
    pub audit_context: Option<evershard_model::AuditContext>,
    pub payload: Vec<u8>,
}

/// A raw write into one of the reserved keyspaces (outbox, timers, idempotency) that must
/// commit atomically with the events of the same request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Remove { key: Vec<u8> },
}

impl WriteOp {
    fn key(&self) -> &[u8] {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Remove { key } => key,
        }
    }
}

/// The events of one command for one stream, plus writes that join the same atomic batch.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendRequest {
    pub stream: StreamId,
    /// The stream's last sequence the events were decided on (0 for a new stream).
    pub expected_version: u64,
    pub events: Vec<NewEvent>,
    pub extra_writes: Vec<WriteOp>,
    /// The payloads are sealed with this data key, for sequences `expected_version + 1..`
    /// (the aggregate type is sensitive: docs/security.md). The committer stores them
    /// flagged encrypted, writes the key's entries while they are not yet durable, and
    /// refuses the request if the key was erased.
    pub(crate) seal: Option<Seal>,
    /// This request records the erasure of these data keys (all of one subject's): from the
    /// moment the committer takes it, no later request may seal with any of them.
    pub(crate) erases: Vec<Uuid>,
    /// Writes into the data-key keyspaces (an erasure's), which `validate` keeps callers from.
    pub(crate) key_writes: Vec<WriteOp>,
    /// Sealed events: the keyring's erasure epoch when the state they were decided on was
    /// read, and the data subject they are sealed for. The committer refuses them
    /// (`AppendError::KeysChanged`) if that subject was erased since: the state may hold its
    /// forgotten data, which must not reach the journal again under any key. Erasures of
    /// other subjects do not matter.
    pub(crate) decided_at: Option<(u64, Vec<String>)>,
    /// An erasure's request: the subject it forgets (its keys are in `erases`).
    pub(crate) erases_subject: Option<String>,
}

/// The data key a request's payloads are sealed with.
#[derive(Clone, Debug)]
pub(crate) struct Seal(pub Arc<SealingKey>);

impl PartialEq for Seal {
    fn eq(&self, other: &Self) -> bool {
        self.0.key.id == other.0.key.id
    }
}

/// Events in one request at most.
pub const EVENTS_PER_APPEND_MAX: usize = 1024;

impl AppendRequest {
    pub fn new(stream: StreamId, expected_version: u64, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected_version,
            events,
            extra_writes: Vec::new(),
            seal: None,
            erases: Vec::new(),
            key_writes: Vec::new(),
            decided_at: None,
            erases_subject: None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), InvalidRequest> {
        if self.events.len() > EVENTS_PER_APPEND_MAX {
            return Err(InvalidRequest::TooManyEvents {
                count: self.events.len(),
                max: EVENTS_PER_APPEND_MAX,
            });
        }
        // Sealing adds exactly its overhead to a payload of at most the limit.
        let sealing = match self.seal {
            Some(_) => crate::crypto::SEAL_OVERHEAD_BYTES,
            None => 0,
        };
        for event in &self.events {
            if event.payload.len() > record::PAYLOAD_BYTES_MAX + sealing {
                return Err(InvalidRequest::PayloadTooLarge {
                    bytes: event.payload.len().saturating_sub(sealing),
                    max: record::PAYLOAD_BYTES_MAX,
                });
            }
            let strings = [&event.event_type, &event.event_version, &event.source];
            if strings
                .into_iter()
                .chain(event.user_id.as_ref())
                .any(|s| s.len() > record::RECORD_STRING_BYTES_MAX)
            {
                return Err(InvalidRequest::StringTooLong {
                    max: record::RECORD_STRING_BYTES_MAX,
                });
            }
            if let Some(audit) = &event.audit_context {
                use evershard_model::AuditContext;
                if audit.compliance_flags.len() > AuditContext::COMPLIANCE_FLAGS_MAX {
                    return Err(InvalidRequest::TooManyComplianceFlags {
                        count: audit.compliance_flags.len(),
                        max: AuditContext::COMPLIANCE_FLAGS_MAX,
                    });
                }
                if audit
                    .compliance_flags
                    .iter()
                    .any(|f| f.len() > AuditContext::COMPLIANCE_FLAG_BYTES_MAX)
                {
                    return Err(InvalidRequest::StringTooLong {
                        max: AuditContext::COMPLIANCE_FLAG_BYTES_MAX,
                    });
                }
                if audit
                    .user_agent
                    .as_ref()
                    .is_some_and(|a| a.len() > record::RECORD_STRING_BYTES_MAX)
                {
                    return Err(InvalidRequest::StringTooLong {
                        max: record::RECORD_STRING_BYTES_MAX,
                    });
                }
            }
        }
        for op in &self.extra_writes {
            match op.key().first() {
                Some(
                    &keys::OUTBOX
                    | &keys::TIMERS
                    | &keys::TIMERS_BY_STREAM
                    | &keys::IDEMPOTENCY
                    | &keys::IDEMPOTENCY_BY_TIME
                    | &keys::CLUSTER,
                ) => {}
                _ => return Err(InvalidRequest::ForbiddenKeyspace),
            }
            // An idempotency write is a record under its `i` key (the committer files it in
            // its group's entry), or the one-key sweep entry requests carried before.
            let idempotency_ok = match (op.key().first(), op) {
                (Some(&keys::IDEMPOTENCY), WriteOp::Put { key, value }) => {
                    keys::parse_idempotency_key(key).is_some()
                        && keys::IdempotencyRecord::decode(value).is_some()
                }
                (Some(&keys::IDEMPOTENCY_BY_TIME), WriteOp::Put { key, value }) => {
                    value.is_empty() && keys::parse_idempotency_by_time_key(key).is_some()
                }
                (Some(&keys::IDEMPOTENCY | &keys::IDEMPOTENCY_BY_TIME), WriteOp::Remove { .. }) => {
                    false
                }
                _ => true,
            };
            if !idempotency_ok {
                return Err(InvalidRequest::MalformedIdempotencyWrite);
            }
            let value_bytes = match op {
                WriteOp::Put { value, .. } => value.len(),
                WriteOp::Remove { .. } => 0,
            };
            if op.key().len() > segments::KEY_BYTES_MAX || value_bytes > segments::VALUE_BYTES_MAX {
                return Err(InvalidRequest::WriteTooLarge {
                    key_bytes: op.key().len(),
                    value_bytes,
                    key_max: segments::KEY_BYTES_MAX,
                    value_max: segments::VALUE_BYTES_MAX,
                });
            }
        }
        Ok(())
    }
}

/// What an acknowledged append wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    /// The stored records, in sequence order (empty for an append of no events).
    pub records: Vec<Record>,
    /// The stream's last sequence after the append.
    pub version: u64,
}

/// Where the answer to one job goes. A reply is always answered: dropped unanswered — by a
/// panic of the committer unwinding (a bug, or a failpoint), or with a job the committer
/// never took — it poisons the journal first if a panic dropped it, then answers with the
/// typed error (`Poisoned`, else `Closed`), so a waiter never reads a closed channel before
/// the journal says why, and never waits for an answer that cannot come.
pub(super) struct ReplyTo<T, E: From<StorageError>> {
    tx: Option<oneshot::Sender<Result<T, E>>>,
    shared: Arc<Shared>,
}

impl<T, E: From<StorageError>> ReplyTo<T, E> {
    pub(super) fn new(tx: oneshot::Sender<Result<T, E>>, shared: Arc<Shared>) -> Self {
        Self {
            tx: Some(tx),
            shared,
        }
    }

    /// Answers; `Err` when the waiter is gone (as `oneshot::Sender::send`).
    pub(super) fn send(mut self, result: Result<T, E>) -> Result<(), Result<T, E>> {
        match self.tx.take() {
            Some(tx) => tx.send(result),
            None => Err(result),
        }
    }
}

impl<T, E: From<StorageError>> Drop for ReplyTo<T, E> {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        if std::thread::panicking() {
            self.shared
                .poison("group commit", &"the committer panicked");
        }
        let _ = tx.send(Err(self.shared.gone().into()));
    }
}

pub(super) enum CommitJob {
    Append {
        request: AppendRequest,
        reply: ReplyTo<Committed, AppendError>,
    },
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    Sync { reply: ReplyTo<(), StorageError> },
    /// Writes of no command (a key rotation's or upgrade's key entries), committed as a
    /// group's writes are — on the segment log in a frame, so that opening re-applies them
    /// in order with the frames' — and answered once synced.
    Writes {
        writes: Vec<WriteOp>,
        reply: ReplyTo<(), StorageError>,
    },
    /// Commit what is queued, sync it, answer the cut (the last global position, durable),
    /// then write nothing until `resume` is dropped or sent to. Appends queue meanwhile.
    /// What `JournalWriter::pause` sends: a checkpoint copies the keyspaces that commands
    /// rewrite (timers, idempotency records, cursors) while no command can move them.
    Pause {
        paused: ReplyTo<u64, StorageError>,
        resume: mpsc::Receiver<()>,
    },
    /// Commit what is queued, sync, acknowledge, and stop the thread.
    Shutdown { reply: ReplyTo<(), StorageError> },
}

pub(super) struct Committer {
    shared: Arc<Shared>,
    /// The committer's own handle on sled, dropped when it stops (so that close can release
    /// the store's lock).
    db: sled::Db,
    config: JournalConfig,
    next_global: u64,
    heads: HashMap<StreamId, CommitHead>,
    syncer: mpsc::Sender<SyncBatch>,
    syncer_thread: Option<std::thread::JoinHandle<()>>,
}

/// A stream's head as the committer builds on it: its last sequence and chain hash, and on
/// the segment log where that record is (its entry's address, or its index in the frame
/// being built, whose address is known once the frame has its place).
#[derive(Clone, Copy, Debug)]
struct CommitHead {
    sequence: u64,
    hash: record::Hash,
    address: u64,
    frame_record: Option<usize>,
}

impl CommitHead {
    const EMPTY: CommitHead = CommitHead {
        sequence: 0,
        hash: record::ZERO_HASH,
        address: 0,
        frame_record: None,
    };
}

/// A group written to the segment log whose sled writes wait for its `fdatasync` (see
/// `logstore`): applied by the syncer, in order, before the group is acknowledged, except
/// its timer writes, which wait in memory for their turn (see `deferred`).
struct LogGroup {
    writes: Vec<FrameWrite>,
    /// The address of the group's frame.
    frame_address: u64,
    /// The address after the group's frame (`m | "log-writes"` once its writes are in).
    writes_cursor: u64,
    seals: Vec<Seal>,
}

/// Work for the syncer: replies to send once everything applied before is on stable storage.
#[derive(Default)]
struct SyncBatch {
    replies: Vec<Reply>,
    syncs: Vec<ReplyTo<(), StorageError>>,
    /// Segment log only: writes of no command (`CommitJob::Writes`), durable with the log's
    /// sync alone (explicit syncs also flush and sync sled).
    written: Vec<ReplyTo<(), StorageError>>,
    shutdown: bool,
    /// The last global position applied before this hand-off: durable once synced.
    applied_through: u64,
    /// Segment log only: the groups' sled writes, to apply after the log's sync.
    log_groups: Vec<LogGroup>,
}

struct Syncer {
    shared: Arc<Shared>,
    db: sled::Db,
    data_file: File,
    /// Blob files already synced, with the length each had when synced (see
    /// `sync_new_blobs`).
    synced_blobs: HashMap<std::ffi::OsString, u64>,
    /// The store's sled segment size, and whether a blob file was already reported for a
    /// store of evershard's size (where none should appear).
    segment_bytes: usize,
    blob_reported: bool,
    /// A next segment is being zero-filled by a helper thread (segment log only).
    preparing: Arc<std::sync::atomic::AtomicBool>,
    /// A checkpoint of the segment log's heads being written behind the syncer.
    checkpointing: Option<std::thread::JoinHandle<Result<(), StorageError>>>,
    /// `m | "log-writes"` as this syncer last wrote it, and the value it writes once the
    /// batch's acknowledgements are out (see `sync_log`).
    writes_cursor_stored: u64,
    writes_cursor_due: Option<u64>,
    /// The address after the last frame whose writes this syncer applied.
    writes_cursor_latest: u64,
    /// The address of the first frame whose timer writes `LogParts::deferred` holds (not yet
    /// taken for applying), and of the first whose taken writes are being applied behind the
    /// syncer: the timers cursor may not pass the older of the two (see `deferred`).
    held_since: Option<u64>,
    applying_since: Option<u64>,
    /// Held timer writes taken for applying, and the last key applied of them: the syncer
    /// applies a few after each batch's acknowledgements (see `apply_held_some`).
    applying: Option<(Arc<deferred::Held>, Option<Vec<u8>>)>,
    /// Whether `m | "log-timers"` is in sled (a writable open removes it: none at start).
    timers_cursor_stored: bool,
    /// Flushes sled between syncs in a store of 16 MiB segments (see `segments::SledRoller`);
    /// stopped when the syncer ends, before the store's `db` closes.
    _roller: Option<segments::SledRoller>,
}

/// Bytes of log whose frames carried no sled write that `m | "log-writes"` may lag behind
/// (what a writable open after a crash reads again at most for them).
const WRITES_CURSOR_LAG_BYTES_MAX: u64 = 16 << 20;

/// Synced heads a checkpoint of the segment log's index waits for at most, in streams and
/// in positions: the heads it keeps in memory, and what opening re-applies after a crash.
const HEADS_CHECKPOINT_STREAMS: usize = 16_384;
const HEADS_CHECKPOINT_POSITIONS: u64 = 65_536;

impl Syncer {
    fn run(mut self, batches: mpsc::Receiver<SyncBatch>) {
        while let Ok(mut batch) = batches.recv() {
            #[cfg(feature = "fault-injection")]
            while self
                .shared
                .syncs_held
                .load(std::sync::atomic::Ordering::Acquire)
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // Everything queued meanwhile shares this flush.
            while let Ok(more) = batches.try_recv() {
                batch.replies.extend(more.replies);
                batch.syncs.extend(more.syncs);
                batch.written.extend(more.written);
                batch.shutdown |= more.shutdown;
                batch.applied_through = batch.applied_through.max(more.applied_through);
                batch.log_groups.extend(more.log_groups);
            }
            let result = if self
                .shared
                .poisoned
                .load(std::sync::atomic::Ordering::Acquire)
            {
                Err(StorageError::Poisoned)
            } else {
                // A panic while syncing is a bug (or a failpoint): like a failed sync, it
                // poisons the journal, and every waiter gets a typed error instead of a
                // closed channel or no answer at all.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    match self.shared.log.is_some() {
                        true => self.sync_log(&mut batch),
                        false => self.sync(),
                    }
                }))
                .unwrap_or_else(|_| {
                    self.shared
                        .poison("flush/fdatasync", &"the syncer panicked");
                    Err(StorageError::Poisoned)
                })
            };
            match result {
                Ok(()) => {
                    self.shared
                        .syncs_done
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    self.shared.mark_synced(batch.applied_through);
                    for (reply, result) in batch.replies {
                        let _ = reply.send(result);
                    }
                    for reply in batch.syncs.into_iter().chain(batch.written) {
                        let _ = reply.send(Ok(()));
                    }
                    self.write_writes_cursor();
                    if let Err(e) = self.apply_held_some(deferred::DEFERRED_APPLY_KEYS_PER_SYNC) {
                        self.shared.poison("held timer writes", &e);
                    }
                }
                Err(e) => {
                    if !matches!(e, StorageError::Poisoned) {
                        self.shared.poison("flush/fdatasync", &e);
                    }
                    batch.syncs.extend(batch.written);
                    fail_all(batch.replies, batch.syncs, &e);
                }
            }
            if batch.shutdown {
                return;
            }
            self.prepare_next_segment();
        }
    }

    /// A group hand-off on the segment log: the log's `fdatasync`, then the groups' sled
    /// writes (never before: see `logstore`), then the heads they moved count as synced;
    /// explicit syncs and a shutdown also flush and sync sled (their callers wait for the
    /// keyspaces written outside the committer: offsets, snapshots, cursors).
    fn sync_log(&mut self, batch: &mut SyncBatch) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let parts = shared.log.as_ref().expect("a store on the segment log");
        self.injected_failure()?;
        let pending = parts.write_log().take_sync()?;
        if !fault::skip(fault::Sync::Fdatasync) {
            failpoint::check(failpoint::FDATASYNC)?;
            pending.run()?;
        }
        if !batch.log_groups.is_empty() {
            failpoint::check(failpoint::APPLY_BATCH)?;
            let mut cursor = None;
            let mut seals = Vec::new();
            let mut applied_any = false;
            for group in batch.log_groups.drain(..) {
                // Timer writes wait in memory for their turn (see `deferred`); the others go
                // into sled now.
                let (held, writes): (Vec<_>, Vec<_>) = group
                    .writes
                    .into_iter()
                    .partition(|w| deferred::is_deferred(w.key()));
                applied_any |= !writes.is_empty();
                apply_writes(&self.db, writes)?;
                if !held.is_empty() {
                    self.held_since.get_or_insert(group.frame_address);
                    parts.deferred.hold(held);
                }
                cursor = Some(group.writes_cursor);
                seals.extend(group.seals);
            }
            // The cursor only spares a writable open after a crash from applying these
            // frames' writes again (which gives the same state), so it is written after the
            // batch's acknowledgements, and for frames that carried no write only once it lags
            // `WRITES_CURSOR_LAG_BYTES_MAX`: that one sled insert, on the acknowledgement
            // path for every batch, was seen taking 1.6-5.5 ms when sled stalled (2026-11-27,
            // the latency bench, whose groups carry no write). At shutdown the latest goes in
            // before sled's last flush (below), so a closed store has no writes pending.
            if let Some(cursor) = cursor {
                self.writes_cursor_latest = cursor;
                if applied_any || cursor >= self.writes_cursor_stored + WRITES_CURSOR_LAG_BYTES_MAX
                {
                    self.writes_cursor_due = Some(cursor);
                }
            }
            for Seal(key) in seals {
                key.mark_durable();
            }
        }
        if !batch.syncs.is_empty() || batch.shutdown {
            // An explicit sync's callers (a checkpoint's copy, a shutdown) read sled itself.
            self.apply_held_now()?;
        } else {
            self.take_held_when_due();
        }
        if batch.shutdown && self.writes_cursor_latest > self.writes_cursor_stored {
            self.writes_cursor_due = Some(self.writes_cursor_latest);
            self.write_writes_cursor_now()?;
        }
        if batch.shutdown && self.timers_cursor_stored {
            // Everything held is in sled: a closed store keeps no timers cursor, so that a
            // reader opens it in place.
            self.db.remove(logstore::timers_cursor_key())?;
            self.timers_cursor_stored = false;
        }
        self.checkpoint_joined(batch.shutdown)?;
        let cut = {
            let mut index = parts.lock_index();
            index.note_synced(batch.applied_through + 1);
            let due = index.durable_streams() >= HEADS_CHECKPOINT_STREAMS
                || index.durable_end() >= index.checkpointed_end() + HEADS_CHECKPOINT_POSITIONS;
            if batch.shutdown {
                index.checkpoint(&self.db)?;
            }
            (due && !batch.shutdown && self.checkpointing.is_none())
                .then(|| index.begin_checkpoint())
        };
        if let Some(cut) = cut {
            self.checkpoint_behind(cut)?;
        }
        if !batch.syncs.is_empty() || batch.shutdown {
            self.sync()?;
        }
        if batch.shutdown && !fault::skip(fault::Sync::Fdatasync) {
            // The segment helper may be zero-filling the file `trim` removes.
            while self.preparing.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            parts.write_log().trim()?;
        }
        Ok(())
    }

    /// Writes `m | "log-writes"` if a batch left it due (after its acknowledgements): a
    /// failure poisons the journal like a failed sync, though what was acknowledged is
    /// durable (its frames are synced and their writes applied).
    fn write_writes_cursor(&mut self) {
        if let Err(e) = self.write_writes_cursor_now() {
            self.shared.poison("log writes cursor", &e);
        }
    }

    fn write_writes_cursor_now(&mut self) -> Result<(), StorageError> {
        if let Some(cursor) = self.writes_cursor_due.take() {
            // The timers cursor first: at the first frame whose timer writes sled may lack,
            // or (none held) removed, which means "at the writes cursor". Not one
            // `sled::Batch` with the writes cursor: sled seals its I/O buffer around every
            // batch (docs/design.md), and a batch here grew the resident set of the
            // 1,000,000-aggregate bench by 200 MiB (+690-737 MiB against +476-502, eight
            // runs, 2026-11-27). sled recovers a prefix of its log, so a writes cursor that
            // survives a crash comes with the timers cursor written before it.
            match self.applying_since.or(self.held_since) {
                Some(floor) => {
                    self.db
                        .insert(logstore::timers_cursor_key(), &floor.to_le_bytes()[..])?;
                    self.timers_cursor_stored = true;
                }
                None if self.timers_cursor_stored => {
                    self.db.remove(logstore::timers_cursor_key())?;
                    self.timers_cursor_stored = false;
                }
                None => {}
            }
            self.db
                .insert(logstore::writes_cursor_key(), &cursor.to_le_bytes()[..])?;
            self.writes_cursor_stored = cursor;
        }
        Ok(())
    }

    /// Takes the held timer writes for applying once there are
    /// [`deferred::DEFERRED_KEYS_MAX`] of them or they go back
    /// [`deferred::DEFERRED_LAG_BYTES_MAX`] of log, and none are being applied.
    fn take_held_when_due(&mut self) {
        let Some(parts) = &self.shared.log else {
            return;
        };
        let Some(since) = self.held_since else {
            return;
        };
        let due = parts.deferred.held() >= deferred::DEFERRED_KEYS_MAX
            || self.writes_cursor_latest >= since + deferred::DEFERRED_LAG_BYTES_MAX;
        if !due || self.applying.is_some() {
            return;
        }
        if let Some(taken) = parts.deferred.take() {
            self.applying = Some((taken, None));
            self.applying_since = self.held_since.take();
        }
    }

    /// Applies up to `keys` of the taken timer writes to sled, in key order: after a batch's
    /// acknowledgements, [`deferred::DEFERRED_APPLY_KEYS_PER_SYNC`] at a time. A thread of
    /// its own applying them all at once made the p99 latency at half the maximum rate 24
    /// and 45 ms against 4.6 and 4.1 without it (its sled inserts took the cores the
    /// acknowledgements wait for). Faster when the held writes pile up past twice the limit.
    fn apply_held_some(&mut self, mut keys: usize) -> Result<(), StorageError> {
        let Some(parts) = &self.shared.log else {
            return Ok(());
        };
        let Some((taken, after)) = &mut self.applying else {
            return Ok(());
        };
        if parts.deferred.held() >= 2 * deferred::DEFERRED_KEYS_MAX {
            keys = usize::MAX;
        }
        let start = match after {
            Some(k) => std::ops::Bound::Excluded(&k[..]),
            None => std::ops::Bound::Unbounded,
        };
        let mut last = None;
        for (key, write) in taken
            .range::<[u8], _>((start, std::ops::Bound::Unbounded))
            .take(keys)
        {
            deferred::apply_one(&self.db, key, write.as_deref())?;
            last = Some(key);
        }
        match last {
            Some(key) => {
                let key = key.clone();
                if taken.last_key_value().map(|(k, _)| k) == Some(&key) {
                    self.applying = None;
                } else {
                    *after = Some(key);
                    return Ok(());
                }
            }
            None => self.applying = None,
        }
        // All of the taken writes are in sled.
        parts.deferred.applied();
        self.applying_since = None;
        Ok(())
    }

    /// Applies every held timer write to sled before returning.
    fn apply_held_now(&mut self) -> Result<(), StorageError> {
        self.apply_held_some(usize::MAX)?;
        let Some(parts) = &self.shared.log else {
            return Ok(());
        };
        if let Some(taken) = parts.deferred.take() {
            deferred::apply(&self.db, &taken)?;
            parts.deferred.applied();
        }
        self.held_since = None;
        Ok(())
    }

    /// Writes a checkpoint of the segment log's heads on a thread of its own, so that the
    /// syncer goes on syncing and acknowledging meanwhile (measured: a checkpoint of 10,000
    /// heads held every acknowledgement for 120-150 ms, the whole of the p99 latency at half
    /// the maximum rate). Its heads stay readable in memory until it has finished.
    fn checkpoint_behind(
        &mut self,
        cut: super::logindex::CheckpointCut,
    ) -> Result<(), StorageError> {
        let (shared, db) = (self.shared.clone(), self.db.clone());
        let (cut_tx, cut_rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("evershard-checkpoint".into())
            .spawn(move || {
                let cut = cut_rx.recv().expect("the syncer sends the cut");
                write_checkpoint(&shared, &db, cut)
            });
        match spawned {
            Ok(thread) => {
                cut_tx
                    .send(cut)
                    .expect("the checkpoint thread waits for it");
                self.checkpointing = Some(thread);
                Ok(())
            }
            // Not fatal: the syncer writes it itself.
            Err(_) => write_checkpoint(&self.shared, &self.db, cut),
        }
    }

    /// Joins the heads checkpoint written behind the syncer once it has finished (or at
    /// once, with `wait`): its error poisons the journal like a failed sync.
    fn checkpoint_joined(&mut self, wait: bool) -> Result<(), StorageError> {
        if !wait && !self.checkpointing.as_ref().is_some_and(|t| t.is_finished()) {
            return Ok(());
        }
        match self.checkpointing.take().map(|t| t.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(StorageError::Poisoned),
        }
    }

    /// Zero-fills the segment log's next segment on a helper thread when the active one is
    /// past half full, so that starting it costs a rename on the committer's path.
    fn prepare_next_segment(&mut self) {
        use std::sync::atomic::Ordering;
        let Some(parts) = &self.shared.log else {
            return;
        };
        let Some((path, bytes)) = parts.read_log().wants_prepared() else {
            return;
        };
        if self.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (shared, preparing) = (self.shared.clone(), self.preparing.clone());
        let spawned = std::thread::Builder::new()
            .name("evershard-segment".into())
            .spawn(move || {
                match super::seglog::prepare_file(&path, bytes) {
                    Ok(file) => {
                        if let Some(parts) = &shared.log {
                            parts.write_log().install_prepared(file);
                        }
                    }
                    // Not fatal: the committer makes the segment itself when it needs one.
                    Err(e) => tracing::warn!(%e, "could not prepare the next log segment"),
                }
                preparing.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.preparing.store(false, Ordering::Release);
        }
    }

    /// Fault injection: the failure `fail_next_sync_for_tests` asked for, once.
    fn injected_failure(&self) -> Result<(), StorageError> {
        #[cfg(feature = "fault-injection")]
        if self
            .shared
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Err(std::io::Error::other("injected flush failure").into());
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.injected_failure()?;
        failpoint::check(failpoint::FLUSH)?;
        self.db.flush()?;
        // Blobs first: once the data file is synced, its log points at them, and sled's
        // recovery refuses to open a store whose log points at a blob file that exists but
        // is empty or torn (found by the power-loss test in testing/lossyfs).
        self.sync_new_blobs()?;
        // sled's flush ends in sync_file_range, which does not reach stable storage
        // (spacejam/sled#1452): fdatasync the data file ourselves.
        if !fault::skip(fault::Sync::Fdatasync) {
            failpoint::check(failpoint::FDATASYNC)?;
            self.data_file.sync_data()?;
        }
        // The fdatasync made durable every log item in the file, not only those the flush
        // covered: items written since the blob listing above (by the committer's next group,
        // or by a reader's or snapshot's page consolidation) may point at blobs created after
        // it. A durable item whose blob file is missing is skipped by sled's recovery as
        // "dangling", which is not safe for a consolidated tree node (found by the power-loss
        // test: "tried to serialize Uninitialized", "cannot find pid 3 in view_for_key"). So
        // sync those blobs now. The window between the fdatasync and this pass cannot be
        // closed here; it is closed by sled writing no blobs at all in a store made with
        // evershard's segment size (`segments`). Both passes stay, as the defence for stores
        // made with sled's default segments and for a node beyond `segments`' bound: they
        // cost one directory listing when, as there, `blobs/` is empty.
        self.sync_new_blobs()?;
        Ok(())
    }

    /// sled 0.34 writes a log item larger than its blob threshold to `blobs/<lsn>` and never
    /// syncs that file or the folder. In a store made with evershard's segment size no item
    /// reaches the threshold (`segments`: every value and every tree node is bounded below
    /// it), so there are none; in a store made with sled's default 512 KiB segments (before
    /// evershard chose its own) a consolidated tree node of large values lands there: sync
    /// every blob file that is new or has grown since it was last synced, then the folder.
    /// A blob in a store of evershard's segment size means a node outgrew the bound: it is
    /// synced all the same, and said once in the log.
    ///
    /// "Or has grown": sled writes a blob (create, then three writes) while the log item
    /// pointing at it is reserved, so a blob of a *later* group can be half written when this
    /// lists the folder. Remembering it as synced at that point left its tail volatile for
    /// good, and once the group pointing at it was acknowledged, a power cut left a torn blob
    /// that fails sled's CRC: sled's recovery takes that for the end of the log and drops
    /// every later item (found by the power-loss test: hundreds of acknowledged events lost).
    /// A blob is complete before `flush` returns for the item that points at it, and the
    /// length recorded here is read before the sync, so a blob is synced again until the
    /// length synced is its final one.
    fn sync_new_blobs(&mut self) -> Result<(), StorageError> {
        failpoint::check(failpoint::BLOB_SYNC)?;
        let folder = self.shared.dir.join("blobs");
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut present = HashMap::new();
        let mut synced_any = false;
        for entry in entries {
            let name = entry?.file_name();
            let file = match File::open(folder.join(&name)) {
                Ok(file) => file,
                // sled removed it meanwhile (blob garbage collection).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let len = file.metadata()?.len();
            if self.synced_blobs.get(&name) != Some(&len) {
                if self.segment_bytes == segments::SEGMENT_BYTES && !self.blob_reported {
                    self.blob_reported = true;
                    tracing::warn!(
                        blob = %folder.join(&name).display(),
                        bytes = len,
                        "sled wrote a blob file although no tree node should reach its \
                         threshold with this store's segment size: synced, but a power cut \
                         just after the next fdatasync could lose it (docs/design.md, point 5)"
                    );
                }
                if !fault::skip(fault::Sync::Blob) {
                    file.sync_data()?;
                }
                synced_any = true;
            }
            present.insert(name, len);
        }
        if synced_any && !fault::skip(fault::Sync::BlobDir) {
            File::open(&folder)?.sync_all()?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

type Reply = (
    ReplyTo<Committed, AppendError>,
    Result<Committed, AppendError>,
);

impl Committer {
    pub(super) fn new(
        shared: Arc<Shared>,
        db: sled::Db,
        data_file: File,
        config: JournalConfig,
        next_global: u64,
    ) -> Self {
        let (syncer, batches) = mpsc::channel();
        let segment_bytes = segments::segment_bytes_for(&shared.dir);
        let roller = segments::SledRoller::start(&db, segment_bytes, {
            let shared = shared.clone();
            move |e| shared.poison("flush of sled's buffer", &e)
        });
        let sync_worker = Syncer {
            shared: shared.clone(),
            db: db.clone(),
            data_file,
            synced_blobs: Default::default(),
            segment_bytes,
            blob_reported: false,
            preparing: Default::default(),
            checkpointing: None,
            writes_cursor_stored: 0,
            writes_cursor_due: None,
            writes_cursor_latest: 0,
            held_since: None,
            applying_since: None,
            applying: None,
            timers_cursor_stored: false,
            _roller: roller,
        };
        let syncer_thread = std::thread::Builder::new()
            .name("evershard-syncer".into())
            .spawn(move || sync_worker.run(batches))
            .expect("spawn the syncer thread");
        Self {
            shared,
            db,
            config,
            next_global,
            heads: HashMap::new(),
            syncer,
            syncer_thread: Some(syncer_thread),
        }
    }

    /// Hands replies to the syncer; on shutdown also waits for it to finish.
    fn hand_to_syncer(&mut self, batch: SyncBatch) {
        let shutdown = batch.shutdown;
        if let Err(mpsc::SendError(batch)) = self.syncer.send(batch) {
            fail_all(batch.replies, batch.syncs, &StorageError::Closed);
        }
        if shutdown {
            if let Some(t) = self.syncer_thread.take() {
                let _ = t.join();
            }
        }
    }

    pub(super) fn run(mut self, jobs: mpsc::Receiver<CommitJob>) {
        let size = |job: &CommitJob| match job {
            CommitJob::Append { request, .. } => (
                request.events.len(),
                request
                    .events
                    .iter()
                    .map(|e| e.payload.len())
                    .sum::<usize>(),
            ),
            _ => (0, 0),
        };
        while let Ok(first) = jobs.recv() {
            let (mut events, mut bytes) = size(&first);
            // A pause ends the group: what was queued before it is in the cut, nothing after.
            let mut pause = None;
            let mut group = Vec::new();
            match first {
                job @ CommitJob::Pause { .. } => pause = Some(job),
                job => group.push(job),
            }
            // Take whatever else is already queued, up to the batch limits: this is the group.
            while pause.is_none()
                && events < self.config.batch_events_max
                && bytes < self.config.batch_bytes_max
            {
                match jobs.try_recv() {
                    Ok(job @ CommitJob::Pause { .. }) => pause = Some(job),
                    Ok(job) => {
                        let (e, b) = size(&job);
                        events += e;
                        bytes += b;
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            // A panic here is a bug in evershard; it must not leave a dead thread behind a
            // journal that looks healthy. The group's callers see their channel close; every
            // later write is refused as poisoned.
            if !group.is_empty() {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.commit_group(group)
                })) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(_) => self
                        .shared
                        .poison("group commit", &"the committer panicked"),
                }
            }
            if let Some(CommitJob::Pause { paused, resume }) = pause {
                self.pause(paused, resume);
            }
        }
        // Every sender is gone: leave the store synced.
        self.hand_to_syncer(SyncBatch {
            shutdown: true,
            ..SyncBatch::default()
        });
    }

    /// Syncs everything applied, answers the cut, and blocks until resumed. A failed sync
    /// (a poisoned journal) answers the error and does not block.
    fn pause(&mut self, paused: ReplyTo<u64, StorageError>, resume: mpsc::Receiver<()>) {
        let cut = self.next_global - 1;
        let (synced, done) = oneshot::channel();
        self.hand_to_syncer(SyncBatch {
            syncs: vec![ReplyTo::new(synced, self.shared.clone())],
            applied_through: cut,
            ..SyncBatch::default()
        });
        let result = done
            .blocking_recv()
            .unwrap_or(Err(StorageError::Closed))
            .map(|()| cut);
        let ok = result.is_ok();
        if paused.send(result).is_ok() && ok {
            // Ends when the pauser sends or drops its handle (also when it panics).
            let _ = resume.recv();
        }
    }

    fn head(
        &mut self,
        stream: &StreamId,
        staged: &HashMap<StreamId, CommitHead>,
    ) -> Result<CommitHead, StorageError> {
        if let Some(h) = staged.get(stream).or_else(|| self.heads.get(stream)) {
            return Ok(*h);
        }
        let head = match &self.shared.log {
            Some(parts) => match parts.log_head(&self.db, stream)? {
                Some(h) => CommitHead {
                    sequence: h.sequence,
                    hash: h.hash,
                    address: h.address,
                    frame_record: None,
                },
                None => CommitHead::EMPTY,
            },
            None => {
                let StreamHead { sequence, hash } = super::read_head(&self.db, stream)?;
                CommitHead {
                    sequence,
                    hash,
                    ..CommitHead::EMPTY
                }
            }
        };
        if self.heads.len() >= HEAD_CACHE_STREAMS_MAX {
            self.heads.clear();
        }
        self.heads.insert(stream.clone(), head);
        Ok(head)
    }

    /// Commits one group; returns true when a shutdown was requested.
    fn commit_group(&mut self, group: Vec<CommitJob>) -> bool {
        let mut batch = sled::Batch::default();
        let mut staged: HashMap<StreamId, CommitHead> = HashMap::new();
        // The segment log's frame, when the store is on it: the records go there instead of
        // under `e` keys, the writes both there and (after the frame's sync) into sled.
        let on_log = self.shared.log.is_some();
        let mut frame = Frame {
            first_position: self.next_global,
            records: Vec::new(),
            writes: Vec::new(),
        };
        // Per record of the frame: its predecessor's index in the frame, when it is there.
        let mut in_frame_previous: Vec<Option<usize>> = Vec::new();
        let mut next_global = self.next_global;
        let mut runs: Vec<keys::GlobalRun> = Vec::new();
        let mut pending: Vec<Reply> = Vec::new();
        let mut syncs = Vec::new();
        let mut written = Vec::new();
        let mut any_writes = false;
        let mut shutdown = false;
        let mut seals: Vec<Seal> = Vec::new();
        // The idempotency records of the group, (`i` key, record): one group entry.
        let mut idempotency_records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // Each written record's SHA-256, in global order: the tree maintainer's leaves.
        let mut record_hashes: Vec<record::Hash> = Vec::new();

        for job in group {
            let (request, reply) = match job {
                CommitJob::Sync { reply } => {
                    syncs.push(reply);
                    continue;
                }
                CommitJob::Writes { writes, reply } => {
                    if !writes.is_empty() {
                        any_writes = true;
                    }
                    for op in writes {
                        write(&mut batch, &mut frame, on_log, op);
                    }
                    match on_log {
                        true => written.push(reply),
                        false => syncs.push(reply),
                    }
                    continue;
                }
                CommitJob::Shutdown { reply } => {
                    syncs.push(reply);
                    shutdown = true;
                    continue;
                }
                CommitJob::Append { request, reply } => (request, reply),
                CommitJob::Pause { .. } => unreachable!("a pause never joins a group"),
            };
            if self
                .shared
                .poisoned
                .load(std::sync::atomic::Ordering::Acquire)
            {
                let _ = reply.send(Err(StorageError::Poisoned.into()));
                continue;
            }
            let head = match self.head(&request.stream, &staged) {
                Ok(h) => h,
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    continue;
                }
            };
            if head.sequence != request.expected_version {
                let _ = reply.send(Err(AppendError::Conflict {
                    stream: request.stream.clone(),
                    expected: request.expected_version,
                    actual: head.sequence,
                }));
                continue;
            }
            if let Some(Seal(key)) = &request.seal {
                if self.shared.keyring.is_erased(key.key.id) {
                    let _ = reply.send(Err(StorageError::Erased {
                        stream: request.stream.clone(),
                        sequence: head.sequence + 1,
                        key_id: key.key.id,
                    }
                    .into()));
                    continue;
                }
                // Erasures move the epoch only here, on this thread: a request decided on a
                // state read before its subject's erasure is refused, whatever key it seals
                // with.
                if request
                    .decided_at
                    .as_ref()
                    .is_some_and(|(epoch, subjects)| {
                        subjects
                            .iter()
                            .any(|subject| self.shared.keyring.erased_since(subject, *epoch))
                    })
                {
                    let _ = reply.send(Err(AppendError::KeysChanged {
                        stream: request.stream.clone(),
                    }));
                    continue;
                }
            }
            for &id in &request.erases {
                self.shared.keyring.mark_erased(id);
            }
            if let Some(subject) = &request.erases_subject {
                self.shared.keyring.note_subject_erased(subject);
            }
            let mut prev = head;
            let mut records = Vec::with_capacity(request.events.len());
            for event in request.events {
                let sequence = prev.sequence + 1;
                let mut record = Record {
                    sequence,
                    global_position: next_global,
                    timestamp: record::truncate_to_micros(event.timestamp),
                    event_id: event.event_id,
                    correlation_id: event.correlation_id,
                    causation_id: event.causation_id,
                    prev_hash: prev.hash,
                    aggregate_type: request.stream.aggregate_type.clone(),
                    aggregate_id: request.stream.aggregate_id.clone(),
                    event_type: event.event_type,
                    event_version: event.event_version,
                    source: event.source,
                    user_id: event.user_id,
                    session_id: event.session_id,
                    audit_context: event.audit_context,
                    at_rest: record::AtRest::Plain,
                    payload: event.payload,
                };
                if request.seal.is_some() {
                    // Sealed by the caller (off this one thread), for exactly this sequence:
                    // the expected version checked above fixes it.
                    record.at_rest = record::AtRest::Sealed;
                }
                let bytes = record.encode();
                let hash = record::hash(&bytes);
                let frame_record = if on_log {
                    in_frame_previous.push(prev.frame_record);
                    frame.records.push(FrameRecord {
                        previous_address: prev.address,
                        bytes,
                    });
                    Some(frame.records.len() - 1)
                } else {
                    batch.insert(
                        keys::stream_key(keys::EVENTS, &request.stream, sequence),
                        bytes,
                    );
                    None
                };
                prev = CommitHead {
                    sequence,
                    hash,
                    address: 0,
                    frame_record,
                };
                record_hashes.push(prev.hash);
                next_global += 1;
                records.push(record);
                any_writes = true;
            }
            if let Some(seal) = request.seal {
                for op in seal.0.pending_writes() {
                    write(&mut batch, &mut frame, on_log, op);
                }
                seals.push(seal);
            }
            for op in request.extra_writes.into_iter().chain(request.key_writes) {
                any_writes = true;
                match op {
                    // An idempotency record joins the group's entry (see `idempotency`): one
                    // sled key per group rather than per idempotent command. Its one-key
                    // sweep entry (what requests carried before group entries) is that entry.
                    WriteOp::Put { key, value } if key.first() == Some(&keys::IDEMPOTENCY) => {
                        idempotency_records.push((key, value));
                    }
                    WriteOp::Put { key, .. } if key.first() == Some(&keys::IDEMPOTENCY_BY_TIME) => {
                    }
                    op @ WriteOp::Put { .. } => write(&mut batch, &mut frame, on_log, op),
                    op @ WriteOp::Remove { .. } => write(&mut batch, &mut frame, on_log, op),
                }
            }
            // The stream moved by exactly one sequence per event, from the expected version.
            assert_eq!(prev.sequence, head.sequence + records.len() as u64);
            if !records.is_empty() {
                runs.push(keys::GlobalRun {
                    stream: request.stream.clone(),
                    first_sequence: head.sequence + 1,
                    count: records.len() as u32,
                });
            }
            staged.insert(request.stream, prev);
            pending.push((
                reply,
                Ok(Committed {
                    records,
                    version: prev.sequence,
                }),
            ));
        }

        // The global index: one entry per chunk of runs (not per event), each keyed by its
        // first position; positions follow the runs in order.
        assert_eq!(
            keys::global_entry_len(&runs),
            next_global - self.next_global
        );
        // (On the segment log, positions are the frame's, and there is no global index.)
        let mut position = self.next_global;
        for chunk in runs.chunks(keys::GLOBAL_ENTRY_RUNS_MAX) {
            if on_log {
                break;
            }
            batch.insert(
                &keys::global_key(position)[..],
                keys::global_entry_value(chunk),
            );
            position += keys::global_entry_len(chunk);
        }
        if !idempotency_records.is_empty() {
            let mut index = self.shared.idempotency_index(&self.db).unwrap_or_else(|e| {
                panic!("the idempotency index is built when the journal opens: {e}")
            });
            for chunk in idempotency_entry_chunks(&idempotency_records) {
                let (key, value) = keys::idempotency_records_entry(&chunk);
                index.add_group(&key, chunk.iter().map(|(k, _)| *k));
                write(&mut batch, &mut frame, on_log, WriteOp::Put { key, value });
            }
        }
        let durable = matches!(self.config.durability, Durability::Durable);
        // On the segment log: the group's sled writes, applied after the frame's sync (or
        // at once in buffered mode, which acknowledges before it).
        let mut log_group = None;
        if any_writes {
            let written_result = if on_log {
                self.write_frame(frame, &in_frame_previous, &mut staged)
                    .and_then(|(writes, frame_address, writes_cursor)| match durable {
                        true => {
                            // The group's idempotency entries go into sled now, on this
                            // thread, while the syncer is busy with the groups before: on the
                            // syncer they lengthened every group's time to acknowledgement
                            // (see `idempotency`). Before the frame's sync, so a power cut can
                            // keep an entry whose frame it lost: the look-up checks each
                            // record against the stream (`Journal::idempotency_record`), as
                            // for buffered mode. Every other write waits for the sync.
                            let (early, writes): (Vec<_>, Vec<_>) =
                                writes.into_iter().partition(|w| {
                                    matches!(w, FrameWrite::Put { key, .. }
                                        if key.first() == Some(&keys::IDEMPOTENCY_BY_TIME))
                                });
                            apply_writes(&self.db, early)?;
                            log_group = Some(LogGroup {
                                writes,
                                frame_address,
                                writes_cursor,
                                seals: std::mem::take(&mut seals),
                            });
                            Ok(())
                        }
                        false => failpoint::check(failpoint::APPLY_BATCH)
                            .map_err(StorageError::from)
                            .and_then(|()| apply_writes(&self.db, writes))
                            .and_then(|()| {
                                let cursor = &writes_cursor.to_le_bytes()[..];
                                self.db.insert(logstore::writes_cursor_key(), cursor)?;
                                Ok(())
                            }),
                    })
            } else {
                failpoint::check(failpoint::APPLY_BATCH)
                    .map_err(sled::Error::Io)
                    .and_then(|()| self.db.apply_batch(batch))
                    .map_err(StorageError::from)
            };
            if let Err(err) = written_result {
                self.shared.poison("batch write", &err);
                syncs.extend(written);
                for (reply, _) in pending {
                    let _ = reply.send(Err(AppendError::Storage(err.clone())));
                }
                // Sync requests and a shutdown still go to the syncer, which refuses them as
                // poisoned and, on shutdown, is joined.
                if !syncs.is_empty() || shutdown {
                    self.hand_to_syncer(SyncBatch {
                        syncs,
                        shutdown,
                        ..SyncBatch::default()
                    });
                }
                return shutdown;
            }
        }
        // A new data key is in sled with the events it sealed: later batches need not carry
        // it (a failed sync poisons the journal, so no later batch outlives a lost one).
        for Seal(key) in seals {
            key.mark_durable();
        }
        assert_eq!(
            record_hashes.len() as u64,
            next_global - self.next_global,
            "one hash per position"
        );
        self.shared
            .feed_record_hashes(self.next_global, &record_hashes);
        // The group is in sled: later groups build on these heads. If the sync below fails,
        // the journal is poisoned and no later group is written, so they never mislead.
        self.publish(staged, next_global);
        let mut handoff = SyncBatch {
            replies: Vec::new(),
            syncs,
            written,
            shutdown,
            applied_through: next_global - 1,
            log_groups: log_group.into_iter().collect(),
        };
        if durable {
            handoff.replies = pending;
        } else {
            // Buffered mode acknowledges now; sled's flusher makes it durable shortly after.
            // (On the segment log the followers wait for the syncer's `fdatasync` instead:
            // see `Shared::mark_synced`.)
            self.shared.mark_durable(next_global - 1);
            for (reply, result) in pending {
                let _ = reply.send(result);
            }
        }
        // On the segment log every written group goes to the syncer: in buffered mode too,
        // where its sync runs behind the acknowledgement.
        if !handoff.replies.is_empty()
            || !handoff.syncs.is_empty()
            || !handoff.written.is_empty()
            || shutdown
            || (on_log && any_writes)
        {
            self.hand_to_syncer(handoff);
        }
        shutdown
    }

    /// Writes the group's frame to the segment log (one `pwrite`; the syncer syncs it),
    /// fills in the pointers to predecessors in the same frame, and moves the staged heads
    /// to their records' addresses and the index's heads with them. Returns the frame's
    /// writes, for sled, and the address after the frame.
    fn write_frame(
        &mut self,
        mut frame: Frame,
        in_frame_previous: &[Option<usize>],
        staged: &mut HashMap<StreamId, CommitHead>,
    ) -> Result<(Vec<FrameWrite>, u64, u64), StorageError> {
        let parts = self
            .shared
            .log
            .as_ref()
            .expect("a store on the segment log");
        failpoint::check(failpoint::APPLY_BATCH)?;
        let mut log = parts.write_log();
        let address = log.reserve(&frame)?;
        let addresses = frame.record_addresses(address);
        for (record, previous) in frame.records.iter_mut().zip(in_frame_previous) {
            if let Some(i) = previous {
                record.previous_address = addresses[*i];
            }
        }
        let written = log.append(&frame)?;
        assert_eq!(written, address, "the frame went where it was reserved");
        // The address after this frame as the log has it (a cursor must end a frame).
        let writes_cursor = log.end_of_frames();
        drop(log);
        let mut heads = Vec::with_capacity(staged.len());
        for (stream, head) in staged.iter_mut() {
            if let Some(i) = head.frame_record.take() {
                head.address = addresses[i];
                heads.push((
                    stream.clone(),
                    LogHead {
                        sequence: head.sequence,
                        position: frame.first_position + i as u64,
                        address: head.address,
                        hash: head.hash,
                    },
                ));
            }
        }
        parts
            .lock_index()
            .note_committed(frame.end_position(), heads);
        let Frame {
            first_position,
            records,
            writes,
        } = frame;
        parts.note_written(first_position, records);
        Ok((
            logstore::sled_writes(writes, address),
            address,
            writes_cursor,
        ))
    }

    fn publish(&mut self, staged: HashMap<StreamId, CommitHead>, next_global: u64) {
        assert!(
            next_global >= self.next_global,
            "global position moved backwards"
        );
        self.next_global = next_global;
        self.heads.extend(staged);
    }
}

/// One write of a group: into the sled batch, or on the segment log into the frame (sled
/// gets it after the frame's sync).
fn write(batch: &mut sled::Batch, frame: &mut Frame, on_log: bool, op: WriteOp) {
    match (op, on_log) {
        (WriteOp::Put { key, value }, true) => frame.writes.push(FrameWrite::Put { key, value }),
        (WriteOp::Remove { key }, true) => frame.writes.push(FrameWrite::Remove { key }),
        (WriteOp::Put { key, value }, false) => batch.insert(key, value),
        (WriteOp::Remove { key }, false) => batch.remove(key),
    }
}

/// Heads a finished checkpoint forgets per hold of the index's lock (see
/// `LogIndex::forget_checkpointed`).
const CHECKPOINT_FORGET_HEADS_PER_LOCK: usize = 512;

/// Writes a heads checkpoint's cut into sled (key by key, the cursor last), then the index
/// forgets the heads sled now holds.
fn write_checkpoint(
    shared: &Shared,
    db: &sled::Db,
    cut: super::logindex::CheckpointCut,
) -> Result<(), StorageError> {
    let parts = shared.log.as_ref().expect("a store on the segment log");
    cut.write(db)?;
    let heads: Vec<_> = parts
        .lock_index()
        .finish_checkpoint_cursor(cut)
        .into_iter()
        .collect();
    for part in heads.chunks(CHECKPOINT_FORGET_HEADS_PER_LOCK) {
        parts.lock_index().forget_checkpointed(part.iter().cloned());
    }
    Ok(())
}

/// A segment log group's writes into sled, one key at a time, in the frame's order. Not a
/// `sled::Batch`: sled seals and writes its I/O buffer (a `pwrite` and a waited
/// `sync_file_range` on its thread pool) before and after every batch, which made sled's
/// I/O threads a quarter of the durable bench's CPU (perf, 2026-11-26). Nothing needs the
/// batch's atomicity here: the frame is durable, sled recovers a prefix of its log, and
/// `m | "log-writes"`, written after them, is what says they are in; a crash in between
/// re-applies them from the frame. A reader may see part of a group's writes for a moment
/// (a new timer before the old one is removed: firing is at-least-once, and a timer that
/// finds nothing to do writes nothing).
fn apply_writes(db: &sled::Db, writes: Vec<FrameWrite>) -> Result<(), StorageError> {
    for w in writes {
        match w {
            FrameWrite::Put { key, value } => {
                db.insert(key, value)?;
            }
            FrameWrite::Remove { key } => {
                db.remove(key)?;
            }
        }
    }
    Ok(())
}

fn fail_all(pending: Vec<Reply>, syncs: Vec<ReplyTo<(), StorageError>>, err: &StorageError) {
    for (reply, _) in pending {
        let _ = reply.send(Err(AppendError::Storage(err.clone())));
    }
    for reply in syncs {
        let _ = reply.send(Err(err.clone()));
    }
}

/// A group's idempotency records, `(i key, record)`, cut into the chunks of one group entry
/// each: at most `keys::IDEMPOTENCY_GROUP_KEYS_MAX` records and about
/// `keys::IDEMPOTENCY_GROUP_VALUE_BYTES_MAX` bytes (a chunk always takes at least one record,
/// which alone is far below `segments::VALUE_BYTES_MAX`).
pub(super) fn idempotency_entry_chunks(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<(&[u8], &[u8])>> {
    let mut chunks: Vec<Vec<(&[u8], &[u8])>> = Vec::new();
    let mut bytes = 0;
    for (key, record) in records {
        let size = key.len() + 2 + record.len();
        let full = chunks.last().is_none_or(|c| {
            c.len() == keys::IDEMPOTENCY_GROUP_KEYS_MAX
                || bytes + size > keys::IDEMPOTENCY_GROUP_VALUE_BYTES_MAX
        });
        if full {
            chunks.push(Vec::new());
            bytes = 1;
        }
        bytes += size;
        chunks
            .last_mut()
            .expect("pushed above")
            .push((&key[..], &record[..]));
    }
    chunks
}
