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
}

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
            } => {
                let record = TokenRecord {
                    merchant_id: merchant_id.clone(),
                    kind: *kind,
                    member_id: member_id.clone(),
                    card: card.clone(),
                    created_at_ms: *at_ms,
                    expires_at_ms: *expires_at_ms,
                };
                self.tokenize(token, record)
            }
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
        if self.tokens.contains_key(token) {
            return Response::Refused(Refusal::TokenIdTaken);
        }
        let meta = token_meta(token, &record);
        self.tokens.insert(token.to_owned(), record);
        Response::Tokenized(meta)
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
        }
        Ok(())
    }
}

fn cmd_time(cmd: &Command) -> Option<u64> {
    match cmd {
        Command::InstallDataKey { at_ms, .. }
        | Command::CreateMerchant { at_ms, .. }
        | Command::RotateMerchantKey { at_ms, .. }
        | Command::Tokenize { at_ms, .. } => Some(*at_ms),
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
}
