//! A background thread that follows the journal's durable global order in batches: the shape
//! the topic indexer and the Merkle tree maintainer share.
//!
//! It waits for the syncer's durable watermark to move past what it covers, hands the new
//! positions to its [`Follow`] in steps of at most [`Follow::BATCH_EVENTS_MAX`], reports the
//! last error (a stuck follower never skips: skipping would change offsets or tree heads),
//! and stops either at once (the engine dropped) or after covering everything durable
//! (shutdown).

use crate::journal::{Journal, JournalWriter};
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a follower waits on the watermark before it looks at its stop flag again (a
/// wakeup normally comes first), and how long it waits after a failed step before retrying.
const FOLLOWER_WAIT_MS: u64 = 200;

/// What a follower does with the positions it follows.
pub(crate) trait Follow: Send + 'static {
    type Error: Display;
    /// The thread's name and what its log lines call it.
    const NAME: &'static str;
    /// Positions one step covers at most.
    const BATCH_EVENTS_MAX: u64;
    /// Fewer new durable positions than this are left to accumulate for up to
    /// [`Follow::STEP_WAIT_MS`] before a step covers them (never when stopping): a follower
    /// with no reader waiting on it then wakes and writes a few times per second rather than
    /// once per group commit. The default (1, 0 ms) steps on every wakeup.
    const STEP_EVENTS_MIN: u64 = 1;
    /// How long new positions wait for [`Follow::STEP_EVENTS_MIN`] at most.
    const STEP_WAIT_MS: u64 = 0;
    /// The last global position covered.
    fn covered(&self) -> u64;
    /// Covers `covered() + 1 ..= to` (durably committed by one write: a batch, or a cursor
    /// written after the rest) and publishes the progress.
    fn step(&mut self, writer: &JournalWriter, to: u64) -> Result<(), Self::Error>;
    /// After a failed step: undoes what the step may have half-done in memory. True when the
    /// error means the journal is gone, so the thread stops.
    fn recover(&mut self, writer: &JournalWriter, error: &Self::Error) -> bool;
    /// The outcome of the last step: `None` after a success, the error text after a failure.
    fn report(&self, error: Option<String>);
}

#[derive(Debug, Default)]
struct Flags {
    stop: AtomicBool,
    /// With `stop`: cover everything durable first (shutdown), or leave at once (drop).
    drain: AtomicBool,
    /// A test holds the follower where it is ([`Follower::hold_for_tests`]).
    #[cfg(feature = "fault-injection")]
    held: AtomicBool,
}

/// The running thread of one [`Follow`].
#[derive(Debug)]
pub(crate) struct Follower {
    flags: Arc<Flags>,
    journal: Journal,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Follower {
    pub(crate) fn start<F: Follow>(writer: JournalWriter, follow: F) -> std::io::Result<Self> {
        let flags = Arc::new(Flags::default());
        let journal = writer.reader().clone();
        let thread_flags = flags.clone();
        let thread = std::thread::Builder::new()
            .name(F::NAME.into())
            .spawn(move || run(writer, follow, &thread_flags))?;
        Ok(Follower {
            flags,
            journal,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Covers everything durable, then stops the thread and waits for it. Blocking.
    pub(crate) fn drain_and_stop(&self) {
        self.flags.drain.store(true, Ordering::Release);
        self.stop_now();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// Keeps the thread from covering anything new while `held` (it still stops when told):
    /// for tests of readers that find the follower behind the journal.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn hold_for_tests(&self, held: bool) {
        self.flags.held.store(held, Ordering::Release);
        self.journal.wake_durable_waiters();
    }

    /// Tells the thread to stop without waiting for it (the engine dropped).
    pub(crate) fn stop_now(&self) {
        self.flags.stop.store(true, Ordering::Release);
        self.journal.wake_durable_waiters();
    }
}

fn run<F: Follow>(writer: JournalWriter, mut follow: F, flags: &Flags) {
    let wait = Duration::from_millis(FOLLOWER_WAIT_MS);
    loop {
        let stopping = flags.stop.load(Ordering::Acquire);
        if stopping && !flags.drain.load(Ordering::Acquire) {
            return;
        }
        #[cfg(feature = "fault-injection")]
        if !stopping && flags.held.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let covered = follow.covered();
        let mut durable = if stopping {
            writer.synced_position()
        } else {
            writer.wait_synced(covered, wait)
        };
        if durable <= covered {
            if stopping {
                return;
            }
            continue;
        }
        if !stopping && durable - covered < F::STEP_EVENTS_MIN {
            // A sleep, not a wait on the watermark: the watermark wakes its waiters on every
            // group commit, which is what this avoids.
            std::thread::sleep(Duration::from_millis(F::STEP_WAIT_MS));
            durable = writer.synced_position();
        }
        // Checked again once `durable` is read: a hold set while this thread waited (its
        // wake-up may come before the wait starts) must keep the events committed after it
        // out of this step (a test holds, commits, and expects the index not to move).
        #[cfg(feature = "fault-injection")]
        if !stopping && flags.held.load(Ordering::Acquire) {
            continue;
        }
        let to = durable.min(covered + F::BATCH_EVENTS_MAX);
        match follow.step(&writer, to) {
            Ok(()) => {
                assert_eq!(
                    follow.covered(),
                    to,
                    "{}: a step covers what it was given",
                    F::NAME
                );
                follow.report(None);
            }
            Err(e) => {
                // A poisoned journal refuses every write until it is reopened (and sled
                // itself may fail reads after the I/O error that poisoned it): retrying
                // cannot succeed, so stop and say why, once. Waiters on this follower's
                // progress check the poison themselves (see `Engine::wait_indexed`).
                if writer.is_poisoned() {
                    let cause = writer.poison_cause().unwrap_or_default();
                    tracing::error!(error = %e, covered, %cause, "{} stopped: the journal refuses writes", F::NAME);
                    follow.report(Some(format!(
                        "stopped at position {covered}: the journal refuses writes ({cause})"
                    )));
                    return;
                }
                tracing::error!(error = %e, covered, "{} failed; retrying", F::NAME);
                follow.report(Some(e.to_string()));
                if follow.recover(&writer, &e) || stopping {
                    return;
                }
                std::thread::sleep(wait);
            }
        }
    }
}
