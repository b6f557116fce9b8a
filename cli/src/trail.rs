//! Who did what, when, across aggregates (ALCOA+: attributable, contemporaneous):
//! `evershard history --data DIR` with filters, in global order, and `evershard snapshot-at`,
//! the state of every aggregate of a type at a point in time.
//!
//! Filters are applied to the stored record before its payload is decoded, so a narrow
//! question over a large store costs one header decode per event it skips.

use crate::error::CliError;
use crate::inspect::{audit_text, envelope_json, json_line, last_sequence_at};
use crate::registry::Registry;
use crate::store::open_read_only;
use crate::{HistoryArgs, Outcome, ReportFormat, SnapshotAtArgs};
use chrono::{DateTime, Utc};
use evershard_engine::model::EventEnvelope;
use evershard_engine::{Corruption, Record, StorageError, StreamId};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use uuid::Uuid;

/// What `history`'s filters select; every given filter must match.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    pub user: Option<String>,
    pub correlation: Option<Uuid>,
    pub session: Option<Uuid>,
    pub event_type: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl Filter {
    pub(crate) fn of(args: &HistoryArgs) -> Filter {
        Filter {
            user: args.user.clone(),
            correlation: args.correlation,
            session: args.session,
            event_type: args.event_type.clone(),
            from: args.from.map(|t| t.with_timezone(&Utc)),
            to: args.to.map(|t| t.with_timezone(&Utc)),
        }
    }

    fn matches(
        &self,
        user: Option<&str>,
        correlation: Uuid,
        session: Option<Uuid>,
        event_type: &str,
        at: DateTime<Utc>,
    ) -> bool {
        self.user.as_deref().is_none_or(|u| user == Some(u))
            && self.correlation.is_none_or(|c| c == correlation)
            && self.session.is_none_or(|s| session == Some(s))
            && self.event_type.as_deref().is_none_or(|e| e == event_type)
            && self.from.is_none_or(|from| at >= from)
            && self.to.is_none_or(|to| at <= to)
    }

    pub(crate) fn matches_record(&self, r: &Record) -> bool {
        self.matches(
            r.user_id.as_deref(),
            r.correlation_id,
            r.session_id,
            &r.event_type,
            r.timestamp,
        )
    }

    pub(crate) fn matches_envelope(&self, e: &EventEnvelope<Value>) -> bool {
        self.matches(
            e.user_id.as_deref(),
            e.correlation_id,
            e.session_id,
            &e.event_type,
            e.timestamp,
        )
    }
}

