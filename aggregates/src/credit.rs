//! The `Credit` aggregate: a credit application of an individual or an organization, its
//! approval or rejection, and its repayment until the balance is zero. Topic `bank.credits`
//! (domain-events-catalog.md, "Финтех-услуги (Банк)").
//!
//! # Commands
//! | command | accepted when | events |
//! | --- | --- | --- |
//! | [`ApplyForCredit`] | new (an identical repeat is a no-op) | `CreditApplicationCreated` |
//! | [`ApproveCredit`] | pending | `CreditApproved` |
//! | [`RejectCredit`] | pending | `CreditRejected` |
//! | [`ReceiveCreditPayment`] | approved and not closed | `CreditPaymentReceived` |
//!
//! # Events (all on topic `bank.credits`, version "1.0")
//! `CreditApplicationCreated`, `CreditApproved`, `CreditPaymentReceived` with the catalog's
//! minimal contracts (field names and JSON types), and `CreditRejected` (added: `credit_id`,
//! `applicant_id`, `reason`). Money (`decimal`) is published as a decimal string with two
//! fraction digits (`"1500.00"`); `first_payment_date` is an ISO 8601 date (`"2026-02-01"`).
//!
//! **Interest rate.** Kept as a fixed-point integer, [`BasisPoints`] (1 bp = 0.01 percentage
//! point), never a float. In JSON it is the contract's `decimal`: the annual rate **in
//! percent** as a decimal string with two fraction digits, so 1250 bp is `"12.50"` (12.5 % per
//! year). JSON input also takes a number (`12.5`). Allowed: 0 (an interest-free instalment
//! credit, as clinics offer) to [`INTEREST_RATE_MAX_BPS`] (100 % per year).
//!
//! # Lifecycle ([`can_transition`])
//! | from | to |
//! | --- | --- |
//! | `new` | `pending` |
//! | `pending` | `approved`, `rejected` |
//! | `approved` | `approved` (a payment that is not the last), `closed` (the final payment) |
//! | `rejected`, `closed` | final |
//!
//! # Rules (those the docs leave open are marked *chosen*)
//! - *Chosen*: a credit addressed by a UUID aggregate id is that credit: `ApplyForCredit`
//!   must name it as `credit_id` (`CreditIdMismatch`), since its events are keyed by the
//!   aggregate id on the topics.
//! - Applicant type `individual` | `organization`; requested amount > 0; term in months > 0;
//!   *chosen:* the purpose must not be blank.
//! - *Chosen:* applying again with exactly the same application is an idempotent repeat
//!   (`Ok(vec![])`); any other application on the same credit is refused.
//! - Approve only a pending application. Approved amount > 0 and at most the requested amount
//!   (a bank may lend less than asked, never more). *Chosen:* the approval states its own term
//!   (> 0, may differ from the requested one, as the contract carries `term_months`), and the
//!   first payment date must be after the day of approval (`ctx.now`, UTC).
//! - Reject only a pending application; *chosen:* a rejection must give a reason.
//! - Payments only after approval and before the credit is closed; amount > 0; the remaining
//!   balance never goes below zero, so a payment above it (an overpayment) is refused. The
//!   payment that brings the balance to zero carries `is_final_payment: true` and closes the
//!   credit; no payment is accepted after it.
//! - *Chosen:* a payment names its `payment_id`; the same id with the same amount again is an
//!   idempotent repeat (also after closing), with another amount it is refused.
//! - *Chosen:* the balance is the outstanding **principal**: it starts at the approved amount
//!   and falls by each payment. Interest is published with the approval but not accrued here
//!   (the catalog has no interest event); payments before `first_payment_date` are allowed
//!   (early repayment).
//! - *Chosen:* the catalog contract has no currency; all amounts of one credit are in the
//!   lending bank's account currency, which this aggregate does not model.
//!
//! # Invariants ([`Credit::check_invariants`])
//! - `new` iff there is no application; an application has requested amount > 0, term > 0;
//! - an approval iff `approved` or `closed`; a rejection iff `rejected`; never both;
//!   approved amount in (0, requested]; term > 0; rate <= max; same credit id;
//! - payments only when approved or closed, each > 0; `total_paid` is their sum;
//!   `remaining_balance` >= 0 and `remaining_balance + total_paid == approved_amount`;
//!   `approved` has a positive balance, `closed` a zero one; before approval both are zero.

