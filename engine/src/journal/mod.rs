//! The journal: an append-only event log on sled. **Architecture Invariant:** this is the only
//! module of evershard that touches sled.
//!
//! One sled tree holds every keyspace (see [`keys`]), so that the events of a command, their
//! global index entries and — in later subsystems — outbox entries, timers and idempotency
//! records are written by one atomic `apply_batch`. Appends go through a single committer
//! thread ([`committer`]) which batches concurrent requests into one sled batch and one flush
//! (group commit). Reads go straight to sled.

mod committer;
pub mod keys;
pub mod record;
mod verify;

pub use committer::{AppendRequest, Committed, NewEvent, WriteOp};
pub use record::{Record, RecordError};
pub use verify::{VerifyIssue, VerifyReport};

use crate::error::{AppendError, StorageError};
use committer::{CommitJob, Committer};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

pub use evershard_model::StreamId;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after the sled flush **and** an fdatasync of sled's data file that
    /// hold the append. A crash at any moment loses nothing acknowledged. The default.
    #[default]
    Durable,
    /// Acknowledge once the batch is applied in sled's memory; sled flushes every
    /// `flush_every_ms`. A crash may lose the last few hundred milliseconds of acknowledged
    /// commands, but never tears a command's batch or the hash chain.
    Buffered { flush_every_ms: u64 },
}

/// Journal settings; the engine builder fills them.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub durability: Durability,
    /// Upper bound of one group commit, in events.
    pub batch_events_max: usize,
    /// Upper bound of one group commit, in payload bytes.
    pub batch_bytes_max: usize,
    /// sled's page cache.
    pub cache_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Durable,
            batch_events_max: 4096,
            batch_bytes_max: 8 * 1024 * 1024,
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The last sequence of a stream and where its chain ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHead {
    pub sequence: u64,
    pub hash: record::Hash,
}

struct Shared {
    db: sled::Db,
    dir: PathBuf,
    poisoned: AtomicBool,
    read_only: bool,
    /// Set by the first `close`.
    closed: AtomicBool,
    /// Flush + fdatasync rounds the syncer has completed: with group commit, far fewer than
    /// appends.
    syncs_done: std::sync::atomic::AtomicU64,
    /// Fault injection: while set, the syncer waits before each sync.
    #[cfg(feature = "fault-injection")]
    pub(crate) syncs_held: AtomicBool,
    /// Fault injection: the next flush fails as if the disk had refused it.
    #[cfg(feature = "fault-injection")]
    fail_next_sync: AtomicBool,
}

