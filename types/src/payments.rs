//! Payments.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// Committed, the acquirer's answer not yet: retry with the same key.
    Pending,
    Authorized,
    /// Captured (in full or in part); refunds may follow.
    Captured,
    /// Every captured amount was refunded.
    Refunded,
    Declined,
    Voided,
    /// Nothing was authorised (no route took it, or the answer was reversed).
    Failed,
}

impl PaymentState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Pending => "pending",
            PaymentState::Authorized => "authorized",
            PaymentState::Captured => "captured",
            PaymentState::Refunded => "refunded",
            PaymentState::Declined => "declined",
            PaymentState::Voided => "voided",
            PaymentState::Failed => "failed",
        }
    }
}

/// An EMV 3-D Secure authentication result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ThreeDs {
    pub eci: String,
    pub authentication_value: String,
    pub ds_trans_id: String,
    pub version: String,
}

/// `POST /v1/payments`: authorise (and capture, if asked) with a token. Needs an
/// `Idempotency-Key` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "token": "tok_2C8OFXzsYXar2NgHchldST", "amount": 1500, "currency": "JPY",
    "order_id": "order-1001", "capture": false})))]
#[serde(deny_unknown_fields)]
pub struct AuthorizeIn {
    pub token: String,
    /// In minor units, 1 to 10^12.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_u64)
    )]
    pub amount: u64,
    /// ISO 4217, e.g. `JPY`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{3}$"))]
    pub currency: String,
    /// Unique per merchant: 1-64 of A-Z a-z 0-9 - _ .
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub order_id: String,
    #[serde(default)]
    pub capture: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub three_d_secure: Option<ThreeDs>,
}

/// `POST /v1/payments/{id}/capture|void|refund`: the amount (default: all of it).
/// Needs an `Idempotency-Key` header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"amount": 1000})))]
#[serde(deny_unknown_fields)]
pub struct AmountIn {
    /// In minor units, 1 to 10^12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_u64)
    )]
    pub amount: Option<u64>,
}

/// One step of a payment's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentEvent {
    pub at: u64,
    pub kind: String,
    pub amount: u64,
    pub detail: String,
}

/// A payment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub token: String,
    pub amount: u64,
    pub currency: String,
    pub state: PaymentState,
    pub authorized_amount: u64,
    pub captured_amount: u64,
    pub refunded_amount: u64,
    /// The acquirer route it went to.
    pub route: String,
    /// The id the acquirer deduplicates by.
    pub gateway_txn_id: String,
    pub created_at: u64,
    pub history: Vec<PaymentEvent>,
}

/// An order's payments (at most one).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Payments {
    pub payments: Vec<Payment>,
}

/// Totals of one state in a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateTotals {
    pub count: u64,
    pub authorized_amount: u64,
    pub captured_amount: u64,
    pub refunded_amount: u64,
}

/// The merchant's payments created in `[from, to)`, with totals per state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentReport {
    pub from: u64,
    pub to: u64,
    pub count: u64,
    /// The range held more payments than a report lists.
    pub truncated: bool,
    pub by_state: BTreeMap<String, StateTotals>,
    pub payments: Vec<Payment>,
}
