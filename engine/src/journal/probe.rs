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

/// True when sled's data file holds the bytes of evershard's format marker value.
fn holds_format_marker(db: &Path) -> std::io::Result<bool> {
    let needle = super::STORE_FORMAT;
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
