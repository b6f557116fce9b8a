//! One journal record → one message: key, headers and the JSON value in the topic's wire
//! format. Pure, so that every reader (consumers, the CLI, a Kafka publisher) renders the same
//! bytes for the same record.

use super::message::{Message, MessageArena, MessageMeta};
use super::transcode::Transcoder;
use super::{TopicError, WireFormat, WritePayloadFn};
use crate::journal::record::{Record, RecordView, RECORD_FORMAT_V1};
use chrono::SecondsFormat;
use uuid::Uuid;

/// RFC 3339 in UTC with microseconds (the store's resolution) and a `Z`.
pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`: the bytes of [`rfc3339`] for years 0..=9999.
const RFC3339_BYTES: usize = 27;

/// [`rfc3339`] without an allocation or the formatting machinery, for the read path: digits
/// written straight into a stack buffer. Years outside 0..=9999 (which chrono writes with a
/// sign) go through [`rfc3339`]; a unit test holds the two to the same bytes.
fn rfc3339_into<'b>(
    t: chrono::DateTime<chrono::Utc>,
    buf: &'b mut [u8; RFC3339_BYTES],
    spill: &'b mut String,
) -> &'b str {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        *spill = rfc3339(t);
        return spill;
    }
    fn digits(out: &mut [u8], mut value: u32) {
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    // chrono folds a leap second into the nanoseconds (>= 1e9); its formatter writes second
    // 60 then. The store keeps microseconds of ordinary timestamps, but be exact anyway.
    let nanos = t.nanosecond();
    let (second, nanos) = if nanos >= 1_000_000_000 {
        (t.second() + 1, nanos - 1_000_000_000)
    } else {
        (t.second(), nanos)
    };
    digits(&mut buf[0..4], year as u32);
    buf[4] = b'-';
    digits(&mut buf[5..7], t.month());
    buf[7] = b'-';
    digits(&mut buf[8..10], t.day());
    buf[10] = b'T';
    digits(&mut buf[11..13], t.hour());
    buf[13] = b':';
    digits(&mut buf[14..16], t.minute());
    buf[16] = b':';
    digits(&mut buf[17..19], second);
    buf[19] = b'.';
    digits(&mut buf[20..26], nanos / 1_000);
    buf[26] = b'Z';
    std::str::from_utf8(buf).expect("ASCII digits and separators")
}

/// The parts of a stored record a message is rendered from, borrowed: from a decoded
/// [`Record`] or, on the read path, straight from the record's bytes (a format 1
/// [`RecordView`], which has no session id or audit context).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields<'a> {
    pub(crate) sequence: u64,
    pub(crate) global_position: u64,
    pub(crate) timestamp: chrono::DateTime<chrono::Utc>,
    pub(crate) event_id: Uuid,
    pub(crate) correlation_id: Uuid,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) aggregate_type: &'a str,
    pub(crate) aggregate_id: &'a str,
    pub(crate) event_type: &'a str,
    /// The stored version: what the payload is decoded as.
    pub(crate) event_version: &'a str,
    /// The version the message names (envelope and header): the decoded payload's, which
    /// differs from the stored one for an event an upcaster brings to a later version.
    pub(crate) published_version: &'a str,
    pub(crate) source: &'a str,
    pub(crate) user_id: Option<&'a str>,
    pub(crate) session_id: Option<Uuid>,
    pub(crate) audit_context: Option<&'a evershard_model::AuditContext>,
    pub(crate) payload: &'a [u8],
}

impl<'a> From<&'a Record> for Fields<'a> {
    fn from(r: &'a Record) -> Self {
        Fields {
            sequence: r.sequence,
            global_position: r.global_position,
            timestamp: r.timestamp,
            event_id: r.event_id,
            correlation_id: r.correlation_id,
            causation_id: r.causation_id,
            aggregate_type: &r.aggregate_type,
            aggregate_id: &r.aggregate_id,
            event_type: &r.event_type,
            event_version: &r.event_version,
            published_version: &r.event_version,
            source: &r.source,
            user_id: r.user_id.as_deref(),
            session_id: r.session_id,
            audit_context: r.audit_context.as_ref(),
            payload: &r.payload,
        }
    }
}

impl<'a> Fields<'a> {
    /// The fields of a format 1 record's view; `None` for format 2 (decode it instead: its
    /// session id and audit context are not in the view).
    pub(crate) fn from_view(v: &RecordView<'a>) -> Option<Self> {
        (v.format == RECORD_FORMAT_V1).then(|| Fields {
            sequence: v.sequence,
            global_position: v.global_position,
            timestamp: crate::journal::micros_to_time(v.timestamp_micros),
            event_id: v.event_id,
            correlation_id: v.correlation_id,
            causation_id: v.causation_id,
            aggregate_type: v.aggregate_type,
            aggregate_id: v.aggregate_id,
            event_type: v.event_type,
            event_version: v.event_version,
            published_version: v.event_version,
            source: v.source,
            user_id: v.user_id,
            session_id: None,
            audit_context: None,
            payload: v.payload,
        })
    }
}

/// `"name":` after a `,` unless first (names are ASCII identifiers: nothing to escape).
fn key(out: &mut Vec<u8>, first: bool, name: &str) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A UUID as serde writes it (hyphenated, lower case, quoted).
fn uuid_json(out: &mut Vec<u8>, id: Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

type UuidText = [u8; uuid::fmt::Hyphenated::LENGTH];

/// The text of a record's three ids, formatted once per message: the value and the headers
/// both carry them.
struct IdTexts {
    event_id: UuidText,
    correlation_id: UuidText,
    causation_id: Option<UuidText>,
}

impl IdTexts {
    fn new(record: &Fields<'_>) -> Self {
        let text = |id: Uuid| {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            id.hyphenated().encode_lower(&mut buf);
            buf
        };
        IdTexts {
            event_id: text(record.event_id),
            correlation_id: text(record.correlation_id),
            causation_id: record.causation_id.map(text),
        }
    }

    fn str(text: &UuidText) -> &str {
        std::str::from_utf8(text).expect("a UUID's text is ASCII")
    }
}

/// A formatted UUID, quoted.
fn uuid_text_json(out: &mut Vec<u8>, text: &UuidText) {
    out.push(b'"');
    out.extend_from_slice(text);
    out.push(b'"');
}

fn opt_uuid_text_json(out: &mut Vec<u8>, text: Option<&UuidText>) {
    match text {
        Some(text) => uuid_text_json(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// A string, escaped as serde_json escapes it.
fn str_json(out: &mut Vec<u8>, s: &str) {
    evershard_model::json::write_str(out, s);
}

fn u64_json(out: &mut Vec<u8>, n: u64) {
    serde_json::to_writer(&mut *out, &n).expect("a number always encodes");
}

/// The envelope of `format` around the payload `payload` writes, as the compact JSON bytes
/// that are published, appended to `out`: written by hand, field by field, in the order and
/// with the nullability of the seeds' envelopes (a unit test holds it to the bytes serde
/// writes for the envelope structs), the payload straight into place (no `Value` tree), the
/// timestamp formatted on the stack.
/// (`message` renders through [`envelope_with`], which takes the ids formatted once for
/// the value and the headers; this form is what the unit tests hold to the serde structs.)
#[cfg(test)]
pub(crate) fn envelope<E>(
    format: WireFormat,
    record: &Fields<'_>,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    out: &mut Vec<u8>,
) -> Result<(), E> {
    envelope_with(format, record, &IdTexts::new(record), payload, out)
}

/// [`envelope`] with the record's ids already formatted.
fn envelope_with<E>(
    format: WireFormat,
    record: &Fields<'_>,
    ids: &IdTexts,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    out: &mut Vec<u8>,
) -> Result<(), E> {
    let mut stamp = [0u8; RFC3339_BYTES];
    let mut spill = String::new();
    let timestamp = rfc3339_into(record.timestamp, &mut stamp, &mut spill);
    out.push(b'{');
    match format {
        WireFormat::Catalog => {
            key(out, true, "event_type");
            str_json(out, record.event_type);
            key(out, false, "event_id");
            uuid_text_json(out, &ids.event_id);
            key(out, false, "timestamp");
            str_json(out, timestamp);
            key(out, false, "payload");
            payload(out)?;
            key(out, false, "event_version");
            str_json(out, record.published_version);
            key(out, false, "aggregate_type");
            str_json(out, record.aggregate_type);
            key(out, false, "aggregate_id");
            str_json(out, record.aggregate_id);
            key(out, false, "sequence");
            u64_json(out, record.sequence);
            key(out, false, "global_position");
            u64_json(out, record.global_position);
            key(out, false, "correlation_id");
            uuid_text_json(out, &ids.correlation_id);
            key(out, false, "causation_id");
            opt_uuid_text_json(out, ids.causation_id.as_ref());
            key(out, false, "source");
            str_json(out, record.source);
            key(out, false, "user_id");
            match record.user_id {
                Some(u) => str_json(out, u),
                None => out.extend_from_slice(b"null"),
            }
        }
        WireFormat::Gacp => {
            key(out, true, "eventId");
            uuid_text_json(out, &ids.event_id);
            key(out, false, "eventType");
            str_json(out, record.event_type);
            key(out, false, "eventVersion");
            str_json(out, record.published_version);
            key(out, false, "timestamp");
            str_json(out, timestamp);
            key(out, false, "correlationId");
            uuid_text_json(out, &ids.correlation_id);
            // zod `.optional()`: absent, never null.
            if let Some(c) = &ids.causation_id {
                key(out, false, "causationId");
                uuid_text_json(out, c);
            }
            key(out, false, "source");
            str_json(out, record.source);
            // `userId: z.string().uuid().optional()`: only a UUID may appear here.
            if let Some(u) = record.user_id.and_then(|u| Uuid::parse_str(u).ok()) {
                key(out, false, "userId");
                uuid_json(out, u);
            }
            // `sessionId: z.string().uuid().optional()`.
            if let Some(session) = record.session_id {
                key(out, false, "sessionId");
                uuid_json(out, session);
            }
            // `auditContext: { ipAddress?, userAgent?, complianceFlags: [] }.optional()`.
            if let Some(audit) = record.audit_context {
                key(out, false, "auditContext");
                serde_json::to_writer(&mut *out, audit).expect("an audit context always encodes");
            }
            key(out, false, "payload");
            payload(out)?;
        }
        WireFormat::Coworking => {
            key(out, true, "eventId");
            uuid_text_json(out, &ids.event_id);
            key(out, false, "eventType");
            str_json(out, record.event_type);
            key(out, false, "occurredAt");
            str_json(out, timestamp);
            key(out, false, "data");
            payload(out)?;
        }
    }
    out.push(b'}');
    Ok(())
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

/// What a message carries as its payload.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload {
    /// The record's own, written by its aggregate type's payload writer
    /// (`TopicCatalog::payload_writer`) from the plain (or opened) codec bytes.
    Own(WritePayloadFn),
    /// `{"erased":true}`: an encrypted payload whose data subject was forgotten. The message
    /// stays (offsets never move); only its payload is gone (docs/security.md).
    Erased,
    /// `{"redacted":true}`: an encrypted payload on a topic configured to carry redacted
    /// payloads (`TopicPayloads::Redacted`).
    Redacted,
}

/// Renders one record as the message at `(partition, offset)` of the arena's topic with
/// `payload`, its own payload through `transcoder` (see `super::transcode`). The value is
/// written into `scratch` (reused from message to message), then the
/// value, the key and the header values are copied into the arena's current block: no
/// allocation of the message's own (see `super::message`).
#[allow(clippy::too_many_arguments)] // the reader's reused buffers, then the message's parts
pub(crate) fn message(
    scratch: &mut Vec<u8>,
    arena: &mut MessageArena,
    transcoder: &mut Transcoder,
    payload: Payload,
    format: WireFormat,
    partition: u32,
    offset: u64,
    record: &Fields<'_>,
) -> Result<Message, TopicError> {
    scratch.clear();
    let ids = IdTexts::new(record);
    envelope_with(
        format,
        record,
        &ids,
        |out| match payload {
            Payload::Own(write_payload) => transcoder.write(
                write_payload,
                record.aggregate_type,
                record.event_type,
                record.event_version,
                record.payload,
                out,
            ),
            Payload::Erased => {
                out.extend_from_slice(br#"{"erased":true}"#);
                Ok(())
            }
            Payload::Redacted => {
                out.extend_from_slice(br#"{"redacted":true}"#);
                Ok(())
            }
        },
        scratch,
    )
    .map_err(|source| TopicError::Render {
        position: record.global_position,
        source,
    })?;
    // The headers' bytes: three UUIDs, two numbers of at most 20 digits, three strings.
    let bytes = scratch.len()
        + record.aggregate_id.len()
        + record.event_type.len()
        + record.published_version.len()
        + record.aggregate_type.len()
        + 3 * uuid::fmt::Hyphenated::LENGTH
        + 2 * 20;
    arena.begin(bytes);
    arena.value(scratch);
    arena.key(record.aggregate_id);
    write_headers(arena, record, &ids);
    Ok(arena.finish(MessageMeta {
        partition,
        offset,
        timestamp: record.timestamp,
        event_id: record.event_id,
        sequence: record.sequence,
        global_position: record.global_position,
    }))
}

/// The headers of a message, in [`HEADER_NAMES`] order. `causation_id` has a null value
/// when absent (Kafka headers allow null values; the header is always present, so a reader
/// can rely on the set of names).
fn write_headers(arena: &mut MessageArena, record: &Fields<'_>, ids: &IdTexts) {
    arena.header(Some(Some(IdTexts::str(&ids.event_id))));
    arena.header(Some(Some(record.event_type)));
    arena.header(Some(Some(record.published_version)));
    arena.header(Some(Some(record.aggregate_type)));
    arena.header_u64(record.sequence);
    arena.header_u64(record.global_position);
    arena.header(Some(Some(IdTexts::str(&ids.correlation_id))));
    arena.header(Some(ids.causation_id.as_ref().map(IdTexts::str)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde::Serialize;
    use serde_json::Value;

    // The envelopes as serde structs: what the hand-written `envelope` was derived from and
    // is held to, byte for byte.
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

    /// The headers `message` writes for `fields`, owned.
    fn header_list(fields: &Fields<'_>) -> Vec<(&'static str, Option<String>)> {
        let mut arena = MessageArena::new("t");
        arena.begin(0);
        arena.value(b"{}");
        arena.key(fields.aggregate_id);
        write_headers(&mut arena, fields, &IdTexts::new(fields));
        let m = arena.finish(MessageMeta {
            partition: 0,
            offset: 0,
            timestamp: fields.timestamp,
            event_id: fields.event_id,
            sequence: fields.sequence,
            global_position: fields.global_position,
        });
        m.headers()
            .map(|(n, v)| (n, v.map(str::to_owned)))
            .collect()
    }

    fn reference(format: WireFormat, record: &Record, payload: &Value) -> Vec<u8> {
        let timestamp = rfc3339(record.timestamp);
        match format {
            WireFormat::Catalog => serde_json::to_vec(&CatalogEnvelope {
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
            }),
            WireFormat::Gacp => serde_json::to_vec(&GacpEnvelope {
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
            }),
            WireFormat::Coworking => serde_json::to_vec(&CoworkingEnvelope {
                event_id: record.event_id,
                event_type: &record.event_type,
                occurred_at: &timestamp,
                data: payload,
            }),
        }
        .unwrap()
    }

    /// The hand-written envelope is the serde structs' bytes, for every format and every
    /// optional part present or absent (causation, a UUID / non-UUID / absent user id, a
    /// session, an audit context), with strings that need escaping; and a record read from
    /// its stored bytes renders the same fields as the decoded record.
    #[test]
    fn envelopes_are_the_serde_structs_bytes() {
        let payload: Value = serde_json::json!({"b": [1, 2.5, null], "a": "quote \" and \u{1}"});
        let base = Record {
            sequence: 4,
            global_position: 99,
            timestamp: crate::journal::micros_to_time(1_767_225_600_123_456),
            event_id: Uuid::from_u128(11),
            correlation_id: Uuid::from_u128(12),
            causation_id: Some(Uuid::from_u128(13)),
            prev_hash: [0; 32],
            aggregate_type: "Plant".into(),
            aggregate_id: "p-\"1\"".into(),
            event_type: "plant.created".into(),
            event_version: "1.0".into(),
            source: "evershard\n".into(),
            user_id: Some("3F1C0D9E-5A1B-4C7E-9A43-0B6F1F1F2A10".into()),
            session_id: None,
            audit_context: None,
            at_rest: crate::journal::AtRest::Plain,
            payload: vec![1],
        };
        let records = [
            base.clone(),
            Record {
                causation_id: None,
                user_id: Some("not-a-uuid".into()),
                ..base.clone()
            },
            Record {
                user_id: None,
                session_id: Some(Uuid::from_u128(14)),
                audit_context: Some(
                    evershard_model::AuditContext::new()
                        .ip_address("10.0.0.7".parse().unwrap())
                        .compliance_flag("GACP"),
                ),
                ..base.clone()
            },
        ];
        for record in &records {
            let bytes = record.encode();
            let view = RecordView::check(&bytes).unwrap();
            for format in [WireFormat::Catalog, WireFormat::Gacp, WireFormat::Coworking] {
                let want = reference(format, record, &payload);
                let write = |out: &mut Vec<u8>| serde_json::to_writer(out, &payload);
                let mut got = Vec::new();
                envelope(format, &Fields::from(record), write, &mut got).unwrap();
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(want.clone()).unwrap(),
                    "{format:?} {record:?}"
                );
                if let Some(fields) = Fields::from_view(&view) {
                    let mut from_view = Vec::new();
                    envelope(format, &fields, write, &mut from_view).unwrap();
                    assert_eq!(from_view, want, "{format:?} from the view");
                    assert_eq!(header_list(&fields), header_list(&Fields::from(record)));
                } else {
                    assert_eq!(view.format, crate::journal::record::RECORD_FORMAT_V2);
                }
            }
        }
    }

    /// The stack formatter writes what chrono writes, for ordinary and edge timestamps
    /// (a fixed pseudo-random sequence over years 0..=9999, plus the ends of the range and
    /// years chrono writes with a sign).
    #[test]
    fn rfc3339_on_the_stack_equals_chrono() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let lo = chrono::Utc
            .with_ymd_and_hms(0, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp_micros();
        let hi = chrono::Utc
            .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
            .unwrap()
            .timestamp_micros()
            + 999_999;
        let mut cases = vec![lo, hi, 0, 1, -1, lo - 1, hi + 1, 1_767_225_600_123_456];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(lo + (x % (hi - lo + 1) as u64) as i64);
        }
        for micros in cases {
            let t = crate::journal::micros_to_time(micros);
            let mut buf = [0u8; RFC3339_BYTES];
            let mut spill = String::new();
            assert_eq!(
                rfc3339_into(t, &mut buf, &mut spill),
                rfc3339(t),
                "{micros}"
            );
        }
    }
}
