//! One message of a topic, as published, and the arena messages are rendered into.
//!
//! A message's variable parts — the value, the key and the eight header values — are one run
//! of bytes in a shared block ([`bytes::Bytes`]), addressed by offsets; the topic name is
//! shared by every message of a read. Rendering a message therefore allocates nothing of its
//! own: the reader copies it into the current block of a [`MessageArena`] and takes a
//! reference-counted slice. (Before, a message owned 13 heap allocations — topic, key, event
//! type, aggregate type, the value, eight header strings and their `Vec` — and at 1,000,000
//! messages the catch-up read spent most of its cycles in glibc `malloc`/`free` on them.)
//!
//! The cost of sharing: a message kept alive keeps its block alive — at most
//! [`ARENA_BLOCK_BYTES`] (or the one message, when it is larger). A consumer that keeps a few
//! messages of a large batch for long can copy what it needs out of them.

use super::render::{self, HEADER_NAMES};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

/// The size of one arena block: about a hundred rendered messages of the seeds' events, small
/// enough to come from glibc's heap rather than a fresh `mmap` (its threshold starts at
/// 128 KiB).
pub(crate) const ARENA_BLOCK_BYTES: usize = 64 * 1024;

/// Where each part of a message ends in its buffer: the value, the key, then header `i`.
const VALUE: usize = 0;
const KEY: usize = 1;
const HEADER0: usize = 2;
const PARTS: usize = HEADER0 + HEADER_NAMES.len();

/// One message of a topic, as published: [`key`](Message::key),
/// [`headers`](Message::headers) and [`value`](Message::value) are the Kafka record's parts;
/// the public fields and the other accessors repeat what they hold for convenience.
///
/// Cloning is cheap (two reference counts). See the module docs for what a message shares.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: u32,
    pub offset: u64,
    /// When the event happened (the record's timestamp; the Kafka record's timestamp).
    pub timestamp: DateTime<Utc>,
    pub event_id: Uuid,
    pub sequence: u64,
    pub global_position: u64,
    topic: Arc<str>,
    /// The value, the key, then the header values, back to back (a slice of an arena block).
    buf: Bytes,
    /// `ends[VALUE]`, `ends[KEY]`, `ends[HEADER0 + i]`: where each part ends in `buf`.
    ends: [u32; PARTS],
    /// Bit `i`: header `i` is present (the rendered messages carry all eight).
    present: u8,
    /// Bit `i`: header `i` has a value (else null: `causation_id` of a first event).
    valued: u8,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic())
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("key", &self.key())
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("value", &String::from_utf8_lossy(self.value()))
            .field("timestamp", &self.timestamp)
            .field("event_id", &self.event_id)
            .field("sequence", &self.sequence)
            .field("global_position", &self.global_position)
            .finish()
    }
}

impl Message {
    fn part(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.buf[start..self.ends[i] as usize]
    }

    /// Parts are written from `&str` (see [`MessageArena`]): checking them again is cheap
    /// (short ASCII in practice) and keeps the crate free of `unsafe`.
    fn text(&self, i: usize) -> &str {
        std::str::from_utf8(self.part(i)).expect("message parts are written from str")
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The key: the aggregate id.
    pub fn key(&self) -> &str {
        self.text(KEY)
    }

    /// One JSON object in the topic's wire format: the compact JSON bytes as published.
    pub fn value(&self) -> &[u8] {
        self.part(VALUE)
    }

    /// The value as a shared slice of the message's block (no copy: for a producer that
    /// takes ownership of its payload).
    pub fn value_bytes(&self) -> Bytes {
        self.buf.slice(0..self.ends[VALUE] as usize)
    }

    /// `event_id`, `event_type`, `event_version`, `aggregate_type`, `sequence`,
    /// `global_position`, `correlation_id`, `causation_id` (value `None` when absent), in
    /// this order.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, Option<&str>)> + '_ {
        HEADER_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.present & (1 << i) != 0)
            .map(|(i, name)| {
                let value = (self.valued & (1 << i) != 0).then(|| self.text(HEADER0 + i));
                (*name, value)
            })
    }

    /// One header's value (`None` when absent or null).
    pub fn header(&self, name: &str) -> Option<&str> {
        let i = HEADER_NAMES.iter().position(|n| *n == name)?;
        (self.present & self.valued & (1 << i) != 0).then(|| self.text(HEADER0 + i))
    }

    pub fn event_type(&self) -> &str {
        self.header("event_type").unwrap_or_default()
    }

    /// The `event_type` header's bytes, unchecked (for comparing event types cheaply).
    pub(crate) fn event_type_bytes(&self) -> &[u8] {
        self.part(HEADER0 + 1)
    }

    pub fn aggregate_type(&self) -> &str {
        self.header("aggregate_type").unwrap_or_default()
    }

    /// The value parsed as JSON (for inspection; [`value`](Message::value) holds the bytes as
    /// published).
    pub fn value_json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value()).expect("a rendered value is JSON")
    }

    /// The message as one JSON object: topic, partition, offset, timestamp, key, headers
    /// (an object; null values for absent headers) and value.
    pub fn to_json(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        serde_json::json!({
            "topic": self.topic(),
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": render::rfc3339(self.timestamp),
            "key": self.key(),
            "headers": headers,
            "value": self.value_json(),
        })
    }
}

