//! The stock `evershard` binary: the auditors' CLI with the seven aggregate types of
//! `evershard-aggregates`. A service with its own types builds its own binary the same way,
//! adding `.register::<TheirType>()` (see examples/booking_auditor.rs).

fn main() -> std::process::ExitCode {
    evershard_cli::Cli::new().register_defaults().run()
}
