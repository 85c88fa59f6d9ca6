//! Replication: the openraft node, its network, membership and the cluster id guard.
//!
//! This module and `store/` are the only ones that see openraft types. The rest of
//! kura talks to [`Cluster`]: write a command, make a read linearizable, ask who
//! leads, form the cluster once.

mod handoff;
mod network;
mod server;

pub use network::encode_snapshot;
pub use server::{admit_layer, router as raft_router, sender_matches_certificate};

use crate::member::{Member, NodeId, Role};
use crate::net::HttpPool;
use crate::raft_types::TypeConfig;

use crate::store::{LogStore, SharedVault, StateMachine, Store};
use crate::vault::{Command, Response};
use handoff::HandoffNotice;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// This node's Raft instance over kura's state machine.
pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;

/// Header carrying the sender's cluster id on every Raft RPC.
pub const CLUSTER_ID_HEADER: &str = "kura-cluster-id";
/// Request header naming the node a peer request comes from; on a TLS peer plane it
/// must be the node its certificate names.
pub const NODE_ID_HEADER: &str = "kura-node-id";

/// Raft timing and log retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Wait instead for at least as many entries as the vault held tokens at the last
    /// snapshot, when that is more. A snapshot serialises the whole vault, so this keeps
    /// its cost per write bounded as the vault grows (a fixed interval makes it grow
    /// with the vault), at the price of a log about as long as the vault is large.
    pub snapshot_grows_with_vault: bool,
    /// Entries kept in the log behind a snapshot, for followers that lag a little.
    pub log_entries_kept_after_snapshot: u64,
    /// Deadline for one snapshot upload.
    pub snapshot_send_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_every_entries: 10_000,
            snapshot_grows_with_vault: true,
            log_entries_kept_after_snapshot: 1_000,
            snapshot_send_timeout_ms: 60_000,
        }
    }
}

impl RaftSettings {
    /// Checks the settings; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms == 0 {
            return Err("raft.heartbeat_interval_ms must be greater than 0".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err(
                "raft.election_timeout_min_ms must be greater than raft.heartbeat_interval_ms"
                    .into(),
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(
                "raft.election_timeout_max_ms must be greater than raft.election_timeout_min_ms"
                    .into(),
            );
        }
        if self.snapshot_every_entries == 0 {
            return Err("raft.snapshot_every_entries must be greater than 0".into());
        }
        Ok(())
    }

    fn to_openraft(&self) -> Result<openraft::Config, String> {
        let cfg = openraft::Config {
            cluster_name: "kura".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // With a vault-sized interval, kura triggers snapshots itself
            // (`Cluster::snapshot_if_due`).
            snapshot_policy: if self.snapshot_grows_with_vault {
                SnapshotPolicy::Never
            } else {
                SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries)
            },
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            install_snapshot_timeout: self.snapshot_send_timeout_ms,
            enable_pre_vote: Some(true),
            // A restarted leader must win a new election. openraft 0.10 restores it as
            // leader of its old term by default; but a leader whose own disk fell behind
            // (entries committed by the two followers while its commits stalled) then
            // comes back with a shorter log and overwrites committed entries. The chaos
            // sweep found this (storage stall on the leader, then a crash).
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| format!("raft settings rejected: {e}"))
    }
}

/// Why a replicated write did not produce a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// This node is not the leader; nothing was proposed. Safe to retry elsewhere.
    #[error("this node is not the leader")]
    NotLeader { leader: Option<Member> },
    /// The entry was proposed but leadership changed: it may or may not commit.
    #[error("leadership changed while the write was in flight; its outcome is unknown")]
    Unknown,
    /// No quorum, or the node is shutting down.
    #[error("replication unavailable: {0}")]
    Unavailable(String),
}

/// The outcome of `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitOutcome {
    pub cluster_id: String,
    pub already_initialized: bool,
}

/// Wakes when this node's Raft status changes. Hold one; do not create one per wait.
pub struct StatusWatch {
    rx: openraft::type_config::alias::WatchReceiverOf<
        crate::raft_types::TypeConfig,
        openraft::RaftMetrics<crate::raft_types::TypeConfig>,
    >,
}

