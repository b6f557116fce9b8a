//! The filesystem's state, without FUSE: every file and directory keeps what a process sees
//! (*volatile*) apart from what would survive a power cut (*durable*).
//!
//! - A file's writes and size changes are volatile until the file is fsynced or
//!   fdatasynced; then its whole current content (size included) is durable.
//! - A directory's entries (create, mkdir, rename, unlink, rmdir) are volatile until the
//!   directory itself is fsynced. Syncing a file does not make its name durable, and
//!   syncing a directory does not make the content of its files durable.
//! - [`State::power_loss`] throws the volatile state away. What remains of each file is its
//!   durable content plus, when torn writes are on, a random prefix of each write that was
//!   never synced (seeded): a disk's cache may have written back any part of any page.
//!
//! Inodes are never freed: a file that was unlinked but is still named in its directory's
//! durable entries comes back after a power cut, with its durable content.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};

/// The root directory's inode (FUSE's convention).
pub const ROOT_INO: u64 = 1;

/// A file operation not yet synced, kept so that a power cut can replay part of it.
#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
pub struct FileData {
    pub volatile: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Debug)]
pub struct DirData {
    pub entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    pub parent: u64,
}

#[derive(Debug)]
pub enum Node {
    File(FileData),
    Dir(DirData),
}

/// Counters of what the filesystem saw, for test reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub bytes_written: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub power_losses: u64,
    /// Unsynced writes dropped whole by power cuts.
    pub writes_lost: u64,
    /// Unsynced writes of which only a prefix survived.
    pub writes_torn: u64,
    /// Unsynced writes that survived whole.
    pub writes_kept: u64,
    /// Directory entries that differed between volatile and durable at a power cut.
    pub dir_entries_reverted: u64,
}

/// What happens to unsynced writes at a power cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornWrites {
    /// Every unsynced write and size change is lost.
    LoseAll,
    /// Each unsynced write independently: lost (1/3), kept whole (1/3), or a random prefix
    /// kept (1/3); each unsynced size change is kept or lost (1/2). Seeded.
    RandomPrefix { seed: u64 },
}

#[derive(Debug)]
pub struct State {
    pub nodes: HashMap<u64, Node>,
    next_ino: u64,
    pub stats: Stats,
}

