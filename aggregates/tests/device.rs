//! The `Device` aggregate's rules, one given/when/then scenario per rule: every command
//! accepted, and rejected for every reason `DeviceError` has. Scenarios start from stored
//! events (`given`), run one command through `decide` at a fixed clock, and compare the
//! exact events or error; `given` also asserts the invariants before and after.

use chrono::{DateTime, Duration, Utc};
use evershard_aggregates::device::*;
use evershard_model::testing::{assert_transition_table, fixed_now, given, given_no_events};
use evershard_model::Aggregate;
use uuid::Uuid;

const DEVICE: Uuid = Uuid::from_u128(0xD0);
const MODEL: Uuid = Uuid::from_u128(0x30);
const OWNER_A: Uuid = Uuid::from_u128(0xA1);
const OWNER_B: Uuid = Uuid::from_u128(0xB2);
const SERIAL: &str = "SN-00000042";

fn at(seconds: i64) -> DateTime<Utc> {
    fixed_now() + Duration::seconds(seconds)
}

fn connect_cmd(owner: Uuid) -> ConnectDevice {
    ConnectDevice {
        device_id: DEVICE,
        serial_number: SERIAL.into(),
        model_id: MODEL,
        firmware_version: "1.0.0".into(),
        owner_id: owner,
        certifications: vec![Certification::Ce],
    }
}

fn connected(owner: Uuid, previous: Option<Uuid>, calibration_required: bool) -> DeviceEvent {
    DeviceConnected {
        device_id: DEVICE,
        serial_number: SERIAL.into(),
        model_id: MODEL,
        firmware_version: "1.0.0".into(),
        owner_id: owner,
        previous_owner_id: previous,
        certifications: vec![Certification::Ce],
        calibration_required,
        connected_at: at(0),
    }
    .into()
}

fn calibrated(owner: Uuid) -> DeviceEvent {
    DeviceCalibrated {
        device_id: DEVICE,
        owner_id: owner,
        temperature_offset_celsius: 0.5,
        vibration_scale_factor: 1.0,
        calibrated_at: at(0),
    }
    .into()
}

fn disconnected(owner: Uuid, reason: DisconnectReason) -> DeviceEvent {
    DeviceDisconnected {
        device_id: DEVICE,
        owner_id: owner,
        reason,
        disconnected_at: at(0),
    }
    .into()
}

fn error_at(seconds: i64, errors_in_window: u32) -> DeviceEvent {
    DeviceErrorDetected {
        device_id: DEVICE,
        owner_id: OWNER_A,
        error_code: "E001".into(),
        description: "self-test failed".into(),
        errors_in_window,
        detected_at: at(seconds),
    }
    .into()
}

fn metrics(
    temperature: Option<f64>,
    vibration: Option<f64>,
    hours: Option<u64>,
) -> TelemetryMetrics {
    TelemetryMetrics {
        temperature,
        vibration,
        operating_hours: hours,
        error_codes: vec![],
    }
}

fn reading(m: TelemetryMetrics) -> RecordTelemetry {
    RecordTelemetry {
        firmware_version: None,
        metrics: m,
    }
}

fn received(m: TelemetryMetrics) -> DeviceEvent {
    TelemetryReceived {
        device_id: DEVICE,
        serial_number: SERIAL.into(),
        model_id: MODEL,
        firmware_version: "1.0.0".into(),
        metrics: m,
        owner_id: OWNER_A,
    }
    .into()
}

/// A connected device calibrated for OWNER_A: telemetry is accepted.
fn ready() -> Vec<DeviceEvent> {
    vec![connected(OWNER_A, None, true), calibrated(OWNER_A)]
}

fn ready_with(more: impl IntoIterator<Item = DeviceEvent>) -> Vec<DeviceEvent> {
    let mut events = ready();
    events.extend(more);
    events
}

fn calibrate_cmd(owner: Uuid, offset: f64, scale: f64) -> CalibrateDevice {
    CalibrateDevice {
        owner_id: owner,
        temperature_offset_celsius: offset,
        vibration_scale_factor: scale,
    }
}

fn prediction(probability: f64, days: u32) -> PredictFailure {
    PredictFailure {
        predicted_failure_type: "battery_degradation".into(),
        probability,
        estimated_days_to_failure: days,
        recommended_action: "replace the battery".into(),
    }
}

fn report(code: &str) -> ReportError {
    ReportError {
        error_code: code.into(),
        description: "self-test failed".into(),
    }
}

// ------------------------------------------------------------------------------------------
// ConnectDevice
// ------------------------------------------------------------------------------------------

