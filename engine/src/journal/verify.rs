//! Integrity verification: every record's format and CRC32C, its place (key and record
//! agree), gapless sequences from 1, the SHA-256 chain of each stream, and the global index
//! (one entry per event, positions 1..=N without gaps, each pointing back at its record).
//! Snapshot-against-replay checks need the aggregate types and live in `evershard-cli` (`verify::check_stream`).

use super::{decode_checked, keys, record, StreamId};
use crate::error::StorageError;

/// One problem found, with the aggregate and sequence where it applies.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VerifyIssue {
    pub stream: Option<String>,
    pub sequence: Option<u64>,
    pub problem: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub streams: u64,
    pub events: u64,
    pub global_entries: u64,
    pub snapshots_checked: u64,
    pub issues: Vec<VerifyIssue>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }
    pub fn issue(
        &mut self,
        stream: Option<&StreamId>,
        sequence: Option<u64>,
        problem: impl Into<String>,
    ) {
        self.issues.push(VerifyIssue {
            stream: stream.map(|s| s.to_string()),
            sequence,
            problem: problem.into(),
        });
    }
}

fn issue_from(report: &mut VerifyReport, err: StorageError) {
    match err {
        StorageError::Corrupt {
            stream,
            sequence,
            cause,
        } => report.issues.push(VerifyIssue {
            stream: stream.map(|s| s.to_string()),
            sequence,
            problem: cause.to_string(),
        }),
        other => report.issues.push(VerifyIssue {
            stream: None,
            sequence: None,
            problem: other.to_string(),
        }),
    }
}

pub(super) fn verify(db: &sled::Db) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut current: Option<StreamId> = None;
    let mut expected_seq = 1u64;
    let mut prev_hash = record::ZERO_HASH;

    for entry in db.scan_prefix([keys::EVENTS]) {
        let (key, value) = match entry {
            Ok(kv) => kv,
            Err(e) => {
                issue_from(&mut report, e.into());
                break;
            }
        };
        let Some((stream, seq)) = keys::parse_stream_key(&key) else {
            report.issue(None, None, format!("malformed event key {key:?}"));
            continue;
        };
        if current.as_ref() != Some(&stream) {
            current = Some(stream.clone());
            report.streams += 1;
            expected_seq = 1;
            prev_hash = record::ZERO_HASH;
        }
        report.events += 1;
        if seq == 0 {
            report.issue(Some(&stream), Some(0), "sequence 0 is not a valid sequence");
        } else if seq != expected_seq {
            report.issue(
                Some(&stream),
                Some(expected_seq),
                format!("gap: sequences {expected_seq}..{} are missing", seq - 1),
            );
        }
        expected_seq = seq + 1;
        match decode_checked(&stream, seq, &value) {
            Err(e) => issue_from(&mut report, e),
            Ok(rec) => {
                if rec.prev_hash != prev_hash {
                    report.issue(
                        Some(&stream),
                        Some(seq),
                        "hash chain broken: previous-record hash does not match",
                    );
                }
            }
        }
        prev_hash = record::hash(&value);
    }

    // The global index: entries cover positions 1..=N without gap or overlap, and each
    // position points at a record whose header carries that position. Together with the
    // count check below this makes index and records a bijection.
    let mut expected_pos = 1u64;
    for entry in db.scan_prefix([keys::GLOBAL]) {
        let (key, value) = match entry {
            Ok(kv) => kv,
            Err(e) => {
                issue_from(&mut report, e.into());
                break;
            }
        };
        let (Some(first), Some(runs)) = (
            keys::parse_global_key(&key),
            keys::parse_global_entry(&value),
        ) else {
            report.issue(None, None, "malformed global index entry");
            continue;
        };
        if first != expected_pos {
            report.issue(
                None,
                None,
                format!("global index: expected position {expected_pos}, entry starts at {first}"),
            );
        }
        for (pos, stream, seq) in super::expand_runs(first, &runs) {
            report.global_entries += 1;
            match db.get(keys::stream_key(keys::EVENTS, &stream, seq)) {
                Ok(Some(bytes)) => match record::Record::decode(&bytes) {
                    Ok(rec) if rec.global_position == pos => {}
                    Ok(rec) => report.issue(
                        Some(&stream),
                        Some(seq),
                        format!(
                            "global index says position {pos}, record says {}",
                            rec.global_position
                        ),
                    ),
                    Err(_) => {} // reported by the record scan above
                },
                Ok(None) => report.issue(
                    Some(&stream),
                    Some(seq),
                    format!("global position {pos} points at a missing record"),
                ),
                Err(e) => issue_from(&mut report, e.into()),
            }
        }
        expected_pos = first + keys::global_entry_len(&runs);
    }
    if report.global_entries != report.events {
        report.issue(
            None,
            None,
            format!(
                "{} events but {} global index entries",
                report.events, report.global_entries
            ),
        );
    }
    report
}
