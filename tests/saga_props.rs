//! A property test of the order saga through a real engine: random scenarios — stock per
//! product, orders of random lines, for each order the gateway's answers (complete at once,
//! after one or two failures, three failures that block, or never), what the warehouse does
//! with it once paid (hand over, or the customer cancels), an early customer cancel, and
//! clock moves between orders — are played in one process; after the sagas settle (every
//! deadline passed), the flow's global invariants hold (`check_order_flow`, the checker the
//! crash torture and the demo use) and every saga is finished. The proptest seed is printed
//! (`EVERSHARD_SAGA_PROPS_SEED` sets another); proptest prints the failing scenario, shrunk,
//! and keeps it in `proptest-regressions/` to replay first next time.

use chrono::Duration;
use evershard::aggregates::order::{CancelOrder, CancelReason, CreateOrder, LineRequest, Order};
use evershard::aggregates::order_saga::payment_id_for;
use evershard::aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard::model::{Clock, Currency, Money};
use evershard::sagas::simulate::{self, gateway, warehouse, GatewayAnswer, WarehouseAction};
use evershard::sagas::{
    check_order_flow, order_saga_runner, register_order_flow, OrderSagaOptions,
};
use evershard::{Durability, Engine, ManualClock};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

const PRODUCTS: usize = 4;
const IDLE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How the gateway answers one order's attempts.
#[derive(Clone, Copy, Debug)]
enum Pay {
    /// Completes after this many failures (0..=2).
    CompletesAfter(u32),
    /// Fails three times: blocked.
    Blocked,
    /// Never answers (until the gateway abandons it at settling).
    Silent,
}

#[derive(Clone, Debug)]
struct OrderPlan {
    /// (product index, quantity), distinct products.
    lines: Vec<(usize, i64)>,
    pay: Pay,
    customer_cancels_after_payment: bool,
    customer_cancels_at_once: bool,
    /// Minutes the clock moves after placing it.
    then_minutes: i64,
}

fn pay() -> impl Strategy<Value = Pay> {
    prop_oneof![
        4 => (0u32..=2).prop_map(Pay::CompletesAfter),
        1 => Just(Pay::Blocked),
        1 => Just(Pay::Silent),
    ]
}

fn order_plan() -> impl Strategy<Value = OrderPlan> {
    (
        proptest::collection::btree_map(0..PRODUCTS, 1i64..5, 1..=3),
        pay(),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.1),
        prop_oneof![3 => Just(0i64), 1 => 1i64..40],
    )
        .prop_map(|(lines, pay, after, at_once, then_minutes)| OrderPlan {
            lines: lines.into_iter().collect(),
            pay,
            customer_cancels_after_payment: after,
            customer_cancels_at_once: at_once,
            then_minutes,
        })
}

fn answer(plan: Pay, attempt: u32) -> GatewayAnswer {
    match plan {
        Pay::CompletesAfter(failures) if attempt > failures => GatewayAnswer::Complete,
        Pay::CompletesAfter(_) | Pay::Blocked => GatewayAnswer::Fail("declined".into()),
        Pay::Silent => GatewayAnswer::Silent,
    }
}

