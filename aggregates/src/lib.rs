//! The seven aggregates of evershard, from `docs/domain.md` and the seed documents.
//!
//! Pure domain logic on `evershard-model`.
//! **Architecture Invariant:** this crate knows nothing of sled, ractor or tokio.

pub mod appointment;
pub mod credit;
pub mod device;
pub mod order;
pub mod order_saga;
pub mod payment;
pub mod plant;
pub mod product_stock;

/// The demo workload generators (`Workload`) of the seven aggregates, for the demo, the
/// benches and the property tests. Behind the `workload` feature: a service that embeds the
/// aggregates does not compile them.
#[cfg(feature = "workload")]
pub mod workloads;
