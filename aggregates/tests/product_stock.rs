//! ProductStock: every command accepted and rejected (each rejection reason), the reservation
//! lifecycle table, the low-stock rule, the invariants check, the event contracts and the
//! serde/codec round trips.
//!
//! How: given/when/then from `evershard_model::testing` (which also asserts the invariants
//! before and after every step) at the fixed clock 2026-01-01T00:00:00Z, moved with `.at(..)`;
//! contracts with `assert_exact_contract`, written out below from the module docs (the seed gives
//! the event names, `functional-architecture-ddd.md` 6.1, but no JSON contract).

use chrono::{DateTime, TimeDelta, Utc};
use evershard_aggregates::product_stock::*;
use evershard_model::testing::{
    assert_exact_contract, assert_json_and_codec_round_trip, assert_stored_event_round_trip,
    assert_transition_table, fixed_now, given, given_no_events,
};
use evershard_model::{codec, Aggregate, DecideContext, DemoRng, DomainEvent, Workload};
use uuid::Uuid;

const PRODUCT: &str = "test-aggregate";

fn rid(n: u128) -> Uuid {
    Uuid::from_u128(0xA000 + n)
}
fn oid(n: u128) -> Uuid {
    Uuid::from_u128(0xB000 + n)
}
fn minutes(m: i64) -> TimeDelta {
    TimeDelta::minutes(m)
}
fn t(offset: TimeDelta) -> DateTime<Utc> {
    fixed_now() + offset
}
fn ttl() -> TimeDelta {
    TimeDelta::milliseconds(RESERVATION_TTL_MS)
}

fn received(quantity: i64, on_hand_before: i64, reserved: i64) -> ProductStockEvent {
    InventoryUpdated {
        product_id: PRODUCT.into(),
        quantity_change: quantity,
        reason: InventoryChangeReason::Received,
        on_hand: on_hand_before + quantity,
        reserved,
        available: on_hand_before + quantity - reserved,
        updated_at: fixed_now(),
    }
    .into()
}

fn reserved_at(n: u128, quantity: i64, available: i64, at: DateTime<Utc>) -> ProductStockEvent {
    StockReserved {
        product_id: PRODUCT.into(),
        reservation_id: rid(n),
        order_id: oid(n),
        quantity,
        available,
        reserved_at: at,
        expires_at: at + ttl(),
    }
    .into()
}

fn reserved(n: u128, quantity: i64, available: i64) -> ProductStockEvent {
    reserved_at(n, quantity, available, fixed_now())
}

fn released(
    n: u128,
    quantity: i64,
    reason: ReleaseReason,
    available: i64,
    at: DateTime<Utc>,
) -> ProductStockEvent {
    StockReleased {
        product_id: PRODUCT.into(),
        reservation_id: rid(n),
        order_id: oid(n),
        quantity,
        reason,
        available,
        released_at: at,
    }
    .into()
}

fn confirmed(n: u128, quantity: i64, at: DateTime<Utc>) -> ProductStockEvent {
    StockReservationConfirmed {
        product_id: PRODUCT.into(),
        reservation_id: rid(n),
        order_id: oid(n),
        quantity,
        confirmed_at: at,
    }
    .into()
}

fn committed(
    n: u128,
    quantity: i64,
    on_hand: i64,
    available: i64,
    at: DateTime<Utc>,
) -> ProductStockEvent {
    StockCommitted {
        product_id: PRODUCT.into(),
        reservation_id: rid(n),
        order_id: oid(n),
        quantity,
        on_hand,
        available,
        committed_at: at,
    }
    .into()
}

fn demand(average_monthly_demand: i64) -> ProductStockEvent {
    DemandForecastUpdated {
        product_id: PRODUCT.into(),
        average_monthly_demand,
        safety_stock: (average_monthly_demand + 9) / 10,
        updated_at: fixed_now(),
    }
    .into()
}

fn reserve(n: u128, quantity: i64) -> Reserve {
    Reserve {
        reservation_id: rid(n),
        order_id: oid(n),
        quantity,
    }
}

/// 100 on hand, reservation 1 of 10 open (pending, deadline now + 30 min).
fn stock_with_reservation() -> Vec<ProductStockEvent> {
    vec![received(100, 0, 0), reserved(1, 10, 90)]
}

// --- ReceiveStock ----------------------------------------------------------------------------

#[test]
fn receive_stock_adds_to_on_hand() {
    let state = given::<ProductStock>([received(5, 0, 0)])
        .when(ReceiveStock { quantity: 7 })
        .then_expect_events([received(7, 5, 0)]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (12, 0, 12)
    );
}

#[test]
fn receive_stock_rejects_non_positive_and_too_large_quantities() {
    given_no_events::<ProductStock>()
        .when(ReceiveStock { quantity: 0 })
        .then_expect_error(ProductStockError::InvalidQuantity { quantity: 0 });
    given_no_events::<ProductStock>()
        .when(ReceiveStock { quantity: -3 })
        .then_expect_error(ProductStockError::InvalidQuantity { quantity: -3 });
    given_no_events::<ProductStock>()
        .when(ReceiveStock {
            quantity: QUANTITY_MAX + 1,
        })
        .then_expect_error(ProductStockError::QuantityTooLarge {
            quantity: QUANTITY_MAX + 1,
            max: QUANTITY_MAX,
        });
}