#[test]
fn first_connection_registers_the_device_and_requires_calibration() {
    let mut cmd = connect_cmd(OWNER_A);
    cmd.certifications = vec![Certification::Fda, Certification::Ce, Certification::Fda];
    let state = given_no_events::<Device>()
        .when(cmd)
        .then_expect_events([DeviceConnected {
            device_id: DEVICE,
            serial_number: SERIAL.into(),
            model_id: MODEL,
            firmware_version: "1.0.0".into(),
            owner_id: OWNER_A,
            previous_owner_id: None,
            certifications: vec![Certification::Ce, Certification::Fda],
            calibration_required: true,
            connected_at: fixed_now(),
        }
        .into()]);
    assert_eq!(state.status, DeviceStatus::Connected);
    assert_eq!(state.device.as_ref().map(|d| d.owner_id), Some(OWNER_A));
    assert!(!state.is_calibrated());
    assert_eq!(state.connections_count, 1);
}

#[test]
fn connection_to_an_aggregate_addressed_by_the_same_uuid_is_accepted() {
    given_no_events::<Device>()
        .id(DEVICE.to_string())
        .when(connect_cmd(OWNER_A))
        .then_events(|events| assert_eq!(events.len(), 1));
}

#[test]
fn connection_with_a_device_id_other_than_the_aggregate_uuid_is_rejected() {
    let other = Uuid::from_u128(0xEE);
    given_no_events::<Device>()
        .id(other.to_string())
        .when(connect_cmd(OWNER_A))
        .then_expect_error(DeviceError::DeviceIdMismatch {
            expected: other,
            got: DEVICE,
        });
}

#[test]
fn connecting_a_connected_device_is_rejected() {
    given::<Device>(ready())
        .when(connect_cmd(OWNER_A))
        .then_expect_error(DeviceError::AlreadyConnected);
}

#[test]
fn reconnect_by_the_same_owner_keeps_the_calibration() {
    let state = given::<Device>(ready_with([disconnected(
        OWNER_A,
        DisconnectReason::Requested,
    )]))
    .when(connect_cmd(OWNER_A))
    .then_events(|events| match events {
        [DeviceEvent::DeviceConnected(e)] => {
            assert!(!e.calibration_required);
            assert_eq!(e.previous_owner_id, Some(OWNER_A));
        }
        other => panic!("unexpected {other:?}"),
    });
    assert!(state.is_calibrated());
    assert_eq!(state.connections_count, 2);
}

#[test]
fn reconnect_of_a_never_calibrated_device_still_requires_calibration() {
    given::<Device>([
        connected(OWNER_A, None, true),
        disconnected(OWNER_A, DisconnectReason::ConnectionLost),
    ])
    .when(connect_cmd(OWNER_A))
    .then_events(|events| match events {
        [DeviceEvent::DeviceConnected(e)] => assert!(e.calibration_required),
        other => panic!("unexpected {other:?}"),
    });
}

#[test]
fn owner_change_requires_recalibration_before_telemetry() {
    let history = ready_with([disconnected(OWNER_A, DisconnectReason::Requested)]);
    let state = given::<Device>(history.clone())
        .when(connect_cmd(OWNER_B))
        .then_events(|events| match events {
            [DeviceEvent::DeviceConnected(e)] => {
                assert!(e.calibration_required);
                assert_eq!(e.previous_owner_id, Some(OWNER_A));
                assert_eq!(e.owner_id, OWNER_B);
            }
            other => panic!("unexpected {other:?}"),
        });
    assert!(!state.is_calibrated());
    assert_eq!(state.calibrated_owner_id, None);

    // Telemetry is rejected until a calibration for the new owner.
    let mut events = history;
    events.push(connected(OWNER_B, Some(OWNER_A), true));
    given::<Device>(events.clone())
        .when(reading(metrics(Some(36.6), None, Some(10))))
        .then_expect_error(DeviceError::CalibrationRequired { owner_id: OWNER_B });
    // A late calibration made for the previous owner does not count.
    given::<Device>(events.clone())
        .when(calibrate_cmd(OWNER_A, 0.0, 1.0))
        .then_expect_error(DeviceError::OwnerMismatch {
            owner_id: OWNER_B,
            got: OWNER_A,
        });
    events.push(calibrated(OWNER_B));
    given::<Device>(events)
        .when(reading(metrics(Some(36.6), None, Some(10))))
        .then_events(|events| match events {
            [DeviceEvent::TelemetryReceived(e)] => assert_eq!(e.owner_id, OWNER_B),
            other => panic!("unexpected {other:?}"),
        });
}

#[test]
fn reconnect_may_report_new_firmware() {
    let mut cmd = connect_cmd(OWNER_A);
    cmd.firmware_version = "2.0.0".into();
    let state = given::<Device>(ready_with([disconnected(
        OWNER_A,
        DisconnectReason::Requested,
    )]))
    .when(cmd)
    .then_events(|_| {});
    assert_eq!(state.device.unwrap().firmware_version, "2.0.0");
}

