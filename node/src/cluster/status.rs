//! What this node reports of the cluster, and a watch that wakes on every change.

use super::*;

/// One member's view in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub role: Role,
    pub api_addr: String,
    pub raft_addr: String,
    pub admin_addr: String,
    /// Votes (false: a learner).
    pub voter: bool,
    pub never_lead: bool,
    /// Last log index known replicated to this member (leader's view only).
    pub matched_index: Option<u64>,
    /// Entries this member is behind the leader's last log (leader's view only).
    pub lag_entries: Option<u64>,
}

/// This node's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub name: String,
    pub role: Role,
    pub cluster_id: Option<String>,
    pub state: String,
    pub leader_id: Option<NodeId>,
    pub leader_name: Option<String>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// Wakes when this node's Raft status changes. Hold one; do not create one per wait.
pub struct StatusWatch {
    rx: openraft::type_config::alias::WatchReceiverOf<
        crate::raft_types::TypeConfig,
        openraft::RaftMetrics<crate::raft_types::TypeConfig>,
    >,
}

impl StatusWatch {
    /// Waits for the next change; false once the Raft node has stopped.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl Cluster {
    /// A snapshot of this node's Raft view, for status and metrics.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let last = m.last_log_index.unwrap_or(0);
        let known = self.membership();
        let nodes: BTreeMap<NodeId, Member> = (*known.nodes).clone();
        let members = nodes
            .into_iter()
            .map(|(id, n)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id))
                    .map(|l| l.map_or(0, |l| l.index));
                let matched = if id == self.id && m.state == ServerState::Leader {
                    Some(last)
                } else {
                    matched
                };
                MemberStatus {
                    id,
                    voter: known.voters.contains(&id),
                    never_lead: n.never_lead,
                    name: n.name,
                    role: n.role,
                    api_addr: n.api_addr,
                    raft_addr: n.raft_addr,
                    admin_addr: n.admin_addr,
                    matched_index: matched,
                    lag_entries: matched.map(|x| last.saturating_sub(x)),
                }
            })
            .collect();
        let leader_name = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.name.clone()));
        ClusterStatus {
            node_id: self.id,
            name: self.me().name.clone(),
            role: self.me().role,
            cluster_id: self.cluster_id(),
            state: format!("{:?}", m.state).to_lowercase(),
            leader_id: m.current_leader,
            leader_name,
            term: m.current_term,
            last_log_index: last,
            committed_index: m.local_committed.map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
        }
    }

    /// A watcher that wakes when the Raft status changes (for the metrics updater).
    pub fn watch(&self) -> StatusWatch {
        let mut rx = self.raft.metrics();
        // A clone of openraft's receiver has seen no version yet: mark the current one seen,
        // or the first `changed()` — and every one after — would return at once.
        let _ = rx.borrow_and_update();
        StatusWatch { rx }
    }
}
