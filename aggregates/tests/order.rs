//! Order: every command accepted and rejected (each rejection reason), the idempotency key,
//! the saga facts, the lifecycle table, the invariants check, the event contracts and the
//! serde/codec round trips; the workload reaches every event type.
//!
//! How: given/when/then from `evershard_model::testing` (which also asserts the invariants
//! before and after every step) addressed to a UUID order id at the fixed clock
//! 2026-01-01T00:00:00Z, moved with `.at(..)`; contracts with `assert_contract`, written out
//! below from the module docs (the seed `functional-architecture-ddd.md` 5.1 gives the event
//! names, not their fields).

use chrono::{DateTime, TimeDelta, Utc};
use evershard_aggregates::order::*;
use evershard_model::testing::{
    assert_contract, assert_exact_contract, assert_json_and_codec_round_trip,
    assert_transition_table, fixed_now, given, given_no_events, Given,
};
use evershard_model::{
    codec, Aggregate, Currency, DecideContext, DemoRng, DomainEvent, Money, Workload,
};
use uuid::Uuid;

fn order_id() -> Uuid {
    Uuid::from_u128(0x0DE5)
}
fn key() -> Uuid {
    Uuid::from_u128(0x1DE0)
}
fn customer() -> Uuid {
    Uuid::from_u128(0xC057)
}
fn payment() -> Uuid {
    Uuid::from_u128(0x9A7)
}
fn res(n: u128) -> Uuid {
    Uuid::from_u128(0xA000 + n)
}
fn t(minutes: i64) -> DateTime<Utc> {
    fixed_now() + TimeDelta::minutes(minutes)
}
fn money(text: &str) -> Money {
    Money::parse(text).unwrap()
}

fn on(events: Vec<OrderEvent>) -> Given<Order> {
    given::<Order>(events).id(order_id().to_string())
}

fn line(product: &str, quantity: i64, price: &str) -> LineRequest {
    LineRequest {
        product_id: product.into(),
        quantity,
        unit_price: money(price),
    }
}

/// Two lines: 2 x 10.00 + 1 x 5.50 = 25.50 USD.
fn create() -> CreateOrder {
    CreateOrder {
        idempotency_key: key(),
        customer_id: customer(),
        currency: Currency::USD,
        lines: vec![line("sku-1", 2, "10.00"), line("sku-2", 1, "5.50")],
    }
}

fn created() -> OrderEvent {
    OrderCreated {
        order_id: order_id(),
        customer_id: customer(),
        idempotency_key: key(),
        lines: vec![
            OrderLineCreated {
                product_id: "sku-1".into(),
                quantity: 2,
                unit_price: money("10.00"),
                line_total: money("20.00"),
            },
            OrderLineCreated {
                product_id: "sku-2".into(),
                quantity: 1,
                unit_price: money("5.50"),
                line_total: money("5.50"),
            },
        ],
        total_amount: money("25.50"),
        currency: Currency::USD,
        created_at: fixed_now(),
        expires_at: t(30),
    }
    .into()
}

fn line_reserved(product: &str, n: u128, quantity: i64) -> OrderEvent {
    OrderLineReserved {
        order_id: order_id(),
        product_id: product.into(),
        reservation_id: res(n),
        quantity,
        reserved_at: fixed_now(),
    }
    .into()
}

fn reservation(product: &str, n: u128, quantity: i64) -> LineReservation {
    LineReservation {
        product_id: product.into(),
        reservation_id: res(n),
        quantity,
    }
}

fn both_reservations() -> Vec<LineReservation> {
    vec![reservation("sku-1", 1, 2), reservation("sku-2", 2, 1)]
}

fn stock_reserved() -> OrderEvent {
    OrderStockReserved {
        order_id: order_id(),
        reservations: both_reservations(),
        reserved_at: fixed_now(),
    }
    .into()
}

fn payment_requested() -> OrderEvent {
    OrderPaymentRequested {
        order_id: order_id(),
        payment_id: payment(),
        amount: money("25.50"),
        currency: Currency::USD,
        requested_at: fixed_now(),
    }
    .into()
}

fn confirmed() -> OrderEvent {
    OrderConfirmed {
        order_id: order_id(),
        payment_id: payment(),
        amount: money("25.50"),
        currency: Currency::USD,
        confirmed_at: fixed_now(),
    }
    .into()
}

fn line_confirmed(product: &str, n: u128, quantity: i64) -> OrderEvent {
    OrderReservationConfirmed {
        order_id: order_id(),
        product_id: product.into(),
        reservation_id: res(n),
        quantity,
        confirmed_at: fixed_now(),
    }
    .into()
}

fn ready_for_fulfilment() -> OrderEvent {
    OrderReadyForFulfilment {
        order_id: order_id(),
        reservations: both_reservations(),
        ready_at: fixed_now(),
    }
    .into()
}

fn confirm_line(product: &str, n: u128) -> RecordReservationConfirmed {
    RecordReservationConfirmed {
        product_id: product.into(),
        reservation_id: res(n),
    }
}

fn fulfilled() -> OrderEvent {
    OrderFulfilled {
        order_id: order_id(),
        total_amount: money("25.50"),
        currency: Currency::USD,
        reservations_to_commit: both_reservations(),
        fulfilled_at: fixed_now(),
    }
    .into()
}

fn cancelled(
    reason: CancelReason,
    refund: Option<&str>,
    payment_id: Option<Uuid>,
    reservations: Vec<LineReservation>,
    at: DateTime<Utc>,
) -> OrderEvent {
    OrderCancelled {
        order_id: order_id(),
        reason,
        refund_required: refund.is_some(),
        refund_amount: refund.map(money),
        payment_id,
        reservations_to_release: reservations,
        cancelled_at: at,
    }
    .into()
}

