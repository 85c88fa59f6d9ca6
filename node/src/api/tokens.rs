//! `POST /v1/tokens` and `GET /v1/tokens/{token}`.

use super::dto::{TokenOut, TokenizeIn};
use super::extract::{Json, Merchant};
use super::{Problem, St};
use crate::service::tokens::{TokenizeRequest, Tokenized};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// `POST /v1/tokens`: `201` with a new token, or `200` with the card-on-file token the
/// member already has for this card.
pub async fn create(
    State(st): St,
    Merchant(caller): Merchant,
    headers: HeaderMap,
    Json(input): Json<TokenizeIn>,
) -> Result<Response, Problem> {
    let req = TokenizeRequest {
        card: input.card.into(),
        kind: input.kind,
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
        Tokenized::New(v) => (StatusCode::CREATED, axum::Json(TokenOut::from(v))).into_response(),
        Tokenized::AlreadyOnFile(v) => axum::Json(TokenOut::from(v)).into_response(),
    }
}

/// `GET /v1/tokens/{token}`: the token's metadata, to its owner only (404 to anyone
/// else).
pub async fn get(
    State(st): St,
    Merchant(caller): Merchant,
    Path(token): Path<String>,
) -> Result<axum::Json<TokenOut>, Problem> {
    Ok(axum::Json(st.svc.get_token(caller, &token).await?.into()))
}
