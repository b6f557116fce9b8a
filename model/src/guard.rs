//! Command guards: rules that span aggregate instances and so cannot live in one aggregate's
//! `decide` — e.g. "two identical payments (same payer, amount, currency, target) less than
//! 10 s apart", where each payment is its own aggregate.
//!
//! A guard runs in the aggregate's actor once the command is known not to be an idempotent
//! repeat, before `decide` and with the time `decide` sees (`admit`), and hears the outcome
//! afterwards (`settle`); timer commands do not meet it. To be race-free, `admit` should
//! *reserve* (record the command as if accepted) and `settle(accepted = false)` should take
//! the reservation back: two identical commands sent at once then cannot both pass.
//!
//! Guards keep their memory in process. To survive a restart, a guard names a
//! [`CommandGuard::recovery_window`]: at open, the engine hands it (through
//! [`CommandGuard::recover`]) every event of its type committed within that window before
//! now, oldest first, so it remembers what it would have remembered had the process not
//! stopped. The journal is the durable record; the guard writes nothing of its own.

use crate::{Aggregate, EventEnvelope};
use chrono::{DateTime, TimeDelta, Utc};

pub trait CommandGuard<A: Aggregate>: Send + Sync + 'static {
    /// Before `decide`, in the aggregate's actor (keep it quick: a lock and a map). `Err`
    /// rejects the command (`CommandError::Rejected`); nothing is written.
    fn admit(
        &self,
        aggregate_id: &str,
        command: &A::Command,
        now: DateTime<Utc>,
    ) -> Result<(), A::Error>;

    /// After the command was answered; `accepted` is false for every error, a rejection by the
    /// aggregate included. Not called when `admit` refused.
    fn settle(&self, aggregate_id: &str, command: &A::Command, now: DateTime<Utc>, accepted: bool) {
        let _ = (aggregate_id, command, now, accepted);
    }

    /// How far back the engine replays committed events into [`CommandGuard::recover`] when
    /// it opens. Default `None`: the guard starts empty after a restart.
    fn recovery_window(&self) -> Option<TimeDelta> {
        None
    }

    /// At open, once per event of `A` committed within [`CommandGuard::recovery_window`]
    /// before the engine's clock, oldest first, before any command is admitted.
    fn recover(&self, event: &EventEnvelope<A::Event>) {
        let _ = event;
    }
}
