//! The journal: an append-only event log on sled. **Architecture Invariant:** this is the only
//! module of evershard that touches sled.
//!
//! One sled tree holds every keyspace (see [`keys`]), so that the events of a command, their
//! global index entries and — in later subsystems — outbox entries, timers and idempotency
//! records are written by one atomic `apply_batch`. Appends go through a single committer
//! thread ([`committer`]) which batches concurrent requests into one sled batch and one flush
//! (group commit). Reads go straight to sled.
//!
//! A store made with [`WritePath::Log`] keeps its records in an append-only segment log
//! instead ([`logstore`], docs/design.md, "The next write path"): a group is one frame and one
//! `fdatasync`, sled keeps the heads and the other keyspaces.

mod checkpoint;
mod cluster_state;
mod committer;
mod deferred;
pub(crate) mod failpoint;
mod fault;
mod idempotency;
pub(crate) mod keyring;
pub(crate) mod keys;
pub(crate) mod merkle;
mod probe;
pub(crate) mod publisher;
pub(crate) mod record;
pub(crate) mod segments;
// The segment log (docs/design.md, "The next write path"): the committer writes it for
// stores made with `WritePath::Log`.
pub(crate) mod logindex;
mod logstore;
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) mod seglog;
mod snapfile;
pub(crate) mod topics;
mod verify;
mod verify_log;

// The writing types are public only with `fault-injection` (see lib.rs).
pub use checkpoint::{CheckpointInfo, CheckpointMark};
pub(crate) use committer::Seal;
#[cfg_attr(not(feature = "fault-injection"), allow(unused_imports))]
pub use committer::{AppendRequest, Committed, NewEvent, WriteOp, EVENTS_PER_APPEND_MAX};
pub use record::{AtRest, Record, RecordError};
pub use verify::{
    IssueKind, StreamVisitor, VerifyIssue, VerifyOptions, VerifyReport, VerifyScope,
    VisitorFactory, VERIFY_ISSUES_MAX,
};

use crate::error::{AppendError, Corruption, InvalidRequest, OpenError, StorageError};
use chrono::{DateTime, Utc};
use committer::{CommitJob, Committer, ReplyTo};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;

pub use evershard_model::StreamId;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after the sled flush **and** an fdatasync of sled's data file that
    /// hold the append (on the segment log: the `fdatasync` of the frame that holds it). A
    /// crash at any moment loses nothing acknowledged. The default.
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
    /// sled's page cache. sled counts it in serialized bytes, and its heap is about twice
    /// that: with 1,000,000 aggregates touched, 256 MiB cost +742 MiB resident and 32 MiB
    /// +290 MiB (800 active aggregates), at the same durable rate. An aggregate's state lives
    /// in its actor, so the cache serves recoveries, lookups of new streams and scans, which
    /// the OS page cache backs anyway.
    pub cache_bytes: u64,
    /// Where a **new** store keeps its events; a store keeps the write path it was made
    /// with, whatever this says.
    pub write_path: WritePath,
}

/// How long [`JournalWriter::close`] waits for the committer's last sync before it answers
/// [`StorageError::CloseStalled`]: sled 0.34's flush can wait forever (spacejam/sled#1412).
/// A close after a heavy load syncs what sled holds in memory, seconds at most.
pub const CLOSE_WAIT_MS_MAX: u64 = 120_000;

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Durable,
            batch_events_max: 4096,
            batch_bytes_max: 8 * 1024 * 1024,
            cache_bytes: 32 * 1024 * 1024,
            write_path: WritePath::from_env(),
        }
    }
}

/// Where a store keeps its events (docs/design.md, "The next write path").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePath {
    /// Every record under its own sled key, with a global index in sled: every store made
    /// before the segment log (they keep it forever), and new stores when asked for.
    Sled,
    /// Records in the append-only segment log (`<store>/log`), one frame and one
    /// `fdatasync` per group commit; sled keeps stream heads (checkpointed), timers,
    /// idempotency records, keys, topics and snapshots. The default for new stores. The
    /// test hooks that delete, swap or truncate sled's records answer
    /// [`StorageError::NotOnLog`].
    Log,
}

impl WritePath {
    /// The variable that picks the default for new stores (`log` or `sled`): how the test
    /// suite runs in both positions (`.ci/run` runs it again with `sled`).
    pub const ENV: &'static str = "EVERSHARD_WRITE_PATH";

    /// [`WritePath::Sled`] when `EVERSHARD_WRITE_PATH=sled`, else [`WritePath::Log`].
    pub fn from_env() -> WritePath {
        match std::env::var(Self::ENV).as_deref() {
            Ok("sled") => WritePath::Sled,
            _ => WritePath::Log,
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
    /// sled's database. Taken out (and so closed, releasing the directory lock) by
    /// [`JournalWriter::close`]; every read after that answers [`StorageError::Closed`].
    db: RwLock<Option<sled::Db>>,
    dir: PathBuf,
    poisoned: AtomicBool,
    /// What failed first when the journal was poisoned, in plain words.
    poison_cause: Mutex<Option<String>>,
    /// Set by the first `close`.
    closed: AtomicBool,
    /// Flush + fdatasync rounds the syncer has completed: with group commit, far fewer than
    /// appends.
    syncs_done: std::sync::atomic::AtomicU64,
    /// The watermarks: acknowledged (synced in durable mode, applied in buffered mode) and
    /// synced (see [`Watermarks`]). Readers that must never see an event that
    /// a crash could take back (the topic indexer) stop here; `durable_moved` wakes them.
    durable_position: Mutex<Watermarks>,
    durable_moved: std::sync::Condvar,
    /// A writer's exclusive `flock` on the marker file, held while it is open: how readers
    /// tell a running engine (whose files they must not copy) from another reader.
    writer_lock: Mutex<Option<File>>,
    /// A reader that could not open the store in place (another reader holds sled's lock, or
    /// the store cannot be written) reads a private copy here, removed when it is dropped.
    private_copy: Option<PathBuf>,
    /// Encryption at rest: the key provider, the data keys in memory, erasures.
    keyring: keyring::Keyring,
    /// The SHA-256 of each record the committer wrote, in global order, for the Merkle tree
    /// maintainer (`None` until one starts): what spares it reading every record back.
    record_hashes: Mutex<Option<merkle::RecordHashFeed>>,
    /// The segment log and its heads, for a store on [`WritePath::Log`].
    log: Option<logstore::LogParts>,
    /// Which sled entry holds each stored idempotency key's record (see `idempotency`).
    idempotency: std::sync::OnceLock<Mutex<idempotency::IdempotencyIndex>>,
    /// Fault injection: while set, the syncer waits before each sync.
    #[cfg(feature = "fault-injection")]
    pub(crate) syncs_held: AtomicBool,
    /// Fault injection: the next flush fails as if the disk had refused it.
    #[cfg(feature = "fault-injection")]
    fail_next_sync: AtomicBool,
}

/// How long closing a journal waits for sled to let go of the directory lock.
const UNLOCK_WAIT_MS_MAX: u64 = 5_000;

/// The journal's two watermarks (global positions; every position at or below one counts).
#[derive(Clone, Copy, Debug, Default)]
struct Watermarks {
    /// Acknowledged: [`Journal::durable_position`].
    acknowledged: u64,
    /// On stable storage, or (buffered, sled layout) as safe as the events for what is
    /// derived from them: what followers and the snapshot writer wait for. On the segment
    /// log in buffered mode it trails `acknowledged` by a sync: the frames and sled are
    /// separate files, and a follower's entries (topic offsets, tree nodes, a snapshot)
    /// written into sled before the frame's `fdatasync` could outlive the frame in a power
    /// cut (found by review, 2026-11-28).
    synced: u64,
}

/// The data key a reader opened the last sealed record with, and the keyring's erasure
/// epoch when it was looked up (see `Journal::visit_stream`).
struct Opener {
    key: crate::crypto::DataKey,
    epoch: u64,
}

/// A stream read of more than this many records with sealed payloads among them opens them
/// on a second thread ahead of the fold (`Journal::visit_opening_ahead`): below it, starting a
/// thread costs more than it saves.
const OPEN_AHEAD_MIN_RECORDS: usize = 512;

/// Records whose payloads the opening thread hands over at a time.
const OPEN_AHEAD_CHUNK_RECORDS: usize = 128;

/// Subjects whose data keys one batch of [`Journal::upgrade_data_keys`] upgrades at most
/// (two entries each): it bounds the batch, and the time writers wait to make a new key.
pub const UPGRADE_BATCH_SUBJECTS_MAX: usize = 1_024;

/// A keyring lookup's failure as the journal reports it.
fn key_lookup_error(e: keyring::KeyLookup) -> StorageError {
    match e {
        keyring::KeyLookup::Storage(s) => s,
        keyring::KeyLookup::Key(source) => StorageError::Key {
            stream: None,
            sequence: None,
            source,
        },
        keyring::KeyLookup::Erased => StorageError::Key {
            stream: None,
            sequence: None,
            source: crate::crypto::KeyError::Provider {
                reason: "the subject's key was erased while it was being read".into(),
            },
        },
        keyring::KeyLookup::Forgetting => StorageError::Key {
            stream: None,
            sequence: None,
            source: crate::crypto::KeyError::Provider {
                reason: "the subject is being forgotten".into(),
            },
        },
    }
}

/// Drops a handle on sled's database and waits (bounded) until the directory lock is free.
/// sled 0.34 hands log writes to its own thread pool (`threadpool::spawn`), whose jobs hold
/// the log file: the `flock` can outlive the last `Db` handle by a moment. Waiting here makes
/// "closed" mean "unlocked", so the same process can reopen the store at once. (A read
/// iterator still alive holds its own handle; then this waits for the bound and warns.)
fn close_db(db: Option<sled::Db>, dir: &Path) {
    let Some(db) = db else { return };
    drop(db);
    for _ in 0..UNLOCK_WAIT_MS_MAX {
        if !lock_is_held(dir) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    tracing::warn!(dir = %dir.display(), "sled still holds the store's lock after close");
}

impl Drop for Shared {
    /// The last handle of a journal that was not closed (a read-only view, or an engine
    /// dropped without shutdown): release the lock before returning, as `close` does.
    fn drop(&mut self) {
        let db = self.db.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        match &self.private_copy {
            Some(copy) => {
                close_db(db, copy);
                if let Err(e) = std::fs::remove_dir_all(copy) {
                    tracing::warn!(copy = %copy.display(), %e, "could not remove the private copy of a store");
                }
            }
            None => close_db(db, &self.dir),
        }
        self.writer_lock
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

impl Shared {
    fn new(db: sled::Db, dir: PathBuf, log: Option<logstore::LogParts>) -> Arc<Shared> {
        Arc::new(Shared {
            log,
            db: RwLock::new(Some(db)),
            dir,
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            closed: AtomicBool::new(false),
            syncs_done: std::sync::atomic::AtomicU64::new(0),
            durable_position: Mutex::new(Watermarks::default()),
            durable_moved: std::sync::Condvar::new(),
            writer_lock: Mutex::new(None),
            private_copy: None,
            keyring: keyring::Keyring::default(),
            record_hashes: Mutex::new(None),
            idempotency: std::sync::OnceLock::new(),
            #[cfg(feature = "fault-injection")]
            syncs_held: AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            fail_next_sync: AtomicBool::new(false),
        })
    }

    /// A handle on sled's database (a cheap clone), or `Closed` after close.
    fn db(&self) -> Result<sled::Db, StorageError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StorageError::Closed)
    }

    fn check_writable(&self) -> Result<(), StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    /// Why a request's reply channel closed without an answer: the committer dropped it
    /// while failing (a panic, which poisons the journal), or the journal was closed.
    fn gone(&self) -> StorageError {
        if self.poisoned.load(Ordering::Acquire) {
            StorageError::Poisoned
        } else {
            StorageError::Closed
        }
    }

    /// Moves the durable watermark up to `position` (never down) and wakes its waiters: a
    /// group acknowledged. On the sled layout that is also the synced watermark (what
    /// followers derive goes into the same sled log after the events, and sled recovers a
    /// prefix); on the segment log [`Shared::mark_synced`] moves that one.
    fn mark_durable(&self, position: u64) {
        let mut marks = self
            .durable_position
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let moved =
            position > marks.acknowledged || (self.log.is_none() && position > marks.synced);
        marks.acknowledged = marks.acknowledged.max(position);
        if self.log.is_none() {
            marks.synced = marks.synced.max(position);
        }
        if moved {
            self.durable_moved.notify_all();
        }
    }

    /// Moves both watermarks up to `position`: every group up to it is on stable storage (the
    /// syncer, after its `fdatasync`; an open, for what survived).
    fn mark_synced(&self, position: u64) {
        let mut marks = self
            .durable_position
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if position > marks.acknowledged || position > marks.synced {
            marks.acknowledged = marks.acknowledged.max(position);
            marks.synced = marks.synced.max(position);
            self.durable_moved.notify_all();
        }
    }

    /// Wakes the watermark's waiters without moving it (so they can see a stop flag).
    fn wake_durable_waiters(&self) {
        let _guard = self
            .durable_position
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.durable_moved.notify_all();
    }

    fn poison(&self, what: &str, err: &dyn std::fmt::Display) {
        let err = crate::error::plain_message(&err.to_string());
        tracing::error!(%err, "journal poisoned after failed {what}; refusing further writes");
        self.poison_cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| format!("{what} failed: {err}"));
        self.poisoned.store(true, Ordering::Release);
    }
}

/// Reads of the embedded event journal: the view [`crate::Engine::journal`] hands out and what
/// [`Journal::open_read_only`] opens for auditors. It has no write method: commands are the
/// only way events get in. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

/// The writing side of the journal: appends through the group committer, snapshot writes,
/// close. The engine owns one; outside the engine it exists for tests and benchmarks only
/// (behind the `fault-injection` feature), because an append bypasses `decide`. Derefs to the
/// read view. Cheap to clone; every clone shares one committer.
#[derive(Clone)]
pub struct JournalWriter {
    journal: Journal,
    jobs: mpsc::Sender<CommitJob>,
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// The answer to the shutdown a close sent and stopped waiting for
    /// ([`StorageError::CloseStalled`]): the next close waits for it.
    stalled_close: Arc<Mutex<Option<CloseAnswer>>>,
}

type CloseAnswer = tokio::sync::oneshot::Receiver<Result<(), StorageError>>;

impl std::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalWriter")
            .field("dir", &self.journal.shared.dir)
            .finish()
    }
}

