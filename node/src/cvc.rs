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
pub enum CvcStoreFull {
    /// The store holds its maximum.
    #[error("the in-memory CVC store holds its maximum of {entries_max} codes")]
    Full { entries_max: usize },
    /// This merchant holds its share of the store (so that one merchant, whose
    /// publishable key is public, cannot fill it for everyone).
    #[error("this merchant holds its share of {share} codes in the in-memory CVC store")]
    MerchantShare { share: usize },
}

impl CvcStoreFull {
    /// The metric label and problem code suffix.
    pub fn reason(&self) -> &'static str {
        match self {
            CvcStoreFull::Full { .. } => "store_full",
            CvcStoreFull::MerchantShare { .. } => "merchant_share",
        }
    }
}

struct Held {
    cvc: Cvc,
    expires_at_ms: u64,
    merchant_id: String,
}

/// The codes held and how many each merchant holds.
#[derive(Default)]
struct Inner {
    held: HashMap<String, Held>,
    per_merchant: HashMap<String, usize>,
}

impl Inner {
    fn remove(&mut self, token: &str) -> Option<Held> {
        let h = self.held.remove(token)?;
        self.uncount(&h.merchant_id);
        Some(h)
    }

    fn uncount(&mut self, merchant_id: &str) {
        if let Some(n) = self.per_merchant.get_mut(merchant_id) {
            *n -= 1;
            if *n == 0 {
                self.per_merchant.remove(merchant_id);
            }
        }
    }
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

/// A bounded, expiring map from token id to CVC, with a bounded share per merchant.
/// Entries are wiped on removal.
pub struct CvcStore {
    inner: Mutex<Inner>,
    entries_max: usize,
    share_max: usize,
}

impl CvcStore {
    /// An empty store that holds at most `entries_max` codes, of which one merchant may
    /// hold `share_percent` percent.
    pub fn new(entries_max: usize, share_percent: u8) -> CvcStore {
        CvcStore {
            inner: Mutex::new(Inner::default()),
            entries_max,
            share_max: (entries_max * usize::from(share_percent.min(100)) / 100).max(1),
        }
    }

    /// Holds `cvc` for `merchant_id`'s `token` until `expires_at_ms`. Replaces an earlier
    /// copy.
    pub fn put(
        &self,
        token: &str,
        merchant_id: &str,
        cvc: Cvc,
        expires_at_ms: u64,
    ) -> Result<(), CvcStoreFull> {
        let mut inner = self.inner.lock().expect("cvc lock");
        if let Some(old) = inner.remove(token) {
            drop(old);
        } else if inner.held.len() >= self.entries_max {
            return Err(CvcStoreFull::Full {
                entries_max: self.entries_max,
            });
        } else if inner.per_merchant.get(merchant_id).copied().unwrap_or(0) >= self.share_max {
            return Err(CvcStoreFull::MerchantShare {
                share: self.share_max,
            });
        }
        *inner
            .per_merchant
            .entry(merchant_id.to_owned())
            .or_insert(0) += 1;
        inner.held.insert(
            token.to_owned(),
            Held {
                cvc,
                expires_at_ms,
                merchant_id: merchant_id.to_owned(),
            },
        );
        Ok(())
    }

    /// Removes and returns the token's CVC if it is held and unexpired at `now_ms`.
    pub fn take(&self, token: &str, now_ms: u64) -> Option<Cvc> {
        let h = self.inner.lock().expect("cvc lock").remove(token)?;
        (now_ms < h.expires_at_ms).then_some(h.cvc)
    }

    /// True when the token's CVC is held and unexpired at `now_ms`.
    pub fn holds(&self, token: &str, now_ms: u64) -> bool {
        self.inner
            .lock()
            .expect("cvc lock")
            .held
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
        let mut inner = self.inner.lock().expect("cvc lock");
        let gone: Vec<String> = inner
            .held
            .iter()
            .filter(|(token, h)| now_ms >= h.expires_at_ms || usable(token) == Some(false))
            .map(|(t, _)| t.clone())
            .collect();
        for t in &gone {
            inner.remove(t);
        }
        gone.len()
    }

    /// The most codes the store holds.
    pub fn capacity(&self) -> usize {
        self.entries_max
    }

    /// Number of codes held.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("cvc lock").held.len()
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
        let s = CvcStore::new(10, 100);
        s.put("t1", "m", cvc("123"), 1_000).unwrap();
        s.put("t2", "m", cvc("456"), 1_000).unwrap();
        assert_eq!(s.state("t1", true, 10), CvcState::Available);
        assert_eq!(s.take("t1", 10).unwrap().digits(), "123");
        assert!(s.take("t1", 10).is_none(), "taken once");
        assert_eq!(s.state("t1", true, 10), CvcState::Unavailable);
        assert_eq!(s.state("t9", false, 10), CvcState::NotSupplied);
        assert!(s.take("t2", 1_000).is_none(), "expired at its deadline");
    }

    #[test]
    fn the_store_is_bounded_and_sweeps_used_and_expired_codes() {
        let s = CvcStore::new(3, 100);
        for (t, exp) in [("a", 100), ("b", 1_000), ("c", 1_000)] {
            s.put(t, "m", cvc("111"), exp).unwrap();
        }
        assert_eq!(
            s.put("d", "m", cvc("222"), 1_000),
            Err(CvcStoreFull::Full { entries_max: 3 })
        );
        s.put("c", "m", cvc("333"), 1_000)
            .expect("replacing is not growing");
        let wiped = s.sweep(500, |t| match t {
            "b" => Some(false),
            _ => None,
        });
        assert_eq!(wiped, 2, "a expired, b used");
        assert_eq!(s.len(), 1);
        assert_eq!(s.take("c", 500).unwrap().digits(), "333");
    }

    #[test]
    fn one_merchant_cannot_fill_the_store_for_everyone() {
        let s = CvcStore::new(10, 30);
        for t in ["a", "b", "c"] {
            s.put(t, "greedy", cvc("111"), 1_000).unwrap();
        }
        assert_eq!(
            s.put("d", "greedy", cvc("111"), 1_000),
            Err(CvcStoreFull::MerchantShare { share: 3 })
        );
        // Others still have room; the greedy one gets room back as its codes go.
        s.put("x", "other", cvc("222"), 1_000).unwrap();
        assert_eq!(s.take("a", 10).unwrap().digits(), "111");
        s.put("d", "greedy", cvc("111"), 1_000).unwrap();
        assert_eq!(s.sweep(2_000, |_| None), 4, "all expired");
        for t in ["e", "f", "g"] {
            s.put(t, "greedy", cvc("111"), 3_000).unwrap();
        }
    }
}
