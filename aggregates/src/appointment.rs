//! Appointment: a patient's booking with a doctor at a clinic (seed
//! `domain-events-catalog.md`, "Медицинские услуги (Клиники)").
//!
//! # Commands
//! - [`CreateAppointment`]: books the appointment (ids, time, service, estimated cost).
//! - [`RescheduleAppointment`]: moves it to another time and/or another doctor.
//! - [`CancelAppointment`]: cancels it; decide works out whether a refund is required.
//! - [`CompleteAppointment`]: records that the visit took place (duration, services, cost).
//!
//! # Events (topic `clinics.appointments`, version "1.0", snake_case payloads)
//! - `AppointmentCreated` ([`AppointmentCreated`]): appointment_id, patient_id, doctor_id,
//!   clinic_id, scheduled_at, service_type, estimated_cost.
//! - `AppointmentRescheduled` ([`AppointmentRescheduled`]): appointment_id,
//!   previous_scheduled_at, new_scheduled_at, previous_doctor_id, new_doctor_id, reason?.
//! - `AppointmentCancelled` ([`AppointmentCancelled`]): appointment_id, cancelled_by
//!   (patient | clinic | doctor), reason?, refund_required.
//! - `AppointmentCompleted` ([`AppointmentCompleted`]): appointment_id,
//!   actual_duration_minutes, services_rendered (array of strings), final_cost.
//!
//! The payload is exactly the catalog's contract, no extra fields. Money (`estimated_cost`,
//! `final_cost`) is [`Money`]: integer minor units, published as a decimal **string** with two
//! fraction digits (`"1500.00"`). Nullable fields (`reason?`) are published as `null` when absent.
//!
//! # Lifecycle
//! | from \ to   | scheduled          | cancelled | completed |
//! |-------------|--------------------|-----------|-----------|
//! | (none)      | create             | -         | -         |
//! | scheduled   | reschedule         | cancel    | complete  |
//! | cancelled   | -                  | -         | -         |
//! | completed   | -                  | -         | -         |
//!
//! [`can_transition`] is this table as code.
//!
//! # Rules (from the catalog and domain.md)
//! - A cancelled or completed appointment accepts no further change ([`AppointmentError::Closed`]).
//! - A reschedule must change the time or the doctor or both
//!   ([`AppointmentError::NothingToReschedule`]); the event records the previous and the new
//!   time and doctor.
//!
//! # Rules chosen here (the seed is silent)
//! - Every command but create needs a created appointment ([`AppointmentError::NotCreated`]):
//!   nothing can be rescheduled, cancelled or completed before it exists; creating twice is
//!   rejected ([`AppointmentError::AlreadyCreated`]), not treated as idempotent, because the
//!   second body may differ.
//! - The appointment id comes from the create command. The engine's aggregate id is routing only
//!   and is not compared with it (the workload uses the aggregate id when it is a UUID).
//! - `estimated_cost >= 0` and `final_cost >= 0` ([`AppointmentError::NegativeCost`]); zero is
//!   allowed (free check-ups). The final cost may differ from the estimate in both directions.
//! - `service_type` and every entry of `services_rendered` must be non-blank.
//! - A new appointment must be scheduled strictly after `ctx.now`, and so must the new time of
//!   a reschedule ([`AppointmentError::ScheduledInPast`]). Changing only the doctor of an
//!   appointment whose time has already come is allowed (a substitute doctor).
//! - A reschedule command names the new time and/or the new doctor; a `None` keeps the current
//!   one. Naming the current value counts as "no change".
//! - `refund_required` is decided, not given: it is true when the estimated cost is above zero,
//!   unless the **patient** cancels less than [`LATE_CANCELLATION_WINDOW_HOURS`] hours before
//!   the scheduled time (or after it): a late cancellation by the patient forfeits the refund.
//!   A cancellation by the clinic or the doctor always requires a refund of a non-zero cost.
//! - Completion: `actual_duration_minutes` is in `1..=`[`ACTUAL_DURATION_MINUTES_MAX`] (one
//!   day); `services_rendered` holds 1 to [`SERVICES_RENDERED_MAX`] entries. Completion is not
//!   tied to the clock: a visit may start early or late and is recorded when it is done.
//!
//! # Invariants ([`Appointment::check_invariants`])
//! - status cancelled <=> a cancellation is recorded; status completed <=> a completion is
//!   recorded; never both.
//! - estimated and final costs are >= 0; a required refund implies a non-zero estimated cost.
//! - a completion has a duration in `1..=ACTUAL_DURATION_MINUTES_MAX` and 1 to
//!   `SERVICES_RENDERED_MAX` non-blank services.
//! - `service_type` is non-blank.

