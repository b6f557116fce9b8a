//! `evershard topics` and `evershard consume`, through the binary: on a store whose topic
//! index was never written (an engine with the indexer off) they show every event at the
//! offsets the indexer later assigns — the output after indexing is byte for byte the same —
//! and they write nothing (the index cursor stays 0). Consumer groups show their committed
//! offsets and lag; partitions, offsets and limits select messages; unknown topics exit 2.

mod common;

use common::cli::{expect_stdout, json_lines};
use evershard_aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard_engine::{Engine, Journal, TopicLog};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn cursor(dir: &Path) -> u64 {
    let journal = Journal::open_read_only(dir).unwrap();
    TopicLog::read_only(&journal, evershard_cli::topics::catalog())
        .unwrap()
        .cursor()
        .unwrap()
}

#[test]
fn topics_and_consume_show_every_event_as_published_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::builder(dir.path())
            .register::<ProductStock>()
            .topic_indexer(false)
            .open()
            .await
            .unwrap();
        for i in 0..60 {
            let id = format!("sku-{}", i % 10);
            engine
                .execute::<ProductStock>(&id, ReceiveStock { quantity: 5 })
                .await
                .unwrap();
        }
        engine.shutdown().await.unwrap();
    });

    let topics: Value =
        serde_json::from_str(&expect_stdout(&["topics", "--data", d, "--json"], 0)).unwrap();
    assert_eq!(topics["indexer"]["cursor"], 0);
    assert_eq!(topics["indexer"]["not_indexed"], 60);
    assert_eq!(topics["topics"][0]["name"], "business.inventory");
    assert_eq!(topics["topics"][0]["messages"], 60);
    assert_eq!(topics["topics"][0]["format"], "catalog");
    let before = expect_stdout(&["consume", "business.inventory", "--data", d, "--json"], 0);
    let messages = json_lines(&before);
    assert_eq!(messages.len(), 60);
    for m in &messages {
        assert_eq!(m["value"]["aggregate_id"], m["key"]);
        assert_eq!(m["headers"]["causation_id"], Value::Null);
        assert!(m["value"]["payload"].is_object());
    }
    assert_eq!(cursor(dir.path()), 0, "the CLI wrote nothing");

    // The indexer writes the same offsets the CLI showed; a group commits 25 messages.
    rt.block_on(async {
        let engine = Engine::builder(dir.path())
            .register::<ProductStock>()
            .open()
            .await
            .unwrap();
        assert!(engine.wait_indexed(60, Duration::from_secs(60)).await);
        let mut consumer = engine.consumer("billing", "business.inventory").unwrap();
        let mut got = 0;
        while got < 25 {
            got += consumer
                .poll(25 - got, Duration::from_millis(200))
                .await
                .unwrap()
                .len();
        }
        consumer.commit().await.unwrap();
        drop(consumer);
        engine.shutdown().await.unwrap();
    });
    assert_eq!(cursor(dir.path()), 60);
    let after = expect_stdout(&["consume", "business.inventory", "--data", d, "--json"], 0);
    assert_eq!(after, before, "same messages at the same offsets");
    let topics: Value =
        serde_json::from_str(&expect_stdout(&["topics", "--data", d, "--json"], 0)).unwrap();
    assert_eq!(topics["groups"][0]["group"], "billing");
    assert_eq!(topics["groups"][0]["lag"], 35);
    let text = expect_stdout(&["topics", "--data", d], 0);
    assert!(text.contains("group billing  lag 35"), "{text}");
    assert!(text.contains("topic business.inventory  partitions 8  format catalog  messages 60"));

    // Selection: one partition, from an offset, limited.
    let p = messages
        .iter()
        .find(|m| m["offset"].as_u64() == Some(2))
        .map(|m| m["partition"].as_u64().unwrap().to_string())
        .unwrap();
    let some = json_lines(&expect_stdout(
        &[
            "consume",
            "business.inventory",
            "--data",
            d,
            "--json",
            "--partition",
            &p,
            "--offset",
            "1",
            "--limit",
            "2",
        ],
        0,
    ));
    assert_eq!(some.len(), 2);
    assert_eq!(some[0]["offset"], 1);
    assert_eq!(some[1]["offset"], 2);
    assert!(some
        .iter()
        .all(|m| m["partition"].as_u64().unwrap().to_string() == p));
    let late = expect_stdout(
        &[
            "consume",
            "business.inventory",
            "--data",
            d,
            "--at",
            "2999-01-01T00:00:00Z",
        ],
        0,
    );
    assert!(late.is_empty());
    expect_stdout(&["consume", "no.such.topic", "--data", d], 2);
    expect_stdout(
        &[
            "consume",
            "business.inventory",
            "--data",
            d,
            "--partition",
            "99",
        ],
        2,
    );
}

