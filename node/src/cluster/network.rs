//! The Raft network client: each RPC is one HTTP POST to the peer's Raft listener,
//! carrying this cluster's id and bounded by openraft's hard TTL.

use crate::member::{Member, NodeId};
use crate::net::{HttpPool, WireError};
use crate::raft_types::{Built, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Creates one [`PeerClient`] per target node.
pub struct NetworkFactory {
    pub(super) self_id: NodeId,
    pub(super) pool: Arc<HttpPool>,
    pub(super) cluster_id: Arc<RwLock<Option<String>>>,
    /// The least time an AppendEntries is given (see [`PeerClient::append_entries`]).
    pub(super) append_ttl_min: Duration,
    pub(super) freshness: Arc<Freshness>,
}

/// How fresh a snapshot sent to a follower must be.
///
/// With snapshots as far apart as the vault is large (`snapshot_grows_with_vault`),
/// the current one can be hundreds of thousands of entries behind: a follower that
/// needs one (wiped, or back after the log it lacked was purged) would install it and
/// then replay all of those entries one append at a time — at one million cards, 30 of
/// its 36 seconds. Instead the leader builds a new snapshot first when the current one
/// lags the applied state by more than `max_lag` entries: the build streams the vault
/// once, a fraction of the replay's cost.
pub(super) struct Freshness {
    /// Entries the snapshot sent may lag the applied state (`raft.snapshot_every_entries`).
    pub(super) max_lag: u64,
    pub(super) vault: Arc<crate::store::SharedVault>,
    pub(super) store: crate::store::Store,
    /// Asks the cluster for a snapshot now (see `Cluster::start`).
    pub(super) wanted: tokio::sync::mpsc::Sender<()>,
}

/// How long a follower's snapshot waits for a fresher one to be built, at most; after
/// that the one there is is sent.
const FRESH_SNAPSHOT_WAIT: Duration = Duration::from_secs(60);
/// After waiting once, a send of the same follower's snapshot does not wait again for
/// this long (a build that cannot keep up with the writes is not chased).
const FRESH_SNAPSHOT_WAIT_AGAIN: Duration = Duration::from_secs(60);
/// A follower that had no room for its snapshot (it answered 507) is sent it again
/// after this pause, doubled after each such answer up to [`NO_ROOM_PAUSE_MAX`]
/// (decision 0034): openraft would send it again about once a second, each time
/// building or reading the snapshot for nothing until the follower's operator frees
/// space. The same when this node had no room to build the file (decision 0035).
const NO_ROOM_PAUSE_FIRST: Duration = Duration::from_secs(1);
/// The longest pause before a snapshot goes again to a follower that had no room: how
/// long a follower whose operator has freed space may wait for it.
const NO_ROOM_PAUSE_MAX: Duration = Duration::from_secs(60);

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
            json_only: AtomicBool::new(false),
            freshness: self.freshness.clone(),
            waited_at: None,
            no_room: None,
            frames: std::sync::Mutex::new(None),
            frames_refused_at: None,
        }
    }
}

/// How long a request that only tells a follower the new commit index waits for the
/// next request with entries, which carries the same news.
///
/// openraft follows every commit with such a request to each follower. At one client,
/// that doubled the Raft plane's traffic: each write was two round trips to each
/// follower, where the next write's entries would have told it a moment later. A write
/// that comes within the hold replaces the commit-only request: the follower learns the
/// commit from the entries' request, and its answer acknowledges both (openraft counts
/// an answer as acknowledging every request it sent up to the matched entry, and the
/// later request's sending time is the one a lease or a read index can lean on). If
/// none comes, the commit-only request goes out when the hold ends. Followers learn of
/// commits that much later when writes stop; nothing waits on that but a follower's own
/// applied state, and no safety property rests on it.
pub const COMMIT_HOLD: Duration = Duration::from_millis(2);

/// One stream of AppendEntries requests to a follower, being sent.
struct AppendSession<'s, S> {
    client: &'s mut PeerClient,
    input: S,
    option: RPCOption,
    /// A request of this stream has succeeded: the follower matches the leader's log up
    /// to what was sent, so an entry-less request after it only moves the commit index.
    acked: bool,
    /// The input ended while a request was being held: it is the last one.
    ended: bool,
}

