//! kura-sdk: the Rust client for kura's API.
//!
//! Give it every node's address. It sends to the node that answered last (or the
//! leader a node pointed at), moves on when a node is down, and retries only what
//! cannot have acted twice: requests that never reached a node, requests a node
//! refused with `503 not_leader`/`no_leader` before doing anything, reads, and calls
//! sent with an `Idempotency-Key` (payments), which the cluster answers once however
//! often they arrive.

mod api;
pub mod tls;
pub mod wire;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wire::{Connector, HttpPool, Spawner, TcpConnector, WireError};

/// Response header naming the leader's API address, set by every node that knows it.
pub const LEADER_HEADER: &str = "kura-leader";

/// Request header carrying the caller's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

pub use kura_types as types;
pub use kura_types::{
    AddMemberIn, AmountIn, AuditPage, AuditVerification, AuditVerifyIn, AuthorizeIn, Brand, CardIn,
    ClusterStatus, CreateMerchantIn, CvcState, Drained, Faults, InitOutcome, KeyRole, KeyStatus,
    KeyVerification, Leader, MemberCards, MemberOut, Merchant, Merchants, Payment, PaymentReport,
    PaymentState, Payments, ProblemCode, Ready, RegisterCardIn, Role, RotateKeyIn, SignedHead,
    SignedHeadNow, ThreeDs, Token, TokenFormat, TokenKind, TokenizeIn, TransferIn,
    UpdateMerchantIn,
};

/// The body of `POST /v1/tokens` (an older name).
pub type TokenizeRequest = TokenizeIn;
/// A card in a tokenize request (an older name).
pub type CardInput = CardIn;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API answered with a problem (4xx/5xx): a stable `code` and a sentence.
    #[error("{status} {code}: {detail}")]
    Api {
        status: u16,
        code: ProblemCode,
        detail: String,
    },
    /// No node could take the request; it was not acted on.
    #[error("no kura node could serve the request after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    /// The request may or may not have been acted on (timeout or broken connection after sending).
    #[error("outcome unknown: {0}")]
    Ambiguous(WireError),
    /// The response was not what the API documents.
    #[error("unexpected response: {0}")]
    Decode(String),
}

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Every node's API address, `host:port`.
    pub endpoints: Vec<String>,
    /// The merchant's secret key (or the admin token for admin calls).
    pub bearer: String,
    /// Deadline for one attempt.
    pub attempt_timeout: Duration,
    /// Deadline for opening a connection (a dead host drops packets rather than refusing).
    pub connect_timeout: Duration,
    /// How long an endpoint that could not be connected to is skipped (unless all are).
    pub down_cooldown: Duration,
    /// Upper bound on attempts for one call.
    pub attempts_max: u32,
    /// Pause before retrying after the second and every later refusal of a call
    /// (`not_leader`, `no_leader`), after every refusal whose idempotency key is in
    /// flight, and after each round of the endpoints that could not be reached
    /// (doubles, up to 8x); never after a call's last attempt.
    pub backoff: Duration,
    /// TLS to every endpoint (see [`ClientConfig::with_ca_file`]); `None` speaks plain
    /// HTTP, which only a cluster in its explicit insecure mode accepts.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClientConfig {
    /// Defaults suited to a three-node cluster: 5 s per attempt, 12 attempts.
    pub fn new(endpoints: Vec<String>, bearer: impl Into<String>) -> ClientConfig {
        ClientConfig {
            endpoints,
            bearer: bearer.into(),
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_millis(500),
            down_cooldown: Duration::from_secs(2),
            attempts_max: 12,
            backoff: Duration::from_millis(50),
            tls: None,
        }
    }

    /// Speaks TLS 1.3 to the endpoints, trusting the CA certificates in the PEM file
    /// `ca_file` (kura's own CA, from `kura certs create-ca`).
    pub fn with_ca_file(self, ca_file: &std::path::Path) -> Result<ClientConfig, tls::TlsError> {
        let roots = tls::roots_from_file(ca_file)?;
        self.with_tls(tls::client_config(roots, None)?)
    }

    /// Speaks TLS 1.3 to the endpoints, trusting the operating system's CAs.
    pub fn with_system_roots(self) -> Result<ClientConfig, tls::TlsError> {
        self.with_tls(tls::client_config(tls::system_roots()?, None)?)
    }

    /// Speaks TLS 1.3 trusting the CAs in `ca_file` and presenting the client certificate
    /// in `cert_file` with its key in `key_file` (an operator's, for the admin plane).
    pub fn with_client_cert(
        self,
        ca_file: &std::path::Path,
        cert_file: &std::path::Path,
        key_file: &std::path::Path,
    ) -> Result<ClientConfig, tls::TlsError> {
        let roots = tls::roots_from_file(ca_file)?;
        let identity = (tls::load_certs(cert_file)?, tls::load_key(key_file)?);
        self.with_tls(tls::client_config(roots, Some(identity))?)
    }

    /// Speaks TLS with a ready client configuration.
    pub fn with_tls(mut self, config: rustls::ClientConfig) -> Result<ClientConfig, tls::TlsError> {
        self.tls = Some(Arc::new(config));
        Ok(self)
    }
}

