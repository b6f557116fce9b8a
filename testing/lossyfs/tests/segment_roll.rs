//! A segment log that starts a new segment while the syncer has taken a sync and not yet run
//! it keeps the previous segment's frames across a power cut: the roll syncs that segment
//! itself. Before it did, `take_sync` had cleared the flag the roll looked at, the new
//! segment's name reached the disk with the next sync while the frames of the one before it
//! did not, and the log refused to open ("segment does not start where the one before it
//! ends"). Skips, with a printed reason, where FUSE cannot be mounted (unless
//! `EVERSHARD_REQUIRE_FUSE=1`, as CI sets).

use evershard_engine::seglog::{Frame, FrameRecord, SegmentLog};
use evershard_lossyfs::{fuse_or_skip, LossyFs, TornWrites};

/// Small segments, so that the third frame starts a second one.
const SEGMENT_BYTES: u64 = 4096;

/// One record of `bytes` bytes at `position`.
fn frame(position: u64, bytes: usize) -> Frame {
    Frame {
        first_position: position,
        records: vec![FrameRecord {
            previous_address: 0,
            bytes: vec![position as u8; bytes],
        }],
        writes: Vec::new(),
    }
}

#[test]
fn a_segment_roll_during_a_taken_sync_keeps_the_frames_before_it() {
    if !fuse_or_skip("the segment roll test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path();
    let fs = LossyFs::new();
    let mount = fs.mount(at).unwrap();
    let dir = at.join("log");
    {
        let (mut log, _) = SegmentLog::open(&dir, SEGMENT_BYTES, 0, 1).unwrap();
        log.append(&frame(1, 1000)).unwrap();
        log.sync().unwrap();
        // Acknowledged once the syncer's sync has run: taken, and not run before the cut.
        log.append(&frame(2, 1000)).unwrap();
        let taken = log.take_sync().unwrap();
        // Does not fit: the log starts the second segment.
        log.append(&frame(3, 3000)).unwrap();
        log.sync().unwrap();
        drop(taken);
    }
    mount.unmount().unwrap();
    fs.power_loss(TornWrites::LoseAll);
    let mount = fs.mount(at).unwrap();
    {
        let (log, _) = SegmentLog::open(&dir, SEGMENT_BYTES, 0, 1)
            .expect("the log after a power cut during a segment roll");
        let positions: Vec<u64> = log
            .frames_from(1)
            .map(|f| f.unwrap().1.first_position)
            .collect();
        assert_eq!(
            positions,
            [1, 2, 3],
            "frame 3 was synced, and the frames before it"
        );
    }
    mount.unmount().unwrap();
}
