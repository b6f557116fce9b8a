//! Reading topics: "the messages of topic T, partition P, from offset O", each with key,
//! headers and value exactly as they are published. Consumers read through it; so do the CLI
//! (`topics`, `consume`) and, later, a Kafka publisher.

use super::index::{plan_between, Planner};
use super::message::{Message, MessageArena};
use super::recent::RecentIndex;
use super::render::{self, Fields};
use super::transcode::Transcoder;
use super::{TopicCatalog, TopicError, VersionOfFn, WireFormat, WritePayloadFn};
use crate::error::{Corruption, StorageError};
use crate::journal::topics::{StoredTopic, TopicRun};
use crate::journal::{decode_checked, AtRest, Journal, Record, StreamId};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// A topic as stored: its configuration and the end offset of each partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    pub format: WireFormat,
    /// The next offset of each partition (= its message count: retention keeps everything).
    pub end_offsets: Vec<u64>,
}

impl TopicInfo {
    pub fn messages(&self) -> u64 {
        self.end_offsets.iter().sum()
    }
}

/// Index entries of one partition: (first offset, runs).
type PartitionEntries = Vec<(u64, Vec<TopicRun>)>;

/// The index entries the indexer has not written yet, planned in memory (read-only views).
#[derive(Debug, Default)]
struct Tail {
    topics: HashMap<String, StoredTopic>,
    entries: HashMap<(String, u32), PartitionEntries>,
    /// The global position the tail reaches (the journal's last at open).
    through: u64,
}

/// Reads topics from a journal. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TopicLog {
    journal: Journal,
    catalog: Arc<TopicCatalog>,
    tail: Arc<Tail>,
    /// The configurations read so far and, for the engine's log, the entries the indexer
    /// stored last (see `super::recent`).
    recent: Arc<RecentIndex>,
}

impl TopicLog {
    /// The journal it reads (the publisher's cursors live there too).
    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    pub(crate) fn indexed(
        journal: Journal,
        catalog: Arc<TopicCatalog>,
        recent: Arc<RecentIndex>,
    ) -> TopicLog {
        TopicLog {
            journal,
            catalog,
            tail: Arc::default(),
            recent,
        }
    }

    /// A view over a read-only journal (the CLI): what the indexer has written, plus the
    /// events after its cursor routed in memory by the same planner, so that every event in
    /// the journal is visible at the offsets the indexer will give it (for the catalog's
    /// routes). Writes nothing.
    pub fn read_only(journal: &Journal, catalog: TopicCatalog) -> Result<TopicLog, TopicError> {
        let cursor = journal.topic_cursor()?;
        let last = journal.durable_position();
        let mut planner = Planner::load(journal)?;
        let mut tail = Tail {
            through: last.max(cursor),
            ..Tail::default()
        };
        let mut from = cursor + 1;
        while from <= last {
            let to = last.min(from + super::index::INDEX_BATCH_EVENTS_MAX - 1);
            let plan = plan_between(journal, &catalog, &mut planner, from, to)?;
            for entry in plan.entries {
                tail.entries
                    .entry((entry.topic, entry.partition))
                    .or_default()
                    .push((entry.first_offset, entry.runs));
            }
            from = to + 1;
        }
        tail.topics = planner.topics.into_iter().collect();
        Ok(TopicLog {
            journal: journal.clone(),
            catalog: Arc::new(catalog),
            tail: Arc::new(tail),
            recent: Arc::default(),
        })
    }

    /// The global position the index covers (for a read-only view: including its tail).
    pub fn indexed_through(&self) -> Result<u64, TopicError> {
        Ok(self.journal.topic_cursor()?.max(self.tail.through))
    }

    /// Every group's committed offsets: (group, topic, partition, next offset).
    pub fn committed_offsets(&self) -> Result<Vec<(String, String, u32, u64)>, TopicError> {
        Ok(self.journal.committed_offsets(None)?)
    }

