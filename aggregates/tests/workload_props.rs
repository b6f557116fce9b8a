//! Every aggregate's invariants under random command sequences drawn by its own workload
//! generator, through `evershard_model::testing::check_workload`: invariants after each event,
//! every event through the journal's encode/decode, nothing changes a finished aggregate,
//! and replay, snapshots and the live state agree. The proptest seed is printed; set
//! `PROPTEST_RNG_SEED` to rerun another one.
//!
//! For one aggregate type this is one line: `check_workload::<Order>(&WorkloadCheck::default())`.

use evershard_aggregates::workloads::visit_all;
use evershard_model::testing::{check_workload, WorkloadCheck};
use evershard_model::{Workload, WorkloadVisitor};

struct Check;

impl WorkloadVisitor for Check {
    fn visit<A: Workload>(&mut self) {
        check_workload::<A>(&WorkloadCheck::default());
    }
}

#[test]
fn every_aggregate_keeps_its_invariants_under_its_workload() {
    visit_all(&mut Check);
}