/// The parts of a message that are not in its buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MessageMeta {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) timestamp: DateTime<Utc>,
    pub(crate) event_id: Uuid,
    pub(crate) sequence: u64,
    pub(crate) global_position: u64,
}

/// Builds messages into shared blocks of [`ARENA_BLOCK_BYTES`]: one allocation per block,
/// none per message. One per read, or per consumer across its reads.
#[derive(Debug)]
pub(crate) struct MessageArena {
    topic: Arc<str>,
    block: BytesMut,
    ends: [u32; PARTS],
    part: usize,
    present: u8,
    valued: u8,
}

impl MessageArena {
    pub(crate) fn new(topic: &str) -> Self {
        MessageArena {
            topic: Arc::from(topic),
            block: BytesMut::new(),
            ends: [0; PARTS],
            part: 0,
            present: 0,
            valued: 0,
        }
    }

    /// The topic its messages name.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Starts a message of about `bytes` bytes (value, key and headers): a fresh block when
    /// the current one has not that much room left, so a message never straddles two.
    pub(crate) fn begin(&mut self, bytes: usize) {
        debug_assert!(self.block.is_empty(), "the previous message was finished");
        if self.block.capacity() < bytes {
            self.block = BytesMut::with_capacity(bytes.max(ARENA_BLOCK_BYTES));
        }
        self.part = 0;
        self.present = 0;
        self.valued = 0;
    }

    fn end_part(&mut self) {
        self.ends[self.part] = u32::try_from(self.block.len()).expect("a message under 4 GiB");
        self.part += 1;
    }

    /// The value (first), then the key.
    pub(crate) fn value(&mut self, value: &[u8]) {
        debug_assert_eq!(self.part, VALUE);
        self.block.extend_from_slice(value);
        self.end_part();
    }

    pub(crate) fn key(&mut self, key: &str) {
        debug_assert_eq!(self.part, KEY);
        self.block.extend_from_slice(key.as_bytes());
        self.end_part();
    }

    /// The next header in [`HEADER_NAMES`] order: present with a value, present and null
    /// (`Some(None)`), or absent (`None`).
    pub(crate) fn header(&mut self, value: Option<Option<&str>>) {
        let i = self.part - HEADER0;
        if let Some(v) = value {
            self.present |= 1 << i;
            if let Some(v) = v {
                self.valued |= 1 << i;
                self.block.extend_from_slice(v.as_bytes());
            }
        }
        self.end_part();
    }

    /// A header written as a number's decimal digits.
    pub(crate) fn header_u64(&mut self, n: u64) {
        let mut digits = itoa::Buffer::new();
        self.header(Some(Some(digits.format(n))));
    }

