//! Test tooling that more than one test crate needs, kept in one place so that the disk-full
//! and crash tests of the engine and of the `evershard` binary run the same harness.
//!
//! - [`tmpfs::SmallFs`]: a real, small filesystem that fills up (ENOSPC), for disk-full tests.
//! - [`child`]: a test binary re-run as a child process that a parent kills with SIGKILL,
//!   and the printed seed of a randomised crash test.

pub mod child;
pub mod tmpfs;
