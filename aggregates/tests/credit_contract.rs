//! The outbound contracts and the stored forms of the `Credit` aggregate.
//!
//! Proves for every credit event type its `event_type`, `event_version` and topic
//! (`bank.credits`), and that `payload_json()` holds the catalog's minimal contract
//! (domain-events-catalog.md, written out below with names and JSON types; `date` is checked as
//! a string that parses as an ISO 8601 date, since `assert_contract` has no `date` type) and
//! nothing else; `CreditRejected` is checked against the contract this crate adds. Also proves
//! that every event, every command variant and a few states survive a round trip through
//! serde_json and through `codec` (bincode), events also through `encode_event`/`decode_event`.

use chrono::NaiveDate;
use evershard_aggregates::credit::*;
use evershard_model::testing::{
    assert_exact_contract, assert_json_and_codec_round_trip, assert_stored_event_round_trip,
};
use evershard_model::{Aggregate, DomainEvent, Money};
use uuid::Uuid;

fn created() -> CreditApplicationCreated {
    CreditApplicationCreated {
        credit_id: Uuid::from_u128(1),
        applicant_id: Uuid::from_u128(2),
        applicant_type: ApplicantType::Organization,
        requested_amount: Money::from_minor(2_500_000),
        term_months: 36,
        purpose: "equipment".into(),
    }
}
fn approved() -> CreditApproved {
    CreditApproved {
        credit_id: Uuid::from_u128(1),
        applicant_id: Uuid::from_u128(2),
        approved_amount: Money::from_minor(2_000_000),
        interest_rate: BasisPoints::new(1_375),
        term_months: 24,
        first_payment_date: NaiveDate::from_ymd_opt(2026, 2, 15).unwrap(),
    }
}
fn payment() -> CreditPaymentReceived {
    CreditPaymentReceived {
        credit_id: Uuid::from_u128(1),
        payment_id: Uuid::from_u128(3),
        amount: Money::from_minor(100_000),
        remaining_balance: Money::from_minor(1_900_000),
        is_final_payment: false,
    }
}
fn rejected() -> CreditRejected {
    CreditRejected {
        credit_id: Uuid::from_u128(1),
        applicant_id: Uuid::from_u128(2),
        reason: "insufficient_income".into(),
    }
}
fn all_events() -> Vec<CreditEvent> {
    vec![
        created().into(),
        approved().into(),
        payment().into(),
        rejected().into(),
    ]
}

/// The catalog's minimal contracts (and ours for `CreditRejected`).
fn contract(event_type: &str) -> Vec<(&'static str, &'static str)> {
    match event_type {
        "CreditApplicationCreated" => vec![
            ("credit_id", "uuid"),
            ("applicant_id", "uuid"),
            ("applicant_type", "enum:individual|organization"),
            ("requested_amount", "decimal"),
            ("term_months", "integer"),
            ("purpose", "string"),
        ],
        "CreditApproved" => vec![
            ("credit_id", "uuid"),
            ("applicant_id", "uuid"),
            ("approved_amount", "decimal"),
            ("interest_rate", "decimal"),
            ("term_months", "integer"),
            ("first_payment_date", "string"), // a date: checked below
        ],
        "CreditPaymentReceived" => vec![
            ("credit_id", "uuid"),
            ("payment_id", "uuid"),
            ("amount", "decimal"),
            ("remaining_balance", "decimal"),
            ("is_final_payment", "boolean"),
        ],
        "CreditRejected" => {
            vec![
                ("credit_id", "uuid"),
                ("applicant_id", "uuid"),
                ("reason", "string"),
            ]
        }
        other => panic!("no contract for {other}"),
    }
}

#[test]
fn every_event_type_names_its_contract_topic_and_version() {
    let names: Vec<&str> = all_events().iter().map(|e| e.event_type()).collect();
    assert_eq!(
        names,
        [
            "CreditApplicationCreated",
            "CreditApproved",
            "CreditPaymentReceived",
            "CreditRejected"
        ]
    );
    for event in all_events() {
        assert_eq!(event.topic(), "bank.credits");
        assert_eq!(event.event_version(), "1.0");
    }
    assert_eq!(Credit::TYPE, "Credit");
}

#[test]
fn every_payload_holds_exactly_its_contract() {
    for event in all_events() {
        let json = event.payload_json();
        let contract = contract(event.event_type());
        assert_exact_contract(event.event_type(), &json, &contract);
    }
}

#[test]
fn payload_values_are_published_as_documented() {
    let json = CreditEvent::from(approved()).payload_json();
    assert_eq!(json["approved_amount"], "20000.00");
    assert_eq!(
        json["interest_rate"], "13.75",
        "percent per year, two fraction digits"
    );
    assert_eq!(json["term_months"], 24);
    let first = json["first_payment_date"].as_str().unwrap();
    assert_eq!(first, "2026-02-15");
    assert!(NaiveDate::parse_from_str(first, "%Y-%m-%d").is_ok());
    let json = CreditEvent::from(created()).payload_json();
    assert_eq!(json["applicant_type"], "organization");
    assert_eq!(json["requested_amount"], "25000.00");
    let json = CreditEvent::from(payment()).payload_json();
    assert_eq!(json["is_final_payment"], false);
    assert_eq!(json["remaining_balance"], "19000.00");
}

#[test]
fn events_round_trip_through_json_and_codec() {
    for event in all_events() {
        assert_json_and_codec_round_trip(&event);
        assert_stored_event_round_trip::<Credit>(&event);
    }
    assert_json_and_codec_round_trip(&created());
    assert_json_and_codec_round_trip(&approved());
    assert_json_and_codec_round_trip(&payment());
    assert_json_and_codec_round_trip(&rejected());
    let back: CreditApproved =
        serde_json::from_value(CreditEvent::from(approved()).payload_json()).unwrap();
    assert_eq!(back, approved());
}

#[test]
fn decode_event_refuses_a_mismatched_type_or_major_version() {
    let bytes = Credit::encode_event(&approved().into());
    assert!(Credit::decode_event("CreditRejected", "1.0", &bytes).is_err());
    assert!(Credit::decode_event("CreditApproved", "2.0", &bytes).is_err());
}

#[test]
fn commands_round_trip_through_json_and_codec() {
    let commands: Vec<CreditCommand> = vec![
        ApplyForCredit {
            credit_id: Uuid::from_u128(1),
            applicant_id: Uuid::from_u128(2),
            applicant_type: ApplicantType::Individual,
            requested_amount: Money::from_minor(100),
            term_months: 6,
            purpose: "education".into(),
        }
        .into(),
        ApproveCredit {
            approved_amount: Money::from_minor(100),
            interest_rate: BasisPoints::new(999),
            term_months: 6,
            first_payment_date: NaiveDate::from_ymd_opt(2027, 12, 31).unwrap(),
        }
        .into(),
        RejectCredit {
            reason: "incomplete".into(),
        }
        .into(),
        ReceiveCreditPayment {
            payment_id: Uuid::from_u128(5),
            amount: Money::from_minor(1),
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
        CreditState::default(),
        Credit::replay(CreditState::default(), &[created().into()]),
        Credit::replay(
            CreditState::default(),
            &[created().into(), approved().into(), payment().into()],
        ),
        Credit::replay(
            CreditState::default(),
            &[created().into(), rejected().into()],
        ),
    ];
    for state in &states {
        Credit::check_invariants(state).unwrap();
        assert_json_and_codec_round_trip(state);
    }
}
