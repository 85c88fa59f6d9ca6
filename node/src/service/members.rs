//! Membership changes, on the leader: a member is added as a learner, promoted to voter
//! once caught up, and removed. A change that would leave the voters without a
//! quorum of reachable nodes, or without any node that may lead, is refused unless
//! forced; removing the leader hands leadership away first. Every change is in the
//! audit trail with the operator who made it.

use super::auth::Operator;
use super::error::{service_error, Replication};
use super::Service;
use crate::cluster::{Behind, Cluster, MembershipError};
use crate::member::{Member, NodeId, Role};
use crate::vault::LeaderChangeCause;
use std::sync::Arc;
use std::time::Duration;

/// A member to add.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub name: String,
    pub id: Option<NodeId>,
    pub role: Role,
    pub api_addr: String,
    pub raft_addr: String,
    pub admin_addr: String,
    pub never_lead: bool,
}

/// Why a member is not close enough to the leader's log to be promoted to voter or
/// handed leadership: a transfer to it would wait for its log in vain (openraft's
/// target waits an election timeout at most), and a voter that is not there yet
/// counts toward the quorum without helping it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NotCaughtUp {
    #[error("{name} is {lag} entries behind the leader (at most {max}); wait for it to catch up")]
    Entries { name: String, lag: u64, max: u64 },
    #[error("{name} still needs the vault's snapshot: its log ends at entry {matched} and the leader's log now starts after {purged}; wait for the snapshot to arrive")]
    AwaitsSnapshot {
        name: String,
        matched: u64,
        purged: u64,
    },
    #[error("{name} has acknowledged nothing from the leader yet: check that it runs and that the leader reaches its raft address")]
    Unacknowledged { name: String },
    #[error("{name} does not answer this node's health checks: check that it runs and that this node reaches its raft address")]
    Unreachable { name: String },
}

/// How long a leader waits for the member it would hand leadership to to be caught
/// up before it refuses: long enough for a leader elected a moment ago to hear from
/// its followers and for a restarted member to answer a health check, and well
/// inside an admin client's attempt timeout.
pub(super) const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// Why a membership change was not made.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MemberChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exists(String),
    #[error("no member with this name")]
    NotFound,
    #[error(transparent)]
    NotCaughtUp(#[from] NotCaughtUp),
    #[error("without {name} the voters would be {voters}, of which {reachable} answer now: fewer than the {quorum} a quorum needs (force to do it anyway)")]
    WouldLoseQuorum {
        name: String,
        voters: usize,
        reachable: usize,
        quorum: usize,
    },
    #[error(
        "without {0} no voter could lead (every other one is never_lead) (force to do it anyway)"
    )]
    NoLeaderCandidate(String),
    #[error("another membership change is in progress; retry once it completes")]
    InProgress,
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(MemberChangeError {
    MemberChangeError::Invalid(_) => ("member_invalid", Invalid),
    MemberChangeError::Exists(_) => ("member_exists", Conflict),
    MemberChangeError::NotFound => ("member_not_found", NotFound),
    MemberChangeError::NotCaughtUp(_) => ("member_not_caught_up", Conflict),
    MemberChangeError::WouldLoseQuorum { .. } => ("membership_would_lose_quorum", Conflict),
    MemberChangeError::NoLeaderCandidate(_) => ("membership_without_leader_candidate", Conflict),
    MemberChangeError::InProgress => ("membership_change_in_progress", Conflict),
    MemberChangeError::Refused(_) => ("membership_change_refused", Conflict),
} delegate { Replication });

impl From<MembershipError> for MemberChangeError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::NotLeader => {
                Replication::NotLeader("leadership moved; nothing was done; retry").into()
            }
            MembershipError::InProgress => MemberChangeError::InProgress,
            MembershipError::Refused(r) => MemberChangeError::Refused(r),
            MembershipError::Unavailable(r) => Replication::OutcomeUnknown(format!(
                "the membership change may or may not have been made: {r}; check kura member list"
            ))
            .into(),
        }
    }
}

