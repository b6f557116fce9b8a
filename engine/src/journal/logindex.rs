//! The segment log's index (docs/design.md, "The next write path", increment 2a): stream heads
//! maintained from the log's frames, checkpointed to sled once per many frames, and streams
//! read backwards along their records' previous-position pointers. Not wired into the
//! committer yet.
//!
//! A record in the log names its stream's previous record by address, so the only
//! per-stream entry is the head — its sequence, position, address and record hash — and a head that moves many times
//! between two checkpoints is written once. Heads moved since the last checkpoint live in
//! memory (`dirty`); a checkpoint writes them with the cursor (the position after the last
//! applied frame) in one sled batch, not synced: a checkpoint lost in a crash leaves an older
//! cursor, and opening re-applies the frames after it (applying a frame is idempotent given
//! the heads before it, which the checkpoint that wrote the cursor also wrote).
//!
//! ```text
//! H | stream part (as in event keys)    sequence u64 LE | position u64 LE | address u64 LE
//!                                        | SHA-256 of the record
//! m | "log-applied"                      position u64 LE: every frame before it is in the heads
//! ```

use super::keys;
use super::record::{self, Hash, RecordError, RecordView};
use super::seglog::{Frame, FrameRecord, SegLogError, SegmentLog};
use super::StreamId;
use std::collections::{HashMap, VecDeque};

/// The heads keyspace.
pub const HEADS: u8 = b'H';
/// Bytes of a head entry's value.
const HEAD_VALUE_BYTES: usize = 8 + 8 + 8 + 32;

/// What goes wrong with the log's index.
#[derive(Debug, thiserror::Error)]
pub enum LogIndexError {
    #[error(transparent)]
    Log(#[from] SegLogError),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("the record at position {position} fails its checks: {source}")]
    Record {
        position: u64,
        #[source]
        source: RecordError,
    },
    /// A record that does not follow its stream's head: the log or the index is damaged.
    #[error("the record at position {position} of {stream} does not follow its head: {reason}")]
    Chain {
        stream: StreamId,
        position: u64,
        reason: &'static str,
    },
    /// A stream's record read back from its head fails its own checks.
    #[error("{stream} at sequence {sequence} (position {position}): {source}")]
    Damaged {
        stream: StreamId,
        sequence: u64,
        position: u64,
        #[source]
        source: RecordError,
    },
    /// A record's hash is not the one the record after it (or the head) names, or its
    /// previous hash is not its predecessor's: the chain breaks at `sequence`.
    #[error("the hash chain of {stream} breaks at sequence {sequence} (position {position})")]
    HashChain {
        stream: StreamId,
        sequence: u64,
        position: u64,
    },
    #[error("frame at position {got} applied, but the index is at {expected}")]
    Gap { expected: u64, got: u64 },
    #[error("a stored head or cursor is malformed: {0}")]
    Malformed(&'static str),
}

/// A stream's last record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHead {
    pub sequence: u64,
    pub position: u64,
    /// Where its entry is in the log (`SegmentLog::record_at_address`).
    pub address: u64,
    pub hash: Hash,
}

impl LogHead {
    fn encode(&self) -> [u8; HEAD_VALUE_BYTES] {
        let mut out = [0u8; HEAD_VALUE_BYTES];
        out[0..8].copy_from_slice(&self.sequence.to_le_bytes());
        out[8..16].copy_from_slice(&self.position.to_le_bytes());
        out[16..24].copy_from_slice(&self.address.to_le_bytes());
        out[24..56].copy_from_slice(&self.hash);
        out
    }

    fn decode(bytes: &[u8]) -> Result<LogHead, LogIndexError> {
        if bytes.len() != HEAD_VALUE_BYTES {
            return Err(LogIndexError::Malformed("head entry length"));
        }
        Ok(LogHead {
            sequence: u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
            position: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
            address: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
            hash: bytes[24..56].try_into().unwrap(),
        })
    }
}

/// A stored head entry's value.
pub fn decode_head(bytes: &[u8]) -> Result<LogHead, LogIndexError> {
    LogHead::decode(bytes)
}

/// The stored cursor (`m | "log-applied"`): every frame before it is in the stored heads.
pub fn stored_cursor(db: &sled::Db) -> Result<Option<u64>, LogIndexError> {
    db.get(cursor_key())?
        .map(|v| {
            v.as_ref()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| LogIndexError::Malformed("cursor length"))
        })
        .transpose()
}

fn cursor_key() -> Vec<u8> {
    [&[keys::META][..], b"log-applied"].concat()
}

