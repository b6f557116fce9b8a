//! `keygen`, `digest`, `prove` and `check-proof`: signed tree heads of the store's Merkle
//! tree, inclusion proofs of events, and the offline check of a proof against a digest.
//! `digest` and `prove` open the store read-only and write nothing to it: where the tree
//! maintainer is behind (or never ran), the tree is computed from the records.
//! `check-proof` opens no store at all (see [`crate::offline`]).

use crate::error::CliError;
use crate::offline::{
    check_consistency, check_inclusion, hex, read_digest, read_public_key, read_signing_key,
    ConsistencyProofFile, DigestFile, InclusionProofFile, CONSISTENCY_FORMAT, INCLUSION_FORMAT,
    PUBLIC_KEY_TAG, SECRET_KEY_TAG,
};
use crate::store::{guarded, open_read_only};
use crate::{CheckProofArgs, DigestArgs, KeygenArgs, Outcome, ProveArgs};
use evershard_engine::AuditError;
use std::io::{Read, Write};
use std::path::Path;

fn audit_error(dir: &Path, e: AuditError) -> CliError {
    match e {
        AuditError::Storage(e) => CliError::storage(dir, e),
        other => CliError::InvalidArgument(other.to_string()),
    }
}

fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|source| CliError::Json {
        what: what.into(),
        source,
    })
}

/// Writes `text` to a new file (never over an existing one), with `mode` on Unix.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| CliError::InvalidArgument(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// `evershard keygen KEY`: an Ed25519 key pair, KEY (secret, mode 0600) and KEY.pub.
pub fn keygen(args: &KeygenArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| CliError::InvalidArgument(format!("no randomness from /dev/urandom: {e}")))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    // KEY.pub, as documented: appended, not in place of KEY's extension (`audit.key` gave
    // `audit.pub`, and `x.pub` put the secret under a public key's name).
    let public_path = {
        let mut path = args.key.clone().into_os_string();
        path.push(".pub");
        std::path::PathBuf::from(path)
    };
    if public_path.exists() {
        return Err(CliError::InvalidArgument(format!(
            "{} exists: keygen writes new files only",
            public_path.display()
        )));
    }
    write_new(
        &args.key,
        &format!("{SECRET_KEY_TAG} {}\n", hex(&seed)),
        0o600,
    )?;
    let public = hex(key.verifying_key().as_bytes());
    write_new(&public_path, &format!("{PUBLIC_KEY_TAG} {public}\n"), 0o644)?;
    writeln!(
        out,
        "secret key {} (keep it private), public key {}: {public}",
        args.key.display(),
        public_path.display()
    )?;
    Ok(Outcome::Clean)
}

/// `evershard digest`: the tree head of the store (or of its first N events), optionally
/// signed.
pub fn digest(args: &DigestArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let key = args.sign.as_deref().map(read_signing_key).transpose()?;
    let dir = &args.store.data;
    let journal = open_read_only(dir)?;
    let head = guarded(|| journal.tree_head(args.at_position))
        .map_err(|message| CliError::Panicked {
            what: "computing the digest".into(),
            message,
        })?
        .map_err(|e| audit_error(dir, e))?;
    drop(journal);
    let mut file = DigestFile::new(&head, chrono::Utc::now());
    if let Some(key) = &key {
        file.sign(key)?;
    }
    if args.json {
        writeln!(out, "{}", to_json(&file, "the digest")?)?;
    } else {
        writeln!(out, "tree size: {}", file.tree_size)?;
        writeln!(out, "root hash: {}", file.root_hash)?;
        match file.last_event_at {
            Some(t) => writeln!(out, "last event at: {}", t.to_rfc3339())?,
            None => writeln!(out, "last event at: (empty store)")?,
        }
        writeln!(out, "taken at: {}", file.taken_at.to_rfc3339())?;
        match &file.signature {
            Some(sig) => writeln!(out, "signed by ed25519 key {}", sig.public_key)?,
            None => writeln!(out, "unsigned")?,
        }
    }
    Ok(Outcome::Clean)
}

