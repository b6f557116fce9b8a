//! The outbound contracts and the stored forms of the `Payment` aggregate.
//!
//! Proves for every payment event type: its `event_type`, `event_version` (`PaymentInitiated`
//! 1.1, the rest 1.0) and topic (`business.payments`; `bank.payments` for `PaymentReceived`
//! and `PaymentProcessed`); that `payload_json()` holds exactly the fields of the contract
//! written out below (for the two bank events the catalog's contracts field for field; for the
//! others seed names `payment_id`, `payer_id`, `amount`, `currency`, `payment_method`, the
//! rest documented in the module), with their JSON types, checked with
//! `assert_exact_contract`, and no CVV; that every event, every command variant and a few
//! states survive a round trip through serde_json and through `codec` (bincode), events also
//! through `Aggregate::encode_event`/`decode_event`; and that a stored `PaymentInitiated` 1.0
//! is upcast to 1.1 while the unchanged 1.0 events still decode.

use chrono::Duration;
use evershard_aggregates::payment::*;
use evershard_model::testing::{
    assert_command_round_trip, assert_exact_contract, assert_json_and_codec_round_trip,
    assert_stored_event_round_trip, fixed_now,
};
use evershard_model::{codec, Aggregate, Currency, DomainEvent, Money};
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
        beneficiary_department_id: None,
        transfer: None,
    }
}

/// A 1.1 `PaymentInitiated` with both new fields set: an invoice paid by outgoing transfer.
fn initiated_transfer_for_invoice() -> PaymentInitiated {
    PaymentInitiated {
        target_type: TargetType::Invoice,
        payment_method: PaymentMethod::BankTransfer,
        beneficiary_department_id: Some(Uuid::from_u128(5)),
        transfer: Some(TransferAccounts {
            from_account_id: Uuid::from_u128(6),
            to_account_id: Uuid::from_u128(7),
            reference: Some("INV-000042".into()),
        }),
        ..initiated()
    }
}

fn received() -> PaymentReceived {
    PaymentReceived {
        payment_id: Uuid::from_u128(1),
        invoice_id: Uuid::from_u128(3),
        payer_id: Uuid::from_u128(2),
        amount: Money::from_minor(123_450),
        payment_method: InvoicePaymentMethod::BankTransfer,
        beneficiary_department_id: Uuid::from_u128(5),
    }
}

fn processed(reference: Option<&str>) -> PaymentProcessed {
    PaymentProcessed {
        payment_id: Uuid::from_u128(1),
        from_account_id: Uuid::from_u128(6),
        to_account_id: Uuid::from_u128(7),
        amount: Money::from_minor(123_450),
        currency: Currency::RUB,
        reference: reference.map(str::to_owned),
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
        received().into(),
        processed(Some("INV-000042")).into(),
        processed(None).into(),
        initiated_transfer_for_invoice().into(),
    ]
}

/// The catalog contracts of the bank events (domain-events-catalog.md, `PaymentReceived` and
/// `PaymentProcessed`), field for field, and nothing else.
fn bank_contract(event_type: &str) -> Option<Vec<(&'static str, &'static str)>> {
    match event_type {
        "PaymentReceived" => Some(vec![
            ("payment_id", "uuid"),
            ("invoice_id", "uuid"),
            ("payer_id", "uuid"),
            ("amount", "decimal"),
            ("payment_method", "enum:bank_transfer|card|cash"),
            ("beneficiary_department_id", "uuid"),
        ]),
        "PaymentProcessed" => Some(vec![
            ("payment_id", "uuid"),
            ("from_account_id", "uuid"),
            ("to_account_id", "uuid"),
            ("amount", "decimal"),
            ("currency", "string"),
            ("reference", "string?"),
        ]),
        _ => None,
    }
}

