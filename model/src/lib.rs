//! The aggregate model of evershard.
//!
//! This crate is deliberately free of storage and actors: `evershard-aggregates` depends on it
//! and must never pull in sled or ractor. The engine re-exports everything here as
//! `evershard_engine::model`.
//!
//! - [`Aggregate`]: typed Command, Event, State and domain Error. `decide` holds all business
//!   logic and is pure; `apply` folds an event into the state and holds none.
//! - [`DomainEvent`]: an event declares its `event_type`, `event_version` and outbound topic;
//!   `#[derive(DomainEvent)]` writes that from `#[event(..)]` attributes on the enum.
//! - [`EventEnvelope`]: what the journal stores around every event; [`StreamId`]: which
//!   aggregate instance's stream it belongs to.
//! - [`CommandGuard`]: rules that span aggregate instances, checked before a command is decided.
//! - [`codec`]: the one place that turns values into bytes, behind a format byte: MessagePack
//!   with named fields for events (format 2), bincode for snapshot states (format 1).
//! - [`Money`]: integer minor units, never a binary float.
//! - [`Saga`]: a process manager, an aggregate whose events name the commands it sends
//!   ([`saga`], [`step_key`]: the deterministic idempotency key of a saga step).
//! - [`testing`], the given/when/then helper: `given(events).when(command).then_expect_events(..)`.
//! - [`DemoRng`] and [`Workload`]: deterministic command generators for the demo and benches.
//! - [`from_variants!`] and [`json_payload`]: the `From` impls and the outbound JSON every
//!   aggregate's command and event enums need.

// Lets `#[derive(DomainEvent)]`'s `::evershard_model::..` paths resolve inside this crate too.
extern crate self as evershard_model;

mod clock;
pub mod codec;
mod envelope;
mod guard;
pub mod json;
mod money;
pub mod saga;
mod stream;
pub mod testing;
mod workload;

pub use clock::{truncate_to_micros, Clock, ManualClock, SystemClock};
pub use codec::CodecError;
pub use envelope::{AuditContext, EventEnvelope, Metadata};
/// `#[derive(DomainEvent)]`: see [`evershard_derive`]'s docs for the `#[event(..)]` keys.
pub use evershard_derive::DomainEvent;
pub use guard::CommandGuard;
pub use money::{Currency, Money, MoneyParseError};
pub use saga::{step_key, Outbound, Saga};
pub use stream::{StreamId, StreamIdError, AGGREGATE_ID_BYTES_MAX, AGGREGATE_TYPE_BYTES_MAX};
pub use workload::{DemoRng, Workload, WorkloadVisitor};

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// A domain event: an immutable fact. Implemented by each aggregate's event enum, usually with
/// `#[derive(DomainEvent)]`:
///
/// ```ignore
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
/// #[event(topic = TOPIC, version = PLANT_EVENT_VERSION, payload_json = json_without_nulls)]
/// pub enum PlantEvent {
///     #[event(name = "plant.created", version = PLANT_CREATED_VERSION, payload_json = plant_created_json)]
///     PlantCreated(PlantCreated),
///     #[event(name = "plant.stage_changed")] // version, topic, payload_json: the enum's
///     PlantStageChanged(PlantStageChanged),
///     // ...
/// }
/// ```
///
/// A variant without `name` publishes its own name as `event_type`
/// (`ProductStockEvent::InventoryUpdated` is `"InventoryUpdated"`), and without `payload_json`
/// its payload through [`json_payload`]. See `evershard_derive` for every key.
///
/// The enum is stored with [`codec::encode`] (format 2: fields and variants by name), so adding
/// an `Option` or `#[serde(default)]` field, removing a field, or adding a variant never breaks
/// loading. A rename or a change of meaning or type gets a new `event_version` and an upcaster
/// in [`Aggregate::decode_event`]. Records written before format 2 (format 1, positional) decode
/// with the current types too, so for an event type that has format-1 records in a journal,
/// fields stay append-only unless its old shape is kept for them (as Plant's and Payment's
/// `legacy` modules do).
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// The contract name, exactly as the seed documents spell it (`StockReserved`,
    /// `plant.created`, ...).
    fn event_type(&self) -> &'static str;
    /// The contract version, "major.minor".
    fn event_version(&self) -> &'static str;
    /// The outbound topic this event is published to (`business.inventory`, ...).
    fn topic(&self) -> &'static str;
    /// The topic of the events stored as `event_type`, without decoding one: lets the topic
    /// indexer route a record by its header alone. `None` means "decode and ask
    /// [`DomainEvent::topic`]" (the default); `#[derive(DomainEvent)]` answers for every
    /// variant.
    fn topic_of(event_type: &str) -> Option<&'static str>
    where
        Self: Sized,
    {
        let _ = event_type;
        None
    }
    /// The version of the events stored as `event_type` once decoded: what
    /// [`DomainEvent::event_version`] answers for them, older stored versions included (an
    /// upcaster in [`Aggregate::decode_event`] brings them to it). Topic messages carry it, as
    /// the seed's `EventMigrator` stamps a migrated event with the version it migrated to, so
    /// that the version a consumer reads names the payload's shape. `None`: the stored
    /// version (the default); `#[derive(DomainEvent)]` answers for every variant.
    fn version_of(event_type: &str) -> Option<&'static str>
    where
        Self: Sized,
    {
        let _ = event_type;
        None
    }
    /// The JSON payload of the outbound contract: the seed's field names and JSON types.
    fn payload_json(&self) -> serde_json::Value;
    /// [`DomainEvent::payload_json`] as compact JSON bytes appended to `out`: exactly the
    /// bytes `serde_json::to_writer(out, &self.payload_json())` writes. Topic messages are
    /// rendered through it. `#[derive(DomainEvent)]` writes a variant whose payload is
    /// [`json_payload`]'s straight from the payload struct ([`json::write_json_payload`]: no
    /// `Value` tree); the default goes through `payload_json`.
    fn write_payload_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, &self.payload_json()).expect("a JSON value always encodes");
    }
}

