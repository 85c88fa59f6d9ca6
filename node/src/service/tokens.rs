//! Tokenize a card, read a token, and purge the cards of spent one-time tokens.

use super::auth::{AuthError, Caller};
use super::error::{service_error, Replication};
use super::sealing::{SealError, TOKEN_ID_ATTEMPTS};
use super::Service;
use crate::crypto::card_fingerprint;
use crate::cvc::{CvcState, CvcStoreFull};
use crate::vault::card::year_month_of_ms;
use crate::vault::token::looks_like_token_id;
use crate::vault::{
    CardError, Command, Cvc, Expiry, KeyRole, Pan, Refusal, Response, TokenKind, TokenMeta,
};
use std::time::Duration;
use zeroize::Zeroizing;

/// Longest member id accepted.
pub const MEMBER_ID_CHARS_MAX: usize = 64;

/// A card as a client gives it.
pub struct CardInput {
    pub number: Zeroizing<String>,
    pub exp_month: u32,
    pub exp_year: u32,
    /// One-time tokens only; held in memory, never stored.
    pub cvc: Option<Zeroizing<String>>,
}

/// What to tokenize, and for whom.
pub struct TokenizeRequest {
    pub card: CardInput,
    pub kind: TokenKind,
    pub member_id: Option<String>,
    /// The browser origin the request came from, if it came from a browser.
    pub origin: Option<String>,
}

/// A token with what this node knows of its CVC.
#[derive(Debug, Clone)]
pub struct TokenView {
    pub meta: TokenMeta,
    /// One-time tokens: whether this node holds the CVC given with the card.
    pub cvc: Option<CvcState>,
}

/// What a tokenization stored.
#[derive(Debug, Clone)]
pub enum Tokenized {
    /// A new token.
    New(TokenView),
    /// The card was already on file for this member: the existing token.
    AlreadyOnFile(TokenView),
}

/// Why a card was not tokenized.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizeError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{}", .0.message())]
    Card(CardError),
    #[error(transparent)]
    Member(#[from] MemberIdError),
    #[error("card_on_file tokens never keep a CVC; create a one_time token with the CVC and register it to the member")]
    CvcNotAllowed,
    #[error(
        "a publishable key may only create one_time tokens; use the secret key from your server"
    )]
    PublishableKeyNotAllowed,
    #[error("this merchant does not allow browser requests from this origin; add it to the merchant's allowed_origins")]
    OriginNotAllowed,
    #[error("{0}; retry later or without the CVC")]
    CvcStore(CvcStoreFull),
    #[error(transparent)]
    Sealing(#[from] SealError),
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("no free token id after several attempts")]
    NoFreeTokenId,
}

service_error!(TokenizeError {
    TokenizeError::Card(e) => (e.code(), Unprocessable),
    TokenizeError::CvcNotAllowed => ("cvc_not_allowed", Unprocessable),
    TokenizeError::PublishableKeyNotAllowed => ("publishable_key_not_allowed", Forbidden),
    TokenizeError::OriginNotAllowed => ("origin_not_allowed", Forbidden),
    TokenizeError::CvcStore(CvcStoreFull::Full { .. }) => ("cvc_store_full", Unavailable),
    TokenizeError::CvcStore(CvcStoreFull::MerchantShare { .. }) => ("cvc_share_exhausted", Unavailable),
    TokenizeError::NoFreeTokenId => ("internal", Internal),
} delegate { Auth, Member, Sealing, Replication });

/// A member id that is missing, not allowed, or malformed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[non_exhaustive]
pub enum MemberIdError {
    #[error("card_on_file tokens need a member_id")]
    Required,
    #[error("one_time tokens do not take a member_id; register the card to a member instead")]
    NotAllowed,
    #[error("member_id must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'")]
    Invalid,
}

service_error!(MemberIdError {
    MemberIdError::Required => ("member_id_required", Unprocessable),
    MemberIdError::NotAllowed => ("member_id_not_allowed", Unprocessable),
    MemberIdError::Invalid => ("member_id_invalid", Invalid),
} delegate {});

/// Checks that a token of `kind` has a member id exactly when it needs one, and its
/// shape.
pub fn check_member_id(kind: TokenKind, member_id: Option<&str>) -> Result<(), MemberIdError> {
    match (kind, member_id) {
        (TokenKind::CardOnFile, None) => Err(MemberIdError::Required),
        (TokenKind::OneTime, Some(_)) => Err(MemberIdError::NotAllowed),
        (_, Some(m))
            if m.is_empty()
                || m.len() > MEMBER_ID_CHARS_MAX
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            Err(MemberIdError::Invalid)
        }
        _ => Ok(()),
    }
}

