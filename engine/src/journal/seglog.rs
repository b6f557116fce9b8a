//! The segment log: the write path docs/design.md chooses for issue #13 ("The next write path:
//! a segment log") — the files, the frame format, preallocation, torn tails, trimming at
//! close and reads by position. The committer writes it on `WritePath::Log` (the default for
//! new stores); `logindex` keeps the streams' heads over it.
//!
//! A group commit is one **frame**, written with one `pwrite` into a **segment** file that was
//! zero-filled and synced when it was made, so that the `fdatasync` that acknowledges the
//! group has only data to write (a file that grows must also journal its size). Each record
//! in a frame names the **address** of its stream's previous record, so a stream is read from
//! its head backwards, one read per record, and needs no index entry per event. An address is
//! a byte offset in the log as if its segments were one file: a segment's base address is the
//! sum of the sizes of the segments before it (segments keep their size for life). Pointing
//! at a position instead made each hop read the whole frame holding the record (measured:
//! docs/design.md, "The next write path").
//!
//! ```text
//! segment file   log/<first position, 20 digits>.seg, SEGMENT_BYTES (or one frame, if larger);
//!                <first position>-<count, 4 digits>.seg after segments that began at the
//!                same position (they held frames of writes alone)
//! frame header   magic u32 LE "ESLF" | format u8 (1, or 2: see below) | 0u8 ×3
//!                | first position u64 LE
//!                | record count u32 LE | write count u32 LE | body length u32 LE
//!                | CRC32C of the body u32 LE | CRC32C of the 32 bytes before u32 LE
//! frame body     per record: address of its stream's previous record u64 LE (0 at sequence
//!                            1: address 0 is the first frame's header, never a record)
//!                            | length u32 LE | the record's bytes (record formats 1 and 2)
//!                per write:  op u8 (1 put, 2 remove; format 2: | 0x40 if the key may be
//!                            scrubbed, | 0x80 if the value may) | key length u32 LE | key
//!                            | value length u32 LE | value (puts only)
//! ```
//!
//! **Scrubbable writes** (format 2, docs/security.md "Erasure"): a frame that carries a data
//! subject's index entry (`D`: its name and key ids) or a wrapped data key (`d`) is format 2.
//! Its body CRC leaves out the bytes of those keys and values (the ops and lengths stay in),
//! and its body ends with a second CRC32C, of those bytes alone (`u32 LE`, itself under the
//! body CRC). Forgetting a subject overwrites them with zeroes in place ([`scrub_frames`]),
//! in frames whose writes sled already holds for good, so that the log keeps no copy of an
//! erased key or of the subject's name. A scrub torn by a crash (some of the bytes zeroed)
//! breaks the body CRC of no frame; the second CRC then fails, which the log accepts only for
//! frames before the address the caller says scrubs may have reached (the writes cursor:
//! such frames are never applied again). Anywhere else a failed second CRC is a damaged
//! frame like any other (a torn last group, or corruption), so a key entry that will be
//! applied is checked as before. A write whose scrubbable bytes are all zeroes is scrubbed,
//! and decoding leaves it out. Every other frame stays format 1, byte for byte as before.
//!
//! Frames follow each other with no gap; positions run on from frame to frame and from
//! segment to segment with no gap. After the last frame the segment holds zeroes.
//!
//! **Opening** scans every frame header and checks every body's CRC. The first frame that
//! fails, in the last segment and at or above the caller's durable floor (the position up to
//! which the log is known to have been synced), is a torn last group — never acknowledged,
//! since acknowledgement follows the `fdatasync` — and is cut: the rest of the segment is
//! zeroed and synced. Anywhere else (an earlier segment, or below the floor) it is corruption
//! and the log refuses to open, naming the file and the offset.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes of a new segment. Zero-filling it costs one sequential write of this size, off the
/// acknowledgement path when [`SegmentLog::prepare_next`] is called ahead.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes of a log's first segment: a segment is at least this and at most the log's
/// segment size, and otherwise as large as the log before it, so that a small store (a test,
/// a demo) does not zero-fill 64 MiB for a few records, while a large one reaches full
/// segments after a few doublings.
pub const SEGMENT_BYTES_MIN: u64 = 1 << 20;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 36;
/// Largest frame body: a group commit is bounded far below this by the committer's
/// `batch_bytes_max`; the bound keeps a damaged length field from asking for gigabytes.
pub const FRAME_BODY_BYTES_MAX: usize = 256 << 20;
/// One frame in this many gets an entry in a segment's in-memory position table; a read by
/// position scans at most this many frame headers after the entry it starts from.
pub const TABLE_EVERY_FRAMES: usize = 64;

const MAGIC: u32 = u32::from_le_bytes(*b"ESLF");
/// A frame with no scrubbable write: its body CRC covers the whole body.
const FRAME_FORMAT: u8 = 1;
/// A frame with scrubbable writes: its body CRC leaves their scrubbable bytes out.
const FRAME_FORMAT_SCRUBBABLE: u8 = 2;
const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
/// Op flags (format 2 only): the write's key, or its value, may be scrubbed.
const OP_KEY_SCRUBBABLE: u8 = 0x40;
const OP_VALUE_SCRUBBABLE: u8 = 0x80;
const OP_FLAGS: u8 = OP_KEY_SCRUBBABLE | OP_VALUE_SCRUBBABLE;
/// Bytes of a format 2 body's second CRC, of its scrubbable bytes.
const SCRUB_CRC_BYTES: usize = 4;

/// Which parts of a write to `key` a scrub may zero: (key, value). A subject's index entry
/// names the subject in its key and its keys in its value; a data key's entry holds the
/// wrapped key in its value (its key is the key's id, which the erasure event names anyway).
fn scrubbable_parts(key: &[u8]) -> (bool, bool) {
    match key.first() {
        Some(&super::keys::DATA_SUBJECTS) => (true, true),
        Some(&super::keys::DATA_KEYS) => (false, true),
        _ => (false, false),
    }
}
const ZERO_CHUNK_BYTES: usize = 1 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
const PREPARED_NAME: &str = "next.seg.prepared";

/// What goes wrong with the segment log, by cause.
#[derive(Debug, thiserror::Error)]
pub enum SegLogError {
    #[error("segment log I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Stored bytes fail their checks where no torn write can explain them.
    #[error("segment log corrupt in {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    /// An append whose first position does not follow the log's last one.
    #[error("append at position {got}, but the log's next position is {expected}")]
    PositionGap { expected: u64, got: u64 },
    #[error("a frame body of {bytes} bytes exceeds {max}")]
    FrameTooLarge { bytes: usize, max: usize },
    #[error("position {position} is not in the log (it holds {first} ..= {last})")]
    NotFound {
        position: u64,
        first: u64,
        last: u64,
    },
    #[error("no record entry at log address {address}")]
    NoRecordAt { address: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SegLogError + '_ {
    move |source| SegLogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One record of a frame: its stream's previous record's address (0 for none) and its
/// stored bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRecord {
    pub previous_address: u64,
    pub bytes: Vec<u8>,
}

/// Bytes of a record's entry in a frame body before its bytes: previous address, length.
const RECORD_ENTRY_HEADER_BYTES: usize = 12;

/// One keyspace write carried by a frame, applied to the index with the frame's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameWrite {
    Put { key: Vec<u8>, value: Vec<u8> },
    Remove { key: Vec<u8> },
}

impl FrameWrite {
    pub fn key(&self) -> &[u8] {
        match self {
            FrameWrite::Put { key, .. } | FrameWrite::Remove { key } => key,
        }
    }
}

/// One group commit as stored: records at `first_position ..`, then the writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub first_position: u64,
    pub records: Vec<FrameRecord>,
    pub writes: Vec<FrameWrite>,
}

impl Frame {
    /// The position after this frame's last record.
    pub fn end_position(&self) -> u64 {
        self.first_position + self.records.len() as u64
    }

