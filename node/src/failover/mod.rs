//! Health checks and the leadership controller.
//!
//! Every node runs its checks on a fixed interval: a storage canary through the real
//! write path, the KEK provider, the acquirer routes and Raft state. Each node also
//! asks the others for their health over the peer listener. What to do about it is
//! decided by a pure function ([`decide`]): the leader hands leadership to the
//! healthiest caught-up follower when its own checks fail `unhealthy_threshold` times
//! in a row or it is drained, and hands it back to a more preferred node (main, then
//! dr) once that node has been healthy and caught up for `failback_stabilization_s`. A
//! node that is unhealthy, drained or `never_lead` does not stand for election — unless
//! the cluster has had no reachable leader for three election timeouts, because it may
//! hold the only complete log; it then leads only until an electable node has caught up.
//! This module gathers the view, runs the checks and carries the decision out.

mod clock;
pub mod decide;
mod health;

pub use clock::{PeerClocks, Verdict};
pub use health::{
    Check, CheckStatus, Failback, FailoverSettings, Health, HealthSettings, NodeHealth,
};

use crate::acquirer::router::Router;
use crate::cluster::Cluster;
use crate::crypto::{Entropy, KeyRing};
use crate::member::NodeId;
use crate::metrics::Metrics;
use crate::runtime::Clock;
use crate::vault::LeaderChangeCause;
use decide::{Decision, Leadership, Me, Peer, PeerReport, View};
use health::{disk_space_check, CLOCK, DISK_SPACE, KEYS, RAFT, ROUTES, STORAGE};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where other nodes read this node's health, on the peer listener.
pub const HEALTH_PATH: &str = "/peer/v1/health";

/// What the checks and the controller work with: the cluster, this node's health and
/// view of the others, the keys and the acquirer routes.
pub struct Failover {
    pub cluster: Arc<Cluster>,
    pub health: Arc<Health>,
    pub router: Arc<Router>,
    pub keys: Arc<KeyRing>,
    pub entropy: Arc<Entropy>,
    pub metrics: Arc<Metrics>,
    /// Monotonic ms for the controller's timing (how long a peer has been eligible,
    /// uptime, leaderless time): a step of the wall clock must not move them.
    pub clock: Clock,
    /// The other nodes' clocks as measured against this one's.
    pub clocks: Arc<PeerClocks>,
    /// How long a handoff may take.
    pub transfer_timeout: Duration,
    /// The data directory, whose filesystem's free space is checked (`None` in a
    /// simulation, whose nodes share a simulated disk).
    pub data_dir: Option<std::path::PathBuf>,
    /// The fault switches, when fault injection is on (one fakes an older build's
    /// command level).
    pub faults: Option<Arc<crate::faults::FaultSwitches>>,
}

impl Failover {
    /// This node's health report, as it serves it to operators and the other nodes.
    pub fn own_report(&self) -> NodeHealth {
        let drained = self
            .cluster
            .vault()
            .read(|v| v.is_drained(&self.cluster.me().name))
            .unwrap_or(false);
        NodeHealth {
            last_log_index: Some(self.cluster.last_log_index()),
            kek_ids: self.keys.kek().ids(),
            // A leader handing over takes no writes and sends no heartbeats until another
            // node's election ends its term: the others count it as gone, so that a node
            // that may not lead stands when the target never does.
            leads: self.cluster.is_leader() && !self.cluster.handing_over(),
            clock_ms: Some(self.clocks.raw_ms()),
            command_level: self.command_level(),
            ..self.health.report(drained)
        }
    }

    /// The command level this node reports: its build's, unless a fault switch fakes
    /// an older build's.
    fn command_level(&self) -> u32 {
        self.faults
            .as_ref()
            .map_or(crate::vault::COMMAND_LEVEL, |f| f.command_level())
    }
}

/// Runs the checks and the leadership controller for the node's lifetime.
pub async fn run(st: Arc<Failover>) {
    let interval = Duration::from_millis(st.health.settings.check_interval_ms);
    let started_ms = (st.clock)();
    loop {
        crate::runtime::sleep(interval).await;
        run_checks(&st).await;
        poll_peers(&st, interval).await;
        check_clock(&st);
        control(&st, started_ms).await;
    }
}

