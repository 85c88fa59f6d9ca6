//! The single writer: every durable change to the log and the database goes through
//! here.
//!
//! In `Threaded` mode a dedicated OS thread drains its queue and makes everything it
//! found durable at once (group commit): log entries appended to the log's segment
//! files and one fdatasync; other changes in one redb transaction with
//! `Durability::Immediate`. Only then does it complete each operation. In `Task` mode —
//! simulated hosts, which must not run real threads — an async task on the host's
//! runtime does the same, and the storage fault switches stall it on simulated time.
//! The committed-index marker, which nobody waits for, goes with the next redb
//! transaction, or unsynced after a second without one. Snapshot data never comes
//! here (see `snapshot_files`): only the record of which snapshot is current.
//!
//! [`SyncPolicy::UnsafeNoFsync`] commits with `Durability::None`: nothing is synced, so
//! a crash loses acknowledged writes. It exists for benchmarks and to prove that the
//! chaos oracle notices lost writes; never use it for data you keep.

use super::tail::Tail;
use super::wal::Wal;
use super::{encode, io_err, META};
use crate::faults::FaultSwitches;
use crate::raft_types::{LogId, TypeConfig};
use openraft::storage::IOFlushed;
use redb::{Database, Durability};
use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Upper bound on operations folded into one transaction.
const BATCH_OPS_MAX: usize = 4096;
/// Metadata nobody waits for (the committed-index marker) is written with the next
/// transaction, or after this long without one.
const DEFERRED_FLUSH: Duration = Duration::from_secs(1);

/// How commits are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterMode {
    /// A dedicated writer thread with group commit (production).
    Threaded,
    /// An async writer task on the current runtime (simulated hosts, which must not
    /// start threads).
    Task,
}

/// Whether commits are synced to disk before they are acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every commit is durable before any operation in it completes (the default).
    #[default]
    Fsync,
    /// Commits are never synced: fast, and a crash loses acknowledged writes.
    UnsafeNoFsync,
}

impl SyncPolicy {
    fn durability(self) -> Durability {
        match self {
            SyncPolicy::Fsync => Durability::Immediate,
            SyncPolicy::UnsafeNoFsync => Durability::None,
        }
    }
}

