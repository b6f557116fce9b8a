//! `Order`: a customer order and its side of the order/stock/payment saga.
//!
//! Source: `functional-architecture-ddd.md` section 5.1 (the aggregate, the idempotency key,
//! the 30-minute reservation TTL, the four events `OrderCreated`, `OrderConfirmed`,
//! `OrderCancelled`, `OrderFulfilled`), 9.1 (Idempotency-Key is a UUID; a saga runs at most
//! 30 minutes), and `docs/domain.md` "Order" and the saga section. The seeds name the
//! events but give no JSON contract for them: the payloads below are ours, in the snake_case
//! style of `domain-events-catalog.md`. All events go to topic `business.orders`.
//!
//! The aggregate id is the order id and must be a UUID (`order_id` in every payload, and the
//! id [`crate::product_stock::Reserve`] takes). Amounts are [`Money`] in the order's single
//! currency: JSON decimal strings (`"12.50"`), integer minor units in the journal.
//!
//! # Commands
//! | command | accepted when | events |
//! |---|---|---|
//! | [`CreateOrder`] | no order yet; 1..=[`ORDER_LINES_MAX`] lines, distinct non-empty products, 0 < quantity <= [`LINE_QUANTITY_MAX`], unit price >= 0 | `OrderCreated`; none for the same key and body again |
//! | [`RecordStockReserved`] | created; the product is a line; quantity matches | `OrderLineReserved` [+ `OrderStockReserved` when every line is reserved]; none if already recorded |
//! | [`RequestPayment`] | stock reserved | `OrderPaymentRequested`; none for the same payment again |
//! | [`RecordPaymentCompleted`] | payment requested, same payment, amount == total | `OrderConfirmed` [+ `OrderReadyForFulfilment` if every line's reservation is confirmed already]; none if already confirmed by it |
//! | [`RecordReservationConfirmed`] | not final; the line is reserved by this reservation | `OrderReservationConfirmed` [+ `OrderReadyForFulfilment` when every line is and the order is confirmed]; none if already recorded |
//! | [`FulfilOrder`] | confirmed, and every line's reservation confirmed by its stock | `OrderFulfilled`; none if already fulfilled |
//! | [`CancelOrder`] | not fulfilled (reasons `reservation_expired`/`timed_out` have their own commands) | `OrderCancelled`; none if already cancelled |
//! | [`RecordReservationExpired`] | not fulfilled; the reservation is (or may be) this line's | `OrderCancelled` (reason `reservation_expired`); none if already cancelled |
//! | [`ExpireOrder`] | an order exists | `OrderCancelled` (reason `timed_out`) if unconfirmed at its `expires_at`; otherwise none |
//! | [`ExpireUnconfirmedReservation`] | an order exists | `OrderCancelled` (reason `reservation_expired`) if unconfirmed [`ORDER_CONFIRMATION_TTL_MS`] after its first line was reserved; otherwise none |
//!
//! # Timer
//! An unconfirmed order asks the engine for a durable timer: once a line is reserved, at the
//! first reservation's time + [`ORDER_CONFIRMATION_TTL_MS`] with
//! [`ExpireUnconfirmedReservation`] (an order not confirmed within 30 minutes of its
//! reservation is cancelled, reason `reservation_expired`: its stock reservation lapses at
//! the same moment); before any line is reserved, at `expires_at` with [`ExpireOrder`]
//! (reason `timed_out`). A confirmed or final order has no timer.
//!
//! # Events (topic `business.orders`, all version "1.0")
//! - `OrderCreated` {order_id, customer_id, idempotency_key, lines: [{product_id, quantity,
//!   unit_price, line_total}], total_amount, currency, created_at, expires_at}.
//! - `OrderLineReserved` {order_id, product_id, reservation_id, quantity, reserved_at}: the
//!   stock of one line is reserved.
//! - `OrderStockReserved` {order_id, reservations: [{product_id, reservation_id, quantity}],
//!   reserved_at}: every line is reserved; the saga requests payment.
//! - `OrderPaymentRequested` {order_id, payment_id, amount, currency, requested_at}.
//! - `OrderConfirmed` {order_id, payment_id, amount, currency, confirmed_at}: paid.
//! - `OrderReservationConfirmed` {order_id, product_id, reservation_id, quantity,
//!   confirmed_at}: the stock of one line confirmed its reservation (it no longer expires).
//! - `OrderReadyForFulfilment` {order_id, reservations: [...], ready_at}: the order is paid
//!   and every line's reservation is confirmed: it can be handed over (`FulfilOrder`). Once
//!   per order, after both `OrderConfirmed` and the last `OrderReservationConfirmed`.
//! - `OrderCancelled` {order_id, reason: customer_request|stock_unavailable|payment_failed|
//!   reservation_expired|timed_out, refund_required, refund_amount?, payment_id?,
//!   reservations_to_release: [{product_id, reservation_id, quantity}], cancelled_at}: the
//!   compensation to run.
//! - `OrderFulfilled` {order_id, total_amount, currency, reservations_to_commit: [...],
//!   fulfilled_at}.
//!
//! # Lifecycle ([`can_transition`])
//! | from \ to | stock_reserved | payment_requested | confirmed | fulfilled | cancelled |
//! |---|---|---|---|---|---|
//! | created | yes | - | - | - | yes |
//! | stock_reserved | - | yes | - | - | yes |
//! | payment_requested | - | - | yes | - | yes |
//! | confirmed | - | - | - | yes | yes (refund required) |
//! | fulfilled, cancelled | final | final | final | final | final |
//!
//! # Invariants ([`Order::check_invariants`])
//! - an order has 1..=[`ORDER_LINES_MAX`] lines with distinct non-empty products, quantity in
//!   1..=[`LINE_QUANTITY_MAX`], unit price >= 0, line total = quantity x unit price, and
//!   total = sum of the line totals;
//! - `expires_at` = `created_at` + [`ORDER_CONFIRMATION_TTL_MS`];
//! - stock_reserved and later (not cancelled): every line is reserved;
//! - payment_requested, confirmed, fulfilled: a payment id; confirmed, fulfilled: paid amount
//!   == total; cancelled <=> a cancel reason; a refund is required exactly when a cancelled
//!   order was paid.
//!
//! # The saga around it (what a process manager sends on each event)
//! | Order event | saga sends |
//! |---|---|
//! | `OrderCreated` | `product_stock::Reserve` per line (reservation id: the order id) |
//! | `StockReserved` on a product | `RecordStockReserved`; `InsufficientStock` -> `CancelOrder` (stock_unavailable) |
//! | `OrderStockReserved` | a new `Payment`, then `RequestPayment` |
//! | `PaymentCompleted` | `RecordPaymentCompleted`; a blocked payment -> `CancelOrder` (payment_failed) |
//! | `OrderConfirmed` | `product_stock::ConfirmReservation` per line (stops their expiry) |
//! | `StockReservationConfirmed` on a product | `RecordReservationConfirmed` |
//! | `OrderFulfilled` | `product_stock::CommitReservation` per `reservations_to_commit` |
//! | `StockReleased` (expired) | `RecordReservationExpired` |
//! | `OrderCancelled` | `ReleaseReservation` per `reservations_to_release` (reason = cancel reason, mapped); a refund of `refund_amount` on `payment_id` when `refund_required` |
//! | timer at `expires_at` | `ExpireOrder` |
//!
//! # Rules chosen where the documents are silent
//! - **Idempotency key.** `CreateOrder`'s key is also the engine's idempotency key
//!   ([`Aggregate::idempotency_key`]): within the engine's retention window (24 h) a repeat
//!   answers the original `OrderCreated` without running `decide`, and the key reused for
//!   another order id or body is refused (`CommandError::IdempotencyConflict`). Beyond
//!   that window this aggregate's own rule below is the second line of defence. The key is
//!   remembered with the order for as long as the order lives (the journal is the result cache; the 24-hour limit of seed 9.1 is a Redis cache
//!   limit we do not need). Same key and same body (customer, currency, lines compared as a
//!   set by product) again: accepted, no events, whatever the status. Same key, other body:
//!   `IdempotencyConflict`. Another key for an existing order: `OrderAlreadyExists`.
//! - **One line per product**: a product appears once per order (`DuplicateProduct`), so a
//!   line is identified by its product and the saga makes one reservation per line on the
//!   `ProductStock` aggregate of that product. The saga may use the order id as reservation
//!   id: it is unique within each product's stock.
//! - **Saga facts are commands** that report what another aggregate did
//!   (`RecordStockReserved`, `RecordPaymentCompleted`, `RecordReservationExpired`); each is
//!   idempotent for an identical repeat and rejects a contradicting one (another reservation
//!   id, another payment id, another amount).
//! - **Timeout.** The order must be confirmed within [`ORDER_CONFIRMATION_TTL_MS`] (30
//!   minutes: the reservation TTL and the seed's maximum saga time). `ExpireOrder` (sent by
//!   the engine's durable timer at `expires_at`) cancels it with reason `timed_out`; before
//!   the deadline or after confirmation it does nothing, so a late or early timer is harmless.
//! - **Cancellation** lists the reservations to release and, when the order was paid
//!   (confirmed), `refund_required` = true with `refund_amount` = the paid amount and the
//!   `payment_id` to refund. A cancel while the payment is only requested does not require a
//!   refund; `payment_id` is still given so the saga can stop that payment, and a payment that
//!   completes on a cancelled order is rejected here (`OrderClosed`) and refunded by the saga.
//! - **Reservation expiry after payment** (the order was confirmed before the saga could
//!   confirm the reservation) cancels the order with a refund: the goods are gone.
//! - **Fulfilment needs the stock secured.** `FulfilOrder` is refused
//!   (`ReservationNotConfirmed`) until every line's reservation is confirmed by its stock
//!   (`RecordReservationConfirmed`; `OrderReadyForFulfilment` says when). A paid order's
//!   reservation can still expire before the saga's `ConfirmReservation` reaches the stock
//!   (a product whose reservation TTL is shorter than the order's 30 minutes); handing such
//!   an order over would ship goods the stock has given back to others, and the saga could
//!   not commit them (found by review, 2026-11-28). The order is then cancelled with a
//!   refund by `RecordReservationExpired`, as above.
//! - `CancelOrder` refuses reasons `reservation_expired` and `timed_out`: those come with
//!   their own checks through `RecordReservationExpired` and `ExpireOrder`.
//! - A reservation recorded on a cancelled or fulfilled order is rejected (`OrderClosed`);
//!   the saga then releases it.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use evershard_model::{from_variants, Aggregate, Currency, DecideContext, DomainEvent, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The outbound topic of every Order event.
pub const TOPIC: &str = "business.orders";
/// How long an order may stay unconfirmed: the reservation TTL and the saga limit, 30 minutes.
pub const ORDER_CONFIRMATION_TTL_MS: i64 = 30 * 60 * 1000;
/// The most lines one order may have.
pub const ORDER_LINES_MAX: usize = 100;
/// The largest quantity of one line.
pub const LINE_QUANTITY_MAX: i64 = 1_000_000;

