//! Behaviour of the `Payment` aggregate, one command at a time.
//!
//! Proves, with given/when/then scenarios on a fixed clock (`testing::fixed_now`), that every
//! command is accepted with exactly the expected events in the states where it should be, and
//! rejected with the exact typed error for every rejection reason: CVV presence and format,
//! the 50,000 USD limit at the fixed rates (exact boundaries in USD, EUR and RUB), the
//! 10-second duplicate rule inside one payment (rule (a)), the three-failure block, refunds
//! above what was paid, idempotent repeats. Also checks that no CVV reaches an event, the
//! state or a `Debug` print, that the lifecycle table `can_transition` is exactly the
//! documented one, and that the demo `Workload` drives payments into every status.
//! The bank events: a completed invoice payment also publishes `PaymentReceived` (each of
//! bank_transfer/card/cash; apple_pay and paypal refused for invoices; beneficiary required,
//! refused elsewhere, fixed on retries; 1.0 legacy payments publish none), a completed
//! outgoing transfer also publishes `PaymentProcessed` (accounts only with bank_transfer,
//! never to the debited account), both in order when an invoice is paid by transfer; limit,
//! duplicates, blocking, refunds and idempotent completion still hold; the workload emits both.

use chrono::{DateTime, Duration, Utc};
use evershard_aggregates::payment::*;
use evershard_model::testing::{assert_transition_table, fixed_now, given, given_no_events};
use evershard_model::{
    codec, Aggregate, Currency, DecideContext, DemoRng, DomainEvent, Money, Workload,
};
use std::collections::BTreeSet;
use uuid::Uuid;

fn payment_id() -> Uuid {
    Uuid::from_u128(0x1001)
}
fn payer_id() -> Uuid {
    Uuid::from_u128(0x2002)
}
fn target_id() -> Uuid {
    Uuid::from_u128(0x3003)
}
fn t(seconds: i64) -> DateTime<Utc> {
    fixed_now() + Duration::seconds(seconds)
}
fn usd(minor: i64) -> Money {
    Money::from_minor(minor)
}

/// A card payment of 100.00 USD for the order, CVV 123.
fn card_initiate() -> InitiatePayment {
    InitiatePayment {
        payment_id: payment_id(),
        payer_id: payer_id(),
        target_type: TargetType::Order,
        target_id: target_id(),
        amount: usd(10_000),
        currency: Currency::USD,
        payment_method: PaymentMethod::Card,
        cvv: Some(Cvv::new("123")),
        beneficiary_department_id: None,
        transfer: None,
    }
}

/// The `PaymentInitiated` that `card_initiate` produces as attempt `attempt` at `at`.
fn initiated(attempt: u32, at: DateTime<Utc>) -> PaymentInitiated {
    PaymentInitiated {
        payment_id: payment_id(),
        payer_id: payer_id(),
        target_type: TargetType::Order,
        target_id: target_id(),
        amount: usd(10_000),
        currency: Currency::USD,
        amount_usd: usd(10_000),
        payment_method: PaymentMethod::Card,
        cvv_checked: true,
        attempt,
        initiated_at: at,
        beneficiary_department_id: None,
        transfer: None,
    }
}

fn failed(attempt: u32, at: DateTime<Utc>) -> PaymentFailed {
    PaymentFailed {
        payment_id: payment_id(),
        payer_id: payer_id(),
        target_type: TargetType::Order,
        target_id: target_id(),
        amount: usd(10_000),
        currency: Currency::USD,
        payment_method: PaymentMethod::Card,
        attempt,
        reason: "card_declined".into(),
        failed_attempts: attempt,
        blocked: attempt >= FAILED_ATTEMPTS_MAX,
        failed_at: at,
    }
}

fn completed(attempt: u32, at: DateTime<Utc>) -> PaymentCompleted {
    PaymentCompleted {
        payment_id: payment_id(),
        payer_id: payer_id(),
        target_type: TargetType::Order,
        target_id: target_id(),
        amount: usd(10_000),
        currency: Currency::USD,
        payment_method: PaymentMethod::Card,
        attempt,
        provider_reference: "psp-1".into(),
        completed_at: at,
    }
}

fn refunded(refund: u128, amount: i64, total: i64) -> PaymentRefunded {
    PaymentRefunded {
        payment_id: payment_id(),
        refund_id: Uuid::from_u128(refund),
        payer_id: payer_id(),
        target_type: TargetType::Order,
        target_id: target_id(),
        amount: usd(amount),
        currency: Currency::USD,
        total_refunded: usd(total),
        fully_refunded: total == 10_000,
        reason: "customer_request".into(),
        refunded_at: t(100),
    }
}

fn history_initiated() -> Vec<PaymentEvent> {
    vec![initiated(1, t(0)).into()]
}
fn history_failed_once() -> Vec<PaymentEvent> {
    vec![initiated(1, t(0)).into(), failed(1, t(1)).into()]
}
fn history_blocked() -> Vec<PaymentEvent> {
    vec![
        initiated(1, t(0)).into(),
        failed(1, t(1)).into(),
        initiated(2, t(20)).into(),
        failed(2, t(21)).into(),
        initiated(3, t(40)).into(),
        failed(3, t(41)).into(),
    ]
}
fn history_completed() -> Vec<PaymentEvent> {
    vec![initiated(1, t(0)).into(), completed(1, t(2)).into()]
}
fn history_partially_refunded() -> Vec<PaymentEvent> {
    let mut h = history_completed();
    h.push(refunded(0xA1, 3_000, 3_000).into());
    h
}
fn history_refunded() -> Vec<PaymentEvent> {
    let mut h = history_completed();
    h.push(refunded(0xA1, 10_000, 10_000).into());
    h
}

fn refund(refund: u128, amount: Option<i64>) -> RefundPayment {
    RefundPayment {
        refund_id: Uuid::from_u128(refund),
        amount: amount.map(usd),
        reason: "customer_request".into(),
    }
}

// ---- InitiatePayment: accepted ----------------------------------------------------------------

