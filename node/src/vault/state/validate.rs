//! `validate()`: every invariant the vault keeps, checked from its state alone.

use super::*;
use crate::vault::violation::Violation;

impl VaultState {
    /// Checks the invariants that every reachable state satisfies. Returns the first violation.
    pub fn validate(&self) -> Result<(), Violation> {
        self.validate_merchants()?;
        self.validate_keys()?;
        for (token, r) in &self.tokens {
            self.validate_token(token, r)?;
        }
        for (k, token) in &self.cards {
            if self.tokens.get(token).and_then(card_key).as_ref() != Some(k) {
                return Err(Violation::new(format!(
                    "card index entry for {token} points at no matching card"
                )));
            }
        }
        if !self.cards.is_empty() && self.fingerprint_key.is_none() {
            return Err(Violation::new("fingerprints exist but no fingerprint key"));
        }
        self.validate_payments()?;
        self.audit.verify().map_err(|b| {
            Violation::new(format!(
                "audit record {} breaks the chain: {}",
                b.seq, b.reason
            ))
        })?;
        Ok(())
    }

    /// The payment part of [`Self::validate`]: cheap enough to run after every command.
    pub fn validate_payments(&self) -> Result<(), Violation> {
        if self.orders.len() != self.payments.len() {
            return Err(Violation::new(format!(
                "{} orders for {} payments",
                self.orders.len(),
                self.payments.len()
            )));
        }
        for (id, p) in &self.payments {
            p.validate()?;
            let order = (p.merchant_id.clone(), p.order_id.clone());
            if self.orders.get(&order) != Some(id) {
                return Err(Violation::new(format!(
                    "payment {id} is missing from the order index"
                )));
            }
            if !self.merchants.contains_key(&p.merchant_id) {
                return Err(Violation::new(format!(
                    "payment {id} belongs to an unknown merchant"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn validate_merchants(&self) -> Result<(), Violation> {
        if self.key_index.len() != 2 * self.merchants.len() {
            return Err(Violation::new(format!(
                "{} key hashes for {} merchants",
                self.key_index.len(),
                self.merchants.len()
            )));
        }
        for (hash, owner) in &self.key_index {
            match self.merchants.get(&owner.merchant_id) {
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
        let mut usage: BTreeMap<u32, u64> = BTreeMap::new();
        for r in self.tokens.values().filter(|r| r.holds_card()) {
            *usage.entry(r.card.key_version).or_default() += 1;
        }
        let counted: BTreeMap<u32, u64> = self
            .key_usage
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(v, n)| (*v, *n))
            .collect();
        if usage != counted {
            return Err(Violation::new(format!(
                "key usage counts {counted:?} differ from the cards {usage:?}"
            )));
        }
        if let Some((_, e)) = self.data_keys.iter().next_back() {
            if e.retired_at_ms.is_some() {
                return Err(Violation::new("the current data key is retired"));
            }
        }
        for (v, e) in &self.data_keys {
            if e.retired_at_ms.is_some() == e.wrapped.is_some() {
                return Err(Violation::new(format!(
                    "data key v{v}: a retired key must have no bytes, a live one must"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn validate_token(&self, token: &str, r: &TokenRecord) -> Result<(), Violation> {
        if !self.merchants.contains_key(&r.merchant_id) {
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
        if r.created_at_ms > self.clock_ms {
            return Err(Violation::new(format!(
                "token {token} created after the state clock"
            )));
        }
        if r.used_at_ms
            .is_some_and(|u| r.kind != TokenKind::OneTime || u > self.clock_ms)
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
            if self.cards.get(&k).map(String::as_str) != Some(token) {
                return Err(Violation::new(format!(
                    "card-on-file token {token} is missing from the card index"
                )));
            }
        }
        Ok(())
    }
}
