//! The chaos oracle: properties checked over what the clients saw, what the acquirers
//! booked and what the probe sampled on the nodes. Pure functions over plain data, one
//! property per file, each with unit tests on hand-made histories that break it.

mod authorised_once;
mod leader_changes;
mod liveness;
mod lost_writes;
mod one_leader;
mod one_time_once;
mod reads;

use std::collections::BTreeMap;

/// How far an object (a token or a payment) has got. Every valid history moves an
/// object's level up only, so a level that goes down is a lost or reordered write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level {
    /// Tokens: 0 missing (never created, or lost), 1 active, 2 used (one-time), 3 gone
    /// (deleted). Payments: 0 pending, 1 authorized,
    /// 2 captured, 3 refunded, 4 voided, declined or failed.
    pub rank: u8,
    pub captured: u64,
    pub refunded: u64,
}

impl Level {
    /// A token that reads as `404` and was never deleted: not created yet, or lost.
    pub const TOKEN_MISSING: Level = Level::rank(0);
    /// A token that can be read and used.
    pub const TOKEN_ACTIVE: Level = Level::rank(1);
    /// A one-time token that was used.
    pub const TOKEN_USED: Level = Level::rank(2);
    /// A token that reads as `404` after someone asked to delete it.
    pub const TOKEN_GONE: Level = Level::rank(3);

    const fn rank(rank: u8) -> Level {
        Level {
            rank,
            captured: 0,
            refunded: 0,
        }
    }

    /// A payment's level from its API state and amounts; `None` for an unknown state.
    pub fn payment(state: &str, captured: u64, refunded: u64) -> Option<Level> {
        let rank = match state {
            "pending" => 0,
            "authorized" => 1,
            "captured" => 2,
            "refunded" => 3,
            "voided" | "declined" | "failed" => 4,
            _ => return None,
        };
        Some(Level {
            rank,
            captured,
            refunded,
        })
    }
}

/// One client operation, with simulated start and end times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub client: u32,
    pub invoked_ms: u64,
    pub completed_ms: u64,
    pub kind: EventKind,
}

/// What an operation proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The cluster acknowledged a write (`op`): `object` is at `level` or beyond from
    /// the moment of the answer.
    Ack {
        op: String,
        object: String,
        level: Level,
    },
    /// A read saw `object` at `level`. `settled` reads are made after the faults stopped
    /// and the replicas converged.
    Read {
        object: String,
        level: Level,
        settled: bool,
    },
}

/// A payment as the settled cluster reports it (found through its order id, so that
/// payments whose creation the client never heard back about are included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentSeen {
    pub payment_id: String,
    pub token: String,
    /// The token was a one-time token.
    pub one_time: bool,
    pub gateway_txn_id: String,
    pub state: String,
}

/// One transaction in one acquirer's books.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquirerTxn {
    pub route: String,
    pub txn_id: String,
    /// Authorisations the acquirer made for this id (its own counter).
    pub authorizations: u64,
    /// Approved and not reversed: the cardholder is being charged.
    pub approved_now: bool,
}

/// A node seen as leader of a term at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderSample {
    pub at_ms: u64,
    pub node: u64,
    pub term: u64,
}

/// How the cluster came back after the faults stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// When the last fault was healed.
    pub healed_at_ms: u64,
    /// When every node was up with one leader and identical applied state.
    pub converged_at_ms: Option<u64>,
    /// When the first write sent after healing was acknowledged.
    pub first_write_at_ms: Option<u64>,
    /// Both must happen within this long of healing.
    pub bound_ms: u64,
    /// What the replicas looked like at the deadline, if they never converged.
    pub detail: String,
}

/// Who led at the end of a run, and the leader change each node has recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalLeadership {
    pub term: u64,
    pub leader: u64,
    /// When this term's leader was first seen.
    pub since_ms: u64,
    pub end_ms: u64,
    /// Per running node: the last `(term, leader)` its vault recorded.
    pub recorded: Vec<(u64, Option<(u64, u64)>)>,
}

/// Everything a run leaves for the oracle.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub events: Vec<Event>,
    pub payments: Vec<PaymentSeen>,
    pub acquirer: Vec<AcquirerTxn>,
    pub leaders: Vec<LeaderSample>,
    /// Invariant violations the nodes found after applying commands, and in the full
    /// check of every node's vault at the end.
    pub invariant_reports: Vec<String>,
    pub recovery: Recovery,
    /// `None` if no node led at the end.
    pub final_leadership: Option<FinalLeadership>,
}

