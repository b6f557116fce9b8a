//! A store on the segment log ([`super::WritePath::Log`], the default for new stores;
//! docs/design.md, "The next write path"): the log holds the records, sled the stream heads (checkpointed by
//! [`LogIndex`]) and every keyspace the frames' writes go to (timers, idempotency records,
//! keys, cluster positions), which the syncer applies after the frame's `fdatasync` (all but
//! a durable group's idempotency entries, which the committer applies as soon as it has
//! written the frame, each record checked against the log when it is read: see
//! `idempotency`).
//!
//! Why after: a write applied to sled before its frame is durable could reach the disk
//! (sled writes a full buffer to its file whenever it likes) while the frame does not, and
//! a power cut would then leave an idempotency record or a timer of a command that never
//! happened. Applied after, sled never runs ahead of the durable log (in durable mode: a
//! buffered store applies them at once and accepts that risk), and what a crash took
//! from sled is re-applied at open from the frames after `m | "log-writes"`, an address
//! every frame before which has its writes in sled (written after those writes, one key at
//! a time: sled recovers a prefix of its log, so the cursor never survives a crash without
//! them; it may lag behind frames that carried no write, and is current after a clean
//! shutdown). Re-applying a frame's writes in log order gives what applying them did.
//!
//! ```text
//! m | "write-path"    "log" for a store on the segment log (absent: the sled layout)
//! m | "log-writes"    address u64 LE: every frame before it has its writes in sled
//!                     (timer writes aside)
//! m | "log-timers"    address u64 LE: every frame before it has its timer writes in sled
//!                     (absent: the same as "log-writes"; see `deferred`)
//! m | "log-scrub"     the erasure's key id (16 bytes): an erasure asks for the frames
//!                     behind "log-writes" to be scrubbed of superseded key entries (see
//!                     `LogParts::scrub_if_asked`)
//! ```

use super::deferred::{self, DeferredWrites};
use super::logindex::{self, LogHead, LogIndex};
use super::seglog::{self, Frame, FrameRecord, FrameWrite, SegmentLog};
use super::{keys, record, StreamHead, StreamId};
use crate::error::{Corruption, StorageError};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

/// The folder of the segment log in a store directory.
pub(super) const LOG_DIR: &str = "log";
/// The value of `m | "write-path"` for a store on the segment log.
const LOG_MARKER: &[u8] = b"log";

pub(super) fn write_path_key() -> Vec<u8> {
    [&[keys::META][..], b"write-path"].concat()
}

pub(super) fn writes_cursor_key() -> Vec<u8> {
    [&[keys::META][..], b"log-writes"].concat()
}

/// The timers cursor: every frame before this address has its timer writes in sled (see
/// `deferred`). A store without it (written before timer writes were held) has them up to
/// the writes cursor.
pub(super) fn timers_cursor_key() -> Vec<u8> {
    [&[keys::META][..], b"log-timers"].concat()
}

/// Written in an erasure's frame, removed once the frames behind the writes cursor are
/// scrubbed and synced: an erasure that a crash kept from its scrub is scrubbed at the next
/// writable open.
pub(super) fn scrub_marker_key() -> Vec<u8> {
    [&[keys::META][..], b"log-scrub"].concat()
}

/// The `m` keys a store on the segment log keeps for itself (a checkpoint's copy has its
/// own).
pub(super) fn own_meta_keys() -> [Vec<u8>; 5] {
    [
        write_path_key(),
        writes_cursor_key(),
        timers_cursor_key(),
        scrub_marker_key(),
        [&[keys::META][..], b"log-applied"].concat(),
    ]
}

/// Whether the store in `db` keeps its records on the segment log.
pub(super) fn is_log_store(db: &sled::Db) -> Result<bool, StorageError> {
    Ok(db.get(write_path_key())?.as_deref() == Some(LOG_MARKER))
}

/// Marks a new store as one on the segment log (before its first record).
pub(super) fn mark_log_store(db: &sled::Db) -> Result<(), StorageError> {
    db.insert(write_path_key(), LOG_MARKER)?;
    Ok(())
}

/// Whether sled lacks the writes of some of the log's frames (a crash came before it held
/// them): false for a store on the sled layout.
pub(super) fn writes_pending(dir: &Path, db: &sled::Db) -> Result<bool, StorageError> {
    if !is_log_store(db)? {
        return Ok(false);
    }
    let (writes_from, timers_from) = stored_cursors(db)?;
    let log =
        SegmentLog::open_read_only(&dir.join(LOG_DIR), seglog::SEGMENT_BYTES, 0, 1, writes_from)?;
    Ok(log.end_of_frames() > writes_from.min(timers_from))
}

/// The writes cursor and the timers cursor (see `timers_cursor_key`), an absent timers
/// cursor read as the writes cursor.
fn stored_cursors(db: &sled::Db) -> Result<(u64, u64), StorageError> {
    let (writes, timers) = stored_cursor_keys(db)?;
    Ok((writes, timers.unwrap_or(writes)))
}

/// The writes cursor (0 when absent) and the timers cursor, as stored.
fn stored_cursor_keys(db: &sled::Db) -> Result<(u64, Option<u64>), StorageError> {
    let cursor = |key: Vec<u8>, keyspace: &'static str| -> Result<Option<u64>, StorageError> {
        match db.get(key)? {
            Some(v) => Ok(Some(u64::from_le_bytes(v.as_ref().try_into().map_err(
                |_| StorageError::corrupt_store(Corruption::MalformedKey { keyspace }),
            )?))),
            None => Ok(None),
        }
    };
    let writes = cursor(writes_cursor_key(), "log writes cursor")?.unwrap_or(0);
    let timers = cursor(timers_cursor_key(), "log timers cursor")?;
    Ok((writes, timers))
}

