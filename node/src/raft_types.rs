//! The openraft type configuration and its aliases, and nothing else. Only `store/`
//! and `cluster/` (and the simulations' tests) use these types; the rest of kura sees
//! kura's own types.

use crate::member::{Member, NodeId};
use crate::runtime::Rt;
use crate::vault::{Command, Response};

openraft::declare_raft_types!(
    /// kura's Raft types: vault commands in, vault responses out.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        // Standard Raft: at most one leader per term. (openraft's default lets two nodes
        // lead the same term, ordered by node id; kura's terms, leader-change records
        // and the chaos oracle's one-leader-per-term property mean a term has one leader.)
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
        AsyncRuntime = Rt,
);

pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot's data: a stream of the vault's tables, read a piece at a time from
/// wherever it is kept (a file in the snapshot directory, on a node) — possibly while
/// it is still being built, so that a follower receives a fresh snapshot as the leader
/// writes it rather than after.
#[derive(Clone)]
pub struct SnapshotData {
    id: u64,
    len: u64,
    source: std::sync::Arc<dyn ReadAt>,
    /// How far the data is written, while it is being built.
    building: Option<tokio::sync::watch::Receiver<Built>>,
    /// No data: the vault's own durable file stands for the snapshot (see
    /// [`SnapshotData::mark`]).
    mark: bool,
}

/// The source of a mark, which has no bytes.
struct NoBytes;

impl ReadAt for NoBytes {
    fn read_at(&self, _offset: u64, _out: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "a compaction mark has no data to read; a snapshot file must be built",
        ))
    }
}

/// Where a snapshot's bytes are read from.
pub trait ReadAt: Send + Sync {
    /// Fills `out` from `offset` (within the data's length).
    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()>;
}

/// How much of a snapshot being built is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// This many bytes so far; more are coming.
    Partly(u64),
    /// All of it: this many bytes, durable.
    Whole(u64),
    /// The build stopped: the data will never be whole.
    Failed,
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.built() {
            _ if self.mark => write!(f, "SnapshotData(mark)"),
            Built::Whole(len) => write!(f, "SnapshotData({}, {len} bytes)", self.id),
            built => write!(f, "SnapshotData({}, building: {built:?})", self.id),
        }
    }
}

impl SnapshotData {
    /// `len` bytes read from `source`, known by `id` where they are kept.
    pub fn new(id: u64, len: u64, source: std::sync::Arc<dyn ReadAt>) -> SnapshotData {
        SnapshotData {
            id,
            len,
            source,
            building: None,
            mark: false,
        }
    }

    /// The data of a compaction mark: none. The log is compacted up to the mark because
    /// the vault's file is durable beyond it; a follower that needs a snapshot is sent
    /// a file built then, never a mark.
    pub fn mark() -> SnapshotData {
        SnapshotData {
            id: 0,
            len: 0,
            source: std::sync::Arc::new(NoBytes),
            building: None,
            mark: true,
        }
    }

    /// True for a compaction mark (no data; see [`SnapshotData::mark`]).
    pub fn is_mark(&self) -> bool {
        self.mark
    }

    /// Data still being written to `source`, as far as `progress` says.
    pub fn building(
        id: u64,
        source: std::sync::Arc<dyn ReadAt>,
        progress: tokio::sync::watch::Receiver<Built>,
    ) -> SnapshotData {
        SnapshotData {
            id,
            len: 0,
            source,
            building: Some(progress),
            mark: false,
        }
    }

    /// Where the data is kept (the snapshot file's id).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How much of the data is written now.
    pub fn built(&self) -> Built {
        match &self.building {
            None => Built::Whole(self.len),
            Some(rx) => *rx.borrow(),
        }
    }

    /// Bytes of data (so far, while it is being built).
    pub fn len(&self) -> u64 {
        match self.built() {
            Built::Partly(n) | Built::Whole(n) => n,
            Built::Failed => 0,
        }
    }

    /// True when there is no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `want` bytes are written or the data is whole: the bytes
    /// there are then, and whether that is all of them. An error if the build stopped.
    pub async fn written(&self, want: u64) -> std::io::Result<(u64, bool)> {
        let stopped = || std::io::Error::other("the snapshot's build stopped");
        let Some(rx) = &self.building else {
            return Ok((self.len, true));
        };
        let mut rx = rx.clone();
        let built = *rx
            .wait_for(|b| match b {
                Built::Partly(n) => *n >= want,
                Built::Whole(_) | Built::Failed => true,
            })
            .await
            .map_err(|_| stopped())?;
        match built {
            Built::Partly(n) => Ok((n, false)),
            Built::Whole(n) => Ok((n, true)),
            Built::Failed => Err(stopped()),
        }
    }

    /// Reads `out.len()` bytes at `offset` (of those written so far).
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        if offset + out.len() as u64 > self.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the snapshot's data",
            ));
        }
        self.source.read_at(offset, out)
    }

    /// A reader from the start that fills each buffer it is given.
    pub fn reader(&self) -> impl FnMut(&mut [u8]) -> std::io::Result<()> + '_ {
        let mut offset = 0;
        move |out: &mut [u8]| {
            self.read_at(offset, out)?;
            offset += out.len() as u64;
            Ok(())
        }
    }
}
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Log entries for tests.
#[cfg(test)]
pub(crate) mod test_entries {
    use super::{Entry, LogId};
    use crate::vault::Command;
    use openraft::EntryPayload;

    pub(crate) fn log_id(term: u64, index: u64) -> LogId {
        openraft::LogId::new(
            openraft::vote::leader_id_std::CommittedLeaderId::new(term),
            index,
        )
    }

    /// A card on file tokenized at `log_id`, its sealed card `ciphertext_len` bytes of 3.
    pub(crate) fn tokenize(log_id: LogId, token: &str, ciphertext_len: usize) -> Entry {
        let card = crate::vault::SealedCard {
            brand: crate::vault::card::Brand::Visa,
            last4: "4242".into(),
            exp_month: 12,
            exp_year: 2035,
            key_version: 1,
            nonce: vec![7; 12],
            ciphertext: vec![3; ciphertext_len],
        };
        Entry {
            log_id,
            payload: EntryPayload::Normal(Command::Tokenize {
                merchant_id: "mer_1".into(),
                token: token.into(),
                kind: crate::vault::TokenKind::CardOnFile,
                member_id: Some("member".into()),
                card,
                at_ms: log_id.index,
                expires_at_ms: None,
                fingerprint: Some("ab".repeat(32)),
                key_role: crate::vault::KeyRole::Secret,
                cvc_supplied: false,
            }),
        }
    }
}
