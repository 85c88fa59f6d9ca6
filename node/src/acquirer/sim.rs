//! `kura acquirer-sim`: a standalone acquirer to run kura against.
//!
//! Test cards, by the PAN's last four digits:
//!
//! | last four | answer |
//! |---|---|
//! | `0002` | declined, `card_declined` |
//! | `9995` | declined, `insufficient_funds` |
//! | `0119` | no answer (the request is held until the caller gives up; the authorisation is *not* made) |
//! | anything else | approved |
//!
//! Deduplicates by transaction id, answers status queries, supports reversal, and counts
//! authorisations per transaction id (`GET /control/counters`) so tests can prove
//! "exactly one". `POST /control` sets a latency and failure mode.

use super::protocol::{AuthRequest, TxnState, TxnStatus};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a "timeout" test card holds its request.
const HOLD_S: u64 = 120;

/// Failure injection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Answer normally.
    #[default]
    None,
    /// Answer every authorisation with `503` without processing it.
    Refuse,
    /// Process the authorisation, then never answer (the caller times out, in doubt).
    DropAfterProcessing,
}

/// The simulator's control settings.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Delay before each authorisation is processed.
    pub latency_ms: u64,
    pub fail: FailMode,
}

/// The simulator's books: every transaction and authorisation it made. Kept outside the
/// server so that it outlives a restart, as a real acquirer's records do (simulations
/// crash the simulator's host and read the books as the oracle's evidence).
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Sim>>);

impl Ledger {
    /// Authorisations made, per transaction id.
    pub fn authorizations(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("sim lock").authorizations.clone()
    }

    /// The state of every transaction the simulator has seen.
    pub fn transactions(&self) -> BTreeMap<String, TxnStatus> {
        self.0.lock().expect("sim lock").txns.clone()
    }

    /// Sets latency and failure injection (as `POST /control` does).
    pub fn set_control(&self, c: Control) {
        self.0.lock().expect("sim lock").control = c;
    }
}

#[derive(Default)]
struct Sim {
    control: Control,
    txns: BTreeMap<String, TxnStatus>,
    /// Authorisations actually made, per transaction id (the evidence for "exactly one").
    authorizations: BTreeMap<String, u64>,
    requests: u64,
    reversals: u64,
    next_code: u64,
}

type St = State<Arc<Mutex<Sim>>>;

/// The simulator's routes over fresh books.
pub fn router() -> Router {
    router_with(Ledger::default())
}

/// The simulator's routes over `ledger`.
pub fn router_with(ledger: Ledger) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/authorize", post(authorize))
        .route("/v1/transactions/{txn_id}", get(status))
        .route("/v1/transactions/{txn_id}/reverse", post(reverse))
        .route("/control", post(set_control).get(get_control))
        .route("/control/counters", get(counters))
        .with_state(ledger.0)
}

fn decide(pan: &str) -> Option<(TxnState, Option<&'static str>)> {
    match &pan[pan.len().saturating_sub(4)..] {
        "0002" => Some((TxnState::Declined, Some("card_declined"))),
        "9995" => Some((TxnState::Declined, Some("insufficient_funds"))),
        "0119" => None,
        _ => Some((TxnState::Approved, None)),
    }
}

/// Processes an authorisation to the end even if the caller goes away mid-request, as a
/// real acquirer does: that is what leaves a gateway in doubt.
async fn authorize(State(sim): St, body: Bytes) -> Response {
    tokio::spawn(process(sim, body))
        .await
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

async fn process(sim: Arc<Mutex<Sim>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<AuthRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "not an authorisation request").into_response();
    };
    let control = {
        let mut s = sim.lock().expect("sim lock");
        s.requests += 1;
        s.control
    };
    if control.fail == FailMode::Refuse {
        return (StatusCode::SERVICE_UNAVAILABLE, "refusing (control)").into_response();
    }
    tokio::time::sleep(Duration::from_millis(control.latency_ms)).await;
    let Some((state, reason)) = decide(&req.pan) else {
        tokio::time::sleep(Duration::from_secs(HOLD_S)).await;
        return (StatusCode::GATEWAY_TIMEOUT, "held").into_response();
    };
    let status = {
        let mut s = sim.lock().expect("sim lock");
        match s.txns.get(&req.txn_id) {
            // Deduplicated: the first answer, nothing authorised again.
            Some(existing) => existing.clone(),
            None => {
                s.next_code += 1;
                let st = TxnStatus {
                    txn_id: req.txn_id.clone(),
                    state,
                    auth_code: (state == TxnState::Approved).then(|| format!("{:06}", s.next_code)),
                    reason: reason.map(str::to_owned),
                };
                if state == TxnState::Approved {
                    *s.authorizations.entry(req.txn_id.clone()).or_default() += 1;
                }
                s.txns.insert(req.txn_id.clone(), st.clone());
                st
            }
        }
    };
    if control.fail == FailMode::DropAfterProcessing {
        tokio::time::sleep(Duration::from_secs(HOLD_S)).await;
    }
    axum::Json(status).into_response()
}

