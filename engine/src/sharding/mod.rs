//! Aggregates as sharded actors on ractor.
//!
//! Each registered aggregate type gets `shards` shard actors. A stable hash of
//! (aggregate type, id) picks the shard; the shard owns one entity actor per active aggregate
//! instance and forwards each command to it — or, once the actor is active and nothing for
//! it is queued at the shard, the sender puts the command straight into its mailbox through
//! the shard's routing table (`shard::Routes`). ractor handles one message at a time per actor
//! and keeps per-sender FIFO order, so one aggregate's commands run strictly one at a time in
//! arrival order while different aggregates run in parallel. See docs/runtime-semantics.md.

mod entity;
pub(crate) use entity::panic_message;
mod shard;

#[cfg(feature = "fault-injection")]
pub(crate) use entity::{idempotency_ops, timer_ops};
pub(crate) use entity::{EntityMsg, Guard};
pub(crate) use shard::{Direct, Routes, ShardActor, ShardArgs, ShardMsg};

use crate::journal::JournalWriter;
use crate::snapshots::{SkippedSnapshot, SnapshotPolicy, Snapshotter};
use evershard_model::Clock;
use std::sync::Arc;
use std::time::Duration;

/// Limits and timings of the actor layer. Every limit has its unit in its name.
#[derive(Clone, Debug)]
pub struct ShardingConfig {
    /// Shard actors per aggregate type.
    pub shards: usize,
    /// Commands queued for one aggregate instance before new ones fail with `Overloaded`.
    pub entity_mailbox_commands_max: usize,
    /// Commands queued at one shard before new ones fail with `Overloaded`.
    pub shard_mailbox_commands_max: usize,
    /// An aggregate with no command for this long leaves memory.
    pub passivate_idle_ms: u64,
    /// Active aggregates per shard; past it the least recently used idle one leaves memory.
    /// An active aggregate costs about 10 KiB of resident memory besides its state (its
    /// actor: task, mailbox and supervision channels), so the default (2,048 per shard,
    /// 16,384 for 8 shards) keeps the actors of one aggregate type near 160 MiB.
    pub active_per_shard_max: usize,
    /// How often a shard looks for idle aggregates.
    pub passivation_check_ms: u64,
}

impl Default for ShardingConfig {
    fn default() -> Self {
        Self {
            shards: 8,
            entity_mailbox_commands_max: 1024,
            shard_mailbox_commands_max: 100_000,
            passivate_idle_ms: 5 * 60 * 1000,
            active_per_shard_max: 2_048,
            passivation_check_ms: 1000,
        }
    }
}

/// What every actor shares.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub journal: JournalWriter,
    pub clock: Arc<dyn Clock>,
    pub snapshot_policy: SnapshotPolicy,
    pub snapshotter: Snapshotter,
    pub config: ShardingConfig,
    /// How long an idempotency key answers with its original result.
    pub idempotency_retention_ms: i64,
    /// Snapshots recovery skipped since the engine opened, newest last, at most
    /// [`SKIPPED_SNAPSHOTS_KEPT_MAX`] (see [`crate::Engine::skipped_snapshots`]).
    pub skipped_snapshots: std::sync::Mutex<std::collections::VecDeque<SkippedSnapshot>>,
    /// The aggregate types whose payloads and snapshots are encrypted at rest (empty
    /// without a key provider).
    pub sensitive: std::collections::HashSet<&'static str>,
    /// Cluster mode: what every command batch passes before its local append (set once,
    /// when the engine joins a cluster; see `crate::gate`).
    pub gate: std::sync::OnceLock<Arc<dyn crate::gate::AppendGate>>,
    /// Cluster mode: the engine joins a cluster after it opened
    /// (`EngineBuilder::joins_cluster`). Until the gate is installed nothing is appended:
    /// timers wait and commands fail with `Unavailable { NotJoined }`, so no batch bypasses
    /// the journal topic.
    pub awaits_gate: bool,
}

/// Skipped-snapshot warnings an engine keeps in memory; older ones are only in the log.
pub(crate) const SKIPPED_SNAPSHOTS_KEPT_MAX: usize = 1024;

impl Runtime {
    /// Keeps recovery's warnings about skipped snapshots for [`crate::Engine::skipped_snapshots`].
    pub fn record_skipped(&self, skipped: Vec<SkippedSnapshot>) {
        if skipped.is_empty() {
            return;
        }
        let mut kept = self
            .skipped_snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for skip in skipped {
            if kept.len() == SKIPPED_SNAPSHOTS_KEPT_MAX {
                kept.pop_front();
            }
            kept.push_back(skip);
        }
    }

    pub fn passivate_idle(&self) -> Duration {
        Duration::from_millis(self.config.passivate_idle_ms)
    }
}

/// The shard of an aggregate: FNV-1a (64-bit) over the type, a 0xFF separator (never in
/// UTF-8) and the id, modulo the shard count. Stable across processes and builds, unlike
/// Rust's randomized `DefaultHasher`.
pub fn shard_for(aggregate_type: &str, aggregate_id: &str, shards: usize) -> usize {
    assert!(shards > 0, "at least one shard");
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in aggregate_type
        .as_bytes()
        .iter()
        .chain(&[0xFF])
        .chain(aggregate_id.as_bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(PRIME);
    }
    (h % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_hash_is_stable_and_spreads() {
        // Pinned values: changing the hash would move aggregates between shards.
        assert_eq!(
            shard_for("ProductStock", "sku-1", 1024),
            shard_for("ProductStock", "sku-1", 1024)
        );
        assert_eq!(shard_for("ProductStock", "sku-1", 8), 2); // FNV-1a computed independently
        assert_eq!(shard_for("Order", "o-42", 8), 2);
        let mut counts = [0usize; 8];
        for i in 0..8000 {
            counts[shard_for("ProductStock", &format!("sku-{i}"), 8)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "uneven spread: {counts:?}");
    }
}