#[test]
fn reconnect_with_another_identity_is_rejected() {
    let history = ready_with([disconnected(OWNER_A, DisconnectReason::Requested)]);
    let mut cmd = connect_cmd(OWNER_A);
    cmd.device_id = Uuid::from_u128(0xD1);
    given::<Device>(history.clone())
        .when(cmd)
        .then_expect_error(DeviceError::DeviceIdMismatch {
            expected: DEVICE,
            got: Uuid::from_u128(0xD1),
        });

    let mut cmd = connect_cmd(OWNER_A);
    cmd.serial_number = "SN-99".into();
    given::<Device>(history.clone())
        .when(cmd)
        .then_expect_error(DeviceError::SerialNumberMismatch {
            registered: SERIAL.into(),
            got: "SN-99".into(),
        });

    let mut cmd = connect_cmd(OWNER_A);
    cmd.model_id = Uuid::from_u128(0x31);
    given::<Device>(history)
        .when(cmd)
        .then_expect_error(DeviceError::ModelMismatch {
            registered: MODEL,
            got: Uuid::from_u128(0x31),
        });
}

#[test]
fn connection_needs_a_serial_number_and_a_firmware_version_within_limits() {
    let mut cmd = connect_cmd(OWNER_A);
    cmd.serial_number = "  ".into();
    given_no_events::<Device>()
        .when(cmd)
        .then_expect_error(DeviceError::BlankText {
            field: "serial_number",
        });

    let mut cmd = connect_cmd(OWNER_A);
    cmd.serial_number = "S".repeat(SERIAL_NUMBER_MAX_BYTES + 1);
    given_no_events::<Device>()
        .when(cmd)
        .then_expect_error(DeviceError::TextTooLong {
            field: "serial_number",
            max_bytes: SERIAL_NUMBER_MAX_BYTES,
        });

    let mut cmd = connect_cmd(OWNER_A);
    cmd.firmware_version = String::new();
    given_no_events::<Device>()
        .when(cmd)
        .then_expect_error(DeviceError::BlankText {
            field: "firmware_version",
        });

    let mut cmd = connect_cmd(OWNER_A);
    cmd.firmware_version = "1".repeat(FIRMWARE_VERSION_MAX_BYTES + 1);
    given_no_events::<Device>()
        .when(cmd)
        .then_expect_error(DeviceError::TextTooLong {
            field: "firmware_version",
            max_bytes: FIRMWARE_VERSION_MAX_BYTES,
        });
}

#[test]
fn connection_without_a_medical_certification_is_rejected() {
    let mut cmd = connect_cmd(OWNER_A);
    cmd.certifications.clear();
    given_no_events::<Device>()
        .when(cmd)
        .then_expect_error(DeviceError::NotCertified);
}

// ------------------------------------------------------------------------------------------
// CalibrateDevice
// ------------------------------------------------------------------------------------------

#[test]
fn calibration_for_the_current_owner_is_accepted() {
    let state = given::<Device>([connected(OWNER_A, None, true)])
        .at(at(30))
        .when(calibrate_cmd(OWNER_A, -1.5, 1.2))
        .then_expect_events([DeviceCalibrated {
            device_id: DEVICE,
            owner_id: OWNER_A,
            temperature_offset_celsius: -1.5,
            vibration_scale_factor: 1.2,
            calibrated_at: at(30),
        }
        .into()]);
    assert!(state.is_calibrated());
    assert_eq!(state.calibrations_count, 1);
    assert_eq!(state.last_calibrated_at, Some(at(30)));
}

#[test]
fn calibration_accepts_the_boundary_coefficients_and_recalibration() {
    for (offset, scale) in [
        (
            CALIBRATION_TEMPERATURE_OFFSET_MAX_CELSIUS,
            CALIBRATION_VIBRATION_SCALE_MIN,
        ),
        (
            -CALIBRATION_TEMPERATURE_OFFSET_MAX_CELSIUS,
            CALIBRATION_VIBRATION_SCALE_MAX,
        ),
    ] {
        let state = given::<Device>(ready())
            .when(calibrate_cmd(OWNER_A, offset, scale))
            .then_events(|events| assert_eq!(events.len(), 1));
        assert_eq!(state.calibrations_count, 2);
    }
}

#[test]
fn calibration_needs_a_connected_device() {
    given_no_events::<Device>()
        .when(calibrate_cmd(OWNER_A, 0.0, 1.0))
        .then_expect_error(DeviceError::NotConnected {
            status: DeviceStatus::New,
        });
    given::<Device>(ready_with([disconnected(
        OWNER_A,
        DisconnectReason::Requested,
    )]))
    .when(calibrate_cmd(OWNER_A, 0.0, 1.0))
    .then_expect_error(DeviceError::NotConnected {
        status: DeviceStatus::Disconnected,
    });
}

#[test]
fn calibration_for_someone_other_than_the_owner_is_rejected() {
    given::<Device>([connected(OWNER_A, None, true)])
        .when(calibrate_cmd(OWNER_B, 0.0, 1.0))
        .then_expect_error(DeviceError::OwnerMismatch {
            owner_id: OWNER_A,
            got: OWNER_B,
        });
}

