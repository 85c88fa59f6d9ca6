//! Deterministic chaos: the real node code (openraft, redb on a simulated disk, the
//! HTTP API, the failover controller) on turmoil hosts, with two acquirer hosts, a
//! workload, a fault schedule and the oracle. Everything in a run derives from its
//! seed, so a seed replays byte for byte (compare [`Report::trace_hash`]).

mod params;
mod rng;
mod schedule;
mod workload;

pub use params::Params;
pub use rng::Rng;
pub use schedule::{Fault, Scheduled, Target, NODES};

use crate::oracle::{self, AcquirerTxn, Evidence, LeaderSample, Recovery, Violation};
use kura_node::acquirer::protocol::TxnState;
use kura_node::acquirer::sim::Ledger;
use kura_node::faults::FaultState;
use kura_node::runtime::Rt;
use kura_node::sim::{self, Probe};
use kura_node::store::{DatabaseFile, SimDisk};
use schedule::name;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

/// What the workload knows of a token it created.
#[derive(Debug, Clone)]
struct TokenInfo {
    member: Option<String>,
    one_time: bool,
    /// A client asked to delete it (whatever the answer): a `404` may be legitimate.
    delete_asked: bool,
}

/// State shared by the driver and the client hosts (all on one thread).
#[derive(Default)]
struct Shared {
    trace: Vec<String>,
    events: Vec<oracle::Event>,
    secret_key: Option<String>,
    ready_at_ms: Option<u64>,
    /// Workers stop; the checker starts its recovery write.
    stop: bool,
    /// Workers whose last operation has completed.
    workers_done: u32,
    converged_at_ms: Option<u64>,
    /// The recovery deadline passed: the checker reads back what it can.
    give_up: bool,
    first_write_at_ms: Option<u64>,
    done: bool,
    tokens: BTreeMap<String, TokenInfo>,
    card_on_file: Vec<String>,
    payments: Vec<String>,
    orders: Vec<String>,
    payments_seen: Vec<oracle::PaymentSeen>,
    /// The clients' TLS, from the run's certificates.
    tls: Option<ClientTls>,
    /// Each host's node id now (main, dr, bk): a replaced machine has a new one.
    ids: [u64; 3],
    /// The id the next new machine gets.
    next_id: u64,
    /// Host slots whose machines the schedule replaces, in order; the operator takes
    /// them one at a time.
    replace_queue: VecDeque<u64>,
    /// The operator is working on a replacement.
    replacing: bool,
    /// The operator asks the driver to put a new, empty machine on a host: (slot, id).
    new_machine: Option<(u64, u64)>,
    replacements: Vec<Replacement>,
}

/// One machine replaced by the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The host (1 = main, 2 = dr, 3 = bk).
    pub slot: u64,
    pub old_id: u64,
    pub new_id: u64,
    /// When the schedule asked for it, the old member's removal took effect, and the
    /// new member became a voter (`None`: it never did).
    pub asked_ms: u64,
    pub removed_ms: Option<u64>,
    pub promoted_ms: Option<u64>,
}

/// What the simulated clients present: merchants trust the CA; the checker is also an
/// operator.
#[derive(Clone)]
struct ClientTls {
    client: Arc<rustls::ClientConfig>,
    operator: Arc<rustls::ClientConfig>,
}

#[derive(Clone, Default)]
struct World(Arc<Mutex<Shared>>);

impl World {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().expect("world lock")
    }

    fn trace(&self, line: String) {
        let t = turmoil::sim_elapsed().unwrap_or_default().as_millis();
        self.lock().trace.push(format!("{t} {line}"));
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub params: Params,
    pub violations: Vec<Violation>,
    /// SHA-256 of the trace (simulated times, faults, every client answer).
    pub trace_hash: String,
    pub trace: Vec<String>,
    /// For every lone crash of the leader: simulated ms until a client write was
    /// acknowledged (by the new leader: the old one is down).
    pub failover_ms: Vec<u64>,
    /// Operations the clients completed, and how many were acknowledged writes.
    pub ops: usize,
    pub acked_writes: usize,
    pub sim_ms: u64,
    /// Every fault as it fired: (simulated ms, fault, the node it hit if it hit one).
    pub fired: Vec<(u64, Fault, Option<u64>)>,
    /// Each term's leader when first seen: (simulated ms, node id, term).
    pub terms: Vec<(u64, u64, u64)>,
    /// Every crashed node with the last log index it held when it went down.
    pub crashed_at_index: Vec<(u64, u64)>,
    /// Who led at the end, and the leader change each node recorded.
    pub final_leadership: Option<oracle::FinalLeadership>,
    /// Per node (1..=3) at the end: the index up to which its log was purged.
    pub final_purged: Vec<Option<u64>>,
    /// Every machine replaced.
    pub replacements: Vec<Replacement>,
    /// Crashes that found log writes not yet synced, and that left one in part (a
    /// record the next open had to judge).
    pub log_unsynced_at_crash: u64,
    pub log_torn_at_crash: u64,
    /// Crashes that found database writes (the metadata, the vault) not yet synced,
    /// and that left a database file mixed (some changed sectors on the disk, some
    /// not, for redb's commit slots to judge).
    pub db_unsynced_at_crash: u64,
    pub db_mixed_at_crash: u64,
    /// Crashes that came as a database file was being synced: the node's metadata (a
    /// save of its vote or its log's bounds) or the vault (a durable commit), cut off
    /// midway.
    pub cuts_in_metadata_sync: u64,
    pub cuts_in_vault_sync: u64,
    /// Comparisons of the members' vaults that agreed, and that could not hear every
    /// member (one that differed is a violation).
    pub compares_agreed: u64,
    pub compares_incomplete: u64,
    /// Each host's node id at the end (main, dr, bk).
    pub final_ids: [u64; 3],
    /// The voters in the final leader's membership, and all its members' ids.
    pub final_voters: Vec<u64>,
    pub final_members: Vec<u64>,
}

