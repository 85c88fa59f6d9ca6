//! The replicated vault state and its deterministic `apply`.

use super::audit::{AuditEntry, AuditLog};
use super::command::{
    Command, Idempotency, IdempotencyRecord, KeyRole, MerchantInfo, MerchantSettings,
    PaymentChange, Refusal, Reseal, Response, SealedCard, StoredOutcome, TokenMeta,
};
use super::leader_change::{LeaderChange, LeaderChangeCause};
use super::payment::{AuthOutcome, Payment, PaymentRefusal, PaymentState};
use super::token::TokenKind;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Idempotency keys are kept at least this long (24 hours) by leader-stamped time.
pub const IDEMPOTENCY_KEEP_MS: u64 = 24 * 3600 * 1000;
/// Expired idempotency keys dropped per applied command, so expiry never stalls apply.
const IDEMPOTENCY_EXPIRE_PER_APPLY: usize = 16;

/// A merchant's record. Its keys are present only as SHA-256 hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    pub name: String,
    pub secret_key_sha256: String,
    pub publishable_key_sha256: String,
    pub settings: MerchantSettings,
    pub created_at_ms: u64,
    pub key_rotated_at_ms: u64,
}

impl Merchant {
    fn key_hash(&self, role: KeyRole) -> &str {
        match role {
            KeyRole::Secret => &self.secret_key_sha256,
            KeyRole::Publishable => &self.publishable_key_sha256,
        }
    }
}

/// A stored token: who owns it and the sealed card behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub merchant_id: String,
    pub kind: TokenKind,
    pub member_id: Option<String>,
    pub card: SealedCard,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Keyed HMAC fingerprint of merchant and PAN (card-on-file tokens).
    pub fingerprint: Option<String>,
    /// When a one-time token was used; a used token is never usable again.
    pub used_at_ms: Option<u64>,
    /// A CVC was given at creation (held in memory only, never here).
    pub cvc_supplied: bool,
    /// When a used or expired one-time token's sealed card was destroyed (PCI DSS
    /// 3.2.1: kept no longer than needed); its metadata stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_at_ms: Option<u64>,
}

impl TokenRecord {
    /// True while the record still holds its sealed card.
    pub fn holds_card(&self) -> bool {
        self.purged_at_ms.is_none()
    }

    /// True when this is a one-time token that can no longer be used at `now_ms` (used,
    /// or expired), so its card serves no purpose.
    pub fn spent_at(&self, now_ms: u64) -> bool {
        self.usable_at(now_ms).is_err()
    }

    /// Whether the token may be used at `now_ms`: a one-time token only while unused and
    /// unexpired (the one statement of that rule; card-on-file tokens always may).
    pub fn usable_at(&self, now_ms: u64) -> Result<(), Refusal> {
        if self.kind != TokenKind::OneTime {
            return Ok(());
        }
        if self.used_at_ms.is_some() {
            return Err(Refusal::TokenAlreadyUsed);
        }
        if self.expires_at_ms.is_some_and(|e| now_ms >= e) {
            return Err(Refusal::TokenExpired);
        }
        Ok(())
    }
}

/// (merchant id, member id, fingerprint): the key of the card-on-file index.
type CardKey = (String, String, String);

/// Whose key a hash is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyOwner {
    pub merchant_id: String,
    pub role: KeyRole,
}

/// A data key: wrapped by the key-encryption key until retired, then destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeyEntry {
    /// `None` once retired: the key is gone for good.
    #[serde(with = "super::hex_bytes::option")]
    pub wrapped: Option<Vec<u8>>,
    /// The KEK that wrapped it (`None`: wrapped before KEK ids existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_id: Option<String>,
    pub installed_at_ms: u64,
    pub retired_at_ms: Option<u64>,
}

/// A data key version as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeyInfo {
    pub version: u32,
    /// `current`, `active` (still decrypts cards) or `retired`.
    pub state: &'static str,
    pub installed_at_ms: u64,
    pub retired_at_ms: Option<u64>,
    /// Cards sealed under this version.
    pub cards: u64,
    /// The KEK it is wrapped under (`None` once retired, or if wrapped before KEK ids).
    pub kek_id: Option<String>,
}

/// A wrapped key with the time it was installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    #[serde(with = "super::hex_bytes")]
    pub wrapped: Vec<u8>,
    /// The KEK that wrapped it (`None`: wrapped before KEK ids existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_id: Option<String>,
    pub installed_at_ms: u64,
}

/// Everything the vault replicates. Changed only by [`VaultState::apply`].
///
/// The collections that grow with use are persistent maps ([`OrdMap`]): a copy shares
/// everything with the original, so taking one for a snapshot is immediate instead of
/// holding the vault's lock while every record is duplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultState {
    merchants: OrdMap<String, Merchant>,
    /// key hash -> whose key it is
    key_index: OrdMap<String, KeyOwner>,
    tokens: OrdMap<String, TokenRecord>,
    data_keys: BTreeMap<u32, DataKeyEntry>,
    /// Cards sealed under each data key version.
    key_usage: BTreeMap<u32, u64>,
    /// The fingerprint key, wrapped by the KEK; set once.
    fingerprint_key: Option<WrappedKey>,
    /// (merchant, member, fingerprint) -> card-on-file token.
    #[serde(with = "map_as_entries")]
    cards: OrdMap<CardKey, String>,
    /// One record per applied command.
    audit: AuditLog,
    /// The newest leadership change a new leader recorded.
    last_leader_change: Option<LeaderChange>,
    /// Recorded leadership changes by cause, all of them: a node that applies several
    /// at once still counts each.
    #[serde(default)]
    leader_changes: BTreeMap<LeaderChangeCause, u64>,
    /// Names of drained nodes.
    drained: std::collections::BTreeSet<String>,
    /// Payments by id.
    payments: OrdMap<String, Payment>,
    /// (merchant, order id) -> payment id: an order has exactly one payment.
    #[serde(with = "map_as_entries")]
    orders: OrdMap<(String, String), String>,
    /// (merchant, idempotency key) -> record; kept at least `IDEMPOTENCY_KEEP_MS`.
    #[serde(with = "map_as_entries")]
    idempotency: OrdMap<(String, String), IdempotencyRecord>,
    /// Leader-stamped time of the newest applied command; never goes back.
    clock_ms: u64,
}

