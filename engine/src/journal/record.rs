//! The on-disk event record: fixed header, length-prefixed strings, payload.
//! All integers are little-endian and fixed-width. See docs/design.md for the drawing.
//!
//! ```text
//! off  len  field
//!   0    1  format version (RECORD_FORMAT_V1)
//!   1    4  CRC32C of bytes [5..end]
//!   5    8  sequence
//!  13    8  global position
//!  21    8  timestamp, microseconds since the Unix epoch (i64)
//!  29   16  event_id
//!  45   16  correlation_id
//!  61    1  flags: bit 0 causation_id present, bit 1 user_id present
//!  62   16  causation_id (zeroes when absent)
//!  78   32  SHA-256 of the previous record of the same aggregate (zeroes for sequence 1)
//! 110    …  aggregate_type, aggregate_id, event_type, event_version, source, user_id:
//!           each u16 length + UTF-8 (user_id empty when absent)
//!    …    4  payload length (u32)
//!    …    …  payload (evershard_model::codec bytes)
//! ```
//!
//! Format 2 (written only for events that carry a session or an audit context, so every
//! other record stays byte for byte format 1) adds flag bit 2 (session) and bit 3 (audit
//! context) and, between `user_id` and the payload length:
//!
//! ```text
//!   16  session_id, when bit 2
//!        when bit 3: audit flags u8 (bit 0 ip present, bit 1 user agent present),
//!        ip_address (u16 length + text), user_agent (u16 length + UTF-8),
//!        compliance flag count u16, then each flag as u16 length + UTF-8
//! ```
//!
//! Flag bit 4 (either format) marks a payload **encrypted at rest** (docs/security.md): the
//! payload bytes are then `data key id 16 | nonce 24 | XChaCha20-Poly1305 ciphertext + tag`,
//! sealed with the record's identity (type, id, sequence) as associated data. The CRC, the
//! hash chain and the Merkle leaves cover these stored bytes, so integrity is checked
//! without any key. A binary older than this flag refuses such a record ("unknown flag
//! bits") rather than mistake ciphertext for a payload.

use chrono::{DateTime, TimeZone, Utc};
use evershard_model::AuditContext;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const RECORD_FORMAT_V1: u8 = 1;
/// Format 1 plus a session id and an audit context (see the module docs).
pub const RECORD_FORMAT_V2: u8 = 2;
const FLAG_CAUSATION: u8 = 1;
const FLAG_USER: u8 = 1 << 1;
const FLAG_SESSION: u8 = 1 << 2;
const FLAG_AUDIT: u8 = 1 << 3;
const FLAG_ENCRYPTED: u8 = 1 << 4;
pub const HEADER_BYTES: usize = 110;
/// A payload's size at most (before encryption, which adds
/// [`crate::crypto::SEAL_OVERHEAD_BYTES`]). A record must stay within the journal's value bound
/// (`segments::VALUE_BYTES_MAX`, checked against [`RECORD_BYTES_MAX`] at compile time), which
/// keeps sled from writing it, or a tree node holding it, to a separate `blobs/` file.
/// 64 KiB leaves room for the header and strings.
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Each record string (type, id, event type and version, source, user id) at most.
pub const RECORD_STRING_BYTES_MAX: usize = 8 * 1024;
/// The longest text of an IP address (`IpAddr`'s `Display`: 39 for IPv6, rounded up to
/// `INET6_ADDRSTRLEN` less its NUL).
const IP_TEXT_BYTES_MAX: usize = 45;
/// A record's bytes at most, every field at its limit (format 2 with an audit context and an
/// encrypted payload). A test encodes such a record and compares.
pub const RECORD_BYTES_MAX: usize = {
    // A string: its u16 length, then its bytes.
    const fn string(max: usize) -> usize {
        2 + max
    }
    HEADER_BYTES
        + string(evershard_model::AGGREGATE_TYPE_BYTES_MAX)
        + string(evershard_model::AGGREGATE_ID_BYTES_MAX)
        // event type, event version, source, user id
        + 4 * string(RECORD_STRING_BYTES_MAX)
        // session id
        + 16
        // audit context: presence flags, ip, user agent, flag count, flags
        + 1
        + string(IP_TEXT_BYTES_MAX)
        + string(RECORD_STRING_BYTES_MAX)
        + 2
        + AuditContext::COMPLIANCE_FLAGS_MAX * string(AuditContext::COMPLIANCE_FLAG_BYTES_MAX)
        + 4
        // the payload, sealed (an encrypted payload is the larger)
        + PAYLOAD_BYTES_MAX
        + crate::crypto::SEAL_OVERHEAD_BYTES
};
pub type Hash = [u8; 32];
pub const ZERO_HASH: Hash = [0; 32];