impl Shared {
    fn check_writable(&self) -> Result<(), StorageError> {
        if self.read_only {
            return Err(StorageError::ReadOnly);
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    fn poison(&self, what: &str, err: &dyn std::fmt::Display) {
        tracing::error!(%err, "journal poisoned after failed {what}; refusing further writes");
        self.poisoned.store(true, Ordering::Release);
    }
}

/// The embedded event journal. Cheap to clone; every clone shares one committer.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    jobs: Option<mpsc::Sender<CommitJob>>,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

fn map_open_error(dir: &Path, err: sled::Error) -> StorageError {
    match err {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            StorageError::Locked {
                dir: dir.to_path_buf(),
            }
        }
        other => StorageError::from(other),
    }
}

/// The format marker stored under `m|format`.
const STORE_FORMAT: &[u8] = b"evershard-journal-v1";

impl Journal {
    /// Opens (or creates) a journal for reading and writing.
    pub fn open(dir: impl AsRef<Path>, config: JournalConfig) -> Result<Journal, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(StorageError::from)?;
        let flush_every_ms = match config.durability {
            Durability::Durable => Some(1000),
            Durability::Buffered { flush_every_ms } => Some(flush_every_ms.max(1)),
        };
        let db = sled::Config::new()
            .path(&dir)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(flush_every_ms)
            // An append-only journal never rewrites in place: favour write throughput over
            // sled's space-saving rewrites.
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| map_open_error(&dir, e))?;
        let meta_key = [&[keys::META][..], b"format"].concat();
        match db.get(&meta_key)? {
            Some(v) if v.as_ref() == STORE_FORMAT => {}
            Some(v) => {
                return Err(StorageError::Corrupt {
                    stream: None,
                    sequence: None,
                    reason: format!("unknown store format {:?}", String::from_utf8_lossy(&v)),
                })
            }
            None => {
                db.insert(&meta_key, STORE_FORMAT)?;
                db.flush()?;
                // A new store: make its files' directory entries durable too.
                File::open(&dir)?.sync_all()?;
            }
        }
        // sled 0.34's flush() ends in sync_file_range, which does not reach stable storage
        // (spacejam/sled#1452). Durable mode fdatasyncs sled's data file itself.
        let data_file = File::open(dir.join("db")).map_err(StorageError::from)?;
        let next_global = last_global_position(&db)? + 1;
        let shared = Arc::new(Shared {
            db,
            dir,
            poisoned: AtomicBool::new(false),
            read_only: false,
            closed: AtomicBool::new(false),
            syncs_done: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "fault-injection")]
            syncs_held: AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            fail_next_sync: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let committer = Committer::new(shared.clone(), data_file, config, next_global);
        let handle = std::thread::Builder::new()
            .name("evershard-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(StorageError::from)?;
        Ok(Journal {
            shared,
            jobs: Some(tx),
            committer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Opens an existing journal for reading only: no append, snapshot or prune is accepted.
    /// Used by the auditors' CLI. (sled itself may still replay its own log on open.)
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Journal, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join("db").exists() {
            return Err(StorageError::NotFound { dir });
        }
        let db = sled::Config::new()
            .path(&dir)
            .open()
            .map_err(|e| map_open_error(&dir, e))?;
        let meta_key = [&[keys::META][..], b"format"].concat();
        match db.get(&meta_key)? {
            Some(v) if v.as_ref() == STORE_FORMAT => {}
            other => {
                return Err(StorageError::Corrupt {
                    stream: None,
                    sequence: None,
                    reason: format!(
                        "not an evershard journal (format marker {:?})",
                        other.map(|v| String::from_utf8_lossy(&v).into_owned())
                    ),
                })
            }
        }
        let shared = Arc::new(Shared {
            db,
            dir,
            poisoned: AtomicBool::new(false),
            read_only: true,
            closed: AtomicBool::new(false),
            syncs_done: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "fault-injection")]
            syncs_held: AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            fail_next_sync: AtomicBool::new(false),
        });
        Ok(Journal {
            shared,
            jobs: None,
            committer: Arc::new(Mutex::new(None)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// True after a failed write or flush: the journal refuses every further write.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    fn submit(
        &self,
        request: AppendRequest,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Committed, AppendError>>, AppendError> {
        self.shared.check_writable()?;
        request
            .stream
            .validate()
            .map_err(|e| AppendError::InvalidRequest(e.to_string()))?;
        request.validate().map_err(AppendError::InvalidRequest)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(StorageError::ReadOnly)?;
        jobs.send(CommitJob::Append { request, reply })
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    /// Appends the events of one command atomically, if the stream is at `expected_version`.
    /// Resolves when the append is acknowledged under the configured [`Durability`].
    pub async fn append(&self, request: AppendRequest) -> Result<Committed, AppendError> {
        let rx = self.submit(request)?;
        rx.await
            .map_err(|_| AppendError::Storage(StorageError::Closed))?
    }

    /// [`Journal::append`] for callers outside an async runtime.
    pub fn append_blocking(&self, request: AppendRequest) -> Result<Committed, AppendError> {
        let rx = self.submit(request)?;
        rx.blocking_recv()
            .map_err(|_| AppendError::Storage(StorageError::Closed))?
    }

    /// Waits until everything appended so far is on stable storage (flush + fdatasync).
    /// Blocking: from async code call it through `spawn_blocking`.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        let jobs = self.jobs.as_ref().ok_or(StorageError::ReadOnly)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        jobs.send(CommitJob::Sync { reply })
            .map_err(|_| StorageError::Closed)?;
        rx.blocking_recv().map_err(|_| StorageError::Closed)?
    }

    /// Blocking, like [`Journal::sync`].
    /// Commits and syncs everything submitted so far, then stops the committer: every clone's
    /// later appends fail with [`StorageError::Closed`]. Idempotent.
    pub fn close(&self) -> Result<(), StorageError> {
        let Some(jobs) = self.jobs.as_ref() else {
            return Ok(());
        };
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(()); // closed before, by this or another clone
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        // No answer means the committer is gone: nothing was synced, so say so.
        let result = match jobs.send(CommitJob::Shutdown { reply }) {
            Ok(()) => rx.blocking_recv().unwrap_or(Err(StorageError::Closed)),
            Err(_) => Err(StorageError::Closed),
        };
        if let Some(handle) = self.committer.lock().expect("committer lock").take() {
            let _ = handle.join();
        }
        result
    }

    /// The head of a stream: its last sequence (0 when empty) and the hash of its last record.
    pub fn head(&self, stream: &StreamId) -> Result<StreamHead, StorageError> {
        read_head(&self.shared.db, stream)
    }

    /// The records of a stream with `from <= sequence <= to`, in order. A record that fails
    /// its checks is returned as [`StorageError::Corrupt`] naming the stream and sequence.
    pub fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<Record, StorageError>> + '_ {
        let start = keys::stream_key(keys::EVENTS, stream, from.max(1));
        let end = keys::stream_key(keys::EVENTS, stream, to);
        let stream = stream.clone();
        self.shared.db.range(start..=end).map(move |entry| {
            let (key, value) = entry?;
            let (_, sequence) = keys::parse_stream_key(&key).unwrap_or((stream.clone(), 0));
            decode_checked(&stream, sequence, &value)
        })
    }

    /// Every stream (optionally of one aggregate type) with its last sequence, in key order.
    /// Jumps from stream to stream instead of reading every event.
    pub fn streams(
        &self,
        aggregate_type: Option<&str>,
    ) -> impl Iterator<Item = Result<(StreamId, u64), StorageError>> + '_ {
        let prefix = match aggregate_type {
            Some(t) => {
                let mut p = vec![keys::EVENTS, t.len() as u8];
                p.extend_from_slice(t.as_bytes());
                p
            }
            None => vec![keys::EVENTS],
        };
        let mut cursor = prefix.clone();
        // A type name longer than any stored one has no streams.
        let mut done = aggregate_type.is_some_and(|t| t.len() > keys::AGGREGATE_TYPE_BYTES_MAX);
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let first = match self.shared.db.range(cursor.clone()..).next() {
                None => {
                    done = true;
                    return None;
                }
                Some(Err(e)) => {
                    done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok((key, _))) => key,
            };
            if !first.starts_with(&prefix) {
                done = true;
                return None;
            }
            let Some((stream, _)) = keys::parse_stream_key(&first) else {
                done = true;
                return Some(Err(StorageError::Corrupt {
                    stream: None,
                    sequence: None,
                    reason: "malformed event key".into(),
                }));
            };
            let head = self.head(&stream).map(|h| (stream.clone(), h.sequence));
            match keys::prefix_successor(&keys::stream_prefix(keys::EVENTS, &stream)) {
                Some(next) => cursor = next,
                None => done = true,
            }
            Some(head)
        })
    }