#[test]
fn receive_stock_rejects_going_above_the_on_hand_limit() {
    let full: Vec<ProductStockEvent> = (0..1_000)
        .map(|i| received(QUANTITY_MAX, i * QUANTITY_MAX, 0))
        .collect();
    assert_eq!(
        given::<ProductStock>(full.clone()).state().on_hand,
        ON_HAND_MAX
    );
    given::<ProductStock>(full)
        .when(ReceiveStock { quantity: 1 })
        .then_expect_error(ProductStockError::StockLimitExceeded {
            on_hand: ON_HAND_MAX + 1,
            max: ON_HAND_MAX,
        });
}

// --- AdjustStock -----------------------------------------------------------------------------

#[test]
fn adjust_stock_sets_the_counted_quantity() {
    let state = given::<ProductStock>(stock_with_reservation())
        .when(AdjustStock {
            counted_on_hand: 95,
        })
        .then_expect_events([InventoryUpdated {
            product_id: PRODUCT.into(),
            quantity_change: -5,
            reason: InventoryChangeReason::Adjusted,
            on_hand: 95,
            reserved: 10,
            available: 85,
            updated_at: fixed_now(),
        }
        .into()]);
    assert_eq!(state.on_hand, 95);
    given::<ProductStock>(stock_with_reservation())
        .when(AdjustStock { counted_on_hand: 130 })
        .then_events(|events| {
            assert!(matches!(
                &events[0],
                ProductStockEvent::InventoryUpdated(e) if e.quantity_change == 30 && e.on_hand == 130
            ))
        });
}

#[test]
fn adjust_stock_to_the_same_count_writes_nothing() {
    given::<ProductStock>(stock_with_reservation())
        .when(AdjustStock {
            counted_on_hand: 100,
        })
        .then_expect_events([]);
}

#[test]
fn adjust_stock_rejects_negative_too_large_and_below_reserved_counts() {
    given::<ProductStock>(stock_with_reservation())
        .when(AdjustStock {
            counted_on_hand: -1,
        })
        .then_expect_error(ProductStockError::NegativeCount { counted: -1 });
    given::<ProductStock>(stock_with_reservation())
        .when(AdjustStock {
            counted_on_hand: ON_HAND_MAX + 1,
        })
        .then_expect_error(ProductStockError::StockLimitExceeded {
            on_hand: ON_HAND_MAX + 1,
            max: ON_HAND_MAX,
        });
    given::<ProductStock>(stock_with_reservation())
        .when(AdjustStock { counted_on_hand: 9 })
        .then_expect_error(ProductStockError::CountBelowReserved {
            counted: 9,
            reserved: 10,
        });
    // Exactly the reserved quantity is fine: available becomes 0.
    let state = given::<ProductStock>(stock_with_reservation())
        .when(AdjustStock {
            counted_on_hand: 10,
        })
        .then_events(|_| {});
    assert_eq!(state.available(), 0);
}

// --- Reserve ---------------------------------------------------------------------------------

#[test]
fn reserve_opens_a_reservation_with_a_thirty_minute_deadline() {
    let state = given::<ProductStock>([received(100, 0, 0)])
        .when(reserve(1, 10))
        .then_expect_events([reserved(1, 10, 90)]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (100, 10, 90)
    );
    let r = state.reservation(rid(1)).expect("open");
    assert_eq!(r.expires_at, fixed_now() + minutes(30));
    assert_eq!(RESERVATION_TTL_MS, 30 * 60 * 1000);
    assert_eq!(r.status(), ReservationStatus::Pending);
    assert_eq!(state.next_deadline(), Some(fixed_now() + minutes(30)));
}

#[test]
fn reserve_may_take_everything_available() {
    let state = given::<ProductStock>([received(10, 0, 0)])
        .when(reserve(1, 10))
        .then_expect_events([reserved(1, 10, 0)]);
    assert_eq!(state.available(), 0);
}

#[test]
fn reserve_same_id_same_body_again_is_idempotent() {
    given::<ProductStock>(stock_with_reservation())
        .at(t(minutes(5)))
        .when(reserve(1, 10))
        .then_expect_events([]);
}

#[test]
fn reserve_same_id_with_another_quantity_or_order_is_rejected() {
    given::<ProductStock>(stock_with_reservation())
        .when(reserve(1, 11))
        .then_expect_error(ProductStockError::ReservationConflict {
            reservation_id: rid(1),
        });
    given::<ProductStock>(stock_with_reservation())
        .when(Reserve {
            reservation_id: rid(1),
            order_id: oid(2),
            quantity: 10,
        })
        .then_expect_error(ProductStockError::ReservationConflict {
            reservation_id: rid(1),
        });
}

#[test]
fn reserve_rejects_more_than_available() {
    given::<ProductStock>(stock_with_reservation())
        .when(reserve(2, 91))
        .then_expect_error(ProductStockError::InsufficientStock {
            requested: 91,
            available: 90,
        });
    given_no_events::<ProductStock>()
        .when(reserve(2, 1))
        .then_expect_error(ProductStockError::InsufficientStock {
            requested: 1,
            available: 0,
        });
}