async fn play(stock: Vec<i64>, orders: Vec<OrderPlan>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    ));
    let engine = register_order_flow(Engine::builder(dir.path()))
        .clock(clock.clone())
        .durability(Durability::Buffered { flush_every_ms: 20 })
        .timer_poll_ms(3_600_000)
        .open()
        .await
        .unwrap();
    let runner = order_saga_runner(&engine, OrderSagaOptions::default()).unwrap();
    // The plans by payment id and order id, filled as orders are placed.
    let pays: Arc<Mutex<BTreeMap<Uuid, Pay>>> = Arc::default();
    let handovers: Arc<Mutex<BTreeMap<Uuid, bool>>> = Arc::default();
    let gateway = {
        let pays = pays.clone();
        gateway(
            &engine,
            "gateway",
            evershard::StartFrom::Committed,
            move |payment_id, attempt| {
                let plan = pays.lock().unwrap().get(&payment_id).copied();
                plan.map_or(GatewayAnswer::Silent, |p| answer(p, attempt))
            },
        )
        .unwrap()
    };
    let warehouse = {
        let handovers = handovers.clone();
        warehouse(
            &engine,
            "warehouse",
            evershard::StartFrom::Committed,
            move |order_id| match handovers.lock().unwrap().get(&order_id) {
                Some(true) => WarehouseAction::CustomerCancels,
                _ => WarehouseAction::Fulfil,
            },
        )
        .unwrap()
    };
    for (p, quantity) in stock.iter().enumerate() {
        if *quantity > 0 {
            engine
                .execute::<ProductStock>(
                    &format!("sku-{p}"),
                    ReceiveStock {
                        quantity: *quantity,
                    },
                )
                .await
                .unwrap();
        }
    }
    for (n, plan) in orders.iter().enumerate() {
        let order_id = Uuid::from_u128(0x5a6a_0000 + n as u128);
        pays.lock()
            .unwrap()
            .insert(payment_id_for(order_id), plan.pay);
        handovers
            .lock()
            .unwrap()
            .insert(order_id, plan.customer_cancels_after_payment);
        let create = CreateOrder {
            idempotency_key: Uuid::from_u128(0x1d00_0000 + n as u128),
            customer_id: Uuid::from_u128(0xc000_0000 + n as u128),
            currency: Currency::USD,
            lines: plan
                .lines
                .iter()
                .map(|(p, q)| LineRequest {
                    product_id: format!("sku-{p}"),
                    quantity: *q,
                    unit_price: Money::from_minor(250),
                })
                .collect(),
        };
        engine
            .execute::<Order>(&order_id.to_string(), create)
            .await
            .unwrap();
        if plan.customer_cancels_at_once {
            let cancel = CancelOrder {
                reason: CancelReason::CustomerRequest,
            };
            let _ = engine.execute::<Order>(&order_id.to_string(), cancel).await;
        }
        prop_assert!(
            simulate::wait_quiet(&engine, &runner, &[&gateway, &warehouse], IDLE_WAIT).await
        );
        // Failed attempts are retried 10 s later: let the retries happen as time passes.
        for _ in 0..3 {
            clock.advance(Duration::seconds(10));
            engine.run_due_timers().await.unwrap();
            prop_assert!(
                simulate::wait_quiet(&engine, &runner, &[&gateway, &warehouse], IDLE_WAIT).await
            );
        }
        if plan.then_minutes > 0 {
            clock.advance(Duration::minutes(plan.then_minutes));
            engine.run_due_timers().await.unwrap();
            prop_assert!(
                simulate::wait_quiet(&engine, &runner, &[&gateway, &warehouse], IDLE_WAIT).await
            );
        }
    }
    let advance = |by: Duration| clock.advance(by);
    let unfinished = simulate::settle(
        &engine,
        &runner,
        &[&gateway, &warehouse],
        &advance,
        Duration::minutes(10),
        40,
        IDLE_WAIT,
    )
    .await
    .unwrap();
    prop_assert_eq!(unfinished, 0);
    clock.advance(Duration::hours(25));
    engine.run_due_timers().await.unwrap();
    prop_assert!(simulate::wait_quiet(&engine, &runner, &[&gateway, &warehouse], IDLE_WAIT).await);
    let report = check_order_flow(engine.journal(), clock.now()).unwrap();
    prop_assert!(report.is_clean(), "violations: {:#?}", report.violations);
    prop_assert_eq!(report.sagas, orders.len());
    prop_assert_eq!(report.unfinished, 0);
    prop_assert_eq!(runner.dead_lettered(), 0);
    runner.stop().await.unwrap();
    gateway.stop().await.unwrap();
    warehouse.stop().await.unwrap();
    engine.shutdown().await.unwrap();
    Ok(())
}

/// The proptest seed: `EVERSHARD_SAGA_PROPS_SEED`, else a fixed one; printed, so a failure
/// reproduces (proptest also keeps the shrunk case in `proptest-regressions/`).
fn config() -> ProptestConfig {
    let seed: u64 = std::env::var("EVERSHARD_SAGA_PROPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5a6a_9e05);
    eprintln!("saga property test: proptest seed {seed} (set EVERSHARD_SAGA_PROPS_SEED to change)");
    ProptestConfig {
        cases: 12,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_scenarios_keep_the_flow_invariants(
        stock in proptest::collection::vec(0i64..15, PRODUCTS),
        orders in proptest::collection::vec(order_plan(), 1..8),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(play(stock, orders))?;
    }
}