    /// Bytes of the encoded frame, header included (what [`SegmentLog::reserve`] takes): it
    /// does not depend on the addresses the records hold.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.body_len()
    }

    /// The address of each record's entry, for a frame written at `frame_address`.
    pub fn record_addresses(&self, frame_address: u64) -> Vec<u64> {
        let mut at = frame_address + FRAME_HEADER_BYTES as u64;
        self.records
            .iter()
            .map(|r| {
                let address = at;
                at += (RECORD_ENTRY_HEADER_BYTES + r.bytes.len()) as u64;
                address
            })
            .collect()
    }

    /// Bytes of the body's record entries: where its writes begin.
    fn records_bytes(&self) -> usize {
        self.records
            .iter()
            .map(|r| RECORD_ENTRY_HEADER_BYTES + r.bytes.len())
            .sum()
    }

    fn body_len(&self) -> usize {
        let writes: usize = self
            .writes
            .iter()
            .map(|w| match w {
                FrameWrite::Put { key, value } => 9 + key.len() + value.len(),
                FrameWrite::Remove { key } => 5 + key.len(),
            })
            .sum();
        let trailer = match self.has_scrubbable_writes() {
            true => SCRUB_CRC_BYTES,
            false => 0,
        };
        self.records_bytes() + writes + trailer
    }

    /// Whether the frame is written in format 2 (see [`scrubbable_parts`]).
    fn has_scrubbable_writes(&self) -> bool {
        self.writes.iter().any(|w| match w {
            FrameWrite::Put { key, .. } => scrubbable_parts(key) != (false, false),
            FrameWrite::Remove { key } => scrubbable_parts(key).0,
        })
    }

    /// The frame's bytes, header and body: format 2 if a write may be scrubbed, else 1.
    pub fn encode(&self) -> Result<Vec<u8>, SegLogError> {
        let body_len = self.body_len();
        if body_len > FRAME_BODY_BYTES_MAX {
            return Err(SegLogError::FrameTooLarge {
                bytes: body_len,
                max: FRAME_BODY_BYTES_MAX,
            });
        }
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body_len);
        out.resize(FRAME_HEADER_BYTES, 0);
        for r in &self.records {
            out.extend_from_slice(&r.previous_address.to_le_bytes());
            out.extend_from_slice(&(r.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&r.bytes);
        }
        let mut format = FRAME_FORMAT;
        // The second CRC of a format 2 body, of the scrubbable bytes in body order (what
        // `scrubbable_crc` computes from a body read back).
        let mut scrub_crc = 0u32;
        for w in &self.writes {
            let (op, key, value) = match w {
                FrameWrite::Put { key, value } => (OP_PUT, key, Some(value)),
                FrameWrite::Remove { key } => (OP_REMOVE, key, None),
            };
            let (key_scrubbable, value_scrubbable) = scrubbable_parts(key);
            let mut flags = 0;
            if key_scrubbable {
                flags |= OP_KEY_SCRUBBABLE;
            }
            if value_scrubbable && value.is_some() {
                flags |= OP_VALUE_SCRUBBABLE;
            }
            if flags != 0 {
                format = FRAME_FORMAT_SCRUBBABLE;
            }
            if flags & OP_KEY_SCRUBBABLE != 0 {
                scrub_crc = crc32c::crc32c_append(scrub_crc, key);
            }
            if let (Some(value), true) = (value, flags & OP_VALUE_SCRUBBABLE != 0) {
                scrub_crc = crc32c::crc32c_append(scrub_crc, value);
            }
            out.push(op | flags);
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            if let Some(value) = value {
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
        }
        if format == FRAME_FORMAT_SCRUBBABLE {
            out.extend_from_slice(&scrub_crc.to_le_bytes());
        }
        assert_eq!(out.len(), FRAME_HEADER_BYTES + body_len, "frame length");
        let mut header = Header {
            format,
            first_position: self.first_position,
            records: self.records.len() as u32,
            writes: self.writes.len() as u32,
            body_len: body_len as u32,
            body_crc: 0,
        };
        header.body_crc = body_crc(&header, &out[FRAME_HEADER_BYTES..])
            .expect("a body just encoded has its layout");
        header.write(&mut out[..FRAME_HEADER_BYTES]);
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    format: u8,
    first_position: u64,
    records: u32,
    writes: u32,
    body_len: u32,
    body_crc: u32,
}

/// Why a header could not be read; `Zero` is the clean end of a segment's frames.
enum HeaderRead {
    Zero,
    Bad(&'static str),
    Ok(Header),
}

impl Header {
    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = self.format;
        out[5..8].fill(0);
        out[8..16].copy_from_slice(&self.first_position.to_le_bytes());
        out[16..20].copy_from_slice(&self.records.to_le_bytes());
        out[20..24].copy_from_slice(&self.writes.to_le_bytes());
        out[24..28].copy_from_slice(&self.body_len.to_le_bytes());
        out[28..32].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
    }

    fn read(bytes: &[u8]) -> HeaderRead {
        if bytes.iter().all(|&b| b == 0) {
            return HeaderRead::Zero;
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        if u32_at(32) != crc32c::crc32c(&bytes[0..32]) {
            return HeaderRead::Bad("frame header CRC mismatch");
        }
        if u32_at(0) != MAGIC {
            return HeaderRead::Bad("not a frame (magic)");
        }
        let format = bytes[4];
        if !matches!(format, FRAME_FORMAT | FRAME_FORMAT_SCRUBBABLE) || bytes[5..8] != [0, 0, 0] {
            return HeaderRead::Bad("unknown frame format");
        }
        let body_len = u32_at(24);
        if body_len as usize > FRAME_BODY_BYTES_MAX {
            return HeaderRead::Bad("frame body length over the limit");
        }
        HeaderRead::Ok(Header {
            format,
            first_position: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
            records: u32_at(16),
            writes: u32_at(20),
            body_len,
            body_crc: u32_at(28),
        })
    }

    fn frame_bytes(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + self.body_len as u64
    }
}

/// Where one write lies in a frame body: its op byte (flags included), and the byte ranges
/// of its key and of its value (puts only).
struct WriteSpan {
    op: u8,
    key: std::ops::Range<usize>,
    value: Option<std::ops::Range<usize>>,
}

impl WriteSpan {
    /// The ranges a scrub may zero, in body order.
    fn scrubbable(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let key = (self.op & OP_KEY_SCRUBBABLE != 0).then(|| self.key.clone());
        let value = (self.op & OP_VALUE_SCRUBBABLE != 0)
            .then(|| self.value.clone())
            .flatten();
        key.into_iter().chain(value)
    }

    /// Whether a scrub zeroed it: it has scrubbable bytes, and all are zeroes (a key or a
    /// value that may be scrubbed is never all zeroes when written).
    fn is_scrubbed(&self, body: &[u8]) -> bool {
        self.scrubbable().map(|r| r.len()).sum::<usize>() > 0
            && self.scrubbable().all(|r| body[r].iter().all(|&b| b == 0))
    }
}

/// Where a body's parts lie: each record's previous address and bytes, and each write.
struct BodyLayout {
    records: Vec<(u64, std::ops::Range<usize>)>,
    writes: Vec<WriteSpan>,
}

/// The layout of a body not yet checked, bounds-checked: each record's previous address
/// and byte range, and each write's span.
fn body_layout(header: &Header, body: &[u8]) -> Result<BodyLayout, &'static str> {
    let mut at = 0usize;
    let mut take = taker(body, &mut at);
    let u32_in = |r: std::ops::Range<usize>| u32::from_le_bytes(body[r].try_into().unwrap());
    let mut records = Vec::with_capacity(header.records as usize);
    for _ in 0..header.records {
        let previous_address = u64::from_le_bytes(body[take(8)?].try_into().unwrap());
        let len = u32_in(take(4)?) as usize;
        records.push((previous_address, take(len)?));
    }
    drop(take);
    let writes = writes_layout(header, body, at)?;
    Ok(BodyLayout { records, writes })
}

/// Ranges of `bytes` taken one after another from `*at`, bounds-checked.
fn taker<'a>(
    bytes: &'a [u8],
    at: &'a mut usize,
) -> impl FnMut(usize) -> Result<std::ops::Range<usize>, &'static str> + 'a {
    move |n| {
        let end = at.checked_add(n).filter(|&e| e <= bytes.len());
        let end = end.ok_or("frame body shorter than its contents")?;
        let range = *at..end;
        *at = end;
        Ok(range)
    }
}

/// The spans of the writes that fill `body` from `start` to its end, or for format 2 to its
/// second CRC (bounds-checked).
fn writes_layout(
    header: &Header,
    body: &[u8],
    start: usize,
) -> Result<Vec<WriteSpan>, &'static str> {
    let trailer = match header.format {
        FRAME_FORMAT_SCRUBBABLE => SCRUB_CRC_BYTES,
        _ => 0,
    };
    let writes_end = body
        .len()
        .checked_sub(trailer)
        .ok_or("frame body shorter than its contents")?;
    let body = &body[..writes_end];
    let mut at = start;
    let mut take = taker(body, &mut at);
    let u32_in = |r: std::ops::Range<usize>| u32::from_le_bytes(body[r].try_into().unwrap());
    let mut writes = Vec::with_capacity(header.writes as usize);
    for _ in 0..header.writes {
        let op = body[take(1)?][0];
        if op & OP_FLAGS != 0 && header.format != FRAME_FORMAT_SCRUBBABLE {
            return Err("unknown write op in a frame");
        }
        let key_len = u32_in(take(4)?) as usize;
        let key = take(key_len)?;
        let value = match op & !OP_FLAGS {
            OP_PUT => {
                let value_len = u32_in(take(4)?) as usize;
                Some(take(value_len)?)
            }
            OP_REMOVE => None,
            _ => return Err("unknown write op in a frame"),
        };
        writes.push(WriteSpan { op, key, value });
    }
    drop(take);
    if at != body.len() {
        return Err("frame body longer than its contents");
    }
    Ok(writes)
}

