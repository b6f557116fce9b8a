//! The decisions of `OrderSaga`, given/when/then, one test per path of the flow and its
//! compensations (docs/saga.md): what the saga records for each fact and which commands its
//! events ask to be sent (`Saga::outbox`), with their step names. Every state reached is
//! checked against the saga's invariants by the model's helpers.

use chrono::{DateTime, Duration, TimeZone, Utc};
use evershard_aggregates::order::{CancelReason, OrderCommand};
use evershard_aggregates::order_saga::*;
use evershard_aggregates::payment::PaymentCommand;
use evershard_aggregates::product_stock::{ProductStockCommand, ReleaseReason};
use evershard_model::testing::given;
use evershard_model::{step_key, Aggregate, Currency, Money, Saga};
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).single().unwrap()
}

const ORDER: Uuid = Uuid::from_u128(0x0a);
const CUSTOMER: Uuid = Uuid::from_u128(0xc0);

/// A saga under test: its history so far, a clock, and a sequence per source stream.
struct Sim {
    events: Vec<OrderSagaEvent>,
    now: DateTime<Utc>,
    sequences: std::collections::BTreeMap<String, u64>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            events: vec![],
            now: t0(),
            sequences: Default::default(),
        }
    }

    /// A saga started for an order of `lines` (product, quantity), 10.00 per unit.
    fn started(lines: &[(&str, i64)]) -> Sim {
        let mut sim = Sim::new();
        let total: i64 = lines.iter().map(|(_, q)| q * 1000).sum();
        let events = sim.order(Fact::OrderCreated {
            customer_id: CUSTOMER,
            lines: lines
                .iter()
                .map(|(p, q)| SagaLineSpec {
                    product_id: p.to_string(),
                    quantity: *q,
                })
                .collect(),
            total_amount: Money::from_minor(total),
            currency: Currency::USD,
            created_at: t0(),
            expires_at: t0() + Duration::minutes(30),
        });
        assert!(matches!(events[..], [OrderSagaEvent::SagaStarted(_)]));
        sim
    }

    /// A saga of one line of `quantity` units of `product`, reserved, paid (10.00 per unit)
    /// and confirmed.
    fn paid(product: &str, quantity: i64) -> Sim {
        let mut sim = Sim::started(&[(product, quantity)]);
        sim.reserved(product);
        sim.payment(Fact::PaymentCompleted {
            payment_id: payment_id_for(ORDER),
            amount: Money::from_minor(quantity * 1000),
        });
        sim.order(Fact::OrderConfirmed);
        sim
    }

    fn next_source(&mut self, aggregate_type: &str, id: &str, event_type: &str) -> Source {
        let seq = self
            .sequences
            .entry(format!("{aggregate_type}/{id}"))
            .or_insert(0);
        *seq += 1;
        Source {
            aggregate_type: aggregate_type.into(),
            aggregate_id: id.into(),
            sequence: *seq,
            event_type: event_type.into(),
        }
    }

    fn run(&mut self, command: impl Into<OrderSagaCommand>) -> Vec<OrderSagaEvent> {
        let mut got = vec![];
        given::<OrderSaga>(self.events.clone())
            .id(ORDER.to_string())
            .at(self.now)
            .when(command)
            .then_events(|events| got = events.to_vec());
        self.events.extend(got.clone());
        got
    }

    fn observe(&mut self, source: Source, fact: Fact) -> Vec<OrderSagaEvent> {
        self.run(Observe { source, fact })
    }

    fn order(&mut self, fact: Fact) -> Vec<OrderSagaEvent> {
        let source = self.next_source("Order", &ORDER.to_string(), "OrderEvent");
        self.observe(source, fact)
    }

    fn stock(&mut self, product: &str, fact: Fact) -> Vec<OrderSagaEvent> {
        let source = self.next_source("ProductStock", product, "ProductStockEvent");
        self.observe(source, fact)
    }

    fn payment(&mut self, fact: Fact) -> Vec<OrderSagaEvent> {
        let id = payment_id_for(ORDER).to_string();
        let source = self.next_source("Payment", &id, "PaymentEvent");
        self.observe(source, fact)
    }

    fn reserved(&mut self, product: &str) -> Vec<OrderSagaEvent> {
        self.stock(
            product,
            Fact::StockReserved {
                product_id: product.into(),
                reservation_id: ORDER,
            },
        )
    }

    fn rejected(&mut self, step: &str, error: &str) -> Vec<OrderSagaEvent> {
        let source = Source {
            aggregate_type: "OrderSaga".into(),
            aggregate_id: ORDER.to_string(),
            sequence: self.events.len() as u64,
            event_type: "SagaStarted".into(),
        };
        self.observe(
            source,
            Fact::CommandRejected {
                step: step.into(),
                error: error.into(),
            },
        )
    }

    fn state(&self) -> SagaInstance {
        OrderSaga::replay(OrderSagaState::default(), &self.events)
            .saga
            .expect("started")
    }

    fn timer(&self) -> Option<DateTime<Utc>> {
        OrderSaga::next_timer(&OrderSaga::replay(Default::default(), &self.events))
            .map(|(at, _)| at)
    }
}

