use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who and what caused a command: copied into every event the command produces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Ties together everything one business flow caused (a saga shares one).
    pub correlation_id: Uuid,
    /// The event or command that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// The producing service or tool, e.g. `"evershard-demo"`.
    pub source: String,
    pub user_id: Option<String>,
    /// The client's idempotency key (a UUID, sent as `X-Idempotency-Key`): a repeat of the
    /// same key for the same aggregate type within the engine's retention window answers the
    /// original result without executing again. Not stored in the event records.
    #[serde(default)]
    pub idempotency_key: Option<Uuid>,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            source: "evershard".to_owned(),
            user_id: None,
            idempotency_key: None,
        }
    }
}

impl Metadata {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            ..Self::default()
        }
    }
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = id;
        self
    }
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }
    pub fn user_id(mut self, user: impl Into<String>) -> Self {
        self.user_id = Some(user.into());
        self
    }
    /// Makes the command idempotent under `key`: see [`Metadata::idempotency_key`].
    pub fn idempotency_key(mut self, key: Uuid) -> Self {
        self.idempotency_key = Some(key);
        self
    }
}

/// A committed event as the journal stores it: the envelope of domain.md around the payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope<E> {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Per aggregate, from 1, without gaps.
    pub sequence: u64,
    /// Total order of all committed events in this store, from 1.
    pub global_position: u64,
    pub timestamp: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub source: String,
    pub user_id: Option<String>,
    pub payload: E,
}

impl<E> EventEnvelope<E> {
    /// The same envelope around another payload (decoded, upcast or rendered).
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> EventEnvelope<F> {
        EventEnvelope {
            event_id: self.event_id,
            event_type: self.event_type,
            event_version: self.event_version,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            global_position: self.global_position,
            timestamp: self.timestamp,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            source: self.source,
            user_id: self.user_id,
            payload: f(self.payload),
        }
    }
}