/// The aggregate type.
#[derive(Debug, Clone, Copy)]
pub struct Order;

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// One requested line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRequest {
    /// The `ProductStock` aggregate id of the product.
    pub product_id: String,
    pub quantity: i64,
    pub unit_price: Money,
}

/// Places the order addressed by the aggregate id (a UUID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrder {
    pub idempotency_key: Uuid,
    pub customer_id: Uuid,
    pub currency: Currency,
    pub lines: Vec<LineRequest>,
}

/// The stock of one line was reserved (`StockReserved` on its product).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordStockReserved {
    pub product_id: String,
    pub reservation_id: Uuid,
    pub quantity: i64,
}

/// The saga starts the payment of a fully reserved order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPayment {
    pub payment_id: Uuid,
}

/// The payment completed (`PaymentCompleted`): confirms the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordPaymentCompleted {
    pub payment_id: Uuid,
    pub amount: Money,
}

/// The goods were handed over: the saga commits the reservations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfilOrder;

/// The stock of one line confirmed its reservation (`StockReservationConfirmed` on its
/// product): the reservation no longer expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordReservationConfirmed {
    pub product_id: String,
    pub reservation_id: Uuid,
}

/// Cancels the order before fulfilment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    pub reason: CancelReason,
}

/// A reservation of this order expired (`StockReleased` with reason `expired`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordReservationExpired {
    pub product_id: String,
    pub reservation_id: Uuid,
}

