//! Timers and idempotency keys across SIGKILL, sled-style: the test re-runs its own binary
//! as a child process that makes ProductStock reservations under load (8 clients, 12
//! products, a durable engine, a `ManualClock`), each with an idempotency key, and prints
//! `ack <product> <client> <n> <first sequence> <events>` for each acknowledged one; the
//! parent kills it with SIGKILL at a random moment (seeded, printed; `EVERSHARD_CRASH_SEED`
//! replays it) and checks, twice on the same store:
//!
//! 1. read-only, before anything fires: every product's stored timer is exactly the deadline
//!    its recovered state asks for (no event without its timer, no timer without its event);
//! 2. an engine reopened with the clock past every deadline fires them at start-up: every
//!    acknowledged reservation is then closed (expired by its timer) and no timer is left;
//! 3. every acknowledged key, repeated with its command, answers the original sequences and
//!    writes nothing.

use chrono::{DateTime, Duration, Utc};
use evershard::aggregates::product_stock::{
    ProductStock, ProductStockEvent, ReceiveStock, ReleaseReason, Reserve,
};
use evershard::engine::Journal;
use evershard::model::{Aggregate, DemoRng, Metadata};
use evershard::{Durability, Engine, ManualClock, StreamId};
use evershard_testing::child::{self, TestChild};
use std::io::Write;
use std::sync::Arc;
use uuid::Uuid;

const CHILD_ENV: &str = "EVERSHARD_TIMER_CRASH_DIR";
const ROUND_ENV: &str = "EVERSHARD_TIMER_CRASH_ROUND";
const PRODUCTS: u64 = 12;

/// Each round's child works at its own time, after the previous round's deadlines fired.
fn round_start(round: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::hours(2 * round as i64)
}

fn product(p: u64) -> String {
    format!("sku-{p}")
}

fn reservation(round: u64, client: u64, n: u64) -> (Reserve, Uuid) {
    let base = ((round as u128) << 96) | ((client as u128) << 64) | n as u128;
    let reserve = Reserve {
        reservation_id: Uuid::from_u128(base),
        order_id: Uuid::from_u128(base | (1 << 120)),
        quantity: 1,
    };
    (reserve, Uuid::from_u128(base | (2 << 120)))
}

async fn open(dir: &str, clock: Arc<ManualClock>) -> Engine {
    Engine::builder(dir)
        .register::<ProductStock>()
        .durability(Durability::Durable)
        .clock(clock)
        .timer_poll_ms(3_600_000)
        .open()
        .await
        .unwrap()
}

