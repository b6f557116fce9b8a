//! The segment log (issue #13's next write path, increment 1: `journal::seglog`) proves here
//! that what it was given comes back after a reopen, frame for frame and record for record,
//! across segments; that a torn last group — and anything written behind it — is cut and
//! never comes back, while a bad frame anywhere a torn write cannot explain refuses the log,
//! naming the file and offset; and, under simulated power cuts (every unsynced 512-byte
//! sector kept, zeroed or garbled at random, seeds printed), that every synced frame survives
//! and the log reopens as a prefix of what was written; and that a scrub zeroes the key
//! entries it is asked to in place, whole or cut short part way through a key, and leaves a
//! log that opens with every record and every other write; and that a look-up by position
//! finds the holding frame from the frame starts met before, in any order.

use evershard_engine::seglog::{
    scrub_frames, Frame, FrameRecord, FrameWrite, SegLogError, SegmentLog, FRAME_HEADER_BYTES,
};
use evershard_model::DemoRng;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Small segments, so that a few frames span several.
const SMALL_SEGMENT_BYTES: u64 = 4096;

fn seed() -> u64 {
    evershard_testing::child::seed_or_clock("EVERSHARD_TEST_SEED", "segment log")
}

/// A frame of 1..=max_records records of varied sizes, and sometimes writes.
fn frame(rng: &mut DemoRng, first_position: u64, max_records: u64, record_bytes_max: u64) -> Frame {
    let records = (0..1 + rng.below(max_records))
        .map(|i| FrameRecord {
            previous_address: if rng.below(4) == 0 {
                0
            } else {
                rng.below(first_position + i)
            },
            bytes: (0..1 + rng.below(record_bytes_max))
                .map(|_| rng.next_u64() as u8)
                .collect(),
        })
        .collect();
    let writes = (0..rng.below(3))
        .map(|_| {
            // Sometimes a key entry (`D`, `d`): scrubbable, its frame format 2.
            let keyspace = [b't', b't', b'D', b'd'][rng.below(4) as usize];
            let key = vec![keyspace, rng.next_u64() as u8, rng.next_u64() as u8];
            if rng.below(2) == 0 {
                // Never all zeroes: that is how a scrubbed value reads.
                let value = vec![rng.next_u64() as u8 | 1; 1 + rng.below(40) as usize];
                FrameWrite::Put { key, value }
            } else {
                FrameWrite::Remove { key }
            }
        })
        .collect();
    Frame {
        first_position,
        records,
        writes,
    }
}

fn open(dir: &Path, floor: u64) -> Result<SegmentLog, SegLogError> {
    SegmentLog::open(dir, SMALL_SEGMENT_BYTES, floor, 1).map(|(log, _)| log)
}

fn all_frames(log: &SegmentLog) -> Vec<Frame> {
    log.frames_from(1)
        .map(|f| f.map(|(_, frame)| frame))
        .collect::<Result<_, _>>()
        .unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Writes `count` frames, syncing after each; returns them.
fn fill(log: &mut SegmentLog, rng: &mut DemoRng, count: usize) -> Vec<Frame> {
    (0..count)
        .map(|_| {
            let f = frame(rng, log.next_position(), 8, 200);
            log.append(&f).unwrap();
            log.sync().unwrap();
            f
        })
        .collect()
}

#[test]
fn frames_and_records_come_back_after_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = DemoRng::new(seed());
    let mut log = open(dir.path(), 0).unwrap();
    log.prepare_next().unwrap();
    let written = fill(&mut log, &mut rng, 60);
    // One frame larger than a segment gets a segment of its own.
    let big = Frame {
        first_position: log.next_position(),
        records: vec![FrameRecord {
            previous_address: 1,
            bytes: vec![0xEE; 3 * SMALL_SEGMENT_BYTES as usize],
        }],
        writes: vec![],
    };
    log.append(&big).unwrap();
    log.sync().unwrap();
    let mut written = written;
    written.push(big);
    drop(log);

    assert!(
        segment_files(dir.path()).len() > 3,
        "the frames span segments"
    );
    let end = written.last().unwrap().end_position();
    let (log, report) = SegmentLog::open(dir.path(), SMALL_SEGMENT_BYTES, end, 1).unwrap();
    assert_eq!(report.frames, written.len());
    assert_eq!(report.cut, None);
    assert_eq!(all_frames(&log), written);
    assert_eq!(log.next_position(), end);
    // Every record by position, and by the address its frame's layout gives it: one read.
    for frame in log.frames_from(1) {
        let (address, frame) = frame.unwrap();
        let addresses = frame.record_addresses(address);
        for (i, record) in frame.records.iter().enumerate() {
            let position = frame.first_position + i as u64;
            assert_eq!(
                &log.record_at(position).unwrap(),
                record,
                "position {position}"
            );
            assert_eq!(&log.record_at_address(addresses[i]).unwrap(), record);
        }
    }
    let past_the_end = log.frames_from(1).last().unwrap().unwrap().0 + (1 << 30);
    assert!(matches!(
        log.record_at_address(past_the_end),
        Err(SegLogError::NoRecordAt { .. })
    ));
    // Reading from the middle starts at the frame holding that position.
    let middle = written[30].first_position + 1;
    let from_middle: Vec<Frame> = log
        .frames_from(middle)
        .map(|f| f.map(|(_, frame)| frame))
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(from_middle[0].first_position <= middle && middle < from_middle[0].end_position());
    assert_eq!(from_middle.last(), written.last());
    assert!(matches!(
        log.record_at(end),
        Err(SegLogError::NotFound { position, .. }) if position == end
    ));
    assert!(matches!(
        log.record_at(0),
        Err(SegLogError::NotFound { .. })
    ));
}