use chrono::{DateTime, Duration, Utc};
use evershard_model::{from_variants, Aggregate, DecideContext, DomainEvent, Money};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The outbound topic of every appointment event.
pub const TOPIC: &str = "clinics.appointments";
/// The contract version of every appointment event.
pub const EVENT_VERSION: &str = "1.0";
/// A patient who cancels less than this many hours before the appointment gets no refund.
pub const LATE_CANCELLATION_WINDOW_HOURS: i64 = 24;
/// The longest visit a completion may record: one day.
pub const ACTUAL_DURATION_MINUTES_MAX: u32 = 24 * 60;
/// The most services one completion may list.
pub const SERVICES_RENDERED_MAX: usize = 100;

/// The Appointment aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appointment;

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Who cancelled an appointment (catalog: `enum[patient, clinic, doctor]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Patient,
    Clinic,
    Doctor,
}

impl CancelledBy {
    pub const ALL: [CancelledBy; 3] = [
        CancelledBy::Patient,
        CancelledBy::Clinic,
        CancelledBy::Doctor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CancelledBy::Patient => "patient",
            CancelledBy::Clinic => "clinic",
            CancelledBy::Doctor => "doctor",
        }
    }
}

impl fmt::Display for CancelledBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `AppointmentCreated`: a new booking with a doctor. Triggers invoicing at the bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentCreated {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    pub clinic_id: Uuid,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub scheduled_at: DateTime<Utc>,
    pub service_type: String,
    pub estimated_cost: Money,
}

/// `AppointmentRescheduled`: the booking moved to another time and/or doctor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentRescheduled {
    pub appointment_id: Uuid,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub previous_scheduled_at: DateTime<Utc>,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub new_scheduled_at: DateTime<Utc>,
    pub previous_doctor_id: Uuid,
    pub new_doctor_id: Uuid,
    pub reason: Option<String>,
}

/// `AppointmentCancelled`: the booking is cancelled. Triggers cancelling or refunding the
/// invoice at the bank when `refund_required`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentCancelled {
    pub appointment_id: Uuid,
    pub cancelled_by: CancelledBy,
    pub reason: Option<String>,
    pub refund_required: bool,
}

/// `AppointmentCompleted`: the visit took place; confirms the service was rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentCompleted {
    pub appointment_id: Uuid,
    pub actual_duration_minutes: u32,
    pub services_rendered: Vec<String>,
    pub final_cost: Money,
}

/// Every appointment event. Stored with the codec: variants are append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[event(topic = TOPIC, version = EVENT_VERSION)]
pub enum AppointmentEvent {
    AppointmentCreated(AppointmentCreated),
    AppointmentRescheduled(AppointmentRescheduled),
    AppointmentCancelled(AppointmentCancelled),
    AppointmentCompleted(AppointmentCompleted),
}

from_variants!(AppointmentEvent:
    AppointmentCreated,
    AppointmentRescheduled,
    AppointmentCancelled,
    AppointmentCompleted,
);

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Books a new appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateAppointment {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    pub clinic_id: Uuid,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub scheduled_at: DateTime<Utc>,
    pub service_type: String,
    pub estimated_cost: Money,
}

/// Moves an appointment. `None` keeps the current time or doctor; at least one must change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescheduleAppointment {
    #[serde(with = "evershard_model::codec::timestamp::option")]
    pub new_scheduled_at: Option<DateTime<Utc>>,
    pub new_doctor_id: Option<Uuid>,
    pub reason: Option<String>,
}

/// Cancels an appointment. Whether a refund is required is decided by the aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAppointment {
    pub cancelled_by: CancelledBy,
    pub reason: Option<String>,
}

/// Records that the visit took place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteAppointment {
    pub actual_duration_minutes: u32,
    pub services_rendered: Vec<String>,
    pub final_cost: Money,
}

/// Every appointment command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppointmentCommand {
    Create(CreateAppointment),
    Reschedule(RescheduleAppointment),
    Cancel(CancelAppointment),
    Complete(CompleteAppointment),
}

from_variants!(AppointmentCommand {
    Create(CreateAppointment),
    Reschedule(RescheduleAppointment),
    Cancel(CancelAppointment),
    Complete(CompleteAppointment),
});

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// Where an appointment is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentStatus {
    Scheduled,
    Cancelled,
    Completed,
}

impl AppointmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AppointmentStatus::Scheduled => "scheduled",
            AppointmentStatus::Cancelled => "cancelled",
            AppointmentStatus::Completed => "completed",
        }
    }
    /// Cancelled and completed take no further change.
    pub fn is_final(self) -> bool {
        !matches!(self, AppointmentStatus::Scheduled)
    }
}

impl fmt::Display for AppointmentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lifecycle table of the module docs. `(Scheduled, Scheduled)` is a reschedule.
pub fn can_transition(from: AppointmentStatus, to: AppointmentStatus) -> bool {
    use AppointmentStatus::*;
    match (from, to) {
        (Scheduled, Scheduled) => true,
        (Scheduled, Cancelled) => true,
        (Scheduled, Completed) => true,
        (Cancelled, _) => false,
        (Completed, _) => false,
    }
}

/// How an appointment was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationRecord {
    pub cancelled_by: CancelledBy,
    pub refund_required: bool,
}

/// How an appointment was completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionRecord {
    pub actual_duration_minutes: u32,
    pub services_rendered: Vec<String>,
    pub final_cost: Money,
}

/// A created appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentRecord {
    pub appointment_id: Uuid,
    pub patient_id: Uuid,
    pub doctor_id: Uuid,
    pub clinic_id: Uuid,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub scheduled_at: DateTime<Utc>,
    pub service_type: String,
    pub estimated_cost: Money,
    pub status: AppointmentStatus,
    /// How many times it was rescheduled.
    pub reschedules: u32,
    pub cancellation: Option<CancellationRecord>,
    pub completion: Option<CompletionRecord>,
}

/// The state of one appointment aggregate: `None` until created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentState {
    pub appointment: Option<AppointmentRecord>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why an appointment command was rejected. Every variant is a user error: do not retry the
/// same command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppointmentError {
    #[error("appointment {appointment_id} already exists")]
    AlreadyCreated { appointment_id: Uuid },
    #[error("no appointment here yet: create it first")]
    NotCreated,
    #[error("appointment is {status}: it accepts no further change")]
    Closed { status: AppointmentStatus },
    #[error("{field} must be >= 0, got {amount}")]
    NegativeCost { field: &'static str, amount: Money },
    #[error("service_type must not be blank")]
    BlankServiceType,
    #[error("scheduled time {scheduled_at} is not after now ({now})")]
    ScheduledInPast {
        scheduled_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("reschedule changes neither the time nor the doctor")]
    NothingToReschedule,
    #[error("actual_duration_minutes must be in 1..={max}, got {minutes}")]
    DurationOutOfRange { minutes: u32, max: u32 },
    #[error("services_rendered must list at least one service")]
    NoServicesRendered,
    #[error("services_rendered lists {count} services, at most {max} allowed")]
    TooManyServices { count: usize, max: usize },
    #[error("services_rendered[{index}] is blank")]
    BlankServiceName { index: usize },
}

// ---------------------------------------------------------------------------------------------
// Aggregate
// ---------------------------------------------------------------------------------------------

/// The refund policy of the module docs.
pub fn refund_required(
    cancelled_by: CancelledBy,
    estimated_cost: Money,
    scheduled_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    if !estimated_cost.is_positive() {
        return false;
    }
    match cancelled_by {
        CancelledBy::Patient => {
            scheduled_at - now >= Duration::hours(LATE_CANCELLATION_WINDOW_HOURS)
        }
        CancelledBy::Clinic | CancelledBy::Doctor => true,
    }
}

fn open(state: &AppointmentState) -> Result<&AppointmentRecord, AppointmentError> {
    let record = state
        .appointment
        .as_ref()
        .ok_or(AppointmentError::NotCreated)?;
    if record.status.is_final() {
        return Err(AppointmentError::Closed {
            status: record.status,
        });
    }
    Ok(record)
}

fn decide_create(
    state: &AppointmentState,
    c: &CreateAppointment,
    ctx: &DecideContext,
) -> Result<Vec<AppointmentEvent>, AppointmentError> {
    if let Some(existing) = &state.appointment {
        return Err(AppointmentError::AlreadyCreated {
            appointment_id: existing.appointment_id,
        });
    }
    if c.estimated_cost.is_negative() {
        return Err(AppointmentError::NegativeCost {
            field: "estimated_cost",
            amount: c.estimated_cost,
        });
    }
    if c.service_type.trim().is_empty() {
        return Err(AppointmentError::BlankServiceType);
    }
    if c.scheduled_at <= ctx.now {
        return Err(AppointmentError::ScheduledInPast {
            scheduled_at: c.scheduled_at,
            now: ctx.now,
        });
    }
    Ok(vec![AppointmentCreated {
        appointment_id: c.appointment_id,
        patient_id: c.patient_id,
        doctor_id: c.doctor_id,
        clinic_id: c.clinic_id,
        scheduled_at: c.scheduled_at,
        service_type: c.service_type.clone(),
        estimated_cost: c.estimated_cost,
    }
    .into()])
}

fn decide_reschedule(
    state: &AppointmentState,
    c: &RescheduleAppointment,
    ctx: &DecideContext,
) -> Result<Vec<AppointmentEvent>, AppointmentError> {
    let record = open(state)?;
    let new_scheduled_at = c.new_scheduled_at.unwrap_or(record.scheduled_at);
    let new_doctor_id = c.new_doctor_id.unwrap_or(record.doctor_id);
    if new_scheduled_at == record.scheduled_at && new_doctor_id == record.doctor_id {
        return Err(AppointmentError::NothingToReschedule);
    }
    if new_scheduled_at != record.scheduled_at && new_scheduled_at <= ctx.now {
        return Err(AppointmentError::ScheduledInPast {
            scheduled_at: new_scheduled_at,
            now: ctx.now,
        });
    }
    Ok(vec![AppointmentRescheduled {
        appointment_id: record.appointment_id,
        previous_scheduled_at: record.scheduled_at,
        new_scheduled_at,
        previous_doctor_id: record.doctor_id,
        new_doctor_id,
        reason: c.reason.clone(),
    }
    .into()])
}

fn decide_cancel(
    state: &AppointmentState,
    c: &CancelAppointment,
    ctx: &DecideContext,
) -> Result<Vec<AppointmentEvent>, AppointmentError> {
    let record = open(state)?;
    Ok(vec![AppointmentCancelled {
        appointment_id: record.appointment_id,
        cancelled_by: c.cancelled_by,
        reason: c.reason.clone(),
        refund_required: refund_required(
            c.cancelled_by,
            record.estimated_cost,
            record.scheduled_at,
            ctx.now,
        ),
    }
    .into()])
}

fn check_services(services: &[String]) -> Result<(), AppointmentError> {
    if services.is_empty() {
        return Err(AppointmentError::NoServicesRendered);
    }
    if services.len() > SERVICES_RENDERED_MAX {
        return Err(AppointmentError::TooManyServices {
            count: services.len(),
            max: SERVICES_RENDERED_MAX,
        });
    }
    if let Some(index) = services.iter().position(|s| s.trim().is_empty()) {
        return Err(AppointmentError::BlankServiceName { index });
    }
    Ok(())
}

fn decide_complete(
    state: &AppointmentState,
    c: &CompleteAppointment,
) -> Result<Vec<AppointmentEvent>, AppointmentError> {
    let record = open(state)?;
    if !(1..=ACTUAL_DURATION_MINUTES_MAX).contains(&c.actual_duration_minutes) {
        return Err(AppointmentError::DurationOutOfRange {
            minutes: c.actual_duration_minutes,
            max: ACTUAL_DURATION_MINUTES_MAX,
        });
    }
    check_services(&c.services_rendered)?;
    if c.final_cost.is_negative() {
        return Err(AppointmentError::NegativeCost {
            field: "final_cost",
            amount: c.final_cost,
        });
    }
    Ok(vec![AppointmentCompleted {
        appointment_id: record.appointment_id,
        actual_duration_minutes: c.actual_duration_minutes,
        services_rendered: c.services_rendered.clone(),
        final_cost: c.final_cost,
    }
    .into()])
}

impl Aggregate for Appointment {
    const TYPE: &'static str = "Appointment";

    /// An appointment's payloads belong to its patient: one key per patient, so forgetting
    /// a patient erases every appointment of theirs.
    fn data_subject(state: &AppointmentState) -> Option<String> {
        state
            .appointment
            .as_ref()
            .map(|a| format!("patient:{}", a.patient_id))
    }

    type State = AppointmentState;
    type Command = AppointmentCommand;
    type Event = AppointmentEvent;
    type Error = AppointmentError;

    fn decide(
        state: &AppointmentState,
        command: &AppointmentCommand,
        ctx: &DecideContext,
    ) -> Result<Vec<AppointmentEvent>, AppointmentError> {
        match command {
            AppointmentCommand::Create(c) => decide_create(state, c, ctx),
            AppointmentCommand::Reschedule(c) => decide_reschedule(state, c, ctx),
            AppointmentCommand::Cancel(c) => decide_cancel(state, c, ctx),
            AppointmentCommand::Complete(c) => decide_complete(state, c),
        }
    }

    fn apply(state: &mut AppointmentState, event: &AppointmentEvent) {
        match event {
            AppointmentEvent::AppointmentCreated(e) => {
                state.appointment = Some(AppointmentRecord {
                    appointment_id: e.appointment_id,
                    patient_id: e.patient_id,
                    doctor_id: e.doctor_id,
                    clinic_id: e.clinic_id,
                    scheduled_at: e.scheduled_at,
                    service_type: e.service_type.clone(),
                    estimated_cost: e.estimated_cost,
                    status: AppointmentStatus::Scheduled,
                    reschedules: 0,
                    cancellation: None,
                    completion: None,
                });
            }
            AppointmentEvent::AppointmentRescheduled(e) => {
                if let Some(record) = state.appointment.as_mut() {
                    record.scheduled_at = e.new_scheduled_at;
                    record.doctor_id = e.new_doctor_id;
                    record.reschedules = record.reschedules.saturating_add(1);
                }
            }
            AppointmentEvent::AppointmentCancelled(e) => {
                if let Some(record) = state.appointment.as_mut() {
                    record.status = AppointmentStatus::Cancelled;
                    record.cancellation = Some(CancellationRecord {
                        cancelled_by: e.cancelled_by,
                        refund_required: e.refund_required,
                    });
                }
            }
            AppointmentEvent::AppointmentCompleted(e) => {
                if let Some(record) = state.appointment.as_mut() {
                    record.status = AppointmentStatus::Completed;
                    record.completion = Some(CompletionRecord {
                        actual_duration_minutes: e.actual_duration_minutes,
                        services_rendered: e.services_rendered.clone(),
                        final_cost: e.final_cost,
                    });
                }
            }
        }
    }

    fn check_invariants(state: &AppointmentState) -> Result<(), String> {
        let Some(r) = &state.appointment else {
            return Ok(());
        };
        match (r.status, &r.cancellation, &r.completion) {
            (AppointmentStatus::Scheduled, None, None)
            | (AppointmentStatus::Cancelled, Some(_), None)
            | (AppointmentStatus::Completed, None, Some(_)) => {}
            (status, cancellation, completion) => {
                return Err(format!(
                    "status {status} disagrees with cancellation {cancellation:?} / completion \
                     {completion:?}"
                ))
            }
        }
        if r.estimated_cost.is_negative() {
            return Err(format!("estimated_cost {} < 0", r.estimated_cost));
        }
        if r.service_type.trim().is_empty() {
            return Err("service_type is blank".to_owned());
        }
        if let Some(c) = &r.cancellation {
            if c.refund_required && !r.estimated_cost.is_positive() {
                return Err("refund required for an appointment that costs nothing".to_owned());
            }
        }
        if let Some(c) = &r.completion {
            if c.final_cost.is_negative() {
                return Err(format!("final_cost {} < 0", c.final_cost));
            }
            if !(1..=ACTUAL_DURATION_MINUTES_MAX).contains(&c.actual_duration_minutes) {
                return Err(format!(
                    "actual_duration_minutes {} outside 1..={ACTUAL_DURATION_MINUTES_MAX}",
                    c.actual_duration_minutes
                ));
            }
            check_services(&c.services_rendered).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
