//! The engine-level duplicate-transaction guard: rule (b) of the 10-second rule.
//!
//! The [`Payment`](super::Payment) aggregate can only see its own attempts, so it rejects an
//! identical repeat *on the same payment* (rule (a), in `decide`). Two different payments with
//! the same payer, amount, currency and target (a double click that created two payment ids,
//! two saga instances for one order) are invisible to each other; this guard sees them all.
//! The engine owns one guard (behind a lock) and consults it before it routes an
//! `InitiatePayment` command to its aggregate.
//!
//! The guard is pure: no clock (the caller passes `now`), no I/O, no interior mutability. It is
//! bounded: entries older than the window are pruned, and at most
//! [`DUPLICATE_GUARD_ENTRIES_MAX`] (or the number given to
//! [`DuplicateTransactionGuard::with_entries_max`]) fingerprints are kept. When more distinct
//! transactions than that arrive within one window, the oldest entries are forgotten first:
//! the guard then fails open for those (a duplicate of a forgotten transaction passes), which
//! is preferred over refusing every new payment. Rule (a) still holds inside each payment.
//!
//! Recommended engine use: `check` before the command is decided and `record` only after the
//! aggregate accepted it, so that a command rejected for another reason (amount above the
//! limit, missing CVV) does not block a corrected one for 10 seconds. `check_and_record` does
//! both at once for callers that record on arrival.

use super::{
    within_duplicate_window, InitiatePayment, Payment, PaymentCommand, PaymentError, PaymentEvent,
    TargetType, DUPLICATE_WINDOW_SECONDS,
};
use chrono::{DateTime, Utc};
use evershard_model::{CommandGuard, Currency, EventEnvelope, Money};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use uuid::Uuid;

/// How many fingerprints a guard keeps at most, by default. At about 150 bytes per entry (a
/// map slot and a queue slot) this bounds a guard to roughly 15 MB, and it allows 10,000
/// distinct new payments per second before anything is forgotten early.
pub const DUPLICATE_GUARD_ENTRIES_MAX: usize = 100_000;

/// What makes two transactions "identical" for the 10-second rule: same payer, amount,
/// currency and target. The payment id and the method are deliberately not part of it: two
/// payment ids for the same order and amount are exactly the case the rule is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionFingerprint {
    pub payer_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    pub target_type: TargetType,
    pub target_id: Uuid,
}

impl TransactionFingerprint {
    pub fn new(
        payer_id: Uuid,
        amount: Money,
        currency: Currency,
        target_type: TargetType,
        target_id: Uuid,
    ) -> Self {
        Self {
            payer_id,
            amount,
            currency,
            target_type,
            target_id,
        }
    }
}

/// Remembers recent transactions by fingerprint and rejects an identical one that comes less
/// than [`DUPLICATE_WINDOW_SECONDS`] after the previous one. See the module docs.
#[derive(Clone, Debug)]
pub struct DuplicateTransactionGuard {
    entries_max: usize,
    /// Latest accepted time of each fingerprint still remembered.
    last_seen: HashMap<TransactionFingerprint, DateTime<Utc>>,
    /// Every `record`, in call order; an entry whose time no longer matches `last_seen` is
    /// stale and is simply dropped when it reaches the front. `last_seen.len() <=
    /// arrivals.len() <= entries_max` always.
    arrivals: VecDeque<(DateTime<Utc>, TransactionFingerprint)>,
}

impl Default for DuplicateTransactionGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl DuplicateTransactionGuard {
    /// A guard that keeps at most [`DUPLICATE_GUARD_ENTRIES_MAX`] fingerprints.
    pub fn new() -> Self {
        Self::with_entries_max(DUPLICATE_GUARD_ENTRIES_MAX)
    }

    /// A guard that keeps at most `entries_max` fingerprints (at least 1).
    pub fn with_entries_max(entries_max: usize) -> Self {
        assert!(
            entries_max > 0,
            "a duplicate guard needs room for at least one entry"
        );
        Self {
            entries_max,
            last_seen: HashMap::new(),
            arrivals: VecDeque::new(),
        }
    }

    /// The window: an identical transaction less than this many seconds after the previous one
    /// is a duplicate.
    pub fn window_seconds(&self) -> i64 {
        DUPLICATE_WINDOW_SECONDS
    }

    /// The bound on remembered fingerprints.
    pub fn entries_max(&self) -> usize {
        self.entries_max
    }

    /// How many fingerprints are remembered now (expired ones until the next prune).
    pub fn len(&self) -> usize {
        self.last_seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }

    /// `Err(DuplicateTransaction)` when the same fingerprint was recorded less than the window
    /// before `now` (or, with a clock that went backwards, after `now`). Changes nothing.
    pub fn check(
        &self,
        fingerprint: &TransactionFingerprint,
        now: DateTime<Utc>,
    ) -> Result<(), PaymentError> {
        match self.last_seen.get(fingerprint) {
            Some(&previous_at) if within_duplicate_window(previous_at, now) => {
                Err(PaymentError::DuplicateTransaction {
                    previous_at,
                    window_seconds: DUPLICATE_WINDOW_SECONDS,
                })
            }
            _ => Ok(()),
        }
    }