/// A look-up by position starts from the frame starts earlier look-ups met (and the
/// successors of frames read, as noted by their readers) instead of the segment's table:
/// whatever the order of the look-ups — random, sequential, or one frame in eight as a
/// reader of one partition jumps — each answers the address of the frame that holds the
/// position, across segments and over frames of writes alone.
#[test]
fn look_ups_by_position_from_frame_starts_met_before_find_the_holding_frame() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed();
    let mut rng = DemoRng::new(seed);
    let (mut log, _) = SegmentLog::open(dir.path(), 64 << 10, 0, 1).unwrap();
    for i in 0..1500 {
        let f = if i % 7 == 3 {
            // Writes alone: a frame that holds no position.
            Frame {
                first_position: log.next_position(),
                records: vec![],
                writes: vec![FrameWrite::Remove {
                    key: vec![b't', i as u8],
                }],
            }
        } else {
            frame(&mut rng, log.next_position(), 8, 40)
        };
        log.append(&f).unwrap();
    }
    log.sync().unwrap();
    let end = log.next_position();
    drop(log);
    let check = |log: &SegmentLog, positions: &mut dyn Iterator<Item = u64>| {
        for position in positions {
            let address = log.frame_address_of(position).unwrap();
            let (frame, next) = log.frame_at_address(address).unwrap();
            assert!(
                frame.first_position <= position && position < frame.end_position(),
                "position {position} (seed {seed}): frame at {address} holds {}..{}",
                frame.first_position,
                frame.end_position()
            );
            log.note_frame_start(frame.end_position(), next);
        }
    };
    let reopen = || SegmentLog::open(dir.path(), 64 << 10, end, 1).unwrap().0;
    let log = reopen();
    assert!(segment_files(dir.path()).len() > 1, "several segments");
    check(&log, &mut (1..end));
    let log = reopen();
    for start in 1..9 {
        check(&log, &mut (start..end).step_by(8 * 4));
    }
    let log = reopen();
    let mut random = DemoRng::new(seed ^ 1);
    check(&log, &mut (0..5000).map(|_| 1 + random.below(end - 1)));
    // A successor at the very end of the log is no frame start: not noted.
    let (address, frame) = log.frames_from(end - 1).next().unwrap().unwrap();
    let (_, next) = log.frame_at_address(address).unwrap();
    log.note_frame_start(frame.end_position(), next);
    check(&log, &mut (end - 1..end));
}

/// A frame of writes alone that ends a segment (trimmed at close) starts at the first
/// position of the next segment: the start after the last frame of records there is no start
/// of that position's frame, and a look-up of it after reading that frame finds the next
/// segment's first frame (it once took the noted start, in the segment before, and failed an
/// assertion).
#[test]
fn a_segment_ending_in_a_frame_of_writes_alone_does_not_mislead_the_next_look_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = DemoRng::new(seed());
    let mut log = open(dir.path(), 0).unwrap();
    fill(&mut log, &mut rng, 3);
    let boundary = log.next_position();
    let writes_alone = Frame {
        first_position: boundary,
        records: vec![],
        writes: vec![FrameWrite::Remove { key: vec![b't', 1] }],
    };
    log.append(&writes_alone).unwrap();
    log.sync().unwrap();
    log.trim().unwrap();
    drop(log);
    let mut log = open(dir.path(), boundary).unwrap();
    fill(&mut log, &mut rng, 3);
    let files = segment_files(dir.path());
    assert_eq!(
        files.len(),
        2,
        "the frames after the reopen start a segment"
    );
    // Read the last frame of records of the first segment, as a reader does, and note its
    // successor; then look up the next position.
    let address = log.frame_address_of(boundary - 1).unwrap();
    let (frame, next) = log.frame_at_address(address).unwrap();
    assert_eq!(frame.end_position(), boundary);
    log.note_frame_start(frame.end_position(), next);
    let address = log.frame_address_of(boundary).unwrap();
    let (frame, _) = log.frame_at_address(address).unwrap();
    assert_eq!(frame.first_position, boundary);
    assert!(!frame.records.is_empty(), "the next segment's first frame");
}