#[test]
fn calibration_coefficients_outside_their_range_are_rejected() {
    given::<Device>(ready())
        .when(calibrate_cmd(OWNER_A, 5.01, 1.0))
        .then_expect_error(DeviceError::CalibrationOutOfRange {
            coefficient: "temperature_offset_celsius",
            value: "5.01".into(),
            range: "-5..=5 celsius".into(),
        });
    given::<Device>(ready())
        .when(calibrate_cmd(OWNER_A, 0.0, 0.4))
        .then_expect_error(DeviceError::CalibrationOutOfRange {
            coefficient: "vibration_scale_factor",
            value: "0.4".into(),
            range: "0.5..=2 (ratio)".into(),
        });
    given::<Device>(ready())
        .when(calibrate_cmd(OWNER_A, f64::NAN, 1.0))
        .then_expect_error(DeviceError::NonFiniteValue {
            field: "temperature_offset_celsius",
        });
    given::<Device>(ready())
        .when(calibrate_cmd(OWNER_A, 0.0, f64::INFINITY))
        .then_expect_error(DeviceError::NonFiniteValue {
            field: "vibration_scale_factor",
        });
}

// ------------------------------------------------------------------------------------------
// RecordTelemetry
// ------------------------------------------------------------------------------------------

#[test]
fn a_reading_is_published_with_the_device_identity_and_kept_as_last_values() {
    let m = TelemetryMetrics {
        temperature: Some(36.6),
        vibration: Some(2.5),
        operating_hours: Some(1200),
        error_codes: vec!["W017".into()],
    };
    let state = given::<Device>(ready())
        .when(reading(m.clone()))
        .then_expect_events([received(m)]);
    assert_eq!(state.last_temperature_celsius, Some(36.6));
    assert_eq!(state.last_vibration_mm_per_s, Some(2.5));
    assert_eq!(state.last_operating_hours, Some(1200));
    assert_eq!(state.telemetry_count, 1);
}

#[test]
fn a_reading_without_metrics_is_a_heartbeat_and_keeps_the_last_values() {
    let first = metrics(Some(30.0), Some(1.0), Some(5));
    let state = given::<Device>(ready_with([received(first)]))
        .when(reading(metrics(None, None, None)))
        .then_expect_events([received(metrics(None, None, None))]);
    assert_eq!(state.last_temperature_celsius, Some(30.0));
    assert_eq!(state.last_vibration_mm_per_s, Some(1.0));
    assert_eq!(state.last_operating_hours, Some(5));
    assert_eq!(state.telemetry_count, 2);
}

#[test]
fn sensor_range_boundaries_are_accepted() {
    for m in [
        metrics(
            Some(TEMPERATURE_MIN_CELSIUS),
            Some(VIBRATION_MIN_MM_PER_S),
            Some(0),
        ),
        metrics(
            Some(TEMPERATURE_MAX_CELSIUS),
            Some(VIBRATION_MAX_MM_PER_S),
            Some(OPERATING_HOURS_MAX_HOURS),
        ),
    ] {
        given::<Device>(ready())
            .when(reading(m.clone()))
            .then_expect_events([received(m)]);
    }
}

#[test]
fn a_reading_may_report_new_firmware() {
    let cmd = RecordTelemetry {
        firmware_version: Some("2.1.0".into()),
        metrics: metrics(Some(20.0), None, None),
    };
    let state = given::<Device>(ready())
        .when(cmd)
        .then_events(|events| match events {
            [DeviceEvent::TelemetryReceived(e)] => assert_eq!(e.firmware_version, "2.1.0"),
            other => panic!("unexpected {other:?}"),
        });
    assert_eq!(state.device.unwrap().firmware_version, "2.1.0");

    let cmd = RecordTelemetry {
        firmware_version: Some(" ".into()),
        metrics: metrics(None, None, None),
    };
    given::<Device>(ready())
        .when(cmd)
        .then_expect_error(DeviceError::BlankText {
            field: "firmware_version",
        });
}

#[test]
fn telemetry_needs_a_connected_device() {
    given_no_events::<Device>()
        .when(reading(metrics(Some(20.0), None, None)))
        .then_expect_error(DeviceError::NotConnected {
            status: DeviceStatus::New,
        });
    given::<Device>(ready_with([disconnected(
        OWNER_A,
        DisconnectReason::ConnectionLost,
    )]))
    .when(reading(metrics(Some(20.0), None, None)))
    .then_expect_error(DeviceError::NotConnected {
        status: DeviceStatus::Disconnected,
    });
}

#[test]
fn telemetry_needs_a_calibration_after_the_first_connection() {
    given::<Device>([connected(OWNER_A, None, true)])
        .when(reading(metrics(Some(20.0), None, None)))
        .then_expect_error(DeviceError::CalibrationRequired { owner_id: OWNER_A });
}