impl std::ops::Deref for JournalWriter {
    type Target = Journal;
    fn deref(&self) -> &Journal {
        &self.journal
    }
}

/// Maps sled's open error. sled 0.34 (`Config::try_lock`, config.rs) reports a held lock as
/// `Error::Io` of kind `Other` whose payload is a *string* with fs2's error inside: neither
/// the kind nor the OS error survives. So on an I/O error we probe the lock ourselves with
/// the same `flock(LOCK_EX | LOCK_NB)` sled uses (fs2): `EWOULDBLOCK` means another open
/// file description — another process, or another journal in this one — holds it.
///
/// A damaged `conf` makes sled answer "may have been created using a sled version earlier than
/// 0.29" (not UTF-8) or a bare corruption (a line without `: `); both become
/// [`OpenError::DamagedConf`] when our own reading of `conf` agrees that it is not sled's.
fn map_open_error(dir: &Path, err: sled::Error) -> OpenError {
    if matches!(err, sled::Error::Io(_)) && lock_is_held(dir) {
        return OpenError::Locked {
            dir: dir.to_path_buf(),
        };
    }
    let conf_refused = matches!(
        &err,
        sled::Error::Unsupported(_) | sled::Error::Corruption { .. }
    );
    if conf_refused && !probe::is_sled_conf(&dir.join("conf")) {
        return OpenError::DamagedConf {
            dir: dir.to_path_buf(),
        };
    }
    OpenError::storage(dir, err)
}

/// How long a writer's open waits for the readers that hold the marker file shared while
/// they open the store or copy it (see `Journal::open_read_only`) before it refuses with
/// [`OpenError::Locked`].
const MARKER_WAIT_MS_MAX: u64 = 30_000;

/// The writer's exclusive lock on the marker file (see `Shared::writer_lock`), taken before
/// sled's open, whose recovery writes the store: a reader holds it shared for the moment of
/// its own open or copy, so wait for that, bounded, then refuse. `None` for a store without
/// a marker file (made before it existed). Until 2026-11-28 it was taken after sled's open
/// and, past a 5 s wait, skipped: an engine could then recover and write a store a reader
/// was copying, and run without the lock (found by review).
fn lock_marker(dir: &Path) -> Result<Option<File>, OpenError> {
    use fs2::FileExt;
    let Ok(file) = File::open(dir.join(probe::MARKER_FILE)) else {
        return Ok(None);
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(MARKER_WAIT_MS_MAX);
    let locked = || OpenError::Locked {
        dir: dir.to_path_buf(),
    };
    loop {
        if file.try_lock_exclusive().is_ok() {
            return Ok(Some(file));
        }
        // Readers hold it shared, a running writer exclusively: only readers are waited for.
        if FileExt::try_lock_shared(&file).is_err() {
            return Err(locked());
        }
        FileExt::unlock(&file).map_err(|e| OpenError::storage(dir, e))?;
        if std::time::Instant::now() >= deadline {
            return Err(locked());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// How long a reader's open tries the marker file's shared lock before it reports
/// [`OpenError::Locked`]: the moment a closing writer's lock may outlive its close.
const READER_MARKER_WAIT_MS_MAX: u64 = 250;

/// Takes the marker file's shared lock, trying for up to [`READER_MARKER_WAIT_MS_MAX`]: an
/// engine's exclusive `flock` belongs to the open file, and a process forked (to run a
/// child) while the engine was open holds a copy of it until its `exec` closes it. So the
/// lock can outlive the engine's `shutdown` by that moment: a test opening the store to
/// read right after a shutdown was refused as `Locked` once in CI, while another test of the
/// same binary started child processes (2026-11-28). A running engine still holds it after
/// the wait: refused then.
fn lock_marker_shared(marker: &File) -> bool {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(READER_MARKER_WAIT_MS_MAX);
    loop {
        if fs2::FileExt::try_lock_shared(marker).is_ok() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Whether a read-only open that failed this way can read a private copy instead.
fn may_read_a_copy(e: &OpenError) -> bool {
    match e {
        OpenError::Locked { .. } | OpenError::WritesPending { .. } => true,
        OpenError::Storage { source, .. } => match source.as_ref() {
            StorageError::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::StorageFull
            ),
            StorageError::Sled(e) => {
                let text = e.to_string();
                text.contains("Read-only file system")
                    || text.contains("Permission denied")
                    || text.contains("No space left")
            }
            _ => false,
        },
        _ => false,
    }
}

/// Copies a store's files (sled's `db`, `conf`, `snap.*`, `blobs/`, the segment log's
/// `log/`, the marker) into a new
/// private directory under the temp dir, for reading. Files are copied as they are; nothing
/// in `dir` is written.
fn copy_store(dir: &Path) -> std::io::Result<PathBuf> {
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let copy = std::env::temp_dir().join(format!(
        "evershard-read-{}-{}",
        std::process::id(),
        COPIES.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().mode(0o700).create(&copy)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let to = copy.join(entry.file_name());
            if kind.is_file() {
                copy_private(&entry.path(), &to)?;
            } else if kind.is_dir()
                && (entry.file_name() == "blobs" || entry.file_name() == logstore::LOG_DIR)
            {
                std::fs::DirBuilder::new().mode(0o700).create(&to)?;
                for blob in std::fs::read_dir(entry.path())? {
                    let blob = blob?;
                    copy_private(&blob.path(), &to.join(blob.file_name()))?;
                }
            }
        }
        // The copy is sled's to write (its recovery does): make it ours to write even when
        // the original's files are read-only, and ours alone, as the store is (0700 and
        // 0600, docs/security.md): `set_readonly(false)` made it writable by everyone, and
        // readable by everyone under the temp dir (found by review, 2026-11-28).
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o700))?;
        for entry in walk(&copy)? {
            let mode = if entry.is_dir() { 0o700 } else { 0o600 };
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(copy),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&copy);
            Err(e)
        }
    }
}

/// Copies the file `from` to a new file `to` that is private (0600) from its creation:
/// `fs::copy` gives the copy the original's mode until the final `chmod`, and a log segment
/// is created 0644 under the usual umask, so another reader of the temp dir could see it
/// readable by all in between (a test that checks every copy's mode met it).
fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = std::fs::File::open(from)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    std::io::copy(&mut source, &mut target)?;
    Ok(())
}

/// After sled refused the store at `dir` with `err`: when `err` is sled's corruption and
/// sled's snapshot files are there, whether a copy of the store without them reads clean
/// (see [`snapfile`]); then those files, else `None` (the damage is elsewhere, or not known).
fn snapshot_file_damage(dir: &Path, err: &OpenError) -> Option<Vec<PathBuf>> {
    let OpenError::Storage { source, .. } = err else {
        return None;
    };
    let StorageError::Corrupt {
        cause: Corruption::Sled(_),
        ..
    } = **source
    else {
        return None;
    };
    let files = snapfile::snapshot_files(dir).ok()?;
    if files.is_empty() {
        return None;
    }
    match snapfile::check_without(dir) {
        Ok(()) => Some(files),
        Err(why) => {
            tracing::warn!(dir = %dir.display(), %why, "sled refuses the store as corrupt, and not only because of its snapshot file");
            None
        }
    }
}

/// Every file and directory under `dir` (one level of subdirectories: a store's layout).
fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut all = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path)? {
                all.push(inner?.path());
            }
        }
        all.push(path);
    }
    Ok(all)
}

/// True when `flock` on sled's data file `<dir>/db` would block.
fn lock_is_held(dir: &Path) -> bool {
    use fs2::FileExt;
    let Ok(file) = File::open(dir.join("db")) else {
        return false;
    };
    match file.try_lock_exclusive() {
        Ok(()) => {
            let _ = FileExt::unlock(&file);
            false
        }
        Err(e) => e.raw_os_error() == fs2::lock_contended_error().raw_os_error(),
    }
}