/// Scrubbable writes (a data subject's `D` entry, a wrapped data key's `d` entry) make their
/// frame format 2, whose body CRC leaves their bytes out. A scrub zeroes those the caller
/// picks in place and syncs them; a scrub torn part way through a key (bytes zeroed by hand
/// here, as a power cut may leave them) still opens, and a scrub run again completes it and
/// counts only what it zeroed. The records and the other writes come back as written, and
/// the segment's bytes no longer hold the scrubbed ones.
#[test]
fn a_scrub_zeroes_chosen_key_entries_in_place_and_completes_a_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = DemoRng::new(seed());
    let mut log = SegmentLog::open(dir.path(), 1 << 20, 0, 1).unwrap().0;
    let alice_key = b"D\x00\x0dpatient:alice".to_vec();
    let alice_wrapped: Vec<u8> = (1..=60).collect();
    let bob_key = b"D\x00\x0bpatient:bob".to_vec();
    let timer = FrameWrite::Put {
        key: b"t-timer".to_vec(),
        value: b"due".to_vec(),
    };
    let mut frames = Vec::new();
    for writes in [
        vec![
            FrameWrite::Put {
                key: alice_key.clone(),
                value: vec![7; 16],
            },
            timer.clone(),
            FrameWrite::Put {
                key: [&b"d"[..], &[9; 16]].concat(),
                value: alice_wrapped.clone(),
            },
        ],
        vec![timer.clone()],
        vec![FrameWrite::Put {
            key: bob_key.clone(),
            value: vec![8; 16],
        }],
        vec![FrameWrite::Remove {
            key: alice_key.clone(),
        }],
    ] {
        let mut f = frame(&mut rng, log.next_position(), 3, 100);
        f.writes = writes;
        log.append(&f).unwrap();
        frames.push(f);
    }
    log.sync().unwrap();
    let segment = segment_files(dir.path()).remove(0);
    let formats: Vec<u8> = {
        let bytes = std::fs::read(&segment).unwrap();
        let mut at = 0;
        frames
            .iter()
            .map(|f| {
                let format = bytes[at + 4];
                at += f.encoded_len();
                format
            })
            .collect()
    };
    assert_eq!(formats, [2, 1, 2, 2], "key entries make a frame format 2");

    // Torn: the first half of alice's name zeroed, the rest not (a scrub a power cut took
    // part of). The log opens; the damaged write reads as it is.
    let bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(alice_key.len())
        .position(|w| w == alice_key)
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(&[0; 7], at as u64).unwrap();
    drop(log);
    // Its key entries' own CRC fails: where no scrub may have reached (a bound of 0), that
    // is damage, and read-only the log ends before it (a writable open would cut it, or
    // refuse the log below its durable floor).
    let strict = SegmentLog::open_read_only(dir.path(), 1 << 20, 0, 1, 0).unwrap();
    assert_eq!(
        all_frames(&strict).len(),
        0,
        "a damaged key entry is not read"
    );
    drop(strict);
    // Behind the bound a scrub may have reached, it opens; the damaged write reads as it is.
    let before = frames[..3]
        .iter()
        .map(|f| f.encoded_len() as u64)
        .sum::<u64>();
    let log = SegmentLog::open_scrubbed(dir.path(), 1 << 20, 0, 1, before)
        .unwrap()
        .0;
    let read = all_frames(&log);
    assert_eq!(read[0].writes.len(), 3);
    assert_ne!(read[0].writes[0].key(), &alice_key[..]);
    assert_eq!(read[1..3], frames[1..3]);

    // Scrub everything but bob's entry, in the frames before the last one.
    let choose = |w: &FrameWrite| Ok::<_, SegLogError>(w.key() != &bob_key[..]);
    let scrubbed = scrub_frames(&log.scrubbable_frames(before), choose).unwrap();
    assert_eq!(scrubbed, 2, "alice's torn entry and her wrapped key");
    assert_eq!(
        scrub_frames(&log.scrubbable_frames(before), choose).unwrap(),
        0
    );
    drop(log);

    let mut log = SegmentLog::open_scrubbed(dir.path(), 1 << 20, 0, 1, before)
        .unwrap()
        .0;
    let read = all_frames(&log);
    assert_eq!(read.len(), frames.len());
    for (read, written) in read.iter().zip(&frames) {
        assert_eq!(read.records, written.records, "records are never scrubbed");
    }
    assert_eq!(
        read[0].writes,
        std::slice::from_ref(&timer),
        "the scrubbed writes are left out"
    );
    assert_eq!(
        read[1..],
        frames[1..],
        "frames after `before` and bob's are untouched"
    );
    let count = |needle: &[u8]| {
        let bytes = std::fs::read(&segment).unwrap();
        bytes.windows(needle.len()).filter(|w| *w == needle).count()
    };
    assert_eq!(
        count(b"t:alice"),
        1,
        "alice's name is left only after `before`"
    );
    assert_eq!(count(&alice_wrapped), 0, "her key is gone");
    assert_eq!(count(&bob_key), 1);
    // The frame after `before` (an erasure's own removal) is scrubbed once it is behind.
    let end = log.end_of_frames();
    log.allow_scrubbed_before(end);
    let all = scrub_frames(&log.scrubbable_frames(end), choose).unwrap();
    assert_eq!(all, 1);
    assert!(all_frames(&log)[3].writes.is_empty());
    assert_eq!(count(b"t:alice"), 0);
    drop(log);

    // A key entry damaged where no scrub reached (bob's, in a frame the bound does not
    // cover) is found by its own CRC, though the body CRC leaves its bytes out.
    let at = offset_of(&segment, &bob_key);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(b"X", at as u64 + 5).unwrap();
    let bound = frames[..2]
        .iter()
        .map(|f| f.encoded_len() as u64)
        .sum::<u64>();
    let log = SegmentLog::open_read_only(dir.path(), 1 << 20, 0, 1, bound).unwrap();
    assert_eq!(
        all_frames(&log).len(),
        2,
        "the log ends before the damaged frame"
    );
}

/// The offset of `needle`'s first occurrence in `file`.
fn offset_of(file: &Path, needle: &[u8]) -> usize {
    let bytes = std::fs::read(file).unwrap();
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn a_trimmed_log_gives_its_tail_back_and_keeps_every_address_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = DemoRng::new(seed());
    let mut written = Vec::new();
    for round in 0..4 {
        let mut log = open(dir.path(), 0).unwrap();
        log.prepare_next().unwrap();
        written.extend(fill(&mut log, &mut rng, 3 + round * 7));
        log.trim().unwrap();
        drop(log);
        let last = segment_files(dir.path()).pop().unwrap();
        assert_eq!(
            std::fs::metadata(&last).unwrap().len(),
            last_segment_used(dir.path()),
            "round {round}: the last segment ends where its frames do"
        );
        assert!(
            !dir.path().join("next.seg.prepared").exists(),
            "round {round}: the prepared segment is removed"
        );
    }
    // Every frame comes back, and every record at the address its frame's layout gives it:
    // the later segments' base addresses follow the trimmed lengths.
    let end = written.last().unwrap().end_position();
    let log = open(dir.path(), end).unwrap();
    assert_eq!(all_frames(&log), written);
    for frame in log.frames_from(1) {
        let (address, frame) = frame.unwrap();
        for (record, at) in frame.records.iter().zip(frame.record_addresses(address)) {
            assert_eq!(&log.record_at_address(at).unwrap(), record);
        }
    }
}

