//! Replication: the openraft node, its network, membership and the cluster id guard.
//!
//! This module and `store/` are the only ones that see openraft types. The rest of
//! kura talks to [`Cluster`]: write a command, make a read linearizable, ask who
//! leads, form the cluster once.

mod errors;
mod formation;
pub mod frames;
mod handoff;
mod membership;
mod network;
mod peers;
mod server;
mod status;
mod transfer;

pub use errors::{FormError, FrameError, NoticeError, TransferError};
pub use membership::MembershipError;
pub use status::{Behind, ClusterStatus, MemberStatus, StatusWatch};

pub use network::{snapshot_chunk_path, Encoding, SnapshotDone, SNAPSHOT_CHUNK_BYTES};
pub use server::{
    admit_layer, frames_alternate, router as raft_router, sender_matches_certificate,
};

use crate::member::{Member, NodeId, Role};
use crate::net::HttpPool;
use crate::raft_types::TypeConfig;
use crate::setting::InvalidSetting;

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
    /// Wait instead for at least as many entries as the vault's tables held rows at the
    /// last snapshot, when that is more. A snapshot copies every row, so this keeps its
    /// cost per write bounded as the vault grows (a fixed interval makes it grow with
    /// the vault), at the price of a log about as long as the vault is large.
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
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.heartbeat_interval_ms == 0 {
            return Err(InvalidSetting::new(
                "raft.heartbeat_interval_ms",
                "must be greater than 0",
            ));
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err(InvalidSetting::new(
                "raft.election_timeout_min_ms",
                "must be greater than raft.heartbeat_interval_ms",
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(InvalidSetting::new(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms",
            ));
        }
        if self.snapshot_every_entries == 0 {
            return Err(InvalidSetting::new(
                "raft.snapshot_every_entries",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    fn to_openraft(&self) -> Result<openraft::Config, InvalidSetting> {
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
            // A follower started again with an empty data directory under its old id
            // (a replaced disk; the runbook's answer to a corrupt log or vault) answers
            // the leader's next append with a conflict below what it had matched. By
            // default openraft takes that for a broken log store and panics the
            // leader's Raft core, and the leader is lost with it. Allowed, the leader
            // starts that follower's replication afresh and catches it up (by snapshot
            // when its log no longer reaches back). The leader still hands over when
            // it sees the empty log in the follower's health reports
            // (`follower_lost_log`), as it did before openraft checked this; a wipe
            // that replication meets first no longer takes the leader down.
            allow_log_reversion: Some(true),
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| InvalidSetting::new("raft", format!("settings rejected: {e}")))
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

/// The cluster's members as one node sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The log index of the membership entry (`None`: from the config file).
    pub log_index: Option<u64>,
    /// Every member, voters and learners.
    pub nodes: Arc<BTreeMap<NodeId, Member>>,
    /// The voters (in a joint configuration, of both halves).
    pub voters: std::collections::BTreeSet<NodeId>,
    /// A membership change is half done (joint consensus).
    pub joint: bool,
}

/// A kura node's replication handle.
pub struct Cluster {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) store: Store,
    vault: Arc<SharedVault>,
    /// The members in the config file: who this node is, and whom to trust before the
    /// Raft membership is known (a node not yet formed or joined).
    configured: BTreeMap<NodeId, Member>,
    /// The Raft membership as last seen (see [`Cluster::members`]).
    seen: std::sync::Mutex<Option<Arc<Membership>>>,
    cluster_id: Arc<RwLock<Option<String>>>,
    pool: Arc<HttpPool>,
    /// Why the leader is about to hand leadership over (see `handoff`).
    incoming_cause: std::sync::Mutex<Option<HandoffNotice>>,
    /// Twice the longest election timeout: by then a cluster whose majority can talk has
    /// a leader (see [`Cluster::core_frozen`], [`Cluster::wait_for_leader`]).
    election_window: Duration,
    /// When the Raft core last published its state (see [`Cluster::core_frozen`]).
    core_seen_at: std::sync::Mutex<tokio::time::Instant>,
    /// The term in which this node, leading, last started a leader transfer (0: none;
    /// see [`Cluster::handing_over`]).
    transfer_term: std::sync::atomic::AtomicU64,
    /// The snapshot being received, a chunk at a time (see `server`).
    pub(crate) incoming_snapshot: tokio::sync::Mutex<Option<server::Upload>>,
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

/// How often [`Cluster::stopped`] looks at the Raft core's state.
const STOPPED_POLL: Duration = Duration::from_millis(250);

impl Cluster {
    /// Opens the Raft node over `store`: Raft's messages go through `raft_pool`, the
    /// rest of what it asks peers (status, health, transfers) through `pool`.
    /// `members` is every voter, this node included.
    pub async fn start(
        id: NodeId,
        members: BTreeMap<NodeId, Member>,
        settings: &RaftSettings,
        store: Store,
        pool: Arc<HttpPool>,
        raft_pool: Arc<HttpPool>,
    ) -> io::Result<Arc<Cluster>> {
        let mut config = settings.to_openraft().map_err(io::Error::other)?;
        // A member of a cluster of more than one node starts with elections off: the
        // failover controller turns them on once its first round has measured this
        // node's clock against the others' (decision 0030) and, on a member with a more
        // preferred one that may lead, once its start-up wait is over, so that a cluster
        // started again is led by main from its first election. A never-lead member
        // never starts an election; it still votes.
        config.enable_elect = members.len() <= 1
            && members.get(&id).is_none_or(|me| {
                !me.never_lead
                    && !crate::member::yields_at_start(
                        me.role,
                        members
                            .iter()
                            .filter(|(other, _)| **other != id)
                            .map(|(_, m)| (m.role, m.never_lead)),
                    )
            });
        let config = Arc::new(config);
        let cluster_id = Arc::new(RwLock::new(store.cluster_id()?));
        let sm = StateMachine::open(store.clone())?;
        let vault = sm.shared();
        crate::runtime::spawn(crate::store::durable_loop(
            Arc::downgrade(&vault),
            store.mode(),
        ));
        let (wanted, mut snapshot_wanted) = tokio::sync::mpsc::channel(1);
        let factory = network::NetworkFactory {
            self_id: id,
            pool: raft_pool,
            cluster_id: cluster_id.clone(),
            append_ttl_min: Duration::from_millis(settings.election_timeout_max_ms),
            freshness: Arc::new(network::Freshness {
                max_lag: settings.snapshot_every_entries,
                vault: vault.clone(),
                store: store.clone(),
                wanted,
            }),
        };
        let raft = Raft::new(id, config, factory, LogStore::new(store.clone()), sm)
            .await
            .map_err(|e| io::Error::other(format!("raft failed to start: {e}")))?;
        // Builds a snapshot when a follower's needs a fresher one (see
        // `network::Freshness`). Ends when Raft drops its network, and with it the
        // senders.
        let trigger = raft.clone();
        crate::runtime::spawn(async move {
            while snapshot_wanted.recv().await.is_some() {
                if let Err(e) = trigger.trigger().snapshot().await {
                    tracing::warn!(error = %e, "cannot start a snapshot a follower needs");
                }
            }
        });
        let election_window = Duration::from_millis(2 * settings.election_timeout_max_ms);
        Ok(Arc::new(Cluster {
            id,
            raft,
            store,
            vault,
            configured: members,
            seen: std::sync::Mutex::new(None),
            cluster_id,
            pool,
            incoming_cause: std::sync::Mutex::new(None),
            incoming_snapshot: tokio::sync::Mutex::new(None),
            election_window,
            core_seen_at: std::sync::Mutex::new(tokio::time::Instant::now()),
            transfer_term: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The replicated vault, as applied on this node.
    pub fn vault(&self) -> &Arc<SharedVault> {
        &self.vault
    }

    /// Runs `f` on the vault as applied, in one read transaction, off the async
    /// workers: for reads that visit the whole vault.
    pub async fn read_vault_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::VaultView) -> T + Send + 'static,
    ) -> Result<T, crate::vault::StorageError> {
        let vault = self.vault.clone();
        self.store
            .blocking(move || vault.read(f))
            .await
            .map_err(|e| crate::vault::StorageError::new(e.to_string()))?
    }

    /// Hashes the vault as a comparison marker left it — every row of every table, in
    /// order — off the async workers: its SHA-256 (hex) and how many rows, or `None` if
    /// `stop` was raised first (the hash lets go of the marker's read transaction then).
    /// With fault switches, the hash first waits while `hash_paused` is set.
    pub async fn hash_mark(
        &self,
        mark: crate::store::Mark,
        stop: Arc<std::sync::atomic::AtomicBool>,
        faults: Option<Arc<crate::faults::FaultSwitches>>,
    ) -> Result<Option<(String, u64)>, crate::vault::StorageError> {
        self.store
            .background("kura-hash", move || {
                if let Some(f) = &faults {
                    f.while_hash_paused(&stop);
                }
                let hashed = crate::vault::tables::digest_rows_unless(&mark.tables, &stop);
                match crate::vault::Tables::failure(&mark.tables) {
                    Some(e) => Err(e),
                    None => Ok(hashed),
                }
            })
            .await
            .map_err(|e| crate::vault::StorageError::new(e.to_string()))?
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// True when `id` is a member now (a voter or a learner).
    pub fn is_member(&self, id: NodeId) -> bool {
        self.membership().nodes.contains_key(&id)
    }

    /// This node's member record, from its config file.
    pub fn me(&self) -> &Member {
        &self.configured[&self.id]
    }

    /// The cluster id, once formed or joined.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.read().expect("cluster id lock").clone()
    }

    /// Every member (voters and learners): the Raft membership this node last applied
    /// or appended, or the config file's peers while it knows none.
    pub fn members(&self) -> Arc<BTreeMap<NodeId, Member>> {
        self.membership().nodes.clone()
    }

    /// The members and which of them vote, as this node sees the membership now.
    pub fn membership(&self) -> Arc<Membership> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let config = &m.membership_config;
        let log_id = config.log_id().map(|l| l.index);
        let mut seen = self.seen.lock().expect("membership lock");
        if let Some(s) = seen
            .as_ref()
            .filter(|s| s.log_index == log_id && log_id.is_some())
        {
            return s.clone();
        }
        let membership = config.membership();
        let fresh = if membership.nodes().next().is_some() {
            Membership {
                log_index: log_id,
                nodes: Arc::new(membership.nodes().map(|(i, n)| (*i, n.clone())).collect()),
                voters: membership.voter_ids().collect(),
                joint: membership.get_joint_config().len() > 1,
            }
        } else {
            Membership {
                log_index: None,
                nodes: Arc::new(self.configured.clone()),
                voters: self.configured.keys().copied().collect(),
                joint: false,
            }
        };
        let fresh = Arc::new(fresh);
        *seen = Some(fresh.clone());
        fresh
    }

    /// Lets this node stand for election on timeouts, or stops it (it still votes, and a
    /// leader transfer to it still works).
    pub fn set_elect(&self, enabled: bool) {
        self.raft.runtime_config().elect(enabled);
    }

    /// With `snapshot_grows_with_vault`, starts a snapshot once the entries applied since
    /// the last one reach `snapshot_every_entries` or `last_rows` (the rows in the
    /// vault's tables at the last snapshot), whichever is more. A snapshot copies every
    /// row, so this copies at most about one row per entry applied however large the
    /// vault grows, and keeps a log about as long as the vault is large. Returns the
    /// vault's rows at this snapshot when it started one.
    pub async fn snapshot_if_due(&self, every_entries: u64, last_rows: u64) -> Option<u64> {
        let s = self.status();
        let since = s
            .applied_index
            .saturating_sub(s.snapshot_index.unwrap_or(0));
        if since < every_entries.max(last_rows) {
            return None;
        }
        let rows = self.vault().rows().ok()?;
        self.raft.trigger().snapshot().await.ok().map(|()| rows)
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
            .or_else(|| self.configured.get(&id).cloned())?;
        Some((id, member))
    }

    /// Waits until this node can no longer do its part and says why: its Raft core
    /// stopped (openraft ends the core at a storage error: a log append, a vote, an
    /// apply or a snapshot that failed), its core panicked (its metrics channel closed,
    /// while the last state it published still reads as running), or the vault's file
    /// could not be written (redb
    /// takes no write after an I/O error until the database is opened again). Neither
    /// mends while the process runs; started again, the node replays its log from its
    /// last durable state. Never returns while the node is sound.
    ///
    /// The core's state is polled every [`STOPPED_POLL`]: the core publishes its
    /// metrics several times per write, and a task woken on each would add a thread
    /// wake-up to every write.
    pub async fn stopped(&self) -> String {
        let mut vault = self.vault.failure();
        let mut core = self.raft.metrics();
        loop {
            if let Err(e) = &core.borrow_watched().running_state {
                return format!("its Raft core stopped: {e}");
            }
            // A core that panicked publishes nothing more: its sender is gone with it,
            // and the last state it published still reads as running.
            if let Some(Err(_)) = futures::FutureExt::now_or_never(core.changed()) {
                return "its Raft core stopped: it panicked, a defect in kura or openraft (keep this log, the panic above included, for a report)".into();
            }
            if let Some(e) = vault.borrow_and_update().clone() {
                return format!("its vault could not be written: {e}");
            }
            tokio::select! {
                () = crate::runtime::sleep(STOPPED_POLL) => {}
                // The vault's sender lives as long as the vault: never closed before.
                _ = vault.changed() => {}
            }
        }
    }

    /// True when this node currently believes it leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// True when this node leads a term in which it has started a leader transfer.
    /// openraft keeps such a leader transferring for the rest of its term: it takes no
    /// writes and sends no heartbeats, waiting for the target's election. A target that
    /// never stands (its log could not catch up in time, the request was lost, it is
    /// drained) leaves it so, and only another node's election ends that term.
    pub fn handing_over(&self) -> bool {
        let (leads, term) = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            (m.state == ServerState::Leader, m.current_term)
        };
        let transfer_term = self
            .transfer_term
            .load(std::sync::atomic::Ordering::Acquire);
        leads && term == transfer_term
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

    /// True while this node's Raft core is saving a vote (see `store::LogStore`). Its
    /// vote changes only with the term — a leader stepping down for another, a
    /// candidate, a node granting its vote, a candidate that won — so meanwhile it is not
    /// a leader ready to serve, whatever it last published.
    pub fn saving_vote(&self) -> bool {
        self.store.saving_vote()
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
        use crate::timeline::{mark, mark_at, started, Stage};
        let proposed = started();
        match self.raft.client_write(cmd).await {
            Ok(r) => {
                mark_at(Stage::Propose, r.log_id.index, 0, proposed);
                mark(Stage::Proposed, r.log_id.index, 0);
                Ok(r.data)
            }
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
    ///
    /// A quorum that did not acknowledge within openraft's wait (a follower slow to
    /// answer on a loaded machine, or one restarting) is asked again until it does:
    /// the caller bounds the whole with its own timeout. Leadership that moved is
    /// answered at once.
    pub async fn linearize(&self) -> Result<(), WriteError> {
        loop {
            match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => return Ok(()),
                Err(e) => match e.forward_to_leader() {
                    Some(f) => {
                        return Err(WriteError::NotLeader {
                            leader: f.leader_node.clone(),
                        })
                    }
                    None if self.is_leader() => {
                        tracing::debug!(error = %e, "read index not confirmed by a quorum yet; asking again");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    None => return Err(WriteError::Unavailable(e.to_string())),
                },
            }
        }
    }

    /// The member id of the member named `name`.
    pub fn member_id(&self, name: &str) -> Option<NodeId> {
        self.members()
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(id, _)| *id)
    }

    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
