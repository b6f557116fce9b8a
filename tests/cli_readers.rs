//! Readers never block readers, and a store that cannot be written is still readable:
//! - while this process holds a store open read-only (sled's lock), `evershard verify`,
//!   `history`, `stats` and `export` in another process read it anyway (a private copy) and
//!   find it clean;
//! - a store whose files and directory are read-only (`chmod a-w`, what a read-only mount or
//!   another owner looks like to a non-root process) is read by every read-only command, and
//!   not one byte or name in it changes;
//! - a store held by a running engine is still refused as in use (exit 2): its files change
//!   under a reader, so they are neither opened nor copied.

use evershard::aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard::engine::Journal;
use evershard::Engine;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_evershard"))
        .args(args)
        .output()
        .expect("the evershard binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_store(dir: &Path) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = Engine::builder(dir)
            .register::<ProductStock>()
            .open()
            .await
            .unwrap();
        for i in 0..30 {
            engine
                .execute::<ProductStock>(&format!("sku-{}", i % 5), ReceiveStock { quantity: 2 })
                .await
                .unwrap();
        }
        engine.shutdown().await.unwrap();
    });
}

fn every_read_only_command_reads(d: &str) {
    let (code, out, err) = run(&["verify", "--data", d]);
    assert_eq!(code, 0, "verify: {out}{err}");
    let (code, out, err) = run(&["history", "ProductStock", "sku-1", "--data", d, "--json"]);
    assert_eq!((code, out.lines().count()), (0, 6), "history: {out}{err}");
    let (code, out, err) = run(&["stats", "--data", d]);
    assert!(
        code == 0 && out.contains("events                30"),
        "stats: {out}{err}"
    );
    let (code, out, err) = run(&["export", "--data", d]);
    assert_eq!((code, out.lines().count()), (0, 30), "export: {err}");
}

/// Every file under `dir` with its bytes, and the names: what "unchanged" means.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if path.is_dir() {
                all.push((name, Vec::new()));
                stack.push(path);
            } else {
                all.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    all.sort();
    all
}

#[test]
fn a_reader_does_not_block_another_reader() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path());
    let d = dir.path().to_str().unwrap();
    let held = Journal::open_read_only(dir.path()).expect("the first reader");
    assert!(!held.reads_a_private_copy());
    every_read_only_command_reads(d);
    assert!(held.verify().is_clean());
    drop(held);
}

/// A read-only bind mount of `dir` (root only), unmounted on drop.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(dir: &Path, at: &Path) -> Option<ReadOnlyMount> {
        std::fs::create_dir_all(at).ok()?;
        let ok = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let (d, a) = (dir.to_str()?, at.to_str()?);
        if !ok(&["--bind", d, a]) {
            return None;
        }
        let mount = ReadOnlyMount(at.to_path_buf());
        ok(&["-o", "remount,ro,bind", a]).then_some(mount)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn chmod_all(store: &Path, mode: u32) {
    let mut paths = vec![store.to_path_buf()];
    for entry in std::fs::read_dir(store).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        paths.push(path);
    }
    for path in paths {
        let dir_bits = if path.is_dir() { 0o111 } else { 0 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | dir_bits)).unwrap();
    }
}

#[test]
fn a_store_that_cannot_be_written_is_read_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    write_store(&store);
    // One read-only open first: sled's recovery after the writer may rewrite its own files
    // (docs/design.md, "Opening a directory"); a store on read-only media was closed long ago.
    drop(Journal::open_read_only(&store).unwrap());
    // Not writable for this process: files and directory without write permission (what
    // another owner's files look like), or, for root, whom permissions do not stop, a
    // read-only bind mount (what a read-only medium looks like).
    chmod_all(&store, 0o444);
    let mut _mount = None;
    let mut read_at = store.clone();
    if std::fs::File::create(store.join("probe-write")).is_ok() {
        let _ = std::fs::remove_file(store.join("probe-write"));
        chmod_all(&store, 0o644);
        match ReadOnlyMount::new(&store, &dir.path().join("ro")) {
            Some(mount) => {
                read_at = mount.0.clone();
                _mount = Some(mount);
            }
            None => {
                assert!(
                    std::env::var_os("EVERSHARD_REQUIRE_READONLY").is_none(),
                    "EVERSHARD_REQUIRE_READONLY is set, but neither permissions nor a read-only \
                     bind mount can make the store unwritable here"
                );
                eprintln!("SKIP: this process writes through permissions and cannot mount: the read-only case cannot be made here");
                return;
            }
        }
    }
    assert!(
        std::fs::File::create(read_at.join("probe-write")).is_err(),
        "the store is still writable"
    );
    let before = snapshot(&store);
    every_read_only_command_reads(read_at.to_str().unwrap());
    let journal = Journal::open_read_only(&read_at).expect("a read-only store opens");
    assert!(journal.reads_a_private_copy());
    assert!(journal.verify().is_clean());
    drop(journal);
    let after = snapshot(&store);
    drop(_mount);
    chmod_all(&store, 0o644);
    assert!(before == after, "a read-only command changed the store");
}

#[test]
fn a_store_held_by_a_running_engine_is_refused_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = rt.block_on(async {
        let engine = Engine::builder(dir.path())
            .register::<ProductStock>()
            .open()
            .await
            .unwrap();
        engine
            .execute::<ProductStock>("sku-1", ReceiveStock { quantity: 2 })
            .await
            .unwrap();
        engine
    });
    let (code, out, err) = run(&["verify", "--data", &d]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("in use") || err.contains("locked"), "{err}");
    assert!(matches!(
        Journal::open_read_only(dir.path()),
        Err(evershard::OpenError::Locked { .. })
    ));
    rt.block_on(engine.shutdown()).unwrap();
    // Once it is gone, readers read in place again.
    let journal = Journal::open_read_only(dir.path()).unwrap();
    assert!(!journal.reads_a_private_copy());
}
