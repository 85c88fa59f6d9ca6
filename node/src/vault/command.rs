//! Commands replicated through the Raft log and the responses `apply` returns.
//!
//! Everything nondeterministic — time, ids, ciphertext — is decided by the leader and
//! carried inside the command, so every node's `apply` reaches the same result.

use super::card::Brand;
use super::leader_change::LeaderChangeCause;
use super::payment::{AuthOutcome, Payment, PaymentRefusal};
use super::token::{TokenFormat, TokenKind};
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
    #[serde(with = "super::hex_bytes")]
    pub nonce: Vec<u8>,
    /// Ciphertext and tag of the PAN digits; associated data binds merchant, token and key version.
    #[serde(with = "super::hex_bytes")]
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

/// Which of a merchant's two API keys a request used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Server-side key: every merchant operation.
    #[default]
    Secret,
    /// Browser-safe key: may only create one-time tokens.
    Publishable,
}

impl KeyRole {
    /// `secret` or `publishable`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Secret => "secret",
            KeyRole::Publishable => "publishable",
        }
    }
}

/// A merchant's settings, chosen by the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MerchantSettings {
    /// Browser origins (`https://shop.example`) allowed to tokenize with the publishable key.
    pub allowed_origins: Vec<String>,
    /// How this merchant's new tokens look.
    pub token_format: TokenFormat,
    /// Refuse authorisations without an EMV 3-D Secure result.
    pub require_three_d_secure: bool,
}

/// A merchant's change to an open payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum PaymentChange {
    Capture { amount: u64 },
    Void,
    Refund { amount: u64 },
}

/// One card moved to another data key by the background re-wrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reseal {
    pub token: String,
    /// The version the leader opened; `apply` skips the card if it has changed since.
    pub from_version: u32,
    #[serde(with = "super::hex_bytes")]
    pub nonce: Vec<u8>,
    #[serde(with = "super::hex_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A key re-wrapped under a new KEK: which version (0 for the fingerprint key), the
/// KEK it was under, and its new wrapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrappedKey {
    pub version: u32,
    pub from_kek_id: Option<String>,
    #[serde(with = "super::hex_bytes")]
    pub wrapped: Vec<u8>,
}

/// The highest command level this build applies (see [`Command::level`]). A build that
/// adds a command, or changes how one is encoded or applied, gives it the next level and
/// raises this: the leader proposes a command only once every voter reports a level at
/// least as high, so that a cluster upgraded one node at a time never replicates an
/// entry that a member still running the older build cannot apply (decision 0036).
/// - 1: every command up to the comparison marker.
/// - 2: [`Command::CompareVaults`] (decision 0032).
pub const COMMAND_LEVEL: u32 = 2;