    /// The global position the stored index covers (the indexer's cursor).
    pub fn cursor(&self) -> Result<u64, TopicError> {
        Ok(self.journal.topic_cursor()?)
    }

    fn stored_topics(&self) -> Result<HashMap<String, StoredTopic>, TopicError> {
        let mut topics: HashMap<String, StoredTopic> =
            self.journal.stored_topics()?.into_iter().collect();
        for (name, t) in &self.tail.topics {
            topics.entry(name.clone()).or_insert(*t);
        }
        Ok(topics)
    }

    /// One topic's stored configuration, or `UnknownTopic` (no end offsets read). Kept once
    /// read: a stored configuration never changes, and a consumer asks on every read.
    pub(crate) fn stored_topic(&self, name: &str) -> Result<StoredTopic, TopicError> {
        if let Some(t) = self.recent.config(name) {
            return Ok(t);
        }
        let stored = match self.journal.stored_topic(name)? {
            Some(t) => {
                self.recent.keep_config(name, t);
                Some(t)
            }
            None => self.tail.topics.get(name).copied(),
        };
        stored.ok_or_else(|| TopicError::UnknownTopic {
            topic: name.to_owned(),
        })
    }

    /// The stored configuration of a topic that has `partition`: `UnknownTopic` or
    /// `UnknownPartition` otherwise.
    fn stored_partition(&self, topic: &str, partition: u32) -> Result<StoredTopic, TopicError> {
        let info = self.stored_topic(topic)?;
        if partition >= info.partitions {
            return Err(TopicError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            });
        }
        Ok(info)
    }

    /// One topic's configuration, or `UnknownTopic`.
    pub fn topic(&self, name: &str) -> Result<TopicInfo, TopicError> {
        let stored = self.stored_topic(name)?;
        self.info(name, stored)
    }

    fn info(&self, name: &str, stored: StoredTopic) -> Result<TopicInfo, TopicError> {
        let mut end_offsets = Vec::with_capacity(stored.partitions as usize);
        for p in 0..stored.partitions {
            end_offsets.push(self.end_offset(name, p)?);
        }
        Ok(TopicInfo {
            name: name.to_owned(),
            partitions: stored.partitions,
            format: WireFormat::from_code(stored.format).unwrap_or(WireFormat::Catalog),
            end_offsets,
        })
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Result<Vec<TopicInfo>, TopicError> {
        let mut names: Vec<(String, StoredTopic)> = self.stored_topics()?.into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
            .into_iter()
            .map(|(name, stored)| self.info(&name, stored))
            .collect()
    }

    /// The next offset of a partition.
    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, TopicError> {
        if let Some(entries) = self.tail.entries.get(&(topic.to_owned(), partition)) {
            if let Some((first, runs)) = entries.last() {
                return Ok(first + runs.iter().map(|r| r.count as u64).sum::<u64>());
            }
        }
        Ok(self.journal.partition_end(topic, partition)?)
    }

    /// Up to `max` messages of `(topic, partition)` from `from_offset`, in offset order.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        max: usize,
    ) -> Result<Vec<Message>, TopicError> {
        let mut out = Vec::new();
        self.read_with(
            &mut ReadState::default(),
            topic,
            partition,
            from_offset,
            max,
            &mut out,
        )?;
        Ok(out)
    }

    /// [`TopicLog::read`] for a reader that reads again and again (a consumer): appends to
    /// `out`, and keeps in `state` what it learned (the transcoder's verdict on each payload
    /// shape, the arena block it fills) for its next read. A fresh state per read checked
    /// every shape against the typed path again on every read of every partition.
    pub(crate) fn read_with(
        &self,
        state: &mut ReadState,
        topic: &str,
        partition: u32,
        from_offset: u64,
        max: usize,
        out: &mut Vec<Message>,
    ) -> Result<(), TopicError> {
        let max = out.len() + max;
        if out.len() == max {
            return Ok(());
        }
        let info = self.stored_partition(topic, partition)?;
        let format = WireFormat::from_code(info.format).unwrap_or(WireFormat::Catalog);
        if state.arena.as_ref().is_none_or(|a| a.topic() != topic) {
            state.arena = Some(MessageArena::new(topic));
        }
        let mut reader = RunReader {
            log: self,
            topic,
            partition,
            partitions: info.partitions,
            format,
            from: from_offset,
            max,
            out,
            scratch: &mut state.scratch,
            arena: state.arena.as_mut().expect("set above"),
            transcoder: &mut state.transcoder,
            writer: &mut state.writer,
        };
        self.walk_entries(topic, partition, from_offset, |first, runs| {
            reader.entry(first, runs)
        })
    }

    /// Calls `f(first offset, runs)` for the index entries of `(topic, partition)` from the
    /// one holding `from_offset` on (the indexer's last ones from memory, the stored ones,
    /// then a read-only view's tail) until it returns true.
    fn walk_entries<E: From<StorageError>>(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        mut f: impl FnMut(u64, &[TopicRun]) -> Result<bool, E>,
    ) -> Result<(), E> {
        if let Some(entries) = self.recent.entries_from(topic, partition, from_offset) {
            for (first, runs) in entries {
                if f(first, &runs)? {
                    return Ok(());
                }
            }
        } else {
            for entry in self.journal.topic_entries(topic, partition, from_offset) {
                let (first, runs) = entry?;
                if f(first, &runs)? {
                    return Ok(());
                }
            }
        }
        if let Some(entries) = self.tail.entries.get(&(topic.to_owned(), partition)) {
            for (first, runs) in entries {
                if f(*first, runs)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The first offset of `(topic, partition)` whose message's timestamp is at or after
    /// `at` (the end offset when none is). Scans the partition in order.
    ///
    /// When no message qualifies, the answer is the offset after the last message scanned,
    /// not a second look at the partition's end: messages indexed between the scan and that
    /// look (written after `at`) would otherwise be skipped by a consumer starting there.
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        at: DateTime<Utc>,
    ) -> Result<u64, TopicError> {
        let info = self.stored_partition(topic, partition)?;
        // Each record's timestamp from its header, nothing rendered: 2.1-2.4 million messages/s
        // where rendering each one read 0.6 million (the catch-up bench, 2026-11-28). Entries
        // may overlap (a read-only view's tail over entries a crashed batch left): `next` skips
        // offsets already scanned.
        let mut next = 0u64;
        let mut found = None;
        self.walk_entries(
            topic,
            partition,
            0,
            |first, runs| -> Result<bool, TopicError> {
                let mut offset = first;
                for run in runs {
                    let count = run.count as u64;
                    if offset + count <= next {
                        offset += count;
                        continue;
                    }
                    let skip = next.saturating_sub(offset);
                    let from = run.first_position + skip;
                    let mut at_offset = offset + skip;
                    let scanned = self.journal.visit_global(
                        from,
                        run.first_position + count - 1,
                        |view, _| -> Result<(), TimeScan> {
                            owned_here(topic, partition, info.partitions, view.aggregate_id)?;
                            if crate::journal::micros_to_time(view.timestamp_micros) >= at {
                                return Err(TimeScan::Found(at_offset));
                            }
                            at_offset += 1;
                            Ok(())
                        },
                    );
                    match scanned {
                        Ok(()) => {}
                        Err(TimeScan::Found(o)) => {
                            found = Some(o);
                            return Ok(true);
                        }
                        Err(TimeScan::Failed(e)) => return Err(e),
                    }
                    next = offset + count;
                    offset += count;
                }
                Ok(false)
            },
        )?;
        Ok(found.unwrap_or(next))
    }
}

/// The index names positions only; the record says whose event it is, and its aggregate must
/// hash to the partition read (else a `TopicPartition` corruption, not a wrong message).
fn owned_here(
    topic: &str,
    partition: u32,
    partitions: u32,
    aggregate_id: &str,
) -> Result<(), StorageError> {
    let found = super::partition_for(aggregate_id, partitions);
    if found != partition {
        return Err(StorageError::corrupt_store(Corruption::TopicPartition {
            topic: topic.into(),
            partition,
            found,
        }));
    }
    Ok(())
}

/// How a scan for a time stops early: at the first message at or after it, or on an error.
enum TimeScan {
    Found(u64),
    Failed(TopicError),
}

impl From<StorageError> for TimeScan {
    fn from(e: StorageError) -> Self {
        TimeScan::Failed(e.into())
    }
}

/// What a reader keeps from one read to the next (see [`TopicLog::read_with`]).
#[derive(Default)]
pub(crate) struct ReadState {
    /// Where each message's value is rendered before it is copied into the arena.
    scratch: Vec<u8>,
    /// The blocks the messages are built in (see `super::message`), for one topic.
    arena: Option<MessageArena>,
    /// Writes payloads from their stored bytes where that is the typed bytes.
    transcoder: Transcoder,
    /// The payload writer of the aggregate type read last.
    writer: Option<(String, WritePayloadFn, VersionOfFn)>,
}

impl std::fmt::Debug for ReadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadState")
            .field("arena", &self.arena)
            .finish_non_exhaustive()
    }
}

