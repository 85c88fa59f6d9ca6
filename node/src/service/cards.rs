//! A member's cards on file: use a one-time token, exactly once, to put its card on file
//! for a member; list the member's cards; delete one for good.

use super::auth::{AuthError, Caller};
use super::error::{service_error, Replication};
use super::sealing::{SealError, TOKEN_ID_ATTEMPTS};
use super::tokens::{check_member_id, MemberIdError, TokenView, Tokenized};
use super::{unexpected, Service};
use crate::crypto::card_fingerprint;
use crate::vault::state::TokenRecord;
use crate::vault::token::looks_like_token_id;
use crate::vault::{Command, Expiry, Refusal, Response, TokenKind};

/// Why a card was not put on file.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterCardError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Member(#[from] MemberIdError),
    #[error("no such one-time token for this merchant")]
    TokenNotFound,
    #[error("this one-time token has already been used")]
    TokenAlreadyUsed,
    #[error("this one-time token has expired")]
    TokenExpired,
    #[error(transparent)]
    Sealing(#[from] SealError),
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(RegisterCardError {
    RegisterCardError::TokenNotFound => ("token_not_found", NotFound),
    RegisterCardError::TokenAlreadyUsed => ("token_already_used", Conflict),
    RegisterCardError::TokenExpired => ("token_expired", Gone),
    RegisterCardError::Internal(_) => ("internal", Internal),
} delegate { Auth, Member, Sealing, Replication });

impl RegisterCardError {
    fn of_refusal(r: &Refusal) -> RegisterCardError {
        match r {
            Refusal::TokenNotFound => RegisterCardError::TokenNotFound,
            Refusal::TokenAlreadyUsed => RegisterCardError::TokenAlreadyUsed,
            Refusal::TokenExpired => RegisterCardError::TokenExpired,
            other => RegisterCardError::Internal(format!("unexpected refusal {}", other.code())),
        }
    }
}

/// Why a member's cards could not be listed or deleted.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MemberCardsError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Member(#[from] MemberIdError),
    #[error("no such card for this member")]
    NotFound,
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(MemberCardsError {
    MemberCardsError::NotFound => ("token_not_found", NotFound),
    MemberCardsError::Internal(_) => ("internal", Internal),
} delegate { Auth, Member, Replication });

impl Service {
    /// Uses a one-time token, exactly once, to put its card on file for the member: a
    /// new card-on-file token, or the one already on file for this card.
    pub async fn register_card(
        &self,
        caller: Caller,
        member_id: &str,
        one_time_token: &str,
    ) -> Result<Tokenized, RegisterCardError> {
        let merchant_id = caller.secret()?;
        check_member_id(TokenKind::CardOnFile, Some(member_id))?;
        let record = self.one_time_record(&merchant_id, one_time_token)?;
        let now_ms = self.now_ms().await;
        // A fast answer; `apply` makes the authoritative check atomically.
        record
            .usable_at(now_ms)
            .map_err(|r| RegisterCardError::of_refusal(&r))?;
        for _ in 0..TOKEN_ID_ATTEMPTS {
            let cmd = self
                .reseal_for_member(&merchant_id, one_time_token, &record, member_id, now_ms)
                .await?;
            let written = self.write(cmd).await?;
            if matches!(written, Response::Tokenized(_) | Response::AlreadyOnFile(_)) {
                // Used: its CVC is wiped here now, and on other nodes by their sweep.
                self.cvc.take(one_time_token, 0);
            }
            return match written {
                Response::Tokenized(meta) => Ok(Tokenized::New(self.view(meta))),
                Response::AlreadyOnFile(meta) => Ok(Tokenized::AlreadyOnFile(self.view(meta))),
                Response::Refused(Refusal::TokenIdTaken | Refusal::UnknownDataKey) => continue,
                Response::Refused(r) => Err(RegisterCardError::of_refusal(&r)),
                other => Err(RegisterCardError::Internal(unexpected(&other))),
            };
        }
        Err(RegisterCardError::Internal(
            "no free token id after several attempts".into(),
        ))
    }

    fn one_time_record(
        &self,
        merchant_id: &str,
        token: &str,
    ) -> Result<TokenRecord, RegisterCardError> {
        if !looks_like_token_id(token) {
            return Err(RegisterCardError::TokenNotFound);
        }
        self.read(|v| v.record_for(merchant_id, token))?
            .filter(|r| r.kind == TokenKind::OneTime)
            .ok_or(RegisterCardError::TokenNotFound)
    }

    /// Opens the one-time token's PAN and seals it again under the current data key for
    /// a new card-on-file token (the associated data binds the token id, so it cannot
    /// be reused).
    async fn reseal_for_member(
        &self,
        merchant_id: &str,
        one_time_token: &str,
        record: &TokenRecord,
        member_id: &str,
        now_ms: u64,
    ) -> Result<Command, SealError> {
        let sealed = &record.card;
        let pan = self.open_card(merchant_id, one_time_token, sealed)?;
        let fingerprint = card_fingerprint(&self.fingerprint_key().await?, merchant_id, &pan);
        let seal = self.seal_for_new_token(merchant_id, &pan, now_ms).await?;
        let new_token = seal.token.clone();
        let expiry = Expiry {
            month: sealed.exp_month,
            year: sealed.exp_year,
        };
        let card = seal.card(sealed.brand, sealed.last4.clone(), expiry);
        Ok(Command::UseOneTimeForCard {
            merchant_id: merchant_id.to_owned(),
            one_time_token: one_time_token.to_owned(),
            member_id: member_id.to_owned(),
            new_token,
            card,
            fingerprint,
            at_ms: now_ms,
        })
    }

    /// The member's card-on-file tokens (linearizable). Unknown members have none.
    pub async fn member_cards(
        &self,
        caller: Caller,
        member_id: &str,
    ) -> Result<Vec<TokenView>, MemberCardsError> {
        let merchant_id = caller.secret()?;
        check_member_id(TokenKind::CardOnFile, Some(member_id))?;
        self.linearize().await?;
        Ok(self
            .read(|v| v.member_cards(&merchant_id, member_id))?
            .into_iter()
            .map(|m| self.view(m))
            .collect())
    }

    /// Deletes one of the member's cards for good (not found if it is not this
    /// merchant's and member's card).
    pub async fn delete_card(
        &self,
        caller: Caller,
        member_id: &str,
        token: &str,
    ) -> Result<(), MemberCardsError> {
        let merchant_id = caller.secret()?;
        check_member_id(TokenKind::CardOnFile, Some(member_id))?;
        if !looks_like_token_id(token) {
            return Err(MemberCardsError::NotFound);
        }
        let cmd = Command::DeleteCard {
            merchant_id,
            member_id: member_id.to_owned(),
            token: token.to_owned(),
            at_ms: self.now_ms().await,
        };
        match self.write(cmd).await? {
            Response::CardDeleted => Ok(()),
            Response::Refused(Refusal::TokenNotFound) => Err(MemberCardsError::NotFound),
            other => Err(MemberCardsError::Internal(unexpected(&other))),
        }
    }
}
