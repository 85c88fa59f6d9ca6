//! Applying each command: the state changes behind `VaultState::apply`.

use super::*;
use std::collections::BTreeMap;

impl VaultState {
    pub(super) fn apply_inner(&mut self, cmd: &Command) -> Response {
        let result = match cmd {
            Command::InstallDataKey {
                version,
                wrapped,
                kek_id,
                at_ms,
                ..
            } => self.install_data_key(*version, wrapped, kek_id.clone(), *at_ms),
            Command::RewrapKeys {
                kek_id,
                keys,
                fingerprint,
                ..
            } => self.rewrap_keys(kek_id, keys, fingerprint.as_ref()),
            Command::CreateMerchant {
                merchant_id,
                name,
                secret_key_sha256,
                publishable_key_sha256,
                settings,
                at_ms,
                ..
            } => {
                let m = Merchant {
                    name: name.clone(),
                    secret_key_sha256: secret_key_sha256.clone(),
                    publishable_key_sha256: publishable_key_sha256.clone(),
                    settings: settings.clone(),
                    created_at_ms: *at_ms,
                    key_rotated_at_ms: *at_ms,
                };
                self.create_merchant(merchant_id, m)
            }
            Command::RotateMerchantKey {
                merchant_id,
                role,
                key_sha256,
                at_ms,
                ..
            } => self.rotate_merchant_key(merchant_id, *role, key_sha256, *at_ms),
            Command::UpdateMerchant {
                merchant_id,
                settings,
                ..
            } => self.update_merchant(merchant_id, settings),
            Command::Tokenize {
                merchant_id,
                token,
                kind,
                member_id,
                card,
                at_ms,
                expires_at_ms,
                fingerprint,
                cvc_supplied,
                ..
            } => {
                let record = TokenRecord {
                    merchant_id: merchant_id.clone(),
                    kind: *kind,
                    member_id: member_id.clone(),
                    card: card.clone(),
                    created_at_ms: *at_ms,
                    expires_at_ms: *expires_at_ms,
                    fingerprint: fingerprint.clone(),
                    used_at_ms: None,
                    cvc_supplied: *cvc_supplied,
                    purged_at_ms: None,
                };
                self.tokenize(token, record)
            }
            Command::UseOneTimeForCard {
                merchant_id,
                one_time_token,
                member_id,
                new_token,
                card,
                fingerprint,
                at_ms,
            } => self
                .new_card_id_free(merchant_id, member_id, fingerprint, new_token)
                .and_then(|()| self.use_one_time(merchant_id, one_time_token, *at_ms))
                .and_then(|()| {
                    let record = TokenRecord {
                        merchant_id: merchant_id.clone(),
                        kind: TokenKind::CardOnFile,
                        member_id: Some(member_id.clone()),
                        card: card.clone(),
                        created_at_ms: *at_ms,
                        expires_at_ms: None,
                        fingerprint: Some(fingerprint.clone()),
                        used_at_ms: None,
                        cvc_supplied: false,
                        purged_at_ms: None,
                    };
                    self.tokenize(new_token, record)
                }),
            Command::InstallFingerprintKey {
                wrapped,
                kek_id,
                at_ms,
            } => {
                if self.fingerprint_key.is_some() {
                    Err(Refusal::FingerprintKeyExists)
                } else {
                    self.fingerprint_key = Some(WrappedKey {
                        wrapped: wrapped.clone(),
                        kek_id: kek_id.clone(),
                        installed_at_ms: *at_ms,
                    });
                    Ok(Response::FingerprintKeyInstalled)
                }
            }
            Command::DeleteCard {
                merchant_id,
                member_id,
                token,
                ..
            } => self.delete_card(merchant_id, member_id, token),
            Command::ResealCards {
                to_version, cards, ..
            } => self.reseal(*to_version, cards),
            Command::RetireDataKey { version, at_ms, .. } => self.retire_data_key(*version, *at_ms),
            Command::RecordLeaderChange {
                leader_node,
                leader_name,
                term,
                cause,
                at_ms,
            } => {
                *self.leader_changes.entry(*cause).or_default() += 1;
                self.last_leader_change = Some(LeaderChange {
                    leader_node: *leader_node,
                    leader_name: leader_name.clone(),
                    term: *term,
                    cause: *cause,
                    at_ms: *at_ms,
                });
                Ok(Response::Recorded)
            }
            Command::SetDrained { node, drained, .. } => {
                if *drained {
                    self.drained.insert(node.clone());
                } else {
                    self.drained.remove(node);
                }
                Ok(Response::Recorded)
            }
            Command::OpenPayment {
                payment_id,
                merchant_id,
                order_id,
                token,
                amount,
                currency,
                capture,
                gateway_txn_id,
                route,
                idempotency,
                at_ms,
            } => {
                let mut p = Payment::open(
                    payment_id,
                    merchant_id,
                    order_id,
                    token,
                    *amount,
                    currency,
                    *capture,
                    gateway_txn_id,
                    route,
                    *at_ms,
                );
                p.idempotency_key = idempotency.as_ref().map(|i| i.key.clone());
                self.open_payment(p)
            }
            Command::SettlePayment {
                payment_id,
                outcome,
                at_ms,
            } => self.change_payment(None, payment_id, |p| p.settle(outcome, *at_ms)),
            Command::ChangePayment {
                merchant_id,
                payment_id,
                change,
                at_ms,
                ..
            } => self.change_payment(Some(merchant_id), payment_id, |p| match change {
                PaymentChange::Capture { amount } => p.capture(*amount, *at_ms),
                PaymentChange::Void => p.void(*at_ms),
                PaymentChange::Refund { amount } => p.refund(*amount, *at_ms),
            }),
            Command::ReroutePayment {
                payment_id,
                route,
                at_ms,
            } => self.change_payment(None, payment_id, |p| p.reroute(route, *at_ms)),
            Command::RecordAdminAction { .. } => Ok(Response::Recorded),
            Command::PurgeCards { tokens, at_ms } => Ok(self.purge_cards(tokens, *at_ms)),
            Command::SignAuditHead { signed, .. } => {
                if signed.records == self.audit.len() && signed.head == self.audit.head() {
                    Ok(Response::Recorded)
                } else {
                    Err(Refusal::AuditMoved)
                }
            }
        };
        result.unwrap_or_else(Response::Refused)
    }

