//! `evershard-node`: the example cluster service of docs/scale-out.md. One binary, several
//! instances: each embeds an engine, joins the cluster (feature `kafka`) and takes commands
//! over TCP as length-prefixed JSON (a 4-byte big-endian length, then a JSON object). A
//! command for an aggregate whose partition another node serves is forwarded one hop to that
//! node's endpoint (the latest claim's); a forwarded command is never forwarded again.
//!
//! ```text
//! evershard-node --data DIR --brokers HOST:PORT --cluster NAME --node NAME --listen 127.0.0.1:PORT
//!                [--mode kafka-durable|local] [--replication-lag-max-batches N]
//! ```
//!
//! Requests and answers (every answer has `ok` and `node`, the node that answers):
//! - `{"op":"append","id":"a-1","n":3}`: appends `n` to ledger `a-1`; `n` must be the
//!   ledger's length plus one (a repeat of an applied `n` writes nothing and answers its
//!   sequence). `{"ok":true,"sequence":3,"event_ids":[...],"executed_by":"n2"}`.
//! - `{"op":"stock","id":"p-1","command":{"Reserve":{...}}}`: runs a `ProductStock`
//!   command (its serde form, `evershard_aggregates::product_stock::ProductStockCommand`);
//!   `{"ok":true,"sequence":4,"event_types":["StockReserved"],"event_ids":[...],
//!   "executed_by":"n1"}`. A reservation's expiry is a timer: it fires on whichever node
//!   serves the product's partition when it comes due.
//! - `{"op":"status"}`: the node's cluster status, with `replication_lag` (`Local` mode:
//!   `{"batches":B,"oldest_ms":T}`) and `forked` (partitions refused after a fork).
//! - errors: `{"ok":false,"error":"not_owner"|"rejected"|"conflict"|"unavailable"|...,
//!   "retryable":bool,"message":"...","partition":P,"owner":"n3"}`. `"outcome_unknown"`: a
//!   forwarded command reached its owner and no answer came back (it may have run);
//!   retryable only for `append`, whose repeat cannot apply twice.
//!
//! It prints `listening ADDR` on stdout once it accepts connections. It exits with status 3
//! when its node stops on its own (`Cluster::health().stopped`: a cluster thread failed, or a
//! partition forked), after shutting its engine down, so that a supervisor restarts it (a
//! forked store stops again at once: move its directory aside first).

use clap::Parser;
use evershard_aggregates::product_stock::{ProductStock, ProductStockCommand};
use evershard_engine::model::{Aggregate, DecideContext, DomainEvent};
use evershard_engine::{
    Cluster, ClusterConfig, ClusterMode, CommandError, Durability, Engine, KafkaConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Frames larger than this are refused (a command is a few dozen bytes).
const FRAME_BYTES_MAX: u32 = 1 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "evershard-node",
    about = "An evershard cluster node (example service)"
)]
struct Args {
    /// The node's store directory.
    #[arg(long)]
    data: std::path::PathBuf,
    /// Kafka bootstrap brokers.
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "example")]
    cluster: String,
    /// This node's name, unique in the cluster.
    #[arg(long)]
    node: String,
    /// The address to listen on (also the endpoint other nodes forward to).
    #[arg(long)]
    listen: String,
    #[arg(long, default_value_t = evershard_engine::DEFAULT_CLUSTER_PARTITIONS)]
    partitions: u32,
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u64,
    #[arg(long, default_value_t = 1_000)]
    heartbeat_interval_ms: u64,
    #[arg(long, default_value_t = 5_000)]
    reclaim_after_ms: u64,
    /// The tailer's fetch.wait.max.ms (see `ClusterConfig::fetch_wait_ms`).
    #[arg(long, default_value_t = 10)]
    fetch_wait_ms: u64,
    /// Kafka request timeout, also how long a produced batch may wait for its
    /// acknowledgement.
    #[arg(long, default_value_t = 10_000)]
    kafka_timeout_ms: u64,
    /// Static membership (`group.instance.id` = the node's name; see
    /// `ClusterConfig::static_membership`).
    #[arg(long)]
    static_membership: bool,
    /// Replication factor of the journal topic when this node creates it.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// When a command is acknowledged: `kafka-durable` (on the journal topic first) or
    /// `local` (after the local fdatasync, published after); docs/scale-out.md, "Modes".
    #[arg(long, value_enum, default_value_t = Mode::KafkaDurable)]
    mode: Mode,
    /// `local` mode: acknowledged batches not yet on the journal topic past which commands
    /// are refused (`unavailable`, retryable).
    #[arg(long, default_value_t = evershard_engine::DEFAULT_REPLICATION_LAG_MAX_BATCHES)]
    replication_lag_max_batches: usize,
    /// The node stops serving `session_timeout_ms − lease_margin_ms` after its last answered
    /// request to the group coordinator (`ClusterConfig::lease_margin_ms`).
    #[arg(long, default_value_t = 2_000)]
    lease_margin_ms: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Mode {
    KafkaDurable,
    Local,
}

