//! The HTTP API: client routes, admin routes, health and metrics.
//!
//! Any node answers any request. Routes that need the leader are forwarded to it
//! transparently ([`forward`]); every error is `application/problem+json` with a stable
//! code ([`problem`]). This module never touches redb: it reads the vault through
//! [`Cluster`] and changes it only by proposing commands.

mod admin;
pub mod audit;
mod cors;
pub mod fields;
mod forward;
mod health;
mod keys;
pub mod limits;
mod members;
pub mod operator;
pub mod payments;
pub mod peer;
pub mod problem;
pub mod security;
mod tokens;

use crate::cluster::{Cluster, WriteError};
use crate::crypto::{api_key_hash, Entropy, KeyRing};
use crate::cvc::CvcStore;
use crate::metrics::Metrics;
use crate::net::HttpPool;
use crate::vault::{Command, KeyRole, Response};
pub use audit::sign_loop;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::routing::{get, post};
use axum::Router;
pub use keys::rewrap_loop;
pub use problem::Problem;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
pub use tokens::purge_loop;

pub use crate::runtime::Clock;

/// API limits and defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Largest request body accepted.
    pub request_body_bytes_max: usize,
    /// Lifetime of a one-time token.
    pub one_time_token_ttl_s: u64,
    /// How long a write may wait for commit before the answer is `504 outcome_unknown`.
    pub write_timeout_ms: u64,
    /// Most CVCs held in memory at once (each lives at most a one-time token's TTL).
    pub cvc_entries_max: usize,
    /// How long the leader waits for other nodes to take a copy of a CVC.
    pub cvc_replication_timeout_ms: u64,
    /// Cards moved to the current data key per re-wrap log entry.
    pub rewrap_batch_cards: usize,
    /// How often the leader signs the audit trail's head (when it has grown).
    pub audit_sign_interval_s: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            request_body_bytes_max: 64 * 1024,
            one_time_token_ttl_s: 1800,
            write_timeout_ms: 10_000,
            cvc_entries_max: 100_000,
            cvc_replication_timeout_ms: 250,
            rewrap_batch_cards: 256,
            audit_sign_interval_s: 60,
        }
    }
}

impl ApiSettings {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.request_body_bytes_max < 1024 {
            return Err("api.request_body_bytes_max must be at least 1024".into());
        }
        if self.one_time_token_ttl_s == 0 || self.one_time_token_ttl_s > 86_400 {
            return Err("api.one_time_token_ttl_s must be between 1 and 86400".into());
        }
        if self.write_timeout_ms < 100 {
            return Err("api.write_timeout_ms must be at least 100".into());
        }
        if !(1..=10_000_000).contains(&self.cvc_entries_max) {
            return Err("api.cvc_entries_max must be between 1 and 10000000".into());
        }
        if !(10..=5_000).contains(&self.cvc_replication_timeout_ms) {
            return Err("api.cvc_replication_timeout_ms must be between 10 and 5000".into());
        }
        if !(1..=4_096).contains(&self.rewrap_batch_cards) {
            return Err("api.rewrap_batch_cards must be between 1 and 4096".into());
        }
        if !(1..=3_600).contains(&self.audit_sign_interval_s) {
            return Err("api.audit_sign_interval_s must be between 1 and 3600".into());
        }
        Ok(())
    }
}

/// Everything a handler needs.
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub keys: Arc<KeyRing>,
    pub entropy: Arc<Entropy>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub settings: ApiSettings,
    /// SHA-256 of the break-glass admin token, when one is configured.
    pub admin_token_sha256: Option<String>,
    /// Connections to other nodes (forwarding).
    pub pool: Arc<HttpPool>,
    /// CVCs of one-time tokens, in memory only.
    pub cvc: Arc<CvcStore>,
    /// Health checks, the view of the other nodes, and the leadership controller.
    pub failover: Arc<crate::failover::Failover>,
    /// Fault switches, when fault injection is enabled on this node.
    pub faults: Option<Arc<crate::faults::FaultSwitches>>,
    /// The acquirer routes.
    pub router: Arc<crate::acquirer::router::Router>,
    /// Payments this node is authorising right now (a retry of one answers 409).
    pub payments_in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Request rates per address and per key.
    pub limiters: limits::Limiters,
    /// Failed authentications not yet summarised into the audit trail.
    pub auth_failures: security::AuthFailures,
}

