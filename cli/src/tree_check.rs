//! The Merkle tree part of `verify`: the tree recomputed from every record
//! (`Journal::check_tree`), every stored subtree hash compared with it, and, with `--digest`,
//! the root at the digest's size and the consistency proof from it to the store now.

use crate::offline::{hex, ConsistencyProofFile};
use crate::verify::{AuditReport, Check, DigestCheck, Finding, TreeReport};
use evershard_engine::record::Hash;
use evershard_engine::{AuditError, Journal, StorageError, VerifyIssue};

fn problem(report: &mut AuditReport, check: Check, message: String) {
    report.problems.push(Finding::store(check, message));
}

/// A failure to recompute the tree, named by the stream and sequence where it has one.
fn failure(report: &mut AuditReport, check: Check, what: &str, err: AuditError) {
    match err {
        AuditError::Storage(StorageError::Corrupt {
            stream,
            sequence,
            cause,
        }) => report.problems.push(Finding {
            aggregate_type: stream.as_ref().map(|s| s.aggregate_type.clone()),
            aggregate_id: stream.as_ref().map(|s| s.aggregate_id.clone()),
            sequence,
            ..Finding::store(check, format!("{what}: {cause}"))
        }),
        other => problem(report, check, format!("{what}: {other}")),
    }
}

/// What the journal's scan left for the tree: the leaves in global order, or why there are
/// none.
#[derive(Debug)]
pub(crate) struct TreeInput<'a> {
    pub leaves: Option<&'a [Hash]>,
    pub blocked: Option<VerifyIssue>,
}

pub(crate) fn check(
    journal: &Journal,
    input: &TreeInput<'_>,
    digest: &DigestCheck<'_>,
    report: &mut AuditReport,
) {
    let sizes: Vec<u64> = digest.digest.iter().map(|d| d.tree_size).collect();
    let recomputed = match (input.leaves, &input.blocked) {
        (Some(leaves), _) => journal.check_tree_with(leaves, &sizes),
        (None, Some(why)) => {
            let (aggregate_type, aggregate_id) =
                match why.stream.as_deref().map(|s| s.split_once('/')) {
                    Some(Some((t, i))) => (Some(t.to_owned()), Some(i.to_owned())),
                    _ => (None, None),
                };
            report.problems.push(Finding {
                aggregate_type,
                aggregate_id,
                sequence: why.sequence,
                global_position: why.global_position,
                ..Finding::store(
                    Check::Tree,
                    format!("the Merkle tree cannot be recomputed: {}", why.problem),
                )
            });
            match (digest.digest, why.global_position) {
                // The missing event is one the digest covers: the digest no longer holds.
                (Some(d), Some(position)) if position <= d.tree_size => {
                    let message = format!(
                        "the store's first {} events no longer hash to the root of the digest \
                         taken at {}: the event at global position {position}{} is missing",
                        d.tree_size,
                        d.taken_at.to_rfc3339(),
                        why.stream
                            .as_ref()
                            .map(|s| format!(" ({s}#{})", why.sequence.unwrap_or(0)))
                            .unwrap_or_default()
                    );
                    problem(report, Check::Digest, message);
                }
                _ => digest_unchecked(digest, report),
            }
            return;
        }
        // The scan stopped early (sled damage, already reported): read the tree the slow way,
        // which names the first record it cannot read.
        (None, None) => journal.check_tree(&sizes),
    };
    let tree = match recomputed {
        Ok(tree) => tree,
        Err(e) => {
            failure(
                report,
                Check::Tree,
                "the Merkle tree cannot be recomputed",
                e,
            );
            digest_unchecked(digest, report);
            return;
        }
    };
    for m in &tree.mismatches {
        let what = if m.missing { "is missing" } else { "differs" };
        let message = format!(
            "the stored hash of the subtree over global positions {}..={} (level {}, index {}) \
             {what}: an event in that range changed after it was committed, or the node did",
            m.first_position, m.last_position, m.level, m.index
        );
        problem(report, Check::Tree, message);
    }
    // The maintainer stores a size only for events durable in the log, written after them:
    // a stored tree larger than the log means events it covered are gone (the log's end cut
    // off, or records removed), which no check of the remaining records can see.
    if tree.stored_size > tree.leaves {
        let message = format!(
            "the stored Merkle tree covers {} events but the store holds {}: the events at \
             global positions {}..={} were removed after the tree covered them",
            tree.stored_size,
            tree.leaves,
            tree.leaves + 1,
            tree.stored_size
        );
        problem(report, Check::Tree, message);
    }
    let mut tree_report = TreeReport {
        tree_size: tree.leaves,
        root_hash: hex(&tree.root),
        stored_size: tree.stored_size,
        nodes_compared: tree.nodes_compared,
        digest_size: None,
        digest_holds: None,
    };
    if let Some(d) = digest.digest {
        let before = report.problems.len();
        check_digest(journal, digest, d, &tree, report);
        tree_report.digest_size = Some(d.tree_size);
        tree_report.digest_holds = Some(report.problems.len() == before);
    }
    report.tree = Some(tree_report);
}

