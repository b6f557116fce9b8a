//! The auditors' CLI of evershard, as a library so that tests can call it; `src/main.rs` only
//! parses arguments and maps the outcome to an exit code.
//!
//! - [`registry`]: the aggregate types this build knows, and a generic dispatch over them.
//! - [`demo`]: a generated workload through a real engine, then a restart and a recovery check.
//! - [`inspect`]: `list`, `history`, `state`, `stats`.
//! - [`verify`]: the journal's integrity checks plus replay and snapshot checks per type.
//! - [`export`]: every event in global order as JSON lines, with the records' hash chain.
//! - [`topics`]: `topics` and `consume`, the embedded topic log as it would be published.
//! - [`saga`]: `saga`, one order saga's steps, the commands it sent and what answered them.
//!
//! **Architecture Invariant:** replay never writes. Every command but `demo` opens the store
//! with `Journal::open_read_only`; only `demo` runs an engine.
//!
//! Exit codes: 0 clean; 1 the store or a check of it is bad; 2 the command could not run
//! (missing or locked store, unknown type or aggregate, bad arguments). See [`CliError`].

pub mod audit;
pub mod demo;
pub mod demo_saga;
pub mod demo_topics;
mod diff;
mod entry;
pub mod error;
pub mod export;
pub mod inspect;
pub mod offline;
pub mod reconcile;
pub mod registry;
mod replay;
pub mod saga;
pub mod store;
pub mod topics;
mod trail;
mod tree_check;
pub mod verify;

pub use entry::{main, Cli};
pub use error::CliError;
pub use registry::{known_types, Registry, TypeOp};
pub use replay::check_stream;
pub use verify::{audit, AuditReport, Check, Finding, StreamCheck};

use chrono::{DateTime, FixedOffset};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

/// evershard: inspect, verify and exercise an evershard store.
#[derive(Debug, Parser)]
#[command(name = "evershard", version, long_about = None)]
pub struct CommandLine {
    #[command(subcommand)]
    pub command: Command,
    /// The master key file (`ID HEX64` per line, the last one current) that opens encrypted
    /// payloads for history, state, export and verify's replay. Integrity checks need none.
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a generated workload through an engine, restart it, and check recovery.
    Demo(DemoArgs),
    /// One line per aggregate: type, id, last sequence.
    List(ListArgs),
    /// The events of one aggregate, oldest first.
    History(HistoryArgs),
    /// The state of one aggregate at its head, a sequence or a point in time.
    State(StateArgs),
    /// Counts of events, snapshots, bytes, and aggregates per type.
    Stats(StatsArgs),
    /// Check records, chains, the global index, every replay and every snapshot.
    Verify(VerifyArgs),
    /// Every event in global order as JSON lines, with each record's SHA-256 chain.
    Export(ExportArgs),
    /// Topics, partitions, end offsets, consumer groups with their lag, the indexer's cursor,
    /// the dead-letter count.
    Topics(TopicsArgs),
    /// Print a topic's messages exactly as they are published (reads only; commits nothing).
    Consume(ConsumeArgs),
    /// Make an Ed25519 key pair for signing digests: KEY (secret) and KEY.pub.
    Keygen(KeygenArgs),
    /// The Merkle tree head of the store's global log (size, root hash, time), optionally signed.
    Digest(DigestArgs),
    /// An inclusion proof that one event (its full record) is in the tree of a digest.
    Prove(ProveArgs),
    /// Check a proof against a digest, offline: needs no store.
    CheckProof(CheckProofArgs),
    /// Pending durable timers in deadline order: deadline, type, id.
    Timers(TimersArgs),
    /// The state of every aggregate of a type at a point in time (a time-travel report).
    SnapshotAt(SnapshotAtArgs),
    /// Compare messages a consumer received (JSON lines) with what the journal says a topic
    /// holds: missing, extra, duplicated, reordered or different messages.
    Reconcile(ReconcileArgs),
    /// One order's saga: its steps, the commands each sent (with their idempotency keys),
    /// the events that answered them, and the timer it holds.
    Saga(SagaArgs),
}

