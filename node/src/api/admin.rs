//! Admin routes: form the cluster; create, list, update merchants and rotate their keys;
//! move leadership; drain nodes; fault switches; scrub a node's vault. Every route is on the admin plane,
//! where an operator has been authenticated.

use super::dto::{self, wire};
use super::extract::{Json, OptionalJson};
use super::{Problem, St};
use crate::service::auth::Operator;
use crate::service::merchants::{MerchantUpdate, NewMerchant};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::StreamExt;
use kura_types::{
    AddMemberIn, Compare, CreateMerchantIn, Drained, Faults, InitOutcome, Leader, MemberOut,
    Merchant, Merchants, RotateKeyIn, Scrub, TransferIn, UpdateMerchantIn,
};

type Out<T> = Result<axum::Json<T>, Problem>;

/// Forms the cluster from the configured members, once: `201` when formed, `200` with
/// `already_initialized` afterwards.
#[utoipa::path(post, path = "/admin/v1/init", tag = "cluster",
    responses(
        (status = 201, description = "formed", body = InitOutcome),
        (status = 200, description = "formed before", body = InitOutcome),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn init(State(st): St) -> Result<Response, Problem> {
    let o = st.svc.init().await?;
    let status = if o.already_initialized {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let out = InitOutcome {
        cluster_id: o.cluster_id,
        already_initialized: o.already_initialized,
    };
    Ok((status, axum::Json(out)).into_response())
}

/// Creates a merchant and returns its secret and publishable keys, once (stored only
/// as hashes).
#[utoipa::path(post, path = "/admin/v1/merchants", tag = "merchants",
    request_body = CreateMerchantIn,
    responses(
        (status = 201, description = "created, with its keys", body = Merchant),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn create_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    Json(m): Json<CreateMerchantIn>,
) -> Result<Response, Problem> {
    let new = NewMerchant {
        merchant_id: m.merchant_id,
        name: m.name,
        allowed_origins: m.allowed_origins,
        token_format: wire(m.token_format),
        require_three_d_secure: m.require_three_d_secure,
    };
    let made = st.svc.create_merchant(&op, new).await?;
    Ok((StatusCode::CREATED, axum::Json(wire::<Merchant, _>(made))).into_response())
}

/// Issues a new key of the kind asked (default the secret key); the old one stops
/// working at once.
#[utoipa::path(post, path = "/admin/v1/merchants/{id}/rotate-key", tag = "merchants",
    params(("id" = String, Path, description = "a merchant id: 1-64 of A-Z a-z 0-9 - _", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = Option<RotateKeyIn>, description = "optional; default the secret key"),
    responses(
        (status = 200, description = "the merchant with its new key", body = Merchant),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn rotate_key(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    OptionalJson(input): OptionalJson<RotateKeyIn>,
) -> Out<Merchant> {
    let made = st
        .svc
        .rotate_merchant_key(&op, &id, wire(input.key))
        .await?;
    Ok(axum::Json(wire(made)))
}

/// One merchant (never its keys). Audited.
#[utoipa::path(get, path = "/admin/v1/merchants/{id}", tag = "merchants",
    params(("id" = String, Path, description = "a merchant id: 1-64 of A-Z a-z 0-9 - _", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "the merchant", body = Merchant),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn get_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Out<Merchant> {
    Ok(axum::Json(wire(st.svc.merchant(&op, &id).await?)))
}

/// Changes `allowed_origins`, `token_format` and/or `require_three_d_secure` (a new
/// format applies to new tokens only).
#[utoipa::path(patch, path = "/admin/v1/merchants/{id}", tag = "merchants",
    params(("id" = String, Path, description = "a merchant id: 1-64 of A-Z a-z 0-9 - _", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body = UpdateMerchantIn,
    responses(
        (status = 200, description = "the merchant as changed", body = Merchant),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn update_merchant(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(u): Json<UpdateMerchantIn>,
) -> Out<Merchant> {
    let update = MerchantUpdate {
        allowed_origins: u.allowed_origins,
        token_format: u.token_format.map(wire),
        require_three_d_secure: u.require_three_d_secure,
    };
    Ok(axum::Json(wire(
        st.svc.update_merchant(&op, &id, update).await?,
    )))
}

/// Every merchant (never their keys). Audited.
#[utoipa::path(get, path = "/admin/v1/merchants", tag = "merchants",
    responses(
        (status = 200, description = "every merchant", body = Merchants),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn list_merchants(State(st): St, Extension(op): Extension<Operator>) -> Out<Merchants> {
    let merchants = st.svc.merchants(&op).await?;
    Ok(axum::Json(Merchants {
        merchants: merchants.into_iter().map(wire).collect(),
    }))
}

/// Moves leadership to the member named and answers once it leads.
#[utoipa::path(post, path = "/admin/v1/leader/transfer", tag = "cluster",
    request_body = TransferIn,
    responses(
        (status = 200, description = "the member named leads", body = Leader),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "the transfer failed", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn transfer_leader(
    State(st): St,
    Extension(op): Extension<Operator>,
    Json(t): Json<TransferIn>,
) -> Out<Leader> {
    st.svc.transfer_leader(&op, &t.to).await?;
    Ok(axum::Json(Leader { leader: t.to }))
}

/// Drains a node: it gives up leadership (to the healthiest caught-up node), reports
/// not ready and stops standing for election. Poll the cluster status (or use `kura
/// drain`) to see when it is safe to stop.
#[utoipa::path(post, path = "/admin/v1/nodes/{name}/drain", tag = "cluster",
    params(("name" = String, Path, description = "a member's name")),
    responses(
        (status = 200, description = "drained", body = Drained),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn drain(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(name): Path<String>,
) -> Out<Drained> {
    st.svc.set_drained(&op, &name, true).await?;
    Ok(axum::Json(Drained {
        node: name,
        drained: true,
    }))
}

/// Reverses a drain.
#[utoipa::path(post, path = "/admin/v1/nodes/{name}/undrain", tag = "cluster",
    params(("name" = String, Path, description = "a member's name")),
    responses(
        (status = 200, description = "undrained", body = Drained),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn undrain(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(name): Path<String>,
) -> Out<Drained> {
    st.svc.set_drained(&op, &name, false).await?;
    Ok(axum::Json(Drained {
        node: name,
        drained: false,
    }))
}

/// This node's fault switches (node-local, never forwarded; tests only).
#[utoipa::path(get, path = "/admin/v1/faults", tag = "cluster",
    responses(
        (status = 200, description = "the switches", body = Faults),
        (status = "4XX", description = "fault injection is off on this node", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn get_faults(State(st): St) -> Out<Faults> {
    Ok(axum::Json(dto::faults_out(st.svc.faults()?)))
}

/// Sets this node's fault switches (omitted ones are cleared; tests only).
#[utoipa::path(post, path = "/admin/v1/faults", tag = "cluster",
    request_body = Faults,
    responses(
        (status = 200, description = "the switches as set", body = Faults),
        (status = "4XX", description = "fault injection is off on this node", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn set_faults(
    State(st): St,
    Extension(op): Extension<Operator>,
    Json(state): Json<Faults>,
) -> Out<Faults> {
    let set = st.svc.set_faults(&op, &dto::faults_in(state))?;
    Ok(axum::Json(dto::faults_out(set)))
}

/// This node's last vault scrub, or the one running (node-local, never forwarded).
#[utoipa::path(get, path = "/admin/v1/scrub", tag = "cluster",
    responses((status = 200, description = "the last scrub", body = Scrub)),
    security(("operator" = [])))]
pub async fn get_scrub(State(st): St) -> axum::Json<Scrub> {
    axum::Json(st.svc.scrub_status())
}

/// Starts a full check of this node's vault (node-local): every index both ways,
/// every count, every payment's state and the audit chain, from one consistent view,
/// in the background. `202`; poll `GET /admin/v1/scrub` for the outcome.
#[utoipa::path(post, path = "/admin/v1/scrub", tag = "cluster",
    responses(
        (status = 202, description = "started", body = Scrub),
        (status = 409, description = "a scrub is running on this node already", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn start_scrub(
    State(st): St,
    Extension(op): Extension<Operator>,
) -> Result<Response, Problem> {
    let s = st.svc.start_scrub(&op)?;
    Ok((StatusCode::ACCEPTED, axum::Json(s)).into_response())
}

/// The last comparison of the members' vaults this leader ran, or the one running.
#[utoipa::path(get, path = "/admin/v1/compare", tag = "cluster",
    responses((status = 200, description = "the last comparison", body = Compare)),
    security(("operator" = [])))]
pub async fn get_compare(State(st): St) -> axum::Json<Compare> {
    axum::Json(st.svc.compare_status())
}

/// Compares the members' vaults: writes a marker through the log, and every member
/// hashes its whole vault as it stands just after applying it; any member whose hash
/// differs from the rest is named. `202`; poll `GET /admin/v1/compare` for the outcome.
#[utoipa::path(post, path = "/admin/v1/compare", tag = "cluster",
    responses(
        (status = 202, description = "started", body = Compare),
        (status = 409, description = "a comparison is running already", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn start_compare(
    State(st): St,
    Extension(op): Extension<Operator>,
) -> Result<Response, Problem> {
    let c = st.svc.start_compare(Some(&op))?;
    Ok((StatusCode::ACCEPTED, axum::Json(c)).into_response())
}

/// Adds a member as a learner: the leader starts replicating to it (by snapshot if
/// it must). Start the new node (empty, with its own config and certificate) before
/// or after; promote it once it has caught up (`kura member add` does all of it).
#[utoipa::path(post, path = "/admin/v1/members", tag = "cluster",
    request_body = AddMemberIn,
    responses(
        (status = 201, description = "added as a learner", body = MemberOut),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn add_member(
    State(st): St,
    Extension(op): Extension<Operator>,
    Json(m): Json<AddMemberIn>,
) -> Result<Response, Problem> {
    let new = crate::service::members::NewMember {
        name: m.name,
        id: m.id,
        role: wire(m.role),
        api_addr: m.api_addr,
        raft_addr: m.raft_addr,
        admin_addr: m.admin_addr,
        never_lead: m.never_lead,
    };
    let (id, member) = st.svc.add_member(&op, new).await?;
    let out = member_out(id, member, false);
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

fn member_out(id: u64, m: crate::member::Member, voter: bool) -> MemberOut {
    MemberOut {
        id,
        name: m.name,
        role: wire(m.role),
        api_addr: m.api_addr,
        raft_addr: m.raft_addr,
        admin_addr: m.admin_addr,
        never_lead: m.never_lead,
        voter,
    }
}

/// Makes a learner a voter (joint consensus), once it is within the readiness lag of
/// the leader (`409 member_not_caught_up` before).
#[utoipa::path(post, path = "/admin/v1/members/{name}/promote", tag = "cluster",
    params(("name" = String, Path, description = "a member's name")),
    responses(
        (status = 200, description = "a voter now", body = MemberOut),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn promote_member(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(name): Path<String>,
) -> Out<MemberOut> {
    st.svc.promote_member(&op, &name).await?;
    let members = st.svc.status_view().status.members;
    let m = members
        .into_iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Problem::from(crate::service::members::MemberChangeError::NotFound))?;
    Ok(axum::Json(MemberOut {
        id: m.id,
        name: m.name,
        role: wire(m.role),
        api_addr: m.api_addr,
        raft_addr: m.raft_addr,
        admin_addr: m.admin_addr,
        never_lead: m.never_lead,
        voter: m.voter,
    }))
}

/// `force` on `DELETE /admin/v1/members/{name}`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct RemoveQuery {
    /// Remove even if the voters left would have no quorum of reachable nodes or no
    /// node that may lead.
    #[serde(default)]
    pub force: bool,
}

/// Removes a member. A voter's removal that would leave no quorum of reachable voters,
/// or no voter that may lead, is refused unless forced; the leader hands leadership
/// away first and answers `503 not_leader` (retry: the new leader removes it).
#[utoipa::path(delete, path = "/admin/v1/members/{name}", tag = "cluster",
    params(("name" = String, Path, description = "a member's name"), RemoveQuery),
    responses(
        (status = 204, description = "removed"),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn remove_member(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(name): Path<String>,
    q: Result<axum::extract::Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let axum::extract::Query(q) = q.map_err(|_| {
        Problem::bad_request(
            "invalid_query",
            "the only query parameter is force (true or false)",
        )
    })?;
    st.svc.remove_member(&op, &name, q.force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A backup of this node's vault: a snapshot built now, streamed as one file (a
/// `KURA-BACKUP 1` line, a JSON header line with the cluster id, log id, members, size
/// and SHA-256, then the snapshot stream). The KEK is never in it. `kura snapshot save`
/// asks the leader.
#[utoipa::path(get, path = "/admin/v1/snapshot", tag = "cluster",
    responses(
        (status = 200, description = "the backup file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not taken", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn snapshot(
    State(st): St,
    Extension(op): Extension<Operator>,
) -> Result<Response, Problem> {
    let (header, data) = st.svc.backup(&op).await?;
    let preamble = bytes::Bytes::from(header.preamble());
    const CHUNK: u64 = 1 << 20;
    let chunks = futures::stream::unfold(0u64, move |offset| {
        let data = data.clone();
        async move {
            if offset >= data.len() {
                return None;
            }
            let n = (data.len() - offset).min(CHUNK);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n as usize];
                data.read_at(offset, &mut buf)
                    .map(|()| bytes::Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            Some((read, offset + n))
        }
    });
    let body =
        futures::stream::once(async move { Ok::<_, std::io::Error>(preamble) }).chain(chunks);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