impl StatusWatch {
    /// Waits for the next change; false once the Raft node has stopped.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

/// A kura node's replication handle.
pub struct Cluster {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) store: Store,
    vault: Arc<SharedVault>,
    members: BTreeMap<NodeId, Member>,
    cluster_id: Arc<RwLock<Option<String>>>,
    pool: Arc<HttpPool>,
    /// Why the leader is about to hand leadership over (see `handoff`).
    incoming_cause: std::sync::Mutex<Option<HandoffNotice>>,
    /// Twice the longest election timeout: by then a cluster whose majority can talk has
    /// a leader (see [`Cluster::core_frozen`], [`Cluster::wait_for_leader`]).
    election_window: Duration,
    /// When the Raft core last published its state (see [`Cluster::core_frozen`]).
    core_seen_at: std::sync::Mutex<tokio::time::Instant>,
}

/// A request from node `from` to a peer's listener, carrying the cluster id.
pub(crate) fn peer_request(
    from: NodeId,
    method: http::Method,
    path: &str,
    addr: &str,
    cluster_id: &str,
    body: bytes::Bytes,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr)
        .header(NODE_ID_HEADER, from)
        .header(CLUSTER_ID_HEADER, cluster_id)
        .body(http_body_util::Full::new(body))
        .expect("valid peer request")
}

/// One member's view in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub role: Role,
    pub api_addr: String,
    pub raft_addr: String,
    /// Last log index known replicated to this member (leader's view only).
    pub matched_index: Option<u64>,
    /// Entries this member is behind the leader's last log (leader's view only).
    pub lag_entries: Option<u64>,
}

/// This node's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub name: String,
    pub role: Role,
    pub cluster_id: Option<String>,
    pub state: String,
    pub leader_id: Option<NodeId>,
    pub leader_name: Option<String>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

impl Cluster {
    /// Opens the Raft node over `store`, talking to peers through `pool`.
    /// `members` is every voter, this node included.
    pub async fn start(
        id: NodeId,
        members: BTreeMap<NodeId, Member>,
        settings: &RaftSettings,
        store: Store,
        pool: Arc<HttpPool>,
    ) -> io::Result<Arc<Cluster>> {
        let mut config = settings.to_openraft().map_err(io::Error::other)?;
        // A never-lead member never starts an election; it still votes.
        config.enable_elect = !members.get(&id).is_some_and(|m| m.never_lead);
        let config = Arc::new(config);
        let cluster_id = Arc::new(RwLock::new(store.cluster_id()?));
        let sm = StateMachine::open(store.clone())?;
        let vault = sm.shared();
        let factory = network::NetworkFactory {
            self_id: id,
            pool: pool.clone(),
            cluster_id: cluster_id.clone(),
            append_ttl_min: Duration::from_millis(settings.election_timeout_max_ms),
        };
        let raft = Raft::new(id, config, factory, LogStore::new(store.clone()), sm)
            .await
            .map_err(|e| io::Error::other(format!("raft failed to start: {e}")))?;
        let election_window = Duration::from_millis(2 * settings.election_timeout_max_ms);
        Ok(Arc::new(Cluster {
            id,
            raft,
            store,
            vault,
            members,
            cluster_id,
            pool,
            incoming_cause: std::sync::Mutex::new(None),
            election_window,
            core_seen_at: std::sync::Mutex::new(tokio::time::Instant::now()),
        }))
    }

    /// The replicated vault, as applied on this node.
    pub fn vault(&self) -> &Arc<SharedVault> {
        &self.vault
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// True when `id` is one of the configured members.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// This node's configured member record.
    pub fn me(&self) -> &Member {
        &self.members[&self.id]
    }

    /// The cluster id, once formed or joined.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.read().expect("cluster id lock").clone()
    }

    async fn adopt_cluster_id(&self, id: &str) -> Result<(), String> {
        if self.store.has_raft_state().map_err(|e| e.to_string())? {
            return Err("this node has Raft data but no cluster id; refusing to join".into());
        }
        self.store
            .set_cluster_id(id)
            .await
            .map_err(|e| e.to_string())?;
        *self.cluster_id.write().expect("cluster id lock") = Some(id.to_owned());
        tracing::info!(cluster_id = id, "joined cluster");
        Ok(())
    }

