//! Payments with tokens: `POST /v1/payments` (authorise, and capture if asked),
//! `POST /v1/payments/{id}/capture|void|refund`, `GET /v1/payments/{id}`,
//! `GET /v1/payments?order_id=`, `GET /v1/reports/payments?from=&to=`.

use super::dto::{self, wire};
use super::extract::{query_int64, HashedJson, HashedOptionalJson, Merchant};
use super::{Problem, St};
use crate::service::payments::{
    AuthorizeRequest, ChangeKind, IdempotencyKey, PaymentOutcome, ThreeDs,
};
use crate::vault::payment::PaymentState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kura_types::{AmountIn, AuthorizeIn, Payment, PaymentReport, Payments};
use serde::Deserialize;

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
    (status, axum::Json(wire::<Payment, _>(o.payment))).into_response()
}

/// Authorises a payment with a token (and captures it if asked), exactly once per
/// `Idempotency-Key`: a retry with the same key and body answers the same.
#[utoipa::path(post, path = "/v1/payments", tag = "payments", operation_id = "create_payment",
    params(("Idempotency-Key" = String, Header, description = "1-255 characters; one per payment", pattern = "^[!-~]([ -~]{0,253}[!-~])?$")),
    request_body = AuthorizeIn,
    responses(
        (status = 201, description = "authorised, captured, declined or failed", body = Payment, links(
            ("get" = (operation_id = "get_payment", parameters(("id" = "$response.body#/id")))),
            ("capture" = (operation_id = "capture", parameters(("id" = "$response.body#/id")))),
            ("void" = (operation_id = "void", parameters(("id" = "$response.body#/id")))),
            ("refund" = (operation_id = "refund", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 202, description = "pending: in doubt at the acquirer; retry with the same key", body = Payment),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn create(
    State(st): St,
    Merchant(caller): Merchant,
    headers: HeaderMap,
    body: HashedJson<AuthorizeIn>,
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

async fn change(
    st: St,
    caller: Merchant,
    headers: HeaderMap,
    id: String,
    body: HashedOptionalJson<AmountIn>,
    kind: ChangeKind,
) -> Result<Response, Problem> {
    let key = idempotency(&headers, body.sha256);
    let changed =
        st.0.svc
            .change_payment(caller.0, key, &id, kind, body.value.amount)
            .await?;
    Ok(outcome(changed))
}

macro_rules! change_route {
    ($name:ident, $path:literal, $kind:expr, $what:literal) => {
        #[doc = $what]
        #[utoipa::path(post, path = $path, tag = "payments",
            params(
                ("id" = String, Path, description = "a payment id"),
                ("Idempotency-Key" = String, Header, description = "1-255 characters; one per change", pattern = "^[!-~]([ -~]{0,253}[!-~])?$"),
            ),
            request_body(content = Option<AmountIn>, description = "optional; an empty body takes the default amount"),
            responses(
                (status = 200, description = "the payment after the change", body = Payment, links(
                    ("get" = (operation_id = "get_payment", parameters(("id" = "$response.body#/id")))),
                    ("capture" = (operation_id = "capture", parameters(("id" = "$response.body#/id")))),
                    ("void" = (operation_id = "void", parameters(("id" = "$response.body#/id")))),
                    ("refund" = (operation_id = "refund", parameters(("id" = "$response.body#/id")))),
                )),
                (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
                (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
            ),
            security(("merchant_key" = [])))]
        pub async fn $name(
            st: St,
            caller: Merchant,
            headers: HeaderMap,
            Path(id): Path<String>,
            body: HashedOptionalJson<AmountIn>,
        ) -> Result<Response, Problem> {
            change(st, caller, headers, id, body, $kind).await
        }
    };
}

change_route!(capture, "/v1/payments/{id}/capture", ChangeKind::Capture,
    "Captures an authorised payment, once: `amount` (default all that was authorised), at most the authorised amount.");
change_route!(
    void,
    "/v1/payments/{id}/void",
    ChangeKind::Void,
    "Voids an authorised payment before capture."
);
change_route!(refund, "/v1/payments/{id}/refund", ChangeKind::Refund,
    "Refunds a captured payment: `amount` (default what is left); several refunds, never more than captured.");

/// One of the merchant's payments, its state and history (linearizable).
#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", operation_id = "get_payment",
    params(("id" = String, Path, description = "a payment id")),
    responses(
        (status = 200, description = "the payment", body = Payment),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn get(
    State(st): St,
    Merchant(caller): Merchant,
    Path(id): Path<String>,
) -> Result<axum::Json<Payment>, Problem> {
    Ok(axum::Json(wire(st.svc.payment(caller, &id).await?)))
}

/// `GET /v1/payments?order_id=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByOrderQuery {
    order_id: String,
}

/// The order's payment (an order has at most one).
#[utoipa::path(get, path = "/v1/payments", tag = "payments",
    params(("order_id" = String, Query, description = "the merchant's order id")),
    responses(
        (status = 200, description = "the order's payments (zero or one)", body = Payments),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn by_order(
    State(st): St,
    Merchant(caller): Merchant,
    q: Result<Query<ByOrderQuery>, QueryRejection>,
) -> Result<axum::Json<Payments>, Problem> {
    let Query(q) =
        q.map_err(|_| Problem::bad_request("invalid_query", "the query parameter is order_id"))?;
    let found = st.svc.payment_by_order(caller, &q.order_id).await?;
    Ok(axum::Json(Payments {
        payments: found.into_iter().map(wire).collect(),
    }))
}

/// `GET /v1/reports/payments?from=&to=`: Unix seconds, `from` inclusive, `to` exclusive.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    #[serde(deserialize_with = "query_int64")]
    from: u64,
    #[serde(deserialize_with = "query_int64")]
    to: u64,
}

/// The merchant's payments created in `[from, to)` (Unix seconds), with counts and
/// amounts per state, for reconciliation.
#[utoipa::path(get, path = "/v1/reports/payments", tag = "payments",
    params(
        ("from" = u64, Query, description = "Unix seconds, inclusive"),
        ("to" = u64, Query, description = "Unix seconds, exclusive"),
    ),
    responses(
        (status = 200, description = "the report", body = PaymentReport),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("merchant_key" = [])))]
pub async fn report(
    State(st): St,
    Merchant(caller): Merchant,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<axum::Json<PaymentReport>, Problem> {
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
    Ok(axum::Json(dto::report(q.from, q.to, r)))
}
