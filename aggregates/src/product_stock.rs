//! `ProductStock`: the stock of one product, with per-order reservations that expire.
//!
//! Source: `functional-architecture-ddd.md` section 6.1 (the aggregate, its four events and
//! its rules), 9.1 (idempotency results live 24 hours) and 9.2 (reservations live 30 minutes);
//! `docs/domain.md` "ProductStock" and the order/stock/payment saga. The seeds give
//! event names but no JSON contracts for this aggregate: the payloads below are ours, in the
//! snake_case style of `domain-events-catalog.md`. All events go to topic `business.inventory`.
//!
//! One aggregate instance is one product in one stock location; its aggregate id is the
//! product id (any string, e.g. a SKU or a UUID; put the region in it, `sku-1@eu`, when stock
//! is kept per region). Every payload repeats it as `product_id`.
//!
//! # Commands
//! | command | accepted when | events |
//! |---|---|---|
//! | [`ReceiveStock`] | 0 < quantity <= [`QUANTITY_MAX`], on hand stays <= [`ON_HAND_MAX`] | `InventoryUpdated` (received) |
//! | [`AdjustStock`] | counted on hand >= reserved (a stock count) | `InventoryUpdated` (adjusted) [+ `LowStockAlert`]; none if nothing changes |
//! | [`Reserve`] | 0 < quantity <= available | `StockReserved` [+ `LowStockAlert`]; none for an identical repeat |
//! | [`ConfirmReservation`] | the reservation is open and its deadline is ahead | `StockReservationConfirmed`; none if already confirmed |
//! | [`ReleaseReservation`] | the reservation is open (reason `expired` only once its deadline has passed) | `StockReleased`; none if already released |
//! | [`CommitReservation`] | the reservation is open, confirmed or within its deadline | `StockCommitted`; none if already committed |
//! | [`ExpireReservations`] | always | one `StockReleased` (reason `expired`) per unconfirmed reservation with deadline <= now |
//! | [`SetDemandForecast`] | 0 <= average monthly demand <= [`QUANTITY_MAX`] | `DemandForecastUpdated` [+ `LowStockAlert`]; none if unchanged |
//! | [`SetReservationTtl`] | [`RESERVATION_TTL_MS_MIN`] <= ttl <= [`RESERVATION_TTL_MS_MAX`] | `ReservationTtlSet`; none if unchanged |
//!
//! # Events (topic `business.inventory`, all version "1.0")
//! - `InventoryUpdated` {product_id, quantity_change, reason: received|adjusted, on_hand,
//!   reserved, available, updated_at}: stock arrived or a count corrected it.
//! - `StockReserved` {product_id, reservation_id, order_id, quantity, available, reserved_at,
//!   expires_at}: a reservation was opened; `expires_at` = `reserved_at` + [`RESERVATION_TTL_MS`].
//! - `StockReservationConfirmed` {product_id, reservation_id, order_id, quantity,
//!   confirmed_at}: the order was paid; the reservation no longer expires.
//! - `StockReleased` {product_id, reservation_id, order_id, quantity, reason:
//!   cancelled|expired|payment_failed|compensation, available, released_at}.
//! - `StockCommitted` {product_id, reservation_id, order_id, quantity, on_hand, available,
//!   committed_at}: the order was fulfilled; the goods left the stock (on hand and reserved
//!   both drop by the quantity).
//! - `LowStockAlert` {product_id, available, safety_stock, average_monthly_demand, on_hand,
//!   reserved, detected_at}.
//! - `DemandForecastUpdated` {product_id, average_monthly_demand, safety_stock, updated_at}.
//! - `ReservationTtlSet` {product_id, reservation_ttl_ms, updated_at}: reservations made from
//!   now on live this long (reservations already open keep their deadline).
//!
//! # Timer
//! [`ProductStock`] asks the engine for a durable timer at [`ProductStockState::next_deadline`]
//! (the earliest deadline of an unconfirmed reservation) with [`ExpireReservations`]: a
//! reservation neither confirmed, committed nor released within its TTL is released with
//! reason `expired` at its deadline, also when the deadline passed while the process was down.
//!
//! Quantities are whole units, JSON integers (`i64`).
//!
//! # Invariants ([`ProductStock::check_invariants`])
//! - on hand >= 0 and on hand <= [`ON_HAND_MAX`];
//! - reserved >= 0 and reserved <= on hand, so available = on hand - reserved >= 0;
//! - reserved == the sum of the quantities of the open reservations;
//! - every open reservation has quantity > 0 and a deadline after its reservation time;
//!   there are at most [`OPEN_RESERVATIONS_MAX`] of them;
//! - a reservation id is never both open and closed;
//! - average monthly demand >= 0.
//!
//! # Reservation lifecycle ([`can_transition`])
//! | from \ to | confirmed | released | committed |
//! |---|---|---|---|
//! | pending (just reserved) | yes (before the deadline) | yes (any reason; `expired` only after the deadline) | yes (before the deadline) |
//! | confirmed | - | yes (not `expired`) | yes |
//! | released, committed | final | final | final |
//!
//! # Rules chosen where the documents are silent
//! - **Confirmation.** The saga commits reservations at fulfilment, which can be long after
//!   the 30-minute TTL; domain.md says an expired reservation cancels the order only *before
//!   confirmation*. So the saga confirms each reservation when the order is paid
//!   (`ConfirmReservation`), and a confirmed reservation never expires. A pending reservation
//!   whose deadline has passed is expired in effect even before `ExpireReservations` ran:
//!   it can no longer be confirmed or committed (`ReservationExpired`); it can be released.
//! - **Expiry** happens only through `ExpireReservations` (the engine's durable timer sends it
//!   at [`ProductStockState::next_deadline`], also after a restart), never silently inside
//!   other commands, so every command's events stay predictable.
//! - **Idempotency.** `Reserve` with an open reservation's id and the same order and quantity
//!   is accepted with no events; with another order or quantity it is rejected
//!   (`ReservationConflict`). Closed reservation ids are remembered for
//!   [`CLOSED_RESERVATION_MEMORY_MS`] (24 h, the idempotency-result TTL of seed 9.1), so a
//!   late duplicate `Reserve` cannot resurrect an expired reservation (`ReservationClosed`),
//!   `ReleaseReservation` of an already released reservation (whatever the reason: the first
//!   release's reason stands) and `CommitReservation` of a committed one are accepted with no
//!   events; the opposite outcome is rejected (`ReservationClosed`). After 24 h the id is forgotten (it is pruned from the state as later
//!   events are applied; `decide` also ignores entries older than 24 h).
//! - **Unknown reservation**: release, confirm and commit of an id never reserved (or
//!   forgotten) are rejected with `ReservationNotFound`; a saga compensating may treat that as
//!   "nothing to release".
//! - **Average monthly demand** is configured by `SetDemandForecast` (a forecast from the
//!   demand-planning side, seed 6.1 "прогнозирование спроса"), not derived from commits: it is
//!   explicit, auditable and testable. Safety stock = 10 % of it, rounded **up** (the seed
//!   says "minimum safety stock"): `ceil(average_monthly_demand / 10)`. Zero demand means no
//!   safety stock and no alerts.
//! - **LowStockAlert** is emitted in the same `decide`, after the other events, when those
//!   events take the product from "available >= safety stock" to "available < safety stock":
//!   once per crossing, not on every reservation while already low. Raising the forecast
//!   above the available stock is such a crossing too.
//! - **Stock counts** (`AdjustStock`) may not go below the reserved quantity: the reserved
//!   goods are physically promised; release reservations first.
//! - **Limits**: one command moves at most [`QUANTITY_MAX`] units, on hand stays at most
//!   [`ON_HAND_MAX`], at most [`OPEN_RESERVATIONS_MAX`] reservations are open at once. These
//!   keep every sum far from `i64` overflow.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use evershard_model::{from_variants, Aggregate, DecideContext, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The outbound topic of every ProductStock event.
pub const TOPIC: &str = "business.inventory";
/// How long a reservation lives unless confirmed, committed or released (seed 6.1 and 9.2):
/// the default, which [`SetReservationTtl`] changes per product.
pub const RESERVATION_TTL_MS: i64 = 30 * 60 * 1000;
/// The shortest reservation TTL [`SetReservationTtl`] accepts: one second.
pub const RESERVATION_TTL_MS_MIN: i64 = 1000;
/// The longest reservation TTL [`SetReservationTtl`] accepts: the closed-reservation memory,
/// so that a late duplicate `Reserve` of an expired reservation is still recognised.
pub const RESERVATION_TTL_MS_MAX: i64 = CLOSED_RESERVATION_MEMORY_MS;
/// How long a closed reservation id is remembered for idempotency (seed 9.1: 24 hours).
pub const CLOSED_RESERVATION_MEMORY_MS: i64 = 24 * 60 * 60 * 1000;
/// The largest quantity one command may move or declare.
pub const QUANTITY_MAX: i64 = 1_000_000_000;
/// The largest on-hand quantity one product may hold.
pub const ON_HAND_MAX: i64 = 1_000_000_000_000;
/// The most reservations that may be open at once for one product.
pub const OPEN_RESERVATIONS_MAX: usize = 10_000;
/// Safety stock as a percentage of the average monthly demand (seed 6.1).
pub const SAFETY_STOCK_PERCENT: i64 = 10;