    /// Applies `f` to a payment (of `merchant_id`, when given); a refusal changes nothing.
    pub(super) fn change_payment(
        &mut self,
        merchant_id: Option<&String>,
        payment_id: &str,
        f: impl FnOnce(&mut Payment) -> Result<(), PaymentRefusal>,
    ) -> Result<Response, Refusal> {
        let p = self
            .payments
            .get_mut(payment_id)
            .filter(|p| merchant_id.is_none_or(|m| &p.merchant_id == m))
            .ok_or(Refusal::PaymentNotFound)?;
        f(p).map_err(Refusal::Payment)?;
        Ok(Response::Payment(Box::new(p.clone())))
    }

    /// Opens a payment, consuming a one-time token in the same step. All-or-nothing.
    pub(super) fn open_payment(&mut self, p: Payment) -> Result<Response, Refusal> {
        if !self.merchants.contains_key(&p.merchant_id) {
            return Err(Refusal::UnknownMerchant);
        }
        if self.payments.contains_key(&p.id) {
            return Err(Refusal::PaymentIdTaken);
        }
        let order = (p.merchant_id.clone(), p.order_id.clone());
        if self.orders.contains_key(&order) {
            return Err(Refusal::OrderIdTaken);
        }
        if p.amount == 0 {
            return Err(Refusal::Payment(PaymentRefusal::BadAmount));
        }
        let kind = self
            .record_for(&p.merchant_id, &p.token)
            .map(|r| r.kind)
            .ok_or(Refusal::TokenNotFound)?;
        if kind == TokenKind::OneTime {
            self.use_one_time(&p.merchant_id, &p.token, p.created_at_ms)?;
        }
        self.orders.insert(order, p.id.clone());
        let response = Response::Payment(Box::new(p.clone()));
        self.payments.insert(p.id.clone(), p);
        Ok(response)
    }

    pub(super) fn rewrap_keys(
        &mut self,
        kek_id: &str,
        keys: &[crate::vault::command::RewrappedKey],
        fingerprint: Option<&crate::vault::command::RewrappedKey>,
    ) -> Result<Response, Refusal> {
        // Check everything first: the command applies whole or not at all.
        for k in keys {
            let entry = self
                .data_keys
                .get(&k.version)
                .filter(|e| e.wrapped.is_some())
                .ok_or(Refusal::UnknownDataKey)?;
            if entry.kek_id != k.from_kek_id {
                return Err(Refusal::KeyRewrapped);
            }
        }
        if let Some(f) = fingerprint {
            let current = self
                .fingerprint_key
                .as_ref()
                .ok_or(Refusal::UnknownDataKey)?;
            if current.kek_id != f.from_kek_id {
                return Err(Refusal::KeyRewrapped);
            }
        }
        for k in keys {
            let entry = self.data_keys.get_mut(&k.version).expect("checked above");
            entry.wrapped = Some(k.wrapped.clone());
            entry.kek_id = Some(kek_id.to_owned());
        }
        if let (Some(f), Some(current)) = (fingerprint, self.fingerprint_key.as_mut()) {
            current.wrapped = f.wrapped.clone();
            current.kek_id = Some(kek_id.to_owned());
        }
        Ok(Response::KeysRewrapped {
            keys: keys.len() + usize::from(fingerprint.is_some()),
        })
    }

