//! The global invariants of the order / stock / payment flow, checked over a journal.
//!
//! One checker, reused by the crash torture test, the property test and the demo (and
//! read-only: it loads states and histories through `repository`, never writes). Its scope
//! is the orders that have a saga and the products of their lines; run it once the sagas
//! have settled (the clock past every deadline, the runner idle): in flight, a cancelled
//! order may still hold a reservation whose release is on its way.
//!
//! Checked, each failure one line of [`FlowReport::violations`]:
//! - per product: on hand = received + adjusted − committed; reserved = the sum of its open
//!   reservations, each of an order neither cancelled nor fulfilled; on hand, reserved and
//!   available never below zero; every line of a fulfilled order committed on its stock
//!   (one `StockCommitted` of the order's reservation, for the line's quantity: goods handed
//!   over leave the stock);
//! - every confirmed or fulfilled order has exactly one completed payment, equal to its
//!   total; no order is charged twice (at most one completion over all its payments);
//! - every cancelled order got back what was captured (refunds = captures);
//! - no payment attempt the saga did not ask for: the attempts initiated for an order are at
//!   most the attempts its saga requested (a redelivered `InitiatePayment` that took effect
//!   again would start an extra attempt);
//! - every saga whose deadline has passed is finished, and its outcome is the order's
//!   (fulfilled or cancelled);
//! - `Journal::verify` is clean.

use chrono::{DateTime, Utc};
use evershard_aggregates::order::{Order, OrderEvent, OrderStatus, PlacedOrder};
use evershard_aggregates::order_saga::{OrderSaga, OrderSagaEvent, SagaInstance, SagaOutcome};
use evershard_aggregates::payment::{Payment, PaymentEvent, TargetType};
use evershard_aggregates::product_stock::{
    InventoryChangeReason, ProductStock, ProductStockEvent, ProductStockState,
};
use evershard_engine::model::{Aggregate, EventEnvelope, Money};
use evershard_engine::{repository, Journal, LoadError, StorageError, StreamId};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Why the check could not run (the journal could not be read); a broken invariant is not
/// an error but a line of the report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowCheckError {
    #[error("reading the journal: {0}")]
    Storage(#[from] StorageError),
    #[error("loading an aggregate: {0}")]
    Load(#[from] LoadError),
}

/// What the check found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowReport {
    pub sagas: usize,
    pub products: usize,
    /// Finished sagas by outcome: `fulfilled`, `cancelled (stock_unavailable)`, ...
    pub outcomes: BTreeMap<String, usize>,
    /// Finished sagas that undid work (released reservations or refunded a payment).
    pub compensated: usize,
    /// Each finished saga (by order id): its outcome as in `outcomes`, and whether it
    /// compensated — for a report on some of the store's sagas (the demo's run).
    pub finished: BTreeMap<Uuid, (String, bool)>,
    /// Sagas not finished (deadline passed or not).
    pub unfinished: usize,
    /// Order creation → confirmation, in milliseconds of the engine's clock, per confirmed
    /// order (fulfilled ones included).
    pub confirm_latencies_ms: Vec<i64>,
    /// Completed payments and refunds over the saga orders.
    pub captured_total_minor: i64,
    pub refunded_total_minor: i64,
    /// Every broken invariant, one line each.
    pub violations: Vec<String>,
}

impl FlowReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The `p`-th percentile (0..=100) of the confirmation latencies, nearest rank.
    pub fn confirm_latency_percentile_ms(&self, p: u32) -> Option<i64> {
        let mut sorted = self.confirm_latencies_ms.clone();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let rank = (u64::from(p.min(100)) * sorted.len() as u64)
            .div_ceil(100)
            .max(1);
        sorted.get(rank as usize - 1).copied()
    }
}

/// One aggregate instance: its id, its state and its whole history.
type Loaded<A> = (
    String,
    <A as Aggregate>::State,
    Vec<EventEnvelope<<A as Aggregate>::Event>>,
);

fn all_of<A: Aggregate>(journal: &Journal) -> Result<Vec<Loaded<A>>, FlowCheckError> {
    let mut out = Vec::new();
    for entry in journal.streams(Some(A::TYPE)) {
        let (stream, _) = entry?;
        out.push(one_of::<A>(journal, &stream)?);
    }
    Ok(out)
}

fn one_of<A: Aggregate>(journal: &Journal, stream: &StreamId) -> Result<Loaded<A>, FlowCheckError> {
    let loaded = repository::load::<A>(journal, stream, u64::MAX, true)?;
    let events =
        repository::read_events::<A>(journal, stream, 1, u64::MAX).collect::<Result<_, _>>()?;
    Ok((stream.aggregate_id.clone(), loaded.state, events))
}

