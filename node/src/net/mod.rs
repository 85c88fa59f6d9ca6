//! Listeners and connectors as one abstraction over tokio TCP and simulated TCP.
//!
//! Node code never names a socket type: it gets a [`Net`] and asks it to bind or
//! connect. Production uses [`Net::tokio`]; simulations use `Net::turmoil` (feature
//! `sim`). This module knows nothing of the vault, Raft or the API.

#[cfg(feature = "sim")]
mod sim;
pub mod tls;

pub use kura_sdk::wire::{
    BoxFut, BoxIo, Connector, HttpPool, Io, Spawner, TcpConnector, WireError,
};

use std::io;
use std::sync::Arc;

/// Accepts byte streams.
pub trait Listener: Send + 'static {
    /// Waits for the next connection; returns the stream and the peer's address.
    fn accept(&mut self) -> BoxFut<'_, io::Result<(BoxIo, String)>>;
    /// The address actually bound (useful with port 0).
    fn local_addr(&self) -> io::Result<String>;
}

/// Binds listeners.
pub trait Binder: Send + Sync + 'static {
    /// Binds `addr` (`host:port`).
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<Box<dyn Listener>>>;
}

/// A network: how to connect and how to listen.
#[derive(Clone)]
pub struct Net {
    /// Opens outbound streams.
    pub connector: Arc<dyn Connector>,
    /// Opens listeners.
    pub binder: Arc<dyn Binder>,
}

impl Net {
    /// The real network through tokio.
    pub fn tokio() -> Net {
        Net {
            connector: Arc::new(TcpConnector),
            binder: Arc::new(TokioBinder),
        }
    }

    /// The simulated network of the current turmoil host.
    #[cfg(feature = "sim")]
    pub fn turmoil() -> Net {
        Net {
            connector: Arc::new(sim::TurmoilConnector),
            binder: Arc::new(sim::TurmoilBinder),
        }
    }
}

struct TokioBinder;

struct TokioListener(tokio::net::TcpListener);

impl Binder for TokioBinder {
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let mut last = None;
            for a in tokio::net::lookup_host(addr).await? {
                match bind_with_backlog(a) {
                    Ok(l) => return Ok(Box::new(TokioListener(l)) as Box<dyn Listener>),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other(format!("{addr} names no address"))))
        })
    }
}

/// Pending connections the kernel queues for a listener (capped by
/// `net.core.somaxconn`): a burst of connections waits there for the accept loop, which
/// then refuses those over the caps, instead of being dropped half-open.
const LISTEN_BACKLOG: u32 = 4096;