/// A merchant and which of its keys authenticated the request.
pub(crate) struct Caller {
    pub merchant_id: String,
    pub role: KeyRole,
}

type St = State<Arc<AppState>>;

/// The client API: merchants' routes, health and metrics.
pub fn router(state: Arc<AppState>) -> Router {
    let leader_routes = Router::new()
        .route("/v1/tokens", post(tokens::create))
        .route("/v1/tokens/{token}", get(tokens::get))
        .route(
            "/v1/payments",
            post(payments::create).get(payments::by_order),
        )
        .route("/v1/payments/{id}", get(payments::get))
        .route("/v1/payments/{id}/capture", post(payments::capture))
        .route("/v1/payments/{id}/void", post(payments::void))
        .route("/v1/payments/{id}/refund", post(payments::refund))
        .route("/v1/reports/payments", get(payments::report))
        .route(
            "/v1/members/{member_id}/cards",
            get(members::list).post(members::register),
        )
        .route(
            "/v1/members/{member_id}/cards/{token}",
            axum::routing::delete(members::delete),
        )
        .layer(middleware::from_fn_with_state(state.clone(), limits::layer))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::to_leader,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), fields::guard))
        .layer(middleware::from_fn_with_state(state.clone(), cors::layer));
    Router::new()
        .merge(leader_routes)
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/v1/cluster/status", get(health::cluster_status))
        .route("/metrics", get(health::metrics))
        .fallback(|| async {
            Problem::not_found(
                "route_not_found",
                "no such route; see the API reference in README.md",
            )
        })
        .layer(DefaultBodyLimit::max(state.settings.request_body_bytes_max))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The admin plane: named operators (and the CLI) form the cluster, manage merchants
/// and keys, read the audit trail, move leadership and drain nodes. Every route needs
/// an authenticated [`operator::Operator`]; auditors may only read.
pub fn admin_router(state: Arc<AppState>) -> Router {
    let leader_routes = Router::new()
        .route(
            "/admin/v1/merchants",
            post(admin::create_merchant).get(admin::list_merchants),
        )
        .route(
            "/admin/v1/merchants/{id}/rotate-key",
            post(admin::rotate_key),
        )
        .route(
            "/admin/v1/merchants/{id}",
            get(admin::get_merchant).patch(admin::update_merchant),
        )
        .route("/admin/v1/leader/transfer", post(admin::transfer_leader))
        .route("/admin/v1/nodes/{name}/drain", post(admin::drain))
        .route("/admin/v1/nodes/{name}/undrain", post(admin::undrain))
        .route("/admin/v1/keys", get(keys::status))
        .route("/admin/v1/keys/rotate", post(keys::rotate))
        .route("/admin/v1/keys/rotate-kek", post(keys::rotate_kek))
        .route("/admin/v1/keys/verify", post(keys::verify))
        .route("/admin/v1/keys/{version}/retire", post(keys::retire))
        .route("/admin/v1/audit", get(audit::page))
        .route("/admin/v1/audit/verify", post(audit::verify))
        .route("/admin/v1/audit/head", get(audit::signed_head))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::to_leader,
        ));
    Router::new()
        .merge(leader_routes)
        .route("/admin/v1/init", post(admin::init))
        .route(
            "/admin/v1/faults",
            get(admin::get_faults).post(admin::set_faults),
        )
        .route(
            "/admin/v1/cluster/status",
            get(health::admin_cluster_status),
        )
        .fallback(|| async {
            Problem::not_found(
                "route_not_found",
                "no such admin route; see the API reference in README.md",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), fields::guard))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            operator::authenticate,
        ))
        .layer(DefaultBodyLimit::max(state.settings.request_body_bytes_max))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and times every request by route template.
