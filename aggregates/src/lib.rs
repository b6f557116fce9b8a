//! The seven aggregates of evershard, from `shared/docs/domain.md` and the seed documents.
//!
//! Pure domain logic on `evershard-model`.
//! **Architecture Invariant:** this crate knows nothing of sled, ractor or tokio.

pub mod appointment;
pub mod credit;
pub mod device;
pub mod order;
pub mod payment;
pub mod plant;
pub mod product_stock;
