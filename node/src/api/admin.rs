//! Admin routes: form the cluster, create, list and rotate merchants.
//! Every route requires the admin token; no merchant key is accepted here.

use super::tokens::body_or_problem;
use super::{result, Problem, St};
use crate::crypto::api_key_hash;
use crate::vault::token::base62_u128;
use crate::vault::{Command, Refusal, Response};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::Deserialize;
use serde_json::json;

/// Longest merchant id accepted.
pub const MERCHANT_ID_CHARS_MAX: usize = 64;

/// `POST /admin/v1/init`: form the cluster from the configured members, once.
pub async fn init(State(st): St, headers: HeaderMap) -> HttpResponse {
    result(
        async {
            st.admin(&headers)?;
            let new_id = format!(
                "kc_{}",
                base62_u128(u128::from_be_bytes(st.entropy.bytes()))
            );
            let outcome = st
                .cluster
                .init(new_id)
                .await
                .map_err(|e| Problem::new(StatusCode::CONFLICT, "init_refused", e))?;
            let status = if outcome.already_initialized {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, axum::Json(outcome)).into_response())
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMerchant {
    merchant_id: String,
    name: String,
}

fn new_secret_key(st: &super::AppState) -> String {
    let a = base62_u128(u128::from_be_bytes(st.entropy.bytes()));
    let b = base62_u128(u128::from_be_bytes(st.entropy.bytes()));
    format!("sk_{a}{b}")
}

fn check_merchant_id(id: &str) -> Result<(), Problem> {
    if id.is_empty()
        || id.len() > MERCHANT_ID_CHARS_MAX
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(Problem::bad_request(
            "merchant_id_invalid",
            "merchant_id must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'",
        ));
    }
    Ok(())
}

/// `POST /admin/v1/merchants`: creates a merchant and returns its secret key once.
pub async fn create_merchant(
    State(st): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(async {
        st.admin(&headers)?;
        let input: CreateMerchant = super::problem::parse_json(&body_or_problem(body)?)?;
        check_merchant_id(&input.merchant_id)?;
        if input.name.is_empty() || input.name.len() > 200 {
            return Err(Problem::bad_request("merchant_name_invalid", "name must be 1-200 characters"));
        }
        let secret = new_secret_key(&st);
        let cmd = Command::CreateMerchant {
            merchant_id: input.merchant_id,
            name: input.name,
            secret_key_sha256: api_key_hash(&secret),
            at_ms: st.now_ms(),
        };
        match st.write(cmd).await? {
            Response::Merchant(m) => Ok((StatusCode::CREATED, axum::Json(json!({
                "merchant_id": m.merchant_id, "name": m.name, "created_at": m.created_at_ms / 1000, "secret_key": secret,
            }))).into_response()),
            Response::Refused(Refusal::MerchantExists) => Err(Problem::new(StatusCode::CONFLICT, "merchant_exists", "a merchant with this id exists; rotate its key instead")),
            _ => Err(Problem::internal("unexpected vault response")),
        }
    }.await)
}

/// `POST /admin/v1/merchants/{id}/rotate-key`: issues a new secret key; the old one stops working.
pub async fn rotate_key(State(st): St, headers: HeaderMap, Path(id): Path<String>) -> HttpResponse {
    result(async {
        st.admin(&headers)?;
        check_merchant_id(&id)?;
        let secret = new_secret_key(&st);
        let cmd = Command::RotateMerchantKey { merchant_id: id, secret_key_sha256: api_key_hash(&secret), at_ms: st.now_ms() };
        match st.write(cmd).await? {
            Response::Merchant(m) => Ok(axum::Json(json!({
                "merchant_id": m.merchant_id, "name": m.name, "key_rotated_at": m.key_rotated_at_ms / 1000, "secret_key": secret,
            })).into_response()),
            Response::Refused(Refusal::UnknownMerchant) => Err(Problem::not_found("merchant_not_found", "no merchant with this id")),
            _ => Err(Problem::internal("unexpected vault response")),
        }
    }.await)
}

/// `GET /admin/v1/merchants`: every merchant (never their keys).
pub async fn list_merchants(State(st): St, headers: HeaderMap) -> HttpResponse {
    result(
        async {
            st.admin(&headers)?;
            st.linearize().await?;
            let list = st.cluster.vault().read(|v| v.merchants());
            Ok(axum::Json(json!({ "merchants": list })).into_response())
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    to: String,
}

/// `POST /admin/v1/leader/transfer`: `{"to": "<member name>"}` moves leadership there and
/// answers once that node leads.
pub async fn transfer_leader(
    State(st): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(
        async {
            st.admin(&headers)?;
            let input: Transfer = super::problem::parse_json(&body_or_problem(body)?)?;
            let to = st.cluster.member_id(&input.to).ok_or_else(|| {
                Problem::not_found("member_not_found", "no member with this name")
            })?;
            if to != st.cluster.id() {
                let timeout = std::time::Duration::from_millis(st.settings.write_timeout_ms);
                st.cluster.transfer_leader(to, timeout).await.map_err(|e| {
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "transfer_failed", e)
                })?;
                tracing::info!(to = %input.to, cause = "operator", "leadership transferred");
            }
            Ok(axum::Json(json!({ "leader": input.to })).into_response())
        }
        .await,
    )
}
