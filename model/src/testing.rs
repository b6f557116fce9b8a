//! The given/when/then test helper every aggregate's tests use.
//!
//! ```ignore
//! given::<ProductStock>([InventoryUpdated { .. }.into()])
//!     .when(Reserve { .. })
//!     .then_expect_events([StockReserved { .. }.into()]);
//! ```
//!
//! Every step also asserts [`Aggregate::check_invariants`] on the given state and on the state
//! after the new events, so a test that forgets an invariant still trips over it.
//!
//! Besides: the outbound contract checks ([`assert_contract`], [`assert_exact_contract`]), the
//! round trips every aggregate's tests run ([`assert_json_and_codec_round_trip`],
//! [`assert_stored_event_round_trip`]), the replay/snapshot agreement its property tests assert
//! ([`assert_replay_and_snapshots_agree`], [`assert_snapshot_and_tail_agree`]) and the
//! lifecycle table check ([`assert_transition_table`]); and, with the `proptest` feature,
//! [`check_workload`]: a whole property test of an aggregate from its workload generator.

#[cfg(feature = "proptest")]
mod props;
#[cfg(feature = "proptest")]
pub use props::{check_workload, WorkloadCheck};

use crate::{codec, Aggregate, DecideContext, DomainEvent};
use chrono::{DateTime, TimeZone, Utc};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeSet;
use std::fmt::{Debug, Display};

/// The clock `given` uses unless told otherwise: 2026-01-01T00:00:00Z.
pub fn fixed_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// Starts a scenario from the given past events.
#[track_caller]
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let events: Vec<A::Event> = events.into_iter().collect();
    let state = A::replay(A::State::default(), &events);
    if let Err(violation) = A::check_invariants(&state) {
        panic!("given events already break an invariant: {violation}\nevents: {events:#?}");
    }
    Given {
        state,
        ctx: DecideContext::new("test-aggregate", fixed_now()),
    }
}

/// A scenario with no past events.
#[track_caller]
pub fn given_no_events<A: Aggregate>() -> Given<A> {
    given::<A>([])
}

#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: A::State,
    ctx: DecideContext,
}

impl<A: Aggregate> Given<A> {
    /// Sets the aggregate id the command is addressed to.
    pub fn id(mut self, aggregate_id: impl Into<String>) -> Self {
        self.ctx.aggregate_id = aggregate_id.into();
        self
    }
    /// Sets the clock `decide` sees, at the store's resolution (microseconds), exactly as the
    /// engine would pass it.
    pub fn at(mut self, now: DateTime<Utc>) -> Self {
        self.ctx.now = crate::truncate_to_micros(now);
        self
    }
    /// The state folded from the given events.
    pub fn state(&self) -> &A::State {
        &self.state
    }
    /// Runs `decide` once.
    #[track_caller]
    pub fn when(self, command: impl Into<A::Command>) -> When<A> {
        let command = command.into();
        let result = A::decide(&self.state, &command, &self.ctx);
        When {
            before: self.state,
            command,
            result,
        }
    }
}

#[derive(Debug)]
pub struct When<A: Aggregate> {
    before: A::State,
    command: A::Command,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> When<A> {
    /// Asserts the command was accepted with exactly these events; returns the new state.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A::State {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.result {
            Ok(events) => assert_eq!(
                events, &expected,
                "command {:?} produced other events than expected",
                self.command
            ),
            Err(e) => panic!(
                "command {:?} was rejected: {e:?}; expected {expected:#?}",
                self.command
            ),
        }
        self.after()
    }

    /// Asserts the command was accepted and hands its events to `check`; returns the new state.
    #[track_caller]
    pub fn then_events(self, check: impl FnOnce(&[A::Event])) -> A::State {
        match &self.result {
            Ok(events) => check(events),
            Err(e) => panic!("command {:?} was rejected: {e:?}", self.command),
        }
        self.after()
    }

    /// Asserts the command was rejected with exactly this error.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error) {
        match self.result {
            Ok(events) => panic!(
                "command {:?} was accepted with {events:#?}; expected error {expected:?}",
                self.command
            ),
            Err(e) => assert_eq!(e, expected, "command {:?} rejected otherwise", self.command),
        }
    }

    /// Asserts the command was rejected with an error `check` accepts.
    #[track_caller]
    pub fn then_expect_error_matching(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("command {:?} was accepted with {events:#?}", self.command),
            Err(e) => assert!(
                check(&e),
                "command {:?} rejected with unexpected {e:?}",
                self.command
            ),
        }
    }

    /// The raw outcome, for tests that want to look themselves.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }

    #[track_caller]
    fn after(self) -> A::State {
        let events = self.result.expect("checked accepted");
        let after = A::replay(self.before, &events);
        if let Err(violation) = A::check_invariants(&after) {
            panic!("events {events:#?} break an invariant: {violation}");
        }
        after
    }
}

