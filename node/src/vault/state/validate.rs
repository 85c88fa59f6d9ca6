//! `validate()`: every invariant the vault keeps, checked from its tables alone.
//!
//! Each index is checked both ways without holding the vault in memory: every record's
//! index entries exist (point reads), and each index has exactly as many entries as
//! the records call for (so it holds nothing else).

use super::*;
use crate::vault::violation::Violation;

/// Counts the entries of `table`.
fn count<K: crate::vault::tables::Key, V: Serialize + DeserializeOwned, S: Tables>(
    s: &S,
    table: Table<K, V>,
) -> u64 {
    let mut n = 0;
    table.scan(s, Bound::Unbounded, Bound::Unbounded, false, |_, _| {
        n += 1;
        true
    });
    n
}

fn stop(found: &mut Option<Violation>, v: Violation) -> bool {
    *found = Some(v);
    false
}

impl<S: Tables> Vault<S> {
    /// Checks the invariants that every reachable state satisfies. Returns the first
    /// violation (a storage failure is one).
    pub fn validate(&self) -> Result<(), Violation> {
        self.unless_storage_failed(self.validate_inner())
    }

    /// `r`, unless the storage failed while it was found: then that failure, since
    /// every answer after it is void.
    fn unless_storage_failed(&self, r: Result<(), Violation>) -> Result<(), Violation> {
        match self.tables.failure() {
            Some(e) => Err(Violation::new(e.to_string())),
            None => r,
        }
    }

    fn validate_inner(&self) -> Result<(), Violation> {
        self.validate_merchants()?;
        self.validate_keys()?;
        self.validate_tokens()?;
        self.validate_payments()?;
        self.validate_idempotency()?;
        self.audit().verify().map_err(|b| {
            Violation::new(format!(
                "audit record {} breaks the chain: {}",
                b.seq, b.reason
            ))
        })?;
        Ok(())
    }