/// What `decide` may know besides the state and the command. Passing time in (rather than
/// reading the clock) keeps `decide` pure and tests deterministic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecideContext {
    /// The id of the aggregate instance the command is addressed to.
    pub aggregate_id: String,
    /// The engine's clock when the command is handled, at microsecond resolution.
    pub now: DateTime<Utc>,
}

impl DecideContext {
    /// `now` is truncated to the store's resolution (microseconds): see [`truncate_to_micros`].
    pub fn new(aggregate_id: impl Into<String>, now: DateTime<Utc>) -> Self {
        Self {
            aggregate_id: aggregate_id.into(),
            now: truncate_to_micros(now),
        }
    }
}

/// An event-sourced aggregate type.
///
/// The engine guarantees that for one aggregate instance `decide` and `apply` run one command
/// at a time, in arrival order, and that the events `decide` returns are appended atomically
/// before they are applied.
pub trait Aggregate: Send + Sync + 'static {
    /// The aggregate type's stable name, stored in every record (`"ProductStock"`).
    const TYPE: &'static str;
    /// Schema version of [`Aggregate::State`] as stored in snapshots. Bump it whenever the
    /// state's shape changes: older snapshots are then skipped and the state is replayed.
    const STATE_SCHEMA_VERSION: u32 = 1;

    type State: Default
        + Clone
        + Debug
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// `Serialize` gives a command a stable encoding: the engine digests it to tell a repeat
    /// of an idempotency key with the same body from one with another body.
    type Command: Debug + Clone + Serialize + Send + Sync + 'static;
    type Event: DomainEvent;
    type Error: std::error::Error + Clone + PartialEq + Send + Sync + 'static;

    /// All business logic: the events a command produces, or a typed rejection. Pure: no I/O,
    /// no clock (use `ctx.now`), no randomness except ids derived from the command.
    /// An empty `Ok(vec![])` is a valid answer (an idempotent repeat).
    fn decide(
        state: &Self::State,
        command: &Self::Command,
        ctx: &DecideContext,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. No business logic and no rejections: the event is
    /// already a fact.
    fn apply(state: &mut Self::State, event: &Self::Event);

    /// The invariants every reachable state holds. The engine asserts them after each apply
    /// in debug builds; property tests assert them always.
    fn check_invariants(_state: &Self::State) -> Result<(), String> {
        Ok(())
    }

    /// The idempotency key a command carries in its body, if its contract has one (Order's
    /// `CreateOrder.idempotency_key`). The engine uses it when the command's
    /// [`Metadata::idempotency_key`] is not set. Default: none.
    fn idempotency_key(_command: &Self::Command) -> Option<uuid::Uuid> {
        None
    }

    /// The command as its idempotency record sees it: the engine stores a SHA-256 of this
    /// (with the aggregate id) to tell a repeat of a key from its reuse for another command,
    /// in plain, for the key's retention window. A command that carries a secret of few
    /// possible values (a card's CVV, a PIN) returns a copy without it: an unsalted digest
    /// of a command whose other fields are published would give the secret away to anyone
    /// who tries every value. Default: the command itself.
    fn idempotency_view(command: &Self::Command) -> std::borrow::Cow<'_, Self::Command> {
        std::borrow::Cow::Borrowed(command)
    }

    /// When this aggregate next needs to act on its own, and what command the engine then
    /// sends it: a durable timer. The engine calls it on the state after every commit; when
    /// the deadline changed, it writes, moves or removes the timer entry in the same atomic
    /// batch as the events. At the deadline (or, after downtime, at start-up) the engine
    /// calls it again on the then current state and, if the deadline is due, executes the
    /// command through the normal command path. So the command is never stored: it is always
    /// the one the current state asks for. Firing is at-least-once; the command must be
    /// harmless when there is nothing to do (answer no events), and after it the deadline
    /// must lie in the future (or be `None`). Default: no timer.
    ///
    /// ```ignore
    /// fn next_timer(state: &ProductStockState) -> Option<(DateTime<Utc>, ProductStockCommand)> {
    ///     Some((state.next_deadline()?, ExpireReservations.into()))
    /// }
    /// ```
    fn next_timer(_state: &Self::State) -> Option<(DateTime<Utc>, Self::Command)> {
        None
    }

    /// The data subject whose data key encrypts this aggregate's payloads and snapshots when
    /// its type is declared sensitive (`EngineBuilder::sensitive`): forgetting the subject
    /// (`Engine::forget_subject`) erases them. Called on the state after the command's
    /// events are applied. Default `None`: the aggregate id is the subject. Appointment
    /// names its patient, so forgetting a patient erases all of their appointments.
    fn data_subject(_state: &Self::State) -> Option<String> {
        None
    }

    /// Decodes a stored payload. Override to upcast old `event_version`s of an event type; the
    /// default decodes the current shape and refuses any other major version.
    fn decode_event(
        event_type: &str,
        event_version: &str,
        payload: &[u8],
    ) -> Result<Self::Event, CodecError> {
        decode_current_event(event_type, event_version, payload)
    }

    /// Encodes an event for the journal. Paired with [`Aggregate::decode_event`].
    fn encode_event(event: &Self::Event) -> Vec<u8> {
        codec::encode(event)
    }

    /// Folds a sequence of events into a state, starting from `state`.
    fn replay<'a>(
        mut state: Self::State,
        events: impl IntoIterator<Item = &'a Self::Event>,
    ) -> Self::State {
        for event in events {
            Self::apply(&mut state, event);
        }
        state
    }
}

