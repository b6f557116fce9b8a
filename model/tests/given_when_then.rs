//! The given/when/then helper reports a failure at the line of the test that made it, not
//! inside the library: `given`, `when` and every `then_*` are `#[track_caller]`.

use evershard_model::testing::given_no_events;
use evershard_model::{Aggregate, DecideContext, DomainEvent};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

struct Counter;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Added(u32);

impl DomainEvent for Added {
    fn event_type(&self) -> &'static str {
        "Added"
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "test.counter"
    }
    fn payload_json(&self) -> serde_json::Value {
        serde_json::json!({ "n": self.0 })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type State = u32;
    type Command = u32;
    type Event = Added;
    type Error = Never;
    fn decide(_: &u32, command: &u32, _: &DecideContext) -> Result<Vec<Added>, Never> {
        Ok(vec![Added(*command)])
    }
    fn apply(state: &mut u32, event: &Added) {
        *state += event.0;
    }
}

/// The panic hook is process-wide: the tests of this file take turns with it.
static HOOK: Mutex<()> = Mutex::new(());

/// Runs `f`, which must panic, and returns the file the panic names.
fn panic_file(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let _turn = HOOK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let into_hook = seen.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(at) = info.location() {
            *into_hook.lock().unwrap() = Some(format!("{}:{}", at.file(), at.line()));
        }
    }));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(previous);
    assert!(result.is_err(), "expected a panic");
    let seen = seen.lock().unwrap().clone();
    seen.expect("the panic named a location")
}

#[test]
fn a_failed_expectation_points_at_the_test() {
    let at = panic_file(|| {
        given_no_events::<Counter>()
            .when(2u32)
            .then_expect_events([Added(3)]);
    });
    assert!(at.starts_with(file!()), "the panic points into {at}");
}

#[test]
fn an_unexpected_acceptance_points_at_the_test() {
    let at = panic_file(|| {
        given_no_events::<Counter>()
            .when(1u32)
            .then_expect_error(Never);
    });
    assert!(at.starts_with(file!()), "the panic points into {at}");
}
