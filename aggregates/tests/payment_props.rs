//! Property test of the `Payment` aggregate: random command sequences, valid and invalid mixed.
//!
//! Each step advances the clock by 0-14 s (so the 10-second rule both fires and lapses) and
//! builds a command from the current state: half of them from the demo `Workload` (plausible,
//! drives the lifecycle through retries, blocks and refunds), half from a "chaos" builder that
//! picks boundary amounts (0, -1, exactly 50,000 USD, one cent more), bad CVVs, foreign ids,
//! repeated refund ids and repeats of the last attempt, invoice payments with, without or with
//! a foreign beneficiary department, transfer accounts (also on other methods or naming one
//! account twice). After every command it checks:
//! the invariants hold; a rejected command leaves the state unchanged; the lifecycle event moves
//! the status along `can_transition`; the bank events (`PaymentReceived`, `PaymentProcessed`,
//! topic `bank.payments`) come only after a `PaymentCompleted`, move no status, and appear
//! exactly when the completed attempt named transfer accounts / the payment a beneficiary; replaying all accepted events from `Default` rebuilds the
//! live state; a snapshot taken at a random earlier point survives `codec` encode/decode and,
//! with the remaining events applied, equals the live state; every event survives
//! `encode_event`/`decode_event`. 128 cases from a fixed seed (override with
//! PROPTEST_RNG_SEED); no wall clock.

use chrono::Duration;
use evershard_aggregates::payment::*;
use evershard_model::testing::{
    assert_snapshot_and_tail_agree, assert_stored_event_round_trip, fixed_now,
};
use evershard_model::{Aggregate, Currency, DecideContext, DemoRng, DomainEvent, Money, Workload};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use uuid::Uuid;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..Default::default()
    };
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(0x5eed_0002);
    }
    config
}

const CURRENCIES: [Currency; 3] = [Currency::USD, Currency::EUR, Currency::RUB];

