//! The leadership controller's decisions, as a pure function: a [`View`] of this node
//! and what it knows of the others in, a [`Decision`] out. No clock, no IO, no locks —
//! the loop in `failover/mod.rs` gathers the view and carries the decision out, in the
//! manner of openraft's `Engine`. Every case the failover suite drives through real
//! processes has a row in the tables below.

use super::health::Failback;
use crate::member::{NodeId, Role};
use crate::vault::LeaderChangeCause;

/// This node as the controller sees it.
#[derive(Debug, Clone)]
pub struct Me {
    pub id: NodeId,
    pub role: Role,
    pub never_lead: bool,
    pub drained: bool,
    /// Storage, keys and clock have not failed `unhealthy_threshold` times in a row.
    pub healthy: bool,
    /// Which check made it unhealthy.
    pub unhealthy_cause: Option<LeaderChangeCause>,
    /// Every acquirer route has failed from here `unhealthy_threshold` times in a row.
    pub routes_cut: bool,
    /// Its clock has been measured against the others' since it started (or needs no
    /// measuring): until then it has nothing to check its stamps against.
    pub clock_judged: bool,
}

/// Another member as this node sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: NodeId,
    pub role: Role,
    pub never_lead: bool,
    /// Whether it answered the last health poll, and with what.
    pub answered: Option<PeerReport>,
    /// Since when (ms) it has been eligible to lead: healthy, not drained, caught up.
    pub eligible_since_ms: Option<u64>,
    /// Polls in a row it reported an empty log although it had entries replicated.
    pub lost_log_polls: u32,
}

/// The parts of a peer's health report the controller uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerReport {
    pub routes_up: bool,
    pub routes_cut: bool,
}

/// Everything a decision depends on.
#[derive(Debug, Clone)]
pub struct View {
    /// Monotonic ms (a step of the wall clock does not move it).
    pub now_ms: u64,
    pub me: Me,
    pub peers: Vec<Peer>,
    pub is_leader: bool,
    /// How long this node has known no leader that answers its polls (0 if it leads).
    pub leaderless_ms: u64,
    /// How long a node that may not lead waits leaderless before it stands anyway, and
    /// how long a node just started leaves elections to a more preferred one.
    pub standby_after_ms: u64,
    /// How long this node's controller has been running.
    pub uptime_ms: u64,
    /// The current term's leader change is in the log (a leader hands over only then,
    /// but for a failing disk, which can record nothing).
    pub change_on_record: bool,
    pub failback: Failback,
    pub failback_stabilization_ms: u64,
}

/// What the controller does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether this node stands for election.
    pub elect: bool,
    /// A leader's move, if any.
    pub leadership: Leadership,
}

/// What a leader does with its leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Not the leader, or nothing to do.
    Keep,
    /// Waits: its term's change is not on record yet.
    WaitForRecord(LeaderChangeCause),
    /// Should hand over, but no other node is healthy and caught up.
    NoTarget(LeaderChangeCause),
    /// Hands leadership to `to`.
    HandOff {
        to: NodeId,
        cause: LeaderChangeCause,
    },
}

/// Decides this round's election participation and leadership move.
pub fn decide(v: &View) -> Decision {
    let me = &v.me;
    let routes_up_somewhere = v
        .peers
        .iter()
        .filter_map(|p| p.answered)
        .any(|r| r.routes_up);
    let cut_off = me.routes_cut && routes_up_somewhere;
    // An unhealthy node stays out of elections only while a healthy one can lead: a
    // cluster whose every electable node is degraded still needs a leader.
    let fit = me.healthy && !cut_off;
    let may_lead = !me.never_lead && !me.drained;
    // A node that may not lead (never_lead, drained) can still hold the only complete
    // log: the leader dies after an entry reached it but not the electable node, which
    // then cannot win a vote. So when no reachable leader has been known for a few
    // election timeouts, it stands; once it leads, it hands over as soon as an
    // electable node has caught up.
    let standby = !may_lead && v.leaderless_ms >= v.standby_after_ms;
    // Just started, a node leaves elections to a more preferred one for as long as a
    // node that may not lead waits: a cluster started again as a whole (every node at
    // once, or main last) is then led by main from its first election, instead of by dr
    // or bk until failback moves leadership to main ten seconds later. A more preferred
    // node that does not come up costs that wait once. Transfers (handoffs, failback,
    // drains) are not elections and are not held back.
    let yields = v.uptime_ms < v.standby_after_ms
        && crate::member::yields_at_start(me.role, v.peers.iter().map(|p| (p.role, p.never_lead)));
    // Nor does a node stand whose clock has not yet been measured against the others'
    // (decision 0030): its first stamps would go unchecked.
    let elect = (may_lead && !yields && me.clock_judged && (fit || pick_target(v, None).is_none()))
        || standby;
    let leadership = if v.is_leader {
        lead(v, cut_off)
    } else {
        Leadership::Keep
    };
    Decision { elect, leadership }
}

