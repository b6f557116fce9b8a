//! The sagas of evershard on a running engine (docs/saga.md).
//!
//! - [`order`]: the order / stock / payment saga ([`OrderSaga`], an aggregate of
//!   `evershard-aggregates`) wired to an engine: which events it observes, how its outbound
//!   commands are sent, and how a rejection is reported back.
//! - [`invariants`]: the global invariants of the flow, checked over a journal (read only):
//!   used by the crash torture test, the property test and the demo.
//! - [`simulate`]: stand-ins for the payment gateway and the warehouse (demo and tests).
//!
//! **Architecture Invariant:** the saga's decisions live in `OrderSaga::decide` (pure, in
//! `evershard-aggregates`); this crate only connects them to the engine and checks the
//! outcome. It never writes to a journal itself.
//!
//! [`OrderSaga`]: evershard_aggregates::order_saga::OrderSaga

pub mod invariants;
pub mod order;
pub mod simulate;

pub use invariants::{check_order_flow, FlowCheckError, FlowReport};
pub use order::{order_saga_runner, register_order_flow, OrderSagaOptions};
