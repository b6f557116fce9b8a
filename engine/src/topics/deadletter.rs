//! The dead-letter topic `dlq.events.v1`.
//!
//! A dead letter is appended to the journal as an event of an internal aggregate type,
//! `evershard.DeadLetter` (one stream per original message key), through the same group
//! commit as every command: so it is durable (acknowledged after fdatasync), hash-chained,
//! verified by `evershard verify`, exported with everything else, and indexed into its topic
//! by the same indexer, at offsets that never change. No second storage path exists for it.

use super::message::{MessageArena, MessageMeta};
use super::render::HEADER_NAMES;
use super::{Message, TopicError, DLQ_TOPIC};
use crate::journal::record::Record;
use evershard_model::CodecError;
use serde::{Deserialize, Serialize};

/// The internal aggregate type of dead-letter records.
pub const DEAD_LETTER_TYPE: &str = "evershard.DeadLetter";
/// The event type of a dead-letter record.
pub const DEAD_LETTER_EVENT: &str = "event.dead_lettered";

/// Bytes of a handler's error text a dead letter keeps; a longer one is cut (at a character
/// boundary) and says so.
pub const DEAD_LETTER_ERROR_BYTES_MAX: usize = 4096;

/// The key of the value a dead letter holds in place of its original message's value when
/// it cannot hold that one (see [`DeadLetter::value_kept`]).
const VALUE_NOT_KEPT: &str = "evershardValueNotKept";

/// Why a message was dead-lettered (the seed's reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadLetterReason {
    /// The handler said the message is invalid: retrying cannot help.
    #[serde(rename = "validation_error")]
    Validation,
    /// The handler failed on every attempt.
    #[serde(rename = "processing_error")]
    Processing,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Validation => "validation_error",
            DeadLetterReason::Processing => "processing_error",
        }
    }
}

/// What the dead-letter topic records about a message that could not be handled. Stored with
/// the payload codec (append-only fields, like every stored event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    /// The handler's error text of the last attempt.
    pub error: String,
    /// Attempts made (1 for a validation error).
    pub attempts: u32,
    pub consumer_group: String,
    pub original_topic: String,
    pub partition: u32,
    pub offset: u64,
    /// The original message: key, headers (name, value or none), value as JSON text.
    pub key: String,
    pub headers: Vec<(String, Option<String>)>,
    pub value_json: String,
}

impl DeadLetter {
    pub(crate) fn new(
        reason: DeadLetterReason,
        error: String,
        attempts: u32,
        group: &str,
        message: &Message,
    ) -> Self {
        Self {
            reason,
            error,
            attempts,
            consumer_group: group.to_owned(),
            original_topic: message.topic().to_owned(),
            partition: message.partition,
            offset: message.offset,
            key: message.key().to_owned(),
            headers: message
                .headers()
                .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
                .collect(),
            value_json: String::from_utf8(message.value().to_vec()).expect("JSON is UTF-8"),
        }
    }

    /// Cuts the error text to [`DEAD_LETTER_ERROR_BYTES_MAX`].
    pub(crate) fn bound_error(&mut self) {
        if self.error.len() <= DEAD_LETTER_ERROR_BYTES_MAX {
            return;
        }
        let total = self.error.len();
        let mut cut = DEAD_LETTER_ERROR_BYTES_MAX;
        while !self.error.is_char_boundary(cut) {
            cut -= 1;
        }
        self.error.truncate(cut);
        self.error
            .push_str(&format!(" [cut: {total} bytes in all]"));
    }

    /// The value a dead letter holds when it does not hold its message's: why, and the
    /// event's id. Its original stays in its topic (kept forever), where redrive reads it.
    pub(crate) fn value_not_kept(why: &str, message: &Message) -> String {
        serde_json::json!({
            VALUE_NOT_KEPT: why,
            "eventId": message.event_id.to_string(),
            "bytes": message.value().len(),
        })
        .to_string()
    }

    /// Whether the letter holds its original message's value. It does not for an event
    /// encrypted at rest (a plain copy would outlive its subject's erasure), nor for a value
    /// too large for a dead letter: then [`crate::Engine::redrive`] reads the original from
    /// its topic. (Letters written before 2026-11-28 mark an encrypted event's value with
    /// the keys `redacted` and `eventId` alone.)
    pub fn value_kept(&self) -> bool {
        match serde_json::from_str::<serde_json::Value>(&self.value_json) {
            Ok(serde_json::Value::Object(map)) => {
                let redacted =
                    map.len() == 2 && map.contains_key("redacted") && map.contains_key("eventId");
                !(map.contains_key(VALUE_NOT_KEPT) || redacted)
            }
            _ => true,
        }
    }

