//! The file formats of digests, keys and proofs, and the offline checks of them. Nothing
//! here opens a store: `check-proof` needs only the files an auditor keeps (a digest, a
//! proof, a public key). docs/audit.md describes every format for auditors who write their
//! own verifier.
//!
//! - Digest: JSON `{format: "evershard-digest/1", tree_size, root_hash, last_event_at,
//!   taken_at, signature: null | {algorithm: "ed25519", public_key, signature}}`; the signed
//!   bytes are [`signed_message`].
//! - Keys: one text line, `evershard-ed25519-secret/1 <hex 32-byte seed>` or
//!   `evershard-ed25519-public/1 <hex 32-byte key>`.
//! - Proofs: JSON, `evershard-inclusion-proof/1` or `evershard-consistency-proof/1`.

use crate::error::CliError;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use evershard_engine::merkle;
use evershard_engine::record::Hash;
use evershard_engine::{ConsistencyProof, InclusionProof, Record, TreeHead};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const DIGEST_FORMAT: &str = "evershard-digest/1";
pub const INCLUSION_FORMAT: &str = "evershard-inclusion-proof/1";
pub const CONSISTENCY_FORMAT: &str = "evershard-consistency-proof/1";
pub const SECRET_KEY_TAG: &str = "evershard-ed25519-secret/1";
pub const PUBLIC_KEY_TAG: &str = "evershard-ed25519-public/1";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of hex text: two hex digits per byte and nothing else (`from_str_radix` alone
/// took `+f` for `0f`, so one signed digest had several spellings: found by review,
/// 2026-11-28).
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unhex_n<const N: usize>(text: &str, what: &str) -> Result<[u8; N], CliError> {
    unhex(text)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| CliError::InvalidArgument(format!("{what}: expected {N} bytes of hex")))
}

/// A signature over a digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSignature {
    pub algorithm: String,
    pub public_key: String,
    pub signature: String,
}

/// A digest file: a tree head, when it was taken, and optionally an Ed25519 signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestFile {
    pub format: String,
    pub tree_size: u64,
    pub root_hash: String,
    pub last_event_at: Option<DateTime<Utc>>,
    pub taken_at: DateTime<Utc>,
    pub signature: Option<DigestSignature>,
}

impl DigestFile {
    pub fn new(head: &TreeHead, taken_at: DateTime<Utc>) -> DigestFile {
        DigestFile {
            format: DIGEST_FORMAT.into(),
            tree_size: head.tree_size,
            root_hash: hex(&head.root_hash),
            last_event_at: head.last_event_at,
            taken_at: evershard_engine::model::truncate_to_micros(taken_at),
            signature: None,
        }
    }

    pub fn root(&self) -> Result<Hash, CliError> {
        unhex_n(&self.root_hash, "digest root_hash")
    }

    /// The bytes an Ed25519 signature covers (see docs/audit.md).
    pub fn signed_message(&self) -> Result<Vec<u8>, CliError> {
        Ok(signed_message(
            self.tree_size,
            &self.root()?,
            self.last_event_at,
            self.taken_at,
        ))
    }

    pub fn sign(&mut self, key: &SigningKey) -> Result<(), CliError> {
        let signature = key.sign(&self.signed_message()?);
        self.signature = Some(DigestSignature {
            algorithm: "ed25519".into(),
            public_key: hex(key.verifying_key().as_bytes()),
            signature: hex(&signature.to_bytes()),
        });
        Ok(())
    }

    /// Checks the signature. With `pinned`, it must be by that key; without, by the key the
    /// file names. Ok(Some(key hex)) when signed and valid, Ok(None) when unsigned (an error
    /// if a key was pinned), Err(reason) when invalid.
    pub fn check_signature(&self, pinned: Option<&VerifyingKey>) -> Result<Option<String>, String> {
        let Some(sig) = &self.signature else {
            return match pinned {
                Some(_) => Err("the digest is not signed, but a public key was given".into()),
                None => Ok(None),
            };
        };
        if sig.algorithm != "ed25519" {
            return Err(format!("unknown signature algorithm {:?}", sig.algorithm));
        }
        let named: [u8; 32] = unhex(&sig.public_key)
            .and_then(|v| v.try_into().ok())
            .ok_or("signature public_key is not 32 bytes of hex")?;
        let named = VerifyingKey::from_bytes(&named).map_err(|e| format!("public key: {e}"))?;
        if pinned.is_some_and(|p| p != &named) {
            return Err("the digest is signed by another key than the one given".into());
        }
        let bytes: [u8; 64] = unhex(&sig.signature)
            .and_then(|v| v.try_into().ok())
            .ok_or("signature is not 64 bytes of hex")?;
        let message = self.signed_message().map_err(|e| e.to_string())?;
        named
            .verify_strict(&message, &Signature::from_bytes(&bytes))
            .map_err(|_| "the signature does not match the digest".to_string())?;
        Ok(Some(sig.public_key.clone()))
    }
}

