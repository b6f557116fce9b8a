//! The topic keyspaces: what the topic indexer (`crate::topics`) and the consumers persist.
//! Only the journal touches sled, so the bytes live here; the logic (routing, offsets,
//! consumers) lives in `crate::topics` and calls these functions.
//!
//! ```text
//! x | topic_len u8 | topic | partition u32 BE | first_offset u64 BE   -> index entry: runs (below)
//! y | topic                                                           -> topic config: 1 u8 | partitions u32 LE | format u8
//! z | group_len u8 | group | topic_len u8 | topic | partition u32 BE  -> committed offset u64 LE (next to read)
//! m | "topics-cursor"                                                 -> indexed through global position, u64 LE
//! ```
//!
//! An index entry covers offsets `first_offset..first_offset + n` of one partition, where n is
//! the sum of its runs' counts; a run is `count` events at consecutive global positions. One
//! entry per (topic, partition) per indexer batch (split at [`TOPIC_ENTRY_RUNS_MAX`] runs).
//! Value, written since format 2 ([`ENTRY_FORMAT_2`]): the tag byte `0xE2`, the first run's
//! first global position (u64 LE) and count (LEB128), then per further run the gap from the
//! previous run's end (LEB128) and its count (LEB128): two or three bytes per run where
//! format 1 spent about 70. Format 1, still read (stores written before): run count (u32 LE),
//! then per run the stream part (`type_len u8 | type | id_len u16 BE | id`), first sequence
//! (u64 LE), first global position (u64 LE) and count (u32 LE); a format 1 run is also one
//! stream's consecutive sequences, which nothing needs any more (the records say it).

use super::keys::{self, parse_stream_part};
use super::StreamId;
use super::{failed, Journal, JournalWriter, Reads};
use crate::error::{Corruption, StorageError};

pub const TOPIC_INDEX: u8 = b'x';
pub const TOPIC_CONFIG: u8 = b'y';
pub const CONSUMER_OFFSETS: u8 = b'z';

/// Topic and consumer-group names are 1..=249 bytes (Kafka's limit for topic names).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Runs in one index entry at most. A format 1 run took at most 3 + 255 + 1024 + 20 bytes,
/// so such an entry stayed below 96 KiB, within the journal's value bound (see
/// `keys::GLOBAL_ENTRY_RUNS_MAX`); a format 2 run takes at most 15.
pub const TOPIC_ENTRY_RUNS_MAX: usize = 64;

/// A topic index entry's bytes at most (format 1, the larger).
pub const TOPIC_ENTRY_BYTES_MAX: usize = 4 + TOPIC_ENTRY_RUNS_MAX
    * (3 + keys::AGGREGATE_TYPE_BYTES_MAX + keys::AGGREGATE_ID_BYTES_MAX + 8 + 8 + 4);

/// The first byte of a format 2 index entry. A format 1 entry starts with its run count
/// (u32 LE, 1..=64), so its first byte is never this.
pub const ENTRY_FORMAT_2: u8 = 0xE2;

const CURSOR_KEY: &[u8] = b"mtopics-cursor";

/// `count` events at consecutive global positions from `first_position`, consecutive
/// offsets of one partition. Which stream each belongs to, the records say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicRun {
    pub first_position: u64,
    pub count: u32,
}

/// A topic's stored configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredTopic {
    pub partitions: u32,
    /// The wire format's code (see `crate::topics::WireFormat::code`).
    pub format: u8,
}

/// One index entry to write: offsets from `first_offset` of `(topic, partition)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicEntry {
    pub topic: String,
    pub partition: u32,
    pub first_offset: u64,
    pub runs: Vec<TopicRun>,
}