#[test]
fn measurements_outside_the_sensor_range_are_rejected() {
    given::<Device>(ready())
        .when(reading(metrics(Some(125.5), None, None)))
        .then_expect_error(DeviceError::MeasurementOutOfRange {
            metric: "temperature",
            value: "125.5".into(),
            range: "-40..=125 celsius".into(),
        });
    given::<Device>(ready())
        .when(reading(metrics(Some(-41.0), None, None)))
        .then_expect_error(DeviceError::MeasurementOutOfRange {
            metric: "temperature",
            value: "-41".into(),
            range: "-40..=125 celsius".into(),
        });
    given::<Device>(ready())
        .when(reading(metrics(None, Some(-0.1), None)))
        .then_expect_error(DeviceError::MeasurementOutOfRange {
            metric: "vibration",
            value: "-0.1".into(),
            range: "0..=100 mm/s".into(),
        });
    given::<Device>(ready())
        .when(reading(metrics(None, Some(100.1), None)))
        .then_expect_error(DeviceError::MeasurementOutOfRange {
            metric: "vibration",
            value: "100.1".into(),
            range: "0..=100 mm/s".into(),
        });
    given::<Device>(ready())
        .when(reading(metrics(
            None,
            None,
            Some(OPERATING_HOURS_MAX_HOURS + 1),
        )))
        .then_expect_error(DeviceError::MeasurementOutOfRange {
            metric: "operating_hours",
            value: "1000001".into(),
            range: "0..=1000000 hours".into(),
        });
}

#[test]
fn nan_and_infinite_measurements_are_rejected() {
    given::<Device>(ready())
        .when(reading(metrics(Some(f64::NAN), None, None)))
        .then_expect_error(DeviceError::NonFiniteValue {
            field: "temperature",
        });
    given::<Device>(ready())
        .when(reading(metrics(None, Some(f64::INFINITY), None)))
        .then_expect_error(DeviceError::NonFiniteValue { field: "vibration" });
    given::<Device>(ready())
        .when(reading(metrics(Some(f64::NEG_INFINITY), None, None)))
        .then_expect_error(DeviceError::NonFiniteValue {
            field: "temperature",
        });
}

#[test]
fn operating_hours_never_decrease() {
    let history = ready_with([received(metrics(None, None, Some(500)))]);
    given::<Device>(history.clone())
        .when(reading(metrics(None, None, Some(499))))
        .then_expect_error(DeviceError::OperatingHoursDecreased {
            last: 500,
            reported: 499,
        });
    // Equal hours are accepted; a reading without hours keeps the last counter.
    given::<Device>(history.clone())
        .when(reading(metrics(None, None, Some(500))))
        .then_events(|events| assert_eq!(events.len(), 1));
    let mut later = history;
    later.push(received(metrics(Some(20.0), None, None)));
    let state = given::<Device>(later.clone())
        .when(reading(metrics(None, None, Some(501))))
        .then_events(|_| {});
    assert_eq!(state.last_operating_hours, Some(501));
    given::<Device>(later)
        .when(reading(metrics(None, None, Some(0))))
        .then_expect_error(DeviceError::OperatingHoursDecreased {
            last: 500,
            reported: 0,
        });
}

#[test]
fn operating_hours_survive_a_reconnect_and_an_owner_change() {
    given::<Device>(ready_with([
        received(metrics(None, None, Some(500))),
        disconnected(OWNER_A, DisconnectReason::Requested),
        connected(OWNER_B, Some(OWNER_A), true),
        calibrated(OWNER_B),
    ]))
    .when(reading(metrics(None, None, Some(10))))
    .then_expect_error(DeviceError::OperatingHoursDecreased {
        last: 500,
        reported: 10,
    });
}

#[test]
fn error_codes_in_a_reading_are_bounded() {
    let mut m = metrics(None, None, None);
    m.error_codes = vec!["E1".into(); ERROR_CODES_PER_READING_MAX];
    given::<Device>(ready())
        .when(reading(m.clone()))
        .then_expect_events([received(m)]);

    let mut m = metrics(None, None, None);
    m.error_codes = vec!["E1".into(); ERROR_CODES_PER_READING_MAX + 1];
    given::<Device>(ready())
        .when(reading(m))
        .then_expect_error(DeviceError::TooManyErrorCodes {
            count: ERROR_CODES_PER_READING_MAX + 1,
            max: ERROR_CODES_PER_READING_MAX,
        });

    let mut m = metrics(None, None, None);
    m.error_codes = vec!["E1".into(), "".into()];
    given::<Device>(ready())
        .when(reading(m))
        .then_expect_error(DeviceError::BlankText {
            field: "metrics.error_codes",
        });

    let mut m = metrics(None, None, None);
    m.error_codes = vec!["E".repeat(ERROR_CODE_MAX_BYTES + 1)];
    given::<Device>(ready())
        .when(reading(m))
        .then_expect_error(DeviceError::TextTooLong {
            field: "metrics.error_codes",
            max_bytes: ERROR_CODE_MAX_BYTES,
        });
}

