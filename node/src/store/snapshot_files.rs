//! Snapshot data in files of their own (`kura.snap/<id>.snap`), beside the database.
//!
//! A snapshot of a large vault is hundreds of megabytes. Written into redb it went
//! through the single writer, and every log append queued behind its commit. Instead
//! the task that builds a snapshot writes and syncs the file itself; only the small
//! record of which file is current (with the snapshot's meta) goes through the writer.
//! A file is `magic "KSNP" | crc32 u32 LE | len u64 LE | data (len bytes)`.
//!
//! The record decides: a file it does not name is left over from a snapshot that was
//! replaced or never recorded (a crash in between), and is removed on open and after
//! every new record.

use super::wal::SegmentDir;
use crate::raft_types::{Built, ReadAt, SnapshotData};
use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 4] = b"KSNP";
const HEADER_BYTES: usize = 16;
/// Data is written this much at a time, each step's writeback started at once (not
/// waited for). Left to the final sync, a whole snapshot (a hundred megabytes and
/// more) goes to the disk in one burst, and the log's own syncs, which every write
/// waits for, queue behind it; syncing every step instead puts a device flush in
/// front of them hundreds of times. Starting writeback early, as RocksDB's
/// `bytes_per_sync` does, leaves the final sync little to do.
const WRITE_STEP_BYTES: usize = 4 << 20;
/// The file extension on disk.
pub(crate) const EXT: &str = "snap";

/// The snapshot files of one node.
pub(crate) struct SnapshotFiles {
    dir: Arc<dyn SegmentDir>,
    /// Off for [`super::SyncPolicy::UnsafeNoFsync`].
    sync: bool,
    next_id: AtomicU64,
    /// Files being written and not yet recorded (or given up): never removed as stale.
    writing: Mutex<BTreeSet<u64>>,
}

impl SnapshotFiles {
    /// The files in `dir`, of which `current` is the recorded one; every other is
    /// removed.
    pub(crate) fn open(
        dir: Arc<dyn SegmentDir>,
        sync: bool,
        current: Option<u64>,
    ) -> io::Result<SnapshotFiles> {
        let ids = dir.list()?;
        let top = ids.iter().copied().chain(current).max().unwrap_or(0);
        let files = SnapshotFiles {
            dir,
            sync,
            next_id: AtomicU64::new(top + 1),
            writing: Mutex::new(BTreeSet::new()),
        };
        files.remove_stale(current)?;
        Ok(files)
    }

    /// Writes `data` to a new file and makes it durable; returns its id. The file is
    /// in progress until [`SnapshotFiles::recorded`] or [`SnapshotFiles::discard`].
    #[cfg(test)]
    pub(crate) fn write(self: &Arc<Self>, data: &[u8]) -> io::Result<u64> {
        let mut w = self.create()?;
        for step in data.chunks(WRITE_STEP_BYTES) {
            w.append(step)?;
        }
        w.finish()
    }

    /// A new file to write a snapshot into a piece at a time. In progress until
    /// recorded or discarded (a writer dropped unfinished discards it).
    pub(crate) fn create(self: &Arc<Self>) -> io::Result<SnapshotWriter> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.writing.lock().expect("snapshot files lock").insert(id);
        let file = match self.dir.open(id).and_then(|f| f.set_len(0).map(|()| f)) {
            Ok(f) => f,
            Err(e) => {
                self.discard(id);
                return Err(e);
            }
        };
        Ok(SnapshotWriter {
            files: self.clone(),
            id,
            file,
            offset: HEADER_BYTES as u64,
            unsynced: 0,
            crc: crc32fast::Hasher::new(),
            done: false,
            progress: None,
        })
    }

    /// Reads file `id`, checking it whole.
    #[cfg(test)]
    pub(crate) fn read(&self, id: u64) -> io::Result<Vec<u8>> {
        read(self.dir.as_ref(), id)
    }

    /// Opens file `id` to read its data a piece at a time (its length checked, not yet
    /// its checksum: the stream inside checks every frame as it is read).
    pub(crate) fn open_file(&self, id: u64) -> io::Result<SnapshotData> {
        open_file(self.dir.as_ref(), id)
    }

    /// File `id` is now the recorded one: every other file not in progress goes.
    pub(crate) fn recorded(&self, id: u64) {
        self.writing
            .lock()
            .expect("snapshot files lock")
            .remove(&id);
        if let Err(e) = self.remove_stale(Some(id)) {
            tracing::warn!(error = %e, "could not remove old snapshot files");
        }
    }

    /// No file is recorded now (a compaction mark is): every file not in progress goes.
    pub(crate) fn recorded_none(&self) {
        if let Err(e) = self.remove_stale(None) {
            tracing::warn!(error = %e, "could not remove old snapshot files");
        }
    }

    /// Gives file `id` up (a newer snapshot was recorded first, or writing it failed).
    pub(crate) fn discard(&self, id: u64) {
        self.writing
            .lock()
            .expect("snapshot files lock")
            .remove(&id);
        if let Err(e) = self.dir.remove(id) {
            tracing::warn!(error = %e, id, "could not remove a snapshot file");
        }
    }

    fn remove_stale(&self, keep: Option<u64>) -> io::Result<()> {
        let writing = self.writing.lock().expect("snapshot files lock").clone();
        let mut removed = false;
        for id in self.dir.list()? {
            if Some(id) != keep && !writing.contains(&id) {
                self.dir.remove(id)?;
                removed = true;
            }
        }
        if removed && self.sync {
            self.dir.sync()?;
        }
        Ok(())
    }
}