/// A state change proposed by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Adds data key `version`, wrapped by the key-encryption key, and makes it current.
    /// Versions only grow: an existing or older version is refused.
    InstallDataKey {
        version: u32,
        #[serde(with = "super::hex_bytes")]
        wrapped: Vec<u8>,
        /// The KEK that wrapped it (absent in entries from before KEK ids).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kek_id: Option<String>,
        at_ms: u64,
        /// True when an operator rotated keys (false: the first key, made on first use).
        #[serde(default)]
        by_admin: bool,
        /// Who asked: `operator:<name>` or `break-glass` (absent in entries from before
        /// named operators; audited as `admin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Creates a merchant with the hashes of its secret and publishable keys.
    CreateMerchant {
        merchant_id: String,
        name: String,
        secret_key_sha256: String,
        publishable_key_sha256: String,
        settings: MerchantSettings,
        at_ms: u64,
        /// Who asked: `operator:<name>` or `break-glass` (absent in entries from before
        /// named operators; audited as `admin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Replaces one of a merchant's key hashes; the old key stops working at once.
    RotateMerchantKey {
        merchant_id: String,
        role: KeyRole,
        key_sha256: String,
        at_ms: u64,
        /// Who asked: `operator:<name>` or `break-glass` (absent in entries from before
        /// named operators; audited as `admin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Replaces a merchant's settings.
    UpdateMerchant {
        merchant_id: String,
        settings: MerchantSettings,
        at_ms: u64,
        /// Who asked: `operator:<name>` or `break-glass` (absent in entries from before
        /// named operators; audited as `admin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
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
        fingerprint: Option<String>,
        /// The key the merchant used (for the audit trail).
        key_role: KeyRole,
        /// A CVC was given with the card; it is held in memory only, never here.
        cvc_supplied: bool,
    },
    /// Installs the fingerprint key, wrapped by the key-encryption key. Set once.
    InstallFingerprintKey {
        #[serde(with = "super::hex_bytes")]
        wrapped: Vec<u8>,
        /// The KEK that wrapped it (absent in entries from before KEK ids).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kek_id: Option<String>,
        at_ms: u64,
    },
    /// Re-wraps data keys (and the fingerprint key) under the KEK `kek_id` (a KEK
    /// rotation). Refused whole if any key is no longer wrapped as the leader read it.
    RewrapKeys {
        kek_id: String,
        keys: Vec<RewrappedKey>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<RewrappedKey>,
        at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
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
    /// Moves cards to data key `to_version` (the background re-wrap); cards changed or
    /// deleted since the leader read them are skipped.
    ResealCards {
        to_version: u32,
        cards: Vec<Reseal>,
        at_ms: u64,
    },
    /// Destroys an old data key's wrapped bytes once no card uses it.
    RetireDataKey {
        version: u32,
        at_ms: u64,
        /// Who asked: `operator:<name>` or `break-glass` (absent in entries from before
        /// named operators; audited as `admin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Written by a new leader at the start of its term: who leads, and why leadership
    /// changed, so every node logs and counts the change with the same cause.
    RecordLeaderChange {
        leader_node: u64,
        leader_name: String,
        term: u64,
        cause: LeaderChangeCause,
        at_ms: u64,
    },
    /// Marks a node drained (it gives up leadership, reports not ready and does not stand
    /// for election) or undrained.
    SetDrained {
        node: String,
        drained: bool,
        at_ms: u64,
        /// Who asked: `operator:<name>` or `break-glass` (absent in entries from before
        /// named operators; audited as `admin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Opens a payment before the acquirer is called (the intent). A one-time token is
    /// consumed here, atomically; `order_id` must be new for the merchant.
    OpenPayment {
        payment_id: String,
        merchant_id: String,
        order_id: String,
        token: String,
        amount: u64,
        currency: String,
        capture: bool,
        gateway_txn_id: String,
        route: String,
        /// The request's idempotency key and body hash.
        idempotency: Option<Idempotency>,
        at_ms: u64,
    },
    /// Moves a pending payment to another route, after the first one settled that the
    /// acquirer there never authorised it.
    ReroutePayment {
        payment_id: String,
        route: String,
        at_ms: u64,
    },
    /// Records the acquirer's answer to a pending payment.
    SettlePayment {
        payment_id: String,
        outcome: AuthOutcome,
        at_ms: u64,
    },
    /// Captures, voids or refunds a payment of `merchant_id`.
    ChangePayment {
        merchant_id: String,
        payment_id: String,
        change: PaymentChange,
        idempotency: Option<Idempotency>,
        at_ms: u64,
    },
    /// Records a signature of the audit trail's head (the first `signed.records`
    /// records). Refused if the trail has grown since the leader read it.
    SignAuditHead {
        signed: super::audit::SignedHead,
        at_ms: u64,
    },
    /// Destroys the sealed cards of these one-time tokens if they are spent (used or
    /// expired at `at_ms`); their metadata and audit records stay. The background
    /// purge proposes it in bounded batches.
    PurgeCards { tokens: Vec<String>, at_ms: u64 },
    /// Records an admin action that changes no vault state.
    RecordAdminAction {
        action: String,
        detail: String,
        at_ms: u64,
        /// Who asked: `operator:<name>` or `break-glass` (absent in entries from before
        /// named operators; audited as `admin`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// Marks the point in the log at which every member hashes its whole vault, to
    /// compare them (`kura compare`). Changes nothing but the audit trail.
    CompareVaults {
        /// The comparison's id, chosen by whoever started it.
        check: u64,
        at_ms: u64,
        /// `operator:<name>`, or absent when the leader's schedule started it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
}

impl Command {
    /// The leader-stamped time of the command.
    pub fn at_ms(&self) -> u64 {
        match self {
            Command::InstallDataKey { at_ms, .. }
            | Command::CreateMerchant { at_ms, .. }
            | Command::RotateMerchantKey { at_ms, .. }
            | Command::UpdateMerchant { at_ms, .. }
            | Command::Tokenize { at_ms, .. }
            | Command::InstallFingerprintKey { at_ms, .. }
            | Command::RewrapKeys { at_ms, .. }
            | Command::SignAuditHead { at_ms, .. }
            | Command::PurgeCards { at_ms, .. }
            | Command::UseOneTimeForCard { at_ms, .. }
            | Command::DeleteCard { at_ms, .. }
            | Command::ResealCards { at_ms, .. }
            | Command::RetireDataKey { at_ms, .. }
            | Command::RecordLeaderChange { at_ms, .. }
            | Command::SetDrained { at_ms, .. }
            | Command::OpenPayment { at_ms, .. }
            | Command::SettlePayment { at_ms, .. }
            | Command::ReroutePayment { at_ms, .. }
            | Command::ChangePayment { at_ms, .. }
            | Command::RecordAdminAction { at_ms, .. }
            | Command::CompareVaults { at_ms, .. } => *at_ms,
        }
    }

    /// Whether the command starts something new that the vault keeps — a card, a
    /// payment — rather than changing, completing or removing what it holds. A leader
    /// short of disk refuses these and still takes the rest, so that payments already
    /// open complete and leadership, keys and deletions keep working.
    pub fn starts_new(&self) -> bool {
        match self {
            Command::Tokenize { .. }
            | Command::UseOneTimeForCard { .. }
            | Command::OpenPayment { .. } => true,
            Command::InstallDataKey { .. }
            | Command::CreateMerchant { .. }
            | Command::RotateMerchantKey { .. }
            | Command::UpdateMerchant { .. }
            | Command::InstallFingerprintKey { .. }
            | Command::RewrapKeys { .. }
            | Command::SignAuditHead { .. }
            | Command::PurgeCards { .. }
            | Command::DeleteCard { .. }
            | Command::ResealCards { .. }
            | Command::RetireDataKey { .. }
            | Command::RecordLeaderChange { .. }
            | Command::SetDrained { .. }
            | Command::SettlePayment { .. }
            | Command::ReroutePayment { .. }
            | Command::ChangePayment { .. }
            | Command::RecordAdminAction { .. }
            | Command::CompareVaults { .. } => false,
        }
    }

    /// The lowest command level (see [`COMMAND_LEVEL`]) a build must have to apply this
    /// command: the leader proposes it only when every voter has that level.
    pub fn level(&self) -> u32 {
        // Every command named, so that a new one cannot take a level by default.
        match self {
            Command::InstallDataKey { .. }
            | Command::CreateMerchant { .. }
            | Command::RotateMerchantKey { .. }
            | Command::UpdateMerchant { .. }
            | Command::InstallFingerprintKey { .. }
            | Command::RewrapKeys { .. }
            | Command::SignAuditHead { .. }
            | Command::PurgeCards { .. }
            | Command::Tokenize { .. }
            | Command::UseOneTimeForCard { .. }
            | Command::OpenPayment { .. }
            | Command::DeleteCard { .. }
            | Command::ResealCards { .. }
            | Command::RetireDataKey { .. }
            | Command::RecordLeaderChange { .. }
            | Command::SetDrained { .. }
            | Command::SettlePayment { .. }
            | Command::ReroutePayment { .. }
            | Command::ChangePayment { .. }
            | Command::RecordAdminAction { .. } => 1,
            Command::CompareVaults { .. } => 2,
        }
    }

    /// A short name of the action, as the audit trail records it.
    pub fn action(&self) -> &'static str {
        match self {
            Command::InstallDataKey { .. } => "data_key.install",
            Command::CreateMerchant { .. } => "merchant.create",
            Command::RotateMerchantKey { .. } => "merchant.rotate_key",
            Command::UpdateMerchant { .. } => "merchant.update",
            Command::Tokenize { .. } => "token.create",
            Command::InstallFingerprintKey { .. } => "fingerprint_key.install",
            Command::RewrapKeys { .. } => "kek.rotate",
            Command::SignAuditHead { .. } => super::audit::SIGN_ACTION,
            Command::PurgeCards { .. } => "token.purge_card",
            Command::UseOneTimeForCard { .. } => "token.use_for_card_on_file",
            Command::DeleteCard { .. } => "card_on_file.delete",
            Command::ResealCards { .. } => "data_key.rewrap",
            Command::RetireDataKey { .. } => "data_key.retire",
            Command::RecordLeaderChange { .. } => "leader.change",
            Command::SetDrained { drained: true, .. } => "node.drain",
            Command::SetDrained { drained: false, .. } => "node.undrain",
            Command::OpenPayment { .. } => "payment.open",
            Command::SettlePayment { .. } => "payment.settle",
            Command::ReroutePayment { .. } => "payment.reroute",

            Command::ChangePayment {
                change: PaymentChange::Capture { .. },
                ..
            } => "payment.capture",
            Command::ChangePayment {
                change: PaymentChange::Void,
                ..
            } => "payment.void",
            Command::ChangePayment {
                change: PaymentChange::Refund { .. },
                ..
            } => "payment.refund",
            Command::RecordAdminAction { .. } => "admin.action",
            Command::CompareVaults { .. } => "vault.compare",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::InstallDataKey { version, .. } => write!(f, "install_data_key(v{version})"),
            Command::CreateMerchant { merchant_id, .. }
            | Command::RotateMerchantKey { merchant_id, .. }
            | Command::UpdateMerchant { merchant_id, .. } => {
                write!(f, "{}({merchant_id})", self.action())
            }
            Command::Tokenize {
                merchant_id, token, ..
            } => write!(f, "tokenize({merchant_id}, {token})"),
            Command::InstallFingerprintKey { .. } => write!(f, "install_fingerprint_key"),
            Command::PurgeCards { tokens, .. } => write!(f, "purge_cards({})", tokens.len()),
            Command::SignAuditHead { signed, .. } => {
                write!(f, "sign_audit_head({})", signed.records)
            }
            Command::RewrapKeys { kek_id, keys, .. } => {
                write!(f, "rewrap_keys({} under {kek_id})", keys.len())
            }
            Command::UseOneTimeForCard {
                merchant_id,
                one_time_token,
                ..
            } => write!(f, "use_one_time_for_card({merchant_id}, {one_time_token})"),
            Command::DeleteCard {
                merchant_id, token, ..
            } => write!(f, "delete_card({merchant_id}, {token})"),
            Command::ResealCards {
                to_version, cards, ..
            } => write!(f, "reseal_cards({} to v{to_version})", cards.len()),
            Command::RetireDataKey { version, .. } => write!(f, "retire_data_key(v{version})"),
            Command::RecordLeaderChange {
                leader_name,
                term,
                cause,
                ..
            } => write!(f, "leader_change({leader_name}, term {term}, {cause})"),
            Command::SetDrained { node, drained, .. } => {
                write!(f, "set_drained({node}, {drained})")
            }
            Command::OpenPayment { payment_id, .. }
            | Command::ReroutePayment { payment_id, .. }
            | Command::SettlePayment { payment_id, .. }
            | Command::ChangePayment { payment_id, .. } => {
                write!(f, "{}({payment_id})", self.action())
            }
            Command::RecordAdminAction { action, .. } => write!(f, "admin_action({action})"),
            Command::CompareVaults { check, .. } => write!(f, "compare_vaults({check:016x})"),
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
    pub used_at_ms: Option<u64>,
    /// A CVC was given when the token was created (kept in memory only).
    pub cvc_supplied: bool,
}

/// A merchant as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantInfo {
    pub merchant_id: String,
    pub name: String,
    pub created_at_ms: u64,
    pub key_rotated_at_ms: u64,
    pub settings: MerchantSettings,
}

/// Why `apply` refused a command. Refusals are deterministic, so every node refuses alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    DataKeyExists {
        version: u32,
    },
    FingerprintKeyExists,
    MerchantExists,
    UnknownMerchant,
    TokenIdTaken,
    TokenNotFound,
    TokenAlreadyUsed,
    TokenExpired,
    UnknownDataKey,
    DataKeyCurrent,
    DataKeyInUse {
        cards: u64,
    },
    /// A key is no longer wrapped as the leader read it (another KEK rotation won).
    KeyRewrapped,
    /// The audit trail grew after the leader read the head it signed.
    AuditMoved,
    OrderIdTaken,
    PaymentIdTaken,
    PaymentNotFound,
    Payment(PaymentRefusal),
    /// The idempotency key is taken; the record tells the caller what to do.
    IdempotencyKeyTaken(Box<IdempotencyRecord>),
}

/// A request's idempotency key and the hash of its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    pub key: String,
    pub body_sha256: String,
}

/// What a keyed request came to, kept to answer its retries the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredOutcome {
    /// The payment as the request left it (for an authorisation: as settled, or still
    /// pending while the acquirer's answer is not recorded).
    Payment(Box<Payment>),
    /// The vault refused the request with this code.
    Refused(String),
}

/// What the vault remembers of an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub body_sha256: String,
    /// The operation the key was used for (`payment.open`, `payment.capture`, ...).
    pub action: String,
    pub payment_id: Option<String>,
    pub outcome: StoredOutcome,
    pub created_at_ms: u64,
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
            Refusal::UnknownDataKey => "data_key_not_found",
            Refusal::DataKeyCurrent => "data_key_current",
            Refusal::DataKeyInUse { .. } => "data_key_in_use",
            Refusal::KeyRewrapped => "key_rewrapped",
            Refusal::AuditMoved => "audit_moved",
            Refusal::OrderIdTaken => "order_id_taken",
            Refusal::PaymentIdTaken => "payment_id_taken",
            Refusal::PaymentNotFound => "payment_not_found",
            Refusal::Payment(r) => r.code(),
            Refusal::IdempotencyKeyTaken(_) => "idempotency_key_taken",
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
    /// Cards moved to a new data key; `skipped` had changed since the leader read them.
    Resealed {
        moved: u64,
        skipped: u64,
    },
    DataKeyRetired {
        version: u32,
    },
    /// Keys re-wrapped under a new KEK.
    KeysRewrapped {
        keys: usize,
    },
    /// Sealed cards destroyed; `skipped` were no longer spent-with-a-card.
    Purged {
        purged: u64,
        skipped: u64,
    },
    Recorded,
    Payment(Box<Payment>),
    Refused(Refusal),
}

impl Response {
    /// `ok`, or the refusal's code: the outcome the audit trail records.
    pub fn outcome(&self) -> &'static str {
        match self {
            Response::Refused(r) => r.code(),
            Response::AlreadyOnFile(_) => "already_on_file",
            _ => "ok",
        }
    }
}
