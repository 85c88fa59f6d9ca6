//! The API's wire types: what requests carry and responses show. Times are Unix
//! seconds. Requests refuse unknown fields.

use crate::cvc::CvcState;
use crate::service::merchants::WithKeys;
use crate::service::payments::{PaymentReport, StateTotals};
use crate::service::tokens::{CardInput, TokenView};
use crate::vault::payment::{Payment, PaymentState};
use crate::vault::{Brand, KeyRole, MerchantInfo, TokenFormat, TokenKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// A card in a tokenize request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardIn {
    pub number: Zeroizing<String>,
    pub exp_month: u32,
    pub exp_year: u32,
    /// One-time tokens only; held in memory, never stored.
    #[serde(default)]
    pub cvc: Option<Zeroizing<String>>,
}

impl From<CardIn> for CardInput {
    fn from(c: CardIn) -> CardInput {
        CardInput {
            number: c.number,
            exp_month: c.exp_month,
            exp_year: c.exp_year,
            cvc: c.cvc,
        }
    }
}

/// `POST /v1/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeIn {
    pub card: CardIn,
    pub kind: TokenKind,
    #[serde(default)]
    pub member_id: Option<String>,
}

/// A token as the API shows it.
#[derive(Serialize)]
pub struct TokenOut {
    pub token: String,
    pub kind: TokenKind,
    pub member_id: Option<String>,
    pub brand: Brand,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    /// When a one-time token was used (absent while unused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_at: Option<u64>,
    /// One-time tokens: whether the node holds the CVC given with the card.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cvc: Option<CvcState>,
}

impl From<TokenView> for TokenOut {
    fn from(v: TokenView) -> TokenOut {
        let m = v.meta;
        TokenOut {
            token: m.token,
            kind: m.kind,
            member_id: m.member_id,
            brand: m.brand,
            last4: m.last4,
            exp_month: m.exp_month,
            exp_year: m.exp_year,
            created_at: m.created_at_ms / 1000,
            expires_at: m.expires_at_ms.map(|t| t / 1000),
            used_at: m.used_at_ms.map(|t| t / 1000),
            cvc: v.cvc,
        }
    }
}

/// `POST /v1/members/{member_id}/cards`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterIn {
    /// A one-time token of this merchant.
    pub token: String,
}

/// A member's cards.
#[derive(Serialize)]
pub struct MemberCardsOut {
    pub member_id: String,
    pub cards: Vec<TokenOut>,
}

/// An EMV 3-D Secure result in an authorisation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreeDsIn {
    pub eci: String,
    pub authentication_value: String,
    pub ds_trans_id: String,
    pub version: String,
}

/// `POST /v1/payments`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayIn {
    pub token: String,
    pub amount: u64,
    pub currency: String,
    pub order_id: String,
    #[serde(default)]
    pub capture: bool,
    #[serde(default)]
    pub three_d_secure: Option<ThreeDsIn>,
}

/// `POST /v1/payments/{id}/capture|void|refund`: the amount (default: all of it).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AmountIn {
    #[serde(default)]
    pub amount: Option<u64>,
}

/// `GET /v1/payments?order_id=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByOrderQuery {
    pub order_id: String,
}

/// `GET /v1/reports/payments?from=&to=`: Unix seconds, `from` inclusive, `to` exclusive.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    pub from: u64,
    pub to: u64,
}

/// One step of a payment's history.
#[derive(Serialize)]
pub struct PaymentEventOut {
    pub at: u64,
    pub kind: String,
    pub amount: u64,
    pub detail: String,
}

/// A payment as the API shows it.
#[derive(Serialize)]
pub struct PaymentOut {
    pub id: String,
    pub order_id: String,
    pub token: String,
    pub amount: u64,
    pub currency: String,
    pub state: PaymentState,
    pub authorized_amount: u64,
    pub captured_amount: u64,
    pub refunded_amount: u64,
    pub route: String,
    pub gateway_txn_id: String,
    pub created_at: u64,
    pub history: Vec<PaymentEventOut>,
}

