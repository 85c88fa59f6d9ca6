//! Liveness: after the faults stop, the cluster converges (every node up, one leader,
//! identical applied state) and acknowledges a new write, both within a bound.

use super::Recovery;

pub(super) fn check(r: &Recovery) -> Vec<String> {
    let mut found = Vec::new();
    let deadline = r.healed_at_ms + r.bound_ms;
    match r.converged_at_ms {
        Some(t) if t <= deadline => {}
        Some(t) => found.push(format!(
            "converged {} ms after healing, bound {} ms",
            t - r.healed_at_ms,
            r.bound_ms
        )),
        None => found.push(format!(
            "never converged within {} ms of healing: {}",
            r.bound_ms, r.detail
        )),
    }
    match r.first_write_at_ms {
        Some(t) if t <= deadline => {}
        Some(t) => found.push(format!(
            "first write acknowledged {} ms after healing, bound {} ms",
            t - r.healed_at_ms,
            r.bound_ms
        )),
        None => found.push(format!(
            "no write acknowledged within {} ms of healing",
            r.bound_ms
        )),
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(converged: Option<u64>, write: Option<u64>) -> Recovery {
        Recovery {
            healed_at_ms: 1000,
            converged_at_ms: converged,
            first_write_at_ms: write,
            bound_ms: 500,
            detail: "bk behind".into(),
        }
    }

    #[test]
    fn a_cluster_that_never_converges_is_caught() {
        let v = check(&r(None, Some(1100)));
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("bk behind"));
    }

    #[test]
    fn a_late_first_write_is_caught() {
        assert_eq!(check(&r(Some(1200), Some(1600))).len(), 1);
        assert_eq!(check(&r(Some(1200), None)).len(), 1);
        assert!(check(&r(Some(1200), Some(1400))).is_empty());
    }
}
