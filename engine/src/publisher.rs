//! Publisher cursors as the read side sees them (any build, so that the read-only CLI shows
//! them): how far each external publisher (the Kafka publisher of feature `kafka`) has
//! delivered each topic partition, and its lag.

use crate::topics::{TopicError, TopicLog};

/// One stored publisher cursor with the partition's lag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherCursor {
    /// The publisher's name (`KafkaConfig::publisher`, default `kafka`).
    pub publisher: String,
    pub topic: String,
    pub partition: u32,
    /// Every offset below it was acknowledged by the broker.
    pub next_offset: u64,
    /// The global position of the message at `next_offset - 1` (0 when none).
    pub last_global_position: u64,
    /// The partition's end offset in the store.
    pub end: u64,
    pub lag: u64,
}

/// Every publisher's cursors, with each partition's end offset and lag. Partitions a
/// publisher has not delivered anything of yet have no cursor.
pub fn publisher_cursors(log: &TopicLog) -> Result<Vec<PublisherCursor>, TopicError> {
    let mut out = Vec::new();
    for c in log.journal().publisher_cursors(None)? {
        let end = log.end_offset(&c.topic, c.partition).unwrap_or(0);
        out.push(PublisherCursor {
            lag: end.saturating_sub(c.next_offset),
            end,
            publisher: c.publisher,
            topic: c.topic,
            partition: c.partition,
            next_offset: c.next_offset,
            last_global_position: c.last_global_position,
        });
    }
    Ok(out)
}

/// A running external publisher as [`Engine::health`](crate::Engine::health) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublisherHealth {
    /// The publisher's name (`KafkaConfig::publisher`).
    pub publisher: String,
    /// Messages of its topics not yet acknowledged by the broker (the sum over partitions).
    pub lag: u64,
    /// The last round reached the broker and every message was acknowledged.
    pub connected: bool,
    /// The last error (cleared by a successful round).
    pub last_error: Option<String>,
    /// An error that stopped the publisher.
    pub fatal: Option<String>,
    /// Recovery findings that break the one-to-one mirror (see the publisher's status).
    pub anomalies: usize,
}

impl PublisherHealth {
    /// No fatal error, no anomaly, lag at most `lag_max`.
    pub fn healthy(&self, lag_max: u64) -> bool {
        self.fatal.is_none() && self.anomalies == 0 && self.lag <= lag_max
    }
}

/// What the engine asks a running publisher for its health check. `None` once it was stopped.
pub(crate) trait PublisherProbe: Send + Sync + std::fmt::Debug {
    fn probe(&self) -> Option<Result<PublisherHealth, TopicError>>;
}

/// The publishers started from an engine (weak: dropping a publisher unregisters it).
#[derive(Debug, Default)]
pub(crate) struct PublisherRegistry {
    probes: std::sync::Mutex<Vec<std::sync::Weak<dyn PublisherProbe>>>,
}

impl PublisherRegistry {
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) fn register(&self, probe: std::sync::Weak<dyn PublisherProbe>) {
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        probes.retain(|p| p.strong_count() > 0);
        probes.push(probe);
    }

    /// Every live, running publisher's health, in start order.
    pub(crate) fn health(&self) -> Result<Vec<PublisherHealth>, TopicError> {
        let live: Vec<_> = {
            let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes.retain(|p| p.strong_count() > 0);
            probes.iter().filter_map(|p| p.upgrade()).collect()
        };
        live.iter().filter_map(|p| p.probe()).collect()
    }
}