fn name_part(out: &mut Vec<u8>, name: &str) {
    debug_assert!(!name.is_empty() && name.len() <= TOPIC_NAME_BYTES_MAX);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn partition_prefix(topic: &str, partition: u32) -> Vec<u8> {
    let mut key = vec![TOPIC_INDEX];
    name_part(&mut key, topic);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

pub fn index_key(topic: &str, partition: u32, first_offset: u64) -> Vec<u8> {
    let mut key = partition_prefix(topic, partition);
    key.extend_from_slice(&first_offset.to_be_bytes());
    key
}

fn config_key(topic: &str) -> Vec<u8> {
    [&[TOPIC_CONFIG][..], topic.as_bytes()].concat()
}

fn offsets_prefix(group: &str, topic: Option<&str>) -> Vec<u8> {
    let mut key = vec![CONSUMER_OFFSETS];
    name_part(&mut key, group);
    if let Some(topic) = topic {
        name_part(&mut key, topic);
    }
    key
}

/// A format 2 index entry's value (see the module docs). `runs` is not empty, each run's
/// count is at least 1 and the runs are in position order, apart.
pub fn entry_value(runs: &[TopicRun]) -> Vec<u8> {
    assert!(!runs.is_empty(), "an index entry without runs");
    let mut v = Vec::with_capacity(1 + 8 + runs.len() * 3);
    v.push(ENTRY_FORMAT_2);
    v.extend_from_slice(&runs[0].first_position.to_le_bytes());
    let mut end = runs[0].first_position;
    for (i, run) in runs.iter().enumerate() {
        assert!(run.count > 0, "an empty run in a topic index entry");
        if i > 0 {
            // Guards the format's data: a gap is unsigned, so runs must move forward.
            assert!(
                run.first_position >= end,
                "topic index runs out of position order"
            );
            put_varint(&mut v, run.first_position - end);
        }
        put_varint(&mut v, u64::from(run.count));
        end = run.first_position + u64::from(run.count);
    }
    v
}

/// The runs of an index entry of either format; `None` if it does not parse (or has no run,
/// or a run of no event).
pub fn parse_entry_value(value: &[u8]) -> Option<Vec<TopicRun>> {
    let runs = match value.split_first()? {
        (&ENTRY_FORMAT_2, rest) => parse_entry_value_2(rest)?,
        _ => parse_entry_value_1(value)?,
    };
    (!runs.is_empty() && runs.iter().all(|r| r.count > 0)).then_some(runs)
}

fn parse_entry_value_2(value: &[u8]) -> Option<Vec<TopicRun>> {
    let mut first_position = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let mut rest = &value[8..];
    let mut runs = Vec::new();
    loop {
        if !runs.is_empty() {
            if rest.is_empty() {
                return Some(runs);
            }
            first_position = first_position.checked_add(take_varint(&mut rest)?)?;
        }
        let count = u32::try_from(take_varint(&mut rest)?).ok()?;
        runs.push(TopicRun {
            first_position,
            count,
        });
        first_position = first_position.checked_add(u64::from(count))?;
    }
}

/// Format 1 (written before format 2): the stream parts and sequences are skipped.
fn parse_entry_value_1(value: &[u8]) -> Option<Vec<TopicRun>> {
    let n = u32::from_le_bytes(value.get(..4)?.try_into().ok()?) as usize;
    let mut rest = &value[4..];
    let mut runs = Vec::with_capacity(n.min(TOPIC_ENTRY_RUNS_MAX));
    for _ in 0..n {
        let (_stream, after) = parse_stream_part(rest)?;
        let first_position = u64::from_le_bytes(after.get(8..16)?.try_into().ok()?);
        let count = u32::from_le_bytes(after.get(16..20)?.try_into().ok()?);
        rest = &after[20..];
        runs.push(TopicRun {
            first_position,
            count,
        });
    }
    rest.is_empty().then_some(runs)
}

/// LEB128: seven bits a byte, low first.
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for (i, &b) in input.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        // The tenth byte holds the top bit only.
        if i == 9 && bits > 1 {
            return None;
        }
        n |= bits << (7 * i);
        if b & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(n);
        }
    }
    None
}

fn parse_index_key(key: &[u8]) -> Option<(String, u32, u64)> {
    let (&len, rest) = key.get(1..)?.split_first()?;
    let len = len as usize;
    let topic = std::str::from_utf8(rest.get(..len)?).ok()?.to_owned();
    let partition = u32::from_be_bytes(rest.get(len..len + 4)?.try_into().ok()?);
    let offset = u64::from_be_bytes(rest.get(len + 4..)?.try_into().ok()?);
    Some((topic, partition, offset))
}

