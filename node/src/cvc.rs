//! Card security codes, in memory only.
//!
//! PCI DSS forbids storing the CVC after authorisation, and kura never stores it at all:
//! it never enters the Raft log, a snapshot, redb or a log line. The node that takes a
//! one-time token's CVC keeps it here with the token's expiry, and copies it best-effort
//! to the other nodes' memory (sealed under the cluster's key-encryption key on the wire),
//! so a failover usually keeps it. It is wiped when the token is used or expires; a use
//! that finds it gone says `cvc_unavailable`.

use crate::vault::Cvc;
use std::collections::HashMap;
use std::sync::Mutex;

/// Why a CVC could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the in-memory CVC store holds its maximum of {entries_max} codes")]
pub struct CvcStoreFull {
    pub entries_max: usize,
}

struct Held {
    cvc: Cvc,
    expires_at_ms: u64,
}

/// What a token's CVC looks like from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CvcState {
    /// No CVC was given with the token.
    NotSupplied,
    /// Held in this node's memory.
    Available,
    /// Given, but no longer here (used, expired, or lost in a failover).
    Unavailable,
}

/// A bounded, expiring map from token id to CVC. Entries are wiped on removal.
pub struct CvcStore {
    held: Mutex<HashMap<String, Held>>,
    entries_max: usize,
}

impl CvcStore {
    /// An empty store that holds at most `entries_max` codes.
    pub fn new(entries_max: usize) -> CvcStore {
        CvcStore {
            held: Mutex::new(HashMap::new()),
            entries_max,
        }
    }

    /// Holds `cvc` for `token` until `expires_at_ms`. Replaces an earlier copy.
    pub fn put(&self, token: &str, cvc: Cvc, expires_at_ms: u64) -> Result<(), CvcStoreFull> {
        let mut held = self.held.lock().expect("cvc lock");
        if held.len() >= self.entries_max && !held.contains_key(token) {
            return Err(CvcStoreFull {
                entries_max: self.entries_max,
            });
        }
        held.insert(token.to_owned(), Held { cvc, expires_at_ms });
        Ok(())
    }

    /// Removes and returns the token's CVC if it is held and unexpired at `now_ms`.
    pub fn take(&self, token: &str, now_ms: u64) -> Option<Cvc> {
        let h = self.held.lock().expect("cvc lock").remove(token)?;
        (now_ms < h.expires_at_ms).then_some(h.cvc)
    }

    /// True when the token's CVC is held and unexpired at `now_ms`.
    pub fn holds(&self, token: &str, now_ms: u64) -> bool {
        self.held
            .lock()
            .expect("cvc lock")
            .get(token)
            .is_some_and(|h| now_ms < h.expires_at_ms)
    }

    /// The token's CVC state, given whether one was supplied.
    pub fn state(&self, token: &str, supplied: bool, now_ms: u64) -> CvcState {
        match (supplied, self.holds(token, now_ms)) {
            (false, _) => CvcState::NotSupplied,
            (true, true) => CvcState::Available,
            (true, false) => CvcState::Unavailable,
        }
    }

    /// Wipes expired codes and those whose token `usable` says is no longer usable
    /// (`Some(false)`: used, expired or deleted). Codes for tokens this node has not
    /// applied yet (`None`) stay until they expire. Returns how many were wiped.
    pub fn sweep(&self, now_ms: u64, usable: impl Fn(&str) -> Option<bool>) -> usize {
        let mut held = self.held.lock().expect("cvc lock");
        let before = held.len();
        held.retain(|token, h| now_ms < h.expires_at_ms && usable(token) != Some(false));
        before - held.len()
    }

    /// Number of codes held.
    pub fn len(&self) -> usize {
        self.held.lock().expect("cvc lock").len()
    }

    /// True when no code is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Brand;

    fn cvc(s: &str) -> Cvc {
        Cvc::parse(s, Brand::Visa).unwrap()
    }

    #[test]
    fn a_cvc_is_taken_once_and_never_after_expiry() {
        let s = CvcStore::new(10);
        s.put("t1", cvc("123"), 1_000).unwrap();
        s.put("t2", cvc("456"), 1_000).unwrap();
        assert_eq!(s.state("t1", true, 10), CvcState::Available);
        assert_eq!(s.take("t1", 10).unwrap().digits(), "123");
        assert!(s.take("t1", 10).is_none(), "taken once");
        assert_eq!(s.state("t1", true, 10), CvcState::Unavailable);
        assert_eq!(s.state("t9", false, 10), CvcState::NotSupplied);
        assert!(s.take("t2", 1_000).is_none(), "expired at its deadline");
    }

    #[test]
    fn the_store_is_bounded_and_sweeps_used_and_expired_codes() {
        let s = CvcStore::new(3);
        for (t, exp) in [("a", 100), ("b", 1_000), ("c", 1_000)] {
            s.put(t, cvc("111"), exp).unwrap();
        }
        assert_eq!(
            s.put("d", cvc("222"), 1_000),
            Err(CvcStoreFull { entries_max: 3 })
        );
        s.put("c", cvc("333"), 1_000)
            .expect("replacing is not growing");
        let wiped = s.sweep(500, |t| match t {
            "b" => Some(false),
            _ => None,
        });
        assert_eq!(wiped, 2, "a expired, b used");
        assert_eq!(s.len(), 1);
        assert_eq!(s.take("c", 500).unwrap().digits(), "333");
    }
}