/// For a read-only open: the position below which the log was synced, as sled says: the
/// heads checkpoint's cursor, or past the Merkle maintainer's size (it follows the synced
/// watermark), whichever is later. A bad frame below it is damage, not a torn last group:
/// the log is refused rather than read as ending there (with a floor of 0, a read-only
/// `verify` said "clean" of a log a damaged frame cut short: found by review, 2026-11-28).
/// A writable open uses the size only when a build that follows the synced watermark stored
/// it ([`writable_floor`]): a store that a build before 2026-11-28 wrote in buffered mode may
/// hold a tree size past what a power cut left of its log (its maintainer followed the
/// acknowledged watermark), and refused there it could not be opened to write at all; a
/// read-only open of it is refused, and a writable one cuts the torn group as before (then
/// `verify` names the events the tree covered).
fn read_only_floor(db: &sled::Db) -> Result<u64, StorageError> {
    synced_floor(db, super::merkle::stored_size(db).map(Some))
}

/// For a writable open: the position below which the log was synced, as sled says: the
/// heads checkpoint's cursor, or past the Merkle maintainer's size when a build that follows
/// the synced watermark stored it (`merkle::SIZE_FOLLOWS_SYNCED_KEY`), whichever is later.
/// A bad frame below it is damage: the log is refused. With the heads' cursor alone, a
/// damaged frame of acknowledged events above it (written since the last checkpoint) was cut
/// as a torn last group, with every frame after it (found by review, 2026-11-28). A size an
/// older build stored is not used (see [`read_only_floor`]).
fn writable_floor(db: &sled::Db) -> Result<u64, StorageError> {
    synced_floor(db, super::merkle::stored_synced_size(db))
}

/// The later of the heads checkpoint's cursor and the position after `tree_size`, the Merkle
/// size the open trusts (`None`: none).
fn synced_floor(
    db: &sled::Db,
    tree_size: Result<Option<u64>, StorageError>,
) -> Result<u64, StorageError> {
    let heads = logindex::stored_cursor(db)?.unwrap_or(0);
    let tree = match tree_size {
        Ok(size) => size.map_or(0, |s| s.saturating_add(1)),
        // Its own damage is `verify`'s to report: reads go on without it.
        Err(e) => {
            tracing::warn!(error = %e, "the stored Merkle size is unreadable: not used as a floor");
            0
        }
    };
    Ok(heads.max(tree))
}

/// A frame's writes into a sled batch, as the committer's batch would have held them.
pub(super) fn add_writes(batch: &mut sled::Batch, writes: &[FrameWrite], frame_address: u64) {
    for w in writes {
        match w {
            FrameWrite::Put { key, value } => match pointer_value(key, value, frame_address) {
                Some(pointer) => batch.insert(&key[..], pointer),
                None => batch.insert(&key[..], &value[..]),
            },
            FrameWrite::Remove { key } => batch.remove(&key[..]),
        }
    }
}

/// A frame's writes as sled stores them: a group's idempotency entry (format 2) becomes its
/// format-3 copy, the keys and `frame_address` (`keys::idempotency_pointer_entry`; the
/// records stay in the frame), every other write as it is.
pub(super) fn sled_writes(writes: Vec<FrameWrite>, frame_address: u64) -> Vec<FrameWrite> {
    writes
        .into_iter()
        .map(|w| match w {
            FrameWrite::Put { key, value } => {
                let value = pointer_value(&key, &value, frame_address).unwrap_or(value);
                FrameWrite::Put { key, value }
            }
            remove => remove,
        })
        .collect()
}

fn pointer_value(key: &[u8], value: &[u8], frame_address: u64) -> Option<Vec<u8>> {
    (key.first() == Some(&keys::IDEMPOTENCY_BY_TIME)
        && value.first() == Some(&keys::IDEMPOTENCY_GROUP_FORMAT_V2))
    .then(|| keys::idempotency_pointer_entry(frame_address, value))
    .flatten()
}

/// The segment log of a store and its heads.
pub(super) struct LogParts {
    pub(super) log: RwLock<SegmentLog>,
    pub(super) index: Mutex<LogIndex>,
    /// The frames read last, newest first: the topic indexer, the topic readers and the
    /// Merkle maintainer each read consecutive positions, most in a frame they read just
    /// before (see [`LogParts::frame_holding`]).
    recent_frames: Mutex<VecDeque<Arc<CachedFrame>>>,
    /// The frames of records the committer wrote last, as it wrote them: the topic indexer,
    /// a live consumer and the Merkle maintainer follow the log's tail, and before this
    /// each of them read it back from the file, a consumer reading partition by partition
    /// meeting each frame once per partition, mostly past `recent_frames` (a position
    /// lookup scanning frame headers, one `pread` each: a fifth of the process's CPU with a
    /// live consumer, perf 2026-11-27).
    tail: Mutex<TailFrames>,
    /// Timer writes of synced groups that sled does not hold yet (see `deferred`).
    pub(super) deferred: DeferredWrites,
}

/// The newest frames of records, oldest first: their positions are consecutive.
#[derive(Debug)]
struct TailFrames {
    frames: VecDeque<Arc<CachedFrame>>,
    /// Bytes the frames hold (records and their bookkeeping).
    bytes: usize,
    /// The bound on `bytes` past which the oldest frames go ([`TAIL_BYTES_MAX`]).
    bytes_max: usize,
}

/// Bytes of record frames [`LogParts::note_written`] keeps at most: at the bench's rate
/// (65,000 events/s of ~340 B) about a quarter of a second of the log, more than a live
/// reader lags behind the durable watermark.
const TAIL_BYTES_MAX: usize = 16 << 20;
/// Bytes a cached record costs beside its own: its `Vec` and address.
const TAIL_RECORD_OVERHEAD_BYTES: usize = 32;

