//! Property tests of the `Device` aggregate, and a long run of its demo workload.
//!
//! `random_command_sequences_keep_every_promise`: proptest draws sequences of up to 80 "ops"
//! (a kind, two random numbers and a clock step, mostly 0..=60 s, sometimes up to 900 s). Each op is turned into a
//! command *for the current state*: mostly plausible (connect when disconnected, calibrate
//! for the real owner, readings with growing hours, errors close together so the automatic
//! disconnect fires), with invalid ones mixed in (wrong owner, NaN, out-of-range values,
//! falling hours, reserved reason, commands in the wrong status). After every command:
//! - the invariants hold;
//! - a rejected command leaves the state unchanged (it is simply not applied, and `decide`
//!   is pure: deciding it again gives the same answer);
//! - an accepted command moves the status only along `can_transition`, and operating hours
//!   never go down;
//! - every accepted event survives `encode_event`/`decode_event` unchanged;
//! - replaying all accepted events from `Default` rebuilds the live state;
//! - the state survives a snapshot round trip (`codec::encode`/`decode` of the state after a
//!   drawn prefix of events, then the remaining events applied, equals the live state).
//!
//! `the_demo_workload_explores_the_whole_lifecycle`: 20 seeds × 2000 commands from
//! `Workload::sample_command` with `DemoRng`: invariants always hold, most commands are
//! accepted, and every event type and both status changes occur. Everything is
//! deterministic: a fixed clock advanced by drawn steps, no wall clock, no sleeps.

use chrono::Duration;
use evershard_aggregates::device::*;
use evershard_model::testing::{
    assert_snapshot_and_tail_agree, assert_stored_event_round_trip, fixed_now,
};
use evershard_model::{codec, Aggregate, DecideContext, DemoRng, DomainEvent, Workload};
use proptest::prelude::*;
use std::collections::BTreeSet;
use uuid::Uuid;

const DEVICE: Uuid = Uuid::from_u128(0xD0);
const MODEL: Uuid = Uuid::from_u128(0x30);
const OWNERS: [Uuid; 3] = [
    Uuid::from_u128(0xA1),
    Uuid::from_u128(0xB2),
    Uuid::from_u128(0xC3),
];

#[derive(Debug, Clone)]
struct Op {
    kind: u8,
    a: u64,
    b: u64,
    step_seconds: i64,
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly short steps, so that errors cluster inside the window; sometimes long ones.
    let step = prop_oneof![3 => 0i64..=60, 1 => 0i64..=900];
    (0u8..100, any::<u64>(), any::<u64>(), step).prop_map(|(kind, a, b, step_seconds)| Op {
        kind,
        a,
        b,
        step_seconds,
    })
}

fn owner(state: &DeviceState) -> Uuid {
    state.device.as_ref().map_or(OWNERS[0], |d| d.owner_id)
}