/// The CRC a body's header must carry: of the whole body for format 1; for format 2 of the
/// body without the scrubbable bytes of its writes (so that a scrub, whole or torn, keeps
/// it). `Err` when a format 2 body has no valid layout.
fn body_crc(header: &Header, body: &[u8]) -> Result<u32, &'static str> {
    if header.format == FRAME_FORMAT {
        return Ok(crc32c::crc32c(body));
    }
    Ok(masked_crc(body, &body_layout(header, body)?.writes))
}

/// The CRC32C of `body` without the scrubbable bytes of `writes`.
fn masked_crc(body: &[u8], writes: &[WriteSpan]) -> u32 {
    let mut crc = 0u32;
    let mut at = 0usize;
    for range in writes.iter().flat_map(WriteSpan::scrubbable) {
        crc = crc32c::crc32c_append(crc, &body[at..range.start]);
        at = range.end;
    }
    crc32c::crc32c_append(crc, &body[at..])
}

/// The CRC32C of the scrubbable bytes of `writes`, in body order: a format 2 body's second
/// CRC.
fn scrubbable_crc(body: &[u8], writes: &[WriteSpan]) -> u32 {
    writes
        .iter()
        .flat_map(WriteSpan::scrubbable)
        .fold(0, |crc, range| crc32c::crc32c_append(crc, &body[range]))
}

/// Whether a format 2 body of layout `writes` (its body CRC checked) still holds the
/// scrubbable bytes it was written with: its second CRC matches them.
fn key_entries_intact(body: &[u8], writes: &[WriteSpan]) -> bool {
    let stored = u32::from_le_bytes(body[body.len() - SCRUB_CRC_BYTES..].try_into().unwrap());
    scrubbable_crc(body, writes) == stored
}

/// Parses a checked body into the frame it holds, leaving out scrubbed writes.
fn decode_body(header: &Header, body: &[u8]) -> Result<Frame, &'static str> {
    Ok(decode_layout(header, body, body_layout(header, body)?))
}

/// The frame a checked body of layout `layout` holds, leaving out scrubbed writes.
fn decode_layout(header: &Header, body: &[u8], layout: BodyLayout) -> Frame {
    let BodyLayout { records, writes } = layout;
    let records = records
        .into_iter()
        .map(|(previous_address, bytes)| FrameRecord {
            previous_address,
            bytes: body[bytes].to_vec(),
        })
        .collect();
    let writes = writes
        .iter()
        .filter(|w| !w.is_scrubbed(body))
        .map(|w| span_write(w, body))
        .collect();
    Frame {
        first_position: header.first_position,
        records,
        writes,
    }
}

/// The write `span` describes in `body`.
fn span_write(span: &WriteSpan, body: &[u8]) -> FrameWrite {
    let key = body[span.key.clone()].to_vec();
    match &span.value {
        Some(value) => FrameWrite::Put {
            key,
            value: body[value.clone()].to_vec(),
        },
        None => FrameWrite::Remove { key },
    }
}

/// One segment file and where its frames are.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    /// The address of its first byte: the sizes of the segments before it, summed.
    base_address: u64,
    /// Position of its first record.
    first_position: u64,
    /// Position after its last record.
    end_position: u64,
    /// Bytes of its frames (the next frame goes here).
    used_bytes: u64,
    /// The file's length.
    capacity_bytes: u64,
    /// (first position, byte offset) of every `TABLE_EVERY_FRAMES`th frame, from the first.
    table: Vec<(u64, u64)>,
    frames: usize,
    /// Its frames that hold scrubbable writes (format 2: one per new data key, erasure,
    /// upgrade or rotation): the frame's byte offset and where its writes begin in its
    /// body, what a scrub reads instead of every frame.
    scrubbable: Vec<(u64, u32)>,
    /// Its frames of format 1 that carry key entries (written before format 2): no scrub
    /// can zero them.
    unscrubbable_key_frames: usize,
}

impl Segment {
    /// Notes the frame at `offset`, whose `header` was read and whose body was checked and
    /// decoded as `frame`.
    fn note_frame(&mut self, header: &Header, offset: u64, frame: &Frame) {
        if self.frames % TABLE_EVERY_FRAMES == 0 {
            self.table.push((header.first_position, offset));
        }
        if header.format == FRAME_FORMAT_SCRUBBABLE {
            self.scrubbable.push((offset, frame.records_bytes() as u32));
        } else if frame.has_scrubbable_writes() {
            // Written before frame format 2: its CRC covers the key entries.
            self.unscrubbable_key_frames += 1;
        }
        self.frames += 1;
        self.used_bytes = offset + header.frame_bytes();
        self.end_position = header.first_position + header.records as u64;
    }

    fn read_header(&self, offset: u64) -> Result<HeaderRead, SegLogError> {
        let mut bytes = [0u8; FRAME_HEADER_BYTES];
        if offset + FRAME_HEADER_BYTES as u64 > self.capacity_bytes {
            return Ok(HeaderRead::Zero);
        }
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(io(&self.path))?;
        Ok(Header::read(&bytes))
    }

    /// The checked frame at `offset` whose header is `header`. A format 2 frame whose key
    /// entries fail their second CRC is accepted only if it ends at or before
    /// `scrubbed_before` (a scrub may have zeroed them, see the module's doc).
    fn read_frame(
        &self,
        header: &Header,
        offset: u64,
        scrubbed_before: u64,
    ) -> Result<Frame, SegLogError> {
        let corrupt = |reason| SegLogError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        };
        if offset + header.frame_bytes() > self.capacity_bytes {
            return Err(corrupt("frame runs past the end of its segment"));
        }
        FRAME_BODY.with_borrow_mut(|scratch| {
            let len = header.body_len as usize;
            if scratch.len() < len {
                // Exactly: a doubled capacity past the bound below would free the buffer
                // after every read of a frame a little larger than the last.
                scratch.reserve_exact(len - scratch.len());
                scratch.resize(len, 0);
            }
            let frame = self.check_body(header, offset, scrubbed_before, &mut scratch[..len]);
            if scratch.capacity() > FRAME_BODY_KEPT_BYTES_MAX {
                *scratch = Vec::new();
            }
            frame
        })
    }

    /// [`Segment::read_frame`] into `body`, the frame's body's length.
    fn check_body(
        &self,
        header: &Header,
        offset: u64,
        scrubbed_before: u64,
        body: &mut [u8],
    ) -> Result<Frame, SegLogError> {
        let corrupt = |reason| SegLogError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        };
        self.file
            .read_exact_at(body, offset + FRAME_HEADER_BYTES as u64)
            .map_err(io(&self.path))?;
        let body = &*body;
        if header.format == FRAME_FORMAT {
            if crc32c::crc32c(body) != header.body_crc {
                return Err(corrupt("frame body CRC mismatch"));
            }
            return decode_body(header, body).map_err(corrupt);
        }
        // Format 2: the layout once, for both CRCs and the frame. A body too damaged to
        // have a layout is a failed CRC as well.
        let layout = body_layout(header, body).map_err(|_| corrupt("frame body CRC mismatch"))?;
        if masked_crc(body, &layout.writes) != header.body_crc {
            return Err(corrupt("frame body CRC mismatch"));
        }
        let end = self.base_address + offset + header.frame_bytes();
        if end > scrubbed_before && !key_entries_intact(body, &layout.writes) {
            return Err(corrupt("frame key entries CRC mismatch"));
        }
        Ok(decode_layout(header, body, layout))
    }
}

