//! `Device`: one connected medical-electronics device and its telemetry stream.
//!
//! Seeds: `functional-architecture-ddd.md` section 3.1 (the `Device` aggregate: connection,
//! calibration per user, range validation per sensor, automatic disconnection of faulty
//! devices) and `domain-events-catalog.md` ("Производство медицинской электроники": the
//! `TelemetryReceived` and `FailurePredicted` contracts).
//!
//! # Commands and events
//!
//! | Command              | Events (on success)                                   | Topic                   |
//! |----------------------|-------------------------------------------------------|-------------------------|
//! | [`ConnectDevice`]    | [`DeviceConnected`]                                   | `electronics.telemetry` |
//! | [`CalibrateDevice`]  | [`DeviceCalibrated`]                                  | `electronics.telemetry` |
//! | [`RecordTelemetry`]  | [`TelemetryReceived`]                                 | `electronics.telemetry` |
//! | [`ReportError`]      | [`DeviceErrorDetected`] (+ [`DeviceDisconnected`])    | `electronics.alerts` (+ telemetry) |
//! | [`PredictFailure`]   | [`FailurePredicted`]                                  | `electronics.alerts`    |
//! | [`DisconnectDevice`] | [`DeviceDisconnected`]                                | `electronics.telemetry` |
//!
//! The catalog names only two topics for devices. The lifecycle facts (`DeviceConnected`,
//! `DeviceCalibrated`, `DeviceDisconnected`) go to `electronics.telemetry`, because a consumer
//! of the reading stream must see them in order with the readings (the record key is the
//! aggregate id, so one topic keeps one device's order). `DeviceErrorDetected` is a warning
//! for people ("генерация предупреждения") and goes to `electronics.alerts` with
//! `FailurePredicted`.
//!
//! # Lifecycle
//!
//! | From \ To        | `new` | `connected`                     | `disconnected`                     |
//! |------------------|-------|---------------------------------|------------------------------------|
//! | `new`            | -     | `DeviceConnected`               | -                                  |
//! | `connected`      | -     | calibration, telemetry, error, prediction | `DeviceDisconnected` (requested or 3rd error) |
//! | `disconnected`   | -     | `DeviceConnected` (reconnect, maybe new owner) | `FailurePredicted`     |
//!
//! [`can_transition`] is this table as code. Calibration is not a status but a fact about
//! the current owner ([`DeviceState::calibrated_owner_id`]), because it survives a
//! disconnect and is lost only by a change of owner.
//!
//! # Rules (all in `decide`)
//!
//! - **Connection.** A device connects from `new` or `disconnected`; connecting a connected
//!   device is rejected. The first connection registers the identity (device id, serial
//!   number, model); a reconnect must present the same identity. If the aggregate id is a
//!   UUID, the device id must be that UUID. The firmware version may change between
//!   connections. A device must declare at least one medical certification (CE, FDA: 3.1
//!   "подтверждение соответствия медицинским стандартам"); duplicates are dropped and the
//!   list is stored sorted.
//! - **Owner and calibration.** Calibration is per user (3.1: "калибровка датчиков под
//!   индивидуальные характеристики пользователя", "повторная калибровка при смене
//!   пользователя"). The owner changes by reconnecting with another `owner_id`
//!   (`DeviceConnected.previous_owner_id` records the former owner). A device is calibrated
//!   only for the owner it was calibrated for: the first connection, and every connection
//!   with a new owner, has `calibration_required = true`, and **telemetry is rejected with
//!   [`DeviceError::CalibrationRequired`] until a `DeviceCalibrated` for the current owner**.
//!   A reconnect by the same owner keeps a valid calibration. A calibration names the owner
//!   it was made for; one for another owner is rejected (a late calibration of the previous
//!   user must not validate the new one). Calibration only while connected; recalibration of
//!   a calibrated device is allowed.
//! - **Calibration coefficients.** The temperature offset is within
//!   ±[`CALIBRATION_TEMPERATURE_OFFSET_MAX_CELSIUS`]; the vibration scale factor is within
//!   [`CALIBRATION_VIBRATION_SCALE_MIN`]..=[`CALIBRATION_VIBRATION_SCALE_MAX`]. They are
//!   recorded, not applied: readings are published as the device reports them.
//! - **Telemetry** only from a connected, calibrated device. Each metric is optional (a
//!   sensor the model lacks is `null`); a reading with no metric at all is a heartbeat and
//!   is accepted. A value outside its sensor's range is rejected: temperature
//!   [`TEMPERATURE_MIN_CELSIUS`]..=[`TEMPERATURE_MAX_CELSIUS`] °C (the range of the
//!   electronics-grade sensor), vibration [`VIBRATION_MIN_MM_PER_S`]..=
//!   [`VIBRATION_MAX_MM_PER_S`] mm/s RMS (ISO 10816 velocity), operating hours
//!   0..=[`OPERATING_HOURS_MAX_HOURS`]. NaN and infinities are rejected before the range
//!   check. **Operating hours never decrease**: a reading with fewer hours than the last
//!   recorded one is rejected; equal hours are accepted. At most
//!   [`ERROR_CODES_PER_READING_MAX`] error codes per reading, each non-blank and at most
//!   [`ERROR_CODE_MAX_BYTES`] bytes. A reading may report a new firmware version (an
//!   over-the-air update); the device record follows it.
//! - **Errors and automatic disconnection.** Errors are reported only while connected. The
//!   error that is the [`REPEATED_ERRORS_LIMIT_COUNT`]-th within
//!   [`REPEATED_ERRORS_WINDOW_SECONDS`] (counting back from `ctx.now`, strictly younger than
//!   the window) disconnects the device: that command emits `DeviceErrorDetected` and
//!   `DeviceDisconnected { reason: repeated_errors }` together. The window covers the
//!   current connection only: connecting or disconnecting starts it afresh.
//!   *Chosen:* only `ReportError` counts. The `error_codes` of a telemetry reading are the
//!   sensor's diagnostic codes as the catalog publishes them (`TelemetryReceived.metrics`),
//!   kept and published as reported; a device (or its gateway) that detects a fault reports
//!   it with `ReportError`, which is what `DeviceErrorDetected` and the automatic
//!   disconnection follow. Counting both would count one fault twice whenever a device
//!   reports it both ways. The reason
//!   `repeated_errors` is reserved for this rule; a `DisconnectDevice` command carrying it
//!   is rejected. `ReportError` does not require a calibration (an uncalibrated device can
//!   still fail).
//! - **Failure prediction** (an AI model's output) for any registered device, connected or
//!   not (it works on history). Probability within 0..=1, finite; estimated days to failure
//!   at most [`ESTIMATED_DAYS_TO_FAILURE_MAX_DAYS`]; failure type and recommended action
//!   non-blank.
//! - Every text field has a byte limit (the `*_MAX_BYTES` constants) and, except an error's
//!   description, must not be blank.
//!
//! # Numbers
//!
//! Physical measurements and calibration coefficients are `f64` (the sensors report binary
//! floats; no money-style exactness is needed), never NaN or infinite, and are published as
//! JSON numbers: the catalog's `decimal` for temperature and vibration is a JSON number
//! here, as `docs/domain.md` allows. A failure probability is fixed point,
//! [`Probability`] in parts per million (`u32`), stored as an integer and published as a
//! JSON number in 0..=1 (`0.873`). Operating hours and days are integers.
//!
//! # State and volume
//!
//! Devices are the high-volume stream (thousands of readings per device), so
//! [`DeviceState`] keeps only the last values and counters, never a list of readings. Its
//! one vector, the error window, holds at most `REPEATED_ERRORS_LIMIT_COUNT - 1` times.
//! Applying a reading touches a few fields and clones no string unless the firmware changed.
//!
//! # Invariants ([`Device::check_invariants`])
//!
//! 1. `status == new` exactly when no device is registered (`device` is `None`).
//! 2. `calibrated_owner_id` is `None` or the current owner.
//! 3. The error window holds fewer than `REPEATED_ERRORS_LIMIT_COUNT` times, and none unless
//!    the device is connected.
//! 4. Last temperature, vibration and operating hours are within their sensor ranges and
//!    finite; the last failure probability is within 0..=1.
//! 5. A new device has no counters and no last values; a last value implies a reading, a
//!    calibration implies a calibration count, a registered device has at least one
//!    connection, and the error count covers the error window.
//! 6. A disconnected device records why it was disconnected.

