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
    /// The user's session (the seed's `sessionId`, a UUID): stored with every event.
    #[serde(default)]
    pub session_id: Option<Uuid>,
    /// Where the command came from and under which compliance rules (the seed's
    /// `auditContext`): stored with every event.
    #[serde(default)]
    pub audit_context: Option<AuditContext>,
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
            session_id: None,
            audit_context: None,
            idempotency_key: None,
        }
    }
}

/// The seed's `auditContext` (event-architecture-kafka.md 3.1, ALCOA+ "attributable"): the
/// client's address and agent and the compliance rules the action fell under. Stored with
/// each event of the command (record format 2) and published in the GACP envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditContext {
    /// The client's IP address (`z.string().ip()`: typed, so nothing else can be stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// E.g. `"GACP"`, `"21CFR11"`; at most [`AuditContext::COMPLIANCE_FLAGS_MAX`], each at
    /// most [`AuditContext::COMPLIANCE_FLAG_BYTES_MAX`] bytes.
    #[serde(default)]
    pub compliance_flags: Vec<String>,
}

impl AuditContext {
    /// Compliance flags one event carries at most.
    pub const COMPLIANCE_FLAGS_MAX: usize = 32;
    /// Bytes of one compliance flag at most.
    pub const COMPLIANCE_FLAG_BYTES_MAX: usize = 255;

    pub fn new() -> Self {
        Self::default()
    }
    pub fn ip_address(mut self, ip: std::net::IpAddr) -> Self {
        self.ip_address = Some(ip);
        self
    }
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }
    pub fn compliance_flag(mut self, flag: impl Into<String>) -> Self {
        self.compliance_flags.push(flag.into());
        self
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
    pub fn session_id(mut self, session: Uuid) -> Self {
        self.session_id = Some(session);
        self
    }
    pub fn audit_context(mut self, context: AuditContext) -> Self {
        self.audit_context = Some(context);
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
    /// From the command's [`Metadata::session_id`] (records of format 2; `None` before).
    #[serde(default)]
    pub session_id: Option<Uuid>,
    /// From the command's [`Metadata::audit_context`] (records of format 2).
    #[serde(default)]
    pub audit_context: Option<AuditContext>,
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
            session_id: self.session_id,
            audit_context: self.audit_context,
            payload: f(self.payload),
        }
    }
}