fn bind_with_backlog(addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Listener for TokioListener {
    fn accept(&mut self) -> BoxFut<'_, io::Result<(BoxIo, String)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            // Only a latency hint: a connection that cannot take it (already reset) is
            // served, or fails, on its own.
            let _ = s.set_nodelay(true);
            Ok((Box::new(s) as BoxIo, peer.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.0.local_addr()?.to_string())
    }
}

/// TLS on a listener: the configuration (read at each handshake) and, on a plane that
/// requires client certificates, who may speak on it.
#[derive(Clone)]
pub struct ServeTls {
    pub config: tls::SharedServerConfig,
    /// Judges the client certificate's identity right after the handshake, before any
    /// request byte is read; a refused connection is closed. `None` admits every client
    /// that completed the handshake.
    pub admit: Option<Admit>,
    /// Told of every client this plane refused for its certificate (none, not from the
    /// CA, or not admitted), with a reason and the client's address: failed
    /// authentications, on the planes that authenticate by certificate.
    pub on_refused: Option<OnRefused>,
}

/// Hears of a client refused at the handshake: reason, `ip:port`.
pub type OnRefused = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// Whether a client certificate's identity may speak on a plane.
pub type Admit = Arc<dyn Fn(Option<&tls::Identity>) -> bool + Send + Sync>;

/// The identity in the client certificate a request arrived with (a request extension
/// on the planes that require one).
#[derive(Debug, Clone)]
pub struct ClientIdentity(pub tls::Identity);

/// The address a request's connection came from (a request extension on every plane).
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

/// How a listener protects itself: bounds on how long a client may take and on how
/// many connections it may hold.
#[derive(Clone)]
pub struct ServeLimits {
    /// Which plane (`api`, `peer`, `admin`, `acquirer`): the metric label.
    pub plane: &'static str,
    /// Bound on the TLS handshake, and on how long a connection may go without a
    /// request in hand: waiting for a request's head (however slowly it dribbles in)
    /// or for the next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Most connections open at once on this listener; more are closed on accept.
    pub connections_max: usize,
    /// Most connections open at once from one source address (IP).
    pub connections_per_address_max: usize,
    /// Counts open and refused connections.
    pub stats: Arc<ListenerStats>,
}

impl ServeLimits {
    /// Generous limits with unexported counters, for listeners that are not a node's
    /// planes (the acquirer simulator).
    pub fn unexported(plane: &'static str) -> ServeLimits {
        ServeLimits {
            plane,
            header_read_timeout: Duration::from_secs(10),
            connections_max: 4_096,
            connections_per_address_max: 4_096,
            stats: Arc::new(ListenerStats::new(
                Gauge::default(),
                Counter::default(),
                Counter::default(),
                Counter::default(),
                Counter::default(),
            )),
        }
    }
}

/// Connection counters of one listener (exported as metrics when registered).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed on accept because the listener was full.
    pub refused_full: Counter,
    /// Connections closed on accept because their address held too many.
    pub refused_per_address: Counter,
    /// Connections closed because the handshake or a request head did not arrive in time.
    pub timed_out: Counter,
    /// Accepts that failed (see `accept_failure`): each is retried.
    pub accept_failed: Counter,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

impl ListenerStats {
    /// Counters that export through the given metrics (see `Metrics::listener`).
    pub fn new(
        open: Gauge,
        refused_full: Counter,
        refused_per_address: Counter,
        timed_out: Counter,
        accept_failed: Counter,
    ) -> ListenerStats {
        ListenerStats {
            open,
            refused_full,
            refused_per_address,
            timed_out,
            accept_failed,
            per_address: Mutex::default(),
        }
    }
}
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

/// A connection's place in its listener's counts; released when dropped.
struct Slot {
    stats: Arc<ListenerStats>,
    ip: Option<IpAddr>,
}

impl ListenerStats {
    /// Takes a slot for a connection from `peer`, or says why not.
    fn admit(self: &Arc<Self>, peer: &str, limits: &ServeLimits) -> Result<Slot, &'static str> {
        let ip = peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        if self.open.get() as usize >= limits.connections_max {
            self.refused_full.inc();
            return Err("listener full");
        }
        if let Some(ip) = ip {
            let mut per = self.per_address.lock().expect("per-address lock");
            let n = per.entry(ip).or_insert(0);
            if *n >= limits.connections_per_address_max {
                self.refused_per_address.inc();
                return Err("too many connections from this address");
            }
            *n += 1;
        }
        self.open.inc();
        Ok(Slot {
            stats: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.dec();
        if let Some(ip) = self.ip {
            let mut per = self.stats.per_address.lock().expect("per-address lock");
            if let Some(n) = per.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&ip);
                }
            }
        }
    }
}

/// A protocol a listener speaks beside HTTP/1: a connection whose first bytes are
/// `preface` is handed to `serve` — with the client certificate's identity and the
/// client's address — in place of HTTP, once those bytes have been read. HTTP/1 never
/// starts with it if it starts with a byte no request line starts with (a NUL, say), as
/// HTTP/2's preface does.
#[derive(Clone)]
pub struct Alternate {
    pub preface: &'static [u8],
    pub serve: AlternateServe,
}

/// Serves one connection of an [`Alternate`] protocol, from just after its preface.
pub type AlternateServe =
    Arc<dyn Fn(BoxIo, Option<tls::Identity>, String) -> BoxFut<'static, ()> + Send + Sync>;

/// Serves `router` on `listener` until the listener fails: HTTP/1 with keep-alive,
/// one task per connection, spawned through the Raft runtime; over TLS when `tls` is
/// given (the handshake runs in the connection's task, never in the accept loop).
/// A connection over `limits` is closed as soon as it is accepted.
pub async fn serve(
    listener: Box<dyn Listener>,
    router: axum::Router,
    tls: Option<ServeTls>,
    limits: ServeLimits,
) -> io::Result<()> {
    serve_with(listener, router, tls, limits, None).await
}

