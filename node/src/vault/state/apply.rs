//! Applying each command: the state changes behind `VaultState::apply`.

use super::reads::merchant_info;
use super::*;

impl<S: TablesMut> Vault<S> {
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
                if self.fingerprint_key_record().is_some() {
                    Err(Refusal::FingerprintKeyExists)
                } else {
                    let key = WrappedKey {
                        wrapped: wrapped.clone(),
                        kek_id: kek_id.clone(),
                        installed_at_ms: *at_ms,
                    };
                    meta_put(&mut self.tables, meta::FINGERPRINT_KEY, &key);
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
                let mut changes = self.leader_changes();
                *changes.entry(*cause).or_default() += 1;
                meta_put(&mut self.tables, meta::LEADER_CHANGES, &changes);
                let change = LeaderChange {
                    leader_node: *leader_node,
                    leader_name: leader_name.clone(),
                    term: *term,
                    cause: *cause,
                    at_ms: *at_ms,
                };
                meta_put(&mut self.tables, meta::LAST_LEADER_CHANGE, &change);
                Ok(Response::Recorded)
            }
            Command::SetDrained { node, drained, .. } => {
                let mut set: BTreeSet<String> =
                    meta_get(&self.tables, meta::DRAINED).unwrap_or_default();
                if *drained {
                    set.insert(node.clone());
                } else {
                    set.remove(node);
                }
                meta_put(&mut self.tables, meta::DRAINED, &set);
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
            Command::RecordAdminAction { .. } | Command::CompareVaults { .. } => {
                Ok(Response::Recorded)
            }
            Command::PurgeCards { tokens, at_ms } => Ok(self.purge_cards(tokens, *at_ms)),
            Command::SignAuditHead { signed, .. } => {
                let audit = self.audit();
                if signed.records == audit.len() && signed.head == audit.head() {
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
        let old = PAYMENTS
            .get(&self.tables, &payment_id.to_owned())
            .filter(|p| merchant_id.is_none_or(|m| &p.merchant_id == m))
            .ok_or(Refusal::PaymentNotFound)?;
        let mut p = old.clone();
        f(&mut p).map_err(Refusal::Payment)?;
        self.put_payment(Some(&old), &p);
        Ok(Response::Payment(Box::new(p)))
    }

    /// Opens a payment, consuming a one-time token in the same step. All-or-nothing.
    pub(super) fn open_payment(&mut self, p: Payment) -> Result<Response, Refusal> {
        if !MERCHANTS.contains(&self.tables, &p.merchant_id) {
            return Err(Refusal::UnknownMerchant);
        }
        if PAYMENTS.contains(&self.tables, &p.id) {
            return Err(Refusal::PaymentIdTaken);
        }
        if ORDERS.contains(&self.tables, &(p.merchant_id.clone(), p.order_id.clone())) {
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
        self.put_payment(None, &p);
        Ok(Response::Payment(Box::new(p)))
    }

    pub(super) fn rewrap_keys(
        &mut self,
        kek_id: &str,
        keys: &[crate::vault::command::RewrappedKey],
        fingerprint: Option<&crate::vault::command::RewrappedKey>,
    ) -> Result<Response, Refusal> {
        // Check everything first: the command applies whole or not at all.
        let mut entries = Vec::with_capacity(keys.len());
        for k in keys {
            let entry = DATA_KEYS
                .get(&self.tables, &k.version)
                .filter(|e| e.wrapped.is_some())
                .ok_or(Refusal::UnknownDataKey)?;
            if entry.kek_id != k.from_kek_id {
                return Err(Refusal::KeyRewrapped);
            }
            entries.push((k, entry));
        }
        let current_fp = self.fingerprint_key_record();
        if let Some(f) = fingerprint {
            let current = current_fp.as_ref().ok_or(Refusal::UnknownDataKey)?;
            if current.kek_id != f.from_kek_id {
                return Err(Refusal::KeyRewrapped);
            }
        }
        for (k, mut entry) in entries {
            entry.wrapped = Some(k.wrapped.clone());
            entry.kek_id = Some(kek_id.to_owned());
            DATA_KEYS.put(&mut self.tables, &k.version, &entry);
        }
        if let (Some(f), Some(mut current)) = (fingerprint, current_fp) {
            current.wrapped = f.wrapped.clone();
            current.kek_id = Some(kek_id.to_owned());
            meta_put(&mut self.tables, meta::FINGERPRINT_KEY, &current);
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
            let Some(old) = TOKENS.get(&self.tables, t) else {
                skipped += 1;
                continue;
            };
            if !old.holds_card() || !old.spent_at(at_ms) {
                skipped += 1;
                continue;
            }
            let mut r = old.clone();
            r.card.nonce.clear();
            r.card.ciphertext.clear();
            r.purged_at_ms = Some(at_ms);
            self.put_token(t, Some(&old), Some(&r));
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
        if self.newest_data_key().is_some_and(|(v, _)| v >= version) || version == 0 {
            return Err(Refusal::DataKeyExists { version });
        }
        let entry = DataKeyEntry {
            wrapped: Some(wrapped.to_vec()),
            kek_id,
            installed_at_ms: at_ms,
            retired_at_ms: None,
        };
        DATA_KEYS.put(&mut self.tables, &version, &entry);
        Ok(Response::DataKeyInstalled { version })
    }

    pub(super) fn retire_data_key(
        &mut self,
        version: u32,
        at_ms: u64,
    ) -> Result<Response, Refusal> {
        let current = self.newest_data_key().map(|(v, _)| v);
        let mut entry = DATA_KEYS
            .get(&self.tables, &version)
            .filter(|e| e.retired_at_ms.is_none())
            .ok_or(Refusal::UnknownDataKey)?;
        if current == Some(version) {
            return Err(Refusal::DataKeyCurrent);
        }
        let cards = self.key_usage().get(&version).copied().unwrap_or(0);
        if cards > 0 {
            return Err(Refusal::DataKeyInUse { cards });
        }
        entry.wrapped = None;
        entry.kek_id = None;
        entry.retired_at_ms = Some(at_ms);
        DATA_KEYS.put(&mut self.tables, &version, &entry);
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
            let Some(old) = TOKENS
                .get(&self.tables, &c.token)
                // A card purged since the leader read it stays purged.
                .filter(|r| r.holds_card() && r.card.key_version == c.from_version)
            else {
                skipped += 1;
                continue;
            };
            let mut r = old.clone();
            r.card.key_version = to_version;
            r.card.nonce = c.nonce.clone();
            r.card.ciphertext = c.ciphertext.clone();
            self.put_token(&c.token, Some(&old), Some(&r));
            moved += 1;
        }
        Ok(Response::Resealed { moved, skipped })
    }

    pub(super) fn create_merchant(&mut self, id: &str, m: Merchant) -> Result<Response, Refusal> {
        if MERCHANTS.contains(&self.tables, &id.to_owned())
            || KEY_INDEX.contains(&self.tables, &m.secret_key_sha256)
            || KEY_INDEX.contains(&self.tables, &m.publishable_key_sha256)
            || m.secret_key_sha256 == m.publishable_key_sha256
        {
            return Err(Refusal::MerchantExists);
        }
        for role in [KeyRole::Secret, KeyRole::Publishable] {
            let owner = KeyOwner {
                merchant_id: id.to_owned(),
                role,
            };
            KEY_INDEX.put(&mut self.tables, &m.key_hash(role).to_owned(), &owner);
        }
        MERCHANTS.put(&mut self.tables, &id.to_owned(), &m);
        Ok(Response::Merchant(merchant_info(id, &m)))
    }

    pub(super) fn rotate_merchant_key(
        &mut self,
        id: &str,
        role: KeyRole,
        key_hash: &str,
        at_ms: u64,
    ) -> Result<Response, Refusal> {
        if KEY_INDEX.contains(&self.tables, &key_hash.to_owned()) {
            return Err(Refusal::MerchantExists);
        }
        let mut m = MERCHANTS
            .get(&self.tables, &id.to_owned())
            .ok_or(Refusal::UnknownMerchant)?;
        KEY_INDEX.delete(&mut self.tables, &m.key_hash(role).to_owned());
        match role {
            KeyRole::Secret => m.secret_key_sha256 = key_hash.to_owned(),
            KeyRole::Publishable => m.publishable_key_sha256 = key_hash.to_owned(),
        }
        m.key_rotated_at_ms = at_ms;
        let owner = KeyOwner {
            merchant_id: id.to_owned(),
            role,
        };
        KEY_INDEX.put(&mut self.tables, &key_hash.to_owned(), &owner);
        MERCHANTS.put(&mut self.tables, &id.to_owned(), &m);
        Ok(Response::Merchant(merchant_info(id, &m)))
    }

    pub(super) fn update_merchant(
        &mut self,
        id: &str,
        settings: &MerchantSettings,
    ) -> Result<Response, Refusal> {
        let mut m = MERCHANTS
            .get(&self.tables, &id.to_owned())
            .ok_or(Refusal::UnknownMerchant)?;
        m.settings = settings.clone();
        MERCHANTS.put(&mut self.tables, &id.to_owned(), &m);
        Ok(Response::Merchant(merchant_info(id, &m)))
    }

    pub(super) fn tokenize(
        &mut self,
        token: &str,
        record: TokenRecord,
    ) -> Result<Response, Refusal> {
        if !MERCHANTS.contains(&self.tables, &record.merchant_id) {
            return Err(Refusal::UnknownMerchant);
        }
        if self.data_key(record.card.key_version).is_none() {
            return Err(Refusal::UnknownDataKey);
        }
        if let Some(existing) = card_key(&record).and_then(|k| CARDS.get(&self.tables, &k)) {
            let r = TOKENS
                .get(&self.tables, &existing)
                .ok_or(Refusal::TokenNotFound)?;
            return Ok(Response::AlreadyOnFile(token_meta(&existing, &r)));
        }
        if TOKENS.contains(&self.tables, &token.to_owned()) {
            return Err(Refusal::TokenIdTaken);
        }
        self.put_token(token, None, Some(&record));
        Ok(Response::Tokenized(token_meta(token, &record)))
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
        if !CARDS.contains(&self.tables, &key)
            && TOKENS.contains(&self.tables, &new_token.to_owned())
        {
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
        let old = TOKENS
            .get(&self.tables, &token.to_owned())
            .filter(|r| r.merchant_id == merchant_id && r.kind == TokenKind::OneTime)
            .ok_or(Refusal::TokenNotFound)?;
        old.usable_at(at_ms)?;
        let mut r = old.clone();
        r.used_at_ms = Some(at_ms);
        self.put_token(token, Some(&old), Some(&r));
        Ok(())
    }

    pub(super) fn delete_card(
        &mut self,
        merchant_id: &str,
        member_id: &str,
        token: &str,
    ) -> Result<Response, Refusal> {
        let old = TOKENS
            .get(&self.tables, &token.to_owned())
            .filter(|r| {
                r.merchant_id == merchant_id
                    && r.kind == TokenKind::CardOnFile
                    && r.member_id.as_deref() == Some(member_id)
            })
            .ok_or(Refusal::TokenNotFound)?;
        self.put_token(token, Some(&old), None);
        Ok(Response::CardDeleted)
    }
}
