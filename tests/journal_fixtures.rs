//! Committed fixtures of old on-disk data are loaded by tests, forever (fjall's habit).
//!
//! `tests/fixtures/journal/plant_created_v1_0.record.hex` is one journal record in record
//! format 1 around a `plant.created` **version 1.0** payload (strain and location as plain
//! strings, event-architecture-kafka.md section 11), byte for byte as the journal stores it.
//! The tests prove that:
//! - the record format is pinned: today's encoder writes exactly the committed bytes, and
//!   the decoder reads them back (CRC, header, strings, payload);
//! - the stored 1.0 event loads through the repository upcast to 1.1 (genetics type
//!   "hybrid"), keeping its stored `event_version` of "1.0" in the envelope;
//! - a journal that holds the 1.0 event works in a live engine: the plant recovers, takes new
//!   commands, `verify` is clean, and the auditors' CLI prints its history (the stored
//!   version, "1.0"); its topic message names the version of the payload it carries
//!   ("1.1", in the envelope and the header), as the seed's `EventMigrator` stamps a
//!   migrated event, so that a consumer validates the payload against the right schema.

use evershard::aggregates::plant::{ChangePlantStage, GeneticsType, Plant, PlantEvent, PlantStage};
use evershard::engine::{repository, Journal, JournalConfig, JournalWriter};
use evershard::engine::{AppendRequest, NewEvent, Record};
use evershard::model::{Aggregate, DomainEvent};
use evershard::{Durability, Engine, StreamId};
use std::path::PathBuf;
use uuid::Uuid;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Hex digits of a fixture; `#` starts a comment, whitespace is ignored.
fn read_hex(path: PathBuf) -> Vec<u8> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

/// The 1.0 payload, as the aggregate's own fixture holds it.
fn legacy_payload() -> Vec<u8> {
    read_hex(root().join("aggregates/tests/fixtures/plant/plant_created_v1_0.hex"))
}

fn legacy_plant_id() -> Uuid {
    match Plant::decode_event("plant.created", "1.0", &legacy_payload()).unwrap() {
        PlantEvent::PlantCreated(created) => created.plant_id,
        other => panic!("{other:?}"),
    }
}

const RECORD_FIXTURE: &str = "tests/fixtures/journal/plant_created_v1_0.record.hex";

/// The record a 1.0-era writer stored (fixed ids and time, so the bytes are reproducible).
fn legacy_record() -> Record {
    Record {
        sequence: 1,
        global_position: 1,
        timestamp: chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap(),
        event_id: Uuid::from_u128(0x1111),
        correlation_id: Uuid::from_u128(0x2222),
        causation_id: None,
        prev_hash: [0; 32],
        aggregate_type: "Plant".into(),
        aggregate_id: legacy_plant_id().to_string(),
        event_type: "plant.created".into(),
        event_version: "1.0".into(),
        source: "plants-service-1.0".into(),
        user_id: Some("grower-7".into()),
        session_id: None,
        audit_context: None,
        at_rest: evershard::engine::AtRest::Plain,
        payload: legacy_payload(),
    }
}

fn render_hex(bytes: &[u8]) -> String {
    let mut out = String::from(
        "# One journal record, format 1, holding a plant.created 1.0 payload.\n\
         # Written by tests/journal_fixtures.rs::regenerate_record_fixture; never edit by hand.\n",
    );
    for chunk in bytes.chunks(32) {
        out.extend(chunk.iter().map(|b| format!("{b:02x}")));
        out.push('\n');
    }
    out
}

#[test]
#[ignore = "writes the fixture; run once by hand when a new fixture is wanted, never to update one"]
fn regenerate_record_fixture() {
    std::fs::write(
        root().join(RECORD_FIXTURE),
        render_hex(&legacy_record().encode()),
    )
    .unwrap();
}

#[test]
fn the_record_format_is_pinned_by_the_committed_fixture() {
    let committed = read_hex(root().join(RECORD_FIXTURE));
    assert_eq!(
        legacy_record().encode(),
        committed,
        "record format 1 changed its bytes"
    );
    assert_eq!(Record::decode(&committed).unwrap(), legacy_record());
}

