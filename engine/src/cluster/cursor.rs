//! The tailer's stored position (docs/scale-out.md, "The stored tailer position"): per
//! partition, the offset up to which every valid batch is in the local journal, with the
//! walk's state at that offset (the latest effective claim, the highest epoch, each stream's
//! last valid sequence). A node that restarts resumes each partition there instead of
//! re-reading the journal topic from offset 0.
//!
//! Why it can never skip or double-append:
//! - The position only covers a *prefix* of a partition: the tailer applies a partition's
//!   valid batches in offset order, and moves the position past a batch only once the batch
//!   is in the local journal.
//! - When the tailer appends a batch itself, the new position (and the stream's head) are
//!   `extra_writes` of that very append: one sled batch, so a crash keeps both or neither.
//! - A batch of this node's live claim is appended by the entity that wrote it, not by the
//!   tailer. The tailer covers it later — in its next own append, or in a position-only write
//!   at most every [`POSITION_WRITE_INTERVAL_MS`] — and syncs the journal first, so the
//!   position never names an append a crash could take back.
//! - A position behind the journal only costs re-reading: the tailer finds those batches
//!   already in the journal (the stream's head is at or past them) and skips them.
//!
//! Keys (the `c` keyspace, see `journal::keys`): `c | name_len u8 | cluster | 'p' | partition
//! u32 BE` -> [`StoredCursor`] (a format byte, then JSON); `c | name_len u8 | cluster | 'h' |
//! stream part` -> the stream's last valid sequence, u64 BE; `c | name_len u8 | cluster | 'o'
//! | partition u32 BE | queue number u64 BE` -> a `Local` batch acknowledged and not yet known
//! to be on the topic (the outbox: a format byte, then the encoded [`Entry`]). An outbox
//! entry is written in the same sled batch as the batch's events, and removed no later than
//! the position moves past the batch's valid copy on the topic, so a restarted node finds
//! every acknowledged batch it has not seen on the topic.

use super::validity::{ClaimAt, Walk};
use super::wire::{Batch, Claim, Entry};
use crate::error::StorageError;
use crate::journal::{keys, Journal, JournalWriter, WriteOp};
use crate::topics::partition_for;
use evershard_model::StreamId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often at most the tailer writes a position that covers only appends of this node's
/// own entities (each such write syncs the journal first). A crash loses at most this much
/// progress, which costs re-reading, never correctness.
pub const POSITION_WRITE_INTERVAL_MS: u64 = 1_000;

/// Format byte of a stored cursor's value.
const CURSOR_FORMAT_V1: u8 = 1;

/// Format byte of an outbox entry's value.
const OUTBOX_FORMAT_V1: u8 = 1;

/// A `Local` batch in the outbox, by its queue number (per node, rising).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outboxed {
    pub number: u64,
    pub batch: Batch,
}

/// One partition's stored position and the walk's state there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCursor {
    /// The offset of the next message to walk: every valid batch below it is in the local
    /// journal.
    pub next_offset: i64,
    /// The highest claim epoch below `next_offset`.
    pub highest_epoch: u64,
    /// The latest effective claim below `next_offset`, with its offset.
    pub latest: Option<(i64, Claim)>,
}

/// Why the stored position cannot be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored cluster position key {key:02x?} or its value is malformed")]
    Malformed { key: Vec<u8> },
}

fn prefix(cluster: &str) -> Vec<u8> {
    // A valid journal topic name keeps the cluster's name under 249 bytes.
    assert!(cluster.len() <= u8::MAX as usize, "cluster name too long");
    let mut key = Vec::with_capacity(2 + cluster.len() + 5);
    key.push(keys::CLUSTER);
    key.push(cluster.len() as u8);
    key.extend_from_slice(cluster.as_bytes());
    key
}