    /// Destroys the sealed cards of spent one-time tokens (the rest are skipped: they
    /// changed since the leader chose them).
    pub(super) fn purge_cards(&mut self, tokens: &[String], at_ms: u64) -> Response {
        let (mut purged, mut skipped) = (0, 0);
        for t in tokens {
            let Some(r) = self.tokens.get_mut(t) else {
                skipped += 1;
                continue;
            };
            if !r.holds_card() || !r.spent_at(at_ms) {
                skipped += 1;
                continue;
            }
            let version = r.card.key_version;
            r.card.nonce.clear();
            r.card.ciphertext.clear();
            r.purged_at_ms = Some(at_ms);
            count_down(&mut self.key_usage, version);
            purged += 1;
        }
        Response::Purged { purged, skipped }
    }

    pub(super) fn install_data_key(
        &mut self,
        version: u32,
        wrapped: &[u8],
        kek_id: Option<String>,
        at_ms: u64,
    ) -> Result<Response, Refusal> {
        if self
            .data_keys
            .keys()
            .next_back()
            .is_some_and(|&v| v >= version)
            || version == 0
        {
            return Err(Refusal::DataKeyExists { version });
        }
        self.data_keys.insert(
            version,
            DataKeyEntry {
                wrapped: Some(wrapped.to_vec()),
                kek_id,
                installed_at_ms: at_ms,
                retired_at_ms: None,
            },
        );
        Ok(Response::DataKeyInstalled { version })
    }

    pub(super) fn retire_data_key(
        &mut self,
        version: u32,
        at_ms: u64,
    ) -> Result<Response, Refusal> {
        let current = self.data_keys.keys().next_back().copied();
        let entry = self
            .data_keys
            .get_mut(&version)
            .filter(|e| e.retired_at_ms.is_none())
            .ok_or(Refusal::UnknownDataKey)?;
        if current == Some(version) {
            return Err(Refusal::DataKeyCurrent);
        }
        let cards = self.key_usage.get(&version).copied().unwrap_or(0);
        if cards > 0 {
            return Err(Refusal::DataKeyInUse { cards });
        }
        entry.wrapped = None;
        entry.kek_id = None;
        entry.retired_at_ms = Some(at_ms);
        self.key_usage.remove(&version);
        Ok(Response::DataKeyRetired { version })
    }

    pub(super) fn reseal(
        &mut self,
        to_version: u32,
        cards: &[Reseal],
    ) -> Result<Response, Refusal> {
        if self.current_data_key().map(|(v, _)| v) != Some(to_version) {
            return Err(Refusal::UnknownDataKey);
        }
        let (mut moved, mut skipped) = (0, 0);
        for c in cards {
            let Some(r) = self
                .tokens
                .get_mut(&c.token)
                // A card purged since the leader read it stays purged.
                .filter(|r| r.holds_card() && r.card.key_version == c.from_version)
            else {
                skipped += 1;
                continue;
            };
            r.card.key_version = to_version;
            r.card.nonce = c.nonce.clone();
            r.card.ciphertext = c.ciphertext.clone();
            count_down(&mut self.key_usage, c.from_version);
            *self.key_usage.entry(to_version).or_default() += 1;
            moved += 1;
        }
        Ok(Response::Resealed { moved, skipped })
    }

    pub(super) fn create_merchant(&mut self, id: &str, m: Merchant) -> Result<Response, Refusal> {
        if self.merchants.contains_key(id)
            || self.key_index.contains_key(&m.secret_key_sha256)
            || self.key_index.contains_key(&m.publishable_key_sha256)
            || m.secret_key_sha256 == m.publishable_key_sha256
        {
            return Err(Refusal::MerchantExists);
        }
        for role in [KeyRole::Secret, KeyRole::Publishable] {
            let owner = KeyOwner {
                merchant_id: id.to_owned(),
                role,
            };
            self.key_index.insert(m.key_hash(role).to_owned(), owner);
        }
        self.merchants.insert(id.to_owned(), m);
        Ok(Response::Merchant(
            self.merchant_info(id).expect("inserted"),
        ))
    }

