//! Handoff notices: why a leader is giving leadership away, for the next leader's record.
//!
//! Just before a leader transfers leadership it tells every peer the cause, bound to its
//! own term, and keeps the notice itself. The node that leads next records the change
//! with that cause, whichever node it is, the old leader included: the old leader stops
//! heartbeats for the transfer, so if the chosen node cannot take over in time (openraft's
//! target waits only an election timeout for its log), the election that follows is
//! still the handoff's doing. Any later leader spends or voids
//! the notice, so it never labels a change it did not cause.

use std::time::Duration;
use tokio::time::Instant;

/// How long a notice stays valid.
const TTL: Duration = Duration::from_secs(10);
/// Longest cause accepted.
const CAUSE_CHARS_MAX: usize = 64;

/// One leader's word of why it hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandoffNotice {
    cause: String,
    /// The term of the leader handing over; the notice speaks for a later leader only.
    from_term: u64,
    at: Instant,
}

impl HandoffNotice {
    /// The wire form: `cause term`.
    pub(crate) fn body(cause: &str, from_term: u64) -> String {
        format!("{cause} {from_term}")
    }

    /// Reads `cause term`, or a bare `cause` (from a node older than terms in notices),
    /// which is bound to `current_term`.
    pub(crate) fn parse(body: &str, current_term: u64, at: Instant) -> Result<Self, String> {
        let (cause, from_term) = match body.split_once(' ') {
            Some((c, t)) => (
                c,
                t.parse::<u64>()
                    .map_err(|_| format!("the term in a handoff notice is not a number: {t:?}"))?,
            ),
            None => (body, current_term),
        };
        let ok = !cause.is_empty()
            && cause.len() <= CAUSE_CHARS_MAX
            && cause.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !ok {
            return Err("a handoff cause is 1-64 characters of a-z and '_'".into());
        }
        Ok(HandoffNotice {
            cause: cause.to_owned(),
            from_term,
            at,
        })
    }
}

/// Called when this node first sees a leader of `term`: returns the held notice's cause
/// when it speaks for that leader (it came from an earlier term, within the TTL), and
/// spends it either way. A leader of the notice's own term or earlier leaves it held.
pub(crate) fn spend(held: &mut Option<HandoffNotice>, term: u64, now: Instant) -> Option<String> {
    if held.as_ref().is_some_and(|n| term <= n.from_term) {
        return None;
    }
    held.take()
        .filter(|n| now.saturating_duration_since(n.at) <= TTL)
        .map(|n| n.cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(body: &str, term: u64) -> Option<HandoffNotice> {
        Some(HandoffNotice::parse(body, term, Instant::now()).expect("valid notice"))
    }

    #[test]
    fn a_notice_labels_the_next_leader_whoever_it_is_and_only_once() {
        let now = Instant::now();
        let mut held = notice(&HandoffNotice::body("unhealthy_storage", 4), 4);
        // The old leader's own term (seen late) neither labels nor spends it.
        assert_eq!(spend(&mut held, 4, now), None);
        assert!(held.is_some());
        assert_eq!(
            spend(&mut held, 5, now).as_deref(),
            Some("unhealthy_storage")
        );
        // Spent: a crash after the handoff is a crash.
        assert_eq!(spend(&mut held, 6, now), None);
    }

    #[test]
    fn a_stale_notice_is_voided_not_used() {
        let mut held = notice("failback 2", 2);
        let later = Instant::now() + TTL + Duration::from_secs(1);
        assert_eq!(spend(&mut held, 3, later), None);
        assert!(held.is_none());
    }

    #[test]
    fn a_bare_cause_binds_to_the_current_term() {
        let mut held = notice("operator", 7);
        assert_eq!(spend(&mut held, 7, Instant::now()), None);
        assert_eq!(
            spend(&mut held, 8, Instant::now()).as_deref(),
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
        ] {
            assert!(HandoffNotice::parse(bad, 1, now).is_err(), "{bad:?}");
        }
    }
}
