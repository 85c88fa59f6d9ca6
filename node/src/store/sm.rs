//! The state machine: the vault in redb tables ([`super::vault_db`]), snapshots
//! streamed into files of their own.
//!
//! Each batch of entries is applied into an in-memory buffer ([`super::overlay`]) that
//! reads see over the file; the buffer is written into the file every [`FLUSH_EVERY`]
//! in one redb transaction with `last_applied` and the membership, committed without an
//! fsync (`Durability::None`): the log is the durability point. A durable commit
//! follows at least every [`DURABLE_EVERY_ENTRIES`] entries or [`DURABLE_EVERY`] — from
//! the durable loop, never in an apply, which would hold every later apply for its
//! fsync — and before every snapshot is built, so that
//! `purged ≤ snapshot ≤ durably applied ≤ committed` holds after any crash; on restart
//! openraft applies the committed entries after the durably applied point again.
//!
//! A snapshot is a stream of the tables ([`super::snapshot_stream`]) read from one view
//! (the buffer over one read transaction) — consistent while writes go on — and written to its file a
//! frame at a time. Installing one writes a new vault generation from the stream in
//! batches and switches to it with one durable commit.

use super::overlay::{self, Changes, Layered};
use super::prefill::{Filled, Prefill, Prefilled};
use super::snapshot_stream::{self, Encoder};
use super::vault_db::{self, FileView, ReadTables, VaultDb, VaultFiles, WriteTables};
use super::writer::{Done, Op};
use super::{
    decode, encode, io_err, read_meta_keys, ApplyCheck, Store, FILE_ROOM_STEP, KEY_SNAPSHOT_FILE,
    KEY_SNAPSHOT_META,
};
use crate::raft_types::{
    LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::vault::tables::Recording;
use crate::vault::{Response, StorageError, TableId, Tables, TablesMut, Vault};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, ReadableDatabase};
use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

/// Applied changes are written to the vault's file at least this often...
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// ...or as soon as this many keys have changed since the last write (the buffer's
/// bound: the apply that reaches it writes the buffer out itself).
const FLUSH_KEYS: usize = 100_000;
/// Entries applied in place, on the state machine's task, at a time
/// ([`SharedVault::applies_in_place`]); between two such steps the apply checks its
/// budget.
pub(super) const APPLY_IN_PLACE_ENTRIES: usize = 64;
/// How long one apply may hold the consensus worker applying in place; the rest of its
/// batch then goes to the blocking pool. Keeps a batch that reads many vault pages from
/// the disk (a cold cache at ten million cards) from holding heartbeats for long.
const APPLY_IN_PLACE_BUDGET: Duration = Duration::from_millis(4);
/// Most changed keys a batch may merge into the buffer while holding the lock every
/// read takes (about 0.3 µs a key); a larger batch is merged into a copy outside it.
pub(super) const MERGE_IN_PLACE_KEYS: usize = 1024;
/// Keys one entry is taken to change, for telling whether a batch may fill the buffer;
/// a tokenization changes about ten (token, card, fingerprint, member, audit). A rare
/// command that changes more and fills the buffer still has it written out on the
/// blocking pool.
pub(super) const KEYS_PER_ENTRY_MAX: usize = 64;
/// A durable commit of the applied state follows at least this many entries...
pub(super) const DURABLE_EVERY_ENTRIES: u64 = 10_000;
/// ...or this long.
pub(super) const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// How soon the durable loop tries again when this node's log was behind the vault.
const DURABLE_RETRY: Duration = Duration::from_millis(5);
/// How long a snapshot build waits for this node's log to be durable up to its index.
const SNAPSHOT_LOG_WAIT_MS: u64 = 10_000;
/// Records written per transaction while a snapshot is installed.
const INSTALL_BATCH_RECORDS: usize = 20_000;

/// The vault's tables as a request reads them: the buffered changes over one read
/// transaction of the file.
pub type ViewTables = Layered<ReadTables>;

/// The vault as a request reads it: one applied state.
pub type VaultView = Vault<ViewTables>;

/// The vault as the API reads it: shared between the state machine and request handlers.
///
/// Applies write into an in-memory buffer ([`super::overlay`]) that every read sees
/// over the file; the durable loop writes the buffer into the file every
/// [`FLUSH_EVERY`] in one transaction, and commits the file durably about every
/// [`DURABLE_EVERY`]. Locks, always taken in this order: `flush` (a flush, a durable
/// commit, an install), `apply` (an apply batch, the start of a flush), `state` (held
/// only to copy or swap the maps).
pub struct SharedVault {
    state: std::sync::Mutex<Applied>,
    /// Held by the one apply (or flush) that may change the buffer; keeps what the last
    /// apply learnt about the vault for the next.
    apply: std::sync::Mutex<ApplyHint>,
    flush: std::sync::Mutex<Flushed>,
    /// The highest log index durable in this node's log (see `Store::durable_log_index`).
    durable_log: Arc<std::sync::atomic::AtomicU64>,
    /// The buffer's bound in changed keys ([`FLUSH_KEYS`]).
    flush_keys: std::sync::atomic::AtomicUsize,
    /// The first failure to write the vault's file, once there was one (see
    /// [`SharedVault::failure`]).
    failure: tokio::sync::watch::Sender<Option<String>>,
    /// The vault as it stood just after each of the last comparison markers applied
    /// (at most [`MARKS_KEPT`], oldest first), until the service takes them to hash
    /// ([`SharedVault::take_mark`]). Taken after `state`.
    mark: std::sync::Mutex<std::collections::VecDeque<Mark>>,
    marked: tokio::sync::Notify,
}

/// The vault as it stood just after a [`crate::vault::Command::CompareVaults`] entry
/// applied: every member's tables at that index are the same, or one differs.
pub struct Mark {
    /// The comparison's id.
    pub check: u64,
    /// The marker entry's index.
    pub index: u64,
    /// The tables then: O(1) copies of the buffer over one read transaction of the
    /// file. Holding them keeps that transaction's pages from reuse, as a snapshot
    /// build's view does.
    pub tables: ViewTables,
}