#[test]
fn a_card_payment_is_initiated_with_its_cvv_checked() {
    let state = given_no_events::<Payment>()
        .when(card_initiate())
        .then_expect_events([initiated(1, fixed_now()).into()]);
    assert_eq!(state.status, PaymentStatus::Initiated);
    assert_eq!(state.attempts.len(), 1);
    assert!(state.attempts[0].cvv_checked);
}

#[test]
fn a_four_digit_cvv_is_accepted() {
    let cmd = InitiatePayment {
        cvv: Some(Cvv::new("1234")),
        ..card_initiate()
    };
    given_no_events::<Payment>()
        .when(cmd)
        .then_expect_events([initiated(1, fixed_now()).into()]);
}

#[test]
fn every_other_method_is_initiated_without_a_cvv() {
    for method in [
        PaymentMethod::ApplePay,
        PaymentMethod::Paypal,
        PaymentMethod::BankTransfer,
        PaymentMethod::Cash,
    ] {
        let cmd = InitiatePayment {
            payment_method: method,
            cvv: None,
            ..card_initiate()
        };
        let expected = PaymentInitiated {
            payment_method: method,
            cvv_checked: false,
            ..initiated(1, fixed_now())
        };
        given_no_events::<Payment>()
            .when(cmd)
            .then_expect_events([expected.into()]);
    }
}

#[test]
fn other_currencies_are_converted_at_the_fixed_rates() {
    for (currency, amount, amount_usd) in [
        (Currency::EUR, 10_000, 10_800),  // 100.00 EUR = 108.00 USD
        (Currency::RUB, 909_100, 10_000), // 9,091.00 RUB = 100.001 USD, shown rounded down
        (Currency::USD, 12_345, 12_345),
    ] {
        let cmd = InitiatePayment {
            currency,
            amount: usd(amount),
            ..card_initiate()
        };
        let expected = PaymentInitiated {
            currency,
            amount: usd(amount),
            amount_usd: usd(amount_usd),
            ..initiated(1, fixed_now())
        };
        given_no_events::<Payment>()
            .when(cmd)
            .then_expect_events([expected.into()]);
    }
    assert_eq!(usd_rate_ppm(Currency::USD), Some(1_000_000));
    assert_eq!(usd_rate_ppm(Currency::EUR), Some(1_080_000));
    assert_eq!(usd_rate_ppm(Currency::RUB), Some(11_000));
    assert_eq!(to_usd(usd(100), Currency::EUR), Some(usd(108)));
}

#[test]
fn the_limit_is_exactly_50000_usd_in_every_currency() {
    // (currency, largest accepted amount): one cent more is above the limit.
    for (currency, max_minor) in [
        (Currency::USD, 5_000_000),   // 50,000.00 USD
        (Currency::EUR, 4_629_629),   // 46,296.29 EUR = 49,999.9932 USD
        (Currency::RUB, 454_545_454), // 4,545,454.54 RUB = 49,999.99994 USD
    ] {
        let ok = InitiatePayment {
            currency,
            amount: usd(max_minor),
            ..card_initiate()
        };
        given_no_events::<Payment>()
            .when(ok)
            .then_events(|events| assert_eq!(events.len(), 1));
        let too_much = InitiatePayment {
            currency,
            amount: usd(max_minor + 1),
            ..card_initiate()
        };
        given_no_events::<Payment>()
            .when(too_much)
            .then_expect_error(PaymentError::AmountAboveLimit {
                amount: usd(max_minor + 1),
                currency,
            });
    }
}

#[test]
fn a_retry_after_a_failure_is_the_next_attempt() {
    let state = given::<Payment>(history_failed_once())
        .at(t(10))
        .when(card_initiate())
        .then_expect_events([initiated(2, t(10)).into()]);
    assert_eq!(state.status, PaymentStatus::Initiated);
    assert_eq!(state.failed_attempts, 1);
}

#[test]
fn a_retry_may_change_method_amount_and_currency() {
    let cmd = InitiatePayment {
        payment_method: PaymentMethod::Paypal,
        cvv: None,
        amount: usd(9_000),
        currency: Currency::EUR,
        ..card_initiate()
    };
    let expected = PaymentInitiated {
        payment_method: PaymentMethod::Paypal,
        cvv_checked: false,
        amount: usd(9_000),
        currency: Currency::EUR,
        amount_usd: usd(9_720),
        ..initiated(2, t(3))
    };
    // Not identical (another amount and currency), so no 10-second wait is needed.
    given::<Payment>(history_failed_once())
        .at(t(3))
        .when(cmd)
        .then_expect_events([expected.into()]);
}

// ---- InitiatePayment: rejected ----------------------------------------------------------------

#[test]
fn a_non_positive_amount_is_rejected() {
    for minor in [0, -1, -10_000] {
        let cmd = InitiatePayment {
            amount: usd(minor),
            ..card_initiate()
        };
        given_no_events::<Payment>()
            .when(cmd)
            .then_expect_error(PaymentError::NonPositiveAmount(usd(minor)));
    }
}

#[test]
fn a_card_payment_without_a_cvv_is_rejected() {
    let cmd = InitiatePayment {
        cvv: None,
        ..card_initiate()
    };
    given_no_events::<Payment>()
        .when(cmd)
        .then_expect_error(PaymentError::CvvMissing);
}

#[test]
fn a_malformed_cvv_is_rejected() {
    for bad in ["", "12", "12345", "12a", "１２３", " 123", "12.3"] {
        let cmd = InitiatePayment {
            cvv: Some(Cvv::new(bad)),
            ..card_initiate()
        };
        given_no_events::<Payment>()
            .when(cmd)
            .then_expect_error(PaymentError::CvvMalformed);
    }
}

#[test]
fn a_cvv_with_another_method_is_rejected() {
    let cmd = InitiatePayment {
        payment_method: PaymentMethod::Cash,
        cvv: Some(Cvv::new("123")),
        ..card_initiate()
    };
    given_no_events::<Payment>()
        .when(cmd)
        .then_expect_error(PaymentError::CvvNotExpected(PaymentMethod::Cash));
}