#[test]
fn reserve_rejects_invalid_quantities() {
    given::<ProductStock>(stock_with_reservation())
        .when(reserve(2, 0))
        .then_expect_error(ProductStockError::InvalidQuantity { quantity: 0 });
    given::<ProductStock>(stock_with_reservation())
        .when(reserve(2, -5))
        .then_expect_error(ProductStockError::InvalidQuantity { quantity: -5 });
    given::<ProductStock>(stock_with_reservation())
        .when(reserve(2, QUANTITY_MAX + 1))
        .then_expect_error(ProductStockError::QuantityTooLarge {
            quantity: QUANTITY_MAX + 1,
            max: QUANTITY_MAX,
        });
}

#[test]
fn reserve_of_a_recently_closed_id_is_rejected_then_forgotten_after_a_day() {
    let mut events = stock_with_reservation();
    events.push(released(1, 10, ReleaseReason::Expired, 100, t(minutes(30))));
    // A late duplicate must not resurrect the expired reservation.
    given::<ProductStock>(events.clone())
        .at(t(minutes(31)))
        .when(reserve(1, 10))
        .then_expect_error(ProductStockError::ReservationClosed {
            reservation_id: rid(1),
            status: ReservationStatus::Released,
        });
    // 24 hours after the release the id is forgotten: it is a new reservation.
    let later = t(minutes(30)) + TimeDelta::milliseconds(CLOSED_RESERVATION_MEMORY_MS);
    let state = given::<ProductStock>(events)
        .at(later)
        .when(reserve(1, 10))
        .then_expect_events([reserved_at(1, 10, 90, later)]);
    assert!(state.closed_reservations.is_empty());
    assert_eq!(state.reserved, 10);
}

#[test]
fn reserve_rejects_when_too_many_reservations_are_open() {
    let mut events = vec![received(OPEN_RESERVATIONS_MAX as i64 + 1, 0, 0)];
    for n in 0..OPEN_RESERVATIONS_MAX as u128 {
        events.push(reserved(n + 10, 1, 0));
    }
    given::<ProductStock>(events)
        .when(reserve(1, 1))
        .then_expect_error(ProductStockError::TooManyReservations {
            max: OPEN_RESERVATIONS_MAX,
        });
}

#[test]
fn reserve_rejects_a_clock_without_a_representable_deadline() {
    given::<ProductStock>([received(100, 0, 0)])
        .at(DateTime::<Utc>::MAX_UTC)
        .when(reserve(1, 1))
        .then_expect_error(ProductStockError::ClockOutOfRange {
            // `at` keeps the store's resolution, as the engine does.
            now: evershard_model::truncate_to_micros(DateTime::<Utc>::MAX_UTC),
        });
}

// --- ConfirmReservation ----------------------------------------------------------------------

#[test]
fn confirm_stops_the_reservation_from_expiring() {
    let at = t(minutes(10));
    let state = given::<ProductStock>(stock_with_reservation())
        .at(at)
        .when(ConfirmReservation {
            reservation_id: rid(1),
        })
        .then_expect_events([confirmed(1, 10, at)]);
    assert_eq!(
        state.reservation(rid(1)).unwrap().status(),
        ReservationStatus::Confirmed
    );
    assert_eq!(state.next_deadline(), None);
    // Long after the deadline, expiry leaves it alone.
    let mut events = stock_with_reservation();
    events.push(confirmed(1, 10, at));
    given::<ProductStock>(events)
        .at(t(minutes(300)))
        .when(ExpireReservations)
        .then_expect_events([]);
}

#[test]
fn confirm_again_writes_nothing() {
    let mut events = stock_with_reservation();
    events.push(confirmed(1, 10, t(minutes(1))));
    given::<ProductStock>(events)
        .at(t(minutes(45)))
        .when(ConfirmReservation {
            reservation_id: rid(1),
        })
        .then_expect_events([]);
}

#[test]
fn confirm_rejects_overdue_unknown_and_closed_reservations() {
    given::<ProductStock>(stock_with_reservation())
        .at(t(minutes(30)))
        .when(ConfirmReservation {
            reservation_id: rid(1),
        })
        .then_expect_error(ProductStockError::ReservationExpired {
            reservation_id: rid(1),
            expired_at: t(minutes(30)),
        });
    given::<ProductStock>(stock_with_reservation())
        .when(ConfirmReservation {
            reservation_id: rid(9),
        })
        .then_expect_error(ProductStockError::ReservationNotFound {
            reservation_id: rid(9),
        });
    let mut events = stock_with_reservation();
    events.push(released(1, 10, ReleaseReason::Cancelled, 100, fixed_now()));
    given::<ProductStock>(events)
        .when(ConfirmReservation {
            reservation_id: rid(1),
        })
        .then_expect_error(ProductStockError::ReservationClosed {
            reservation_id: rid(1),
            status: ReservationStatus::Released,
        });
}

// --- ReleaseReservation ----------------------------------------------------------------------

#[test]
fn release_gives_the_quantity_back() {
    for reason in [
        ReleaseReason::Cancelled,
        ReleaseReason::PaymentFailed,
        ReleaseReason::Compensation,
    ] {
        let state = given::<ProductStock>(stock_with_reservation())
            .when(ReleaseReservation {
                reservation_id: rid(1),
                reason,
            })
            .then_expect_events([released(1, 10, reason, 100, fixed_now())]);
        assert_eq!(
            (state.on_hand, state.reserved, state.available()),
            (100, 0, 100)
        );
        assert!(state.reservations.is_empty());
        assert_eq!(state.closed_reservations.len(), 1);
    }
}