/// How a record's payload is stored, and what `Record::payload` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AtRest {
    /// Stored in plain; `payload` is the codec bytes.
    #[default]
    Plain,
    /// Stored encrypted; `payload` is the sealed bytes (key id, nonce, ciphertext): not
    /// opened, because it was not asked for, no key is at hand, or the subject was forgotten.
    Sealed,
    /// Stored encrypted; `payload` is the opened codec bytes.
    Opened,
}

impl AtRest {
    /// Stored encrypted (sealed or opened).
    pub fn is_encrypted(self) -> bool {
        self != AtRest::Plain
    }
}

/// A decoded event record with its raw payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub sequence: u64,
    pub global_position: u64,
    pub timestamp: DateTime<Utc>,
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub prev_hash: Hash,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub event_version: String,
    pub source: String,
    pub user_id: Option<String>,
    /// Format 2 only.
    pub session_id: Option<Uuid>,
    /// Format 2 only.
    pub audit_context: Option<AuditContext>,
    /// Whether the payload is stored encrypted (flag bit 4) and, if so, whether `payload`
    /// holds the sealed bytes (right after `decode`) or the opened ones (the journal's
    /// reads, see `Journal::read_stream`).
    pub at_rest: AtRest,
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record shorter than its header ({0} bytes)")]
    Truncated(usize),
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

pub use evershard_model::truncate_to_micros;

pub fn hash(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(
        s.len() <= u16::MAX as usize,
        "record string longer than u16::MAX"
    );
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A u16-length-prefixed UTF-8 string at `*cursor`, borrowed, moving the cursor past it.
/// `errors` names what is malformed when the length, the bytes, or the UTF-8 are missing or
/// wrong. The one string reader of `Record::decode` and `RecordView::check`, so the two give
/// the same verdict and reason.
fn str_at<'a>(
    bytes: &'a [u8],
    cursor: &mut usize,
    errors: [&'static str; 3],
) -> Result<&'a str, RecordError> {
    let [length, string, utf8] = errors;
    let at = *cursor;
    let len_bytes = bytes
        .get(at..at + 2)
        .ok_or(RecordError::Malformed(length))?;
    let len = u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize;
    let s = bytes
        .get(at + 2..at + 2 + len)
        .ok_or(RecordError::Malformed(string))?;
    *cursor = at + 2 + len;
    std::str::from_utf8(s).map_err(|_| RecordError::Malformed(utf8))
}

