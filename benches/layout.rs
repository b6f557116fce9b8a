//! Issue #13's choice of write path, measured: what one durable group commit costs under four
//! journal layouts, on this machine's disk, for the same records.
//!
//! Each layout commits the same groups of records (one event per command, `RECORD_BYTES`
//! each, spread over `STREAMS` streams) with one durability point per group, from one
//! committer thread, the way `journal/committer.rs` does. For each layout and group size the
//! bench prints the records/s and the CPU time per record of the whole process (user + system,
//! from `/proc/self/stat`), which on a 2-core machine is what bounds the command rate once the
//! disk sync is shared by a group:
//!
//! - **A, sled per event (today's layout):** one `e` key per record holding the record, one
//!   `g` key per group holding the runs, one `apply_batch` + `flush`.
//! - **B, sled per group:** the group's records concatenated under `G | first position` (split
//!   into values under the 116 KiB limit of `journal/segments.rs`), one 8-byte `e` index key
//!   per record (stream, sequence → position); one `apply_batch` + `flush`.
//! - **C, segment file + sled index behind:** the group is framed into one buffer, one
//!   `write` and one `fdatasync` acknowledge it; an indexer thread applies the `e` index keys (8-byte
//!   values) to sled in batches, without syncing (recoverable from the file's tail). The run
//!   ends when the indexer has caught up, so its CPU is counted.
//! - **E, segment file + back-pointers:** each record names its stream's previous record, so
//!   only stream heads are indexed: the indexer writes each head changed since its last
//!   checkpoint once per 65,536 records.
//! - **F, the segment log as built** (`journal::seglog` + `journal::logindex`): E with real
//!   records, encoded and chained, each checked and hashed again by the index.
//! - **D, segment file + index in memory:** the same file path with an in-memory per-stream
//!   index: the ceiling of C without sled, and the shape of a log with its own index files.
//!
//! `cargo bench --bench layout` (`EVERSHARD_BENCH_LAYOUT_RECORDS`, default 200,000 per run;
//! `EVERSHARD_BENCH_DIR` for the directory, so the disk under test is the one you name).

#[path = "common/cpu.rs"]
mod cpu;

use cpu::process_cpu;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes of one record, about what a ~256-byte ProductStock event makes with its metadata.
const RECORD_BYTES: usize = 400;
/// Distinct streams the records are spread over (the engine bench's 10,000 aggregates).
const STREAMS: u64 = 10_000;
/// The largest sled value evershard writes (`journal::segments`: no blob files).
const VALUE_BYTES_MAX: usize = 116 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    SledPerEvent,
    SledPerGroup,
    FileSledIndex,
    FileMemIndex,
    FileHeads,
}

impl Layout {
    const ALL: [Layout; 5] = [
        Layout::SledPerEvent,
        Layout::SledPerGroup,
        Layout::FileSledIndex,
        Layout::FileMemIndex,
        Layout::FileHeads,
    ];

    fn label(self) -> &'static str {
        match self {
            Layout::SledPerEvent => "A sled, a key per event (today)",
            Layout::SledPerGroup => "B sled, a key per group + 8-byte index keys",
            Layout::FileSledIndex => "C segment file + sled index behind",
            Layout::FileMemIndex => "D segment file + index in memory",
            Layout::FileHeads => "E segment file + back-pointers, heads to sled",
        }
    }
}

/// sled as the journal configures it: 16 MiB segments (`journal::segments`), a 32 MiB cache.
fn sled_config(path: &std::path::Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .segment_size(16 << 20)
        .cache_capacity(32 << 20)
}

/// The stream part of a key, as `journal::keys` writes it (type and id with their lengths).
fn stream_key(tag: u8, stream: u64, sequence: u64) -> Vec<u8> {
    let id = format!("sku-{stream}");
    let mut key = Vec::with_capacity(32);
    key.push(tag);
    key.push(12);
    key.extend_from_slice(b"ProductStock");
    key.extend_from_slice(&(id.len() as u16).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// A deterministic group: `size` records of pseudo-random streams, with per-stream sequences.
struct Workload {
    sequences: Vec<u64>,
    rng: u64,
    position: u64,
    record: Vec<u8>,
}

impl Workload {
    fn new() -> Self {
        Workload {
            sequences: vec![0; STREAMS as usize],
            rng: 0x9E37_79B9_7F4A_7C15,
            position: 0,
            record: (0..RECORD_BYTES).map(|i| (i * 31 % 251) as u8).collect(),
        }
    }

    /// (stream, sequence, position) of the next `size` records.
    fn group(&mut self, size: usize) -> Vec<(u64, u64, u64)> {
        (0..size)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                let stream = self.rng % STREAMS;
                self.sequences[stream as usize] += 1;
                self.position += 1;
                (stream, self.sequences[stream as usize], self.position)
            })
            .collect()
    }
}

