//! End-to-end tests of the `evershard` binary, run as a real process
//! (`env!("CARGO_BIN_EXE_evershard")`) against stores in temporary directories.
//!
//! They prove that:
//! - `demo` writes a store through a real engine, and its own restart check passes (every
//!   aggregate recovers to its pre-restart state and equals a full replay);
//! - `list`, `history --json`, `state --json` (head, `--at-seq`, `--at`) and `stats --json`
//!   report what is in the store: sequences 1..=n, full envelopes with payloads, the state as
//!   of an earlier sequence equal to the library's replay up to it;
//! - `verify` exits 0 on a clean store, and exits 1 naming the aggregate type, id and
//!   sequence when a stored event has a flipped byte (`Journal::corrupt_record_for_tests`) or a
//!   snapshot disagrees with the replay, while a snapshot of another schema version is only a
//!   note;
//! - a store held open by an `Engine` in this test process is reported as in use (exit 2):
//!   sled takes an exclusive `flock` on its file, which conflicts across processes, so the CLI
//!   child process cannot open it — deterministic, no timing involved;
//! - `export` writes every event once, in global order, with each record's SHA-256 and its
//!   predecessor's, forming an intact chain per aggregate;
//! - unknown types, missing stores and missing aggregates are clear errors (exit 2), and no
//!   command panics.
//!
//! Workloads are small (tens of aggregates, hundreds of commands, buffered durability) and
//! nothing asserts on timing, so the tests hold on a loaded two-core machine.

mod common;

use common::cli::{expect_exit, json_lines, p, product_stock_demo};
use evershard_aggregates::product_stock::{ProductStock, ProductStockState};
use evershard_engine::model::Aggregate;
use evershard_engine::{repository, Engine, Journal, JournalConfig, JournalWriter, StreamId};
use evershard_snapshots::SnapshotRecord;
use serde_json::Value;
use std::path::Path;

/// A ProductStock-only demo store; snapshots every 5 events so that verify has some to check.
fn product_stock_store(dir: &Path, aggregates: &str, commands: &str) {
    let args = product_stock_demo(
        p(dir),
        aggregates,
        commands,
        "7",
        &["--snapshot-every", "5"],
    );
    expect_exit(&args, 0);
}

/// `list` output as (type, id, last sequence).
fn list(dir: &Path) -> Vec<(String, String, u64)> {
    let (stdout, _) = expect_exit(&["list", "--data", p(dir)], 0);
    stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "list line {line:?}");
            (
                fields[0].to_owned(),
                fields[1].to_owned(),
                fields[2].parse().expect("sequence"),
            )
        })
        .collect()
}

fn state_json(dir: &Path, id: &str, extra: &[&str]) -> Value {
    let mut args = vec!["state", "ProductStock", id, "--data", p(dir), "--json"];
    args.extend_from_slice(extra);
    let (stdout, _) = expect_exit(&args, 0);
    serde_json::from_str(stdout.trim()).expect("state --json is one JSON object")
}