/// The contract of each event type: (field, type) as `assert_contract` reads them.
fn contract(event_type: &str) -> Vec<(&'static str, &'static str)> {
    if let Some(bank) = bank_contract(event_type) {
        return bank;
    }
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
            ("beneficiary_department_id", "uuid?"),
            ("transfer", "object?"),
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
    let names: Vec<&str> = all_events()[..6].iter().map(|e| e.event_type()).collect();
    assert_eq!(
        names,
        [
            "PaymentInitiated",
            "PaymentCompleted",
            "PaymentFailed",
            "PaymentRefunded",
            "PaymentReceived",
            "PaymentProcessed"
        ]
    );
    for event in all_events() {
        let (topic, version) = match event.event_type() {
            "PaymentReceived" | "PaymentProcessed" => ("bank.payments", "1.0"),
            "PaymentInitiated" => ("business.payments", "1.1"),
            _ => ("business.payments", "1.0"),
        };
        assert_eq!(event.topic(), topic, "{}", event.event_type());
        assert_eq!(event.event_version(), version, "{}", event.event_type());
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
    for m in InvoicePaymentMethod::ALL {
        assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        assert_eq!(PaymentMethod::from(m).for_invoice(), Some(m));
    }
}

#[test]
fn bank_payloads_are_published_as_the_catalog_documents() {
    let json = PaymentEvent::from(received()).payload_json();
    assert_eq!(
        json,
        serde_json::json!({
            "payment_id": "00000000-0000-0000-0000-000000000001",
            "invoice_id": "00000000-0000-0000-0000-000000000003",
            "payer_id": "00000000-0000-0000-0000-000000000002",
            "amount": "1234.50",
            "payment_method": "bank_transfer",
            "beneficiary_department_id": "00000000-0000-0000-0000-000000000005",
        })
    );
    let json = PaymentEvent::from(processed(Some("INV-000042"))).payload_json();
    assert_eq!(
        json,
        serde_json::json!({
            "payment_id": "00000000-0000-0000-0000-000000000001",
            "from_account_id": "00000000-0000-0000-0000-000000000006",
            "to_account_id": "00000000-0000-0000-0000-000000000007",
            "amount": "1234.50",
            "currency": "RUB",
            "reference": "INV-000042",
        })
    );
    let json = PaymentEvent::from(processed(None)).payload_json();
    assert!(json["reference"].is_null());
    // PaymentInitiated 1.1: the new fields, nested transfer object.
    let json = PaymentEvent::from(initiated_transfer_for_invoice()).payload_json();
    assert_eq!(
        json["beneficiary_department_id"],
        "00000000-0000-0000-0000-000000000005"
    );
    assert_exact_contract(
        "PaymentInitiated.transfer",
        &json["transfer"],
        &[
            ("from_account_id", "uuid"),
            ("to_account_id", "uuid"),
            ("reference", "string?"),
        ],
    );
    let json = PaymentEvent::from(initiated()).payload_json();
    assert!(json["beneficiary_department_id"].is_null() && json["transfer"].is_null());
}

#[test]
fn a_stored_payment_initiated_1_0_is_upcast_to_1_1() {
    let legacy = PaymentInitiatedV1_0 {
        payment_id: Uuid::from_u128(1),
        payer_id: Uuid::from_u128(2),
        target_type: TargetType::Invoice,
        target_id: Uuid::from_u128(3),
        amount: Money::from_minor(12_345),
        currency: Currency::EUR,
        amount_usd: Money::from_minor(13_332),
        payment_method: PaymentMethod::ApplePay,
        cvv_checked: false,
        attempt: 1,
        initiated_at: fixed_now(),
    };
    // The bytes a 1.0-era writer stored: codec format 1 (positional), the only one it had.
    let bytes = codec::encode_compact(&PaymentEventV1_0::PaymentInitiated(legacy.clone()));
    let loaded = Payment::decode_event("PaymentInitiated", PAYMENT_INITIATED_V1_0_VERSION, &bytes)
        .expect("1.0 decodes");
    assert_eq!(
        loaded,
        PaymentEvent::PaymentInitiated(PaymentInitiated {
            target_type: TargetType::Invoice,
            ..initiated()
        })
    );
    assert_eq!(loaded, PaymentEvent::PaymentInitiated(legacy.upcast()));
    // The old positional layout is not the new one: read as 1.1 it is refused, not misread.
    assert!(Payment::decode_event("PaymentInitiated", "1.1", &bytes).is_err());
    // The unchanged events of 1.0 still decode as stored.
    for event in [completed().into(), failed().into(), refunded().into()] {
        let event: PaymentEvent = event;
        let stored = codec::encode_compact(&event);
        assert_eq!(
            Payment::decode_event(event.event_type(), "1.0", &stored),
            Ok(event)
        );
    }
    assert_eq!(Payment::STATE_SCHEMA_VERSION, 2);
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
    assert_json_and_codec_round_trip(&received());
    assert_json_and_codec_round_trip(&processed(None));
    assert_json_and_codec_round_trip(&initiated_transfer_for_invoice());
    let back: PaymentReceived =
        serde_json::from_value(PaymentEvent::from(received()).payload_json()).unwrap();
    assert_eq!(back, received());
    let back: PaymentProcessed =
        serde_json::from_value(PaymentEvent::from(processed(Some("x"))).payload_json()).unwrap();
    assert_eq!(back, processed(Some("x")));
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
    let bytes = Payment::encode_event(&received().into());
    assert!(Payment::decode_event("PaymentProcessed", "1.0", &bytes).is_err());
    assert!(Payment::decode_event("PaymentReceived", "2.0", &bytes).is_err());
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
            beneficiary_department_id: None,
            transfer: None,
        }
        .into(),
        InitiatePayment {
            payment_id: Uuid::from_u128(1),
            payer_id: Uuid::from_u128(2),
            target_type: TargetType::Invoice,
            target_id: Uuid::from_u128(3),
            amount: Money::from_minor(999),
            currency: Currency::USD,
            payment_method: PaymentMethod::BankTransfer,
            cvv: None,
            beneficiary_department_id: Some(Uuid::from_u128(5)),
            transfer: Some(TransferAccounts {
                from_account_id: Uuid::from_u128(6),
                to_account_id: Uuid::from_u128(7),
                reference: None,
            }),
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
            beneficiary_department_id: None,
            transfer: None,
        }
        .into(),
        CompletePayment {
            provider_reference: "psp-1".into(),
            attempt: None,
        }
        .into(),
        FailPayment {
            reason: "cvv_mismatch".into(),
            attempt: None,
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
        assert_command_round_trip(command);
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
    let with_bank_data = Payment::replay(
        PaymentState::default(),
        &[initiated_transfer_for_invoice().into()],
    );
    assert_json_and_codec_round_trip(&with_bank_data);
    assert_eq!(states[2].status, PaymentStatus::PartiallyRefunded);
}

/// `attempt: None` is not encoded: a keyed `CompletePayment` or `FailPayment` sent before the
/// field existed has the same idempotency digest after (the same bytes), so its retry is a
/// repeat, not a conflict.
#[test]
fn an_answer_without_an_attempt_encodes_as_before_the_field() {
    #[derive(serde::Serialize)]
    enum Before {
        Complete { provider_reference: String },
        Fail { reason: String },
    }
    let now = |c: PaymentCommand| evershard_model::codec::encode(&c);
    assert_eq!(
        now(CompletePayment {
            provider_reference: "psp-1".into(),
            attempt: None,
        }
        .into()),
        evershard_model::codec::encode(&Before::Complete {
            provider_reference: "psp-1".into()
        })
    );
    assert_eq!(
        now(FailPayment {
            reason: "declined".into(),
            attempt: None,
        }
        .into()),
        evershard_model::codec::encode(&Before::Fail {
            reason: "declined".into()
        })
    );
}