/// Walks index entries from an offset, rendering messages until `out` holds `max`.
struct RunReader<'a> {
    log: &'a TopicLog,
    topic: &'a str,
    partition: u32,
    /// The topic's partition count: each record's aggregate must hash to `partition`.
    partitions: u32,
    format: WireFormat,
    from: u64,
    max: usize,
    out: &'a mut Vec<Message>,
    scratch: &'a mut Vec<u8>,
    arena: &'a mut MessageArena,
    transcoder: &'a mut Transcoder,
    writer: &'a mut Option<(String, WritePayloadFn, VersionOfFn)>,
}

impl RunReader<'_> {
    /// Returns true when `max` messages were read.
    fn entry(&mut self, first: u64, runs: &[TopicRun]) -> Result<bool, TopicError> {
        let mut offset = first;
        for run in runs {
            let count = run.count as u64;
            if offset + count <= self.from {
                offset += count;
                continue;
            }
            let skip = self.from.saturating_sub(offset);
            let want = (count - skip).min((self.max - self.out.len()) as u64);
            let first_position = run.first_position + skip;
            let first_offset = offset + skip;
            self.out.reserve(want as usize);
            let (format, topic, partition, partitions) =
                (self.format, self.topic, self.partition, self.partitions);
            let redacted = self.log.catalog.redacts(topic);
            let (catalog, journal) = (&self.log.catalog, &self.log.journal);
            let out = &mut *self.out;
            let scratch = &mut *self.scratch;
            let arena = &mut *self.arena;
            let transcoder = &mut *self.transcoder;
            let writer = &mut *self.writer;
            let mut i = 0u64;
            // One pass over the run's positions; each record checked (CRC — on the segment
            // log its frame's —, place) and rendered from its stored bytes in place: nothing
            // is copied out of the journal but the message.
            journal.visit_global(
                first_position,
                first_position + want - 1,
                |view, bytes| -> Result<(), TopicError> {
                    owned_here(topic, partition, partitions, view.aggregate_id)?;
                    // Most runs hold one aggregate type: one catalog look-up per change.
                    let (write_payload, version_of) = match writer {
                        Some((t, w, v)) if t.as_str() == view.aggregate_type => (*w, *v),
                        _ => {
                            let (w, v) =
                                catalog
                                    .payload_writer(view.aggregate_type)
                                    .map_err(|source| TopicError::Render {
                                        position: view.global_position,
                                        source,
                                    })?;
                            *writer = Some((view.aggregate_type.to_owned(), w, v));
                            (w, v)
                        }
                    };
                    // A format 1 record in plain renders from its view; an encrypted one is
                    // decoded whole and opened with its data key (an erased one stays sealed
                    // and is published as erased); a format 2 one is decoded for its session
                    // id and audit context.
                    let decoded: Record;
                    let mut payload = render::Payload::Own(write_payload);
                    let fields = match Fields::from_view(&view) {
                        Some(fields) if !view.encrypted => fields,
                        _ => {
                            let stream = StreamId::new(view.aggregate_type, view.aggregate_id);
                            decoded = if view.encrypted {
                                let record =
                                    journal.record_for_topic(&stream, view.sequence, bytes)?;
                                if record.at_rest == AtRest::Sealed {
                                    payload = render::Payload::Erased;
                                } else if redacted {
                                    payload = render::Payload::Redacted;
                                }
                                record
                            } else {
                                decode_checked(&stream, view.sequence, bytes)?
                            };
                            Fields::from(&decoded)
                        }
                    };
                    // The decoded payload's version: an upcast event is published as what
                    // it was upcast to, as the seed's `EventMigrator` stamps it.
                    let mut fields = fields;
                    if let Some(version) = version_of(fields.event_type) {
                        fields.published_version = version;
                    }
                    let message = render::message(
                        scratch,
                        arena,
                        transcoder,
                        payload,
                        format,
                        partition,
                        first_offset + i,
                        &fields,
                    )?;
                    out.push(message);
                    i += 1;
                    Ok(())
                },
            )?;
            // Read through here: an entry that overlaps this one (a read-only view's tail
            // planned in memory over entries a crashed batch left past the stored cursor,
            // which map the same offsets to the same events) yields nothing twice.
            self.from = first_offset + want;
            offset += count;
            if self.out.len() >= self.max {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    //! The index names positions only; the reader checks that each record it reads belongs to
    //! the partition it reads (its aggregate hashes there), so an index entry pointing at
    //! another partition's event is a typed corruption, not a wrong message.
    use super::*;
    use crate::journal::topics::{test_event, TopicEntry};
    use crate::journal::{AppendRequest, JournalConfig, JournalWriter};

    #[test]
    fn an_entry_pointing_at_another_partitions_event_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
        // Two aggregates in different partitions of a 2-partition topic.
        let ids: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
        let first = ids
            .iter()
            .find(|id| super::super::partition_for(id, 2) == 0)
            .unwrap();
        let other = ids
            .iter()
            .find(|id| super::super::partition_for(id, 2) == 1)
            .unwrap();
        for (n, id) in [first, other].into_iter().enumerate() {
            let stream = StreamId::new("T", id.as_str());
            journal
                .append_blocking(AppendRequest::new(stream, 0, vec![test_event(n as u8)]))
                .unwrap();
        }
        // Partition 0's entry claims both positions: the second is partition 1's event.
        let topic = StoredTopic {
            partitions: 2,
            format: WireFormat::Catalog.code(),
        };
        let entry = TopicEntry {
            topic: "t".into(),
            partition: 0,
            first_offset: 0,
            runs: vec![TopicRun {
                first_position: 1,
                count: 2,
            }],
        };
        journal
            .write_topic_batch(0, 2, &[("t".into(), topic)], &[entry])
            .unwrap();
        let log = TopicLog::indexed(
            (*journal).clone(),
            Arc::new(TopicCatalog::new()),
            Arc::default(),
        );
        // Offset 0 is partition 0's own event: past the check, it fails only for want of a
        // renderer for type T (this catalog knows no aggregate).
        let own = log.read("t", 0, 0, 1).unwrap_err();
        assert!(
            matches!(own, TopicError::Render { position: 1, .. }),
            "{own:?}"
        );
        let wrong = log.read("t", 0, 1, 1).unwrap_err();
        assert!(
            matches!(
                &wrong,
                TopicError::Storage(StorageError::Corrupt {
                    cause: Corruption::TopicPartition {
                        partition: 0,
                        found: 1,
                        ..
                    },
                    ..
                })
            ),
            "{wrong:?}"
        );
        journal.close().unwrap();
    }
}
