//! The Raft RPC server: the peer side of [`network`](super::network).

use super::network::{Encoding, SnapshotDone, BAD_REQUEST_PREFIX, SNAPSHOT_CHUNK_BYTES};
use super::{Cluster, CLUSTER_ID_HEADER, NODE_ID_HEADER};
use crate::member::NodeId;
use crate::net::tls::Identity as CertIdentity;
use crate::net::ClientIdentity;
use crate::raft_types::{Snapshot, TypeConfig};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use std::sync::Arc;

/// Largest AppendEntries body accepted: a batch of entries (openraft sends at most
/// `max_payload_entries` per request; a vault command is a few hundred bytes).
pub const APPEND_BODY_BYTES_MAX: usize = 64 << 20;
/// Largest vote, pre-vote, transfer or hand-off body: a few dozen bytes in practice.
pub const SMALL_RPC_BODY_BYTES_MAX: usize = 64 << 10;
/// Largest snapshot chunk accepted (a snapshot of any size comes in chunks of
/// [`SNAPSHOT_CHUNK_BYTES`], each written to its file before the next is sent).
pub const SNAPSHOT_CHUNK_BODY_BYTES_MAX: usize = 2 * SNAPSHOT_CHUNK_BYTES;

/// Routes for `/raft/*` on the peer listener. Each route has its own body limit,
/// enforced as the body streams in; the sender was authenticated by the handshake.
pub fn router(cluster: Arc<Cluster>) -> Router {
    let limit = DefaultBodyLimit::max;
    Router::new()
        .route(
            "/raft/append",
            post(append).layer(limit(APPEND_BODY_BYTES_MAX)),
        )
        .route("/raft/vote", post(vote))
        .route("/raft/pre-vote", post(pre_vote))
        .route(
            "/raft/snapshot/chunk",
            post(snapshot_chunk).layer(limit(SNAPSHOT_CHUNK_BODY_BYTES_MAX)),
        )
        .route("/raft/snapshot/done", post(snapshot_done))
        .route("/raft/transfer-leader", post(transfer_leader))
        .route("/raft/identity", get(identity))
        .route("/raft/handoff-cause", post(handoff_cause))
        .layer(limit(SMALL_RPC_BODY_BYTES_MAX))
        .with_state(cluster)
}

/// On a TLS peer plane, the node an RPC speaks for (the vote it carries) must be the
/// node whose certificate carried it: a certificate for node 2 cannot vote, append or
/// send a snapshot as node 3. Without TLS (the insecure mode) there is no identity.
/// Returns the refusal to send, if any.
fn sender_refusal(ident: Option<&ClientIdentity>, claimed: NodeId) -> Option<Response> {
    let who = ident.map(|ClientIdentity(who)| who)?;
    if speaks_for_itself(Some(who), claimed) {
        return None;
    }
    tracing::warn!(certificate = %who, claimed, "peer RPC refused: it speaks for another node");
    Some(
        (
            StatusCode::FORBIDDEN,
            format!("{who} may not speak for node {claimed}"),
        )
            .into_response(),
    )
}

/// Whether what speaks for `claimed` may come over a connection whose client
/// certificate names `ident`: only that node's, and anything without TLS (no identity).
/// Judges HTTP requests ([`sender_refusal`]) and framed connections alike.
pub(super) fn speaks_for_itself(ident: Option<&CertIdentity>, claimed: NodeId) -> bool {
    match ident {
        None => true,
        Some(CertIdentity::Node { id }) => *id == claimed,
        Some(_) => false,
    }
}

/// Middleware for the whole peer listener: on a TLS peer plane, the node a request says
/// it comes from (`kura-node-id`) must be the node its certificate names, whatever the
/// route (Raft RPCs, CVC copies, hand-off causes, health).
pub async fn sender_matches_certificate(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(ident) = req.extensions().get::<ClientIdentity>() {
        let claimed = req
            .headers()
            .get(NODE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<NodeId>().ok());
        let refusal = match claimed {
            Some(id) => sender_refusal(Some(ident), id),
            None => Some((StatusCode::FORBIDDEN, "kura-node-id missing").into_response()),
        };
        if let Some(r) = refusal {
            return r;
        }
    }
    next.run(req).await
}

