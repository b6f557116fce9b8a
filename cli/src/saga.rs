//! `evershard saga ORDER_ID --data DIR [--json]`: the order saga of one order, read only —
//! its steps (the saga's events and what caused each), the commands each step sent (step
//! name, idempotency key, target), the target's events that answered each command (found by
//! their causation id: the saga event's id) or the rejection the saga recorded, and the timer
//! it holds.

use crate::error::CliError;
use crate::store::open_read_only;
use crate::{Outcome, SagaArgs};
use chrono::SecondsFormat;
use evershard_aggregates::order::Order;
use evershard_aggregates::order_saga::{Cause, OrderSaga, OrderSagaEvent, SagaCommand};
use evershard_aggregates::payment::Payment;
use evershard_aggregates::product_stock::ProductStock;
use evershard_engine::model::{step_key, Aggregate, DomainEvent, EventEnvelope, Saga};
use evershard_engine::{repository, Journal, StreamId};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use uuid::Uuid;

/// A target event that answered a saga step.
struct Answer {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: u64,
    event_type: String,
}

/// The answers in one target stream, by the saga event (causation id) that caused them.
fn answers_of<A: Aggregate>(
    journal: &Journal,
    aggregate_id: &str,
    by_cause: &mut BTreeMap<Uuid, Vec<Answer>>,
) -> Result<(), CliError> {
    let stream = StreamId::new(A::TYPE, aggregate_id);
    for envelope in repository::read_events::<A>(journal, &stream, 1, u64::MAX) {
        let envelope = envelope.map_err(|e| CliError::storage(journal.dir(), e))?;
        if let Some(cause) = envelope.causation_id {
            by_cause.entry(cause).or_default().push(Answer {
                aggregate_type: A::TYPE,
                aggregate_id: envelope.aggregate_id,
                sequence: envelope.sequence,
                event_type: envelope.event_type,
            });
        }
    }
    Ok(())
}

fn target_of(command: &SagaCommand) -> (&'static str, String) {
    match command {
        SagaCommand::Stock { product_id, .. } => (ProductStock::TYPE, product_id.clone()),
        SagaCommand::Order { order_id, .. } => (Order::TYPE, order_id.to_string()),
        SagaCommand::Payment { payment_id, .. } => (Payment::TYPE, payment_id.to_string()),
    }
}

fn command_name(command: &SagaCommand) -> String {
    // The variant name of the target's command enum, e.g. `Reserve`, `RecordStockReserved`.
    let debug = match command {
        SagaCommand::Stock { command, .. } => format!("{command:?}"),
        SagaCommand::Order { command, .. } => format!("{command:?}"),
        SagaCommand::Payment { command, .. } => format!("{command:?}"),
    };
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn step_json(
    saga_id: &str,
    envelope: &EventEnvelope<OrderSagaEvent>,
    answers: &BTreeMap<Uuid, Vec<Answer>>,
    rejections: &BTreeMap<String, String>,
) -> Value {
    let sends: Vec<Value> = OrderSaga::outbox(&envelope.payload)
        .into_iter()
        .map(|send| {
            let (target_type, target_id) = target_of(&send.command);
            let answered: Vec<Value> = answers
                .get(&envelope.event_id)
                .into_iter()
                .flatten()
                .filter(|a| a.aggregate_type == target_type && a.aggregate_id == target_id)
                .map(|a| {
                    json!({
                        "aggregate_type": a.aggregate_type,
                        "aggregate_id": a.aggregate_id,
                        "sequence": a.sequence,
                        "event_type": a.event_type,
                    })
                })
                .collect();
            json!({
                "step": send.step,
                "idempotency_key": step_key(OrderSaga::TYPE, saga_id, &send.step).to_string(),
                "target_type": target_type,
                "target_id": target_id,
                "command": command_name(&send.command),
                "answered_by": answered,
                "rejected": rejections.get(&send.step),
            })
        })
        .collect();
    json!({
        "sequence": envelope.sequence,
        "timestamp": envelope.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true),
        "event_type": envelope.event_type,
        "cause": envelope.payload.cause().map(ToString::to_string),
        "payload": envelope.payload.payload_json(),
        "sends": sends,
    })
}

