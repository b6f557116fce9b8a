//! The full check of the tree, for `verify`: every leaf recomputed from the stored records in
//! global order, every stored node compared with the subtree recomputed under it, and the
//! roots at the asked sizes (an auditor's earlier digests) recomputed from the records.

use super::{leaves_of, merkle, AuditError};
use crate::journal::merkle::STORED_LEVEL_MIN;
use crate::journal::record::Hash;
use crate::journal::Journal;

const CHECK_CHUNK_EVENTS: u64 = 16_384;
/// Leaves of one complete subtree a worker thread hashes when the tree is checked on two
/// threads (64 Ki: 2 MiB of leaves, ~1,000 stored nodes; small enough that the two threads
/// finish close together, large enough that handing one over costs nothing).
const PARALLEL_SUBTREE_LEAVES: u64 = 1 << 16;

/// A stored node that does not match the records under it: one of the events at global
/// positions `first_position..=last_position` changed since the maintainer hashed them, or
/// the node was altered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMismatch {
    pub level: u8,
    pub index: u64,
    pub first_position: u64,
    pub last_position: u64,
    /// True when the node is missing rather than different.
    pub missing: bool,
}

/// What [`Journal::check_tree`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeCheck {
    /// Leaves recomputed (= events in the global log).
    pub leaves: u64,
    /// The root over every leaf.
    pub root: Hash,
    /// The size the stored nodes cover.
    pub stored_size: u64,
    pub nodes_compared: u64,
    pub mismatches: Vec<NodeMismatch>,
    /// The recomputed root at each asked size (sizes beyond the log are left out).
    pub roots_at: Vec<(u64, Hash)>,
}

fn fold(frontier: &[(u8, u64, Hash)]) -> Hash {
    let mut it = frontier.iter().rev();
    let Some((_, _, last)) = it.next() else {
        return merkle::empty_root();
    };
    it.fold(*last, |right, (_, _, left)| merkle::node_hash(left, &right))
}

impl Journal {
    /// Recomputes the whole tree from the records (a full scan; reads only).
    pub fn check_tree(&self, sizes: &[u64]) -> Result<TreeCheck, AuditError> {
        let last = self.last_position()?;
        let mut leaves = Vec::with_capacity(last.min(1 << 24) as usize);
        let mut from = 1;
        while from <= last {
            let to = last.min(from + CHECK_CHUNK_EVENTS - 1);
            leaves.extend(leaves_of(&self.stored_records_between(from, to)?));
            from = to + 1;
        }
        self.check_tree_with(&leaves, sizes)
    }