/// Commits `records` records in groups of `group`; returns (wall time, CPU time).
fn run(
    layout: Layout,
    preallocate: bool,
    dir: &std::path::Path,
    records: usize,
    group: usize,
) -> (Duration, Duration) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut work = Workload::new();
    let mut cpu0 = process_cpu();
    let mut start = Instant::now();
    match layout {
        Layout::SledPerEvent | Layout::SledPerGroup => {
            let db = sled_config(&dir.join("sled")).open().unwrap();
            // sled's flush ends in sync_file_range, which does not reach stable storage: the
            // journal fdatasyncs the data file after it (`Committer::sync`), and so do we.
            let data_file = std::fs::File::open(dir.join("sled").join("db")).unwrap();
            let mut done = 0;
            while done < records {
                let g = work.group(group.min(records - done));
                let mut batch = sled::Batch::default();
                if layout == Layout::SledPerEvent {
                    let mut runs = Vec::with_capacity(g.len() * 40);
                    for &(stream, sequence, _) in &g {
                        batch.insert(stream_key(b'e', stream, sequence), work.record.as_slice());
                        runs.extend_from_slice(&stream_key(b'r', stream, sequence)[1..]);
                        runs.extend_from_slice(&1u32.to_le_bytes());
                    }
                    batch.insert([&[b'g'][..], &g[0].2.to_be_bytes()].concat(), runs);
                } else {
                    let mut chunk = Vec::with_capacity(VALUE_BYTES_MAX);
                    let mut chunk_first = g[0].2;
                    for &(stream, sequence, position) in &g {
                        if chunk.len() + RECORD_BYTES > VALUE_BYTES_MAX {
                            batch.insert([&[b'G'][..], &chunk_first.to_be_bytes()].concat(), chunk);
                            chunk = Vec::with_capacity(VALUE_BYTES_MAX);
                            chunk_first = position;
                        }
                        chunk.extend_from_slice(&work.record);
                        batch.insert(stream_key(b'e', stream, sequence), &position.to_le_bytes());
                    }
                    batch.insert([&[b'G'][..], &chunk_first.to_be_bytes()].concat(), chunk);
                }
                db.apply_batch(batch).unwrap();
                db.flush().unwrap();
                data_file.sync_data().unwrap();
                done += g.len();
            }
        }
        Layout::FileSledIndex | Layout::FileMemIndex | Layout::FileHeads => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(dir.join("segment"))
                .unwrap();
            let mut offset = 0u64;
            if preallocate {
                // Zero-filled and synced ahead, as WAL segments are: an fdatasync then has
                // no file size or extent change to journal, only the data.
                let zeros = vec![0u8; 1 << 20];
                let bytes = records * (RECORD_BYTES + 8);
                for _ in 0..bytes.div_ceil(zeros.len()) {
                    file.write_all(&zeros).unwrap();
                }
                file.sync_all().unwrap();
                (cpu0, start) = (process_cpu(), Instant::now());
            }
            // The indexer: sled keys for C, a map for D. Bounded channel: a slow indexer
            // holds the committer back instead of growing memory.
            let (tx, rx) = mpsc::sync_channel::<Vec<(u64, u64, u64)>>(64);
            let sled_dir = dir.join("sled");
            let indexer = std::thread::spawn(move || {
                if layout == Layout::FileSledIndex {
                    let db = sled_config(&sled_dir).open().unwrap();
                    let mut batch = sled::Batch::default();
                    let mut pending = 0;
                    for g in rx {
                        for (stream, sequence, position) in g {
                            batch.insert(
                                stream_key(b'e', stream, sequence),
                                &position.to_le_bytes(),
                            );
                            pending += 1;
                        }
                        if pending >= 4096 {
                            db.apply_batch(std::mem::take(&mut batch)).unwrap();
                            pending = 0;
                        }
                    }
                    db.apply_batch(batch).unwrap();
                } else if layout == Layout::FileHeads {
                    // Each record points at its stream's previous record, so only a stream's
                    // head needs an index entry, and a head that moves many times between
                    // two checkpoints is written once.
                    let db = sled_config(&sled_dir).open().unwrap();
                    let mut heads: HashMap<u64, (u64, u64)> = HashMap::new();
                    let mut pending = 0;
                    let checkpoint = |heads: &mut HashMap<u64, (u64, u64)>| {
                        let mut batch = sled::Batch::default();
                        for (stream, (sequence, position)) in heads.drain() {
                            let mut value = sequence.to_le_bytes().to_vec();
                            value.extend_from_slice(&position.to_le_bytes());
                            batch.insert(stream_key(b'h', stream, 0), value);
                        }
                        db.apply_batch(batch).unwrap();
                    };
                    for g in rx {
                        for (stream, sequence, position) in g {
                            heads.insert(stream, (sequence, position));
                            pending += 1;
                        }
                        // About a second of records at the rates measured here.
                        if pending >= 65_536 {
                            checkpoint(&mut heads);
                            pending = 0;
                        }
                    }
                    checkpoint(&mut heads);
                } else {
                    let mut index: HashMap<u64, Vec<u64>> = HashMap::new();
                    for g in rx {
                        for (stream, _, position) in g {
                            index.entry(stream).or_default().push(position);
                        }
                    }
                    assert!(!index.is_empty());
                }
            });
            let mut buf = Vec::with_capacity(group * (RECORD_BYTES + 8));
            let mut done = 0;
            while done < records {
                let g = work.group(group.min(records - done));
                buf.clear();
                for _ in &g {
                    buf.extend_from_slice(&(RECORD_BYTES as u32).to_le_bytes());
                    buf.extend_from_slice(&crc32c::crc32c(&work.record).to_le_bytes());
                    buf.extend_from_slice(&work.record);
                }
                file.write_all_at(&buf, offset).unwrap();
                offset += buf.len() as u64;
                file.sync_data().unwrap();
                done += g.len();
                tx.send(g).unwrap();
            }
            drop(tx);
            indexer.join().unwrap();
        }
    }
    (start.elapsed(), process_cpu() - cpu0)
}

