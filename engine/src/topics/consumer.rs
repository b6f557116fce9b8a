//! Consumer groups over the embedded topic log.
//!
//! A group's committed offsets (the next offset to read, per partition) are stored in the `z`
//! keyspace and made durable (flush + fdatasync) by `commit`; a restarted consumer resumes
//! there. The consumers of one group on one topic in this process split the partitions
//! round-robin by join order (partition p → member p mod n); a join or a leave bumps the
//! group's generation and every member re-reads its assignment on its next poll or commit.
//! A partition changes hands the way Kafka's cooperative rebalance moves it: its holder
//! gives it up at its next poll or commit (so the messages it holds are its own to finish;
//! `commit` commits them first; `poll` comes back empty once before giving up a partition
//! with progress not committed, so that its caller can), and only then does the member it
//! goes to start reading it,
//! from the group's position there. Two members never read one partition at once, and only
//! its holder commits it. (Before 2026-11-28 the new member started at once: while the old
//! one finished a batch both handled the partition, out of order, and the old one's commits
//! could move the group's offset back.) A member that keeps a partition and never polls or
//! commits again holds it until it is dropped. Progress not committed on a partition that
//! moves is redelivered to its new owner (at-least-once).
//! Groups are independent. A waiting `poll` wakes on the indexer's notification, not by
//! sleeping in a loop.
//!
//! Where a partition starts is decided once per group per partition while the group has
//! members in this process (its *start position*, from the members' [`StartFrom`]), and kept
//! in the group's in-process state with every commit after it: a member that acquires a
//! partition in a rebalance takes it where the group stands, never from a default. (Before,
//! a partition moved to a member after that member's first assignment started from the
//! durable committed offset or 0: a group started `StartFrom::Time` with four members read
//! the whole history of the partitions that moved while the members joined.) A start
//! position not committed yet is committed by the next `commit`, so that the group's lag and
//! `evershard topics` count from it even when no message was read there.

use super::index::IndexerStatus;
use super::metrics::Metrics;
use super::read::ReadState;
use super::{Message, TopicCatalog, TopicError, TopicLog, DEFAULT_PARTITIONS};
use crate::journal::JournalWriter;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a group starts reading a partition when it (re)starts in this process: the start
/// position is decided by the first member that is assigned the partition after the group
/// had no member, and every member that takes the partition later (a rebalance) continues
/// from the group's position (its start, or a later commit), whatever its own `StartFrom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The group's committed offset; offset 0 where it never committed. The default.
    #[default]
    Committed,
    /// Offset 0 of every partition.
    Beginning,
    /// This offset of every partition (clamped to its end).
    Offset(u64),
    /// The first message at or after this time, per partition.
    Time(DateTime<Utc>),
}

/// How a consumer starts and reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerOptions {
    pub start: StartFrom,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            start: StartFrom::Committed,
        }
    }
}

/// Event ids one group remembers as handled (for subscriptions with deduplication).
const HANDLED_IDS_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct GroupState {
    members: Vec<u64>,
    generation: u64,
    /// Where the group stands per partition in this process: the start position decided by
    /// the first member assigned the partition, then every offset a member committed. Cleared
    /// when the last member leaves, so that a group started afresh applies its `StartFrom`.
    positions: HashMap<u32, u64>,
    /// Recently handled event ids (bounded), shared by the group's in-process members.
    pub(crate) handled: HandledIds,
    /// The member that holds each partition now: it alone reads and commits it, until it
    /// gives it up (see the module docs).
    holders: HashMap<u32, u64>,
}

#[derive(Debug, Default)]
pub(crate) struct HandledIds {
    set: HashSet<uuid::Uuid>,
    order: VecDeque<uuid::Uuid>,
}