/// Why a token could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GetTokenError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("no such token for this merchant")]
    NotFound,
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(GetTokenError {
    GetTokenError::NotFound => ("token_not_found", NotFound),
} delegate { Auth, Replication });

impl Service {
    /// The token as this node shows it, with its CVC state for one-time tokens.
    pub(crate) fn view(&self, meta: TokenMeta) -> TokenView {
        let cvc = (meta.kind == TokenKind::OneTime).then(|| {
            self.cvc
                .state(&meta.token, meta.cvc_supplied, (self.clock)())
        });
        TokenView { meta, cvc }
    }

    /// Validates and seals the card, then stores it under a new token. A publishable key
    /// may only create one-time tokens, and from a browser only from one of the
    /// merchant's allowed origins.
    pub async fn tokenize(
        &self,
        caller: Caller,
        req: TokenizeRequest,
    ) -> Result<Tokenized, TokenizeError> {
        self.check_publishable(&caller, req.kind, req.origin.as_deref())?;
        check_member_id(req.kind, req.member_id.as_deref())?;
        let now_ms = self.now_ms().await;
        let pan = Pan::parse(&req.card.number).map_err(TokenizeError::Card)?;
        let expiry = Expiry::new(
            req.card.exp_month,
            req.card.exp_year,
            year_month_of_ms(now_ms),
        )
        .map_err(TokenizeError::Card)?;
        let cvc = match (&req.card.cvc, req.kind) {
            (None, _) => None,
            (Some(c), TokenKind::OneTime) => {
                Some(Cvc::parse(c, pan.brand()).map_err(TokenizeError::Card)?)
            }
            (Some(_), TokenKind::CardOnFile) => return Err(TokenizeError::CvcNotAllowed),
        };
        let merchant_id = caller.merchant_id;
        let fingerprint = match req.kind {
            TokenKind::CardOnFile => Some(card_fingerprint(
                &self.fingerprint_key().await?,
                &merchant_id,
                pan.digits(),
            )),
            TokenKind::OneTime => None,
        };
        let expires_at_ms = match req.kind {
            TokenKind::OneTime => Some(now_ms + self.settings.one_time_token_ttl_s * 1000),
            TokenKind::CardOnFile => None,
        };
        for _ in 0..TOKEN_ID_ATTEMPTS {
            let seal = self
                .seal_for_new_token(&merchant_id, pan.digits(), now_ms)
                .await?;
            let token = seal.token.clone();
            let cmd = Command::Tokenize {
                merchant_id: merchant_id.clone(),
                token: token.clone(),
                kind: req.kind,
                member_id: req.member_id.clone(),
                card: seal.card(pan.brand(), pan.last4(), expiry),
                at_ms: now_ms,
                expires_at_ms,
                fingerprint: fingerprint.clone(),
                key_role: caller.role,
                cvc_supplied: cvc.is_some(),
            };
            let written = match (&cvc, expires_at_ms) {
                (Some(cvc), Some(expires)) => {
                    self.write_with_cvc(cmd, &token, &merchant_id, cvc, expires)
                        .await?
                }
                _ => self.write(cmd).await?,
            };
            match written {
                Response::Tokenized(meta) => return Ok(Tokenized::New(self.view(meta))),
                Response::AlreadyOnFile(meta) => {
                    return Ok(Tokenized::AlreadyOnFile(self.view(meta)))
                }
                // A taken id, or a data key retired while this request sealed under it:
                // seal again.
                Response::Refused(Refusal::TokenIdTaken | Refusal::UnknownDataKey) => continue,
                Response::Refused(Refusal::UnknownMerchant) => {
                    return Err(AuthError::Unauthenticated.into())
                }
                other => {
                    return Err(SealError::Internal(super::unexpected(&other)).into());
                }
            }
        }
        Err(TokenizeError::NoFreeTokenId)
    }

    fn check_publishable(
        &self,
        caller: &Caller,
        kind: TokenKind,
        origin: Option<&str>,
    ) -> Result<(), TokenizeError> {
        if caller.role != KeyRole::Publishable {
            return Ok(());
        }
        if kind != TokenKind::OneTime {
            return Err(TokenizeError::PublishableKeyNotAllowed);
        }
        let Some(origin) = origin else {
            return Ok(());
        };
        let allowed = self.read(|v| {
            v.merchant_info(&caller.merchant_id)
                .is_some_and(|m| m.settings.allowed_origins.iter().any(|o| o == origin))
        })?;
        if allowed {
            Ok(())
        } else {
            Err(TokenizeError::OriginNotAllowed)
        }
    }

    /// Whether any merchant allows browser requests from `origin` (not when the vault
    /// cannot be read).
    pub fn origin_allowed_by_any(&self, origin: &str) -> bool {
        self.read(|v| v.origin_allowed_by_any(origin))
            .unwrap_or(false)
    }

