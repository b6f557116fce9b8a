//! The order saga under SIGKILL, sled-style: the test re-runs its own binary as a child that
//! places many concurrent orders against scarce shared stock (3 clients, 6 products), with a
//! simulated gateway that completes, fails or never answers payment attempts at random, a
//! warehouse that fulfils or (for the customer) cancels paid orders, customers who cancel at
//! once, and stock deliveries — all on a durable engine and a `ManualClock` the child moves
//! (2 min per 100 ms) and persists in a file, so the next round continues at its time. The
//! parent kills the child with SIGKILL at a random moment, three times (seeded and printed;
//! `EVERSHARD_SAGA_CRASH_SEED` replays a run). Then it restarts the store once more, lets
//! the sagas settle — the gateway answers every attempt left open, the clock moves past every
//! deadline — and asserts the flow's global invariants with the one checker
//! (`check_order_flow`): stock conserved and never below zero, no reservation left to a
//! closed order, one completed payment equal to the total per confirmed or fulfilled order,
//! a full refund per paid and cancelled order, nobody charged twice, no saga unfinished past
//! its deadline, `verify` clean. Every acknowledged order must have its saga.

use chrono::{DateTime, Duration, Utc};
use evershard::aggregates::order::{CancelOrder, CancelReason, CreateOrder, LineRequest, Order};
use evershard::aggregates::order_saga::OrderSaga;
use evershard::aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard::engine::SagaRunner;
use evershard::model::{Clock, Currency, DemoRng, Money};
use evershard::sagas::simulate::{self, gateway, warehouse, GatewayAnswer, WarehouseAction};
use evershard::sagas::{
    check_order_flow, order_saga_runner, register_order_flow, OrderSagaOptions,
};
use evershard::{Durability, Engine, ManualClock};
use evershard_testing::child::{self, TestChild};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

const DIR_ENV: &str = "EVERSHARD_SAGA_CRASH_DIR";
const ROUND_ENV: &str = "EVERSHARD_SAGA_CRASH_ROUND";
const SEED_ENV: &str = "EVERSHARD_SAGA_CRASH_SEED";
const PRODUCTS: u64 = 6;
const CLIENTS: u64 = 3;
const ROUNDS: u64 = 3;
/// How far the child's clock moves per tick, and how often it ticks (real time).
const TICK_SIM_MS: i64 = 120_000;
const TICK_REAL_MS: u64 = 100;
/// Settling rounds after the last restart (each: answer open attempts, +10 min, timers,
/// wait until idle).
const SETTLE_ROUNDS_MAX: usize = 40;
const IDLE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn store(dir: &Path) -> PathBuf {
    dir.join("store")
}

fn clock_file(dir: &Path) -> PathBuf {
    dir.join("clock")
}

/// The clock where the last run left it (written after every tick, atomically by rename).
fn saved_clock(dir: &Path) -> DateTime<Utc> {
    std::fs::read_to_string(clock_file(dir))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_micros)
        .unwrap_or_else(start_time)
}

fn save_clock(dir: &Path, now: DateTime<Utc>) {
    let tmp = dir.join("clock.tmp");
    std::fs::write(&tmp, now.timestamp_micros().to_string()).unwrap();
    std::fs::rename(tmp, clock_file(dir)).unwrap();
}

fn product(p: u64) -> String {
    format!("sku-{p}")
}

/// A value that depends only on the seed and the uuid: the same answer on every redelivery.
fn draw(seed: u64, id: Uuid, salt: u64) -> DemoRng {
    let (hi, lo) = id.as_u64_pair();
    DemoRng::new(seed ^ hi.rotate_left(17) ^ lo ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The gateway while the child runs: most attempts complete, many fail, a few are never
/// answered (their orders time out).
fn live_gateway(seed: u64) -> impl Fn(Uuid, u32) -> GatewayAnswer + Send + Sync + 'static {
    move |payment_id, attempt| match draw(seed, payment_id, u64::from(attempt)).below(100) {
        0..=54 => GatewayAnswer::Complete,
        55..=89 => GatewayAnswer::Fail("declined by the issuer".into()),
        _ => GatewayAnswer::Silent,
    }
}

/// After the last restart the gateway answers everything.
fn final_gateway(seed: u64) -> impl Fn(Uuid, u32) -> GatewayAnswer + Send + Sync + 'static {
    let live = live_gateway(seed);
    move |payment_id, attempt| match live(payment_id, attempt) {
        GatewayAnswer::Silent => GatewayAnswer::Fail("abandoned".into()),
        answer => answer,
    }
}

