//! Snapshots: the policy that decides when to take one, the byte format they are stored in,
//! and the choice of the snapshot recovery starts from.
//!
//! A snapshot is an optimisation, never a source of truth: recovery uses the newest snapshot
//! that decodes, carries the current state schema version and does not lie beyond the
//! journal's head, and otherwise falls back to an older one or to a full replay. Storage of
//! the bytes belongs to the journal (the only sled user) and the writer thread to the engine's
//! `snapshots` module; this crate is pure.
//!
//! Record format (integers little-endian):
//! ```text
//! [0]      format version (SNAPSHOT_FORMAT_V1)
//! [1..5]   CRC32C of bytes [5..]
//! [5..9]   state schema version (u32)
//! [9..17]  sequence of the last event folded into the state (u64)
//! [17..]   the state, evershard_model::codec bytes (codec::encode_compact: format 1)
//! ```
//!
//! The state is written in the codec's compact, positional format 1 rather than the named
//! format 2 the journal uses: a snapshot must be exactly the fold of its events, so a state
//! whose shape changed should stop decoding (and be replayed) rather than load with defaults
//! for fields it never had; the state schema version says the same explicitly. Format 1 is
//! also smaller and faster (docs/design.md, "Payload codec").

use evershard_model::codec;
use serde::{de::DeserializeOwned, Serialize};

pub const SNAPSHOT_FORMAT_V1: u8 = 1;
/// A snapshot encrypted at rest (docs/security.md): `[0] = 2`, then the data key id (16
/// bytes), a nonce and the ciphertext + tag of a whole format-1 record in the data key's
/// algorithm (AES-256-GCM, 12-byte nonce; XChaCha20-Poly1305, 24-byte nonce, for keys made
/// before it), sealed with the stream and sequence as associated data. The engine opens it before
/// [`select`]; this crate only names it.
pub const SNAPSHOT_FORMAT_SEALED: u8 = 2;
const HEADER_BYTES: usize = 17;

/// "Every N events, keep the newest K".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot each time an aggregate's version crosses a multiple of this.
    /// 0 disables snapshots.
    pub every_events: u64,
    /// Snapshots kept per aggregate; older ones are pruned.
    pub keep: usize,
}

impl Default for SnapshotPolicy {
    /// Every 100 events, keep 2 (functional-architecture-ddd.md 10.1).
    fn default() -> Self {
        Self {
            every_events: 100,
            keep: 2,
        }
    }
}

impl SnapshotPolicy {
    pub fn every(every_events: u64) -> Self {
        Self {
            every_events,
            ..Self::default()
        }
    }
    pub fn keep(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }
    pub fn disabled() -> Self {
        Self {
            every_events: 0,
            keep: 1,
        }
    }
    /// True when a command that moved the version from `before` to `after` crossed a
    /// multiple of `every_events`.
    pub fn is_due(&self, before: u64, after: u64) -> bool {
        self.every_events > 0 && after / self.every_events > before / self.every_events
    }
}

/// A decoded snapshot record (state still encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub schema_version: u32,
    pub sequence: u64,
    pub state: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot record too short ({0} bytes)")]
    Truncated(usize),
    #[error("unknown snapshot format {0}")]
    UnknownFormat(u8),
    /// The snapshot is encrypted and was not opened: its data key is erased, or no key
    /// provider is configured. Recovery replays the events instead.
    #[error(
        "snapshot is encrypted and could not be opened (no key, or its subject was forgotten)"
    )]
    Sealed,
    #[error("snapshot CRC32C mismatch")]
    Checksum,
    #[error("snapshot schema version {found}, current is {current}")]
    SchemaVersion { found: u32, current: u32 },
    #[error("snapshot at sequence {sequence} lies beyond the journal head {head}")]
    BeyondHead { sequence: u64, head: u64 },
    #[error("snapshot key says sequence {key}, record says {record}")]
    Misplaced { key: u64, record: u64 },
    #[error("snapshot state does not decode: {0}")]
    State(#[from] codec::CodecError),
}

impl SnapshotRecord {
    /// Encodes `state` taken at `sequence`.
    pub fn encode_state<S: Serialize>(schema_version: u32, sequence: u64, state: &S) -> Vec<u8> {
        SnapshotRecord {
            schema_version,
            sequence,
            state: codec::encode_compact(state),
        }
        .encode()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.state.len());
        out.push(SNAPSHOT_FORMAT_V1);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.state);
        let crc = crc32c::crc32c(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotRecord, SnapshotError> {
        if bytes.len() < HEADER_BYTES {
            return Err(SnapshotError::Truncated(bytes.len()));
        }
        if bytes[0] == SNAPSHOT_FORMAT_SEALED {
            return Err(SnapshotError::Sealed);
        }
        if bytes[0] != SNAPSHOT_FORMAT_V1 {
            return Err(SnapshotError::UnknownFormat(bytes[0]));
        }
        let stored = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes"));
        if stored != crc32c::crc32c(&bytes[5..]) {
            return Err(SnapshotError::Checksum);
        }
        Ok(SnapshotRecord {
            schema_version: u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")),
            sequence: u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes")),
            state: bytes[17..].to_vec(),
        })
    }

    /// Decodes the state after checking the schema version.
    pub fn state<S: DeserializeOwned>(&self, current_schema: u32) -> Result<S, SnapshotError> {
        if self.schema_version != current_schema {
            return Err(SnapshotError::SchemaVersion {
                found: self.schema_version,
                current: current_schema,
            });
        }
        Ok(codec::decode(&self.state)?)
    }
}

