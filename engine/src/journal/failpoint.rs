//! Named failpoints on the write path, in sled's style, with the `fail` crate: each step that
//! writes or syncs asks [`check`] first, and a test that configured the failpoint
//! (`fail::cfg(name, "return(enospc)")`, `"panic"`, …) makes that step fail as a disk would,
//! or panic as a bug would. Only with the `failpoints` feature; without it [`check`] is
//! `Ok(())` and compiles away, and `fail` is not even built. The tests are in
//! `engine/tests/failpoints.rs`.
//!
//! A `return` action's argument picks the OS error the step fails with: `enospc` (no space
//! left on device), `eio` (the default), `erofs` (read-only file system).

/// The group's `apply_batch` into sled (events, index entries, timers, idempotency keys,
/// outbox entries of one group commit: one atomic batch).
pub const APPLY_BATCH: &str = "journal::apply_batch";
/// sled's `flush` of a group before its fdatasync.
pub const FLUSH: &str = "journal::flush";
/// The fdatasync of sled's data file after the flush.
pub const FDATASYNC: &str = "journal::fdatasync";
/// The sync of sled's blob files and of `blobs/` (each sync round, before and after the
/// fdatasync).
pub const BLOB_SYNC: &str = "journal::blob_sync";
/// A snapshot's insert (off the command path).
pub const SNAPSHOT_WRITE: &str = "journal::snapshot_write";
/// The topic indexer's batch (before its first write: topic configs and index entries).
pub const TOPIC_BATCH: &str = "journal::topic_batch";
/// The topic indexer's cursor, written after the batch's entries.
pub const TOPIC_BATCH_CURSOR: &str = "journal::topic_batch_cursor";
/// A consumer group's committed offsets.
pub const COMMIT_OFFSETS: &str = "journal::commit_offsets";
/// The sweep of expired idempotency keys (its own writes, outside any command's batch).
pub const IDEMPOTENCY_SWEEP: &str = "journal::idempotency_sweep";
/// A scrub of erased key entries from the segment log's frames, after each range it zeroed
/// (see `seglog::scrub_frames`).
pub const SCRUB: &str = "journal::scrub";

/// Every failpoint, for tests that walk them all.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub const ALL: [&str; 10] = [
    APPLY_BATCH,
    FLUSH,
    FDATASYNC,
    BLOB_SYNC,
    SNAPSHOT_WRITE,
    TOPIC_BATCH,
    TOPIC_BATCH_CURSOR,
    COMMIT_OFFSETS,
    IDEMPOTENCY_SWEEP,
    SCRUB,
];

/// `Err` when a test configured failpoint `name` to return; panics when it configured a
/// panic; `Ok(())` otherwise (and always without the `failpoints` feature).
#[cfg(feature = "failpoints")]
pub(crate) fn check(name: &str) -> std::io::Result<()> {
    match fail::eval(name, |arg| {
        let code = match arg.as_deref() {
            Some("enospc") => 28,
            Some("erofs") => 30,
            _ => 5, // EIO
        };
        std::io::Error::from_raw_os_error(code)
    }) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn check(_name: &str) -> std::io::Result<()> {
    Ok(())
}