fn names(events: &[OrderSagaEvent]) -> Vec<&'static str> {
    use evershard_model::DomainEvent;
    events.iter().map(|e| e.event_type()).collect()
}

fn steps(events: &[OrderSagaEvent]) -> Vec<String> {
    events
        .iter()
        .flat_map(OrderSaga::outbox)
        .map(|o| o.step)
        .collect()
}

fn finished(events: &[OrderSagaEvent]) -> Option<SagaFinished> {
    events.iter().find_map(|e| match e {
        OrderSagaEvent::SagaFinished(f) => Some(f.clone()),
        _ => None,
    })
}

#[test]
fn order_created_starts_the_saga_and_reserves_every_line_under_the_order_id() {
    let sim = Sim::started(&[("sku-a", 2), ("sku-b", 1)]);
    let sends = OrderSaga::outbox(&sim.events[0]);
    assert_eq!(
        sends.iter().map(|o| o.step.as_str()).collect::<Vec<_>>(),
        ["reserve:sku-a", "reserve:sku-b"]
    );
    match &sends[0].command {
        SagaCommand::Stock {
            product_id,
            command: ProductStockCommand::Reserve(r),
        } => {
            assert_eq!(product_id, "sku-a");
            assert_eq!(
                (r.reservation_id, r.order_id, r.quantity),
                (ORDER, ORDER, 2)
            );
        }
        other => panic!("{other:?}"),
    }
    let saga = sim.state();
    assert_eq!(saga.deadline, t0() + Duration::minutes(30));
    assert_eq!(saga.payment_id, payment_id_for(ORDER));
    assert_eq!(
        sim.timer(),
        Some(saga.deadline),
        "the 30-minute saga timeout"
    );
    // The step keys are deterministic: a re-sent step is the same idempotency key.
    assert_eq!(
        step_key("OrderSaga", &ORDER.to_string(), "reserve:sku-a"),
        step_key("OrderSaga", &ORDER.to_string(), &sends[0].step)
    );
}

#[test]
fn facts_before_the_order_are_not_this_sagas_business() {
    let source = Source {
        aggregate_type: "ProductStock".into(),
        aggregate_id: "sku-a".into(),
        sequence: 1,
        event_type: "StockReserved".into(),
    };
    given::<OrderSaga>([])
        .id(ORDER.to_string())
        .when(Observe {
            source,
            fact: Fact::StockReserved {
                product_id: "sku-a".into(),
                reservation_id: ORDER,
            },
        })
        .then_expect_error(OrderSagaError::NotStarted);
    given::<OrderSaga>([])
        .id("not-a-uuid")
        .when(Tick)
        .then_expect_error_matching(|e| matches!(e, OrderSagaError::InvalidSagaId { .. }));
}