/// The order's confirmation deadline may have passed: cancels it if so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireOrder;

/// The order's first reservation may be older than [`ORDER_CONFIRMATION_TTL_MS`] while the
/// order is unconfirmed: cancels it with reason `reservation_expired` if so (the timer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireUnconfirmedReservation;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    CreateOrder(CreateOrder),
    RecordStockReserved(RecordStockReserved),
    RequestPayment(RequestPayment),
    RecordPaymentCompleted(RecordPaymentCompleted),
    FulfilOrder(FulfilOrder),
    CancelOrder(CancelOrder),
    RecordReservationExpired(RecordReservationExpired),
    ExpireOrder(ExpireOrder),
    ExpireUnconfirmedReservation(ExpireUnconfirmedReservation),
    RecordReservationConfirmed(RecordReservationConfirmed),
}

from_variants!(OrderCommand: CreateOrder, RecordStockReserved, RequestPayment,
    RecordPaymentCompleted, FulfilOrder, CancelOrder, RecordReservationExpired, ExpireOrder,
    ExpireUnconfirmedReservation, RecordReservationConfirmed);

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The customer (or an operator on their behalf) cancelled.
    CustomerRequest,
    /// A line could not be reserved.
    StockUnavailable,
    /// The payment failed for good (blocked after three attempts, or declined).
    PaymentFailed,
    /// A reservation of the order expired before the order was confirmed.
    ReservationExpired,
    /// The order was not confirmed within [`ORDER_CONFIRMATION_TTL_MS`].
    TimedOut,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::CustomerRequest => "customer_request",
            CancelReason::StockUnavailable => "stock_unavailable",
            CancelReason::PaymentFailed => "payment_failed",
            CancelReason::ReservationExpired => "reservation_expired",
            CancelReason::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line as `OrderCreated` publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineCreated {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price: Money,
    pub line_total: Money,
}

/// A line's reservation, as the saga needs it to release or commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineReservation {
    pub product_id: String,
    pub reservation_id: Uuid,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub idempotency_key: Uuid,
    pub lines: Vec<OrderLineCreated>,
    pub total_amount: Money,
    pub currency: Currency,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub created_at: DateTime<Utc>,
    /// The confirmation deadline: `created_at` + [`ORDER_CONFIRMATION_TTL_MS`].
    #[serde(with = "evershard_model::codec::timestamp")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineReserved {
    pub order_id: Uuid,
    pub product_id: String,
    pub reservation_id: Uuid,
    pub quantity: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub reserved_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStockReserved {
    pub order_id: Uuid,
    pub reservations: Vec<LineReservation>,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub reserved_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaymentRequested {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
    pub currency: Currency,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub confirmed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReservationConfirmed {
    pub order_id: Uuid,
    pub product_id: String,
    pub reservation_id: Uuid,
    pub quantity: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub confirmed_at: DateTime<Utc>,
}

/// The order is paid and every line's reservation is confirmed: it can be handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReadyForFulfilment {
    pub order_id: Uuid,
    pub reservations: Vec<LineReservation>,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub ready_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub reason: CancelReason,
    pub refund_required: bool,
    /// The paid amount to refund; null when no refund is required.
    pub refund_amount: Option<Money>,
    /// The order's payment, if one was requested; null otherwise.
    pub payment_id: Option<Uuid>,
    pub reservations_to_release: Vec<LineReservation>,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub cancelled_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFulfilled {
    pub order_id: Uuid,
    pub total_amount: Money,
    pub currency: Currency,
    pub reservations_to_commit: Vec<LineReservation>,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub fulfilled_at: DateTime<Utc>,
}

/// Every Order event. Stored: append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[event(topic = TOPIC, version = "1.0")]
pub enum OrderEvent {
    OrderCreated(OrderCreated),
    OrderConfirmed(OrderConfirmed),
    OrderCancelled(OrderCancelled),
    OrderFulfilled(OrderFulfilled),
    OrderLineReserved(OrderLineReserved),
    OrderStockReserved(OrderStockReserved),
    OrderPaymentRequested(OrderPaymentRequested),
    OrderReservationConfirmed(OrderReservationConfirmed),
    OrderReadyForFulfilment(OrderReadyForFulfilment),
}

from_variants!(OrderEvent: OrderCreated, OrderConfirmed, OrderCancelled, OrderFulfilled,
    OrderLineReserved, OrderStockReserved, OrderPaymentRequested, OrderReservationConfirmed,
    OrderReadyForFulfilment);

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Created,
    StockReserved,
    PaymentRequested,
    Confirmed,
    Fulfilled,
    Cancelled,
}

impl OrderStatus {
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Fulfilled | OrderStatus::Cancelled)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderStatus::Created => "created",
            OrderStatus::StockReserved => "stock_reserved",
            OrderStatus::PaymentRequested => "payment_requested",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Fulfilled => "fulfilled",
            OrderStatus::Cancelled => "cancelled",
        })
    }
}

