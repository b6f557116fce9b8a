//! Behaviour of the `Credit` aggregate, one command at a time.
//!
//! Proves, with given/when/then scenarios on a fixed clock (2026-01-01), that each command is
//! accepted with exactly the expected events where it should be and rejected with the exact
//! typed error for every rejection reason: application validation, approval only of a pending
//! application within the requested amount, rate bound and first payment date, rejection with
//! a reason, payments only after approval, no overpayment, the final payment closing the
//! credit, idempotent repeats. Also checks the lifecycle table `can_transition`, the
//! basis-point rate type, and that the demo `Workload` reaches every status.

use chrono::{Duration, NaiveDate};
use evershard_aggregates::credit::*;
use evershard_model::testing::{assert_transition_table, fixed_now, given, given_no_events};
use evershard_model::{Aggregate, DecideContext, DemoRng, Money, Workload};
use std::collections::BTreeSet;
use uuid::Uuid;

fn credit_id() -> Uuid {
    Uuid::from_u128(0xC1)
}
fn applicant_id() -> Uuid {
    Uuid::from_u128(0xA1)
}
fn m(minor: i64) -> Money {
    Money::from_minor(minor)
}
fn date(y: i32, mo: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, mo, d).unwrap()
}

/// 10,000.00 for 12 months by an individual.
fn apply_cmd() -> ApplyForCredit {
    ApplyForCredit {
        credit_id: credit_id(),
        applicant_id: applicant_id(),
        applicant_type: ApplicantType::Individual,
        requested_amount: m(1_000_000),
        term_months: 12,
        purpose: "dental_treatment".into(),
    }
}
fn created() -> CreditApplicationCreated {
    CreditApplicationCreated {
        credit_id: credit_id(),
        applicant_id: applicant_id(),
        applicant_type: ApplicantType::Individual,
        requested_amount: m(1_000_000),
        term_months: 12,
        purpose: "dental_treatment".into(),
    }
}
/// 8,000.00 at 12.50 % for 12 months, first payment 2026-02-01.
fn approve_cmd() -> ApproveCredit {
    ApproveCredit {
        approved_amount: m(800_000),
        interest_rate: BasisPoints::new(1_250),
        term_months: 12,
        first_payment_date: date(2026, 2, 1),
    }
}
fn approved() -> CreditApproved {
    CreditApproved {
        credit_id: credit_id(),
        applicant_id: applicant_id(),
        approved_amount: m(800_000),
        interest_rate: BasisPoints::new(1_250),
        term_months: 12,
        first_payment_date: date(2026, 2, 1),
    }
}
fn pay(id: u128, amount: i64) -> ReceiveCreditPayment {
    ReceiveCreditPayment {
        payment_id: Uuid::from_u128(id),
        amount: m(amount),
    }
}
fn paid(id: u128, amount: i64, remaining: i64) -> CreditPaymentReceived {
    CreditPaymentReceived {
        credit_id: credit_id(),
        payment_id: Uuid::from_u128(id),
        amount: m(amount),
        remaining_balance: m(remaining),
        is_final_payment: remaining == 0,
    }
}

fn pending() -> Vec<CreditEvent> {
    vec![created().into()]
}
fn active() -> Vec<CreditEvent> {
    vec![created().into(), approved().into()]
}
fn partly_paid() -> Vec<CreditEvent> {
    vec![
        created().into(),
        approved().into(),
        paid(1, 300_000, 500_000).into(),
    ]
}
fn closed() -> Vec<CreditEvent> {
    vec![
        created().into(),
        approved().into(),
        paid(1, 800_000, 0).into(),
    ]
}
fn rejected() -> Vec<CreditEvent> {
    vec![
        created().into(),
        CreditRejected {
            credit_id: credit_id(),
            applicant_id: applicant_id(),
            reason: "low_credit_score".into(),
        }
        .into(),
    ]
}

// ---- ApplyForCredit ---------------------------------------------------------------------------

#[test]
fn an_application_is_filed_by_an_individual_or_an_organization() {
    let state = given_no_events::<Credit>()
        .when(apply_cmd())
        .then_expect_events([created().into()]);
    assert_eq!(state.status, CreditStatus::Pending);
    let org = ApplyForCredit {
        applicant_type: ApplicantType::Organization,
        ..apply_cmd()
    };
    given_no_events::<Credit>()
        .when(org)
        .then_expect_events([CreditApplicationCreated {
            applicant_type: ApplicantType::Organization,
            ..created()
        }
        .into()]);
}

