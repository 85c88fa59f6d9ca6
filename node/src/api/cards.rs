//! A member's cards on file: `POST /v1/members/{member_id}/cards` (use a one-time
//! token to register its card), `GET /v1/members/{member_id}/cards` and
//! `DELETE /v1/members/{member_id}/cards/{token}`.

use super::dto::{MemberCardsOut, RegisterIn, TokenOut};
use super::extract::{Json, Merchant};
use super::{Problem, St};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

/// Lists the member's card-on-file tokens (linearizable). Unknown members have none.
pub async fn list(
    State(st): St,
    Merchant(caller): Merchant,
    Path(member_id): Path<String>,
) -> Result<axum::Json<MemberCardsOut>, Problem> {
    let cards = st.svc.member_cards(caller, &member_id).await?;
    Ok(axum::Json(MemberCardsOut {
        member_id,
        cards: cards.into_iter().map(TokenOut::from).collect(),
    }))
}

/// Deletes one of the member's cards for good: `204`, or `404` if it is not this
/// merchant's and member's card.
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
pub async fn register(
    State(st): St,
    Merchant(caller): Merchant,
    Path(member_id): Path<String>,
    Json(input): Json<RegisterIn>,
) -> Result<Response, Problem> {
    let t = st
        .svc
        .register_card(caller, &member_id, &input.token)
        .await?;
    Ok(super::tokens::tokenized(t))
}