/// An answer of the stream: the follower's log matching up to an entry, or why not.
type StreamAppendItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The next request to send from `input`: the next one, unless it carries no entries
/// after an acknowledged request (`acked`) — a commit index alone. That one waits up to
/// [`COMMIT_HOLD`] for the request after it, which is sent in its place: it starts
/// from the same entry (nothing was sent in between) and carries a commit index at
/// least as new. `ended` is set when the input ends during the wait. A heartbeat is
/// never held: it is the first request of a stream of its own.
///
/// Waiting on `input` is cancel-safe: the request being made stays in the stream (an
/// `unfold`), to be returned by the next poll.
async fn next_to_send<S>(
    input: &mut S,
    acked: bool,
    ended: &mut bool,
) -> Option<AppendEntriesRequest<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    let req = input.next().await?;
    if !(acked && req.entries.is_empty()) {
        return Some(req);
    }
    tokio::select! {
        later = input.next() => match later {
            Some(later) => Some(later),
            None => {
                *ended = true;
                Some(req)
            }
        },
        () = crate::runtime::sleep(COMMIT_HOLD) => Some(req),
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
    /// The peer refused MessagePack: send it JSON.
    json_only: AtomicBool,
    freshness: Arc<Freshness>,
    /// When a snapshot for this peer last waited for a fresher one.
    waited_at: Option<tokio::time::Instant>,
    /// The peer had no room for the last snapshot sent to it, or this node none to
    /// build it: the pause that followed, and when the next send may start.
    no_room: Option<(Duration, tokio::time::Instant)>,
    /// The framed connection AppendEntries go over (see [`frames`](super::frames)),
    /// once opened. Only ever reached through `&mut self` (`Mutex::get_mut`, no
    /// locking): the mutex makes the client `Sync`, as openraft wants, over a stream
    /// that is only `Send`.
    frames: std::sync::Mutex<Option<super::frames::Conn>>,
    /// When the peer last would not speak frames: AppendEntries go over HTTP until
    /// [`FRAMES_RETRY`] after it.
    frames_refused_at: Option<tokio::time::Instant>,
}

/// How long a peer that would not speak frames (a kura from before them, or one that
/// refused the hello) is sent AppendEntries over HTTP before frames are tried again.
pub const FRAMES_RETRY: Duration = Duration::from_secs(30);

/// How a wait for a fresher snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresher {
    /// One is there, or being built, or the wait is over: read the current one again.
    Ready,
    /// The file it needed was given up for want of room on this node.
    NoRoom,
}

/// How a framed AppendEntries failed.
enum FramedFail {
    /// The peer does not speak frames now: send it over HTTP.
    Refused(String),
    Failed(String),
}

#[derive(Debug)]
enum Fail {
    Timeout(Duration),
    Unreachable(String),
    /// The peer could not read the request's encoding (see [`Encoding::refused`]).
    EncodingRefused,
    /// The peer has no room for what was sent (it answered 507).
    NoRoom(String),
}

/// How a Raft RPC's body is encoded, by its `content-type`.
///
/// MessagePack (with field names) is what nodes send each other: an AppendEntries of
/// 300 tokenize entries is about 0.73 of its JSON (a sealed card's bytes are not hex),
/// about 5× cheaper to encode and 2× cheaper to decode (0.12 ms and 0.36 ms against
/// 0.57 ms and 0.82 ms, release build) — on the leader for every follower, on the
/// follower for every entry it catches up on. JSON is still read and answered, for a
/// peer that sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    const MSGPACK: &'static str = "application/msgpack";

    /// The encoding a message's `content-type` declares: JSON without one, `None` for
    /// one kura does not read.
    pub fn of(headers: &http::HeaderMap) -> Option<Encoding> {
        let Some(v) = headers.get(http::header::CONTENT_TYPE) else {
            return Some(Encoding::Json);
        };
        let essence = v
            .as_bytes()
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default();
        let essence = essence.trim_ascii();
        [Encoding::MsgPack, Encoding::Json]
            .into_iter()
            .find(|e| essence.eq_ignore_ascii_case(e.content_type().as_bytes()))
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::MsgPack => Self::MSGPACK,
        }
    }

    pub fn encode<T: Serialize>(self, v: &T) -> Vec<u8> {
        match self {
            Encoding::Json => serde_json::to_vec(v).expect("raft messages serialize"),
            Encoding::MsgPack => rmp_serde::to_vec_named(v).expect("raft messages serialize"),
        }
    }

    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> io::Result<T> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string())),
            Encoding::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| invalid(e.to_string())),
        }
    }

    /// Whether an answer says the peer could not read a MessagePack request: `415`
    /// from a node that knows the header, or the `400 bad raft request` with which a
    /// kura from before MessagePack answers a body that is not JSON.
    fn refused(status: http::StatusCode, body: &[u8]) -> bool {
        status == http::StatusCode::UNSUPPORTED_MEDIA_TYPE
            || (status == http::StatusCode::BAD_REQUEST && body.starts_with(BAD_REQUEST_PREFIX))
    }
}