#[test]
fn segments_of_writes_alone_begin_where_they_end_and_keep_their_own_files() {
    // A trimmed segment is full, so the next frame starts a segment; a frame of writes alone
    // (consumer offsets, a key rotation) holds no record, so that segment ends where it
    // begins, and the next one begins at the same position again.
    let dir = tempfile::tempdir().unwrap();
    let writes_only = |first_position| Frame {
        first_position,
        records: vec![],
        writes: vec![FrameWrite::Put {
            key: b"toffset".to_vec(),
            value: first_position.to_le_bytes().to_vec(),
        }],
    };
    let mut written = Vec::new();
    for round in 0..4 {
        let mut log = open(dir.path(), 0).unwrap();
        let frame = match round {
            0 | 3 => Frame {
                first_position: log.next_position(),
                records: vec![FrameRecord {
                    previous_address: 0,
                    bytes: vec![round as u8; 100],
                }],
                writes: vec![],
            },
            _ => writes_only(log.next_position()),
        };
        log.append(&frame).unwrap();
        log.trim().unwrap();
        written.push(frame);
    }
    assert_eq!(segment_files(dir.path()).len(), 4, "one segment per run");
    let log = open(dir.path(), 2).unwrap();
    assert_eq!(all_frames(&log), written);
    assert_eq!(log.record_at(1).unwrap().bytes, vec![0; 100]);
    assert_eq!(log.record_at(2).unwrap().bytes, vec![3; 100]);
}

#[test]
fn an_empty_log_starts_where_it_is_told_and_refuses_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), SMALL_SEGMENT_BYTES, 0, 1_001).unwrap();
    assert_eq!(log.next_position(), 1_001);
    let mut rng = DemoRng::new(7);
    let gap = frame(&mut rng, 1_002, 2, 10);
    assert!(matches!(
        log.append(&gap),
        Err(SegLogError::PositionGap {
            expected: 1_001,
            got: 1_002
        })
    ));
    let f = frame(&mut rng, 1_001, 2, 10);
    log.append(&f).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, _) = SegmentLog::open(dir.path(), SMALL_SEGMENT_BYTES, 0, 1).unwrap();
    assert_eq!(
        log.first_position(),
        1_001,
        "the files say where the log starts"
    );
    assert_eq!(all_frames(&log), vec![f]);
}

/// Writes synced frames, then one more unsynced, damages the unsynced one with `damage`
/// (given the file and the frame's offset) and reopens with the synced end as the floor.
fn torn_last_frame(damage: impl Fn(&std::fs::File, u64)) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = DemoRng::new(11);
    let mut log = SegmentLog::open(dir.path(), 1 << 20, 0, 1).unwrap().0;
    let synced = fill(&mut log, &mut rng, 5);
    let floor = log.next_position();
    let offset: u64 = synced
        .iter()
        .map(|f| f.encode().unwrap().len() as u64)
        .sum();
    let torn = frame(&mut rng, floor, 8, 200);
    log.append(&torn).unwrap();
    let behind = frame(&mut rng, torn.end_position(), 8, 200);
    log.append(&behind).unwrap();
    drop(log);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment_files(dir.path())[0])
        .unwrap();
    damage(&file, offset);

    let (mut log, report) = SegmentLog::open(dir.path(), 1 << 20, floor, 1).unwrap();
    assert_eq!(
        report.cut.map(|(_, at)| at),
        Some(offset),
        "cut at the torn frame"
    );
    assert_eq!(
        all_frames(&log),
        synced,
        "the synced frames, and nothing after them"
    );
    assert_eq!(log.next_position(), floor);
    // Writing goes on where the log was cut, and a reopen sees exactly that.
    let next = frame(&mut rng, floor, 1, 10);
    log.append(&next).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, report) = SegmentLog::open(dir.path(), 1 << 20, floor, 1).unwrap();
    assert_eq!(report.cut, None);
    let mut expected = synced;
    expected.push(next);
    assert_eq!(all_frames(&log), expected);
}

#[test]
fn a_torn_body_is_cut_with_the_frame_written_behind_it() {
    torn_last_frame(|file, offset| {
        file.write_all_at(&[0xFF; 7], offset + FRAME_HEADER_BYTES as u64 + 3)
            .unwrap()
    });
}

#[test]
fn a_torn_header_is_cut_with_the_frame_written_behind_it() {
    torn_last_frame(|file, offset| file.write_all_at(&[0; 12], offset + 8).unwrap());
}

#[test]
fn a_lost_header_page_does_not_let_a_later_frame_line_up() {
    // The torn frame's header is all zeroes (its page never reached the disk) while the
    // frame behind it did: the frame behind must be cut too, not left for a later append
    // to line up with.
    torn_last_frame(|file, offset| file.write_all_at(&[0; FRAME_HEADER_BYTES], offset).unwrap());
}

