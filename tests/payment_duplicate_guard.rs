//! Payment's 10-second rule across payment ids, enforced by the engine-level
//! `PaymentDuplicateGuard` (beside the Payment aggregate): an identical initiation (same payer, amount,
//! currency, target) under another payment id is rejected within 10 s and accepted after;
//! one rejected by the aggregate for another reason does not block its corrected retry; two
//! identical initiations sent at once cannot both pass. Time comes from a `ManualClock`.
//! Also: the engine's idempotency record of a keyed initiation does not digest the CVV (a
//! repeat with another CVV is a repeat, not a conflict).

use evershard::aggregates::payment::{
    Cvv, InitiatePayment, Payment, PaymentDuplicateGuard, PaymentError, PaymentMethod, TargetType,
};
use evershard::model::Currency;
use evershard::model::Money;
use evershard::{CommandError, Engine, ManualClock};
use std::sync::Arc;
use uuid::Uuid;

fn initiate(payment_id: Uuid, cvv: Option<&str>) -> InitiatePayment {
    InitiatePayment {
        payment_id,
        payer_id: Uuid::from_u128(1),
        target_type: TargetType::Order,
        target_id: Uuid::from_u128(2),
        amount: Money::from_minor(10_000),
        currency: Currency::USD,
        payment_method: PaymentMethod::Card,
        cvv: cvv.map(Cvv::new),
        beneficiary_department_id: None,
        transfer: None,
    }
}

async fn engine(dir: &std::path::Path, clock: Arc<ManualClock>) -> Engine {
    Engine::builder(dir)
        .register::<Payment>()
        .guard::<Payment>(PaymentDuplicateGuard::new())
        .clock(clock)
        .open()
        .await
        .unwrap()
}

fn is_duplicate(result: &Result<impl std::fmt::Debug, CommandError<PaymentError>>) -> bool {
    matches!(
        result,
        Err(CommandError::Rejected(
            PaymentError::DuplicateTransaction { .. }
        ))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_payments_under_two_ids_within_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
    ));
    let engine = engine(dir.path(), clock.clone()).await;
    let (p1, p2, p3) = (
        Uuid::from_u128(11),
        Uuid::from_u128(12),
        Uuid::from_u128(13),
    );

    engine
        .execute::<Payment>(&p1.to_string(), initiate(p1, Some("123")))
        .await
        .unwrap();
    clock.advance(chrono::Duration::seconds(9));
    let second = engine
        .execute::<Payment>(&p2.to_string(), initiate(p2, Some("123")))
        .await;
    assert!(is_duplicate(&second), "{second:?}");
    assert!(
        engine
            .history::<Payment>(&p2.to_string())
            .unwrap()
            .is_empty(),
        "a rejection writes nothing"
    );
    clock.advance(chrono::Duration::seconds(2));
    engine
        .execute::<Payment>(&p3.to_string(), initiate(p3, Some("123")))
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_rejected_for_another_reason_does_not_block_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
    ));
    let engine = engine(dir.path(), clock.clone()).await;
    let p = Uuid::from_u128(21);
    // A card payment without its CVV: the aggregate refuses it.
    let refused = engine
        .execute::<Payment>(&p.to_string(), initiate(p, None))
        .await;
    assert!(
        matches!(refused, Err(CommandError::Rejected(ref e)) if !matches!(e, PaymentError::DuplicateTransaction { .. })),
        "{refused:?}"
    );
    // The corrected command, same fingerprint, the same second: accepted.
    engine
        .execute::<Payment>(&p.to_string(), initiate(p, Some("123")))
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_identical_initiations_at_once_cannot_both_pass() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
    ));
    let engine = engine(dir.path(), clock).await;
    let (a, b) = (Uuid::from_u128(31), Uuid::from_u128(32));
    let (ida, idb) = (a.to_string(), b.to_string());
    let (ra, rb) = tokio::join!(
        engine.execute::<Payment>(&ida, initiate(a, Some("123"))),
        engine.execute::<Payment>(&idb, initiate(b, Some("123"))),
    );
    assert_eq!(
        [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "exactly one passes: {ra:?} / {rb:?}"
    );
    assert!(is_duplicate(&ra) || is_duplicate(&rb));
    engine.shutdown().await.unwrap();
}

/// The 10-second window survives a restart: the engine replays the last 10 s of
/// `PaymentInitiated` events into the guard at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
    ));
    let first = engine(dir.path(), clock.clone()).await;
    let (p1, p2, p3) = (
        Uuid::from_u128(21),
        Uuid::from_u128(22),
        Uuid::from_u128(23),
    );
    first
        .execute::<Payment>(&p1.to_string(), initiate(p1, Some("123")))
        .await
        .unwrap();
    first.shutdown().await.unwrap();

    clock.advance(chrono::Duration::seconds(9));
    let second = engine(dir.path(), clock.clone()).await;
    let duplicate = second
        .execute::<Payment>(&p2.to_string(), initiate(p2, Some("123")))
        .await;
    assert!(is_duplicate(&duplicate), "{duplicate:?}");
    second.shutdown().await.unwrap();

    clock.advance(chrono::Duration::seconds(1));
    let third = engine(dir.path(), clock.clone()).await;
    third
        .execute::<Payment>(&p3.to_string(), initiate(p3, Some("123")))
        .await
        .expect("10 s after the first, an identical payment is accepted");
    third.shutdown().await.unwrap();
}

/// The idempotency record's digest is stored in plain; with the CVV in it, anyone holding
/// the store could try the 11,110 possible CVVs against the published rest of the command.
/// So the digest leaves the digits out: the same key with another CVV is a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_digest_leaves_the_cvv_out() {
    use evershard::aggregates::payment::PaymentCommand;
    use evershard::model::{Aggregate, Metadata};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
    ));
    let engine = engine(dir.path(), clock.clone()).await;
    let p = Uuid::from_u128(31);
    let keyed = || Metadata::new("test").idempotency_key(Uuid::from_u128(0x4e7));
    let first = engine
        .execute_with::<Payment>(&p.to_string(), initiate(p, Some("123")), keyed())
        .await
        .unwrap();
    let again = engine
        .execute_with::<Payment>(&p.to_string(), initiate(p, Some("456")), keyed())
        .await
        .unwrap();
    assert_eq!(again, first, "a repeat answers the first result");
    assert_eq!(engine.history::<Payment>(&p.to_string()).unwrap().len(), 1);
    // The view keeps the CVV's presence (a card attempt without one is another command).
    let view = |cvv: Option<&str>| {
        let command: PaymentCommand = initiate(p, cvv).into();
        Payment::idempotency_view(&command).into_owned()
    };
    assert_eq!(view(Some("123")), view(Some("4567")));
    assert_ne!(view(Some("123")), view(None));
    assert!(!format!("{:?}", serde_json::to_string(&view(Some("123")))).contains("123"));
}