    /// Admits a peer request only from this node's own cluster (the `kura-cluster-id`
    /// header); the error is the response to send.
    pub async fn admit_peer(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<(), axum::response::Response> {
        server::admit(self, headers).await
    }

    /// POSTs `body` to `path` on every other member's peer listener in parallel, each
    /// bounded by `timeout`. Returns how many answered with success. Best effort: a
    /// failure is logged at debug level and counted out, never retried.
    pub async fn post_to_peers(&self, path: &str, body: bytes::Bytes, timeout: Duration) -> usize {
        let cluster = self.cluster_id().unwrap_or_default();
        let sends = self
            .members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, m)| {
                let req =
                    peer_request(self.id, http::Method::POST, path, &m.raft_addr, &cluster, body.clone());
                let addr = m.raft_addr.clone();
                async move {
                    match self.pool.send(&addr, req, timeout).await {
                        Ok(r) if r.status().is_success() => true,
                        other => {
                            tracing::debug!(peer = %addr, path, outcome = ?other.map(|r| r.status()), "peer post failed");
                            false
                        }
                    }
                }
            });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// POSTs `body` to `path` on member `to`'s peer listener, bounded by `timeout`; true
    /// when it answered with success.
    pub async fn post_to_peer(
        &self,
        to: NodeId,
        path: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> bool {
        let Some(m) = self.members.get(&to) else {
            return false;
        };
        let cluster = self.cluster_id().unwrap_or_default();
        let req = peer_request(
            self.id,
            http::Method::POST,
            path,
            &m.raft_addr,
            &cluster,
            body,
        );
        match self.pool.send(&m.raft_addr, req, timeout).await {
            Ok(r) if r.status().is_success() => true,
            other => {
                tracing::debug!(peer = %m.raft_addr, path, outcome = ?other.map(|r| r.status()), "peer post failed");
                false
            }
        }
    }

    /// GETs `path` from every other member's peer listener in parallel, each bounded by
    /// `timeout`: the body of each success, `None` for each failure.
    pub async fn get_from_peers(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Vec<(NodeId, Option<bytes::Bytes>)> {
        let cluster = self.cluster_id().unwrap_or_default();
        let gets = self
            .members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| {
                let req = peer_request(
                    self.id,
                    http::Method::GET,
                    path,
                    &m.raft_addr,
                    &cluster,
                    bytes::Bytes::new(),
                );
                let addr = m.raft_addr.clone();
                async move {
                    let body = match self.pool.send(&addr, req, timeout).await {
                        Ok(r) if r.status().is_success() => Some(r.into_body()),
                        Ok(_) => None,
                        Err(_) => {
                            self.pool.forget(&addr);
                            None
                        }
                    };
                    (*id, body)
                }
            });
        futures::future::join_all(gets).await
    }

    /// Holds a leader's handoff notice (`cause term`) until the next leader is seen.
    pub(crate) fn note_incoming_cause(&self, body: &str) -> Result<(), String> {
        let notice = HandoffNotice::parse(body, self.status().term, tokio::time::Instant::now())?;
        *self.incoming_cause.lock().expect("cause lock") = Some(notice);
        Ok(())
    }

    /// The cause this node records on becoming leader of `term`, if a handoff notice
    /// speaks for it (see `handoff::cause_for`).
    pub fn incoming_cause_for(&self, term: u64) -> Option<crate::vault::LeaderChangeCause> {
        let held = self.incoming_cause.lock().expect("cause lock");
        handoff::cause_for(&held, term, tokio::time::Instant::now())
    }

    /// Drops a notice that a recorded leader change of `recorded_term` has used or
    /// passed (see `handoff::settle`).
    pub fn settle_incoming_cause(&self, recorded_term: u64) {
        handoff::settle(
            &mut self.incoming_cause.lock().expect("cause lock"),
            recorded_term,
        );
    }

    /// Every configured member.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// Lets this node stand for election on timeouts, or stops it (it still votes, and a
    /// leader transfer to it still works).
    pub fn set_elect(&self, enabled: bool) {
        self.raft.runtime_config().elect(enabled);
    }

    /// With `snapshot_grows_with_vault`, starts a snapshot once the entries applied since
    /// the last one reach `snapshot_every_entries` or `last_tokens` (the vault's token
    /// count at the last snapshot), whichever is more: the interval doubles as long as
    /// the vault does, so snapshot work per write stays bounded. Returns the token count
    /// at this snapshot when it started one.
    pub async fn snapshot_if_due(&self, every_entries: u64, last_tokens: u64) -> Option<u64> {
        let s = self.status();
        let since = s
            .applied_index
            .saturating_sub(s.snapshot_index.unwrap_or(0));
        if since < every_entries.max(last_tokens) {
            return None;
        }
        let tokens = self.vault().read(|v| v.token_count()) as u64;
        self.raft.trigger().snapshot().await.ok().map(|()| tokens)
    }

    /// The leader this node knows of, other than `not`, waiting for an election to bring
    /// one for up to twice the longest election timeout. `None` if none came.
    pub async fn wait_for_leader(&self, not: Option<NodeId>) -> Option<(NodeId, Member)> {
        let mut watch = self.watch();
        let wait = async {
            loop {
                if let Some(l) = self.leader().filter(|(id, _)| Some(*id) != not) {
                    return Some(l);
                }
                if !watch.changed().await {
                    return None;
                }
            }
        };
        tokio::time::timeout(self.election_window, wait)
            .await
            .ok()
            .flatten()
    }

    /// The leader this node knows of, with its member record.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let member = m
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
            .or_else(|| self.members.get(&id).cloned())?;
        Some((id, member))
    }

