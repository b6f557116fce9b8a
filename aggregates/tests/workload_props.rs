//! Every aggregate's invariants under random command sequences drawn by its own workload
//! generator, through `evershard_model::testing::check_workload`: invariants after each event,
//! every event through the journal's encode/decode, nothing changes a finished aggregate,
//! and replay, snapshots and the live state agree. The proptest seed is printed; set
//! `PROPTEST_RNG_SEED` to rerun another one.
//!
//! A new aggregate with a `Workload` gets this property test in three lines.

use evershard_aggregates::{
    appointment::Appointment, credit::Credit, device::Device, order::Order, payment::Payment,
    plant::Plant, product_stock::ProductStock,
};
use evershard_model::testing::{check_workload, WorkloadCheck};

#[test]
fn product_stock() {
    check_workload::<ProductStock>(&WorkloadCheck::default());
}

#[test]
fn order() {
    check_workload::<Order>(&WorkloadCheck::default());
}

#[test]
fn payment() {
    check_workload::<Payment>(&WorkloadCheck::default());
}

#[test]
fn appointment() {
    check_workload::<Appointment>(&WorkloadCheck::default());
}

#[test]
fn credit() {
    check_workload::<Credit>(&WorkloadCheck::default());
}

#[test]
fn plant() {
    check_workload::<Plant>(&WorkloadCheck::default());
}

#[test]
fn device() {
    check_workload::<Device>(&WorkloadCheck::default());
}
