//! What the vault answers: lookups and scans, never a change.

use super::*;

/// A merchant's public description.
pub(super) fn merchant_info(id: &str, m: &Merchant) -> MerchantInfo {
    MerchantInfo {
        merchant_id: id.to_owned(),
        name: m.name.clone(),
        created_at_ms: m.created_at_ms,
        key_rotated_at_ms: m.key_rotated_at_ms,
        settings: m.settings.clone(),
    }
}

impl<S: Tables> Vault<S> {
    /// The audit trail.
    pub fn audit(&self) -> AuditLog<&S> {
        AuditLog::new(&self.tables)
    }

    /// Up to `limit` one-time tokens spent by `now_ms` that still hold their card,
    /// read from the index by spend time (the purge never scans live cards).
    pub fn purgeable(&self, limit: usize, now_ms: u64) -> Vec<String> {
        let mut found = Vec::new();
        if limit == 0 {
            return found;
        }
        let end = (now_ms.saturating_add(1), String::new());
        ONE_TIME_BY_SPEND.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Excluded(&end),
            false,
            |(_, t), ()| {
                found.push(t);
                found.len() < limit
            },
        );
        found
    }

    /// Live keys (data keys not retired, and the fingerprint key, as version 0) with
    /// their wrapping and KEK id.
    pub fn wrapped_keys(&self) -> Vec<(u32, Vec<u8>, Option<String>)> {
        let fp = self
            .fingerprint_key_record()
            .map(|k| (0, k.wrapped, k.kek_id));
        let data = DATA_KEYS
            .all(&self.tables)
            .into_iter()
            .filter_map(|(v, e)| e.wrapped.map(|w| (v, w, e.kek_id)));
        fp.into_iter().chain(data).collect()
    }

    /// The KEK data key `version` is wrapped under (`None`: unknown, retired or wrapped
    /// before KEK ids).
    pub fn data_key_kek(&self, version: u32) -> Option<String> {
        DATA_KEYS.get(&self.tables, &version)?.kek_id
    }

    /// The fingerprint key's record, once installed.
    pub(super) fn fingerprint_key_record(&self) -> Option<WrappedKey> {
        meta_get(&self.tables, meta::FINGERPRINT_KEY)
    }

    /// The KEK the fingerprint key is wrapped under.
    pub fn fingerprint_key_kek(&self) -> Option<String> {
        self.fingerprint_key_record()?.kek_id
    }

    /// Whose key hashes to `key_sha256`, if anyone's.
    pub fn key_owner(&self, key_sha256: &str) -> Option<KeyOwner> {
        KEY_INDEX.get(&self.tables, &key_sha256.to_owned())
    }

    /// A merchant's public description.
    pub fn merchant_info(&self, id: &str) -> Option<MerchantInfo> {
        MERCHANTS
            .get(&self.tables, &id.to_owned())
            .map(|m| merchant_info(id, &m))
    }

    /// All merchants, by id.
    pub fn merchants(&self) -> Vec<MerchantInfo> {
        MERCHANTS
            .all(&self.tables)
            .iter()
            .map(|(id, m)| merchant_info(id, m))
            .collect()
    }

    /// True when any merchant allows browser requests from `origin`.
    pub fn origin_allowed_by_any(&self, origin: &str) -> bool {
        let mut allowed = false;
        MERCHANTS.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |_, m| {
                allowed = m.settings.allowed_origins.iter().any(|o| o == origin);
                !allowed
            },
        );
        allowed
    }

    /// The token's metadata, only when `merchant_id` owns it: to any other merchant a
    /// token does not exist.
    pub fn token_for(&self, merchant_id: &str, token: &str) -> Option<TokenMeta> {
        self.record_for(merchant_id, token)
            .map(|r| token_meta(token, &r))
    }

    /// A member's card-on-file tokens at `merchant_id`, by fingerprint.
    pub fn member_cards(&self, merchant_id: &str, member_id: &str) -> Vec<TokenMeta> {
        let mut tokens = Vec::new();
        let prefix = (merchant_id.to_owned(), member_id.to_owned());
        CARDS.scan_prefix(&self.tables, &prefix, false, |_, t| {
            tokens.push(t);
            true
        });
        let mut cards: Vec<TokenMeta> = tokens
            .iter()
            .filter_map(|t| Some(token_meta(t, &TOKENS.get(&self.tables, t)?)))
            .collect();
        cards.sort_by(|a, b| a.token.cmp(&b.token));
        cards
    }

    /// A token's record, only when `merchant_id` owns it (the leader reads it to re-seal).
    pub fn record_for(&self, merchant_id: &str, token: &str) -> Option<TokenRecord> {
        TOKENS
            .get(&self.tables, &token.to_owned())
            .filter(|r| r.merchant_id == merchant_id)
    }

    /// Any merchant's token record (node-internal housekeeping; never for a request).
    pub fn any_token(&self, token: &str) -> Option<TokenRecord> {
        TOKENS.get(&self.tables, &token.to_owned())
    }

    /// Up to `limit` token records after token id `after` (exclusive), in token order.
    pub fn cards_after(&self, after: Option<&str>, limit: usize) -> Vec<(String, TokenRecord)> {
        let after = after.map(str::to_owned);
        let from = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        TOKENS.scan(&self.tables, from, Bound::Unbounded, false, |t, r| {
            if r.holds_card() {
                out.push((t, r));
            }
            out.len() < limit
        });
        out
    }

    /// Up to `limit` cards sealed under a version older than `current`, after `after`
    /// (a version and token, exclusive): the next batch of the background re-wrap, read
    /// from the index by key version.
    pub fn stale_cards(
        &self,
        after: Option<&(u32, String)>,
        current: u32,
        limit: usize,
    ) -> Vec<(String, TokenRecord)> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let end = (current, String::new());
        let mut tokens = Vec::new();
        if limit == 0 {
            return Vec::new();
        }
        CARDS_BY_KEY.scan(
            &self.tables,
            from,
            Bound::Excluded(&end),
            false,
            |(_, t), ()| {
                tokens.push(t);
                tokens.len() < limit
            },
        );
        tokens
            .into_iter()
            .filter_map(|t| {
                let r = TOKENS.get(&self.tables, &t)?;
                Some((t, r))
            })
            .collect()
    }

    /// The wrapped fingerprint key, once installed.
    pub fn fingerprint_key(&self) -> Option<Vec<u8>> {
        self.fingerprint_key_record().map(|k| k.wrapped)
    }

    /// Number of tokens stored.
    pub fn token_count(&self) -> usize {
        meta_get::<u64, _>(&self.tables, meta::TOKEN_COUNT).unwrap_or(0) as usize
    }

    /// Number of payments stored.
    pub fn payment_count(&self) -> u64 {
        meta_get(&self.tables, meta::PAYMENT_COUNT).unwrap_or(0)
    }

    /// The newest data key version and its entry, retired or not.
    pub(super) fn newest_data_key(&self) -> Option<(u32, DataKeyEntry)> {
        DATA_KEYS.first(&self.tables, true)
    }

    /// The current data key (new cards are sealed under it): its version and wrapped bytes.
    pub fn current_data_key(&self) -> Option<(u32, Vec<u8>)> {
        let (v, e) = self.newest_data_key()?;
        Some((v, e.wrapped?))
    }

    /// A data key by version, unless unknown or retired.
    pub fn data_key(&self, version: u32) -> Option<Vec<u8>> {
        DATA_KEYS.get(&self.tables, &version)?.wrapped
    }

    /// Cards sealed under each data key version.
    pub(super) fn key_usage(&self) -> BTreeMap<u32, u64> {
        meta_get(&self.tables, meta::KEY_USAGE).unwrap_or_default()
    }

    /// Every data key version with its state and how many cards it seals.
    pub fn data_keys(&self) -> Vec<DataKeyInfo> {
        let keys = DATA_KEYS.all(&self.tables);
        let usage = self.key_usage();
        let current = keys.last().map(|(v, _)| *v);
        keys.into_iter()
            .map(|(v, e)| DataKeyInfo {
                version: v,
                state: if e.retired_at_ms.is_some() {
                    "retired"
                } else if Some(v) == current {
                    "current"
                } else {
                    "active"
                },
                installed_at_ms: e.installed_at_ms,
                retired_at_ms: e.retired_at_ms,
                cards: usage.get(&v).copied().unwrap_or(0),
                kek_id: e.kek_id,
            })
            .collect()
    }

    /// How many leadership changes were recorded, by cause.
    pub fn leader_changes(&self) -> BTreeMap<LeaderChangeCause, u64> {
        meta_get(&self.tables, meta::LEADER_CHANGES).unwrap_or_default()
    }

    /// The newest recorded leadership change.
    pub fn last_leader_change(&self) -> Option<LeaderChange> {
        meta_get(&self.tables, meta::LAST_LEADER_CHANGE)
    }

    /// True when the node named `name` is drained.
    pub fn is_drained(&self, name: &str) -> bool {
        meta_get::<BTreeSet<String>, _>(&self.tables, meta::DRAINED)
            .is_some_and(|d| d.contains(name))
    }

    /// A payment, only when `merchant_id` owns it.
    pub fn payment_for(&self, merchant_id: &str, payment_id: &str) -> Option<Payment> {
        self.any_payment(payment_id)
            .filter(|p| p.merchant_id == merchant_id)
    }

    /// Any merchant's payment (the leader's own bookkeeping; never for a request).
    pub fn any_payment(&self, payment_id: &str) -> Option<Payment> {
        PAYMENTS.get(&self.tables, &payment_id.to_owned())
    }

    /// The payment for a merchant's order, if any.
    pub fn payment_by_order(&self, merchant_id: &str, order_id: &str) -> Option<Payment> {
        let id = ORDERS.get(&self.tables, &(merchant_id.to_owned(), order_id.to_owned()))?;
        self.any_payment(&id)
    }

    /// A merchant's payments created in `[from_ms, to_ms)`, oldest first (at most
    /// `limit`), read from the index by merchant and time.
    pub fn payments_between(
        &self,
        merchant_id: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Vec<Payment> {
        let mut ids = Vec::new();
        if limit == 0 || from_ms >= to_ms {
            return Vec::new();
        }
        let from = (merchant_id.to_owned(), from_ms, String::new());
        let to = (merchant_id.to_owned(), to_ms, String::new());
        PAYMENTS_BY_TIME.scan(
            &self.tables,
            Bound::Included(&from),
            Bound::Excluded(&to),
            false,
            |(_, _, id), ()| {
                ids.push(id);
                ids.len() < limit
            },
        );
        ids.iter().filter_map(|id| self.any_payment(id)).collect()
    }

    /// Payments still pending at the acquirer (a new leader resolves them).
    pub fn pending_payments(&self) -> Vec<Payment> {
        let mut ids = Vec::new();
        PENDING.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |id, ()| {
                ids.push(id);
                true
            },
        );
        ids.iter().filter_map(|id| self.any_payment(id)).collect()
    }

    /// How many payments are pending, and when the oldest of the first `limit` of them
    /// was created (a metric's worth: it reads at most `limit` payments).
    pub fn pending_summary(&self, limit: usize) -> (u64, Option<u64>) {
        let (mut count, mut oldest) = (0u64, None::<u64>);
        PENDING.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |id, ()| {
                count += 1;
                if count as usize <= limit {
                    if let Some(p) = self.any_payment(&id) {
                        oldest = Some(oldest.map_or(p.created_at_ms, |o| o.min(p.created_at_ms)));
                    }
                }
                true
            },
        );
        (count, oldest)
    }

    /// Leader-stamped time of the newest applied command.
    pub fn clock_ms(&self) -> u64 {
        meta_get(&self.tables, meta::CLOCK_MS).unwrap_or(0)
    }

    /// The time a leader stamps on a new command, given its wall clock: never behind
    /// the replicated clock, so time in the log never goes back.
    pub fn stamp(&self, wall_ms: u64) -> u64 {
        wall_ms.max(self.clock_ms())
    }
}