    /// Every event in global order from `from_position`, as (position, stream, sequence).
    pub fn read_global(
        &self,
        from_position: u64,
    ) -> impl Iterator<Item = Result<(u64, StreamId, u64), StorageError>> + '_ {
        let db = &self.shared.db;
        // The index entry holding `from_position` starts at or before it.
        let start = match db.range(..=keys::global_key(from_position)).next_back() {
            Some(Ok((key, _))) if key.first() == Some(&keys::GLOBAL) => key.to_vec(),
            _ => keys::global_key(0).to_vec(),
        };
        db.range(start..=keys::global_key(u64::MAX).to_vec())
            .flat_map(move |entry| {
                let expanded: Vec<Result<(u64, StreamId, u64), StorageError>> = match entry {
                    Err(e) => vec![Err(e.into())],
                    Ok((key, value)) => match (
                        keys::parse_global_key(&key),
                        keys::parse_global_entry(&value),
                    ) {
                        (Some(first), Some(runs)) => expand_runs(first, &runs)
                            .filter(|(pos, _, _)| *pos >= from_position)
                            .map(Ok)
                            .collect(),
                        _ => vec![Err(StorageError::Corrupt {
                            stream: None,
                            sequence: None,
                            reason: "malformed global index entry".into(),
                        })],
                    },
                };
                expanded
            })
    }

    /// Stores a snapshot's bytes at `sequence`. Not part of the command path, not synced:
    /// a snapshot lost in a crash is taken again, and recovery never needs one.
    pub fn put_snapshot(
        &self,
        stream: &StreamId,
        sequence: u64,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        // A failed snapshot write does not poison the journal: snapshots are optional, and
        // the events are untouched by it.
        let key = keys::stream_key(keys::SNAPSHOTS, stream, sequence);
        self.shared.db.insert(key, bytes)?;
        Ok(())
    }

    /// Snapshots of a stream as (sequence, bytes), newest first.
    pub fn snapshots(&self, stream: &StreamId) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let prefix = keys::stream_prefix(keys::SNAPSHOTS, stream);
        let mut out = Vec::new();
        for entry in self.shared.db.scan_prefix(&prefix).rev() {
            let (key, value) = entry?;
            let (_, seq) = keys::parse_stream_key(&key).ok_or_else(|| StorageError::Corrupt {
                stream: Some(stream.to_string()),
                sequence: None,
                reason: "malformed snapshot key".into(),
            })?;
            out.push((seq, value.to_vec()));
        }
        Ok(out)
    }

    /// Every stream that has snapshots, with their sequences, for verification.
    pub fn all_snapshots(
        &self,
    ) -> impl Iterator<Item = Result<(StreamId, u64, Vec<u8>), StorageError>> + '_ {
        self.shared.db.scan_prefix([keys::SNAPSHOTS]).map(|entry| {
            let (key, value) = entry?;
            let (stream, seq) =
                keys::parse_stream_key(&key).ok_or_else(|| StorageError::Corrupt {
                    stream: None,
                    sequence: None,
                    reason: "malformed snapshot key".into(),
                })?;
            Ok((stream, seq, value.to_vec()))
        })
    }

    /// Deletes all but the newest `keep` snapshots of a stream.
    pub fn prune_snapshots(&self, stream: &StreamId, keep: usize) -> Result<usize, StorageError> {
        self.shared.check_writable()?;
        let mut removed = 0;
        for (seq, _) in self.snapshots(stream)?.into_iter().skip(keep) {
            self.shared
                .db
                .remove(keys::stream_key(keys::SNAPSHOTS, stream, seq))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Counts for `evershard stats`.
    pub fn stats(&self) -> Result<JournalStats, StorageError> {
        let mut stats = JournalStats::default();
        for entry in self.shared.db.iter() {
            let (key, value) = entry?;
            match key.first() {
                Some(&keys::EVENTS) => {
                    stats.events += 1;
                    stats.event_bytes += value.len() as u64;
                }
                Some(&keys::SNAPSHOTS) => {
                    stats.snapshots += 1;
                    stats.snapshot_bytes += value.len() as u64;
                }
                Some(&keys::GLOBAL) => {}
                _ => {}
            }
        }
        stats.last_global_position = last_global_position(&self.shared.db)?;
        stats.disk_bytes = self.shared.db.size_on_disk()?;
        Ok(stats)
    }

    /// Checks every record, chain and index. See [`verify`].
    pub fn verify(&self) -> VerifyReport {
        verify::verify(self)
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.shared.db
    }

    /// Durable syncs (flush + fdatasync) completed since open.
    pub fn syncs_done(&self) -> u64 {
        self.shared.syncs_done.load(Ordering::Acquire)
    }

    /// Holds the syncer before its next sync until the returned value is dropped, so that a
    /// test can queue appends deterministically behind one sync.
    #[cfg(feature = "fault-injection")]
    pub fn hold_syncs_for_tests(&self) -> SyncHold {
        self.shared.syncs_held.store(true, Ordering::Release);
        SyncHold(self.shared.clone())
    }

    /// Makes the next flush fail with an I/O error: for poisoning tests only.
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_sync_for_tests(&self) {
        self.shared.fail_next_sync.store(true, Ordering::Release);
    }

    /// Overwrites a stored record's byte, bypassing every check: for corruption tests only.
    #[cfg(feature = "fault-injection")]
    pub fn corrupt_record_for_tests(
        &self,
        stream: &StreamId,
        sequence: u64,
        byte: usize,
    ) -> Result<(), StorageError> {
        let key = keys::stream_key(keys::EVENTS, stream, sequence);
        let mut value = self
            .shared
            .db
            .get(&key)?
            .ok_or(StorageError::Corrupt {
                stream: Some(stream.to_string()),
                sequence: Some(sequence),
                reason: "no such record".into(),
            })?
            .to_vec();
        let i = byte % value.len();
        value[i] ^= 0x5a;
        self.shared.db.insert(key, value)?;
        self.shared.db.flush()?;
        Ok(())
    }
}

/// Releases the syncer held by [`Journal::hold_syncs_for_tests`] when dropped.
#[cfg(feature = "fault-injection")]
pub struct SyncHold(Arc<Shared>);

#[cfg(feature = "fault-injection")]
impl std::fmt::Debug for SyncHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHold")
    }
}