fn lead(v: &View, cut_off: bool) -> Leadership {
    let me = &v.me;
    let lost_log = v.peers.iter().any(|p| p.lost_log_polls >= 2);
    let cause = if lost_log {
        Some(LeaderChangeCause::FollowerLostLog)
    } else if let Some(c) = me.unhealthy_cause {
        Some(c)
    } else if me.drained {
        Some(LeaderChangeCause::Operator)
    } else if me.never_lead {
        Some(LeaderChangeCause::NeverLead)
    } else {
        cut_off.then_some(LeaderChangeCause::UnhealthyRoutes)
    };
    // A leader hands over only once its own term's change is on record: moved on sooner
    // (the record is refused while a transfer is under way), that change and its cause
    // would never be recorded. A leader whose storage fails cannot record anything and
    // goes at once.
    let urgent = cause == Some(LeaderChangeCause::UnhealthyStorage);
    if !v.change_on_record && !urgent {
        return cause.map_or(Leadership::Keep, Leadership::WaitForRecord);
    }
    if let Some(cause) = cause {
        return match pick_target(v, None) {
            Some(to) => Leadership::HandOff { to, cause },
            None => Leadership::NoTarget(cause),
        };
    }
    if v.failback == Failback::Auto {
        let better = (me.role.preference(), v.failback_stabilization_ms);
        if let Some(to) = pick_target(v, Some(better)) {
            return Leadership::HandOff {
                to,
                cause: LeaderChangeCause::Failback,
            };
        }
    }
    Leadership::Keep
}

