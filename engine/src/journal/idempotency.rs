//! Idempotency records: where each key's record is, how a command finds it, and the sweep.
//!
//! A command with an idempotency key records the key with its result in the same commit as
//! its events. The committer folds the records of one group commit into one sled entry, the
//! group entry (`I`, format 2: see `keys::idempotency_records_entry`), instead of one `i` key
//! per command. A random 16-byte key per command made sled insert into a different leaf for
//! every command, and a look-up of a new key read one more: profiled on the keyed bench, the
//! insert cost the syncer 6.8 µs and the `get` cost the command's worker 3.8 µs, about 60% of
//! what a key added to a command.
//!
//! On the segment log the frame holds the group entry and sled a copy of it that names only
//! its keys and the frame's address (format 3, `keys::idempotency_pointer_entry`): sled's copy
//! of every record was most of the bytes a key added. A look-up of a stored key reads the
//! record from the frame; a copy whose frame a power cut took is no record (see
//! `LogParts::idempotency_entry_at`).
//!
//! [`IdempotencyIndex`] keeps, in memory, which entry holds each stored key's record: a new
//! key is known to be new without reading sled, and a repeat reads one entry. It is built at
//! open from the `I` entries (and the `i` keys that stores written before format 2 hold), and
//! kept by the committer (every group entry it writes) and the sweep (every entry it removes).
//! A key recorded again answers with its newest record: the engine records a key again only
//! once its record has expired (or was found to name events a crash lost), so the later
//! written is the later recorded, and the build's time order finds the same one.
//! It is a hash table of 25-byte slots (type number, key, entry number, control byte) that
//! doubles when 7/8 full: 29 to 57 bytes per live key (the bench reports an engine's resident
//! memory over a store of 1,000,000 keys).
//!
//! The index may name an entry that sled does not hold (yet, or ever): the committer adds a
//! group entry's keys when it writes the entry, before a durable store's syncer applies it,
//! and a group that fails is never applied. A look-up that finds no record there answers
//! "not recorded", which is then true: a command whose key is looked up again waits for the
//! first one's acknowledgement (the engine runs one command per key at a time), and the
//! acknowledgement comes after the entry is applied.

use super::{keys, micros_to_time, record, IdempotencyEntry, Journal, Shared, StreamId};
use crate::error::{Corruption, StorageError};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Where the index found a key's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Its own `i` key (a store written before format-2 group entries).
    Legacy,
    /// The group entry with this sled key.
    Group(Vec<u8>),
}

/// A stored key: its aggregate type's number in [`IdempotencyIndex::types`] and the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Slot {
    type_id: u32,
    key: [u8; 16],
}

/// `held_by` of a key whose record is its own `i` key.
const LEGACY: u32 = u32::MAX;

/// A group entry the index points keys at, and how many keys it still holds for the index.
struct Group {
    key: Box<[u8]>,
    live: u32,
}

/// Which sled entry holds the record of each stored idempotency key (see the module docs).
#[derive(Default)]
pub(crate) struct IdempotencyIndex {
    /// Aggregate type names, numbered by their position.
    types: Vec<Box<[u8]>>,
    /// Each stored key → its group's index in `groups`, or [`LEGACY`].
    held_by: HashMap<Slot, u32>,
    groups: Vec<Group>,
    /// Indexes of `groups` no key points at any more, for reuse.
    free: Vec<u32>,
}

impl IdempotencyIndex {
    /// Reads every stored key's place: the `i` keys (stores written before format 2), then
    /// the group entries in time order, so a key recorded again points at its newest record.
    ///
    /// `frames_end`, on the segment log: the end of the log's frames. A format-3 entry
    /// pointing at or past it names a frame a crash took (sled may keep an entry the
    /// committer applied before its frame's `fdatasync`): it is left out, and returned, for
    /// a writer to remove before any frame is written there. Left in, it would hide the key's
    /// valid record whenever it sorts after it, as when the clock stepped back before the
    /// key was recorded again (found by review, 2026-11-28).
    pub(crate) fn build(
        db: &sled::Db,
        frames_end: Option<u64>,
    ) -> Result<(IdempotencyIndex, Vec<sled::IVec>), StorageError> {
        let mut index = IdempotencyIndex::default();
        for entry in db.scan_prefix([keys::IDEMPOTENCY]).keys() {
            index.add_legacy(&entry?);
        }
        let mut lost = Vec::new();
        for entry in db.scan_prefix([keys::IDEMPOTENCY_BY_TIME]) {
            let (key, value) = entry?;
            // A format-3 entry is parsed once, for its address and its keys.
            let i_keys = match keys::parse_idempotency_pointer_entry(&value) {
                Some((address, _)) if frames_end.is_some_and(|end| address >= end) => {
                    lost.push(key);
                    continue;
                }
                Some((_, i_keys)) => Some(i_keys),
                None => keys::idempotency_entry_keys(&value),
            };
            if let Some(i_keys) = i_keys {
                index.add_group(&key, i_keys.iter().map(|k| &k[..]));
            }
        }
        Ok((index, lost))
    }

