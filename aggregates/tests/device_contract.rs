//! The outbound contracts of the `Device` events and the stored forms of events, commands
//! and state.
//!
//! - Contract: for every event type, one event is built, its `payload_json()` is checked with
//!   `assert_contract` against the contract written out below (catalog contracts for
//!   `TelemetryReceived` and `FailurePredicted`, the module docs for the lifecycle events),
//!   its exact field set is compared, and `event_type()`, `event_version()` and `topic()`
//!   are pinned. The catalog's non-money `decimal`s (temperature, vibration, probability)
//!   are JSON numbers here, as the module docs state, so the contract says `number`.
//! - Round trips: every event, every command variant and a full state go through
//!   serde_json and through `codec` (bincode) and come back equal; events also go through
//!   `Aggregate::encode_event`/`decode_event`.

use chrono::{Duration, TimeZone, Utc};
use evershard_aggregates::device::*;
use evershard_model::testing::{
    assert_exact_contract, assert_json_and_codec_round_trip, assert_stored_event_round_trip,
};
use evershard_model::{codec, Aggregate, DomainEvent};
use std::collections::BTreeSet;
use uuid::Uuid;

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 14, 9, 26, 53)
        .single()
        .unwrap()
}

const DEVICE: Uuid = Uuid::from_u128(0x6f1e_2c3a_0000_4000_8000_0000_0000_00d0);
const MODEL: Uuid = Uuid::from_u128(0x6f1e_2c3a_0000_4000_8000_0000_0000_0030);
const OWNER: Uuid = Uuid::from_u128(0x6f1e_2c3a_0000_4000_8000_0000_0000_00a1);
const PREVIOUS_OWNER: Uuid = Uuid::from_u128(0x6f1e_2c3a_0000_4000_8000_0000_0000_00b2);

fn telemetry(full: bool) -> DeviceEvent {
    TelemetryReceived {
        device_id: DEVICE,
        serial_number: "SN-00000042".into(),
        model_id: MODEL,
        firmware_version: "1.2.1".into(),
        metrics: if full {
            TelemetryMetrics {
                temperature: Some(36.6),
                vibration: Some(2.25),
                operating_hours: Some(1_200),
                error_codes: vec!["W017".into(), "E042".into()],
            }
        } else {
            TelemetryMetrics::default()
        },
        owner_id: OWNER,
    }
    .into()
}

fn failure_predicted() -> DeviceEvent {
    FailurePredicted {
        device_id: DEVICE,
        serial_number: "SN-00000042".into(),
        owner_id: OWNER,
        predicted_failure_type: "battery_degradation".into(),
        probability: Probability::from_ppm(873_000).unwrap(),
        estimated_days_to_failure: 14,
        recommended_action: "replace the battery".into(),
    }
    .into()
}

fn device_connected(previous: Option<Uuid>) -> DeviceEvent {
    DeviceConnected {
        device_id: DEVICE,
        serial_number: "SN-00000042".into(),
        model_id: MODEL,
        firmware_version: "1.2.1".into(),
        owner_id: OWNER,
        previous_owner_id: previous,
        certifications: vec![Certification::Ce, Certification::Fda],
        calibration_required: true,
        connected_at: t0(),
    }
    .into()
}

fn device_calibrated() -> DeviceEvent {
    DeviceCalibrated {
        device_id: DEVICE,
        owner_id: OWNER,
        temperature_offset_celsius: -0.75,
        vibration_scale_factor: 1.1,
        calibrated_at: t0() + Duration::seconds(5),
    }
    .into()
}

fn device_disconnected(reason: DisconnectReason) -> DeviceEvent {
    DeviceDisconnected {
        device_id: DEVICE,
        owner_id: OWNER,
        reason,
        disconnected_at: t0() + Duration::hours(1),
    }
    .into()
}

fn device_error_detected() -> DeviceEvent {
    DeviceErrorDetected {
        device_id: DEVICE,
        owner_id: OWNER,
        error_code: "E042".into(),
        description: "temperature sensor self-test failed".into(),
        errors_in_window: 2,
        detected_at: t0() + Duration::minutes(3),
    }
    .into()
}

