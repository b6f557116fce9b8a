//! Key layout of the one sled tree the journal uses. Every key starts with a one-byte
//! keyspace tag; integers in keys are big-endian so that byte order is numeric order.
//!
//! ```text
//! e | type_len u8 | type | id_len u16 BE | id | sequence u64 BE   -> event record
//! g | first global_position u64 BE                                 -> runs of the group commit (below)
//! s | type_len u8 | type | id_len u16 BE | id | sequence u64 BE   -> snapshot record, or the manifest of one in parts
//! s | type_len u8 | type | id_len u16 BE | id | sequence u64 BE | part u16 BE -> a part of a snapshot record (1..)
//! m | name                                                          -> store metadata
//! t | deadline u64 BE | type_len u8 | type | id_len u16 BE | id     -> (empty): a due timer
//! T | type_len u8 | type | id_len u16 BE | id                       -> deadline i64 LE: its reverse entry
//! I | recorded_at u64 BE | 0x00 | type_len u8 | type | key (16 B)   -> one group's idempotency records (format 2, below);
//!                                                                      on the segment log, its keys and frame (format 3)
//! i | type_len u8 | type | key (16 bytes)                           -> (stores before format 2) one idempotency record
//! I | recorded_at u64 BE | type_len u8 | type | key (16 bytes)      -> (stores before group entries) (empty): sweep index, one key
//! I | recorded_at u64 BE | 0x00 | type_len u8 | type | key (16 B)   -> (format 1) sweep index, one group's `i` keys
//! h, m | "merkle-size"                                           -> Merkle tree nodes (see `merkle`)
//! x | y | z, m | "topics-cursor"                                   -> topic index, topic configs, consumer offsets (see `topics`)
//! k | publisher | topic | partition u32 BE                          -> a Kafka publisher's cursor (see `publisher`)
//! d | key_id 16, D | subject_len u16 BE | subject                   -> wrapped data keys, subjects' key lists (see `keyring`)
//! c | name_len u8 | cluster | 'p' partition u32 BE, or 'h' stream  -> a cluster tailer's stored position (see `cluster_state`)
//! ```
//!
//! Times in keys are microseconds since the epoch, an `i64` stored as `u64` with the sign bit
//! flipped ([`time_key_part`]), so that byte order is time order also before 1970.

use super::StreamId;

pub const EVENTS: u8 = b'e';
pub const GLOBAL: u8 = b'g';
pub const SNAPSHOTS: u8 = b's';
pub const META: u8 = b'm';

/// Reserved keyspaces that later subsystems write in the same atomic batch as events.
pub const OUTBOX: u8 = b'o';
pub const TIMERS: u8 = b't';
pub const IDEMPOTENCY: u8 = b'i';
/// The reverse entry of a timer: stream -> its deadline, so a moved deadline finds its key.
pub const TIMERS_BY_STREAM: u8 = b'T';
/// Idempotency records in the order they were recorded, for the retention sweep.
pub const IDEMPOTENCY_BY_TIME: u8 = b'I';
/// Cluster mode's tailer position and walk heads (see `cluster_state`): written in the same
/// batch as the replicated events they cover.
pub const CLUSTER: u8 = b'c';
/// Wrapped data keys of encryption at rest, by key id (see `keyring`).
pub const DATA_KEYS: u8 = b'd';
/// Each data subject's data key ids, current first (see `keyring`).
pub const DATA_SUBJECTS: u8 = b'D';

/// An instant (microseconds since the epoch) as 8 bytes whose byte order is time order.
pub fn time_key_part(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`time_key_part`].
pub fn parse_time_key_part(bytes: &[u8]) -> Option<i64> {
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
}

/// `t | deadline | stream part`: timers sorted by deadline, then stream.
pub fn timer_key(deadline_micros: i64, stream: &StreamId) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + stream_part_len(stream));
    key.push(TIMERS);
    key.extend_from_slice(&time_key_part(deadline_micros));
    put_stream_part(&mut key, stream);
    key
}

/// Parses a `t` key into (deadline micros, stream).
pub fn parse_timer_key(key: &[u8]) -> Option<(i64, StreamId)> {
    if key.first() != Some(&TIMERS) {
        return None;
    }
    let deadline = parse_time_key_part(key.get(1..)?)?;
    let (stream, rest) = parse_stream_part(key.get(9..)?)?;
    rest.is_empty().then_some((deadline, stream))
}

