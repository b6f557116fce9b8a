//! The demo's saga phase: real orders through `OrderSaga` on the demo's engine, alongside the
//! other types' aggregates (after their workload and recovery check, on the reopened store).
//!
//! `--saga-orders N` orders (default [`DEFAULT_SAGA_ORDERS`] when the workload drives
//! ProductStock, Order and Payment; none with `--kafka` unless asked) from 16 clients against
//! scarce stock of 8 products of this run (product ids carry the run's tag, so runs on one
//! store never share stock; order ids and keys are drawn from the seed and the store's size,
//! so a second run on the same store with the same seed places other orders); a simulated
//! gateway completes most payment attempts, fails some (retried by the saga, three failures
//! block) and never answers a few (their orders time out); a simulated warehouse hands over
//! most paid orders, and for some the customer cancels after paying (refunded); a few
//! customers cancel at once. The saga runner, the gateway and the warehouse are consumer
//! groups of this run (their names carry the tag; they start at this phase's time, so the
//! workload's orders get no saga). While orders flow, the demo clock moves 10 s every 100 ms
//! and timers fire (payment retries); then the sagas settle (the gateway abandons what it
//! never answered, the clock moves past every deadline).
//!
//! Printed: outcomes (fulfilled, cancelled by reason, compensated), sagas per second (orders
//! / wall time from the first order to the last saga finished), p50/p99 of the wall time
//! from placing an order to its confirmation, and the flow's invariant check
//! (`evershard_sagas::check_order_flow`, the checker the crash and property tests use), plus
//! one the checker cannot make on a store that also holds orders without a saga (the
//! workload's): every order placed in this phase has its saga.

