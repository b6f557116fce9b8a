//! `#[derive(DomainEvent)]` expands to the contract its attributes state: the variant name as
//! `event_type` unless `name` overrides it, the enum's `topic`/`version` unless a variant
//! overrides them, `json_payload` unless `payload_json` names another function (on the enum
//! or a variant), and the model crate's path when `crate` names it; and an aggregate whose
//! events use the derive stores and loads them through the default
//! `encode_event`/`decode_event`. (The derive's refusals — unknown keys, variants without
//! exactly one payload, missing topic or version — are unit-tested in model/derive.)

use evershard_model as model_by_another_name;
use evershard_model::{json_payload, Aggregate, CodecError, DecideContext, DomainEvent};
use serde::{Deserialize, Serialize};

const TOPIC: &str = "test.things";
const RENAMED_VERSION: &str = "2.1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThingCreated {
    pub name: String,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThingRenamed {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThingAlerted {
    pub level: u8,
}

/// The enum-level override: every payload as JSON, tagged.
fn tagged<T: Serialize>(payload: &T) -> serde_json::Value {
    serde_json::json!({ "tagged": json_payload(payload) })
}

/// A variant-level override, typed on its payload.
fn renamed_json(e: &ThingRenamed) -> serde_json::Value {
    serde_json::json!({ "newName": e.name })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(topic = TOPIC, version = "1.0")]
pub enum ThingEvent {
    ThingCreated(ThingCreated),
    #[event(name = "thing.renamed", version = RENAMED_VERSION, payload_json = renamed_json)]
    ThingRenamed(ThingRenamed),
    #[event(topic = "test.alerts")]
    ThingAlerted(ThingAlerted),
}

/// Also names the model crate by another path, as a crate behind the facade would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(crate = model_by_another_name, topic = TOPIC, version = "1.0", payload_json = tagged)]
pub enum TaggedEvent {
    ThingAlerted(ThingAlerted),
}

fn created() -> ThingEvent {
    ThingEvent::ThingCreated(ThingCreated {
        name: "a".into(),
        note: None,
    })
}
fn renamed() -> ThingEvent {
    ThingEvent::ThingRenamed(ThingRenamed { name: "b".into() })
}
fn alerted() -> ThingEvent {
    ThingEvent::ThingAlerted(ThingAlerted { level: 3 })
}

#[test]
fn defaults_come_from_the_enum_and_the_variant_name() {
    let e = created();
    assert_eq!(
        (e.event_type(), e.event_version(), e.topic()),
        ("ThingCreated", "1.0", TOPIC)
    );
    assert_eq!(
        e.payload_json(),
        serde_json::json!({ "name": "a", "note": null })
    );
}

#[test]
fn a_variant_overrides_name_version_topic_and_payload_json() {
    let e = renamed();
    assert_eq!(
        (e.event_type(), e.event_version(), e.topic()),
        ("thing.renamed", RENAMED_VERSION, TOPIC)
    );
    assert_eq!(e.payload_json(), serde_json::json!({ "newName": "b" }));
    let e = alerted();
    assert_eq!(
        (e.event_type(), e.event_version(), e.topic()),
        ("ThingAlerted", "1.0", "test.alerts")
    );
    assert_eq!(e.payload_json(), serde_json::json!({ "level": 3 }));
}

#[test]
fn an_enum_level_payload_json_applies_to_every_variant() {
    let e = TaggedEvent::ThingAlerted(ThingAlerted { level: 1 });
    assert_eq!(
        e.payload_json(),
        serde_json::json!({ "tagged": { "level": 1 } })
    );
}

#[derive(Debug)]
struct Thing;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Thing {
    const TYPE: &'static str = "Thing";
    type State = Vec<String>;
    type Command = ();
    type Event = ThingEvent;
    type Error = Never;
    fn decide(_: &Self::State, _: &(), _: &DecideContext) -> Result<Vec<ThingEvent>, Never> {
        Ok(vec![])
    }
    fn apply(state: &mut Self::State, event: &ThingEvent) {
        state.push(event.event_type().to_owned());
    }
}

#[test]
fn derived_events_go_through_the_journal_path() {
    for event in [created(), renamed(), alerted()] {
        let stored = Thing::encode_event(&event);
        assert_eq!(
            Thing::decode_event(event.event_type(), event.event_version(), &stored),
            Ok(event)
        );
    }
    let stored = Thing::encode_event(&renamed());
    assert!(matches!(
        Thing::decode_event("ThingCreated", "1.0", &stored),
        Err(CodecError::Mismatch(_))
    ));
    assert!(matches!(
        Thing::decode_event("thing.renamed", "3.0", &stored),
        Err(CodecError::UnknownVersion { .. })
    ));
}