/// The order lifecycle as a transition table (sled style).
// An explicit table reads better than `matches!` with one long or-pattern.
#[allow(clippy::match_like_matches_macro)]
pub fn can_transition(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    match (from, to) {
        (Created, StockReserved) | (Created, Cancelled) => true,
        (StockReserved, PaymentRequested) | (StockReserved, Cancelled) => true,
        (PaymentRequested, Confirmed) | (PaymentRequested, Cancelled) => true,
        (Confirmed, Fulfilled) | (Confirmed, Cancelled) => true,
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price: Money,
    pub line_total: Money,
    /// Set once the line's stock is reserved.
    pub reservation_id: Option<Uuid>,
    /// When the line's stock was reserved (`OrderLineReserved`).
    #[serde(with = "evershard_model::codec::timestamp::option")]
    pub reserved_at: Option<DateTime<Utc>>,
    /// Set once the line's stock confirmed the reservation (`OrderReservationConfirmed`).
    pub reservation_confirmed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedOrder {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub idempotency_key: Uuid,
    pub currency: Currency,
    /// In the order they were requested.
    pub lines: Vec<OrderLine>,
    pub total_amount: Money,
    pub status: OrderStatus,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub expires_at: DateTime<Utc>,
    pub payment_id: Option<Uuid>,
    pub paid_amount: Option<Money>,
    pub cancel_reason: Option<CancelReason>,
    pub refund_required: bool,
}

impl PlacedOrder {
    pub fn line(&self, product_id: &str) -> Option<&OrderLine> {
        self.lines.iter().find(|l| l.product_id == product_id)
    }

    fn line_mut(&mut self, product_id: &str) -> Option<&mut OrderLine> {
        self.lines.iter_mut().find(|l| l.product_id == product_id)
    }

    pub fn all_reserved(&self) -> bool {
        self.lines.iter().all(|l| l.reservation_id.is_some())
    }

    /// Every line's reservation is confirmed by its stock (with the order confirmed: it can
    /// be handed over).
    pub fn stock_confirmed(&self) -> bool {
        self.lines.iter().all(|l| l.reservation_confirmed)
    }

    /// The reservations known so far, in line order.
    pub fn reservations(&self) -> Vec<LineReservation> {
        self.lines
            .iter()
            .filter_map(|l| {
                l.reservation_id.map(|reservation_id| LineReservation {
                    product_id: l.product_id.clone(),
                    reservation_id,
                    quantity: l.quantity,
                })
            })
            .collect()
    }

    /// The request this order was created from, with lines sorted by product.
    fn request_body(&self) -> (Uuid, Currency, Vec<(&str, i64, Money)>) {
        let mut lines: Vec<_> = self
            .lines
            .iter()
            .map(|l| (l.product_id.as_str(), l.quantity, l.unit_price))
            .collect();
        lines.sort();
        (self.customer_id, self.currency, lines)
    }
}

/// `order` is `None` until `OrderCreated`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub order: Option<PlacedOrder>,
}

impl OrderState {
    pub fn status(&self) -> Option<OrderStatus> {
        self.order.as_ref().map(|o| o.status)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order id must be a UUID, got {aggregate_id:?}")]
    InvalidOrderId { aggregate_id: String },
    #[error("an order needs at least one line")]
    NoLines,
    #[error("{count} lines exceed the limit of {max}")]
    TooManyLines { count: usize, max: usize },
    #[error("a line has an empty product id")]
    EmptyProductId,
    #[error("product {product_id} appears in more than one line")]
    DuplicateProduct { product_id: String },
    #[error("line {product_id}: quantity must be between 1 and {max}, got {quantity}")]
    InvalidQuantity {
        product_id: String,
        quantity: i64,
        max: i64,
    },
    #[error("line {product_id}: unit price {unit_price} is negative")]
    NegativeUnitPrice {
        product_id: String,
        unit_price: Money,
    },
    #[error("the order total does not fit in an amount")]
    AmountOverflow,
    #[error("idempotency key {idempotency_key} was used for another request")]
    IdempotencyConflict { idempotency_key: Uuid },
    #[error("order {order_id} already exists (created with another idempotency key)")]
    OrderAlreadyExists { order_id: Uuid },
    #[error("no order was created under this id")]
    OrderNotFound,
    #[error("product {product_id} is not a line of this order")]
    UnknownLine { product_id: String },
    #[error("line {product_id} has {expected} units, the reservation reports {got}")]
    QuantityMismatch {
        product_id: String,
        expected: i64,
        got: i64,
    },
    #[error("line {product_id} is reserved by {recorded}, not {got}")]
    ReservationMismatch {
        product_id: String,
        recorded: Uuid,
        got: Uuid,
    },
    #[error("the order's payment is {recorded}, not {got}")]
    PaymentMismatch { recorded: Uuid, got: Uuid },
    #[error("the payment of {paid} does not match the order total {total}")]
    PaymentAmountMismatch { total: Money, paid: Money },
    #[error("an order that is {from} cannot become {to}")]
    InvalidTransition { from: OrderStatus, to: OrderStatus },
    #[error("the order is already {status}")]
    OrderClosed { status: OrderStatus },
    #[error("cancel reason {reason} is only given by its own command")]
    CancelReasonNotAllowed { reason: CancelReason },
    #[error("line {product_id} has no reservation yet")]
    LineNotReserved { product_id: String },
    #[error(
        "line {product_id}'s reservation is not confirmed by its stock yet: the order cannot be handed over"
    )]
    ReservationNotConfirmed { product_id: String },
    #[error("the clock {now} is out of the representable range for a deadline")]
    ClockOutOfRange { now: DateTime<Utc> },
}

