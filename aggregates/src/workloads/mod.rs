//! One module per aggregate: its `impl Workload`. Each generator draws a plausible next
//! command from the aggregate's current state, so that most are accepted and a few exercise
//! the rejection paths.

mod appointment;
mod credit;
mod device;
mod order;
mod payment;
mod plant;
mod product_stock;
