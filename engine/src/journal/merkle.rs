//! The Merkle tree keyspace: what the tree maintainer (`crate::audit`) persists. Only the
//! journal touches sled, so the bytes live here; the hashing and the proofs live in
//! `crate::audit` and call these functions.
//!
//! ```text
//! h | level u8 | index u64 BE     -> 32 bytes: the hash of the complete subtree of 2^level
//!                                    leaves [index·2^level, (index+1)·2^level), level >= 8
//! m | "merkle-size"               -> the tree size the stored nodes cover, u64 LE
//! ```
//!
//! Leaves (one per event record, in global order) and subtrees below `STORED_LEVEL_MIN` are
//! never stored: they are recomputed from the records on demand (at most 255 records per
//! subtree). Nodes and the size move in one atomic batch per maintainer batch.

use super::keys;
use super::record::{self, Hash};
use super::{Journal, JournalWriter, Shared, StreamId};
use crate::error::{Corruption, StorageError};
use std::collections::VecDeque;

/// The keyspace tag of tree nodes.
pub const TREE: u8 = b'h';

/// The lowest level whose complete subtrees are stored: 2^8 = 256 leaves. One 42-byte key and
/// 32-byte value per 128 events on average (levels 8, 9, … halve each time).
pub const STORED_LEVEL_MIN: u8 = 8;

pub(crate) const SIZE_KEY: &[u8] = b"mmerkle-size";
/// Present once a maintainer that follows the synced watermark stored the size (builds from
/// 2026-11-28 on): the size is then a floor below which the log was synced, which a
/// writable open of the segment log holds it to (see `logstore::writable_floor`). Written
/// after the size, so that it is never seen beside a size an older build stored (whose
/// maintainer, in buffered mode, followed the acknowledged watermark). Its own key, not a
/// longer size value: builds that do not know it still read the size.
pub(crate) const SIZE_FOLLOWS_SYNCED_KEY: &[u8] = b"mmerkle-size-synced";

