//! Backups. A backup is one file: a magic line, a JSON header line (the cluster id,
//! the log id and membership the snapshot was taken at, its size and SHA-256), then
//! the snapshot stream itself (CRC-32 per frame, record count and SHA-256 at its end).
//! The vault's records in it are as they are stored: cards sealed under data keys,
//! data keys wrapped under the KEK, which is never in it.
//!
//! A backup is checked offline (every frame and both checksums, then `validate()` and
//! the audit chain on a vault built from it) and restored into an empty data
//! directory as the state of a new cluster: the snapshot installed at its log id with
//! the new members, a new cluster id, the log starting after it. The same restore
//! serves `--force-new-cluster`: a stopped node's own state (every entry in its log
//! applied) made into a one-member cluster.

use super::sm::{sm_records, VaultView};
use super::snapshot_stream::{self, Encoder};
use super::vault_db::{self, VaultFiles};
use super::{encode, Store, KEY_COMMITTED, KEY_PURGED, KEY_VOTE};
use crate::member::{Member, NodeId};
use crate::raft_types::{Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use crate::vault::{TableId, Tables, Vault};
use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// The first line of every backup file.
pub const MAGIC: &[u8] = b"KURA-BACKUP 1\n";

/// What a backup says of itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// The cluster it was taken from.
    pub cluster_id: String,
    /// The last log entry the snapshot holds.
    pub last_log_id: LogId,
    /// The members then (informational: a restore names its own).
    pub members: BTreeMap<NodeId, Member>,
    /// When it was taken (ms since the Unix epoch).
    pub taken_at_ms: u64,
    /// The snapshot stream's size and SHA-256 (hex).
    pub snapshot_bytes: u64,
    pub snapshot_sha256: String,
}

impl Header {
    /// The magic line and the header line that start the file.
    pub fn preamble(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(serde_json::to_vec(self).expect("a header serializes"));
        out.push(b'\n');
        out
    }

    /// Reads the magic and header lines from `r`, leaving it at the snapshot stream.
    pub fn read(r: &mut impl io::BufRead) -> io::Result<Header> {
        let mut magic = vec![0u8; MAGIC.len()];
        r.read_exact(&mut magic)
            .map_err(|_| bad("too short to be a kura backup"))?;
        if magic != MAGIC {
            return Err(bad("not a kura backup (no KURA-BACKUP 1 line)"));
        }
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        serde_json::from_slice(&line).map_err(|e| bad(format!("unreadable backup header: {e}")))
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// SHA-256 (hex) and length of `data`, read a MiB at a time.
pub fn digest(data: &crate::raft_types::SnapshotData) -> io::Result<String> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < data.len() {
        let n = (data.len() - offset).min(buf.len() as u64) as usize;
        data.read_at(offset, &mut buf[..n])?;
        hash.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(hash.finalize()))
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Checks the snapshot stream after `header` in `r` against the header's size and
/// SHA-256 and its own frames, handing each record to `record`; returns the count.
fn read_stream(
    header: &Header,
    r: impl Read,
    record: impl FnMut(TableId, &[u8], &[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut h = Hashing {
        inner: r,
        hash: Sha256::new(),
        bytes: 0,
    };
    let count = snapshot_stream::decode(|out: &mut [u8]| h.read_exact(out), record)?;
    // Nothing may follow the stream's end frame.
    let mut rest = [0u8; 1];
    if h.read(&mut rest)? != 0 {
        return Err(bad("bytes after the snapshot stream's end"));
    }
    if h.bytes != header.snapshot_bytes {
        return Err(bad(format!(
            "the snapshot is {} bytes, the header says {}",
            h.bytes, header.snapshot_bytes
        )));
    }
    let sha = hex::encode(h.hash.finalize());
    if sha != header.snapshot_sha256 {
        return Err(bad("the snapshot's SHA-256 does not match the header's"));
    }
    Ok(count)
}

/// A vault built from a backup in a scratch directory (removed on drop).
pub struct Unpacked {
    pub header: Header,
    pub records: u64,
    pub vault: VaultView,
    _db: vault_db::VaultDb,
    _dir: super::offline::TempDir,
}

/// Reads the backup at `path` into a scratch vault, checking every checksum on the
/// way; `progress` is told the bytes read so far now and then.
pub fn unpack(path: &Path, mut progress: impl FnMut(u64)) -> io::Result<Unpacked> {
    let file = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    let mut r = io::BufReader::with_capacity(1 << 20, file);
    let header = Header::read(&mut r)?;
    let dir = super::offline::TempDir::new("backup")?;
    let files = VaultFiles::new(
        Arc::new(super::wal::FsDir::create(dir.0.join("v"), vault_db::EXT)?),
        false,
        super::VAULT_CACHE_BYTES_DEFAULT,
    );
    let db = files.create(1)?;
    let mut batch = Vec::new();
    let mut seen = 0u64;
    let records = read_stream(&header, &mut r, |t, k, v| {
        batch.push((t, k.to_vec(), v.to_vec()));
        seen += (k.len() + v.len()) as u64;
        if batch.len() >= 10_000 {
            vault_db::write_records(&db.db, &mut batch)?;
            progress(seen);
        }
        Ok(())
    })?;
    vault_db::write_records(&db.db, &mut batch)?;
    let txn = db.db.begin_read().map_err(super::io_err)?;
    let vault = Vault::new(super::overlay::Layered::new(
        Default::default(),
        Default::default(),
        vault_db::ReadTables::new(txn, None),
    ));
    Ok(Unpacked {
        header,
        records,
        vault,
        _db: db,
        _dir: dir,
    })
}

/// Writes every table of `vault` as a snapshot stream into `out`; returns the size and
/// SHA-256 of what was written.
pub fn encode_vault(vault: &VaultView, out: impl Write) -> io::Result<(u64, String)> {
    struct Counting<W> {
        inner: W,
        hash: Sha256,
        bytes: u64,
    }
    let mut w = Counting {
        inner: out,
        hash: Sha256::new(),
        bytes: 0,
    };
    {
        let mut enc = Encoder::new(|b: &[u8]| {
            w.hash.update(b);
            w.bytes += b.len() as u64;
            w.inner.write_all(b)
        })?;
        for t in TableId::ALL {
            let mut failed = None;
            vault.tables().scan(
                t,
                Bound::Unbounded,
                Bound::Unbounded,
                false,
                &mut |k, v| match enc.push(t, k, v) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                },
            );
            if let Some(e) = failed {
                return Err(e);
            }
        }
        enc.finish()?;
    }
    w.inner.flush()?;
    Ok((w.bytes, hex::encode(w.hash.finalize())))
}

impl Store {
    /// Restores the backup stream `r` (positioned after `header`) into this store, which
    /// must be empty: the snapshot becomes the current one and the vault, at
    /// `header.last_log_id`, with `members` as the voters; the cluster id is
    /// `cluster_id`; the log is empty, starting after the snapshot; this node (`me`)
    /// has voted for itself in the snapshot's term, so the first election is a later
    /// one. Returns the number of records.
    pub async fn restore(
        &self,
        header: &Header,
        r: impl Read + Send + 'static,
        members: BTreeMap<NodeId, Member>,
        me: NodeId,
        cluster_id: &str,
    ) -> io::Result<u64> {
        if self.has_raft_state()? || self.cluster_id()?.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the data directory already holds a node's state; restore into an empty one",
            ));
        }
        let last = header.last_log_id;
        let voters: BTreeSet<NodeId> = members.keys().copied().collect();
        let membership = openraft::Membership::new(vec![voters], members)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let stored = StoredMembership::new(Some(last), membership);
        // The stream into a snapshot file, checked on the way.
        let (snapshots, header2) = (self.snapshots.clone(), header.clone());
        let (file_id, records) = self
            .blocking(move || {
                let mut w = snapshots.create()?;
                let mut tee = Tee {
                    inner: r,
                    out: &mut w,
                };
                let records = read_stream(&header2, &mut tee, |_, _, _| Ok(()))?;
                Ok::<_, io::Error>((w.finish()?, records))
            })
            .await??;
        // The vault from the snapshot file, complete with its applied state, written
        // over the empty generation the store's open made (closed first).
        self.close_opened_vault();
        let (files, file) = (self.vault_files.clone(), self.snapshots.open_file(file_id)?);
        let sm = sm_records(&Some(last), &stored);
        self.blocking(move || {
            let (db, _) = super::sm::fill(&files, 1, &file)?;
            vault_db::mark_complete(&db.db, Some(&sm))?;
            files.sync_dir()
        })
        .await??;
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: stored,
        };
        self.record_snapshot(&meta, file_id).await?;
        let vote = Vote::new(last.leader_id.term, me);
        self.put_meta(vec![
            (KEY_PURGED, encode(&last)),
            (KEY_COMMITTED, encode(&last)),
            (KEY_VOTE, encode(&vote)),
        ])
        .await?;
        self.set_cluster_id(cluster_id).await?;
        Ok(records)
    }
}

