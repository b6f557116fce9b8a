//! The cluster tests' and benchmark's helpers: `evershard-node` processes and the
//! length-prefixed JSON protocol of the example service.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Node {
    pub name: String,
    pub addr: String,
    pub data: PathBuf,
    pub child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `evershard-node` (`bin`) as cluster "test" member `name`, its store and log in
/// `dir`; waits (at most 120 s) for its address.
pub fn start_node(
    bin: &str,
    broker: &str,
    dir: &std::path::Path,
    name: &str,
    partitions: u32,
    session_timeout_ms: u64,
    extra: &[&str],
) -> Node {
    let data = dir.join(name);
    // Appended to: a node restarted on the same directory keeps its earlier log.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let mut child = Command::new(bin)
        .args(["--data", data.to_str().unwrap(), "--brokers", broker])
        .args([
            "--cluster",
            "test",
            "--node",
            name,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--partitions", &partitions.to_string()])
        .args(["--session-timeout-ms", &session_timeout_ms.to_string()])
        .args([
            "--heartbeat-interval-ms",
            "500",
            "--reclaim-after-ms",
            "3000",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start evershard-node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{name} did not print its address within 120 s"));
    let addr = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("{name} printed {line:?}"))
        .to_owned();
    Node {
        name: name.to_owned(),
        addr,
        data,
        child,
    }
}

pub fn call(addr: &str, request: &Value) -> std::io::Result<Value> {
    let mut conn = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(90)))?;
    let bytes = serde_json::to_vec(request).unwrap();
    conn.write_all(&(bytes.len() as u32).to_be_bytes())?;
    conn.write_all(&bytes)?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut buf)?;
    Ok(serde_json::from_slice(&buf).unwrap())
}

pub fn serving(addr: &str) -> Option<Vec<u32>> {
    let s = call(addr, &json!({"op": "status"})).ok()?;
    Some(
        s["serving"]
            .as_array()?
            .iter()
            .map(|p| p[0].as_u64().unwrap() as u32)
            .collect(),
    )
}

/// Waits until the nodes serve every partition exactly once between them (and, with
/// `each`, every node at least one); returns what each serves.
pub fn wait_served(
    nodes: &[(&str, &str)],
    partitions: u32,
    each: bool,
    timeout: Duration,
) -> BTreeMap<String, Vec<u32>> {
    let deadline = Instant::now() + timeout;
    let mut last = BTreeMap::new();
    while Instant::now() < deadline {
        last = nodes
            .iter()
            .map(|(name, addr)| (name.to_string(), serving(addr).unwrap_or_default()))
            .collect();
        let all: Vec<u32> = last.values().flatten().copied().collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        if all.len() == partitions as usize
            && distinct.len() == partitions as usize
            && (!each || last.values().all(|v| !v.is_empty()))
        {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("partitions not served within {timeout:?}: {last:?}");
}

/// A small deterministic generator (xorshift64*), so a seed replays the clients' choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}
