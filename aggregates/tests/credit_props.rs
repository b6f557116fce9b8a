//! Property test of the `Credit` aggregate: random command sequences, valid and invalid mixed.
//!
//! Each step advances the clock by 0-47 hours and builds a command from the current state:
//! half from the demo `Workload` (plausible: apply, approve or reject, instalments until the
//! final payment), half from a "chaos" builder that picks boundaries (zero and negative
//! amounts, one cent above the requested amount or the balance, the exact balance, the rate
//! bound, today as first payment date, blank texts) and repeated payment ids. After every
//! command it checks: the invariants hold; a rejected command leaves the state unchanged; every
//! event moves the status along `can_transition`; replaying all accepted events from `Default`
//! rebuilds the live state; a snapshot at a random earlier point survives `codec`
//! encode/decode and, with the remaining events applied, equals the live state; every event
//! survives `encode_event`/`decode_event`. 128 cases from a fixed seed (override with
//! PROPTEST_RNG_SEED); no wall clock.

use chrono::{Days, Duration};
use evershard_aggregates::credit::*;
use evershard_model::testing::{
    assert_snapshot_and_tail_agree, assert_stored_event_round_trip, fixed_now,
};
use evershard_model::{Aggregate, DecideContext, DemoRng, DomainEvent, Money, Workload};
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
        config.rng_seed = RngSeed::Fixed(0x5eed_0005);
    }
    config
}

fn chaos_command(state: &CreditState, ctx: &DecideContext, rng: &mut DemoRng) -> CreditCommand {
    let requested = state
        .application
        .as_ref()
        .map_or(1_000_000, |a| a.requested_amount.minor());
    let remaining = state.remaining_balance.minor();
    match rng.below(4) {
        0 => match &state.application {
            Some(a) if rng.chance(40) => ApplyForCredit {
                credit_id: a.credit_id,
                applicant_id: a.applicant_id,
                applicant_type: a.applicant_type,
                requested_amount: a.requested_amount,
                term_months: a.term_months,
                purpose: a.purpose.clone(),
            }
            .into(),
            _ => {
                let random = rng.range(1, 10_000_000);
                ApplyForCredit {
                    credit_id: Uuid::from_u128(u128::from(rng.below(2) as u8) + 1),
                    applicant_id: Uuid::from_u128(9),
                    applicant_type: *rng.pick(&ApplicantType::ALL),
                    requested_amount: Money::from_minor(*rng.pick(&[0, -1, 1, random, random])),
                    term_months: *rng.pick(&[0, 1, 12, 12]),
                    purpose: (*rng.pick(&["", "x", "equipment", "equipment"])).into(),
                }
                .into()
            }
        },
        1 => {
            let today = ctx.now.date_naive();
            let random = rng.range(1, requested.max(1));
            ApproveCredit {
                approved_amount: Money::from_minor(*rng.pick(&[
                    0,
                    requested,
                    requested + 1,
                    random,
                    random,
                ])),
                interest_rate: BasisPoints::new(*rng.pick(&[0, 1_250, 10_000, 10_001])),
                term_months: *rng.pick(&[0, 6, 12, 12]),
                first_payment_date: *rng.pick(&[
                    today,
                    today - Days::new(1),
                    today + Days::new(1),
                    today + Days::new(30),
                    today + Days::new(30),
                ]),
            }
            .into()
        }
        2 => RejectCredit {
            reason: (*rng.pick(&["", "low_credit_score", "no"])).into(),
        }
        .into(),
        _ => {
            let random = rng.range(1, remaining.max(1));
            ReceiveCreditPayment {
                payment_id: Uuid::from_u128(0x100 + u128::from(rng.below(4) as u8)),
                amount: Money::from_minor(*rng.pick(&[
                    0,
                    -1,
                    1,
                    remaining,
                    remaining + 1,
                    random,
                    random,
                ])),
            }
            .into()
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_command_sequences_keep_every_property(
        steps in prop::collection::vec((any::<bool>(), any::<u64>(), 0i64..48), 1..40),
    ) {
        let mut live = CreditState::default();
        let mut accepted: Vec<CreditEvent> = Vec::new();
        let mut now = fixed_now();
        for (use_workload, seed, advance_hours) in steps {
            now += Duration::hours(advance_hours);
            let ctx = DecideContext::new("credit-prop", now);
            let mut rng = DemoRng::new(seed);
            let command = if use_workload {
                Credit::sample_command(&live, &ctx, &mut rng)
            } else {
                chaos_command(&live, &ctx, &mut rng)
            };
            let before = live.clone();
            match Credit::decide(&live, &command, &ctx) {
                Ok(events) => {
                    prop_assert!(events.len() <= 1, "one command, at most one event");
                    for event in &events {
                        let from = live.status;
                        Credit::apply(&mut live, event);
                        prop_assert!(
                            can_transition(from, live.status),
                            "{} -> {} by {}", from, live.status, event.event_type()
                        );
                        assert_stored_event_round_trip::<Credit>(event);
                    }
                    if events.is_empty() {
                        prop_assert_eq!(&live, &before, "an idempotent repeat changes nothing");
                    }
                    accepted.extend(events);
                }
                Err(_) => prop_assert_eq!(&live, &before, "a rejection changes nothing"),
            }
            if let Err(violation) = Credit::check_invariants(&live) {
                return Err(TestCaseError::fail(format!("{violation}\n{live:#?}")));
            }
            let replayed = Credit::replay(CreditState::default(), &accepted);
            prop_assert_eq!(&replayed, &live, "replay from Default");
            let cut = (seed % (accepted.len() as u64 + 1)) as usize;
            assert_snapshot_and_tail_agree::<Credit>(&accepted, cut, &live);
        }
    }
}
