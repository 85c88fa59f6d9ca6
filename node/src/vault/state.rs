//! The replicated vault state and its deterministic `apply`.

use super::command::{Command, MerchantInfo, Refusal, Response, SealedCard, TokenMeta};
use super::token::TokenKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A merchant's record. Its secret key is present only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    pub name: String,
    pub secret_key_sha256: String,
    pub created_at_ms: u64,
    pub key_rotated_at_ms: u64,
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
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// When a one-time token was used; a used token is never usable again.
    #[serde(default)]
    pub used_at_ms: Option<u64>,
}

/// (merchant id, member id, fingerprint): the key of the card-on-file index.
type CardKey = (String, String, String);

/// A data key wrapped by the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDataKey {
    pub wrapped: Vec<u8>,
    pub installed_at_ms: u64,
}

/// Everything the vault replicates. Changed only by [`VaultState::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultState {
    merchants: BTreeMap<String, Merchant>,
    /// secret key hash -> merchant id
    key_index: BTreeMap<String, String>,
    tokens: BTreeMap<String, TokenRecord>,
    data_keys: BTreeMap<u32, WrappedDataKey>,
    /// The fingerprint key, wrapped by the KEK; set once.
    #[serde(default)]
    fingerprint_key: Option<WrappedDataKey>,
    /// (merchant, member, fingerprint) -> card-on-file token.
    #[serde(default, with = "card_index_serde")]
    cards: BTreeMap<CardKey, String>,
    /// Leader-stamped time of the newest applied command; never goes back.
    clock_ms: u64,
}