/// The six header strings of a record from `cursor` (each a u16 LE length and its bytes),
/// with the verdict of [`str_at`] on each. One UTF-8 check of the whole span they take,
/// length prefixes included, when it passes and every string starts and ends on a character
/// boundary of it (every record whose strings are shorter than 128 bytes and valid): a
/// substring on boundaries of valid UTF-8 is valid UTF-8, so the verdict is the same. Six
/// checks of short strings were a sixth of the instructions of a full replay (callgrind,
/// 2026-11-28). Otherwise the strings are checked one by one, which names the failure.
fn header_strings<'a>(bytes: &'a [u8], cursor: &mut usize) -> Result<[&'a str; 6], RecordError> {
    let start = *cursor;
    let mut at = start;
    let mut bounds = [(0usize, 0usize); 6];
    let mut whole = true;
    for bound in &mut bounds {
        let Some(len_bytes) = bytes.get(at..at + 2) else {
            whole = false;
            break;
        };
        let from = at + 2;
        let to = from + u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize;
        if to > bytes.len() {
            whole = false;
            break;
        }
        *bound = (from - start, to - start);
        at = to;
    }
    if whole {
        if let Ok(span) = std::str::from_utf8(&bytes[start..at]) {
            let mut strings = [""; 6];
            let all =
                strings
                    .iter_mut()
                    .zip(bounds)
                    .all(|(slot, (from, to))| match span.get(from..to) {
                        Some(s) => {
                            *slot = s;
                            true
                        }
                        None => false,
                    });
            if all {
                *cursor = at;
                return Ok(strings);
            }
        }
    }
    let mut strings = [""; 6];
    for slot in &mut strings {
        *slot = str_at(bytes, cursor, HEADER_STRING_ERRORS)?;
    }
    Ok(strings)
}

/// The six header strings' error names.
const HEADER_STRING_ERRORS: [&str; 3] = ["string length", "string", "string not UTF-8"];

/// A string of the audit context, owned; every failure is named `what`.
fn read_str(bytes: &[u8], cursor: &mut usize, what: &'static str) -> Result<String, RecordError> {
    str_at(bytes, cursor, [what; 3]).map(str::to_owned)
}

/// The payload at `cursor`: its u32 length, then exactly the rest of the record.
fn payload_at(bytes: &[u8], cursor: usize) -> Result<&[u8], RecordError> {
    let len_bytes = bytes
        .get(cursor..cursor + 4)
        .ok_or(RecordError::Malformed("payload length"))?;
    let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
    let payload = bytes
        .get(cursor + 4..)
        .ok_or(RecordError::Malformed("payload"))?;
    if payload.len() != len {
        return Err(RecordError::Malformed(
            "payload length does not match record length",
        ));
    }
    Ok(payload)
}

