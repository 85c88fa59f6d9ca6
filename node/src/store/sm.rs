//! The state machine: the vault in redb tables ([`super::vault_db`]), snapshots
//! streamed into files of their own.
//!
//! Each batch of entries is applied in one redb write transaction, with `last_applied`
//! and the membership, committed without an fsync (`Durability::None`): the log is the
//! durability point. A durable commit follows at least every [`DURABLE_EVERY_ENTRIES`]
//! entries or [`DURABLE_EVERY`] — from the durable loop, after syncing the file outside
//! every lock, never in an apply, which would hold every later apply for its fsync —
//! and before every snapshot is built, so that
//! `purged ≤ snapshot ≤ durably applied ≤ committed` holds after any crash; on restart
//! openraft applies the committed entries after the durably applied point again.
//!
//! A snapshot is a stream of the tables ([`super::snapshot_stream`]) read from one read
//! transaction — a consistent view while writes go on — and written to its file a
//! frame at a time. Installing one writes a new vault generation from the stream in
//! batches and switches to it with one durable commit.

use super::snapshot_stream::{self, Encoder};
use super::vault_db::{self, ReadTables, VaultDb, VaultFiles, WriteTables};
use super::writer::{Done, Op};
use super::{
    decode, encode, io_err, read_meta_keys, ApplyCheck, Store, KEY_SNAPSHOT_FILE, KEY_SNAPSHOT_META,
};
use crate::raft_types::{
    LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::vault::{Response, StorageError, TableId, Tables, Vault};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

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

/// The vault as a request reads it: one read transaction's view.
pub type VaultView = Vault<ReadTables>;

/// The vault as the API reads it: shared between the state machine and request handlers.
pub struct SharedVault {
    current: RwLock<Arc<VaultDb>>,
    applied: RwLock<Option<LogId>>,
    /// Held while a batch is applied or the vault made durable, so that what a durable
    /// commit persists is exactly what was checked against the log.
    commit: std::sync::Mutex<Durable>,
    /// The highest log index durable in this node's log (see `Store::durable_log_index`).
    durable_log: Arc<std::sync::atomic::AtomicU64>,
}

/// How far the vault is durable.
struct Durable {
    /// Entries applied since the last durable commit.
    entries: u64,
    /// When that was.
    at: tokio::time::Instant,
}

impl Durable {
    /// Durable as applied, now.
    fn now() -> Durable {
        Durable {
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
    /// Runs `f` on the vault as last applied, in one read transaction. A storage
    /// failure voids whatever `f` came to.
    pub fn read<T>(&self, f: impl FnOnce(&VaultView) -> T) -> Result<T, StorageError> {
        let db = self.db();
        let txn = db
            .db
            .begin_read()
            .map_err(|e| StorageError::new(redb::Error::from(e).to_string()))?;
        let view = Vault::new(ReadTables::new(txn));
        let out = f(&view);
        match view.tables().failure() {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Index of the last applied log entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.applied
            .read()
            .expect("vault lock")
            .map_or(0, |l| l.index)
    }

    fn db(&self) -> Arc<VaultDb> {
        self.current.read().expect("vault lock").clone()
    }

    fn durable_log_index(&self) -> u64 {
        self.durable_log.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes the applied state durable now (`only_if_due`: only once a durable commit
    /// is due), unless this node's log does not hold it durably yet.
    pub(super) fn make_durable(&self, only_if_due: bool) -> io::Result<Durability> {
        // What the applies wrote goes to the disk first, outside the lock.
        self.db().flush_ahead()?;
        let mut d = self.commit.lock().expect("vault commit lock");
        if d.entries == 0 {
            return Ok(Durability::Durable);
        }
        if only_if_due && !d.due() {
            return Ok(Durability::NotDue);
        }
        if self.applied_index() > self.durable_log_index() {
            return Ok(Durability::LogBehind);
        }
        durable_commit(&self.db().db)?;
        *d = Durable::now();
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

/// Runs while the vault is open: makes applied state durable within about
/// [`DURABLE_EVERY`] (or [`DURABLE_EVERY_ENTRIES`]); applies never commit durably
/// themselves, so none waits for the vault's fsync. When this node's log is not yet
/// durable up to the applied state it tries again shortly: the log's writer syncs
/// continuously, so it catches up within a sync or two.
pub async fn durable_loop(vault: std::sync::Weak<SharedVault>, mode: super::WriterMode) {
    let mut retry = false;
    loop {
        crate::runtime::sleep(if retry {
            DURABLE_RETRY
        } else {
            DURABLE_EVERY / 4
        })
        .await;
        let Some(v) = vault.upgrade() else { return };
        match super::blocking(mode, move || v.make_durable(true))
            .await
            .and_then(|r| r)
        {
            Ok(d) => retry = d == Durability::LogBehind,
            Err(e) => {
                retry = false;
                tracing::error!(error = %e, "the vault could not be made durable");
            }
        }
    }
}

/// openraft's state machine for kura.
pub struct StateMachine {
    shared: Arc<SharedVault>,
    membership: StoredMembership,
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

fn sm_records(
    applied: &Option<LogId>,
    membership: &StoredMembership,
) -> [(&'static str, Vec<u8>); 2] {
    [
        (vault_db::KEY_LAST_APPLIED, encode(applied)),
        (vault_db::KEY_MEMBERSHIP, encode(membership)),
    ]
}

/// Applies `entries` in one write transaction, without an fsync.
pub(super) fn apply_batch(
    db: &Database,
    entries: &[crate::raft_types::Entry],
    mut membership: StoredMembership,
    check: Option<&ApplyCheck>,
) -> io::Result<(Vec<Response>, StoredMembership)> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(redb::Durability::None).map_err(io_err)?;
    let mut responses = Vec::with_capacity(entries.len());
    {
        let mut vault = Vault::new(WriteTables::open(&txn)?);
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(cmd) => {
                    let r = vault.apply(cmd);
                    if let Some(e) = vault.tables().failure() {
                        return Err(io::Error::other(e));
                    }
                    if let Some(check) = check {
                        check(
                            entry.log_id.index,
                            &Vault::new(vault.tables() as &dyn Tables),
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
    }
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
        let current = files.open_current()?;
        let (applied, membership) = read_applied(&current.db)?;
        Ok(StateMachine {
            shared: Arc::new(SharedVault {
                current: RwLock::new(Arc::new(current)),
                applied: RwLock::new(applied),
                commit: std::sync::Mutex::new(Durable::now()),
                durable_log: store.durable_log.clone(),
            }),
            membership,
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
        let (Some(meta), Some(id)) = (meta, file) else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: decode(&meta)?,
            snapshot: self.snapshots.open_file(decode(&id)?)?,
        }))
    }

    /// Takes `data` (a whole snapshot stream) into a new snapshot file, in progress
    /// until recorded.
    #[cfg(test)]
    pub(crate) fn snapshot_from_bytes(&self, data: &[u8]) -> io::Result<SnapshotData> {
        let id = self.snapshots.write(data)?;
        self.snapshots.open_file(id)
    }

    /// A new snapshot file to receive one a chunk at a time.
    pub fn receive_snapshot(&self) -> io::Result<SnapshotUpload> {
        Ok(SnapshotUpload {
            writer: self.snapshots.create()?,
            files: self.snapshots.clone(),
        })
    }

    /// Makes snapshot file `file` current with `meta` — unless a later snapshot is
    /// current already, when the file is given up.
    pub(super) async fn record_snapshot(&self, meta: &SnapshotMeta, file: u64) -> io::Result<()> {
        let _order = self.snapshot_order.lock().await;
        let index = |m: &SnapshotMeta| m.last_log_id.map(|l| l.index);
        let current = self
            .read_meta(KEY_SNAPSHOT_META)?
            .map(|m| decode::<SnapshotMeta>(&m))
            .transpose()?;
        if let Some(current) = current.filter(|c| index(c) > index(meta)) {
            self.snapshots.discard(file);
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
        self.blocking(move || files.recorded(file)).await?;
        Ok(())
    }
}

/// A snapshot being received: its file, written a chunk at a time. Dropped unfinished,
/// the file goes.
pub struct SnapshotUpload {
    writer: super::snapshot_files::SnapshotWriter,
    files: Arc<super::snapshot_files::SnapshotFiles>,
}

impl SnapshotUpload {
    /// Appends the next chunk.
    pub fn append(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.writer.append(chunk)
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.writer.written()
    }

    /// Makes the file durable and opens it as the snapshot's data (in progress until
    /// recorded).
    pub fn finish(self) -> io::Result<SnapshotData> {
        let id = self.writer.finish()?;
        self.files.open_file(id)
    }
}

/// Builds a snapshot of the vault as it was when the builder was made.
pub struct SnapshotBuilder {
    shared: Arc<SharedVault>,
    db: Arc<VaultDb>,
    txn: Option<Result<ReadTransaction, StorageError>>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    store: Store,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = tokio::time::Instant::now();
        let txn = self
            .txn
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?
            .map_err(io::Error::other)?;
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        };
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
                return Err(io::Error::other(
                    "the log did not become durable up to the applied state",
                ));
            }
            crate::runtime::sleep(Duration::from_millis(10)).await;
            waited += 10;
        }
        let (db, store) = (self.db.clone(), self.store.clone());
        let (file, records) = self
            .store
            .blocking(move || {
                let mut w = store.snapshots.create()?;
                let records = {
                    let mut enc = Encoder::new(|b: &[u8]| w.append(b))?;
                    vault_db::scan_all(&txn, &mut |t, k, v| enc.push(t, k, v))?;
                    enc.finish()?
                };
                // The read transaction needs its database open until here.
                drop(txn);
                drop(db);
                let id = w.finish()?;
                Ok::<_, io::Error>((store.snapshots.open_file(id)?, records))
            })
            .await??;
        self.store.record_snapshot(&meta, file.id()).await?;
        tracing::info!(
            seq = self.seq,
            last_log_id = ?self.last_applied,
            records,
            bytes = file.len(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let last = *self.shared.applied.read().expect("vault lock");
        Ok((last, self.membership.clone()))
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
        let Some(last) = batch.last().map(|e| e.log_id) else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let check = self.store.apply_check.clone();
        let membership = self.membership.clone();
        let (responses, membership) = self
            .store
            .blocking(move || {
                let mut d = shared.commit.lock().expect("vault commit lock");
                d.entries += batch.len() as u64;
                // Never durable here: the durable loop makes it so (see `durable_loop`).
                let db = shared.db();
                let r = apply_batch(&db.db, &batch, membership, check.as_ref())?;
                *shared.applied.write().expect("vault lock") = Some(last);
                Ok::<_, io::Error>(r)
            })
            .await??;
        self.membership = membership;
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let db = self.shared.db();
        let txn = db
            .db
            .begin_read()
            .map_err(|e| StorageError::new(redb::Error::from(e).to_string()));
        SnapshotBuilder {
            shared: self.shared.clone(),
            db,
            txn: Some(txn),
            last_applied: *self.shared.applied.read().expect("vault lock"),
            membership: self.membership.clone(),
            store: self.store.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let started = tokio::time::Instant::now();
        let files = self.files.clone();
        let id = self.shared.db().id + 1;
        let (records, applied) = (
            sm_records(&meta.last_log_id, &meta.last_membership),
            meta.last_log_id,
        );
        let file = snapshot.clone();
        let filled = self.store.blocking(move || fill(&files, id, &file)).await?;
        let (new, count) = match filled {
            Ok(x) => x,
            Err(e) => {
                self.store.snapshots.discard(snapshot.id());
                return Err(e);
            }
        };
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
                Ok::<_, io::Error>(new)
            })
            .await??;
        let old = std::mem::replace(
            &mut *self.shared.current.write().expect("vault lock"),
            Arc::new(new),
        );
        old.retire();
        drop(old);
        *self.shared.applied.write().expect("vault lock") = applied;
        self.membership = meta.last_membership.clone();
        *self.shared.commit.lock().expect("vault commit lock") = Durable::now();
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            records = count,
            bytes = snapshot.len(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let store = self.store.clone();
        self.store.blocking(move || store.read_snapshot()).await?
    }
}

/// Writes the snapshot in `file` into a new vault generation `id`, a batch at a time
/// (not yet complete).
fn fill(files: &VaultFiles, id: u64, file: &SnapshotData) -> io::Result<(VaultDb, u64)> {
    let new = files.create(id)?;
    let mut batch: Vec<(TableId, Vec<u8>, Vec<u8>)> = Vec::with_capacity(INSTALL_BATCH_RECORDS);
    let count = snapshot_stream::decode(file.reader(), |t, k, v| {
        batch.push((t, k.to_vec(), v.to_vec()));
        if batch.len() >= INSTALL_BATCH_RECORDS {
            vault_db::write_records(&new.db, &mut batch)?;
        }
        Ok(())
    })?;
    vault_db::write_records(&new.db, &mut batch)?;
    Ok((new, count))
}
