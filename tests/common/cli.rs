//! Running the `evershard` binary as a real process, as the CLI tests do.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// Runs the binary with `args`.
pub fn evershard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evershard"))
        .args(args)
        .output()
        .expect("the evershard binary runs")
}

/// Runs the binary: (exit code, `None` if killed by a signal; stdout; stderr).
pub fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = evershard(args);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the binary and asserts its exit code and that it did not panic; returns (stdout,
/// stderr).
pub fn expect_exit(args: &[&str], code: i32) -> (String, String) {
    let (status, stdout, stderr) = run(args);
    assert_eq!(
        status,
        Some(code),
        "evershard {args:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "evershard {args:?} panicked:\n{stderr}"
    );
    (stdout, stderr)
}

/// [`expect_exit`], for the tests that look at stdout only.
pub fn expect_stdout(args: &[&str], code: i32) -> String {
    expect_exit(args, code).0
}

/// A path as the binary's argument (the tests' temporary paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// One JSON value per line of `stdout` (the `--json` outputs).
pub fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The arguments of a buffered ProductStock-only `evershard demo` into `dir` with three
/// clients (`extra` appended): the store most CLI tests read.
pub fn product_stock_demo<'a>(
    dir: &'a str,
    aggregates: &'a str,
    commands: &'a str,
    seed: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "demo",
        "--data",
        dir,
        "--type",
        "ProductStock",
        "--aggregates",
        aggregates,
        "--commands",
        commands,
        "--seed",
        seed,
        "--durability",
        "buffered",
        "--clients",
        "3",
    ];
    args.extend_from_slice(extra);
    args
}
