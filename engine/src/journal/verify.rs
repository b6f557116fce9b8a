//! Integrity verification: every record's format and CRC32C, its place (key and record
//! agree), gapless sequences from 1, the SHA-256 chain of each stream, and the global index
//! (one entry per event, positions 1..=N without gaps, each pointing back at its record).
//! Snapshot-against-replay checks need the aggregate types and live in `evershard-cli`
//! (`verify::check_stream`).
//!
//! Every break is reported, not only the first of a stream: a damaged record is named and the
//! scan goes on with the next one. Consequences of one break are not reported again as breaks
//! of their own (the record after a damaged, misplaced or missing one necessarily fails its
//! chain check against it; that is the first break's echo).
//!
//! Speed: one pass over the event keys, split into two key ranges scanned on two threads; a
//! record's bytes are checked in place ([`RecordView::check`]: no payload decoding, no
//! allocation per record); the SHA-256 of each record serves the chain and the Merkle leaf at
//! once, so the tree is recomputed from the leaves this pass keeps ([`VerifyReport::leaves`])
//! instead of reading every record a second time in global order.

use super::keys::{self, GlobalRun};
use super::record::{self, Hash, RecordView};
use super::StreamId;
use crate::audit::merkle;
use crate::error::StorageError;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::ops::RangeInclusive;

/// Issues a report lists at most; the count of the rest is reported as one more issue. A
/// store damaged everywhere must still give a report of bounded size.
pub const VERIFY_ISSUES_MAX: usize = 10_000;
/// Records a scan thread checks between two progress calls.
const PROGRESS_EVERY_RECORDS: u64 = 16_384;
/// Below this many events one thread does the whole scan (starting a second costs more).
const PARALLEL_EVENTS_MIN: u64 = 65_536;

/// What kind of break an issue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IssueKind {
    /// The record's own bytes fail their checks (length, format, CRC32C, fields).
    Record,
    /// An intact record stored under another aggregate's or sequence's key.
    Misplaced,
    /// The record's `prev_hash` is not the SHA-256 of the stream's previous record.
    HashChain,
    /// Sequences missing from a stream (a deleted record).
    Gap,
    /// A stored key that does not parse.
    MalformedKey,
    /// The global index: a malformed entry, a gap or overlap of positions, a position that
    /// points at a missing record or one that says another position, a record no entry names.
    Index,
    /// sled reports damage in its own files; the scan of that key range stopped there.
    Storage,
    /// More issues than [`VERIFY_ISSUES_MAX`]: their count.
    Truncated,
}

/// One break found, with the aggregate, sequence and global position where they apply.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VerifyIssue {
    pub kind: IssueKind,
    pub stream: Option<String>,
    pub sequence: Option<u64>,
    pub global_position: Option<u64>,
    pub problem: String,
}

/// Which records to check. The default is the whole store. With any limit the Merkle tree is
/// not recomputed (it needs every record): [`VerifyReport::leaves`] stays `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyScope {
    /// Only streams of this type (with `aggregate_id`, only that stream).
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    /// Only records at these global positions.
    pub positions: Option<RangeInclusive<u64>>,
    /// Only records with a timestamp in `from..=to`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl VerifyScope {
    pub fn is_whole_store(&self) -> bool {
        self == &VerifyScope::default()
    }

    fn records_limited(&self) -> bool {
        self.positions.is_some() || self.from.is_some() || self.to.is_some()
    }

    pub(super) fn stream_in(&self, stream: &StreamId) -> bool {
        self.aggregate_type
            .as_ref()
            .is_none_or(|t| *t == stream.aggregate_type)
            && self
                .aggregate_id
                .as_ref()
                .is_none_or(|i| *i == stream.aggregate_id)
    }

    /// Whether a record (by its unchecked header) is to be checked.
    pub(super) fn record_in(&self, bytes: &[u8]) -> bool {
        if !self.records_limited() {
            return true;
        }
        let Some((position, micros)) = record::peek_position_and_time(bytes) else {
            return true; // too short to say: check it, so the damage is reported
        };
        let position_in = self
            .positions
            .as_ref()
            .is_none_or(|r| r.contains(&position));
        let time_in = self.from.is_none_or(|f| micros >= f.timestamp_micros())
            && self.to.is_none_or(|t| micros <= t.timestamp_micros());
        position_in && time_in
    }

    fn position_in(&self, position: u64) -> bool {
        self.positions
            .as_ref()
            .is_none_or(|r| r.contains(&position))
    }

    /// The event key range to scan.
    fn key_range(&self) -> (Vec<u8>, Vec<u8>) {
        let prefix = match (&self.aggregate_type, &self.aggregate_id) {
            (Some(t), Some(i)) => keys::stream_prefix(keys::EVENTS, &StreamId::new(t, i)),
            (Some(t), None) => {
                let mut p = vec![keys::EVENTS, t.len().min(255) as u8];
                p.extend_from_slice(t.as_bytes());
                p
            }
            _ => vec![keys::EVENTS],
        };
        let end = keys::prefix_successor(&prefix).unwrap_or_else(|| vec![u8::MAX; 2]);
        (prefix, end)
    }
}