/// F: the segment log as built (`journal::seglog` + `journal::logindex`), with real records:
/// each group's records are encoded and chained (SHA-256 of the previous record, as the
/// committer does), framed, written and synced; an indexer thread applies each synced frame
/// (checking every record and hashing it again) and checkpoints heads every 65,536 records.
fn run_seglog(dir: &std::path::Path, records: usize, group: usize) -> (Duration, Duration) {
    use evershard::engine::seglog::{Frame, FrameRecord, LogIndex, SegmentLog, SEGMENT_BYTES};
    use evershard::engine::{AtRest, Record};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let (mut log, _) = SegmentLog::open(&dir.join("log"), SEGMENT_BYTES, 0, 1).unwrap();
    log.prepare_next().unwrap();
    let db = sled_config(&dir.join("sled")).open().unwrap();
    let (cpu0, start) = (process_cpu(), Instant::now());
    let mut index = LogIndex::open(&db, &log).unwrap();
    let (tx, rx) = mpsc::sync_channel::<(u64, Frame)>(64);
    std::thread::scope(|scope| {
        let db = &db;
        let indexer = scope.spawn(move || {
            let mut pending = 0usize;
            for (address, frame) in rx {
                pending += frame.records.len();
                index.apply(db, address, &frame).unwrap();
                if pending >= 65_536 {
                    index.checkpoint(db).unwrap();
                    pending = 0;
                }
            }
            index.checkpoint(db).unwrap();
            index
        });
        // Each stream's last record: its hash (chained as records are built) and its address
        // (known once the frame's place is reserved).
        let mut hashes: HashMap<u64, [u8; 32]> = HashMap::new();
        let mut addresses: HashMap<u64, u64> = HashMap::new();
        let mut work = Workload::new();
        let payload = vec![0x5Au8; RECORD_BYTES - 150];
        let mut done = 0;
        while done < records {
            let g = work.group(group.min(records - done));
            let frame_records = g
                .iter()
                .map(|&(stream, sequence, position)| {
                    let prev_hash = hashes.get(&stream).copied().unwrap_or([0; 32]);
                    let bytes = Record {
                        sequence,
                        global_position: position,
                        timestamp: chrono::DateTime::from_timestamp_micros(
                            1_767_225_600_000_000 + position as i64,
                        )
                        .unwrap(),
                        event_id: uuid::Uuid::from_u128(position as u128),
                        correlation_id: uuid::Uuid::from_u128(stream as u128),
                        causation_id: None,
                        prev_hash,
                        aggregate_type: "ProductStock".into(),
                        aggregate_id: format!("sku-{stream}"),
                        event_type: "StockReserved".into(),
                        event_version: "1.0".into(),
                        source: "bench".into(),
                        user_id: None,
                        session_id: None,
                        audit_context: None,
                        at_rest: AtRest::Plain,
                        payload: payload.clone(),
                    }
                    .encode();
                    hashes.insert(stream, evershard::engine::record::hash(&bytes));
                    FrameRecord {
                        previous_address: 0,
                        bytes,
                    }
                })
                .collect();
            let mut frame: Frame = Frame {
                first_position: g[0].2,
                records: frame_records,
                writes: vec![],
            };
            // The pointers, once the frame's place is known (a stream may recur in a group).
            let address = log.reserve(&frame).unwrap();
            let record_addresses = frame.record_addresses(address);
            for ((record, &(stream, _, _)), record_address) in
                frame.records.iter_mut().zip(&g).zip(record_addresses)
            {
                record.previous_address = addresses.insert(stream, record_address).unwrap_or(0);
            }
            log.append(&frame).unwrap();
            log.sync().unwrap();
            log.prepare_next().unwrap();
            done += g.len();
            tx.send((address, frame)).unwrap();
        }
        drop(tx);
        let index = indexer.join().unwrap();
        let elapsed = (start.elapsed(), process_cpu() - cpu0);
        // Reads: whole streams along their pointers, one read of each record's entry.
        let read_start = Instant::now();
        let mut events = 0;
        for stream in 0..100 {
            let id = evershard::engine::StreamId::new("ProductStock", format!("sku-{stream}"));
            events += index.read_stream(db, &log, &id, 1).unwrap().len();
        }
        let read = read_start.elapsed();
        println!(
            "  F reads: 100 whole streams, {events} events, {:.1} µs per event read back",
            read.as_secs_f64() * 1e6 / events.max(1) as f64
        );
        elapsed
    })
}

