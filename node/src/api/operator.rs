//! Who is calling the admin plane: a named operator, by the client certificate of the
//! connection, or — where a break-glass token is configured — the token's holder.
//! Auditors read; only admins change anything.

use super::{AppState, Problem, St};
use crate::net::tls::{Identity, OperatorRole};
use crate::net::{ClientAddr, ClientIdentity};
use crate::service::auth::{Operator, BREAK_GLASS};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Request header by which a node forwarding an operator's request to the leader names
/// the operator (`<role>/<name>`). Trusted only on a connection whose certificate names
/// a member node; ignored on every other.
pub const OPERATOR_HEADER: &str = "kura-operator";

/// The value of [`OPERATOR_HEADER`] that names `op`.
pub fn header_value(op: &Operator) -> String {
    let role = match op.role {
        OperatorRole::Admin => "admin",
        OperatorRole::Auditor => "auditor",
    };
    if op.break_glass {
        format!("{role}/{BREAK_GLASS}")
    } else {
        format!("{role}/{}", op.name)
    }
}

/// The operator an [`OPERATOR_HEADER`] value names.
fn from_header(v: &str) -> Option<Operator> {
    let (role, name) = v.split_once('/')?;
    if name == BREAK_GLASS {
        return Some(Operator::break_glass());
    }
    match Identity::from_uri(&format!("kura://operator/{role}/{name}"))? {
        Identity::Operator { name, role } => Some(Operator {
            name,
            role,
            break_glass: false,
        }),
        Identity::Node { .. } => None,
    }
}

/// True for what an auditor may do: read, and recompute the audit chain.
fn read_only(method: &Method, path: &str) -> bool {
    method == Method::GET || method == Method::HEAD || path == "/admin/v1/audit/verify"
}

/// Middleware of the admin plane: authenticates the caller, refuses an auditor's
/// changes, and hands the [`Operator`] to the handlers as a request extension. A
/// failure is logged with the source address and counted.
pub async fn authenticate(State(st): St, mut req: Request, next: Next) -> Response {
    let op = match identify(&st, &req) {
        Ok(op) => op,
        Err(reason) => {
            let from = req
                .extensions()
                .get::<ClientAddr>()
                .map_or("?", |a| a.0.as_str());
            tracing::warn!(source = from, reason, path = %req.uri().path(), "admin authentication failed");
            st.svc.metrics().admin_auth_failed(reason);
            st.svc
                .note_auth_failure("admin", reason, &super::limits::ip_of(from));
            return Problem::unauthorized().into_response();
        }
    };
    if op.break_glass && req.extensions().get::<ClientIdentity>().is_none() {
        let from = req
            .extensions()
            .get::<ClientAddr>()
            .map_or("?", |a| a.0.as_str());
        tracing::warn!(source = from, path = %req.uri().path(), "break-glass admin token used");
        st.svc.metrics().admin_break_glass_used();
    }
    if op.role == OperatorRole::Auditor && !read_only(req.method(), req.uri().path()) {
        return Problem::forbidden(
            "operator_role_forbidden",
            "an auditor may read status, the audit trail and key status, but change nothing",
        )
        .into_response();
    }
    req.extensions_mut().insert(op);
    next.run(req).await
}

/// Why a caller is not authenticated, as a bounded metric label.
type Reason = &'static str;

fn identify(st: &AppState, req: &Request) -> Result<Operator, Reason> {
    match req.extensions().get::<ClientIdentity>().map(|c| &c.0) {
        Some(Identity::Operator { name, role }) => Ok(Operator {
            name: name.clone(),
            role: *role,
            break_glass: false,
        }),
        // A member forwarding an operator's request it has authenticated.
        Some(Identity::Node { id }) if st.svc.is_member(*id) => req
            .headers()
            .get(OPERATOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(from_header)
            .ok_or("forwarded_without_operator"),
        Some(Identity::Node { .. }) => Err("not_a_member"),
        None => match super::bearer(req.headers()) {
            Some(token) if st.svc.is_break_glass(token) => Ok(Operator::break_glass()),
            Some(_) => Err("bad_token"),
            None => Err("no_credentials"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_travels_through_the_forwarding_header_unchanged() {
        for op in [
            Operator {
                name: "alice".into(),
                role: OperatorRole::Admin,
                break_glass: false,
            },
            Operator {
                name: "bob".into(),
                role: OperatorRole::Auditor,
                break_glass: false,
            },
            Operator {
                name: BREAK_GLASS.into(),
                role: OperatorRole::Admin,
                break_glass: true,
            },
        ] {
            assert_eq!(from_header(&header_value(&op)), Some(op));
        }
        for bad in ["", "alice", "root/alice", "admin/", "admin/a/b"] {
            assert_eq!(from_header(bad), None, "{bad}");
        }
    }

    #[test]
    fn auditors_may_only_read_and_verify() {
        assert!(read_only(&Method::GET, "/admin/v1/keys"));
        assert!(read_only(&Method::POST, "/admin/v1/audit/verify"));
        assert!(!read_only(&Method::POST, "/admin/v1/keys/verify"));
        assert!(!read_only(&Method::POST, "/admin/v1/merchants"));
        assert!(!read_only(&Method::PATCH, "/admin/v1/merchants/m"));
    }
}
