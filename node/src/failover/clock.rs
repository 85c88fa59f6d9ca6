//! Whether this node's wall clock agrees with the other nodes', and the time a leader
//! stamps on a new command.
//!
//! Time in the log is the leader's wall clock, never moved back (`VaultView::stamp`):
//! one-time tokens expire, cards are refused as expired, idempotency records are
//! dropped after a day and the audit trail is dated by it. A leader whose clock steps
//! ahead (a bad time source, a virtual machine resumed, a clock wrong at boot) would
//! carry the replicated clock ahead with it, for good: a card valid this month refused
//! as expired until real time caught up, retries' idempotency records dropped early,
//! audit records dated in the future. One stepped back would hold the replicated clock
//! still, so that one-time tokens outlived their time (decision 0030).
//!
//! So each node measures the others' clocks from their health reports (each carries the
//! time its node read just before answering) against its own monotonic clock, which no
//! step moves. A node's own clock is trusted while it is within
//! `health.max_clock_offset_ms` of enough other nodes' that, with its own, they make a
//! majority of the voters, and out of bounds when the clocks it is not within the bound
//! of are a majority on their own and agree with one another. A leader whose clock is
//! out of bounds stamps the other nodes' time instead, at once (a step is seen at the
//! next stamp, not the next check), and its `clock` check fails, so it hands over and
//! does not stand for election.

use crate::member::NodeId;
use crate::runtime::Clock;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// One peer's clock as last measured: its wall time minus this node's monotonic
/// milliseconds lies in `[lo, hi]` (the request's round trip is the uncertainty).
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    lo: i64,
    hi: i64,
}

/// The range (ms, both ends included) a peer's clock reads in.
type Range = (i64, i64);

/// How often a stamp waiting for the first measurement looks again.
const JUDGED_POLL: Duration = Duration::from_millis(10);

/// What the measurements say of this node's clock now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No bound is set, or too few other nodes' clocks were measured recently to judge
    /// by, or those that disagree with this one do not agree with one another either.
    Unjudged,
    /// Within the bound of `peers` other nodes' clocks, enough for a majority.
    Agrees { peers: usize },
    /// Outside the bound of other clocks that agree with one another and are a
    /// majority on their own: `ahead_ms` ahead of their time (negative: behind), which
    /// is `estimate_ms` now.
    Disagrees { ahead_ms: i64, estimate_ms: u64 },
    /// Unjudged by the others, but the clock moved by more than the bound against
    /// monotonic time since it last agreed with them: `ahead_ms` ahead of the
    /// time it would read had it not stepped, `estimate_ms`.
    Stepped { ahead_ms: i64, estimate_ms: u64 },
}

impl Verdict {
    /// The time to stamp instead of this node's clock, if it is not to be trusted.
    pub fn estimate_ms(&self) -> Option<u64> {
        match self {
            Verdict::Disagrees { estimate_ms, .. } | Verdict::Stepped { estimate_ms, .. } => {
                Some(*estimate_ms)
            }
            Verdict::Unjudged | Verdict::Agrees { .. } => None,
        }
    }
}

/// This node's measurements of the other nodes' clocks.
pub struct PeerClocks {
    raw: Clock,
    max_offset_ms: u64,
    stale: Duration,
    /// How long a first stamp waits for the first verdict.
    first_wait: Duration,
    origin: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    samples: BTreeMap<NodeId, Sample>,
    /// How many other nodes must agree (with this one, a majority of the voters); not
    /// known until the membership is first read.
    need: Option<usize>,
    /// This node's wall clock minus its monotonic ms when the clock last agreed with
    /// the others'.
    anchor: Option<i64>,
    /// Some verdict other than `Unjudged` has been reached since the node started.
    judged: bool,
}

