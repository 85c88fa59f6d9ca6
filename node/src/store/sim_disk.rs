//! A redb storage backend for simulation: bytes live in memory, and a crash forgets
//! every write that was not followed by `sync_data` — as a real disk's page cache would.

use redb::StorageBackend;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Bytes {
    current: Vec<u8>,
    durable: Vec<u8>,
}

/// A simulated disk shared across restarts of one simulated host. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<Bytes>>,
    /// When false, `sync_data` does nothing durable (models `unsafe_no_fsync`).
    fsync_enabled: Arc<std::sync::atomic::AtomicBool>,
}

impl SimDisk {
    /// An empty disk with fsync working.
    pub fn new() -> SimDisk {
        let d = SimDisk::default();
        d.fsync_enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        d
    }

    /// Forgets everything written since the last sync (call when the host crashes).
    pub fn crash(&self) {
        let mut b = self.inner.lock().expect("disk lock");
        b.current = b.durable.clone();
    }

    /// Makes `sync_data` a no-op, so acknowledged writes can be lost (tests prove the oracle bites).
    pub fn disable_fsync(&self) {
        self.fsync_enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// A backend handle over this disk for one open of the database.
    pub fn backend(&self) -> SimBackend {
        SimBackend(self.clone())
    }
}

/// The redb backend over a [`SimDisk`].
#[derive(Debug)]
pub struct SimBackend(SimDisk);

fn range_err() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "read past the end of the simulated disk",
    )
}

impl StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.inner.lock().expect("disk lock").current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let b = self.0.inner.lock().expect("disk lock");
        let start = offset as usize;
        let src = b
            .current
            .get(start..start + out.len())
            .ok_or_else(range_err)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0
            .inner
            .lock()
            .expect("disk lock")
            .current
            .resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut b = self.0.inner.lock().expect("disk lock");
        if self
            .0
            .fsync_enabled
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            b.durable = b.current.clone();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut b = self.0.inner.lock().expect("disk lock");
        let end = offset as usize + data.len();
        if b.current.len() < end {
            b.current.resize(end, 0);
        }
        b.current[offset as usize..end].copy_from_slice(data);
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
        disk.crash();
        let mut out = [0u8; 7];
        be.read(0, &mut out).unwrap();
        assert_eq!(&out, b"durable");
        assert_eq!(be.len().unwrap(), 7);
    }

    #[test]
    fn without_fsync_a_crash_loses_everything() {
        let disk = SimDisk::new();
        disk.disable_fsync();
        let be = disk.backend();
        be.write(0, b"acked").unwrap();
        be.sync_data().unwrap();
        disk.crash();
        assert_eq!(be.len().unwrap(), 0);
    }
}