/// A property that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.property, self.detail)
    }
}

/// Checks every property; an empty answer means the run was correct.
pub fn check(e: &Evidence) -> Vec<Violation> {
    let tag = |property: &'static str, found: Vec<String>| {
        found
            .into_iter()
            .map(move |detail| Violation { property, detail })
    };
    tag("no_lost_writes", lost_writes::check(&e.events))
        .chain(tag("reads_move_forward", reads::check(&e.events)))
        .chain(tag(
            "one_time_token_used_once",
            one_time_once::check(&e.payments),
        ))
        .chain(tag(
            "authorised_once",
            authorised_once::check(&e.payments, &e.acquirer),
        ))
        .chain(tag("one_leader_per_term", one_leader::check(&e.leaders)))
        // The vault's own invariants are checked by the nodes: the payment invariants
        // of `validate()` after every applied command (reported to the probe) and the
        // whole of `validate()` on every node once the replicas converge. Each report
        // is a violation as it stands.
        .chain(tag("invariants", e.invariant_reports.clone()))
        .chain(tag("liveness", liveness::check(&e.recovery)))
        .chain(tag(
            "leader_change_recorded",
            leader_changes::check(e.final_leadership.as_ref()),
        ))
        .collect()
}

/// The highest level each object was acknowledged at, with the acknowledging op.
fn acked_levels(events: &[Event]) -> BTreeMap<&str, (Level, &Event)> {
    let mut acked: BTreeMap<&str, (Level, &Event)> = BTreeMap::new();
    for e in events {
        if let EventKind::Ack { object, level, .. } = &e.kind {
            let slot = acked.entry(object).or_insert((*level, e));
            if *level > slot.0 {
                *slot = (*level, e);
            }
        }
    }
    acked
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn ack(client: u32, at: (u64, u64), object: &str, level: Level) -> Event {
        Event {
            client,
            invoked_ms: at.0,
            completed_ms: at.1,
            kind: EventKind::Ack {
                op: "write".into(),
                object: object.into(),
                level,
            },
        }
    }

    pub fn read(client: u32, at: (u64, u64), object: &str, level: Level, settled: bool) -> Event {
        Event {
            client,
            invoked_ms: at.0,
            completed_ms: at.1,
            kind: EventKind::Read {
                object: object.into(),
                level,
                settled,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_levels_only_rise_along_valid_transitions() {
        let l = |s, c, r| Level::payment(s, c, r).unwrap();
        assert!(l("pending", 0, 0) < l("authorized", 0, 0));
        assert!(l("authorized", 0, 0) < l("captured", 1000, 0));
        assert!(l("captured", 1000, 0) < l("captured", 1000, 400));
        assert!(l("captured", 1000, 400) < l("refunded", 1000, 1000));
        assert!(l("authorized", 0, 0) < l("voided", 0, 0));
        assert!(l("pending", 0, 0) < l("failed", 0, 0));
        assert_eq!(Level::payment("lost", 0, 0), None);
        assert!(Level::TOKEN_ACTIVE < Level::TOKEN_USED && Level::TOKEN_USED < Level::TOKEN_GONE);
    }

    #[test]
    fn a_clean_history_passes_every_property() {
        use fixtures::*;
        let e = Evidence {
            events: vec![
                ack(1, (0, 10), "tok_a", Level::TOKEN_ACTIVE),
                read(2, (11, 12), "tok_a", Level::TOKEN_ACTIVE, false),
                read(1, (100, 101), "tok_a", Level::TOKEN_ACTIVE, true),
            ],
            leaders: vec![LeaderSample {
                at_ms: 5,
                node: 1,
                term: 1,
            }],
            recovery: Recovery {
                healed_at_ms: 50,
                converged_at_ms: Some(60),
                first_write_at_ms: Some(55),
                bound_ms: 100,
                detail: String::new(),
            },
            ..Default::default()
        };
        assert_eq!(check(&e), vec![]);
        // A breach a node found while applying fails the run under `invariants`.
        let breach = "node 2 index 40: captured 900 above authorised 500";
        let broken = Evidence {
            invariant_reports: vec![breach.into()],
            ..e
        };
        assert_eq!(
            check(&broken),
            vec![Violation {
                property: "invariants",
                detail: breach.into()
            }]
        );
    }
}