/// Per order: what its payments captured and refunded, and how many completions.
#[derive(Default)]
struct Money3 {
    attempts: u32,
    completions: u32,
    captured: i64,
    refunded: i64,
}

/// Checks the flow's invariants over `journal` as of `now` (the engine's clock). See the
/// module docs.
pub fn check_order_flow(
    journal: &Journal,
    now: DateTime<Utc>,
) -> Result<FlowReport, FlowCheckError> {
    let mut report = FlowReport::default();
    let sagas = all_of::<OrderSaga>(journal)?;
    report.sagas = sagas.len();
    let mut orders: BTreeMap<Uuid, PlacedOrder> = BTreeMap::new();
    let mut requested_attempts: BTreeMap<Uuid, u32> = BTreeMap::new();
    let mut products = BTreeSet::new();
    for (saga_id, state, history) in &sagas {
        let Some(saga) = &state.saga else {
            report
                .violations
                .push(format!("saga {saga_id} exists but never started"));
            continue;
        };
        let stream = StreamId::new(Order::TYPE, saga_id.clone());
        let (_, order_state, order_events) = one_of::<Order>(journal, &stream)?;
        let Some(order) = order_state.order else {
            report
                .violations
                .push(format!("saga {saga_id} has no order"));
            continue;
        };
        products.extend(order.lines.iter().map(|l| l.product_id.clone()));
        check_saga(&mut report, saga, history, &order, now);
        report
            .confirm_latencies_ms
            .extend(confirm_latency(&order_events));
        let requested = history
            .iter()
            .filter(|e| matches!(e.payload, OrderSagaEvent::PaymentAttemptRequested(_)))
            .count();
        requested_attempts.insert(order.order_id, requested as u32);
        orders.insert(order.order_id, order);
    }
    report.products = products.len();
    check_payments(&mut report, journal, &orders, &requested_attempts)?;
    for product_id in &products {
        let stream = StreamId::new(ProductStock::TYPE, product_id.clone());
        let (_, state, events) = one_of::<ProductStock>(journal, &stream)?;
        check_product(&mut report, product_id, &state, &events, &orders);
    }
    let verify = journal.verify();
    for issue in &verify.issues {
        report.violations.push(format!("verify: {issue:?}"));
    }
    Ok(report)
}

fn check_saga(
    report: &mut FlowReport,
    saga: &SagaInstance,
    history: &[EventEnvelope<OrderSagaEvent>],
    order: &PlacedOrder,
    now: DateTime<Utc>,
) {
    let id = saga.order_id;
    match saga.outcome {
        None => {
            report.unfinished += 1;
            if saga.deadline <= now {
                report.violations.push(format!(
                    "saga {id} is unfinished past its deadline {} (order {}, lines {:?}, payment {:?})",
                    saga.deadline.to_rfc3339(),
                    order.status,
                    saga.lines.iter().map(|l| l.status.to_string()).collect::<Vec<_>>(),
                    saga.payment
                ));
            }
        }
        Some(outcome) => {
            let key = match (outcome, order.cancel_reason) {
                (SagaOutcome::Cancelled, Some(reason)) => format!("cancelled ({reason})"),
                (outcome, _) => outcome.to_string(),
            };
            *report.outcomes.entry(key.clone()).or_default() += 1;
            let compensated = history.iter().rev().find_map(|e| match &e.payload {
                OrderSagaEvent::SagaFinished(f) => Some(f.compensated),
                _ => None,
            });
            if compensated == Some(true) {
                report.compensated += 1;
            }
            report.finished.insert(id, (key, compensated == Some(true)));
            let expected = match order.status {
                OrderStatus::Fulfilled => Some(SagaOutcome::Fulfilled),
                OrderStatus::Cancelled => Some(SagaOutcome::Cancelled),
                _ => None,
            };
            if expected != Some(outcome) {
                report.violations.push(format!(
                    "saga {id} finished {outcome}, but the order is {}",
                    order.status
                ));
            }
        }
    }
}

fn confirm_latency(events: &[EventEnvelope<OrderEvent>]) -> Option<i64> {
    let created = events.iter().find_map(|e| match &e.payload {
        OrderEvent::OrderCreated(c) => Some(c.created_at),
        _ => None,
    })?;
    let confirmed = events.iter().find_map(|e| match &e.payload {
        OrderEvent::OrderConfirmed(c) => Some(c.confirmed_at),
        _ => None,
    })?;
    Some((confirmed - created).num_milliseconds())
}

