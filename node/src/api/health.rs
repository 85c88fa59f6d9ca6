//! Liveness, readiness, cluster status and the metrics endpoint.

use super::St;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// `GET /health/live`: 200 while the process can answer at all.
pub async fn live() -> Response {
    axum::Json(json!({ "status": "live" })).into_response()
}

/// `GET /health/ready`: 200 when this node can serve client requests now (knows a
/// leader, caught up, storage and keys healthy, not drained), else 503; lists each check.
pub async fn ready(State(st): St) -> Response {
    let r = st.svc.own_health();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if r.ready { "ready" } else { "not_ready" };
    (code, axum::Json(json!({ "status": status, "health": r }))).into_response()
}

/// `GET /v1/cluster/status`: this node's view of the cluster, with every node's health
/// (its own checks, and the last report of each other node; `null` if it did not answer).
pub async fn cluster_status(State(st): St) -> Response {
    let mut v = status_view(&st);
    // The cluster id admits a peer request (besides its certificate); it is not served
    // to unauthenticated callers. Operators read it on the admin plane.
    if let Some(o) = v.as_object_mut() {
        o.remove("cluster_id");
    }
    axum::Json(v).into_response()
}

/// `GET /admin/v1/cluster/status` (admin plane): the same view, with the cluster id.
pub async fn admin_cluster_status(State(st): St) -> Response {
    axum::Json(status_view(&st)).into_response()
}

fn status_view(st: &super::AppState) -> Value {
    let view = st.svc.status_view();
    let me = view.status.node_id;
    let mut v = serde_json::to_value(&view.status).expect("status serializes");
    v["health"] = json!(view.health);
    v["acquirer_routes"] = json!(view.routes);
    if let Some(members) = v["members"].as_array_mut() {
        for m in members {
            let id = m["id"].as_u64().unwrap_or_default();
            m["health"] = if id == me {
                json!(view.health)
            } else {
                json!(view.peers.get(&id).cloned().flatten())
            };
        }
    }
    v
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(st): St) -> Response {
    st.svc.refresh_scrape_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.svc.metrics().encode(),
    )
        .into_response()
}
