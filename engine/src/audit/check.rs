//! The full check of the tree, for `verify`: every leaf recomputed from the stored records in
//! global order, every stored node compared with the subtree recomputed under it, and the
//! roots at the asked sizes (an auditor's earlier digests) recomputed from the records.

use super::{leaves_of, merkle, AuditError};
use crate::journal::merkle::STORED_LEVEL_MIN;
use crate::journal::record::Hash;
use crate::journal::Journal;

const CHECK_CHUNK_EVENTS: u64 = 16_384;

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
    pub fn check_tree_with(&self, leaves: &[Hash], sizes: &[u64]) -> Result<TreeCheck, AuditError> {
        let mut check = TreeCheck {
            stored_size: self.merkle_size()?,
            ..TreeCheck::default()
        };
        let mut frontier: Vec<(u8, u64, Hash)> = Vec::new();
        if sizes.contains(&0) {
            check.roots_at.push((0, merkle::empty_root()));
        }
        for leaf in leaves {
            frontier.push((0, check.leaves, *leaf));
            check.leaves += 1;
            while frontier.len() >= 2
                && frontier[frontier.len() - 1].0 == frontier[frontier.len() - 2].0
            {
                let (level, index, right) = frontier.pop().expect("two");
                let (_, _, left) = frontier.pop().expect("two");
                let (level, index) = (level + 1, index / 2);
                let hash = merkle::node_hash(&left, &right);
                self.compare_node(&mut check, level, index, &hash)?;
                frontier.push((level, index, hash));
            }
            if sizes.contains(&check.leaves) {
                check.roots_at.push((check.leaves, fold(&frontier)));
            }
        }
        check.root = fold(&frontier);
        Ok(check)
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
