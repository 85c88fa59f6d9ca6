//! The vault's tables in redb: one database file per generation in `kura.vault/`
//! (`<id>.vault`), beside the node's metadata database.
//!
//! Applying writes through [`WriteTables`] inside one redb write transaction per
//! batch of entries, with `last_applied` and the membership in the same transaction;
//! requests read through [`ReadTables`] inside a read transaction, so every read sees
//! one applied state. A snapshot is installed into a new generation, written in
//! batches, and becomes current with one durable commit that marks it complete: on
//! open the newest complete generation is the vault, and any other file goes.
//!
//! The files go through the same [`SegmentDir`] as the log and snapshots, so a
//! simulated disk holds them too (a redb storage backend over a segment file).

use super::io_err;
use super::wal::{SegmentDir, SegmentFile};
use crate::vault::{StorageError, TableId, Tables, TablesMut};
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageBackend, TableDefinition, WriteTransaction,
};
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::OnceLock;

/// The file extension of a vault generation.
pub(crate) const EXT: &str = "vault";

/// The state machine's own records, beside the vault's tables.
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub(super) const KEY_LAST_APPLIED: &str = "last_applied";
pub(super) const KEY_MEMBERSHIP: &str = "membership";
/// Present once a generation holds a whole state (always, for one made empty).
const KEY_COMPLETE: &str = "complete";

type Bytes = &'static [u8];

fn def(t: TableId) -> TableDefinition<'static, Bytes, Bytes> {
    TableDefinition::new(t.name())
}

fn failed(e: impl Into<redb::Error>) -> StorageError {
    StorageError::new(e.into().to_string())
}

/// The vault's file as redb writes it. redb syncs inside its durable commit, holding
/// its write lock; only the durable loop writes the file (applies go to the write
/// buffer), so nothing on a request's path waits for that fsync.
struct FileState {
    file: Arc<dyn SegmentFile>,
    /// Off for [`super::SyncPolicy::UnsafeNoFsync`].
    sync: bool,
}

/// redb's storage backend over a segment file (a real file, or a simulated one).
struct FileBackend(FileState);

impl fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileBackend")
    }
}

impl StorageBackend for FileBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.file.read_at(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        if !self.0.sync {
            return Ok(());
        }
        self.0.file.sync()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.file.write_at(offset, data)
    }
}

