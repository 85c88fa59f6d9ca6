//! Membership changes on the leader: a new member joins as a learner (the leader
//! replicates to it, by snapshot if it must), is promoted to voter through joint
//! consensus, and a member is removed (a voter through joint consensus too).

use super::*;
use openraft::error::ChangeMembershipError;
use openraft::ChangeMembers;
use std::collections::BTreeSet;

/// Why a membership change was not made.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// This node does not lead; nothing was proposed.
    #[error("this node is not the leader")]
    NotLeader,
    /// Another change is half done; retry once it completes.
    #[error("another membership change is in progress")]
    InProgress,
    /// Raft refused the change as stated (for instance, a voter that is not a learner).
    #[error("{0}")]
    Refused(String),
    /// No quorum, or the node is shutting down: the change may or may not be made.
    #[error("replication unavailable: {0}")]
    Unavailable(String),
}

fn of_raft(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => MembershipError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => MembershipError::InProgress,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            MembershipError::Refused(c.to_string())
        }
        other => MembershipError::Unavailable(other.to_string()),
    }
}

impl Cluster {
    /// Adds `member` as a learner with id `id` and starts replicating to it; returns
    /// once the membership entry is committed, not when the learner has caught up.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<(), MembershipError> {
        self.raft
            .add_learner(id, member, false)
            .await
            .map(|_| ())
            .map_err(of_raft)
    }

    /// Makes learner `id` a voter (joint consensus, then the new configuration).
    pub async fn promote(&self, id: NodeId) -> Result<(), MembershipError> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(of_raft)
    }

    /// Removes member `id`: a voter leaves the voters (joint consensus) and the
    /// membership; a learner just leaves the membership.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), MembershipError> {
        let change = if self.membership().voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(of_raft)
    }
}

impl Cluster {
    /// A snapshot of everything this node has applied now: a new one is built, and
    /// this waits (up to `timeout`) until it is current. Returns it with the cluster's
    /// id and members, as a backup's header describes them.
    pub async fn backup_snapshot(
        &self,
        timeout: Duration,
        now_ms: u64,
    ) -> io::Result<(
        crate::store::backup::Header,
        crate::raft_types::SnapshotData,
    )> {
        let target = self.status().applied_index;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ask = crate::store::FileAsk::default();
        let given_up = self.store.files_given_up();
        let snapshot = loop {
            if self.store.files_given_up() > given_up {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no room on this node's disk for the snapshot file a backup is \
                     written from (it must leave half of health.storage_min_free_bytes \
                     free): free space here, or take the backup from another node",
                ));
            }
            let current = self.store.current_snapshot()?;
            // A compaction mark has no data: a backup needs a file.
            if let Some(s) = current.filter(|s| {
                !s.snapshot.is_mark() && s.meta.last_log_id.map_or(0, |l| l.index) >= target
            }) {
                break s;
            }
            // A build already running may record a mark or cover less than the target.
            if ask.now(&self.store) {
                self.raft
                    .trigger()
                    .snapshot()
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the snapshot was not built in time",
                ));
            }
            crate::runtime::sleep(Duration::from_millis(100)).await;
        };
        let data = snapshot.snapshot.clone();
        let sha = {
            let data = data.clone();
            self.store
                .blocking(move || crate::store::backup::digest(&data))
                .await??
        };
        let last = snapshot
            .meta
            .last_log_id
            .ok_or_else(|| io::Error::other("a snapshot of nothing"))?;
        let header = crate::store::backup::Header {
            cluster_id: self.cluster_id().unwrap_or_default(),
            last_log_id: last,
            members: snapshot
                .meta
                .last_membership
                .membership()
                .nodes()
                .map(|(i, m)| (*i, m.clone()))
                .collect(),
            taken_at_ms: now_ms,
            snapshot_bytes: data.len(),
            snapshot_sha256: sha,
        };
        Ok((header, data))
    }
}
