//! A property test for any aggregate with a [`Workload`], in a few lines:
//!
//! ```ignore
//! #[test]
//! fn order_invariants_hold_under_random_commands() {
//!     check_workload::<Order>(&WorkloadCheck::default());
//! }
//! ```
//!
//! proptest draws a seed and a length per case; the aggregate's own generator
//! ([`Workload::sample_command`]) then draws the commands from the state, with the clock moving
//! forward between them (now and then by hours, past TTLs and windows). Asserted for every case:
//! - after **each** accepted event the invariants hold ([`Aggregate::check_invariants`]), as
//!   the engine checks them;
//! - every event's topic is what `DomainEvent::topic_of` says for its type;
//! - every event survives the journal's path ([`Aggregate::encode_event`] then
//!   [`Aggregate::decode_event`] under its own type and version) and publishes a JSON object;
//! - once [`Workload::is_finished`] says so, no sampled command produces an event;
//! - replaying all accepted events gives the live state, and so does every snapshot (each cut
//!   of the log through the snapshot codec) plus the events after it.
//!
//! The proptest seed is printed before the run and named in a failure, with the case's own
//! seed and length, so a failure reproduces.

use crate::{Aggregate, DecideContext, DemoRng, DomainEvent, Workload};
use chrono::Duration;
use proptest::test_runner::{Config, RngSeed, TestError, TestRunner};

/// Settings of [`check_workload`]. Every limit has its unit in its name.
#[derive(Clone, Debug)]
pub struct WorkloadCheck {
    /// Cases proptest runs.
    pub cases: u32,
    /// Commands one case sends at most.
    pub commands_max: usize,
    /// The proptest seed; `PROPTEST_RNG_SEED` in the environment overrides it.
    pub seed: u64,
}

impl Default for WorkloadCheck {
    /// 32 cases of up to 150 commands, seed 0x5EED.
    fn default() -> Self {
        Self {
            cases: 32,
            commands_max: 150,
            seed: 0x5EED,
        }
    }
}

impl WorkloadCheck {
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = cases;
        self
    }
    pub fn commands_max(mut self, commands_max: usize) -> Self {
        self.commands_max = commands_max.max(1);
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Runs the property test described in the [module docs](self) for `A`. Panics with the seeds
/// of the failing case.
#[track_caller]
pub fn check_workload<A: Workload>(check: &WorkloadCheck) {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(check.seed);
    println!(
        "check_workload::<{}>: proptest seed {seed} (PROPTEST_RNG_SEED), {} cases of up to {} commands",
        A::TYPE,
        check.cases,
        check.commands_max
    );
    let config = Config {
        cases: check.cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = (proptest::num::u64::ANY, 1..=check.commands_max);
    let result = runner.run(&strategy, |(case_seed, commands)| {
        run_case::<A>(case_seed, commands);
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (case_seed, commands))) => panic!(
            "check_workload::<{}> failed (proptest seed {seed}; case seed {case_seed}, \
             {commands} commands): {reason}",
            A::TYPE
        ),
        Err(TestError::Abort(reason)) => {
            panic!(
                "check_workload::<{}> aborted (proptest seed {seed}): {reason}",
                A::TYPE
            )
        }
    }
}

/// One case: `commands` commands drawn by the workload from `case_seed`.
fn run_case<A: Workload>(case_seed: u64, commands: usize) {
    let mut rng = DemoRng::new(case_seed);
    let id = format!("{}-{case_seed:016x}", A::TYPE);
    let mut now = super::fixed_now();
    let mut state = A::State::default();
    let mut log: Vec<A::Event> = Vec::new();
    for _ in 0..commands {
        // Mostly seconds to minutes; now and then hours, past TTLs and duplicate windows.
        now += if rng.chance(5) {
            Duration::hours(rng.range(1, 48))
        } else {
            Duration::seconds(rng.range(1, 600))
        };
        let ctx = DecideContext::new(id.clone(), now);
        let finished = A::is_finished(&state);
        let command = A::sample_command(&state, &ctx, &mut rng);
        let Ok(events) = A::decide(&state, &command, &ctx) else {
            continue; // decide is pure: a rejection leaves nothing to check
        };
        assert!(
            !finished || events.is_empty(),
            "finished, yet {command:?} produced {events:?}"
        );
        for event in events {
            check_stored_form::<A>(&event);
            A::apply(&mut state, &event);
            if let Err(violation) = A::check_invariants(&state) {
                panic!("{event:?} (from {command:?}) breaks an invariant: {violation}");
            }
            log.push(event);
        }
    }
    super::assert_replay_and_snapshots_agree::<A>(&log, &state);
}

fn check_stored_form<A: Aggregate>(event: &A::Event) {
    let stored = A::encode_event(event);
    let loaded = A::decode_event(event.event_type(), event.event_version(), &stored);
    assert_eq!(loaded.as_ref(), Ok(event), "does not load back as stored");
    assert!(
        event.payload_json().is_object(),
        "{} publishes no JSON object",
        event.event_type()
    );
    // Routing by the stored event type alone agrees with the decoded event.
    if let Some(topic) = A::Event::topic_of(event.event_type()) {
        assert_eq!(
            topic,
            event.topic(),
            "topic_of({}) disagrees",
            event.event_type()
        );
    }
    // The codec is deterministic: the same event always gives the same bytes.
    assert_eq!(
        stored,
        A::encode_event(event),
        "encoding is not deterministic"
    );
}