/// Marks kept for hashing at most: a node catching up applies several markers in one
/// batch, faster than it hashes. Each holds its read transaction's pages.
const MARKS_KEPT: usize = 4;

/// The comparison an entry marks, if it is a marker.
fn compare_mark(entry: &crate::raft_types::Entry) -> Option<u64> {
    match &entry.payload {
        EntryPayload::Normal(crate::vault::Command::CompareVaults { check, .. }) => Some(*check),
        _ => None,
    }
}

/// What an apply learnt about the vault, for the next apply to the same state.
#[derive(Default)]
struct ApplyHint {
    /// The last entry that apply applied; the hint holds only over the state it left.
    after: Option<LogId>,
    /// See [`Vault::idempotency_floor_ms`].
    idempotency_floor_ms: u64,
}

/// What has been applied.
struct Applied {
    /// The current generation of the vault's file.
    db: Arc<VaultDb>,
    /// A read transaction of it since the last write (every read shares it).
    file: Arc<FileView>,
    /// Changes applied since the last flush began.
    top: Changes,
    /// Changes being written by a flush (empty between flushes).
    below: Changes,
    /// The last entry applied, and the membership then.
    last: Option<LogId>,
    membership: StoredMembership,
    /// Entries applied into `top`.
    entries: u64,
}

impl Applied {
    /// The tables as applied: O(1) copies of the buffers over the file's read
    /// transaction.
    fn tables(&self) -> ViewTables {
        Layered::new(
            self.top.clone(),
            self.below.clone(),
            ReadTables::over(self.file.clone()),
        )
    }

    fn view(&self) -> View {
        View {
            tables: self.tables(),
            last: self.last,
            membership: self.membership.clone(),
        }
    }
}

/// One applied state: the tables, the last entry applied and the membership then.
pub(super) struct View {
    pub(super) tables: ViewTables,
    pub(super) last: Option<LogId>,
    pub(super) membership: StoredMembership,
}

/// What the vault's file holds.
struct Flushed {
    /// The last entry written into it.
    last: Option<LogId>,
    /// Entries written since its last durable commit...
    entries: u64,
    /// ...which was then.
    at: tokio::time::Instant,
}

impl Flushed {
    fn durable(last: Option<LogId>) -> Flushed {
        Flushed {
            last,
            entries: 0,
            at: tokio::time::Instant::now(),
        }
    }

    /// A durable commit is due (by entries, or by time).
    fn due(&self) -> bool {
        self.entries >= DURABLE_EVERY_ENTRIES || self.at.elapsed() >= DURABLE_EVERY
    }
}

impl std::fmt::Debug for SharedVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedVault(applied {})", self.applied_index())
    }
}

impl SharedVault {
    /// Runs `f` on the vault as last applied. A storage failure voids whatever `f`
    /// came to.
    pub fn read<T>(&self, f: impl FnOnce(&VaultView) -> T) -> Result<T, StorageError> {
        // The tables only: a request's read needs no copy of the membership.
        let view = Vault::new(self.state.lock().expect("vault lock").tables());
        let out = f(&view);
        match view.tables().failure() {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The vault as last applied: the maps and the file's read transaction as they were
    /// together under one lock (a flush swaps the read transaction for one that holds
    /// the changes it wrote as it drops them from the buffer).
    pub(super) fn view(&self) -> View {
        self.state.lock().expect("vault lock").view()
    }

    /// Rows in the vault's file: the vault's size as a snapshot copies it, give or take
    /// the buffer not yet written out (at most `flush_keys` changes).
    pub fn rows(&self) -> Result<u64, StorageError> {
        let file = self.state.lock().expect("vault lock").file.clone();
        file.rows()
    }

    /// Index of the last applied log entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.state
            .lock()
            .expect("vault lock")
            .last
            .map_or(0, |l| l.index)
    }

    /// Bounds the buffer at `keys` changed keys instead.
    #[cfg(test)]
    pub(super) fn set_flush_keys(&self, keys: usize) {
        self.flush_keys
            .store(keys, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last entry the vault's file holds (maybe not durably yet).
    #[cfg(test)]
    pub(super) fn file_applied(&self) -> Option<LogId> {
        let db = self.state.lock().expect("vault lock").db.clone();
        read_applied(&db.db).expect("readable").0
    }

    /// Tells of the first failure to write the vault's file (`None` until one). redb
    /// refuses every write after an I/O error until the database is opened again, so
    /// the vault then keeps only what its buffer holds, and the node must start again
    /// (replaying its log from the last durable commit) to write anything more.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// Notes `e` as the vault's failure, unless one is noted already.
    fn failed(&self, e: &io::Error) {
        self.failure.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(e.to_string());
            }
            first
        });
    }