/// [`serve`], and on connections that open with its preface, `alternate`. A connection
/// counts against `limits` whichever protocol it speaks.
pub async fn serve_with(
    mut listener: Box<dyn Listener>,
    router: axum::Router,
    tls: Option<ServeTls>,
    limits: ServeLimits,
    alternate: Option<Alternate>,
) -> io::Result<()> {
    // Failures in a row (for the pause), and since the last warning, which goes out at
    // most every `ACCEPT_WARN_EVERY`: a node short of descriptors fails an accept for
    // every connection that frees one and is taken.
    let (mut failures, mut unreported) = (0u32, 0u64);
    let mut warned: Option<tokio::time::Instant> = None;
    let mut recovered_said = true;
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(c) => {
                failures = 0;
                if !recovered_said {
                    tracing::info!(plane = limits.plane, "accepting connections again");
                    recovered_said = true;
                }
                c
            }
            Err(e) => {
                let failure = accept_failure(&e);
                if failure == AcceptFailure::Listener {
                    return Err(e);
                }
                limits.stats.accept_failed.inc();
                failures = failures.saturating_add(1);
                unreported += 1;
                if warned.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                    tracing::warn!(
                        plane = limits.plane,
                        error = %e,
                        failures = unreported,
                        "accept failed; retrying (failures: since the last such warning)"
                    );
                    warned = Some(tokio::time::Instant::now());
                    unreported = 0;
                    recovered_said = false;
                }
                if let Some(pause) = accept_pause(failure, failures) {
                    crate::runtime::sleep(pause).await;
                }
                continue;
            }
        };
        let slot = match limits.stats.admit(&peer, &limits) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(plane = limits.plane, peer, why, "connection refused");
                drop(io);
                continue;
            }
        };
        let router = router.clone();
        let tls = tls.clone();
        let limits = limits.clone();
        let alternate = alternate.clone();
        crate::runtime::spawn(async move {
            let _slot = slot;
            // The first request's head is due within the header-read timeout of the
            // accept, the TLS handshake included.
            let activity = Arc::new(Activity::new());
            let alt = alternate.as_ref();
            match tls {
                None => serve_either(io, router, peer, None, activity, &limits, alt).await,
                Some(tls) => match handshake(io, &tls, &peer, &limits).await {
                    Handshake::Admitted(stream, ident) => {
                        serve_either(stream, router, peer, ident, activity, &limits, alt).await
                    }
                    // A node that is not (or not yet) a member here gets an answer that
                    // says nothing was done, where a closed connection would leave a
                    // request it forwards in doubt.
                    Handshake::NotAMember(stream) => {
                        let head = Vec::new();
                        serve_conn(stream, head, not_a_member(), peer, None, activity, &limits)
                            .await
                    }
                    Handshake::Closed => {}
                },
            }
        });
    }
}

/// How a TLS handshake ended.
enum Handshake {
    Admitted(
        tokio_rustls::server::TlsStream<BoxIo>,
        Option<tls::Identity>,
    ),
    /// A node's certificate this plane does not admit: answered, never served.
    NotAMember(tokio_rustls::server::TlsStream<BoxIo>),
    Closed,
}

/// Answers every request `403 not_a_member` and closes the connection: what a node
/// this member does not count as one (removed, or added and not yet known here) gets,
/// so that it knows nothing was done.
fn not_a_member() -> axum::Router {
    use axum::response::IntoResponse;
    axum::Router::new().fallback(|| async {
        let body = kura_types::Problem {
            kind: "urn:kura:problem:not_a_member".into(),
            title: "Forbidden".into(),
            status: 403,
            code: kura_types::ProblemCode::NotAMember.as_str().into(),
            detail: "this node does not count the calling node as a member of the cluster \
                     (removed, or added and not yet known here); nothing was done"
                .into(),
        };
        (
            http::StatusCode::FORBIDDEN,
            [
                (http::header::CONTENT_TYPE, "application/problem+json"),
                (http::header::CONNECTION, "close"),
            ],
            serde_json::to_vec(&body).expect("problem json"),
        )
            .into_response()
    })
}

/// Completes the TLS handshake and admits the client.
async fn handshake(io: BoxIo, tls: &ServeTls, peer: &str, limits: &ServeLimits) -> Handshake {
    let config = tls.config.read().expect("tls config lock").clone();
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let stream = match tokio::time::timeout(limits.header_read_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer, error = %e, "TLS handshake failed");
            // A handshake that ended for want of a certificate, or for one this plane
            // does not trust, is a failed authentication; a client that just went away
            // is not.
            let refused_cert = matches!(
                e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
                Some(
                    rustls::Error::NoCertificatesPresented
                        | rustls::Error::InvalidCertificate(_)
                        | rustls::Error::InappropriateHandshakeMessage { .. }
                )
            );
            if refused_cert {
                if let Some(f) = &tls.on_refused {
                    f("bad_certificate", peer);
                }
            }
            return Handshake::Closed;
        }
        Err(_) => {
            limits.stats.timed_out.inc();
            tracing::debug!(peer, "TLS handshake timed out");
            return Handshake::Closed;
        }
    };
    let ident = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::identity_of);
    if let Some(admit) = &tls.admit {
        if !admit(ident.as_ref()) {
            let who = ident
                .as_ref()
                .map_or("no kura identity".into(), |i| i.to_string());
            tracing::warn!(peer, identity = %who, "connection refused: certificate not admitted on this plane");
            if let Some(f) = &tls.on_refused {
                f("identity_not_admitted", peer);
            }
            return match ident {
                Some(tls::Identity::Node { .. }) => Handshake::NotAMember(stream),
                _ => Handshake::Closed,
            };
        }
    }
    Handshake::Admitted(stream, ident)
}