/// The vault generations of one node.
pub(crate) struct VaultFiles {
    dir: Arc<dyn SegmentDir>,
    sync: bool,
    cache_bytes: usize,
    /// The lowest generation id not yet handed out by [`VaultFiles::allocate`].
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// One open generation. Once retired (replaced by a newer one), its file goes when the
/// last reader or snapshot build holding it lets go.
pub(crate) struct VaultDb {
    pub id: u64,
    pub db: Database,
    /// Declared after `db`, so the database is closed before its file is removed.
    removal: Removal,
}

struct Removal {
    dir: Arc<dyn SegmentDir>,
    id: u64,
    sync: bool,
    retired: std::sync::atomic::AtomicBool,
}

impl Drop for Removal {
    fn drop(&mut self) {
        if !self.retired.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let removed =
            self.dir.remove(self.id).and_then(
                |()| {
                    if self.sync {
                        self.dir.sync()
                    } else {
                        Ok(())
                    }
                },
            );
        if let Err(e) = removed {
            tracing::warn!(id = self.id, error = %e, "could not remove a replaced vault generation");
        }
    }
}

impl VaultDb {
    /// Replaced: remove the file once nothing holds this generation any more.
    pub(crate) fn retire(&self) {
        self.removal
            .retired
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl VaultFiles {
    pub(crate) fn new(dir: Arc<dyn SegmentDir>, sync: bool, cache_bytes: usize) -> VaultFiles {
        VaultFiles {
            dir,
            sync,
            cache_bytes,
            next: Arc::default(),
        }
    }

    /// An id for a new generation: above every file in the directory (so above the
    /// current generation) and never handed out twice, so that an install and a
    /// snapshot written while it arrives never share a file.
    pub(crate) fn allocate(&self) -> io::Result<u64> {
        use std::sync::atomic::Ordering;
        let floor = self.dir.list()?.into_iter().max().map_or(1, |m| m + 1);
        let mut next = self.next.load(Ordering::Acquire);
        loop {
            let id = next.max(floor);
            match self
                .next
                .compare_exchange(next, id + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(id),
                Err(seen) => next = seen,
            }
        }
    }

    /// Generation `id`, emptied first when `create`.
    fn open_db(&self, id: u64, create: bool) -> io::Result<Database> {
        // Read and written (a listed file exists already).
        let file = self.dir.open(id)?;
        if create {
            file.set_len(0)?;
        }
        let state = FileState {
            file,
            sync: self.sync,
        };
        Database::builder()
            .set_cache_size(self.cache_bytes)
            .create_with_backend(FileBackend(state))
            .map_err(io_err)
    }

    /// The newest complete generation (a new, empty one if there is none); every other
    /// file is removed.
    pub(crate) fn open_current(&self) -> io::Result<VaultDb> {
        let mut ids = self.dir.list()?;
        ids.sort_unstable();
        let mut current = None;
        while let Some(id) = ids.pop() {
            match self.open_db(id, false) {
                Ok(db) if is_complete(&db)? => {
                    current = Some(self.generation(id, db));
                    break;
                }
                Ok(_) => tracing::info!(id, "removing an incomplete vault generation"),
                // Never guess past a file that may hold the state: stop here.
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("vault generation {id} cannot be opened: {e}"),
                    ))
                }
            }
        }
        let current = match current {
            Some(c) => c,
            None => {
                let fresh = self.create(1)?;
                mark_complete(&fresh.db, None)?;
                self.dir.sync()?;
                fresh
            }
        };
        self.remove_others(current.id)?;
        Ok(current)
    }

    /// A new, empty generation `id`, with every table, not yet complete.
    pub(crate) fn create(&self, id: u64) -> io::Result<VaultDb> {
        let db = self.open_db(id, true)?;
        let txn = db.begin_write().map_err(io_err)?;
        for t in TableId::ALL {
            txn.open_table(def(t)).map_err(io_err)?;
        }
        txn.open_table(SM_META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(self.generation(id, db))
    }

    fn generation(&self, id: u64, db: Database) -> VaultDb {
        VaultDb {
            id,
            db,
            removal: Removal {
                dir: self.dir.clone(),
                id,
                sync: self.sync,
                retired: std::sync::atomic::AtomicBool::new(false),
            },
        }
    }

    /// Every generation but `keep` goes.
    pub(crate) fn remove_others(&self, keep: u64) -> io::Result<()> {
        let mut removed = false;
        for id in self.dir.list()? {
            if id != keep {
                self.dir.remove(id)?;
                removed = true;
            }
        }
        if removed && self.sync {
            self.dir.sync()?;
        }
        Ok(())
    }

    /// Makes the directory's new files durable.
    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        if self.sync {
            self.dir.sync()?;
        }
        Ok(())
    }
}

fn is_complete(db: &Database) -> io::Result<bool> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = match txn.open_table(SM_META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(io_err(e)),
    };
    Ok(table.get(KEY_COMPLETE).map_err(io_err)?.is_some())
}

/// Marks `db` complete (with the state machine's records, when given) in one durable
/// commit.
pub(crate) fn mark_complete(db: &Database, records: Option<&[(&str, Vec<u8>)]>) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(redb::Durability::Immediate)
        .map_err(io_err)?;
    {
        let mut t = txn.open_table(SM_META).map_err(io_err)?;
        for (k, v) in records.unwrap_or_default() {
            t.insert(*k, v.as_slice()).map_err(io_err)?;
        }
        t.insert(KEY_COMPLETE, &b"1"[..]).map_err(io_err)?;
    }
    txn.commit().map_err(io_err)
}

