//! A one-time token pays at most once: no two payments in the settled cluster were made
//! with the same one-time token (clients deliberately try to spend tokens twice).

use super::PaymentSeen;
use std::collections::BTreeMap;

pub(super) fn check(payments: &[PaymentSeen]) -> Vec<String> {
    let mut by_token: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in payments.iter().filter(|p| p.one_time) {
        by_token.entry(&p.token).or_default().push(&p.payment_id);
    }
    by_token
        .into_iter()
        .filter(|(_, ps)| ps.len() > 1)
        .map(|(t, ps)| format!("one-time token {t} paid for {} payments: {ps:?}", ps.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pay(id: &str, token: &str, one_time: bool) -> PaymentSeen {
        PaymentSeen {
            payment_id: id.into(),
            token: token.into(),
            one_time,
            gateway_txn_id: format!("gw_{id}"),
            state: "authorized".into(),
        }
    }

    #[test]
    fn a_one_time_token_behind_two_payments_was_used_twice() {
        let v = check(&[pay("p1", "tok_1", true), pay("p2", "tok_1", true)]);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("tok_1"));
    }

    #[test]
    fn card_on_file_tokens_pay_many_times() {
        assert!(check(&[pay("p1", "tok_c", false), pay("p2", "tok_c", false)]).is_empty());
        assert!(check(&[pay("p1", "tok_1", true), pay("p2", "tok_2", true)]).is_empty());
    }
}