/// A kura API client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    pool: HttpPool,
    /// Index into `cfg.endpoints` of the node to try first; always in range.
    /// Index into `cfg.endpoints` of the node to try first; always in range.
    preferred: AtomicUsize,
    /// Per endpoint: until when to skip it after a failed connect (a dead host).
    down_until: std::sync::Mutex<Vec<Option<tokio::time::Instant>>>,
}

/// A decoded API answer.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: Value,
}

impl Client {
    /// A client over TCP (TLS when `cfg.tls` is set) on the ambient tokio runtime.
    pub fn new(cfg: ClientConfig) -> Client {
        Client::with_connector(cfg, Arc::new(TcpConnector), wire::tokio_spawner())
    }

    /// A client over any transport (simulations pass a turmoil connector), wrapped in
    /// TLS when `cfg.tls` is set.
    pub fn with_connector(
        cfg: ClientConfig,
        connector: Arc<dyn Connector>,
        spawn: Spawner,
    ) -> Client {
        assert!(
            !cfg.endpoints.is_empty(),
            "kura client needs at least one endpoint"
        );
        let connector: Arc<dyn Connector> = match &cfg.tls {
            Some(tls) => Arc::new(tls::TlsConnector::fixed(connector, (**tls).clone())),
            None => connector,
        };
        let pool =
            HttpPool::new(connector, spawn, 16 << 20).with_connect_timeout(cfg.connect_timeout);
        let down_until = std::sync::Mutex::new(vec![None; cfg.endpoints.len()]);
        Client {
            inner: Arc::new(Inner {
                cfg,
                pool,
                preferred: AtomicUsize::new(0),
                down_until,
            }),
        }
    }