fn parse_offsets_key(key: &[u8]) -> Option<(String, String, u32)> {
    let (&glen, rest) = key.get(1..)?.split_first()?;
    let glen = glen as usize;
    let group = std::str::from_utf8(rest.get(..glen)?).ok()?.to_owned();
    let (&tlen, rest) = rest.get(glen..)?.split_first()?;
    let tlen = tlen as usize;
    let topic = std::str::from_utf8(rest.get(..tlen)?).ok()?.to_owned();
    let partition = u32::from_be_bytes(rest.get(tlen..)?.try_into().ok()?);
    Some((group, topic, partition))
}

fn malformed(keyspace: &'static str) -> StorageError {
    StorageError::corrupt_store(Corruption::MalformedKey { keyspace })
}

fn u64_value(value: &[u8], keyspace: &'static str) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| malformed(keyspace))?;
    Ok(u64::from_le_bytes(bytes))
}

impl Journal {
    /// The global position the topic index covers (0 before the first batch).
    pub(crate) fn topic_cursor(&self) -> Result<u64, StorageError> {
        match self.shared.db()?.get(CURSOR_KEY)? {
            None => Ok(0),
            Some(v) => u64_value(&v, "topic cursor"),
        }
    }

    /// Every stored topic with its configuration, by name.
    pub(crate) fn stored_topics(&self) -> Result<Vec<(String, StoredTopic)>, StorageError> {
        let mut out = Vec::new();
        for entry in self.shared.db()?.scan_prefix([TOPIC_CONFIG]) {
            let (key, value) = entry?;
            let name = std::str::from_utf8(&key[1..]).map_err(|_| malformed("topic config"))?;
            out.push((name.to_owned(), parse_config(&value)?));
        }
        Ok(out)
    }

    /// One topic's stored configuration (a point read: a consumer asks on every poll).
    pub(crate) fn stored_topic(&self, topic: &str) -> Result<Option<StoredTopic>, StorageError> {
        match self.shared.db()?.get(config_key(topic))? {
            Some(value) => Ok(Some(parse_config(&value)?)),
            None => Ok(None),
        }
    }

    /// The next offset of a partition as the index stood when its cursor was at `cursor`:
    /// the end of its last entry whose events lie at or below `cursor` (0 when none does).
    ///
    /// The indexer writes a batch's entries key by key and its cursor last, so a crash (or
    /// a failed write) can leave entries of a batch past the stored cursor. They map offsets
    /// to the same events as the batch planned again will (offsets are a function of the
    /// global order), but they end where that batch stopped, not where the cursor is; the
    /// planner must start each partition from its end at the cursor.
    pub(crate) fn partition_end_at(
        &self,
        topic: &str,
        partition: u32,
        cursor: u64,
    ) -> Result<u64, StorageError> {
        let prefix = partition_prefix(topic, partition);
        for entry in self.shared.db()?.scan_prefix(&prefix).rev() {
            let (key, value) = entry?;
            let (_, _, first) = parse_index_key(&key).ok_or_else(|| malformed("topic index"))?;
            let runs = parse_entry_value(&value).ok_or_else(|| malformed("topic index"))?;
            if runs[0].first_position > cursor {
                continue;
            }
            return Ok(first + runs.iter().map(|r| r.count as u64).sum::<u64>());
        }
        Ok(0)
    }

    /// The next offset of a partition: the end of its last index entry (0 when empty).
    pub(crate) fn partition_end(&self, topic: &str, partition: u32) -> Result<u64, StorageError> {
        self.partition_end_at(topic, partition, u64::MAX)
    }

