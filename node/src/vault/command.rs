//! Commands replicated through the Raft log and the responses `apply` returns.
//!
//! Everything nondeterministic — time, ids, ciphertext — is decided by the leader and
//! carried inside the command, so every node's `apply` reaches the same result.

use super::card::Brand;
use super::token::TokenKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A card as the vault stores it: the PAN only as AES-256-GCM ciphertext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCard {
    pub brand: Brand,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    /// Version of the data key that sealed the PAN.
    pub key_version: u32,
    /// 96-bit GCM nonce drawn by the leader.
    pub nonce: Vec<u8>,
    /// Ciphertext and tag of the PAN digits; associated data binds merchant, token and key version.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedCard({:?} ****{} k{})",
            self.brand, self.last4, self.key_version
        )
    }
}

/// A state change proposed by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Adds a data key, wrapped by the key-encryption key, and makes it the active one.
    InstallDataKey {
        version: u32,
        wrapped: Vec<u8>,
        at_ms: u64,
    },
    /// Creates a merchant with the hash of its secret key.
    CreateMerchant {
        merchant_id: String,
        name: String,
        secret_key_sha256: String,
        at_ms: u64,
    },
    /// Replaces a merchant's secret key hash; the old key stops working at once.
    RotateMerchantKey {
        merchant_id: String,
        secret_key_sha256: String,
        at_ms: u64,
    },
    /// Stores a sealed card under a new token.
    Tokenize {
        merchant_id: String,
        token: String,
        kind: TokenKind,
        member_id: Option<String>,
        card: SealedCard,
        at_ms: u64,
        expires_at_ms: Option<u64>,
        /// Keyed HMAC of merchant and PAN; set for card-on-file tokens, so the same card
        /// registered again for the same member finds its existing token.
        #[serde(default)]
        fingerprint: Option<String>,
    },
    /// Installs the fingerprint key, wrapped by the key-encryption key. Set once.
    InstallFingerprintKey { wrapped: Vec<u8>, at_ms: u64 },
    /// Uses a one-time token, exactly once: converts its card into a card-on-file token
    /// for `member_id` (or finds the one already on file). The card was re-sealed by the
    /// leader for `new_token`; `apply` refuses a used, expired or foreign token.
    UseOneTimeForCard {
        merchant_id: String,
        one_time_token: String,
        member_id: String,
        new_token: String,
        card: SealedCard,
        fingerprint: String,
        at_ms: u64,
    },
    /// Deletes a member's card-on-file token for good.
    DeleteCard {
        merchant_id: String,
        member_id: String,
        token: String,
        at_ms: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::InstallDataKey { version, .. } => write!(f, "install_data_key(v{version})"),
            Command::CreateMerchant { merchant_id, .. } => {
                write!(f, "create_merchant({merchant_id})")
            }
            Command::RotateMerchantKey { merchant_id, .. } => {
                write!(f, "rotate_merchant_key({merchant_id})")
            }
            Command::Tokenize {
                merchant_id, token, ..
            } => write!(f, "tokenize({merchant_id}, {token})"),
            Command::InstallFingerprintKey { .. } => write!(f, "install_fingerprint_key"),
            Command::UseOneTimeForCard {
                merchant_id,
                one_time_token,
                ..
            } => write!(f, "use_one_time_for_card({merchant_id}, {one_time_token})"),
            Command::DeleteCard {
                merchant_id, token, ..
            } => write!(f, "delete_card({merchant_id}, {token})"),
        }
    }
}

/// What a merchant sees of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenMeta {
    pub token: String,
    pub kind: TokenKind,
    pub member_id: Option<String>,
    pub brand: Brand,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// When a one-time token was used (it can never be used again).
    #[serde(default)]
    pub used_at_ms: Option<u64>,
}

/// A merchant as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantInfo {
    pub merchant_id: String,
    pub name: String,
    pub created_at_ms: u64,
    pub key_rotated_at_ms: u64,
}

/// Why `apply` refused a command. Refusals are deterministic, so every node refuses alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    DataKeyExists { version: u32 },
    FingerprintKeyExists,
    MerchantExists,
    UnknownMerchant,
    TokenIdTaken,
    TokenNotFound,
    TokenAlreadyUsed,
    TokenExpired,
}

impl Refusal {
    /// Stable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::DataKeyExists { .. } => "data_key_exists",
            Refusal::MerchantExists => "merchant_exists",
            Refusal::UnknownMerchant => "merchant_not_found",
            Refusal::TokenIdTaken => "token_id_taken",
            Refusal::FingerprintKeyExists => "fingerprint_key_exists",
            Refusal::TokenNotFound => "token_not_found",
            Refusal::TokenAlreadyUsed => "token_already_used",
            Refusal::TokenExpired => "token_expired",
        }
    }
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// A blank or membership entry: nothing for a client.
    None,
    DataKeyInstalled {
        version: u32,
    },
    Merchant(MerchantInfo),
    Tokenized(TokenMeta),
    /// The card was already on file for this member: its existing token, unchanged.
    AlreadyOnFile(TokenMeta),
    FingerprintKeyInstalled,
    CardDeleted,
    Refused(Refusal),
}