impl TailFrames {
    fn new(bytes_max: usize) -> TailFrames {
        TailFrames {
            frames: VecDeque::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// The cached frame holding `position`, if the tail covers it.
    fn holding(&self, position: u64) -> Option<Arc<CachedFrame>> {
        let first = self.frames.front()?.frame.first_position;
        let end = self.frames.back()?.frame.end_position();
        if position < first || position >= end {
            return None;
        }
        let i = self
            .frames
            .partition_point(|c| c.frame.end_position() <= position);
        let c = &self.frames[i];
        debug_assert!(c.frame.first_position <= position && position < c.frame.end_position());
        Some(c.clone())
    }

    fn push(&mut self, c: CachedFrame) {
        if self
            .frames
            .back()
            .is_some_and(|last| last.frame.end_position() != c.frame.first_position)
        {
            // Not the successor of the newest (the log was rewritten under the cache by a
            // test hook): the tail starts again, so that its positions stay consecutive.
            self.frames.clear();
            self.bytes = 0;
        }
        self.bytes += c.held_bytes();
        self.frames.push_back(Arc::new(c));
        while self.bytes > self.bytes_max && self.frames.len() > 1 {
            let old = self.frames.pop_front().expect("more than one frame");
            self.bytes -= old.held_bytes();
        }
    }
}

/// A frame read by position, or written last.
#[derive(Debug)]
struct CachedFrame {
    frame: Frame,
}

impl CachedFrame {
    fn held_bytes(&self) -> usize {
        self.frame
            .records
            .iter()
            .map(|r| r.bytes.len() + TAIL_RECORD_OVERHEAD_BYTES)
            .sum()
    }
}

/// Frames kept by [`LogParts::frame_holding`]: a few per sequential reader.
const RECENT_FRAMES_MAX: usize = 8;

impl LogParts {
    /// Opens the log of the store in `dir` for writing: cuts a torn last group, syncs what
    /// survived (a crash may have left it in the page cache only), brings the heads up to the
    /// log's end and re-applies the writes of the frames sled lost.
    pub(super) fn open_writable(dir: &Path, db: &sled::Db) -> Result<LogParts, StorageError> {
        let floor = writable_floor(db)?;
        // Frames behind the writes cursor may have been scrubbed (see `scrub_if_asked`); a
        // frame after it fails its key entries' CRC only when damaged.
        let (scrubbed_before, _) = stored_cursor_keys(db)?;
        let (mut log, report) = SegmentLog::open_scrubbed(
            &dir.join(LOG_DIR),
            seglog::SEGMENT_BYTES,
            floor,
            1,
            scrubbed_before,
        )?;
        if let Some((segment, offset)) = &report.cut {
            tracing::warn!(
                segment = %segment.display(),
                offset,
                "the segment log ended in a torn group (never acknowledged): cut there"
            );
        }
        log.mark_unsynced();
        log.take_sync()?.run()?;
        let index = LogIndex::open(db, &log)?;
        // A frame's timer writes again from the timers cursor on, its other writes from the
        // writes cursor on: each keyspace from where sled may lack it, in the log's order,
        // which ends where applying every frame would (see `deferred`). A frame counts as
        // held by sled when it ends at or before a cursor, so that a cursor inside a frame
        // (see `frames_from_address`) re-applies that frame whole.
        let (writes_from, timers_stored) = stored_cursor_keys(db)?;
        let timers_from = timers_stored.unwrap_or(writes_from);
        let from = writes_from.min(timers_from);
        let mut batch = sled::Batch::default();
        let mut end = None;
        for frame in log.frames_from_address(from) {
            let (address, mut frame, next) = frame?;
            if next <= writes_from {
                frame
                    .writes
                    .retain(|w| deferred::is_deferred(w.key()) && next > timers_from);
            } else if next <= timers_from {
                frame.writes.retain(|w| !deferred::is_deferred(w.key()));
            }
            add_writes(&mut batch, &frame.writes, address);
            // The frame's length in the log, not `frame.encoded_len()`: some of its writes
            // may have been left out above.
            end = Some(next);
        }
        // Every frame's writes are in sled now: no timers cursor means "at the writes cursor".
        let timers_cursor_stored = timers_stored.is_some();
        if timers_cursor_stored {
            batch.remove(timers_cursor_key());
        }
        // The cursor goes to the log's end: past an empty last segment too (a crash between
        // starting a segment and writing its first frame), so that a reader finds nothing
        // pending, as no frame lies between the last one and that end; and back from beyond
        // it. A buffered store writes the cursor before its frame's `fdatasync`, and sled's
        // own flush may keep it while a power cut takes the frame: left there, the next
        // frames would be written below it, and a crash then would skip their writes.
        let log_end = log.end_of_frames();
        log.limit_scrubbed_before(log_end);
        assert!(
            end.is_none_or(|end| end <= log_end),
            "a frame past the log's end"
        );
        let end = (end.is_some() || log_end != writes_from).then_some(log_end);
        if let Some(end) = end {
            batch.insert(writes_cursor_key(), &end.to_le_bytes()[..]);
            db.apply_batch(batch)?;
            tracing::info!(
                frames_from = from,
                to = end,
                "re-applied the writes of frames sled did not hold"
            );
        } else if timers_cursor_stored {
            db.apply_batch(batch)?;
        }
        Ok(LogParts::new(log, index))
    }

    /// If an erasure asked for it (`m | "log-scrub"`), zeroes in the frames behind the writes
    /// cursor the scrubbable writes (data subjects' index entries and wrapped data keys, see
    /// `seglog`) that sled's state superseded: a put whose value sled no longer holds for its
    /// key (a forgotten subject's entry and keys; an entry an upgrade replaced; a key's
    /// wrapping under a master key a rotation replaced) and every removal of a subject's
    /// entry (only an erasure removes one: its key is the subject's name). Those frames are
    /// never applied again, and what sled holds is all that is left of them, so the log
    /// keeps no copy of a forgotten subject's name or keys. A write a scrub cut short has
    /// damaged bytes, which differ from sled's, so a scrub run again completes it.
    ///
    /// `sync_sled` makes sled durable: once so that the writes cursor read after it is at
    /// least the erasure frame's end (the syncer writes it after the erasure's
    /// acknowledgement, before its next batch), and once more so that the cursor read is
    /// durable before any frame behind it changes. Returns how many writes it scrubbed
    /// (`None`: no scrub was asked for).
    pub(super) fn scrub_if_asked(
        &self,
        db: &sled::Db,
        mut sync_sled: impl FnMut() -> Result<(), StorageError>,
    ) -> Result<Option<usize>, StorageError> {
        let Some(asked) = db.get(scrub_marker_key())? else {
            return Ok(None);
        };
        sync_sled()?;
        let (writes_cursor, _) = stored_cursor_keys(db)?;
        sync_sled()?;
        let frames = {
            let mut log = self.write_log();
            log.allow_scrubbed_before(writes_cursor);
            log.scrubbable_frames(writes_cursor)
        };
        let scrubbed = seglog::scrub_frames(&frames, |write| match write {
            FrameWrite::Put { key, value } => {
                Ok::<_, StorageError>(db.get(key)?.as_deref() != Some(&value[..]))
            }
            FrameWrite::Remove { .. } => Ok(true),
        })?;
        // Only the request this scrub answered (an erasure's own key id): one made since, by
        // an erasure after the cursor read above, stays for its own scrub. Not synced: if a
        // crash loses the removal, the next open scrubs again (finding nothing left to do).
        let _ = db.compare_and_swap(scrub_marker_key(), Some(asked), None::<&[u8]>)?;
        tracing::info!(
            scrubbed,
            before = writes_cursor,
            "scrubbed superseded key entries from the log's frames"
        );
        Ok(Some(scrubbed))
    }

    /// Opens the log of the store in `dir` for reading: nothing is cut, synced or written (a
    /// torn last group ends the log as read, and a bad frame below [`read_only_floor`]
    /// refuses it; the writes of frames sled lost in a crash are not re-applied: the next
    /// writable open does it).
    pub(super) fn open_read_only(dir: &Path, db: &sled::Db) -> Result<LogParts, StorageError> {
        // Frames behind the writes cursor may have been scrubbed (see `scrub_if_asked`).
        let (scrubbed_before, _) = stored_cursor_keys(db)?;
        let floor = read_only_floor(db)?;
        let log = SegmentLog::open_read_only(
            &dir.join(LOG_DIR),
            seglog::SEGMENT_BYTES,
            floor,
            1,
            scrubbed_before,
        )?;
        let index = LogIndex::open(db, &log)?;
        Ok(LogParts::new(log, index))
    }

    fn new(log: SegmentLog, index: LogIndex) -> LogParts {
        LogParts {
            log: RwLock::new(log),
            index: Mutex::new(index),
            recent_frames: Mutex::new(VecDeque::new()),
            tail: Mutex::new(TailFrames::new(TAIL_BYTES_MAX)),
            deferred: Default::default(),
        }
    }

    /// Keeps the records of a frame the committer has just written for the readers that
    /// follow the log (see `tail`); a frame of writes alone holds no position and is not
    /// kept.
    pub(super) fn note_written(&self, first_position: u64, records: Vec<FrameRecord>) {
        if records.is_empty() {
            return;
        }
        let frame = Frame {
            first_position,
            records,
            writes: Vec::new(),
        };
        self.tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CachedFrame { frame });
    }

    pub(super) fn read_log(&self) -> std::sync::RwLockReadGuard<'_, SegmentLog> {
        self.log.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The records value (format 2) of the idempotency group entry `entry` as written into
    /// the frame at `address` (sled holds its format-3 copy, which points here); `None` when
    /// no frame there holds it. That is a pointer whose frame a power cut took: sled may keep
    /// a group's entry whose frame never reached the disk (see `idempotency`), the log is
    /// then cut before that frame, and later frames may have been written over its address —
    /// reading there finds nothing, another frame, or the inside of one (whose bytes fail the
    /// header's checks: `SegmentLog::frame_beginning_at`). A frame that begins there but
    /// fails its body's checks is corruption, and an I/O error an error: neither may turn an
    /// acknowledged key into a new one.
    pub(super) fn idempotency_entry_at(
        &self,
        address: u64,
        entry: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(frame) = self.read_log().frame_beginning_at(address)? else {
            return Ok(None);
        };
        // The last one: sled kept the last of a frame's writes under one key.
        Ok(frame.writes.into_iter().rev().find_map(|w| match w {
            FrameWrite::Put { key, value }
                if key == entry && value.first() == Some(&keys::IDEMPOTENCY_GROUP_FORMAT_V2) =>
            {
                Some(value)
            }
            _ => None,
        }))
    }

    pub(super) fn write_log(&self) -> std::sync::RwLockWriteGuard<'_, SegmentLog> {
        self.log.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lock_index(&self) -> std::sync::MutexGuard<'_, LogIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The position the next frame starts at.
    pub(super) fn next_position(&self) -> u64 {
        self.read_log().next_position()
    }

    /// A stream's head with its place in the log, if it has records.
    pub(super) fn log_head(
        &self,
        db: &sled::Db,
        stream: &StreamId,
    ) -> Result<Option<LogHead>, StorageError> {
        // Not `LogIndex::head`, which reads sled under the index's lock: a reader's sled
        // read that took milliseconds held the syncer's acknowledgements with it. A head
        // missing from the index cannot move into sled meanwhile (a checkpoint writes only
        // heads the index holds), so sled's is the head as of the lookup.
        let latest = self.lock_index().latest_head(stream);
        match latest {
            Some(head) => Ok(Some(head)),
            None => Ok(logindex::stored_head(db, stream)?),
        }
    }

    /// A stream's head as the journal reports it.
    pub(super) fn head(
        &self,
        db: &sled::Db,
        stream: &StreamId,
    ) -> Result<StreamHead, StorageError> {
        Ok(match self.log_head(db, stream)? {
            Some(h) => StreamHead {
                sequence: h.sequence,
                hash: h.hash,
            },
            None => StreamHead {
                sequence: 0,
                hash: record::ZERO_HASH,
            },
        })
    }

    /// A stream's records with `from <= sequence <= to` as (position, bytes), oldest first,
    /// read back from its head, each checked against the one after it.
    pub(super) fn read_stream(
        &self,
        db: &sled::Db,
        stream: &StreamId,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let Some(head) = self.log_head(db, stream)? else {
            return Ok(Vec::new());
        };
        if from > to || from > head.sequence {
            return Ok(Vec::new());
        }
        let mut records = logindex::read_back(|| self.read_log(), stream, head, from)?;
        let keep = (to.min(head.sequence) + 1).saturating_sub(from.max(1)) as usize;
        records.truncate(keep);
        Ok(records)
    }

    /// [`LogParts::read_stream`]'s records handed to `fold` as views, with the check of their
    /// chain for it to run where it likes (`logindex::fold_back`): a check's error wins over
    /// what `fold` returned.
    pub(super) fn fold_stream<T>(
        &self,
        db: &sled::Db,
        stream: &StreamId,
        from: u64,
        to: u64,
        fold: impl FnOnce(&[record::RecordView<'_>], &logindex::ChainCheck<'_>) -> T,
    ) -> Result<T, StorageError> {
        let head = match self.log_head(db, stream)? {
            Some(head) if from <= to && from <= head.sequence => head,
            _ => return Ok(fold(&[], &logindex::ChainCheck::new_checked())),
        };
        let keep = (to.min(head.sequence) + 1).saturating_sub(from.max(1)) as usize;
        Ok(logindex::fold_back(
            || self.read_log(),
            stream,
            head,
            from,
            keep,
            fold,
        )?)
    }

    /// A stream's record entries from its head back (`logindex::walk_back`).
    pub(super) fn entries_back(&self, head: LogHead) -> (Vec<(u64, Vec<u8>)>, bool) {
        logindex::walk_back(|| self.read_log(), head)
    }

    /// Every stream (of one aggregate type, or all) with its last sequence, in key order:
    /// the checkpointed heads merged with those moved since.
    pub(super) fn streams(
        &self,
        db: &sled::Db,
        aggregate_type: Option<&str>,
    ) -> Result<Vec<(StreamId, u64)>, StorageError> {
        let mut prefix = vec![logindex::HEADS];
        if let Some(t) = aggregate_type {
            prefix.push(t.len() as u8);
            prefix.extend_from_slice(t.as_bytes());
        }
        let latest = self.lock_index().latest_heads(&prefix);
        let mut merged = std::collections::BTreeMap::new();
        for entry in db.scan_prefix(&prefix) {
            let (key, value) = entry?;
            merged.insert(key.to_vec(), logindex::decode_head(&value)?.sequence);
        }
        for (key, head) in latest {
            merged.insert(key, head.sequence);
        }
        merged
            .into_iter()
            .map(|(key, sequence)| {
                let (stream, rest) = keys::parse_stream_part(&key[1..])
                    .filter(|(_, rest)| rest.is_empty())
                    .ok_or_else(|| {
                        StorageError::corrupt_store(Corruption::MalformedKey {
                            keyspace: "stream head",
                        })
                    })?;
                debug_assert!(rest.is_empty());
                Ok((stream, sequence))
            })
            .collect()
    }

    /// The frame holding `position`: from the tail the committer wrote last, one read
    /// recently, or else looked up by position (`SegmentLog::frame_address_of`: from the
    /// nearest frame start known, a scan of frame headers, one `pread` each).
    fn frame_holding(&self, position: u64) -> Result<Arc<CachedFrame>, StorageError> {
        if let Some(c) = self
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .holding(position)
        {
            return Ok(c);
        }
        let holds = |c: &CachedFrame| {
            c.frame.first_position <= position && position < c.frame.end_position()
        };
        if let Some(c) = self
            .recent_frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|c| holds(c))
        {
            return Ok(c.clone());
        }
        // The look-up by position starts from the frame starts met before, this frame's
        // successor among them (noted below): a sequential reader reads one header more
        // per frame, a reader of one partition a header per frame it jumps over (before, a
        // walk over up to four whole frames, then a scan from the segment's table).
        let log = self.read_log();
        let address = log.frame_address_of(position)?;
        let (frame, next) = log.frame_at_address(address)?;
        log.note_frame_start(frame.end_position(), next);
        let c = CachedFrame { frame };
        drop(log);
        let c = Arc::new(c);
        let mut recent = self.recent_frames.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_front(c.clone());
        recent.truncate(RECENT_FRAMES_MAX);
        Ok(c)
    }

    /// Copies the records at positions `..=cut` into `out`, the empty log of a checkpoint
    /// (`out_db` its sled), frame by frame as stored — the records' bytes unchanged, their
    /// previous-address pointers made the copy's — and moves its heads; `heads` gets every
    /// stream's last sequence. Frames of writes only are not copied: the copy's keyspaces
    /// are the live store's at the cut. Returns the records copied.
    pub(super) fn copy_records_to(
        &self,
        out: &LogParts,
        out_db: &sled::Db,
        cut: u64,
        heads: &mut std::collections::HashMap<StreamId, u64>,
    ) -> Result<u64, StorageError> {
        let mut last_address: std::collections::HashMap<StreamId, u64> = Default::default();
        let mut address = 0u64;
        let mut copied = 0u64;
        loop {
            let Some((_, frame, next)) = self.read_log().frame_from(address)? else {
                break;
            };
            address = next;
            if frame.first_position > cut {
                break;
            }
            if frame.records.is_empty() {
                continue;
            }
            // The committer answers a pause between groups: no frame straddles the cut.
            assert!(frame.end_position() <= cut + 1, "a frame straddles the cut");
            let mut copy = Frame {
                first_position: frame.first_position,
                records: frame.records,
                writes: Vec::new(),
            };
            let mut out_log = out.write_log();
            let at = out_log.reserve(&copy)?;
            let addresses = copy.record_addresses(at);
            for (r, &record_address) in copy.records.iter_mut().zip(&addresses) {
                let view = record::RecordView::check(&r.bytes)
                    .map_err(|e| StorageError::corrupt_store(Corruption::Record(e)))?;
                let stream = StreamId::new(view.aggregate_type, view.aggregate_id);
                r.previous_address = last_address
                    .insert(stream.clone(), record_address)
                    .unwrap_or(0);
                heads.insert(stream, view.sequence);
            }
            let written = out_log.append(&copy)?;
            assert_eq!(written, at, "the frame went where it was reserved");
            drop(out_log);
            out.lock_index().apply(out_db, at, &copy)?;
            copied += copy.records.len() as u64;
        }
        let end = out.read_log().end_of_frames();
        out_db.insert(writes_cursor_key(), &end.to_le_bytes()[..])?;
        Ok(copied)
    }

    /// Drops the cached frame (a test hook rewrote the log under it).
    #[cfg(feature = "fault-injection")]
    pub(super) fn forget_cached_frame(&self) {
        self.recent_frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.tail.lock().unwrap_or_else(|e| e.into_inner()) = TailFrames::new(TAIL_BYTES_MAX);
    }

    /// Calls `f(position, bytes)` for the records at positions `from..=to`, in order
    /// (unchecked: the caller checks each record as it needs). A position past the log's end
    /// ends the visit.
    pub(super) fn visit_positions<E: From<StorageError>>(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = self.next_position();
        let mut position = from.max(1);
        while position <= to && position < end {
            let held = self.frame_holding(position)?;
            let frame = &held.frame;
            while position <= to && position < frame.end_position() {
                let i = (position - frame.first_position) as usize;
                f(position, &frame.records[i].bytes)?;
                position += 1;
            }
        }
        Ok(())
    }

    /// The records before position `before`, newest first, a frame at a time: `f` returns
    /// false to stop.
    pub(super) fn visit_positions_rev_from(
        &self,
        before: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let first = self.read_log().first_position();
        let mut position = before.min(self.next_position());
        while position > first {
            let held = self.frame_holding(position - 1)?;
            let frame = &held.frame;
            for (i, r) in frame.records.iter().enumerate().rev() {
                let at = frame.first_position + i as u64;
                if at < position && !f(at, &r.bytes)? {
                    return Ok(());
                }
            }
            position = frame.first_position;
        }
        Ok(())
    }

    /// Records and bytes in the log: (events, event record bytes).
    pub(super) fn count(&self) -> Result<(u64, u64), StorageError> {
        let log = self.read_log();
        let (mut events, mut bytes) = (0u64, 0u64);
        for frame in log.frames_from(log.first_position()) {
            let (_, frame) = frame?;
            events += frame.records.len() as u64;
            bytes += frame
                .records
                .iter()
                .map(|r| r.bytes.len() as u64)
                .sum::<u64>();
        }
        Ok((events, bytes))
    }
}

#[cfg(test)]
mod tests {
    //! The log's tail in memory answers exactly the positions it holds, keeps its positions
    //! consecutive, and stays within its bound. A writable open re-applies each keyspace's
    //! writes from its cursor on and leaves the writes cursor at the end of the log's frames,
    //! also when the last frame's writes were partly left out or a cursor lies inside a frame.
    //! A store on the log carries format marker 2, which builds that do not know frame format
    //! 2 refuse; one made before gets it at its next writable open (not a read-only one).
    use super::*;