    /// The index entries of one partition in offset order, starting with the one holding
    /// `from_offset`: (first offset, runs).
    pub(crate) fn topic_entries(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
    ) -> Reads<'static, (u64, Vec<TopicRun>)> {
        let db = match self.shared.db() {
            Ok(db) => db,
            Err(e) => return failed(e),
        };
        let prefix = partition_prefix(topic, partition);
        // A reader that finished an entry asks for the offset the next one starts at: one
        // point read finds it. Otherwise the entry holding the offset is the last one at or
        // before it (a reverse range, which sled walks far more slowly).
        let exact = index_key(topic, partition, from_offset);
        let start = match db.contains_key(&exact) {
            Ok(true) => exact,
            Ok(false) => match db.range(..=exact).next_back() {
                Some(Ok((key, _))) if key.starts_with(&prefix) => key.to_vec(),
                _ => prefix.clone(),
            },
            Err(e) => return failed(e.into()),
        };
        let end = index_key(topic, partition, u64::MAX);
        super::reads(db.range(start..=end).map(|entry| {
            let (key, value) = entry?;
            let (_, _, first) = parse_index_key(&key).ok_or_else(|| malformed("topic index"))?;
            let runs = parse_entry_value(&value).ok_or_else(|| malformed("topic index"))?;
            Ok((first, runs))
        }))
    }

    /// The runs of the sled layout's global index covering positions `from..=to`, in order,
    /// each as (its first position, the run), trimmed to the range; consecutive runs of one
    /// stream are merged. One `StreamId` per run, not per event (`read_global` expands runs
    /// per event): [`Journal::visit_global`]'s read on that layout.
    fn global_runs(&self, from: u64, to: u64) -> Result<Vec<(u64, keys::GlobalRun)>, StorageError> {
        let mut out: Vec<(u64, keys::GlobalRun)> = Vec::new();
        if from > to {
            return Ok(out);
        }
        assert!(
            self.shared.log.is_none(),
            "the global index's runs are the sled layout's (the log is read by `visit_global`)"
        );
        let db = self.shared.db()?;
        // The index entry holding `from` starts at or before it.
        let start = match db.range(..=keys::global_key(from)).next_back() {
            Some(Ok((key, _))) if key.first() == Some(&keys::GLOBAL) => key.to_vec(),
            _ => keys::global_key(0).to_vec(),
        };
        let bad = || StorageError::corrupt_store(Corruption::MalformedGlobalEntry);
        for entry in db.range(start..=keys::global_key(to).to_vec()) {
            let (key, value) = entry?;
            let first = keys::parse_global_key(&key).ok_or_else(bad)?;
            let mut position = first;
            for run in keys::parse_global_entry(&value).ok_or_else(bad)? {
                if run.count == 0 {
                    continue;
                }
                let (run_from, run_to) = (position, position + run.count as u64 - 1);
                position += run.count as u64;
                if run_to < from || run_from > to {
                    continue;
                }
                let skip = from.saturating_sub(run_from);
                let count = (run_to.min(to) - run_from + 1 - skip) as u32;
                let (first_position, first_sequence) = (run_from + skip, run.first_sequence + skip);
                match out.last_mut() {
                    Some((p, last))
                        if last.stream == run.stream
                            && *p + last.count as u64 == first_position
                            && last.first_sequence + last.count as u64 == first_sequence =>
                    {
                        last.count += count;
                    }
                    _ => out.push((
                        first_position,
                        keys::GlobalRun {
                            stream: run.stream,
                            first_sequence,
                            count,
                        },
                    )),
                }
            }
        }
        Ok(out)
    }

    /// Visits the records at global positions `from..=to` in order, each checked once (CRC —
    /// on the segment log the frame's —, place) and handed over as its view and bytes: the topic indexer's and the topic
    /// readers' read. On the segment log one pass over the positions; on sled the global
    /// index's runs, then each run's range scan. A position in the range without its record
    /// is a `MissingRecord` corruption.
    pub(crate) fn visit_global<E: From<StorageError>>(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(super::record::RecordView<'_>, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if from > to {
            return Ok(());
        }
        let mut next = from;
        if let Some(log) = &self.shared.log {
            log.visit_positions(from, to, |position, bytes| {
                // Bytes of a frame the log checked as it read it (its body's CRC covers the
                // records), or of one the committer wrote in this process: a record's own
                // CRC again was a fiftieth of a live consumer's and the indexer's CPU.
                let view = super::record::RecordView::of_checked(bytes)
                    .map_err(|e| StorageError::corrupt_store(Corruption::Record(e)))?;
                if view.global_position != position {
                    return Err(misplaced_in_global_order(position, &view).into());
                }
                next = position + 1;
                f(view, bytes)
            })?;
        } else {
            for (first_position, run) in self.global_runs(from, to)? {
                let stream = &run.stream;
                let mut sequence = run.first_sequence;
                self.visit_run(stream, sequence, run.count, |bytes| -> Result<(), E> {
                    let view = super::view_checked(stream, sequence, bytes)?;
                    let position = first_position + (sequence - run.first_sequence);
                    if view.global_position != position {
                        return Err(misplaced_in_global_order(position, &view).into());
                    }
                    sequence += 1;
                    next = view.global_position + 1;
                    f(view, bytes)
                })?;
            }
        }
        if next <= to {
            return Err(StorageError::corrupt_store(Corruption::MissingRecord).into());
        }
        Ok(())
    }

    /// The record stored as `bytes` at `(stream, sequence)`, checked and, if encrypted,
    /// opened; an erased payload stays sealed (its message is published as erased). A
    /// missing or wrong key is an error: nothing is published half-read.
    pub(crate) fn record_for_topic(
        &self,
        stream: &StreamId,
        sequence: u64,
        bytes: &[u8],
    ) -> Result<super::Record, StorageError> {
        let mut record = super::decode_checked(stream, sequence, bytes)?;
        match self.open_in(&self.shared.db()?, &mut record) {
            Ok(()) | Err(StorageError::Erased { .. }) => Ok(record),
            Err(e) => Err(e),
        }
    }

    /// Calls `f(bytes)` for the stored bytes of `count` records of a stream from `first`, in
    /// order, with one range scan (one point read for one record) and no copy: the sled
    /// layout's read of a global index run. A record missing from the range is a
    /// `MissingRecord` corruption.
    fn visit_run<E: From<StorageError>>(
        &self,
        stream: &StreamId,
        first: u64,
        count: u32,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let db = self.shared.db()?;
        let start = keys::stream_key(keys::EVENTS, stream, first);
        // A run of one record (most of them, where many aggregates interleave in the global
        // order): a point read, which descends the tree once, where a range scan descends it
        // to open the range and again to find its end.
        if count == 1 {
            let value = db
                .get(&start)
                .map_err(StorageError::from)?
                .ok_or_else(|| StorageError::corrupt(stream, first, Corruption::MissingRecord))?;
            return f(&value);
        }
        let end = keys::stream_key(keys::EVENTS, stream, first + count as u64 - 1);
        let mut seen = 0u64;
        for entry in db.range(start..=end) {
            let (_, value) = entry.map_err(StorageError::from)?;
            f(&value)?;
            seen += 1;
        }
        if seen != count as u64 {
            return Err(
                StorageError::corrupt(stream, first + seen, Corruption::MissingRecord).into(),
            );
        }
        Ok(())
    }

    /// Committed offsets, optionally of one group: (group, topic, partition, next offset).
    pub(crate) fn committed_offsets(
        &self,
        group: Option<&str>,
    ) -> Result<Vec<(String, String, u32, u64)>, StorageError> {
        let prefix = match group {
            Some(g) => offsets_prefix(g, None),
            None => vec![CONSUMER_OFFSETS],
        };
        let mut out = Vec::new();
        for entry in self.shared.db()?.scan_prefix(prefix) {
            let (key, value) = entry?;
            let (g, t, p) = parse_offsets_key(&key).ok_or_else(|| malformed("consumer offset"))?;
            out.push((g, t, p, u64_value(&value, "consumer offset")?));
        }
        Ok(out)
    }
}

