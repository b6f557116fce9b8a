//! Command guards: rules that span aggregate instances and so cannot live in one aggregate's
//! `decide` — e.g. "two identical payments (same payer, amount, currency, target) less than
//! 10 s apart", where each payment is its own aggregate.
//!
//! A guard runs in the caller's task, before the command is routed to its aggregate
//! (`admit`), and hears the outcome afterwards (`settle`). To be race-free, `admit` should
//! *reserve* (record the command as if accepted) and `settle(accepted = false)` should take
//! the reservation back: two identical commands sent at once then cannot both pass.
//!
//! Guards keep their memory in process: after a restart they start empty. That suits short
//! windows (seconds); rules that must survive a restart belong in an aggregate.

use crate::Aggregate;
use chrono::{DateTime, Utc};

pub trait CommandGuard<A: Aggregate>: Send + Sync + 'static {
    /// Before routing. `Err` rejects the command (`CommandError::Rejected`); nothing is written.
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
}
