//! Durable storage: the Raft log in an append-only segmented log ([`wal`], the
//! `kura.wal/` directory), state machine snapshots in files of their own
//! ([`snapshot_files`], `kura.snap/`), and the vote, purge point, node metadata and which
//! snapshot is current in one redb database file (`kura.redb`).
//!
//! Only this module imports redb. Writes go through one [`writer`] that batches
//! everything queued (group commit), makes it durable — one sequential append and
//! fdatasync for log entries, one redb transaction for the rest — and only then tells
//! openraft the IO is flushed. A snapshot's data is written by the task that builds
//! it, outside the writer; only its small record goes through the writer.

pub mod backup;
mod log;
pub mod offline;
mod overlay;
mod prefill;
mod sim_disk;
mod sm;
mod snapshot_files;
mod snapshot_stream;
mod tail;
mod vault_db;
mod wal;
mod writer;

pub use log::LogStore;
pub use sim_disk::{DatabaseFile, SimDisk, TornCrash};
pub use sm::{durable_loop, FileAsk, Mark, SharedVault, SnapshotUpload, StateMachine, VaultView};
pub use wal::record_ends;
pub use writer::{FsyncObserver, SyncPolicy, WriterMode};

use crate::raft_types::{Entry, Snapshot};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use snapshot_files::SnapshotFiles;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tail::Tail;
#[cfg(test)]
use tail::RECENT_ENTRIES;
use wal::{FsDir, SegmentDir, Wal};
use writer::{Done, Op, Writer};

/// Where the Raft log lived before it moved to [`wal`]; emptied into it on open.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";
const KEY_CLUSTER_ID: &str = "cluster_id";
const KEY_SNAPSHOT_META: &str = "snapshot_meta";
/// The id of the current snapshot's file in [`snapshot_files`].
const KEY_SNAPSHOT_FILE: &str = "snapshot_file";
/// Where a snapshot's data lived before snapshots had files; removed by the next one.
const KEY_SNAPSHOT_DATA: &str = "snapshot_data";

/// The node's database: cheap to clone, shared by the log store and state machine.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// The Raft log's entries.
    wal: Arc<Mutex<Wal>>,
    writer: Writer,
    mode: WriterMode,
    snapshots: Arc<SnapshotFiles>,
    /// Held while a snapshot is recorded, so that an older one never replaces a newer.
    snapshot_order: Arc<tokio::sync::Mutex<()>>,
    /// The log's tail in memory, and whether an append failed (see [`Tail`]).
    tail: Tail,
    /// Called after every applied command (simulations check invariants here).
    apply_check: Option<ApplyCheck>,
    /// The vault's tables, one redb file per generation (`kura.vault/`).
    vault_files: Arc<vault_db::VaultFiles>,
    /// The current generation as the store's open read it (for the log's durable
    /// floor), kept for the state machine to take instead of opening it again.
    vault_opened: Arc<Mutex<Option<vault_db::VaultDb>>>,
    /// The highest log index on disk for good (every entry up to it was synced).
    durable_log: Arc<std::sync::atomic::AtomicU64>,
    /// Told of every snapshot built or installed (for the metrics), once set.
    snapshot_observer: Arc<std::sync::OnceLock<SnapshotObserver>>,
    /// The vault generation written while the last snapshot upload arrived.
    prefilled: prefill::Prefilled,
    /// The snapshot being built, readable as far as it is written (see
    /// [`sm::SnapshotBuilder`]): a follower that needs a fresh snapshot is sent this one
    /// while it is built.
    in_build: Arc<Mutex<Option<Snapshot>>>,
    /// Whether a scheduled snapshot may be a compaction mark instead of a file: only
    /// when a durable commit is durable (`SyncPolicy::Fsync`), since the vault's file
    /// then stands for the snapshot.
    marks: bool,
    /// Set when a follower, a backup or a new member needs a snapshot file: the next
    /// build writes one.
    file_wanted: Arc<std::sync::atomic::AtomicBool>,
    /// The vote the Raft core is saving, while it waits on it (see [`log::VoteSave`]).
    vote_save: Arc<log::VoteSave>,
    /// What a received snapshot must leave free, once set ([`Store::keep_room`]).
    room: Arc<std::sync::OnceLock<Room>>,
    /// Snapshot files given up for want of room ([`Store::room_for_file`]).
    files_short: Arc<FilesShort>,
}

