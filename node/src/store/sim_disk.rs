//! A simulated disk: the redb file (through a redb storage backend), the Raft log's
//! segment files and the snapshot files live in memory, and a crash forgets every write
//! that was not followed by a sync — as a real disk's page cache would. A file created
//! or removed counts only once its directory is synced.
//!
//! A crash also cuts off every handle opened before it: the crashed process's database
//! handle may still be dropped afterwards (redb flushes and syncs on drop), and those
//! last writes must go nowhere, as they would after a power cut.

use super::wal::{SegmentDir, SegmentFile};
use redb::StorageBackend;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Disk {
    db: Bytes,
    /// Files by (directory, id).
    segments: BTreeMap<(&'static str, u64), SimSegment>,
    /// Bumped by every crash; handles of an earlier generation are cut off.
    generation: u64,
}

/// One file in a directory (a log segment or a snapshot).
#[derive(Debug, Default)]
struct SimSegment {
    bytes: Bytes,
    /// Listed now.
    exists: bool,
    /// Listed after a crash (the state at the last directory sync).
    durable_exists: bool,
}

#[derive(Debug, Default)]
struct Bytes {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Changes since the last sync, replayed onto `durable` by the next one (copying
    /// only what changed keeps long simulations cheap).
    unsynced: Vec<Change>,
}

impl Bytes {
    fn write(&mut self, change: Change) {
        apply(&mut self.current, &change);
        self.unsynced.push(change);
    }

    fn sync(&mut self) {
        for change in self.unsynced.drain(..) {
            apply(&mut self.durable, &change);
        }
    }

    fn crash(&mut self) {
        self.current = self.durable.clone();
        self.unsynced.clear();
    }

    /// A crash after part of what was written since the last sync reached the disk: a
    /// prefix of the changes, and of the write after it some of its sectors (a disk
    /// writes a sector whole or not at all, in no particular order).
    /// Whether a write was left in part (some of its sectors landed, some not).
    fn crash_torn(&mut self, rng: &mut SplitMix) -> bool {
        let mut torn = false;
        let n = self.unsynced.len();
        let landed = (rng.next() % (n as u64 + 1)) as usize;
        for change in &self.unsynced[..landed] {
            apply(&mut self.durable, change);
        }
        if let Some(Change::Write(offset, data)) = self.unsynced.get(landed) {
            let (start, end) = (*offset as usize, *offset as usize + data.len());
            let (mut at, mut kept, mut dropped) = (start, false, false);
            while at < end {
                let to = ((at / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
                if rng.next() & 1 == 0 {
                    let part = Change::Write(at as u64, data[at - start..to - start].to_vec());
                    apply(&mut self.durable, &part);
                    kept = true;
                } else {
                    dropped = true;
                }
                at = to;
            }
            torn = kept && dropped;
        }
        self.crash();
        torn
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let start = offset as usize;
        let src = self
            .current
            .get(start..start + out.len())
            .ok_or_else(range_err)?;
        out.copy_from_slice(src);
        Ok(())
    }
}

/// What a torn crash found in the Raft log's files.
#[derive(Debug, Default, Clone, Copy)]
pub struct TornCrash {
    /// Log files with writes not yet synced.
    pub log_files_unsynced: u32,
    /// Writes to them left in part: some sectors on the disk, some not.
    pub log_writes_torn: u32,
}

/// The unit a simulated disk writes whole.
const SECTOR_BYTES: usize = 512;

/// A small deterministic generator (SplitMix64) for which writes a torn crash keeps.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[derive(Debug)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

/// Applies `change` to `bytes`.
fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(offset, data) => {
            let (start, end) = (*offset as usize, *offset as usize + data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
        Change::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// A simulated disk shared across restarts of one simulated host. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<Disk>>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Forgets everything written since the last sync and cuts off every open backend.
    /// Call it when the host crashes, before the host's runtime is dropped.
    pub fn crash(&self) {
        let mut d = self.inner.lock().expect("disk lock");
        d.db.crash();
        d.segments.retain(|_, s| s.durable_exists);
        for s in d.segments.values_mut() {
            s.bytes.crash();
            s.exists = true;
        }
        d.generation += 1;
    }

    /// A power cut, as [`SimDisk::crash`], except that in the Raft log's segments and
    /// the snapshot files part of what was written since their last sync reached the
    /// disk first (see `Bytes::crash_torn`), chosen by `seed`: a record may be left
    /// cut short. The database files lose all of it, as in a crash.
    pub fn crash_torn(&self, seed: u64) -> TornCrash {
        let mut rng = SplitMix(seed);
        let mut found = TornCrash::default();
        {
            let mut d = self.inner.lock().expect("disk lock");
            for ((dir, _), s) in d.segments.iter_mut() {
                if matches!(*dir, "wal" | "snap") {
                    let unsynced = !s.bytes.unsynced.is_empty();
                    let torn = s.bytes.crash_torn(&mut rng);
                    if *dir == "wal" {
                        found.log_files_unsynced += u32::from(unsynced);
                        found.log_writes_torn += u32::from(torn);
                    }
                }
            }
        }
        self.crash();
        found
    }

    /// The host's machine is replaced: the disk comes back empty. Handles opened before
    /// are cut off, as by a crash. Call it while the host is down.
    pub fn replace(&self) {
        let mut d = self.inner.lock().expect("disk lock");
        let generation = d.generation + 1;
        *d = Disk {
            generation,
            ..Disk::default()
        };
    }

    /// A backend handle over this disk for one open of the database.
    pub fn backend(&self) -> SimBackend {
        let generation = self.inner.lock().expect("disk lock").generation;
        SimBackend {
            disk: self.clone(),
            generation,
        }
    }

    /// The Raft log's segment directory on this disk, valid until its next crash.
    pub(crate) fn wal_dir(&self) -> Arc<dyn SegmentDir> {
        self.dir("wal")
    }

    /// The snapshot files' directory on this disk, valid until its next crash.
    pub(crate) fn snapshot_dir(&self) -> Arc<dyn SegmentDir> {
        self.dir("snap")
    }

    /// The vault generations' directory on this disk, valid until its next crash.
    pub(crate) fn vault_dir(&self) -> Arc<dyn SegmentDir> {
        self.dir("vault")
    }

    fn dir(&self, name: &'static str) -> Arc<dyn SegmentDir> {
        Arc::new(SimDir {
            handle: self.backend(),
            name,
        })
    }
}

/// The redb backend over a [`SimDisk`], valid until the disk's next crash.
#[derive(Debug)]
pub struct SimBackend {
    disk: SimDisk,
    generation: u64,
}

impl SimBackend {
    /// The disk, unless a crash has cut this handle off.
    fn disk(&self) -> Result<std::sync::MutexGuard<'_, Disk>, std::io::Error> {
        let d = self.disk.inner.lock().expect("disk lock");
        if d.generation != self.generation {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the simulated host crashed",
            ));
        }
        Ok(d)
    }
}

fn range_err() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "read past the end of the simulated disk",
    )
}