fn cursor_key(cluster: &str, partition: u32) -> Vec<u8> {
    let mut key = prefix(cluster);
    key.push(b'p');
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn head_key(cluster: &str, stream: &StreamId) -> Vec<u8> {
    let mut key = prefix(cluster);
    key.extend_from_slice(&keys::stream_prefix(b'h', stream));
    key
}

pub(super) fn outbox_key(cluster: &str, partition: u32, number: u64) -> Vec<u8> {
    let mut key = prefix(cluster);
    key.push(b'o');
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// The outbox write of a `Local` batch, added to the batch's own append.
pub(super) fn outbox_put(cluster: &str, partition: u32, number: u64, batch: &Batch) -> WriteOp {
    let mut value = vec![OUTBOX_FORMAT_V1];
    value.extend(Entry::Batch(batch.clone()).encode());
    WriteOp::Put {
        key: outbox_key(cluster, partition, number),
        value,
    }
}

fn encode_cursor(cursor: &StoredCursor) -> Vec<u8> {
    let mut value = vec![CURSOR_FORMAT_V1];
    value.extend(serde_json::to_vec(cursor).expect("cursors always serialize"));
    value
}

/// What a node stored of a cluster: per partition, the walk, the cursor and the outbox (in
/// queue order).
pub struct Loaded {
    pub walks: Vec<Walk>,
    pub cursors: Vec<StoredCursor>,
    pub outbox: Vec<Vec<Outboxed>>,
}

/// Reads the stored walks of `cluster` (one per partition; a partition never stored starts
/// at offset 0), with each partition's stored cursor and outbox.
pub fn load(journal: &Journal, cluster: &str, partitions: u32) -> Result<Loaded, CursorError> {
    let mut cursors = vec![StoredCursor::default(); partitions as usize];
    let mut outbox: Vec<Vec<Outboxed>> = vec![Vec::new(); partitions as usize];
    let mut heads: Vec<HashMap<StreamId, u64>> = vec![HashMap::new(); partitions as usize];
    let base = prefix(cluster);
    for (key, value) in journal.cluster_state(&base)? {
        let malformed = || CursorError::Malformed { key: key.clone() };
        let rest = &key[base.len()..];
        match rest.split_first() {
            Some((b'p', p)) => {
                let p = u32::from_be_bytes(p.try_into().map_err(|_| malformed())?);
                let cursor: StoredCursor = match value.split_first() {
                    Some((&CURSOR_FORMAT_V1, json)) => {
                        serde_json::from_slice(json).map_err(|_| malformed())?
                    }
                    _ => return Err(malformed()),
                };
                if let Some(slot) = cursors.get_mut(p as usize) {
                    *slot = cursor;
                }
            }
            Some((b'h', part)) => {
                let (stream, tail) = keys::parse_stream_part(part).ok_or_else(malformed)?;
                let head =
                    u64::from_be_bytes(value.as_slice().try_into().map_err(|_| malformed())?);
                if !tail.is_empty() {
                    return Err(malformed());
                }
                let p = partition_for(&stream.aggregate_id, partitions);
                heads[p as usize].insert(stream, head);
            }
            Some((b'o', rest)) if rest.len() == 12 => {
                let p = u32::from_be_bytes(rest[..4].try_into().map_err(|_| malformed())?);
                let number = u64::from_be_bytes(rest[4..].try_into().map_err(|_| malformed())?);
                let batch = match value.split_first() {
                    Some((&OUTBOX_FORMAT_V1, bytes)) => match Entry::decode(bytes) {
                        Ok(Entry::Batch(b)) => b,
                        _ => return Err(malformed()),
                    },
                    _ => return Err(malformed()),
                };
                if let Some(slot) = outbox.get_mut(p as usize) {
                    // Keys sort by partition then number: each list is in queue order.
                    slot.push(Outboxed { number, batch });
                }
            }
            _ => return Err(malformed()),
        }
    }
    let walks = cursors
        .iter()
        .zip(heads)
        .map(|(c, heads)| {
            let latest = c
                .latest
                .clone()
                .map(|(offset, claim)| ClaimAt { offset, claim });
            Walk::resume(c.next_offset, latest, c.highest_epoch, heads)
        })
        .collect();
    Ok(Loaded {
        walks,
        cursors,
        outbox,
    })
}

/// One partition's applied prefix as the tailer moves it, and what is not stored yet.
#[derive(Clone, Debug, Default)]
struct Part {
    cursor: StoredCursor,
    /// Heads moved since the last write.
    heads: HashMap<StreamId, u64>,
    /// Outbox entries whose batch was walked valid on the topic, to remove with (or before)
    /// the next position write.
    published: Vec<u64>,
    dirty: bool,
}

impl Part {
    fn claim(&mut self, at: &ClaimAt) {
        self.cursor.highest_epoch = self.cursor.highest_epoch.max(at.claim.epoch);
        self.cursor.latest = Some((at.offset, at.claim.clone()));
        self.cursor.next_offset = at.offset + 1;
        self.dirty = true;
    }

    /// Stored by the write that carries it: nothing of it is left to store.
    fn stored(&mut self) {
        self.heads.clear();
        self.published.clear();
        self.dirty = false;
    }

    fn batch(&mut self, offset: i64, batch: &Batch) {
        debug_assert!(offset >= self.cursor.next_offset);
        if !batch.events.is_empty() {
            self.heads.insert(batch.stream(), batch.last_sequence());
        }
        self.cursor.next_offset = offset + 1;
        self.dirty = true;
    }
}

/// The tailer's positions: what it applied per partition, and its writes.
#[derive(Debug)]
pub(super) struct Applied {
    cluster: String,
    parts: Vec<Part>,
    last_write: Instant,
}

impl Applied {
    pub(super) fn new(cluster: &str, cursors: Vec<StoredCursor>) -> Applied {
        Applied {
            cluster: cluster.to_owned(),
            parts: cursors
                .into_iter()
                .map(|cursor| Part {
                    cursor,
                    ..Part::default()
                })
                .collect(),
            last_write: Instant::now(),
        }
    }

    /// An effective claim at `at.offset` is behind the applied prefix now.
    pub(super) fn claim(&mut self, partition: u32, at: &ClaimAt) {
        self.parts[partition as usize].claim(at);
    }

    /// A valid batch at `offset` is in the local journal now (appended by an entity of this
    /// node, or found there).
    pub(super) fn batch(&mut self, partition: u32, offset: i64, batch: &Batch) {
        self.parts[partition as usize].batch(offset, batch);
    }

    /// Everything below `next_offset` was walked and applied (the rest was void).
    pub(super) fn walked_to(&mut self, partition: u32, next_offset: i64) {
        let part = &mut self.parts[partition as usize];
        if next_offset > part.cursor.next_offset {
            part.cursor.next_offset = next_offset;
            part.dirty = true;
        }
    }

    /// The offset below which the partition is applied (what the next position write
    /// stores).
    #[cfg(test)]
    pub(super) fn next_offset(&self, partition: u32) -> i64 {
        self.parts[partition as usize].cursor.next_offset
    }

    /// A plan of the partition's next steps, from its position now: the position each of
    /// the tailer's appends carries (see [`PartPlan`]).
    pub(super) fn plan(&self, partition: u32) -> PartPlan<'_> {
        PartPlan {
            cluster: &self.cluster,
            partition,
            part: self.parts[partition as usize].clone(),
        }
    }

    /// The tailer's append of `batch` at `offset` succeeded, with the writes
    /// [`PartPlan::writes_with`] gave it.
    pub(super) fn appended(&mut self, partition: u32, offset: i64, batch: &Batch) {
        let part = &mut self.parts[partition as usize];
        part.batch(offset, batch);
        part.stored();
    }

    /// `Local` batches of this node (outbox numbers) walked valid on the topic: their outbox
    /// entries go with the next write of the partition's position, which is never one past
    /// them without them.
    pub(super) fn published(&mut self, partition: u32, numbers: Vec<u64>) {
        if numbers.is_empty() {
            return;
        }
        let part = &mut self.parts[partition as usize];
        part.published.extend(numbers);
        part.dirty = true;
    }

    /// Writes every partition's unstored position, if `force` or the interval passed: syncs
    /// the journal first, since the positions may cover appends of this node's entities that
    /// are not durable yet.
    pub(super) fn store(
        &mut self,
        journal: &JournalWriter,
        force: bool,
    ) -> Result<(), StorageError> {
        if !self.parts.iter().any(|p| p.dirty) {
            return Ok(());
        }
        if !force && self.last_write.elapsed() < Duration::from_millis(POSITION_WRITE_INTERVAL_MS) {
            return Ok(());
        }
        journal.sync()?;
        let mut writes = Vec::new();
        for (p, part) in self.parts.iter().enumerate() {
            if part.dirty {
                writes.extend(writes_of(&self.cluster, p as u32, part));
            }
        }
        journal.write_cluster_state(writes)?;
        for part in &mut self.parts {
            part.stored();
        }
        self.last_write = Instant::now();
        Ok(())
    }
}

/// The writes that store a partition's position: the heads moved, the outbox entries
/// published, the cursor.
fn writes_of(cluster: &str, partition: u32, part: &Part) -> Vec<WriteOp> {
    let mut writes: Vec<WriteOp> = part
        .heads
        .iter()
        .map(|(stream, head)| WriteOp::Put {
            key: head_key(cluster, stream),
            value: head.to_be_bytes().to_vec(),
        })
        .collect();
    writes.extend(part.published.iter().map(|n| WriteOp::Remove {
        key: outbox_key(cluster, partition, *n),
    }));
    writes.push(WriteOp::Put {
        key: cursor_key(cluster, partition),
        value: encode_cursor(&part.cursor),
    });
    writes
}

/// A partition's position as one round of the tailer moves it: the steps it plans in offset
/// order — claims passed, batches found in the journal, batches it appends — each moving a
/// copy of the position. Each append carries the position past its batch as if the appends
/// planned before it succeeded: the journal commits them in the order they were submitted,
/// and the tailer takes their answers in that order (see `apply_pending`).
pub(super) struct PartPlan<'a> {
    cluster: &'a str,
    partition: u32,
    part: Part,
}

