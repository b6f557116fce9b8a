//! Checkpoints: a consistent, read-only copy of a live store, taken while commands flow.
//!
//! "Consistent" means a global-position cut: the copy holds exactly the events at positions
//! `1..=cut`, the snapshots of those events, and the timers, idempotency records, topic
//! configurations, consumer offsets, publisher cursors, topic index and Merkle nodes as they
//! were when the event at `cut` was the last one written. It is a store like any other for
//! the read-only commands (`verify`, `history`, `digest`, ...), and refuses to be opened for
//! writing (`OpenError::Checkpoint`), because a write would fork the history it copies.
//!
//! How, without stopping the service for the whole copy:
//! 1. The committer is paused between two groups ([`JournalWriter::pause`]): it syncs what it
//!    applied and answers the cut. Appends queue meanwhile.
//! 2. The caller waits (bounded) until the background followers (topic indexer, Merkle
//!    maintainer) cover the cut; they cannot pass it, nothing newer is durable.
//! 3. Still paused, the keyspaces that commands or followers *rewrite* are copied: timers,
//!    idempotency records, topic configurations and offsets, publisher cursors, and the
//!    `m` cursors. They are small next to the events.
//! 4. The committer resumes. The keyspaces that are only ever *added to* are copied up to the
//!    cut while commands flow: the global index entries at or below the cut and the event
//!    records they name, the topic index entries whose events lie at or below the cut, the
//!    Merkle nodes within the tree of the cut, and the snapshots at or below each stream's
//!    head at the cut.
//!
//! Bytes are copied as stored, so hash chains, Merkle leaves and proofs of the copy are the
//! live store's. A marker `m|checkpoint` is written first as "incomplete" and rewritten as
//! "complete" last; readers refuse an incomplete one.

use super::committer::CommitJob;
use super::{keys, merkle, probe, topics, JournalConfig, JournalWriter, StreamId};
use crate::error::{CheckpointError, Corruption, OpenError, StorageError};
use chrono::{DateTime, TimeZone, Utc};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// The marker key: `m | "checkpoint"`.
pub(super) const CHECKPOINT_KEY: &[u8] = b"mcheckpoint";
const MARK_FORMAT_V1: u8 = 1;
/// Keys per batch written to the copy: bounds the memory of a batch, not the copy.
const COPY_BATCH_KEYS_MAX: usize = 10_000;
/// sled's page cache for the copy being written.
const COPY_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// What a checkpoint says about itself (`Journal::checkpoint_mark`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMark {
    /// The last global position the copy holds.
    pub cut_position: u64,
    /// When the cut was taken (the engine's clock).
    pub taken_at: DateTime<Utc>,
    /// The store it was copied from, as given to `Engine::checkpoint`'s engine.
    pub source_dir: PathBuf,
    /// False while (or if) the copy did not finish.
    pub complete: bool,
}

impl CheckpointMark {
    /// `format u8 | complete u8 | cut u64 LE | taken_at i64 LE µs | source_len u16 LE | source`.
    fn encode(&self) -> Vec<u8> {
        let source = self.source_dir.to_string_lossy();
        let source = &source.as_bytes()[..source.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(20 + source.len());
        out.push(MARK_FORMAT_V1);
        out.push(u8::from(self.complete));
        out.extend_from_slice(&self.cut_position.to_le_bytes());
        out.extend_from_slice(&self.taken_at.timestamp_micros().to_le_bytes());
        out.extend_from_slice(&(source.len() as u16).to_le_bytes());
        out.extend_from_slice(source);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<CheckpointMark> {
        if *bytes.first()? != MARK_FORMAT_V1 {
            return None;
        }
        let complete = match *bytes.get(1)? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let cut_position = u64::from_le_bytes(bytes.get(2..10)?.try_into().ok()?);
        let micros = i64::from_le_bytes(bytes.get(10..18)?.try_into().ok()?);
        let len = u16::from_le_bytes(bytes.get(18..20)?.try_into().ok()?) as usize;
        let source = bytes.get(20..20 + len)?;
        if bytes.len() != 20 + len {
            return None;
        }
        Some(CheckpointMark {
            cut_position,
            taken_at: Utc.timestamp_micros(micros).single()?,
            source_dir: PathBuf::from(String::from_utf8(source.to_vec()).ok()?),
            complete,
        })
    }
}

/// What [`JournalWriter::checkpoint`] copied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// The checkpoint's directory.
    pub dir: PathBuf,
    /// The last global position it holds.
    pub cut_position: u64,
    pub taken_at: DateTime<Utc>,
    /// Event records copied (= `cut_position`).
    pub events: u64,
    /// Streams with at least one event at or below the cut.
    pub streams: u64,
    pub snapshots: u64,
    /// Every key copied, events included.
    pub keys: u64,
    /// How long the committer was paused (appends waited): steps 1–3 of the module docs.
    pub paused_ms: u64,
}

/// A paused committer; dropping it resumes the committer.
pub(crate) struct Paused {
    /// The last global position written, synced.
    pub(crate) cut: u64,
    _resume: mpsc::Sender<()>,
}

/// Writes keys to the copy in batches of [`COPY_BATCH_KEYS_MAX`].
struct Copier<'a> {
    db: &'a sled::Db,
    dir: &'a Path,
    batch: sled::Batch,
    in_batch: usize,
    keys: u64,
}