impl From<Payment> for PaymentOut {
    fn from(p: Payment) -> PaymentOut {
        PaymentOut {
            history: p
                .history
                .into_iter()
                .map(|e| PaymentEventOut {
                    at: e.at_ms / 1000,
                    kind: e.kind,
                    amount: e.amount,
                    detail: e.detail,
                })
                .collect(),
            id: p.id,
            order_id: p.order_id,
            token: p.token,
            amount: p.amount,
            currency: p.currency,
            state: p.state,
            authorized_amount: p.authorized_amount,
            captured_amount: p.captured_amount,
            refunded_amount: p.refunded_amount,
            route: p.route,
            gateway_txn_id: p.gateway_txn_id,
            created_at: p.created_at_ms / 1000,
        }
    }
}

/// An order's payments (at most one).
#[derive(Serialize)]
pub struct PaymentsOut {
    pub payments: Vec<PaymentOut>,
}

/// A reconciliation report.
#[derive(Serialize)]
pub struct ReportOut {
    pub from: u64,
    pub to: u64,
    pub count: usize,
    pub truncated: bool,
    pub by_state: BTreeMap<String, StateTotals>,
    pub payments: Vec<PaymentOut>,
}

impl ReportOut {
    pub fn new(q: &RangeQuery, r: PaymentReport) -> ReportOut {
        ReportOut {
            from: q.from,
            to: q.to,
            count: r.payments.len(),
            truncated: r.truncated,
            by_state: r.by_state,
            payments: r.payments.into_iter().map(PaymentOut::from).collect(),
        }
    }
}

/// `POST /admin/v1/merchants`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchantIn {
    pub merchant_id: String,
    pub name: String,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub token_format: TokenFormat,
    #[serde(default)]
    pub require_three_d_secure: bool,
}

/// `PATCH /admin/v1/merchants/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMerchantIn {
    pub allowed_origins: Option<Vec<String>>,
    pub token_format: Option<TokenFormat>,
    pub require_three_d_secure: Option<bool>,
}

/// `POST /admin/v1/merchants/{id}/rotate-key`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyIn {
    #[serde(default)]
    pub key: KeyRole,
}

/// A merchant as the admin API shows it; keys only when just made.
#[derive(Serialize)]
pub struct MerchantOut {
    pub merchant_id: String,
    pub name: String,
    pub created_at: u64,
    pub key_rotated_at: u64,
    pub allowed_origins: Vec<String>,
    pub token_format: TokenFormat,
    pub require_three_d_secure: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publishable_key: Option<String>,
}

impl From<MerchantInfo> for MerchantOut {
    fn from(m: MerchantInfo) -> MerchantOut {
        MerchantOut {
            merchant_id: m.merchant_id,
            name: m.name,
            created_at: m.created_at_ms / 1000,
            key_rotated_at: m.key_rotated_at_ms / 1000,
            allowed_origins: m.settings.allowed_origins,
            token_format: m.settings.token_format,
            require_three_d_secure: m.settings.require_three_d_secure,
            secret_key: None,
            publishable_key: None,
        }
    }
}

impl From<WithKeys> for MerchantOut {
    fn from(w: WithKeys) -> MerchantOut {
        MerchantOut {
            secret_key: w.secret_key,
            publishable_key: w.publishable_key,
            ..MerchantOut::from(w.merchant)
        }
    }
}

/// Every merchant.
#[derive(Serialize)]
pub struct MerchantsOut {
    pub merchants: Vec<MerchantOut>,
}

/// `POST /admin/v1/leader/transfer`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferIn {
    pub to: String,
}

/// `GET /admin/v1/audit?from_seq=&limit=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPageQuery {
    /// First sequence number to return (default 0).
    #[serde(default)]
    pub from_seq: u64,
    /// Records per page (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `POST /admin/v1/audit/verify`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditVerifyIn {
    /// A head exported earlier: the chain must still hold it.
    #[serde(default)]
    pub signed_head: Option<crate::vault::audit::SignedHead>,
}