impl PeerClocks {
    /// `raw` is this node's wall clock; `max_offset_ms` 0 turns the check off;
    /// measurements older than `stale` do not count; a first stamp waits up to
    /// `first_wait` for the first verdict.
    pub fn new(
        raw: Clock,
        max_offset_ms: u64,
        stale: Duration,
        first_wait: Duration,
    ) -> PeerClocks {
        PeerClocks {
            raw,
            max_offset_ms,
            stale,
            first_wait,
            origin: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// This node's own wall clock, unjudged.
    pub fn raw_ms(&self) -> u64 {
        (self.raw)()
    }

    fn mono_ms(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.origin).as_millis() as i64
    }

    /// Records that `peer`, asked at `sent` and answering by `received`, read `wall_ms`
    /// on its clock in between.
    pub fn observe(&self, peer: NodeId, sent: Instant, received: Instant, wall_ms: u64) {
        let wall = wall_ms as i64;
        let sample = Sample {
            at: received,
            lo: wall - self.mono_ms(received),
            hi: wall - self.mono_ms(sent),
        };
        let mut s = self.state.lock().expect("clock lock");
        s.samples.insert(peer, sample);
    }

    /// Sets how many voters the cluster has, this node among them or not.
    pub fn set_voters(&self, voters: usize, self_votes: bool) {
        let quorum = crate::member::quorum(voters);
        let need = quorum.saturating_sub(usize::from(self_votes));
        self.state.lock().expect("clock lock").need = Some(need);
    }

    /// Whether this node's clock has been judged since it started (or needs no
    /// judging: no bound, or no other voter). Until then it does not stand for
    /// election: a leader that knows nothing of the others' clocks has nothing to check
    /// its stamps against.
    pub fn judged(&self) -> bool {
        let s = self.state.lock().expect("clock lock");
        self.max_offset_ms == 0 || s.need == Some(0) || s.judged
    }

    /// Waits, up to the first wait set at construction, until this node's clock has
    /// been judged; how it ends is [`Self::judged`] (a node whose peers never answer
    /// stamps its own clock: it cannot commit anything without them anyway). Every
    /// stamp of a new command comes after it.
    pub async fn wait_judged(&self) {
        let started = Instant::now();
        while !self.judged() && started.elapsed() < self.first_wait {
            crate::runtime::sleep(JUDGED_POLL).await;
        }
    }

    /// The verdict on this node's clock now, and each measured peer's clock minus this
    /// node's (ms, the middle of its range; stale ones left out).
    pub fn judge(&self) -> (Verdict, BTreeMap<NodeId, i64>) {
        let now = Instant::now();
        let own = self.raw_ms() as i64;
        let mono = self.mono_ms(now);
        let mut s = self.state.lock().expect("clock lock");
        let offsets = s
            .samples
            .iter()
            .filter(|(_, x)| self.fresh(x, now))
            .map(|(id, x)| (*id, mono + (x.lo + x.hi) / 2 - own))
            .collect();
        (self.evaluate(&mut s, now, own, mono), offsets)
    }

    /// The time a leader stamps on a new command: its own clock, unless that is out of
    /// bounds of the others' (their time) or stepped since it last agreed with them
    /// (the time it would read unstepped).
    pub fn stamp_ms(&self) -> u64 {
        let now = Instant::now();
        let own = self.raw_ms();
        let mono = self.mono_ms(now);
        let mut s = self.state.lock().expect("clock lock");
        self.evaluate(&mut s, now, own as i64, mono)
            .estimate_ms()
            .unwrap_or(own)
    }

    fn fresh(&self, x: &Sample, now: Instant) -> bool {
        now.saturating_duration_since(x.at) <= self.stale
    }

    /// The verdict on clock `own` at `now` (`mono` on this node's monotonic clock),
    /// keeping the anchor and whether a verdict was ever reached.
    fn evaluate(&self, s: &mut State, now: Instant, own: i64, mono: i64) -> Verdict {
        let max = self.max_offset_ms as i64;
        let verdict = match s.need {
            Some(need) if max > 0 => {
                let fresh = s
                    .samples
                    .values()
                    .filter(|x| self.fresh(x, now))
                    .map(|x| (mono + x.lo, mono + x.hi));
                verdict(own, fresh, need, max)
            }
            _ => Verdict::Unjudged,
        };
        let verdict = match (verdict, s.anchor) {
            (Verdict::Agrees { peers }, _) => {
                s.anchor = Some(own - mono);
                Verdict::Agrees { peers }
            }
            // No one to judge by: monotonic time since the clock last agreed shows a step.
            (Verdict::Unjudged, Some(anchor)) if max > 0 && (own - (mono + anchor)).abs() > max => {
                Verdict::Stepped {
                    ahead_ms: own - (mono + anchor),
                    estimate_ms: (mono + anchor).max(0) as u64,
                }
            }
            (v, _) => v,
        };
        if verdict != Verdict::Unjudged {
            s.judged = true;
        }
        verdict
    }
}

/// The verdict on clock `own`, given the ranges other nodes' clocks read now: trusted
/// when `need` of them agree within `max` (ms) — with this node, a majority of the
/// voters; out of bounds when more than that many disagree with it *and agree with one
/// another* — the others, on their own, a majority of consistent clocks. Anything else
/// is unjudged: two clocks apart with the third unmeasured cannot say which is wrong,
/// and neither can three that all disagree (two stepped, or one stepped and one
/// measured while it was).
fn verdict(own: i64, peers: impl Iterator<Item = Range>, need: usize, max: i64) -> Verdict {
    let within = |a: Range, b: Range| a.0 - max <= b.1 && b.0 <= a.1 + max;
    let (agree, against): (Vec<Range>, Vec<Range>) =
        peers.into_iter().partition(|p| within((own, own), *p));
    if agree.len() >= need {
        return Verdict::Agrees { peers: agree.len() };
    }
    // The largest group of the others that agree with one another.
    let group: Vec<Range> = against
        .iter()
        .map(|a| {
            against
                .iter()
                .copied()
                .filter(|b| within(*a, *b))
                .collect::<Vec<Range>>()
        })
        .max_by_key(Vec::len)
        .unwrap_or_default();
    if group.len() <= need || !group.iter().all(|a| group.iter().all(|b| within(*a, *b))) {
        return Verdict::Unjudged;
    }
    // The lower middle of the group's times: with two, the one further behind, so that
    // the estimate never runs ahead of both.
    let mut mids: Vec<i64> = group.iter().map(|(lo, hi)| (lo + hi) / 2).collect();
    mids.sort_unstable();
    let estimate = mids[(mids.len() - 1) / 2];
    Verdict::Disagrees {
        ahead_ms: own - estimate,
        estimate_ms: estimate.max(0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    const DAY: i64 = 86_400_000;

    #[test]
    fn a_clock_within_the_bound_of_enough_others_is_trusted() {
        let t = 1_800_000_000_000;
        // Two others, one needed (three voters).
        assert_eq!(
            verdict(t, [(t - 3, t + 1), (t + 2, t + 4)].into_iter(), 1, 500),
            Verdict::Agrees { peers: 2 }
        );
        // One of them far off: the other agreeing is enough.
        assert_eq!(
            verdict(t, [(t + DAY, t + DAY + 1), (t, t)].into_iter(), 1, 500),
            Verdict::Agrees { peers: 1 }
        );
        // The bound counts from the edge of the range a round trip leaves.
        assert_eq!(
            verdict(t, [(t - 900, t - 400)].into_iter(), 1, 500),
            Verdict::Agrees { peers: 1 }
        );
        assert!(matches!(
            verdict(
                t,
                [(t - 1_000, t - 501), (t - 700, t - 600)].into_iter(),
                1,
                500
            ),
            Verdict::Disagrees { .. }
        ));
        // A single node needs no one.
        assert_eq!(
            verdict(t, std::iter::empty(), 0, 500),
            Verdict::Agrees { peers: 0 }
        );
    }

    #[test]
    fn a_clock_out_of_bounds_of_the_others_takes_their_time() {
        let t = 1_800_000_000_000;
        let ahead = t + 40 * DAY;
        assert_eq!(
            verdict(ahead, [(t - 2, t + 2), (t + 8, t + 12)].into_iter(), 1, 500),
            Verdict::Disagrees {
                ahead_ms: 40 * DAY,
                estimate_ms: t as u64,
            },
            "the estimate is the one further behind"
        );
        assert_eq!(
            verdict(t - DAY, [(t, t), (t + 1, t + 1)].into_iter(), 1, 500),
            Verdict::Disagrees {
                ahead_ms: -DAY,
                estimate_ms: t as u64,
            }
        );
        // One other measured of three voters, and it disagrees: either could be wrong
        // (this is how the good nodes see the one whose clock stepped, when the third
        // did not answer).
        assert_eq!(
            verdict(t, [(ahead, ahead)].into_iter(), 1, 500),
            Verdict::Unjudged
        );
        // Five voters: two others must agree; three against are a majority.
        assert_eq!(
            verdict(
                t,
                [(t, t), (ahead, ahead), (ahead, ahead)].into_iter(),
                2,
                500
            ),
            Verdict::Unjudged
        );
        assert!(matches!(
            verdict(
                t,
                [(t, t), (ahead, ahead), (ahead, ahead), (ahead, ahead)].into_iter(),
                2,
                500
            ),
            Verdict::Disagrees { .. }
        ));
        // Both others disagree with this clock, but also with each other (one stepped,
        // or measured while it was): no majority says which is right.
        assert_eq!(
            verdict(t, [(ahead, ahead), (t + DAY, t + DAY)].into_iter(), 1, 500),
            Verdict::Unjudged
        );
        // Nothing measured: nothing to judge by.
        assert_eq!(
            verdict(ahead, std::iter::empty(), 1, 500),
            Verdict::Unjudged
        );
    }

    /// A wall clock that runs with the runtime's (paused) time and that a test steps,
    /// as a bad time source would.
    fn stepped() -> (Arc<AtomicI64>, Clock) {
        let step = Arc::new(AtomicI64::new(0));
        let s = step.clone();
        let origin = Instant::now();
        let clock: Clock = Arc::new(move || {
            let wall = 1_800_000_000_000 + origin.elapsed().as_millis() as i64;
            (wall + s.load(Ordering::Relaxed)) as u64
        });
        (step, clock)
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_is_seen_at_the_next_stamp_and_measurements_go_stale() {
        let (step, clock) = stepped();
        let clocks = PeerClocks::new(clock.clone(), 500, Duration::from_secs(5), Duration::ZERO);
        assert_eq!(clocks.judge().0, Verdict::Unjudged, "voters not known yet");
        clocks.set_voters(3, true);
        assert_eq!(clocks.judge().0, Verdict::Unjudged, "no one measured");
        assert!(
            !clocks.judged(),
            "a node that measured no one does not stand"
        );
        step.store(DAY, Ordering::Relaxed);
        assert_eq!(
            clocks.judge().0,
            Verdict::Unjudged,
            "nothing to see a step against before the clock first agreed"
        );
        step.store(0, Ordering::Relaxed);
        // Two peers whose clocks read what this one does.
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(2)).await;
        let read = clock() + 1;
        tokio::time::advance(Duration::from_millis(2)).await;
        let received = Instant::now();
        clocks.observe(2, sent, received, read);
        clocks.observe(3, sent, received, read);
        assert_eq!(clocks.judge().0, Verdict::Agrees { peers: 2 });
        let before = clocks.stamp_ms();
        assert!(before.abs_diff(clock()) <= 5);

        // The wall clock steps forty days ahead; monotonic time does not move.
        step.store(40 * DAY, Ordering::Relaxed);
        match clocks.judge().0 {
            Verdict::Disagrees { ahead_ms, .. } => {
                assert!((ahead_ms - 40 * DAY).abs() < 1_000, "{ahead_ms}")
            }
            other => panic!("a forty-day step not seen: {other:?}"),
        }
        let stamped = clocks.stamp_ms();
        assert!(
            stamped.abs_diff(before) < 1_000,
            "stamped {stamped}, the others' time is about {before}"
        );
        assert!(clocks.raw_ms() > stamped + 39 * DAY as u64);

        // Time passes without new measurements: the projection follows monotonic time.
        tokio::time::advance(Duration::from_secs(3)).await;
        let later = clocks.stamp_ms();
        assert!(
            (later as i64 - before as i64 - 3_000).abs() < 1_000,
            "{later} vs {before}"
        );
        // Stepped back: trusted again.
        step.store(0, Ordering::Relaxed);
        assert_eq!(clocks.judge().0, Verdict::Agrees { peers: 2 });
        // Measurements older than the bound no longer count.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clocks.judge().0, Verdict::Unjudged);
        assert!(clocks.judge().1.is_empty());
        assert!(clocks.stamp_ms().abs_diff(clock()) <= 1);
        assert!(clocks.judged(), "judged once, judged for good");
        // With no one to ask, a step is still seen against monotonic time since the
        // clock last agreed.
        step.store(-DAY, Ordering::Relaxed);
        let (v, _) = clocks.judge();
        assert!(
            matches!(v, Verdict::Stepped { ahead_ms, .. } if (ahead_ms + DAY).abs() < 1_000),
            "{v:?}"
        );
        assert!(clocks.stamp_ms().abs_diff(clock() + DAY as u64) < 1_000);
        step.store(300, Ordering::Relaxed);
        assert_eq!(clocks.judge().0, Verdict::Unjudged, "within the bound");

        let off = PeerClocks::new(clock.clone(), 0, Duration::from_secs(5), Duration::ZERO);
        off.set_voters(3, true);
        off.observe(2, Instant::now(), Instant::now(), 0);
        assert_eq!(off.judge().0, Verdict::Unjudged, "bound 0: not checked");
        assert!(off.judged(), "and nothing to wait for");
        let alone = PeerClocks::new(clock, 500, Duration::from_secs(5), Duration::ZERO);
        alone.set_voters(1, true);
        assert_eq!(alone.judge().0, Verdict::Agrees { peers: 0 });
        assert!(alone.judged());
    }
}
