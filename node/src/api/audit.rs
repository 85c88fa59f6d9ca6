//! The audit trail over HTTP: `GET /admin/v1/audit` pages through it,
//! `GET /admin/v1/audit/head` signs its head for export, and
//! `POST /admin/v1/audit/verify` recomputes the chain and checks its signatures (and an
//! exported signed head).

use super::dto::{self, wire};
use super::extract::{query_int64, OptionalJson};
use super::{Problem, St};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use kura_types::{AuditPage, AuditVerification, AuditVerifyIn, SignedHeadNow};
use serde::Deserialize;

type Out<T> = Result<axum::Json<T>, Problem>;

/// `GET /admin/v1/audit?from_seq=&limit=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default, deserialize_with = "query_int64")]
    from_seq: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// Records in order from `from_seq` (default 0), `limit` at a time (1-1000, default
/// 100), with the chain's head.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "audit",
    params(
        ("from_seq" = Option<u64>, Query, description = "first sequence number"),
        ("limit" = Option<u32>, Query, description = "records per page, 1-1000", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "a page of the trail", body = AuditPage),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn page(State(st): St, q: Result<Query<PageQuery>, QueryRejection>) -> Out<AuditPage> {
    let Query(q) = q.map_err(|_| {
        Problem::bad_request(
            "invalid_query",
            "query parameters are from_seq (a number) and limit (1-1000)",
        )
    })?;
    Ok(axum::Json(wire(
        st.svc.audit_page(q.from_seq, q.limit).await?,
    )))
}

/// The chain's head signed now, to keep outside the cluster (`kura audit head`) and
/// check later (`kura audit verify --signed-head`).
#[utoipa::path(get, path = "/admin/v1/audit/head", tag = "audit",
    responses(
        (status = 200, description = "the signed head", body = SignedHeadNow),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn signed_head(State(st): St) -> Out<SignedHeadNow> {
    Ok(axum::Json(wire(st.svc.signed_head().await?)))
}

/// Recomputes the whole chain on the leader and checks every signature in it (and an
/// exported signed head, when given).
#[utoipa::path(post, path = "/admin/v1/audit/verify", tag = "audit", operation_id = "verify_audit",
    request_body(content = Option<AuditVerifyIn>, description = "optional"),
    responses(
        (status = 200, description = "what the check found (see `ok`)", body = AuditVerification),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn verify(
    State(st): St,
    OptionalJson(input): OptionalJson<AuditVerifyIn>,
) -> Out<AuditVerification> {
    let head = input.signed_head.map(dto::signed_head_in);
    Ok(axum::Json(wire(st.svc.verify_audit(head).await?)))
}
