//! Topics: the journal as the transactional outbox, an embedded topic log, consumers.
//!
//! An event is "in the outbox" the moment its command commits: nothing is written per event
//! for publication. A background thread, the **indexer** ([`index`]), tails the journal's
//! global order from its durable cursor — only up to the journal's durable watermark, so it
//! never indexes an event a crash could take back — routes each event to its topic(s) and
//! partition (Kafka's default partitioner on the aggregate id), assigns per-partition offsets
//! (from 0, gapless, deterministic) and writes one index entry per (topic, partition) per batch
//! together with its cursor, atomically. Messages are rendered from the journal's records
//! when read ([`render`]), in the topic's wire format, so a message read twice — by a
//! consumer, the CLI, or a Kafka publisher — is the same bytes.
//!
//! - [`TopicCatalog`]: which aggregate types route where and how they render (the engine
//!   builds one from its registered types; the CLI from every known type).
//! - [`TopicLog`]: reads "the messages of topic T, partition P, from offset O".
//! - [`consumer`]: consumer groups with durable committed offsets; [`subscribe`]: handlers
//!   with retries and the dead-letter topic; [`metrics`].

pub(crate) mod consumer;
pub(crate) mod deadletter;
pub(crate) mod index;
pub(crate) mod message;
pub(crate) mod metrics;
pub(crate) mod read;
pub(crate) mod recent;
pub(crate) mod render;
pub(crate) mod subscribe;
pub(crate) mod transcode;

use crate::journal::record::Record;
use evershard_model::{Aggregate, CodecError, DomainEvent};
use std::collections::HashMap;

pub use crate::journal::topics::TOPIC_NAME_BYTES_MAX;

/// The dead-letter topic of the seeds (event-architecture-kafka.md 2.2.2).
pub const DLQ_TOPIC: &str = "dlq.events.v1";

/// Partitions of a topic that no [`TopicConfig`] names.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// Partitions of one topic at most.
pub const PARTITIONS_MAX: u32 = 1024;

/// The JSON envelope of a topic's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WireFormat {
    /// domain-events-catalog.md: `{"event_type","event_id","timestamp","payload", ...}`,
    /// snake_case, with the rest of the envelope as metadata (`event_version`,
    /// `aggregate_type`, `aggregate_id`, `sequence`, `global_position`, `correlation_id`,
    /// `causation_id` (null when absent), `source`, `user_id` (null when absent)).
    Catalog,
    /// event-architecture-kafka.md 3.1 `BaseEventSchema`, camelCase: `eventId`, `eventType`,
    /// `eventVersion`, `timestamp`, `correlationId`, `causationId` (absent when none),
    /// `source`, `userId` (present only when the user id is a UUID), `payload`.
    Gacp,
    /// coworking-topics.md: `{"eventId","eventType","occurredAt","data"}`.
    Coworking,
}

impl WireFormat {
    /// The byte stored in the topic's configuration.
    pub fn code(self) -> u8 {
        match self {
            WireFormat::Catalog => 1,
            WireFormat::Gacp => 2,
            WireFormat::Coworking => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<WireFormat> {
        match code {
            1 => Some(WireFormat::Catalog),
            2 => Some(WireFormat::Gacp),
            3 => Some(WireFormat::Coworking),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WireFormat::Catalog => "catalog",
            WireFormat::Gacp => "gacp",
            WireFormat::Coworking => "coworking",
        }
    }

    /// The format of a topic by its family: `cultivation.*` and `dlq.*` (the GACP document's
    /// topics) → [`WireFormat::Gacp`]; `coworking.*` → [`WireFormat::Coworking`]; everything
    /// else (`business.*`, `clinics.*`, `bank.*`, `electronics.*`) → [`WireFormat::Catalog`].
    pub fn for_topic(topic: &str) -> WireFormat {
        if topic.starts_with("cultivation.") || topic.starts_with("dlq.") {
            WireFormat::Gacp
        } else if topic.starts_with("coworking.") {
            WireFormat::Coworking
        } else {
            WireFormat::Catalog
        }
    }
}

/// A topic's configuration: fixed at creation (the first time the store sees the topic) and
/// recorded in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    pub name: String,
    /// Default [`DEFAULT_PARTITIONS`] (8).
    pub partitions: u32,
    /// Default: [`WireFormat::for_topic`].
    pub format: WireFormat,
    /// What this topic's messages carry of payloads encrypted at rest. Default
    /// [`TopicPayloads::Decrypted`]. Not stored: it applies when messages are read.
    pub payloads: TopicPayloads,
}

/// What a topic's messages carry of payloads that are encrypted at rest (sensitive types,
/// docs/security.md). Plain payloads are always published as they are, and an erased payload
/// (its subject forgotten) is always published as `{"erased":true}`. Messages already read
/// or published to Kafka are beyond the store's reach: forgetting a subject cannot recall
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TopicPayloads {
    /// The decrypted payload, for consumers entitled to read it.
    #[default]
    Decrypted,
    /// `{"redacted":true}` in place of the payload; the envelope's metadata stays.
    Redacted,
}

impl TopicConfig {
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let format = WireFormat::for_topic(&name);
        Self {
            name,
            partitions: DEFAULT_PARTITIONS,
            format,
            payloads: TopicPayloads::Decrypted,
        }
    }
    /// See [`TopicPayloads`].
    pub fn payloads(mut self, payloads: TopicPayloads) -> Self {
        self.payloads = payloads;
        self
    }
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }
    pub fn format(mut self, format: WireFormat) -> Self {
        self.format = format;
        self
    }
}