thread_local! {
    /// The body of the frame this thread reads, a buffer kept between reads: a frame is
    /// copied out of it ([`decode_layout`]), so a fresh zeroed buffer per read was only an
    /// allocation and a `memset` of the whole body (a twentieth of a consumer's catch-up
    /// read: perf, 2026-11-28).
    static FRAME_BODY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes of [`FRAME_BODY`] a thread keeps after a read: a larger buffer (a read of an
/// unusually large group) is freed.
const FRAME_BODY_KEPT_BYTES_MAX: usize = 1 << 20;

/// What opening found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub frames: usize,
    /// Where unacknowledged bytes after the last good frame (a torn group and anything
    /// behind it) were zeroed: the segment and the offset the cut began at.
    pub cut: Option<(PathBuf, u64)>,
}

/// The segment log of one store directory (`<dir>/log`).
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    /// The position the next frame must start at.
    next_position: u64,
    /// A zero-filled, synced file ready to become the next segment.
    prepared: Option<File>,
    /// The active segment was written since the last `sync`.
    dirty: bool,
    /// A segment was created since the last `sync`: the directory needs a sync too.
    dir_dirty: bool,
    /// False for a log opened with [`SegmentLog::open_read_only`].
    writable: bool,
    /// Frames that end at or before this address may have had key entries scrubbed (see
    /// the module's doc): their failed second CRC is not damage.
    scrubbed_before: u64,
    /// Frame starts that position look-ups met beyond the segments' tables, by first
    /// position (see [`SegmentLog::frame_address_of`]).
    located: Mutex<Located>,
}

/// Frame starts a position look-up read on its way (first position → address), so that the
/// next look-up nearby starts at the nearest one instead of at the table's entry, up to
/// [`TABLE_EVERY_FRAMES`] headers back. Readers of one partition of a topic jump over the
/// frames of the other partitions: a catch-up read of eight partitions made more than one
/// `pread` of a header for every two messages (strace, 2026-11-28), most of them these
/// scans. Bounded by [`LOCATED_FRAMES_MAX`] (emptied when full); every start in it is a
/// frame's, as frames never move while the log is open.
#[derive(Debug, Default)]
struct Located {
    starts: BTreeMap<u64, u64>,
}

/// Frame starts [`Located`] keeps at most (about 40 bytes each).
const LOCATED_FRAMES_MAX: usize = 16_384;

impl Located {
    fn note(&mut self, first_position: u64, address: u64) {
        if self.starts.len() >= LOCATED_FRAMES_MAX {
            self.starts.clear();
        }
        self.starts.insert(first_position, address);
    }
}

/// A sync of everything appended before it was taken ([`SegmentLog::take_sync`]), run
/// without holding the log: the writer appends the next frames meanwhile.
#[derive(Debug)]
pub struct PendingSync {
    file: Option<(File, PathBuf)>,
    dir: Option<PathBuf>,
}