#[test]
fn an_identical_retry_within_10_seconds_is_a_duplicate() {
    // The failed attempt started at t(0): 9.999 s later is too soon, 10 s is fine.
    given::<Payment>(history_failed_once())
        .at(t(10) - Duration::milliseconds(1))
        .when(card_initiate())
        .then_expect_error(PaymentError::DuplicateTransaction {
            previous_at: t(0),
            window_seconds: DUPLICATE_WINDOW_SECONDS,
        });
    given::<Payment>(history_failed_once())
        .at(t(10))
        .when(card_initiate())
        .then_expect_events([initiated(2, t(10)).into()]);
}

#[test]
fn a_duplicate_is_found_among_all_earlier_attempts() {
    // Attempt 1 at t(0) for 100.00, attempt 2 at t(3) for 90.00: a retry of 100.00 at t(5) is
    // identical to attempt 1, two attempts back.
    let second = PaymentInitiated {
        amount: usd(9_000),
        amount_usd: usd(9_000),
        ..initiated(2, t(3))
    };
    let second_failed = PaymentFailed {
        amount: usd(9_000),
        ..failed(2, t(4))
    };
    given::<Payment>([
        initiated(1, t(0)).into(),
        failed(1, t(1)).into(),
        second.into(),
        second_failed.into(),
    ])
    .at(t(5))
    .when(card_initiate())
    .then_expect_error(PaymentError::DuplicateTransaction {
        previous_at: t(0),
        window_seconds: DUPLICATE_WINDOW_SECONDS,
    });
}

#[test]
fn a_clock_that_went_back_still_counts_as_within_the_window() {
    given::<Payment>([initiated(1, t(30)).into(), failed(1, t(31)).into()])
        .at(t(0))
        .when(card_initiate())
        .then_expect_error(PaymentError::DuplicateTransaction {
            previous_at: t(30),
            window_seconds: DUPLICATE_WINDOW_SECONDS,
        });
}

#[test]
fn a_repeat_while_an_attempt_is_in_progress_is_a_duplicate_then_in_progress() {
    given::<Payment>(history_initiated())
        .at(t(5))
        .when(card_initiate())
        .then_expect_error(PaymentError::DuplicateTransaction {
            previous_at: t(0),
            window_seconds: DUPLICATE_WINDOW_SECONDS,
        });
    given::<Payment>(history_initiated())
        .at(t(11))
        .when(card_initiate())
        .then_expect_error(PaymentError::AttemptInProgress { attempt: 1 });
}

#[test]
fn a_blocked_payment_takes_no_further_attempt() {
    let blocked = given::<Payment>(history_blocked());
    assert_eq!(blocked.state().status, PaymentStatus::Blocked);
    blocked
        .at(t(3600))
        .when(card_initiate())
        .then_expect_error(PaymentError::PaymentBlocked { failed_attempts: 3 });
}

#[test]
fn a_completed_payment_takes_no_further_attempt() {
    for history in [
        history_completed(),
        history_partially_refunded(),
        history_refunded(),
    ] {
        given::<Payment>(history)
            .at(t(3600))
            .when(card_initiate())
            .then_expect_error(PaymentError::AlreadyCompleted);
    }
}

#[test]
fn a_retry_must_keep_payment_payer_and_target() {
    let other = Uuid::from_u128(0xBAD);
    given::<Payment>(history_failed_once())
        .at(t(60))
        .when(InitiatePayment {
            payment_id: other,
            ..card_initiate()
        })
        .then_expect_error(PaymentError::PaymentIdMismatch {
            expected: payment_id(),
            got: other,
        });
    given::<Payment>(history_failed_once())
        .at(t(60))
        .when(InitiatePayment {
            payer_id: other,
            ..card_initiate()
        })
        .then_expect_error(PaymentError::PayerMismatch {
            expected: payer_id(),
            got: other,
        });
    let expected_target = PaymentError::TargetMismatch {
        expected_type: TargetType::Order,
        expected_id: target_id(),
    };
    given::<Payment>(history_failed_once())
        .at(t(60))
        .when(InitiatePayment {
            target_id: other,
            ..card_initiate()
        })
        .then_expect_error(expected_target.clone());
    given::<Payment>(history_failed_once())
        .at(t(60))
        .when(InitiatePayment {
            target_type: TargetType::Invoice,
            ..card_initiate()
        })
        .then_expect_error(expected_target);
}

/// A payment addressed by a UUID is that payment: an initiation naming another payment id
/// would publish a second lifecycle of it under this record key.
#[test]
fn an_initiation_names_the_payment_it_is_addressed_to() {
    let other = Uuid::from_u128(0xBAD);
    given_no_events::<Payment>()
        .id(other.to_string())
        .when(card_initiate())
        .then_expect_error(PaymentError::PaymentIdMismatch {
            expected: other,
            got: payment_id(),
        });
    given_no_events::<Payment>()
        .id(payment_id().to_string())
        .at(t(0))
        .when(card_initiate())
        .then_expect_events([initiated(1, t(0)).into()]); // A payment started before the rule under another id keeps its lifecycle: its retry is
                                                          // checked against its recorded identity.
    given::<Payment>(history_failed_once())
        .id(other.to_string())
        .at(t(30))
        .when(card_initiate())
        .then_expect_events([initiated(2, t(30)).into()]);
}

// ---- CompletePayment --------------------------------------------------------------------------

#[test]
fn the_attempt_in_progress_completes() {
    let state = given::<Payment>(history_initiated())
        .at(t(2))
        .when(CompletePayment {
            provider_reference: "psp-1".into(),
            attempt: None,
        })
        .then_expect_events([completed(1, t(2)).into()]);
    assert_eq!(state.status, PaymentStatus::Completed);
    assert_eq!(state.refundable(), usd(10_000));
}

#[test]
fn a_retry_completes_as_its_own_attempt() {
    let mut history = history_failed_once();
    history.push(initiated(2, t(30)).into());
    given::<Payment>(history)
        .at(t(31))
        .when(CompletePayment {
            provider_reference: "psp-1".into(),
            attempt: None,
        })
        .then_expect_events([completed(2, t(31)).into()]);
}

