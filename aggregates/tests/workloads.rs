//! The workload generators (`Workload`) that the demo, the benches and the engine tests use:
//! for every aggregate, seeded runs through pure decide/apply must keep the invariants, accept
//! most commands, and agree with `is_finished` — once an aggregate says it is finished, no
//! sampled command changes it any more (each is rejected or a no-op), and the lifecycle
//! aggregates really get there.

use chrono::{Duration, TimeZone, Utc};
use evershard_aggregates::workloads::visit_all;
use evershard_model::{DecideContext, DemoRng, Workload, WorkloadVisitor};

const SEEDS: u64 = 20;
const COMMANDS_MAX: usize = 300;

/// Returns (accepted, issued, seeds that reached a finished state).
fn exercise<A: Workload>() -> (usize, usize, u64) {
    let mut accepted = 0;
    let mut issued = 0;
    let mut finished_seeds = 0;
    for seed in 0..SEEDS {
        let mut rng = DemoRng::new(seed);
        let id = rng.uuid().to_string();
        let mut now = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
        let mut state = A::State::default();
        for _ in 0..COMMANDS_MAX {
            now += Duration::seconds(rng.range(1, 600));
            let ctx = DecideContext::new(id.clone(), now);
            if A::is_finished(&state) {
                finished_seeds += 1;
                for _ in 0..30 {
                    let command = A::sample_command(&state, &ctx, &mut rng);
                    if let Ok(events) = A::decide(&state, &command, &ctx) {
                        assert!(
                            events.is_empty(),
                            "{}: finished, yet {command:?} produced {events:?}",
                            A::TYPE
                        );
                    }
                }
                break;
            }
            let command = A::sample_command(&state, &ctx, &mut rng);
            issued += 1;
            if let Ok(events) = A::decide(&state, &command, &ctx) {
                accepted += 1;
                state = A::replay(state, &events);
                A::check_invariants(&state).unwrap_or_else(|v| panic!("{}: {v}", A::TYPE));
            }
        }
    }
    (accepted, issued, finished_seeds)
}

fn check<A: Workload>(lifecycle: bool) {
    let (accepted, issued, finished) = exercise::<A>();
    assert!(
        accepted * 10 >= issued * 6,
        "{}: only {accepted} of {issued} accepted",
        A::TYPE
    );
    if lifecycle {
        assert!(
            finished > 0,
            "{}: no seed reached a final state in {COMMANDS_MAX} commands",
            A::TYPE
        );
    } else {
        assert_eq!(finished, 0, "{} has no final state", A::TYPE);
    }
}

/// The aggregates with a final lifecycle state; the others never finish.
const LIFECYCLE_TYPES: [&str; 5] = ["Order", "Payment", "Appointment", "Credit", "Plant"];

struct CheckEach(Vec<&'static str>);

impl WorkloadVisitor for CheckEach {
    fn visit<A: Workload>(&mut self) {
        check::<A>(LIFECYCLE_TYPES.contains(&A::TYPE));
        self.0.push(A::TYPE);
    }
}

#[test]
fn lifecycle_workloads_finish_and_open_ended_ones_never_do() {
    let mut each = CheckEach(Vec::new());
    visit_all(&mut each);
    assert_eq!(each.0.len(), 7, "visited {:?}", each.0);
}