/// A credit addressed by a UUID is that credit: an application naming another credit id
/// would publish a second lifecycle of it under this record key.
#[test]
fn an_application_names_the_credit_it_is_addressed_to() {
    let other = Uuid::from_u128(0xBAD);
    given_no_events::<Credit>()
        .id(other.to_string())
        .when(apply_cmd())
        .then_expect_error(CreditError::CreditIdMismatch {
            expected: other,
            got: credit_id(),
        });
    given_no_events::<Credit>()
        .id(credit_id().to_string())
        .when(apply_cmd())
        .then_expect_events([created().into()]);
}

#[test]
fn the_same_application_again_is_an_idempotent_repeat() {
    for history in [pending(), active(), rejected(), closed()] {
        given::<Credit>(history)
            .when(apply_cmd())
            .then_expect_events([]);
    }
}

#[test]
fn another_application_on_the_same_credit_is_rejected() {
    given::<Credit>(pending())
        .when(ApplyForCredit {
            requested_amount: m(5),
            ..apply_cmd()
        })
        .then_expect_error(CreditError::AlreadyApplied {
            credit_id: credit_id(),
        });
    given::<Credit>(closed())
        .when(ApplyForCredit {
            credit_id: Uuid::from_u128(7),
            ..apply_cmd()
        })
        .then_expect_error(CreditError::AlreadyApplied {
            credit_id: credit_id(),
        });
}

#[test]
fn a_non_positive_requested_amount_is_rejected() {
    for minor in [0, -1] {
        given_no_events::<Credit>()
            .when(ApplyForCredit {
                requested_amount: m(minor),
                ..apply_cmd()
            })
            .then_expect_error(CreditError::NonPositiveRequestedAmount(m(minor)));
    }
}

#[test]
fn a_zero_term_is_rejected() {
    given_no_events::<Credit>()
        .when(ApplyForCredit {
            term_months: 0,
            ..apply_cmd()
        })
        .then_expect_error(CreditError::ZeroTerm);
}

#[test]
fn a_blank_purpose_is_rejected() {
    for purpose in ["", "   "] {
        given_no_events::<Credit>()
            .when(ApplyForCredit {
                purpose: purpose.into(),
                ..apply_cmd()
            })
            .then_expect_error(CreditError::EmptyPurpose);
    }
}

// ---- ApproveCredit ----------------------------------------------------------------------------

#[test]
fn a_pending_application_is_approved() {
    let state = given::<Credit>(pending())
        .when(approve_cmd())
        .then_expect_events([approved().into()]);
    assert_eq!(state.status, CreditStatus::Approved);
    assert_eq!(state.remaining_balance, m(800_000));
}

#[test]
fn the_full_requested_amount_a_zero_rate_and_another_term_may_be_approved() {
    let cmd = ApproveCredit {
        approved_amount: m(1_000_000),
        interest_rate: BasisPoints::new(0),
        term_months: 24,
        ..approve_cmd()
    };
    let expected = CreditApproved {
        approved_amount: m(1_000_000),
        interest_rate: BasisPoints::new(0),
        term_months: 24,
        ..approved()
    };
    given::<Credit>(pending())
        .when(cmd)
        .then_expect_events([expected.into()]);
    let max_rate = ApproveCredit {
        interest_rate: BasisPoints::new(INTEREST_RATE_MAX_BPS),
        ..approve_cmd()
    };
    given::<Credit>(pending())
        .when(max_rate)
        .then_events(|e| assert_eq!(e.len(), 1));
}

#[test]
fn approval_needs_an_application() {
    given_no_events::<Credit>()
        .when(approve_cmd())
        .then_expect_error(CreditError::ApplicationNotFound);
}

#[test]
fn only_a_pending_application_is_approved() {
    for (history, status) in [
        (active(), CreditStatus::Approved),
        (rejected(), CreditStatus::Rejected),
        (closed(), CreditStatus::Closed),
    ] {
        given::<Credit>(history)
            .when(approve_cmd())
            .then_expect_error(CreditError::NotPending { status });
    }
}

