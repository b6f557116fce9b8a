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
//! key, and applies them to sled together, in key order, on a thread of its own once they
//! reach [`DEFERRED_KEYS_MAX`] keys or [`DEFERRED_LAG_BYTES_MAX`] bytes of log, at an explicit
//! sync and at shutdown. A `T` key rewritten by every command of a stream, and a `t` key
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
pub(super) const DEFERRED_KEYS_MAX: usize = 65_536;

/// Bytes of log past the first frame whose timer writes are held, after which the syncer
/// applies them however few they are: what a writable open after a crash reads again at
/// most for them.
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

    /// The newest write of every held key in `start..end`, in key order.
    pub(super) fn range(&self, start: &[u8], end: &[u8]) -> HeldRange {
        if start >= end {
            return Vec::new();
        }
        let state = self.lock();
        let bounds = (
            std::ops::Bound::Included(start),
            std::ops::Bound::Excluded(end),
        );
        let mut merged: BTreeMap<&[u8], &Option<Vec<u8>>> = BTreeMap::new();
        if let Some(applying) = &state.applying {
            merged.extend(applying.range::<[u8], _>(bounds).map(|(k, v)| (&k[..], v)));
        }
        merged.extend(
            state
                .newest
                .range::<[u8], _>(bounds)
                .map(|(k, v)| (&k[..], v)),
        );
        merged
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect()
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

/// Applies taken writes to sled, in key order.
pub(super) fn apply(db: &sled::Db, held: &Held) -> Result<(), StorageError> {
    for (key, write) in held {
        match write {
            Some(value) => {
                db.insert(&key[..], &value[..])?;
            }
            None => {
                db.remove(&key[..])?;
            }
        }
    }
    Ok(())
}

/// Sled's entries of a range merged with the held writes of the same range (`held`, in key
/// order, from [`DeferredWrites::range`]): a held write replaces sled's entry of its key, and
/// a held removal hides it.
pub(super) fn merged<I>(sled: I, held: HeldRange) -> Merged<I>
where
    I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
{
    Merged {
        sled: sled.peekable(),
        held: held.into_iter().peekable(),
    }
}

pub(super) struct Merged<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> {
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
            merged(db.range(t(0)..t(9)), held.range(&t(0), &t(9)))
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
    fn a_range_holds_only_its_keys() {
        let held = DeferredWrites::default();
        held.hold(vec![put(t(1), b"a"), put(t(5), b"b"), put(t(9), b"c")]);
        let keys: Vec<Vec<u8>> = held
            .range(&t(2), &t(9))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![t(5)]);
        assert!(held.range(&t(9), &t(2)).is_empty());
    }
}
