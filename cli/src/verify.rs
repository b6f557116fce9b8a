//! `evershard verify`: the journal's own integrity checks (`Journal::verify`: CRCs, hash
//! chains, gapless sequences, the global index) plus what needs the aggregate types: every
//! stream decodes and folds from its first event, and every snapshot equals the replay up to
//! its sequence. Nothing here panics on a damaged store: every failure becomes a [`Finding`]
//! naming the aggregate and sequence.

use crate::error::CliError;
use crate::registry::stored_kind;
use crate::store::{guarded, open_read_only};
use crate::{Outcome, VerifyArgs};
use evershard_engine::{Journal, StreamId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

/// Which check a finding comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// `Journal::verify`: record format, CRC, place, chain, gaps, global index.
    Journal,
    /// Decoding payloads and folding them with the aggregate's `apply`.
    Replay,
    /// Stored snapshots against the replay.
    Snapshot,
    /// A stream or snapshot of a type this build does not know.
    UnknownType,
    /// The verifier itself met an error (a caught panic, an unreadable index).
    Internal,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Check::Journal => "journal",
            Check::Replay => "replay",
            Check::Snapshot => "snapshot",
            Check::UnknownType => "unknown type",
            Check::Internal => "internal",
        })
    }
}

/// One problem or note, with the aggregate and sequence where it applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub sequence: Option<u64>,
    pub message: String,
}

impl Finding {
    fn store(check: Check, message: String) -> Finding {
        Finding {
            check,
            aggregate_type: None,
            aggregate_id: None,
            sequence: None,
            message,
        }
    }

    fn stream(&self) -> Option<String> {
        match (&self.aggregate_type, &self.aggregate_id) {
            (Some(t), Some(i)) => Some(format!("{t}/{i}")),
            (Some(t), None) => Some(t.clone()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.stream() {
            Some(stream) => write!(f, "{stream}")?,
            None => write!(f, "(store)")?,
        }
        if let Some(sequence) = self.sequence {
            write!(f, " sequence {sequence}")?;
        }
        write!(f, " [{}]: {}", self.check, self.message)
    }
}

/// What checking one stream found (see `AggregateKind::check_stream`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCheck {
    pub events_replayed: u64,
    pub snapshots_checked: u64,
    pub problems: Vec<Finding>,
    pub notes: Vec<Finding>,
}

/// The whole report; `--json` prints it as is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub store: String,
    pub clean: bool,
    /// From `Journal::verify`.
    pub streams: u64,
    pub events: u64,
    pub global_entries: u64,
    /// Streams of known types folded from their first event, and the events folded.
    pub streams_replayed: u64,
    pub events_replayed: u64,
    /// Snapshots decoded and compared with the replay.
    pub snapshots_checked: u64,
    pub problems: Vec<Finding>,
    pub notes: Vec<Finding>,
    /// Every aggregate with a problem, as `type/id`.
    pub bad_aggregates: Vec<String>,
}

fn split_stream(stream: Option<String>) -> (Option<String>, Option<String>) {
    match stream {
        None => (None, None),
        Some(s) => match s.split_once('/') {
            Some((t, i)) => (Some(t.to_owned()), Some(i.to_owned())),
            None => (Some(s), None),
        },
    }
}