impl VaultState {
    /// Applies one command. Pure: the result depends only on `self` and `cmd`.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        let response = match cmd {
            Command::InstallDataKey {
                version,
                wrapped,
                at_ms,
            } => self.install_data_key(*version, wrapped, *at_ms),
            Command::CreateMerchant {
                merchant_id,
                name,
                secret_key_sha256,
                at_ms,
            } => self.create_merchant(merchant_id, name, secret_key_sha256, *at_ms),
            Command::RotateMerchantKey {
                merchant_id,
                secret_key_sha256,
                at_ms,
            } => self.rotate_merchant_key(merchant_id, secret_key_sha256, *at_ms),
            Command::Tokenize {
                merchant_id,
                token,
                kind,
                member_id,
                card,
                at_ms,
                expires_at_ms,
                fingerprint,
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
            } => match self
                .new_card_id_free(merchant_id, member_id, fingerprint, new_token)
                .and_then(|()| self.use_one_time(merchant_id, one_time_token, *at_ms))
            {
                Err(refusal) => Response::Refused(refusal),
                Ok(()) => {
                    let record = TokenRecord {
                        merchant_id: merchant_id.clone(),
                        kind: TokenKind::CardOnFile,
                        member_id: Some(member_id.clone()),
                        card: card.clone(),
                        created_at_ms: *at_ms,
                        expires_at_ms: None,
                        fingerprint: Some(fingerprint.clone()),
                        used_at_ms: None,
                    };
                    self.tokenize(new_token, record)
                }
            },
            Command::InstallFingerprintKey { wrapped, at_ms } => {
                if self.fingerprint_key.is_some() {
                    Response::Refused(Refusal::FingerprintKeyExists)
                } else {
                    let key = WrappedDataKey {
                        wrapped: wrapped.clone(),
                        installed_at_ms: *at_ms,
                    };
                    self.fingerprint_key = Some(key);
                    Response::FingerprintKeyInstalled
                }
            }
            Command::DeleteCard {
                merchant_id,
                member_id,
                token,
                ..
            } => self.delete_card(merchant_id, member_id, token),
        };
        if let Some(at) = cmd_time(cmd) {
            self.clock_ms = self.clock_ms.max(at);
        }
        response
    }

    fn install_data_key(&mut self, version: u32, wrapped: &[u8], at_ms: u64) -> Response {
        if self.data_keys.contains_key(&version) {
            return Response::Refused(Refusal::DataKeyExists { version });
        }
        self.data_keys.insert(
            version,
            WrappedDataKey {
                wrapped: wrapped.to_vec(),
                installed_at_ms: at_ms,
            },
        );
        Response::DataKeyInstalled { version }
    }

    fn create_merchant(&mut self, id: &str, name: &str, key_hash: &str, at_ms: u64) -> Response {
        if self.merchants.contains_key(id) {
            return Response::Refused(Refusal::MerchantExists);
        }
        let m = Merchant {
            name: name.to_owned(),
            secret_key_sha256: key_hash.to_owned(),
            created_at_ms: at_ms,
            key_rotated_at_ms: at_ms,
        };
        self.key_index.insert(key_hash.to_owned(), id.to_owned());
        self.merchants.insert(id.to_owned(), m);
        Response::Merchant(self.merchant_info(id).expect("just inserted"))
    }

    fn rotate_merchant_key(&mut self, id: &str, key_hash: &str, at_ms: u64) -> Response {
        let Some(m) = self.merchants.get_mut(id) else {
            return Response::Refused(Refusal::UnknownMerchant);
        };
        self.key_index.remove(&m.secret_key_sha256);
        m.secret_key_sha256 = key_hash.to_owned();
        m.key_rotated_at_ms = at_ms;
        self.key_index.insert(key_hash.to_owned(), id.to_owned());
        Response::Merchant(self.merchant_info(id).expect("exists"))
    }

    fn tokenize(&mut self, token: &str, record: TokenRecord) -> Response {
        if !self.merchants.contains_key(&record.merchant_id) {
            return Response::Refused(Refusal::UnknownMerchant);
        }
        let card_key = card_key(&record);
        if let Some(existing) = card_key.as_ref().and_then(|k| self.cards.get(k)) {
            let meta = token_meta(existing, &self.tokens[existing]);
            return Response::AlreadyOnFile(meta);
        }
        if self.tokens.contains_key(token) {
            return Response::Refused(Refusal::TokenIdTaken);
        }
        let meta = token_meta(token, &record);
        self.tokens.insert(token.to_owned(), record);
        if let Some(k) = card_key {
            self.cards.insert(k, token.to_owned());
        }
        Response::Tokenized(meta)
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
        if r.used_at_ms.is_some() {
            return Err(Refusal::TokenAlreadyUsed);
        }
        if r.expires_at_ms.is_some_and(|e| at_ms >= e) {
            return Err(Refusal::TokenExpired);
        }
        r.used_at_ms = Some(at_ms);
        Ok(())
    }

    fn delete_card(&mut self, merchant_id: &str, member_id: &str, token: &str) -> Response {
        let owned = self.tokens.get(token).is_some_and(|r| {
            r.merchant_id == merchant_id
                && r.kind == TokenKind::CardOnFile
                && r.member_id.as_deref() == Some(member_id)
        });
        if !owned {
            return Response::Refused(Refusal::TokenNotFound);
        }
        let record = self.tokens.remove(token).expect("checked");
        if let Some(k) = card_key(&record) {
            self.cards.remove(&k);
        }
        Response::CardDeleted
    }

    /// The merchant whose secret key hashes to `key_sha256`, if any.
    pub fn merchant_by_key_hash(&self, key_sha256: &str) -> Option<&str> {
        self.key_index.get(key_sha256).map(String::as_str)
    }

    /// A merchant's public description.
    pub fn merchant_info(&self, id: &str) -> Option<MerchantInfo> {
        self.merchants.get(id).map(|m| MerchantInfo {
            merchant_id: id.to_owned(),
            name: m.name.clone(),
            created_at_ms: m.created_at_ms,
            key_rotated_at_ms: m.key_rotated_at_ms,
        })
    }

    /// All merchants, by id.
    pub fn merchants(&self) -> Vec<MerchantInfo> {
        self.merchants
            .keys()
            .filter_map(|id| self.merchant_info(id))
            .collect()
    }

    /// The token's metadata, only when `merchant_id` owns it: to any other merchant a
    /// token does not exist.
    pub fn token_for(&self, merchant_id: &str, token: &str) -> Option<TokenMeta> {
        self.tokens
            .get(token)
            .filter(|r| r.merchant_id == merchant_id)
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

    /// The wrapped fingerprint key, once installed.
    pub fn fingerprint_key(&self) -> Option<&[u8]> {
        self.fingerprint_key.as_ref().map(|k| k.wrapped.as_slice())
    }

    /// Number of tokens stored.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The newest data key: its version and wrapped bytes.
    pub fn active_data_key(&self) -> Option<(u32, &[u8])> {
        self.data_keys
            .iter()
            .next_back()
            .map(|(v, k)| (*v, k.wrapped.as_slice()))
    }

    /// A data key by version.
    pub fn data_key(&self, version: u32) -> Option<&[u8]> {
        self.data_keys.get(&version).map(|k| k.wrapped.as_slice())
    }

    /// Leader-stamped time of the newest applied command.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Checks the invariants that every reachable state satisfies. Returns the first violation.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_index.len() != self.merchants.len() {
            return Err(format!(
                "{} key hashes for {} merchants",
                self.key_index.len(),
                self.merchants.len()
            ));
        }
        for (hash, id) in &self.key_index {
            match self.merchants.get(id) {
                Some(m) if &m.secret_key_sha256 == hash => {}
                _ => return Err(format!("key index entry for merchant {id} is stale")),
            }
        }
        for (token, r) in &self.tokens {
            if !self.merchants.contains_key(&r.merchant_id) {
                return Err(format!(
                    "token {token} belongs to unknown merchant {}",
                    r.merchant_id
                ));
            }
            if !self.data_keys.contains_key(&r.card.key_version) {
                return Err(format!(
                    "token {token} sealed under missing data key v{}",
                    r.card.key_version
                ));
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
            if let Some(k) = card_key(r) {
                if self.cards.get(&k) != Some(token) {
                    return Err(format!(
                        "card-on-file token {token} is missing from the card index"
                    ));
                }
            }
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
        Ok(())
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

/// JSON maps need string keys: the card index is stored as a list of entries.
mod card_index_serde {
    use super::CardKey;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<CardKey, String>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<CardKey, String>, D::Error> {
        Ok(Vec::<(CardKey, String)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

fn cmd_time(cmd: &Command) -> Option<u64> {
    match cmd {
        Command::InstallDataKey { at_ms, .. }
        | Command::CreateMerchant { at_ms, .. }
        | Command::RotateMerchantKey { at_ms, .. }
        | Command::Tokenize { at_ms, .. }
        | Command::InstallFingerprintKey { at_ms, .. }
        | Command::UseOneTimeForCard { at_ms, .. }
        | Command::DeleteCard { at_ms, .. } => Some(*at_ms),
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
        }
    }

    fn seeded() -> VaultState {
        let mut s = VaultState::default();
        let steps = [
            Command::InstallDataKey {
                version: 1,
                wrapped: vec![9; 60],
                at_ms: 1,
            },
            Command::CreateMerchant {
                merchant_id: "a".into(),
                name: "A".into(),
                secret_key_sha256: "ha".into(),
                at_ms: 2,
            },
            Command::CreateMerchant {
                merchant_id: "b".into(),
                name: "B".into(),
                secret_key_sha256: "hb".into(),
                at_ms: 3,
            },
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
        let dup = Command::CreateMerchant {
            merchant_id: "a".into(),
            name: "again".into(),
            secret_key_sha256: "x".into(),
            at_ms: 13,
        };
        assert_eq!(s.apply(&dup), Response::Refused(Refusal::MerchantExists));
        assert_eq!(s.merchant_by_key_hash("ha"), Some("a"));
        assert_eq!(s.merchant_by_key_hash("x"), None);
        s.validate().unwrap();
    }

    #[test]
    fn rotating_a_key_retires_the_old_one() {
        let mut s = seeded();
        let rot = Command::RotateMerchantKey {
            merchant_id: "a".into(),
            secret_key_sha256: "ha2".into(),
            at_ms: 20,
        };
        assert!(matches!(s.apply(&rot), Response::Merchant(ref m) if m.key_rotated_at_ms == 20));
        assert_eq!(s.merchant_by_key_hash("ha"), None);
        assert_eq!(s.merchant_by_key_hash("ha2"), Some("a"));
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
    }

    #[test]
    fn validate_catches_a_token_sealed_under_a_missing_key() {
        let mut s = seeded();
        let mut cmd = tokenize("a", "tok_1", 10);
        if let Command::Tokenize { card, .. } = &mut cmd {
            card.key_version = 7;
        }
        s.apply(&cmd);
        assert!(s.validate().unwrap_err().contains("missing data key"));
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
        }
    }

    fn with_fingerprint_key() -> VaultState {
        let mut s = seeded();
        let install = Command::InstallFingerprintKey {
            wrapped: vec![5; 60],
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

    /// `s` with its clock set to `clock_ms`: every applied command advances the clock,
    /// refused or not, so "nothing changed" means "nothing but the clock".
    fn at_clock(s: &VaultState, clock_ms: u64) -> VaultState {
        VaultState {
            clock_ms,
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
            at_clock(&before, s.clock_ms),
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
            at_clock(&used, s.clock_ms),
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

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn command() -> impl Strategy<Value = Command> {
            let ids = || prop_oneof![Just("a"), Just("b"), Just("zz")];
            let members = || prop_oneof![Just("m1"), Just("m2")];
            let fps = || prop_oneof![Just("f1"), Just("f2"), Just("f3")];
            let tok = 0u8..12;
            prop_oneof![
                (ids(), members(), tok.clone(), fps()).prop_map(|(m, mem, t, fp)| on_file(
                    m,
                    mem,
                    &format!("tok_{t}"),
                    fp,
                    100
                )),
                (ids(), members(), tok).prop_map(|(m, mem, t)| Command::DeleteCard {
                    merchant_id: m.into(),
                    member_id: mem.into(),
                    token: format!("tok_{t}"),
                    at_ms: 100,
                }),
            ]
        }

        proptest! {
            #[test]
            fn validate_holds_after_every_step_and_deleted_cards_stay_gone(cmds in proptest::collection::vec(command(), 1..60)) {
                let mut s = with_fingerprint_key();
                let mut deleted = std::collections::BTreeSet::new();
                for c in &cmds {
                    let was_used = match c {
                        Command::UseOneTimeForCard { merchant_id, one_time_token, .. } => {
                            s.token_for(merchant_id, one_time_token).and_then(|m| m.used_at_ms.map(|_| ()).or(None))
                        }
                        _ => None,
                    };
                    let r = s.apply(c);
                    if let Command::UseOneTimeForCard { at_ms, merchant_id, one_time_token, .. } = c {
                        let ok = matches!(r, Response::Tokenized(_) | Response::AlreadyOnFile(_));
                        prop_assert!(!(ok && was_used.is_some()), "a used one-time token was used again");
                        if let Some(m) = s.token_for(merchant_id, one_time_token) {
                            prop_assert!(!(ok && m.expires_at_ms.is_some_and(|e| *at_ms >= e)), "an expired token was used");
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
            }
        }
    }
}