#[test]
fn release_of_a_confirmed_reservation_is_allowed() {
    let mut events = stock_with_reservation();
    events.push(confirmed(1, 10, fixed_now()));
    given::<ProductStock>(events)
        .at(t(minutes(90)))
        .when(ReleaseReservation {
            reservation_id: rid(1),
            reason: ReleaseReason::Cancelled,
        })
        .then_expect_events([released(
            1,
            10,
            ReleaseReason::Cancelled,
            100,
            t(minutes(90)),
        )]);
}

#[test]
fn release_with_reason_expired_needs_a_passed_deadline() {
    given::<ProductStock>(stock_with_reservation())
        .at(t(minutes(29)))
        .when(ReleaseReservation {
            reservation_id: rid(1),
            reason: ReleaseReason::Expired,
        })
        .then_expect_error(ProductStockError::NotExpired {
            reservation_id: rid(1),
        });
    given::<ProductStock>(stock_with_reservation())
        .at(t(minutes(30)))
        .when(ReleaseReservation {
            reservation_id: rid(1),
            reason: ReleaseReason::Expired,
        })
        .then_expect_events([released(1, 10, ReleaseReason::Expired, 100, t(minutes(30)))]);
    let mut events = stock_with_reservation();
    events.push(confirmed(1, 10, fixed_now()));
    given::<ProductStock>(events)
        .at(t(minutes(60)))
        .when(ReleaseReservation {
            reservation_id: rid(1),
            reason: ReleaseReason::Expired,
        })
        .then_expect_error(ProductStockError::NotExpired {
            reservation_id: rid(1),
        });
}

#[test]
fn release_again_writes_nothing_whatever_the_reason() {
    let mut events = stock_with_reservation();
    events.push(released(1, 10, ReleaseReason::Expired, 100, t(minutes(30))));
    for reason in [ReleaseReason::Expired, ReleaseReason::Cancelled] {
        given::<ProductStock>(events.clone())
            .at(t(minutes(40)))
            .when(ReleaseReservation {
                reservation_id: rid(1),
                reason,
            })
            .then_expect_events([]);
    }
}

#[test]
fn release_rejects_unknown_committed_and_forgotten_reservations() {
    given::<ProductStock>(stock_with_reservation())
        .when(ReleaseReservation {
            reservation_id: rid(2),
            reason: ReleaseReason::Cancelled,
        })
        .then_expect_error(ProductStockError::ReservationNotFound {
            reservation_id: rid(2),
        });
    let mut events = stock_with_reservation();
    events.push(committed(1, 10, 90, 90, fixed_now()));
    given::<ProductStock>(events.clone())
        .when(ReleaseReservation {
            reservation_id: rid(1),
            reason: ReleaseReason::Cancelled,
        })
        .then_expect_error(ProductStockError::ReservationClosed {
            reservation_id: rid(1),
            status: ReservationStatus::Committed,
        });
    given::<ProductStock>(events)
        .at(t(TimeDelta::milliseconds(CLOSED_RESERVATION_MEMORY_MS)))
        .when(ReleaseReservation {
            reservation_id: rid(1),
            reason: ReleaseReason::Cancelled,
        })
        .then_expect_error(ProductStockError::ReservationNotFound {
            reservation_id: rid(1),
        });
}

// --- CommitReservation -----------------------------------------------------------------------

#[test]
fn commit_takes_the_goods_out_of_on_hand_and_reserved() {
    let at = t(minutes(20));
    let state = given::<ProductStock>(stock_with_reservation())
        .at(at)
        .when(CommitReservation {
            reservation_id: rid(1),
        })
        .then_expect_events([committed(1, 10, 90, 90, at)]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (90, 0, 90)
    );
    assert_eq!(
        state.closed_reservations[&rid(1).to_string()].status,
        ReservationStatus::Committed
    );
}

#[test]
fn commit_of_a_confirmed_reservation_works_after_the_deadline() {
    let mut events = stock_with_reservation();
    events.push(confirmed(1, 10, t(minutes(5))));
    let at = t(minutes(600));
    given::<ProductStock>(events)
        .at(at)
        .when(CommitReservation {
            reservation_id: rid(1),
        })
        .then_expect_events([committed(1, 10, 90, 90, at)]);
}

#[test]
fn commit_again_writes_nothing() {
    let mut events = stock_with_reservation();
    events.push(committed(1, 10, 90, 90, fixed_now()));
    given::<ProductStock>(events)
        .when(CommitReservation {
            reservation_id: rid(1),
        })
        .then_expect_events([]);
}

#[test]
fn commit_rejects_overdue_released_and_unknown_reservations() {
    given::<ProductStock>(stock_with_reservation())
        .at(t(minutes(31)))
        .when(CommitReservation {
            reservation_id: rid(1),
        })
        .then_expect_error(ProductStockError::ReservationExpired {
            reservation_id: rid(1),
            expired_at: t(minutes(30)),
        });
    let mut events = stock_with_reservation();
    events.push(released(1, 10, ReleaseReason::Expired, 100, t(minutes(30))));
    given::<ProductStock>(events)
        .at(t(minutes(31)))
        .when(CommitReservation {
            reservation_id: rid(1),
        })
        .then_expect_error(ProductStockError::ReservationClosed {
            reservation_id: rid(1),
            status: ReservationStatus::Released,
        });
    given::<ProductStock>(stock_with_reservation())
        .when(CommitReservation {
            reservation_id: rid(3),
        })
        .then_expect_error(ProductStockError::ReservationNotFound {
            reservation_id: rid(3),
        });
}