/// Runs `evershard saga`; see the module docs.
pub fn saga(args: &SagaArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    let order_id = Uuid::parse_str(&args.order_id).map_err(|_| {
        CliError::InvalidArgument(format!(
            "ORDER_ID must be the order's UUID, got {:?}",
            args.order_id
        ))
    })?;
    let saga_id = order_id.to_string();
    let journal = open_read_only(&args.store.data)?;
    let stream = StreamId::new(OrderSaga::TYPE, saga_id.clone());
    let head = journal
        .head(&stream)
        .map_err(|e| CliError::storage(&args.store.data, e))?
        .sequence;
    if head == 0 {
        return Err(CliError::NoSuchAggregate {
            aggregate_type: OrderSaga::TYPE.to_owned(),
            aggregate_id: saga_id,
            dir: args.store.data.clone(),
        });
    }
    let loaded = repository::load::<OrderSaga>(&journal, &stream, u64::MAX, true)
        .map_err(|e| CliError::load(&args.store.data, e))?;
    let events: Vec<EventEnvelope<OrderSagaEvent>> =
        repository::read_events::<OrderSaga>(&journal, &stream, 1, u64::MAX)
            .collect::<Result<_, _>>()
            .map_err(|e| CliError::storage(&args.store.data, e))?;

    // The targets the saga sent to, read once each.
    let mut targets = BTreeMap::new();
    for event in &events {
        for send in OrderSaga::outbox(&event.payload) {
            let (t, id) = target_of(&send.command);
            targets.insert((t, id), ());
        }
    }
    let mut answers = BTreeMap::new();
    for (target_type, id) in targets.keys() {
        match *target_type {
            t if t == ProductStock::TYPE => answers_of::<ProductStock>(&journal, id, &mut answers)?,
            t if t == Order::TYPE => answers_of::<Order>(&journal, id, &mut answers)?,
            _ => answers_of::<Payment>(&journal, id, &mut answers)?,
        }
    }
    let rejections: BTreeMap<String, String> = events
        .iter()
        .filter_map(|e| match e.payload.cause() {
            Some(Cause::Rejection { step, error, .. }) => Some((step.clone(), error.clone())),
            _ => None,
        })
        .collect();
    let steps: Vec<Value> = events
        .iter()
        .map(|e| step_json(&saga_id, e, &answers, &rejections))
        .collect();
    let timer = journal
        .timer(&stream)
        .map_err(|e| CliError::storage(&args.store.data, e))?;
    let state = loaded.state.saga.as_ref();
    let report = json!({
        "order_id": saga_id,
        "version": loaded.version,
        "outcome": state.and_then(|s| s.outcome).map(|o| o.to_string()),
        "deadline": state.map(|s| s.deadline.to_rfc3339_opts(SecondsFormat::Micros, true)),
        "timer": timer.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        "state": serde_json::to_value(&loaded.state).unwrap_or(Value::Null),
        "steps": steps,
    });
    if args.json {
        writeln!(out, "{report}")?;
    } else {
        write_text(out, &report)?;
    }
    out.flush()?;
    Ok(Outcome::Clean)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn write_text(out: &mut dyn Write, report: &Value) -> Result<(), CliError> {
    writeln!(
        out,
        "saga {}  outcome {}  deadline {}  timer {}",
        text(&report["order_id"]),
        text(&report["outcome"]),
        text(&report["deadline"]),
        text(&report["timer"])
    )?;
    let saga = &report["state"]["saga"];
    if let Some(lines) = saga["lines"].as_array() {
        for line in lines {
            writeln!(
                out,
                "  line {} x{}: {}",
                text(&line["product_id"]),
                text(&line["quantity"]),
                text(&line["status"])
            )?;
        }
    }
    writeln!(out, "  payment {}", saga["payment"])?;
    for step in report["steps"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "#{} {} {}  <- {}",
            text(&step["sequence"]),
            text(&step["timestamp"]),
            text(&step["event_type"]),
            text(&step["cause"])
        )?;
        for send in step["sends"].as_array().into_iter().flatten() {
            let answered: Vec<String> = send["answered_by"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| format!("{}#{}", text(&a["event_type"]), text(&a["sequence"])))
                .collect();
            let outcome = match (&send["rejected"], answered.is_empty()) {
                (Value::String(e), _) => format!("rejected: {e}"),
                (_, true) => "no events (a repeat, or not yet sent)".to_owned(),
                (_, false) => answered.join(", "),
            };
            writeln!(
                out,
                "    -> {} {} {} [{}]  key {}  => {}",
                text(&send["step"]),
                text(&send["target_type"]),
                text(&send["target_id"]),
                text(&send["command"]),
                text(&send["idempotency_key"]),
                outcome
            )?;
        }
    }
    Ok(())
}
