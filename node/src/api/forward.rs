//! Transparent forwarding of leader-only requests from followers to the leader.

use super::operator::{header_value, OPERATOR_HEADER};
use super::{AppState, Problem, St};
use crate::service::auth::Operator;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use kura_sdk::LEADER_HEADER;
use std::future::Future;
use std::time::Duration;

/// Header set on forwarded requests; a node never forwards a request twice.
pub const FORWARDED_HEADER: &str = "kura-forwarded-by";

/// Runs the request here when this node leads; otherwise proxies it to the leader. With
/// no leader known, or the known one unreachable (it crashed, and the election has not
/// ended yet), it waits for the election rather than bouncing the client, which would
/// back off and come later than the new leader.
pub async fn to_leader(State(st): St, req: Request, next: Next) -> Response {
    to_leader_around(&st, req, |req| next.run(req)).await
}

/// [`to_leader`], running the request through `next` when it is served here.
pub async fn to_leader_around<F, Fut>(st: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if st.svc.is_leader() {
        return serve_here(st, req, next).await;
    }
    if req.headers().contains_key(FORWARDED_HEADER) {
        return Problem::not_leader("this node is no longer the leader; nothing was done; retry")
            .into_response();
    }
    let leader = match st.svc.leader() {
        Some(l) => l,
        None => match st.svc.wait_for_leader(None).await {
            Some(l) => l,
            None => return Problem::no_leader().into_response(),
        },
    };
    // An admin request goes to the leader's admin plane, naming the operator this node
    // authenticated; the rest to its client API.
    let operator = req.extensions().get::<Operator>().cloned();
    let addr_of = |m: &crate::member::Member| match operator {
        Some(_) => m.admin_addr.clone(),
        None => m.api_addr.clone(),
    };
    let source = super::limits::source_address(&req);
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, st.svc.settings().request_body_bytes_max)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Problem::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is too large",
            )
            .into_response()
        }
    };
    // One more try if the leader could not be reached: the election then under way
    // names the next one.
    let (mut target, mut retried) = (leader, false);
    loop {
        if target.0 == st.svc.me().0 {
            let req = Request::from_parts(parts, Body::from(body));
            return serve_here(st, req, next).await;
        }
        let addr = addr_of(&target.1);
        match proxy(st, &parts, body.clone(), &addr, operator.as_ref(), &source).await {
            Ok(mut resp) => {
                set_leader_header(&mut resp, &addr);
                return resp;
            }
            Err(Unsent(p)) if !retried => {
                retried = true;
                match st.svc.wait_for_leader(Some(target.0)).await {
                    Some(next_leader) => target = next_leader,
                    None => return p.into_response(),
                }
            }
            Err(Unsent(p) | Sent(p)) => return p.into_response(),
            // Named as the leader, so that the client goes there itself.
            Err(NotAMember(p)) => {
                let mut resp = p.into_response();
                set_leader_header(&mut resp, &addr);
                return resp;
            }
        }
    }
}

/// Runs a leader-only request on this node, the leader, once it has caught up.
async fn serve_here<F, Fut>(st: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if let Err(e) = st.svc.ready_to_serve().await {
        return Problem::from(e).into_response();
    }
    let (_, me) = st.svc.me();
    let addr = match req.extensions().get::<Operator>() {
        Some(_) => &me.admin_addr,
        None => &me.api_addr,
    };
    let mut resp = next(req).await;
    set_leader_header(&mut resp, addr);
    resp
}

/// Why a forwarded request failed: it never reached the leader (nothing was done), or
/// it may have.
enum Failed {
    Unsent(Problem),
    Sent(Problem),
    /// The leader does not count this node as a member (it was removed, or the leader
    /// has not yet applied its addition): nothing was done, and asking again from this
    /// node will not help.
    NotAMember(Problem),
}
use Failed::{NotAMember, Sent, Unsent};

fn set_leader_header(resp: &mut Response, addr: &str) {
    if let Ok(v) = HeaderValue::from_str(addr) {
        resp.headers_mut().insert(LEADER_HEADER, v);
    }
}

async fn proxy(
    st: &AppState,
    parts: &http::request::Parts,
    body: Bytes,
    leader_addr: &str,
    operator: Option<&Operator>,
    source: &str,
) -> Result<Response, Failed> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(path);
    for (k, v) in parts.headers.iter() {
        if k != http::header::HOST
            && k != http::header::CONNECTION
            && k != OPERATOR_HEADER
            && k != super::limits::FORWARDED_FOR_HEADER
        {
            out = out.header(k, v);
        }
    }
    if let Some(op) = operator {
        out = out.header(OPERATOR_HEADER, header_value(op));
    }
    let out = out
        .header(http::header::HOST, leader_addr)
        .header(FORWARDED_HEADER, st.svc.me().1.name.as_str())
        .header(super::limits::FORWARDED_FOR_HEADER, source)
        .body(Full::new(body))
        .map_err(|e| {
            Unsent(Problem::internal(format!(
                "cannot build forwarded request: {e}"
            )))
        })?;
    let timeout = Duration::from_millis(st.svc.settings().write_timeout_ms + 1_000);
    match st.pool.send(leader_addr, out, timeout).await {
        Ok(resp) if is_not_a_member(&resp) => Err(NotAMember(Problem::not_leader(
            "the leader does not count this node as a member (removed, or added and not yet \
             known there); nothing was done; send the request to the leader or another member",
        ))),
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(parts, Body::from(body)))
        }
        Err(e) if e.never_sent() => {
            st.pool.forget(leader_addr);
            Err(Unsent(Problem::not_leader(
                "the leader could not be reached; nothing was done; retry",
            )))
        }
        // A read changes nothing, so whether it reached the leader does not matter: it
        // is retried like one that never left.
        Err(e) if parts.method == http::Method::GET || parts.method == http::Method::HEAD => {
            st.pool.forget(leader_addr);
            Err(Unsent(Problem::not_leader(format!(
                "the leader did not answer ({e}); a read changes nothing; retry"
            ))))
        }
        Err(e) => {
            st.pool.forget(leader_addr);
            Err(Sent(Problem::outcome_unknown(format!(
                "the leader did not answer ({e}); the request may or may not have been applied"
            ))))
        }
    }
}

/// The answer a member gives a node's certificate it does not count as a member's,
/// before reading the request.
fn is_not_a_member(resp: &http::Response<Bytes>) -> bool {
    resp.status() == http::StatusCode::FORBIDDEN
        && serde_json::from_slice::<kura_types::Problem>(resp.body())
            .is_ok_and(|p| p.code == kura_types::ProblemCode::NotAMember.as_str())
}