impl JournalWriter {
    /// Writes one indexer batch: new topic configs, index entries, then the cursor moved from
    /// `cursor_from` to `cursor_to`. Not synced here: the batch is rebuilt identically from
    /// the journal if a crash takes it back.
    ///
    /// Key by key, the cursor last, not one sled batch: sled makes a batch atomic by sealing
    /// its I/O buffer around it, so a batch every few milliseconds cost a buffer write (and
    /// often a thread start) in sled's I/O pool each, and applied it under sled's global
    /// write lock, where every other write in the store waits. sled recovers a prefix of its
    /// log, so after a crash the stored cursor still has every entry it covers; entries of a
    /// batch past it may remain, and [`JournalWriter::trim_topic_index`] removes them before
    /// the indexer plans again. A reader that meets them reads the right messages: they map
    /// offsets to the same events as the batch planned again (offsets follow the global
    /// order).
    ///
    /// Not a frame of writes through the committer: a checkpoint pauses the committer and
    /// then waits for the indexer to cover its cut; and a failure to apply it would then
    /// poison the journal, where a failed topic batch is retried.
    pub(crate) fn write_topic_batch(
        &self,
        cursor_from: u64,
        cursor_to: u64,
        new_topics: &[(String, StoredTopic)],
        entries: &[TopicEntry],
    ) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        assert!(cursor_to >= cursor_from, "topic cursor moved backwards");
        let db = self.shared.db()?;
        // One writer (the indexer thread): the stored cursor is where this batch starts.
        let stored = match db.get(CURSOR_KEY)? {
            None => 0,
            Some(v) => u64_value(&v, "topic cursor")?,
        };
        assert_eq!(
            stored, cursor_from,
            "topic cursor changed under the indexer"
        );
        super::failpoint::check(super::failpoint::TOPIC_BATCH)?;
        for (name, topic) in new_topics {
            db.insert(config_key(name), config_value(topic))?;
        }
        for entry in entries {
            for (first, chunk) in chunk_offsets(entry.first_offset, &entry.runs) {
                db.insert(
                    index_key(&entry.topic, entry.partition, first),
                    entry_value(chunk),
                )?;
            }
        }
        super::failpoint::check(super::failpoint::TOPIC_BATCH_CURSOR)?;
        db.insert(CURSOR_KEY, &cursor_to.to_le_bytes())?;
        Ok(())
    }

    /// Removes the index entries whose events lie past the stored cursor: what a batch that
    /// did not finish (a crash, a failed write) left of itself. The indexer calls it before it
    /// plans from the cursor, at start and after a failed batch, so that the batch planned
    /// again does not leave older keys inside its entries. Returns how many it removed.
    pub(crate) fn trim_topic_index(&self) -> Result<u64, StorageError> {
        self.shared.check_writable()?;
        let cursor = self.topic_cursor()?;
        let db = self.shared.db()?;
        let mut removed = 0;
        for (name, topic) in self.stored_topics()? {
            for partition in 0..topic.partitions {
                let prefix = partition_prefix(&name, partition);
                let mut past = Vec::new();
                for entry in db.scan_prefix(&prefix).rev() {
                    let (key, value) = entry?;
                    let runs = parse_entry_value(&value).ok_or_else(|| malformed("topic index"))?;
                    if runs[0].first_position <= cursor {
                        break;
                    }
                    past.push(key);
                }
                for key in past {
                    db.remove(key)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Puts every entry in one sled batch (all or none after a crash), not synced.
    fn put_batch(
        &self,
        puts: impl Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for (key, value) in puts {
            batch.insert(key, value);
        }
        self.shared.db()?.apply_batch(batch)?;
        Ok(())
    }

    /// Stores a topic's configuration (at engine open, for configured topics not yet stored).
    pub(crate) fn put_topic_config(
        &self,
        name: &str,
        topic: StoredTopic,
    ) -> Result<(), StorageError> {
        self.write_topic_batch_configs(&[(name.to_owned(), topic)])
    }

    fn write_topic_batch_configs(
        &self,
        topics: &[(String, StoredTopic)],
    ) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        self.put_batch(
            topics
                .iter()
                .map(|(name, topic)| (config_key(name), config_value(topic))),
        )
    }

    /// Stores a group's committed offsets (next offset to read per partition) atomically and
    /// makes them durable (flush + fdatasync) before returning. Blocking.
    pub(crate) fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        let keyed = offsets.iter().map(|(partition, offset)| {
            let mut key = offsets_prefix(group, Some(topic));
            key.extend_from_slice(&partition.to_be_bytes());
            (key, offset.to_le_bytes().to_vec())
        });
        super::failpoint::check(super::failpoint::COMMIT_OFFSETS)?;
        if self.shared.log.is_some() {
            // On the segment log a frame of writes: durable with the next group's
            // `fdatasync`, instead of a flush and sync of sled of its own (which also held
            // back the acknowledgements of the groups synced with it).
            let writes = keyed
                .map(|(key, value)| super::WriteOp::Put { key, value })
                .collect();
            return self.commit_writes(writes);
        }
        self.put_batch(keyed)?;
        self.sync()
    }
}

/// Reads a value of [`config_value`].
fn parse_config(value: &[u8]) -> Result<StoredTopic, StorageError> {
    match value {
        [1, p0, p1, p2, p3, format] => Ok(StoredTopic {
            partitions: u32::from_le_bytes([*p0, *p1, *p2, *p3]),
            format: *format,
        }),
        _ => Err(malformed("topic config")),
    }
}

/// A stored topic's configuration value: version 1 | partitions u32 LE | wire format u8.
fn config_value(topic: &StoredTopic) -> Vec<u8> {
    let mut value = vec![1u8];
    value.extend_from_slice(&topic.partitions.to_le_bytes());
    value.push(topic.format);
    value
}

/// Splits a partition's runs into index entries of at most `TOPIC_ENTRY_RUNS_MAX` runs, each
/// with its first offset.
/// A record found at `position` of the global order says it is at another.
fn misplaced_in_global_order(position: u64, view: &super::record::RecordView<'_>) -> StorageError {
    StorageError::corrupt(
        &StreamId::new(view.aggregate_type, view.aggregate_id),
        view.sequence,
        Corruption::GlobalOrder {
            position,
            found: view.global_position,
        },
    )
}

fn chunk_offsets(first_offset: u64, runs: &[TopicRun]) -> Vec<(u64, &[TopicRun])> {
    let mut out = Vec::new();
    let mut offset = first_offset;
    for chunk in runs.chunks(TOPIC_ENTRY_RUNS_MAX) {
        out.push((offset, chunk));
        offset += chunk.iter().map(|r| r.count as u64).sum::<u64>();
    }
    out
}

/// An event of type `Happened` whose ids and payload derive from `n`, for the tests of the
/// topic index.
#[cfg(test)]
pub(crate) fn test_event(n: u8) -> super::NewEvent {
    super::NewEvent {
        event_id: uuid::Uuid::from_u128(n as u128),
        event_type: "Happened".into(),
        event_version: "1.0".into(),
        timestamp: chrono::DateTime::from_timestamp_micros(1_767_225_600_000_000).unwrap(),
        correlation_id: uuid::Uuid::from_u128(1000 + n as u128),
        causation_id: None,
        source: "test".into(),
        user_id: None,
        session_id: None,
        audit_context: None,
        payload: vec![1, n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `visit_global` visits exactly the events `read_global` lists, for every range — ranges
    /// that start and end inside a group commit's entry and inside a run — and on the sled
    /// layout `global_runs` has one run per stretch of one stream, merged across entries.
    #[test]
    fn visit_global_covers_the_global_order() {
        use super::super::{AppendRequest, JournalConfig};
        let event = test_event;
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
        let (a, b) = (StreamId::new("T", "a"), StreamId::new("T", "b"));
        // a×3, b×2, then a×2 in a commit of its own (its run continues a's only by stream, not
        // by position), then a×1 right after a×2 in another commit (merged with it).
        let mut n = 0u8;
        for (stream, expected, count) in [(&a, 0, 3), (&b, 0, 2), (&a, 3, 2), (&a, 5, 1)] {
            let events = (0..count)
                .map(|_| {
                    n += 1;
                    event(n)
                })
                .collect();
            journal
                .append_blocking(AppendRequest::new(stream.clone(), expected, events))
                .unwrap();
        }
        let all: Vec<(u64, StreamId, u64)> = journal.read_global(1).map(Result::unwrap).collect();
        let last = all.len() as u64;
        assert_eq!(last, 8);
        for from in 1..=last {
            for to in from..=last {
                let mut visited: Vec<(u64, StreamId, u64)> = Vec::new();
                journal
                    .visit_global(from, to, |view, _| -> Result<(), StorageError> {
                        let stream = StreamId::new(view.aggregate_type, view.aggregate_id);
                        visited.push((view.global_position, stream, view.sequence));
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(
                    visited,
                    all[(from - 1) as usize..to as usize],
                    "{from}..={to}"
                );
                if journal.shared.log.is_some() {
                    continue;
                }
                let runs = journal.global_runs(from, to).unwrap();
                for pair in runs.windows(2) {
                    let ((p, x), (q, y)) = (&pair[0], &pair[1]);
                    let continues = x.stream == y.stream
                        && p + x.count as u64 == *q
                        && x.first_sequence + x.count as u64 == y.first_sequence;
                    assert!(!continues, "{from}..={to}: runs not merged: {runs:?}");
                }
            }
        }
        let mut none = true;
        journal
            .visit_global(3, 2, |_, _| -> Result<(), StorageError> {
                none = false;
                Ok(())
            })
            .unwrap();
        assert!(none);
        // A range past the journal's end names the missing record rather than stopping short.
        let past = journal.visit_global(7, 9, |_, _| -> Result<(), StorageError> { Ok(()) });
        assert!(
            matches!(
                past,
                Err(StorageError::Corrupt {
                    cause: Corruption::MissingRecord,
                    ..
                })
            ),
            "{past:?}"
        );
        journal.close().unwrap();
    }

    fn run(first_position: u64, count: u32) -> TopicRun {
        TopicRun {
            first_position,
            count,
        }
    }

    #[test]
    fn keys_and_entries_round_trip() {
        let runs = vec![run(17, 2), run(20, 1), run(21 + 300, 70_000)];
        let value = entry_value(&runs);
        // The tag, 8 bytes of position, then 1 + (1 + 1) + (2 + 3) bytes of varints.
        assert_eq!(value.len(), 1 + 8 + 1 + 2 + 5);
        assert_eq!(parse_entry_value(&value), Some(runs.clone()));
        for cut in 0..value.len() - 1 {
            // A prefix is refused or reads as the runs it holds whole, never as other
            // positions or counts (a cut varint keeps its continuation bit).
            if let Some(parsed) = parse_entry_value(&value[..cut]) {
                assert!(runs.starts_with(&parsed), "{cut}");
            }
        }
        assert_eq!(parse_entry_value(&value[..9]), None);
        assert_eq!(
            parse_entry_value(&[ENTRY_FORMAT_2, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
        let k = index_key("business.orders", 7, 300);
        assert_eq!(
            parse_index_key(&k),
            Some(("business.orders".into(), 7, 300))
        );
        assert!(index_key("t", 1, 2) < index_key("t", 1, 256));
        assert!(index_key("t", 1, u64::MAX) < index_key("t", 2, 0));
        let mut ok = offsets_prefix("g", Some("t"));
        ok.extend_from_slice(&3u32.to_be_bytes());
        assert_eq!(parse_offsets_key(&ok), Some(("g".into(), "t".into(), 3)));
        let many: Vec<TopicRun> = (0..130u64).map(|i| run(2 * i + 1, 1)).collect();
        let chunks = chunk_offsets(10, &many);
        assert_eq!(
            chunks
                .iter()
                .map(|(o, c)| (*o, c.len()))
                .collect::<Vec<_>>(),
            vec![(10, 64), (74, 64), (138, 2)]
        );
    }

    /// Entries written before format 2 (stream parts, sequences, fixed-width positions) read
    /// as the same runs forever. The bytes are what that writer stored for two runs:
    /// `Order/o-1` #3..=4 at positions 17..=18, then `Order/o-10` #1 at position 20.
    #[test]
    fn format_1_entries_still_read() {
        const FORMAT_1: &str = "02000000\
            054f7264657200036f2d31 0300000000000000 1100000000000000 02000000\
            054f7264657200046f2d3130 0100000000000000 1400000000000000 01000000";
        let v: Vec<u8> = FORMAT_1
            .replace(' ', "")
            .as_bytes()
            .chunks(2)
            .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
            .collect();
        let expected = vec![run(17, 2), run(20, 1)];
        assert_eq!(parse_entry_value(&v), Some(expected));
        assert_eq!(parse_entry_value(&v[..v.len() - 1]), None);
        assert_eq!(parse_entry_value(&0u32.to_le_bytes()), None);
    }
}
