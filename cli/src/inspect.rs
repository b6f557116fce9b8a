//! The read-only views: `list`, `history`, `state`, `stats`. Each opens the store with
//! `Journal::open_read_only` and closes it before returning.

use crate::error::CliError;
use crate::registry::Registry;
use crate::store::open_read_only;
use crate::{HistoryArgs, ListArgs, Outcome, StateArgs, StatsArgs, TimersArgs};
use chrono::{DateTime, SecondsFormat, Utc};
use evershard_engine::model::{Aggregate, DomainEvent, EventEnvelope};
use evershard_engine::repository::{self, Loaded};
use evershard_engine::IdempotencyEntry;
use evershard_engine::Record;
use evershard_engine::{Journal, StorageError, StreamId};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn json_line(out: &mut dyn Write, value: &Value) -> Result<(), CliError> {
    writeln!(out, "{value}")?;
    Ok(())
}

/// The stream's head, or an error when the aggregate has no events.
fn existing_head(journal: &Journal, stream: &StreamId) -> Result<u64, CliError> {
    let head = journal
        .head(stream)
        .map_err(|e| CliError::storage(journal.dir(), e))?
        .sequence;
    if head == 0 {
        return Err(CliError::NoSuchAggregate {
            aggregate_type: stream.aggregate_type.clone(),
            aggregate_id: stream.aggregate_id.clone(),
            dir: journal.dir().to_path_buf(),
        });
    }
    Ok(head)
}

/// `evershard list`: one line per aggregate, `type<TAB>id<TAB>last sequence`.
pub fn list(reg: &Registry, args: &ListArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let filter = args
        .aggregate_type
        .as_deref()
        .map(|t| reg.resolve(t))
        .transpose()?;
    let journal = open_read_only(&args.store.data)?;
    for entry in journal.streams(filter) {
        let (stream, head) = entry.map_err(|e| CliError::storage(&args.store.data, e))?;
        writeln!(
            out,
            "{}\t{}\t{head}",
            stream.aggregate_type, stream.aggregate_id
        )?;
    }
    out.flush()?;
    Ok(Outcome::Clean)
}

/// Every event of a stream, upcast and decoded as `A::Event`, rendered as JSON
/// (`DomainEvent::payload_json`). A record that fails its checks or does not decode is an
/// `Err` naming the stream and sequence.
pub(crate) fn history_json<'j, A: Aggregate>(
    journal: &'j Journal,
    stream: &'j StreamId,
) -> EnvelopesJson<'j> {
    // An erased payload (its subject forgotten) is shown as such with the record's
    // metadata, which stays readable; a missing key is an error.
    Box::new(
        journal
            .read_stream_sealed(stream, 1, u64::MAX)
            .map(move |r| {
                r.and_then(|sealed| match journal.open_record(sealed.clone()) {
                    Ok(opened) => record_json::<A>(opened),
                    Err(StorageError::Erased { .. }) => Ok(repository::envelope(
                        sealed,
                        serde_json::json!({ "erased": true }),
                    )),
                    Err(e) => Err(e),
                })
            }),
    )
}

pub(crate) type EnvelopesJson<'j> =
    Box<dyn Iterator<Item = Result<EventEnvelope<Value>, StorageError>> + 'j>;

/// One stored record as an envelope around its JSON payload (upcast).
pub(crate) fn record_json<A: Aggregate>(
    record: Record,
) -> Result<EventEnvelope<Value>, StorageError> {
    repository::decode_record::<A>(record).map(|e| e.map(|event| event.payload_json()))
}

/// The state as of sequence `upto` (`u64::MAX`: the head) rendered as JSON, through
/// `repository::load`.
pub(crate) fn state_json<A: Aggregate>(
    journal: &Journal,
    stream: &StreamId,
    upto: u64,
    use_snapshots: bool,
) -> Result<Loaded<Value>, CliError> {
    let loaded = repository::load::<A>(journal, stream, upto, use_snapshots)
        .map_err(|e| CliError::load(journal.dir(), e))?;
    let state = serde_json::to_value(&loaded.state).map_err(|source| CliError::Json {
        what: format!("the state of {stream} ({})", A::TYPE),
        source,
    })?;
    Ok(Loaded {
        state,
        version: loaded.version,
        from_snapshot: loaded.from_snapshot,
        events_replayed: loaded.events_replayed,
        skipped_snapshots: loaded.skipped_snapshots,
    })
}