fn history_created() -> Vec<OrderEvent> {
    vec![created()]
}
fn history_one_line_reserved() -> Vec<OrderEvent> {
    vec![created(), line_reserved("sku-1", 1, 2)]
}
fn history_stock_reserved() -> Vec<OrderEvent> {
    vec![
        created(),
        line_reserved("sku-1", 1, 2),
        line_reserved("sku-2", 2, 1),
        stock_reserved(),
    ]
}
fn history_payment_requested() -> Vec<OrderEvent> {
    let mut h = history_stock_reserved();
    h.push(payment_requested());
    h
}
fn history_confirmed() -> Vec<OrderEvent> {
    let mut h = history_payment_requested();
    h.push(confirmed());
    h
}
fn history_ready_for_fulfilment() -> Vec<OrderEvent> {
    let mut h = history_confirmed();
    h.extend([
        line_confirmed("sku-1", 1, 2),
        line_confirmed("sku-2", 2, 1),
        ready_for_fulfilment(),
    ]);
    h
}
fn history_fulfilled() -> Vec<OrderEvent> {
    let mut h = history_ready_for_fulfilment();
    h.push(fulfilled());
    h
}
fn history_cancelled() -> Vec<OrderEvent> {
    let mut h = history_one_line_reserved();
    h.push(cancelled(
        CancelReason::CustomerRequest,
        None,
        None,
        vec![reservation("sku-1", 1, 2)],
        fixed_now(),
    ));
    h
}

fn status(state: &OrderState) -> OrderStatus {
    state.status().expect("an order")
}

// --- CreateOrder -----------------------------------------------------------------------------

#[test]
fn create_order_computes_line_totals_total_and_deadline() {
    let state = on(vec![]).when(create()).then_expect_events([created()]);
    let order = state.order.as_ref().unwrap();
    assert_eq!(order.status, OrderStatus::Created);
    assert_eq!(order.total_amount, money("25.50"));
    assert_eq!(
        order.expires_at,
        fixed_now() + TimeDelta::milliseconds(ORDER_CONFIRMATION_TTL_MS)
    );
    assert_eq!(ORDER_CONFIRMATION_TTL_MS, 30 * 60 * 1000);
}

#[test]
fn create_order_accepts_free_lines() {
    let mut command = create();
    command.lines = vec![line("gift", 3, "0")];
    on(vec![])
        .when(command)
        .then_events(|events| match &events[0] {
            OrderEvent::OrderCreated(e) => assert_eq!(e.total_amount, Money::ZERO),
            other => panic!("{other:?}"),
        });
}

#[test]
fn create_order_again_with_the_same_key_and_body_writes_nothing() {
    on(history_created()).when(create()).then_expect_events([]);
    // Lines are compared as a set: the order they come in does not matter.
    let mut reordered = create();
    reordered.lines.reverse();
    on(history_created()).when(reordered).then_expect_events([]);
    // Whatever became of the order since.
    on(history_fulfilled())
        .when(create())
        .then_expect_events([]);
    on(history_cancelled())
        .when(create())
        .then_expect_events([]);
}

#[test]
fn create_order_with_the_same_key_and_another_body_is_rejected() {
    let conflict = OrderError::IdempotencyConflict {
        idempotency_key: key(),
    };
    let mut other_quantity = create();
    other_quantity.lines[0].quantity = 3;
    on(history_created())
        .when(other_quantity)
        .then_expect_error(conflict.clone());
    let mut other_customer = create();
    other_customer.customer_id = Uuid::from_u128(1);
    on(history_created())
        .when(other_customer)
        .then_expect_error(conflict.clone());
    let mut other_currency = create();
    other_currency.currency = Currency::EUR;
    on(history_created())
        .when(other_currency)
        .then_expect_error(conflict.clone());
    let mut other_price = create();
    other_price.lines[1].unit_price = money("5.51");
    on(history_created())
        .when(other_price)
        .then_expect_error(conflict.clone());
    let mut fewer_lines = create();
    fewer_lines.lines.pop();
    on(history_created())
        .when(fewer_lines)
        .then_expect_error(conflict);
}

#[test]
fn create_order_with_another_key_on_an_existing_order_is_rejected() {
    let mut command = create();
    command.idempotency_key = Uuid::from_u128(2);
    on(history_created())
        .when(command)
        .then_expect_error(OrderError::OrderAlreadyExists {
            order_id: order_id(),
        });
}

#[test]
fn create_order_needs_a_uuid_order_id() {
    given_no_events::<Order>()
        .id("order-7")
        .when(create())
        .then_expect_error(OrderError::InvalidOrderId {
            aggregate_id: "order-7".into(),
        });
}

#[test]
fn create_order_rejects_bad_lines() {
    let with_lines = |lines: Vec<LineRequest>| CreateOrder { lines, ..create() };
    on(vec![])
        .when(with_lines(vec![]))
        .then_expect_error(OrderError::NoLines);
    let many: Vec<LineRequest> = (0..=ORDER_LINES_MAX)
        .map(|i| line(&format!("sku-{i}"), 1, "1"))
        .collect();
    on(vec![])
        .when(with_lines(many))
        .then_expect_error(OrderError::TooManyLines {
            count: ORDER_LINES_MAX + 1,
            max: ORDER_LINES_MAX,
        });
    on(vec![])
        .when(with_lines(vec![line("", 1, "1")]))
        .then_expect_error(OrderError::EmptyProductId);
    on(vec![])
        .when(with_lines(vec![
            line("a", 1, "1"),
            line("b", 1, "1"),
            line("a", 2, "1"),
        ]))
        .then_expect_error(OrderError::DuplicateProduct {
            product_id: "a".into(),
        });
    for quantity in [0, -1, LINE_QUANTITY_MAX + 1] {
        on(vec![])
            .when(with_lines(vec![line("a", quantity, "1")]))
            .then_expect_error(OrderError::InvalidQuantity {
                product_id: "a".into(),
                quantity,
                max: LINE_QUANTITY_MAX,
            });
    }
    on(vec![])
        .when(with_lines(vec![line("a", 1, "-0.01")]))
        .then_expect_error(OrderError::NegativeUnitPrice {
            product_id: "a".into(),
            unit_price: money("-0.01"),
        });
}