use chrono::{DateTime, Duration, Utc};
use evershard_model::{from_variants, Aggregate, DecideContext, DomainEvent};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Limits. Units are in the names.
// ---------------------------------------------------------------------------------------------

/// Lowest temperature the device's sensor measures, in degrees Celsius.
pub const TEMPERATURE_MIN_CELSIUS: f64 = -40.0;
/// Highest temperature the device's sensor measures, in degrees Celsius.
pub const TEMPERATURE_MAX_CELSIUS: f64 = 125.0;
/// Lowest vibration (RMS velocity) the sensor measures, in millimetres per second.
pub const VIBRATION_MIN_MM_PER_S: f64 = 0.0;
/// Highest vibration (RMS velocity) the sensor measures, in millimetres per second.
pub const VIBRATION_MAX_MM_PER_S: f64 = 100.0;
/// Highest operating-hours counter accepted (about 114 years), in hours.
pub const OPERATING_HOURS_MAX_HOURS: u64 = 1_000_000;
/// Largest calibration temperature offset in either direction, in degrees Celsius.
pub const CALIBRATION_TEMPERATURE_OFFSET_MAX_CELSIUS: f64 = 5.0;
/// Smallest calibration scale factor for vibration (dimensionless ratio).
pub const CALIBRATION_VIBRATION_SCALE_MIN: f64 = 0.5;
/// Largest calibration scale factor for vibration (dimensionless ratio).
pub const CALIBRATION_VIBRATION_SCALE_MAX: f64 = 2.0;
/// The error that is this many within the window disconnects the device (count of errors).
pub const REPEATED_ERRORS_LIMIT_COUNT: usize = 3;
/// The window repeated errors are counted in, in seconds (10 minutes).
pub const REPEATED_ERRORS_WINDOW_SECONDS: i64 = 600;
/// Longest failure forecast accepted, in days (10 years).
pub const ESTIMATED_DAYS_TO_FAILURE_MAX_DAYS: u32 = 3_650;
/// Most error codes one reading may carry.
pub const ERROR_CODES_PER_READING_MAX: usize = 16;
/// Longest serial number, in UTF-8 bytes.
pub const SERIAL_NUMBER_MAX_BYTES: usize = 64;
/// Longest firmware version string, in UTF-8 bytes.
pub const FIRMWARE_VERSION_MAX_BYTES: usize = 32;
/// Longest error code, in UTF-8 bytes.
pub const ERROR_CODE_MAX_BYTES: usize = 64;
/// Longest error description, in UTF-8 bytes.
pub const ERROR_DESCRIPTION_MAX_BYTES: usize = 1_024;
/// Longest predicted failure type, in UTF-8 bytes.
pub const FAILURE_TYPE_MAX_BYTES: usize = 128;
/// Longest recommended action, in UTF-8 bytes.
pub const RECOMMENDED_ACTION_MAX_BYTES: usize = 1_024;

