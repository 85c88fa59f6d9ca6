//! Extractors: the authenticated merchant of a client API request, and a JSON body that
//! is refused as a problem (naming the field, never echoing a value) when it does not
//! parse.

use super::problem::parse_json;
use super::{AppState, Problem};
use crate::service::auth::{AuthError, Caller};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The merchant whose secret or publishable key authenticated the request. The rate
/// limits, which look the key up first, leave it in the request's extensions; it is
/// looked up here otherwise.
pub struct Merchant(pub Caller);

impl FromRequestParts<Arc<AppState>> for Merchant {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<AppState>,
    ) -> Result<Merchant, Problem> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(Merchant(c.clone()));
        }
        let key = super::bearer(&parts.headers).ok_or(AuthError::Unauthenticated)?;
        Ok(Merchant(st.svc.authenticate(key)?))
    }
}

/// A query parameter that the description calls a non-negative `int64` (as utoipa
/// describes a `u64`): one above `i64::MAX` is refused, as [`super::strict_json`]
/// refuses it in a body. For `#[serde(deserialize_with = "…")]`.
pub fn query_int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = <u64 as serde::Deserialize>::deserialize(d)?;
    if i64::try_from(v).is_err() {
        return Err(serde::de::Error::custom("above 2^63 - 1"));
    }
    Ok(v)
}

/// A JSON body of `T` (see [`OptionalJson`] for bodies that may be empty).
pub struct Json<T>(pub T);

/// Reads the whole body, as a problem when it is too large or cannot be read.
pub async fn body_bytes<S: Send + Sync>(req: Request, st: &S) -> Result<Bytes, Problem> {
    Bytes::from_request(req, st).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is too large",
            )
        } else {
            Problem::bad_request("invalid_body", "the request body could not be read")
        }
    })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, st: &S) -> Result<Json<T>, Problem> {
        Ok(Json(parse_json(&body_bytes(req, st).await?)?))
    }
}

/// A JSON body of `T`, or `T::default()` when the body is empty.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, st: &S) -> Result<OptionalJson<T>, Problem> {
        Ok(OptionalJson(parse_or_default(&body_bytes(req, st).await?)?))
    }
}

/// `body` as JSON of `T`, or `T::default()` when it is empty or `null` (the API's
/// description calls such a body optional, and `null` is how JSON says "none").
fn parse_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Problem> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        Ok(parse_json::<Option<T>>(body)?.unwrap_or_default())
    }
}

/// A JSON body of `T` with the SHA-256 of its bytes (an idempotent request's
/// fingerprint).
pub struct HashedJson<T> {
    pub value: T,
    pub sha256: String,
}

/// Like [`HashedJson`], but an empty body is `T::default()`.
pub struct HashedOptionalJson<T> {
    pub value: T,
    pub sha256: String,
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    crate::vault::hex_bytes::lower(&Sha256::digest(b))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for HashedJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, st: &S) -> Result<HashedJson<T>, Problem> {
        let body = body_bytes(req, st).await?;
        Ok(HashedJson {
            value: parse_json(&body)?,
            sha256: sha256_hex(&body),
        })
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for HashedOptionalJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, st: &S) -> Result<HashedOptionalJson<T>, Problem> {
        let body = body_bytes(req, st).await?;
        Ok(HashedOptionalJson {
            value: parse_or_default(&body)?,
            sha256: sha256_hex(&body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Amount {
        amount: Option<u64>,
    }

    #[test]
    fn an_optional_body_may_be_empty_or_null_but_not_another_shape() {
        for empty in [&b""[..], b"null", b" null \n", b"{}"] {
            assert_eq!(
                parse_or_default::<Amount>(empty).unwrap(),
                Amount::default()
            );
        }
        let given = parse_or_default::<Amount>(br#"{"amount": 5}"#).unwrap();
        assert_eq!(given, Amount { amount: Some(5) });
        for body in [&b"[5]"[..], b"5", b"\"5\"", b"{}{}", b"nul"] {
            let e = parse_or_default::<Amount>(body).unwrap_err();
            assert_eq!(
                e.code,
                "invalid_json",
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
