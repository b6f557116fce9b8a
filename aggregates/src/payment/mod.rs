//! The `Payment` aggregate: one payment of a payer towards a target (an order, an invoice, an
//! appointment or a service), with up to three attempts, then refunds. Lifecycle events on
//! topic `business.payments` (functional-architecture-ddd.md 5.2); the bank events of the
//! catalog (`PaymentReceived`, `PaymentProcessed`, "bank services of the group's departments")
//! on topic `bank.payments`, published by the completion of an invoice payment or of an
//! outgoing bank transfer. Field names follow the catalog: `payment_id`, `payer_id`, `amount`,
//! `currency`, `payment_method`.
//!
//! # Commands
//! | command | accepted when | events |
//! | --- | --- | --- |
//! | [`InitiatePayment`] | new, or the last attempt failed (a retry) | `PaymentInitiated` |
//! | [`CompletePayment`] | an attempt is in progress (the one it names, if it names one) | `PaymentCompleted`, then `PaymentProcessed` if the attempt is an outgoing transfer, then `PaymentReceived` if the target is an invoice |
//! | [`FailPayment`] | an attempt is in progress (the one it names, if it names one); none again for an attempt that failed already | `PaymentFailed` (the third one blocks) |
//! | [`RefundPayment`] | completed, not yet fully refunded | `PaymentRefunded` |
//!
//! No new command: the two bank events arise from the existing lifecycle. The initiation
//! carries what they need ([`InitiatePayment::beneficiary_department_id`],
//! [`InitiatePayment::transfer`]), and `PaymentCompleted` is the one status change; the bank
//! events are published in the same atomic append, right after it.
//!
//! # Events
//! | event | topic | version | emitted by |
//! | --- | --- | --- | --- |
//! | `PaymentInitiated` | `business.payments` | "1.1" | `InitiatePayment` |
//! | `PaymentCompleted` | `business.payments` | "1.0" | `CompletePayment` |
//! | `PaymentFailed` | `business.payments` | "1.0" | `FailPayment` |
//! | `PaymentRefunded` | `business.payments` | "1.0" | `RefundPayment` |
//! | `PaymentReceived` | `bank.payments` | "1.0" | `CompletePayment` of an invoice payment |
//! | `PaymentProcessed` | `bank.payments` | "1.0" | `CompletePayment` of an outgoing transfer |
//!
//! Payloads are the serde JSON of the structs of the same name. Money is a decimal string with
//! two fraction digits (`"1234.50"`), currencies are ISO codes (`"USD"`), times are RFC 3339
//! UTC. `PaymentReceived` and `PaymentProcessed` hold exactly the catalog's fields:
//! `PaymentReceived {payment_id, invoice_id, payer_id, amount, payment_method:
//! bank_transfer|card|cash, beneficiary_department_id}`, `PaymentProcessed {payment_id,
//! from_account_id, to_account_id, amount, currency, reference (nullable)}`.
//! `PaymentInitiated` 1.1 appended `beneficiary_department_id` (nullable uuid) and `transfer`
//! (nullable object `{from_account_id, to_account_id, reference}`); a stored 1.0 record is
//! upcast with both null ([`legacy`]). The bank events change nothing in the state (they are
//! published views of the completion).
//!
//! # Lifecycle ([`can_transition`])
//! | from | to |
//! | --- | --- |
//! | `new` | `initiated` |
//! | `initiated` | `completed`, `failed`, `blocked` (third failure) |
//! | `failed` | `initiated` (a retry) |
//! | `completed` | `partially_refunded`, `refunded` |
//!
//! `PaymentReceived` and `PaymentProcessed` leave the status `completed` (no edge of their
//! own); they only ever follow a `PaymentCompleted` in the same append.
//! | `partially_refunded` | `partially_refunded`, `refunded` |
//! | `blocked`, `refunded` | final |
//!
//! # Rules
//! - **Payment id**: a payment addressed by a UUID aggregate id is that payment:
//!   `InitiatePayment` must name it as `payment_id` ([`PaymentError::PaymentIdMismatch`]),
//!   since its events are keyed by the aggregate id on the topics.
//! - Methods: `card`, `apple_pay`, `paypal`, `bank_transfer`, `cash`.
//! - **CVV**: a card attempt must carry a CVV of 3 or 4 ASCII digits; other methods must carry
//!   none (a CVV sent with cash or PayPal is a client bug and is refused rather than silently
//!   handled). The CVV is checked in `decide` and then dropped: events and state only record
//!   `cvv_checked: true`, never the digits. [`Cvv`]'s `Debug` prints no digits either, and
//!   the engine's idempotency record of a keyed command digests the command without them
//!   ([`Aggregate::idempotency_view`]: a repeat of the key with another CVV is a repeat,
//!   answered with the first attempt's result). Whether
//!   the CVV *matches* the card is the provider's answer; a mismatch comes back as
//!   [`FailPayment`] and counts as a failed attempt.
//! - **Amount**: > 0 and at most 50,000.00 USD ([`AMOUNT_MAX_USD`]). Other currencies are
//!   converted with the **fixed, documented rates** of [`USD_RATES_PPM`] (US dollars per unit,
//!   in millionths): 1 EUR = 1.08 USD, 1 RUB = 0.011 USD. They are not live rates; they make
//!   the limit reproducible on replay. The limit comparison is exact (integer arithmetic on
//!   minor units times the rate); the `amount_usd` shown in `PaymentInitiated` is rounded down
//!   to the cent. A currency without a rate is refused.
//! - **Three failed attempts block the payment**: the third `PaymentFailed` carries
//!   `blocked: true` and no further attempt is accepted ([`FAILED_ATTEMPTS_MAX`]). The saga
//!   reads `blocked` to compensate (release stock, cancel the order). A validation rejection
//!   (bad CVV format, amount above the limit) writes nothing and is not an attempt.
//! - **Retries**: after a failure a new `InitiatePayment` is the next attempt. It must name the
//!   same payment id, payer and target (the payment is for one obligation); method, amount and
//!   currency may change (another card, another currency).
//! - **Duplicates (10 seconds, [`DUPLICATE_WINDOW_SECONDS`])**: two identical transactions
//!   (same payer, amount, currency and target: [`TransactionFingerprint`]) less than 10 s
//!   apart: the second is rejected with [`PaymentError::DuplicateTransaction`]. Exactly 10 s
//!   apart is allowed. The rule is enforced twice:
//!   (a) here, in `decide`, against the earlier attempts of the *same* payment (a repeated
//!   initiation, whether the earlier attempt is still in progress or failed fast), and
//!   (b) across payments by [`DuplicateTransactionGuard`], which the engine owns: an aggregate
//!   cannot see other payments. The application installs it as an engine command guard,
//!   `Engine::builder(..).guard::<Payment>(PaymentDuplicateGuard::new())`,
//!   which reserves the fingerprint before `decide` and takes it back if the aggregate rejects
//!   the command (tested in the root crate's `tests/payment_duplicate_guard.rs`). The duplicate check comes before the "attempt in progress"
//!   check, so a fast identical repeat is reported as a duplicate.
//! - **Refunds** may be partial; the sum of refunds never exceeds the completed amount. A
//!   refund names a `refund_id`: the same id with the same amount (or no amount) again is an
//!   idempotent repeat (`Ok(vec![])`), with another amount it is refused. A refund without an
//!   amount refunds everything still refundable. A refund is in the completed currency.
//! - **Completion** is idempotent on its provider reference: the same `CompletePayment` again
//!   after completion writes nothing; another reference is refused.
//! - **Answers name their attempt.** A provider's answer is delivered at least once and may
//!   come late, after the attempt it answers timed out and a retry started. `CompletePayment`
//!   and `FailPayment` therefore carry the `attempt` they answer (`None`: the attempt in
//!   progress, as before this field existed). An answer for another attempt than the one in
//!   progress is refused ([`PaymentError::AttemptMismatch`]: a late success of a failed
//!   attempt must be voided at the provider, it cannot complete the retry), and a repeated
//!   failure of an attempt that failed already writes nothing: it neither fails the retry
//!   nor counts towards the block (found by review, 2026-11-28).
//! - **Invoice payments** (`target_type: invoice`; the `target_id` is the invoice id published
//!   as `invoice_id`) must name the beneficiary department (the invoice's issuer):
//!   [`PaymentError::BeneficiaryMissing`]; any other target must name none
//!   ([`PaymentError::BeneficiaryNotExpected`]). The department belongs to the payment's
//!   identity: a retry names the same one ([`PaymentError::BeneficiaryMismatch`]).
//! - **Methods for invoices**: `PaymentReceived` takes only `bank_transfer`, `card`, `cash`.
//!   An invoice payment by `apple_pay` or `paypal` is **refused** at initiation
//!   ([`PaymentError::InvoiceMethodNotAccepted`]; it writes nothing and is not an attempt),
//!   not mapped: reporting a PayPal payment to the beneficiary as a card payment or a transfer
//!   would be false. The rule holds for every attempt (a retry may change the method among the
//!   three). [`InvoicePaymentMethod`] is the event's type, so the contract cannot be broken.
//! - `PaymentReceived` is published on completion of an invoice payment with the completed
//!   attempt's amount and method. Its `amount` is in the payment's currency (the contract has
//!   no currency field; an invoice is paid in the currency it was issued in, `InvoiceIssued`,
//!   which this aggregate cannot see). The 50,000 USD cap, the duplicate rule (the invoice is
//!   the target of the fingerprint), the three-failure block and refunds apply unchanged; a
//!   refund of an invoice payment publishes only `PaymentRefunded` (on `business.payments`),
//!   no bank event.
//! - **Outgoing transfers**: a `bank_transfer` attempt may name the accounts the bank debits
//!   and credits ([`TransferAccounts`]; optional, as a transfer from outside the bank names
//!   none). Accounts with any other method are refused ([`PaymentError::TransferNotExpected`]),
//!   as is a transfer to the account it debits ([`PaymentError::TransferToSameAccount`]). On
//!   completion of such an attempt `PaymentProcessed` is published with the attempt's amount
//!   and currency and the reference as given (null if none). Accounts are per attempt: a retry
//!   may use other ones (like another card); they are not part of the duplicate fingerprint.
//!   An invoice paid by an outgoing transfer publishes both bank events
//!   (`PaymentCompleted`, `PaymentProcessed`, `PaymentReceived`, in that order).
//! - **Legacy**: a payment first initiated under `PaymentInitiated` 1.0 has no beneficiary
//!   recorded; it keeps the 1.0 rules (its retries name none, any method) and its completion
//!   publishes no `PaymentReceived`.
//! - `initiated_at`/`completed_at`/`failed_at`/`refunded_at` are the engine clock
//!   (`ctx.now`); the 10-second rule reads `initiated_at` on replay.
//!
//! # Invariants ([`Payment::check_invariants`])
//! - at most [`FAILED_ATTEMPTS_MAX`] attempts; attempts are numbered 1, 2, 3 without gaps;
//!   every attempt but the last has failed; the identity is set iff there is an attempt;
//! - every attempt: amount > 0 and within the USD limit; `cvv_checked` iff the method is card;
//!   transfer accounts only with `bank_transfer`, and two different accounts;
//! - a beneficiary department only on an invoice payment, and then every attempt pays by
//!   `bank_transfer`, `card` or `cash`;
//! - `failed_attempts` equals the failed attempts; the status is the one the attempts and
//!   refunds imply (blocked iff three failures, ...);
//! - refunds only on a completed payment; each refund > 0; `refunded_total` is their sum and
//!   never exceeds the completed amount; a provider reference iff completed.