#[test]
fn all_lines_reserved_requests_the_payment_of_the_total() {
    let mut sim = Sim::started(&[("sku-a", 2), ("sku-b", 1)]);
    let first = sim.reserved("sku-a");
    assert_eq!(names(&first), ["LineReserved"]);
    assert_eq!(steps(&first), ["record-reserved:sku-a"]);
    let last = sim.reserved("sku-b");
    assert_eq!(names(&last), ["LineReserved", "PaymentAttemptRequested"]);
    assert_eq!(
        steps(&last),
        ["record-reserved:sku-b", "request-payment", "payment:1"]
    );
    let initiate = OrderSaga::outbox(&last[1]).pop().unwrap();
    match initiate.command {
        SagaCommand::Payment {
            payment_id,
            command: PaymentCommand::Initiate(i),
        } => {
            assert_eq!(payment_id, payment_id_for(ORDER));
            assert_eq!(i.amount, Money::from_minor(3000));
            assert_eq!((i.payer_id, i.target_id), (CUSTOMER, ORDER));
            assert_eq!(i.payment_method, SAGA_PAYMENT_METHOD);
        }
        other => panic!("{other:?}"),
    }
    // A redelivered StockReserved is a repeat: nothing new.
    let source = Source {
        aggregate_type: "ProductStock".into(),
        aggregate_id: "sku-b".into(),
        sequence: 1,
        event_type: "ProductStockEvent".into(),
    };
    let repeat = sim.observe(
        source,
        Fact::StockReserved {
            product_id: "sku-b".into(),
            reservation_id: ORDER,
        },
    );
    assert!(repeat.is_empty(), "{repeat:?}");
}

#[test]
fn a_line_out_of_stock_cancels_the_order_and_releases_the_reserved_lines() {
    let mut sim = Sim::started(&[("sku-a", 2), ("sku-b", 9)]);
    sim.reserved("sku-a");
    let rejected = sim.rejected(
        "reserve:sku-b",
        "insufficient stock: 9 requested, 1 available",
    );
    assert_eq!(names(&rejected), ["LineRejected", "CancelRequested"]);
    assert_eq!(steps(&rejected), ["cancel-order"]);
    // A repeated report of the same rejection changes nothing.
    assert!(sim.rejected("reserve:sku-b", "again").is_empty());
    let cancelled = sim.order(Fact::OrderCancelled {
        reason: CancelReason::StockUnavailable,
    });
    assert_eq!(names(&cancelled), ["OrderCancelledSeen"]);
    assert_eq!(
        steps(&cancelled),
        ["release:sku-a"],
        "the rejected line holds nothing"
    );
    let OrderSagaEvent::OrderCancelledSeen(seen) = &cancelled[0] else {
        unreachable!()
    };
    assert_eq!(seen.release_reason, ReleaseReason::Compensation);
    let released = sim.stock(
        "sku-a",
        Fact::StockReleased {
            product_id: "sku-a".into(),
            reason: ReleaseReason::Compensation,
        },
    );
    assert_eq!(names(&released), ["LineReleased", "SagaFinished"]);
    let done = finished(&released).unwrap();
    assert_eq!(done.outcome, SagaOutcome::Cancelled);
    assert_eq!(done.cancel_reason, Some(CancelReason::StockUnavailable));
    assert!(done.compensated);
    assert_eq!(sim.timer(), None, "a finished saga holds no timer");
}

