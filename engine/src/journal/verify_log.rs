//! `verify` of a store on the segment log ([`super::WritePath::Log`]): one pass over the
//! frames in global order checks every record's bytes (format, CRC, fields), that it says
//! the position it is at, and for its stream the sequence (gapless from 1), the hash chain
//! and the previous-address pointer; each stream's last record must then be its stored head.
//! A second pass, only when a visitor asks for whole streams, reads each stream back from
//! its head (the reader recovery uses) and hands its records to the visitor in order.
//!
//! The frames' own CRCs were checked when the log was opened; a frame damaged since is
//! reported where the pass meets it, and the pass stops there (the log after it cannot be
//! walked).

use super::logstore::LogParts;
use super::record::{self, Hash, RecordView};
use super::verify::{IssueKind, VerifyIssue, VerifyOptions, VerifyReport};
use super::StreamId;
use std::collections::HashMap;

/// A stream's chain as the pass has seen it so far.
struct Chain {
    sequence: u64,
    hash: Hash,
    address: u64,
    position: u64,
    /// False after a damaged or out-of-place record: the next check would only echo it.
    ok: bool,
}

fn issue(
    kind: IssueKind,
    stream: Option<&StreamId>,
    sequence: Option<u64>,
    position: Option<u64>,
    problem: impl Into<String>,
) -> VerifyIssue {
    VerifyIssue {
        kind,
        stream: stream.map(|s| s.to_string()),
        sequence,
        global_position: position,
        problem: problem.into(),
    }
}

