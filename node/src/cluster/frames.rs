//! AppendEntries over a stream of frames, the Raft plane's hot path.
//!
//! Every other Raft RPC is an HTTP POST (see [`network`](super::network)). A leader
//! sends a follower an AppendEntries for each batch of writes, one at a time, so at
//! one client each write is one such request to each follower; as HTTP, each carried a
//! request head and a response head to encode and parse, a pass through the peer
//! plane's router and middleware, the cluster-id check and a pool checkout. Here a
//! leader's replication task holds one connection per follower, on the same listener
//! and under the same TLS and certificates, and after a short hello speaks only
//! frames: a 4-byte big-endian length, then a MessagePack body.
//!
//! 1. The connection opens with [`PREFACE`] (the listener hands it here, see
//!    `net::Alternate`), then the sender's [`Hello`]: its node id and cluster id,
//!    judged as an HTTP request's `kura-node-id` and `kura-cluster-id` are (the node id
//!    must be the certificate's; a node without a cluster id adopts the sender's).
//!    The answer is `Result<(), String>`; a refused hello ends the connection.
//! 2. Then requests and answers alternate: an `AppendEntriesRequest`, whose vote must
//!    be the certificate's node, answered by `Result<AppendEntriesResponse, String>`.
//!
//! A kura from before frames reads the preface as a bad HTTP request and answers
//! `400` or closes; the sender then goes on in HTTP (see `PeerClient`).

use super::server::speaks_for_itself;
use crate::member::NodeId;
use crate::net::tls::Identity;
use crate::raft_types::TypeConfig;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a framed connection opens with. No HTTP/1 request line starts with a NUL.
pub const PREFACE: &[u8] = b"\0kura-raft-frames/1\r\n";

/// Largest answer a leader reads: an AppendEntries answer or a refusal, a few dozen
/// bytes in practice.
pub const ANSWER_BYTES_MAX: usize = 64 << 10;

/// Largest hello a follower reads.
const HELLO_BYTES_MAX: usize = 4 << 10;

/// Who opens a framed connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub node: NodeId,
    pub cluster: String,
}

/// A follower's answer to one request: the response, or why it could not give one.
pub type Answer = Result<AppendEntriesResponse<TypeConfig>, String>;

/// Writes `v` as one frame, and flushes it.
pub async fn write_frame<W, T>(w: &mut W, v: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut buf = Vec::with_capacity(512);
    buf.extend_from_slice(&[0; 4]);
    rmp_serde::encode::write_named(&mut buf, v).map_err(io::Error::other)?;
    let len = u32::try_from(buf.len() - 4)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame of at most `max` bytes and decodes it. A longer frame, or one that
/// does not decode, is `InvalidData`; a connection closed before a frame begins is
/// `UnexpectedEof`.
pub async fn read_frame<R, T>(r: &mut R, max: usize) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, over {max}"),
        ));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    rmp_serde::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// What a follower does with what comes over its framed connections.
pub(super) trait Follower: Send + Sync + 'static {
    /// Admits a sender of cluster `cluster`, or says why not.
    fn admit(&self, cluster: &str) -> crate::net::BoxFut<'_, Result<(), String>>;
    /// Appends, as the HTTP route would.
    fn append(&self, req: AppendEntriesRequest<TypeConfig>) -> crate::net::BoxFut<'_, Answer>;
}

/// Serves one framed connection, from just after its preface, until it closes, sends
/// something it may not, or is idle for `idle_max`.
pub(super) async fn serve<F, S>(
    follower: &F,
    mut io: S,
    ident: Option<Identity>,
    idle_max: Duration,
) where
    F: Follower + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = match tokio::time::timeout(
        idle_max,
        read_frame::<_, Hello>(&mut io, HELLO_BYTES_MAX),
    )
    .await
    {
        Ok(Ok(h)) => h,
        _ => return,
    };
    let admitted = if speaks_for_itself(ident.as_ref(), hello.node) {
        follower.admit(&hello.cluster).await
    } else {
        tracing::warn!(
            claimed = hello.node,
            "framed Raft connection refused: it speaks for another node"
        );
        Err(format!(
            "this certificate may not speak for node {}",
            hello.node
        ))
    };
    let refused = admitted.is_err();
    if write_frame(&mut io, &admitted).await.is_err() || refused {
        return;
    }
    loop {
        let next = tokio::time::timeout(
            idle_max,
            read_frame::<_, AppendEntriesRequest<TypeConfig>>(
                &mut io,
                super::server::APPEND_BODY_BYTES_MAX,
            ),
        )
        .await;
        let req = match next {
            Ok(Ok(req)) => req,
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                let why: Answer = Err(format!("bad raft request: {e}"));
                let _ = write_frame(&mut io, &why).await;
                return;
            }
            _ => return,
        };
        let voter = super::server::voter(&req.vote);
        if !speaks_for_itself(ident.as_ref(), voter) {
            tracing::warn!(
                claimed = voter,
                "framed AppendEntries refused: it speaks for another node"
            );
            let why: Answer = Err(format!("this certificate may not speak for node {voter}"));
            let _ = write_frame(&mut io, &why).await;
            return;
        }
        use crate::timeline::{mark, Stage};
        let last = req.entries.last().map_or(0, |e| e.log_id.index);
        mark(Stage::FollowerReceive, last, req.entries.len() as u64);
        let answer = follower.append(req).await;
        mark(Stage::FollowerAnswer, last, 0);
        if write_frame(&mut io, &answer).await.is_err() {
            return;
        }
    }
}

