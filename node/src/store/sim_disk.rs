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
    /// Armed by [`SimDisk::arm_cut_at_database_sync`]: the power goes at the next sync
    /// of this database file, with this seed choosing what of its writes landed.
    cut_armed: Option<(DatabaseFile, u64)>,
    /// What that cut found, until the host's crash takes it.
    cut: Option<TornCrash>,
}

impl Disk {
    /// Forgets everything written since the last sync and cuts off every open handle.
    fn crash(&mut self) {
        self.db.crash();
        self.segments.retain(|_, s| s.durable_exists);
        for s in self.segments.values_mut() {
            s.bytes.crash();
            s.exists = true;
        }
        self.generation += 1;
        self.cut_armed = None;
    }

    /// The power goes with part of each file's unsynced writes on the disk (see
    /// [`SimDisk::crash_torn`]).
    fn crash_torn(&mut self, seed: u64) -> TornCrash {
        let mut rng = SplitMix(seed);
        let mut found = TornCrash::default();
        let (unsynced, mixed) = self.db.crash_scattered(&mut rng);
        found.db_files_unsynced += u32::from(unsynced);
        found.db_files_mixed += u32::from(mixed);
        for ((dir, _), s) in self.segments.iter_mut() {
            if *dir == "vault" {
                let (unsynced, mixed) = s.bytes.crash_scattered(&mut rng);
                found.db_files_unsynced += u32::from(unsynced);
                found.db_files_mixed += u32::from(mixed);
                continue;
            }
            let unsynced = !s.bytes.unsynced.is_empty();
            let torn = s.bytes.crash_torn(&mut rng);
            if *dir == "wal" {
                found.log_files_unsynced += u32::from(unsynced);
                found.log_writes_torn += u32::from(torn);
            }
        }
        self.crash();
        found
    }

    /// At a database file's sync: if a cut is armed, the power goes now, before the
    /// sync, and the sync fails (as every later call through an old handle does).
    fn cut_if_armed(&mut self, file: DatabaseFile) -> io::Result<()> {
        let seed = match self.cut_armed {
            Some((armed, seed)) if armed == file => seed,
            _ => return Ok(()),
        };
        self.cut_armed = None;
        let mut found = self.crash_torn(seed);
        found.in_database_sync = Some(file);
        self.cut = Some(found);
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the simulated host lost power",
        ))
    }
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

    /// A crash after the page cache wrote back some of the file's dirty sectors, in no
    /// particular order: each sector changed since the last sync holds either what the
    /// disk had at that sync or what was written to it last, and the file's length is
    /// either of the two. This is what a database's own commit protocol (redb's
    /// checksummed commit slots) must survive. Returns whether anything was unsynced,
    /// and whether the cut left the file mixed (some changed sectors landed, some not).
    fn crash_scattered(&mut self, rng: &mut SplitMix) -> (bool, bool) {
        if self.unsynced.is_empty() {
            self.crash();
            return (false, false);
        }
        // The sectors any unsynced change touched (a length change, every sector
        // between the lengths the file has had since the sync).
        let (mut lo_len, mut hi_len) = (self.durable.len(), self.durable.len());
        let mut dirty = std::collections::BTreeSet::new();
        for change in &self.unsynced {
            match change {
                Change::Write(offset, data) => {
                    let (start, end) = (*offset as usize, *offset as usize + data.len());
                    dirty.extend(start / SECTOR_BYTES..end.div_ceil(SECTOR_BYTES));
                    hi_len = hi_len.max(end);
                }
                Change::SetLen(len) => {
                    lo_len = lo_len.min(*len as usize);
                    hi_len = hi_len.max(*len as usize);
                }
            }
        }
        dirty.extend(lo_len / SECTOR_BYTES..hi_len.div_ceil(SECTOR_BYTES));
        let len = if rng.next() & 1 == 0 {
            self.durable.len()
        } else {
            self.current.len()
        };
        let mut disk = std::mem::take(&mut self.durable);
        disk.resize(len, 0);
        let (mut landed, mut stayed) = (false, false);
        for sector in dirty {
            let start = sector * SECTOR_BYTES;
            if start >= len {
                break;
            }
            let end = (start + SECTOR_BYTES).min(len);
            let mut now = [0u8; SECTOR_BYTES];
            if let Some(src) = self.current.get(start..end.min(self.current.len())) {
                now[..src.len()].copy_from_slice(src);
            }
            let now = &now[..end - start];
            if disk[start..end] == *now {
                continue;
            }
            if rng.next() & 1 == 0 {
                disk[start..end].copy_from_slice(now);
                landed = true;
            } else {
                stayed = true;
            }
        }
        self.durable = disk;
        self.crash();
        (true, landed && stayed)
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

/// What a torn crash found on the disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct TornCrash {
    /// Log files with writes not yet synced.
    pub log_files_unsynced: u32,
    /// Writes to them left in part: some sectors on the disk, some not.
    pub log_writes_torn: u32,
    /// Database files (the metadata and the vault's generations) with writes not yet
    /// synced.
    pub db_files_unsynced: u32,
    /// Of those, files left mixed: some of the sectors changed since their last sync
    /// on the disk, some not.
    pub db_files_mixed: u32,
    /// The power went as a database file was being synced (an armed cut): the node's
    /// metadata (its vote, the log's bounds) or a vault generation (a durable commit).
    pub in_database_sync: Option<DatabaseFile>,
}