async fn status(State(sim): St, Path(txn_id): Path<String>) -> Response {
    match sim.lock().expect("sim lock").txns.get(&txn_id) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "unknown transaction").into_response(),
    }
}

async fn reverse(State(sim): St, Path(txn_id): Path<String>) -> Response {
    let mut s = sim.lock().expect("sim lock");
    s.reversals += 1;
    let entry = s.txns.entry(txn_id.clone()).or_insert_with(|| TxnStatus {
        txn_id: txn_id.clone(),
        state: TxnState::Reversed,
        auth_code: None,
        reason: Some("reversed".into()),
    });
    if entry.state == TxnState::Approved {
        entry.state = TxnState::Reversed;
    }
    axum::Json(entry.clone()).into_response()
}

async fn set_control(State(sim): St, body: Bytes) -> Response {
    match serde_json::from_slice::<Control>(&body) {
        Ok(c) => {
            sim.lock().expect("sim lock").control = c;
            axum::Json(c).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn get_control(State(sim): St) -> Response {
    axum::Json(sim.lock().expect("sim lock").control).into_response()
}

async fn counters(State(sim): St) -> Response {
    let s = sim.lock().expect("sim lock");
    let approved = s
        .txns
        .values()
        .filter(|t| t.state == TxnState::Approved)
        .count();
    axum::Json(json!({
        "requests": s.requests,
        "authorizations": s.authorizations,
        "total_authorizations": s.authorizations.values().sum::<u64>(),
        "approved_now": approved,
        "reversals": s.reversals,
    }))
    .into_response()
}

/// Serves the simulator on `addr` until the process stops: over TLS 1.3 with the
/// certificate and key given, else plain HTTP (the caller checks that only an explicit
/// insecure mode on loopback gets there).
pub async fn run(
    addr: &str,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> std::io::Result<()> {
    let serve_tls = match tls {
        Some((cert, key)) => Some(crate::net::ServeTls {
            config: std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(
                crate::net::tls::server_only(cert, key).map_err(std::io::Error::other)?,
            ))),
            admit: None,
            on_refused: None,
        }),
        None => None,
    };
    let listener = crate::net::Net::tokio().binder.bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, tls = serve_tls.is_some(), "acquirer simulator listening");
    crate::net::serve(
        listener,
        router(),
        serve_tls,
        crate::net::ServeLimits::unexported("acquirer"),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn call(
        r: &Router,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let resp = r.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn auth(txn: &str, pan: &str) -> serde_json::Value {
        json!({ "txn_id": txn, "merchant_id": "m", "pan": pan, "exp_month": 12, "exp_year": 2031,
                "amount": 1000, "currency": "JPY" })
    }

    #[tokio::test]
    async fn authorises_once_per_transaction_id_and_declines_by_test_card() {
        let r = router();
        let (s, first) = call(&r, "POST", "/v1/authorize", auth("t1", "4242424242424242")).await;
        assert_eq!((s, first["state"].as_str()), (200, Some("approved")));
        let (_, again) = call(&r, "POST", "/v1/authorize", auth("t1", "4242424242424242")).await;
        assert_eq!(again, first, "a repeat returns the first answer");
        let (_, d) = call(&r, "POST", "/v1/authorize", auth("t2", "4000000000000002")).await;
        assert_eq!(
            (d["state"].as_str(), d["reason"].as_str()),
            (Some("declined"), Some("card_declined"))
        );
        let (_, f) = call(&r, "POST", "/v1/authorize", auth("t3", "4000000000009995")).await;
        assert_eq!(f["reason"], "insufficient_funds");
        let (_, c) = call(&r, "GET", "/control/counters", json!(null)).await;
        assert_eq!(c["authorizations"], json!({ "t1": 1 }));
        assert_eq!(c["requests"], 4);
        let (s, _) = call(&r, "GET", "/v1/transactions/nope", json!(null)).await;
        assert_eq!(s, 404);
    }

    #[tokio::test]
    async fn a_reversal_before_the_authorisation_declines_it_when_it_arrives() {
        let r = router();
        let (_, rev) = call(&r, "POST", "/v1/transactions/t9/reverse", json!(null)).await;
        assert_eq!(rev["state"], "reversed");
        let (_, late) = call(&r, "POST", "/v1/authorize", auth("t9", "4242424242424242")).await;
        assert_eq!(
            late["state"], "reversed",
            "a reversed id is never authorised"
        );
        let (_, c) = call(&r, "GET", "/control/counters", json!(null)).await;
        assert_eq!(c["total_authorizations"], 0);
        call(&r, "POST", "/v1/authorize", auth("t10", "4242424242424242")).await;
        let (_, rev) = call(&r, "POST", "/v1/transactions/t10/reverse", json!(null)).await;
        assert_eq!(rev["state"], "reversed");
    }
}