#[test]
fn a_failed_payment_is_retried_after_the_duplicate_window() {
    let mut sim = Sim::started(&[("sku-a", 1)]);
    sim.reserved("sku-a");
    let failed = sim.payment(Fact::PaymentFailed {
        payment_id: payment_id_for(ORDER),
        attempt: 1,
        blocked: false,
        reason: "declined".into(),
    });
    let retry_at = t0() + Duration::milliseconds(PAYMENT_RETRY_DELAY_MS);
    match &failed[..] {
        [OrderSagaEvent::PaymentAttemptFailed(f)] => assert_eq!(f.retry_at, Some(retry_at)),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.timer(), Some(retry_at));
    sim.now = retry_at - Duration::microseconds(1);
    assert!(sim.run(Tick).is_empty(), "not before its time");
    sim.now = retry_at;
    let retry = sim.run(Tick);
    // The order consents again (a repeat it answers with no events while it waits for the
    // payment, a refusal once closed): the attempt depends on it.
    assert_eq!(steps(&retry), ["request-payment:2", "payment:2"]);
    let sends = OrderSaga::outbox(&retry[0]);
    assert!(sends[1].only_if_previous_accepted);
    assert_eq!(sim.state().payment, PaymentPhase::Requested { attempt: 2 });
    let paid = sim.payment(Fact::PaymentCompleted {
        payment_id: payment_id_for(ORDER),
        amount: Money::from_minor(1000),
    });
    assert_eq!(steps(&paid), ["record-payment"]);
}

/// A line a stock clerk confirmed by hand before the last line was reserved counts as
/// reserved: the payment is requested (it waited until the order timed out).
#[test]
fn a_line_confirmed_before_the_last_is_reserved_still_requests_the_payment() {
    let mut sim = Sim::started(&[("sku-a", 2), ("sku-b", 1)]);
    sim.reserved("sku-a");
    let confirmed = sim.stock(
        "sku-a",
        Fact::StockReservationConfirmed {
            product_id: "sku-a".into(),
        },
    );
    assert_eq!(names(&confirmed), ["LineConfirmed"]);
    let last = sim.reserved("sku-b");
    assert_eq!(names(&last), ["LineReserved", "PaymentAttemptRequested"]);
}

#[test]
fn a_blocked_payment_cancels_the_order() {
    let mut sim = Sim::started(&[("sku-a", 1)]);
    sim.reserved("sku-a");
    for attempt in 1..=3 {
        let failed = sim.payment(Fact::PaymentFailed {
            payment_id: payment_id_for(ORDER),
            attempt,
            blocked: attempt == 3,
            reason: "declined".into(),
        });
        if attempt < 3 {
            sim.now += Duration::milliseconds(PAYMENT_RETRY_DELAY_MS);
            let next = attempt + 1;
            assert_eq!(
                steps(&sim.run(Tick)),
                [format!("request-payment:{next}"), format!("payment:{next}")]
            );
        } else {
            assert_eq!(names(&failed), ["PaymentAttemptFailed", "CancelRequested"]);
            assert_eq!(steps(&failed), ["cancel-order"]);
        }
    }
    let cancelled = sim.order(Fact::OrderCancelled {
        reason: CancelReason::PaymentFailed,
    });
    let OrderSagaEvent::OrderCancelledSeen(seen) = &cancelled[0] else {
        unreachable!()
    };
    assert_eq!(seen.release_reason, ReleaseReason::PaymentFailed);
    assert_eq!(steps(&cancelled), ["release:sku-a"]);
}

#[test]
fn payment_completed_confirms_and_fulfilment_commits_the_reservations() {
    let mut sim = Sim::started(&[("sku-a", 1), ("sku-b", 2)]);
    sim.reserved("sku-a");
    sim.reserved("sku-b");
    sim.payment(Fact::PaymentCompleted {
        payment_id: payment_id_for(ORDER),
        amount: Money::from_minor(3000),
    });
    let confirmed = sim.order(Fact::OrderConfirmed);
    assert_eq!(steps(&confirmed), ["confirm:sku-a", "confirm:sku-b"]);
    assert_eq!(
        sim.timer(),
        None,
        "confirmed: the saga timeout no longer applies"
    );
    for p in ["sku-a", "sku-b"] {
        sim.stock(
            p,
            Fact::StockReservationConfirmed {
                product_id: p.into(),
            },
        );
    }
    let fulfilled = sim.order(Fact::OrderFulfilled);
    assert_eq!(steps(&fulfilled), ["commit:sku-a", "commit:sku-b"]);
    sim.stock(
        "sku-a",
        Fact::StockCommitted {
            product_id: "sku-a".into(),
        },
    );
    let last = sim.stock(
        "sku-b",
        Fact::StockCommitted {
            product_id: "sku-b".into(),
        },
    );
    let done = finished(&last).unwrap();
    assert_eq!(done.outcome, SagaOutcome::Fulfilled);
    assert!(!done.compensated);
}