fn head_key(stream: &StreamId) -> Vec<u8> {
    keys::stream_prefix(HEADS, stream)
}

/// A head with its key (`H | stream part`).
type KeyedHead = (Vec<u8>, LogHead);

/// The synced heads and the cursor one checkpoint writes ([`LogIndex::begin_checkpoint`]).
#[derive(Debug)]
pub struct CheckpointCut {
    heads: HashMap<Vec<u8>, LogHead>,
    end: u64,
}

impl CheckpointCut {
    /// The heads one by one, then the cursor after the frames they came from (not synced;
    /// see the module docs). Needs no lock on the index.
    ///
    /// Not one `sled::Batch`: sled applies a batch under its global write lock, which holds
    /// every other write in the store for as long as the batch takes (measured: a batch of
    /// 10,000 heads is ~120 ms, and every acknowledgement waited for the syncer's next sled
    /// write behind it). So a crash can keep some heads without the cursor: heads *ahead*
    /// of the stored cursor, each of a synced frame. Opening re-applies the frames after
    /// the cursor and passes over a record its stream's stored head already covers
    /// ([`LogIndex::apply`]).
    pub fn write(&self, db: &sled::Db) -> Result<(), LogIndexError> {
        let mut heads: Vec<_> = self.heads.iter().collect();
        heads.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (key, head) in heads {
            db.insert(&key[..], &head.encode()[..])?;
        }
        db.insert(cursor_key(), &self.end.to_le_bytes()[..])?;
        Ok(())
    }
}

/// A stream's head as the last checkpoint wrote it (see [`LogIndex::latest_head`]).
pub fn stored_head(db: &sled::Db, stream: &StreamId) -> Result<Option<LogHead>, LogIndexError> {
    db.get(head_key(stream))?
        .map(|v| LogHead::decode(&v))
        .transpose()
}

/// The heads of a segment log's streams.
#[derive(Debug)]
pub struct LogIndex {
    /// Every head moved since the last checkpoint, synced or not, by head key: what readers
    /// and the committer see.
    latest: HashMap<Vec<u8>, LogHead>,
    /// The heads of frames synced since the last checkpoint: what the next one writes. A
    /// checkpoint never writes a head of an unsynced frame, so that its cursor and heads
    /// are always a state the log can reproduce after a crash.
    durable: HashMap<Vec<u8>, LogHead>,
    /// Frames the committer noted and the log has not synced yet: (end position, heads).
    unsynced: VecDeque<(u64, Vec<KeyedHead>)>,
    /// The position after the last applied or noted frame.
    applied: u64,
    /// The position after the last synced frame.
    durable_end: u64,
    /// The cursor the last checkpoint wrote (or the one found at open).
    checkpointed_end: u64,
}

impl LogIndex {
    /// The index of `log` as `db` holds it, brought up to the log's end by applying the
    /// frames after the stored cursor (those a lost or missing checkpoint did not cover).
    pub fn open(db: &sled::Db, log: &SegmentLog) -> Result<LogIndex, LogIndexError> {
        let applied = stored_cursor(db)?.unwrap_or(log.first_position());
        if applied > log.next_position() {
            // The cursor covers only synced frames, and the log keeps every synced frame
            // (its durable floor is this cursor): a log shorter than that lost data.
            return Err(LogIndexError::Malformed("the cursor is past the log's end"));
        }
        let mut index = LogIndex {
            latest: HashMap::new(),
            durable: HashMap::new(),
            unsynced: VecDeque::new(),
            applied,
            durable_end: applied,
            checkpointed_end: applied,
        };
        for frame in log.frames_from(applied) {
            let (address, frame) = frame?;
            index.apply(db, address, &frame)?;
        }
        Ok(index)
    }

    /// The position after the last applied frame.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Heads moved since the last checkpoint.
    pub fn dirty_streams(&self) -> usize {
        self.latest.len()
    }

    /// Heads a checkpoint would write now (those of synced frames).
    pub fn durable_streams(&self) -> usize {
        self.durable.len()
    }

    /// The position after the last synced frame.
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    /// The cursor the last checkpoint wrote (or the stored one at open).
    pub fn checkpointed_end(&self) -> u64 {
        self.checkpointed_end
    }

    /// Moves the heads of a frame the committer just wrote (not synced yet), without
    /// checking its records again: the committer built them from these very heads. Readers
    /// see them at once; a checkpoint writes them only after [`Self::note_synced`].
    pub fn note_committed(&mut self, end_position: u64, heads: Vec<(StreamId, LogHead)>) {
        assert!(end_position >= self.applied, "frames noted out of order");
        let heads: Vec<KeyedHead> = heads
            .into_iter()
            .map(|(stream, head)| (head_key(&stream), head))
            .collect();
        for (key, head) in &heads {
            self.latest.insert(key.clone(), *head);
        }
        self.applied = end_position;
        self.unsynced.push_back((end_position, heads));
    }