/// `create_dir_all`, and then an fsync of the parent of every directory it created: a new
/// directory's name is durable only once its parent directory is synced, and without it a
/// power cut can take the whole new store with it (found by the power-loss test in
/// `testing/lossyfs`). The store directory's own entries are synced once the store exists.
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    std::fs::create_dir_all(dir)?;
    if fault::skip(fault::Sync::Dir) {
        return Ok(());
    }
    for created in missing {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Makes durable what a previous process left in the store's files, before sled's recovery
/// reads it: fdatasyncs `db` and every blob file, then fsyncs `blobs/` and the store
/// directory. sled's recovery takes what it reads for stable and builds on it — it writes a
/// snapshot (synced) recording the log's end as it read it, and zeroes what lies after — but a
/// process that was killed (or a read-only open, which writes too) leaves log items that only
/// `sync_file_range` ever touched. Without this, a power cut after the next open could leave a
/// durable snapshot pointing into a log tail that was never durable.
fn sync_before_recovery(dir: &Path) -> std::io::Result<()> {
    if fault::skip(fault::Sync::Dir) {
        return Ok(());
    }
    let ignore_missing = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    ignore_missing(File::open(dir.join("db")).and_then(|f| f.sync_data()))?;
    let blobs = dir.join("blobs");
    match std::fs::read_dir(&blobs) {
        Ok(entries) => {
            for entry in entries {
                ignore_missing(File::open(entry?.path()).and_then(|f| f.sync_data()))?;
            }
            File::open(&blobs)?.sync_all()?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    File::open(dir)?.sync_all()
}

/// Makes what sled's recovery did to the store's names durable: fsyncs the store directory
/// and `blobs/`. Opening runs sled's recovery, which writes `snap.<lsn>.generating`, syncs it,
/// renames it to `snap.<lsn>`, removes the older snapshot files, and removes blob files above
/// the recovered log's end (`gc_blobs`) — and never syncs a directory, while the zeroing of the
/// log's torn tail it does in the same recovery is synced at once. sled assumes the renamed
/// snapshot is in place before anything written after it; POSIX promises that only after a
/// sync of the directory. Called right after sled opens, before any new write.
fn sync_recovered_names(dir: &Path) -> std::io::Result<()> {
    if fault::skip(fault::Sync::Dir) {
        return Ok(());
    }
    File::open(dir)?.sync_all()?;
    match File::open(dir.join("blobs")) {
        Ok(blobs) => blobs.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The format marker stored under `m|format` of a store on the segment log: its frames may
/// be frame format 2 (scrubbable key entries, 2026-11-28), which a build before that reads
/// as a torn last group, and in the last segment would cut, acknowledged frames with it.
/// Such a build refuses this marker instead. Written when a log store is made, and at the
/// first writable open of a log store made before (durably, before any frame is written).
const STORE_FORMAT: &[u8] = b"evershard-journal-v2";
/// The format marker of a store on the sled layout (no frames), and of a log store made
/// before frame format 2.
const STORE_FORMAT_V1: &[u8] = b"evershard-journal-v1";

/// Whether `marker` is one of evershard's store format markers.
fn is_store_format(marker: &[u8]) -> bool {
    marker == STORE_FORMAT || marker == STORE_FORMAT_V1
}

fn meta_format_key() -> Vec<u8> {
    [&[keys::META][..], b"format"].concat()
}

/// Refuses a store whose format marker is not evershard's.
fn check_format(dir: &Path, found: Option<sled::IVec>) -> Result<(), OpenError> {
    match found {
        Some(v) if is_store_format(&v) => Ok(()),
        other => Err(OpenError::storage(
            dir,
            StorageError::corrupt_store(Corruption::UnknownStoreFormat {
                found: other.map(|v| String::from_utf8_lossy(&v).into_owned()),
            }),
        )),
    }
}

/// The checkpoint marker of the store, if it is a checkpoint.
fn read_checkpoint_mark(dir: &Path, db: &sled::Db) -> Result<Option<CheckpointMark>, OpenError> {
    match db
        .get(checkpoint::CHECKPOINT_KEY)
        .map_err(|e| OpenError::storage(dir, e))?
    {
        None => Ok(None),
        Some(v) => CheckpointMark::decode(&v).map(Some).ok_or_else(|| {
            OpenError::storage(
                dir,
                StorageError::corrupt_store(Corruption::MalformedKey {
                    keyspace: "checkpoint marker",
                }),
            )
        }),
    }
}

fn refuse_checkpoint(dir: PathBuf, mark: CheckpointMark) -> OpenError {
    if mark.complete {
        OpenError::Checkpoint {
            dir,
            source_dir: mark.source_dir,
            cut_position: mark.cut_position,
        }
    } else {
        OpenError::IncompleteCheckpoint {
            dir,
            source_dir: mark.source_dir,
        }
    }
}

impl JournalWriter {
    /// Opens (or creates) a journal for reading and writing.
    pub fn open(dir: impl AsRef<Path>, config: JournalConfig) -> Result<JournalWriter, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |e: std::io::Error| OpenError::storage(&dir, e);
        // Nothing is created or written before the directory is known to hold nothing or an
        // evershard store: sled would adopt anything (see `probe`).
        let found = probe::probe(&dir)?;
        create_dir_durably(&dir).map_err(io)?;
        let new_store = matches!(found, probe::Probe::Missing | probe::Probe::Empty);
        if new_store {
            // Private by default (docs/security.md): the directory before sled creates
            // anything in it, its files right after.
            set_mode(&dir, 0o700).map_err(io)?;
            probe::write_marker(&dir, !fault::skip(fault::Sync::Dir)).map_err(io)?;
        } else {
            crate::crypto::warn_if_readable_by_others(&dir, "the store directory");
        }
        let mut writer_lock = lock_marker(&dir)?;
        sync_before_recovery(&dir).map_err(io)?;
        let flush_every_ms = match config.durability {
            // No periodic flush: the syncer flushes and syncs every group itself, blob files
            // before the data file. sled's flusher would fsync the data file behind its back,
            // making log entries durable that point at blob files not yet synced.
            Durability::Durable => None,
            Durability::Buffered { flush_every_ms } => Some(flush_every_ms.max(1)),
        };
        // A store without `conf` (new, or one whose `conf` was removed) gets one from sled's
        // open, which sled never syncs: sync it below, as for a new store.
        let conf_was_missing = !dir.join("conf").exists();
        let open_sled = || {
            // The segment size that keeps every tree node out of sled's blob files for a new
            // store; an existing store keeps its own (see `segments`).
            segments::sled_config(&dir)
                .cache_capacity(config.cache_bytes)
                .flush_every_ms(flush_every_ms)
                // An append-only journal never rewrites in place: favour write throughput
                // over sled's space-saving rewrites.
                .mode(sled::Mode::HighThroughput)
                .open()
                .map_err(|e| map_open_error(&dir, e))
        };
        let db = match open_sled() {
            Ok(db) => db,
            Err(err) => {
                let Some(files) = snapshot_file_damage(&dir, &err) else {
                    return Err(err);
                };
                // The log reads clean without sled's snapshot files: move them aside (never
                // delete) and let sled rebuild its snapshot from the log.
                for file in files {
                    let aside = snapfile::move_aside(&file).map_err(io)?;
                    tracing::warn!(
                        damaged = %file.display(),
                        moved_to = %aside.display(),
                        "sled's snapshot file was damaged and the log reads clean without it: \
                         moved it aside; sled rebuilds it from the log"
                    );
                }
                open_sled()?
            }
        };
        sync_recovered_names(&dir).map_err(io)?;
        if new_store {
            make_files_private(&dir).map_err(io)?;
        }
        let sled_err = |e: sled::Error| OpenError::storage(&dir, e);
        let meta_key = meta_format_key();
        // The format marker, durable (sled's flush, then an fdatasync of its file).
        let write_format_marker = |marker: &[u8]| -> Result<(), OpenError> {
            db.insert(&meta_key, marker).map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
            if !fault::skip(fault::Sync::Fdatasync) {
                File::open(dir.join("db"))
                    .and_then(|f| f.sync_data())
                    .map_err(io)?;
            }
            Ok(())
        };
        match db.get(&meta_key).map_err(sled_err)? {
            // A store made before the marker file whose `db` merely holds the marker's bytes.
            None if found == (probe::Probe::Store { marked: false }) => {
                return Err(OpenError::NotAStore {
                    dir: dir.clone(),
                    found: "a sled database without evershard's format marker".into(),
                });
            }
            None => {
                let marker = match config.write_path {
                    WritePath::Log => {
                        logstore::mark_log_store(&db).map_err(|e| OpenError::storage(&dir, e))?;
                        STORE_FORMAT
                    }
                    WritePath::Sled => STORE_FORMAT_V1,
                };
                // sled's flush does not reach stable storage (see the syncer); the markers
                // must, before anything is acknowledged: on the segment log nothing else
                // syncs sled's file for a group, and a store that lost `m|write-path` would
                // reopen on the sled layout without its log (found by the power-loss test).
                write_format_marker(marker)?;
                // A new store: make its files' directory entries durable too, and sled's
                // `conf`, which sled writes at creation and never syncs: a torn `conf`
                // makes sled refuse to open the store (found by the power-loss test).
                if !fault::skip(fault::Sync::Dir) {
                    File::open(dir.join("conf"))
                        .and_then(|f| f.sync_all())
                        .map_err(io)?;
                    File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
                }
            }
            format => {
                let v1 = format.as_deref() == Some(STORE_FORMAT_V1);
                check_format(&dir, format)?;
                if v1 && logstore::is_log_store(&db).map_err(|e| OpenError::storage(&dir, e))? {
                    // Before this session's first frame, which may be format 2: durable, so
                    // that no earlier build opens the store after it (see `STORE_FORMAT`).
                    write_format_marker(STORE_FORMAT)?;
                }
                if conf_was_missing && !fault::skip(fault::Sync::Dir) {
                    File::open(dir.join("conf"))
                        .and_then(|f| f.sync_all())
                        .map_err(io)?;
                    File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
                }
                if let Some(mark) = read_checkpoint_mark(&dir, &db)? {
                    close_db(Some(db), &dir);
                    return Err(refuse_checkpoint(dir, mark));
                }
                if found == (probe::Probe::Store { marked: false }) {
                    probe::write_marker(&dir, !fault::skip(fault::Sync::Dir)).map_err(io)?;
                }
            }
        }
        // sled 0.34's flush() ends in sync_file_range, which does not reach stable storage
        // (spacejam/sled#1452). Durable mode fdatasyncs sled's data file itself.
        let data_file = File::open(dir.join("db")).map_err(io)?;
        let storage = |e| OpenError::storage(&dir, e);
        let log = match logstore::is_log_store(&db).map_err(storage)? {
            true => Some(logstore::LogParts::open_writable(&dir, &db).map_err(storage)?),
            false => None,
        };
        let next_global = match &log {
            Some(log) => log.next_position(),
            None => last_global_position(&db).map_err(storage)? + 1,
        };
        let frames_end = log.as_ref().map(|l| l.read_log().end_of_frames());
        let shared = Shared::new(db.clone(), dir.clone(), log);
        // Before the committer starts: every group it writes is added to a built index.
        let (index, lost) =
            idempotency::IdempotencyIndex::build(&db, frames_end).map_err(storage)?;
        if !lost.is_empty() {
            // Entries whose frames a crash took: gone, durably, before a frame of this
            // session can lie at their addresses (and pass for theirs).
            let mut batch = sled::Batch::default();
            for key in &lost {
                batch.remove(key);
            }
            db.apply_batch(batch)
                .and_then(|()| db.flush().map(drop))
                .map_err(|e| storage(e.into()))?;
            data_file.sync_data().map_err(io)?;
            tracing::warn!(
                entries = lost.len(),
                "removed idempotency entries whose frames a crash took"
            );
        }
        let _ = shared.idempotency.set(Mutex::new(index));
        if let Some(parts) = &shared.log {
            // An erasure a crash kept from scrubbing the log's frames (see `logstore`). A
            // failure leaves the request for the next open, as it does for the erasure: the
            // store serves meanwhile (the erasure holds; only the old bytes wait).
            let scrub = parts.scrub_if_asked(&db, || {
                db.flush()?;
                data_file.sync_data()?;
                Ok(())
            });
            if let Err(error) = scrub {
                tracing::error!(%error, "scrubbing erased keys from the log's frames failed; the next open retries");
            }
        }
        // A store that got its marker file at this open is locked now.
        if writer_lock.is_none() {
            writer_lock = lock_marker(&dir)?;
        }
        *shared.writer_lock.lock().unwrap_or_else(|e| e.into_inner()) = writer_lock;
        // What sled recovered at open is what survived: the watermark starts there.
        shared.mark_synced(next_global - 1);
        let (tx, rx) = mpsc::channel();
        let committer = Committer::new(shared.clone(), db, data_file, config, next_global);
        let handle = std::thread::Builder::new()
            .name("evershard-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(io)?;
        Ok(JournalWriter {
            journal: Journal { shared },
            jobs: tx,
            committer: Arc::new(Mutex::new(Some(handle))),
            stalled_close: Arc::default(),
        })
    }

    /// The read view of this journal.
    pub fn reader(&self) -> &Journal {
        &self.journal
    }

    /// Submits an append without waiting for it: the receiver answers when it is
    /// acknowledged. Appends submitted one after another commit in that order.
    pub(crate) fn submit(
        &self,
        request: AppendRequest,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Committed, AppendError>>, AppendError> {
        self.shared.check_writable()?;
        request.stream.validate().map_err(InvalidRequest::from)?;
        request.validate()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(CommitJob::Append {
                request,
                reply: ReplyTo::new(reply, self.shared.clone()),
            })
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    /// Appends the events of one command atomically, if the stream is at `expected_version`.
    /// Resolves when the append is acknowledged under the configured [`Durability`].
    pub async fn append(&self, request: AppendRequest) -> Result<Committed, AppendError> {
        let rx = self.submit(request)?;
        rx.await
            .map_err(|_| AppendError::Storage(self.shared.gone()))?
    }

    /// [`JournalWriter::append`] for callers outside an async runtime.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub fn append_blocking(&self, request: AppendRequest) -> Result<Committed, AppendError> {
        let rx = self.submit(request)?;
        rx.blocking_recv()
            .map_err(|_| AppendError::Storage(self.shared.gone()))?
    }

    /// Waits until everything appended so far is on stable storage (flush + fdatasync).
    /// Blocking: from async code call it through `spawn_blocking`.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(CommitJob::Sync {
                reply: ReplyTo::new(reply, self.shared.clone()),
            })
            .map_err(|_| StorageError::Closed)?;
        rx.blocking_recv().map_err(|_| self.shared.gone())?
    }

    /// The writes that erase `subject`'s keys `ids` (see [`keyring::Keyring::erasure_writes`]),
    /// and on the segment log the request to scrub the frames that hold copies of them
    /// ([`JournalWriter::scrub_superseded_keys`]).
    pub(crate) fn erasure_writes(
        &self,
        subject: &str,
        ids: &[uuid::Uuid],
        at_micros: i64,
    ) -> Vec<WriteOp> {
        let mut writes = keyring::Keyring::erasure_writes(subject, ids, at_micros);
        if let (Some(_), Some(id)) = (&self.shared.log, ids.first()) {
            writes.push(WriteOp::Put {
                key: logstore::scrub_marker_key(),
                value: id.as_bytes().to_vec(),
            });
        }
        writes
    }

    /// After an erasure on the segment log: zeroes the copies of superseded key entries
    /// (the forgotten subject's name, key list and wrapped keys) that the frames behind the
    /// writes cursor hold (see `logstore::LogParts::scrub_if_asked`), and syncs them. How
    /// many writes it scrubbed; `None` if no erasure asked for a scrub (or the store is on the
    /// sled layout, whose old values sled's own log keeps until it reclaims the space).
    /// Blocking, like [`JournalWriter::sync`].
    pub(crate) fn scrub_superseded_keys(&self) -> Result<Option<usize>, StorageError> {
        let Some(parts) = &self.shared.log else {
            return Ok(None);
        };
        parts.scrub_if_asked(&self.shared.db()?, || self.sync())
    }

    /// Frames of the segment log that carry key entries in frame format 1 (written before
    /// 2026-11-28): no scrub can zero them (0 on the sled layout).
    pub(crate) fn unscrubbable_key_frames(&self) -> usize {
        self.shared
            .log
            .as_ref()
            .map_or(0, |parts| parts.read_log().unscrubbable_key_frames())
    }

    /// Blocking, like [`JournalWriter::sync`].
    /// Commits and syncs everything submitted so far, stops the committer, and closes sled's
    /// database, which releases the directory lock even while clones of this journal (or of
    /// its read view) are alive: their later calls fail with [`StorageError::Closed`].
    /// Idempotent: a second call returns `Ok`. Waits at most [`CLOSE_WAIT_MS_MAX`] for the
    /// last sync ([`JournalWriter::close_within`]).
    pub fn close(&self) -> Result<(), StorageError> {
        self.close_within(std::time::Duration::from_millis(CLOSE_WAIT_MS_MAX))
    }

    /// [`JournalWriter::close`], waiting at most `wait` for the committer's last sync: past
    /// it, [`StorageError::CloseStalled`], with the committer left to finish (or not) and
    /// the store still open and locked.
    pub fn close_within(&self, wait: std::time::Duration) -> Result<(), StorageError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(()); // closed before, by this or another clone
        }
        // A close that stalled before sent the shutdown already: wait for its answer.
        let stalled = self
            .stalled_close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let answer = match stalled {
            Some(rx) => Some(rx),
            None => {
                let (reply, rx) = tokio::sync::oneshot::channel();
                self.jobs
                    .send(CommitJob::Shutdown {
                        reply: ReplyTo::new(reply, self.shared.clone()),
                    })
                    .is_ok()
                    .then_some(rx)
            }
        };
        // No answer means the committer is gone: nothing was synced, so say so.
        let result = match answer {
            Some(mut rx) => {
                let deadline = std::time::Instant::now() + wait;
                loop {
                    match rx.try_recv() {
                        Ok(answer) => break answer,
                        Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                            break Err(StorageError::Closed)
                        }
                        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                    }
                    if std::time::Instant::now() >= deadline {
                        let waited_ms = wait.as_millis() as u64;
                        tracing::error!(dir = %self.shared.dir.display(), waited_ms, "the journal's last sync did not finish: the store stays open (spacejam/sled#1412)");
                        // Not closed: a later `close` waits again, for this answer.
                        *self.stalled_close.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
                        self.shared.closed.store(false, Ordering::Release);
                        return Err(StorageError::CloseStalled { waited_ms });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            None => Err(StorageError::Closed),
        };
        if let Some(handle) = self.committer.lock().expect("committer lock").take() {
            let _ = handle.join();
        }
        // The committer and syncer (and their handles on sled) are gone; dropping the last
        // handle here closes sled, which flushes and releases its `flock`.
        let db = self
            .shared
            .db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        close_db(db, &self.shared.dir);
        self.shared
            .writer_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        result
    }

    /// Stores a snapshot's bytes at `sequence`. Not part of the command path, not synced:
    /// a snapshot lost in a crash is taken again, and recovery never needs one.
    ///
    /// A record of up to [`segments::VALUE_BYTES_MAX`] is one value under the snapshot's key,
    /// as it always was. A larger one (up to [`evershard_snapshots::SNAPSHOT_BYTES_MAX`]) is
    /// stored in parts, each within the value bound so that no tree node outgrows sled's blob
    /// threshold: its manifest under the snapshot's key, the parts under part keys, and the
    /// parts of an earlier snapshot at the same sequence removed, in one atomic batch.
    pub fn put_snapshot(
        &self,
        stream: &StreamId,
        sequence: u64,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        // A failed snapshot write does not poison the journal: snapshots are optional, and
        // the events are untouched by it.
        if bytes.len() > evershard_snapshots::SNAPSHOT_BYTES_MAX {
            return Err(StorageError::SnapshotTooLarge {
                bytes: bytes.len(),
                max: evershard_snapshots::SNAPSHOT_BYTES_MAX,
            });
        }
        let manifest =
            evershard_snapshots::Manifest::for_record(bytes.len(), segments::VALUE_BYTES_MAX);
        let key = keys::stream_key(keys::SNAPSHOTS, stream, sequence);
        failpoint::check(failpoint::SNAPSHOT_WRITE)?;
        let db = self.shared.db()?;
        let mut batch = sled::Batch::default();
        // Parts left by an earlier snapshot at this sequence that this one does not overwrite
        // (only this thread writes snapshots, so none appears between the scan and the batch).
        let parts = manifest.map_or(0, |m| m.parts);
        let mut stale = 0;
        for entry in db.scan_prefix(&key).keys() {
            let old = entry?;
            if keys::snapshot_part_of(&key, &old).is_some_and(|part| part > parts) {
                batch.remove(old);
                stale += 1;
            }
        }
        match manifest {
            // One key: a plain insert is as atomic, and takes no global lock (sled applies a
            // batch under one, which holds every other write in the store meanwhile).
            None if stale == 0 => {
                db.insert(key, bytes)?;
                return Ok(());
            }
            None => batch.insert(key, bytes),
            Some(manifest) => {
                batch.insert(key, &manifest.encode()[..]);
                for part in 1..=manifest.parts {
                    let part_key = keys::snapshot_part_key(stream, sequence, part);
                    batch.insert(part_key, manifest.part(bytes, part));
                }
            }
        }
        db.apply_batch(batch)?;
        Ok(())
    }

    /// Applies key entries (a rotation's re-wrapped keys, an upgrade's new ones) as one
    /// atomic batch and syncs it: neither reports before its keys are durable.
    /// They go through the committer, as a group's writes do: on the segment log a frame
    /// holds them, so that what opening re-applies after a crash keeps their order with the
    /// commands' key writes.
    fn apply_key_writes(&self, writes: Vec<WriteOp>) -> Result<(), StorageError> {
        self.commit_writes(writes)
    }

    /// Commits writes of no command as a group commits its writes, and returns once they are
    /// durable: in sled's batch of the next group, or on the segment log in a frame.
    pub(crate) fn commit_writes(&self, writes: Vec<WriteOp>) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(CommitJob::Writes {
                writes,
                reply: ReplyTo::new(reply, self.shared.clone()),
            })
            .map_err(|_| StorageError::Closed)?;
        rx.blocking_recv().map_err(|_| self.shared.gone())?
    }

    /// Re-wraps every data key under the provider's current master key, durably; returns
    /// how many it re-wrapped. Passes repeat (at most 4) until one finds nothing left after
    /// a sync, so a key first written during a pass is re-wrapped too: a key whose first
    /// group had taken its entry (wrapped under the old master) before the pass, and was not
    /// in sled yet, reaches sled with the sync (without it, a pass that found nothing
    /// returned, and that key stayed under the old master; found by review, 2026-11-28).
    pub(crate) fn rewrap_data_keys(&self) -> Result<usize, StorageError> {
        let mut total = 0;
        let mut synced_since_pass = false;
        for _ in 0..4 {
            let db = self.shared.db()?;
            let (writes, count) = self
                .shared
                .keyring
                .rewrap_writes(&db)
                .map_err(|e| match e {
                    keyring::KeyLookup::Storage(s) => s,
                    keyring::KeyLookup::Key(source) => StorageError::Key {
                        stream: None,
                        sequence: None,
                        source,
                    },
                    keyring::KeyLookup::Erased | keyring::KeyLookup::Forgetting => {
                        unreachable!("rewrap skips erased keys and makes none")
                    }
                })?;
            if count == 0 {
                if synced_since_pass {
                    break;
                }
                drop(db);
                self.sync()?;
                synced_since_pass = true;
                continue;
            }
            synced_since_pass = false;
            self.apply_key_writes(writes)?;
            total += count;
        }
        Ok(total)
    }

    /// Gives every subject whose current data key is older than AES-256-GCM a new one (see
    /// [`keyring::Keyring::upgrade`]), durably, in batches of at most
    /// [`UPGRADE_BATCH_SUBJECTS_MAX`] subjects; returns how many it upgraded.
    pub(crate) fn upgrade_data_keys(&self) -> Result<usize, StorageError> {
        let db = self.shared.db()?;
        let subjects = keyring::Keyring::subjects(&db)
            .collect::<Result<Vec<_>, _>>()
            .map_err(key_lookup_error)?;
        let mut total = 0;
        for chunk in subjects.chunks(UPGRADE_BATCH_SUBJECTS_MAX) {
            total += self
                .shared
                .keyring
                .upgrade(&db, chunk, |writes| self.apply_key_writes(writes))
                .map_err(key_lookup_error)?;
        }
        Ok(total)
    }

    /// Deletes all but the newest `keep` snapshots of a stream, each with its parts in one
    /// atomic batch.
    pub fn prune_snapshots(&self, stream: &StreamId, keep: usize) -> Result<usize, StorageError> {
        self.shared.check_writable()?;
        let db = self.shared.db()?;
        let mut removed = 0;
        // Keys that do not parse are passed over, not a reason to stop pruning: one such
        // key made every later snapshot of the stream pile up, unpruned (found by review;
        // recovery reports the stream's snapshots as unreadable and replays).
        let prefix = keys::stream_prefix(keys::SNAPSHOTS, stream);
        let mut sequences = Vec::new();
        for key in db.scan_prefix(&prefix).keys().rev() {
            if let Some((_, seq, None)) = keys::parse_snapshot_key(&key?) {
                sequences.push(seq);
            }
        }
        for seq in sequences.into_iter().skip(keep) {
            remove_snapshot_at(&db, stream, seq)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes `stream`'s snapshot at `sequence` (its record or manifest and its parts), in
    /// one batch: a snapshot beyond the stream's head, of events a crash took.
    pub fn remove_snapshot(&self, stream: &StreamId, sequence: u64) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        remove_snapshot_at(&self.shared.db()?, stream, sequence)
    }
}

/// Removes the snapshot of `stream` at `seq` and its parts in one batch.
fn remove_snapshot_at(db: &sled::Db, stream: &StreamId, seq: u64) -> Result<(), StorageError> {
    let key = keys::stream_key(keys::SNAPSHOTS, stream, seq);
    let mut batch = sled::Batch::default();
    for entry in db.scan_prefix(&key).keys() {
        let old = entry?;
        if old == key || keys::snapshot_part_of(&key, &old).is_some() {
            batch.remove(old);
        }
    }
    db.apply_batch(batch)?;
    Ok(())
}

/// A stored key (or its tail) and value, as the raw test hooks return them.
#[cfg(feature = "fault-injection")]
pub type RawEntry = (Vec<u8>, Vec<u8>);

// The largest snapshot `put_snapshot` stores fits the parts a manifest can name.
const _: () = assert!(
    evershard_snapshots::SNAPSHOT_BYTES_MAX.div_ceil(segments::VALUE_BYTES_MAX)
        <= evershard_snapshots::Manifest::PARTS_MAX as usize
);

/// A boxed iterator of reads: what the journal's scans return.
pub type Reads<'a, T> = Box<dyn Iterator<Item = Result<T, StorageError>> + 'a>;

/// True for the errors sled's own iterators report (I/O, a damaged page), as opposed to the
/// checks of one record (a CRC, a broken chain), after which a scan can go on.
pub(crate) fn is_sled_failure(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::Io(_)
            | StorageError::Sled(_)
            | StorageError::Corrupt {
                cause: Corruption::Sled(_),
                ..
            }
    )
}

/// Ends a scan after the first error sled itself reports. sled 0.34's iterators answer a
/// damaged page with the same error on every `next()`, forever: `verify` collecting the
/// snapshots of a store with one flipped byte in a snapshot key never returned (#12). Errors
/// of one record do not end the scan: the caller names them and reads on.
struct EndAtSledFailure<I> {
    inner: I,
    done: bool,
}

impl<T, I: Iterator<Item = Result<T, StorageError>>> Iterator for EndAtSledFailure<I> {
    type Item = Result<T, StorageError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.inner.next();
        match &item {
            None => self.done = true,
            Some(Err(e)) if is_sled_failure(e) => self.done = true,
            _ => {}
        }
        item
    }
}

/// A scan as [`Reads`], bounded on sled failures (see [`EndAtSledFailure`]).
pub(crate) fn reads<'a, T: 'a>(
    scan: impl Iterator<Item = Result<T, StorageError>> + 'a,
) -> Reads<'a, T> {
    Box::new(EndAtSledFailure {
        inner: scan,
        done: false,
    })
}