/// `evershard reconcile`: a faithful copy of a topic (as `consume --json` prints it, in any
/// partition order) reconciles; a copy with a line removed, a line repeated, a value changed,
/// a foreign event, two events of one aggregate swapped and a garbage line is reported
/// finding by finding, exit 1; a missing file exits 2. The store is not written.
#[test]
fn reconcile_reports_every_missing_extra_duplicate_reordered_and_changed_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::builder(dir.path())
            .register::<ProductStock>()
            .open()
            .await
            .unwrap();
        for i in 0..40 {
            let id = format!("sku-{}", i % 8);
            engine
                .execute::<ProductStock>(&id, ReceiveStock { quantity: 5 })
                .await
                .unwrap();
        }
        let durable = engine.journal().durable_position();
        assert!(engine.wait_indexed(durable, Duration::from_secs(60)).await);
        engine.shutdown().await.unwrap();
    });
    let topic = "business.inventory";
    let consumed = expect_stdout(&["consume", topic, "--data", d, "--json"], 0);
    let mut good: Vec<String> = consumed.lines().map(str::to_owned).collect();
    assert_eq!(good.len(), 40, "every event is on the topic");
    // Any order across partitions is fine: reverse the partitions' blocks.
    good.sort_by_key(|l| {
        std::cmp::Reverse(serde_json::from_str::<Value>(l).unwrap()["partition"].as_u64())
    });
    let file = dir.path().join("consumed.jsonl");
    let write = |lines: &[String]| std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    write(&good);
    let f = file.to_str().unwrap();
    let before = std::fs::read(dir.path().join("db")).unwrap();
    let out = expect_stdout(
        &["reconcile", "--data", d, "--topic", topic, "--messages", f],
        0,
    );
    assert!(out.contains("reconciled"), "{out}");
    assert!(
        out.contains("40 messages in the journal, 40 lines in the file, 40 matched"),
        "{out}"
    );

    // Damage the copy in six ways.
    let mut bad = good.clone();
    let removed: Value = serde_json::from_str(&bad.remove(0)).unwrap();
    bad.push(bad[0].clone()); // a duplicate
    let mut changed: Value = serde_json::from_str(&bad[1]).unwrap();
    changed["value"]["payload"]["quantity"] = serde_json::json!(999);
    bad[1] = changed.to_string();
    let mut foreign: Value = serde_json::from_str(&bad[2]).unwrap();
    foreign["headers"]["event_id"] = serde_json::json!(uuid::Uuid::from_u128(7).to_string());
    bad.push(foreign.to_string());
    bad.push("this is not JSON".into());
    // Two events of one aggregate, swapped: find a key with two lines.
    let key_of = |l: &String| serde_json::from_str::<Value>(l).unwrap()["key"].clone();
    let (a, b) = (3..bad.len() - 3)
        .find_map(|a| {
            (a + 1..bad.len() - 3)
                .find(|&b| key_of(&bad[b]) == key_of(&bad[a]))
                .map(|b| (a, b))
        })
        .expect("two events of one aggregate");
    bad.swap(a, b);
    write(&bad);
    let out = expect_stdout(
        &["reconcile", "--data", d, "--topic", topic, "--messages", f],
        1,
    );
    let removed_id = removed["headers"]["event_id"].as_str().unwrap();
    assert!(
        out.contains(&format!(
            "missing     partition {} offset {}: event {removed_id}",
            removed["partition"], removed["offset"]
        )),
        "{out}"
    );
    assert!(out.contains("duplicate   line"), "{out}");
    assert!(out.contains("differs") && out.contains("value is"), "{out}");
    assert!(
        out.contains(&format!(
            "event {} is not in the topic",
            uuid::Uuid::from_u128(7)
        )),
        "{out}"
    );
    assert!(out.contains("unreadable  line"), "{out}");
    assert!(out.contains("out-of-order line"), "{out}");
    assert!(
        out.contains("NOT reconciled: 1 missing, 1 extra, 1 differs, 1 duplicate, 1 out-of-order, 1 unreadable"),
        "{out}"
    );
    let json = expect_stdout(
        &[
            "reconcile",
            "--data",
            d,
            "--topic",
            topic,
            "--messages",
            f,
            "--json",
        ],
        1,
    );
    let report = &json_lines(&json)[0];
    assert_eq!(report["clean"], false);
    assert_eq!(report["counts"]["missing"], 1);
    assert_eq!(report["findings_total"], 6);

    expect_stdout(
        &[
            "reconcile",
            "--data",
            d,
            "--topic",
            topic,
            "--messages",
            "/nonexistent/file",
        ],
        2,
    );
    expect_stdout(
        &[
            "reconcile",
            "--data",
            d,
            "--topic",
            "no.such.topic",
            "--messages",
            f,
        ],
        2,
    );
    assert_eq!(
        std::fs::read(dir.path().join("db")).unwrap(),
        before,
        "read-only"
    );
}
