//! sled's segment size, and the bound that keeps sled from writing blob files.
//!
//! sled 0.34 writes every log item larger than its *blob threshold* — a quarter of its
//! segment size, less the segment and message headers (`reserve_inner` in
//! `pagecache/logger.rs`) — to a separate file `blobs/<lsn>` and points at it from the log.
//! Those files and their names are durable only when the syncer syncs them, and the syncer
//! cannot sync them at the same instant as the fdatasync of `db` that makes the pointing item
//! durable: a power cut in between left a durable item without its blob, which sled's recovery
//! skips as "dangling" and, for a consolidated tree node, loses the node (docs/design.md, "What
//! the durability tests prove and how", points 5 and 8).
//!
//! Every value evershard writes is far below sled's default threshold (128 KiB with the
//! default 512 KiB segments), but a log item is not always one value: a *consolidated tree
//! node* is one item holding all of its entries. So new stores are created with
//! [`SEGMENT_BYTES`] = 16 MiB segments, whose threshold (4 MiB) is above the largest node
//! evershard's limits allow ([`NODE_BYTES_MAX`], worked out below and checked at compile
//! time). sled persists the segment size in `conf` and refuses to open a store with another
//! one, so a store keeps the size it was created with: [`segment_bytes_for`] reads it.
//!
//! The largest node, from sled 0.34's `node.rs` and `tree.rs`:
//!
//! - A leaf splits once it holds more than 16 entries (`should_split`), and every write
//!   reaches its leaf through `view_for_key`, which splits an oversized leaf first. So a leaf
//!   holds at most 17 entries when a write or a split stores it.
//! - A leaf that falls below 4 entries (by removals: pruned snapshots, fired timers, swept
//!   idempotency keys) is merged into its left sibling, which is stored whole with the
//!   child's entries added (`merge_node`, `receive_merge`). The child had fewer than 4
//!   entries when the merge began but may take inserts until it is capped, at most 17 (it
//!   splits above that); the left sibling has at most 17. We size for [`LEAF_ENTRIES_MAX`] =
//!   34 entries, two full leaves. (A left sibling could in principle take several merges in a
//!   row with no write to its own keys in between, +3 entries each in the common case: 34
//!   also covers five such merges into a full leaf. Beyond that is not excluded by sled's
//!   code, only by how unlikely it is; the syncer's blob passes stay as the defence, the
//!   syncer warns once if a blob file appears, and `engine/tests/segments.rs` and the
//!   power-loss test fail on any.)
//! - An index node splits above 256 entries and merges below 64: the same reasoning gives
//!   [`INDEX_ENTRIES_MAX`] = 2 × 257 separator keys with their child pointers.
//! - Each entry is a key of at most [`KEY_BYTES_MAX`] and a value of at most
//!   [`VALUE_BYTES_MAX`] (events, index entries, snapshots, everything a request's extra
//!   writes may put), each with a varint length (at most 9 bytes); a node adds its `lo` and
//!   `hi` keys (each at most a key) and a few fixed fields.

use std::path::Path;

/// sled 0.34's default segment size, the size of every store created before this module.
pub const LEGACY_SEGMENT_BYTES: usize = 512 * 1024;

/// The segment size of every new store. The largest sled accepts is 16 MiB (config.rs
/// `validate`); the smaller 8 MiB (threshold 2 MiB) would bound a node of 17 entries but not
/// of 34. The costs (docs/design.md, "Sled's segment size: no blob files"): sled's I/O buffer
/// is one segment, allocated once per segment and reused across flushes, only its written
/// pages touched; sled's recovery overwrites the rest of the current segment at every open,
/// so `db` is a whole segment after the first reopen and an open writes up to 16 MiB.
pub const SEGMENT_BYTES: usize = 16 * 1024 * 1024;

/// sled 0.34's `SEG_HEADER_LEN` and `MAX_MSG_HEADER_LEN` (`pagecache/constants.rs`).
const SLED_SEGMENT_HEADER_BYTES: usize = 20;
const SLED_MESSAGE_HEADER_BYTES_MAX: usize = 32;
/// sled 0.34's `MINIMUM_ITEMS_PER_SEGMENT`.
const SLED_ITEMS_PER_SEGMENT_MIN: usize = 4;

/// The largest log item sled 0.34 keeps inline in a log with segments of `segment_bytes`;
/// larger items go to blob files.
pub const fn blob_threshold_bytes(segment_bytes: usize) -> usize {
    segment_bytes / SLED_ITEMS_PER_SEGMENT_MIN
        - SLED_SEGMENT_HEADER_BYTES
        - SLED_MESSAGE_HEADER_BYTES_MAX
}

