//! Timer writes held in memory between their group's `fdatasync` and their turn in sled.
//!
//! On the segment log a group's frame is the durable copy of its writes; sled is where
//! readers find them. Timers are the writes a command moves most: a ProductStock command that
//! opens or closes its earliest reservation removes one `t` key and writes another, and
//! rewrites its `T` key. Applied to sled one by one after each sync, on the acknowledgement
//! path, they were a sixth of the CPU of the 10,000-aggregate bench, and leaving them out of
//! sled altogether raised its rate by 13-38% (2026-11-27, `EVERSHARD_BENCH_ONLY=engine`,
//! alternated runs).
//!
//! So the syncer hands a synced group's timer writes to [`DeferredWrites`] instead, newest per
//! key; once they reach [`DEFERRED_KEYS_MAX`] keys or [`DEFERRED_LAG_BYTES_MAX`] bytes of log
//! it takes them, and applies them to sled in key order, [`DEFERRED_APPLY_KEYS_PER_SYNC`]
//! after each batch's acknowledgements; all at once at an explicit sync and at shutdown. A `T` key rewritten by every command of a stream, and a `t` key
//! written and removed again within the window, reach sled once or not at all.
//!
//! Readers ([`Journal::timer`](super::Journal::timer), the scheduler's pages,
//! [`Journal::timers`](super::Journal::timers)) look here before sled: what a command wrote
//! is visible from its acknowledgement on, as before.
//!
//! A crash loses what was held here, never what the log holds: `m | "log-timers"` (the
//! timers cursor) names the address before which every frame's timer writes are in sled, and
//! a writable open applies the timer writes of the frames after it again, in order, which
//! gives what the held writes would have (every timer write goes through a frame). The other
//! keyspaces keep their own cursor (`m | "log-writes"`) and are applied at once, as before.

use super::keys;
use super::seglog::FrameWrite;
use crate::error::StorageError;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Held keys past which the syncer starts applying them to sled (about 150 bytes of memory
/// each: a `t` key is 1 + 8 bytes and the stream, a `T` key 1 byte and the stream).
pub(super) const DEFERRED_KEYS_MAX: usize = if cfg!(test) { 32 } else { 65_536 };

/// Bytes of log past the first frame whose timer writes are held, after which the syncer
/// takes them however few they are. What a writable open after a crash reads again for them
/// is this plus what the log grows while a taken set is still being applied (128 keys per
/// sync, so at most 512 syncs for [`DEFERRED_KEYS_MAX`] keys): the cursor stays at the
/// taken set's first frame until it is all in sled (found by review, 2026-11-28).
pub(super) const DEFERRED_LAG_BYTES_MAX: u64 = 64 << 20;

/// Whether `key` is one of the writes the syncer defers (the timer keyspaces).
pub(super) fn is_deferred(key: &[u8]) -> bool {
    matches!(
        key.first(),
        Some(&keys::TIMERS) | Some(&keys::TIMERS_BY_STREAM)
    )
}

/// Each held key's newest write: `Some(value)` for a put, `None` for a removal.
pub(super) type Held = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Held writes of a range, in key order (see [`DeferredWrites::range`]).
pub(super) type HeldRange = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The timer writes of synced groups that sled does not hold yet (see the module docs).
#[derive(Default)]
pub(super) struct DeferredWrites {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Writes handed over since the last [`DeferredWrites::take`].
    newest: Held,
    /// Writes being applied to sled: readers still look here until they are in.
    applying: Option<Arc<Held>>,
}

impl DeferredWrites {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a synced group's timer writes (in the group's order: the later wins).
    pub(super) fn hold(&self, writes: Vec<FrameWrite>) {
        let mut state = self.lock();
        for w in writes {
            match w {
                FrameWrite::Put { key, value } => {
                    debug_assert!(is_deferred(&key));
                    state.newest.insert(key, Some(value));
                }
                FrameWrite::Remove { key } => {
                    debug_assert!(is_deferred(&key));
                    state.newest.insert(key, None);
                }
            }
        }
    }

    /// Keys held and not yet being applied.
    pub(super) fn held(&self) -> usize {
        self.lock().newest.len()
    }

    /// The newest write of `key` held here: `Some(None)` when it was removed, `None` when
    /// sled has its newest state.
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let state = self.lock();
        if let Some(w) = state.newest.get(key) {
            return Some(w.clone());
        }
        state.applying.as_ref()?.get(key).cloned()
    }

    /// The newest writes of the first `max` held keys in `start..end`, in key order, and
    /// whether more held keys follow in the range. Bounded, so that a reader holds the lock
    /// (which the syncer takes after every sync) for a moment whatever is held.
    pub(super) fn chunk(&self, start: &[u8], end: &[u8], max: usize) -> (HeldRange, bool) {
        if start >= end {
            return (Vec::new(), false);
        }
        let state = self.lock();
        let bounds = (
            std::ops::Bound::Included(start),
            std::ops::Bound::Excluded(end),
        );
        let mut newest = state.newest.range::<[u8], _>(bounds).peekable();
        let mut applying = state
            .applying
            .iter()
            .flat_map(|a| a.range::<[u8], _>(bounds))
            .peekable();
        let mut out = Vec::new();
        while out.len() < max {
            let take_newest = match (newest.peek(), applying.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((n, _)), Some((a, _))) => {
                    let (n_first, same) = (n <= a, n == a);
                    if same {
                        applying.next(); // the newer write of the same key wins
                    }
                    n_first
                }
            };
            let (key, write) = match take_newest {
                true => newest.next(),
                false => applying.next(),
            }
            .expect("peeked");
            out.push((key.clone(), write.clone()));
        }
        let more = newest.peek().is_some() || applying.peek().is_some();
        (out, more)
    }

    /// Takes the held writes for applying (readers still see them until [`Self::applied`]):
    /// `None` when nothing is held. One take at a time.
    pub(super) fn take(&self) -> Option<Arc<Held>> {
        let mut state = self.lock();
        assert!(
            state.applying.is_none(),
            "held timer writes taken while the last ones are still being applied"
        );
        if state.newest.is_empty() {
            return None;
        }
        let taken = Arc::new(std::mem::take(&mut state.newest));
        state.applying = Some(taken.clone());
        Some(taken)
    }

    /// The writes of the last [`Self::take`] are in sled (or the journal is poisoned and
    /// reads fail anyway).
    pub(super) fn applied(&self) {
        self.lock().applying = None;
    }
}

