//! Reads never go back in time: a client never sees an object at a lower level than it
//! saw it before, and a read that starts after a write was acknowledged (to anyone)
//! sees that write.

use super::{Event, EventKind, Level};
use std::collections::BTreeMap;

pub(super) fn check(events: &[Event]) -> Vec<String> {
    let mut found = Vec::new();
    // Per client and object: the highest level this client has seen so far, in the
    // order the client made its (sequential) reads.
    let mut seen: BTreeMap<(u32, &str), (Level, u64)> = BTreeMap::new();
    let mut reads: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Read { .. }))
        .collect();
    reads.sort_by_key(|e| (e.client, e.invoked_ms, e.completed_ms));
    for r in &reads {
        let EventKind::Read { object, level, .. } = &r.kind else {
            continue;
        };
        let slot = seen
            .entry((r.client, object))
            .or_insert((*level, r.invoked_ms));
        if *level < slot.0 {
            found.push(format!(
                "client {} read {object} at {level:?} at {} ms after reading it at {:?} at {} ms",
                r.client, r.invoked_ms, slot.0, slot.1
            ));
        } else {
            *slot = (*level, r.invoked_ms);
        }
    }
    // Per object: acknowledgements ordered by the time the client heard of them.
    let mut acks: BTreeMap<&str, Vec<(u64, Level, u32)>> = BTreeMap::new();
    for e in events {
        if let EventKind::Ack { object, level, .. } = &e.kind {
            acks.entry(object)
                .or_default()
                .push((e.completed_ms, *level, e.client));
        }
    }
    for list in acks.values_mut() {
        list.sort();
    }
    for r in &reads {
        let EventKind::Read { object, level, .. } = &r.kind else {
            continue;
        };
        let Some(list) = acks.get(object.as_str()) else {
            continue;
        };
        let before = list.partition_point(|(t, ..)| *t < r.invoked_ms);
        if let Some((t, acked, client)) = list[..before].iter().max_by_key(|(_, l, _)| *l) {
            if level < acked {
                found.push(format!(
                    "client {} read {object} at {level:?} at {} ms, after client {client} was told {acked:?} at {t} ms",
                    r.client, r.invoked_ms
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn a_client_that_sees_a_deleted_card_come_back_went_back_in_time() {
        let h = vec![
            read(1, (10, 11), "tok_a", Level::TOKEN_GONE, false),
            read(1, (20, 21), "tok_a", Level::TOKEN_ACTIVE, false),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("client 1"));
    }

    #[test]
    fn two_clients_may_see_different_moments() {
        let h = vec![
            read(1, (10, 11), "tok_a", Level::TOKEN_GONE, false),
            read(2, (20, 21), "tok_a", Level::TOKEN_ACTIVE, false),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_read_after_an_acknowledged_capture_must_see_it() {
        let cap = Level::payment("captured", 500, 0).unwrap();
        let auth = Level::payment("authorized", 0, 0).unwrap();
        let h = vec![
            ack(1, (0, 10), "pay_1", cap),
            read(2, (11, 12), "pay_1", auth, false),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("client 2") && v[0].contains("client 1"));
    }

    #[test]
    fn a_read_concurrent_with_the_write_may_miss_it() {
        let h = vec![
            ack(1, (0, 10), "tok_a", Level::TOKEN_GONE),
            read(2, (5, 12), "tok_a", Level::TOKEN_ACTIVE, false),
        ];
        assert!(check(&h).is_empty());
    }
}