#[test]
fn damage_below_the_durable_floor_or_in_an_earlier_segment_refuses_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = DemoRng::new(13);
    let mut log = open(dir.path(), 0).unwrap();
    fill(&mut log, &mut rng, 40);
    let floor = log.next_position();
    drop(log);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    // Flips one byte; returns the byte it replaced.
    let damage = |path: &Path, at: u64, byte: Option<u8>| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut old = [0u8];
        file.read_exact_at(&mut old, at).unwrap();
        file.write_all_at(&[byte.unwrap_or(!old[0])], at).unwrap();
        old[0]
    };
    let at = FRAME_HEADER_BYTES as u64 + 1;

    // The last segment, below the floor: synced data damaged, not a torn write.
    let last = files.last().unwrap();
    let was = damage(last, at, None);
    match open(dir.path(), floor) {
        Err(SegLogError::Corrupt { path, offset, .. }) => {
            assert_eq!(&path, last);
            assert_eq!(offset, 0);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    damage(last, at, Some(was));
    assert_eq!(open(dir.path(), floor).unwrap().next_position(), floor);

    // An earlier segment: refused whatever the floor.
    let was = damage(&files[0], at, None);
    match open(dir.path(), 0) {
        Err(SegLogError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, files[0]);
            assert_eq!(reason, "frame body CRC mismatch");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    damage(&files[0], at, Some(was));

    // A missing segment in the middle: the next one does not start where it should.
    std::fs::remove_file(&files[1]).unwrap();
    match open(dir.path(), 0) {
        Err(SegLogError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, files[2]);
            assert_eq!(
                reason,
                "segment does not start where the one before it ends"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Power cuts: frames are appended, some synced; then every 512-byte sector written since the
/// last sync is kept, zeroed or garbled at random, and the log reopened.
#[test]
fn simulated_power_cuts_keep_every_synced_frame() {
    let base = seed();
    let (mut cut_trials, mut lost_frames) = (0, 0);
    for trial in 0..40u64 {
        let mut rng = DemoRng::new(base.wrapping_add(trial.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 0).unwrap();
        let mut written = Vec::new();
        let (mut synced_frames, mut synced_bytes) = (0usize, 0u64);
        for _ in 0..30 + rng.below(30) {
            let f = frame(&mut rng, log.next_position(), 6, 300);
            log.append(&f).unwrap();
            written.push(f);
            if rng.below(3) == 0 {
                log.sync().unwrap();
                synced_frames = written.len();
                synced_bytes = last_segment_used(dir.path());
            }
        }
        let floor = written
            .get(synced_frames.wrapping_sub(1))
            .map_or(1, |f| f.end_position());
        // Rotation syncs, so the unsynced frames are all in the last segment; if the last
        // sync was in an earlier segment, everything in the last one is unsynced.
        let last = segment_files(dir.path()).pop().unwrap();
        let last_first: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let unsynced_from = if floor > last_first { synced_bytes } else { 0 };
        drop(log);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last)
            .unwrap();
        let len = file.metadata().unwrap().len();
        let mut sector = unsynced_from / 512 * 512;
        while sector < len {
            let n = 512.min(len - sector) as usize;
            let mut bytes = vec![0u8; n];
            file.read_exact_at(&mut bytes, sector).unwrap();
            let keep_from = unsynced_from.saturating_sub(sector) as usize;
            match rng.below(3) {
                0 => {}
                1 => bytes[keep_from..].fill(0),
                _ => bytes[keep_from..]
                    .iter_mut()
                    .for_each(|b| *b = rng.next_u64() as u8),
            }
            file.write_all_at(&bytes, sector).unwrap();
            sector += 512;
        }
        drop(file);

        let (log, report) = SegmentLog::open(dir.path(), SMALL_SEGMENT_BYTES, floor, 1)
            .unwrap_or_else(|e| panic!("trial {trial}: the log did not reopen: {e}"));
        cut_trials += usize::from(report.cut.is_some());
        let read = all_frames(&log);
        lost_frames += written.len() - read.len();
        assert!(
            read.len() >= synced_frames && read[..] == written[..read.len()],
            "trial {trial}: {} frames read, {synced_frames} synced, {} written; not a prefix",
            read.len(),
            written.len()
        );
        // And it stays that way: a second open changes nothing.
        drop(log);
        let (again, report) = SegmentLog::open(dir.path(), SMALL_SEGMENT_BYTES, floor, 1).unwrap();
        assert_eq!(report.cut, None, "trial {trial}");
        assert_eq!(all_frames(&again), read, "trial {trial}");
    }
    println!("40 trials: {cut_trials} cut a torn tail, {lost_frames} unsynced frames lost in all");
    assert!(
        cut_trials > 0 && lost_frames > 0,
        "the cuts must have torn something"
    );
}

/// Bytes of frames in the last segment (how far its non-zero prefix reaches), read back from
/// the file: the frames end where the zeroes begin.
fn last_segment_used(dir: &Path) -> u64 {
    let last = segment_files(dir).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let (mut at, mut used) = (0usize, 0u64);
    while at + FRAME_HEADER_BYTES <= bytes.len() {
        let header = &bytes[at..at + FRAME_HEADER_BYTES];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let body = u32::from_le_bytes(header[24..28].try_into().unwrap()) as usize;
        at += FRAME_HEADER_BYTES + body;
        used = at as u64;
    }
    used
}

// ---- The index over the log (`LogIndex`): heads from frames, streams read backwards. ----

use evershard_engine::seglog::{stored_head, LogHead, LogIndex, LogIndexError};
use evershard_engine::{AtRest, Record, RecordError, StreamId};

/// The stored bytes of event `sequence` of `stream` at `position`, chained to `prev_hash`.
fn event_bytes(stream: &StreamId, sequence: u64, position: u64, prev_hash: [u8; 32]) -> Vec<u8> {
    Record {
        sequence,
        global_position: position,
        timestamp: chrono::DateTime::from_timestamp_micros(1_767_225_600_000_000 + position as i64)
            .unwrap(),
        event_id: uuid::Uuid::from_u128(position as u128),
        correlation_id: uuid::Uuid::from_u128(7),
        causation_id: None,
        prev_hash,
        aggregate_type: stream.aggregate_type.clone(),
        aggregate_id: stream.aggregate_id.clone(),
        event_type: "Happened".into(),
        event_version: "1".into(),
        source: "seglog-test".into(),
        user_id: None,
        session_id: None,
        audit_context: None,
        at_rest: AtRest::Plain,
        payload: vec![sequence as u8; 20],
    }
    .encode()
}

fn stream(i: u64) -> StreamId {
    StreamId {
        aggregate_type: "ProductStock".into(),
        aggregate_id: format!("sku-{i}"),
    }
}

/// The test's own record of every stream: (position, bytes) of each event, oldest first,
/// and the address of each stream's last record.
#[derive(Default)]
struct Model {
    events: std::collections::HashMap<u64, Vec<(u64, Vec<u8>)>>,
    last_address: std::collections::HashMap<u64, u64>,
}

/// Appends `frames` frames of 1..=5 events of random streams (of `streams`), synced, and
/// applies each to `index`, checkpointing every `checkpoint_every` frames. Pointers to a
/// predecessor in the same frame are filled in after reserving the frame's place, as the
/// committer is to do.
fn write_events(
    log: &mut SegmentLog,
    index: &mut LogIndex,
    db: &sled::Db,
    model: &mut Model,
    rng: &mut DemoRng,
    (frames, streams, checkpoint_every): (usize, u64, usize),
) {
    for f in 0..frames {
        let first = log.next_position();
        let mut picks = Vec::new();
        let mut records = Vec::new();
        for i in 0..1 + rng.below(5) {
            let s = rng.below(streams);
            let events = model.events.entry(s).or_default();
            let prev_hash = events
                .last()
                .map_or([0u8; 32], |(_, b)| evershard_engine::record::hash(b));
            let position = first + i;
            let bytes = event_bytes(&stream(s), events.len() as u64 + 1, position, prev_hash);
            events.push((position, bytes.clone()));
            picks.push(s);
            records.push(FrameRecord {
                previous_address: 0,
                bytes,
            });
        }
        let mut frame = Frame {
            first_position: first,
            records,
            writes: vec![],
        };
        let address = log.reserve(&frame).unwrap();
        let record_addresses = frame.record_addresses(address);
        for ((record, s), record_address) in
            frame.records.iter_mut().zip(&picks).zip(record_addresses)
        {
            record.previous_address = model.last_address.insert(*s, record_address).unwrap_or(0);
        }
        assert_eq!(
            log.append(&frame).unwrap(),
            address,
            "written where reserved"
        );
        log.sync().unwrap();
        index.apply(db, address, &frame).unwrap();
        if (f + 1) % checkpoint_every == 0 {
            index.checkpoint(db).unwrap();
        }
    }
}

fn assert_index_matches(index: &LogIndex, db: &sled::Db, log: &SegmentLog, model: &Model) {
    for (s, events) in &model.events {
        let (position, bytes) = events.last().unwrap();
        let head = index.head(db, &stream(*s)).unwrap();
        assert_eq!(
            head,
            Some(LogHead {
                sequence: events.len() as u64,
                position: *position,
                address: model.last_address[s],
                hash: evershard_engine::record::hash(bytes),
            }),
            "head of sku-{s}"
        );
        // The lock-free way readers take: the index's moved head, else sled's.
        let latest = index.latest_head(&stream(*s));
        let split = match latest {
            Some(h) => Some(h),
            None => stored_head(db, &stream(*s)).unwrap(),
        };
        assert_eq!(split, head, "sku-{s} read as the index's or sled's head");
        assert_eq!(&index.read_stream(db, log, &stream(*s), 1).unwrap(), events);
        let from = 1 + events.len() as u64 / 2;
        assert_eq!(
            index.read_stream(db, log, &stream(*s), from).unwrap(),
            events[from as usize - 1..],
            "sku-{s} from sequence {from}"
        );
    }
    assert_eq!(index.head(db, &stream(999_999)).unwrap(), None);
    assert!(index
        .read_stream(db, log, &stream(999_999), 1)
        .unwrap()
        .is_empty());
}

/// The sled database the heads are checkpointed to, under `dir`.
fn index_db(dir: &Path) -> sled::Db {
    sled::Config::new().path(dir.join("index")).open().unwrap()
}

/// What the index tests start from: a seeded generator, the sled database under `dir`, an
/// empty log of 64 KiB segments in `dir/<name>`, its index, and an empty model.
struct IndexFixture {
    rng: DemoRng,
    db: sled::Db,
    log: SegmentLog,
    index: LogIndex,
    model: Model,
}

fn index_fixture(dir: &Path, name: &str) -> IndexFixture {
    let db = index_db(dir);
    let (log, _) = SegmentLog::open(&dir.join(name), 64 * 1024, 0, 1).unwrap();
    let index = LogIndex::open(&db, &log).unwrap();
    IndexFixture {
        rng: DemoRng::new(seed()),
        db,
        log,
        index,
        model: Model::default(),
    }
}

#[test]
fn heads_come_from_the_frames_and_streams_read_back_along_their_pointers() {
    let dir = tempfile::tempdir().unwrap();
    let IndexFixture {
        mut rng,
        db,
        mut log,
        mut index,
        mut model,
    } = index_fixture(dir.path(), "log");
    let events = (300, 20, 37);
    write_events(&mut log, &mut index, &db, &mut model, &mut rng, events);
    assert!(
        index.dirty_streams() > 0,
        "some heads moved after the last checkpoint"
    );
    assert_index_matches(&index, &db, &log, &model);

    // A restart without a checkpoint of the last frames: opening applies them again.
    let applied = index.applied();
    drop(index);
    let index = LogIndex::open(&db, &log).unwrap();
    assert_eq!(index.applied(), applied);
    assert_index_matches(&index, &db, &log, &model);

    // An index that lost every checkpoint (a new sled) is rebuilt from the whole log.
    let fresh = sled::Config::new().temporary(true).open().unwrap();
    let rebuilt = LogIndex::open(&fresh, &log).unwrap();
    assert_eq!(rebuilt.applied(), applied);
    assert_index_matches(&rebuilt, &fresh, &log, &model);
}

#[test]
fn a_checkpoint_written_while_heads_move_keeps_every_head_readable() {
    let dir = tempfile::tempdir().unwrap();
    let IndexFixture {
        mut rng,
        db,
        mut log,
        mut index,
        mut model,
    } = index_fixture(dir.path(), "log");
    let never = usize::MAX;
    let events = (80, 12, never);
    write_events(&mut log, &mut index, &db, &mut model, &mut rng, events);
    // The syncer's way: take the cut, let frames move heads, write the cut without the
    // index, then finish. Heads stay readable at every step, and a reopen after each step
    // (a crash) rebuilds them.
    let cut = index.begin_checkpoint();
    let events = (40, 12, never);
    write_events(&mut log, &mut index, &db, &mut model, &mut rng, events);
    assert_index_matches(&index, &db, &log, &model);
    cut.write(&db).unwrap();
    assert_index_matches(&index, &db, &log, &model);
    assert_index_matches(&LogIndex::open(&db, &log).unwrap(), &db, &log, &model);
    // Finished as the checkpoint thread does: the cursor, then the heads forgotten a few at
    // a time, frames moving heads in between.
    let heads: Vec<_> = index.finish_checkpoint_cursor(cut).into_iter().collect();
    for part in heads.chunks(5) {
        index.forget_checkpointed(part.iter().cloned());
        assert_index_matches(&index, &db, &log, &model);
        let events = (3, 12, never);
        write_events(&mut log, &mut index, &db, &mut model, &mut rng, events);
    }
    assert_index_matches(&index, &db, &log, &model);

    // A crash in the middle of writing a cut (its heads go in one by one, the cursor last):
    // sled keeps heads ahead of the stored cursor. Reopening passes over the records those
    // heads cover and applies the rest.
    let events = (40, 12, never);
    write_events(&mut log, &mut index, &db, &mut model, &mut rng, events);
    let cursor_key = b"mlog-applied";
    let old_cursor = db.get(cursor_key).unwrap().expect("a checkpointed cursor");
    let cut = index.begin_checkpoint();
    cut.write(&db).unwrap();
    db.insert(cursor_key, old_cursor).unwrap();
    assert_index_matches(&LogIndex::open(&db, &log).unwrap(), &db, &log, &model);
    index.finish_checkpoint(cut);

    write_events(&mut log, &mut index, &db, &mut model, &mut rng, events);
    index.checkpoint(&db).unwrap();
    assert_index_matches(&index, &db, &log, &model);
    assert_eq!(
        index.dirty_streams(),
        0,
        "a checkpoint of every synced head"
    );
    let reopened = LogIndex::open(&db, &log).unwrap();
    assert_eq!(reopened.applied(), index.applied());
    assert_index_matches(&reopened, &db, &log, &model);
}

#[test]
fn a_record_that_does_not_follow_its_head_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().temporary(true).open().unwrap();
    let (mut log, _) = SegmentLog::open(dir.path(), 64 * 1024, 0, 1).unwrap();
    let mut index = LogIndex::open(&db, &log).unwrap();
    let s = stream(1);
    let first = event_bytes(&s, 1, 1, [0; 32]);
    let frame = Frame {
        first_position: 1,
        records: vec![FrameRecord {
            previous_address: 0,
            bytes: first.clone(),
        }],
        writes: vec![],
    };
    let at = log.append(&frame).unwrap();
    log.sync().unwrap();
    index.apply(&db, at, &frame).unwrap();
    let first_address = frame.record_addresses(at)[0];
    let hash = evershard_engine::record::hash(&first);
    let cases: [(&str, u64, u64, [u8; 32]); 3] = [
        (
            "its sequence is not the head's next",
            3,
            first_address,
            hash,
        ),
        ("its previous address is not the head's", 2, 0, hash),
        (
            "its previous hash is not the head's",
            2,
            first_address,
            [9; 32],
        ),
    ];
    for (reason, sequence, previous_address, prev_hash) in cases {
        let bad = Frame {
            first_position: 2,
            records: vec![FrameRecord {
                previous_address,
                bytes: event_bytes(&s, sequence, 2, prev_hash),
            }],
            writes: vec![],
        };
        match index.apply(&db, at + frame.encoded_len() as u64, &bad) {
            Err(LogIndexError::Chain {
                reason: r,
                position: 2,
                ..
            }) => assert_eq!(r, reason),
            // A broken hash link is its own variant, typed as the journal reports it.
            Err(LogIndexError::HashChain {
                sequence: 2,
                position: 2,
                ..
            }) => assert_eq!(reason, "its previous hash is not the head's"),
            other => panic!("{reason}: expected a chain error, got {other:?}"),
        }
    }
    assert!(matches!(
        index.apply(&db, at, &frame),
        Err(LogIndexError::Gap {
            expected: 2,
            got: 1
        })
    ));
    // A log holding such a record is refused when an index is built from it.
    let bad = Frame {
        first_position: 2,
        records: vec![FrameRecord {
            previous_address: 0,
            bytes: event_bytes(&s, 2, 2, hash),
        }],
        writes: vec![],
    };
    log.append(&bad).unwrap();
    log.sync().unwrap();
    let fresh = sled::Config::new().temporary(true).open().unwrap();
    assert!(matches!(
        LogIndex::open(&fresh, &log),
        Err(LogIndexError::Chain { position: 2, .. })
    ));
}

/// A stream read back through [`LogIndex::read_stream`] (the chain checked record by record)
/// and twice through [`LogIndex::fold_stream`], the fold counting the records: `folded` with
/// the chain checked beside it (on a second thread for a read of more than 512 records),
/// `folded_unchecked` by a fold that leaves the check to `fold_stream`.
struct Reads {
    read: Result<Vec<(u64, Vec<u8>)>, LogIndexError>,
    folded: Result<usize, LogIndexError>,
    folded_unchecked: Result<usize, LogIndexError>,
}

/// Reads back the stream of the first record of frame `changed_frame(frame count)`, from a
/// second log with the same frames but that record's entry changed by `change` (its length
/// kept, so every address stays as it was): the checkpointed heads no longer match it.
/// `shape` is `write_events`'s frames and streams. The reads start at sequence 1, or at the
/// changed record's with `from_changed`.
fn read_with_a_changed_record(
    shape: (usize, u64),
    changed_frame: impl Fn(usize) -> usize,
    change: impl Fn(&mut FrameRecord),
    from_changed: bool,
) -> Reads {
    let dir = tempfile::tempdir().unwrap();
    let IndexFixture {
        mut rng,
        db,
        mut log,
        mut index,
        mut model,
    } = index_fixture(dir.path(), "a");
    write_events(
        &mut log,
        &mut index,
        &db,
        &mut model,
        &mut rng,
        (shape.0, shape.1, 1),
    );
    let (mut other, _) = SegmentLog::open(&dir.path().join("b"), 64 * 1024, 0, 1).unwrap();
    let frames: Vec<(u64, Frame)> = log.frames_from(1).collect::<Result<_, _>>().unwrap();
    let changed = changed_frame(frames.len());
    let changed_record = Record::decode(&frames[changed].1.records[0].bytes).unwrap();
    let changed_id = changed_record.aggregate_id;
    let from = if from_changed {
        changed_record.sequence
    } else {
        1
    };
    for (i, (address, mut frame)) in frames.into_iter().enumerate() {
        if i == changed {
            change(&mut frame.records[0]);
        }
        assert_eq!(other.append(&frame).unwrap(), address);
    }
    other.sync().unwrap();
    let index = LogIndex::open(&db, &other).unwrap();
    let s = StreamId {
        aggregate_type: "ProductStock".into(),
        aggregate_id: changed_id,
    };
    Reads {
        read: index.read_stream(&db, &other, &s, from),
        folded: index.fold_stream(&db, &other, &s, from, |views, check| {
            check.beside(|| views.len())
        }),
        folded_unchecked: index.fold_stream(&db, &other, &s, from, |views, _| views.len()),
    }
}

/// Another payload, re-encoded: the record's own checks pass, its hash is not the one the
/// record after it (or the head) names.
fn reencode_another_payload(entry: &mut FrameRecord) {
    let mut record = Record::decode(&entry.bytes).unwrap();
    record.payload = vec![0xEE; record.payload.len()];
    entry.bytes = record.encode();
}

/// One byte of the payload flipped, the CRC left as it was: the hash does not match either,
/// but the record itself is what is wrong.
fn flip_the_last_byte(entry: &mut FrameRecord) {
    let last = entry.bytes.len() - 1;
    entry.bytes[last] ^= 0xFF;
}

#[test]
fn a_stream_read_checks_each_record_against_the_hash_its_successor_names() {
    let reads = read_with_a_changed_record((40, 3), |n| n - 1, reencode_another_payload, false);
    match reads.read {
        Err(LogIndexError::HashChain { stream, .. }) => {
            assert_eq!(stream.aggregate_type, "ProductStock")
        }
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[test]
fn a_stream_read_names_a_damaged_record_damaged_not_a_broken_chain() {
    // The read checks the chain first and skips the CRC of bytes it vouches for; a mismatch
    // gets the full check.
    let reads = read_with_a_changed_record((40, 3), |n| n - 1, flip_the_last_byte, false);
    match reads.read {
        Err(LogIndexError::Damaged {
            source: RecordError::Checksum { .. },
            ..
        }) => {}
        other => panic!("expected a damaged record, got {other:?}"),
    }
}

#[test]
fn a_long_read_folded_while_its_chain_is_checked_names_what_a_read_names() {
    // One stream of 600 frames of 1 to 5 records: well over the 512 records from which the
    // chain is checked on a second thread (on a machine with more than one CPU). Intact, the fold sees every record; a record in
    // the middle changed either way, the fold's answer is the read's error, not its count.
    let reads = read_with_a_changed_record((600, 1), |n| n / 2, |_| {}, false);
    let records = reads.read.unwrap().len();
    assert!(records > 512, "{records} records");
    assert_eq!(reads.folded.unwrap(), records);
    assert_eq!(reads.folded_unchecked.unwrap(), records);
    for (change, what) in [
        (
            reencode_another_payload as fn(&mut FrameRecord),
            "HashChain",
        ),
        (flip_the_last_byte, "Damaged"),
    ] {
        let reads = read_with_a_changed_record((600, 1), |n| n / 2, change, false);
        let read = format!("{:?}", reads.read.unwrap_err());
        let folded = format!("{:?}", reads.folded.unwrap_err());
        let folded_unchecked = format!("{:?}", reads.folded_unchecked.unwrap_err());
        assert!(read.starts_with(what), "{read}");
        assert_eq!(folded, read);
        assert_eq!(folded_unchecked, read);
    }
}

#[test]
fn a_read_from_a_record_whose_pointer_does_not_go_back_names_the_chain() {
    // The pointer lies outside the bytes the chain vouches for: a read that starts at that
    // record still checks it (unless it is the stream's first), long reads and short ones,
    // folded or not.
    for shape in [(40, 1), (600, 1)] {
        let reads =
            read_with_a_changed_record(shape, |n| n / 2, |entry| entry.previous_address = 0, true);
        let error = |r: Result<usize, LogIndexError>| format!("{:?}", r.expect_err("an error"));
        let read = error(reads.read.map(|records| records.len()));
        assert!(
            read.starts_with("Chain") && read.contains("does not go back"),
            "{read}"
        );
        assert_eq!(error(reads.folded), read);
        assert_eq!(error(reads.folded_unchecked), read);
    }
}