use crate::error::CliError;
use crate::DemoArgs;
use chrono::{DateTime, TimeDelta, Utc};
use evershard_aggregates::order::{CancelOrder, CancelReason, CreateOrder, LineRequest, Order};
use evershard_aggregates::order_saga::OrderSaga;
use evershard_aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard_engine::model::{Aggregate, Currency, DemoRng, Money};
use evershard_engine::{Engine, StartFrom, StreamId};
use evershard_sagas::simulate::{self, gateway, warehouse, GatewayAnswer, WarehouseAction};
use evershard_sagas::{check_order_flow, order_saga_runner, OrderSagaOptions};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Orders through the saga when `--saga-orders` is not given (and the workload drives the
/// saga's three types).
pub const DEFAULT_SAGA_ORDERS: u64 = 200;
/// The types the saga phase runs by default with: the saga's targets.
const SAGA_TYPES: [&str; 3] = ["ProductStock", "Order", "Payment"];
const CLIENTS: u64 = 16;
const PRODUCTS: u64 = 8;
/// How the demo clock moves while orders flow: `TICK_SIM` every `TICK_REAL`.
const TICK_SIM: TimeDelta = TimeDelta::seconds(10);
const TICK_REAL: Duration = Duration::from_millis(100);
const SETTLE_ROUNDS_MAX: usize = 20;
const IDLE_WAIT: Duration = Duration::from_secs(120);

/// A draw that depends only on the seed and the id: the same answer on a redelivery.
fn draw(seed: u64, id: Uuid, salt: u64) -> DemoRng {
    let (hi, lo) = id.as_u64_pair();
    DemoRng::new(seed ^ hi.rotate_left(13) ^ lo ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// When each order was placed and confirmed, in wall time.
#[derive(Default)]
struct Timings {
    placed: HashMap<Uuid, Instant>,
    confirmed: HashMap<Uuid, Instant>,
}

fn percentile(sorted: &[u128], p: usize) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The orders the phase places: `--saga-orders`, or by default [`DEFAULT_SAGA_ORDERS`] when
/// the workload drives the saga's three types (`kinds`) and no Kafka publisher runs.
pub fn orders_to_place(args: &DemoArgs, kinds: &[&str]) -> u64 {
    // The Kafka publisher runs before the restart only: with `--kafka` the phase runs only
    // when asked, so that what the broker holds is what the store's topics hold.
    #[cfg(feature = "kafka")]
    let publishing = args.kafka.is_some();
    #[cfg(not(feature = "kafka"))]
    let publishing = false;
    let drives_targets = SAGA_TYPES.iter().all(|t| kinds.contains(t));
    match args.saga_orders {
        Some(n) => n,
        None if drives_targets && !publishing => DEFAULT_SAGA_ORDERS,
        None => 0,
    }
}

/// Runs the phase with `orders` orders; returns the problems found (invariant violations,
/// sagas left, orders without a saga).
pub async fn run(
    engine: &Engine,
    args: &DemoArgs,
    orders: u64,
    now: DateTime<Utc>,
    advance: Arc<dyn Fn(TimeDelta) + Send + Sync>,
    out: &mut dyn Write,
) -> Result<usize, CliError> {
    if orders == 0 {
        return Ok(0);
    }
    let tag = format!("{}-{}", args.seed, now.timestamp_micros());
    let seed = args.seed;
    // Order ids and their `CreateOrder` keys (the engine's idempotency keys) come from the
    // seed and the store's size: the same on an empty store for one seed, and others when
    // the store holds an earlier run, whose keys must not be reused for other orders.
    let store_position = engine.journal().durable_position();
    let orders_seed = seed ^ 0x5a6a ^ store_position.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let demo = |e: &dyn std::fmt::Display| CliError::Demo(format!("saga phase: {e}"));
    let product = {
        let tag = tag.clone();
        move |p: u64| format!("saga-{tag}-sku-{p}")
    };
    // About 5 units per order are asked for; stock for ~85 % of them, so some run out.
    let per_product = (orders * 5 * 85 / 100 / PRODUCTS).max(1) as i64;
    for p in 0..PRODUCTS {
        engine
            .execute::<ProductStock>(
                &product(p),
                ReceiveStock {
                    quantity: per_product,
                },
            )
            .await
            .map_err(|e| demo(&e))?;
    }
    let start = StartFrom::Time(now);
    // A group started at a time finds its start in what is indexed: every event before this
    // phase must be, or one indexed late would land after the start and be read as new.
    let written = engine.journal().durable_position();
    if !engine.wait_indexed(written, IDLE_WAIT).await {
        return Err(demo(&format!(
            "the topic index did not reach global position {written} within {} s",
            IDLE_WAIT.as_secs()
        )));
    }
    let runner = order_saga_runner(
        engine,
        OrderSagaOptions {
            start,
            group_prefix: Some(format!("demo-saga-{tag}")),
        },
    )
    .map_err(|e| demo(&e))?;
    let gateway_plan =
        move |payment_id: Uuid, attempt: u32| match draw(seed, payment_id, attempt.into())
            .below(100)
        {
            0..=74 => GatewayAnswer::Complete,
            75..=96 => GatewayAnswer::Fail("declined by the issuer".into()),
            _ => GatewayAnswer::Silent,
        };
    let gateway = gateway(engine, &format!("demo-gateway-{tag}"), start, gateway_plan)
        .map_err(|e| demo(&e))?;
    let timings: Arc<Mutex<Timings>> = Arc::default();
    let warehouse = {
        let timings = timings.clone();
        warehouse(
            engine,
            &format!("demo-warehouse-{tag}"),
            start,
            move |order_id| {
                let mut t = timings.lock().unwrap_or_else(|e| e.into_inner());
                t.confirmed.entry(order_id).or_insert_with(Instant::now);
                if draw(seed, order_id, 7).chance(10) {
                    WarehouseAction::CustomerCancels
                } else {
                    WarehouseAction::Fulfil
                }
            },
        )
        .map_err(|e| demo(&e))?
    };

    let started = Instant::now();
    let ticker = {
        let engine = engine.clone();
        let advance = advance.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK_REAL).await;
                advance(TICK_SIM);
                let _ = engine.run_due_timers().await;
            }
        })
    };
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let engine = engine.clone();
        let timings = timings.clone();
        let product = product.clone();
        clients.spawn(async move {
            let mut rng = DemoRng::new(orders_seed ^ (client << 20));
            let mut failures = Vec::new();
            for _ in (client..orders).step_by(CLIENTS as usize) {
                let order_id = rng.uuid();
                let first = rng.below(PRODUCTS);
                let lines = (0..rng.range(1, 3) as u64)
                    .map(|i| LineRequest {
                        product_id: product((first + i) % PRODUCTS),
                        quantity: rng.range(1, 4),
                        unit_price: Money::from_minor(rng.range(199, 9_999)),
                    })
                    .collect();
                let create = CreateOrder {
                    idempotency_key: rng.uuid(),
                    customer_id: rng.uuid(),
                    currency: Currency::USD,
                    lines,
                };
                timings
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .placed
                    .insert(order_id, Instant::now());
                if let Err(e) = engine.execute::<Order>(&order_id.to_string(), create).await {
                    failures.push(format!("placing {order_id}: {e}"));
                    // Reported once: not again as an order without a saga.
                    timings
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .placed
                        .remove(&order_id);
                    continue;
                }
                if rng.chance(3) {
                    let cancel = CancelOrder {
                        reason: CancelReason::CustomerRequest,
                    };
                    let _ = engine.execute::<Order>(&order_id.to_string(), cancel).await;
                }
            }
            failures
        });
    }
    let mut problems = Vec::new();
    while let Some(done) = clients.join_next().await {
        problems.extend(done.map_err(|e| demo(&e))?);
    }
    let idle = simulate::wait_quiet(engine, &runner, &[&gateway, &warehouse], IDLE_WAIT).await;
    ticker.abort();
    let _ = ticker.await;
    if !idle {
        problems.push("the sagas did not become idle".into());
    }
    let step = |by: TimeDelta| advance(by);
    let unfinished = simulate::settle(
        engine,
        &runner,
        &[&gateway, &warehouse],
        &step,
        TimeDelta::minutes(10),
        SETTLE_ROUNDS_MAX,
        IDLE_WAIT,
    )
    .await
    .map_err(|e| demo(&e))?;
    let elapsed = started.elapsed();
    let dead = runner.dead_lettered() + gateway.dead_lettered() + warehouse.dead_lettered();
    runner.stop().await.map_err(|e| demo(&e))?;
    gateway.stop().await.map_err(|e| demo(&e))?;
    warehouse.stop().await.map_err(|e| demo(&e))?;
    if unfinished > 0 {
        problems.push(format!("{unfinished} sagas unfinished after settling"));
    }
    if dead > 0 {
        problems.push(format!(
            "{dead} saga steps, answers or hand-overs dead-lettered"
        ));
    }

    let journal = engine.journal().clone();
    // The check reads the whole store: off the async threads.
    let checked_at = now + TimeDelta::days(1);
    let report = tokio::task::spawn_blocking(move || check_order_flow(&journal, checked_at))
        .await
        .map_err(|e| demo(&e))?
        .map_err(|e| demo(&e))?;
    // This run's orders (the store may hold earlier runs' sagas: the check covers them all,
    // the outcomes printed are this run's).
    let placed: Vec<Uuid> = {
        let t = timings.lock().unwrap_or_else(|e| e.into_inner());
        t.placed.keys().copied().collect()
    };
    let mut outcomes: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut compensated = 0;
    for order_id in &placed {
        match report.finished.get(order_id) {
            Some((outcome, undid)) => {
                *outcomes.entry(outcome.as_str()).or_default() += 1;
                compensated += usize::from(*undid);
            }
            None => *outcomes.entry("unfinished").or_default() += 1,
        }
    }
    let fulfilled = outcomes.get("fulfilled").copied().unwrap_or(0);
    let cancelled: Vec<String> = outcomes
        .iter()
        .filter(|(k, _)| k.starts_with("cancelled"))
        .map(|(k, n)| format!("{} {n}", k.trim_start_matches("cancelled ")))
        .collect();
    writeln!(
        out,
        "saga: {orders} orders through OrderSaga in {:.1} s ({:.0} sagas/s): fulfilled {fulfilled}, \
         cancelled {}, compensated {}{} (store total: {} sagas)",
        elapsed.as_secs_f64(),
        orders as f64 / elapsed.as_secs_f64().max(1e-9),
        if cancelled.is_empty() { "0".to_owned() } else { cancelled.join(", ") },
        compensated,
        match outcomes.get("unfinished") {
            Some(n) => format!(", unfinished {n}"),
            None => String::new(),
        },
        report.sagas
    )?;
    let mut latencies: Vec<u128> = {
        let t = timings.lock().unwrap_or_else(|e| e.into_inner());
        t.confirmed
            .iter()
            .filter_map(|(id, at)| {
                Some(at.saturating_duration_since(*t.placed.get(id)?).as_millis())
            })
            .collect()
    };
    latencies.sort_unstable();
    writeln!(
        out,
        "saga: order -> confirmation p50 {} ms, p99 {} ms (wall clock, {} confirmed orders; \
         retried payments wait for the demo clock)",
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies.len()
    )?;
    problems.extend(report.violations.iter().cloned());
    // Every order placed here must have been seen by the saga's observers.
    let journal = engine.journal().clone();
    let without_saga = tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for order_id in placed {
            let stream = StreamId::new(OrderSaga::TYPE, order_id.to_string());
            match journal.head(&stream) {
                Ok(head) if head.sequence > 0 => {}
                Ok(_) => missing.push(format!("order {order_id} has no saga")),
                Err(e) => missing.push(format!("order {order_id}: reading its saga: {e}")),
            }
        }
        missing
    })
    .await
    .map_err(|e| demo(&e))?;
    problems.extend(without_saga);
    if problems.is_empty() {
        writeln!(
            out,
            "saga invariants: clean (stock = received - committed and never below zero, no \
             reservation left to a closed order, one completed payment = total per confirmed \
             order, refunds = captures per cancelled order, no double charge, every saga \
             finished, every order of this run has its saga, verify clean)"
        )?;
    } else {
        writeln!(out, "saga invariants FAILED: {} problems", problems.len())?;
        crate::demo::write_listed(out, "saga", &problems)?;
    }
    Ok(problems.len())
}
