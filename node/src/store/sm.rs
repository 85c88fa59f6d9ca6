//! The state machine: the vault in memory, snapshots durable in their own files.
//!
//! Applying does no IO: the log is the durability point. After a crash the vault is
//! rebuilt from the last snapshot plus the committed log entries after it.
//!
//! A snapshot is encoded and written to its file off the async workers, then recorded
//! as current through the writer; a snapshot older than the one recorded (a build that
//! finished after an install) is dropped rather than recorded.

use super::writer::{Done, Op};
use super::{
    decode, encode, read_meta_keys, Store, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_FILE, KEY_SNAPSHOT_META,
};
use crate::raft_types::{
    LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::vault::{Response, VaultState};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use std::io;
use std::sync::{Arc, RwLock};

/// The vault as the API reads it: shared between the state machine and request handlers.
#[derive(Debug, Default)]
pub struct SharedVault {
    state: RwLock<Applied>,
}

#[derive(Debug, Default)]
struct Applied {
    vault: VaultState,
    last_applied: Option<LogId>,
}

impl SharedVault {
    /// Runs `f` on the current vault state.
    pub fn read<T>(&self, f: impl FnOnce(&VaultState) -> T) -> T {
        f(&self.state.read().expect("vault lock").vault)
    }

    /// Index of the last applied log entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.state
            .read()
            .expect("vault lock")
            .last_applied
            .map_or(0, |l| l.index)
    }
}

/// openraft's state machine for kura.
pub struct StateMachine {
    shared: Arc<SharedVault>,
    membership: StoredMembership,
    store: Store,
    snapshot_seq: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SnapshotBody {
    pub vault: VaultState,
}

impl StateMachine {
    /// Loads the last snapshot, if any, from `store`.
    pub fn open(store: Store) -> io::Result<StateMachine> {
        let shared = Arc::new(SharedVault::default());
        let mut sm = StateMachine {
            shared,
            membership: StoredMembership::default(),
            store,
            snapshot_seq: 0,
        };
        if let Some(snap) = sm.store.read_snapshot()? {
            sm.restore(&snap.meta, snap.snapshot.get_ref())?;
        }
        Ok(sm)
    }

    /// The vault handle request handlers read.
    pub fn shared(&self) -> Arc<SharedVault> {
        self.shared.clone()
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let body: SnapshotBody = decode(data)?;
        body.vault
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut st = self.shared.state.write().expect("vault lock");
        st.vault = body.vault;
        st.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
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
        let [meta, file, old_data] = read_meta_keys(
            &self.db,
            [KEY_SNAPSHOT_META, KEY_SNAPSHOT_FILE, KEY_SNAPSHOT_DATA],
        )?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let meta: SnapshotMeta = decode(&meta)?;
        let data = match file {
            Some(id) => self.snapshots.read(decode(&id)?)?,
            // Recorded before snapshots had files.
            None => old_data.unwrap_or_default(),
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData::new(data),
        }))
    }

    /// Makes the snapshot `meta` describes, with the data `make_data` makes, durable and
    /// current — unless a later snapshot is current already. Encoding and writing the
    /// file happen off the async workers. Returns the data.
    pub(super) async fn save_snapshot(
        &self,
        meta: &SnapshotMeta,
        make_data: impl FnOnce() -> Vec<u8> + Send + 'static,
    ) -> io::Result<Vec<u8>> {
        let files = self.snapshots.clone();
        let (data, file) = self
            .blocking(move || {
                let started = tokio::time::Instant::now();
                let data = make_data();
                let encoded = started.elapsed();
                let file = files.write(&data)?;
                tracing::info!(
                    file,
                    bytes = data.len(),
                    encode_ms = encoded.as_millis() as u64,
                    write_ms = (started.elapsed() - encoded).as_millis() as u64,
                    "snapshot file written"
                );
                Ok::<_, io::Error>((data, file))
            })
            .await??;
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
            return Ok(data);
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
        Ok(data)
    }
}

/// Builds a snapshot of the vault as it was when the builder was made.
pub struct SnapshotBuilder {
    vault: VaultState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    store: Store,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = tokio::time::Instant::now();
        let vault = std::mem::take(&mut self.vault);
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        };
        let data = self
            .store
            .save_snapshot(&meta, move || encode(&SnapshotBody { vault }))
            .await?;
        tracing::info!(
            seq = self.seq,
            last_log_id = ?self.last_applied,
            bytes = data.len(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let last = self.shared.state.read().expect("vault lock").last_applied;
        Ok((last, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut st = self.shared.state.write().expect("vault lock");
                st.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => Response::None,
                    EntryPayload::Normal(cmd) => {
                        let r = st.vault.apply(cmd);
                        if let Some(check) = &self.store.apply_check {
                            check(entry.log_id.index, &st.vault);
                        }
                        r
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Response::None
                    }
                }
            };
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let started = tokio::time::Instant::now();
        let st = self.shared.state.read().expect("vault lock");
        let vault = st.vault.clone();
        tracing::info!(
            clone_ms = started.elapsed().as_millis() as u64,
            "vault copied for a snapshot"
        );
        SnapshotBuilder {
            vault,
            last_applied: st.last_applied,
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
        let data = snapshot.into_inner();
        self.restore(meta, &data)?;
        let data = self.store.save_snapshot(meta, move || data).await?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let store = self.store.clone();
        self.store.blocking(move || store.read_snapshot()).await?
    }
}