/// Sees the records of one stream as `verify` reads them, in sequence order, on the thread
/// that reads them: what a caller needs to replay the stream without reading it again (see
/// [`VerifyOptions::visit`]).
pub trait StreamVisitor: Send {
    /// One stored record: its key's sequence and, when its bytes and place passed their
    /// checks, its fields (`None`: the record is damaged or misplaced, already reported).
    fn record(&mut self, sequence: u64, record: Option<&RecordView<'_>>);
    /// The stream's records ended; `complete` is false when sled stopped the scan in it.
    fn finish(self: Box<Self>, complete: bool);
}

/// Makes the visitor of one stream (`None`: this stream needs none).
pub type VisitorFactory<'a> = dyn Fn(&StreamId) -> Option<Box<dyn StreamVisitor + 'a>> + Sync + 'a;

/// How to verify: the scope, threads, and a progress callback.
#[derive(Default)]
pub struct VerifyOptions<'a> {
    pub scope: VerifyScope,
    /// Threads for the record scan (0 or 1: one).
    pub threads: usize,
    /// Called from the scan threads with the number of records checked since the last call
    /// and the number of events in the store (for a progress bar's length).
    pub progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
    /// Called for each stream in scope, whose visitor then sees every record of it. Not
    /// called when the scope limits records by position or time (a visitor is for whole
    /// streams).
    pub visit: Option<&'a VisitorFactory<'a>>,
}

impl std::fmt::Debug for VerifyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("scope", &self.scope)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("visit", &self.visit.is_some())
            .finish()
    }
}

/// What [`Journal::verify_with`](super::Journal::verify_with) found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub streams: u64,
    pub events: u64,
    /// Records whose bytes, place and chain were checked (all events unless limited).
    pub events_checked: u64,
    pub global_entries: u64,
    pub snapshots_checked: u64,
    pub issues: Vec<VerifyIssue>,
    /// Issues found beyond [`VERIFY_ISSUES_MAX`] (counted, not listed).
    pub issues_not_listed: u64,
    /// The Merkle leaves of every event in global order, when the whole store was checked
    /// and every position of the index has its record (`Journal::check_tree_with` takes them).
    #[serde(skip)]
    pub leaves: Option<Vec<Hash>>,
    /// When the leaves are `None` on a whole-store check: why the tree cannot be recomputed.
    #[serde(skip)]
    pub tree_blocked: Option<VerifyIssue>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }

    /// Adds a store-level issue (no aggregate).
    pub fn issue(
        &mut self,
        stream: Option<&StreamId>,
        sequence: Option<u64>,
        problem: impl Into<String>,
    ) {
        self.push(VerifyIssue {
            kind: IssueKind::Storage,
            stream: stream.map(|s| s.to_string()),
            sequence,
            global_position: None,
            problem: problem.into(),
        });
    }

    pub(super) fn push(&mut self, issue: VerifyIssue) {
        if self.issues.len() < VERIFY_ISSUES_MAX {
            self.issues.push(issue);
        } else {
            self.issues_not_listed += 1;
        }
    }
}

pub(super) fn new_issue(
    kind: IssueKind,
    stream: Option<&StreamId>,
    sequence: Option<u64>,
    global_position: Option<u64>,
    problem: impl Into<String>,
) -> VerifyIssue {
    VerifyIssue {
        kind,
        stream: stream.map(|s| s.to_string()),
        sequence,
        global_position,
        problem: problem.into(),
    }
}

