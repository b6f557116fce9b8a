//! The demo workload of [`Appointment`]: a plausible next command for an aggregate in any state.

use crate::appointment::*;
use chrono::{DateTime, Duration, Utc};
use evershard_model::{DecideContext, DemoRng, Money, Workload};
use uuid::Uuid;
const SERVICE_TYPES: [&str; 5] = [
    "consultation",
    "follow_up",
    "vaccination",
    "blood_test",
    "ultrasound",
];
const SERVICES: [&str; 6] = [
    "examination",
    "blood_draw",
    "ecg",
    "prescription",
    "ultrasound_scan",
    "vaccine_shot",
];
const REASONS: [&str; 4] = [
    "patient request",
    "doctor unavailable",
    "clinic schedule change",
    "emergency",
];

fn minutes_ahead(ctx: &DecideContext, rng: &mut DemoRng, lo: i64, hi: i64) -> DateTime<Utc> {
    ctx.now + Duration::minutes(rng.range(lo, hi))
}

impl Workload for Appointment {
    /// Mostly accepted commands: create, then reschedule (30%), cancel (20%) or complete
    /// (50%); about one command in twenty breaks a rule on purpose. A closed appointment gets
    /// a command that is rejected.
    fn sample_command(
        state: &AppointmentState,
        ctx: &DecideContext,
        rng: &mut DemoRng,
    ) -> AppointmentCommand {
        let Some(record) = &state.appointment else {
            let appointment_id = Uuid::parse_str(&ctx.aggregate_id).unwrap_or_else(|_| rng.uuid());
            let mut estimated_cost = Money::from_minor(rng.range(0, 500) * 1_000);
            if rng.chance(5) {
                estimated_cost = Money::from_minor(-rng.range(1, 10_000));
            }
            return CreateAppointment {
                appointment_id,
                patient_id: rng.uuid(),
                doctor_id: rng.uuid(),
                clinic_id: rng.uuid(),
                scheduled_at: minutes_ahead(ctx, rng, 30, 14 * 24 * 60),
                service_type: rng.pick(&SERVICE_TYPES).to_string(),
                estimated_cost,
            }
            .into();
        };
        if record.status.is_final() {
            return CancelAppointment {
                cancelled_by: CancelledBy::Patient,
                reason: None,
            }
            .into();
        }
        let reason = if rng.chance(50) {
            Some(rng.pick(&REASONS).to_string())
        } else {
            None
        };
        match rng.below(100) {
            0..=29 => {
                let (new_scheduled_at, new_doctor_id) = match rng.below(20) {
                    0 => (None, None),
                    1..=9 => (Some(minutes_ahead(ctx, rng, 30, 7 * 24 * 60)), None),
                    10..=14 => (None, Some(rng.uuid())),
                    _ => (
                        Some(minutes_ahead(ctx, rng, 30, 7 * 24 * 60)),
                        Some(rng.uuid()),
                    ),
                };
                RescheduleAppointment {
                    new_scheduled_at,
                    new_doctor_id,
                    reason,
                }
                .into()
            }
            30..=49 => CancelAppointment {
                cancelled_by: *rng.pick(&CancelledBy::ALL),
                reason,
            }
            .into(),
            _ => {
                let actual_duration_minutes = if rng.chance(4) {
                    0
                } else {
                    rng.range(10, 120) as u32
                };
                let count = rng.range(1, 3) as usize;
                let services_rendered = (0..count)
                    .map(|_| rng.pick(&SERVICES).to_string())
                    .collect();
                let final_cost = Money::from_minor(
                    (record.estimated_cost.minor() + rng.range(-20, 20) * 100).max(0),
                );
                CompleteAppointment {
                    actual_duration_minutes,
                    services_rendered,
                    final_cost,
                }
                .into()
            }
        }
    }

    fn is_finished(state: &AppointmentState) -> bool {
        state
            .appointment
            .as_ref()
            .is_some_and(|a| a.status.is_final())
    }
}