use chrono::NaiveDate;
use evershard_model::{from_variants, Aggregate, DecideContext, DomainEvent, Money};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// The outbound topic of every credit event.
pub const TOPIC: &str = "bank.credits";
/// The contract version of every credit event.
pub const EVENT_VERSION: &str = "1.0";
/// The highest annual interest rate an approval may state: 100 % per year.
pub const INTEREST_RATE_MAX_BPS: u32 = 10_000;

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// An annual interest rate in basis points (1/100 of a percent): 1250 is 12.50 % per year.
///
/// JSON: the percentage as a decimal string with two fraction digits (`"12.50"`); a JSON number
/// with at most two fraction digits is read too. Bincode: the `u32`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BasisPoints(u32);

impl BasisPoints {
    pub const fn new(bps: u32) -> Self {
        BasisPoints(bps)
    }
    pub const fn get(self) -> u32 {
        self.0
    }
    /// Parses a percentage with at most two fraction digits: `"12.5"` is 1250 bp.
    pub fn parse_percent(text: &str) -> Result<Self, String> {
        let hundredths = Money::parse(text).map_err(|e| e.to_string())?.minor();
        u32::try_from(hundredths)
            .map(BasisPoints)
            .map_err(|_| format!("not a rate in 0..={} percent: {text:?}", u32::MAX / 100))
    }
}