    /// A frame of `records` records of `bytes` bytes each from `first_position`, whose
    /// records name their position in their first byte.
    fn frame(first_position: u64, records: usize, bytes: usize) -> CachedFrame {
        let records = (0..records)
            .map(|i| FrameRecord {
                previous_address: 0,
                bytes: vec![(first_position + i as u64) as u8; bytes],
            })
            .collect();
        CachedFrame {
            frame: Frame {
                first_position,
                records,
                writes: Vec::new(),
            },
        }
    }

    #[test]
    fn the_tail_answers_the_positions_it_holds_and_drops_the_oldest_past_its_bound() {
        // Frames of 3 records of 68 bytes: 300 bytes each with the bookkeeping.
        let mut tail = TailFrames::new(900);
        assert!(tail.holding(1).is_none(), "an empty tail holds nothing");
        for first in [1, 4, 7] {
            tail.push(frame(first, 3, 68));
        }
        for position in 1..10u64 {
            let c = tail.holding(position).expect("held");
            let i = (position - c.frame.first_position) as usize;
            assert_eq!(c.frame.records[i].bytes[0], position as u8);
        }
        assert!(tail.holding(0).is_none() && tail.holding(10).is_none());
        // A fourth frame passes the bound: the oldest goes.
        tail.push(frame(10, 3, 68));
        assert_eq!(tail.bytes, 900);
        assert!(tail.holding(3).is_none(), "the oldest frame was dropped");
        assert_eq!(tail.holding(4).expect("held").frame.first_position, 4);
        assert_eq!(tail.holding(12).expect("held").frame.first_position, 10);
        // A frame larger than the bound is still kept, alone.
        tail.push(frame(13, 10, 200));
        assert_eq!(tail.frames.len(), 1);
        assert!(tail.holding(12).is_none());
        assert_eq!(tail.holding(22).expect("held").frame.first_position, 13);
    }