impl StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.disk()?.db.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.disk()?.db.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.disk()?.db.write(Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.disk()?.db.sync();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.disk()?.db.write(Change::Write(offset, data.to_vec()));
        Ok(())
    }
}

/// A directory of files on a [`SimDisk`], valid until the disk's next crash.
struct SimDir {
    handle: SimBackend,
    name: &'static str,
}

impl SegmentDir for SimDir {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self
            .handle
            .disk()?
            .segments
            .iter()
            .filter(|((dir, _), s)| *dir == self.name && s.exists)
            .map(|((_, id), _)| *id)
            .collect())
    }

    fn open(&self, id: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let mut d = self.handle.disk()?;
        let s = d.segments.entry((self.name, id)).or_default();
        if !s.exists {
            // New, or back after a removal: empty.
            s.exists = true;
            s.bytes.write(Change::SetLen(0));
        }
        Ok(Arc::new(SimSegmentFile {
            handle: SimBackend {
                disk: self.handle.disk.clone(),
                generation: self.handle.generation,
            },
            key: (self.name, id),
        }))
    }

    fn open_existing(&self, id: u64) -> io::Result<Arc<dyn SegmentFile>> {
        if !self.list()?.contains(&id) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        self.open(id)
    }

    fn remove(&self, id: u64) -> io::Result<()> {
        let mut d = self.handle.disk()?;
        let key = (self.name, id);
        if let Some(s) = d.segments.get_mut(&key) {
            s.exists = false;
            s.bytes.current.clear();
            if !s.durable_exists {
                d.segments.remove(&key);
            }
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut d = self.handle.disk()?;
        let name = self.name;
        d.segments.retain(|(dir, _), s| *dir != name || s.exists);
        for ((_, _), s) in d.segments.iter_mut().filter(|((dir, _), _)| *dir == name) {
            s.durable_exists = true;
        }
        Ok(())
    }
}

/// One file on a [`SimDisk`].
struct SimSegmentFile {
    handle: SimBackend,
    key: (&'static str, u64),
}

impl SimSegmentFile {
    fn with<T>(&self, f: impl FnOnce(&mut Bytes) -> io::Result<T>) -> io::Result<T> {
        let mut d = self.handle.disk()?;
        match d.segments.get_mut(&self.key) {
            Some(s) if s.exists => f(&mut s.bytes),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the file was removed",
            )),
        }
    }
}

impl SegmentFile for SimSegmentFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|b| Ok(b.current.len() as u64))
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with(|b| b.read(offset, out))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|b| {
            b.write(Change::Write(offset, data.to_vec()));
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|b| {
            b.write(Change::SetLen(len));
            Ok(())
        })
    }

    fn sync(&self) -> io::Result<()> {
        self.with(|b| {
            b.sync();
            Ok(())
        })
    }

    /// Extends with zeros, but by at most [`SIM_PREALLOCATE_MAX`]: what the log must
    /// cope with (zeros after its last record, a file shorter than asked for) is the
    /// same, and long simulations stay small.
    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.with(|b| {
            let have = b.current.len() as u64;
            let want = len.min(have.max(SIM_PREALLOCATE_MAX));
            if want > have {
                b.write(Change::SetLen(want));
            }
            Ok(())
        })
    }
}

