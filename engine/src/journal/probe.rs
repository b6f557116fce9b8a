//! What a directory holds, found without sled: the check every open makes before sled touches
//! the directory. sled 0.34 opens `db` read-write (creating it), creates `blobs/`, writes
//! `conf` when it finds none and replays its log, writing a snapshot — so pointing sled at a
//! directory that is not an evershard store changes it. This module decides from the files
//! alone, reading only:
//!
//! - the marker file [`MARKER_FILE`], which every store created since it exists carries
//!   (written, and synced, before sled creates anything);
//! - for a store made before the marker (no `EVERSHARD` file but a `db`), a scan of `db` for
//!   the bytes of the format marker value `evershard-journal-v1`, which sled keeps verbatim
//!   (no compression) in its log. The scan reads the whole file once per open; the writer
//!   then adds the marker file, so a store pays for it once. A foreign sled database that
//!   happens to hold those bytes passes the scan; the writer still refuses it after sled's
//!   open because its `m|format` key is missing or different, but sled will have replayed
//!   its log by then.

use crate::error::OpenError;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The marker file of an evershard store.
pub(super) const MARKER_FILE: &str = "EVERSHARD";

/// The marker file's exact contents.
const MARKER_CONTENTS: &[u8] = b"evershard store; journal format evershard-journal-v1\n";

/// Files larger than this are not a marker or a sled `conf`.
const SMALL_FILE_BYTES_MAX: u64 = 4096;

/// What a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    /// No such directory.
    Missing,
    /// A directory with no entries.
    Empty,
    /// An evershard store; `marked` when it carries the marker file (else found by the scan).
    Store { marked: bool },
}

/// Looks at `dir` without writing anything. Anything but nothing, an empty directory or an
/// evershard store is [`OpenError::NotAStore`].
pub(super) fn probe(dir: &Path) -> Result<Probe, OpenError> {
    let io = |e: std::io::Error| OpenError::storage(dir, e);
    let not_a_store = |found: String| OpenError::NotAStore {
        dir: dir.to_path_buf(),
        found,
    };
    let meta = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Missing),
        other => other.map_err(io)?,
    };
    if !meta.is_dir() {
        return Err(not_a_store("a file, not a directory".into()));
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    names.sort();
    if names.is_empty() {
        return Ok(Probe::Empty);
    }
    if names.iter().any(|n| n == MARKER_FILE) {
        return match read_small(&dir.join(MARKER_FILE)) {
            Some(bytes) if bytes == MARKER_CONTENTS => Ok(Probe::Store { marked: true }),
            _ => Err(not_a_store(format!(
                "an {MARKER_FILE} file that is not evershard's marker"
            ))),
        };
    }
    let db = dir.join("db");
    let db_meta = match std::fs::symlink_metadata(&db) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_a_store(format!("other files ({})", listing(&names))));
        }
        Err(e) => return Err(io(e)),
    };
    if !db_meta.is_file() {
        return Err(not_a_store("`db` is not a regular file".into()));
    }
    if db_meta.len() == 0 {
        return Err(not_a_store("an empty `db` file".into()));
    }
    if holds_format_marker(&db).map_err(io)? {
        return Ok(Probe::Store { marked: false });
    }
    Err(not_a_store(if is_sled_conf(&dir.join("conf")) {
        "a sled database without evershard's format marker".into()
    } else {
        "a `db` file that is neither sled's nor evershard's".into()
    }))
}

