//! Payments with tokens: `POST /v1/payments` (authorise, and capture if asked),
//! `POST /v1/payments/{id}/capture|void|refund`, `GET /v1/payments/{id}`,
//! `GET /v1/payments?order_id=`, `GET /v1/reports/payments?from=&to=`.
//!
//! Exactly once: the payment is opened in the log (consuming a one-time token, claiming
//! the order id and the idempotency key) *before* the acquirer is called, and settled in
//! the log after. A leader that dies in between leaves it `pending`; the next leader
//! resolves it on the route it went to before anything may act again.

use super::members::open_card;
use super::tokens::{body_or_problem, unexpected};
use super::{result, AppState, Problem, St};
use crate::acquirer::protocol::{AuthRequest, TxnState, TxnStatus};
use crate::acquirer::router::{Attempt, Resolution};
use crate::vault::payment::{AuthOutcome, Payment, PaymentState};
use crate::vault::state::TokenRecord;
use crate::vault::token::base62_u128;
use crate::vault::{
    Command, Idempotency, IdempotencyRecord, PaymentChange, Refusal, Response, StoredOutcome,
    TokenKind,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// Header carrying the client's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Longest idempotency key, order id or currency accepted.
const KEY_CHARS_MAX: usize = 255;
const ORDER_ID_CHARS_MAX: usize = 64;
/// Largest amount, in minor units.
const AMOUNT_MAX: u64 = 1_000_000_000_000;
/// Most payments one report lists.
const REPORT_PAYMENTS_MAX: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThreeDs {
    eci: String,
    authentication_value: String,
    ds_trans_id: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayIn {
    token: String,
    amount: u64,
    currency: String,
    order_id: String,
    #[serde(default)]
    capture: bool,
    #[serde(default)]
    three_d_secure: Option<ThreeDs>,
}

fn idempotency(headers: &HeaderMap, body: &[u8]) -> Result<Idempotency, Problem> {
    let key = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= KEY_CHARS_MAX)
        .ok_or_else(|| {
            Problem::bad_request(
                "idempotency_key_required",
                "every POST to /v1/payments needs an Idempotency-Key header of 1-255 characters",
            )
        })?;
    use sha2::{Digest, Sha256};
    Ok(Idempotency {
        key: key.to_owned(),
        body_sha256: hex::encode(Sha256::digest(body)),
    })
}

fn check_input(p: &PayIn) -> Result<(), Problem> {
    if p.amount == 0 || p.amount > AMOUNT_MAX {
        return Err(Problem::unprocessable(
            "amount_invalid",
            "amount must be a positive integer in minor units, at most 10^12",
        ));
    }
    if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Problem::unprocessable(
            "currency_invalid",
            "currency must be an ISO 4217 code such as JPY",
        ));
    }
    if p.order_id.is_empty()
        || p.order_id.len() > ORDER_ID_CHARS_MAX
        || !p
            .order_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Problem::bad_request(
            "order_id_invalid",
            "order_id must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
        ));
    }
    if let Some(t) = &p.three_d_secure {
        let fields = [&t.eci, &t.authentication_value, &t.ds_trans_id, &t.version];
        if fields.iter().any(|f| f.is_empty() || f.len() > 128) {
            return Err(Problem::unprocessable(
                "three_d_secure_invalid",
                "three_d_secure needs eci, authentication_value, ds_trans_id and version, each 1-128 characters",
            ));
        }
    }
    Ok(())
}

/// A payment as the API shows it. Times are Unix seconds.
fn payment_json(p: &Payment) -> serde_json::Value {
    json!({
        "id": p.id,
        "order_id": p.order_id,
        "token": p.token,
        "amount": p.amount,
        "currency": p.currency,
        "state": p.state,
        "authorized_amount": p.authorized_amount,
        "captured_amount": p.captured_amount,
        "refunded_amount": p.refunded_amount,
        "route": p.route,
        "gateway_txn_id": p.gateway_txn_id,
        "created_at": p.created_at_ms / 1000,
        "history": p.history.iter().map(|e| json!({
            "at": e.at_ms / 1000, "kind": e.kind, "amount": e.amount, "detail": e.detail,
        })).collect::<Vec<_>>(),
    })
}