    fn durable_log_index(&self) -> u64 {
        self.durable_log.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes the vault as it stood just after the oldest comparison marker applied and
    /// not taken yet. Beyond [`MARKS_KEPT`] waiting, the oldest is dropped (that
    /// comparison is missed here).
    pub fn take_mark(&self) -> Option<Mark> {
        self.mark.lock().expect("vault mark lock").pop_front()
    }

    /// Waits until a comparison marker may have applied since the last call.
    pub async fn marked(&self) {
        self.marked.notified().await;
    }

    /// True when comparison `check`'s mark waits to be taken.
    pub fn mark_waits(&self, check: u64) -> bool {
        let m = self.mark.lock().expect("vault mark lock");
        m.iter().any(|m| m.check == check)
    }

    /// Applies `entries` into the buffer; readers see all of them or none. When that
    /// fills the buffer, writes it out (waiting for a flush already writing one), so
    /// that memory stays bounded however fast entries come.
    fn apply_entries(
        &self,
        entries: &[crate::raft_types::Entry],
        check: Option<&ApplyCheck>,
    ) -> io::Result<Vec<Response>> {
        let (responses, full) = self.apply_to_buffer(entries, check)?;
        if full {
            self.flush_full()?;
        }
        Ok(responses)
    }

    /// Whether `entries` may be applied on the calling async task: few enough that
    /// applying them into the buffer is quick, and the buffer far enough from its bound
    /// that they will not fill it (a full buffer is written out, on the blocking pool).
    fn applies_in_place(&self, entries: &[crate::raft_types::Entry]) -> bool {
        entries.len() <= APPLY_IN_PLACE_ENTRIES
            && self.state.lock().expect("vault lock").top.len() + KEYS_PER_ENTRY_MAX * entries.len()
                < self.flush_keys.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes out the buffer that an apply filled.
    fn flush_full(&self) -> io::Result<()> {
        let mut f = self.flush.lock().expect("vault flush lock");
        self.flush_locked(&mut f)
    }

    /// Applies `entries` into the buffer; also whether the buffer is full now. A
    /// comparison marker among them ends a run: the vault as it stands just after it is
    /// kept for [`SharedVault::take_mark`] before the next entry applies.
    fn apply_to_buffer(
        &self,
        entries: &[crate::raft_types::Entry],
        check: Option<&ApplyCheck>,
    ) -> io::Result<(Vec<Response>, bool)> {
        if !entries.iter().any(|e| compare_mark(e).is_some()) {
            return self.apply_run(entries, check);
        }
        let (mut responses, mut full) = (Vec::with_capacity(entries.len()), false);
        let mut rest = entries;
        while !rest.is_empty() {
            let end = rest
                .iter()
                .position(|e| compare_mark(e).is_some())
                .map_or(rest.len(), |i| i + 1);
            let (run, after) = rest.split_at(end);
            let (applied, filled) = self.apply_run(run, check)?;
            responses.extend(applied);
            full |= filled;
            rest = after;
        }
        Ok((responses, full))
    }

    /// Applies `entries` into the buffer as one run; also whether the buffer is full
    /// now.
    fn apply_run(
        &self,
        entries: &[crate::raft_types::Entry],
        check: Option<&ApplyCheck>,
    ) -> io::Result<(Vec<Response>, bool)> {
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok((Vec::new(), false));
        };
        Ok({
            let mut hint = self.apply.lock().expect("vault apply lock");
            let View {
                tables,
                membership,
                last: before,
            } = self.view();
            // A snapshot installed since the last apply leaves another state under it.
            let floor = if hint.after.is_some() && hint.after == before {
                hint.idempotency_floor_ms
            } else {
                0
            };
            let mut batch = overlay::Batch::new(tables);
            let (responses, membership, floor) =
                apply_entries(&mut batch, entries, membership, floor, check)?;
            *hint = ApplyHint {
                after: Some(last),
                idempotency_floor_ms: floor,
            };
            // The view's copies of the buffer are gone with it: merged under the lock,
            // a small batch changes the buffer's nodes in place (no reader can copy the
            // buffer meanwhile). A large one is merged into a copy outside the lock, so
            // that reads never wait long for it; no other apply or flush runs
            // meanwhile (`apply` lock), so the buffer cannot change under it.
            let changes = batch.into_changes();
            let mut s = if changes.len() <= MERGE_IN_PLACE_KEYS {
                let mut s = self.state.lock().expect("vault lock");
                s.top.extend(changes);
                s
            } else {
                let mut top = self.state.lock().expect("vault lock").top.clone();
                top.extend(changes);
                let mut s = self.state.lock().expect("vault lock");
                s.top = top;
                s
            };
            s.last = Some(last);
            s.membership = membership;
            s.entries += entries.len() as u64;
            // A marker ends its run (`apply_to_buffer`): this is the state just after
            // it, kept before anyone can see it applied, so that a node that has
            // applied a marker has its state in hand.
            if let Some(check) = entries.last().and_then(compare_mark) {
                let mut marks = self.mark.lock().expect("vault mark lock");
                marks.push_back(Mark {
                    check,
                    index: last.index,
                    tables: s.tables(),
                });
                if marks.len() > MARKS_KEPT {
                    marks.pop_front();
                }
                self.marked.notify_one();
            }
            (
                responses,
                s.top.len() >= self.flush_keys.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// Writes the buffered changes into the file in one transaction, without an fsync,
    /// with the last entry they apply and the membership then. Applies go on meanwhile
    /// into a new buffer; reads see the changes being written until the file holds
    /// them.
    fn flush_locked(&self, f: &mut Flushed) -> io::Result<()> {
        let (changes, last, membership, db, entries) = {
            let _apply = self.apply.lock().expect("vault apply lock");
            let mut s = self.state.lock().expect("vault lock");
            if s.entries == 0 {
                return Ok(());
            }
            debug_assert!(s.below.is_empty(), "one flush at a time");
            s.below = std::mem::take(&mut s.top);
            (
                s.below.clone(),
                s.last,
                s.membership.clone(),
                s.db.clone(),
                std::mem::take(&mut s.entries),
            )
        };
        let written = (|| {
            let mut txn = db.db.begin_write().map_err(io_err)?;
            txn.set_durability(redb::Durability::None).map_err(io_err)?;
            {
                let mut tables = WriteTables::open(&txn)?;
                overlay::write_changes(&changes, &mut tables).map_err(io::Error::other)?;
            }
            vault_db::put_sm_meta(&txn, &sm_records(&last, &membership))?;
            txn.commit().map_err(io_err)
        })();
        // Reads from now on see the file with the changes in it.
        let written = written.and_then(|()| FileView::begin(&db).map_err(io::Error::other));
        match written {
            Ok(file) => {
                let mut s = self.state.lock().expect("vault lock");
                s.below = Changes::new();
                s.file = file;
                drop(s);
                f.last = last;
                f.entries += entries;
                Ok(())
            }
            Err(e) => {
                self.failed(&e);
                // Nothing written: the changes go back into the buffer, under any
                // applied since. Under the apply lock as well, since only its holder
                // may change the buffer: an apply merging a large batch into a copy
                // of it would otherwise store that copy over this.
                let _apply = self.apply.lock().expect("vault apply lock");
                let mut s = self.state.lock().expect("vault lock");
                let below = std::mem::take(&mut s.below);
                s.top = std::mem::take(&mut s.top).union(below);
                s.entries += entries;
                Err(e)
            }
        }
    }

    /// Writes the buffer into the file, then makes the file durable now
    /// (`only_if_due`: only once a durable commit is due), unless this node's log does
    /// not hold what it applies durably yet.
    pub(super) fn make_durable(&self, only_if_due: bool) -> io::Result<Durability> {
        let mut f = self.flush.lock().expect("vault flush lock");
        self.flush_locked(&mut f)?;
        if f.entries == 0 {
            return Ok(Durability::Durable);
        }
        if only_if_due && !f.due() {
            return Ok(Durability::NotDue);
        }
        let db = self.state.lock().expect("vault lock").db.clone();
        if f.last.map_or(0, |l| l.index) > self.durable_log_index() {
            return Ok(Durability::LogBehind);
        }
        durable_commit(&db.db).inspect_err(|e| self.failed(e))?;
        *f = Flushed::durable(f.last);
        Ok(Durability::Durable)
    }
}

/// What [`SharedVault::make_durable`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// The vault is durable as applied.
    Durable,
    /// Not yet: no durable commit is due.
    NotDue,
    /// Not yet: this node's log is not durable up to the applied state.
    LogBehind,
}

/// Runs while the vault is open: writes the applied changes into the vault's file every
/// [`FLUSH_EVERY`] and makes them durable within about [`DURABLE_EVERY`] (or
/// [`DURABLE_EVERY_ENTRIES`]); applies never write the file themselves (unless the
/// buffer is full), so none waits for its pages or its fsync. When this node's log is
/// not yet durable up to the applied state it tries again shortly: the log's writer
/// syncs continuously, so it catches up within a sync or two. It ends at the first
/// failure to write the file, which nothing but a restart mends
/// ([`SharedVault::failure`]).
pub async fn durable_loop(vault: std::sync::Weak<SharedVault>, mode: super::WriterMode) {
    let mut retry = false;
    loop {
        crate::runtime::sleep(if retry { DURABLE_RETRY } else { FLUSH_EVERY }).await;
        let Some(v) = vault.upgrade() else { return };
        match super::blocking(mode, move || v.make_durable(true))
            .await
            .and_then(|r| r)
        {
            Ok(d) => retry = d == Durability::LogBehind,
            Err(e) => {
                // Nothing more can be written (see `SharedVault::failure`): the node
                // stops on it (`Cluster::stopped`); trying again would only log the
                // same refusal every round.
                tracing::error!(error = %e, "the vault could not be written or made durable");
                return;
            }
        }
    }
}

/// openraft's state machine for kura.
pub struct StateMachine {
    shared: Arc<SharedVault>,
    store: Store,
    files: Arc<VaultFiles>,
    snapshot_seq: u64,
}

/// The state machine's records in a vault generation.
pub(super) fn read_applied(db: &Database) -> io::Result<(Option<LogId>, StoredMembership)> {
    let txn = db.begin_read().map_err(io_err)?;
    let applied = vault_db::get_sm_meta(&txn, vault_db::KEY_LAST_APPLIED)?
        .map(|b| decode::<Option<LogId>>(&b))
        .transpose()?
        .flatten();
    let membership = vault_db::get_sm_meta(&txn, vault_db::KEY_MEMBERSHIP)?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or_default();
    Ok((applied, membership))
}

pub(super) fn sm_records(
    applied: &Option<LogId>,
    membership: &StoredMembership,
) -> [(&'static str, Vec<u8>); 2] {
    [
        (vault_db::KEY_LAST_APPLIED, encode(applied)),
        (vault_db::KEY_MEMBERSHIP, encode(membership)),
    ]
}

/// Applies `entries` to `tables`, whose idempotency records were all made at or after
/// `idempotency_floor_ms` (0: not known); the responses, the membership after, and the
/// floor after. A storage failure voids the whole batch.
fn apply_entries(
    tables: &mut impl TablesMut,
    entries: &[crate::raft_types::Entry],
    mut membership: StoredMembership,
    idempotency_floor_ms: u64,
    check: Option<&ApplyCheck>,
) -> io::Result<(Vec<Response>, StoredMembership, u64)> {
    let mut responses = Vec::with_capacity(entries.len());
    // The check looks at what each command wrote.
    let mut recording = Recording::new(tables, check.is_some());
    let mut vault = Vault::with_idempotency_floor(&mut recording, idempotency_floor_ms);
    for entry in entries {
        let response = match &entry.payload {
            EntryPayload::Blank => Response::None,
            EntryPayload::Normal(cmd) => {
                let r = vault.apply(cmd);
                if let Some(e) = vault.tables().failure() {
                    return Err(io::Error::other(e));
                }
                if let Some(check) = check {
                    let touched = vault.tables().take_touched();
                    check(
                        entry.log_id.index,
                        &Vault::new(&**vault.tables() as &dyn Tables),
                        &touched,
                    );
                }
                r
            }
            EntryPayload::Membership(m) => {
                membership = StoredMembership::new(Some(entry.log_id), m.clone());
                Response::None
            }
        };
        responses.push(response);
    }
    Ok((responses, membership, vault.idempotency_floor_ms()))
}

/// Applies `entries` to `db` directly, in one write transaction without an fsync (the
/// offline reader's replay).
pub(super) fn apply_batch(
    db: &Database,
    entries: &[crate::raft_types::Entry],
    membership: StoredMembership,
) -> io::Result<(Vec<Response>, StoredMembership)> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(redb::Durability::None).map_err(io_err)?;
    let (responses, membership, _) =
        apply_entries(&mut WriteTables::open(&txn)?, entries, membership, 0, None)?;
    let last = entries.last().map(|e| e.log_id);
    vault_db::put_sm_meta(&txn, &sm_records(&last, &membership))?;
    txn.commit().map_err(io_err)?;
    Ok((responses, membership))
}

/// Makes every commit so far durable.
fn durable_commit(db: &Database) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_quick_repair(true);
    txn.commit().map_err(io_err)
}

impl StateMachine {
    /// Opens the vault's newest complete generation in `store`.
    pub fn open(store: Store) -> io::Result<StateMachine> {
        let files = store.vault_files.clone();
        let current = store.open_vault()?;
        let (applied, membership) = read_applied(&current.db)?;
        let db = Arc::new(current);
        let file = FileView::begin(&db).map_err(io::Error::other)?;
        Ok(StateMachine {
            shared: Arc::new(SharedVault {
                state: std::sync::Mutex::new(Applied {
                    db,
                    file,
                    top: Changes::new(),
                    below: Changes::new(),
                    last: applied,
                    membership,
                    entries: 0,
                }),
                apply: std::sync::Mutex::new(ApplyHint::default()),
                flush: std::sync::Mutex::new(Flushed::durable(applied)),
                durable_log: store.durable_log.clone(),
                flush_keys: FLUSH_KEYS.into(),
                failure: tokio::sync::watch::Sender::new(None),
                mark: std::sync::Mutex::default(),
                marked: tokio::sync::Notify::new(),
            }),
            store,
            files,
            snapshot_seq: 0,
        })
    }

    /// The vault handle request handlers read.
    pub fn shared(&self) -> Arc<SharedVault> {
        self.shared.clone()
    }
}

impl Store {
    /// The current snapshot, if any (its meta and data).
    pub fn current_snapshot(&self) -> io::Result<Option<Snapshot>> {
        self.read_snapshot()
    }

    /// The log index the current snapshot covers up to (0 without one).
    pub fn snapshot_index(&self) -> io::Result<u64> {
        Ok(self.recorded_snapshot_meta()?.as_ref().map_or(0, index_of))
    }

    /// The log index of the latest snapshot, recorded or being built (0 without one).
    pub fn latest_snapshot_index(&self) -> io::Result<u64> {
        let building = self.in_build().map_or(0, |s| index_of(&s.meta));
        Ok(self.snapshot_index()?.max(building))
    }

    /// The log index of the latest snapshot with a file, recorded or being built (0
    /// without one): a compaction mark has none. Reads the record, not the file.
    pub fn latest_file_snapshot_index(&self) -> io::Result<u64> {
        let building = self.in_build().map_or(0, |s| index_of(&s.meta));
        let [meta, file] = read_meta_keys(&self.db, [KEY_SNAPSHOT_META, KEY_SNAPSHOT_FILE])?;
        let recorded = match (meta, file) {
            (Some(meta), Some(_)) => index_of(&decode(&meta)?),
            _ => 0,
        };
        Ok(recorded.max(building))
    }

    /// The snapshot being built, if any (readable as far as it is written).
    pub(super) fn in_build(&self) -> Option<Snapshot> {
        self.in_build
            .lock()
            .expect("snapshot in build lock")
            .clone()
    }

    /// The snapshot to send a follower: the one being built if it is later than the
    /// current one (sent as it is written), else the current one.
    fn snapshot_to_send(&self) -> io::Result<Option<Snapshot>> {
        let recorded = self.read_snapshot()?;
        let recorded_index = recorded.as_ref().map_or(0, |s| index_of(&s.meta));
        match self.in_build() {
            Some(b) if index_of(&b.meta) > recorded_index => Ok(Some(b)),
            _ => Ok(recorded),
        }
    }

    /// Shows `snapshot` as the one being built until the returned guard is dropped.
    fn show_in_build(&self, snapshot: Snapshot) -> InBuild {
        let id = snapshot.snapshot.id();
        *self.in_build.lock().expect("snapshot in build lock") = Some(snapshot);
        InBuild {
            slot: self.in_build.clone(),
            id,
        }
    }

    /// The current snapshot's meta as recorded, without opening its file.
    fn recorded_snapshot_meta(&self) -> io::Result<Option<SnapshotMeta>> {
        self.read_meta(KEY_SNAPSHOT_META)?
            .map(|m| decode::<SnapshotMeta>(&m))
            .transpose()
    }

    /// The current snapshot, if any.
    fn read_snapshot(&self) -> io::Result<Option<Snapshot>> {
        // A newer snapshot may be recorded, and this one's file removed, between reading
        // the record and the file: then read the new record.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.read_snapshot_once() {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => continue,
                r => return r,
            }
        }
    }

    fn read_snapshot_once(&self) -> io::Result<Option<Snapshot>> {
        // One transaction: a record landing between two reads would pair this meta with
        // another snapshot's file.
        let [meta, file] = read_meta_keys(&self.db, [KEY_SNAPSHOT_META, KEY_SNAPSHOT_FILE])?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let snapshot = match file {
            Some(id) => self.snapshots.open_file(decode(&id)?)?,
            None => SnapshotData::mark(),
        };
        Ok(Some(Snapshot {
            meta: decode(&meta)?,
            snapshot,
        }))
    }

    /// Takes `data` (a whole snapshot stream) into a new snapshot file, in progress
    /// until recorded.
    #[cfg(test)]
    pub(crate) fn snapshot_from_bytes(&self, data: &[u8]) -> io::Result<SnapshotData> {
        let id = self.snapshots.write(data)?;
        self.snapshots.open_file(id)
    }

    /// A new snapshot file to receive one a chunk at a time — and, on a node that runs
    /// threads, a new vault generation written from the chunks as they come
    /// ([`super::prefill`]).
    pub fn receive_snapshot(&self) -> io::Result<SnapshotUpload> {
        let prefill = match self.mode {
            super::WriterMode::Threaded => Prefill::start(self.vault_files.clone())
                .map_err(|e| tracing::warn!(error = %e, "cannot write the vault while a snapshot arrives; it will be written from the file"))
                .ok(),
            super::WriterMode::Task => None,
        };
        Ok(SnapshotUpload {
            writer: self.snapshots.create()?,
            files: self.snapshots.clone(),
            prefill,
            prefilled: self.prefilled.clone(),
        })
    }

    /// Writes the vault generation a received snapshot installs, before the snapshot
    /// is handed to openraft ([`Store::written_vault`]), leaving the reserve free
    /// ([`Store::room_for`]). Written here, a disk too full for it fails this request
    /// only, and the node answers the leader that it has no room; written in openraft's
    /// install, the failure would be a storage error that ends the node's Raft core. On
    /// a failure the snapshot's file and the generation go.
    pub async fn write_received(&self, snapshot: &SnapshotData) -> io::Result<()> {
        let (filled, on_arrival) = self.written_vault(snapshot).await?;
        if let Err(e) = self.room_for(0) {
            filled.0.retire();
            self.snapshots.discard(snapshot.id());
            return Err(e);
        }
        self.prefilled
            .keep_written(snapshot.id(), filled, on_arrival);
        Ok(())
    }

    /// The vault generation for snapshot file `snapshot`: the one written for it (as its
    /// chunks arrived, or by [`Store::write_received`]) or else one written from the
    /// file now, and whether it was written as the chunks arrived. If it cannot be
    /// written, the snapshot's file goes.
    async fn written_vault(&self, snapshot: &SnapshotData) -> io::Result<(Filled, bool)> {
        if let Some(kept) = self.prefilled.take(snapshot.id()).await {
            return Ok(kept);
        }
        let (files, file) = (self.vault_files.clone(), snapshot.clone());
        match self
            .blocking(move || fill(&files, files.allocate()?, &file))
            .await?
        {
            Ok(filled) => Ok((filled, false)),
            Err(e) => {
                self.snapshots.discard(snapshot.id());
                Err(e)
            }
        }
    }

    /// Makes snapshot file `file` current with `meta` — unless a later snapshot is
    /// current already, when the file is given up.
    pub(super) async fn record_snapshot(&self, meta: &SnapshotMeta, file: u64) -> io::Result<()> {
        self.record(meta, Some(file)).await
    }

    /// Makes a compaction mark at `meta` current: the vault's file, durable beyond it,
    /// stands for the snapshot, and the snapshot file there was goes. Unless a later
    /// snapshot is current already.
    pub(super) async fn record_mark(&self, meta: &SnapshotMeta) -> io::Result<()> {
        self.record(meta, None).await
    }

    async fn record(&self, meta: &SnapshotMeta, file: Option<u64>) -> io::Result<()> {
        let _order = self.snapshot_order.lock().await;
        let index = |m: &SnapshotMeta| m.last_log_id.map(|l| l.index);
        let current = self.recorded_snapshot_meta()?;
        if let Some(current) = current.filter(|c| index(c) > index(meta)) {
            if let Some(file) = file {
                self.snapshots.discard(file);
            }
            tracing::info!(
                snapshot = ?meta.last_log_id,
                current = ?current.last_log_id,
                "a later snapshot is current already; this one is not kept"
            );
            return Ok(());
        }
        let (done, rx) = Done::oneshot();
        self.writer.submit(Op::RecordSnapshot {
            meta: encode(meta),
            file,
            done,
        });
        // On an error the file stays: the record may have been written before the
        // failure, and the next open keeps whichever file the record names.
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("storage writer stopped")))?;
        let files = self.snapshots.clone();
        self.blocking(move || match file {
            Some(file) => files.recorded(file),
            None => files.recorded_none(),
        })
        .await?;
        Ok(())
    }
}