/// Writes the state machine's records in `txn`.
pub(crate) fn put_sm_meta(txn: &WriteTransaction, records: &[(&str, Vec<u8>)]) -> io::Result<()> {
    let mut t = txn.open_table(SM_META).map_err(io_err)?;
    for (k, v) in records {
        t.insert(*k, v.as_slice()).map_err(io_err)?;
    }
    Ok(())
}

/// Reads a state machine record.
pub(crate) fn get_sm_meta(txn: &ReadTransaction, key: &str) -> io::Result<Option<Vec<u8>>> {
    let t = txn.open_table(SM_META).map_err(io_err)?;
    Ok(t.get(key).map_err(io_err)?.map(|v| v.value().to_vec()))
}

/// Visits `(from, to)` of a redb table in either direction.
fn scan_table<T: ReadableTable<Bytes, Bytes>>(
    t: &T,
    from: Bound<&[u8]>,
    to: Bound<&[u8]>,
    reverse: bool,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StorageError> {
    if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) =
        (from, to)
    {
        if a > b || (a == b && !matches!((from, to), (Bound::Included(_), Bound::Included(_)))) {
            return Ok(());
        }
    }
    let range = t.range::<&[u8]>((from, to)).map_err(failed)?;
    let mut step = |row: Result<
        (redb::AccessGuard<'_, Bytes>, redb::AccessGuard<'_, Bytes>),
        redb::StorageError,
    >| {
        let (k, v) = row.map_err(failed)?;
        Ok::<bool, StorageError>(visit(k.value(), v.value()))
    };
    if reverse {
        for row in range.rev() {
            if !step(row)? {
                break;
            }
        }
    } else {
        for row in range {
            if !step(row)? {
                break;
            }
        }
    }
    Ok(())
}

/// The first storage failure of a view (see [`Tables::failure`]).
#[derive(Default)]
struct Failure(RefCell<Option<StorageError>>);

impl Failure {
    fn record(&self, e: StorageError) {
        self.0.borrow_mut().get_or_insert(e);
    }

    fn first(&self) -> Option<StorageError> {
        self.0.borrow().clone()
    }

    /// The value, or `None` with the failure recorded.
    fn keep<T>(&self, r: Result<T, StorageError>) -> Option<T> {
        r.map_err(|e| self.record(e)).ok()
    }
}

/// The value under `key` in `t`.
fn get_in<T: ReadableTable<Bytes, Bytes>>(
    t: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    Ok(t.get(key).map_err(failed)?.map(|v| v.value().to_vec()))
}

/// The vault's tables inside a redb write transaction.
pub(crate) struct WriteTables<'t> {
    tables: Vec<redb::Table<'t, Bytes, Bytes>>,
    failure: Failure,
}

impl<'t> WriteTables<'t> {
    /// Opens every table in `txn`.
    pub(crate) fn open(txn: &'t WriteTransaction) -> io::Result<WriteTables<'t>> {
        let tables = TableId::ALL
            .into_iter()
            .map(|t| txn.open_table(def(t)).map_err(io_err))
            .collect::<io::Result<_>>()?;
        Ok(WriteTables {
            tables,
            failure: Failure::default(),
        })
    }

    fn table(&self, t: TableId) -> &redb::Table<'t, Bytes, Bytes> {
        &self.tables[index(t)]
    }
}

fn index(t: TableId) -> usize {
    TableId::ALL
        .iter()
        .position(|x| *x == t)
        .expect("every table is in ALL")
}

impl Tables for WriteTables<'_> {
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
        self.failure.keep(get_in(self.table(table), key)).flatten()
    }

    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) {
        self.failure
            .keep(scan_table(self.table(table), from, to, reverse, visit));
    }

    fn fail(&self, e: StorageError) {
        self.failure.record(e);
    }

    fn failure(&self) -> Option<StorageError> {
        self.failure.first()
    }
}