impl HandledIds {
    pub(crate) fn contains(&self, id: &uuid::Uuid) -> bool {
        self.set.contains(id)
    }
    pub(crate) fn insert(&mut self, id: uuid::Uuid) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > HANDLED_IDS_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// What the engine's topic side shares: the log, the indexer's status, the groups.
#[derive(Debug)]
pub(crate) struct TopicsRuntime {
    pub(crate) writer: JournalWriter,
    pub(crate) log: TopicLog,
    pub(crate) catalog: Arc<TopicCatalog>,
    pub(crate) status: Arc<IndexerStatus>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) groups: Mutex<HashMap<(String, String), GroupState>>,
    pub(crate) generations: tokio::sync::watch::Sender<u64>,
    /// External publishers (the Kafka publisher) started from this engine, for `health`.
    pub(crate) publishers: crate::publisher::PublisherRegistry,
    next_member: AtomicU64,
}

impl TopicsRuntime {
    pub(crate) fn new(
        writer: JournalWriter,
        catalog: Arc<TopicCatalog>,
        status: Arc<IndexerStatus>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let log = TopicLog::indexed(
            writer.reader().clone(),
            catalog.clone(),
            status.recent.clone(),
        );
        Self {
            writer,
            log,
            catalog,
            status,
            metrics,
            groups: Mutex::new(HashMap::new()),
            generations: tokio::sync::watch::channel(0).0,
            publishers: Default::default(),
            next_member: AtomicU64::new(1),
        }
    }

    /// Partitions of a topic: stored, or what the indexer will create it with.
    pub(crate) fn partitions(&self, topic: &str) -> Result<u32, TopicError> {
        match self.log.stored_topic(topic) {
            Ok(stored) => Ok(stored.partitions),
            Err(TopicError::UnknownTopic { .. }) => Ok(self
                .catalog
                .configured_topics()
                .find(|c| c.name == topic)
                .map(|c| c.partitions)
                .unwrap_or(DEFAULT_PARTITIONS)),
            Err(e) => Err(e),
        }
    }

    fn join(&self, group: &str, topic: &str) -> u64 {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let state = groups
            .entry((group.to_owned(), topic.to_owned()))
            .or_default();
        state.members.push(id);
        state.generation += 1;
        drop(groups);
        self.generations.send_modify(|g| *g += 1);
        id
    }

    fn leave(&self, group: &str, topic: &str, member: u64) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = groups.get_mut(&(group.to_owned(), topic.to_owned())) {
            state.members.retain(|m| *m != member);
            state.holders.retain(|_, m| *m != member);
            state.generation += 1;
            if state.members.is_empty() {
                // A group started afresh applies its `StartFrom`, and redelivers what it
                // reads again.
                state.positions.clear();
                state.handled = HandledIds::default();
            }
        }
        drop(groups);
        self.generations.send_modify(|g| *g += 1);
    }

    /// (generation, partitions assigned to `member`).
    fn assignment(
        &self,
        group: &str,
        topic: &str,
        member: u64,
        partitions: u32,
    ) -> (u64, Vec<u32>) {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = groups.get(&(group.to_owned(), topic.to_owned())) else {
            return (0, Vec::new());
        };
        let Some(index) = state.members.iter().position(|m| *m == member) else {
            return (state.generation, Vec::new());
        };
        let n = state.members.len() as u32;
        let mine = (0..partitions).filter(|p| p % n == index as u32).collect();
        (state.generation, mine)
    }

    /// Moves what `member` holds toward `wanted` (its assignment): gives up the partitions
    /// it holds and is not assigned any more (the group's position there stays its last
    /// commit), and takes the assigned ones nobody holds. A partition another member still
    /// holds is taken at a later call, once that member gave it up: a give-up bumps the
    /// generation, which wakes the waiting members. Returns the partitions it holds.
    fn settle(&self, group: &str, topic: &str, member: u64, wanted: &[u32]) -> Vec<u32> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = groups.get_mut(&(group.to_owned(), topic.to_owned())) else {
            return Vec::new();
        };
        let before = state.holders.len();
        state
            .holders
            .retain(|p, m| *m != member || wanted.contains(p));
        let gave_up = state.holders.len() < before;
        let mut held = Vec::with_capacity(wanted.len());
        for p in wanted {
            let holder = state.holders.entry(*p).or_insert(member);
            if *holder == member {
                held.push(*p);
            }
        }
        if gave_up {
            state.generation += 1;
        }
        drop(groups);
        if gave_up {
            self.generations.send_modify(|g| *g += 1);
        }
        held
    }

    /// Of `offsets`, those of partitions `member` holds: only a partition's holder commits
    /// it.
    fn held_only(
        &self,
        group: &str,
        topic: &str,
        member: u64,
        offsets: Vec<(u32, u64)>,
    ) -> Vec<(u32, u64)> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = groups.get(&(group.to_owned(), topic.to_owned())) else {
            return Vec::new();
        };
        offsets
            .into_iter()
            .filter(|(p, _)| state.holders.get(p) == Some(&member))
            .collect()
    }

    /// The group's generation (0 for a group without members).
    fn assignment_generation(&self, group: &str, topic: &str) -> u64 {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .get(&(group.to_owned(), topic.to_owned()))
            .map_or(0, |state| state.generation)
    }

    /// The group's position on a partition in this process, if one was decided.
    fn group_position(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .get(&(group.to_owned(), topic.to_owned()))
            .and_then(|state| state.positions.get(&partition).copied())
    }

    /// Records `offset` as the group's start position on a partition unless a member decided
    /// one meanwhile; returns the group's position.
    fn decide_position(&self, group: &str, topic: &str, partition: u32, offset: u64) -> u64 {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let state = groups
            .entry((group.to_owned(), topic.to_owned()))
            .or_default();
        *state.positions.entry(partition).or_insert(offset)
    }

    /// Records durably committed offsets as the group's positions.
    fn committed_positions(&self, group: &str, topic: &str, offsets: &[(u32, u64)]) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = groups.get_mut(&(group.to_owned(), topic.to_owned())) {
            state.positions.extend(offsets.iter().copied());
        }
    }

    pub(crate) fn committed(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<HashMap<u32, u64>, TopicError> {
        // Checked here, not only where a consumer is made: the keys are built from the names
        // (a length byte each), so an empty or overlong one would read another group's.
        for name in [group, topic] {
            if !super::valid_name(name) {
                return Err(TopicError::InvalidName {
                    name: name.to_owned(),
                });
            }
        }
        Ok(self
            .writer
            .committed_offsets(Some(group))?
            .into_iter()
            .filter(|(_, t, _, _)| t == topic)
            .map(|(_, _, p, o)| (p, o))
            .collect())
    }
}

