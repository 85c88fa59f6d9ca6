//! Key management: `GET /admin/v1/keys`, `POST /admin/v1/keys/rotate`,
//! `POST /admin/v1/keys/rotate-kek`, `POST /admin/v1/keys/verify` and
//! `POST /admin/v1/keys/{version}/retire`.

use super::{Problem, St};
use crate::service::auth::Operator;
use crate::service::keys::{KeyOpError, KeyStatus, Verification};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;

type Out<T> = Result<axum::Json<T>, Problem>;

/// `GET /admin/v1/keys`: every data key version, its state and card count, and the
/// re-wraps' progress.
pub async fn status(State(st): St, Extension(op): Extension<Operator>) -> Out<KeyStatus> {
    Ok(axum::Json(st.svc.key_status(&op).await?))
}

/// `POST /admin/v1/keys/rotate`: makes a new data key version current.
pub async fn rotate(
    State(st): St,
    Extension(op): Extension<Operator>,
) -> Result<Response, Problem> {
    let s = st.svc.rotate_data_key(&op).await?;
    Ok((StatusCode::CREATED, axum::Json(s)).into_response())
}

/// `POST /admin/v1/keys/rotate-kek`: re-wraps every key under the current KEK.
pub async fn rotate_kek(State(st): St, Extension(op): Extension<Operator>) -> Out<KeyStatus> {
    Ok(axum::Json(st.svc.rotate_kek(&op).await?))
}

/// `POST /admin/v1/keys/{version}/retire`: destroys an old version once no card uses it.
pub async fn retire(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(version): Path<String>,
) -> Out<KeyStatus> {
    let version: u32 = version.parse().map_err(|_| KeyOpError::NotFound)?;
    Ok(axum::Json(st.svc.retire_data_key(&op, version).await?))
}

/// `POST /admin/v1/keys/verify`: opens every stored card on the leader (a scrub).
pub async fn verify(State(st): St, Extension(op): Extension<Operator>) -> Out<Verification> {
    Ok(axum::Json(st.svc.verify_cards(&op).await?))
}
