//! The store keeps time at microsecond resolution, and every path to `decide` agrees on it:
//! a `ManualClock`, `given().at()` in a unit test and the engine all hand `decide` the same
//! truncated instant, so a decision made "at exactly" a deadline is the same in a unit test
//! and through the engine. Before, the unit test saw nanoseconds and the engine did not.
//!
//! The case: an appointment scheduled at T + 500 ns, decided at T + 900 ns. At nanosecond
//! resolution "now" is past the schedule (rejected); at the store's resolution "now" is T, and
//! T + 500 ns (the command's own value) lies ahead (accepted). Both paths must say accepted.

mod common;
use chrono::{DateTime, Duration, Utc};
use common::*;
use evershard::aggregates::appointment::{Appointment, AppointmentEvent, CreateAppointment};
use evershard::model::testing::given_no_events;
use evershard::model::{Clock, Money};
use evershard::{Engine, ManualClock};
use std::sync::Arc;
use uuid::Uuid;

fn create(scheduled_at: DateTime<Utc>) -> CreateAppointment {
    CreateAppointment {
        appointment_id: Uuid::from_u128(1),
        patient_id: Uuid::from_u128(2),
        doctor_id: Uuid::from_u128(3),
        clinic_id: Uuid::from_u128(4),
        scheduled_at,
        service_type: "consultation".to_owned(),
        estimated_cost: Money::from_major(1500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_test_and_engine_decide_at_the_same_instant() {
    let decided_at = t0() + Duration::nanoseconds(900);
    let scheduled_at = t0() + Duration::nanoseconds(500);

    let clock = Arc::new(ManualClock::new(decided_at));
    assert_eq!(clock.now(), t0(), "the clock keeps microseconds");

    let unit = given_no_events::<Appointment>()
        .at(decided_at)
        .when(create(scheduled_at))
        .result()
        .clone();

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Appointment>()
        .clock(clock)
        .open()
        .await
        .unwrap();
    let through_engine = engine
        .execute::<Appointment>("a-1", create(scheduled_at))
        .await;
    engine.shutdown().await.unwrap();

    let unit_events = unit.expect("accepted in the unit test");
    let engine_events = through_engine.expect("accepted through the engine");
    assert_eq!(unit_events.len(), 1);
    assert!(matches!(
        unit_events[0],
        AppointmentEvent::AppointmentCreated(_)
    ));
    assert_eq!(
        engine_events
            .iter()
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>(),
        unit_events
    );
    assert_eq!(
        engine_events[0].timestamp,
        t0(),
        "stored time is the decided time"
    );
}