/// The JSON object `history --json` prints for one event.
pub fn envelope_json(envelope: &EventEnvelope<Value>) -> Value {
    json!({
        "event_id": envelope.event_id,
        "event_type": envelope.event_type,
        "event_version": envelope.event_version,
        "aggregate_type": envelope.aggregate_type,
        "aggregate_id": envelope.aggregate_id,
        "sequence": envelope.sequence,
        "global_position": envelope.global_position,
        "timestamp": rfc3339(&envelope.timestamp),
        "correlation_id": envelope.correlation_id,
        "causation_id": envelope.causation_id,
        "source": envelope.source,
        "user_id": envelope.user_id,
        "session_id": envelope.session_id,
        "audit_context": envelope.audit_context,
        "payload": envelope.payload,
    })
}

/// `  session S  from IP  agent "A"  flags F,G` for the events that carry them (record
/// format 2), else empty.
pub fn audit_text(envelope: &EventEnvelope<Value>) -> String {
    let mut text = String::new();
    if let Some(session) = envelope.session_id {
        text.push_str(&format!("  session {session}"));
    }
    if let Some(audit) = &envelope.audit_context {
        if let Some(ip) = audit.ip_address {
            text.push_str(&format!("  from {ip}"));
        }
        if let Some(agent) = &audit.user_agent {
            text.push_str(&format!("  agent {:?}", crate::error::shown(agent)));
        }
        if !audit.compliance_flags.is_empty() {
            text.push_str(&format!("  flags {}", audit.compliance_flags.join(",")));
        }
    }
    text
}

/// `evershard history TYPE ID`: every event, oldest first. Events before a damaged record are
/// printed; the damaged one ends the command with an error naming its sequence.
pub fn history(
    reg: &Registry,
    args: &HistoryArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let (Some(aggregate_type), Some(aggregate_id)) = (&args.aggregate_type, &args.aggregate_id)
    else {
        return crate::trail::history_all(reg, args, out);
    };
    let filter = crate::trail::Filter::of(args);
    let aggregate_type = reg.resolve(aggregate_type)?;
    let entry = *reg
        .get(aggregate_type)
        .expect("resolved types are registered");
    let stream = crate::store::stream_arg(aggregate_type, aggregate_id)?;
    let journal = open_read_only(&args.store.data)?;
    existing_head(&journal, &stream)?;
    let keys = journal
        .idempotency_keys(&stream)
        .map_err(|e| CliError::storage(&args.store.data, e))?;
    // The idempotency key whose command committed a sequence, if any.
    let key_of = |sequence: u64| {
        keys.iter()
            .find(|k| (k.first_sequence..k.first_sequence + k.events as u64).contains(&sequence))
            .map(|k| k.key)
    };
    let events = (entry.history_json)(&journal, &stream);
    for envelope in events {
        let envelope = envelope.map_err(|e| CliError::storage(&args.store.data, e))?;
        if !filter.matches_envelope(&envelope) {
            continue;
        }
        let key = key_of(envelope.sequence);
        if args.json {
            let mut line = envelope_json(&envelope);
            line["idempotency_key"] = json!(key);
            json_line(out, &line)?;
        } else {
            writeln!(
                out,
                "#{:<5} {}  {} {}  global {}  correlation {}{}{}{}{}  {}",
                envelope.sequence,
                rfc3339(&envelope.timestamp),
                envelope.event_type,
                envelope.event_version,
                envelope.global_position,
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
                key.map(|k| format!("  idempotency-key {k}"))
                    .unwrap_or_default(),
                envelope.payload
            )?;
        }
    }
    out.flush()?;
    Ok(Outcome::Clean)
}

