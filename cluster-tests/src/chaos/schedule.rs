//! Faults and their schedule. Nodes are named by id (1 main, 2 dr, 3 bk); a fault aimed
//! at `Leader` hits whichever node leads when it fires.

use super::rng::Rng;
use std::fmt;

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Node(u64),
    /// The node leading when the fault fires (main if none does).
    Leader,
}

/// One fault; every fault ends by itself after its duration, and all end when the
/// fault phase does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The node's host crashes (unsynced writes are lost) and restarts after `down_ms`.
    Crash { node: Target, down_ms: u64 },
    /// Two nodes crash together: the cluster loses its quorum until one is back.
    CrashTwo { a: u64, b: u64, down_ms: u64 },
    /// Every node crashes at once (a power cut across sites).
    PowerLoss { down_ms: u64 },
    /// The node is cut off from the other two nodes, both ways.
    Isolate { node: Target, ms: u64 },
    /// Messages from `from` to `to` are dropped; the other way works.
    OneWay { from: u64, to: u64, ms: u64 },
    /// Messages between two nodes are held (not lost) and delivered when released.
    Hold { a: u64, b: u64, ms: u64 },
    /// Messages between two nodes take up to `latency_ms`.
    Latency {
        a: u64,
        b: u64,
        latency_ms: u64,
        ms: u64,
    },
    /// Each message between two nodes breaks the link with this chance (per thousand).
    Loss {
        a: u64,
        b: u64,
        per_mille: u64,
        ms: u64,
    },
    /// The node's storage commits stall (a gray failure: it still answers).
    StallStorage { node: Target, ms: u64 },
    /// The node's key-encryption-key provider fails.
    KekFail { node: Target, ms: u64 },
    /// Every acquirer route is unreachable from the node.
    BlockRoutes { node: Target, ms: u64 },
    /// The node's wall clock steps `offset_ms` (a bad time source, a resumed virtual
    /// machine); one node's at a time, so that the others are a majority of good clocks.
    ClockStep {
        node: Target,
        offset_ms: i64,
        ms: u64,
    },
    /// An acquirer's host crashes (its books survive) and restarts after `down_ms`.
    AcquirerCrash { route: usize, down_ms: u64 },
    /// The node's machine is replaced, as an operator does it: the member is removed
    /// (a leader hands leadership away first), its host comes back empty with a new
    /// node id, is added as a learner, catches up and is promoted to voter. The
    /// operator retries each step until it holds, through whatever else is failing.
    Replace { node: Target },
    /// The node's host crashes and comes back with an empty disk under its old id (a
    /// replaced disk, the runbook's answer to a corrupt log or vault). Named scenarios
    /// only: Raft counts on a node keeping what it acknowledged, so wiping one while
    /// it is part of the only quorum that holds an entry loses that entry, and the
    /// random schedule does not know when that is.
    Wipe { node: Target, down_ms: u64 },
}

/// A fault and when it fires, relative to the start of the fault phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub at_ms: u64,
    pub fault: Fault,
}

/// The names of the nodes, by id.
pub const NODES: [&str; 3] = ["main", "dr", "bk"];

/// A node's host name.
pub fn name(id: u64) -> &'static str {
    NODES[(id - 1) as usize]
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(id) => f.write_str(name(*id)),
            Target::Leader => f.write_str("the leader"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::Crash { node, down_ms } => write!(f, "crash {node}, restart after {down_ms} ms"),
            Fault::CrashTwo { a, b, down_ms } => write!(
                f,
                "crash {} and {}, restart after {down_ms} ms",
                name(a),
                name(b)
            ),
            Fault::PowerLoss { down_ms } => {
                write!(f, "power loss on every node, restart after {down_ms} ms")
            }
            Fault::Isolate { node, ms } => write!(f, "isolate {node} for {ms} ms"),
            Fault::OneWay { from, to, ms } => {
                write!(f, "drop {} -> {} for {ms} ms", name(from), name(to))
            }
            Fault::Hold { a, b, ms } => write!(f, "hold {} <-> {} for {ms} ms", name(a), name(b)),
            Fault::Latency {
                a,
                b,
                latency_ms,
                ms,
            } => write!(
                f,
                "latency up to {latency_ms} ms on {} <-> {} for {ms} ms",
                name(a),
                name(b)
            ),
            Fault::Loss {
                a,
                b,
                per_mille,
                ms,
            } => write!(
                f,
                "loss {per_mille}‰ on {} <-> {} for {ms} ms",
                name(a),
                name(b)
            ),
            Fault::StallStorage { node, ms } => write!(f, "stall storage on {node} for {ms} ms"),
            Fault::KekFail { node, ms } => write!(f, "fail the KEK provider on {node} for {ms} ms"),
            Fault::BlockRoutes { node, ms } => {
                write!(f, "block acquirer routes from {node} for {ms} ms")
            }
            Fault::ClockStep {
                node,
                offset_ms,
                ms,
            } => write!(f, "step {node}'s clock {offset_ms:+} ms for {ms} ms"),
            Fault::AcquirerCrash { route, down_ms } => write!(
                f,
                "crash acquirer {}, restart after {down_ms} ms",
                kura_node::sim::ROUTES[route]
            ),
            Fault::Replace { node } => write!(f, "replace {node} with a new member"),
            Fault::Wipe { node, down_ms } => {
                write!(f, "wipe {node}'s disk, restart it empty after {down_ms} ms")
            }
        }
    }
}

