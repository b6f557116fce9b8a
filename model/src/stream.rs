//! The identity of one aggregate instance's event stream, and the limits the store puts on it.

/// Longest aggregate type name, in bytes (its length is one byte in every key).
pub const AGGREGATE_TYPE_BYTES_MAX: usize = u8::MAX as usize;
/// Longest aggregate id, in bytes.
pub const AGGREGATE_ID_BYTES_MAX: usize = 1024;

/// One aggregate instance's event stream: its type and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

/// Why a [`StreamId`] cannot be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamIdError {
    #[error("aggregate type must be 1..={AGGREGATE_TYPE_BYTES_MAX} bytes, got {bytes}")]
    TypeLength { bytes: usize },
    #[error("aggregate id must be 1..={AGGREGATE_ID_BYTES_MAX} bytes, got {bytes}")]
    IdLength { bytes: usize },
}

impl StreamId {
    pub fn new(aggregate_type: impl Into<String>, aggregate_id: impl Into<String>) -> Self {
        Self {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }

    /// Checks the limits the key layout imposes.
    pub fn validate(&self) -> Result<(), StreamIdError> {
        Self::validate_parts(&self.aggregate_type, &self.aggregate_id)
    }

    /// [`StreamId::validate`] of the stream `(aggregate_type, aggregate_id)`, without building
    /// it (the command path checks every command's id and needs the owned form only for an
    /// error).
    pub fn validate_parts(aggregate_type: &str, aggregate_id: &str) -> Result<(), StreamIdError> {
        let type_bytes = aggregate_type.len();
        if type_bytes == 0 || type_bytes > AGGREGATE_TYPE_BYTES_MAX {
            return Err(StreamIdError::TypeLength { bytes: type_bytes });
        }
        let id_bytes = aggregate_id.len();
        if id_bytes == 0 || id_bytes > AGGREGATE_ID_BYTES_MAX {
            return Err(StreamIdError::IdLength { bytes: id_bytes });
        }
        Ok(())
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}