impl Record {
    /// The format this record is written in: 2 when it carries a session or an audit
    /// context, else 1.
    pub fn format(&self) -> u8 {
        if self.session_id.is_some() || self.audit_context.is_some() {
            RECORD_FORMAT_V2
        } else {
            RECORD_FORMAT_V1
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(self.sequence >= 1, "sequences start at 1");
        assert!(self.payload.len() <= PAYLOAD_BYTES_MAX + crate::crypto::SEAL_OVERHEAD_BYTES);
        assert!(
            self.at_rest != AtRest::Opened,
            "an opened payload is never stored: seal it first"
        );
        let mut out = Vec::with_capacity(HEADER_BYTES + 64 + self.payload.len());
        out.push(self.format());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.global_position.to_le_bytes());
        out.extend_from_slice(&self.timestamp.timestamp_micros().to_le_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        out.extend_from_slice(self.correlation_id.as_bytes());
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        let flags = flag(self.causation_id.is_some(), FLAG_CAUSATION)
            | flag(self.user_id.is_some(), FLAG_USER)
            | flag(self.session_id.is_some(), FLAG_SESSION)
            | flag(self.audit_context.is_some(), FLAG_AUDIT)
            | flag(self.at_rest.is_encrypted(), FLAG_ENCRYPTED);
        out.push(flags);
        out.extend_from_slice(self.causation_id.unwrap_or(Uuid::nil()).as_bytes());
        out.extend_from_slice(&self.prev_hash);
        debug_assert_eq!(out.len(), HEADER_BYTES);
        put_str(&mut out, &self.aggregate_type);
        put_str(&mut out, &self.aggregate_id);
        put_str(&mut out, &self.event_type);
        put_str(&mut out, &self.event_version);
        put_str(&mut out, &self.source);
        put_str(&mut out, self.user_id.as_deref().unwrap_or(""));
        if let Some(session) = &self.session_id {
            out.extend_from_slice(session.as_bytes());
        }
        if let Some(audit) = &self.audit_context {
            let present = flag(audit.ip_address.is_some(), 1) | flag(audit.user_agent.is_some(), 2);
            out.push(present);
            let ip = audit
                .ip_address
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            put_str(&mut out, &ip);
            put_str(&mut out, audit.user_agent.as_deref().unwrap_or(""));
            assert!(audit.compliance_flags.len() <= AuditContext::COMPLIANCE_FLAGS_MAX);
            out.extend_from_slice(&(audit.compliance_flags.len() as u16).to_le_bytes());
            for f in &audit.compliance_flags {
                put_str(&mut out, f);
            }
        }
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32c::crc32c(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_le_bytes());
        // Pair the write with a read: what we store must decode to what we meant.
        debug_assert_eq!(Record::decode(&out).as_ref(), Ok(self));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() < HEADER_BYTES + 6 * 2 + 4 {
            return Err(RecordError::Truncated(bytes.len()));
        }
        let format = bytes[0];
        if format != RECORD_FORMAT_V1 && format != RECORD_FORMAT_V2 {
            return Err(RecordError::UnknownFormat(format));
        }
        let stored = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(&bytes[5..]);
        if stored != computed {
            return Err(RecordError::Checksum { stored, computed });
        }
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let uuid_at = |o: usize| Uuid::from_slice(&bytes[o..o + 16]).expect("16 bytes");
        let micros = u64_at(21) as i64;
        let timestamp = Utc
            .timestamp_micros(micros)
            .single()
            .ok_or(RecordError::Malformed("timestamp out of range"))?;
        let flags = bytes[61];
        let known = match format {
            RECORD_FORMAT_V1 => FLAG_CAUSATION | FLAG_USER | FLAG_ENCRYPTED,
            _ => FLAG_CAUSATION | FLAG_USER | FLAG_SESSION | FLAG_AUDIT | FLAG_ENCRYPTED,
        };
        if flags & !known != 0 {
            return Err(RecordError::Malformed("unknown flag bits"));
        }
        if format == RECORD_FORMAT_V2 && flags & (FLAG_SESSION | FLAG_AUDIT) == 0 {
            // Format 2 is written only for what format 1 cannot hold: one record, one
            // encoding, so a re-encoded record hashes the same.
            return Err(RecordError::Malformed(
                "format 2 without a session or audit context",
            ));
        }
        let mut cursor = HEADER_BYTES;
        let [aggregate_type, aggregate_id, event_type, event_version, source, user_id] =
            header_strings(bytes, &mut cursor)?.map(str::to_owned);
        let session_id = if flags & FLAG_SESSION != 0 {
            let raw = bytes
                .get(cursor..cursor + 16)
                .ok_or(RecordError::Malformed("session id"))?;
            cursor += 16;
            Some(Uuid::from_slice(raw).expect("16 bytes"))
        } else {
            None
        };
        let audit_context = if flags & FLAG_AUDIT != 0 {
            let present = *bytes
                .get(cursor)
                .ok_or(RecordError::Malformed("audit flags"))?;
            if present & !0b11 != 0 {
                return Err(RecordError::Malformed("unknown audit flag bits"));
            }
            cursor += 1;
            let ip = read_str(bytes, &mut cursor, "audit ip address")?;
            let agent = read_str(bytes, &mut cursor, "audit user agent")?;
            let ip_address = if present & 1 != 0 {
                Some(
                    ip.parse()
                        .map_err(|_| RecordError::Malformed("audit ip address"))?,
                )
            } else if ip.is_empty() {
                None
            } else {
                return Err(RecordError::Malformed("audit ip address"));
            };
            if present & 2 == 0 && !agent.is_empty() {
                return Err(RecordError::Malformed("audit user agent"));
            }
            let user_agent = (present & 2 != 0).then_some(agent);
            let count_bytes = bytes
                .get(cursor..cursor + 2)
                .ok_or(RecordError::Malformed("compliance flags"))?;
            let count = u16::from_le_bytes([count_bytes[0], count_bytes[1]]) as usize;
            cursor += 2;
            if count > AuditContext::COMPLIANCE_FLAGS_MAX {
                return Err(RecordError::Malformed("too many compliance flags"));
            }
            let compliance_flags = (0..count)
                .map(|_| read_str(bytes, &mut cursor, "compliance flag"))
                .collect::<Result<Vec<_>, _>>()?;
            Some(AuditContext {
                ip_address,
                user_agent,
                compliance_flags,
            })
        } else {
            None
        };
        let payload = payload_at(bytes, cursor)?;
        Ok(Record {
            sequence: u64_at(5),
            global_position: u64_at(13),
            timestamp,
            event_id: uuid_at(29),
            correlation_id: uuid_at(45),
            causation_id: (flags & FLAG_CAUSATION != 0).then(|| uuid_at(62)),
            prev_hash: bytes[78..110].try_into().expect("32 bytes"),
            aggregate_type,
            aggregate_id,
            event_type,
            event_version,
            source,
            user_id: (flags & FLAG_USER != 0).then_some(user_id),
            session_id,
            audit_context,
            at_rest: if flags & FLAG_ENCRYPTED != 0 {
                AtRest::Sealed
            } else {
                AtRest::Plain
            },
            payload: payload.to_vec(),
        })
    }
}

/// The fields of a stored record that verification and topic reads need, borrowed from its
/// bytes. A format 2 record's session id and audit context are not in the view: a reader that
/// needs them decodes the record (`format` says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// `RECORD_FORMAT_V1` or `RECORD_FORMAT_V2`.
    pub format: u8,
    pub sequence: u64,
    pub global_position: u64,
    pub timestamp_micros: i64,
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub prev_hash: &'a [u8; 32],
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub source: &'a str,
    pub user_id: Option<&'a str>,
    /// The payload's bytes (`evershard_model::codec`, or sealed when `encrypted`), not
    /// decoded.
    pub payload: &'a [u8],
    /// The payload is encrypted at rest (flag bit 4).
    pub encrypted: bool,
}