/// A snapshot file being written: the data after its header, then the header.
pub(crate) struct SnapshotWriter {
    files: Arc<SnapshotFiles>,
    id: u64,
    file: Arc<dyn super::wal::SegmentFile>,
    offset: u64,
    /// Bytes written since writeback was last started.
    unsynced: u64,
    crc: crc32fast::Hasher,
    done: bool,
    /// Told how far the data is written, once [`SnapshotWriter::readable`] was asked.
    progress: Option<tokio::sync::watch::Sender<Built>>,
}

impl SnapshotWriter {
    /// Bytes of data written so far.
    pub(crate) fn written(&self) -> u64 {
        self.offset - HEADER_BYTES as u64
    }

    /// The data as it is written: readable up to where it is written so far, and whole
    /// once the file is finished (failed if the writer is dropped unfinished).
    pub(crate) fn readable(&mut self) -> SnapshotData {
        let written = Built::Partly(self.written());
        let rx = match &self.progress {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = tokio::sync::watch::channel(written);
                self.progress = Some(tx);
                rx
            }
        };
        SnapshotData::building(self.id, Arc::new(FileData(self.file.clone())), rx)
    }

    /// Appends `data`.
    pub(crate) fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_at(self.offset, data)?;
        self.crc.update(data);
        self.offset += data.len() as u64;
        if let Some(tx) = &self.progress {
            tx.send_replace(Built::Partly(self.written()));
        }
        self.unsynced += data.len() as u64;
        if self.files.sync && self.unsynced >= WRITE_STEP_BYTES as u64 {
            self.file
                .start_writeback(self.offset - self.unsynced, self.unsynced)?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Writes the header and makes the file durable; returns its id.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        let len = self.offset - HEADER_BYTES as u64;
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
        header.extend_from_slice(&len.to_le_bytes());
        self.file.write_at(0, &header)?;
        if self.files.sync {
            self.file.sync()?;
            self.files.dir.sync()?;
        }
        self.done = true;
        if let Some(tx) = &self.progress {
            tx.send_replace(Built::Whole(len));
        }
        Ok(self.id)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.done {
            if let Some(tx) = &self.progress {
                tx.send_replace(Built::Failed);
            }
            self.files.discard(self.id);
        }
    }
}

/// A snapshot file's data, after its header. Held open, it stays readable after a
/// newer snapshot replaces it on disk.
struct FileData(Arc<dyn super::wal::SegmentFile>);

impl ReadAt for FileData {
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_at(HEADER_BYTES as u64 + offset, out)
    }
}

/// Opens snapshot file `id` in `dir` for reading, checking its header and length.
pub(crate) fn open_file(dir: &dyn SegmentDir, id: u64) -> io::Result<SnapshotData> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot file {id}: {why}"),
        )
    };
    let file = dir
        .open_existing(id)
        .map_err(|e| io::Error::new(e.kind(), format!("snapshot file {id}: {e}")))?;
    let len = file.len()?;
    if len < HEADER_BYTES as u64 {
        return Err(bad("shorter than its header"));
    }
    let mut header = [0u8; HEADER_BYTES];
    file.read_at(0, &mut header)?;
    if &header[0..4] != MAGIC {
        return Err(bad("not a snapshot file"));
    }
    let data_len = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if len != HEADER_BYTES as u64 + data_len {
        return Err(bad("length does not match its header"));
    }
    Ok(SnapshotData::new(id, data_len, Arc::new(FileData(file))))
}