#[test]
fn an_expiry_before_confirmation_is_reported_to_the_order() {
    let mut sim = Sim::started(&[("sku-a", 1), ("sku-b", 1)]);
    sim.reserved("sku-a");
    sim.reserved("sku-b");
    let expired = sim.stock(
        "sku-b",
        Fact::StockReleased {
            product_id: "sku-b".into(),
            reason: ReleaseReason::Expired,
        },
    );
    assert_eq!(steps(&expired), ["record-expired:sku-b"]);
    let cancelled = sim.order(Fact::OrderCancelled {
        reason: CancelReason::ReservationExpired,
    });
    assert_eq!(
        steps(&cancelled),
        ["release:sku-a"],
        "only the line still held"
    );
    // The payment attempt is still open: the saga waits for the gateway.
    sim.stock(
        "sku-a",
        Fact::StockReleased {
            product_id: "sku-a".into(),
            reason: ReleaseReason::Compensation,
        },
    );
    assert_eq!(sim.state().outcome, None);
    let late = sim.payment(Fact::PaymentFailed {
        payment_id: payment_id_for(ORDER),
        attempt: 1,
        blocked: false,
        reason: "abandoned".into(),
    });
    assert!(matches!(
        &late[0],
        OrderSagaEvent::PaymentAttemptFailed(f) if f.retry_at.is_none()
    ));
    assert_eq!(finished(&late).unwrap().outcome, SagaOutcome::Cancelled);
}

#[test]
fn cancelling_a_paid_order_refunds_the_captured_amount_once() {
    let mut sim = Sim::paid("sku-a", 3);
    let cancelled = sim.order(Fact::OrderCancelled {
        reason: CancelReason::CustomerRequest,
    });
    assert_eq!(names(&cancelled), ["OrderCancelledSeen", "RefundRequested"]);
    assert_eq!(steps(&cancelled), ["release:sku-a", "refund"]);
    match &cancelled[1] {
        OrderSagaEvent::RefundRequested(r) => {
            assert_eq!(r.amount, Money::from_minor(3000));
            assert_eq!(r.refund_id, refund_id_for(ORDER));
        }
        other => panic!("{other:?}"),
    }
    // The order's refusal of a late confirmation would ask for the same refund: not again.
    let again = sim.rejected("record-payment", "the order is already cancelled");
    assert_eq!(names(&again), ["StepRejected"]);
    sim.stock(
        "sku-a",
        Fact::StockReleased {
            product_id: "sku-a".into(),
            reason: ReleaseReason::Cancelled,
        },
    );
    let refunded = sim.payment(Fact::PaymentRefunded {
        payment_id: payment_id_for(ORDER),
        amount: Money::from_minor(3000),
        total_refunded: Money::from_minor(3000),
    });
    let done = finished(&refunded).unwrap();
    assert_eq!(done.refunded, Some(Money::from_minor(3000)));
    assert!(done.compensated);
}