/// Taken writes the syncer applies to sled after each batch's acknowledgements.
pub(super) const DEFERRED_APPLY_KEYS_PER_SYNC: usize = if cfg!(test) { 4 } else { 128 };

/// Applies taken writes to sled, in key order.
pub(super) fn apply(db: &sled::Db, held: &Held) -> Result<(), StorageError> {
    for (key, write) in held {
        apply_one(db, key, write.as_deref())?;
    }
    Ok(())
}

/// Applies one held write to sled.
pub(super) fn apply_one(
    db: &sled::Db,
    key: &[u8],
    write: Option<&[u8]>,
) -> Result<(), StorageError> {
    match write {
        Some(value) => db.insert(key, value)?,
        None => db.remove(key)?,
    };
    Ok(())
}

/// Held keys a merged read takes per chunk (see [`DeferredWrites::chunk`]).
const MERGE_CHUNK_KEYS: usize = 256;

/// Sled's entries of `start..end` with the writes `held` holds over them (none when `held`
/// is `None`), read lazily: a chunk of held keys at a time, and sled's range up to the last
/// of them, so a read holds neither the whole held range in memory nor the lock for long.
pub(super) fn merged_range<'a>(
    held: Option<&'a DeferredWrites>,
    db: &sled::Db,
    start: Vec<u8>,
    end: Vec<u8>,
) -> MergedRange<'a> {
    let mut read = MergedRange {
        held,
        db: db.clone(),
        end,
        next_start: None,
        current: None,
    };
    read.start_at(start);
    read
}

pub(super) struct MergedRange<'a> {
    held: Option<&'a DeferredWrites>,
    db: sled::Db,
    end: Vec<u8>,
    /// Where the next chunk starts, if the current one was cut short.
    next_start: Option<Vec<u8>>,
    current: Option<Merged<sled::Iter>>,
}

impl MergedRange<'_> {
    fn start_at(&mut self, start: Vec<u8>) {
        let (held, more) = match self.held {
            Some(h) => h.chunk(&start, &self.end, MERGE_CHUNK_KEYS),
            None => (Vec::new(), false),
        };
        // Cut short: this chunk covers sled's range up to its last held key, inclusive.
        let chunk_end = match (more, held.last()) {
            (true, Some((last, _))) => {
                let mut after = last.clone();
                after.push(0); // the smallest key after it
                self.next_start = Some(after.clone());
                after
            }
            _ => {
                self.next_start = None;
                self.end.clone()
            }
        };
        self.current = (start < chunk_end).then(|| merged(self.db.range(start..chunk_end), held));
    }
}