/// One stored record as the scan saw it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    sequence: u64,
    /// The position its header claims; 0 when the record is damaged (nothing in it is
    /// trusted) or was outside the scope (not checked).
    position: u64,
    leaf: Hash,
}

/// One stream's records, in sequence order.
#[derive(Debug)]
struct SeenStream {
    id: StreamId,
    records: Vec<Seen>,
}

impl SeenStream {
    fn find(&self, sequence: u64) -> Option<&Seen> {
        let first = self.records.first()?.sequence;
        let guess = sequence.checked_sub(first).map(|d| d as usize);
        match guess.and_then(|g| self.records.get(g)) {
            Some(s) if s.sequence == sequence => Some(s),
            _ => self
                .records
                .binary_search_by_key(&sequence, |s| s.sequence)
                .ok()
                .map(|i| &self.records[i]),
        }
    }
}

/// What one scan thread found over its key range.
#[derive(Debug, Default)]
struct Scan {
    streams: Vec<SeenStream>,
    issues: Vec<VerifyIssue>,
    events: u64,
    checked: u64,
    /// sled failed inside the range: the records after this point were not read.
    stopped: bool,
}

/// The state of the stream being scanned.
struct Current<'a> {
    prefix: Vec<u8>,
    expected: u64,
    /// The previous record's stored bytes, hashed only when the next record's chain is
    /// checked (a limited scope skips most of them).
    prev: Option<sled::IVec>,
    prev_hash: Option<Hash>,
    /// False when the previous record was damaged, misplaced or followed a gap: the next
    /// chain check would only echo that break.
    prev_ok: bool,
    visitor: Option<Box<dyn StreamVisitor + 'a>>,
}

/// Ends the stream being scanned: its visitor sees the end.
fn finish(current: &mut Option<Current<'_>>, complete: bool) {
    if let Some(visitor) = current.take().and_then(|c| c.visitor) {
        visitor.finish(complete);
    }
}