/// Checks one stored snapshot (`key_sequence` from its key) for use in recovery.
pub fn load<S: DeserializeOwned>(
    key_sequence: u64,
    bytes: &[u8],
    current_schema: u32,
    journal_head: u64,
) -> Result<(u64, S), SnapshotError> {
    let record = SnapshotRecord::decode(bytes)?;
    if record.sequence != key_sequence {
        return Err(SnapshotError::Misplaced {
            key: key_sequence,
            record: record.sequence,
        });
    }
    if record.sequence > journal_head {
        return Err(SnapshotError::BeyondHead {
            sequence: record.sequence,
            head: journal_head,
        });
    }
    Ok((record.sequence, record.state(current_schema)?))
}

/// What [`select`] found: the snapshot recovery starts from, and why each newer one was
/// skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection<S> {
    /// The newest usable snapshot as (sequence, state); `None`: replay from the first event.
    pub chosen: Option<(u64, S)>,
    /// Every candidate newer than the chosen one (all of them when none was chosen), newest
    /// first, as (sequence from its key, why it is unusable).
    pub skipped: Vec<(u64, SnapshotError)>,
}

/// Picks the newest usable snapshot from `candidates` (newest first, as (sequence from the
/// key, bytes)) and says why each newer one is unusable: damaged (truncated, unknown format,
/// CRC), misplaced (stored under another sequence), beyond the journal's head, of another
/// schema version, or a state that does not decode — the checks of [`load`], in that order.
pub fn select<S: DeserializeOwned>(
    candidates: &[(u64, Vec<u8>)],
    current_schema: u32,
    journal_head: u64,
) -> Selection<S> {
    let mut skipped = Vec::new();
    for (seq, bytes) in candidates {
        match load(*seq, bytes, current_schema, journal_head) {
            Ok(found) => {
                return Selection {
                    chosen: Some(found),
                    skipped,
                }
            }
            Err(reason) => skipped.push((*seq, reason)),
        }
    }
    Selection {
        chosen: None,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_fires_when_a_multiple_is_crossed() {
        let p = SnapshotPolicy::default();
        assert!(!p.is_due(0, 99));
        assert!(p.is_due(99, 100));
        assert!(p.is_due(98, 103));
        assert!(!p.is_due(100, 199));
        assert!(!SnapshotPolicy::disabled().is_due(0, 1000));
    }

    #[test]
    fn select_skips_damaged_old_schema_and_beyond_head() {
        let good = SnapshotRecord::encode_state(2, 100, &vec![1u32, 2, 3]);
        let mut damaged = SnapshotRecord::encode_state(2, 300, &vec![9u32]);
        *damaged.last_mut().unwrap() ^= 1;
        let old_schema = SnapshotRecord::encode_state(1, 200, &vec![7u32]);
        let beyond = SnapshotRecord::encode_state(2, 400, &vec![8u32]);
        let candidates = vec![
            (400, beyond),
            (300, damaged),
            (200, old_schema),
            (100, good),
        ];
        let picked = select::<Vec<u32>>(&candidates, 2, 350);
        assert_eq!(picked.chosen, Some((100, vec![1, 2, 3])));
        let reasons: Vec<_> = picked
            .skipped
            .iter()
            .map(|(seq, r)| (*seq, r.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    400,
                    SnapshotError::BeyondHead {
                        sequence: 400,
                        head: 350
                    }
                ),
                (300, SnapshotError::Checksum),
                (
                    200,
                    SnapshotError::SchemaVersion {
                        found: 1,
                        current: 2
                    }
                ),
            ]
        );
        let none = select::<Vec<u32>>(&candidates[..3], 2, 350);
        assert_eq!((none.chosen, none.skipped.len()), (None, 3));
        // A snapshot stored under the wrong key is refused too.
        let moved = SnapshotRecord::encode_state(2, 100, &vec![1u32]);
        assert!(matches!(
            load::<Vec<u32>>(101, &moved, 2, 500),
            Err(SnapshotError::Misplaced { .. })
        ));
    }
}
