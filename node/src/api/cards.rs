//! A member's cards on file: `POST /v1/members/{member_id}/cards` (use a one-time
//! token to register its card), `GET /v1/members/{member_id}/cards` and
//! `DELETE /v1/members/{member_id}/cards/{token}`.

use super::dto::wire;
use super::extract::{Json, Merchant};
use super::{Problem, St};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use kura_types::{MemberCards, RegisterCardIn, Token};

/// The member's card-on-file tokens (linearizable). Unknown members have none.
#[utoipa::path(get, path = "/v1/members/{member_id}/cards", tag = "cards",
    params(("member_id" = String, Path, description = "the merchant's member: 1-64 of A-Z a-z 0-9 - _ .", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses(
        (status = 200, description = "the member's cards", body = MemberCards),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn list(
    State(st): St,
    Merchant(caller): Merchant,
    Path(member_id): Path<String>,
) -> Result<axum::Json<MemberCards>, Problem> {
    let cards = st.svc.member_cards(caller, &member_id).await?;
    Ok(axum::Json(MemberCards {
        member_id,
        cards: cards.into_iter().map(wire).collect(),
    }))
}

/// Deletes one of the member's cards for good: `204`, or `404` if it is not this
/// merchant's and member's card.
#[utoipa::path(delete, path = "/v1/members/{member_id}/cards/{token}", tag = "cards",
    params(
        ("member_id" = String, Path, description = "the merchant's member: 1-64 of A-Z a-z 0-9 - _ .", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("token" = String, Path, description = "a card-on-file token"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn delete(
    State(st): St,
    Merchant(caller): Merchant,
    Path((member_id, token)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    st.svc.delete_card(caller, &member_id, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Uses a one-time token, exactly once, to put its card on file for the member: `201`
/// with a new card-on-file token, or `200` with the one already on file for this card.
#[utoipa::path(post, path = "/v1/members/{member_id}/cards", tag = "cards",
    params(("member_id" = String, Path, description = "the merchant's member: 1-64 of A-Z a-z 0-9 - _ .", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = RegisterCardIn,
    responses(
        (status = 201, description = "a new card-on-file token", body = Token),
        (status = 200, description = "the card was already on file", body = Token),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn register(
    State(st): St,
    Merchant(caller): Merchant,
    Path(member_id): Path<String>,
    Json(input): Json<RegisterCardIn>,
) -> Result<Response, Problem> {
    let t = st
        .svc
        .register_card(caller, &member_id, &input.token)
        .await?;
    Ok(super::tokens::tokenized(t))
}