    /// [`Journal::check_tree`] from leaves already computed, one per event in global order
    /// (`VerifyReport::leaves`: `verify` hashes every record anyway). The stored nodes are
    /// compared with the tree over `leaves`; the roots at `sizes` come from them.
    ///
    /// On a machine with two or more cores and a large tree, the complete subtrees of
    /// [`PARALLEL_SUBTREE_LEAVES`] leaves are hashed (and their stored nodes compared) on two
    /// threads, and the levels above them on this one; the result is the same as one thread's,
    /// mismatches and their order included.
    pub fn check_tree_with(&self, leaves: &[Hash], sizes: &[u64]) -> Result<TreeCheck, AuditError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
        self.check_tree_on(leaves, sizes, threads, PARALLEL_SUBTREE_LEAVES)
    }

    /// [`Journal::check_tree_with`] on at most `threads` threads, handing them complete
    /// subtrees of `subtree_leaves` leaves (a power of two).
    fn check_tree_on(
        &self,
        leaves: &[Hash],
        sizes: &[u64],
        threads: usize,
        subtree_leaves: u64,
    ) -> Result<TreeCheck, AuditError> {
        assert!(subtree_leaves.is_power_of_two());
        let mut check = TreeCheck {
            stored_size: self.merkle_size()?,
            ..TreeCheck::default()
        };
        let mut frontier: Vec<(u8, u64, Hash)> = Vec::new();
        if sizes.contains(&0) {
            check.roots_at.push((0, merkle::empty_root()));
        }
        let chunk = subtree_leaves as usize;
        let chunks = if threads >= 2 && leaves.len() >= 2 * chunk {
            leaves.len() / chunk
        } else {
            0
        };
        // A chunk with an asked size strictly inside it is folded leaf by leaf below, so that
        // the frontier at that size exists; every other complete chunk is a subtree whose
        // root and stored nodes the worker threads compute.
        let inside = |j: usize| {
            let (lo, hi) = ((j * chunk) as u64, ((j + 1) * chunk) as u64);
            sizes.iter().any(|s| *s > lo && *s < hi)
        };
        let subtrees = self.subtrees(leaves, chunk, chunks, &inside, check.stored_size, threads);
        for (j, subtree) in subtrees.into_iter().enumerate() {
            match subtree {
                Some(result) => {
                    let (root, compared, mismatches) = result?;
                    check.nodes_compared += compared;
                    check.mismatches.extend(mismatches);
                    check.leaves += chunk as u64;
                    let level = subtree_leaves.trailing_zeros() as u8;
                    self.push_node(&mut check, &mut frontier, level, j as u64, root)?;
                }
                None => {
                    for leaf in &leaves[j * chunk..(j + 1) * chunk] {
                        self.push_leaf(&mut check, &mut frontier, leaf, sizes)?;
                    }
                    continue;
                }
            }
            if sizes.contains(&check.leaves) {
                check.roots_at.push((check.leaves, fold(&frontier)));
            }
        }
        for leaf in &leaves[chunks * chunk..] {
            self.push_leaf(&mut check, &mut frontier, leaf, sizes)?;
        }
        check.root = fold(&frontier);
        Ok(check)
    }

    /// The roots of the complete subtrees `0..chunks` of `chunk` leaves, with their compared
    /// stored nodes and mismatches, hashed on `threads` threads (`None` for a chunk `serial`
    /// keeps for the caller).
    #[allow(clippy::type_complexity)]
    fn subtrees(
        &self,
        leaves: &[Hash],
        chunk: usize,
        chunks: usize,
        serial: &(dyn Fn(usize) -> bool + Sync),
        stored_size: u64,
        threads: usize,
    ) -> Vec<Option<Result<(Hash, u64, Vec<NodeMismatch>), AuditError>>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || {
            let mut done = Vec::new();
            loop {
                let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if j >= chunks {
                    return done;
                }
                if !serial(j) {
                    let mut check = TreeCheck {
                        stored_size,
                        leaves: (j * chunk) as u64,
                        ..TreeCheck::default()
                    };
                    let mut frontier = Vec::new();
                    let result = leaves[j * chunk..(j + 1) * chunk]
                        .iter()
                        .try_for_each(|leaf| self.push_leaf(&mut check, &mut frontier, leaf, &[]))
                        .map(|()| {
                            debug_assert_eq!(frontier.len(), 1, "a complete subtree");
                            (frontier[0].2, check.nodes_compared, check.mismatches)
                        });
                    done.push((j, result));
                }
            }
        };
        let mut out: Vec<Option<_>> = (0..chunks).map(|_| None).collect();
        std::thread::scope(|s| {
            let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            let mine = work();
            for (j, result) in helpers
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .chain(mine)
            {
                out[j] = Some(result);
            }
        });
        out
    }

    /// Adds the next leaf to the frontier (and the root at `sizes`).
    fn push_leaf(
        &self,
        check: &mut TreeCheck,
        frontier: &mut Vec<(u8, u64, Hash)>,
        leaf: &Hash,
        sizes: &[u64],
    ) -> Result<(), AuditError> {
        let index = check.leaves;
        check.leaves += 1;
        self.push_node(check, frontier, 0, index, *leaf)?;
        if sizes.contains(&check.leaves) {
            check.roots_at.push((check.leaves, fold(frontier)));
        }
        Ok(())
    }

    /// Adds a complete subtree's root to the frontier, hashing (and comparing with the stored
    /// nodes) every node it completes.
    fn push_node(
        &self,
        check: &mut TreeCheck,
        frontier: &mut Vec<(u8, u64, Hash)>,
        level: u8,
        index: u64,
        hash: Hash,
    ) -> Result<(), AuditError> {
        frontier.push((level, index, hash));
        while frontier.len() >= 2
            && frontier[frontier.len() - 1].0 == frontier[frontier.len() - 2].0
        {
            let (level, index, right) = frontier.pop().expect("two");
            let (_, _, left) = frontier.pop().expect("two");
            let (level, index) = (level + 1, index / 2);
            let hash = merkle::node_hash(&left, &right);
            self.compare_node(check, level, index, &hash)?;
            frontier.push((level, index, hash));
        }
        Ok(())
    }

    fn compare_node(
        &self,
        check: &mut TreeCheck,
        level: u8,
        index: u64,
        hash: &Hash,
    ) -> Result<(), AuditError> {
        let end = (index + 1) << level;
        if level < STORED_LEVEL_MIN || end > check.stored_size {
            return Ok(());
        }
        check.nodes_compared += 1;
        let stored = self.merkle_node(level, index)?;
        if stored.as_ref() != Some(hash) {
            // Report the lowest level only: a changed leaf changes every node above it.
            let first_position = (index << level) + 1;
            let covered = check
                .mismatches
                .iter()
                .any(|m| m.first_position >= first_position && m.last_position <= end);
            if !covered {
                check.mismatches.push(NodeMismatch {
                    level,
                    index,
                    first_position,
                    last_position: end,
                    missing: stored.is_none(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The tree check on two threads gives exactly the one-thread answer: roots, roots at
    //! asked sizes (inside a subtree, on its boundary, at the end), nodes compared, and the
    //! mismatches of altered and missing stored nodes in the same order.
    use super::*;
    use crate::journal::{JournalConfig, JournalWriter};
    use sha2::{Digest, Sha256};

    #[test]
    fn two_threads_give_the_one_thread_answer() {
        let dir = tempfile::tempdir().unwrap();
        let writer = JournalWriter::open(dir.path(), JournalConfig::default()).unwrap();
        let n: u64 = 5 * 1024 + 300;
        let leaves: Vec<Hash> = (0..n)
            .map(|i| merkle::leaf_hash(&Sha256::digest(i.to_le_bytes()).into()))
            .collect();
        // Every complete subtree of 256 leaves or more, as the maintainer stores them; the
        // stored size stops short of the end so that the last leaves have no stored nodes.
        let stored = 4 * 1024 + 512;
        let mut nodes = Vec::new();
        for level in STORED_LEVEL_MIN..13 {
            let width = 1u64 << level;
            for index in 0..stored / width {
                let start = (index * width) as usize;
                let mut root = merkle::root_of_leaves(&leaves[start..start + width as usize]);
                // Damage: one altered node at level 8 (inside a subtree a worker hashes), one
                // at level 10 (above the workers' subtrees of 256 and 512 leaves), one missing
                // node; a node above any of them is not reported again (its range covers one).
                if (level, index) == (8, 5) || (level, index) == (10, 2) {
                    root[0] ^= 1;
                }
                if (level, index) != (9, 6) {
                    nodes.push((level, index, root));
                }
            }
        }
        writer.write_merkle_batch(0, stored, &nodes).unwrap();
        // Stored with the mark that the size follows the synced watermark (a floor for a
        // writable open of the log).
        assert_eq!(writer.reader().merkle_synced_size().unwrap(), Some(stored));
        let sizes = [0, 700, 1024, 3000, n - 1, n];
        let one = writer.check_tree_on(&leaves, &sizes, 1, 1 << 16).unwrap();
        assert_eq!(one.root, merkle::root_of_leaves(&leaves));
        assert_eq!(one.mismatches.len(), 3, "{:?}", one.mismatches);
        assert_eq!(one.roots_at.len(), sizes.len());
        for (size, root) in &one.roots_at {
            assert_eq!(*root, merkle::root_of_leaves(&leaves[..*size as usize]));
        }
        for subtree_leaves in [256, 512, 1024] {
            let two = writer
                .check_tree_on(&leaves, &sizes, 2, subtree_leaves)
                .unwrap();
            assert_eq!(two, one, "subtrees of {subtree_leaves} leaves");
        }
    }
}