/// How a peer's `400` for an unreadable Raft request begins.
pub(super) const BAD_REQUEST_PREFIX: &[u8] = b"bad raft request";

impl PeerClient {
    async fn post(&self, path: &str, body: Bytes, ttl: Duration) -> Result<Bytes, Fail> {
        self.post_as(path, body, None, ttl)
            .await
            .map(|(_, body)| body)
    }

    /// Posts `body`, labelled as `enc` if given; returns the answer's encoding and body.
    /// Only a MessagePack request can fail with [`Fail::EncodingRefused`].
    async fn post_as(
        &self,
        path: &str,
        body: Bytes,
        enc: Option<Encoding>,
        ttl: Duration,
    ) -> Result<(Encoding, Bytes), Fail> {
        let cluster = self
            .cluster_id
            .read()
            .expect("cluster id lock")
            .clone()
            .unwrap_or_default();
        let mut req = super::peer_request(
            self.self_id,
            http::Method::POST,
            path,
            &self.addr,
            &cluster,
            body,
        );
        if let Some(enc) = enc {
            let value = http::HeaderValue::from_static(enc.content_type());
            req.headers_mut()
                .insert(http::header::CONTENT_TYPE, value.clone());
            req.headers_mut().insert(http::header::ACCEPT, value);
        }
        let result = self.pool.send(&self.addr, req, ttl).await;
        if result.is_err() {
            // A peer that crashed without closing its sockets leaves idle connections that
            // would each swallow a request until its deadline: start afresh.
            self.pool.forget(&self.addr);
        }
        match result {
            Ok(resp) if resp.status().is_success() => {
                let enc = Encoding::of(resp.headers()).ok_or_else(|| {
                    Fail::Unreachable(format!("{} answered in an unknown encoding", self.addr))
                })?;
                Ok((enc, resp.into_body()))
            }
            Ok(resp)
                if enc == Some(Encoding::MsgPack)
                    && Encoding::refused(resp.status(), resp.body()) =>
            {
                Err(Fail::EncodingRefused)
            }
            Ok(resp) => {
                let answered = format!(
                    "{} answered {}: {}",
                    self.addr,
                    resp.status(),
                    String::from_utf8_lossy(resp.body())
                );
                if resp.status() == http::StatusCode::INSUFFICIENT_STORAGE {
                    Err(Fail::NoRoom(answered))
                } else {
                    Err(Fail::Unreachable(answered))
                }
            }
            Err(WireError::Timeout { timeout, .. }) => Err(Fail::Timeout(timeout)),
            Err(e) => Err(Fail::Unreachable(e.to_string())),
        }
    }