/// Snapshot files this node gave up building for want of room.
#[derive(Default)]
struct FilesShort {
    /// How many, since the node started.
    given_up: std::sync::atomic::AtomicU64,
    /// The bytes the last one had written when it was given up: the next needs at least
    /// as many. 0 once a file is built.
    needed: std::sync::atomic::AtomicU64,
}

/// Bytes of a snapshot file built here between two checks of the room left
/// ([`Store::room_for`]).
const FILE_ROOM_STEP: u64 = 1 << 20;

/// The data directory, and the bytes a received snapshot must leave free on its
/// filesystem.
struct Room {
    dir: PathBuf,
    reserve: u64,
    /// Measures the filesystem (tests measure a made-up one).
    space: fn(&Path) -> Option<(u64, u64)>,
}

/// Called with `build` or `install`, how long it took and the snapshot's size in bytes.
pub type SnapshotObserver = Arc<dyn Fn(&'static str, Duration, u64) + Send + Sync>;

/// The vault's page cache unless configured: what bounds a node's memory, not the
/// vault's size.
pub const VAULT_CACHE_BYTES_DEFAULT: usize = 256 << 20;

/// A check run on the vault after every applied command, with the entry's index and
/// the keys the command wrote.
pub type ApplyCheck = Arc<
    dyn Fn(
            u64,
            &crate::vault::Vault<&dyn crate::vault::Tables>,
            &[(crate::vault::tables::TableId, Vec<u8>)],
        ) + Send
        + Sync,
>;

fn io_err(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(e.into())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("raft types serialize")
}

/// The first byte of a log entry in MessagePack (with field names, byte strings as
/// bytes); an entry in JSON, as kura wrote them before, starts with `{`.
const ENTRY_MSGPACK: u8 = 1;

/// A log entry as the log stores it: MessagePack, about two thirds of its JSON (a
/// sealed card's bytes are not hex), and cheaper to write and read.
fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.push(ENTRY_MSGPACK);
    rmp_serde::encode::write_named(&mut out, e).expect("log entries serialize");
    out
}