async fn observe(State(st): St, req: Request, next: Next) -> axum::response::Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let started = tokio::time::Instant::now();
    let resp = next.run(req).await;
    st.metrics.observe_request(
        &endpoint,
        &method,
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// A handler's outcome as a response: the value, or its problem.
fn result(r: Result<axum::response::Response, Problem>) -> axum::response::Response {
    r.unwrap_or_else(axum::response::IntoResponse::into_response)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    v.strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl AppState {
    /// The merchant whose secret or publishable key is in the `Authorization` header.
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let key = bearer(headers).ok_or_else(Problem::unauthorized)?;
        let hash = api_key_hash(key);
        self.cluster
            .vault()
            .read(|v| {
                v.key_owner(&hash).map(|o| Caller {
                    merchant_id: o.merchant_id.clone(),
                    role: o.role,
                })
            })
            .ok_or_else(Problem::unauthorized)
    }

    /// The merchant whose secret key is in the `Authorization` header; a publishable key
    /// is refused with `403 secret_key_required`.
    fn merchant(&self, headers: &HeaderMap) -> Result<String, Problem> {
        let c = self.caller(headers)?;
        match c.role {
            KeyRole::Secret => Ok(c.merchant_id),
            KeyRole::Publishable => Err(Problem::forbidden(
                "secret_key_required",
                "this endpoint needs the merchant's secret key; a publishable key may only create one-time tokens",
            )),
        }
    }

    /// Checks a break-glass token in the `Authorization` header: `None` when none is
    /// given, else whether it is the configured one (never, when none is configured).
    fn check_break_glass(&self, headers: &HeaderMap) -> Option<bool> {
        let key = bearer(headers)?;
        let Some(expected) = &self.admin_token_sha256 else {
            return Some(false);
        };
        let given = api_key_hash(key);
        Some(crate::crypto::constant_time_eq(
            given.as_bytes(),
            expected.as_bytes(),
        ))
    }

    /// Leader-stamped time for a new command.
    pub(crate) fn now_ms(&self) -> u64 {
        // Never behind the replicated clock, so time in the log never goes back.
        (self.clock)().max(self.cluster.vault().read(|v| v.clock_ms()))
    }

    /// Proposes `cmd`, bounded by the write timeout, mapping failures to problems. Gives
    /// up early, outcome unknown, if this node's Raft core gets stuck meanwhile.
    async fn write(&self, cmd: Command) -> Result<Response, Problem> {
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        let write = tokio::time::timeout(timeout, self.cluster.write(cmd));
        let Some(outcome) = self.cluster.unless_core_freezes(write).await else {
            return Err(Problem::outcome_unknown(
                "this node's Raft core got stuck on its storage while the write was in flight; it may or may not have been applied",
            ));
        };
        match outcome {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(WriteError::NotLeader { .. })) => Err(Problem::not_leader("leadership moved before the write was proposed; nothing was done; retry")),
            Ok(Err(WriteError::Unknown)) => Err(Problem::outcome_unknown("leadership changed while the write was in flight; it may or may not have been applied")),
            Ok(Err(WriteError::Unavailable(e))) => Err(Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "replication_unavailable",
                format!("replication is unavailable ({e}); the write may or may not have been applied"),
            )),
            Err(_) => Err(Problem::outcome_unknown(format!(
                "the write was not committed within {} ms; it may still be applied",
                self.settings.write_timeout_ms
            ))),
        }
    }

    /// Makes the next local read reflect every write committed before this call.
    async fn linearize(&self) -> Result<(), Problem> {
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        let linearize = tokio::time::timeout(timeout, self.cluster.linearize());
        let Some(outcome) = self.cluster.unless_core_freezes(linearize).await else {
            return Err(Problem::not_leader(
                "this node's Raft core is stuck on its storage; nothing was done; retry",
            ));
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(WriteError::NotLeader { .. })) => {
                Err(Problem::not_leader("leadership moved; retry"))
            }
            Ok(Err(e)) => Err(Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "replication_unavailable",
                e.to_string(),
            )),
            Err(_) => Err(Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "replication_unavailable",
                "could not confirm leadership in time",
            )),
        }
    }
}