/// Topic of readings and of the connection lifecycle.
pub const TELEMETRY_TOPIC: &str = "electronics.telemetry";
/// Topic of warnings: detected errors and failure predictions.
pub const ALERTS_TOPIC: &str = "electronics.alerts";

// ---------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------

/// Where a device is in its lifecycle. Stored: append-only.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Never connected: no identity yet.
    #[default]
    New,
    Connected,
    Disconnected,
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceStatus::New => "new",
            DeviceStatus::Connected => "connected",
            DeviceStatus::Disconnected => "disconnected",
        })
    }
}

/// The lifecycle as a transition table: may an accepted command move a device from `from` to
/// `to`? Self-transitions are the commands that keep the status (readings, calibrations,
/// errors below the limit, predictions).
pub fn can_transition(from: DeviceStatus, to: DeviceStatus) -> bool {
    use DeviceStatus::*;
    match (from, to) {
        (New, Connected) => true,
        (Connected, Connected) => true,
        (Connected, Disconnected) => true,
        (Disconnected, Connected) => true,
        (Disconnected, Disconnected) => true,
        (New, New) | (New, Disconnected) | (Connected, New) | (Disconnected, New) => false,
    }
}

/// A medical-device certification (3.1: CE, FDA). Stored: append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Certification {
    #[serde(rename = "CE")]
    Ce,
    #[serde(rename = "FDA")]
    Fda,
}

/// Why a device was disconnected. Stored: append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The user or an operator disconnected it.
    Requested,
    /// The link (Bluetooth, ANT+) was lost.
    ConnectionLost,
    /// The device or its firmware is no longer supported.
    Unsupported,
    /// Automatic: the [`REPEATED_ERRORS_LIMIT_COUNT`]-th error within the window. Only the
    /// error rule emits it.
    RepeatedErrors,
}

/// A probability in 0..=1, fixed point in parts per million.
///
/// Binary (journal, snapshots): the `u32` of parts per million. JSON: a number in 0..=1
/// (`0.873`); JSON input is rounded to the nearest millionth and refused outside 0..=1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probability(u32);

impl Probability {
    /// Parts per million of certainty.
    pub const PARTS_PER_MILLION_MAX: u32 = 1_000_000;
    pub const ZERO: Probability = Probability(0);
    pub const ONE: Probability = Probability(Self::PARTS_PER_MILLION_MAX);

    /// `None` above one million parts per million.
    pub const fn from_ppm(ppm: u32) -> Option<Probability> {
        if ppm <= Self::PARTS_PER_MILLION_MAX {
            Some(Probability(ppm))
        } else {
            None
        }
    }

    /// Rounds to the nearest millionth; `None` for NaN, infinities and values outside 0..=1.
    pub fn from_f64(value: f64) -> Option<Probability> {
        if !value.is_finite() || !(0.0..=1.0).contains(&value) {
            return None;
        }
        // In 0..=1e6 after the range check, so the cast neither truncates nor saturates.
        let ppm = (value * f64::from(Self::PARTS_PER_MILLION_MAX)).round() as u32;
        Probability::from_ppm(ppm)
    }

    pub const fn ppm(self) -> u32 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        // Division is correctly rounded: the result is the double nearest to ppm/10^6, which
        // serde_json prints as that short decimal.
        f64::from(self.0) / f64::from(Self::PARTS_PER_MILLION_MAX)
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_f64())
    }
}

impl Serialize for Probability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_f64(self.as_f64())
        } else {
            serializer.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Probability, D::Error> {
        if deserializer.is_human_readable() {
            let value = f64::deserialize(deserializer)?;
            Probability::from_f64(value).ok_or_else(|| {
                de::Error::custom(format!("probability {value} is not a number in 0..=1"))
            })
        } else {
            let ppm = u32::deserialize(deserializer)?;
            Probability::from_ppm(ppm).ok_or_else(|| {
                de::Error::custom(format!("probability {ppm} ppm is above one million"))
            })
        }
    }
}

/// The `metrics` object of `TelemetryReceived` (catalog contract). Every metric is
/// optional: `null` when the device has no such sensor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TelemetryMetrics {
    /// Degrees Celsius, [`TEMPERATURE_MIN_CELSIUS`]..=[`TEMPERATURE_MAX_CELSIUS`].
    pub temperature: Option<f64>,
    /// RMS velocity in mm/s, [`VIBRATION_MIN_MM_PER_S`]..=[`VIBRATION_MAX_MM_PER_S`].
    pub vibration: Option<f64>,
    /// The device's operating-hours counter; never decreases.
    pub operating_hours: Option<u64>,
    /// Error codes the device reports with this reading (may be empty).
    pub error_codes: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Events (payload structs: their serde JSON form is the outbound payload)
// ---------------------------------------------------------------------------------------------

/// A reading from a connected, calibrated device. Catalog contract; topic
/// `electronics.telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryReceived {
    pub device_id: Uuid,
    pub serial_number: String,
    pub model_id: Uuid,
    pub firmware_version: String,
    pub metrics: TelemetryMetrics,
    pub owner_id: Uuid,
}

