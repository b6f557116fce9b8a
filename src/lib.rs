//! evershard: an embedded, event-sourced aggregate store with actor sharding.
//!
//! This facade re-exports the public surface of the workspace crates:
//! - [`Engine`] and its builder, [`Durability`], [`SnapshotPolicy`], the errors;
//! - [`model`]: the aggregate model (traits, envelope, codec, money, given/when/then);
//! - [`engine`]: the engine crate's public surface (journal reads, repository, snapshots);
//! - [`aggregates`]: the seven domain aggregates and the `OrderSaga` process manager;
//! - [`sagas`]: the order saga's runner on an engine, and the flow's invariant check;

pub use evershard_aggregates as aggregates;
pub use evershard_engine as engine;
pub use evershard_engine::{
    AppendError, CheckpointError, CheckpointInfo, Clock, CommandError, CommandGuard, Durability,
    Engine, EngineBuilder, EngineError, Error, LoadError, ManualClock, OpenError, Result,
    SnapshotPolicy, StorageError, StreamId, SystemClock,
};
/// Topics, consumers, subscriptions and the dead-letter topic.
pub use evershard_engine::{
    Consumer, ConsumerOptions, DeadLetter, DeadLetterReason, Handler, HandlerError, Health,
    Message, PublisherHealth, RetryPolicy, StartFrom, Subscription, SubscriptionOptions,
    TopicConfig, TopicError, TopicLog, TopicRoute, WireFormat, DLQ_TOPIC,
};
pub use evershard_model as model;
/// The sagas on the engine: the order/stock/payment saga and its invariant check.
pub use evershard_sagas as sagas;
pub use evershard_snapshots as snapshots;

/// The README's code example is compiled as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/saga.md's "how to write another saga" example is compiled as a doctest too.
#[cfg(doctest)]
#[doc = include_str!("../docs/saga.md")]
pub struct SagaDocDoctests;