/// A command for `state`, chosen by `op`: plausible most of the time, invalid sometimes.
fn command_for(state: &DeviceState, op: &Op) -> DeviceCommand {
    let invalid = op.b % 10 == 0;
    let current_owner = owner(state);
    let last_hours = state.last_operating_hours.unwrap_or(0);
    // Bias by status so the lifecycle really moves.
    // Kinds: 0 connect, 1 calibrate, 2 reading, 3 error, 4 prediction, 5 disconnect.
    let kind = match (state.status, op.kind) {
        (DeviceStatus::New | DeviceStatus::Disconnected, 0..=59) => 0,
        (DeviceStatus::Connected, 0..=49) if !state.is_calibrated() => 1,
        (DeviceStatus::Connected, 50..=59) if !state.is_calibrated() => 2,
        (DeviceStatus::Connected, k) => match k {
            0..=44 => 2,
            45..=64 => 3,
            65..=72 => 4,
            73..=80 => 1,
            81..=85 => 0,
            _ => 5,
        },
        (_, k) => k % 6,
    };
    match kind {
        0 => ConnectDevice {
            device_id: if invalid && op.a % 3 == 0 {
                Uuid::from_u128(0xD1)
            } else {
                DEVICE
            },
            serial_number: if invalid && op.a % 3 == 1 {
                " ".into()
            } else {
                "SN-1".into()
            },
            model_id: MODEL,
            firmware_version: format!("1.{}.0", op.a % 4),
            owner_id: OWNERS[(op.a % 3) as usize],
            certifications: if invalid && op.a % 3 == 2 {
                vec![]
            } else {
                vec![Certification::Fda, Certification::Ce]
            },
        }
        .into(),
        1 => CalibrateDevice {
            owner_id: if invalid {
                OWNERS[(op.a % 3) as usize]
            } else {
                current_owner
            },
            temperature_offset_celsius: if invalid && op.a % 2 == 0 {
                f64::NAN
            } else {
                (op.a % 121) as f64 / 10.0 - 6.0
            },
            vibration_scale_factor: 1.0,
        }
        .into(),
        2 => {
            let hours = if invalid && last_hours > 0 {
                last_hours - 1 - op.a % last_hours
            } else if op.a % 7 == 0 {
                return RecordTelemetry {
                    firmware_version: None,
                    metrics: TelemetryMetrics::default(),
                }
                .into();
            } else {
                last_hours + op.a % 5
            };
            let temperature = match op.b % 25 {
                1 => f64::NAN,
                2 => 125.5,
                3 => f64::INFINITY,
                _ => (op.a % 1_650) as f64 / 10.0 - 40.0,
            };
            RecordTelemetry {
                firmware_version: if op.b % 17 == 0 {
                    Some("2.0.0".into())
                } else {
                    None
                },
                metrics: TelemetryMetrics {
                    temperature: Some(temperature),
                    vibration: if op.b % 3 == 0 {
                        None
                    } else {
                        Some((op.b % 1_010) as f64 / 10.0)
                    },
                    operating_hours: Some(hours),
                    error_codes: if op.a % 11 == 0 {
                        vec!["W1".into()]
                    } else {
                        vec![]
                    },
                },
            }
            .into()
        }
        3 => ReportError {
            error_code: if invalid {
                String::new()
            } else {
                format!("E{}", op.a % 9)
            },
            description: String::new(),
        }
        .into(),
        4 => PredictFailure {
            predicted_failure_type: "overheating".into(),
            probability: if invalid {
                1.0 + (op.a % 5) as f64
            } else {
                (op.a % 1001) as f64 / 1000.0
            },
            estimated_days_to_failure: (op.b % 4_000) as u32,
            recommended_action: "inspect".into(),
        }
        .into(),
        _ => DisconnectDevice {
            reason: match op.a % 4 {
                0 => DisconnectReason::Requested,
                1 => DisconnectReason::ConnectionLost,
                2 => DisconnectReason::Unsupported,
                _ => DisconnectReason::RepeatedErrors,
            },
        }
        .into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_promise(
        ops in prop::collection::vec(op(), 1..80),
        snapshot_at in any::<prop::sample::Index>(),
    ) {
        let mut state = DeviceState::default();
        let mut log: Vec<DeviceEvent> = Vec::new();
        let mut now = fixed_now();
        for op in &ops {
            now += Duration::seconds(op.step_seconds);
            let ctx = DecideContext::new(DEVICE.to_string(), now);
            let command = command_for(&state, op);
            let before = state.clone();
            let result = Device::decide(&state, &command, &ctx);
            // decide is pure: the same input gives the same answer.
            prop_assert_eq!(&Device::decide(&state, &command, &ctx), &result);
            match result {
                Err(_) => prop_assert_eq!(&state, &before),
                Ok(events) => {
                    prop_assert!(!events.is_empty(), "accepted {:?} with no event", command);
                    for event in &events {
                        let from = state.status;
                        Device::apply(&mut state, event);
                        prop_assert!(
                            can_transition(from, state.status),
                            "{} -> {} by {:?}", from, state.status, event
                        );
                        assert_stored_event_round_trip::<Device>(event);
                        log.push(event.clone());
                    }
                    prop_assert!(
                        state.last_operating_hours >= before.last_operating_hours,
                        "operating hours went down: {:?} -> {:?}",
                        before.last_operating_hours, state.last_operating_hours
                    );
                }
            }
            if let Err(violation) = Device::check_invariants(&state) {
                prop_assert!(false, "invariant broken: {violation}\nstate: {state:#?}");
            }
            prop_assert_eq!(&Device::replay(DeviceState::default(), &log), &state);
            let decoded: DeviceState = codec::decode(&codec::encode(&state)).unwrap();
            prop_assert_eq!(&decoded, &state);
        }

        // Snapshot after a drawn prefix, then the rest of the events.
        let cut = snapshot_at.index(log.len() + 1);
        assert_snapshot_and_tail_agree::<Device>(&log, cut, &state);
    }
}

#[test]
fn the_demo_workload_explores_the_whole_lifecycle() {
    let mut seen_types = BTreeSet::new();
    let mut seen_transitions = BTreeSet::new();
    let mut seen_owner_change = false;
    let (mut accepted, mut total) = (0u64, 0u64);
    for seed in 0..20u64 {
        let mut rng = DemoRng::new(seed);
        let mut state = DeviceState::default();
        let mut now = fixed_now();
        let id = if seed % 2 == 0 {
            DEVICE.to_string()
        } else {
            format!("device-{seed}")
        };
        for _ in 0..2_000 {
            now += Duration::seconds(rng.range(1, 120));
            let ctx = DecideContext::new(id.clone(), now);
            let command = Device::sample_command(&state, &ctx, &mut rng);
            total += 1;
            if let Ok(events) = Device::decide(&state, &command, &ctx) {
                accepted += 1;
                for event in &events {
                    let from = state.status;
                    if let DeviceEvent::DeviceConnected(e) = event {
                        seen_owner_change |= e.previous_owner_id.is_some_and(|p| p != e.owner_id);
                    }
                    Device::apply(&mut state, event);
                    assert!(can_transition(from, state.status));
                    seen_types.insert(event.event_type());
                    seen_transitions.insert((from, state.status));
                }
            }
            Device::check_invariants(&state).unwrap_or_else(|v| panic!("seed {seed}: {v}"));
        }
        assert!(
            state.telemetry_count > 100,
            "seed {seed}: only {} readings",
            state.telemetry_count
        );
    }
    assert!(
        accepted * 100 >= total * 80,
        "only {accepted} of {total} commands accepted"
    );
    assert_eq!(seen_types.len(), 6, "event types seen: {seen_types:?}");
    assert!(seen_owner_change, "no handover to a new owner");
    use DeviceStatus::*;
    for t in [
        (New, Connected),
        (Connected, Disconnected),
        (Disconnected, Connected),
    ] {
        assert!(
            seen_transitions.contains(&t),
            "transition {t:?} never happened"
        );
    }
}

#[test]
fn repeated_errors_in_the_workload_disconnect_automatically() {
    // Enough seeds and steps that three errors land within ten minutes somewhere.
    let mut automatic = 0;
    for seed in 0..20u64 {
        let mut rng = DemoRng::new(seed);
        let mut state = DeviceState::default();
        let mut now = fixed_now();
        for _ in 0..2_000 {
            now += Duration::seconds(rng.range(1, 60));
            let ctx = DecideContext::new(DEVICE.to_string(), now);
            let command = Device::sample_command(&state, &ctx, &mut rng);
            if let Ok(events) = Device::decide(&state, &command, &ctx) {
                automatic += events
                    .iter()
                    .filter(|e| {
                        matches!(e, DeviceEvent::DeviceDisconnected(d)
                            if d.reason == DisconnectReason::RepeatedErrors)
                    })
                    .count();
                state = Device::replay(state, &events);
            }
        }
    }
    assert!(automatic > 0, "the automatic disconnect never fired");
}
