//! `evershard verify`: the journal's own integrity checks (`Journal::verify`: CRCs, hash
//! chains, gapless sequences, the global index) plus what needs the aggregate types: every
//! stream decodes and folds from its first event, and every snapshot equals the replay up to
//! its sequence. Nothing here panics on a damaged store: every failure becomes a [`Finding`]
//! naming the aggregate and sequence.

use crate::error::CliError;
use crate::registry::Registry;
use crate::replay::ReplaySink;
use crate::store::{guarded, open_read_only};
use crate::{Outcome, VerifyArgs};
use evershard_engine::snapshot::SnapshotError;
use evershard_engine::{IssueKind, Journal, StorageError, StreamId, VerifyOptions, VerifyScope};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Mutex;

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

/// One problem or note, with the aggregate, sequence and global position where they apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: Check,
    /// For journal findings: which kind of break (`record`, `misplaced`, `hash_chain`, `gap`,
    /// `index`, `storage`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<IssueKind>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub sequence: Option<u64>,
    pub global_position: Option<u64>,
    pub message: String,
}

impl Finding {
    pub(crate) fn store(check: Check, message: String) -> Finding {
        Finding {
            check,
            kind: None,
            aggregate_type: None,
            aggregate_id: None,
            sequence: None,
            global_position: None,
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
        if let Some(position) = self.global_position {
            write!(f, " (global position {position})")?;
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
    /// What was checked: `whole store`, or the limits (`--type`, `--id`, positions, times).
    pub scope: String,
    /// From `Journal::verify`.
    pub streams: u64,
    pub events: u64,
    /// Records whose bytes, place and chain link were checked.
    pub events_checked: u64,
    pub global_entries: u64,
    /// Streams of known types folded from their first event, and the events folded.
    pub streams_replayed: u64,
    pub events_replayed: u64,
    /// Snapshots decoded and compared with the replay.
    pub snapshots_checked: u64,
    pub problems: Vec<Finding>,
    /// Problems found beyond the journal's listing limit (counted, not listed).
    pub problems_not_listed: u64,
    pub notes: Vec<Finding>,
    /// Every aggregate with a problem, as `type/id`.
    pub bad_aggregates: Vec<String>,
    /// The Merkle tree recomputed from the records (`None` if it could not be, or the
    /// verification was limited to part of the store).
    pub tree: Option<TreeReport>,
    /// Wall-clock milliseconds the verification took.
    pub elapsed_ms: u64,
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

/// How to audit: which types, which part of the store, an earlier digest, progress on stderr.
#[derive(Debug, Default)]
pub struct AuditOptions<'a> {
    /// The aggregate types whose streams are replayed (`None`: the stock seven).
    pub registry: Option<&'a Registry>,
    pub scope: VerifyScope,
    pub digest: DigestCheck<'a>,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
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
    audit_scoped(journal, &AuditOptions::default())
}

/// [`audit`], plus the check of an earlier digest.
pub fn audit_with(journal: &Journal, digest: &DigestCheck<'_>) -> AuditReport {
    let options = AuditOptions {
        digest: DigestCheck {
            digest: digest.digest,
            proof_out: digest.proof_out,
        },
        ..AuditOptions::default()
    };
    audit_scoped(journal, &options)
}

/// How `verify` describes its scope.
pub fn describe_scope(scope: &VerifyScope) -> String {
    if scope.is_whole_store() {
        return "whole store".into();
    }
    let mut parts = Vec::new();
    match (&scope.aggregate_type, &scope.aggregate_id) {
        (Some(t), Some(i)) => parts.push(format!("aggregate {t}/{i}")),
        (Some(t), None) => parts.push(format!("type {t}")),
        _ => {}
    }
    if let Some(r) = &scope.positions {
        parts.push(format!("global positions {}..={}", r.start(), r.end()));
    }
    if scope.from.is_some() || scope.to.is_some() {
        let show = |t: &Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or_else(|| "…".to_owned(), |t| t.to_rfc3339())
        };
        parts.push(format!(
            "events timed {} to {}",
            show(&scope.from),
            show(&scope.to)
        ));
    }
    parts.join(", ")
}

/// A progress bar on stderr when it is a terminal (never escape codes into a pipe or file).
fn progress_bar(enabled: bool, total: u64, what: &'static str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what);
    Some(bar)
}

/// The journal's checks as findings.
fn journal_findings(journal_report: evershard_engine::VerifyReport, report: &mut AuditReport) {
    report.streams = journal_report.streams;
    report.events = journal_report.events;
    report.events_checked = journal_report.events_checked;
    report.global_entries = journal_report.global_entries;
    report.problems_not_listed += journal_report.issues_not_listed;
    for issue in journal_report.issues {
        let (aggregate_type, aggregate_id) = split_stream(issue.stream);
        report.problems.push(Finding {
            check: Check::Journal,
            kind: Some(issue.kind),
            aggregate_type,
            aggregate_id,
            sequence: issue.sequence,
            global_position: issue.global_position,
            message: issue.problem,
        });
    }
}

/// [`audit`] limited to a scope, with an earlier digest and a progress bar.
pub fn audit_scoped(journal: &Journal, options: &AuditOptions<'_>) -> AuditReport {
    let started = std::time::Instant::now();
    let stock;
    let registry = match options.registry {
        Some(registry) => registry,
        None => {
            stock = Registry::with_defaults();
            &stock
        }
    };
    let scope = &options.scope;
    let mut report = AuditReport {
        store: journal.dir().display().to_string(),
        scope: describe_scope(scope),
        ..Default::default()
    };
    let bar = progress_bar(options.progress, 0, "records");
    let tick = |n: u64, total: u64| {
        if let Some(bar) = &bar {
            if bar.length() != Some(total) {
                bar.set_length(total);
            }
            bar.inc(n);
        }
    };
    // Each stream of a known type is folded as the scan reads it; the others are counted.
    let sink = ReplaySink::default();
    let unknown: Mutex<BTreeMap<String, usize>> = Mutex::default();
    let make = |stream: &StreamId| match registry.get(&stream.aggregate_type) {
        Some(entry) => Some((entry.replay)(journal, stream.clone(), &sink)),
        None => {
            let mut unknown = unknown.lock().unwrap_or_else(|e| e.into_inner());
            *unknown.entry(stream.aggregate_type.clone()).or_default() += 1;
            None
        }
    };
    let records_limited = scope.positions.is_some() || scope.from.is_some() || scope.to.is_some();
    let engine_options = VerifyOptions {
        scope: scope.clone(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
        progress: Some(&tick),
        visit: Some(&make),
    };
    let mut leaves = None;
    let mut tree_blocked = None;
    match guarded(|| journal.verify_with(&engine_options)) {
        Ok(mut journal_report) => {
            leaves = journal_report.leaves.take();
            tree_blocked = journal_report.tree_blocked.take();
            journal_findings(journal_report, &mut report);
        }
        Err(panic) => report.problems.push(Finding::store(
            Check::Internal,
            format!("Journal::verify panicked: {panic}"),
        )),
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    if records_limited {
        // A replay folds a stream from its first event: it cannot be limited to a range.
        report.notes.push(Finding::store(
            Check::Replay,
            format!(
                "verification limited to {}: streams were not replayed and snapshots not \
                 compared (they need every event of a stream)",
                report.scope
            ),
        ));
    } else {
        let mut checks = sink.into_inner().unwrap_or_else(|e| e.into_inner());
        checks.sort_by(|a, b| a.0.cmp(&b.0));
        let streams: BTreeSet<StreamId> = checks.iter().map(|c| c.0.clone()).collect();
        for (_, check) in checks {
            report.streams_replayed += 1;
            report.events_replayed += check.events_replayed;
            report.snapshots_checked += check.snapshots_checked;
            report.problems.extend(check.problems);
            report.notes.extend(check.notes);
        }
        let unknown = unknown.into_inner().unwrap_or_else(|e| e.into_inner());
        unknown_type_notes(registry, &unknown, &mut report);
        let mut with_events = streams;
        with_events.extend(unknown_streams(journal, &unknown, scope));
        snapshots_without_events(journal, scope, &with_events, &mut report);
    }

    if scope.is_whole_store() {
        let tree = crate::tree_check::TreeInput {
            leaves: leaves.as_deref(),
            blocked: tree_blocked,
        };
        match guarded(|| crate::tree_check::check(journal, &tree, &options.digest, &mut report)) {
            Ok(()) => {}
            Err(panic) => report.problems.push(Finding::store(
                Check::Internal,
                format!("checking the Merkle tree panicked: {panic}"),
            )),
        }
    } else {
        report.notes.push(Finding::store(
            Check::Tree,
            format!(
                "verification limited to {}: the Merkle tree and digests were not recomputed \
                 (they cover every event; run verify without limits for them)",
                report.scope
            ),
        ));
    }

    dedupe_replay_echoes(&mut report.problems);
    let bad: BTreeSet<String> = report.problems.iter().filter_map(Finding::stream).collect();
    report.bad_aggregates = bad.into_iter().collect();
    report.clean = report.problems.is_empty() && report.problems_not_listed == 0;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// The note for each type this build does not know.
fn unknown_type_notes(
    registry: &Registry,
    unknown: &BTreeMap<String, usize>,
    report: &mut AuditReport,
) {
    for (aggregate_type, count) in unknown {
        // Unknown is not damage: the journal and tree checks covered these records, chains
        // and proofs; only decoding and folding the payloads needs the type.
        report.notes.push(Finding {
            aggregate_type: Some(aggregate_type.clone()),
            ..Finding::store(
                Check::UnknownType,
                format!(
                    "{count} streams of a type this build does not know: records, chains and \
                     the tree were checked, payloads not decoded or folded (known types: {})",
                    registry.names().join(", ")
                ),
            )
        });
    }
}

/// The streams of the unknown types (for the snapshot check: a snapshot needs a stream).
fn unknown_streams(
    journal: &Journal,
    unknown: &BTreeMap<String, usize>,
    scope: &VerifyScope,
) -> Vec<StreamId> {
    let mut streams = Vec::new();
    for aggregate_type in unknown.keys() {
        for (stream, _) in journal.streams(Some(aggregate_type)).flatten() {
            if scope
                .aggregate_id
                .as_ref()
                .is_none_or(|i| *i == stream.aggregate_id)
            {
                streams.push(stream);
            }
        }
    }
    streams
}

/// Snapshots of streams without events (per-stream snapshots were checked with the replay).
fn snapshots_without_events(
    journal: &Journal,
    scope: &VerifyScope,
    heads: &BTreeSet<StreamId>,
    report: &mut AuditReport,
) {
    let in_scope = |stream: &StreamId| {
        scope
            .aggregate_type
            .as_ref()
            .is_none_or(|t| *t == stream.aggregate_type)
            && scope
                .aggregate_id
                .as_ref()
                .is_none_or(|i| *i == stream.aggregate_id)
    };
    match guarded(|| journal.all_snapshots().collect::<Vec<_>>()) {
        Ok(snapshots) => {
            for entry in snapshots {
                match entry {
                    Ok((stream, sequence, _)) if in_scope(&stream) && !heads.contains(&stream) => {
                        report.problems.push(finding(
                            &stream,
                            Some(sequence),
                            Check::Snapshot,
                            "snapshot of a stream that has no events".into(),
                        ))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let message = format!(
                            "reading the snapshots failed, the ones after this point were not \
                             checked: {e}"
                        );
                        report
                            .problems
                            .push(Finding::store(Check::Snapshot, message));
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

/// The scope the arguments ask for (the type name resolved when this build knows it; a type
/// it does not know is taken as typed, so its records can still be checked).
fn scope_of(registry: &Registry, args: &VerifyArgs) -> Result<VerifyScope, CliError> {
    let aggregate_type = args.aggregate_type.as_deref().map(|t| {
        registry
            .resolve(t)
            .map_or_else(|_| t.to_owned(), str::to_owned)
    });
    if let (Some(t), Some(i)) = (&aggregate_type, &args.id) {
        crate::store::stream_arg(t, i)?;
    }
    let positions = match (args.from_position, args.to_position) {
        (None, None) => None,
        (from, to) => {
            let (from, to) = (from.unwrap_or(1), to.unwrap_or(u64::MAX));
            if from > to {
                return Err(CliError::InvalidArgument(format!(
                    "--from-position {from} is after --to-position {to}"
                )));
            }
            Some(from..=to)
        }
    };
    let utc = |t: &Option<chrono::DateTime<chrono::FixedOffset>>| t.map(|t| t.to_utc());
    let (from, to) = (utc(&args.from), utc(&args.to));
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(CliError::InvalidArgument(format!(
                "--from {} is after --to {}",
                f.to_rfc3339(),
                t.to_rfc3339()
            )));
        }
    }
    Ok(VerifyScope {
        aggregate_type,
        aggregate_id: args.id.clone(),
        positions,
        from,
        to,
    })
}

/// Runs `evershard verify`.
pub fn run(
    registry: &Registry,
    args: &VerifyArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let scope = scope_of(registry, args)?;
    if let Some(path) = &args.proof_out {
        if path.exists() {
            return Err(CliError::InvalidArgument(format!(
                "--proof-out {} exists: name a new file (nothing is overwritten)",
                path.display()
            )));
        }
    }
    let digest = args
        .digest
        .as_deref()
        .map(crate::offline::read_digest)
        .transpose()?;
    // A signed digest's signature is checked whether or not a key is pinned: a digest whose
    // root or size was changed after signing is a finding (exit 1, as `check-proof` refuses
    // it), and its root is not checked, rather than taken at its word. Without --pubkey, a
    // valid signature by the key the digest names only shows the file is whole: a note.
    let pinned = args
        .pubkey
        .as_deref()
        .map(crate::offline::read_public_key)
        .transpose()?;
    let mut signature_problem = None;
    let mut signature_note = None;
    let digest = match digest.map(|d| (d.check_signature(pinned.as_ref()), d)) {
        Some((Ok(Some(key)), d)) => {
            if pinned.is_none() {
                signature_note = Some(format!(
                    "the digest is signed by {key}, a key named only by the digest itself (pass \
                     --pubkey to pin it)"
                ));
            }
            Some(d)
        }
        Some((Ok(None), d)) => Some(d),
        Some((Err(why), _)) => {
            signature_problem = Some(format!(
                "the digest's signature: {why}; its root was not checked against the store"
            ));
            None
        }
        None => None,
    };
    let journal = open_read_only(&args.store.data)?;
    let options = AuditOptions {
        registry: Some(registry),
        scope,
        digest: DigestCheck {
            digest: digest.as_ref(),
            proof_out: args.proof_out.as_deref(),
        },
        progress: true,
    };
    let mut report = audit_scoped(&journal, &options);
    drop(journal);
    if let Some(problem) = signature_problem {
        report.problems.push(Finding::store(Check::Digest, problem));
        report.clean = false;
    }
    report
        .notes
        .extend(signature_note.map(|note| Finding::store(Check::Digest, note)));
    // A scope that names what the store does not hold is the caller's mistake (a typo in a
    // type or id, positions past the end), not a clean store: said so, as `history` does.
    let narrowed =
        args.aggregate_type.is_some() || args.id.is_some() || options.scope.positions.is_some();
    if narrowed && report.events_checked == 0 && report.problems.is_empty() {
        return Err(match (&options.scope.aggregate_type, &args.id) {
            (Some(t), Some(id)) => CliError::NoSuchAggregate {
                aggregate_type: t.clone(),
                aggregate_id: id.clone(),
                dir: args.store.data.clone(),
            },
            _ => CliError::InvalidArgument(format!(
                "nothing in the store at {} is in the scope {}",
                args.store.data.display(),
                report.scope
            )),
        });
    }
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|source| CliError::Json {
            what: "the verify report".into(),
            source,
        })?;
        writeln!(out, "{text}")?;
    } else {
        writeln!(
            out,
            "verified {} ({}): {} streams, {} events ({} checked), {} global index entries; {} \
             streams replayed ({} events), {} snapshots compared; {:.2} s",
            report.store,
            report.scope,
            report.streams,
            report.events,
            report.events_checked,
            report.global_entries,
            report.streams_replayed,
            report.events_replayed,
            report.snapshots_checked,
            report.elapsed_ms as f64 / 1000.0
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
        if report.problems_not_listed > 0 {
            writeln!(
                out,
                "PROBLEM (store) [journal]: {} more problems not listed",
                report.problems_not_listed
            )?;
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

pub(crate) fn finding(
    stream: &StreamId,
    sequence: Option<u64>,
    check: Check,
    message: String,
) -> Finding {
    Finding {
        check,
        kind: None,
        aggregate_type: Some(stream.aggregate_type.clone()),
        aggregate_id: Some(stream.aggregate_id.clone()),
        sequence,
        global_position: None,
        message,
    }
}

/// A storage error of one stream as a finding (its own sequence when it names one).
pub(crate) fn storage_finding(stream: &StreamId, check: Check, err: StorageError) -> Finding {
    match err {
        StorageError::Corrupt {
            sequence, cause, ..
        } => finding(stream, sequence, check, cause.to_string()),
        other => finding(stream, None, check, other.to_string()),
    }
}

/// How `verify` words a snapshot recovery skips: (is it only a note, the message).
pub(crate) fn snapshot_skip_message(reason: &SnapshotError, head: u64) -> (bool, String) {
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
        SnapshotError::Sealed => (
            true,
            "snapshot is encrypted and was not opened (no key, or its subject was \
             forgotten): not compared"
                .into(),
        ),
        damaged => (false, format!("snapshot is damaged: {damaged}")),
    }
}

pub(crate) fn not_compared_note(stream: &StreamId, at: Option<u64>, fails_at: u64) -> Finding {
    let message =
        format!("snapshot not compared: the replay fails at sequence {fails_at}, before it");
    finding(stream, at, Check::Snapshot, message)
}