/// A member name: lowercase letters, digits and `-`, 1 to 32 long.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `host:port` with a port.
fn valid_addr(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

impl Service {
    /// Adds a member as a learner (the leader starts replicating to it); returns its id.
    pub async fn add_member(
        &self,
        op: &Operator,
        m: NewMember,
    ) -> Result<(NodeId, Member), MemberChangeError> {
        if !valid_name(&m.name) {
            return Err(MemberChangeError::Invalid(format!(
                "name must be 1-32 lowercase letters, digits or '-', got {:?}",
                m.name
            )));
        }
        for (key, addr, required) in [
            ("api_addr", &m.api_addr, true),
            ("raft_addr", &m.raft_addr, true),
            ("admin_addr", &m.admin_addr, false),
        ] {
            if (required || !addr.is_empty()) && !valid_addr(addr) {
                return Err(MemberChangeError::Invalid(format!(
                    "{key} must be host:port, got {addr:?}"
                )));
            }
        }
        let membership = self.cluster.membership();
        let id =
            m.id.unwrap_or_else(|| membership.nodes.keys().max().copied().unwrap_or(0) + 1);
        if id == 0 {
            return Err(MemberChangeError::Invalid("id must be at least 1".into()));
        }
        for (other_id, other) in membership.nodes.iter() {
            let clash = if *other_id == id {
                Some(format!("id {id}"))
            } else if other.name == m.name {
                Some(format!("the name {}", m.name))
            } else if [&other.api_addr, &other.raft_addr]
                .iter()
                .any(|a| **a == m.api_addr || **a == m.raft_addr)
            {
                Some("an address".to_owned())
            } else {
                None
            };
            if let Some(what) = clash {
                return Err(MemberChangeError::Exists(format!(
                    "{what} is already used by member {}",
                    other.name
                )));
            }
        }
        let member = Member {
            name: m.name.clone(),
            role: m.role,
            api_addr: m.api_addr,
            raft_addr: m.raft_addr,
            admin_addr: m.admin_addr,
            never_lead: m.never_lead,
        };
        // A member of the same name removed earlier may have left its drain behind.
        self.clear_drained(op, &m.name).await;
        let m2 = member.clone();
        self.bounded(move |c| async move { c.add_learner(id, m2).await })
            .await?;
        tracing::info!(name = %m.name, id, "member added as a learner");
        self.record_member_action(
            op,
            "member.add",
            format!("{} (id {id}) as a learner", m.name),
        )
        .await;
        Ok((id, member))
    }

    /// Makes the learner named `name` a voter, once it has caught up.
    pub async fn promote_member(&self, op: &Operator, name: &str) -> Result<(), MemberChangeError> {
        let id = self
            .cluster
            .member_id(name)
            .ok_or(MemberChangeError::NotFound)?;
        if self.cluster.membership().voters.contains(&id) {
            return Ok(());
        }
        match self.caught_up(id, name) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.into()),
            // Only a leader knows a member's progress; requests reach the leader, so this
            // one lost its leadership meanwhile.
            None => return Err(Replication::NotLeader(
                "leadership moved before the member's progress was read; nothing was done; retry",
            )
            .into()),
        }
        self.bounded(move |c| async move { c.promote(id).await })
            .await?;
        tracing::info!(name, id, "member promoted to voter");
        self.record_member_action(op, "member.promote", format!("{name} (id {id}) to voter"))
            .await;
        Ok(())
    }

    /// Removes the member named `name`. The leader itself first hands leadership to
    /// another voter and answers `not_leader`, so the retry runs on the new leader.
    pub async fn remove_member(
        &self,
        op: &Operator,
        name: &str,
        force: bool,
    ) -> Result<(), MemberChangeError> {
        let id = self
            .cluster
            .member_id(name)
            .ok_or(MemberChangeError::NotFound)?;
        let membership = self.cluster.membership();
        if membership.voters.contains(&id) && !force {
            self.check_removal(name, id)?;
        }
        if id == self.cluster.id() {
            // Drained first: the node leaving must not take leadership back (failback
            // prefers main) before the removal, retried on the new leader, is made.
            let drained_before = self.drained(name);
            self.set_drained_for_membership(op, name, true).await?;
            if let Err(e) = self.hand_leadership_away().await {
                // Refused before any transfer began: the drain this request set is taken
                // back, so a refused removal leaves the node as it found it.
                if matches!(e, HandAway::NoReadyVoter(_)) && !drained_before {
                    self.clear_drained(op, name).await;
                }
                return Err(e.into());
            }
            return Err(Replication::NotLeader(
                "this node was the leader and handed leadership away before leaving; retry",
            )
            .into());
        }
        self.bounded(move |c| async move { c.remove_member(id).await })
            .await?;
        self.clear_drained(op, name).await;
        tracing::info!(name, id, force, "member removed");
        let detail = format!("{name} (id {id}){}", if force { ", forced" } else { "" });
        self.record_member_action(op, "member.remove", detail).await;
        Ok(())
    }

    /// Refuses a voter's removal that would leave no quorum of reachable voters, or no
    /// voter that may lead.
    fn check_removal(&self, name: &str, id: NodeId) -> Result<(), MemberChangeError> {
        let membership = self.cluster.membership();
        let rest: Vec<NodeId> = membership
            .voters
            .iter()
            .copied()
            .filter(|v| *v != id)
            .collect();
        let can_lead = rest
            .iter()
            .any(|v| membership.nodes.get(v).is_some_and(|m| !m.never_lead));
        if !can_lead {
            return Err(MemberChangeError::NoLeaderCandidate(name.to_owned()));
        }
        let me = self.cluster.id();
        let reachable = rest
            .iter()
            .filter(|v| **v == me || self.failover.health.answered(**v))
            .count();
        let quorum = crate::member::quorum(rest.len());
        if rest.is_empty() || reachable < quorum {
            return Err(MemberChangeError::WouldLoseQuorum {
                name: name.to_owned(),
                voters: rest.len(),
                reachable,
                quorum,
            });
        }
        Ok(())
    }

    /// Moves leadership to the best other voter: one that may lead, answers and is
    /// caught up (`ready_to_lead`), by role (main, then dr, then bk) then id. Waits up to
    /// `CATCH_UP_WAIT` for one to be ready.
    async fn hand_leadership_away(&self) -> Result<(), HandAway> {
        let me = self.cluster.id();
        let pick = || {
            let membership = self.cluster.membership();
            let candidates = membership
                .voters
                .iter()
                .filter(|v| **v != me)
                .filter_map(|v| membership.nodes.get(v).map(|m| (*v, m)))
                .filter(|(_, m)| !m.never_lead)
                .map(|(v, m)| (v, m.role, m.name.clone()));
            best_ready(candidates, |id, name| self.ready_to_lead(id, name))
        };
        let to = match poll_until_ok(CATCH_UP_WAIT, pick).await {
            Some(Ok(to)) => to,
            Some(Err(why)) => return Err(HandAway::NoReadyVoter(why)),
            None => {
                return Err(HandAway::Failed(MemberChangeError::Replication(
                    Replication::NotLeader(
                        "leadership moved before it was handed away; nothing was done; retry",
                    ),
                )))
            }
        };
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        self.cluster
            .transfer_leader(to, LeaderChangeCause::Operator, timeout)
            .await
            .map_err(|e| HandAway::Failed(MemberChangeError::Refused(e.to_string())))
    }

    /// Whether member `id` (named `name`) is caught up with this leader's log: within
    /// `health.ready_lag_entries_max` entries, none of them purged (`Behind::within`).
    /// `None`: this node does not lead, so does not know.
    pub(super) fn caught_up(&self, id: NodeId, name: &str) -> Option<Result<(), NotCaughtUp>> {
        let max = self.failover.health.settings.ready_lag_entries_max;
        let name = name.to_owned();
        Some(match self.cluster.status().behind(id)? {
            b if b.within(max) => Ok(()),
            Behind::Unacknowledged => Err(NotCaughtUp::Unacknowledged { name }),
            Behind::Snapshot { matched, purged } => Err(NotCaughtUp::AwaitsSnapshot {
                name,
                matched,
                purged,
            }),
            Behind::Entries(lag) => Err(NotCaughtUp::Entries { name, lag, max }),
        })
    }

    /// Whether member `id` could take leadership from this leader now: it answered this
    /// node's last health check and is caught up. `None`: this node does not lead.
    pub(super) fn ready_to_lead(&self, id: NodeId, name: &str) -> Option<Result<(), NotCaughtUp>> {
        let caught_up = self.caught_up(id, name)?;
        Some(caught_up.and_then(|()| {
            self.failover
                .health
                .answered(id)
                .then_some(())
                .ok_or_else(|| NotCaughtUp::Unreachable {
                    name: name.to_owned(),
                })
        }))
    }

    /// A membership change bounded by two write timeouts (it commits up to two
    /// entries); past that its outcome is unknown. The change runs in a task of its
    /// own: a caller that goes away (a client that timed out and closed its
    /// connection) must not cancel it half made — openraft proposes the joint
    /// configuration and then the final one from the one call, and a change dropped
    /// between the two leaves the cluster in the joint configuration.
    async fn bounded<F, Fut>(&self, change: F) -> Result<(), MemberChangeError>
    where
        F: FnOnce(Arc<Cluster>) -> Fut,
        Fut: std::future::Future<Output = Result<(), MembershipError>> + Send + 'static,
    {
        let limit = Duration::from_millis(2 * self.settings.write_timeout_ms);
        let task = crate::runtime::spawn(change(self.cluster.clone()));
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => r.map_err(Into::into),
            Ok(Err(e)) => Err(MemberChangeError::Refused(format!(
                "the membership change stopped: {e}; check kura member list"
            ))),
            Err(_) => Err(Replication::OutcomeUnknown(format!(
                "the membership change did not commit within {} ms (is a quorum of both the old and the new voters up?); it goes on, and may still be made: check kura member list",
                limit.as_millis()
            ))
            .into()),
        }
    }

    /// Sets the drain flag of `name` as part of a membership change.
    async fn set_drained_for_membership(
        &self,
        op: &Operator,
        name: &str,
        drained: bool,
    ) -> Result<(), MemberChangeError> {
        self.set_drained(op, name, drained)
            .await
            .map_err(|e| match e {
                super::nodes::DrainError::Replication(r) => r.into(),
                other => MemberChangeError::Refused(other.to_string()),
            })
    }

    /// Whether `name` carries a drain flag (false when the vault cannot be read).
    fn drained(&self, name: &str) -> bool {
        self.cluster
            .vault()
            .read(|v| v.is_drained(name))
            .unwrap_or(false)
    }

    /// Clears a drain flag left on `name` (the member is gone, or comes back new). The
    /// name is no member at either point, so the flag is written without that check: a
    /// flag left behind would keep a new machine of the same name out of every election
    /// (a new main would never lead, and failback would hand it leadership it never
    /// takes).
    async fn clear_drained(&self, op: &Operator, name: &str) {
        if self.drained(name) {
            if let Err(e) = self.write_drained(op, name, false).await {
                tracing::warn!(name, error = %e, "a drain flag left by a removed member was not cleared");
            }
        }
    }

    async fn record_member_action(&self, op: &Operator, action: &str, detail: String) {
        // The change is made; failing to record it is logged, not reported.
        if let Err(e) = self.record(action, detail, Some(op.actor())).await {
            tracing::warn!(
                code = super::ServiceError::code(&e),
                action,
                "membership change not recorded in the audit trail"
            );
        }
    }
}

