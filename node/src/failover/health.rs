//! This node's checks, its view of the other nodes, and the settings that bound both.

use crate::member::NodeId;
use crate::setting::InvalidSetting;
use crate::vault::LeaderChangeCause;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

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
    /// Free space below this on the data directory's filesystem fails the
    /// `disk_space` check, which counts as a storage failure: a leader hands over
    /// before its disk fills, and the node does not stand for election. 0: no check.
    pub storage_min_free_bytes: u64,
    /// A node whose wall clock is further than this from the other nodes' (enough of
    /// them to make a majority with it) fails the `clock` check: it does not lead, and
    /// while it still does, it stamps commands with the others' time. 0: no check.
    pub max_clock_offset_ms: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            check_interval_ms: 250,
            unhealthy_threshold: 3,
            storage_canary_latency_ms_max: 500,
            ready_lag_entries_max: 1_000,
            storage_min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            max_clock_offset_ms: DEFAULT_MAX_CLOCK_OFFSET_MS,
        }
    }
}

impl HealthSettings {
    /// Half the free-space floor: the reserve a leader keeps by refusing what starts
    /// something new, and that a received snapshot must leave free.
    pub fn reserve_bytes(&self) -> u64 {
        self.storage_min_free_bytes / 2
    }
}

/// The default `storage_min_free_bytes`: 256 MiB, four of the log's 64 MiB segments
/// (a new segment takes its whole size at once), with room left for the vault's file
/// to grow by its write buffer and for a snapshot's chunk.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 << 20;

/// The default `max_clock_offset_ms`: clocks kept by NTP differ by milliseconds; half
/// a second is far from that, and far below anything the vault's times are used for
/// (one-time tokens live minutes, idempotency records a day).
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;