// ------------------------------------------------------------------------------------------
// ReportError
// ------------------------------------------------------------------------------------------

#[test]
fn an_error_is_detected_and_counted_in_the_window() {
    let state = given::<Device>(ready())
        .at(at(100))
        .when(report("E001"))
        .then_expect_events([error_at(100, 1)]);
    assert_eq!(state.status, DeviceStatus::Connected);
    assert_eq!(state.errors_count, 1);
    assert_eq!(state.recent_error_times, vec![at(100)]);
}

#[test]
fn an_error_does_not_need_a_calibration_and_its_description_may_be_empty() {
    given::<Device>([connected(OWNER_A, None, true)])
        .when(ReportError {
            error_code: "E001".into(),
            description: String::new(),
        })
        .then_events(|events| assert_eq!(events.len(), 1));
}

#[test]
fn the_third_error_within_the_window_disconnects_the_device() {
    let now = at(REPEATED_ERRORS_WINDOW_SECONDS - 1);
    let state = given::<Device>(ready_with([error_at(0, 1), error_at(10, 2)]))
        .at(now)
        .when(report("E001"))
        .then_expect_events([
            DeviceErrorDetected {
                device_id: DEVICE,
                owner_id: OWNER_A,
                error_code: "E001".into(),
                description: "self-test failed".into(),
                errors_in_window: REPEATED_ERRORS_LIMIT_COUNT as u32,
                detected_at: now,
            }
            .into(),
            DeviceDisconnected {
                device_id: DEVICE,
                owner_id: OWNER_A,
                reason: DisconnectReason::RepeatedErrors,
                disconnected_at: now,
            }
            .into(),
        ]);
    assert_eq!(state.status, DeviceStatus::Disconnected);
    assert_eq!(
        state.last_disconnect_reason,
        Some(DisconnectReason::RepeatedErrors)
    );
    assert!(state.recent_error_times.is_empty());
    assert_eq!(state.errors_count, 3);
}

#[test]
fn errors_older_than_the_window_do_not_count() {
    // The first error is exactly one window old: outside (the window is strictly younger).
    given::<Device>(ready_with([error_at(0, 1), error_at(10, 2)]))
        .at(at(REPEATED_ERRORS_WINDOW_SECONDS))
        .when(report("E001"))
        .then_expect_events([error_at(REPEATED_ERRORS_WINDOW_SECONDS, 2)]);
}

#[test]
fn a_reconnect_starts_a_fresh_error_window() {
    given::<Device>(ready_with([
        error_at(0, 1),
        error_at(1, 2),
        disconnected(OWNER_A, DisconnectReason::ConnectionLost),
        connected(OWNER_A, Some(OWNER_A), false),
    ]))
    .at(at(2))
    .when(report("E001"))
    .then_expect_events([error_at(2, 1)]);
}

#[test]
fn errors_need_a_connected_device_and_a_code() {
    given_no_events::<Device>()
        .when(report("E001"))
        .then_expect_error(DeviceError::NotConnected {
            status: DeviceStatus::New,
        });
    given::<Device>(ready_with([disconnected(
        OWNER_A,
        DisconnectReason::Requested,
    )]))
    .when(report("E001"))
    .then_expect_error(DeviceError::NotConnected {
        status: DeviceStatus::Disconnected,
    });
    given::<Device>(ready())
        .when(report(" "))
        .then_expect_error(DeviceError::BlankText {
            field: "error_code",
        });
    given::<Device>(ready())
        .when(report(&"E".repeat(ERROR_CODE_MAX_BYTES + 1)))
        .then_expect_error(DeviceError::TextTooLong {
            field: "error_code",
            max_bytes: ERROR_CODE_MAX_BYTES,
        });
    given::<Device>(ready())
        .when(ReportError {
            error_code: "E001".into(),
            description: "x".repeat(ERROR_DESCRIPTION_MAX_BYTES + 1),
        })
        .then_expect_error(DeviceError::TextTooLong {
            field: "description",
            max_bytes: ERROR_DESCRIPTION_MAX_BYTES,
        });
}

// ------------------------------------------------------------------------------------------
// PredictFailure
// ------------------------------------------------------------------------------------------

#[test]
fn a_failure_prediction_is_published_for_the_owner() {
    let state = given::<Device>(ready())
        .when(prediction(0.873, 14))
        .then_expect_events([FailurePredicted {
            device_id: DEVICE,
            serial_number: SERIAL.into(),
            owner_id: OWNER_A,
            predicted_failure_type: "battery_degradation".into(),
            probability: Probability::from_ppm(873_000).unwrap(),
            estimated_days_to_failure: 14,
            recommended_action: "replace the battery".into(),
        }
        .into()]);
    assert_eq!(
        state.last_failure_probability,
        Probability::from_ppm(873_000)
    );
    assert_eq!(state.failure_predictions_count, 1);
}

