//! evershard's engine: the sled journal with group commit ([`journal`]), snapshots, and
//! aggregates as sharded ractor actors ([`sharding`]) behind one entry type, [`Engine`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # struct ProductStock;
//! use evershard_engine::{Durability, Engine};
//! # /*
//! let engine = Engine::builder("./data")
//!     .register::<ProductStock>()
//!     .durability(Durability::Durable)
//!     .open()
//!     .await?;
//! let events = engine.execute::<ProductStock>("sku-1", command).await?;
//! engine.shutdown().await?;
//! # */
//! # Ok(()) }
//! ```

mod engine;
pub mod error;
pub mod journal;
pub mod repository;
pub mod sharding;

pub use engine::{Engine, EngineBuilder};
pub use error::{AppendError, CommandError, EngineError, StorageError};
pub use evershard_model as model;
pub use evershard_model::CommandGuard;
pub use evershard_model::{Clock, ManualClock, SystemClock};
pub use evershard_snapshots::SnapshotPolicy;
pub use journal::{Durability, Journal, JournalConfig, StreamId};
pub use sharding::{shard_for, ShardingConfig};
