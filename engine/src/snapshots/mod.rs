//! Snapshots, in one home: the policy (when to take one), the record format and the choice
//! of the snapshot recovery starts from come from the pure `evershard-snapshots` crate; this
//! module adds what needs the journal: the writer thread ([`writer`]), which encodes, stores
//! and prunes off the command path, and [`recovery_start`], which reads a stream's snapshots
//! and picks one. Storing bytes is `journal`'s job (the only sled user).

mod writer;

pub(crate) use writer::{SnapshotJob, Snapshotter};

pub use evershard_snapshots::{select, Selection, SnapshotError, SnapshotPolicy, SnapshotRecord};

use crate::error::StorageError;
use crate::journal::{Journal, StreamId};
use evershard_model::Aggregate;

/// The newest usable snapshot of `stream` at or below `target` as (sequence, state), or
/// `None` (replay from the first event). Each newer, unusable one is logged with its typed
/// reason and skipped.
pub(crate) fn recovery_start<A: Aggregate>(
    journal: &Journal,
    stream: &StreamId,
    target: u64,
    head: u64,
) -> Result<Option<(u64, A::State)>, StorageError> {
    let candidates: Vec<_> = journal
        .snapshots(stream)?
        .into_iter()
        .filter(|(seq, _)| *seq <= target)
        .collect();
    let selection = select::<A::State>(&candidates, A::STATE_SCHEMA_VERSION, head);
    for (sequence, reason) in &selection.skipped {
        tracing::warn!(%stream, sequence, %reason, "skipping unusable snapshot");
    }
    Ok(selection.chosen)
}
