//! evershard: an embedded, event-sourced aggregate store with actor sharding.
//!
//! This facade re-exports the public surface of the workspace crates:
//! - [`model`]: the aggregate model (traits, envelope, codec, money, given/when/then);
//! - [`engine`]: the journal, snapshots and sharded actors behind [`Engine`];
//! - [`aggregates`]: the seven domain aggregates.

pub use evershard_aggregates as aggregates;
pub use evershard_model as model;
pub use evershard_snapshots as snapshots;
