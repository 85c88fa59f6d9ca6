//! A redb storage backend for simulation: bytes live in memory, and a crash forgets
//! every write that was not followed by `sync_data` — as a real disk's page cache would.
//!
//! A crash also cuts off every backend opened before it: the crashed process's
//! database handle may still be dropped afterwards (redb flushes and syncs on drop),
//! and those last writes must go nowhere, as they would after a power cut.

use redb::StorageBackend;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Bytes {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Changes since the last sync, replayed onto `durable` by the next one (copying
    /// only what changed keeps long simulations cheap).
    unsynced: Vec<Change>,
    /// Bumped by every crash; backends of an earlier generation are cut off.
    generation: u64,
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
    inner: Arc<Mutex<Bytes>>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Forgets everything written since the last sync and cuts off every open backend.
    /// Call it when the host crashes, before the host's runtime is dropped.
    pub fn crash(&self) {
        let mut b = self.inner.lock().expect("disk lock");
        b.current = b.durable.clone();
        b.unsynced.clear();
        b.generation += 1;
    }

    /// A backend handle over this disk for one open of the database.
    pub fn backend(&self) -> SimBackend {
        let generation = self.inner.lock().expect("disk lock").generation;
        SimBackend {
            disk: self.clone(),
            generation,
        }
    }
}

/// The redb backend over a [`SimDisk`], valid until the disk's next crash.
#[derive(Debug)]
pub struct SimBackend {
    disk: SimDisk,
    generation: u64,
}

impl SimBackend {
    /// The disk's bytes, unless a crash has cut this backend off.
    fn bytes(&self) -> Result<std::sync::MutexGuard<'_, Bytes>, std::io::Error> {
        let b = self.disk.inner.lock().expect("disk lock");
        if b.generation != self.generation {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the simulated host crashed",
            ));
        }
        Ok(b)
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
        Ok(self.bytes()?.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let b = self.bytes()?;
        let start = offset as usize;
        let src = b
            .current
            .get(start..start + out.len())
            .ok_or_else(range_err)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut b = self.bytes()?;
        let change = Change::SetLen(len);
        apply(&mut b.current, &change);
        b.unsynced.push(change);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut guard = self.bytes()?;
        let b = &mut *guard;
        for change in b.unsynced.drain(..) {
            apply(&mut b.durable, &change);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut b = self.bytes()?;
        let change = Change::Write(offset, data.to_vec());
        apply(&mut b.current, &change);
        b.unsynced.push(change);
        Ok(())
    }
}

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
}