/// The store every command works on.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store's directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledge a command after flush + fdatasync.
    Durable,
    /// Acknowledge once applied in memory; sled flushes every 200 ms.
    Buffered,
}

impl std::fmt::Display for DurabilityArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DurabilityArg::Durable => "durable",
            DurabilityArg::Buffered => "buffered",
        })
    }
}

/// Where a new store keeps its events (docs/design.md, "The next write path").
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WritePathArg {
    /// Every record under its own sled key (every store made before the segment log).
    Sled,
    /// Records in an append-only segment log, one frame and one fdatasync per group commit.
    Log,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The store's directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Aggregates per type to start with (one that reaches a final state is followed by a
    /// fresh one). The defaults give the open-ended types over 100 events each, so the run
    /// takes snapshots and the restart recovers from them.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub aggregates: u64,
    /// Commands in all, spread evenly over the aggregates.
    #[arg(long, value_name = "N", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub commands: u64,
    /// Seed of the command generators; the same seed issues the same commands.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Only these aggregate types (repeatable). Default: every registered type.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// When the engine acknowledges a command.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Durable)]
    pub durability: DurabilityArg,
    /// Where a new store keeps its events; an existing store keeps its own. Default: `log`,
    /// or what `EVERSHARD_WRITE_PATH` says.
    #[arg(long, value_enum)]
    pub write_path: Option<WritePathArg>,
    /// Concurrent client tasks; each owns a share of the aggregates. In durable mode the
    /// clients with a command in flight share one flush, so more clients, more throughput.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub clients: u64,
    /// Take a snapshot every N events per aggregate (0: never). Default: the engine's (100).
    #[arg(long, value_name = "N")]
    pub snapshot_every: Option<u64>,
    /// Orders driven through the order saga after the workload and the restart (see
    /// `demo_saga`; 0: none). Default: 200 when the workload drives ProductStock, Order and
    /// Payment (every type, or a `--type` list with the three), none with `--kafka`.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub saga_orders: Option<u64>,
    /// Also publish every topic to this Kafka cluster (`host:port[,host:port...]`, plaintext)
    /// and report the publisher's lag and rate (feature `kafka`).
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only aggregates of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub aggregate_type: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The aggregate type, e.g. ProductStock. Without TYPE and ID: every aggregate, in
    /// global order.
    #[arg(value_name = "TYPE", requires = "aggregate_id")]
    pub aggregate_type: Option<String>,
    /// The aggregate id.
    #[arg(value_name = "ID")]
    pub aggregate_id: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// One JSON object per event and line: the envelope plus `payload`.
    #[arg(long)]
    pub json: bool,
    /// Only events of this aggregate type (without TYPE ID).
    #[arg(long = "type", value_name = "T", conflicts_with = "aggregate_type")]
    pub type_filter: Option<String>,
    /// Only events whose command named this user.
    #[arg(long, value_name = "U")]
    pub user: Option<String>,
    /// Only events with this correlation id (one business flow).
    #[arg(long, value_name = "UUID")]
    pub correlation: Option<uuid::Uuid>,
    /// Only events with this session id.
    #[arg(long, value_name = "UUID")]
    pub session: Option<uuid::Uuid>,
    /// Only events of this event type, e.g. StockReserved.
    #[arg(long, value_name = "E")]
    pub event_type: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub from: Option<DateTime<FixedOffset>>,
    /// Only events at or before this RFC 3339 time.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub to: Option<DateTime<FixedOffset>>,
}

/// How a report prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// One JSON object per line.
    Json,
    /// RFC 4180 CSV with a header line; nested values as JSON text.
    Csv,
}

