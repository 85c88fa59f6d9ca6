//! Every leadership is recorded: a leader that has held its term for a while has put
//! its `RecordLeaderChange` (term, itself) in the log, and every node has applied it —
//! the entry every node's `kura_raft_leader_changes_total{cause}` and the audit trail
//! count from.

use super::FinalLeadership;

/// How long a new leader may take to record its term.
pub(super) const GRACE_MS: u64 = 1_000;

pub(super) fn check(f: Option<&FinalLeadership>) -> Vec<String> {
    let Some(f) = f else {
        return Vec::new();
    };
    if f.since_ms + GRACE_MS > f.end_ms {
        return Vec::new(); // too recent to require the record
    }
    f.recorded
        .iter()
        .filter(|(_, r)| *r != Some((f.term, f.leader)))
        .map(|(node, r)| {
            format!(
                "term {} led by node {} since {} ms, but at {} ms node {node}'s last recorded leader change is {r:?}",
                f.term, f.leader, f.since_ms, f.end_ms
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(since_ms: u64, recorded: Vec<(u64, Option<(u64, u64)>)>) -> FinalLeadership {
        FinalLeadership {
            term: 7,
            leader: 1,
            since_ms,
            end_ms: 10_000,
            recorded,
        }
    }

    #[test]
    fn a_leadership_nobody_recorded_is_caught() {
        let v = check(Some(&f(
            1_000,
            vec![(1, Some((6, 2))), (2, Some((7, 1))), (3, None)],
        )));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains("term 7") && v[0].contains("(6, 2)"), "{v:?}");
    }

    #[test]
    fn a_fresh_leader_has_time_to_record() {
        assert!(check(Some(&f(9_500, vec![(1, Some((6, 2)))]))).is_empty());
        assert!(check(Some(&f(1_000, vec![(1, Some((7, 1))), (2, Some((7, 1)))]))).is_empty());
        assert!(check(None).is_empty());
    }
}
