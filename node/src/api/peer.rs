//! Node-to-node routes outside Raft, on the peer listener: CVC copies, security events
//! handed to the leader, and health. The peer plane admits only members of this
//! cluster (`cluster::admit_layer`, applied where the listener is assembled).

use super::AppState;
use crate::service::audit::{Event, EVENT_PATH};
use crate::service::peers::{CvcCopy, CVC_PATH};
use crate::service::ServiceError;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// A sealed CVC copy or an event is tiny; anything bigger is not one.
const PEER_BODY_BYTES_MAX: usize = 4096;

/// Routes other nodes call on this node's peer listener.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(CVC_PATH, post(take_copy))
        .route(EVENT_PATH, post(take_event))
        .route(crate::failover::HEALTH_PATH, get(health))
        .route(
            &format!("{}/{{check}}", crate::service::compare::DIGEST_PATH),
            get(vault_digest),
        )
        .layer(axum::extract::DefaultBodyLimit::max(PEER_BODY_BYTES_MAX))
        .with_state(state)
}

async fn take_copy(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let Ok(copy) = serde_json::from_slice::<CvcCopy>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a CVC copy").into_response();
    };
    match st.svc.take_cvc_copy(copy) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ crate::service::peers::CopyRefused::StoreFull) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// The leader writes an event a member handed it.
async fn take_event(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let Ok(ev) = serde_json::from_slice::<Event>(&body) else {
        return (StatusCode::BAD_REQUEST, "not an audit event").into_response();
    };
    match st.svc.record_peer_event(ev).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            let status = super::problem::status_of(e.kind());
            (status, e.to_string()).into_response()
        }
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(st.svc.own_health()).into_response()
}

/// Which comparison's marker the leader asks about.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DigestQuery {
    index: u64,
}

/// This node's hash of its vault at a comparison's marker, or why it has none (yet).
async fn vault_digest(
    State(st): State<Arc<AppState>>,
    path: Result<axum::extract::Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<axum::extract::Query<DigestQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (Ok(axum::extract::Path(check)), Ok(axum::extract::Query(q))) = (path, query) else {
        return (
            StatusCode::BAD_REQUEST,
            "not a comparison and its marker's index",
        )
            .into_response();
    };
    axum::Json(st.svc.digest_answer(check, q.index)).into_response()
}
