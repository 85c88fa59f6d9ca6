//! CORS for browser tokenization: `POST /v1/tokens` with a publishable key.
//!
//! A preflight carries no credentials, so it is answered for any origin that some
//! merchant allows; the request itself is then checked against the calling merchant's own
//! origins (`tokens::create`). Every other route sends no CORS headers, so browsers
//! refuse to call them cross-origin.

use super::{AppState, Problem};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::future::Future;

/// The only path browsers may call.
const BROWSER_PATH: &str = "/v1/tokens";
/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE_S: &str = "600";

/// Answers preflights, runs the rest through `next`, and adds
/// `Access-Control-Allow-Origin` for allowed origins.
pub async fn around<F, Fut>(st: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if req.uri().path() != BROWSER_PATH {
        return next(req).await;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = origin
        .as_deref()
        .filter(|o| st.svc.origin_allowed_by_any(o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    if req.method() == Method::OPTIONS {
        return preflight(allowed, &req);
    }
    let mut resp = next(req).await;
    if let Some(o) = allowed {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

fn preflight(allowed: Option<HeaderValue>, req: &Request) -> Response {
    let method_ok = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .is_some_and(|m| m == "POST");
    let Some(origin) = allowed.filter(|_| method_ok) else {
        return Problem::forbidden(
            "origin_not_allowed",
            "no merchant allows browser requests from this origin (or the method is not POST); add it to the merchant's allowed_origins",
        )
        .into_response();
    };
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, idempotency-key"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_S),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}
