//! A real Kafka-protocol broker for tests: tansu 0.6.0 on 127.0.0.1, a free port, sqlite
//! storage in a fresh temporary directory; and the independent reader (kafka-python 3.0.12,
//! testing/kafka/read_topic.py). Missing tools skip the test locally and fail it under CI
//! (`CI=true` or `EVERSHARD_REQUIRE_KAFKA=1`).
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GZ: &str = "tansu-0.6.0-x86_64-linux-gnu.gz";
const BIN_SHA256: &str = "aa775f2cc826e6079ffe7fd74e06fa131ebf5f68eb366111b0d24b9d2806df23";

/// The workspace root: the first ancestor of the including crate's directory that holds
/// testing/kafka (this module is also compiled into the facade's tests and benches).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("testing/kafka/read_topic.py").is_file())
        .expect("testing/kafka/read_topic.py above CARGO_MANIFEST_DIR")
        .to_path_buf()
}

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("EVERSHARD_REQUIRE_KAFKA").is_ok_and(|v| v == "1")
}

fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Finds (or unpacks) the broker once per test process: the tests of a binary run in
/// parallel threads and would otherwise unpack into the same temporary file.
fn find_tansu() -> Result<PathBuf, String> {
    static TANSU: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    TANSU.get_or_init(find_tansu_once).clone()
}

fn find_tansu_once() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("tansu");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let gz = repo_root().join("..").join("shared").join("tools").join(GZ);
    // The cache: <target>/tools/tansu (the test binary is <target>/<profile>/deps/<name>).
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target = exe.ancestors().nth(3).ok_or("no target dir")?.to_path_buf();
    let cached = target.join("tools").join("tansu");
    if cached.is_file() && sha256_hex(&cached).map_err(|e| e.to_string())? == BIN_SHA256 {
        return Ok(cached);
    }
    if !gz.is_file() {
        return Err(format!(
            "tansu is not on PATH and {} does not exist; install it with \
             `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql` \
             (.ci/run does)",
            gz.display()
        ));
    }
    std::fs::create_dir_all(cached.parent().unwrap()).map_err(|e| e.to_string())?;
    let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
    let out = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
    let status = Command::new("gzip")
        .arg("-dc")
        .arg(&gz)
        .stdout(out)
        .status()
        .map_err(|e| format!("gzip: {e}"))?;
    if !status.success() {
        return Err(format!("gzip -dc {} failed", gz.display()));
    }
    let sum = sha256_hex(&tmp).map_err(|e| e.to_string())?;
    if sum != BIN_SHA256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{} decompresses to sha256 {sum}, expected {BIN_SHA256}",
            gz.display()
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &cached).map_err(|e| e.to_string())?;
    Ok(cached)
}

fn python_ok() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import kafka; print(kafka.__version__)"])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err("python3 cannot import kafka (pip install kafka-python==3.0.12)".into());
    }
    if v != "3.0.12" {
        return Err(format!("kafka-python {v}, expected 3.0.12"));
    }
    Ok(())
}

/// The broker alone (a benchmark needs no reader), or `None` after printing SKIPPED
/// (panics instead under CI).
pub fn broker_tool(what: &str) -> Option<PathBuf> {
    match find_tansu() {
        Ok(t) => Some(t),
        Err(e) if required() => panic!("{what}: the Kafka broker is missing: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {what}: {e}");
            None
        }
    }
}

/// The tools, or `None` after printing SKIPPED (panics instead under CI).
pub fn tools(test: &str) -> Option<PathBuf> {
    match find_tansu().and_then(|t| python_ok().map(|_| t)) {
        Ok(t) => Some(t),
        Err(e) if required() => panic!("{test}: the Kafka test tools are missing: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// A port for a broker, free now, below Linux's ephemeral range (32768-60999): a port that
/// `bind(0)` handed out could be handed out again to another test's broker, node or
/// outgoing connection while this broker is down for a restart on it. Below the range,
/// only this function hands ports out: one process's (its pid picks where it starts)
/// never repeat.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(37) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// A running tansu broker; killed on drop.
pub struct Broker {
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start(bin: &Path) -> Broker {
        let mut b = Broker {
            bin: bin.to_path_buf(),
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            child: None,
        };
        b.restart();
        b
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again) on the same port and directory; waits until it accepts
    /// connections (at most 60 s).
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tansu exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds the index tansu 0.6.0's sqlite engine lacks (it scans its header table per
    /// record, slow past a few hundred thousand headers): stops the broker, creates
    /// `header_topition_offset` (python3's sqlite3), starts it again.
    pub fn index_headers(&mut self) {
        self.stop();
        let db = self.dir.path().join("tansu.db");
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('create index \
                 if not exists header_topition_offset on header(topition, offset_id)'); \
                 c.commit()",
            ])
            .arg(&db)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "creating the header index in {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        self.restart();
    }

    /// The broker process's id while it runs (for SIGSTOP/SIGCONT: a paused broker keeps its
    /// connections and group state, a killed one does not).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as kafka-python read it.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaRecord {
    pub partition: u32,
    pub offset: u64,
    pub key: Option<String>,
    pub headers: Vec<(String, Option<String>)>,
    pub value: Option<String>,
}

/// Every message of `topic`, read by kafka-python.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<KafkaRecord> {
    let script = repo_root().join("testing/kafka/read_topic.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([bootstrap, topic, "300"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "read_topic.py {topic}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut records = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v.get("end_offsets").is_some() {
            continue;
        }
        let headers = v["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned)))
            .collect();
        records.push(KafkaRecord {
            partition: v["partition"].as_u64().unwrap() as u32,
            offset: v["offset"].as_u64().unwrap(),
            key: v["key"].as_str().map(str::to_owned),
            headers,
            value: v["value"].as_str().map(str::to_owned),
        });
    }
    records
}
