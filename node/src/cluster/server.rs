//! The Raft RPC server: the peer side of [`network`](super::network).

use super::network::decode_snapshot;
use super::{Cluster, CLUSTER_ID_HEADER};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use std::sync::Arc;

/// Largest Raft request body accepted, but for a snapshot upload.
pub const RAFT_BODY_BYTES_MAX: usize = 1 << 30;
/// Largest snapshot upload accepted: the whole vault, which passes 1 GiB at about a
/// million cards on file (a follower refused such a snapshot and never caught up).
/// The receiver holds it in memory either way; peers are admitted by cluster id.
pub const SNAPSHOT_BODY_BYTES_MAX: usize = 64 << 30;

/// Routes for `/raft/*` on the peer listener.
pub fn router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre-vote", post(pre_vote))
        .route(
            "/raft/snapshot",
            post(snapshot).layer(DefaultBodyLimit::max(SNAPSHOT_BODY_BYTES_MAX)),
        )
        .route("/raft/transfer-leader", post(transfer_leader))
        .route("/raft/identity", get(identity))
        .route("/raft/handoff-cause", post(handoff_cause))
        .layer(DefaultBodyLimit::max(RAFT_BODY_BYTES_MAX))
        .with_state(cluster)
}

fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Admits an RPC only from this node's cluster. A node with no cluster id and no Raft
/// state adopts the sender's (that is how members join at `init`); a node with data
/// never adopts another.
pub(crate) async fn admit(c: &Cluster, headers: &HeaderMap) -> Result<(), Response> {
    let theirs = headers
        .get(CLUSTER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ours = c.cluster_id();
    match ours.as_deref() {
        Some(ours) if ours == theirs => Ok(()),
        Some(ours) => Err((
            StatusCode::CONFLICT,
            format!("cluster id mismatch: this node is in {ours}, sender in {theirs:?}"),
        )
            .into_response()),
        None if theirs.is_empty() => {
            Err((StatusCode::CONFLICT, "sender has no cluster id").into_response())
        }
        None => c
            .adopt_cluster_id(theirs)
            .await
            .map_err(|e| (StatusCode::CONFLICT, e).into_response()),
    }
}

macro_rules! rpc_handler {
    ($name:ident, $method:ident) => {
        async fn $name(State(c): State<Arc<Cluster>>, headers: HeaderMap, body: Bytes) -> Response {
            if let Err(r) = admit(&c, &headers).await {
                return r;
            }
            match serde_json::from_slice(&body) {
                Ok(req) => reply(c.raft.$method(req).await),
                Err(e) => {
                    (StatusCode::BAD_REQUEST, format!("bad raft request: {e}")).into_response()
                }
            }
        }
    };
}

rpc_handler!(append, append_entries);
rpc_handler!(vote, vote);
rpc_handler!(pre_vote, pre_vote);
rpc_handler!(transfer_leader, handle_transfer_leader);

async fn snapshot(State(c): State<Arc<Cluster>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admit(&c, &headers).await {
        return r;
    }
    match decode_snapshot(&body) {
        Ok((vote, snap)) => reply(c.raft.install_full_snapshot(vote, snap).await),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

#[derive(Serialize, serde::Deserialize)]
pub(super) struct Identity {
    pub node_id: u64,
    pub cluster_id: Option<String>,
    pub has_data: bool,
}

async fn identity(State(c): State<Arc<Cluster>>) -> Response {
    let has_data = c.store.has_raft_state().unwrap_or(true);
    axum::Json(Identity {
        node_id: c.id,
        cluster_id: c.cluster_id(),
        has_data,
    })
    .into_response()
}

/// A leader says why it is about to hand leadership to this node.
async fn handoff_cause(State(c): State<Arc<Cluster>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admit(&c, &headers).await {
        return r;
    }
    let cause = String::from_utf8_lossy(&body);
    match c.note_incoming_cause(&cause) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}