mod guard;
pub mod legacy;

pub use guard::{
    DuplicateTransactionGuard, PaymentDuplicateGuard, TransactionFingerprint,
    DUPLICATE_GUARD_ENTRIES_MAX,
};
pub use legacy::{PaymentEventV1_0, PaymentInitiatedV1_0, PAYMENT_INITIATED_V1_0_VERSION};

use chrono::{DateTime, TimeDelta, Utc};
use evershard_model::{
    codec, from_variants, Aggregate, CodecError, Currency, DecideContext, DomainEvent, Money,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// The outbound topic of the payment lifecycle events (initiated, completed, failed, refunded).
pub const TOPIC: &str = "business.payments";
/// The outbound topic of the bank events `PaymentReceived` and `PaymentProcessed`.
pub const BANK_TOPIC: &str = "bank.payments";
/// The contract version of every payment event but `PaymentInitiated`.
pub const EVENT_VERSION: &str = "1.0";
/// The contract version of `PaymentInitiated` (1.1 appended `beneficiary_department_id` and
/// `transfer`; 1.0 records are upcast, see [`legacy`]).
pub const PAYMENT_INITIATED_VERSION: &str = "1.1";
/// The largest amount of one transaction, in US dollars.
pub const AMOUNT_MAX_USD: Money = Money::from_major(50_000);
/// The failed attempt that blocks the payment.
pub const FAILED_ATTEMPTS_MAX: u32 = 3;
/// Two identical transactions less than this many seconds apart: the second is rejected.
pub const DUPLICATE_WINDOW_SECONDS: i64 = 10;
/// Fixed conversion rates for the amount limit: US dollars per one unit of the currency, in
/// millionths (parts per million). Fixed on purpose (replay must decide the same); change them
/// only together with a new event version.
pub const USD_RATES_PPM: [(Currency, i64); 3] = [
    (Currency::USD, 1_000_000),
    // 1 EUR = 1.08 USD.
    (Currency::EUR, 1_080_000),
    // 1 RUB = 0.011 USD (about 90.9 RUB per USD).
    (Currency::RUB, 11_000),
];
const PPM: i64 = 1_000_000;

/// The rate of [`USD_RATES_PPM`] for a currency, if it has one.
pub fn usd_rate_ppm(currency: Currency) -> Option<i64> {
    USD_RATES_PPM
        .iter()
        .find(|(c, _)| *c == currency)
        .map(|(_, rate)| *rate)
}

/// `amount` in US dollars at the fixed rate, rounded down to the cent; `None` for a currency
/// without a rate or an amount too large to convert.
pub fn to_usd(amount: Money, currency: Currency) -> Option<Money> {
    let rate = usd_rate_ppm(currency)?;
    let usd_minor = i128::from(amount.minor()) * i128::from(rate) / i128::from(PPM);
    i64::try_from(usd_minor).ok().map(Money::from_minor)
}

/// Whether `amount` is at most [`AMOUNT_MAX_USD`] at the fixed rate, compared exactly.
fn within_usd_limit(amount: Money, rate_ppm: i64) -> bool {
    i128::from(amount.minor()) * i128::from(rate_ppm)
        <= i128::from(AMOUNT_MAX_USD.minor()) * i128::from(PPM)
}

/// True when `now` is less than [`DUPLICATE_WINDOW_SECONDS`] after `previous` (or before it,
/// with a clock that went back): an identical transaction at `now` is a duplicate.
pub fn within_duplicate_window(previous: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now.signed_duration_since(previous) < TimeDelta::seconds(DUPLICATE_WINDOW_SECONDS)
}

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// How the payer pays. JSON: `card`, `apple_pay`, `paypal`, `bank_transfer`, `cash`.
/// Stored: append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Card,
    ApplePay,
    Paypal,
    BankTransfer,
    Cash,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 5] = [
        PaymentMethod::Card,
        PaymentMethod::ApplePay,
        PaymentMethod::Paypal,
        PaymentMethod::BankTransfer,
        PaymentMethod::Cash,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Card => "card",
            PaymentMethod::ApplePay => "apple_pay",
            PaymentMethod::Paypal => "paypal",
            PaymentMethod::BankTransfer => "bank_transfer",
            PaymentMethod::Cash => "cash",
        }
    }
}