/// The default of [`Aggregate::decode_event`]: decodes the current shape of `E` and checks it
/// against the record's `event_type` and major `event_version`. An upcaster handles its old
/// versions first and hands everything else to this.
pub fn decode_current_event<E: DomainEvent>(
    event_type: &str,
    event_version: &str,
    payload: &[u8],
) -> Result<E, CodecError> {
    let event: E = codec::decode(payload)?;
    if event.event_type() != event_type {
        return Err(CodecError::Mismatch(format!(
            "record says {event_type}, payload decodes as {}",
            event.event_type()
        )));
    }
    if major(event.event_version()) != major(event_version) {
        return Err(CodecError::UnknownVersion {
            event_type: event_type.to_owned(),
            event_version: event_version.to_owned(),
        });
    }
    Ok(event)
}

fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

#[doc(hidden)]
pub mod __private {
    //! What `#[derive(DomainEvent)]` expands to, so a crate using the derive needs no direct
    //! dependency on these.
    pub use serde_json;
}

/// The outbound JSON of a payload struct: what [`DomainEvent::payload_json`] returns for one
/// event variant (`OrderEvent::OrderCreated(e) => json_payload(e)`).
///
/// # Panics
///
/// Only if `T` cannot be encoded as JSON at all (a map with non-string keys, a `Serialize`
/// impl that returns an error, ...). That is a programmer error in the payload type, never a
/// matter of the data: plain derived structs of strings, numbers, uuids, times, [`Money`] and
/// enums always encode (serde_json writes a non-finite float as `null` rather than failing).
pub fn json_payload<T: Serialize>(payload: &T) -> serde_json::Value {
    match serde_json::to_value(payload) {
        Ok(json) => json,
        Err(e) => panic!("{} is not JSON-encodable: {e}", std::any::type_name::<T>()),
    }
}

/// Writes `impl From<Payload> for Enum` for every variant of a command or event enum whose
/// variants each wrap one payload struct, so tests and callers can write `.into()`.
///
/// Two forms:
///
/// - `from_variants!(OrderCommand: CreateOrder, CancelOrder)`, where each variant is named
///   after its payload type (`OrderCommand::CreateOrder(CreateOrder)`);
/// - `from_variants!(PlantCommand { Create(CreatePlant), Harvest(HarvestPlant) })`, where the
///   variant names differ from the payload types.
///
/// Both generate, for each pair, `impl From<CreatePlant> for PlantCommand` returning
/// `PlantCommand::Create(value)`. The enum and payload types must be in scope at the call.
#[macro_export]
macro_rules! from_variants {
    ($enum:ident: $($variant:ident),+ $(,)?) => {
        $crate::from_variants!($enum { $($variant($variant)),+ });
    };
    ($enum:ident { $($variant:ident($payload:ty)),+ $(,)? }) => {
        $(impl ::core::convert::From<$payload> for $enum {
            fn from(value: $payload) -> Self {
                $enum::$variant(value)
            }
        })+
    };
}