#[test]
fn a_failure_prediction_is_accepted_for_a_disconnected_device_and_at_the_boundaries() {
    given::<Device>(ready_with([disconnected(
        OWNER_A,
        DisconnectReason::Unsupported,
    )]))
    .when(prediction(1.0, ESTIMATED_DAYS_TO_FAILURE_MAX_DAYS))
    .then_events(|events| assert_eq!(events.len(), 1));
    given::<Device>(ready())
        .when(prediction(0.0, 0))
        .then_events(|events| match events {
            [DeviceEvent::FailurePredicted(e)] => assert_eq!(e.probability, Probability::ZERO),
            other => panic!("unexpected {other:?}"),
        });
    // Stored to the nearest millionth.
    given::<Device>(ready())
        .when(prediction(0.123_456_7, 1))
        .then_events(|events| match events {
            [DeviceEvent::FailurePredicted(e)] => assert_eq!(e.probability.ppm(), 123_457),
            other => panic!("unexpected {other:?}"),
        });
}

#[test]
fn a_failure_prediction_needs_a_registered_device() {
    given_no_events::<Device>()
        .when(prediction(0.5, 10))
        .then_expect_error(DeviceError::NotRegistered);
}

#[test]
fn a_probability_outside_zero_to_one_is_rejected() {
    given::<Device>(ready())
        .when(prediction(1.01, 10))
        .then_expect_error(DeviceError::ProbabilityOutOfRange {
            value: "1.01".into(),
        });
    given::<Device>(ready())
        .when(prediction(-0.1, 10))
        .then_expect_error(DeviceError::ProbabilityOutOfRange {
            value: "-0.1".into(),
        });
    given::<Device>(ready())
        .when(prediction(f64::NAN, 10))
        .then_expect_error(DeviceError::NonFiniteValue {
            field: "probability",
        });
}

#[test]
fn a_forecast_beyond_the_limit_or_without_text_is_rejected() {
    given::<Device>(ready())
        .when(prediction(0.5, ESTIMATED_DAYS_TO_FAILURE_MAX_DAYS + 1))
        .then_expect_error(DeviceError::DaysToFailureOutOfRange {
            days: ESTIMATED_DAYS_TO_FAILURE_MAX_DAYS + 1,
            max_days: ESTIMATED_DAYS_TO_FAILURE_MAX_DAYS,
        });
    let mut cmd = prediction(0.5, 10);
    cmd.predicted_failure_type = String::new();
    given::<Device>(ready())
        .when(cmd)
        .then_expect_error(DeviceError::BlankText {
            field: "predicted_failure_type",
        });
    let mut cmd = prediction(0.5, 10);
    cmd.predicted_failure_type = "x".repeat(FAILURE_TYPE_MAX_BYTES + 1);
    given::<Device>(ready())
        .when(cmd)
        .then_expect_error(DeviceError::TextTooLong {
            field: "predicted_failure_type",
            max_bytes: FAILURE_TYPE_MAX_BYTES,
        });
    let mut cmd = prediction(0.5, 10);
    cmd.recommended_action = "\t".into();
    given::<Device>(ready())
        .when(cmd)
        .then_expect_error(DeviceError::BlankText {
            field: "recommended_action",
        });
    let mut cmd = prediction(0.5, 10);
    cmd.recommended_action = "x".repeat(RECOMMENDED_ACTION_MAX_BYTES + 1);
    given::<Device>(ready())
        .when(cmd)
        .then_expect_error(DeviceError::TextTooLong {
            field: "recommended_action",
            max_bytes: RECOMMENDED_ACTION_MAX_BYTES,
        });
}

// ------------------------------------------------------------------------------------------
// DisconnectDevice
// ------------------------------------------------------------------------------------------

#[test]
fn a_connected_device_disconnects_on_request() {
    for reason in [
        DisconnectReason::Requested,
        DisconnectReason::ConnectionLost,
        DisconnectReason::Unsupported,
    ] {
        let state = given::<Device>(ready_with([error_at(0, 1)]))
            .when(DisconnectDevice { reason })
            .then_expect_events([DeviceDisconnected {
                device_id: DEVICE,
                owner_id: OWNER_A,
                reason,
                disconnected_at: fixed_now(),
            }
            .into()]);
        assert_eq!(state.status, DeviceStatus::Disconnected);
        assert_eq!(state.last_disconnect_reason, Some(reason));
        assert!(state.recent_error_times.is_empty());
        // The calibration belongs to the owner, not to the connection.
        assert!(state.is_calibrated());
    }
}

#[test]
fn disconnecting_needs_a_connected_device() {
    given_no_events::<Device>()
        .when(DisconnectDevice {
            reason: DisconnectReason::Requested,
        })
        .then_expect_error(DeviceError::NotConnected {
            status: DeviceStatus::New,
        });
    given::<Device>(ready_with([disconnected(
        OWNER_A,
        DisconnectReason::Requested,
    )]))
    .when(DisconnectDevice {
        reason: DisconnectReason::Requested,
    })
    .then_expect_error(DeviceError::NotConnected {
        status: DeviceStatus::Disconnected,
    });
}

