//! At most one leader per term, over every sample of every node's Raft state.

use super::LeaderSample;
use std::collections::BTreeMap;

pub(super) fn check(samples: &[LeaderSample]) -> Vec<String> {
    let mut first: BTreeMap<u64, LeaderSample> = BTreeMap::new();
    let mut reported = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for s in samples {
        let f = *first.entry(s.term).or_insert(*s);
        if f.node != s.node && reported.insert((s.term, s.node)) {
            found.push(format!(
                "term {}: node {} led at {} ms and node {} at {} ms",
                s.term, f.node, f.at_ms, s.node, s.at_ms
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u64, node: u64, term: u64) -> LeaderSample {
        LeaderSample { at_ms, node, term }
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let v = check(&[s(1, 1, 3), s(2, 1, 3), s(3, 2, 3), s(4, 2, 3)]);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("term 3"));
    }

    #[test]
    fn one_leader_per_term_passes() {
        assert!(check(&[s(1, 1, 3), s(2, 2, 4), s(3, 2, 4), s(4, 1, 5)]).is_empty());
    }
}
