//! Transparent forwarding of leader-only requests from followers to the leader.

use super::{AppState, Problem, St};
use crate::cluster::WriteError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use kura_sdk::LEADER_HEADER;
use std::time::Duration;

/// Header set on forwarded requests; a node never forwards a request twice.
pub const FORWARDED_HEADER: &str = "kura-forwarded-by";

/// Runs the request here when this node leads; otherwise proxies it to the leader.
pub async fn to_leader(State(st): St, req: Request, next: Next) -> Response {
    if st.cluster.is_leader() {
        if st.cluster.quorum_silent() {
            return Problem::not_leader(
                "this node has not heard from the other nodes lately and may no longer lead; nothing was done; retry",
            )
            .into_response();
        }
        let timeout = Duration::from_millis(st.settings.write_timeout_ms);
        return match st.cluster.leader_caught_up(timeout).await {
            Ok(()) => {
                let mut resp = next.run(req).await;
                set_leader_header(&mut resp, &st.cluster.me().api_addr);
                resp
            }
            Err(WriteError::NotLeader { .. }) => Problem::not_leader(
                "leadership moved before the request ran; nothing was done; retry",
            )
            .into_response(),
            Err(_) => Problem::no_leader().into_response(),
        };
    }
    if req.headers().contains_key(FORWARDED_HEADER) {
        return Problem::not_leader("this node is no longer the leader; nothing was done; retry")
            .into_response();
    }
    let Some((_, leader)) = st.cluster.leader() else {
        return Problem::no_leader().into_response();
    };
    match proxy(&st, req, &leader.api_addr).await {
        Ok(mut resp) => {
            set_leader_header(&mut resp, &leader.api_addr);
            resp
        }
        Err(p) => p.into_response(),
    }
}

fn set_leader_header(resp: &mut Response, addr: &str) {
    if let Ok(v) = HeaderValue::from_str(addr) {
        resp.headers_mut().insert(LEADER_HEADER, v);
    }
}

async fn proxy(st: &AppState, req: Request, leader_addr: &str) -> Result<Response, Problem> {
    let (parts, body) = req.into_parts();
    let body: Bytes = Limited::new(body, st.settings.request_body_bytes_max)
        .collect()
        .await
        .map_err(|_| {
            Problem::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is too large",
            )
        })?
        .to_bytes();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(path);
    for (k, v) in parts.headers.iter() {
        if k != http::header::HOST && k != http::header::CONNECTION {
            out = out.header(k, v);
        }
    }
    let out = out
        .header(http::header::HOST, leader_addr)
        .header(FORWARDED_HEADER, st.cluster.me().name.as_str())
        .body(Full::new(body))
        .map_err(|e| Problem::internal(format!("cannot build forwarded request: {e}")))?;
    let timeout = Duration::from_millis(st.settings.write_timeout_ms + 1_000);
    match st.pool.send(leader_addr, out, timeout).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(parts, Body::from(body)))
        }
        Err(e) if e.never_sent() => {
            st.pool.forget(leader_addr);
            Err(Problem::not_leader(
                "the leader could not be reached; nothing was done; retry",
            ))
        }
        Err(e) => {
            st.pool.forget(leader_addr);
            Err(Problem::outcome_unknown(format!(
                "the leader did not answer ({e}); the request may or may not have been applied"
            )))
        }
    }
}