// --- ExpireReservations ----------------------------------------------------------------------

#[test]
fn expire_releases_every_overdue_unconfirmed_reservation_oldest_first() {
    let events = vec![
        received(100, 0, 0),
        reserved_at(3, 5, 95, t(minutes(2))),
        reserved_at(1, 10, 85, t(minutes(1))),
        reserved_at(2, 20, 65, t(minutes(3))),
        confirmed(2, 20, t(minutes(4))),
        reserved_at(4, 7, 58, t(minutes(20))),
    ];
    let now = t(minutes(32)); // deadlines of 1 (31) and 3 (32, exactly now) have passed
    let state = given::<ProductStock>(events)
        .at(now)
        .when(ExpireReservations)
        .then_expect_events([
            released(1, 10, ReleaseReason::Expired, 68, now),
            released(3, 5, ReleaseReason::Expired, 73, now),
        ]);
    assert_eq!(state.reserved, 27);
    let open: Vec<_> = state.reservations.keys().cloned().collect();
    assert_eq!(open, vec![rid(2).to_string(), rid(4).to_string()]);
    assert_eq!(state.next_deadline(), Some(t(minutes(50))));
}

#[test]
fn expire_with_nothing_overdue_writes_nothing() {
    given::<ProductStock>(stock_with_reservation())
        .at(t(minutes(29)))
        .when(ExpireReservations)
        .then_expect_events([]);
    given_no_events::<ProductStock>()
        .when(ExpireReservations)
        .then_expect_events([]);
}

// --- SetDemandForecast and LowStockAlert -----------------------------------------------------

#[test]
fn set_demand_forecast_sets_the_safety_stock() {
    let state = given::<ProductStock>([received(100, 0, 0)])
        .when(SetDemandForecast {
            average_monthly_demand: 101,
        })
        .then_expect_events([DemandForecastUpdated {
            product_id: PRODUCT.into(),
            average_monthly_demand: 101,
            safety_stock: 11,
            updated_at: fixed_now(),
        }
        .into()]);
    assert_eq!(state.safety_stock(), 11); // 10 % rounded up
    given::<ProductStock>([demand(101)])
        .when(SetDemandForecast {
            average_monthly_demand: 101,
        })
        .then_expect_events([]);
}

#[test]
fn set_demand_forecast_rejects_out_of_range_values() {
    for bad in [-1, QUANTITY_MAX + 1] {
        given_no_events::<ProductStock>()
            .when(SetDemandForecast {
                average_monthly_demand: bad,
            })
            .then_expect_error(ProductStockError::InvalidDemand {
                average_monthly_demand: bad,
                max: QUANTITY_MAX,
            });
    }
}

#[test]
fn safety_stock_is_ten_percent_rounded_up() {
    for (demand_units, safety) in [
        (0, 0),
        (1, 1),
        (5, 1),
        (10, 1),
        (11, 2),
        (100, 10),
        (1000, 100),
    ] {
        let state = given::<ProductStock>([demand(demand_units)])
            .state()
            .clone();
        assert_eq!(state.safety_stock(), safety, "demand {demand_units}");
    }
}

fn alert(
    available: i64,
    safety: i64,
    demand: i64,
    on_hand: i64,
    at: DateTime<Utc>,
) -> ProductStockEvent {
    LowStockAlert {
        product_id: PRODUCT.into(),
        available,
        safety_stock: safety,
        average_monthly_demand: demand,
        on_hand,
        reserved: on_hand - available,
        detected_at: at,
    }
    .into()
}

#[test]
fn low_stock_alert_when_a_reservation_takes_available_below_safety_stock() {
    // Demand 200 a month: safety stock 20. 100 on hand, 10 reserved: available 90.
    let mut events = stock_with_reservation();
    events.push(demand(200));
    // Down to exactly the safety stock: not below, no alert.
    let mut at_limit = events.clone();
    at_limit.push(reserved(2, 70, 20));
    given::<ProductStock>(events.clone())
        .when(reserve(2, 70))
        .then_expect_events([reserved(2, 70, 20)]);
    // Below it: alert, in the same decide, after the reservation.
    given::<ProductStock>(events)
        .when(reserve(2, 71))
        .then_expect_events([reserved(2, 71, 19), alert(19, 20, 200, 100, fixed_now())]);
    // Already low: a further reservation does not alert again.
    given::<ProductStock>(at_limit.clone())
        .when(reserve(3, 1))
        .then_expect_events([reserved(3, 1, 19), alert(19, 20, 200, 100, fixed_now())]);
    let mut already_low = at_limit;
    already_low.push(reserved(3, 1, 19));
    given::<ProductStock>(already_low)
        .when(reserve(4, 1))
        .then_expect_events([reserved(4, 1, 18)]);
}