/// An AI model predicted a likely failure. Catalog contract; topic `electronics.alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailurePredicted {
    pub device_id: Uuid,
    pub serial_number: String,
    pub owner_id: Uuid,
    pub predicted_failure_type: String,
    /// JSON number in 0..=1.
    pub probability: Probability,
    pub estimated_days_to_failure: u32,
    pub recommended_action: String,
}

/// The device connected (first pairing or reconnect). Topic `electronics.telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceConnected {
    pub device_id: Uuid,
    pub serial_number: String,
    pub model_id: Uuid,
    pub firmware_version: String,
    pub owner_id: Uuid,
    /// The owner before this connection; `null` on the first connection.
    pub previous_owner_id: Option<Uuid>,
    /// Sorted, without duplicates, never empty.
    pub certifications: Vec<Certification>,
    /// True when the device is not calibrated for `owner_id`: telemetry waits for a
    /// `DeviceCalibrated` ("DeviceConnected → начало калибровки").
    pub calibration_required: bool,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub connected_at: DateTime<Utc>,
}

/// The device was calibrated for its current owner. Topic `electronics.telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCalibrated {
    pub device_id: Uuid,
    pub owner_id: Uuid,
    /// Added to raw temperature by consumers that correct readings; degrees Celsius.
    pub temperature_offset_celsius: f64,
    /// Multiplies raw vibration for consumers that correct readings; dimensionless.
    pub vibration_scale_factor: f64,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub calibrated_at: DateTime<Utc>,
}

/// The device was disconnected, on request or automatically. Topic `electronics.telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDisconnected {
    pub device_id: Uuid,
    pub owner_id: Uuid,
    pub reason: DisconnectReason,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub disconnected_at: DateTime<Utc>,
}

/// The device reported a malfunction. Topic `electronics.alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceErrorDetected {
    pub device_id: Uuid,
    pub owner_id: Uuid,
    pub error_code: String,
    /// Free text; may be empty.
    pub description: String,
    /// Errors within [`REPEATED_ERRORS_WINDOW_SECONDS`] including this one; at
    /// [`REPEATED_ERRORS_LIMIT_COUNT`] the device is disconnected in the same command.
    pub errors_in_window: u32,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub detected_at: DateTime<Utc>,
}

/// Every event of a device. Stored: variants are append-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(topic = TELEMETRY_TOPIC, version = "1.0")]
pub enum DeviceEvent {
    TelemetryReceived(TelemetryReceived),
    #[event(topic = ALERTS_TOPIC)]
    FailurePredicted(FailurePredicted),
    DeviceConnected(DeviceConnected),
    DeviceCalibrated(DeviceCalibrated),
    DeviceDisconnected(DeviceDisconnected),
    #[event(topic = ALERTS_TOPIC)]
    DeviceErrorDetected(DeviceErrorDetected),
}

from_variants!(DeviceEvent:
    TelemetryReceived,
    FailurePredicted,
    DeviceConnected,
    DeviceCalibrated,
    DeviceDisconnected,
    DeviceErrorDetected,
);

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Connect (pair) the device: first registration, reconnect, or handover to a new owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectDevice {
    pub device_id: Uuid,
    pub serial_number: String,
    pub model_id: Uuid,
    pub firmware_version: String,
    pub owner_id: Uuid,
    pub certifications: Vec<Certification>,
}

/// Calibrate the sensors for `owner_id`, who must be the current owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrateDevice {
    pub owner_id: Uuid,
    pub temperature_offset_celsius: f64,
    pub vibration_scale_factor: f64,
}

/// One reading from the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordTelemetry {
    /// The firmware the device reports, if it reports one; `None` keeps the known version.
    pub firmware_version: Option<String>,
    pub metrics: TelemetryMetrics,
}

/// The device (or its monitoring) reports a malfunction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportError {
    pub error_code: String,
    pub description: String,
}

/// An AI model's failure forecast for the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictFailure {
    pub predicted_failure_type: String,
    /// In 0..=1; stored rounded to the nearest millionth.
    pub probability: f64,
    pub estimated_days_to_failure: u32,
    pub recommended_action: String,
}

/// Disconnect the device. `RepeatedErrors` is reserved for the automatic rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisconnectDevice {
    pub reason: DisconnectReason,
}

/// Every command a device accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeviceCommand {
    Connect(ConnectDevice),
    Calibrate(CalibrateDevice),
    RecordTelemetry(RecordTelemetry),
    ReportError(ReportError),
    PredictFailure(PredictFailure),
    Disconnect(DisconnectDevice),
}

