//! Request rates on the client API: per source address (before authentication), per
//! API key, and for one-time tokens created with a publishable key (which is public by
//! design, so it must not let anyone grow the vault at will). A refused request is a
//! `429 rate_limited` problem with `Retry-After`; nothing was done.

use super::{bearer, AppState, Problem};
use crate::limits::{LimitSettings, Rate, RateLimiter};
use crate::net::{ClientAddr, ClientIdentity};
use crate::service::auth::Caller;
use crate::vault::KeyRole;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::time::Duration;

/// Set by a node forwarding a request to the leader: the address the client connected
/// from. Believed only on a connection whose certificate names a node of the cluster.
pub const FORWARDED_FOR_HEADER: &str = "kura-forwarded-for";

/// Keys (addresses, API keys) each limiter tracks at most.
const TRACKED_KEYS_MAX: usize = 100_000;

/// The limiters of one node.
pub struct Limiters {
    address: RateLimiter,
    key: RateLimiter,
    ott_key: RateLimiter,
    ott_address: RateLimiter,
    epoch: tokio::time::Instant,
}

impl Limiters {
    /// Limiters at the configured rates.
    pub fn new(s: &LimitSettings) -> Limiters {
        let l = |per_s, burst| RateLimiter::new(Rate::new(per_s, burst), TRACKED_KEYS_MAX);
        Limiters {
            address: l(s.requests_per_address_per_s, s.requests_per_address_burst),
            key: l(s.requests_per_key_per_s, s.requests_per_key_burst),
            ott_key: l(
                s.one_time_tokens_per_publishable_key_per_s,
                s.one_time_tokens_per_publishable_key_burst,
            ),
            ott_address: l(
                s.one_time_tokens_per_address_per_s,
                s.one_time_tokens_per_address_burst,
            ),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// The address a request came from: the client's own, also when a follower forwarded
/// the request (then the follower's certificate vouches for the header).
pub fn source_address(req: &Request) -> String {
    let from_node = matches!(
        req.extensions().get::<ClientIdentity>(),
        Some(ClientIdentity(crate::net::tls::Identity::Node { .. }))
    );
    if from_node {
        if let Some(v) = req
            .headers()
            .get(FORWARDED_FOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
        {
            return v.to_owned();
        }
    }
    req.extensions()
        .get::<ClientAddr>()
        .map(|a| ip_of(&a.0))
        .unwrap_or_else(|| "unknown".into())
}

/// The IP of `host:port` (the whole string when it does not parse).
pub fn ip_of(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map_or_else(|_| addr.to_owned(), |a| a.ip().to_string())
}

/// Applies the rates to a request served on this node, then runs it through `next`.
/// Also counts the failed authentications of the requests it lets through (with the
/// source address), for the metrics and the audit trail.
pub async fn around<F, Fut>(st: &AppState, mut req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let src = source_address(&req);
    let key = match check(st, &req, &src) {
        Ok(k) => k,
        Err(p) => return p.into_response(),
    };
    // The handler's `Merchant` extractor takes the caller found here, not looking the
    // key up a second time.
    if let KeySeen::Known(c) = &key {
        req.extensions_mut().insert(c.clone());
    }
    let resp = next(req).await;
    if resp.status() == StatusCode::UNAUTHORIZED {
        let reason = match key {
            KeySeen::Missing => "missing_key",
            KeySeen::Unknown => "unknown_key",
            // Known when checked, gone by the time the handler looked (rotated).
            KeySeen::Known(_) => "revoked_key",
        };
        st.svc.metrics().api_auth_failed(reason);
        st.svc.note_auth_failure("api", reason, &src);
    }
    resp
}

/// What the request's key was when the limits looked.
enum KeySeen {
    Missing,
    Unknown,
    Known(Caller),
}

fn check(st: &AppState, req: &Request, src: &str) -> Result<KeySeen, Limited> {
    let l = &st.limiters;
    let now = l.now_ns();
    l.address
        .check(src, now)
        .map_err(|w| st.limited("address", w))?;
    let Some(key) = bearer(req.headers()) else {
        return Ok(KeySeen::Missing);
    };
    // An unknown key is not tracked (anyone could invent millions): the handler
    // answers 401 and the address limit bounds the attempts.
    let Ok(caller) = st.svc.authenticate(key) else {
        return Ok(KeySeen::Unknown);
    };
    let role = caller.role;
    // Tracked by merchant and role: a key's own rate (one secret and one publishable
    // key per merchant at a time).
    let key_id = format!("{}/{}", caller.merchant_id, role.as_str());
    l.key
        .check(&key_id, now)
        .map_err(|w| st.limited("key", w))?;
    let creates_token = req.method() == Method::POST && req.uri().path() == "/v1/tokens";
    if creates_token && role == KeyRole::Publishable {
        l.ott_key
            .check(&key_id, now)
            .map_err(|w| st.limited("one_time_tokens_key", w))?;
        l.ott_address
            .check(src, now)
            .map_err(|w| st.limited("one_time_tokens_address", w))?;
    }
    Ok(KeySeen::Known(caller))
}

/// A `429` with the wait.
struct Limited {
    limit: &'static str,
    retry_after: Duration,
}

impl AppState {
    fn limited(&self, limit: &'static str, retry_after: Duration) -> Limited {
        self.svc.metrics().rate_limited(limit);
        Limited { limit, retry_after }
    }
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        let secs = secs.max(1);
        let what = match self.limit {
            "address" => "requests from this address",
            "key" => "requests with this key",
            "one_time_tokens_key" => "one-time tokens created with this publishable key",
            _ => "one-time tokens created from this address",
        };
        let mut resp = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many {what}; nothing was done; retry after {secs} s"),
        )
        .into_response();
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}