/// The global position and timestamp (microseconds) of a record, read from its header
/// without checking anything: for choosing which records a scoped verification checks.
pub fn peek_position_and_time(bytes: &[u8]) -> Option<(u64, i64)> {
    let position = u64::from_le_bytes(bytes.get(13..21)?.try_into().ok()?);
    let micros = i64::from_le_bytes(bytes.get(21..29)?.try_into().ok()?);
    Some((position, micros))
}

impl<'a> RecordView<'a> {
    /// Makes every check [`Record::decode`] makes (length, format, CRC, flags, timestamp,
    /// string lengths and UTF-8, payload length) without copying anything: `verify` runs it
    /// on every record, and decoding the payload is the aggregate's business, not the chain's.
    /// A unit test holds the two to the same verdict on every single-byte flip.
    pub fn check(bytes: &'a [u8]) -> Result<RecordView<'a>, RecordError> {
        Self::parse(bytes, true)
    }

    /// The view of bytes known intact: bytes that passed [`RecordView::check`] before, or
    /// that this process encoded, and stayed in its memory since, or whose SHA-256 the hash chain vouches for
    /// (the next record's `prev_hash`, or the head's hash), or that a segment log frame's
    /// checked CRC covers (`seglog::Segment::read_frame`). The same parse without the CRC,
    /// which only guards the trip through storage. A stream read from the segment log checks
    /// each record's chain as it follows the pointers back (`logindex::read_back`); computing
    /// the CRC there and again to fold the records was a fifth of a full replay's time
    /// (perf, 2026-11-27).
    pub(crate) fn of_checked(bytes: &'a [u8]) -> Result<RecordView<'a>, RecordError> {
        Self::parse(bytes, false)
    }

    fn parse(bytes: &'a [u8], verify_crc: bool) -> Result<RecordView<'a>, RecordError> {
        if bytes.len() < HEADER_BYTES + 6 * 2 + 4 {
            return Err(RecordError::Truncated(bytes.len()));
        }
        // The payload's length for format 2, which the full decode below has checked.
        let mut v2_payload_len = None;
        if bytes[0] == RECORD_FORMAT_V2 {
            // Format 2 (events with a session or an audit context) is the exception: check
            // it with the full decoder, so the two can never disagree on its tail, and take
            // the view's fields from the bytes as for format 1 below (the payload is the last
            // field of both formats).
            v2_payload_len = Some(Record::decode(bytes)?.payload.len());
        } else if bytes[0] != RECORD_FORMAT_V1 {
            return Err(RecordError::UnknownFormat(bytes[0]));
        }
        if verify_crc {
            let stored = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes"));
            let computed = crc32c::crc32c(&bytes[5..]);
            if stored != computed {
                return Err(RecordError::Checksum { stored, computed });
            }
        }
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let micros = u64_at(21) as i64;
        if Utc.timestamp_micros(micros).single().is_none() {
            return Err(RecordError::Malformed("timestamp out of range"));
        }
        if bytes[0] == RECORD_FORMAT_V1
            && bytes[61] & !(FLAG_CAUSATION | FLAG_USER | FLAG_ENCRYPTED) != 0
        {
            return Err(RecordError::Malformed("unknown flag bits"));
        }
        let mut cursor = HEADER_BYTES;
        let strings = header_strings(bytes, &mut cursor)?;
        // Format 2's tail and payload were checked by the full decode above.
        let payload = match v2_payload_len {
            Some(len) => &bytes[bytes.len() - len..],
            None => payload_at(bytes, cursor)?,
        };
        let uuid_at = |o: usize| Uuid::from_slice(&bytes[o..o + 16]).expect("16 bytes");
        let flags = bytes[61];
        Ok(RecordView {
            format: bytes[0],
            sequence: u64_at(5),
            global_position: u64_at(13),
            timestamp_micros: micros,
            event_id: uuid_at(29),
            correlation_id: uuid_at(45),
            causation_id: (flags & FLAG_CAUSATION != 0).then(|| uuid_at(62)),
            prev_hash: bytes[78..110].try_into().expect("32 bytes"),
            aggregate_type: strings[0],
            aggregate_id: strings[1],
            event_type: strings[2],
            event_version: strings[3],
            source: strings[4],
            user_id: (flags & FLAG_USER != 0).then_some(strings[5]),
            payload,
            encrypted: bytes[61] & FLAG_ENCRYPTED != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `header_strings`' one check of the whole span gives the verdict of one `str_at` per
    /// string, and leaves the cursor where they do: on multi-byte text, strings of 128
    /// bytes and more (a length byte that is not ASCII), invalid UTF-8, a character cut at a
    /// string's end, every cut of the bytes and every single-bit flip.
    #[test]
    fn header_strings_agree_with_one_check_per_string() {
        fn one_by_one(bytes: &[u8]) -> Result<(Vec<String>, usize), RecordError> {
            let mut cursor = 0;
            let mut out = Vec::new();
            for _ in 0..6 {
                out.push(str_at(bytes, &mut cursor, HEADER_STRING_ERRORS)?.to_owned());
            }
            Ok((out, cursor))
        }
        fn at_once(bytes: &[u8]) -> Result<(Vec<String>, usize), RecordError> {
            let mut cursor = 0;
            let strings = header_strings(bytes, &mut cursor)?;
            Ok((strings.map(str::to_owned).to_vec(), cursor))
        }
        fn encode(strings: &[&[u8]]) -> Vec<u8> {
            let mut out = Vec::new();
            for s in strings {
                out.extend_from_slice(&(s.len() as u16).to_le_bytes());
                out.extend_from_slice(s);
            }
            out
        }
        let long = "x".repeat(200);
        let cases: [[&[u8]; 6]; 5] = [
            [
                b"ProductStock",
                b"sku-1",
                b"StockReserved",
                b"1.0",
                b"bench",
                b"",
            ],
            [
                "Заказ".as_bytes(),
                "ид-1".as_bytes(),
                b"E",
                b"1",
                "€uro".as_bytes(),
                "🦀".as_bytes(),
            ],
            [long.as_bytes(), b"a", b"b", b"c", b"d", b"e"],
            [b"a", &[0xff, 0xfe], b"c", b"d", b"e", b"f"],
            [b"a", &[0xe2, 0x82], b"c", b"d", b"e", b"f"],
        ];
        for strings in cases {
            let bytes = encode(&strings);
            assert_eq!(at_once(&bytes), one_by_one(&bytes), "{strings:?}");
            for cut in 0..bytes.len() {
                let bytes = &bytes[..cut];
                assert_eq!(at_once(bytes), one_by_one(bytes), "cut at {cut}");
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut flipped = bytes.clone();
                    flipped[i] ^= 1 << bit;
                    assert_eq!(
                        at_once(&flipped),
                        one_by_one(&flipped),
                        "byte {i} bit {bit}"
                    );
                }
            }
        }
        assert!(one_by_one(&encode(&cases[0])).is_ok());
        assert!(one_by_one(&encode(&cases[3])).is_err());
    }

    fn sample() -> Record {
        Record {
            sequence: 3,
            global_position: 17,
            timestamp: Utc.timestamp_micros(1_767_225_600_123_456).unwrap(),
            event_id: Uuid::from_u128(1),
            correlation_id: Uuid::from_u128(2),
            causation_id: Some(Uuid::from_u128(3)),
            prev_hash: [7; 32],
            aggregate_type: "ProductStock".into(),
            aggregate_id: "sku-1".into(),
            event_type: "StockReserved".into(),
            event_version: "1.0".into(),
            source: "test".into(),
            user_id: None,
            session_id: None,
            audit_context: None,
            at_rest: AtRest::Plain,
            payload: vec![1, 2, 3],
        }
    }

    /// Every field at its limit: the record is exactly `RECORD_BYTES_MAX` long.
    #[test]
    fn the_largest_record_is_record_bytes_max_long() {
        let long = |n: usize| "x".repeat(n);
        let mut record = sample();
        record.aggregate_type = long(evershard_model::AGGREGATE_TYPE_BYTES_MAX);
        record.aggregate_id = long(evershard_model::AGGREGATE_ID_BYTES_MAX);
        record.event_type = long(RECORD_STRING_BYTES_MAX);
        record.event_version = long(RECORD_STRING_BYTES_MAX);
        record.source = long(RECORD_STRING_BYTES_MAX);
        record.user_id = Some(long(RECORD_STRING_BYTES_MAX));
        record.session_id = Some(Uuid::from_u128(5));
        let mut audit = AuditContext::new()
            .ip_address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap())
            .user_agent(long(RECORD_STRING_BYTES_MAX));
        for _ in 0..AuditContext::COMPLIANCE_FLAGS_MAX {
            audit = audit.compliance_flag(long(AuditContext::COMPLIANCE_FLAG_BYTES_MAX));
        }
        record.audit_context = Some(audit);
        record.at_rest = AtRest::Sealed;
        record.payload = vec![9; PAYLOAD_BYTES_MAX + crate::crypto::SEAL_OVERHEAD_BYTES];
        let ip_text = 39;
        assert_eq!(
            record.encode().len(),
            RECORD_BYTES_MAX - (IP_TEXT_BYTES_MAX - ip_text)
        );
    }

    fn audited() -> Record {
        Record {
            user_id: Some("3f1c0d9e-5a1b-4c7e-9a43-0b6f1f1f2a10".into()),
            session_id: Some(Uuid::from_u128(9)),
            audit_context: Some(
                AuditContext::new()
                    .ip_address("2001:db8::7".parse().unwrap())
                    .user_agent("curl/8.5")
                    .compliance_flag("GACP")
                    .compliance_flag("21CFR11"),
            ),
            ..sample()
        }
    }

    #[test]
    fn format_2_only_when_needed_and_it_round_trips_and_detects_every_flipped_byte() {
        assert_eq!(sample().encode()[0], RECORD_FORMAT_V1);
        for r in [
            audited(),
            Record {
                audit_context: None,
                ..audited()
            },
            Record {
                session_id: None,
                audit_context: Some(AuditContext::default()),
                ..audited()
            },
        ] {
            let bytes = r.encode();
            assert_eq!(bytes[0], RECORD_FORMAT_V2);
            let view = RecordView::check(&bytes).unwrap();
            assert_eq!(
                (view.payload, view.event_type),
                (r.payload.as_slice(), r.event_type.as_str())
            );
            assert_eq!(Record::decode(&bytes), Ok(r));
            for i in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[i] ^= 0x40;
                assert!(
                    Record::decode(&damaged).is_err(),
                    "flip at byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_format_1_record_with_format_2_flags_is_refused() {
        let mut bytes = sample().encode();
        bytes[61] |= FLAG_SESSION;
        let crc = crc32c::crc32c(&bytes[5..]);
        bytes[1..5].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Record::decode(&bytes),
            Err(RecordError::Malformed("unknown flag bits"))
        );
    }

    #[test]
    fn round_trips_and_detects_every_flipped_byte() {
        let sealed = Record {
            at_rest: AtRest::Sealed,
            payload: vec![9; crate::crypto::SEAL_OVERHEAD_BYTES + 3],
            ..sample()
        };
        let sealed_v2 = Record {
            at_rest: AtRest::Sealed,
            ..audited()
        };
        let without_causation = Record {
            causation_id: None,
            user_id: Some("u-7".into()),
            ..sample()
        };
        for r in [sample(), audited(), sealed, sealed_v2, without_causation] {
            round_trips_and_detects_every_flipped_byte_of(r);
        }
    }

    fn round_trips_and_detects_every_flipped_byte_of(r: Record) {
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes), Ok(r.clone()));
        let view = RecordView::check(&bytes).unwrap();
        assert_eq!(
            (
                view.sequence,
                view.global_position,
                view.prev_hash,
                view.aggregate_id
            ),
            (
                r.sequence,
                r.global_position,
                &r.prev_hash,
                r.aggregate_id.as_str()
            )
        );
        assert_eq!(view.timestamp_micros, r.timestamp.timestamp_micros());
        // The fields topic reads render from the view, as the full decode gives them.
        assert_eq!(
            (
                view.format,
                view.event_id,
                view.correlation_id,
                view.causation_id,
                view.source,
                view.user_id,
                view.event_version
            ),
            (
                r.format(),
                r.event_id,
                r.correlation_id,
                r.causation_id,
                r.source.as_str(),
                r.user_id.as_deref(),
                r.event_version.as_str()
            )
        );
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(
                Record::decode(&damaged).is_err(),
                "flip at byte {i} went unnoticed"
            );
            // The view verify uses gives the very same verdict and reason.
            assert_eq!(
                RecordView::check(&damaged).err(),
                Record::decode(&damaged).err(),
                "flip at byte {i}"
            );
        }
        assert!(matches!(
            RecordView::check(&bytes[..20]),
            Err(RecordError::Truncated(20))
        ));
        assert!(matches!(
            Record::decode(&bytes[..20]),
            Err(RecordError::Truncated(20))
        ));
    }
}
