//! What nodes hand each other outside Raft: best-effort copies of CVCs (sealed under the
//! cluster's key-encryption key and bound to their token id, so never in clear on the
//! wire even without TLS), security events for the leader to record, and health.

use super::Service;
use crate::vault::{Brand, Cvc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where a node sends a CVC copy, on the peer listener.
pub const CVC_PATH: &str = "/peer/v1/cvc";

/// A CVC copy on the wire.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvcCopy {
    token: String,
    /// The merchant whose share of the store the copy counts against.
    merchant_id: String,
    expires_at_ms: u64,
    /// Hex of the KEK-sealed digits.
    sealed: String,
}

/// Why a copy was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CopyRefused {
    #[error("the CVC copy does not open")]
    DoesNotOpen,
    #[error("the CVC copy is malformed")]
    Malformed,
    #[error("CVC store full")]
    StoreFull,
}

fn aad(token: &str) -> String {
    format!("kura:cvc:v1|{token}")
}

impl Service {
    /// Copies `cvc` into the other nodes' memory, waiting at most the configured
    /// replication timeout. Returns how many nodes took it.
    pub(crate) async fn replicate_cvc(
        &self,
        token: &str,
        merchant_id: &str,
        cvc: &Cvc,
        expires_at_ms: u64,
    ) -> usize {
        let sealed = match self
            .keys
            .kek()
            .seal(cvc.digits().as_bytes(), &aad(token), &self.entropy)
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot seal a CVC copy; other nodes will not hold it");
                return 0;
            }
        };
        let copy = CvcCopy {
            token: token.to_owned(),
            merchant_id: merchant_id.to_owned(),
            expires_at_ms,
            sealed: hex::encode(sealed),
        };
        let timeout = Duration::from_millis(self.settings.cvc_replication_timeout_ms);
        self.cluster.post_to_peers(CVC_PATH, &copy, timeout).await
    }

    /// Takes a CVC copy another node sent into this node's memory.
    pub fn take_cvc_copy(&self, copy: CvcCopy) -> Result<(), CopyRefused> {
        let digits = hex::decode(&copy.sealed)
            .ok()
            .and_then(|s| self.keys.kek().open(&s, &aad(&copy.token)).ok())
            .ok_or(CopyRefused::DoesNotOpen)?;
        // The brand only decides the length: accept either length here; the sender
        // checked.
        let cvc = std::str::from_utf8(&digits)
            .ok()
            .and_then(|d| {
                Cvc::parse(d, Brand::Visa)
                    .or_else(|_| Cvc::parse(d, Brand::Amex))
                    .ok()
            })
            .ok_or(CopyRefused::Malformed)?;
        self.cvc
            .put(&copy.token, &copy.merchant_id, cvc, copy.expires_at_ms)
            .map_err(|e| {
                self.metrics.cvc_not_taken(e.reason());
                CopyRefused::StoreFull
            })
    }

    /// This node's health report, as it serves it to operators and the other nodes.
    pub fn own_health(&self) -> crate::failover::NodeHealth {
        self.failover.own_report()
    }
}
