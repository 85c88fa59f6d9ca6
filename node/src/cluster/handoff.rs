//! Handoff notices: why a leader is giving leadership away, for the next leader's record.
//!
//! Just before a leader transfers leadership it tells every peer the cause, bound to its
//! own term, and keeps the notice itself. The node that next leads and records the
//! change uses that cause, whichever node it is, the old leader included: the old leader
//! stops heartbeats for the transfer, so if the chosen node cannot take over in time
//! (openraft's target waits only an election timeout for its log), the election that
//! follows is still the handoff's doing; and a leader that loses its term before its
//! record commits (slow disks make elections churn) leaves the notice to the next. Once
//! a record of a later term is applied the notice is settled, so it never labels a
//! change it did not cause.

use super::errors::NoticeError;
use crate::vault::LeaderChangeCause;
use std::time::Duration;
use tokio::time::Instant;

/// How long a notice stays valid.
const TTL: Duration = Duration::from_secs(10);

/// One leader's word of why it hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandoffNotice {
    cause: LeaderChangeCause,
    /// The term of the leader handing over; the notice speaks for a later leader only.
    from_term: u64,
    at: Instant,
}

impl HandoffNotice {
    /// The wire form: `cause term`.
    pub(crate) fn body(cause: LeaderChangeCause, from_term: u64) -> String {
        format!("{cause} {from_term}")
    }

    /// Reads `cause term`, or a bare `cause` (from a node older than terms in notices),
    /// which is bound to `current_term`.
    pub(crate) fn parse(body: &str, current_term: u64, at: Instant) -> Result<Self, NoticeError> {
        let (cause, from_term) = match body.split_once(' ') {
            Some((c, t)) => (
                c,
                t.parse::<u64>()
                    .map_err(|_| NoticeError::Term(t.to_owned()))?,
            ),
            None => (body, current_term),
        };
        let Some(cause) = LeaderChangeCause::parse(cause) else {
            return Err(NoticeError::Cause);
        };
        Ok(HandoffNotice {
            cause,
            from_term,
            at,
        })
    }
}

/// The cause a leader of `term` records: the held notice's, when it came from an
/// earlier term within the TTL. The notice stays held until [`settle`].
pub(crate) fn cause_for(
    held: &Option<HandoffNotice>,
    term: u64,
    now: Instant,
) -> Option<LeaderChangeCause> {
    held.as_ref()
        .filter(|n| n.from_term < term && now.saturating_duration_since(n.at) <= TTL)
        .map(|n| n.cause)
}

/// Called with the term of the latest leader change on record: a notice from an earlier
/// term has been used (or its chance has passed) and is dropped.
pub(crate) fn settle(held: &mut Option<HandoffNotice>, recorded_term: u64) {
    if held.as_ref().is_some_and(|n| n.from_term < recorded_term) {
        *held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(body: &str, term: u64) -> Option<HandoffNotice> {
        Some(HandoffNotice::parse(body, term, Instant::now()).expect("valid notice"))
    }

    #[test]
    fn a_notice_labels_the_next_recorded_leader_whoever_it_is_and_only_once() {
        let now = Instant::now();
        let mut held = notice(
            &HandoffNotice::body(LeaderChangeCause::UnhealthyStorage, 4),
            4,
        );
        // The old leader's own term (seen late) is not the handoff's doing.
        assert_eq!(cause_for(&held, 4, now), None);
        assert_eq!(
            cause_for(&held, 5, now).map(LeaderChangeCause::as_str),
            Some("unhealthy_storage")
        );
        // Term 5's leader lost its term before its record committed: term 6's uses it.
        settle(&mut held, 4);
        assert_eq!(
            cause_for(&held, 6, now).map(LeaderChangeCause::as_str),
            Some("unhealthy_storage")
        );
        // Recorded: a crash after the handoff is a crash.
        settle(&mut held, 6);
        assert!(held.is_none());
        assert_eq!(cause_for(&held, 7, now), None);
    }

    #[test]
    fn a_stale_notice_is_not_used() {
        let held = notice("failback 2", 2);
        let later = Instant::now() + TTL + Duration::from_secs(1);
        assert_eq!(cause_for(&held, 3, later), None);
    }

    #[test]
    fn a_bare_cause_binds_to_the_current_term() {
        let held = notice("operator", 7);
        assert_eq!(cause_for(&held, 7, Instant::now()), None);
        assert_eq!(
            cause_for(&held, 8, Instant::now()).map(LeaderChangeCause::as_str),
            Some("operator")
        );
    }

    #[test]
    fn malformed_notices_are_refused() {
        let now = Instant::now();
        for bad in [
            "",
            "Unhealthy",
            "a b",
            "x 1 2",
            &"a".repeat(65),
            "drop;table 3",
            "bored 3",
        ] {
            assert!(HandoffNotice::parse(bad, 1, now).is_err(), "{bad:?}");
        }
    }
}
