//! The Raft log's tail in memory, shared by the log's reader and the storage writer.

use std::collections::BTreeMap;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::raft_types::{Entry, LogId};

/// How many durable entries the log keeps in memory for its readers (~1 KiB each).
pub(crate) const RECENT_ENTRIES: usize = 8192;

/// The log's tail in memory: every entry handed to the writer and not yet durable, and
/// after that the last [`RECENT_ENTRIES`] durable ones, so that replicating recent
/// entries neither reads the log's files nor decodes what it just encoded.
///
/// It also records that an append failed. Its entries were then taken out of the tail,
/// and the log no longer holds every entry openraft handed it, so every read of the log
/// fails from then on rather than come back short (openraft reads committed entries back
/// to apply them, and a short read would count entries applied that were not). The node
/// stops on the failure (`Cluster::stopped`) and replays its log when started. The flag
/// lives under the same lock as the entries, so a reader that finds the entries gone
/// finds the flag set.
#[derive(Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<TailState>>);

#[derive(Default)]
struct TailState {
    entries: BTreeMap<u64, Entry>,
    failed: bool,
}

/// What a read of the tail found: the entries in the range, and the first index the
/// tail holds at all (below it, the range must be read from the files).
pub(crate) struct TailRead {
    pub(crate) rows: Vec<(u64, Entry)>,
    pub(crate) first_held: Option<u64>,
}

impl Tail {
    fn lock(&self) -> MutexGuard<'_, TailState> {
        self.0.lock().expect("log tail lock")
    }

    /// The tail's entries in `range`, or an error once an append has failed.
    pub(crate) fn read(&self, range: &impl RangeBounds<u64>) -> io::Result<TailRead> {
        let t = self.lock();
        if t.failed {
            return Err(io::Error::other(
                "an append to the log failed: the log no longer holds every entry",
            ));
        }
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        Ok(TailRead {
            rows: t
                .entries
                .range(bounds)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            first_held: t.entries.first_key_value().map(|(k, _)| *k),
        })
    }

    /// The last entry's id, if the tail holds any.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.lock().entries.values().next_back().map(|e| e.log_id)
    }

    /// Adds entries handed to the writer.
    pub(crate) fn extend(&self, entries: Vec<Entry>) {
        let mut t = self.lock();
        for e in entries {
            t.entries.insert(e.log_id.index, e);
        }
    }

    /// Keeps only the entries `keep` says yes to (a truncation or a purge).
    pub(crate) fn retain(&self, keep: impl Fn(u64) -> bool) {
        self.lock().entries.retain(|k, _| keep(*k));
    }

    /// An append of `ids` failed: its entries never reached the files, so readers must
    /// not see them, and no later read may come back short without saying so.
    pub(crate) fn append_failed(&self, ids: &[LogId]) {
        let mut t = self.lock();
        t.failed = true;
        for id in ids {
            if t.entries.get(&id.index).is_some_and(|e| e.log_id == *id) {
                t.entries.remove(&id.index);
            }
        }
    }

    /// Every entry up to `upto` is durable: trims the oldest of them back to the bound.
    ///
    /// A later entry at such an index can only come after a truncation, which openraft
    /// awaits (and the writer runs in order) before appending it.
    pub(crate) fn durable_upto(&self, upto: u64) {
        let mut t = self.lock();
        while t.entries.len() > RECENT_ENTRIES {
            match t.entries.first_key_value() {
                Some((&i, _)) if i <= upto => {
                    t.entries.pop_first();
                }
                _ => break,
            }
        }
    }

    /// The indexes the tail holds, in order (for tests).
    #[cfg(test)]
    pub(crate) fn indexes(&self) -> Vec<u64> {
        self.lock().entries.keys().copied().collect()
    }
}