/// A part refunded by hand before the cancellation (another refund id): the saga refunds
/// the rest, not the whole captured amount (which the payment refuses), and finishes.
#[test]
fn a_cancelled_order_partly_refunded_by_hand_gets_the_rest() {
    let mut sim = Sim::paid("sku-a", 1);
    sim.payment(Fact::PaymentRefunded {
        payment_id: payment_id_for(ORDER),
        amount: Money::from_minor(300),
        total_refunded: Money::from_minor(300),
    });
    let cancelled = sim.order(Fact::OrderCancelled {
        reason: CancelReason::CustomerRequest,
    });
    match &cancelled[..] {
        [_, OrderSagaEvent::RefundRequested(r)] => assert_eq!(r.amount, Money::from_minor(700)),
        other => panic!("{other:?}"),
    }
    sim.stock(
        "sku-a",
        Fact::StockReleased {
            product_id: "sku-a".into(),
            reason: ReleaseReason::Cancelled,
        },
    );
    let refunded = sim.payment(Fact::PaymentRefunded {
        payment_id: payment_id_for(ORDER),
        amount: Money::from_minor(700),
        total_refunded: Money::from_minor(1000),
    });
    assert!(finished(&refunded).is_some(), "{refunded:?}");
}

#[test]
fn a_payment_that_completes_on_a_cancelled_order_is_refunded() {
    let mut sim = Sim::started(&[("sku-a", 1)]);
    sim.reserved("sku-a");
    sim.order(Fact::OrderCancelled {
        reason: CancelReason::CustomerRequest,
    });
    let paid = sim.payment(Fact::PaymentCompleted {
        payment_id: payment_id_for(ORDER),
        amount: Money::from_minor(1000),
    });
    assert_eq!(names(&paid), ["PaymentSucceeded", "RefundRequested"]);
    assert_eq!(
        steps(&paid),
        ["refund"],
        "not recorded on the cancelled order"
    );
}

