//! What the vault answers: lookups and scans, never a change.

use super::*;

impl VaultState {
    /// The spent one-time tokens that still hold a card among at most `scan` records
    /// after `after` (at most `limit` of them), and where the next scan continues
    /// (`None`: the end was reached).
    pub fn purgeable(
        &self,
        after: Option<&str>,
        scan: usize,
        limit: usize,
        now_ms: u64,
    ) -> (Vec<String>, Option<String>) {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let mut found = Vec::new();
        let (mut last, mut scanned) = (None, 0);
        for (t, r) in self.tokens.range((from, Bound::Unbounded)).take(scan) {
            scanned += 1;
            last = Some(t);
            if r.holds_card() && r.spent_at(now_ms) {
                found.push(t.clone());
                if found.len() == limit {
                    return (found, last.cloned());
                }
            }
        }
        // A scan that stopped short of its bound reached the end.
        (found, last.filter(|_| scanned == scan).cloned())
    }

    /// Live keys (data keys not retired, and the fingerprint key, as version 0) with
    /// their wrapping and KEK id.
    pub fn wrapped_keys(&self) -> Vec<(u32, Vec<u8>, Option<String>)> {
        let data = self.data_keys.iter().filter_map(|(v, e)| {
            e.wrapped
                .as_ref()
                .map(|w| (*v, w.clone(), e.kek_id.clone()))
        });
        let fp = self
            .fingerprint_key
            .iter()
            .map(|k| (0, k.wrapped.clone(), k.kek_id.clone()));
        fp.chain(data).collect()
    }

    /// The KEK data key `version` is wrapped under (`None`: unknown, retired or wrapped
    /// before KEK ids).
    pub fn data_key_kek(&self, version: u32) -> Option<&str> {
        self.data_keys.get(&version)?.kek_id.as_deref()
    }

    /// The KEK the fingerprint key is wrapped under.
    pub fn fingerprint_key_kek(&self) -> Option<&str> {
        self.fingerprint_key.as_ref()?.kek_id.as_deref()
    }

    /// Whose key hashes to `key_sha256`, if anyone's.
    pub fn key_owner(&self, key_sha256: &str) -> Option<&KeyOwner> {
        self.key_index.get(key_sha256)
    }

    /// A merchant's public description.
    pub fn merchant_info(&self, id: &str) -> Option<MerchantInfo> {
        self.merchants.get(id).map(|m| MerchantInfo {
            merchant_id: id.to_owned(),
            name: m.name.clone(),
            created_at_ms: m.created_at_ms,
            key_rotated_at_ms: m.key_rotated_at_ms,
            settings: m.settings.clone(),
        })
    }

    /// All merchants, by id.
    pub fn merchants(&self) -> Vec<MerchantInfo> {
        self.merchants
            .keys()
            .filter_map(|id| self.merchant_info(id))
            .collect()
    }

    /// True when any merchant allows browser requests from `origin`.
    pub fn origin_allowed_by_any(&self, origin: &str) -> bool {
        self.merchants
            .values()
            .any(|m| m.settings.allowed_origins.iter().any(|o| o == origin))
    }

    /// The token's metadata, only when `merchant_id` owns it: to any other merchant a
    /// token does not exist.
    pub fn token_for(&self, merchant_id: &str, token: &str) -> Option<TokenMeta> {
        self.record_for(merchant_id, token)
            .map(|r| token_meta(token, r))
    }

    /// A member's card-on-file tokens at `merchant_id`, by token id.
    pub fn member_cards(&self, merchant_id: &str, member_id: &str) -> Vec<TokenMeta> {
        let from = (merchant_id.to_owned(), member_id.to_owned(), String::new());
        self.cards
            .range(from..)
            .take_while(|((m, mem, _), _)| m == merchant_id && mem == member_id)
            .map(|(_, t)| token_meta(t, &self.tokens[t]))
            .collect()
    }

    /// A token's record, only when `merchant_id` owns it (the leader reads it to re-seal).
    pub fn record_for(&self, merchant_id: &str, token: &str) -> Option<&TokenRecord> {
        self.tokens
            .get(token)
            .filter(|r| r.merchant_id == merchant_id)
    }

    /// Any merchant's token record (node-internal housekeeping; never for a request).
    pub fn any_token(&self, token: &str) -> Option<&TokenRecord> {
        self.tokens.get(token)
    }

