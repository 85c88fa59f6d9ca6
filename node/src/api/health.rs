//! Liveness, readiness, cluster status and the metrics endpoint.

use super::dto::{self, wire};
use super::St;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kura_types::{ClusterStatus, Live, Ready};

/// `200` while the process can answer at all.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "live", body = Live)))]
pub async fn live() -> axum::Json<Live> {
    axum::Json(Live {
        status: "live".into(),
    })
}

/// `200` when this node can serve client requests now (knows a leader, caught up,
/// storage and keys healthy, not drained), else `503`; lists each check.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "ready", body = Ready),
        (status = 503, description = "not ready; the checks say why", body = Ready),
    ))]
pub async fn ready(State(st): St) -> Response {
    let h = st.svc.own_health();
    let (code, status) = if h.ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let body = Ready {
        status: status.into(),
        health: wire(h),
    };
    (code, axum::Json(body)).into_response()
}

/// This node's view of the cluster, with every node's health (its own checks, and the
/// last report of each other node; `null` if it did not answer). Without the cluster
/// id: it admits peer requests, so only operators read it.
#[utoipa::path(get, path = "/v1/cluster/status", tag = "health",
    responses((status = 200, description = "this node's view", body = ClusterStatus)))]
pub async fn cluster_status(State(st): St) -> axum::Json<ClusterStatus> {
    axum::Json(dto::cluster_status(st.svc.status_view(), false))
}

/// The same view, with the cluster id.
#[utoipa::path(get, path = "/admin/v1/cluster/status", tag = "cluster",
    responses((status = 200, description = "this node's view", body = ClusterStatus)),
    security(("operator" = [])))]
pub async fn admin_cluster_status(State(st): St) -> axum::Json<ClusterStatus> {
    axum::Json(dto::cluster_status(st.svc.status_view(), true))
}

/// Prometheus metrics: OpenMetrics text when `Accept` names it (as Prometheus's
/// scrapes do), else the Prometheus text format 0.0.4.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "the metrics", content_type = "text/plain", body = String)))]
pub async fn metrics(State(st): St, headers: axum::http::HeaderMap) -> Response {
    st.svc.refresh_scrape_gauges();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        st.svc.metrics().encode_as(format),
    )
        .into_response()
}