fn refusal_problem(code: &str) -> Problem {
    let (status, code, detail): (StatusCode, &'static str, &str) = match code {
        "token_not_found" => (
            StatusCode::NOT_FOUND,
            "token_not_found",
            "no such token for this merchant",
        ),
        "token_already_used" => (
            StatusCode::CONFLICT,
            "token_already_used",
            "this one-time token has already been used",
        ),
        "token_expired" => (
            StatusCode::GONE,
            "token_expired",
            "this one-time token has expired",
        ),
        "order_id_taken" => (
            StatusCode::CONFLICT,
            "order_id_taken",
            "this order already has a payment; GET /v1/payments?order_id= to see it",
        ),
        "payment_not_found" => (
            StatusCode::NOT_FOUND,
            "payment_not_found",
            "no such payment for this merchant",
        ),
        "payment_state_conflict" => (
            StatusCode::CONFLICT,
            "payment_state_conflict",
            "the payment's state does not allow this",
        ),
        "payment_already_captured" => (
            StatusCode::CONFLICT,
            "payment_already_captured",
            "a payment is captured once",
        ),
        "amount_invalid" => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_invalid",
            "the amount is zero or more than allowed",
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected refusal",
        ),
    };
    Problem::new(status, code, detail)
}

/// The HTTP answer for what a keyed request came to: the same every time it is asked.
fn outcome_response(action: &str, outcome: &StoredOutcome) -> HttpResponse {
    match outcome {
        StoredOutcome::Payment(p) => {
            let status = match (action, p.state) {
                (_, PaymentState::Pending) => StatusCode::ACCEPTED,
                ("payment.open", _) => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            (status, axum::Json(payment_json(p))).into_response()
        }
        StoredOutcome::Refused(code) => refusal_problem(code).into_response(),
    }
}

/// What to do with a request whose key is already taken.
async fn replay(st: &AppState, idem: &Idempotency, rec: &IdempotencyRecord) -> HttpResponse {
    if rec.body_sha256 != idem.body_sha256 {
        return Problem::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body; use a new key",
        )
        .into_response();
    }
    if let (StoredOutcome::Payment(p), Some(id)) = (&rec.outcome, &rec.payment_id) {
        if p.state == PaymentState::Pending {
            if st
                .payments_in_flight
                .lock()
                .expect("in-flight lock")
                .contains(id)
            {
                return Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_flight",
                    "the first request with this key is still being processed; retry shortly",
                )
                .into_response();
            }
            // The leader that began it is gone: settle it now, then answer.
            return match resolve_pending(st, id).await {
                Ok(p) => outcome_response(&rec.action, &StoredOutcome::Payment(Box::new(p))),
                Err(p) => p.into_response(),
            };
        }
    }
    outcome_response(&rec.action, &rec.outcome)
}

/// `POST /v1/payments`.
pub async fn create(
    State(st): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(create_inner(&st, &headers, body).await)
}