/// The example's aggregate: a ledger of numbers that must arrive in order, so that any lost,
/// repeated or reordered event shows in the stream (event `n` is at sequence `n`).
#[derive(Debug)]
struct Ledger;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum LedgerCommand {
    Append { n: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum LedgerEvent {
    Appended { n: u64 },
}

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> &'static str {
        "Appended"
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "example.ledger"
    }
    fn payload_json(&self) -> Value {
        let LedgerEvent::Appended { n } = self;
        json!({ "n": n })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LedgerState {
    len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum LedgerError {
    #[error("the ledger holds {len} numbers: {n} is not the next")]
    OutOfOrder { len: u64, n: u64 },
}

impl Aggregate for Ledger {
    const TYPE: &'static str = "Ledger";
    type State = LedgerState;
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = LedgerError;

    fn decide(
        state: &LedgerState,
        command: &LedgerCommand,
        _ctx: &DecideContext,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let LedgerCommand::Append { n } = command;
        if *n == state.len + 1 {
            Ok(vec![LedgerEvent::Appended { n: *n }])
        } else if *n <= state.len {
            Ok(vec![]) // a retry of an applied command (its answer was lost)
        } else {
            Err(LedgerError::OutOfOrder {
                len: state.len,
                n: *n,
            })
        }
    }

    fn apply(state: &mut LedgerState, event: &LedgerEvent) {
        let LedgerEvent::Appended { n } = event;
        state.len = *n;
    }
}

struct Node {
    engine: Engine,
    cluster: Cluster,
    name: String,
    rt: tokio::runtime::Handle,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let listener = TcpListener::bind(&args.listen).expect("bind the listen address");
    let endpoint = listener.local_addr().expect("a bound address").to_string();
    let node = rt.block_on(async {
        let engine = Engine::builder(&args.data)
            .register::<Ledger>()
            .register::<ProductStock>()
            // Nothing is appended before the gate is in place: a restarted node's due timers
            // wait until it knows which partitions it serves.
            .joins_cluster(true)
            // Timers of a partition that moved here fire within this bound (docs/scale-out.md).
            .timer_poll_ms(500)
            .durability(Durability::Durable)
            .topic_indexer(false)
            .source(format!("evershard-node/{}", args.node))
            .open()
            .await
            .expect("open the store");
        let kafka = KafkaConfig::new(&args.brokers)
            .client_id(format!("evershard-node-{}", args.node))
            .replication_factor(args.replication_factor)
            .request_timeout(Duration::from_millis(args.kafka_timeout_ms))
            .connection_timeout(Duration::from_secs(5));
        let config = ClusterConfig::new(kafka, &args.cluster, &args.node, &endpoint)
            .partitions(args.partitions)
            .session_timeout_ms(args.session_timeout_ms)
            .heartbeat_interval_ms(args.heartbeat_interval_ms)
            .reclaim_after_ms(args.reclaim_after_ms)
            .ack_timeout_ms(args.kafka_timeout_ms.max(30_000))
            .fetch_wait_ms(args.fetch_wait_ms)
            .static_membership(args.static_membership)
            .mode(match args.mode {
                Mode::KafkaDurable => ClusterMode::KafkaDurable,
                Mode::Local => ClusterMode::Local,
            })
            .replication_lag_max_batches(args.replication_lag_max_batches)
            .lease_margin_ms(args.lease_margin_ms);
        let cluster = engine.join_cluster(config).await.expect("join the cluster");
        Node {
            engine,
            cluster,
            name: args.node.clone(),
            rt: tokio::runtime::Handle::current(),
        }
    });
    let node = Arc::new(node);
    // A node that stopped on its own serves nothing for good: exit, so that a supervisor
    // notices and restarts it, rather than answer every command with `not_owner`.
    std::thread::spawn({
        let node = node.clone();
        move || loop {
            std::thread::sleep(Duration::from_millis(500));
            if let Some(why) = node.cluster.health().stopped {
                tracing::error!(node = %node.name, "the node stopped: {why}; exiting");
                let _ = node.rt.block_on(node.engine.shutdown());
                std::process::exit(3);
            }
        }
    });
    println!("listening {endpoint}");
    std::io::stdout().flush().ok();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let node = node.clone();
        std::thread::spawn(move || serve(&node, conn));
    }
}

fn serve(node: &Node, mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    while let Ok(request) = read_frame(&mut conn) {
        let answer = match serde_json::from_slice::<Value>(&request) {
            Ok(request) => handle(node, &request),
            Err(e) => json!({"ok": false, "error": "bad_request", "retryable": false,
                             "message": e.to_string()}),
        };
        let mut answer = answer;
        answer["node"] = json!(node.name);
        if write_frame(&mut conn, &serde_json::to_vec(&answer).expect("JSON")).is_err() {
            return;
        }
    }
}

fn handle(node: &Node, request: &Value) -> Value {
    let bad = |message: &str| json!({"ok": false, "error": "bad_request", "retryable": false, "message": message});
    match request["op"].as_str() {
        Some("append") => {
            let (Some(id), Some(n)) = (request["id"].as_str(), request["n"].as_u64()) else {
                return bad("append needs id and n");
            };
            run::<Ledger>(node, request, id, LedgerCommand::Append { n }, |events| {
                // A repeat writes nothing: event n is at sequence n.
                json!({"sequence": events.last().map_or(n, |e| e.sequence)})
            })
        }
        Some("stock") => {
            let Some(id) = request["id"].as_str() else {
                return bad("stock needs id");
            };
            let command: ProductStockCommand =
                match serde_json::from_value(request["command"].clone()) {
                    Ok(c) => c,
                    Err(e) => return bad(&format!("stock command: {e}")),
                };
            run::<ProductStock>(node, request, id, command, |events| {
                json!({"sequence": events.last().map(|e| e.sequence),
                       "event_types": events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>()})
            })
        }
        Some("status") => {
            let s = node.cluster.status();
            json!({"ok": true, "serving": s.serving, "assigned": s.assigned,
                   "takeovers": s.takeovers.iter().map(|t| json!({"partition": t.partition, "epoch": t.epoch, "took_ms": t.took_ms})).collect::<Vec<_>>(),
                   "walked": s.walked, "resumed_from": s.resumed_from,
                   "pending_applies": s.pending_applies,
                   "acknowledged": s.acknowledged, "refused": s.refused, "last_error": s.last_error,
                   "stopped": s.stopped,
                   "replication_lag": {"batches": s.replication_lag.batches, "oldest_ms": s.replication_lag.oldest_ms},
                   "forked": s.forked.iter().map(|f| f.partition).collect::<Vec<_>>()})
        }
        other => bad(&format!("unknown op {other:?}")),
    }
}

/// Runs `command` on aggregate `id` here if this node serves its partition, else forwards
/// the request one hop (unless it was forwarded already). `answer` adds the aggregate's
/// fields to a successful answer.
fn run<A: Aggregate>(
    node: &Node,
    request: &Value,
    id: &str,
    command: A::Command,
    answer: impl FnOnce(&[evershard_engine::model::EventEnvelope<A::Event>]) -> Value,
) -> Value {
    let forwarded = request["forwarded"].as_bool().unwrap_or(false);
    let partition = node.cluster.partition_for(id);
    if !node.cluster.serves(partition) && !forwarded {
        return forward(node, request, partition);
    }
    match node.rt.block_on(node.engine.execute::<A>(id, command)) {
        Ok(events) => {
            let mut ok = answer(&events);
            ok["ok"] = json!(true);
            ok["executed_by"] = json!(node.name);
            ok["event_ids"] = json!(events
                .iter()
                .map(|e| e.event_id.to_string())
                .collect::<Vec<_>>());
            ok
        }
        Err(CommandError::NotOwner { .. }) if !forwarded => forward(node, request, partition),
        Err(e) => error_answer(&e, partition),
    }
}

fn error_answer<E: std::error::Error>(e: &CommandError<E>, partition: u32) -> Value {
    let kind = match e {
        CommandError::NotOwner { .. } => "not_owner",
        CommandError::Rejected(_) => "rejected",
        CommandError::Conflict { .. } => "conflict",
        CommandError::Unavailable { .. } => "unavailable",
        CommandError::Overloaded { .. } => "overloaded",
        CommandError::ShuttingDown => "shutting_down",
        _ => "failed",
    };
    let owner = match e {
        CommandError::NotOwner { owner, .. } => owner.clone(),
        _ => None,
    };
    json!({"ok": false, "error": kind, "retryable": e.is_retryable(), "message": e.to_string(),
           "partition": partition, "owner": owner})
}

/// One hop to the owner this node knows; its answer is relayed as is (with `via`).
fn forward(node: &Node, request: &Value, partition: u32) -> Value {
    let not_owner = |owner: Option<String>, why: String| {
        json!({"ok": false, "error": "not_owner", "retryable": true, "partition": partition,
               "owner": owner, "message": why})
    };
    let Some(owner) = node.cluster.owner(partition) else {
        return not_owner(None, format!("partition {partition} has no owner yet"));
    };
    if owner.node == node.name {
        // The latest claim is this node's, but it does not serve (taking over, or just lost).
        return not_owner(
            Some(owner.node),
            format!("partition {partition} is changing hands"),
        );
    }
    let mut request = request.clone();
    request["forwarded"] = json!(true);
    let send = || -> std::io::Result<TcpStream> {
        let addr: std::net::SocketAddr = owner
            .endpoint
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        conn.set_nodelay(true)?;
        write_frame(&mut conn, &serde_json::to_vec(&request).expect("JSON"))?;
        Ok(conn)
    };
    let where_to = format!("{} at {}", owner.node, owner.endpoint);
    // Not sent whole: the owner cannot have run it (a frame cut short is no request).
    let mut conn = match send() {
        Ok(conn) => conn,
        Err(e) => {
            return not_owner(
                Some(owner.node.clone()),
                format!("forwarding to {where_to}: {e}"),
            )
        }
    };
    let answer = read_frame(&mut conn)
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).map_err(std::io::Error::other));
    match answer {
        Ok(mut answer) => {
            answer["via"] = json!(node.name);
            answer
        }
        // Sent, and no answer: the owner may have run it (found by review: this was a
        // retryable `not_owner`, and a retry ran a command twice). Only a ledger append,
        // which a repeat of its number cannot apply twice, is safe to send again.
        Err(e) => {
            let idempotent = request["op"] == "append";
            json!({"ok": false, "error": "outcome_unknown", "retryable": idempotent,
                   "partition": partition, "owner": owner.node,
                   "message": format!("forwarded to {where_to}, no answer: {e}; it may have run")})
        }
    }
}

fn read_frame(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {FRAME_BYTES_MAX})"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    conn.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_frame(conn: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    conn.write_all(&(bytes.len() as u32).to_be_bytes())?;
    conn.write_all(bytes)?;
    conn.flush()
}
