//! The hook a cluster puts around every local append of a command batch (docs/scale-out.md).
//! In `KafkaDurable` the batch is first on the cluster's journal topic and checked against the
//! partition's claims, and only then appended locally. In `Local` the gate checks ownership
//! and the replication lag, adds the batch's outbox entry to the append, and hands back an
//! [`AfterAppend`] that queues the batch for the topic once the local append succeeded (a
//! refused or failed append never reaches the topic). Without a cluster no gate is installed
//! and the entity appends as before.
//!
//! It lives outside the `cluster` module (which needs the `kafka` feature) so that the entity
//! layer compiles the same way in every build.

use crate::journal::AppendRequest;
use evershard_model::StreamId;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

/// What the entity runs right after a successful local append of an admitted batch (`Local`
/// mode: queue it for the journal topic). Never run when the append failed.
pub(crate) type AfterAppend = Box<dyn FnOnce() + Send>;

/// What [`AppendGate::admit`] returns.
pub(crate) type GateFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<AfterAppend>, GateRefusal>> + Send + 'a>>;

/// Decides whether a command batch may be appended locally (and so acknowledged).
pub(crate) trait AppendGate: Send + Sync + Debug + 'static {
    /// Resolves `Ok` once the batch may be appended locally (`KafkaDurable`: it is
    /// replicated and valid; `Local`: this node serves the partition and the lag is under its
    /// bound, and the request now carries the batch's outbox write). The caller appends it
    /// and then runs the returned [`AfterAppend`], if any. Any refusal means the batch is not
    /// acknowledged (and, for [`GateRefusal::NotOwner`], [`GateRefusal::Behind`],
    /// [`GateRefusal::Lagging`], [`GateRefusal::Forked`] and [`GateRefusal::TooLarge`],
    /// certainly took no effect).
    fn admit<'a>(&'a self, request: &'a mut AppendRequest) -> GateFuture<'a>;

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
    /// `Local` mode: this node already holds `replication_lag_max_batches` acknowledged
    /// batches not yet on the journal topic; nothing was written.
    Lagging { batches: usize },
    /// `Local` mode: batches this node acknowledged in the partition were voided by another
    /// node's claim (a fork); the node refuses the partition until its store is rebuilt.
    Forked { partition: u32 },
    /// The batch's message on the journal topic would be larger than the producer sends
    /// (`bytes` over `max`): it can never be replicated; nothing was sent or written.
    TooLarge { bytes: usize, max: usize },
}
