//! The admin plane: merchants, keys and the audit trail.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The shape of a merchant's new token ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    /// `tok_` and 22 base62 characters: the time the token was drawn (so ids sort by
    /// it) and 80 random bits.
    #[default]
    Opaque,
    /// As long as the card number, keeps its last four digits, always fails Luhn.
    Numeric,
}

/// Which of a merchant's keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Server-side key: every merchant operation.
    #[default]
    Secret,
    /// Public key: one-time tokens only (from a browser or terminal).
    Publishable,
}

/// A browser origin a merchant allows, as the description states it: `https://` and a
/// host name or IPv4 address, or `http://localhost` or `http://127.0.0.1`, then an
/// optional port; at most 200 characters. On the wire it is a plain string; this type
/// only carries its schema.
#[cfg(feature = "openapi")]
pub struct AllowedOrigin;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for AllowedOrigin {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(
                r"^(https://[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*|http://(localhost|127\.0\.0\.1))(:[0-9]{1,5})?$",
            ))
            .max_length(Some(200))
            .examples(["https://shop.example"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for AllowedOrigin {}

/// `POST /admin/v1/merchants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "merchant_id": "shop-1", "name": "Shop One",
    "allowed_origins": ["https://shop.example"]})))]
#[serde(deny_unknown_fields)]
pub struct CreateMerchantIn {
    /// 1-64 of A-Z a-z 0-9 - _
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub merchant_id: String,
    /// 1-200 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: String,
    /// Browser origins allowed to use the publishable key: `https://host[:port]`
    /// (`http://` only for localhost), at most 20.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<AllowedOrigin>, max_items = 20))]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub token_format: TokenFormat,
    #[serde(default)]
    pub require_three_d_secure: bool,
}

/// `PATCH /admin/v1/merchants/{id}`: what to change (absent fields stay).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"token_format": "numeric"})))]
#[serde(deny_unknown_fields)]
pub struct UpdateMerchantIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<AllowedOrigin>>, max_items = 20))]
    pub allowed_origins: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_format: Option<TokenFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_three_d_secure: Option<bool>,
}

/// `POST /admin/v1/merchants/{id}/rotate-key` (default: the secret key).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"key": "publishable"})))]
#[serde(deny_unknown_fields)]
pub struct RotateKeyIn {
    #[serde(default)]
    pub key: KeyRole,
}

/// A merchant; its keys only when just made (stored as hashes, shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Merchant {
    pub merchant_id: String,
    pub name: String,
    pub created_at: u64,
    pub key_rotated_at: u64,
    pub allowed_origins: Vec<String>,
    pub token_format: TokenFormat,
    pub require_three_d_secure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publishable_key: Option<String>,
}

/// Every merchant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Merchants {
    pub merchants: Vec<Merchant>,
}

/// One data key version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyVersion {
    pub version: u32,
    /// `current`, `active` (still decrypts cards) or `retired`.
    pub state: String,
    pub installed_at: u64,
    pub retired_at: Option<u64>,
    /// Cards sealed under this version.
    pub cards: u64,
    /// The KEK it is wrapped under.
    pub kek_id: Option<String>,
}

/// The background re-wrap's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RewrapProgress {
    pub pending_cards: u64,
    pub done: bool,
}

/// The key-encryption keys and the rotation's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KekStatus {
    pub current: String,
    pub held: Vec<String>,
    pub keys_under_other_keks: u64,
    pub rotation_done: bool,
}

/// Every data key version, its state and card count, and the re-wraps' progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyStatus {
    pub provider: String,
    pub current_version: Option<u32>,
    pub versions: Vec<KeyVersion>,
    pub rewrap: RewrapProgress,
    pub kek: KekStatus,
}

/// What opening every stored card found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyVerification {
    pub cards_checked: u64,
    pub cards_by_version: BTreeMap<String, u64>,
    pub failures: u64,
    pub first_failure: Option<String>,
}

/// One record of the hash-chained audit trail. Never card data or keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: u64,
    /// `operator:<name>`, `break-glass`, `system`, `node:<name>` or
    /// `merchant:<id>:<secret|publishable>`.
    pub actor: String,
    pub merchant_id: Option<String>,
    pub action: String,
    pub token: Option<String>,
    /// `ok`, or the refusal's code.
    pub outcome: String,
    pub detail: String,
    pub hash: String,
}

