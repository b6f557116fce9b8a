//! The stock `evershard` binary: the auditors' CLI with the seven aggregate types of
//! `evershard-aggregates`. A service with its own types builds its own binary the same way,
//! adding `.register::<TheirType>()` (see examples/booking_auditor.rs).

// glibc's malloc costs about a fifth of a command's CPU; see README, "Performance".
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    evershard_cli::Cli::new().register_defaults().run()
}
