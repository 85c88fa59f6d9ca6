//! Reading a stopped node's data directory (or a copy of it) without starting Raft:
//! what `kura audit verify --data-dir` uses.

use super::sm::{apply_batch, VaultView};
use super::vault_db::{self, VaultFiles};
use super::wal::{self, FsDir, SegmentDir, Wal};
use super::{decode, decode_entry, io_err, vault_path, KEY_COMMITTED, META};
use crate::raft_types::{Entry, LogId};
use crate::vault::Vault;
use redb::{Database, ReadableDatabase};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The vault as a data directory holds it.
pub struct OfflineVault {
    /// The vault's tables with every committed entry applied.
    pub vault: VaultView,
    /// The log index the vault's file had applied (durably) when the node stopped.
    pub applied_index: u64,
    /// Log entries applied on top of it.
    pub replayed_entries: u64,
    /// The database `vault` reads (after it: fields drop in order).
    _db: vault_db::VaultDb,
    /// The working copy, removed on drop.
    _copy: TempDir,
}

/// A directory removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    /// A new directory in the system's temporary directory, named for `what`.
    pub(super) fn new(what: &str) -> io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "kura-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rebuilds the vault from the database at `path`: a working copy of the vault's
/// current file (in the system's temporary directory; the data directory is never
/// written, not even a torn log tail), then the committed log entries after the point
/// it had applied, from the log's files. The node must be stopped, or `path` a copy of
/// its data directory: the metadata file is opened exclusively.
pub fn read_vault(path: &Path) -> io::Result<OfflineVault> {
    read(path, false, None::<fn(LogId) -> Entry>).map(|(v, _)| v)
}

/// What [`read_vault_all`] also tells.
pub struct Recovered {
    /// The last entry applied (the recovery's own record).
    pub last_log_id: LogId,
    /// The members as the node's last membership entry had them.
    pub members: std::collections::BTreeMap<crate::member::NodeId, crate::member::Member>,
    /// The cluster the node belonged to.
    pub cluster_id: Option<String>,
}

/// Like [`read_vault`], but applies every entry in the log, committed as far as this
/// node knew or not, then the entry `extra` makes for the index after the last.
pub fn read_vault_all(
    path: &Path,
    extra: impl FnOnce(LogId) -> Entry,
) -> io::Result<(OfflineVault, Recovered)> {
    let (v, r) = read(path, true, Some(extra))?;
    Ok((v, r.expect("asked for")))
}

fn read(
    path: &Path,
    whole_log: bool,
    extra: Option<impl FnOnce(LogId) -> Entry>,
) -> io::Result<(OfflineVault, Option<Recovered>)> {
    let db = Database::open(path).map_err(|e| {
        io::Error::other(format!(
            "cannot open {} (is the node still running? use a copy): {}",
            path.display(),
            redb::Error::from(e)
        ))
    })?;
    let (committed, cluster_id) = {
        let txn = db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        let got = meta.get(KEY_COMMITTED).map_err(io_err)?;
        let committed = got
            .map(|b| decode::<LogId>(b.value()))
            .transpose()?
            .map_or(0, |l| l.index);
        let id = meta.get(super::KEY_CLUSTER_ID).map_err(io_err)?;
        let id = id.map(|b| String::from_utf8_lossy(b.value()).into_owned());
        (committed, id)
    };
    let source = FsDir::existing(vault_path(path), vault_db::EXT);
    let generations = source.list()?;
    if generations.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no vault file beside {}", path.display()),
        ));
    }
    let copy = TempDir::new("offline")?;
    let dir = FsDir::create(copy.0.clone(), vault_db::EXT)?;
    // Every generation (one, or two while a snapshot was being installed): the newest
    // complete one is the vault.
    for id in generations {
        copy_file(&source, &dir, id)?;
    }
    let files = VaultFiles::new(Arc::new(dir), false, super::VAULT_CACHE_BYTES_DEFAULT);
    let current = files.open_current()?;
    let (applied, membership) = super::sm::read_applied(&current.db)?;
    let applied_index = applied.map_or(0, |l| l.index);
    let wal = Wal::open(
        Arc::new(FsDir::existing(super::wal_path(path), wal::EXT)),
        false,
    )?;
    let mut replayed_entries = 0;
    let upto = if whole_log {
        wal.last_index().unwrap_or(0).max(committed)
    } else {
        committed
    };
    let mut last_log_id = applied;
    let mut membership = membership;
    if upto > applied_index {
        let rows = wal.read(applied_index + 1..=upto)?;
        if rows.first().map(|(i, _)| *i) != Some(applied_index + 1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the log does not continue the vault: it applied up to {applied_index}, the log holds {:?}",
                    wal.first_index()
                ),
            ));
        }
        let entries = rows
            .into_iter()
            .map(|(_, b)| decode_entry(&b))
            .collect::<io::Result<Vec<_>>>()?;
        replayed_entries = entries.len() as u64;
        last_log_id = entries.last().map(|e| e.log_id).or(last_log_id);
        membership = apply_batch(&current.db, &entries, membership)?.1;
    }
    let recovered = match extra {
        Some(make) => {
            let last = last_log_id.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the node holds no state to recover",
                )
            })?;
            let entry = make(last);
            let log_id = entry.log_id;
            membership = apply_batch(&current.db, &[entry], membership)?.1;
            Some(Recovered {
                last_log_id: log_id,
                members: membership
                    .membership()
                    .nodes()
                    .map(|(i, m)| (*i, m.clone()))
                    .collect(),
                cluster_id,
            })
        }
        None => None,
    };
    let txn = current.db.begin_read().map_err(io_err)?;
    let vault = OfflineVault {
        vault: Vault::new(super::overlay::Layered::new(
            Default::default(),
            Default::default(),
            vault_db::ReadTables::new(txn, None),
        )),
        applied_index,
        replayed_entries,
        _db: current,
        _copy: copy,
    };
    Ok((vault, recovered))
}

/// Copies file `id` of `from` into `to`, a piece at a time.
fn copy_file(from: &dyn SegmentDir, to: &dyn SegmentDir, id: u64) -> io::Result<()> {
    let (src, dst) = (from.open_existing(id)?, to.open(id)?);
    let len = src.len()?;
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0;
    while offset < len {
        let n = buf.len().min((len - offset) as usize);
        src.read_at(offset, &mut buf[..n])?;
        dst.write_at(offset, &buf[..n])?;
        offset += n as u64;
    }
    dst.sync()
}
