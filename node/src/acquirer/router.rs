//! The acquirer router: two routes (`cafis`, `cardnet`), health-checked, used in order
//! of preference among the healthy ones.
//!
//! The router never decides alone to try another route after a request *may* have
//! reached the first: [`Router::attempt`] reports `InDoubt`, and [`Router::resolve`]
//! settles it on that route (status query; a reversal if the acquirer never saw it, so a
//! late arrival is refused) before the caller may move on.

use super::protocol::{AuthRequest, TxnState, TxnStatus};
use crate::faults::FaultSwitches;
use crate::net::{HttpPool, WireError};
use crate::setting::InvalidSetting;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One route to an acquirer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `cafis` or `cardnet`.
    pub name: String,
    /// `host:port` of the acquirer endpoint.
    pub addr: String,
}

/// Routes and their timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcquirerSettings {
    /// In order of preference.
    pub routes: Vec<RouteConfig>,
    /// Deadline for one authorisation, status query or reversal.
    pub request_timeout_ms: u64,
    /// How often each route's health is checked.
    pub health_interval_ms: u64,
    /// The CA that signed the routes' server certificates (PEM); without it the
    /// system's trust store is used. Routes are always reached over TLS 1.3, but in the
    /// node's insecure mode (`tls.insecure`).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for AcquirerSettings {
    fn default() -> Self {
        AcquirerSettings {
            routes: Vec::new(),
            request_timeout_ms: 5_000,
            health_interval_ms: 500,
            ca_file: None,
        }
    }
}

impl AcquirerSettings {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.routes.len() > 2 {
            return Err(InvalidSetting::new(
                "acquirer.routes",
                "lists at most two routes (cafis, cardnet)",
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.name.is_empty() || !r.addr.contains(':') {
                return Err(InvalidSetting::new(
                    format!("acquirer.routes[{i}]"),
                    "needs a name and an addr of the form host:port",
                ));
            }
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Err(InvalidSetting::new(
                "acquirer.request_timeout_ms",
                "must be between 100 and 60000",
            ));
        }
        if !(50..=60_000).contains(&self.health_interval_ms) {
            return Err(InvalidSetting::new(
                "acquirer.health_interval_ms",
                "must be between 50 and 60000",
            ));
        }
        Ok(())
    }
}

/// A route's state as status and metrics show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteStatus {
    pub name: String,
    pub addr: String,
    pub up: bool,
    pub last_latency_ms: Option<f64>,
    pub requests: u64,
    pub errors: u64,
}

/// What one attempt on one route came to.
#[derive(Debug)]
pub enum Attempt {
    /// The acquirer answered.
    Answered(TxnStatus),
    /// The request provably never reached the acquirer: another route may be tried.
    NotSent(String),
    /// It may have reached the acquirer: resolve on this route before anything else.
    InDoubt(String),
}

/// What resolving an in-doubt transaction came to.
#[derive(Debug)]
pub enum Resolution {
    /// The acquirer knows the transaction: this is its state.
    Known(TxnStatus),
    /// The acquirer never saw it, and a reversal now blocks it for good.
    NeverArrived,
    /// The route cannot be reached: still in doubt.
    Unreachable(String),
}

/// Sends authorisations over the configured routes.
pub struct Router {
    settings: AcquirerSettings,
    pool: Arc<HttpPool>,
    routes: Vec<Mutex<RouteStatus>>,
    faults: Option<Arc<FaultSwitches>>,
    observe: LatencyObserver,
}