    /// Sends any API call with the retry rules above; returns 2xx answers, maps the rest to errors.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<ApiResponse, Error> {
        self.send(method, path, body, None).await
    }

    /// Sends a call with an `Idempotency-Key` (payment, capture, void, refund). The
    /// cluster acts on a key once, so a call whose outcome is unknown is sent again with
    /// the same key — to another node if need be — until it gets an answer or runs out
    /// of attempts. Reuse the key only for the same request.
    pub async fn call_idempotent(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: &str,
    ) -> Result<ApiResponse, Error> {
        self.send(method, path, body, Some(key)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Result<ApiResponse, Error> {
        let idempotent = method == Method::GET || method == Method::HEAD || key.is_some();
        let body = body.map(|b| Bytes::from(serde_json::to_vec(&b).expect("json")));
        let n = self.inner.cfg.endpoints.len();
        let mut backoff = self.inner.cfg.backoff;
        let mut last = String::from("no attempt made");
        // A keyed call whose attempt may have reached a node, and which never got an
        // answer, ends in doubt rather than as "not acted on".
        let mut in_doubt: Option<WireError> = None;
        // Refusals so far (not_leader, no_leader, a key in flight).
        let mut refusals = 0;
        let attempts_max = self.inner.cfg.attempts_max;
        for attempt in 1..=attempts_max {
            let idx = self.pick();
            let addr = self.inner.cfg.endpoints[idx].clone();
            // Whether the next attempt waits for the backoff first.
            let pause = match self.attempt(&addr, &method, path, body.clone(), key).await {
                Ok(resp) => {
                    self.mark(idx, None);
                    self.follow_leader_hint(&resp);
                    let (status, body) = (resp.status(), parse_body(resp.body()));
                    if status.is_success() {
                        return Ok(ApiResponse { status, body });
                    }
                    let err = problem(status, &body);
                    let in_flight = matches!(&err, Error::Api { code, .. }
                        if key.is_some() && *code == ProblemCode::IdempotencyKeyInFlight);
                    let retry =
                        in_flight || matches!(&err, Error::Api { code, .. } if code.retryable());
                    if !retry {
                        return Err(err);
                    }
                    last = err.to_string();
                    tracing::debug!(%addr, attempt, error = %last, "kura node refused; will retry");
                    // The first refusal goes on at once, to the leader it names or to
                    // the next node (a leader whose core is stuck, or one shutting down,
                    // cannot name the next). Every later one pauses first, named leader
                    // or not, so that a call rides out an election within its attempts
                    // and two nodes naming each other during a handoff are not tried in
                    // a tight loop. A call whose key is in flight waits for that request
                    // to finish wherever it is sent.
                    refusals += 1;
                    if !self.moved_to_hinted_leader(idx) {
                        self.rotate(idx);
                    }
                    in_flight || refusals > 1
                }
                Err(e) if e.never_sent() || idempotent => {
                    tracing::debug!(%addr, attempt, error = %e, "kura node unavailable, trying the next");
                    self.inner.pool.forget(&addr);
                    if e.never_sent() || key.is_some() {
                        self.mark(
                            idx,
                            Some(tokio::time::Instant::now() + self.inner.cfg.down_cooldown),
                        );
                    }
                    last = e.to_string();
                    if key.is_some() && !e.never_sent() {
                        in_doubt = Some(e);
                    }
                    self.rotate(idx);
                    // Every node tried once more: wait before the next round.
                    attempt % n as u32 == 0
                }
                Err(e) => {
                    // A node that took the request and never answered is hung or cut off:
                    // later calls go elsewhere for a while.
                    self.inner.pool.forget(&addr);
                    self.mark(
                        idx,
                        Some(tokio::time::Instant::now() + self.inner.cfg.down_cooldown),
                    );
                    self.rotate(idx);
                    return Err(Error::Ambiguous(e));
                }
            };
            // Pauses come before a retry, never after the last attempt: a call that has
            // run out of attempts returns its error at once.
            if pause && attempt < attempts_max {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.inner.cfg.backoff * 8);
            }
        }
        match in_doubt {
            Some(e) => Err(Error::Ambiguous(e)),
            None => Err(Error::Unavailable {
                attempts: attempts_max,
                last,
            }),
        }
    }

    async fn attempt(
        &self,
        addr: &str,
        method: &Method,
        path: &str,
        body: Option<Bytes>,
        key: Option<&str>,
    ) -> Result<http::Response<Bytes>, WireError> {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, addr)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.inner.cfg.bearer),
            );
        if let Some(key) = key {
            b = b.header(IDEMPOTENCY_HEADER, key);
        }
        if body.is_some() {
            b = b.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = b
            .body(Full::new(body.unwrap_or_default()))
            .expect("valid request");
        self.inner
            .pool
            .send(addr, req, self.inner.cfg.attempt_timeout)
            .await
    }

    /// The preferred endpoint, or the next one not in its cooldown (the preferred one if
    /// every endpoint is cooling down). Makes the choice the new preference.
    fn pick(&self) -> usize {
        let n = self.inner.cfg.endpoints.len();
        let preferred = self.inner.preferred.load(Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let down = self.inner.down_until.lock().expect("down lock");
        let up = (0..n)
            .map(|k| (preferred + k) % n)
            .find(|&i| down[i].is_none_or(|t| t <= now));
        let chosen = up.unwrap_or(preferred);
        if chosen != preferred {
            let _ = self.inner.preferred.compare_exchange(
                preferred,
                chosen,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        chosen
    }

    fn mark(&self, idx: usize, until: Option<tokio::time::Instant>) {
        self.inner.down_until.lock().expect("down lock")[idx] = until;
    }

    /// Moves on from endpoint `from`, unless another call already moved the preference.
    fn rotate(&self, from: usize) {
        let next = (from + 1) % self.inner.cfg.endpoints.len();
        let _ =
            self.inner
                .preferred
                .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn follow_leader_hint(&self, resp: &http::Response<Bytes>) {
        let Some(leader) = resp
            .headers()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        if let Some(i) = self.inner.cfg.endpoints.iter().position(|e| e == leader) {
            self.inner.preferred.store(i, Ordering::Relaxed);
        }
    }

    fn moved_to_hinted_leader(&self, tried: usize) -> bool {
        self.inner.preferred.load(Ordering::Relaxed) != tried
    }
}

fn parse_body(bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn problem(status: StatusCode, body: &Value) -> Error {
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Error::Api {
        status: status.as_u16(),
        code: ProblemCode::parse(&field("code")),
        detail: field("detail"),
    }
}

fn decode<T: serde::de::DeserializeOwned>(resp: ApiResponse) -> Result<T, Error> {
    serde_json::from_value(resp.body).map_err(|e| Error::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-endpoint fake node: answers `503 not_leader` `refusals` times, then 201.
    async fn fake_node(refusals: u32) -> (String, Arc<AtomicU32>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (addr, fake_node_on(listener, refusals, None))
    }

    /// [`fake_node`] on `listener`, its refusals naming `leader` (`kura-leader`) if given.
    fn fake_node_on(
        listener: std::net::TcpListener,
        refusals: u32,
        leader: Option<String>,
    ) -> Arc<AtomicU32> {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let seen2 = seen.clone();
        let named = leader.map_or(String::new(), |l| format!("{LEADER_HEADER}: {l}\r\n"));
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let (seen, named) = (seen2.clone(), named.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let k = seen.fetch_add(1, Ordering::SeqCst);
                        let (status, header, body) = if k < refusals {
                            (
                                "503 Service Unavailable",
                                named.as_str(),
                                r#"{"code":"not_leader","detail":"x"}"#,
                            )
                        } else {
                            ("201 Created", "", r#"{"ok":true}"#)
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\n{header}content-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        s.write_all(resp.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        seen
    }

    fn dead_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string() // closed when `l` drops: connections are refused
    }

    fn config(endpoints: Vec<String>, attempts: u32) -> ClientConfig {
        let mut c = ClientConfig::new(endpoints, "k");
        c.backoff = Duration::from_millis(1);
        c.attempts_max = attempts;
        c
    }

    #[tokio::test]
    async fn retries_cycle_through_every_endpoint_for_many_laps() {
        let (live, seen) = fake_node(4).await;
        let client = Client::new(config(vec![dead_addr(), dead_addr(), live], 30));
        let r = client
            .call(Method::POST, "/v1/tokens", Some(serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            5,
            "four refusals, then success, on the only live node"
        );
    }

    #[tokio::test]
    async fn a_refusal_naming_no_leader_moves_to_the_next_node_at_once() {
        let (refusing, refused) = fake_node(u32::MAX).await;
        let (live, served) = fake_node(0).await;
        let mut cfg = config(vec![refusing, live], 5);
        cfg.backoff = Duration::from_secs(30);
        let client = Client::new(cfg);
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.call(Method::POST, "/v1/tokens", Some(serde_json::json!({}))),
        )
        .await
        .expect("no pause before the next node")
        .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(
            (
                refused.load(Ordering::SeqCst),
                served.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn a_second_refusal_is_followed_by_a_pause() {
        let (a, _) = fake_node(u32::MAX).await;
        let (b, _) = fake_node(u32::MAX).await;
        let mut cfg = config(vec![a, b], 3);
        cfg.backoff = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let r = Client::new(cfg)
            .call(Method::POST, "/v1/tokens", Some(serde_json::json!({})))
            .await;
        assert!(
            matches!(r, Err(Error::Unavailable { attempts: 3, .. })),
            "{r:?}"
        );
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "no pause: {took:?}");
    }

    /// Calls `endpoint` with `attempts` attempts and a 30-s backoff; the call must give
    /// up as unavailable after its last attempt without pausing after it.
    async fn gives_up_at_once(endpoint: String, attempts: u32, method: Method) {
        let mut cfg = config(vec![endpoint], attempts);
        cfg.backoff = Duration::from_secs(30);
        let body = (method == Method::POST).then(|| serde_json::json!({}));
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            Client::new(cfg).call(method, "/v1/tokens", body),
        )
        .await
        .expect("the call paused after its last attempt");
        assert!(
            matches!(r, Err(Error::Unavailable { attempts: a, .. }) if a == attempts),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn the_last_attempts_refusal_is_returned_without_a_pause() {
        let (a, _) = fake_node(u32::MAX).await;
        gives_up_at_once(a, 2, Method::POST).await;
    }

    #[tokio::test]
    async fn the_last_attempts_failed_connection_is_returned_without_a_pause() {
        gives_up_at_once(dead_addr(), 1, Method::GET).await;
    }

    #[tokio::test]
    async fn two_nodes_naming_each_other_the_leader_are_not_tried_in_a_tight_loop() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (
            a.local_addr().unwrap().to_string(),
            b.local_addr().unwrap().to_string(),
        );
        let seen_a = fake_node_on(a, u32::MAX, Some(b_addr.clone()));
        let seen_b = fake_node_on(b, u32::MAX, Some(a_addr.clone()));
        let mut cfg = config(vec![a_addr, b_addr], 6);
        cfg.backoff = Duration::from_millis(20);
        let started = std::time::Instant::now();
        let r = Client::new(cfg)
            .call(Method::GET, "/v1/tokens/x", None)
            .await;
        assert!(
            matches!(r, Err(Error::Unavailable { attempts: 6, .. })),
            "{r:?}"
        );
        assert_eq!(
            seen_a.load(Ordering::SeqCst) + seen_b.load(Ordering::SeqCst),
            6
        );
        // Five retries, the first at once: 20 + 40 + 80 + 160 ms of pauses at least.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }

    #[tokio::test]
    async fn gives_up_after_the_attempt_bound_with_the_last_error() {
        let client = Client::new(config(vec![dead_addr(), dead_addr()], 5));
        match client.call(Method::GET, "/v1/tokens/x", None).await {
            Err(Error::Unavailable { attempts: 5, last }) => {
                assert!(last.contains("cannot connect"), "{last}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn api_errors_other_than_not_leader_are_returned_at_once() {
        let (live, seen) = fake_node(0).await;
        let client = Client::new(config(vec![live], 5));
        let ok = client.call(Method::GET, "/", None).await.unwrap();
        assert_eq!(ok.body["ok"], true);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    /// Counts connection attempts per address, then connects over TCP.
    #[derive(Default)]
    struct CountingConnector(std::sync::Mutex<std::collections::HashMap<String, u32>>);

    impl Connector for CountingConnector {
        fn connect<'a>(&'a self, addr: &'a str) -> wire::BoxFut<'a, std::io::Result<wire::BoxIo>> {
            *self.0.lock().unwrap().entry(addr.to_owned()).or_default() += 1;
            TcpConnector.connect(addr)
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_is_retired_once_it_reaches_its_max_age() {
        let (live, _) = fake_node(0).await;
        let counter = Arc::new(CountingConnector::default());
        let pool = HttpPool::new(counter.clone(), wire::tokio_spawner(), 1 << 16)
            .with_max_age(Duration::from_millis(500));
        let get = || {
            http::Request::get("/")
                .header(http::header::HOST, live.as_str())
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let connects = || counter.0.lock().unwrap().get(&live).copied().unwrap_or(0);
        pool.send(&live, get(), Duration::from_secs(5))
            .await
            .unwrap();
        pool.send(&live, get(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(connects(), 1, "a young connection is reused");
        tokio::time::sleep(Duration::from_millis(700)).await;
        pool.send(&live, get(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(connects(), 2, "an old one is replaced");
    }

    #[tokio::test]
    async fn an_endpoint_that_failed_to_connect_is_skipped_during_its_cooldown() {
        let (live, seen) = fake_node(4).await;
        let dead = dead_addr();
        let counter = Arc::new(CountingConnector::default());
        let client = Client::with_connector(
            config(vec![dead.clone(), live], 30),
            counter.clone(),
            wire::tokio_spawner(),
        );
        let r = client
            .call(Method::POST, "/v1/tokens", Some(serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(seen.load(Ordering::SeqCst), 5);
        assert_eq!(
            counter.0.lock().unwrap()[&dead],
            1,
            "the dead endpoint is tried once, then skipped"
        );
    }

    /// Accepts connections and reads requests but never answers (a SIGSTOPped process).
    async fn hung_node() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                held.push(s);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_node_that_never_answers_is_skipped_by_the_next_call() {
        let hung = hung_node().await;
        let (live, seen) = fake_node(0).await;
        let mut cfg = config(vec![hung, live], 5);
        cfg.attempt_timeout = Duration::from_millis(200);
        let client = Client::new(cfg);
        let first = client
            .call(Method::POST, "/v1/tokens", Some(serde_json::json!({})))
            .await;
        assert!(matches!(first, Err(Error::Ambiguous(_))), "{first:?}");
        let second = client
            .call(Method::POST, "/v1/tokens", Some(serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(second.status, StatusCode::CREATED);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_keyed_call_in_doubt_is_sent_again_with_its_key() {
        let hung = hung_node().await;
        let (live, seen) = fake_node(0).await;
        let mut cfg = config(vec![hung, live], 5);
        cfg.attempt_timeout = Duration::from_millis(200);
        let client = Client::new(cfg);
        let r = client
            .call_idempotent(
                Method::POST,
                "/v1/payments",
                Some(serde_json::json!({})),
                "k-1",
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_keyed_call_that_never_got_an_answer_ends_in_doubt() {
        let mut cfg = config(vec![hung_node().await], 2);
        cfg.attempt_timeout = Duration::from_millis(100);
        let r = Client::new(cfg)
            .call_idempotent(
                Method::POST,
                "/v1/payments",
                Some(serde_json::json!({})),
                "k-2",
            )
            .await;
        assert!(matches!(r, Err(Error::Ambiguous(_))), "{r:?}");
    }
}