#[test]
fn low_stock_alert_on_a_stock_count_and_on_a_raised_forecast() {
    let base = vec![received(100, 0, 0), demand(200)];
    given::<ProductStock>(base.clone())
        .when(AdjustStock {
            counted_on_hand: 15,
        })
        .then_events(|events| {
            assert_eq!(events.len(), 2);
            assert_eq!(events[1], alert(15, 20, 200, 15, fixed_now()));
        });
    given::<ProductStock>(base.clone())
        .when(SetDemandForecast {
            average_monthly_demand: 1_500,
        })
        .then_events(|events| {
            assert_eq!(events.len(), 2);
            assert_eq!(events[1], alert(100, 150, 1_500, 100, fixed_now()));
        });
    // Releases, receipts and commits never lower available: no alert.
    given::<ProductStock>(base)
        .when(ReceiveStock { quantity: 1 })
        .then_events(|events| {
            assert_eq!(events.len(), 1);
        });
}

#[test]
fn no_safety_stock_without_a_forecast() {
    given::<ProductStock>([received(10, 0, 0)])
        .when(reserve(1, 10))
        .then_expect_events([reserved(1, 10, 0)]);
}

// --- Lifecycle table ---------------------------------------------------------------------------

#[test]
fn reservation_lifecycle_table() {
    use ReservationStatus::*;
    let all = [Pending, Confirmed, Released, Committed];
    let allowed = [
        (Pending, Confirmed),
        (Pending, Released),
        (Pending, Committed),
        (Confirmed, Released),
        (Confirmed, Committed),
    ];
    assert_transition_table(&all, &allowed, can_transition);
}

// --- Invariants ------------------------------------------------------------------------------

#[test]
fn check_invariants_catches_every_broken_invariant() {
    let good = given::<ProductStock>(stock_with_reservation())
        .state()
        .clone();
    assert_eq!(ProductStock::check_invariants(&good), Ok(()));
    let id = rid(1).to_string();
    type Breaker = Box<dyn Fn(&mut ProductStockState)>;
    let breakers: Vec<(&str, Breaker)> = vec![
        ("on hand negative", Box::new(|s| s.on_hand = -1)),
        (
            "on hand too large",
            Box::new(|s| s.on_hand = ON_HAND_MAX + 1),
        ),
        ("reserved above on hand", Box::new(|s| s.on_hand = 5)),
        ("reserved negative", Box::new(|s| s.reserved = -1)),
        (
            "reserved differs from the sum",
            Box::new(|s| s.reserved = 11),
        ),
        ("zero quantity", {
            let id = id.clone();
            Box::new(move |s| {
                s.reservations.get_mut(&id).unwrap().quantity = 0;
                s.reserved = 0;
            })
        }),
        ("deadline before start", {
            let id = id.clone();
            Box::new(move |s| {
                let r = s.reservations.get_mut(&id).unwrap();
                r.expires_at = r.reserved_at;
            })
        }),
        ("both open and closed", {
            let id = id.clone();
            Box::new(move |s| {
                s.closed_reservations.insert(
                    id.clone(),
                    ClosedReservation {
                        order_id: oid(1),
                        quantity: 10,
                        status: ReservationStatus::Committed,
                        release_reason: None,
                        closed_at: fixed_now(),
                    },
                );
            })
        }),
        ("closed but not final", {
            Box::new(move |s| {
                s.closed_reservations.insert(
                    rid(7).to_string(),
                    ClosedReservation {
                        order_id: oid(7),
                        quantity: 1,
                        status: ReservationStatus::Pending,
                        release_reason: None,
                        closed_at: fixed_now(),
                    },
                );
            })
        }),
        (
            "negative demand",
            Box::new(|s| s.average_monthly_demand = -1),
        ),
    ];
    for (name, breaker) in breakers {
        let mut bad = good.clone();
        breaker(&mut bad);
        assert!(
            ProductStock::check_invariants(&bad).is_err(),
            "{name} not caught: {bad:#?}"
        );
    }
}

#[test]
fn closed_reservations_are_pruned_a_day_after_closing() {
    let mut events = stock_with_reservation();
    events.push(released(1, 10, ReleaseReason::Cancelled, 100, fixed_now()));
    let day = TimeDelta::milliseconds(CLOSED_RESERVATION_MEMORY_MS);
    let mut later = events.clone();
    later.push(
        InventoryUpdated {
            product_id: PRODUCT.into(),
            quantity_change: 1,
            reason: InventoryChangeReason::Received,
            on_hand: 101,
            reserved: 0,
            available: 101,
            updated_at: t(day - minutes(1)),
        }
        .into(),
    );
    assert_eq!(
        given::<ProductStock>(later.clone())
            .state()
            .closed_reservations
            .len(),
        1
    );
    later.push(demand(50));
    if let Some(ProductStockEvent::DemandForecastUpdated(e)) = later.last_mut() {
        e.updated_at = t(day);
    }
    assert!(given::<ProductStock>(later)
        .state()
        .closed_reservations
        .is_empty());
}

// --- Contracts -------------------------------------------------------------------------------

fn one_of_each_event() -> Vec<ProductStockEvent> {
    vec![
        received(100, 0, 0),
        reserved(1, 10, 90),
        released(1, 10, ReleaseReason::PaymentFailed, 100, fixed_now()),
        committed(1, 10, 90, 90, fixed_now()),
        alert(5, 20, 200, 50, fixed_now()),
        demand(200),
        confirmed(1, 10, fixed_now()),
        ttl_set(60_000),
    ]
}