fn scan_range<'a>(
    db: &sled::Db,
    (from, to): (&[u8], &[u8]),
    total: u64,
    opts: &VerifyOptions<'a>,
) -> Scan {
    let scope = &opts.scope;
    let visit = opts.visit.filter(|_| !scope.records_limited());
    let mut scan = Scan::default();
    let mut current: Option<Current<'a>> = None;
    let mut skipping: Option<Vec<u8>> = None; // the prefix of an out-of-scope stream
    let mut unreported = 0u64;
    for entry in db.range(from.to_vec()..to.to_vec()) {
        let (key, value) = match entry {
            Ok(kv) => kv,
            Err(e) => {
                // sled's iterator may return the same error forever: stop this range here.
                let after = scan
                    .streams
                    .last()
                    .and_then(|s| s.records.last().map(|r| format!("{}#{}", s.id, r.sequence)))
                    .unwrap_or_else(|| "the start of the range".into());
                let problem = format!(
                    "sled reports damage after {after}: the records after it in key order \
                     were not read ({})",
                    StorageError::from(e)
                );
                scan.issues
                    .push(new_issue(IssueKind::Storage, None, None, None, problem));
                scan.stopped = true;
                finish(&mut current, false);
                break;
            }
        };
        if let Some(prefix) = &skipping {
            if key.starts_with(prefix) {
                continue;
            }
            skipping = None;
        }
        let same_stream = current
            .as_ref()
            .is_some_and(|c| key.len() == c.prefix.len() + 8 && key.starts_with(&c.prefix));
        if !same_stream {
            let Some((stream, _)) = keys::parse_stream_key(&key) else {
                let problem = format!("malformed event key {key:?}");
                scan.issues.push(new_issue(
                    IssueKind::MalformedKey,
                    None,
                    None,
                    None,
                    problem,
                ));
                continue;
            };
            let prefix = keys::stream_prefix(keys::EVENTS, &stream);
            finish(&mut current, true);
            if !scope.stream_in(&stream) {
                skipping = Some(prefix);
                continue;
            }
            current = Some(Current {
                prefix,
                expected: 1,
                prev: None,
                prev_hash: Some(record::ZERO_HASH),
                prev_ok: true,
                visitor: visit.and_then(|make| make(&stream)),
            });
            scan.streams.push(SeenStream {
                id: stream,
                records: Vec::new(),
            });
        }
        let cur = current.as_mut().expect("set above");
        let stream = scan.streams.last_mut().expect("pushed with current");
        let sequence = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8 bytes"));
        scan.events += 1;
        let mut ok = cur.prev_ok;
        if sequence != cur.expected {
            let problem = if sequence == 0 {
                "sequence 0 is not a valid sequence".to_owned()
            } else if sequence > cur.expected {
                format!(
                    "gap: sequences {}..={} are missing (deleted records)",
                    cur.expected,
                    sequence - 1
                )
            } else {
                format!("sequence {sequence} out of order")
            };
            let at = Some(cur.expected.min(sequence.max(1)));
            scan.issues.push(new_issue(
                IssueKind::Gap,
                Some(&stream.id),
                at,
                None,
                problem,
            ));
            ok = false;
        }
        cur.expected = sequence.saturating_add(1);
        let mut seen = Seen {
            sequence,
            position: 0,
            leaf: [0; 32],
        };
        if scope.record_in(&value) {
            scan.checked += 1;
            let hash = record::hash(&value);
            seen.leaf = merkle::leaf_hash(&hash);
            match check_record(&stream.id, sequence, &value) {
                Err(issue) => {
                    scan.issues.push(issue);
                    cur.prev_ok = false;
                    if let Some(visitor) = &mut cur.visitor {
                        visitor.record(sequence, None);
                    }
                }
                Ok(view) => {
                    seen.position = view.global_position;
                    if let Some(visitor) = &mut cur.visitor {
                        visitor.record(sequence, Some(&view));
                    }
                    // A predecessor outside the scope was not checked: if its own bytes are
                    // damaged, that break lies outside the scope and this link only echoes it.
                    let prev_hash = cur.prev_hash.or_else(|| {
                        let prev = cur.prev.as_deref()?;
                        RecordView::check(prev).ok().map(|_| record::hash(prev))
                    });
                    if ok && prev_hash.is_some_and(|h| &h != view.prev_hash) {
                        scan.issues.push(new_issue(
                            IssueKind::HashChain,
                            Some(&stream.id),
                            Some(sequence),
                            Some(view.global_position),
                            format!(
                                "hash chain broken: the record's previous-record hash is not \
                                 the SHA-256 of sequence {} as stored",
                                sequence.saturating_sub(1)
                            ),
                        ));
                    }
                    cur.prev_ok = true;
                }
            }
            cur.prev_hash = Some(hash);
        } else {
            seen.position = record::peek_position_and_time(&value).map_or(0, |p| p.0);
            cur.prev_hash = None;
            cur.prev_ok = ok;
        }
        cur.prev = Some(value);
        stream.records.push(seen);
        unreported += 1;
        if unreported >= PROGRESS_EVERY_RECORDS {
            if let Some(progress) = opts.progress {
                progress(unreported, total);
            }
            unreported = 0;
        }
    }
    if !scan.stopped {
        finish(&mut current, true);
    }
    if let Some(progress) = opts.progress {
        progress(unreported, total);
    }
    scan
}

/// The checks of one record's bytes and place, as an issue naming it.
fn check_record<'v>(
    stream: &StreamId,
    sequence: u64,
    bytes: &'v [u8],
) -> Result<RecordView<'v>, VerifyIssue> {
    let view = RecordView::check(bytes).map_err(|e| {
        let position = record::peek_position_and_time(bytes).map(|p| p.0);
        let problem = format!(
            "{e} (the record's bytes were changed; its header claims global position {})",
            position.map_or_else(|| "?".to_owned(), |p| p.to_string())
        );
        new_issue(
            IssueKind::Record,
            Some(stream),
            Some(sequence),
            None,
            problem,
        )
    })?;
    if view.sequence != sequence
        || view.aggregate_type != stream.aggregate_type
        || view.aggregate_id != stream.aggregate_id
    {
        let problem = format!(
            "record says {}/{}#{} (global position {}), stored under another key",
            view.aggregate_type, view.aggregate_id, view.sequence, view.global_position
        );
        return Err(new_issue(
            IssueKind::Misplaced,
            Some(stream),
            Some(sequence),
            Some(view.global_position),
            problem,
        ));
    }
    Ok(view)
}