/// What the payment pays for. JSON: `order`, `invoice`, `appointment`, `service` (the
/// catalog's `reference_type` values plus `invoice`). Stored: append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetType {
    Order,
    Invoice,
    Appointment,
    Service,
}

impl TargetType {
    pub const ALL: [TargetType; 4] = [
        TargetType::Order,
        TargetType::Invoice,
        TargetType::Appointment,
        TargetType::Service,
    ];
}

/// The methods an invoice may be paid by, as `PaymentReceived` publishes them (the catalog's
/// `enum[bank_transfer, card, cash]`). `apple_pay` and `paypal` are refused for invoices at
/// initiation ([`PaymentError::InvoiceMethodNotAccepted`]), so every invoice payment's method
/// has one of these. Stored: append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoicePaymentMethod {
    BankTransfer,
    Card,
    Cash,
}

impl InvoicePaymentMethod {
    pub const ALL: [InvoicePaymentMethod; 3] = [
        InvoicePaymentMethod::BankTransfer,
        InvoicePaymentMethod::Card,
        InvoicePaymentMethod::Cash,
    ];
    pub fn as_str(self) -> &'static str {
        PaymentMethod::from(self).as_str()
    }
}

impl PaymentMethod {
    /// The invoice method of this method: `None` for `apple_pay` and `paypal`, which are not
    /// taken for invoices (no mapping: an Apple Pay or PayPal payment is not reported to the
    /// beneficiary as a card payment or a transfer).
    pub fn for_invoice(self) -> Option<InvoicePaymentMethod> {
        match self {
            PaymentMethod::BankTransfer => Some(InvoicePaymentMethod::BankTransfer),
            PaymentMethod::Card => Some(InvoicePaymentMethod::Card),
            PaymentMethod::Cash => Some(InvoicePaymentMethod::Cash),
            PaymentMethod::ApplePay | PaymentMethod::Paypal => None,
        }
    }
}

impl From<InvoicePaymentMethod> for PaymentMethod {
    fn from(method: InvoicePaymentMethod) -> Self {
        match method {
            InvoicePaymentMethod::BankTransfer => PaymentMethod::BankTransfer,
            InvoicePaymentMethod::Card => PaymentMethod::Card,
            InvoicePaymentMethod::Cash => PaymentMethod::Cash,
        }
    }
}

/// The accounts of an outgoing bank transfer the bank carries out itself: `from_account_id`
/// is debited, `to_account_id` credited. Taken only with `bank_transfer`; the two accounts
/// differ. On completion the payment publishes `PaymentProcessed` with them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferAccounts {
    pub from_account_id: Uuid,
    pub to_account_id: Uuid,
    /// The payment reference (purpose line) as given, if any; published as is.
    pub reference: Option<String>,
}

/// A card verification value as typed by the payer. Lives only in the command: `decide` checks
/// its format and drops it. `Debug` never prints the digits.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cvv(String);

impl Cvv {
    pub fn new(digits: impl Into<String>) -> Self {
        Cvv(digits.into())
    }
    /// 3 or 4 ASCII digits.
    pub fn is_well_formed(&self) -> bool {
        (3..=4).contains(&self.0.len()) && self.0.bytes().all(|b| b.is_ascii_digit())
    }
}

impl fmt::Debug for Cvv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvv(<redacted>)")
    }
}