    /// Holds the CVC here, copies it to the other nodes while the token is written, and
    /// wipes the local copy if the token was not created.
    async fn write_with_cvc(
        &self,
        cmd: Command,
        token: &str,
        merchant_id: &str,
        cvc: &Cvc,
        expires_at_ms: u64,
    ) -> Result<Response, TokenizeError> {
        self.cvc
            .put(token, merchant_id, cvc.clone(), expires_at_ms)
            .map_err(|e| {
                self.metrics.cvc_not_taken(e.reason());
                TokenizeError::CvcStore(e)
            })?;
        let (written, copies) = futures::join!(
            self.write(cmd),
            self.replicate_cvc(token, merchant_id, cvc, expires_at_ms)
        );
        self.metrics.cvc_copies(copies);
        if !matches!(written, Ok(Response::Tokenized(_))) {
            self.cvc.take(token, 0);
        }
        Ok(written?)
    }

    /// The token's metadata, to its owner only (not found to anyone else).
    pub async fn get_token(&self, caller: Caller, token: &str) -> Result<TokenView, GetTokenError> {
        let merchant_id = caller.secret()?;
        if !looks_like_token_id(token) {
            return Err(GetTokenError::NotFound);
        }
        self.linearize().await?;
        self.read(|v| v.token_for(&merchant_id, token))?
            .map(|m| self.view(m))
            .ok_or(GetTokenError::NotFound)
    }
}

/// Pause between purge batches while spent cards are waiting, so foreground writes
/// keep most of the log.
const PURGE_PAUSE_MS: u64 = 20;

/// Runs for the node's lifetime: on the leader, destroys the sealed cards of one-time
/// tokens that were used or have expired, through the log, in bounded batches (PCI DSS
/// 3.2.1: a card is kept no longer than it is needed). Their metadata and audit
/// records stay.
pub async fn purge_loop(svc: std::sync::Arc<Service>) {
    // Spent cards are read from the index by spend time: a batch costs the same
    // whatever the vault's size, and the loop goes on at once while batches are full.
    let mut backlog = false;
    loop {
        let pause = if backlog {
            Duration::from_millis(PURGE_PAUSE_MS)
        } else {
            Duration::from_secs(1)
        };
        crate::runtime::sleep(pause).await;
        backlog = false;
        if !svc.cluster.is_leader() {
            continue;
        }
        let now_ms = svc.now_ms().await;
        let limit = svc.settings.rewrap_batch_cards;
        let Ok(found) = svc.read(|v| v.purgeable(limit, now_ms)) else {
            continue;
        };
        if found.is_empty() {
            continue;
        }
        let full = found.len() == limit;
        let cmd = Command::PurgeCards {
            tokens: found,
            at_ms: now_ms,
        };
        match svc.write(cmd).await {
            Ok(Response::Purged { purged, .. }) => {
                svc.metrics.purged_cards.inc_by(purged);
                backlog = full && purged > 0;
            }
            Ok(other) => tracing::warn!(
                response = super::response_kind(&other),
                "unexpected answer to a card purge"
            ),
            Err(e) => tracing::debug!(
                code = super::ServiceError::code(&e),
                "card purge not written; retrying"
            ),
        }
        crate::runtime::sleep(Duration::from_millis(PURGE_PAUSE_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceError;

    #[test]
    fn member_ids_are_required_exactly_for_cards_on_file() {
        use TokenKind::{CardOnFile, OneTime};
        let code = |k, m| check_member_id(k, m).map_err(|e| e.code());
        assert_eq!(code(CardOnFile, None), Err("member_id_required"));
        assert_eq!(code(OneTime, Some("m1")), Err("member_id_not_allowed"));
        assert_eq!(code(CardOnFile, Some("")), Err("member_id_invalid"));
        assert_eq!(code(CardOnFile, Some("a/b")), Err("member_id_invalid"));
        let long = "m".repeat(65);
        assert_eq!(code(CardOnFile, Some(&long)), Err("member_id_invalid"));
        assert_eq!(code(CardOnFile, Some("member-1_a.b")), Ok(()));
        assert_eq!(code(OneTime, None), Ok(()));
    }

    #[test]
    fn card_errors_keep_their_codes_and_never_echo_the_number() {
        let e = TokenizeError::Card(CardError::LuhnFailed);
        assert_eq!(e.code(), "card_number_luhn");
        assert_eq!(e.kind(), crate::service::Kind::Unprocessable);
        let e = TokenizeError::CvcStore(CvcStoreFull::MerchantShare { share: 3 });
        assert_eq!(e.code(), "cvc_share_exhausted");
    }
}