#[test]
fn the_approved_amount_is_positive_and_at_most_the_requested_one() {
    for minor in [0, -1] {
        given::<Credit>(pending())
            .when(ApproveCredit {
                approved_amount: m(minor),
                ..approve_cmd()
            })
            .then_expect_error(CreditError::NonPositiveApprovedAmount(m(minor)));
    }
    given::<Credit>(pending())
        .when(ApproveCredit {
            approved_amount: m(1_000_001),
            ..approve_cmd()
        })
        .then_expect_error(CreditError::ApprovedAboveRequested {
            approved: m(1_000_001),
            requested: m(1_000_000),
        });
}

#[test]
fn an_approval_with_a_zero_term_is_rejected() {
    given::<Credit>(pending())
        .when(ApproveCredit {
            term_months: 0,
            ..approve_cmd()
        })
        .then_expect_error(CreditError::ZeroTerm);
}

#[test]
fn an_interest_rate_above_100_percent_is_rejected() {
    let rate = BasisPoints::new(INTEREST_RATE_MAX_BPS + 1);
    given::<Credit>(pending())
        .when(ApproveCredit {
            interest_rate: rate,
            ..approve_cmd()
        })
        .then_expect_error(CreditError::InterestRateAboveMax(rate));
}

#[test]
fn the_first_payment_date_must_be_after_the_approval_day() {
    let today = date(2026, 1, 1);
    for first in [today, date(2025, 12, 31)] {
        given::<Credit>(pending())
            .when(ApproveCredit {
                first_payment_date: first,
                ..approve_cmd()
            })
            .then_expect_error(CreditError::FirstPaymentDateNotInFuture {
                first_payment_date: first,
                today,
            });
    }
    // The day is the UTC day of the engine clock: late on the 1st, the 2nd is fine.
    given::<Credit>(pending())
        .at(fixed_now() + Duration::hours(23))
        .when(ApproveCredit {
            first_payment_date: date(2026, 1, 2),
            ..approve_cmd()
        })
        .then_events(|e| assert_eq!(e.len(), 1));
}

// ---- RejectCredit -----------------------------------------------------------------------------

#[test]
fn a_pending_application_is_rejected_with_a_reason() {
    let state = given::<Credit>(pending())
        .when(RejectCredit {
            reason: "low_credit_score".into(),
        })
        .then_expect_events(rejected()[1..].to_vec());
    assert_eq!(state.status, CreditStatus::Rejected);
    assert_eq!(state.rejection_reason.as_deref(), Some("low_credit_score"));
}

#[test]
fn a_rejection_without_a_reason_is_refused() {
    for reason in ["", " \t"] {
        given::<Credit>(pending())
            .when(RejectCredit {
                reason: reason.into(),
            })
            .then_expect_error(CreditError::EmptyRejectionReason);
    }
}

#[test]
fn only_a_pending_application_is_rejected() {
    given_no_events::<Credit>()
        .when(RejectCredit { reason: "x".into() })
        .then_expect_error(CreditError::ApplicationNotFound);
    for (history, status) in [
        (active(), CreditStatus::Approved),
        (rejected(), CreditStatus::Rejected),
        (closed(), CreditStatus::Closed),
    ] {
        given::<Credit>(history)
            .when(RejectCredit { reason: "x".into() })
            .then_expect_error(CreditError::NotPending { status });
    }
}

// ---- ReceiveCreditPayment ---------------------------------------------------------------------

#[test]
fn a_payment_lowers_the_balance() {
    let state = given::<Credit>(active())
        .when(pay(1, 300_000))
        .then_expect_events([paid(1, 300_000, 500_000).into()]);
    assert_eq!(state.status, CreditStatus::Approved);
    assert_eq!(state.remaining_balance, m(500_000));
    assert_eq!(state.total_paid, m(300_000));
}

#[test]
fn the_payment_that_reaches_zero_is_final_and_closes_the_credit() {
    let state = given::<Credit>(partly_paid())
        .when(pay(2, 500_000))
        .then_expect_events([paid(2, 500_000, 0).into()]);
    assert_eq!(state.status, CreditStatus::Closed);
    assert!(paid(2, 500_000, 0).is_final_payment);
    let state = given::<Credit>(active())
        .when(pay(9, 800_000))
        .then_expect_events([paid(9, 800_000, 0).into()]);
    assert_eq!(state.status, CreditStatus::Closed);
}

#[test]
fn an_overpayment_is_rejected() {
    given::<Credit>(partly_paid())
        .when(pay(2, 500_001))
        .then_expect_error(CreditError::Overpayment {
            amount: m(500_001),
            remaining_balance: m(500_000),
        });
}