    /// Every frame before `end_position` is on stable storage.
    pub fn note_synced(&mut self, end_position: u64) {
        while let Some((end, _)) = self.unsynced.front() {
            if *end > end_position {
                break;
            }
            let (end, heads) = self.unsynced.pop_front().expect("a front");
            self.durable.extend(heads);
            self.durable_end = self.durable_end.max(end);
        }
    }

    /// Moves the heads of `frame`'s streams. Only a synced frame may be applied: a checkpoint
    /// may reach the disk before a crash, and its cursor is the log's durable floor at the
    /// next open. `address` is where the frame was written (`SegmentLog::append`). The frame
    /// must start where the last one ended; each record must pass its checks and follow its
    /// stream's head (sequence, previous address and hash chain), or be one its stream's
    /// stored head already covers (heads of a checkpoint that a crash kept without its
    /// cursor: see [`CheckpointCut::write`]).
    pub fn apply(
        &mut self,
        db: &sled::Db,
        address: u64,
        frame: &Frame,
    ) -> Result<(), LogIndexError> {
        assert!(
            self.unsynced.is_empty(),
            "a checked frame applied behind unsynced ones"
        );
        if frame.first_position != self.applied {
            return Err(LogIndexError::Gap {
                expected: self.applied,
                got: frame.first_position,
            });
        }
        let addresses = frame.record_addresses(address);
        for (i, r) in frame.records.iter().enumerate() {
            let position = frame.first_position + i as u64;
            let view = RecordView::check(&r.bytes)
                .map_err(|source| LogIndexError::Record { position, source })?;
            let stream = StreamId {
                aggregate_type: view.aggregate_type.to_owned(),
                aggregate_id: view.aggregate_id.to_owned(),
            };
            let chain = |reason| LogIndexError::Chain {
                stream: stream.clone(),
                position,
                reason,
            };
            if view.global_position != position {
                return Err(chain("its header names another position"));
            }
            let key = head_key(&stream);
            let head = match self.latest.get(&key) {
                Some(head) => Some(*head),
                None => db.get(&key)?.map(|v| LogHead::decode(&v)).transpose()?,
            };
            match head {
                // A head a checkpoint wrote before a crash kept its cursor (see
                // `CheckpointCut::write`): this record is behind it, already counted.
                Some(head) if head.position >= position => {
                    if view.sequence > head.sequence {
                        return Err(chain("it is behind its stream's head but not before it"));
                    }
                    continue;
                }
                None if view.sequence == 1 && r.previous_address == 0 => {}
                None => return Err(chain("the stream has no head, and this is not sequence 1")),
                Some(head) => {
                    if view.sequence != head.sequence + 1 {
                        return Err(chain("its sequence is not the head's next"));
                    }
                    if r.previous_address != head.address {
                        return Err(chain("its previous address is not the head's"));
                    }
                    if view.prev_hash != &head.hash {
                        return Err(LogIndexError::HashChain {
                            stream: stream.clone(),
                            sequence: view.sequence,
                            position,
                        });
                    }
                }
            }
            let head = LogHead {
                sequence: view.sequence,
                position,
                address: addresses[i],
                hash: record::hash(&r.bytes),
            };
            self.latest.insert(key.clone(), head);
            self.durable.insert(key, head);
        }
        self.applied = frame.end_position();
        self.durable_end = self.applied;
        Ok(())
    }

    /// Writes the heads of the synced frames and the cursor after them (not synced; see the
    /// module docs) and forgets from memory those no later frame moved. The three steps,
    /// for a caller that writes without holding the index (the syncer: a checkpoint of
    /// 10,000 heads takes ~120 ms, measured, which held every acknowledgement and, under the
    /// index's lock, the committer too).
    pub fn checkpoint(&mut self, db: &sled::Db) -> Result<(), LogIndexError> {
        let cut = self.begin_checkpoint();
        cut.write(db)?;
        self.finish_checkpoint(cut);
        Ok(())
    }

    /// Takes the synced heads a checkpoint writes, and its cursor. Readers still find them
    /// in memory until [`Self::finish_checkpoint`]; heads synced meanwhile wait for the next
    /// checkpoint. Only one cut may be in flight: the next begins after this one finished.
    pub fn begin_checkpoint(&mut self) -> CheckpointCut {
        CheckpointCut {
            heads: std::mem::take(&mut self.durable),
            end: self.durable_end,
        }
    }