    /// A store whose log holds three frames of writes only, each a timer write and an
    /// outbox write to the same two keys (values 1, 2, 3) and an outbox write to a key of
    /// its own (`o` and its value), and whose sled holds none of them, with the cursors as given (`None`: not stored). Returns the frames' addresses
    /// and the end of the log.
    fn store_of_three_frames(
        dir: &Path,
        cursors: impl FnOnce(&[u64], u64) -> (Option<u64>, Option<u64>),
    ) -> (sled::Db, Vec<u64>, u64) {
        let db = super::super::segments::sled_config(dir).open().unwrap();
        mark_log_store(&db).unwrap();
        let (mut log, _) =
            SegmentLog::open(&dir.join(LOG_DIR), seglog::SEGMENT_BYTES, 0, 1).unwrap();
        let addresses: Vec<u64> = (1..=3u8)
            .map(|v| {
                let frame = Frame {
                    first_position: 1,
                    records: Vec::new(),
                    writes: vec![
                        FrameWrite::Put {
                            key: vec![keys::TIMERS, b'k'],
                            value: vec![v],
                        },
                        FrameWrite::Put {
                            key: vec![keys::OUTBOX, b'k'],
                            value: vec![v],
                        },
                        FrameWrite::Put {
                            key: vec![keys::OUTBOX, v],
                            value: vec![v],
                        },
                    ],
                };
                log.append(&frame).unwrap()
            })
            .collect();
        log.sync().unwrap();
        let end = log.end_of_frames();
        drop(log);
        let (writes, timers) = cursors(&addresses, end);
        for (key, cursor) in [(writes_cursor_key(), writes), (timers_cursor_key(), timers)] {
            if let Some(cursor) = cursor {
                db.insert(key, &cursor.to_le_bytes()[..]).unwrap();
            }
        }
        (db, addresses, end)
    }