/// Reads what [`encode_entry`] wrote, or an entry in JSON.
fn decode_entry(bytes: &[u8]) -> io::Result<Entry> {
    match bytes.split_first() {
        Some((&ENTRY_MSGPACK, rest)) => {
            rmp_serde::from_slice(rest).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        _ => decode(bytes),
    }
}

/// The Raft log's directory beside the database file at `db_path`.
fn wal_path(db_path: &Path) -> PathBuf {
    db_path.with_extension(wal::EXT)
}

/// The vault generations' directory beside the database file at `db_path`.
fn vault_path(db_path: &Path) -> PathBuf {
    db_path.with_extension(vault_db::EXT)
}

/// The snapshot files' directory beside the database file at `db_path`.
fn snapshot_path(db_path: &Path) -> PathBuf {
    db_path.with_extension(snapshot_files::EXT)
}

impl Store {
    /// Opens (or creates) the database file at `path`.
    pub fn open(
        path: &Path,
        mode: WriterMode,
        sync: SyncPolicy,
        fsync: FsyncObserver,
    ) -> io::Result<Store> {
        let db = Database::create(path).map_err(io_err)?;
        let log_dir = Arc::new(FsDir::create(wal_path(path), wal::EXT)?);
        let snapshot_dir = Arc::new(FsDir::create(snapshot_path(path), snapshot_files::EXT)?);
        let vault_dir = Arc::new(FsDir::create(vault_path(path), vault_db::EXT)?);
        Store::with_database(db, [log_dir, snapshot_dir, vault_dir], mode, sync, fsync)
    }

    /// Opens the database and log on a simulated disk, committing from a task (no
    /// threads).
    pub fn open_sim(disk: &SimDisk, sync: SyncPolicy, fsync: FsyncObserver) -> io::Result<Store> {
        let db = Database::builder()
            .create_with_backend(disk.backend())
            .map_err(io_err)?;
        let dirs = [disk.wal_dir(), disk.snapshot_dir(), disk.vault_dir()];
        Store::with_database(db, dirs, WriterMode::Task, sync, fsync)
    }

    fn with_database(
        db: Database,
        [log_dir, snapshot_dir, vault_dir]: [Arc<dyn SegmentDir>; 3],
        mode: WriterMode,
        sync: SyncPolicy,
        fsync: FsyncObserver,
    ) -> io::Result<Store> {
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(LOG).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        // A paced removal the node stopped in the middle of: out of the log already.
        log_dir.remove_leftovers()?;
        let [purged, snapshot_file, snapshot_meta] =
            read_meta_keys(&db, [KEY_PURGED, KEY_SNAPSHOT_FILE, KEY_SNAPSHOT_META])?;
        let purged = purged
            .map(|v| decode::<crate::raft_types::LogId>(&v))
            .transpose()?;
        let snapshot_index = snapshot_meta
            .map(|v| decode::<crate::raft_types::SnapshotMeta>(&v))
            .transpose()?
            .and_then(|m| m.last_log_id)
            .map_or(0, |l| l.index);
        // The vault is made durable only as far as this node's log is (or a snapshot or
        // purge covers): the log must still reach its last durable apply.
        let vault_files = Arc::new(vault_db::VaultFiles::new(
            vault_dir,
            sync == SyncPolicy::Fsync,
            VAULT_CACHE_BYTES_DEFAULT,
        ));
        let vault_opened = vault_files.open_current()?;
        let applied = sm::read_applied(&vault_opened.db)?.0.map_or(0, |l| l.index);
        // (A log from before the log files, still in the database, counts too.)
        let log_table_last = {
            let txn = db.begin_read().map_err(io_err)?;
            let log = txn.open_table(LOG).map_err(io_err)?;
            let last = log.last().map_err(io_err)?.map_or(0, |(k, _)| k.value());
            last
        };
        let covered = purged
            .map_or(0, |p| p.index)
            .max(snapshot_index)
            .max(log_table_last);
        // (Without fsync nothing is known durable.)
        let durable = if applied > covered && sync == SyncPolicy::Fsync {
            applied
        } else {
            0
        };
        let mut wal = Wal::open_with(log_dir, true, wal::SEGMENT_BYTES, durable)?;
        move_log_table_into(&db, &mut wal)?;
        let snapshot_file = snapshot_file.map(|v| decode::<u64>(&v)).transpose()?;
        let snapshots =
            SnapshotFiles::open(snapshot_dir, sync == SyncPolicy::Fsync, snapshot_file)?;
        // Segments a purge had not yet deleted when the node stopped.
        if let Some(p) = purged {
            wal.purge_upto(p.index).remove()?;
            wal.take_sync().sync()?;
        }
        let db = Arc::new(db);
        let durable_log = Arc::new(std::sync::atomic::AtomicU64::new(
            wal.last_index().unwrap_or(0),
        ));
        let wal = Arc::new(Mutex::new(wal));
        let writer = Writer::start(
            db.clone(),
            wal.clone(),
            mode,
            sync,
            fsync,
            durable_log.clone(),
        )?;
        Ok(Store {
            db,
            wal,
            writer,
            mode,
            snapshots: Arc::new(snapshots),
            snapshot_order: Arc::new(tokio::sync::Mutex::new(())),
            tail: Tail::default(),
            apply_check: None,
            durable_log,
            snapshot_observer: Arc::default(),
            prefilled: prefill::Prefilled::default(),
            in_build: Arc::default(),
            marks: sync == SyncPolicy::Fsync,
            file_wanted: Arc::default(),
            vote_save: Arc::default(),
            room: Arc::default(),
            files_short: Arc::default(),
            vault_files,
            vault_opened: Arc::new(Mutex::new(Some(vault_opened))),
        })
    }

    /// Tells `observer` of every snapshot built or installed from now on (the first
    /// observer set stays).
    pub fn observe_snapshots(&self, observer: SnapshotObserver) {
        let _ = self.snapshot_observer.set(observer);
    }

    /// Asks that the next snapshot build write a file rather than record a compaction
    /// mark: something needs the snapshot's data (a follower, a backup).
    pub fn want_snapshot_file(&self) {
        self.file_wanted
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the build starting now writes a file (and takes the request for one).
    fn take_file_wanted(&self) -> bool {
        let wanted = self
            .file_wanted
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        wanted || !self.marks
    }

    pub(crate) fn snapshot_done(&self, kind: &'static str, elapsed: Duration, bytes: u64) {
        if let Some(o) = self.snapshot_observer.get() {
            o(kind, elapsed, bytes);
        }
    }

    /// The highest log index known durable here. A follower may apply committed entries
    /// its own log has not synced yet (a quorum holds them); the vault is made durable
    /// only up to this index, so that it is never ahead of the log after a crash.
    pub fn durable_log_index(&self) -> u64 {
        self.durable_log.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Where storage work runs: on threads of its own, or (a simulated host) in place.
    pub fn mode(&self) -> WriterMode {
        self.mode
    }

    /// Closes the generation the store's open kept, before anything rewrites the
    /// vault's files under it (a restore).
    pub(crate) fn close_opened_vault(&self) {
        self.vault_opened.lock().expect("vault opened lock").take();
    }

    /// The vault's current generation: as the store's open left it, the first time;
    /// opened afresh after that.
    pub(crate) fn open_vault(&self) -> io::Result<vault_db::VaultDb> {
        match self.vault_opened.lock().expect("vault opened lock").take() {
            Some(db) => Ok(db),
            None => self.vault_files.open_current(),
        }
    }

    /// Runs `check` after every command the state machine applies.
    pub fn with_apply_check(mut self, check: ApplyCheck) -> Store {
        self.apply_check = Some(check);
        self
    }

    fn read_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let [value] = read_meta_keys(&self.db, [key])?;
        Ok(value)
    }

    async fn put_meta(&self, pairs: Vec<(&'static str, Vec<u8>)>) -> io::Result<()> {
        let (done, rx) = Done::oneshot();
        self.writer.submit(Op::PutMeta { pairs, done });
        rx.await
            .map_err(|_| io::Error::other("storage writer stopped"))?
    }

    /// The cluster id this node belongs to, once it has formed or joined one.
    pub fn cluster_id(&self) -> io::Result<Option<String>> {
        self.read_meta(KEY_CLUSTER_ID)?
            .map(|b| String::from_utf8(b).map_err(io::Error::other))
            .transpose()
    }

    /// Durably records the cluster id. Refuses to replace a different one.
    pub async fn set_cluster_id(&self, id: &str) -> io::Result<()> {
        match self.cluster_id()? {
            Some(existing) if existing == id => Ok(()),
            Some(existing) => Err(io::Error::other(format!(
                "node already belongs to cluster {existing}"
            ))),
            None => {
                self.put_meta(vec![(KEY_CLUSTER_ID, id.as_bytes().to_vec())])
                    .await
            }
        }
    }

    /// True when this node has any Raft state (a vote or a log entry).
    pub fn has_raft_state(&self) -> io::Result<bool> {
        if self.read_meta(KEY_VOTE)?.is_some() {
            return Ok(true);
        }
        Ok(self.wal.lock().expect("log lock").last_index().is_some())
    }

    /// True while the Raft core saves a vote (see [`log::VoteSave`]).
    pub fn saving_vote(&self) -> bool {
        self.vote_save.pending()
    }

    /// The switches that stall or slow this store's commits (fault injection).
    pub fn faults(&self) -> Arc<crate::faults::FaultSwitches> {
        self.writer.faults()
    }

    /// Runs `f` off the async workers (on the blocking pool), or in place on a simulated
    /// host, which must not run threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        blocking(self.mode, f).await
    }

    /// Runs `f`, long background work over the whole vault, on a thread of its own
    /// named `name` at the lowest CPU and I/O priority
    /// ([`crate::runtime::lowest_priority_for_this_thread`]), so that it takes only what
    /// the node's requests leave; in place on a simulated host. A comparison's hash at
    /// ten million cards reads 40 million rows for two and a half minutes on each node:
    /// on the blocking pool at the default priority it put the tokenize p99 at 500/s up
    /// from 5.6 ms to 32 ms (the run's median) while it ran.
    pub(crate) async fn background<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        match self.mode {
            WriterMode::Threaded => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || {
                        crate::runtime::lowest_priority_for_this_thread();
                        let _ = tx.send(f());
                    })?;
                rx.await
                    .map_err(|_| io::Error::other(format!("{name}: the thread panicked")))
            }
            WriterMode::Task => Ok(f()),
        }
    }

    /// Makes a received snapshot leave `reserve` bytes free on the filesystem of `dir`
    /// (the data directory): half the free-space floor, the reserve a leader keeps too.
    /// A snapshot that would eat into it is refused ([`Store::room_for`]) before it
    /// fills the disk, so that the node's own small writes — its vote, the snapshot's
    /// record, its vault's commits — still have room. Unset (a simulated disk, or no
    /// floor configured), only a full disk refuses one.
    pub fn keep_room(&self, dir: PathBuf, reserve: u64) {
        self.keep_room_measured_by(dir, reserve, crate::files::filesystem_space);
    }

    fn keep_room_measured_by(
        &self,
        dir: PathBuf,
        reserve: u64,
        space: fn(&Path) -> Option<(u64, u64)>,
    ) {
        let _ = self.room.set(Room {
            dir,
            reserve,
            space,
        });
    }

    /// `Ok` if `bytes` more leave the reserve free ([`Store::keep_room`]); else an error
    /// of kind `StorageFull` that says how much is free.
    pub fn room_for(&self, bytes: u64) -> io::Result<()> {
        let Some(room) = self.room.get() else {
            return Ok(());
        };
        let Some((free, _)) = (room.space)(&room.dir) else {
            return Ok(());
        };
        if free >= bytes.saturating_add(room.reserve) {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{:.1} MiB free on the data directory's filesystem: {:.1} MiB more of a \
                 snapshot would leave less than the {:.1} MiB it must leave (half of \
                 health.storage_min_free_bytes)",
                mib(free),
                mib(bytes),
                mib(room.reserve)
            ),
        ))
    }

    /// `Ok` if a snapshot file may be started here: the part of it known to be needed —
    /// what the last one given up for want of room had written, and a step more — leaves
    /// the reserve free ([`Store::room_for`]). Without that check, a disk that had no
    /// room for a file would have the same gigabytes written and removed again at every
    /// ask.
    fn room_for_file(&self) -> io::Result<()> {
        let needed = self
            .files_short
            .needed
            .load(std::sync::atomic::Ordering::Relaxed);
        self.room_for(needed.saturating_add(FILE_ROOM_STEP))
    }

    /// A snapshot file was given up for want of room once `written` bytes of it were.
    fn file_given_up(&self, written: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.files_short.needed.fetch_max(written, Relaxed);
        self.files_short.given_up.fetch_add(1, Relaxed);
    }

    /// A snapshot file was built: nothing more is known to be needed.
    fn file_built(&self) {
        self.files_short
            .needed
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many snapshot files this node gave up building for want of room (a
    /// compaction mark was recorded instead): a wait for a file that sees this grow
    /// knows it will not come.
    pub fn files_given_up(&self) -> u64 {
        self.files_short
            .given_up
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A small durable write through the same path as log appends; returns when synced.
    pub async fn canary(&self) -> io::Result<()> {
        let (done, rx) = Done::oneshot();
        self.writer.submit(Op::Canary { done });
        rx.await
            .map_err(|_| io::Error::other("storage writer stopped"))?
    }
}

/// `bytes` in MiB, for messages.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Runs `f` off the async workers (on the blocking pool), or in place on a simulated
/// host (`WriterMode::Task`), which must not run threads.
async fn blocking<T: Send + 'static>(
    mode: WriterMode,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    match mode {
        WriterMode::Threaded => tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| io::Error::other(format!("blocking storage task: {e}"))),
        WriterMode::Task => Ok(f()),
    }
}