/// Where the payment is in its lifecycle. Stored: append-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// No attempt yet.
    #[default]
    New,
    /// An attempt is with the provider.
    Initiated,
    /// The last attempt failed; a retry is allowed.
    Failed,
    /// Three attempts failed: final.
    Blocked,
    /// Paid, nothing refunded.
    Completed,
    /// Paid, some refunded.
    PartiallyRefunded,
    /// Paid and refunded in full: final.
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 7] = [
        PaymentStatus::New,
        PaymentStatus::Initiated,
        PaymentStatus::Failed,
        PaymentStatus::Blocked,
        PaymentStatus::Completed,
        PaymentStatus::PartiallyRefunded,
        PaymentStatus::Refunded,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::New => "new",
            PaymentStatus::Initiated => "initiated",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Blocked => "blocked",
            PaymentStatus::Completed => "completed",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
            PaymentStatus::Refunded => "refunded",
        }
    }
    /// Paid: completed, partially refunded or refunded.
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            PaymentStatus::Completed | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
        )
    }
    /// No command changes a payment in a final status.
    pub fn is_final(self) -> bool {
        matches!(self, PaymentStatus::Blocked | PaymentStatus::Refunded)
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lifecycle as a transition table: may a payment go from `from` to `to` by one event?
// A `match` on (from, to) on purpose: the lifecycle reads as a table, one row per edge.
#[allow(clippy::match_like_matches_macro)]
pub fn can_transition(from: PaymentStatus, to: PaymentStatus) -> bool {
    use PaymentStatus::*;
    match (from, to) {
        (New, Initiated) => true,
        (Initiated, Completed) | (Initiated, Failed) | (Initiated, Blocked) => true,
        (Failed, Initiated) => true,
        (Completed, PartiallyRefunded) | (Completed, Refunded) => true,
        (PartiallyRefunded, PartiallyRefunded) | (PartiallyRefunded, Refunded) => true,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Starts an attempt: the first one, or a retry after a failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitiatePayment {
    pub payment_id: Uuid,
    pub payer_id: Uuid,
    pub target_type: TargetType,
    pub target_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    /// Required for `card`, refused for every other method; never stored.
    pub cvv: Option<Cvv>,
    /// The department an invoice is paid to (the invoice's issuer): required when the target is
    /// an invoice, refused otherwise; the same on every attempt. Notified by `PaymentReceived`.
    pub beneficiary_department_id: Option<Uuid>,
    /// The accounts of an outgoing transfer the bank carries out: only with `bank_transfer`
    /// (optional there: a transfer from outside the bank names none). Published by
    /// `PaymentProcessed` on completion.
    pub transfer: Option<TransferAccounts>,
}

impl InitiatePayment {
    /// The fingerprint of the 10-second rule.
    pub fn fingerprint(&self) -> TransactionFingerprint {
        TransactionFingerprint::new(
            self.payer_id,
            self.amount,
            self.currency,
            self.target_type,
            self.target_id,
        )
    }
}

/// The provider accepted an attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletePayment {
    /// The provider's transaction reference.
    pub provider_reference: String,
    /// The attempt this answers (`PaymentInitiated.attempt`); `None`: the one in progress.
    /// Absent in JSON reads as `None`; `None` is not encoded, so the command's idempotency
    /// digest is the one it had before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// The provider refused an attempt (declined, CVV mismatch, timeout, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailPayment {
    pub reason: String,
    /// The attempt this answers (`PaymentInitiated.attempt`); `None`: the one in progress.
    /// Absent in JSON reads as `None`; `None` is not encoded (see [`CompletePayment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// Refunds part or all of a completed payment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefundPayment {
    /// Identifies the refund: a repeat with the same id is idempotent.
    pub refund_id: Uuid,
    /// `None` refunds everything still refundable.
    pub amount: Option<Money>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PaymentCommand {
    Initiate(InitiatePayment),
    Complete(CompletePayment),
    Fail(FailPayment),
    Refund(RefundPayment),
}

from_variants!(PaymentCommand {
    Initiate(InitiatePayment),
    Complete(CompletePayment),
    Fail(FailPayment),
    Refund(RefundPayment),
});

// ---------------------------------------------------------------------------------------------
// Events (stored: fields and variants are append-only)
// ---------------------------------------------------------------------------------------------

/// An attempt started. `cvv_checked` is true for card attempts (the CVV was present and well
/// formed); the CVV itself is never recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentInitiated {
    pub payment_id: Uuid,
    pub payer_id: Uuid,
    pub target_type: TargetType,
    pub target_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    /// `amount` at the fixed rate of [`USD_RATES_PPM`], rounded down to the cent.
    pub amount_usd: Money,
    pub payment_method: PaymentMethod,
    pub cvv_checked: bool,
    /// 1 for the first attempt, then 2 and 3.
    pub attempt: u32,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub initiated_at: DateTime<Utc>,
    /// Since 1.1: the beneficiary department of an invoice payment, else null.
    pub beneficiary_department_id: Option<Uuid>,
    /// Since 1.1: the accounts of an outgoing bank transfer, else null.
    pub transfer: Option<TransferAccounts>,
}

/// The attempt in progress succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCompleted {
    pub payment_id: Uuid,
    pub payer_id: Uuid,
    pub target_type: TargetType,
    pub target_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    pub attempt: u32,
    pub provider_reference: String,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub completed_at: DateTime<Utc>,
}

/// The attempt in progress failed. `blocked` is true on the third failure: the payment takes
/// no further attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub payment_id: Uuid,
    pub payer_id: Uuid,
    pub target_type: TargetType,
    pub target_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    pub attempt: u32,
    pub reason: String,
    /// Failed attempts so far, this one included.
    pub failed_attempts: u32,
    pub blocked: bool,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub failed_at: DateTime<Utc>,
}

/// Part or all of the completed amount was refunded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: Uuid,
    pub refund_id: Uuid,
    pub payer_id: Uuid,
    pub target_type: TargetType,
    pub target_id: Uuid,
    /// This refund.
    pub amount: Money,
    pub currency: Currency,
    /// All refunds so far, this one included.
    pub total_refunded: Money,
    /// True when `total_refunded` equals the completed amount.
    pub fully_refunded: bool,
    pub reason: String,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub refunded_at: DateTime<Utc>,
}

/// A payment for an invoice was received (catalog, bank services of the group's departments;
/// topic `bank.payments`): published with the `PaymentCompleted` of an invoice payment, it
/// notifies the beneficiary department. `amount` is in the payment's currency (the contract
/// has no currency field; an invoice is paid in its own currency, see `InvoiceIssued`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentReceived {
    pub payment_id: Uuid,
    pub invoice_id: Uuid,
    pub payer_id: Uuid,
    pub amount: Money,
    pub payment_method: InvoicePaymentMethod,
    pub beneficiary_department_id: Uuid,
}

/// An outgoing payment was carried out (catalog; topic `bank.payments`): published with the
/// `PaymentCompleted` of a `bank_transfer` attempt that named its [`TransferAccounts`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentProcessed {
    pub payment_id: Uuid,
    pub from_account_id: Uuid,
    pub to_account_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    pub reference: Option<String>,
}