    fn slot(&mut self, i_key: &[u8]) -> Option<Slot> {
        let (ty, key) = keys::parse_idempotency_key(i_key)?;
        let type_id = match self.types.iter().position(|t| &t[..] == ty) {
            Some(at) => at,
            None => {
                self.types.push(ty.into());
                self.types.len() - 1
            }
        };
        Some(Slot {
            type_id: u32::try_from(type_id).expect("fewer than 2^32 aggregate types"),
            key,
        })
    }

    fn find(&self, i_key: &[u8]) -> Option<Slot> {
        let (ty, key) = keys::parse_idempotency_key(i_key)?;
        let type_id = self.types.iter().position(|t| &t[..] == ty)?;
        Some(Slot {
            type_id: type_id as u32,
            key,
        })
    }

    /// Points `slot` at `holder`, releasing the group it pointed at before.
    fn point(&mut self, slot: Slot, holder: u32) {
        if let Some(before) = self.held_by.insert(slot, holder) {
            self.release(before);
        }
    }

    fn release(&mut self, holder: u32) {
        if holder == LEGACY {
            return;
        }
        let group = &mut self.groups[holder as usize];
        assert!(
            group.live > 0,
            "a group released more often than pointed at"
        );
        group.live -= 1;
        if group.live == 0 {
            group.key = Box::default();
            self.free.push(holder);
        }
    }

    fn add_legacy(&mut self, i_key: &[u8]) {
        if let Some(slot) = self.slot(i_key) {
            self.point(slot, LEGACY);
        }
    }

    /// The keys of a group entry the committer writes (or the build reads): each now points
    /// at this entry.
    pub(crate) fn add_group<'a>(&mut self, entry: &[u8], i_keys: impl Iterator<Item = &'a [u8]>) {
        let id = match self.free.pop() {
            Some(id) => {
                self.groups[id as usize] = Group {
                    key: entry.into(),
                    live: 0,
                };
                id
            }
            None => {
                self.groups.push(Group {
                    key: entry.into(),
                    live: 0,
                });
                u32::try_from(self.groups.len() - 1).expect("fewer than 2^32 live groups")
            }
        };
        for i_key in i_keys {
            if let Some(slot) = self.slot(i_key) {
                self.groups[id as usize].live += 1;
                self.point(slot, id);
            }
        }
        if self.groups[id as usize].live == 0 {
            self.groups[id as usize].key = Box::default();
            self.free.push(id);
        }
    }

    /// Where the record of `i_key` is, if the key is stored.
    pub(crate) fn locate(&self, i_key: &[u8]) -> Option<Holder> {
        let holder = *self.held_by.get(&self.find(i_key)?)?;
        Some(match holder {
            LEGACY => Holder::Legacy,
            id => Holder::Group(self.groups[id as usize].key.to_vec()),
        })
    }

    /// The sweep removed group entry `entry`: its keys that still point at it are gone.
    fn forget_group<'a>(&mut self, entry: &[u8], i_keys: impl Iterator<Item = &'a [u8]>) {
        for i_key in i_keys {
            let Some(slot) = self.find(i_key) else {
                continue;
            };
            if let Some(&id) = self.held_by.get(&slot) {
                if id != LEGACY && &self.groups[id as usize].key[..] == entry {
                    self.held_by.remove(&slot);
                    self.release(id);
                }
            }
        }
    }

    /// The sweep removed the `i` key `i_key`.
    fn forget_legacy(&mut self, i_key: &[u8]) {
        if let Some(slot) = self.find(i_key) {
            if self.held_by.get(&slot) == Some(&LEGACY) {
                self.held_by.remove(&slot);
            }
        }
    }

    /// Keys the index holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held_by.len()
    }
}

