//! `lossyfs`: a FUSE filesystem for crash tests that can fail.
//!
//! A process killed with SIGKILL leaves the kernel's page cache intact, so a crash test
//! built on kills alone passes even when a store forgets to fsync. This filesystem keeps
//! every write in memory and makes it durable only when the file is fsynced (or
//! fdatasynced), and every directory entry only when its directory is fsynced. A test
//! kills its writer, unmounts, calls [`LossyFs::power_loss`] — everything not synced is
//! dropped, and with [`TornWrites::RandomPrefix`] a random prefix of each unsynced write
//! survives, as a disk cache may have written part of it — and mounts the durable image
//! again. The idea is LazyFS's; see `model` for the exact rules.
//!
//! ```no_run
//! use evershard_lossyfs::{LossyFs, TornWrites};
//! let fs = LossyFs::new();
//! let mount = fs.mount("/tmp/mnt").unwrap();
//! // ... a child process writes under /tmp/mnt and is killed ...
//! mount.unmount().unwrap();
//! fs.power_loss(TornWrites::RandomPrefix { seed: 42 });
//! let mount = fs.mount("/tmp/mnt").unwrap(); // the durable image
//! # drop(mount);
//! ```

mod fuse;
pub mod model;

pub use model::{Stats, TornWrites};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One in-memory filesystem (its state outlives its mounts). Cheap to clone: clones share
/// the state.
#[derive(Clone, Debug, Default)]
pub struct LossyFs {
    state: Arc<Mutex<model::State>>,
}

/// A mounted [`LossyFs`]; unmounts on drop (errors ignored) or with [`Mounted::unmount`].
#[derive(Debug)]
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
}

/// How long [`Mounted::unmount`] retries while the kernel still reports the mount busy
/// (a killed process's files are closed asynchronously by its exit).
const UNMOUNT_BUSY_WAIT_MS_MAX: u64 = 10_000;

impl LossyFs {
    pub fn new() -> LossyFs {
        LossyFs::default()
    }

    /// Mounts the filesystem at `at` (an existing, empty directory) in a background thread
    /// of this process.
    pub fn mount(&self, at: impl AsRef<Path>) -> io::Result<Mounted> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("lossyfs".into()),
            fuser::MountOption::Subtype("lossyfs".into()),
        ];
        let fs = fuse::Fs {
            state: self.state.clone(),
        };
        let session = fuser::spawn_mount(fs, at.as_ref(), &config)?;
        Ok(Mounted {
            session: Some(session),
            path: at.as_ref().to_path_buf(),
        })
    }

    /// The power cut. Call it while unmounted, after every process that wrote is gone: the
    /// files fall back to what was synced (plus what `torn` lets survive).
    pub fn power_loss(&self, torn: TornWrites) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .power_loss(torn);
    }

    /// What the filesystem has seen so far.
    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stats
    }
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and waits for the filesystem thread to end, so that no request of an old
    /// process is still being served when the power is cut.
    pub fn unmount(mut self) -> io::Result<()> {
        let session = self.session.take().expect("mounted");
        // fuser's unmount is a plain umount(2): retry while a dying process still holds files.
        let mut waited_ms = 0;
        loop {
            let status = std::process::Command::new("umount")
                .arg(&self.path)
                .stderr(std::process::Stdio::null())
                .status();
            match status {
                // Unmounted: the session thread sees the device close and ends.
                Ok(s) if s.success() => return session.join(),
                _ if waited_ms < UNMOUNT_BUSY_WAIT_MS_MAX => {
                    std::thread::sleep(Duration::from_millis(20));
                    waited_ms += 20;
                }
                // Let fuser try, and report its error.
                _ => return session.umount_and_join(),
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}

/// For a test that needs FUSE: true when it can be mounted; otherwise prints why and
/// returns false (the test skips), unless `EVERSHARD_REQUIRE_FUSE=1` (as CI sets) makes
/// that a panic. `what` names the test that did not run.
pub fn fuse_or_skip(what: &str) -> bool {
    match fuse_usable() {
        Ok(()) => true,
        Err(why) if std::env::var("EVERSHARD_REQUIRE_FUSE").as_deref() == Ok("1") => {
            panic!("FUSE is required (EVERSHARD_REQUIRE_FUSE=1) but unusable: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: FUSE is not usable here ({why}); {what} did not run");
            false
        }
    }
}

/// Whether this machine can mount a FUSE filesystem here: `/dev/fuse` opens and a mount
/// (as root directly, otherwise through `fusermount3`) succeeds. `Err` says why not.
pub fn fuse_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
    // One directory per probe: tests probing in parallel threads must not share a mount point.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lossyfs-probe-{}-{probe}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = LossyFs::new()
        .mount(&dir)
        .map_err(|e| format!("cannot mount a FUSE filesystem: {e}"))
        .and_then(|m| {
            std::fs::write(dir.join("probe"), b"x")
                .map_err(|e| format!("cannot write into the FUSE mount: {e}"))?;
            m.unmount().map_err(|e| format!("cannot unmount: {e}"))
        });
    let _ = std::fs::remove_dir(&dir);
    result
}