from_variants!(DeviceCommand {
    Connect(ConnectDevice),
    Calibrate(CalibrateDevice),
    RecordTelemetry(RecordTelemetry),
    ReportError(ReportError),
    PredictFailure(PredictFailure),
    Disconnect(DisconnectDevice),
});

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a device command was rejected. A rejected command writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    #[error("the device is {status}, not connected")]
    NotConnected { status: DeviceStatus },
    #[error("the device is already connected; disconnect it first")]
    AlreadyConnected,
    #[error("the device was never connected, so it has no identity or owner yet")]
    NotRegistered,
    #[error("device id {got} does not match the device's id {expected}")]
    DeviceIdMismatch { expected: Uuid, got: Uuid },
    #[error("serial number {got:?} does not match the registered {registered:?}")]
    SerialNumberMismatch { registered: String, got: String },
    #[error("model {got} does not match the registered model {registered}")]
    ModelMismatch { registered: Uuid, got: Uuid },
    #[error("the device declares no medical certification (CE or FDA)")]
    NotCertified,
    #[error("{field} must not be blank")]
    BlankText { field: &'static str },
    #[error("{field} is longer than {max_bytes} bytes")]
    TextTooLong {
        field: &'static str,
        max_bytes: usize,
    },
    #[error("the device is not calibrated for its owner {owner_id}: calibrate it first")]
    CalibrationRequired { owner_id: Uuid },
    #[error("owner {got} is not the device's current owner {owner_id}")]
    OwnerMismatch { owner_id: Uuid, got: Uuid },
    #[error("{field} is not a finite number")]
    NonFiniteValue { field: &'static str },
    #[error("{metric} {value} is outside the sensor range {range}")]
    MeasurementOutOfRange {
        metric: &'static str,
        value: String,
        range: String,
    },
    #[error("operating hours decreased from {last} to {reported}")]
    OperatingHoursDecreased { last: u64, reported: u64 },
    #[error("{count} error codes in one reading; at most {max} are accepted")]
    TooManyErrorCodes { count: usize, max: usize },
    #[error("calibration {coefficient} {value} is outside {range}")]
    CalibrationOutOfRange {
        coefficient: &'static str,
        value: String,
        range: String,
    },
    #[error("failure probability {value} is outside 0..=1")]
    ProbabilityOutOfRange { value: String },
    #[error("{days} days to failure is beyond the {max_days}-day forecast limit")]
    DaysToFailureOutOfRange { days: u32, max_days: u32 },
    #[error("disconnect reason repeated_errors is reserved for the automatic error rule")]
    ReservedDisconnectReason,
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// Who the device is and who uses it, known from the first connection on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: Uuid,
    pub serial_number: String,
    pub model_id: Uuid,
    pub firmware_version: String,
    pub owner_id: Uuid,
}

/// What the rules need: identity, status, calibration, last values and counters. Small and
/// bounded whatever the number of readings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceState {
    pub status: DeviceStatus,
    /// `None` until the first connection.
    pub device: Option<DeviceRecord>,
    /// The owner the sensors are calibrated for; telemetry needs it to be the current owner.
    pub calibrated_owner_id: Option<Uuid>,
    #[serde(with = "evershard_model::codec::timestamp::option")]
    pub last_calibrated_at: Option<DateTime<Utc>>,
    /// The highest (= last reported) operating-hours counter.
    pub last_operating_hours: Option<u64>,
    pub last_temperature_celsius: Option<f64>,
    pub last_vibration_mm_per_s: Option<f64>,
    /// Times of the latest errors of this connection, at most
    /// `REPEATED_ERRORS_LIMIT_COUNT - 1`, oldest first.
    pub recent_error_times: Vec<DateTime<Utc>>,
    pub last_failure_probability: Option<Probability>,
    pub last_disconnect_reason: Option<DisconnectReason>,
    pub connections_count: u64,
    pub calibrations_count: u64,
    pub telemetry_count: u64,
    pub errors_count: u64,
    pub failure_predictions_count: u64,
}

