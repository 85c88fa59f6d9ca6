//! A member's cards on file: `POST /v1/members/{member_id}/cards` (use a one-time
//! token to register its card), `GET /v1/members/{member_id}/cards` and
//! `DELETE /v1/members/{member_id}/cards/{token}`.

use super::tokens::{
    body_or_problem, check_member_id, fingerprint_key, key_unavailable, seal_for_new_token,
    unexpected, TokenOut, TOKEN_ID_ATTEMPTS,
};
use super::{result, AppState, Problem, St};
use crate::crypto::{card_fingerprint, open_pan};
use crate::vault::state::TokenRecord;
use crate::vault::token::looks_like_token_id;
use crate::vault::{Command, Expiry, Refusal, Response, SealedCard, TokenKind};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::json;
use zeroize::Zeroizing;

/// Lists the member's card-on-file tokens (linearizable). Unknown members have none.
pub async fn list(
    State(st): St,
    headers: HeaderMap,
    Path(member_id): Path<String>,
) -> HttpResponse {
    result(
        async {
            let merchant_id = st.merchant(&headers)?;
            check_member_id(TokenKind::CardOnFile, &Some(member_id.clone()))?;
            st.linearize().await?;
            let cards: Vec<TokenOut> = st
                .cluster
                .vault()
                .read(|v| v.member_cards(&merchant_id, &member_id))
                .into_iter()
                .map(|m| TokenOut::new(&st, m))
                .collect();
            Ok(axum::Json(json!({ "member_id": member_id, "cards": cards })).into_response())
        }
        .await,
    )
}