#[test]
fn a_non_positive_payment_is_rejected() {
    for minor in [0, -5] {
        given::<Credit>(active())
            .when(pay(1, minor))
            .then_expect_error(CreditError::NonPositivePayment(m(minor)));
    }
}

#[test]
fn payments_only_after_approval() {
    given_no_events::<Credit>()
        .when(pay(1, 100))
        .then_expect_error(CreditError::ApplicationNotFound);
    for (history, status) in [
        (pending(), CreditStatus::Pending),
        (rejected(), CreditStatus::Rejected),
    ] {
        given::<Credit>(history)
            .when(pay(1, 100))
            .then_expect_error(CreditError::NotApproved { status });
    }
}

#[test]
fn no_payment_after_the_final_one() {
    given::<Credit>(closed())
        .when(pay(2, 1))
        .then_expect_error(CreditError::CreditClosed);
}

#[test]
fn a_repeated_payment_id_is_idempotent_with_the_same_amount() {
    given::<Credit>(partly_paid())
        .when(pay(1, 300_000))
        .then_expect_events([]);
    given::<Credit>(closed())
        .when(pay(1, 800_000))
        .then_expect_events([]);
    given::<Credit>(partly_paid())
        .when(pay(1, 1))
        .then_expect_error(CreditError::PaymentIdConflict {
            payment_id: Uuid::from_u128(1),
        });
}

// ---- Value types and lifecycle ----------------------------------------------------------------

#[test]
fn basis_points_print_and_parse_as_percent() {
    assert_eq!(BasisPoints::new(1_250).to_string(), "12.50");
    assert_eq!(BasisPoints::new(5).to_string(), "0.05");
    assert_eq!(
        BasisPoints::parse_percent("12.5"),
        Ok(BasisPoints::new(1_250))
    );
    assert_eq!(BasisPoints::parse_percent("0"), Ok(BasisPoints::new(0)));
    assert!(BasisPoints::parse_percent("-1").is_err());
    assert!(BasisPoints::parse_percent("1.234").is_err());
    assert_eq!(
        serde_json::to_string(&BasisPoints::new(1_250)).unwrap(),
        "\"12.50\""
    );
    for input in ["\"12.50\"", "12.5", "\"12.5\""] {
        assert_eq!(
            serde_json::from_str::<BasisPoints>(input).unwrap(),
            BasisPoints::new(1_250)
        );
    }
    assert_eq!(
        serde_json::from_str::<BasisPoints>("7").unwrap(),
        BasisPoints::new(700)
    );
    assert!(serde_json::from_str::<BasisPoints>("-7").is_err());
    assert!(serde_json::from_str::<BasisPoints>("0.125").is_err());
}

#[test]
fn can_transition_is_exactly_the_documented_table() {
    use CreditStatus::*;
    let allowed = [
        (New, Pending),
        (Pending, Approved),
        (Pending, Rejected),
        (Approved, Approved),
        (Approved, Closed),
    ];
    assert_transition_table(&CreditStatus::ALL, &allowed, can_transition);
    for from in CreditStatus::ALL {
        if from.is_final() {
            assert!(CreditStatus::ALL
                .iter()
                .all(|&to| !can_transition(from, to)));
        }
    }
}

#[test]
fn the_workload_drives_credits_through_every_status() {
    let mut reached = BTreeSet::new();
    let (mut accepted, mut rejected) = (0usize, 0usize);
    let mut rng = DemoRng::new(11);
    for credit in 0..150 {
        let mut state = CreditState::default();
        for step in 0..40 {
            if state.status.is_final() {
                break;
            }
            let now = fixed_now() + Duration::days(credit) + Duration::minutes(step);
            let ctx = DecideContext::new(format!("credit-{credit}"), now);
            let command = Credit::sample_command(&state, &ctx, &mut rng);
            match Credit::decide(&state, &command, &ctx) {
                Ok(events) => {
                    accepted += 1;
                    state = Credit::replay(state, &events);
                    Credit::check_invariants(&state).unwrap();
                }
                Err(_) => rejected += 1,
            }
            reached.insert(state.status.as_str());
        }
    }
    let all: BTreeSet<&str> = CreditStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(reached, all);
    assert!(
        accepted > 4 * rejected,
        "accepted {accepted}, rejected {rejected}"
    );
}
