//! Engine-level command guards for the domain rules that span aggregate instances.

use crate::aggregates::payment::{
    DuplicateTransactionGuard, InitiatePayment, Payment, PaymentCommand, PaymentError,
};
use chrono::{DateTime, Utc};
use evershard_engine::CommandGuard;
use std::sync::Mutex;

/// Payment's 10-second rule across payments: a second `InitiatePayment` with the same payer,
/// amount, currency and target less than 10 s after the first is rejected with
/// `PaymentError::DuplicateTransaction`, whatever its payment id. (Within one payment the
/// aggregate itself enforces the rule; this guard adds the case of two payment ids.)
///
/// `admit` reserves the fingerprint, so two identical initiations sent at the same moment
/// cannot both pass; if the aggregate then rejects the command for another reason, `settle`
/// takes the reservation back and a corrected command is not refused as a duplicate.
/// In-process memory: a restart forgets the last 10 s, by design of a short window.
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

    fn settle(&self, _id: &str, command: &PaymentCommand, now: DateTime<Utc>, accepted: bool) {
        if let (Some(initiate), false) = (initiation(command), accepted) {
            self.recent
                .lock()
                .expect("guard lock")
                .forget(&initiate.fingerprint(), now);
        }
    }
}