impl Shared {
    /// The index, built on first use by a reader (a writer builds it at open, before its
    /// committer starts, so none of its groups is missed).
    pub(super) fn idempotency_index(
        &self,
        db: &sled::Db,
    ) -> Result<MutexGuard<'_, IdempotencyIndex>, StorageError> {
        if self.idempotency.get().is_none() {
            // Two readers may both build it; the first one's stays (a reader's store does
            // not change under it).
            let frames_end = self.log.as_ref().map(|l| l.read_log().end_of_frames());
            let (index, _lost) = IdempotencyIndex::build(db, frames_end)?;
            let _ = self.idempotency.set(Mutex::new(index));
        }
        Ok(self
            .idempotency
            .get()
            .expect("set above")
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
    }
}

fn malformed() -> StorageError {
    StorageError::corrupt_store(Corruption::MalformedKey {
        keyspace: "idempotency",
    })
}

impl Journal {
    /// The idempotency record of `key` for an aggregate type, if one is stored.
    pub(crate) fn idempotency_record(
        &self,
        aggregate_type: &str,
        key: &uuid::Uuid,
    ) -> Result<Option<keys::IdempotencyRecord>, StorageError> {
        let db = self.shared.db()?;
        let i_key = keys::idempotency_key(aggregate_type, key);
        let holder = self.shared.idempotency_index(&db)?.locate(&i_key);
        // True when the record was read from its frame in the log (a format-3 pointer).
        let mut in_frame = false;
        let record = match holder {
            None => return Ok(None),
            Some(Holder::Legacy) => match db.get(&i_key)? {
                Some(value) => keys::IdempotencyRecord::decode(&value).ok_or_else(malformed)?,
                None => return Ok(None),
            },
            Some(Holder::Group(entry)) => {
                let Some(value) = db.get(&entry)? else {
                    return Ok(None); // not applied yet, or a group that failed
                };
                in_frame = value.first() == Some(&keys::IDEMPOTENCY_GROUP_FORMAT_V3);
                let Some(value) = self.group_records(&entry, &value)? else {
                    tracing::warn!(
                        aggregate_type,
                        %key,
                        "an idempotency entry points at a frame the log does not hold (a \
                         command lost in a crash): ignored"
                    );
                    return Ok(None);
                };
                let records =
                    keys::parse_idempotency_records_entry(&value).ok_or_else(malformed)?;
                // The last one: a group that recorded a key twice (raw writes can) holds
                // the newer record last.
                match records.iter().rev().find(|(k, _)| *k == i_key) {
                    Some((_, r)) => keys::IdempotencyRecord::decode(r).ok_or_else(malformed)?,
                    None => return Ok(None),
                }
            }
        };
        // On the segment log a power cut can keep sled's copy of a record whose frame was
        // lost: the committer applies a group's idempotency entries (and, in buffered mode,
        // all its writes) before the log's sync, and sled writes its buffer whenever it
        // likes. A record whose command's events, or the events it was decided on, the
        // stream does not have was never kept, and the command is decided afresh. (The sled
        // layout writes both in one batch.) The stream may have moved on since, with other
        // commands' events at those sequences: the first of the command's events must carry
        // its decide time, which the record holds too; for a command of no events, the last
        // event it was decided on must be no later than that.
        //
        // Not for a record read from its frame: the frame holds the command's events too, and
        // the log keeps a prefix of its frames (opening cuts everything after the first bad
        // one), so the events it was decided on, appended before it, are there. The time test
        // is also wrong for it: a clock that stepped back between those events and a command
        // of no events made a kept record look lost, and a repeat of its key (or the key
        // reused for another command) was decided afresh.
        if let (Some(log), false) = (&self.shared.log, in_frame) {
            let stream = StreamId::new(aggregate_type, record.aggregate_id.as_str());
            let (at, last, same_time) = match record.count {
                0 => (record.first_sequence - 1, record.first_sequence - 1, false),
                n => (
                    record.first_sequence,
                    record.first_sequence + u64::from(n) - 1,
                    true,
                ),
            };
            let kept = at == 0
                || log.head(&db, &stream)?.sequence >= last && {
                    let event = log.read_stream(&db, &stream, at, at)?;
                    event.first().is_some_and(|(_, bytes)| {
                        record::RecordView::check(bytes).is_ok_and(|v| match same_time {
                            true => v.timestamp_micros == record.recorded_at_micros,
                            false => v.timestamp_micros <= record.recorded_at_micros,
                        })
                    })
                };
            if !kept {
                tracing::warn!(
                    %stream,
                    %key,
                    "an idempotency record names events the log does not hold (a buffered \
                     command lost in a crash): ignored"
                );
                return Ok(None);
            }
        }
        Ok(Some(record))
    }