/// How often a wait for a snapshot file asks again while none is being built.
/// openraft ignores a request while a build runs, and a running build may be recording
/// a mark (a durable commit's time), so one request is not enough.
const FILE_ASK_AGAIN: Duration = Duration::from_millis(200);

/// The requests for a snapshot file of one wait for it (a follower's send that found a
/// mark, a backup).
#[derive(Default)]
pub struct FileAsk {
    asked_at: Option<tokio::time::Instant>,
}

impl FileAsk {
    /// Whether to ask openraft for a build now — the first time, then every
    /// [`FILE_ASK_AGAIN`] while no file is being built — with the next build marked
    /// to write a file when it is.
    pub fn now(&mut self, store: &Store) -> bool {
        let due = self
            .asked_at
            .is_none_or(|at| at.elapsed() >= FILE_ASK_AGAIN && store.in_build().is_none());
        if due {
            store.want_snapshot_file();
            self.asked_at = Some(tokio::time::Instant::now());
        }
        due
    }
}

/// The log index a snapshot covers up to (0 for one of an empty log).
fn index_of(meta: &SnapshotMeta) -> u64 {
    meta.last_log_id.map_or(0, |l| l.index)
}

/// While held, a snapshot build is shown as the one being built.
struct InBuild {
    slot: Arc<std::sync::Mutex<Option<Snapshot>>>,
    id: u64,
}

