//! The vault's invariants hold on every node: the payment invariants of `validate()`
//! after every applied command (the nodes report breaches to the probe as they apply),
//! and the whole of `validate()` on every node's vault at the end.

pub(super) fn check(reports: &[String]) -> Vec<String> {
    reports.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reported_breach_is_a_violation() {
        let v = check(&["node 2 index 40: captured 900 above authorised 500".into()]);
        assert_eq!(v.len(), 1);
        assert!(check(&[]).is_empty());
    }
}