/// The metadata values of `keys`, read in one transaction, so that they belong together.
fn read_meta_keys<const N: usize>(
    db: &Database,
    keys: [&str; N],
) -> io::Result<[Option<Vec<u8>>; N]> {
    let txn = db.begin_read().map_err(io_err)?;
    let table = txn.open_table(META).map_err(io_err)?;
    let mut values = std::array::from_fn(|_| None);
    for (value, key) in values.iter_mut().zip(keys) {
        *value = table.get(key).map_err(io_err)?.map(|v| v.value().to_vec());
    }
    Ok(values)
}

/// Moves the entries of a database written before the log had its own files into
/// `wal`, then empties the old table. Crash-safe: the old table is emptied only once
/// the log is durable, and a log that already holds entries is the one that counts.
fn move_log_table_into(db: &Database, wal: &mut Wal) -> io::Result<()> {
    let rows: Vec<(u64, Vec<u8>)> = {
        let txn = db.begin_read().map_err(io_err)?;
        let log = txn.open_table(LOG).map_err(io_err)?;
        if log.first().map_err(io_err)?.is_none() {
            return Ok(());
        }
        let mut rows = Vec::new();
        for row in log.iter().map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            rows.push((k.value(), v.value().to_vec()));
        }
        rows
    };
    if wal.last_index().is_none() {
        wal.append(&rows)?;
        wal.take_sync().sync()?;
        tracing::info!(
            entries = rows.len(),
            "raft log moved out of the database into its own files"
        );
    }
    let txn = db.begin_write().map_err(io_err)?;
    txn.open_table(LOG)
        .map_err(io_err)?
        .retain(|_, _| false)
        .map_err(io_err)?;
    txn.commit().map_err(io_err)
}

#[cfg(test)]
mod tests;