impl PartPlan<'_> {
    pub(super) fn claim(&mut self, at: &ClaimAt) {
        self.part.claim(at);
    }

    pub(super) fn batch(&mut self, offset: i64, batch: &Batch) {
        self.part.batch(offset, batch);
    }

    /// The writes that store the position past `batch` at `offset`, for the tailer's append
    /// of it: what the plan had not stored yet goes with them.
    pub(super) fn writes_with(&mut self, offset: i64, batch: &Batch) -> Vec<WriteOp> {
        self.part.batch(offset, batch);
        let writes = writes_of(self.cluster, self.partition, &self.part);
        self.part.stored();
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_under_their_cluster_and_parse_back() {
        let stream = StreamId::new("Ledger", "ledger-7");
        let head = head_key("test", &stream);
        assert!(head.starts_with(&prefix("test")));
        assert!(
            !head.starts_with(&prefix("tes")),
            "the length byte separates names"
        );
        let part = &head[prefix("test").len() + 1..];
        assert_eq!(keys::parse_stream_part(part), Some((stream, &[][..])));
        let cursor = StoredCursor {
            next_offset: 42,
            highest_epoch: 3,
            latest: Some((
                17,
                Claim {
                    node: "n2".into(),
                    endpoint: "127.0.0.1:9".into(),
                    epoch: 3,
                },
            )),
        };
        let value = encode_cursor(&cursor);
        assert_eq!(value[0], CURSOR_FORMAT_V1);
        let back: StoredCursor = serde_json::from_slice(&value[1..]).unwrap();
        assert_eq!(back, cursor);
    }

    #[test]
    fn outbox_entries_sort_by_partition_then_number_and_decode_back() {
        let batch = Batch {
            node: "n1".into(),
            epoch: 4,
            aggregate_type: "Ledger".into(),
            aggregate_id: "ledger-7".into(),
            first_sequence: 3,
            events: vec![],
            writes: vec![],
        };
        let keys: Vec<Vec<u8>> = [(0, 9), (1, 0), (1, 2), (1, 256), (2, 1)]
            .iter()
            .map(|&(p, n)| outbox_key("test", p, n))
            .collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "queue order is key order"
        );
        assert!(keys.iter().all(|k| k.starts_with(&prefix("test"))));
        let WriteOp::Put { key, value } = outbox_put("test", 1, 2, &batch) else {
            panic!("an outbox entry is a put")
        };
        assert_eq!(key, keys[2]);
        assert_eq!(value[0], OUTBOX_FORMAT_V1);
        assert_eq!(Entry::decode(&value[1..]).unwrap(), Entry::Batch(batch));
    }

    /// A round's appends each carry the position past their own batch, as if the ones
    /// planned before them succeeded: the cursor moves one batch at a time, a head is stored
    /// by the append of its batch, and what the plan found stored before (a claim passed,
    /// a batch the journal had, outbox entries published) goes with the first append.
    #[test]
    fn a_plan_gives_each_append_the_position_past_its_batch() {
        let event = super::super::wire::WireEvent::from(&crate::journal::topics::test_event(1));
        let batch = |id: &str, first_sequence: u64, events: usize| Batch {
            node: "n1".into(),
            epoch: 4,
            aggregate_type: "Ledger".into(),
            aggregate_id: id.into(),
            first_sequence,
            events: vec![event.clone(); events],
            writes: vec![],
        };
        let cursor = |writes: &[WriteOp]| -> StoredCursor {
            let WriteOp::Put { value, .. } = writes.last().unwrap() else {
                panic!("the cursor is the last write")
            };
            serde_json::from_slice(&value[1..]).unwrap()
        };
        let heads = |writes: &[WriteOp]| -> Vec<Vec<u8>> {
            writes
                .iter()
                .filter_map(|w| match w {
                    WriteOp::Put { key, .. } if key != &cursor_key("test", 2) => Some(key.clone()),
                    _ => None,
                })
                .collect()
        };
        let mut applied = Applied::new("test", vec![StoredCursor::default(); 3]);
        applied.published(2, vec![7]);
        let mut plan = applied.plan(2);
        plan.batch(4, &batch("found", 1, 1));
        let first = plan.writes_with(5, &batch("a", 1, 2));
        let second = plan.writes_with(6, &batch("b", 3, 1));
        assert_eq!(cursor(&first).next_offset, 6);
        assert_eq!(cursor(&second).next_offset, 7);
        let head = |id: &str| head_key("test", &StreamId::new("Ledger", id));
        let mut expected = vec![head("a"), head("found")];
        let mut got = heads(&first);
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        assert_eq!(heads(&second), vec![head("b")]);
        assert!(first.contains(&WriteOp::Remove {
            key: outbox_key("test", 2, 7)
        }));
        assert!(!second.iter().any(|w| matches!(w, WriteOp::Remove { .. })));
        // The plan is a copy: nothing moves until the appends are answered.
        assert_eq!(applied.parts[2].cursor.next_offset, 0);
        applied.batch(2, 4, &batch("found", 1, 1));
        applied.appended(2, 5, &batch("a", 1, 2));
        applied.appended(2, 6, &batch("b", 3, 1));
        assert_eq!(applied.parts[2].cursor.next_offset, 7);
        assert!(!applied.parts[2].dirty);
    }
}