/// An iterator that yields one error: what a read answers on a closed journal.
fn failed<T: 'static>(e: StorageError) -> Reads<'static, T> {
    Box::new(std::iter::once(Err(e)))
}

impl Journal {
    /// Opens an existing journal for reading only. Used by the auditors' CLI. (sled itself may
    /// still replay its own log on open.) The store's lock is held until the last clone is
    /// dropped.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Journal, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        // Nothing may open a directory for writing before it is known to be a store: sled's
        // open creates and writes files (see `probe`).
        match probe::probe(&dir)? {
            probe::Probe::Missing | probe::Probe::Empty => return Err(OpenError::NotFound { dir }),
            probe::Probe::Store { .. } if !dir.join("db").is_file() => {
                return Err(OpenError::NotFound { dir });
            }
            probe::Probe::Store { .. } => {}
        }
        // A running engine holds the marker file exclusively: its files change under us, so
        // neither opening them nor copying them is safe. Holding the marker shared while we
        // open (or copy) keeps an engine from starting meanwhile.
        let marker = File::open(dir.join(probe::MARKER_FILE)).ok();
        if let Some(marker) = &marker {
            if !lock_marker_shared(marker) {
                return Err(OpenError::Locked { dir });
            }
        }
        let in_place = Self::open_in_place(&dir).and_then(|db| {
            // A store on the segment log whose last frames' writes sled lost in a crash (the
            // next writable open re-applies them): a reader must not write the store, so it
            // reads a private copy with them applied.
            match logstore::writes_pending(&dir, &db) {
                Ok(false) => Ok(db),
                Ok(true) => {
                    close_db(Some(db), &dir);
                    Err(OpenError::WritesPending { dir: dir.clone() })
                }
                Err(e) => Err(OpenError::storage(&dir, e)),
            }
        });
        let (db, private_copy) = match in_place {
            Ok(db) => (db, None),
            // Another reader holds sled's lock (no engine does: the marker said so), or the
            // store cannot be written (a read-only mount or medium, files owned by someone
            // else, a full disk): read a private copy instead. A store without a marker file
            // (made before it existed) keeps the old answer, "locked", when locked.
            Err(e) if marker.is_some() && may_read_a_copy(&e) => {
                tracing::info!(dir = %dir.display(), cause = %e, "reading a private copy of the store");
                let copy = copy_store(&dir).map_err(|e| {
                    OpenError::storage(
                        &dir,
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "the store cannot be opened in place, and a private copy \
                                 to read could not be made in {} (set TMPDIR to a place with \
                                 room): {e}",
                                std::env::temp_dir().display()
                            ),
                        ),
                    )
                })?;
                match segments::sled_config(&copy).open() {
                    Ok(db) => (db, Some(copy)),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&copy);
                        return Err(map_open_error(&dir, e));
                    }
                }
            }
            Err(e) => return Err(e),
        };
        drop(marker);
        let opened = Self::finish_read_only(dir, db, private_copy.clone());
        if opened.is_err() {
            if let Some(copy) = private_copy {
                let _ = std::fs::remove_dir_all(copy);
            }
        }
        opened
    }

    /// sled's open of the store itself, with the syncs around its recovery.
    fn open_in_place(dir: &Path) -> Result<sled::Db, OpenError> {
        if let Err(e) = sync_before_recovery(dir) {
            tracing::warn!(dir = %dir.display(), %e, "could not sync the store before sled's recovery");
        }
        let db = match segments::sled_config(dir).open() {
            Ok(db) => db,
            Err(e) => {
                let err = map_open_error(dir, e);
                return Err(match snapshot_file_damage(dir, &err) {
                    // Read-only: change nothing, say the step.
                    Some(files) => OpenError::DamagedSnapshotFile {
                        moves: files
                            .into_iter()
                            .map(|f| {
                                let to = snapfile::aside_path(&f);
                                (f, to)
                            })
                            .collect(),
                        dir: dir.to_path_buf(),
                    },
                    None => err,
                });
            }
        };
        // sled's recovery writes even here; a read-only caller still gets the store when the
        // directories cannot be synced (say, on a read-only mount), with a warning.
        if let Err(e) = sync_recovered_names(dir) {
            tracing::warn!(dir = %dir.display(), %e, "could not sync the store's directories after sled's recovery");
        }
        Ok(db)
    }

    fn finish_read_only(
        dir: PathBuf,
        db: sled::Db,
        private_copy: Option<PathBuf>,
    ) -> Result<Journal, OpenError> {
        let found = db
            .get(meta_format_key())
            .map_err(|e| OpenError::storage(&dir, e))?;
        check_format(&dir, found)?;
        if let Some(mark) = read_checkpoint_mark(&dir, &db)?.filter(|m| !m.complete) {
            return Err(OpenError::IncompleteCheckpoint {
                dir,
                source_dir: mark.source_dir,
            });
        }
        let storage = |e| OpenError::storage(&dir, e);
        let log = match (logstore::is_log_store(&db).map_err(storage)?, &private_copy) {
            (false, _) => None,
            (true, None) => Some(logstore::LogParts::open_read_only(&dir, &db).map_err(storage)?),
            // A private copy is the reader's own: brought up to date as a writer would.
            (true, Some(copy)) => {
                Some(logstore::LogParts::open_writable(copy, &db).map_err(storage)?)
            }
        };
        let last = match &log {
            Some(log) => log.next_position() - 1,
            None => last_global_position(&db).map_err(storage)?,
        };
        let mut shared = Shared::new(db, dir, log);
        Arc::get_mut(&mut shared)
            .expect("a new journal has one handle")
            .private_copy = private_copy;
        shared.mark_synced(last);
        Ok(Journal { shared })
    }

    /// True when this journal reads a private copy of its store (see `open_read_only`).
    pub fn reads_a_private_copy(&self) -> bool {
        self.shared.private_copy.is_some()
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What the store says about itself when it is a checkpoint (`Engine::checkpoint`):
    /// the cut, when and from where it was taken. `None` for a store that is not one.
    pub fn checkpoint_mark(&self) -> Result<Option<CheckpointMark>, StorageError> {
        match self.shared.db()?.get(checkpoint::CHECKPOINT_KEY)? {
            None => Ok(None),
            Some(v) => CheckpointMark::decode(&v).map(Some).ok_or_else(|| {
                StorageError::corrupt_store(Corruption::MalformedKey {
                    keyspace: "checkpoint marker",
                })
            }),
        }
    }

    /// True after a failed write or flush: the journal refuses every further write.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Why the journal refuses writes — the first failure, in one line ("flush/fdatasync
    /// failed: I/O error: No space left on device (os error 28)") — or `None` while it
    /// accepts them.
    pub fn poison_cause(&self) -> Option<String> {
        self.shared
            .poison_cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The head of a stream: its last sequence (0 when empty) and the hash of its last record.
    pub fn head(&self, stream: &StreamId) -> Result<StreamHead, StorageError> {
        let db = self.shared.db()?;
        match &self.shared.log {
            Some(log) => log.head(&db, stream),
            None => read_head(&db, stream),
        }
    }

    /// The segment log of a store on [`WritePath::Log`], or `what` refused with
    /// [`StorageError::NotOnLog`] there, for the readers that know only the sled layout.
    pub(crate) fn sled_layout_only(&self, what: &'static str) -> Result<(), StorageError> {
        match self.shared.log {
            Some(_) => Err(StorageError::NotOnLog { what }),
            None => Ok(()),
        }
    }

    /// The write path this store keeps its events on.
    pub fn write_path(&self) -> WritePath {
        match self.shared.log {
            Some(_) => WritePath::Log,
            None => WritePath::Sled,
        }
    }

    /// The records of a stream with `from <= sequence <= to`, in order. A record that fails
    /// its checks — including the hash chain: each record's `prev_hash` must be the SHA-256 of
    /// the stored record before it (for the first one read, the record at `from - 1`) — is
    /// returned as [`StorageError::Corrupt`] naming the stream and sequence.
    ///
    /// Encrypted payloads are opened (decrypted): a payload whose data key was destroyed is
    /// [`StorageError::Erased`], one whose key cannot be had [`StorageError::Key`]; the
    /// iterator goes on after either. [`read_stream_sealed`](Self::read_stream_sealed) leaves
    /// them sealed.
    pub fn read_stream(&self, stream: &StreamId, from: u64, to: u64) -> Reads<'_, Record> {
        let db = match self.shared.db() {
            Ok(db) => db,
            Err(e) => return failed(e),
        };
        // One key per stream (or a few across an upgrade): kept between records, as in
        // `visit_stream`.
        let mut opener = None;
        reads(self.read_stream_sealed(stream, from, to).map(move |r| {
            r.and_then(|mut record| {
                self.open_in_with(&db, &mut record, &mut opener)
                    .map(|()| record)
            })
        }))
    }

    /// [`read_stream`](Self::read_stream) without opening encrypted payloads: each record as
    /// stored (encrypted payloads stay [`AtRest::Sealed`]). Needs no key.
    pub fn read_stream_sealed(&self, stream: &StreamId, from: u64, to: u64) -> Reads<'_, Record> {
        let from = from.max(1);
        let db = match self.shared.db() {
            Ok(db) => db,
            Err(e) => return failed(e),
        };
        if let Some(log) = &self.shared.log {
            // Read back from the head: each record's chain is checked against the one after it.
            let stream = stream.clone();
            return match log.read_stream(&db, &stream, from, to) {
                Err(e) => failed(e),
                Ok(records) => reads(
                    records
                        .into_iter()
                        .zip(from..)
                        .map(move |((_, bytes), sequence)| {
                            decode_checked(&stream, sequence, &bytes)
                        }),
                ),
            };
        }
        // The chain link into the first record read: the stored record before it.
        let mut prev: Option<(u64, record::Hash)> = if from == 1 {
            Some((0, record::ZERO_HASH))
        } else {
            match db.get(keys::stream_key(keys::EVENTS, stream, from - 1)) {
                Ok(Some(bytes)) => Some((from - 1, record::hash(&bytes))),
                Ok(None) => None,
                Err(e) => return failed(e.into()),
            }
        };
        let start = keys::stream_key(keys::EVENTS, stream, from);
        let end = keys::stream_key(keys::EVENTS, stream, to);
        let stream = stream.clone();
        reads(db.range(start..=end).map(move |entry| {
            let (key, value) = entry?;
            let (_, sequence) = keys::parse_stream_key(&key).unwrap_or((stream.clone(), 0));
            let record = decode_checked(&stream, sequence, &value)?;
            // Across a gap there is no link to check; the reader reports the gap itself.
            let link = prev.filter(|(seq, _)| seq + 1 == sequence);
            if link.is_some_and(|(_, hash)| hash != record.prev_hash) {
                return Err(StorageError::corrupt(
                    &stream,
                    sequence,
                    Corruption::HashChain,
                ));
            }
            prev = Some((sequence, record::hash(&value)));
            Ok(record)
        }))
    }

    /// The records of a stream with `from <= sequence <= to`, in order, each checked as
    /// [`read_stream`](Self::read_stream) checks it (CRC, format, place, and the hash chain
    /// from the stored record at `from - 1`) and handed to `visit` as a view borrowed from
    /// the stored bytes, with its payload in plain (opened when encrypted at rest).
    ///
    /// The reader of recovery's fold: nothing is copied that a fold does not use (no
    /// [`Record`], no strings, no payload copy for a plain record), so the cost per event is
    /// sled's iteration, the CRC, the SHA-256 of the chain, and what `visit` does. Stops at
    /// the first error, the record's or `visit`'s, and returns it; a missing sequence is not
    /// an error here (the caller sees the next view's sequence and names the gap).
    ///
    /// On the segment log a read of more than 512 records has its chain checked on a second
    /// thread while `visit` runs (when the process may use more than one CPU), so `visit` may
    /// be handed records whose check then fails, and decode them: the call then returns that
    /// error, whatever `visit` returned, and what `visit` built from them is to be dropped (a
    /// replay's state is). A shorter read is checked before it is visited.
    pub fn visit_stream(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        mut visit: impl FnMut(&record::RecordView<'_>, &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let from = from.max(1);
        if from > to {
            return Ok(());
        }
        let db = self.shared.db()?;
        let mut opener: Option<Opener> = None;
        let mut buffer = Vec::new();
        if let Some(log) = &self.shared.log {
            // Read back from the head, each record parsed once and its place checked, and its
            // chain against the one after it (on a second thread while this one visits, for a
            // long read): the views need no CRC.
            return log.fold_stream(&db, stream, from, to, |views, check| {
                if views.len() > OPEN_AHEAD_MIN_RECORDS
                    && views.iter().any(|v| v.encrypted)
                    && logindex::several_cpus()
                {
                    if let Some(visited) = self.visit_opening_ahead(&db, views, check, &mut visit) {
                        return visited;
                    }
                }
                check.beside(|| {
                    for view in views {
                        self.visit_opened(&db, view, &mut opener, &mut buffer, &mut visit)?;
                    }
                    Ok(())
                })
            })?;
        }
        // The chain link into the first record read: the stored record before it.
        let mut prev: Option<(u64, record::Hash)> = if from == 1 {
            Some((0, record::ZERO_HASH))
        } else {
            db.get(keys::stream_key(keys::EVENTS, stream, from - 1))?
                .map(|bytes| (from - 1, record::hash(&bytes)))
        };
        let start = keys::stream_key(keys::EVENTS, stream, from);
        let end = keys::stream_key(keys::EVENTS, stream, to);
        // Every key of the range is this prefix and a big-endian sequence; the sequence is
        // read from the key's tail without parsing the stream part again (a key of another
        // shape reads as 0, which the record's place check then names, as `read_stream`
        // does).
        let prefix_len = start.len() - 8;
        for entry in db.range(start.as_slice()..=end.as_slice()) {
            let (key, value) = entry?;
            let sequence = match key.split_at_checked(prefix_len) {
                Some((prefix, tail)) if prefix == &start[..prefix_len] => {
                    tail.try_into().map(u64::from_be_bytes).unwrap_or(0)
                }
                _ => 0,
            };
            let view = view_checked(stream, sequence, &value)?;
            // Across a gap there is no link to check; the caller reports the gap itself.
            let link = prev.filter(|(seq, _)| seq + 1 == sequence);
            if link.is_some_and(|(_, hash)| &hash != view.prev_hash) {
                return Err(StorageError::corrupt(
                    stream,
                    sequence,
                    Corruption::HashChain,
                ));
            }
            prev = Some((sequence, record::hash(&value)));
            self.visit_opened(&db, &view, &mut opener, &mut buffer, &mut visit)?;
        }
        Ok(())
    }

    /// Hands `view` to `visit` with its payload in plain. A stream's sealed records name one
    /// key (two or more across an upgrade), so the key is looked up when the id changes or an
    /// erasure happened since (the keyring's epoch moves with every erasure), not once per
    /// record; each payload is opened in one buffer reused across records. Both were a
    /// measurable part of a sealed replay.
    fn visit_opened(
        &self,
        db: &sled::Db,
        view: &record::RecordView<'_>,
        opener: &mut Option<Opener>,
        buffer: &mut Vec<u8>,
        visit: &mut impl FnMut(&record::RecordView<'_>, &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if view.encrypted {
            let plain = self.open_reusing(
                db,
                (view.aggregate_type, view.aggregate_id, view.sequence),
                view.payload,
                opener,
                buffer,
            )?;
            visit(view, plain)
        } else {
            visit(view, view.payload)
        }
    }

    /// [`visit_opened`](Self::visit_opened) for every view, oldest first, the sealed payloads
    /// opened on a second thread a chunk of `OPEN_AHEAD_CHUNK_RECORDS` ahead of `visit`, each
    /// chunk's chain checked there after it is handed over: on this thread a sealed replay costs what a plain one does
    /// (opening was a fifth of it; the SHA-256 a quarter), and one thread more runs beside
    /// it, not two. Errors as `visit_opened`'s, at the same record: the records
    /// before a payload that fails to open are visited, and `visit`'s own error stops the
    /// opening (what it left unchecked of the chain, `logindex::fold_back` checks).
    /// `None`, with nothing visited, when no thread could be had: the caller's plain walk
    /// then does it all.
    fn visit_opening_ahead(
        &self,
        db: &sled::Db,
        views: &[record::RecordView<'_>],
        check: &logindex::ChainCheck<'_>,
        visit: &mut impl FnMut(&record::RecordView<'_>, &[u8]) -> Result<(), StorageError>,
    ) -> Option<Result<(), StorageError>> {
        /// One chunk's opened payloads end to end, where each record's ends (a plain record
        /// adds none), and the error that stopped the opening within it.
        type Opened = (Vec<u8>, Vec<usize>, Option<StorageError>);
        std::thread::scope(|scope| {
            // Two chunks in flight at most: the opener stays close ahead of `visit`.
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Opened>(2);
            let opening = std::thread::Builder::new()
                .name("evershard-open-ahead".into())
                .spawn_scoped(scope, move || {
                    let (mut opener, mut buffer) = (None, Vec::new());
                    for (i, chunk) in views.chunks(OPEN_AHEAD_CHUNK_RECORDS).enumerate() {
                        let mut opened = (Vec::new(), Vec::with_capacity(chunk.len()), None);
                        for view in chunk {
                            if view.encrypted {
                                let at = (view.aggregate_type, view.aggregate_id, view.sequence);
                                match self.open_reusing(
                                    db,
                                    at,
                                    view.payload,
                                    &mut opener,
                                    &mut buffer,
                                ) {
                                    Ok(plain) => opened.0.extend_from_slice(plain),
                                    Err(e) => {
                                        opened.2 = Some(e);
                                        break;
                                    }
                                }
                            }
                            opened.1.push(opened.0.len());
                        }
                        let failed = opened.2.is_some();
                        // A send fails once `visit` stopped (the receiver is gone).
                        if sender.send(opened).is_err() || failed {
                            return;
                        }
                        // The chunk's chain while the fold takes the chunk (checked after all
                        // the opening, the fold waited for the whole check at its end).
                        let first = i * OPEN_AHEAD_CHUNK_RECORDS;
                        check.check(first..first + chunk.len());
                    }
                    // The read's records past the views (past the read's `to`).
                    check.check(views.len()..check.len());
                });
            if opening.is_err() {
                return None;
            }
            Some((|| {
                for chunk in views.chunks(OPEN_AHEAD_CHUNK_RECORDS) {
                    // Gone only if the opening thread panicked: the scope then re-raises its
                    // panic.
                    let Ok((plain, ends, error)) = receiver.recv() else {
                        return Ok(());
                    };
                    let mut start = 0;
                    for (view, end) in chunk.iter().zip(&ends) {
                        match view.encrypted {
                            true => visit(view, &plain[start..*end])?,
                            false => visit(view, view.payload)?,
                        }
                        start = *end;
                    }
                    if let Some(e) = error {
                        return Err(e);
                    }
                }
                Ok(())
            })())
        })
    }

    /// True when the store holds a data key (live or erased): it was written with
    /// encryption at rest.
    pub fn holds_data_keys(&self) -> Result<bool, StorageError> {
        let db = self.shared.db()?;
        let first = db.scan_prefix([keys::DATA_KEYS]).next().transpose()?;
        Ok(first.is_some())
    }

    /// Sets the key provider that opens encrypted payloads (and, for an engine's journal,
    /// wraps new data keys). A read-only journal (the CLI) takes one to read payloads;
    /// integrity checks never need it.
    pub fn set_key_provider(&self, provider: Arc<dyn crate::crypto::KeyProvider>) {
        self.shared.keyring.set_provider(provider);
    }

    /// Refuses a provider that cannot take over from the current one (see
    /// [`keyring::Keyring::check_successor`]); changes nothing.
    pub(crate) fn check_key_successor(
        &self,
        successor: &dyn crate::crypto::KeyProvider,
    ) -> Result<(), StorageError> {
        let db = self.shared.db()?;
        self.shared
            .keyring
            .check_successor(&db, successor)
            .map_err(key_lookup_error)
    }

    /// True when a key provider is set.
    pub fn has_key_provider(&self) -> bool {
        self.shared.keyring.has_provider()
    }

    pub(crate) fn keyring(&self) -> &keyring::Keyring {
        &self.shared.keyring
    }

    /// The key that seals `subject`'s new payloads; `None` while the subject is being
    /// forgotten and has no key left to seal with (see [`keyring::Keyring::sealing_key`]).
    pub(crate) fn sealing_key(
        &self,
        subject: &str,
    ) -> Result<Option<Arc<keyring::SealingKey>>, StorageError> {
        let db = self.shared.db()?;
        match self.shared.keyring.sealing_key(&db, subject) {
            Ok(key) => Ok(Some(key)),
            Err(keyring::KeyLookup::Forgetting) => Ok(None),
            Err(e) => Err(key_lookup_error(e)),
        }
    }

    /// Starts forgetting `subject` (see [`keyring::Keyring::begin_forget`]): every key id
    /// it has, current first, and the guard that keeps new keys from being made for it.
    pub(crate) fn begin_forget(
        &self,
        subject: &str,
    ) -> Result<(keyring::Forgetting<'_>, Vec<uuid::Uuid>), StorageError> {
        self.shared
            .keyring
            .begin_forget(&self.shared.db()?, subject)
            .map_err(key_lookup_error)
    }

    /// Opens (decrypts) the payload of a record as stored; a record stored in plain is
    /// returned as it is. See [`read_stream`](Self::read_stream) for the errors.
    pub fn open_record(&self, record: Record) -> Result<Record, StorageError> {
        if record.at_rest != record::AtRest::Sealed {
            return Ok(record);
        }
        let mut record = record;
        self.open_in(&self.shared.db()?, &mut record)?;
        Ok(record)
    }

    /// Opens `record`'s payload in place; on an error it is left as it was.
    pub(crate) fn open_in(&self, db: &sled::Db, record: &mut Record) -> Result<(), StorageError> {
        self.open_in_with(db, record, &mut None)
    }

    /// [`open_in`](Self::open_in) with the key `opener` holds, if still good (see
    /// [`open_reusing`](Self::open_reusing)).
    fn open_in_with(
        &self,
        db: &sled::Db,
        record: &mut Record,
        opener: &mut Option<Opener>,
    ) -> Result<(), StorageError> {
        if record.at_rest != record::AtRest::Sealed {
            return Ok(());
        }
        let key = self.key_reusing(
            db,
            (
                &record.aggregate_type,
                &record.aggregate_id,
                record.sequence,
            ),
            &record.payload,
            opener,
        )?;
        // Opened in place (no second buffer, the identity built on the stack): on a failed
        // tag the record is refused anyway.
        let mut payload = std::mem::take(&mut record.payload);
        let opened = key.open_record_in_place(
            &mut payload,
            &record.aggregate_type,
            &record.aggregate_id,
            record.sequence,
        );
        if opened.is_err() {
            let stream = StreamId::new(record.aggregate_type.clone(), record.aggregate_id.clone());
            return Err(StorageError::corrupt(
                &stream,
                record.sequence,
                Corruption::Undecryptable,
            ));
        }
        record.payload = payload;
        record.at_rest = record::AtRest::Opened;
        Ok(())
    }

    /// The plain bytes of a sealed payload stored at `(aggregate_type, aggregate_id,
    /// sequence)` (for readers of [`record::RecordView`]s, such as `verify`'s replay).
    pub fn open_payload(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StorageError> {
        let key = self.key_of(
            &self.shared.db()?,
            aggregate_type,
            aggregate_id,
            sequence,
            sealed,
        )?;
        let aad = crate::crypto::record_aad(aggregate_type, aggregate_id, sequence);
        key.open(sealed, &aad).map_err(|_| {
            let stream = StreamId::new(aggregate_type, aggregate_id);
            StorageError::corrupt(&stream, sequence, Corruption::Undecryptable)
        })
    }

    /// Opens `sealed`, stored at `(aggregate_type, aggregate_id, sequence)`, into `buffer`
    /// with the key `opener` holds when it is the one the payload names and no erasure
    /// happened since it was looked up; else looks the key up (into `opener`). Errors as
    /// [`open_payload`](Self::open_payload)'s.
    fn open_reusing<'b>(
        &self,
        db: &sled::Db,
        (aggregate_type, aggregate_id, sequence): (&str, &str, u64),
        sealed: &[u8],
        opener: &mut Option<Opener>,
        buffer: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], StorageError> {
        let undecryptable = || {
            let stream = StreamId::new(aggregate_type, aggregate_id);
            StorageError::corrupt(&stream, sequence, Corruption::Undecryptable)
        };
        let key = self.key_reusing(db, (aggregate_type, aggregate_id, sequence), sealed, opener)?;
        buffer.clear();
        buffer.extend_from_slice(sealed);
        let plain = key
            .open_record_detached(buffer, aggregate_type, aggregate_id, sequence)
            .map_err(|_| undecryptable())?;
        Ok(&buffer[plain])
    }

    /// [`key_of`](Self::key_of), answered by `opener` when it holds the key `sealed` names
    /// and no erasure happened since it was looked up; else looked up into `opener`.
    fn key_reusing<'o>(
        &self,
        db: &sled::Db,
        (aggregate_type, aggregate_id, sequence): (&str, &str, u64),
        sealed: &[u8],
        opener: &'o mut Option<Opener>,
    ) -> Result<&'o crate::crypto::DataKey, StorageError> {
        let key_id = crate::crypto::sealed_key_id(sealed);
        // Read before the lookup: an erasure after it moves the epoch, and the next record
        // looks the key up again (and meets the erasure).
        let epoch = self.shared.keyring.epoch();
        if !matches!(opener, Some(o) if Some(o.key.id) == key_id && o.epoch == epoch) {
            let key = self.key_of(db, aggregate_type, aggregate_id, sequence, sealed)?;
            *opener = Some(Opener { key, epoch });
        }
        Ok(&opener.as_ref().expect("set above").key)
    }

    /// The data key a sealed payload stored at `(aggregate_type, aggregate_id, sequence)`
    /// names, or why it cannot be had (erased, no or the wrong master key).
    fn key_of(
        &self,
        db: &sled::Db,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        sealed: &[u8],
    ) -> Result<crate::crypto::DataKey, StorageError> {
        let stream = || StreamId::new(aggregate_type, aggregate_id);
        let Some(key_id) = crate::crypto::sealed_key_id(sealed) else {
            return Err(StorageError::corrupt(
                &stream(),
                sequence,
                Corruption::Undecryptable,
            ));
        };
        let key = match self.shared.keyring.data_key(db, key_id) {
            Ok(key) => key,
            Err(keyring::KeyLookup::Erased) => {
                return Err(StorageError::Erased {
                    stream: stream(),
                    sequence,
                    key_id,
                })
            }
            Err(keyring::KeyLookup::Key(source)) => {
                return Err(StorageError::Key {
                    stream: Some(stream()),
                    sequence: Some(sequence),
                    source,
                })
            }
            Err(keyring::KeyLookup::Storage(e)) => return Err(e),
            Err(keyring::KeyLookup::Forgetting) => unreachable!("only sealing_key answers it"),
        };
        Ok(key)
    }

    /// Opens a stored snapshot's bytes: a sealed snapshot (format
    /// [`evershard_snapshots::SNAPSHOT_FORMAT_SEALED`]) becomes the plain record it holds;
    /// one that cannot be opened (no key, erased, altered) is returned sealed, which
    /// recovery skips with a reason and `verify` reports as not checked.
    pub fn open_snapshot(&self, stream: &StreamId, sequence: u64, bytes: Vec<u8>) -> Vec<u8> {
        if bytes.first() != Some(&evershard_snapshots::SNAPSHOT_FORMAT_SEALED) {
            return bytes;
        }
        let Ok(db) = self.shared.db() else {
            return bytes;
        };
        let Some(key_id) = crate::crypto::sealed_key_id(&bytes[1..]) else {
            return bytes;
        };
        let Ok(key) = self.shared.keyring.data_key(&db, key_id) else {
            return bytes;
        };
        let aad =
            crate::crypto::snapshot_aad(&stream.aggregate_type, &stream.aggregate_id, sequence);
        key.open(&bytes[1..], &aad).unwrap_or(bytes)
    }

    /// Where the segment log's frames end (`None` on the sled layout).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn log_end(&self) -> Option<u64> {
        self.shared
            .log
            .as_ref()
            .map(|log| log.read_log().end_of_frames())
    }

    /// The value of a timer keyspace's `key`: a held write first (see `deferred`), for sled
    /// may not have it yet.
    fn timer_value(&self, key: &[u8]) -> Result<Option<sled::IVec>, StorageError> {
        let db = self.shared.db()?;
        Ok(
            match self.shared.log.as_ref().and_then(|p| p.deferred.get(key)) {
                Some(held) => held.map(sled::IVec::from),
                None => db.get(key)?,
            },
        )
    }

    /// Whether the timer entry of `stream` at `deadline` (microseconds) is stored.
    pub(crate) fn has_timer_entry(
        &self,
        deadline: i64,
        stream: &StreamId,
    ) -> Result<bool, StorageError> {
        Ok(self
            .timer_value(&keys::timer_key(deadline, stream))?
            .is_some())
    }

    /// Where a stream's timer is (its deadline, microseconds), read from its reverse entry.
    pub(crate) fn timer_of(&self, stream: &StreamId) -> Result<Option<i64>, StorageError> {
        let Some(value) = self.timer_value(&keys::timer_by_stream_key(stream))? else {
            return Ok(None);
        };
        let raw: [u8; 8] = value.as_ref().try_into().map_err(|_| {
            StorageError::corrupt_store(Corruption::MalformedKey { keyspace: "timer" })
        })?;
        Ok(Some(i64::from_le_bytes(raw)))
    }

    /// The deadline of a stream's pending timer, if it has one.
    pub fn timer(&self, stream: &StreamId) -> Result<Option<DateTime<Utc>>, StorageError> {
        Ok(self.timer_of(stream)?.map(micros_to_time))
    }

    /// Pending timers in deadline order (then by stream), optionally only those due before
    /// `due_before`. Read lazily from the keyspace: a million pending timers are never held
    /// in memory at once.
    pub fn timers(&self, due_before: Option<DateTime<Utc>>) -> Reads<'_, PendingTimer> {
        let db = match self.shared.db() {
            Ok(db) => db,
            Err(e) => return failed(e),
        };
        let end = match due_before {
            Some(t) => keys::timer_key(t.timestamp_micros(), &StreamId::new("", "")),
            None => vec![keys::TIMERS + 1],
        };
        let start = vec![keys::TIMERS];
        reads(
            self.timer_entries(&db, start, end)
                .map(|entry| parse_timer_entry(entry?)),
        )
    }

    /// The `t` entries in `start..end`: sled's, with the timer writes held in memory over
    /// them (see `deferred`).
    fn timer_entries(
        &self,
        db: &sled::Db,
        start: Vec<u8>,
        end: Vec<u8>,
    ) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + '_ {
        let held = self.shared.log.as_ref().map(|parts| &parts.deferred);
        deferred::merged_range(held, db, start, end)
    }

    /// Up to `limit` timers with deadline <= `up_to_micros`, after `after` (exclusive), in
    /// deadline order: the scheduler's next page.
    pub(crate) fn due_timers(
        &self,
        after: Option<&PendingTimer>,
        up_to_micros: i64,
        limit: usize,
    ) -> Result<Vec<PendingTimer>, StorageError> {
        let db = self.shared.db()?;
        let start = match after {
            Some(t) => {
                let mut k = keys::timer_key(t.deadline.timestamp_micros(), &t.stream);
                k.push(0); // the smallest key after it
                k
            }
            None => vec![keys::TIMERS],
        };
        let end = keys::timer_key(up_to_micros.saturating_add(1), &StreamId::new("", ""));
        if start >= end {
            return Ok(Vec::new());
        }
        self.timer_entries(&db, start, end)
            .take(limit)
            .map(|entry| parse_timer_entry(entry?))
            .collect()
    }

    /// Every stream (optionally of one aggregate type) with its last sequence, in key order.
    /// Jumps from stream to stream instead of reading every event.
    pub fn streams(&self, aggregate_type: Option<&str>) -> Reads<'_, (StreamId, u64)> {
        let db = match self.shared.db() {
            Ok(db) => db,
            Err(e) => return failed(e),
        };
        if let Some(log) = &self.shared.log {
            return match log.streams(&db, aggregate_type) {
                Ok(streams) => reads(streams.into_iter().map(Ok)),
                Err(e) => failed(e),
            };
        }
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
        Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            let first = match db.range(cursor.clone()..).next() {
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
                return Some(Err(StorageError::corrupt_store(Corruption::MalformedKey {
                    keyspace: "event",
                })));
            };
            let head = read_head(&db, &stream).map(|h| (stream.clone(), h.sequence));
            match keys::prefix_successor(&keys::stream_prefix(keys::EVENTS, &stream)) {
                Some(next) => cursor = next,
                None => done = true,
            }
            Some(head)
        }))
    }

    /// Every event in global order from `from_position`, as (position, stream, sequence).
    pub fn read_global(&self, from_position: u64) -> Reads<'_, (u64, StreamId, u64)> {
        let db = match self.shared.db() {
            Ok(db) => db,
            Err(e) => return failed(e),
        };
        if let Some(log) = &self.shared.log {
            return log_global(log, from_position);
        }
        // The index entry holding `from_position` starts at or before it.
        let start = match db.range(..=keys::global_key(from_position)).next_back() {
            Some(Ok((key, _))) if key.first() == Some(&keys::GLOBAL) => key.to_vec(),
            _ => keys::global_key(0).to_vec(),
        };
        reads(
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
                            _ => vec![Err(StorageError::corrupt_store(
                                Corruption::MalformedGlobalEntry,
                            ))],
                        },
                    };
                    expanded
                }),
        )
    }

    /// Every event in reverse global order, newest first, as (position, stream, sequence):
    /// for recoveries that need only the recent past (a guard's window).
    pub(crate) fn read_global_rev(&self) -> Reads<'_, (u64, StreamId, u64)> {
        let db = match self.shared.db() {
            Ok(db) => db,
            Err(e) => return failed(e),
        };
        if let Some(log) = &self.shared.log {
            // Callers read the recent past: a frame at a time from the end.
            let mut next = Some(log.next_position());
            let mut buffered: std::vec::IntoIter<Result<(u64, StreamId, u64), StorageError>> =
                Vec::new().into_iter();
            return reads(std::iter::from_fn(move || loop {
                if let Some(item) = buffered.next() {
                    return Some(item);
                }
                let before = next.take().filter(|&p| p > 1)?;
                let mut chunk = Vec::new();
                let mut first = before;
                let visited = log.visit_positions_rev_from(before, |position, bytes| {
                    first = position;
                    chunk.push(global_place(position, bytes));
                    Ok(chunk.len() < GLOBAL_READ_CHUNK)
                });
                if let Err(e) = visited {
                    chunk.push(Err(e));
                } else if !chunk.is_empty() {
                    next = Some(first);
                }
                buffered = chunk.into_iter();
            }));
        }
        reads(
            db.range(keys::global_key(0).to_vec()..=keys::global_key(u64::MAX).to_vec())
                .rev()
                .flat_map(|entry| {
                    let expanded: Vec<Result<(u64, StreamId, u64), StorageError>> = match entry {
                        Err(e) => vec![Err(e.into())],
                        Ok((key, value)) => match (
                            keys::parse_global_key(&key),
                            keys::parse_global_entry(&value),
                        ) {
                            (Some(first), Some(runs)) => {
                                let mut all: Vec<_> = expand_runs(first, &runs).map(Ok).collect();
                                all.reverse();
                                all
                            }
                            _ => vec![Err(StorageError::corrupt_store(
                                Corruption::MalformedGlobalEntry,
                            ))],
                        },
                    };
                    expanded
                }),
        )
    }

    /// The stored bytes of one event record, unchecked (for exports that print its hash).
    pub fn record_bytes(
        &self,
        stream: &StreamId,
        sequence: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let db = self.shared.db()?;
        if let Some(log) = &self.shared.log {
            let mut records = log.read_stream(&db, stream, sequence, sequence)?;
            return Ok(records.pop().map(|(_, bytes)| bytes));
        }
        let key = keys::stream_key(keys::EVENTS, stream, sequence);
        Ok(db.get(key)?.map(|v| v.to_vec()))
    }

    /// Snapshots of a stream as (sequence, bytes), newest first: each a whole record (one
    /// stored in parts is assembled, see [`Journal::snapshot`]).
    pub fn snapshots(&self, stream: &StreamId) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        for seq in self.snapshot_sequences(stream)? {
            // Pruned since the listing: gone, not damaged.
            if let Some(bytes) = self.snapshot(stream, seq)? {
                out.push((seq, bytes));
            }
        }
        Ok(out)
    }

    /// The sequences of a stream's snapshots, newest first, read from their keys alone (a
    /// snapshot's parts are not listed).
    pub fn snapshot_sequences(&self, stream: &StreamId) -> Result<Vec<u64>, StorageError> {
        let prefix = keys::stream_prefix(keys::SNAPSHOTS, stream);
        let mut out = Vec::new();
        for key in self.shared.db()?.scan_prefix(&prefix).keys().rev() {
            let key = key?;
            match keys::parse_snapshot_key(&key) {
                Some((_, seq, None)) => out.push(seq),
                Some((_, _, Some(_part))) => {}
                None => {
                    return Err(StorageError::Corrupt {
                        stream: Some(stream.clone()),
                        sequence: None,
                        cause: Corruption::MalformedKey {
                            keyspace: "snapshot",
                        },
                    })
                }
            }
        }
        Ok(out)
    }

    /// The snapshot record stored at `sequence` (`None`: there is none), whole: a record
    /// stored in parts is assembled from them. Parts that do not assemble (one missing, extra
    /// or of the wrong length, or a damaged manifest) are read once more, in case a write or
    /// prune of this snapshot ran between the reads; if they still do not, the manifest is
    /// returned in place of the record, which `SnapshotRecord::decode` refuses as
    /// `SnapshotError::Incomplete`. So a partial snapshot is never used.
    pub fn snapshot(
        &self,
        stream: &StreamId,
        sequence: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let key = keys::stream_key(keys::SNAPSHOTS, stream, sequence);
        let db = self.shared.db()?;
        let mut attempt = 0;
        loop {
            let Some(head) = db.get(&key)? else {
                return Ok(None);
            };
            if head.first() != Some(&evershard_snapshots::SNAPSHOT_FORMAT_PARTS) {
                return Ok(Some(head.to_vec()));
            }
            let assembled = match evershard_snapshots::Manifest::decode(&head) {
                Some(manifest) => {
                    let mut parts = Vec::with_capacity(usize::from(manifest.parts));
                    for entry in db.scan_prefix(&key) {
                        let (part_key, value) = entry?;
                        if let Some(part) = keys::snapshot_part_of(&key, &part_key) {
                            parts.push((part, value));
                        }
                    }
                    manifest.assemble(parts.iter().map(|(part, value)| (*part, value.as_ref())))
                }
                None => None,
            };
            match assembled {
                Some(record) => return Ok(Some(record)),
                None if attempt == 0 => attempt += 1,
                None => return Ok(Some(head.to_vec())),
            }
        }
    }

    /// Every stream that has snapshots, with their sequences, for verification: each record
    /// whole, as [`Journal::snapshot`] reads it (a one-value snapshot straight from the scan).
    pub fn all_snapshots(&self) -> Reads<'_, (StreamId, u64, Vec<u8>)> {
        let db = match self.shared.db() {
            Ok(db) => db,
            Err(e) => return failed(e),
        };
        reads(db.scan_prefix([keys::SNAPSHOTS]).filter_map(move |entry| {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e.into())),
            };
            match keys::parse_snapshot_key(&key) {
                Some((stream, seq, None))
                    if value.first() != Some(&evershard_snapshots::SNAPSHOT_FORMAT_PARTS) =>
                {
                    Some(Ok((stream, seq, value.to_vec())))
                }
                // A manifest: its record is read with its parts.
                Some((stream, seq, None)) => match self.snapshot(&stream, seq) {
                    Ok(Some(bytes)) => Some(Ok((stream, seq, bytes))),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                },
                // A part is read with its snapshot.
                Some((_, _, Some(_part))) => None,
                None => Some(Err(StorageError::corrupt_store(Corruption::MalformedKey {
                    keyspace: "snapshot",
                }))),
            }
        }))
    }

    /// Counts for `evershard stats`.
    pub fn stats(&self) -> Result<JournalStats, StorageError> {
        let db = self.shared.db()?;
        let mut stats = JournalStats::default();
        for entry in db.iter() {
            let (key, value) = entry?;
            match key.first() {
                Some(&keys::EVENTS) => {
                    stats.events += 1;
                    stats.event_bytes += value.len() as u64;
                }
                Some(&keys::SNAPSHOTS) => {
                    // A snapshot in parts counts once, its parts' bytes with it.
                    let is_part =
                        keys::parse_snapshot_key(&key).is_some_and(|(_, _, p)| p.is_some());
                    stats.snapshots += u64::from(!is_part);
                    stats.snapshot_bytes += value.len() as u64;
                }
                _ => {}
            }
        }
        stats.last_global_position = last_global_position(&db)?;
        stats.disk_bytes = db.size_on_disk()?;
        if let Some(log) = &self.shared.log {
            (stats.events, stats.event_bytes) = log.count()?;
            stats.last_global_position = log.next_position() - 1;
            stats.disk_bytes += dir_bytes(&self.shared.dir.join(logstore::LOG_DIR))?;
        }
        Ok(stats)
    }

    /// Checks every record, chain and index of the whole store, on up to two threads. See
    /// [`verify`].
    pub fn verify(&self) -> VerifyReport {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
        self.verify_with(&VerifyOptions {
            threads,
            ..VerifyOptions::default()
        })
    }

    /// [`Journal::verify`] limited to a scope, with a thread count and progress callback.
    pub fn verify_with(&self, options: &VerifyOptions<'_>) -> VerifyReport {
        match self.shared.db() {
            Ok(db) if self.shared.log.is_some() => {
                verify_log::verify(&db, self.shared.log.as_ref().expect("checked"), options)
            }
            Ok(db) => verify::verify(&db, options),
            Err(e) => {
                let mut report = VerifyReport::default();
                report.issue(None, None, e.to_string());
                report
            }
        }
    }

    /// The durable watermark: the highest global position such that it and every position
    /// below it are acknowledged (after flush + fdatasync in durable mode; after the batch
    /// was applied in buffered mode). A crash never takes back an event at or below it in
    /// durable mode. Followers stop at [`Journal::synced_position`].
    pub fn durable_position(&self) -> u64 {
        self.shared
            .durable_position
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acknowledged
    }

    /// The synced watermark: every position at or below it is on stable storage (on the
    /// sled layout in buffered mode: applied, and as safe as the events for what is derived
    /// from them). What the followers (the topic indexer, the tree maintainer) and the
    /// snapshot writer stop at. Equal to [`Journal::durable_position`] but in buffered mode
    /// on the segment log, where it trails it by a sync.
    pub fn synced_position(&self) -> u64 {
        self.shared
            .durable_position
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .synced
    }

    /// Waits until the synced watermark is above `after`, at most `timeout`; returns it.
    /// Also returns early when [`Journal::wake_durable_waiters`] is called.
    pub(crate) fn wait_synced(&self, after: u64, timeout: std::time::Duration) -> u64 {
        let guard = self
            .shared
            .durable_position
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if guard.synced > after {
            return guard.synced;
        }
        let (guard, _) = self
            .shared
            .durable_moved
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner());
        guard.synced
    }

    /// Wakes every [`Journal::wait_durable`] caller (for a stop flag to be seen).
    pub(crate) fn wake_durable_waiters(&self) {
        self.shared.wake_durable_waiters();
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
        self.rewrite_raw_for_tests(stream, sequence, |value| {
            let i = byte % value.len();
            value[i] ^= 0x5a;
        })
    }

    /// Writes `value` under `stream`'s snapshot prefix followed by `suffix` — a snapshot key
    /// when `suffix` is a sequence's 8 big-endian bytes, a malformed key otherwise —
    /// bypassing every check: for the snapshot-fallback tests only.
    #[cfg(feature = "fault-injection")]
    pub fn put_raw_snapshot_for_tests(
        &self,
        stream: &StreamId,
        suffix: &[u8],
        value: &[u8],
    ) -> Result<(), StorageError> {
        let db = self.shared.db()?;
        let mut key = keys::stream_prefix(keys::SNAPSHOTS, stream);
        key.extend_from_slice(suffix);
        db.insert(key, value)?;
        db.flush()?;
        Ok(())
    }

    /// Every key under `stream`'s snapshot prefix as (the key after the prefix, the value):
    /// snapshots, manifests and parts as stored. For the snapshot tests only.
    #[cfg(feature = "fault-injection")]
    pub fn raw_snapshot_entries_for_tests(
        &self,
        stream: &StreamId,
    ) -> Result<Vec<RawEntry>, StorageError> {
        let prefix = keys::stream_prefix(keys::SNAPSHOTS, stream);
        let mut out = Vec::new();
        for entry in self.shared.db()?.scan_prefix(&prefix) {
            let (key, value) = entry?;
            out.push((key[prefix.len()..].to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    /// Removes the key `stream`'s snapshot prefix followed by `suffix`, bypassing every
    /// check: for the snapshot tests only (a lost part).
    #[cfg(feature = "fault-injection")]
    pub fn remove_raw_snapshot_for_tests(
        &self,
        stream: &StreamId,
        suffix: &[u8],
    ) -> Result<(), StorageError> {
        let db = self.shared.db()?;
        let mut key = keys::stream_prefix(keys::SNAPSHOTS, stream);
        key.extend_from_slice(suffix);
        db.remove(key)?;
        db.flush()?;
        Ok(())
    }

    /// Rewrites a stored record through `edit` and re-encodes it, so that its CRC is valid
    /// again: for tests of the checks above the CRC (the hash chain, misplaced records).
    #[cfg(feature = "fault-injection")]
    pub fn rewrite_record_for_tests(
        &self,
        stream: &StreamId,
        sequence: u64,
        edit: impl FnOnce(&mut Record),
    ) -> Result<(), StorageError> {
        self.rewrite_raw_for_tests(stream, sequence, |value| {
            let mut record = Record::decode(value).expect("an intact record to rewrite");
            edit(&mut record);
            *value = record.encode();
        })
    }

    #[cfg(feature = "fault-injection")]
    fn rewrite_raw_for_tests(
        &self,
        stream: &StreamId,
        sequence: u64,
        edit: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), StorageError> {
        let db = self.shared.db()?;
        if let Some(log) = &self.shared.log {
            let (position, mut value) = log
                .read_stream(&db, stream, sequence, sequence)?
                .pop()
                .ok_or_else(|| {
                    StorageError::corrupt(stream, sequence, Corruption::MissingRecord)
                })?;
            edit(&mut value);
            // The frame's cache may hold the record as it was.
            log.forget_cached_frame();
            return Ok(log.write_log().rewrite_record_for_tests(position, &value)?);
        }
        let key = keys::stream_key(keys::EVENTS, stream, sequence);
        let mut value = db
            .get(&key)?
            .ok_or_else(|| StorageError::corrupt(stream, sequence, Corruption::MissingRecord))?
            .to_vec();
        edit(&mut value);
        db.insert(key, value)?;
        db.flush()?;
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

/// Writes `writes` into sled one key at a time, in order, then `last` (a follower's cursor):
/// not as a `sled::Batch`, which makes sled seal and write its I/O buffer before and after it
/// (a `pwrite` and a waited `sync_file_range` on its thread pool each; `pin_log` in sled
/// 0.34). sled recovers a prefix of its log, so `last` never survives a crash without the
/// writes before it; what a crash cuts short, the follower writes again from its older
/// cursor, with the same keys and values — so only for writes that are the same when made
/// again (the Merkle nodes: not the topic index, whose next offsets come from the stored
/// entries, so entries left behind a cursor would be offered again at new offsets).
pub(crate) fn insert_then(
    db: &sled::Db,
    writes: Vec<(Vec<u8>, Vec<u8>)>,
    last: (Vec<u8>, Vec<u8>),
) -> Result<(), StorageError> {
    for (key, value) in writes.into_iter().chain(std::iter::once(last)) {
        db.insert(key, value)?;
    }
    Ok(())
}

/// Events a global read of the segment log reads per step.
const GLOBAL_READ_CHUNK: usize = 1024;

/// (position, stream, sequence) of the record `bytes` at `position` of the segment log,
/// checked (CRC, fields) and checked to be where the log has it.
fn global_place(position: u64, bytes: &[u8]) -> Result<(u64, StreamId, u64), StorageError> {
    let view = record::RecordView::check(bytes)
        .map_err(|e| StorageError::corrupt_store(Corruption::Record(e)))?;
    let stream = StreamId::new(view.aggregate_type, view.aggregate_id);
    if view.global_position != position {
        return Err(StorageError::corrupt(
            &stream,
            view.sequence,
            Corruption::Log(
                format!(
                    "record at position {position} says {}",
                    view.global_position
                )
                .into(),
            ),
        ));
    }
    Ok((position, stream, view.sequence))
}

/// `read_global` of a store on the segment log: read forwards a chunk at a time.
fn log_global(log: &logstore::LogParts, from: u64) -> Reads<'_, (u64, StreamId, u64)> {
    let mut next = Some(from.max(1));
    let mut buffered: std::vec::IntoIter<Result<(u64, StreamId, u64), StorageError>> =
        Vec::new().into_iter();
    reads(std::iter::from_fn(move || loop {
        if let Some(item) = buffered.next() {
            return Some(item);
        }
        let from = next.take()?;
        let mut chunk = Vec::new();
        let to = from + GLOBAL_READ_CHUNK as u64 - 1;
        let visited = log.visit_positions(from, to, |position, bytes| {
            chunk.push(global_place(position, bytes));
            Ok::<(), StorageError>(())
        });
        match visited {
            Err(e) => chunk.push(Err(e)),
            Ok(()) if chunk.len() as u64 == to - from + 1 => next = Some(to + 1),
            Ok(()) => {}
        }
        buffered = chunk.into_iter();
    }))
}

/// Bytes of the files under `dir` (0 when it does not exist).
fn dir_bytes(dir: &Path) -> Result<u64, StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = 0;
    for entry in entries {
        bytes += entry?.metadata()?.len();
    }
    Ok(bytes)
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
                    stream: Some(stream.clone()),
                    sequence: None,
                    cause: Corruption::MalformedKey { keyspace: "event" },
                })?;
            Ok(StreamHead {
                sequence,
                hash: record::hash(&value),
            })
        }
    }
}