/// One event of every type (and the nullable variants both ways).
fn all_events() -> Vec<DeviceEvent> {
    vec![
        telemetry(true),
        telemetry(false),
        failure_predicted(),
        device_connected(None),
        device_connected(Some(PREVIOUS_OWNER)),
        device_calibrated(),
        device_disconnected(DisconnectReason::Requested),
        device_disconnected(DisconnectReason::ConnectionLost),
        device_disconnected(DisconnectReason::Unsupported),
        device_disconnected(DisconnectReason::RepeatedErrors),
        device_error_detected(),
    ]
}

fn keys(json: &serde_json::Value) -> BTreeSet<String> {
    json.as_object()
        .expect("payload is an object")
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Checks type, version, topic, the contract and the exact (top-level) field set of one event.
fn check(
    event: &DeviceEvent,
    event_type: &str,
    topic: &str,
    contract: &[(&str, &str)],
) -> serde_json::Value {
    assert_eq!(event.event_type(), event_type);
    assert_eq!(event.event_version(), "1.0");
    assert_eq!(event.topic(), topic);
    let json = event.payload_json();
    assert_exact_contract(event_type, &json, contract);
    json
}

// ------------------------------------------------------------------------------------------
// Catalog contracts
// ------------------------------------------------------------------------------------------

const TELEMETRY_CONTRACT: &[(&str, &str)] = &[
    ("device_id", "uuid"),
    ("serial_number", "string"),
    ("model_id", "uuid"),
    ("firmware_version", "string"),
    ("metrics", "object"),
    ("metrics.temperature", "number?"),
    ("metrics.vibration", "number?"),
    ("metrics.operating_hours", "integer?"),
    ("metrics.error_codes", "array"),
    ("owner_id", "uuid"),
];

#[test]
fn telemetry_received_follows_the_catalog_contract() {
    for full in [true, false] {
        let json = check(
            &telemetry(full),
            "TelemetryReceived",
            "electronics.telemetry",
            TELEMETRY_CONTRACT,
        );
        assert_eq!(
            keys(&json["metrics"]),
            set(&["temperature", "vibration", "operating_hours", "error_codes"])
        );
        let codes = json["metrics"]["error_codes"].as_array().unwrap();
        assert!(
            codes.iter().all(serde_json::Value::is_string),
            "error_codes: [string]"
        );
        if full {
            assert_eq!(json["metrics"]["temperature"], serde_json::json!(36.6));
            assert_eq!(json["metrics"]["operating_hours"], serde_json::json!(1200));
            assert_eq!(codes.len(), 2);
        } else {
            // Nullable metrics are present as null, not left out.
            assert!(json["metrics"]["temperature"].is_null());
            assert!(json["metrics"]["vibration"].is_null());
            assert!(json["metrics"]["operating_hours"].is_null());
            assert!(codes.is_empty());
        }
    }
}

#[test]
fn failure_predicted_follows_the_catalog_contract() {
    let json = check(
        &failure_predicted(),
        "FailurePredicted",
        "electronics.alerts",
        &[
            ("device_id", "uuid"),
            ("serial_number", "string"),
            ("owner_id", "uuid"),
            ("predicted_failure_type", "string"),
            ("probability", "number"),
            ("estimated_days_to_failure", "integer"),
            ("recommended_action", "string"),
        ],
    );
    assert_eq!(json["probability"], serde_json::json!(0.873));
    assert_eq!(json["estimated_days_to_failure"], serde_json::json!(14));
}

// ------------------------------------------------------------------------------------------
// Lifecycle contracts (defined in the module docs)
// ------------------------------------------------------------------------------------------

#[test]
fn device_connected_contract() {
    for previous in [None, Some(PREVIOUS_OWNER)] {
        let json = check(
            &device_connected(previous),
            "DeviceConnected",
            "electronics.telemetry",
            &[
                ("device_id", "uuid"),
                ("serial_number", "string"),
                ("model_id", "uuid"),
                ("firmware_version", "string"),
                ("owner_id", "uuid"),
                ("previous_owner_id", "uuid?"),
                ("certifications", "array"),
                ("calibration_required", "boolean"),
                ("connected_at", "datetime"),
            ],
        );
        assert_eq!(json["certifications"], serde_json::json!(["CE", "FDA"]));
        assert_eq!(json["previous_owner_id"].is_null(), previous.is_none());
    }
}

#[test]
fn device_calibrated_contract() {
    check(
        &device_calibrated(),
        "DeviceCalibrated",
        "electronics.telemetry",
        &[
            ("device_id", "uuid"),
            ("owner_id", "uuid"),
            ("temperature_offset_celsius", "number"),
            ("vibration_scale_factor", "number"),
            ("calibrated_at", "datetime"),
        ],
    );
}

#[test]
fn device_disconnected_contract() {
    for reason in [
        DisconnectReason::Requested,
        DisconnectReason::ConnectionLost,
        DisconnectReason::Unsupported,
        DisconnectReason::RepeatedErrors,
    ] {
        check(
            &device_disconnected(reason),
            "DeviceDisconnected",
            "electronics.telemetry",
            &[
                ("device_id", "uuid"),
                ("owner_id", "uuid"),
                (
                    "reason",
                    "enum:requested|connection_lost|unsupported|repeated_errors",
                ),
                ("disconnected_at", "datetime"),
            ],
        );
    }
}

#[test]
fn device_error_detected_contract() {
    check(
        &device_error_detected(),
        "DeviceErrorDetected",
        "electronics.alerts",
        &[
            ("device_id", "uuid"),
            ("owner_id", "uuid"),
            ("error_code", "string"),
            ("description", "string"),
            ("errors_in_window", "integer"),
            ("detected_at", "datetime"),
        ],
    );
}

#[test]
fn every_event_type_is_covered_with_its_topic() {
    let seen: BTreeSet<(&str, &str)> = all_events()
        .iter()
        .map(|e| (e.event_type(), e.topic()))
        .collect();
    let expected: BTreeSet<(&str, &str)> = [
        ("TelemetryReceived", "electronics.telemetry"),
        ("FailurePredicted", "electronics.alerts"),
        ("DeviceConnected", "electronics.telemetry"),
        ("DeviceCalibrated", "electronics.telemetry"),
        ("DeviceDisconnected", "electronics.telemetry"),
        ("DeviceErrorDetected", "electronics.alerts"),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, expected);
    assert_eq!(Device::TYPE, "Device");
}

// ------------------------------------------------------------------------------------------
// Round trips
// ------------------------------------------------------------------------------------------

#[test]
fn every_event_round_trips_through_json_and_the_codec() {
    for event in all_events() {
        assert_json_and_codec_round_trip(&event);
        assert_stored_event_round_trip::<Device>(&event);
    }
}

#[test]
fn payloads_round_trip_from_their_outbound_json() {
    // A consumer can read the payload JSON back into the payload struct.
    for event in all_events() {
        let json = event.payload_json();
        let back: DeviceEvent = match &event {
            DeviceEvent::TelemetryReceived(_) => {
                DeviceEvent::TelemetryReceived(serde_json::from_value(json).unwrap())
            }
            DeviceEvent::FailurePredicted(_) => {
                DeviceEvent::FailurePredicted(serde_json::from_value(json).unwrap())
            }
            DeviceEvent::DeviceConnected(_) => {
                DeviceEvent::DeviceConnected(serde_json::from_value(json).unwrap())
            }
            DeviceEvent::DeviceCalibrated(_) => {
                DeviceEvent::DeviceCalibrated(serde_json::from_value(json).unwrap())
            }
            DeviceEvent::DeviceDisconnected(_) => {
                DeviceEvent::DeviceDisconnected(serde_json::from_value(json).unwrap())
            }
            DeviceEvent::DeviceErrorDetected(_) => {
                DeviceEvent::DeviceErrorDetected(serde_json::from_value(json).unwrap())
            }
        };
        assert_eq!(back, event);
    }
}

#[test]
fn a_stored_event_under_another_type_name_or_major_version_is_refused() {
    let stored = Device::encode_event(&failure_predicted());
    assert!(Device::decode_event("TelemetryReceived", "1.0", &stored).is_err());
    assert!(Device::decode_event("FailurePredicted", "2.0", &stored).is_err());
    assert!(Device::decode_event("FailurePredicted", "1.3", &stored).is_ok());
}

fn all_commands() -> Vec<DeviceCommand> {
    vec![
        ConnectDevice {
            device_id: DEVICE,
            serial_number: "SN-00000042".into(),
            model_id: MODEL,
            firmware_version: "1.2.1".into(),
            owner_id: OWNER,
            certifications: vec![Certification::Fda],
        }
        .into(),
        CalibrateDevice {
            owner_id: OWNER,
            temperature_offset_celsius: 0.25,
            vibration_scale_factor: 0.9,
        }
        .into(),
        RecordTelemetry {
            firmware_version: Some("2.0.0".into()),
            metrics: TelemetryMetrics {
                temperature: Some(-12.5),
                vibration: None,
                operating_hours: Some(7),
                error_codes: vec!["E1".into()],
            },
        }
        .into(),
        RecordTelemetry {
            firmware_version: None,
            metrics: TelemetryMetrics::default(),
        }
        .into(),
        ReportError {
            error_code: "E042".into(),
            description: String::new(),
        }
        .into(),
        PredictFailure {
            predicted_failure_type: "sensor_drift".into(),
            probability: 0.42,
            estimated_days_to_failure: 30,
            recommended_action: "recalibrate".into(),
        }
        .into(),
        DisconnectDevice {
            reason: DisconnectReason::ConnectionLost,
        }
        .into(),
    ]
}

#[test]
fn every_command_round_trips_through_json_and_the_codec() {
    for command in all_commands() {
        assert_json_and_codec_round_trip(&command);
    }
}

#[test]
fn a_state_round_trips_through_json_and_the_codec() {
    let events = vec![
        device_connected(None),
        device_calibrated(),
        telemetry(true),
        device_error_detected(),
        failure_predicted(),
    ];
    let state = Device::replay(DeviceState::default(), &events);
    assert!(state.last_temperature_celsius.is_some() && !state.recent_error_times.is_empty());
    assert_json_and_codec_round_trip(&state);
    let empty = DeviceState::default();
    assert_eq!(
        codec::decode::<DeviceState>(&codec::encode(&empty)).unwrap(),
        empty
    );
}

#[test]
fn probability_is_a_json_number_and_an_integer_in_the_codec() {
    let p = Probability::from_ppm(873_000).unwrap();
    assert_eq!(serde_json::to_string(&p).unwrap(), "0.873");
    assert_eq!(serde_json::from_str::<Probability>("0.873").unwrap(), p);
    assert_eq!(
        serde_json::from_str::<Probability>("1").unwrap(),
        Probability::ONE
    );
    assert!(serde_json::from_str::<Probability>("1.5").is_err());
    assert!(serde_json::from_str::<Probability>("-0.1").is_err());
    // Format 1 (snapshots): the fixed-width u32 of ppm.
    let bytes = codec::encode_compact(&p);
    assert_eq!(bytes.len(), 1 + 4);
    assert_eq!(codec::decode::<Probability>(&bytes).unwrap(), p);
    // Format 2 (journal): the same integer, as MessagePack uint32 (0xce), never a float.
    let bytes = codec::encode(&p);
    assert_eq!(bytes[1..], [0xce, 0x00, 0x0d, 0x52, 0x28]);
    assert_eq!(codec::decode::<Probability>(&bytes).unwrap(), p);
    assert!(codec::decode::<Probability>(&codec::encode(&1_000_001u32)).is_err());
    assert!(codec::decode::<Probability>(&codec::encode_compact(&1_000_001u32)).is_err());
    for ppm in [0, 1, 7, 999_999, 1_000_000, 123_457, 500_000] {
        let p = Probability::from_ppm(ppm).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            serde_json::from_str::<Probability>(&json).unwrap(),
            p,
            "{json}"
        );
    }
}
