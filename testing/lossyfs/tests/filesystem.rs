//! The filesystem through the kernel: what a process writes through the mount is lost at a
//! power cut unless the file (for content) or its directory (for names) was fsynced, and
//! `flock` excludes a second holder as on a disk. Skips, with a printed reason, where FUSE
//! cannot be mounted (unless `EVERSHARD_REQUIRE_FUSE=1`, as CI sets, makes that a failure).

use evershard_lossyfs::{fuse_or_skip, LossyFs, TornWrites};
// flock(2), as sled takes it on its `db` file.
use fs2::FileExt as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

#[test]
fn only_synced_content_and_names_survive_a_power_cut() {
    if !fuse_or_skip("the filesystem test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path();
    let fs = LossyFs::new();
    let mount = fs.mount(at).unwrap();

    std::fs::create_dir(at.join("d")).unwrap();
    File::open(at).unwrap().sync_all().unwrap(); // "d" is durable
    let mut synced = File::create(at.join("d/synced")).unwrap();
    synced.write_all(b"durable").unwrap();
    synced.sync_data().unwrap();
    synced.write_all_at(b" and lost", 7).unwrap();
    let mut unsynced_name = File::create(at.join("d/unnamed")).unwrap();
    unsynced_name
        .write_all(b"content synced, name not")
        .unwrap();
    unsynced_name.sync_all().unwrap();
    File::create(at.join("d/empty")).unwrap();
    File::open(at.join("d")).unwrap().sync_all().unwrap(); // names so far are durable
    std::fs::write(at.join("d/empty"), b"never synced").unwrap();
    std::fs::rename(at.join("d/synced"), at.join("d/renamed")).unwrap();
    drop((synced, unsynced_name));

    mount.unmount().unwrap();
    fs.power_loss(TornWrites::LoseAll);
    let mount = fs.mount(at).unwrap();
    assert_eq!(std::fs::read(at.join("d/synced")).unwrap(), b"durable");
    assert!(
        !at.join("d/renamed").exists(),
        "an unsynced rename survived"
    );
    assert_eq!(
        std::fs::read(at.join("d/unnamed")).unwrap(),
        b"content synced, name not",
        "the name was synced by the directory fsync after it"
    );
    assert_eq!(std::fs::read(at.join("d/empty")).unwrap(), b"");
    mount.unmount().unwrap();
}

#[test]
fn flock_excludes_a_second_holder() {
    if !fuse_or_skip("the filesystem test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fs = LossyFs::new();
    let mount = fs.mount(tmp.path()).unwrap();
    let path = tmp.path().join("db");
    let a = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    let b = OpenOptions::new().write(true).open(&path).unwrap();
    a.try_lock_exclusive().unwrap();
    assert!(
        b.try_lock_exclusive().is_err(),
        "a second flock on the same file succeeded"
    );
    drop(a);
    b.try_lock_exclusive().unwrap();
    drop(b);
    mount.unmount().unwrap();
}