/// Where an aggregate type's events go instead of `DomainEvent::topic()`
/// ([`crate::EngineBuilder::route`]). Several routes of one type fan its events out to each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRoute {
    /// `None`: the event's own topic.
    pub topic: Option<String>,
    /// The format of the target topic, unless a [`TopicConfig`] names it.
    pub format: Option<WireFormat>,
}

impl TopicRoute {
    /// Every event of the type to `topic`.
    pub fn to(topic: impl Into<String>) -> Self {
        Self {
            topic: Some(topic.into()),
            format: None,
        }
    }
    /// The event's own topic (`DomainEvent::topic()`), e.g. with another format.
    pub fn default_topic() -> Self {
        Self {
            topic: None,
            format: None,
        }
    }
    pub fn format(mut self, format: WireFormat) -> Self {
        self.format = Some(format);
        self
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as its default partitioner
/// hashes a record's key.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a key: `(murmur2(key) & 0x7fffffff) % partitions`, exactly what a Kafka
/// producer's default partitioner (and librdkafka's `murmur2_random`) picks for a non-empty key.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key.as_bytes()) as u32) & 0x7fff_ffff) % partitions
}

/// Checks a topic or group name: 1..=249 bytes of `[a-zA-Z0-9._-]` (Kafka's rule).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

type RouteFn = fn(&Record) -> Result<&'static str, CodecError>;
/// The topic of an event type when the type alone says (`DomainEvent::topic_of`): the
/// indexer then routes the event from its stored bytes without decoding it.
type TopicOfFn = fn(&str) -> Option<&'static str>;
/// `(event_type, event_version, payload bytes)` → the payload's JSON: the parts of a record
/// it needs, so that the read path renders from a borrowed view of the stored bytes.
type PayloadFn = fn(&str, &str, &[u8]) -> Result<serde_json::Value, CodecError>;
/// The same payload written as its compact JSON bytes into a buffer (the read path: no
/// `Value` tree, see `DomainEvent::write_payload_json`).
pub(crate) type WritePayloadFn = fn(&str, &str, &[u8], &mut Vec<u8>) -> Result<(), CodecError>;

/// The version a message names for the events stored as an event type
/// (`DomainEvent::version_of`): the decoded payload's, whatever version was stored.
pub(crate) type VersionOfFn = fn(&str) -> Option<&'static str>;

/// The typed parts of one aggregate type, monomorphized at registration.
#[derive(Clone, Copy)]
struct TypeFns {
    route: RouteFn,
    topic_of: TopicOfFn,
    payload: PayloadFn,
    write_payload: WritePayloadFn,
    version_of: VersionOfFn,
}

/// The topic of a record: from its event type alone when the event type says (the derive
/// does), else by decoding it.
fn route_of<A: Aggregate>(record: &Record) -> Result<&'static str, CodecError> {
    if let Some(topic) = <A::Event as DomainEvent>::topic_of(&record.event_type) {
        return Ok(topic);
    }
    Ok(A::decode_event(&record.event_type, &record.event_version, &record.payload)?.topic())
}

fn payload_of<A: Aggregate>(
    event_type: &str,
    event_version: &str,
    payload: &[u8],
) -> Result<serde_json::Value, CodecError> {
    Ok(A::decode_event(event_type, event_version, payload)?.payload_json())
}

fn write_payload_of<A: Aggregate>(
    event_type: &str,
    event_version: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    A::decode_event(event_type, event_version, payload)?.write_payload_json(out);
    Ok(())
}

/// Which aggregate types route where and render how. Built by the engine from its
/// registered types and routes; by the CLI from every type it knows.
#[derive(Clone, Default)]
pub struct TopicCatalog {
    types: HashMap<String, TypeFns>,
    routes: HashMap<String, Vec<TopicRoute>>,
    topics: HashMap<String, TopicConfig>,
}