#[derive(Debug, Args)]
pub struct SnapshotAtArgs {
    /// The point in time, RFC 3339.
    #[arg(value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub at: DateTime<FixedOffset>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The aggregate type, e.g. ProductStock.
    #[arg(long = "type", value_name = "T")]
    pub aggregate_type: String,
    #[arg(long, value_enum, default_value = "json")]
    pub format: ReportFormat,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// The aggregate type, e.g. ProductStock.
    #[arg(value_name = "TYPE")]
    pub aggregate_type: String,
    /// The aggregate id.
    #[arg(value_name = "ID")]
    pub aggregate_id: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The state after the event with this sequence (0: before the first event).
    #[arg(long, value_name = "N", conflicts_with = "at")]
    pub at_seq: Option<u64>,
    /// The state after the last event with a timestamp at or before this RFC 3339 time.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub at: Option<DateTime<FixedOffset>>,
    /// Start from the newest usable snapshot, as recovery does. Default: replay every event
    /// from the first (the journal is the source of truth).
    #[arg(long)]
    pub from_snapshots: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// An earlier digest: check that the store's first N events still hash to its root, and
    /// that a consistency proof from it to the store now holds.
    #[arg(long, value_name = "FILE")]
    pub digest: Option<PathBuf>,
    /// With --digest: the digest must be signed by this public key.
    #[arg(long, value_name = "KEY", requires = "digest")]
    pub pubkey: Option<PathBuf>,
    /// With --digest: write the consistency proof (JSON) to this new file.
    #[arg(long, value_name = "FILE", requires = "digest")]
    pub proof_out: Option<PathBuf>,
    /// Only the streams of this aggregate type (a type this build does not know is checked
    /// too: records, chains and index, without replay).
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "digest")]
    pub aggregate_type: Option<String>,
    /// With --type: only this aggregate.
    #[arg(long, value_name = "ID", requires = "aggregate_type")]
    pub id: Option<String>,
    /// Only the records at global positions from N (default 1).
    #[arg(long, value_name = "N", conflicts_with = "digest")]
    pub from_position: Option<u64>,
    /// Only the records at global positions up to N (default: the last).
    #[arg(long, value_name = "N", conflicts_with = "digest")]
    pub to_position: Option<u64>,
    /// Only the records timestamped at or after this time.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339, conflicts_with = "digest")]
    pub from: Option<DateTime<FixedOffset>>,
    /// Only the records timestamped at or before this time.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339, conflicts_with = "digest")]
    pub to: Option<DateTime<FixedOffset>>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The secret key file to create; the public key goes to the same path with `.pub`.
    #[arg(value_name = "KEY")]
    pub key: PathBuf,
}

#[derive(Debug, Args)]
pub struct DigestArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The tree over the first N events only (default: every event).
    #[arg(long, value_name = "N")]
    pub at_position: Option<u64>,
    /// Sign the digest with this Ed25519 secret key file (see `keygen`).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Print the digest file (JSON) instead of text. Keep it outside the store.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProveArgs {
    /// The aggregate type, exactly as stored.
    #[arg(value_name = "TYPE")]
    pub aggregate_type: String,
    /// The aggregate id.
    #[arg(value_name = "ID")]
    pub aggregate_id: String,
    /// The event's sequence.
    #[arg(value_name = "SEQ")]
    pub sequence: u64,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The digest (from `digest --json`) whose tree the proof is for.
    #[arg(long, value_name = "FILE")]
    pub digest: PathBuf,
    /// Write the proof to this new file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckProofArgs {
    /// The proof file (inclusion or consistency).
    #[arg(value_name = "PROOF")]
    pub proof: PathBuf,
    /// The digest the proof must lead to (for a consistency proof: the earlier one).
    #[arg(long, value_name = "FILE")]
    pub digest: PathBuf,
    /// For a consistency proof: the later digest it must end at.
    #[arg(long, value_name = "FILE")]
    pub to_digest: Option<PathBuf>,
    /// The digest(s) must be signed by this Ed25519 public key file.
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TimersArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only timers due before this RFC 3339 time.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub due_before: Option<DateTime<FixedOffset>>,
    /// One JSON object per timer and line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SagaArgs {
    /// The order id (a UUID): the saga's id.
    #[arg(value_name = "ORDER_ID")]
    pub order_id: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only events of this aggregate type.
    #[arg(long = "type", value_name = "TYPE")]
    pub aggregate_type: Option<String>,
    /// Start at this global position (to continue an earlier export).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub from_position: u64,
}