/// A command chosen to hit boundaries and rejections, given the state.
fn chaos_command(state: &PaymentState, rng: &mut DemoRng) -> PaymentCommand {
    let identity = state.identity.clone().unwrap_or(PaymentIdentity {
        payment_id: Uuid::from_u128(1),
        payer_id: Uuid::from_u128(2),
        target_type: *rng.pick(&TargetType::ALL),
        target_id: Uuid::from_u128(3),
        beneficiary_department_id: None,
    });
    // A new invoice payment mostly names a beneficiary (else: BeneficiaryMissing).
    let beneficiary = identity.beneficiary_department_id.or_else(|| {
        (identity.target_type == TargetType::Invoice && rng.chance(85)).then(|| Uuid::from_u128(4))
    });
    let foreign = Uuid::from_u128(99);
    match rng.below(4) {
        0 => {
            let last = state.attempts.last();
            let repeat_last = last.is_some() && rng.chance(40);
            let (amount, currency) = match (repeat_last, last) {
                (true, Some(a)) => (a.amount, a.currency),
                _ => {
                    let random = rng.range(1, 1_000_000);
                    let amount =
                        *rng.pick(&[0, -1, 1, 10_000, 5_000_000, 5_000_001, 4_629_629, random]);
                    (Money::from_minor(amount), *rng.pick(&CURRENCIES))
                }
            };
            let payment_method = *rng.pick(&PaymentMethod::ALL);
            let cvv = match rng.below(6) {
                0 => None,
                1 => Some(Cvv::new("12")),
                2 => Some(Cvv::new("12a4")),
                3 => Some(Cvv::new("1234")),
                _ => Some(Cvv::new("123")),
            };
            // Mostly the right method/CVV pairing so that the deeper rules are reached.
            let cvv = if payment_method == PaymentMethod::Card || rng.chance(15) {
                cvv
            } else {
                None
            };
            // Mostly accounts on a bank transfer, sometimes the same account twice, sometimes
            // accounts with another method (rejected).
            let transfer = (payment_method == PaymentMethod::BankTransfer && rng.chance(70)
                || rng.chance(5))
            .then(|| TransferAccounts {
                from_account_id: Uuid::from_u128(6),
                to_account_id: Uuid::from_u128(*rng.pick(&[7, 7, 7, 6])),
                reference: rng.chance(50).then(|| "ref".to_owned()),
            });
            InitiatePayment {
                payment_id: if rng.chance(92) {
                    identity.payment_id
                } else {
                    foreign
                },
                payer_id: if rng.chance(92) {
                    identity.payer_id
                } else {
                    foreign
                },
                target_type: if rng.chance(95) {
                    identity.target_type
                } else {
                    *rng.pick(&TargetType::ALL)
                },
                target_id: if rng.chance(92) {
                    identity.target_id
                } else {
                    foreign
                },
                amount,
                currency,
                payment_method,
                cvv,
                beneficiary_department_id: match rng.below(20) {
                    0 => Some(foreign),
                    1 => None,
                    _ => beneficiary,
                },
                transfer,
            }
            .into()
        }
        1 => CompletePayment {
            provider_reference: (*rng.pick(&["psp-a", "psp-b"])).into(),
            attempt: None,
        }
        .into(),
        2 => FailPayment {
            reason: "declined".into(),
            attempt: None,
        }
        .into(),
        _ => {
            let refundable = state.refundable().minor();
            let amount = match rng.below(5) {
                0 => None,
                1 => Some(Money::ZERO),
                2 => Some(Money::from_minor(refundable + 1)),
                3 => Some(Money::from_minor(refundable)),
                _ => Some(Money::from_minor(rng.range(1, refundable.max(1)))),
            };
            RefundPayment {
                refund_id: Uuid::from_u128(0xF0 + u128::from(rng.below(3) as u8)),
                amount,
                reason: "r".into(),
            }
            .into()
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_command_sequences_keep_every_property(
        steps in prop::collection::vec((any::<bool>(), any::<u64>(), 0i64..15), 1..40),
    ) {
        let mut live = PaymentState::default();
        let mut accepted: Vec<PaymentEvent> = Vec::new();
        let mut now = fixed_now();
        for (use_workload, seed, advance_seconds) in steps {
            now += Duration::seconds(advance_seconds);
            let ctx = DecideContext::new("payment-prop", now);
            let mut rng = DemoRng::new(seed);
            let command = if use_workload {
                Payment::sample_command(&live, &ctx, &mut rng)
            } else {
                chaos_command(&live, &mut rng)
            };
            let before = live.clone();
            match Payment::decide(&live, &command, &ctx) {
                Ok(events) => {
                    // One lifecycle event, first; only a completion adds the bank events.
                    prop_assert!(events.len() <= 3, "at most three events: {:?}", events);
                    for (index, event) in events.iter().enumerate() {
                        let bank = matches!(
                            event,
                            PaymentEvent::PaymentReceived(_) | PaymentEvent::PaymentProcessed(_)
                        );
                        prop_assert_eq!(bank, index > 0, "bank events follow the lifecycle one");
                        if bank {
                            prop_assert!(
                                matches!(events[0], PaymentEvent::PaymentCompleted(_)),
                                "a bank event after {}", events[0].event_type()
                            );
                            prop_assert_eq!(event.topic(), BANK_TOPIC);
                        }
                        let from = live.status;
                        Payment::apply(&mut live, event);
                        if bank {
                            prop_assert_eq!(from, live.status, "a bank event moves no status");
                        } else {
                            prop_assert!(
                                can_transition(from, live.status),
                                "{} -> {} by {}", from, live.status, event.event_type()
                            );
                        }
                        assert_stored_event_round_trip::<Payment>(event);
                    }
                    if let Some(PaymentEvent::PaymentCompleted(_)) = events.first() {
                        let attempt = live.completed_attempt().expect("completed");
                        let id = live.identity.clone().expect("identity");
                        let has = |name: &str| events.iter().any(|e| e.event_type() == name);
                        prop_assert_eq!(has("PaymentProcessed"), attempt.transfer.is_some());
                        prop_assert_eq!(
                            has("PaymentReceived"),
                            id.beneficiary_department_id.is_some()
                        );
                    }
                    if events.is_empty() {
                        prop_assert_eq!(&live, &before, "an idempotent repeat changes nothing");
                    }
                    accepted.extend(events);
                }
                Err(_) => prop_assert_eq!(&live, &before, "a rejection changes nothing"),
            }
            if let Err(violation) = Payment::check_invariants(&live) {
                return Err(TestCaseError::fail(format!("{violation}\n{live:#?}")));
            }
            let replayed = Payment::replay(PaymentState::default(), &accepted);
            prop_assert_eq!(&replayed, &live, "replay from Default");
            let cut = (seed % (accepted.len() as u64 + 1)) as usize;
            assert_snapshot_and_tail_agree::<Payment>(&accepted, cut, &live);
        }
    }
}
