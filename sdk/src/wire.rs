//! HTTP/1 over any byte stream, with a small connection pool and a deadline on every
//! request. The same code runs over tokio TCP and over simulated (turmoil) TCP: the
//! caller supplies a [`Connector`] and a [`Spawner`].

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed byte stream.
pub type BoxIo = Box<dyn Io>;
/// A boxed, sendable future.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens byte streams to `host:port` addresses.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `addr`.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<BoxIo>>;
}

/// Plain TCP through tokio, with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFut<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxIo)
        })
    }
}

/// Runs background futures (the connection drivers).
pub type Spawner = Arc<dyn Fn(BoxFut<'static, ()>) + Send + Sync>;

/// A spawner on the ambient tokio runtime.
pub fn tokio_spawner() -> Spawner {
    Arc::new(|f| {
        tokio::spawn(f);
    })
}

/// Why a request failed, and whether the server can have acted on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// No connection could be made: the request was never sent.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    /// The deadline passed; the server may or may not have acted.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The connection failed after the request was sent; the server may have acted.
    #[error("connection to {addr} failed: {source}")]
    Http { addr: String, source: hyper::Error },
    /// The response body exceeded the limit.
    #[error("response from {addr} exceeds {limit_bytes} bytes")]
    TooLarge { addr: String, limit_bytes: usize },
}

impl WireError {
    /// True when the request certainly never reached the server (safe to retry anything).
    pub fn never_sent(&self) -> bool {
        matches!(self, WireError::Connect { .. })
    }
}

/// A pool of idle HTTP/1 connections per address.
pub struct HttpPool {
    connector: Arc<dyn Connector>,
    spawn: Spawner,
    // Ordered, so dropping a pool closes its connections in the same order every time
    // (a simulation replays byte for byte only if it does).
    idle: Mutex<BTreeMap<String, Vec<Pooled>>>,
    idle_per_addr_max: usize,
    body_bytes_max: usize,
    connect_timeout: Duration,
    max_age: Option<Duration>,
    idle_max: Duration,
}

/// A connection, when it was made and since when it has been idle.
struct Pooled {
    send: SendRequest<Full<Bytes>>,
    born: tokio::time::Instant,
    idle_since: tokio::time::Instant,
}

/// Default bound on how long a connection may sit idle in the pool: below the idle
/// timeout of kura's listeners (`limits.header_read_timeout_ms`, 10 s by default), so
/// the pool never sends on a connection the server is closing.
pub const IDLE_MAX_DEFAULT: Duration = Duration::from_secs(4);

/// Idle connections kept per address: enough for one client shared by a few hundred
/// concurrent callers, so that a busy client does not reconnect for every request.
const IDLE_PER_ADDR_MAX: usize = 256;

/// Default bound on establishing one connection.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

impl HttpPool {
    /// A pool that connects with `connector` and drives connections with `spawn`.
    pub fn new(connector: Arc<dyn Connector>, spawn: Spawner, body_bytes_max: usize) -> HttpPool {
        HttpPool {
            connector,
            spawn,
            idle: Mutex::new(BTreeMap::new()),
            idle_per_addr_max: IDLE_PER_ADDR_MAX,
            body_bytes_max,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            max_age: None,
            idle_max: IDLE_MAX_DEFAULT,
        }
    }

    /// Drops connections idle for longer than `idle_max` instead of reusing them (keep
    /// it below the server's idle timeout).
    pub fn with_idle_max(mut self, idle_max: Duration) -> HttpPool {
        self.idle_max = idle_max;
        self
    }

    /// Retires a connection once it is `max_age` old (it finishes the request it
    /// carries): a renewed certificate, or a CA no longer trusted, then takes effect on
    /// long-lived connections within that bound.
    pub fn with_max_age(mut self, max_age: Duration) -> HttpPool {
        self.max_age = Some(max_age);
        self
    }

    /// Bounds connection establishment separately: a connect that times out sent nothing,
    /// so it is reported as [`WireError::Connect`] (safe to retry), not as a timeout.
    pub fn with_connect_timeout(mut self, t: Duration) -> HttpPool {
        self.connect_timeout = t;
        self
    }

