//! The topic indexer: routes the journal's durable global order to topics and partitions and
//! assigns offsets.
//!
//! [`Planner`] is the pure, deterministic part: given the stored topic configs and partition
//! ends, and the records after the cursor in global order, it yields the index entries and new
//! topic configs. The same records always give the same offsets, so after a crash (which may
//! take back an unsynced index batch, never the events under it) the indexer resumes from its
//! stored cursor and produces identical offsets; and the read-only CLI runs the same planner
//! in memory to show the tail the indexer has not written yet.
//!
//! [`Indexer`] is the background thread: it waits for the journal's durable watermark to move,
//! plans the new events (at most `INDEX_BATCH_EVENTS_MAX` at a time) and writes one batch:
//! entries + new topic configs + cursor, atomically.

use super::metrics::Metrics;
use super::{valid_name, TopicCatalog, TopicConfig, TopicError, PARTITIONS_MAX};
use crate::error::StorageError;
use crate::follower::{Follow, Follower};
use crate::journal::record::Record;
use crate::journal::topics::{StoredTopic, TopicEntry, TopicRun};
use crate::journal::{Journal, JournalWriter, StreamId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Events one indexer batch covers at most.
pub(crate) const INDEX_BATCH_EVENTS_MAX: u64 = 16_384;

/// Routing state: stored topics and the next offset of every partition touched.
#[derive(Debug, Default, Clone)]
pub(crate) struct Planner {
    pub(crate) topics: HashMap<String, StoredTopic>,
    next: HashMap<(String, u32), u64>,
}

/// One planned batch.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) new_topics: Vec<(String, StoredTopic)>,
    pub(crate) entries: Vec<TopicEntry>,
    /// Messages per (topic, event type), for the `produced` metric.
    pub(crate) produced: HashMap<(String, String), u64>,
}

impl Planner {
    pub(crate) fn load(journal: &Journal) -> Result<Planner, StorageError> {
        Ok(Planner {
            topics: journal.stored_topics()?.into_iter().collect(),
            next: HashMap::new(),
        })
    }

    fn next_offset(
        &mut self,
        journal: &Journal,
        topic: &str,
        partition: u32,
    ) -> Result<u64, StorageError> {
        let key = (topic.to_owned(), partition);
        if let Some(n) = self.next.get(&key) {
            return Ok(*n);
        }
        let end = journal.partition_end(topic, partition)?;
        self.next.insert(key, end);
        Ok(end)
    }

    /// Routes `records` (consecutive global positions, in order) and assigns their offsets.
    pub(crate) fn plan(
        &mut self,
        journal: &Journal,
        catalog: &TopicCatalog,
        records: &[Record],
    ) -> Result<Plan, TopicError> {
        let mut plan = Plan::default();
        let mut slots: HashMap<(String, u32), usize> = HashMap::new();
        for record in records {
            let targets = catalog
                .targets(record)
                .map_err(|source| TopicError::Render {
                    position: record.global_position,
                    source,
                })?;
            for target in targets {
                let topic = self.topic(&target, &mut plan)?;
                let partition = super::partition_for(&record.aggregate_id, topic.partitions);
                let key = (target.name.clone(), partition);
                let slot = match slots.get(&key) {
                    Some(i) => *i,
                    None => {
                        let first_offset = self.next_offset(journal, &target.name, partition)?;
                        plan.entries.push(TopicEntry {
                            topic: target.name.clone(),
                            partition,
                            first_offset,
                            runs: Vec::new(),
                        });
                        slots.insert(key.clone(), plan.entries.len() - 1);
                        plan.entries.len() - 1
                    }
                };
                extend_runs(&mut plan.entries[slot].runs, record);
                *self.next.get_mut(&key).expect("partition end loaded") += 1;
                *plan
                    .produced
                    .entry((target.name, record.event_type.clone()))
                    .or_default() += 1;
            }
        }
        Ok(plan)
    }

    /// The stored config of a topic; a new topic is created with `target`'s.
    fn topic(&mut self, target: &TopicConfig, plan: &mut Plan) -> Result<StoredTopic, TopicError> {
        if let Some(t) = self.topics.get(&target.name) {
            return Ok(*t);
        }
        check_config(target)?;
        let stored = StoredTopic {
            partitions: target.partitions,
            format: target.format.code(),
        };
        self.topics.insert(target.name.clone(), stored);
        plan.new_topics.push((target.name.clone(), stored));
        Ok(stored)
    }
}

pub(crate) fn check_config(config: &TopicConfig) -> Result<(), TopicError> {
    if !valid_name(&config.name) {
        return Err(TopicError::InvalidName {
            name: config.name.clone(),
        });
    }
    if config.partitions == 0 || config.partitions > PARTITIONS_MAX {
        return Err(TopicError::InvalidPartitions {
            topic: config.name.clone(),
            partitions: config.partitions,
            max: PARTITIONS_MAX,
        });
    }
    Ok(())
}

