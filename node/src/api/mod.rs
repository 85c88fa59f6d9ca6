//! The HTTP API: the client API's routes, the admin plane's, health and metrics, and
//! the peer routes outside Raft.
//!
//! HTTP only: routers, middleware (forwarding to the leader, rate limits, the card
//! number guard, CORS, operator authentication), extractors ([`extract`]), the wire
//! types ([`dto`]), and handlers of a few lines that turn a request into a typed call
//! of the [`Service`] and its result (or error, through [`Problem`]) into a response.
//! Any node answers any request: routes that need the leader are forwarded to it
//! transparently ([`forward`]). This module never reaches the cluster, the keys or the
//! store except through `service/`.

mod admin;
mod audit;
mod cards;
mod cors;
pub mod dto;
pub mod extract;
pub mod fields;
mod forward;
mod health;
mod keys;
pub mod limits;
pub mod operator;
mod payments;
pub mod peer;
pub mod problem;
mod tokens;

pub use crate::service::ApiSettings;
pub use problem::Problem;

use crate::net::HttpPool;
use crate::service::Service;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// What the HTTP layer holds: the service, the connections to other nodes it forwards
/// over, and the request-rate limiters.
pub struct AppState {
    pub svc: Arc<Service>,
    /// Connections to other nodes (forwarding).
    pub pool: Arc<HttpPool>,
    /// Request rates per address and per key.
    pub limiters: limits::Limiters,
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
            get(cards::list).post(cards::register),
        )
        .route(
            "/v1/members/{member_id}/cards/{token}",
            axum::routing::delete(cards::delete),
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
            Problem::not_found("route_not_found", "no such route; see docs/api.md")
        })
        .layer(DefaultBodyLimit::max(
            state.svc.settings().request_body_bytes_max,
        ))
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
            Problem::not_found("route_not_found", "no such admin route; see docs/api.md")
        })
        .layer(middleware::from_fn_with_state(state.clone(), fields::guard))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            operator::authenticate,
        ))
        .layer(DefaultBodyLimit::max(
            state.svc.settings().request_body_bytes_max,
        ))
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
    st.svc.metrics().observe_request(
        &endpoint,
        &method,
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// The bearer token in the `Authorization` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    v.strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
}
