//! The journal topic's messages (docs/scale-out.md, "Replication: the journal topic"): a
//! [`Claim`] of a partition, or one command [`Batch`], as JSON in the message value, with the
//! kind, node and claim epoch also in headers so that any Kafka tool can read the partition's
//! order of claims and batches.
//!
//! A batch carries what the local append is made of (the events as decided, the timer and
//! idempotency writes), not the stored record bytes: a record's bytes hold its node-local
//! global position, so every node stores the batch under its own positions and its own hash
//! chain, computed from the same events in the same per-stream order.

use crate::journal::{AppendRequest, NewEvent, WriteOp};
use chrono::{DateTime, Utc};
use evershard_model::{AuditContext, StreamId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Header names of every journal-topic message.
pub const HEADER_KIND: &str = "evershard.kind";
pub const HEADER_NODE: &str = "evershard.node";
pub const HEADER_EPOCH: &str = "evershard.epoch";

/// One message of a journal-topic partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Claim(Claim),
    Batch(Batch),
}

/// "From here on, `node` writes this partition under `epoch`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    /// Where the node takes forwarded commands (the example service's address); the
    /// owner hint of `NotOwner`.
    pub endpoint: String,
    pub epoch: u64,
}

/// The events (and keyspace writes) of one command for one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub node: String,
    pub epoch: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The sequence of the first event; for a batch of no events (a timer correction), the
    /// stream's version it was decided on plus one.
    pub first_sequence: u64,
    pub events: Vec<WireEvent>,
    pub writes: Vec<WireWrite>,
}

impl Batch {
    pub fn stream(&self) -> StreamId {
        StreamId::new(self.aggregate_type.clone(), self.aggregate_id.clone())
    }

    /// The last sequence the batch writes (its first minus one when it has no events).
    pub fn last_sequence(&self) -> u64 {
        (self.first_sequence + self.events.len() as u64).saturating_sub(1)
    }

    pub fn from_request(node: &str, epoch: u64, request: &AppendRequest) -> Batch {
        Batch {
            node: node.to_owned(),
            epoch,
            aggregate_type: request.stream.aggregate_type.clone(),
            aggregate_id: request.stream.aggregate_id.clone(),
            first_sequence: request.expected_version + 1,
            events: request.events.iter().map(WireEvent::from).collect(),
            writes: request.extra_writes.iter().map(WireWrite::from).collect(),
        }
    }

    /// The local append this batch is, on any node.
    pub fn to_request(&self) -> Result<AppendRequest, WireError> {
        let events = self
            .events
            .iter()
            .map(WireEvent::to_event)
            .collect::<Result<Vec<_>, _>>()?;
        let mut request =
            AppendRequest::new(self.stream(), self.first_sequence.saturating_sub(1), events);
        request.extra_writes = self
            .writes
            .iter()
            .map(WireWrite::to_op)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(request)
    }
}

/// A [`NewEvent`] on the wire: times in microseconds, the payload in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    pub timestamp_micros: i64,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub source: String,
    pub user_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub audit_context: Option<AuditContext>,
    pub payload_hex: String,
}

impl From<&NewEvent> for WireEvent {
    fn from(e: &NewEvent) -> Self {
        WireEvent {
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            event_version: e.event_version.clone(),
            timestamp_micros: e.timestamp.timestamp_micros(),
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            source: e.source.clone(),
            user_id: e.user_id.clone(),
            session_id: e.session_id,
            audit_context: e.audit_context.clone(),
            payload_hex: to_hex(&e.payload),
        }
    }
}

impl WireEvent {
    fn to_event(&self) -> Result<NewEvent, WireError> {
        Ok(NewEvent {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            timestamp: DateTime::<Utc>::from_timestamp_micros(self.timestamp_micros)
                .ok_or(WireError::Time(self.timestamp_micros))?,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            source: self.source.clone(),
            user_id: self.user_id.clone(),
            session_id: self.session_id,
            audit_context: self.audit_context.clone(),
            payload: from_hex(&self.payload_hex)?,
        })
    }
}

/// A [`WriteOp`] on the wire, keys and values in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WireWrite {
    Put { key: String, value: String },
    Remove { key: String },
}

impl From<&WriteOp> for WireWrite {
    fn from(op: &WriteOp) -> Self {
        match op {
            WriteOp::Put { key, value } => WireWrite::Put {
                key: to_hex(key),
                value: to_hex(value),
            },
            WriteOp::Remove { key } => WireWrite::Remove { key: to_hex(key) },
        }
    }
}

impl WireWrite {
    fn to_op(&self) -> Result<WriteOp, WireError> {
        Ok(match self {
            WireWrite::Put { key, value } => WriteOp::Put {
                key: from_hex(key)?,
                value: from_hex(value)?,
            },
            WireWrite::Remove { key } => WriteOp::Remove {
                key: from_hex(key)?,
            },
        })
    }
}

/// Why a journal-topic message is not an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("not a journal-topic entry: {0}")]
    Json(String),
    #[error("odd-length or non-hex string")]
    Hex,
    #[error("timestamp {0} µs is out of range")]
    Time(i64),
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("entries always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, WireError> {
        serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Claim(_) => "claim",
            Entry::Batch(_) => "batch",
        }
    }

    pub fn node(&self) -> &str {
        match self {
            Entry::Claim(c) => &c.node,
            Entry::Batch(b) => &b.node,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            Entry::Claim(c) => c.epoch,
            Entry::Batch(b) => b.epoch,
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn from_hex(s: &str) -> Result<Vec<u8>, WireError> {
    if s.len() % 2 != 0 {
        return Err(WireError::Hex);
    }
    let digit = |c: u8| -> Result<u8, WireError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(WireError::Hex),
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert_eq!(from_hex("abc"), Err(WireError::Hex));
        assert_eq!(from_hex("zz"), Err(WireError::Hex));
    }

    #[test]
    fn a_request_survives_the_wire() {
        let event = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "Added".into(),
            event_version: "1".into(),
            timestamp: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            source: "test".into(),
            user_id: Some("u".into()),
            session_id: None,
            audit_context: None,
            payload: vec![0, 1, 2, 255],
        };
        let mut request = AppendRequest::new(StreamId::new("T", "a-1"), 4, vec![event]);
        request.extra_writes = vec![
            WriteOp::Put {
                key: vec![1, 2],
                value: vec![3],
            },
            WriteOp::Remove { key: vec![9] },
        ];
        let entry = Entry::Batch(Batch::from_request("n1", 7, &request));
        let back = Entry::decode(&entry.encode()).unwrap();
        assert_eq!(back, entry);
        let Entry::Batch(batch) = back else {
            unreachable!()
        };
        assert_eq!(batch.first_sequence, 5);
        assert_eq!(batch.last_sequence(), 5);
        assert_eq!(batch.to_request().unwrap(), request);
    }
}
