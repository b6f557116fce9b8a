//! A tiny aggregate for engine tests: a counter whose every event carries the value it
//! expects to follow, so any lost, duplicated or reordered event shows up in the state.
#![allow(dead_code)]

use evershard_engine::model::{Aggregate, DecideContext, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub struct Counter;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterCommand {
    Add(u64),
    /// Rejected when the counter is below the value.
    RequireAtLeast(u64),
    /// Panics inside `decide`.
    Explode,
    /// Commits an event whose `apply` panics (a bug in `apply`, found after the commit).
    AddUnlucky,
    /// `Add`, but the first `decide` after [`GATE_NEXT_DECIDE`] was set meets the test at
    /// [`DECIDE_GATE`] twice (on entering, then to go on): something can happen between the
    /// state's load and the commit.
    AddGated(u64),
}

/// Arms the gate of the next `AddGated` decide.
pub static GATE_NEXT_DECIDE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
/// Where a gated `decide` and the test meet.
pub static DECIDE_GATE: std::sync::Barrier = std::sync::Barrier::new(2);
/// How many times `decide` ran an `AddGated`.
pub static GATED_DECIDES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `apply` panics on an `Added` of this amount.
pub const UNLUCKY_AMOUNT: u64 = 13;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterEvent {
    /// `before` is the total this event was decided on: replay checks it.
    Added { before: u64, amount: u64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        "Added"
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "test.counters"
    }
    fn payload_json(&self) -> serde_json::Value {
        let CounterEvent::Added { before, amount } = self;
        serde_json::json!({ "before": before, "amount": amount })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterState {
    pub total: u64,
    pub events: u64,
    /// Set if an event's `before` ever disagreed with the folded total.
    pub broken: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("counter is {0}, below the required value")]
    TooLow(u64),
}

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type State = CounterState;
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;

    fn decide(
        state: &CounterState,
        command: &CounterCommand,
        _ctx: &DecideContext,
    ) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Add(0) => Ok(vec![]),
            CounterCommand::Add(n) => Ok(vec![CounterEvent::Added {
                before: state.total,
                amount: *n,
            }]),
            CounterCommand::RequireAtLeast(n) if state.total < *n => {
                Err(CounterError::TooLow(state.total))
            }
            CounterCommand::RequireAtLeast(_) => Ok(vec![]),
            CounterCommand::Explode => panic!("boom (test panic)"),
            CounterCommand::AddGated(n) => {
                GATED_DECIDES.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                if GATE_NEXT_DECIDE.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    DECIDE_GATE.wait();
                    DECIDE_GATE.wait();
                }
                Ok(vec![CounterEvent::Added {
                    before: state.total,
                    amount: *n,
                }])
            }
            CounterCommand::AddUnlucky => Ok(vec![CounterEvent::Added {
                before: state.total,
                amount: UNLUCKY_AMOUNT,
            }]),
        }
    }

    fn apply(state: &mut CounterState, event: &CounterEvent) {
        let CounterEvent::Added { before, amount } = event;
        assert_ne!(
            *amount, UNLUCKY_AMOUNT,
            "apply cannot handle 13 (test panic)"
        );
        if *before != state.total {
            state.broken = true;
        }
        state.total += amount;
        state.events += 1;
    }

    fn check_invariants(state: &CounterState) -> Result<(), String> {
        if state.broken {
            return Err("an event was decided on another total than the one it follows".into());
        }
        Ok(())
    }
}

/// The bytes of every segment of the store's log, in order (`None`: a store on the sled
/// layout, which has no log).
pub fn log_bytes(store: &std::path::Path) -> Option<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(store.join("log"))
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    Some(
        files
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect(),
    )
}

/// How many times `needle` occurs in `haystack`.
pub fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// A data subject's index entry key as the log's frames carry it: `D | length u16 BE |
/// name` (docs/design.md).
pub fn subject_entry_key(subject: &str) -> Vec<u8> {
    let mut key = vec![b'D'];
    key.extend_from_slice(&(subject.len() as u16).to_be_bytes());
    key.extend_from_slice(subject.as_bytes());
    key
}
