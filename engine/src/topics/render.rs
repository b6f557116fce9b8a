//! One journal record → one message: key, headers and the JSON value in the topic's wire
//! format. Pure, so that every reader (consumers, the CLI, a Kafka publisher) renders the same
//! bytes for the same record.

use super::{Message, TopicCatalog, TopicError, WireFormat};
use crate::journal::record::Record;
use crate::journal::AtRest;
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// RFC 3339 in UTC with microseconds (the store's resolution) and a `Z`.
pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Serialize)]
struct CatalogEnvelope<'a> {
    event_type: &'a str,
    event_id: Uuid,
    timestamp: &'a str,
    payload: &'a Value,
    event_version: &'a str,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: u64,
    global_position: u64,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    source: &'a str,
    user_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GacpEnvelope<'a> {
    event_id: Uuid,
    event_type: &'a str,
    event_version: &'a str,
    timestamp: &'a str,
    correlation_id: Uuid,
    // zod `.optional()`: absent, never null.
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<Uuid>,
    source: &'a str,
    // `userId: z.string().uuid().optional()`: only a UUID may appear here.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<Uuid>,
    // `sessionId: z.string().uuid().optional()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<Uuid>,
    // `auditContext: { ipAddress?, userAgent?, complianceFlags: [] }.optional()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_context: Option<&'a evershard_model::AuditContext>,
    payload: &'a Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CoworkingEnvelope<'a> {
    event_id: Uuid,
    event_type: &'a str,
    occurred_at: &'a str,
    data: &'a Value,
}

/// The envelope of `format` around `payload`, as the compact JSON bytes that are published.
/// Written straight to bytes (no intermediate JSON tree): a message keeps one allocation for
/// its value.
pub(crate) fn envelope(format: WireFormat, record: &Record, payload: &Value) -> Vec<u8> {
    let timestamp = rfc3339(record.timestamp);
    let mut out = Vec::with_capacity(256);
    let written = match format {
        WireFormat::Catalog => serde_json::to_writer(
            &mut out,
            &CatalogEnvelope {
                event_type: &record.event_type,
                event_id: record.event_id,
                timestamp: &timestamp,
                payload,
                event_version: &record.event_version,
                aggregate_type: &record.aggregate_type,
                aggregate_id: &record.aggregate_id,
                sequence: record.sequence,
                global_position: record.global_position,
                correlation_id: record.correlation_id,
                causation_id: record.causation_id,
                source: &record.source,
                user_id: record.user_id.as_deref(),
            },
        ),
        WireFormat::Gacp => serde_json::to_writer(
            &mut out,
            &GacpEnvelope {
                event_id: record.event_id,
                event_type: &record.event_type,
                event_version: &record.event_version,
                timestamp: &timestamp,
                correlation_id: record.correlation_id,
                causation_id: record.causation_id,
                source: &record.source,
                user_id: record
                    .user_id
                    .as_deref()
                    .and_then(|u| Uuid::parse_str(u).ok()),
                session_id: record.session_id,
                audit_context: record.audit_context.as_ref(),
                payload,
            },
        ),
        WireFormat::Coworking => serde_json::to_writer(
            &mut out,
            &CoworkingEnvelope {
                event_id: record.event_id,
                event_type: &record.event_type,
                occurred_at: &timestamp,
                data: payload,
            },
        ),
    };
    written.expect("strings, numbers, uuids and a JSON value always encode");
    out
}

/// Header names, in the order every message carries them.
pub const HEADER_NAMES: [&str; 8] = [
    "event_id",
    "event_type",
    "event_version",
    "aggregate_type",
    "sequence",
    "global_position",
    "correlation_id",
    "causation_id",
];

/// The headers of a message, in this order. `causation_id` has a null value when absent
/// (Kafka headers allow null values; the header is always present, so a reader can rely on
/// the set of names).
pub(crate) fn headers(record: &Record) -> Vec<(&'static str, Option<String>)> {
    let values = [
        Some(record.event_id.to_string()),
        Some(record.event_type.clone()),
        Some(record.event_version.clone()),
        Some(record.aggregate_type.clone()),
        Some(record.sequence.to_string()),
        Some(record.global_position.to_string()),
        Some(record.correlation_id.to_string()),
        record.causation_id.map(|c| c.to_string()),
    ];
    HEADER_NAMES.into_iter().zip(values).collect()
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
    let payload = match record.at_rest {
        // Left sealed by the reader only when its subject was forgotten.
        AtRest::Sealed => serde_json::json!({ "erased": true }),
        AtRest::Opened if catalog.redacts(topic) => serde_json::json!({ "redacted": true }),
        _ => catalog
            .payload(record)
            .map_err(|source| TopicError::Render {
                position: record.global_position,
                source,
            })?,
    };
    Ok(Message {
        topic: topic.to_owned(),
        partition,
        offset,
        key: record.aggregate_id.clone(),
        headers: headers(record),
        value: envelope(format, record, &payload),
        timestamp: record.timestamp,
        event_id: record.event_id,
        event_type: record.event_type.clone(),
        aggregate_type: record.aggregate_type.clone(),
        sequence: record.sequence,
        global_position: record.global_position,
    })
}
