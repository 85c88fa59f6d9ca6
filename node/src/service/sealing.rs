//! Card numbers sealed and opened: the current data key (made through the log the first
//! time), the fingerprint key, new token ids with their sealed card, and opening a
//! stored card. Every use case that touches a PAN goes through here.

use super::error::{service_error, KeyUnavailable, Replication};
use super::{unexpected, Service};
use crate::crypto::{open_pan, seal_pan, DataKey};
use crate::vault::token::{numeric_token_id, opaque_token_id};
use crate::vault::{Brand, Command, Expiry, Refusal, Response, SealedCard, TokenFormat};
use zeroize::Zeroizing;

/// Why a card could not be sealed or opened.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error(transparent)]
    Key(#[from] KeyUnavailable),
    /// A stored card failed authentication, or its key is gone: never expected.
    #[error("{0}")]
    Internal(String),
}

service_error!(SealError {
    SealError::Internal(_) => ("internal", Internal),
} delegate { Replication, Key });

/// Attempts at a fresh token id when one is taken (numeric ids can collide).
pub(crate) const TOKEN_ID_ATTEMPTS: usize = 4;

/// A new token id and the PAN digits sealed for it under the current data key.
pub(crate) struct NewSeal {
    pub token: String,
    pub key_version: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl NewSeal {
    /// The sealed card with the fields shown in clear.
    pub fn card(self, brand: Brand, last4: String, expiry: Expiry) -> SealedCard {
        SealedCard {
            brand,
            last4,
            exp_month: expiry.month,
            exp_year: expiry.year,
            key_version: self.key_version,
            nonce: self.nonce,
            ciphertext: self.ciphertext,
        }
    }
}

impl Service {
    /// Draws a new token id in the merchant's format (time-ordered from `now_ms` when
    /// opaque) and seals `digits` for it under the current data key (the associated
    /// data binds merchant, token and key version), creating the first data key if the
    /// vault has none.
    pub(crate) async fn seal_for_new_token(
        &self,
        merchant_id: &str,
        digits: &str,
        now_ms: u64,
    ) -> Result<NewSeal, SealError> {
        let (key_version, key) = self.current_data_key().await?;
        let format = self.read(|v| {
            v.merchant_info(merchant_id)
                .map(|m| m.settings.token_format)
                .unwrap_or_default()
        })?;
        let token = match format {
            TokenFormat::Opaque => opaque_token_id(now_ms, self.entropy.bytes()),
            TokenFormat::Numeric => numeric_token_id(
                self.entropy.bytes(),
                digits.len(),
                &digits[digits.len() - 4..],
            ),
        };
        let nonce = self.entropy.nonce();
        let ciphertext = seal_pan(&key, key_version, merchant_id, &token, digits, &nonce);
        Ok(NewSeal {
            token,
            key_version,
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// The current data key, creating version 1 through the log if the vault has none.
    pub(crate) async fn current_data_key(&self) -> Result<(u32, DataKey), SealError> {
        for _ in 0..2 {
            let current = self.read(|v| {
                v.current_data_key()
                    .map(|(ver, w)| (ver, w, v.data_key_kek(ver)))
            })?;
            if let Some((version, wrapped, kek_id)) = current {
                let key = self
                    .keys
                    .data_key(version, &wrapped, kek_id.as_deref())
                    .map_err(|e| KeyUnavailable::of("data key", e))?;
                return Ok((version, key));
            }
            let fresh = DataKey::generate(&self.entropy);
            let (kek_id, wrapped) = self
                .keys
                .kek()
                .wrap(&fresh, 1, &self.entropy)
                .map_err(|e| KeyUnavailable::of("data key", e))?;
            let cmd = Command::InstallDataKey {
                version: 1,
                wrapped,
                kek_id: Some(kek_id),
                at_ms: self.now_ms().await,
                by_admin: false,
                by: None,
            };
            match self.write(cmd).await? {
                Response::DataKeyInstalled { .. }
                | Response::Refused(Refusal::DataKeyExists { .. }) => continue,
                other => return Err(SealError::Internal(unexpected(&other))),
            }
        }
        Err(SealError::Internal(
            "no data key after installing one".into(),
        ))
    }

    /// The card fingerprint key, installing one through the log if the vault has none.
    pub(crate) async fn fingerprint_key(&self) -> Result<DataKey, SealError> {
        for _ in 0..2 {
            if let Some((wrapped, kek_id)) =
                self.read(|v| v.fingerprint_key().map(|w| (w, v.fingerprint_key_kek())))?
            {
                return self
                    .keys
                    .fingerprint_key(&wrapped, kek_id.as_deref())
                    .map_err(|e| KeyUnavailable::of("fingerprint key", e).into());
            }
            let (kek_id, wrapped) = self
                .keys
                .kek()
                .wrap_fingerprint_key(&DataKey::generate(&self.entropy), &self.entropy)
                .map_err(|e| KeyUnavailable::of("fingerprint key", e))?;
            let cmd = Command::InstallFingerprintKey {
                wrapped,
                kek_id: Some(kek_id),
                at_ms: self.now_ms().await,
            };
            match self.write(cmd).await? {
                Response::FingerprintKeyInstalled
                | Response::Refused(Refusal::FingerprintKeyExists) => continue,
                other => return Err(SealError::Internal(unexpected(&other))),
            }
        }
        Err(SealError::Internal(
            "no fingerprint key after installing one".into(),
        ))
    }

    /// Opens a stored card's PAN (to authorise, re-seal under another token or key, or
    /// verify).
    pub(crate) fn open_card(
        &self,
        merchant_id: &str,
        token: &str,
        sealed: &SealedCard,
    ) -> Result<Zeroizing<String>, SealError> {
        let (wrapped, kek_id) = self
            .read(|v| {
                v.data_key(sealed.key_version)
                    .map(|w| (w, v.data_key_kek(sealed.key_version)))
            })?
            .ok_or_else(|| {
                SealError::Internal("the card's data key version is missing or retired".into())
            })?;
        let key = self
            .keys
            .data_key(sealed.key_version, &wrapped, kek_id.as_deref())
            .map_err(|e| KeyUnavailable::of("card's data key", e))?;
        open_pan(
            &key,
            sealed.key_version,
            merchant_id,
            token,
            &sealed.nonce,
            &sealed.ciphertext,
        )
        .map_err(|_| SealError::Internal("a stored card failed authentication".into()))
    }
}
