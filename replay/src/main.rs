//! `evershard`: the auditors' CLI. Parsing and exit codes only; see the library.

use clap::Parser;
use evershard_replay::{run, Cli, CliError};
use std::io::{BufWriter, ErrorKind, Write};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Warnings and errors of the engine go to stderr; RUST_LOG overrides.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
