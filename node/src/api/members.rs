//! A member's cards on file: `GET /v1/members/{member_id}/cards` and
//! `DELETE /v1/members/{member_id}/cards/{token}`.

use super::tokens::{check_member_id, response_kind, TokenOut};
use super::{Problem, St};
use crate::vault::{Command, Refusal, Response, TokenKind};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::json;

fn result(r: Result<HttpResponse, Problem>) -> HttpResponse {
    r.unwrap_or_else(IntoResponse::into_response)
}

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
                .map(TokenOut::from)
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
                other => Err(Problem::internal(format!(
                    "unexpected vault response {}",
                    response_kind(&other)
                ))),
            }
        }
        .await,
    )
}
