//! The demo workload of [`Credit`]: a plausible next command for an aggregate in any state.

use crate::credit::*;
use chrono::Days;
use evershard_model::{DecideContext, DemoRng, Money, Workload};
const PURPOSES: [&str; 4] = [
    "dental_treatment",
    "equipment",
    "working_capital",
    "education",
];
const REJECTION_REASONS: [&str; 3] = ["low_credit_score", "insufficient_income", "incomplete"];
const TERMS_MONTHS: [u32; 5] = [6, 12, 24, 36, 60];

/// Plausible next commands: apply (a few with a zero amount: rejected); a pending application
/// is approved (70%, a few above the requested amount: rejected), rejected (20%) or paid too
/// early (rejected); an approved credit gets instalments of about amount/term, sometimes the
/// whole rest (final) and sometimes an overpayment (rejected). Final credits get a payment,
/// which is rejected.
impl Workload for Credit {
    fn sample_command(
        state: &CreditState,
        ctx: &DecideContext,
        rng: &mut DemoRng,
    ) -> CreditCommand {
        let payment = |rng: &mut DemoRng, amount: Money| -> CreditCommand {
            ReceiveCreditPayment {
                payment_id: rng.uuid(),
                amount,
            }
            .into()
        };
        match (state.status, &state.application, &state.approval) {
            (CreditStatus::New, _, _) | (_, None, _) => {
                let requested_amount = if rng.chance(4) {
                    Money::ZERO
                } else {
                    Money::from_major(rng.range(1_000, 500_000))
                };
                // The addressed credit (drawn either way: the stream of draws stays).
                let drawn = rng.uuid();
                ApplyForCredit {
                    credit_id: uuid::Uuid::parse_str(&ctx.aggregate_id).unwrap_or(drawn),
                    applicant_id: rng.uuid(),
                    applicant_type: *rng.pick(&ApplicantType::ALL),
                    requested_amount,
                    term_months: *rng.pick(&TERMS_MONTHS),
                    purpose: (*rng.pick(&PURPOSES)).to_owned(),
                }
                .into()
            }
            (CreditStatus::Pending, Some(application), _) => match rng.below(100) {
                0..=69 => {
                    let requested = application.requested_amount.minor();
                    let approved_amount = if rng.chance(5) {
                        Money::from_minor(requested + 100)
                    } else {
                        Money::from_minor(rng.range(requested / 2, requested).max(1))
                    };
                    let today = ctx.now.date_naive();
                    ApproveCredit {
                        approved_amount,
                        interest_rate: BasisPoints::new(rng.range(0, 2_500) as u32),
                        term_months: application.term_months,
                        first_payment_date: today.checked_add_days(Days::new(30)).unwrap_or(today),
                    }
                    .into()
                }
                70..=89 => RejectCredit {
                    reason: (*rng.pick(&REJECTION_REASONS)).to_owned(),
                }
                .into(),
                _ => payment(rng, Money::from_major(100)),
            },
            (CreditStatus::Approved, _, Some(approval)) => {
                let remaining = state.remaining_balance.minor();
                let term = i64::from(approval.term_months.max(1));
                let instalment = (approval.approved_amount.minor() / term).max(1);
                let amount = match rng.below(100) {
                    0..=14 => remaining,
                    15..=94 => rng
                        .range(instalment / 2, instalment * 3 / 2)
                        .clamp(1, remaining.max(1)),
                    _ => remaining + rng.range(1, 10_000),
                };
                payment(rng, Money::from_minor(amount))
            }
            _ => payment(rng, Money::from_major(100)),
        }
    }

    fn is_finished(state: &CreditState) -> bool {
        state.status.is_final()
    }
}