/// Stored: variants are append-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(topic = TOPIC, version = EVENT_VERSION)]
pub enum PaymentEvent {
    #[event(version = PAYMENT_INITIATED_VERSION)]
    PaymentInitiated(PaymentInitiated),
    PaymentCompleted(PaymentCompleted),
    PaymentFailed(PaymentFailed),
    PaymentRefunded(PaymentRefunded),
    #[event(topic = BANK_TOPIC)]
    PaymentReceived(PaymentReceived),
    #[event(topic = BANK_TOPIC)]
    PaymentProcessed(PaymentProcessed),
}

from_variants!(
    PaymentEvent: PaymentInitiated,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    PaymentReceived,
    PaymentProcessed
);

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// Who pays for what: fixed by the first attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIdentity {
    pub payment_id: Uuid,
    pub payer_id: Uuid,
    pub target_type: TargetType,
    pub target_id: Uuid,
    /// The beneficiary department of an invoice payment (`None` for other targets, and for an
    /// invoice payment first initiated under `PaymentInitiated` 1.0).
    pub beneficiary_department_id: Option<Uuid>,
}

/// How an attempt ended. Stored: append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Pending,
    Completed,
    Failed,
}

/// One attempt as the state keeps it (no CVV, only that it was checked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAttempt {
    pub attempt: u32,
    pub amount: Money,
    pub currency: Currency,
    pub amount_usd: Money,
    pub payment_method: PaymentMethod,
    pub cvv_checked: bool,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub initiated_at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    /// The accounts of an outgoing transfer (bank_transfer only).
    pub transfer: Option<TransferAccounts>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    pub status: PaymentStatus,
    pub identity: Option<PaymentIdentity>,
    /// Every attempt in order (at most [`FAILED_ATTEMPTS_MAX`]).
    pub attempts: Vec<PaymentAttempt>,
    pub failed_attempts: u32,
    /// The provider reference of the completed attempt.
    pub provider_reference: Option<String>,
    /// Refund id (UUID text) -> amount.
    pub refunds: BTreeMap<String, Money>,
    pub refunded_total: Money,
}

impl PaymentState {
    /// The completed attempt, if the payment is paid.
    pub fn completed_attempt(&self) -> Option<&PaymentAttempt> {
        self.attempts
            .last()
            .filter(|a| a.outcome == AttemptOutcome::Completed)
    }
    /// What may still be refunded (zero unless paid).
    pub fn refundable(&self) -> Money {
        match self.completed_attempt() {
            Some(a) => a
                .amount
                .checked_sub(self.refunded_total)
                .unwrap_or(Money::ZERO),
            None => Money::ZERO,
        }
    }
    fn attempt_fingerprint(&self, attempt: &PaymentAttempt) -> Option<TransactionFingerprint> {
        self.identity.as_ref().map(|id| {
            TransactionFingerprint::new(
                id.payer_id,
                attempt.amount,
                attempt.currency,
                id.target_type,
                id.target_id,
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("the amount must be greater than zero, got {0}")]
    NonPositiveAmount(Money),
    #[error("no fixed USD rate for {0:?}: the payment limit cannot be checked")]
    UnsupportedCurrency(Currency),
    #[error(
        "{amount} {currency:?} is more than {} USD at the fixed rate",
        AMOUNT_MAX_USD
    )]
    AmountAboveLimit { amount: Money, currency: Currency },
    #[error("a card payment needs a CVV")]
    CvvMissing,
    #[error("a CVV is 3 or 4 digits")]
    CvvMalformed,
    #[error("a CVV is taken only for card payments, not for {0:?}")]
    CvvNotExpected(PaymentMethod),
    #[error(
        "an identical transaction was made at {previous_at}, less than {window_seconds} s ago"
    )]
    DuplicateTransaction {
        previous_at: DateTime<Utc>,
        window_seconds: i64,
    },
    #[error("attempt {attempt} is still in progress")]
    AttemptInProgress { attempt: u32 },
    #[error("the payment is blocked after {failed_attempts} failed attempts")]
    PaymentBlocked { failed_attempts: u32 },
    #[error("the payment is already completed")]
    AlreadyCompleted,
    #[error("this aggregate is payment {expected}, the command names {got}")]
    PaymentIdMismatch { expected: Uuid, got: Uuid },
    #[error("a retry must come from the same payer {expected}, not {got}")]
    PayerMismatch { expected: Uuid, got: Uuid },
    #[error("a retry must pay the same target {expected_type:?} {expected_id}")]
    TargetMismatch {
        expected_type: TargetType,
        expected_id: Uuid,
    },
    #[error("no attempt is in progress (status {status})")]
    NoAttemptInProgress { status: PaymentStatus },
    /// The answer names another attempt than the one in progress (a late answer of an
    /// attempt that was already answered, or of one not started).
    #[error("the answer is for attempt {answered}, the attempt in progress is {in_progress:?}")]
    AttemptMismatch {
        answered: u32,
        in_progress: Option<u32>,
    },
    #[error("only a completed payment can be refunded (status {status})")]
    NotCompleted { status: PaymentStatus },
    #[error("the payment is already refunded in full")]
    AlreadyFullyRefunded,
    #[error("a refund must be greater than zero, got {0}")]
    NonPositiveRefund(Money),
    #[error("a refund of {requested} exceeds the {refundable} still refundable")]
    RefundExceedsRefundable { requested: Money, refundable: Money },
    #[error("refund {refund_id} was already made with another amount")]
    RefundIdConflict { refund_id: Uuid },
    #[error("an invoice payment must name its beneficiary department")]
    BeneficiaryMissing,
    #[error("a beneficiary department is taken only for invoices, not for a {0:?} target")]
    BeneficiaryNotExpected(TargetType),
    #[error("a retry must name the same beneficiary department {expected:?}, not {got:?}")]
    BeneficiaryMismatch {
        expected: Option<Uuid>,
        got: Option<Uuid>,
    },
    #[error("an invoice is paid by bank_transfer, card or cash, not by {0:?}")]
    InvoiceMethodNotAccepted(PaymentMethod),
    #[error("transfer accounts are taken only with bank_transfer, not with {0:?}")]
    TransferNotExpected(PaymentMethod),
    #[error("a transfer must credit another account than it debits ({0})")]
    TransferToSameAccount(Uuid),
}

// ---------------------------------------------------------------------------------------------
// The aggregate
// ---------------------------------------------------------------------------------------------

/// The payment aggregate. See the module docs for its rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Payment;

