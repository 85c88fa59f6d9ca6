//! Who is in the cluster: node ids, data-centre roles and what the cluster knows of
//! each member. Deployment types, used by the configuration, the Raft group and the
//! failover controller alike.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's id in the Raft group (and in configuration files).
pub type NodeId = u64;

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