/// The `disk_space` check's outcome for `avail` bytes free (`None`: the filesystem
/// could not be measured) against `floor`.
pub(super) fn disk_space_check(avail: Option<u64>, floor: u64) -> (CheckStatus, String) {
    const MIB: u64 = 1 << 20;
    match avail {
        Some(free) if free >= floor => (
            CheckStatus::Pass,
            format!("{} MiB free on the data directory's filesystem", free / MIB),
        ),
        Some(free) => (
            CheckStatus::Fail,
            format!(
                "{} MiB free on the data directory's filesystem, under health.storage_min_free_bytes ({} MiB)",
                free / MIB,
                floor / MIB
            ),
        ),
        None => (
            CheckStatus::Fail,
            "the data directory's filesystem could not be measured".into(),
        ),
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
    ) -> Result<(), InvalidSetting> {
        if !(10..=60_000).contains(&self.check_interval_ms) {
            return Err(InvalidSetting::new(
                "health.check_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(1..=100).contains(&self.unhealthy_threshold) {
            return Err(InvalidSetting::new(
                "health.unhealthy_threshold",
                "must be between 1 and 100",
            ));
        }
        if self.storage_canary_latency_ms_max == 0 {
            return Err(InvalidSetting::new(
                "health.storage_canary_latency_ms_max",
                "must be greater than 0",
            ));
        }
        if self.max_clock_offset_ms > 3_600_000 {
            return Err(InvalidSetting::new(
                "health.max_clock_offset_ms",
                "must be at most 3600000 (an hour); 0 turns the clock check off",
            ));
        }
        if failover.failover_deadline_s == 0 {
            return Err(InvalidSetting::new(
                "failover.failover_deadline_s",
                "must be greater than 0",
            ));
        }
        let worst = self.worst_case_failover_ms(election_timeout_max_ms);
        if worst > failover.failover_deadline_s * 1000 {
            return Err(InvalidSetting::new(
                "failover.failover_deadline_s",
                format!(
                    "= {} is below the worst-case failover of these settings, {worst} ms (unhealthy_threshold x (check_interval_ms + storage_canary_latency_ms_max) + 2 x raft.election_timeout_max_ms)",
                    failover.failover_deadline_s
                ),
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

impl CheckStatus {
    /// Whether the check passed; `None` when it does not apply.
    pub fn passing(self) -> Option<bool> {
        match self {
            CheckStatus::Pass => Some(true),
            CheckStatus::Fail => Some(false),
            CheckStatus::NotConfigured => None,
        }
    }
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
    /// Storage (its canary and the disk's free space), keys and the clock have not
    /// failed `unhealthy_threshold` times in a row.
    pub healthy: bool,
    /// Can serve client requests now: healthy, knows a leader, caught up, not drained.
    pub ready: bool,
    pub drained: bool,
    /// Why the node is unhealthy (`unhealthy_storage`, `unhealthy_keys`,
    /// `unhealthy_clock`).
    pub unhealthy_cause: Option<LeaderChangeCause>,
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
    /// This node leads now, and is not handing leadership over. A follower counts its
    /// leader as present only while the leader answers saying so: a restarted leader
    /// still answers, but no longer leads; a leader whose handoff the target never took
    /// answers, but serves nothing until another node's election ends its term.
    #[serde(default)]
    pub leads: bool,
    /// The node's wall clock (Unix ms) when it made this report, for the others to
    /// measure their clocks against.
    #[serde(default)]
    pub clock_ms: Option<u64>,
    /// Under half its free-space floor (see [`Health::below_reserve`]).
    #[serde(default)]
    pub below_reserve: bool,
    /// The highest command level the node's build applies
    /// ([`crate::vault::COMMAND_LEVEL`]); 0 from a build from before levels, which
    /// counts as 1.
    #[serde(default)]
    pub command_level: u32,
}

/// The command level every member applies, if every member has said: the lowest of
/// this node's own level (`own`, when it is a member) and the levels in the other
/// members' reports (`others`; learners apply the log too). `None` while a member is
/// unheard: one that is down may come back on any build, and the level stays where it
/// was. A report without a level is a build's from before levels: 1.
pub fn agreed_level(
    own: Option<u32>,
    others: &[crate::member::NodeId],
    reports: &[(crate::member::NodeId, Option<NodeHealth>)],
) -> Option<u32> {
    let mut level = own.unwrap_or(u32::MAX);
    for v in others {
        let report = reports
            .iter()
            .find(|(id, _)| id == v)
            .and_then(|(_, r)| r.as_ref())?;
        level = level.min(report.command_level.max(1));
    }
    (level != u32::MAX).then_some(level)
}

impl NodeHealth {
    /// Some acquirer route answers from this node.
    pub fn routes_up(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.name == ROUTES && c.status == CheckStatus::Pass)
    }
}

#[derive(Debug, Default)]
pub(super) struct PeerView {
    pub(super) report: Option<NodeHealth>,
    /// Monotonic time (ms, the controller's clock) since when the peer has been eligible
    /// to lead.
    pub(super) eligible_since_ms: Option<u64>,
    /// Polls in a row in which the peer reported an empty log although this leader had
    /// replicated entries to it: it lost its data (a wiped disk).
    pub(super) lost_log_polls: u32,
}

/// This node's checks and its view of the other nodes.
#[derive(Debug)]
pub struct Health {
    pub settings: HealthSettings,
    pub failover: FailoverSettings,
    pub(super) checks: Mutex<BTreeMap<&'static str, Check>>,
    pub(super) peers: Mutex<BTreeMap<NodeId, PeerView>>,
    pub(super) elect_enabled: Mutex<Option<bool>>,
    /// Since when (ms) this node has known no leader that answers its health polls.
    pub(super) leaderless_since_ms: Mutex<Option<u64>>,
    /// How long a node that may not lead waits without a reachable leader before it
    /// stands anyway (see `control`).
    pub(super) standby_after_ms: u64,
    /// A handoff is under way (it runs beside the checks, which must go on meanwhile).
    pub(super) handing_over: std::sync::atomic::AtomicBool,
    /// Bytes free on the data directory's filesystem at the last check (`u64::MAX`:
    /// not measured).
    pub(super) free_bytes: std::sync::atomic::AtomicU64,
    /// At the last poll, so many voters were under their reserve that those with room
    /// were fewer than a quorum.
    pub(super) quorum_short: std::sync::atomic::AtomicBool,
    /// The highest command level every member has reported (see [`agreed_level`]):
    /// only ever raised, and 1 until every member has been heard.
    pub(super) cluster_level: std::sync::atomic::AtomicU32,
}

pub(super) const STORAGE: &str = "storage";
pub(super) const KEYS: &str = "kek_provider";
pub(super) const ROUTES: &str = "acquirer_routes";
pub(super) const RAFT: &str = "raft";
pub(super) const DISK_SPACE: &str = "disk_space";
pub(super) const CLOCK: &str = "clock";

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
            free_bytes: std::sync::atomic::AtomicU64::new(u64::MAX),
            quorum_short: std::sync::atomic::AtomicBool::new(false),
            cluster_level: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// The highest command level every member's build applies, as far as this node has
    /// heard: the leader proposes no command of a higher level (decision 0036).
    pub fn cluster_level(&self) -> u32 {
        self.cluster_level
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Raises the cluster's command level to `level` (never lowers it); true if it rose.
    pub(super) fn raise_cluster_level(&self, level: u32) -> bool {
        self.cluster_level
            .fetch_max(level, std::sync::atomic::Ordering::Relaxed)
            < level
    }

    /// Whether the data directory's filesystem had less than half of
    /// `storage_min_free_bytes` free at the last check: the reserve a leader keeps by
    /// refusing new cards and payments. Under the floor itself a leader hands over;
    /// it still leads under half of it only when no other node could take over (every
    /// disk is short).
    pub fn below_reserve(&self) -> bool {
        let free = self.free_bytes.load(std::sync::atomic::Ordering::Relaxed);
        free < self.settings.reserve_bytes()
    }

    /// Bytes free on the data directory's filesystem above `storage_min_free_bytes` at
    /// the last check (0 under it); `None` when free space is not measured (no floor
    /// configured, a simulated disk, no check run yet).
    pub fn room_above_floor(&self) -> Option<u64> {
        let free = self.free_bytes.load(std::sync::atomic::Ordering::Relaxed);
        (free != u64::MAX && self.settings.storage_min_free_bytes > 0)
            .then(|| free.saturating_sub(self.settings.storage_min_free_bytes))
    }

    /// Whether a leader keeps the reserve, refusing what starts something new: its own
    /// disk is under it, or at the last poll the voters known to be under theirs left
    /// fewer than a quorum with room (a write must reach a quorum's disks; followers
    /// that filled would stop, and the cluster with them).
    pub fn keeps_reserve(&self) -> bool {
        self.below_reserve() || self.quorum_short.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn record(
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
        let unhealthy_cause = if failed(STORAGE) || failed(DISK_SPACE) {
            Some(LeaderChangeCause::UnhealthyStorage)
        } else if failed(KEYS) {
            Some(LeaderChangeCause::UnhealthyKeys)
        } else if failed(CLOCK) {
            Some(LeaderChangeCause::UnhealthyClock)
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
            leads: false,
            clock_ms: None,
            below_reserve: self.below_reserve(),
            command_level: crate::vault::COMMAND_LEVEL,
        }
    }

    /// Whether node `id` answered this node's last health check of it.
    pub fn answered(&self, id: NodeId) -> bool {
        self.peers
            .lock()
            .expect("health lock")
            .get(&id)
            .is_some_and(|v| v.report.is_some())
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
        assert_eq!(err.key, "failover.failover_deadline_s", "{err}");
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
        assert!(
            !h.report(false).healthy,
            "the disk's space is not known yet"
        );
        h.record(DISK_SPACE, CheckStatus::NotConfigured, None, String::new());
        assert!(
            !h.report(false).healthy,
            "the clock has not been judged yet"
        );
        h.record(CLOCK, CheckStatus::NotConfigured, None, String::new());
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
        assert_eq!(r.unhealthy_cause, Some(LeaderChangeCause::UnhealthyStorage));
        h.record(STORAGE, CheckStatus::Pass, None, String::new());
        assert!(h.report(false).healthy, "one pass resets");
    }

    #[test]
    fn a_disk_under_its_floor_is_a_storage_failure() {
        let floor = 256 << 20;
        let (ok, message) = disk_space_check(Some(floor), floor);
        assert_eq!(ok, CheckStatus::Pass, "{message}");
        assert_eq!(message, "256 MiB free on the data directory's filesystem");
        let (low, message) = disk_space_check(Some(floor - 1), floor);
        assert_eq!(low, CheckStatus::Fail);
        assert!(message.contains("255 MiB free"), "{message}");
        assert!(
            message.contains("health.storage_min_free_bytes (256 MiB)"),
            "{message}"
        );
        assert_eq!(disk_space_check(None, floor).0, CheckStatus::Fail);

        let h = Health::new(HealthSettings::default(), FailoverSettings::default(), 300);
        for name in [STORAGE, KEYS, RAFT, DISK_SPACE, CLOCK] {
            h.record(name, CheckStatus::Pass, None, String::new());
        }
        assert!(h.report(false).ready);
        for _ in 0..h.settings.unhealthy_threshold {
            h.record(DISK_SPACE, low, None, message.clone());
        }
        let r = h.report(false);
        assert_eq!((r.healthy, r.ready), (false, false));
        assert_eq!(r.unhealthy_cause, Some(LeaderChangeCause::UnhealthyStorage));
        h.record(DISK_SPACE, CheckStatus::Pass, None, String::new());
        assert!(h.report(false).ready, "space freed: healthy again");
    }

    #[test]
    fn a_clock_out_of_bounds_makes_the_node_unhealthy_for_its_clock() {
        let h = Health::new(HealthSettings::default(), FailoverSettings::default(), 300);
        for name in [STORAGE, KEYS, RAFT, DISK_SPACE, CLOCK] {
            h.record(name, CheckStatus::Pass, None, String::new());
        }
        for _ in 0..h.settings.unhealthy_threshold {
            h.record(CLOCK, CheckStatus::Fail, None, String::new());
        }
        let r = h.report(false);
        assert_eq!((r.healthy, r.ready), (false, false));
        assert_eq!(r.unhealthy_cause, Some(LeaderChangeCause::UnhealthyClock));
        h.record(CLOCK, CheckStatus::Pass, None, String::new());
        assert!(h.report(false).ready, "back in bounds: healthy again");
        let wide = HealthSettings {
            max_clock_offset_ms: 3_600_001,
            ..HealthSettings::default()
        };
        let err = wide
            .validate(&FailoverSettings::default(), 300)
            .unwrap_err();
        assert_eq!(err.key, "health.max_clock_offset_ms");
    }

    #[test]
    fn the_reserve_is_half_the_floor_and_unmeasured_space_is_not_short() {
        let settings = HealthSettings {
            storage_min_free_bytes: 100,
            ..HealthSettings::default()
        };
        let h = Health::new(settings.clone(), FailoverSettings::default(), 300);
        assert!(!h.below_reserve(), "not measured yet");
        let set = |free: u64| {
            h.free_bytes
                .store(free, std::sync::atomic::Ordering::Relaxed)
        };
        set(60);
        assert!(!h.below_reserve(), "under the floor, above the reserve");
        set(50);
        assert!(!h.below_reserve());
        set(49);
        assert!(h.below_reserve());
        let off = Health::new(
            HealthSettings {
                storage_min_free_bytes: 0,
                ..settings
            },
            FailoverSettings::default(),
            300,
        );
        off.free_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        assert!(!off.below_reserve(), "no floor, no reserve");
    }

    #[test]
    fn the_cluster_level_is_the_lowest_every_member_reports_and_never_falls() {
        let at = |level: u32| {
            Some(NodeHealth {
                command_level: level,
                ..Health::new(HealthSettings::default(), FailoverSettings::default(), 300)
                    .report(false)
            })
        };
        let others = [2, 3];
        // Every member heard: the lowest level; a build from before levels counts as 1.
        assert_eq!(
            agreed_level(Some(2), &others, &[(2, at(2)), (3, at(2))]),
            Some(2)
        );
        assert_eq!(
            agreed_level(Some(2), &others, &[(2, at(2)), (3, at(1))]),
            Some(1)
        );
        assert_eq!(
            agreed_level(Some(1), &others, &[(2, at(2)), (3, at(2))]),
            Some(1)
        );
        assert_eq!(
            agreed_level(Some(2), &others, &[(2, at(0)), (3, at(2))]),
            Some(1)
        );
        // One unheard, or not answering: nothing is known.
        assert_eq!(agreed_level(Some(2), &others, &[(2, at(2))]), None);
        assert_eq!(
            agreed_level(Some(2), &others, &[(2, at(2)), (3, None)]),
            None
        );
        // Not a member itself (a node being added): the members' levels alone.
        assert_eq!(
            agreed_level(None, &others, &[(2, at(2)), (3, at(2))]),
            Some(2)
        );
        assert_eq!(agreed_level(None, &[], &[]), None);

        let h = Health::new(HealthSettings::default(), FailoverSettings::default(), 300);
        assert_eq!(h.cluster_level(), 1, "until every member is heard");
        assert!(h.raise_cluster_level(2));
        assert!(
            !h.raise_cluster_level(1),
            "a member that goes quiet lowers nothing"
        );
        assert!(!h.raise_cluster_level(2));
        assert_eq!(h.cluster_level(), 2);
    }
}
