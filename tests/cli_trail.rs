//! Who did what, when — through the binary, on a store written with a `ManualClock`, several
//! users, sessions, audit contexts and correlation ids:
//! - `history --data DIR` lists every event in global order; `--user`, `--correlation`,
//!   `--session`, `--type`, `--event-type`, `--from`/`--to` each select exactly the events
//!   that match (counted against what the test wrote), combined they intersect, and the JSON
//!   lines carry `session_id` and `audit_context`; the per-aggregate form takes the filters too;
//! - `snapshot-at T --type ProductStock` reports, per aggregate that existed at T, the state
//!   `state TYPE ID --at T` reports, in JSON lines and in CSV; aggregates created after T are
//!   left out;
//! - none of it writes to the store.

mod common;

use chrono::Duration;
use common::cli::{expect_stdout, json_lines};
use common::*;
use evershard::aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard::model::{AuditContext, Metadata};
use evershard::{Engine, ManualClock};
use std::sync::Arc;
use uuid::Uuid;

const SESSION: Uuid = Uuid::from_u128(0x5e55_1011);
const FLOW: Uuid = Uuid::from_u128(0xf10e);

/// 12 events: `sku-0..3` get 3 receipts each, one per hour from t0; alice writes the odd
/// ones (within SESSION, with an audit context), bob the even ones; `sku-3`'s three events
/// share the correlation FLOW. At t0 + 12 h, `late-sku` is created.
async fn write_store(dir: &std::path::Path) {
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::builder(dir)
        .register::<ProductStock>()
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    let mut n = 0;
    for round in 0..3 {
        for sku in 0..4 {
            let mut metadata = Metadata::new("trail-test");
            metadata = if n % 2 == 1 {
                metadata.user_id("alice").session_id(SESSION).audit_context(
                    AuditContext::new()
                        .ip_address("198.51.100.4".parse().unwrap())
                        .compliance_flag("GACP"),
                )
            } else {
                metadata.user_id("bob")
            };
            if sku == 3 {
                metadata = metadata.correlation_id(FLOW);
            }
            engine
                .execute_with::<ProductStock>(
                    &format!("sku-{sku}"),
                    ReceiveStock {
                        quantity: 10 * (round + 1),
                    },
                    metadata,
                )
                .await
                .unwrap();
            n += 1;
            clock.advance(Duration::hours(1));
        }
    }
    engine
        .execute::<ProductStock>("late-sku", ReceiveStock { quantity: 1 })
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
}

#[test]
fn history_across_aggregates_filters_and_snapshot_at_answer_who_did_what_when() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(write_store(dir.path()));
    let d = dir.path().to_str().unwrap();
    // sled's own recovery may rewrite its files at the first open after the writer (see
    // docs/design.md, "Opening a directory"); from then on, reads change nothing.
    expect_stdout(&["stats", "--data", d], 0);
    let db_before = std::fs::read(dir.path().join("db")).unwrap();
    let count = |extra: &[&str]| {
        let mut args = vec!["history", "--data", d, "--json"];
        args.extend_from_slice(extra);
        json_lines(&expect_stdout(&args, 0)).len()
    };

    // Everything, in global order.
    let all = json_lines(&expect_stdout(&["history", "--data", d, "--json"], 0));
    assert_eq!(all.len(), 13);
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["global_position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=13).collect::<Vec<_>>());

    assert_eq!(count(&["--user", "alice"]), 6);
    assert_eq!(count(&["--user", "bob"]), 6);
    assert_eq!(count(&["--user", "carol"]), 0);
    let session = SESSION.to_string();
    assert_eq!(count(&["--session", &session]), 6);
    let flow = FLOW.to_string();
    assert_eq!(count(&["--correlation", &flow]), 3);
    // sku-3's events are n = 3, 7, 11: all alice's.
    assert_eq!(count(&["--correlation", &flow, "--user", "alice"]), 3);
    assert_eq!(count(&["--correlation", &flow, "--user", "bob"]), 0);
    assert_eq!(count(&["--type", "ProductStock"]), 13);
    assert_eq!(count(&["--type", "Order"]), 0);
    assert_eq!(count(&["--event-type", "InventoryUpdated"]), 13);
    assert_eq!(count(&["--event-type", "StockReserved"]), 0);
    // Hours 2 to 5 inclusive: the events written at t0+2h .. t0+5h.
    let from = (t0() + Duration::hours(2)).to_rfc3339();
    let to = (t0() + Duration::hours(5)).to_rfc3339();
    assert_eq!(count(&["--from", &from, "--to", &to]), 4);
    assert_eq!(count(&["--from", &from, "--to", &to, "--user", "alice"]), 2);

    // The audit fields in the JSON and the text.
    let alices = json_lines(&expect_stdout(
        &["history", "--data", d, "--json", "--user", "alice"],
        0,
    ));
    for e in &alices {
        assert_eq!(e["session_id"], session);
        assert_eq!(e["audit_context"]["ipAddress"], "198.51.100.4");
        assert_eq!(e["audit_context"]["complianceFlags"][0], "GACP");
    }
    let text = expect_stdout(&["history", "--data", d, "--user", "alice"], 0);
    assert_eq!(text.lines().count(), 6);
    assert!(
        text.lines()
            .all(|l| l.contains(&format!("session {session}"))
                && l.contains("from 198.51.100.4")
                && l.contains("flags GACP")),
        "{text}"
    );

    // The per-aggregate form takes the filters too.
    let per = json_lines(&expect_stdout(
        &[
            "history",
            "ProductStock",
            "sku-1",
            "--data",
            d,
            "--json",
            "--from",
            &from,
        ],
        0,
    ));
    let sequences: Vec<u64> = per
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [2, 3], "sku-1's events at t0+5h and t0+9h");

    // snapshot-at: the state at t0 + 5h30 of every aggregate that existed then.
    let at = (t0() + Duration::minutes(330)).to_rfc3339();
    let report = json_lines(&expect_stdout(
        &["snapshot-at", &at, "--data", d, "--type", "ProductStock"],
        0,
    ));
    let ids: Vec<&str> = report
        .iter()
        .map(|r| r["aggregate_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["sku-0", "sku-1", "sku-2", "sku-3"],
        "late-sku did not exist"
    );
    for row in &report {
        let id = row["aggregate_id"].as_str().unwrap();
        let state = json_lines(&expect_stdout(
            &[
                "state",
                "ProductStock",
                id,
                "--data",
                d,
                "--at",
                &at,
                "--json",
            ],
            0,
        ));
        assert_eq!(row["state"], state[0]["state"], "{id}");
        assert_eq!(row["sequence"], state[0]["version"], "{id}");
    }
    // Events at 0h..5h: sku-0 and sku-1 have two, sku-2 and sku-3 one.
    let sequences: Vec<u64> = report
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [2, 2, 1, 1]);
    let csv = expect_stdout(
        &[
            "snapshot-at",
            &at,
            "--data",
            d,
            "--type",
            "ProductStock",
            "--format",
            "csv",
        ],
        0,
    );
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("aggregate_id,sequence,"), "{header}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows[0].starts_with("sku-0,2,"), "{csv}");

    expect_stdout(&["snapshot-at", &at, "--data", d, "--type", "Nope"], 2);
    expect_stdout(&["history", "ProductStock", "--data", d], 2);
    assert!(
        std::fs::read(dir.path().join("db")).unwrap() == db_before,
        "read-only commands wrote to the store"
    );
}