    /// The records value (format 2) of the group entry `entry` whose sled value is `value`:
    /// that value itself, or for its format-3 copy on the segment log, the entry as written
    /// into the frame it points at; `None` when no frame there holds it (see
    /// `LogParts::idempotency_entry_at`).
    pub(super) fn group_records(
        &self,
        entry: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        match value.first() {
            Some(&keys::IDEMPOTENCY_GROUP_FORMAT_V2) => Ok(Some(value.to_vec())),
            Some(&keys::IDEMPOTENCY_GROUP_FORMAT_V3) => {
                let (address, _) =
                    keys::parse_idempotency_pointer_entry(value).ok_or_else(malformed)?;
                // Only a store on the segment log writes them.
                let log = self.shared.log.as_ref().ok_or_else(malformed)?;
                log.idempotency_entry_at(address, entry)
            }
            _ => Err(malformed()),
        }
    }

    /// The idempotency keys stored for one aggregate instance (within or past the retention
    /// window; the sweep removes old ones), with when they were recorded and how many
    /// events their command committed from which sequence; a key recorded again is listed
    /// once, with its newest record. Reads every stored record.
    pub fn idempotency_keys(
        &self,
        stream: &StreamId,
    ) -> Result<Vec<IdempotencyEntry>, StorageError> {
        let db = self.shared.db()?;
        let t = stream.aggregate_type.as_bytes();
        let mut prefix = vec![keys::IDEMPOTENCY, t.len() as u8];
        prefix.extend_from_slice(t);
        let mut found: HashMap<[u8; 16], keys::IdempotencyRecord> = HashMap::new();
        let mut keep = |raw: [u8; 16], record: keys::IdempotencyRecord| {
            if record.aggregate_id != stream.aggregate_id {
                return;
            }
            let newer = found
                .get(&raw)
                .is_none_or(|r| r.recorded_at_micros <= record.recorded_at_micros);
            if newer {
                found.insert(raw, record);
            }
        };
        for entry in db.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let (_, raw) = keys::parse_idempotency_key(&key).ok_or_else(malformed)?;
            keep(
                raw,
                keys::IdempotencyRecord::decode(&value).ok_or_else(malformed)?,
            );
        }
        for entry in db.scan_prefix([keys::IDEMPOTENCY_BY_TIME]) {
            let (by_time, value) = entry?;
            // A format-3 entry's frame is read only if the entry holds a key of this type.
            let of_type = keys::idempotency_entry_keys(&value).is_some_and(|i_keys| {
                i_keys
                    .iter()
                    .any(|k| keys::parse_idempotency_key(k).is_some_and(|(ty, _)| ty == t))
            });
            if !of_type {
                continue;
            }
            let value = self.group_records(&by_time, &value)?.unwrap_or_default();
            for (i_key, bytes) in keys::parse_idempotency_records_entry(&value).unwrap_or_default()
            {
                match keys::parse_idempotency_key(&i_key) {
                    Some((ty, raw)) if ty == t => {
                        keep(
                            raw,
                            keys::IdempotencyRecord::decode(bytes).ok_or_else(malformed)?,
                        );
                    }
                    _ => {}
                }
            }
        }
        let mut out: Vec<IdempotencyEntry> = found
            .into_iter()
            .map(|(raw, record)| IdempotencyEntry {
                key: uuid::Uuid::from_bytes(raw),
                recorded_at: micros_to_time(record.recorded_at_micros),
                first_sequence: record.first_sequence,
                events: record.count,
            })
            .collect();
        out.sort_by_key(|e| (e.recorded_at, e.key));
        Ok(out)
    }

    /// Removes up to `limit` idempotency records recorded before `before_micros`, oldest
    /// first (whole entries: a group entry's records go together); returns how many it
    /// removed. Like snapshot writes, not part of a command's batch and not synced: a sweep
    /// lost in a crash is simply done again. A key recorded again meanwhile keeps its newer
    /// record: the older one's entry goes, the index keeps pointing at the newer (for an `i`
    /// key, the removal is a compare-and-swap against the value the sweep read).
    pub(crate) fn sweep_idempotency(
        &self,
        before_micros: i64,
        limit: usize,
    ) -> Result<usize, StorageError> {
        self.shared.check_writable()?;
        super::failpoint::check(super::failpoint::IDEMPOTENCY_SWEEP)?;
        let db = self.shared.db()?;
        let end = {
            let mut k = vec![keys::IDEMPOTENCY_BY_TIME];
            k.extend_from_slice(&keys::time_key_part(before_micros));
            k
        };
        // Whole entries, oldest first, until they name `limit` records.
        let mut old = Vec::new();
        let mut named = 0;
        for entry in db.range(vec![keys::IDEMPOTENCY_BY_TIME]..end) {
            if named >= limit {
                break;
            }
            let (by_time, value) = entry?;
            named += keys::idempotency_entry_keys(&value)
                .map(|k| k.len())
                .or_else(|| keys::parse_idempotency_sweep_entry(&by_time, &value).map(|l| l.len()))
                .unwrap_or(1);
            old.push((by_time, value));
        }
        let mut removed = 0;
        for (by_time, value) in old {
            if let Some(i_keys) = keys::idempotency_entry_keys(&value) {
                db.remove(&by_time)?;
                self.shared
                    .idempotency_index(&db)?
                    .forget_group(&by_time, i_keys.iter().map(|k| &k[..]));
                removed += i_keys.len();
                continue;
            }
            // An entry of the formats before: a one-key entry, or a group entry (format 1)
            // listing `i` keys. A malformed one is removed and counted as one.
            let listed = keys::parse_idempotency_sweep_entry(&by_time, &value).unwrap_or_default();
            removed += usize::from(listed.is_empty());
            for (at, key) in listed {
                if let Some(value) = db.get(&key)? {
                    let same = keys::IdempotencyRecord::decode(&value)
                        .is_some_and(|r| r.recorded_at_micros == at);
                    if same {
                        // Err(CompareAndSwapError): replaced meanwhile; keep the new one.
                        if db
                            .compare_and_swap(&key, Some(value), None::<&[u8]>)?
                            .is_ok()
                        {
                            self.shared.idempotency_index(&db)?.forget_legacy(&key);
                        }
                    }
                }
                removed += 1;
            }
            db.remove(by_time)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    //! The index points each key at its newest record, releases a group once no key points at
    //! it, and leaves a key that moved to a newer group alone when the older one is swept.

    use super::*;

    fn i_key(ty: &str, n: u128) -> Vec<u8> {
        keys::idempotency_key(ty, &uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_key_points_at_its_newest_group_and_a_swept_group_forgets_only_its_own_keys() {
        let mut index = IdempotencyIndex::default();
        let (a, b, c) = (i_key("T", 1), i_key("T", 2), i_key("U", 1));
        index.add_legacy(&a);
        assert_eq!(index.locate(&a), Some(Holder::Legacy));
        index.add_group(b"g1", [&a[..], &b[..]].into_iter());
        index.add_group(b"g2", [&b[..], &c[..]].into_iter());
        assert_eq!(index.locate(&a), Some(Holder::Group(b"g1".to_vec())));
        assert_eq!(index.locate(&b), Some(Holder::Group(b"g2".to_vec())));
        assert_eq!(index.locate(&c), Some(Holder::Group(b"g2".to_vec())));
        assert_eq!(index.locate(&i_key("T", 3)), None);
        assert_eq!(index.locate(&i_key("V", 1)), None, "an unknown type");
        // Sweeping g1 removes a, and leaves b (recorded again in g2).
        index.forget_group(b"g1", [&a[..], &b[..]].into_iter());
        assert_eq!(index.locate(&a), None);
        assert_eq!(index.locate(&b), Some(Holder::Group(b"g2".to_vec())));
        assert_eq!(index.free.len(), 1, "g1 holds no key any more");
        // Its slot is reused, and a legacy key is not taken by a group's sweep.
        index.add_legacy(&a);
        index.add_group(b"g3", [&i_key("T", 4)[..]].into_iter());
        assert!(index.free.is_empty());
        index.forget_group(b"g3", [&a[..]].into_iter());
        assert_eq!(index.locate(&a), Some(Holder::Legacy));
        index.forget_legacy(&a);
        assert_eq!(index.locate(&a), None);
        assert_eq!(index.len(), 3);
    }

    fn record(at: i64) -> keys::IdempotencyRecord {
        keys::IdempotencyRecord {
            recorded_at_micros: at,
            digest: [0; 32],
            aggregate_id: "a".into(),
            first_sequence: 1,
            count: 0,
        }
    }

    /// What the entity writes for key `n` recorded at `at`: the record under its `i` key.
    fn recorded(n: u128, at: i64) -> Vec<super::super::WriteOp> {
        crate::sharding::idempotency_ops("T", &uuid::Uuid::from_u128(n), &record(at)).to_vec()
    }

    /// The one-key `I` entry requests carried beside the record before group entries (a
    /// cluster peer of an older build still sends it): the committer drops it.
    fn legacy_sweep_entry(n: u128, at: i64) -> super::super::WriteOp {
        super::super::WriteOp::Put {
            key: keys::idempotency_by_time_key(at, "T", &uuid::Uuid::from_u128(n)),
            value: Vec::new(),
        }
    }

    fn count(db: &sled::Db, tag: u8) -> usize {
        db.scan_prefix([tag]).count()
    }

    fn recorded_at(journal: &Journal, n: u128) -> Option<i64> {
        journal
            .idempotency_record("T", &uuid::Uuid::from_u128(n))
            .unwrap()
            .map(|r| r.recorded_at_micros)
    }

    #[test]
    fn records_of_every_format_are_found_and_swept_and_a_key_recorded_again_keeps_its_newest() {
        use super::super::{AppendRequest, Durability, JournalConfig, JournalWriter};
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            durability: Durability::Buffered {
                flush_every_ms: 1000,
            },
            ..JournalConfig::default()
        };
        // A store as written before format 2: key 1 with a one-key entry (at 10), keys 2 and
        // 3 listed by a format-1 group entry (at 12 and 14), each record under its `i` key.
        let writer = JournalWriter::open(dir.path(), config.clone()).unwrap();
        let db = writer.shared.db().unwrap();
        for (n, at) in [(1, 10), (2, 12), (3, 14)] {
            let key = i_key("T", n);
            db.insert(&key, record(at).encode()).unwrap();
        }
        db.insert(
            keys::idempotency_by_time_key(10, "T", &uuid::Uuid::from_u128(1)),
            &[][..],
        )
        .unwrap();
        let (k2, k3) = (i_key("T", 2), i_key("T", 3));
        let (v1_key, v1_value) = keys::idempotency_group_entry(&[(12, &k2[..]), (14, &k3[..])]);
        db.insert(v1_key, v1_value).unwrap();
        drop(db);
        writer.close().unwrap();

        // Reopened: the index finds them (built from the `i` keys).
        let writer = JournalWriter::open(dir.path(), config.clone()).unwrap();
        let db = writer.shared.db().unwrap();
        assert_eq!(recorded_at(&writer, 1), Some(10));
        assert_eq!(recorded_at(&writer, 3), Some(14));
        assert_eq!(recorded_at(&writer, 4), None);
        // Keys 4 and 5 in one request (one group): one format-2 entry, no `i` key.
        let stream = StreamId::new("T", "a");
        let mut request = AppendRequest::new(stream.clone(), 0, Vec::new());
        request.extra_writes = recorded(4, 20)
            .into_iter()
            .chain([legacy_sweep_entry(4, 20)])
            .chain(recorded(5, 30))
            .collect();
        writer.append_blocking(request).unwrap();
        assert_eq!(count(&db, keys::IDEMPOTENCY), 3, "only the old store's");
        assert_eq!(
            count(&db, keys::IDEMPOTENCY_BY_TIME),
            3,
            "the old store's two and one group entry (the one-key entry dropped)"
        );
        assert_eq!(recorded_at(&writer, 4), Some(20));
        assert_eq!(recorded_at(&writer, 5), Some(30));
        // Key 2 recorded again at 40 (its window had ended).
        let mut again = AppendRequest::new(stream.clone(), 0, Vec::new());
        again.extra_writes = recorded(2, 40);
        writer.append_blocking(again).unwrap();
        assert_eq!(recorded_at(&writer, 2), Some(40));
        let listed: Vec<_> = writer
            .idempotency_keys(&stream)
            .unwrap()
            .into_iter()
            .map(|e| (e.key.as_u128(), e.recorded_at.timestamp_micros()))
            .collect();
        assert_eq!(listed, vec![(1, 10), (3, 14), (4, 20), (5, 30), (2, 40)]);

        // Before 25: the one-key entry and the format-1 group (3 records); key 2 keeps its
        // record of 40.
        assert_eq!(writer.sweep_idempotency(25, 100).unwrap(), 3);
        assert_eq!(count(&db, keys::IDEMPOTENCY), 0);
        assert_eq!(recorded_at(&writer, 1), None);
        assert_eq!(recorded_at(&writer, 3), None);
        assert_eq!(recorded_at(&writer, 2), Some(40));
        // Before 31: the group of keys 4 and 5 (its time is their latest, 30).
        assert_eq!(writer.sweep_idempotency(31, 100).unwrap(), 2);
        assert_eq!(recorded_at(&writer, 4), None);
        assert_eq!(recorded_at(&writer, 2), Some(40));
        drop(db);
        writer.close().unwrap();

        // Reopened, the index is built from the one entry left; then it goes too.
        let writer = JournalWriter::open(dir.path(), config).unwrap();
        assert_eq!(recorded_at(&writer, 2), Some(40));
        assert_eq!(recorded_at(&writer, 5), None);
        assert_eq!(writer.sweep_idempotency(41, 100).unwrap(), 1);
        assert_eq!(recorded_at(&writer, 2), None);
        let db = writer.shared.db().unwrap();
        assert_eq!(count(&db, keys::IDEMPOTENCY_BY_TIME), 0);
        assert_eq!(writer.shared.idempotency_index(&db).unwrap().len(), 0);
        drop(db);
        writer.close().unwrap();
    }

    fn log_end(writer: &super::super::JournalWriter) -> u64 {
        writer
            .shared
            .log
            .as_ref()
            .expect("a store on the segment log")
            .read_log()
            .end_of_frames()
    }

    fn durable_on_the_log() -> super::super::JournalConfig {
        super::super::JournalConfig {
            durability: super::super::Durability::Durable,
            write_path: super::super::WritePath::Log,
            ..Default::default()
        }
    }

    #[test]
    fn on_the_segment_log_sled_holds_keys_and_a_frame_address_and_a_stale_address_is_no_record() {
        use super::super::{AppendRequest, JournalWriter};
        let dir = tempfile::tempdir().unwrap();
        let config = durable_on_the_log();
        let writer = JournalWriter::open(dir.path(), config.clone()).unwrap();
        let stream = StreamId::new("T", "a");
        let mut request = AppendRequest::new(stream.clone(), 0, Vec::new());
        request.extra_writes = recorded(1, 10).into_iter().chain(recorded(2, 11)).collect();
        writer.append_blocking(request).unwrap();
        let db = writer.shared.db().unwrap();
        let entries: Vec<_> = db
            .scan_prefix([keys::IDEMPOTENCY_BY_TIME])
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(entries.len(), 1);
        let (_, value) = &entries[0];
        // The keys and the frame's address, not the records: 1 + 8 + one run of type "T"
        // (1 + 1 + 2) + two keys of 16 bytes.
        assert_eq!(value[0], keys::IDEMPOTENCY_GROUP_FORMAT_V3);
        assert_eq!(value.len(), 9 + 4 + 32);
        let (address, i_keys) = keys::parse_idempotency_pointer_entry(value).unwrap();
        assert_eq!(i_keys, vec![i_key("T", 1), i_key("T", 2)]);
        assert_eq!(recorded_at(&writer, 1), Some(10));
        assert_eq!(recorded_at(&writer, 2), Some(11));

        // What a power cut can leave: sled's copy of an entry whose frame the log lost, the
        // address then past the log's end, inside a later frame, or at a later frame that
        // holds other writes. None of them is a record; the listing skips them and the sweep
        // removes them.
        let mut other = AppendRequest::new(stream.clone(), 0, Vec::new());
        other.extra_writes = recorded(9, 12);
        writer.append_blocking(other).unwrap();
        let end = log_end(&writer);
        let later = keys::parse_idempotency_pointer_entry(
            &db.scan_prefix([keys::IDEMPOTENCY_BY_TIME])
                .map(|e| e.unwrap().1)
                .find(|v| keys::parse_idempotency_pointer_entry(v).unwrap().0 != address)
                .unwrap(),
        )
        .unwrap()
        .0;
        for (n, stale_address) in [(3u128, end + 4096), (4, address + 3), (5, later)] {
            let records = [(i_key("T", n), record(13).encode())];
            let pairs: Vec<(&[u8], &[u8])> =
                records.iter().map(|(k, r)| (&k[..], &r[..])).collect();
            let (key, full) = keys::idempotency_records_entry(&pairs);
            let pointer = keys::idempotency_pointer_entry(stale_address, &full).unwrap();
            db.insert(&key, pointer).unwrap();
            writer
                .shared
                .idempotency_index(&db)
                .unwrap()
                .add_group(&key, [&records[0].0[..]].into_iter());
            assert_eq!(
                recorded_at(&writer, n),
                None,
                "stale address {stale_address}"
            );
        }
        let listed: Vec<_> = writer
            .idempotency_keys(&stream)
            .unwrap()
            .into_iter()
            .map(|e| e.key.as_u128())
            .collect();
        assert_eq!(listed, vec![1, 2, 9]);

        // A frame that begins at the address but whose body fails its CRC is corruption
        // (damage after open: opening checks every body), not a key to decide afresh.
        let segment = std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let body_byte = address + super::super::seglog::FRAME_HEADER_BYTES as u64 + 1;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segment)
            .unwrap();
        let mut byte = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, body_byte).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0xFF], body_byte).unwrap();
        let damaged = writer.idempotency_record("T", &uuid::Uuid::from_u128(1));
        assert!(
            matches!(damaged, Err(StorageError::Corrupt { .. })),
            "{damaged:?}"
        );
        std::os::unix::fs::FileExt::write_all_at(&file, &byte, body_byte).unwrap();
        assert_eq!(recorded_at(&writer, 1), Some(10));
        drop(db);
        writer.close().unwrap();

        // Reopened: found through the frame again (the index built from the keys alone).
        let writer = JournalWriter::open(dir.path(), config).unwrap();
        assert_eq!(recorded_at(&writer, 2), Some(11));
        assert_eq!(recorded_at(&writer, 4), None);
        // Five: the entry past the log's end went at open (see `build`).
        assert_eq!(writer.sweep_idempotency(14, 100).unwrap(), 5);
        assert_eq!(recorded_at(&writer, 1), None);
        let db = writer.shared.db().unwrap();
        assert_eq!(count(&db, keys::IDEMPOTENCY_BY_TIME), 0);
        drop(db);
        writer.close().unwrap();
    }

    #[test]
    fn an_entry_whose_frame_a_crash_took_is_removed_at_open_and_hides_no_valid_record() {
        // Recorded at 10 and acknowledged. The power cut took a frame that recorded the key
        // at 20 (before the clock stepped back), but sled kept that frame's entry.
        use super::super::{AppendRequest, JournalWriter};
        let dir = tempfile::tempdir().unwrap();
        let config = durable_on_the_log();
        let writer = JournalWriter::open(dir.path(), config.clone()).unwrap();
        let mut request = AppendRequest::new(StreamId::new("T", "a"), 0, Vec::new());
        request.extra_writes = recorded(1, 10);
        writer.append_blocking(request).unwrap();
        let db = writer.shared.db().unwrap();
        let end = log_end(&writer);
        let records = [(i_key("T", 1), record(20).encode())];
        let pairs: Vec<(&[u8], &[u8])> = records.iter().map(|(k, r)| (&k[..], &r[..])).collect();
        let (key, full) = keys::idempotency_records_entry(&pairs);
        db.insert(&key, keys::idempotency_pointer_entry(end, &full).unwrap())
            .unwrap();
        drop(db);
        writer.close().unwrap();

        // A reader skips it; a writer removes it.
        let reader = Journal::open_read_only(dir.path()).unwrap();
        assert_eq!(recorded_at(&reader, 1), Some(10));
        drop(reader);
        let writer = JournalWriter::open(dir.path(), config).unwrap();
        assert_eq!(recorded_at(&writer, 1), Some(10));
        let db = writer.shared.db().unwrap();
        assert_eq!(count(&db, keys::IDEMPOTENCY_BY_TIME), 1);
        assert!(db.get(&key).unwrap().is_none());
        drop(db);
        writer.close().unwrap();
    }

    #[test]
    fn a_group_of_large_records_is_cut_into_entries_under_the_value_bound() {
        let big = keys::IdempotencyRecord {
            aggregate_id: "x".repeat(keys::AGGREGATE_ID_BYTES_MAX),
            ..record(7)
        }
        .encode();
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..300)
            .map(|n| (i_key(&"T".repeat(255), n), big.clone()))
            .collect();
        let chunks = super::super::committer::idempotency_entry_chunks(&records);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 300);
        for chunk in &chunks {
            let (key, value) = keys::idempotency_records_entry(chunk);
            assert!(value.len() <= keys::IDEMPOTENCY_GROUP_VALUE_BYTES_MAX);
            assert!(value.len() <= super::super::segments::VALUE_BYTES_MAX);
            assert_eq!(key[9], 0);
            let parsed = keys::parse_idempotency_records_entry(&value).unwrap();
            assert_eq!(parsed.len(), chunk.len());
            assert!(parsed
                .iter()
                .zip(chunk)
                .all(|((k, r), (ck, cr))| k == ck && r == cr));
        }
        // Small records: 256 to an entry at most.
        let small: Vec<(Vec<u8>, Vec<u8>)> = (0..600)
            .map(|n| (i_key("T", n), record(n as i64).encode()))
            .collect();
        let chunks = super::super::committer::idempotency_entry_chunks(&small);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![256, 256, 88]
        );
    }
}