/// Messages a poll makes room for before it reads (more grow the vector as needed).
const POLL_RESERVE_MESSAGES: usize = 1024;
/// Messages a poll reads from one partition before the next partition's turn (see
/// [`Consumer::try_poll`]).
const PARTITION_TURN_MESSAGES_MAX: usize = 256;
/// The longest a poll waits (a year), for a timeout too long for a clock's `Instant`.
const POLL_WAIT_SECS_MAX: u64 = 365 * 24 * 3600;

/// A member of a consumer group reading one topic. Dropping it leaves the group (its
/// partitions move to the other members); uncommitted progress is then redelivered.
#[derive(Debug)]
pub struct Consumer {
    rt: Arc<TopicsRuntime>,
    group: String,
    topic: String,
    member: u64,
    start: StartFrom,
    /// For an offset or a time start: the journal's acknowledged position when the consumer
    /// was made (the indexer reaches it after the next sync). Such a start is decided only
    /// once the topic index covers it, so that an index still catching up (just opened on a
    /// long journal) is not taken for the topic's whole contents: a partition not indexed
    /// yet would have started at 0.
    start_indexed_through: u64,
    generation: u64,
    /// Next offset to read, per assigned partition.
    positions: BTreeMap<u32, u64>,
    /// The durably committed offset of each assigned partition as this member last knew it
    /// (read when it acquired the partition, then its own commits): a position that differs
    /// is not committed yet.
    durable: BTreeMap<u32, u64>,
    /// Round-robin start among the assigned partitions.
    turn: usize,
    moved: tokio::sync::watch::Receiver<u64>,
    generations: tokio::sync::watch::Receiver<u64>,
    /// What its reads learned, kept for the next (see `TopicLog::read_with`).
    read_state: ReadState,
    /// The group generation for which `poll` already came back empty once before giving a
    /// partition up with progress not committed (see [`Consumer::poll`]).
    offered: Option<u64>,
}

