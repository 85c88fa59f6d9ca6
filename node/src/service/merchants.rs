//! Merchants: create one (its secret and publishable keys are shown once), read, list,
//! change its settings, and rotate a key (the old one stops working at once).

use super::audit::RecordError;
use super::auth::Operator;
use super::error::{service_error, Replication};
use super::{unexpected, Service};
use crate::crypto::api_key_hash;
use crate::vault::token::base62_u128;
use crate::vault::{
    Command, KeyRole, MerchantInfo, MerchantSettings, Refusal, Response, TokenFormat,
};

/// Longest merchant id accepted.
pub const MERCHANT_ID_CHARS_MAX: usize = 64;
/// Longest merchant name accepted.
pub const MERCHANT_NAME_CHARS_MAX: usize = 200;
/// Most browser origins a merchant may allow.
pub const ALLOWED_ORIGINS_MAX: usize = 20;
/// Longest origin accepted.
pub const ORIGIN_CHARS_MAX: usize = 200;

/// A merchant to create.
#[derive(Debug, Clone)]
pub struct NewMerchant {
    pub merchant_id: String,
    pub name: String,
    pub allowed_origins: Vec<String>,
    pub token_format: TokenFormat,
    pub require_three_d_secure: bool,
}

/// Settings to change (absent ones stay).
#[derive(Debug, Clone, Default)]
pub struct MerchantUpdate {
    pub allowed_origins: Option<Vec<String>>,
    pub token_format: Option<TokenFormat>,
    pub require_three_d_secure: Option<bool>,
}

/// A merchant with keys made just now, shown once.
#[derive(Debug, Clone)]
pub struct WithKeys {
    pub merchant: MerchantInfo,
    pub secret_key: Option<String>,
    pub publishable_key: Option<String>,
}

/// A merchant id of the wrong shape.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("merchant_id must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'")]
pub struct MerchantIdInvalid;

service_error!(MerchantIdInvalid {
    MerchantIdInvalid => ("merchant_id_invalid", Invalid),
} delegate {});

/// Browser origins a merchant may not allow.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct OriginInvalid(String);

service_error!(OriginInvalid {
    OriginInvalid(_) => ("allowed_origin_invalid", Invalid),
} delegate {});

