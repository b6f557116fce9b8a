//! A service's own auditor binary (examples/booking_auditor.rs:
//! `Cli::new().register_defaults().register::<Booking>()`) against a store holding its own
//! type, `Booking`, next to a stock one.
//!
//! They prove that:
//! - the auditor runs every read-only command for `Booking`: `verify` replays its streams and
//!   is clean, `history`, `state`, `list --type`, `stats`, `export` decode its events, and
//!   `digest`/`prove` cover them;
//! - the stock binary, which does not know `Booking`, says so (a note in `verify`, exit 0; a
//!   usage error naming the known types for `history`), never reports it as damage, and still
//!   checks its records: a flipped byte in a Booking record is damage for both binaries,
//!   named with type, id and sequence.
//!
//! The auditor runs in process (the example's source is compiled into this test), and also as
//! the example's own binary when `cargo test` built it (it builds examples unless a single
//! test target is asked for).

#[path = "../examples/booking_auditor.rs"]
mod booking_auditor;

use booking_auditor::{auditor, Booking, BookingCommand};
use evershard_aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard_engine::{Durability, Engine, Journal, StreamId};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Runs the auditor in process: (exit code, stdout).
fn audit(args: &[&str]) -> (u8, String) {
    let mut out = Vec::new();
    let argv = std::iter::once("booking_auditor").chain(args.iter().copied());
    let code = match auditor().run_from(argv, &mut out) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => e.exit_code(),
    };
    (code, String::from_utf8(out).unwrap())
}

fn stock(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_evershard"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The example's binary, when cargo built it next to the stock one.
fn example_binary() -> Option<PathBuf> {
    let stock = PathBuf::from(env!("CARGO_BIN_EXE_evershard"));
    let path = stock.parent()?.join("examples").join("booking_auditor");
    path.exists().then_some(path)
}

async fn store(dir: &Path) {
    let engine = Engine::builder(dir)
        .register::<Booking>()
        .register::<ProductStock>()
        .durability(Durability::Buffered { flush_every_ms: 50 })
        .open()
        .await
        .unwrap();
    for night in 1..=9 {
        let book = BookingCommand::Book {
            night: format!("2026-12-{night:02}"),
            guest: format!("guest-{night}"),
        };
        engine.execute::<Booking>("room-1", book).await.unwrap();
    }
    let cancel = BookingCommand::Cancel {
        night: "2026-12-03".into(),
    };
    engine.execute::<Booking>("room-1", cancel).await.unwrap();
    for i in 0..5i64 {
        engine
            .execute::<ProductStock>("sku-1", ReceiveStock { quantity: i + 1 })
            .await
            .unwrap();
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_binary_with_its_own_type_runs_every_command_the_stock_one_notes_it_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store(&dir).await;
    let data = p(&dir);

    // The auditor: every command knows Booking.
    let (code, out) = audit(&["verify", "--data", data, "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["clean"], true, "{report:#}");
    assert_eq!(report["streams_replayed"], 2, "{report:#}");
    assert!(
        !report["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["check"] == "unknown type"),
        "{report:#}"
    );
    let (code, out) = audit(&["history", "booking", "room-1", "--data", data, "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 10);
    assert!(
        out.contains("RoomBooked") && out.contains("guest-9"),
        "{out}"
    );
    let (code, out) = audit(&["state", "Booking", "room-1", "--data", data, "--json"]);
    assert_eq!(code, 0, "{out}");
    let state: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        state["state"]["nights"].as_object().unwrap().len(),
        8,
        "{state}"
    );
    let (code, out) = audit(&["list", "--type", "Booking", "--data", data]);
    assert_eq!((code, out.as_str()), (0, "Booking\troom-1\t10\n"));
    let (code, out) = audit(&["export", "--data", data]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 15);
    assert!(out.contains("\"aggregate_type\":\"Booking\""), "{out}");
    let (code, out) = audit(&["stats", "--data", data, "--json"]);
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["types"]["Booking"]["known"], true, "{stats}");
    let digest = tmp.path().join("digest.json");
    let (code, out) = audit(&["digest", "--data", data, "--json"]);
    assert_eq!(code, 0);
    std::fs::write(&digest, out).unwrap();
    let (code, out) = audit(&[
        "prove",
        "Booking",
        "room-1",
        "4",
        "--data",
        data,
        "--digest",
        p(&digest),
    ]);
    assert_eq!(code, 0, "{out}");

    // The stock binary: Booking is unknown, said so, and not damage.
    let (code, out, err) = stock(&["verify", "--data", data]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("note    Booking [unknown type]") && out.contains("result: clean"),
        "{out}"
    );
    let (code, _, err) = stock(&["history", "Booking", "room-1", "--data", data]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("Booking") && err.contains("ProductStock"),
        "{err}"
    );

    // The example's own binary, when cargo built it.
    if let Some(binary) = example_binary() {
        let output = Command::new(binary)
            .args(["state", "Booking", "room-1", "--data", data])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&output.stdout).contains("guest-9"));
    }

    // A flipped byte in a Booking record is damage for both, named.
    Journal::open_read_only(&dir)
        .unwrap()
        .corrupt_record_for_tests(&StreamId::new("Booking", "room-1"), 4, 60)
        .unwrap();
    let (code, out) = audit(&["verify", "--data", data]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEM Booking/room-1 sequence 4 [journal]: CRC32C"),
        "{out}"
    );
    let (code, out, err) = stock(&["verify", "--data", data]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("PROBLEM Booking/room-1 sequence 4 [journal]: CRC32C"),
        "{out}"
    );
}
