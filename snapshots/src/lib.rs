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
//! A record larger than one journal value is stored in parts ([`Manifest`]): the journal keeps
//! a manifest (format [`SNAPSHOT_FORMAT_PARTS`]) under the snapshot's key and the record's
//! bytes, cut into pieces, under part keys, all in one atomic batch; reading assembles the
//! record again, and a record whose parts do not assemble is handed on as its manifest, which
//! [`SnapshotRecord::decode`] refuses with [`SnapshotError::Incomplete`].
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
/// A snapshot stored in parts: the manifest under the snapshot's own key (see [`Manifest`]).
/// Never the format of a whole record, so a record that decodes as this one is a manifest
/// whose parts were not found whole.
pub const SNAPSHOT_FORMAT_PARTS: u8 = 3;
const HEADER_BYTES: usize = 17;

/// The largest snapshot record stored, in bytes, whatever its parts: recovery holds a whole
/// record in memory (and a sealed one twice, while it is opened), and a state this large
/// takes longer to decode than a few thousand events take to replay. Larger ones are not
/// written (`StorageError::SnapshotTooLarge`); recovery replays from an older one instead.
pub const SNAPSHOT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The manifest of a snapshot record stored in parts (integers little-endian):
///
/// ```text
/// [0]      SNAPSHOT_FORMAT_PARTS = 3
/// [1..5]   CRC32C of bytes [5..13]
/// [5..9]   record bytes: the length of the whole record, u32 LE
/// [9..11]  part count n, u16 LE (2..=Manifest::PARTS_MAX)
/// [11..13] reserved, 0
/// ```
///
/// Part `i` (1..=n) holds the record's bytes from `(i - 1) * part_bytes` on, every part but
/// the last exactly `part_bytes` long, where `part_bytes = ceil(record bytes / n)`. The
/// assembled record is a whole record (format 1, or sealed format 2) with its own CRC or
/// authentication tag, which checks the parts' contents; the manifest checks that they are
/// all there, in order, of the right length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub record_bytes: u32,
    pub parts: u16,
}

impl Manifest {
    /// A manifest's length.
    pub const BYTES: usize = 13;
    /// The most parts a record is cut into: enough for [`SNAPSHOT_BYTES_MAX`] in parts of 64
    /// KiB, below any journal value bound it is used with.
    pub const PARTS_MAX: u16 = (SNAPSHOT_BYTES_MAX / (64 * 1024)) as u16;

    /// How a record of `record_bytes` is cut into parts of at most `part_bytes_max`; `None`
    /// when it fits one value (store it whole) or exceeds [`SNAPSHOT_BYTES_MAX`].
    pub fn for_record(record_bytes: usize, part_bytes_max: usize) -> Option<Manifest> {
        if record_bytes <= part_bytes_max || record_bytes > SNAPSHOT_BYTES_MAX {
            return None;
        }
        let parts = record_bytes.div_ceil(part_bytes_max);
        Some(Manifest {
            record_bytes: u32::try_from(record_bytes).ok()?,
            parts: u16::try_from(parts)
                .ok()
                .filter(|&p| p <= Self::PARTS_MAX)?,
        })
    }

    /// Every part's length but the last one's.
    pub fn part_bytes(&self) -> usize {
        (self.record_bytes as usize).div_ceil(self.parts as usize)
    }

    /// The record's bytes of part `i` (1-based).
    pub fn part<'a>(&self, record: &'a [u8], i: u16) -> &'a [u8] {
        let size = self.part_bytes();
        let start = (usize::from(i) - 1) * size;
        &record[start..(start + size).min(record.len())]
    }

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[0] = SNAPSHOT_FORMAT_PARTS;
        out[5..9].copy_from_slice(&self.record_bytes.to_le_bytes());
        out[9..11].copy_from_slice(&self.parts.to_le_bytes());
        let crc = crc32c::crc32c(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The manifest in `bytes`, or `None` when they are not one (another format, damaged).
    pub fn decode(bytes: &[u8]) -> Option<Manifest> {
        let bytes: &[u8; Self::BYTES] = bytes.try_into().ok()?;
        let crc = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes"));
        if bytes[0] != SNAPSHOT_FORMAT_PARTS || crc != crc32c::crc32c(&bytes[5..]) {
            return None;
        }
        let manifest = Manifest {
            record_bytes: u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")),
            parts: u16::from_le_bytes(bytes[9..11].try_into().expect("2 bytes")),
        };
        let sane = (2..=Self::PARTS_MAX).contains(&manifest.parts)
            && bytes[11..13] == [0, 0]
            && manifest.record_bytes as usize <= SNAPSHOT_BYTES_MAX
            && manifest.record_bytes as usize >= manifest.parts as usize;
        sane.then_some(manifest)
    }

    /// Assembles the record from its parts (in part order, as `(part number, bytes)`), or
    /// `None` when one is missing, extra, out of order or of the wrong length.
    pub fn assemble<'a>(
        &self,
        parts: impl IntoIterator<Item = (u16, &'a [u8])>,
    ) -> Option<Vec<u8>> {
        let mut record = Vec::with_capacity(self.record_bytes as usize);
        let size = self.part_bytes();
        let mut next = 1u16;
        for (i, bytes) in parts {
            let expected = size.min(self.record_bytes as usize - record.len());
            if i != next || i > self.parts || bytes.len() != expected {
                return None;
            }
            record.extend_from_slice(bytes);
            next += 1;
        }
        (next == self.parts + 1 && record.len() == self.record_bytes as usize).then_some(record)
    }
}

