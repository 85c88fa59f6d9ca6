//! Health checks and the leadership controller.
//!
//! Every node runs its checks on a fixed interval: a storage canary through the real
//! write path, the KEK provider, the acquirer routes (not configured until payments
//! land) and Raft state. Each node also asks the others for their health over the peer
//! listener. The leader acts on what it sees: it hands leadership to the healthiest
//! caught-up follower when its own checks fail `unhealthy_threshold` times in a row or
//! it is drained, and hands it back to a more preferred node (main, then dr) once that
//! node has been healthy and caught up for `failback_stabilization_s`. A node that is
//! unhealthy, drained or `never_lead` does not stand for election — unless the cluster
//! has had no reachable leader for three election timeouts, because it may hold the
//! only complete log; it then leads only until an electable node has caught up.

use crate::api::AppState;
use crate::member::{NodeId, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Check intervals, thresholds and bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// How often every check runs.
    pub check_interval_ms: u64,
    /// Consecutive failures that make a check (and the node) unhealthy.
    pub unhealthy_threshold: u32,
    /// A storage canary slower than this fails.
    pub storage_canary_latency_ms_max: u64,
    /// A node further behind than this many entries is not ready.
    pub ready_lag_entries_max: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            check_interval_ms: 250,
            unhealthy_threshold: 3,
            storage_canary_latency_ms_max: 500,
            ready_lag_entries_max: 1_000,
        }
    }
}

/// Whether leadership moves back to a preferred node by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failback {
    Auto,
    Manual,
}

/// Failover and failback policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSettings {
    pub failback: Failback,
    /// How long a preferred node must stay healthy and caught up before failback.
    pub failback_stabilization_s: u64,
    /// The configuration is refused if its worst-case failover exceeds this.
    pub failover_deadline_s: u64,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            failback: Failback::Auto,
            failback_stabilization_s: 10,
            failover_deadline_s: 90,
        }
    }
}

impl HealthSettings {
    /// Checks the settings and that the worst-case failover — detection plus election,
    /// for a crash and for a gray failure — fits `failover.failover_deadline_s`.
    pub fn validate(
        &self,
        failover: &FailoverSettings,
        election_timeout_max_ms: u64,
    ) -> Result<(), String> {
        if !(10..=60_000).contains(&self.check_interval_ms) {
            return Err("health.check_interval_ms must be between 10 and 60000".into());
        }
        if !(1..=100).contains(&self.unhealthy_threshold) {
            return Err("health.unhealthy_threshold must be between 1 and 100".into());
        }
        if self.storage_canary_latency_ms_max == 0 {
            return Err("health.storage_canary_latency_ms_max must be greater than 0".into());
        }
        if failover.failover_deadline_s == 0 {
            return Err("failover.failover_deadline_s must be greater than 0".into());
        }
        let worst = self.worst_case_failover_ms(election_timeout_max_ms);
        if worst > failover.failover_deadline_s * 1000 {
            return Err(format!(
                "the worst-case failover of these settings is {worst} ms (unhealthy_threshold x (check_interval_ms + storage_canary_latency_ms_max) + 2 x raft.election_timeout_max_ms), over failover.failover_deadline_s = {}",
                failover.failover_deadline_s
            ));
        }
        Ok(())
    }

    /// Detection of a gray failure (every check round taking its full canary bound) plus
    /// two election rounds (one may split).
    pub fn worst_case_failover_ms(&self, election_timeout_max_ms: u64) -> u64 {
        u64::from(self.unhealthy_threshold)
            * (self.check_interval_ms + self.storage_canary_latency_ms_max)
            + 2 * election_timeout_max_ms
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    NotConfigured,
}

/// One check as `/health/ready` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub latency_ms: Option<f64>,
    pub message: String,
    pub consecutive_failures: u32,
}

/// A node's health as it reports it to operators and to the other nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeHealth {
    /// Storage and keys have not failed `unhealthy_threshold` times in a row.
    pub healthy: bool,
    /// Can serve client requests now: healthy, knows a leader, caught up, not drained.
    pub ready: bool,
    pub drained: bool,
    /// Why the node is unhealthy (`unhealthy_storage`, `unhealthy_keys`).
    pub unhealthy_cause: Option<String>,
    /// Every acquirer route has failed from this node `unhealthy_threshold` times in a row.
    #[serde(default)]
    pub routes_cut: bool,
    pub checks: Vec<Check>,
    /// The index of the last entry in this node's log (or its snapshot), when known.
    #[serde(default)]
    pub last_log_index: Option<u64>,
    /// The key-encryption keys this node holds, its current one first (public ids).
    #[serde(default)]
    pub kek_ids: Vec<String>,
}