/// The last sequence of the stream's longest prefix whose events are all at or before `at`
/// (0: none): what had been committed by then. Not the highest sequence stamped at or before
/// `at`: a clock stepped back (an NTP step, a failover to a node whose clock is behind) can
/// stamp an event earlier than the one before it, and that event came after it all the same.
pub(crate) fn last_sequence_at(
    journal: &Journal,
    stream: &StreamId,
    at: DateTime<Utc>,
) -> Result<u64, CliError> {
    let mut last = 0;
    // Times are metadata: no payload is opened (no key needed).
    for record in journal.read_stream_sealed(stream, 1, u64::MAX) {
        let record = record.map_err(|e| CliError::storage(journal.dir(), e))?;
        if record.timestamp > at {
            break;
        }
        last = record.sequence;
    }
    Ok(last)
}

/// `evershard state TYPE ID`: the state at the head, at a sequence, or at a point in time.
pub fn state(reg: &Registry, args: &StateArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let aggregate_type = reg.resolve(&args.aggregate_type)?;
    let entry = *reg
        .get(aggregate_type)
        .expect("resolved types are registered");
    let stream = crate::store::stream_arg(aggregate_type, &args.aggregate_id)?;
    let journal = open_read_only(&args.store.data)?;
    let head = existing_head(&journal, &stream)?;
    let (upto, as_of) = match (args.at_seq, args.at) {
        (Some(sequence), _) if sequence > head => {
            return Err(CliError::InvalidArgument(format!(
                "--at-seq {sequence} is beyond the last sequence of {stream}, {head}"
            )))
        }
        (Some(sequence), _) => (sequence, json!({ "sequence": sequence })),
        (None, Some(at)) => {
            let at = at.with_timezone(&Utc);
            (
                last_sequence_at(&journal, &stream, at)?,
                json!({ "timestamp": rfc3339(&at) }),
            )
        }
        (None, None) => (head, json!("head")),
    };
    let loaded = (entry.state_json)(&journal, &stream, upto, args.from_snapshots)?;
    let storage = |e| CliError::storage(&args.store.data, e);
    // The timer and keys are the store's now, not as of an earlier sequence.
    let timer = journal.timer(&stream).map_err(storage)?;
    let keys = journal.idempotency_keys(&stream).map_err(storage)?;
    if args.json {
        json_line(
            out,
            &json!({
                "aggregate_type": stream.aggregate_type,
                "aggregate_id": stream.aggregate_id,
                "as_of": as_of,
                "version": loaded.version,
                "head": head,
                "from_snapshot": loaded.from_snapshot,
                "events_replayed": loaded.events_replayed,
                "skipped_snapshots": loaded.skipped_snapshots.iter().map(|s| json!({
                    "sequence": s.sequence,
                    "reason": s.reason.to_string(),
                })).collect::<Vec<_>>(),
                "state": loaded.state,
                "timer": timer.as_ref().map(rfc3339),
                "idempotency_keys": keys.iter().map(key_json).collect::<Vec<_>>(),
            }),
        )?;
    } else {
        let asked = match (args.at_seq, args.at) {
            (Some(sequence), _) => format!("as of sequence {sequence}"),
            (None, Some(at)) => format!("as of {}", rfc3339(&at.with_timezone(&Utc))),
            (None, None) => "at the head".to_owned(),
        };
        let source = match loaded.from_snapshot {
            Some(snapshot) => format!(
                "snapshot at {snapshot} + {} events replayed",
                loaded.events_replayed
            ),
            None => format!("{} events replayed from the first", loaded.events_replayed),
        };
        writeln!(
            out,
            "{stream} {asked}: version {} of {head} ({source})",
            loaded.version
        )?;
        for skipped in &loaded.skipped_snapshots {
            writeln!(out, "warning: {skipped}")?;
        }
        let pretty =
            serde_json::to_string_pretty(&loaded.state).map_err(|source| CliError::Json {
                what: format!("the state of {stream}"),
                source,
            })?;
        writeln!(out, "{pretty}")?;
        match timer {
            Some(at) => writeln!(out, "timer: due {}", rfc3339(&at))?,
            None => writeln!(out, "timer: none")?,
        }
        for k in &keys {
            writeln!(
                out,
                "idempotency key {} recorded {}: {} events from sequence {}",
                k.key,
                rfc3339(&k.recorded_at),
                k.events,
                k.first_sequence
            )?;
        }
    }
    out.flush()?;
    Ok(Outcome::Clean)
}