/// Deletes one of the member's cards for good: `204`, or `404` if it is not this
/// merchant's and member's card.
pub async fn delete(
    State(st): St,
    headers: HeaderMap,
    Path((member_id, token)): Path<(String, String)>,
) -> HttpResponse {
    result(
        async {
            let merchant_id = st.merchant(&headers)?;
            check_member_id(TokenKind::CardOnFile, &Some(member_id.clone()))?;
            if !crate::vault::token::looks_like_token_id(&token) {
                return Err(Problem::not_found(
                    "token_not_found",
                    "no such card for this member",
                ));
            }
            let cmd = Command::DeleteCard {
                merchant_id,
                member_id,
                token,
                at_ms: st.now_ms(),
            };
            match st.write(cmd).await? {
                Response::CardDeleted => Ok(StatusCode::NO_CONTENT.into_response()),
                Response::Refused(Refusal::TokenNotFound) => Err(Problem::not_found(
                    "token_not_found",
                    "no such card for this member",
                )),
                other => Err(unexpected(&other)),
            }
        }
        .await,
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterIn {
    /// A one-time token of this merchant.
    token: String,
}

fn refusal_problem(r: &Refusal) -> Problem {
    match r {
        Refusal::TokenNotFound => Problem::not_found(
            "token_not_found",
            "no such one-time token for this merchant",
        ),
        Refusal::TokenAlreadyUsed => Problem::new(
            StatusCode::CONFLICT,
            "token_already_used",
            "this one-time token has already been used",
        ),
        Refusal::TokenExpired => Problem::new(
            StatusCode::GONE,
            "token_expired",
            "this one-time token has expired",
        ),
        other => Problem::internal(format!("unexpected refusal {}", other.code())),
    }
}

/// Uses a one-time token, exactly once, to put its card on file for the member: `201`
/// with a new card-on-file token, or `200` with the one already on file for this card.
pub async fn register(
    State(st): St,
    headers: HeaderMap,
    Path(member_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(
        async {
            let merchant_id = st.merchant(&headers)?;
            check_member_id(TokenKind::CardOnFile, &Some(member_id.clone()))?;
            let input: RegisterIn = super::problem::parse_json(&body_or_problem(body)?)?;
            let record = one_time_record(&st, &merchant_id, &input.token)?;
            let now_ms = st.now_ms();
            // Fast answers; `apply` makes the authoritative check atomically.
            if record.used_at_ms.is_some() {
                return Err(refusal_problem(&Refusal::TokenAlreadyUsed));
            }
            if record.expires_at_ms.is_some_and(|e| now_ms >= e) {
                return Err(refusal_problem(&Refusal::TokenExpired));
            }
            for _ in 0..TOKEN_ID_ATTEMPTS {
                let cmd = reseal_for_member(
                    &st,
                    &merchant_id,
                    &input.token,
                    &record,
                    member_id.clone(),
                    now_ms,
                )
                .await?;
                let written = st.write(cmd).await?;
                if matches!(written, Response::Tokenized(_) | Response::AlreadyOnFile(_)) {
                    // Used: its CVC is wiped here now, and on other nodes by their sweep.
                    st.cvc.take(&input.token, 0);
                }
                return match written {
                    Response::Tokenized(meta) => {
                        Ok((StatusCode::CREATED, axum::Json(TokenOut::new(&st, meta)))
                            .into_response())
                    }
                    Response::AlreadyOnFile(meta) => {
                        Ok(axum::Json(TokenOut::new(&st, meta)).into_response())
                    }
                    Response::Refused(Refusal::TokenIdTaken | Refusal::UnknownDataKey) => continue,
                    Response::Refused(r) => Err(refusal_problem(&r)),
                    other => Err(unexpected(&other)),
                };
            }
            Err(Problem::internal("no free token id after several attempts"))
        }
        .await,
    )
}

fn one_time_record(st: &AppState, merchant_id: &str, token: &str) -> Result<TokenRecord, Problem> {
    let not_found = || refusal_problem(&Refusal::TokenNotFound);
    if !looks_like_token_id(token) {
        return Err(not_found());
    }
    st.cluster
        .vault()
        .read(|v| v.record_for(merchant_id, token).cloned())
        .filter(|r| r.kind == TokenKind::OneTime)
        .ok_or_else(not_found)
}

/// Opens the one-time token's PAN and seals it again under the current data key for a new
/// card-on-file token (the associated data binds the token id, so it cannot be reused).
async fn reseal_for_member(
    st: &AppState,
    merchant_id: &str,
    one_time_token: &str,
    record: &TokenRecord,
    member_id: String,
    now_ms: u64,
) -> Result<Command, Problem> {
    let sealed = &record.card;
    let pan = open_card(st, merchant_id, one_time_token, sealed)?;
    let fingerprint = card_fingerprint(&fingerprint_key(st).await?, merchant_id, &pan);
    let seal = seal_for_new_token(st, merchant_id, &pan).await?;
    let new_token = seal.token.clone();
    let expiry = Expiry {
        month: sealed.exp_month,
        year: sealed.exp_year,
    };
    let card = seal.card(sealed.brand, sealed.last4.clone(), expiry);
    Ok(Command::UseOneTimeForCard {
        merchant_id: merchant_id.to_owned(),
        one_time_token: one_time_token.to_owned(),
        member_id,
        new_token,
        card,
        fingerprint,
        at_ms: now_ms,
    })
}

/// Opens a stored card's PAN (for re-sealing under another token or key).
pub(super) fn open_card(
    st: &AppState,
    merchant_id: &str,
    token: &str,
    sealed: &SealedCard,
) -> Result<Zeroizing<String>, Problem> {
    let (wrapped, kek_id) = st
        .cluster
        .vault()
        .read(|v| {
            v.data_key(sealed.key_version).map(|w| {
                (
                    w.to_vec(),
                    v.data_key_kek(sealed.key_version).map(str::to_owned),
                )
            })
        })
        .ok_or_else(|| Problem::internal("the card's data key version is missing or retired"))?;
    let key = st
        .keys
        .data_key(sealed.key_version, &wrapped, kek_id.as_deref())
        .map_err(|e| key_unavailable("card's data key", e))?;
    open_pan(
        &key,
        sealed.key_version,
        merchant_id,
        token,
        &sealed.nonce,
        &sealed.ciphertext,
    )
    .map_err(|_| Problem::internal("a stored card failed authentication"))
}
