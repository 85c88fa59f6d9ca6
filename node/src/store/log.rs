//! openraft's log storage on top of [`Store`].

use super::tail::TailRead;
use super::wal::range_start;
use super::writer::{Done, Op};
use super::{
    decode, decode_entry, encode, encode_entry, Store, KEY_COMMITTED, KEY_PURGED, KEY_VOTE,
};
use crate::raft_types::{Entry, LogId, TypeConfig, Vote};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, Ordering};

/// The Raft log (in the log's own files), vote and committed index (in redb).
#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

/// Set while the Raft core saves a vote.
///
/// openraft saves a vote on its core's own task and waits for it: while the disk
/// stalls, the core answers nothing, and what it last published still stands. A leader
/// whose storage stalls hands over, and the next leader's vote request then leaves its
/// core stuck saving that vote, still reporting itself the leader: a request sent into
/// that core would wait there until the core had been silent for an election window
/// (`Cluster::core_frozen`), and end with its outcome unknown. Checked before a leader
/// serves, the flag turns such requests away at once (`Cluster::saving_vote`).
#[derive(Debug, Default)]
pub(crate) struct VoteSave(AtomicBool);

impl VoteSave {
    pub(crate) fn pending(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Marks a save pending until the guard drops.
    fn begin(&self) -> VoteSaveGuard<'_> {
        self.0.store(true, Ordering::Release);
        VoteSaveGuard(self)
    }
}

struct VoteSaveGuard<'a>(&'a VoteSave);

impl Drop for VoteSaveGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.store(false, Ordering::Release);
    }
}

impl LogStore {
    /// The log view of `store`.
    pub fn new(store: Store) -> LogStore {
        LogStore { store }
    }

    fn db_entries(&self, range: impl RangeBounds<u64>) -> io::Result<BTreeMap<u64, Entry>> {
        let rows = self.store.wal.lock().expect("log lock").read(range)?;
        rows.into_iter()
            .map(|(i, bytes)| Ok((i, decode_entry(&bytes)?)))
            .collect()
    }

    fn last_db_entry(&self) -> io::Result<Option<Entry>> {
        let wal = self.store.wal.lock().expect("log lock");
        let Some(last) = wal.last_index() else {
            return Ok(None);
        };
        let rows = wal.read(last..=last)?;
        rows.first()
            .map(|(_, bytes)| decode_entry(bytes))
            .transpose()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        // Memory first, then the files for whatever lies below the tail in memory. An
        // entry trimmed from memory between the two reads is durable by then.
        let TailRead { rows, first_held } = self.store.tail.read(&range)?;
        if first_held.is_some_and(|first| range_start(&range) >= first) {
            return Ok(rows.into_iter().map(|(_, e)| e).collect());
        }
        let mut all = self.db_entries(range)?;
        all.extend(rows);
        Ok(all.into_values().collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.store
            .read_meta(KEY_VOTE)?
            .map(|b| decode(&b))
            .transpose()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self
            .store
            .read_meta(KEY_PURGED)?
            .map(|b| decode(&b))
            .transpose()?;
        let tail_last = self.store.tail.last_log_id();
        let db_last = self.last_db_entry()?.map(|e| e.log_id);
        let last_log_id = tail_last.or(db_last).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let _pending = self.store.vote_save.begin();
        self.store.put_meta(vec![(KEY_VOTE, encode(vote))]).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not awaited: a lost committed marker only means replaying a little more after a crash.
        if let Some(c) = committed {
            self.store.writer.submit(Op::PutMeta {
                pairs: vec![(KEY_COMMITTED, encode(&c))],
                done: Done::None,
            });
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.store
            .read_meta(KEY_COMMITTED)?
            .map(|b| decode(&b))
            .transpose()
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.store.writer.fault_switches().panic_raft_core_if_set();
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            use crate::timeline::{mark, Stage};
            mark(Stage::LogAppend, last.log_id.index, first.log_id.index);
        }
        let rows = entries
            .iter()
            .map(|e| (e.log_id.index, encode_entry(e)))
            .collect();
        let ids = entries.iter().map(|e| e.log_id).collect();
        self.store.tail.extend(entries);
        self.store.writer.submit(Op::Append {
            rows,
            ids,
            tail: self.store.tail.clone(),
            done: Done::Flushed(callback),
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.store.tail.retain(|i| i < from);
        let (done, rx) = Done::oneshot();
        self.store.writer.submit(Op::TruncateFrom { from, done });
        rx.await
            .map_err(|_| io::Error::other("storage writer stopped"))?
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.store.tail.retain(|i| i > log_id.index);
        let (done, rx) = Done::oneshot();
        self.store.writer.submit(Op::PurgeUpto {
            upto: log_id.index,
            purged: encode(&log_id),
            done,
        });
        rx.await
            .map_err(|_| io::Error::other("storage writer stopped"))?
    }
}