#[test]
fn every_event_matches_its_contract() {
    let reasons = "enum:cancelled|expired|payment_failed|compensation";
    for event in one_of_each_event() {
        assert_eq!(event.topic(), "business.inventory");
        assert_eq!(event.event_version(), "1.0");
        let json = event.payload_json();
        let contract: Vec<(&str, &str)> = match &event {
            ProductStockEvent::InventoryUpdated(_) => vec![
                ("product_id", "string"),
                ("quantity_change", "integer"),
                ("reason", "enum:received|adjusted"),
                ("on_hand", "integer"),
                ("reserved", "integer"),
                ("available", "integer"),
                ("updated_at", "datetime"),
            ],
            ProductStockEvent::StockReserved(_) => vec![
                ("product_id", "string"),
                ("reservation_id", "uuid"),
                ("order_id", "uuid"),
                ("quantity", "integer"),
                ("available", "integer"),
                ("reserved_at", "datetime"),
                ("expires_at", "datetime"),
            ],
            ProductStockEvent::StockReleased(_) => vec![
                ("product_id", "string"),
                ("reservation_id", "uuid"),
                ("order_id", "uuid"),
                ("quantity", "integer"),
                ("reason", reasons),
                ("available", "integer"),
                ("released_at", "datetime"),
            ],
            ProductStockEvent::StockCommitted(_) => vec![
                ("product_id", "string"),
                ("reservation_id", "uuid"),
                ("order_id", "uuid"),
                ("quantity", "integer"),
                ("on_hand", "integer"),
                ("available", "integer"),
                ("committed_at", "datetime"),
            ],
            ProductStockEvent::LowStockAlert(_) => vec![
                ("product_id", "string"),
                ("available", "integer"),
                ("safety_stock", "integer"),
                ("average_monthly_demand", "integer"),
                ("on_hand", "integer"),
                ("reserved", "integer"),
                ("detected_at", "datetime"),
            ],
            ProductStockEvent::DemandForecastUpdated(_) => vec![
                ("product_id", "string"),
                ("average_monthly_demand", "integer"),
                ("safety_stock", "integer"),
                ("updated_at", "datetime"),
            ],
            ProductStockEvent::StockReservationConfirmed(_) => vec![
                ("product_id", "string"),
                ("reservation_id", "uuid"),
                ("order_id", "uuid"),
                ("quantity", "integer"),
                ("confirmed_at", "datetime"),
            ],
            ProductStockEvent::ReservationTtlSet(_) => vec![
                ("product_id", "string"),
                ("reservation_ttl_ms", "integer"),
                ("updated_at", "datetime"),
            ],
        };
        // Exactly the contract's fields: nothing undocumented leaks onto the topic.
        assert_exact_contract(event.event_type(), &json, &contract);
    }
}

#[test]
fn event_types_are_the_seed_names() {
    let types: Vec<&str> = one_of_each_event().iter().map(|e| e.event_type()).collect();
    assert_eq!(
        types,
        [
            "InventoryUpdated",
            "StockReserved",
            "StockReleased",
            "StockCommitted",
            "LowStockAlert",
            "DemandForecastUpdated",
            "StockReservationConfirmed",
            "ReservationTtlSet"
        ]
    );
    assert_eq!(ProductStock::TYPE, "ProductStock");
}