/// Sets a path's permission bits (Unix; elsewhere nothing to do).
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Every file under a new store 0600 and every directory 0700. Files sled creates later
/// (its snapshot files, blobs) get the process umask, inside a directory no one else can
/// enter.
fn make_files_private(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            set_mode(&path, 0o700)?;
            make_files_private(&path)?;
        } else if entry.file_type()?.is_file() {
            set_mode(&path, 0o600)?;
        }
    }
    Ok(())
}

/// The highest committed global position (0 for an empty store).
fn last_global_position(db: &sled::Db) -> Result<u64, StorageError> {
    let corrupt = || StorageError::corrupt_store(Corruption::MalformedGlobalEntry);
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

/// Checks a record in place (every check `decode_checked` makes, nothing copied) and that it
/// belongs where it is stored: the topic reader renders messages from the view.
pub(crate) fn view_checked<'a>(
    stream: &StreamId,
    sequence: u64,
    bytes: &'a [u8],
) -> Result<record::RecordView<'a>, StorageError> {
    let view =
        record::RecordView::check(bytes).map_err(|e| StorageError::corrupt(stream, sequence, e))?;
    check_place(
        stream,
        sequence,
        (view.aggregate_type, view.aggregate_id, view.sequence),
    )?;
    Ok(view)
}