    /// The JSON payload of the dead-letter message (camelCase, like the GACP envelope
    /// around it).
    pub fn payload_json(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect();
        let value: serde_json::Value =
            serde_json::from_str(&self.value_json).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "reason": self.reason.as_str(),
            "error": self.error,
            "attempts": self.attempts,
            "consumerGroup": self.consumer_group,
            "originalTopic": self.original_topic,
            "partition": self.partition,
            "offset": self.offset,
            "originalMessage": {
                "key": self.key,
                "headers": headers,
                "value": value,
            },
        })
    }

    /// Reads the dead letter a message of `dlq.events.v1` carries.
    pub fn from_message(message: &Message) -> Result<DeadLetter, TopicError> {
        let bad = |reason: &str| TopicError::NotDeadLetter {
            reason: reason.to_owned(),
        };
        if message.topic() != DLQ_TOPIC || message.aggregate_type() != DEAD_LETTER_TYPE {
            return Err(bad("not a message of dlq.events.v1"));
        }
        let value = message.value_json();
        let p = value.get("payload").ok_or_else(|| bad("no payload"))?;
        let s = |name: &str| {
            p.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| bad(name))
        };
        let n = |name: &str| {
            p.get(name)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| bad(name))
        };
        let original = p
            .get("originalMessage")
            .ok_or_else(|| bad("originalMessage"))?;
        let reason = match s("reason")?.as_str() {
            "validation_error" => DeadLetterReason::Validation,
            "processing_error" => DeadLetterReason::Processing,
            _ => return Err(bad("reason")),
        };
        let headers = original
            .get("headers")
            .and_then(|h| h.as_object())
            .ok_or_else(|| bad("headers"))?;
        // The original header order (render::headers) is fixed; an object keeps names only.
        let headers = HEADER_NAMES
            .iter()
            .filter(|name| headers.contains_key(**name))
            .map(|name| (name.to_string(), headers[*name].as_str().map(str::to_owned)))
            .collect();
        Ok(DeadLetter {
            reason,
            error: s("error")?,
            attempts: n("attempts")? as u32,
            consumer_group: s("consumerGroup")?,
            original_topic: s("originalTopic")?,
            partition: n("partition")? as u32,
            offset: n("offset")?,
            key: original
                .get("key")
                .and_then(|k| k.as_str())
                .ok_or_else(|| bad("key"))?
                .to_owned(),
            headers,
            value_json: original
                .get("value")
                .map(|v| v.to_string())
                .ok_or_else(|| bad("value"))?,
            // (serde_json writes an object's keys in order: the text may differ from the
            // original bytes in key order only.)
        })
    }

    /// The original message, as the handler first saw it.
    pub fn original_message(&self) -> Message {
        let header = |name: &str| {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut arena = MessageArena::new(&self.original_topic);
        arena.begin(self.value_json.len() + self.key.len() + 256);
        arena.value(self.value_json.as_bytes());
        arena.key(&self.key);
        for name in HEADER_NAMES {
            let value = self
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_deref());
            arena.header(value);
        }
        arena.finish(MessageMeta {
            partition: self.partition,
            offset: self.offset,
            timestamp: serde_json::from_str::<serde_json::Value>(&self.value_json)
                .ok()
                .and_then(|v| {
                    ["timestamp", "occurredAt"]
                        .iter()
                        .find_map(|k| v.get(*k).and_then(|t| t.as_str()).map(str::to_owned))
                })
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_default(),
            event_id: header("event_id").parse().unwrap_or_default(),
            sequence: header("sequence").parse().unwrap_or_default(),
            global_position: header("global_position").parse().unwrap_or_default(),
        })
    }
}

pub(crate) fn route(_record: &Record) -> Result<&'static str, CodecError> {
    Ok(DLQ_TOPIC)
}

pub(crate) fn write_payload(
    event_type: &str,
    event_version: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let json = self::payload(event_type, event_version, payload)?;
    serde_json::to_writer(out, &json).expect("a JSON value always encodes");
    Ok(())
}

pub(crate) fn payload(
    _event_type: &str,
    _event_version: &str,
    payload: &[u8],
) -> Result<serde_json::Value, CodecError> {
    let letter: DeadLetter = evershard_model::codec::decode(payload)?;
    Ok(letter.payload_json())
}