/// `evershard history --data DIR [filters]`: every event of the store that passes the
/// filters, in global order. Types this build does not know are listed with a `null`
/// payload and a note, never as damage.
pub fn history_all(
    reg: &Registry,
    args: &HistoryArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let dir = &args.store.data;
    let journal = open_read_only(dir)?;
    let storage = |e| CliError::storage(dir, e);
    let filter = Filter::of(args);
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from > to {
            return Err(CliError::InvalidArgument(format!(
                "--from {} is after --to {}",
                from.to_rfc3339(),
                to.to_rfc3339()
            )));
        }
    }
    // A type the build does not know can still be asked for, by its stored name (resolved
    // against this binary's registry, which may hold its own types).
    // `(name, unknown)`: the stored name when this build knows the type, else the name as
    // typed (with the error to give if the store holds no such type either).
    let type_filter = args.type_filter.as_deref().map(|t| match reg.resolve(t) {
        Ok(known) => (known.to_owned(), None),
        Err(unknown) => (t.to_owned(), Some(Box::new(unknown))),
    });
    let mut type_seen = false;
    for entry in journal.read_global(1) {
        let (_position, stream, sequence) = entry.map_err(storage)?;
        let wanted = match &type_filter {
            None => true,
            Some((t, _)) => *t == stream.aggregate_type,
        };
        if !wanted {
            continue;
        }
        type_seen = true;
        let corrupt = |cause: Corruption| {
            storage(StorageError::Corrupt {
                stream: Some(stream.clone()),
                sequence: Some(sequence),
                cause,
            })
        };
        let bytes = journal
            .record_bytes(&stream, sequence)
            .map_err(storage)?
            .ok_or_else(|| corrupt(Corruption::MissingRecord))?;
        let record = Record::decode(&bytes).map_err(|e| corrupt(e.into()))?;
        if !filter.matches_record(&record) {
            continue;
        }
        let entry = reg.get(&record.aggregate_type);
        let known = entry.is_some();
        let envelope = match entry {
            // An erased payload (its subject forgotten) shows as such; an encrypted one
            // without the key is the typed refusal of `--key-file`.
            Some(entry) => match journal.open_record(record.clone()) {
                Ok(opened) => (entry.record_json)(opened).map_err(storage)?,
                Err(StorageError::Erased { .. }) => {
                    evershard_engine::repository::envelope(record, json!({ "erased": true }))
                }
                Err(e) => return Err(storage(e)),
            },
            None => evershard_engine::repository::envelope(record, Value::Null),
        };
        if args.json {
            let mut line = envelope_json(&envelope);
            if !known {
                line["note"] = json!("aggregate type unknown to this build: payload not decoded");
            }
            json_line(out, &line)?;
        } else {
            writeln!(
                out,
                "{:>8} {}  {}/{} #{}  {} {}  correlation {}{}{}{}  {}",
                envelope.global_position,
                rfc3339(&envelope.timestamp),
                envelope.aggregate_type,
                crate::error::shown(&envelope.aggregate_id),
                envelope.sequence,
                envelope.event_type,
                envelope.event_version,
                envelope.correlation_id,
                envelope
                    .causation_id
                    .map(|c| format!("  causation {c}"))
                    .unwrap_or_default(),
                envelope
                    .user_id
                    .as_deref()
                    .map(|u| format!("  user {u}"))
                    .unwrap_or_default(),
                audit_text(&envelope),
                if known {
                    envelope.payload.to_string()
                } else {
                    "(type unknown to this build: payload not decoded)".to_owned()
                }
            )?;
        }
    }
    out.flush()?;
    // A type neither this build nor the store knows is a typo, not an empty history.
    if let Some((_, Some(unknown))) = type_filter {
        if !type_seen {
            return Err(*unknown);
        }
    }
    Ok(Outcome::Clean)
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `evershard snapshot-at RFC3339 --data DIR --type T [--format json|csv]`: the state of
/// every aggregate of the type after its last event at or before the time (aggregates with
/// no event by then are left out), one line each.
pub fn snapshot_at(
    reg: &Registry,
    args: &SnapshotAtArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let dir = &args.store.data;
    let aggregate_type = reg.resolve(&args.aggregate_type)?;
    let type_entry = *reg
        .get(aggregate_type)
        .expect("resolved types are registered");
    let journal = open_read_only(dir)?;
    let at = args.at.with_timezone(&Utc);
    let mut rows: Vec<(StreamId, u64, Value)> = Vec::new();
    for entry in journal.streams(Some(aggregate_type)) {
        let (stream, _head) = entry.map_err(|e| CliError::storage(dir, e))?;
        let upto = last_sequence_at(&journal, &stream, at)?;
        if upto == 0 {
            continue;
        }
        // From the events, as `state --at` replays them: a snapshot is a cache, and one
        // changed on disk must not change an auditor's report (found by review).
        let loaded = (type_entry.state_json)(&journal, &stream, upto, false)?;
        match args.format {
            ReportFormat::Json => json_line(
                out,
                &json!({
                    "aggregate_type": stream.aggregate_type,
                    "aggregate_id": stream.aggregate_id,
                    "as_of": rfc3339(&at),
                    "sequence": loaded.version,
                    "state": loaded.state,
                }),
            )?,
            ReportFormat::Csv => rows.push((stream, loaded.version, loaded.state)),
        }
    }
    if args.format == ReportFormat::Csv {
        write_csv(&rows, out)?;
    }
    out.flush()?;
    Ok(Outcome::Clean)
}

/// One row per aggregate: `aggregate_id,sequence`, then the state's top-level fields (the
/// union over all rows, sorted), nested values as JSON text.
fn write_csv(rows: &[(StreamId, u64, Value)], out: &mut dyn Write) -> Result<(), CliError> {
    let columns: BTreeSet<&str> = rows
        .iter()
        .filter_map(|(_, _, state)| state.as_object())
        .flat_map(|o| o.keys().map(String::as_str))
        .collect();
    let mut header = vec!["aggregate_id".to_owned(), "sequence".to_owned()];
    header.extend(columns.iter().map(|c| csv_field(c)));
    writeln!(out, "{}", header.join(","))?;
    for (stream, sequence, state) in rows {
        let mut line = vec![csv_field(&stream.aggregate_id), sequence.to_string()];
        for column in &columns {
            let cell = match state.get(*column) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => csv_field(s),
                Some(other) => csv_field(&other.to_string()),
            };
            line.push(cell);
        }
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// RFC 4180: quoted when it holds a comma, a quote or a line break; quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("sku-1"), "sku-1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