/// Errors as errno values, which the FUSE layer passes on.
pub type Errno = i32;

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> State {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node::Dir(DirData {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent: ROOT_INO,
            }),
        );
        State {
            nodes,
            next_ino: ROOT_INO + 1,
            stats: Stats::default(),
        }
    }

    pub fn dir(&self, ino: u64) -> Result<&DirData, Errno> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(libc_errno::ENOTDIR),
            None => Err(libc_errno::ENOENT),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirData, Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(libc_errno::ENOTDIR),
            None => Err(libc_errno::ENOENT),
        }
    }

    pub fn file(&self, ino: u64) -> Result<&FileData, Errno> {
        match self.nodes.get(&ino) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(libc_errno::EISDIR),
            None => Err(libc_errno::ENOENT),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(libc_errno::EISDIR),
            None => Err(libc_errno::ENOENT),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(libc_errno::ENOENT)
    }

    /// Creates a file or directory named `name` in `parent` (volatile until `parent` is
    /// fsynced). Returns the new inode.
    pub fn create(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<u64, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc_errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = if dir {
            Node::Dir(DirData {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent,
            })
        } else {
            Node::File(FileData::default())
        };
        self.nodes.insert(ino, node);
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        Ok(ino)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match (self.nodes.get(&ino), dir) {
            (Some(Node::Dir(d)), true) if !d.entries.is_empty() => {
                return Err(libc_errno::ENOTEMPTY)
            }
            (Some(Node::Dir(_)), false) => return Err(libc_errno::EISDIR),
            (Some(Node::File(_)), true) => return Err(libc_errno::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        Ok(())
    }

    /// `rename(2)` without flags: replaces the target if it exists.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if let Some(Node::Dir(d)) = self.nodes.get(&target) {
                if !d.entries.is_empty() {
                    return Err(libc_errno::ENOTEMPTY);
                }
            }
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        if let Some(Node::Dir(d)) = self.nodes.get_mut(&ino) {
            d.parent = new_parent;
        }
        Ok(())
    }

    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let file = self.file_mut(ino)?;
        apply_write(&mut file.volatile, offset, data);
        file.pending.push(FileOp::Write {
            offset,
            data: data.to_vec(),
        });
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        Ok(())
    }

    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        let file = self.file_mut(ino)?;
        file.volatile.resize(to_usize(len), 0);
        file.pending.push(FileOp::SetLen(len));
        Ok(())
    }

    /// fsync or fdatasync of a file (this model has no metadata apart from the size, which
    /// counts as data): its current content becomes durable. Of a directory: its entries.
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => {
                // Replaying the pending operations costs what was written, not the file size.
                for op in f.pending.drain(..) {
                    match op {
                        FileOp::Write { offset, data } => {
                            apply_write(&mut f.durable, offset, &data)
                        }
                        FileOp::SetLen(len) => f.durable.resize(to_usize(len), 0),
                    }
                }
                debug_assert_eq!(f.durable, f.volatile);
                self.stats.file_syncs += 1;
            }
            Some(Node::Dir(d)) => {
                d.durable = d.entries.clone();
                self.stats.dir_syncs += 1;
            }
            None => return Err(libc_errno::ENOENT),
        }
        Ok(())
    }

    /// The power cut: every file and directory falls back to its durable state, plus what
    /// `torn` lets survive of the unsynced writes. Afterwards volatile and durable agree.
    pub fn power_loss(&mut self, torn: TornWrites) {
        let mut rng = match torn {
            TornWrites::LoseAll => None,
            TornWrites::RandomPrefix { seed } => Some(SplitMix64(seed)),
        };
        // Visit inodes in a fixed order so that a seed always tears the same way.
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            match self.nodes.get_mut(&ino) {
                Some(Node::File(f)) => {
                    let mut image = f.durable.clone();
                    for op in f.pending.drain(..) {
                        let Some(rng) = rng.as_mut() else {
                            self.stats.writes_lost += matches!(op, FileOp::Write { .. }) as u64;
                            continue;
                        };
                        match op {
                            FileOp::Write { offset, data } => {
                                let keep = match rng.below(3) {
                                    0 => 0,
                                    1 => data.len(),
                                    _ => to_usize(rng.below(data.len() as u64 + 1)),
                                };
                                match keep {
                                    0 => self.stats.writes_lost += 1,
                                    k if k == data.len() => self.stats.writes_kept += 1,
                                    _ => self.stats.writes_torn += 1,
                                }
                                if keep > 0 {
                                    apply_write(&mut image, offset, &data[..keep]);
                                }
                            }
                            FileOp::SetLen(len) => {
                                if rng.below(2) == 0 {
                                    image.resize(to_usize(len), 0);
                                }
                            }
                        }
                    }
                    f.durable = image.clone();
                    f.volatile = image;
                }
                Some(Node::Dir(d)) => {
                    let reverted = d
                        .entries
                        .iter()
                        .filter(|(k, v)| d.durable.get(*k) != Some(v))
                        .count()
                        + d.durable
                            .keys()
                            .filter(|k| !d.entries.contains_key(*k))
                            .count();
                    self.stats.dir_entries_reverted += reverted as u64;
                    d.entries = d.durable.clone();
                }
                None => {}
            }
        }
        // Directories' parents follow the durable tree again.
        let links: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter_map(|(ino, n)| match n {
                Node::Dir(d) => Some(d.entries.values().map(move |c| (*ino, *c))),
                Node::File(_) => None,
            })
            .flatten()
            .collect();
        for (parent, child) in links {
            if let Some(Node::Dir(d)) = self.nodes.get_mut(&child) {
                d.parent = parent;
            }
        }
        self.stats.power_losses += 1;
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("file offsets fit in memory")
}

