//! Durable timers through the engine, with a `ManualClock` (no sleeps that assume speed):
//!
//! - a reservation expires exactly at its deadline and not before; committed and released
//!   ones never expire; a timer command that finds nothing to do writes nothing;
//! - moving the clock past many deadlines fires each timer once;
//! - timers that came due while the engine was down fire at start-up (the scheduler's first
//!   pass; the test waits with a bounded poll);
//! - an order not confirmed within 30 minutes of its reservation is cancelled
//!   (`reservation_expired`);
//! - random reserve/confirm/commit/release/advance/restart sequences (seeded, the seed is
//!   printed; `EVERSHARD_TIMER_SEED` replays one) never leave an open, unconfirmed
//!   reservation past its deadline once the scheduler ran, and the pending timers always
//!   equal what the states ask for.

mod common;
use chrono::{DateTime, Duration, Utc};
use common::*;
use evershard::aggregates::order::{
    CancelReason, CreateOrder, LineRequest, Order, OrderEvent, RecordStockReserved,
};
use evershard::aggregates::product_stock::{
    CommitReservation, ConfirmReservation, ProductStock, ProductStockEvent, ReceiveStock,
    ReleaseReason, ReleaseReservation, RESERVATION_TTL_MS,
};
use evershard::model::{Aggregate, Clock, Currency, DemoRng, Money};
use evershard::{Durability, Engine, ManualClock};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

fn ttl() -> Duration {
    Duration::milliseconds(RESERVATION_TTL_MS)
}

async fn open(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    Engine::builder(dir)
        .register::<ProductStock>()
        .register::<Order>()
        .clock(clock.clone())
        .durability(Durability::Buffered { flush_every_ms: 50 })
        // The background scheduler still runs (at start-up and every poll); the tests call
        // `run_due_timers` to fire at once after moving the clock.
        .timer_poll_ms(3_600_000)
        .open()
        .await
        .expect("engine opens")
}

