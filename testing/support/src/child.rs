//! The crash tests' harness: the test binary runs one of its own ignored tests as a child
//! process that writes and prints an acknowledgement line per acknowledged command; the parent
//! reads those lines, kills the child with SIGKILL at a random moment, reads the lines the
//! child wrote before the kill landed (they were acknowledged too), and then checks the store.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

/// The seed of a randomised crash test: the variable `env` if set, else `default`. Printed
/// (with how to replay it) so that a failing run can be reproduced.
pub fn seed(env: &str, default: u64, what: &str) -> u64 {
    let seed = std::env::var(env)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("{what} seed {seed} (set {env} to reproduce)");
    seed
}

/// The seed of a randomised test that explores a new seed on every run: the variable `env`
/// if set, else one from the clock. Printed (with how to replay it) so that a failing run can
/// be reproduced.
pub fn seed_or_clock(env: &str, what: &str) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_nanos() as u64;
    seed(env, clock, what)
}

/// The runtime a child writer runs on: two workers, as many as the CI machine has cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// This test binary, run again as a child process that runs only the ignored test `test`.
#[derive(Debug)]
pub struct TestChild {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl TestChild {
    /// Starts the child with the variables `env` set; its stdout is read line by line, its
    /// stderr is dropped.
    pub fn spawn<V: AsRef<OsStr>>(test: &str, env: &[(&str, V)]) -> TestChild {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args([
                "--exact",
                test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the test binary runs as a child");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        TestChild { child, lines }
    }

    /// The child's next line, or `None` once it closed its stdout (ended or died).
    pub fn next_line(&mut self) -> Option<String> {
        self.lines.next().and_then(Result::ok)
    }

    /// Kills the child with SIGKILL, returns every line it wrote before the kill landed, and
    /// reaps it.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL the child");
        let rest: Vec<String> = self.lines.by_ref().map_while(Result::ok).collect();
        self.child.wait().expect("reap the child");
        rest
    }

    /// Waits for a child that ends on its own; returns its remaining lines and whether it
    /// exited successfully.
    pub fn wait(mut self) -> (Vec<String>, bool) {
        let rest: Vec<String> = self.lines.by_ref().map_while(Result::ok).collect();
        let status = self.child.wait().expect("reap the child");
        (rest, status.success())
    }
}