impl Drop for InBuild {
    fn drop(&mut self) {
        let mut slot = self.slot.lock().expect("snapshot in build lock");
        if slot.as_ref().is_some_and(|s| s.snapshot.id() == self.id) {
            *slot = None;
        }
    }
}

/// A snapshot being received: its file, written a chunk at a time. Dropped unfinished,
/// the file goes.
pub struct SnapshotUpload {
    writer: super::snapshot_files::SnapshotWriter,
    files: Arc<super::snapshot_files::SnapshotFiles>,
    prefill: Option<Prefill>,
    prefilled: Prefilled,
}

impl SnapshotUpload {
    /// Appends the next chunk to the file, and hands it to the vault being written
    /// from it (waiting while that is behind).
    pub async fn append(&mut self, chunk: bytes::Bytes) -> io::Result<()> {
        self.writer.append(&chunk)?;
        if let Some(p) = &mut self.prefill {
            p.push(chunk).await;
        }
        Ok(())
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.writer.written()
    }

    /// Makes the file durable and opens it as the snapshot's data (in progress until
    /// recorded).
    pub fn finish(self) -> io::Result<SnapshotData> {
        let id = self.writer.finish()?;
        if let Some(p) = self.prefill {
            self.prefilled.keep(id, p);
        }
        self.files.open_file(id)
    }
}