#[cfg(feature = "fault-injection")]
impl Drop for SyncHold {
    fn drop(&mut self) {
        self.0.syncs_held.store(false, Ordering::Release);
    }
}

/// The positions an index entry starting at `first` covers, as (position, stream, sequence).
pub(crate) fn expand_runs(
    first: u64,
    runs: &[keys::GlobalRun],
) -> impl Iterator<Item = (u64, StreamId, u64)> + '_ {
    let mut position = first;
    runs.iter().flat_map(move |run| {
        let start = position;
        position += run.count as u64;
        (0..run.count as u64).map(move |i| (start + i, run.stream.clone(), run.first_sequence + i))
    })
}

/// A stream's head as stored: its last event key and the hash of that record.
fn read_head(db: &sled::Db, stream: &StreamId) -> Result<StreamHead, StorageError> {
    let prefix = keys::stream_prefix(keys::EVENTS, stream);
    match db.scan_prefix(&prefix).next_back() {
        None => Ok(StreamHead {
            sequence: 0,
            hash: record::ZERO_HASH,
        }),
        Some(entry) => {
            let (key, value) = entry?;
            let (_, sequence) =
                keys::parse_stream_key(&key).ok_or_else(|| StorageError::Corrupt {
                    stream: Some(stream.to_string()),
                    sequence: None,
                    reason: "malformed event key".into(),
                })?;
            Ok(StreamHead {
                sequence,
                hash: record::hash(&value),
            })
        }
    }
}