impl Aggregate for Payment {
    const TYPE: &'static str = "Payment";
    /// 2: `PaymentIdentity::beneficiary_department_id` and `PaymentAttempt::transfer` added.
    const STATE_SCHEMA_VERSION: u32 = 2;
    type State = PaymentState;
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn decide(
        state: &PaymentState,
        command: &PaymentCommand,
        ctx: &DecideContext,
    ) -> Result<Vec<PaymentEvent>, PaymentError> {
        match command {
            PaymentCommand::Initiate(c) => initiate(state, c, ctx),
            PaymentCommand::Complete(c) => complete(state, c, ctx.now),
            PaymentCommand::Fail(c) => fail(state, c, ctx.now),
            PaymentCommand::Refund(c) => refund(state, c, ctx.now),
        }
    }

    fn apply(state: &mut PaymentState, event: &PaymentEvent) {
        match event {
            PaymentEvent::PaymentInitiated(e) => {
                if state.identity.is_none() {
                    state.identity = Some(PaymentIdentity {
                        payment_id: e.payment_id,
                        payer_id: e.payer_id,
                        target_type: e.target_type,
                        target_id: e.target_id,
                        beneficiary_department_id: e.beneficiary_department_id,
                    });
                }
                state.attempts.push(PaymentAttempt {
                    attempt: e.attempt,
                    amount: e.amount,
                    currency: e.currency,
                    amount_usd: e.amount_usd,
                    payment_method: e.payment_method,
                    cvv_checked: e.cvv_checked,
                    initiated_at: e.initiated_at,
                    outcome: AttemptOutcome::Pending,
                    transfer: e.transfer.clone(),
                });
                state.status = PaymentStatus::Initiated;
            }
            PaymentEvent::PaymentCompleted(e) => {
                if let Some(last) = state.attempts.last_mut() {
                    last.outcome = AttemptOutcome::Completed;
                }
                state.provider_reference = Some(e.provider_reference.clone());
                state.status = PaymentStatus::Completed;
            }
            PaymentEvent::PaymentFailed(e) => {
                if let Some(last) = state.attempts.last_mut() {
                    last.outcome = AttemptOutcome::Failed;
                }
                state.failed_attempts = e.failed_attempts;
                state.status = if e.blocked {
                    PaymentStatus::Blocked
                } else {
                    PaymentStatus::Failed
                };
            }
            PaymentEvent::PaymentRefunded(e) => {
                state.refunds.insert(e.refund_id.to_string(), e.amount);
                state.refunded_total = e.total_refunded;
                state.status = if e.fully_refunded {
                    PaymentStatus::Refunded
                } else {
                    PaymentStatus::PartiallyRefunded
                };
            }
            // Published views of the completion that precedes them: nothing to fold.
            PaymentEvent::PaymentReceived(_) | PaymentEvent::PaymentProcessed(_) => {}
        }
    }

    fn check_invariants(state: &PaymentState) -> Result<(), String> {
        check_payment_invariants(state)
    }

    /// The command without its CVV's digits (their presence stays): see the module docs.
    fn idempotency_view(command: &PaymentCommand) -> std::borrow::Cow<'_, PaymentCommand> {
        match command {
            PaymentCommand::Initiate(c) if c.cvv.is_some() => {
                std::borrow::Cow::Owned(PaymentCommand::Initiate(InitiatePayment {
                    cvv: Some(Cvv::new("")),
                    ..c.clone()
                }))
            }
            _ => std::borrow::Cow::Borrowed(command),
        }
    }

    /// `PaymentInitiated` 1.0 is decoded in its legacy shape and upcast ([`legacy`]); every
    /// other record as the current enum, refusing another major version or a type mismatch.
    fn decode_event(
        event_type: &str,
        event_version: &str,
        payload: &[u8],
    ) -> Result<PaymentEvent, CodecError> {
        if (event_type, event_version) == ("PaymentInitiated", PAYMENT_INITIATED_V1_0_VERSION) {
            let PaymentEventV1_0::PaymentInitiated(legacy) = codec::decode(payload)?;
            return Ok(PaymentEvent::PaymentInitiated(legacy.upcast()));
        }
        evershard_model::decode_current_event(event_type, event_version, payload)
    }
}

fn initiate(
    state: &PaymentState,
    cmd: &InitiatePayment,
    ctx: &DecideContext,
) -> Result<Vec<PaymentEvent>, PaymentError> {
    let now = ctx.now;
    // A payment addressed by a UUID is that payment: its events are keyed by the aggregate
    // id on the topics, so another id in the body would publish a second lifecycle of it.
    // (Checked on the first attempt: a payment started before this rule keeps its id.)
    if let (None, Ok(addressed)) = (&state.identity, Uuid::parse_str(&ctx.aggregate_id)) {
        if addressed != cmd.payment_id {
            return Err(PaymentError::PaymentIdMismatch {
                expected: addressed,
                got: cmd.payment_id,
            });
        }
    }
    match state.status {
        PaymentStatus::Blocked => {
            return Err(PaymentError::PaymentBlocked {
                failed_attempts: state.failed_attempts,
            })
        }
        status if status.is_paid() => return Err(PaymentError::AlreadyCompleted),
        _ => {}
    }
    if let Some(id) = &state.identity {
        if id.payment_id != cmd.payment_id {
            return Err(PaymentError::PaymentIdMismatch {
                expected: id.payment_id,
                got: cmd.payment_id,
            });
        }
        if id.payer_id != cmd.payer_id {
            return Err(PaymentError::PayerMismatch {
                expected: id.payer_id,
                got: cmd.payer_id,
            });
        }
        if id.target_type != cmd.target_type || id.target_id != cmd.target_id {
            return Err(PaymentError::TargetMismatch {
                expected_type: id.target_type,
                expected_id: id.target_id,
            });
        }
    }
    if cmd.target_type != TargetType::Invoice && cmd.beneficiary_department_id.is_some() {
        return Err(PaymentError::BeneficiaryNotExpected(cmd.target_type));
    }
    match &state.identity {
        Some(id) if id.beneficiary_department_id != cmd.beneficiary_department_id => {
            return Err(PaymentError::BeneficiaryMismatch {
                expected: id.beneficiary_department_id,
                got: cmd.beneficiary_department_id,
            })
        }
        None if cmd.target_type == TargetType::Invoice
            && cmd.beneficiary_department_id.is_none() =>
        {
            return Err(PaymentError::BeneficiaryMissing)
        }
        _ => {}
    }
    if !cmd.amount.is_positive() {
        return Err(PaymentError::NonPositiveAmount(cmd.amount));
    }
    let rate = usd_rate_ppm(cmd.currency).ok_or(PaymentError::UnsupportedCurrency(cmd.currency))?;
    if !within_usd_limit(cmd.amount, rate) {
        return Err(PaymentError::AmountAboveLimit {
            amount: cmd.amount,
            currency: cmd.currency,
        });
    }
    let amount_usd = to_usd(cmd.amount, cmd.currency).ok_or(PaymentError::AmountAboveLimit {
        amount: cmd.amount,
        currency: cmd.currency,
    })?;
    let cvv_checked = match (cmd.payment_method, &cmd.cvv) {
        (PaymentMethod::Card, None) => return Err(PaymentError::CvvMissing),
        (PaymentMethod::Card, Some(cvv)) if !cvv.is_well_formed() => {
            return Err(PaymentError::CvvMalformed)
        }
        (PaymentMethod::Card, Some(_)) => true,
        (method, Some(_)) => return Err(PaymentError::CvvNotExpected(method)),
        (_, None) => false,
    };
    // An invoice payment that names its beneficiary (every one but a 1.0 legacy payment) is
    // reported by `PaymentReceived`, whose method is bank_transfer, card or cash.
    if cmd.beneficiary_department_id.is_some() && cmd.payment_method.for_invoice().is_none() {
        return Err(PaymentError::InvoiceMethodNotAccepted(cmd.payment_method));
    }
    if let Some(transfer) = &cmd.transfer {
        if cmd.payment_method != PaymentMethod::BankTransfer {
            return Err(PaymentError::TransferNotExpected(cmd.payment_method));
        }
        if transfer.from_account_id == transfer.to_account_id {
            return Err(PaymentError::TransferToSameAccount(
                transfer.from_account_id,
            ));
        }
    }
    // Rule (a) of the 10-second rule: an identical repeat on this payment.
    let fingerprint = cmd.fingerprint();
    if let Some(previous) = state.attempts.iter().rev().find(|a| {
        state.attempt_fingerprint(a) == Some(fingerprint)
            && within_duplicate_window(a.initiated_at, now)
    }) {
        return Err(PaymentError::DuplicateTransaction {
            previous_at: previous.initiated_at,
            window_seconds: DUPLICATE_WINDOW_SECONDS,
        });
    }
    if state.status == PaymentStatus::Initiated {
        return Err(PaymentError::AttemptInProgress {
            attempt: attempt_number(state),
        });
    }
    Ok(vec![PaymentInitiated {
        payment_id: cmd.payment_id,
        payer_id: cmd.payer_id,
        target_type: cmd.target_type,
        target_id: cmd.target_id,
        amount: cmd.amount,
        currency: cmd.currency,
        amount_usd,
        payment_method: cmd.payment_method,
        cvv_checked,
        attempt: attempt_number(state) + 1,
        initiated_at: now,
        beneficiary_department_id: cmd.beneficiary_department_id,
        transfer: cmd.transfer.clone(),
    }
    .into()])
}