/// `h | level | index BE`.
pub fn node_key(level: u8, index: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[0] = TREE;
    key[1] = level;
    key[2..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The level and index of a node key, if `key` is one.
pub fn parse_node_key(key: &[u8]) -> Option<(u8, u64)> {
    if key.len() != 10 || key[0] != TREE {
        return None;
    }
    Some((key[1], u64::from_be_bytes(key[2..].try_into().ok()?)))
}

fn malformed() -> StorageError {
    StorageError::corrupt_store(Corruption::MalformedKey {
        keyspace: "merkle tree",
    })
}

/// One stored record as read in global order: its position, where it is stored, its bytes.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub position: u64,
    pub stream: StreamId,
    pub sequence: u64,
    pub bytes: Vec<u8>,
}

/// Record hashes the feed keeps at most (32 bytes each: 8 MiB). Sixteen maintainer steps:
/// a maintainer that falls further behind than this (a stalled disk, a slow machine) loses
/// the oldest hashes and reads those records back from sled, as after a restart.
pub(crate) const RECORD_HASH_FEED_MAX: usize = 262_144;

/// The SHA-256 of each record the committer wrote, in global order, from `first` on: handed
/// to the tree maintainer so that it hashes leaves without reading every record back from
/// sled (the committer hashed each record's bytes for the chain anyway). A cache only: it
/// starts empty, forgets its oldest entries past [`RECORD_HASH_FEED_MAX`], and whatever it
/// does not hold is read from the stored records.
#[derive(Debug, Default)]
pub(crate) struct RecordHashFeed {
    /// The global position of `hashes[0]`.
    first: u64,
    hashes: VecDeque<Hash>,
}

impl RecordHashFeed {
    /// Appends the hashes of positions `first..first + hashes.len()`; drops the oldest past
    /// `max`.
    fn push(&mut self, first: u64, hashes: &[Hash], max: usize) {
        if self.first + self.hashes.len() as u64 != first {
            // The first group after the maintainer started (or a gap, which the committer
            // never leaves): start over here; earlier positions come from sled.
            self.hashes.clear();
            self.first = first;
        }
        self.hashes.extend(hashes.iter().copied());
        let over = self.hashes.len().saturating_sub(max);
        if over > 0 {
            self.hashes.drain(..over);
            self.first += over as u64;
        }
    }

    /// Forgets everything below `from`; when the feed reaches `to`, takes the hashes of
    /// `max(from, first)..=to` and answers that first position with them. `None` when the
    /// feed does not reach `to` (then all of `from..=to` is read from the records).
    fn take(&mut self, from: u64, to: u64) -> Option<(u64, Vec<Hash>)> {
        let stale = from
            .saturating_sub(self.first)
            .min(self.hashes.len() as u64);
        self.hashes.drain(..stale as usize);
        self.first += stale;
        let end = self.first + self.hashes.len() as u64; // exclusive
        if self.hashes.is_empty() || self.first > to || end <= to {
            return None;
        }
        let fed_from = self.first.max(from);
        let take = (to + 1 - self.first) as usize;
        let skip = (fed_from - self.first) as usize;
        let fed = self.hashes.drain(..take).skip(skip).collect();
        self.first = to + 1;
        Some((fed_from, fed))
    }
}

impl Shared {
    /// The committer wrote (applied) the records at positions `first..first + hashes.len()`,
    /// with these SHA-256s. Called once per group, after `apply_batch` succeeded.
    pub(super) fn feed_record_hashes(&self, first: u64, hashes: &[Hash]) {
        if hashes.is_empty() {
            return;
        }
        let mut feed = self.record_hashes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feed.as_mut() {
            feed.push(first, hashes, RECORD_HASH_FEED_MAX);
        }
    }
}

impl JournalWriter {
    /// From now on the committer hands the hash of every record it writes to
    /// [`JournalWriter::record_hashes_between`]. One reader: the tree maintainer.
    pub(crate) fn feed_record_hashes(&self) {
        let mut feed = self
            .shared
            .record_hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        feed.get_or_insert_with(RecordHashFeed::default);
    }

    /// The SHA-256 of the stored records at global positions `from..=to`, in order, and
    /// forgets the fed hashes up to `to`. Positions the feed holds (written by this process's
    /// committer, identical to the stored bytes) cost no read; the others — after a restart,
    /// or when the maintainer fell far behind — are read from sled as
    /// [`Journal::stored_records_between`] reads them.
    pub(crate) fn record_hashes_between(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<Hash>, StorageError> {
        if to < from {
            return Ok(Vec::new());
        }
        let taken = self
            .shared
            .record_hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|feed| feed.take(from, to));
        let (fed_from, fed) = taken.unwrap_or((to + 1, Vec::new()));
        let mut out = Vec::with_capacity((to + 1 - from) as usize);
        if fed_from > from {
            let stored = self.stored_records_between(from, fed_from - 1)?;
            if stored.len() as u64 != fed_from - from {
                return Err(StorageError::corrupt_store(
                    Corruption::MalformedGlobalEntry,
                ));
            }
            for (i, r) in stored.iter().enumerate() {
                assert_eq!(r.position, from + i as u64, "global order broken");
                out.push(record::hash(&r.bytes));
            }
        }
        out.extend(fed);
        assert_eq!(
            out.len() as u64,
            to + 1 - from,
            "every position hashed once"
        );
        Ok(out)
    }
}

/// The stored tree size if a maintainer that follows the synced watermark stored it (see
/// [`SIZE_FOLLOWS_SYNCED_KEY`]): every position up to it was synced.
pub(crate) fn stored_synced_size(db: &sled::Db) -> Result<Option<u64>, StorageError> {
    match db.get(SIZE_FOLLOWS_SYNCED_KEY)? {
        Some(_) => stored_size(db).map(Some),
        None => Ok(None),
    }
}

/// The tree size the stored nodes of `db` cover (0 before the maintainer's first batch).
pub(crate) fn stored_size(db: &sled::Db) -> Result<u64, StorageError> {
    match db.get(SIZE_KEY)? {
        None => Ok(0),
        Some(v) => Ok(u64::from_le_bytes(
            v.as_ref().try_into().map_err(|_| malformed())?,
        )),
    }
}

impl Journal {
    /// The tree size the stored nodes cover (0 before the maintainer's first batch).
    pub(crate) fn merkle_size(&self) -> Result<u64, StorageError> {
        stored_size(&self.shared.db()?)
    }

    /// [`stored_synced_size`] of this store.
    #[cfg(test)]
    pub(crate) fn merkle_synced_size(&self) -> Result<Option<u64>, StorageError> {
        stored_synced_size(&self.shared.db()?)
    }

    /// A stored complete-subtree hash, if the maintainer wrote it.
    pub(crate) fn merkle_node(&self, level: u8, index: u64) -> Result<Option<Hash>, StorageError> {
        match self.shared.db()?.get(node_key(level, index))? {
            None => Ok(None),
            Some(v) => Ok(Some(v.as_ref().try_into().map_err(|_| malformed())?)),
        }
    }

    /// The stored bytes of the records at global positions `from..=to`, in order, unchecked
    /// (the tree hashes what is stored). Consecutive events of one stream are read with one
    /// range scan. A position the global index names but whose record is missing is an error.
    pub(crate) fn stored_records_between(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        if let Some(log) = &self.shared.log {
            let mut out = Vec::with_capacity((to + 1).saturating_sub(from) as usize);
            log.visit_positions(from, to, |position, bytes| {
                let view = super::record::RecordView::check(bytes)
                    .map_err(|e| StorageError::corrupt_store(Corruption::Record(e)))?;
                out.push(StoredRecord {
                    position,
                    stream: StreamId::new(view.aggregate_type, view.aggregate_id),
                    sequence: view.sequence,
                    bytes: bytes.to_vec(),
                });
                Ok::<(), StorageError>(())
            })?;
            return Ok(out);
        }
        let db = self.shared.db()?;
        let mut out: Vec<StoredRecord> = Vec::with_capacity((to + 1).saturating_sub(from) as usize);
        let mut run: Vec<(u64, StreamId, u64)> = Vec::new();
        let flush = |run: &mut Vec<(u64, StreamId, u64)>,
                     out: &mut Vec<StoredRecord>|
         -> Result<(), StorageError> {
            let Some((first_pos, stream, first_seq)) = run.first().cloned() else {
                return Ok(());
            };
            let count = run.len() as u64;
            let start = keys::stream_key(keys::EVENTS, &stream, first_seq);
            let end = keys::stream_key(keys::EVENTS, &stream, first_seq + count - 1);
            let mut expected = first_seq;
            for entry in db.range(start..=end) {
                let (key, value) = entry?;
                let (_, sequence) = keys::parse_stream_key(&key).ok_or_else(malformed)?;
                if sequence != expected {
                    return Err(StorageError::corrupt(
                        &stream,
                        expected,
                        Corruption::MissingRecord,
                    ));
                }
                out.push(StoredRecord {
                    position: first_pos + (sequence - first_seq),
                    stream: stream.clone(),
                    sequence,
                    bytes: value.to_vec(),
                });
                expected += 1;
            }
            if expected != first_seq + count {
                return Err(StorageError::corrupt(
                    &stream,
                    expected,
                    Corruption::MissingRecord,
                ));
            }
            run.clear();
            Ok(())
        };
        for item in self.read_global(from) {
            let (position, stream, sequence) = item?;
            if position > to {
                break;
            }
            let extends = run
                .last()
                .is_some_and(|(p, s, q)| *s == stream && p + 1 == position && q + 1 == sequence);
            if !extends {
                flush(&mut run, &mut out)?;
            }
            run.push((position, stream, sequence));
        }
        flush(&mut run, &mut out)?;
        Ok(out)
    }

    /// The highest committed global position (0 for an empty store).
    pub(crate) fn last_position(&self) -> Result<u64, StorageError> {
        let db = self.shared.db()?;
        match &self.shared.log {
            Some(log) => Ok(log.next_position() - 1),
            None => super::last_global_position(&db),
        }
    }
}

impl JournalWriter {
    /// Writes one maintainer batch: new complete-subtree nodes and the new size, atomically.
    /// `size_from` must be the stored size (one writer: the maintainer thread).
    pub(crate) fn write_merkle_batch(
        &self,
        size_from: u64,
        size_to: u64,
        nodes: &[(u8, u64, Hash)],
    ) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        assert!(size_to >= size_from, "merkle size moved backwards");
        assert_eq!(
            self.merkle_size()?,
            size_from,
            "merkle size changed under the maintainer"
        );
        let mut writes = Vec::with_capacity(nodes.len());
        for (level, index, hash) in nodes {
            assert!(*level >= STORED_LEVEL_MIN, "only levels >= 8 are stored");
            // A node is written once its subtree is complete, and only then.
            assert!((index + 1) << level <= size_to, "node beyond the tree size");
            writes.push((node_key(*level, *index).to_vec(), hash.to_vec()));
        }
        // The size last: a crash before it computes these nodes again, and readers trust
        // only nodes within the stored size (see `insert_then`).
        let db = self.shared.db()?;
        super::insert_then(
            &db,
            writes,
            (SIZE_KEY.to_vec(), size_to.to_le_bytes().to_vec()),
        )?;
        db.insert(SIZE_FOLLOWS_SYNCED_KEY, &[1u8][..])?;
        Ok(())
    }
}