impl PendingSync {
    /// `fdatasync` of the segment written to, then of the directory if a segment was made.
    pub fn run(self) -> Result<(), SegLogError> {
        if let Some((file, path)) = &self.file {
            file.sync_data().map_err(io(path))?;
        }
        if let Some(dir) = &self.dir {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`. `durable_floor`: positions below it are known
    /// to have been synced (the heads checkpoint's cursor; for a read-only open also the
    /// Merkle maintainer's size); a bad frame there is corruption, not a torn tail. `first_position`: the position a new, empty log starts at (1, or the one
    /// after an old store's last sled record).
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        durable_floor: u64,
        first_position: u64,
    ) -> Result<(SegmentLog, OpenReport), SegLogError> {
        Self::open_with(dir, segment_bytes, durable_floor, first_position, 0, true)
    }

    /// [`Self::open`] of a log whose frames ending at or before `scrubbed_before` may have
    /// had key entries scrubbed (the store's writes cursor: see the module's doc).
    pub fn open_scrubbed(
        dir: &Path,
        segment_bytes: u64,
        durable_floor: u64,
        first_position: u64,
        scrubbed_before: u64,
    ) -> Result<(SegmentLog, OpenReport), SegLogError> {
        Self::open_with(
            dir,
            segment_bytes,
            durable_floor,
            first_position,
            scrubbed_before,
            true,
        )
    }

    /// Opens the log for reading only: nothing is created, cut, zeroed or removed. A torn
    /// last group (what [`Self::open`] would cut) ends the log as read, unless it lies below
    /// `durable_floor` (as for [`Self::open`]: then the log is refused as corrupt); appending
    /// to a log opened so is a bug. `scrubbed_before` as for [`Self::open_scrubbed`].
    pub fn open_read_only(
        dir: &Path,
        segment_bytes: u64,
        durable_floor: u64,
        first_position: u64,
        scrubbed_before: u64,
    ) -> Result<SegmentLog, SegLogError> {
        Self::open_with(
            dir,
            segment_bytes,
            durable_floor,
            first_position,
            scrubbed_before,
            false,
        )
        .map(|(log, _)| log)
    }

    /// Lets frames ending at or before `address` fail their key entries' second CRC: a
    /// scrub calls it before it zeroes any (it never lowers the bound).
    pub fn allow_scrubbed_before(&mut self, address: u64) {
        self.scrubbed_before = self.scrubbed_before.max(address);
    }

    /// Lowers the bound of [`Self::allow_scrubbed_before`] to `address` at most: a writable
    /// open that finds the writes cursor past the log's end (buffered mode after a power cut)
    /// moves the cursor back, and frames appended past the new end are checked whole.
    pub fn limit_scrubbed_before(&mut self, address: u64) {
        self.scrubbed_before = self.scrubbed_before.min(address);
    }

    fn open_with(
        dir: &Path,
        segment_bytes: u64,
        durable_floor: u64,
        first_position: u64,
        scrubbed_before: u64,
        writable: bool,
    ) -> Result<(SegmentLog, OpenReport), SegLogError> {
        assert!(
            segment_bytes >= (FRAME_HEADER_BYTES as u64) * 2,
            "segment too small"
        );
        if writable && !dir.exists() {
            // The log's folder, and its name in the store's folder, must be durable before
            // any frame in it is acknowledged: a power cut may otherwise drop the whole
            // folder (found by the power-loss test).
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            sync_dir(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        } else if !dir.exists() {
            if first_position < durable_floor {
                return Err(SegLogError::Corrupt {
                    path: dir.to_path_buf(),
                    offset: 0,
                    reason: "the log is missing, below its durable floor",
                });
            }
            return Ok((
                SegmentLog {
                    dir: dir.to_path_buf(),
                    segment_bytes,
                    segments: Vec::new(),
                    next_position: first_position,
                    prepared: None,
                    dirty: false,
                    dir_dirty: false,
                    writable,
                    scrubbed_before,
                    located: Mutex::default(),
                },
                OpenReport::default(),
            ));
        }
        let mut names: Vec<((u64, u32), PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
                continue;
            };
            if let Some(first_and_count) = parse_segment_stem(stem) {
                names.push((first_and_count, entry.path()));
            }
        }
        names.sort();
        let names: Vec<(u64, PathBuf)> = names
            .into_iter()
            .map(|((first, _), path)| (first, path))
            .collect();
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: Vec::with_capacity(names.len()),
            next_position: names.first().map_or(first_position, |(first, _)| *first),
            prepared: None,
            dirty: false,
            dir_dirty: false,
            writable,
            scrubbed_before,
            located: Mutex::default(),
        };
        let mut report = OpenReport::default();
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            if first != log.next_position {
                return Err(SegLogError::Corrupt {
                    path,
                    offset: 0,
                    reason: "segment does not start where the one before it ends",
                });
            }
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&path)
                .map_err(io(&path))?;
            let capacity_bytes = file.metadata().map_err(io(&path))?.len();
            let mut segment = Segment {
                path,
                file,
                base_address: log.end_address(),
                first_position: first,
                end_position: first,
                used_bytes: 0,
                capacity_bytes,
                table: Vec::new(),
                frames: 0,
                scrubbable: Vec::new(),
                unscrubbable_key_frames: 0,
            };
            let mut offset = 0u64;
            // Why the frames of this segment end at `offset`: `None` for zeroes.
            let failure = loop {
                let failure = match segment.read_header(offset)? {
                    HeaderRead::Zero => None,
                    HeaderRead::Bad(reason) => Some(reason),
                    HeaderRead::Ok(header) if header.first_position != segment.end_position => {
                        Some("frame does not start where the one before it ends")
                    }
                    HeaderRead::Ok(header) => {
                        match segment.read_frame(&header, offset, scrubbed_before) {
                            Ok(frame) => {
                                segment.note_frame(&header, offset, &frame);
                                report.frames += 1;
                                offset += header.frame_bytes();
                                continue;
                            }
                            Err(SegLogError::Corrupt { reason, .. }) => Some(reason),
                            Err(e) => return Err(e),
                        }
                    }
                };
                break failure;
            };
            if last {
                if segment.end_position < durable_floor {
                    return Err(SegLogError::Corrupt {
                        path: segment.path.clone(),
                        offset,
                        reason: failure.unwrap_or("the log ends before its durable floor"),
                    });
                }
                // Everything after the last good frame was never acknowledged: a torn group,
                // or later groups written behind a torn one (a power cut keeps any subset of
                // the unsynced pages). Zero it, so that a frame written here next is followed
                // by zeroes and no stale frame can ever line up behind it. (Read only: the
                // log ends there, and nothing is changed.)
                if writable && zero_from(&segment.file, &segment.path, offset, capacity_bytes)? {
                    report.cut = Some((segment.path.clone(), offset));
                }
                // A segment trimmed at close whose new length a crash kept in the page cache
                // only: make the length durable before a next segment's addresses build on it
                // (see `trim`).
                if writable && offset == capacity_bytes {
                    segment.file.sync_all().map_err(io(&segment.path))?;
                }
            } else if let Some(reason) = failure {
                // Synced before the next segment was started: no torn write explains it.
                return Err(SegLogError::Corrupt {
                    path: segment.path.clone(),
                    offset,
                    reason,
                });
            }
            log.next_position = segment.end_position;
            log.segments.push(segment);
        }
        report.segments = log.segments.len();
        // A prepared file left by an earlier run is complete only if it was renamed; an
        // unrenamed one may be partly zeroed. Start it again.
        let prepared = dir.join(PREPARED_NAME);
        if writable && prepared.exists() {
            std::fs::remove_file(&prepared).map_err(io(&prepared))?;
        }
        // A log without segments (their files removed) never met the check in the loop.
        if log.next_position < durable_floor {
            return Err(SegLogError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: "the log ends before its durable floor",
            });
        }
        Ok((log, report))
    }

    /// The position the next appended frame must start at.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// The first position the log holds (its first segment's), or the next one when empty.
    pub fn first_position(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.next_position, |s| s.first_position)
    }

    /// The address after the last segment (where a new one would begin).
    fn end_address(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.base_address + s.capacity_bytes)
    }

    /// The address `frame` will be written at by the next [`Self::append`], starting a new
    /// segment first if it does not fit in the current one. A frame's length does not depend
    /// on the addresses its records hold, so a caller reserves with placeholders, then fills
    /// in the pointers of records whose predecessor is in the same frame
    /// ([`Frame::record_addresses`]).
    pub fn reserve(&mut self, frame: &Frame) -> Result<u64, SegLogError> {
        assert!(self.writable, "append to a segment log opened read-only");
        if frame.first_position != self.next_position {
            return Err(SegLogError::PositionGap {
                expected: self.next_position,
                got: frame.first_position,
            });
        }
        let frame_bytes = frame.encoded_len() as u64;
        let fits = self
            .segments
            .last()
            .is_some_and(|s| s.used_bytes + frame_bytes <= s.capacity_bytes);
        if !fits {
            self.start_segment(frame.first_position, frame_bytes)?;
        }
        let segment = self.segments.last().expect("a segment was started");
        Ok(segment.base_address + segment.used_bytes)
    }

    /// Writes `frame` after the last one (one `pwrite`) and returns its address; durable
    /// only after [`Self::sync`].
    pub fn append(&mut self, frame: &Frame) -> Result<u64, SegLogError> {
        let address = self.reserve(frame)?;
        let bytes = frame.encode()?;
        let segment = self.segments.last_mut().expect("reserved");
        let offset = segment.used_bytes;
        assert_eq!(segment.base_address + offset, address, "the reserved place");
        segment
            .file
            .write_all_at(&bytes, offset)
            .map_err(io(&segment.path))?;
        let header = match Header::read(&bytes[..FRAME_HEADER_BYTES]) {
            HeaderRead::Ok(h) => h,
            _ => unreachable!("a header just encoded reads back"),
        };
        segment.note_frame(&header, offset, frame);
        self.next_position = frame.end_position();
        self.dirty = true;
        Ok(address)
    }

    /// The record whose entry is at `address` (from a previous-address pointer or a head):
    /// one read of the entry, nothing else of its frame. The caller checks that the record is
    /// the one it expected (its bytes carry their own CRC, stream, sequence and position).
    pub fn record_at_address(&self, address: u64) -> Result<FrameRecord, SegLogError> {
        let i = self.segments.partition_point(|s| s.base_address <= address);
        let segment = i
            .checked_sub(1)
            .map(|i| &self.segments[i])
            .filter(|s| address - s.base_address + RECORD_ENTRY_HEADER_BYTES as u64 <= s.used_bytes)
            .ok_or(SegLogError::NoRecordAt { address })?;
        let offset = address - segment.base_address;
        let mut head = [0u8; RECORD_ENTRY_HEADER_BYTES];
        segment
            .file
            .read_exact_at(&mut head, offset)
            .map_err(io(&segment.path))?;
        let previous_address = u64::from_le_bytes(head[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(head[8..12].try_into().unwrap()) as u64;
        let start = offset + RECORD_ENTRY_HEADER_BYTES as u64;
        if start + len > segment.used_bytes {
            return Err(SegLogError::Corrupt {
                path: segment.path.clone(),
                offset,
                reason: "a record entry runs past its segment's frames",
            });
        }
        let mut bytes = vec![0u8; len as usize];
        segment
            .file
            .read_exact_at(&mut bytes, start)
            .map_err(io(&segment.path))?;
        Ok(FrameRecord {
            previous_address,
            bytes,
        })
    }

    /// Up to `len` bytes of the log from `address`, within the segment holding it and
    /// its frames (fewer at their end): a reader's window onto records it is about to
    /// follow pointers through.
    pub fn read_span(&self, address: u64, len: usize) -> Result<(u64, Vec<u8>), SegLogError> {
        let mut bytes = Vec::new();
        let base = self.read_span_into(address, len, &mut bytes)?;
        Ok((base, bytes))
    }

    /// [`SegmentLog::read_span`] into `bytes` (replaced; its memory reused), returning the
    /// base address of the segment. A walk back along a stream reads window after window:
    /// a fresh zeroed buffer for each was a fifteenth of a full replay's instructions
    /// (callgrind, 2026-11-28).
    pub fn read_span_into(
        &self,
        address: u64,
        len: usize,
        bytes: &mut Vec<u8>,
    ) -> Result<u64, SegLogError> {
        let segment = self.segment_with_frames_at(address)?;
        let offset = address - segment.base_address;
        let len = (len as u64).min(segment.used_bytes - offset) as usize;
        // Zeroed only where the buffer grows: `read_exact_at` overwrites all of it, or fails
        // (and the caller drops what it holds).
        if bytes.len() < len {
            bytes.resize(len, 0);
        } else {
            bytes.truncate(len);
        }
        if let Err(e) = segment.file.read_exact_at(bytes, offset) {
            bytes.clear();
            return Err(io(&segment.path)(e));
        }
        Ok(segment.base_address)
    }

    /// Makes every appended frame durable: `fdatasync` of the active segment (and of the
    /// directory when a segment was created since the last sync).
    pub fn sync(&mut self) -> Result<(), SegLogError> {
        if self.dirty {
            if let Some(segment) = self.segments.last() {
                segment.file.sync_data().map_err(io(&segment.path))?;
            }
            self.dirty = false;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// What syncing everything appended so far takes, handed out so that the `fdatasync`
    /// runs without the log (the writer goes on appending; the sync covers at least what was
    /// appended before this call). Segments before the active one were synced when it began.
    pub fn take_sync(&mut self) -> Result<PendingSync, SegLogError> {
        let file = match self.segments.last() {
            Some(segment) if self.dirty => Some((
                segment.file.try_clone().map_err(io(&segment.path))?,
                segment.path.clone(),
            )),
            _ => None,
        };
        self.dirty = false;
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        Ok(PendingSync { file, dir })
    }

    /// Marks the active segment as written to, so that the next sync covers it whatever was
    /// synced before (opening calls it: frames that survived a crash may be in the page
    /// cache only).
    pub fn mark_unsynced(&mut self) {
        self.dirty = !self.segments.is_empty();
        self.dir_dirty = true;
    }

    /// Zero-fills and syncs the file the next segment will be, so that starting it costs
    /// a rename instead of a segment's worth of writes. Call it off the acknowledgement path.
    pub fn prepare_next(&mut self) -> Result<(), SegLogError> {
        if self.prepared.is_none() {
            let path = self.dir.join(PREPARED_NAME);
            self.prepared = Some(zero_filled(&path, self.next_segment_bytes(), false)?);
        }
        Ok(())
    }

    /// The size of the next segment: as large as the log so far, within
    /// [`SEGMENT_BYTES_MIN`] ..= the log's segment size.
    fn next_segment_bytes(&self) -> u64 {
        self.end_address().clamp(
            SEGMENT_BYTES_MIN.min(self.segment_bytes),
            self.segment_bytes,
        )
    }

    /// Where a prepared next segment should be made, and its size, when the active segment
    /// is past half full and none is ready: [`prepare_file`] makes it without the log, and
    /// [`Self::install_prepared`] hands it over.
    pub fn wants_prepared(&self) -> Option<(PathBuf, u64)> {
        let active = self.segments.last()?;
        (self.writable && self.prepared.is_none() && active.used_bytes * 2 >= active.capacity_bytes)
            .then(|| (self.dir.join(PREPARED_NAME), self.next_segment_bytes()))
    }

    /// Takes a file made by [`prepare_file`] as the next segment.
    pub fn install_prepared(&mut self, file: File) {
        if self.prepared.is_none() {
            self.prepared = Some(file);
        }
    }

    /// At a clean close, gives back the disk a log holds for frames to come: the active
    /// segment's zero-filled tail and a prepared next segment, up to two segments (128 MiB)
    /// that would otherwise count against a store at rest. The active segment's length
    /// becomes the end of its frames, and that is synced at once: the next segment's base
    /// address is the sum of the lengths before it, so a length that a power cut could
    /// still turn back would move every address after it. The next run starts a new
    /// segment (opening finds this one full).
    pub fn trim(&mut self) -> Result<(), SegLogError> {
        assert!(self.writable, "trim a segment log opened read-only");
        self.sync()?;
        if self.prepared.take().is_some() {
            let path = self.dir.join(PREPARED_NAME);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        if let Some(segment) = self.segments.last_mut() {
            if segment.used_bytes < segment.capacity_bytes {
                segment
                    .file
                    .set_len(segment.used_bytes)
                    .and_then(|()| segment.file.sync_all())
                    .map_err(io(&segment.path))?;
                segment.capacity_bytes = segment.used_bytes;
            }
        }
        Ok(())
    }

    fn start_segment(&mut self, first_position: u64, frame_bytes: u64) -> Result<(), SegLogError> {
        // The previous segment's frames must be durable before a later segment can hold the
        // next ones: opening treats only the last segment's bad frame as a torn tail. Synced
        // here whatever `dirty` says: a sync the syncer took (`take_sync` clears the flags
        // when it hands the sync out) may still be running, and the new segment's name could
        // reach the disk before it ends; a power cut then would leave a segment that ends
        // early before another, which no open accepts (found by review, 2026-11-28). Once
        // per segment.
        if let Some(segment) = self.segments.last() {
            segment.file.sync_data().map_err(io(&segment.path))?;
        }
        sync_dir(&self.dir)?;
        self.dirty = false;
        self.dir_dirty = false;
        // A last segment without frames (made by a run that stopped before writing one, or
        // too small for this frame) is made again under the same name.
        if self.segments.last().is_some_and(|s| s.frames == 0) {
            self.segments.pop();
        }
        // Segments holding only frames of writes (no record) end where they begin, so the
        // next one begins at the same position: it takes a count after the position, or two
        // segments would share a name (and the second overwrite the first).
        let same_first = self
            .segments
            .iter()
            .filter(|s| s.first_position == first_position)
            .count();
        let path = self.dir.join(match same_first {
            0 => format!("{first_position:020}{SEGMENT_SUFFIX}"),
            n => format!("{first_position:020}-{n:04}{SEGMENT_SUFFIX}"),
        });
        let prepared_bytes = match &self.prepared {
            Some(file) => file.metadata().map_err(io(&path))?.len(),
            None => 0,
        };
        let file = match self.prepared.take() {
            Some(file) if frame_bytes <= prepared_bytes => {
                let from = self.dir.join(PREPARED_NAME);
                std::fs::rename(&from, &path).map_err(io(&from))?;
                file
            }
            _ => zero_filled(&path, self.next_segment_bytes().max(frame_bytes), false)?,
        };
        let capacity_bytes = file.metadata().map_err(io(&path))?.len();
        self.segments.push(Segment {
            path,
            file,
            base_address: self.end_address(),
            first_position,
            end_position: first_position,
            used_bytes: 0,
            capacity_bytes,
            table: Vec::new(),
            frames: 0,
            scrubbable: Vec::new(),
            unscrubbable_key_frames: 0,
        });
        self.dir_dirty = true;
        Ok(())
    }

    /// The frame holding `position`.
    pub fn frame_at(&self, position: u64) -> Result<Frame, SegLogError> {
        let address = self.frame_address_of(position)?;
        Ok(self.frame_at_address(address)?.0)
    }

    /// The record at `position`.
    pub fn record_at(&self, position: u64) -> Result<FrameRecord, SegLogError> {
        let mut frame = self.frame_at(position)?;
        let index = (position - frame.first_position) as usize;
        Ok(frame.records.swap_remove(index))
    }

    /// Every frame from the one holding `from` to the last, in order, read sequentially, each
    /// with its address.
    pub fn frames_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, Frame), SegLogError>> + '_ {
        let start = self.segments.partition_point(|s| s.end_position <= from);
        self.segments[start..].iter().flat_map(move |segment| {
            let mut reader = SegmentReader::new(segment, self.scrubbed_before);
            std::iter::from_fn(move || reader.next_frame().transpose())
                .filter(move |f| !matches!(f, Ok((_, frame)) if frame.end_position() <= from))
        })
    }
}

impl SegmentLog {
    /// Every frame from the one holding `address` to the last, in order, each with its
    /// address and the address after it: unlike [`Self::frames_from`], it also yields
    /// frames without records (a group of writes only), which share their position with the
    /// frame after them.
    ///
    /// `address` is meant to be a frame's address (or the log's end), but the walk begins at
    /// the segment's table entry at or before it and skips the frames that end at or before
    /// it, so an address inside a frame yields that frame instead of reading a header out of
    /// its body. Stop 30's open stored such a cursor (the end of a frame measured after some
    /// of its writes were left out), and the next open then refused the store (the checker
    /// self-test in testing/lossyfs, 6 runs in 60 under load).
    pub fn frames_from_address(
        &self,
        address: u64,
    ) -> impl Iterator<Item = Result<(u64, Frame, u64), SegLogError>> + '_ {
        let start = self
            .segments
            .partition_point(|s| s.base_address + s.used_bytes <= address);
        self.segments[start..].iter().flat_map(move |segment| {
            let mut reader = SegmentReader::new(segment, self.scrubbed_before);
            let offset = address.saturating_sub(segment.base_address);
            let t = segment.table.partition_point(|&(_, at)| at <= offset);
            reader.offset = t.checked_sub(1).map_or(0, |t| segment.table[t].1);
            std::iter::from_fn(move || loop {
                match reader.next_frame() {
                    Ok(Some((at, frame))) => {
                        let next = segment.base_address + reader.offset;
                        if next > address {
                            return Some(Ok((at, frame, next)));
                        }
                    }
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e)),
                }
            })
        })
    }

    /// The segment whose frames hold `address`.
    fn segment_with_frames_at(&self, address: u64) -> Result<&Segment, SegLogError> {
        let i = self.segments.partition_point(|s| s.base_address <= address);
        i.checked_sub(1)
            .map(|i| &self.segments[i])
            .filter(|s| address < s.base_address + s.used_bytes)
            .ok_or(SegLogError::NoRecordAt { address })
    }

    /// The frames that hold scrubbable writes and end at or before `before_address`: each
    /// segment's file and their offsets in it, for [`scrub_frames`], which reads them without
    /// holding the log (appends go on meanwhile; frames behind the end never change).
    pub fn scrubbable_frames(&self, before_address: u64) -> Vec<ScrubbableFrames> {
        self.segments
            .iter()
            .filter(|s| s.base_address < before_address)
            .map(|s| ScrubbableFrames {
                path: s.path.clone(),
                frames: s
                    .scrubbable
                    .iter()
                    .copied()
                    .filter(|&(offset, _)| s.base_address + offset < before_address)
                    .collect(),
                before_offset: before_address - s.base_address,
            })
            .filter(|s| !s.frames.is_empty())
            .collect()
    }

    /// Frames that carry key entries in format 1 (written before format 2), which no scrub
    /// can zero (see [`scrub_frames`]).
    pub fn unscrubbable_key_frames(&self) -> usize {
        self.segments
            .iter()
            .map(|s| s.unscrubbable_key_frames)
            .sum()
    }

    /// The address after the last frame (where the next one goes, if it fits).
    pub fn end_of_frames(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.base_address + s.used_bytes)
    }

    /// The frame at `address` (a frame's address) and the address after it.
    pub fn frame_at_address(&self, address: u64) -> Result<(Frame, u64), SegLogError> {
        let segment = self.segment_with_frames_at(address)?;
        let mut reader = SegmentReader::new(segment, self.scrubbed_before);
        reader.offset = address - segment.base_address;
        match reader.next_frame()? {
            Some((_, frame)) => Ok((frame, segment.base_address + reader.offset)),
            None => Err(SegLogError::NoRecordAt { address }),
        }
    }

    /// The frame that begins at `address`, or `None` if none does: the address is past the
    /// log's frames, or the bytes there are no frame header (zeroes, or the inside of a
    /// frame, whose bytes fail the header's CRC and magic). For an address kept outside the
    /// log that may name a frame a power cut took (an idempotency entry's, see
    /// `logstore::LogParts::idempotency_entry_at`). A frame whose header reads but whose
    /// body fails its checks is corruption: an error, as is an I/O error.
    pub fn frame_beginning_at(&self, address: u64) -> Result<Option<Frame>, SegLogError> {
        let Ok(segment) = self.segment_with_frames_at(address) else {
            return Ok(None);
        };
        let offset = address - segment.base_address;
        match segment.read_header(offset)? {
            HeaderRead::Ok(header) => Ok(Some(segment.read_frame(
                &header,
                offset,
                self.scrubbed_before,
            )?)),
            HeaderRead::Bad(_) | HeaderRead::Zero => Ok(None),
        }
    }

    /// The frame at `address` (a frame's address, or the end of a segment's frames, which
    /// leads to the next segment's first frame) with its address and the address after it;
    /// `None` at the log's end. For readers that walk the log a frame at a time without
    /// holding it between frames.
    pub fn frame_from(&self, address: u64) -> Result<Option<(u64, Frame, u64)>, SegLogError> {
        let mut i = self.segments.partition_point(|s| s.base_address <= address);
        let Some(mut at) = i.checked_sub(1) else {
            return Ok(None);
        };
        let mut address = address;
        while address >= self.segments[at].base_address + self.segments[at].used_bytes {
            i = at + 1;
            match self.segments.get(i) {
                Some(next) => {
                    at = i;
                    address = next.base_address;
                }
                None => return Ok(None),
            }
        }
        let (frame, next) = self.frame_at_address(address)?;
        Ok(Some((address, frame, next)))
    }

    /// Notes that a frame starts at `address` with first position `first_position` (the
    /// successor of a frame read: its end position and the address after it), for the
    /// look-ups of [`Self::frame_address_of`]. An address at the end of its segment's frames
    /// is not a start, and is left out.
    pub fn note_frame_start(&self, first_position: u64, address: u64) {
        let i = self.segments.partition_point(|s| s.base_address <= address);
        let Some(segment) = i.checked_sub(1).map(|i| &self.segments[i]) else {
            return;
        };
        // A frame of writes alone ending its segment starts at the next segment's first
        // position: noted, a look-up of that position would start in the wrong segment.
        if address < segment.base_address + segment.used_bytes
            && segment.first_position <= first_position
            && first_position < segment.end_position
        {
            self.located
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .note(first_position, address);
        }
    }

    /// The address of the frame holding `position`.
    pub fn frame_address_of(&self, position: u64) -> Result<u64, SegLogError> {
        let not_found = || SegLogError::NotFound {
            position,
            first: self.first_position(),
            last: self.next_position.saturating_sub(1),
        };
        let i = self
            .segments
            .partition_point(|s| s.first_position <= position);
        let segment = i
            .checked_sub(1)
            .map(|i| &self.segments[i])
            .filter(|s| position < s.end_position)
            .ok_or_else(not_found)?;
        let t = segment
            .table
            .partition_point(|&(first, _)| first <= position);
        let (table_first, mut offset) = segment.table[t.checked_sub(1).ok_or_else(not_found)?];
        let frames_end = segment.base_address + segment.used_bytes;
        // A start met before, nearer than the table's entry: between the entry and the
        // position, in this segment (any other is ignored, never trusted).
        let remembered = self
            .located
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .starts
            .range(table_first..=position)
            .next_back()
            .map(|(_, &address)| address);
        if let Some(address) =
            remembered.filter(|&a| a >= segment.base_address + offset && a < frames_end)
        {
            offset = address - segment.base_address;
        }
        // Noted once the scan is done: the memo's lock is not held across the reads.
        let mut met: Vec<(u64, u64)> = Vec::new();
        let found = loop {
            let header = match segment.read_header(offset)? {
                HeaderRead::Ok(h) => h,
                _ => {
                    return Err(SegLogError::Corrupt {
                        path: segment.path.clone(),
                        offset,
                        reason: "a frame header read at open no longer reads",
                    })
                }
            };
            let end = header.first_position + header.records as u64;
            if position < end {
                met.push((header.first_position, segment.base_address + offset));
                break segment.base_address + offset;
            }
            offset += header.frame_bytes();
            if offset < segment.used_bytes && end < segment.end_position {
                // The next frame starts at the end of this one.
                met.push((end, segment.base_address + offset));
            }
        };
        let mut located = self.located.lock().unwrap_or_else(|e| e.into_inner());
        for (first_position, address) in met {
            located.note(first_position, address);
        }
        Ok(found)
    }
}

/// Test hook (feature `fault-injection`): the tampering tests' edits of a stored record.
#[cfg(feature = "fault-injection")]
impl SegmentLog {
    /// Replaces the bytes of the record at `position` with `bytes` of the same length and
    /// seals its frame's CRCs again, so that only the record's own checks (its CRC, place
    /// and chain) can find the change, as an edit of a sled value would be found.
    pub fn rewrite_record_for_tests(
        &mut self,
        position: u64,
        bytes: &[u8],
    ) -> Result<(), SegLogError> {
        let frame_address = self.frame_address_of(position)?;
        let i = self
            .segments
            .partition_point(|s| s.base_address <= frame_address)
            - 1;
        let segment = &self.segments[i];
        let offset = frame_address - segment.base_address;
        let HeaderRead::Ok(mut header) = segment.read_header(offset)? else {
            unreachable!("a frame found by position has a header");
        };
        let mut body = vec![0u8; header.body_len as usize];
        segment
            .file
            .read_exact_at(&mut body, offset + FRAME_HEADER_BYTES as u64)
            .map_err(io(&segment.path))?;
        let frame = decode_body(&header, &body).expect("a frame read at open decodes");
        let index = (position - frame.first_position) as usize;
        let entry = frame.record_addresses(frame_address)[index]
            - frame_address
            - FRAME_HEADER_BYTES as u64;
        let start = entry as usize + RECORD_ENTRY_HEADER_BYTES;
        assert_eq!(
            frame.records[index].bytes.len(),
            bytes.len(),
            "a record rewritten in the log keeps its length"
        );
        body[start..start + bytes.len()].copy_from_slice(bytes);
        header.body_crc = body_crc(&header, &body).expect("a frame read at open has its layout");
        let mut head = [0u8; FRAME_HEADER_BYTES];
        header.write(&mut head);
        // Opened here for writing: the hook also serves logs opened read-only.
        let file = OpenOptions::new()
            .write(true)
            .open(&segment.path)
            .map_err(io(&segment.path))?;
        file.write_all_at(&head, offset)
            .map_err(io(&segment.path))?;
        file.write_all_at(&body, offset + FRAME_HEADER_BYTES as u64)
            .map_err(io(&segment.path))?;
        file.sync_data().map_err(io(&segment.path))
    }
}

/// The frames of one segment file a scrub reads ([`SegmentLog::scrubbable_frames`]).
#[derive(Clone, Debug)]
pub struct ScrubbableFrames {
    path: PathBuf,
    /// Each frame's offset, and where its writes begin in its body.
    frames: Vec<(u64, u32)>,
    /// Only frames that end at or before this offset are scrubbed.
    before_offset: u64,
}

/// Zeroes the scrubbable bytes of each not yet scrubbed write of `frames` that `choose`
/// picks, then `fdatasync`s each file it wrote; returns how many writes it scrubbed. It
/// reads each frame's header and the writes after its records only (a frame of a busy
/// store holds hundreds of records; an erasure reads every format 2 frame): the frame was
/// checked whole when the log was opened or appended to, the writes are parsed with every
/// length bounds-checked against that region, and zeroes go only into it, never into a
/// record (whose bytes are vouched for by its own CRC and hash chain). A scrub a crash cut
/// short reads as well as a whole one (the body CRC leaves those bytes out) and can be run
/// again. The caller vouches that no frame of `frames` will be applied again: their writes are in
/// sled for good (see `logstore::LogParts::scrub_if_asked`), and `choose` must pick a
/// write whose bytes a torn scrub damaged (it sees them as they are). Scrubbing rewrites
/// bytes of a frame in place: a power cut during it is assumed to leave the bytes of a
/// sector outside the range written as they were (what SQLite calls a powersafe overwrite,
/// its default assumption of disks); the range itself may be left part zeroed, part not.
pub fn scrub_frames<E: From<SegLogError>>(
    frames: &[ScrubbableFrames],
    mut choose: impl FnMut(&FrameWrite) -> Result<bool, E>,
) -> Result<usize, E> {
    let mut scrubbed = 0;
    for segment in frames {
        let path = &segment.path;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        let corrupt = |offset, reason| SegLogError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        let mut wrote = false;
        for &(offset, writes_start) in &segment.frames {
            let mut head = [0u8; FRAME_HEADER_BYTES];
            file.read_exact_at(&mut head, offset).map_err(io(path))?;
            let header = match Header::read(&head) {
                HeaderRead::Ok(h) if h.format == FRAME_FORMAT_SCRUBBABLE => h,
                HeaderRead::Ok(_) | HeaderRead::Zero => {
                    Err(corrupt(offset, "a scrubbable frame's header changed"))?
                }
                HeaderRead::Bad(reason) => Err(corrupt(offset, reason))?,
            };
            if offset + header.frame_bytes() > segment.before_offset {
                continue;
            }
            let Some(region_bytes) = (header.body_len).checked_sub(writes_start) else {
                Err(corrupt(
                    offset,
                    "a scrubbable frame's writes begin past its body",
                ))?
            };
            let writes_at = offset + FRAME_HEADER_BYTES as u64 + writes_start as u64;
            let mut region = vec![0u8; region_bytes as usize];
            file.read_exact_at(&mut region, writes_at)
                .map_err(io(path))?;
            let writes = writes_layout(&header, &region, 0).map_err(|r| corrupt(offset, r))?;
            for span in &writes {
                if span.scrubbable().next().is_none() || span.is_scrubbed(&region) {
                    continue;
                }
                if !choose(&span_write(span, &region))? {
                    continue;
                }
                for range in span.scrubbable() {
                    let zeroes = vec![0u8; range.len()];
                    file.write_all_at(&zeroes, writes_at + range.start as u64)
                        .map_err(io(path))?;
                    // A test's scrub cut short here, between two ranges of one write.
                    super::failpoint::check(super::failpoint::SCRUB).map_err(io(path))?;
                }
                wrote = true;
                scrubbed += 1;
            }
        }
        if wrote {
            file.sync_data().map_err(io(path))?;
        }
    }
    Ok(scrubbed)
}

/// Sequential reading of one segment's frames, by offset (`pread`), so that any number of
/// readers share the file handle with the writer.
struct SegmentReader<'a> {
    segment: &'a Segment,
    offset: u64,
    /// The log's bound for scrubbed frames (see [`Segment::read_frame`]).
    scrubbed_before: u64,
}

impl<'a> SegmentReader<'a> {
    fn new(segment: &'a Segment, scrubbed_before: u64) -> Self {
        SegmentReader {
            segment,
            offset: 0,
            scrubbed_before,
        }
    }

    fn next_frame(&mut self) -> Result<Option<(u64, Frame)>, SegLogError> {
        if self.offset >= self.segment.used_bytes {
            return Ok(None);
        }
        let header = match self.segment.read_header(self.offset)? {
            HeaderRead::Ok(h) => h,
            HeaderRead::Bad(reason) => {
                return Err(SegLogError::Corrupt {
                    path: self.segment.path.clone(),
                    offset: self.offset,
                    reason,
                })
            }
            HeaderRead::Zero => {
                return Err(SegLogError::Corrupt {
                    path: self.segment.path.clone(),
                    offset: self.offset,
                    reason: "a frame header read at open no longer reads",
                })
            }
        };
        let frame = self
            .segment
            .read_frame(&header, self.offset, self.scrubbed_before)?;
        let address = self.segment.base_address + self.offset;
        self.offset += header.frame_bytes();
        Ok(Some((address, frame)))
    }
}

/// A segment file's name without `.seg`: its first position, and a count when segments
/// before it began at the same position (`<position>-<count>`; see `start_segment`).
fn parse_segment_stem(stem: &str) -> Option<(u64, u32)> {
    match stem.split_once('-') {
        None => Some((stem.parse().ok()?, 0)),
        Some((first, count)) => Some((first.parse().ok()?, count.parse().ok()?)),
    }
}

/// Bytes the segment helper ([`prepare_file`]) writes and sends to the device at a time,
/// pausing [`PREPARE_PAUSE_MS`] after each, so that its writeback is spread out instead of
/// one burst at its final sync. Written whole and synced once, a 64 MiB segment's `fsync`
/// took 18-22 ms, and the syncer's `fdatasync`s that met it took up to 8-57 ms instead of
/// 0.1: the latency bench's worst latencies. Paced: the helper's `fsync` 0.2-3 ms, the
/// syncer's `fdatasync`s over 4 ms 2-3 per run instead of 9-11, p99 4.26 and 4.66 ms
/// against 5.40 and 6.47 (`perf record -e syscalls:sys_enter_fdatasync,...` beside
/// `EVERSHARD_BENCH_ONLY=latency`, two alternated pairs, 2026-11-27).
const PREPARE_CHUNK_BYTES: usize = 256 * 1024;
/// The helper's pause between two pieces: 64 MiB take at least 0.26 s of pauses, well within
/// the time the active segment takes to fill its second half (`wants_prepared`) at the
/// rates the bench reaches (about 0.9 s for 64 MiB at 35 MB/s); if the prepared file is late
/// the committer makes the segment itself, as before.
const PREPARE_PAUSE_MS: u64 = 1;

/// The next segment's file, zero-filled and synced (see [`SegmentLog::wants_prepared`]), a
/// piece at a time ([`PREPARE_CHUNK_BYTES`]): made off the acknowledgement path, it yields
/// the device to the syncer.
pub fn prepare_file(path: &Path, bytes: u64) -> Result<File, SegLogError> {
    zero_filled(path, bytes, true)
}

/// A new file of `bytes` zeroes, written (not a sparse hole: its extents must exist, so an
/// `fdatasync` after writing into it has no metadata to journal) and synced; `paced`, piece
/// by piece (see [`prepare_file`]), else at once (the committer, when no prepared segment is
/// ready).
fn zero_filled(path: &Path, bytes: u64, paced: bool) -> Result<File, SegLogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io(path))?;
    let chunk = if paced {
        PREPARE_CHUNK_BYTES
    } else {
        ZERO_CHUNK_BYTES
    };
    let zeros = vec![0u8; chunk];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(chunk as u64) as usize;
        file.write_all_at(&zeros[..n], at).map_err(io(path))?;
        if paced {
            write_back(&file, at, n).map_err(io(path))?;
            std::thread::sleep(std::time::Duration::from_millis(PREPARE_PAUSE_MS));
        }
        at += n as u64;
    }
    file.sync_all().map_err(io(path))?;
    Ok(file)
}

/// Starts writing `len` bytes at `offset` of `file` back to the device, without waiting and
/// without the journal commit of an `fsync`: `posix_fadvise(DONTNEED)`, which on Linux starts
/// the range's writeback, then drops the range's clean pages — none, as its pages are then
/// dirty or under writeback (`fincore` on a 64 MiB file made this way: all 64 MiB resident),
/// so the committer's writes into the segment read nothing back. Elsewhere nothing: the
/// final sync writes it all.
fn write_back(file: &File, offset: u64, len: usize) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len as u64),
        rustix::fs::Advice::DontNeed,
    )?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (file, offset, len);
    Ok(())
}

/// Zeroes `from .. end` of a segment where it is not zero already and syncs what it wrote;
/// true if anything was not zero.
fn zero_from(file: &File, path: &Path, from: u64, end: u64) -> Result<bool, SegLogError> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut chunk = vec![0u8; ZERO_CHUNK_BYTES];
    let (mut at, mut wrote) = (from, false);
    while at < end {
        let n = (end - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        file.read_exact_at(&mut chunk[..n], at).map_err(io(path))?;
        if chunk[..n].iter().any(|&b| b != 0) {
            file.write_all_at(&zeros[..n], at).map_err(io(path))?;
            wrote = true;
        }
        at += n as u64;
    }
    if wrote {
        file.sync_data().map_err(io(path))?;
    }
    Ok(wrote)
}

fn sync_dir(dir: &Path) -> Result<(), SegLogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}
