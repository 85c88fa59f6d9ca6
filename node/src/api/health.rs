//! Liveness, readiness, cluster status and the metrics endpoint.

use super::St;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `GET /health/live`: 200 while the process can answer at all.
pub async fn live() -> Response {
    axum::Json(json!({ "status": "live" })).into_response()
}

/// `GET /health/ready`: 200 when this node can serve client requests now.
pub async fn ready(State(st): St) -> Response {
    let s = st.cluster.status();
    let has_leader = s.leader_id.is_some();
    let checks = json!([{
        "name": "raft",
        "status": if has_leader { "pass" } else { "fail" },
        "message": match &s.leader_name { Some(l) => format!("leader is {l}, term {}", s.term), None => "no leader known".into() },
    }]);
    let code = if has_leader {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(
            json!({ "status": if has_leader { "ready" } else { "not_ready" }, "checks": checks }),
        ),
    )
        .into_response()
}

/// `GET /v1/cluster/status`: this node's view of the cluster.
pub async fn cluster_status(State(st): St) -> Response {
    axum::Json(st.cluster.status()).into_response()
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(st): St) -> Response {
    st.metrics
        .vault_tokens
        .set(st.cluster.vault().read(|v| v.token_count()) as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}
