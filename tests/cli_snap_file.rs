//! The `evershard` binary on a store whose sled snapshot file (`snap.<lsn>`) has one
//! corrupted byte (issue #12: it made the whole store unreadable, for the CLI and the library
//! alike, while the events were intact). Proves that:
//! - read-only commands (`verify`, `list`, `stats`) name the damaged file in one line with
//!   the `mv` that moves it aside, exit non-zero, and change no byte of the store;
//! - `demo` (the writer) moves the file aside itself (`damaged-snap.<lsn>`, kept), runs, and
//!   leaves a store that `verify` finds clean with every event of the first run.
//!
//! No timing is involved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn evershard(args: &[&str], store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evershard"))
        .args(args)
        .arg("--data")
        .arg(store)
        .output()
        .expect("the evershard binary runs")
}

fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                all.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    all
}

fn snap_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .collect();
    found.sort();
    found
}

/// The events of the store, as `stats` counts them.
fn events(store: &Path) -> u64 {
    let out = evershard(&["stats"], store);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("events "))
        .unwrap_or_else(|| panic!("no events line: {stdout}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn a_damaged_snap_file_is_named_by_readers_and_moved_aside_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A few saga orders: the default 200 would only make the test slower.
    let demo = [
        "demo",
        "--commands",
        "300",
        "--aggregates",
        "3",
        "--saga-orders",
        "20",
    ];
    let out = evershard(&demo, &store);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let counted = events(&store);
    let snaps = snap_files(&store);
    let newest = snaps.last().expect("sled left a snapshot file").clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&newest, &bytes).unwrap();

    let before = contents(&store);
    let name = newest.file_name().unwrap().to_string_lossy().into_owned();
    for command in ["verify", "list", "stats"] {
        let out = evershard(&[command], &store);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{command}: {out:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{command}: {stderr}");
        assert!(
            stderr.contains(&name) && stderr.contains("mv ") && stderr.contains("damaged-snap."),
            "{command}: {stderr}"
        );
    }
    assert!(
        contents(&store) == before,
        "a read-only command changed the store"
    );

    let again = [
        "demo",
        "--commands",
        "300",
        "--aggregates",
        "3",
        "--seed",
        "2",
        "--saga-orders",
        "20",
    ];
    let out = evershard(&again, &store);
    assert_eq!(out.status.code(), Some(0), "the writer recovers: {out:?}");
    assert_eq!(
        std::fs::read(store.join(format!("damaged-{name}"))).expect("moved aside, kept"),
        bytes
    );
    let out = evershard(&["verify"], &store);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Events are never removed: the first run's are all there, and the second run's after.
    assert!(
        events(&store) > counted,
        "the second run added to the first run's events"
    );
}
