//! Errors by layer, as cqrs-es and redb draw them: a domain rejection (the caller's command
//! is wrong: don't retry), a conflict or overload (retry), and a storage fault (log, alert;
//! the journal may be poisoned).

use std::path::PathBuf;
use std::sync::Arc;

/// A fault of the storage layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    #[error("sled error: {0}")]
    Sled(String),
    #[error("corrupt data{}{}: {reason}", stream.as_ref().map(|s| format!(" in {s}")).unwrap_or_default(), sequence.map(|q| format!(" at sequence {q}")).unwrap_or_default())]
    Corrupt {
        stream: Option<String>,
        sequence: Option<u64>,
        reason: String,
    },
    #[error("the store at {} is locked by another process (is an engine running on it?)", dir.display())]
    Locked { dir: PathBuf },
    #[error("no evershard store at {}", dir.display())]
    NotFound { dir: PathBuf },
    #[error(
        "the journal refuses writes after an earlier write or flush failure; reopen the store"
    )]
    Poisoned,
    #[error("the journal is closed")]
    Closed,
    #[error("the journal was opened read-only")]
    ReadOnly,
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(Arc::new(e))
    }
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StorageError::Io(Arc::new(io)),
            sled::Error::Corruption { at, .. } => StorageError::Corrupt {
                stream: None,
                sequence: None,
                reason: format!("sled reports corruption at {at:?}"),
            },
            other => StorageError::Sled(other.to_string()),
        }
    }
}

/// Why an append was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The stream moved since the caller read it. Retry after reloading.
    #[error("version conflict on {stream}: expected version {expected}, stream is at {actual}")]
    Conflict {
        stream: String,
        expected: u64,
        actual: u64,
    },
    #[error("invalid append: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a command was not executed. `E` is the aggregate's domain error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error> {
    /// The domain refused the command; nothing was written. Do not retry unchanged.
    #[error("rejected: {0}")]
    Rejected(E),
    /// Another writer appended to the same stream first. Retry.
    #[error("version conflict: expected version {expected}, stream is at {actual}")]
    Conflict { expected: u64, actual: u64 },
    /// A mailbox bound was reached; the command was not queued. Retry later.
    #[error("overloaded: {what} holds {limit} commands already")]
    Overloaded { what: &'static str, limit: usize },
    /// The handler panicked; nothing of this command was written. The aggregate recovers
    /// from the journal for its next command.
    #[error("the aggregate's handler panicked: {0}")]
    Panicked(String),
    #[error("invalid command: {0}")]
    Invalid(String),
    #[error("aggregate type {0} is not registered with this engine")]
    NotRegistered(&'static str),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Storage(StorageError),
}

impl<E: std::error::Error> CommandError<E> {
    /// True for errors where the same command may succeed when retried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CommandError::Conflict { .. } | CommandError::Overloaded { .. }
        )
    }

    pub(crate) fn from_append(e: AppendError) -> Self {
        match e {
            AppendError::Conflict {
                expected, actual, ..
            } => CommandError::Conflict { expected, actual },
            AppendError::InvalidRequest(m) => CommandError::Invalid(m),
            AppendError::Storage(s) => CommandError::Storage(s),
        }
    }
}

/// Errors of opening and running an engine (not of one command).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("aggregate type {0} is not registered with this engine")]
    NotRegistered(&'static str),
    #[error("aggregate type {0} is registered twice")]
    DuplicateType(&'static str),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("could not start the actor system: {0}")]
    Actor(String),
    #[error("the aggregate's actor is gone: {0}")]
    ActorGone(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}
