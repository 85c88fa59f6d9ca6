//! Who is in the cluster: node ids, data-centre roles and what the cluster knows of
//! each member. Deployment types, used by the configuration, the Raft group and the
//! failover controller alike.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's id in the Raft group (and in configuration files).
pub type NodeId = u64;

/// How many of `voters` make a majority: a write, an election, a judgement of the
/// clocks or of the disks' room needs that many.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

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

impl Role {
    /// Leadership's preference among the roles, lowest first: main, then dr, then bk.
    pub fn preference(self) -> u8 {
        match self {
            Role::Main => 0,
            Role::Dr => 1,
            Role::Bk => 2,
        }
    }
}

/// Whether a member of `role` leaves the first elections after it starts to the others:
/// one of them (`(role, never_lead)`) is more preferred and may lead. Raft starts with
/// elections off on such a node, and the failover controller keeps them off for its
/// first `3 × raft.election_timeout_max_ms` (`failover::decide`).
pub fn yields_at_start(role: Role, others: impl IntoIterator<Item = (Role, bool)>) -> bool {
    others
        .into_iter()
        .any(|(r, never_lead)| r.preference() < role.preference() && !never_lead)
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
