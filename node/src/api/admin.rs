//! Admin routes: form the cluster; create, list, update merchants and rotate their keys;
//! move leadership.
//! Every route is on the admin plane, where an operator has been authenticated.

use super::operator::Operator;
use super::tokens::{body_or_problem, unexpected};
use super::{result, Problem, St};
use crate::crypto::api_key_hash;
use crate::vault::token::base62_u128;
use crate::vault::{
    Command, KeyRole, MerchantInfo, MerchantSettings, Refusal, Response, TokenFormat,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

/// Longest merchant id accepted.
pub const MERCHANT_ID_CHARS_MAX: usize = 64;

/// `POST /admin/v1/init`: form the cluster from the configured members, once.
pub async fn init(State(st): St) -> HttpResponse {
    result(
        async {
            let new_id = format!(
                "kc_{}",
                base62_u128(u128::from_be_bytes(st.entropy.bytes()))
            );
            let outcome = st
                .cluster
                .init(new_id)
                .await
                .map_err(|e| Problem::new(StatusCode::CONFLICT, "init_refused", e))?;
            let status = if outcome.already_initialized {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, axum::Json(outcome)).into_response())
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMerchant {
    merchant_id: String,
    name: String,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    token_format: TokenFormat,
    #[serde(default)]
    require_three_d_secure: bool,
}

/// Most browser origins a merchant may allow.
pub const ALLOWED_ORIGINS_MAX: usize = 20;
/// Longest origin accepted.
pub const ORIGIN_CHARS_MAX: usize = 200;

fn new_key(st: &super::AppState, prefix: &str) -> String {
    let a = base62_u128(u128::from_be_bytes(st.entropy.bytes()));
    let b = base62_u128(u128::from_be_bytes(st.entropy.bytes()));
    format!("{prefix}_{a}{b}")
}

fn merchant_not_found() -> Problem {
    Problem::not_found("merchant_not_found", "no merchant with this id")
}

fn check_merchant_id(id: &str) -> Result<(), Problem> {
    if id.is_empty()
        || id.len() > MERCHANT_ID_CHARS_MAX
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(Problem::bad_request(
            "merchant_id_invalid",
            "merchant_id must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'",
        ));
    }
    Ok(())
}

/// An origin is `https://host[:port]`, or `http://` for localhost and 127.0.0.1 (local
/// development), with no path, as browsers send it.
fn check_origins(origins: &[String]) -> Result<(), Problem> {
    let bad = |detail: String| Problem::bad_request("allowed_origin_invalid", detail);
    if origins.len() > ALLOWED_ORIGINS_MAX {
        return Err(bad(format!(
            "at most {ALLOWED_ORIGINS_MAX} allowed_origins per merchant"
        )));
    }
    for o in origins {
        let host_port = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://").filter(|h| is_local(h)));
        let ok = o.len() <= ORIGIN_CHARS_MAX
            && host_port.is_some_and(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            });
        if !ok {
            return Err(bad(
                "each allowed origin must look like https://shop.example or https://shop.example:8443 (http:// only for localhost or 127.0.0.1), without a path".into(),
            ));
        }
    }
    Ok(())
}

fn is_local(host_port: &str) -> bool {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host == "localhost" || host == "127.0.0.1"
}

/// A merchant as the admin API shows it (never its keys).
fn merchant_json(m: &MerchantInfo) -> serde_json::Value {
    json!({
        "merchant_id": m.merchant_id,
        "name": m.name,
        "created_at": m.created_at_ms / 1000,
        "key_rotated_at": m.key_rotated_at_ms / 1000,
        "allowed_origins": m.settings.allowed_origins,
        "token_format": m.settings.token_format,
        "require_three_d_secure": m.settings.require_three_d_secure,
    })
}

/// `POST /admin/v1/merchants`: creates a merchant and returns its secret and publishable
/// keys, once.
pub async fn create_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(
        async {
            let input: CreateMerchant = super::problem::parse_json(&body_or_problem(body)?)?;
            check_merchant_id(&input.merchant_id)?;
            if input.name.is_empty() || input.name.len() > 200 {
                return Err(Problem::bad_request(
                    "merchant_name_invalid",
                    "name must be 1-200 characters",
                ));
            }
            check_origins(&input.allowed_origins)?;
            let (secret, publishable) = (new_key(&st, "sk"), new_key(&st, "pk"));
            let cmd = Command::CreateMerchant {
                merchant_id: input.merchant_id,
                name: input.name,
                secret_key_sha256: api_key_hash(&secret),
                publishable_key_sha256: api_key_hash(&publishable),
                settings: MerchantSettings {
                    allowed_origins: input.allowed_origins,
                    token_format: input.token_format,
                    require_three_d_secure: input.require_three_d_secure,
                },
                at_ms: st.now_ms(),
                by: Some(op.actor()),
            };
            match st.write(cmd).await? {
                Response::Merchant(m) => {
                    let mut out = merchant_json(&m);
                    out["secret_key"] = json!(secret);
                    out["publishable_key"] = json!(publishable);
                    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
                }
                Response::Refused(Refusal::MerchantExists) => Err(Problem::new(
                    StatusCode::CONFLICT,
                    "merchant_exists",
                    "a merchant with this id exists; rotate its keys instead",
                )),
                other => Err(unexpected(&other)),
            }
        }
        .await,
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    #[serde(default)]
    key: KeyRole,
}

/// `POST /admin/v1/merchants/{id}/rotate-key` with `{"key": "secret"|"publishable"}`
/// (default secret): issues a new key of that kind; the old one stops working at once.
pub async fn rotate_key(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(
        async {
            check_merchant_id(&id)?;
            let body = body_or_problem(body)?;
            let input: RotateKey = if body.is_empty() {
                RotateKey::default()
            } else {
                super::problem::parse_json(&body)?
            };
            let prefix = match input.key {
                KeyRole::Secret => "sk",
                KeyRole::Publishable => "pk",
            };
            let key = new_key(&st, prefix);
            let cmd = Command::RotateMerchantKey {
                merchant_id: id,
                role: input.key,
                key_sha256: api_key_hash(&key),
                at_ms: st.now_ms(),
                by: Some(op.actor()),
            };
            match st.write(cmd).await? {
                Response::Merchant(m) => {
                    let mut out = merchant_json(&m);
                    out[format!("{}_key", input.key.as_str())] = json!(key);
                    Ok(axum::Json(out).into_response())
                }
                Response::Refused(Refusal::UnknownMerchant) => Err(merchant_not_found()),
                other => Err(unexpected(&other)),
            }
        }
        .await,
    )
}

/// `GET /admin/v1/merchants/{id}`.
pub async fn get_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> HttpResponse {
    result(
        async {
            check_merchant_id(&id)?;
            st.linearize().await?;
            super::security::audited_access(&st, &op, "merchant.read", id.clone()).await?;
            st.cluster
                .vault()
                .read(|v| v.merchant_info(&id))
                .map(|m| axum::Json(merchant_json(&m)).into_response())
                .ok_or_else(merchant_not_found)
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateMerchant {
    allowed_origins: Option<Vec<String>>,
    token_format: Option<TokenFormat>,
    require_three_d_secure: Option<bool>,
}

/// `PATCH /admin/v1/merchants/{id}`: changes `allowed_origins` and/or `token_format`
/// (new tokens only; existing tokens keep their ids).
pub async fn update_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(
        async {
            check_merchant_id(&id)?;
            let input: UpdateMerchant = super::problem::parse_json(&body_or_problem(body)?)?;
            st.linearize().await?;
            let mut settings = st
                .cluster
                .vault()
                .read(|v| v.merchant_info(&id))
                .ok_or_else(merchant_not_found)?
                .settings;
            if let Some(o) = input.allowed_origins {
                check_origins(&o)?;
                settings.allowed_origins = o;
            }
            if let Some(f) = input.token_format {
                settings.token_format = f;
            }
            if let Some(r) = input.require_three_d_secure {
                settings.require_three_d_secure = r;
            }
            let cmd = Command::UpdateMerchant {
                merchant_id: id,
                settings,
                at_ms: st.now_ms(),
                by: Some(op.actor()),
            };
            match st.write(cmd).await? {
                Response::Merchant(m) => Ok(axum::Json(merchant_json(&m)).into_response()),
                Response::Refused(Refusal::UnknownMerchant) => Err(merchant_not_found()),
                other => Err(unexpected(&other)),
            }
        }
        .await,
    )
}

/// `GET /admin/v1/merchants`: every merchant (never their keys).
pub async fn list_merchants(State(st): St, Extension(op): Extension<Operator>) -> HttpResponse {
    result(
        async {
            st.linearize().await?;
            super::security::audited_access(&st, &op, "merchant.list", String::new()).await?;
            let list: Vec<_> = st
                .cluster
                .vault()
                .read(|v| v.merchants())
                .iter()
                .map(merchant_json)
                .collect();
            Ok(axum::Json(json!({ "merchants": list })).into_response())
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    to: String,
}

/// `POST /admin/v1/leader/transfer`: `{"to": "<member name>"}` moves leadership there and
/// answers once that node leads.
pub async fn transfer_leader(
    State(st): St,
    Extension(op): Extension<Operator>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(
        async {
            let input: Transfer = super::problem::parse_json(&body_or_problem(body)?)?;
            let to = st.cluster.member_id(&input.to).ok_or_else(|| {
                Problem::not_found("member_not_found", "no member with this name")
            })?;
            if to != st.cluster.id() {
                let timeout = std::time::Duration::from_millis(st.settings.write_timeout_ms);
                st.cluster
                    .transfer_leader(to, crate::vault::LeaderChangeCause::Operator, timeout)
                    .await
                    .map_err(|e| {
                        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "transfer_failed", e)
                    })?;
                tracing::info!(to = %input.to, cause = "operator", "leadership transferred");
                let record = Command::RecordAdminAction {
                    action: "leader.transfer".into(),
                    detail: format!("to {}", input.to),
                    at_ms: st.now_ms(),
                    by: Some(op.actor()),
                };
                // The transfer happened; failing to record it is logged, not reported.
                if let Err(p) = st.write(record).await {
                    tracing::warn!(
                        code = p.code,
                        "leader transfer not recorded in the audit trail"
                    );
                }
            }
            Ok(axum::Json(json!({ "leader": input.to })).into_response())
        }
        .await,
    )
}

async fn set_drained(
    st: &super::AppState,
    op: &Operator,
    name: String,
    drained: bool,
) -> Result<HttpResponse, Problem> {
    if st.cluster.member_id(&name).is_none() {
        return Err(Problem::not_found(
            "member_not_found",
            "no member with this name",
        ));
    }
    let cmd = Command::SetDrained {
        node: name.clone(),
        drained,
        at_ms: st.now_ms(),
        by: Some(op.actor()),
    };
    match st.write(cmd).await? {
        Response::Recorded => {
            Ok(axum::Json(json!({ "node": name, "drained": drained })).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

/// `POST /admin/v1/nodes/{name}/drain`: the node gives up leadership (to the healthiest
/// caught-up node), reports not ready and stops standing for election. Poll
/// `/v1/cluster/status` (or use `kura drain`) to see when it is safe to stop.
pub async fn drain(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(name): Path<String>,
) -> HttpResponse {
    result(set_drained(&st, &op, name, true).await)
}

/// `POST /admin/v1/nodes/{name}/undrain`: reverses `drain`.
pub async fn undrain(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(name): Path<String>,
) -> HttpResponse {
    result(set_drained(&st, &op, name, false).await)
}

fn faults_enabled(
    st: &super::AppState,
) -> Result<&std::sync::Arc<crate::faults::FaultSwitches>, Problem> {
    st.faults.as_ref().ok_or_else(|| {
        Problem::forbidden(
            "fault_injection_disabled",
            "fault injection is off on this node; start it with --enable-fault-injection and [faults] enabled = true",
        )
    })
}

/// `GET /admin/v1/faults`: this node's fault switches (node-local, never forwarded).
pub async fn get_faults(State(st): St) -> HttpResponse {
    result(async { Ok(axum::Json(faults_enabled(&st)?.get()).into_response()) }.await)
}

/// `POST /admin/v1/faults` `{storage_stalled, storage_delay_ms, kek_failing,
/// routes_blocked}`: sets this node's fault switches (omitted ones are cleared).
pub async fn set_faults(
    State(st): St,
    Extension(op): Extension<Operator>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    result(
        async {
            let switches = faults_enabled(&st)?;
            let state: crate::faults::FaultState =
                super::problem::parse_json(&body_or_problem(body)?)?;
            switches.set(&state);
            tracing::warn!(?state, operator = %op.actor(), "fault switches set");
            // Recorded in the background: a switch may have just stalled this node's
            // own storage, and the answer must not wait for the log.
            let detail = format!(
                "on {}: {}",
                st.cluster.me().name,
                serde_json::to_string(&switches.get()).unwrap_or_default()
            );
            let (st2, by) = (st.clone(), Some(op.actor()));
            crate::runtime::spawn(async move {
                if let Err(p) = super::security::record(&st2, "faults.set", detail, by).await {
                    tracing::warn!(
                        code = p.code,
                        "fault switch change not written to the audit trail"
                    );
                }
            });
            Ok(axum::Json(switches.get()).into_response())
        }
        .await,
    )
}
