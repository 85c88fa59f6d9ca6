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
mod openapi;
pub mod operator;
mod payments;
pub mod peer;
pub mod problem;
mod strict_json;
mod tokens;

pub use crate::service::ApiSettings;
pub use problem::Problem;

use crate::net::HttpPool;
use crate::service::Service;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

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

/// The client API's routes that run on the leader.
fn client_leader_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(tokens::create))
        .routes(routes!(tokens::get))
        .routes(routes!(payments::create, payments::by_order))
        .routes(routes!(payments::get))
        .routes(routes!(payments::capture))
        .routes(routes!(payments::void))
        .routes(routes!(payments::refund))
        .routes(routes!(payments::report))
        .routes(routes!(cards::list, cards::register))
        .routes(routes!(cards::delete))
}

/// The client API's routes every node answers itself.
fn client_local_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::cluster_status))
        .routes(routes!(health::metrics))
}

/// The admin plane's routes that run on the leader.
fn admin_leader_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(admin::create_merchant, admin::list_merchants))
        .routes(routes!(admin::rotate_key))
        .routes(routes!(admin::get_merchant, admin::update_merchant))
        .routes(routes!(admin::transfer_leader))
        .routes(routes!(admin::drain))
        .routes(routes!(admin::undrain))
        .routes(routes!(admin::add_member))
        .routes(routes!(admin::promote_member))
        .routes(routes!(admin::remove_member))
        .routes(routes!(keys::status))
        .routes(routes!(keys::rotate))
        .routes(routes!(keys::rotate_kek))
        .routes(routes!(keys::verify))
        .routes(routes!(keys::retire))
        .routes(routes!(audit::page))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::signed_head))
        .routes(routes!(admin::get_compare, admin::start_compare))
}

/// The admin plane's routes every node answers itself.
fn admin_local_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(admin::init))
        .routes(routes!(admin::get_faults, admin::set_faults))
        .routes(routes!(admin::get_scrub, admin::start_scrub))
        .routes(routes!(health::admin_cluster_status))
        .routes(routes!(admin::snapshot))
}

/// Where the API's description is served (on the client API; it is not part of it).
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The API's OpenAPI 3.1 description as served, generated from the handlers and the
/// wire types: every route of both planes (`/admin/` paths are on the admin plane),
/// and only those.
pub fn openapi() -> serde_json::Value {
    let mut doc = <openapi::ApiDoc as utoipa::OpenApi>::openapi();
    for routes in [
        client_leader_routes(),
        client_local_routes(),
        admin_leader_routes(),
        admin_local_routes(),
    ] {
        doc.merge(routes.split_for_parts().1);
    }
    let mut json = serde_json::to_value(&doc).expect("the description serializes");
    openapi::camel_case_links(&mut json);
    json
}

/// The client API: merchants' routes, health, metrics and the API's description.
pub fn router(state: Arc<AppState>) -> Router {
    let (leader_routes, _) = client_leader_routes().split_for_parts();
    let leader_routes =
        leader_routes.layer(middleware::from_fn_with_state(state.clone(), leader_checks));
    let (local_routes, _) = client_local_routes().split_for_parts();
    let description = Arc::new(openapi());
    Router::new()
        .merge(leader_routes)
        .merge(local_routes)
        .route(
            OPENAPI_PATH,
            get(move || {
                let d = description.clone();
                async move { axum::Json(d) }
            }),
        )
        .fallback(|| async {
            Problem::not_found("route_not_found", "no such route; see GET /openapi.json")
        })
        .layer(DefaultBodyLimit::max(
            state.svc.settings().request_body_bytes_max,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The admin plane: named operators (and the CLI) form the cluster, manage merchants
/// and keys, read the audit trail, move leadership and drain nodes. Every route needs
/// an authenticated [`Operator`](crate::service::auth::Operator); auditors may only
/// read.
pub fn admin_router(state: Arc<AppState>) -> Router {
    let (leader_routes, _) = admin_leader_routes().split_for_parts();
    let leader_routes = leader_routes.layer(middleware::from_fn_with_state(
        state.clone(),
        forward::to_leader,
    ));
    let (local_routes, _) = admin_local_routes().split_for_parts();
    Router::new()
        .merge(leader_routes)
        .merge(local_routes)
        .fallback(|| async {
            Problem::not_found(
                "route_not_found",
                "no such admin route; see GET /openapi.json on the client API",
            )
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

/// What a request to one of the client API's leader routes goes through, outermost
/// first: CORS, the card-number guard, forwarding to the leader, the rate limits. One
/// layer rather than four: each `from_fn` layer clones the service beneath it and boxes
/// a future per request, which the leader pays on every request.
async fn leader_checks(State(st): St, req: Request, next: Next) -> axum::response::Response {
    let st = &*st;
    cors::around(st, req, move |req| {
        fields::guard_around(st, req, move |req| {
            forward::to_leader_around(st, req, move |req| {
                limits::around(st, req, move |req| next.run(req))
            })
        })
    })
    .await
}

/// Counts and times every request by route template.
async fn observe(State(st): St, req: Request, next: Next) -> axum::response::Response {
    // Kept by reference count (a route's template, a standard method), not copied.
    let endpoint = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = tokio::time::Instant::now();
    let resp = next.run(req).await;
    st.svc.metrics().observe_request(
        endpoint.as_ref().map_or("unmatched", |p| p.as_str()),
        method.as_str(),
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