impl std::fmt::Debug for TopicCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicCatalog")
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .field("routes", &self.routes)
            .field("topics", &self.topics)
            .finish()
    }
}

impl TopicCatalog {
    /// A catalog that knows the dead-letter type only.
    pub fn new() -> Self {
        let mut catalog = Self::default();
        catalog.types.insert(
            deadletter::DEAD_LETTER_TYPE.to_owned(),
            TypeFns {
                route: deadletter::route,
                topic_of: |_| Some(DLQ_TOPIC),
                payload: deadletter::payload,
                write_payload: deadletter::write_payload,
                version_of: |_| None,
            },
        );
        catalog
    }

    /// Knows how to route and render `A`'s events.
    pub fn register<A: Aggregate>(&mut self) {
        self.types.insert(
            A::TYPE.to_owned(),
            TypeFns {
                route: route_of::<A>,
                topic_of: <A::Event as DomainEvent>::topic_of,
                payload: payload_of::<A>,
                write_payload: write_payload_of::<A>,
                version_of: <A::Event as DomainEvent>::version_of,
            },
        );
    }

    /// Adds a route for `aggregate_type` (replacing its default topic).
    pub fn route(&mut self, aggregate_type: &str, route: TopicRoute) {
        self.routes
            .entry(aggregate_type.to_owned())
            .or_default()
            .push(route);
    }

    /// Configures a topic explicitly (partitions, format).
    pub fn topic(&mut self, config: TopicConfig) {
        self.topics.insert(config.name.clone(), config);
    }

    /// True when `topic` publishes encrypted payloads redacted ([`TopicPayloads::Redacted`]).
    pub(crate) fn redacts(&self, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|c| c.payloads == TopicPayloads::Redacted)
    }

    /// The explicitly configured topics.
    pub fn configured_topics(&self) -> impl Iterator<Item = &TopicConfig> {
        self.topics.values()
    }

    /// True when the catalog knows how to decode `aggregate_type`'s events.
    pub fn knows(&self, aggregate_type: &str) -> bool {
        self.types.contains_key(aggregate_type)
    }

    /// The topics a record goes to, each with the configuration it gets if it is new.
    /// Empty for a type the catalog does not know (its events are not published).
    pub(crate) fn targets(&self, record: &Record) -> Result<Vec<TopicConfig>, CodecError> {
        let Some(fns) = self.types.get(&record.aggregate_type) else {
            return Ok(Vec::new());
        };
        // A payload erased before it was indexed cannot be decoded: when its topic is known
        // only from the payload, it is not published (nothing of it could be anyway).
        let erased = record.at_rest == crate::journal::AtRest::Sealed;
        self.targets_with(&record.aggregate_type, erased, || (fns.route)(record))
    }

    /// The topics of an event from its aggregate type and event type alone, as
    /// [`targets`](Self::targets) gives them; `None` when they depend on its payload (its
    /// aggregate's events do not name their topic by type): decode it and ask `targets`.
    pub(crate) fn targets_by_type(
        &self,
        aggregate_type: &str,
        event_type: &str,
    ) -> Option<Vec<TopicConfig>> {
        let Some(fns) = self.types.get(aggregate_type) else {
            return Some(Vec::new());
        };
        let topic = (fns.topic_of)(event_type);
        // `own` is asked only when a route needs the event's own topic; with none known by
        // type, that is the payload's to say.
        self.targets_with(aggregate_type, false, || {
            topic.ok_or_else(|| CodecError::Mismatch("topic known from the payload only".into()))
        })
        .ok()
    }

    fn targets_with(
        &self,
        aggregate_type: &str,
        erased: bool,
        own: impl Fn() -> Result<&'static str, CodecError>,
    ) -> Result<Vec<TopicConfig>, CodecError> {
        let config = |name: &str, format: Option<WireFormat>| {
            self.topics.get(name).cloned().unwrap_or_else(|| {
                let c = TopicConfig::new(name);
                match format {
                    Some(f) => c.format(f),
                    None => c,
                }
            })
        };
        match self.routes.get(aggregate_type) {
            None => match own() {
                Ok(topic) => Ok(vec![config(topic, None)]),
                Err(_) if erased => Ok(Vec::new()),
                Err(e) => Err(e),
            },
            Some(routes) => {
                let mut out: Vec<TopicConfig> = Vec::with_capacity(routes.len());
                for route in routes {
                    let name = match &route.topic {
                        Some(t) => t.clone(),
                        None => match own() {
                            Ok(topic) => topic.to_owned(),
                            Err(_) if erased => continue,
                            Err(e) => return Err(e),
                        },
                    };
                    if !out.iter().any(|c| c.name == name) {
                        out.push(config(&name, route.format));
                    }
                }
                Ok(out)
            }
        }
    }

    /// The JSON payload of a record (the aggregate's `payload_json`).
    pub fn render_payload(&self, record: &Record) -> Result<serde_json::Value, CodecError> {
        self.payload(
            &record.aggregate_type,
            &record.event_type,
            &record.event_version,
            &record.payload,
        )
    }

    /// How to write the JSON payload of `aggregate_type`'s events, and the version their
    /// messages name (looked up once per run of records on the read path), or why they
    /// cannot be rendered.
    pub(crate) fn payload_writer(
        &self,
        aggregate_type: &str,
    ) -> Result<(WritePayloadFn, VersionOfFn), CodecError> {
        match self.types.get(aggregate_type) {
            Some(fns) => Ok((fns.write_payload, fns.version_of)),
            None => Err(CodecError::Mismatch(format!(
                "no renderer for aggregate type {aggregate_type}"
            ))),
        }
    }

    /// The JSON payload of a stored event, from its parts.
    pub(crate) fn payload(
        &self,
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        payload: &[u8],
    ) -> Result<serde_json::Value, CodecError> {
        match self.types.get(aggregate_type) {
            Some(fns) => (fns.payload)(event_type, event_version, payload),
            None => Err(CodecError::Mismatch(format!(
                "no renderer for aggregate type {aggregate_type}"
            ))),
        }
    }
}