fn expired_releases(engine: &Engine, id: &str) -> Vec<Uuid> {
    engine
        .history::<ProductStock>(id)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.payload {
            ProductStockEvent::StockReleased(r) if r.reason == ReleaseReason::Expired => {
                Some(r.reservation_id)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_expires_exactly_at_its_deadline_and_closed_ones_never() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    engine
        .execute::<ProductStock>("sku", ReceiveStock { quantity: 100 })
        .await
        .unwrap();
    for n in 1..=4 {
        engine
            .execute::<ProductStock>("sku", reserve(n, 5))
            .await
            .unwrap();
    }
    let timers: Vec<_> = engine.journal().timers(None).map(Result::unwrap).collect();
    assert_eq!(timers.len(), 1, "one timer per aggregate: {timers:?}");
    assert_eq!(timers[0].deadline, t0() + ttl());
    // 2 is confirmed, 3 committed, 4 released: only 1 may expire.
    engine
        .execute::<ProductStock>(
            "sku",
            ConfirmReservation {
                reservation_id: Uuid::from_u128(2),
            },
        )
        .await
        .unwrap();
    engine
        .execute::<ProductStock>(
            "sku",
            CommitReservation {
                reservation_id: Uuid::from_u128(3),
            },
        )
        .await
        .unwrap();
    engine
        .execute::<ProductStock>(
            "sku",
            ReleaseReservation {
                reservation_id: Uuid::from_u128(4),
                reason: ReleaseReason::Cancelled,
            },
        )
        .await
        .unwrap();

    clock.set(t0() + ttl() - Duration::microseconds(1));
    assert_eq!(
        engine.run_due_timers().await.unwrap(),
        0,
        "not before the deadline"
    );
    assert!(expired_releases(&engine, "sku").is_empty());

    clock.set(t0() + ttl());
    assert_eq!(
        engine.run_due_timers().await.unwrap(),
        1,
        "exactly at the deadline"
    );
    assert_eq!(expired_releases(&engine, "sku"), vec![Uuid::from_u128(1)]);
    let (state, _) = engine.state::<ProductStock>("sku").await.unwrap();
    assert!(
        state.reservation(Uuid::from_u128(2)).is_some(),
        "confirmed stays open"
    );
    assert_eq!(engine.journal().timers(None).count(), 0, "no timer left");

    let version = engine.history::<ProductStock>("sku").unwrap().len();
    clock.advance(Duration::days(2));
    assert_eq!(engine.run_due_timers().await.unwrap(), 0);
    assert_eq!(
        engine.history::<ProductStock>("sku").unwrap().len(),
        version
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_clock_past_many_deadlines_fires_each_timer_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    let products = 300;
    for p in 0..products {
        let id = format!("sku-{p}");
        engine
            .execute::<ProductStock>(&id, ReceiveStock { quantity: 10 })
            .await
            .unwrap();
        // Staggered deadlines, one second apart.
        clock.set(t0() + Duration::seconds(p));
        engine
            .execute::<ProductStock>(&id, reserve(p as u128, 1))
            .await
            .unwrap();
    }
    let deadlines: Vec<_> = engine
        .journal()
        .timers(None)
        .map(|t| t.unwrap().deadline)
        .collect();
    assert_eq!(deadlines.len(), products as usize);
    assert!(deadlines.windows(2).all(|w| w[0] <= w[1]), "deadline order");
    assert_eq!(
        engine
            .journal()
            .timers(Some(t0() + ttl() + Duration::seconds(10)))
            .count(),
        10,
        "--due-before bounds the listing"
    );

    clock.set(t0() + ttl() + Duration::days(1));
    // Two passes, possibly racing with the background scheduler: each timer fires once.
    let fired = engine.run_due_timers().await.unwrap() + engine.run_due_timers().await.unwrap();
    assert!(fired <= products as usize);
    for p in 0..products {
        assert_eq!(
            expired_releases(&engine, &format!("sku-{p}")).len(),
            1,
            "sku-{p}"
        );
    }
    assert_eq!(engine.journal().timers(None).count(), 0);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_due_while_the_engine_was_down_fire_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    for p in 0..20 {
        let id = format!("sku-{p}");
        engine
            .execute::<ProductStock>(&id, ReceiveStock { quantity: 10 })
            .await
            .unwrap();
        engine
            .execute::<ProductStock>(&id, reserve(p, 1))
            .await
            .unwrap();
    }
    engine.shutdown().await.unwrap();

    clock.advance(ttl() + Duration::minutes(5)); // the process was down meanwhile
    let engine = open(dir.path(), &clock).await;
    // No call to run_due_timers: the scheduler's start-up pass fires them. Bounded poll.
    let mut pending = usize::MAX;
    for _ in 0..2000 {
        pending = engine.journal().timers(None).count();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(pending, 0, "the start-up pass fired every due timer");
    for p in 0..20 {
        assert_eq!(expired_releases(&engine, &format!("sku-{p}")).len(), 1);
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_unconfirmed_30_minutes_after_its_reservation_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = open(dir.path(), &clock).await;
    let order = Uuid::from_u128(77).to_string();
    engine
        .execute::<Order>(
            &order,
            CreateOrder {
                idempotency_key: Uuid::from_u128(5),
                customer_id: Uuid::from_u128(6),
                currency: Currency::USD,
                lines: vec![LineRequest {
                    product_id: "sku-1".into(),
                    quantity: 1,
                    unit_price: Money::from_major(3),
                }],
            },
        )
        .await
        .unwrap();
    clock.advance(Duration::minutes(10));
    engine
        .execute::<Order>(
            &order,
            RecordStockReserved {
                product_id: "sku-1".into(),
                reservation_id: Uuid::from_u128(8),
                quantity: 1,
            },
        )
        .await
        .unwrap();
    clock.advance(Duration::minutes(30) - Duration::microseconds(1));
    assert_eq!(engine.run_due_timers().await.unwrap(), 0);
    clock.advance(Duration::microseconds(1));
    assert_eq!(engine.run_due_timers().await.unwrap(), 1);
    let last = engine.history::<Order>(&order).unwrap().pop().unwrap();
    assert!(
        matches!(&last.payload, OrderEvent::OrderCancelled(c) if c.reason == CancelReason::ReservationExpired),
        "{last:?}"
    );
    assert_eq!(last.source, "evershard-timer");
    assert_eq!(engine.journal().timers(None).count(), 0);
    engine.shutdown().await.unwrap();
}

/// What the test's model expects of one product: the open, unconfirmed reservations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_never_leave_an_open_reservation_past_its_deadline() {
    let seeds: Vec<u64> = match std::env::var("EVERSHARD_TIMER_SEED") {
        Ok(s) => vec![s.parse().expect("a u64 seed")],
        Err(_) => (1..=4).collect(),
    };
    for seed in seeds {
        println!("timer property: seed {seed} (EVERSHARD_TIMER_SEED={seed} replays it)");
        random_history(seed).await;
    }
}

async fn random_history(seed: u64) {
    let mut rng = DemoRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let mut engine = open(dir.path(), &clock).await;
    let products = ["a", "b", "c"];
    for p in products {
        engine
            .execute::<ProductStock>(p, ReceiveStock { quantity: 1_000 })
            .await
            .unwrap();
    }
    let mut next_id = 1u128;
    for step in 0..120 {
        let p = products[rng.below(products.len() as u64) as usize];
        let existing = Uuid::from_u128(1 + rng.below(next_id as u64) as u128);
        // Rejections (an unknown or overdue reservation) are fine: the property is about
        // what the timers leave behind.
        match rng.below(10) {
            0..=2 => {
                let _ = engine.execute::<ProductStock>(p, reserve(next_id, 1)).await;
                next_id += 1;
            }
            3 => {
                let _ = engine
                    .execute::<ProductStock>(
                        p,
                        ConfirmReservation {
                            reservation_id: existing,
                        },
                    )
                    .await;
            }
            4 => {
                let _ = engine
                    .execute::<ProductStock>(
                        p,
                        CommitReservation {
                            reservation_id: existing,
                        },
                    )
                    .await;
            }
            5 => {
                let _ = engine
                    .execute::<ProductStock>(
                        p,
                        ReleaseReservation {
                            reservation_id: existing,
                            reason: ReleaseReason::Cancelled,
                        },
                    )
                    .await;
            }
            6..=8 => clock.advance(Duration::minutes(1 + rng.below(20) as i64)),
            _ => {
                engine.shutdown().await.unwrap();
                engine = open(dir.path(), &clock).await;
            }
        }
        if rng.below(3) == 0 {
            engine.run_due_timers().await.unwrap();
            check(&engine, &products, clock.now(), seed, step).await;
        }
    }
    engine.run_due_timers().await.unwrap();
    check(&engine, &products, clock.now(), seed, 999).await;
    engine.shutdown().await.unwrap();
}

async fn check(engine: &Engine, products: &[&str], now: DateTime<Utc>, seed: u64, step: usize) {
    let timers: Vec<_> = engine.journal().timers(None).map(Result::unwrap).collect();
    for p in products {
        let (state, _) = engine.state::<ProductStock>(p).await.unwrap();
        for (id, r) in &state.reservations {
            assert!(
                !r.is_overdue(now),
                "seed {seed} step {step}: {p} reservation {id} open past its deadline"
            );
        }
        let wanted = ProductStock::next_timer(&state).map(|(at, _)| at);
        let stored: Vec<_> = timers
            .iter()
            .filter(|t| t.stream.aggregate_id == *p)
            .map(|t| t.deadline)
            .collect();
        assert_eq!(
            stored,
            wanted.into_iter().collect::<Vec<_>>(),
            "seed {seed} step {step}: {p}'s stored timer is what its state asks for"
        );
    }
}
