//! Payments with tokens: `POST /v1/payments` (authorise, and capture if asked),
//! `POST /v1/payments/{id}/capture|void|refund`, `GET /v1/payments/{id}`,
//! `GET /v1/payments?order_id=`, `GET /v1/reports/payments?from=&to=`.

use super::dto::{AmountIn, ByOrderQuery, PayIn, PaymentOut, PaymentsOut, RangeQuery, ReportOut};
use super::extract::{HashedJson, HashedOptionalJson, Merchant};
use super::{Problem, St};
use crate::service::payments::{
    AuthorizeRequest, ChangeKind, IdempotencyKey, PaymentOutcome, ThreeDs,
};
use crate::vault::payment::PaymentState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// Header carrying the client's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

fn idempotency(headers: &HeaderMap, request_sha256: String) -> IdempotencyKey {
    IdempotencyKey {
        key: headers
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        request_sha256,
    }
}

/// The answer for a payment as a request left it: `202` while pending, `201` when the
/// request opened it, else `200`.
fn outcome(o: PaymentOutcome) -> Response {
    let status = match (o.payment.state, o.opened) {
        (PaymentState::Pending, _) => StatusCode::ACCEPTED,
        (_, true) => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    (status, axum::Json(PaymentOut::from(o.payment))).into_response()
}

/// `POST /v1/payments`.
pub async fn create(
    State(st): St,
    Merchant(caller): Merchant,
    headers: HeaderMap,
    body: HashedJson<PayIn>,
) -> Result<Response, Problem> {
    let p = body.value;
    let req = AuthorizeRequest {
        token: p.token,
        amount: p.amount,
        currency: p.currency,
        order_id: p.order_id,
        capture: p.capture,
        three_d_secure: p.three_d_secure.map(|t| ThreeDs {
            eci: t.eci,
            authentication_value: t.authentication_value,
            ds_trans_id: t.ds_trans_id,
            version: t.version,
        }),
    };
    let key = idempotency(&headers, body.sha256);
    Ok(outcome(st.svc.authorize(caller, key, req).await?))
}

macro_rules! change_route {
    ($name:ident, $op:literal, $kind:expr) => {
        #[doc = concat!("`POST /v1/payments/{id}/", $op, "`.")]
        pub async fn $name(
            State(st): St,
            Merchant(caller): Merchant,
            headers: HeaderMap,
            Path(id): Path<String>,
            body: HashedOptionalJson<AmountIn>,
        ) -> Result<Response, Problem> {
            let key = idempotency(&headers, body.sha256);
            let changed = st
                .svc
                .change_payment(caller, key, &id, $kind, body.value.amount)
                .await?;
            Ok(outcome(changed))
        }
    };
}

change_route!(capture, "capture", ChangeKind::Capture);
change_route!(void, "void", ChangeKind::Void);
change_route!(refund, "refund", ChangeKind::Refund);

/// `GET /v1/payments/{id}`.
pub async fn get(
    State(st): St,
    Merchant(caller): Merchant,
    Path(id): Path<String>,
) -> Result<axum::Json<PaymentOut>, Problem> {
    Ok(axum::Json(st.svc.payment(caller, &id).await?.into()))
}

/// `GET /v1/payments?order_id=`: the order's payment (an order has at most one).
pub async fn by_order(
    State(st): St,
    Merchant(caller): Merchant,
    q: Result<Query<ByOrderQuery>, QueryRejection>,
) -> Result<axum::Json<PaymentsOut>, Problem> {
    let Query(q) =
        q.map_err(|_| Problem::bad_request("invalid_query", "the query parameter is order_id"))?;
    let found = st.svc.payment_by_order(caller, &q.order_id).await?;
    Ok(axum::Json(PaymentsOut {
        payments: found.into_iter().map(PaymentOut::from).collect(),
    }))
}

/// `GET /v1/reports/payments?from=&to=`: the merchant's payments created in the range,
/// with counts and amounts per state, for reconciliation.
pub async fn report(
    State(st): St,
    Merchant(caller): Merchant,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<axum::Json<ReportOut>, Problem> {
    let Query(q) = q.map_err(|_| {
        Problem::bad_request(
            "invalid_query",
            "query parameters are from and to, Unix seconds",
        )
    })?;
    let r = st
        .svc
        .payment_report(
            caller,
            q.from.saturating_mul(1000),
            q.to.saturating_mul(1000),
        )
        .await?;
    Ok(axum::Json(ReportOut::new(&q, r)))
}
