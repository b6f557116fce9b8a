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