async fn create_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<HttpResponse, Problem> {
    let merchant_id = st.merchant(headers)?;
    let body = body_or_problem(body)?;
    let idem = idempotency(headers, &body)?;
    let input: PayIn = super::problem::parse_json(&body)?;
    check_input(&input)?;
    if let Some(rec) = st
        .cluster
        .vault()
        .read(|v| v.idempotency(&merchant_id, &idem.key).cloned())
    {
        return Ok(replay(st, &idem, &rec).await);
    }
    let requires_3ds = st.cluster.vault().read(|v| {
        v.merchant_info(&merchant_id)
            .is_some_and(|m| m.settings.require_three_d_secure)
    });
    if requires_3ds && input.three_d_secure.is_none() {
        return Err(Problem::unprocessable(
            "three_d_secure_required",
            "this merchant requires an EMV 3-D Secure result (three_d_secure) with every authorisation",
        ));
    }
    let record = token_record(st, &merchant_id, &input.token)?;
    let now_ms = st.now_ms();
    if record.kind == TokenKind::OneTime {
        if record.used_at_ms.is_some() {
            return Err(refusal_problem("token_already_used"));
        }
        if record.expires_at_ms.is_some_and(|e| now_ms >= e) {
            return Err(refusal_problem("token_expired"));
        }
    }
    if record.cvc_supplied && !st.cvc.holds(&input.token, (st.clock)()) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "cvc_unavailable",
            "the CVC given with this one-time token is no longer held (used, expired, or lost in a failover); collect the card again",
        ));
    }
    let routes = st.router.order();
    let Some(first) = routes.first().cloned() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "route_unavailable",
            "no acquirer route is configured on this cluster",
        ));
    };
    let payment_id = format!(
        "pay_{}",
        base62_u128(u128::from_be_bytes(st.entropy.bytes()))
    );
    let txn_id = format!(
        "gw_{}",
        base62_u128(u128::from_be_bytes(st.entropy.bytes()))
    );
    let open = Command::OpenPayment {
        payment_id: payment_id.clone(),
        merchant_id: merchant_id.clone(),
        order_id: input.order_id.clone(),
        token: input.token.clone(),
        amount: input.amount,
        currency: input.currency.clone(),
        capture: input.capture,
        gateway_txn_id: txn_id,
        route: first,
        idempotency: Some(idem.clone()),
        at_ms: now_ms,
    };
    st.payments_in_flight
        .lock()
        .expect("in-flight lock")
        .insert(payment_id.clone());
    let outcome = async {
        let payment = match st.write(open).await? {
            Response::Payment(p) => p,
            Response::Refused(Refusal::IdempotencyKeyTaken(rec)) => return Ok(Err(rec)),
            Response::Refused(r) => return Err(refusal_problem(r.code())),
            other => return Err(unexpected(&other)),
        };
        let cvc = if record.cvc_supplied {
            st.cvc.take(&input.token, (st.clock)())
        } else {
            None
        };
        let req = AuthRequest {
            txn_id: payment.gateway_txn_id.clone(),
            merchant_id: merchant_id.clone(),
            pan: open_card(st, &merchant_id, &input.token, &record.card)?,
            exp_month: record.card.exp_month,
            exp_year: record.card.exp_year,
            cvc: cvc.map(|c| zeroize::Zeroizing::new(c.digits().to_owned())),
            amount: input.amount,
            currency: input.currency.clone(),
            three_d_secure: input.three_d_secure.as_ref().map(|t| {
                json!({ "eci": t.eci, "authentication_value": t.authentication_value,
                        "ds_trans_id": t.ds_trans_id, "version": t.version })
            }),
        };
        Ok(Ok(authorize(st, &payment, &req, &routes).await?))
    }
    .await;
    st.payments_in_flight
        .lock()
        .expect("in-flight lock")
        .remove(&payment_id);
    match outcome? {
        Ok(p) => Ok(outcome_response(
            "payment.open",
            &StoredOutcome::Payment(Box::new(p)),
        )),
        Err(rec) => Ok(replay(st, &idem, &rec).await),
    }
}

fn token_record(st: &AppState, merchant_id: &str, token: &str) -> Result<TokenRecord, Problem> {
    st.cluster
        .vault()
        .read(|v| v.record_for(merchant_id, token).cloned())
        .ok_or_else(|| refusal_problem("token_not_found"))
}

fn outcome_of(s: &TxnStatus) -> AuthOutcome {
    match s.state {
        TxnState::Approved => AuthOutcome::Approved {
            auth_code: s.auth_code.clone().unwrap_or_default(),
        },
        TxnState::Declined => AuthOutcome::Declined {
            reason: s.reason.clone().unwrap_or_else(|| "declined".into()),
        },
        TxnState::Reversed => AuthOutcome::Reversed,
    }
}

/// Sends the authorisation over the routes in order. Moves to the next route only when
/// the acquirer on this one provably did not authorise it; leaves the payment pending
/// when that cannot be known.
async fn authorize(
    st: &AppState,
    payment: &Payment,
    req: &AuthRequest,
    routes: &[String],
) -> Result<Payment, Problem> {
    for (i, route) in routes.iter().enumerate() {
        if i > 0 {
            let cmd = Command::ReroutePayment {
                payment_id: payment.id.clone(),
                route: route.clone(),
                at_ms: st.now_ms(),
            };
            st.write(cmd).await?;
        }
        let status = match st.router.attempt(route, req).await {
            Attempt::Answered(s) => s,
            Attempt::NotSent(why) => {
                tracing::warn!(route = %route, payment = %payment.id, reason = %why, "route unreachable; trying the next");
                continue;
            }
            Attempt::InDoubt(why) => {
                tracing::warn!(route = %route, payment = %payment.id, reason = %why, "authorisation in doubt; resolving on the same route");
                match st.router.resolve(route, &req.txn_id).await {
                    Resolution::Known(s) => s,
                    Resolution::NeverArrived => continue,
                    Resolution::Unreachable(why) => {
                        tracing::warn!(route = %route, payment = %payment.id, reason = %why, "still in doubt; the payment stays pending");
                        return current(st, &payment.id);
                    }
                }
            }
        };
        return settle(st, &payment.id, outcome_of(&status)).await;
    }
    // No route took it: nothing was authorised anywhere.
    settle(st, &payment.id, AuthOutcome::Reversed).await
}