fn attempt_number(state: &PaymentState) -> u32 {
    u32::try_from(state.attempts.len()).unwrap_or(u32::MAX)
}

/// The identity and the attempt in progress; `None` unless the status is `Initiated`.
fn in_progress(state: &PaymentState) -> Option<(&PaymentIdentity, &PaymentAttempt)> {
    if state.status != PaymentStatus::Initiated {
        return None;
    }
    Some((state.identity.as_ref()?, state.attempts.last()?))
}

/// The attempt an answer is for: the one in progress, which the answer names if it names
/// one.
fn answered(
    state: &PaymentState,
    named: Option<u32>,
) -> Result<(&PaymentIdentity, &PaymentAttempt), PaymentError> {
    let current = in_progress(state);
    match (named, current) {
        (Some(answered), Some((_, attempt))) if attempt.attempt != answered => {
            Err(PaymentError::AttemptMismatch {
                answered,
                in_progress: Some(attempt.attempt),
            })
        }
        (_, Some(current)) => Ok(current),
        (Some(answered), None)
            if matches!(state.status, PaymentStatus::Failed | PaymentStatus::Blocked) =>
        {
            Err(PaymentError::AttemptMismatch {
                answered,
                in_progress: None,
            })
        }
        (_, None) => Err(PaymentError::NoAttemptInProgress {
            status: state.status,
        }),
    }
}

fn complete(
    state: &PaymentState,
    cmd: &CompletePayment,
    now: DateTime<Utc>,
) -> Result<Vec<PaymentEvent>, PaymentError> {
    if state.status.is_paid() {
        return if state.provider_reference.as_deref() == Some(cmd.provider_reference.as_str()) {
            Ok(vec![])
        } else {
            Err(PaymentError::AlreadyCompleted)
        };
    }
    let (id, attempt) = answered(state, cmd.attempt)?;
    let mut events = vec![PaymentCompleted {
        payment_id: id.payment_id,
        payer_id: id.payer_id,
        target_type: id.target_type,
        target_id: id.target_id,
        amount: attempt.amount,
        currency: attempt.currency,
        payment_method: attempt.payment_method,
        attempt: attempt.attempt,
        provider_reference: cmd.provider_reference.clone(),
        completed_at: now,
    }
    .into()];
    if let Some(transfer) = &attempt.transfer {
        events.push(
            PaymentProcessed {
                payment_id: id.payment_id,
                from_account_id: transfer.from_account_id,
                to_account_id: transfer.to_account_id,
                amount: attempt.amount,
                currency: attempt.currency,
                reference: transfer.reference.clone(),
            }
            .into(),
        );
    }
    // `initiate` refuses apple_pay/paypal once a beneficiary is named, so the method maps.
    if let (Some(beneficiary), Some(method)) = (
        id.beneficiary_department_id,
        attempt.payment_method.for_invoice(),
    ) {
        events.push(
            PaymentReceived {
                payment_id: id.payment_id,
                invoice_id: id.target_id,
                payer_id: id.payer_id,
                amount: attempt.amount,
                payment_method: method,
                beneficiary_department_id: beneficiary,
            }
            .into(),
        );
    }
    Ok(events)
}

fn fail(
    state: &PaymentState,
    cmd: &FailPayment,
    now: DateTime<Utc>,
) -> Result<Vec<PaymentEvent>, PaymentError> {
    // A repeat of an attempt's failure (the provider's answer delivered twice), also once a
    // later attempt completed.
    if let Some(n) = cmd.attempt {
        if state
            .attempts
            .iter()
            .any(|a| a.attempt == n && a.outcome == AttemptOutcome::Failed)
        {
            return Ok(vec![]);
        }
    }
    if state.status.is_paid() {
        return Err(PaymentError::AlreadyCompleted);
    }
    let (id, attempt) = answered(state, cmd.attempt)?;
    let failed_attempts = state.failed_attempts + 1;
    Ok(vec![PaymentFailed {
        payment_id: id.payment_id,
        payer_id: id.payer_id,
        target_type: id.target_type,
        target_id: id.target_id,
        amount: attempt.amount,
        currency: attempt.currency,
        payment_method: attempt.payment_method,
        attempt: attempt.attempt,
        reason: cmd.reason.clone(),
        failed_attempts,
        blocked: failed_attempts >= FAILED_ATTEMPTS_MAX,
        failed_at: now,
    }
    .into()])
}