/// The most a simulated segment is preallocated to.
const SIM_PREALLOCATE_MAX: u64 = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_forgets_unsynced_writes_only() {
        let disk = SimDisk::new();
        let be = disk.backend();
        be.write(0, b"durable").unwrap();
        be.sync_data().unwrap();
        be.write(0, b"volatile!").unwrap();
        be.set_len(4).unwrap();
        be.write(12, b"x").unwrap();
        disk.crash();
        assert!(be.sync_data().is_err(), "a crash cuts off the old backend");
        let be = disk.backend();
        assert_eq!(be.len().unwrap(), 7);
        let mut out = [0u8; 7];
        be.read(0, &mut out).unwrap();
        assert_eq!(&out, b"durable");
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_the_unsynced_writes_and_whole_sectors_of_the_next() {
        let mut seen_torn = false;
        for seed in 0..64 {
            let disk = SimDisk::new();
            let dir = disk.wal_dir();
            let f = dir.open(1).unwrap();
            f.write_at(0, &[1; 100]).unwrap();
            f.sync().unwrap();
            dir.sync().unwrap();
            f.write_at(100, &[2; 1000]).unwrap(); // up to byte 1100: sectors 0, 1, 2
            f.write_at(1100, &[3; 100]).unwrap();
            disk.crash_torn(seed);
            let f = disk.wal_dir().open_existing(1).unwrap();
            let mut out = vec![0; f.len().unwrap() as usize];
            f.read_at(0, &mut out).unwrap();
            assert_eq!(&out[..100], &[1; 100], "synced bytes stay");
            // Of the first unsynced write, each sector's part is whole or zeros.
            for (from, to) in [(100, 512), (512, 1024), (1024, 1100)] {
                if let Some(part) = out.get(from..to.min(out.len())) {
                    assert!(
                        part.iter().all(|b| *b == 2) || part.iter().all(|b| *b == 0),
                        "seed {seed}: bytes {from}..{to} mixed"
                    );
                }
            }
            // The second write landed only if the first did in whole.
            if out.get(1100).is_some_and(|b| *b == 3) {
                assert!(out[100..1100].iter().all(|b| *b == 2), "seed {seed}");
            }
            seen_torn |= out
                .get(100..1100)
                .is_some_and(|p| p.contains(&0) && p.contains(&2));
        }
        assert!(seen_torn, "some seed leaves the first write in part");
    }

    #[test]
    fn a_sync_keeps_every_change_before_it() {
        let disk = SimDisk::new();
        let be = disk.backend();
        be.write(0, b"abcdef").unwrap();
        be.set_len(3).unwrap();
        be.write(4, b"z").unwrap();
        be.sync_data().unwrap();
        disk.crash();
        let be = disk.backend();
        let mut out = [9u8; 5];
        be.read(0, &mut out).unwrap();
        assert_eq!(&out, b"abc\0z");
    }

    #[test]
    fn segment_files_come_and_go_with_their_directory_sync() {
        let disk = SimDisk::new();
        let dir = disk.wal_dir();
        let kept = dir.open(1).unwrap();
        kept.write_at(0, b"kept").unwrap();
        kept.sync().unwrap();
        dir.sync().unwrap();
        // Created and written, synced, but its directory never was.
        let lost = dir.open(2).unwrap();
        lost.write_at(0, b"lost").unwrap();
        lost.sync().unwrap();
        // Removed without a directory sync: back after the crash.
        dir.remove(1).unwrap();
        assert_eq!(dir.list().unwrap(), vec![2]);
        disk.crash();
        assert!(dir.list().is_err(), "a crash cuts off the old handle");
        let dir = disk.wal_dir();
        assert_eq!(dir.list().unwrap(), vec![1]);
        let f = dir.open(1).unwrap();
        let mut out = [0u8; 4];
        f.read_at(0, &mut out).unwrap();
        assert_eq!(&out, b"kept");
    }

    #[test]
    fn directories_keep_their_files_apart() {
        let disk = SimDisk::new();
        let (wal, snap) = (disk.wal_dir(), disk.snapshot_dir());
        wal.open(7).unwrap().write_at(0, b"log").unwrap();
        snap.open(7).unwrap().write_at(0, b"snapshot").unwrap();
        // Syncing one directory makes only its own creations durable.
        snap.sync().unwrap();
        assert_eq!(snap.open(7).unwrap().len().unwrap(), 8);
        assert_eq!(wal.open(7).unwrap().len().unwrap(), 3);
        disk.crash();
        assert_eq!(disk.wal_dir().list().unwrap(), Vec::<u64>::new());
        assert_eq!(disk.snapshot_dir().list().unwrap(), vec![7]);
    }
}
