//! `evershard reconcile`: compares what a consumer received (JSON lines, as `evershard consume
//! --json` prints them or as dumped from Kafka) with what the journal says the topic holds,
//! and reports every message that is missing, extra, duplicated, out of order, or different.
//!
//! Messages are matched by event id (the `event_id` header, else the value's `eventId` /
//! `event_id`), not by offset: a Kafka topic's offsets need not equal the embedded log's (a
//! topic that held messages before the publisher started, a compacted or retried partition),
//! while an event's id is the same everywhere. Compared per matched message: partition, key,
//! every header the line carries, and the value as JSON (so key order and whitespace of the
//! dump do not matter). Order: within one aggregate, the file must list its events in
//! sequence order (what a consumer of one partition sees).

use crate::error::CliError;
use crate::inspect::json_line;
use crate::registry::Registry;
use crate::{Outcome, ReconcileArgs};
use evershard_engine::{Message, TopicLog};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use uuid::Uuid;

/// Findings printed in full at most; the counts are always complete.
pub const FINDINGS_SHOWN_MAX: usize = 1_000;

/// One discrepancy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// In the topic, not in the file.
    Missing {
        partition: u32,
        offset: u64,
        event_id: Uuid,
    },
    /// In the file (at `line`), not in the topic.
    Extra { line: usize, event_id: Uuid },
    /// A line that names no event id or is not JSON.
    Unreadable { line: usize, reason: String },
    /// The same event a second time.
    Duplicate {
        line: usize,
        first_line: usize,
        event_id: Uuid,
    },
    /// An event of an aggregate listed before one of its earlier events.
    OutOfOrder {
        line: usize,
        event_id: Uuid,
        aggregate: String,
        sequence: u64,
        after_sequence: u64,
    },
    /// Matched, but a field differs.
    Differs {
        line: usize,
        event_id: Uuid,
        field: String,
        expected: String,
        found: String,
    },
}

impl Finding {
    fn kind(&self) -> &'static str {
        match self {
            Finding::Missing { .. } => "missing",
            Finding::Extra { .. } => "extra",
            Finding::Unreadable { .. } => "unreadable",
            Finding::Duplicate { .. } => "duplicate",
            Finding::OutOfOrder { .. } => "out_of_order",
            Finding::Differs { .. } => "differs",
        }
    }

    fn to_json(&self) -> Value {
        let mut v = match self {
            Finding::Missing {
                partition,
                offset,
                event_id,
            } => json!({ "partition": partition, "offset": offset, "event_id": event_id }),
            Finding::Extra { line, event_id } => json!({ "line": line, "event_id": event_id }),
            Finding::Unreadable { line, reason } => json!({ "line": line, "reason": reason }),
            Finding::Duplicate {
                line,
                first_line,
                event_id,
            } => json!({ "line": line, "first_line": first_line, "event_id": event_id }),
            Finding::OutOfOrder {
                line,
                event_id,
                aggregate,
                sequence,
                after_sequence,
            } => json!({
                "line": line, "event_id": event_id, "aggregate": aggregate,
                "sequence": sequence, "after_sequence": after_sequence,
            }),
            Finding::Differs {
                line,
                event_id,
                field,
                expected,
                found,
            } => json!({
                "line": line, "event_id": event_id, "field": field,
                "expected": expected, "found": found,
            }),
        };
        v["kind"] = json!(self.kind());
        v
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Missing {
                partition,
                offset,
                event_id,
            } => write!(
                f,
                "missing     partition {partition} offset {offset}: event {event_id} is not in the file"
            ),
            Finding::Extra { line, event_id } => write!(
                f,
                "extra       line {line}: event {event_id} is not in the topic"
            ),
            Finding::Unreadable { line, reason } => write!(f, "unreadable  line {line}: {reason}"),
            Finding::Duplicate {
                line,
                first_line,
                event_id,
            } => write!(
                f,
                "duplicate   line {line}: event {event_id} again (first on line {first_line})"
            ),
            Finding::OutOfOrder {
                line,
                event_id,
                aggregate,
                sequence,
                after_sequence,
            } => write!(
                f,
                "out-of-order line {line}: event {event_id} ({aggregate} #{sequence}) after #{after_sequence}"
            ),
            Finding::Differs {
                line,
                event_id,
                field,
                expected,
                found,
            } => write!(
                f,
                "differs     line {line}: event {event_id}: {field} is {found}, the journal says {expected}"
            ),
        }
    }
}

/// What a reconciliation found.
#[derive(Debug, Default)]
pub struct Report {
    /// Messages the topic holds.
    pub expected: u64,
    /// Lines read from the file (blank lines skipped).
    pub lines: u64,
    /// Lines matched to a message of the topic, once each.
    pub matched: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
    fn count(&self, kind: &str) -> usize {
        self.findings.iter().filter(|f| f.kind() == kind).count()
    }
}

