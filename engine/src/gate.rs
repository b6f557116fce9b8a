//! The hook a cluster puts in front of every local append of a command batch
//! (docs/scale-out.md, `KafkaDurable`): the batch is first on the cluster's journal topic and
//! checked against the partition's claims, and only then appended locally. Without a cluster
//! no gate is installed and the entity appends as before.
//!
//! It lives outside the `cluster` module (which needs the `kafka` feature) so that the entity
//! layer compiles the same way in every build.

use crate::journal::AppendRequest;
use evershard_model::StreamId;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

/// What [`AppendGate::admit`] returns.
pub(crate) type GateFuture<'a> = Pin<Box<dyn Future<Output = Result<(), GateRefusal>> + Send + 'a>>;

/// Decides whether a command batch may be appended locally (and so acknowledged).
pub(crate) trait AppendGate: Send + Sync + Debug + 'static {
    /// Resolves `Ok` once the batch is replicated and valid, so the caller appends it
    /// locally; any refusal means the batch is not acknowledged (and, for
    /// [`GateRefusal::NotOwner`] and [`GateRefusal::Behind`], certainly took no effect).
    fn admit<'a>(&'a self, request: &'a AppendRequest) -> GateFuture<'a>;

    /// The claim epoch under which this node serves the stream's partition now, or
    /// [`GateRefusal::NotOwner`]. Checked before deciding: a state loaded under another
    /// epoch is reloaded first.
    fn serving(&self, stream: &StreamId) -> Result<u64, GateRefusal>;
}

/// Why a gate refused a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
// Only the cluster (feature `kafka`) installs a gate and so refuses.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) enum GateRefusal {
    /// This node does not serve the aggregate's partition (or lost it while the batch was
    /// in flight, which voids the batch): retry, at the owner.
    NotOwner {
        partition: u32,
        owner: Option<String>,
    },
    /// The batch was decided on a version older than the replicated stream's head (the
    /// in-memory state is stale): nothing was sent; decide again.
    Behind { expected: u64, actual: u64 },
    /// The batch could not be replicated and checked in time (broker down, a timeout). It
    /// may still land on the topic, valid but unacknowledged.
    Replication,
    /// The batch cannot travel through the cluster (a sealed payload: encryption at rest is
    /// not built for cluster mode).
    Unsupported,
}
