//! Digests and proofs for auditors: a Merkle tree over the global log (RFC 6962 / RFC 9162,
//! one leaf per event record in global order), its tree head ("digest") of any size, the
//! inclusion proof of one event and the consistency proof between two sizes.
//!
//! - [`merkle`]: the pure hashing and proof algorithms (no storage; what an offline verifier
//!   needs).
//! - [`maintainer`]: the background thread that follows the durable global log and stores
//!   complete subtree hashes from level 8 up, one batch per step (bytes in
//!   `journal/merkle.rs`), so that a tree head costs O(log n) stored nodes plus at most 255
//!   records, and a proof O(log n) nodes plus at most 2·255 records.
//! - [`JournalTree`]: the tree of a journal as stored: stored nodes where the maintainer has
//!   written them, recomputed from the records (without writing) everywhere else, so the
//!   read-only CLI answers for a store whose maintainer is behind or never ran.

mod check;
pub(crate) mod maintainer;
pub mod merkle;

pub use check::{NodeMismatch, TreeCheck};

use crate::error::StorageError;
use crate::journal::merkle::{StoredRecord, STORED_LEVEL_MIN};
use crate::journal::record::{self, Hash, Record};
use crate::journal::{Journal, StreamId};
use chrono::{DateTime, Utc};
use merkle::Subtrees;

/// Why a tree head or a proof could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading the journal failed (or met a damaged record where one was needed).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A tree size larger than the store's log.
    #[error("tree size {size} is beyond the store's {store_size} events")]
    BeyondStore { size: u64, store_size: u64 },
    /// A tree size of 0 where a proof needs at least one leaf.
    #[error("a consistency proof needs a first tree size of at least 1")]
    EmptyTree,
    /// No stored event at this aggregate and sequence.
    #[error("no event {stream} sequence {sequence} in the store")]
    NoSuchEvent { stream: StreamId, sequence: u64 },
    /// The event exists but was committed after the tree of `tree_size` leaves.
    #[error("event at global position {position} is not in the tree of size {tree_size}")]
    NotInTree { position: u64, tree_size: u64 },
}

/// A tree head: the root of the Merkle tree over the first `tree_size` events of the global
/// log. What `evershard digest` prints and signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeHead {
    pub tree_size: u64,
    pub root_hash: Hash,
    /// The timestamp of the event at position `tree_size` (`None` for the empty tree).
    pub last_event_at: Option<DateTime<Utc>>,
}

/// Proof that one event record is leaf `leaf_index` (= global position - 1) of the tree of
/// `tree_size` leaves. Carries the stored record bytes, so the leaf is recomputed, never
/// trusted: leaf = SHA-256(0x00 ‖ SHA-256(record)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    pub tree_size: u64,
    pub leaf_index: u64,
    pub record: Vec<u8>,
    /// Sibling hashes from the leaf up (RFC 6962 PATH).
    pub path: Vec<Hash>,
}

impl InclusionProof {
    /// SHA-256 of the record bytes: the record's hash in the aggregate's chain.
    pub fn record_sha256(&self) -> Hash {
        record::hash(&self.record)
    }

    /// The leaf hash recomputed from the record bytes.
    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.record_sha256())
    }

    /// True when the proof leads from the record to `root` in a tree of `tree_size` leaves.
    pub fn verify(&self, root: &Hash) -> bool {
        merkle::verify_inclusion(
            self.leaf_index,
            self.tree_size,
            &self.leaf_hash(),
            &self.path,
            root,
        )
    }
}

/// Proof that the tree of `first_size` leaves is a prefix of the tree of `second_size`
/// (RFC 6962 PROOF): nothing in the first `first_size` events was changed, removed or
/// reordered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    pub first_size: u64,
    pub second_size: u64,
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    pub fn verify(&self, first_root: &Hash, second_root: &Hash) -> bool {
        merkle::verify_consistency(
            self.first_size,
            self.second_size,
            first_root,
            second_root,
            &self.path,
        )
    }
}

/// The leaf hashes of stored records.
pub(crate) fn leaves_of(records: &[StoredRecord]) -> Vec<Hash> {
    records
        .iter()
        .map(|r| merkle::leaf_hash(&record::hash(&r.bytes)))
        .collect()
}

/// The tree of a journal as stored: the maintainer's nodes up to the size it covers, the
/// records for everything else. Reads only.
#[derive(Debug)]
pub struct JournalTree<'j> {
    journal: &'j Journal,
    stored_size: u64,
}