/// Told of every answered request: the route, the request (`authorize`, `query`,
/// `reverse`, `health`) and how long it took.
pub type LatencyObserver = Arc<dyn Fn(&str, &'static str, Duration) + Send + Sync>;

impl Router {
    /// A router over `settings.routes`; every route starts up until checked.
    pub fn new(
        settings: AcquirerSettings,
        pool: Arc<HttpPool>,
        faults: Option<Arc<FaultSwitches>>,
        observe: LatencyObserver,
    ) -> Router {
        let routes = settings
            .routes
            .iter()
            .map(|r| {
                Mutex::new(RouteStatus {
                    name: r.name.clone(),
                    addr: r.addr.clone(),
                    up: true,
                    ..RouteStatus::default()
                })
            })
            .collect();
        Router {
            settings,
            pool,
            routes,
            faults,
            observe,
        }
    }

    /// True when at least one route is configured.
    pub fn configured(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Every route's state.
    pub fn statuses(&self) -> Vec<RouteStatus> {
        self.routes
            .iter()
            .map(|r| r.lock().expect("route lock").clone())
            .collect()
    }

    /// Route names to try, healthy ones first, each group in order of preference.
    pub fn order(&self) -> Vec<String> {
        let s = self.statuses();
        let (up, down): (Vec<_>, Vec<_>) = s.into_iter().partition(|r| r.up);
        up.into_iter().chain(down).map(|r| r.name).collect()
    }

    fn route(&self, name: &str) -> Option<&Mutex<RouteStatus>> {
        self.routes
            .iter()
            .find(|r| r.lock().expect("route lock").name == name)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms)
    }

    fn blocked(&self) -> bool {
        self.faults.as_ref().is_some_and(|f| f.routes_blocked())
    }

    async fn send(
        &self,
        name: &str,
        request: &'static str,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<http::Response<bytes::Bytes>, WireError> {
        let route = self.route(name).expect("known route");
        let addr = route.lock().expect("route lock").addr.clone();
        if self.blocked() {
            return Err(WireError::Connect {
                addr,
                source: std::io::Error::other("blocked by fault injection"),
            });
        }
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &addr)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("valid acquirer request");
        let started = Instant::now();
        let r = self.pool.send(&addr, req, self.timeout()).await;
        let mut st = route.lock().expect("route lock");
        st.requests += 1;
        match &r {
            Ok(resp) if resp.status().is_success() || resp.status() == 404 => {
                let elapsed = started.elapsed();
                st.last_latency_ms = Some(elapsed.as_secs_f64() * 1000.0);
                (self.observe)(name, request, elapsed);
            }
            _ => {
                st.errors += 1;
                drop(st);
                self.pool.forget(&addr);
            }
        }
        r
    }

    /// Sends one authorisation to route `name`.
    pub async fn attempt(&self, name: &str, req: &AuthRequest) -> Attempt {
        let body = serde_json::to_vec(req).expect("an authorisation serializes");
        match self
            .send(name, "authorize", http::Method::POST, "/v1/authorize", body)
            .await
        {
            Ok(r) if r.status().is_success() => match serde_json::from_slice(r.body()) {
                Ok(s) => Attempt::Answered(s),
                Err(e) => Attempt::InDoubt(format!("unreadable answer: {e}")),
            },
            // The acquirer refused before processing (documented for 503 from it).
            Ok(r) if r.status() == http::StatusCode::SERVICE_UNAVAILABLE => {
                self.mark(name, false);
                Attempt::NotSent(format!("{name} answered 503"))
            }
            Ok(r) => Attempt::InDoubt(format!("{name} answered {}", r.status())),
            Err(e) if e.never_sent() => {
                self.mark(name, false);
                Attempt::NotSent(e.to_string())
            }
            Err(e) => Attempt::InDoubt(e.to_string()),
        }
    }

    /// Settles transaction `txn_id` on route `name`: its state if the acquirer has it;
    /// otherwise a reversal, so it can never be authorised later.
    pub async fn resolve(&self, name: &str, txn_id: &str) -> Resolution {
        let path = format!("/v1/transactions/{txn_id}");
        match self
            .send(name, "query", http::Method::GET, &path, Vec::new())
            .await
        {
            Ok(r) if r.status().is_success() => match serde_json::from_slice(r.body()) {
                Ok(s) => Resolution::Known(s),
                Err(e) => Resolution::Unreachable(format!("unreadable status: {e}")),
            },
            Ok(r) if r.status() == http::StatusCode::NOT_FOUND => {
                let path = format!("/v1/transactions/{txn_id}/reverse");
                match self
                    .send(name, "reverse", http::Method::POST, &path, Vec::new())
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        match serde_json::from_slice::<TxnStatus>(r.body()) {
                            // It arrived between the query and the reversal, and is now reversed.
                            Ok(s) if s.state == TxnState::Reversed => Resolution::NeverArrived,
                            Ok(s) => Resolution::Known(s),
                            Err(e) => Resolution::Unreachable(format!("unreadable reversal: {e}")),
                        }
                    }
                    Ok(r) => Resolution::Unreachable(format!("reversal answered {}", r.status())),
                    Err(e) => Resolution::Unreachable(e.to_string()),
                }
            }
            Ok(r) => Resolution::Unreachable(format!("status query answered {}", r.status())),
            Err(e) => Resolution::Unreachable(e.to_string()),
        }
    }

    fn mark(&self, name: &str, up: bool) {
        if let Some(r) = self.route(name) {
            r.lock().expect("route lock").up = up;
        }
    }

    /// Checks every route's `/health` once.
    pub async fn check_health(&self) {
        for r in self.statuses() {
            let ok = matches!(
                self.send(&r.name, "health", http::Method::GET, "/health", Vec::new()).await,
                Ok(resp) if resp.status().is_success()
            );
            if ok != r.up {
                tracing::warn!(route = %r.name, up = ok, "acquirer route health changed");
            }
            self.mark(&r.name, ok);
        }
    }

    /// How often [`Router::check_health`] should run.
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.settings.health_interval_ms)
    }
}