/// Serves a connection in HTTP/1, or in `alternate`'s protocol if it opens with its
/// preface.
async fn serve_either<I: Io>(
    io: I,
    router: axum::Router,
    peer: String,
    ident: Option<tls::Identity>,
    activity: Arc<Activity>,
    limits: &ServeLimits,
    alternate: Option<&Alternate>,
) {
    let Some(alt) = alternate else {
        return serve_conn(io, Vec::new(), router, peer, ident, activity, limits).await;
    };
    let mut io = io;
    let mut head = Vec::with_capacity(alt.preface.len());
    let sniffed = tokio::time::timeout(
        limits.header_read_timeout,
        read_preface(&mut io, alt.preface, &mut head),
    )
    .await;
    match sniffed {
        Ok(Ok(Some(true))) => (alt.serve)(Box::new(io), ident, peer).await,
        Ok(Ok(Some(false))) => serve_conn(io, head, router, peer, ident, activity, limits).await,
        Ok(Ok(None)) | Ok(Err(_)) => {}
        Err(_) => {
            limits.stats.timed_out.inc();
            tracing::debug!(peer, "closing a connection that sent nothing in time");
        }
    }
}

/// Reads a connection's first bytes into `head` for as long as they agree with
/// `preface`: `Some(true)` once all of it came, `Some(false)` at the first byte that
/// differs (the bytes read are in `head`), `None` if the connection closed first.
async fn read_preface<I: Io>(
    io: &mut I,
    preface: &[u8],
    head: &mut Vec<u8>,
) -> io::Result<Option<bool>> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    loop {
        let want = (preface.len() - head.len()).min(buf.len());
        let n = io.read(&mut buf[..want]).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if !preface.starts_with(head) {
            return Ok(Some(false));
        }
        if head.len() == preface.len() {
            return Ok(Some(true));
        }
    }
}

/// Serves HTTP/1 on `io`, whose first bytes, already read, are `head`.
async fn serve_conn<I: Io>(
    io: I,
    head: Vec<u8>,
    router: axum::Router,
    peer: String,
    ident: Option<tls::Identity>,
    activity: Arc<Activity>,
    limits: &ServeLimits,
) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;
    let (starts, ends) = (activity.clone(), activity.clone());
    let svc = router
        .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
            starts.request_started();
            crate::timeline::mark(crate::timeline::Stage::Request, 0, 0);
            if let Some(id) = &ident {
                req.extensions_mut().insert(ClientIdentity(id.clone()));
            }
            req.extensions_mut().insert(ClientAddr(peer.clone()));
            req
        })
        .map_response(move |resp| {
            ends.request_ended();
            crate::timeline::mark(crate::timeline::Stage::Response, 0, 0);
            resp
        });
    let io = ActivityIo {
        inner: Some(io),
        activity: activity.clone(),
        head,
        head_read: 0,
        refused: None,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc))
        .without_shutdown();
    tokio::pin!(conn);
    // A connection with no request in hand — waiting for a head, still reading one a
    // byte at a time, or idle between requests — is closed once it has been so for the
    // header-read timeout. Checked a few times per timeout rather than with a timer per
    // request, which would cost every request a timer and an extra read.
    let check = (limits.header_read_timeout / 4).max(Duration::from_millis(25));
    loop {
        tokio::select! {
            r = &mut conn => {
                match r {
                    Ok(parts) => parts.io.into_inner().close().await,
                    Err(e) => tracing::debug!(error = %e, "connection closed with error"),
                }
                return;
            }
            _ = tokio::time::sleep(check) => {
                if activity.idle_for() >= limits.header_read_timeout {
                    limits.stats.timed_out.inc();
                    tracing::debug!("closing a connection that sent no complete request in time");
                    return;
                }
            }
        }
    }
}

/// How long a closing connection reads and drops what its client still sends.
const LINGER: Duration = Duration::from_secs(1);
/// How much of it a closing connection reads at most.
const LINGER_BYTES: usize = 16 << 20;

