//! The CLI's errors and the exit codes they map to.
//!
//! Exit codes: 0 — the command ran and found nothing wrong; 1 — the store (or a check of it)
//! is bad: verification problems, a failed recovery check, damaged records met while reading;
//! 2 — the command could not run as asked: the store is missing or in use, an unknown type,
//! an aggregate that does not exist, an argument out of range (clap's own usage errors exit 2
//! as well).

use evershard_engine::{EngineError, LoadError, OpenError, StorageError, TopicError};
use std::path::PathBuf;

/// Why a command failed. Every variant prints as one plain sentence (no debug dumps).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error(
        "the store at {} is in use by another evershard process (an engine, or another command \
         reading it: sled 0.34 lets one process open a store at a time); retry when it ends",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error("no evershard store at {} (no sled database there)", dir.display())]
    NotFound { dir: PathBuf },
    /// The directory holds something else; nothing there was opened or changed.
    #[error(
        "{} is not an evershard store (it holds {found}); nothing there was opened or changed",
        dir.display()
    )]
    NotAStore { dir: PathBuf, found: String },
    #[error("unknown aggregate type {name:?}; known types: {}", known.join(", "))]
    UnknownType {
        name: String,
        known: Vec<&'static str>,
    },
    #[error("no aggregate {aggregate_type}/{} in the store at {}", shown(aggregate_id), dir.display())]
    NoSuchAggregate {
        aggregate_type: String,
        aggregate_id: String,
        dir: PathBuf,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A record or snapshot that fails its checks, met while reading (not while verifying,
    /// where it becomes a report line).
    #[error("the store is damaged: {0}")]
    Damaged(StorageError),
    /// A state loaded from the store breaks one of its aggregate's invariants.
    #[error("the store holds a broken aggregate: {0}")]
    BrokenInvariant(LoadError),
    /// The store cannot be written (a read-only mount, another user's files): sled 0.34
    /// opens its files read-write even to read, so no command can read it in place.
    #[error(
        "the store at {} cannot be opened for reading without write access ({cause}): sled 0.34 \
         opens its files read-write even to read; copy the store to a writable place and point \
         --data there",
        dir.display()
    )]
    NeedsWriteAccess { dir: PathBuf, cause: String },
    /// sled's settings file or snapshot file is damaged; the message says what to do.
    #[error("{0}")]
    DamagedConf(OpenError),
    /// Payloads are encrypted and no key (or the wrong one) was given: `--key-file`.
    #[error("{0} (pass the master key file with --key-file)")]
    NeedsKey(StorageError),
    /// The aggregate's data subject was forgotten: its payloads are erased for good.
    #[error("{0}")]
    Erased(StorageError),
    #[error("storage error: {0}")]
    Storage(StorageError),
    #[error("engine error: {0}")]
    Engine(EngineError),
    #[error("no topic {topic} in the store at {}", dir.display())]
    NoSuchTopic { topic: String, dir: PathBuf },
    #[error("topic error: {0}")]
    Topic(TopicError),
    #[error("could not render {what} as JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("could not write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("could not start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the demo stopped: {0}")]
    Demo(String),
    /// A proof cannot be given: the store no longer matches the digest.
    #[error("no valid proof: {0}")]
    ProofRefused(String),
    /// A panic caught around a storage call (a damaged store can make sled panic).
    #[error("internal error while {what}: {message}")]
    Panicked { what: String, message: String },
}

/// How many bytes of a caller's text (an aggregate id) a message echoes.
pub const ECHOED_BYTES_MAX: usize = 64;

/// `text` for a message: whole when short, else its first [`ECHOED_BYTES_MAX`] bytes (cut at
/// a character boundary) and its length, so a 70,000-byte id is not echoed whole.
pub fn shown(text: &str) -> String {
    if text.len() <= ECHOED_BYTES_MAX {
        return text.to_owned();
    }
    let mut end = ECHOED_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

impl CliError {
    /// The process exit code for this error; see the module documentation.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Locked { .. }
            | CliError::NotFound { .. }
            | CliError::NotAStore { .. }
            | CliError::NeedsWriteAccess { .. }
            | CliError::UnknownType { .. }
            | CliError::NoSuchAggregate { .. }
            | CliError::NoSuchTopic { .. }
            | CliError::NeedsKey(_)
            | CliError::Erased(_)
            | CliError::InvalidArgument(_) => 2,
            CliError::Damaged(_)
            | CliError::DamagedConf(_)
            | CliError::BrokenInvariant(_)
            | CliError::Storage(_)
            | CliError::Engine(_)
            | CliError::Topic(_)
            | CliError::Json { .. }
            | CliError::Output(_)
            | CliError::Runtime(_)
            | CliError::Demo(_)
            | CliError::ProofRefused(_)
            | CliError::Panicked { .. } => 1,
        }
    }

    /// Maps a storage error met on the store at `dir` to the CLI's vocabulary.
    pub fn storage(_dir: &std::path::Path, err: StorageError) -> CliError {
        match err {
            corrupt @ StorageError::Corrupt { .. } => CliError::Damaged(corrupt),
            key @ StorageError::Key { .. } => CliError::NeedsKey(key),
            erased @ StorageError::Erased { .. } => CliError::Erased(erased),
            other => CliError::Storage(other),
        }
    }

    /// Maps an error of opening the store at `dir`.
    pub fn open(dir: &std::path::Path, err: OpenError) -> CliError {
        match err {
            OpenError::Locked { .. } => CliError::Locked {
                dir: dir.to_path_buf(),
            },
            OpenError::NotFound { .. } => CliError::NotFound {
                dir: dir.to_path_buf(),
            },
            OpenError::NotAStore { found, .. } => CliError::NotAStore {
                dir: dir.to_path_buf(),
                found,
            },
            damaged @ (OpenError::DamagedConf { .. } | OpenError::DamagedSnapshotFile { .. }) => {
                CliError::DamagedConf(damaged)
            }
            OpenError::Storage { source, .. } => match *source {
                StorageError::Io(io)
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::ReadOnlyFilesystem
                            | std::io::ErrorKind::PermissionDenied
                    ) =>
                {
                    CliError::NeedsWriteAccess {
                        dir: dir.to_path_buf(),
                        cause: io.to_string(),
                    }
                }
                other => CliError::storage(dir, other),
            },
            other => CliError::Storage(StorageError::Io(std::sync::Arc::new(
                std::io::Error::other(other.to_string()),
            ))),
        }
    }

    /// Maps an error of loading a state from the store at `dir`.
    pub fn load(dir: &std::path::Path, err: LoadError) -> CliError {
        match err {
            LoadError::Storage(s) => CliError::storage(dir, s),
            other => CliError::BrokenInvariant(other),
        }
    }

    /// Maps a topic error met on the store at `dir`.
    pub fn topic(dir: &std::path::Path, err: TopicError) -> CliError {
        match err {
            TopicError::UnknownTopic { topic } => CliError::NoSuchTopic {
                topic,
                dir: dir.to_path_buf(),
            },
            TopicError::UnknownPartition { topic, partition } => {
                CliError::InvalidArgument(format!("topic {topic} has no partition {partition}"))
            }
            TopicError::Storage(s) => CliError::storage(dir, s),
            other => CliError::Topic(other),
        }
    }

    /// Maps an engine error met on the store at `dir`.
    pub fn engine(dir: &std::path::Path, err: EngineError) -> CliError {
        match err {
            EngineError::Open(o) => CliError::open(dir, o),
            EngineError::Storage(s) => CliError::storage(dir, s),
            other => CliError::Engine(other),
        }
    }
}
