//! `evershard saga ORDER_ID --data DIR [--json]`, through the binary, on a store where the
//! order saga ran one order to fulfilment and refused another for want of stock: the steps
//! come in order with what caused them, each sent command with its step, its idempotency
//! key (`step_key`) and the target's events that answered it (or the rejection the saga
//! recorded), and the timer; the text form says the same; the command writes nothing; a bad
//! or unknown order id exits 2. And the demo drives orders through the saga and reports
//! outcomes, throughput, latency and a clean invariant check — every order of the run with
//! its saga, none for the workload's orders — and does it again on the same store with the
//! same seed (other orders, no idempotency conflict with the first run).

mod common;

use common::cli::expect_stdout;
use evershard::aggregates::order::{CreateOrder, FulfilOrder, LineRequest, Order};
use evershard::aggregates::order_saga::{payment_id_for, OrderSaga};
use evershard::aggregates::payment::{CompletePayment, Payment};
use evershard::aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard::engine::Journal;
use evershard::model::{step_key, Currency, Money};
use evershard::sagas::{order_saga_runner, register_order_flow, OrderSagaOptions};
use evershard::Engine;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

fn create(product: &str, quantity: i64) -> CreateOrder {
    CreateOrder {
        idempotency_key: Uuid::new_v4(),
        customer_id: Uuid::new_v4(),
        currency: Currency::EUR,
        lines: vec![LineRequest {
            product_id: product.into(),
            quantity,
            unit_price: Money::from_minor(1250),
        }],
    }
}

/// Runs two orders through the saga: `fulfilled` all the way, `refused` out of stock.
async fn build(dir: &std::path::Path) -> (Uuid, Uuid) {
    let engine = register_order_flow(Engine::builder(dir))
        .open()
        .await
        .unwrap();
    let runner = order_saga_runner(&engine, OrderSagaOptions::default()).unwrap();
    let idle = Duration::from_secs(30);
    engine
        .execute::<ProductStock>("sku-cli", ReceiveStock { quantity: 3 })
        .await
        .unwrap();
    let fulfilled = Uuid::new_v4();
    engine
        .execute::<Order>(&fulfilled.to_string(), create("sku-cli", 2))
        .await
        .unwrap();
    assert!(runner.wait_idle(idle).await);
    let complete = CompletePayment {
        provider_reference: "psp-cli".into(),
        attempt: None,
    };
    engine
        .execute::<Payment>(&payment_id_for(fulfilled).to_string(), complete)
        .await
        .unwrap();
    assert!(runner.wait_idle(idle).await);
    engine
        .execute::<Order>(&fulfilled.to_string(), FulfilOrder)
        .await
        .unwrap();
    assert!(runner.wait_idle(idle).await);
    let refused = Uuid::new_v4();
    engine
        .execute::<Order>(&refused.to_string(), create("sku-cli", 5))
        .await
        .unwrap();
    assert!(runner.wait_idle(idle).await);
    runner.stop().await.unwrap();
    engine.shutdown().await.unwrap();
    (fulfilled, refused)
}

#[test]
fn saga_shows_steps_commands_answers_and_timer_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (fulfilled, refused) = rt.block_on(build(dir.path()));
    let before = Journal::open_read_only(dir.path())
        .unwrap()
        .stats()
        .unwrap();

    let out = expect_stdout(&["saga", &fulfilled.to_string(), "--data", d, "--json"], 0);
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["outcome"], "fulfilled");
    assert_eq!(
        report["timer"],
        Value::Null,
        "a finished saga holds no timer"
    );
    let steps = report["steps"].as_array().unwrap();
    let types: Vec<&str> = steps
        .iter()
        .map(|s| s["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "SagaStarted",
            "LineReserved",
            "PaymentAttemptRequested",
            "PaymentSucceeded",
            "OrderConfirmedSeen",
            "LineConfirmed",
            "OrderFulfilledSeen",
            "LineCommitted",
            "SagaFinished"
        ]
    );
    assert!(steps[0]["cause"].as_str().unwrap().contains("OrderCreated"));
    let reserve = &steps[0]["sends"][0];
    assert_eq!(reserve["step"], "reserve:sku-cli");
    assert_eq!(reserve["target_type"], "ProductStock");
    assert_eq!(reserve["command"], "Reserve");
    assert_eq!(
        reserve["idempotency_key"],
        step_key("OrderSaga", &fulfilled.to_string(), "reserve:sku-cli").to_string()
    );
    let answered: Vec<&str> = reserve["answered_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(answered, ["StockReserved"]);
    let payment_sends: Vec<&str> = steps[2]["sends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(payment_sends, ["request-payment", "payment:1"]);
    assert_eq!(
        steps[2]["sends"][1]["answered_by"][0]["event_type"],
        "PaymentInitiated"
    );
    let commit = &steps[6]["sends"][0];
    assert_eq!(commit["answered_by"][0]["event_type"], "StockCommitted");

    let out = expect_stdout(&["saga", &refused.to_string(), "--data", d, "--json"], 0);
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["outcome"], "cancelled");
    let reserve = &report["steps"][0]["sends"][0];
    assert!(
        reserve["rejected"]
            .as_str()
            .unwrap()
            .contains("insufficient stock"),
        "{reserve}"
    );
    assert_eq!(reserve["answered_by"], Value::Array(vec![]));

    let text = expect_stdout(&["saga", &fulfilled.to_string(), "--data", d], 0);
    assert!(
        text.starts_with(&format!("saga {fulfilled}  outcome fulfilled")),
        "{text}"
    );
    assert!(
        text.contains("-> reserve:sku-cli ProductStock sku-cli [Reserve]"),
        "{text}"
    );
    assert!(text.contains("=> StockReserved#"), "{text}");

    expect_stdout(&["saga", "not-a-uuid", "--data", d], 2);
    expect_stdout(&["saga", &Uuid::new_v4().to_string(), "--data", d], 2);
    // The saga is auditable like any aggregate: its events are in the journal as OrderSaga.
    let after = Journal::open_read_only(dir.path())
        .unwrap()
        .stats()
        .unwrap();
    assert_eq!(before, after, "a read-only command wrote");
    let journal = Journal::open_read_only(dir.path()).unwrap();
    let sagas = journal.streams(Some(<OrderSaga as evershard::model::Aggregate>::TYPE));
    assert_eq!(sagas.count(), 2);
}

