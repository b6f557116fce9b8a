//! Snapshots are written off the command path: an entity hands a clone of its state to this
//! thread, which encodes, stores and prunes. If the queue is full the snapshot is skipped;
//! the next multiple of `every_events` takes one again, and recovery never needs one.

use crate::journal::{JournalWriter, StreamId};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Snapshots waiting to be written before new ones are skipped. Each holds a clone of its
/// aggregate's state until it is encoded, so this bounds their memory: 256 states (of
/// ProductStock with 1,000 open reservations, about 0.2 MB each: 50 MB). It was 1,024, and
/// the clone was made before a full queue refused it (found by review, 2026-11-28).
const SNAPSHOT_QUEUE_JOBS_MAX: usize = 256;

pub(crate) struct SnapshotJob {
    pub stream: StreamId,
    pub sequence: u64,
    /// The global position of the snapshot's last event: it is written only once the
    /// synced watermark covers it.
    pub last_position: u64,
    pub encode: Box<dyn FnOnce() -> Vec<u8> + Send>,
}

/// How long a snapshot waits for the synced watermark to cover its last event before it is
/// skipped (a journal that stopped syncing; the next one is taken again).
const SNAPSHOT_SYNCED_WAIT_MS_MAX: u64 = 10_000;

#[derive(Debug)]
pub(crate) struct Snapshotter {
    tx: Mutex<Option<SyncSender<SnapshotJob>>>,
    /// Jobs handed over and not yet done: read before a state is cloned for a new one.
    queued: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Snapshotter {
    pub fn start(journal: JournalWriter, keep: usize) -> std::io::Result<Snapshotter> {
        // The policy's fields are public: a `keep` of 0 would prune each snapshot as soon as
        // it is written (found by review). At least the one just written stays.
        let keep = keep.max(1);
        let (tx, rx) = sync_channel::<SnapshotJob>(SNAPSHOT_QUEUE_JOBS_MAX);
        let queued = Arc::new(AtomicUsize::new(0));
        let done = queued.clone();
        let thread = std::thread::Builder::new().name("evershard-snapshots".into()).spawn(move || {
            for job in rx {
                // Counted out when taken: its state is dropped at the end of this turn.
                done.fetch_sub(1, Ordering::AcqRel);
                // Never a snapshot of events a crash could still take: in buffered mode an
                // entity hands it over at acknowledgement, before the segment log's sync, and
                // sled may keep it while a power cut takes the events; later events at the
                // same sequences would then recover from the lost history's state (found by
                // review, 2026-11-28). In durable mode the watermark covers it already.
                let deadline = std::time::Instant::now()
                    + std::time::Duration::from_millis(SNAPSHOT_SYNCED_WAIT_MS_MAX);
                while journal.synced_position() < job.last_position {
                    if std::time::Instant::now() >= deadline || journal.is_poisoned() {
                        break;
                    }
                    journal.wait_synced(
                        job.last_position - 1,
                        std::time::Duration::from_millis(50),
                    );
                }
                if journal.synced_position() < job.last_position {
                    tracing::debug!(stream = %job.stream, sequence = job.sequence, "snapshot skipped: its events are not durable yet");
                    continue;
                }
                // A panic while encoding or storing (a bug, or a failpoint) loses this
                // snapshot only: the thread goes on with the next one.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let bytes = (job.encode)();
                    journal
                        .put_snapshot(&job.stream, job.sequence, &bytes)
                        .and_then(|()| journal.prune_snapshots(&job.stream, keep))
                }));
                match result {
                    Ok(Ok(_)) => tracing::debug!(stream = %job.stream, sequence = job.sequence, "snapshot taken"),
                    Ok(Err(e)) => tracing::warn!(stream = %job.stream, sequence = job.sequence, %e, "snapshot not written"),
                    Err(_) => tracing::warn!(stream = %job.stream, sequence = job.sequence, "snapshot not written: its writer panicked"),
                }
            }
        })?;
        Ok(Snapshotter {
            tx: Mutex::new(Some(tx)),
            queued,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// False when the queue is full: the caller skips this snapshot without cloning its
    /// state for it.
    pub fn has_room(&self) -> bool {
        self.queued.load(Ordering::Acquire) < SNAPSHOT_QUEUE_JOBS_MAX
    }

    pub fn submit(&self, job: SnapshotJob) {
        let guard = self.tx.lock().expect("snapshotter lock");
        let Some(tx) = guard.as_ref() else { return };
        // Counted in before the send, so the writer's count out never runs first.
        self.queued.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(stream = %job.stream, sequence = job.sequence, "snapshot queue full; skipped")
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Writes what is queued, then stops the thread.
    pub fn stop(&self) {
        self.tx.lock().expect("snapshotter lock").take();
        if let Some(t) = self.thread.lock().expect("snapshotter lock").take() {
            let _ = t.join();
        }
    }
}