impl DeviceState {
    /// True when telemetry from the current owner is accepted (calibration-wise).
    pub fn is_calibrated(&self) -> bool {
        match (&self.device, self.calibrated_owner_id) {
            (Some(device), Some(owner)) => device.owner_id == owner,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The aggregate
// ---------------------------------------------------------------------------------------------

/// The `Device` aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Device;

impl Aggregate for Device {
    const TYPE: &'static str = "Device";

    type State = DeviceState;
    type Command = DeviceCommand;
    type Event = DeviceEvent;
    type Error = DeviceError;

    fn decide(
        state: &DeviceState,
        command: &DeviceCommand,
        ctx: &DecideContext,
    ) -> Result<Vec<DeviceEvent>, DeviceError> {
        match command {
            DeviceCommand::Connect(c) => decide_connect(state, c, ctx),
            DeviceCommand::Calibrate(c) => decide_calibrate(state, c, ctx),
            DeviceCommand::RecordTelemetry(c) => decide_telemetry(state, c),
            DeviceCommand::ReportError(c) => decide_report_error(state, c, ctx),
            DeviceCommand::PredictFailure(c) => decide_predict_failure(state, c),
            DeviceCommand::Disconnect(c) => decide_disconnect(state, c, ctx),
        }
    }

    fn apply(state: &mut DeviceState, event: &DeviceEvent) {
        match event {
            DeviceEvent::TelemetryReceived(e) => {
                // The hot path: no allocation unless the firmware changed.
                if let Some(device) = state.device.as_mut() {
                    if device.firmware_version != e.firmware_version {
                        device.firmware_version.clone_from(&e.firmware_version);
                    }
                }
                if let Some(hours) = e.metrics.operating_hours {
                    state.last_operating_hours = Some(hours);
                }
                if let Some(t) = e.metrics.temperature {
                    state.last_temperature_celsius = Some(t);
                }
                if let Some(v) = e.metrics.vibration {
                    state.last_vibration_mm_per_s = Some(v);
                }
                state.telemetry_count = state.telemetry_count.saturating_add(1);
            }
            DeviceEvent::FailurePredicted(e) => {
                state.last_failure_probability = Some(e.probability);
                state.failure_predictions_count = state.failure_predictions_count.saturating_add(1);
            }
            DeviceEvent::DeviceConnected(e) => {
                // A calibration stays valid only for the owner it was made for.
                if e.calibration_required || state.calibrated_owner_id != Some(e.owner_id) {
                    state.calibrated_owner_id = None;
                }
                state.status = DeviceStatus::Connected;
                state.device = Some(DeviceRecord {
                    device_id: e.device_id,
                    serial_number: e.serial_number.clone(),
                    model_id: e.model_id,
                    firmware_version: e.firmware_version.clone(),
                    owner_id: e.owner_id,
                });
                // The error window covers one connection.
                state.recent_error_times.clear();
                state.connections_count = state.connections_count.saturating_add(1);
            }
            DeviceEvent::DeviceCalibrated(e) => {
                state.calibrated_owner_id = Some(e.owner_id);
                state.last_calibrated_at = Some(e.calibrated_at);
                state.calibrations_count = state.calibrations_count.saturating_add(1);
            }
            DeviceEvent::DeviceDisconnected(e) => {
                state.status = DeviceStatus::Disconnected;
                state.last_disconnect_reason = Some(e.reason);
                state.recent_error_times.clear();
            }
            DeviceEvent::DeviceErrorDetected(e) => {
                // Keep only the latest errors the window rule can ever need.
                state.recent_error_times.push(e.detected_at);
                let keep = REPEATED_ERRORS_LIMIT_COUNT.saturating_sub(1);
                if state.recent_error_times.len() > keep {
                    let excess = state.recent_error_times.len() - keep;
                    state.recent_error_times.drain(..excess);
                }
                state.errors_count = state.errors_count.saturating_add(1);
            }
        }
    }

    fn check_invariants(state: &DeviceState) -> Result<(), String> {
        // 1. Status `new` exactly when no identity is registered.
        match (state.status, &state.device) {
            (DeviceStatus::New, Some(_)) => return Err("a new device has an identity".into()),
            (DeviceStatus::Connected | DeviceStatus::Disconnected, None) => {
                return Err(format!("a {} device has no identity", state.status));
            }
            _ => {}
        }
        // 2. A calibration belongs to the current owner.
        if let Some(calibrated) = state.calibrated_owner_id {
            match &state.device {
                Some(device) if device.owner_id == calibrated => {}
                Some(device) => {
                    return Err(format!(
                        "calibrated for {calibrated} but owned by {}",
                        device.owner_id
                    ));
                }
                None => return Err("calibrated but never connected".into()),
            }
            if state.calibrations_count == 0 || state.last_calibrated_at.is_none() {
                return Err("calibrated without a recorded calibration".into());
            }
        }
        // 3. The error window is bounded and belongs to a live connection.
        if state.recent_error_times.len() >= REPEATED_ERRORS_LIMIT_COUNT {
            return Err(format!(
                "{} errors in the window; the limit {REPEATED_ERRORS_LIMIT_COUNT} disconnects",
                state.recent_error_times.len()
            ));
        }
        if state.status != DeviceStatus::Connected && !state.recent_error_times.is_empty() {
            return Err(format!(
                "a {} device has an open error window",
                state.status
            ));
        }
        if state.errors_count < state.recent_error_times.len() as u64 {
            return Err("the error window holds more errors than were ever reported".into());
        }
        // 4. Last values are within their sensor ranges.
        if let Some(t) = state.last_temperature_celsius {
            if !t.is_finite() || !(TEMPERATURE_MIN_CELSIUS..=TEMPERATURE_MAX_CELSIUS).contains(&t) {
                return Err(format!("last temperature {t} is outside the sensor range"));
            }
        }
        if let Some(v) = state.last_vibration_mm_per_s {
            if !v.is_finite() || !(VIBRATION_MIN_MM_PER_S..=VIBRATION_MAX_MM_PER_S).contains(&v) {
                return Err(format!("last vibration {v} is outside the sensor range"));
            }
        }
        if let Some(h) = state.last_operating_hours {
            if h > OPERATING_HOURS_MAX_HOURS {
                return Err(format!("last operating hours {h} above the maximum"));
            }
        }
        if let Some(p) = state.last_failure_probability {
            if p.ppm() > Probability::PARTS_PER_MILLION_MAX {
                return Err(format!("failure probability {} ppm above one", p.ppm()));
            }
        }
        // 5. Counters and last values agree with the history.
        let has_last_reading = state.last_operating_hours.is_some()
            || state.last_temperature_celsius.is_some()
            || state.last_vibration_mm_per_s.is_some();
        if has_last_reading && state.telemetry_count == 0 {
            return Err("a last reading without any telemetry".into());
        }
        if state.last_failure_probability.is_some() != (state.failure_predictions_count > 0) {
            return Err("last failure probability and prediction count disagree".into());
        }
        if state.device.is_some() && state.connections_count == 0 {
            return Err("a registered device with no connection".into());
        }
        if state.status == DeviceStatus::New {
            let untouched = state.connections_count == 0
                && state.calibrations_count == 0
                && state.telemetry_count == 0
                && state.errors_count == 0
                && state.failure_predictions_count == 0
                && state.last_disconnect_reason.is_none()
                && state.last_calibrated_at.is_none();
            if !untouched {
                return Err("a new device has history".into());
            }
        }
        if state.status == DeviceStatus::Disconnected && state.last_disconnect_reason.is_none() {
            return Err("a disconnected device without a reason".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// decide, per command
// ---------------------------------------------------------------------------------------------

fn check_text(field: &'static str, value: &str, max_bytes: usize) -> Result<(), DeviceError> {
    if value.trim().is_empty() {
        return Err(DeviceError::BlankText { field });
    }
    check_len(field, value, max_bytes)
}

fn check_len(field: &'static str, value: &str, max_bytes: usize) -> Result<(), DeviceError> {
    if value.len() > max_bytes {
        return Err(DeviceError::TextTooLong { field, max_bytes });
    }
    Ok(())
}

fn connected_device(state: &DeviceState) -> Result<&DeviceRecord, DeviceError> {
    match (state.status, &state.device) {
        (DeviceStatus::Connected, Some(device)) => Ok(device),
        _ => Err(DeviceError::NotConnected {
            status: state.status,
        }),
    }
}

/// Rejects NaN/infinite values, then values outside `min..=max`.
fn check_measurement(
    metric: &'static str,
    value: Option<f64>,
    min: f64,
    max: f64,
    unit: &str,
) -> Result<(), DeviceError> {
    let Some(value) = value else { return Ok(()) };
    if !value.is_finite() {
        return Err(DeviceError::NonFiniteValue { field: metric });
    }
    if !(min..=max).contains(&value) {
        return Err(DeviceError::MeasurementOutOfRange {
            metric,
            value: value.to_string(),
            range: format!("{min}..={max} {unit}"),
        });
    }
    Ok(())
}

fn check_coefficient(
    coefficient: &'static str,
    value: f64,
    min: f64,
    max: f64,
    unit: &str,
) -> Result<(), DeviceError> {
    if !value.is_finite() {
        return Err(DeviceError::NonFiniteValue { field: coefficient });
    }
    if !(min..=max).contains(&value) {
        return Err(DeviceError::CalibrationOutOfRange {
            coefficient,
            value: value.to_string(),
            range: format!("{min}..={max} {unit}"),
        });
    }
    Ok(())
}

fn decide_connect(
    state: &DeviceState,
    c: &ConnectDevice,
    ctx: &DecideContext,
) -> Result<Vec<DeviceEvent>, DeviceError> {
    if state.status == DeviceStatus::Connected {
        return Err(DeviceError::AlreadyConnected);
    }
    if let Ok(addressed) = Uuid::parse_str(&ctx.aggregate_id) {
        if addressed != c.device_id {
            return Err(DeviceError::DeviceIdMismatch {
                expected: addressed,
                got: c.device_id,
            });
        }
    }
    if let Some(registered) = &state.device {
        if registered.device_id != c.device_id {
            return Err(DeviceError::DeviceIdMismatch {
                expected: registered.device_id,
                got: c.device_id,
            });
        }
        if registered.serial_number != c.serial_number {
            return Err(DeviceError::SerialNumberMismatch {
                registered: registered.serial_number.clone(),
                got: c.serial_number.clone(),
            });
        }
        if registered.model_id != c.model_id {
            return Err(DeviceError::ModelMismatch {
                registered: registered.model_id,
                got: c.model_id,
            });
        }
    }
    check_text("serial_number", &c.serial_number, SERIAL_NUMBER_MAX_BYTES)?;
    check_text(
        "firmware_version",
        &c.firmware_version,
        FIRMWARE_VERSION_MAX_BYTES,
    )?;
    let mut certifications = c.certifications.clone();
    certifications.sort_unstable();
    certifications.dedup();
    if certifications.is_empty() {
        return Err(DeviceError::NotCertified);
    }
    Ok(vec![DeviceConnected {
        device_id: c.device_id,
        serial_number: c.serial_number.clone(),
        model_id: c.model_id,
        firmware_version: c.firmware_version.clone(),
        owner_id: c.owner_id,
        previous_owner_id: state.device.as_ref().map(|d| d.owner_id),
        certifications,
        // Calibrated for exactly this owner already (a reconnect by the same user): keep it.
        calibration_required: state.calibrated_owner_id != Some(c.owner_id),
        connected_at: ctx.now,
    }
    .into()])
}

fn decide_calibrate(
    state: &DeviceState,
    c: &CalibrateDevice,
    ctx: &DecideContext,
) -> Result<Vec<DeviceEvent>, DeviceError> {
    let device = connected_device(state)?;
    if c.owner_id != device.owner_id {
        return Err(DeviceError::OwnerMismatch {
            owner_id: device.owner_id,
            got: c.owner_id,
        });
    }
    check_coefficient(
        "temperature_offset_celsius",
        c.temperature_offset_celsius,
        -CALIBRATION_TEMPERATURE_OFFSET_MAX_CELSIUS,
        CALIBRATION_TEMPERATURE_OFFSET_MAX_CELSIUS,
        "celsius",
    )?;
    check_coefficient(
        "vibration_scale_factor",
        c.vibration_scale_factor,
        CALIBRATION_VIBRATION_SCALE_MIN,
        CALIBRATION_VIBRATION_SCALE_MAX,
        "(ratio)",
    )?;
    Ok(vec![DeviceCalibrated {
        device_id: device.device_id,
        owner_id: device.owner_id,
        temperature_offset_celsius: c.temperature_offset_celsius,
        vibration_scale_factor: c.vibration_scale_factor,
        calibrated_at: ctx.now,
    }
    .into()])
}

fn decide_telemetry(
    state: &DeviceState,
    c: &RecordTelemetry,
) -> Result<Vec<DeviceEvent>, DeviceError> {
    let device = connected_device(state)?;
    if !state.is_calibrated() {
        return Err(DeviceError::CalibrationRequired {
            owner_id: device.owner_id,
        });
    }
    if let Some(firmware) = &c.firmware_version {
        check_text("firmware_version", firmware, FIRMWARE_VERSION_MAX_BYTES)?;
    }
    let m = &c.metrics;
    check_measurement(
        "temperature",
        m.temperature,
        TEMPERATURE_MIN_CELSIUS,
        TEMPERATURE_MAX_CELSIUS,
        "celsius",
    )?;
    check_measurement(
        "vibration",
        m.vibration,
        VIBRATION_MIN_MM_PER_S,
        VIBRATION_MAX_MM_PER_S,
        "mm/s",
    )?;
    if let Some(hours) = m.operating_hours {
        if hours > OPERATING_HOURS_MAX_HOURS {
            return Err(DeviceError::MeasurementOutOfRange {
                metric: "operating_hours",
                value: hours.to_string(),
                range: format!("0..={OPERATING_HOURS_MAX_HOURS} hours"),
            });
        }
        if let Some(last) = state.last_operating_hours {
            if hours < last {
                return Err(DeviceError::OperatingHoursDecreased {
                    last,
                    reported: hours,
                });
            }
        }
    }
    if m.error_codes.len() > ERROR_CODES_PER_READING_MAX {
        return Err(DeviceError::TooManyErrorCodes {
            count: m.error_codes.len(),
            max: ERROR_CODES_PER_READING_MAX,
        });
    }
    for code in &m.error_codes {
        check_text("metrics.error_codes", code, ERROR_CODE_MAX_BYTES)?;
    }
    Ok(vec![TelemetryReceived {
        device_id: device.device_id,
        serial_number: device.serial_number.clone(),
        model_id: device.model_id,
        firmware_version: c
            .firmware_version
            .clone()
            .unwrap_or_else(|| device.firmware_version.clone()),
        metrics: m.clone(),
        owner_id: device.owner_id,
    }
    .into()])
}

fn decide_report_error(
    state: &DeviceState,
    c: &ReportError,
    ctx: &DecideContext,
) -> Result<Vec<DeviceEvent>, DeviceError> {
    let device = connected_device(state)?;
    check_text("error_code", &c.error_code, ERROR_CODE_MAX_BYTES)?;
    check_len("description", &c.description, ERROR_DESCRIPTION_MAX_BYTES)?;
    let window = Duration::seconds(REPEATED_ERRORS_WINDOW_SECONDS);
    // An error time after `now` (a clock step back) counts as within the window.
    let earlier_in_window = state
        .recent_error_times
        .iter()
        .filter(|&&at| ctx.now - at < window)
        .count();
    let errors_in_window = earlier_in_window + 1;
    let mut events: Vec<DeviceEvent> = vec![DeviceErrorDetected {
        device_id: device.device_id,
        owner_id: device.owner_id,
        error_code: c.error_code.clone(),
        description: c.description.clone(),
        // At most REPEATED_ERRORS_LIMIT_COUNT, since the state keeps fewer times than that.
        errors_in_window: u32::try_from(errors_in_window).unwrap_or(u32::MAX),
        detected_at: ctx.now,
    }
    .into()];
    if errors_in_window >= REPEATED_ERRORS_LIMIT_COUNT {
        events.push(
            DeviceDisconnected {
                device_id: device.device_id,
                owner_id: device.owner_id,
                reason: DisconnectReason::RepeatedErrors,
                disconnected_at: ctx.now,
            }
            .into(),
        );
    }
    Ok(events)
}

fn decide_predict_failure(
    state: &DeviceState,
    c: &PredictFailure,
) -> Result<Vec<DeviceEvent>, DeviceError> {
    let device = state.device.as_ref().ok_or(DeviceError::NotRegistered)?;
    check_text(
        "predicted_failure_type",
        &c.predicted_failure_type,
        FAILURE_TYPE_MAX_BYTES,
    )?;
    check_text(
        "recommended_action",
        &c.recommended_action,
        RECOMMENDED_ACTION_MAX_BYTES,
    )?;
    if !c.probability.is_finite() {
        return Err(DeviceError::NonFiniteValue {
            field: "probability",
        });
    }
    let probability =
        Probability::from_f64(c.probability).ok_or_else(|| DeviceError::ProbabilityOutOfRange {
            value: c.probability.to_string(),
        })?;
    if c.estimated_days_to_failure > ESTIMATED_DAYS_TO_FAILURE_MAX_DAYS {
        return Err(DeviceError::DaysToFailureOutOfRange {
            days: c.estimated_days_to_failure,
            max_days: ESTIMATED_DAYS_TO_FAILURE_MAX_DAYS,
        });
    }
    Ok(vec![FailurePredicted {
        device_id: device.device_id,
        serial_number: device.serial_number.clone(),
        owner_id: device.owner_id,
        predicted_failure_type: c.predicted_failure_type.clone(),
        probability,
        estimated_days_to_failure: c.estimated_days_to_failure,
        recommended_action: c.recommended_action.clone(),
    }
    .into()])
}

fn decide_disconnect(
    state: &DeviceState,
    c: &DisconnectDevice,
    ctx: &DecideContext,
) -> Result<Vec<DeviceEvent>, DeviceError> {
    let device = connected_device(state)?;
    if c.reason == DisconnectReason::RepeatedErrors {
        return Err(DeviceError::ReservedDisconnectReason);
    }
    Ok(vec![DeviceDisconnected {
        device_id: device.device_id,
        owner_id: device.owner_id,
        reason: c.reason,
        disconnected_at: ctx.now,
    }
    .into()])
}
