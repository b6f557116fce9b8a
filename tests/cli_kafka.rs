//! `evershard demo --kafka BROKERS` through the binary, against a real broker (tansu 0.6.0,
//! started here on 127.0.0.1 and stopped at the end; the engine's Kafka tests' helper). The
//! demo must publish every event, report the publisher's rate and lag (0 at the end), and
//! what it published must be on the broker: kafka-python reads back as many messages per
//! topic as the store's topic holds.
#![cfg(feature = "kafka")]

#[path = "../engine/tests/kafka_support/mod.rs"]
mod kafka_support;

use std::process::Command;

#[test]
fn demo_with_kafka_publishes_every_event_and_reports_lag_and_rate() {
    let Some(tansu) = kafka_support::tools("demo_with_kafka_publishes_every_event") else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let bootstrap = broker.bootstrap();
    let output = Command::new(env!("CARGO_BIN_EXE_evershard"))
        .args(["demo", "--data", data, "--kafka", &bootstrap])
        .args(["--aggregates", "3", "--commands", "300"])
        .args(["--durability", "buffered", "--clients", "4"])
        .output()
        .expect("the evershard binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "evershard demo --kafka: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- broker\n{}",
        output.status,
        broker.log()
    );
    assert!(
        stdout.contains(&format!("kafka: publishing to {bootstrap}")),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kafka: published "))
        .unwrap_or_else(|| panic!("no publisher summary:\n{stdout}"));
    assert!(
        line.contains("/s)") && line.contains(", lag 0 (at most "),
        "{line}"
    );
    assert!(line.contains("anomalies 0"), "{line}");

    // What the store's topics hold is on the broker, topic by topic.
    let journal = evershard::engine::Journal::open_read_only(dir.path()).unwrap();
    let catalog = evershard_cli::topics::catalog();
    let log = evershard::engine::TopicLog::read_only(&journal, catalog).unwrap();
    let mut total = 0;
    for info in log.topics().unwrap() {
        if info.name == evershard::DLQ_TOPIC || info.messages() == 0 {
            continue;
        }
        let records = kafka_support::read_topic(&bootstrap, &info.name);
        assert_eq!(
            records.len() as u64,
            info.messages(),
            "topic {}: Kafka holds {} messages, the store {}",
            info.name,
            records.len(),
            info.messages()
        );
        total += records.len();
    }
    // Reconciliation: what kafka-python read back, and what the CLI reads from the broker
    // itself, is every message of the topic once, unchanged.
    // (The CLI cannot open the store while this process holds it.)
    let topics: Vec<String> = log
        .topics()
        .unwrap()
        .into_iter()
        .filter(|t| t.name != evershard::DLQ_TOPIC && t.messages() > 0)
        .map(|t| t.name)
        .collect();
    drop(log);
    drop(journal);
    for topic in &topics {
        let dump = Command::new("python3")
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("testing/kafka/read_topic.py"),
            )
            .args([bootstrap.as_str(), topic.as_str(), "300"])
            .output()
            .unwrap();
        assert!(dump.status.success());
        let lines: String = String::from_utf8(dump.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("{\"end_offsets\""))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = dir.path().join(format!("{topic}.jsonl"));
        std::fs::write(&file, lines).unwrap();
        for source in [
            ["--messages", file.to_str().unwrap()],
            ["--brokers", bootstrap.as_str()],
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_evershard"))
                .args(["reconcile", "--data", data, "--topic", topic])
                .args(source)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("reconciled"),
                "reconcile {topic} {source:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let published: usize = line
        .strip_prefix("kafka: published ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(total, published, "{line}");
}

/// A publisher that cannot start (here: no broker in the list) fails the demo (exit 1) after
/// it ran the workload and its checks; no broker is needed.
#[test]
fn demo_with_a_kafka_publisher_that_cannot_start_fails() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_evershard"))
        .args([
            "demo",
            "--data",
            dir.path().to_str().unwrap(),
            "--kafka",
            ",",
        ])
        .args([
            "--aggregates",
            "1",
            "--commands",
            "20",
            "--type",
            "ProductStock",
        ])
        .args(["--durability", "buffered"])
        .output()
        .expect("the evershard binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("kafka publisher FAILED to start: invalid Kafka configuration: no brokers"),
        "{stdout}"
    );
}
