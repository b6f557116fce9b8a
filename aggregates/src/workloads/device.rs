//! The demo workload of [`Device`]: a plausible next command for an aggregate in any state.

use crate::device::*;
use evershard_model::{DecideContext, DemoRng, Workload};
use uuid::Uuid;
const DEMO_FIRMWARE_VERSIONS: [&str; 3] = ["1.0.0", "1.2.1", "2.0.0"];
const DEMO_FAILURE_TYPES: [&str; 3] = ["battery_degradation", "sensor_drift", "overheating"];

impl Workload for Device {
    /// Drives a device through its whole lifecycle: connect, calibrate, a long stream of
    /// readings, errors (sometimes three in a row, which disconnect it), predictions,
    /// disconnects and reconnects, sometimes by a new owner (which forces recalibration).
    /// About one command in twenty is rejected on purpose (bad ranges, falling hours,
    /// telemetry while disconnected or uncalibrated).
    fn sample_command(
        state: &DeviceState,
        ctx: &DecideContext,
        rng: &mut DemoRng,
    ) -> DeviceCommand {
        match (state.status, &state.device) {
            (DeviceStatus::Connected, Some(device)) => sample_connected(state, device, rng),
            (_, Some(device)) => sample_disconnected(device, rng),
            (_, None) => sample_new(ctx, rng),
        }
    }
}

fn demo_certifications(rng: &mut DemoRng) -> Vec<Certification> {
    match rng.below(20) {
        0 => vec![], // rejected: NotCertified
        1..=9 => vec![Certification::Ce],
        10..=14 => vec![Certification::Fda],
        _ => vec![Certification::Ce, Certification::Fda],
    }
}

fn sample_new(ctx: &DecideContext, rng: &mut DemoRng) -> DeviceCommand {
    let device_id = Uuid::parse_str(&ctx.aggregate_id).unwrap_or_else(|_| rng.uuid());
    ConnectDevice {
        device_id,
        serial_number: format!("SN-{:08}", rng.below(100_000_000)),
        model_id: rng.uuid(),
        firmware_version: (*rng.pick(&DEMO_FIRMWARE_VERSIONS)).to_owned(),
        owner_id: rng.uuid(),
        certifications: demo_certifications(rng),
    }
    .into()
}

fn sample_disconnected(device: &DeviceRecord, rng: &mut DemoRng) -> DeviceCommand {
    match rng.below(100) {
        0..=69 => ConnectDevice {
            device_id: device.device_id,
            serial_number: device.serial_number.clone(),
            model_id: device.model_id,
            firmware_version: (*rng.pick(&DEMO_FIRMWARE_VERSIONS)).to_owned(),
            // A handover to a new user now and then: recalibration follows.
            owner_id: if rng.chance(30) {
                rng.uuid()
            } else {
                device.owner_id
            },
            certifications: demo_certifications(rng),
        }
        .into(),
        70..=84 => sample_prediction(rng),
        // Rejected: not connected.
        85..=94 => sample_reading(None, rng),
        _ => DisconnectDevice {
            reason: DisconnectReason::Requested,
        }
        .into(),
    }
}

fn sample_connected(
    state: &DeviceState,
    device: &DeviceRecord,
    rng: &mut DemoRng,
) -> DeviceCommand {
    if !state.is_calibrated() {
        return match rng.below(100) {
            0..=84 => sample_calibration(device.owner_id, rng),
            // Rejected: calibration required.
            85..=94 => sample_reading(state.last_operating_hours, rng),
            _ => DisconnectDevice {
                reason: DisconnectReason::Requested,
            }
            .into(),
        };
    }
    match rng.below(100) {
        0..=79 => sample_reading(state.last_operating_hours, rng),
        80..=87 => ReportError {
            error_code: format!("E{:03}", rng.below(20)),
            description: "sensor self-test failed".to_owned(),
        }
        .into(),
        88..=92 => sample_prediction(rng),
        93..=95 => sample_calibration(device.owner_id, rng),
        _ => DisconnectDevice {
            reason: *rng.pick(&[
                DisconnectReason::Requested,
                DisconnectReason::ConnectionLost,
                DisconnectReason::Unsupported,
            ]),
        }
        .into(),
    }
}

fn sample_calibration(owner_id: Uuid, rng: &mut DemoRng) -> DeviceCommand {
    let temperature_offset_celsius = if rng.chance(5) {
        9.5 // rejected: outside ±5 °C
    } else {
        rng.range(-20, 20) as f64 / 10.0
    };
    CalibrateDevice {
        owner_id,
        temperature_offset_celsius,
        vibration_scale_factor: rng.range(80, 120) as f64 / 100.0,
    }
    .into()
}

fn sample_reading(last_hours: Option<u64>, rng: &mut DemoRng) -> DeviceCommand {
    let last = last_hours.unwrap_or(0);
    let operating_hours = match rng.below(50) {
        0 if last > 0 => last - 1, // rejected: hours decreased
        _ => last.saturating_add(rng.below(3)),
    };
    let temperature = if rng.chance(2) {
        180.0 // rejected: outside the sensor range
    } else {
        rng.range(200, 450) as f64 / 10.0
    };
    RecordTelemetry {
        firmware_version: if rng.chance(1) {
            Some("2.1.0".to_owned())
        } else {
            None
        },
        metrics: TelemetryMetrics {
            temperature: Some(temperature),
            vibration: if rng.chance(80) {
                Some(rng.range(0, 150) as f64 / 10.0)
            } else {
                None
            },
            operating_hours: Some(operating_hours),
            error_codes: if rng.chance(5) {
                vec!["W017".to_owned()]
            } else {
                vec![]
            },
        },
    }
    .into()
}

fn sample_prediction(rng: &mut DemoRng) -> DeviceCommand {
    PredictFailure {
        predicted_failure_type: (*rng.pick(&DEMO_FAILURE_TYPES)).to_owned(),
        probability: if rng.chance(3) {
            1.5
        } else {
            rng.range(0, 1000) as f64 / 1000.0
        },
        estimated_days_to_failure: rng.range(1, 365) as u32,
        recommended_action: "schedule a service visit".to_owned(),
    }
    .into()
}