    /// One Raft RPC in MessagePack; in JSON to a peer that refused MessagePack (a kura
    /// from before it), from then on.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        loop {
            let enc = if self.json_only.load(Ordering::Relaxed) {
                Encoding::Json
            } else {
                Encoding::MsgPack
            };
            let body = Bytes::from(enc.encode(req));
            match self.post_as(path, body, Some(enc), ttl).await {
                Ok((answer, bytes)) => {
                    return answer.decode(&bytes).map_err(|e| {
                        RPCError::Network(NetworkError::from_string(format!(
                            "bad {action:?} response: {e}"
                        )))
                    })
                }
                Err(Fail::EncodingRefused) => {
                    tracing::warn!(
                        target_node = self.target,
                        "peer refused MessagePack Raft messages; sending it JSON"
                    );
                    self.json_only.store(true, Ordering::Relaxed);
                }
                Err(f) => return Err(self.rpc_error(action, f)),
            }
        }
    }

    /// Sends `rpc` over the framed connection, opening it first if there is none (or
    /// the one there is has retired). A reused connection that fails is replaced once:
    /// the follower may have closed it, and an AppendEntries may be sent twice.
    async fn append_framed(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<super::frames::Answer, FramedFail> {
        use super::frames::{Conn, Hello, OpenFail};
        let (idle_max, max_age) = (self.pool.idle_max(), self.pool.max_age());
        let frames = self.frames.get_mut().expect("frames lock");
        if frames
            .as_ref()
            .is_some_and(|c| c.retired(idle_max, max_age))
        {
            *frames = None;
        }
        loop {
            let reused = frames.is_some();
            let conn = match frames {
                Some(c) => c,
                None => {
                    let hello = Hello {
                        node: self.self_id,
                        cluster: self
                            .cluster_id
                            .read()
                            .expect("cluster id lock")
                            .clone()
                            .unwrap_or_default(),
                    };
                    let opened = Conn::open(&self.pool, &self.addr, &hello).await;
                    frames.insert(opened.map_err(|f| match f {
                        OpenFail::Connect(why) => FramedFail::Failed(why),
                        OpenFail::Refused(why) => FramedFail::Refused(why),
                    })?)
                }
            };
            use crate::timeline::{mark, Stage};
            let last = rpc.entries.last().map_or(0, |e| e.log_id.index);
            mark(Stage::ReplicaSend, last, self.target);
            match conn.call(rpc).await {
                Ok(answer) => {
                    mark(Stage::ReplicaAck, last, self.target);
                    return Ok(answer);
                }
                Err(e) => {
                    *frames = None;
                    if !reused {
                        return Err(FramedFail::Failed(format!(
                            "framed connection to {} failed: {e}",
                            self.addr
                        )));
                    }
                }
            }
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
            Fail::Unreachable(msg) | Fail::NoRoom(msg) => {
                RPCError::Unreachable(Unreachable::from_string(msg))
            }
            Fail::EncodingRefused => RPCError::Unreachable(Unreachable::from_string(format!(
                "{} refused the request's encoding",
                self.addr
            ))),
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
    /// Sends `snapshot` a chunk at a time, then asks the peer to install it. A snapshot
    /// still being built is sent as it is written: a chunk once there is a whole one
    /// (or the rest, once the build is done).
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: &Snapshot,
        ttl: Duration,
    ) -> Result<Bytes, Fail> {
        let data = &snapshot.snapshot;
        let index = snapshot.meta.last_log_id.map_or(0, |l| l.index);
        // The file's id tells two uploads of one index apart (its length may not be
        // known yet).
        let transfer = format!(
            "{}-{}-{}-{}",
            self.self_id,
            vote.leader_id().term,
            index,
            data.id()
        );
        let unreadable = |e: io::Error| Fail::Unreachable(format!("cannot read the snapshot: {e}"));
        let chunk = SNAPSHOT_CHUNK_BYTES as u64;
        let most = match data.built() {
            Built::Whole(len) => len.min(chunk),
            _ => chunk,
        };
        let mut buf = vec![0u8; most as usize];
        let mut offset = 0u64;
        let len = loop {
            let (written, whole) = data.written(offset + chunk).await.map_err(unreadable)?;
            while written - offset >= chunk || (whole && offset < written) {
                let n = chunk.min(written - offset) as usize;
                data.read_at(offset, &mut buf[..n]).map_err(unreadable)?;
                let path = snapshot_chunk_path(&transfer, offset, crc32fast::hash(&buf[..n]));
                self.post(&path, Bytes::copy_from_slice(&buf[..n]), ttl)
                    .await?;
                offset += n as u64;
            }
            if whole {
                break written;
            }
        };
        let done = SnapshotDone {
            vote,
            meta: snapshot.meta.clone(),
            transfer,
            len,
        };
        let body = Bytes::from(serde_json::to_vec(&done).expect("snapshot meta serializes"));
        // Installing writes the whole vault into a new file: give it time by its size
        // (at 20 MB/s at least) on top of the usual deadline.
        let install = ttl + Duration::from_secs(len / (20 << 20));
        self.post("/raft/snapshot/done", body, install).await
    }
}

impl PeerClient {
    /// Waits for `wait` (or the end of the replication, `cancel`), then has openraft
    /// read the current snapshot again: it does so at once after a timeout (no
    /// back-off), and finds the one there is then, which may be a later one.
    async fn then_read_again<F: Future<Output = ReplicationClosed>>(
        &self,
        wait: impl Future<Output = ()>,
        mut cancel: std::pin::Pin<&mut futures::future::Fuse<F>>,
        waited: Duration,
    ) -> StreamingError<TypeConfig> {
        futures::pin_mut!(wait);
        futures::select! {
            closed = cancel => StreamingError::Closed(closed),
            () = wait.fuse() => self.timed_out(waited),
        }
    }

    /// A snapshot's send that ends after `waited` without the follower's answer: openraft
    /// calls again at once, and reads the current snapshot again first.
    fn timed_out(&self, waited: Duration) -> StreamingError<TypeConfig> {
        StreamingError::Timeout(Timeout {
            action: RPCTypes::InstallSnapshot,
            id: self.self_id,
            target: self.target,
            timeout: waited,
        })
    }

    /// Whether the snapshot at `index` lags the applied state too far to send, and this
    /// peer's sends have not waited for a fresher one lately.
    fn should_wait_for_fresher(&self, index: u64) -> bool {
        let lag = self.freshness.vault.applied_index().saturating_sub(index);
        lag > self.freshness.max_lag
            && self
                .waited_at
                .is_none_or(|at| at.elapsed() >= FRESH_SNAPSHOT_WAIT_AGAIN)
    }

    /// Asks for a new snapshot and waits until one later than `index` is current or
    /// being built (it is sent as it is written), or [`FRESH_SNAPSHOT_WAIT`] has passed.
    /// For a compaction `mark` (no data), until a snapshot file at least as late is —
    /// or until a file is given up for want of room here, which it says.
    async fn wait_for_fresher(&self, index: u64, mark: bool) -> Fresher {
        let started = tokio::time::Instant::now();
        let given_up = self.freshness.store.files_given_up();
        let applied = self.freshness.vault.applied_index();
        if mark {
            tracing::info!(
                target_node = self.target,
                mark_index = index,
                applied_index = applied,
                "a follower needs a snapshot and the log is compacted by a mark: building one"
            );
        } else {
            tracing::info!(
                target_node = self.target,
                snapshot_index = index,
                applied_index = applied,
                "the snapshot a follower needs lags the vault: building a fresher one first"
            );
        }
        let mut file = crate::store::FileAsk::default();
        // A full channel means a request is pending already: that one will do.
        if !mark {
            let _ = self.freshness.wanted.try_send(());
        }
        while started.elapsed() < FRESH_SNAPSHOT_WAIT {
            if mark && file.now(&self.freshness.store) {
                let _ = self.freshness.wanted.try_send(());
            }
            crate::runtime::sleep(Duration::from_millis(50)).await;
            if self.freshness.store.files_given_up() > given_up {
                return Fresher::NoRoom;
            }
            let store = self.freshness.store.clone();
            match self
                .freshness
                .store
                .blocking(move || {
                    if mark {
                        store.latest_file_snapshot_index()
                    } else {
                        store.latest_snapshot_index()
                    }
                })
                .await
            {
                // A file at the mark itself will do; a snapshot at `index` would not.
                Ok(Ok(now)) if now > index || (mark && now == index && now > 0) => {
                    return Fresher::Ready
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %e, "cannot read the current snapshot's index");
                    return Fresher::Ready;
                }
            }
        }
        tracing::warn!(
            target_node = self.target,
            snapshot_index = index,
            "no fresher snapshot in time: sending the one there is"
        );
        Fresher::Ready
    }

    /// The pause before this peer's snapshot is tried again after one that could not
    /// be kept for want of room — on the peer, or here — from now: 1 s, then twice the
    /// last, up to [`NO_ROOM_PAUSE_MAX`].
    fn pause_for_no_room(&mut self) -> Duration {
        let pause = self
            .no_room
            .map_or(NO_ROOM_PAUSE_FIRST, |(p, _)| (p * 2).min(NO_ROOM_PAUSE_MAX));
        self.no_room = Some((pause, tokio::time::Instant::now() + pause));
        pause
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
    ///
    /// They go over the peer's framed connection (see [`frames`](super::frames)), and
    /// over HTTP to a peer that does not speak frames.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let ttl = option.hard_ttl().max(self.append_ttl_min);
        let framed_ok = self
            .frames_refused_at
            .is_none_or(|at| at.elapsed() >= FRAMES_RETRY);
        if framed_ok {
            match tokio::time::timeout(ttl, self.append_framed(&rpc)).await {
                Ok(Ok(Ok(resp))) => return Ok(resp),
                // The follower's own refusal, or no answer from it.
                Ok(Ok(Err(why))) | Ok(Err(FramedFail::Failed(why))) => {
                    return Err(self.rpc_error(RPCTypes::AppendEntries, Fail::Unreachable(why)))
                }
                Ok(Err(FramedFail::Refused(why))) => {
                    tracing::info!(
                        target_node = self.target,
                        why,
                        "peer does not speak framed AppendEntries; using HTTP"
                    );
                    self.frames_refused_at = Some(tokio::time::Instant::now());
                }
                Err(_) => {
                    // The answer may still come: the connection is out of step.
                    *self.frames.get_mut().expect("frames lock") = None;
                    return Err(self.rpc_error(RPCTypes::AppendEntries, Fail::Timeout(ttl)));
                }
            }
        }
        self.call(RPCTypes::AppendEntries, "/raft/append", &rpc, ttl)
            .await
    }

    /// Sends the requests one at a time, as openraft's sequential default does, except
    /// that an entry-less request that only carries a new commit index waits up to
    /// [`COMMIT_HOLD`] for the next request, and is dropped for it when it comes (see
    /// [`next_to_send`]).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamAppendItem>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let session = AppendSession {
            client: self,
            input,
            option,
            acked: false,
            ended: false,
        };
        let responses = futures::stream::unfold(Some(session), |session| async move {
            let mut s = session?;
            let req = next_to_send(&mut s.input, s.acked, &mut s.ended).await?;
            let prev = req.prev_log_id;
            let last = req.entries.last().map(|e| e.log_id).or(prev);
            match s.client.append_entries(req, s.option.clone()).await {
                Ok(resp) => {
                    // Only a whole success goes on, as in openraft's sequential stream: a
                    // partial one, a conflict or a higher vote ends it.
                    let go_on = match &resp {
                        AppendEntriesResponse::Success => true,
                        AppendEntriesResponse::PartialSuccess(m) => *m == last,
                        _ => false,
                    };
                    let result = resp.into_stream_result(prev, last);
                    s.acked |= result.is_ok();
                    let next = (go_on && !s.ended).then_some(s);
                    Some((Ok(result), next))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        let responses: BoxStream<'s, StreamAppendItem> = Box::pin(responses);
        Box::pin(std::future::ready(Ok(responses)))
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
        let cancel = cancel.fuse();
        futures::pin_mut!(cancel);
        let index = snapshot.meta.last_log_id.map_or(0, |l| l.index);
        // A compaction mark has no data to send: a file is built first, whenever asked.
        let mark = snapshot.snapshot.is_mark();
        // (Before anything is built or sent: the file too may have had no room.)
        let now = tokio::time::Instant::now();
        if let Some((pause, until)) = self.no_room.filter(|(_, until)| *until > now) {
            let wait = crate::runtime::sleep(until - now);
            return Err(self.then_read_again(wait, cancel, pause).await);
        }
        if mark || self.should_wait_for_fresher(index) {
            self.waited_at = Some(tokio::time::Instant::now());
            let waited = {
                let wait = self.wait_for_fresher(index, mark);
                futures::pin_mut!(wait);
                futures::select! {
                    closed = cancel => return Err(StreamingError::Closed(closed)),
                    w = wait.fuse() => w,
                }
            };
            if waited == Fresher::NoRoom {
                let pause = self.pause_for_no_room();
                tracing::warn!(
                    target_node = self.target,
                    pause_ms = pause.as_millis() as u64,
                    "no room here to build the snapshot file a follower needs: building it \
                     again after a pause"
                );
            }
            return Err(self.timed_out(FRESH_SNAPSHOT_WAIT));
        }
        let while_built = !matches!(snapshot.snapshot.built(), Built::Whole(_));
        let started = tokio::time::Instant::now();
        let res = {
            let send = self.send_snapshot(vote, &snapshot, option.hard_ttl());
            futures::pin_mut!(send);
            futures::select! {
                closed = cancel => return Err(StreamingError::Closed(closed)),
                r = send.fuse() => r,
            }
        };
        if let Err(Fail::NoRoom(_)) = &res {
            let pause = self.pause_for_no_room();
            tracing::warn!(
                target_node = self.target,
                bytes,
                pause_ms = pause.as_millis() as u64,
                "a follower has no room for its snapshot: sending it again after a pause"
            );
        }
        if res.is_ok() {
            self.waited_at = None;
            self.no_room = None;
            let (bytes, took) = (snapshot.snapshot.len(), started.elapsed());
            let kind = if while_built {
                "send_while_built"
            } else {
                "send"
            };
            self.freshness.store.snapshot_done(kind, took, bytes);
            tracing::info!(
                target_node = self.target,
                last_log_id = ?snapshot.meta.last_log_id,
                bytes,
                while_built,
                ms = took.as_millis() as u64,
                "snapshot sent"
            );
        }
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
            Err(Fail::Timeout(timeout)) => Err(self.timed_out(timeout)),
            Err(Fail::Unreachable(msg) | Fail::NoRoom(msg)) => {
                Err(StreamingError::Unreachable(Unreachable::from_string(msg)))
            }
            Err(Fail::EncodingRefused) => Err(StreamingError::Unreachable(
                Unreachable::from_string(format!("{} refused the snapshot's encoding", self.addr)),
            )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_types::test_entries::{self, log_id};
    use crate::raft_types::Entry;
    use openraft::EntryPayload;

    fn tokenize(index: u64) -> Entry {
        test_entries::tokenize(log_id(2, index), &format!("tok_{index}"), 48)
    }

    fn same<T: std::fmt::Debug>(a: &T, b: &T) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    fn headers(content_type: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
        }
        h
    }

    /// An AppendEntries after entry 5 carrying `entries` (their indexes), commit `commit`.
    fn append(entries: &[u64], commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(2, 5)),
            leader_commit: Some(log_id(2, commit)),
            entries: entries.iter().map(|&i| tokenize(i)).collect(),
        }
    }

    /// Runs [`next_to_send`] over `queued` (the input ends after them when `ends`).
    async fn pick(
        queued: Vec<AppendEntriesRequest<TypeConfig>>,
        acked: bool,
        ends: bool,
    ) -> (AppendEntriesRequest<TypeConfig>, bool) {
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        for r in queued {
            tx.unbounded_send(r).unwrap();
        }
        let _open = (!ends).then_some(tx);
        let mut ended = false;
        let req = next_to_send(&mut rx, acked, &mut ended).await.unwrap();
        (req, ended)
    }

    #[tokio::test]
    async fn a_commit_only_append_gives_way_to_the_next_request() {
        // After an acknowledged request, a commit-only one is replaced by the next.
        let (sent, ended) = pick(vec![append(&[], 5), append(&[6, 7], 5)], true, false).await;
        same(&sent, &append(&[6, 7], 5));
        assert!(!ended);
        // With nothing after it, it goes out itself once the hold ends.
        let started = std::time::Instant::now();
        let (sent, ended) = pick(vec![append(&[], 5)], true, false).await;
        same(&sent, &append(&[], 5));
        assert!(started.elapsed() >= COMMIT_HOLD && !ended);
        // Its stream ending during the hold, it goes out as the last request.
        let (sent, ended) = pick(vec![append(&[], 5)], true, true).await;
        same(&sent, &append(&[], 5));
        assert!(ended);
    }

    #[tokio::test]
    async fn entries_and_a_streams_first_request_are_never_held() {
        // Entries go out at once.
        let (sent, _) = pick(vec![append(&[6], 5), append(&[7], 6)], true, false).await;
        same(&sent, &append(&[6], 5));
        // So does an entry-less first request (a heartbeat's, or a probe for the
        // follower's log): nothing has been acknowledged that it could merely update.
        let (sent, _) = pick(vec![append(&[], 5), append(&[6], 5)], false, false).await;
        same(&sent, &append(&[], 5));
    }

    #[test]
    fn raft_messages_round_trip_in_msgpack_smaller_than_their_json() {
        let mut entries: Vec<Entry> = (10..40).map(tokenize).collect();
        entries.push(Entry {
            log_id: log_id(2, 40),
            payload: EntryPayload::Membership(openraft::Membership::new_with_defaults(
                vec![[1u64, 2, 3].into_iter().collect()],
                [],
            )),
        });
        entries.push(Entry {
            log_id: log_id(2, 41),
            payload: EntryPayload::Blank,
        });
        let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(2, 9)),
            leader_commit: Some(log_id(2, 8)),
            entries,
        };
        let packed = Encoding::MsgPack.encode(&append);
        let json = Encoding::Json.encode(&append);
        assert!(
            packed.len() * 10 < json.len() * 8,
            "msgpack {} bytes, json {}",
            packed.len(),
            json.len()
        );
        // A sealed card's bytes travel as bytes.
        assert!(packed.windows(48).any(|w| w == [3; 48]));
        same(
            &Encoding::MsgPack
                .decode::<AppendEntriesRequest<TypeConfig>>(&packed)
                .unwrap(),
            &append,
        );
        same(
            &Encoding::Json
                .decode::<AppendEntriesRequest<TypeConfig>>(&json)
                .unwrap(),
            &append,
        );

        let answers: Vec<AppendEntriesResponse<TypeConfig>> = vec![
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(2, 20))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(3, 2)),
        ];
        for a in &answers {
            let back: AppendEntriesResponse<TypeConfig> = Encoding::MsgPack
                .decode(&Encoding::MsgPack.encode(a))
                .unwrap();
            same(&back, a);
        }
        let ballot: VoteRequest<TypeConfig> =
            VoteRequest::new(Vote::new(4, 3), Some(log_id(2, 41)));
        let back: VoteRequest<TypeConfig> = Encoding::MsgPack
            .decode(&Encoding::MsgPack.encode(&ballot))
            .unwrap();
        same(&back, &ballot);
        let answer: VoteResponse<TypeConfig> =
            VoteResponse::new(Vote::new(4, 3), Some(log_id(2, 41)), true);
        let back: VoteResponse<TypeConfig> = Encoding::MsgPack
            .decode(&Encoding::MsgPack.encode(&answer))
            .unwrap();
        same(&back, &answer);
        // A cut message is an error, not a panic or a half-read request.
        assert!(Encoding::MsgPack
            .decode::<AppendEntriesRequest<TypeConfig>>(&packed[..packed.len() / 2])
            .is_err());
    }

    #[test]
    fn the_encoding_is_read_from_the_content_type() {
        assert_eq!(Encoding::of(&headers(None)), Some(Encoding::Json));
        assert_eq!(
            Encoding::of(&headers(Some("application/json"))),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::of(&headers(Some("Application/MsgPack"))),
            Some(Encoding::MsgPack)
        );
        assert_eq!(
            Encoding::of(&headers(Some("application/msgpack; charset=binary"))),
            Some(Encoding::MsgPack)
        );
        assert_eq!(Encoding::of(&headers(Some("application/cbor"))), None);
        assert_eq!(Encoding::of(&headers(Some("text/plain"))), None);
    }

    #[test]
    fn a_peer_that_cannot_read_msgpack_is_told_apart_from_other_failures() {
        use http::StatusCode;
        assert!(Encoding::refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, b""));
        // What a kura from before MessagePack answers a body that is not JSON.
        assert!(Encoding::refused(
            StatusCode::BAD_REQUEST,
            b"bad raft request: expected value at line 1 column 1"
        ));
        assert!(!Encoding::refused(
            StatusCode::BAD_REQUEST,
            b"something else"
        ));
        assert!(!Encoding::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            b"bad raft request"
        ));
        assert!(!Encoding::refused(StatusCode::FORBIDDEN, b""));
    }
}