/// The aggregate type.
#[derive(Debug, Clone, Copy)]
pub struct ProductStock;

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Goods arrived: on hand grows by `quantity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveStock {
    pub quantity: i64,
}

/// A stock count: on hand becomes `counted_on_hand`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustStock {
    pub counted_on_hand: i64,
}

/// Reserves `quantity` units for an order, for [`RESERVATION_TTL_MS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    pub reservation_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
}

/// The order was paid: the reservation stops expiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmReservation {
    pub reservation_id: Uuid,
}

/// Gives the reserved units back to the available stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReservation {
    pub reservation_id: Uuid,
    pub reason: ReleaseReason,
}

/// The order was fulfilled: the reserved units leave the stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReservation {
    pub reservation_id: Uuid,
}

/// Releases every unconfirmed reservation whose deadline is <= now, with reason `expired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireReservations;

/// Sets the average monthly demand the safety stock is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDemandForecast {
    pub average_monthly_demand: i64,
}

/// Sets how long this product's new reservations live (default [`RESERVATION_TTL_MS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReservationTtl {
    pub reservation_ttl_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductStockCommand {
    ReceiveStock(ReceiveStock),
    AdjustStock(AdjustStock),
    Reserve(Reserve),
    ConfirmReservation(ConfirmReservation),
    ReleaseReservation(ReleaseReservation),
    CommitReservation(CommitReservation),
    ExpireReservations(ExpireReservations),
    SetDemandForecast(SetDemandForecast),
    SetReservationTtl(SetReservationTtl),
}