/// The longest key the journal writes: a snapshot part's key (`s` | stream part | sequence |
/// part u16) of a stream with the longest type and id; event, snapshot and timer keys are 2
/// bytes shorter. Every other keyspace's keys are shorter (topic names are at most 249 bytes,
/// publisher and group names 255), and a request's extra writes are checked against it.
pub const KEY_BYTES_MAX: usize =
    1 + 1 + super::keys::AGGREGATE_TYPE_BYTES_MAX + 2 + super::keys::AGGREGATE_ID_BYTES_MAX + 8 + 2;

/// The largest value the journal writes: above the largest event record
/// ([`super::record::RECORD_BYTES_MAX`]), global or topic index entry, and the bound checked on
/// snapshots and on a request's extra writes.
pub const VALUE_BYTES_MAX: usize = 116 * 1024;

/// Entries of a leaf node stored at once, at most (see the module docs).
pub const LEAF_ENTRIES_MAX: usize = 2 * (16 + 1);
/// Entries of an index node stored at once, at most (see the module docs).
pub const INDEX_ENTRIES_MAX: usize = 2 * (256 + 1);

/// sled's varint length prefix, at most.
const VARINT_BYTES_MAX: usize = 9;
/// A node's fixed fields: `next`, `merging_child` (varints), `merging`, `prefix_len`, the
/// data's tag and entry count, and the log item's own tag; rounded up.
const NODE_FIXED_BYTES_MAX: usize = 64;

/// The largest tree node evershard's limits allow, serialized.
pub const NODE_BYTES_MAX: usize = {
    let bounds = 2 * (VARINT_BYTES_MAX + KEY_BYTES_MAX);
    let leaf = LEAF_ENTRIES_MAX * (2 * VARINT_BYTES_MAX + KEY_BYTES_MAX + VALUE_BYTES_MAX);
    // An index entry: a separator key and a child's page id (a u64).
    let index = INDEX_ENTRIES_MAX * (VARINT_BYTES_MAX + KEY_BYTES_MAX + 8);
    NODE_FIXED_BYTES_MAX + bounds + if leaf > index { leaf } else { index }
};

const _: () = {
    assert!(SEGMENT_BYTES.is_power_of_two() && SEGMENT_BYTES <= 1 << 24);
    assert!(NODE_BYTES_MAX <= blob_threshold_bytes(SEGMENT_BYTES));
    assert!(super::record::RECORD_BYTES_MAX <= VALUE_BYTES_MAX);
    assert!(super::keys::GLOBAL_ENTRY_BYTES_MAX <= VALUE_BYTES_MAX);
    assert!(super::topics::TOPIC_ENTRY_BYTES_MAX <= VALUE_BYTES_MAX);
    // Each value alone also stays inline in a store made with the old segments, as before.
    assert!(VALUE_BYTES_MAX + KEY_BYTES_MAX + 64 <= blob_threshold_bytes(LEGACY_SEGMENT_BYTES));
};

/// The segment size to open the store in `dir` with: the one its `conf` records (sled refuses
/// any other); without a readable `conf`, the one its log was written with
/// (`probe::segment_bytes_of_log`: sled would write a new `conf` with whatever size it is
/// given and misread the log); [`SEGMENT_BYTES`] for a store sled has not created yet.
pub(super) fn segment_bytes_for(dir: &Path) -> usize {
    if let Some(size) = super::probe::sled_segment_bytes(&dir.join("conf")) {
        return size;
    }
    match super::probe::segment_bytes_of_log(&dir.join("db")) {
        Ok(Some(size)) => size,
        Ok(None) => SEGMENT_BYTES,
        // sled's own open will fail on it too; never guess the new size for existing data.
        Err(_) => LEGACY_SEGMENT_BYTES,
    }
}

/// sled's settings for the store in `dir` (evershard's segment size), to which each open
/// adds its own.
pub(super) fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .segment_size(segment_bytes_for(dir))
}

/// Every segment size at or above this lets sled 0.34 lose a buffer (see [`SledRoller`]).
const SLED_OFFSET_LIMIT_BYTES: usize = 1 << 24;

/// How often [`SledRoller`] seals sled's current I/O buffer.
pub(super) const SLED_ROLL_INTERVAL_MS: u64 = 20;