// ---------------------------------------------------------------------------------------------
// The aggregate
// ---------------------------------------------------------------------------------------------

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    /// 2: order lines gained `reserved_at`; 3: `reservation_confirmed`.
    const STATE_SCHEMA_VERSION: u32 = 3;

    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(
        state: &OrderState,
        command: &OrderCommand,
        ctx: &DecideContext,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        if let OrderCommand::CreateOrder(c) = command {
            return create(state, c, ctx);
        }
        let order = state.order.as_ref().ok_or(OrderError::OrderNotFound)?;
        match command {
            OrderCommand::CreateOrder(_) => unreachable!("handled above"),
            OrderCommand::RecordStockReserved(c) => record_stock_reserved(order, c, ctx),
            OrderCommand::RequestPayment(c) => request_payment(order, c, ctx),
            OrderCommand::RecordPaymentCompleted(c) => record_payment(order, c, ctx),
            OrderCommand::FulfilOrder(_) => fulfil(order, ctx),
            OrderCommand::CancelOrder(c) => {
                if matches!(
                    c.reason,
                    CancelReason::ReservationExpired | CancelReason::TimedOut
                ) {
                    return Err(OrderError::CancelReasonNotAllowed { reason: c.reason });
                }
                cancel(order, c.reason, ctx)
            }
            OrderCommand::RecordReservationExpired(c) => reservation_expired(order, c, ctx),
            OrderCommand::ExpireOrder(_) => expire(order, ctx),
            OrderCommand::ExpireUnconfirmedReservation(_) => expire_reservation(order, ctx),
            OrderCommand::RecordReservationConfirmed(c) => reservation_confirmed(order, c, ctx),
        }
    }

    fn apply(state: &mut OrderState, event: &OrderEvent) {
        if let OrderEvent::OrderCreated(e) = event {
            state.order = Some(PlacedOrder {
                order_id: e.order_id,
                customer_id: e.customer_id,
                idempotency_key: e.idempotency_key,
                currency: e.currency,
                lines: e
                    .lines
                    .iter()
                    .map(|l| OrderLine {
                        product_id: l.product_id.clone(),
                        quantity: l.quantity,
                        unit_price: l.unit_price,
                        line_total: l.line_total,
                        reservation_id: None,
                        reserved_at: None,
                        reservation_confirmed: false,
                    })
                    .collect(),
                total_amount: e.total_amount,
                status: OrderStatus::Created,
                created_at: e.created_at,
                expires_at: e.expires_at,
                payment_id: None,
                paid_amount: None,
                cancel_reason: None,
                refund_required: false,
            });
            return;
        }
        // Every other event follows `OrderCreated` in a well-formed stream.
        let Some(order) = state.order.as_mut() else {
            return;
        };
        match event {
            OrderEvent::OrderCreated(_) => {}
            OrderEvent::OrderLineReserved(e) => {
                if let Some(line) = order.line_mut(&e.product_id) {
                    line.reservation_id = Some(e.reservation_id);
                    line.reserved_at = Some(e.reserved_at);
                }
            }
            OrderEvent::OrderStockReserved(_) => order.status = OrderStatus::StockReserved,
            OrderEvent::OrderPaymentRequested(e) => {
                order.payment_id = Some(e.payment_id);
                order.status = OrderStatus::PaymentRequested;
            }
            OrderEvent::OrderConfirmed(e) => {
                order.paid_amount = Some(e.amount);
                order.status = OrderStatus::Confirmed;
            }
            OrderEvent::OrderCancelled(e) => {
                order.cancel_reason = Some(e.reason);
                order.refund_required = e.refund_required;
                order.status = OrderStatus::Cancelled;
            }
            OrderEvent::OrderFulfilled(_) => order.status = OrderStatus::Fulfilled,
            OrderEvent::OrderReservationConfirmed(e) => {
                if let Some(line) = order.line_mut(&e.product_id) {
                    line.reservation_confirmed = true;
                }
            }
            // A summary: its lines were confirmed one by one.
            OrderEvent::OrderReadyForFulfilment(_) => {}
        }
    }

    fn next_timer(state: &OrderState) -> Option<(DateTime<Utc>, OrderCommand)> {
        next_timer(state)
    }

    /// `CreateOrder` carries its idempotency key: the engine's durable idempotency records
    /// answer a repeat within their retention window with the original `OrderCreated`; the
    /// order's own check (same key and body: no events; other body: `IdempotencyConflict`)
    /// stays as the second line of defence for the order's whole life.
    fn idempotency_key(command: &OrderCommand) -> Option<Uuid> {
        match command {
            OrderCommand::CreateOrder(c) => Some(c.idempotency_key),
            _ => None,
        }
    }

    fn check_invariants(state: &OrderState) -> Result<(), String> {
        let Some(order) = &state.order else {
            return Ok(());
        };
        if order.lines.is_empty() || order.lines.len() > ORDER_LINES_MAX {
            return Err(format!(
                "{} lines, expected 1..={ORDER_LINES_MAX}",
                order.lines.len()
            ));
        }
        let mut products = BTreeSet::new();
        let mut total = Some(Money::ZERO);
        for line in &order.lines {
            let p = &line.product_id;
            if p.is_empty() || !products.insert(p.as_str()) {
                return Err(format!("product id {p:?} is empty or repeated"));
            }
            if !(1..=LINE_QUANTITY_MAX).contains(&line.quantity) {
                return Err(format!("line {p}: quantity {} out of range", line.quantity));
            }
            if line.unit_price.is_negative() {
                return Err(format!("line {p}: negative unit price {}", line.unit_price));
            }
            if line.reservation_confirmed && line.reservation_id.is_none() {
                return Err(format!(
                    "line {p}: a confirmed reservation that was never made"
                ));
            }
            if line.unit_price.checked_mul(line.quantity) != Some(line.line_total) {
                let line_total = line.line_total;
                return Err(format!(
                    "line {p}: line total {line_total} is not quantity x price"
                ));
            }
            total = total.and_then(|t| t.checked_add(line.line_total));
        }
        if total != Some(order.total_amount) {
            return Err(format!(
                "total {} is not the sum of the lines",
                order.total_amount
            ));
        }
        if order
            .created_at
            .checked_add_signed(TimeDelta::milliseconds(ORDER_CONFIRMATION_TTL_MS))
            != Some(order.expires_at)
        {
            return Err("expires_at is not created_at + the confirmation TTL".into());
        }
        let status = order.status;
        use OrderStatus::*;
        // (Not "created => a line is unreserved": the invariants hold after every single
        // event, and the last `OrderLineReserved` precedes its `OrderStockReserved`.)
        if matches!(
            status,
            StockReserved | PaymentRequested | Confirmed | Fulfilled
        ) && !order.all_reserved()
        {
            return Err(format!("{status}, but a line is not reserved"));
        }
        if matches!(status, PaymentRequested | Confirmed | Fulfilled) && order.payment_id.is_none()
        {
            return Err(format!("{status} without a payment id"));
        }
        if matches!(status, Confirmed | Fulfilled) && order.paid_amount != Some(order.total_amount)
        {
            return Err(format!("{status}, but the paid amount is not the total"));
        }
        if (status == Cancelled) != order.cancel_reason.is_some() {
            return Err(format!(
                "{status} with cancel reason {:?}",
                order.cancel_reason
            ));
        }
        // A paid order that is cancelled owes a refund; nothing else does.
        let owes_refund = status == Cancelled && order.paid_amount.is_some();
        if order.refund_required != owes_refund {
            let paid = order.paid_amount;
            let required = order.refund_required;
            return Err(format!(
                "{status}, paid {paid:?}, but refund required is {required}"
            ));
        }
        Ok(())
    }
}

