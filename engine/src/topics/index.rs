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
//! new topic configs and entries, then the cursor, which commits it (entries a failed or
//! crashed batch left past the cursor are trimmed before the next plan).

use super::metrics::Metrics;
use super::recent::RecentIndex;
use super::{valid_name, TopicCatalog, TopicConfig, TopicError, PARTITIONS_MAX};
use crate::error::StorageError;
use crate::follower::{Follow, Follower};
use crate::journal::topics::{StoredTopic, TopicEntry, TopicRun};
use crate::journal::{Journal, JournalWriter, StreamId};
use fxhash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Events one indexer batch covers at most.
pub(crate) const INDEX_BATCH_EVENTS_MAX: u64 = 16_384;

/// Routing state: stored topics and the next offset of every partition touched (by topic,
/// then partition: looked up by `&str`, with no key built per event).
///
/// Its maps hash with FxHash, not SipHash: an event looks up five of them (its type's
/// topics, the topic, its partition's entry, the produced counts), which made SipHash about
/// a third of the indexer's CPU; their keys are topic and type names the application chose,
/// so there is no untrusted key to defend against flooding.
#[derive(Debug, Clone)]
pub(crate) struct Planner {
    pub(crate) topics: HashMap<String, StoredTopic>,
    next: HashMap<String, HashMap<u32, u64>>,
    /// The topics of each (aggregate type, event type) known by type, as the catalog answered
    /// (it does not change while a planner lives): asked once per type, not per event — the
    /// catalog builds a `Vec` and a `TopicConfig` (its name a `String`) per answer.
    by_type: HashMap<String, HashMap<String, Option<Targets>>>,
    /// The stored cursor when the planner was loaded: a partition it has not planned yet
    /// starts at its stored end at this cursor (see [`Journal::partition_end_at`]).
    cursor: u64,
}

/// The topics one event goes to (shared: the planner hands out the ones it remembers).
type Targets = Arc<[TopicConfig]>;

/// One planned batch.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) new_topics: Vec<(String, StoredTopic)>,
    pub(crate) entries: Vec<TopicEntry>,
    /// Messages per topic and event type, for the `produced` metric.
    pub(crate) produced: HashMap<String, HashMap<String, u64>>,
    /// The entry of each (topic, partition) in `entries`.
    slots: HashMap<String, HashMap<u32, usize>>,
}

/// What the planner needs of one event, borrowed from its stored bytes (its topics come
/// separately: from its type, or from its decoded record when they depend on its payload).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Routed<'a> {
    pub(crate) aggregate_id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) global_position: u64,
}

impl Planner {
    pub(crate) fn load(journal: &Journal) -> Result<Planner, StorageError> {
        Ok(Planner {
            topics: journal.stored_topics()?.into_iter().collect(),
            next: HashMap::default(),
            by_type: HashMap::default(),
            cursor: journal.topic_cursor()?,
        })
    }

    /// [`TopicCatalog::targets_by_type`], remembered (see `by_type`).
    fn targets_by_type(
        &mut self,
        catalog: &TopicCatalog,
        aggregate_type: &str,
        event_type: &str,
    ) -> Option<Targets> {
        if let Some(known) = self
            .by_type
            .get(aggregate_type)
            .and_then(|types| types.get(event_type))
        {
            return known.clone();
        }
        let targets = catalog
            .targets_by_type(aggregate_type, event_type)
            .map(Arc::from);
        self.by_type
            .entry(aggregate_type.to_owned())
            .or_default()
            .insert(event_type.to_owned(), targets.clone());
        targets
    }

    /// The next offset of a partition: as planned by the batches before, or the stored end.
    fn next_offset(
        &mut self,
        journal: &Journal,
        topic: &str,
        partition: u32,
    ) -> Result<u64, StorageError> {
        if let Some(n) = self.next.get(topic).and_then(|p| p.get(&partition)) {
            return Ok(*n);
        }
        let end = journal.partition_end_at(topic, partition, self.cursor)?;
        self.next
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, end);
        Ok(end)
    }

    /// Moves each partition's next offset past the batch's entries.
    fn finish(&mut self, plan: &Plan) {
        for entry in &plan.entries {
            let count: u64 = entry.runs.iter().map(|r| r.count as u64).sum();
            let next = self.next.entry(entry.topic.clone()).or_default();
            next.insert(entry.partition, entry.first_offset + count);
        }
    }

    /// Routes one event (the next global position after the previous one) to `targets` and
    /// assigns its offsets.
    fn add(
        &mut self,
        journal: &Journal,
        plan: &mut Plan,
        event: Routed<'_>,
        targets: &[TopicConfig],
    ) -> Result<(), TopicError> {
        for target in targets {
            let topic = self.topic(target, plan)?;
            let partition = super::partition_for(event.aggregate_id, topic.partitions);
            let name = target.name.as_str();
            let slot = match plan.slots.get(name).and_then(|p| p.get(&partition)) {
                Some(i) => *i,
                None => {
                    let first_offset = self.next_offset(journal, name, partition)?;
                    plan.entries.push(TopicEntry {
                        topic: target.name.clone(),
                        partition,
                        first_offset,
                        runs: Vec::new(),
                    });
                    let i = plan.entries.len() - 1;
                    plan.slots
                        .entry(target.name.clone())
                        .or_default()
                        .insert(partition, i);
                    i
                }
            };
            // The partition's next offset moves in `finish`, once per batch.
            extend_runs(&mut plan.entries[slot].runs, &event);
            let per_type = match plan.produced.get_mut(name) {
                Some(t) => t,
                None => plan.produced.entry(target.name.clone()).or_default(),
            };
            match per_type.get_mut(event.event_type) {
                Some(n) => *n += 1,
                None => {
                    per_type.insert(event.event_type.to_owned(), 1);
                }
            }
        }
        Ok(())
    }

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