/// A random schedule for a fault phase of `phase_ms`: a handful of faults of every
/// kind, overlapping at times, none starting in the phase's last second.
pub fn random(rng: &mut Rng, phase_ms: u64) -> Vec<Scheduled> {
    let n = rng.range(3, 7);
    let mut out: Vec<Scheduled> = (0..n)
        .map(|_| Scheduled {
            at_ms: rng.range(0, phase_ms - 1_000),
            fault: random_fault(rng),
        })
        .collect();
    out.sort_by_key(|s| s.at_ms);
    out
}

fn node(rng: &mut Rng) -> u64 {
    rng.range(1, 3)
}

fn two_nodes(rng: &mut Rng) -> (u64, u64) {
    let a = node(rng);
    (a, a % 3 + 1)
}

fn target(rng: &mut Rng) -> Target {
    if rng.percent(60) {
        Target::Leader
    } else {
        Target::Node(node(rng))
    }
}

fn random_fault(rng: &mut Rng) -> Fault {
    let ms = rng.range(500, 5_000);
    match rng.range(0, 99) {
        0..=21 => Fault::Crash {
            node: target(rng),
            down_ms: if rng.percent(25) {
                rng.range(6_000, 10_000) // long enough to need a snapshot
            } else {
                rng.range(200, 4_000)
            },
        },
        22..=25 => {
            let (a, b) = two_nodes(rng);
            Fault::CrashTwo {
                a,
                b,
                down_ms: rng.range(200, 2_000),
            }
        }
        26..=27 => Fault::PowerLoss {
            down_ms: rng.range(200, 2_000),
        },
        28..=35 => Fault::Isolate {
            node: if rng.percent(50) {
                Target::Node(1)
            } else {
                target(rng)
            },
            ms,
        },
        36..=39 => Fault::Replace { node: target(rng) },
        40..=47 => {
            let (from, to) = two_nodes(rng);
            Fault::OneWay { from, to, ms }
        }
        48..=53 => {
            let (a, b) = two_nodes(rng);
            Fault::Hold {
                a,
                b,
                ms: rng.range(200, 2_000),
            }
        }
        54..=61 => {
            let (a, b) = two_nodes(rng);
            Fault::Latency {
                a,
                b,
                latency_ms: rng.range(50, 400),
                ms,
            }
        }
        62..=69 => {
            let (a, b) = two_nodes(rng);
            Fault::Loss {
                a,
                b,
                per_mille: rng.range(5, 100),
                ms,
            }
        }
        70..=79 => Fault::StallStorage {
            node: target(rng),
            ms: rng.range(2_000, 6_000),
        },
        80..=87 => Fault::KekFail {
            node: target(rng),
            ms,
        },
        88..=91 => Fault::BlockRoutes {
            node: target(rng),
            ms,
        },
        92..=95 => Fault::ClockStep {
            node: target(rng),
            offset_ms: clock_step(rng),
            ms,
        },
        _ => Fault::AcquirerCrash {
            route: rng.range(0, 1) as usize,
            down_ms: rng.range(300, 4_000),
        },
    }
}

/// A step of a wall clock: mostly hours to weeks (ahead more often than behind), at
/// times seconds to minutes, just past the bound or well past it.
fn clock_step(rng: &mut Rng) -> i64 {
    const HOUR: u64 = 3_600_000;
    let size = if rng.percent(30) {
        rng.range(2_000, 600_000)
    } else {
        rng.range(HOUR, 40 * 24 * HOUR)
    } as i64;
    if rng.percent(70) {
        size
    } else {
        -size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_fault_turns_up_across_seeds() {
        let mut kinds = std::collections::HashSet::new();
        for seed in 0..200 {
            for s in random(&mut Rng::new(seed), 15_000) {
                kinds.insert(std::mem::discriminant(&s.fault));
                assert!(s.at_ms < 14_000);
            }
        }
        assert_eq!(kinds.len(), 14);
    }
}