/// Where to split the whole event key space for two threads: the first key of the stream
/// holding the middle global position, so that no stream spans two threads.
fn split_key(db: &sled::Db, events: u64) -> Option<Vec<u8>> {
    let middle = keys::global_key(events / 2);
    let (_, value) = db.range(..=middle).next_back()?.ok()?;
    let runs = keys::parse_global_entry(&value)?;
    let stream = &runs.first()?.stream;
    Some(keys::stream_prefix(keys::EVENTS, stream))
}

pub(super) fn verify(db: &sled::Db, opts: &VerifyOptions<'_>) -> VerifyReport {
    let mut report = VerifyReport::default();
    let scope = &opts.scope;
    let last = super::last_global_position(db).unwrap_or(0);
    let (from, to) = scope.key_range();
    let split =
        (opts.threads >= 2 && scope.aggregate_type.is_none() && last >= PARALLEL_EVENTS_MIN)
            .then(|| split_key(db, last))
            .flatten()
            .filter(|k| k.as_slice() > from.as_slice() && k.as_slice() < to.as_slice());
    let scans: Vec<Scan> = match split {
        None => vec![scan_range(db, (&from, &to), last, opts)],
        Some(middle) => std::thread::scope(|s| {
            let low = s.spawn(|| scan_range(db, (&from, &middle), last, opts));
            let high = scan_range(db, (&middle, &to), last, opts);
            let low = low.join().unwrap_or_else(|_| Scan {
                issues: vec![new_issue(
                    IssueKind::Storage,
                    None,
                    None,
                    None,
                    "the scan of the first half of the keys panicked",
                )],
                stopped: true,
                ..Scan::default()
            });
            vec![low, high]
        }),
    };
    let mut streams: Vec<SeenStream> = Vec::new();
    let mut stopped = false;
    for scan in scans {
        report.events += scan.events;
        report.events_checked += scan.checked;
        stopped |= scan.stopped;
        streams.extend(scan.streams);
        for issue in scan.issues {
            report.push(issue);
        }
    }
    report.streams = streams.len() as u64;
    check_index(db, scope, &streams, stopped, last, &mut report);
    report
}

/// The global index against the records: positions 1..=N without gap or overlap, each
/// naming a stored record that says that position, every checked record named once. On a
/// whole-store check it also gathers the Merkle leaves in global order.
fn check_index(
    db: &sled::Db,
    scope: &VerifyScope,
    streams: &[SeenStream],
    scan_stopped: bool,
    last: u64,
    report: &mut VerifyReport,
) {
    let by_id: HashMap<&StreamId, usize> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| (&s.id, i))
        .collect();
    let mut named: Vec<Vec<bool>> = streams
        .iter()
        .map(|s| vec![false; s.records.len()])
        .collect();
    let whole = scope.is_whole_store() && !scan_stopped;
    let mut leaves: Option<Vec<Hash>> = whole.then(|| Vec::with_capacity(last as usize));
    let mut unread = 0u64;
    let start = match &scope.positions {
        Some(r) => match db.range(..=keys::global_key(*r.start())).next_back() {
            Some(Ok((key, _))) if key.first() == Some(&keys::GLOBAL) => key.to_vec(),
            _ => keys::global_key(0).to_vec(),
        },
        None => keys::global_key(0).to_vec(),
    };
    let end = keys::global_key(scope.positions.as_ref().map_or(u64::MAX, |r| *r.end()));
    let mut expected_pos: Option<u64> = None;
    for entry in db.range(start..=end.to_vec()) {
        let (key, value) = match entry {
            Ok(kv) => kv,
            Err(e) => {
                let problem = format!(
                    "sled reports damage in the global index after position {}: the rest of \
                     the index was not read ({})",
                    expected_pos.unwrap_or(1).saturating_sub(1),
                    StorageError::from(e)
                );
                report.push(new_issue(IssueKind::Storage, None, None, None, problem));
                leaves = None;
                break;
            }
        };
        let (Some(first), Some(runs)) = (
            keys::parse_global_key(&key),
            keys::parse_global_entry(&value),
        ) else {
            let at = keys::parse_global_key(&key);
            let problem = "malformed global index entry: the positions it covers cannot be read";
            report.push(new_issue(IssueKind::Index, None, None, at, problem));
            if leaves.is_some() {
                report.tree_blocked = Some(new_issue(IssueKind::Index, None, None, at, problem));
            }
            leaves = None;
            continue;
        };
        match expected_pos {
            Some(e) if e != first => {
                let problem =
                    format!("global index: expected position {e}, entry starts at {first}");
                report.push(new_issue(
                    IssueKind::Index,
                    None,
                    None,
                    Some(first),
                    problem,
                ));
                if leaves.is_some() {
                    report.tree_blocked = Some(new_issue(
                        IssueKind::Index,
                        None,
                        None,
                        Some(e),
                        problem_text_gap(e),
                    ));
                }
                leaves = None;
            }
            None if scope.positions.is_none() && first != 1 => {
                let problem = format!("global index: the first entry starts at {first}, not 1");
                report.push(new_issue(
                    IssueKind::Index,
                    None,
                    None,
                    Some(first),
                    problem,
                ));
                leaves = None;
            }
            _ => {}
        }
        expected_pos = Some(first + keys::global_entry_len(&runs));
        let mut position = first;
        for run in &runs {
            check_run(
                scope,
                streams,
                &by_id,
                &mut named,
                run,
                position,
                &mut leaves,
                &mut unread,
                scan_stopped,
                report,
            );
            position += u64::from(run.count);
        }
    }
    if unread > 0 {
        let problem = format!(
            "{unread} global index positions name records that were not read (sled stopped the \
             record scan)"
        );
        report.push(new_issue(IssueKind::Storage, None, None, None, problem));
    }
    for (stream, flags) in streams.iter().zip(&named) {
        for (seen, named) in stream.records.iter().zip(flags) {
            if !named && seen.position != 0 && scope.position_in(seen.position) && !scan_stopped {
                let problem = format!(
                    "the record says global position {}, but no global index entry names it",
                    seen.position
                );
                report.push(new_issue(
                    IssueKind::Index,
                    Some(&stream.id),
                    Some(seen.sequence),
                    Some(seen.position),
                    problem,
                ));
            }
        }
    }
    // No count check: the three checks above make index and records a bijection (every
    // position names a record that says that position, every record is named).
    if let Some(leaves) = &leaves {
        debug_assert_eq!(leaves.len() as u64, report.global_entries);
    }
    report.leaves = leaves;
}