/// Test hooks that damage the log the way the tampering tests need (feature
/// `fault-injection`). They bypass every check and write straight to sled.
#[cfg(feature = "fault-injection")]
impl Journal {
    /// Deletes one event's key (its record), leaving the global index pointing at it.
    pub fn delete_record_for_tests(
        &self,
        stream: &StreamId,
        sequence: u64,
    ) -> Result<(), StorageError> {
        self.sled_layout_only("delete_record_for_tests")?;
        let db = self.shared.db()?;
        db.remove(keys::stream_key(keys::EVENTS, stream, sequence))?
            .ok_or_else(|| StorageError::corrupt(stream, sequence, Corruption::MissingRecord))?;
        db.flush()?;
        Ok(())
    }

    /// Swaps the stored records of two events (each lands under the other's key).
    pub fn swap_records_for_tests(
        &self,
        a: (&StreamId, u64),
        b: (&StreamId, u64),
    ) -> Result<(), StorageError> {
        self.sled_layout_only("swap_records_for_tests")?;
        let db = self.shared.db()?;
        let key_a = keys::stream_key(keys::EVENTS, a.0, a.1);
        let key_b = keys::stream_key(keys::EVENTS, b.0, b.1);
        let missing = |s: &StreamId, q| StorageError::corrupt(s, q, Corruption::MissingRecord);
        let value_a = db.get(&key_a)?.ok_or_else(|| missing(a.0, a.1))?;
        let value_b = db.get(&key_b)?.ok_or_else(|| missing(b.0, b.1))?;
        db.insert(key_a, value_b)?;
        db.insert(key_b, value_a)?;
        db.flush()?;
        Ok(())
    }