#[test]
fn release_reason_strings_match_their_json() {
    for reason in [
        ReleaseReason::Cancelled,
        ReleaseReason::Expired,
        ReleaseReason::PaymentFailed,
        ReleaseReason::Compensation,
    ] {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
}

// --- Round trips -----------------------------------------------------------------------------

#[test]
fn events_round_trip_through_json_and_codec() {
    for event in one_of_each_event() {
        assert_json_and_codec_round_trip(&event);
        assert_stored_event_round_trip::<ProductStock>(&event);
        let bytes = ProductStock::encode_event(&event);
        assert_eq!(codec::decode::<ProductStockEvent>(&bytes).unwrap(), event);
        assert!(
            ProductStock::decode_event("StockReleased", "1.0", &codec::encode(&demand(1))).is_err()
        );
    }
}

#[test]
fn commands_round_trip_through_json_and_codec() {
    let commands: Vec<ProductStockCommand> = vec![
        ReceiveStock { quantity: 3 }.into(),
        AdjustStock { counted_on_hand: 4 }.into(),
        reserve(1, 2).into(),
        ConfirmReservation {
            reservation_id: rid(1),
        }
        .into(),
        ReleaseReservation {
            reservation_id: rid(1),
            reason: ReleaseReason::Compensation,
        }
        .into(),
        CommitReservation {
            reservation_id: rid(1),
        }
        .into(),
        ExpireReservations.into(),
        SetDemandForecast {
            average_monthly_demand: 30,
        }
        .into(),
    ];
    for command in &commands {
        assert_json_and_codec_round_trip(command);
    }
}

#[test]
fn state_round_trips_through_json_and_codec() {
    let mut events = stock_with_reservation();
    events.extend([
        demand(300),
        reserved(2, 5, 85),
        confirmed(2, 5, fixed_now()),
        released(1, 10, ReleaseReason::Cancelled, 95, fixed_now()),
    ]);
    let state = given::<ProductStock>(events).state().clone();
    assert_json_and_codec_round_trip(&state);
}

// --- Workload --------------------------------------------------------------------------------

#[test]
fn workload_drives_the_whole_lifecycle_and_keeps_the_invariants() {
    let mut rng = DemoRng::new(42);
    let mut state = ProductStockState::default();
    let mut now = fixed_now();
    let mut seen = std::collections::BTreeSet::new();
    let (mut accepted, mut rejected, mut expired) = (0, 0, 0);
    for _ in 0..3_000 {
        now += TimeDelta::seconds(rng.range(0, 240));
        let ctx = DecideContext::new("sku-1", now);
        let command = ProductStock::sample_command(&state, &ctx, &mut rng);
        match ProductStock::decide(&state, &command, &ctx) {
            Ok(events) => {
                accepted += 1;
                for event in &events {
                    seen.insert(event.event_type());
                    if let ProductStockEvent::StockReleased(e) = event {
                        expired += usize::from(e.reason == ReleaseReason::Expired);
                    }
                    ProductStock::apply(&mut state, event);
                }
                ProductStock::check_invariants(&state).unwrap();
            }
            Err(_) => rejected += 1,
        }
    }
    assert_eq!(seen.len(), 7, "event types seen: {seen:?}");
    assert!(
        accepted > rejected * 3,
        "accepted {accepted}, rejected {rejected}"
    );
    assert!(expired > 0, "no reservation ever expired");
}

// --- Timer -----------------------------------------------------------------------------------

fn ttl_set(reservation_ttl_ms: i64) -> ProductStockEvent {
    ReservationTtlSet {
        product_id: PRODUCT.into(),
        reservation_ttl_ms,
        updated_at: fixed_now(),
    }
    .into()
}

#[test]
fn the_timer_is_the_earliest_unconfirmed_deadline_with_expire_reservations() {
    let none = given::<ProductStock>(vec![received(100, 0, 0)])
        .state()
        .clone();
    assert_eq!(ProductStock::next_timer(&none), None);
    let two = given::<ProductStock>(vec![
        received(100, 0, 0),
        reserved_at(1, 10, 90, t(minutes(5))),
        reserved(2, 10, 80),
    ])
    .state()
    .clone();
    assert_eq!(
        ProductStock::next_timer(&two),
        Some((t(ttl()), ExpireReservations.into()))
    );
    // Confirmed reservations no longer expire: the timer moves to the other one.
    let one_confirmed = given::<ProductStock>(vec![
        received(100, 0, 0),
        reserved_at(1, 10, 90, t(minutes(5))),
        reserved(2, 10, 80),
        confirmed(2, 10, fixed_now()),
    ])
    .state()
    .clone();
    assert_eq!(
        ProductStock::next_timer(&one_confirmed).map(|(at, _)| at),
        Some(t(minutes(5) + ttl()))
    );
    // Released and committed ones neither.
    let closed = given::<ProductStock>(vec![
        received(100, 0, 0),
        reserved(1, 10, 90),
        released(1, 10, ReleaseReason::Cancelled, 100, fixed_now()),
    ])
    .state()
    .clone();
    assert_eq!(ProductStock::next_timer(&closed), None);
}

#[test]
fn the_timer_command_expires_exactly_at_the_deadline_and_not_before() {
    let history = vec![received(100, 0, 0), reserved(1, 10, 90)];
    given::<ProductStock>(history.clone())
        .at(t(ttl() - TimeDelta::microseconds(1)))
        .when(ExpireReservations)
        .then_expect_events([]);
    given::<ProductStock>(history)
        .at(t(ttl()))
        .when(ExpireReservations)
        .then_expect_events([released(1, 10, ReleaseReason::Expired, 100, t(ttl()))]);
}

#[test]
fn a_configured_ttl_sets_the_deadline_of_new_reservations() {
    given::<ProductStock>(vec![received(100, 0, 0)])
        .when(SetReservationTtl {
            reservation_ttl_ms: 60_000,
        })
        .then_expect_events([ttl_set(60_000)]);
    given::<ProductStock>(vec![received(100, 0, 0), ttl_set(60_000)])
        .when(SetReservationTtl {
            reservation_ttl_ms: 60_000,
        })
        .then_expect_events([]);
    for bad in [0, RESERVATION_TTL_MS_MIN - 1, RESERVATION_TTL_MS_MAX + 1] {
        given::<ProductStock>(vec![])
            .when(SetReservationTtl {
                reservation_ttl_ms: bad,
            })
            .then_expect_error(ProductStockError::InvalidReservationTtl {
                reservation_ttl_ms: bad,
                min: RESERVATION_TTL_MS_MIN,
                max: RESERVATION_TTL_MS_MAX,
            });
    }
    let state = given::<ProductStock>(vec![received(100, 0, 0), ttl_set(60_000)])
        .when(Reserve {
            reservation_id: rid(1),
            order_id: oid(1),
            quantity: 10,
        })
        .then_events(|_| {});
    assert_eq!(
        ProductStock::next_timer(&state).map(|(at, _)| at),
        Some(t(TimeDelta::seconds(60)))
    );
}