impl Copier<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), CheckpointError> {
        self.batch.insert(key, value);
        self.in_batch += 1;
        self.keys += 1;
        if self.in_batch >= COPY_BATCH_KEYS_MAX {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CheckpointError> {
        if self.in_batch > 0 {
            self.in_batch = 0;
            self.db
                .apply_batch(std::mem::take(&mut self.batch))
                .map_err(|e| write_error(self.dir, e))?;
        }
        Ok(())
    }
}

fn write_error(dir: &Path, e: impl Into<StorageError>) -> CheckpointError {
    CheckpointError::Write {
        dir: dir.to_path_buf(),
        source: Box::new(e.into()),
    }
}

fn source_error(e: impl Into<StorageError>) -> CheckpointError {
    CheckpointError::Source(Box::new(e.into()))
}

fn missing(stream: &StreamId, sequence: u64) -> CheckpointError {
    source_error(StorageError::corrupt(
        stream,
        sequence,
        Corruption::MissingRecord,
    ))
}

/// The range of one keyspace tag: `[tag] .. [tag + 1]` (the last tag to the end).
fn keyspace(db: &sled::Db, tag: u8) -> sled::Iter {
    match tag.checked_add(1) {
        Some(next) => db.range(vec![tag]..vec![next]),
        None => db.range(vec![tag]..),
    }
}

impl JournalWriter {
    /// Pauses the committer between two groups; see [`CommitJob::Pause`]. Blocking.
    pub(crate) fn pause(&self) -> Result<Paused, StorageError> {
        self.shared.check_writable()?;
        let (paused, answer) = tokio::sync::oneshot::channel();
        let (resume_tx, resume) = mpsc::channel();
        self.jobs
            .send(CommitJob::Pause {
                paused: super::committer::ReplyTo::new(paused, self.shared.clone()),
                resume,
            })
            .map_err(|_| StorageError::Closed)?;
        let cut = answer.blocking_recv().map_err(|_| self.shared.gone())??;
        Ok(Paused {
            cut,
            _resume: resume_tx,
        })
    }

    /// Takes a checkpoint of this journal into `dest` (missing or empty); see the module
    /// docs. `caught_up(cut)` is called while the committer is paused and returns once every
    /// background follower covers the cut. Blocking. On failure a destination this call
    /// created is removed again, and the live store is unchanged either way.
    pub(crate) fn checkpoint(
        &self,
        dest: &Path,
        taken_at: DateTime<Utc>,
        caught_up: impl FnOnce(u64) -> Result<(), CheckpointError>,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let refuse = |reason: &str| CheckpointError::Destination {
            dir: dest.to_path_buf(),
            reason: reason.to_owned(),
        };
        let existed = match probe::probe(dest) {
            Ok(probe::Probe::Missing) => false,
            Ok(probe::Probe::Empty) => true,
            Ok(probe::Probe::Store { .. }) => return Err(refuse("it already holds a store")),
            Err(OpenError::NotAStore { found, .. }) => {
                return Err(refuse(&format!("it is not empty: it holds {found}")))
            }
            Err(e) => return Err(e.into()),
        };
        let source = std::fs::canonicalize(self.dir()).map_err(source_error)?;
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(parent) = std::fs::canonicalize(parent) {
            if parent.starts_with(&source) || dest.canonicalize().ok().as_ref() == Some(&source) {
                return Err(refuse("it lies inside the live store's directory"));
            }
        }
        let result = self.checkpoint_into(dest, &source, taken_at, caught_up);
        if result.is_err() {
            let removed = if existed {
                std::fs::read_dir(dest).and_then(|entries| {
                    for entry in entries {
                        let path = entry?.path();
                        if path.is_dir() {
                            std::fs::remove_dir_all(path)?;
                        } else {
                            std::fs::remove_file(path)?;
                        }
                    }
                    Ok(())
                })
            } else {
                std::fs::remove_dir_all(dest)
            };
            if let Err(e) = removed {
                tracing::warn!(dir = %dest.display(), %e, "could not remove a failed checkpoint; its marker says it is incomplete");
            }
        }
        result
    }

