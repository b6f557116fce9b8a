//! Mutation switches for the power-loss tests (`testing/lossyfs`): with the
//! `fault-injection` feature, `EVERSHARD_FAULT_SKIP_SYNC` (a comma-separated list) makes the
//! journal skip a sync it owes, so that a test can prove it notices the loss:
//!
//! - `fdatasync`: the fdatasync of sled's data file after each group's flush;
//! - `blob`: the sync of each new blob file;
//! - `blobdir`: the sync of the `blobs/` folder after new blob files;
//! - `dir`: the syncs of a new store's directory and of its parent at creation, and of the
//!   store's files and directories before and after sled's recovery at open.
//!
//! Without the feature every switch is off and compiles away.

/// A sync the journal may be told to skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sync {
    Fdatasync,
    Blob,
    BlobDir,
    Dir,
}

/// True when the test asked to skip `sync` (read once per process).
#[cfg(feature = "fault-injection")]
pub(crate) fn skip(sync: Sync) -> bool {
    static SKIPPED: std::sync::OnceLock<Vec<Sync>> = std::sync::OnceLock::new();
    SKIPPED
        .get_or_init(|| {
            let list = std::env::var("EVERSHARD_FAULT_SKIP_SYNC").unwrap_or_default();
            let skipped: Vec<Sync> = list
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| match s.trim() {
                    "fdatasync" => Sync::Fdatasync,
                    "blob" => Sync::Blob,
                    "blobdir" => Sync::BlobDir,
                    "dir" => Sync::Dir,
                    other => panic!("EVERSHARD_FAULT_SKIP_SYNC: unknown sync {other:?}"),
                })
                .collect();
            if !skipped.is_empty() {
                tracing::warn!(
                    ?skipped,
                    "fault injection: skipping syncs; data may be lost"
                );
            }
            skipped
        })
        .contains(&sync)
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn skip(_sync: Sync) -> bool {
    false
}