/// Verifies the store at `journal` (opened read-only). Never panics: a panic inside a check
/// becomes an `internal` finding.
pub fn audit(journal: &Journal) -> AuditReport {
    let mut report = AuditReport {
        store: journal.dir().display().to_string(),
        ..Default::default()
    };

    match guarded(|| journal.verify()) {
        Ok(journal_report) => {
            report.streams = journal_report.streams;
            report.events = journal_report.events;
            report.global_entries = journal_report.global_entries;
            for issue in journal_report.issues {
                let (aggregate_type, aggregate_id) = split_stream(issue.stream);
                report.problems.push(Finding {
                    check: Check::Journal,
                    aggregate_type,
                    aggregate_id,
                    sequence: issue.sequence,
                    message: issue.problem,
                });
            }
        }
        Err(panic) => report.problems.push(Finding::store(
            Check::Internal,
            format!("Journal::verify panicked: {panic}"),
        )),
    }

    let streams = match guarded(|| journal.streams(None).collect::<Vec<_>>()) {
        Ok(streams) => streams,
        Err(panic) => {
            let message = format!("listing the streams panicked: {panic}");
            report
                .problems
                .push(Finding::store(Check::Internal, message));
            Vec::new()
        }
    };
    let mut heads: BTreeMap<StreamId, u64> = BTreeMap::new();
    for entry in streams {
        match entry {
            Ok((stream, head)) => {
                heads.insert(stream, head);
            }
            Err(e) => {
                let message = format!("listing the streams failed: {e}");
                report
                    .problems
                    .push(Finding::store(Check::Internal, message));
            }
        }
    }

    let mut unknown_types: BTreeSet<String> = BTreeSet::new();
    for (stream, head) in &heads {
        let Some(kind) = stored_kind(&stream.aggregate_type) else {
            unknown_types.insert(stream.aggregate_type.clone());
            continue;
        };
        match guarded(|| kind.check_stream(journal, stream, *head)) {
            Ok(check) => {
                report.streams_replayed += 1;
                report.events_replayed += check.events_replayed;
                report.snapshots_checked += check.snapshots_checked;
                report.problems.extend(check.problems);
                report.notes.extend(check.notes);
            }
            Err(panic) => report.problems.push(Finding {
                check: Check::Internal,
                aggregate_type: Some(stream.aggregate_type.clone()),
                aggregate_id: Some(stream.aggregate_id.clone()),
                sequence: None,
                message: format!("checking this stream panicked: {panic}"),
            }),
        }
    }
    for aggregate_type in &unknown_types {
        let count = heads
            .keys()
            .filter(|s| &s.aggregate_type == aggregate_type)
            .count();
        report.problems.push(Finding {
            check: Check::UnknownType,
            aggregate_type: Some(aggregate_type.clone()),
            aggregate_id: None,
            sequence: None,
            message: format!(
                "{count} streams of a type this build does not know; their events cannot be \
                 decoded or folded (known types: {})",
                crate::registry::known_types().join(", ")
            ),
        });
    }

    // Snapshots of streams without events (per-stream snapshots were checked above).
    match guarded(|| journal.all_snapshots().collect::<Vec<_>>()) {
        Ok(snapshots) => {
            for entry in snapshots {
                match entry {
                    Ok((stream, sequence, _)) if !heads.contains_key(&stream) => {
                        report.problems.push(Finding {
                            check: Check::Snapshot,
                            aggregate_type: Some(stream.aggregate_type.clone()),
                            aggregate_id: Some(stream.aggregate_id.clone()),
                            sequence: Some(sequence),
                            message: "snapshot of a stream that has no events".into(),
                        })
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let message = format!("listing the snapshots failed: {e}");
                        report
                            .problems
                            .push(Finding::store(Check::Internal, message));
                    }
                }
            }
        }
        Err(panic) => {
            let message = format!("listing the snapshots panicked: {panic}");
            report
                .problems
                .push(Finding::store(Check::Internal, message));
        }
    }

    dedupe_replay_echoes(&mut report.problems);
    let bad: BTreeSet<String> = report.problems.iter().filter_map(Finding::stream).collect();
    report.bad_aggregates = bad.into_iter().collect();
    report.clean = report.problems.is_empty();
    report
}

/// A record that fails the journal's checks also stops its replay at the same sequence with
/// the same reason; keep only the journal's line for it.
fn dedupe_replay_echoes(problems: &mut Vec<Finding>) {
    let journal_hits: BTreeSet<(Option<String>, Option<u64>)> = problems
        .iter()
        .filter(|f| f.check == Check::Journal)
        .map(|f| (f.stream(), f.sequence))
        .collect();
    problems
        .retain(|f| f.check != Check::Replay || !journal_hits.contains(&(f.stream(), f.sequence)));
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Runs `evershard verify`.
pub fn run(args: &VerifyArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let journal = open_read_only(&args.store.data)?;
    let report = audit(&journal);
    drop(journal);
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|source| CliError::Json {
            what: "the verify report".into(),
            source,
        })?;
        writeln!(out, "{text}")?;
    } else {
        writeln!(
            out,
            "verified {}: {} streams, {} events, {} global index entries; {} streams replayed \
             ({} events), {} snapshots compared",
            report.store,
            report.streams,
            report.events,
            report.global_entries,
            report.streams_replayed,
            report.events_replayed,
            report.snapshots_checked
        )?;
        for problem in &report.problems {
            writeln!(out, "PROBLEM {problem}")?;
        }
        for note in &report.notes {
            writeln!(out, "note    {note}")?;
        }
        if report.clean {
            writeln!(out, "result: clean")?;
        } else if report.bad_aggregates.is_empty() {
            // Damage below the records (sled's own files, the index): no aggregate to name.
            writeln!(
                out,
                "result: {} in the store itself",
                plural(report.problems.len(), "problem")
            )?;
        } else {
            writeln!(
                out,
                "result: {} in {}: {}",
                plural(report.problems.len(), "problem"),
                plural(report.bad_aggregates.len(), "aggregate"),
                report.bad_aggregates.join(", ")
            )?;
        }
    }
    out.flush()?;
    Ok(if report.clean {
        Outcome::Clean
    } else {
        Outcome::ProblemsFound
    })
}