/// A page of the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    pub next_from_seq: Option<u64>,
    pub total: u64,
    pub head_hash: String,
}

/// The audit trail's head, signed under a KEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    pub records: u64,
    pub head: String,
    pub kek_id: String,
    pub mac: String,
}

/// The head signed now, to keep outside the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedHeadNow {
    pub signed_head: SignedHead,
    pub signed_at_ms: u64,
}

/// `POST /admin/v1/audit/verify`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditVerifyIn {
    /// A head exported earlier: the chain must still hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_head: Option<SignedHead>,
}

/// The signatures found in a chain and what they prove.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignatureReport {
    pub verified: u64,
    /// Under a KEK no longer held: neither proven nor refuted.
    pub unverifiable: u64,
    /// Signature records that do not verify: the trail was tampered with.
    pub invalid: Vec<u64>,
    pub signed_through_records: u64,
    pub last_signed_at_ms: Option<u64>,
    pub unsigned_tail_records: u64,
    pub unsigned_since_ms: Option<u64>,
}

/// How an exported head checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedHeadCheck {
    pub records: u64,
    /// `valid`, `invalid` or `unknownkek`.
    pub mac: String,
    pub in_chain: bool,
    pub ok: bool,
}

/// What verifying the audit trail found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditVerification {
    pub ok: bool,
    /// The chain breaks here (then nothing else is checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_broken_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why it is not ok, when the chain holds.
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<SignatureReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_head: Option<ExportedHeadCheck>,
}

/// Where a node's vault scrub stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScrubState {
    /// None has run since the node started.
    Never,
    Running,
    /// Every invariant held.
    Passed,
    /// An invariant is broken (`violation` names it), or the vault could not be read.
    Failed,
}

/// `GET`/`POST /admin/v1/scrub`: the full check of this node's vault — every index
/// both ways, every count, every payment's state, the audit chain — read from one
/// consistent view of its storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "node": "main", "state": "passed", "started_at_ms": 1764633600000_u64,
    "finished_at_ms": 1764633604200_u64, "applied_index": 120443})))]
pub struct Scrub {
    /// The node whose vault this is.
    pub node: String,
    pub state: ScrubState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The log index the checked view had applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// The first broken invariant, when `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<String>,
}

/// How a comparison of the members' vaults came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CompareState {
    /// None has run on this node since it started.
    Never,
    Running,
    /// Every member hashed its vault at the marker, and every hash is the same.
    Agreed,
    /// At least one member's vault differs from the rest (`differs` marks it).
    Differed,
    /// The hashes that came agree, but not every member's came (`detail` says why).
    Incomplete,
}

/// What one member answered in a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MemberDigestState {
    /// Its vault is hashed at the marker.
    Hashed,
    /// It has not applied the marker yet, or is hashing.
    Pending,
    /// It has applied past the marker without hashing there: it installed a snapshot
    /// beyond it, restarted after it, or more newer markers came than it keeps waiting.
    Missed,
    /// Its vault could not be read to hash (its storage failed).
    Unreadable,
    /// It did not answer.
    Unreachable,
}

/// One member's part in a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberDigest {
    pub node_id: u64,
    pub name: String,
    pub state: MemberDigestState,
    /// SHA-256 over every table's rows in order, when hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Rows hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// How long the member took to hash its vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// True when its hash is not the one most members have.
    #[serde(default)]
    pub differs: bool,
    /// Why it did not hash its vault, when it says (`unreadable`: a read that failed,
    /// or a hash it gave up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET`/`POST /admin/v1/compare`: a comparison of the members' vaults. A marker entry
/// goes through the log; every member hashes its whole vault as it stands just after
/// applying it, so equal vaults give equal hashes whatever each node's timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "check": "5f0c1e2d3a4b6978", "state": "agreed", "started_at_ms": 1764633600000_u64,
    "finished_at_ms": 1764633604200_u64, "index": 120443, "members": [
        {"node_id": 1, "name": "main", "state": "hashed", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "rows": 1204, "seconds": 0.012, "differs": false}
    ]})))]
pub struct Compare {
    /// The comparison's id (hex), as the audit trail records its marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    pub state: CompareState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The marker's log index: every hash is of the vault just after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(default)]
    pub members: Vec<MemberDigest>,
    /// Why a comparison is incomplete, or which members differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
