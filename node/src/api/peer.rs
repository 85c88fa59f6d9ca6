//! Node-to-node routes outside Raft, on the peer listener: best-effort copies of CVCs.
//!
//! A CVC travels sealed under the cluster's key-encryption key (every member holds it),
//! bound to its token id, so it is never in clear on the wire even without TLS.

use super::AppState;
use crate::vault::{Brand, Cvc};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

const CVC_PATH: &str = "/peer/v1/cvc";
/// A sealed CVC copy is tiny; anything bigger is not one.
const CVC_BODY_BYTES_MAX: usize = 4096;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CvcCopy {
    token: String,
    /// The merchant whose share of the store the copy counts against.
    merchant_id: String,
    expires_at_ms: u64,
    /// Hex of the KEK-sealed digits.
    sealed: String,
}

fn aad(token: &str) -> String {
    format!("kura:cvc:v1|{token}")
}

/// Copies `cvc` into the other nodes' memory, waiting at most the configured replication
/// timeout. Returns how many nodes took it.
pub async fn replicate_cvc(
    st: &AppState,
    token: &str,
    merchant_id: &str,
    cvc: &Cvc,
    expires_at_ms: u64,
) -> usize {
    let sealed = match st
        .keys
        .kek()
        .seal(cvc.digits().as_bytes(), &aad(token), &st.entropy)
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot seal a CVC copy; other nodes will not hold it");
            return 0;
        }
    };
    let body = serde_json::to_vec(&CvcCopy {
        token: token.to_owned(),
        merchant_id: merchant_id.to_owned(),
        expires_at_ms,
        sealed: hex::encode(sealed),
    })
    .expect("a CVC copy serializes");
    let timeout = Duration::from_millis(st.settings.cvc_replication_timeout_ms);
    st.cluster
        .post_to_peers(CVC_PATH, Bytes::from(body), timeout)
        .await
}

/// Routes other nodes call on this node's peer listener.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(CVC_PATH, post(take_copy))
        .route(
            super::security::EVENT_PATH,
            post(super::security::take_event),
        )
        .route(crate::failover::HEALTH_PATH, axum::routing::get(health))
        .layer(axum::extract::DefaultBodyLimit::max(CVC_BODY_BYTES_MAX))
        .with_state(state)
}

async fn take_copy(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = st.cluster.admit_peer(&headers).await {
        return r;
    }
    let Ok(copy) = serde_json::from_slice::<CvcCopy>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a CVC copy").into_response();
    };
    let opened = hex::decode(&copy.sealed)
        .ok()
        .and_then(|s| st.keys.kek().open(&s, &aad(&copy.token)).ok());
    let Some(digits) = opened else {
        return (StatusCode::BAD_REQUEST, "the CVC copy does not open").into_response();
    };
    // The brand only decides the length: accept either length here; the sender checked.
    let cvc = std::str::from_utf8(&digits).ok().and_then(|d| {
        Cvc::parse(d, Brand::Visa)
            .or_else(|_| Cvc::parse(d, Brand::Amex))
            .ok()
    });
    let Some(cvc) = cvc else {
        return (StatusCode::BAD_REQUEST, "the CVC copy is malformed").into_response();
    };
    match st
        .cvc
        .put(&copy.token, &copy.merchant_id, cvc, copy.expires_at_ms)
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            st.metrics.cvc_not_taken(e.reason());
            (StatusCode::SERVICE_UNAVAILABLE, "CVC store full").into_response()
        }
    }
}

async fn health(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = st.cluster.admit_peer(&headers).await {
        return r;
    }
    axum::Json(super::health::own_report(&st)).into_response()
}