/// `"evershard-digest/1\n"` ‖ tree_size u64 BE ‖ root (32 bytes) ‖ last_event_at i64 BE
/// (microseconds since the Unix epoch; i64::MIN when absent) ‖ taken_at i64 BE (microseconds).
pub fn signed_message(
    tree_size: u64,
    root: &Hash,
    last_event_at: Option<DateTime<Utc>>,
    taken_at: DateTime<Utc>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(19 + 8 + 32 + 16);
    m.extend_from_slice(DIGEST_FORMAT.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(&tree_size.to_be_bytes());
    m.extend_from_slice(root);
    let last = last_event_at.map_or(i64::MIN, |t| t.timestamp_micros());
    m.extend_from_slice(&last.to_be_bytes());
    m.extend_from_slice(&taken_at.timestamp_micros().to_be_bytes());
    m
}

fn read_text(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| {
        CliError::InvalidArgument(format!("cannot read {what} {}: {e}", path.display()))
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, CliError> {
    serde_json::from_str(&read_text(path, what)?).map_err(|e| {
        CliError::InvalidArgument(format!("{} is not a valid {what}: {e}", path.display()))
    })
}

pub fn read_digest(path: &Path) -> Result<DigestFile, CliError> {
    let digest: DigestFile = read_json(path, "digest")?;
    if digest.format != DIGEST_FORMAT {
        return Err(CliError::InvalidArgument(format!(
            "{}: unknown digest format {:?}",
            path.display(),
            digest.format
        )));
    }
    digest.root()?;
    Ok(digest)
}

fn read_key_line(path: &Path, tag: &str) -> Result<[u8; 32], CliError> {
    let text = read_text(path, "key file")?;
    let (found, key) = text.trim().split_once(' ').unwrap_or(("", ""));
    if found != tag {
        return Err(CliError::InvalidArgument(format!(
            "{}: expected a line \"{tag} <64 hex digits>\"",
            path.display()
        )));
    }
    unhex_n(key.trim(), "key")
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey, CliError> {
    Ok(SigningKey::from_bytes(&read_key_line(
        path,
        SECRET_KEY_TAG,
    )?))
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey, CliError> {
    let bytes = read_key_line(path, PUBLIC_KEY_TAG)?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| CliError::InvalidArgument(format!("{}: {e}", path.display())))
}

/// An inclusion proof file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProofFile {
    pub format: String,
    pub tree_size: u64,
    pub root_hash: String,
    pub leaf_index: u64,
    pub global_position: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    /// The stored record bytes, hex.
    pub record: String,
    pub record_sha256: String,
    pub leaf_hash: String,
    pub path: Vec<String>,
}

impl InclusionProofFile {
    pub fn new(proof: &InclusionProof, root: &Hash) -> Result<InclusionProofFile, String> {
        let record = Record::decode(&proof.record).map_err(|e| e.to_string())?;
        Ok(InclusionProofFile {
            format: INCLUSION_FORMAT.into(),
            tree_size: proof.tree_size,
            root_hash: hex(root),
            leaf_index: proof.leaf_index,
            global_position: record.global_position,
            aggregate_type: record.aggregate_type,
            aggregate_id: record.aggregate_id,
            sequence: record.sequence,
            event_type: record.event_type,
            record: hex(&proof.record),
            record_sha256: hex(&proof.record_sha256()),
            leaf_hash: hex(&proof.leaf_hash()),
            path: proof.path.iter().map(|h| hex(h)).collect(),
        })
    }
}

/// A consistency proof file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProofFile {
    pub format: String,
    pub first_size: u64,
    pub first_root: String,
    pub second_size: u64,
    pub second_root: String,
    pub path: Vec<String>,
}

impl ConsistencyProofFile {
    pub fn new(proof: &ConsistencyProof, first: &Hash, second: &Hash) -> ConsistencyProofFile {
        ConsistencyProofFile {
            format: CONSISTENCY_FORMAT.into(),
            first_size: proof.first_size,
            first_root: hex(first),
            second_size: proof.second_size,
            second_root: hex(second),
            path: proof.path.iter().map(|h| hex(h)).collect(),
        }
    }
}

fn hashes(list: &[String]) -> Result<Vec<Hash>, String> {
    list.iter()
        .map(|h| {
            unhex(h)
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| format!("path entry {h:?} is not 32 bytes of hex"))
        })
        .collect()
}

fn hash32(text: &str, what: &str) -> Result<Hash, String> {
    unhex(text)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("{what} is not 32 bytes of hex"))
}

