//! ProductStock property test: random command sequences never break the invariants, and the
//! event log is a faithful record of the live state.
//!
//! How: proptest generates sequences of up to 60 steps, each a command plus a clock advance.
//! Commands are biased toward plausible ones: reservation ids come from a pool of 8 (so
//! repeats, conflicts, confirms, commits and releases of existing reservations are frequent),
//! quantities are small against the stock received, and the clock sometimes jumps past the
//! 30-minute reservation TTL or the 24-hour idempotency memory. Invalid commands (zero or
//! negative quantities, counts below reserved, unknown ids, early `expired` releases) are mixed
//! in. After every command:
//! - the invariants hold ([`ProductStock::check_invariants`]) after every single event, as
//!   the engine checks them;
//! - a rejected command leaves the state unchanged;
//! - an accepted command other than `ReceiveStock`, repeated at once, is accepted with no
//!   events (idempotency of at-least-once delivery);
//! - replaying all accepted events from `Default` gives the live state;
//! - closed reservation ids are forgotten 24 hours (event time) after they closed.
//!
//! At the end, for EVERY cut point of the event log (so also for any random one): the state at
//! the cut, round-tripped through `codec` as a snapshot, plus the remaining events, equals the
//! live state: replay(snapshot + tail) == replay(all) == live.
//!
//! A second test checks that the generator really explores the lifecycle (every event type,
//! accepted and rejected commands). Runs are deterministic: a fixed seed unless
//! `PROPTEST_RNG_SEED` is set; proptest prints the minimal failing sequence.

use chrono::{DateTime, TimeDelta, Utc};
use evershard_aggregates::product_stock::*;
use evershard_model::testing::{assert_replay_and_snapshots_agree, fixed_now};
use evershard_model::{Aggregate, DecideContext, DomainEvent};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use std::collections::BTreeSet;
use uuid::Uuid;

const SEED: u64 = 0x0005_70C4;
const RESERVATION_POOL: u8 = 8;

#[derive(Debug, Clone)]
enum Op {
    Receive(i64),
    /// Counted on hand = on hand + delta (may fall below reserved or below zero).
    Adjust(i64),
    /// `other_order` reuses the id for another order: a conflict when the id is open.
    Reserve {
        id: u8,
        quantity: i64,
        other_order: bool,
    },
    Confirm(u8),
    Release(u8, ReleaseReason),
    Commit(u8),
    Expire,
    Demand(i64),
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    advance_secs: i64,
}

fn reservation_id(id: u8) -> Uuid {
    Uuid::from_u128(0x1000 + u128::from(id))
}

fn order_id(id: u8, other: bool) -> Uuid {
    Uuid::from_u128(0x2000 + u128::from(id) + if other { 0x100 } else { 0 })
}

