//! The single writer: every durable change to the database goes through here.
//!
//! In `Threaded` mode a dedicated OS thread drains its queue, applies everything it
//! found in one redb transaction with `Durability::Immediate` (group commit: one
//! fsync per batch), then completes each operation. In `Inline` mode — simulated
//! hosts, which must not run real threads — the caller commits each operation itself.

use super::{encode, io_err, Entry, LOG, META};
use crate::faults::FaultSwitches;
use crate::raft_types::{LogId, TypeConfig};
use openraft::storage::IOFlushed;
use redb::{Database, Durability};
use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound on operations folded into one transaction.
const BATCH_OPS_MAX: usize = 4096;

/// How commits are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterMode {
    /// A dedicated writer thread with group commit (production).
    Threaded,
    /// Commit in the calling task (simulated hosts, which must not start threads).
    Inline,
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

impl Done {
    pub(crate) fn oneshot() -> (Done, tokio::sync::oneshot::Receiver<io::Result<()>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Done::Oneshot(tx), rx)
    }

    fn complete(self, result: &Result<(), String>) {
        let r = result.clone().map_err(io::Error::other);
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
    /// Appends serialized entries; `ids` lets the writer retire them from `pending`.
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        ids: Vec<LogId>,
        pending: Arc<Mutex<BTreeMap<u64, Entry>>>,
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
    /// A tiny durable write that exercises the commit path (storage health check).
    Canary { done: Done },
}

impl Op {
    fn into_done(self) -> Done {
        match self {
            Op::Append {
                ids, pending, done, ..
            } => {
                let mut p = pending.lock().expect("pending lock");
                for id in ids {
                    if p.get(&id.index).is_some_and(|e| e.log_id == id) {
                        p.remove(&id.index);
                    }
                }
                done
            }
            Op::TruncateFrom { done, .. }
            | Op::PurgeUpto { done, .. }
            | Op::PutMeta { done, .. }
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
    tx: Option<Mutex<mpsc::Sender<Op>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    db: Arc<Database>,
    fsync: FsyncObserver,
    faults: Arc<FaultSwitches>,
}

impl Drop for WriterInner {
    /// Closes the queue and waits for the thread, so the database file is released
    /// when the last handle goes.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    pub(crate) fn start(
        db: Arc<Database>,
        mode: WriterMode,
        fsync: FsyncObserver,
    ) -> io::Result<Writer> {
        let faults = Arc::new(FaultSwitches::default());
        let (tx, thread) = match mode {
            WriterMode::Inline => (None, None),
            WriterMode::Threaded => {
                let (tx, rx) = mpsc::channel::<Op>();
                let (db2, fsync2, faults2) = (db.clone(), fsync.clone(), faults.clone());
                let thread = std::thread::Builder::new()
                    .name("kura-store-writer".into())
                    .spawn(move || run(db2, rx, fsync2, faults2))?;
                (Some(Mutex::new(tx)), Some(thread))
            }
        };
        Ok(Writer {
            inner: Arc::new(WriterInner {
                tx,
                thread,
                db,
                fsync,
                faults,
            }),
        })
    }

    /// The fault switches the writer thread consults before each commit (threaded mode).
    pub(crate) fn faults(&self) -> Arc<FaultSwitches> {
        self.inner.faults.clone()
    }

    /// Queues an operation (threaded) or commits it now (inline).
    pub(crate) fn submit(&self, op: Op) {
        match &self.inner.tx {
            Some(tx) => {
                if let Err(mpsc::SendError(op)) = tx.lock().expect("writer queue lock").send(op) {
                    op.into_done()
                        .complete(&Err("storage writer stopped".into()));
                }
            }
            None => commit_batch(&self.inner.db, vec![op], &self.inner.fsync),
        }
    }
}

fn run(
    db: Arc<Database>,
    rx: mpsc::Receiver<Op>,
    fsync: FsyncObserver,
    faults: Arc<FaultSwitches>,
) {
    while let Ok(first) = rx.recv() {
        faults.before_storage_commit();
        let mut batch = vec![first];
        while batch.len() < BATCH_OPS_MAX {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(&db, batch, &fsync);
    }
}

/// Applies `batch` in one durable transaction, then completes every operation.
fn commit_batch(db: &Database, batch: Vec<Op>, fsync: &FsyncObserver) {
    let started = Instant::now();
    let result = write_all(db, &batch).map_err(|e| e.to_string());
    if result.is_ok() {
        fsync(started.elapsed());
    } else if let Err(e) = &result {
        tracing::error!(error = %e, "storage commit failed");
    }
    for op in batch {
        op.into_done().complete(&result);
    }
}

fn write_all(db: &Database, batch: &[Op]) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| io::Error::other(e.to_string()))?;
    {
        let mut log = txn.open_table(LOG).map_err(io_err)?;
        let mut meta = txn.open_table(META).map_err(io_err)?;
        for op in batch {
            match op {
                Op::Append { rows, .. } => {
                    for (index, bytes) in rows {
                        log.insert(*index, bytes.as_slice()).map_err(io_err)?;
                    }
                }
                Op::TruncateFrom { from, .. } => {
                    log.retain_in(*from.., |_, _| false).map_err(io_err)?;
                }
                Op::PurgeUpto { upto, purged, .. } => {
                    log.retain_in(..=*upto, |_, _| false).map_err(io_err)?;
                    meta.insert(super::KEY_PURGED, purged.as_slice())
                        .map_err(io_err)?;
                }
                Op::PutMeta { pairs, .. } => {
                    for (k, v) in pairs {
                        meta.insert(*k, v.as_slice()).map_err(io_err)?;
                    }
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
