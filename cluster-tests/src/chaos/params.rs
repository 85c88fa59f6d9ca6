//! Everything a run varies, derived from its seed: Raft timeouts, network latency, the
//! workload's shape and the fault schedule.

use super::rng::Rng;
use super::schedule::{self, Fault, Scheduled};

/// The parameters of one run.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Small, so that a node down for a while must catch up from a snapshot.
    pub snapshot_every_entries: u64,
    pub log_kept_after_snapshot: u64,
    /// Deadline for one snapshot upload. Short: turmoil's TCP never retransmits, so a
    /// lost segment wedges a stream for good (real TCP would resume), and simulated
    /// snapshots are small.
    pub snapshot_send_timeout_ms: u64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Concurrent workload clients.
    pub clients: u32,
    /// Pause between one client's operations.
    pub think_ms: (u64, u64),
    /// How long faults are injected (the workload runs meanwhile).
    pub fault_phase_ms: u64,
    pub schedule: Vec<Scheduled>,
    /// Nodes acknowledge before fsync (`storage.unsafe_no_fsync`): the oracle must notice.
    pub unsafe_no_fsync: bool,
    /// Convergence and the first write after healing must come within this.
    pub recovery_bound_ms: u64,
    /// A node configured `never_lead` (bk, as in production), or none.
    pub never_lead: Option<u64>,
    /// `health.max_clock_offset_ms`; 0 turns the clock check off, and the oracle must
    /// notice a stepped leader's stamps.
    pub max_clock_offset_ms: u64,
}

impl Params {
    /// A run with a random fault schedule.
    pub fn from_seed(seed: u64) -> Params {
        let mut p = Params::base(seed);
        let mut rng = Rng::new(seed).fork(1);
        p.schedule = schedule::random(&mut rng, p.fault_phase_ms);
        // A stream of its own, so the draws above stay what they were before it existed.
        p.never_lead = Rng::new(seed).fork(2).percent(40).then_some(3);
        p
    }

    /// A run with the given faults and the seed's timings and workload.
    pub fn with_faults(seed: u64, fault_phase_ms: u64, faults: Vec<Scheduled>) -> Params {
        let mut p = Params::base(seed);
        p.fault_phase_ms = fault_phase_ms;
        p.schedule = faults;
        p
    }

    fn base(seed: u64) -> Params {
        let mut rng = Rng::new(seed);
        let election_min_ms = rng.range(150, 300);
        let latency_max_ms = rng.range(2, 20);
        Params {
            seed,
            heartbeat_ms: 50,
            election_min_ms,
            election_max_ms: election_min_ms + rng.range(100, 250),
            snapshot_every_entries: rng.range(40, 150),
            log_kept_after_snapshot: rng.range(5, 30),
            snapshot_send_timeout_ms: rng.range(2_000, 6_000),
            latency_min_ms: 1,
            latency_max_ms,
            clients: rng.range(2, 3) as u32,
            think_ms: (10, rng.range(60, 200)),
            fault_phase_ms: rng.range(8, 14) * 1000,
            schedule: Vec::new(),
            unsafe_no_fsync: false,
            recovery_bound_ms: 30_000,
            never_lead: None,
            max_clock_offset_ms: kura_node::failover::HealthSettings::default().max_clock_offset_ms,
        }
    }

    /// One line per fault, for failure reports.
    pub fn describe_schedule(&self) -> String {
        let mut lines: Vec<String> = self
            .never_lead
            .map(|n| format!("  (node {n} is configured never_lead)"))
            .into_iter()
            .collect();
        if self.schedule.is_empty() {
            lines.push("  (no faults)".into());
        }
        lines.extend(
            self.schedule
                .iter()
                .map(|s| format!("  +{:>6} ms  {}", s.at_ms, s.fault)),
        );
        lines.join("\n")
    }

    /// True if the schedule crashes a node (the run can measure failover).
    pub fn crashes(&self) -> bool {
        self.schedule.iter().any(|s| {
            matches!(
                s.fault,
                Fault::Crash { .. }
                    | Fault::CrashTwo { .. }
                    | Fault::PowerLoss { .. }
                    | Fault::Wipe { .. }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_parameters_and_schedule() {
        let (a, b) = (Params::from_seed(42), Params::from_seed(42));
        assert_eq!(a.describe_schedule(), b.describe_schedule());
        assert_eq!(a.election_min_ms, b.election_min_ms);
        assert_eq!(a.clients, b.clients);
        let differs =
            (0..20u64).any(|s| Params::from_seed(s).describe_schedule() != a.describe_schedule());
        assert!(differs);
    }

    #[test]
    fn timeouts_stay_valid() {
        for seed in 0..500 {
            let p = Params::from_seed(seed);
            assert!(p.heartbeat_ms < p.election_min_ms && p.election_min_ms < p.election_max_ms);
            assert!(p.schedule.iter().all(|s| s.at_ms < p.fault_phase_ms));
        }
    }
}
