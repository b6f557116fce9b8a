//! The outbound contracts and the stored forms of the `Payment` aggregate.
//!
//! Proves for every payment event type: its `event_type`, `event_version` and topic
//! (`business.payments`); that `payload_json()` holds exactly the fields of the contract
//! written out below (seed names `payment_id`, `payer_id`, `amount`, `currency`,
//! `payment_method`, the rest documented in the module), with their JSON types, checked with
//! `assert_exact_contract`, and no CVV; and that every event, every command variant and a few
//! states survive a round trip through serde_json and through `codec` (bincode), events also
//! through `Aggregate::encode_event`/`decode_event`.

use chrono::Duration;
use evershard_aggregates::payment::*;
use evershard_model::testing::{
    assert_exact_contract, assert_json_and_codec_round_trip, assert_stored_event_round_trip,
    fixed_now,
};
use evershard_model::{Aggregate, Currency, DomainEvent, Money};
use uuid::Uuid;

const METHODS: &str = "enum:card|apple_pay|paypal|bank_transfer|cash";
const TARGETS: &str = "enum:order|invoice|appointment|service";

fn initiated() -> PaymentInitiated {
    PaymentInitiated {
        payment_id: Uuid::from_u128(1),
        payer_id: Uuid::from_u128(2),
        target_type: TargetType::Appointment,
        target_id: Uuid::from_u128(3),
        amount: Money::from_minor(12_345),
        currency: Currency::EUR,
        amount_usd: Money::from_minor(13_332),
        payment_method: PaymentMethod::ApplePay,
        cvv_checked: false,
        attempt: 1,
        initiated_at: fixed_now(),
    }
}

fn completed() -> PaymentCompleted {
    PaymentCompleted {
        payment_id: Uuid::from_u128(1),
        payer_id: Uuid::from_u128(2),
        target_type: TargetType::Order,
        target_id: Uuid::from_u128(3),
        amount: Money::from_minor(5_000),
        currency: Currency::USD,
        payment_method: PaymentMethod::Card,
        attempt: 2,
        provider_reference: "psp-42".into(),
        completed_at: fixed_now() + Duration::seconds(3),
    }
}

fn failed() -> PaymentFailed {
    PaymentFailed {
        payment_id: Uuid::from_u128(1),
        payer_id: Uuid::from_u128(2),
        target_type: TargetType::Invoice,
        target_id: Uuid::from_u128(3),
        amount: Money::from_minor(5_000),
        currency: Currency::RUB,
        payment_method: PaymentMethod::BankTransfer,
        attempt: 3,
        reason: "insufficient_funds".into(),
        failed_attempts: 3,
        blocked: true,
        failed_at: fixed_now(),
    }
}

fn refunded() -> PaymentRefunded {
    PaymentRefunded {
        payment_id: Uuid::from_u128(1),
        refund_id: Uuid::from_u128(4),
        payer_id: Uuid::from_u128(2),
        target_type: TargetType::Service,
        target_id: Uuid::from_u128(3),
        amount: Money::from_minor(1_000),
        currency: Currency::USD,
        total_refunded: Money::from_minor(1_000),
        fully_refunded: false,
        reason: "customer_request".into(),
        refunded_at: fixed_now(),
    }
}

fn all_events() -> Vec<PaymentEvent> {
    vec![
        initiated().into(),
        completed().into(),
        failed().into(),
        refunded().into(),
    ]
}

/// The contract of each event type: (field, type) as `assert_contract` reads them.
fn contract(event_type: &str) -> Vec<(&'static str, &'static str)> {
    let head = [
        ("payment_id", "uuid"),
        ("payer_id", "uuid"),
        ("target_type", TARGETS),
        ("target_id", "uuid"),
        ("amount", "decimal"),
        ("currency", "string"),
    ];
    let tail: &[(&str, &str)] = match event_type {
        "PaymentInitiated" => &[
            ("amount_usd", "decimal"),
            ("payment_method", METHODS),
            ("cvv_checked", "boolean"),
            ("attempt", "integer"),
            ("initiated_at", "datetime"),
        ],
        "PaymentCompleted" => &[
            ("payment_method", METHODS),
            ("attempt", "integer"),
            ("provider_reference", "string"),
            ("completed_at", "datetime"),
        ],
        "PaymentFailed" => &[
            ("payment_method", METHODS),
            ("attempt", "integer"),
            ("reason", "string"),
            ("failed_attempts", "integer"),
            ("blocked", "boolean"),
            ("failed_at", "datetime"),
        ],
        "PaymentRefunded" => &[
            ("refund_id", "uuid"),
            ("total_refunded", "decimal"),
            ("fully_refunded", "boolean"),
            ("reason", "string"),
            ("refunded_at", "datetime"),
        ],
        other => panic!("no contract for {other}"),
    };
    head.iter().chain(tail).copied().collect()
}