/// The event id a consumed line names.
fn event_id_of(line: &Value) -> Option<Uuid> {
    let from_header = line
        .get("headers")
        .and_then(|h| h.get("event_id"))
        .and_then(Value::as_str);
    let value = value_of(line);
    let from_value = value.as_ref().and_then(|v| {
        v.get("eventId")
            .or_else(|| v.get("event_id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    from_header
        .map(str::to_owned)
        .or(from_value)
        .and_then(|s| Uuid::parse_str(&s).ok())
}

/// The line's value as JSON: an object as is, or a string holding JSON (a raw dump).
fn value_of(line: &Value) -> Option<Value> {
    match line.get("value")? {
        Value::String(s) => serde_json::from_str(s).ok(),
        other => Some(other.clone()),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Compares the consumed `lines` with the topic's `messages` (every partition, any order).
pub fn reconcile(
    messages: impl IntoIterator<Item = Message>,
    lines: impl BufRead,
) -> Result<Report, std::io::Error> {
    let mut report = Report::default();
    let mut expected: HashMap<Uuid, Message> = HashMap::new();
    for m in messages {
        report.expected += 1;
        expected.insert(m.event_id, m);
    }
    // event id -> the line it was first seen on
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    // aggregate (type, id) -> last sequence seen
    let mut last_sequence: HashMap<(String, String), u64> = HashMap::new();
    for (index, line) in lines.lines().enumerate() {
        let line_no = index + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        let parsed: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                report.findings.push(Finding::Unreadable {
                    line: line_no,
                    reason: format!("not JSON: {e}"),
                });
                continue;
            }
        };
        let Some(event_id) = event_id_of(&parsed) else {
            report.findings.push(Finding::Unreadable {
                line: line_no,
                reason: "names no event id (no `event_id` header, no `eventId` in the value)"
                    .into(),
            });
            continue;
        };
        if let Some(first_line) = seen.get(&event_id) {
            report.findings.push(Finding::Duplicate {
                line: line_no,
                first_line: *first_line,
                event_id,
            });
            continue;
        }
        seen.insert(event_id, line_no);
        let Some(message) = expected.get(&event_id) else {
            report.findings.push(Finding::Extra {
                line: line_no,
                event_id,
            });
            continue;
        };
        report.matched += 1;
        let mut differs = |field: &str, expected: String, found: String| {
            if expected != found {
                report.findings.push(Finding::Differs {
                    line: line_no,
                    event_id,
                    field: field.to_owned(),
                    expected,
                    found,
                });
            }
        };
        if let Some(p) = parsed.get("partition") {
            differs("partition", message.partition.to_string(), text(p));
        }
        if let Some(k) = parsed.get("key") {
            differs("key", message.key().to_owned(), text(k));
        }
        if let Some(Value::Object(headers)) = parsed.get("headers") {
            for (name, value) in message.headers() {
                if let Some(found) = headers.get(name) {
                    let expected = value
                        .map(|v| Value::String(v.to_owned()))
                        .unwrap_or(Value::Null);
                    differs(&format!("header {name}"), text(&expected), text(found));
                }
            }
        }
        match value_of(&parsed) {
            Some(value) => {
                let journal = message.value_json();
                if value != journal {
                    differs("value", journal.to_string(), value.to_string());
                }
            }
            None => differs("value", "a JSON envelope".into(), "no JSON value".into()),
        }
        let aggregate = (
            message.aggregate_type().to_owned(),
            message.key().to_owned(),
        );
        let last = last_sequence.entry(aggregate).or_default();
        if message.sequence < *last {
            report.findings.push(Finding::OutOfOrder {
                line: line_no,
                event_id,
                aggregate: format!("{}/{}", message.aggregate_type(), message.key()),
                sequence: message.sequence,
                after_sequence: *last,
            });
        } else {
            *last = message.sequence;
        }
    }
    let mut missing: Vec<&Message> = expected
        .values()
        .filter(|m| !seen.contains_key(&m.event_id))
        .collect();
    missing.sort_by_key(|m| (m.partition, m.offset));
    report
        .findings
        .extend(missing.into_iter().map(|m| Finding::Missing {
            partition: m.partition,
            offset: m.offset,
            event_id: m.event_id,
        }));
    Ok(report)
}

/// Every message of `topic` in the store's embedded log.
fn topic_messages(
    log: &TopicLog,
    topic: &str,
) -> Result<Vec<Message>, evershard_engine::TopicError> {
    let info = log.topic(topic)?;
    let mut all = Vec::with_capacity(info.messages() as usize);
    for (partition, end) in info.end_offsets.iter().enumerate() {
        let mut from = 0;
        while from < *end {
            let batch = log.read(topic, partition as u32, from, 10_000)?;
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            all.extend(batch);
        }
    }
    Ok(all)
}

/// `evershard reconcile --data DIR --topic T --messages FILE [--json]`.
pub fn run(reg: &Registry, args: &ReconcileArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let dir = &args.store.data;
    let (_journal, log) = crate::topics::open(reg, dir)?;
    let messages = topic_messages(&log, &args.topic).map_err(|e| CliError::topic(dir, e))?;
    let report = match (&args.messages, &args.brokers) {
        (Some(path), _) => {
            let unreadable = |e: std::io::Error| {
                CliError::InvalidArgument(format!("cannot read {}: {e}", path.display()))
            };
            let file = std::fs::File::open(path).map_err(unreadable)?;
            reconcile(messages, std::io::BufReader::new(file)).map_err(unreadable)?
        }
        (None, Some(brokers)) => {
            let lines = read_from_kafka(
                brokers,
                &args.topic,
                std::time::Duration::from_secs(args.broker_timeout_s),
            )?;
            reconcile(messages, std::io::Cursor::new(lines)).map_err(CliError::Output)?
        }
        (None, None) => {
            return Err(CliError::InvalidArgument(
                "give --messages FILE or --brokers HOST:PORT".into(),
            ))
        }
    };
    print(&report, &args.topic, args.json, out)
}

fn print(
    report: &Report,
    topic: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let kinds = [
        "missing",
        "extra",
        "differs",
        "duplicate",
        "out_of_order",
        "unreadable",
    ];
    if json {
        let counts: serde_json::Map<String, Value> = kinds
            .iter()
            .map(|k| (k.to_string(), json!(report.count(k))))
            .collect();
        json_line(
            out,
            &json!({
                "topic": topic,
                "clean": report.is_clean(),
                "topic_messages": report.expected,
                "lines": report.lines,
                "matched": report.matched,
                "counts": counts,
                "findings": report.findings.iter().take(FINDINGS_SHOWN_MAX).map(Finding::to_json).collect::<Vec<_>>(),
                "findings_total": report.findings.len(),
            }),
        )?;
    } else {
        writeln!(
            out,
            "topic {topic}: {} messages in the journal, {} lines in the file, {} matched",
            report.expected, report.lines, report.matched
        )?;
        for finding in report.findings.iter().take(FINDINGS_SHOWN_MAX) {
            writeln!(out, "{finding}")?;
        }
        if report.findings.len() > FINDINGS_SHOWN_MAX {
            writeln!(
                out,
                "… and {} more findings",
                report.findings.len() - FINDINGS_SHOWN_MAX
            )?;
        }
        if report.is_clean() {
            writeln!(
                out,
                "reconciled: every message of the topic, once, unchanged"
            )?;
        } else {
            let summary: Vec<String> = kinds
                .iter()
                .filter(|k| report.count(k) > 0)
                .map(|k| format!("{} {}", report.count(k), k.replace('_', "-")))
                .collect();
            writeln!(out, "NOT reconciled: {}", summary.join(", "))?;
        }
    }
    out.flush()?;
    Ok(if report.is_clean() {
        Outcome::Clean
    } else {
        Outcome::ProblemsFound
    })
}

/// Every message of `topic` on the brokers, as JSON lines in `consume --json`'s shape.
#[cfg(feature = "kafka")]
fn read_from_kafka(
    brokers: &str,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, CliError> {
    use evershard_engine::rdkafka::consumer::{BaseConsumer, Consumer};
    use evershard_engine::rdkafka::message::{Headers, Message as _};
    use evershard_engine::rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let kafka = |e: evershard_engine::rdkafka::error::KafkaError| {
        CliError::InvalidArgument(format!("reading {topic} from {brokers}: {e}"))
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "evershard-reconcile")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(kafka)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            CliError::InvalidArgument(format!("no topic {topic} on the brokers {brokers}"))
        })?;
    // (partition, next offset to read, end offset)
    let mut todo = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka)?;
        if high > low {
            todo.push((p, low, high));
            assignment
                .add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(kafka)?;
        }
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + timeout;
    while todo.iter().any(|(_, next, high)| next < high) {
        if std::time::Instant::now() > deadline {
            return Err(CliError::InvalidArgument(format!(
                "reading {topic} from {brokers}: the end offsets were not reached within {} s",
                timeout.as_secs()
            )));
        }
        let Some(message) = consumer.poll(std::time::Duration::from_millis(100)) else {
            continue;
        };
        let m = message.map_err(kafka)?;
        let Some(slot) = todo.iter_mut().find(|(p, _, _)| *p == m.partition()) else {
            continue;
        };
        if m.offset() < slot.1 {
            continue;
        }
        slot.1 = m.offset() + 1;
        let headers: serde_json::Map<String, Value> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = h
                            .value
                            .map(|v| Value::String(String::from_utf8_lossy(v).into_owned()))
                            .unwrap_or(Value::Null);
                        (h.key.to_owned(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = json!({
            "topic": topic,
            "partition": m.partition(),
            "offset": m.offset(),
            "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "headers": headers,
            "value": m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
        });
        serde_json::to_writer(&mut out, &line).map_err(|source| CliError::Json {
            what: "a Kafka message".into(),
            source,
        })?;
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(not(feature = "kafka"))]
fn read_from_kafka(
    _brokers: &str,
    _topic: &str,
    _timeout: std::time::Duration,
) -> Result<Vec<u8>, CliError> {
    Err(CliError::InvalidArgument(
        "--brokers needs a build with the `kafka` feature (cargo build --features kafka)".into(),
    ))
}