#[test]
fn demo_of_every_type_recovers_and_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = expect_exit(
        &[
            "demo",
            "--data",
            p(dir.path()),
            "--aggregates",
            "20",
            "--commands",
            "400",
            "--durability",
            "buffered",
            "--clients",
            "4",
            // The saga phase adds aggregates no workload client checks; tests/cli_saga.rs
            // runs it.
            "--saga-orders",
            "0",
        ],
        0,
    );
    let types = evershard_cli::registry::workload_types();
    let total = 20 * types.len();
    assert!(stdout.contains("workload: 400 commands"), "{stdout}");
    assert!(
        stdout.contains(
            "reached their topic and consumer group \"demo\" exactly once, in per-aggregate order"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("commands/s") && stdout.contains("events/s"),
        "{stdout}"
    );
    // Drivers move on to a fresh aggregate when one reaches a final state, so at least
    // `total` aggregates were driven and checked.
    let checked: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("recovery check: all "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no recovery check line in {stdout}"));
    assert!(checked >= total, "{checked} < {total}: {stdout}");
    assert!(stdout.contains("journal verify: clean"), "{stdout}");

    let (stdout, _) = expect_exit(&["verify", "--data", p(dir.path())], 0);
    assert!(stdout.contains("result: clean"), "{stdout}");
    let (stdout, _) = expect_exit(&["verify", "--data", p(dir.path()), "--json"], 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], true);
    assert_eq!(report["streams_replayed"], report["streams"]);
    assert_eq!(report["events_replayed"], report["events"]);
    assert_eq!(report["global_entries"], report["events"]);
    assert!(report["events"].as_u64().unwrap() > 0);

    // Every type's aggregates were written (an aggregate may end with no accepted command).
    let listed = list(dir.path());
    assert!(listed.len() <= checked);
    for t in &types {
        let n = listed.iter().filter(|(ty, _, _)| ty == t).count();
        assert!(n >= 1, "{t}: {n} aggregates listed");
    }

    // export: every event once, in global order, with an intact hash chain per aggregate.
    let events_total = report["events"].as_u64().unwrap();
    let (stdout, _) = expect_exit(&["export", "--data", p(dir.path())], 0);
    let exported = json_lines(&stdout);
    assert_eq!(exported.len() as u64, events_total);
    let positions: Vec<u64> = exported
        .iter()
        .map(|e| e["global_position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=events_total).collect::<Vec<_>>());
    let mut last_hash: std::collections::HashMap<(String, String), String> = Default::default();
    for e in &exported {
        let key = (
            e["aggregate_type"].as_str().unwrap().to_owned(),
            e["aggregate_id"].as_str().unwrap().to_owned(),
        );
        let expected_prev = last_hash
            .get(&key)
            .cloned()
            .unwrap_or_else(|| "0".repeat(64));
        assert_eq!(
            e["prev_record_sha256"].as_str().unwrap(),
            expected_prev,
            "{e}"
        );
        last_hash.insert(key, e["record_sha256"].as_str().unwrap().to_owned());
    }
    let (stdout, _) = expect_exit(
        &[
            "export",
            "--data",
            p(dir.path()),
            "--type",
            "Plant",
            "--from-position",
            "10",
        ],
        0,
    );
    for e in json_lines(&stdout) {
        assert_eq!(e["aggregate_type"], "Plant");
        assert!(e["global_position"].as_u64().unwrap() >= 10);
    }

    // history and state work for every aggregate type: take each type's longest stream.
    for t in &types {
        let (_, id, last) = listed
            .iter()
            .filter(|(ty, _, _)| ty == t)
            .max_by_key(|(_, _, seq)| *seq)
            .unwrap();
        let (stdout, _) = expect_exit(&["history", t, id, "--data", p(dir.path()), "--json"], 0);
        let events = json_lines(&stdout);
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=*last).collect::<Vec<_>>(), "{t}/{id}");
        for e in &events {
            assert_eq!(e["aggregate_type"], *t);
            assert!(
                e["event_type"].as_str().is_some_and(|s| !s.is_empty()),
                "{e}"
            );
            assert!(e["payload"].is_object(), "{t}: payload {e}");
        }
        for extra in [&[][..], &["--at-seq", "1"][..]] {
            let mut args = vec!["state", t, id.as_str(), "--data", p(dir.path()), "--json"];
            args.extend_from_slice(extra);
            let (stdout, _) = expect_exit(&args, 0);
            let state: Value = serde_json::from_str(stdout.trim()).unwrap();
            assert!(state.is_object(), "{t}: state {state}");
        }
    }
}

