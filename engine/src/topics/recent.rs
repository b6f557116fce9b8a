//! What the indexer wrote last, in memory, for the readers that follow it.
//!
//! A live consumer reads the entries the indexer has just written, partition by partition,
//! every few milliseconds. From sled that was, per partition and per poll, a point read and a
//! range scan of the index and a read of the topic's configuration: a third of the live
//! consumer's CPU in the throughput bench. Now the indexer hands each batch's entries here once
//! its cursor is written, and a reader whose offset lies within a partition's newest entries
//! reads them here; an older offset reads sled as before. Topic configurations never change
//! once stored, so a reader keeps each one it has read.
//!
//! Consistency: the indexer is the index's one writer, and it adds a batch here only after the
//! batch is stored. So the entries of a partition here are always a contiguous run of what sled
//! holds, ending at most where sled's end is; a reader that finds nothing new here past the
//! newest entry is woken (the indexer's `moved` watch) after the next batch is added.

use crate::journal::topics::{StoredTopic, TopicEntry, TopicRun};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

/// Runs a partition keeps here at most (its oldest entries go first): about 100 bytes each,
/// so ~100 KiB per partition written to since the engine opened. At the throughput bench's
/// rate that is the last second or so of a partition; a consumer further behind reads sled.
pub(crate) const RECENT_RUNS_PER_PARTITION_MAX: usize = 1024;

/// One index entry: its first offset and its runs (shared with the readers that take it).
pub(crate) type RecentEntry = (u64, Arc<[TopicRun]>);

/// See the module docs. Shared by the indexer and the engine's [`super::read::TopicLog`].
#[derive(Debug, Default)]
pub(crate) struct RecentIndex {
    /// Stored configurations read so far, by topic.
    configs: RwLock<HashMap<String, StoredTopic>>,
    /// The newest entries of each partition, by topic, then partition.
    partitions: RwLock<HashMap<String, HashMap<u32, Partition>>>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Consecutive entries, the last one ending at the partition's end as last stored.
    entries: VecDeque<RecentEntry>,
    runs: usize,
}

impl Partition {
    fn end(&self) -> Option<u64> {
        let (first, runs) = self.entries.back()?;
        Some(first + runs.iter().map(|r| r.count as u64).sum::<u64>())
    }
}

impl RecentIndex {
    /// A stored configuration read before.
    pub(crate) fn config(&self, topic: &str) -> Option<StoredTopic> {
        let configs = self.configs.read().unwrap_or_else(|e| e.into_inner());
        configs.get(topic).copied()
    }

    /// Keeps a stored configuration (it never changes once stored).
    pub(crate) fn keep_config(&self, topic: &str, stored: StoredTopic) {
        let mut configs = self.configs.write().unwrap_or_else(|e| e.into_inner());
        configs.entry(topic.to_owned()).or_insert(stored);
    }