#[test]
fn every_event_type_names_its_contract_topic_and_version() {
    let names: Vec<&str> = all_events().iter().map(|e| e.event_type()).collect();
    assert_eq!(
        names,
        [
            "PaymentInitiated",
            "PaymentCompleted",
            "PaymentFailed",
            "PaymentRefunded"
        ]
    );
    for event in all_events() {
        assert_eq!(event.topic(), "business.payments");
        assert_eq!(event.event_version(), "1.0");
    }
    assert_eq!(Payment::TYPE, "Payment");
}

#[test]
fn every_payload_holds_exactly_its_contract() {
    for event in all_events() {
        let json = event.payload_json();
        let contract = contract(event.event_type());
        assert_exact_contract(event.event_type(), &json, &contract);
        assert!(json.get("cvv").is_none());
    }
}

#[test]
fn payload_values_are_published_as_documented() {
    let json = PaymentEvent::from(initiated()).payload_json();
    assert_eq!(json["amount"], "123.45");
    assert_eq!(json["amount_usd"], "133.32");
    assert_eq!(json["currency"], "EUR");
    assert_eq!(json["payment_method"], "apple_pay");
    assert_eq!(json["target_type"], "appointment");
    assert_eq!(json["initiated_at"], "2026-01-01T00:00:00Z");
    let methods: Vec<String> = PaymentMethod::ALL
        .iter()
        .map(|m| {
            serde_json::to_value(m)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        methods,
        ["card", "apple_pay", "paypal", "bank_transfer", "cash"]
    );
    for m in PaymentMethod::ALL {
        assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
    }
}

#[test]
fn events_round_trip_through_json_and_codec() {
    for event in all_events() {
        assert_json_and_codec_round_trip(&event);
        assert_stored_event_round_trip::<Payment>(&event);
    }
    assert_json_and_codec_round_trip(&initiated());
    assert_json_and_codec_round_trip(&completed());
    assert_json_and_codec_round_trip(&failed());
    assert_json_and_codec_round_trip(&refunded());
    // The payload JSON reads back as its struct.
    let back: PaymentRefunded =
        serde_json::from_value(PaymentEvent::from(refunded()).payload_json()).unwrap();
    assert_eq!(back, refunded());
}

#[test]
fn decode_event_refuses_a_mismatched_type_or_major_version() {
    let bytes = Payment::encode_event(&initiated().into());
    assert!(Payment::decode_event("PaymentCompleted", "1.0", &bytes).is_err());
    assert!(Payment::decode_event("PaymentInitiated", "2.0", &bytes).is_err());
    assert!(Payment::decode_event("PaymentInitiated", "1.3", &bytes).is_ok());
}

#[test]
fn commands_round_trip_through_json_and_codec() {
    let commands: Vec<PaymentCommand> = vec![
        InitiatePayment {
            payment_id: Uuid::from_u128(1),
            payer_id: Uuid::from_u128(2),
            target_type: TargetType::Order,
            target_id: Uuid::from_u128(3),
            amount: Money::from_minor(999),
            currency: Currency::RUB,
            payment_method: PaymentMethod::Card,
            cvv: Some(Cvv::new("0123")),
        }
        .into(),
        InitiatePayment {
            payment_id: Uuid::from_u128(1),
            payer_id: Uuid::from_u128(2),
            target_type: TargetType::Service,
            target_id: Uuid::from_u128(3),
            amount: Money::from_minor(1),
            currency: Currency::USD,
            payment_method: PaymentMethod::Cash,
            cvv: None,
        }
        .into(),
        CompletePayment {
            provider_reference: "psp-1".into(),
        }
        .into(),
        FailPayment {
            reason: "cvv_mismatch".into(),
        }
        .into(),
        RefundPayment {
            refund_id: Uuid::from_u128(7),
            amount: None,
            reason: "r".into(),
        }
        .into(),
        RefundPayment {
            refund_id: Uuid::from_u128(8),
            amount: Some(Money::from_minor(50)),
            reason: String::new(),
        }
        .into(),
    ];
    for command in &commands {
        assert_json_and_codec_round_trip(command);
    }
}

#[test]
fn states_round_trip_through_json_and_codec() {
    let states = [
        PaymentState::default(),
        Payment::replay(PaymentState::default(), &[initiated().into()]),
        Payment::replay(
            PaymentState::default(),
            &[
                PaymentEvent::from(PaymentInitiated {
                    amount: Money::from_minor(5_000),
                    ..initiated()
                }),
                completed().into(),
                refunded().into(),
            ],
        ),
    ];
    for state in &states {
        assert_json_and_codec_round_trip(state);
    }
    assert_eq!(states[2].status, PaymentStatus::PartiallyRefunded);
}
