//! `POST /v1/tokens` and `GET /v1/tokens/{token}`.

use super::dto::wire;
use super::extract::{Json, Merchant};
use super::{Problem, St};
use crate::service::tokens::{TokenizeRequest, Tokenized};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kura_types::{Token, TokenizeIn};

/// Tokenize a card: `201` with a new token, or `200` with the card-on-file token the
/// member already has for this card. A publishable key may create one-time tokens
/// only, from an allowed origin.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", operation_id = "create_token",
    request_body = TokenizeIn,
    responses(
        (status = 201, description = "a new token", body = Token, links(
            ("get" = (operation_id = "get_token", parameters(("token" = "$response.body#/token")))),
            ("pay" = (operation_id = "create_payment", request_body = json!({
                "token": "$response.body#/token", "amount": 1000, "currency": "JPY",
                "order_id": "$response.body#/token", "capture": false}))),
        )),
        (status = 200, description = "the card was already on file for this member", body = Token),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done (503) or outcome unknown (504)", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn create(
    State(st): St,
    Merchant(caller): Merchant,
    headers: HeaderMap,
    Json(input): Json<TokenizeIn>,
) -> Result<Response, Problem> {
    let req = TokenizeRequest {
        card: input.card.into(),
        kind: wire(input.kind),
        member_id: input.member_id,
        // Compared byte for byte with the allowed origins: one that is not text matches
        // none.
        origin: headers
            .get(header::ORIGIN)
            .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned()),
    };
    Ok(tokenized(st.svc.tokenize(caller, req).await?))
}

/// The answer for a stored card: `201` for a new token, `200` for one already on file.
pub(super) fn tokenized(t: Tokenized) -> Response {
    match t {
        Tokenized::New(v) => (StatusCode::CREATED, axum::Json(wire::<Token, _>(v))).into_response(),
        Tokenized::AlreadyOnFile(v) => axum::Json(wire::<Token, _>(v)).into_response(),
    }
}

/// A token's metadata, linearizable, to its owner only (`404` to anyone else).
#[utoipa::path(get, path = "/v1/tokens/{token}", tag = "tokens", operation_id = "get_token",
    params(("token" = String, Path, description = "a token id")),
    responses(
        (status = 200, description = "the token", body = Token),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn get(
    State(st): St,
    Merchant(caller): Merchant,
    Path(token): Path<String>,
) -> Result<axum::Json<Token>, Problem> {
    Ok(axum::Json(wire(st.svc.get_token(caller, &token).await?)))
}
