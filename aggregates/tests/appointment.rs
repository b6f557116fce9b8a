//! Appointment: proves every rule of `aggregates/src/appointment.rs`.
//!
//! How:
//! - given/when/then (`evershard_model::testing::given`) for every command, accepted and
//!   rejected with each rejection reason, at the fixed clock 2026-01-01T00:00:00Z;
//! - the lifecycle table `can_transition` cell by cell;
//! - `check_invariants` catches each listed invariant when a state is broken by hand;
//! - the catalog contract of every event (`assert_exact_contract`, names and JSON types written out
//!   from `domain-events-catalog.md`), plus the exact key set, event type, version and topic;
//! - JSON (serde_json) and journal (`codec`, `encode_event`/`decode_event`) round trips of every
//!   event and every command;
//! - a proptest (fixed seed, 128 cases) of random command sequences, biased toward plausible
//!   ones through the demo `Workload` and mixed with arbitrary ones: invariants hold, a
//!   rejection changes nothing, replay rebuilds the live state, and a snapshot (codec) taken
//!   after any prefix plus the remaining events rebuilds it too;
//! - the demo workload reaches every lifecycle outcome.

use chrono::{DateTime, Duration, Utc};
use evershard_aggregates::appointment::*;
use evershard_model::testing::{
    assert_exact_contract, assert_json_and_codec_round_trip, assert_replay_and_snapshots_agree,
    assert_stored_event_round_trip, assert_transition_table, fixed_now, given, given_no_events,
};
use evershard_model::{
    Aggregate, CodecError, DecideContext, DemoRng, DomainEvent, Money, Workload,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use uuid::Uuid;

const APPOINTMENT: Uuid = Uuid::from_u128(0xA1);
const PATIENT: Uuid = Uuid::from_u128(0xB1);
const DOCTOR: Uuid = Uuid::from_u128(0xC1);
const OTHER_DOCTOR: Uuid = Uuid::from_u128(0xC2);
const CLINIC: Uuid = Uuid::from_u128(0xD1);

fn now() -> DateTime<Utc> {
    fixed_now()
}

/// The appointment of most scenarios: three days ahead, 1500.00.
fn scheduled_at() -> DateTime<Utc> {
    now() + Duration::days(3)
}

fn create_command() -> CreateAppointment {
    CreateAppointment {
        appointment_id: APPOINTMENT,
        patient_id: PATIENT,
        doctor_id: DOCTOR,
        clinic_id: CLINIC,
        scheduled_at: scheduled_at(),
        service_type: "consultation".to_owned(),
        estimated_cost: Money::from_major(1500),
    }
}

fn created() -> AppointmentEvent {
    AppointmentCreated {
        appointment_id: APPOINTMENT,
        patient_id: PATIENT,
        doctor_id: DOCTOR,
        clinic_id: CLINIC,
        scheduled_at: scheduled_at(),
        service_type: "consultation".to_owned(),
        estimated_cost: Money::from_major(1500),
    }
    .into()
}

fn created_with_cost(cost: Money) -> AppointmentEvent {
    match created() {
        AppointmentEvent::AppointmentCreated(mut e) => {
            e.estimated_cost = cost;
            e.into()
        }
        _ => unreachable!(),
    }
}

fn rescheduled() -> AppointmentEvent {
    AppointmentRescheduled {
        appointment_id: APPOINTMENT,
        previous_scheduled_at: scheduled_at(),
        new_scheduled_at: scheduled_at() + Duration::hours(2),
        previous_doctor_id: DOCTOR,
        new_doctor_id: OTHER_DOCTOR,
        reason: Some("doctor unavailable".to_owned()),
    }
    .into()
}

fn cancelled() -> AppointmentEvent {
    AppointmentCancelled {
        appointment_id: APPOINTMENT,
        cancelled_by: CancelledBy::Clinic,
        reason: None,
        refund_required: true,
    }
    .into()
}

fn complete_command() -> CompleteAppointment {
    CompleteAppointment {
        actual_duration_minutes: 45,
        services_rendered: vec!["examination".to_owned(), "ecg".to_owned()],
        final_cost: Money::from_minor(162_050),
    }
}

fn completed() -> AppointmentEvent {
    AppointmentCompleted {
        appointment_id: APPOINTMENT,
        actual_duration_minutes: 45,
        services_rendered: vec!["examination".to_owned(), "ecg".to_owned()],
        final_cost: Money::from_minor(162_050),
    }
    .into()
}

fn cancel(by: CancelledBy) -> CancelAppointment {
    CancelAppointment {
        cancelled_by: by,
        reason: Some("changed plans".to_owned()),
    }
}

fn cancelled_event(by: CancelledBy, refund_required: bool) -> AppointmentEvent {
    AppointmentCancelled {
        appointment_id: APPOINTMENT,
        cancelled_by: by,
        reason: Some("changed plans".to_owned()),
        refund_required,
    }
    .into()
}

// ---------------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------------

#[test]
fn create_books_the_appointment() {
    let state = given_no_events::<Appointment>()
        .when(create_command())
        .then_expect_events([created()]);
    let record = state.appointment.expect("created");
    assert_eq!(record.status, AppointmentStatus::Scheduled);
    assert_eq!(record.scheduled_at, scheduled_at());
    assert_eq!(record.reschedules, 0);
}

#[test]
fn create_accepts_a_free_appointment() {
    let command = CreateAppointment {
        estimated_cost: Money::ZERO,
        ..create_command()
    };
    given_no_events::<Appointment>()
        .when(command)
        .then_expect_events([created_with_cost(Money::ZERO)]);
}

#[test]
fn create_twice_is_rejected() {
    given::<Appointment>([created()])
        .when(create_command())
        .then_expect_error(AppointmentError::AlreadyCreated {
            appointment_id: APPOINTMENT,
        });
}

#[test]
fn create_rejects_a_negative_estimated_cost() {
    let command = CreateAppointment {
        estimated_cost: Money::from_minor(-1),
        ..create_command()
    };
    given_no_events::<Appointment>()
        .when(command)
        .then_expect_error(AppointmentError::NegativeCost {
            field: "estimated_cost",
            amount: Money::from_minor(-1),
        });
}

#[test]
fn create_rejects_a_blank_service_type() {
    for blank in ["", "   "] {
        let command = CreateAppointment {
            service_type: blank.to_owned(),
            ..create_command()
        };
        given_no_events::<Appointment>()
            .when(command)
            .then_expect_error(AppointmentError::BlankServiceType);
    }
}

#[test]
fn create_rejects_a_time_not_in_the_future() {
    for scheduled_at in [now(), now() - Duration::minutes(1)] {
        let command = CreateAppointment {
            scheduled_at,
            ..create_command()
        };
        given_no_events::<Appointment>()
            .when(command)
            .then_expect_error(AppointmentError::ScheduledInPast {
                scheduled_at,
                now: now(),
            });
    }
}

// ---------------------------------------------------------------------------------------------
// Reschedule
// ---------------------------------------------------------------------------------------------

#[test]
fn reschedule_to_another_time_keeps_the_doctor() {
    let new_time = scheduled_at() + Duration::days(1);
    let state = given::<Appointment>([created()])
        .when(RescheduleAppointment {
            new_scheduled_at: Some(new_time),
            new_doctor_id: None,
            reason: None,
        })
        .then_expect_events([AppointmentRescheduled {
            appointment_id: APPOINTMENT,
            previous_scheduled_at: scheduled_at(),
            new_scheduled_at: new_time,
            previous_doctor_id: DOCTOR,
            new_doctor_id: DOCTOR,
            reason: None,
        }
        .into()]);
    let record = state.appointment.unwrap();
    assert_eq!(
        (record.scheduled_at, record.doctor_id, record.reschedules),
        (new_time, DOCTOR, 1)
    );
}

#[test]
fn reschedule_to_another_doctor_keeps_the_time() {
    given::<Appointment>([created()])
        .when(RescheduleAppointment {
            new_scheduled_at: None,
            new_doctor_id: Some(OTHER_DOCTOR),
            reason: Some("doctor ill".to_owned()),
        })
        .then_expect_events([AppointmentRescheduled {
            appointment_id: APPOINTMENT,
            previous_scheduled_at: scheduled_at(),
            new_scheduled_at: scheduled_at(),
            previous_doctor_id: DOCTOR,
            new_doctor_id: OTHER_DOCTOR,
            reason: Some("doctor ill".to_owned()),
        }
        .into()]);
}

#[test]
fn reschedule_both_and_again_records_the_previous_values() {
    let state = given::<Appointment>([created(), rescheduled()])
        .when(RescheduleAppointment {
            new_scheduled_at: Some(scheduled_at()),
            new_doctor_id: Some(DOCTOR),
            reason: None,
        })
        .then_expect_events([AppointmentRescheduled {
            appointment_id: APPOINTMENT,
            previous_scheduled_at: scheduled_at() + Duration::hours(2),
            new_scheduled_at: scheduled_at(),
            previous_doctor_id: OTHER_DOCTOR,
            new_doctor_id: DOCTOR,
            reason: None,
        }
        .into()]);
    assert_eq!(state.appointment.unwrap().reschedules, 2);
}

#[test]
fn reschedule_of_only_the_doctor_is_allowed_once_the_time_has_come() {
    // A substitute doctor for an appointment that is due now.
    given::<Appointment>([created()])
        .at(scheduled_at() + Duration::minutes(5))
        .when(RescheduleAppointment {
            new_scheduled_at: None,
            new_doctor_id: Some(OTHER_DOCTOR),
            reason: None,
        })
        .then_events(|events| assert_eq!(events.len(), 1));
}

#[test]
fn reschedule_that_changes_nothing_is_rejected() {
    let no_change = [
        (None, None),
        (Some(scheduled_at()), None),
        (None, Some(DOCTOR)),
        (Some(scheduled_at()), Some(DOCTOR)),
    ];
    for (new_scheduled_at, new_doctor_id) in no_change {
        given::<Appointment>([created()])
            .when(RescheduleAppointment {
                new_scheduled_at,
                new_doctor_id,
                reason: Some("x".into()),
            })
            .then_expect_error(AppointmentError::NothingToReschedule);
    }
}

#[test]
fn reschedule_into_the_past_is_rejected() {
    for new_time in [now(), now() - Duration::hours(1)] {
        given::<Appointment>([created()])
            .when(RescheduleAppointment {
                new_scheduled_at: Some(new_time),
                new_doctor_id: Some(OTHER_DOCTOR),
                reason: None,
            })
            .then_expect_error(AppointmentError::ScheduledInPast {
                scheduled_at: new_time,
                now: now(),
            });
    }
}

#[test]
fn reschedule_before_creation_is_rejected() {
    given_no_events::<Appointment>()
        .when(RescheduleAppointment {
            new_scheduled_at: Some(scheduled_at()),
            new_doctor_id: None,
            reason: None,
        })
        .then_expect_error(AppointmentError::NotCreated);
}

#[test]
fn reschedule_of_a_closed_appointment_is_rejected() {
    let command = RescheduleAppointment {
        new_scheduled_at: None,
        new_doctor_id: Some(OTHER_DOCTOR),
        reason: None,
    };
    given::<Appointment>([created(), cancelled()])
        .when(command.clone())
        .then_expect_error(AppointmentError::Closed {
            status: AppointmentStatus::Cancelled,
        });
    given::<Appointment>([created(), completed()])
        .when(command)
        .then_expect_error(AppointmentError::Closed {
            status: AppointmentStatus::Completed,
        });
}

// ---------------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------------

#[test]
fn patient_cancelling_in_time_gets_a_refund() {
    let state = given::<Appointment>([created()])
        .when(cancel(CancelledBy::Patient))
        .then_expect_events([cancelled_event(CancelledBy::Patient, true)]);
    let record = state.appointment.unwrap();
    assert_eq!(record.status, AppointmentStatus::Cancelled);
    assert_eq!(
        record.cancellation,
        Some(CancellationRecord {
            cancelled_by: CancelledBy::Patient,
            refund_required: true
        })
    );
}

#[test]
fn patient_cancelling_exactly_at_the_window_still_gets_a_refund() {
    given::<Appointment>([created()])
        .at(scheduled_at() - Duration::hours(LATE_CANCELLATION_WINDOW_HOURS))
        .when(cancel(CancelledBy::Patient))
        .then_expect_events([cancelled_event(CancelledBy::Patient, true)]);
}

#[test]
fn patient_cancelling_late_or_after_the_time_gets_no_refund() {
    let late =
        scheduled_at() - Duration::hours(LATE_CANCELLATION_WINDOW_HOURS) + Duration::seconds(1);
    for at in [late, scheduled_at(), scheduled_at() + Duration::hours(1)] {
        given::<Appointment>([created()])
            .at(at)
            .when(cancel(CancelledBy::Patient))
            .then_expect_events([cancelled_event(CancelledBy::Patient, false)]);
    }
}

#[test]
fn clinic_or_doctor_cancelling_always_refunds_a_paid_appointment() {
    for by in [CancelledBy::Clinic, CancelledBy::Doctor] {
        for at in [
            now(),
            scheduled_at() - Duration::hours(1),
            scheduled_at() + Duration::hours(1),
        ] {
            given::<Appointment>([created()])
                .at(at)
                .when(cancel(by))
                .then_expect_events([cancelled_event(by, true)]);
        }
    }
}

#[test]
fn a_free_appointment_never_requires_a_refund() {
    for by in CancelledBy::ALL {
        given::<Appointment>([created_with_cost(Money::ZERO)])
            .when(cancel(by))
            .then_expect_events([cancelled_event(by, false)]);
    }
}

#[test]
fn cancel_before_creation_is_rejected() {
    given_no_events::<Appointment>()
        .when(cancel(CancelledBy::Patient))
        .then_expect_error(AppointmentError::NotCreated);
}

#[test]
fn cancel_of_a_closed_appointment_is_rejected() {
    given::<Appointment>([created(), cancelled()])
        .when(cancel(CancelledBy::Doctor))
        .then_expect_error(AppointmentError::Closed {
            status: AppointmentStatus::Cancelled,
        });
    given::<Appointment>([created(), completed()])
        .when(cancel(CancelledBy::Patient))
        .then_expect_error(AppointmentError::Closed {
            status: AppointmentStatus::Completed,
        });
}

// ---------------------------------------------------------------------------------------------
// Complete
// ---------------------------------------------------------------------------------------------

#[test]
fn complete_records_the_visit() {
    let state = given::<Appointment>([created(), rescheduled()])
        .when(complete_command())
        .then_expect_events([completed()]);
    let record = state.appointment.unwrap();
    assert_eq!(record.status, AppointmentStatus::Completed);
    assert_eq!(
        record.completion.unwrap().final_cost,
        Money::from_minor(162_050)
    );
}

#[test]
fn complete_accepts_the_limits() {
    let command = CompleteAppointment {
        actual_duration_minutes: ACTUAL_DURATION_MINUTES_MAX,
        services_rendered: vec!["s".to_owned(); SERVICES_RENDERED_MAX],
        final_cost: Money::ZERO,
    };
    given::<Appointment>([created()])
        .when(command)
        .then_events(|events| assert_eq!(events.len(), 1));
    let command = CompleteAppointment {
        actual_duration_minutes: 1,
        ..complete_command()
    };
    given::<Appointment>([created()])
        .when(command)
        .then_events(|events| assert_eq!(events.len(), 1));
}

#[test]
fn complete_rejects_a_duration_out_of_range() {
    for minutes in [0, ACTUAL_DURATION_MINUTES_MAX + 1] {
        let command = CompleteAppointment {
            actual_duration_minutes: minutes,
            ..complete_command()
        };
        given::<Appointment>([created()])
            .when(command)
            .then_expect_error(AppointmentError::DurationOutOfRange {
                minutes,
                max: ACTUAL_DURATION_MINUTES_MAX,
            });
    }
}

#[test]
fn complete_rejects_bad_service_lists() {
    let none = CompleteAppointment {
        services_rendered: vec![],
        ..complete_command()
    };
    given::<Appointment>([created()])
        .when(none)
        .then_expect_error(AppointmentError::NoServicesRendered);

    let too_many = CompleteAppointment {
        services_rendered: vec!["s".to_owned(); SERVICES_RENDERED_MAX + 1],
        ..complete_command()
    };
    given::<Appointment>([created()])
        .when(too_many)
        .then_expect_error(AppointmentError::TooManyServices {
            count: SERVICES_RENDERED_MAX + 1,
            max: SERVICES_RENDERED_MAX,
        });

    let blank = CompleteAppointment {
        services_rendered: vec!["examination".to_owned(), " ".to_owned()],
        ..complete_command()
    };
    given::<Appointment>([created()])
        .when(blank)
        .then_expect_error(AppointmentError::BlankServiceName { index: 1 });
}

#[test]
fn complete_rejects_a_negative_final_cost() {
    let command = CompleteAppointment {
        final_cost: Money::from_minor(-100),
        ..complete_command()
    };
    given::<Appointment>([created()])
        .when(command)
        .then_expect_error(AppointmentError::NegativeCost {
            field: "final_cost",
            amount: Money::from_minor(-100),
        });
}

#[test]
fn complete_before_creation_is_rejected() {
    given_no_events::<Appointment>()
        .when(complete_command())
        .then_expect_error(AppointmentError::NotCreated);
}

#[test]
fn complete_of_a_closed_appointment_is_rejected() {
    given::<Appointment>([created(), cancelled()])
        .when(complete_command())
        .then_expect_error(AppointmentError::Closed {
            status: AppointmentStatus::Cancelled,
        });
    given::<Appointment>([created(), completed()])
        .when(complete_command())
        .then_expect_error(AppointmentError::Closed {
            status: AppointmentStatus::Completed,
        });
}

#[test]
fn errors_have_readable_messages() {
    assert_eq!(
        AppointmentError::Closed {
            status: AppointmentStatus::Completed
        }
        .to_string(),
        "appointment is completed: it accepts no further change"
    );
    assert_eq!(
        AppointmentError::NegativeCost {
            field: "final_cost",
            amount: Money::from_minor(-150)
        }
        .to_string(),
        "final_cost must be >= 0, got -1.50"
    );
}

// ---------------------------------------------------------------------------------------------
// Lifecycle table and invariants
// ---------------------------------------------------------------------------------------------

#[test]
fn lifecycle_table() {
    use AppointmentStatus::*;
    let all = [Scheduled, Cancelled, Completed];
    let allowed = [
        (Scheduled, Scheduled),
        (Scheduled, Cancelled),
        (Scheduled, Completed),
    ];
    assert_transition_table(&all, &allowed, can_transition);
    for from in all {
        assert_eq!(
            from.is_final(),
            all.iter().all(|&to| !can_transition(from, to))
        );
    }
}

fn live_record() -> AppointmentRecord {
    Appointment::replay(AppointmentState::default(), &[created()])
        .appointment
        .unwrap()
}

fn broken(change: impl FnOnce(&mut AppointmentRecord)) -> Result<(), String> {
    let mut record = live_record();
    change(&mut record);
    Appointment::check_invariants(&AppointmentState {
        appointment: Some(record),
    })
}

#[test]
fn check_invariants_catches_every_listed_invariant() {
    assert_eq!(
        Appointment::check_invariants(&AppointmentState::default()),
        Ok(())
    );
    assert_eq!(broken(|_| {}), Ok(()));
    let completion = CompletionRecord {
        actual_duration_minutes: 30,
        services_rendered: vec!["exam".to_owned()],
        final_cost: Money::ZERO,
    };
    let cancellation = CancellationRecord {
        cancelled_by: CancelledBy::Patient,
        refund_required: false,
    };

    // Status agrees with the recorded outcome.
    assert!(broken(|r| r.status = AppointmentStatus::Cancelled).is_err());
    assert!(broken(|r| r.status = AppointmentStatus::Completed).is_err());
    assert!(broken(|r| r.cancellation = Some(cancellation.clone())).is_err());
    let (c1, c2) = (cancellation.clone(), completion.clone());
    assert!(broken(move |r| {
        r.status = AppointmentStatus::Cancelled;
        r.cancellation = Some(c1);
        r.completion = Some(c2);
    })
    .is_err());
    // Costs.
    assert!(broken(|r| r.estimated_cost = Money::from_minor(-1)).is_err());
    let c = completion.clone();
    assert!(broken(move |r| {
        r.status = AppointmentStatus::Completed;
        r.completion = Some(CompletionRecord {
            final_cost: Money::from_minor(-1),
            ..c
        });
    })
    .is_err());
    // Refund needs a cost.
    assert!(broken(|r| {
        r.estimated_cost = Money::ZERO;
        r.status = AppointmentStatus::Cancelled;
        r.cancellation = Some(CancellationRecord {
            cancelled_by: CancelledBy::Clinic,
            refund_required: true,
        });
    })
    .is_err());
    // Completion bounds.
    for bad in [
        CompletionRecord {
            actual_duration_minutes: 0,
            ..completion.clone()
        },
        CompletionRecord {
            actual_duration_minutes: ACTUAL_DURATION_MINUTES_MAX + 1,
            ..completion.clone()
        },
        CompletionRecord {
            services_rendered: vec![],
            ..completion.clone()
        },
        CompletionRecord {
            services_rendered: vec![" ".to_owned()],
            ..completion.clone()
        },
        CompletionRecord {
            services_rendered: vec!["s".to_owned(); SERVICES_RENDERED_MAX + 1],
            ..completion.clone()
        },
    ] {
        assert!(broken(|r| {
            r.status = AppointmentStatus::Completed;
            r.completion = Some(bad);
        })
        .is_err());
    }
    // Service type.
    assert!(broken(|r| r.service_type = String::new()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Contracts and round trips
// ---------------------------------------------------------------------------------------------

fn all_events() -> Vec<AppointmentEvent> {
    vec![created(), rescheduled(), cancelled(), completed()]
}

fn contract(event_type: &str) -> &'static [(&'static str, &'static str)] {
    match event_type {
        "AppointmentCreated" => &[
            ("appointment_id", "uuid"),
            ("patient_id", "uuid"),
            ("doctor_id", "uuid"),
            ("clinic_id", "uuid"),
            ("scheduled_at", "datetime"),
            ("service_type", "string"),
            ("estimated_cost", "decimal"),
        ],
        "AppointmentRescheduled" => &[
            ("appointment_id", "uuid"),
            ("previous_scheduled_at", "datetime"),
            ("new_scheduled_at", "datetime"),
            ("previous_doctor_id", "uuid"),
            ("new_doctor_id", "uuid"),
            ("reason", "string?"),
        ],
        "AppointmentCancelled" => &[
            ("appointment_id", "uuid"),
            ("cancelled_by", "enum:patient|clinic|doctor"),
            ("reason", "string?"),
            ("refund_required", "boolean"),
        ],
        "AppointmentCompleted" => &[
            ("appointment_id", "uuid"),
            ("actual_duration_minutes", "integer"),
            ("services_rendered", "array"),
            ("final_cost", "decimal"),
        ],
        other => panic!("no contract for {other}"),
    }
}

#[test]
fn every_event_meets_its_catalog_contract() {
    let expected_types = [
        "AppointmentCreated",
        "AppointmentRescheduled",
        "AppointmentCancelled",
        "AppointmentCompleted",
    ];
    let mut with_null_reasons = all_events();
    with_null_reasons.push(
        AppointmentRescheduled {
            appointment_id: APPOINTMENT,
            previous_scheduled_at: scheduled_at(),
            new_scheduled_at: scheduled_at(),
            previous_doctor_id: DOCTOR,
            new_doctor_id: OTHER_DOCTOR,
            reason: None,
        }
        .into(),
    );
    with_null_reasons.push(cancelled_event(CancelledBy::Doctor, false));
    for (i, event) in with_null_reasons.iter().enumerate() {
        if i < expected_types.len() {
            assert_eq!(event.event_type(), expected_types[i]);
        }
        assert_eq!(event.topic(), "clinics.appointments");
        assert_eq!(event.event_version(), "1.0");
        let json = event.payload_json();
        let contract = contract(event.event_type());
        // Exactly the catalog's fields: no more, no fewer.
        assert_exact_contract(event.event_type(), &json, contract);
    }
}

#[test]
fn payload_json_spells_values_as_the_catalog_does() {
    let json = completed().payload_json();
    assert_eq!(json["final_cost"], "1620.50");
    assert_eq!(
        json["services_rendered"],
        serde_json::json!(["examination", "ecg"])
    );
    assert_eq!(json["actual_duration_minutes"], 45);
    let json = created().payload_json();
    assert_eq!(json["scheduled_at"], "2026-01-04T00:00:00Z");
    assert_eq!(json["appointment_id"], APPOINTMENT.to_string());
    let json = cancelled_event(CancelledBy::Patient, false).payload_json();
    assert_eq!(json["cancelled_by"], "patient");
    assert_eq!(json["refund_required"], false);
    let json = cancelled().payload_json();
    assert!(json["reason"].is_null());
}

#[test]
fn a_catalog_json_payload_deserializes() {
    let json = serde_json::json!({
        "appointment_id": APPOINTMENT.to_string(),
        "cancelled_by": "doctor",
        "reason": null,
        "refund_required": true
    });
    let event: AppointmentCancelled = serde_json::from_value(json).unwrap();
    assert_eq!(event.cancelled_by, CancelledBy::Doctor);
}

#[test]
fn every_event_round_trips_through_json_and_the_codec() {
    for event in all_events() {
        assert_json_and_codec_round_trip(&event);
        assert_stored_event_round_trip::<Appointment>(&event);
    }
}

#[test]
fn decode_event_refuses_a_mismatched_type_or_major_version() {
    let stored = Appointment::encode_event(&created());
    assert!(matches!(
        Appointment::decode_event("AppointmentCancelled", "1.0", &stored),
        Err(CodecError::Mismatch(_))
    ));
    assert!(matches!(
        Appointment::decode_event("AppointmentCreated", "2.0", &stored),
        Err(CodecError::UnknownVersion { .. })
    ));
}

#[test]
fn every_command_round_trips_through_json_and_the_codec() {
    let commands: Vec<AppointmentCommand> = vec![
        create_command().into(),
        RescheduleAppointment {
            new_scheduled_at: Some(scheduled_at()),
            new_doctor_id: None,
            reason: Some("r".into()),
        }
        .into(),
        RescheduleAppointment {
            new_scheduled_at: None,
            new_doctor_id: Some(OTHER_DOCTOR),
            reason: None,
        }
        .into(),
        cancel(CancelledBy::Doctor).into(),
        complete_command().into(),
    ];
    for command in &commands {
        assert_json_and_codec_round_trip(command);
    }
}

#[test]
fn state_round_trips_through_json_and_the_codec() {
    let state = Appointment::replay(
        AppointmentState::default(),
        &[created(), rescheduled(), completed()],
    );
    assert_json_and_codec_round_trip(&state);
}

// ---------------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------------

#[test]
fn the_demo_workload_reaches_every_outcome() {
    let (mut completed, mut cancelled, mut rescheduled, mut rejected) = (0, 0, 0, 0);
    for seed in 0..200u64 {
        let mut rng = DemoRng::new(seed);
        let mut state = AppointmentState::default();
        let mut ctx = DecideContext::new(Uuid::from_u128(seed as u128 + 1).to_string(), now());
        for _ in 0..12 {
            let command = Appointment::sample_command(&state, &ctx, &mut rng);
            match Appointment::decide(&state, &command, &ctx) {
                Ok(events) => {
                    for event in &events {
                        if matches!(event, AppointmentEvent::AppointmentRescheduled(_)) {
                            rescheduled += 1;
                        }
                        Appointment::apply(&mut state, event);
                    }
                    Appointment::check_invariants(&state).unwrap();
                }
                Err(_) => rejected += 1,
            }
            ctx.now += Duration::minutes(30);
        }
        let record = state
            .appointment
            .expect("the workload creates the appointment");
        assert_eq!(
            record.appointment_id.to_string(),
            ctx.aggregate_id,
            "uses the aggregate id"
        );
        match record.status {
            AppointmentStatus::Completed => completed += 1,
            AppointmentStatus::Cancelled => cancelled += 1,
            AppointmentStatus::Scheduled => {}
        }
    }
    assert!(
        completed > 50 && cancelled > 20 && rescheduled > 20 && rejected > 0,
        "completed {completed} cancelled {cancelled} rescheduled {rescheduled} rejected {rejected}"
    );
}

// ---------------------------------------------------------------------------------------------
// Property test
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// A plausible command from the demo workload, drawn with this seed.
    Sample(u64),
    /// An arbitrary command, often invalid.
    Command(AppointmentCommand),
}

fn arb_id() -> impl Strategy<Value = Uuid> {
    (1u128..=3).prop_map(Uuid::from_u128)
}

fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    (-24 * 60i64..10 * 24 * 60).prop_map(|m| fixed_now() + Duration::minutes(m))
}

fn arb_money() -> impl Strategy<Value = Money> {
    (-1_000i64..500_000).prop_map(Money::from_minor)
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), Just(" ".to_owned()), "[a-z]{1,8}"]
}

