//! Event metrics per topic and event type (event-architecture-kafka.md 10.1), consumer lag
//! (per group and partition) and the health check (10.2). Counters are in memory, since the
//! engine opened; lag and the dead-letter count are read from the store.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The seed's `EventMetricsSchema.metrics` for one (topic, event type).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventMetrics {
    /// Messages the indexer appended to the topic since open.
    pub produced: u64,
    /// Messages handed to consumers (polled) since open.
    pub consumed: u64,
    /// Handler attempts that failed (each failed attempt counts).
    pub failed: u64,
    /// Handler attempts that were retries (attempt 2 and later).
    pub retried: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Total handler time, in milliseconds (the seed's `processingTimeMs`; divide by
    /// `handled` for the mean).
    pub processing_time_ms: f64,
    /// Handler calls that finished (successfully or not).
    pub handled: u64,
}

/// [`EventMetrics`] of one topic and event type, with the topic's queue depth (messages not
/// yet committed by the slowest group; the seed's `queueDepth`, per topic).
#[derive(Clone, Debug, PartialEq)]
pub struct TopicMetrics {
    pub topic: String,
    pub event_type: String,
    pub metrics: EventMetrics,
    pub queue_depth: u64,
}

/// The lag of one group on one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: u32,
    /// The next offset the group will read (0 when it never committed).
    pub committed: u64,
    /// The partition's end offset (the next offset to be assigned).
    pub end: u64,
    pub lag: u64,
}

/// A consumer group's lag on every partition of the topics it committed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub partitions: Vec<PartitionLag>,
}

impl GroupLag {
    pub fn total(&self) -> u64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }
}

/// The health check of the seed's 10.2: indexer lag, consumer lag, publisher lag, dead
/// letters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// True when the indexer has no error, no running publisher has a fatal error or an
    /// anomaly, and every lag (indexer, groups, publishers) is within the given bound.
    pub healthy: bool,
    /// Durable global position minus the indexer's cursor: events committed but not yet in
    /// their topics.
    pub indexer_lag: u64,
    /// The indexer's last error, if it is stuck.
    pub indexer_error: Option<String>,
    pub consumer_lag: Vec<GroupLag>,
    /// Every running publisher started from this engine (the Kafka publisher of feature
    /// `kafka`): its lag, connection and errors. Empty when none runs.
    pub publisher_lag: Vec<crate::publisher::PublisherHealth>,
    /// Messages in the dead-letter topic.
    pub dead_letters: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    by_topic_type: Mutex<BTreeMap<(String, String), EventMetrics>>,
}

impl Metrics {
    pub(crate) fn update(&self, topic: &str, event_type: &str, f: impl FnOnce(&mut EventMetrics)) {
        let mut map = self.by_topic_type.lock().unwrap_or_else(|e| e.into_inner());
        // Look up by reference first: the common case allocates nothing.
        if let Some(m) = map.get_mut(&(topic.to_owned(), event_type.to_owned())) {
            f(m);
            return;
        }
        f(map
            .entry((topic.to_owned(), event_type.to_owned()))
            .or_default());
    }

    pub(crate) fn record_handled(
        &self,
        topic: &str,
        event_type: &str,
        elapsed: Duration,
        attempt: u32,
        ok: bool,
    ) {
        self.update(topic, event_type, |m| {
            m.handled += 1;
            m.processing_time_ms += elapsed.as_secs_f64() * 1000.0;
            if attempt > 1 {
                m.retried += 1;
            }
            if !ok {
                m.failed += 1;
            }
        });
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<(String, String), EventMetrics> {
        self.by_topic_type
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