/// Keeps sled 0.34 from losing an I/O buffer in a store of [`SEGMENT_BYTES`] segments.
///
/// sled keeps a buffer's write offset in the low 24 bits of the buffer's header
/// (`pagecache/header.rs`), and `reserve_inner` refuses a reservation only when it would pass
/// the buffer's capacity, not when it would reach it. A segment's first buffer spans the
/// whole segment; with 2^24-byte segments, a reservation that fills it exactly wraps the
/// offset to 0 and adds one to the buffer's count of writers, which then never returns to
/// zero: the buffer is never written, and later reservations write over it from offset 0.
/// sled's stable LSN stops before it for good, so every later `flush`, and every read of a
/// page that was paged out from it, waits forever (spacejam/sled#1412 looks like this). Seen
/// here: the throughput bench's 1,000,000-aggregate run hung in `Journal::stats` about once
/// in five to fifteen runs under load (2026-11-27), sled's stable LSN at 100,663,295 (the
/// end of segment 5), segments 7 to 28 written past it, segment 6 never.
///
/// A buffer only fills a whole segment when nothing seals it first, which on the segment log
/// is the normal case: sled is flushed only by checkpoints and explicit syncs. The roller
/// flushes sled every [`SLED_ROLL_INTERVAL_MS`] (sled's `flush`: it seals the buffer, writes
/// it and waits for its `sync_file_range`; no fdatasync). The rest of a segment after a seal
/// is a shorter buffer, which cannot reach 2^24; only a segment's first buffer is exposed,
/// and only to what sled writes in one interval: 16 MiB in 20 ms is 800 MB/s, against about
/// 20 MB/s in that run. Stores of smaller segments cannot overflow and get no roller.
///
/// Not sled's own periodic flusher (`flush_every_ms`, which buffered mode keeps): each of its
/// rounds also runs sled's segment cleaning and ends in `sync_all` of `db` (`flusher.rs`),
/// an fsync every 20 ms beside the log's own, which a roll needs neither of.
pub(super) struct SledRoller {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SledRoller {
    /// A roller for `db`, whose segments are `segment_bytes`: `None` when they cannot
    /// overflow (or, logged, when no thread could be started). `failed` hears a failed flush,
    /// after which the roller stops (sled fails every later write the same way).
    pub(super) fn start(
        db: &sled::Db,
        segment_bytes: usize,
        failed: impl FnOnce(sled::Error) + Send + 'static,
    ) -> Option<SledRoller> {
        if segment_bytes < SLED_OFFSET_LIMIT_BYTES {
            return None;
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let db = db.clone();
        let interval = std::time::Duration::from_millis(SLED_ROLL_INTERVAL_MS);
        let spawned = std::thread::Builder::new()
            .name("evershard-sled-roll".into())
            .spawn(move || {
                // Until the owner drops its end.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(interval)
                {
                    if let Err(e) = db.flush() {
                        return failed(e);
                    }
                }
            });
        match spawned {
            Ok(thread) => Some(SledRoller {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(%e, "could not start the thread that flushes sled's buffers: a buffer that fills a whole segment may never be written");
                None
            }
        }
    }
}

impl Drop for SledRoller {
    /// Stops the roller and waits for its flush in progress, so that the store's `db` is
    /// free to close.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thresholds_are_sleds() {
        // 128 KiB less the headers with sled's default segments, 4 MiB less them with ours.
        assert_eq!(blob_threshold_bytes(LEGACY_SEGMENT_BYTES), 131_020);
        assert_eq!(blob_threshold_bytes(SEGMENT_BYTES), 4_194_252);
        assert_eq!(
            sled::Config::new().segment_size,
            LEGACY_SEGMENT_BYTES,
            "sled's default segment size changed: stores without a conf would not be legacy"
        );
    }

    /// sled writes a buffer that is not full only when flushed: the roller is what writes
    /// one in a store whose owner does not flush (the segment log's), and only in a store
    /// whose segments can overflow sled's offsets.
    #[test]
    fn the_roller_writes_sleds_buffer_where_nothing_else_would() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled_config(dir.path()).flush_every_ms(None).open().unwrap();
        assert_eq!(segment_bytes_for(dir.path()), SEGMENT_BYTES);
        db.flush().unwrap();
        let file = dir.path().join("db");
        let len = || std::fs::metadata(&file).unwrap().len();
        let before = len();
        db.insert(b"k", vec![7u8; 4096]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10 * SLED_ROLL_INTERVAL_MS));
        assert_eq!(
            len(),
            before,
            "sled wrote the buffer by itself: the test shows nothing"
        );

        assert!(SledRoller::start(&db, LEGACY_SEGMENT_BYTES, |_| {}).is_none());
        let (failed, failures) = std::sync::mpsc::channel();
        let roller = SledRoller::start(&db, SEGMENT_BYTES, move |e| {
            let _ = failed.send(e.to_string());
        })
        .expect("a roller for 16 MiB segments");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while len() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the roller did not write sled's buffer within 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(SLED_ROLL_INTERVAL_MS));
        }
        drop(roller); // joins its thread
        assert!(failures.try_recv().is_err());
        drop(db);
        // Closed: the roller holds no handle on sled.
        sled_config(dir.path()).open().expect("reopens");
    }

    #[test]
    fn the_largest_node_is_below_the_threshold() {
        // Printed so that the margin is visible in the test log.
        println!(
            "largest node {NODE_BYTES_MAX} B, blob threshold {} B",
            blob_threshold_bytes(SEGMENT_BYTES)
        );
        assert!(NODE_BYTES_MAX < blob_threshold_bytes(SEGMENT_BYTES));
        // ... and above the old threshold by far: the old segments could not bound a node.
        assert!(NODE_BYTES_MAX > 16 * blob_threshold_bytes(LEGACY_SEGMENT_BYTES));
    }
}
