//! One module per aggregate: its `impl Workload`. Each generator draws a plausible next
//! command from the aggregate's current state, so that most are accepted and a few exercise
//! the rejection paths.
//!
//! [`visit_all`] is the one list of the seven types: the CLI, the demo and the tests that run
//! something for every type go through it.

mod appointment;
mod credit;
mod device;
mod order;
mod order_saga;
mod payment;
mod plant;
mod product_stock;

use crate::{
    appointment::Appointment, credit::Credit, device::Device, order::Order, payment::Payment,
    plant::Plant, product_stock::ProductStock,
};
use evershard_model::WorkloadVisitor;

/// Runs `visitor` for each of the seven aggregate types, in the order the CLI lists them.
pub fn visit_all(visitor: &mut impl WorkloadVisitor) {
    visitor.visit::<ProductStock>();
    visitor.visit::<Order>();
    visitor.visit::<Payment>();
    visitor.visit::<Appointment>();
    visitor.visit::<Credit>();
    visitor.visit::<Plant>();
    visitor.visit::<Device>();
}