/// Appends the event's position to its partition's runs: a run grows while the partition's
/// events are consecutive in the global order (one aggregate's command, or a stretch where
/// every event routes here).
fn extend_runs(runs: &mut Vec<TopicRun>, event: &Routed<'_>) {
    if let Some(last) = runs.last_mut() {
        if last.first_position + u64::from(last.count) == event.global_position
            && last.count < u32::MAX
        {
            last.count += 1;
            return;
        }
    }
    runs.push(TopicRun {
        first_position: event.global_position,
        count: 1,
    });
}

/// Plans the events at global positions `from..=to`, in order: each record checked (CRC —
/// on the segment log its frame's —, place) once and routed from its stored bytes (see [`Journal::visit_global`]). A record is
/// decoded (and, if encrypted, opened) only when its topics depend on its payload — for the
/// derived events, never: before, every event was decoded into a `Record` (its strings and
/// payload copied, an encrypted one decrypted) to read its type.
pub(crate) fn plan_between(
    journal: &Journal,
    catalog: &TopicCatalog,
    planner: &mut Planner,
    from: u64,
    to: u64,
) -> Result<Plan, TopicError> {
    let mut plan = Plan::default();
    let mut position = from;
    journal.visit_global(from, to, |view, bytes| -> Result<(), TopicError> {
        assert_eq!(view.global_position, position, "global order broken");
        position += 1;
        let render = |source| TopicError::Render {
            position: view.global_position,
            source,
        };
        let targets: Targets =
            match planner.targets_by_type(catalog, view.aggregate_type, view.event_type) {
                Some(targets) => targets,
                None => {
                    let stream = StreamId::new(view.aggregate_type, view.aggregate_id);
                    let record = journal.record_for_topic(&stream, view.sequence, bytes)?;
                    catalog.targets(&record).map_err(render)?.into()
                }
            };
        let event = Routed {
            aggregate_id: view.aggregate_id,
            event_type: view.event_type,
            global_position: view.global_position,
        };
        planner.add(journal, &mut plan, event, &targets)
    })?;
    planner.finish(&plan);
    Ok(plan)
}

/// What the indexer shares with the engine.
#[derive(Debug)]
pub(crate) struct IndexerStatus {
    /// The global position the topic index covers.
    pub(crate) cursor: AtomicU64,
    pub(crate) error: Mutex<Option<String>>,
    /// Wakes consumers waiting for new messages: carries the cursor.
    pub(crate) moved: tokio::sync::watch::Sender<u64>,
    /// The entries of the batches stored last, for the readers that follow the indexer.
    pub(crate) recent: Arc<RecentIndex>,
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
        writer.trim_topic_index()?;
        let planner = Planner::load(&writer)?;
        let (moved, _) = tokio::sync::watch::channel(cursor);
        let status = Arc::new(IndexerStatus {
            cursor: AtomicU64::new(cursor),
            error: Mutex::new(None),
            moved,
            recent: Arc::default(),
        });
        let worker = Worker {
            catalog,
            metrics,
            status: status.clone(),
            planner,
            cursor,
            fresh: true,
        };
        let follower =
            Follower::start(writer, worker).map_err(|e| TopicError::Storage(e.into()))?;
        Ok(Indexer { status, follower })
    }

    /// Indexes everything durable, then stops the thread and waits for it. Blocking.
    pub(crate) fn drain_and_stop(&self) {
        self.follower.drain_and_stop();
    }

    /// See [`Follower::hold_for_tests`].
    #[cfg(feature = "fault-injection")]
    pub(crate) fn hold_for_tests(&self, held: bool) {
        self.follower.hold_for_tests(held);
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
    /// False after a failed step, until the next one has trimmed the index and loaded a
    /// fresh planner.
    fresh: bool,
}

impl Follow for Worker {
    type Error = TopicError;
    const NAME: &'static str = "evershard-topic-indexer";
    const BATCH_EVENTS_MAX: u64 = INDEX_BATCH_EVENTS_MAX;
    const STEP_EVENTS_MIN: u64 = 4096;
    const STEP_WAIT_MS: u64 = 5;

    fn covered(&self) -> u64 {
        self.cursor
    }

    fn step(&mut self, writer: &JournalWriter, to: u64) -> Result<(), TopicError> {
        if !self.fresh {
            // A fresh planner over an index without what a failed batch wrote past the
            // cursor (its entries would otherwise stay inside the ones planned again).
            writer.trim_topic_index()?;
            self.planner = Planner::load(writer)?;
            self.fresh = true;
        }
        let plan = plan_between(
            writer,
            &self.catalog,
            &mut self.planner,
            self.cursor + 1,
            to,
        )?;
        writer.write_topic_batch(self.cursor, to, &plan.new_topics, &plan.entries)?;
        self.cursor = to;
        // Stored: the readers that follow may take the entries from memory (before `moved`
        // wakes them).
        self.status.recent.push(plan.entries);
        for (topic, per_type) in plan.produced {
            for (event_type, n) in per_type {
                self.metrics
                    .update(&topic, &event_type, |m| m.produced += n);
            }
        }
        self.status.cursor.store(to, Ordering::Release);
        self.status.moved.send_replace(to);
        Ok(())
    }

    fn recover(&mut self, _writer: &JournalWriter, error: &TopicError) -> bool {
        // The next step starts over: the failed batch may have half-advanced the planner
        // and left entries past the cursor.
        self.fresh = false;
        matches!(error, TopicError::Storage(StorageError::Closed))
    }

    fn report(&self, error: Option<String>) {
        *self.status.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}