#[test]
fn list_history_state_and_stats_report_the_store() {
    let dir = tempfile::tempdir().unwrap();
    product_stock_store(dir.path(), "4", "160");
    let listed = list(dir.path());
    assert!((1..=4).contains(&listed.len()), "{listed:?}");
    assert!(listed
        .iter()
        .all(|(t, _, seq)| t == "ProductStock" && *seq >= 1));
    let (_, id, n) = listed
        .iter()
        .max_by_key(|(_, _, seq)| *seq)
        .unwrap()
        .clone();
    assert!(n >= 3, "the busiest aggregate has {n} events");

    // history --json: the full envelope per line, sequences 1..=n, payloads present.
    let (stdout, _) = expect_exit(
        &[
            "history",
            "ProductStock",
            &id,
            "--data",
            p(dir.path()),
            "--json",
        ],
        0,
    );
    let events = json_lines(&stdout);
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=n).collect::<Vec<_>>());
    let mut last_position = 0;
    for e in &events {
        for field in [
            "event_id",
            "event_type",
            "event_version",
            "aggregate_type",
            "aggregate_id",
            "sequence",
            "global_position",
            "timestamp",
            "correlation_id",
            "causation_id",
            "source",
            "user_id",
            "payload",
        ] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
        assert_eq!(e["aggregate_type"], "ProductStock");
        assert_eq!(e["aggregate_id"], id.as_str());
        // The demo's clients, or the demo's real timers (expired reservations).
        if e["source"] == "evershard-timer" {
            assert!(e["user_id"].is_null(), "{e}");
        } else {
            assert_eq!(e["source"], "evershard-demo");
            assert!(
                e["user_id"].as_str().unwrap().starts_with("demo-client-"),
                "{e}"
            );
        }
        assert!(uuid::Uuid::parse_str(e["event_id"].as_str().unwrap()).is_ok());
        chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).expect("RFC 3339");
        let payload = e["payload"].as_object().expect("payload is an object");
        assert!(!payload.is_empty(), "{e}");
        assert_eq!(
            payload["product_id"],
            id.as_str(),
            "ProductStock payloads name the product"
        );
        let position = e["global_position"].as_u64().unwrap();
        assert!(
            position > last_position,
            "global positions rise along a stream"
        );
        last_position = position;
    }
    // The human-readable form has one line per event too.
    let (stdout, _) = expect_exit(
        &["history", "ProductStock", &id, "--data", p(dir.path())],
        0,
    );
    assert_eq!(stdout.lines().count() as u64, n);
    assert!(stdout.starts_with("#1 "), "{stdout}");

    // state: the head, earlier sequences, and a point in time.
    let head = state_json(dir.path(), &id, &[]);
    assert_eq!(
        (head["version"].as_u64(), head["head"].as_u64()),
        (Some(n), Some(n))
    );
    let journal_dir = dir.path().to_path_buf();
    let stream = StreamId::new("ProductStock", id.clone());
    let mut earlier = Vec::new();
    for k in [0, 1, n / 2, n - 1] {
        let at = state_json(dir.path(), &id, &["--at-seq", &k.to_string()]);
        assert_eq!(at["version"].as_u64(), Some(k), "{at}");
        assert_eq!(at["as_of"]["sequence"].as_u64(), Some(k));
        earlier.push((k, at["state"].clone()));
    }
    let at_zero = &earlier[0].1;
    assert_eq!(
        at_zero,
        &serde_json::to_value(ProductStockState::default()).unwrap()
    );
    assert_ne!(
        at_zero, &head["state"],
        "the head state is not the empty state"
    );
    {
        // The CLI's earlier states are the library's replay up to those sequences.
        let journal = Journal::open_read_only(&journal_dir).unwrap();
        for (k, state) in &earlier {
            let replayed = repository::load::<ProductStock>(&journal, &stream, *k, false).unwrap();
            assert_eq!(
                &serde_json::to_value(&replayed.state).unwrap(),
                state,
                "at {k}"
            );
        }
        let full = repository::load::<ProductStock>(&journal, &stream, u64::MAX, false).unwrap();
        assert_eq!(serde_json::to_value(&full.state).unwrap(), head["state"]);
    }
    // --from-snapshots reaches the same head state.
    let via_snapshot = state_json(dir.path(), &id, &["--from-snapshots"]);
    assert_eq!(via_snapshot["state"], head["state"]);
    // --at T: the last event with timestamp <= T (events of one command share a timestamp).
    let k = n / 2;
    let t = events[k as usize - 1]["timestamp"]
        .as_str()
        .unwrap()
        .to_owned();
    let at_time = state_json(dir.path(), &id, &["--at", &t]);
    let v = at_time["version"].as_u64().unwrap();
    assert!(v >= k, "--at {t} gave version {v} < {k}");
    assert_eq!(
        events[v as usize - 1]["timestamp"].as_str(),
        Some(t.as_str())
    );
    if v < n {
        assert!(events[v as usize]["timestamp"].as_str().unwrap() > t.as_str());
    }
    let (stdout, _) = expect_exit(
        &[
            "state",
            "ProductStock",
            &id,
            "--data",
            p(dir.path()),
            "--at-seq",
            "1",
        ],
        0,
    );
    assert!(stdout.contains("version 1 of"), "{stdout}");

    // stats: the journal's counts and the aggregates per type.
    let (stdout, _) = expect_exit(&["stats", "--data", p(dir.path()), "--json"], 0);
    let stats: Value = serde_json::from_str(stdout.trim()).unwrap();
    let events_listed: u64 = listed.iter().map(|(_, _, seq)| seq).sum();
    assert_eq!(stats["events"].as_u64(), Some(events_listed));
    assert_eq!(stats["last_global_position"].as_u64(), Some(events_listed));
    assert_eq!(
        stats["types"]["ProductStock"]["aggregates"].as_u64(),
        Some(listed.len() as u64)
    );
    assert_eq!(
        stats["types"]["ProductStock"]["events"].as_u64(),
        Some(events_listed)
    );
    assert!(stats["snapshots"].as_u64().unwrap() >= 1, "{stats}");
    let (stdout, _) = expect_exit(&["stats", "--data", p(dir.path())], 0);
    assert!(stdout.contains("ProductStock"), "{stdout}");

    // verify compares the snapshots the engine took.
    let (stdout, _) = expect_exit(&["verify", "--data", p(dir.path()), "--json"], 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        report["snapshots_checked"].as_u64().unwrap() >= 1,
        "{report}"
    );

    // Reading changed nothing.
    let (after, _) = expect_exit(&["stats", "--data", p(dir.path()), "--json"], 0);
    let after: Value = serde_json::from_str(after.trim()).unwrap();
    assert_eq!(
        (after["events"].clone(), after["snapshots"].clone()),
        (stats["events"].clone(), stats["snapshots"].clone())
    );
}