#[test]
fn the_repeated_errors_reason_is_reserved_for_the_automatic_rule() {
    given::<Device>(ready())
        .when(DisconnectDevice {
            reason: DisconnectReason::RepeatedErrors,
        })
        .then_expect_error(DeviceError::ReservedDisconnectReason);
}

// ------------------------------------------------------------------------------------------
// Lifecycle table, invariants, probability
// ------------------------------------------------------------------------------------------

#[test]
fn the_lifecycle_table_allows_exactly_the_documented_transitions() {
    use DeviceStatus::*;
    let all = [New, Connected, Disconnected];
    let allowed = [
        (New, Connected),
        (Connected, Connected),
        (Connected, Disconnected),
        (Disconnected, Connected),
        (Disconnected, Disconnected),
    ];
    assert_transition_table(&all, &allowed, can_transition);
}

#[test]
fn check_invariants_reports_broken_states() {
    let good = Device::replay(DeviceState::default(), &ready());
    assert_eq!(Device::check_invariants(&good), Ok(()));
    assert_eq!(Device::check_invariants(&DeviceState::default()), Ok(()));

    let mut s = good.clone();
    s.device = None;
    assert!(
        Device::check_invariants(&s).is_err(),
        "connected without identity"
    );

    let s = DeviceState {
        telemetry_count: 1,
        ..DeviceState::default()
    };
    assert!(Device::check_invariants(&s).is_err(), "new with history");

    let mut s = good.clone();
    s.calibrated_owner_id = Some(OWNER_B);
    assert!(
        Device::check_invariants(&s).is_err(),
        "calibrated for another owner"
    );

    let mut s = good.clone();
    s.recent_error_times = vec![at(0); REPEATED_ERRORS_LIMIT_COUNT];
    s.errors_count = 10;
    assert!(
        Device::check_invariants(&s).is_err(),
        "error window over the limit"
    );

    let mut s = good.clone();
    s.recent_error_times = vec![at(0)];
    assert!(
        Device::check_invariants(&s).is_err(),
        "window larger than the error count"
    );

    let mut s = Device::replay(
        DeviceState::default(),
        &ready_with([disconnected(OWNER_A, DisconnectReason::Requested)]),
    );
    s.recent_error_times = vec![at(0)];
    s.errors_count = 1;
    assert!(
        Device::check_invariants(&s).is_err(),
        "open window while disconnected"
    );

    let mut s = good.clone();
    s.telemetry_count = 1;
    s.last_temperature_celsius = Some(TEMPERATURE_MAX_CELSIUS + 1.0);
    assert!(
        Device::check_invariants(&s).is_err(),
        "temperature out of range"
    );

    let mut s = good.clone();
    s.telemetry_count = 1;
    s.last_vibration_mm_per_s = Some(f64::NAN);
    assert!(Device::check_invariants(&s).is_err(), "NaN vibration");

    let mut s = good.clone();
    s.telemetry_count = 1;
    s.last_operating_hours = Some(OPERATING_HOURS_MAX_HOURS + 1);
    assert!(Device::check_invariants(&s).is_err(), "hours out of range");

    let mut s = good.clone();
    s.last_operating_hours = Some(1);
    assert!(
        Device::check_invariants(&s).is_err(),
        "last value without telemetry"
    );

    let mut s = good.clone();
    s.last_failure_probability = Some(Probability::ONE);
    assert!(
        Device::check_invariants(&s).is_err(),
        "probability without a prediction"
    );

    let mut s = good.clone();
    s.calibrations_count = 0;
    assert!(
        Device::check_invariants(&s).is_err(),
        "calibrated without a calibration"
    );

    let mut s = good.clone();
    s.connections_count = 0;
    assert!(
        Device::check_invariants(&s).is_err(),
        "registered without a connection"
    );

    let mut s = good;
    s.status = DeviceStatus::Disconnected;
    assert!(
        Device::check_invariants(&s).is_err(),
        "disconnected without a reason"
    );
}

#[test]
fn probability_is_fixed_point_parts_per_million() {
    assert_eq!(Probability::from_f64(0.5), Probability::from_ppm(500_000));
    assert_eq!(Probability::from_f64(1.0), Some(Probability::ONE));
    assert_eq!(Probability::from_f64(0.999_999_9), Some(Probability::ONE));
    assert_eq!(Probability::from_f64(-0.0), Some(Probability::ZERO));
    assert_eq!(Probability::from_f64(1.000_001), None);
    assert_eq!(Probability::from_f64(f64::NAN), None);
    assert_eq!(Probability::from_ppm(1_000_001), None);
    assert_eq!(Probability::from_ppm(873_000).unwrap().as_f64(), 0.873);
    assert_eq!(Probability::from_ppm(1).unwrap().to_string(), "0.000001");
}