/// Asserts that `state` satisfies the aggregate's invariants, with a readable message.
#[track_caller]
pub fn assert_invariants<A: Aggregate>(state: &A::State)
where
    A::State: Debug,
{
    if let Err(violation) = A::check_invariants(state) {
        panic!("invariant broken: {violation}\nstate: {state:#?}");
    }
}

/// Checks a JSON payload against a minimal contract written out as `(field path, type)` pairs.
///
/// Paths use dots for nested objects (`"genetics.type"`). Types: `uuid`, `string`,
/// `datetime` (RFC 3339 string), `decimal` (a decimal string, as [`crate::Money`] publishes),
/// `number`, `integer`, `boolean`, `object`, `array`, and `enum:a|b|c` (a string among those).
/// A trailing `?` makes the field nullable; the field must still be present. Fields beyond
/// the contract are allowed: the seeds give minimal contracts.
///
/// Returns every mismatch, so a test can print them all at once.
pub fn contract_violations(payload: &serde_json::Value, contract: &[(&str, &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, ty) in contract {
        let mut node = Some(payload);
        for part in path.split('.') {
            node = node.and_then(|n| n.get(part));
        }
        let (ty, nullable) = match ty.strip_suffix('?') {
            Some(t) => (t, true),
            None => (*ty, false),
        };
        let Some(value) = node else {
            problems.push(format!("{path}: missing"));
            continue;
        };
        if value.is_null() {
            if !nullable {
                problems.push(format!("{path}: null but not nullable"));
            }
            continue;
        }
        let ok = match ty {
            "uuid" => value
                .as_str()
                .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
            "string" => value.is_string(),
            "datetime" => value
                .as_str()
                .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
            "decimal" => value
                .as_str()
                .is_some_and(|s| crate::Money::parse(s).is_ok()),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            other => match other.strip_prefix("enum:") {
                Some(options) => value
                    .as_str()
                    .is_some_and(|s| options.split('|').any(|o| o == s)),
                None => panic!("contract type {other:?} is not known to contract_violations"),
            },
        };
        if !ok {
            problems.push(format!("{path}: expected {ty}, found {value}"));
        }
    }
    problems
}

/// Panics with every contract mismatch of `payload`.
#[track_caller]
pub fn assert_contract(event_type: &str, payload: &serde_json::Value, contract: &[(&str, &str)]) {
    let problems = contract_violations(payload, contract);
    assert!(
        problems.is_empty(),
        "{event_type} payload breaks its contract:\n  {}\npayload: {payload:#}",
        problems.join("\n  ")
    );
}

/// [`assert_contract`], and nothing beyond the contract: the payload's top-level field set
/// equals the contract's top-level field names (each path up to its first dot, so
/// `"metrics.temperature"` names `metrics`). Nested objects are checked only as far as the
/// contract's paths reach; fields inside them beyond the contract are not refused.
///
/// For outbound payloads whose contract is the whole payload, so that nothing undocumented
/// leaks onto the topic.
#[track_caller]
pub fn assert_exact_contract(
    event_type: &str,
    payload: &serde_json::Value,
    contract: &[(&str, &str)],
) {
    assert_contract(event_type, payload, contract);
    let Some(object) = payload.as_object() else {
        panic!("{event_type} payload is not a JSON object: {payload:#}");
    };
    let fields: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = contract
        .iter()
        .map(|(path, _)| path.split_once('.').map_or(*path, |(top, _)| top))
        .collect();
    assert_eq!(
        fields, expected,
        "{event_type} payload's fields are not exactly its contract's\npayload: {payload:#}"
    );
}

/// Asserts that `value` survives both encodings it meets: JSON (serde_json, as commands and
/// states are read and written at the API) and both forms of [`crate::codec`]: format 2
/// ([`codec::encode`], as the journal stores events) and format 1 ([`codec::encode_compact`],
/// as snapshots store states). Each must give back a value equal to `value`.
#[track_caller]
pub fn assert_json_and_codec_round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    round_trip(value, true);
}

