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

use super::logindex::LogHead;
use super::logstore::LogParts;
use super::record::{self, Hash, RecordView};
use super::verify::{new_issue, IssueKind, VerifyIssue, VerifyOptions, VerifyReport};
use super::StreamId;
use crate::audit::merkle;
use std::collections::HashMap;

/// Records checked between two progress calls.
const PROGRESS_EVERY_RECORDS: u64 = 16_384;

/// A stream's chain as the pass has seen it so far.
struct Chain {
    sequence: u64,
    hash: Hash,
    address: u64,
    position: u64,
    /// False after a damaged or out-of-place record: the next check would only echo it.
    ok: bool,
}

pub(super) fn verify(db: &sled::Db, parts: &LogParts, opts: &VerifyOptions<'_>) -> VerifyReport {
    let mut report = VerifyReport::default();
    let scope = &opts.scope;
    let mut issues: Vec<VerifyIssue> = Vec::new();
    let mut chains: HashMap<StreamId, Chain> = HashMap::new();
    // Damaged records by address, with their issue: a later record that points at one names
    // its stream and sequence (its own bytes cannot), and is not reported as the echo.
    // (`None`: damaged but outside the scope, so not reported; its successor is still not
    // an echo.)
    let mut damaged: HashMap<u64, Option<usize>> = HashMap::new();
    let mut leaves: Option<Vec<Hash>> = scope.is_whole_store().then(Vec::new);
    let mut since_progress = 0u64;
    // The log as it is now: the pass reads up to here (a live store goes on growing), a frame
    // at a time, without holding the log between frames.
    let (first, end) = {
        let log = parts.read_log();
        (log.first_position(), log.next_position())
    };
    // Every store on the log starts its log at position 1 (no store moves onto the log from
    // the sled layout): a later first position means its first segments are gone, and the
    // leaves that remain would be hashed as the tree's first ones.
    if first != 1 && end > first {
        let missing = new_issue(
            IssueKind::Storage,
            None,
            None,
            Some(1),
            format!(
                "the segment log starts at global position {first}, not 1: the events at \
                 1..={} are missing (its first segments were removed)",
                first - 1
            ),
        );
        if leaves.take().is_some() {
            report.tree_blocked = Some(missing.clone());
        }
        issues.push(missing);
    }
    let total = end - first;
    let mut address = 0u64;
    let mut position = first;
    while position < end {
        let step = parts.read_log().frame_from(address);
        let (frame_address, frame, next) = match step {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let blocked = new_issue(
                    IssueKind::Storage,
                    None,
                    None,
                    Some(position),
                    format!("the segment log cannot be read on from here: {e}"),
                );
                if leaves.take().is_some() {
                    report.tree_blocked = Some(blocked.clone());
                }
                issues.push(blocked);
                break;
            }
        };
        address = next;
        let addresses = frame.record_addresses(frame_address);
        for (i, r) in frame.records.iter().enumerate() {
            position = frame.first_position + i as u64;
            if position >= end {
                break;
            }
            let record_hash = record::hash(&r.bytes);
            if let Some(leaves) = &mut leaves {
                leaves.push(merkle::leaf_hash(&record_hash));
            }
            let view = match RecordView::check(&r.bytes) {
                Ok(v) => v,
                Err(e) => {
                    report.events += 1;
                    if !scope.record_in(&r.bytes) {
                        damaged.insert(addresses[i], None);
                        continue;
                    }
                    report.events_checked += 1;
                    damaged.insert(addresses[i], Some(issues.len()));
                    issues.push(new_issue(
                        IssueKind::Record,
                        None,
                        None,
                        Some(position),
                        e.to_string(),
                    ));
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
                issues.push(new_issue(
                    IssueKind::Index,
                    Some(&stream),
                    Some(view.sequence),
                    Some(position),
                    format!(
                        "the record at position {position} says {}",
                        view.global_position
                    ),
                ));
            }
            let after_damage = damaged.get(&r.previous_address).copied();
            if let Some(Some(at)) = after_damage {
                // The damaged record before this one was this stream's, one sequence back.
                // Named as the sled layout names it, by stream and sequence (the position
                // stays only for a record nothing names).
                let named = &mut issues[at];
                named.stream = Some(stream.to_string());
                named.sequence = view.sequence.checked_sub(1);
                named.global_position = None;
            }
            let (expected, prev_hash, prev_address, ok) = match chains.get(&stream) {
                Some(c) => (c.sequence + 1, c.hash, c.address, c.ok),
                None => (1, record::ZERO_HASH, 0, true),
            };
            let mut this_ok = true;
            if after_damage.is_some() {
                // Its chain check would only echo the damage already reported.
            } else if view.sequence != expected {
                this_ok = false;
                if in_scope {
                    issues.push(new_issue(
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
                    issues.push(new_issue(
                        IssueKind::HashChain,
                        Some(&stream),
                        Some(view.sequence),
                        Some(position),
                        "the previous-record hash is not the SHA-256 of the stream's record before",
                    ));
                } else if r.previous_address != prev_address {
                    this_ok = false;
                    issues.push(new_issue(
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
                    hash: record_hash,
                    address: addresses[i],
                    position,
                    ok: this_ok,
                },
            );
            if since_progress >= PROGRESS_EVERY_RECORDS {
                if let Some(progress) = opts.progress {
                    progress(since_progress, total);
                }
                since_progress = 0;
            }
        }
        position = frame.end_position();
    }
    if let (Some(progress), true) = (opts.progress, since_progress > 0) {
        progress(since_progress, total);
    }
    // Each stream's last record is its head, and every head has records. A head that moved
    // past the pass's end (a live store) is not compared.
    let heads = match parts.streams(db, None) {
        Ok(heads) => heads,
        Err(e) => {
            report.issue(None, None, format!("the stream heads cannot be read: {e}"));
            Vec::new()
        }
    };
    let mut head_of: HashMap<&StreamId, LogHead> = HashMap::new();
    for (stream, _) in &heads {
        let head = match parts.log_head(db, stream) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                report.issue(Some(stream), None, format!("its head cannot be read: {e}"));
                continue;
            }
        };
        if let Some(&at) = damaged.get(&head.address) {
            if let Some(at) = at {
                let named = &mut issues[at];
                named.stream = Some(stream.to_string());
                named.sequence = Some(head.sequence);
                named.global_position = None;
            }
            head_of.insert(stream, head);
            continue;
        }
        if !scope.stream_in(stream) || head.position >= end {
            head_of.insert(stream, head);
            continue;
        }
        head_of.insert(stream, head);
        match chains.get(stream) {
            None => issues.push(new_issue(
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
                issues.push(new_issue(
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
    let mut in_scope: Vec<&StreamId> = chains.keys().filter(|s| scope.stream_in(s)).collect();
    in_scope.sort();
    report.streams = in_scope.len() as u64;
    for stream in &in_scope {
        if !head_of.contains_key(stream) {
            issues.push(new_issue(
                IssueKind::Index,
                Some(stream),
                None,
                None,
                "the log holds records of a stream that has no head",
            ));
        }
    }
    // Damaged records are reported where the store holds them: with their stream and
    // sequence when a pointer named them, else by position.
    let in_scope_issue = |i: &VerifyIssue| match (&i.stream, &scope.aggregate_type) {
        (None, _) | (_, None) => true,
        (Some(s), Some(_)) => in_scope.iter().any(|id| id.to_string() == *s),
    };
    for issue in issues.into_iter().filter(in_scope_issue) {
        report.push(issue);
    }
    report.global_entries = report.events;
    // The leaves are the stored records' hashes, damaged or not (as the sled layout's
    // verify has them): the tree is recomputed whenever every record could be read.
    report.leaves = leaves;
    // Whole streams for the visitor, each walked back from its head.
    if let (Some(factory), false) = (opts.visit, scope_limits_records(opts)) {
        for stream in in_scope {
            let Some(mut visitor) = factory(stream) else {
                continue;
            };
            let Some(head) = head_of.get(stream).copied() else {
                visitor.finish(false);
                continue;
            };
            let (entries, complete) = parts.entries_back(head);
            for (sequence, bytes) in &entries {
                let view = RecordView::check(bytes).ok().filter(|v| {
                    v.aggregate_type == stream.aggregate_type
                        && v.aggregate_id == stream.aggregate_id
                        && v.sequence == *sequence
                });
                visitor.record(*sequence, view.as_ref());
            }
            visitor.finish(complete);
        }
    }
    report
}

fn scope_limits_records(opts: &VerifyOptions<'_>) -> bool {
    let s = &opts.scope;
    s.positions.is_some() || s.from.is_some() || s.to.is_some()
}