    /// The cut is in sled: its cursor is the checkpointed one, and the heads no later frame
    /// moved are read from sled from now on.
    pub fn finish_checkpoint(&mut self, cut: CheckpointCut) {
        let heads = self.finish_checkpoint_cursor(cut);
        self.forget_checkpointed(heads);
    }

    /// The first half of [`Self::finish_checkpoint`]: the cut's cursor becomes the
    /// checkpointed one; returns its heads, for [`Self::forget_checkpointed`].
    pub fn finish_checkpoint_cursor(&mut self, cut: CheckpointCut) -> HashMap<Vec<u8>, LogHead> {
        assert!(
            cut.end >= self.checkpointed_end,
            "a checkpoint finished behind the one before it"
        );
        self.checkpointed_end = cut.end;
        cut.heads
    }

    /// Forgets the heads of a finished checkpoint that no later frame moved (they are read
    /// from sled from now on). Any part of them at a time: each head is forgotten on its
    /// own, so a caller can let the index go between parts (10,000 at once held the lock
    /// for milliseconds, and every reader and the syncer with it).
    pub fn forget_checkpointed(&mut self, heads: impl IntoIterator<Item = (Vec<u8>, LogHead)>) {
        for (key, head) in heads {
            // Heads only move forward (sequences grow), so an equal head is the one written.
            if self.latest.get(&key) == Some(&head) {
                self.latest.remove(&key);
            }
        }
    }

    /// The stream's head if a frame moved it since the last checkpoint; `None` means it is
    /// as sled holds it ([`stored_head`]). Reads no sled, so that a caller holding the
    /// index's lock does not hold it through a sled read.
    pub fn latest_head(&self, stream: &StreamId) -> Option<LogHead> {
        self.latest.get(&head_key(stream)).copied()
    }

    /// The stream's head: moved since the last checkpoint, or as checkpointed.
    pub fn head(&self, db: &sled::Db, stream: &StreamId) -> Result<Option<LogHead>, LogIndexError> {
        let key = head_key(stream);
        match self.latest.get(&key) {
            Some(head) => Ok(Some(*head)),
            None => db.get(&key)?.map(|v| LogHead::decode(&v)).transpose(),
        }
    }