    fn checkpoint_into(
        &self,
        dest: &Path,
        source_dir: &Path,
        taken_at: DateTime<Utc>,
        caught_up: impl FnOnce(u64) -> Result<(), CheckpointError>,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let out = JournalWriter::open(
            dest,
            JournalConfig {
                cache_bytes: COPY_CACHE_BYTES,
                // The copy keeps the live store's layout.
                write_path: self.write_path(),
                ..JournalConfig::default()
            },
        )?;
        let out_db = out.shared.db().map_err(|e| write_error(dest, e))?;
        let mut mark = CheckpointMark {
            cut_position: 0,
            taken_at,
            source_dir: source_dir.to_path_buf(),
            complete: false,
        };
        // From here a crash leaves a store that says it is an incomplete checkpoint: synced
        // at once, as the copy's log frames may reach the disk before sled does (a segment
        // roll syncs them), and a copy without the mark would open as an ordinary store
        // missing its keyspaces (found by review, 2026-11-28).
        out_db
            .insert(CHECKPOINT_KEY, mark.encode())
            .map_err(|e| write_error(dest, e))?;
        out.sync().map_err(|e| write_error(dest, e))?;
        let src = self.shared.db().map_err(source_error)?;
        let mut copier = Copier {
            db: &out_db,
            dir: dest,
            batch: sled::Batch::default(),
            in_batch: 0,
            keys: 0,
        };

        // Steps 1-3: paused.
        let started = Instant::now();
        let paused = self.pause().map_err(source_error)?;
        let cut = paused.cut;
        caught_up(cut)?;
        // (A store on the segment log: its heads are rebuilt by the copy from the records it
        // copies, and its log cursors are the copy's own.)
        let added_only = [
            keys::EVENTS,
            keys::GLOBAL,
            keys::SNAPSHOTS,
            topics::TOPIC_INDEX,
            merkle::TREE,
            super::logindex::HEADS,
        ];
        let format_key = super::meta_format_key();
        let log_meta = super::logstore::own_meta_keys();
        let own_meta: Vec<&[u8]> = [&format_key[..], CHECKPOINT_KEY]
            .into_iter()
            .chain(log_meta.iter().map(|k| &k[..]))
            .collect();
        // sled's format-3 idempotency entries (on the segment log) point into this store's
        // log, at addresses the copy's log does not share: they are kept aside and the copy
        // gets each entry's records (format 2) from its frame once commands flow again (a
        // frame never changes).
        let mut pointers = Vec::new();
        for tag in (0..=u8::MAX).filter(|t| !added_only.contains(t)) {
            for entry in keyspace(&src, tag) {
                let (key, value) = entry.map_err(source_error)?;
                if tag == keys::META && own_meta.contains(&key.as_ref()) {
                    continue;
                }
                if tag == keys::IDEMPOTENCY_BY_TIME
                    && value.first() == Some(&keys::IDEMPOTENCY_GROUP_FORMAT_V3)
                {
                    pointers.push((key, value));
                    continue;
                }
                copier.put(&key, &value)?;
            }
        }
        copier.flush()?;
        let merkle_size = match out_db
            .get(merkle::SIZE_KEY)
            .map_err(|e| write_error(dest, e))?
        {
            Some(v) => u64::from_le_bytes(v.as_ref().try_into().map_err(|_| {
                source_error(StorageError::corrupt_store(Corruption::MalformedKey {
                    keyspace: "merkle tree",
                }))
            })?),
            None => 0,
        };
        drop(paused);
        let paused_ms = started.elapsed().as_millis() as u64;

        // Step 4: commands flow again; copy what is only ever added to, up to the cut.
        let mut heads: HashMap<StreamId, u64> = HashMap::new();
        let mut events = 0u64;
        if let Some(log) = &self.shared.log {
            let out_log = out.shared.log.as_ref().expect("the copy keeps the layout");
            events = log
                .copy_records_to(out_log, &out_db, cut, &mut heads)
                .map_err(|e| write_error(dest, e))?;
        }
        let sled_layout = self.shared.log.is_none();
        for entry in src
            .range(vec![keys::GLOBAL]..keys::global_key(cut + 1).to_vec())
            .filter(|_| sled_layout)
        {
            let (key, value) = entry.map_err(source_error)?;
            let malformed = || {
                source_error(StorageError::corrupt_store(Corruption::MalformedKey {
                    keyspace: "global index",
                }))
            };
            let first = keys::parse_global_key(&key).ok_or_else(malformed)?;
            let runs = keys::parse_global_entry(&value).ok_or_else(malformed)?;
            // A group is written whole before the committer answers a pause: no entry
            // straddles the cut.
            assert!(
                first + keys::global_entry_len(&runs) - 1 <= cut,
                "a global index entry straddles the checkpoint's cut"
            );
            copier.put(&key, &value)?;
            for run in runs {
                let last = run.first_sequence + u64::from(run.count) - 1;
                let from = keys::stream_key(keys::EVENTS, &run.stream, run.first_sequence);
                let to = keys::stream_key(keys::EVENTS, &run.stream, last);
                let mut copied = 0u64;
                for record in src.range(from..=to) {
                    let (key, value) = record.map_err(source_error)?;
                    copier.put(&key, &value)?;
                    copied += 1;
                }
                if copied != u64::from(run.count) {
                    return Err(missing(&run.stream, run.first_sequence + copied));
                }
                events += copied;
                let head = heads.entry(run.stream).or_default();
                *head = (*head).max(last);
            }
        }
        assert_eq!(
            events, cut,
            "the global index covers every position to the cut"
        );
        for entry in keyspace(&src, topics::TOPIC_INDEX) {
            let (key, value) = entry.map_err(source_error)?;
            let runs = topics::parse_entry_value(&value).ok_or_else(|| {
                source_error(StorageError::corrupt_store(Corruption::MalformedKey {
                    keyspace: "topic index",
                }))
            })?;
            // An indexer batch covers positions wholly at or below the cut (it was caught up
            // to the cut while paused) or wholly above it.
            if runs
                .iter()
                .all(|r| r.first_position + u64::from(r.count) - 1 <= cut)
            {
                copier.put(&key, &value)?;
            }
        }
        for entry in keyspace(&src, merkle::TREE) {
            let (key, value) = entry.map_err(source_error)?;
            let Some((level, index)) = merkle::parse_node_key(&key) else {
                continue;
            };
            let end = (index + 1).checked_shl(u32::from(level));
            if end.is_some_and(|end| end <= merkle_size) {
                copier.put(&key, &value)?;
            }
        }
        let mut snapshots = 0u64;
        for entry in keyspace(&src, keys::SNAPSHOTS) {
            let (key, value) = entry.map_err(source_error)?;
            // A snapshot in parts is copied with its parts and counted once.
            if let Some((stream, sequence, part)) = keys::parse_snapshot_key(&key) {
                if heads.get(&stream).is_some_and(|head| sequence <= *head) {
                    copier.put(&key, &value)?;
                    snapshots += u64::from(part.is_none());
                }
            }
        }
        for (key, value) in pointers {
            // None: an entry whose frame a power cut took (a look-up ignores it too).
            if let Some(records) = self.group_records(&key, &value).map_err(source_error)? {
                copier.put(&key, &records)?;
            }
        }
        copier.flush()?;
        let keys_copied = copier.keys + 1; // and the marker
        drop(copier);
        mark.cut_position = cut;
        mark.complete = true;
        out_db
            .insert(CHECKPOINT_KEY, mark.encode())
            .map_err(|e| write_error(dest, e))?;
        drop(out_db);
        out.sync().map_err(|e| write_error(dest, e))?;
        out.close().map_err(|e| write_error(dest, e))?;
        Ok(CheckpointInfo {
            dir: dest.to_path_buf(),
            cut_position: cut,
            taken_at,
            events,
            streams: heads.len() as u64,
            snapshots,
            keys: keys_copied,
            paused_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_round_trips_and_refuses_damage() {
        let mark = CheckpointMark {
            cut_position: 42,
            taken_at: Utc.timestamp_micros(1_767_225_600_000_001).unwrap(),
            source_dir: PathBuf::from("/srv/store"),
            complete: true,
        };
        let bytes = mark.encode();
        assert_eq!(CheckpointMark::decode(&bytes), Some(mark));
        assert_eq!(CheckpointMark::decode(&bytes[..bytes.len() - 1]), None);
        let mut bad = bytes.clone();
        bad[1] = 7;
        assert_eq!(CheckpointMark::decode(&bad), None);
    }
}