    /// A header written as a UUID's hyphenated lower-case text. (The renderer formats the
    /// ids once for the value and the headers, and passes their text to `header`.)
    #[cfg(test)]
    pub(crate) fn header_uuid(&mut self, id: Option<Uuid>) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.map(|id| &*id.hyphenated().encode_lower(&mut buf));
        self.header(Some(text));
    }

    /// The message written since [`begin`](Self::begin), as a slice of the block.
    pub(crate) fn finish(&mut self, meta: MessageMeta) -> Message {
        assert_eq!(
            self.part, PARTS,
            "a message has a value, a key and every header"
        );
        Message {
            partition: meta.partition,
            offset: meta.offset,
            timestamp: meta.timestamp,
            event_id: meta.event_id,
            sequence: meta.sequence,
            global_position: meta.global_position,
            topic: self.topic.clone(),
            buf: self.block.split().freeze(),
            ends: self.ends,
            present: self.present,
            valued: self.valued,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(offset: u64) -> MessageMeta {
        MessageMeta {
            partition: 3,
            offset,
            timestamp: DateTime::<Utc>::default(),
            event_id: Uuid::from_u128(offset as u128),
            sequence: offset + 1,
            global_position: offset + 10,
        }
    }

    fn build(
        arena: &mut MessageArena,
        offset: u64,
        value: &[u8],
        causation: Option<Uuid>,
    ) -> Message {
        arena.begin(value.len() + 256);
        arena.value(value);
        arena.key("sku-1");
        arena.header_uuid(Some(Uuid::from_u128(offset as u128)));
        arena.header(Some(Some("stock.received")));
        arena.header(Some(Some("1.0")));
        arena.header(Some(Some("ProductStock")));
        arena.header_u64(offset + 1);
        arena.header_u64(offset + 10);
        arena.header_uuid(Some(Uuid::from_u128(7)));
        arena.header_uuid(causation);
        arena.finish(meta(offset))
    }

    /// Messages built one after another in one arena keep their own parts (no message sees
    /// the next one's bytes), across block boundaries and for a message larger than a block;
    /// a null header reads as null, an absent one is left out.
    #[test]
    fn messages_share_blocks_but_not_bytes() {
        let mut arena = MessageArena::new("business.inventory");
        let mut messages = Vec::new();
        for offset in 0..1000u64 {
            let size = if offset == 500 {
                3 * ARENA_BLOCK_BYTES
            } else {
                100 + offset as usize % 300
            };
            let value = vec![b'a' + (offset % 26) as u8; size];
            let causation = (offset % 2 == 0).then(|| Uuid::from_u128(offset as u128));
            messages.push((
                value.clone(),
                causation,
                build(&mut arena, offset, &value, causation),
            ));
        }
        for (offset, (value, causation, m)) in messages.iter().enumerate() {
            let offset = offset as u64;
            assert_eq!(m.topic(), "business.inventory");
            assert_eq!(m.value(), &value[..]);
            assert_eq!(&m.value_bytes()[..], &value[..]);
            assert_eq!(m.key(), "sku-1");
            assert_eq!(m.event_type(), "stock.received");
            assert_eq!(m.aggregate_type(), "ProductStock");
            let sequence = (offset + 1).to_string();
            let position = (offset + 10).to_string();
            let event_id = Uuid::from_u128(offset as u128).to_string();
            let correlation = Uuid::from_u128(7).to_string();
            let causation = causation.map(|c| c.to_string());
            let want: Vec<(&str, Option<&str>)> = vec![
                ("event_id", Some(&event_id)),
                ("event_type", Some("stock.received")),
                ("event_version", Some("1.0")),
                ("aggregate_type", Some("ProductStock")),
                ("sequence", Some(&sequence)),
                ("global_position", Some(&position)),
                ("correlation_id", Some(&correlation)),
                ("causation_id", causation.as_deref()),
            ];
            assert_eq!(m.headers().collect::<Vec<_>>(), want);
            assert_eq!(m.header("causation_id"), causation.as_deref());
            assert_eq!(m.header("no such header"), None);
        }
        // An absent header is not listed; the others keep their values.
        arena.begin(64);
        arena.value(b"{}");
        arena.key("k");
        for i in 0..HEADER_NAMES.len() {
            arena.header((i != 2).then_some(Some("v")));
        }
        let m = arena.finish(meta(0));
        let names: Vec<&str> = m.headers().map(|(n, _)| n).collect();
        assert_eq!(names.len(), HEADER_NAMES.len() - 1);
        assert!(!names.contains(&"event_version"));
        assert_eq!(m.header("event_version"), None);
        assert_eq!(m.header("aggregate_type"), Some("v"));
    }
}
