//! The process's CPU time, for benches that report CPU per operation: on a shared 2-core
//! machine it moves far less from run to run than a wall-clock rate does.

use std::time::Duration;

/// CPU time (user + system, every thread) this process has used so far; zero where
/// `/proc/self/stat` cannot be read (then the CPU figures read 0).
pub fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The fields after the command name's closing parenthesis; utime and stime are
            // the 12th and 13th of them (proc(5)), in clock ticks of 10 ms on Linux.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