/// Checks an inclusion proof against a digest; `Ok(description)` or `Err(why refused)`.
pub fn check_inclusion(proof: &InclusionProofFile, digest: &DigestFile) -> Result<String, String> {
    let bytes = unhex(&proof.record).ok_or("record is not hex")?;
    let record = Record::decode(&bytes).map_err(|e| format!("the record does not decode: {e}"))?;
    // Every field the file states about the record is the record's (the event type was not
    // compared: a file could name another type and still be "valid", found by review,
    // 2026-11-28).
    let claimed = (
        proof.aggregate_type.as_str(),
        proof.aggregate_id.as_str(),
        proof.event_type.as_str(),
        proof.sequence,
        proof.global_position,
    );
    let actual = (
        record.aggregate_type.as_str(),
        record.aggregate_id.as_str(),
        record.event_type.as_str(),
        record.sequence,
        record.global_position,
    );
    if claimed != actual {
        return Err(format!(
            "the proof names {}/{} {} sequence {} position {}, the record says {}/{} {} \
             sequence {} position {}",
            claimed.0,
            claimed.1,
            claimed.2,
            claimed.3,
            claimed.4,
            actual.0,
            actual.1,
            actual.2,
            actual.3,
            actual.4
        ));
    }
    if proof.leaf_index.checked_add(1) != Some(record.global_position) {
        return Err(format!(
            "leaf index {} is not the record's global position {} - 1",
            proof.leaf_index, record.global_position
        ));
    }
    let record_sha256 = evershard_engine::record::hash(&bytes);
    let leaf = merkle::leaf_hash(&record_sha256);
    if hash32(&proof.record_sha256, "record_sha256")? != record_sha256 {
        return Err("record_sha256 is not the SHA-256 of the record".into());
    }
    if hash32(&proof.leaf_hash, "leaf_hash")? != leaf {
        return Err("leaf_hash is not SHA-256(0x00 || record_sha256)".into());
    }
    if proof.tree_size != digest.tree_size {
        return Err(format!(
            "the proof is for a tree of {} events, the digest for {}",
            proof.tree_size, digest.tree_size
        ));
    }
    let root = digest.root().map_err(|e| e.to_string())?;
    if hash32(&proof.root_hash, "root_hash")? != root {
        return Err("the proof's root_hash is not the digest's".into());
    }
    let path = hashes(&proof.path)?;
    if !merkle::verify_inclusion(proof.leaf_index, proof.tree_size, &leaf, &path, &root) {
        return Err("the path does not lead from the record's leaf to the digest's root".into());
    }
    Ok(format!(
        "{}/{} sequence {} ({}, global position {}) is in the tree of {} events with root {}",
        record.aggregate_type,
        record.aggregate_id,
        record.sequence,
        record.event_type,
        record.global_position,
        proof.tree_size,
        digest.root_hash
    ))
}

/// Checks a consistency proof: its first tree must be `digest`'s, and `to` (if given) its
/// second tree's.
pub fn check_consistency(
    proof: &ConsistencyProofFile,
    digest: &DigestFile,
    to: Option<&DigestFile>,
) -> Result<String, String> {
    let first_root = hash32(&proof.first_root, "first_root")?;
    let second_root = hash32(&proof.second_root, "second_root")?;
    if proof.first_size != digest.tree_size
        || first_root != digest.root().map_err(|e| e.to_string())?
    {
        return Err(format!(
            "the proof starts from a tree of {} events with root {}, the digest is of {} with root {}",
            proof.first_size, proof.first_root, digest.tree_size, digest.root_hash
        ));
    }
    if let Some(to) = to {
        if proof.second_size != to.tree_size
            || second_root != to.root().map_err(|e| e.to_string())?
        {
            return Err("the proof does not end at the second digest's tree".into());
        }
    }
    let path = hashes(&proof.path)?;
    if !merkle::verify_consistency(
        proof.first_size,
        proof.second_size,
        &first_root,
        &second_root,
        &path,
    ) {
        return Err(format!(
            "the tree of {} events is NOT a prefix of the tree of {} events",
            proof.first_size, proof.second_size
        ));
    }
    // Without a second digest the second root is the proof file's own word: the check shows
    // the two roots consistent, not that the second is the store's (found by review).
    let unauthenticated = match to {
        Some(_) => "",
        None => {
            "; the second root is the proof's own, not checked against a digest \
             (give --to-digest to check it)"
        }
    };
    Ok(format!(
        "the tree of {} events (root {}) is a prefix of the tree of {} events (root {}){unauthenticated}",
        proof.first_size, proof.first_root, proof.second_size, proof.second_root
    ))
}
