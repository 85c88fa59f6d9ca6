//! The openraft type configuration. Only `store/` and `cluster/` use these types;
//! the rest of kura sees kura's own types.

use crate::vault::{Command, Response};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's id in the Raft group.
pub type NodeId = u64;

/// The async runtime openraft runs on: tokio with a per-node deterministic RNG, so
/// that simulations replay. Production seeds it from the OS.
pub type Rt = openraft_rt::deterministic_rng::DeterministicRng<openraft::TokioRuntime>;

/// A data centre role. Leadership prefers `main`, then `dr`; `bk` keeps a copy.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Main,
    Dr,
    Bk,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Main => "main",
            Role::Dr => "dr",
            Role::Bk => "bk",
        })
    }
}

/// What the cluster knows of a member: its name, role and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub role: Role,
    /// `host:port` of the client API.
    pub api_addr: String,
    /// `host:port` of the Raft peer listener.
    pub raft_addr: String,
    /// `host:port` of the admin plane (empty in memberships from before it existed).
    #[serde(default)]
    pub admin_addr: String,
    /// Never stands for election (it still votes and keeps a full copy).
    #[serde(default)]
    pub never_lead: bool,
}

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

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type SnapshotData = std::io::Cursor<Vec<u8>>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Spawns a task through the Raft runtime, so simulated hosts stay deterministic.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    <Rt as openraft::AsyncRuntime>::spawn(fut)
}

/// Sleeps on the Raft runtime's clock (simulated time on simulated hosts).
pub fn sleep(d: std::time::Duration) -> impl std::future::Future<Output = ()> {
    <Rt as openraft::AsyncRuntime>::sleep(d)
}