    /// Remembers that a transaction with this fingerprint was accepted at `now`, then drops
    /// the oldest entries beyond the size bound.
    pub fn record(&mut self, fingerprint: TransactionFingerprint, now: DateTime<Utc>) {
        if self
            .last_seen
            .get(&fingerprint)
            .is_some_and(|&seen| seen >= now)
        {
            // Already remembered at least as late (a repeat, or a clock that went back):
            // keeping the later time keeps the window as long as it can be.
            return;
        }
        self.last_seen.insert(fingerprint, now);
        self.arrivals.push_back((now, fingerprint));
        while self.arrivals.len() > self.entries_max {
            self.pop_front();
        }
        debug_assert!(self.last_seen.len() <= self.arrivals.len());
        debug_assert!(self.arrivals.len() <= self.entries_max);
    }

    /// Takes back a `record` made at `at` (a reservation whose command was then rejected for
    /// another reason), so that a corrected transaction is not refused as its duplicate. A
    /// later record of the same fingerprint is kept.
    pub fn forget(&mut self, fingerprint: &TransactionFingerprint, at: DateTime<Utc>) {
        if self.last_seen.get(fingerprint) == Some(&at) {
            // The arrival entry becomes stale and is dropped when it reaches the front.
            self.last_seen.remove(fingerprint);
        }
    }

    /// Prunes, checks and, if the transaction is not a duplicate, records it.
    pub fn check_and_record(
        &mut self,
        fingerprint: TransactionFingerprint,
        now: DateTime<Utc>,
    ) -> Result<(), PaymentError> {
        self.prune(now);
        self.check(&fingerprint, now)?;
        self.record(fingerprint, now);
        Ok(())
    }

    /// Forgets the entries at the front (oldest recorded) that can no longer cause a
    /// rejection at `now`. Stops at the first entry still inside the window, so with a clock
    /// that goes backwards a few expired entries may stay until the size bound drops them.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        while let Some(&(at, _)) = self.arrivals.front() {
            if within_duplicate_window(at, now) {
                break;
            }
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((at, fingerprint)) = self.arrivals.pop_front() {
            // Only the entry that is still the latest for its fingerprint owns the map slot.
            if self.last_seen.get(&fingerprint) == Some(&at) {
                self.last_seen.remove(&fingerprint);
            }
        }
    }
}

/// Payment's 10-second rule across payments: a second `InitiatePayment` with the same payer,
/// amount, currency and target less than 10 s after the first is rejected with
/// `PaymentError::DuplicateTransaction`, whatever its payment id. (Within one payment the
/// aggregate itself enforces the rule; this guard adds the case of two payment ids.)
///
/// `admit` reserves the fingerprint, so two identical initiations sent at the same moment
/// cannot both pass; if the aggregate then rejects the command for another reason, `settle`
/// takes the reservation back and a corrected command is not refused as a duplicate.
/// It survives a restart: the engine replays the `PaymentInitiated` events of the last 10 s
/// from the journal into it at open ([`CommandGuard::recovery_window`]), so an identical
/// initiation right after a restart is refused as it would have been before.
#[derive(Debug, Default)]
pub struct PaymentDuplicateGuard {
    recent: Mutex<DuplicateTransactionGuard>,
}

impl PaymentDuplicateGuard {
    pub fn new() -> Self {
        Self::default()
    }
}

fn initiation(command: &PaymentCommand) -> Option<&InitiatePayment> {
    match command {
        PaymentCommand::Initiate(initiate) => Some(initiate),
        _ => None,
    }
}

impl CommandGuard<Payment> for PaymentDuplicateGuard {
    fn admit(
        &self,
        _id: &str,
        command: &PaymentCommand,
        now: DateTime<Utc>,
    ) -> Result<(), PaymentError> {
        match initiation(command) {
            Some(initiate) => self
                .recent
                .lock()
                .expect("guard lock")
                .check_and_record(initiate.fingerprint(), now),
            None => Ok(()),
        }
    }

    fn recovery_window(&self) -> Option<chrono::TimeDelta> {
        Some(chrono::TimeDelta::seconds(DUPLICATE_WINDOW_SECONDS))
    }

    fn recover(&self, event: &EventEnvelope<PaymentEvent>) {
        if let PaymentEvent::PaymentInitiated(e) = &event.payload {
            let fingerprint = TransactionFingerprint::new(
                e.payer_id,
                e.amount,
                e.currency,
                e.target_type,
                e.target_id,
            );
            self.recent
                .lock()
                .expect("guard lock")
                .record(fingerprint, e.initiated_at);
        }
    }

    fn settle(&self, _id: &str, command: &PaymentCommand, now: DateTime<Utc>, accepted: bool) {
        if let (Some(initiate), false) = (initiation(command), accepted) {
            self.recent
                .lock()
                .expect("guard lock")
                .forget(&initiate.fingerprint(), now);
        }
    }
}