/// The counts of a demo's saga line: (fulfilled, the cancelled of every reason).
fn saga_outcomes(saga_line: &str) -> (u64, u64) {
    let numbers = |text: &str| -> Vec<u64> {
        text.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let after = |from: &str, to: &str| -> String {
        let start = saga_line
            .find(from)
            .unwrap_or_else(|| panic!("{saga_line}"))
            + from.len();
        let rest = &saga_line[start..];
        rest[..rest.find(to).unwrap_or_else(|| panic!("{saga_line}"))].to_owned()
    };
    let fulfilled = numbers(&after("fulfilled ", ","))[0];
    let cancelled = numbers(&after("cancelled ", ", compensated")).iter().sum();
    (fulfilled, cancelled)
}

#[test]
fn the_demo_drives_orders_through_the_saga_and_checks_the_flow() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = [
        "demo",
        "--data",
        d,
        "--aggregates",
        "2",
        "--commands",
        "50",
        "--durability",
        "buffered",
        "--saga-orders",
        "40",
    ];
    let out = expect_stdout(&args, 0);
    let saga_line = out
        .lines()
        .find(|l| l.starts_with("saga: 40 orders through OrderSaga"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        saga_line.contains("sagas/s") && !saga_line.contains("unfinished"),
        "{saga_line}"
    );
    let (fulfilled, cancelled) = saga_outcomes(saga_line);
    assert_eq!(
        fulfilled + cancelled,
        40,
        "every order of the run finished: {saga_line}"
    );
    assert!(
        saga_line.ends_with("(store total: 40 sagas)"),
        "{saga_line}"
    );
    assert!(out.contains("saga: order -> confirmation p50 "), "{out}");
    assert!(out.contains("saga invariants: clean"), "{out}");
    assert!(out.contains("journal verify: clean"), "{out}");
    // Every saga of the run is in the store, readable by `saga` and `history`; the workload's
    // orders (placed before the phase) have none.
    let journal = Journal::open_read_only(dir.path()).unwrap();
    let ids: Vec<String> = journal
        .streams(Some("OrderSaga"))
        .map(|s| s.unwrap().0.aggregate_id)
        .collect();
    drop(journal);
    assert_eq!(ids.len(), 40);
    let report: Value =
        serde_json::from_str(expect_stdout(&["saga", &ids[0], "--data", d, "--json"], 0).trim())
            .unwrap();
    assert!(report["outcome"].is_string(), "{report}");
    let history = expect_stdout(&["history", "OrderSaga", &ids[0], "--data", d], 0);
    assert!(history.contains("SagaStarted"), "{history}");
    let verify = expect_stdout(&["verify", "--data", d], 0);
    assert!(verify.contains("result: clean"), "{verify}");

    // Again on the same store, with the same seed: other orders, their own sagas, the
    // whole store's flow still clean.
    let out = expect_stdout(&args, 0);
    let saga_line = out
        .lines()
        .find(|l| l.starts_with("saga: 40 orders through OrderSaga"))
        .unwrap_or_else(|| panic!("{out}"));
    let (fulfilled, cancelled) = saga_outcomes(saga_line);
    assert_eq!(fulfilled + cancelled, 40, "{saga_line}");
    assert!(
        saga_line.ends_with("(store total: 80 sagas)"),
        "{saga_line}"
    );
    assert!(out.contains("saga invariants: clean"), "{out}");
    assert!(out.contains("journal verify: clean"), "{out}");
}