/// "Every N events, keep the newest K".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot each time an aggregate's version crosses a multiple of this.
    /// 0 disables snapshots.
    pub every_events: u64,
    /// Snapshots kept per aggregate; older ones are pruned. At least 1 (a 0 is taken as 1).
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
    /// A snapshot stored in parts whose parts were not found whole (missing, extra, or of
    /// the wrong length; or its manifest is damaged).
    #[error("snapshot stored in parts is incomplete (a part is missing, extra or damaged)")]
    Incomplete,
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
        let (schema_version, sequence, state) = Self::check(bytes)?;
        Ok(SnapshotRecord {
            schema_version,
            sequence,
            state: state.to_vec(),
        })
    }

    /// The checks of [`SnapshotRecord::decode`] (length, format, CRC), and the record's
    /// schema version, sequence and state bytes, borrowed.
    fn check(bytes: &[u8]) -> Result<(u32, u64, &[u8]), SnapshotError> {
        // A manifest (shorter than a record) in place of a record: its parts did not
        // assemble.
        if bytes.first() == Some(&SNAPSHOT_FORMAT_PARTS) {
            return Err(SnapshotError::Incomplete);
        }
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
        Ok((
            u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")),
            u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes")),
            &bytes[HEADER_BYTES..],
        ))
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

/// Checks one stored snapshot (`key_sequence` from its key) for use in recovery: the checks
/// of [`SnapshotRecord::decode`], its place, the journal's head, the schema version, then
/// the state decoded straight from `bytes` (no copy of the state's bytes first).
pub fn load<S: DeserializeOwned>(
    key_sequence: u64,
    bytes: &[u8],
    current_schema: u32,
    journal_head: u64,
) -> Result<(u64, S), SnapshotError> {
    let (schema_version, sequence, state) = SnapshotRecord::check(bytes)?;
    if sequence != key_sequence {
        return Err(SnapshotError::Misplaced {
            key: key_sequence,
            record: sequence,
        });
    }
    if sequence > journal_head {
        return Err(SnapshotError::BeyondHead {
            sequence,
            head: journal_head,
        });
    }
    if schema_version != current_schema {
        return Err(SnapshotError::SchemaVersion {
            found: schema_version,
            current: current_schema,
        });
    }
    Ok((sequence, codec::decode(state)?))
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

    /// A record cut into parts by its manifest assembles to the same bytes; a missing,
    /// extra, reordered or resized part, or a damaged manifest, does not assemble; a manifest
    /// handed on in place of its record is refused as `Incomplete`.
    #[test]
    fn parts_assemble_exactly_and_refuse_any_other_set() {
        let record = SnapshotRecord::encode_state(2, 7, &vec![0xabu8; 1000]);
        assert_eq!(Manifest::for_record(record.len(), record.len()), None);
        assert_eq!(
            Manifest::for_record(SNAPSHOT_BYTES_MAX + 1, 64 * 1024),
            None
        );
        let manifest = Manifest::for_record(record.len(), 300).expect("cut into parts");
        assert_eq!(manifest.parts, 4);
        assert_eq!(Manifest::decode(&manifest.encode()), Some(manifest));
        let parts: Vec<(u16, &[u8])> = (1..=manifest.parts)
            .map(|i| (i, manifest.part(&record, i)))
            .collect();
        assert!(parts.iter().all(|(_, p)| p.len() <= 300));
        assert_eq!(
            manifest.assemble(parts.clone()).as_deref(),
            Some(&record[..])
        );
        let missing: Vec<_> = parts.iter().copied().filter(|(i, _)| *i != 2).collect();
        assert_eq!(manifest.assemble(missing), None);
        assert_eq!(manifest.assemble(parts[..3].iter().copied()), None);
        let mut swapped = parts.clone();
        swapped.swap(0, 1);
        assert_eq!(manifest.assemble(swapped), None);
        let mut extra = parts.clone();
        extra.push((5, &record[..1]));
        assert_eq!(manifest.assemble(extra), None);
        let mut short = parts.clone();
        short[3].1 = &short[3].1[1..];
        assert_eq!(manifest.assemble(short), None);
        for byte in 0..Manifest::BYTES {
            let mut damaged = manifest.encode();
            damaged[byte] ^= 0x10;
            assert_eq!(Manifest::decode(&damaged), None, "byte {byte}");
        }
        assert_eq!(
            SnapshotRecord::decode(&manifest.encode()),
            Err(SnapshotError::Incomplete)
        );
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
