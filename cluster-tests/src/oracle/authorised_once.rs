//! A payment is authorised at the acquirer at most once, and kura's books agree with
//! the acquirers': every gateway transaction id was authorised at most once over both
//! routes; a payment kura reports authorised, captured or refunded is approved at
//! exactly one acquirer; one it reports declined or failed is approved at none; and the
//! acquirers charge nothing kura does not know about.

use super::{AcquirerTxn, PaymentSeen};
use std::collections::BTreeMap;

pub(super) fn check(payments: &[PaymentSeen], books: &[AcquirerTxn]) -> Vec<String> {
    let mut found = Vec::new();
    let mut per_txn: BTreeMap<&str, (u64, Vec<&str>)> = BTreeMap::new();
    for t in books {
        let slot = per_txn.entry(&t.txn_id).or_default();
        slot.0 += t.authorizations;
        if t.approved_now {
            slot.1.push(&t.route);
        }
    }
    for (txn, (n, _)) in &per_txn {
        if *n > 1 {
            found.push(format!(
                "transaction {txn} was authorised {n} times at the acquirers"
            ));
        }
    }
    let mut known = BTreeMap::new();
    for p in payments {
        known.insert(p.gateway_txn_id.as_str(), p);
        let approved_at = per_txn
            .get(p.gateway_txn_id.as_str())
            .map_or(&[][..], |(_, routes)| routes.as_slice());
        let ok = match p.state.as_str() {
            "authorized" | "captured" | "refunded" => approved_at.len() == 1,
            "declined" | "failed" => approved_at.is_empty(),
            _ => true, // pending: not settled yet; voided: kura does not reverse voids yet
        };
        if !ok {
            found.push(format!(
                "payment {} is {} in kura but its transaction {} is approved at {approved_at:?}",
                p.payment_id, p.state, p.gateway_txn_id
            ));
        }
    }
    for (txn, (_, routes)) in &per_txn {
        if !routes.is_empty() && !known.contains_key(txn) {
            found.push(format!(
                "transaction {txn} is approved at {routes:?} but no payment in kura has it"
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pay(id: &str, state: &str) -> PaymentSeen {
        PaymentSeen {
            payment_id: id.into(),
            token: "tok".into(),
            one_time: false,
            gateway_txn_id: format!("gw_{id}"),
            state: state.into(),
        }
    }

    fn txn(route: &str, id: &str, n: u64, approved: bool) -> AcquirerTxn {
        AcquirerTxn {
            route: route.into(),
            txn_id: format!("gw_{id}"),
            authorizations: n,
            approved_now: approved,
        }
    }

    #[test]
    fn one_authorisation_per_payment_agrees() {
        let v = check(
            &[pay("1", "captured"), pay("2", "declined")],
            &[txn("cafis", "1", 1, true), txn("cafis", "2", 0, false)],
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn the_same_transaction_authorised_on_both_routes_is_caught() {
        let v = check(
            &[pay("1", "authorized")],
            &[txn("cafis", "1", 1, true), txn("cardnet", "1", 1, true)],
        );
        assert!(v.iter().any(|m| m.contains("authorised 2 times")), "{v:?}");
        assert!(v.iter().any(|m| m.contains("approved at")), "{v:?}");
    }

    #[test]
    fn a_failed_payment_that_was_charged_is_caught() {
        let v = check(&[pay("1", "failed")], &[txn("cafis", "1", 1, true)]);
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn an_authorised_payment_the_acquirer_never_approved_is_caught() {
        let v = check(&[pay("1", "authorized")], &[]);
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn a_charge_kura_does_not_know_is_caught() {
        let v = check(&[], &[txn("cardnet", "9", 1, true)]);
        assert_eq!(v.len(), 1, "{v:?}");
    }
}