/// The highest committed global position (0 for an empty store).
fn last_global_position(db: &sled::Db) -> Result<u64, StorageError> {
    let corrupt = || StorageError::Corrupt {
        stream: None,
        sequence: None,
        reason: "malformed global index entry".into(),
    };
    match db.scan_prefix([keys::GLOBAL]).next_back() {
        None => Ok(0),
        Some(entry) => {
            let (key, value) = entry?;
            let first = keys::parse_global_key(&key).ok_or_else(corrupt)?;
            let runs = keys::parse_global_entry(&value).ok_or_else(corrupt)?;
            Ok(first + keys::global_entry_len(&runs) - 1)
        }
    }
}

/// Decodes a record and checks it belongs where it is stored.
pub(crate) fn decode_checked(
    stream: &StreamId,
    sequence: u64,
    bytes: &[u8],
) -> Result<Record, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        stream: Some(stream.to_string()),
        sequence: Some(sequence),
        reason,
    };
    let record = Record::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    if record.sequence != sequence
        || record.aggregate_type != stream.aggregate_type
        || record.aggregate_id != stream.aggregate_id
    {
        return Err(corrupt(format!(
            "record says {}/{}#{}, stored under {stream}#{sequence}",
            record.aggregate_type, record.aggregate_id, record.sequence
        )));
    }
    Ok(record)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub events: u64,
    pub event_bytes: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub last_global_position: u64,
    pub disk_bytes: u64,
}