pub(super) fn verify(db: &sled::Db, parts: &LogParts, opts: &VerifyOptions<'_>) -> VerifyReport {
    let mut report = VerifyReport::default();
    let scope = &opts.scope;
    let mut chains: HashMap<StreamId, Chain> = HashMap::new();
    let mut leaves: Option<Vec<Hash>> = scope.is_whole_store().then(Vec::new);
    let mut since_progress = 0u64;
    let log = parts.read_log();
    let total = log.next_position() - log.first_position();
    let mut expected_position = log.first_position();
    for frame in log.frames_from(log.first_position()) {
        let (frame_address, frame) = match frame {
            Ok(f) => f,
            Err(e) => {
                report.push(issue(
                    IssueKind::Storage,
                    None,
                    None,
                    Some(expected_position),
                    format!("the segment log cannot be read on from here: {e}"),
                ));
                leaves = None;
                break;
            }
        };
        let addresses = frame.record_addresses(frame_address);
        for (i, r) in frame.records.iter().enumerate() {
            let position = frame.first_position + i as u64;
            expected_position = position + 1;
            let leaf = record::hash(&r.bytes);
            if let Some(leaves) = &mut leaves {
                leaves.push(leaf);
            }
            let view = match RecordView::check(&r.bytes) {
                Ok(v) => v,
                Err(e) => {
                    report.events += 1;
                    report.events_checked += 1;
                    report.push(issue(IssueKind::Record, None, None, Some(position), e.to_string()));
                    continue;
                }
            };
            let stream = StreamId::new(view.aggregate_type, view.aggregate_id);
            let in_scope = scope.stream_in(&stream) && scope.record_in(&r.bytes);
            if scope.stream_in(&stream) {
                report.events += 1;
            }
            if in_scope {
                report.events_checked += 1;
                since_progress += 1;
            }
            if view.global_position != position {
                report.push(issue(
                    IssueKind::Index,
                    Some(&stream),
                    Some(view.sequence),
                    Some(position),
                    format!("the record at position {position} says {}", view.global_position),
                ));
            }
            let (expected, prev_hash, prev_address, ok) = match chains.get(&stream) {
                Some(c) => (c.sequence + 1, c.hash, c.address, c.ok),
                None => (1, record::ZERO_HASH, 0, true),
            };
            let mut this_ok = true;
            if view.sequence != expected {
                this_ok = false;
                if in_scope {
                    report.push(issue(
                        IssueKind::Gap,
                        Some(&stream),
                        Some(view.sequence),
                        Some(position),
                        format!("sequence {} follows {}", view.sequence, expected - 1),
                    ));
                }
            } else if in_scope && ok {
                if view.prev_hash != &prev_hash {
                    this_ok = false;
                    report.push(issue(
                        IssueKind::HashChain,
                        Some(&stream),
                        Some(view.sequence),
                        Some(position),
                        "the previous-record hash is not the SHA-256 of the stream's record before",
                    ));
                }
                if r.previous_address != prev_address {
                    this_ok = false;
                    report.push(issue(
                        IssueKind::Index,
                        Some(&stream),
                        Some(view.sequence),
                        Some(position),
                        format!(
                            "the previous-record pointer names address {}, the record before is at {prev_address}",
                            r.previous_address
                        ),
                    ));
                }
            }
            chains.insert(
                stream,
                Chain {
                    sequence: view.sequence,
                    hash: leaf,
                    address: addresses[i],
                    position,
                    ok: this_ok,
                },
            );
            if since_progress >= 16_384 {
                if let Some(progress) = opts.progress {
                    progress(since_progress, total);
                }
                since_progress = 0;
            }
        }
    }
    drop(log);
    if let (Some(progress), true) = (opts.progress, since_progress > 0) {
        progress(since_progress, total);
    }
    // Each stream's last record is its head, and every head has records.
    let heads = match parts.streams(db, None) {
        Ok(heads) => heads,
        Err(e) => {
            report.issue(None, None, format!("the stream heads cannot be read: {e}"));
            Vec::new()
        }
    };
    for (stream, _) in &heads {
        if !scope.stream_in(stream) {
            continue;
        }
        let head = match parts.log_head(db, stream) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                report.issue(Some(stream), None, format!("its head cannot be read: {e}"));
                continue;
            }
        };
        match chains.get(stream) {
            None => report.push(issue(
                IssueKind::Index,
                Some(stream),
                Some(head.sequence),
                Some(head.position),
                "the stream's head names records the log does not hold",
            )),
            Some(c)
                if (c.sequence, c.hash, c.address, c.position)
                    != (head.sequence, head.hash, head.address, head.position) =>
            {
                report.push(issue(
                    IssueKind::Index,
                    Some(stream),
                    Some(head.sequence),
                    Some(head.position),
                    format!(
                        "the stored head (sequence {}, position {}) is not the stream's last record (sequence {}, position {})",
                        head.sequence, head.position, c.sequence, c.position
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let in_scope: Vec<&StreamId> = chains.keys().filter(|s| scope.stream_in(s)).collect();
    report.streams = in_scope.len() as u64;
    if heads.iter().filter(|(s, _)| scope.stream_in(s)).count() != in_scope.len() {
        for stream in &in_scope {
            if !heads.iter().any(|(s, _)| s == *stream) {
                report.push(issue(
                    IssueKind::Index,
                    Some(stream),
                    None,
                    None,
                    "the log holds records of a stream that has no head",
                ));
            }
        }
    }
    report.global_entries = report.events;
    match (report.issues.first().cloned(), leaves) {
        (None, leaves) => report.leaves = leaves,
        (Some(first), Some(_)) => report.tree_blocked = Some(first),
        (Some(_), None) => {}
    }
    // Whole streams for the visitor, each read back from its head.
    if let (Some(factory), false) = (opts.visit, scope_limits_records(opts)) {
        let mut streams: Vec<&StreamId> = in_scope;
        streams.sort();
        for stream in streams {
            let Some(mut visitor) = factory(stream) else {
                continue;
            };
            let complete = match parts.read_stream(db, stream, 1, u64::MAX) {
                Ok(records) => {
                    for ((_, bytes), sequence) in records.iter().zip(1..) {
                        visitor.record(sequence, RecordView::check(bytes).ok().as_ref());
                    }
                    true
                }
                Err(_) => false,
            };
            visitor.finish(complete);
        }
    }
    report
}

fn scope_limits_records(opts: &VerifyOptions<'_>) -> bool {
    let s = &opts.scope;
    s.positions.is_some() || s.from.is_some() || s.to.is_some()
}