    /// Adds a stored batch's entries (the indexer, after writing its cursor).
    pub(crate) fn push(&self, entries: Vec<TopicEntry>) {
        if entries.is_empty() {
            return;
        }
        let mut partitions = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            let topic = match partitions.get_mut(&entry.topic) {
                Some(t) => t,
                None => partitions.entry(entry.topic.clone()).or_default(),
            };
            let p = topic.entry(entry.partition).or_default();
            if p.end().is_some_and(|end| end != entry.first_offset) {
                // Not the continuation of what is kept (cannot happen with one writer that
                // adds every batch it stores, in order): start again from this entry rather
                // than ever answer with a gap or an overlap.
                *p = Partition::default();
            }
            p.runs += entry.runs.len();
            p.entries.push_back((entry.first_offset, entry.runs.into()));
            while p.runs > RECENT_RUNS_PER_PARTITION_MAX && p.entries.len() > 1 {
                let (_, runs) = p.entries.pop_front().expect("more than one entry");
                p.runs -= runs.len();
            }
        }
    }

    /// The kept entries of `(topic, partition)` from the one holding `from_offset` to the
    /// newest, in order (empty when `from_offset` is at or past the newest's end); `None` when
    /// `from_offset` is older than what is kept, or nothing is: read sled.
    pub(crate) fn entries_from(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
    ) -> Option<Vec<RecentEntry>> {
        let partitions = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        let p = partitions.get(topic)?.get(&partition)?;
        let (oldest, _) = p.entries.front()?;
        if from_offset < *oldest {
            return None;
        }
        // The last entry starting at or before the offset holds it (or the offset is past the
        // end, and the entries after it are none).
        let holding = p
            .entries
            .partition_point(|(first, _)| *first <= from_offset)
            - 1;
        let end = p.end().expect("not empty");
        if from_offset >= end {
            return Some(Vec::new());
        }
        Some(p.entries.range(holding..).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    //! The kept entries answer exactly the offsets they hold, stay consecutive, and stay
    //! within their bound.
    use super::*;

    fn entry(topic: &str, partition: u32, first_offset: u64, runs: u32) -> TopicEntry {
        TopicEntry {
            topic: topic.to_owned(),
            partition,
            first_offset,
            runs: (0..runs)
                .map(|i| TopicRun {
                    first_position: 2 * (first_offset + u64::from(i)) + 1,
                    count: 1,
                })
                .collect(),
        }
    }

    fn firsts(entries: Option<Vec<RecentEntry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|(f, _)| *f).collect())
    }

    #[test]
    fn answers_from_the_entry_holding_the_offset() {
        let recent = RecentIndex::default();
        assert_eq!(firsts(recent.entries_from("t", 0, 0)), None);
        recent.push(vec![entry("t", 0, 10, 5), entry("t", 1, 0, 2)]);
        recent.push(vec![entry("t", 0, 15, 5)]);
        assert_eq!(firsts(recent.entries_from("t", 0, 9)), None, "older: sled");
        assert_eq!(firsts(recent.entries_from("t", 0, 10)), Some(vec![10, 15]));
        assert_eq!(firsts(recent.entries_from("t", 0, 14)), Some(vec![10, 15]));
        assert_eq!(firsts(recent.entries_from("t", 0, 15)), Some(vec![15]));
        assert_eq!(firsts(recent.entries_from("t", 0, 19)), Some(vec![15]));
        assert_eq!(
            firsts(recent.entries_from("t", 0, 20)),
            Some(vec![]),
            "caught up"
        );
        assert_eq!(firsts(recent.entries_from("t", 1, 0)), Some(vec![0]));
        assert_eq!(firsts(recent.entries_from("t", 2, 0)), None);
        assert_eq!(firsts(recent.entries_from("u", 0, 0)), None);
    }

    #[test]
    fn a_gap_starts_the_partition_again() {
        let recent = RecentIndex::default();
        recent.push(vec![entry("t", 0, 0, 5)]);
        recent.push(vec![entry("t", 0, 7, 1)]);
        assert_eq!(firsts(recent.entries_from("t", 0, 0)), None);
        assert_eq!(firsts(recent.entries_from("t", 0, 7)), Some(vec![7]));
    }

    #[test]
    fn keeps_at_most_its_bound_of_runs_and_always_the_newest_entry() {
        let recent = RecentIndex::default();
        let per_entry = 100u32;
        let mut first = 0;
        for _ in 0..50 {
            recent.push(vec![entry("t", 0, first, per_entry)]);
            first += u64::from(per_entry);
        }
        let kept = recent.entries_from("t", 0, first - 1).unwrap();
        assert_eq!(kept.len(), 1);
        let oldest = first - (RECENT_RUNS_PER_PARTITION_MAX as u64 / 100) * 100;
        assert_eq!(firsts(recent.entries_from("t", 0, oldest - 1)), None);
        assert_eq!(
            recent.entries_from("t", 0, oldest).unwrap().len(),
            RECENT_RUNS_PER_PARTITION_MAX / 100
        );
        // One entry larger than the bound is still kept: the newest always is.
        recent.push(vec![entry(
            "t",
            0,
            first,
            2 * RECENT_RUNS_PER_PARTITION_MAX as u32,
        )]);
        assert_eq!(
            firsts(recent.entries_from("t", 0, first)),
            Some(vec![first])
        );
        assert_eq!(firsts(recent.entries_from("t", 0, first - 1)), None);
    }
}