/// Closes a connection whose last response is written. A request refused before its
/// body had all arrived (413) leaves the rest of the body on its way: closing the socket
/// with it unread makes the kernel reset the connection, and a client still sending
/// then sees the reset instead of the refusal. So the connection is half-closed first,
/// and what still comes is read and dropped — for at most [`LINGER`] and
/// [`LINGER_BYTES`] (nginx's lingering close) — until the client closes its side.
async fn linger<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: T) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Whether a connection has a request in hand, and since when it has not.
struct Activity {
    in_flight: std::sync::atomic::AtomicU32,
    /// Milliseconds since `epoch` when the connection last stopped being busy.
    idle_since_ms: std::sync::atomic::AtomicU64,
    epoch: tokio::time::Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: 0.into(),
            idle_since_ms: 0.into(),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A response body still being written keeps the connection busy.
    fn wrote(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long the connection has had no request in hand (zero while it has one).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let since = self.idle_since_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(since))
    }
}

/// A connection's stream, noting its writes in its [`Activity`]; its first bytes, read
/// before HTTP took it (see [`serve_either`]), are read again first.
struct ActivityIo<I: Io> {
    /// Always there until the connection closes (see [`ActivityIo::close`]).
    inner: Option<I>,
    activity: Arc<Activity>,
    head: Vec<u8>,
    head_read: usize,
    /// hyper's own refusal of a request it could not parse, held back (see
    /// [`hyper_refusal`]): its status.
    refused: Option<u16>,
}

/// The status of `head` if it is hyper's own refusal of a request it could not parse.
///
/// hyper answers such a request itself, before any service sees it — a head too large
/// or with too many headers (`431`), a request that is not HTTP/1 (`400`), another
/// version (`505`) — with an empty body and `connection: close`, then ends the
/// connection with an error and drops it: a client reads no problem with a code, and
/// one still sending the rest of a huge head gets a reset. The node holds that
/// response back and sends a problem in its place, then closes the way every other
/// connection closes ([`linger`]). Only a write that is one whole such head is held:
/// every response of the node's own has a body, and none of them is `431` or `505`.
fn hyper_refusal(head: &[u8]) -> Option<u16> {
    fn has(head: &[u8], line: &[u8]) -> bool {
        head.windows(line.len()).any(|w| w == line)
    }
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let status: u16 = std::str::from_utf8(status).ok()?.parse().ok()?;
    let refusal = matches!(status, 400 | 431 | 505)
        && head.len() <= 512
        && head.ends_with(b"\r\n\r\n")
        && has(head, b"\r\nconnection: close\r\n")
        && has(head, b"\r\ncontent-length: 0\r\n");
    refusal.then_some(status)
}

/// The problem sent in place of hyper's own refusal with `status`.
fn refusal_response(status: u16) -> Vec<u8> {
    use kura_types::{Problem, ProblemCode};
    let (code, title, detail) = match status {
        431 => (
            ProblemCode::HeadersTooLarge,
            "Request Header Fields Too Large",
            "the request's line and headers are too large, or there are too many headers",
        ),
        505 => (
            ProblemCode::HttpVersionNotSupported,
            "HTTP Version Not Supported",
            "this listener speaks HTTP/1.1",
        ),
        _ => (
            ProblemCode::InvalidHttp,
            "Bad Request",
            "the request is not valid HTTP/1.1",
        ),
    };
    let body = serde_json::to_string(&Problem {
        kind: format!("urn:kura:problem:{code}"),
        title: title.into(),
        status,
        code: code.as_str().into(),
        detail: detail.into(),
    })
    .expect("a problem serializes");
    format!(
        "HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<I: Io> ActivityIo<I> {
    /// Holds `write` back if it is hyper's own refusal ([`hyper_refusal`]).
    fn holds_back(&mut self, write: &[u8]) -> bool {
        let Some(status) = hyper_refusal(write) else {
            return false;
        };
        self.refused = Some(status);
        true
    }

    fn inner(&mut self) -> std::pin::Pin<&mut I> {
        std::pin::Pin::new(self.inner.as_mut().expect("connection open"))
    }

    /// Closes the connection: sends the problem for a refusal held back, then
    /// [`linger`]s.
    async fn close(mut self) {
        let (Some(io), refused) = (self.inner.take(), self.refused.take()) else {
            return;
        };
        close(io, refused).await;
    }
}

async fn close<I: Io>(mut io: I, refused: Option<u16>) {
    use tokio::io::AsyncWriteExt;
    if let Some(status) = refused {
        let sent = async {
            io.write_all(&refusal_response(status)).await?;
            io.flush().await
        };
        if tokio::time::timeout(LINGER, sent).await.is_err() {
            return;
        }
    }
    linger(io).await;
}

/// hyper drops the connection after its own refusal (the connection ends with an
/// error, not handing the IO back): the problem goes out on a task of its own.
impl<I: Io> Drop for ActivityIo<I> {
    fn drop(&mut self) {
        if let (Some(status), Some(io)) = (self.refused.take(), self.inner.take()) {
            crate::runtime::spawn(close(io, Some(status)));
        }
    }
}

impl<I: Io> tokio::io::AsyncRead for ActivityIo<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let at = self.head_read;
        if at < self.head.len() {
            let n = (self.head.len() - at).min(buf.remaining());
            buf.put_slice(&self.head[at..at + n]);
            self.head_read += n;
            return std::task::Poll::Ready(Ok(()));
        }
        self.inner().poll_read(cx, buf)
    }
}