impl Iterator for MergedRange<'_> {
    type Item = sled::Result<(sled::IVec, sled::IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.current.as_mut().and_then(Iterator::next) {
                return Some(entry);
            }
            let start = self.next_start.take()?;
            self.start_at(start);
        }
    }
}

/// Sled's entries of a range merged with the held writes of the same range (`held`, in key
/// order): a held write replaces sled's entry of its key, and a held removal hides it.
fn merged<I>(sled: I, held: HeldRange) -> Merged<I>
where
    I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
{
    Merged {
        sled: sled.peekable(),
        held: held.into_iter().peekable(),
    }
}

struct Merged<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> {
    sled: std::iter::Peekable<I>,
    held: std::iter::Peekable<<HeldRange as IntoIterator>::IntoIter>,
}

impl<I> Iterator for Merged<I>
where
    I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
{
    type Item = sled::Result<(sled::IVec, sled::IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.sled.peek(), self.held.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.sled.next(),
                (Some(Ok(_)), None) => return self.sled.next(),
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(Ok((sled_key, _))), Some((held_key, _))) => {
                    sled_key.as_ref().cmp(&held_key[..])
                }
            };
            match order {
                std::cmp::Ordering::Less => return self.sled.next(),
                std::cmp::Ordering::Equal | std::cmp::Ordering::Greater => {
                    if order == std::cmp::Ordering::Equal {
                        self.sled.next(); // replaced (or hidden) by the held write
                    }
                    let (key, write) = self.held.next().expect("peeked");
                    if let Some(value) = write {
                        return Some(Ok((key.into(), value.into())));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> Vec<u8> {
        vec![keys::TIMERS, n]
    }

    fn put(key: Vec<u8>, value: &[u8]) -> FrameWrite {
        FrameWrite::Put {
            key,
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_held_write_wins_over_sled_and_the_newest_over_the_one_being_applied() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.insert(t(1), b"sled").unwrap();
        db.insert(t(2), b"sled").unwrap();
        db.insert(t(4), b"sled").unwrap();
        let held = DeferredWrites::default();
        held.hold(vec![put(t(2), b"old"), FrameWrite::Remove { key: t(4) }]);
        let taken = held.take().unwrap();
        held.hold(vec![put(t(2), b"new"), put(t(3), b"new")]);
        assert_eq!(held.get(&t(2)), Some(Some(b"new".to_vec())));
        assert_eq!(held.get(&t(4)), Some(None));
        assert_eq!(held.get(&t(1)), None);
        let read = |held: &DeferredWrites| -> Vec<(Vec<u8>, Vec<u8>)> {
            merged_range(Some(held), &db, t(0), t(9))
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect()
        };
        let expected = vec![
            (t(1), b"sled".to_vec()),
            (t(2), b"new".to_vec()),
            (t(3), b"new".to_vec()),
        ];
        assert_eq!(read(&held), expected);
        // Once the taken writes are in sled, the reads are the same.
        apply(&db, &taken).unwrap();
        held.applied();
        assert_eq!(read(&held), expected);
        assert_eq!(db.get(t(4)).unwrap(), None);
        assert_eq!(db.get(t(2)).unwrap().as_deref(), Some(&b"old"[..]));
        // And once the newest are, sled alone reads the same.
        let newest = held.take().unwrap();
        apply(&db, &newest).unwrap();
        held.applied();
        assert_eq!(held.held(), 0);
        assert_eq!(read(&held), expected);
    }

    #[test]
    fn a_chunk_holds_only_its_keys_and_says_when_more_follow() {
        let held = DeferredWrites::default();
        held.hold(vec![put(t(1), b"a"), put(t(5), b"b"), put(t(9), b"c")]);
        let keys = |(chunk, more): (HeldRange, bool)| {
            (chunk.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), more)
        };
        assert_eq!(keys(held.chunk(&t(2), &t(9), 10)), (vec![t(5)], false));
        assert_eq!(keys(held.chunk(&t(0), &t(10), 2)), (vec![t(1), t(5)], true));
        assert!(held.chunk(&t(9), &t(2), 10).0.is_empty());
    }

    /// A read across many chunks (held keys far past one chunk, some being applied, removals
    /// among them, sled's own keys between them) gives what one merge of everything would.
    #[test]
    fn a_read_in_chunks_is_the_whole_merge() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let key = |n: u32| [&[keys::TIMERS][..], &n.to_be_bytes()[..]].concat();
        let mut expected = BTreeMap::new();
        for n in (0..3_000).step_by(3) {
            db.insert(key(n), b"sled").unwrap();
            expected.insert(key(n), b"sled".to_vec());
        }
        let held = DeferredWrites::default();
        held.hold((0..1_000).map(|n| put(key(n * 2), b"old")).collect());
        let _applying = held.take().unwrap();
        for n in 0..1_000u32 {
            expected.insert(key(n * 2), b"old".to_vec());
        }
        let mut newest = Vec::new();
        for n in 0..1_500u32 {
            if n % 4 == 0 {
                newest.push(FrameWrite::Remove { key: key(n * 2) });
                expected.remove(&key(n * 2));
            } else {
                newest.push(put(key(n * 2), b"new"));
                expected.insert(key(n * 2), b"new".to_vec());
            }
        }
        held.hold(newest);
        let read: Vec<(Vec<u8>, Vec<u8>)> = merged_range(Some(&held), &db, key(0), key(5_000))
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = expected.into_iter().collect();
        assert_eq!(read, expected);
    }

    /// Through a durable journal on the segment log (with this build's small limits: 32
    /// held keys, 4 applied per sync), timers set, moved and removed at random read the same
    /// at every moment, whether their writes are held, taken and half applied, or in sled;
    /// and after a close and a reopen. The seed is printed.
    #[test]
    fn timers_read_the_same_while_held_taken_and_applied() {
        use crate::journal::{AppendRequest, Durability, JournalConfig, JournalWriter};
        use crate::journal::{NewEvent, StreamId, WritePath};
        let seed = evershard_testing::child::seed_or_clock("EVERSHARD_TEST_SEED", "held timers");
        let mut rng = evershard_model::DemoRng::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let config = || JournalConfig {
            durability: Durability::Durable,
            write_path: WritePath::Log,
            ..JournalConfig::default()
        };
        let journal = JournalWriter::open(dir.path(), config()).unwrap();
        let streams: Vec<StreamId> = (0..40)
            .map(|i| StreamId::new("Thing", format!("t{i}")))
            .collect();
        let mut timers: Vec<Option<i64>> = vec![None; streams.len()];
        let mut versions = vec![0u64; streams.len()];
        let at = |m: Option<i64>| m.map(|m| chrono::DateTime::from_timestamp_micros(m).unwrap());
        let check = |journal: &crate::journal::Journal, timers: &[Option<i64>], when: &str| {
            for (stream, t) in streams.iter().zip(timers) {
                let read = journal.timer(stream).unwrap().map(|d| d.timestamp_micros());
                assert_eq!(read, *t, "seed {seed}, {when}: the timer of {stream}");
            }
            let mut listed: Vec<(String, i64)> = journal
                .timers(None)
                .map(|t| {
                    let t = t.unwrap();
                    (t.stream.aggregate_id, t.deadline.timestamp_micros())
                })
                .collect();
            let mut wanted: Vec<(String, i64)> = streams
                .iter()
                .zip(timers)
                .filter_map(|(s, t)| t.map(|t| (s.aggregate_id.clone(), t)))
                .collect();
            listed.sort();
            wanted.sort();
            assert_eq!(listed, wanted, "seed {seed}, {when}: the pending timers");
        };
        for n in 0..600u64 {
            let i = rng.below(streams.len() as u64) as usize;
            let to = match (timers[i], rng.below(3)) {
                (Some(_), 0) => None,
                _ => Some(1_800_000_000_000_000 + rng.below(1_000_000) as i64),
            };
            let event = NewEvent {
                event_id: uuid::Uuid::from_u128(u128::from(n) + 1),
                event_type: "Happened".into(),
                event_version: "1.0".into(),
                timestamp: chrono::DateTime::from_timestamp_micros(1_767_225_600_000_000).unwrap(),
                correlation_id: uuid::Uuid::from_u128(7),
                causation_id: None,
                source: "held-timers-test".into(),
                user_id: None,
                session_id: None,
                audit_context: None,
                payload: vec![1; 16],
            };
            let mut request = AppendRequest::new(streams[i].clone(), versions[i], vec![event]);
            request.extra_writes =
                crate::keyspace_writes::timer_moved(&streams[i], at(timers[i]), at(to));
            journal.append_blocking(request).unwrap();
            versions[i] += 1;
            timers[i] = to;
            if n % 7 == 0 {
                check(&journal, &timers, &format!("after append {n}"));
            }
        }
        check(&journal, &timers, "at the end");
        journal.close().unwrap();
        let journal = JournalWriter::open(dir.path(), config()).unwrap();
        check(&journal, &timers, "after a reopen");
        journal.close().unwrap();
    }
}