fn apply_write(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = to_usize(offset);
    let end = start + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(data);
}

/// A small seeded generator (SplitMix64), so that a printed seed replays a power cut.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

/// The errno values this model answers (Linux numbering), kept here so that the model
/// needs no libc.
pub mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENOTEMPTY: i32 = 39;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn unsynced_writes_and_names_are_lost_synced_ones_kept() {
        let mut s = State::new();
        let dir = s.create(ROOT_INO, name("store"), true).unwrap();
        let a = s.create(dir, name("a"), false).unwrap();
        s.write(a, 0, b"hello").unwrap();
        s.sync(a).unwrap();
        // The name is not durable yet: syncing the file does not sync its directory.
        s.sync(ROOT_INO).unwrap();
        s.sync(dir).unwrap();
        s.write(a, 5, b" world").unwrap();
        let b = s.create(dir, name("b"), false).unwrap();
        s.write(b, 0, b"x").unwrap();
        s.sync(b).unwrap();
        s.power_loss(TornWrites::LoseAll);
        assert_eq!(s.lookup(ROOT_INO, name("store")), Ok(dir));
        assert_eq!(s.file(a).unwrap().volatile, b"hello");
        assert_eq!(s.lookup(dir, name("b")), Err(libc_errno::ENOENT));
    }

    #[test]
    fn a_directory_sync_does_not_sync_file_content() {
        let mut s = State::new();
        let a = s.create(ROOT_INO, name("a"), false).unwrap();
        s.write(a, 0, b"data").unwrap();
        s.sync(ROOT_INO).unwrap();
        s.power_loss(TornWrites::LoseAll);
        assert_eq!(s.lookup(ROOT_INO, name("a")), Ok(a));
        assert!(s.file(a).unwrap().volatile.is_empty());
    }

    #[test]
    fn unsynced_rename_and_unlink_are_undone() {
        let mut s = State::new();
        let a = s.create(ROOT_INO, name("a"), false).unwrap();
        s.write(a, 0, b"old").unwrap();
        s.sync(a).unwrap();
        s.sync(ROOT_INO).unwrap();
        s.rename(ROOT_INO, name("a"), ROOT_INO, name("b")).unwrap();
        let c = s.create(ROOT_INO, name("c"), false).unwrap();
        s.sync(c).unwrap();
        s.unlink(ROOT_INO, name("c"), false).unwrap();
        s.power_loss(TornWrites::LoseAll);
        assert_eq!(s.lookup(ROOT_INO, name("a")), Ok(a));
        assert_eq!(s.lookup(ROOT_INO, name("b")), Err(libc_errno::ENOENT));
        assert_eq!(s.file(a).unwrap().volatile, b"old");
    }

    #[test]
    fn torn_writes_keep_prefixes_only_and_replay_by_seed() {
        let run = |seed| {
            let mut s = State::new();
            let a = s.create(ROOT_INO, name("a"), false).unwrap();
            s.sync(ROOT_INO).unwrap();
            for i in 0..50u64 {
                s.write(a, i * 100, &[i as u8 + 1; 100]).unwrap();
            }
            s.power_loss(TornWrites::RandomPrefix { seed });
            (s.file(a).unwrap().volatile.clone(), s.stats)
        };
        let (image, stats) = run(7);
        assert_eq!(run(7).0, image, "a seed replays the same cut");
        assert!(stats.writes_lost > 0 && stats.writes_kept > 0 && stats.writes_torn > 0);
        // Every surviving byte is its write's byte, and within a write, a prefix survives.
        for (i, chunk) in image.chunks(100).enumerate() {
            let kept = chunk.iter().take_while(|&&b| b == i as u8 + 1).count();
            assert!(
                chunk[kept..].iter().all(|&b| b == 0),
                "write {i} is not a prefix"
            );
        }
    }
}