    /// True when this node currently believes it leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The index of the last entry in this node's log (0 when empty).
    pub fn last_log_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0)
    }

    /// True when this node's Raft core has published nothing for twice the longest
    /// election timeout: it is stuck on its own storage. A live core publishes its state
    /// at least every tick (a heartbeat interval). openraft saves a vote inline, so a
    /// leader that steps down while its storage stalls freezes — with its published
    /// state still saying "leader" — until the stall ends. Requests should go elsewhere
    /// rather than wait on it. Needs [`Self::core_seen`] called on every change.
    pub fn core_frozen(&self) -> bool {
        self.core_seen_at.lock().expect("core lock").elapsed() > self.election_window
    }

    /// Notes that the Raft core just published its state (see [`Self::core_frozen`]).
    pub fn core_seen(&self) {
        *self.core_seen_at.lock().expect("core lock") = tokio::time::Instant::now();
    }

    /// Runs `fut`, a wait on this node's Raft core, unless the core freezes first
    /// ([`Self::core_frozen`], polled: a stuck core publishes nothing to watch); `None`
    /// then.
    pub async fn unless_core_freezes<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        let frozen = async {
            let poll = self.election_window / 4;
            while !self.core_frozen() {
                crate::runtime::sleep(poll).await;
            }
        };
        tokio::select! {
            biased;
            r = fut => Some(r),
            () = frozen => None,
        }
    }

    /// Waits until this leader has applied an entry of its own term — its term-start
    /// blank entry — so that its vault reflects every write acknowledged before it led.
    /// Until then its local state may lag: a merchant created a moment ago would not
    /// authenticate. Fails at once if this node is not the leader.
    pub async fn leader_caught_up(&self, timeout: Duration) -> Result<(), WriteError> {
        // The common case costs one read of three fields; a watch is made only to wait.
        if let Some(done) = self.caught_up_now() {
            return done;
        }
        let mut watch = self.watch();
        let wait = async {
            loop {
                if let Some(done) = self.caught_up_now() {
                    return done;
                }
                if !watch.changed().await {
                    return Err(WriteError::Unavailable("the Raft node stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(WriteError::Unavailable(
                    "the new leader did not catch up in time".into(),
                ))
            })
    }

    /// `Some(Ok)` once this leader applied an entry of its term, `Some(Err)` if it is not
    /// the leader, `None` while it still has to wait.
    fn caught_up_now(&self) -> Option<Result<(), WriteError>> {
        let (is_leader, caught_up) = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            (
                m.state == ServerState::Leader,
                m.last_applied.map(|l| l.leader_id.term) == Some(m.current_term),
            )
        };
        if !is_leader {
            return Some(Err(WriteError::NotLeader {
                leader: self.leader().map(|(_, m)| m),
            }));
        }
        caught_up.then_some(Ok(()))
    }

    /// Proposes `cmd` and waits until it is committed and applied here.
    pub async fn write(&self, cmd: Command) -> Result<Response, WriteError> {
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader {
                    leader: f.leader_node,
                })
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(WriteError::Unknown)
            }
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Returns once this node's state machine reflects every write committed before the
    /// call (read-index through the leader's quorum). Only the leader can do this.
    pub async fn linearize(&self) -> Result<(), WriteError> {
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(WriteError::NotLeader {
                    leader: f.leader_node.clone(),
                }),
                None => Err(WriteError::Unavailable(e.to_string())),
            },
        }
    }

    /// Forms the cluster from the configured members, once.
    ///
    /// Idempotent: a node that already has a cluster id answers with it. Refuses if any
    /// peer already belongs to a cluster or holds Raft data, so that two clusters are
    /// never silently merged or formed twice.
    pub async fn init(&self, id_if_new: String) -> Result<InitOutcome, String> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| e.to_string())?;
        let existing = self.cluster_id();
        match (&existing, initialized) {
            (Some(id), true) => {
                return Ok(InitOutcome {
                    cluster_id: id.clone(),
                    already_initialized: true,
                });
            }
            // An earlier init recorded the id but did not finish: finish it with that id.
            (Some(_), false) => {}
            (None, _) if self.store.has_raft_state().map_err(|e| e.to_string())? => {
                return Err(
                    "this node has Raft data but no cluster id; refusing to form a cluster".into(),
                );
            }
            (None, _) => {}
        }
        let id = existing.unwrap_or(id_if_new);
        self.check_peers_can_join(&id).await?;
        self.store
            .set_cluster_id(&id)
            .await
            .map_err(|e| e.to_string())?;
        *self.cluster_id.write().expect("cluster id lock") = Some(id.clone());
        self.raft
            .initialize(self.members.clone())
            .await
            .map_err(|e| format!("raft initialize failed: {e}"))?;
        tracing::info!(cluster_id = %id, members = self.members.len(), "cluster formed");
        Ok(InitOutcome {
            cluster_id: id,
            already_initialized: false,
        })
    }

    /// Every peer must answer, be the node the config says, and belong to no cluster
    /// other than `id` (a peer may already carry `id` from an unfinished init).
    async fn check_peers_can_join(&self, id: &str) -> Result<(), String> {
        for (peer_id, m) in self.members.iter().filter(|(i, _)| **i != self.id) {
            let ident = self
                .peer_identity(m)
                .await
                .map_err(|e| format!("peer {} ({}) unreachable: {e}", m.name, m.raft_addr))?;
            if ident.node_id != *peer_id {
                return Err(format!(
                    "peer at {} says it is node {}, config says {peer_id}",
                    m.raft_addr, ident.node_id
                ));
            }
            match ident.cluster_id {
                Some(theirs) if theirs != id => {
                    return Err(format!(
                        "peer {} already belongs to cluster {theirs}",
                        m.name
                    ));
                }
                None if ident.has_data => {
                    return Err(format!("peer {} has Raft data but no cluster id", m.name))
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn peer_identity(&self, m: &Member) -> Result<server::Identity, String> {
        let req = http::Request::get("/raft/identity")
            .header(http::header::HOST, &m.raft_addr)
            .header(NODE_ID_HEADER, self.id)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("valid request");
        let resp = self
            .pool
            .send(&m.raft_addr, req, Duration::from_secs(3))
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(resp.body()).map_err(|e| e.to_string())
    }

    /// The member id of the voter named `name`.
    pub fn member_id(&self, name: &str) -> Option<NodeId> {
        self.members
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(id, _)| *id)
    }

    /// Hands leadership to `to` for `cause` and waits until this node has applied the
    /// next leader's record of the change, up to `timeout`. Every peer is told the cause
    /// first (see `handoff`); `to` must have taken the notice. Only the leader
    /// can do this. Fails if another node took over instead (the transfer's election
    /// went to it), although leadership has then still moved.
    pub async fn transfer_leader(
        &self,
        to: NodeId,
        cause: crate::vault::LeaderChangeCause,
        timeout: Duration,
    ) -> Result<(), String> {
        if !self.is_leader() {
            return Err("this node is not the leader".into());
        }
        if !self.members.contains_key(&to) {
            return Err(format!("node {to} is not a member"));
        }
        let from_term = self.status().term;
        let notice = bytes::Bytes::from(HandoffNotice::body(cause, from_term));
        let cluster_id = self.cluster_id().unwrap_or_default();
        let sends = self
            .members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, m)| {
                let req = peer_request(
                    self.id,
                    http::Method::POST,
                    "/raft/handoff-cause",
                    &m.raft_addr,
                    &cluster_id,
                    notice.clone(),
                );
                // Only the target's answer is waited for in full: a peer that is down
                // or cut off must not hold the handoff up.
                let bound = if *id == to {
                    timeout
                } else {
                    self.election_window.min(timeout)
                };
                async move { (*id, self.pool.send(&m.raft_addr, req, bound).await) }
            });
        for (id, answer) in futures::future::join_all(sends).await {
            match answer {
                Ok(r) if r.status().is_success() => {}
                other if id == to => {
                    return Err(format!(
                        "node {to} did not take the handoff notice: {:?}",
                        other.map(|r| r.status())
                    ))
                }
                // Another peer that missed the notice would record a takeover of its
                // own as crash_or_partition; the transfer itself does not need it.
                other => {
                    tracing::debug!(peer = id, answer = ?other.map(|r| r.status()), "handoff notice not taken")
                }
            }
        }
        // This node holds the notice too: should the transfer's election come back to it,
        // that change is still the handoff's doing.
        self.note_incoming_cause(&String::from_utf8_lossy(&notice))?;
        let mut watch = self.watch();
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| e.to_string())?;
        // Done once the next leader's record of the change (with the cause) has reached
        // this node: leadership moved again too soon would otherwise leave a term whose
        // change was never recorded.
        let recorded = || {
            self.vault().read(|v| {
                v.last_leader_change()
                    .filter(|c| c.term > from_term)
                    .map(|c| c.leader_node)
            })
        };
        let wait = async {
            loop {
                if let Some(leader) = recorded() {
                    return Ok(leader);
                }
                if !watch.changed().await {
                    return Err("the Raft node stopped".to_owned());
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(leader)) if leader == to => Ok(()),
            Ok(Ok(leader)) => Err(format!(
                "node {leader} took leadership instead of node {to}"
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "node {to} did not take leadership within {timeout:?}"
            )),
        }
    }

    /// A snapshot of this node's Raft view, for status and metrics.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let last = m.last_log_index.unwrap_or(0);
        let nodes: BTreeMap<NodeId, Member> = if membership.nodes().next().is_some() {
            membership.nodes().map(|(i, n)| (*i, n.clone())).collect()
        } else {
            self.members.clone()
        };
        let members = nodes
            .into_iter()
            .map(|(id, n)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id))
                    .map(|l| l.map_or(0, |l| l.index));
                let matched = if id == self.id && m.state == ServerState::Leader {
                    Some(last)
                } else {
                    matched
                };
                MemberStatus {
                    id,
                    name: n.name,
                    role: n.role,
                    api_addr: n.api_addr,
                    raft_addr: n.raft_addr,
                    matched_index: matched,
                    lag_entries: matched.map(|x| last.saturating_sub(x)),
                }
            })
            .collect();
        let leader_name = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.name.clone()));
        ClusterStatus {
            node_id: self.id,
            name: self.me().name.clone(),
            role: self.me().role,
            cluster_id: self.cluster_id(),
            state: format!("{:?}", m.state).to_lowercase(),
            leader_id: m.current_leader,
            leader_name,
            term: m.current_term,
            last_log_index: last,
            committed_index: m.local_committed.map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
        }
    }

    /// A watcher that wakes when the Raft status changes (for the metrics updater).
    pub fn watch(&self) -> StatusWatch {
        let mut rx = self.raft.metrics();
        // A clone of openraft's receiver has seen no version yet: mark the current one seen,
        // or the first `changed()` — and every one after — would return at once.
        let _ = rx.borrow_and_update();
        StatusWatch { rx }
    }

    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