/// Middleware for the peer routes outside Raft (CVC copies, audit events, health):
/// admits a request only from this node's own cluster (the `kura-cluster-id` header).
pub async fn admit_layer(
    axum::extract::State(c): axum::extract::State<Arc<Cluster>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(r) = admit(&c, req.headers()).await {
        return r;
    }
    next.run(req).await
}

/// The node a vote speaks for.
pub(super) fn voter(v: &crate::raft_types::Vote) -> NodeId {
    v.leader_id().voted_for
}

fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Response {
    reply_as(Encoding::Json, r)
}

/// Answers in `enc`, the encoding the request came in.
fn reply_as<T: Serialize, E: std::fmt::Display>(enc: Encoding, r: Result<T, E>) -> Response {
    match r {
        Ok(v) => (
            [(http::header::CONTENT_TYPE, enc.content_type())],
            enc.encode(&v),
        )
            .into_response(),
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
    admit_cluster(c, theirs)
        .await
        .map_err(|why| (StatusCode::CONFLICT, why).into_response())
}

/// [`admit`] for a sender in cluster `theirs`: why not, if not.
pub(super) async fn admit_cluster(c: &Cluster, theirs: &str) -> Result<(), String> {
    let ours = c.cluster_id();
    match ours.as_deref() {
        Some(ours) if ours == theirs => Ok(()),
        Some(ours) => Err(format!(
            "cluster id mismatch: this node is in {ours}, sender in {theirs:?}"
        )),
        None if theirs.is_empty() => Err("sender has no cluster id".into()),
        None => c.adopt_cluster_id(theirs).await.map_err(|e| e.to_string()),
    }
}

macro_rules! rpc_handler {
    ($name:ident, $method:ident, $sender:expr) => {
        async fn $name(
            State(c): State<Arc<Cluster>>,
            ident: Option<Extension<ClientIdentity>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            if let Err(r) = admit(&c, &headers).await {
                return r;
            }
            let Some(enc) = Encoding::of(&headers) else {
                return (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "raft requests are application/msgpack or application/json",
                )
                    .into_response();
            };
            match enc.decode(&body) {
                Ok(req) => {
                    if let Some(r) = sender_refusal(ident.as_deref(), $sender(&req)) {
                        return r;
                    }
                    reply_as(enc, c.raft.$method(req).await)
                }
                Err(e) => (
                    StatusCode::BAD_REQUEST,
                    format!("{}: {e}", String::from_utf8_lossy(BAD_REQUEST_PREFIX)),
                )
                    .into_response(),
            }
        }
    };
}

rpc_handler!(append, append_entries, |r: &AppendEntriesRequest<
    TypeConfig,
>| voter(&r.vote));
rpc_handler!(vote, vote, |r: &VoteRequest<TypeConfig>| voter(&r.vote));
rpc_handler!(pre_vote, pre_vote, |r: &VoteRequest<TypeConfig>| voter(
    &r.vote
));
rpc_handler!(
    transfer_leader,
    handle_transfer_leader,
    |r: &TransferLeaderRequest<TypeConfig>| voter(r.from_leader())
);

/// A snapshot being received: which upload, from whom, and its file so far.
pub(crate) struct Upload {
    transfer: String,
    from: Option<NodeId>,
    file: crate::store::SnapshotUpload,
}

#[derive(serde::Deserialize)]
struct ChunkQuery {
    transfer: String,
    offset: u64,
    crc: u32,
}

/// The sender's node id as its request names it (checked against its certificate by
/// [`sender_matches_certificate`] on a TLS plane).
fn sender(headers: &HeaderMap) -> Option<NodeId> {
    headers
        .get(NODE_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    (status, why.into()).into_response()
}

/// Refuses a snapshot this node could not keep: `507 Insufficient Storage` when it has
/// no room (its disk is full, or the snapshot would eat into the reserve:
/// `Store::room_for`), which tells the leader to wait before it sends the snapshot
/// again (see `PeerClient::no_room` in [`super::network`]), and 503 otherwise.
fn cannot_keep(what: &str, e: &std::io::Error) -> Response {
    tracing::warn!(error = %e, "{what}");
    if crate::files::no_room(e) {
        refuse(StatusCode::INSUFFICIENT_STORAGE, "no room for the snapshot")
    } else {
        refuse(StatusCode::SERVICE_UNAVAILABLE, "cannot keep the snapshot")
    }
}

/// One chunk of a snapshot: appended to the upload's file once its checksum holds, if
/// it comes where the upload stands (a chunk at offset 0 starts a new upload, replacing
/// any other).
async fn snapshot_chunk(
    State(c): State<Arc<Cluster>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ChunkQuery>,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&c, &headers).await {
        return r;
    }
    if crc32fast::hash(&body) != q.crc {
        return refuse(StatusCode::BAD_REQUEST, "snapshot chunk checksum mismatch");
    }
    let from = sender(&headers);
    let mut incoming = c.incoming_snapshot.lock().await;
    // Before anything is written: an upload that would eat into the reserve goes.
    if let Err(e) = c.store.room_for(body.len() as u64) {
        *incoming = None;
        return cannot_keep("no room for a received snapshot", &e);
    }
    if q.offset == 0 {
        match c.store.receive_snapshot() {
            Ok(file) => {
                *incoming = Some(Upload {
                    transfer: q.transfer.clone(),
                    from,
                    file,
                })
            }
            Err(e) => return cannot_keep("cannot keep a received snapshot", &e),
        }
    }
    let Some(up) = incoming
        .as_mut()
        .filter(|u| u.transfer == q.transfer && u.from == from && u.file.received() == q.offset)
    else {
        return refuse(
            StatusCode::CONFLICT,
            "no snapshot upload stands at this offset; start again from 0",
        );
    };
    if let Err(e) = up.file.append(body).await {
        *incoming = None;
        return cannot_keep("cannot write a received snapshot", &e);
    }
    StatusCode::OK.into_response()
}

/// The end of an upload: its file made durable and installed under the vote.
async fn snapshot_done(
    State(c): State<Arc<Cluster>>,
    ident: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&c, &headers).await {
        return r;
    }
    let done: SnapshotDone = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("bad snapshot request: {e}"),
            )
        }
    };
    if let Some(r) = sender_refusal(ident.as_deref(), voter(&done.vote)) {
        return r;
    }
    let from = sender(&headers);
    let up = {
        let mut incoming = c.incoming_snapshot.lock().await;
        match incoming.take() {
            Some(u) if u.transfer == done.transfer && u.from == from => u,
            other => {
                *incoming = other;
                return refuse(StatusCode::CONFLICT, "no such snapshot upload; start again");
            }
        }
    };
    if up.file.received() != done.len {
        return refuse(
            StatusCode::CONFLICT,
            format!(
                "{} of {} snapshot bytes arrived",
                up.file.received(),
                done.len
            ),
        );
    }
    let snapshot = match up.file.finish() {
        Ok(s) => s,
        Err(e) => return cannot_keep("cannot keep a received snapshot", &e),
    };
    if let Err(e) = c.store.write_received(&snapshot).await {
        return cannot_keep("cannot write the vault from a received snapshot", &e);
    }
    let snap = Snapshot {
        meta: done.meta,
        snapshot,
    };
    reply(c.raft.install_full_snapshot(done.vote, snap).await)
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
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

impl super::frames::Follower for Cluster {
    fn admit(&self, cluster: &str) -> crate::net::BoxFut<'_, Result<(), String>> {
        let cluster = cluster.to_owned();
        Box::pin(async move { admit_cluster(self, &cluster).await })
    }

    fn append(
        &self,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> crate::net::BoxFut<'_, super::frames::Answer> {
        Box::pin(async move {
            self.raft
                .append_entries(req)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The peer listener's second protocol: framed AppendEntries (see
/// [`frames`](super::frames)), each connection closed once idle for `idle_max`.
pub fn frames_alternate(
    cluster: Arc<Cluster>,
    idle_max: std::time::Duration,
) -> crate::net::Alternate {
    crate::net::Alternate {
        preface: super::frames::PREFACE,
        serve: Arc::new(move |io, ident, _peer| {
            let c = cluster.clone();
            Box::pin(async move { super::frames::serve(&*c, io, ident, idle_max).await })
        }),
    }
}