/// [`assert_json_and_codec_round_trip`] for a command: JSON and format 2 only. A command is
/// never stored whole (its idempotency record keeps a digest of its format 2 bytes), so it
/// may leave out a field that is `None` (`skip_serializing_if`, which keeps the digest of
/// commands sent before the field existed) where format 1, positional, cannot.
#[track_caller]
pub fn assert_command_round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    round_trip(value, false);
}

#[track_caller]
fn round_trip<T>(value: &T, format_1: bool)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let text = serde_json::to_string(value)
        .unwrap_or_else(|e| panic!("{value:?} does not encode as JSON: {e}"));
    let from_json = serde_json::from_str::<T>(&text)
        .unwrap_or_else(|e| panic!("JSON {text} does not decode: {e}"));
    assert_eq!(
        &from_json, value,
        "JSON round trip changed the value: {text}"
    );
    let mut formats = vec![("format 2", codec::encode(value))];
    if format_1 {
        formats.push(("format 1", codec::encode_compact(value)));
    }
    for (format, bytes) in formats {
        let from_codec = codec::decode::<T>(&bytes)
            .unwrap_or_else(|e| panic!("{value:?} does not survive the codec ({format}): {e}"));
        assert_eq!(
            &from_codec, value,
            "codec {format} round trip changed the value"
        );
    }
}

/// Asserts that an event comes back unchanged from the journal's own path:
/// [`Aggregate::encode_event`], then [`Aggregate::decode_event`] under the event's own
/// `event_type` and `event_version`.
#[track_caller]
pub fn assert_stored_event_round_trip<A: Aggregate>(event: &A::Event) {
    let stored = A::encode_event(event);
    let loaded = A::decode_event(event.event_type(), event.event_version(), &stored);
    assert_eq!(
        loaded.as_ref(),
        Ok(event),
        "{} {} does not load back as stored",
        event.event_type(),
        event.event_version()
    );
}

/// Asserts what a snapshot taken after the first `cut` of `events` promises: the state replayed
/// from the default over `events[..cut]` survives the codec unchanged, and replaying the rest,
/// `events[cut..]`, onto the decoded snapshot gives `live`.
///
/// `events` are all the events accepted so far and `live` the state they were applied to.
#[track_caller]
pub fn assert_snapshot_and_tail_agree<A: Aggregate>(
    events: &[A::Event],
    cut: usize,
    live: &A::State,
) {
    let at_cut = A::replay(A::State::default(), &events[..cut]);
    let snapshot: A::State = codec::decode(&codec::encode_compact(&at_cut))
        .unwrap_or_else(|e| panic!("snapshot at {cut} does not decode: {e}"));
    assert_eq!(snapshot, at_cut, "snapshot at {cut} changed in the codec");
    assert_eq!(
        &A::replay(snapshot, &events[cut..]),
        live,
        "snapshot at {cut} + tail differs from live"
    );
}

/// Asserts that the live state is exactly what the journal rebuilds: replaying all `events`
/// from the default gives `live`, and so does every snapshot (at every cut `0..=events.len()`,
/// see [`assert_snapshot_and_tail_agree`]) plus the events after it.
#[track_caller]
pub fn assert_replay_and_snapshots_agree<A: Aggregate>(events: &[A::Event], live: &A::State) {
    assert_eq!(
        &A::replay(A::State::default(), events),
        live,
        "replay of all {} events differs from live",
        events.len()
    );
    for cut in 0..=events.len() {
        assert_snapshot_and_tail_agree::<A>(events, cut, live);
    }
}

/// Asserts that `can_transition` allows exactly the `allowed` pairs among every `from -> to`
/// of `all` × `all`: the lifecycle table of an aggregate, cell by cell.
#[track_caller]
pub fn assert_transition_table<S>(
    all: &[S],
    allowed: &[(S, S)],
    can_transition: impl Fn(S, S) -> bool,
) where
    S: Copy + PartialEq + Display,
{
    for &from in all {
        for &to in all {
            assert_eq!(
                can_transition(from, to),
                allowed.contains(&(from, to)),
                "{from} -> {to}"
            );
        }
    }
}