fn arb_command() -> impl Strategy<Value = AppointmentCommand> {
    prop_oneof![
        (
            arb_id(),
            arb_id(),
            arb_id(),
            arb_id(),
            arb_time(),
            arb_text(),
            arb_money()
        )
            .prop_map(
                |(
                    appointment_id,
                    patient_id,
                    doctor_id,
                    clinic_id,
                    scheduled_at,
                    service_type,
                    estimated_cost,
                )| {
                    CreateAppointment {
                        appointment_id,
                        patient_id,
                        doctor_id,
                        clinic_id,
                        scheduled_at,
                        service_type,
                        estimated_cost,
                    }
                    .into()
                }
            ),
        (
            proptest::option::of(arb_time()),
            proptest::option::of(arb_id()),
            proptest::option::of(arb_text())
        )
            .prop_map(|(new_scheduled_at, new_doctor_id, reason)| {
                RescheduleAppointment {
                    new_scheduled_at,
                    new_doctor_id,
                    reason,
                }
                .into()
            }),
        (
            proptest::sample::select(CancelledBy::ALL.to_vec()),
            proptest::option::of(arb_text())
        )
            .prop_map(|(cancelled_by, reason)| CancelAppointment {
                cancelled_by,
                reason
            }
            .into()),
        (
            0u32..1_500,
            proptest::collection::vec(arb_text(), 0..4),
            arb_money()
        )
            .prop_map(|(actual_duration_minutes, services_rendered, final_cost)| {
                CompleteAppointment {
                    actual_duration_minutes,
                    services_rendered,
                    final_cost,
                }
                .into()
            }),
    ]
}