fn problem_text_gap(position: u64) -> String {
    format!("the global index has no entry for position {position}")
}

/// One run of an index entry: `run.count` events of one stream from `position`.
#[allow(clippy::too_many_arguments)]
fn check_run(
    scope: &VerifyScope,
    streams: &[SeenStream],
    by_id: &HashMap<&StreamId, usize>,
    named: &mut [Vec<bool>],
    run: &GlobalRun,
    position: u64,
    leaves: &mut Option<Vec<Hash>>,
    unread: &mut u64,
    scan_stopped: bool,
    report: &mut VerifyReport,
) {
    if !scope.stream_in(&run.stream) {
        return;
    }
    let index = by_id.get(&run.stream).copied();
    for i in 0..u64::from(run.count) {
        let (pos, sequence) = (position + i, run.first_sequence + i);
        if !scope.position_in(pos) {
            continue;
        }
        report.global_entries += 1;
        let found = index.and_then(|s| {
            let stream = &streams[s];
            let at = stream
                .records
                .binary_search_by_key(&sequence, |r| r.sequence)
                .ok()?;
            Some((s, at, stream.find(sequence)?))
        });
        let Some((s, at, seen)) = found else {
            if scan_stopped {
                *unread += 1;
                continue;
            }
            let problem = format!("global position {pos} points at a missing record (deleted)");
            let issue = new_issue(
                IssueKind::Index,
                Some(&run.stream),
                Some(sequence),
                Some(pos),
                problem,
            );
            if leaves.is_some() {
                let why = format!(
                    "global position {pos} names {}#{sequence}, whose record is missing",
                    run.stream
                );
                report.tree_blocked = Some(new_issue(
                    IssueKind::Index,
                    Some(&run.stream),
                    Some(sequence),
                    Some(pos),
                    why,
                ));
            }
            *leaves = None;
            report.push(issue);
            continue;
        };
        named[s][at] = true;
        if seen.position != 0 && seen.position != pos {
            let problem = format!(
                "global index says position {pos}, the record says {}",
                seen.position
            );
            report.push(new_issue(
                IssueKind::Index,
                Some(&run.stream),
                Some(sequence),
                Some(pos),
                problem,
            ));
        }
        if let Some(leaves) = leaves {
            leaves.push(seen.leaf);
        }
    }
}
