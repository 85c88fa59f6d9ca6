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
pub type SnapshotData = std::io::Cursor<Vec<u8>>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