fn current(st: &AppState, payment_id: &str) -> Result<Payment, Problem> {
    st.cluster
        .vault()
        .read(|v| v.any_payment(payment_id).cloned())
        .ok_or_else(|| refusal_problem("payment_not_found"))
}

async fn settle(st: &AppState, payment_id: &str, outcome: AuthOutcome) -> Result<Payment, Problem> {
    let cmd = Command::SettlePayment {
        payment_id: payment_id.to_owned(),
        outcome,
        at_ms: st.now_ms(),
    };
    match st.write(cmd).await? {
        Response::Payment(p) => Ok(*p),
        // Settled meanwhile (by the resolver): the log's answer stands.
        Response::Refused(Refusal::Payment(_)) => current(st, payment_id),
        other => Err(unexpected(&other)),
    }
}

/// Settles a pending payment left by a leader that died mid-call: asks the route it went
/// to. Answers the payment as it stands afterwards (still pending if the route cannot be
/// reached).
pub async fn resolve_pending(st: &AppState, payment_id: &str) -> Result<Payment, Problem> {
    let p = current(st, payment_id)?;
    if p.state != PaymentState::Pending {
        return Ok(p);
    }
    match st.router.resolve(&p.route, &p.gateway_txn_id).await {
        Resolution::Known(s) => settle(st, payment_id, outcome_of(&s)).await,
        Resolution::NeverArrived => settle(st, payment_id, AuthOutcome::Reversed).await,
        Resolution::Unreachable(why) => {
            tracing::warn!(payment = %payment_id, route = %p.route, reason = %why, "pending payment still in doubt");
            Ok(p)
        }
    }
}

/// How long a pending payment may wait before the leader's resolver settles it.
const RESOLVE_AFTER_MS: u64 = 2_000;