fn extend_runs(runs: &mut Vec<TopicRun>, record: &Record) {
    if let Some(last) = runs.last_mut() {
        let count = last.count as u64;
        if last.stream.aggregate_type == record.aggregate_type
            && last.stream.aggregate_id == record.aggregate_id
            && last.first_sequence + count == record.sequence
            && last.first_position + count == record.global_position
            && last.count < u32::MAX
        {
            last.count += 1;
            return;
        }
    }
    runs.push(TopicRun {
        stream: StreamId::new(record.aggregate_type.clone(), record.aggregate_id.clone()),
        first_sequence: record.sequence,
        first_position: record.global_position,
        count: 1,
    });
}

/// The records at global positions `from..=to`, in order. Consecutive events of one stream
/// are read with one range scan.
pub(crate) fn records_between(
    journal: &Journal,
    from: u64,
    to: u64,
) -> Result<Vec<Record>, StorageError> {
    let mut out = Vec::with_capacity((to + 1).saturating_sub(from) as usize);
    let mut pending: Option<(StreamId, u64, u32)> = None;
    let flush = |pending: &mut Option<(StreamId, u64, u32)>,
                 out: &mut Vec<Record>|
     -> Result<(), StorageError> {
        if let Some((stream, first, count)) = pending.take() {
            out.extend(journal.records_run(&stream, first, count)?);
        }
        Ok(())
    };
    for item in journal.read_global(from) {
        let (position, stream, sequence) = item?;
        if position > to {
            break;
        }
        match &mut pending {
            Some((s, first, count)) if *s == stream && *first + *count as u64 == sequence => {
                *count += 1;
            }
            _ => {
                flush(&mut pending, &mut out)?;
                pending = Some((stream, sequence, 1));
            }
        }
    }
    flush(&mut pending, &mut out)?;
    for (i, record) in out.iter().enumerate() {
        // The global index and the records agree on every position.
        assert_eq!(
            record.global_position,
            from + i as u64,
            "global order broken"
        );
    }
    Ok(out)
}

/// What the indexer shares with the engine.
#[derive(Debug)]
pub(crate) struct IndexerStatus {
    /// The global position the topic index covers.
    pub(crate) cursor: AtomicU64,
    pub(crate) error: Mutex<Option<String>>,
    /// Wakes consumers waiting for new messages: carries the cursor.
    pub(crate) moved: tokio::sync::watch::Sender<u64>,
}

/// The background indexer: a [`Follower`] of the durable global order.
#[derive(Debug)]
pub(crate) struct Indexer {
    pub(crate) status: Arc<IndexerStatus>,
    follower: Follower,
}

impl Indexer {
    pub(crate) fn start(
        writer: JournalWriter,
        catalog: Arc<TopicCatalog>,
        metrics: Arc<Metrics>,
    ) -> Result<Indexer, TopicError> {
        let cursor = writer.topic_cursor()?;
        let planner = Planner::load(&writer)?;
        let (moved, _) = tokio::sync::watch::channel(cursor);
        let status = Arc::new(IndexerStatus {
            cursor: AtomicU64::new(cursor),
            error: Mutex::new(None),
            moved,
        });
        let worker = Worker {
            catalog,
            metrics,
            status: status.clone(),
            planner,
            cursor,
        };
        let follower =
            Follower::start(writer, worker).map_err(|e| TopicError::Storage(e.into()))?;
        Ok(Indexer { status, follower })
    }

    /// Indexes everything durable, then stops the thread and waits for it. Blocking.
    pub(crate) fn drain_and_stop(&self) {
        self.follower.drain_and_stop();
    }

    /// Tells the thread to stop without waiting for it (engine dropped).
    pub(crate) fn stop_now(&self) {
        self.follower.stop_now();
    }
}

struct Worker {
    catalog: Arc<TopicCatalog>,
    metrics: Arc<Metrics>,
    status: Arc<IndexerStatus>,
    planner: Planner,
    cursor: u64,
}

impl Follow for Worker {
    type Error = TopicError;
    const NAME: &'static str = "evershard-topic-indexer";
    const BATCH_EVENTS_MAX: u64 = INDEX_BATCH_EVENTS_MAX;

    fn covered(&self) -> u64 {
        self.cursor
    }

    fn step(&mut self, writer: &JournalWriter, to: u64) -> Result<(), TopicError> {
        let records = records_between(writer, self.cursor + 1, to)?;
        let plan = self.planner.plan(writer, &self.catalog, &records)?;
        writer.write_topic_batch(self.cursor, to, &plan.new_topics, &plan.entries)?;
        self.cursor = to;
        for ((topic, event_type), n) in plan.produced {
            self.metrics
                .update(&topic, &event_type, |m| m.produced += n);
        }
        self.status.cursor.store(to, Ordering::Release);
        self.status.moved.send_replace(to);
        Ok(())
    }

    fn recover(&mut self, writer: &JournalWriter, error: &TopicError) -> bool {
        // A fresh planner: the failed batch may have half-advanced it.
        if let Ok(p) = Planner::load(writer) {
            self.planner = p;
        }
        matches!(error, TopicError::Storage(StorageError::Closed))
    }

    fn report(&self, error: Option<String>) {
        *self.status.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}