fn arb_steps() -> impl Strategy<Value = Vec<(Step, i64)>> {
    let step = prop_oneof![
        3 => any::<u64>().prop_map(Step::Sample),
        1 => arb_command().prop_map(Step::Command),
    ];
    proptest::collection::vec((step, 0i64..240), 1..30)
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        rng_seed: RngSeed::Fixed(0xA990_1A7E),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn random_command_sequences_keep_every_guarantee(steps in arb_steps()) {
        let mut ctx = DecideContext::new(APPOINTMENT.to_string(), fixed_now());
        let mut state = AppointmentState::default();
        let mut log: Vec<AppointmentEvent> = Vec::new();
        for (step, advance_minutes) in steps {
            ctx.now += Duration::minutes(advance_minutes);
            let command = match step {
                Step::Sample(seed) => {
                    Appointment::sample_command(&state, &ctx, &mut DemoRng::new(seed))
                }
                Step::Command(command) => command,
            };
            let before = state.clone();
            match Appointment::decide(&state, &command, &ctx) {
                Ok(events) => {
                    for event in events {
                        assert_stored_event_round_trip::<Appointment>(&event);
                        Appointment::apply(&mut state, &event);
                        log.push(event);
                    }
                }
                Err(_) => prop_assert_eq!(&state, &before, "a rejection changed the state"),
            }
            if let Err(violation) = Appointment::check_invariants(&state) {
                return Err(TestCaseError::fail(format!("{violation} after {command:?}")));
            }
            prop_assert_eq!(&Appointment::replay(AppointmentState::default(), &log), &state);
        }
        assert_replay_and_snapshots_agree::<Appointment>(&log, &state);
    }
}