#[test]
fn create_order_rejects_totals_that_overflow() {
    let huge = Money::from_minor(i64::MAX / 2);
    let lines = vec![LineRequest {
        product_id: "a".into(),
        quantity: 3,
        unit_price: huge,
    }];
    on(vec![])
        .when(CreateOrder { lines, ..create() })
        .then_expect_error(OrderError::AmountOverflow);
    let lines = vec![
        LineRequest {
            product_id: "a".into(),
            quantity: 1,
            unit_price: huge,
        },
        LineRequest {
            product_id: "b".into(),
            quantity: 1,
            unit_price: huge,
        },
        LineRequest {
            product_id: "c".into(),
            quantity: 1,
            unit_price: huge,
        },
    ];
    on(vec![])
        .when(CreateOrder { lines, ..create() })
        .then_expect_error(OrderError::AmountOverflow);
}

#[test]
fn create_order_rejects_a_clock_without_a_representable_deadline() {
    on(vec![])
        .at(DateTime::<Utc>::MAX_UTC)
        .when(create())
        .then_expect_error(OrderError::ClockOutOfRange {
            // `at` keeps the store's resolution, as the engine does.
            now: evershard_model::truncate_to_micros(DateTime::<Utc>::MAX_UTC),
        });
}

#[test]
fn commands_on_a_missing_order_are_rejected() {
    let commands: Vec<OrderCommand> = vec![
        RecordStockReserved {
            product_id: "sku-1".into(),
            reservation_id: res(1),
            quantity: 2,
        }
        .into(),
        RequestPayment {
            payment_id: payment(),
        }
        .into(),
        RecordPaymentCompleted {
            payment_id: payment(),
            amount: money("1"),
        }
        .into(),
        FulfilOrder.into(),
        CancelOrder {
            reason: CancelReason::CustomerRequest,
        }
        .into(),
        RecordReservationExpired {
            product_id: "sku-1".into(),
            reservation_id: res(1),
        }
        .into(),
        ExpireOrder.into(),
        confirm_line("sku-1", 1).into(),
    ];
    for command in commands {
        on(vec![])
            .when(command)
            .then_expect_error(OrderError::OrderNotFound);
    }
}

// --- RecordStockReserved ---------------------------------------------------------------------

#[test]
fn stock_reserved_for_one_line_then_for_all() {
    let state = on(history_created())
        .when(RecordStockReserved {
            product_id: "sku-2".into(),
            reservation_id: res(2),
            quantity: 1,
        })
        .then_expect_events([line_reserved("sku-2", 2, 1)]);
    assert_eq!(status(&state), OrderStatus::Created);
    let mut history = history_created();
    history.push(line_reserved("sku-2", 2, 1));
    // The last line completes the reservation; reservations are listed in line order.
    let state = on(history)
        .when(RecordStockReserved {
            product_id: "sku-1".into(),
            reservation_id: res(1),
            quantity: 2,
        })
        .then_expect_events([line_reserved("sku-1", 1, 2), stock_reserved()]);
    assert_eq!(status(&state), OrderStatus::StockReserved);
}

#[test]
fn stock_reserved_again_writes_nothing() {
    let again = RecordStockReserved {
        product_id: "sku-1".into(),
        reservation_id: res(1),
        quantity: 2,
    };
    on(history_one_line_reserved())
        .when(again.clone())
        .then_expect_events([]);
    on(history_confirmed())
        .when(again.clone())
        .then_expect_events([]);
    on(history_cancelled()).when(again).then_expect_events([]);
}

#[test]
fn stock_reserved_rejections() {
    on(history_one_line_reserved())
        .when(RecordStockReserved {
            product_id: "sku-1".into(),
            reservation_id: res(9),
            quantity: 2,
        })
        .then_expect_error(OrderError::ReservationMismatch {
            product_id: "sku-1".into(),
            recorded: res(1),
            got: res(9),
        });
    on(history_created())
        .when(RecordStockReserved {
            product_id: "sku-9".into(),
            reservation_id: res(9),
            quantity: 1,
        })
        .then_expect_error(OrderError::UnknownLine {
            product_id: "sku-9".into(),
        });
    on(history_created())
        .when(RecordStockReserved {
            product_id: "sku-1".into(),
            reservation_id: res(1),
            quantity: 3,
        })
        .then_expect_error(OrderError::QuantityMismatch {
            product_id: "sku-1".into(),
            expected: 2,
            got: 3,
        });
    // A reservation that arrives after the order was cancelled: the saga releases it.
    on(history_cancelled())
        .when(RecordStockReserved {
            product_id: "sku-2".into(),
            reservation_id: res(2),
            quantity: 1,
        })
        .then_expect_error(OrderError::OrderClosed {
            status: OrderStatus::Cancelled,
        });
}

// --- RequestPayment --------------------------------------------------------------------------

#[test]
fn request_payment_of_a_reserved_order() {
    let state = on(history_stock_reserved())
        .when(RequestPayment {
            payment_id: payment(),
        })
        .then_expect_events([payment_requested()]);
    assert_eq!(status(&state), OrderStatus::PaymentRequested);
    on(history_payment_requested())
        .when(RequestPayment {
            payment_id: payment(),
        })
        .then_expect_events([]);
}

