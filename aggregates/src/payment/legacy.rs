//! The stored shape of `PaymentInitiated` version 1.0, read back by
//! [`Payment`](super::Payment)'s `decode_event` and upcast to the current 1.1 shape.
//!
//! Version 1.1 appended two nullable fields to `PaymentInitiated`:
//! `beneficiary_department_id` (the department an invoice payment is for) and `transfer` (the
//! accounts of an outgoing bank transfer). 1.0 records were written in codec format 1, which
//! is positional, so such a record (`PaymentEvent::PaymentInitiated(..)` with the eleven 1.0
//! fields) no longer decodes as the current enum; this module keeps its exact layout. (A
//! format-2 record names its fields and would need no such module: the two `Option` fields
//! would read as `None`.) The upcast sets both new
//! fields to `None`: a payment initiated under 1.0 names no beneficiary (its completion
//! publishes no `PaymentReceived`) and orders no transfer (no `PaymentProcessed`). The other
//! payment events did not change shape and decode directly.

use super::{PaymentInitiated, PaymentMethod, TargetType};
use chrono::{DateTime, Utc};
use evershard_model::{Currency, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The contract version of the legacy shape.
pub const PAYMENT_INITIATED_V1_0_VERSION: &str = "1.0";

/// `PaymentInitiated` version 1.0, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentInitiatedV1_0 {
    pub payment_id: Uuid,
    pub payer_id: Uuid,
    pub target_type: TargetType,
    pub target_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    pub amount_usd: Money,
    pub payment_method: PaymentMethod,
    pub cvv_checked: bool,
    pub attempt: u32,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub initiated_at: DateTime<Utc>,
}

/// The event enum as a 1.0-era writer stored it: `PaymentInitiated` at variant index 0. Only
/// that variant is needed; the enum keeps the variant index in the layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaymentEventV1_0 {
    PaymentInitiated(PaymentInitiatedV1_0),
}

impl PaymentInitiatedV1_0 {
    /// The 1.1 event: the same fields, no beneficiary, no transfer.
    pub fn upcast(self) -> PaymentInitiated {
        PaymentInitiated {
            payment_id: self.payment_id,
            payer_id: self.payer_id,
            target_type: self.target_type,
            target_id: self.target_id,
            amount: self.amount,
            currency: self.currency,
            amount_usd: self.amount_usd,
            payment_method: self.payment_method,
            cvv_checked: self.cvv_checked,
            attempt: self.attempt,
            initiated_at: self.initiated_at,
            beneficiary_department_id: None,
            transfer: None,
        }
    }
}

impl From<PaymentInitiatedV1_0> for PaymentInitiated {
    fn from(legacy: PaymentInitiatedV1_0) -> Self {
        legacy.upcast()
    }
}
