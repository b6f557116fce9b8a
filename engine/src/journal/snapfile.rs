//! A damaged sled snapshot file. sled 0.34 keeps, beside its log `db`, a file `snap.<lsn>`: a
//! cache of where each page's latest version sits in the log, rebuilt from the log when
//! missing. It holds no data of its own. But sled reads the newest one at every open and
//! refuses the whole store when it fails its CRC ("sled reports corruption at None"), while
//! the log it caches may be intact: deleting the file brings every event back (issue #12: 34
//! of 34 trials with one corrupted byte).
//!
//! So when sled refuses a store as corrupt and a snapshot file is there, [`check_without`]
//! copies the store *without* its snapshot files to a temporary directory and opens the copy
//! (sled then recovers from the log alone) and runs the journal's `verify` there — the
//! original is not touched. If the copy reads clean, the snapshot file was the damage: the
//! writer moves it aside ([`move_aside`]: renamed `damaged-snap.<lsn>`, never deleted, in
//! the store's directory, where sled does not look) and opens again, logging both names; a
//! read-only open refuses with [`crate::OpenError::DamagedSnapshotFile`], which names the
//! file and the exact command that moves it aside.

use super::{is_store_format, meta_format_key, verify};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How long the check of a copy may take before it is given up (the store is then reported
/// as damaged, with sled's own error).
const COPY_CHECK_MS_MAX: u64 = 300_000;

/// The prefix sled 0.34 gives its snapshot files (`Config::get_snapshot_files` takes every
/// file whose name starts with it, except `*.in___motion`).
const SNAPSHOT_PREFIX: &str = "snap.";

/// What a moved-aside snapshot file is called: not `snap.*`, so sled ignores it.
const ASIDE_PREFIX: &str = "damaged-";

/// sled's snapshot files in `dir`, sorted by name (the newest, which sled reads, last).
pub(super) fn snapshot_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(SNAPSHOT_PREFIX) && entry.file_type()?.is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Where [`move_aside`] puts `file`: `damaged-<name>` beside it.
pub(super) fn aside_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!("{ASIDE_PREFIX}{name}"))
}

/// Renames `file` to [`aside_path`] (never over an existing file) and syncs the directory.
pub(super) fn move_aside(file: &Path) -> std::io::Result<PathBuf> {
    let mut aside = aside_path(file);
    let mut n = 1;
    while aside.exists() {
        aside = aside_path(file).with_extension(format!("{n}"));
        n += 1;
    }
    std::fs::rename(file, &aside)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(aside)
}

/// Opens a copy of the store at `dir` without its snapshot files, in a temporary directory,
/// and checks it: sled opens it, the format marker is evershard's, `verify` is clean.
/// `Ok(())` when so; `Err` says why not (or that the check could not be made). Reads `dir`
/// only. Bounded by [`COPY_CHECK_MS_MAX`].
pub(super) fn check_without(dir: &Path) -> Result<(), String> {
    let copy = std::env::temp_dir().join(format!(
        "evershard-snapcheck-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    copy_store(dir, &copy).map_err(|e| {
        let _ = std::fs::remove_dir_all(&copy);
        format!("could not copy the store to check it: {e}")
    })?;
    let (tx, rx) = mpsc::channel();
    let checked = copy.clone();
    // The check runs on its own thread so that a damaged log cannot hold the open forever;
    // past the bound the thread is left to finish (and clean up) on its own.
    std::thread::spawn(move || {
        let result = check_copy(&checked);
        let _ = std::fs::remove_dir_all(&checked);
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_millis(COPY_CHECK_MS_MAX))
        .unwrap_or_else(|_| Err("the check of a copy without it did not finish in time".into()))
}

fn check_copy(copy: &Path) -> Result<(), String> {
    let db = super::segments::sled_config(copy)
        .open()
        .map_err(|e| format!("a copy without it does not open either: {e}"))?;
    match db.get(meta_format_key()) {
        Ok(Some(v)) if is_store_format(&v) => {}
        Ok(_) => return Err("a copy without it has no evershard format marker".into()),
        Err(e) => return Err(format!("a copy without it does not read: {e}")),
    }
    let report = verify::verify(&db, &verify::VerifyOptions::default());
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!(
            "a copy without it has {} verify issues",
            report.issues.len()
        ))
    }
}

/// Copies `db`, `conf`, the marker file and `blobs/` of `from` into a new directory `to`.
fn copy_store(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to.join("blobs"))?;
    for name in ["db", "conf", super::probe::MARKER_FILE] {
        match std::fs::copy(from.join(name), to.join(name)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name != "db" => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::read_dir(from.join("blobs")) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                std::fs::copy(entry.path(), to.join("blobs").join(entry.file_name()))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
