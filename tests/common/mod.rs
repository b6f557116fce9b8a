//! Helpers the facade's tests share: a fixed start time, a ProductStock reservation whose ids
//! derive from one number, and (`cli`) running the `evershard` binary.

#![allow(dead_code)] // each test binary uses its own part of this module

pub mod cli;

use chrono::{DateTime, Utc};
use evershard::aggregates::product_stock::Reserve;
use uuid::Uuid;

/// The tests' start time: 2027-01-15T08:00:00Z, on whole microseconds.
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("valid time")
}

/// Reservation `n` (id `n`, order `1000 + n`) of `quantity`.
pub fn reserve(n: u128, quantity: i64) -> Reserve {
    Reserve {
        reservation_id: Uuid::from_u128(n),
        order_id: Uuid::from_u128(1000 + n),
        quantity,
    }
}