/// Copies what is read into a snapshot file as it passes.
struct Tee<'a, R> {
    inner: R,
    out: &'a mut super::snapshot_files::SnapshotWriter,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.append(&buf[..n])?;
        Ok(n)
    }
}

/// The state of a stopped node's data directory with every entry in its log applied
/// (not only the ones it knew committed: after losing the others, an entry that
/// reached it may have been acknowledged), then `extra` (the record of the recovery),
/// as a backup file at `out`. Returns the header written.
pub fn recover_to_backup(
    db_path: &Path,
    extra: impl FnOnce(LogId) -> Entry,
    out: &Path,
    now_ms: u64,
) -> io::Result<Header> {
    let (offline, recovered) = super::offline::read_vault_all(db_path, extra)?;
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp)?;
    let mut w = io::BufWriter::new(file);
    // The header's size and hash are known only after the stream: write the stream
    // to a scratch file, then the backup.
    let scratch = out.with_extension("stream");
    let (bytes, sha) = encode_vault(
        &offline.vault,
        io::BufWriter::new(std::fs::File::create(&scratch)?),
    )?;
    let header = Header {
        cluster_id: recovered.cluster_id.unwrap_or_default(),
        last_log_id: recovered.last_log_id,
        members: recovered.members,
        taken_at_ms: now_ms,
        snapshot_bytes: bytes,
        snapshot_sha256: sha,
    };
    w.write_all(&header.preamble())?;
    io::copy(&mut std::fs::File::open(&scratch)?, &mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::remove_file(&scratch)?;
    std::fs::rename(&tmp, out)?;
    Ok(header)
}

/// `--force-new-cluster`: the state of the stopped node at `db_path` (every entry in
/// its log applied) plus an audit record of the recovery, `action` by `by` with
/// `detail`, as a backup file at `out`.
pub fn force_new_cluster_backup(
    db_path: &Path,
    action: &str,
    detail: String,
    by: String,
    out: &Path,
    now_ms: u64,
) -> io::Result<Header> {
    let record = |last: LogId| Entry {
        log_id: openraft::LogId::new(last.leader_id, last.index + 1),
        payload: openraft::EntryPayload::Normal(crate::vault::Command::RecordAdminAction {
            action: action.to_owned(),
            detail,
            at_ms: now_ms,
            by: Some(by),
        }),
    };
    recover_to_backup(db_path, record, out, now_ms)
}