/// Which of a node's database files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseFile {
    Metadata,
    Vault,
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
        self.inner.lock().expect("disk lock").crash();
    }

    /// A power cut, as [`SimDisk::crash`], except that part of what was written since
    /// each file's last sync reached the disk first, chosen by `seed`. The Raft log's
    /// segments and the snapshot files, written in order, keep a prefix of their writes
    /// and whole sectors of the next (see `Bytes::crash_torn`): a record may be left
    /// cut short. The database files (the metadata and the vault's generations), which
    /// redb writes page by page, keep any of their changed sectors (see
    /// `Bytes::crash_scattered`).
    pub fn crash_torn(&self, seed: u64) -> TornCrash {
        self.inner.lock().expect("disk lock").crash_torn(seed)
    }

    /// Arms a power cut at the next sync of `file` (the metadata, or a vault
    /// generation: a durable commit): what redb wrote for that commit is on the disk in
    /// part, as [`SimDisk::crash_torn`] leaves it, and the sync fails. A crash disarms
    /// it. The host must then be crashed: see [`SimDisk::take_cut`].
    pub fn arm_cut_at_database_sync(&self, file: DatabaseFile, seed: u64) {
        self.inner.lock().expect("disk lock").cut_armed = Some((file, seed));
    }

    /// What an armed cut found, once it has gone off (the host has lost its power).
    pub fn take_cut(&self) -> Option<TornCrash> {
        self.inner.lock().expect("disk lock").cut.take()
    }

    /// Whether an armed cut has gone off (and not yet been taken).
    pub fn has_cut(&self) -> bool {
        self.inner.lock().expect("disk lock").cut.is_some()
    }

    /// Whether a cut is armed and has not gone off.
    pub fn cut_armed(&self) -> bool {
        self.inner.lock().expect("disk lock").cut_armed.is_some()
    }

    /// Disarms a cut that has not gone off.
    pub fn disarm_cut(&self) {
        self.inner.lock().expect("disk lock").cut_armed = None;
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
        let mut d = self.disk()?;
        d.cut_if_armed(DatabaseFile::Metadata)?;
        d.db.sync();
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
        if self.key.0 == "vault" {
            self.handle.disk()?.cut_if_armed(DatabaseFile::Vault)?;
        }
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
    fn a_torn_crash_leaves_each_changed_database_sector_old_or_new() {
        let (mut seen_mixed, mut seen_lengths) = (false, [false; 2]);
        for seed in 0..64 {
            let disk = SimDisk::new();
            let be = disk.backend();
            be.write(0, &[1; 2048]).unwrap();
            be.sync_data().unwrap();
            // Unsynced: sector 0 written twice, sectors 1 and 2 once, sector 3 not at
            // all, the file grown by two sectors of which the first is written.
            be.write(0, &[2; 512]).unwrap();
            be.write(512, &[3; 1024]).unwrap();
            be.write(0, &[4; 512]).unwrap();
            be.set_len(3072).unwrap();
            be.write(2048, &[5; 512]).unwrap();
            let found = disk.crash_torn(seed);
            assert_eq!(found.db_files_unsynced, 1, "seed {seed}");
            let be = disk.backend();
            let len = be.len().unwrap() as usize;
            assert!(len == 2048 || len == 3072, "seed {seed}: length {len}");
            seen_lengths[usize::from(len == 3072)] = true;
            let mut out = vec![0; len];
            be.read(0, &mut out).unwrap();
            // Each sector: as synced, or as last written; never an earlier unsynced
            // value, never part of one.
            let choices: [&[u8]; 6] = [&[1, 4], &[1, 3], &[1, 3], &[1], &[0, 5], &[0]];
            let mut landed = [false; 2];
            for (i, sector) in out.chunks(512).enumerate() {
                assert!(
                    choices[i].iter().any(|b| sector.iter().all(|x| x == b)),
                    "seed {seed}: sector {i} is {:?}…",
                    &sector[..4]
                );
                if choices[i].len() == 2 {
                    landed[usize::from(sector[0] == choices[i][1])] = true;
                }
            }
            assert_eq!(
                found.db_files_mixed == 1,
                landed[0] && landed[1],
                "seed {seed}"
            );
            seen_mixed |= found.db_files_mixed == 1;
        }
        assert!(seen_mixed, "some seed lands some sectors and not others");
        assert_eq!(seen_lengths, [true; 2], "both lengths come back");
    }

    #[test]
    fn an_armed_cut_goes_off_at_the_next_database_sync_only() {
        let disk = SimDisk::new();
        let be = disk.backend();
        be.write(0, &[1; 512]).unwrap();
        be.sync_data().unwrap();
        disk.arm_cut_at_database_sync(DatabaseFile::Metadata, 3);
        // Neither a log sync nor a vault's sets it off.
        let wal = disk.wal_dir();
        let f = wal.open(1).unwrap();
        f.write_at(0, b"record").unwrap();
        f.sync().unwrap();
        wal.sync().unwrap();
        let vaults = disk.vault_dir();
        let vault = vaults.open(1).unwrap();
        vault.write_at(0, b"vault").unwrap();
        vault.sync().unwrap();
        vaults.sync().unwrap();
        assert!(disk.cut_armed() && !disk.has_cut());
        // The database's does, and fails; nothing through an old handle works after.
        be.write(0, &[2; 1024]).unwrap();
        assert!(be.sync_data().is_err());
        assert!(be.write(0, b"x").is_err() && f.write_at(0, b"x").is_err());
        assert!(!disk.cut_armed() && disk.has_cut());
        let found = disk.take_cut().expect("the cut went off");
        assert_eq!(found.in_database_sync, Some(DatabaseFile::Metadata));
        assert_eq!(found.db_files_unsynced, 1);
        assert!(disk.take_cut().is_none());
        // The synced log record stays; the database holds each sector old or new.
        let f = disk.wal_dir().open_existing(1).unwrap();
        let mut out = [0u8; 6];
        f.read_at(0, &mut out).unwrap();
        assert_eq!(&out, b"record");
        let be = disk.backend();
        let mut out = vec![0u8; be.len().unwrap() as usize];
        be.read(0, &mut out).unwrap();
        assert!(out[..512].iter().all(|b| *b == 1) || out[..512].iter().all(|b| *b == 2));
        // Armed for a vault generation, a vault's sync sets it off.
        disk.arm_cut_at_database_sync(DatabaseFile::Vault, 5);
        be.sync_data().unwrap();
        let vault = disk.vault_dir().open_existing(1).unwrap();
        vault.write_at(0, b"VAULT").unwrap();
        assert!(vault.sync().is_err());
        let found = disk.take_cut().expect("the cut went off");
        assert_eq!(found.in_database_sync, Some(DatabaseFile::Vault));
        // A crash disarms a cut that has not gone off.
        disk.arm_cut_at_database_sync(DatabaseFile::Metadata, 4);
        disk.crash();
        assert!(!disk.cut_armed());
        disk.backend().sync_data().unwrap();
        assert!(!disk.has_cut());
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