pub use consumer::{Consumer, ConsumerOptions, StartFrom};
pub use deadletter::{DeadLetter, DeadLetterReason};
pub use message::Message;
pub use metrics::{EventMetrics, GroupLag, Health, PartitionLag, TopicMetrics};
pub use read::{TopicInfo, TopicLog};
pub use subscribe::{Handler, HandlerError, RetryPolicy, Subscription, SubscriptionOptions};

/// What went wrong in a topic operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    #[error("topic {topic} has {stored} partitions in the store; configured {configured}")]
    PartitionsMismatch {
        topic: String,
        stored: u32,
        configured: u32,
    },
    #[error("topic {topic} has format {stored} in the store; configured {configured}")]
    FormatMismatch {
        topic: String,
        stored: &'static str,
        configured: &'static str,
    },
    #[error("invalid topic or group name {name:?}: 1..=249 bytes of [a-zA-Z0-9._-]")]
    InvalidName { name: String },
    #[error("topic {topic}: partitions must be 1..={max}, got {partitions}")]
    InvalidPartitions {
        topic: String,
        partitions: u32,
        max: u32,
    },
    #[error("unknown topic {topic}")]
    UnknownTopic { topic: String },
    #[error("partition {partition} of {topic} does not exist")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("event at global position {position} cannot be routed or rendered: {source}")]
    Render {
        position: u64,
        #[source]
        source: CodecError,
    },
    #[error("not a dead-letter message: {reason}")]
    NotDeadLetter { reason: String },
    #[error("invalid {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: &'static str,
    },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("topics are turned off for this engine (EngineBuilder::topic_indexer(false))")]
    Disabled,
    #[error(transparent)]
    Storage(#[from] crate::error::StorageError),
    #[error(transparent)]
    Append(#[from] crate::error::AppendError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors (clients' `UtilsTest.testMurmur2`): the embedded partition of a key
    /// equals the one a Kafka producer's default partitioner picks.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
        // toPositive(-973932308) = 1173551340; % 8 = 4, % 3 = 0
        assert_eq!(partition_for("21", 8), 1173551340 % 8);
        assert_eq!(partition_for("21", 3), 1173551340 % 3);
        assert_eq!(partition_for("abc", 8), 479470107 % 8);
    }

    #[test]
    fn formats_by_family_and_names() {
        assert_eq!(
            WireFormat::for_topic("cultivation.plants.v1"),
            WireFormat::Gacp
        );
        assert_eq!(WireFormat::for_topic("dlq.events.v1"), WireFormat::Gacp);
        assert_eq!(
            WireFormat::for_topic("coworking.bookings"),
            WireFormat::Coworking
        );
        for t in [
            "business.orders",
            "clinics.appointments",
            "bank.credits",
            "electronics.alerts",
        ] {
            assert_eq!(WireFormat::for_topic(t), WireFormat::Catalog);
        }
        for f in [WireFormat::Catalog, WireFormat::Gacp, WireFormat::Coworking] {
            assert_eq!(WireFormat::from_code(f.code()), Some(f));
        }
        assert!(valid_name("business.orders"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(250)));
    }
}