    fn value(db: &sled::Db, keyspace: u8) -> Option<u8> {
        db.get([keyspace, b'k']).unwrap().map(|v| v[0])
    }

    #[test]
    fn an_open_leaves_the_writes_cursor_at_the_log_end_when_the_last_frame_was_cut_down() {
        // A crash after the writes cursor passed every frame while the timer writes of the
        // last two were held: only those are applied, and the last frame (whose outbox write
        // is left out) still ends the log where it does on disk.
        let dir = tempfile::tempdir().unwrap();
        let (db, _, end) = store_of_three_frames(dir.path(), |a, end| (Some(end), Some(a[1])));
        drop(LogParts::open_writable(dir.path(), &db).unwrap());
        assert_eq!(value(&db, keys::TIMERS), Some(3));
        assert_eq!(
            value(&db, keys::OUTBOX),
            None,
            "re-applied behind its cursor"
        );
        assert_eq!(stored_cursors(&db).unwrap(), (end, end));
        assert!(!writes_pending(dir.path(), &db).unwrap());
        // The next open starts at the end, as a reader's would.
        drop(LogParts::open_writable(dir.path(), &db).unwrap());
    }

    #[test]
    fn an_open_moves_the_writes_cursor_past_an_empty_last_segment() {
        // A crash after a new segment was made and before its first frame.
        let dir = tempfile::tempdir().unwrap();
        let (db, _, end) = store_of_three_frames(dir.path(), |_, end| (Some(end), None));
        let first_segment = std::fs::read_dir(dir.path().join(LOG_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .next()
            .unwrap();
        let bytes = std::fs::metadata(&first_segment).unwrap().len();
        assert!(bytes > end, "the first segment has room after its frames");
        let empty = dir
            .path()
            .join(LOG_DIR)
            .join("00000000000000000001-0001.seg");
        std::fs::write(&empty, vec![0u8; 4096]).unwrap();
        assert!(writes_pending(dir.path(), &db).unwrap());
        drop(LogParts::open_writable(dir.path(), &db).unwrap());
        assert_eq!(stored_cursors(&db).unwrap().0, bytes);
        assert!(!writes_pending(dir.path(), &db).unwrap());
        assert_eq!(
            value(&db, keys::OUTBOX),
            None,
            "re-applied behind its cursor"
        );
    }

    #[test]
    fn an_open_brings_a_writes_cursor_past_the_log_back_to_its_end() {
        // A buffered store's cursor that sled kept while a power cut took its frame.
        let dir = tempfile::tempdir().unwrap();
        let (db, _, end) = store_of_three_frames(dir.path(), |_, end| (Some(end + 500), None));
        drop(LogParts::open_writable(dir.path(), &db).unwrap());
        assert_eq!(stored_cursors(&db).unwrap(), (end, end));
    }

    #[test]
    fn a_cursor_inside_a_frame_re_applies_that_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _, end) = store_of_three_frames(dir.path(), |a, _| (Some(a[1] + 10), None));
        drop(LogParts::open_writable(dir.path(), &db).unwrap());
        assert_eq!(value(&db, keys::TIMERS), Some(3));
        assert_eq!(value(&db, keys::OUTBOX), Some(3));
        let own = |v: u8| db.contains_key([keys::OUTBOX, v]).unwrap();
        assert_eq!((own(1), own(2), own(3)), (false, true, true));
        assert_eq!(stored_cursors(&db).unwrap(), (end, end));
    }

