//! Sagas (process managers): an aggregate type that coordinates other aggregates.
//!
//! A saga is an ordinary event-sourced [`Aggregate`] (one instance per business transaction,
//! single-writer like any aggregate, auditable with the same tools), plus one pure function,
//! [`Saga::outbox`]: the commands a committed saga event asks to be sent to other aggregates.
//! The saga's own events are therefore the outbox of its commands: a command is "decided"
//! exactly when the event that names it is committed, and the engine's saga runner
//! (`evershard_engine::saga`) sends it afterwards, from the saga's topic, at least once.
//!
//! Each outbound command carries a step name unique within its saga instance
//! (`reserve:sku-1`, `payment:2`, `refund`). [`step_key`] turns (saga type, saga id, step)
//! into a deterministic UUID, which the runner uses as the command's idempotency key: a
//! redelivered saga event, or a crash between "command executed" and "offset committed",
//! re-sends the same command under the same key and the target answers the first result
//! instead of executing it again. A step name must therefore always name the same command
//! body within one saga instance.

use crate::Aggregate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Debug;
use uuid::Uuid;

/// The longest step name: it is hashed into a key and shown by the CLI, never stored alone.
pub const STEP_NAME_BYTES_MAX: usize = 256;

/// One command a saga event asks to be sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound<C> {
    /// Unique within the saga instance; the same step always names the same command body.
    pub step: String,
    /// The command, typed by the saga author (usually an enum over the target types).
    pub command: C,
    /// Sent only if the command before it in the same outbox was not refused: a step that
    /// depends on the one before it ([`Outbound::only_if_previous_accepted`]). When it was
    /// refused, this one is not sent and is reported to the saga as refused too, with the
    /// text `not sent: <previous step> was refused: <its error>`.
    #[serde(default)]
    pub only_if_previous_accepted: bool,
}

impl<C> Outbound<C> {
    pub fn new(step: impl Into<String>, command: C) -> Self {
        let step = step.into();
        assert!(
            !step.is_empty() && step.len() <= STEP_NAME_BYTES_MAX,
            "a step name has 1..={STEP_NAME_BYTES_MAX} bytes, got {:?}",
            step
        );
        Self {
            step,
            command,
            only_if_previous_accepted: false,
        }
    }

    /// This step depends on the one before it in its outbox: not sent when that one was
    /// refused (for example a payment after the order refused to await one: it was closed
    /// meanwhile).
    pub fn only_if_previous_accepted(mut self) -> Self {
        self.only_if_previous_accepted = true;
        self
    }
}

/// A process manager: an aggregate whose events name the commands it sends.
///
/// `decide` takes the facts the saga observes (usually a command such as
/// `Observe { source, fact }` that the runner builds from another aggregate's event) and its
/// timer's command, and answers the steps it takes as events. `outbox` is pure and reads only
/// the event, so a redelivered event always yields the same commands under the same keys.
pub trait Saga: Aggregate {
    /// What the saga sends: the saga author's enum over the commands of its target types.
    type Outbound: Clone + Debug + Serialize + Send + Sync + 'static;

    /// The commands `event` asks to be sent, in the order they must be sent.
    fn outbox(event: &Self::Event) -> Vec<Outbound<Self::Outbound>>;
}

/// The idempotency key of step `step` of saga instance `saga_id` of type `saga_type`: the
/// first 16 bytes of SHA-256 over the three length-prefixed names, as a version-8 UUID.
/// Deterministic across processes and releases (it is stored as the target's idempotency
/// key): never change it.
pub fn step_key(saga_type: &str, saga_id: &str, step: &str) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"evershard.saga.step.v1");
    for part in [saga_type, saga_id, step] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keys_are_deterministic_and_distinct_per_part() {
        let k = step_key("OrderSaga", "o-1", "reserve:sku-1");
        assert_eq!(k, step_key("OrderSaga", "o-1", "reserve:sku-1"));
        assert_ne!(k, step_key("OrderSaga", "o-2", "reserve:sku-1"));
        assert_ne!(k, step_key("OrderSaga", "o-1", "reserve:sku-2"));
        // Length prefixes: moving a character from one part to the next changes the key.
        assert_ne!(step_key("a", "bc", "d"), step_key("ab", "c", "d"));
        assert_eq!(k.get_version_num(), 8);
        // Pinned: the key is stored as an idempotency key, so it must never change.
        // (Computed independently: SHA-256 of the tag and the length-prefixed parts, the
        // first 16 bytes with the version-8 and RFC 4122 variant bits.)
        assert_eq!(k.to_string(), "640de2c7-b874-82cc-8881-310e8ec0a39e");
    }
}
