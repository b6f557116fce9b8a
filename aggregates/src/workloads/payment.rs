//! The demo workload of [`Payment`]: a plausible next command for a payment in any state.

use crate::payment::*;
use evershard_model::{Currency, DecideContext, DemoRng, Money, Workload};
use uuid::Uuid;
const FAILURE_REASONS: [&str; 4] = [
    "card_declined",
    "insufficient_funds",
    "cvv_mismatch",
    "provider_timeout",
];

fn sample_cvv(rng: &mut DemoRng) -> Cvv {
    let digits = if rng.chance(80) { 3 } else { 4 };
    Cvv::new(
        (0..digits)
            .map(|_| char::from(b'0' + rng.below(10) as u8))
            .collect::<String>(),
    )
}

fn sample_amount(rng: &mut DemoRng, currency: Currency) -> Money {
    if rng.chance(4) {
        // Above the limit in any currency: rejected.
        return Money::from_major(6_000_000);
    }
    match currency {
        Currency::RUB => Money::from_minor(rng.range(10_000, 15_000_000)),
        _ => Money::from_minor(rng.range(100, 200_000)),
    }
}

/// A method (for an invoice mostly one of the three it takes: a few apple_pay/paypal ones are
/// rejected) and its CVV.
fn sample_method_and_cvv(rng: &mut DemoRng, invoice: bool) -> (PaymentMethod, Option<Cvv>) {
    let method = if invoice && rng.chance(95) {
        PaymentMethod::from(*rng.pick(&InvoicePaymentMethod::ALL))
    } else {
        *rng.pick(&PaymentMethod::ALL)
    };
    let cvv = match method {
        // A few card commands forget the CVV: rejected.
        PaymentMethod::Card if rng.chance(95) => Some(sample_cvv(rng)),
        _ => None,
    };
    (method, cvv)
}

/// For a bank transfer, mostly an outgoing one the bank carries out (its accounts, with or
/// without a reference); a few name the same account twice (rejected).
fn sample_transfer(rng: &mut DemoRng, method: PaymentMethod) -> Option<TransferAccounts> {
    if method != PaymentMethod::BankTransfer || !rng.chance(70) {
        return None;
    }
    let from_account_id = rng.uuid();
    let to_account_id = if rng.chance(3) {
        from_account_id
    } else {
        rng.uuid()
    };
    let reference = rng
        .chance(60)
        .then(|| format!("INV-{:06}", rng.below(1_000_000)));
    Some(TransferAccounts {
        from_account_id,
        to_account_id,
        reference,
    })
}

/// Plausible next commands: a new payment is initiated (an invoice payment names its
/// beneficiary department and mostly pays by bank_transfer, card or cash; most bank transfers
/// name their accounts, so completions publish `PaymentReceived` and `PaymentProcessed` too);
/// an attempt completes (60%) or fails;
/// a failed payment is retried (within 10 s of the last attempt, half of the retries are
/// identical and rejected as duplicates, the other half change the amount slightly so that a
/// fast demo still reaches `blocked`); a paid payment is refunded in part or in full. A
/// refunded payment mostly gets a redelivered refund (an idempotent no-op), a blocked one an
/// attempt that is rejected.
impl Workload for Payment {
    fn sample_command(
        state: &PaymentState,
        ctx: &DecideContext,
        rng: &mut DemoRng,
    ) -> PaymentCommand {
        match state.status {
            PaymentStatus::New => {
                let currency = match rng.below(100) {
                    0..=59 => Currency::USD,
                    60..=84 => Currency::EUR,
                    _ => Currency::RUB,
                };
                let target_type = *rng.pick(&TargetType::ALL);
                let invoice = target_type == TargetType::Invoice;
                let (payment_method, cvv) = sample_method_and_cvv(rng, invoice);
                // The addressed payment (drawn either way: the stream of draws stays).
                let drawn = rng.uuid();
                InitiatePayment {
                    payment_id: Uuid::parse_str(&ctx.aggregate_id).unwrap_or(drawn),
                    payer_id: rng.uuid(),
                    target_type,
                    target_id: rng.uuid(),
                    amount: sample_amount(rng, currency),
                    currency,
                    payment_method,
                    cvv,
                    // A few invoice payments forget their beneficiary: rejected.
                    beneficiary_department_id: (invoice && rng.chance(97)).then(|| rng.uuid()),
                    transfer: sample_transfer(rng, payment_method),
                }
                .into()
            }
            PaymentStatus::Initiated => {
                if rng.chance(60) {
                    CompletePayment {
                        provider_reference: format!("psp-{:016x}", rng.next_u64()),
                        attempt: None,
                    }
                    .into()
                } else {
                    FailPayment {
                        reason: (*rng.pick(&FAILURE_REASONS)).to_owned(),
                        attempt: None,
                    }
                    .into()
                }
            }
            PaymentStatus::Failed | PaymentStatus::Blocked => {
                match (&state.identity, state.attempts.last()) {
                    (Some(id), Some(last)) => {
                        let mut amount = last.amount;
                        if within_duplicate_window(last.initiated_at, ctx.now) && rng.chance(50) {
                            amount = amount + Money::from_minor(rng.range(1, 500));
                        }
                        let (payment_method, cvv) =
                            sample_method_and_cvv(rng, id.beneficiary_department_id.is_some());
                        InitiatePayment {
                            payment_id: id.payment_id,
                            payer_id: id.payer_id,
                            target_type: id.target_type,
                            target_id: id.target_id,
                            amount,
                            currency: last.currency,
                            payment_method,
                            cvv,
                            beneficiary_department_id: id.beneficiary_department_id,
                            transfer: sample_transfer(rng, payment_method),
                        }
                        .into()
                    }
                    _ => CompletePayment {
                        provider_reference: "psp-none".into(),
                        attempt: None,
                    }
                    .into(),
                }
            }
            PaymentStatus::Refunded if rng.chance(80) => {
                // A redelivered refund request: an idempotent repeat, accepted, writes nothing.
                let refund_id = state
                    .refunds
                    .keys()
                    .next()
                    .and_then(|id| Uuid::parse_str(id).ok())
                    .unwrap_or_else(|| rng.uuid());
                RefundPayment {
                    refund_id,
                    amount: None,
                    reason: "customer_request".to_owned(),
                }
                .into()
            }
            PaymentStatus::Completed
            | PaymentStatus::PartiallyRefunded
            | PaymentStatus::Refunded => {
                let refundable = state.refundable().minor();
                let amount = match rng.below(100) {
                    0..=49 if refundable > 1 => Some(Money::from_minor(rng.range(1, refundable))),
                    50..=89 => None,
                    // Too much: rejected.
                    _ => Some(Money::from_minor(refundable + rng.range(1, 10_000))),
                };
                RefundPayment {
                    refund_id: rng.uuid(),
                    amount,
                    reason: "customer_request".to_owned(),
                }
                .into()
            }
        }
    }

    fn is_finished(state: &PaymentState) -> bool {
        state.status.is_final()
    }
}