impl NodeHealth {
    fn routes_up(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.name == ROUTES && c.status == CheckStatus::Pass)
    }
}

#[derive(Debug, Default)]
struct PeerView {
    report: Option<NodeHealth>,
    /// Simulated or wall time (ms) since when the peer has been eligible to lead.
    eligible_since_ms: Option<u64>,
    /// Polls in a row in which the peer reported an empty log although this leader had
    /// replicated entries to it: it lost its data (a wiped disk).
    lost_log_polls: u32,
}

/// This node's checks and its view of the other nodes.
#[derive(Debug)]
pub struct Health {
    pub settings: HealthSettings,
    pub failover: FailoverSettings,
    checks: Mutex<BTreeMap<&'static str, Check>>,
    peers: Mutex<BTreeMap<NodeId, PeerView>>,
    elect_enabled: Mutex<Option<bool>>,
    /// Since when (ms) this node has known no leader that answers its health polls.
    leaderless_since_ms: Mutex<Option<u64>>,
    /// How long a node that may not lead waits without a reachable leader before it
    /// stands anyway (see `control`).
    standby_after_ms: u64,
    /// A handoff is under way (it runs beside the checks, which must go on meanwhile).
    handing_over: std::sync::atomic::AtomicBool,
}

const STORAGE: &str = "storage";
const KEYS: &str = "kek_provider";
const ROUTES: &str = "acquirer_routes";
const RAFT: &str = "raft";