    /// Sends `req` to `addr` and reads the whole response, all within `timeout`.
    pub async fn send(
        &self,
        addr: &str,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, WireError> {
        match tokio::time::timeout(timeout, self.send_inner(addr, req)).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Timeout {
                addr: addr.to_owned(),
                timeout,
            }),
        }
    }

    async fn send_inner(
        &self,
        addr: &str,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, WireError> {
        // Try idle connections first; a stale one hands the request back unsent.
        while let Some(mut conn) = self.take_idle(addr) {
            if conn.send.ready().await.is_err() {
                continue;
            }
            match conn.send.try_send_request(req).await {
                Ok(resp) => return self.finish(addr, conn, resp).await,
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        return Err(WireError::Http {
                            addr: addr.to_owned(),
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let mut conn = self.connect(addr).await?;
        let resp = conn
            .send
            .send_request(req)
            .await
            .map_err(|source| WireError::Http {
                addr: addr.to_owned(),
                source,
            })?;
        self.finish(addr, conn, resp).await
    }

    async fn finish(
        &self,
        addr: &str,
        conn: Pooled,
        resp: Response<hyper::body::Incoming>,
    ) -> Result<Response<Bytes>, WireError> {
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, self.body_bytes_max)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(source) => WireError::Http {
                    addr: addr.to_owned(),
                    source: *source,
                },
                Err(_) => WireError::TooLarge {
                    addr: addr.to_owned(),
                    limit_bytes: self.body_bytes_max,
                },
            })?;
        self.put_idle(addr, conn);
        Ok(Response::from_parts(parts, body.to_bytes()))
    }

    /// Opens a stream to `addr` with the pool's connector (TLS included, if it has it),
    /// within its connect timeout, for a protocol of the caller's own over it. The
    /// stream is the caller's: the pool neither keeps nor reuses it.
    pub async fn connect_stream(&self, addr: &str) -> Result<BoxIo, WireError> {
        let connect_err = |source| WireError::Connect {
            addr: addr.to_owned(),
            source,
        };
        match tokio::time::timeout(self.connect_timeout, self.connector.connect(addr)).await {
            Ok(r) => r.map_err(connect_err),
            Err(_) => Err(connect_err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
        }
    }

    /// How old a connection may grow before it is retired (see [`HttpPool::with_max_age`]).
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// How long a connection may sit idle before it is dropped instead of reused (see
    /// [`HttpPool::with_idle_max`]).
    pub fn idle_max(&self) -> Duration {
        self.idle_max
    }

    async fn connect(&self, addr: &str) -> Result<Pooled, WireError> {
        let io = self.connect_stream(addr).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| WireError::Connect {
                addr: addr.to_owned(),
                source: io::Error::other(e),
            })?;
        (self.spawn)(Box::pin(async move {
            let _ = conn.await;
        }));
        let now = tokio::time::Instant::now();
        Ok(Pooled {
            send,
            born: now,
            idle_since: now,
        })
    }

    fn take_idle(&self, addr: &str) -> Option<Pooled> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(addr)?;
        while let Some(c) = list.pop() {
            if self.usable(&c) && c.idle_since.elapsed() < self.idle_max {
                return Some(c);
            }
        }
        None
    }

    /// Open, and younger than the pool's bound.
    fn usable(&self, c: &Pooled) -> bool {
        !c.send.is_closed() && self.max_age.is_none_or(|max| c.born.elapsed() < max)
    }

    fn put_idle(&self, addr: &str, mut conn: Pooled) {
        if !self.usable(&conn) {
            return;
        }
        conn.idle_since = tokio::time::Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(addr.to_owned()).or_default();
        if list.len() < self.idle_per_addr_max {
            list.push(conn);
        }
    }

    /// Drops every idle connection to `addr` (after it failed).
    pub fn forget(&self, addr: &str) {
        self.idle.lock().expect("pool lock").remove(addr);
    }
}