fn reason() -> impl Strategy<Value = ReleaseReason> {
    prop_oneof![
        Just(ReleaseReason::Cancelled),
        Just(ReleaseReason::Expired),
        Just(ReleaseReason::PaymentFailed),
        Just(ReleaseReason::Compensation),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..RESERVATION_POOL;
    prop_oneof![
        3 => prop_oneof![9 => 1..=60i64, 1 => -2..=0i64].prop_map(Op::Receive),
        1 => (-40..=20i64).prop_map(Op::Adjust),
        8 => (id.clone(), prop_oneof![9 => 1..=6i64, 1 => -1..=0i64], prop::bool::weighted(0.1))
            .prop_map(|(id, quantity, other_order)| Op::Reserve { id, quantity, other_order }),
        3 => id.clone().prop_map(Op::Confirm),
        3 => (id.clone(), reason()).prop_map(|(id, r)| Op::Release(id, r)),
        3 => id.prop_map(Op::Commit),
        2 => Just(Op::Expire),
        1 => prop_oneof![9 => 0..=600i64, 1 => -3..=-1i64].prop_map(Op::Demand),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let advance = prop_oneof![
        10 => 0..=600i64,                // up to 10 minutes
        2 => 1_500..=2_400i64,           // around the 30-minute TTL
        1 => 86_000..=90_000i64,         // around the 24-hour idempotency memory
    ];
    (op(), advance).prop_map(|(op, advance_secs)| Step { op, advance_secs })
}

fn command(op: &Op, state: &ProductStockState) -> ProductStockCommand {
    match *op {
        Op::Receive(quantity) => ReceiveStock { quantity }.into(),
        Op::Adjust(delta) => AdjustStock {
            counted_on_hand: state.on_hand + delta,
        }
        .into(),
        Op::Reserve {
            id,
            quantity,
            other_order,
        } => Reserve {
            reservation_id: reservation_id(id),
            order_id: order_id(id, other_order),
            quantity,
        }
        .into(),
        Op::Confirm(id) => ConfirmReservation {
            reservation_id: reservation_id(id),
        }
        .into(),
        Op::Release(id, reason) => ReleaseReservation {
            reservation_id: reservation_id(id),
            reason,
        }
        .into(),
        Op::Commit(id) => CommitReservation {
            reservation_id: reservation_id(id),
        }
        .into(),
        Op::Expire => ExpireReservations.into(),
        Op::Demand(d) => SetDemandForecast {
            average_monthly_demand: d,
        }
        .into(),
    }
}

/// What one run produced.
struct Run {
    live: ProductStockState,
    events: Vec<ProductStockEvent>,
    rejected: usize,
}

fn run(steps: &[Step]) -> Result<Run, TestCaseError> {
    let mut live = ProductStockState::default();
    let mut events: Vec<ProductStockEvent> = Vec::new();
    let mut rejected = 0;
    let mut now: DateTime<Utc> = fixed_now();
    for (i, step) in steps.iter().enumerate() {
        now += TimeDelta::seconds(step.advance_secs);
        let ctx = DecideContext::new("sku-prop", now);
        let command = command(&step.op, &live);
        let before = live.clone();
        match ProductStock::decide(&live, &command, &ctx) {
            Ok(new_events) => {
                // The engine checks the invariants after every single event, so do we.
                for event in &new_events {
                    ProductStock::apply(&mut live, event);
                    if let Err(violation) = ProductStock::check_invariants(&live) {
                        return Err(TestCaseError::fail(format!(
                            "step {i}: {command:?} -> {event:?} broke an invariant: {violation}"
                        )));
                    }
                }
                if !matches!(command, ProductStockCommand::ReceiveStock(_)) {
                    let again = ProductStock::decide(&live, &command, &ctx);
                    prop_assert_eq!(
                        again,
                        Ok(vec![]),
                        "step {}: {:?} repeated is not a no-op",
                        i,
                        command
                    );
                }
                if new_events
                    .iter()
                    .any(|e| matches!(e, ProductStockEvent::LowStockAlert(_)))
                {
                    prop_assert!(
                        !before.is_low() && live.is_low(),
                        "step {}: alert without a crossing",
                        i
                    );
                }
                if let Some(last) = new_events.last() {
                    let memory = TimeDelta::milliseconds(CLOSED_RESERVATION_MEMORY_MS);
                    let stale = live
                        .closed_reservations
                        .values()
                        .any(|c| c.closed_at + memory <= last.occurred_at());
                    prop_assert!(
                        !stale,
                        "step {}: a closed reservation outlived its 24 h memory",
                        i
                    );
                }
                events.extend(new_events);
            }
            Err(_) => {
                rejected += 1;
                prop_assert_eq!(&live, &before, "step {}: a rejection changed the state", i);
            }
        }
        let replayed = ProductStock::replay(ProductStockState::default(), &events);
        prop_assert_eq!(
            &replayed,
            &live,
            "step {}: replay(all) differs from live",
            i
        );
    }
    Ok(Run {
        live,
        events,
        rejected,
    })
}

fn config() -> Config {
    let mut config = Config::with_cases(128);
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config.failure_persistence = None;
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_commands_keep_invariants_and_replay_faithfully(
        steps in prop::collection::vec(step(), 1..60)
    ) {
        let Run { live, events, .. } = run(&steps)?;
        assert_replay_and_snapshots_agree::<ProductStock>(&events, &live);
    }
}

/// The generator is only worth something if it reaches the whole lifecycle.
#[test]
fn the_generator_explores_every_event_type_and_rejections() {
    let mut runner = TestRunner::new(config());
    let strategy = prop::collection::vec(step(), 1..60);
    let mut seen = BTreeSet::new();
    let mut reasons = BTreeSet::new();
    let mut rejected = 0;
    for _ in 0..128 {
        let steps = strategy.new_tree(&mut runner).expect("a value").current();
        let result = run(&steps).expect("the property holds");
        rejected += result.rejected;
        for event in &result.events {
            seen.insert(event.event_type());
            if let ProductStockEvent::StockReleased(e) = event {
                reasons.insert(e.reason);
            }
        }
        assert!(ProductStock::check_invariants(&result.live).is_ok());
    }
    assert_eq!(seen.len(), 7, "event types reached: {seen:?}");
    assert_eq!(reasons.len(), 4, "release reasons reached: {reasons:?}");
    assert!(rejected > 0);
}