#[test]
fn request_payment_rejections() {
    let other = Uuid::from_u128(77);
    on(history_payment_requested())
        .when(RequestPayment { payment_id: other })
        .then_expect_error(OrderError::PaymentMismatch {
            recorded: payment(),
            got: other,
        });
    on(history_one_line_reserved())
        .when(RequestPayment {
            payment_id: payment(),
        })
        .then_expect_error(OrderError::InvalidTransition {
            from: OrderStatus::Created,
            to: OrderStatus::PaymentRequested,
        });
    on(history_cancelled())
        .when(RequestPayment {
            payment_id: payment(),
        })
        .then_expect_error(OrderError::OrderClosed {
            status: OrderStatus::Cancelled,
        });
    on(history_fulfilled())
        .when(RequestPayment { payment_id: other })
        .then_expect_error(OrderError::OrderClosed {
            status: OrderStatus::Fulfilled,
        });
}

// --- RecordPaymentCompleted ------------------------------------------------------------------

#[test]
fn payment_completed_confirms_the_order() {
    let state = on(history_payment_requested())
        .when(RecordPaymentCompleted {
            payment_id: payment(),
            amount: money("25.50"),
        })
        .then_expect_events([confirmed()]);
    assert_eq!(status(&state), OrderStatus::Confirmed);
    on(history_confirmed())
        .when(RecordPaymentCompleted {
            payment_id: payment(),
            amount: money("25.50"),
        })
        .then_expect_events([]);
}

#[test]
fn payment_completed_rejections() {
    let other = Uuid::from_u128(77);
    for history in [history_payment_requested(), history_confirmed()] {
        on(history.clone())
            .when(RecordPaymentCompleted {
                payment_id: other,
                amount: money("25.50"),
            })
            .then_expect_error(OrderError::PaymentMismatch {
                recorded: payment(),
                got: other,
            });
        on(history)
            .when(RecordPaymentCompleted {
                payment_id: payment(),
                amount: money("25.49"),
            })
            .then_expect_error(OrderError::PaymentAmountMismatch {
                total: money("25.50"),
                paid: money("25.49"),
            });
    }
    on(history_stock_reserved())
        .when(RecordPaymentCompleted {
            payment_id: payment(),
            amount: money("25.50"),
        })
        .then_expect_error(OrderError::InvalidTransition {
            from: OrderStatus::StockReserved,
            to: OrderStatus::Confirmed,
        });
    // A payment that completes after the order was cancelled: the saga refunds it.
    let mut history = history_payment_requested();
    history.push(cancelled(
        CancelReason::TimedOut,
        None,
        Some(payment()),
        both_reservations(),
        t(30),
    ));
    on(history)
        .when(RecordPaymentCompleted {
            payment_id: payment(),
            amount: money("25.50"),
        })
        .then_expect_error(OrderError::OrderClosed {
            status: OrderStatus::Cancelled,
        });
}

// --- FulfilOrder -----------------------------------------------------------------------------

#[test]
fn fulfil_a_confirmed_order_lists_the_reservations_to_commit() {
    let state = on(history_ready_for_fulfilment())
        .when(FulfilOrder)
        .then_expect_events([fulfilled()]);
    assert_eq!(status(&state), OrderStatus::Fulfilled);
    on(history_fulfilled())
        .when(FulfilOrder)
        .then_expect_events([]);
}

#[test]
fn fulfil_rejections() {
    on(history_payment_requested())
        .when(FulfilOrder)
        .then_expect_error(OrderError::InvalidTransition {
            from: OrderStatus::PaymentRequested,
            to: OrderStatus::Fulfilled,
        });
    on(history_cancelled())
        .when(FulfilOrder)
        .then_expect_error(OrderError::OrderClosed {
            status: OrderStatus::Cancelled,
        });
}

/// Paid is not enough: a reservation the stock has not confirmed can still expire, and goods
/// handed over for it would leave a stock that gave them back to others.
#[test]
fn fulfil_waits_for_every_line_confirmed_by_its_stock() {
    on(history_confirmed()).when(FulfilOrder).then_expect_error(
        OrderError::ReservationNotConfirmed {
            product_id: "sku-1".into(),
        },
    );
    let mut one = history_confirmed();
    one.push(line_confirmed("sku-1", 1, 2));
    on(one)
        .when(FulfilOrder)
        .then_expect_error(OrderError::ReservationNotConfirmed {
            product_id: "sku-2".into(),
        });
}

// --- RecordReservationConfirmed --------------------------------------------------------------

#[test]
fn confirmed_reservations_are_recorded_and_the_last_one_says_the_stock_is_confirmed() {
    let state = on(history_confirmed())
        .when(confirm_line("sku-1", 1))
        .then_expect_events([line_confirmed("sku-1", 1, 2)]);
    assert!(!state.order.as_ref().unwrap().stock_confirmed());
    let mut one = history_confirmed();
    one.push(line_confirmed("sku-1", 1, 2));
    let state = on(one.clone())
        .when(confirm_line("sku-2", 2))
        .then_expect_events([line_confirmed("sku-2", 2, 1), ready_for_fulfilment()]);
    assert!(state.order.as_ref().unwrap().stock_confirmed());
    // A repeat is accepted with no events, also once fulfilled.
    on(one)
        .when(confirm_line("sku-1", 1))
        .then_expect_events([]);
    on(history_fulfilled())
        .when(confirm_line("sku-2", 2))
        .then_expect_events([]);
    // The stock may confirm before the payment completes (someone confirmed it by hand):
    // recorded all the same, and the payment then makes the order ready.
    let mut early = history_payment_requested();
    early.push(line_confirmed("sku-1", 1, 2));
    on(early.clone())
        .when(confirm_line("sku-2", 2))
        .then_expect_events([line_confirmed("sku-2", 2, 1)]);
    early.push(line_confirmed("sku-2", 2, 1));
    on(early)
        .when(RecordPaymentCompleted {
            payment_id: payment(),
            amount: money("25.50"),
        })
        .then_expect_events([confirmed(), ready_for_fulfilment()]);
}