    #[test]
    fn a_frame_that_does_not_follow_the_newest_starts_the_tail_again() {
        let mut tail = TailFrames::new(1 << 20);
        tail.push(frame(1, 2, 10));
        tail.push(frame(3, 2, 10));
        // Positions 5..=6 missing: a reader must not be told 7 follows 4.
        tail.push(frame(7, 2, 10));
        assert_eq!(tail.frames.len(), 1);
        assert!(tail.holding(4).is_none());
        assert_eq!(tail.holding(8).expect("held").frame.records[1].bytes[0], 8);
        assert_eq!(tail.bytes, 2 * (10 + TAIL_RECORD_OVERHEAD_BYTES));
    }

    #[test]
    fn a_log_store_carries_format_2_and_an_older_one_gets_it_at_its_next_writable_open() {
        use crate::journal::{segments, JournalConfig, WritePath};
        use crate::journal::{Journal, JournalWriter, STORE_FORMAT, STORE_FORMAT_V1};
        let dir = tempfile::tempdir().unwrap();
        let config = |write_path| JournalConfig {
            write_path,
            ..Default::default()
        };
        let marker = |dir: &Path, set: Option<&[u8]>| {
            let db = segments::sled_config(dir).open().unwrap();
            if let Some(set) = set {
                db.insert(crate::journal::meta_format_key(), set).unwrap();
                db.flush().unwrap();
            }
            db.get(crate::journal::meta_format_key())
                .unwrap()
                .unwrap()
                .to_vec()
        };
        let log = dir.path().join("log");
        JournalWriter::open(&log, config(WritePath::Log))
            .unwrap()
            .close()
            .unwrap();
        assert_eq!(marker(&log, None), STORE_FORMAT);
        // As a store made before frame format 2 left it.
        assert_eq!(marker(&log, Some(STORE_FORMAT_V1)), STORE_FORMAT_V1);
        drop(Journal::open_read_only(&log).unwrap());
        assert_eq!(
            marker(&log, None),
            STORE_FORMAT_V1,
            "a read-only open changes nothing"
        );
        JournalWriter::open(&log, config(WritePath::Log))
            .unwrap()
            .close()
            .unwrap();
        assert_eq!(marker(&log, None), STORE_FORMAT);

        let sled_layout = dir.path().join("sled");
        for _ in 0..2 {
            JournalWriter::open(&sled_layout, config(WritePath::Sled))
                .unwrap()
                .close()
                .unwrap();
            assert_eq!(
                marker(&sled_layout, None),
                STORE_FORMAT_V1,
                "no frames: format 1"
            );
        }
    }

