//! A received snapshot written into a new vault generation while it arrives.
//!
//! Installing a snapshot writes every record into a new generation; at a million cards
//! that is most of a wiped follower's catch-up. Done only once the whole file is in,
//! it waits for the transfer first. Instead each chunk of an upload goes both to the
//! snapshot's file and, through a short queue, to a thread that decodes the stream and
//! writes the new generation as the chunks come; installing then finds it written (or
//! nearly) and only switches to it. The queue holds a few chunks: when the thread falls
//! behind, the upload waits, so the sender slows to the writing's pace and memory stays
//! bounded.
//!
//! The file stays the snapshot of record: the generation is used only when the thread
//! decoded exactly the file's stream to its end frame; otherwise installing writes it
//! from the file as before. Simulated hosts run no threads and always install from the
//! file.

use super::sm::fill_from;
use super::vault_db::{VaultDb, VaultFiles};
use bytes::{Buf, Bytes};
use std::io;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Chunks queued for the writing thread (4 MiB each).
const QUEUED_CHUNKS: usize = 4;

/// A vault generation written from a snapshot stream, and how many records it holds.
pub(crate) type Filled = (VaultDb, u64);

/// What the writing thread ends with.
type Outcome = oneshot::Receiver<io::Result<Filled>>;

/// The writing of one upload's generation.
pub(crate) struct Prefill {
    chunks: Option<mpsc::Sender<Bytes>>,
    outcome: Outcome,
}

impl Prefill {
    /// Starts a thread writing a new generation of `files` from the chunks it is given.
    pub(crate) fn start(files: Arc<VaultFiles>) -> io::Result<Prefill> {
        let id = files.allocate()?;
        let (chunks, mut queue) = mpsc::channel::<Bytes>(QUEUED_CHUNKS);
        let (tell, outcome) = oneshot::channel();
        std::thread::Builder::new()
            .name("kura-snap-fill".into())
            .spawn(move || {
                let mut chunk = Bytes::new();
                let read = |out: &mut [u8]| -> io::Result<()> {
                    let mut at = 0;
                    while at < out.len() {
                        if !chunk.has_remaining() {
                            chunk = queue.blocking_recv().ok_or_else(|| {
                                io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "the snapshot upload ended before its stream did",
                                )
                            })?;
                            continue;
                        }
                        let n = (out.len() - at).min(chunk.len());
                        out[at..at + n].copy_from_slice(&chunk[..n]);
                        chunk.advance(n);
                        at += n;
                    }
                    Ok(())
                };
                let filled = fill_from(&files, id, read);
                // Nobody waits any more (the upload was given up): the file goes.
                if let Err(Ok((db, _))) = tell.send(filled) {
                    db.retire();
                }
            })?;
        Ok(Prefill {
            chunks: Some(chunks),
            outcome,
        })
    }

    /// Queues the next chunk, waiting while the queue is full. A thread that stopped
    /// (on a bad stream, or one that ended) takes no more; what it ended with tells.
    pub(crate) async fn push(&mut self, chunk: Bytes) {
        if let Some(tx) = &self.chunks {
            if tx.send(chunk).await.is_err() {
                self.chunks = None;
            }
        }
    }

    /// No more chunks: what the thread ends with.
    fn finish(mut self) -> Outcome {
        self.chunks = None;
        self.outcome
    }
}

/// The generation written for the last finished upload, by its snapshot file's id,
/// until installing takes it (shared by the peer server and the state machine).
#[derive(Clone, Default)]
pub(crate) struct Prefilled(Arc<Mutex<Option<(u64, Kept)>>>);

/// A generation for a received snapshot: still being written as the chunks came, or
/// written (and not yet installed), as the chunks came or not.
enum Kept {
    Writing(Outcome),
    Written { filled: Filled, on_arrival: bool },
}

impl Prefilled {
    /// Keeps `prefill`'s outcome for the snapshot file `file`, replacing any other.
    pub(crate) fn keep(&self, file: u64, prefill: Prefill) {
        self.put(file, Kept::Writing(prefill.finish()));
    }

    /// Keeps the generation written from snapshot file `file` (as its chunks arrived, or
    /// not), replacing any other.
    pub(crate) fn keep_written(&self, file: u64, filled: Filled, on_arrival: bool) {
        self.put(file, Kept::Written { filled, on_arrival });
    }

    fn put(&self, file: u64, kept: Kept) {
        let old = self.0.lock().expect("prefilled lock").replace((file, kept));
        if let Some((_, old)) = old {
            give_up(old);
        }
    }

    /// The generation written from snapshot file `file`, once written, and whether it
    /// was written as the chunks arrived: `None` when there is none (or it failed: then
    /// it is written from the file).
    pub(crate) async fn take(&self, file: u64) -> Option<(Filled, bool)> {
        let kept = self.0.lock().expect("prefilled lock").take();
        let (id, kept) = kept?;
        if id != file {
            give_up(kept);
            return None;
        }
        let outcome = match kept {
            Kept::Written { filled, on_arrival } => return Some((filled, on_arrival)),
            Kept::Writing(outcome) => outcome,
        };
        match outcome.await {
            Ok(Ok(filled)) => Some((filled, true)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the vault written while the snapshot arrived is unusable; writing it from the file");
                None
            }
            Err(_) => None,
        }
    }
}

/// Drops a generation nobody will use, removing its file once written.
fn give_up(kept: Kept) {
    match kept {
        Kept::Written {
            filled: (db, _), ..
        } => db.retire(),
        Kept::Writing(mut outcome) => {
            // Closed, a thread still writing removes the file itself when it ends.
            outcome.close();
            if let Ok(Ok((db, _))) = outcome.try_recv() {
                db.retire();
            }
        }
    }
}