    /// Up to `limit` token records after token id `after` (exclusive), in token order.
    pub fn cards_after(&self, after: Option<&str>, limit: usize) -> Vec<(String, TokenRecord)> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        self.tokens
            .range((from, Bound::Unbounded))
            .filter(|(_, r)| r.holds_card())
            .take(limit)
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect()
    }

    /// Up to `limit` cards after token id `after` (exclusive) sealed under a version older
    /// than `current`: the next batch of the background re-wrap, in token order.
    pub fn stale_cards(
        &self,
        after: Option<&str>,
        current: u32,
        limit: usize,
    ) -> Vec<(String, TokenRecord)> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        self.tokens
            .range((from, Bound::Unbounded))
            .filter(|(_, r)| r.holds_card() && r.card.key_version < current)
            .take(limit)
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect()
    }

    /// The wrapped fingerprint key, once installed.
    pub fn fingerprint_key(&self) -> Option<&[u8]> {
        self.fingerprint_key.as_ref().map(|k| k.wrapped.as_slice())
    }

    /// Number of tokens stored.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The current data key (new cards are sealed under it): its version and wrapped bytes.
    pub fn current_data_key(&self) -> Option<(u32, &[u8])> {
        let (v, e) = self.data_keys.iter().next_back()?;
        Some((*v, e.wrapped.as_deref()?))
    }

    /// A data key by version, unless unknown or retired.
    pub fn data_key(&self, version: u32) -> Option<&[u8]> {
        self.data_keys.get(&version)?.wrapped.as_deref()
    }

    /// Every data key version with its state and how many cards it seals.
    pub fn data_keys(&self) -> Vec<DataKeyInfo> {
        let current = self.data_keys.keys().next_back().copied();
        self.data_keys
            .iter()
            .map(|(v, e)| DataKeyInfo {
                version: *v,
                state: if e.retired_at_ms.is_some() {
                    "retired"
                } else if Some(*v) == current {
                    "current"
                } else {
                    "active"
                },
                installed_at_ms: e.installed_at_ms,
                retired_at_ms: e.retired_at_ms,
                cards: self.key_usage.get(v).copied().unwrap_or(0),
                kek_id: e.kek_id.clone(),
            })
            .collect()
    }

    /// How many leadership changes were recorded, by cause.
    pub fn leader_changes(&self) -> &BTreeMap<LeaderChangeCause, u64> {
        &self.leader_changes
    }

    /// The newest recorded leadership change.
    pub fn last_leader_change(&self) -> Option<&LeaderChange> {
        self.last_leader_change.as_ref()
    }

    /// True when the node named `name` is drained.
    pub fn is_drained(&self, name: &str) -> bool {
        self.drained.contains(name)
    }

    /// A payment, only when `merchant_id` owns it.
    pub fn payment_for(&self, merchant_id: &str, payment_id: &str) -> Option<&Payment> {
        self.payments
            .get(payment_id)
            .filter(|p| p.merchant_id == merchant_id)
    }

    /// Any merchant's payment (the leader's own bookkeeping; never for a request).
    pub fn any_payment(&self, payment_id: &str) -> Option<&Payment> {
        self.payments.get(payment_id)
    }

    /// The payment for a merchant's order, if any.
    pub fn payment_by_order(&self, merchant_id: &str, order_id: &str) -> Option<&Payment> {
        let id = self
            .orders
            .get(&(merchant_id.to_owned(), order_id.to_owned()))?;
        self.payments.get(id)
    }

    /// A merchant's idempotency record for `key`.
    pub fn idempotency(&self, merchant_id: &str, key: &str) -> Option<&IdempotencyRecord> {
        self.idempotency
            .get(&(merchant_id.to_owned(), key.to_owned()))
    }

    /// A merchant's payments created in `[from_ms, to_ms)`, by id (bounded by `limit`).
    pub fn payments_between(
        &self,
        merchant_id: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Vec<&Payment> {
        self.payments
            .values()
            .filter(|p| {
                p.merchant_id == merchant_id
                    && p.created_at_ms >= from_ms
                    && p.created_at_ms < to_ms
            })
            .take(limit)
            .collect()
    }

    /// Payments still pending at the acquirer (a new leader resolves them).
    pub fn pending_payments(&self) -> Vec<&Payment> {
        self.payments
            .values()
            .filter(|p| p.state == PaymentState::Pending)
            .collect()
    }

    /// The audit trail.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Leader-stamped time of the newest applied command.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The time a leader stamps on a new command, given its wall clock: never behind
    /// the replicated clock, so time in the log never goes back.
    pub fn stamp(&self, wall_ms: u64) -> u64 {
        wall_ms.max(self.clock_ms)
    }
}