fn digest_unchecked(digest: &DigestCheck<'_>, report: &mut AuditReport) {
    if let Some(d) = digest.digest {
        let message = format!(
            "the digest of {} events cannot be checked: the tree cannot be recomputed",
            d.tree_size
        );
        problem(report, Check::Digest, message);
    }
}

fn check_digest(
    journal: &Journal,
    digest: &DigestCheck<'_>,
    d: &crate::offline::DigestFile,
    tree: &evershard_engine::TreeCheck,
    report: &mut AuditReport,
) {
    let taken = d.taken_at.to_rfc3339();
    if d.tree_size > tree.leaves {
        let message = format!(
            "the store has {} events, fewer than the {} of the digest taken at {taken}: events \
             at global positions {}..={} were removed (the log was truncated)",
            tree.leaves,
            d.tree_size,
            tree.leaves + 1,
            d.tree_size
        );
        problem(report, Check::Digest, message);
        return;
    }
    let Ok(digest_root) = d.root() else {
        problem(report, Check::Digest, "the digest's root is not hex".into());
        return;
    };
    let root_then = tree.roots_at.iter().find(|(s, _)| *s == d.tree_size);
    if root_then.map(|(_, r)| r) != Some(&digest_root) {
        let message = format!(
            "the store's first {} events no longer hash to the root of the digest taken at \
             {taken}: an event at a global position in 1..={} was changed, removed or reordered",
            d.tree_size, d.tree_size
        );
        problem(report, Check::Digest, message);
    }
    if d.tree_size == 0 {
        return;
    }
    // The proof is built from the stored nodes (as for any auditor) and checked against the
    // root recomputed from the records, so neither can hide a change from the other.
    match journal.prove_consistency(d.tree_size, Some(tree.leaves)) {
        Err(e) => failure(
            report,
            Check::Digest,
            "the consistency proof cannot be built",
            e,
        ),
        Ok(proof) => {
            if !proof.verify(&digest_root, &tree.root) {
                let message = format!(
                    "the consistency proof from the digest taken at {taken} ({} events) to the \
                     store now ({} events) fails: the store is not an extension of the digest",
                    d.tree_size, tree.leaves
                );
                problem(report, Check::Digest, message);
            }
            if let Some(path) = digest.proof_out {
                let file = ConsistencyProofFile::new(&proof, &digest_root, &tree.root);
                let written = serde_json::to_string_pretty(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|text| {
                        // A new file, as the argument says: never over the auditor's digest.
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(path)
                            .and_then(|mut f| {
                                std::io::Write::write_all(&mut f, (text + "\n").as_bytes())
                            })
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = written {
                    let message = format!("could not write {}: {e}", path.display());
                    problem(report, Check::Internal, message);
                }
            }
        }
    }
}