#[test]
fn record_reservation_confirmed_rejections() {
    on(history_confirmed())
        .when(confirm_line("sku-9", 1))
        .then_expect_error(OrderError::UnknownLine {
            product_id: "sku-9".into(),
        });
    on(history_confirmed())
        .when(confirm_line("sku-1", 7))
        .then_expect_error(OrderError::ReservationMismatch {
            product_id: "sku-1".into(),
            recorded: res(1),
            got: res(7),
        });
    on(history_one_line_reserved())
        .when(confirm_line("sku-2", 2))
        .then_expect_error(OrderError::LineNotReserved {
            product_id: "sku-2".into(),
        });
    on(history_cancelled())
        .when(confirm_line("sku-1", 1))
        .then_expect_error(OrderError::OrderClosed {
            status: OrderStatus::Cancelled,
        });
}

// --- CancelOrder -----------------------------------------------------------------------------

#[test]
fn cancel_before_payment_releases_what_is_reserved() {
    on(history_one_line_reserved())
        .when(CancelOrder {
            reason: CancelReason::StockUnavailable,
        })
        .then_expect_events([cancelled(
            CancelReason::StockUnavailable,
            None,
            None,
            vec![reservation("sku-1", 1, 2)],
            fixed_now(),
        )]);
    on(history_created())
        .when(CancelOrder {
            reason: CancelReason::CustomerRequest,
        })
        .then_expect_events([cancelled(
            CancelReason::CustomerRequest,
            None,
            None,
            vec![],
            fixed_now(),
        )]);
    let state = on(history_payment_requested())
        .when(CancelOrder {
            reason: CancelReason::PaymentFailed,
        })
        .then_expect_events([cancelled(
            CancelReason::PaymentFailed,
            None,
            Some(payment()),
            both_reservations(),
            fixed_now(),
        )]);
    let order = state.order.unwrap();
    assert_eq!(
        (order.status, order.refund_required),
        (OrderStatus::Cancelled, false)
    );
    assert_eq!(order.cancel_reason, Some(CancelReason::PaymentFailed));
}

#[test]
fn cancel_after_payment_requires_a_refund() {
    let state = on(history_confirmed())
        .when(CancelOrder {
            reason: CancelReason::CustomerRequest,
        })
        .then_expect_events([cancelled(
            CancelReason::CustomerRequest,
            Some("25.50"),
            Some(payment()),
            both_reservations(),
            fixed_now(),
        )]);
    assert!(state.order.unwrap().refund_required);
}

#[test]
fn cancel_again_writes_nothing_and_fulfilled_orders_cannot_be_cancelled() {
    on(history_cancelled())
        .when(CancelOrder {
            reason: CancelReason::PaymentFailed,
        })
        .then_expect_events([]);
    on(history_fulfilled())
        .when(CancelOrder {
            reason: CancelReason::CustomerRequest,
        })
        .then_expect_error(OrderError::OrderClosed {
            status: OrderStatus::Fulfilled,
        });
}

#[test]
fn cancel_refuses_the_reasons_that_have_their_own_command() {
    for reason in [CancelReason::ReservationExpired, CancelReason::TimedOut] {
        on(history_created())
            .when(CancelOrder { reason })
            .then_expect_error(OrderError::CancelReasonNotAllowed { reason });
    }
}

// --- RecordReservationExpired ----------------------------------------------------------------

#[test]
fn an_expired_reservation_cancels_the_order() {
    let expired = || RecordReservationExpired {
        product_id: "sku-1".into(),
        reservation_id: res(1),
    };
    on(history_stock_reserved())
        .at(t(30))
        .when(expired())
        .then_expect_events([cancelled(
            CancelReason::ReservationExpired,
            None,
            None,
            both_reservations(),
            t(30),
        )]);
    // The order may not have heard of the reservation yet.
    on(history_created())
        .at(t(30))
        .when(expired())
        .then_expect_events([cancelled(
            CancelReason::ReservationExpired,
            None,
            None,
            vec![],
            t(30),
        )]);
    // After payment (the reservation expired before the saga confirmed it): refund.
    on(history_confirmed())
        .at(t(30))
        .when(expired())
        .then_expect_events([cancelled(
            CancelReason::ReservationExpired,
            Some("25.50"),
            Some(payment()),
            both_reservations(),
            t(30),
        )]);
    on(history_cancelled())
        .when(expired())
        .then_expect_events([]);
}

#[test]
fn reservation_expired_rejections() {
    on(history_one_line_reserved())
        .when(RecordReservationExpired {
            product_id: "sku-1".into(),
            reservation_id: res(5),
        })
        .then_expect_error(OrderError::ReservationMismatch {
            product_id: "sku-1".into(),
            recorded: res(1),
            got: res(5),
        });
    on(history_created())
        .when(RecordReservationExpired {
            product_id: "sku-0".into(),
            reservation_id: res(1),
        })
        .then_expect_error(OrderError::UnknownLine {
            product_id: "sku-0".into(),
        });
    on(history_fulfilled())
        .when(RecordReservationExpired {
            product_id: "sku-1".into(),
            reservation_id: res(1),
        })
        .then_expect_error(OrderError::OrderClosed {
            status: OrderStatus::Fulfilled,
        });
}

// --- ExpireOrder -----------------------------------------------------------------------------