from_variants!(ProductStockCommand: ReceiveStock, AdjustStock, Reserve, ConfirmReservation,
    ReleaseReservation, CommitReservation, ExpireReservations, SetDemandForecast,
    SetReservationTtl);

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Why on hand changed in an `InventoryUpdated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryChangeReason {
    /// Goods arrived ([`ReceiveStock`]).
    Received,
    /// A stock count corrected on hand ([`AdjustStock`]).
    Adjusted,
}

/// Why a reservation was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The order was cancelled.
    Cancelled,
    /// The deadline passed before the reservation was confirmed or committed.
    Expired,
    /// The payment failed or was blocked.
    PaymentFailed,
    /// A saga compensation: another line of the order could not be reserved, or the saga
    /// timed out.
    Compensation,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Cancelled => "cancelled",
            ReleaseReason::Expired => "expired",
            ReleaseReason::PaymentFailed => "payment_failed",
            ReleaseReason::Compensation => "compensation",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryUpdated {
    pub product_id: String,
    /// Signed change of on hand.
    pub quantity_change: i64,
    pub reason: InventoryChangeReason,
    /// On hand after the change.
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub product_id: String,
    pub reservation_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
    /// Available after the reservation.
    pub available: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub reserved_at: DateTime<Utc>,
    /// The deadline: `reserved_at` + [`RESERVATION_TTL_MS`].
    #[serde(with = "evershard_model::codec::timestamp")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    pub product_id: String,
    pub reservation_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
    pub reason: ReleaseReason,
    /// Available after the release.
    pub available: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub released_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCommitted {
    pub product_id: String,
    pub reservation_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
    /// On hand after the commit.
    pub on_hand: i64,
    pub available: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub committed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockAlert {
    pub product_id: String,
    pub available: i64,
    pub safety_stock: i64,
    pub average_monthly_demand: i64,
    pub on_hand: i64,
    pub reserved: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub detected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemandForecastUpdated {
    pub product_id: String,
    pub average_monthly_demand: i64,
    pub safety_stock: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReservationConfirmed {
    pub product_id: String,
    pub reservation_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub confirmed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationTtlSet {
    pub product_id: String,
    pub reservation_ttl_ms: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub updated_at: DateTime<Utc>,
}

/// Every ProductStock event. Stored: append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[event(topic = TOPIC, version = "1.0")]
pub enum ProductStockEvent {
    InventoryUpdated(InventoryUpdated),
    StockReserved(StockReserved),
    StockReleased(StockReleased),
    StockCommitted(StockCommitted),
    LowStockAlert(LowStockAlert),
    DemandForecastUpdated(DemandForecastUpdated),
    StockReservationConfirmed(StockReservationConfirmed),
    ReservationTtlSet(ReservationTtlSet),
}

from_variants!(ProductStockEvent: InventoryUpdated, StockReserved, StockReleased, StockCommitted,
    LowStockAlert, DemandForecastUpdated, StockReservationConfirmed, ReservationTtlSet);

impl ProductStockEvent {
    /// The business time the event carries (its `*_at` field).
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            ProductStockEvent::InventoryUpdated(e) => e.updated_at,
            ProductStockEvent::StockReserved(e) => e.reserved_at,
            ProductStockEvent::StockReleased(e) => e.released_at,
            ProductStockEvent::StockCommitted(e) => e.committed_at,
            ProductStockEvent::LowStockAlert(e) => e.detected_at,
            ProductStockEvent::DemandForecastUpdated(e) => e.updated_at,
            ProductStockEvent::StockReservationConfirmed(e) => e.confirmed_at,
            ProductStockEvent::ReservationTtlSet(e) => e.updated_at,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// Where a reservation is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Reserved, not yet confirmed: expires at its deadline.
    Pending,
    /// The order was paid: no longer expires.
    Confirmed,
    /// Given back to the available stock (final).
    Released,
    /// Left the stock with the fulfilled order (final).
    Committed,
}

impl fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReservationStatus::Pending => "pending",
            ReservationStatus::Confirmed => "confirmed",
            ReservationStatus::Released => "released",
            ReservationStatus::Committed => "committed",
        })
    }
}

/// The reservation lifecycle as a transition table (sled style).
// An explicit table reads better than `matches!` with one long or-pattern.
#[allow(clippy::match_like_matches_macro)]
pub fn can_transition(from: ReservationStatus, to: ReservationStatus) -> bool {
    use ReservationStatus::*;
    match (from, to) {
        (Pending, Confirmed) | (Pending, Released) | (Pending, Committed) => true,
        (Confirmed, Released) | (Confirmed, Committed) => true,
        _ => false,
    }
}

/// An open reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub order_id: Uuid,
    pub quantity: i64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub reserved_at: DateTime<Utc>,
    /// The deadline. Kept after confirmation for the record; it no longer applies then.
    #[serde(with = "evershard_model::codec::timestamp")]
    pub expires_at: DateTime<Utc>,
    #[serde(with = "evershard_model::codec::timestamp::option")]
    pub confirmed_at: Option<DateTime<Utc>>,
}

impl Reservation {
    pub fn status(&self) -> ReservationStatus {
        if self.confirmed_at.is_some() {
            ReservationStatus::Confirmed
        } else {
            ReservationStatus::Pending
        }
    }

    /// Unconfirmed and its deadline has passed: expired in effect.
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        self.confirmed_at.is_none() && self.expires_at <= now
    }
}

/// A reservation that was released or committed, remembered for idempotency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedReservation {
    pub order_id: Uuid,
    pub quantity: i64,
    /// `Released` or `Committed`.
    pub status: ReservationStatus,
    pub release_reason: Option<ReleaseReason>,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub closed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductStockState {
    pub on_hand: i64,
    /// Sum of the open reservations' quantities.
    pub reserved: i64,
    /// Units per month, from [`SetDemandForecast`].
    pub average_monthly_demand: i64,
    /// Open (pending or confirmed) reservations by reservation id.
    #[serde(deserialize_with = "map_in_one_build")]
    pub reservations: BTreeMap<String, Reservation>,
    /// Released or committed reservations of the last [`CLOSED_RESERVATION_MEMORY_MS`].
    /// Changed by `apply`: code that inserts here directly (a test building a state by hand)
    /// should not then fold events into the state, whose pruning relies on `closed_floor`.
    #[serde(deserialize_with = "map_in_one_build")]
    pub closed_reservations: BTreeMap<String, ClosedReservation>,
    /// From [`SetReservationTtl`]; `None`: [`RESERVATION_TTL_MS`].
    pub reservation_ttl_ms: Option<i64>,
    /// A lower bound of every `closed_at` in `closed_reservations`, or unknown: what lets
    /// `apply` skip the scan for expired memories on almost every event. Not part of the
    /// state's value: not stored in snapshots, and equal whatever it holds.
    #[serde(skip)]
    closed_floor: ClosedFloor,
}

/// A lower bound of the `closed_at` times of a state's closed reservations (`None`: unknown,
/// as after a snapshot was decoded). Derived data, so every two floors compare equal: two
/// states are equal when their reservations are.
#[derive(Debug, Clone, Copy, Default)]
struct ClosedFloor(Option<DateTime<Utc>>);

impl PartialEq for ClosedFloor {
    fn eq(&self, _: &ClosedFloor) -> bool {
        true
    }
}

impl Eq for ClosedFloor {}

impl ProductStockState {
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }

    /// `ceil(average_monthly_demand * 10 %)`.
    pub fn safety_stock(&self) -> i64 {
        safety_stock_for(self.average_monthly_demand)
    }

    /// Available stock is below the safety stock.
    pub fn is_low(&self) -> bool {
        self.available() < self.safety_stock()
    }

    /// How long a reservation made now lives.
    pub fn reservation_ttl_ms(&self) -> i64 {
        self.reservation_ttl_ms.unwrap_or(RESERVATION_TTL_MS)
    }

    /// The earliest deadline of an unconfirmed reservation: when the engine's timer should
    /// send [`ExpireReservations`].
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.reservations
            .values()
            .filter(|r| r.confirmed_at.is_none())
            .map(|r| r.expires_at)
            .min()
    }

    pub fn reservation(&self, reservation_id: Uuid) -> Option<&Reservation> {
        self.reservations.get(key_str(reservation_id, &mut [0; 36]))
    }

    /// A closed reservation still remembered at `now`.
    fn closed_at(&self, reservation_id: Uuid, now: DateTime<Utc>) -> Option<&ClosedReservation> {
        self.closed_reservations
            .get(key_str(reservation_id, &mut [0; 36]))
            .filter(|c| !memory_expired(c.closed_at, now))
    }

    fn close(&mut self, reservation_id: Uuid, closed: ClosedReservation) {
        // The open reservation's key moves to the closed map: no new key to allocate.
        let removed = self
            .reservations
            .remove_entry(key_str(reservation_id, &mut [0; 36]));
        let id = match removed {
            Some((id, open)) => {
                self.reserved -= open.quantity;
                id
            }
            None => key(reservation_id),
        };
        // The floor stays a lower bound (or stays unknown) with the new time in.
        if let Some(floor) = &mut self.closed_floor.0 {
            *floor = (*floor).min(closed.closed_at);
        }
        self.closed_reservations.insert(id, closed);
    }

    /// Forgets closed reservations older than [`CLOSED_RESERVATION_MEMORY_MS`] at `now`.
    fn forget_closed(&mut self, now: DateTime<Utc>) {
        // `apply` runs this on every event (so recovery and `verify`'s replay do, on every
        // event of a stream): compare each remembered time with one cutoff instead of adding
        // the memory span to each, and rewrite the map only when something expired. The same
        // set is forgotten as by `memory_expired`: `closed + span <= now` is
        // `closed <= now - span`; where `now - span` underflows nothing has expired, and a
        // `closed` whose `closed + span` overflows lies after every cutoff.
        let span = TimeDelta::milliseconds(CLOSED_RESERVATION_MEMORY_MS);
        let Some(cutoff) = now.checked_sub_signed(span) else {
            return;
        };
        // Every remembered time is at or after the floor: nothing to forget, without a scan
        // of the map (which made a replay quadratic in the closed reservations remembered).
        if self.closed_floor.0.is_some_and(|floor| floor > cutoff) {
            return;
        }
        if self
            .closed_reservations
            .values()
            .any(|c| c.closed_at <= cutoff)
        {
            self.closed_reservations.retain(|_, c| c.closed_at > cutoff);
        }
        // The exact floor now (the latest time there is when nothing is remembered).
        let floor = self.closed_reservations.values().map(|c| c.closed_at).min();
        self.closed_floor = ClosedFloor(Some(floor.unwrap_or(DateTime::<Utc>::MAX_UTC)));
    }
}

/// Reads a map as serde reads a `BTreeMap` (the same entries; a stored map, written from a
/// `BTreeMap`, has no equal keys, and of equal keys std's bulk build keeps the last, as
/// `insert` does), but builds it in one pass from the entries instead of inserting them one by one: a
/// snapshot's state holds thousands of reservations, written in key order, and recovery
/// decodes it whole (`BTreeMap::from_iter` sorts, which costs one pass over sorted entries,
/// then builds the tree bottom-up).
fn map_in_one_build<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a map")
        }

        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> Result<Self::Value, M::Error> {
            // The size hint comes from the stored bytes: trust it only so far.
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
            while let Some(entry) = map.next_entry::<String, V>()? {
                entries.push(entry);
            }
            Ok(entries.into_iter().collect())
        }
    }

    deserializer.deserialize_map(Entries(std::marker::PhantomData))
}

fn safety_stock_for(average_monthly_demand: i64) -> i64 {
    // Ceiling division of a non-negative number; demand is bounded by QUANTITY_MAX.
    (average_monthly_demand.max(0) * SAFETY_STOCK_PERCENT + 99) / 100
}

fn memory_expired(closed_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    match closed_at.checked_add_signed(TimeDelta::milliseconds(CLOSED_RESERVATION_MEMORY_MS)) {
        Some(forget_at) => forget_at <= now,
        None => false,
    }
}

fn key(reservation_id: Uuid) -> String {
    // The same text as `to_string` (lower-case, hyphenated), without the `Display`
    // machinery: `apply` makes a key on every reservation and release it folds.
    key_str(reservation_id, &mut [0; 36]).to_owned()
}

/// [`key`] written into `buf`, for a lookup: `apply` looks reservations up on most events,
/// and replay (recovery, `verify`) runs it on every event, so a lookup allocates nothing.
fn key_str(reservation_id: Uuid, buf: &mut [u8; 36]) -> &str {
    reservation_id.hyphenated().encode_lower(buf)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductStockError {
    #[error("quantity must be positive, got {quantity}")]
    InvalidQuantity { quantity: i64 },
    #[error("a reservation TTL must be within {min}..={max} ms, got {reservation_ttl_ms}")]
    InvalidReservationTtl {
        reservation_ttl_ms: i64,
        min: i64,
        max: i64,
    },
    #[error("quantity {quantity} exceeds the limit of {max} units per command")]
    QuantityTooLarge { quantity: i64, max: i64 },
    #[error("on hand would become {on_hand}, above the limit of {max}")]
    StockLimitExceeded { on_hand: i64, max: i64 },
    #[error("a stock count cannot be negative, got {counted}")]
    NegativeCount { counted: i64 },
    #[error("counted on hand {counted} is below the reserved quantity {reserved}: release reservations first")]
    CountBelowReserved { counted: i64, reserved: i64 },
    #[error("insufficient stock: {requested} requested, {available} available")]
    InsufficientStock { requested: i64, available: i64 },
    #[error("{max} reservations are already open")]
    TooManyReservations { max: usize },
    #[error("reservation {reservation_id} already exists with another order or quantity")]
    ReservationConflict { reservation_id: Uuid },
    #[error("reservation {reservation_id} is unknown")]
    ReservationNotFound { reservation_id: Uuid },
    #[error("reservation {reservation_id} is already {status}")]
    ReservationClosed {
        reservation_id: Uuid,
        status: ReservationStatus,
    },
    #[error("reservation {reservation_id} expired at {expired_at}")]
    ReservationExpired {
        reservation_id: Uuid,
        expired_at: DateTime<Utc>,
    },
    #[error("reservation {reservation_id} has not expired (confirmed, or its deadline is ahead)")]
    NotExpired { reservation_id: Uuid },
    #[error("average monthly demand must be between 0 and {max}, got {average_monthly_demand}")]
    InvalidDemand {
        average_monthly_demand: i64,
        max: i64,
    },
    #[error("the clock {now} is out of the representable range for a reservation deadline")]
    ClockOutOfRange { now: DateTime<Utc> },
}

// ---------------------------------------------------------------------------------------------
// The aggregate
// ---------------------------------------------------------------------------------------------

impl Aggregate for ProductStock {
    const TYPE: &'static str = "ProductStock";
    /// 2: the state gained `reservation_ttl_ms`.
    const STATE_SCHEMA_VERSION: u32 = 2;

    type State = ProductStockState;
    type Command = ProductStockCommand;
    type Event = ProductStockEvent;
    type Error = ProductStockError;

    fn decide(
        state: &ProductStockState,
        command: &ProductStockCommand,
        ctx: &DecideContext,
    ) -> Result<Vec<ProductStockEvent>, ProductStockError> {
        let events = match command {
            ProductStockCommand::ReceiveStock(c) => receive(state, c, ctx)?,
            ProductStockCommand::AdjustStock(c) => adjust(state, c, ctx)?,
            ProductStockCommand::Reserve(c) => reserve(state, c, ctx)?,
            ProductStockCommand::ConfirmReservation(c) => confirm(state, c, ctx)?,
            ProductStockCommand::ReleaseReservation(c) => release(state, c, ctx)?,
            ProductStockCommand::CommitReservation(c) => commit(state, c, ctx)?,
            ProductStockCommand::ExpireReservations(_) => expire(state, ctx),
            ProductStockCommand::SetDemandForecast(c) => set_demand(state, c, ctx)?,
            ProductStockCommand::SetReservationTtl(c) => set_ttl(state, c, ctx)?,
        };
        Ok(with_low_stock_alert(state, events, ctx))
    }

    fn apply(state: &mut ProductStockState, event: &ProductStockEvent) {
        match event {
            ProductStockEvent::InventoryUpdated(e) => state.on_hand += e.quantity_change,
            ProductStockEvent::StockReserved(e) => {
                state.reserved += e.quantity;
                state.reservations.insert(
                    key(e.reservation_id),
                    Reservation {
                        order_id: e.order_id,
                        quantity: e.quantity,
                        reserved_at: e.reserved_at,
                        expires_at: e.expires_at,
                        confirmed_at: None,
                    },
                );
                // A re-reservation of a forgotten-by-decide id replaces its old record.
                state
                    .closed_reservations
                    .remove(key_str(e.reservation_id, &mut [0; 36]));
            }
            ProductStockEvent::StockReservationConfirmed(e) => {
                let mut buf = [0; 36];
                if let Some(r) = state
                    .reservations
                    .get_mut(key_str(e.reservation_id, &mut buf))
                {
                    r.confirmed_at = Some(e.confirmed_at);
                }
            }
            ProductStockEvent::StockReleased(e) => state.close(
                e.reservation_id,
                ClosedReservation {
                    order_id: e.order_id,
                    quantity: e.quantity,
                    status: ReservationStatus::Released,
                    release_reason: Some(e.reason),
                    closed_at: e.released_at,
                },
            ),
            ProductStockEvent::StockCommitted(e) => {
                state.on_hand -= e.quantity;
                state.close(
                    e.reservation_id,
                    ClosedReservation {
                        order_id: e.order_id,
                        quantity: e.quantity,
                        status: ReservationStatus::Committed,
                        release_reason: None,
                        closed_at: e.committed_at,
                    },
                );
            }
            ProductStockEvent::LowStockAlert(_) => {}
            ProductStockEvent::DemandForecastUpdated(e) => {
                state.average_monthly_demand = e.average_monthly_demand;
            }
            ProductStockEvent::ReservationTtlSet(e) => {
                state.reservation_ttl_ms = Some(e.reservation_ttl_ms);
            }
        }
        // Housekeeping, not a rule: the idempotency memory only spans 24 hours of event time.
        state.forget_closed(event.occurred_at());
    }

    /// The durable timer: at the earliest deadline of an unconfirmed reservation, expire.
    fn next_timer(state: &ProductStockState) -> Option<(DateTime<Utc>, ProductStockCommand)> {
        Some((state.next_deadline()?, ExpireReservations.into()))
    }

    fn check_invariants(state: &ProductStockState) -> Result<(), String> {
        if state.on_hand < 0 {
            return Err(format!("on hand {} is negative", state.on_hand));
        }
        if state.on_hand > ON_HAND_MAX {
            return Err(format!("on hand {} exceeds {ON_HAND_MAX}", state.on_hand));
        }
        if state.reserved < 0 {
            return Err(format!("reserved {} is negative", state.reserved));
        }
        if state.reserved > state.on_hand {
            return Err(format!(
                "reserved {} exceeds on hand {} (available {})",
                state.reserved,
                state.on_hand,
                state.available()
            ));
        }
        let sum: i64 = state.reservations.values().map(|r| r.quantity).sum();
        if sum != state.reserved {
            return Err(format!(
                "reserved {} differs from the sum {sum} of the open reservations",
                state.reserved
            ));
        }
        if state.reservations.len() > OPEN_RESERVATIONS_MAX {
            let open = state.reservations.len();
            return Err(format!(
                "{open} open reservations exceed {OPEN_RESERVATIONS_MAX}"
            ));
        }
        for (id, r) in &state.reservations {
            if r.quantity <= 0 {
                return Err(format!("reservation {id} has quantity {}", r.quantity));
            }
            if r.expires_at <= r.reserved_at {
                return Err(format!(
                    "reservation {id} has a deadline not after its start"
                ));
            }
            if state.closed_reservations.contains_key(id) {
                return Err(format!("reservation {id} is both open and closed"));
            }
        }
        for (id, c) in &state.closed_reservations {
            let final_status = matches!(
                (c.status, c.release_reason),
                (ReservationStatus::Released, Some(_)) | (ReservationStatus::Committed, None)
            );
            if !final_status {
                return Err(format!("closed reservation {id} has status {}", c.status));
            }
        }
        if state.average_monthly_demand < 0 {
            return Err(format!(
                "average monthly demand {} is negative",
                state.average_monthly_demand
            ));
        }
        Ok(())
    }
}

fn check_quantity(quantity: i64) -> Result<(), ProductStockError> {
    if quantity <= 0 {
        return Err(ProductStockError::InvalidQuantity { quantity });
    }
    if quantity > QUANTITY_MAX {
        return Err(ProductStockError::QuantityTooLarge {
            quantity,
            max: QUANTITY_MAX,
        });
    }
    Ok(())
}

fn receive(
    state: &ProductStockState,
    c: &ReceiveStock,
    ctx: &DecideContext,
) -> Result<Vec<ProductStockEvent>, ProductStockError> {
    check_quantity(c.quantity)?;
    let on_hand = state.on_hand + c.quantity;
    if on_hand > ON_HAND_MAX {
        return Err(ProductStockError::StockLimitExceeded {
            on_hand,
            max: ON_HAND_MAX,
        });
    }
    Ok(vec![inventory_updated(
        state,
        on_hand,
        InventoryChangeReason::Received,
        ctx,
    )])
}

fn adjust(
    state: &ProductStockState,
    c: &AdjustStock,
    ctx: &DecideContext,
) -> Result<Vec<ProductStockEvent>, ProductStockError> {
    let counted = c.counted_on_hand;
    if counted < 0 {
        return Err(ProductStockError::NegativeCount { counted });
    }
    if counted > ON_HAND_MAX {
        return Err(ProductStockError::StockLimitExceeded {
            on_hand: counted,
            max: ON_HAND_MAX,
        });
    }
    if counted < state.reserved {
        return Err(ProductStockError::CountBelowReserved {
            counted,
            reserved: state.reserved,
        });
    }
    if counted == state.on_hand {
        return Ok(vec![]);
    }
    Ok(vec![inventory_updated(
        state,
        counted,
        InventoryChangeReason::Adjusted,
        ctx,
    )])
}

fn inventory_updated(
    state: &ProductStockState,
    on_hand: i64,
    reason: InventoryChangeReason,
    ctx: &DecideContext,
) -> ProductStockEvent {
    InventoryUpdated {
        product_id: ctx.aggregate_id.clone(),
        quantity_change: on_hand - state.on_hand,
        reason,
        on_hand,
        reserved: state.reserved,
        available: on_hand - state.reserved,
        updated_at: ctx.now,
    }
    .into()
}

fn reserve(
    state: &ProductStockState,
    c: &Reserve,
    ctx: &DecideContext,
) -> Result<Vec<ProductStockEvent>, ProductStockError> {
    check_quantity(c.quantity)?;
    let reservation_id = c.reservation_id;
    if let Some(open) = state.reservation(reservation_id) {
        // At-least-once delivery: an identical repeat is a success that changes nothing.
        return if open.order_id == c.order_id && open.quantity == c.quantity {
            Ok(vec![])
        } else {
            Err(ProductStockError::ReservationConflict { reservation_id })
        };
    }
    if let Some(closed) = state.closed_at(reservation_id, ctx.now) {
        return Err(ProductStockError::ReservationClosed {
            reservation_id,
            status: closed.status,
        });
    }
    if state.reservations.len() >= OPEN_RESERVATIONS_MAX {
        return Err(ProductStockError::TooManyReservations {
            max: OPEN_RESERVATIONS_MAX,
        });
    }
    let available = state.available();
    if c.quantity > available {
        return Err(ProductStockError::InsufficientStock {
            requested: c.quantity,
            available,
        });
    }
    let expires_at = ctx
        .now
        .checked_add_signed(TimeDelta::milliseconds(state.reservation_ttl_ms()))
        .ok_or(ProductStockError::ClockOutOfRange { now: ctx.now })?;
    Ok(vec![StockReserved {
        product_id: ctx.aggregate_id.clone(),
        reservation_id,
        order_id: c.order_id,
        quantity: c.quantity,
        available: available - c.quantity,
        reserved_at: ctx.now,
        expires_at,
    }
    .into()])
}

/// The open reservation, or why there is none: `Ok(None)` when it is already closed with
/// status `done` (a repeat of the command that closed it: nothing to do).
fn open_reservation(
    state: &ProductStockState,
    reservation_id: Uuid,
    done: ReservationStatus,
    now: DateTime<Utc>,
) -> Result<Option<&Reservation>, ProductStockError> {
    if let Some(open) = state.reservation(reservation_id) {
        return Ok(Some(open));
    }
    match state.closed_at(reservation_id, now) {
        Some(closed) if closed.status == done => Ok(None),
        Some(closed) => Err(ProductStockError::ReservationClosed {
            reservation_id,
            status: closed.status,
        }),
        None => Err(ProductStockError::ReservationNotFound { reservation_id }),
    }
}

fn confirm(
    state: &ProductStockState,
    c: &ConfirmReservation,
    ctx: &DecideContext,
) -> Result<Vec<ProductStockEvent>, ProductStockError> {
    let reservation_id = c.reservation_id;
    let Some(open) = state.reservation(reservation_id) else {
        return Err(match state.closed_at(reservation_id, ctx.now) {
            Some(closed) => ProductStockError::ReservationClosed {
                reservation_id,
                status: closed.status,
            },
            None => ProductStockError::ReservationNotFound { reservation_id },
        });
    };
    if open.status() == ReservationStatus::Confirmed {
        return Ok(vec![]);
    }
    if open.is_overdue(ctx.now) {
        return Err(ProductStockError::ReservationExpired {
            reservation_id,
            expired_at: open.expires_at,
        });
    }
    debug_assert!(can_transition(open.status(), ReservationStatus::Confirmed));
    Ok(vec![StockReservationConfirmed {
        product_id: ctx.aggregate_id.clone(),
        reservation_id,
        order_id: open.order_id,
        quantity: open.quantity,
        confirmed_at: ctx.now,
    }
    .into()])
}

fn release(
    state: &ProductStockState,
    c: &ReleaseReservation,
    ctx: &DecideContext,
) -> Result<Vec<ProductStockEvent>, ProductStockError> {
    let reservation_id = c.reservation_id;
    let Some(open) = open_reservation(state, reservation_id, ReservationStatus::Released, ctx.now)?
    else {
        return Ok(vec![]);
    };
    if c.reason == ReleaseReason::Expired && !open.is_overdue(ctx.now) {
        return Err(ProductStockError::NotExpired { reservation_id });
    }
    debug_assert!(can_transition(open.status(), ReservationStatus::Released));
    Ok(vec![released(state, reservation_id, open, c.reason, ctx)])
}

fn released(
    state: &ProductStockState,
    reservation_id: Uuid,
    open: &Reservation,
    reason: ReleaseReason,
    ctx: &DecideContext,
) -> ProductStockEvent {
    StockReleased {
        product_id: ctx.aggregate_id.clone(),
        reservation_id,
        order_id: open.order_id,
        quantity: open.quantity,
        reason,
        available: state.available() + open.quantity,
        released_at: ctx.now,
    }
    .into()
}

fn commit(
    state: &ProductStockState,
    c: &CommitReservation,
    ctx: &DecideContext,
) -> Result<Vec<ProductStockEvent>, ProductStockError> {
    let reservation_id = c.reservation_id;
    let Some(open) =
        open_reservation(state, reservation_id, ReservationStatus::Committed, ctx.now)?
    else {
        return Ok(vec![]);
    };
    if open.is_overdue(ctx.now) {
        return Err(ProductStockError::ReservationExpired {
            reservation_id,
            expired_at: open.expires_at,
        });
    }
    debug_assert!(can_transition(open.status(), ReservationStatus::Committed));
    Ok(vec![StockCommitted {
        product_id: ctx.aggregate_id.clone(),
        reservation_id,
        order_id: open.order_id,
        quantity: open.quantity,
        on_hand: state.on_hand - open.quantity,
        available: state.available(),
        committed_at: ctx.now,
    }
    .into()])
}

fn expire(state: &ProductStockState, ctx: &DecideContext) -> Vec<ProductStockEvent> {
    let mut overdue: Vec<(&String, &Reservation)> = state
        .reservations
        .iter()
        .filter(|(_, r)| r.is_overdue(ctx.now))
        .collect();
    // Oldest deadline first; the id breaks ties so the order is deterministic.
    overdue.sort_by(|a, b| (a.1.expires_at, a.0).cmp(&(b.1.expires_at, b.0)));
    let mut events = Vec::with_capacity(overdue.len());
    let mut available = state.available();
    for (id, r) in overdue {
        // Keys are written by `key(uuid)` only, so they always parse back.
        let reservation_id = Uuid::parse_str(id).expect("reservation keys are UUIDs");
        available += r.quantity;
        events.push(
            StockReleased {
                product_id: ctx.aggregate_id.clone(),
                reservation_id,
                order_id: r.order_id,
                quantity: r.quantity,
                reason: ReleaseReason::Expired,
                available,
                released_at: ctx.now,
            }
            .into(),
        );
    }
    events
}

fn set_ttl(
    state: &ProductStockState,
    c: &SetReservationTtl,
    ctx: &DecideContext,
) -> Result<Vec<ProductStockEvent>, ProductStockError> {
    let ttl = c.reservation_ttl_ms;
    if !(RESERVATION_TTL_MS_MIN..=RESERVATION_TTL_MS_MAX).contains(&ttl) {
        return Err(ProductStockError::InvalidReservationTtl {
            reservation_ttl_ms: ttl,
            min: RESERVATION_TTL_MS_MIN,
            max: RESERVATION_TTL_MS_MAX,
        });
    }
    if ttl == state.reservation_ttl_ms() {
        return Ok(vec![]);
    }
    Ok(vec![ReservationTtlSet {
        product_id: ctx.aggregate_id.clone(),
        reservation_ttl_ms: ttl,
        updated_at: ctx.now,
    }
    .into()])
}

fn set_demand(
    state: &ProductStockState,
    c: &SetDemandForecast,
    ctx: &DecideContext,
) -> Result<Vec<ProductStockEvent>, ProductStockError> {
    let demand = c.average_monthly_demand;
    if !(0..=QUANTITY_MAX).contains(&demand) {
        return Err(ProductStockError::InvalidDemand {
            average_monthly_demand: demand,
            max: QUANTITY_MAX,
        });
    }
    if demand == state.average_monthly_demand {
        return Ok(vec![]);
    }
    Ok(vec![DemandForecastUpdated {
        product_id: ctx.aggregate_id.clone(),
        average_monthly_demand: demand,
        safety_stock: safety_stock_for(demand),
        updated_at: ctx.now,
    }
    .into()])
}

/// Appends a `LowStockAlert` when `events` take the product below its safety stock.
fn with_low_stock_alert(
    before: &ProductStockState,
    mut events: Vec<ProductStockEvent>,
    ctx: &DecideContext,
) -> Vec<ProductStockEvent> {
    if events.is_empty() || before.is_low() {
        return events;
    }
    // Without a demand forecast the safety stock is 0, and available stock never goes below
    // 0 (an invariant): nothing can cross. The common case, and it skips cloning a state
    // that may hold thousands of reservations on every command (found by review).
    let forecast_changes = events
        .iter()
        .any(|e| matches!(e, ProductStockEvent::DemandForecastUpdated(_)));
    if before.safety_stock() == 0 && !forecast_changes {
        return events;
    }
    let after = ProductStock::replay(before.clone(), &events);
    if after.is_low() {
        events.push(
            LowStockAlert {
                product_id: ctx.aggregate_id.clone(),
                available: after.available(),
                safety_stock: after.safety_stock(),
                average_monthly_demand: after.average_monthly_demand,
                on_hand: after.on_hand,
                reserved: after.reserved,
                detected_at: ctx.now,
            }
            .into(),
        );
    }
    events
}

#[cfg(test)]
mod forget_tests {
    //! `forget_closed` (one cutoff) forgets exactly the reservations `memory_expired` (the
    //! span added to each) says have expired, at the boundary and at chrono's extremes.
    use super::*;
    use chrono::TimeZone;

    /// The floor that lets `forget_closed` skip its scan never changes what is forgotten:
    /// closes and prunes at times that go back and forth (a clock set back, memories older
    /// than the floor) keep the same map as pruning by `memory_expired` after every step.
    #[test]
    fn the_floor_never_changes_what_is_forgotten() {
        let seed: u64 = 0x5eed_f1001;
        println!("seed {seed:#x}");
        let mut x = seed;
        let mut next = move |n: u64| {
            // xorshift64: a fixed sequence per seed.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let t0 = Utc.timestamp_micros(1_767_225_600_123_456).unwrap();
        let hour = TimeDelta::hours(1);
        let mut state = ProductStockState::default();
        let mut model: BTreeMap<String, ClosedReservation> = BTreeMap::new();
        for step in 0..5_000u64 {
            // Times within three days around t0, so memories expire and stay in turn.
            let at = t0 + hour * (next(72) as i32) - hour * 36;
            let id = Uuid::from_u128(u128::from(next(400)));
            if next(3) > 0 {
                let closed = ClosedReservation {
                    order_id: id,
                    quantity: 1,
                    status: ReservationStatus::Released,
                    release_reason: Some(ReleaseReason::Cancelled),
                    closed_at: at,
                };
                state.close(id, closed.clone());
                model.insert(key(id), closed);
            }
            if next(50) == 0 {
                // A snapshot round trip forgets the floor.
                let bytes = evershard_model::codec::encode_compact(&state);
                state = evershard_model::codec::decode(&bytes).unwrap();
            }
            state.forget_closed(at);
            model.retain(|_, c| !memory_expired(c.closed_at, at));
            assert_eq!(
                state.closed_reservations, model,
                "seed {seed:#x} step {step}"
            );
        }
    }

    #[test]
    fn forget_closed_forgets_exactly_what_memory_expired_says() {
        let span = TimeDelta::milliseconds(CLOSED_RESERVATION_MEMORY_MS);
        let t = Utc.timestamp_micros(1_767_225_600_123_456).unwrap();
        let one = TimeDelta::microseconds(1);
        let times = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MIN_UTC + one,
            t - span - one,
            t - span,
            t - span + one,
            t,
            DateTime::<Utc>::MAX_UTC - span,
            DateTime::<Utc>::MAX_UTC,
        ];
        for now in times
            .iter()
            .copied()
            .chain([DateTime::<Utc>::MIN_UTC + span, DateTime::<Utc>::MAX_UTC])
        {
            let mut state = ProductStockState::default();
            for (i, closed_at) in times.iter().enumerate() {
                state.closed_reservations.insert(
                    format!("{i}"),
                    ClosedReservation {
                        order_id: Uuid::from_u128(i as u128),
                        quantity: 1,
                        status: ReservationStatus::Committed,
                        release_reason: None,
                        closed_at: *closed_at,
                    },
                );
            }
            let mut expect = state.closed_reservations.clone();
            expect.retain(|_, c| !memory_expired(c.closed_at, now));
            state.forget_closed(now);
            assert_eq!(state.closed_reservations, expect, "now {now:?}");
        }
    }

    #[test]
    fn the_lookup_key_is_the_stored_key() {
        for id in [
            Uuid::nil(),
            Uuid::max(),
            Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        ] {
            assert_eq!(key_str(id, &mut [0; 36]), key(id));
        }
    }
}
