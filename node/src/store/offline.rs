//! Reading a stopped node's database (or a copy of it) without starting Raft: what
//! `kura audit verify --data-dir` uses.

use super::sm::SnapshotBody;
use super::{decode, io_err, KEY_COMMITTED, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, LOG, META};
use crate::raft_types::{Entry, LogId, SnapshotMeta};
use crate::vault::VaultState;
use openraft::EntryPayload;
use redb::{Database, ReadableDatabase};
use std::io;
use std::path::Path;

/// The vault as a database file holds it.
pub struct OfflineVault {
    /// The last snapshot's vault with every committed entry after it applied.
    pub vault: VaultState,
    /// Last log index in the snapshot (0 without one).
    pub snapshot_index: u64,
    /// Log entries applied on top of the snapshot.
    pub replayed_entries: u64,
}

/// Rebuilds the vault from the database at `path`: the snapshot as stored (not
/// validated, so a tampered one can be examined), then the committed log entries after
/// it. The node must be stopped, or `path` a copy: the file is opened exclusively.
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
    let (mut vault, snapshot_index) = match (get(KEY_SNAPSHOT_META)?, get(KEY_SNAPSHOT_DATA)?) {
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
    let log = txn.open_table(LOG).map_err(io_err)?;
    let mut replayed_entries = 0;
    for row in log.range(snapshot_index + 1..=committed).map_err(io_err)? {
        let (_, bytes) = row.map_err(io_err)?;
        let entry: Entry = decode(bytes.value())?;
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
