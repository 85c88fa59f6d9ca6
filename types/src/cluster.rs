//! The cluster: status, health, formation, leadership, maintenance and fault switches.

use serde::{Deserialize, Serialize};

/// A data centre role. Leadership prefers `main`, then `dr`; `bk` keeps a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Main,
    Dr,
    Bk,
}

/// One health check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    NotConfigured,
}

/// One health check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheck {
    /// `storage`, `kek_provider`, `acquirer_routes` or `raft`.
    pub name: String,
    pub status: CheckStatus,
    pub latency_ms: Option<f64>,
    pub message: String,
    pub consecutive_failures: u32,
}

/// A node's health.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeHealth {
    pub healthy: bool,
    /// Can serve client requests now: healthy, knows a leader, caught up, not drained.
    pub ready: bool,
    pub drained: bool,
    /// `unhealthy_storage`, `unhealthy_keys` or `unhealthy_clock`.
    pub unhealthy_cause: Option<String>,
    #[serde(default)]
    pub routes_cut: bool,
    pub checks: Vec<HealthCheck>,
    #[serde(default)]
    pub last_log_index: Option<u64>,
    /// The key-encryption keys the node holds, its current one first.
    #[serde(default)]
    pub kek_ids: Vec<String>,
    /// The highest command level the node's build applies: a rolling upgrade is done
    /// when every member shows the same.
    #[serde(default)]
    pub command_level: u32,
}

/// `GET /health/live`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Live {
    /// `live`.
    pub status: String,
}

/// `GET /health/ready` (200 when ready, 503 when not, with the same body).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ready {
    /// `ready` or `not_ready`.
    pub status: String,
    pub health: NodeHealth,
}

/// An acquirer route as a node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteStatus {
    pub name: String,
    pub addr: String,
    pub up: bool,
    pub last_latency_ms: Option<f64>,
    pub requests: u64,
    pub errors: u64,
}

/// A member as the answering node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberStatus {
    pub id: u64,
    pub name: String,
    pub role: Role,
    pub api_addr: String,
    pub raft_addr: String,
    /// Votes (`false`: a learner catching up before it is promoted).
    #[serde(default = "yes")]
    pub voter: bool,
    /// Never stands for election.
    #[serde(default)]
    pub never_lead: bool,
    /// The leader's view only.
    pub matched_index: Option<u64>,
    /// The leader's view only.
    pub lag_entries: Option<u64>,
    /// Its own checks (for the answering node), or its last report (`null`: it did not
    /// answer).
    pub health: Option<NodeHealth>,
}

/// `GET /v1/cluster/status` (and, with the cluster id, `GET /admin/v1/cluster/status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    pub node_id: u64,
    pub name: String,
    pub role: Role,
    /// On the admin plane only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    pub leader_id: Option<u64>,
    pub leader_name: Option<String>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub health: NodeHealth,
    pub acquirer_routes: Vec<RouteStatus>,
    /// The highest command level every member is known (to this node) to apply: the
    /// leader proposes no command of a higher level.
    #[serde(default)]
    pub cluster_command_level: u32,
}

/// `POST /admin/v1/init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InitOutcome {
    pub cluster_id: String,
    pub already_initialized: bool,
}

/// `POST /admin/v1/members`: a new member, added as a learner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "bk2", "role": "bk", "api_addr": "10.3.0.12:7001", "raft_addr": "10.3.0.12:7101", "admin_addr": "10.3.0.12:7301", "never_lead": true})))]
#[serde(deny_unknown_fields)]
pub struct AddMemberIn {
    /// Unique among the members: lowercase letters, digits and `-`, 1–32 long.
    pub name: String,
    /// The new node's id, as its config and certificate name it (default: one more
    /// than the highest id in the membership).
    #[serde(default)]
    pub id: Option<u64>,
    pub role: Role,
    pub api_addr: String,
    pub raft_addr: String,
    #[serde(default)]
    pub admin_addr: String,
    #[serde(default)]
    pub never_lead: bool,
}

/// A member as the membership holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberOut {
    pub id: u64,
    pub name: String,
    pub role: Role,
    pub api_addr: String,
    pub raft_addr: String,
    pub admin_addr: String,
    pub never_lead: bool,
    /// Votes (`false`: a learner).
    pub voter: bool,
}

/// `POST /admin/v1/leader/transfer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"to": "dr"})))]
#[serde(deny_unknown_fields)]
pub struct TransferIn {
    /// A member's name.
    pub to: String,
}

/// Who leads after a transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Leader {
    pub leader: String,
}

/// A node drained or undrained.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Drained {
    pub node: String,
    pub drained: bool,
}

/// A node's fault switches (tests only; omitted ones are cleared when set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"storage_delay_ms": 0})))]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    pub storage_stalled: bool,
    pub storage_delay_ms: u64,
    pub kek_failing: bool,
    pub routes_blocked: bool,
    /// The node's wall clock reads this many ms ahead (negative: behind).
    pub clock_offset_ms: i64,
    /// The node's next Raft log append panics inside its Raft core, as one of
    /// openraft's own assertions does on a defect: the node must stop (status 74).
    pub raft_core_panics: bool,
    /// The command level the node reports to the others, as a build that applies
    /// commands only up to it would (0: its own).
    pub command_level: u32,
    /// A comparison's hash of the node's vault waits, holding its read open, until this
    /// is cleared or the node gives the hash up.
    pub hash_paused: bool,
}

fn yes() -> bool {
    true
}