impl Consumer {
    pub(crate) fn new(
        rt: Arc<TopicsRuntime>,
        group: &str,
        topic: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, TopicError> {
        for name in [group, topic] {
            if !super::valid_name(name) {
                return Err(TopicError::InvalidName {
                    name: name.to_owned(),
                });
            }
        }
        let moved = rt.status.moved.subscribe();
        let generations = rt.generations.subscribe();
        let start_indexed_through = match options.start {
            StartFrom::Offset(_) | StartFrom::Time(_) => rt.writer.durable_position(),
            StartFrom::Committed | StartFrom::Beginning => 0,
        };
        let member = rt.join(group, topic);
        Ok(Consumer {
            rt,
            group: group.to_owned(),
            topic: topic.to_owned(),
            member,
            start: options.start,
            start_indexed_through,
            generation: u64::MAX,
            positions: BTreeMap::new(),
            durable: BTreeMap::new(),
            turn: 0,
            moved,
            generations,
            read_state: ReadState::default(),
            offered: None,
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions this consumer reads now (after its last poll's rebalance check).
    pub fn assignment(&self) -> Vec<u32> {
        self.positions.keys().copied().collect()
    }

    /// The next offset this consumer reads on a partition it owns.
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.positions.get(&partition).copied()
    }

    /// Moves the read position of an owned partition.
    pub fn seek(&mut self, partition: u32, offset: u64) {
        if let Some(p) = self.positions.get_mut(&partition) {
            *p = offset;
        }
    }

    /// True when a position of an owned partition is not durably committed (a start
    /// position no message moved yet, or progress since the last commit).
    pub fn has_uncommitted(&self) -> bool {
        self.positions
            .iter()
            .any(|(p, o)| self.durable.get(p) != Some(o))
    }

    /// Re-reads the assignment if the group changed; a partition new to this member starts
    /// at the group's position, or — the first time the group reads it in this process — at
    /// the start position `start` names (see the module docs).
    fn refresh(&mut self) -> Result<(), TopicError> {
        let partitions = self.rt.partitions(&self.topic)?;
        let (generation, wanted) =
            self.rt
                .assignment(&self.group, &self.topic, self.member, partitions);
        if generation == self.generation && wanted.len() == self.positions.len() {
            return Ok(());
        }
        let mine = self
            .rt
            .settle(&self.group, &self.topic, self.member, &wanted);
        // What `settle` gave up is gone now, whatever fails below: kept, a stale position
        // would come back with the partition (the messages another member handled meanwhile
        // read again, its commit moved back: found by review, 2026-11-28).
        self.positions.retain(|p, _| mine.contains(p));
        self.durable.retain(|p, _| mine.contains(p));
        // The durable offsets are read only when a partition is new to this member.
        let committed = if mine.iter().any(|p| !self.positions.contains_key(p)) {
            self.rt.committed(&self.group, &self.topic)?
        } else {
            HashMap::new()
        };
        let mut positions = BTreeMap::new();
        let mut durable = BTreeMap::new();
        for p in mine {
            if let Some(o) = self.positions.get(&p) {
                positions.insert(p, *o);
                if let Some(d) = self.durable.get(&p) {
                    durable.insert(p, *d);
                }
                continue;
            }
            let offset = match self.rt.group_position(&self.group, &self.topic, p) {
                Some(o) => o,
                // Not positioned yet: the partition reads nothing until the index covers the
                // start (a poll waits on the indexer's progress, then decides it).
                None if self.rt.status.cursor.load(Ordering::Acquire)
                    < self.start_indexed_through =>
                {
                    // An index that cannot move any more never will: say so, not wait.
                    if self.rt.writer.is_poisoned() {
                        return Err(TopicError::Storage(crate::error::StorageError::Poisoned));
                    }
                    continue;
                }
                None => {
                    let start = self.start_offset(p, self.start, &committed)?;
                    self.rt.decide_position(&self.group, &self.topic, p, start)
                }
            };
            positions.insert(p, offset);
            if let Some(d) = committed.get(&p) {
                durable.insert(p, *d);
            }
        }
        self.positions = positions;
        self.durable = durable;
        self.generation = generation;
        Ok(())
    }

    fn start_offset(
        &self,
        partition: u32,
        start: StartFrom,
        committed: &HashMap<u32, u64>,
    ) -> Result<u64, TopicError> {
        let exists = || self.rt.log.topic(&self.topic).is_ok();
        Ok(match start {
            StartFrom::Committed => committed.get(&partition).copied().unwrap_or(0),
            StartFrom::Beginning => 0,
            StartFrom::Offset(o) if exists() => {
                o.min(self.rt.log.end_offset(&self.topic, partition)?)
            }
            StartFrom::Offset(_) => 0,
            StartFrom::Time(t) if exists() => {
                self.rt.log.offset_for_time(&self.topic, partition, t)?
            }
            StartFrom::Time(_) => 0,
        })
    }

    /// The messages available now, at most `max`, across the assigned partitions (each
    /// partition in offset order; the partitions' messages interleave). Does not wait.
    pub fn try_poll(&mut self, max: usize) -> Result<Vec<Message>, TopicError> {
        self.refresh()?;
        if self.positions.is_empty() || max == 0 || self.rt.log.stored_topic(&self.topic).is_err() {
            return Ok(Vec::new());
        }
        let partitions: Vec<u32> = self.positions.keys().copied().collect();
        // Room for a typical batch at once: grown from empty, the vector was reallocated
        // (fresh pages each time past a few hundred messages) up to a tenth of a poll's CPU.
        let mut out = Vec::with_capacity(max.min(POLL_RESERVE_MESSAGES));
        // The partitions take turns of a few hundred messages, not one whole turn each: their
        // messages interleave in the journal's global order, so partitions read side by
        // side meet the same frames of the log while the reader's cache holds them. Read one
        // after the other, a poll of 8,192 messages per partition read each frame once per
        // partition (a third of a catch-up read's CPU went into reading, checking and
        // copying frames eight times: perf, 2026-11-28).
        // Partitions that gave less than their turn asked: at their end for this poll.
        let mut ended = vec![false; partitions.len()];
        while ended.contains(&false) {
            for i in 0..partitions.len() {
                let at = (self.turn + i) % partitions.len();
                if ended[at] {
                    continue;
                }
                let p = partitions[at];
                let from = self.positions[&p];
                let before = out.len();
                let room = (max - out.len()).min(PARTITION_TURN_MESSAGES_MAX);
                self.rt.log.read_with(
                    &mut self.read_state,
                    &self.topic,
                    p,
                    from,
                    room,
                    &mut out,
                )?;
                if out.len() > before {
                    self.positions.insert(p, out[out.len() - 1].offset + 1);
                }
                if out.len() >= max {
                    ended.fill(true);
                    break;
                }
                ended[at] = out.len() - before < room;
            }
        }
        self.turn = self.turn.wrapping_add(1);
        // Per event type, by the header's bytes (a UTF-8 check per type, not per message). A
        // topic carries a handful of types: a list searched from the type met last beats a
        // hash map, whose SipHash per message was a fiftieth of a catch-up read.
        let mut counts: Vec<(&[u8], &str, u64)> = Vec::new();
        let mut last = 0;
        for m in &out {
            let bytes = m.event_type_bytes();
            if counts.get(last).is_none_or(|c| c.0 != bytes) {
                last = match counts.iter().position(|c| c.0 == bytes) {
                    Some(i) => i,
                    None => {
                        counts.push((bytes, m.event_type(), 0));
                        counts.len() - 1
                    }
                };
            }
            counts[last].2 += 1;
        }
        for (_, event_type, n) in counts {
            self.rt
                .metrics
                .update(&self.topic, event_type, |m| m.consumed += n);
        }
        Ok(out)
    }

    /// Up to `max` messages; waits up to `timeout` for the first one to arrive (woken by the
    /// indexer when new messages are indexed, or by a rebalance). Empty on timeout.
    pub async fn poll(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Message>, TopicError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // A timeout past what an `Instant` can hold (`Duration::MAX` for "for ever") waits
        // as long as one can: the sum panicked (found by review, 2026-11-28).
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(POLL_WAIT_SECS_MAX));
        loop {
            // Mark the current values seen before reading, so a change after the read wakes us.
            self.moved.borrow_and_update();
            self.generations.borrow_and_update();
            // A partition that moves away with progress not committed: come back empty once
            // first, so that a caller that commits (a subscription does) moves it with its
            // progress; the next poll gives it up either way.
            if self.hand_off_pending()? {
                return Ok(Vec::new());
            }
            let batch = self.try_poll(max)?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            tokio::select! {
                changed = self.moved.changed() => {
                    if changed.is_err() {
                        return Err(TopicError::ShuttingDown);
                    }
                }
                _ = self.generations.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    /// Durably commits the current positions of the owned partitions (flush + fdatasync
    /// before it returns): a restarted member of the group resumes there. Only the positions
    /// not durably committed yet are written (see [`Consumer::has_uncommitted`]); when there
    /// are none, nothing is written and it returns at once.
    pub async fn commit(&mut self) -> Result<(), TopicError> {
        // What this member read is its to commit: it holds its partitions until it gives
        // them up, which it does right after (a partition assigned to another member moves
        // with its progress committed, not redelivered).
        let offsets: Vec<(u32, u64)> = self
            .positions
            .iter()
            .filter(|(p, o)| self.durable.get(p) != Some(o))
            .map(|(p, o)| (*p, *o))
            .collect();
        self.commit_offsets(offsets).await?;
        // The commit is done: a failure to re-read the assignment now is met again, and
        // reported, by the next poll.
        if let Err(e) = self.refresh() {
            tracing::debug!(group = %self.group, topic = %self.topic, error = %e, "after a commit: the assignment could not be re-read");
        }
        Ok(())
    }

    /// The member's assignment now, when its group changed since the member last looked
    /// (its next poll or commit gives up what is not in it).
    pub(crate) fn reassigned(&self) -> Result<Option<Vec<u32>>, TopicError> {
        let partitions = self.rt.partitions(&self.topic)?;
        let (generation, wanted) =
            self.rt
                .assignment(&self.group, &self.topic, self.member, partitions);
        Ok((generation != self.generation).then_some(wanted))
    }

    /// [`Consumer::reassigned`], asked only when some group changed since the last poll (a
    /// check cheap enough to make before each message a subscription hands over).
    pub(crate) fn reassigned_since_poll(&self) -> Result<Option<Vec<u32>>, TopicError> {
        if !self.generations.has_changed().unwrap_or(true) {
            return Ok(None);
        }
        self.reassigned()
    }

    /// Whether the group moved a partition away from this member while its progress there
    /// is not committed, and `poll` has not yet come back empty for that change.
    fn hand_off_pending(&mut self) -> Result<bool, TopicError> {
        let Some(wanted) = self.reassigned()? else {
            return Ok(false);
        };
        let generation = self.rt.assignment_generation(&self.group, &self.topic);
        if self.offered == Some(generation) {
            return Ok(false);
        }
        let losing = self
            .positions
            .iter()
            .any(|(p, o)| !wanted.contains(p) && self.durable.get(p) != Some(o));
        if losing {
            self.offered = Some(generation);
        }
        Ok(losing)
    }

    pub(crate) async fn commit_offsets(
        &mut self,
        offsets: Vec<(u32, u64)>,
    ) -> Result<(), TopicError> {
        // A member that gave a partition up commits nothing there: its new holder does.
        let offsets = self
            .rt
            .held_only(&self.group, &self.topic, self.member, offsets);
        if offsets.is_empty() {
            return Ok(());
        }
        let writer = self.rt.writer.clone();
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let written = offsets.clone();
        tokio::task::spawn_blocking(move || writer.commit_offsets(&group, &topic, &written))
            .await
            .map_err(|_| TopicError::ShuttingDown)??;
        self.rt
            .committed_positions(&self.group, &self.topic, &offsets);
        for (p, o) in offsets {
            if self.positions.contains_key(&p) {
                self.durable.insert(p, o);
            }
        }
        Ok(())
    }

    pub(crate) fn runtime(&self) -> &Arc<TopicsRuntime> {
        &self.rt
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.rt.leave(&self.group, &self.topic, self.member);
    }
}