#[test]
fn the_same_completion_again_is_an_idempotent_repeat() {
    let state = given::<Payment>(history_completed())
        .at(t(50))
        .when(CompletePayment {
            provider_reference: "psp-1".into(),
            attempt: None,
        })
        .then_expect_events([]);
    assert_eq!(state.status, PaymentStatus::Completed);
}

#[test]
fn another_completion_of_a_paid_payment_is_rejected() {
    given::<Payment>(history_completed())
        .when(CompletePayment {
            provider_reference: "psp-2".into(),
            attempt: None,
        })
        .then_expect_error(PaymentError::AlreadyCompleted);
}

#[test]
fn completion_needs_an_attempt_in_progress() {
    for (history, status) in [
        (vec![], PaymentStatus::New),
        (history_failed_once(), PaymentStatus::Failed),
        (history_blocked(), PaymentStatus::Blocked),
    ] {
        given::<Payment>(history)
            .when(CompletePayment {
                provider_reference: "psp-1".into(),
                attempt: None,
            })
            .then_expect_error(PaymentError::NoAttemptInProgress { status });
    }
}

// ---- FailPayment ------------------------------------------------------------------------------

#[test]
fn a_failure_is_counted_and_the_third_blocks() {
    let state = given::<Payment>(history_initiated())
        .at(t(1))
        .when(FailPayment {
            reason: "card_declined".into(),
            attempt: None,
        })
        .then_expect_events([failed(1, t(1)).into()]);
    assert_eq!(state.status, PaymentStatus::Failed);
    assert_eq!(state.failed_attempts, 1);

    let mut history = history_blocked();
    history.pop();
    let state = given::<Payment>(history)
        .at(t(41))
        .when(FailPayment {
            reason: "card_declined".into(),
            attempt: None,
        })
        .then_expect_events([failed(3, t(41)).into()]);
    assert_eq!(state.status, PaymentStatus::Blocked);
    assert_eq!(state.failed_attempts, FAILED_ATTEMPTS_MAX);
    assert!(failed(3, t(41)).blocked && !failed(2, t(41)).blocked);
}

#[test]
fn a_failure_needs_an_attempt_in_progress() {
    for (history, status) in [
        (vec![], PaymentStatus::New),
        (history_failed_once(), PaymentStatus::Failed),
        (history_blocked(), PaymentStatus::Blocked),
    ] {
        given::<Payment>(history)
            .when(FailPayment {
                reason: "timeout".into(),
                attempt: None,
            })
            .then_expect_error(PaymentError::NoAttemptInProgress { status });
    }
}

#[test]
fn a_paid_payment_cannot_fail() {
    for history in [
        history_completed(),
        history_partially_refunded(),
        history_refunded(),
    ] {
        given::<Payment>(history)
            .when(FailPayment {
                reason: "timeout".into(),
                attempt: None,
            })
            .then_expect_error(PaymentError::AlreadyCompleted);
    }
}

// ---- Answers that name their attempt ---------------------------------------------------------

fn complete_attempt(attempt: u32) -> CompletePayment {
    CompletePayment {
        provider_reference: format!("psp-{attempt}"),
        attempt: Some(attempt),
    }
}

fn fail_attempt(attempt: u32) -> FailPayment {
    FailPayment {
        reason: "card_declined".into(),
        attempt: Some(attempt),
    }
}

/// The provider's failure of attempt 1, delivered again while attempt 2 is with the provider,
/// is a repeat: it neither fails attempt 2 nor counts towards the block.
#[test]
fn a_repeated_failure_of_an_earlier_attempt_writes_nothing() {
    let mut history = history_failed_once();
    history.push(initiated(2, t(30)).into());
    let state = given::<Payment>(history.clone())
        .at(t(31))
        .when(fail_attempt(1))
        .then_expect_events([]);
    assert_eq!(state.status, PaymentStatus::Initiated);
    assert_eq!(state.failed_attempts, 1);
    // Also once no attempt is in progress.
    given::<Payment>(history_failed_once())
        .when(fail_attempt(1))
        .then_expect_events([]);
    // The attempt it names, in progress, fails as before.
    given::<Payment>(history)
        .at(t(41))
        .when(fail_attempt(2))
        .then_expect_events([failed(2, t(41)).into()]);
}

/// Also once the retry completed: the repeat writes nothing, not `AlreadyCompleted`.
#[test]
fn a_repeated_failure_after_the_retry_completed_writes_nothing() {
    let mut history = history_failed_once();
    history.push(initiated(2, t(30)).into());
    history.push(completed(2, t(31)).into());
    given::<Payment>(history)
        .when(fail_attempt(1))
        .then_expect_events([]);
}

/// A late success of attempt 1 (it had failed on a timeout) cannot complete attempt 2: the
/// payment would record attempt 1's charge as attempt 2's, and attempt 2's own answer would
/// then be refused.
#[test]
fn an_answer_for_another_attempt_is_refused() {
    let mut history = history_failed_once();
    history.push(initiated(2, t(30)).into());
    given::<Payment>(history.clone())
        .when(complete_attempt(1))
        .then_expect_error(PaymentError::AttemptMismatch {
            answered: 1,
            in_progress: Some(2),
        });
    given::<Payment>(history.clone())
        .when(fail_attempt(3))
        .then_expect_error(PaymentError::AttemptMismatch {
            answered: 3,
            in_progress: Some(2),
        });
    given::<Payment>(history_failed_once())
        .when(complete_attempt(1))
        .then_expect_error(PaymentError::AttemptMismatch {
            answered: 1,
            in_progress: None,
        });
    let state = given::<Payment>(history)
        .at(t(31))
        .when(complete_attempt(2))
        .then_expect_events([PaymentCompleted {
            provider_reference: "psp-2".into(),
            ..completed(2, t(31))
        }
        .into()]);
    assert_eq!(state.status, PaymentStatus::Completed);
}

// ---- RefundPayment ----------------------------------------------------------------------------