/// The child: reserves until killed. Ignored in normal runs; the parent runs it explicitly.
#[test]
#[ignore = "run by timers_and_keys_survive_sigkill as a child process"]
fn timer_crash_child() {
    let (Ok(dir), Ok(round)) = (std::env::var(CHILD_ENV), std::env::var(ROUND_ENV)) else {
        return;
    };
    let round: u64 = round.parse().unwrap();
    child::runtime().block_on(async move {
        let engine = open(&dir, Arc::new(ManualClock::new(round_start(round)))).await;
        for p in 0..PRODUCTS {
            engine
                .execute::<ProductStock>(&product(p), ReceiveStock { quantity: 100_000 })
                .await
                .unwrap();
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for client in 0..8u64 {
            let engine = engine.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let p = (client * 5 + n) % PRODUCTS;
                    let (reserve, key) = reservation(round, client, n);
                    let metadata = Metadata::new("crash-child").idempotency_key(key);
                    if let Ok(events) = engine
                        .execute_with::<ProductStock>(&product(p), reserve, metadata)
                        .await
                    {
                        let first = events.first().map_or(0, |e| e.sequence);
                        let _ = tx.send(format!("ack {p} {client} {n} {first} {}", events.len()));
                    }
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    });
}

struct Ack {
    product: u64,
    client: u64,
    n: u64,
    first: u64,
    count: usize,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut f = line
        .strip_prefix("ack ")?
        .split(' ')
        .map(|x| x.parse::<u64>().unwrap());
    Some(Ack {
        product: f.next()?,
        client: f.next()?,
        n: f.next()?,
        first: f.next()?,
        count: f.next()? as usize,
    })
}

#[test]
fn timers_and_keys_survive_sigkill() {
    let seed = child::seed("EVERSHARD_CRASH_SEED", 0x7173_e125, "timer crash test");
    let mut rng = DemoRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().to_str().unwrap().to_owned();

    for round in 0..2u64 {
        let acks_before_kill = 100 + rng.below(400);
        let env = [(CHILD_ENV, dir_str.clone()), (ROUND_ENV, round.to_string())];
        let mut child = TestChild::spawn("timer_crash_child", &env);
        let mut acks = Vec::new();
        while (acks.len() as u64) < acks_before_kill {
            let Some(line) = child.next_line() else { break };
            acks.extend(parse_ack(&line));
        }
        assert!(
            acks.len() as u64 >= acks_before_kill,
            "round {round}: the child stopped early"
        );
        std::thread::sleep(std::time::Duration::from_millis(rng.below(30)));
        for line in child.kill() {
            acks.extend(parse_ack(&line));
        }

        // 1. Read-only: every stored timer is what the recovered state asks for.
        {
            let journal = Journal::open_read_only(dir.path()).unwrap();
            assert!(journal.verify().is_clean(), "seed {seed} round {round}");
            for p in 0..PRODUCTS {
                let stream = StreamId::new("ProductStock", product(p));
                let loaded = evershard::engine::repository::load::<ProductStock>(
                    &journal,
                    &stream,
                    u64::MAX,
                    true,
                )
                .unwrap();
                let wanted = ProductStock::next_timer(&loaded.state).map(|(at, _)| at);
                assert_eq!(
                    journal.timer(&stream).unwrap(),
                    wanted,
                    "seed {seed} round {round}: {stream}'s timer and state disagree"
                );
            }
        }

        // 2. Past every deadline: the start-up pass fires them all.
        child::runtime().block_on(async {
            let clock = Arc::new(ManualClock::new(round_start(round) + Duration::hours(1)));
            let engine = open(&dir_str, clock).await;
            let mut pending = usize::MAX;
            for _ in 0..4000 {
                pending = engine.journal().timers(None).count();
                if pending == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert_eq!(
                pending, 0,
                "seed {seed} round {round}: timers left after start-up"
            );
            for ack in &acks {
                let (reserve, _) = reservation(round, ack.client, ack.n);
                let (state, _) = engine
                    .state::<ProductStock>(&product(ack.product))
                    .await
                    .unwrap();
                assert!(
                    state.reservation(reserve.reservation_id).is_none(),
                    "seed {seed} round {round}: acknowledged reservation still open"
                );
            }
            let expired = (0..PRODUCTS)
                .flat_map(|p| engine.history::<ProductStock>(&product(p)).unwrap())
                .filter(|e| {
                    matches!(&e.payload, ProductStockEvent::StockReleased(r)
                        if r.reason == ReleaseReason::Expired && e.source == "evershard-timer")
                })
                .count();
            assert!(
                expired >= acks.len(),
                "seed {seed} round {round}: {expired} expired"
            );

            // 3. Every acknowledged key answers its original result and writes nothing.
            let position = engine.journal().stats().unwrap().last_global_position;
            for ack in &acks {
                let (reserve, key) = reservation(round, ack.client, ack.n);
                let metadata = Metadata::new("parent").idempotency_key(key);
                let again = engine
                    .execute_with::<ProductStock>(&product(ack.product), reserve, metadata)
                    .await
                    .unwrap();
                assert_eq!(again.len(), ack.count, "seed {seed} round {round}");
                assert_eq!(again.first().map_or(0, |e| e.sequence), ack.first);
            }
            assert_eq!(
                engine.journal().stats().unwrap().last_global_position,
                position
            );
            engine.shutdown().await.unwrap();
        });
    }
}
