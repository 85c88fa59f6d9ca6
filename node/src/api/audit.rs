//! The audit trail over HTTP: `GET /admin/v1/audit` pages through it,
//! `GET /admin/v1/audit/head` signs its head for export, and
//! `POST /admin/v1/audit/verify` recomputes the chain and checks its signatures (and an
//! exported signed head).

use super::dto::{AuditPageQuery, AuditVerifyIn};
use super::extract::OptionalJson;
use super::{Problem, St};
use crate::service::audit::{AuditPage, SignedHeadNow};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde_json::Value;

type Out<T> = Result<axum::Json<T>, Problem>;

/// `GET /admin/v1/audit?from_seq=&limit=`: records in order, with the chain's head.
pub async fn page(
    State(st): St,
    q: Result<Query<AuditPageQuery>, QueryRejection>,
) -> Out<AuditPage> {
    let Query(q) = q.map_err(|_| {
        Problem::bad_request(
            "invalid_query",
            "query parameters are from_seq (a number) and limit (1-1000)",
        )
    })?;
    Ok(axum::Json(st.svc.audit_page(q.from_seq, q.limit).await?))
}

/// `GET /admin/v1/audit/head`: the chain's head signed now, to keep outside the cluster
/// (`kura audit head`) and check later (`kura audit verify --signed-head`).
pub async fn signed_head(State(st): St) -> Out<SignedHeadNow> {
    Ok(axum::Json(st.svc.signed_head().await?))
}

/// `POST /admin/v1/audit/verify`: recomputes the whole chain on the leader and checks
/// every signature in it (and an exported signed head, when given).
pub async fn verify(State(st): St, OptionalJson(input): OptionalJson<AuditVerifyIn>) -> Out<Value> {
    Ok(axum::Json(st.svc.verify_audit(input.signed_head).await?))
}