#[test]
fn verify_names_the_aggregate_and_sequence_of_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    product_stock_store(dir.path(), "3", "60");
    let (_, id, n) = list(dir.path())
        .into_iter()
        .max_by_key(|(_, _, seq)| *seq)
        .unwrap();
    assert!(n >= 2, "{n}");
    let stream = StreamId::new("ProductStock", id.clone());
    {
        let journal = Journal::open_read_only(dir.path()).unwrap();
        journal.corrupt_record_for_tests(&stream, 2, 7).unwrap();
    }

    let (stdout, _) = expect_exit(&["verify", "--data", p(dir.path())], 1);
    // The flipped record fails its CRC. The next record's chain link to it cannot match any
    // more; that is the same break, so it is not reported a second time.
    // (A store on the segment log also knows the damaged record's global position.)
    assert!(
        stdout.lines().any(|line| line
            .starts_with(&format!("PROBLEM ProductStock/{id} sequence 2 "))
            && line.contains("[journal]: CRC32C")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("1 problem in 1 aggregate: ProductStock/{id}\n")),
        "{stdout}"
    );

    let (stdout, _) = expect_exit(&["verify", "--data", p(dir.path()), "--json"], 1);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["clean"], false);
    assert_eq!(
        report["bad_aggregates"],
        serde_json::json!([format!("ProductStock/{id}")])
    );
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["aggregate_type"] == "ProductStock"
                && p["aggregate_id"] == id.as_str()
                && p["sequence"] == 2
                && p["check"] == "journal"),
        "{report}"
    );

    // Reading the damaged aggregate is an error naming the sequence, not a panic.
    let (_, stderr) = expect_exit(
        &["history", "ProductStock", &id, "--data", p(dir.path())],
        1,
    );
    assert!(
        stderr.contains("damaged") && stderr.contains("sequence 2"),
        "{stderr}"
    );
    let (_, stderr) = expect_exit(&["state", "ProductStock", &id, "--data", p(dir.path())], 1);
    assert!(stderr.contains("sequence 2"), "{stderr}");
}

