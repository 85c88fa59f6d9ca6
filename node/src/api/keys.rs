//! Key management: `GET /admin/v1/keys`, `POST /admin/v1/keys/rotate`,
//! `POST /admin/v1/keys/rotate-kek`, `POST /admin/v1/keys/verify` and
//! `POST /admin/v1/keys/{version}/retire`.

use super::dto::wire;
use super::{Problem, St};
use crate::service::auth::Operator;
use crate::service::keys::RetireDataKeyError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use kura_types::{KeyStatus, KeyVerification};

type Out<T> = Result<axum::Json<T>, Problem>;

/// Every data key version, its state and card count, and the re-wraps' progress.
/// Audited.
#[utoipa::path(get, path = "/admin/v1/keys", tag = "keys",
    responses(
        (status = 200, description = "the keys", body = KeyStatus),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn status(State(st): St, Extension(op): Extension<Operator>) -> Out<KeyStatus> {
    Ok(axum::Json(wire(st.svc.key_status(&op).await?)))
}

/// Makes a new data key version current; the background re-wrap moves cards to it.
#[utoipa::path(post, path = "/admin/v1/keys/rotate", tag = "keys",
    responses(
        (status = 201, description = "rotated", body = KeyStatus),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn rotate(
    State(st): St,
    Extension(op): Extension<Operator>,
) -> Result<Response, Problem> {
    let s = st.svc.rotate_data_key(&op).await?;
    Ok((StatusCode::CREATED, axum::Json(wire::<KeyStatus, _>(s))).into_response())
}

/// Re-wraps every key under the nodes' current KEK, in one log entry (`409` until
/// every node reports that KEK as its own).
#[utoipa::path(post, path = "/admin/v1/keys/rotate-kek", tag = "keys",
    responses(
        (status = 200, description = "every key under the current KEK", body = KeyStatus),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn rotate_kek(State(st): St, Extension(op): Extension<Operator>) -> Out<KeyStatus> {
    Ok(axum::Json(wire(st.svc.rotate_kek(&op).await?)))
}

/// Destroys an old data key version once no card uses it.
#[utoipa::path(post, path = "/admin/v1/keys/{version}/retire", tag = "keys",
    params(("version" = u32, Path, description = "a data key version")),
    responses(
        (status = 200, description = "retired", body = KeyStatus),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done or outcome unknown", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn retire(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(version): Path<String>,
) -> Out<KeyStatus> {
    let version: u32 = version.parse().map_err(|_| RetireDataKeyError::NotFound)?;
    Ok(axum::Json(wire(
        st.svc.retire_data_key(&op, version).await?,
    )))
}

/// Opens every stored card under its key on the leader (a scrub). Audited first.
#[utoipa::path(post, path = "/admin/v1/keys/verify", tag = "keys", operation_id = "verify_keys",
    responses(
        (status = 200, description = "what opening every card found", body = KeyVerification),
        (status = "4XX", description = "refused", body = kura_types::Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "not done", body = kura_types::Problem, content_type = "application/problem+json"),
    ),
    security(("operator" = [])))]
pub async fn verify(State(st): St, Extension(op): Extension<Operator>) -> Out<KeyVerification> {
    Ok(axum::Json(wire(st.svc.verify_cards(&op).await?)))
}
