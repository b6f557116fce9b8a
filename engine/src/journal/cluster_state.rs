//! The journal's side of cluster mode's stored tailer position (`crate::cluster::cursor`):
//! the `c` keyspace, read back at join and written by the tailer. The tailer writes it in
//! the same append as the replicated events it covers (an `extra_writes` entry, allowed for
//! this keyspace) and, when it covers only events already appended by this node's own
//! entities, on its own through [`JournalWriter::write_cluster_state`] after a sync.

use super::committer::WriteOp;
use super::{keys, Journal, JournalWriter};
use crate::error::StorageError;

/// Keys and values as stored, in key order.
pub(crate) type StoredPairs = Vec<(Vec<u8>, Vec<u8>)>;

impl Journal {
    /// Every `c` key under `prefix` (which must start with the `c` tag), in key order.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // read by the cluster at join
    pub(crate) fn cluster_state(&self, prefix: &[u8]) -> Result<StoredPairs, StorageError> {
        assert_eq!(
            prefix.first(),
            Some(&keys::CLUSTER),
            "a cluster-state prefix"
        );
        let mut out = Vec::new();
        for entry in self.shared.db()?.scan_prefix(prefix) {
            let (key, value) = entry?;
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }
}

impl JournalWriter {
    /// Applies `writes` (all in the `c` keyspace) atomically, without a sync: the caller
    /// synced the events they cover first, and a lost position only costs re-reading.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))] // written by the cluster's tailer
    pub(crate) fn write_cluster_state(&self, writes: Vec<WriteOp>) -> Result<(), StorageError> {
        self.shared.check_writable()?;
        let db = self.shared.db()?;
        let mut batch = sled::Batch::default();
        for op in writes {
            match op {
                WriteOp::Put { key, value } => {
                    assert_eq!(key.first(), Some(&keys::CLUSTER), "a cluster-state key");
                    batch.insert(key, value)
                }
                WriteOp::Remove { key } => {
                    assert_eq!(key.first(), Some(&keys::CLUSTER), "a cluster-state key");
                    batch.remove(key)
                }
            }
        }
        db.apply_batch(batch)?;
        Ok(())
    }
}