#[test]
fn verify_compares_snapshots_with_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    product_stock_store(dir.path(), "2", "20");
    let (_, id, n) = list(dir.path())
        .into_iter()
        .max_by_key(|(_, _, seq)| *seq)
        .unwrap();
    assert!(n >= 3, "{n}");
    let stream = StreamId::new("ProductStock", id.clone());
    let current = ProductStock::STATE_SCHEMA_VERSION;
    {
        let journal = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
        // A wrong state at sequence 3: the default state is not what 3 events fold to.
        let wrong = SnapshotRecord::encode_state(current, 3, &ProductStockState::default());
        journal.put_snapshot(&stream, 3, &wrong).unwrap();
        // Another schema version at sequence 2: recovery skips it; verify notes it.
        let other_schema =
            SnapshotRecord::encode_state(current + 1, 2, &ProductStockState::default());
        journal.put_snapshot(&stream, 2, &other_schema).unwrap();
        journal.close().unwrap();
    }
    let (stdout, _) = expect_exit(&["verify", "--data", p(dir.path()), "--json"], 1);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["check"], "snapshot");
    assert_eq!(problems[0]["aggregate_id"], id.as_str());
    assert_eq!(problems[0]["sequence"], 3);
    assert!(problems[0]["message"]
        .as_str()
        .unwrap()
        .contains("differs from the replay"));
    let notes = report["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(
            |n| n["sequence"] == 2 && n["message"].as_str().unwrap().contains("schema version")
        ),
        "{report}"
    );
}

#[test]
fn a_store_held_by_a_running_engine_is_reported_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let engine = runtime
        .block_on(
            Engine::builder(dir.path())
                .register::<ProductStock>()
                .open(),
        )
        .expect("the engine opens");
    let data = p(dir.path());
    for args in [
        vec!["list", "--data", data],
        vec!["verify", "--data", data],
        vec!["stats", "--data", data],
        vec!["history", "ProductStock", "x", "--data", data],
        vec![
            "demo",
            "--data",
            data,
            "--aggregates",
            "1",
            "--commands",
            "1",
        ],
    ] {
        let (_, stderr) = expect_exit(&args, 2);
        assert!(
            stderr.contains(&format!(
                "the store at {data} is in use by another evershard process"
            )),
            "{args:?}: {stderr}"
        );
    }
    runtime.block_on(engine.shutdown()).unwrap();
    drop(engine);
}

#[test]
fn unknown_types_missing_stores_and_aggregates_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let missing = p(&missing);
    let (_, stderr) = expect_exit(&["list", "--data", missing], 2);
    assert!(stderr.contains("no evershard store at"), "{stderr}");
    let (_, stderr) = expect_exit(&["verify", "--data", missing], 2);
    assert!(stderr.contains("no evershard store at"), "{stderr}");

    product_stock_store(dir.path(), "1", "5");
    let data = p(dir.path());
    for args in [
        vec!["history", "Nope", "x", "--data", data],
        vec!["state", "Nope", "x", "--data", data],
        vec!["list", "--type", "Nope", "--data", data],
        vec!["demo", "--type", "Nope", "--data", data],
    ] {
        let (_, stderr) = expect_exit(&args, 2);
        assert!(
            stderr.contains("unknown aggregate type \"Nope\""),
            "{args:?}: {stderr}"
        );
        for known in evershard_cli::known_types() {
            assert!(
                stderr.contains(known),
                "{args:?} should list {known}: {stderr}"
            );
        }
    }
    let (_, stderr) = expect_exit(
        &["history", "ProductStock", "no-such-id", "--data", data],
        2,
    );
    assert!(
        stderr.contains("no aggregate ProductStock/no-such-id"),
        "{stderr}"
    );
    let (_, stderr) = expect_exit(
        &[
            "state",
            "ProductStock",
            "x",
            "--data",
            data,
            "--at",
            "yesterday",
        ],
        2,
    );
    assert!(stderr.contains("RFC 3339"), "{stderr}");
}