#[test]
fn expire_order_cancels_an_unconfirmed_order_at_its_deadline() {
    on(history_created())
        .at(t(29))
        .when(ExpireOrder)
        .then_expect_events([]);
    on(history_created())
        .at(t(30))
        .when(ExpireOrder)
        .then_expect_events([cancelled(CancelReason::TimedOut, None, None, vec![], t(30))]);
    on(history_payment_requested())
        .at(t(45))
        .when(ExpireOrder)
        .then_expect_events([cancelled(
            CancelReason::TimedOut,
            None,
            Some(payment()),
            both_reservations(),
            t(45),
        )]);
}

#[test]
fn expire_order_leaves_confirmed_and_final_orders_alone() {
    for history in [
        history_confirmed(),
        history_fulfilled(),
        history_cancelled(),
    ] {
        on(history)
            .at(t(300))
            .when(ExpireOrder)
            .then_expect_events([]);
    }
}

// --- Lifecycle table ---------------------------------------------------------------------------

#[test]
fn order_lifecycle_table() {
    use OrderStatus::*;
    let all = [
        Created,
        StockReserved,
        PaymentRequested,
        Confirmed,
        Fulfilled,
        Cancelled,
    ];
    let allowed = [
        (Created, StockReserved),
        (Created, Cancelled),
        (StockReserved, PaymentRequested),
        (StockReserved, Cancelled),
        (PaymentRequested, Confirmed),
        (PaymentRequested, Cancelled),
        (Confirmed, Fulfilled),
        (Confirmed, Cancelled),
    ];
    assert_transition_table(&all, &allowed, can_transition);
    for from in all {
        assert_eq!(from.is_final(), matches!(from, Fulfilled | Cancelled));
    }
}

#[test]
fn the_happy_path_walks_the_lifecycle() {
    let mut state = OrderState::default();
    let ctx = DecideContext::new(order_id().to_string(), fixed_now());
    let steps: Vec<OrderCommand> = vec![
        create().into(),
        RecordStockReserved {
            product_id: "sku-1".into(),
            reservation_id: res(1),
            quantity: 2,
        }
        .into(),
        RecordStockReserved {
            product_id: "sku-2".into(),
            reservation_id: res(2),
            quantity: 1,
        }
        .into(),
        RequestPayment {
            payment_id: payment(),
        }
        .into(),
        RecordPaymentCompleted {
            payment_id: payment(),
            amount: money("25.50"),
        }
        .into(),
        confirm_line("sku-1", 1).into(),
        confirm_line("sku-2", 2).into(),
        FulfilOrder.into(),
    ];
    let mut seen = vec![];
    for command in steps {
        for event in Order::decide(&state, &command, &ctx).unwrap() {
            Order::apply(&mut state, &event);
            Order::check_invariants(&state).unwrap();
            seen.push(event);
        }
    }
    assert_eq!(status(&state), OrderStatus::Fulfilled);
    let expected = vec![
        created(),
        line_reserved("sku-1", 1, 2),
        line_reserved("sku-2", 2, 1),
        stock_reserved(),
        payment_requested(),
        confirmed(),
        line_confirmed("sku-1", 1, 2),
        line_confirmed("sku-2", 2, 1),
        ready_for_fulfilment(),
        fulfilled(),
    ];
    assert_eq!(seen, expected);
}

// --- Invariants ------------------------------------------------------------------------------

#[test]
fn check_invariants_catches_every_broken_invariant() {
    let good = on(history_confirmed()).state().clone();
    assert_eq!(Order::check_invariants(&good), Ok(()));
    type Breaker = Box<dyn Fn(&mut PlacedOrder)>;
    let breakers: Vec<(&str, Breaker)> = vec![
        ("no lines", Box::new(|o| o.lines.clear())),
        ("empty product", Box::new(|o| o.lines[0].product_id.clear())),
        (
            "repeated product",
            Box::new(|o| o.lines[1].product_id = "sku-1".into()),
        ),
        ("zero quantity", Box::new(|o| o.lines[0].quantity = 0)),
        (
            "negative price",
            Box::new(|o| o.lines[0].unit_price = money("-1")),
        ),
        (
            "line total",
            Box::new(|o| o.lines[0].line_total = money("1")),
        ),
        ("total", Box::new(|o| o.total_amount = money("1"))),
        ("deadline", Box::new(|o| o.expires_at = o.created_at)),
        (
            "unreserved line",
            Box::new(|o| o.lines[0].reservation_id = None),
        ),
        (
            "confirmed reservation never made",
            Box::new(|o| {
                o.status = OrderStatus::Created;
                o.payment_id = None;
                o.paid_amount = None;
                o.lines[0].reservation_id = None;
                o.lines[0].reservation_confirmed = true;
            }),
        ),
        ("no payment id", Box::new(|o| o.payment_id = None)),
        (
            "paid amount",
            Box::new(|o| o.paid_amount = Some(money("2"))),
        ),
        (
            "reason without cancel",
            Box::new(|o| o.cancel_reason = Some(CancelReason::TimedOut)),
        ),
        (
            "refund without cancel",
            Box::new(|o| o.refund_required = true),
        ),
        (
            "cancel without reason",
            Box::new(|o| o.status = OrderStatus::Cancelled),
        ),
        (
            "refund of an unpaid order",
            Box::new(|o| {
                o.status = OrderStatus::Cancelled;
                o.cancel_reason = Some(CancelReason::CustomerRequest);
                o.paid_amount = None;
                o.refund_required = true;
            }),
        ),
        (
            "paid and cancelled without a refund",
            Box::new(|o| {
                o.status = OrderStatus::Cancelled;
                o.cancel_reason = Some(CancelReason::CustomerRequest);
            }),
        ),
    ];
    for (name, breaker) in breakers {
        let mut bad = good.clone();
        breaker(bad.order.as_mut().unwrap());
        assert!(Order::check_invariants(&bad).is_err(), "{name} not caught");
    }
    assert_eq!(Order::check_invariants(&OrderState::default()), Ok(()));
}

