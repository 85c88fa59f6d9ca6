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
    /// Last log index known replicated to this member (leader's view only; none while
    /// it has acknowledged nothing to this leader).
    pub matched_index: Option<u64>,
    /// Entries this member is behind the leader's last log (as `matched_index`).
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

/// How far a member is behind the leader's log, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// It has acknowledged nothing to this leader: not running, not reachable, or not
    /// yet answered.
    Unacknowledged,
    /// This many entries, all still in the leader's log.
    Entries(u64),
    /// Past what the log holds: the leader purged the entry after the member's last
    /// (`matched`), so the member needs the vault's snapshot first, however few entries
    /// it lacks after that.
    Snapshot { matched: u64, purged: u64 },
}

impl Behind {
    /// Caught up: the log can bring it within `max` entries of the leader's end.
    pub fn within(self, max: u64) -> bool {
        matches!(self, Behind::Entries(n) if n <= max)
    }
}

impl ClusterStatus {
    /// How far member `id` is behind; known only on the leader (`None` elsewhere, and
    /// for an id that is not a member).
    pub fn behind(&self, id: NodeId) -> Option<Behind> {
        if self.leader_id != Some(self.node_id) {
            return None;
        }
        let m = self.members.iter().find(|m| m.id == id)?;
        let Some(matched) = m.matched_index else {
            return Some(Behind::Unacknowledged);
        };
        Some(match self.purged_index {
            Some(purged) if matched < purged => Behind::Snapshot { matched, purged },
            _ => Behind::Entries(self.last_log_index.saturating_sub(matched)),
        })
    }
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
                    .and_then(|l| l.as_ref().map(|l| l.index));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(last: u64, purged: Option<u64>, matched: &[(NodeId, Option<u64>)]) -> ClusterStatus {
        let members = matched
            .iter()
            .map(|&(id, matched_index)| MemberStatus {
                id,
                name: format!("n{id}"),
                role: Role::Dr,
                api_addr: String::new(),
                raft_addr: String::new(),
                admin_addr: String::new(),
                voter: true,
                never_lead: false,
                matched_index,
                lag_entries: matched_index.map(|m| last - m),
            })
            .collect();
        ClusterStatus {
            node_id: 1,
            name: "n1".into(),
            role: Role::Main,
            cluster_id: None,
            state: "leader".into(),
            leader_id: Some(1),
            leader_name: Some("n1".into()),
            term: 2,
            last_log_index: last,
            committed_index: last,
            applied_index: last,
            snapshot_index: purged,
            purged_index: purged,
            members,
        }
    }

    #[test]
    fn a_member_behind_the_purged_log_needs_the_snapshot_however_short_the_log() {
        // A replaced member, empty, 300 entries behind a leader whose log starts after 250:
        // within the entry bound, but only a snapshot can bring it back.
        let s = status(
            300,
            Some(250),
            &[(1, Some(300)), (4, Some(0)), (3, Some(250))],
        );
        assert_eq!(
            s.behind(4),
            Some(Behind::Snapshot {
                matched: 0,
                purged: 250
            })
        );
        assert!(!s.behind(4).unwrap().within(1_000));
        // The entry after 250 is still in the log: 50 entries, caught up.
        assert_eq!(s.behind(3), Some(Behind::Entries(50)));
        assert!(s.behind(3).unwrap().within(1_000));
        assert!(!s.behind(3).unwrap().within(49));
        assert_eq!(s.behind(1), Some(Behind::Entries(0)));
        // Nothing purged: the whole log can be sent.
        let s = status(300, None, &[(4, Some(0))]);
        assert_eq!(s.behind(4), Some(Behind::Entries(300)));
        // A member that has acknowledged nothing (not running, unreachable) is not caught
        // up, however short the log.
        let s = status(3, None, &[(1, Some(3)), (4, None)]);
        assert_eq!(s.behind(4), Some(Behind::Unacknowledged));
        assert!(!s.behind(4).unwrap().within(1_000));
        // A follower's view knows no member's progress; nor is a non-member known.
        let mut s = status(300, Some(250), &[(4, Some(300))]);
        assert_eq!(s.behind(9), None);
        s.leader_id = Some(2);
        assert_eq!(s.behind(4), None);
    }
}