impl fmt::Display for BasisPoints {
    /// The percentage with two fraction digits, `12.50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for BasisPoints {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for BasisPoints {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return u32::deserialize(deserializer).map(BasisPoints);
        }
        struct V;
        impl de::Visitor<'_> for V {
            type Value = BasisPoints;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage as a decimal string or number, two fraction digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BasisPoints, E> {
                BasisPoints::parse_percent(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BasisPoints, E> {
                BasisPoints::parse_percent(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BasisPoints, E> {
                BasisPoints::parse_percent(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<BasisPoints, E> {
                BasisPoints::parse_percent(&format!("{v}")).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Who applies. JSON: `individual`, `organization`. Stored: append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicantType {
    Individual,
    Organization,
}

impl ApplicantType {
    pub const ALL: [ApplicantType; 2] = [ApplicantType::Individual, ApplicantType::Organization];
}

/// Where the credit is in its lifecycle. Stored: append-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditStatus {
    /// No application yet.
    #[default]
    New,
    /// Applied; scoring under way.
    Pending,
    /// Approved; being repaid.
    Approved,
    /// Refused: final.
    Rejected,
    /// Repaid in full: final.
    Closed,
}

impl CreditStatus {
    pub const ALL: [CreditStatus; 5] = [
        CreditStatus::New,
        CreditStatus::Pending,
        CreditStatus::Approved,
        CreditStatus::Rejected,
        CreditStatus::Closed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CreditStatus::New => "new",
            CreditStatus::Pending => "pending",
            CreditStatus::Approved => "approved",
            CreditStatus::Rejected => "rejected",
            CreditStatus::Closed => "closed",
        }
    }
    /// No command changes a credit in a final status.
    pub fn is_final(self) -> bool {
        matches!(self, CreditStatus::Rejected | CreditStatus::Closed)
    }
}

impl fmt::Display for CreditStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lifecycle as a transition table: may a credit go from `from` to `to` by one event?
// A `match` on (from, to) on purpose: the lifecycle reads as a table, one row per edge.
#[allow(clippy::match_like_matches_macro)]
pub fn can_transition(from: CreditStatus, to: CreditStatus) -> bool {
    use CreditStatus::*;
    match (from, to) {
        (New, Pending) => true,
        (Pending, Approved) | (Pending, Rejected) => true,
        (Approved, Approved) | (Approved, Closed) => true,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Files the credit application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyForCredit {
    pub credit_id: Uuid,
    pub applicant_id: Uuid,
    pub applicant_type: ApplicantType,
    pub requested_amount: Money,
    pub term_months: u32,
    pub purpose: String,
}

/// Approves the pending application with these terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproveCredit {
    pub approved_amount: Money,
    pub interest_rate: BasisPoints,
    pub term_months: u32,
    pub first_payment_date: NaiveDate,
}

/// Refuses the pending application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectCredit {
    pub reason: String,
}

/// Books a repayment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveCreditPayment {
    /// Identifies the payment: a repeat with the same id is idempotent.
    pub payment_id: Uuid,
    pub amount: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditCommand {
    Apply(ApplyForCredit),
    Approve(ApproveCredit),
    Reject(RejectCredit),
    ReceivePayment(ReceiveCreditPayment),
}

from_variants!(CreditCommand {
    Apply(ApplyForCredit),
    Approve(ApproveCredit),
    Reject(RejectCredit),
    ReceivePayment(ReceiveCreditPayment),
});

// ---------------------------------------------------------------------------------------------
// Events (stored: fields and variants are append-only)
// ---------------------------------------------------------------------------------------------

/// Catalog contract: `credit_id` uuid, `applicant_id` uuid, `applicant_type`
/// enum[individual, organization], `requested_amount` decimal, `term_months` integer,
/// `purpose` string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditApplicationCreated {
    pub credit_id: Uuid,
    pub applicant_id: Uuid,
    pub applicant_type: ApplicantType,
    pub requested_amount: Money,
    pub term_months: u32,
    pub purpose: String,
}

/// Catalog contract: `credit_id` uuid, `applicant_id` uuid, `approved_amount` decimal,
/// `interest_rate` decimal, `term_months` integer, `first_payment_date` date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditApproved {
    pub credit_id: Uuid,
    pub applicant_id: Uuid,
    pub approved_amount: Money,
    /// Annual rate; JSON: percent as a decimal string (`"12.50"`).
    pub interest_rate: BasisPoints,
    pub term_months: u32,
    pub first_payment_date: NaiveDate,
}

/// Added to the catalog: the application was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditRejected {
    pub credit_id: Uuid,
    pub applicant_id: Uuid,
    pub reason: String,
}

/// Catalog contract: `credit_id` uuid, `payment_id` uuid, `amount` decimal,
/// `remaining_balance` decimal, `is_final_payment` boolean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditPaymentReceived {
    pub credit_id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
    /// The outstanding principal after this payment.
    pub remaining_balance: Money,
    /// True on the payment that brings the balance to zero: it closes the credit.
    pub is_final_payment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[event(topic = TOPIC, version = EVENT_VERSION)]
pub enum CreditEvent {
    CreditApplicationCreated(CreditApplicationCreated),
    CreditApproved(CreditApproved),
    CreditPaymentReceived(CreditPaymentReceived),
    CreditRejected(CreditRejected),
}

from_variants!(CreditEvent:
    CreditApplicationCreated,
    CreditApproved,
    CreditPaymentReceived,
    CreditRejected,
);

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditState {
    pub status: CreditStatus,
    /// The application as filed.
    pub application: Option<CreditApplicationCreated>,
    /// The approved terms.
    pub approval: Option<CreditApproved>,
    pub rejection_reason: Option<String>,
    /// Outstanding principal: zero before approval.
    pub remaining_balance: Money,
    pub total_paid: Money,
    /// Payment id (UUID text) -> amount.
    pub payments: BTreeMap<String, Money>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    #[error("no credit application has been filed")]
    ApplicationNotFound,
    #[error("credit {credit_id} already has another application")]
    AlreadyApplied { credit_id: Uuid },
    #[error("credit id {got} does not match the credit addressed, {expected}")]
    CreditIdMismatch { expected: Uuid, got: Uuid },
    #[error("the requested amount must be greater than zero, got {0}")]
    NonPositiveRequestedAmount(Money),
    #[error("the term must be at least one month")]
    ZeroTerm,
    #[error("the purpose of the credit must be given")]
    EmptyPurpose,
    #[error("only a pending application can be decided (status {status})")]
    NotPending { status: CreditStatus },
    #[error("the approved amount must be greater than zero, got {0}")]
    NonPositiveApprovedAmount(Money),
    #[error("the approved amount {approved} is above the requested {requested}")]
    ApprovedAboveRequested { approved: Money, requested: Money },
    #[error("an interest rate of {0} % is above the maximum of 100.00 %")]
    InterestRateAboveMax(BasisPoints),
    #[error("the first payment date {first_payment_date} must be after {today}")]
    FirstPaymentDateNotInFuture {
        first_payment_date: NaiveDate,
        today: NaiveDate,
    },
    #[error("a rejection must give a reason")]
    EmptyRejectionReason,
    #[error("payments are taken only on an approved credit (status {status})")]
    NotApproved { status: CreditStatus },
    #[error("the credit is repaid and closed")]
    CreditClosed,
    #[error("a payment must be greater than zero, got {0}")]
    NonPositivePayment(Money),
    #[error("a payment of {amount} is above the remaining balance of {remaining_balance}")]
    Overpayment {
        amount: Money,
        remaining_balance: Money,
    },
    #[error("payment {payment_id} was already booked with another amount")]
    PaymentIdConflict { payment_id: Uuid },
}

// ---------------------------------------------------------------------------------------------
// The aggregate
// ---------------------------------------------------------------------------------------------

/// The credit aggregate. See the module docs for its rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credit;

impl Aggregate for Credit {
    const TYPE: &'static str = "Credit";
    type State = CreditState;
    type Command = CreditCommand;
    type Event = CreditEvent;
    type Error = CreditError;

    fn decide(
        state: &CreditState,
        command: &CreditCommand,
        ctx: &DecideContext,
    ) -> Result<Vec<CreditEvent>, CreditError> {
        match command {
            CreditCommand::Apply(c) => apply_for(state, c, &ctx.aggregate_id),
            CreditCommand::Approve(c) => approve(state, c, ctx.now.date_naive()),
            CreditCommand::Reject(c) => reject(state, c),
            CreditCommand::ReceivePayment(c) => receive_payment(state, c),
        }
    }

    fn apply(state: &mut CreditState, event: &CreditEvent) {
        match event {
            CreditEvent::CreditApplicationCreated(e) => {
                state.application = Some(e.clone());
                state.status = CreditStatus::Pending;
            }
            CreditEvent::CreditApproved(e) => {
                state.remaining_balance = e.approved_amount;
                state.approval = Some(e.clone());
                state.status = CreditStatus::Approved;
            }
            CreditEvent::CreditRejected(e) => {
                state.rejection_reason = Some(e.reason.clone());
                state.status = CreditStatus::Rejected;
            }
            CreditEvent::CreditPaymentReceived(e) => {
                state.payments.insert(e.payment_id.to_string(), e.amount);
                state.total_paid = state.total_paid + e.amount;
                state.remaining_balance = e.remaining_balance;
                state.status = if e.is_final_payment {
                    CreditStatus::Closed
                } else {
                    CreditStatus::Approved
                };
            }
        }
    }

    fn check_invariants(state: &CreditState) -> Result<(), String> {
        check_credit_invariants(state)
    }
}

fn apply_for(
    state: &CreditState,
    cmd: &ApplyForCredit,
    addressed: &str,
) -> Result<Vec<CreditEvent>, CreditError> {
    // A credit addressed by a UUID is that credit: its events are keyed by the aggregate id
    // on the topics, so another id in the body would publish a second lifecycle of it.
    // (Checked on the first application: a credit filed before this rule keeps its id.)
    if let (None, Ok(addressed)) = (&state.application, Uuid::parse_str(addressed)) {
        if addressed != cmd.credit_id {
            return Err(CreditError::CreditIdMismatch {
                expected: addressed,
                got: cmd.credit_id,
            });
        }
    }
    let event = CreditApplicationCreated {
        credit_id: cmd.credit_id,
        applicant_id: cmd.applicant_id,
        applicant_type: cmd.applicant_type,
        requested_amount: cmd.requested_amount,
        term_months: cmd.term_months,
        purpose: cmd.purpose.clone(),
    };
    if let Some(existing) = &state.application {
        return if *existing == event {
            Ok(vec![])
        } else {
            Err(CreditError::AlreadyApplied {
                credit_id: existing.credit_id,
            })
        };
    }
    if !cmd.requested_amount.is_positive() {
        return Err(CreditError::NonPositiveRequestedAmount(
            cmd.requested_amount,
        ));
    }
    if cmd.term_months == 0 {
        return Err(CreditError::ZeroTerm);
    }
    if cmd.purpose.trim().is_empty() {
        return Err(CreditError::EmptyPurpose);
    }
    Ok(vec![event.into()])
}

/// The application of a pending credit, or why the credit cannot be decided.
fn pending_application(state: &CreditState) -> Result<&CreditApplicationCreated, CreditError> {
    match (state.status, &state.application) {
        (CreditStatus::Pending, Some(application)) => Ok(application),
        (CreditStatus::New, _) | (_, None) => Err(CreditError::ApplicationNotFound),
        (status, Some(_)) => Err(CreditError::NotPending { status }),
    }
}

fn approve(
    state: &CreditState,
    cmd: &ApproveCredit,
    today: NaiveDate,
) -> Result<Vec<CreditEvent>, CreditError> {
    let application = pending_application(state)?;
    if !cmd.approved_amount.is_positive() {
        return Err(CreditError::NonPositiveApprovedAmount(cmd.approved_amount));
    }
    if cmd.approved_amount > application.requested_amount {
        return Err(CreditError::ApprovedAboveRequested {
            approved: cmd.approved_amount,
            requested: application.requested_amount,
        });
    }
    if cmd.term_months == 0 {
        return Err(CreditError::ZeroTerm);
    }
    if cmd.interest_rate.get() > INTEREST_RATE_MAX_BPS {
        return Err(CreditError::InterestRateAboveMax(cmd.interest_rate));
    }
    if cmd.first_payment_date <= today {
        return Err(CreditError::FirstPaymentDateNotInFuture {
            first_payment_date: cmd.first_payment_date,
            today,
        });
    }
    Ok(vec![CreditApproved {
        credit_id: application.credit_id,
        applicant_id: application.applicant_id,
        approved_amount: cmd.approved_amount,
        interest_rate: cmd.interest_rate,
        term_months: cmd.term_months,
        first_payment_date: cmd.first_payment_date,
    }
    .into()])
}

fn reject(state: &CreditState, cmd: &RejectCredit) -> Result<Vec<CreditEvent>, CreditError> {
    let application = pending_application(state)?;
    if cmd.reason.trim().is_empty() {
        return Err(CreditError::EmptyRejectionReason);
    }
    Ok(vec![CreditRejected {
        credit_id: application.credit_id,
        applicant_id: application.applicant_id,
        reason: cmd.reason.clone(),
    }
    .into()])
}

fn receive_payment(
    state: &CreditState,
    cmd: &ReceiveCreditPayment,
) -> Result<Vec<CreditEvent>, CreditError> {
    if let Some(&booked) = state.payments.get(&cmd.payment_id.to_string()) {
        return if booked == cmd.amount {
            Ok(vec![])
        } else {
            Err(CreditError::PaymentIdConflict {
                payment_id: cmd.payment_id,
            })
        };
    }
    let approval = match (state.status, &state.approval) {
        (CreditStatus::Approved, Some(approval)) => approval,
        (CreditStatus::Closed, _) => return Err(CreditError::CreditClosed),
        (CreditStatus::New, _) => return Err(CreditError::ApplicationNotFound),
        (status, _) => return Err(CreditError::NotApproved { status }),
    };
    if !cmd.amount.is_positive() {
        return Err(CreditError::NonPositivePayment(cmd.amount));
    }
    if cmd.amount > state.remaining_balance {
        return Err(CreditError::Overpayment {
            amount: cmd.amount,
            remaining_balance: state.remaining_balance,
        });
    }
    let remaining_balance = state.remaining_balance - cmd.amount;
    Ok(vec![CreditPaymentReceived {
        credit_id: approval.credit_id,
        payment_id: cmd.payment_id,
        amount: cmd.amount,
        remaining_balance,
        is_final_payment: remaining_balance == Money::ZERO,
    }
    .into()])
}

fn check_credit_invariants(state: &CreditState) -> Result<(), String> {
    let Some(application) = &state.application else {
        return if state.status == CreditStatus::New
            && state.approval.is_none()
            && state.rejection_reason.is_none()
            && state.payments.is_empty()
            && state.remaining_balance == Money::ZERO
            && state.total_paid == Money::ZERO
        {
            Ok(())
        } else {
            Err(format!(
                "status {} or other facts without an application",
                state.status
            ))
        };
    };
    if state.status == CreditStatus::New {
        return Err("an application but status new".into());
    }
    if !application.requested_amount.is_positive() {
        return Err(format!(
            "requested amount {} is not positive",
            application.requested_amount
        ));
    }
    if application.term_months == 0 {
        return Err("the requested term is zero months".into());
    }
    let approved = matches!(state.status, CreditStatus::Approved | CreditStatus::Closed);
    if state.approval.is_some() != approved {
        return Err(format!(
            "status {} but approval present: {}",
            state.status, !approved
        ));
    }
    if state.rejection_reason.is_some() != (state.status == CreditStatus::Rejected) {
        return Err(format!(
            "status {} disagrees with the rejection",
            state.status
        ));
    }
    let paid = state
        .payments
        .values()
        .try_fold(Money::ZERO, |sum, p| sum.checked_add(*p))
        .ok_or("the payments overflow")?;
    if paid != state.total_paid {
        return Err(format!(
            "total_paid {} but the payments sum to {paid}",
            state.total_paid
        ));
    }
    if let Some(bad) = state.payments.values().find(|p| !p.is_positive()) {
        return Err(format!("a payment of {bad} is not positive"));
    }
    if state.remaining_balance.is_negative() {
        return Err(format!(
            "remaining balance {} is below zero",
            state.remaining_balance
        ));
    }
    let Some(approval) = &state.approval else {
        return if state.payments.is_empty() && state.remaining_balance == Money::ZERO {
            Ok(())
        } else {
            Err(format!(
                "payments or a balance on a {} credit",
                state.status
            ))
        };
    };
    if approval.credit_id != application.credit_id {
        return Err("the approval names another credit".into());
    }
    if !approval.approved_amount.is_positive()
        || approval.approved_amount > application.requested_amount
    {
        return Err(format!(
            "approved {} of a requested {}",
            approval.approved_amount, application.requested_amount
        ));
    }
    if approval.term_months == 0 {
        return Err("the approved term is zero months".into());
    }
    if approval.interest_rate.get() > INTEREST_RATE_MAX_BPS {
        return Err(format!(
            "interest rate {} % above the maximum",
            approval.interest_rate
        ));
    }
    if state.remaining_balance.checked_add(state.total_paid) != Some(approval.approved_amount) {
        return Err(format!(
            "remaining {} + paid {} != approved {}",
            state.remaining_balance, state.total_paid, approval.approved_amount
        ));
    }
    match state.status {
        CreditStatus::Approved if state.remaining_balance == Money::ZERO => {
            Err("an approved credit with a zero balance should be closed".into())
        }
        CreditStatus::Closed if state.remaining_balance != Money::ZERO => Err(format!(
            "a closed credit with a balance of {}",
            state.remaining_balance
        )),
        _ => Ok(()),
    }
}