/// `evershard prove TYPE ID SEQ --digest FILE`: the inclusion proof of one event in the tree
/// of the digest, as a JSON proof file.
pub fn prove(args: &ProveArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let digest = read_digest(&args.digest)?;
    let dir = &args.store.data;
    let stream = crate::store::stream_arg(&args.aggregate_type, &args.aggregate_id)?;
    let journal = open_read_only(dir)?;
    let proof = guarded(|| journal.prove_event(&stream, args.sequence, Some(digest.tree_size)))
        .map_err(|message| CliError::Panicked {
            what: "computing the proof".into(),
            message,
        })?
        .map_err(|e| match e {
            // The digest covered events the store no longer holds: the store changed (exit
            // 1, as docs/audit.md says), not a mistake of the caller's.
            AuditError::BeyondStore { size, store_size } => CliError::ProofRefused(format!(
                "the digest covers {size} events and the store holds {store_size}: the store \
                 lost events since the digest was taken (run `evershard verify --digest`)"
            )),
            other => audit_error(dir, other),
        })?;
    drop(journal);
    let root = digest.root()?;
    if !proof.verify(&root) {
        // The store no longer hashes to the digest: the proof would be refused, so say why.
        return Err(CliError::ProofRefused(format!(
            "the store's tree of {} events does not have the digest's root {}: the store \
             changed since the digest was taken (run `evershard verify --digest`)",
            digest.tree_size, digest.root_hash
        )));
    }
    let file = InclusionProofFile::new(&proof, &root).map_err(CliError::ProofRefused)?;
    let text = to_json(&file, "the proof")?;
    match &args.out {
        Some(path) => {
            write_new(path, &format!("{text}\n"), 0o644)?;
            writeln!(out, "proof written to {}", path.display())?;
        }
        None => writeln!(out, "{text}")?,
    }
    Ok(Outcome::Clean)
}

/// `evershard check-proof PROOF --digest FILE [--pubkey KEY]`: offline, no store.
pub fn check_proof(args: &CheckProofArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let digest = read_digest(&args.digest)?;
    let to = args.to_digest.as_deref().map(read_digest).transpose()?;
    let pinned = args.pubkey.as_deref().map(read_public_key).transpose()?;
    let text = std::fs::read_to_string(&args.proof).map_err(|e| {
        CliError::InvalidArgument(format!("cannot read {}: {e}", args.proof.display()))
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        CliError::InvalidArgument(format!("{} is not JSON: {e}", args.proof.display()))
    })?;
    let parse_err =
        |e: serde_json::Error| CliError::InvalidArgument(format!("malformed proof: {e}"));
    let mut refusals = Vec::new();
    for (name, d) in
        std::iter::once(("digest", &digest)).chain(to.iter().map(|d| ("second digest", d)))
    {
        match d.check_signature(pinned.as_ref()) {
            Ok(Some(key)) if pinned.is_some() => {
                writeln!(out, "ok: the {name} is signed by the given key {key}")?
            }
            Ok(Some(key)) => writeln!(
                out,
                "note: the {name} is signed by {key}, a key named only by the digest itself \
                 (pass --pubkey to pin it)"
            )?,
            Ok(None) => writeln!(out, "note: the {name} is not signed")?,
            Err(why) => refusals.push(format!("{name} signature: {why}")),
        }
    }
    let result = match value["format"].as_str() {
        Some(INCLUSION_FORMAT) => {
            let proof: InclusionProofFile = serde_json::from_value(value).map_err(parse_err)?;
            check_inclusion(&proof, &digest)
        }
        Some(CONSISTENCY_FORMAT) => {
            let proof: ConsistencyProofFile = serde_json::from_value(value).map_err(parse_err)?;
            check_consistency(&proof, &digest, to.as_ref())
        }
        other => {
            return Err(CliError::InvalidArgument(format!(
                "unknown proof format {other:?}"
            )))
        }
    };
    match result {
        Ok(what) => writeln!(out, "ok: {what}")?,
        Err(why) => refusals.push(why),
    }
    for why in &refusals {
        writeln!(out, "REFUSED: {why}")?;
    }
    Ok(if refusals.is_empty() {
        writeln!(out, "result: valid")?;
        Outcome::Clean
    } else {
        writeln!(out, "result: refused")?;
        Outcome::ProblemsFound
    })
}