// --- Contracts -------------------------------------------------------------------------------

fn one_of_each_event() -> Vec<OrderEvent> {
    vec![
        created(),
        confirmed(),
        cancelled(
            CancelReason::CustomerRequest,
            Some("25.50"),
            Some(payment()),
            both_reservations(),
            fixed_now(),
        ),
        fulfilled(),
        line_reserved("sku-1", 1, 2),
        stock_reserved(),
        payment_requested(),
        line_confirmed("sku-1", 1, 2),
        ready_for_fulfilment(),
    ]
}

const RESERVATION_CONTRACT: [(&str, &str); 3] = [
    ("product_id", "string"),
    ("reservation_id", "uuid"),
    ("quantity", "integer"),
];

fn assert_elements(event_type: &str, array: &serde_json::Value, contract: &[(&str, &str)]) {
    let items = array.as_array().expect("an array");
    assert!(
        !items.is_empty(),
        "{event_type}: test data should fill the array"
    );
    for item in items {
        assert_exact_contract(event_type, item, contract);
    }
}

#[test]
fn every_event_matches_its_contract() {
    let currency = "enum:USD|EUR|RUB";
    let reasons =
        "enum:customer_request|stock_unavailable|payment_failed|reservation_expired|timed_out";
    for event in one_of_each_event() {
        assert_eq!(event.topic(), "business.orders");
        assert_eq!(event.event_version(), "1.0");
        let json = event.payload_json();
        let ty = event.event_type();
        let contract: Vec<(&str, &str)> = match &event {
            OrderEvent::OrderCreated(_) => {
                assert_elements(
                    ty,
                    &json["lines"],
                    &[
                        ("product_id", "string"),
                        ("quantity", "integer"),
                        ("unit_price", "decimal"),
                        ("line_total", "decimal"),
                    ],
                );
                vec![
                    ("order_id", "uuid"),
                    ("customer_id", "uuid"),
                    ("idempotency_key", "uuid"),
                    ("lines", "array"),
                    ("total_amount", "decimal"),
                    ("currency", currency),
                    ("created_at", "datetime"),
                    ("expires_at", "datetime"),
                ]
            }
            OrderEvent::OrderLineReserved(_) => vec![
                ("order_id", "uuid"),
                ("product_id", "string"),
                ("reservation_id", "uuid"),
                ("quantity", "integer"),
                ("reserved_at", "datetime"),
            ],
            OrderEvent::OrderStockReserved(_) => {
                assert_elements(ty, &json["reservations"], &RESERVATION_CONTRACT);
                vec![
                    ("order_id", "uuid"),
                    ("reservations", "array"),
                    ("reserved_at", "datetime"),
                ]
            }
            OrderEvent::OrderPaymentRequested(_) => vec![
                ("order_id", "uuid"),
                ("payment_id", "uuid"),
                ("amount", "decimal"),
                ("currency", currency),
                ("requested_at", "datetime"),
            ],
            OrderEvent::OrderConfirmed(_) => vec![
                ("order_id", "uuid"),
                ("payment_id", "uuid"),
                ("amount", "decimal"),
                ("currency", currency),
                ("confirmed_at", "datetime"),
            ],
            OrderEvent::OrderCancelled(_) => {
                assert_elements(ty, &json["reservations_to_release"], &RESERVATION_CONTRACT);
                vec![
                    ("order_id", "uuid"),
                    ("reason", reasons),
                    ("refund_required", "boolean"),
                    ("refund_amount", "decimal?"),
                    ("payment_id", "uuid?"),
                    ("reservations_to_release", "array"),
                    ("cancelled_at", "datetime"),
                ]
            }
            OrderEvent::OrderReservationConfirmed(_) => vec![
                ("order_id", "uuid"),
                ("product_id", "string"),
                ("reservation_id", "uuid"),
                ("quantity", "integer"),
                ("confirmed_at", "datetime"),
            ],
            OrderEvent::OrderReadyForFulfilment(_) => {
                assert_elements(ty, &json["reservations"], &RESERVATION_CONTRACT);
                vec![
                    ("order_id", "uuid"),
                    ("reservations", "array"),
                    ("ready_at", "datetime"),
                ]
            }
            OrderEvent::OrderFulfilled(_) => {
                assert_elements(ty, &json["reservations_to_commit"], &RESERVATION_CONTRACT);
                vec![
                    ("order_id", "uuid"),
                    ("total_amount", "decimal"),
                    ("currency", currency),
                    ("reservations_to_commit", "array"),
                    ("fulfilled_at", "datetime"),
                ]
            }
        };
        assert_exact_contract(ty, &json, &contract);
    }
}

#[test]
fn nullable_fields_are_present_as_null() {
    let event = cancelled(CancelReason::TimedOut, None, None, vec![], fixed_now());
    let json = event.payload_json();
    assert!(
        json["refund_amount"].is_null() && json["payment_id"].is_null(),
        "{json}"
    );
    assert_contract(
        "OrderCancelled",
        &json,
        &[
            ("refund_amount", "decimal?"),
            ("payment_id", "uuid?"),
            ("refund_required", "boolean"),
        ],
    );
    assert_eq!(created().payload_json()["total_amount"], "25.50");
}

