//! `evershard export`: every event of the store (or of one type) in global order, as JSON
//! lines, for auditors and for loading into other tools. Each line is the envelope of
//! `history --json` plus the record's integrity data: `record` (the stored record bytes, hex),
//! `record_sha256` (their SHA-256), `prev_record_sha256` (the previous record of the same
//! aggregate; zeroes at sequence 1) and `leaf_hash` (the record's Merkle leaf,
//! SHA-256(0x00 ‖ record_sha256)), so the per-aggregate hash chain and the tree can be
//! recomputed outside evershard.
//!
//! Read-only, like every command but `demo`. A record that fails its checks or whose type this
//! build does not know ends the export with an error naming it: an export is never silently
//! incomplete.

use crate::error::CliError;
use crate::inspect::{envelope_json, json_line};
use crate::registry::Registry;
use crate::store::open_read_only;
use crate::{ExportArgs, Outcome};
use evershard_engine::record;
use evershard_engine::{Corruption, StorageError};
use std::io::Write;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn run(reg: &Registry, args: &ExportArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let only = args
        .aggregate_type
        .as_deref()
        .map(|t| reg.resolve(t))
        .transpose()?;
    let dir = &args.store.data;
    let journal = open_read_only(dir)?;
    let mut exported = 0u64;
    for entry in journal.read_global(args.from_position.max(1)) {
        let (_position, stream, sequence) = entry.map_err(|e| CliError::storage(dir, e))?;
        if only.is_some_and(|name| name != stream.aggregate_type) {
            continue;
        }
        let erasure = stream.aggregate_type == evershard_engine::crypto::ERASURE_TYPE;
        let entry = reg.get(&stream.aggregate_type);
        if entry.is_none() && !erasure {
            return Err(CliError::InvalidArgument(format!(
                "{stream} at sequence {sequence}: aggregate type {} is not known to this build",
                stream.aggregate_type
            )));
        }
        let stored = journal
            .read_stream_sealed(&stream, sequence, sequence)
            .next()
            .unwrap_or_else(|| {
                Err(StorageError::Corrupt {
                    stream: Some(stream.clone()),
                    sequence: Some(sequence),
                    cause: Corruption::MissingRecord,
                })
            })
            .map_err(|e| CliError::storage(dir, e))?;
        // The stored bytes themselves (read_stream above checked them): an auditor recomputes
        // record_sha256 and the Merkle leaf from them, without evershard.
        let bytes = journal
            .record_bytes(&stream, sequence)
            .map_err(|e| CliError::storage(dir, e))?
            .ok_or_else(|| {
                CliError::storage(
                    dir,
                    StorageError::Corrupt {
                        stream: Some(stream.clone()),
                        sequence: Some(sequence),
                        cause: Corruption::MissingRecord,
                    },
                )
            })?;
        let sha = record::hash(&bytes);
        let record_sha256 = hex(&sha);
        let prev_record_sha256 = hex(&stored.prev_hash);
        // An erased payload (its subject forgotten) is exported as such; the record bytes
        // and hashes below are unchanged, so the line still proves the record.
        let envelope = match journal.open_record(stored.clone()) {
            Ok(opened) if erasure => {
                let body: evershard_engine::crypto::Erasure =
                    evershard_engine::model::codec::decode(&opened.payload).map_err(|e| {
                        CliError::storage(
                            dir,
                            StorageError::Corrupt {
                                stream: Some(stream.clone()),
                                sequence: Some(sequence),
                                cause: Corruption::Payload {
                                    event_type: opened.event_type.as_str().into(),
                                    event_version: opened.event_version.as_str().into(),
                                    source: Box::new(e),
                                },
                            },
                        )
                    })?;
                evershard_engine::repository::envelope(
                    opened,
                    serde_json::json!({
                        "key_id": body.key_id,
                        "earlier_key_ids": body.earlier_key_ids,
                        "reason": body.reason,
                    }),
                )
            }
            Ok(opened) => (entry.expect("known type").record_json)(opened)
                .map_err(|e| CliError::storage(dir, e))?,
            Err(StorageError::Erased { .. }) => evershard_engine::repository::envelope(
                stored,
                serde_json::json!({ "erased": true }),
            ),
            Err(e) => return Err(CliError::storage(dir, e)),
        };
        let mut line = envelope_json(&envelope);
        line["record_sha256"] = record_sha256.into();
        line["prev_record_sha256"] = prev_record_sha256.into();
        line["leaf_hash"] = hex(&evershard_engine::merkle::leaf_hash(&sha)).into();
        line["record"] = hex(&bytes).into();
        json_line(out, &line)?;
        exported += 1;
    }
    out.flush()?;
    eprintln!("exported {exported} events");
    Ok(Outcome::Clean)
}
