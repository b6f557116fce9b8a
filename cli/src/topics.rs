//! `topics` and `consume`: the embedded topic log, read-only.
//!
//! Both open the store with `Journal::open_read_only` and build a [`TopicLog::read_only`]
//! view: what the engine's indexer wrote, plus the events after its cursor routed in memory
//! by the same planner (nothing is written), so that every committed event is shown at the
//! offset the indexer gives it. Routing and rendering are per aggregate type, through the
//! registry's generic dispatch ([`catalog`]); routes configured in a service's own engine
//! builder are not known here: the tail is routed by the types' default topics.

use crate::error::CliError;
use crate::registry::Registry;
use crate::{store, ConsumeArgs, Outcome, TopicsArgs};
use evershard_engine::topic::all_lags;
use evershard_engine::{Message, TopicError, TopicLog, DLQ_TOPIC};
use serde_json::json;
use std::io::Write;

/// Every stock type with its routing and rendering (the stock binary's topic catalog).
pub fn catalog() -> evershard_engine::TopicCatalog {
    Registry::with_defaults().topic_catalog()
}

pub(crate) fn open(
    reg: &Registry,
    dir: &std::path::Path,
) -> Result<(evershard_engine::Journal, TopicLog), CliError> {
    let journal = store::open_read_only(dir)?;
    let log =
        TopicLog::read_only(&journal, reg.topic_catalog()).map_err(|e| CliError::topic(dir, e))?;
    Ok((journal, log))
}

pub fn topics(reg: &Registry, args: &TopicsArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let dir = &args.store.data;
    let (journal, log) = open(reg, dir)?;
    let err = |e| CliError::topic(dir, e);
    let topics = log.topics().map_err(err)?;
    let lags = all_lags(&log).map_err(err)?;
    let cursor = log.cursor().map_err(err)?;
    let last = journal.durable_position();
    let publishers = evershard_engine::publisher_cursors(&log).map_err(err)?;
    let dead_letters = topics
        .iter()
        .find(|t| t.name == DLQ_TOPIC)
        .map_or(0, |t| t.messages());
    if args.json {
        let value = json!({
            "indexer": {"cursor": cursor, "last_position": last, "not_indexed": last.saturating_sub(cursor)},
            "dead_letters": dead_letters,
            "topics": topics.iter().map(|t| json!({
                "name": t.name, "partitions": t.partitions, "format": t.format.name(),
                "end_offsets": t.end_offsets, "messages": t.messages(),
            })).collect::<Vec<_>>(),
            "groups": lags.iter().map(|g| json!({
                "group": g.group, "lag": g.total(),
                "partitions": g.partitions.iter().map(|p| json!({
                    "topic": p.topic, "partition": p.partition, "committed": p.committed,
                    "end": p.end, "lag": p.lag,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "publishers": publishers.iter().map(|c| json!({
                "publisher": c.publisher, "topic": c.topic, "partition": c.partition,
                "published": c.next_offset, "last_global_position": c.last_global_position,
                "end": c.end, "lag": c.lag,
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{value}")?;
        return Ok(Outcome::Clean);
    }
    writeln!(
        out,
        "indexer cursor: global position {cursor} of {last} ({} not yet indexed; shown at the offsets the indexer will give them)",
        last.saturating_sub(cursor)
    )?;
    writeln!(out, "dead letters: {dead_letters}")?;
    for t in &topics {
        writeln!(
            out,
            "topic {}  partitions {}  format {}  messages {}",
            t.name,
            t.partitions,
            t.format.name(),
            t.messages()
        )?;
        let ends: Vec<String> = t.end_offsets.iter().map(u64::to_string).collect();
        writeln!(out, "  end offsets: {}", ends.join(" "))?;
    }
    for g in &lags {
        writeln!(out, "group {}  lag {}", g.group, g.total())?;
        for p in &g.partitions {
            writeln!(
                out,
                "  {}[{}] committed {} end {} lag {}",
                p.topic, p.partition, p.committed, p.end, p.lag
            )?;
        }
    }
    let mut names: Vec<&str> = publishers.iter().map(|c| c.publisher.as_str()).collect();
    names.dedup();
    for name in names {
        let mine: Vec<_> = publishers.iter().filter(|c| c.publisher == name).collect();
        let lag: u64 = mine.iter().map(|c| c.lag).sum();
        writeln!(
            out,
            "publisher {name}  lag {lag} (as of its last stored cursor)"
        )?;
        for c in mine {
            writeln!(
                out,
                "  {}[{}] published {} end {} lag {}",
                c.topic, c.partition, c.next_offset, c.end, c.lag
            )?;
        }
    }
    Ok(Outcome::Clean)
}

pub fn consume(
    reg: &Registry,
    args: &ConsumeArgs,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let dir = &args.store.data;
    let (_journal, log) = open(reg, dir)?;
    let err = |e| CliError::topic(dir, e);
    let info = log.topic(&args.topic).map_err(err)?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= info.partitions => {
            return Err(err(TopicError::UnknownPartition {
                topic: args.topic.clone(),
                partition: p,
            }))
        }
        Some(p) => vec![p],
        None => (0..info.partitions).collect(),
    };
    let mut left = args.limit.unwrap_or(u64::MAX);
    for p in partitions {
        let mut offset = match (&args.at, args.offset) {
            (Some(at), _) => log
                .offset_for_time(&args.topic, p, at.with_timezone(&chrono::Utc))
                .map_err(err)?,
            (None, Some(o)) => o,
            (None, None) => 0,
        };
        while left > 0 {
            let batch = log
                .read(&args.topic, p, offset, left.min(4096) as usize)
                .map_err(err)?;
            let Some(last) = batch.last() else { break };
            offset = last.offset + 1;
            for m in &batch {
                print_message(m, args.json, out)?;
            }
            left -= batch.len() as u64;
        }
    }
    Ok(Outcome::Clean)
}

fn print_message(m: &Message, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    if json {
        writeln!(out, "{}", m.to_json())?;
        return Ok(());
    }
    let headers: Vec<String> = m
        .headers()
        .map(|(k, v)| format!("{k}={}", v.unwrap_or("null")))
        .collect();
    writeln!(
        out,
        "{}[{}]@{} key={} headers: {}\n  {}",
        m.topic(),
        m.partition,
        m.offset,
        m.key(),
        headers.join(" "),
        String::from_utf8_lossy(m.value())
    )?;
    Ok(())
}
