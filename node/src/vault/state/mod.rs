//! The replicated vault state and its deterministic `apply`, over the vault's tables.
//!
//! [`Vault`] is the domain over any [`Tables`]: records and their indexes live in
//! tables, and every change to a record goes through one function that keeps the
//! record's indexes and counters with it (`put_token`, `put_payment`).

mod apply;
mod audit_entry;
mod idempotency;
mod reads;
mod validate;

use super::audit::AuditLog;
use super::command::{
    Command, Idempotency, IdempotencyRecord, KeyRole, MerchantInfo, MerchantSettings,
    PaymentChange, Refusal, Reseal, Response, SealedCard, StoredOutcome, TokenMeta,
};
use super::leader_change::{LeaderChange, LeaderChangeCause};
use super::payment::{AuthOutcome, Payment, PaymentRefusal, PaymentState};
use super::tables::{MemTables, Table, TableId, Tables, TablesMut};
use super::token::TokenKind;
use audit_entry::audit_entry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

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
    #[serde(default)]
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
    #[serde(default)]
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
    #[serde(default)]
    pub kek_id: Option<String>,
    pub installed_at_ms: u64,
}

/// (merchant id, member id, fingerprint): the key of the card-on-file index.
type CardKey = (String, String, String);

const MERCHANTS: Table<String, Merchant> = Table::new(TableId::Merchants);
const KEY_INDEX: Table<String, KeyOwner> = Table::new(TableId::KeyIndex);
const TOKENS: Table<String, TokenRecord> = Table::new(TableId::Tokens);
const CARDS: Table<CardKey, String> = Table::new(TableId::Cards);
const CARDS_BY_KEY: Table<(u32, String), ()> = Table::new(TableId::CardsByKey);
const ONE_TIME_BY_SPEND: Table<(u64, String), ()> = Table::new(TableId::OneTimeBySpend);
const DATA_KEYS: Table<u32, DataKeyEntry> = Table::new(TableId::DataKeys);
const PAYMENTS: Table<String, Payment> = Table::new(TableId::Payments);
const ORDERS: Table<(String, String), String> = Table::new(TableId::Orders);
const PAYMENTS_BY_TIME: Table<(String, u64, String), ()> = Table::new(TableId::PaymentsByTime);
const PENDING: Table<String, ()> = Table::new(TableId::PendingPayments);
const IDEMPOTENCY: Table<(String, String), idempotency::StoredIdempotency> =
    Table::new(TableId::Idempotency);
const IDEMPOTENCY_BY_TIME: Table<(u64, String, String), ()> =
    Table::new(TableId::IdempotencyByTime);

/// The singletons in the meta table, each under its name.
mod meta {
    pub const CLOCK_MS: &str = "clock_ms";
    pub const FINGERPRINT_KEY: &str = "fingerprint_key";
    pub const LAST_LEADER_CHANGE: &str = "last_leader_change";
    pub const LEADER_CHANGES: &str = "leader_changes";
    pub const DRAINED: &str = "drained";
    /// Cards sealed under each data key version.
    pub const KEY_USAGE: &str = "key_usage";
    pub const TOKEN_COUNT: &str = "token_count";
    pub const PAYMENT_COUNT: &str = "payment_count";
}

fn meta_get<T: Serialize + DeserializeOwned, S: Tables + ?Sized>(s: &S, name: &str) -> Option<T> {
    Table::<String, T>::new(TableId::Meta).get(s, &name.to_owned())
}

fn meta_put<T: Serialize + DeserializeOwned, S: TablesMut + ?Sized>(s: &mut S, name: &str, v: &T) {
    Table::<String, T>::new(TableId::Meta).put(s, &name.to_owned(), v);
}

/// When a one-time token that holds its card is spent: used, or expired
/// (`u64::MAX`: never, until used). `None` for tokens the purge never looks at.
fn spent_from(r: &TokenRecord) -> Option<u64> {
    if r.kind != TokenKind::OneTime || !r.holds_card() {
        return None;
    }
    Some(match (r.used_at_ms, r.expires_at_ms) {
        (Some(u), Some(e)) => u.min(e),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => u64::MAX,
    })
}

