//! No acknowledged write is lost: once the cluster has healed and converged, every
//! object a client was told about reads back at least as far as it was acknowledged
//! (a token created, a card deleted, a payment authorised, captured or refunded).

use super::{acked_levels, Event, EventKind, Level};
use std::collections::BTreeMap;

pub(super) fn check(events: &[Event]) -> Vec<String> {
    let mut settled: BTreeMap<&str, Level> = BTreeMap::new();
    for e in events {
        if let EventKind::Read {
            object,
            level,
            settled: true,
        } = &e.kind
        {
            // The last settled read counts; levels only rise, so take the highest seen.
            let slot = settled.entry(object).or_insert(*level);
            *slot = (*slot).max(*level);
        }
    }
    acked_levels(events)
        .into_iter()
        .filter_map(|(object, (level, ack))| {
            let op = match &ack.kind {
                EventKind::Ack { op, .. } => op.as_str(),
                EventKind::Read { .. } => "read",
            };
            match settled.get(object) {
                None => Some(format!(
                    "{op} of {object} acknowledged to client {} at {} ms was never read back after healing",
                    ack.client, ack.completed_ms
                )),
                Some(seen) if *seen < level => Some(format!(
                    "{op} of {object} acknowledged to client {} at {} ms at {level:?}, but the healed cluster shows {seen:?}",
                    ack.client, ack.completed_ms
                )),
                Some(_) => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn a_token_missing_after_healing_is_lost() {
        let h = vec![
            ack(1, (0, 5), "tok_a", Level::TOKEN_ACTIVE),
            read(1, (90, 91), "tok_a", Level::TOKEN_MISSING, true),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("tok_a") && v[0].contains("client 1"), "{v:?}");
        let h = vec![ack(1, (0, 5), "tok_a", Level::TOKEN_ACTIVE)];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("never read back"), "{v:?}");
    }

    #[test]
    fn an_acknowledged_delete_undone_is_lost() {
        let h = vec![
            ack(1, (0, 5), "tok_a", Level::TOKEN_ACTIVE),
            ack(1, (6, 8), "tok_a", Level::TOKEN_GONE),
            read(2, (90, 91), "tok_a", Level::TOKEN_ACTIVE, true),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_capture_rolled_back_to_authorised_is_lost() {
        let auth = Level::payment("authorized", 0, 0).unwrap();
        let cap = Level::payment("captured", 1000, 0).unwrap();
        let h = vec![
            ack(1, (0, 5), "pay_1", auth),
            ack(1, (6, 9), "pay_1", cap),
            read(2, (100, 101), "pay_1", auth, true),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("pay_1"));
    }

    #[test]
    fn a_refund_whose_amount_shrank_is_lost() {
        let h = vec![
            ack(
                1,
                (0, 5),
                "pay_1",
                Level::payment("captured", 1000, 600).unwrap(),
            ),
            read(
                2,
                (100, 101),
                "pay_1",
                Level::payment("captured", 1000, 300).unwrap(),
                true,
            ),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn unsettled_reads_do_not_count_as_reading_back() {
        let h = vec![
            ack(1, (0, 5), "tok_a", Level::TOKEN_ACTIVE),
            read(2, (6, 7), "tok_a", Level::TOKEN_ACTIVE, false),
        ];
        assert_eq!(check(&h).len(), 1);
    }
}