/// Why a framed connection could not be opened.
#[derive(Debug)]
pub(super) enum OpenFail {
    /// No connection: the peer is down or unreachable.
    Connect(String),
    /// The peer does not speak frames (a kura from before them), or refused the hello:
    /// go on in HTTP, which says why in its own terms.
    Refused(String),
}

/// A leader's framed connection to one follower.
pub(super) struct Conn {
    io: crate::net::BoxIo,
    born: tokio::time::Instant,
    used: tokio::time::Instant,
}

impl Conn {
    /// Opens a connection to `addr` through `pool`'s connector and says hello.
    pub(super) async fn open(
        pool: &crate::net::HttpPool,
        addr: &str,
        hello: &Hello,
    ) -> Result<Conn, OpenFail> {
        let mut io = pool
            .connect_stream(addr)
            .await
            .map_err(|e| OpenFail::Connect(e.to_string()))?;
        let greet = async {
            io.write_all(PREFACE).await?;
            write_frame(&mut io, hello).await?;
            read_frame::<_, Result<(), String>>(&mut io, ANSWER_BYTES_MAX).await
        };
        match greet.await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(OpenFail::Refused(why)),
            Err(e) => {
                return Err(OpenFail::Refused(format!(
                    "no framed hello from {addr}: {e}"
                )))
            }
        }
        let now = tokio::time::Instant::now();
        Ok(Conn {
            io,
            born: now,
            used: now,
        })
    }

    /// Whether the connection is to be dropped before its next request: idle for
    /// `idle_max` (below the follower's idle bound, so a request never races the
    /// follower closing it) or older than `max_age` (a renewed certificate then takes
    /// effect, as on the pool's connections).
    pub(super) fn retired(&self, idle_max: Duration, max_age: Option<Duration>) -> bool {
        self.used.elapsed() >= idle_max || max_age.is_some_and(|m| self.born.elapsed() >= m)
    }

    /// Sends one request and reads its answer.
    pub(super) async fn call(
        &mut self,
        req: &AppendEntriesRequest<TypeConfig>,
    ) -> io::Result<Answer> {
        write_frame(&mut self.io, req).await?;
        let answer = read_frame(&mut self.io, ANSWER_BYTES_MAX).await?;
        self.used = tokio::time::Instant::now();
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_types::Vote;
    use std::sync::Mutex;

    /// A follower that admits cluster `c1` and answers every append with success,
    /// recording what it was sent.
    #[derive(Default)]
    struct Recorder {
        appended: Mutex<Vec<AppendEntriesRequest<TypeConfig>>>,
    }

    impl Follower for Recorder {
        fn admit(&self, cluster: &str) -> crate::net::BoxFut<'_, Result<(), String>> {
            let ok = cluster == "c1";
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("cluster id mismatch".into())
                }
            })
        }

        fn append(&self, req: AppendEntriesRequest<TypeConfig>) -> crate::net::BoxFut<'_, Answer> {
            self.appended.lock().unwrap().push(req);
            Box::pin(async { Ok(AppendEntriesResponse::Success) })
        }
    }

    fn append_from(node: NodeId, term: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, node),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        }
    }

    const IDLE: Duration = Duration::from_secs(5);

    /// Runs `serve` over one end of a pipe and gives the other end, with the preface
    /// already taken (as the listener takes it).
    fn serve_pipe(
        follower: std::sync::Arc<Recorder>,
        ident: Option<Identity>,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        serve_pipe_idle(follower, ident, IDLE)
    }

    fn serve_pipe_idle(
        follower: std::sync::Arc<Recorder>,
        ident: Option<Identity>,
        idle: Duration,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move { serve(&*follower, server, ident, idle).await });
        (client, task)
    }

    async fn hello(
        io: &mut tokio::io::DuplexStream,
        node: NodeId,
        cluster: &str,
    ) -> Result<(), String> {
        let h = Hello {
            node,
            cluster: cluster.into(),
        };
        write_frame(io, &h).await.unwrap();
        read_frame(io, ANSWER_BYTES_MAX).await.unwrap()
    }

    #[tokio::test]
    async fn requests_and_answers_alternate_after_an_admitted_hello() {
        let f = std::sync::Arc::new(Recorder::default());
        let (mut io, task) = serve_pipe(f.clone(), Some(Identity::Node { id: 2 }));
        hello(&mut io, 2, "c1").await.unwrap();
        for term in [3, 4] {
            write_frame(&mut io, &append_from(2, term)).await.unwrap();
            let a: Answer = read_frame(&mut io, ANSWER_BYTES_MAX).await.unwrap();
            assert!(matches!(a, Ok(AppendEntriesResponse::Success)));
        }
        let terms: Vec<u64> = f
            .appended
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.vote.leader_id().term)
            .collect();
        assert_eq!(terms, [3, 4]);
        drop(io);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_hello_from_another_cluster_or_for_another_node_is_refused_and_closed() {
        for (node, cluster) in [(2, "c2"), (3, "c1")] {
            let f = std::sync::Arc::new(Recorder::default());
            let (mut io, task) = serve_pipe(f.clone(), Some(Identity::Node { id: 2 }));
            let why = hello(&mut io, node, cluster).await.unwrap_err();
            assert!(why.contains("cluster") || why.contains("node 3"), "{why}");
            // The connection is closed: a request after it gets no answer.
            let _ = write_frame(&mut io, &append_from(node, 9)).await;
            assert!(read_frame::<_, Answer>(&mut io, ANSWER_BYTES_MAX)
                .await
                .is_err());
            task.await.unwrap();
            assert!(f.appended.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn an_append_that_speaks_for_another_node_is_refused_and_not_applied() {
        let f = std::sync::Arc::new(Recorder::default());
        let (mut io, task) = serve_pipe(f.clone(), Some(Identity::Node { id: 2 }));
        hello(&mut io, 2, "c1").await.unwrap();
        write_frame(&mut io, &append_from(3, 99)).await.unwrap();
        let a: Answer = read_frame(&mut io, ANSWER_BYTES_MAX).await.unwrap();
        assert!(a.unwrap_err().contains("node 3"));
        task.await.unwrap();
        assert!(f.appended.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_tls_any_node_may_speak() {
        let f = std::sync::Arc::new(Recorder::default());
        let (mut io, _task) = serve_pipe(f.clone(), None);
        hello(&mut io, 3, "c1").await.unwrap();
        write_frame(&mut io, &append_from(3, 5)).await.unwrap();
        let a: Answer = read_frame(&mut io, ANSWER_BYTES_MAX).await.unwrap();
        assert!(a.is_ok());
        assert_eq!(f.appended.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_oversized_or_garbled_frame_is_refused_and_closes_the_connection() {
        let f = std::sync::Arc::new(Recorder::default());
        let (mut io, task) = serve_pipe(f.clone(), None);
        hello(&mut io, 2, "c1").await.unwrap();
        io.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await.unwrap();
        let a: Answer = read_frame(&mut io, ANSWER_BYTES_MAX).await.unwrap();
        assert!(a.unwrap_err().starts_with("bad raft request"));
        task.await.unwrap();

        let (mut io, task) = serve_pipe(f.clone(), None);
        hello(&mut io, 2, "c1").await.unwrap();
        let over = (super::super::server::APPEND_BODY_BYTES_MAX as u32 + 1).to_be_bytes();
        io.write_all(&over).await.unwrap();
        let a: Answer = read_frame(&mut io, ANSWER_BYTES_MAX).await.unwrap();
        assert!(a.unwrap_err().contains("over"));
        task.await.unwrap();
        assert!(f.appended.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let f = std::sync::Arc::new(Recorder::default());
        let idle = Duration::from_millis(50);
        let (mut io, task) = serve_pipe_idle(f.clone(), None, idle);
        hello(&mut io, 2, "c1").await.unwrap();
        // Ends by itself: nothing else would end it while this end stays open.
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("an idle connection is closed")
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(io.read(&mut b).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_frame_longer_than_the_reader_takes_is_invalid_data() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &"x".repeat(100)).await.unwrap();
        let e = read_frame::<_, String>(&mut b, 50).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