fn warehouse_plan(seed: u64) -> impl Fn(Uuid) -> WarehouseAction + Send + Sync + 'static {
    move |order_id| {
        if draw(seed, order_id, 7).chance(20) {
            WarehouseAction::CustomerCancels
        } else {
            WarehouseAction::Fulfil
        }
    }
}

async fn open(dir: &Path, clock: Arc<ManualClock>) -> Engine {
    register_order_flow(Engine::builder(store(dir)))
        .durability(Durability::Durable)
        .clock(clock)
        .timer_poll_ms(3_600_000)
        .open()
        .await
        .unwrap()
}

fn order_id(seed: u64, round: u64, client: u64, n: u64) -> Uuid {
    let mut rng = DemoRng::new(seed ^ (round << 48) ^ (client << 40) ^ n);
    rng.uuid()
}

async fn place(engine: &Engine, rng: &mut DemoRng, id: Uuid) -> bool {
    let lines_count = rng.range(1, 3) as u64;
    let first = rng.below(PRODUCTS);
    let lines = (0..lines_count)
        .map(|i| LineRequest {
            product_id: product((first + i) % PRODUCTS),
            quantity: rng.range(1, 4),
            unit_price: Money::from_minor(rng.range(100, 5_000)),
        })
        .collect();
    let create = CreateOrder {
        idempotency_key: rng.uuid(),
        customer_id: rng.uuid(),
        currency: Currency::USD,
        lines,
    };
    engine
        .execute::<Order>(&id.to_string(), create)
        .await
        .is_ok()
}

/// The child: works until killed. Ignored in normal runs; the parent runs it explicitly.
#[test]
#[ignore = "run by the_saga_keeps_its_invariants_across_sigkill as a child process"]
fn saga_crash_child() {
    let (Ok(dir), Ok(round), Ok(seed)) = (
        std::env::var(DIR_ENV),
        std::env::var(ROUND_ENV),
        std::env::var(SEED_ENV),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let round: u64 = round.parse().unwrap();
    let seed: u64 = seed.parse().unwrap();
    child::runtime().block_on(async move {
        let clock = Arc::new(ManualClock::new(saved_clock(&dir)));
        let engine = open(&dir, clock.clone()).await;
        let _runner = order_saga_runner(&engine, OrderSagaOptions::default()).unwrap();
        let _gateway = gateway(
            &engine,
            "gateway",
            evershard::StartFrom::Committed,
            live_gateway(seed),
        )
        .unwrap();
        let _warehouse = warehouse(
            &engine,
            "warehouse",
            evershard::StartFrom::Committed,
            warehouse_plan(seed),
        )
        .unwrap();
        let mut rng = DemoRng::new(seed ^ round);
        if round == 0 {
            for p in 0..PRODUCTS {
                let quantity = 30 + rng.range(0, 30);
                engine
                    .execute::<ProductStock>(&product(p), ReceiveStock { quantity })
                    .await
                    .unwrap();
            }
        } else {
            // A delivery: some refused reservations may now succeed when redelivered.
            let p = rng.below(PRODUCTS);
            let _ = engine
                .execute::<ProductStock>(&product(p), ReceiveStock { quantity: 40 })
                .await;
        }
        let ticker = {
            let engine = engine.clone();
            let clock = clock.clone();
            let dir = dir.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(TICK_REAL_MS)).await;
                    clock.advance(Duration::milliseconds(TICK_SIM_MS));
                    save_clock(&dir, clock.now());
                    let _ = engine.run_due_timers().await;
                }
            })
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for client in 0..CLIENTS {
            let engine = engine.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut rng = DemoRng::new(seed ^ (round << 32) ^ client);
                for n in 0.. {
                    let id = order_id(seed, round, client, n);
                    if !place(&engine, &mut rng, id).await {
                        continue;
                    }
                    let _ = tx.send(format!("placed {id}"));
                    if rng.chance(5) {
                        let cancel = CancelOrder {
                            reason: CancelReason::CustomerRequest,
                        };
                        let _ = engine.execute::<Order>(&id.to_string(), cancel).await;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(rng.below(20))).await;
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
        ticker.abort();
    });
}

async fn settle(
    engine: &Engine,
    clock: &Arc<ManualClock>,
    runner: &SagaRunner,
    parties: &[&simulate::Party],
    seed: u64,
) {
    let advance = |by: Duration| clock.advance(by);
    let unfinished = simulate::settle(
        engine,
        runner,
        parties,
        &advance,
        Duration::minutes(10),
        SETTLE_ROUNDS_MAX,
        IDLE_WAIT,
    )
    .await
    .unwrap();
    assert_eq!(
        unfinished, 0,
        "seed {seed}: sagas left unfinished after settling"
    );
}