fn create(
    state: &OrderState,
    c: &CreateOrder,
    ctx: &DecideContext,
) -> Result<Vec<OrderEvent>, OrderError> {
    if let Some(order) = &state.order {
        if order.idempotency_key != c.idempotency_key {
            return Err(OrderError::OrderAlreadyExists {
                order_id: order.order_id,
            });
        }
        let mut lines: Vec<_> = c
            .lines
            .iter()
            .map(|l| (l.product_id.as_str(), l.quantity, l.unit_price))
            .collect();
        lines.sort();
        return if order.request_body() == (c.customer_id, c.currency, lines) {
            Ok(vec![])
        } else {
            Err(OrderError::IdempotencyConflict {
                idempotency_key: c.idempotency_key,
            })
        };
    }
    let order_id = Uuid::parse_str(&ctx.aggregate_id).map_err(|_| OrderError::InvalidOrderId {
        aggregate_id: ctx.aggregate_id.clone(),
    })?;
    if c.lines.is_empty() {
        return Err(OrderError::NoLines);
    }
    if c.lines.len() > ORDER_LINES_MAX {
        return Err(OrderError::TooManyLines {
            count: c.lines.len(),
            max: ORDER_LINES_MAX,
        });
    }
    let mut products = BTreeSet::new();
    let mut lines = Vec::with_capacity(c.lines.len());
    let mut total = Money::ZERO;
    for line in &c.lines {
        let product_id = line.product_id.clone();
        if product_id.is_empty() {
            return Err(OrderError::EmptyProductId);
        }
        if !products.insert(line.product_id.as_str()) {
            return Err(OrderError::DuplicateProduct { product_id });
        }
        if !(1..=LINE_QUANTITY_MAX).contains(&line.quantity) {
            return Err(OrderError::InvalidQuantity {
                product_id,
                quantity: line.quantity,
                max: LINE_QUANTITY_MAX,
            });
        }
        if line.unit_price.is_negative() {
            return Err(OrderError::NegativeUnitPrice {
                product_id,
                unit_price: line.unit_price,
            });
        }
        let line_total = line
            .unit_price
            .checked_mul(line.quantity)
            .ok_or(OrderError::AmountOverflow)?;
        total = total
            .checked_add(line_total)
            .ok_or(OrderError::AmountOverflow)?;
        lines.push(OrderLineCreated {
            product_id,
            quantity: line.quantity,
            unit_price: line.unit_price,
            line_total,
        });
    }
    let expires_at = ctx
        .now
        .checked_add_signed(TimeDelta::milliseconds(ORDER_CONFIRMATION_TTL_MS))
        .ok_or(OrderError::ClockOutOfRange { now: ctx.now })?;
    Ok(vec![OrderCreated {
        order_id,
        customer_id: c.customer_id,
        idempotency_key: c.idempotency_key,
        lines,
        total_amount: total,
        currency: c.currency,
        created_at: ctx.now,
        expires_at,
    }
    .into()])
}