/// Why a merchant was not created.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CreateMerchantError {
    #[error(transparent)]
    Id(#[from] MerchantIdInvalid),
    #[error("name must be 1-200 characters")]
    NameInvalid,
    #[error(transparent)]
    Origin(#[from] OriginInvalid),
    #[error("a merchant with this id exists; rotate its keys instead")]
    Exists,
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(CreateMerchantError {
    CreateMerchantError::NameInvalid => ("merchant_name_invalid", Invalid),
    CreateMerchantError::Exists => ("merchant_exists", Conflict),
    CreateMerchantError::Internal(_) => ("internal", Internal),
} delegate { Id, Origin, Replication });

/// Why a merchant's key was not rotated, or its settings not changed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeMerchantError {
    #[error(transparent)]
    Id(#[from] MerchantIdInvalid),
    #[error(transparent)]
    Origin(#[from] OriginInvalid),
    #[error("no merchant with this id")]
    NotFound,
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(ChangeMerchantError {
    ChangeMerchantError::NotFound => ("merchant_not_found", NotFound),
    ChangeMerchantError::Internal(_) => ("internal", Internal),
} delegate { Id, Origin, Replication });

/// Why merchants could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReadMerchantError {
    #[error(transparent)]
    Id(#[from] MerchantIdInvalid),
    #[error("no merchant with this id")]
    NotFound,
    #[error(transparent)]
    Audit(#[from] RecordError),
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(ReadMerchantError {
    ReadMerchantError::NotFound => ("merchant_not_found", NotFound),
} delegate { Id, Audit, Replication });

/// Checks a merchant id's shape.
pub fn check_merchant_id(id: &str) -> Result<(), MerchantIdInvalid> {
    let ok = !id.is_empty()
        && id.len() <= MERCHANT_ID_CHARS_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    ok.then_some(()).ok_or(MerchantIdInvalid)
}

/// An origin is `https://host[:port]`, or `http://` for localhost and 127.0.0.1 (local
/// development), with no path, as browsers send it.
fn check_origins(origins: &[String]) -> Result<(), OriginInvalid> {
    if origins.len() > ALLOWED_ORIGINS_MAX {
        return Err(OriginInvalid(format!(
            "at most {ALLOWED_ORIGINS_MAX} allowed_origins per merchant"
        )));
    }
    if !origins.iter().all(|o| origin_ok(o)) {
        return Err(OriginInvalid(
            "each allowed origin must look like https://shop.example or https://shop.example:8443 (http:// only for localhost or 127.0.0.1), without a path".into(),
        ));
    }
    Ok(())
}

/// The rule the API's description states as `AllowedOrigin`'s pattern: `https://` and
/// a host name or IPv4 address (dot-separated labels of 1-63 letters, digits and `-`),
/// or `http://localhost` or `http://127.0.0.1`; then an optional port of 1-5 digits;
/// at most [`ORIGIN_CHARS_MAX`] in all.
fn origin_ok(origin: &str) -> bool {
    let (host_port, local_only) = match origin.strip_prefix("https://") {
        Some(rest) => (rest, false),
        None => match origin.strip_prefix("http://") {
            Some(rest) => (rest, true),
            None => return false,
        },
    };
    let (host, port) = match host_port.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host_port, None),
    };
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = if local_only {
        host == "localhost" || host == "127.0.0.1"
    } else {
        host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    };
    origin.len() <= ORIGIN_CHARS_MAX && port_ok && host_ok
}

impl Service {
    fn new_api_key(&self, role: KeyRole) -> String {
        let prefix = match role {
            KeyRole::Secret => "sk",
            KeyRole::Publishable => "pk",
        };
        let a = base62_u128(u128::from_be_bytes(self.entropy.bytes()));
        let b = base62_u128(u128::from_be_bytes(self.entropy.bytes()));
        format!("{prefix}_{a}{b}")
    }

    /// Creates a merchant with a new secret and publishable key.
    pub async fn create_merchant(
        &self,
        op: &Operator,
        m: NewMerchant,
    ) -> Result<WithKeys, CreateMerchantError> {
        check_merchant_id(&m.merchant_id)?;
        if m.name.is_empty() || m.name.chars().count() > MERCHANT_NAME_CHARS_MAX {
            return Err(CreateMerchantError::NameInvalid);
        }
        check_origins(&m.allowed_origins)?;
        let secret = self.new_api_key(KeyRole::Secret);
        let publishable = self.new_api_key(KeyRole::Publishable);
        let cmd = Command::CreateMerchant {
            merchant_id: m.merchant_id,
            name: m.name,
            secret_key_sha256: api_key_hash(&secret),
            publishable_key_sha256: api_key_hash(&publishable),
            settings: MerchantSettings {
                allowed_origins: m.allowed_origins,
                token_format: m.token_format,
                require_three_d_secure: m.require_three_d_secure,
            },
            at_ms: self.now_ms().await,
            by: Some(op.actor()),
        };
        match self.write(cmd).await? {
            Response::Merchant(merchant) => Ok(WithKeys {
                merchant,
                secret_key: Some(secret),
                publishable_key: Some(publishable),
            }),
            Response::Refused(Refusal::MerchantExists) => Err(CreateMerchantError::Exists),
            other => Err(CreateMerchantError::Internal(unexpected(&other))),
        }
    }

    /// Issues a new key of `role` for the merchant; the old one stops working at once.
    pub async fn rotate_merchant_key(
        &self,
        op: &Operator,
        merchant_id: &str,
        role: KeyRole,
    ) -> Result<WithKeys, ChangeMerchantError> {
        check_merchant_id(merchant_id)?;
        let key = self.new_api_key(role);
        let cmd = Command::RotateMerchantKey {
            merchant_id: merchant_id.to_owned(),
            role,
            key_sha256: api_key_hash(&key),
            at_ms: self.now_ms().await,
            by: Some(op.actor()),
        };
        match self.write(cmd).await? {
            Response::Merchant(merchant) => Ok(match role {
                KeyRole::Secret => WithKeys {
                    merchant,
                    secret_key: Some(key),
                    publishable_key: None,
                },
                KeyRole::Publishable => WithKeys {
                    merchant,
                    secret_key: None,
                    publishable_key: Some(key),
                },
            }),
            Response::Refused(Refusal::UnknownMerchant) => Err(ChangeMerchantError::NotFound),
            other => Err(ChangeMerchantError::Internal(unexpected(&other))),
        }
    }

    /// One merchant (an audited read).
    pub async fn merchant(
        &self,
        op: &Operator,
        id: &str,
    ) -> Result<MerchantInfo, ReadMerchantError> {
        check_merchant_id(id)?;
        self.linearize().await?;
        self.audited_access(op, "merchant.read", id.to_owned())
            .await?;
        self.read(|v| v.merchant_info(id))?
            .ok_or(ReadMerchantError::NotFound)
    }

    /// Every merchant (an audited read; never their keys).
    pub async fn merchants(&self, op: &Operator) -> Result<Vec<MerchantInfo>, ReadMerchantError> {
        self.linearize().await?;
        self.audited_access(op, "merchant.list", String::new())
            .await?;
        Ok(self.read(|v| v.merchants())?)
    }

    /// Changes a merchant's settings (a new token format applies to new tokens only).
    pub async fn update_merchant(
        &self,
        op: &Operator,
        id: &str,
        u: MerchantUpdate,
    ) -> Result<MerchantInfo, ChangeMerchantError> {
        check_merchant_id(id)?;
        self.linearize().await?;
        let mut settings = self
            .read(|v| v.merchant_info(id))?
            .ok_or(ChangeMerchantError::NotFound)?
            .settings;
        if let Some(o) = u.allowed_origins {
            check_origins(&o)?;
            settings.allowed_origins = o;
        }
        if let Some(f) = u.token_format {
            settings.token_format = f;
        }
        if let Some(r) = u.require_three_d_secure {
            settings.require_three_d_secure = r;
        }
        let cmd = Command::UpdateMerchant {
            merchant_id: id.to_owned(),
            settings,
            at_ms: self.now_ms().await,
            by: Some(op.actor()),
        };
        match self.write(cmd).await? {
            Response::Merchant(m) => Ok(m),
            Response::Refused(Refusal::UnknownMerchant) => Err(ChangeMerchantError::NotFound),
            other => Err(ChangeMerchantError::Internal(unexpected(&other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_https_or_local_http_without_a_path() {
        let ok = |o: &str| check_origins(&[o.to_owned()]).is_ok();
        assert!(ok("https://shop.example"));
        assert!(ok("https://shop.example:8443"));
        assert!(ok("http://localhost:3000"));
        assert!(ok("http://127.0.0.1"));
        assert!(!ok("http://shop.example"));
        assert!(!ok("https://shop.example/pay"));
        assert!(!ok("https://"));
        assert!(ok("https://192.0.2.7:443"));
        // Not origins: brackets and colons in the host, an empty label, an empty or
        // non-numeric port, a second colon, a lookalike of localhost, a port of six
        // digits. (The rule before this one took every one of them over https://.)
        for bad in [
            "https://[",
            "https://:::",
            "https://shop..example",
            "https://shop.example:",
            "https://shop.example:https",
            "https://shop.example:443:1",
            "http://localhost:80:90",
            "http://localhost.evil.example",
            "https://shop.example:123456",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        let at_limit = format!("https://{}ab", "a.".repeat(95));
        assert_eq!(at_limit.len(), ORIGIN_CHARS_MAX);
        assert!(ok(&at_limit));
        assert!(!ok(&format!("{at_limit}c")));
        let many: Vec<String> = (0..=ALLOWED_ORIGINS_MAX)
            .map(|i| format!("https://s{i}.example"))
            .collect();
        assert!(check_origins(&many).is_err());
        assert!(check_merchant_id("shop-1_a").is_ok());
        assert!(check_merchant_id("shop 1").is_err());
    }
}