fn key_json(k: &IdempotencyEntry) -> Value {
    json!({
        "key": k.key,
        "recorded_at": rfc3339(&k.recorded_at),
        "first_sequence": k.first_sequence,
        "events": k.events,
    })
}

/// `evershard timers`: pending timers in deadline order (read lazily from the keyspace).
pub fn timers(args: &TimersArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let journal = open_read_only(&args.store.data)?;
    let due_before = args.due_before.map(|t| t.with_timezone(&Utc));
    for timer in journal.timers(due_before) {
        let timer = timer.map_err(|e| CliError::storage(&args.store.data, e))?;
        if args.json {
            json_line(
                out,
                &json!({
                    "deadline": rfc3339(&timer.deadline),
                    "aggregate_type": timer.stream.aggregate_type,
                    "aggregate_id": timer.stream.aggregate_id,
                }),
            )?;
        } else {
            writeln!(
                out,
                "{}\t{}\t{}",
                rfc3339(&timer.deadline),
                timer.stream.aggregate_type,
                timer.stream.aggregate_id
            )?;
        }
    }
    out.flush()?;
    Ok(Outcome::Clean)
}

/// `evershard stats`: the journal's counts and the aggregates of each type.
pub fn stats(reg: &Registry, args: &StatsArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let journal = open_read_only(&args.store.data)?;
    let stats = journal
        .stats()
        .map_err(|e| CliError::storage(&args.store.data, e))?;
    let checkpoint = journal
        .checkpoint_mark()
        .map_err(|e| CliError::storage(&args.store.data, e))?;
    // type -> (aggregates, events)
    let mut per_type: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for entry in journal.streams(None) {
        let (stream, head) = entry.map_err(|e| CliError::storage(&args.store.data, e))?;
        let counts = per_type.entry(stream.aggregate_type).or_default();
        counts.0 += 1;
        counts.1 += head;
    }
    if args.json {
        let types: serde_json::Map<String, Value> = per_type
            .iter()
            .map(|(name, (aggregates, events))| {
                let known = reg.is_known(name);
                (
                    name.clone(),
                    json!({ "aggregates": aggregates, "events": events, "known": known }),
                )
            })
            .collect();
        json_line(
            out,
            &json!({
                "store": args.store.data.display().to_string(),
                "events": stats.events,
                "event_bytes": stats.event_bytes,
                "snapshots": stats.snapshots,
                "snapshot_bytes": stats.snapshot_bytes,
                "last_global_position": stats.last_global_position,
                "disk_bytes": stats.disk_bytes,
                "aggregates": per_type.values().map(|(a, _)| a).sum::<u64>(),
                "types": types,
                "checkpoint": checkpoint.as_ref().map(|m| json!({
                    "cut_position": m.cut_position,
                    "taken_at": m.taken_at.to_rfc3339(),
                    "source": m.source_dir.display().to_string(),
                })),
            }),
        )?;
    } else {
        writeln!(out, "store                 {}", args.store.data.display())?;
        writeln!(out, "events                {}", stats.events)?;
        writeln!(out, "event bytes           {}", stats.event_bytes)?;
        writeln!(out, "snapshots             {}", stats.snapshots)?;
        writeln!(out, "snapshot bytes        {}", stats.snapshot_bytes)?;
        writeln!(out, "last global position  {}", stats.last_global_position)?;
        writeln!(out, "disk bytes            {}", stats.disk_bytes)?;
        if let Some(m) = &checkpoint {
            writeln!(
                out,
                "checkpoint            of {} at global position {}, taken {}",
                m.source_dir.display(),
                m.cut_position,
                m.taken_at.to_rfc3339()
            )?;
        }
        writeln!(out, "aggregates by type:")?;
        if per_type.is_empty() {
            writeln!(out, "  (none)")?;
        }
        for (name, (aggregates, events)) in &per_type {
            let unknown = if reg.is_known(name) {
                ""
            } else {
                "  (unknown to this build)"
            };
            writeln!(
                out,
                "  {name:<14} {aggregates:>8} aggregates {events:>10} events{unknown}"
            )?;
        }
    }
    out.flush()?;
    Ok(Outcome::Clean)
}
