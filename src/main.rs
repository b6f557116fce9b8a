//! The stock `evershard` binary: the auditors' CLI with the seven aggregate types of
//! `evershard-aggregates`. A service with its own types builds its own binary the same way
//! on `evershard_cli`.

fn main() -> std::process::ExitCode {
    evershard_cli::main()
}