#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The topic, e.g. business.orders.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// The messages as consumed, one JSON object per line: `evershard consume --json`'s
    /// shape (topic, partition, offset, key, headers, value), or any dump whose lines carry
    /// an `event_id` header or a value with `eventId`/`event_id`; `value` may be an object
    /// or a string holding the JSON.
    #[arg(long, value_name = "FILE", required_unless_present = "brokers")]
    pub messages: Option<PathBuf>,
    /// Read the topic from these Kafka brokers instead of a file (build with `--features
    /// kafka`): every partition from its first message to its end offset, plaintext.
    #[arg(long, value_name = "HOST:PORT,...", conflicts_with = "messages")]
    pub brokers: Option<String>,
    /// With `--brokers`: how long to wait for the broker, in seconds.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub broker_timeout_s: u64,
    /// Print one JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic, e.g. business.orders.
    #[arg(value_name = "TOPIC")]
    pub topic: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this partition. Default: every partition, one after the other.
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
    /// From offset 0 of each partition (the default: this command has no group).
    #[arg(long, conflicts_with_all = ["offset", "at"])]
    pub from_beginning: bool,
    /// From this offset of each partition.
    #[arg(long, value_name = "N", conflicts_with = "at")]
    pub offset: Option<u64>,
    /// From the first message at or after this RFC 3339 time, in each partition.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub at: Option<DateTime<FixedOffset>>,
    /// At most N messages in all.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// One JSON object per message and line: topic, partition, offset, timestamp, key,
    /// headers, value.
    #[arg(long)]
    pub json: bool,
}

fn parse_rfc3339(text: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("{e}; expected RFC 3339, e.g. 2026-01-31T12:00:00Z"))
}

/// How a command that ran to its end came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing wrong found: exit 0.
    Clean,
    /// The command's checks found problems (and printed them): exit 1.
    ProblemsFound,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Clean => 0,
            Outcome::ProblemsFound => 1,
        }
    }
}

/// Runs one command of the stock binary (the seven stock types), writing its report to `out`.
pub fn run(cli: &CommandLine, out: &mut dyn Write) -> Result<Outcome, CliError> {
    run_with(&Registry::with_defaults(), cli, out)
}

/// Runs one command for the types of `registry`, writing its report to `out`.
pub fn run_with(
    registry: &Registry,
    cli: &CommandLine,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    store::install_panic_hook();
    if let Some(path) = &cli.key_file {
        store::use_key_file(path)?;
    }
    match &cli.command {
        Command::Demo(args) => demo::run(args, out),
        Command::List(args) => inspect::list(registry, args, out),
        Command::History(args) => inspect::history(registry, args, out),
        Command::State(args) => inspect::state(registry, args, out),
        Command::Stats(args) => inspect::stats(registry, args, out),
        Command::Verify(args) => verify::run(registry, args, out),
        Command::Export(args) => export::run(registry, args, out),
        Command::Topics(args) => topics::topics(registry, args, out),
        Command::Consume(args) => topics::consume(registry, args, out),
        Command::Reconcile(args) => reconcile::run(registry, args, out),
        Command::SnapshotAt(args) => trail::snapshot_at(registry, args, out),
        Command::Keygen(args) => audit::keygen(args, out),
        Command::Digest(args) => audit::digest(args, out),
        Command::Prove(args) => audit::prove(args, out),
        Command::CheckProof(args) => audit::check_proof(args, out),
        Command::Timers(args) => inspect::timers(args, out),
        Command::Saga(args) => saga::saga(args, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        CommandLine::command().debug_assert();
    }
}