#[test]
fn a_partial_refund_then_the_rest() {
    let state = given::<Payment>(history_completed())
        .at(t(100))
        .when(refund(0xA1, Some(3_000)))
        .then_expect_events([refunded(0xA1, 3_000, 3_000).into()]);
    assert_eq!(state.status, PaymentStatus::PartiallyRefunded);
    assert_eq!(state.refundable(), usd(7_000));

    let state = given::<Payment>(history_partially_refunded())
        .at(t(100))
        .when(refund(0xA2, Some(2_000)))
        .then_expect_events([refunded(0xA2, 2_000, 5_000).into()]);
    assert_eq!(state.status, PaymentStatus::PartiallyRefunded);

    let state = given::<Payment>(history_partially_refunded())
        .at(t(100))
        .when(refund(0xA2, None))
        .then_expect_events([refunded(0xA2, 7_000, 10_000).into()]);
    assert_eq!(state.status, PaymentStatus::Refunded);
    assert_eq!(state.refundable(), Money::ZERO);
}

#[test]
fn a_full_refund_at_once() {
    let state = given::<Payment>(history_completed())
        .at(t(100))
        .when(refund(0xA1, Some(10_000)))
        .then_expect_events([refunded(0xA1, 10_000, 10_000).into()]);
    assert_eq!(state.status, PaymentStatus::Refunded);
}

#[test]
fn a_refund_is_in_the_completed_currency() {
    let init = PaymentInitiated {
        currency: Currency::EUR,
        amount_usd: usd(10_800),
        ..initiated(1, t(0))
    };
    let done = PaymentCompleted {
        currency: Currency::EUR,
        ..completed(1, t(1))
    };
    given::<Payment>([init.into(), done.into()])
        .at(t(100))
        .when(refund(0xA1, Some(1_000)))
        .then_expect_events([PaymentRefunded {
            currency: Currency::EUR,
            ..refunded(0xA1, 1_000, 1_000)
        }
        .into()]);
}

#[test]
fn refunds_never_exceed_the_completed_amount() {
    given::<Payment>(history_completed())
        .when(refund(0xA1, Some(10_001)))
        .then_expect_error(PaymentError::RefundExceedsRefundable {
            requested: usd(10_001),
            refundable: usd(10_000),
        });
    given::<Payment>(history_partially_refunded())
        .when(refund(0xA2, Some(7_001)))
        .then_expect_error(PaymentError::RefundExceedsRefundable {
            requested: usd(7_001),
            refundable: usd(7_000),
        });
}

#[test]
fn a_non_positive_refund_is_rejected() {
    for minor in [0, -100] {
        given::<Payment>(history_completed())
            .when(refund(0xA1, Some(minor)))
            .then_expect_error(PaymentError::NonPositiveRefund(usd(minor)));
    }
}

#[test]
fn only_a_paid_payment_is_refunded() {
    for (history, status) in [
        (vec![], PaymentStatus::New),
        (history_initiated(), PaymentStatus::Initiated),
        (history_failed_once(), PaymentStatus::Failed),
        (history_blocked(), PaymentStatus::Blocked),
    ] {
        given::<Payment>(history)
            .when(refund(0xA1, None))
            .then_expect_error(PaymentError::NotCompleted { status });
    }
}

#[test]
fn a_fully_refunded_payment_takes_no_new_refund() {
    given::<Payment>(history_refunded())
        .when(refund(0xA2, Some(1)))
        .then_expect_error(PaymentError::AlreadyFullyRefunded);
}

#[test]
fn a_repeated_refund_id_is_idempotent_with_the_same_amount() {
    given::<Payment>(history_partially_refunded())
        .when(refund(0xA1, Some(3_000)))
        .then_expect_events([]);
    given::<Payment>(history_partially_refunded())
        .when(refund(0xA1, None))
        .then_expect_events([]);
    given::<Payment>(history_refunded())
        .when(refund(0xA1, Some(10_000)))
        .then_expect_events([]);
    given::<Payment>(history_partially_refunded())
        .when(refund(0xA1, Some(2_000)))
        .then_expect_error(PaymentError::RefundIdConflict {
            refund_id: Uuid::from_u128(0xA1),
        });
}

// ---- The CVV is never kept ---------------------------------------------------------------------