impl Report {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        replay_command(self.seed, self.params.unsafe_no_fsync)
    }

    /// A failure report: seed, schedule, violations, replay command.
    pub fn describe_failure(&self) -> String {
        format!(
            "seed {} violated {} propert{}:\n{}\nfault schedule:\n{}\nreplay: {}",
            self.seed,
            self.violations.len(),
            if self.violations.len() == 1 {
                "y"
            } else {
                "ies"
            },
            self.violations
                .iter()
                .take(20)
                .map(|v| format!("  - {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.params.describe_schedule(),
            self.replay_command()
        )
    }
}

/// The command that replays `seed` (in a fresh process, as sweeps run it).
pub fn replay_command(seed: u64, unsafe_no_fsync: bool) -> String {
    if unsafe_no_fsync {
        format!("scripts/chaos replay {seed} --unsafe-no-fsync")
    } else {
        format!("just chaos-replay {seed}   (or: scripts/chaos replay {seed})")
    }
}

/// Something the driver will undo when a fault's time is up (or at healing).
#[derive(Debug, Clone, Copy)]
enum Undo {
    Restart(u64),
    RestartAcquirer(usize),
    Repair(u64, u64),
    RepairOneway(u64, u64),
    Release(u64, u64),
    Latency(u64, u64),
    Loss(u64, u64),
    ClearFaults(u64),
}

struct Driver {
    params: Params,
    probe: Probe,
    disks: Vec<SimDisk>,
    world: World,
    phase_start: Option<u64>,
    next_fault: usize,
    undo: Vec<(u64, Undo)>,
    healed_at: Option<u64>,
    next_sample: u64,
    next_converge_check: u64,
    leaders: Vec<LeaderSample>,
    last_leader: BTreeMap<u64, u64>,
    leader_crashes: Vec<u64>,
    terms: Vec<(u64, u64, u64)>,
    crashed_at_index: Vec<(u64, u64)>,
    fired: Vec<(u64, Fault, Option<u64>)>,
    invariant_reports: Vec<String>,
    converge_detail: String,
    /// Crashes that found log writes not yet synced, and that left one in part.
    log_unsynced_at_crash: u64,
    log_torn_at_crash: u64,
    db_unsynced_at_crash: u64,
    db_mixed_at_crash: u64,
    cuts_in_metadata_sync: u64,
    cuts_in_vault_sync: u64,
    /// Crashes waiting for their node's next database sync (see [`Driver::arm_cut`]).
    armed: Vec<ArmedCut>,
}

/// A crash that comes at its node's next sync of a database file, or at `deadline`.
#[derive(Debug, Clone, Copy)]
struct ArmedCut {
    id: u64,
    deadline: u64,
    down_ms: u64,
}

/// How long an armed crash waits for its node's next database sync (a leader under
/// load makes the vault durable every 250 ms) before it comes anyway.
const CUT_WAIT_MS: u64 = 1_000;

impl Driver {
    fn trace(&self, now: u64, line: String) {
        self.world.lock().trace.push(format!("{now} driver {line}"));
    }

    /// The node leading now (highest term), if any.
    fn leader(&self) -> Option<u64> {
        (1..=3u64)
            .filter_map(|id| self.probe.status(id).map(|s| (id, s)))
            .filter(|(_, s)| s.state == "leader")
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    fn resolve(&self, t: Target) -> u64 {
        match t {
            Target::Node(id) => id,
            Target::Leader => self.leader().unwrap_or(1),
        }
    }

    /// Crashes node `id`. `timed`: a lone crash of the leader, from which the run
    /// measures failover (not a crash of two or three nodes, which waits for restarts).
    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, now: u64, id: u64, timed: bool) {
        if !sim.is_host_running(name(id)) {
            return;
        }
        if timed && self.leader() == Some(id) {
            self.leader_crashes.push(now);
        }
        if let Some(s) = self.probe.status(id) {
            self.crashed_at_index.push((id, s.last_log_index));
        }
        // The power goes before the process lets go of its database, with part of
        // what the node wrote to its log since its last sync on the disk.
        let torn = Rng::new(self.params.seed)
            .fork(0x7042 + self.crashed_at_index.len() as u64 * 7 + id)
            .next_u64();
        let disk = &self.disks[(id - 1) as usize];
        let found = match disk.take_cut() {
            Some(found) => {
                // The power went at the sync: nothing written since reaches the disk.
                disk.crash();
                found
            }
            None => disk.crash_torn(torn),
        };
        match found.in_database_sync {
            Some(DatabaseFile::Metadata) => self.cuts_in_metadata_sync += 1,
            Some(DatabaseFile::Vault) => self.cuts_in_vault_sync += 1,
            None => {}
        }
        self.log_unsynced_at_crash += u64::from(found.log_files_unsynced > 0);
        self.log_torn_at_crash += u64::from(found.log_writes_torn > 0);
        self.db_unsynced_at_crash += u64::from(found.db_files_unsynced > 0);
        self.db_mixed_at_crash += u64::from(found.db_files_mixed > 0);
        self.probe.forget(id);
        sim.crash(name(id));
    }

    /// Arms a crash of node `id` at its next sync of a database file (see
    /// [`SimDisk::arm_cut_at_database_sync`]); [`Driver::fire_cuts`] crashes the host
    /// once the power has gone, or at the deadline.
    fn arm_cut(&mut self, now: u64, id: u64, down_ms: u64, seed: u64) {
        let file = if seed & 1 == 0 {
            DatabaseFile::Vault
        } else {
            DatabaseFile::Metadata
        };
        self.disks[(id - 1) as usize].arm_cut_at_database_sync(file, seed >> 1);
        self.armed.push(ArmedCut {
            id,
            deadline: now + CUT_WAIT_MS,
            down_ms,
        });
        self.trace(
            now,
            format!(
                "{}: the power goes at its next sync of its {}",
                name(id),
                match file {
                    DatabaseFile::Vault => "vault (a durable commit)",
                    DatabaseFile::Metadata => "metadata",
                }
            ),
        );
    }

    /// Crashes the hosts whose armed cut went off, or whose deadline passed; `healing`:
    /// the fault phase ends, and every armed crash comes now (restarting at once).
    fn fire_cuts(&mut self, sim: &mut turmoil::Sim<'_>, now: u64, healing: bool) {
        for a in std::mem::take(&mut self.armed) {
            let disk = &self.disks[(a.id - 1) as usize];
            let went = disk.has_cut();
            if !went && !disk.cut_armed() {
                // Another fault crashed or replaced the host first, disarming it.
                continue;
            }
            if !went && !healing && now < a.deadline {
                self.armed.push(a);
                continue;
            }
            disk.disarm_cut();
            self.trace(
                now,
                format!(
                    "{} crashes ({})",
                    name(a.id),
                    if went {
                        "the power went at a database sync"
                    } else {
                        "no database sync came"
                    }
                ),
            );
            self.crash(sim, now, a.id, true);
            if healing {
                sim.bounce(name(a.id));
            } else {
                self.undo.push((now + a.down_ms, Undo::Restart(a.id)));
            }
        }
    }

    fn set_fault(&self, id: u64, f: impl FnOnce(&mut FaultState)) {
        if let Some(sw) = self.probe.faults(id) {
            let mut s = sw.get();
            f(&mut s);
            sw.set(&s);
        }
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, now: u64, fault: Fault) {
        let until = |ms: u64| now + ms;
        let hit = match fault {
            Fault::Crash { node, .. }
            | Fault::Isolate { node, .. }
            | Fault::StallStorage { node, .. }
            | Fault::KekFail { node, .. }
            | Fault::BlockRoutes { node, .. }
            | Fault::Replace { node }
            | Fault::Wipe { node, .. } => Some(self.resolve(node)),
            // One node's clock at a time: a step while another's is stepped hits that one.
            Fault::ClockStep { node, .. } => Some(
                (1..=3)
                    .find(|id| {
                        self.probe
                            .faults(*id)
                            .is_some_and(|f| f.get().clock_offset_ms != 0)
                    })
                    .unwrap_or_else(|| self.resolve(node)),
            ),
            _ => None,
        };
        self.fired.push((now, fault, hit));
        let text = match hit {
            Some(id) => format!("{fault} ({})", name(id)),
            None => fault.to_string(),
        };
        match fault {
            Fault::Crash { down_ms, .. } => {
                let id = hit.expect("a crash hits a node");
                // Half the lone crashes wait for the node's next database sync, so that
                // redb's commit is cut off midway with part of its pages on the disk.
                let coin = Rng::new(self.params.seed)
                    .fork(0xC0_7700 + self.fired.len() as u64)
                    .next_u64();
                if coin & 1 == 0 && sim.is_host_running(name(id)) {
                    self.arm_cut(now, id, down_ms, coin >> 1);
                } else {
                    self.crash(sim, now, id, true);
                    self.undo.push((until(down_ms), Undo::Restart(id)));
                }
            }
            Fault::Wipe { down_ms, .. } => {
                let id = hit.expect("a wipe hits a node");
                self.crash(sim, now, id, true);
                self.disks[(id - 1) as usize].replace();
                self.undo.push((until(down_ms), Undo::Restart(id)));
            }
            Fault::CrashTwo { a, b, down_ms } => {
                for id in [a, b] {
                    self.crash(sim, now, id, false);
                    self.undo.push((until(down_ms), Undo::Restart(id)));
                }
            }
            Fault::PowerLoss { down_ms } => {
                for id in 1..=3 {
                    self.crash(sim, now, id, false);
                    self.undo.push((until(down_ms), Undo::Restart(id)));
                }
            }
            Fault::Isolate { ms, .. } => {
                let id = hit.expect("an isolation hits a node");
                for other in (1..=3).filter(|o| *o != id) {
                    sim.partition(name(id), name(other));
                    self.undo.push((until(ms), Undo::Repair(id, other)));
                }
            }
            Fault::OneWay { from, to, ms } => {
                sim.partition_oneway(name(from), name(to));
                self.undo.push((until(ms), Undo::RepairOneway(from, to)));
            }
            Fault::Hold { a, b, ms } => {
                sim.hold(name(a), name(b));
                self.undo.push((until(ms), Undo::Release(a, b)));
            }
            Fault::Latency {
                a,
                b,
                latency_ms,
                ms,
            } => {
                sim.set_link_max_message_latency(
                    name(a),
                    name(b),
                    Duration::from_millis(latency_ms),
                );
                self.undo.push((until(ms), Undo::Latency(a, b)));
            }
            Fault::Loss {
                a,
                b,
                per_mille,
                ms,
            } => {
                sim.set_link_fail_rate(name(a), name(b), per_mille as f64 / 1000.0);
                self.undo.push((until(ms), Undo::Loss(a, b)));
            }
            Fault::StallStorage { ms, .. } => {
                let id = hit.expect("a stall hits a node");
                self.set_fault(id, |s| s.storage_stalled = true);
                self.undo.push((until(ms), Undo::ClearFaults(id)));
            }
            Fault::KekFail { ms, .. } => {
                let id = hit.expect("a KEK failure hits a node");
                self.set_fault(id, |s| s.kek_failing = true);
                self.undo.push((until(ms), Undo::ClearFaults(id)));
            }
            Fault::BlockRoutes { ms, .. } => {
                let id = hit.expect("a route block hits a node");
                self.set_fault(id, |s| s.routes_blocked = true);
                self.undo.push((until(ms), Undo::ClearFaults(id)));
            }
            Fault::ClockStep { offset_ms, ms, .. } => {
                let id = hit.expect("a clock step hits a node");
                self.set_fault(id, |s| s.clock_offset_ms = offset_ms);
                self.undo.push((until(ms), Undo::ClearFaults(id)));
            }
            Fault::AcquirerCrash { route, down_ms } => {
                let host = sim::ROUTES[route];
                if sim.is_host_running(host) {
                    sim.crash(host);
                }
                self.undo
                    .push((until(down_ms), Undo::RestartAcquirer(route)));
            }
            Fault::Replace { .. } => {
                let slot = hit.expect("a replacement hits a node");
                let mut w = self.world.lock();
                w.replace_queue.push_back(slot);
                let old_id = w.ids[(slot - 1) as usize];
                w.replacements.push(Replacement {
                    slot,
                    old_id,
                    new_id: 0,
                    asked_ms: now,
                    removed_ms: None,
                    promoted_ms: None,
                });
            }
        }
        self.trace(now, format!("fault: {text}"));
    }

    fn revert(&mut self, sim: &mut turmoil::Sim<'_>, now: u64, u: Undo) {
        match u {
            Undo::Restart(id) => {
                if !sim.is_host_running(name(id)) {
                    sim.bounce(name(id));
                }
            }
            Undo::RestartAcquirer(r) => {
                if !sim.is_host_running(sim::ROUTES[r]) {
                    sim.bounce(sim::ROUTES[r]);
                }
            }
            Undo::Repair(a, b) => sim.repair(name(a), name(b)),
            Undo::RepairOneway(a, b) => sim.repair_oneway(name(a), name(b)),
            Undo::Release(a, b) => sim.release(name(a), name(b)),
            Undo::Latency(a, b) => sim.set_link_max_message_latency(
                name(a),
                name(b),
                Duration::from_millis(self.params.latency_max_ms),
            ),
            Undo::Loss(a, b) => sim.set_link_fail_rate(name(a), name(b), 0.0),
            Undo::ClearFaults(id) => self.set_fault(id, |s| *s = FaultState::default()),
        }
        self.trace(now, format!("heal: {u:?}"));
    }

    /// Puts a new, empty machine with node id `id` on host `slot` (the operator has
    /// removed the old member) and boots it.
    fn new_machine(&mut self, sim: &mut turmoil::Sim<'_>, now: u64, slot: u64, id: u64) {
        self.crash(sim, now, slot, false);
        self.disks[(slot - 1) as usize].replace();
        {
            let mut w = self.world.lock();
            w.ids[(slot - 1) as usize] = id;
            w.new_machine = None;
        }
        sim.bounce(name(slot));
        self.trace(now, format!("new machine on {} as node {id}", name(slot)));
    }

    fn sample_leaders(&mut self, now: u64) {
        for id in 1..=3u64 {
            if let Some(s) = self.probe.status(id) {
                if s.state == "leader" {
                    self.leaders.push(LeaderSample {
                        at_ms: now,
                        node: id,
                        term: s.term,
                    });
                    if self.last_leader.insert(s.term, id) != Some(id) {
                        self.terms.push((now, id, s.term));
                        self.trace(now, format!("leader {} term {}", name(id), s.term));
                    }
                }
            }
        }
    }

    /// True when every node runs, exactly one leads (and all agree), and every node has
    /// applied the same entries to the same state.
    fn converged(&mut self) -> bool {
        let statuses: Vec<_> = (1..=3u64).map(|id| self.probe.status(id)).collect();
        if statuses.iter().any(Option::is_none) {
            self.converge_detail = "a node is not running".into();
            return false;
        }
        let statuses: Vec<_> = statuses.into_iter().flatten().collect();
        let leaders = statuses.iter().filter(|s| s.state == "leader").count();
        let agreed = statuses
            .windows(2)
            .all(|w| w[0].leader_id == w[1].leader_id && w[0].term == w[1].term);
        if leaders != 1 || !agreed {
            self.converge_detail = format!(
                "leaders {leaders}, views {:?}",
                statuses
                    .iter()
                    .map(|s| (s.state.clone(), s.term, s.leader_id))
                    .collect::<Vec<_>>()
            );
            return false;
        }
        let (busy, ids) = {
            let w = self.world.lock();
            (w.replacing || !w.replace_queue.is_empty(), w.ids)
        };
        if busy {
            self.converge_detail = "the operator is still replacing a member".into();
            return false;
        }
        // Every node agrees the voters are the machines on the three hosts now.
        let mut want: Vec<u64> = ids.to_vec();
        want.sort_unstable();
        if let Some(s) = statuses.iter().find(|s| {
            let mut voters: Vec<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            voters.sort_unstable();
            voters != want || s.members.len() != 3
        }) {
            self.converge_detail = format!(
                "{} sees members {:?}, the hosts run {want:?}",
                s.name,
                s.members
                    .iter()
                    .map(|m| (m.id, m.voter))
                    .collect::<Vec<_>>()
            );
            return false;
        }
        let digests: Vec<_> = (1..=3u64).filter_map(|id| self.probe.digest(id)).collect();
        if digests.len() != 3 || digests.windows(2).any(|w| w[0] != w[1]) {
            self.converge_detail = statuses
                .iter()
                .map(|s| {
                    format!(
                        "{} {} term {} log {} applied {} snapshot {:?} purged {:?}",
                        s.name,
                        s.state,
                        s.term,
                        s.last_log_index,
                        s.applied_index,
                        s.snapshot_index,
                        s.purged_index
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            return false;
        }
        true
    }

    /// One driver step at simulated time `now`.
    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, now: u64) {
        let asked = self.world.lock().new_machine;
        if let Some((slot, id)) = asked {
            self.new_machine(sim, now, slot, id);
        }
        if now >= self.next_sample {
            self.next_sample = now + 10;
            self.sample_leaders(now);
        }
        let Some(start) = self.phase_start.or_else(|| {
            let ready = self.world.lock().ready_at_ms?;
            self.phase_start = Some(ready);
            self.trace(now, "fault phase starts".into());
            Some(ready)
        }) else {
            return;
        };
        if self.healed_at.is_none() {
            self.fire_cuts(sim, now, false);
            while let Some(s) = self.params.schedule.get(self.next_fault) {
                if start + s.at_ms > now {
                    break;
                }
                let fault = s.fault;
                self.next_fault += 1;
                self.apply(sim, now, fault);
            }
            let due: Vec<Undo> = {
                let (due, keep): (Vec<_>, Vec<_>) =
                    self.undo.drain(..).partition(|(t, _)| *t <= now);
                self.undo = keep;
                due.into_iter().map(|(_, u)| u).collect()
            };
            for u in due {
                self.revert(sim, now, u);
            }
            if now >= start + self.params.fault_phase_ms {
                self.fire_cuts(sim, now, true);
                for (_, u) in std::mem::take(&mut self.undo) {
                    self.revert(sim, now, u);
                }
                self.healed_at = Some(now);
                self.next_converge_check = now;
                self.world.lock().stop = true;
                self.trace(now, "healed".into());
            }
            return;
        }
        let healed = self.healed_at.expect("healed");
        let (converged, quiet) = {
            let w = self.world.lock();
            (
                w.converged_at_ms.is_some(),
                // Replicas can only agree once nobody writes: every worker has finished
                // and the checker's recovery write is done.
                w.workers_done == self.params.clients && w.first_write_at_ms.is_some(),
            )
        };
        if !quiet && now > healed + self.params.recovery_bound_ms {
            self.converge_detail = "clients still writing".into();
            self.world.lock().give_up = true;
        }
        if quiet && !converged && now >= self.next_converge_check {
            self.next_converge_check = now + 50;
            if self.converged() {
                for id in 1..=3u64 {
                    if let Some(Err(e)) = self.probe.validate(id) {
                        self.invariant_reports
                            .push(format!("node {}: validate: {e}", name(id)));
                    }
                }
                self.world.lock().converged_at_ms = Some(now);
                self.trace(now, "converged".into());
            } else if now > healed + self.params.recovery_bound_ms {
                self.world.lock().give_up = true;
            }
        }
    }
}

/// The config of the machine on host `slot` now: the hosts' current node ids in the
/// peers, as an operator writes them when a machine is replaced.
fn node_config(p: &Params, slot: u64, ids: [u64; 3]) -> kura_node::config::NodeConfig {
    let mut cfg = sim::config(slot);
    cfg.node_id = ids[(slot - 1) as usize];
    cfg.raft.heartbeat_interval_ms = p.heartbeat_ms;
    cfg.raft.election_timeout_min_ms = p.election_min_ms;
    cfg.raft.election_timeout_max_ms = p.election_max_ms;
    cfg.raft.snapshot_every_entries = p.snapshot_every_entries;
    cfg.raft.snapshot_grows_with_vault = false;
    cfg.raft.log_entries_kept_after_snapshot = p.log_kept_after_snapshot;
    cfg.raft.snapshot_send_timeout_ms = p.snapshot_send_timeout_ms;
    cfg.storage.unsafe_no_fsync = p.unsafe_no_fsync;
    cfg.health.max_clock_offset_ms = p.max_clock_offset_ms;
    cfg.failover.failback_stabilization_s = 2;
    for peer in &mut cfg.peers {
        let host = peer.id;
        peer.never_lead = p.never_lead == Some(host);
        peer.id = ids[(host - 1) as usize];
    }
    cfg
}

/// Runs one simulation and checks it. Never panics on a violation: the report says.
pub fn run(params: Params) -> Report {
    let seed = params.seed;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(sim::SIM_EPOCH_UNIX_S))
        .simulation_duration(Duration::from_millis(
            params.fault_phase_ms + params.recovery_bound_ms + 60_000,
        ))
        .min_message_latency(Duration::from_millis(params.latency_min_ms))
        .max_message_latency(Duration::from_millis(params.latency_max_ms))
        .tcp_capacity(1 << 16)
        .build();
    let probe = Probe::default();
    let pki = Arc::new(sim::SimPki::new(seed));
    let disks: Vec<SimDisk> = (0..3).map(|_| SimDisk::new()).collect();
    let world = World::default();
    {
        let mut w = world.lock();
        w.ids = [1, 2, 3];
        w.next_id = 4;
    }
    for slot in 1..=3u64 {
        let (disk, probe, params, world, pki) = (
            disks[(slot - 1) as usize].clone(),
            probe.clone(),
            params.clone(),
            world.clone(),
            pki.clone(),
        );
        let boots = Arc::new(AtomicU64::new(0));
        sim.host(name(slot), move || {
            let boot = boots.fetch_add(1, Ordering::SeqCst);
            let ids = world.lock().ids;
            sim::run_node(
                node_config(&params, slot, ids),
                disk.clone(),
                sim::node_seed(seed, slot, boot),
                probe.clone(),
                pki.clone(),
            )
        });
    }
    let ledgers: Vec<Ledger> = (0..2).map(|_| Ledger::default()).collect();
    for (r, ledger) in ledgers.iter().enumerate() {
        let (ledger, pki) = (ledger.clone(), pki.clone());
        let boots = Arc::new(AtomicU64::new(0));
        sim.host(sim::ROUTES[r], move || {
            let boot = boots.fetch_add(1, Ordering::SeqCst);
            sim::run_acquirer(
                ledger.clone(),
                sim::node_seed(seed, 10 + r as u64, boot),
                pki.clone(),
                sim::ROUTES[r],
            )
        });
    }
    world.lock().tls = Some(ClientTls {
        client: Arc::new(pki.client()),
        operator: Arc::new(pki.operator_client()),
    });
    // Clients spawn connection tasks through the Raft runtime, which wants a seed.
    let client_seed = |k: u64| sim::node_seed(seed, 100 + k, 0);
    sim.client(
        "checker",
        Rt::scope(client_seed(0), workload::checker(seed, world.clone())),
    );
    sim.client(
        "operator",
        Rt::scope(
            client_seed(50),
            workload::operator_actor(world.clone(), params.never_lead),
        ),
    );
    for c in 1..=params.clients {
        sim.client(
            format!("client{c}"),
            Rt::scope(
                client_seed(u64::from(c)),
                workload::worker(c, seed, params.think_ms, world.clone()),
            ),
        );
    }
    let mut driver = Driver {
        params: params.clone(),
        probe,
        disks,
        world: world.clone(),
        phase_start: None,
        next_fault: 0,
        undo: Vec::new(),
        healed_at: None,
        next_sample: 0,
        next_converge_check: 0,
        leaders: Vec::new(),
        last_leader: BTreeMap::new(),
        leader_crashes: Vec::new(),
        terms: Vec::new(),
        crashed_at_index: Vec::new(),
        fired: Vec::new(),
        invariant_reports: Vec::new(),
        converge_detail: String::new(),
        log_unsynced_at_crash: 0,
        log_torn_at_crash: 0,
        db_unsynced_at_crash: 0,
        db_mixed_at_crash: 0,
        cuts_in_metadata_sync: 0,
        cuts_in_vault_sync: 0,
        armed: Vec::new(),
    };
    let mut harness_error = None;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        driver.tick(&mut sim, now);
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                harness_error = Some(e.to_string());
                break;
            }
        }
    }
    let sim_ms = sim.elapsed().as_millis() as u64;
    let final_purged = (1..=3u64)
        .map(|id| driver.probe.status(id).and_then(|s| s.purged_index))
        .collect();
    let final_status = driver.leader().and_then(|slot| driver.probe.status(slot));
    let final_leadership = driver.leader().and_then(|slot| {
        let status = driver.probe.status(slot)?;
        let term = status.term;
        let since_ms = driver
            .terms
            .iter()
            .find(|&&(_, n, t)| t == term && n == slot)
            .map_or(sim_ms, |&(at, ..)| at);
        Some(oracle::FinalLeadership {
            term,
            // The id the nodes record, not the host's slot.
            leader: status.node_id,
            since_ms,
            end_ms: sim_ms,
            recorded: (1..=3u64)
                .filter(|id| driver.probe.status(*id).is_some())
                .map(|id| (id, driver.probe.last_leader_change(id)))
                .collect(),
        })
    });
    drop(sim);
    let mut w = world.lock();
    let mut invariant_reports = driver.probe.violations();
    invariant_reports.append(&mut driver.invariant_reports);
    let acquirer = ledgers
        .iter()
        .enumerate()
        .flat_map(|(r, l)| {
            let auths = l.authorizations();
            l.transactions()
                .into_values()
                .map(|t| AcquirerTxn {
                    route: sim::ROUTES[r].into(),
                    authorizations: auths.get(&t.txn_id).copied().unwrap_or(0),
                    approved_now: t.state == TxnState::Approved,
                    txn_id: t.txn_id,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let evidence = Evidence {
        events: std::mem::take(&mut w.events),
        payments: std::mem::take(&mut w.payments_seen),
        acquirer,
        leaders: std::mem::take(&mut driver.leaders),
        invariant_reports,
        recovery: Recovery {
            healed_at_ms: driver.healed_at.unwrap_or(sim_ms),
            converged_at_ms: w.converged_at_ms,
            first_write_at_ms: w.first_write_at_ms,
            bound_ms: params.recovery_bound_ms,
            detail: driver.converge_detail.clone(),
        },
        final_leadership: final_leadership.clone(),
    };
    let mut violations = oracle::check(&evidence);
    if let Some(e) = harness_error {
        violations.push(Violation {
            property: "harness",
            detail: format!("the simulation stopped: {e}"),
        });
    }
    let failover_ms = driver
        .leader_crashes
        .iter()
        .filter_map(|t0| {
            evidence
                .events
                .iter()
                .filter(|e| matches!(e.kind, oracle::EventKind::Ack { .. }))
                .map(|e| e.completed_ms)
                .filter(|t| t > t0)
                .min()
                .map(|t| t - t0)
        })
        .collect();
    let trace = std::mem::take(&mut w.trace);
    let mut h = Sha256::new();
    for line in &trace {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    Report {
        seed,
        params,
        violations,
        trace_hash: hex::encode(h.finalize()),
        ops: evidence.events.len(),
        acked_writes: evidence
            .events
            .iter()
            .filter(|e| matches!(e.kind, oracle::EventKind::Ack { .. }))
            .count(),
        trace,
        failover_ms,
        sim_ms,
        fired: driver.fired,
        terms: driver.terms,
        crashed_at_index: driver.crashed_at_index,
        final_leadership,
        final_purged,
        replacements: std::mem::take(&mut w.replacements),
        log_unsynced_at_crash: driver.log_unsynced_at_crash,
        log_torn_at_crash: driver.log_torn_at_crash,
        db_unsynced_at_crash: driver.db_unsynced_at_crash,
        db_mixed_at_crash: driver.db_mixed_at_crash,
        cuts_in_metadata_sync: driver.cuts_in_metadata_sync,
        cuts_in_vault_sync: driver.cuts_in_vault_sync,
        compares_agreed: driver.probe.comparisons("agreed"),
        compares_incomplete: driver.probe.comparisons("incomplete"),
        final_ids: w.ids,
        final_voters: final_status.as_ref().map_or_else(Vec::new, |s| {
            s.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
        }),
        final_members: final_status
            .map_or_else(Vec::new, |s| s.members.iter().map(|m| m.id).collect()),
    }
}

/// Starts the three nodes of a run with `seed` (no faults, no workload) and checks that
/// every simulated link carries TLS: a plain HTTP request to any node's client API,
/// peer or admin listener gets no answer, and the same request over TLS, trusting the
/// run's CA, does.
pub fn check_links_are_tls(seed: u64) -> Result<(), String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(sim::SIM_EPOCH_UNIX_S))
        .simulation_duration(Duration::from_secs(60))
        .build();
    let pki = Arc::new(sim::SimPki::new(seed));
    for id in 1..=3u64 {
        let (disk, pki) = (SimDisk::new(), pki.clone());
        sim.host(name(id), move || {
            sim::run_node(
                sim::config(id),
                disk.clone(),
                sim::node_seed(seed, id, 0),
                Probe::default(),
                pki.clone(),
            )
        });
    }
    let outcome = Arc::new(Mutex::new(Err("the probe did not finish".to_owned())));
    let (out, client_tls) = (outcome.clone(), pki.client());
    sim.client(
        "probe",
        Rt::scope(sim::node_seed(seed, 100, 0), async move {
            *out.lock().expect("outcome lock") = probe_links(client_tls).await;
            Ok(())
        }),
    );
    sim.run().map_err(|e| e.to_string())?;
    let r = outcome.lock().expect("outcome lock").clone();
    r
}

async fn probe_links(tls: rustls::ClientConfig) -> Result<(), String> {
    use kura_sdk::{Client, ClientConfig};
    let client = |port: u16, tls: Option<&rustls::ClientConfig>| {
        let mut cfg = ClientConfig::new(vec![format!("main:{port}")], "");
        cfg.attempts_max = 1;
        cfg.attempt_timeout = Duration::from_secs(2);
        if let Some(t) = tls {
            cfg = cfg.with_tls(t.clone()).expect("tls");
        }
        Client::with_connector(
            cfg,
            kura_node::net::Net::turmoil().connector,
            kura_node::net::spawner(),
        )
    };
    // Let the node come up first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for port in [sim::API_PORT, sim::RAFT_PORT, sim::ADMIN_PORT] {
        if let Ok(r) = client(port, None)
            .call(http::Method::GET, "/health/live", None)
            .await
        {
            return Err(format!(
                "plain HTTP on port {port} was answered: {}",
                r.status
            ));
        }
    }
    client(sim::API_PORT, Some(&tls))
        .call(http::Method::GET, "/health/live", None)
        .await
        .map(|_| ())
        .map_err(|e| format!("TLS to the client API failed: {e}"))
}
