//! The process entry of an `evershard` binary: argument parsing, logging, output and exit
//! codes. Everything else is in the library.

use crate::registry::Registry;
use crate::{run_with, CliError, CommandLine, Outcome};
use clap::Parser;
use evershard_engine::model::Aggregate;
use std::io::{BufWriter, ErrorKind, IsTerminal, Write};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// An `evershard` command line for a set of aggregate types: the stock binary is
/// `Cli::new().register_defaults().run()`; a service's own auditor binary adds its types:
///
/// ```no_run
/// # use evershard_engine::model::Aggregate;
/// # fn with<Booking: Aggregate>() -> std::process::ExitCode {
/// evershard_cli::Cli::new().register_defaults().register::<Booking>().run()
/// # }
/// ```
///
/// Every command works for the registered types; a stream of a type the binary does not know
/// is reported as unknown (a note, never damage) and `verify` still checks its records, chains
/// and the Merkle tree. (`demo` always runs the stock types' generated workloads.)
#[derive(Clone, Debug, Default)]
pub struct Cli {
    registry: Registry,
}

impl Cli {
    /// A command line that knows no aggregate type yet.
    pub fn new() -> Cli {
        Cli::default()
    }

    /// Adds the seven stock types of `evershard-aggregates`.
    pub fn register_defaults(mut self) -> Cli {
        self.registry = self.registry.register_defaults();
        self
    }

    /// Adds one aggregate type (replacing a registered one of the same `A::TYPE`).
    pub fn register<A: Aggregate>(mut self) -> Cli {
        self.registry = self.registry.register::<A>();
        self
    }

    /// The types registered so far.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs one command given as `args` (the first is the program name), writing its report
    /// to `out`: for tests and for programs that embed the CLI.
    pub fn run_from<I, T>(&self, args: I, out: &mut dyn Write) -> Result<Outcome, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = CommandLine::try_parse_from(args)
            .map_err(|e| CliError::InvalidArgument(e.to_string()))?;
        run_with(&self.registry, &command, out)
    }

    /// Runs the command of the process's arguments and returns its exit code: what a binary's
    /// `main` returns.
    pub fn run(self) -> ExitCode {
        run_process(&self.registry)
    }
}

/// Runs the stock binary (the seven stock types) on the process's arguments and returns its
/// exit code.
pub fn main() -> ExitCode {
    Cli::new().register_defaults().run()
}

fn run_process(registry: &Registry) -> ExitCode {
    let cli = CommandLine::parse();
    // Warnings and errors of the engine go to stderr; RUST_LOG overrides. sled's own log
    // lines are off by default: every sled error reaches evershard as a `Result` and is
    // reported there in one line, while sled logs the same failure again with Rust debug
    // dumps (`Io(Custom { kind: StorageFull, .. })`); `RUST_LOG=warn,sled=warn` shows them.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,sled=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in logs captured to a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = run_with(registry, &cli, &mut out);
    let flushed = out.flush();
    match (result, flushed) {
        // A closed pipe (`evershard history .. | head`) is not an error.
        (Err(CliError::Output(e)), _) | (Ok(_), Err(e)) if e.kind() == ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        (Ok(outcome), Ok(())) => ExitCode::from(outcome.exit_code()),
        (Ok(_), Err(e)) => {
            eprintln!("evershard: could not write the output: {e}");
            ExitCode::from(1)
        }
        (Err(e), _) => {
            eprintln!("evershard: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
