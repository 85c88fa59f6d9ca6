//! The audit trail over HTTP: `GET /admin/v1/audit` pages through it,
//! `GET /admin/v1/audit/head` signs its head for export, and
//! `POST /admin/v1/audit/verify` recomputes the leader's chain and checks its signatures
//! (and an exported signed head). [`sign_loop`] signs the head through the log.

use super::{result, AppState, Problem, St};
use crate::vault::audit::{MacCheck, SignedHead, AUDIT_PAGE_RECORDS_MAX};
use crate::vault::{Command, Response};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

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

/// Signs `records`/`head` under the current KEK.
fn sign(st: &AppState, records: u64, head: String) -> Result<SignedHead, crate::crypto::KeyError> {
    let kek = st.keys.kek();
    let kek_id = kek.id();
    let mac = kek.mac(&kek_id, SignedHead::message(records, &head).as_bytes())?;
    Ok(SignedHead {
        records,
        head,
        kek_id,
        mac: hex::encode(mac),
    })
}

/// Checks a signed head's MAC with the KEKs this node holds.
pub fn check_mac(kek: &dyn crate::crypto::KekProvider, s: &SignedHead) -> MacCheck {
    let want = match kek.mac(
        &s.kek_id,
        SignedHead::message(s.records, &s.head).as_bytes(),
    ) {
        Ok(m) => m,
        Err(crate::crypto::KeyError::UnknownKek(_)) => return MacCheck::UnknownKek,
        Err(_) => return MacCheck::Invalid,
    };
    let Ok(given) = hex::decode(&s.mac) else {
        return MacCheck::Invalid;
    };
    if crate::crypto::constant_time_eq(&given, &want) {
        MacCheck::Valid
    } else {
        MacCheck::Invalid
    }
}

/// `GET /admin/v1/audit/head`: the chain's head signed now, for operators to keep
/// outside the cluster (`kura audit head`), and to check later with
/// `kura audit verify --signed-head`.
pub async fn signed_head(State(st): St) -> HttpResponse {
    result(
        async {
            st.linearize().await?;
            let (records, head) = st
                .cluster
                .vault()
                .read(|v| (v.audit().len(), v.audit().head()));
            let signed = sign(&st, records, head)
                .map_err(|e| super::tokens::key_unavailable("audit signing key", e))?;
            Ok(
                axum::Json(json!({ "signed_head": signed, "signed_at_ms": st.now_ms() }))
                    .into_response(),
            )
        }
        .await,
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyIn {
    /// A head exported earlier: the chain must still hold it.
    #[serde(default)]
    signed_head: Option<SignedHead>,
}

/// `POST /admin/v1/audit/verify`: recomputes the whole chain on the leader, checks every
/// signature in it, and, when given, that an exported signed head is still in it. Not
/// ok if the chain breaks, a signature is forged, the exported head is not in the
/// chain, or records have gone unsigned for more than three signing intervals.
pub async fn verify(State(st): St, body: Bytes) -> HttpResponse {
    result(
        async {
            let input: VerifyIn = if body.is_empty() {
                VerifyIn::default()
            } else {
                super::problem::parse_json(&body)?
            };
            st.linearize().await?;
            let now_ms = st.now_ms();
            let stale_after_ms = 3 * st.settings.audit_sign_interval_s * 1000;
            let kek = st.keys.kek();
            let body = st.cluster.vault().read(|v| {
                let a = v.audit();
                let chain = a.verify();
                if let Err(b) = &chain {
                    return json!({ "ok": false, "first_broken_seq": b.seq, "reason": b.reason });
                }
                let sigs = a.check_signatures(|s| check_mac(kek, s));
                let stale = sigs
                    .unsigned_since_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) > stale_after_ms);
                let exported = input.signed_head.as_ref().map(|s| {
                    let mac = check_mac(kek, s);
                    let held = s.records > 0 && a.hash_at(s.records - 1) == Some(s.head.as_str());
                    json!({
                        "records": s.records,
                        "mac": format!("{mac:?}").to_lowercase(),
                        "in_chain": held,
                        "ok": held && mac == MacCheck::Valid,
                    })
                });
                let exported_ok = exported.as_ref().is_none_or(|e| e["ok"] == true);
                let mut reasons = Vec::new();
                if !sigs.invalid.is_empty() {
                    reasons.push(format!("signature records {:?} do not verify: the trail was rewritten", sigs.invalid));
                }
                if stale {
                    reasons.push(format!("{} records have gone unsigned for more than {} s", sigs.unsigned_tail_records, stale_after_ms / 1000));
                }
                if !exported_ok {
                    reasons.push("the exported signed head is not in this chain, or its signature does not verify".into());
                }
                json!({
                    "ok": reasons.is_empty(),
                    "reasons": reasons,
                    "records": a.len(),
                    "head_hash": a.head(),
                    "signatures": sigs,
                    "exported_head": exported,
                })
            });
            Ok(axum::Json(body).into_response())
        }
        .await,
    )
}

/// Runs for the node's lifetime: on the leader, signs the audit trail's head through
/// the log every `api.audit_sign_interval_s` when records were added since the last
/// signature.
pub async fn sign_loop(st: Arc<AppState>) {
    let every = Duration::from_secs(st.settings.audit_sign_interval_s);
    loop {
        crate::runtime::sleep(every).await;
        if !st.cluster.is_leader() {
            continue;
        }
        let (records, head, signed) = st.cluster.vault().read(|v| {
            (
                v.audit().len(),
                v.audit().head(),
                v.audit().head_is_signed(),
            )
        });
        if records == 0 || signed {
            continue;
        }
        let signed = match sign(&st, records, head) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign the audit trail's head; retrying at the next interval");
                continue;
            }
        };
        let cmd = Command::SignAuditHead {
            signed,
            at_ms: st.now_ms(),
        };
        match st.write(cmd).await {
            Ok(Response::Recorded) => {}
            // The trail grew meanwhile: the next interval signs the newer head.
            Ok(Response::Refused(_)) => {}
            Ok(other) => tracing::warn!(
                response = super::tokens::response_kind(&other),
                "unexpected answer to an audit signature"
            ),
            Err(p) => tracing::debug!(
                code = p.code,
                "audit signature not written; retrying at the next interval"
            ),
        }
    }
}
