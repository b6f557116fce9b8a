//! The publisher-cursor keyspace: how far an external publisher (the Kafka publisher,
//! `crate::kafka`) has delivered each topic partition. Only the journal touches sled, so the
//! bytes live here.
//!
//! ```text
//! k | publisher_len u8 | publisher | topic_len u8 | topic | partition u32 BE
//!     -> next_offset u64 LE | last_global_position u64 LE
//! ```
//!
//! `next_offset` is the first offset of the partition not yet acknowledged by the broker;
//! `last_global_position` is the global position of the message at `next_offset - 1` (0 when
//! `next_offset` is 0). Written once per delivered batch (all partitions the batch moved, in
//! one sled batch), never per event, and not synced: the publisher recovers a cursor that a
//! crash took back from the broker itself (see docs/design.md).

use super::{Journal, JournalWriter};
use crate::error::{Corruption, StorageError};

pub const PUBLISHER_CURSORS: u8 = b'k';

/// One stored cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCursor {
    pub publisher: String,
    pub topic: String,
    pub partition: u32,
    pub next_offset: u64,
    pub last_global_position: u64,
}

fn name_part(out: &mut Vec<u8>, name: &str) {
    debug_assert!(!name.is_empty() && name.len() <= 255);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // written by the Kafka publisher
pub fn cursor_key(publisher: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = vec![PUBLISHER_CURSORS];
    name_part(&mut key, publisher);
    name_part(&mut key, topic);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn prefix(publisher: &str) -> Vec<u8> {
    let mut key = vec![PUBLISHER_CURSORS];
    name_part(&mut key, publisher);
    key
}

fn parse_cursor(key: &[u8], value: &[u8]) -> Option<StoredCursor> {
    let (&plen, rest) = key.get(1..)?.split_first()?;
    let plen = plen as usize;
    let publisher = std::str::from_utf8(rest.get(..plen)?).ok()?.to_owned();
    let (&tlen, rest) = rest.get(plen..)?.split_first()?;
    let tlen = tlen as usize;
    let topic = std::str::from_utf8(rest.get(..tlen)?).ok()?.to_owned();
    let partition = u32::from_be_bytes(rest.get(tlen..)?.try_into().ok()?);
    if value.len() != 16 {
        return None;
    }
    Some(StoredCursor {
        publisher,
        topic,
        partition,
        next_offset: u64::from_le_bytes(value[..8].try_into().ok()?),
        last_global_position: u64::from_le_bytes(value[8..].try_into().ok()?),
    })
}

#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // written by the Kafka publisher
pub fn cursor_value(next_offset: u64, last_global_position: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&next_offset.to_le_bytes());
    v[8..].copy_from_slice(&last_global_position.to_le_bytes());
    v
}

fn malformed() -> StorageError {
    StorageError::corrupt_store(Corruption::MalformedKey {
        keyspace: "publisher cursor",
    })
}

impl Journal {
    /// Every stored publisher cursor, optionally of one publisher, in key order.
    pub(crate) fn publisher_cursors(
        &self,
        publisher: Option<&str>,
    ) -> Result<Vec<StoredCursor>, StorageError> {
        let prefix = match publisher {
            Some(p) => prefix(p),
            None => vec![PUBLISHER_CURSORS],
        };
        let mut out = Vec::new();
        for entry in self.shared.db()?.scan_prefix(prefix) {
            let (key, value) = entry?;
            out.push(parse_cursor(&key, &value).ok_or_else(malformed)?);
        }
        Ok(out)
    }
}

#[cfg_attr(not(feature = "kafka"), allow(dead_code))] // written by the Kafka publisher
impl JournalWriter {
    /// Stores the cursors one delivered batch moved, atomically (not synced: see the module
    /// docs).
    pub(crate) fn write_publisher_cursors(
        &self,
        publisher: &str,
        cursors: &[(String, u32, u64, u64)],
    ) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        let db = self.shared.db()?;
        let mut batch = sled::Batch::default();
        for (topic, partition, next, position) in cursors {
            batch.insert(
                cursor_key(publisher, topic, *partition),
                &cursor_value(*next, *position)[..],
            );
        }
        db.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_keys_round_trip() {
        let key = cursor_key("kafka", "business.orders", 7);
        assert_eq!(key[0], b'k');
        assert_eq!(
            parse_cursor(&key, &cursor_value(12, 345)),
            Some(StoredCursor {
                publisher: "kafka".into(),
                topic: "business.orders".into(),
                partition: 7,
                next_offset: 12,
                last_global_position: 345,
            })
        );
        assert_eq!(parse_cursor(&key, &[0; 15]), None);
        assert!(cursor_key("k", "t", 1) < cursor_key("k", "t", 256));
        assert!(cursor_key("k", "t", u32::MAX) < cursor_key("k", "u", 0));
    }
}