#[test]
fn the_stored_1_0_event_loads_upcast_to_1_1() {
    let record = Record::decode(&read_hex(root().join(RECORD_FIXTURE))).unwrap();
    let envelope = repository::decode_record::<Plant>(record).unwrap();
    assert_eq!(
        (
            envelope.event_type.as_str(),
            envelope.event_version.as_str()
        ),
        ("plant.created", "1.0")
    );
    assert_eq!(envelope.user_id.as_deref(), Some("grower-7"));
    let PlantEvent::PlantCreated(created) = &envelope.payload else {
        panic!("{:?}", envelope.payload)
    };
    assert_eq!(created.genetics.genetics_type, GeneticsType::Hybrid);
    assert_eq!(envelope.payload.event_version(), "1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_holding_the_1_0_event_works_in_a_live_engine() {
    let dir = tempfile::tempdir().unwrap();
    let id = legacy_plant_id().to_string();
    let stream = StreamId::new("Plant", id.as_str());
    let (path, append_stream) = (dir.path().to_path_buf(), stream.clone());
    tokio::task::spawn_blocking(move || {
        let stream = append_stream;
        // Put the old event into a journal exactly as the 1.0-era writer appended it.
        let journal = JournalWriter::open(&path, JournalConfig::default()).unwrap();
        let old = legacy_record();
        let event = NewEvent {
            event_id: old.event_id,
            event_type: old.event_type,
            event_version: old.event_version,
            timestamp: old.timestamp,
            correlation_id: old.correlation_id,
            causation_id: None,
            source: old.source,
            user_id: old.user_id,
            session_id: None,
            audit_context: None,
            payload: old.payload,
        };
        let committed = journal
            .append_blocking(AppendRequest::new(stream.clone(), 0, vec![event]))
            .unwrap();
        // The journal stored the very bytes of the committed fixture.
        assert_eq!(
            committed.records[0].encode(),
            read_hex(root().join(RECORD_FIXTURE))
        );
        journal.close().unwrap();
    })
    .await
    .unwrap();

    let engine = Engine::builder(dir.path())
        .register::<Plant>()
        .durability(Durability::Durable)
        .open()
        .await
        .unwrap();
    let (state, version) = engine.state::<Plant>(&id).await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(state.plant.as_ref().unwrap().stage, PlantStage::Seedling);
    let events = engine
        .execute::<Plant>(
            &id,
            ChangePlantStage {
                new_stage: PlantStage::Vegetative,
                changed_by: Uuid::from_u128(7),
                reason: None,
                environmental_conditions: None,
                photos: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(events[0].sequence, 2);
    let history = engine.history::<Plant>(&id).unwrap();
    let versions: Vec<&str> = history.iter().map(|e| e.event_version.as_str()).collect();
    assert_eq!(
        versions,
        ["1.0", "1.0"],
        "stored versions are kept as written"
    );
    let durable = engine.journal().durable_position();
    assert!(
        engine
            .wait_indexed(durable, std::time::Duration::from_secs(60))
            .await
    );
    let log = engine.topic_log().unwrap();
    let partitions = log
        .topics()
        .unwrap()
        .into_iter()
        .find(|t| t.name == "cultivation.plants.v1")
        .unwrap()
        .partitions;
    let messages: Vec<_> = (0..partitions)
        .flat_map(|p| log.read("cultivation.plants.v1", p, 0, usize::MAX).unwrap())
        .collect();
    let created = messages
        .iter()
        .find(|m| m.header("event_type") == Some("plant.created"))
        .expect("the 1.0 event's message");
    assert_eq!(created.header("event_version"), Some("1.1"));
    let value: serde_json::Value = serde_json::from_slice(created.value()).unwrap();
    assert_eq!(
        value["eventVersion"], "1.1",
        "the version of the payload carried"
    );
    assert_eq!(value["payload"]["genetics"]["type"], "hybrid");
    engine.shutdown().await.unwrap();
    drop(engine);

    let journal = Journal::open_read_only(dir.path()).unwrap();
    assert!(journal.verify().is_clean());
    drop(journal);
    // The auditors' CLI (as a library, evershard-cli; the binary is the facade's).
    use clap::Parser;
    let cli = evershard_cli::CommandLine::try_parse_from([
        "evershard",
        "history",
        "Plant",
        &id,
        "--data",
        dir.path().to_str().unwrap(),
        "--json",
    ])
    .unwrap();
    let mut out = Vec::new();
    evershard_cli::run(&cli, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["event_version"], "1.0");
    assert_eq!(first["payload"]["genetics"]["type"], "hybrid");
}