#[test]
fn the_cvv_never_reaches_events_state_or_debug_output() {
    let secret = "7391";
    let cmd = InitiatePayment {
        cvv: Some(Cvv::new(secret)),
        ..card_initiate()
    };
    assert!(
        !format!("{cmd:?}").contains(secret),
        "Debug of the command shows the CVV"
    );
    let ctx = DecideContext::new("p-1", fixed_now());
    let events = Payment::decide(&PaymentState::default(), &cmd.into(), &ctx).unwrap();
    let state = Payment::replay(PaymentState::default(), &events);
    for event in &events {
        let json = serde_json::to_string(event).unwrap();
        assert!(!json.contains(secret), "event JSON holds the CVV: {json}");
        assert!(
            !json.contains("\"cvv\""),
            "event JSON has a cvv field: {json}"
        );
        let bytes = codec::encode(event);
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    let state_json = serde_json::to_string(&state).unwrap();
    assert!(!state_json.contains(secret) && !format!("{state:?}").contains(secret));
    assert!(state.attempts[0].cvv_checked);
}

// ---- Lifecycle --------------------------------------------------------------------------------

#[test]
fn can_transition_is_exactly_the_documented_table() {
    use PaymentStatus::*;
    let allowed = [
        (New, Initiated),
        (Initiated, Completed),
        (Initiated, Failed),
        (Initiated, Blocked),
        (Failed, Initiated),
        (Completed, PartiallyRefunded),
        (Completed, Refunded),
        (PartiallyRefunded, PartiallyRefunded),
        (PartiallyRefunded, Refunded),
    ];
    assert_transition_table(&PaymentStatus::ALL, &allowed, can_transition);
    for from in PaymentStatus::ALL {
        if from.is_final() {
            assert!(PaymentStatus::ALL
                .iter()
                .all(|&to| !can_transition(from, to)));
        }
    }
}

#[test]
fn the_workload_drives_payments_through_every_status() {
    let mut reached = BTreeSet::new();
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    let mut rng = DemoRng::new(7);
    for payment in 0..200 {
        let mut state = PaymentState::default();
        let mut now = fixed_now() + Duration::hours(payment);
        for _ in 0..12 {
            now += Duration::seconds(rng.range(1, 15));
            let ctx = DecideContext::new(format!("payment-{payment}"), now);
            let command = Payment::sample_command(&state, &ctx, &mut rng);
            match Payment::decide(&state, &command, &ctx) {
                Ok(events) if state.status.is_final() => assert!(events.is_empty()),
                Ok(events) => {
                    accepted += 1;
                    state = Payment::replay(state, &events);
                    Payment::check_invariants(&state).unwrap();
                }
                // Blocked payments can only be refused; count the others.
                Err(_) if state.status == PaymentStatus::Blocked => {}
                Err(_) => rejected += 1,
            }
            reached.insert(state.status.as_str());
        }
    }
    let all: BTreeSet<&str> = PaymentStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(reached, all, "statuses the workload never reached");
    assert!(
        accepted > 2 * rejected,
        "accepted {accepted}, rejected {rejected}"
    );
}

// ---- Invoice payments: PaymentReceived ----------------------------------------------------------

fn department_id() -> Uuid {
    Uuid::from_u128(0x4004)
}
fn from_account() -> Uuid {
    Uuid::from_u128(0x5005)
}
fn to_account() -> Uuid {
    Uuid::from_u128(0x6006)
}

/// A payment of 100.00 USD for the invoice `target_id()` to `department_id()`, by `method`.
fn invoice_initiate(method: PaymentMethod) -> InitiatePayment {
    InitiatePayment {
        target_type: TargetType::Invoice,
        payment_method: method,
        cvv: (method == PaymentMethod::Card).then(|| Cvv::new("123")),
        beneficiary_department_id: Some(department_id()),
        ..card_initiate()
    }
}

fn invoice_initiated(method: PaymentMethod, attempt: u32, at: DateTime<Utc>) -> PaymentInitiated {
    PaymentInitiated {
        target_type: TargetType::Invoice,
        payment_method: method,
        cvv_checked: method == PaymentMethod::Card,
        beneficiary_department_id: Some(department_id()),
        ..initiated(attempt, at)
    }
}

fn invoice_completed(method: PaymentMethod, attempt: u32, at: DateTime<Utc>) -> PaymentCompleted {
    PaymentCompleted {
        target_type: TargetType::Invoice,
        payment_method: method,
        ..completed(attempt, at)
    }
}

fn received(method: InvoicePaymentMethod) -> PaymentReceived {
    PaymentReceived {
        payment_id: payment_id(),
        invoice_id: target_id(),
        payer_id: payer_id(),
        amount: usd(10_000),
        payment_method: method,
        beneficiary_department_id: department_id(),
    }
}

fn accounts(reference: Option<&str>) -> TransferAccounts {
    TransferAccounts {
        from_account_id: from_account(),
        to_account_id: to_account(),
        reference: reference.map(str::to_owned),
    }
}

fn complete() -> CompletePayment {
    CompletePayment {
        provider_reference: "psp-1".into(),
        attempt: None,
    }
}

#[test]
fn an_invoice_payment_is_initiated_with_its_beneficiary() {
    let state = given_no_events::<Payment>()
        .when(invoice_initiate(PaymentMethod::Cash))
        .then_expect_events([invoice_initiated(PaymentMethod::Cash, 1, fixed_now()).into()]);
    let identity = state.identity.unwrap();
    assert_eq!(identity.beneficiary_department_id, Some(department_id()));
}

#[test]
fn a_completed_invoice_payment_is_also_received_by_each_accepted_method() {
    for (method, published) in [
        (
            PaymentMethod::BankTransfer,
            InvoicePaymentMethod::BankTransfer,
        ),
        (PaymentMethod::Card, InvoicePaymentMethod::Card),
        (PaymentMethod::Cash, InvoicePaymentMethod::Cash),
    ] {
        let state = given::<Payment>([invoice_initiated(method, 1, t(0)).into()])
            .at(t(2))
            .when(complete())
            .then_expect_events([
                invoice_completed(method, 1, t(2)).into(),
                received(published).into(),
            ]);
        assert_eq!(state.status, PaymentStatus::Completed);
    }
}

#[test]
fn the_received_amount_and_method_are_those_of_the_completed_retry() {
    let retry = PaymentInitiated {
        amount: usd(9_000),
        amount_usd: usd(9_720),
        currency: Currency::EUR,
        ..invoice_initiated(PaymentMethod::Cash, 2, t(30))
    };
    let failed_first = PaymentFailed {
        target_type: TargetType::Invoice,
        ..failed(1, t(1))
    };
    given::<Payment>([
        invoice_initiated(PaymentMethod::Card, 1, t(0)).into(),
        failed_first.into(),
        retry.into(),
    ])
    .at(t(31))
    .when(complete())
    .then_expect_events([
        PaymentCompleted {
            amount: usd(9_000),
            currency: Currency::EUR,
            ..invoice_completed(PaymentMethod::Cash, 2, t(31))
        }
        .into(),
        PaymentReceived {
            amount: usd(9_000),
            ..received(InvoicePaymentMethod::Cash)
        }
        .into(),
    ]);
}

#[test]
fn an_invoice_is_not_paid_by_apple_pay_or_paypal() {
    for method in [PaymentMethod::ApplePay, PaymentMethod::Paypal] {
        given_no_events::<Payment>()
            .when(invoice_initiate(method))
            .then_expect_error(PaymentError::InvoiceMethodNotAccepted(method));
        // Nor on a retry.
        given::<Payment>([
            invoice_initiated(PaymentMethod::Card, 1, t(0)).into(),
            PaymentFailed {
                target_type: TargetType::Invoice,
                ..failed(1, t(1))
            }
            .into(),
        ])
        .at(t(60))
        .when(invoice_initiate(method))
        .then_expect_error(PaymentError::InvoiceMethodNotAccepted(method));
    }
    assert_eq!(PaymentMethod::ApplePay.for_invoice(), None);
    assert_eq!(PaymentMethod::Paypal.for_invoice(), None);
}

#[test]
fn an_invoice_payment_must_name_its_beneficiary_and_only_an_invoice_may() {
    given_no_events::<Payment>()
        .when(InitiatePayment {
            beneficiary_department_id: None,
            ..invoice_initiate(PaymentMethod::Card)
        })
        .then_expect_error(PaymentError::BeneficiaryMissing);
    for target_type in [
        TargetType::Order,
        TargetType::Appointment,
        TargetType::Service,
    ] {
        given_no_events::<Payment>()
            .when(InitiatePayment {
                target_type,
                beneficiary_department_id: Some(department_id()),
                ..card_initiate()
            })
            .then_expect_error(PaymentError::BeneficiaryNotExpected(target_type));
    }
}

#[test]
fn a_retry_of_an_invoice_payment_names_the_same_beneficiary() {
    let history = || -> Vec<PaymentEvent> {
        vec![
            invoice_initiated(PaymentMethod::Card, 1, t(0)).into(),
            PaymentFailed {
                target_type: TargetType::Invoice,
                ..failed(1, t(1))
            }
            .into(),
        ]
    };
    let other = Uuid::from_u128(0xD2);
    for got in [Some(other), None] {
        given::<Payment>(history())
            .at(t(60))
            .when(InitiatePayment {
                beneficiary_department_id: got,
                ..invoice_initiate(PaymentMethod::Card)
            })
            .then_expect_error(PaymentError::BeneficiaryMismatch {
                expected: Some(department_id()),
                got,
            });
    }
    // The same beneficiary, another accepted method: the next attempt.
    given::<Payment>(history())
        .at(t(60))
        .when(invoice_initiate(PaymentMethod::BankTransfer))
        .then_expect_events([invoice_initiated(PaymentMethod::BankTransfer, 2, t(60)).into()]);
}

#[test]
fn invoice_payments_keep_the_limit_and_the_duplicate_rule() {
    given_no_events::<Payment>()
        .when(InitiatePayment {
            amount: usd(5_000_001),
            ..invoice_initiate(PaymentMethod::Cash)
        })
        .then_expect_error(PaymentError::AmountAboveLimit {
            amount: usd(5_000_001),
            currency: Currency::USD,
        });
    given::<Payment>([
        invoice_initiated(PaymentMethod::Cash, 1, t(0)).into(),
        PaymentFailed {
            target_type: TargetType::Invoice,
            payment_method: PaymentMethod::Cash,
            ..failed(1, t(1))
        }
        .into(),
    ])
    .at(t(5))
    .when(invoice_initiate(PaymentMethod::Card))
    .then_expect_error(PaymentError::DuplicateTransaction {
        previous_at: t(0),
        window_seconds: DUPLICATE_WINDOW_SECONDS,
    });
}

#[test]
fn a_repeated_invoice_completion_publishes_nothing_again_and_a_refund_no_bank_event() {
    let history = vec![
        invoice_initiated(PaymentMethod::Card, 1, t(0)).into(),
        invoice_completed(PaymentMethod::Card, 1, t(2)).into(),
        received(InvoicePaymentMethod::Card).into(),
    ];
    given::<Payment>(history.clone())
        .at(t(50))
        .when(complete())
        .then_expect_events([]);
    let state = given::<Payment>(history)
        .at(t(100))
        .when(refund(0xA1, Some(3_000)))
        .then_expect_events([PaymentRefunded {
            target_type: TargetType::Invoice,
            ..refunded(0xA1, 3_000, 3_000)
        }
        .into()]);
    assert_eq!(state.status, PaymentStatus::PartiallyRefunded);
}

#[test]
fn a_legacy_invoice_payment_without_beneficiary_keeps_the_old_rules() {
    // As upcast from PaymentInitiated 1.0: an invoice target, no beneficiary, PayPal.
    let legacy = PaymentInitiatedV1_0 {
        payment_id: payment_id(),
        payer_id: payer_id(),
        target_type: TargetType::Invoice,
        target_id: target_id(),
        amount: usd(10_000),
        currency: Currency::USD,
        amount_usd: usd(10_000),
        payment_method: PaymentMethod::Paypal,
        cvv_checked: false,
        attempt: 1,
        initiated_at: t(0),
    }
    .upcast();
    given::<Payment>([legacy.clone().into()])
        .at(t(2))
        .when(complete())
        .then_expect_events([PaymentCompleted {
            payment_method: PaymentMethod::Paypal,
            ..invoice_completed(PaymentMethod::Paypal, 1, t(2))
        }
        .into()]);
    let failed_first = PaymentFailed {
        target_type: TargetType::Invoice,
        payment_method: PaymentMethod::Paypal,
        ..failed(1, t(1))
    };
    let retry = InitiatePayment {
        payment_method: PaymentMethod::Paypal,
        cvv: None,
        beneficiary_department_id: None,
        ..invoice_initiate(PaymentMethod::Paypal)
    };
    given::<Payment>([legacy.into(), failed_first.into()])
        .at(t(60))
        .when(retry)
        .then_events(|events| assert_eq!(events.len(), 1));
}

// ---- Outgoing transfers: PaymentProcessed -------------------------------------------------------

fn transfer_initiate(reference: Option<&str>) -> InitiatePayment {
    InitiatePayment {
        payment_method: PaymentMethod::BankTransfer,
        cvv: None,
        transfer: Some(accounts(reference)),
        ..card_initiate()
    }
}

fn transfer_initiated(reference: Option<&str>, at: DateTime<Utc>) -> PaymentInitiated {
    PaymentInitiated {
        payment_method: PaymentMethod::BankTransfer,
        cvv_checked: false,
        transfer: Some(accounts(reference)),
        ..initiated(1, at)
    }
}

fn processed(reference: Option<&str>) -> PaymentProcessed {
    PaymentProcessed {
        payment_id: payment_id(),
        from_account_id: from_account(),
        to_account_id: to_account(),
        amount: usd(10_000),
        currency: Currency::USD,
        reference: reference.map(str::to_owned),
    }
}

#[test]
fn an_outgoing_transfer_is_initiated_with_its_accounts() {
    let state = given_no_events::<Payment>()
        .when(transfer_initiate(Some("INV-000042")))
        .then_expect_events([transfer_initiated(Some("INV-000042"), fixed_now()).into()]);
    assert_eq!(
        state.attempts[0].transfer,
        Some(accounts(Some("INV-000042")))
    );
}

#[test]
fn a_completed_outgoing_transfer_is_also_processed() {
    for reference in [Some("INV-000042"), None] {
        let state = given::<Payment>([transfer_initiated(reference, t(0)).into()])
            .at(t(2))
            .when(complete())
            .then_expect_events([
                PaymentCompleted {
                    payment_method: PaymentMethod::BankTransfer,
                    ..completed(1, t(2))
                }
                .into(),
                processed(reference).into(),
            ]);
        assert_eq!(state.status, PaymentStatus::Completed);
    }
}

#[test]
fn a_bank_transfer_without_accounts_completes_without_a_bank_event() {
    let init = PaymentInitiated {
        payment_method: PaymentMethod::BankTransfer,
        cvv_checked: false,
        ..initiated(1, t(0))
    };
    given::<Payment>([init.into()])
        .at(t(2))
        .when(complete())
        .then_expect_events([PaymentCompleted {
            payment_method: PaymentMethod::BankTransfer,
            ..completed(1, t(2))
        }
        .into()]);
}

#[test]
fn an_invoice_paid_by_outgoing_transfer_publishes_both_bank_events_in_order() {
    let cmd = InitiatePayment {
        transfer: Some(accounts(None)),
        currency: Currency::EUR,
        amount: usd(4_000),
        ..invoice_initiate(PaymentMethod::BankTransfer)
    };
    let state = given_no_events::<Payment>()
        .when(cmd)
        .then_events(|events| assert_eq!(events.len(), 1));
    let ctx = DecideContext::new("p-1", t(2));
    let events = Payment::decide(&state, &complete().into(), &ctx).unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
    assert_eq!(
        names,
        ["PaymentCompleted", "PaymentProcessed", "PaymentReceived"]
    );
    assert_eq!(
        events[1],
        PaymentProcessed {
            amount: usd(4_000),
            currency: Currency::EUR,
            ..processed(None)
        }
        .into()
    );
    assert_eq!(
        events[2],
        PaymentReceived {
            amount: usd(4_000),
            ..received(InvoicePaymentMethod::BankTransfer)
        }
        .into()
    );
    let topics: Vec<&str> = events.iter().map(|e| e.topic()).collect();
    assert_eq!(topics, [TOPIC, BANK_TOPIC, BANK_TOPIC]);
}

#[test]
fn transfer_accounts_only_with_bank_transfer_and_to_another_account() {
    for method in [
        PaymentMethod::Card,
        PaymentMethod::ApplePay,
        PaymentMethod::Paypal,
        PaymentMethod::Cash,
    ] {
        given_no_events::<Payment>()
            .when(InitiatePayment {
                payment_method: method,
                cvv: (method == PaymentMethod::Card).then(|| Cvv::new("123")),
                ..transfer_initiate(None)
            })
            .then_expect_error(PaymentError::TransferNotExpected(method));
    }
    given_no_events::<Payment>()
        .when(InitiatePayment {
            transfer: Some(TransferAccounts {
                to_account_id: from_account(),
                ..accounts(None)
            }),
            ..transfer_initiate(None)
        })
        .then_expect_error(PaymentError::TransferToSameAccount(from_account()));
}

#[test]
fn outgoing_transfers_keep_the_limit_blocking_and_refunds() {
    given_no_events::<Payment>()
        .when(InitiatePayment {
            amount: usd(5_000_001),
            ..transfer_initiate(None)
        })
        .then_expect_error(PaymentError::AmountAboveLimit {
            amount: usd(5_000_001),
            currency: Currency::USD,
        });
    let t_failed = |attempt: u32, at: DateTime<Utc>| PaymentFailed {
        payment_method: PaymentMethod::BankTransfer,
        ..failed(attempt, at)
    };
    let blocked = vec![
        transfer_initiated(None, t(0)).into(),
        t_failed(1, t(1)).into(),
        PaymentInitiated {
            attempt: 2,
            initiated_at: t(20),
            ..transfer_initiated(None, t(20))
        }
        .into(),
        t_failed(2, t(21)).into(),
        PaymentInitiated {
            attempt: 3,
            initiated_at: t(40),
            ..transfer_initiated(None, t(40))
        }
        .into(),
        t_failed(3, t(41)).into(),
    ];
    given::<Payment>(blocked)
        .at(t(3600))
        .when(transfer_initiate(None))
        .then_expect_error(PaymentError::PaymentBlocked { failed_attempts: 3 });
    given::<Payment>([
        transfer_initiated(None, t(0)).into(),
        PaymentCompleted {
            payment_method: PaymentMethod::BankTransfer,
            ..completed(1, t(2))
        }
        .into(),
        processed(None).into(),
    ])
    .at(t(100))
    .when(refund(0xA1, None))
    .then_expect_events([refunded(0xA1, 10_000, 10_000).into()]);
}

#[test]
fn the_bank_events_change_nothing_in_the_state() {
    let state = Payment::replay(PaymentState::default(), &history_completed());
    let mut after = state.clone();
    Payment::apply(&mut after, &received(InvoicePaymentMethod::Card).into());
    Payment::apply(&mut after, &processed(None).into());
    assert_eq!(after, state);
}

#[test]
fn the_workload_publishes_both_bank_events() {
    let mut seen = BTreeSet::new();
    let mut rng = DemoRng::new(11);
    for payment in 0..300 {
        let mut state = PaymentState::default();
        let mut now = fixed_now() + Duration::hours(payment);
        for _ in 0..8 {
            now += Duration::seconds(rng.range(1, 15));
            let ctx = DecideContext::new(format!("payment-{payment}"), now);
            let command = Payment::sample_command(&state, &ctx, &mut rng);
            if let Ok(events) = Payment::decide(&state, &command, &ctx) {
                for event in &events {
                    seen.insert(event.event_type());
                }
                state = Payment::replay(state, &events);
                Payment::check_invariants(&state).unwrap();
            }
        }
    }
    assert!(seen.contains("PaymentReceived"), "{seen:?}");
    assert!(seen.contains("PaymentProcessed"), "{seen:?}");
}
