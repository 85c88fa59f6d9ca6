//! The cluster's own operations: form it once, move leadership, drain and undrain a
//! node, set this node's fault switches, and the views operators and load balancers
//! read (status, readiness, metrics). Also what the HTTP layer needs to send a request
//! to the leader: who leads, and whether this node may serve a leader-only request now.

use super::auth::Operator;
use super::error::{service_error, Replication};
use super::{unexpected, ClusterStatus, InitOutcome, Service};
use crate::acquirer::router::RouteStatus;
use crate::cluster::WriteError;
use crate::failover::NodeHealth;
use crate::faults::FaultState;
use crate::member::{Member, NodeId};
use crate::vault::token::base62_u128;
use crate::vault::{Command, LeaderChangeCause, Response};
use std::collections::BTreeMap;
use std::time::Duration;

/// Why the cluster was not formed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error(transparent)]
    Refused(#[from] crate::cluster::FormError),
}

service_error!(InitError {
    InitError::Refused(_) => ("init_refused", Conflict),
} delegate {});

/// Why leadership did not move to the member named.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransferLeaderError {
    #[error("no member with this name")]
    MemberNotFound,
    #[error(transparent)]
    NotCaughtUp(#[from] super::members::NotCaughtUp),
    #[error(transparent)]
    Failed(#[from] crate::cluster::TransferError),
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(TransferLeaderError {
    TransferLeaderError::MemberNotFound => ("member_not_found", NotFound),
    TransferLeaderError::NotCaughtUp(_) => ("member_not_caught_up", Conflict),
    TransferLeaderError::Failed(_) => ("transfer_failed", Unavailable),
} delegate { Replication });

/// Why a node was not drained or undrained.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    #[error("no member with this name")]
    MemberNotFound,
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(DrainError {
    DrainError::MemberNotFound => ("member_not_found", NotFound),
    DrainError::Internal(_) => ("internal", Internal),
} delegate { Replication });

/// Fault injection is off on this node.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("fault injection is off on this node; start it with --enable-fault-injection and [faults] enabled = true")]
pub struct FaultInjectionDisabled;

service_error!(FaultInjectionDisabled {
    FaultInjectionDisabled => ("fault_injection_disabled", Forbidden),
} delegate {});

/// This node's view of the cluster, for `/v1/cluster/status`.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub status: ClusterStatus,
    pub health: NodeHealth,
    pub routes: Vec<RouteStatus>,
    /// The last report of each other node (`None`: it did not answer).
    pub peers: BTreeMap<NodeId, Option<NodeHealth>>,
    /// The command level every member is known to apply.
    pub cluster_command_level: u32,
}

/// Whether this node may serve a leader-only request now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeHere {
    #[error("this node's Raft core is stuck on its storage and may no longer lead; nothing was done; retry")]
    CoreFrozen,
    #[error(
        "this node is saving a vote for a new term and may no longer lead; nothing was done; retry"
    )]
    VoteChanging,
    #[error("leadership moved before the request ran; nothing was done; retry")]
    NotLeader,
    #[error("the cluster has no leader right now; nothing was done; retry shortly")]
    NoLeader,
}

service_error!(ServeHere {
    ServeHere::CoreFrozen => ("not_leader", Unavailable),
    ServeHere::VoteChanging => ("not_leader", Unavailable),
    ServeHere::NotLeader => ("not_leader", Unavailable),
    ServeHere::NoLeader => ("no_leader", Unavailable),
} delegate {});

/// Pending payments a scrape reads at most to find the oldest one's age.
const PENDING_AGE_SCAN: usize = 10_000;

impl Service {
    /// Forms the cluster from the configured members, once.
    pub async fn init(&self) -> Result<InitOutcome, InitError> {
        let new_id = format!(
            "kc_{}",
            base62_u128(u128::from_be_bytes(self.entropy.bytes()))
        );
        self.cluster.init(new_id).await.map_err(InitError::Refused)
    }

