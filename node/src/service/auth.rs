//! Who is calling, and what they may do: merchants by their API keys (a secret key for
//! everything, a publishable key for one-time tokens only), operators by the identity
//! the admin plane authenticated (auditors read; admins change), and the break-glass
//! token's holder.

use super::error::service_error;
use super::Service;
use crate::crypto::api_key_hash;
use crate::net::tls::OperatorRole;
use crate::vault::KeyRole;

/// A merchant and which of its keys authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub merchant_id: String,
    pub role: KeyRole,
}

/// Why a caller was not authenticated or may not do this.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("send a valid key as `Authorization: Bearer <key>`")]
    Unauthenticated,
    #[error("this endpoint needs the merchant's secret key; a publishable key may only create one-time tokens")]
    SecretKeyRequired,
    /// The key could not be looked up (this node's storage failed).
    #[error(transparent)]
    Replication(#[from] super::error::Replication),
}

service_error!(AuthError {
    AuthError::Unauthenticated => ("unauthorized", Unauthenticated),
    AuthError::SecretKeyRequired => ("secret_key_required", Forbidden),
} delegate { Replication });

/// The authenticated caller of an admin operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: OperatorRole,
    /// Authenticated by the break-glass token, not a certificate.
    pub break_glass: bool,
}

/// The name a break-glass token's holder is audited under.
pub const BREAK_GLASS: &str = "break-glass";

impl Operator {
    /// How the audit trail names this caller.
    pub fn actor(&self) -> String {
        if self.break_glass {
            BREAK_GLASS.to_owned()
        } else {
            format!("operator:{}", self.name)
        }
    }

    /// The holder of the break-glass token.
    pub fn break_glass() -> Operator {
        Operator {
            name: BREAK_GLASS.to_owned(),
            role: OperatorRole::Admin,
            break_glass: true,
        }
    }
}

impl Service {
    /// The merchant whose secret or publishable key `key` is, if any.
    pub fn authenticate(&self, key: &str) -> Result<Caller, AuthError> {
        let hash = api_key_hash(key);
        self.read(|v| {
            v.key_owner(&hash).map(|o| Caller {
                merchant_id: o.merchant_id,
                role: o.role,
            })
        })?
        .ok_or(AuthError::Unauthenticated)
    }

    /// Checks a break-glass token: whether it is the configured one (never, when none is
    /// configured).
    pub fn is_break_glass(&self, token: &str) -> bool {
        let Some(expected) = &self.admin_token_sha256 else {
            return false;
        };
        crate::crypto::constant_time_eq(api_key_hash(token).as_bytes(), expected.as_bytes())
    }

    /// Whether `id` names a member of this cluster (a node forwarding for an operator).
    pub fn is_member(&self, id: crate::member::NodeId) -> bool {
        self.cluster.is_member(id)
    }

    /// Counts a failed authentication on `plane` for `reason` from `source` (an IP
    /// address), for the next summary in the audit trail.
    pub fn note_auth_failure(&self, plane: &'static str, reason: &'static str, source: &str) {
        self.auth_failures.note(plane, reason, source);
    }
}

impl Caller {
    /// The merchant, when the caller used its secret key.
    pub fn secret(self) -> Result<String, AuthError> {
        match self.role {
            KeyRole::Secret => Ok(self.merchant_id),
            KeyRole::Publishable => Err(AuthError::SecretKeyRequired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publishable_key_is_not_a_secret_key() {
        use crate::service::ServiceError;
        let c = |role| Caller {
            merchant_id: "m".into(),
            role,
        };
        assert_eq!(c(KeyRole::Secret).secret().unwrap(), "m");
        let e = c(KeyRole::Publishable).secret().unwrap_err();
        assert_eq!(e.code(), "secret_key_required");
        assert_eq!(Operator::break_glass().actor(), "break-glass");
    }
}
