//! Reading a stopped node's database (or a copy of it) without starting Raft: what
//! `kura audit verify --data-dir` uses.

use super::sm::SnapshotBody;
use super::wal::{self, FsDir, Wal};
use super::{
    decode, io_err, snapshot_files, snapshot_path, wal_path, KEY_COMMITTED, KEY_SNAPSHOT_DATA,
    KEY_SNAPSHOT_FILE, KEY_SNAPSHOT_META, LOG, META,
};
use crate::raft_types::{Entry, LogId, SnapshotMeta};
use crate::vault::VaultState;
use openraft::EntryPayload;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// The vault as a database file holds it.
pub struct OfflineVault {
    /// The last snapshot's vault with every committed entry after it applied.
    pub vault: VaultState,
    /// Last log index in the snapshot (0 without one).
    pub snapshot_index: u64,
    /// Log entries applied on top of the snapshot.
    pub replayed_entries: u64,
}

/// Rebuilds the vault from the database at `path`: the snapshot as stored (from its
/// file beside the database; not validated, so a tampered one can be examined), then the committed log entries after
/// it, from the log's files beside it (or, for a database from before the log had its
/// own files, from the database). The node must be stopped, or `path` a copy of its
/// data directory: the file is opened exclusively. Nothing is changed, not even a torn
/// log tail.
pub fn read_vault(path: &Path) -> io::Result<OfflineVault> {
    let db = Database::open(path).map_err(|e| {
        io::Error::other(format!(
            "cannot open {} (is the node still running? use a copy): {}",
            path.display(),
            redb::Error::from(e)
        ))
    })?;
    let txn = db.begin_read().map_err(io_err)?;
    let meta = txn.open_table(META).map_err(io_err)?;
    let get = |key: &str| -> io::Result<Option<Vec<u8>>> {
        Ok(meta.get(key).map_err(io_err)?.map(|v| v.value().to_vec()))
    };
    let snapshot_data = match get(KEY_SNAPSHOT_FILE)? {
        Some(id) => {
            let dir = FsDir::existing(snapshot_path(path), snapshot_files::EXT);
            Some(snapshot_files::read(&dir, decode(&id)?)?)
        }
        // Recorded before snapshots had files.
        None => get(KEY_SNAPSHOT_DATA)?,
    };
    let (mut vault, snapshot_index) = match (get(KEY_SNAPSHOT_META)?, snapshot_data) {
        (Some(m), Some(d)) => {
            let m: SnapshotMeta = decode(&m)?;
            let body: SnapshotBody = decode(&d)?;
            (body.vault, m.last_log_id.map_or(0, |l| l.index))
        }
        _ => (VaultState::default(), 0),
    };
    let committed = get(KEY_COMMITTED)?
        .map(|b| decode::<LogId>(&b))
        .transpose()?
        .map_or(0, |l| l.index);
    let range = snapshot_index + 1..=committed;
    let old_table = txn.open_table(LOG).map_err(io_err)?;
    let rows: Vec<Vec<u8>> = if old_table.first().map_err(io_err)?.is_some() {
        let mut rows = Vec::new();
        for row in old_table.range(range).map_err(io_err)? {
            rows.push(row.map_err(io_err)?.1.value().to_vec());
        }
        rows
    } else {
        let wal = Wal::open(Arc::new(FsDir::existing(wal_path(path), wal::EXT)), false)?;
        wal.read(range)?.into_iter().map(|(_, b)| b).collect()
    };
    let mut replayed_entries = 0;
    for bytes in rows {
        let entry: Entry = decode(&bytes)?;
        if let EntryPayload::Normal(cmd) = &entry.payload {
            vault.apply(cmd);
        }
        replayed_entries += 1;
    }
    Ok(OfflineVault {
        vault,
        snapshot_index,
        replayed_entries,
    })
}