/// The demo fires real timers (its clock moves 31 minutes ahead), `timers` lists what is
/// pending (nothing, after the demo), and `state` shows an aggregate's timer and keys.
#[test]
fn the_demo_fires_real_timers_and_timers_lists_the_pending_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = expect_exit(
        &[
            "demo",
            "--data",
            p(dir.path()),
            "--type",
            "ProductStock",
            "--aggregates",
            "4",
            "--commands",
            "200",
            "--durability",
            "buffered",
        ],
        0,
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("timers: "))
        .unwrap_or_else(|| panic!("no timers line in {stdout}"));
    assert!(
        line.contains("fired") && line.ends_with("0 still pending"),
        "{line}"
    );
    let (listed, _) = expect_exit(&["timers", "--data", p(dir.path()), "--json"], 0);
    assert!(listed.trim().is_empty(), "every timer fired: {listed}");
    let (_, _) = expect_exit(
        &[
            "timers",
            "--data",
            p(dir.path()),
            "--due-before",
            "2030-01-01T00:00:00Z",
        ],
        0,
    );
    let (_, id, _) = list(dir.path()).into_iter().next().expect("an aggregate");
    let state = state_json(dir.path(), &id, &[]);
    assert!(state["timer"].is_null(), "{state}");
    assert!(state["idempotency_keys"].is_array(), "{state}");
    let (history, _) = expect_exit(
        &[
            "history",
            "ProductStock",
            &id,
            "--data",
            p(dir.path()),
            "--json",
        ],
        0,
    );
    assert!(json_lines(&history)
        .iter()
        .all(|e| e.get("idempotency_key").is_some()));
}

/// `state --at T` and `snapshot-at T` give what was committed by T: the stream's longest
/// prefix stamped at or before T. With the clock stepped back, a later event stamped before
/// an earlier one's time is not counted (it came after that one), where taking the highest
/// sequence stamped at or before T gave a state holding an event stamped after T.
#[test]
fn a_state_at_a_time_stops_at_the_first_event_after_it() {
    use evershard_aggregates::product_stock::ReceiveStock;
    let dir = tempfile::tempdir().unwrap();
    let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    let rt = evershard_testing::child::runtime();
    rt.block_on(async {
        let clock = std::sync::Arc::new(evershard_engine::ManualClock::new(t(
            "2027-01-15T12:00:00Z",
        )));
        let engine = Engine::builder(dir.path())
            .register::<ProductStock>()
            .clock(clock.clone())
            .open()
            .await
            .unwrap();
        for at in [
            "2027-01-15T12:00:00Z",
            "2027-01-15T12:00:10Z",
            "2027-01-15T12:00:03Z",
        ] {
            clock.set(t(at));
            engine
                .execute::<ProductStock>("sku", ReceiveStock { quantity: 10 })
                .await
                .unwrap();
        }
        engine.shutdown().await.unwrap();
    });
    let at = state_json(dir.path(), "sku", &["--at", "2027-01-15T12:00:05Z"]);
    assert_eq!(at["version"], 1, "{at}");
    let (stdout, _) = expect_exit(
        &[
            "snapshot-at",
            "2027-01-15T12:00:05Z",
            "--data",
            p(dir.path()),
            "--type",
            "ProductStock",
        ],
        0,
    );
    let row: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["sequence"], 1, "{row}");
}
