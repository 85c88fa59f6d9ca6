//! The audit trail over HTTP: `GET /admin/v1/audit` pages through it and
//! `POST /admin/v1/audit/verify` recomputes the leader's chain.

use super::{result, Problem, St};
use crate::vault::audit::AUDIT_PAGE_RECORDS_MAX;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// First sequence number to return (default 0).
    #[serde(default)]
    from_seq: u64,
    /// Records per page (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /admin/v1/audit?from_seq=&limit=`: records in order, with the chain's head.
pub async fn page(
    State(st): St,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> HttpResponse {
    result(
        async {
            let Query(q) = q.map_err(|_| {
                Problem::bad_request(
                    "invalid_query",
                    "query parameters are from_seq (a number) and limit (1-1000)",
                )
            })?;
            let limit = q.limit.unwrap_or(100);
            if !(1..=AUDIT_PAGE_RECORDS_MAX).contains(&limit) {
                return Err(Problem::bad_request(
                    "invalid_query",
                    "limit must be between 1 and 1000",
                ));
            }
            st.linearize().await?;
            let body = st.cluster.vault().read(|v| {
                let a = v.audit();
                let records = a.page(q.from_seq, limit);
                let next = records.last().map(|r| r.seq + 1);
                json!({
                    "records": records,
                    "next_from_seq": next.filter(|n| *n < a.len()),
                    "total": a.len(),
                    "head_hash": a.head(),
                })
            });
            Ok(axum::Json(body).into_response())
        }
        .await,
    )
}

/// `POST /admin/v1/audit/verify`: recomputes the whole chain on the leader.
pub async fn verify(State(st): St) -> HttpResponse {
    result(
        async {
            st.linearize().await?;
            let body = st.cluster.vault().read(|v| {
                let a = v.audit();
                match a.verify() {
                    Ok(n) => json!({ "ok": true, "records": n, "head_hash": a.head() }),
                    Err(b) => json!({ "ok": false, "first_broken_seq": b.seq, "reason": b.reason }),
                }
            });
            Ok(axum::Json(body).into_response())
        }
        .await,
    )
}