/// Reads snapshot file `id` in `dir` whole, checking its length and checksum.
#[cfg(test)]
pub(crate) fn read(dir: &dyn SegmentDir, id: u64) -> io::Result<Vec<u8>> {
    let data = open_file(dir, id)?;
    let mut bytes = vec![0u8; data.len() as usize];
    data.read_at(0, &mut bytes)?;
    let mut header = [0u8; HEADER_BYTES];
    dir.open_existing(id)?.read_at(0, &mut header)?;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot file {id}: checksum mismatch"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SimDisk;

    #[test]
    fn a_written_file_reads_back_and_survives_a_crash() {
        let disk = SimDisk::new();
        let files = Arc::new(SnapshotFiles::open(disk.snapshot_dir(), true, None).unwrap());
        let id = files.write(b"the vault").unwrap();
        files.recorded(id);
        disk.crash();
        let files = Arc::new(SnapshotFiles::open(disk.snapshot_dir(), true, Some(id)).unwrap());
        assert_eq!(files.read(id).unwrap(), b"the vault");
        assert!(files.write(b"next").unwrap() > id, "ids are never reused");
    }

    #[test]
    fn a_file_larger_than_one_write_step_reads_back_whole() {
        let disk = SimDisk::new();
        let files = Arc::new(SnapshotFiles::open(disk.snapshot_dir(), true, None).unwrap());
        let data: Vec<u8> = (0..WRITE_STEP_BYTES * 2 + 5).map(|i| i as u8).collect();
        let id = files.write(&data).unwrap();
        files.recorded(id);
        disk.crash();
        assert_eq!(read(disk.snapshot_dir().as_ref(), id).unwrap(), data);
    }

    #[test]
    fn files_on_disk_read_back_and_are_removed_when_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = || -> Arc<dyn SegmentDir> {
            Arc::new(super::super::wal::FsDir::create(tmp.path().join("snap"), EXT).unwrap())
        };
        let files = Arc::new(SnapshotFiles::open(dir(), true, None).unwrap());
        let data: Vec<u8> = (0..WRITE_STEP_BYTES + 7).map(|i| (i % 251) as u8).collect();
        let old = files.write(b"old").unwrap();
        files.recorded(old);
        let id = files.write(&data).unwrap();
        files.recorded(id);
        drop(files);
        let files = Arc::new(SnapshotFiles::open(dir(), true, Some(id)).unwrap());
        assert_eq!(files.read(id).unwrap(), data);
        assert_eq!(dir().list().unwrap(), vec![id]);
    }

    #[test]
    fn only_the_recorded_file_and_those_in_progress_are_kept() {
        let disk = SimDisk::new();
        let files = Arc::new(SnapshotFiles::open(disk.snapshot_dir(), true, None).unwrap());
        let old = files.write(b"old").unwrap();
        files.recorded(old);
        let in_progress = files.write(b"building").unwrap();
        let new = files.write(b"new").unwrap();
        files.recorded(new);
        let mut listed = disk.snapshot_dir().list().unwrap();
        listed.sort_unstable();
        assert_eq!(listed, vec![in_progress, new]);
        files.discard(in_progress);
        assert_eq!(disk.snapshot_dir().list().unwrap(), vec![new]);
        // A file written but never recorded is removed on the next open.
        let orphan = files.write(b"orphan").unwrap();
        drop(files);
        SnapshotFiles::open(disk.snapshot_dir(), true, Some(new)).unwrap();
        assert_eq!(disk.snapshot_dir().list().unwrap(), vec![new]);
        assert!(read(disk.snapshot_dir().as_ref(), orphan).is_err());
    }

    #[tokio::test]
    async fn a_file_being_written_reads_as_far_as_it_is_written() {
        let disk = SimDisk::new();
        let files = Arc::new(SnapshotFiles::open(disk.snapshot_dir(), true, None).unwrap());
        let mut w = files.create().unwrap();
        let data = w.readable();
        assert_eq!(data.built(), Built::Partly(0));
        w.append(b"the va").unwrap();
        assert_eq!(data.written(4).await.unwrap(), (6, false));
        let mut out = [0u8; 6];
        data.read_at(0, &mut out).unwrap();
        assert_eq!(&out, b"the va");
        assert_eq!(
            data.read_at(0, &mut [0u8; 7]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof,
            "nothing past what is written is read"
        );
        // A reader waiting for more is woken by the next write, and told once it is
        // all there.
        let waiting = {
            let data = data.clone();
            tokio::spawn(async move { data.written(100).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        w.append(b"ult").unwrap();
        let id = w.finish().unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), (9, true));
        let mut all = [0u8; 9];
        data.read_at(0, &mut all).unwrap();
        assert_eq!(&all, b"the vault");
        assert_eq!(files.read(id).unwrap(), b"the vault");

        // A build given up is never whole: its readers are told so.
        let mut w = files.create().unwrap();
        let data = w.readable();
        w.append(b"half").unwrap();
        drop(w);
        assert_eq!(data.built(), Built::Failed);
        assert!(data.written(100).await.is_err());
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let disk = SimDisk::new();
        let files = Arc::new(SnapshotFiles::open(disk.snapshot_dir(), true, None).unwrap());
        let id = files.write(b"0123456789").unwrap();
        let f = disk.snapshot_dir().open(id).unwrap();
        f.write_at(HEADER_BYTES as u64 + 3, b"X").unwrap();
        let e = files.read(id).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("checksum"), "{e}");
        f.set_len(HEADER_BYTES as u64 + 4).unwrap();
        assert!(files.read(id).unwrap_err().to_string().contains("length"));
        assert_eq!(
            files.read(id + 1).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn an_unsynced_file_is_lost_in_a_crash_when_syncing_is_off() {
        let disk = SimDisk::new();
        let files = Arc::new(SnapshotFiles::open(disk.snapshot_dir(), false, None).unwrap());
        let id = files.write(b"volatile").unwrap();
        assert_eq!(files.read(id).unwrap(), b"volatile");
        disk.crash();
        assert!(read(disk.snapshot_dir().as_ref(), id).is_err());
    }
}