/// On the leader, settles payments left pending by a previous leader.
pub async fn resolver_loop(st: std::sync::Arc<AppState>) {
    loop {
        crate::runtime::sleep(Duration::from_millis(1_000)).await;
        if !st.cluster.is_leader() || !st.router.configured() {
            continue;
        }
        let now = st.now_ms();
        let pending: Vec<String> = st.cluster.vault().read(|v| {
            v.pending_payments()
                .into_iter()
                .filter(|p| now.saturating_sub(p.created_at_ms) >= RESOLVE_AFTER_MS)
                .map(|p| p.id.clone())
                .collect()
        });
        for id in pending {
            if st
                .payments_in_flight
                .lock()
                .expect("in-flight lock")
                .contains(&id)
            {
                continue;
            }
            if let Err(p) = resolve_pending(&st, &id).await {
                tracing::warn!(payment = %id, code = p.code, "could not resolve a pending payment");
            }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AmountIn {
    #[serde(default)]
    amount: Option<u64>,
}

async fn change(
    st: &AppState,
    headers: &HeaderMap,
    payment_id: String,
    body: Result<Bytes, BytesRejection>,
    op: &str,
) -> Result<HttpResponse, Problem> {
    let merchant_id = st.merchant(headers)?;
    if !super::fields::is_issued_id(&payment_id, "pay_") {
        return Err(refusal_problem("payment_not_found"));
    }
    let body = body_or_problem(body)?;
    let idem = idempotency(headers, &body)?;
    let input: AmountIn = if body.is_empty() {
        AmountIn::default()
    } else {
        super::problem::parse_json(&body)?
    };
    if let Some(rec) = st
        .cluster
        .vault()
        .read(|v| v.idempotency(&merchant_id, &idem.key).cloned())
    {
        return Ok(replay(st, &idem, &rec).await);
    }
    let p = st
        .cluster
        .vault()
        .read(|v| v.payment_for(&merchant_id, &payment_id).cloned())
        .ok_or_else(|| refusal_problem("payment_not_found"))?;
    let change = match op {
        "capture" => PaymentChange::Capture {
            amount: input.amount.unwrap_or(p.authorized_amount),
        },
        "void" => PaymentChange::Void,
        _ => PaymentChange::Refund {
            amount: input
                .amount
                .unwrap_or(p.captured_amount - p.refunded_amount),
        },
    };
    let cmd = Command::ChangePayment {
        merchant_id,
        payment_id,
        change,
        idempotency: Some(idem.clone()),
        at_ms: st.now_ms(),
    };
    let action = cmd.action();
    match st.write(cmd).await? {
        Response::Payment(p) => Ok(outcome_response(action, &StoredOutcome::Payment(p))),
        Response::Refused(Refusal::IdempotencyKeyTaken(rec)) => Ok(replay(st, &idem, &rec).await),
        Response::Refused(r) => Err(refusal_problem(r.code())),
        other => Err(unexpected(&other)),
    }
}

macro_rules! change_route {
    ($name:ident, $op:literal) => {
        #[doc = concat!("`POST /v1/payments/{id}/", $op, "`.")]
        pub async fn $name(
            State(st): St,
            headers: HeaderMap,
            Path(id): Path<String>,
            body: Result<Bytes, BytesRejection>,
        ) -> HttpResponse {
            result(change(&st, &headers, id, body, $op).await)
        }
    };
}

change_route!(capture, "capture");
change_route!(void, "void");
change_route!(refund, "refund");

/// `GET /v1/payments/{id}`.
pub async fn get(State(st): St, headers: HeaderMap, Path(id): Path<String>) -> HttpResponse {
    result(
        async {
            let merchant_id = st.merchant(&headers)?;
            if !super::fields::is_issued_id(&id, "pay_") {
                return Err(refusal_problem("payment_not_found"));
            }
            st.linearize().await?;
            st.cluster
                .vault()
                .read(|v| v.payment_for(&merchant_id, &id).map(payment_json))
                .map(|p| axum::Json(p).into_response())
                .ok_or_else(|| refusal_problem("payment_not_found"))
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByOrder {
    order_id: String,
}

/// `GET /v1/payments?order_id=`: the order's payment (an order has at most one).
pub async fn by_order(
    State(st): St,
    headers: HeaderMap,
    q: Result<Query<ByOrder>, axum::extract::rejection::QueryRejection>,
) -> HttpResponse {
    result(
        async {
            let merchant_id = st.merchant(&headers)?;
            let Query(q) = q.map_err(|_| {
                Problem::bad_request("invalid_query", "the query parameter is order_id")
            })?;
            st.linearize().await?;
            let found = st.cluster.vault().read(|v| {
                v.payment_by_order(&merchant_id, &q.order_id)
                    .map(payment_json)
            });
            Ok(
                axum::Json(json!({ "payments": found.into_iter().collect::<Vec<_>>() }))
                    .into_response(),
            )
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Unix seconds, inclusive.
    from: u64,
    /// Unix seconds, exclusive.
    to: u64,
}

/// `GET /v1/reports/payments?from=&to=`: the merchant's payments created in the range,
/// with counts and amounts per state, for reconciliation.
pub async fn report(
    State(st): St,
    headers: HeaderMap,
    q: Result<Query<Range>, axum::extract::rejection::QueryRejection>,
) -> HttpResponse {
    result(
        async {
            let merchant_id = st.merchant(&headers)?;
            let Query(r) = q.map_err(|_| {
                Problem::bad_request("invalid_query", "query parameters are from and to, Unix seconds")
            })?;
            if r.to <= r.from {
                return Err(Problem::bad_request("invalid_query", "to must be after from"));
            }
            st.linearize().await?;
            let body = st.cluster.vault().read(|v| {
                let list = v.payments_between(&merchant_id, r.from * 1000, r.to * 1000, REPORT_PAYMENTS_MAX);
                let mut by_state = std::collections::BTreeMap::<String, (u64, u64, u64, u64)>::new();
                for p in &list {
                    let e = by_state
                        .entry(serde_json::to_value(p.state).ok().and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_default())
                        .or_default();
                    e.0 += 1;
                    e.1 += p.authorized_amount;
                    e.2 += p.captured_amount;
                    e.3 += p.refunded_amount;
                }
                json!({
                    "from": r.from, "to": r.to,
                    "count": list.len(),
                    "truncated": list.len() == REPORT_PAYMENTS_MAX,
                    "by_state": by_state.iter().map(|(s, (n, a, c, rf))| (s.clone(), json!({
                        "count": n, "authorized_amount": a, "captured_amount": c, "refunded_amount": rf,
                    }))).collect::<serde_json::Map<_, _>>(),
                    "payments": list.iter().map(|p| payment_json(p)).collect::<Vec<_>>(),
                })
            });
            Ok(axum::Json(body).into_response())
        }
        .await,
    )
}