#[test]
fn event_types_are_the_seed_names_and_cancel_reasons_match_json() {
    let types: Vec<&str> = one_of_each_event().iter().map(|e| e.event_type()).collect();
    assert_eq!(
        types,
        [
            "OrderCreated",
            "OrderConfirmed",
            "OrderCancelled",
            "OrderFulfilled",
            "OrderLineReserved",
            "OrderStockReserved",
            "OrderPaymentRequested",
            "OrderReservationConfirmed",
            "OrderReadyForFulfilment"
        ]
    );
    assert_eq!(Order::TYPE, "Order");
    for reason in [
        CancelReason::CustomerRequest,
        CancelReason::StockUnavailable,
        CancelReason::PaymentFailed,
        CancelReason::ReservationExpired,
        CancelReason::TimedOut,
    ] {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
}

// --- Round trips -----------------------------------------------------------------------------

#[test]
fn events_round_trip_through_json_and_codec() {
    let mut events = one_of_each_event();
    events.push(cancelled(
        CancelReason::TimedOut,
        None,
        None,
        vec![],
        fixed_now(),
    ));
    for event in events {
        assert_json_and_codec_round_trip(&event);
        let bytes = Order::encode_event(&event);
        assert_eq!(codec::decode::<OrderEvent>(&bytes).unwrap(), event);
        assert_eq!(
            Order::decode_event(event.event_type(), "1.0", &bytes).unwrap(),
            event
        );
        assert!(Order::decode_event(event.event_type(), "2.0", &bytes).is_err());
    }
}

#[test]
fn commands_round_trip_through_json_and_codec() {
    let commands: Vec<OrderCommand> = vec![
        create().into(),
        RecordStockReserved {
            product_id: "sku-1".into(),
            reservation_id: res(1),
            quantity: 2,
        }
        .into(),
        RequestPayment {
            payment_id: payment(),
        }
        .into(),
        RecordPaymentCompleted {
            payment_id: payment(),
            amount: money("25.50"),
        }
        .into(),
        FulfilOrder.into(),
        CancelOrder {
            reason: CancelReason::PaymentFailed,
        }
        .into(),
        RecordReservationExpired {
            product_id: "sku-2".into(),
            reservation_id: res(2),
        }
        .into(),
        ExpireOrder.into(),
        confirm_line("sku-2", 2).into(),
    ];
    for command in &commands {
        assert_json_and_codec_round_trip(command);
    }
}

#[test]
fn state_round_trips_through_json_and_codec() {
    for history in [
        vec![],
        history_one_line_reserved(),
        history_confirmed(),
        history_fulfilled(),
        history_cancelled(),
    ] {
        let state = on(history).state().clone();
        assert_json_and_codec_round_trip(&state);
    }
}

// --- Workload --------------------------------------------------------------------------------

#[test]
fn workload_drives_orders_through_every_outcome() {
    let mut rng = DemoRng::new(7);
    let mut seen = std::collections::BTreeSet::new();
    let mut reasons = std::collections::BTreeSet::new();
    let (mut accepted, mut rejected) = (0, 0);
    for n in 0..300u128 {
        let mut state = OrderState::default();
        let mut now = fixed_now();
        let id = Uuid::from_u128(0x5000 + n).to_string();
        for _ in 0..12 {
            // Now and then the saga stalls past the 30-minute deadline.
            let stall = if rng.chance(4) { 1_800 } else { 0 };
            now += TimeDelta::seconds(rng.range(0, 400) + stall);
            let ctx = DecideContext::new(id.clone(), now);
            let command = Order::sample_command(&state, &ctx, &mut rng);
            match Order::decide(&state, &command, &ctx) {
                Ok(events) => {
                    accepted += 1;
                    for event in &events {
                        seen.insert(event.event_type());
                        if let OrderEvent::OrderCancelled(e) = event {
                            reasons.insert(e.reason);
                        }
                        Order::apply(&mut state, event);
                    }
                    Order::check_invariants(&state).unwrap();
                }
                Err(_) => rejected += 1,
            }
        }
    }
    assert_eq!(seen.len(), 9, "event types seen: {seen:?}");
    assert_eq!(reasons.len(), 5, "cancel reasons seen: {reasons:?}");
    assert!(
        accepted > rejected * 5,
        "accepted {accepted}, rejected {rejected}"
    );
}

// --- Timer -----------------------------------------------------------------------------------

#[test]
fn the_timer_follows_the_order_until_it_is_confirmed() {
    let at = |h: Vec<OrderEvent>| Order::next_timer(on(h).state());
    assert_eq!(at(vec![]), None);
    // Nothing reserved yet: the order's own deadline, `timed_out`.
    assert_eq!(at(history_created()), Some((t(30), ExpireOrder.into())));
    // Reserved: 30 minutes after the first reservation, `reservation_expired`.
    assert_eq!(
        at(history_one_line_reserved()),
        Some((t(30), ExpireUnconfirmedReservation.into()))
    );
    assert_eq!(
        at(history_payment_requested()),
        Some((t(30), ExpireUnconfirmedReservation.into()))
    );
    for final_or_confirmed in [
        history_confirmed(),
        history_fulfilled(),
        history_cancelled(),
    ] {
        assert_eq!(at(final_or_confirmed), None);
    }
}

#[test]
fn expire_unconfirmed_reservation_cancels_at_the_reservation_deadline_and_not_before() {
    on(history_payment_requested())
        .at(t(30) - TimeDelta::microseconds(1))
        .when(ExpireUnconfirmedReservation)
        .then_expect_events([]);
    on(history_payment_requested())
        .at(t(30))
        .when(ExpireUnconfirmedReservation)
        .then_expect_events([cancelled(
            CancelReason::ReservationExpired,
            None,
            Some(payment()),
            both_reservations(),
            t(30),
        )]);
    // Nothing reserved, confirmed or final: nothing to do.
    for history in [
        history_created(),
        history_confirmed(),
        history_fulfilled(),
        history_cancelled(),
    ] {
        on(history)
            .at(t(300))
            .when(ExpireUnconfirmedReservation)
            .then_expect_events([]);
    }
}