/// Decodes a record and checks it belongs where it is stored.
pub(crate) fn decode_checked(
    stream: &StreamId,
    sequence: u64,
    bytes: &[u8],
) -> Result<Record, StorageError> {
    let record = Record::decode(bytes).map_err(|e| StorageError::corrupt(stream, sequence, e))?;
    check_place(
        stream,
        sequence,
        (
            &record.aggregate_type,
            &record.aggregate_id,
            record.sequence,
        ),
    )?;
    Ok(record)
}

/// A record stored under `stream` / `sequence` must say so itself: `found` is (type, id,
/// sequence) as its header has them.
fn check_place(
    stream: &StreamId,
    sequence: u64,
    (found_type, found_id, found_sequence): (&str, &str, u64),
) -> Result<(), StorageError> {
    if found_sequence != sequence
        || found_type != stream.aggregate_type
        || found_id != stream.aggregate_id
    {
        return Err(StorageError::corrupt(
            stream,
            sequence,
            Corruption::Misplaced {
                found: Box::new(StreamId::new(found_type, found_id)),
                found_sequence,
            },
        ));
    }
    Ok(())
}

/// A pending durable timer: when, and which aggregate it wakes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTimer {
    pub deadline: DateTime<Utc>,
    pub stream: StreamId,
}

/// A stored idempotency key of one aggregate (see [`Journal::idempotency_keys`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyEntry {
    pub key: uuid::Uuid,
    pub recorded_at: DateTime<Utc>,
    /// The first sequence its command committed (meaningless when `events` is 0).
    pub first_sequence: u64,
    pub events: u32,
}

pub(crate) fn micros_to_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn parse_timer_entry((key, _): (sled::IVec, sled::IVec)) -> Result<PendingTimer, StorageError> {
    let (deadline, stream) = keys::parse_timer_key(&key).ok_or_else(|| {
        StorageError::corrupt_store(Corruption::MalformedKey { keyspace: "timer" })
    })?;
    Ok(PendingTimer {
        deadline: micros_to_time(deadline),
        stream,
    })
}

/// Counts of the store, for `evershard stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub events: u64,
    pub event_bytes: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub last_global_position: u64,
    pub disk_bytes: u64,
}