/// Rejects a transition the table does not allow: `OrderClosed` from a final status.
fn transition(order: &PlacedOrder, to: OrderStatus) -> Result<(), OrderError> {
    if can_transition(order.status, to) {
        Ok(())
    } else if order.status.is_final() {
        Err(OrderError::OrderClosed {
            status: order.status,
        })
    } else {
        Err(OrderError::InvalidTransition {
            from: order.status,
            to,
        })
    }
}

fn record_stock_reserved(
    order: &PlacedOrder,
    c: &RecordStockReserved,
    ctx: &DecideContext,
) -> Result<Vec<OrderEvent>, OrderError> {
    let line = order
        .line(&c.product_id)
        .ok_or_else(|| OrderError::UnknownLine {
            product_id: c.product_id.clone(),
        })?;
    if line.quantity != c.quantity {
        return Err(OrderError::QuantityMismatch {
            product_id: c.product_id.clone(),
            expected: line.quantity,
            got: c.quantity,
        });
    }
    if let Some(recorded) = line.reservation_id {
        return if recorded == c.reservation_id {
            Ok(vec![])
        } else {
            Err(OrderError::ReservationMismatch {
                product_id: c.product_id.clone(),
                recorded,
                got: c.reservation_id,
            })
        };
    }
    if order.status != OrderStatus::Created {
        // A line is unreserved only while created; a final order takes no more reservations.
        return Err(OrderError::OrderClosed {
            status: order.status,
        });
    }
    let mut events: Vec<OrderEvent> = vec![OrderLineReserved {
        order_id: order.order_id,
        product_id: c.product_id.clone(),
        reservation_id: c.reservation_id,
        quantity: c.quantity,
        reserved_at: ctx.now,
    }
    .into()];
    let unreserved = order
        .lines
        .iter()
        .filter(|l| l.reservation_id.is_none())
        .count();
    if unreserved == 1 {
        debug_assert!(can_transition(order.status, OrderStatus::StockReserved));
        let mut reservations = order.reservations();
        reservations.push(LineReservation {
            product_id: c.product_id.clone(),
            reservation_id: c.reservation_id,
            quantity: c.quantity,
        });
        // In line order, as `reservations()` gives them.
        reservations.sort_by_key(|r| {
            order
                .lines
                .iter()
                .position(|l| l.product_id == r.product_id)
        });
        events.push(
            OrderStockReserved {
                order_id: order.order_id,
                reservations,
                reserved_at: ctx.now,
            }
            .into(),
        );
    }
    Ok(events)
}

fn request_payment(
    order: &PlacedOrder,
    c: &RequestPayment,
    ctx: &DecideContext,
) -> Result<Vec<OrderEvent>, OrderError> {
    if let Some(recorded) = order.payment_id {
        return if recorded == c.payment_id && order.status != OrderStatus::Cancelled {
            Ok(vec![])
        } else if order.status.is_final() {
            Err(OrderError::OrderClosed {
                status: order.status,
            })
        } else {
            Err(OrderError::PaymentMismatch {
                recorded,
                got: c.payment_id,
            })
        };
    }
    transition(order, OrderStatus::PaymentRequested)?;
    Ok(vec![OrderPaymentRequested {
        order_id: order.order_id,
        payment_id: c.payment_id,
        amount: order.total_amount,
        currency: order.currency,
        requested_at: ctx.now,
    }
    .into()])
}

fn record_payment(
    order: &PlacedOrder,
    c: &RecordPaymentCompleted,
    ctx: &DecideContext,
) -> Result<Vec<OrderEvent>, OrderError> {
    if let (Some(recorded), Some(paid)) = (order.payment_id, order.paid_amount) {
        // Already confirmed: an identical report is a repeat, anything else contradicts it.
        return if recorded != c.payment_id {
            Err(OrderError::PaymentMismatch {
                recorded,
                got: c.payment_id,
            })
        } else if paid != c.amount {
            Err(OrderError::PaymentAmountMismatch {
                total: order.total_amount,
                paid: c.amount,
            })
        } else {
            Ok(vec![])
        };
    }
    transition(order, OrderStatus::Confirmed)?;
    let recorded = order.payment_id.expect("payment requested: invariant");
    if recorded != c.payment_id {
        return Err(OrderError::PaymentMismatch {
            recorded,
            got: c.payment_id,
        });
    }
    if c.amount != order.total_amount {
        return Err(OrderError::PaymentAmountMismatch {
            total: order.total_amount,
            paid: c.amount,
        });
    }
    let mut events = vec![OrderConfirmed {
        order_id: order.order_id,
        payment_id: c.payment_id,
        amount: c.amount,
        currency: order.currency,
        confirmed_at: ctx.now,
    }
    .into()];
    if order.stock_confirmed() {
        events.push(ready_for_fulfilment(order, ctx));
    }
    Ok(events)
}