    /// The payment part of [`Self::validate`].
    pub fn validate_payments(&self) -> Result<(), Violation> {
        let (mut found, mut payments, mut pending) = (None, 0u64, 0u64);
        PAYMENTS.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |id, p| {
                payments += 1;
                if let Err(v) = self.validate_payment(&id, &p) {
                    return stop(&mut found, v);
                }
                pending += u64::from(p.state == PaymentState::Pending);
                true
            },
        );
        if let Some(v) = found {
            return Err(v);
        }
        let counts = [
            ("orders", count(&self.tables, ORDERS), payments),
            (
                "time index entries",
                count(&self.tables, PAYMENTS_BY_TIME),
                payments,
            ),
            ("pending entries", count(&self.tables, PENDING), pending),
            ("counted payments", self.payment_count(), payments),
        ];
        for (what, have, want) in counts {
            if have != want {
                return Err(Violation::new(format!("{have} {what} for {want} payments")));
            }
        }
        Ok(())
    }

    /// One payment and its index entries.
    fn validate_payment(&self, id: &String, p: &Payment) -> Result<(), Violation> {
        p.validate()?;
        let order = (p.merchant_id.clone(), p.order_id.clone());
        if ORDERS.get(&self.tables, &order).as_ref() != Some(id) {
            return Err(Violation::new(format!(
                "payment {id} is missing from the order index"
            )));
        }
        let by_time = (p.merchant_id.clone(), p.created_at_ms, id.clone());
        if !PAYMENTS_BY_TIME.contains(&self.tables, &by_time) {
            return Err(Violation::new(format!(
                "payment {id} is missing from the time index"
            )));
        }
        if (p.state == PaymentState::Pending) != PENDING.contains(&self.tables, id) {
            return Err(Violation::new(format!(
                "payment {id}: the pending set disagrees"
            )));
        }
        if !MERCHANTS.contains(&self.tables, &p.merchant_id) {
            return Err(Violation::new(format!(
                "payment {id} belongs to an unknown merchant"
            )));
        }
        Ok(())
    }

    /// The payment invariants of [`Self::validate_payments`] for what one command
    /// changed: `touched` lists the keys it wrote ([`crate::vault::tables::Recording`]).
    /// Each payment written is checked with its index entries, and each index entry
    /// written is checked against its payment. Holding before the command, the full
    /// check then holds after it, but for the counts (an index entry written for no
    /// payment is caught; one left behind by a deleted payment the full check finds).
    /// Costs what the command wrote, not what the vault holds.
    pub fn validate_payments_touched(
        &self,
        touched: &[(TableId, Vec<u8>)],
    ) -> Result<(), Violation> {
        self.unless_storage_failed(self.validate_payments_touched_inner(touched))
    }

    fn validate_payments_touched_inner(
        &self,
        touched: &[(TableId, Vec<u8>)],
    ) -> Result<(), Violation> {
        let undecodable = |table: TableId| {
            Violation::new(format!("a key written to {} does not decode", table.name()))
        };
        let payment = |id: &String| PAYMENTS.get(&self.tables, id);
        let mut ids = BTreeSet::new();
        for (table, key) in touched {
            let table = *table;
            if table == PAYMENTS.id {
                ids.insert(PAYMENTS.decode_key(key).ok_or_else(|| undecodable(table))?);
            } else if table == PENDING.id {
                ids.insert(PENDING.decode_key(key).ok_or_else(|| undecodable(table))?);
            } else if table == ORDERS.id {
                let order = ORDERS.decode_key(key).ok_or_else(|| undecodable(table))?;
                if let Some(id) = ORDERS.get(&self.tables, &order) {
                    match payment(&id) {
                        Some(p)
                            if (p.merchant_id.as_str(), p.order_id.as_str())
                                == (order.0.as_str(), order.1.as_str()) => {}
                        _ => {
                            return Err(Violation::new(format!(
                                "order index entry for payment {id} names no such payment"
                            )))
                        }
                    }
                    ids.insert(id);
                }
            } else if table == PAYMENTS_BY_TIME.id {
                let entry = PAYMENTS_BY_TIME
                    .decode_key(key)
                    .ok_or_else(|| undecodable(table))?;
                if PAYMENTS_BY_TIME.contains(&self.tables, &entry) {
                    let (merchant, at, id) = entry;
                    match payment(&id) {
                        Some(p) if p.merchant_id == merchant && p.created_at_ms == at => {}
                        _ => {
                            return Err(Violation::new(format!(
                                "time index entry for payment {id} names no such payment"
                            )))
                        }
                    }
                    ids.insert(id);
                }
            }
        }
        for id in ids {
            match payment(&id) {
                Some(p) => self.validate_payment(&id, &p)?,
                None if PENDING.contains(&self.tables, &id) => {
                    return Err(Violation::new(format!(
                        "payment {id}: pending, but there is no such payment"
                    )))
                }
                None => {}
            }
        }
        Ok(())
    }

    pub(super) fn validate_merchants(&self) -> Result<(), Violation> {
        let merchants = count(&self.tables, MERCHANTS);
        let keys = count(&self.tables, KEY_INDEX);
        if keys != 2 * merchants {
            return Err(Violation::new(format!(
                "{keys} key hashes for {merchants} merchants"
            )));
        }
        for (hash, owner) in KEY_INDEX.all(&self.tables) {
            match MERCHANTS.get(&self.tables, &owner.merchant_id) {
                Some(m) if m.key_hash(owner.role) == hash => {}
                _ => {
                    return Err(Violation::new(format!(
                        "key index entry for merchant {} is stale",
                        owner.merchant_id
                    )))
                }
            }
        }
        Ok(())
    }

    pub(super) fn validate_keys(&self) -> Result<(), Violation> {
        let keys = DATA_KEYS.all(&self.tables);
        if let Some((_, e)) = keys.last() {
            if e.retired_at_ms.is_some() {
                return Err(Violation::new("the current data key is retired"));
            }
        }
        for (v, e) in &keys {
            if e.retired_at_ms.is_some() == e.wrapped.is_some() {
                return Err(Violation::new(format!(
                    "data key v{v}: a retired key must have no bytes, a live one must"
                )));
            }
        }
        Ok(())
    }

    /// Every token, and the indexes and counters kept with them.
    pub(super) fn validate_tokens(&self) -> Result<(), Violation> {
        let mut found = None;
        let (mut tokens, mut on_file, mut spendable) = (0u64, 0u64, 0u64);
        let mut usage: BTreeMap<u32, u64> = BTreeMap::new();
        TOKENS.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |t, r| {
                tokens += 1;
                if let Err(v) = self.validate_token(&t, &r) {
                    return stop(&mut found, v);
                }
                if r.holds_card() {
                    *usage.entry(r.card.key_version).or_default() += 1;
                    if !CARDS_BY_KEY.contains(&self.tables, &(r.card.key_version, t.clone())) {
                        return stop(
                            &mut found,
                            Violation::new(format!("token {t} is missing from the key index")),
                        );
                    }
                }
                if let Some(at) = spent_from(&r) {
                    spendable += 1;
                    if !ONE_TIME_BY_SPEND.contains(&self.tables, &(at, t.clone())) {
                        return stop(
                            &mut found,
                            Violation::new(format!("token {t} is missing from the spend index")),
                        );
                    }
                }
                on_file += u64::from(card_key(&r).is_some());
                true
            },
        );
        if let Some(v) = found {
            return Err(v);
        }
        let counted: BTreeMap<u32, u64> = self
            .key_usage()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        if usage != counted {
            return Err(Violation::new(format!(
                "key usage counts {counted:?} differ from the cards {usage:?}"
            )));
        }
        let cards: u64 = usage.values().sum();
        let counts = [
            ("card index entries", count(&self.tables, CARDS), on_file),
            (
                "key index entries",
                count(&self.tables, CARDS_BY_KEY),
                cards,
            ),
            (
                "spend index entries",
                count(&self.tables, ONE_TIME_BY_SPEND),
                spendable,
            ),
            ("counted tokens", self.token_count() as u64, tokens),
        ];
        for (what, have, want) in counts {
            if have != want {
                return Err(Violation::new(format!("{have} {what}, {want} expected")));
            }
        }
        if on_file > 0 && self.fingerprint_key_record().is_none() {
            return Err(Violation::new("fingerprints exist but no fingerprint key"));
        }
        Ok(())
    }

    pub(super) fn validate_token(&self, token: &str, r: &TokenRecord) -> Result<(), Violation> {
        if !MERCHANTS.contains(&self.tables, &r.merchant_id) {
            return Err(Violation::new(format!(
                "token {token} belongs to unknown merchant {}",
                r.merchant_id
            )));
        }
        match r.purged_at_ms {
            None if self.data_key(r.card.key_version).is_none() => {
                return Err(Violation::new(format!(
                    "token {token} sealed under missing or retired data key v{}",
                    r.card.key_version
                )));
            }
            Some(at)
                if !r.spent_at(at) || !r.card.ciphertext.is_empty() || !r.card.nonce.is_empty() =>
            {
                return Err(Violation::new(format!(
                    "token {token}: only a spent one-time token loses its card, and all of it"
                )));
            }
            _ => {}
        }
        if (r.kind == TokenKind::CardOnFile) != r.member_id.is_some() {
            return Err(Violation::new(format!(
                "token {token}: member id must be set exactly for card-on-file tokens"
            )));
        }
        let clock = self.clock_ms();
        if r.created_at_ms > clock {
            return Err(Violation::new(format!(
                "token {token} created after the state clock"
            )));
        }
        if r.used_at_ms
            .is_some_and(|u| r.kind != TokenKind::OneTime || u > clock)
        {
            return Err(Violation::new(format!(
                "token {token}: only one-time tokens are used, and not in the future"
            )));
        }
        if r.used_at_ms
            .is_some_and(|u| r.expires_at_ms.is_some_and(|e| u >= e))
        {
            return Err(Violation::new(format!(
                "token {token} was used after it expired"
            )));
        }
        if let Some(k) = card_key(r) {
            if CARDS.get(&self.tables, &k).as_deref() != Some(token) {
                return Err(Violation::new(format!(
                    "card-on-file token {token} is missing from the card index"
                )));
            }
        }
        Ok(())
    }

    /// Idempotency records and their index by time.
    pub(super) fn validate_idempotency(&self) -> Result<(), Violation> {
        let (mut found, mut records) = (None, 0u64);
        IDEMPOTENCY.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |(m, k), r| {
                records += 1;
                if !IDEMPOTENCY_BY_TIME.contains(&self.tables, &(r.created_at_ms, m.clone(), k)) {
                    return stop(
                        &mut found,
                        Violation::new(format!(
                            "an idempotency key of {m} is missing from its index"
                        )),
                    );
                }
                if let idempotency::StoredAnswer::PaymentAt(at) = &r.outcome {
                    if self
                        .payment_as_recorded(r.payment_id.as_deref(), at)
                        .is_none()
                    {
                        return stop(
                            &mut found,
                            Violation::new(format!(
                                "an idempotency key of {m} names a payment the vault does not \
                                 hold as recorded"
                            )),
                        );
                    }
                }
                true
            },
        );
        if let Some(v) = found {
            return Err(v);
        }
        let indexed = count(&self.tables, IDEMPOTENCY_BY_TIME);
        if indexed != records {
            return Err(Violation::new(format!(
                "{indexed} idempotency index entries for {records} keys"
            )));
        }
        Ok(())
    }
}
