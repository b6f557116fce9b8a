//! One journal record → one message: key, headers and the JSON value in the topic's wire
//! format. Pure, so that every reader (consumers, the CLI, a Kafka publisher) renders the same
//! bytes for the same record.

use super::{Message, TopicCatalog, TopicError, WireFormat};
use crate::journal::record::Record;
use chrono::SecondsFormat;
use serde_json::{json, Map, Value};

/// RFC 3339 in UTC with microseconds (the store's resolution) and a `Z`.
pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The envelope of `format` around `payload`.
pub(crate) fn envelope(format: WireFormat, record: &Record, payload: Value) -> Value {
    match format {
        WireFormat::Catalog => {
            let mut m = Map::new();
            m.insert("event_type".into(), json!(record.event_type));
            m.insert("event_id".into(), json!(record.event_id.to_string()));
            m.insert("timestamp".into(), json!(rfc3339(record.timestamp)));
            m.insert("payload".into(), payload);
            m.insert("event_version".into(), json!(record.event_version));
            m.insert("aggregate_type".into(), json!(record.aggregate_type));
            m.insert("aggregate_id".into(), json!(record.aggregate_id));
            m.insert("sequence".into(), json!(record.sequence));
            m.insert("global_position".into(), json!(record.global_position));
            m.insert(
                "correlation_id".into(),
                json!(record.correlation_id.to_string()),
            );
            m.insert(
                "causation_id".into(),
                json!(record.causation_id.map(|c| c.to_string())),
            );
            m.insert("source".into(), json!(record.source));
            m.insert("user_id".into(), json!(record.user_id));
            Value::Object(m)
        }
        WireFormat::Gacp => {
            let mut m = Map::new();
            m.insert("eventId".into(), json!(record.event_id.to_string()));
            m.insert("eventType".into(), json!(record.event_type));
            m.insert("eventVersion".into(), json!(record.event_version));
            m.insert("timestamp".into(), json!(rfc3339(record.timestamp)));
            m.insert(
                "correlationId".into(),
                json!(record.correlation_id.to_string()),
            );
            // zod `.optional()`: absent, never null.
            if let Some(c) = record.causation_id {
                m.insert("causationId".into(), json!(c.to_string()));
            }
            m.insert("source".into(), json!(record.source));
            // `userId: z.string().uuid().optional()`: only a UUID may appear here.
            if let Some(user) = record
                .user_id
                .as_deref()
                .and_then(|u| uuid::Uuid::parse_str(u).ok())
            {
                m.insert("userId".into(), json!(user.to_string()));
            }
            m.insert("payload".into(), payload);
            Value::Object(m)
        }
        WireFormat::Coworking => json!({
            "eventId": record.event_id.to_string(),
            "eventType": record.event_type,
            "occurredAt": rfc3339(record.timestamp),
            "data": payload,
        }),
    }
}

/// The headers of a message, in this order. `causation_id` has a null value when absent
/// (Kafka headers allow null values; the header is always present, so a reader can rely on
/// the set of names).
pub(crate) fn headers(record: &Record) -> Vec<(String, Option<String>)> {
    vec![
        ("event_id".into(), Some(record.event_id.to_string())),
        ("event_type".into(), Some(record.event_type.clone())),
        ("event_version".into(), Some(record.event_version.clone())),
        ("aggregate_type".into(), Some(record.aggregate_type.clone())),
        ("sequence".into(), Some(record.sequence.to_string())),
        (
            "global_position".into(),
            Some(record.global_position.to_string()),
        ),
        (
            "correlation_id".into(),
            Some(record.correlation_id.to_string()),
        ),
        (
            "causation_id".into(),
            record.causation_id.map(|c| c.to_string()),
        ),
    ]
}

/// Renders one record as the message at `(topic, partition, offset)`.
pub(crate) fn message(
    catalog: &TopicCatalog,
    format: WireFormat,
    topic: &str,
    partition: u32,
    offset: u64,
    record: &Record,
) -> Result<Message, TopicError> {
    let payload = catalog
        .payload(record)
        .map_err(|source| TopicError::Render {
            position: record.global_position,
            source,
        })?;
    Ok(Message {
        topic: topic.to_owned(),
        partition,
        offset,
        key: record.aggregate_id.clone(),
        headers: headers(record),
        value: envelope(format, record, payload),
        timestamp: record.timestamp,
        event_id: record.event_id,
        event_type: record.event_type.clone(),
        aggregate_type: record.aggregate_type.clone(),
        sequence: record.sequence,
        global_position: record.global_position,
    })
}
