//! Plant schema evolution (seed `event-architecture-kafka.md` section 11): a `plant.created`
//! stored at version 1.0 still loads, upcast to 1.1; the current 1.1 form round-trips.
//!
//! How:
//! - `fixtures/plant/plant_created_v1_0.hex` holds the bytes a 1.0-era writer stored:
//!   `codec::encode` of its event enum with `plant.created` (plantId, strain, location as plain
//!   strings) at variant 0, in codec format 1 (positional bincode, the only format of that era;
//!   today's `codec::encode_compact`). The bytes were produced once by `regenerate_v1_0_fixture` below
//!   (ignored; run it by name with `--ignored` only if the fixture is lost) from a writer type
//!   declared in this file, independent of the crate's legacy types, and are committed. A
//!   test loads the file through `Plant::decode_event("plant.created", "1.0", ..)` and checks
//!   the upcast field by field; another checks the committed bytes still equal what that
//!   writer encodes, so the file cannot drift silently.
//! - `fixtures/plant/plant_created_v1_0.json` is the same event as JSON in the seed's shape
//!   (section 3.1 envelope, section 11 1.0 payload; the seed gives the schema but no example,
//!   so this example is written from it). Its payload must parse as `PlantCreatedV1_0` and
//!   upcast to the same 1.1 event as the bytes.
//! - The current 1.1 form round-trips through `encode_event`/`decode_event`; mislabelled,
//!   truncated, padded and unknown-version records are refused with the right `CodecError`.

use evershard_aggregates::plant::*;
use evershard_model::testing::{assert_contract, fixed_now, given};
use evershard_model::{codec, Aggregate, CodecError, DomainEvent};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use uuid::Uuid;

const FIXTURE_HEX: &str = "plant_created_v1_0.hex";
const FIXTURE_JSON: &str = "plant_created_v1_0.json";
const LEGACY_PLANT_ID: Uuid = Uuid::from_u128(0x3b9f6c52_7d1e_4a8b_9c3f_5e2a1d4b6c7e);

/// The 1.0-era writer's types, declared here as that writer had them (not imported from the
/// crate), so the fixture checks the crate's reader against an independent writer.
mod era_1_0 {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PlantCreated {
        pub plant_id: Uuid,
        pub strain: String,
        pub location: String,
    }

    /// Its event enum: `plant.created` was the first variant.
    #[derive(Debug, Serialize)]
    pub enum PlantEvent {
        PlantCreated(PlantCreated),
    }
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plant")
        .join(name)
}

fn read_fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The fixture's JSON envelope.
fn fixture_json() -> serde_json::Value {
    serde_json::from_str(&read_fixture(FIXTURE_JSON)).expect("fixture JSON parses")
}

