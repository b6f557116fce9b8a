//! `evershard verify`: the journal's own integrity checks (`Journal::verify`: CRCs, hash
//! chains, gapless sequences, the global index) plus what needs the aggregate types: every
//! stream decodes and folds from its first event, and every snapshot equals the replay up to
//! its sequence. Nothing here panics on a damaged store: every failure becomes a [`Finding`]
//! naming the aggregate and sequence.

use crate::diff::first_difference;
use crate::error::CliError;
use crate::registry::{dispatch, known_types, TypeOp};
use crate::store::{guarded, open_read_only};
use crate::{Outcome, VerifyArgs};
use evershard_engine::model::{Aggregate, Workload};
use evershard_engine::snapshot::{select, SnapshotError};
use evershard_engine::{repository, Journal, LoadError, StorageError, StreamId};
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
    /// The Merkle tree: stored subtree hashes against the records under them.
    Tree,
    /// An auditor's earlier digest: the root at its size and the consistency proof to now.
    Digest,
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
            Check::Tree => "tree",
            Check::Digest => "digest",
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
    pub(crate) fn store(check: Check, message: String) -> Finding {
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

/// What checking one stream found (see [`check_stream`]).
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
    /// The Merkle tree recomputed from the records (`None` if it could not be).
    pub tree: Option<TreeReport>,
}

/// The Merkle tree as `verify` recomputed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TreeReport {
    pub tree_size: u64,
    pub root_hash: String,
    /// The size the maintainer's stored nodes cover.
    pub stored_size: u64,
    pub nodes_compared: u64,
    /// The earlier digest checked, if any: its size and whether it still holds.
    pub digest_size: Option<u64>,
    pub digest_holds: Option<bool>,
}

/// An earlier digest to check the store against, and where to write the consistency proof.
#[derive(Debug, Default)]
pub struct DigestCheck<'a> {
    pub digest: Option<&'a crate::offline::DigestFile>,
    pub proof_out: Option<&'a std::path::Path>,
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
    audit_with(journal, &DigestCheck::default())
}