    /// A read-only open after a crash, with the heads never checkpointed (their cursor at 0)
    /// and the Merkle maintainer past the log's last frames: a damaged last frame below the
    /// maintainer's size is refused as corrupt, where it was read as a torn last group and
    /// the log ended before it (a read-only `verify` said "clean"). With no stored tree it is
    /// still a torn last group. A writable open refuses it too when the size was stored by a
    /// maintainer that follows the synced watermark (it cut the frame, and every frame after
    /// it), and cuts it as before under a size an older build stored.
    #[test]
    fn a_read_only_open_refuses_a_damaged_frame_the_tree_covered() {
        use crate::journal::{merkle, NewEvent};
        use crate::journal::{segments, AppendRequest, JournalConfig, JournalWriter, WritePath};
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            write_path: WritePath::Log,
            ..Default::default()
        };
        let journal = JournalWriter::open(dir.path(), config).unwrap();
        let stream = StreamId::new("Thing", "t");
        for batch in 0..10u64 {
            let events = (0..5)
                .map(|i| NewEvent {
                    event_id: uuid::Uuid::from_u128((batch * 5 + i) as u128 + 1),
                    event_type: "Happened".into(),
                    event_version: "1.0".into(),
                    timestamp: chrono::DateTime::from_timestamp_micros(1_767_225_600_000_000)
                        .unwrap(),
                    correlation_id: uuid::Uuid::from_u128(7),
                    causation_id: None,
                    source: "test".into(),
                    user_id: None,
                    session_id: None,
                    audit_context: None,
                    payload: vec![7; 100],
                })
                .collect();
            journal
                .append_blocking(AppendRequest::new(stream.clone(), batch * 5, events))
                .unwrap();
        }
        journal.close().unwrap();
        // As a crash left it: no heads checkpoint.
        let db = segments::sled_config(dir.path()).open().unwrap();
        for key in db.scan_prefix([logindex::HEADS]).keys() {
            db.remove(key.unwrap()).unwrap();
        }
        db.remove([&[keys::META][..], b"log-applied"].concat())
            .unwrap();
        // A byte of the last frame flipped.
        let mut segments: Vec<_> = std::fs::read_dir(dir.path().join(LOG_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segments.sort();
        let last = segments.pop().unwrap();
        let mut bytes = std::fs::read(&last).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0xff;
        std::fs::write(&last, &bytes).unwrap();

        let torn = LogParts::open_read_only(dir.path(), &db).unwrap();
        assert_eq!(
            torn.next_position(),
            46,
            "no tree: a torn last group, read up to it"
        );
        drop(torn);
        db.insert(merkle::SIZE_KEY, &50u64.to_le_bytes()[..])
            .unwrap();
        // A writable open holds the log to a size stored by a maintainer that follows the
        // synced watermark: the frame is damage, not a torn group (nothing is cut).
        db.insert(merkle::SIZE_FOLLOWS_SYNCED_KEY, &[1u8][..])
            .unwrap();
        match LogParts::open_writable(dir.path(), &db) {
            Err(StorageError::Corrupt { .. }) => {}
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(parts) => panic!("cut at {}", parts.next_position()),
        }
        match LogParts::open_read_only(dir.path(), &db) {
            Err(StorageError::Corrupt { .. }) => {}
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(parts) => panic!("read up to {} only", parts.next_position()),
        }
        // A size an older build stored (no mark): a writable open cuts the damaged frame as a
        // torn group, as before (such a size may lie past what a power cut left).
        db.remove(merkle::SIZE_FOLLOWS_SYNCED_KEY).unwrap();
        let cut = LogParts::open_writable(dir.path(), &db).unwrap();
        assert_eq!(cut.next_position(), 46);
        drop(cut);
        // Every segment file gone: no frame is met, and the log still ends below the floor.
        for segment in segments.iter().chain([&last]) {
            std::fs::remove_file(segment).unwrap();
        }
        match LogParts::open_read_only(dir.path(), &db) {
            Err(StorageError::Corrupt { .. }) => {}
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(parts) => panic!("an empty log read, up to {}", parts.next_position()),
        }
    }
}