/// Builds a snapshot of the vault as it was when the builder was made.
pub struct SnapshotBuilder {
    shared: Arc<SharedVault>,
    /// Taken by the build (a mutex only to share the builder between threads).
    view: std::sync::Mutex<Option<ViewTables>>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    store: Store,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = tokio::time::Instant::now();
        let view = self
            .view
            .lock()
            .expect("snapshot view lock")
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        };
        // Only a follower, a backup or a new member needs a snapshot's data; for
        // compacting the log the vault's own file, durable beyond the mark, is the
        // snapshot, and copying every row into a file on every node each interval is
        // not needed.
        let file_wanted = self.store.take_file_wanted();
        let view = file_wanted.then_some(view);
        // The vault is made durable first (a snapshot is never ahead of the durable
        // vault), but never ahead of this node's log: wait for the log if it must.
        let mut waited = 0;
        loop {
            let shared = self.shared.clone();
            if self
                .store
                .blocking(move || shared.make_durable(false))
                .await??
                == Durability::Durable
            {
                break;
            }
            if waited >= SNAPSHOT_LOG_WAIT_MS {
                if file_wanted {
                    // Still wanted: the next build writes the file.
                    self.store.want_snapshot_file();
                }
                return Err(io::Error::other(
                    "the log did not become durable up to the applied state",
                ));
            }
            crate::runtime::sleep(Duration::from_millis(10)).await;
            waited += 10;
        }
        // A file that would eat into the reserve is not started ([`Store::room_for_file`])
        // and is given up once it would. A compaction mark is recorded instead, as for a
        // scheduled snapshot (the vault is durable beyond it), and whoever waits for the
        // file sees it given up ([`Store::files_given_up`]) instead of waiting for it.
        let built = match view {
            None => None,
            Some(view) => Some(match self.store.room_for_file() {
                Ok(()) => self.write_file(view, &meta).await?,
                Err(e) => Err((e, 0)),
            }),
        };
        match built {
            Some(Ok((file, records, _shown))) => {
                self.store.record_snapshot(&meta, file.id()).await?;
                self.store.file_built();
                self.store
                    .snapshot_done("build", started.elapsed(), file.len());
                tracing::info!(
                    seq = self.seq,
                    last_log_id = ?self.last_applied,
                    records,
                    bytes = file.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot built"
                );
                return Ok(Snapshot {
                    meta,
                    snapshot: file,
                });
            }
            Some(Err((e, written))) => {
                // Without marks (no fsync) nothing can stand for the snapshot.
                if !crate::files::no_room(&e) || !self.store.marks {
                    return Err(e);
                }
                self.store.file_given_up(written);
                self.store
                    .snapshot_done("no_room", started.elapsed(), written);
                tracing::warn!(
                    seq = self.seq,
                    last_log_id = ?self.last_applied,
                    written,
                    error = %e,
                    "no room for a snapshot file: a compaction mark is recorded instead, \
                     and the follower or backup that wanted the file goes without it until \
                     space is freed"
                );
            }
            None => {}
        }
        self.store.record_mark(&meta).await?;
        self.store.snapshot_done("mark", started.elapsed(), 0);
        tracing::info!(
            seq = self.seq,
            last_log_id = ?self.last_applied,
            ms = started.elapsed().as_millis() as u64,
            "log compaction mark recorded: the vault is durable beyond it"
        );
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::mark(),
        })
    }
}