impl Health {
    /// No checks run yet: unhealthy and not ready until the first round.
    /// `election_timeout_max_ms` sets how long a node that may not lead waits for an
    /// electable node to win before it stands itself.
    pub fn new(
        settings: HealthSettings,
        failover: FailoverSettings,
        election_timeout_max_ms: u64,
    ) -> Health {
        Health {
            settings,
            failover,
            checks: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(BTreeMap::new()),
            elect_enabled: Mutex::new(None),
            leaderless_since_ms: Mutex::new(None),
            standby_after_ms: 3 * election_timeout_max_ms,
            handing_over: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn record(
        &self,
        name: &'static str,
        status: CheckStatus,
        latency: Option<Duration>,
        message: String,
    ) {
        let mut checks = self.checks.lock().expect("health lock");
        let failures = match (status, checks.get(name)) {
            (CheckStatus::Fail, Some(prev)) => prev.consecutive_failures.saturating_add(1),
            (CheckStatus::Fail, None) => 1,
            _ => 0,
        };
        checks.insert(
            name,
            Check {
                name: name.into(),
                status,
                latency_ms: latency.map(|d| d.as_secs_f64() * 1000.0),
                message,
                consecutive_failures: failures,
            },
        );
    }

    /// This node's health, given whether it is drained.
    pub fn report(&self, drained: bool) -> NodeHealth {
        let checks = self.checks.lock().expect("health lock");
        let failed = |name: &str| {
            checks
                .get(name)
                .is_none_or(|c| c.consecutive_failures >= self.settings.unhealthy_threshold)
        };
        let unhealthy_cause = if failed(STORAGE) {
            Some("unhealthy_storage".to_owned())
        } else if failed(KEYS) {
            Some("unhealthy_keys".to_owned())
        } else {
            None
        };
        let raft_ok = checks
            .get(RAFT)
            .is_some_and(|c| c.status == CheckStatus::Pass);
        let routes_cut = checks
            .get(ROUTES)
            .is_some_and(|c| c.consecutive_failures >= self.settings.unhealthy_threshold);
        NodeHealth {
            healthy: unhealthy_cause.is_none(),
            ready: unhealthy_cause.is_none() && raft_ok && !drained,
            drained,
            unhealthy_cause,
            routes_cut,
            checks: checks.values().cloned().collect(),
            last_log_index: None,
            kek_ids: Vec::new(),
        }
    }

    /// The last health each other node reported (None: it did not answer).
    pub fn peer_reports(&self) -> BTreeMap<NodeId, Option<NodeHealth>> {
        self.peers
            .lock()
            .expect("health lock")
            .iter()
            .map(|(id, v)| (*id, v.report.clone()))
            .collect()
    }
}

/// Runs the checks and the leadership controller for the node's lifetime.
pub async fn run(st: Arc<AppState>) {
    let interval = Duration::from_millis(st.health.settings.check_interval_ms);
    loop {
        crate::runtime::sleep(interval).await;
        run_checks(&st).await;
        poll_peers(&st, interval).await;
        control(&st).await;
    }
}

async fn run_checks(st: &AppState) {
    let h = &st.health;
    let bound = Duration::from_millis(h.settings.storage_canary_latency_ms_max);
    let started = Instant::now();
    match tokio::time::timeout(bound, st.cluster.store.canary()).await {
        Ok(Ok(())) => {
            let took = started.elapsed();
            h.record(
                STORAGE,
                CheckStatus::Pass,
                Some(took),
                "durable canary write committed".into(),
            );
            st.metrics.health_storage_canary.observe(took.as_secs_f64());
        }
        Ok(Err(e)) => h.record(
            STORAGE,
            CheckStatus::Fail,
            Some(started.elapsed()),
            format!("canary write failed: {e}"),
        ),
        Err(_) => h.record(
            STORAGE,
            CheckStatus::Fail,
            Some(bound),
            format!(
                "canary write did not commit within {} ms",
                bound.as_millis()
            ),
        ),
    }
    let started = Instant::now();
    match st.keys.probe(&st.entropy) {
        Ok(()) => h.record(
            KEYS,
            CheckStatus::Pass,
            Some(started.elapsed()),
            format!("{} provider seals and opens", st.keys.kek().kind()),
        ),
        Err(e) => h.record(
            KEYS,
            CheckStatus::Fail,
            Some(started.elapsed()),
            e.to_string(),
        ),
    }
    if st.router.configured() {
        let up: Vec<String> = st
            .router
            .statuses()
            .into_iter()
            .filter(|r| r.up)
            .map(|r| r.name)
            .collect();
        let (status, message) = if up.is_empty() {
            (
                CheckStatus::Fail,
                "no acquirer route answers from this node".to_owned(),
            )
        } else {
            (CheckStatus::Pass, format!("up: {}", up.join(", ")))
        };
        h.record(ROUTES, status, None, message);
    } else {
        h.record(
            ROUTES,
            CheckStatus::NotConfigured,
            None,
            "no acquirer routes are configured".into(),
        );
    }
    let s = st.cluster.status();
    let lag = s.committed_index.saturating_sub(s.applied_index);
    let (status, message) = match (&s.leader_name, lag <= h.settings.ready_lag_entries_max) {
        (None, _) => (CheckStatus::Fail, "no leader known".to_owned()),
        (Some(l), true) => (
            CheckStatus::Pass,
            format!("leader is {l}, term {}, {lag} entries to apply", s.term),
        ),
        (Some(l), false) => (
            CheckStatus::Fail,
            format!(
                "leader is {l}, but {lag} entries behind (bound {})",
                h.settings.ready_lag_entries_max
            ),
        ),
    };
    h.record(RAFT, status, None, message);
    for c in h.report(false).checks {
        st.metrics.set_check(&c.name, c.status == CheckStatus::Pass);
    }
}

/// Asks every other node for its health, all at once, each bounded by `timeout`.
async fn poll_peers(st: &AppState, timeout: Duration) {
    let reports = st
        .cluster
        .get_from_peers(crate::api::peer::HEALTH_PATH, timeout)
        .await;
    let now = (st.clock)();
    let status = st.cluster.status();
    let lags: BTreeMap<NodeId, Option<u64>> = status
        .members
        .iter()
        .map(|m| (m.id, m.lag_entries))
        .collect();
    let matched: BTreeMap<NodeId, u64> = status
        .members
        .iter()
        .filter_map(|m| Some((m.id, m.matched_index?)))
        .collect();
    let reports: Vec<(NodeId, Option<NodeHealth>)> = reports
        .into_iter()
        .map(|(id, body)| (id, body.and_then(|b| serde_json::from_slice(&b).ok())))
        .collect();
    // A node cut off from every route is not eligible while some node reaches one.
    let routes_up_somewhere = st.health.report(false).routes_up()
        || reports
            .iter()
            .filter_map(|(_, r)| r.as_ref())
            .any(NodeHealth::routes_up);
    let mut peers = st.health.peers.lock().expect("health lock");
    for (id, report) in reports {
        let caught_up = lags
            .get(&id)
            .copied()
            .flatten()
            .is_none_or(|lag| lag <= st.health.settings.ready_lag_entries_max);
        let eligible = report
            .as_ref()
            .is_some_and(|r| r.healthy && !r.drained && !(r.routes_cut && routes_up_somewhere))
            && caught_up;
        // Raft assumes a node never loses what it acknowledged; one that comes back with
        // an empty log under the same id is refused nothing by openraft, which keeps
        // sending from where it believes the node is. Counted here, handled in `control`.
        let lost_log = report.as_ref().and_then(|r| r.last_log_index) == Some(0)
            && matched.get(&id).is_some_and(|&m| m > 0);
        let view = peers.entry(id).or_default();
        view.lost_log_polls = if lost_log {
            view.lost_log_polls.saturating_add(1)
        } else {
            0
        };
        let eligible = eligible && view.lost_log_polls == 0;
        view.eligible_since_ms = match (eligible, view.eligible_since_ms) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
            (false, _) => None,
        };
        view.report = report;
    }
}

fn rank(role: Role) -> u8 {
    match role {
        Role::Main => 0,
        Role::Dr => 1,
        Role::Bk => 2,
    }
}

async fn control(st: &Arc<AppState>) {
    let me = st.cluster.me().clone();
    let drained = st.cluster.vault().read(|v| v.is_drained(&me.name));
    let report = st.health.report(drained);
    let cut_off = routes_cut_off_here(st, &report);
    // An unhealthy node stays out of elections only while a healthy one can lead: a
    // cluster whose every electable node is degraded still needs a leader.
    let fit = report.healthy && !cut_off;
    let may_lead = !me.never_lead && !drained;
    // A node that may not lead (never_lead, drained) can still hold the only complete
    // log: the leader dies after an entry reached it but not the electable node, which
    // then cannot win a vote. So when no reachable leader has been known for a few
    // election timeouts, it stands; once it leads, it hands over below as soon as an
    // electable node has caught up.
    // Measured every round, so that a node drained later starts from a current clock.
    let leaderless_ms = leaderless_for(st);
    let standby = !may_lead && leaderless_ms >= st.health.standby_after_ms;
    let elect = (may_lead && (fit || pick_target(st, None).is_none())) || standby;
    {
        let mut last = st.health.elect_enabled.lock().expect("health lock");
        if *last != Some(elect) {
            st.cluster.set_elect(elect);
            tracing::info!(
                elect,
                healthy = report.healthy,
                drained,
                never_lead = me.never_lead,
                standby,
                "election participation set"
            );
            *last = Some(elect);
        }
    }
    if !st.cluster.is_leader() {
        return;
    }
    let cause = match (&report.unhealthy_cause, drained) {
        _ if follower_lost_its_log(st) => Some("follower_lost_log".to_owned()),
        (Some(c), _) => Some(c.clone()),
        (None, true) => Some("operator".to_owned()),
        (None, false) if me.never_lead => Some("never_lead".to_owned()),
        (None, false) => cut_off.then(|| "unhealthy_routes".to_owned()),
    };
    // A leader hands over only once its own term's change is on record: moved on sooner
    // (the record is refused while a transfer is under way), that change and its cause
    // would never be recorded — a failback right after a handoff's election went to an
    // unintended node erased the handoff's cause. A leader whose storage fails cannot
    // record anything and goes at once.
    let term = st.cluster.status().term;
    let on_record = st
        .cluster
        .vault()
        .read(|v| v.last_leader_change().is_some_and(|c| c.term >= term));
    let urgent = cause.as_deref() == Some("unhealthy_storage");
    if !on_record && !urgent {
        return;
    }
    if let Some(cause) = cause {
        if let Some(to) = pick_target(st, None) {
            spawn_handoff(st, to, cause);
        } else {
            tracing::warn!(
                cause,
                "this leader should hand over, but no other node is healthy and caught up"
            );
        }
        return;
    }
    if st.health.failover.failback == Failback::Auto {
        let stable_ms = st.health.failover.failback_stabilization_s * 1000;
        if let Some(to) = pick_target(st, Some((rank(me.role), stable_ms))) {
            spawn_handoff(st, to, "failback".to_owned());
        }
    }
}

/// True when a follower has reported an empty log for two polls in a row although this
/// leader replicated entries to it. A new leader starts its replication to every
/// follower afresh (probing back to a snapshot), so the remedy is to hand over.
fn follower_lost_its_log(st: &AppState) -> bool {
    st.health
        .peers
        .lock()
        .expect("health lock")
        .values()
        .any(|v| v.lost_log_polls >= 2)
}

/// How long (ms) this node has known no leader that answers its health polls; 0 while
/// it leads or its leader answers.
fn leaderless_for(st: &AppState) -> u64 {
    let now = (st.clock)();
    let reachable = match st.cluster.leader() {
        Some((id, _)) if id == st.cluster.id() => true,
        Some((id, _)) => st
            .health
            .peers
            .lock()
            .expect("health lock")
            .get(&id)
            .is_some_and(|v| v.report.is_some()),
        None => false,
    };
    let mut since = st.health.leaderless_since_ms.lock().expect("health lock");
    if reachable {
        *since = None;
        return 0;
    }
    now.saturating_sub(*since.get_or_insert(now))
}

/// True when every route has failed from this node `unhealthy_threshold` times in a row
/// while another node reports a route up: the fault is this site's, so another leads.
fn routes_cut_off_here(st: &AppState, me: &NodeHealth) -> bool {
    me.routes_cut
        && st
            .health
            .peer_reports()
            .values()
            .flatten()
            .any(NodeHealth::routes_up)
}

/// The best node to lead instead of this one: eligible (healthy, not drained, caught up,
/// may lead), by preference then id. With `better_than`, only nodes of a more preferred
/// role that have been eligible for the given time.
fn pick_target(st: &AppState, better_than: Option<(u8, u64)>) -> Option<NodeId> {
    let now = (st.clock)();
    let members = st.cluster.members();
    let peers = st.health.peers.lock().expect("health lock");
    // A node cut off from every route is passed over while some node reaches one.
    let routes_up_somewhere = peers
        .values()
        .filter_map(|v| v.report.as_ref())
        .any(NodeHealth::routes_up);
    members
        .iter()
        .filter(|(id, m)| **id != st.cluster.id() && !m.never_lead)
        .filter_map(|(id, m)| {
            let view = peers.get(id)?;
            if routes_up_somewhere && view.report.as_ref().is_some_and(|r| r.routes_cut) {
                return None;
            }
            let since = view.eligible_since_ms?;
            match better_than {
                Some((my_rank, stable_ms)) => (rank(m.role) < my_rank
                    && now.saturating_sub(since) >= stable_ms)
                    .then_some((rank(m.role), *id)),
                None => Some((rank(m.role), *id)),
            }
        })
        .min()
        .map(|(_, id)| id)
}

/// Starts a handoff to `to` unless one is under way. It runs on its own: the old leader
/// waits for the new leader's record of the change, which a leader whose storage stalls
/// cannot apply until the stall ends, and its checks must go on meanwhile.
fn spawn_handoff(st: &Arc<AppState>, to: NodeId, cause: String) {
    use std::sync::atomic::Ordering;
    if st.health.handing_over.swap(true, Ordering::AcqRel) {
        return;
    }
    let st = st.clone();
    crate::runtime::spawn(async move {
        handoff(&st, to, &cause).await;
        st.health.handing_over.store(false, Ordering::Release);
    });
}

/// Transfers leadership to `to`, telling it the cause so it records the change as such.
async fn handoff(st: &AppState, to: NodeId, cause: &str) {
    let to_name = st
        .cluster
        .members()
        .get(&to)
        .map_or_else(|| to.to_string(), |m| m.name.clone());
    let timeout = Duration::from_millis(st.settings.write_timeout_ms);
    match st.cluster.transfer_leader(to, cause, timeout).await {
        Ok(()) => tracing::info!(to = %to_name, cause, "leadership handed over"),
        Err(e) => {
            tracing::warn!(to = %to_name, cause, error = %e, "leadership handoff failed; will retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_check_refuses_slow_settings() {
        let f = FailoverSettings::default();
        let h = HealthSettings::default();
        assert!(h.validate(&f, 300).is_ok());
        assert_eq!(h.worst_case_failover_ms(300), 3 * (250 + 500) + 600);
        let slow = HealthSettings {
            check_interval_ms: 40_000,
            ..HealthSettings::default()
        };
        let err = slow.validate(&f, 300).unwrap_err();
        assert!(err.contains("failover.failover_deadline_s"), "{err}");
        let tight = FailoverSettings {
            failover_deadline_s: 1,
            ..f
        };
        assert!(h.validate(&tight, 300).is_err());
    }

    #[test]
    fn a_check_becomes_unhealthy_only_after_the_threshold() {
        let h = Health::new(HealthSettings::default(), FailoverSettings::default(), 300);
        assert!(!h.report(false).healthy, "unknown until checked");
        h.record(STORAGE, CheckStatus::Pass, None, String::new());
        h.record(KEYS, CheckStatus::Pass, None, String::new());
        h.record(RAFT, CheckStatus::Pass, None, String::new());
        assert!(h.report(false).ready);
        assert!(!h.report(true).ready, "drained");
        for _ in 0..2 {
            h.record(STORAGE, CheckStatus::Fail, None, String::new());
        }
        assert!(
            h.report(false).healthy,
            "two failures are below the threshold"
        );
        h.record(STORAGE, CheckStatus::Fail, None, String::new());
        let r = h.report(false);
        assert_eq!((r.healthy, r.ready), (false, false));
        assert_eq!(r.unhealthy_cause.as_deref(), Some("unhealthy_storage"));
        h.record(STORAGE, CheckStatus::Pass, None, String::new());
        assert!(h.report(false).healthy, "one pass resets");
    }
}