#[test]
fn the_saga_times_out_at_the_orders_deadline() {
    let mut sim = Sim::started(&[("sku-a", 1)]);
    sim.reserved("sku-a");
    sim.now = t0() + Duration::minutes(30) - Duration::microseconds(1);
    assert!(sim.run(Tick).is_empty());
    sim.now = t0() + Duration::minutes(30);
    let timeout = sim.run(Tick);
    assert_eq!(names(&timeout), ["TimeoutRequested"]);
    assert_eq!(steps(&timeout), ["expire-order"]);
    match &OrderSaga::outbox(&timeout[0])[0].command {
        SagaCommand::Order { command, .. } => {
            assert!(matches!(command, OrderCommand::ExpireOrder(_)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.timer(), None, "requested once");
    assert!(sim.run(Tick).is_empty(), "a second firing does nothing");
}

#[test]
fn a_reservation_that_shows_up_after_its_line_closed_is_released() {
    let mut sim = Sim::started(&[("sku-a", 1), ("sku-b", 1)]);
    sim.rejected("reserve:sku-b", "insufficient stock");
    sim.order(Fact::OrderCancelled {
        reason: CancelReason::StockUnavailable,
    });
    let done = sim.rejected("release:sku-a", "reservation unknown");
    assert_eq!(finished(&done).unwrap().outcome, SagaOutcome::Cancelled);
    // The refused Reserve of sku-b succeeded when redelivered (stock arrived meanwhile).
    let late = sim.reserved("sku-b");
    assert_eq!(steps(&late), ["release-late:sku-b"]);
    match &OrderSaga::outbox(&late[0])[0].command {
        SagaCommand::Stock {
            command: ProductStockCommand::ReleaseReservation(r),
            ..
        } => assert_eq!(r.reservation_id, ORDER),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sim.state().line("sku-b").unwrap().status,
        LineStatus::ReleaseRequested
    );
    let released = sim.stock(
        "sku-b",
        Fact::StockReleased {
            product_id: "sku-b".into(),
            reason: ReleaseReason::Compensation,
        },
    );
    assert_eq!(
        names(&released),
        ["LineReleased"],
        "finished once, not twice"
    );
    assert_eq!(
        sim.state().line("sku-b").unwrap().status,
        LineStatus::Released
    );
}

#[test]
fn facts_of_another_payment_or_line_are_rejected() {
    let mut sim = Sim::started(&[("sku-a", 1)]);
    let source = sim.next_source("ProductStock", "sku-z", "StockReserved");
    given::<OrderSaga>(sim.events.clone())
        .id(ORDER.to_string())
        .when(Observe {
            source,
            fact: Fact::StockReserved {
                product_id: "sku-z".into(),
                reservation_id: ORDER,
            },
        })
        .then_expect_error(OrderSagaError::UnknownLine {
            product_id: "sku-z".into(),
        });
    let source = sim.next_source("Payment", "p", "PaymentCompleted");
    given::<OrderSaga>(sim.events.clone())
        .id(ORDER.to_string())
        .when(Observe {
            source,
            fact: Fact::PaymentCompleted {
                payment_id: Uuid::from_u128(7),
                amount: Money::from_minor(1),
            },
        })
        .then_expect_error(OrderSagaError::PaymentMismatch {
            expected: payment_id_for(ORDER),
            got: Uuid::from_u128(7),
        });
}

/// The saga's invariants under random fact sequences drawn by its workload generator (every
/// event through the journal's codec, replay and snapshots agree, a finished saga stays
/// finished); the proptest seed is printed.
#[test]
fn the_saga_keeps_its_invariants_under_its_workload() {
    evershard_model::testing::check_workload::<OrderSaga>(
        &evershard_model::testing::WorkloadCheck::default(),
    );
}

#[test]
fn a_refused_release_of_a_line_whose_reserve_was_refused_leaves_it_rejected() {
    let mut sim = Sim::started(&[("sku-a", 1), ("sku-b", 1)]);
    sim.reserved("sku-a");
    // The customer cancels while sku-b's Reserve is still in flight: both lines are released.
    let cancelled = sim.order(Fact::OrderCancelled {
        reason: CancelReason::CustomerRequest,
    });
    assert_eq!(steps(&cancelled), ["release:sku-a", "release:sku-b"]);
    // sku-b's Reserve is refused, then its release finds nothing.
    sim.rejected("reserve:sku-b", "insufficient stock");
    sim.rejected("release:sku-b", "reservation unknown");
    assert_eq!(
        sim.state().line("sku-b").unwrap().status,
        LineStatus::Rejected
    );
    let done = sim.stock(
        "sku-a",
        Fact::StockReleased {
            product_id: "sku-a".into(),
            reason: ReleaseReason::Cancelled,
        },
    );
    assert_eq!(
        finished(&done).unwrap().cancel_reason,
        Some(CancelReason::CustomerRequest)
    );
}

/// An order of the most lines the saga takes (every line's stock, the order and the
/// payment: `SOURCES_MAX` sources) still hears a refused command: a rejection report comes
/// from the saga's own stream, which is no new source. Fails when the report counts as one
/// (it was refused with `TooManySources`, and the payment then waited forever).
#[test]
fn a_saga_of_the_most_lines_still_hears_a_refused_command() {
    let products: Vec<String> = (0..evershard_aggregates::order::ORDER_LINES_MAX)
        .map(|i| format!("sku-{i}"))
        .collect();
    let lines: Vec<(&str, i64)> = products.iter().map(|p| (p.as_str(), 1)).collect();
    let mut sim = Sim::started(&lines);
    for product in &products {
        sim.reserved(product);
    }
    sim.payment(Fact::PaymentFailed {
        payment_id: payment_id_for(ORDER),
        attempt: 1,
        blocked: false,
        reason: "declined".into(),
    });
    assert_eq!(sim.state().seen.len(), SOURCES_MAX);
    sim.now = t0() + Duration::milliseconds(PAYMENT_RETRY_DELAY_MS);
    assert_eq!(steps(&sim.run(Tick)), ["request-payment:2", "payment:2"]);
    let refused = sim.rejected("payment:2", "the gateway is down");
    assert!(!refused.is_empty(), "the refusal changed nothing");
}