fn refund(
    state: &PaymentState,
    cmd: &RefundPayment,
    now: DateTime<Utc>,
) -> Result<Vec<PaymentEvent>, PaymentError> {
    if let Some(&previous) = state.refunds.get(&cmd.refund_id.to_string()) {
        return match cmd.amount {
            None => Ok(vec![]),
            Some(amount) if amount == previous => Ok(vec![]),
            Some(_) => Err(PaymentError::RefundIdConflict {
                refund_id: cmd.refund_id,
            }),
        };
    }
    match state.status {
        PaymentStatus::Completed | PaymentStatus::PartiallyRefunded => {}
        PaymentStatus::Refunded => return Err(PaymentError::AlreadyFullyRefunded),
        status => return Err(PaymentError::NotCompleted { status }),
    }
    let (Some(id), Some(paid)) = (&state.identity, state.completed_attempt()) else {
        return Err(PaymentError::NotCompleted {
            status: state.status,
        });
    };
    let refundable = state.refundable();
    let amount = cmd.amount.unwrap_or(refundable);
    if !amount.is_positive() {
        return Err(PaymentError::NonPositiveRefund(amount));
    }
    if amount > refundable {
        return Err(PaymentError::RefundExceedsRefundable {
            requested: amount,
            refundable,
        });
    }
    let total_refunded = state.refunded_total + amount;
    Ok(vec![PaymentRefunded {
        payment_id: id.payment_id,
        refund_id: cmd.refund_id,
        payer_id: id.payer_id,
        target_type: id.target_type,
        target_id: id.target_id,
        amount,
        currency: paid.currency,
        total_refunded,
        fully_refunded: total_refunded == paid.amount,
        reason: cmd.reason.clone(),
        refunded_at: now,
    }
    .into()])
}

fn check_payment_invariants(state: &PaymentState) -> Result<(), String> {
    let attempts = &state.attempts;
    if attempts.len() > FAILED_ATTEMPTS_MAX as usize {
        return Err(format!(
            "{} attempts, at most {FAILED_ATTEMPTS_MAX}",
            attempts.len()
        ));
    }
    if state.identity.is_none() != attempts.is_empty() {
        return Err("the identity is set iff there is an attempt".into());
    }
    let beneficiary = state
        .identity
        .as_ref()
        .and_then(|id| id.beneficiary_department_id.map(|b| (id.target_type, b)));
    if let Some((target_type, _)) = beneficiary {
        if target_type != TargetType::Invoice {
            return Err(format!(
                "a beneficiary department on a {target_type:?} target"
            ));
        }
        if let Some(a) = attempts
            .iter()
            .find(|a| a.payment_method.for_invoice().is_none())
        {
            return Err(format!(
                "attempt {} pays an invoice by {}",
                a.attempt,
                a.payment_method.as_str()
            ));
        }
    }
    for a in attempts {
        if let Some(transfer) = &a.transfer {
            if a.payment_method != PaymentMethod::BankTransfer {
                return Err(format!(
                    "attempt {} has transfer accounts but pays by {}",
                    a.attempt,
                    a.payment_method.as_str()
                ));
            }
            if transfer.from_account_id == transfer.to_account_id {
                return Err(format!(
                    "attempt {} transfers to the account it debits",
                    a.attempt
                ));
            }
        }
    }
    for (index, a) in attempts.iter().enumerate() {
        if a.attempt as usize != index + 1 {
            return Err(format!(
                "attempt at index {index} is numbered {}",
                a.attempt
            ));
        }
        if !a.amount.is_positive() {
            return Err(format!(
                "attempt {} has a non-positive amount {}",
                a.attempt, a.amount
            ));
        }
        match usd_rate_ppm(a.currency) {
            Some(rate) if within_usd_limit(a.amount, rate) => {}
            _ => return Err(format!("attempt {} is above the USD limit", a.attempt)),
        }
        if a.cvv_checked != (a.payment_method == PaymentMethod::Card) {
            return Err(format!(
                "attempt {}: cvv_checked must be true iff card",
                a.attempt
            ));
        }
        if index + 1 < attempts.len() && a.outcome != AttemptOutcome::Failed {
            return Err(format!(
                "attempt {} is followed by another but did not fail",
                a.attempt
            ));
        }
    }
    let failed = attempts
        .iter()
        .filter(|a| a.outcome == AttemptOutcome::Failed)
        .count();
    if failed != state.failed_attempts as usize {
        return Err(format!(
            "failed_attempts {} but {failed} failed",
            state.failed_attempts
        ));
    }
    let refunds_sum = state
        .refunds
        .values()
        .try_fold(Money::ZERO, |sum, r| sum.checked_add(*r))
        .ok_or("the refunds overflow")?;
    if refunds_sum != state.refunded_total {
        return Err(format!(
            "refunded_total {} but the refunds sum to {refunds_sum}",
            state.refunded_total
        ));
    }
    if let Some(bad) = state.refunds.values().find(|r| !r.is_positive()) {
        return Err(format!("a refund of {bad} is not positive"));
    }
    let expected = match (attempts.last(), state.completed_attempt()) {
        (None, _) => PaymentStatus::New,
        (_, Some(paid)) => {
            if state.refunded_total > paid.amount {
                return Err(format!(
                    "refunded {} of a completed {}",
                    state.refunded_total, paid.amount
                ));
            }
            if state.refunded_total == Money::ZERO {
                PaymentStatus::Completed
            } else if state.refunded_total < paid.amount {
                PaymentStatus::PartiallyRefunded
            } else {
                PaymentStatus::Refunded
            }
        }
        (Some(last), None) => {
            if !state.refunds.is_empty() {
                return Err("refunds on a payment that is not completed".into());
            }
            match last.outcome {
                AttemptOutcome::Pending => PaymentStatus::Initiated,
                AttemptOutcome::Failed if state.failed_attempts >= FAILED_ATTEMPTS_MAX => {
                    PaymentStatus::Blocked
                }
                AttemptOutcome::Failed => PaymentStatus::Failed,
                AttemptOutcome::Completed => {
                    return Err("a completed attempt that is not the paid one".into())
                }
            }
        }
    };
    if state.status != expected {
        return Err(format!(
            "status is {} but the attempts imply {expected}",
            state.status
        ));
    }
    if state.provider_reference.is_some() != state.status.is_paid() {
        return Err("a provider reference iff the payment is paid".into());
    }
    Ok(())
}