    /// Every head moved since the last checkpoint whose key starts with `prefix` (a head
    /// key prefix), sorted by key: what a listing merges with the checkpointed heads.
    pub fn latest_heads(&self, prefix: &[u8]) -> Vec<(Vec<u8>, LogHead)> {
        let mut out: Vec<(Vec<u8>, LogHead)> = self
            .latest
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, h)| (k.clone(), *h))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The stream's records from sequence `from` (at least 1) to its head, oldest first, as
    /// (position, bytes): read backwards along the previous-address pointers, one read per
    /// record, each record's place and chain checked against the one after it.
    pub fn read_stream(
        &self,
        db: &sled::Db,
        log: &SegmentLog,
        stream: &StreamId,
        from: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogIndexError> {
        match self.head(db, stream)? {
            Some(head) => read_back(|| log, stream, head, from),
            None => Ok(Vec::new()),
        }
    }

    /// [`LogIndex::read_stream`]'s records handed to `fold` as views ([`fold_back`]: a long
    /// read's chain checked on a second thread while `fold` runs, a check's error winning).
    pub fn fold_stream<T>(
        &self,
        db: &sled::Db,
        log: &SegmentLog,
        stream: &StreamId,
        from: u64,
        fold: impl FnOnce(&[RecordView<'_>], &ChainCheck<'_>) -> T,
    ) -> Result<T, LogIndexError> {
        match self.head(db, stream)? {
            Some(head) => fold_back(|| log, stream, head, from, usize::MAX, fold),
            None => Ok(fold(&[], &ChainCheck::new_checked())),
        }
    }
}

/// A stream's records from sequence `from` (at least 1) to `head`, oldest first, as
/// (position, bytes): read backwards along the previous-address pointers, one read per
/// record, each record's place and chain checked against the one after it (the first one
/// read against the head's hash).
pub fn read_back<L: std::ops::Deref<Target = SegmentLog>>(
    log: impl Fn() -> L,
    stream: &StreamId,
    head: LogHead,
    from: u64,
) -> Result<Vec<(u64, Vec<u8>)>, LogIndexError> {
    if let Some(entries) = entries_back(&log, head, from) {
        let placed = place(stream, head, &entries).map(|(views, chain)| {
            let positions: Vec<u64> = views.iter().map(|v| v.global_position).collect();
            (positions, first_unchained(&entries, &chain).is_none())
        });
        if let Some((positions, true)) = placed {
            return Ok(positions.into_iter().zip(entries).collect());
        }
    }
    read_back_strict(log, stream, head, from)
}

/// [`read_back`]'s records handed to `fold` as views (the oldest `keep` of them), with the
/// same checks and the same errors, an error winning over what `fold` returned. The SHA-256
/// of the records against the chain (a quarter of a full replay's time) is left to `fold`
/// through its [`ChainCheck`], so that it can run it on a second thread beside the fold
/// ([`ChainCheck::beside`]) or with other work there; whatever `fold` left unchecked is
/// checked after it. `fold` may therefore see records whose check then fails: what it
/// built is to be dropped on an error, as a replay does.
pub fn fold_back<L: std::ops::Deref<Target = SegmentLog>, T>(
    log: impl Fn() -> L,
    stream: &StreamId,
    head: LogHead,
    from: u64,
    keep: usize,
    fold: impl FnOnce(&[RecordView<'_>], &ChainCheck<'_>) -> T,
) -> Result<T, LogIndexError> {
    let entries = entries_back(&log, head, from);
    let Some((entries, (views, chain))) = entries
        .as_ref()
        .and_then(|entries| Some((entries, place(stream, head, entries)?)))
    else {
        // The walk that names the first problem from the head down (should it find none,
        // what it read is folded).
        let records = read_back_strict(log, stream, head, from)?;
        let views = records
            .iter()
            .map(|(position, bytes)| {
                RecordView::of_checked(bytes).map_err(|source| LogIndexError::Record {
                    position: *position,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(fold(
            &views[..keep.min(views.len())],
            &ChainCheck::new_checked(),
        ));
    };
    let check = ChainCheck::new(entries, &chain);
    let folded = fold(&views[..keep.min(views.len())], &check);
    let Some(unchained) = check.verdict() else {
        return Ok(folded);
    };
    // The walk that names the first problem from the head down. Should it find none (the
    // bytes read again are the chain's), the bytes this read holds still were not.
    read_back_strict(log, stream, head, from)?;
    Err(LogIndexError::HashChain {
        stream: stream.clone(),
        sequence: views[unchained].sequence,
        position: views[unchained].global_position,
    })
}

/// The SHA-256 check of a [`fold_back`] read's records against its chain, which the fold
/// runs where it likes (shared between threads: `Sync`), in pieces or whole; what it did not
/// check, [`fold_back`] checks after it.
pub struct ChainCheck<'a> {
    entries: &'a [Vec<u8>],
    chain: &'a [record::Hash],
    /// The pieces checked so far, as the fold checked them. Ranges, not a count: pieces
    /// that overlap and leave a gap could add up to the read's length, and a count would
    /// then pass records nobody hashed.
    checked: std::sync::Mutex<Vec<std::ops::Range<usize>>>,
    /// The oldest record found unchained, or `usize::MAX`.
    first_unchained: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for ChainCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering;
        f.debug_struct("ChainCheck")
            .field("records", &self.len())
            .field("checked", &*self.pieces())
            .field(
                "first_unchained",
                &self.first_unchained.load(Ordering::Acquire),
            )
            .finish()
    }
}

impl<'a> ChainCheck<'a> {
    fn new(entries: &'a [Vec<u8>], chain: &'a [record::Hash]) -> ChainCheck<'a> {
        assert_eq!(entries.len(), chain.len(), "a hash per record");
        ChainCheck {
            entries,
            chain,
            checked: Default::default(),
            first_unchained: usize::MAX.into(),
        }
    }

    fn pieces(&self) -> std::sync::MutexGuard<'_, Vec<std::ops::Range<usize>>> {
        // A piece is pushed whole or not at all, so a poisoned list is still true.
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The check of a read with nothing left to check (none, or the strict walk's records).
    pub(super) fn new_checked() -> ChainCheck<'static> {
        ChainCheck::new(&[], &[])
    }

    /// The records of the read, the fold's views first (a read may hold records past its
    /// `keep`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks the records in `range` (oldest first, as the views; the part past the read is
    /// ignored). Pieces may overlap or leave gaps: [`fold_back`] checks whatever no piece
    /// covered.
    pub(crate) fn check(&self, range: std::ops::Range<usize>) {
        use std::sync::atomic::Ordering;
        let range = range.start.min(self.len())..range.end.min(self.len());
        if range.is_empty() {
            return;
        }
        let found = first_unchained(&self.entries[range.clone()], &self.chain[range.clone()]);
        if let Some(at) = found {
            self.first_unchained
                .fetch_min(range.start + at, Ordering::AcqRel);
        }
        self.pieces().push(range);
    }

    /// Runs `fold` with the whole check on a second thread beside it, for a read of more
    /// than `PARALLEL_CHAIN_CHECK_MIN_RECORDS` records when the process may use more than
    /// one CPU; else the check first, then `fold` (which then sees only checked records,
    /// unless the check failed: [`fold_back`] returns its error whatever `fold` did).
    pub fn beside<T>(&self, fold: impl FnOnce() -> T) -> T {
        if self.len() <= PARALLEL_CHAIN_CHECK_MIN_RECORDS || !several_cpus() {
            self.check(0..self.len());
            return fold();
        }
        std::thread::scope(|scope| {
            let checker = std::thread::Builder::new()
                .name("evershard-chain-check".into())
                .spawn_scoped(scope, || self.check(0..self.len()));
            let folded = fold();
            if let Ok(checker) = checker {
                checker.join().expect("a SHA-256 loop does not panic");
            }
            folded
        })
    }

    /// Checks what the fold left unchecked (the gaps between its pieces: only those, so a
    /// fold that stopped early costs the rest of the check, not all of it again); the
    /// oldest unchained record, if any. Called once the fold and its threads are done.
    fn verdict(&self) -> Option<usize> {
        use std::sync::atomic::Ordering;
        let mut pieces = std::mem::take(&mut *self.pieces());
        pieces.sort_unstable_by_key(|piece| piece.start);
        let mut gaps = Vec::new();
        let mut covered = 0;
        for piece in pieces {
            if piece.start > covered {
                gaps.push(covered..piece.start);
            }
            covered = covered.max(piece.end);
        }
        gaps.push(covered..self.len());
        for gap in gaps {
            self.check(gap);
        }
        match self.first_unchained.load(Ordering::Acquire) {
            usize::MAX => None,
            at => Some(at),
        }
    }
}

/// Records in a read longer than this have their chain checked on a second thread while they
/// are folded: below it, a thread costs more than it saves (a record's SHA-256 is about
/// 0.3 µs; starting a thread, tens of µs).
pub(super) const PARALLEL_CHAIN_CHECK_MIN_RECORDS: usize = 512;

/// Whether this process may run on more than one CPU (its affinity and cgroup quota, as
/// `available_parallelism` reads them once): on one, a second thread only takes turns with
/// the fold (5-30% slower replays under `taskset -c 0`).
pub(super) fn several_cpus() -> bool {
    static SEVERAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SEVERAL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// The oldest record whose bytes do not hash to the value the chain names for it.
fn first_unchained(entries: &[Vec<u8>], chain: &[record::Hash]) -> Option<usize> {
    entries
        .iter()
        .zip(chain)
        .position(|(bytes, hash)| record::hash(bytes) != *hash)
}

/// The bytes of a stream's records from `head` back to sequence `from` (at least 1), oldest
/// first, found by the previous-address pointers alone (nothing parsed: see [`place`]).
/// `None` when a read fails or a pointer does not lead back: the strict walk
/// ([`read_back_strict`]) then names the problem.
fn entries_back<L: std::ops::Deref<Target = SegmentLog>>(
    log: &impl Fn() -> L,
    head: LogHead,
    from: u64,
) -> Option<Vec<Vec<u8>>> {
    let from = from.max(1);
    if head.sequence < from {
        return Some(Vec::new());
    }
    let mut entries = Vec::with_capacity((head.sequence - from + 1) as usize);
    let (mut address, mut sequence) = (head.address, head.sequence);
    let mut window = Window::default();
    loop {
        let r = window.record_at(log, address).ok()?;
        entries.push(r.bytes);
        if sequence == 1 {
            break;
        }
        // Every record but the first points back, the last one read too (as in the strict
        // walk: the pointer lies outside the bytes the chain vouches for).
        if r.previous_address == 0 || r.previous_address >= address {
            return None;
        }
        if sequence == from {
            break;
        }
        (address, sequence) = (r.previous_address, sequence - 1);
    }
    entries.reverse();
    Some(entries)
}

/// The views of [`entries_back`]'s records, each parsed once (no CRC: the chain vouches for
/// the bytes) and its place checked as [`read_back_strict`] checks it, with the SHA-256 the
/// chain names for each (the next record's `prev_hash`, the head's hash for the newest).
/// `None` when any of that fails: the strict walk then names the problem in its order, which
/// this one does not keep.
fn place<'a>(
    stream: &StreamId,
    head: LogHead,
    entries: &'a [Vec<u8>],
) -> Option<(Vec<RecordView<'a>>, Vec<record::Hash>)> {
    let mut views = Vec::with_capacity(entries.len());
    let mut chain = Vec::with_capacity(entries.len());
    let (mut sequence, mut hash, mut position_max) = (head.sequence, head.hash, head.position);
    for bytes in entries.iter().rev() {
        let view = RecordView::of_checked(bytes).ok()?;
        let position = view.global_position;
        if view.aggregate_type != stream.aggregate_type
            || view.aggregate_id != stream.aggregate_id
            || view.sequence != sequence
            || position > position_max
            || (views.is_empty() && position != head.position)
        {
            return None;
        }
        chain.push(hash);
        hash = *view.prev_hash;
        views.push(view);
        (sequence, position_max) = (sequence.saturating_sub(1), position.saturating_sub(1));
    }
    views.reverse();
    chain.reverse();
    Some((views, chain))
}

/// [`read_back`] one check at a time, each record's hash before its place: the walk that
/// names the first problem from the head down (a damaged record `Damaged`, bytes that are
/// intact but not the chain's `HashChain`), taken when the fast walk finds one.
fn read_back_strict<L: std::ops::Deref<Target = SegmentLog>>(
    log: impl Fn() -> L,
    stream: &StreamId,
    head: LogHead,
    from: u64,
) -> Result<Vec<(u64, Vec<u8>)>, LogIndexError> {
    {
        let from = from.max(1);
        let mut out = Vec::with_capacity(head.sequence.saturating_sub(from) as usize + 1);
        let (mut address, mut sequence, mut hash) = (head.address, head.sequence, head.hash);
        let mut position_max = head.position;
        let mut window = Window::default();
        while sequence >= from {
            let r = window.record_at(&log, address)?;
            let damaged = |source| LogIndexError::Damaged {
                stream: stream.clone(),
                sequence,
                position: position_max,
                source,
            };
            // The chain first: bytes whose SHA-256 is the one the record after them (or the
            // head) names are the bytes written, so their CRC holds and is not computed again
            // (it was a tenth of a full replay). Bytes that fail it get the full check, so a
            // damaged record is still named `Damaged` before `HashChain`, as before.
            let chained = record::hash(&r.bytes) == hash;
            let view = match chained {
                true => RecordView::of_checked(&r.bytes),
                false => RecordView::check(&r.bytes),
            }
            .map_err(damaged)?;
            let position = view.global_position;
            let chain = |reason| LogIndexError::Chain {
                stream: stream.clone(),
                position,
                reason,
            };
            if view.aggregate_type != stream.aggregate_type
                || view.aggregate_id != stream.aggregate_id
                || view.sequence != sequence
                || position > position_max
                || (out.is_empty() && position != head.position)
            {
                return Err(chain("a previous-address pointer leads to another record"));
            }
            if !chained {
                return Err(LogIndexError::HashChain {
                    stream: stream.clone(),
                    sequence,
                    position,
                });
            }
            hash = *view.prev_hash;
            out.push((position, r.bytes));
            if sequence == 1 {
                break;
            }
            if r.previous_address == 0 || r.previous_address >= address {
                return Err(chain("a previous-address pointer does not go back"));
            }
            (address, sequence, position_max) = (r.previous_address, sequence - 1, position - 1);
        }
        out.reverse();
        Ok(out)
    }
}

/// A stream's record entries from `head` back to sequence 1, oldest first, as (sequence,
/// bytes), following the previous-address pointers whatever the records hold (an entry's
/// pointer lies outside its record's bytes, so a damaged record does not end the walk): what
/// `verify` hands a visitor. False when a pointer does not lead back (the walk stopped).
pub fn walk_back<L: std::ops::Deref<Target = SegmentLog>>(
    log: impl Fn() -> L,
    head: LogHead,
) -> (Vec<(u64, Vec<u8>)>, bool) {
    let mut window = Window::default();
    let mut out = Vec::with_capacity(head.sequence as usize);
    let (mut address, mut sequence) = (head.address, head.sequence);
    let complete = loop {
        let Ok(entry) = window.record_at(&log, address) else {
            break false;
        };
        out.push((sequence, entry.bytes));
        if sequence == 1 {
            break true;
        }
        if entry.previous_address == 0 || entry.previous_address >= address {
            break false;
        }
        (address, sequence) = (entry.previous_address, sequence - 1);
    };
    out.reverse();
    (out, complete)
}

/// Bytes a backward read fetches at once: a stream's records written close together (one
/// aggregate's burst, a replay's 10,000 events) come from one read instead of two per record.
const READ_BACK_WINDOW_BYTES: u64 = 64 << 10;

/// The bytes of the log last read by a walk back along a stream's pointers.
#[derive(Default)]
struct Window {
    /// Address of `bytes[0]`.
    start: u64,
    bytes: Vec<u8>,
}

impl Window {
    /// The record entry at `address`: from the window when it holds it whole, else after
    /// reading the window that ends just past the entry's header (pointers lead backwards,
    /// so the next records are most likely before it).
    fn record_at<L: std::ops::Deref<Target = SegmentLog>>(
        &mut self,
        log: &impl Fn() -> L,
        address: u64,
    ) -> Result<FrameRecord, LogIndexError> {
        if let Some(r) = self.entry(address) {
            return Ok(r);
        }
        // The window ends a typical record past the entry (a longer one is read alone).
        let end = address + ENTRY_HEADER_BYTES as u64 + READ_BACK_RECORD_BYTES;
        let mut start = end.saturating_sub(READ_BACK_WINDOW_BYTES);
        // Not before the segment holding the entry (the span read stays in one segment).
        // The log is held for each read only, not for the whole walk: a long stream's
        // reader does not hold the committer's appends back.
        let (base, _) = log().read_span(address, 0)?;
        start = start.max(base);
        // The window is replaced: forget it before the read, which may fail.
        self.start = u64::MAX;
        self.bytes.clear();
        log().read_span_into(start, (end - start) as usize, &mut self.bytes)?;
        self.start = start;
        match self.entry(address) {
            Some(r) => Ok(r),
            // A record longer than the window: read it on its own.
            None => Ok(log().record_at_address(address)?),
        }
    }

    fn entry(&self, address: u64) -> Option<FrameRecord> {
        let at = usize::try_from(address.checked_sub(self.start)?).ok()?;
        let head = self.bytes.get(at..at + ENTRY_HEADER_BYTES)?;
        let previous_address = u64::from_le_bytes(head[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
        let bytes = self
            .bytes
            .get(at + ENTRY_HEADER_BYTES..at + ENTRY_HEADER_BYTES + len)?
            .to_vec();
        Some(FrameRecord {
            previous_address,
            bytes,
        })
    }
}

/// Record bytes a backward window reads past the entry it was read for.
const READ_BACK_RECORD_BYTES: u64 = 4 << 10;

/// Bytes of a record entry's header in a frame: previous address u64, length u32.
const ENTRY_HEADER_BYTES: usize = 12;

#[cfg(test)]
mod tests {
    //! A read's chain check names its oldest unchained record whatever pieces the fold
    //! checked: overlapping, with gaps, none, or all.
    use super::*;

    /// `records` records whose chain names every one's hash but those in `unchained`.
    fn read(records: usize, unchained: &[usize]) -> (Vec<Vec<u8>>, Vec<record::Hash>) {
        let entries: Vec<Vec<u8>> = (0..records)
            .map(|i| format!("record {i}").into_bytes())
            .collect();
        let chain = entries
            .iter()
            .enumerate()
            .map(|(i, bytes)| match unchained.contains(&i) {
                true => [0xEE; 32],
                false => record::hash(bytes),
            })
            .collect();
        (entries, chain)
    }

    #[test]
    fn pieces_that_overlap_and_leave_a_gap_still_check_every_record() {
        let (entries, chain) = read(20, &[15]);
        let check = ChainCheck::new(&entries, &chain);
        // Twenty records' worth of pieces, none of them past record 9: a count of checked
        // records took that for the whole read and passed record 15.
        check.check(0..10);
        check.check(0..10);
        assert_eq!(check.verdict(), Some(15));
    }

    #[test]
    fn the_oldest_unchained_record_is_named_whatever_was_checked_first() {
        // (start, end) of each piece a fold checked.
        let folds: [&[(usize, usize)]; 4] = [&[], &[(10, 20)], &[(0, 20)], &[(5, 8), (12, 30)]];
        for pieces in folds {
            let (entries, chain) = read(20, &[3, 15]);
            let check = ChainCheck::new(&entries, &chain);
            for &(start, end) in pieces {
                check.check(start..end);
            }
            assert_eq!(check.verdict(), Some(3), "pieces {pieces:?}");
        }
        let (entries, chain) = read(20, &[]);
        let check = ChainCheck::new(&entries, &chain);
        check.check(4..9);
        assert_eq!(check.verdict(), None);
    }
}