impl<I: Io> tokio::io::AsyncWrite for ActivityIo<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        if self.holds_back(buf) {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        let r = self.inner().poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            if self.holds_back(only) {
                return std::task::Poll::Ready(Ok(only.len()));
            }
        }
        let r = self.inner().poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        // With a refusal held back, the side closes after the problem is sent (`close`).
        if self.refused.is_some() {
            return std::task::Poll::Ready(Ok(()));
        }
        self.inner().poll_shutdown(cx)
    }
}

/// At most one warning of failed accepts per listener this often.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// What a failed accept says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// One connection failed (reset or aborted before it was taken, or a network
    /// error Linux hands to `accept` for the connection: accept(2) says to retry).
    Connection,
    /// The process or the machine is short of file descriptors or memory: the next
    /// accept may work once some are freed.
    Resources,
    /// The listening socket itself is unusable: nothing to retry.
    Listener,
}

/// Sorts a failed accept. Only a broken listening socket ends a listener: a plane that
/// stopped accepting while its node stayed up would be a node that only looks alive.
fn accept_failure(e: &io::Error) -> AcceptFailure {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            AcceptFailure::Resources
        }
        Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT) => AcceptFailure::Listener,
        _ => AcceptFailure::Connection,
    }
}

/// How long to wait before the next accept after `failures` in a row: short of
/// resources, long enough for some to be freed; after one connection's failure, not
/// at all, unless failures repeat (then doubling from 1 ms, up to a second), so that
/// an error that keeps coming never spins a core.
fn accept_pause(failure: AcceptFailure, failures: u32) -> Option<Duration> {
    let backoff = Duration::from_millis(1 << failures.saturating_sub(2).min(10));
    match failure {
        AcceptFailure::Resources => Some(backoff.max(Duration::from_millis(100))),
        AcceptFailure::Connection if failures >= 2 => Some(backoff),
        _ => None,
    }
}