/// Everything the vault replicates, in tables `S`. Changed only by [`Vault::apply`].
#[derive(Debug, Clone, Default)]
pub struct Vault<S> {
    tables: S,
    /// No idempotency record was made before this time (0: not known). Kept by the
    /// caller between batches so that an apply skips the look for expired keys until
    /// the oldest can have expired; never part of the state.
    idempotency_floor_ms: u64,
}

/// Two vaults are equal when their tables are: the idempotency floor is a hint about
/// the tables, not part of the state.
impl<S: PartialEq> PartialEq for Vault<S> {
    fn eq(&self, other: &Self) -> bool {
        self.tables == other.tables
    }
}

impl<S: Eq> Eq for Vault<S> {}

/// The vault in memory: unit and property tests, offline tools.
pub type VaultState = Vault<MemTables>;

impl<S> Vault<S> {
    /// The vault kept in `tables`.
    pub fn new(tables: S) -> Vault<S> {
        Vault::with_idempotency_floor(tables, 0)
    }

    /// The vault kept in `tables`, where no idempotency record was made before
    /// `floor_ms` (as [`Vault::idempotency_floor_ms`] said after the last apply to these
    /// same tables; 0 when not known).
    pub fn with_idempotency_floor(tables: S, floor_ms: u64) -> Vault<S> {
        Vault {
            tables,
            idempotency_floor_ms: floor_ms,
        }
    }

    /// A time before which no idempotency record was made (0 when not known): the
    /// floor to hand the next [`Vault::with_idempotency_floor`] over these tables.
    pub fn idempotency_floor_ms(&self) -> u64 {
        self.idempotency_floor_ms
    }

    /// The tables underneath.
    pub fn tables(&self) -> &S {
        &self.tables
    }

    /// The tables, to hand on.
    pub fn into_tables(self) -> S {
        self.tables
    }
}