impl<'j> JournalTree<'j> {
    pub fn new(journal: &'j Journal) -> Result<JournalTree<'j>, StorageError> {
        Ok(JournalTree {
            journal,
            stored_size: journal.merkle_size()?,
        })
    }

    /// The tree size the maintainer's stored nodes cover.
    pub fn stored_size(&self) -> u64 {
        self.stored_size
    }
}

impl Subtrees for JournalTree<'_> {
    type Error = StorageError;
    fn subtree(&mut self, level: u8, index: u64) -> Result<Hash, StorageError> {
        let start = index << level;
        let end = start + (1u64 << level);
        if level >= STORED_LEVEL_MIN && end <= self.stored_size {
            if let Some(hash) = self.journal.merkle_node(level, index)? {
                return Ok(hash);
            }
        }
        if level <= STORED_LEVEL_MIN {
            let records = self.journal.stored_records_between(start + 1, end)?;
            if records.len() as u64 != end - start {
                return Err(StorageError::corrupt_store(
                    crate::error::Corruption::MalformedGlobalEntry,
                ));
            }
            return Ok(merkle::root_of_leaves(&leaves_of(&records)));
        }
        let left = self.subtree(level - 1, index * 2)?;
        let right = self.subtree(level - 1, index * 2 + 1)?;
        Ok(merkle::node_hash(&left, &right))
    }
}

impl Journal {
    /// The tree head of the first `at` events (`None`: every event committed). Reads only:
    /// stored subtree hashes where the maintainer wrote them, the records elsewhere.
    pub fn tree_head(&self, at: Option<u64>) -> Result<TreeHead, AuditError> {
        let store_size = self.last_position()?;
        let size = at.unwrap_or(store_size);
        if size > store_size {
            return Err(AuditError::BeyondStore { size, store_size });
        }
        let mut tree = JournalTree::new(self)?;
        let root_hash = merkle::range_root(&mut tree, 0, size)?;
        let last_event_at = if size == 0 {
            None
        } else {
            let last = self.stored_records_between(size, size)?;
            match last.first() {
                Some(r) => {
                    Some(crate::journal::decode_checked(&r.stream, r.sequence, &r.bytes)?.timestamp)
                }
                None => None,
            }
        };
        Ok(TreeHead {
            tree_size: size,
            root_hash,
            last_event_at,
        })
    }

    /// The inclusion proof of event `sequence` of `stream` in the tree of `tree_size` leaves
    /// (`None`: every event committed).
    pub fn prove_event(
        &self,
        stream: &StreamId,
        sequence: u64,
        tree_size: Option<u64>,
    ) -> Result<InclusionProof, AuditError> {
        let store_size = self.last_position()?;
        let tree_size = tree_size.unwrap_or(store_size);
        if tree_size > store_size {
            return Err(AuditError::BeyondStore {
                size: tree_size,
                store_size,
            });
        }
        let bytes =
            self.record_bytes(stream, sequence)?
                .ok_or_else(|| AuditError::NoSuchEvent {
                    stream: stream.clone(),
                    sequence,
                })?;
        let record: Record = crate::journal::decode_checked(stream, sequence, &bytes)?;
        let position = record.global_position;
        if position == 0 || position > tree_size {
            return Err(AuditError::NotInTree {
                position,
                tree_size,
            });
        }
        let mut tree = JournalTree::new(self)?;
        let path = merkle::inclusion_path(&mut tree, position - 1, tree_size)?;
        Ok(InclusionProof {
            tree_size,
            leaf_index: position - 1,
            record: bytes,
            path,
        })
    }

    /// The consistency proof from the tree of `first_size` leaves to the tree of
    /// `second_size` (`None`: every event committed).
    pub fn prove_consistency(
        &self,
        first_size: u64,
        second_size: Option<u64>,
    ) -> Result<ConsistencyProof, AuditError> {
        let store_size = self.last_position()?;
        let second_size = second_size.unwrap_or(store_size);
        for size in [first_size, second_size] {
            if size > store_size {
                return Err(AuditError::BeyondStore { size, store_size });
            }
        }
        if first_size == 0 {
            return Err(AuditError::EmptyTree);
        }
        if first_size > second_size {
            return Err(AuditError::BeyondStore {
                size: first_size,
                store_size: second_size,
            });
        }
        let mut tree = JournalTree::new(self)?;
        let path = merkle::consistency_path(&mut tree, first_size, second_size)?;
        Ok(ConsistencyProof {
            first_size,
            second_size,
            path,
        })
    }

    /// The tree size the maintainer's stored nodes cover (the rest is computed on demand).
    pub fn tree_size_stored(&self) -> Result<u64, StorageError> {
        self.merkle_size()
    }
}