impl TablesMut for WriteTables<'_> {
    fn put(&mut self, table: TableId, key: &[u8], value: &[u8]) {
        let r = self.tables[index(table)].insert(key, value).map(|_| ());
        self.failure.keep(r.map_err(failed));
    }

    fn delete(&mut self, table: TableId, key: &[u8]) {
        let r = self.tables[index(table)].remove(key).map(|_| ());
        self.failure.keep(r.map_err(failed));
    }
}

/// One read transaction of a generation, shared by every view that reads it: the file
/// only changes when the state machine writes its buffer out, so between two writes
/// every request reads the same transaction (each table opened once) instead of
/// beginning its own.
pub(crate) struct FileView {
    tables: [OnceLock<Result<ReadOnlyTable<Bytes, Bytes>, StorageError>>; TableId::ALL.len()],
    txn: ReadTransaction,
    /// The generation read, kept open while the transaction is (declared last, so it
    /// goes after it).
    _db: Option<Arc<VaultDb>>,
}

impl FileView {
    /// A read transaction of `db`, begun now.
    pub(crate) fn begin(db: &Arc<VaultDb>) -> Result<Arc<FileView>, StorageError> {
        let txn = db.db.begin_read().map_err(failed)?;
        Ok(FileView::new(txn, Some(db.clone())))
    }

    /// A view of `txn`, keeping `db` (the generation it reads) open as long as it.
    pub(crate) fn new(txn: ReadTransaction, db: Option<Arc<VaultDb>>) -> Arc<FileView> {
        Arc::new(FileView {
            tables: Default::default(),
            txn,
            _db: db,
        })
    }

    /// Rows in all the tables (each table's length is in its root: O(1) per table).
    pub(crate) fn rows(&self) -> Result<u64, StorageError> {
        let mut rows = 0;
        for t in TableId::ALL {
            rows += self.table(t)?.len().map_err(failed)?;
        }
        Ok(rows)
    }

    fn table(&self, t: TableId) -> Result<&ReadOnlyTable<Bytes, Bytes>, StorageError> {
        self.tables[index(t)]
            .get_or_init(|| self.txn.open_table(def(t)).map_err(failed))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The vault's tables in a redb read transaction (shared, see [`FileView`]), with this
/// view's own first failure.
pub struct ReadTables {
    file: Arc<FileView>,
    failure: Failure,
}

impl ReadTables {
    /// A view of `txn`, keeping `db` (the generation it reads) open as long as it.
    pub(crate) fn new(txn: ReadTransaction, db: Option<Arc<VaultDb>>) -> ReadTables {
        ReadTables::over(FileView::new(txn, db))
    }

    /// A view of a shared read transaction.
    pub(crate) fn over(file: Arc<FileView>) -> ReadTables {
        ReadTables {
            file,
            failure: Failure::default(),
        }
    }

    fn table(&self, t: TableId) -> Option<&ReadOnlyTable<Bytes, Bytes>> {
        self.failure.keep(self.file.table(t))
    }
}

impl Tables for ReadTables {
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
        self.failure.keep(get_in(self.table(table)?, key)).flatten()
    }

    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) {
        if let Some(t) = self.table(table) {
            self.failure.keep(scan_table(t, from, to, reverse, visit));
        }
    }

    fn fail(&self, e: StorageError) {
        self.failure.record(e);
    }

    fn failure(&self) -> Option<StorageError> {
        self.failure.first()
    }
}

/// Writes (and drains) `batch` into `db` in one transaction, without an fsync.
pub(crate) fn write_records(
    db: &Database,
    batch: &mut Vec<(TableId, Vec<u8>, Vec<u8>)>,
) -> io::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(redb::Durability::None).map_err(io_err)?;
    {
        let mut tables = WriteTables::open(&txn)?;
        for (t, k, v) in batch.drain(..) {
            tables.put(t, &k, &v);
        }
        if let Some(e) = tables.failure() {
            return Err(io::Error::other(e));
        }
    }
    txn.commit().map_err(io_err)
}