/// Called with the duration of every durable commit (for the fsync histogram).
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Completion of one operation.
pub(crate) enum Done {
    /// Nobody waits.
    None,
    /// openraft's flush callback for appended log entries.
    Flushed(IOFlushed<TypeConfig>),
    /// An awaiting caller.
    Oneshot(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// A failed commit, shared by every operation of its batch (each gets its own
/// `io::Error` of the same kind).
#[derive(Debug, Clone)]
struct CommitFailed {
    kind: io::ErrorKind,
    message: String,
}

impl Done {
    pub(crate) fn oneshot() -> (Done, tokio::sync::oneshot::Receiver<io::Result<()>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Done::Oneshot(tx), rx)
    }

    fn complete(self, result: &Result<(), CommitFailed>) {
        let r = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind, e.message.clone()));
        match self {
            Done::None => {}
            Done::Flushed(cb) => cb.io_completed(r),
            Done::Oneshot(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// One durable change.
pub(crate) enum Op {
    /// Appends serialized entries; once they are durable, `ids` lets the writer trim
    /// the in-memory copy of the log's tail back to its bound.
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        ids: Vec<LogId>,
        tail: Tail,
        done: Done,
    },
    /// Deletes every log entry with index `>= from`.
    TruncateFrom { from: u64, done: Done },
    /// Deletes every log entry with index `<= upto` and records the purge point.
    PurgeUpto {
        upto: u64,
        purged: Vec<u8>,
        done: Done,
    },
    /// Sets metadata keys.
    PutMeta {
        pairs: Vec<(&'static str, Vec<u8>)>,
        done: Done,
    },
    /// Records the current snapshot: its meta and its file, or no file for a
    /// compaction mark (the vault's own file stands for it).
    RecordSnapshot {
        meta: Vec<u8>,
        file: Option<u64>,
        done: Done,
    },
    /// A tiny durable write that exercises the commit path (storage health check).
    Canary { done: Done },
}

impl Op {
    /// True for operations that change the database (not only the log's files).
    fn writes_meta(&self) -> bool {
        !matches!(self, Op::Append { .. } | Op::TruncateFrom { .. })
    }

    /// The op's completion, after its batch was made durable or (`durable` false) failed.
    fn into_done(self, durable: bool) -> Done {
        match self {
            Op::Append {
                ids, tail, done, ..
            } => {
                if durable {
                    if let Some(upto) = ids.iter().map(|id| id.index).max() {
                        tail.durable_upto(upto);
                    }
                } else {
                    tail.append_failed(&ids);
                }
                done
            }
            Op::TruncateFrom { done, .. }
            | Op::PurgeUpto { done, .. }
            | Op::PutMeta { done, .. }
            | Op::RecordSnapshot { done, .. }
            | Op::Canary { done } => done,
        }
    }
}

/// A handle to the writer; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    inner: Arc<WriterInner>,
}

struct WriterInner {
    tx: Queue,
    thread: Option<std::thread::JoinHandle<()>>,
    faults: Arc<FaultSwitches>,
}

/// The writer's queue: to its thread or to its task.
enum Queue {
    Thread(Option<Mutex<mpsc::Sender<Op>>>),
    Task(tokio::sync::mpsc::UnboundedSender<Op>),
}

impl Drop for WriterInner {
    /// Closes the queue and waits for the thread, so the database file is released
    /// when the last handle goes.
    fn drop(&mut self) {
        if let Queue::Thread(tx) = &mut self.tx {
            drop(tx.take());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    pub(crate) fn start(
        db: Arc<Database>,
        wal: Arc<Mutex<Wal>>,
        mode: WriterMode,
        sync: SyncPolicy,
        fsync: FsyncObserver,
        durable_log: Arc<std::sync::atomic::AtomicU64>,
    ) -> io::Result<Writer> {
        let faults = Arc::new(FaultSwitches::default());
        let committer = Committer {
            db,
            wal,
            mode,
            sync,
            fsync,
            durable_log,
            deferred: BTreeMap::new(),
            deferred_since: None,
        };
        let (tx, thread) = match mode {
            WriterMode::Task => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Op>();
                // Bare tokio: the writer draws no randomness, so it needs no Raft RNG
                // scope, and a simulated host's runtime is seeded by turmoil.
                tokio::spawn(run_task(committer, rx, faults.clone()));
                (Queue::Task(tx), None)
            }
            WriterMode::Threaded => {
                let (tx, rx) = mpsc::channel::<Op>();
                let faults2 = faults.clone();
                let thread = std::thread::Builder::new()
                    .name("kura-store-writer".into())
                    .spawn(move || run_thread(committer, rx, faults2))?;
                (Queue::Thread(Some(Mutex::new(tx))), Some(thread))
            }
        };
        Ok(Writer {
            inner: Arc::new(WriterInner { tx, thread, faults }),
        })
    }

    /// The fault switches the writer thread consults before each commit (threaded mode).
    pub(crate) fn faults(&self) -> Arc<FaultSwitches> {
        self.inner.faults.clone()
    }

    /// The node's fault switches, borrowed (for the log's append, on every write).
    pub(crate) fn fault_switches(&self) -> &FaultSwitches {
        &self.inner.faults
    }

    /// Queues an operation for the writer thread or task.
    pub(crate) fn submit(&self, op: Op) {
        let refused = match &self.inner.tx {
            Queue::Thread(tx) => tx
                .as_ref()
                .and_then(|tx| tx.lock().expect("writer queue lock").send(op).err())
                .map(|mpsc::SendError(op)| op),
            Queue::Task(tx) => tx
                .send(op)
                .err()
                .map(|tokio::sync::mpsc::error::SendError(op)| op),
        };
        if let Some(op) = refused {
            op.into_done(false).complete(&Err(CommitFailed {
                kind: io::ErrorKind::BrokenPipe,
                message: "storage writer stopped".into(),
            }));
        }
    }
}

/// What commits a batch: the database, how durably, and who hears of each commit.
struct Committer {
    db: Arc<Database>,
    wal: Arc<Mutex<Wal>>,
    /// Whether the writer runs on a thread of its own (then it may start others).
    mode: WriterMode,
    sync: SyncPolicy,
    fsync: FsyncObserver,
    /// The highest log index made durable so far (see `Store::durable_log_index`).
    durable_log: Arc<std::sync::atomic::AtomicU64>,
    /// Metadata nobody waits for, not yet written (by key: the newest value wins).
    deferred: BTreeMap<&'static str, Vec<u8>>,
    /// When the oldest of it came.
    deferred_since: Option<Instant>,
}

fn run_thread(mut committer: Committer, rx: mpsc::Receiver<Op>, faults: Arc<FaultSwitches>) {
    loop {
        match rx.recv_timeout(committer.flush_wait()) {
            Ok(first) => {
                faults.before_storage_commit();
                committer.commit(batch(first, || rx.try_recv().ok()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) if committer.has_deferred() => {
                faults.before_storage_commit();
                committer.flush_deferred();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    committer.flush_deferred();
}

async fn run_task(
    mut committer: Committer,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Op>,
    faults: Arc<FaultSwitches>,
) {
    loop {
        match tokio::time::timeout(committer.flush_wait(), rx.recv()).await {
            Ok(Some(first)) => {
                faults.before_storage_commit_async().await;
                let Some(pending) = committer.commit_start(batch(first, || rx.try_recv().ok()))
                else {
                    continue;
                };
                // The sync takes time, as on a real disk: a crash can come while the
                // log's writes are in the page cache only (and tear them).
                if pending.syncs_log() && committer.sync == SyncPolicy::Fsync {
                    crate::runtime::sleep(TASK_SYNC_TIME).await;
                }
                committer.commit_finish(pending);
            }
            Err(_) if committer.has_deferred() => {
                faults.before_storage_commit_async().await;
                committer.flush_deferred();
            }
            Err(_) => {}
            Ok(None) => break,
        }
    }
    committer.flush_deferred();
}

/// `first` and whatever else is queued already, up to [`BATCH_OPS_MAX`] operations.
fn batch(first: Op, mut queued: impl FnMut() -> Option<Op>) -> Vec<Op> {
    let mut batch = vec![first];
    while batch.len() < BATCH_OPS_MAX {
        match queued() {
            Some(op) => batch.push(op),
            None => break,
        }
    }
    batch
}

impl Committer {
    /// Applies `batch`, then completes every operation. Metadata nobody waits for (the
    /// lazily kept commit marker) is only noted: it goes with the next transaction the
    /// batch needs anyway, or is written unsynced once it has waited
    /// [`DEFERRED_FLUSH`]. Writing it at once put a database transaction between one
    /// log append and the next — a synced one whenever it shared a batch with an
    /// append — for a marker whose loss only means replaying a little more after a
    /// crash.
    fn commit(&mut self, batch: Vec<Op>) {
        if let Some(pending) = self.commit_start(batch) {
            self.commit_finish(pending);
        }
    }

    /// The first half of [`Committer::commit`]: the batch's log changes written, not
    /// yet synced (`None`: nothing to finish).
    fn commit_start(&mut self, batch: Vec<Op>) -> Option<Pending> {
        let mut ops = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::PutMeta {
                    pairs,
                    done: Done::None,
                } => {
                    self.deferred_since.get_or_insert_with(Instant::now);
                    self.deferred.extend(pairs);
                }
                op => ops.push(op),
            }
        }
        if ops.is_empty() {
            if self.flush_wait().is_zero() {
                self.flush_deferred();
            }
            return None;
        }
        let started = Instant::now();
        // A database transaction is coming anyway: the deferred metadata goes with it.
        let deferred = if ops.iter().any(Op::writes_meta) {
            self.take_deferred()
        } else {
            Vec::new()
        };
        let appended_upto = ops
            .iter()
            .filter_map(|op| match op {
                Op::Append { ids, .. } => ids.iter().map(|id| id.index).max(),
                _ => None,
            })
            .max();
        if let Some(top) = appended_upto {
            crate::timeline::mark(crate::timeline::Stage::WriterStart, top, ops.len() as u64);
        }
        let written = self.write_log(&ops, !deferred.is_empty());
        Some(Pending {
            ops,
            started,
            appended_upto,
            deferred,
            written,
        })
    }

    /// The second half: the log synced, the rest written, every operation completed.
    fn commit_finish(&mut self, p: Pending) {
        let result = p
            .written
            .and_then(|w| self.finish_write(self.sync.durability(), &p.ops, p.deferred, w))
            .map_err(|e| CommitFailed {
                kind: e.kind(),
                message: e.to_string(),
            });
        if result.is_ok() {
            (self.fsync)(p.started.elapsed());
            if let Some(top) = p.appended_upto {
                crate::timeline::mark(crate::timeline::Stage::WriterSynced, top, 0);
                self.durable_log
                    .fetch_max(top, std::sync::atomic::Ordering::AcqRel);
            }
        } else if let Err(e) = &result {
            tracing::error!(error = %e.message, "storage commit failed");
        }
        for op in p.ops {
            op.into_done(result.is_ok()).complete(&result);
        }
    }

    fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// How long the deferred metadata may still wait.
    fn flush_wait(&self) -> Duration {
        self.deferred_since.map_or(DEFERRED_FLUSH, |t| {
            DEFERRED_FLUSH.saturating_sub(t.elapsed())
        })
    }

    fn take_deferred(&mut self) -> Vec<(&'static str, Vec<u8>)> {
        self.deferred_since = None;
        std::mem::take(&mut self.deferred).into_iter().collect()
    }

    /// Writes the deferred metadata, unsynced: the next synced commit carries it.
    fn flush_deferred(&mut self) {
        if !self.has_deferred() {
            return;
        }
        let pairs = self.take_deferred();
        if let Err(e) = write_meta(&self.db, Durability::None, &[], pairs) {
            tracing::error!(error = %e, "storage commit failed");
        }
    }
}

impl Committer {
    /// Writes the batch's log changes to the log's files, not yet synced; what the
    /// rest of the commit needs.
    fn write_log(&self, batch: &[Op], deferred: bool) -> io::Result<Written> {
        let mut purge_upto = None;
        let mut meta = deferred;
        let mut wal = self.wal.lock().expect("log lock");
        for op in batch {
            match op {
                Op::Append { rows, .. } => wal.append(rows)?,
                Op::TruncateFrom { from, .. } => wal.truncate_from(*from)?,
                Op::PurgeUpto { upto, .. } => {
                    purge_upto = purge_upto.max(Some(*upto));
                    meta = true;
                }
                Op::PutMeta { .. } | Op::RecordSnapshot { .. } | Op::Canary { .. } => meta = true,
            }
        }
        Ok(Written {
            to_sync: wal.take_sync(),
            purge_upto,
            meta,
        })
    }

    /// Syncs the log's files (unless syncing is off), writes the rest in one redb
    /// transaction. A purge deletes segments only after the purge point is durable, so
    /// that a crash in between never leaves a gap below the log's first entry.
    fn finish_write(
        &self,
        durability: Durability,
        batch: &[Op],
        deferred: Vec<(&'static str, Vec<u8>)>,
        w: Written,
    ) -> io::Result<()> {
        if self.sync == SyncPolicy::Fsync {
            w.to_sync.sync()?;
        }
        if w.meta {
            write_meta(&self.db, durability, batch, deferred)?;
        }
        if let Some(upto) = w.purge_upto {
            let purged = self.wal.lock().expect("log lock").purge_upto(upto);
            self.remove_purged(purged);
        }
        Ok(())
    }
}

/// A commit between its two halves.
struct Pending {
    ops: Vec<Op>,
    started: Instant,
    appended_upto: Option<u64>,
    deferred: Vec<(&'static str, Vec<u8>)>,
    written: io::Result<Written>,
}

impl Pending {
    /// Whether the second half syncs log files.
    fn syncs_log(&self) -> bool {
        self.written.as_ref().is_ok_and(|w| !w.to_sync.is_empty())
    }
}

/// How long a writer on a task (a simulated host) takes to sync the log's files.
const TASK_SYNC_TIME: Duration = Duration::from_micros(200);

/// What writing a batch's log changes leaves to do.
struct Written {
    to_sync: super::wal::SyncSet,
    purge_upto: Option<u64>,
    meta: bool,
}

impl Committer {
    /// Deletes purged segments: on a thread of their own when the writer has one, so
    /// that neither the writer's next commits nor openraft's core (which waits for the
    /// purge) wait for the file system to free them, and there a piece at a time. A
    /// deletion that fails leaves the files to the next open.
    fn remove_purged(&self, purged: super::wal::Purged) {
        if purged.is_empty() {
            return;
        }
        let report = |r: io::Result<()>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not delete purged log segments; the next start deletes them");
            }
        };
        match self.mode {
            WriterMode::Task => report(purged.remove()),
            // A piece at a time: a thread nothing waits for (decision 0024).
            WriterMode::Threaded => {
                let spawned = std::thread::Builder::new()
                    .name("kura-log-purge".into())
                    .spawn(move || report(purged.remove_paced()));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "could not start deleting purged log segments; the next start deletes them");
                }
            }
        }
    }
}

/// The batch's non-log changes and the `deferred` metadata (older, so written first) in
/// one redb transaction.
fn write_meta(
    db: &Database,
    durability: Durability,
    batch: &[Op],
    deferred: Vec<(&'static str, Vec<u8>)>,
) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(durability)
        .map_err(|e| io::Error::other(e.to_string()))?;
    {
        let mut meta = txn.open_table(META).map_err(io_err)?;
        for (k, v) in &deferred {
            meta.insert(*k, v.as_slice()).map_err(io_err)?;
        }
        for op in batch {
            match op {
                Op::Append { .. } | Op::TruncateFrom { .. } => {}
                Op::PurgeUpto { purged, .. } => {
                    meta.insert(super::KEY_PURGED, purged.as_slice())
                        .map_err(io_err)?;
                }
                Op::PutMeta { pairs, .. } => {
                    for (k, v) in pairs {
                        meta.insert(*k, v.as_slice()).map_err(io_err)?;
                    }
                }
                Op::RecordSnapshot { meta: m, file, .. } => {
                    meta.insert(super::KEY_SNAPSHOT_META, m.as_slice())
                        .map_err(io_err)?;
                    match file {
                        Some(file) => meta
                            .insert(super::KEY_SNAPSHOT_FILE, encode(file).as_slice())
                            .map(|_| ()),
                        None => meta.remove(super::KEY_SNAPSHOT_FILE).map(|_| ()),
                    }
                    .map_err(io_err)?;
                    meta.remove(super::KEY_SNAPSHOT_DATA).map_err(io_err)?;
                }
                Op::Canary { .. } => {
                    meta.insert("canary", encode(&started_marker()).as_slice())
                        .map_err(io_err)?;
                }
            }
        }
    }
    txn.commit().map_err(io_err)
}

fn started_marker() -> u64 {
    // Any changing value works: the point is a real page write and fsync.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::wal::{SegmentDir, SegmentFile};
    use crate::store::SimDisk;

    /// A segment directory whose deletions each wait for the test to let one go.
    struct HeldRemoves {
        inner: Arc<dyn SegmentDir>,
        gate: Mutex<mpsc::Receiver<()>>,
    }

    impl SegmentDir for HeldRemoves {
        fn list(&self) -> io::Result<Vec<u64>> {
            self.inner.list()
        }
        fn open(&self, id: u64) -> io::Result<Arc<dyn SegmentFile>> {
            self.inner.open(id)
        }
        fn open_existing(&self, id: u64) -> io::Result<Arc<dyn SegmentFile>> {
            self.inner.open_existing(id)
        }
        fn remove(&self, id: u64) -> io::Result<()> {
            let _ = self.gate.lock().expect("gate").recv();
            self.inner.remove(id)
        }
        fn sync(&self) -> io::Result<()> {
            self.inner.sync()
        }
    }

    #[tokio::test]
    async fn a_purge_completes_without_waiting_for_its_segments_to_be_deleted() {
        let disk = SimDisk::new();
        let (release, gate) = mpsc::channel();
        let dir: Arc<dyn SegmentDir> = Arc::new(HeldRemoves {
            inner: disk.wal_dir(),
            gate: Mutex::new(gate),
        });
        // Small segments, so forty entries span several.
        let mut wal = Wal::open_with(dir.clone(), true, 100, 0).unwrap();
        let rows: Vec<(u64, Vec<u8>)> = (1..=40).map(|i| (i, vec![i as u8; 20])).collect();
        wal.append(&rows).unwrap();
        wal.take_sync().sync().unwrap();
        let before = dir.list().unwrap().len();
        assert!(before > 3, "{before} segments");
        let wal = Arc::new(Mutex::new(wal));
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let writer = Writer::start(
            Arc::new(db),
            wal.clone(),
            WriterMode::Threaded,
            SyncPolicy::Fsync,
            Arc::new(|_| {}),
            Arc::new(std::sync::atomic::AtomicU64::new(40)),
        )
        .unwrap();

        // Every deletion is held: the purge must still complete (openraft's core waits
        // for it, and a leader that waits sends no heartbeats).
        let (done, rx) = Done::oneshot();
        writer.submit(Op::PurgeUpto {
            upto: 35,
            purged: encode(&35u64),
            done,
        });
        let Ok(done) = tokio::time::timeout(Duration::from_secs(10), rx).await else {
            // Let the writer go, or dropping it would wait for it for ever.
            drop(release);
            panic!("the purge waited for its deletions");
        };
        done.unwrap().unwrap();
        assert_eq!(dir.list().unwrap().len(), before, "nothing deleted yet");
        assert_eq!(wal.lock().unwrap().read(..=35).unwrap(), Vec::new());

        // Let the deletions go: the segments holding only purged entries disappear.
        for _ in 0..before {
            let _ = release.send(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir.list().unwrap().len() == before {
            assert!(
                Instant::now() < deadline,
                "the purged segments were never deleted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What is left still reads back whole.
        assert_eq!(wal.lock().unwrap().read(36..).unwrap(), rows[35..].to_vec());
    }
}
