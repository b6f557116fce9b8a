//! The tree maintainer: a background thread that follows the journal's durable global order
//! (like the topic indexer) and stores the hash of every complete subtree of 256 leaves or
//! more, with the covered tree size, in one atomic batch per step. Nothing is written per
//! event: a step covers up to `MAINTAINER_BATCH_EVENTS_MAX` events and writes about one node
//! per 128 of them.
//!
//! The nodes are a cache of what the records determine: a crash that takes back an unsynced
//! batch makes the thread recompute the same nodes from the same (durable) records. The
//! thread keeps the leaves of the incomplete 256-leaf block in memory; at start it rereads
//! them (at most 255 records).
//!
//! The leaves come from the committer: it hands over the SHA-256 of every record it writes
//! (it computed them for the hash chains), so the thread does not read each record back from
//! sled. What the committer of this process did not write — the catch-up after a restart —
//! or what the maintainer fell too far behind to find in the hand-over is read from the
//! stored records as before. The hashes are of the very bytes stored, so the tree is the same.

use super::{leaves_of, merkle};
use crate::error::StorageError;
use crate::follower::{Follow, Follower};
use crate::journal::merkle::STORED_LEVEL_MIN;
use crate::journal::record::Hash;
use crate::journal::JournalWriter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Events one maintainer step covers at most.
pub(crate) const MAINTAINER_BATCH_EVENTS_MAX: u64 = 16_384;

const BLOCK_LEAVES: u64 = 1 << STORED_LEVEL_MIN;

/// What the maintainer shares with the engine.
#[derive(Debug)]
pub(crate) struct MaintainerStatus {
    /// The tree size the stored nodes cover.
    pub(crate) size: AtomicU64,
    pub(crate) error: Mutex<Option<String>>,
}

/// The background maintainer: a [`Follower`] of the durable global order.
#[derive(Debug)]
pub(crate) struct Maintainer {
    pub(crate) status: Arc<MaintainerStatus>,
    follower: Follower,
}

impl Maintainer {
    pub(crate) fn start(writer: JournalWriter) -> Result<Maintainer, StorageError> {
        let size = writer.merkle_size()?;
        let block_start = size - size % BLOCK_LEAVES;
        let pending = if size > block_start {
            leaves_of(&writer.stored_records_between(block_start + 1, size)?)
        } else {
            Vec::new()
        };
        assert_eq!(
            pending.len() as u64,
            size - block_start,
            "block leaves reread"
        );
        let status = Arc::new(MaintainerStatus {
            size: AtomicU64::new(size),
            error: Mutex::new(None),
        });
        let worker = Worker {
            status: status.clone(),
            size,
            pending: pending.clone(),
            pending_at_step: pending,
        };
        // From here on the committer hands over each record's hash; what it wrote before
        // (the catch-up after a restart) is read from the journal.
        writer.feed_record_hashes();
        let follower = Follower::start(writer, worker).map_err(StorageError::from)?;
        Ok(Maintainer { status, follower })
    }

    /// Covers everything durable, then stops the thread and waits for it. Blocking.
    pub(crate) fn drain_and_stop(&self) {
        self.follower.drain_and_stop();
    }

    /// Tells the thread to stop without waiting for it.
    pub(crate) fn stop_now(&self) {
        self.follower.stop_now();
    }
}

struct Worker {
    status: Arc<MaintainerStatus>,
    size: u64,
    /// Leaves of the incomplete block `size - size % 256 .. size`.
    pending: Vec<Hash>,
    /// `pending` as it was before the current step, to restore after a failed one.
    pending_at_step: Vec<Hash>,
}

impl Follow for Worker {
    type Error = StorageError;
    const NAME: &'static str = "evershard-merkle";
    const BATCH_EVENTS_MAX: u64 = MAINTAINER_BATCH_EVENTS_MAX;
    // Nothing but the size is stored for less than a block of 256 leaves, and nobody waits
    // on the stored nodes (tree heads compute what is not stored): step once per block, or
    // after 10 ms, rather than on every group commit (a wakeup and a sled batch each).
    const STEP_EVENTS_MIN: u64 = BLOCK_LEAVES;
    const STEP_WAIT_MS: u64 = 10;

    fn covered(&self) -> u64 {
        self.size
    }

    fn step(&mut self, writer: &JournalWriter, to: u64) -> Result<(), StorageError> {
        self.pending_at_step.clone_from(&self.pending);
        self.cover(writer, to)
    }

    fn recover(&mut self, _: &JournalWriter, error: &StorageError) -> bool {
        // Skipping would make every later tree head wrong: retry from the same leaves.
        std::mem::swap(&mut self.pending, &mut self.pending_at_step);
        matches!(error, StorageError::Closed)
    }

    fn report(&self, error: Option<String>) {
        *self.status.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

impl Worker {
    /// Covers positions `size + 1 ..= to`: one atomic batch of nodes and the new size.
    fn cover(&mut self, writer: &JournalWriter, to: u64) -> Result<(), StorageError> {
        // The committer's hashes of what it wrote, or the stored records read back.
        let record_hashes = writer.record_hashes_between(self.size + 1, to)?;
        let mut nodes: Vec<(u8, u64, Hash)> = Vec::new();
        let mut emitted: HashMap<(u8, u64), Hash> = HashMap::new();
        let mut covered = self.size;
        for leaf in record_hashes.iter().map(merkle::leaf_hash) {
            self.pending.push(leaf);
            covered += 1;
            if self.pending.len() as u64 == BLOCK_LEAVES {
                let hash = merkle::root_of_leaves(&self.pending);
                self.pending.clear();
                let index = (covered - BLOCK_LEAVES) >> STORED_LEVEL_MIN;
                add(
                    writer,
                    STORED_LEVEL_MIN,
                    index,
                    hash,
                    &mut nodes,
                    &mut emitted,
                )?;
            }
        }
        assert_eq!(covered, to, "every record covered once");
        writer.write_merkle_batch(self.size, to, &nodes)?;
        self.size = to;
        self.status.size.store(to, Ordering::Release);
        Ok(())
    }
}

/// Records a complete node, and every parent it completes.
fn add(
    writer: &JournalWriter,
    level: u8,
    index: u64,
    hash: Hash,
    nodes: &mut Vec<(u8, u64, Hash)>,
    emitted: &mut HashMap<(u8, u64), Hash>,
) -> Result<(), StorageError> {
    let (mut level, mut index, mut hash) = (level, index, hash);
    loop {
        nodes.push((level, index, hash));
        emitted.insert((level, index), hash);
        if index % 2 == 0 || level == 63 {
            return Ok(());
        }
        let sibling = match emitted.get(&(level, index - 1)) {
            Some(h) => *h,
            None => writer.merkle_node(level, index - 1)?.ok_or_else(|| {
                StorageError::corrupt_store(crate::error::Corruption::MalformedKey {
                    keyspace: "merkle tree (missing node)",
                })
            })?,
        };
        hash = merkle::node_hash(&sibling, &hash);
        level += 1;
        index /= 2;
    }
}
