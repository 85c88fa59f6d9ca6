//! The acquirer protocol (JSON over HTTP), shared by the router and the simulator.
//!
//! - `POST /v1/authorize` [`AuthRequest`] → [`TxnStatus`]: deduplicated by `txn_id`, so
//!   sending the same id again never authorises twice.
//! - `GET /v1/transactions/{txn_id}` → [`TxnStatus`], or `404` if the id never arrived.
//! - `POST /v1/transactions/{txn_id}/reverse` → [`TxnStatus`]: cancels an approval; an id
//!   reversed before its authorisation arrives is declined when it does.
//! - `GET /health` → `200`.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// An authorisation request. Carries the card in clear over the acquirer link, as card
/// networks require; never logged.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    pub txn_id: String,
    pub merchant_id: String,
    pub pan: Zeroizing<String>,
    pub exp_month: u8,
    pub exp_year: u16,
    #[serde(default)]
    pub cvc: Option<Zeroizing<String>>,
    pub amount: u64,
    pub currency: String,
    /// EMV 3-D Secure result, passed through.
    #[serde(default)]
    pub three_d_secure: Option<serde_json::Value>,
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AuthRequest({}, {} {})",
            self.txn_id, self.amount, self.currency
        )
    }
}

/// A transaction's state at the acquirer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    Approved,
    Declined,
    Reversed,
}

/// The acquirer's view of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnStatus {
    pub txn_id: String,
    pub state: TxnState,
    #[serde(default)]
    pub auth_code: Option<String>,
    /// Why a transaction was declined (`card_declined`, `insufficient_funds`, `reversed`).
    #[serde(default)]
    pub reason: Option<String>,
}