    /// Cuts the log after global position `keep`: the later events' records and their
    /// global index entries are removed, as if the log had been truncated.
    pub fn truncate_log_for_tests(&self, keep: u64) -> Result<(), StorageError> {
        self.sled_layout_only("truncate_log_for_tests")?;
        let db = self.shared.db()?;
        let doomed: Vec<(u64, StreamId, u64)> =
            self.read_global(keep + 1).collect::<Result<_, _>>()?;
        for (_, stream, sequence) in &doomed {
            db.remove(keys::stream_key(keys::EVENTS, stream, *sequence))?;
        }
        for entry in db.scan_prefix([keys::GLOBAL]) {
            let (key, value) = entry?;
            let first = keys::parse_global_key(&key).ok_or_else(malformed)?;
            let runs = keys::parse_global_entry(&value).ok_or_else(malformed)?;
            if first > keep {
                db.remove(key)?;
            } else if first + keys::global_entry_len(&runs) - 1 > keep {
                let mut left = keep + 1 - first;
                let mut kept = Vec::new();
                for mut run in runs {
                    if left == 0 {
                        break;
                    }
                    run.count = run.count.min(left as u32);
                    left -= run.count as u64;
                    kept.push(run);
                }
                db.insert(key, keys::global_entry_value(&kept))?;
            }
        }
        db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(position: u64) -> Hash {
        let mut hash = [0; 32];
        hash[..8].copy_from_slice(&position.to_le_bytes());
        hash
    }

    fn hashes(positions: std::ops::RangeInclusive<u64>) -> Vec<Hash> {
        positions.map(h).collect()
    }

    #[test]
    fn the_record_hash_feed_answers_what_it_holds_and_forgets_the_rest() {
        let mut feed = RecordHashFeed::default();
        // Started after positions 1..=9 were written: those are not in the feed.
        feed.push(10, &hashes(10..=14), 100);
        feed.push(15, &hashes(15..=20), 100);
        // 5..=12: 5..=9 from the records, 10..=12 fed.
        assert_eq!(feed.take(5, 12), Some((10, hashes(10..=12))));
        assert_eq!(feed.take(13, 16), Some((13, hashes(13..=16))));
        // Beyond what was fed: all from the records, nothing taken.
        assert_eq!(feed.take(17, 25), None);
        assert_eq!(feed.take(17, 20), Some((17, hashes(17..=20))));
        assert!(feed.hashes.is_empty());
        // Past its bound it forgets the oldest: they come from the records.
        feed.push(21, &hashes(21..=30), 4);
        assert_eq!(feed.first, 27);
        assert_eq!(feed.take(21, 28), Some((27, hashes(27..=28))));
        // A gap (never left by the committer) starts the feed over.
        feed.push(40, &hashes(40..=41), 100);
        assert_eq!(feed.take(29, 41), Some((40, hashes(40..=41))));
    }

    #[test]
    fn node_keys_sort_by_level_then_index() {
        assert!(node_key(8, 1) < node_key(8, 2));
        assert!(node_key(8, u64::MAX) < node_key(9, 0));
        assert_eq!(node_key(9, 3)[0], b'h');
        assert_eq!(&node_key(9, 3)[2..], &3u64.to_be_bytes());
    }
}