/// Why the leader leaving did not hand leadership away.
#[derive(Debug)]
enum HandAway {
    /// No other voter that may lead was ready to (each one's reason); no transfer began.
    NoReadyVoter(Vec<NotCaughtUp>),
    Failed(MemberChangeError),
}

impl From<HandAway> for MemberChangeError {
    fn from(e: HandAway) -> Self {
        match e {
            HandAway::NoReadyVoter(why) if why.is_empty() => MemberChangeError::Refused(
                "no other voter may lead; cannot hand leadership away".into(),
            ),
            HandAway::NoReadyVoter(why) => MemberChangeError::Refused(format!(
                "no other voter that may lead is ready to; cannot hand leadership away: {}",
                why.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            HandAway::Failed(e) => e,
        }
    }
}

/// The first of `candidates` (id, role, name) by role then id that `ready` accepts, or
/// every candidate's reason. `None` when `ready` does not know (this node stopped
/// leading).
fn best_ready(
    candidates: impl Iterator<Item = (NodeId, Role, String)>,
    ready: impl Fn(NodeId, &str) -> Option<Result<(), NotCaughtUp>>,
) -> Option<Result<NodeId, Vec<NotCaughtUp>>> {
    let mut candidates: Vec<_> = candidates.collect();
    candidates.sort_by_key(|(id, role, _)| (*role, *id));
    let mut refused = Vec::new();
    for (id, _, name) in candidates {
        match ready(id, &name)? {
            Ok(()) => return Some(Ok(id)),
            Err(why) => refused.push(why),
        }
    }
    Some(Err(refused))
}

/// Calls `check` until it answers anything but an error, or `wait` has passed (then
/// its last answer), every 50 ms.
pub(super) async fn poll_until_ok<T, E>(
    wait: Duration,
    mut check: impl FnMut() -> Option<Result<T, E>>,
) -> Option<Result<T, E>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match check() {
            Some(Err(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_checked() {
        assert!(valid_name("bk2") && valid_name("dr-east"));
        assert!(!valid_name("") && !valid_name("BK") && !valid_name("a b"));
        assert!(!valid_name(&"x".repeat(33)));
        assert!(valid_addr("10.0.0.1:7001") && valid_addr("[::1]:7001") && valid_addr("host:1"));
        assert!(!valid_addr("nowhere") && !valid_addr(":7001") && !valid_addr("h:0"));
        assert!(!valid_addr("h:70000"));
    }

    #[test]
    fn leadership_goes_to_the_most_preferred_voter_that_is_ready() {
        let candidates = || {
            [
                (3, Role::Bk, "bk"),
                (2, Role::Dr, "dr"),
                (4, Role::Dr, "dr2"),
            ]
            .map(|(id, role, name)| (id, role, name.to_owned()))
            .into_iter()
        };
        let lagging = |name: &str| NotCaughtUp::Entries {
            name: name.to_owned(),
            lag: 5_000,
            max: 1_000,
        };
        // Every one ready: dr, the most preferred role with the lowest id.
        assert!(matches!(
            best_ready(candidates(), |_, _| Some(Ok(()))),
            Some(Ok(2))
        ));
        // dr behind: the next dr, not bk.
        let r = best_ready(candidates(), |id, name| {
            Some(if id == 2 { Err(lagging(name)) } else { Ok(()) })
        });
        assert!(matches!(r, Some(Ok(4))), "{r:?}");
        // Only bk ready: bk.
        let r = best_ready(candidates(), |id, name| {
            Some(if id == 3 { Ok(()) } else { Err(lagging(name)) })
        });
        assert!(matches!(r, Some(Ok(3))), "{r:?}");
        // None ready: every reason, by preference.
        let r = best_ready(candidates(), |_, name| Some(Err(lagging(name))));
        let Some(Err(why)) = r else { panic!("{r:?}") };
        let names: Vec<String> = why.iter().map(|w| w.to_string()).collect();
        assert_eq!(names.len(), 3);
        assert!(
            names[0].starts_with("dr is 5000 entries behind"),
            "{names:?}"
        );
        assert!(names[2].starts_with("bk "), "{names:?}");
        let refused = MemberChangeError::from(HandAway::NoReadyVoter(why)).to_string();
        assert!(refused.contains("dr2 is 5000"), "{refused}");
        // This node stopped leading: nothing is picked.
        assert!(best_ready(candidates(), |_, _| None).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_is_polled_until_it_holds_or_the_wait_is_over() {
        let mut calls = 0;
        let r: Option<Result<u32, &str>> = poll_until_ok(Duration::from_secs(2), || {
            calls += 1;
            Some(if calls < 5 { Err("not yet") } else { Ok(calls) })
        })
        .await;
        assert_eq!(r, Some(Ok(5)));
        let started = tokio::time::Instant::now();
        let r: Option<Result<(), &str>> =
            poll_until_ok(Duration::from_secs(2), || Some(Err("never"))).await;
        assert_eq!(r, Some(Err("never")));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_millis(2_100),
            "{waited:?}"
        );
        // An answer that is not an error ends the wait at once.
        let r: Option<Result<(), &str>> = poll_until_ok(Duration::from_secs(2), || None).await;
        assert_eq!(r, None);
    }
}
