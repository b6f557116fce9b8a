//! A tmpfs mounted for one test: a filesystem of a chosen size that really runs out of space.
//!
//! Mounting needs root. Where it fails, [`SmallFs::mount`] prints why and returns `None` (the
//! test passes without checking anything), unless `EVERSHARD_REQUIRE_TMPFS` is set (`.ci/run`
//! sets it as root), which makes an impossible mount a failure: CI must not skip these tests
//! silently.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable that turns "cannot mount, skipped" into a test failure.
pub const REQUIRE_TMPFS_ENV: &str = "EVERSHARD_REQUIRE_TMPFS";

/// A tmpfs mounted for one test, unmounted when dropped.
#[derive(Debug)]
pub struct SmallFs {
    _root: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: "2m", "512k"), or says why it
    /// cannot.
    pub fn mount(size: &str) -> Option<SmallFs> {
        let root = tempfile::tempdir().expect("a temporary directory");
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt).expect("the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { _root: root, mnt }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os(REQUIRE_TMPFS_ENV).is_none(),
                    "{REQUIRE_TMPFS_ENV} is set but a tmpfs cannot be mounted: {why}"
                );
                println!("skipped: cannot mount a tmpfs here ({why})");
                None
            }
        }
    }

    /// The mounted filesystem's root.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Frees space the way an operator would: grows the filesystem to `size`.
    pub fn grow(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.mnt)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "remount: {out:?}");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).output();
    }
}