fn main() {
    // `cargo test --benches` runs this binary without `--bench`: keep that quick.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let records: usize = std::env::var("EVERSHARD_BENCH_LAYOUT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 200_000 });
    let base = match std::env::var_os("EVERSHARD_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!(
        "journal layouts: {records} records of {RECORD_BYTES} bytes over {STREAMS} streams, \
         one durability point per group (load: {})",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for group in [64, 1024] {
        let runs = Layout::ALL.into_iter().flat_map(|layout| {
            let file = layout != Layout::SledPerEvent && layout != Layout::SledPerGroup;
            [(layout, false)]
                .into_iter()
                .chain(file.then_some((layout, true)))
        });
        for (layout, preallocate) in runs {
            let (wall, cpu) = run(
                layout,
                preallocate,
                &base.path().join("run"),
                records,
                group,
            );
            println!(
                "  group {group:>5}  {:<46} {:<13} {:>9.0} records/s  {:>6.2} µs CPU/record",
                layout.label(),
                if preallocate { "preallocated" } else { "" },
                records as f64 / wall.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / records as f64,
            );
        }
        let (wall, cpu) = run_seglog(&base.path().join("run"), records, group);
        println!(
            "  group {group:>5}  {:<46} {:<13} {:>9.0} records/s  {:>6.2} µs CPU/record",
            "F journal::seglog + logindex, real records",
            "preallocated",
            records as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / records as f64,
        );
    }
}