impl<S: TablesMut> Vault<S> {
    /// Applies one command and records it in the audit trail. Pure: the result depends
    /// only on the tables and `cmd`. A storage failure leaves the answer void: ask
    /// [`Tables::failure`] before using it or committing the tables.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        if let Some(taken) = self.idempotency_taken(cmd) {
            let response = Response::Refused(Refusal::IdempotencyKeyTaken(Box::new(taken)));
            self.audit_mut().append(audit_entry(cmd, &response));
            self.advance_clock(cmd.at_ms());
            return response;
        }
        let response = self.apply_inner(cmd);
        self.remember_idempotent(cmd, &response);
        self.audit_mut().append(audit_entry(cmd, &response));
        let clock = self.advance_clock(cmd.at_ms());
        self.expire_idempotency_keys(clock);
        response
    }

    fn audit_mut(&mut self) -> AuditLog<&mut S> {
        AuditLog::new(&mut self.tables)
    }

    /// Moves the replicated clock up to `at_ms`; the clock after.
    fn advance_clock(&mut self, at_ms: u64) -> u64 {
        let clock = self.clock_ms();
        if at_ms > clock {
            meta_put(&mut self.tables, meta::CLOCK_MS, &at_ms);
            return at_ms;
        }
        clock
    }

    /// Stores `new` as token `token` (replacing `old`, as read before), keeping the
    /// card index, the key and spend indexes, the key usage counts and the token count
    /// with it.
    fn put_token(&mut self, token: &str, old: Option<&TokenRecord>, new: Option<&TokenRecord>) {
        let t = token.to_owned();
        let held =
            |r: Option<&TokenRecord>| r.filter(|r| r.holds_card()).map(|r| r.card.key_version);
        let (was, now) = (held(old), held(new));
        if was != now {
            let mut usage: BTreeMap<u32, u64> =
                meta_get(&self.tables, meta::KEY_USAGE).unwrap_or_default();
            if let Some(v) = was {
                CARDS_BY_KEY.delete(&mut self.tables, &(v, t.clone()));
                if let Some(n) = usage.get_mut(&v) {
                    *n -= 1;
                    if *n == 0 {
                        usage.remove(&v);
                    }
                }
            }
            if let Some(v) = now {
                CARDS_BY_KEY.put(&mut self.tables, &(v, t.clone()), &());
                *usage.entry(v).or_default() += 1;
            }
            meta_put(&mut self.tables, meta::KEY_USAGE, &usage);
        }
        let (was, now) = (old.and_then(spent_from), new.and_then(spent_from));
        if was != now {
            if let Some(at) = was {
                ONE_TIME_BY_SPEND.delete(&mut self.tables, &(at, t.clone()));
            }
            if let Some(at) = now {
                ONE_TIME_BY_SPEND.put(&mut self.tables, &(at, t.clone()), &());
            }
        }
        let (was, now) = (old.and_then(card_key), new.and_then(card_key));
        if was != now {
            if let Some(k) = was {
                CARDS.delete(&mut self.tables, &k);
            }
            if let Some(k) = now {
                CARDS.put(&mut self.tables, &k, &t);
            }
        }
        if old.is_some() != new.is_some() {
            let n = self.token_count() as u64;
            let n = if new.is_some() {
                n + 1
            } else {
                n.saturating_sub(1)
            };
            meta_put(&mut self.tables, meta::TOKEN_COUNT, &n);
        }
        match new {
            Some(r) => TOKENS.put(&mut self.tables, &t, r),
            None => TOKENS.delete(&mut self.tables, &t),
        }
    }

    /// Stores payment `p` (replacing `old`, as read before), keeping the order index,
    /// the index by merchant and time, the pending set and the count with it.
    fn put_payment(&mut self, old: Option<&Payment>, p: &Payment) {
        if old.is_none() {
            ORDERS.put(
                &mut self.tables,
                &(p.merchant_id.clone(), p.order_id.clone()),
                &p.id,
            );
            PAYMENTS_BY_TIME.put(
                &mut self.tables,
                &(p.merchant_id.clone(), p.created_at_ms, p.id.clone()),
                &(),
            );
            let n: u64 = meta_get(&self.tables, meta::PAYMENT_COUNT).unwrap_or(0);
            meta_put(&mut self.tables, meta::PAYMENT_COUNT, &(n + 1));
        }
        let pending = |p: Option<&Payment>| p.is_some_and(|p| p.state == PaymentState::Pending);
        match (pending(old), pending(Some(p))) {
            (false, true) => PENDING.put(&mut self.tables, &p.id, &()),
            (true, false) => PENDING.delete(&mut self.tables, &p.id),
            _ => {}
        }
        PAYMENTS.put(&mut self.tables, &p.id, p);
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
        assert_eq!(
            crate::vault::tables::digest(x.tables()),
            crate::vault::tables::digest(y.tables())
        );
        assert_eq!(x.clock_ms(), 149);
        assert_eq!(x.audit().len(), 53);
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
        let mut miscounted = broken.clone();
        let mut r = TOKENS.get(&broken.tables, &"tok_2".to_owned()).unwrap();
        r.card.key_version = 7;
        TOKENS.put(&mut broken.tables, &"tok_2".to_owned(), &r);
        let err = broken.validate().unwrap_err();
        assert!(err.detail.contains("missing or retired data key"), "{err}");
        // The counts kept beside the cards are checked against them too.
        meta_put(
            &mut miscounted.tables,
            meta::KEY_USAGE,
            &BTreeMap::from([(1u32, 2u64)]),
        );
        let err = miscounted.validate().unwrap_err();
        assert!(err.detail.contains("key usage counts"), "{err}");
        // And every index entry must have its record.
        let mut stray = s.clone();
        CARDS_BY_KEY.put(&mut stray.tables, &(1, "tok_x".to_owned()), &());
        let err = stray.validate().unwrap_err();
        assert!(err.detail.contains("key index entries"), "{err}");
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
        let mut out = s.clone();
        for name in [meta::CLOCK_MS, "audit_head"] {
            let key = crate::vault::tables::Key::to_key(&name.to_owned());
            match now.tables.get(TableId::Meta, &key) {
                Some(v) => out.tables.put(TableId::Meta, &key, &v),
                None => out.tables.delete(TableId::Meta, &key),
            }
        }
        let mut records = Vec::new();
        now.tables.scan(
            TableId::Audit,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            &mut |k, v| {
                records.push((k.to_vec(), v.to_vec()));
                true
            },
        );
        for (k, v) in records {
            out.tables.put(TableId::Audit, &k, &v);
        }
        out
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
        assert_eq!(s.data_key(1), Some(vec![1u8; 60]));
        assert_eq!(s.data_key_kek(1), None);
        assert_eq!(s.fingerprint_key_kek().as_deref(), Some("kek_old"));
        assert_eq!(
            s.apply(&rewrap(None, &[1, 2])),
            Response::KeysRewrapped { keys: 3 }
        );
        for v in [1, 2] {
            assert_eq!(s.data_key(v), Some(vec![7u8; 60]));
            assert_eq!(s.data_key_kek(v).as_deref(), Some("kek_new"));
        }
        assert_eq!(s.fingerprint_key(), Some(vec![8u8; 60]));
        assert_eq!(s.fingerprint_key_kek().as_deref(), Some("kek_new"));
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
        let mut found = s.purgeable(100, 60);
        found.sort();
        assert_eq!(found, vec!["ott_expired".to_owned(), "ott_used".to_owned()]);
        assert_eq!(s.purgeable(1, 60).len(), 1, "bounded");
        assert_eq!(
            s.purgeable(100, 5),
            Vec::<String>::new(),
            "nothing spent yet at 5"
        );
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
        // Nothing of the purged cards is left in the stored records (a snapshot copies
        // them as stored), and the purge has nothing more to find.
        let stored = |t: &str| {
            s.tables
                .get(
                    TableId::Tokens,
                    &crate::vault::tables::Key::to_key(&t.to_owned()),
                )
                .unwrap()
        };
        let ciphertext = [0xc4, 3, 1, 2, 3];
        let holds = |bytes: Vec<u8>| bytes.windows(5).any(|w| w == ciphertext);
        assert!(
            holds(stored("ott_live")),
            "the stored form is what this test expects"
        );
        for t in ["ott_expired", "ott_used"] {
            assert!(!holds(stored(t)), "{t}");
        }
        assert_eq!(s.purgeable(100, 60), Vec::<String>::new());
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
    fn the_per_command_payment_check_looks_at_what_was_written_and_catches_it_broken() {
        use crate::vault::tables::Recording;
        let mut s = with_fingerprint_key();
        s.apply(&one_time("a", "ott_1", 10, 1_000));
        let mut rec = Recording::new(&mut s.tables, true);
        let mut v = Vault::new(&mut rec);
        assert!(matches!(
            v.apply(&open_payment("a", "pay_1", "o1", "ott_1", 1_000, 20)),
            Response::Payment(_)
        ));
        let touched = v.tables().take_touched();
        for table in [
            TableId::Payments,
            TableId::Orders,
            TableId::PaymentsByTime,
            TableId::PendingPayments,
        ] {
            assert!(touched.iter().any(|(t, _)| *t == table), "{table:?}");
        }
        Vault::new(&rec)
            .validate_payments_touched(&touched)
            .unwrap();
        // A write that left the payment out of the pending set...
        PENDING.delete(&mut rec, &"pay_1".to_string());
        let err = Vault::new(&rec)
            .validate_payments_touched(&rec.take_touched())
            .unwrap_err();
        assert!(err.detail.contains("pending set disagrees"), "{err}");
        PENDING.put(&mut rec, &"pay_1".to_string(), &());
        rec.take_touched();
        // ...an order index entry for no payment...
        ORDERS.put(&mut rec, &("a".into(), "o9".into()), &"pay_9".to_string());
        let err = Vault::new(&rec)
            .validate_payments_touched(&rec.take_touched())
            .unwrap_err();
        assert!(err.detail.contains("names no such payment"), "{err}");
        ORDERS.delete(&mut rec, &("a".into(), "o9".into()));
        rec.take_touched();
        // ...and a key that does not decode are caught.
        rec.put(TableId::PaymentsByTime, b"\xff", b"");
        let err = Vault::new(&rec)
            .validate_payments_touched(&rec.take_touched())
            .unwrap_err();
        assert!(err.detail.contains("does not decode"), "{err}");
        rec.delete(TableId::PaymentsByTime, b"\xff");
        rec.take_touched();
        // What no command wrote is left to the full check.
        drop(rec);
        s.validate().unwrap();
        PAYMENTS_BY_TIME.delete(&mut s.tables, &("a".into(), 20, "pay_1".into()));
        s.validate_payments_touched(&[]).unwrap();
        let err = s.validate_payments().unwrap_err();
        assert!(err.detail.contains("time index"), "{err}");
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
        let authorized = s.payment_for("a", "pay_1").unwrap();
        let change =
            |change: PaymentChange, key: &str, hash: &str, at_ms: u64| Command::ChangePayment {
                merchant_id: "a".into(),
                payment_id: "pay_1".into(),
                change,
                idempotency: idem(key, hash),
                at_ms,
            };
        let capture = change(PaymentChange::Capture { amount: 600 }, "k3", "h3", 23);
        let Response::Payment(captured) = s.apply(&capture) else {
            panic!("capture refused")
        };
        // Each key answers with the payment as its own request left it, though the
        // payment has moved on since.
        let r = s.idempotency("a", "k1").unwrap();
        assert_eq!(r.outcome, StoredOutcome::Payment(Box::new(authorized)));
        let r = s.idempotency("a", "k3").unwrap();
        assert_eq!(r.outcome, StoredOutcome::Payment(captured));
        assert_eq!(r.payment_id.as_deref(), Some("pay_1"));
        assert_eq!(r.action, "payment.capture");
        assert_eq!(r.body_sha256, "h3");
        let refund = change(PaymentChange::Refund { amount: 601 }, "k2", "h2", 24);
        assert!(matches!(
            s.apply(&refund),
            Response::Refused(Refusal::Payment(_))
        ));
        let r = s.idempotency("a", "k2").unwrap();
        assert_eq!(r.outcome, StoredOutcome::Refused("amount_invalid".into()));
        assert!(s.idempotency("b", "k1").is_none(), "keys are per merchant");
        s.validate().unwrap();
    }

    #[test]
    fn a_record_keeps_where_its_request_left_the_payment_not_a_copy() {
        let mut s = with_fingerprint_key();
        s.apply(&on_file("a", "m1", "tok_c", "f1", 10));
        s.apply(&keyed_open(1, 20));
        let key = ("a".to_owned(), "k1".to_owned());
        let stored = IDEMPOTENCY.get(&s.tables, &key).unwrap();
        let payment = s.payment_for("a", "pay_1").unwrap();
        assert_eq!(
            stored.outcome,
            idempotency::StoredAnswer::PaymentAt(payment.at())
        );
        let bytes = s
            .tables
            .get(
                TableId::Idempotency,
                &crate::vault::tables::Key::to_key(&key),
            )
            .unwrap();
        let mut copied = stored.clone();
        copied.outcome = idempotency::StoredAnswer::Payment(Box::new(payment.clone()));
        let copy = crate::vault::tables::encode_value(&copied);
        let payment_bytes = crate::vault::tables::encode_value(&payment).len();
        // What the copy's place holds instead is a few numbers and the route.
        assert!(
            bytes.len() + payment_bytes <= copy.len() + 24,
            "{} bytes stored, {} as a copy of a payment of {payment_bytes}",
            bytes.len(),
            copy.len(),
        );
        // The body's digest is stored as its 32 bytes.
        let digest = "ab".repeat(32);
        let mut hashed = stored.clone();
        hashed.body_sha256 = digest.clone();
        let hashed_bytes = crate::vault::tables::encode_value(&hashed);
        assert!(hashed_bytes.len() <= bytes.len() + 34, "{hashed_bytes:?}");
        assert_eq!(
            crate::vault::tables::decode_value::<idempotency::StoredIdempotency>(&hashed_bytes)
                .unwrap()
                .body_sha256,
            digest
        );

        // A record written as a copy of the payment (before decision 0023) answers
        // with that copy, and survives a settle that brings it up to date.
        IDEMPOTENCY.put(&mut s.tables, &key, &copied);
        let r = s.idempotency("a", "k1").unwrap();
        assert_eq!(r.outcome, StoredOutcome::Payment(Box::new(payment)));
        s.apply(&Command::SettlePayment {
            payment_id: "pay_1".into(),
            outcome: AuthOutcome::Declined { reason: "x".into() },
            at_ms: 21,
        });
        let r = s.idempotency("a", "k1").unwrap();
        assert!(
            matches!(&r.outcome, StoredOutcome::Payment(p) if p.state == PaymentState::Declined)
        );
        assert!(s.tables.failure().is_none());

        s.validate().unwrap();
        // A record naming a later point than its payment reached is damage: the
        // answer is void, and validation names it.
        let mut ahead = IDEMPOTENCY.get(&s.tables, &key).unwrap();
        if let idempotency::StoredAnswer::PaymentAt(at) = &mut ahead.outcome {
            at.events += 5;
        }
        IDEMPOTENCY.put(&mut s.tables, &key, &ahead);
        let err = s.validate().unwrap_err();
        assert!(
            err.detail.contains("idempotency key of a names a payment"),
            "{err}"
        );
        assert!(s.tables.failure().is_none());
        s.idempotency("a", "k1");
        let err = s.tables.failure().expect("a damaged record fails the read");
        assert!(err.to_string().contains("idempotency record"), "{err}");
    }

    /// Payment `pay_{n}` for order `o{n}` on `tok_c` at `at_ms`, with idempotency key
    /// `k{n}`.
    fn keyed_open(n: u32, at_ms: u64) -> Command {
        let pay = format!("pay_{n}");
        let mut open = open_payment("a", &pay, &format!("o{n}"), "tok_c", 1_000, at_ms);
        if let Command::OpenPayment { idempotency, .. } = &mut open {
            *idempotency = Some(Idempotency {
                key: format!("k{n}"),
                body_sha256: "h".into(),
            });
        }
        open
    }

    /// A command that only moves the replicated clock to `at_ms`.
    fn tick(at_ms: u64) -> Command {
        Command::RecordAdminAction {
            by: None,
            action: "tick".into(),
            detail: String::new(),
            at_ms,
        }
    }

    #[test]
    fn idempotency_keys_are_kept_24_hours_by_leader_time_then_dropped() {
        let mut s = with_fingerprint_key();
        s.apply(&on_file("a", "m1", "tok_c", "f1", 10));
        s.apply(&keyed_open(1, 1_000));
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
    fn idempotency_keys_expire_alike_whether_the_floor_is_carried_or_not() {
        // Payments whose leader times arrive out of order, around the 24-hour edge:
        // a vault carried from apply to apply (keeping its floor) and one made anew
        // over the same tables for every command (floor unknown) keep the same keys.
        let t = IDEMPOTENCY_KEEP_MS;
        let steps = [
            keyed_open(1, 1_000),
            keyed_open(2, 5_000),
            tick(1_000 + t),
            keyed_open(3, 800),
            tick(1_001 + t),
            keyed_open(4, 3_000),
            tick(3_001 + t),
            tick(5_001 + t),
        ];
        let mut carried = with_fingerprint_key();
        carried.apply(&on_file("a", "m1", "tok_c", "f1", 10));
        let mut fresh = Vault::new(carried.tables().clone());
        let kept = |v: &VaultState| {
            (1..=4)
                .filter(|n| v.idempotency("a", &format!("k{n}")).is_some())
                .collect::<Vec<_>>()
        };
        let mut seen = Vec::new();
        for cmd in &steps {
            carried.apply(cmd);
            fresh.apply(cmd);
            assert!(carried.tables() == fresh.tables(), "after {cmd:?}");
            seen.push(kept(&carried));
            fresh = Vault::new(fresh.into_tables());
        }
        assert_eq!(
            seen,
            [
                vec![1],
                vec![1, 2],
                vec![1, 2],
                vec![1, 2],
                vec![2],
                vec![2, 4],
                vec![2],
                vec![],
            ],
            "each key dropped once 24 hours older than the replicated clock"
        );
        carried.validate().unwrap();
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
        assert_eq!(
            s.stale_cards(Some(&(1, "tok_1".to_owned())), 2, 10).len(),
            1,
            "cursor"
        );
        assert_eq!(s.stale_cards(None, 1, 10).len(), 0, "none older than v1");
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
        let records: Table<u64, crate::vault::audit::AuditRecord> = Table::new(TableId::Audit);
        let mut r = records.get(&s.tables, &2).unwrap();
        r.entry.outcome = "token_not_found".into();
        records.put(&mut s.tables, &2, &r);
        let err = s.validate().unwrap_err();
        assert!(err.detail.contains("audit record 2"), "{err}");
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
