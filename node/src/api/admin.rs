//! Admin routes: form the cluster; create, list, update merchants and rotate their keys;
//! move leadership; drain nodes; fault switches. Every route is on the admin plane,
//! where an operator has been authenticated.

use super::dto::{
    CreateMerchantIn, MerchantOut, MerchantsOut, RotateKeyIn, TransferIn, UpdateMerchantIn,
};
use super::extract::{Json, OptionalJson};
use super::{Problem, St};
use crate::faults::FaultState;
use crate::service::auth::Operator;
use crate::service::merchants::{MerchantUpdate, NewMerchant};
use crate::service::InitOutcome;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

type Out<T> = Result<axum::Json<T>, Problem>;

/// `POST /admin/v1/init`: form the cluster from the configured members, once.
pub async fn init(State(st): St) -> Result<Response, Problem> {
    let outcome: InitOutcome = st.svc.init().await?;
    let status = if outcome.already_initialized {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(outcome)).into_response())
}

/// `POST /admin/v1/merchants`: creates a merchant and returns its secret and publishable
/// keys, once.
pub async fn create_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    Json(m): Json<CreateMerchantIn>,
) -> Result<Response, Problem> {
    let new = NewMerchant {
        merchant_id: m.merchant_id,
        name: m.name,
        allowed_origins: m.allowed_origins,
        token_format: m.token_format,
        require_three_d_secure: m.require_three_d_secure,
    };
    let made = st.svc.create_merchant(&op, new).await?;
    Ok((StatusCode::CREATED, axum::Json(MerchantOut::from(made))).into_response())
}

/// `POST /admin/v1/merchants/{id}/rotate-key` with `{"key": "secret"|"publishable"}`
/// (default secret): issues a new key of that kind; the old one stops working at once.
pub async fn rotate_key(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    OptionalJson(input): OptionalJson<RotateKeyIn>,
) -> Out<MerchantOut> {
    let made = st.svc.rotate_merchant_key(&op, &id, input.key).await?;
    Ok(axum::Json(made.into()))
}

/// `GET /admin/v1/merchants/{id}`.
pub async fn get_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Out<MerchantOut> {
    Ok(axum::Json(st.svc.merchant(&op, &id).await?.into()))
}

/// `PATCH /admin/v1/merchants/{id}`: changes `allowed_origins`, `token_format` and/or
/// `require_three_d_secure` (a new format applies to new tokens only).
pub async fn update_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(u): Json<UpdateMerchantIn>,
) -> Out<MerchantOut> {
    let update = MerchantUpdate {
        allowed_origins: u.allowed_origins,
        token_format: u.token_format,
        require_three_d_secure: u.require_three_d_secure,
    };
    Ok(axum::Json(
        st.svc.update_merchant(&op, &id, update).await?.into(),
    ))
}

/// `GET /admin/v1/merchants`: every merchant (never their keys).
pub async fn list_merchants(
    State(st): St,
    Extension(op): Extension<Operator>,
) -> Out<MerchantsOut> {
    let merchants = st.svc.merchants(&op).await?;
    Ok(axum::Json(MerchantsOut {
        merchants: merchants.into_iter().map(MerchantOut::from).collect(),
    }))
}

/// `POST /admin/v1/leader/transfer`: `{"to": "<member name>"}` moves leadership there and
/// answers once that node leads.
pub async fn transfer_leader(
    State(st): St,
    Extension(op): Extension<Operator>,
    Json(t): Json<TransferIn>,
) -> Out<Value> {
    st.svc.transfer_leader(&op, &t.to).await?;
    Ok(axum::Json(json!({ "leader": t.to })))
}

/// `POST /admin/v1/nodes/{name}/drain`: the node gives up leadership (to the healthiest
/// caught-up node), reports not ready and stops standing for election. Poll
/// `/v1/cluster/status` (or use `kura drain`) to see when it is safe to stop.
pub async fn drain(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(name): Path<String>,
) -> Out<Value> {
    st.svc.set_drained(&op, &name, true).await?;
    Ok(axum::Json(json!({ "node": name, "drained": true })))
}

/// `POST /admin/v1/nodes/{name}/undrain`: reverses `drain`.
pub async fn undrain(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(name): Path<String>,
) -> Out<Value> {
    st.svc.set_drained(&op, &name, false).await?;
    Ok(axum::Json(json!({ "node": name, "drained": false })))
}

/// `GET /admin/v1/faults`: this node's fault switches (node-local, never forwarded).
pub async fn get_faults(State(st): St) -> Out<FaultState> {
    Ok(axum::Json(st.svc.faults()?))
}

/// `POST /admin/v1/faults` `{storage_stalled, storage_delay_ms, kek_failing,
/// routes_blocked}`: sets this node's fault switches (omitted ones are cleared).
pub async fn set_faults(
    State(st): St,
    Extension(op): Extension<Operator>,
    Json(state): Json<FaultState>,
) -> Out<FaultState> {
    Ok(axum::Json(st.svc.set_faults(&op, &state)?))
}