/// [`audit`], plus the check of an earlier digest.
pub fn audit_with(journal: &Journal, digest: &DigestCheck<'_>) -> AuditReport {
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
        if !crate::registry::is_known(&stream.aggregate_type) {
            unknown_types.insert(stream.aggregate_type.clone());
            continue;
        }
        let check = CheckStream {
            journal,
            stream,
            head: *head,
        };
        match guarded(|| dispatch(&stream.aggregate_type, check).expect("known type")) {
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
        // Unknown is not damage: the journal and tree checks above covered these records,
        // chains and proofs; only decoding and folding the payloads needs the type.
        report.notes.push(Finding {
            check: Check::UnknownType,
            aggregate_type: Some(aggregate_type.clone()),
            aggregate_id: None,
            sequence: None,
            message: format!(
                "{count} streams of a type this build does not know: records, chains and the \
                 tree were checked, payloads not decoded or folded (known types: {})",
                known_types().join(", ")
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

    match guarded(|| crate::tree_check::check(journal, digest, &mut report)) {
        Ok(()) => {}
        Err(panic) => report.problems.push(Finding::store(
            Check::Internal,
            format!("checking the Merkle tree panicked: {panic}"),
        )),
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
    let digest = args
        .digest
        .as_deref()
        .map(crate::offline::read_digest)
        .transpose()?;
    if let (Some(d), Some(key)) = (&digest, &args.pubkey) {
        let key = crate::offline::read_public_key(key)?;
        if let Err(why) = d.check_signature(Some(&key)) {
            return Err(CliError::InvalidArgument(format!(
                "the digest's signature: {why}"
            )));
        }
    }
    let journal = open_read_only(&args.store.data)?;
    let check = DigestCheck {
        digest: digest.as_ref(),
        proof_out: args.proof_out.as_deref(),
    };
    let report = audit_with(&journal, &check);
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
        if let Some(tree) = &report.tree {
            writeln!(
                out,
                "merkle tree: {} events, root {}; {} stored nodes compared (maintainer covers {})",
                tree.tree_size, tree.root_hash, tree.nodes_compared, tree.stored_size
            )?;
            match (tree.digest_size, tree.digest_holds) {
                (Some(size), Some(true)) => writeln!(
                    out,
                    "digest: the store's first {size} events still hash to the digest's root, \
                     and the consistency proof to now holds"
                )?,
                (Some(size), _) => {
                    writeln!(out, "digest: the digest of {size} events does NOT hold")?
                }
                _ => {}
            }
        }
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

fn finding(stream: &StreamId, sequence: Option<u64>, check: Check, message: String) -> Finding {
    Finding {
        check,
        aggregate_type: Some(stream.aggregate_type.clone()),
        aggregate_id: Some(stream.aggregate_id.clone()),
        sequence,
        message,
    }
}

/// A storage error of one stream as a finding (its own sequence when it names one).
fn storage_finding(stream: &StreamId, check: Check, err: StorageError) -> Finding {
    match err {
        StorageError::Corrupt {
            sequence, cause, ..
        } => finding(stream, sequence, check, cause.to_string()),
        other => finding(stream, None, check, other.to_string()),
    }
}

/// Verifies one stream of type `A`: it fully decodes and folds from the first event (no
/// snapshots), its final state holds the type's invariants, and every stored snapshot equals
/// the replay up to its sequence. `head` is the stream's last sequence. Public so that a
/// service can check streams of its own types.
pub fn check_stream<A: Aggregate>(journal: &Journal, stream: &StreamId, head: u64) -> StreamCheck {
    let mut check = StreamCheck::default();
    let replay_fails_at = replay_check::<A>(journal, stream, &mut check);
    let snapshots = match journal.snapshots(stream) {
        Ok(s) => s,
        Err(e) => {
            check
                .problems
                .push(storage_finding(stream, Check::Snapshot, e));
            return check;
        }
    };
    for candidate in snapshots.into_iter().rev() {
        let key_sequence = candidate.0;
        let at = Some(key_sequence);
        // The very selection recovery makes, one candidate at a time: its typed reason
        // for skipping is the finding.
        let selection = select::<A::State>(&[candidate], A::STATE_SCHEMA_VERSION, head);
        let snapshot_state = match (selection.chosen, selection.skipped.into_iter().next()) {
            (Some((_, state)), _) => state,
            (None, Some((_, reason))) => {
                let (is_note, message) = snapshot_skip_message(&reason, head);
                let not_compared = replay_fails_at.is_some_and(|f| f <= key_sequence)
                    && matches!(reason, SnapshotError::State(_));
                if not_compared {
                    let fails_at = replay_fails_at.unwrap_or(1);
                    check.notes.push(not_compared_note(stream, at, fails_at));
                } else if is_note {
                    check
                        .notes
                        .push(finding(stream, at, Check::Snapshot, message));
                } else {
                    check
                        .problems
                        .push(finding(stream, at, Check::Snapshot, message));
                }
                continue;
            }
            (None, None) => continue,
        };
        if let Some(fails_at) = replay_fails_at.filter(|f| *f <= key_sequence) {
            check.notes.push(not_compared_note(stream, at, fails_at));
            continue;
        }
        check.snapshots_checked += 1;
        match repository::load::<A>(journal, stream, key_sequence, false) {
            Ok(replayed) if replayed.state == snapshot_state => {}
            Ok(replayed) => {
                let at_path = first_difference(&snapshot_state, &replayed.state)
                    .unwrap_or_else(|| "(equal as JSON)".into());
                let message = format!(
                    "snapshot differs from the replay up to its sequence at {at_path} \
                     (snapshot vs replay)"
                );
                check
                    .problems
                    .push(finding(stream, at, Check::Snapshot, message));
            }
            Err(LoadError::Storage(e)) => {
                check
                    .problems
                    .push(storage_finding(stream, Check::Snapshot, e))
            }
            Err(other) => {
                check
                    .problems
                    .push(finding(stream, at, Check::Snapshot, other.to_string()))
            }
        }
    }
    check
}

/// The full replay of one stream, exactly as recovery without snapshots does it (with its
/// hash-chain and invariant checks): records its findings in `check` and returns the
/// sequence the replay fails at, if it does.
fn replay_check<A: Aggregate>(
    journal: &Journal,
    stream: &StreamId,
    check: &mut StreamCheck,
) -> Option<u64> {
    match repository::load::<A>(journal, stream, u64::MAX, false) {
        Ok(loaded) => {
            check.events_replayed = loaded.events_replayed;
            None
        }
        Err(LoadError::InvariantViolated {
            invariant,
            sequence,
            ..
        }) => {
            check.events_replayed = sequence;
            check.problems.push(finding(
                stream,
                Some(sequence),
                Check::Replay,
                format!("the replayed state breaks an invariant: {invariant}"),
            ));
            None
        }
        Err(LoadError::Storage(e)) => {
            let failure = storage_finding(stream, Check::Replay, e);
            let at = failure.sequence.unwrap_or(1);
            check.problems.push(failure);
            Some(at)
        }
        Err(other) => {
            check
                .problems
                .push(finding(stream, None, Check::Replay, other.to_string()));
            Some(1)
        }
    }
}

/// How `verify` words a snapshot recovery skips: (is it only a note, the message).
fn snapshot_skip_message(reason: &SnapshotError, head: u64) -> (bool, String) {
    match reason {
        SnapshotError::Misplaced { key, record } => (
            false,
            format!("snapshot stored under sequence {key} says sequence {record}"),
        ),
        SnapshotError::BeyondHead { .. } => (
            false,
            format!("snapshot lies beyond the stream's head {head}"),
        ),
        // Recovery skips it and replays: harmless, but worth telling an auditor.
        SnapshotError::SchemaVersion { found, current } => (
            true,
            format!(
                "snapshot has state schema version {found}, this build's is {current}; \
                 recovery skips it, so it was not compared"
            ),
        ),
        SnapshotError::State(e) => (false, format!("snapshot state does not decode: {e}")),
        damaged => (false, format!("snapshot is damaged: {damaged}")),
    }
}

fn not_compared_note(stream: &StreamId, at: Option<u64>, fails_at: u64) -> Finding {
    let message =
        format!("snapshot not compared: the replay fails at sequence {fails_at}, before it");
    finding(stream, at, Check::Snapshot, message)
}

/// [`check_stream`] for a type chosen by name.
struct CheckStream<'j> {
    journal: &'j Journal,
    stream: &'j StreamId,
    head: u64,
}

impl TypeOp for CheckStream<'_> {
    type Output = StreamCheck;
    fn run<A: Workload>(self) -> StreamCheck {
        check_stream::<A>(self.journal, self.stream, self.head)
    }
}