/// Hex digits of the `.hex` fixture; `#` starts a comment, whitespace is ignored.
fn parse_hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn fixture_bytes() -> Vec<u8> {
    parse_hex(&read_fixture(FIXTURE_HEX))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the 1.0-era writer stored for the fixture's JSON payload, rendered as the `.hex` file
/// (one line per field, so the layout can be read).
fn render_v1_0_fixture() -> (Vec<u8>, String) {
    let payload: era_1_0::PlantCreated =
        serde_json::from_value(fixture_json()["payload"].clone()).expect("1.0 payload");
    let (strain_len, location_len) = (payload.strain.len(), payload.location.len());
    // A 1.0-era writer had only codec format 1 (positional bincode).
    let bytes = codec::encode_compact(&era_1_0::PlantEvent::PlantCreated(payload));
    // The layout the comment below states; asserting it here keeps the comment true.
    let sizes = [1, 4, 8 + 16, 8 + strain_len, 8 + location_len];
    assert_eq!(
        sizes.iter().sum::<usize>(),
        bytes.len(),
        "layout of the 1.0 record"
    );
    let labels = [
        "codec format 1",
        "enum variant 0 (u32 LE): plant.created",
        "plantId: uuid as bytes, u64 LE length 16 + 16 bytes",
        "strain: u64 LE length + UTF-8",
        "location: u64 LE length + UTF-8",
    ];
    let mut text = String::from(
        "# plant.created, event_version 1.0, exactly as a 1.0-era writer stored it:\n\
         #   codec::encode(&PlantEvent::PlantCreated(PlantCreatedV1_0 {\n\
         #       plantId, strain, location }))\n\
         # bincode 2 (serde mode, little-endian, fixed-width integers) after the codec\n\
         # format byte.\n\
         # Payload: plant_created_v1_0.json. Written once by regenerate_v1_0_fixture in\n\
         # tests/plant_schema_evolution.rs. This is what old journals hold: never edit or\n\
         # regenerate it to make a test pass.\n",
    );
    let mut at = 0;
    for (size, label) in sizes.iter().zip(labels) {
        text.push_str(&format!("{}  # {label}\n", hex(&bytes[at..at + size])));
        at += size;
    }
    (bytes, text)
}

#[test]
#[ignore = "writes the committed fixture; run by name only to recreate a lost file"]
fn regenerate_v1_0_fixture() {
    let (_, text) = render_v1_0_fixture();
    std::fs::write(fixture_path(FIXTURE_HEX), text).expect("write fixture");
}

#[test]
fn the_committed_fixture_is_what_a_1_0_writer_encodes() {
    let (bytes, _) = render_v1_0_fixture();
    assert_eq!(hex(&fixture_bytes()), hex(&bytes));
}

fn expected_upcast() -> PlantCreated {
    PlantCreated {
        plant_id: LEGACY_PLANT_ID,
        batch_id: Uuid::nil(),
        genetics: Genetics {
            id: Uuid::nil(),
            strain: "Northern Lights".to_owned(),
            genetics_type: GeneticsType::Hybrid,
            thc_percentage: 0.0,
            cbd_percentage: 0.0,
            lineage: None,
        },
        location: Location {
            facility_id: Uuid::nil(),
            zone: "Теплица 2, ряд 4".to_owned(),
            row: 1,
            position: 1,
        },
        propagation_method: PropagationMethod::Seed,
        source_id: None,
        planned_harvest_date: legacy::not_planned_date(),
        metadata: Some(
            [("upcastFrom".to_owned(), "1.0".to_owned())]
                .into_iter()
                .collect(),
        ),
    }
}

#[test]
fn a_stored_1_0_plant_created_loads_upcast_to_1_1() {
    let event = Plant::decode_event("plant.created", "1.0", &fixture_bytes()).expect("1.0 loads");
    assert_eq!(event.event_type(), "plant.created");
    assert_eq!(event.event_version(), "1.1");
    let PlantEvent::PlantCreated(created) = &event else {
        panic!("decoded as {event:?}");
    };
    // Field by field, as tabled in `plant::legacy`.
    assert_eq!(created.plant_id, LEGACY_PLANT_ID);
    assert_eq!(created.genetics.strain, "Northern Lights");
    assert_eq!(created.genetics.genetics_type, GeneticsType::Hybrid);
    assert_eq!(created.genetics.id, Uuid::nil());
    assert_eq!(created.genetics.thc_percentage, 0.0);
    assert_eq!(created.genetics.cbd_percentage, 0.0);
    assert_eq!(created.genetics.lineage, None);
    assert_eq!(created.batch_id, Uuid::nil());
    assert_eq!(created.location.zone, "Теплица 2, ряд 4");
    assert_eq!(created.location.facility_id, Uuid::nil());
    assert_eq!((created.location.row, created.location.position), (1, 1));
    assert_eq!(created.propagation_method, PropagationMethod::Seed);
    assert_eq!(created.source_id, None);
    assert_eq!(created.planned_harvest_date.to_string(), "1970-01-01");
    let metadata = created.metadata.as_ref().expect("upcast marker");
    assert_eq!(metadata.len(), 1);
    assert_eq!(
        metadata.get(UPCAST_FROM_KEY).map(String::as_str),
        Some("1.0")
    );
    assert_eq!(created, &expected_upcast());

    // The upcast event is a valid 1.1 payload.
    let json = event.payload_json();
    assert_contract(
        "plant.created",
        &json,
        &[
            ("plantId", "uuid"),
            ("batchId", "uuid"),
            ("genetics.id", "uuid"),
            ("genetics.strain", "string"),
            ("genetics.type", "enum:hybrid"),
            ("genetics.thcPercentage", "number"),
            ("genetics.cbdPercentage", "number"),
            ("location.facilityId", "uuid"),
            ("location.zone", "string"),
            ("location.row", "integer"),
            ("location.position", "integer"),
            ("propagationMethod", "enum:seed"),
            ("plannedHarvestDate", "string"),
            ("metadata.upcastFrom", "enum:1.0"),
        ],
    );
    assert!(json.get("sourceId").is_none() && json["genetics"].get("lineage").is_none());
}

#[test]
fn a_legacy_plant_lives_on_like_any_other() {
    let event = Plant::decode_event("plant.created", "1.0", &fixture_bytes()).unwrap();
    let state = given::<Plant>([event])
        .when(ChangePlantStage {
            new_stage: PlantStage::Vegetative,
            changed_by: Uuid::from_u128(7),
            reason: None,
            environmental_conditions: None,
            photos: None,
        })
        .then_events(|events| match &events[0] {
            PlantEvent::PlantStageChanged(e) => {
                assert_eq!((e.plant_id, e.batch_id), (LEGACY_PLANT_ID, Uuid::nil()));
                assert_eq!(
                    (e.previous_stage, e.stage_changed_at),
                    (PlantStage::Seedling, fixed_now())
                );
            }
            other => panic!("{other:?}"),
        });
    assert_eq!(state.plant.unwrap().stage, PlantStage::Vegetative);
}

#[test]
fn the_seed_shaped_1_0_json_parses_and_upcasts_to_the_same_event() {
    let envelope = fixture_json();
    assert_eq!(envelope["eventType"], "plant.created");
    assert_eq!(envelope["eventVersion"], PLANT_CREATED_V1_0_VERSION);
    let legacy: PlantCreatedV1_0 =
        serde_json::from_value(envelope["payload"].clone()).expect("1.0 JSON");
    assert_eq!(
        legacy,
        PlantCreatedV1_0 {
            plant_id: LEGACY_PLANT_ID,
            strain: "Northern Lights".to_owned(),
            location: "Теплица 2, ряд 4".to_owned(),
        }
    );
    // Serializes back to exactly the 1.0 payload.
    assert_eq!(serde_json::to_value(&legacy).unwrap(), envelope["payload"]);
    let from_json = PlantEvent::PlantCreated(legacy.upcast());
    let from_bytes = Plant::decode_event("plant.created", "1.0", &fixture_bytes()).unwrap();
    assert_eq!(from_json, from_bytes);
}

#[test]
fn a_1_1_payload_is_not_mistaken_for_1_0_in_json() {
    let current = serde_json::to_value(expected_upcast()).unwrap();
    assert!(
        serde_json::from_value::<PlantCreatedV1_0>(current).is_err(),
        "location is an object in 1.1"
    );
}

fn current_created() -> PlantEvent {
    PlantCreated {
        plant_id: Uuid::from_u128(1),
        batch_id: Uuid::from_u128(2),
        genetics: Genetics {
            id: Uuid::from_u128(3),
            strain: "Blue Dream".to_owned(),
            genetics_type: GeneticsType::Sativa,
            thc_percentage: 21.25,
            cbd_percentage: 0.75,
            lineage: Some(Lineage {
                mother: Some("Blueberry".to_owned()),
                father: None,
            }),
        },
        location: Location {
            facility_id: Uuid::from_u128(4),
            zone: "B".to_owned(),
            row: 2,
            position: 9,
        },
        propagation_method: PropagationMethod::Clone,
        source_id: Some(Uuid::from_u128(5)),
        planned_harvest_date: chrono::NaiveDate::from_ymd_opt(2026, 5, 20).unwrap(),
        metadata: Some(
            [("room".to_owned(), "veg-1".to_owned())]
                .into_iter()
                .collect(),
        ),
    }
    .into()
}

#[test]
fn the_current_1_1_form_round_trips_through_the_journal() {
    for event in [
        current_created(),
        PlantEvent::PlantCreated(expected_upcast()),
    ] {
        assert_eq!(event.event_version(), PLANT_CREATED_VERSION);
        let stored = Plant::encode_event(&event);
        assert_eq!(
            Plant::decode_event("plant.created", "1.1", &stored),
            Ok(event)
        );
    }
}

#[test]
fn versions_and_types_are_not_confused() {
    let legacy = fixture_bytes();
    let current = Plant::encode_event(&current_created());
    // Each shape read as the other: refused, never misread.
    assert!(matches!(
        Plant::decode_event("plant.created", "1.1", &legacy),
        Err(CodecError::Decode(_))
    ));
    assert!(Plant::decode_event("plant.created", "1.0", &current).is_err());
    // Unknown versions and types.
    for (event_type, version) in [
        ("plant.created", "1.2"),
        ("plant.created", "2.0"),
        ("plant.created", "1"),
        ("plant.stage_changed", "1.1"),
        ("plant.harvested", "2.0"),
        ("plant.moved", "1.0"),
    ] {
        assert_eq!(
            Plant::decode_event(event_type, version, &current),
            Err(CodecError::UnknownVersion {
                event_type: event_type.to_owned(),
                event_version: version.to_owned()
            })
        );
    }
    // A record whose type disagrees with its payload.
    assert!(matches!(
        Plant::decode_event("plant.harvested", "1.0", &current),
        Err(CodecError::Mismatch(_))
    ));
    // Damaged legacy records.
    let mut padded = legacy.clone();
    padded.push(0);
    assert_eq!(
        Plant::decode_event("plant.created", "1.0", &padded),
        Err(CodecError::TrailingBytes(1))
    );
    assert!(matches!(
        Plant::decode_event("plant.created", "1.0", &legacy[..legacy.len() - 1]),
        Err(CodecError::Decode(_))
    ));
    assert_eq!(
        Plant::decode_event("plant.created", "1.0", &[]),
        Err(CodecError::Empty)
    );
}