/// A spawner that runs connection drivers through the Raft runtime.
pub fn spawner() -> Spawner {
    Arc::new(|f| {
        crate::runtime::spawn(f);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"\0test-frames\r\n";

    /// A listener on loopback serving `GET /which` in HTTP and, after [`PREFACE`], an
    /// echo that answers `alt:` and the four bytes it reads.
    async fn listener() -> String {
        let l = TokioBinder.bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let router = axum::Router::new().route("/which", axum::routing::get(|| async { "http" }));
        let alt = Alternate {
            preface: PREFACE,
            serve: Arc::new(|mut io, _ident, _peer| {
                Box::pin(async move {
                    let mut b = [0u8; 4];
                    if io.read_exact(&mut b).await.is_ok() {
                        let _ = io.write_all(&[b"alt:".as_slice(), &b].concat()).await;
                    }
                })
            }),
        };
        let serving = serve_with(l, router, None, ServeLimits::unexported("test"), Some(alt));
        tokio::spawn(crate::runtime::Rt::scope(1, serving));
        addr
    }

    /// Sends `request` in one piece on a new connection to `addr` (while reading, so a
    /// request larger than the socket buffers still goes out) and returns all it reads.
    async fn exchange(addr: &str, request: Vec<u8>) -> io::Result<Vec<u8>> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        let (mut r, mut w) = s.into_split();
        let sending = tokio::spawn(async move {
            // Refused midway, the rest may not go out: that is the server's choice.
            let _ = w.write_all(&request).await;
            w
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await?;
        drop(sending.await);
        Ok(got)
    }

    /// The status line and the problem's code of an answer.
    fn status_and_code(answer: &[u8]) -> (String, String) {
        let text = String::from_utf8_lossy(answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(
            head.contains("\r\ncontent-type: application/problem+json\r\n"),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let status = head.lines().next().unwrap_or_default().to_owned();
        (
            status,
            problem["code"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// A listener whose first accepts fail with `errors` (raw OS error numbers), then
    /// accepts for real.
    struct Flaky {
        errors: std::collections::VecDeque<i32>,
        inner: Box<dyn Listener>,
    }

    impl Listener for Flaky {
        fn accept(&mut self) -> BoxFut<'_, io::Result<(BoxIo, String)>> {
            match self.errors.pop_front() {
                Some(e) => Box::pin(async move { Err(io::Error::from_raw_os_error(e)) }),
                None => self.inner.accept(),
            }
        }

        fn local_addr(&self) -> io::Result<String> {
            self.inner.local_addr()
        }
    }

    async fn serve_flaky(
        errors: &[i32],
    ) -> (
        String,
        Arc<ListenerStats>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let inner = TokioBinder.bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let limits = ServeLimits::unexported("test");
        let stats = limits.stats.clone();
        let router = axum::Router::new().route("/which", axum::routing::get(|| async { "http" }));
        let flaky = Flaky {
            errors: errors.iter().copied().collect(),
            inner,
        };
        let serving = tokio::spawn(crate::runtime::Rt::scope(
            1,
            serve(Box::new(flaky), router, None, limits),
        ));
        (addr, stats, serving)
    }

    #[tokio::test]
    async fn a_failed_accept_is_retried_and_only_a_broken_listening_socket_ends_the_listener() {
        // A connection reset or aborted before it was taken, the network errors Linux
        // hands to accept (accept(2): retry them), and a process or machine short of
        // descriptors or memory: none may stop a plane while its node stays up.
        let passing = [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::EPERM,
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
        ];
        let (addr, stats, serving) = serve_flaky(&passing).await;
        let answer = exchange(
            &addr,
            b"GET /which HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
        )
        .await
        .unwrap();
        assert!(
            String::from_utf8_lossy(&answer).ends_with("http"),
            "served after them"
        );
        assert_eq!(stats.accept_failed.get(), passing.len() as u64);
        assert!(!serving.is_finished());
        serving.abort();
        // A listening socket that is not one (any more) ends it, with the error.
        let (_, _, serving) = serve_flaky(&[libc::EBADF]).await;
        let ended = serving.await.unwrap().expect_err("ended");
        assert_eq!(ended.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn failed_accepts_pause_only_when_short_of_resources_or_when_they_repeat() {
        let (c, r) = (AcceptFailure::Connection, AcceptFailure::Resources);
        assert_eq!(
            accept_pause(c, 1),
            None,
            "one connection's failure: at once"
        );
        assert_eq!(accept_pause(c, 2), Some(Duration::from_millis(1)));
        assert_eq!(accept_pause(c, 5), Some(Duration::from_millis(8)));
        assert_eq!(accept_pause(c, 1_000), Some(Duration::from_millis(1024)));
        assert_eq!(accept_pause(r, 1), Some(Duration::from_millis(100)));
        assert_eq!(accept_pause(r, 1_000), Some(Duration::from_millis(1024)));
    }

    #[tokio::test]
    async fn a_request_hyper_cannot_parse_gets_a_problem_with_a_code() {
        let addr = listener().await;
        let big = |n: usize| {
            let mut r = b"GET /which HTTP/1.1\r\nhost: a\r\nx-big: ".to_vec();
            r.resize(r.len() + n, b'a');
            r
        };
        let many: Vec<u8> = (0..200)
            .flat_map(|i| format!("x-{i}: 1\r\n").into_bytes())
            .collect();
        let cases: [(Vec<u8>, &str, &str); 5] = [
            (
                [big(600 << 10), b"\r\n\r\n".to_vec()].concat(),
                "HTTP/1.1 431 Request Header Fields Too Large",
                "headers_too_large",
            ),
            // Still sending 8 MiB of head when refused: the refusal, not a reset.
            (
                big(8 << 20),
                "HTTP/1.1 431 Request Header Fields Too Large",
                "headers_too_large",
            ),
            (
                [b"GET /which HTTP/1.1\r\n".as_slice(), &many, b"\r\n"].concat(),
                "HTTP/1.1 431 Request Header Fields Too Large",
                "headers_too_large",
            ),
            (
                b"GET /which HTTP/1.1\r\nho st: a\r\n\r\n".to_vec(),
                "HTTP/1.1 400 Bad Request",
                "invalid_http",
            ),
            (
                b"GET /which HTTP/1.1 extra\r\n\r\n".to_vec(),
                "HTTP/1.1 400 Bad Request",
                "invalid_http",
            ),
        ];
        for (request, status, code) in cases {
            let answer = exchange(&addr, request)
                .await
                .expect("an answer, not a reset");
            assert_eq!(
                status_and_code(&answer),
                (status.to_owned(), code.to_owned())
            );
        }
        // A good request is untouched, and the connection stays open for the next.
        let answer = exchange(
            &addr,
            b"GET /which HTTP/1.1\r\nhost: a\r\n\r\nGET /which HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    }

    #[test]
    fn only_hypers_own_empty_refusal_is_held_back() {
        let refusal = |status: &str| {
            format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 18:44:56 GMT\r\n\r\n")
        };
        assert_eq!(
            hyper_refusal(refusal("431 Request Header Fields Too Large").as_bytes()),
            Some(431)
        );
        assert_eq!(
            hyper_refusal(refusal("400 Bad Request").as_bytes()),
            Some(400)
        );
        assert_eq!(
            hyper_refusal(refusal("505 HTTP Version Not Supported").as_bytes()),
            Some(505)
        );
        // The node's own answers: other statuses, a body, a connection kept open.
        assert_eq!(hyper_refusal(refusal("404 Not Found").as_bytes()), None);
        assert_eq!(hyper_refusal(refusal("200 OK").as_bytes()), None);
        let with_body = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        assert_eq!(hyper_refusal(with_body.as_bytes()), None);
        let kept_open = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_refusal(kept_open.as_bytes()), None);
        // What is sent instead parses as the problem.
        assert_eq!(
            status_and_code(&refusal_response(431)),
            (
                "HTTP/1.1 431 Request Header Fields Too Large".to_owned(),
                "headers_too_large".to_owned()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closing_connection_shuts_its_side_then_drains_its_client_until_it_closes() {
        let (server, mut client) = tokio::io::duplex(64 << 10);
        let lingering = tokio::spawn(linger(server));
        // The client sees the end of the answers first, while it still sends.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        // 1 MiB more than the duplex holds goes through: the server reads it.
        for _ in 0..16 {
            client.write_all(&[7u8; 64 << 10]).await.unwrap();
        }
        drop(client);
        let started = tokio::time::Instant::now();
        lingering.await.unwrap();
        assert!(started.elapsed() < LINGER, "it ends when the client closes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closing_connection_lingers_no_longer_than_its_bound() {
        let (server, client) = tokio::io::duplex(64 << 10);
        let started = tokio::time::Instant::now();
        // The client neither sends nor closes (and a linger without its bound would wait
        // for ever: the outer timeout turns that into a failure).
        tokio::time::timeout(LINGER * 2, linger(server))
            .await
            .expect("the linger ends by itself");
        let waited = started.elapsed();
        assert!(
            waited >= LINGER && waited < LINGER + Duration::from_millis(10),
            "{waited:?}"
        );
        drop(client);
        // Nor past its byte bound while the client keeps sending.
        let (server, mut client) = tokio::io::duplex(64 << 10);
        let lingering = tokio::spawn(linger(server));
        let mut sent = 0;
        while client.write_all(&[7u8; 64 << 10]).await.is_ok() {
            sent += 64 << 10;
            assert!(
                sent <= LINGER_BYTES + (128 << 10),
                "read past its bound: {sent}"
            );
        }
        lingering.await.unwrap();
        assert!(sent >= LINGER_BYTES, "stopped early: {sent}");
    }

    #[tokio::test]
    async fn http_is_served_beside_the_alternate_with_its_first_bytes_read_again() {
        let addr = listener().await;
        let pool = HttpPool::new(
            Arc::new(TcpConnector),
            kura_sdk::wire::tokio_spawner(),
            1 << 10,
        );
        for _ in 0..2 {
            let req = http::Request::get("/which")
                .header(http::header::HOST, &addr)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = pool.send(&addr, req, Duration::from_secs(5)).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.body().as_ref(), b"http");
        }
    }

    #[tokio::test]
    async fn a_connection_that_opens_with_the_preface_goes_to_the_alternate_however_it_arrives() {
        let addr = listener().await;
        // All at once, and a byte at a time.
        for split in [false, true] {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let sent = [PREFACE, b"ping"].concat();
            if split {
                for b in &sent {
                    s.write_all(&[*b]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            } else {
                s.write_all(&sent).await.unwrap();
            }
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"alt:ping");
        }
    }

    #[tokio::test]
    async fn a_connection_that_strays_from_the_preface_is_http() {
        let addr = listener().await;
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // The preface's first byte, then not the rest of it: HTTP, which refuses it.
        s.write_all(b"\0GET /which HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        assert!(
            got.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
}