fn check_payments(
    report: &mut FlowReport,
    journal: &Journal,
    orders: &BTreeMap<Uuid, PlacedOrder>,
    requested_attempts: &BTreeMap<Uuid, u32>,
) -> Result<(), FlowCheckError> {
    let mut per_order: BTreeMap<Uuid, Money3> = BTreeMap::new();
    for (_, _, events) in all_of::<Payment>(journal)? {
        for event in &events {
            let (target_type, target_id, completed, refunded) = match &event.payload {
                PaymentEvent::PaymentInitiated(e) => {
                    if e.target_type == TargetType::Order && orders.contains_key(&e.target_id) {
                        per_order.entry(e.target_id).or_default().attempts += 1;
                    }
                    continue;
                }
                PaymentEvent::PaymentCompleted(e) => {
                    (e.target_type, e.target_id, e.amount.minor(), 0)
                }
                PaymentEvent::PaymentRefunded(e) => {
                    (e.target_type, e.target_id, 0, e.amount.minor())
                }
                _ => continue,
            };
            if target_type != TargetType::Order || !orders.contains_key(&target_id) {
                continue;
            }
            let entry = per_order.entry(target_id).or_default();
            entry.completions += u32::from(completed > 0);
            entry.captured += completed;
            entry.refunded += refunded;
        }
    }
    for (order_id, order) in orders {
        let paid = per_order.remove(order_id).unwrap_or_default();
        report.captured_total_minor += paid.captured;
        report.refunded_total_minor += paid.refunded;
        let requested = requested_attempts.get(order_id).copied().unwrap_or(0);
        if paid.attempts > requested {
            report.violations.push(format!(
                "order {order_id}: {} payment attempts initiated, its saga requested {requested}",
                paid.attempts
            ));
        }
        if paid.completions > 1 {
            report.violations.push(format!(
                "order {order_id} was charged {} times",
                paid.completions
            ));
        }
        match order.status {
            OrderStatus::Confirmed | OrderStatus::Fulfilled => {
                if paid.completions != 1 || paid.captured != order.total_amount.minor() {
                    report.violations.push(format!(
                        "order {order_id} is {} with {} completed payments capturing {} (total {})",
                        order.status,
                        paid.completions,
                        Money::from_minor(paid.captured),
                        order.total_amount
                    ));
                }
                if paid.refunded != 0 {
                    report.violations.push(format!(
                        "order {order_id} is {} but {} was refunded",
                        order.status,
                        Money::from_minor(paid.refunded)
                    ));
                }
            }
            OrderStatus::Cancelled if paid.refunded != paid.captured => {
                report.violations.push(format!(
                    "cancelled order {order_id}: captured {}, refunded {}",
                    Money::from_minor(paid.captured),
                    Money::from_minor(paid.refunded)
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_product(
    report: &mut FlowReport,
    product_id: &str,
    state: &ProductStockState,
    events: &[EventEnvelope<ProductStockEvent>],
    orders: &BTreeMap<Uuid, PlacedOrder>,
) {
    let (mut received, mut adjusted, mut committed) = (0i64, 0i64, 0i64);
    // Committed quantity per reservation id (the saga's reservation id is the order id).
    let mut committed_for: BTreeMap<Uuid, i64> = BTreeMap::new();
    for event in events {
        match &event.payload {
            ProductStockEvent::InventoryUpdated(e) => match e.reason {
                InventoryChangeReason::Received => received += e.quantity_change,
                InventoryChangeReason::Adjusted => adjusted += e.quantity_change,
            },
            ProductStockEvent::StockCommitted(e) => {
                committed += e.quantity;
                *committed_for.entry(e.reservation_id).or_default() += e.quantity;
            }
            _ => {}
        }
    }
    for (order_id, order) in orders {
        let Some(line) = order.line(product_id) else {
            continue;
        };
        let got = committed_for.get(order_id).copied().unwrap_or(0);
        let expected = if order.status == OrderStatus::Fulfilled {
            line.quantity
        } else {
            0
        };
        if got != expected {
            report.violations.push(format!(
                "{product_id}: {} order {order_id} had {got} units committed, its line holds {}",
                order.status, line.quantity
            ));
        }
    }
    if state.on_hand != received + adjusted - committed {
        report.violations.push(format!(
            "{product_id}: on hand {} != received {received} + adjusted {adjusted} - committed {committed}",
            state.on_hand
        ));
    }
    if state.on_hand < 0 || state.reserved < 0 || state.available() < 0 {
        report.violations.push(format!(
            "{product_id}: below zero: on hand {}, reserved {}, available {}",
            state.on_hand,
            state.reserved,
            state.available()
        ));
    }
    let open: i64 = state.reservations.values().map(|r| r.quantity).sum();
    if open != state.reserved {
        report.violations.push(format!(
            "{product_id}: reserved {} != open reservations {open}",
            state.reserved
        ));
    }
    for (reservation_id, reservation) in &state.reservations {
        if let Some(order) = orders.get(&reservation.order_id) {
            if order.status.is_final() {
                report.violations.push(format!(
                    "{product_id}: reservation {reservation_id} of {} order {} is still open",
                    order.status, reservation.order_id
                ));
            }
        }
    }
}