/// The best node to lead instead of this one: eligible (healthy, not drained, caught up,
/// may lead), by preference then id. With `better_than`, only nodes of a more preferred
/// role that have been eligible for the given time.
fn pick_target(v: &View, better_than: Option<(u8, u64)>) -> Option<NodeId> {
    // A node cut off from every route is passed over while some node reaches one.
    let routes_up_somewhere = v
        .peers
        .iter()
        .filter_map(|p| p.answered)
        .any(|r| r.routes_up);
    v.peers
        .iter()
        .filter(|p| p.id != v.me.id && !p.never_lead)
        .filter(|p| !(routes_up_somewhere && p.answered.is_some_and(|r| r.routes_cut)))
        .filter_map(|p| {
            let since = p.eligible_since_ms?;
            match better_than {
                Some((my_rank, stable_ms)) => (p.role.preference() < my_rank
                    && v.now_ms.saturating_sub(since) >= stable_ms)
                    .then_some((p.role.preference(), p.id)),
                None => Some((p.role.preference(), p.id)),
            }
        })
        .min()
        .map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use LeaderChangeCause as C;

    const MAIN: NodeId = 1;
    const DR: NodeId = 2;
    const BK: NodeId = 3;

    fn me(id: NodeId) -> Me {
        Me {
            id,
            role: role_of(id),
            never_lead: id == BK,
            drained: false,
            healthy: true,
            unhealthy_cause: None,
            routes_cut: false,
            clock_judged: true,
        }
    }

    fn role_of(id: NodeId) -> Role {
        match id {
            MAIN => Role::Main,
            DR => Role::Dr,
            _ => Role::Bk,
        }
    }

    /// A peer that answers, routes up, eligible since t=0.
    fn peer(id: NodeId) -> Peer {
        Peer {
            id,
            role: role_of(id),
            never_lead: id == BK,
            answered: Some(PeerReport {
                routes_up: true,
                routes_cut: false,
            }),
            eligible_since_ms: Some(0),
            lost_log_polls: 0,
        }
    }

    /// `id` leads a healthy three-node cluster at t=60 s, its change on record.
    fn leading(id: NodeId) -> View {
        View {
            now_ms: 60_000,
            me: me(id),
            peers: [MAIN, DR, BK]
                .into_iter()
                .filter(|p| *p != id)
                .map(peer)
                .collect(),
            is_leader: true,
            leaderless_ms: 0,
            standby_after_ms: 900,
            uptime_ms: 60_000,
            change_on_record: true,
            failback: Failback::Auto,
            failback_stabilization_ms: 10_000,
        }
    }

    fn following(id: NodeId) -> View {
        View {
            is_leader: false,
            ..leading(id)
        }
    }

    fn unhealthy(mut v: View, cause: LeaderChangeCause) -> View {
        v.me.healthy = false;
        v.me.unhealthy_cause = Some(cause);
        v
    }

    fn ineligible(mut v: View, id: NodeId) -> View {
        for p in v.peers.iter_mut().filter(|p| p.id == id) {
            p.eligible_since_ms = None;
        }
        v
    }

    fn hand_off(to: NodeId, cause: LeaderChangeCause) -> Leadership {
        Leadership::HandOff { to, cause }
    }

    #[test]
    fn leaders_hand_over_for_each_gray_failure_to_the_most_preferred_eligible_node() {
        let cut = |mut v: View| {
            v.me.routes_cut = true;
            v
        };
        let drained = |mut v: View| {
            v.me.drained = true;
            v
        };
        let lost_log = |mut v: View| {
            v.peers[1].lost_log_polls = 2;
            v
        };
        let cases: Vec<(&str, View, Leadership)> = vec![
            ("healthy main keeps", leading(MAIN), Leadership::Keep),
            (
                "storage stall: main to dr",
                unhealthy(leading(MAIN), C::UnhealthyStorage),
                hand_off(DR, C::UnhealthyStorage),
            ),
            (
                "KEK failure: main to dr",
                unhealthy(leading(MAIN), C::UnhealthyKeys),
                hand_off(DR, C::UnhealthyKeys),
            ),
            (
                "clock out of bounds: main to dr",
                unhealthy(leading(MAIN), C::UnhealthyClock),
                hand_off(DR, C::UnhealthyClock),
            ),
            (
                "routes cut at main while dr reaches one",
                cut(leading(MAIN)),
                hand_off(DR, C::UnhealthyRoutes),
            ),
            (
                "drained main hands to dr",
                drained(leading(MAIN)),
                hand_off(DR, C::Operator),
            ),
            (
                "a follower lost its log",
                lost_log(leading(MAIN)),
                hand_off(DR, C::FollowerLostLog),
            ),
            (
                "storage stall at dr: dr to main",
                unhealthy(leading(DR), C::UnhealthyStorage),
                hand_off(MAIN, C::UnhealthyStorage),
            ),
            (
                "never-lead bk leading hands to main",
                leading(BK),
                hand_off(MAIN, C::NeverLead),
            ),
            (
                "never-lead bk, main not caught up: dr",
                ineligible(leading(BK), MAIN),
                hand_off(DR, C::NeverLead),
            ),
            (
                "never-lead bk, no electable node caught up: keeps leading",
                ineligible(ineligible(leading(BK), MAIN), DR),
                Leadership::NoTarget(C::NeverLead),
            ),
            (
                "storage stall, dr not caught up: never to bk",
                ineligible(unhealthy(leading(MAIN), C::UnhealthyStorage), DR),
                Leadership::NoTarget(C::UnhealthyStorage),
            ),
        ];
        for (name, view, want) in cases {
            assert_eq!(decide(&view).leadership, want, "{name}");
        }
    }

    #[test]
    fn a_leader_waits_for_its_record_except_when_its_storage_fails() {
        let mut v = unhealthy(leading(MAIN), C::UnhealthyKeys);
        v.change_on_record = false;
        assert_eq!(
            decide(&v).leadership,
            Leadership::WaitForRecord(C::UnhealthyKeys)
        );
        let mut v = unhealthy(leading(MAIN), C::UnhealthyStorage);
        v.change_on_record = false;
        assert_eq!(decide(&v).leadership, hand_off(DR, C::UnhealthyStorage));
        let mut v = leading(MAIN);
        v.change_on_record = false;
        assert_eq!(decide(&v).leadership, Leadership::Keep);
    }

    #[test]
    fn routes_cut_everywhere_moves_nothing_and_cut_nodes_are_passed_over() {
        let mut v = leading(MAIN);
        v.me.routes_cut = true;
        for p in &mut v.peers {
            p.answered = Some(PeerReport {
                routes_up: false,
                routes_cut: true,
            });
        }
        assert_eq!(decide(&v).leadership, Leadership::Keep, "no site is better");
        assert!(decide(&v).elect);
        // Storage fails at main; dr's routes are cut but bk reaches one: dr is passed
        // over, and bk never leads.
        let mut v = unhealthy(leading(MAIN), C::UnhealthyStorage);
        v.peers[0].answered = Some(PeerReport {
            routes_up: false,
            routes_cut: true,
        });
        assert_eq!(
            decide(&v).leadership,
            Leadership::NoTarget(C::UnhealthyStorage)
        );
    }

    #[test]
    fn failback_waits_for_stabilisation_and_only_when_automatic() {
        let mut v = leading(DR);
        v.peers[0].eligible_since_ms = Some(v.now_ms - 9_999);
        assert_eq!(
            decide(&v).leadership,
            Leadership::Keep,
            "main not stable yet"
        );
        v.peers[0].eligible_since_ms = Some(v.now_ms - 10_000);
        assert_eq!(decide(&v).leadership, hand_off(MAIN, C::Failback));
        v.failback = Failback::Manual;
        assert_eq!(decide(&v).leadership, Leadership::Keep, "manual failback");
        // Main leads: nobody is preferred over it.
        assert_eq!(decide(&leading(MAIN)).leadership, Leadership::Keep);
    }

    #[test]
    fn election_participation() {
        // A healthy main or dr stands; never-lead bk does not.
        assert!(decide(&following(MAIN)).elect);
        assert!(decide(&following(DR)).elect);
        assert!(!decide(&following(BK)).elect);
        // An unhealthy main stays out while dr can lead...
        let v = unhealthy(following(MAIN), C::UnhealthyStorage);
        assert!(!decide(&v).elect);
        // ...but stands when no other node is eligible: the cluster still needs a leader.
        assert!(decide(&ineligible(v, DR)).elect);
        // Cut off from routes while another node reaches one: out.
        let mut v = following(MAIN);
        v.me.routes_cut = true;
        assert!(!decide(&v).elect);
        // Drained: out, even with no one else eligible, until leaderless long enough.
        let mut v = ineligible(following(MAIN), DR);
        v.me.drained = true;
        assert!(!decide(&v).elect);
        v.leaderless_ms = v.standby_after_ms;
        assert!(
            decide(&v).elect,
            "standby: it may hold the only complete log"
        );
        // Never-lead bk holding the only complete log stands after the standby time.
        let mut v = following(BK);
        v.leaderless_ms = v.standby_after_ms - 1;
        assert!(!decide(&v).elect);
        v.leaderless_ms = v.standby_after_ms;
        assert!(decide(&v).elect);
        // A follower never moves leadership.
        let v = unhealthy(following(MAIN), C::UnhealthyStorage);
        assert_eq!(decide(&v).leadership, Leadership::Keep);
    }

    #[test]
    fn a_node_just_started_leaves_elections_to_a_more_preferred_one_for_a_while() {
        let started = |id: NodeId, uptime_ms: u64| {
            let mut v = following(id);
            v.uptime_ms = uptime_ms;
            v.leaderless_ms = uptime_ms;
            for p in &mut v.peers {
                p.never_lead = false;
            }
            v
        };
        // dr and bk wait for main (and bk for dr) for the standby time; main never waits,
        // once its clock has been measured against the others'.
        assert!(decide(&started(MAIN, 0)).elect);
        let mut unmeasured = started(MAIN, 0);
        unmeasured.me.clock_judged = false;
        assert!(!decide(&unmeasured).elect, "main with its clock unmeasured");
        unmeasured.leaderless_ms = 10_000;
        unmeasured.peers.clear();
        assert!(
            !decide(&unmeasured).elect,
            "not even alone: it stands once it has measured someone"
        );
        let mut bk = started(BK, 0);
        bk.me.never_lead = false;
        for (v, who) in [(started(DR, 0), "dr"), (bk.clone(), "bk")] {
            assert!(!decide(&v).elect, "{who} just started");
            let mut later = v.clone();
            later.uptime_ms = v.standby_after_ms - 1;
            assert!(!decide(&later).elect, "{who} within the wait");
            later.uptime_ms = v.standby_after_ms;
            assert!(decide(&later).elect, "{who} after the wait");
        }
        // A more preferred node that may not lead is not waited for.
        let mut v = started(DR, 0);
        v.peers.retain(|p| p.id != MAIN);
        assert!(decide(&v).elect, "dr alone with bk");
        let mut v = started(DR, 0);
        for p in v.peers.iter_mut().filter(|p| p.id == MAIN) {
            p.never_lead = true;
        }
        assert!(decide(&v).elect, "main may not lead");
        // The start-up wait holds no handover back: a just-started leader still hands over.
        let mut v = unhealthy(started(DR, 0), C::UnhealthyStorage);
        v.is_leader = true;
        assert_eq!(decide(&v).leadership, hand_off(MAIN, C::UnhealthyStorage));
        // Raft's own start-up setting agrees.
        assert!(!crate::member::yields_at_start(
            Role::Main,
            [(Role::Dr, false), (Role::Bk, false)]
        ));
        assert!(crate::member::yields_at_start(
            Role::Dr,
            [(Role::Main, false), (Role::Bk, false)]
        ));
        assert!(crate::member::yields_at_start(
            Role::Bk,
            [(Role::Main, true), (Role::Dr, false)]
        ));
        assert!(!crate::member::yields_at_start(
            Role::Dr,
            [(Role::Main, true), (Role::Bk, false)]
        ));
    }
}