fn fulfil(order: &PlacedOrder, ctx: &DecideContext) -> Result<Vec<OrderEvent>, OrderError> {
    if order.status == OrderStatus::Fulfilled {
        return Ok(vec![]);
    }
    transition(order, OrderStatus::Fulfilled)?;
    if let Some(line) = order.lines.iter().find(|l| !l.reservation_confirmed) {
        return Err(OrderError::ReservationNotConfirmed {
            product_id: line.product_id.clone(),
        });
    }
    Ok(vec![OrderFulfilled {
        order_id: order.order_id,
        total_amount: order.total_amount,
        currency: order.currency,
        reservations_to_commit: order.reservations(),
        fulfilled_at: ctx.now,
    }
    .into()])
}

fn cancel(
    order: &PlacedOrder,
    reason: CancelReason,
    ctx: &DecideContext,
) -> Result<Vec<OrderEvent>, OrderError> {
    if order.status == OrderStatus::Cancelled {
        return Ok(vec![]);
    }
    transition(order, OrderStatus::Cancelled)?;
    let refund_amount = order
        .paid_amount
        .filter(|_| order.status == OrderStatus::Confirmed);
    Ok(vec![OrderCancelled {
        order_id: order.order_id,
        reason,
        refund_required: refund_amount.is_some(),
        refund_amount,
        payment_id: order.payment_id,
        reservations_to_release: order.reservations(),
        cancelled_at: ctx.now,
    }
    .into()])
}

fn reservation_expired(
    order: &PlacedOrder,
    c: &RecordReservationExpired,
    ctx: &DecideContext,
) -> Result<Vec<OrderEvent>, OrderError> {
    let line = order
        .line(&c.product_id)
        .ok_or_else(|| OrderError::UnknownLine {
            product_id: c.product_id.clone(),
        })?;
    if let Some(recorded) = line.reservation_id {
        if recorded != c.reservation_id {
            // A stale message about a reservation this order no longer holds.
            return Err(OrderError::ReservationMismatch {
                product_id: c.product_id.clone(),
                recorded,
                got: c.reservation_id,
            });
        }
    }
    cancel(order, CancelReason::ReservationExpired, ctx)
}

fn reservation_confirmed(
    order: &PlacedOrder,
    c: &RecordReservationConfirmed,
    ctx: &DecideContext,
) -> Result<Vec<OrderEvent>, OrderError> {
    let line = order
        .line(&c.product_id)
        .ok_or_else(|| OrderError::UnknownLine {
            product_id: c.product_id.clone(),
        })?;
    let recorded = line
        .reservation_id
        .ok_or_else(|| OrderError::LineNotReserved {
            product_id: c.product_id.clone(),
        })?;
    if recorded != c.reservation_id {
        return Err(OrderError::ReservationMismatch {
            product_id: c.product_id.clone(),
            recorded,
            got: c.reservation_id,
        });
    }
    if line.reservation_confirmed {
        return Ok(vec![]);
    }
    if order.status.is_final() {
        return Err(OrderError::OrderClosed {
            status: order.status,
        });
    }
    let mut events: Vec<OrderEvent> = vec![OrderReservationConfirmed {
        order_id: order.order_id,
        product_id: c.product_id.clone(),
        reservation_id: c.reservation_id,
        quantity: line.quantity,
        confirmed_at: ctx.now,
    }
    .into()];
    let unconfirmed = order
        .lines
        .iter()
        .filter(|l| !l.reservation_confirmed)
        .count();
    if unconfirmed == 1 && order.status == OrderStatus::Confirmed {
        events.push(ready_for_fulfilment(order, ctx));
    }
    Ok(events)
}

/// Paid and every line confirmed by its stock (the caller checked both): every line is
/// reserved, as a line is confirmed only once reserved.
fn ready_for_fulfilment(order: &PlacedOrder, ctx: &DecideContext) -> OrderEvent {
    OrderReadyForFulfilment {
        order_id: order.order_id,
        reservations: order.reservations(),
        ready_at: ctx.now,
    }
    .into()
}

fn is_unconfirmed(order: &PlacedOrder) -> bool {
    matches!(
        order.status,
        OrderStatus::Created | OrderStatus::StockReserved | OrderStatus::PaymentRequested
    )
}

/// When the order's first reservation lapses unconfirmed: its time + the confirmation TTL.
fn reservation_deadline(order: &PlacedOrder) -> Option<DateTime<Utc>> {
    let first = order.lines.iter().filter_map(|l| l.reserved_at).min()?;
    first.checked_add_signed(TimeDelta::milliseconds(ORDER_CONFIRMATION_TTL_MS))
}

/// The order's timer (see the module docs): `None` once confirmed or final.
fn next_timer(state: &OrderState) -> Option<(DateTime<Utc>, OrderCommand)> {
    let order = state.order.as_ref()?;
    if !is_unconfirmed(order) {
        return None;
    }
    match reservation_deadline(order) {
        Some(deadline) => Some((deadline, ExpireUnconfirmedReservation.into())),
        None => Some((order.expires_at, ExpireOrder.into())),
    }
}

fn expire_reservation(
    order: &PlacedOrder,
    ctx: &DecideContext,
) -> Result<Vec<OrderEvent>, OrderError> {
    match reservation_deadline(order) {
        Some(deadline) if is_unconfirmed(order) && deadline <= ctx.now => {
            cancel(order, CancelReason::ReservationExpired, ctx)
        }
        _ => Ok(vec![]),
    }
}

fn expire(order: &PlacedOrder, ctx: &DecideContext) -> Result<Vec<OrderEvent>, OrderError> {
    if is_unconfirmed(order) && order.expires_at <= ctx.now {
        cancel(order, CancelReason::TimedOut, ctx)
    } else {
        Ok(vec![])
    }
}