/// Writes the marker file and makes it durable (the file, then the directory's entry).
pub(super) fn write_marker(dir: &Path, sync: bool) -> std::io::Result<()> {
    let path = dir.join(MARKER_FILE);
    let mut file = File::create(&path)?;
    std::io::Write::write_all(&mut file, MARKER_CONTENTS)?;
    if sync {
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The first names of a listing, for a message.
fn listing(names: &[String]) -> String {
    const SHOWN_MAX: usize = 3;
    let shown: Vec<&str> = names.iter().take(SHOWN_MAX).map(|n| n.as_str()).collect();
    match names.len().saturating_sub(SHOWN_MAX) {
        0 => shown.join(", "),
        more => format!("{}, and {more} more", shown.join(", ")),
    }
}

fn read_small(path: &Path) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(SMALL_FILE_BYTES_MAX)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// True when `path` reads like sled's `conf`: lines `key: value` naming its segment size
/// and version, then a 4-byte checksum (not checked here: this only names what was found).
pub(super) fn is_sled_conf(path: &Path) -> bool {
    let Some(bytes) = read_small(path) else {
        return false;
    };
    let Some(text) = bytes.len().checked_sub(4).map(|n| &bytes[..n]) else {
        return false;
    };
    let text = String::from_utf8_lossy(text);
    text.contains("segment_size: ") && text.contains("version: ")
}

/// The segment size sled's `conf` at `path` records, if it reads as one sled accepts (a power
/// of two from 256 bytes to 16 MiB, config.rs `validate`). The checksum is left to sled.
pub(super) fn sled_segment_bytes(path: &Path) -> Option<usize> {
    let bytes = read_small(path)?;
    let text = bytes.get(..bytes.len().checked_sub(4)?)?;
    let text = std::str::from_utf8(text).ok()?;
    let size: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: "))?
        .trim()
        .parse()
        .ok()?;
    (size.is_power_of_two() && (256..=1 << 24).contains(&size)).then_some(size)
}

/// The segment size sled's log in `db` was written with, judged from the file when `conf`
/// cannot say: either evershard's ([`super::segments::SEGMENT_BYTES`]) or sled's default
/// ([`super::segments::LEGACY_SEGMENT_BYTES`]). A log of the default size has a segment
/// header (a checksummed LSN, a multiple of the size) at multiples of 512 KiB; one of
/// evershard's only at multiples of 16 MiB, with LSNs multiples of 16 MiB. A log too short
/// to tell is taken as the default's, what every store created before evershard chose its
/// own size has (a new store's `conf` is synced at creation). `None` when `db` is missing or
/// empty: sled will create the store, with evershard's size.
pub(super) fn segment_bytes_of_log(db: &Path) -> std::io::Result<Option<usize>> {
    use super::segments::{LEGACY_SEGMENT_BYTES, SEGMENT_BYTES};
    let mut file = match File::open(db) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut header_at = |offset: u64| -> std::io::Result<Option<u64>> {
        use std::io::{Seek, SeekFrom};
        let mut buf = [0u8; SEGMENT_HEADER_BYTES];
        if offset + SEGMENT_HEADER_BYTES as u64 > len {
            return Ok(None);
        }
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)?;
        Ok(segment_header_lsn(&buf))
    };
    // Offsets where only a log of the default size has segment headers (a few suffice: any
    // segment the log ever used has one, and one found there settles it).
    const OFFSETS_CHECKED_MAX: u64 = 256;
    let per_large = (SEGMENT_BYTES / LEGACY_SEGMENT_BYTES) as u64;
    let mut legacy = len <= LEGACY_SEGMENT_BYTES as u64
        || header_at(0)?.is_some_and(|lsn| lsn % SEGMENT_BYTES as u64 != 0);
    for k in (1..=OFFSETS_CHECKED_MAX).filter(|k| k % per_large != 0) {
        if legacy || k * LEGACY_SEGMENT_BYTES as u64 >= len {
            break;
        }
        legacy = header_at(k * LEGACY_SEGMENT_BYTES as u64)?.is_some();
    }
    Ok(Some(if legacy {
        LEGACY_SEGMENT_BYTES
    } else {
        SEGMENT_BYTES
    }))
}

/// sled 0.34's segment header (`SegmentHeader` in `pagecache/logger.rs`): a CRC-32 of the
/// next 16 bytes (inverted), then the segment's LSN and the highest stable LSN, each XORed
/// with `0x7FFF_FFFF_FFFF_FFFF`, little-endian.
const SEGMENT_HEADER_BYTES: usize = 20;

/// The LSN of a segment header whose checksum holds.
fn segment_header_lsn(buf: &[u8; SEGMENT_HEADER_BYTES]) -> Option<u64> {
    let stored = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) ^ 0xFFFF_FFFF;
    if crc32_ieee(&buf[4..]) != stored {
        return None;
    }
    let lsn = u64::from_le_bytes(buf[4..12].try_into().expect("8 bytes")) ^ 0x7FFF_FFFF_FFFF_FFFF;
    Some(lsn)
}

/// CRC-32 (IEEE, as `crc32fast`, which sled uses), bit by bit: it runs on 16 bytes per open.
fn crc32_ieee(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// True when sled's data file holds the bytes of one of evershard's format marker values
/// (their common prefix).
fn holds_format_marker(db: &Path) -> std::io::Result<bool> {
    let needle = &super::STORE_FORMAT[..super::STORE_FORMAT.len() - 1];
    debug_assert!(super::STORE_FORMAT_V1.starts_with(needle));
    let mut file = File::open(db)?;
    let mut buf = vec![0u8; 1 << 20];
    // The tail of the previous chunk, so that a marker across a chunk boundary is found.
    let mut kept = 0;
    loop {
        let read = file.read(&mut buf[kept..])?;
        if read == 0 {
            return Ok(false);
        }
        let filled = kept + read;
        if buf[..filled].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        kept = (needle.len() - 1).min(filled);
        buf.copy_within(filled - kept..filled, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_ieee() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32_ieee(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_logs_segment_size_is_read_from_conf_or_judged_from_the_log() {
        use super::super::segments::{LEGACY_SEGMENT_BYTES, SEGMENT_BYTES};
        for size in [LEGACY_SEGMENT_BYTES, SEGMENT_BYTES] {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new()
                .path(dir.path())
                .segment_size(size)
                .open()
                .unwrap();
            // Enough to fill more than one small segment.
            for i in 0u32..2_000 {
                db.insert(i.to_be_bytes(), vec![7u8; 1024]).unwrap();
            }
            db.flush().unwrap();
            drop(db);
            assert_eq!(sled_segment_bytes(&dir.path().join("conf")), Some(size));
            assert_eq!(
                segment_bytes_of_log(&dir.path().join("db")).unwrap(),
                Some(size),
                "a log of {size}-byte segments"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(segment_bytes_of_log(&dir.path().join("db")).unwrap(), None);
        std::fs::write(
            dir.path().join("conf"),
            b"segment_size: 1000\nversion: 0.34\n1234",
        )
        .unwrap();
        assert_eq!(sled_segment_bytes(&dir.path().join("conf")), None);
    }

    #[test]
    fn the_marker_is_found_across_a_chunk_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut bytes = vec![0u8; (1 << 20) - 5];
        bytes.extend_from_slice(super::super::STORE_FORMAT);
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&db, &bytes).unwrap();
        assert!(holds_format_marker(&db).unwrap());
        std::fs::write(&db, vec![7u8; 3 << 20]).unwrap();
        assert!(!holds_format_marker(&db).unwrap());
    }
}