async fn run_checks(st: &Failover) {
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
    let floor = h.settings.storage_min_free_bytes;
    match st.data_dir.clone().filter(|_| floor > 0) {
        Some(dir) => {
            // statvfs reads no data; off the runtime all the same, and bounded like the
            // canary, in case the filesystem hangs.
            let started = Instant::now();
            let measured = tokio::time::timeout(
                bound,
                tokio::task::spawn_blocking(move || crate::files::filesystem_space(&dir)),
            )
            .await;
            let avail = measured.ok().and_then(Result::ok).flatten().map(|s| s.0);
            h.free_bytes.store(
                avail.unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
            let (status, message) = disk_space_check(avail, floor);
            h.record(DISK_SPACE, status, Some(started.elapsed()), message);
        }
        None => h.record(
            DISK_SPACE,
            CheckStatus::NotConfigured,
            None,
            "free space is not checked (health.storage_min_free_bytes = 0, or a simulated disk)"
                .into(),
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
        st.metrics.set_check(&c.name, c.status.passing());
    }
}

/// Asks every other node for its health, all at once, each bounded by `timeout`.
async fn poll_peers(st: &Failover, timeout: Duration) {
    let sent = Instant::now();
    let reports = st.cluster.get_from_peers(HEALTH_PATH, timeout).await;
    let now = (st.clock)();
    let status = st.cluster.status();
    let voters = status.members.iter().filter(|m| m.voter).count();
    let self_votes = status
        .members
        .iter()
        .any(|m| m.voter && m.id == st.cluster.id());
    st.clocks.set_voters(voters, self_votes);
    let matched: BTreeMap<NodeId, u64> = status
        .members
        .iter()
        .filter_map(|m| Some((m.id, m.matched_index?)))
        .collect();
    let reports: Vec<(NodeId, Option<NodeHealth>)> = reports
        .into_iter()
        .map(|(id, body, received)| {
            let report: Option<NodeHealth> = body.and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(wall) = report.as_ref().and_then(|r| r.clock_ms) {
                st.clocks.observe(id, sent, received, wall);
            }
            (id, report)
        })
        .collect();
    // A node cut off from every route is not eligible while some node reaches one.
    let routes_up_somewhere = st.health.report(false).routes_up()
        || reports
            .iter()
            .filter_map(|(_, r)| r.as_ref())
            .any(NodeHealth::routes_up);
    // Voters known to be under their reserve, this node among them: with fewer than a
    // quorum left with room, a leader keeps the reserve.
    let short = status
        .members
        .iter()
        .filter(|m| m.voter)
        .filter(|m| {
            if m.id == st.cluster.id() {
                st.health.below_reserve()
            } else {
                reports
                    .iter()
                    .any(|(id, r)| *id == m.id && r.as_ref().is_some_and(|r| r.below_reserve))
            }
        })
        .count();
    st.health.quorum_short.store(
        voters > 0 && voters - short < crate::member::quorum(voters),
        std::sync::atomic::Ordering::Relaxed,
    );
    // Every member heard (learners apply the log too): the commands their builds all
    // apply may be proposed.
    let others: Vec<NodeId> = status
        .members
        .iter()
        .filter(|m| m.id != st.cluster.id())
        .map(|m| m.id)
        .collect();
    let own = status
        .members
        .iter()
        .any(|m| m.id == st.cluster.id())
        .then(|| st.command_level());
    if let Some(level) = health::agreed_level(own, &others, &reports) {
        if st.health.raise_cluster_level(level) {
            tracing::info!(
                level,
                "every member applies commands of this level: they are proposed from now on"
            );
        }
    }
    let mut peers = st.health.peers.lock().expect("health lock");
    for (id, report) in reports {
        // Only the leader knows; a member that has acknowledged nothing, or still needs
        // the snapshot, is not caught up however short the log is (a transfer to it would
        // wait for its log in vain).
        let caught_up = status
            .behind(id)
            .is_none_or(|b| b.within(st.health.settings.ready_lag_entries_max));
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

/// Judges this node's clock against the others' just measured: the `clock` check.
fn check_clock(st: &Failover) {
    let (verdict, offsets) = st.clocks.judge();
    let names = st.cluster.members();
    let name = |id: &NodeId| {
        names
            .get(id)
            .map_or_else(|| id.to_string(), |m| m.name.clone())
    };
    for (id, offset_ms) in &offsets {
        st.metrics
            .set_clock_offset(&name(id), *offset_ms as f64 / 1000.0);
    }
    let bound = st.health.settings.max_clock_offset_ms;
    let (status, message) = match verdict {
        Verdict::Unjudged if bound == 0 => (
            CheckStatus::NotConfigured,
            "clocks are not compared (health.max_clock_offset_ms = 0)".to_owned(),
        ),
        Verdict::Unjudged => (
            CheckStatus::NotConfigured,
            "too few other nodes answered recently to judge this node's clock by".to_owned(),
        ),
        Verdict::Agrees { peers } => {
            let largest = offsets.values().map(|o| o.abs()).max().unwrap_or(0);
            (
                CheckStatus::Pass,
                format!(
                    "within {bound} ms of {peers} other node(s)' clocks (largest offset measured {largest} ms)"
                ),
            )
        }
        Verdict::Disagrees { ahead_ms, .. } => {
            let listed: Vec<String> = offsets
                .iter()
                .map(|(id, o)| format!("{} {:+} ms", name(id), o))
                .collect();
            (
                CheckStatus::Fail,
                format!(
                    "this node's clock is {} ms {} the other nodes' (bound health.max_clock_offset_ms = {bound}; theirs minus this one: {}); commands it stamps take their time",
                    ahead_ms.abs(),
                    if ahead_ms > 0 { "ahead of" } else { "behind" },
                    listed.join(", ")
                ),
            )
        }
        Verdict::Stepped { ahead_ms, .. } => (
            CheckStatus::Fail,
            format!(
                "this node's clock stepped {ahead_ms:+} ms against monotonic time since it last agreed with the other nodes' (bound health.max_clock_offset_ms = {bound}; none answered recently); commands it stamps take the time it would read unstepped"
            ),
        ),
    };
    let was = st
        .health
        .checks
        .lock()
        .expect("health lock")
        .get(CLOCK)
        .map(|c| c.status);
    match (was, status) {
        (Some(CheckStatus::Fail), CheckStatus::Fail) => {}
        (_, CheckStatus::Fail) => tracing::warn!("clock out of bounds: {message}"),
        (Some(CheckStatus::Fail), _) => tracing::info!("clock back within bounds: {message}"),
        _ => {}
    }
    st.health.record(CLOCK, status, None, message);
    st.metrics.set_check(CLOCK, status.passing());
}

/// Gathers the view, decides, and acts: sets election participation, starts a handoff.
async fn control(st: &Arc<Failover>, started_ms: u64) {
    let view = observe(st, started_ms);
    let d = decide::decide(&view);
    set_elect(st, &view, &d);
    match d.leadership {
        Leadership::Keep | Leadership::WaitForRecord(_) => {}
        Leadership::NoTarget(cause) => tracing::warn!(
            cause = cause.as_str(),
            "this leader should hand over, but no other node is healthy and caught up"
        ),
        Leadership::HandOff { to, cause } => spawn_handoff(st, to, cause),
    }
}

/// This round's view: this node's checks, its view of the others, and the cluster;
/// `started_ms` is when the controller started.
fn observe(st: &Failover, started_ms: u64) -> View {
    let me = st.cluster.me().clone();
    let drained = st
        .cluster
        .vault()
        .read(|v| v.is_drained(&me.name))
        .unwrap_or(false);
    let report = st.health.report(drained);
    let leaderless_ms = leaderless_for(st);
    let term = st.cluster.status().term;
    let change_on_record = st
        .cluster
        .vault()
        .read(|v| v.last_leader_change().is_some_and(|c| c.term >= term))
        .unwrap_or(false);
    let peers = {
        let views = st.health.peers.lock().expect("health lock");
        // Only voters can take leadership; a learner still catching up is not a peer here.
        let membership = st.cluster.membership();
        membership
            .nodes
            .iter()
            .filter(|(id, _)| **id != st.cluster.id() && membership.voters.contains(*id))
            .map(|(id, m)| {
                let view = views.get(id);
                Peer {
                    id: *id,
                    role: m.role,
                    never_lead: m.never_lead,
                    answered: view.and_then(|v| v.report.as_ref()).map(|r| PeerReport {
                        routes_up: r.routes_up(),
                        routes_cut: r.routes_cut,
                    }),
                    eligible_since_ms: view.and_then(|v| v.eligible_since_ms),
                    lost_log_polls: view.map_or(0, |v| v.lost_log_polls),
                }
            })
            .collect()
    };
    let now_ms = (st.clock)();
    View {
        now_ms,
        uptime_ms: now_ms.saturating_sub(started_ms),
        me: Me {
            id: st.cluster.id(),
            role: me.role,
            never_lead: me.never_lead,
            drained,
            healthy: report.healthy,
            clock_judged: st.clocks.judged(),
            unhealthy_cause: report.unhealthy_cause,
            routes_cut: report.routes_cut,
        },
        peers,
        is_leader: st.cluster.is_leader(),
        leaderless_ms,
        standby_after_ms: st.health.standby_after_ms,
        change_on_record,
        failback: st.health.failover.failback,
        failback_stabilization_ms: st.health.failover.failback_stabilization_s * 1000,
    }
}

/// Tells Raft whether this node stands for election, when that changes.
fn set_elect(st: &Failover, view: &View, d: &Decision) {
    let mut last = st.health.elect_enabled.lock().expect("health lock");
    if *last != Some(d.elect) {
        st.cluster.set_elect(d.elect);
        tracing::info!(
            elect = d.elect,
            healthy = view.me.healthy,
            drained = view.me.drained,
            never_lead = view.me.never_lead,
            leaderless_ms = view.leaderless_ms,
            "election participation set"
        );
        *last = Some(d.elect);
    }
}

/// How long (ms) this node has known no leader that answers its health polls saying
/// it leads; 0 while it leads or its leader so answers. (A leader that crashed and
/// came back answers, but as a follower or candidate: with only a node that may not
/// lead holding the longer log, counting it as present kept the cluster leaderless.)
/// Measured every round, so that a node drained later starts from a current clock.
fn leaderless_for(st: &Failover) -> u64 {
    let now = (st.clock)();
    let reachable = match st.cluster.leader() {
        Some((id, _)) if id == st.cluster.id() => true,
        Some((id, _)) => st
            .health
            .peers
            .lock()
            .expect("health lock")
            .get(&id)
            .is_some_and(|v| v.report.as_ref().is_some_and(|r| r.leads)),
        None => false,
    };
    let mut since = st.health.leaderless_since_ms.lock().expect("health lock");
    if reachable {
        *since = None;
        return 0;
    }
    now.saturating_sub(*since.get_or_insert(now))
}

/// Starts a handoff to `to` unless one is under way. It runs on its own: the old leader
/// waits for the new leader's record of the change, which a leader whose storage stalls
/// cannot apply until the stall ends, and its checks must go on meanwhile.
fn spawn_handoff(st: &Arc<Failover>, to: NodeId, cause: LeaderChangeCause) {
    use std::sync::atomic::Ordering;
    if st.health.handing_over.swap(true, Ordering::AcqRel) {
        return;
    }
    let st = st.clone();
    crate::runtime::spawn(async move {
        handoff(&st, to, cause).await;
        st.health.handing_over.store(false, Ordering::Release);
    });
}

/// Transfers leadership to `to`, telling it the cause so it records the change as such.
async fn handoff(st: &Failover, to: NodeId, cause: LeaderChangeCause) {
    let to_name = st
        .cluster
        .members()
        .get(&to)
        .map_or_else(|| to.to_string(), |m| m.name.clone());
    let cause_name = cause.as_str();
    match st
        .cluster
        .transfer_leader(to, cause, st.transfer_timeout)
        .await
    {
        Ok(()) => tracing::info!(to = %to_name, cause = cause_name, "leadership handed over"),
        Err(e) => {
            tracing::warn!(to = %to_name, cause = cause_name, error = %e, "leadership handoff failed; will retry")
        }
    }
}