impl VaultState {
    /// Applies one command and records it in the audit trail. Pure: the result depends
    /// only on `self` and `cmd`.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        if let Some(taken) = self.idempotency_taken(cmd) {
            let response = Response::Refused(Refusal::IdempotencyKeyTaken(Box::new(taken)));
            self.audit.append(audit_entry(cmd, &response));
            self.clock_ms = self.clock_ms.max(cmd.at_ms());
            return response;
        }
        let response = self.apply_inner(cmd);
        self.remember_idempotent(cmd, &response);
        self.audit.append(audit_entry(cmd, &response));
        self.clock_ms = self.clock_ms.max(cmd.at_ms());
        self.expire_idempotency_keys();
        response
    }

    /// The existing record, if `cmd` carries an idempotency key that is taken.
    fn idempotency_taken(&self, cmd: &Command) -> Option<IdempotencyRecord> {
        let (merchant_id, idem) = keyed(cmd)?;
        self.idempotency
            .get(&(merchant_id.to_owned(), idem.key.clone()))
            .cloned()
    }

    /// Records what a keyed command came to, and keeps a keyed authorisation's record up
    /// to date when its payment is settled or rerouted.
    fn remember_idempotent(&mut self, cmd: &Command, response: &Response) {
        let outcome = match response {
            Response::Payment(p) => StoredOutcome::Payment(p.clone()),
            Response::Refused(r) => StoredOutcome::Refused(r.code().to_owned()),
            _ => return,
        };
        if let Some((merchant_id, idem)) = keyed(cmd) {
            let payment_id = match cmd {
                Command::OpenPayment { payment_id, .. }
                | Command::ChangePayment { payment_id, .. } => Some(payment_id.clone()),
                _ => None,
            };
            let record = IdempotencyRecord {
                body_sha256: idem.body_sha256.clone(),
                action: cmd.action().to_owned(),
                payment_id,
                outcome,
                created_at_ms: cmd.at_ms(),
            };
            self.idempotency
                .insert((merchant_id.to_owned(), idem.key.clone()), record);
            return;
        }
        if let (
            Command::SettlePayment { .. } | Command::ReroutePayment { .. },
            Response::Payment(p),
        ) = (cmd, response)
        {
            if let Some(key) = &p.idempotency_key {
                if let Some(r) = self
                    .idempotency
                    .get_mut(&(p.merchant_id.clone(), key.clone()))
                {
                    r.outcome = StoredOutcome::Payment(p.clone());
                }
            }
        }
    }

    /// Drops a bounded number of idempotency keys older than the retention.
    fn expire_idempotency_keys(&mut self) {
        let Some(cutoff) = self.clock_ms.checked_sub(IDEMPOTENCY_KEEP_MS) else {
            return;
        };
        let old: Vec<(String, String)> = self
            .idempotency
            .iter()
            .filter(|(_, r)| r.created_at_ms < cutoff)
            .take(IDEMPOTENCY_EXPIRE_PER_APPLY)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.idempotency.remove(&k);
        }
    }

    fn apply_inner(&mut self, cmd: &Command) -> Response {
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
    fn change_payment(
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
    fn open_payment(&mut self, p: Payment) -> Result<Response, Refusal> {
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

    fn rewrap_keys(
        &mut self,
        kek_id: &str,
        keys: &[super::command::RewrappedKey],
        fingerprint: Option<&super::command::RewrappedKey>,
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
    fn purge_cards(&mut self, tokens: &[String], at_ms: u64) -> Response {
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

    fn install_data_key(
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

    fn retire_data_key(&mut self, version: u32, at_ms: u64) -> Result<Response, Refusal> {
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

    fn reseal(&mut self, to_version: u32, cards: &[Reseal]) -> Result<Response, Refusal> {
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

    fn create_merchant(&mut self, id: &str, m: Merchant) -> Result<Response, Refusal> {
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

    fn rotate_merchant_key(
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

    fn update_merchant(
        &mut self,
        id: &str,
        settings: &MerchantSettings,
    ) -> Result<Response, Refusal> {
        let m = self.merchants.get_mut(id).ok_or(Refusal::UnknownMerchant)?;
        m.settings = settings.clone();
        Ok(Response::Merchant(self.merchant_info(id).expect("exists")))
    }

    fn tokenize(&mut self, token: &str, record: TokenRecord) -> Result<Response, Refusal> {
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
    fn new_card_id_free(
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
    fn use_one_time(&mut self, merchant_id: &str, token: &str, at_ms: u64) -> Result<(), Refusal> {
        let r = self
            .tokens
            .get_mut(token)
            .filter(|r| r.merchant_id == merchant_id && r.kind == TokenKind::OneTime);
        let r = r.ok_or(Refusal::TokenNotFound)?;
        r.usable_at(at_ms)?;
        r.used_at_ms = Some(at_ms);
        Ok(())
    }

    fn delete_card(
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

    /// Checks the invariants that every reachable state satisfies. Returns the first violation.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_merchants()?;
        self.validate_keys()?;
        for (token, r) in &self.tokens {
            self.validate_token(token, r)?;
        }
        for (k, token) in &self.cards {
            if self.tokens.get(token).and_then(card_key).as_ref() != Some(k) {
                return Err(format!(
                    "card index entry for {token} points at no matching card"
                ));
            }
        }
        if !self.cards.is_empty() && self.fingerprint_key.is_none() {
            return Err("fingerprints exist but no fingerprint key".into());
        }
        self.validate_payments()?;
        self.audit
            .verify()
            .map_err(|b| format!("audit record {} breaks the chain: {}", b.seq, b.reason))?;
        Ok(())
    }

    /// The payment part of [`Self::validate`]: cheap enough to run after every command.
    pub fn validate_payments(&self) -> Result<(), String> {
        if self.orders.len() != self.payments.len() {
            return Err(format!(
                "{} orders for {} payments",
                self.orders.len(),
                self.payments.len()
            ));
        }
        for (id, p) in &self.payments {
            p.validate()?;
            let order = (p.merchant_id.clone(), p.order_id.clone());
            if self.orders.get(&order) != Some(id) {
                return Err(format!("payment {id} is missing from the order index"));
            }
            if !self.merchants.contains_key(&p.merchant_id) {
                return Err(format!("payment {id} belongs to an unknown merchant"));
            }
        }
        Ok(())
    }

    fn validate_merchants(&self) -> Result<(), String> {
        if self.key_index.len() != 2 * self.merchants.len() {
            return Err(format!(
                "{} key hashes for {} merchants",
                self.key_index.len(),
                self.merchants.len()
            ));
        }
        for (hash, owner) in &self.key_index {
            match self.merchants.get(&owner.merchant_id) {
                Some(m) if m.key_hash(owner.role) == hash => {}
                _ => {
                    return Err(format!(
                        "key index entry for merchant {} is stale",
                        owner.merchant_id
                    ))
                }
            }
        }
        Ok(())
    }

    fn validate_keys(&self) -> Result<(), String> {
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
            return Err(format!(
                "key usage counts {counted:?} differ from the cards {usage:?}"
            ));
        }
        if let Some((_, e)) = self.data_keys.iter().next_back() {
            if e.retired_at_ms.is_some() {
                return Err("the current data key is retired".into());
            }
        }
        for (v, e) in &self.data_keys {
            if e.retired_at_ms.is_some() == e.wrapped.is_some() {
                return Err(format!(
                    "data key v{v}: a retired key must have no bytes, a live one must"
                ));
            }
        }
        Ok(())
    }

    fn validate_token(&self, token: &str, r: &TokenRecord) -> Result<(), String> {
        if !self.merchants.contains_key(&r.merchant_id) {
            return Err(format!(
                "token {token} belongs to unknown merchant {}",
                r.merchant_id
            ));
        }
        match r.purged_at_ms {
            None if self.data_key(r.card.key_version).is_none() => {
                return Err(format!(
                    "token {token} sealed under missing or retired data key v{}",
                    r.card.key_version
                ));
            }
            Some(at)
                if !r.spent_at(at) || !r.card.ciphertext.is_empty() || !r.card.nonce.is_empty() =>
            {
                return Err(format!(
                    "token {token}: only a spent one-time token loses its card, and all of it"
                ));
            }
            _ => {}
        }
        if (r.kind == TokenKind::CardOnFile) != r.member_id.is_some() {
            return Err(format!(
                "token {token}: member id must be set exactly for card-on-file tokens"
            ));
        }
        if r.created_at_ms > self.clock_ms {
            return Err(format!("token {token} created after the state clock"));
        }
        if r.used_at_ms
            .is_some_and(|u| r.kind != TokenKind::OneTime || u > self.clock_ms)
        {
            return Err(format!(
                "token {token}: only one-time tokens are used, and not in the future"
            ));
        }
        if r.used_at_ms
            .is_some_and(|u| r.expires_at_ms.is_some_and(|e| u >= e))
        {
            return Err(format!("token {token} was used after it expired"));
        }
        if let Some(k) = card_key(r) {
            if self.cards.get(&k).map(String::as_str) != Some(token) {
                return Err(format!(
                    "card-on-file token {token} is missing from the card index"
                ));
            }
        }
        Ok(())
    }
}

/// The merchant and idempotency key of a keyed command.
fn keyed(cmd: &Command) -> Option<(&str, &Idempotency)> {
    match cmd {
        Command::OpenPayment {
            merchant_id,
            idempotency: Some(i),
            ..
        }
        | Command::ChangePayment {
            merchant_id,
            idempotency: Some(i),
            ..
        } => Some((merchant_id, i)),
        _ => None,
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

/// The audit record of `cmd` and its response. Never includes card data or keys.
fn audit_entry(cmd: &Command, response: &Response) -> AuditEntry {
    // The operator who asked; entries from before named operators say `admin`.
    let admin = |by: &Option<String>| by.clone().unwrap_or_else(|| "admin".to_owned());
    let system = || "system".to_owned();
    let merchant = |id: &str, role: KeyRole| format!("merchant:{id}:{}", role.as_str());
    let (actor, merchant_id, token, detail): (String, Option<&str>, Option<&str>, String) =
        match cmd {
            Command::InstallDataKey {
                version,
                by_admin,
                by,
                ..
            } => (
                if *by_admin { admin(by) } else { system() },
                None,
                None,
                format!("version {version}"),
            ),
            Command::CreateMerchant {
                merchant_id, by, ..
            }
            | Command::UpdateMerchant {
                merchant_id, by, ..
            } => (admin(by), Some(merchant_id), None, String::new()),
            Command::RotateMerchantKey {
                merchant_id,
                role,
                by,
                ..
            } => (
                admin(by),
                Some(merchant_id),
                None,
                format!("{} key", role.as_str()),
            ),
            Command::Tokenize {
                merchant_id,
                token,
                kind,
                member_id,
                key_role,
                ..
            } => (
                merchant(merchant_id, *key_role),
                Some(merchant_id),
                Some(token),
                match member_id {
                    Some(m) => format!("{kind:?} for member {m}"),
                    None => format!("{kind:?}"),
                },
            ),
            Command::InstallFingerprintKey { .. } => (system(), None, None, String::new()),
            Command::SignAuditHead { signed, .. } => (system(), None, None, signed.to_detail()),
            Command::PurgeCards { tokens, .. } => (
                system(),
                None,
                None,
                match response {
                    Response::Purged { purged, skipped } => format!(
                        "sealed cards of {purged} used or expired one-time tokens destroyed; {skipped} of {} skipped",
                        tokens.len()
                    ),
                    _ => String::new(),
                },
            ),
            Command::RewrapKeys {
                kek_id, keys, by, ..
            } => (
                admin(by),
                None,
                None,
                format!(
                    "{} keys re-wrapped under {kek_id}",
                    keys.len()
                        + usize::from(matches!(
                            cmd,
                            Command::RewrapKeys {
                                fingerprint: Some(_),
                                ..
                            }
                        ))
                ),
            ),
            Command::UseOneTimeForCard {
                merchant_id,
                one_time_token,
                member_id,
                ..
            } => (
                merchant(merchant_id, KeyRole::Secret),
                Some(merchant_id),
                Some(one_time_token),
                match response {
                    Response::Tokenized(m) | Response::AlreadyOnFile(m) => {
                        format!("card on file {} for member {member_id}", m.token)
                    }
                    _ => format!("for member {member_id}"),
                },
            ),
            Command::DeleteCard {
                merchant_id,
                member_id,
                token,
                ..
            } => (
                merchant(merchant_id, KeyRole::Secret),
                Some(merchant_id),
                Some(token),
                format!("member {member_id}"),
            ),
            Command::ResealCards { to_version, .. } => (
                system(),
                None,
                None,
                match response {
                    Response::Resealed { moved, skipped } => {
                        format!("{moved} cards to version {to_version}, {skipped} skipped")
                    }
                    _ => format!("to version {to_version}"),
                },
            ),
            Command::RetireDataKey { version, by, .. } => {
                (admin(by), None, None, format!("version {version}"))
            }
            Command::RecordLeaderChange {
                leader_name,
                term,
                cause,
                ..
            } => (
                if *cause == LeaderChangeCause::Operator {
                    admin(&None)
                } else {
                    system()
                },
                None,
                None,
                format!("{leader_name} leads term {term}, cause {cause}"),
            ),
            Command::SetDrained { node, by, .. } => (admin(by), None, None, format!("node {node}")),
            Command::OpenPayment {
                merchant_id,
                payment_id,
                token,
                amount,
                currency,
                order_id,
                ..
            } => (
                merchant(merchant_id, KeyRole::Secret),
                Some(merchant_id),
                Some(token),
                format!("payment {payment_id} order {order_id} {amount} {currency}"),
            ),
            Command::ReroutePayment {
                payment_id, route, ..
            } => (
                system(),
                None,
                None,
                format!("payment {payment_id} to route {route}"),
            ),
            Command::SettlePayment {
                payment_id,
                outcome,
                ..
            } => (
                system(),
                None,
                None,
                format!(
                    "payment {payment_id} {}",
                    match outcome {
                        AuthOutcome::Approved { .. } => "approved",
                        AuthOutcome::Declined { .. } => "declined",
                        AuthOutcome::Reversed => "reversed",
                    }
                ),
            ),
            Command::ChangePayment {
                merchant_id,
                payment_id,
                change,
                ..
            } => (
                merchant(merchant_id, KeyRole::Secret),
                Some(merchant_id),
                None,
                format!("payment {payment_id} {change:?}"),
            ),
            Command::RecordAdminAction {
                action, detail, by, ..
            } => (admin(by), None, None, format!("{action}: {detail}")),
        };
    AuditEntry {
        at_ms: cmd.at_ms(),
        actor,
        merchant_id: merchant_id.map(str::to_owned),
        action: cmd.action().to_owned(),
        token: token.map(str::to_owned),
        outcome: response.outcome().to_owned(),
        detail,
    }
}

fn card_key(r: &TokenRecord) -> Option<CardKey> {
    match (r.kind, &r.member_id, &r.fingerprint) {
        (TokenKind::CardOnFile, Some(member), Some(fp)) => {
            Some((r.merchant_id.clone(), member.clone(), fp.clone()))
        }
        _ => None,
    }
}

/// JSON maps need string keys: maps keyed by tuples (the card, order and idempotency
/// indexes) are stored as lists of entries.
mod map_as_entries {
    use imbl::OrdMap;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize + Ord, V: Serialize, S: Serializer>(
        m: &OrdMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<OrdMap<K, V>, D::Error>
    where
        K: DeserializeOwned + Ord + Clone,
        V: DeserializeOwned + Clone,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

fn token_meta(token: &str, r: &TokenRecord) -> TokenMeta {
    TokenMeta {
        token: token.to_owned(),
        kind: r.kind,
        member_id: r.member_id.clone(),
        brand: r.card.brand,
        last4: r.card.last4.clone(),
        exp_month: r.card.exp_month,
        exp_year: r.card.exp_year,
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        used_at_ms: r.used_at_ms,
        cvc_supplied: r.cvc_supplied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::card::Brand;

    fn card(version: u32) -> SealedCard {
        SealedCard {
            brand: Brand::Visa,
            last4: "4242".into(),
            exp_month: 12,
            exp_year: 2030,
            key_version: version,
            nonce: vec![0; 12],
            ciphertext: vec![1, 2, 3],
        }
    }

    fn tokenize(merchant: &str, token: &str, at_ms: u64) -> Command {
        Command::Tokenize {
            merchant_id: merchant.into(),
            token: token.into(),
            kind: TokenKind::CardOnFile,
            member_id: Some("m1".into()),
            card: card(1),
            at_ms,
            expires_at_ms: None,
            fingerprint: None,
            key_role: KeyRole::Secret,
            cvc_supplied: false,
        }
    }

    fn create(id: &str, at_ms: u64) -> Command {
        Command::CreateMerchant {
            by: None,
            merchant_id: id.into(),
            name: id.to_uppercase(),
            secret_key_sha256: format!("h{id}"),
            publishable_key_sha256: format!("p{id}"),
            settings: MerchantSettings::default(),
            at_ms,
        }
    }

    fn seeded() -> VaultState {
        let mut s = VaultState::default();
        let steps = [
            Command::InstallDataKey {
                by: None,
                kek_id: None,
                version: 1,
                wrapped: vec![9; 60],
                at_ms: 1,
                by_admin: false,
            },
            create("a", 2),
            create("b", 3),
        ];
        for c in &steps {
            assert!(!matches!(s.apply(c), Response::Refused(_)), "{c}");
            s.validate().unwrap();
        }
        s
    }

    #[test]
    fn token_is_visible_only_to_its_merchant() {
        let mut s = seeded();
        let r = s.apply(&tokenize("a", "tok_1", 10));
        assert!(matches!(r, Response::Tokenized(ref m) if m.token == "tok_1" && m.last4 == "4242"));
        s.validate().unwrap();
        assert!(s.token_for("a", "tok_1").is_some());
        assert_eq!(s.token_for("b", "tok_1"), None);
        assert_eq!(s.token_for("a", "tok_2"), None);
    }

    #[test]
    fn duplicate_ids_and_unknown_merchants_are_refused_without_change() {
        let mut s = seeded();
        s.apply(&tokenize("a", "tok_1", 10));
        let before = s.clone();
        assert_eq!(
            s.apply(&tokenize("b", "tok_1", 11)),
            Response::Refused(Refusal::TokenIdTaken)
        );
        assert_eq!(s.token_for("a", "tok_1"), before.token_for("a", "tok_1"));
        assert_eq!(
            s.apply(&tokenize("zz", "tok_9", 12)),
            Response::Refused(Refusal::UnknownMerchant)
        );
        assert_eq!(s.token_count(), 1);
        assert_eq!(
            s.apply(&create("a", 13)),
            Response::Refused(Refusal::MerchantExists)
        );
        let owner =
            |s: &VaultState, h: &str| s.key_owner(h).map(|o| (o.merchant_id.clone(), o.role));
        assert_eq!(owner(&s, "ha"), Some(("a".into(), KeyRole::Secret)));
        assert_eq!(owner(&s, "pa"), Some(("a".into(), KeyRole::Publishable)));
        assert_eq!(owner(&s, "x"), None);
        s.validate().unwrap();
    }

    #[test]
    fn rotating_a_key_retires_the_old_one() {
        let mut s = seeded();
        let rot = |role, hash: &str| Command::RotateMerchantKey {
            by: None,
            merchant_id: "a".into(),
            role,
            key_sha256: hash.into(),
            at_ms: 20,
        };
        assert!(
            matches!(s.apply(&rot(KeyRole::Secret, "ha2")), Response::Merchant(ref m) if m.key_rotated_at_ms == 20)
        );
        assert!(s.key_owner("ha").is_none());
        assert_eq!(s.key_owner("ha2").unwrap().role, KeyRole::Secret);
        assert_eq!(
            s.key_owner("pa").unwrap().role,
            KeyRole::Publishable,
            "untouched"
        );
        s.apply(&rot(KeyRole::Publishable, "pa2"));
        assert!(s.key_owner("pa").is_none());
        assert_eq!(s.key_owner("pa2").unwrap().merchant_id, "a");
        assert_eq!(
            s.apply(&rot(KeyRole::Secret, "hb")),
            Response::Refused(Refusal::MerchantExists),
            "another merchant's key hash is never taken over"
        );
        s.validate().unwrap();
    }

    #[test]
    fn apply_is_deterministic_and_snapshot_round_trips() {
        let cmds: Vec<Command> = (0..50)
            .map(|i| {
                tokenize(
                    if i % 2 == 0 { "a" } else { "b" },
                    &format!("tok_{i}"),
                    100 + i,
                )
            })
            .collect();
        let (mut x, mut y) = (seeded(), seeded());
        let rx: Vec<_> = cmds.iter().map(|c| x.apply(c)).collect();
        let ry: Vec<_> = cmds.iter().map(|c| y.apply(c)).collect();
        assert_eq!(rx, ry);
        assert_eq!(x, y);
        x.validate().unwrap();
        let bytes = serde_json::to_vec(&x).unwrap();
        let back: VaultState = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, x);
        assert_eq!(back.clock_ms(), 149);
        assert_eq!(back.audit().len(), 53);
    }

    #[test]
    fn a_card_for_a_missing_key_is_refused_and_validate_would_catch_it() {
        let mut s = seeded();
        let mut cmd = tokenize("a", "tok_1", 10);
        if let Command::Tokenize { card, .. } = &mut cmd {
            card.key_version = 7;
        }
        assert_eq!(s.apply(&cmd), Response::Refused(Refusal::UnknownDataKey));
        assert_eq!(s.token_count(), 0);
        let mut broken = s.clone();
        broken.apply(&tokenize("a", "tok_2", 11));
        broken.tokens.get_mut("tok_2").unwrap().card.key_version = 7;
        let err = broken.validate().unwrap_err();
        assert!(err.contains("key usage counts"), "{err}");
        broken.key_usage = BTreeMap::from([(7, 1)]);
        let err = broken.validate().unwrap_err();
        assert!(err.contains("missing or retired data key"), "{err}");
    }

    fn on_file(merchant: &str, member: &str, token: &str, fp: &str, at_ms: u64) -> Command {
        Command::Tokenize {
            merchant_id: merchant.into(),
            token: token.into(),
            kind: TokenKind::CardOnFile,
            member_id: Some(member.into()),
            card: card(1),
            at_ms,
            expires_at_ms: None,
            fingerprint: Some(fp.into()),
            key_role: KeyRole::Secret,
            cvc_supplied: false,
        }
    }

    fn with_fingerprint_key() -> VaultState {
        let mut s = seeded();
        let install = Command::InstallFingerprintKey {
            wrapped: vec![5; 60],
            kek_id: None,
            at_ms: 4,
        };
        assert_eq!(s.apply(&install), Response::FingerprintKeyInstalled);
        assert_eq!(
            s.apply(&install),
            Response::Refused(Refusal::FingerprintKeyExists),
            "set once"
        );
        s
    }

    #[test]
    fn the_same_card_for_the_same_member_returns_the_existing_token() {
        let mut s = with_fingerprint_key();
        assert!(matches!(
            s.apply(&on_file("a", "m1", "tok_1", "fp1", 10)),
            Response::Tokenized(_)
        ));
        match s.apply(&on_file("a", "m1", "tok_2", "fp1", 11)) {
            Response::AlreadyOnFile(meta) => assert_eq!(meta.token, "tok_1"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(
                s.apply(&on_file("a", "m2", "tok_3", "fp1", 12)),
                Response::Tokenized(_)
            ),
            "other member"
        );
        assert!(
            matches!(
                s.apply(&on_file("b", "m1", "tok_4", "fp1", 13)),
                Response::Tokenized(_)
            ),
            "other merchant"
        );
        assert_eq!(s.token_count(), 3);
        let listed: Vec<_> = s
            .member_cards("a", "m1")
            .into_iter()
            .map(|m| m.token)
            .collect();
        assert_eq!(listed, vec!["tok_1"]);
        assert!(s.member_cards("b", "m2").is_empty());
        s.validate().unwrap();
    }

    #[test]
    fn a_deleted_card_is_gone_for_good_and_only_its_owner_can_delete_it() {
        let mut s = with_fingerprint_key();
        s.apply(&on_file("a", "m1", "tok_1", "fp1", 10));
        let del = |merchant: &str, member: &str| Command::DeleteCard {
            merchant_id: merchant.into(),
            member_id: member.into(),
            token: "tok_1".into(),
            at_ms: 20,
        };
        assert_eq!(
            s.apply(&del("b", "m1")),
            Response::Refused(Refusal::TokenNotFound),
            "other merchant"
        );
        assert_eq!(
            s.apply(&del("a", "m2")),
            Response::Refused(Refusal::TokenNotFound),
            "other member"
        );
        assert_eq!(s.apply(&del("a", "m1")), Response::CardDeleted);
        assert_eq!(
            s.apply(&del("a", "m1")),
            Response::Refused(Refusal::TokenNotFound),
            "deleted once"
        );
        assert_eq!(s.token_for("a", "tok_1"), None);
        assert!(s.member_cards("a", "m1").is_empty());
        assert!(
            matches!(s.apply(&on_file("a", "m1", "tok_5", "fp1", 30)), Response::Tokenized(ref m) if m.token == "tok_5")
        );
        s.validate().unwrap();
    }

    /// `s` with the clock and audit trail of `now`: every applied command advances the
    /// clock and is audited, refused or not, so "nothing changed" means "nothing else".
    fn at_clock(s: &VaultState, now: &VaultState) -> VaultState {
        VaultState {
            clock_ms: now.clock_ms,
            audit: now.audit.clone(),
            ..s.clone()
        }
    }

    fn one_time(merchant: &str, token: &str, at_ms: u64, expires_at_ms: u64) -> Command {
        Command::Tokenize {
            merchant_id: merchant.into(),
            token: token.into(),
            kind: TokenKind::OneTime,
            member_id: None,
            card: card(1),
            at_ms,
            expires_at_ms: Some(expires_at_ms),
            fingerprint: None,
            key_role: KeyRole::Publishable,
            cvc_supplied: true,
        }
    }

    fn use_it(merchant: &str, token: &str, new_token: &str, fp: &str, at_ms: u64) -> Command {
        Command::UseOneTimeForCard {
            merchant_id: merchant.into(),
            one_time_token: token.into(),
            member_id: "m1".into(),
            new_token: new_token.into(),
            card: card(1),
            fingerprint: fp.into(),
            at_ms,
        }
    }

    #[test]
    fn a_one_time_token_is_used_exactly_once_and_never_after_expiry() {
        let mut s = with_fingerprint_key();
        s.apply(&one_time("a", "ott_1", 10, 1_000));
        s.apply(&one_time("a", "ott_2", 10, 1_000));
        let before = s.clone();
        assert_eq!(
            s.apply(&use_it("b", "ott_1", "tok_x", "f1", 20)),
            Response::Refused(Refusal::TokenNotFound)
        );
        assert_eq!(
            s,
            at_clock(&before, &s),
            "a refused use changes nothing but the clock"
        );
        match s.apply(&use_it("a", "ott_1", "tok_c1", "f1", 20)) {
            Response::Tokenized(m) => assert_eq!(
                (m.token.as_str(), m.kind),
                ("tok_c1", TokenKind::CardOnFile)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.token_for("a", "ott_1").unwrap().used_at_ms, Some(20));
        let used = s.clone();
        assert_eq!(
            s.apply(&use_it("a", "ott_1", "tok_c2", "f1", 21)),
            Response::Refused(Refusal::TokenAlreadyUsed)
        );
        assert_eq!(
            s,
            at_clock(&used, &s),
            "a second use changes nothing but the clock"
        );
        assert_eq!(
            s.apply(&use_it("a", "ott_2", "tok_c3", "f2", 1_000)),
            Response::Refused(Refusal::TokenExpired)
        );
        assert_eq!(s.token_for("a", "ott_2").unwrap().used_at_ms, None);
        s.validate().unwrap();
    }

    #[test]
    fn using_a_one_time_token_for_a_card_already_on_file_returns_it_and_uses_the_token() {
        let mut s = with_fingerprint_key();
        s.apply(&on_file("a", "m1", "tok_1", "f1", 10));
        s.apply(&one_time("a", "ott_1", 10, 1_000));
        match s.apply(&use_it("a", "ott_1", "tok_new", "f1", 20)) {
            Response::AlreadyOnFile(m) => assert_eq!(m.token, "tok_1"),
            other => panic!("{other:?}"),
        }
        assert!(s.token_for("a", "tok_new").is_none());
        assert_eq!(s.token_for("a", "ott_1").unwrap().used_at_ms, Some(20));
        s.validate().unwrap();
    }

    #[test]
    fn a_kek_rotation_rewraps_every_live_key_whole_or_not_at_all() {
        use crate::vault::command::RewrappedKey;
        let mut s = VaultState::default();
        s.apply(&install(1, 1));
        s.apply(&install(2, 2));
        s.apply(&Command::InstallFingerprintKey {
            wrapped: vec![5; 60],
            kek_id: Some("kek_old".into()),
            at_ms: 3,
        });
        let rewrap = |from: Option<&str>, keys: &[u32]| Command::RewrapKeys {
            kek_id: "kek_new".into(),
            keys: keys
                .iter()
                .map(|&version| RewrappedKey {
                    version,
                    from_kek_id: from.map(str::to_owned),
                    wrapped: vec![7; 60],
                })
                .collect(),
            fingerprint: Some(RewrappedKey {
                version: 0,
                from_kek_id: Some("kek_old".into()),
                wrapped: vec![8; 60],
            }),
            at_ms: 10,
            by: Some("operator:alice".into()),
        };
        // Claims the keys were under another KEK than they are: nothing changes.
        assert_eq!(
            s.apply(&rewrap(Some("kek_other"), &[1, 2])),
            Response::Refused(Refusal::KeyRewrapped)
        );
        assert_eq!(s.data_key(1), Some(&[1u8; 60][..]));
        assert_eq!(s.data_key_kek(1), None);
        assert_eq!(s.fingerprint_key_kek(), Some("kek_old"));
        assert_eq!(
            s.apply(&rewrap(None, &[1, 2])),
            Response::KeysRewrapped { keys: 3 }
        );
        for v in [1, 2] {
            assert_eq!(s.data_key(v), Some(&[7u8; 60][..]));
            assert_eq!(s.data_key_kek(v), Some("kek_new"));
        }
        assert_eq!(s.fingerprint_key(), Some(&[8u8; 60][..]));
        assert_eq!(s.fingerprint_key_kek(), Some("kek_new"));
        let n = s.audit().len();
        let last = s.audit().page(n - 1, 1).remove(0);
        assert_eq!(last.entry.action, "kek.rotate");
        assert_eq!(last.entry.actor, "operator:alice");
        // Applying it again is refused: the keys are no longer under what it names.
        assert_eq!(
            s.apply(&rewrap(None, &[1])),
            Response::Refused(Refusal::KeyRewrapped)
        );
        s.validate().unwrap();
    }

    #[test]
    fn only_spent_one_time_tokens_lose_their_card_and_keep_their_metadata() {
        let mut s = with_fingerprint_key();
        s.apply(&create("a", 1));
        s.apply(&install(1, 2));
        s.apply(&one_time("a", "ott_live", 10, 10_000));
        s.apply(&one_time("a", "ott_expired", 10, 50));
        s.apply(&one_time("a", "ott_used", 10, 10_000));
        s.apply(&on_file("a", "m1", "tok_cof", "f1", 11));
        s.apply(&use_it("a", "ott_used", "tok_new", "f2", 20));
        let sealed = |s: &VaultState, t: &str| s.any_token(t).unwrap().card.ciphertext.clone();
        assert!(!sealed(&s, "ott_expired").is_empty());
        let all = [
            "ott_live",
            "ott_expired",
            "ott_used",
            "tok_cof",
            "tok_new",
            "nope",
        ]
        .map(String::from)
        .to_vec();
        let (found, next) = s.purgeable(None, 100, 100, 60);
        assert_eq!(found, vec!["ott_expired".to_owned(), "ott_used".to_owned()]);
        assert_eq!(next, None, "the scan reached the end");
        let (found, next) = s.purgeable(None, 2, 100, 60);
        assert_eq!(
            (found, next.as_deref()),
            (vec!["ott_expired".to_owned()], Some("ott_live"))
        );
        let (found, _) = s.purgeable(next.as_deref(), 100, 100, 60);
        assert_eq!(found, vec!["ott_used".to_owned()], "a bounded scan resumes");
        assert_eq!(
            s.apply(&Command::PurgeCards {
                tokens: all.clone(),
                at_ms: 60
            }),
            Response::Purged {
                purged: 2,
                skipped: 4
            }
        );
        for t in ["ott_expired", "ott_used"] {
            let r = s.any_token(t).unwrap();
            assert!(
                r.card.ciphertext.is_empty() && r.card.nonce.is_empty(),
                "{t}"
            );
            assert_eq!(r.purged_at_ms, Some(60));
            assert_eq!(r.card.last4.len(), 4, "metadata stays");
        }
        for t in ["ott_live", "tok_cof", "tok_new"] {
            assert!(!sealed(&s, t).is_empty(), "{t} keeps its card");
        }
        // Nothing of the purged cards is left in what a snapshot serializes.
        let snapshot = serde_json::to_value(&s).unwrap();
        for t in ["ott_expired", "ott_used"] {
            let card = &snapshot["tokens"][t]["card"];
            assert_eq!(
                (card["ciphertext"].as_str(), card["nonce"].as_str()),
                (Some(""), Some("")),
                "{t}"
            );
        }
        assert_eq!(
            snapshot["tokens"]["ott_live"]["card"]["ciphertext"],
            "010203"
        );
        s.validate().unwrap();
        let n = s.audit().len();
        let last = s.audit().page(n - 1, 1).remove(0);
        assert_eq!(last.entry.action, "token.purge_card");
        assert!(
            last.entry.detail.contains("2 used or expired"),
            "{}",
            last.entry.detail
        );
        // A purged card never comes back through a re-wrap that read it before.
        s.apply(&install(2, 61));
        s.apply(&reseal("ott_used", 1, 2, 62));
        assert!(sealed(&s, "ott_used").is_empty());
        s.validate().unwrap();
    }

    fn install(version: u32, at_ms: u64) -> Command {
        Command::InstallDataKey {
            by: None,
            kek_id: None,
            version,
            wrapped: vec![version as u8; 60],
            at_ms,
            by_admin: true,
        }
    }

    fn reseal(token: &str, from: u32, to: u32, at_ms: u64) -> Command {
        Command::ResealCards {
            to_version: to,
            cards: vec![Reseal {
                token: token.into(),
                from_version: from,
                nonce: vec![to as u8; 12],
                ciphertext: vec![to as u8; 20],
            }],
            at_ms,
        }
    }

    fn open_payment(
        m: &str,
        id: &str,
        order: &str,
        token: &str,
        amount: u64,
        at_ms: u64,
    ) -> Command {
        Command::OpenPayment {
            payment_id: id.into(),
            merchant_id: m.into(),
            order_id: order.into(),
            token: token.into(),
            amount,
            currency: "JPY".into(),
            capture: false,
            gateway_txn_id: format!("gw_{id}"),
            route: "cafis".into(),
            idempotency: None,
            at_ms,
        }
    }

    #[test]
    fn a_payment_consumes_its_one_time_token_and_owns_its_order() {
        let mut s = with_fingerprint_key();
        s.apply(&one_time("a", "ott_1", 10, 1_000));
        let open = |id: &str, order: &str, at| open_payment("a", id, order, "ott_1", 1_000, at);
        assert!(
            matches!(s.apply(&open("pay_1", "o1", 20)), Response::Payment(ref p) if p.state == PaymentState::Pending)
        );
        assert_eq!(s.token_for("a", "ott_1").unwrap().used_at_ms, Some(20));
        assert_eq!(
            s.apply(&open("pay_2", "o2", 21)),
            Response::Refused(Refusal::TokenAlreadyUsed),
            "a one-time token pays once"
        );
        s.apply(&on_file("a", "m1", "tok_c", "f1", 22));
        assert_eq!(
            s.apply(&open_payment("a", "pay_3", "o1", "tok_c", 500, 23)),
            Response::Refused(Refusal::OrderIdTaken),
            "one payment per order"
        );
        assert!(
            matches!(
                s.apply(&open_payment("b", "pay_4", "o1", "tok_c", 500, 24)),
                Response::Refused(Refusal::TokenNotFound)
            ),
            "another merchant's token"
        );
        let settle = Command::SettlePayment {
            payment_id: "pay_1".into(),
            outcome: AuthOutcome::Approved {
                auth_code: "x".into(),
            },
            at_ms: 25,
        };
        assert!(
            matches!(s.apply(&settle), Response::Payment(ref p) if p.state == PaymentState::Authorized)
        );
        let capture = |m: &str| Command::ChangePayment {
            merchant_id: m.into(),
            payment_id: "pay_1".into(),
            change: PaymentChange::Capture { amount: 1_000 },
            idempotency: None,
            at_ms: 26,
        };
        assert_eq!(
            s.apply(&capture("b")),
            Response::Refused(Refusal::PaymentNotFound)
        );
        assert!(
            matches!(s.apply(&capture("a")), Response::Payment(ref p) if p.state == PaymentState::Captured)
        );
        assert_eq!(s.payment_by_order("a", "o1").unwrap().id, "pay_1");
        assert!(s.payment_for("b", "pay_1").is_none());
        assert!(s.pending_payments().is_empty());
        s.validate().unwrap();
    }

    #[test]
    fn an_idempotency_key_acts_once_and_its_record_follows_the_payment() {
        let mut s = with_fingerprint_key();
        s.apply(&on_file("a", "m1", "tok_c", "f1", 10));
        let idem = |key: &str, hash: &str| {
            Some(Idempotency {
                key: key.into(),
                body_sha256: hash.into(),
            })
        };
        let mut open = open_payment("a", "pay_1", "o1", "tok_c", 1_000, 20);
        if let Command::OpenPayment { idempotency, .. } = &mut open {
            *idempotency = idem("k1", "h1");
        }
        assert!(matches!(s.apply(&open), Response::Payment(_)));
        let mut again = open.clone();
        if let Command::OpenPayment {
            payment_id,
            order_id,
            ..
        } = &mut again
        {
            *payment_id = "pay_2".into();
            *order_id = "o2".into();
        }
        let taken = match s.apply(&again) {
            Response::Refused(Refusal::IdempotencyKeyTaken(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(taken.body_sha256, "h1");
        assert!(
            matches!(&taken.outcome, StoredOutcome::Payment(p) if p.state == PaymentState::Pending)
        );
        assert!(
            s.payment_for("a", "pay_2").is_none(),
            "the retry opened nothing"
        );
        s.apply(&Command::SettlePayment {
            payment_id: "pay_1".into(),
            outcome: AuthOutcome::Approved {
                auth_code: "x".into(),
            },
            at_ms: 21,
        });
        let r = s.idempotency("a", "k1").unwrap();
        assert!(
            matches!(&r.outcome, StoredOutcome::Payment(p) if p.state == PaymentState::Authorized)
        );
        let refund = Command::ChangePayment {
            merchant_id: "a".into(),
            payment_id: "pay_1".into(),
            change: PaymentChange::Refund { amount: 5 },
            idempotency: idem("k2", "h2"),
            at_ms: 22,
        };
        assert!(matches!(
            s.apply(&refund),
            Response::Refused(Refusal::Payment(_))
        ));
        let r = s.idempotency("a", "k2").unwrap();
        assert_eq!(
            r.outcome,
            StoredOutcome::Refused("payment_state_conflict".into())
        );
        assert!(s.idempotency("b", "k1").is_none(), "keys are per merchant");
        s.validate().unwrap();
    }

    #[test]
    fn idempotency_keys_are_kept_24_hours_by_leader_time_then_dropped() {
        let mut s = with_fingerprint_key();
        s.apply(&on_file("a", "m1", "tok_c", "f1", 10));
        let mut open = open_payment("a", "pay_1", "o1", "tok_c", 1_000, 1_000);
        if let Command::OpenPayment { idempotency, .. } = &mut open {
            *idempotency = Some(Idempotency {
                key: "k1".into(),
                body_sha256: "h".into(),
            });
        }
        s.apply(&open);
        let tick = |at_ms| Command::RecordAdminAction {
            by: None,
            action: "tick".into(),
            detail: String::new(),
            at_ms,
        };
        s.apply(&tick(1_000 + IDEMPOTENCY_KEEP_MS));
        assert!(
            s.idempotency("a", "k1").is_some(),
            "kept for the full 24 hours"
        );
        s.apply(&tick(1_001 + IDEMPOTENCY_KEEP_MS));
        assert!(s.idempotency("a", "k1").is_none(), "dropped after 24 hours");
        assert!(s.payment_for("a", "pay_1").is_some(), "the payment stays");
        s.validate().unwrap();
    }

    #[test]
    fn keys_rotate_rewrap_and_retire_only_when_unused() {
        let mut s = seeded();
        s.apply(&tokenize("a", "tok_1", 10));
        s.apply(&tokenize("b", "tok_2", 11));
        assert_eq!(
            s.apply(&install(1, 12)),
            Response::Refused(Refusal::DataKeyExists { version: 1 }),
            "versions only grow"
        );
        assert_eq!(
            s.apply(&install(2, 13)),
            Response::DataKeyInstalled { version: 2 }
        );
        assert_eq!(s.current_data_key().unwrap().0, 2);
        assert_eq!(s.stale_cards(None, 2, 10).len(), 2);
        assert_eq!(s.stale_cards(Some("tok_1"), 2, 10).len(), 1, "cursor");
        assert_eq!(
            s.apply(&Command::RetireDataKey {
                by: None,
                version: 1,
                at_ms: 14
            }),
            Response::Refused(Refusal::DataKeyInUse { cards: 2 })
        );
        assert_eq!(
            s.apply(&Command::RetireDataKey {
                by: None,
                version: 2,
                at_ms: 14
            }),
            Response::Refused(Refusal::DataKeyCurrent)
        );
        assert_eq!(
            s.apply(&reseal("tok_1", 1, 2, 15)),
            Response::Resealed {
                moved: 1,
                skipped: 0
            }
        );
        assert_eq!(
            s.apply(&reseal("tok_1", 1, 2, 16)),
            Response::Resealed {
                moved: 0,
                skipped: 1
            },
            "a card that changed since it was read is skipped"
        );
        assert_eq!(
            s.apply(&reseal("tok_2", 1, 3, 16)),
            Response::Refused(Refusal::UnknownDataKey),
            "only to the current key"
        );
        s.apply(&reseal("tok_2", 1, 2, 17));
        assert!(s.stale_cards(None, 2, 10).is_empty());
        let retire = Command::RetireDataKey {
            by: None,
            version: 1,
            at_ms: 18,
        };
        assert_eq!(s.apply(&retire), Response::DataKeyRetired { version: 1 });
        assert_eq!(s.data_key(1), None, "a retired key's bytes are gone");
        assert_eq!(s.apply(&retire), Response::Refused(Refusal::UnknownDataKey));
        let states: Vec<_> = s.data_keys().iter().map(|k| (k.state, k.cards)).collect();
        assert_eq!(states, vec![("retired", 0), ("current", 2)]);
        assert_eq!(
            s.apply(&install(2, 19)),
            Response::Refused(Refusal::DataKeyExists { version: 2 })
        );
        s.validate().unwrap();
    }

    #[test]
    fn merchant_settings_and_origins_change_through_the_log() {
        let mut s = seeded();
        assert!(!s.origin_allowed_by_any("https://shop.example"));
        let settings = MerchantSettings {
            allowed_origins: vec!["https://shop.example".into()],
            token_format: crate::vault::TokenFormat::Numeric,
            require_three_d_secure: true,
        };
        let update = |id: &str| Command::UpdateMerchant {
            by: None,
            merchant_id: id.into(),
            settings: settings.clone(),
            at_ms: 20,
        };
        assert!(
            matches!(s.apply(&update("a")), Response::Merchant(ref m) if m.settings == settings)
        );
        assert!(s.origin_allowed_by_any("https://shop.example"));
        assert!(!s.origin_allowed_by_any("https://evil.example"));
        assert_eq!(
            s.apply(&update("zz")),
            Response::Refused(Refusal::UnknownMerchant)
        );
        s.validate().unwrap();
    }

    #[test]
    fn an_admin_change_is_audited_under_the_operator_who_asked() {
        let mut s = VaultState::default();
        let mut by_alice = create("m1", 5);
        if let Command::CreateMerchant { by, .. } = &mut by_alice {
            *by = Some("operator:alice".into());
        }
        s.apply(&by_alice);
        // An entry from before named operators carries no `by`.
        let old: Command = serde_json::from_value(serde_json::json!({
            "CreateMerchant": {
                "merchant_id": "m2", "name": "M2", "secret_key_sha256": "h2",
                "publishable_key_sha256": "p2", "settings": MerchantSettings::default(),
                "at_ms": 6
            }
        }))
        .unwrap();
        s.apply(&old);
        let a = s.audit();
        let actors: Vec<_> = a
            .page(0, 10)
            .iter()
            .map(|r| r.entry.actor.clone())
            .collect();
        assert_eq!(actors, vec!["operator:alice", "admin"]);
        assert!(!serde_json::to_string(&create("m3", 7))
            .unwrap()
            .contains("\"by\""));
    }

    #[test]
    fn every_command_is_audited_with_actor_and_outcome_and_no_card_data() {
        let mut s = with_fingerprint_key();
        s.apply(&one_time("a", "ott_1", 10, 1_000));
        s.apply(&use_it("b", "ott_1", "tok_x", "f1", 20));
        s.apply(&use_it("a", "ott_1", "tok_c1", "f1", 21));
        let a = s.audit();
        let page = a.page(a.len() - 3, 3);
        let last: Vec<_> = page
            .iter()
            .map(|r| {
                (
                    r.entry.actor.as_str(),
                    r.entry.action.as_str(),
                    r.entry.token.as_deref(),
                    r.entry.outcome.as_str(),
                )
            })
            .collect();
        assert_eq!(
            last,
            vec![
                (
                    "merchant:a:publishable",
                    "token.create",
                    Some("ott_1"),
                    "ok"
                ),
                (
                    "merchant:b:secret",
                    "token.use_for_card_on_file",
                    Some("ott_1"),
                    "token_not_found"
                ),
                (
                    "merchant:a:secret",
                    "token.use_for_card_on_file",
                    Some("ott_1"),
                    "ok"
                ),
            ]
        );
        assert!(a.page(a.len() - 1, 1)[0].entry.detail.contains("tok_c1"));
        let json = serde_json::to_string(&a.page(0, 1000)).unwrap();
        assert!(!json.contains("ciphertext") && !json.contains("nonce"));
        assert_eq!(a.verify(), Ok(a.len()));
    }

    #[test]
    fn a_tampered_audit_record_fails_validate() {
        let mut s = with_fingerprint_key();
        s.apply(&tokenize("a", "tok_1", 10));
        s.validate().unwrap();
        s.audit.records_mut()[2].entry.outcome = "token_not_found".into();
        let err = s.validate().unwrap_err();
        assert!(err.contains("audit record 2"), "{err}");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn command() -> impl Strategy<Value = Command> {
            let ids = || prop_oneof![Just("a"), Just("a"), Just("b"), Just("zz")];
            let members = || prop_oneof![Just("m1"), Just("m2")];
            let fps = || prop_oneof![Just("f1"), Just("f2"), Just("f3")];
            let tok = || 0u8..12;
            let at = || 100u64..400;
            prop_oneof![
                (ids(), members(), tok(), fps(), at()).prop_map(|(m, mem, t, fp, at)| {
                    on_file(m, mem, &format!("tok_{t}"), fp, at)
                }),
                (ids(), members(), tok(), at()).prop_map(|(m, mem, t, at)| Command::DeleteCard {
                    merchant_id: m.into(),
                    member_id: mem.into(),
                    token: format!("tok_{t}"),
                    at_ms: at,
                }),
                (ids(), tok(), at(), 1u64..200)
                    .prop_map(|(m, t, at, ttl)| { one_time(m, &format!("tok_{t}"), at, at + ttl) }),
                (ids(), tok(), tok(), fps(), at()).prop_map(|(m, t, n, fp, at)| {
                    use_it(m, &format!("tok_{t}"), &format!("tok_{n}"), fp, at)
                }),
                (1u32..5, at()).prop_map(|(v, at)| install(v, at)),
                (tok(), 1u32..5, 1u32..5, at())
                    .prop_map(|(t, from, to, at)| { reseal(&format!("tok_{t}"), from, to, at) }),
                (1u32..5, at()).prop_map(|(v, at)| Command::RetireDataKey {
                    by: None,
                    version: v,
                    at_ms: at
                }),
                (proptest::collection::vec(tok(), 0..4), at()).prop_map(|(ts, at)| {
                    Command::PurgeCards {
                        tokens: ts.iter().map(|t| format!("tok_{t}")).collect(),
                        at_ms: at,
                    }
                }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn validate_holds_after_every_step_and_used_expired_or_deleted_tokens_stay_unusable(
                cmds in proptest::collection::vec(command(), 1..80)
            ) {
                let mut s = with_fingerprint_key();
                let audited_before = s.audit().len();
                let mut deleted = std::collections::BTreeSet::new();
                for c in &cmds {
                    let before = match c {
                        Command::UseOneTimeForCard { merchant_id, one_time_token: token, .. }
                        | Command::OpenPayment { merchant_id, token, .. } => s.token_for(merchant_id, token),
                        _ => None,
                    };
                    let r = s.apply(c);
                    if let (Command::OpenPayment { merchant_id, token, .. }, Response::Payment(_)) = (c, &r) {
                        let m = s.token_for(merchant_id, token).expect("a payment's token exists");
                        if m.kind == TokenKind::OneTime {
                            prop_assert!(before.is_none() || before.as_ref().is_some_and(|b| b.used_at_ms.is_none()));
                            prop_assert!(m.used_at_ms.is_some(), "a one-time token paid with is used");
                        }
                    }
                    if let Command::UseOneTimeForCard { at_ms, .. } = c {
                        let ok = matches!(r, Response::Tokenized(_) | Response::AlreadyOnFile(_));
                        if ok {
                            let m = before.expect("a use succeeded on a token its merchant could not see");
                            prop_assert!(m.used_at_ms.is_none(), "a used one-time token was used again");
                            prop_assert!(m.expires_at_ms.is_some_and(|e| *at_ms < e), "an expired token was used");
                        }
                    }
                    prop_assert!(s.validate().is_ok(), "{c} -> {r:?}: {:?}", s.validate());
                    if let (Command::DeleteCard { token, .. }, Response::CardDeleted) = (c, &r) {
                        deleted.insert(token.clone());
                    }
                    if let Response::Tokenized(m) = &r {
                        deleted.remove(&m.token);
                    }
                    for t in &deleted {
                        prop_assert!(s.token_for("a", t).is_none() && s.token_for("b", t).is_none(), "{t} came back");
                    }
                }
                prop_assert_eq!(s.audit().len(), audited_before + cmds.len() as u64, "one audit record per command");
            }
        }
    }
}
