//! The Raft network client: each RPC is one HTTP POST to the peer's Raft listener,
//! carrying this cluster's id and bounded by openraft's hard TTL.

use crate::member::{Member, NodeId};
use crate::net::{HttpPool, WireError};
use crate::raft_types::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use bytes::Bytes;
use futures::FutureExt;
use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Creates one [`PeerClient`] per target node.
pub struct NetworkFactory {
    pub(super) self_id: NodeId,
    pub(super) pool: Arc<HttpPool>,
    pub(super) cluster_id: Arc<RwLock<Option<String>>>,
    /// The least time an AppendEntries is given (see [`PeerClient::append_entries`]).
    pub(super) append_ttl_min: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            self_id: self.self_id,
            target,
            addr: node.raft_addr.clone(),
            pool: self.pool.clone(),
            cluster_id: self.cluster_id.clone(),
            append_ttl_min: self.append_ttl_min,
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    self_id: NodeId,
    target: NodeId,
    addr: String,
    pool: Arc<HttpPool>,
    cluster_id: Arc<RwLock<Option<String>>>,
    append_ttl_min: Duration,
}

#[derive(Debug)]
enum Fail {
    Timeout(Duration),
    Unreachable(String),
}

impl PeerClient {
    async fn post(&self, path: &str, body: Bytes, ttl: Duration) -> Result<Bytes, Fail> {
        let cluster = self
            .cluster_id
            .read()
            .expect("cluster id lock")
            .clone()
            .unwrap_or_default();
        let req = super::peer_request(
            self.self_id,
            http::Method::POST,
            path,
            &self.addr,
            &cluster,
            body,
        );
        let result = self.pool.send(&self.addr, req, ttl).await;
        if result.is_err() {
            // A peer that crashed without closing its sockets leaves idle connections that
            // would each swallow a request until its deadline: start afresh.
            self.pool.forget(&self.addr);
        }
        match result {
            Ok(resp) if resp.status().is_success() => Ok(resp.into_body()),
            Ok(resp) => Err(Fail::Unreachable(format!(
                "{} answered {}: {}",
                self.addr,
                resp.status(),
                String::from_utf8_lossy(resp.body())
            ))),
            Err(WireError::Timeout { timeout, .. }) => Err(Fail::Timeout(timeout)),
            Err(e) => Err(Fail::Unreachable(e.to_string())),
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let body = Bytes::from(serde_json::to_vec(req).expect("raft messages serialize"));
        match self.post(path, body, ttl).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                RPCError::Network(NetworkError::from_string(format!(
                    "bad {action:?} response: {e}"
                )))
            }),
            Err(f) => Err(self.rpc_error(action, f)),
        }
    }

    fn rpc_error(&self, action: RPCTypes, f: Fail) -> RPCError<TypeConfig> {
        match f {
            Fail::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.self_id,
                target: self.target,
                timeout,
            }),
            Fail::Unreachable(msg) => RPCError::Unreachable(Unreachable::from_string(msg)),
        }
    }
}

/// A snapshot goes to a peer in chunks of this size, one at a time: the next is sent
/// once the receiver has written the last to its file (back-pressure), so neither side
/// holds more than a chunk of it in memory.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

/// The last request of a snapshot upload: what the chunks make up, and the vote and
/// meta to install it under.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct SnapshotDone {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    /// The upload the chunks belong to.
    pub transfer: String,
    /// Bytes in all.
    pub len: u64,
}

/// The query of one chunk: the upload, where the chunk goes, and its CRC-32.
pub fn snapshot_chunk_path(transfer: &str, offset: u64, crc: u32) -> String {
    format!("/raft/snapshot/chunk?transfer={transfer}&offset={offset}&crc={crc}")
}

impl PeerClient {
    /// Sends `snapshot` a chunk at a time, then asks the peer to install it.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Bytes, Fail> {
        let data = &snapshot.snapshot;
        let index = snapshot.meta.last_log_id.map_or(0, |l| l.index);
        let transfer = format!(
            "{}-{}-{}-{}",
            self.self_id,
            vote.leader_id().term,
            index,
            data.len()
        );
        let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES.min(data.len() as usize)];
        let mut offset = 0u64;
        while offset < data.len() {
            let n = SNAPSHOT_CHUNK_BYTES.min((data.len() - offset) as usize);
            data.read_at(offset, &mut buf[..n])
                .map_err(|e| Fail::Unreachable(format!("cannot read the snapshot: {e}")))?;
            let path = snapshot_chunk_path(&transfer, offset, crc32fast::hash(&buf[..n]));
            self.post(&path, Bytes::copy_from_slice(&buf[..n]), ttl)
                .await?;
            offset += n as u64;
        }
        let done = SnapshotDone {
            vote,
            meta: snapshot.meta.clone(),
            transfer,
            len: data.len(),
        };
        let body = Bytes::from(serde_json::to_vec(&done).expect("snapshot meta serializes"));
        // Installing writes the whole vault into a new file: give it time by its size
        // (at 20 MB/s at least) on top of the usual deadline.
        let install = ttl + Duration::from_secs(data.len() / (20 << 20));
        self.post("/raft/snapshot/done", body, install).await
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    /// A follower answers an AppendEntries once the entries are on its disk. openraft
    /// bounds it by the heartbeat interval (50 ms by default), which a busy disk's fsync
    /// overruns now and then: the leader then drops its connections, backs off and sends
    /// the entries again, and a follower with a slow disk falls behind for good. Entries
    /// get at least `append_ttl_min` (the longest election timeout); heartbeats stay
    /// bounded by openraft's own timer.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let ttl = option.hard_ttl().max(self.append_ttl_min);
        self.call(RPCTypes::AppendEntries, "/raft/append", &rpc, ttl)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RPCTypes::Vote, "/raft/vote", &rpc, option.hard_ttl())
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RPCTypes::Vote, "/raft/pre-vote", &rpc, option.hard_ttl())
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let bytes = snapshot.snapshot.len();
        let send = self.send_snapshot(vote, &snapshot, option.hard_ttl());
        futures::pin_mut!(send);
        let cancel = cancel.fuse();
        futures::pin_mut!(cancel);
        let res = futures::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send.fuse() => r,
        };
        if let Err(e) = &res {
            // openraft retries quietly; a follower that never takes its snapshot never
            // catches up, so say so where operators look.
            tracing::warn!(target_node = self.target, bytes, error = ?e, "snapshot upload failed");
        }
        match res {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StreamingError::Network(NetworkError::from_string(format!(
                    "bad snapshot response: {e}"
                )))
            }),
            Err(Fail::Timeout(timeout)) => Err(StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: self.self_id,
                target: self.target,
                timeout,
            })),
            Err(Fail::Unreachable(msg)) => {
                Err(StreamingError::Unreachable(Unreachable::from_string(msg)))
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            RPCTypes::TransferLeader,
            "/raft/transfer-leader",
            &req,
            option.hard_ttl(),
        )
        .await
    }
}