/// `T | stream part`: where a stream's timer is.
pub fn timer_by_stream_key(stream: &StreamId) -> Vec<u8> {
    stream_prefix(TIMERS_BY_STREAM, stream)
}

/// `i | type_len | type | key`.
pub fn idempotency_key(aggregate_type: &str, key: &uuid::Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + aggregate_type.len() + 16);
    out.push(IDEMPOTENCY);
    out.push(aggregate_type.len() as u8);
    out.extend_from_slice(aggregate_type.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// `I | recorded_at | type_len | type | key`: the one-key sweep entry of stores before group
/// entries (read by [`parse_idempotency_by_time_key`]; made by the tests of those stores).
#[cfg(test)]
pub fn idempotency_by_time_key(
    recorded_at_micros: i64,
    aggregate_type: &str,
    key: &uuid::Uuid,
) -> Vec<u8> {
    let mut out = vec![IDEMPOTENCY_BY_TIME];
    out.extend_from_slice(&time_key_part(recorded_at_micros));
    out.extend_from_slice(&idempotency_key(aggregate_type, key)[1..]);
    out
}

/// Parses an `I` key into (recorded_at micros, the matching `i` key).
pub fn parse_idempotency_by_time_key(key: &[u8]) -> Option<(i64, Vec<u8>)> {
    if key.first() != Some(&IDEMPOTENCY_BY_TIME) {
        return None;
    }
    let at = parse_time_key_part(key.get(1..)?)?;
    let rest = key.get(9..)?;
    let tlen = *rest.first()? as usize;
    if rest.len() != 1 + tlen + 16 {
        return None;
    }
    let mut i = vec![IDEMPOTENCY];
    i.extend_from_slice(rest);
    Some((at, i))
}

/// Keys one group sweep entry lists at most: 256 of at most 8 + 1 + 255 + 16 bytes each stay
/// well under the value limit of `segments`.
pub const IDEMPOTENCY_GROUP_KEYS_MAX: usize = 256;

/// Format byte of a group sweep entry's value.
pub const IDEMPOTENCY_GROUP_FORMAT_V1: u8 = 1;

/// (Format 1, written by stores before format 2; kept for the tests that make such stores.)
/// `I | recorded_at | 0x00 | type_len | type | key`: the sweep entry of the idempotency keys
/// one group commit recorded (up to [`IDEMPOTENCY_GROUP_KEYS_MAX`]), instead of one entry per
/// key. `recorded_at` is the latest of theirs, so the sweep never takes a key early; the
/// first listed key makes the entry's key unique. The 0x00 byte tells it from a one-key entry
/// (an aggregate type is at least one byte long).
///
/// The value, integers little-endian:
///
/// ```text
/// [0]   format = 1
/// then per key: recorded_at i64 LE | type_len u8 | type | key (16 bytes)
/// ```
#[cfg(test)]
pub fn idempotency_group_entry(keys: &[(i64, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    assert!(
        !keys.is_empty() && keys.len() <= IDEMPOTENCY_GROUP_KEYS_MAX,
        "a group entry lists 1..=IDEMPOTENCY_GROUP_KEYS_MAX keys"
    );
    let latest = keys.iter().map(|(at, _)| *at).max().expect("not empty");
    let first = keys[0].1;
    assert_eq!(first.first(), Some(&IDEMPOTENCY), "an `i` key");
    let mut key = Vec::with_capacity(10 + first.len());
    key.push(IDEMPOTENCY_BY_TIME);
    key.extend_from_slice(&time_key_part(latest));
    key.push(0);
    key.extend_from_slice(&first[1..]);
    let mut value = Vec::with_capacity(1 + keys.iter().map(|(_, k)| 8 + k.len()).sum::<usize>());
    value.push(IDEMPOTENCY_GROUP_FORMAT_V1);
    for (at, i_key) in keys {
        assert_eq!(i_key.first(), Some(&IDEMPOTENCY), "an `i` key");
        value.extend_from_slice(&at.to_le_bytes());
        value.extend_from_slice(&i_key[1..]);
    }
    (key, value)
}

/// Format byte of a group entry that holds its keys' records (the `i` keys are not written).
pub const IDEMPOTENCY_GROUP_FORMAT_V2: u8 = 2;

/// Bytes of one format-2 group entry's value at most: a group with more records writes
/// several entries. (A record is about 100 bytes; its largest, with a 1,024-byte aggregate
/// id and a 255-byte type, 1,353.)
pub const IDEMPOTENCY_GROUP_VALUE_BYTES_MAX: usize = 32 * 1024;

/// The parts of an `i` key: (aggregate type, key). `None` unless it is one.
pub fn parse_idempotency_key(key: &[u8]) -> Option<(&[u8], [u8; 16])> {
    if key.first() != Some(&IDEMPOTENCY) {
        return None;
    }
    let tlen = *key.get(1)? as usize;
    let raw: [u8; 16] = key.get(2 + tlen..)?.try_into().ok()?;
    (tlen > 0).then(|| (&key[2..2 + tlen], raw))
}

/// The group entry (format 2) of records that one group commit recorded: `(i key, record)`
/// pairs, each record an [`IdempotencyRecord`] encoding. Its key has the form of a format-1
/// entry's (`recorded_at` the latest of the records', 0x00, then the first key), so the sweep
/// meets both formats in time order. The value, integers little-endian:
///
/// ```text
/// [0]   format = 2
/// then per record: type_len u8 | type | key (16 bytes) | record_len u16 | record
/// ```
pub fn idempotency_records_entry(records: &[(&[u8], &[u8])]) -> (Vec<u8>, Vec<u8>) {
    assert!(
        !records.is_empty() && records.len() <= IDEMPOTENCY_GROUP_KEYS_MAX,
        "a group entry holds 1..=IDEMPOTENCY_GROUP_KEYS_MAX records"
    );
    let latest = records
        .iter()
        .map(|(_, r)| IdempotencyRecord::recorded_at(r).expect("a record checked on submit"))
        .max()
        .expect("not empty");
    let first = records[0].0;
    assert!(parse_idempotency_key(first).is_some(), "an `i` key");
    let mut key = Vec::with_capacity(10 + first.len());
    key.push(IDEMPOTENCY_BY_TIME);
    key.extend_from_slice(&time_key_part(latest));
    key.push(0);
    key.extend_from_slice(&first[1..]);
    let size: usize = records.iter().map(|(k, r)| k.len() + 2 + r.len()).sum();
    let mut value = Vec::with_capacity(1 + size);
    value.push(IDEMPOTENCY_GROUP_FORMAT_V2);
    for (i_key, record) in records {
        assert!(parse_idempotency_key(i_key).is_some(), "an `i` key");
        value.extend_from_slice(&i_key[1..]);
        value.extend_from_slice(&(record.len() as u16).to_le_bytes());
        value.extend_from_slice(record);
    }
    (key, value)
}

/// The `(i key, record bytes)` pairs of a format-2 group entry's value; `None` for another
/// format or a malformed value.
pub fn parse_idempotency_records_entry(value: &[u8]) -> Option<Vec<(Vec<u8>, &[u8])>> {
    if value.first() != Some(&IDEMPOTENCY_GROUP_FORMAT_V2) {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = &value[1..];
    while !rest.is_empty() {
        let tlen = *rest.first()? as usize;
        let part = rest.get(..1 + tlen + 16)?;
        let len_at = part.len();
        let record_len = u16::from_le_bytes(rest.get(len_at..len_at + 2)?.try_into().ok()?);
        let record = rest.get(len_at + 2..len_at + 2 + record_len as usize)?;
        let mut i = Vec::with_capacity(1 + part.len());
        i.push(IDEMPOTENCY);
        i.extend_from_slice(part);
        out.push((i, record));
        rest = &rest[len_at + 2 + record.len()..];
    }
    (!out.is_empty()).then_some(out)
}

/// Format byte of a group entry's copy in sled on the segment log: the keys and where the
/// records are (see [`idempotency_pointer_entry`]).
pub const IDEMPOTENCY_GROUP_FORMAT_V3: u8 = 3;

/// sled's copy of a format-2 group entry on a store on the segment log: the entry's keys and
/// the address of the frame that holds the entry itself — the records stay in the log.
/// Measured on the keyed bench: sled's copy of every record (written once more by each of
/// sled's node rewrites) was most of what a key cost beyond its command (about 76 MiB more
/// written per 300,000 keyed commands). A look-up of a stored key — a repeat, rare — reads
/// the frame (see `idempotency`). Its key is the format-2 entry's. The value, keys in the
/// format-2 entry's order, one run per stretch of one aggregate type, integers
/// little-endian:
///
/// ```text
/// [0]      format = 3
/// [1..9]   frame address u64
/// then per run: type_len u8 | type | count u16 | count × key (16 bytes)
/// ```
pub fn idempotency_pointer_entry(frame_address: u64, records_value: &[u8]) -> Option<Vec<u8>> {
    let records = parse_idempotency_records_entry(records_value)?;
    let mut value = Vec::with_capacity(9 + 32 + 16 * records.len());
    value.push(IDEMPOTENCY_GROUP_FORMAT_V3);
    value.extend_from_slice(&frame_address.to_le_bytes());
    let mut run: Option<(&[u8], usize)> = None; // (type, where its count goes)
    for (i_key, _) in &records {
        let (ty, key) = parse_idempotency_key(i_key)?;
        let at = match run {
            Some((t, at)) if t == ty && count_at(&value, at) < u16::MAX => at,
            _ => {
                value.push(ty.len() as u8);
                value.extend_from_slice(ty);
                value.extend_from_slice(&0u16.to_le_bytes());
                let at = value.len() - 2;
                run = Some((ty, at));
                at
            }
        };
        let n = count_at(&value, at) + 1;
        value[at..at + 2].copy_from_slice(&n.to_le_bytes());
        value.extend_from_slice(&key);
    }
    Some(value)
}

fn count_at(value: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([value[at], value[at + 1]])
}

/// The frame address and the `i` keys of a format-3 entry's value; `None` for another
/// format or a malformed value.
pub fn parse_idempotency_pointer_entry(value: &[u8]) -> Option<(u64, Vec<Vec<u8>>)> {
    if value.first() != Some(&IDEMPOTENCY_GROUP_FORMAT_V3) {
        return None;
    }
    let address = u64::from_le_bytes(value.get(1..9)?.try_into().ok()?);
    let mut out = Vec::new();
    let mut rest = &value[9..];
    while !rest.is_empty() {
        let tlen = *rest.first()? as usize;
        let ty = rest.get(1..1 + tlen).filter(|t| !t.is_empty())?;
        let n = u16::from_le_bytes(rest.get(1 + tlen..3 + tlen)?.try_into().ok()?) as usize;
        let keys = rest.get(3 + tlen..3 + tlen + 16 * n).filter(|_| n > 0)?;
        for key in keys.chunks_exact(16) {
            let mut i = Vec::with_capacity(2 + tlen + 16);
            i.push(IDEMPOTENCY);
            i.push(tlen as u8);
            i.extend_from_slice(ty);
            i.extend_from_slice(key);
            out.push(i);
        }
        rest = &rest[3 + tlen + 16 * n..];
    }
    (!out.is_empty()).then_some((address, out))
}

/// The `i` keys a group entry holds records of, in either of the formats that hold them
/// (2: the records; 3: a pointer to them); `None` for another format or a malformed value.
pub fn idempotency_entry_keys(value: &[u8]) -> Option<Vec<Vec<u8>>> {
    match value.first() {
        Some(&IDEMPOTENCY_GROUP_FORMAT_V2) => Some(
            parse_idempotency_records_entry(value)?
                .into_iter()
                .map(|(k, _)| k)
                .collect(),
        ),
        Some(&IDEMPOTENCY_GROUP_FORMAT_V3) => Some(parse_idempotency_pointer_entry(value)?.1),
        _ => None,
    }
}

/// The (recorded_at, `i` key) pairs a sweep entry names: one for a one-key entry (format of
/// [`idempotency_by_time_key`], empty value), each listed one for a group entry (format 1).
/// Format-2 entries are read by [`parse_idempotency_records_entry`].
pub fn parse_idempotency_sweep_entry(key: &[u8], value: &[u8]) -> Option<Vec<(i64, Vec<u8>)>> {
    if key.get(9) != Some(&0) {
        return parse_idempotency_by_time_key(key).map(|one| vec![one]);
    }
    if key.first() != Some(&IDEMPOTENCY_BY_TIME)
        || value.first() != Some(&IDEMPOTENCY_GROUP_FORMAT_V1)
    {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = &value[1..];
    while !rest.is_empty() {
        let at = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let tlen = *rest.get(8)? as usize;
        let part = rest.get(8..8 + 1 + tlen + 16)?;
        let mut i = Vec::with_capacity(1 + part.len());
        i.push(IDEMPOTENCY);
        i.extend_from_slice(part);
        out.push((at, i));
        rest = &rest[8 + part.len()..];
    }
    (!out.is_empty()).then_some(out)
}

/// The value of an idempotency record (`i` key), integers little-endian:
///
/// ```text
/// [0]      format = 1
/// [1..9]   recorded_at, i64 LE, microseconds since the epoch
/// [9..41]  SHA-256 of the aggregate id and the encoded command
/// [41..]   id_len u16 LE | aggregate id | first sequence u64 LE | event count u32 LE
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub recorded_at_micros: i64,
    pub digest: [u8; 32],
    pub aggregate_id: String,
    /// The first sequence the command committed (meaningless when `count` is 0).
    pub first_sequence: u64,
    pub count: u32,
}

pub const IDEMPOTENCY_RECORD_FORMAT_V1: u8 = 1;

impl IdempotencyRecord {
    /// When an encoded record was recorded, without decoding the rest.
    pub fn recorded_at(v: &[u8]) -> Option<i64> {
        if v.first() != Some(&IDEMPOTENCY_RECORD_FORMAT_V1) {
            return None;
        }
        Some(i64::from_le_bytes(v.get(1..9)?.try_into().ok()?))
    }

    pub fn encode(&self) -> Vec<u8> {
        let id = self.aggregate_id.as_bytes();
        let mut v = Vec::with_capacity(55 + id.len());
        v.push(IDEMPOTENCY_RECORD_FORMAT_V1);
        v.extend_from_slice(&self.recorded_at_micros.to_le_bytes());
        v.extend_from_slice(&self.digest);
        v.extend_from_slice(&(id.len() as u16).to_le_bytes());
        v.extend_from_slice(id);
        v.extend_from_slice(&self.first_sequence.to_le_bytes());
        v.extend_from_slice(&self.count.to_le_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Option<Self> {
        if v.first() != Some(&IDEMPOTENCY_RECORD_FORMAT_V1) {
            return None;
        }
        let recorded_at_micros = i64::from_le_bytes(v.get(1..9)?.try_into().ok()?);
        let digest: [u8; 32] = v.get(9..41)?.try_into().ok()?;
        let id_len = u16::from_le_bytes(v.get(41..43)?.try_into().ok()?) as usize;
        let aggregate_id = std::str::from_utf8(v.get(43..43 + id_len)?)
            .ok()?
            .to_owned();
        let rest = v.get(43 + id_len..)?;
        if rest.len() != 12 {
            return None;
        }
        Some(IdempotencyRecord {
            recorded_at_micros,
            digest,
            aggregate_id,
            first_sequence: u64::from_le_bytes(rest[..8].try_into().ok()?),
            count: u32::from_le_bytes(rest[8..].try_into().ok()?),
        })
    }
}

pub use evershard_model::{AGGREGATE_ID_BYTES_MAX, AGGREGATE_TYPE_BYTES_MAX};

/// The length of the stream part `type_len | type | id_len | id` shared by event and
/// snapshot keys ([`put_stream_part`]).
fn stream_part_len(stream: &StreamId) -> usize {
    3 + stream.aggregate_type.len() + stream.aggregate_id.len()
}

/// Appends the stream part `type_len | type | id_len | id` to `out`: every key of the write
/// path is built in one allocation.
fn put_stream_part(out: &mut Vec<u8>, stream: &StreamId) {
    let t = stream.aggregate_type.as_bytes();
    let i = stream.aggregate_id.as_bytes();
    debug_assert!(t.len() <= AGGREGATE_TYPE_BYTES_MAX && i.len() <= AGGREGATE_ID_BYTES_MAX);
    out.push(t.len() as u8);
    out.extend_from_slice(t);
    out.extend_from_slice(&(i.len() as u16).to_be_bytes());
    out.extend_from_slice(i);
}

/// Parses a stream part; returns the stream and the rest of the bytes.
pub fn parse_stream_part(bytes: &[u8]) -> Option<(StreamId, &[u8])> {
    let (&tlen, rest) = bytes.split_first()?;
    let tlen = tlen as usize;
    if rest.len() < tlen + 2 {
        return None;
    }
    let aggregate_type = std::str::from_utf8(&rest[..tlen]).ok()?.to_owned();
    let rest = &rest[tlen..];
    let ilen = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let rest = &rest[2..];
    if rest.len() < ilen {
        return None;
    }
    let aggregate_id = std::str::from_utf8(&rest[..ilen]).ok()?.to_owned();
    Some((
        StreamId {
            aggregate_type,
            aggregate_id,
        },
        &rest[ilen..],
    ))
}

pub fn stream_prefix(space: u8, stream: &StreamId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + stream_part_len(stream));
    key.push(space);
    put_stream_part(&mut key, stream);
    key
}

pub fn stream_key(space: u8, stream: &StreamId, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + stream_part_len(stream) + 8);
    key.push(space);
    put_stream_part(&mut key, stream);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// Parses `space | stream part | seq` keys.
pub fn parse_stream_key(key: &[u8]) -> Option<(StreamId, u64)> {
    let (stream, rest) = parse_stream_part(key.get(1..)?)?;
    let seq: [u8; 8] = rest.try_into().ok()?;
    Some((stream, u64::from_be_bytes(seq)))
}

/// The key of part `part` (1-based) of the snapshot at `sequence`: its snapshot key and the
/// part number, so that a snapshot's parts sort right after it, in order.
pub fn snapshot_part_key(stream: &StreamId, sequence: u64, part: u16) -> Vec<u8> {
    let mut key = stream_key(SNAPSHOTS, stream, sequence);
    key.extend_from_slice(&part.to_be_bytes());
    key
}

/// The part number of `key`, a key under the snapshot key `snapshot_key` (as a prefix scan
/// of it finds them): `None` for the snapshot key itself and for any other shape.
pub fn snapshot_part_of(snapshot_key: &[u8], key: &[u8]) -> Option<u16> {
    let tail = key.strip_prefix(snapshot_key)?;
    let part: [u8; 2] = tail.try_into().ok()?;
    Some(u16::from_be_bytes(part)).filter(|&p| p > 0)
}

/// Parses a key of the snapshot keyspace: `(stream, sequence, None)` for a snapshot key,
/// `(stream, sequence, Some(part))` for a part's key.
pub fn parse_snapshot_key(key: &[u8]) -> Option<(StreamId, u64, Option<u16>)> {
    if key.first() != Some(&SNAPSHOTS) {
        return None;
    }
    let (stream, rest) = parse_stream_part(&key[1..])?;
    match rest.len() {
        8 => Some((stream, u64::from_be_bytes(rest.try_into().ok()?), None)),
        10 => {
            let seq = u64::from_be_bytes(rest[..8].try_into().ok()?);
            let part = u16::from_be_bytes(rest[8..].try_into().ok()?);
            (part > 0).then_some((stream, seq, Some(part)))
        }
        _ => None,
    }
}

pub fn global_key(position: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = GLOBAL;
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

pub fn parse_global_key(key: &[u8]) -> Option<u64> {
    let pos: [u8; 8] = key.get(1..)?.try_into().ok()?;
    Some(u64::from_be_bytes(pos))
}

/// One run of a global index entry: `count` events of `stream` from `first_sequence`, at
/// consecutive global positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalRun {
    pub stream: StreamId,
    pub first_sequence: u64,
    pub count: u32,
}

/// The global index has one entry per group commit, not one per event: it halves the keys
/// sled must insert per event. Value: run count (u32 LE), then per run the stream part,
/// first sequence (u64 LE) and count (u32 LE). The runs cover positions `first..` in order.
pub fn global_entry_value(runs: &[GlobalRun]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + runs.len() * 32);
    v.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for run in runs {
        put_stream_part(&mut v, &run.stream);
        v.extend_from_slice(&run.first_sequence.to_le_bytes());
        v.extend_from_slice(&run.count.to_le_bytes());
    }
    v
}

pub fn parse_global_entry(value: &[u8]) -> Option<Vec<GlobalRun>> {
    let n = u32::from_le_bytes(value.get(..4)?.try_into().ok()?) as usize;
    let mut rest = &value[4..];
    let mut runs = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let (stream, after) = parse_stream_part(rest)?;
        let first_sequence = u64::from_le_bytes(after.get(..8)?.try_into().ok()?);
        let count = u32::from_le_bytes(after.get(8..12)?.try_into().ok()?);
        rest = &after[12..];
        runs.push(GlobalRun {
            stream,
            first_sequence,
            count,
        });
    }
    (rest.is_empty() && !runs.is_empty()).then_some(runs)
}

/// Runs in one global index entry at most. A run takes at most 3 + 255 + 1024 + 12 bytes, so
/// an entry stays below 96 KiB, within the journal's value bound (`segments::VALUE_BYTES_MAX`),
/// which keeps sled from writing it, or a tree node holding it, to a blob file.
pub const GLOBAL_ENTRY_RUNS_MAX: usize = 64;

/// A global index entry's bytes at most (see [`global_entry_value`]).
pub const GLOBAL_ENTRY_BYTES_MAX: usize =
    4 + GLOBAL_ENTRY_RUNS_MAX * (3 + AGGREGATE_TYPE_BYTES_MAX + AGGREGATE_ID_BYTES_MAX + 8 + 4);

/// Events an index entry covers.
pub fn global_entry_len(runs: &[GlobalRun]) -> u64 {
    runs.iter().map(|r| r.count as u64).sum()
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_part_keys_parse_and_sort_after_their_snapshot() {
        let s = StreamId::new("ProductStock", "sku-1");
        let head = stream_key(SNAPSHOTS, &s, 300);
        let p1 = snapshot_part_key(&s, 300, 1);
        let p2 = snapshot_part_key(&s, 300, 2);
        let next = stream_key(SNAPSHOTS, &s, 301);
        assert!(head < p1 && p1 < p2 && p2 < next);
        assert_eq!(parse_snapshot_key(&head), Some((s.clone(), 300, None)));
        assert_eq!(parse_snapshot_key(&p2), Some((s.clone(), 300, Some(2))));
        assert_eq!(snapshot_part_of(&head, &p2), Some(2));
        assert_eq!(snapshot_part_of(&head, &head), None);
        assert_eq!(snapshot_part_of(&head, &next), None);
        // Part 0 and other lengths are no snapshot keys.
        assert_eq!(parse_snapshot_key(&snapshot_part_key(&s, 300, 0)), None);
        assert_eq!(parse_snapshot_key(&head[..head.len() - 1]), None);
        assert_eq!(parse_snapshot_key(&stream_key(EVENTS, &s, 300)), None);
    }

    #[test]
    fn stream_keys_round_trip_and_sort_by_sequence() {
        let s = StreamId::new("ProductStock", "sku-1");
        let k1 = stream_key(EVENTS, &s, 1);
        let k2 = stream_key(EVENTS, &s, 256);
        assert!(k1 < k2);
        assert_eq!(parse_stream_key(&k2), Some((s.clone(), 256)));
        assert!(k2.starts_with(&stream_prefix(EVENTS, &s)));
        // A stream whose id is a prefix of another's never shares its key prefix.
        let longer = StreamId::new("ProductStock", "sku-10");
        assert!(!stream_key(EVENTS, &longer, 1).starts_with(&stream_prefix(EVENTS, &s)));
        let runs = vec![
            GlobalRun {
                stream: s.clone(),
                first_sequence: 9,
                count: 2,
            },
            GlobalRun {
                stream: longer,
                first_sequence: 1,
                count: 1,
            },
        ];
        assert_eq!(
            parse_global_entry(&global_entry_value(&runs)),
            Some(runs.clone())
        );
        assert_eq!(global_entry_len(&runs), 3);
        assert_eq!(parse_global_entry(&global_entry_value(&runs)[..10]), None);
        assert_eq!(parse_global_key(&global_key(77)), Some(77));
        assert_eq!(prefix_successor(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_successor(&[255]), None);
    }

    #[test]
    fn a_pointer_entry_keeps_the_keys_in_order_in_runs_of_one_type() {
        let record = IdempotencyRecord {
            recorded_at_micros: 5,
            digest: [7; 32],
            aggregate_id: "a-1".into(),
            first_sequence: 3,
            count: 2,
        }
        .encode();
        let i_keys: Vec<Vec<u8>> = [("Order", 1u128), ("Order", 2), ("Payment", 3), ("Order", 4)]
            .iter()
            .map(|(ty, n)| idempotency_key(ty, &uuid::Uuid::from_u128(*n)))
            .collect();
        let pairs: Vec<(&[u8], &[u8])> = i_keys.iter().map(|k| (&k[..], &record[..])).collect();
        let (_, full) = idempotency_records_entry(&pairs);
        let pointer = idempotency_pointer_entry(0xA1B2, &full).unwrap();
        // Three runs: Order ×2, Payment, Order.
        assert_eq!(pointer.len(), 9 + (1 + 5 + 2) * 2 + (1 + 7 + 2) + 16 * 4);
        assert!(
            pointer.len() * 3 < full.len(),
            "{} of {}",
            pointer.len(),
            full.len()
        );
        assert_eq!(
            parse_idempotency_pointer_entry(&pointer),
            Some((0xA1B2, i_keys.clone()))
        );
        assert_eq!(idempotency_entry_keys(&pointer), Some(i_keys.clone()));
        assert_eq!(idempotency_entry_keys(&full), Some(i_keys));
        // Damage is refused, not misread.
        assert_eq!(
            parse_idempotency_pointer_entry(&pointer[..pointer.len() - 1]),
            None
        );
        assert_eq!(parse_idempotency_pointer_entry(&pointer[..9]), None);
        assert_eq!(
            idempotency_pointer_entry(1, &pointer),
            None,
            "not a records value"
        );
        let mut zero_run = pointer[..9].to_vec();
        zero_run.extend_from_slice(&[1, b'T', 0, 0]);
        assert_eq!(parse_idempotency_pointer_entry(&zero_run), None);
    }

    #[test]
    fn timer_and_idempotency_keys_round_trip_and_sort_by_time() {
        let s = StreamId::new("ProductStock", "sku-1");
        let before_epoch = timer_key(-5, &s);
        let at_epoch = timer_key(0, &s);
        let later = timer_key(1_700_000_000_000_000, &StreamId::new("A", "z"));
        assert!(before_epoch < at_epoch && at_epoch < later);
        assert_eq!(parse_timer_key(&before_epoch), Some((-5, s.clone())));
        assert_eq!(parse_timer_key(&at_epoch[..9]), None);
        let key = uuid::Uuid::from_u128(7);
        let by_time = idempotency_by_time_key(-1, "Order", &key);
        assert!(by_time < idempotency_by_time_key(1, "A", &key));
        assert_eq!(
            parse_idempotency_by_time_key(&by_time),
            Some((-1, idempotency_key("Order", &key)))
        );
        let record = IdempotencyRecord {
            recorded_at_micros: -3,
            digest: [9; 32],
            aggregate_id: "o-1".into(),
            first_sequence: 4,
            count: 2,
        };
        assert_eq!(
            IdempotencyRecord::decode(&record.encode()),
            Some(record.clone())
        );
        assert_eq!(IdempotencyRecord::decode(&record.encode()[1..]), None);
    }

    #[test]
    fn a_group_sweep_entry_lists_its_keys_and_sorts_by_the_latest_time() {
        let (a, b) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let (ia, ib) = (
            idempotency_key("Order", &a),
            idempotency_key("ProductStock", &b),
        );
        let (key, value) = idempotency_group_entry(&[(5, &ia[..]), (-2, &ib[..])]);
        assert_eq!(&key[..9], &idempotency_by_time_key(5, "Order", &a)[..9]);
        assert_eq!(key[9], 0);
        assert_eq!(&key[10..], &ia[1..]);
        assert_eq!(
            parse_idempotency_sweep_entry(&key, &value),
            Some(vec![(5, ia.clone()), (-2, ib)])
        );
        // A one-key entry (the earlier format) still parses, value empty.
        let one = idempotency_by_time_key(3, "Order", &a);
        assert_eq!(
            parse_idempotency_sweep_entry(&one, &[]),
            Some(vec![(3, ia)])
        );
        assert!(one < key, "ordered by time");
        assert_eq!(
            parse_idempotency_sweep_entry(&key, &value[..value.len() - 1]),
            None
        );
        assert_eq!(parse_idempotency_sweep_entry(&key, &[]), None);
    }

    #[test]
    fn the_timer_key_of_docs_design_md() {
        let at = 1_800_000_000_000_000; // 2027-01-15T08:00:00Z
        let key = timer_key(at, &StreamId::new("ProductStock", "sku-1"));
        let mut expected = vec![b't', 0x80, 0x06, 0x65, 0x17, 0x28, 0x98, 0x80, 0x00, 12];
        expected.extend_from_slice(b"ProductStock");
        expected.extend_from_slice(&[0, 5]);
        expected.extend_from_slice(b"sku-1");
        assert_eq!(key, expected);
    }
}