    /// Moves leadership to the member named `to` and answers once it leads.
    pub async fn transfer_leader(
        &self,
        op: &Operator,
        to: &str,
    ) -> Result<(), TransferLeaderError> {
        let id = self
            .cluster
            .member_id(to)
            .ok_or(TransferLeaderError::MemberNotFound)?;
        if id == self.cluster.id() {
            return Ok(());
        }
        // A target that is down, or too far behind to take over, is refused here: handed
        // leadership, it would wait for its log in vain and leave this leader refusing
        // writes until another node stands (decision 0027).
        let ready = super::members::poll_until_ok(super::members::CATCH_UP_WAIT, || {
            self.ready_to_lead(id, to)
        })
        .await;
        match ready {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.into()),
            // Not the leader (any more): the client retries `not_leader` on the new one.
            None => {
                return Err(Replication::NotLeader(
                    "this node does not lead; retry, and the request reaches the leader",
                )
                .into())
            }
        }
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        match self
            .cluster
            .transfer_leader(id, LeaderChangeCause::Operator, timeout)
            .await
        {
            Ok(()) => {}
            // An election the handover set off was won by a third node (a loaded target
            // answered late), or leadership had moved already: the new leader is asked
            // again (the client retries `not_leader`, and it is forwarded there).
            Err(
                crate::cluster::TransferError::OtherLeader { .. }
                | crate::cluster::TransferError::NotLeader,
            ) => {
                return Err(Replication::NotLeader(
                    "leadership went to another node than the one named; retry, and the new leader hands it on",
                )
                .into())
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(to, cause = "operator", "leadership transferred");
        // The transfer happened; failing to record it is logged, not reported. This
        // node no longer leads: `record` hands the record to the new leader.
        if let Err(e) = self
            .record("leader.transfer", format!("to {to}"), Some(op.actor()))
            .await
        {
            tracing::warn!(
                code = super::ServiceError::code(&e),
                "leader transfer not recorded in the audit trail"
            );
        }
        Ok(())
    }

    /// Drains (or undrains) the member named `name`: it gives up leadership, reports
    /// not ready and stops standing for election.
    pub async fn set_drained(
        &self,
        op: &Operator,
        name: &str,
        drained: bool,
    ) -> Result<(), DrainError> {
        if self.cluster.member_id(name).is_none() {
            return Err(DrainError::MemberNotFound);
        }
        self.write_drained(op, name, drained).await
    }

    /// Records `name`'s drain flag, member or not: a removed member's flag is cleared
    /// after it has left (see `members::clear_drained`).
    pub(super) async fn write_drained(
        &self,
        op: &Operator,
        name: &str,
        drained: bool,
    ) -> Result<(), DrainError> {
        let cmd = Command::SetDrained {
            node: name.to_owned(),
            drained,
            at_ms: self.now_ms().await,
            by: Some(op.actor()),
        };
        match self.write(cmd).await? {
            Response::Recorded => Ok(()),
            other => Err(DrainError::Internal(unexpected(&other))),
        }
    }

    /// This node's fault switches.
    pub fn faults(&self) -> Result<FaultState, FaultInjectionDisabled> {
        Ok(self.faults.as_ref().ok_or(FaultInjectionDisabled)?.get())
    }

    /// Sets this node's fault switches (node-local); recorded in the audit trail in the
    /// background, since a switch may have just stalled this node's own storage.
    pub fn set_faults(
        self: &std::sync::Arc<Self>,
        op: &Operator,
        state: &FaultState,
    ) -> Result<FaultState, FaultInjectionDisabled> {
        let switches = self.faults.as_ref().ok_or(FaultInjectionDisabled)?;
        switches.set(state);
        tracing::warn!(?state, operator = %op.actor(), "fault switches set");
        let now = switches.get();
        let detail = format!(
            "on {}: {}",
            self.cluster.me().name,
            serde_json::to_string(&now).unwrap_or_default()
        );
        let (svc, by) = (self.clone(), Some(op.actor()));
        crate::runtime::spawn(async move {
            if let Err(e) = svc.record("faults.set", detail, by).await {
                tracing::warn!(
                    code = super::ServiceError::code(&e),
                    "fault switch change not written to the audit trail"
                );
            }
        });
        Ok(now)
    }

    /// This node's view of the cluster, with every node's health.
    pub fn status_view(&self) -> StatusView {
        StatusView {
            status: self.cluster.status(),
            health: self.own_health(),
            routes: self.router.statuses(),
            peers: self.failover.health.peer_reports(),
            cluster_command_level: self.failover.health.cluster_level(),
        }
    }

    /// Brings the gauges read at scrape time up to date.
    pub fn refresh_scrape_gauges(&self) {
        let m = &self.metrics;
        if let Ok(n) = self.read(|v| v.token_count()) {
            m.vault_tokens.set(n as i64);
        }
        let now_ms = (self.clock)();
        if let Ok((pending, oldest)) = self.read(|v| v.pending_summary(PENDING_AGE_SCAN)) {
            m.payments_pending.set(pending as i64);
            let age_ms = oldest.map_or(0, |t| now_ms.saturating_sub(t));
            m.payments_pending_oldest_age.set(age_ms as f64 / 1000.0);
        }
        if let Ok((keys, current)) =
            self.read(|v| (v.data_keys(), v.current_data_key().map(|(ver, _)| ver)))
        {
            let stale: u64 = keys
                .iter()
                .filter(|k| Some(k.version) != current)
                .map(|k| k.cards)
                .sum();
            m.keys_cards_pending_rewrap.set(stale as i64);
        }
        m.cvc_capacity.set(self.cvc.capacity() as i64);
        let own = self.own_health();
        m.node_ready.set(own.ready as i64);
        m.node_healthy.set(own.healthy as i64);
        for (id, report) in self.failover.health.peer_reports() {
            if let Some(peer) = self.cluster.members().get(&id) {
                m.set_peer_up(&peer.name, report.is_some());
            }
        }
        m.refresh_process();
    }

    /// This node's id and what the cluster knows of it.
    pub fn me(&self) -> (NodeId, &Member) {
        (self.cluster.id(), self.cluster.me())
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.cluster.is_leader()
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        self.cluster.leader()
    }

    /// Waits (bounded by the election) for a leader other than `not`.
    pub async fn wait_for_leader(&self, not: Option<NodeId>) -> Option<(NodeId, Member)> {
        self.cluster.wait_for_leader(not).await
    }

    /// Whether this node, the leader, may serve a leader-only request now: its Raft core
    /// answers, its term is not changing, and it has applied everything committed
    /// before its term.
    pub async fn ready_to_serve(&self) -> Result<(), ServeHere> {
        if self.cluster.core_frozen() {
            return Err(ServeHere::CoreFrozen);
        }
        // Not sent into a core whose term is changing: were its disk stalled, the
        // request would wait there until the core counted as frozen, and end unknown.
        if self.cluster.saving_vote() {
            return Err(ServeHere::VoteChanging);
        }
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        match self.cluster.leader_caught_up(timeout).await {
            Ok(()) => Ok(()),
            Err(WriteError::NotLeader { .. }) => Err(ServeHere::NotLeader),
            Err(_) => Err(ServeHere::NoLeader),
        }
    }
}