    pub(super) fn rotate_merchant_key(
        &mut self,
        id: &str,
        role: KeyRole,
        key_hash: &str,
        at_ms: u64,
    ) -> Result<Response, Refusal> {
        if self.key_index.contains_key(key_hash) {
            return Err(Refusal::MerchantExists);
        }
        let m = self.merchants.get_mut(id).ok_or(Refusal::UnknownMerchant)?;
        self.key_index.remove(m.key_hash(role));
        match role {
            KeyRole::Secret => m.secret_key_sha256 = key_hash.to_owned(),
            KeyRole::Publishable => m.publishable_key_sha256 = key_hash.to_owned(),
        }
        m.key_rotated_at_ms = at_ms;
        let owner = KeyOwner {
            merchant_id: id.to_owned(),
            role,
        };
        self.key_index.insert(key_hash.to_owned(), owner);
        Ok(Response::Merchant(self.merchant_info(id).expect("exists")))
    }

    pub(super) fn update_merchant(
        &mut self,
        id: &str,
        settings: &MerchantSettings,
    ) -> Result<Response, Refusal> {
        let m = self.merchants.get_mut(id).ok_or(Refusal::UnknownMerchant)?;
        m.settings = settings.clone();
        Ok(Response::Merchant(self.merchant_info(id).expect("exists")))
    }

    pub(super) fn tokenize(
        &mut self,
        token: &str,
        record: TokenRecord,
    ) -> Result<Response, Refusal> {
        if !self.merchants.contains_key(&record.merchant_id) {
            return Err(Refusal::UnknownMerchant);
        }
        if self.data_key(record.card.key_version).is_none() {
            return Err(Refusal::UnknownDataKey);
        }
        let card_key = card_key(&record);
        if let Some(existing) = card_key.as_ref().and_then(|k| self.cards.get(k)) {
            let meta = token_meta(existing, &self.tokens[existing]);
            return Ok(Response::AlreadyOnFile(meta));
        }
        if self.tokens.contains_key(token) {
            return Err(Refusal::TokenIdTaken);
        }
        let meta = token_meta(token, &record);
        *self.key_usage.entry(record.card.key_version).or_default() += 1;
        self.tokens.insert(token.to_owned(), record);
        if let Some(k) = card_key {
            self.cards.insert(k, token.to_owned());
        }
        Ok(Response::Tokenized(meta))
    }

    /// All-or-nothing: refuse before marking anything if the new token id is taken (and
    /// the card is not already on file, in which case the new id is not needed).
    pub(super) fn new_card_id_free(
        &self,
        merchant: &str,
        member: &str,
        fp: &str,
        new_token: &str,
    ) -> Result<(), Refusal> {
        let key = (merchant.to_owned(), member.to_owned(), fp.to_owned());
        if !self.cards.contains_key(&key) && self.tokens.contains_key(new_token) {
            return Err(Refusal::TokenIdTaken);
        }
        Ok(())
    }

    /// Marks a one-time token used, if `merchant_id` owns it and it is unused and unexpired.
    pub(super) fn use_one_time(
        &mut self,
        merchant_id: &str,
        token: &str,
        at_ms: u64,
    ) -> Result<(), Refusal> {
        let r = self
            .tokens
            .get_mut(token)
            .filter(|r| r.merchant_id == merchant_id && r.kind == TokenKind::OneTime);
        let r = r.ok_or(Refusal::TokenNotFound)?;
        r.usable_at(at_ms)?;
        r.used_at_ms = Some(at_ms);
        Ok(())
    }

    pub(super) fn delete_card(
        &mut self,
        merchant_id: &str,
        member_id: &str,
        token: &str,
    ) -> Result<Response, Refusal> {
        let owned = self.tokens.get(token).is_some_and(|r| {
            r.merchant_id == merchant_id
                && r.kind == TokenKind::CardOnFile
                && r.member_id.as_deref() == Some(member_id)
        });
        if !owned {
            return Err(Refusal::TokenNotFound);
        }
        let record = self.tokens.remove(token).expect("checked");
        count_down(&mut self.key_usage, record.card.key_version);
        if let Some(k) = card_key(&record) {
            self.cards.remove(&k);
        }
        Ok(Response::CardDeleted)
    }
}

fn count_down(usage: &mut BTreeMap<u32, u64>, version: u32) {
    if let Some(n) = usage.get_mut(&version) {
        *n -= 1;
        if *n == 0 {
            usage.remove(&version);
        }
    }
}