/// Every dead letter in the store (each would be a saga step, an answer or a hand-over
/// that gave up), as (group, error).
async fn dead_letters(engine: &Engine) -> Vec<(String, String)> {
    let options = evershard::ConsumerOptions {
        start: evershard::StartFrom::Beginning,
    };
    let mut consumer = engine
        .consumer_with("saga-crash-check", evershard::DLQ_TOPIC, options)
        .unwrap();
    let mut letters = Vec::new();
    loop {
        let batch = consumer
            .poll(1024, std::time::Duration::from_millis(200))
            .await
            .unwrap();
        if batch.is_empty() {
            return letters;
        }
        for message in batch {
            let letter = evershard::DeadLetter::from_message(&message).unwrap();
            letters.push((letter.consumer_group, letter.error));
        }
    }
}

#[test]
fn the_saga_keeps_its_invariants_across_sigkill() {
    let seed = child::seed(SEED_ENV, 0x5a6a_c4a5, "saga crash test");
    let mut rng = DemoRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(store(dir.path())).unwrap();
    let mut placed = Vec::new();
    for round in 0..ROUNDS {
        let orders_before_kill = 30 + rng.below(60);
        let env: [(&str, OsString); 3] = [
            (DIR_ENV, dir.path().into()),
            (ROUND_ENV, round.to_string().into()),
            (SEED_ENV, seed.to_string().into()),
        ];
        let mut child = TestChild::spawn("saga_crash_child", &env);
        let mut this_round = 0;
        while this_round < orders_before_kill {
            let Some(line) = child.next_line() else { break };
            if let Some(id) = line.strip_prefix("placed ") {
                placed.push(Uuid::parse_str(id).unwrap());
                this_round += 1;
            }
        }
        assert!(
            this_round >= orders_before_kill,
            "seed {seed} round {round}: the child stopped early"
        );
        std::thread::sleep(std::time::Duration::from_millis(rng.below(80)));
        for line in child.kill() {
            if let Some(id) = line.strip_prefix("placed ") {
                placed.push(Uuid::parse_str(id).unwrap());
            }
        }
        eprintln!(
            "round {round}: {} orders acknowledged so far, clock {}",
            placed.len(),
            saved_clock(dir.path())
        );
    }

    child::runtime().block_on(async {
        let clock = Arc::new(ManualClock::new(saved_clock(dir.path()) + Duration::seconds(1)));
        let engine = open(dir.path(), clock.clone()).await;
        let runner = order_saga_runner(&engine, OrderSagaOptions::default()).unwrap();
        let gateway = gateway(&engine, "gateway", evershard::StartFrom::Committed, final_gateway(seed)).unwrap();
        let warehouse = warehouse(&engine, "warehouse", evershard::StartFrom::Committed, warehouse_plan(seed)).unwrap();
        settle(&engine, &clock, &runner, &[&gateway, &warehouse], seed).await;
        clock.advance(Duration::hours(25));
        engine.run_due_timers().await.unwrap();
        assert!(simulate::wait_quiet(&engine, &runner, &[&gateway, &warehouse], IDLE_WAIT).await);

        for id in &placed {
            let (state, _) = engine.state::<OrderSaga>(&id.to_string()).await.unwrap();
            assert!(
                state.saga.is_some(),
                "seed {seed}: acknowledged order {id} has no saga"
            );
        }
        let report = check_order_flow(engine.journal(), clock.now()).unwrap();
        eprintln!(
            "seed {seed}: {} sagas, outcomes {:?}, {} compensated, captured {} refunded {} (minor units)",
            report.sagas,
            report.outcomes,
            report.compensated,
            report.captured_total_minor,
            report.refunded_total_minor
        );
        assert!(
            report.is_clean(),
            "seed {seed}: invariants broken: {:#?}",
            report.violations
        );
        assert_eq!(report.unfinished, 0, "seed {seed}");
        assert!(report.sagas >= placed.len(), "seed {seed}");
        // The run exercised the paths it claims to.
        assert!(report.outcomes.contains_key("fulfilled"), "{report:?}");
        assert!(
            report.outcomes.keys().any(|k| k.starts_with("cancelled")),
            "{report:?}"
        );
        let letters = dead_letters(&engine).await;
        assert!(letters.is_empty(), "seed {seed}: dead letters: {letters:#?}");
        assert_eq!(gateway.dead_lettered() + warehouse.dead_lettered(), 0);
        runner.stop().await.unwrap();
        gateway.stop().await.unwrap();
        warehouse.stop().await.unwrap();
        engine.shutdown().await.unwrap();
    });
}
