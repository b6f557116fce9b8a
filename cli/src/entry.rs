//! The process entry of an `evershard` binary: argument parsing, logging, output and exit
//! codes. Everything else is in the library.

use crate::{run, Cli, CliError};
use clap::Parser;
use std::io::{BufWriter, ErrorKind, IsTerminal, Write};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Runs the CLI on the process's arguments and returns its exit code: what a binary's `main`
/// calls.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let result = run(&cli, &mut out);
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