impl SnapshotBuilder {
    /// Writes every row of `view` into a new snapshot file, shown as the one being built
    /// while it is written (a follower that needs a fresh snapshot is sent it as it is
    /// written, until the returned guard goes), checking every [`FILE_ROOM_STEP`] that
    /// the disk's reserve stays free. The outer error is the blocking task's; the inner
    /// one comes with the bytes written before it, the file gone.
    async fn write_file(
        &self,
        view: ViewTables,
        meta: &SnapshotMeta,
    ) -> io::Result<Result<(SnapshotData, u64, InBuild), (io::Error, u64)>> {
        let store = self.store.clone();
        let shown_meta = meta.clone();
        self.store
            .blocking(move || {
                let mut w = store.snapshots.create().map_err(|e| (e, 0))?;
                let shown = store.show_in_build(Snapshot {
                    meta: shown_meta,
                    snapshot: w.readable(),
                });
                let written = std::cell::Cell::new(0);
                let records = (|| {
                    let mut room_until = 0;
                    let mut enc = Encoder::new(|b: &[u8]| {
                        let at = written.get();
                        if at + b.len() as u64 > room_until {
                            let step = FILE_ROOM_STEP.max(b.len() as u64);
                            store.room_for(step)?;
                            room_until = at + step;
                        }
                        w.append(b)?;
                        written.set(at + b.len() as u64);
                        Ok(())
                    })?;
                    let mut failed = None;
                    for t in TableId::ALL {
                        view.scan(t, Bound::Unbounded, Bound::Unbounded, false, &mut |k, v| {
                            match enc.push(t, k, v) {
                                Ok(()) => true,
                                Err(e) => {
                                    failed = Some(e);
                                    false
                                }
                            }
                        });
                        if let Some(e) = failed.take() {
                            return Err(e);
                        }
                        if let Some(e) = view.failure() {
                            return Err(io::Error::other(e));
                        }
                    }
                    enc.finish()
                })()
                .map_err(|e| (e, written.get()))?;
                // The read transaction ends here, before the file is finished.
                drop(view);
                let file = w
                    .finish()
                    .and_then(|id| store.snapshots.open_file(id))
                    .map_err(|e| (e, written.get()))?;
                Ok((file, records, shown))
            })
            .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let s = self.shared.state.lock().expect("vault lock");
        Ok((s.last, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let (mut batch, mut responders) = (Vec::new(), Vec::new());
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let (first, last) = (first.log_id.index, last.log_id.index);
        crate::timeline::mark(crate::timeline::Stage::ApplyStart, last, first);
        let shared = self.shared.clone();
        let check = self.store.apply_check.clone();
        // Entries apply in place, on this task, a step at a time: handing a batch to the
        // blocking pool and back costs two thread wake-ups, and its entries' data moves
        // to another core and back: at 64 clients' payments and 256 clients' tokenizing,
        // about a tenth of the nodes' CPU per write (docs/decisions/0021). Once the
        // budget is spent, or for a step that may fill the buffer (and so write it out),
        // the rest goes to the pool. A simulated host runs the pool in place anyway, and
        // its steps must not depend on the wall clock.
        let budget = (self.store.mode() == super::WriterMode::Threaded)
            .then(|| std::time::Instant::now() + APPLY_IN_PLACE_BUDGET);
        let mut responses = Vec::with_capacity(batch.len());
        let mut done = 0;
        while done < batch.len() {
            let step = &batch[done..batch.len().min(done + APPLY_IN_PLACE_ENTRIES)];
            let spent = done > 0 && budget.is_some_and(|b| std::time::Instant::now() >= b);
            if spent || !shared.applies_in_place(step) {
                break;
            }
            let (applied, full) = shared.apply_to_buffer(step, check.as_ref())?;
            responses.extend(applied);
            done += step.len();
            if full {
                let shared = shared.clone();
                self.store.blocking(move || shared.flush_full()).await??;
            }
        }
        if done < batch.len() {
            let rest = batch.split_off(done);
            responses.extend(
                self.store
                    .blocking(move || shared.apply_entries(&rest, check.as_ref()))
                    .await??,
            );
        }
        crate::timeline::mark(crate::timeline::Stage::ApplyEnd, last, first);
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let View {
            tables,
            last,
            membership,
        } = self.shared.view();
        SnapshotBuilder {
            shared: self.shared.clone(),
            view: std::sync::Mutex::new(Some(tables)),
            last_applied: last,
            membership,
            store: self.store.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        if snapshot.is_mark() {
            // Only openraft's restore on start installs the current snapshot it is not
            // sent; a mark is recorded once the vault is durable beyond it, so the
            // vault is never behind one unless durable commits were not durable.
            return Err(io::Error::other(format!(
                "the vault is behind its log compaction mark {:?} and there is no \
                 snapshot file to restore it from; restore this node from a backup or \
                 wipe it so that it is sent a snapshot",
                meta.last_log_id
            )));
        }
        let started = tokio::time::Instant::now();
        let (records, applied) = (
            sm_records(&meta.last_log_id, &meta.last_membership),
            meta.last_log_id,
        );
        // A snapshot sent to this node was written before it came here
        // (`Store::write_received`); openraft's restore on start writes it here.
        let ((new, count), written_on_arrival) = self.store.written_vault(&snapshot).await?;
        // The snapshot is recorded before the new generation counts: after a crash in
        // between, the vault is behind the recorded snapshot and is restored from it,
        // never ahead of it (openraft would cut the log back to the vault and past the
        // snapshot).
        self.store.record_snapshot(meta, snapshot.id()).await?;
        let files = self.files.clone();
        let new = self
            .store
            .blocking(move || {
                vault_db::mark_complete(&new.db, Some(&records))?;
                files.sync_dir()?;
                let new = Arc::new(new);
                let file = FileView::begin(&new).map_err(io::Error::other)?;
                Ok::<_, io::Error>((new, file))
            })
            .await??;
        let (new, file) = new;
        let old = {
            // No flush may write the old generation after this.
            let mut f = self.shared.flush.lock().expect("vault flush lock");
            let _apply = self.shared.apply.lock().expect("vault apply lock");
            let mut s = self.shared.state.lock().expect("vault lock");
            let old = std::mem::replace(&mut s.db, new);
            s.file = file;
            s.top = Changes::new();
            s.below = Changes::new();
            s.last = applied;
            s.membership = meta.last_membership.clone();
            s.entries = 0;
            *f = Flushed::durable(applied);
            old
        };
        old.retire();
        drop(old);
        self.store
            .snapshot_done("install", started.elapsed(), snapshot.len());
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            records = count,
            bytes = snapshot.len(),
            written_on_arrival,
            ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    /// The current snapshot — or the one being built, when it is later: openraft asks
    /// for a snapshot to send a follower (and on start, when none is being built).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let store = self.store.clone();
        self.store
            .blocking(move || store.snapshot_to_send())
            .await?
    }
}

/// Writes the snapshot in `file` into a new vault generation `id`, a batch at a time
/// (not yet complete).
pub(super) fn fill(files: &VaultFiles, id: u64, file: &SnapshotData) -> io::Result<Filled> {
    fill_from(files, id, file.reader())
}

/// Writes the snapshot stream `read` gives into a new vault generation `id`, a batch
/// at a time (not yet complete). On a failure the generation's file goes.
pub(super) fn fill_from(
    files: &VaultFiles,
    id: u64,
    read: impl FnMut(&mut [u8]) -> io::Result<()>,
) -> io::Result<Filled> {
    let new = files.create(id)?;
    let mut batch: Vec<(TableId, Vec<u8>, Vec<u8>)> = Vec::with_capacity(INSTALL_BATCH_RECORDS);
    let written = snapshot_stream::decode(read, |t, k, v| {
        batch.push((t, k.to_vec(), v.to_vec()));
        if batch.len() >= INSTALL_BATCH_RECORDS {
            vault_db::write_records(&new.db, &mut batch)?;
        }
        Ok(())
    })
    .and_then(|count| vault_db::write_records(&new.db, &mut batch).map(|()| count));
    match written {
        Ok(count) => Ok((new, count)),
        Err(e) => {
            new.retire();
            Err(e)
        }
    }
}
