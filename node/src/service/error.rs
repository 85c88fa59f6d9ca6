//! Errors of the service layer: one enum per operation, each variant with a stable
//! `code()` (the `code` of the API's problem responses) and a [`Kind`] the HTTP layer
//! maps to a status, once, in `api/problem.rs`. The failures every operation shares —
//! replication and keys — are their own types, carried by the operations' enums.

use crate::cluster::WriteError;

/// What kind of failure an error is; the HTTP layer maps each to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed (400).
    Invalid,
    /// The request is well-formed but cannot be done as asked (422).
    Unprocessable,
    /// No valid credentials (401).
    Unauthenticated,
    /// Authenticated, but not allowed (403).
    Forbidden,
    /// No such thing for this caller (404).
    NotFound,
    /// The state does not allow it now (409).
    Conflict,
    /// It existed and is gone (410).
    Gone,
    /// Not now; nothing was done; retry (503).
    Unavailable,
    /// It may or may not have happened (504).
    OutcomeUnknown,
    /// A bug or a broken invariant (500).
    Internal,
}

/// An error the service layer returns.
pub trait ServiceError: std::error::Error {
    /// The stable machine code.
    fn code(&self) -> &'static str;
    /// What kind of failure it is.
    fn kind(&self) -> Kind;
}

/// Writes and linearizable reads that could not be done.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Replication {
    /// Nothing was done; retry, here or on another node.
    #[error("{0}")]
    NotLeader(&'static str),
    /// The cluster has no leader right now; nothing was done.
    #[error("the cluster has no leader right now; nothing was done; retry shortly")]
    NoLeader,
    /// The write may or may not have been applied.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// No quorum, or the node is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// This node cannot read its own copy of the vault; nothing was done.
    #[error("this node cannot read its vault storage; nothing was done; retry on another node")]
    Storage,
    /// The leader's disk is under its reserve; nothing was done.
    #[error("the vault's storage is nearly full: no new cards or payments are taken until its operators free space; payments already open still complete; nothing was done")]
    InsufficientStorage,
    /// A member runs a build that cannot apply the command (a rolling upgrade not
    /// finished, or a member not heard from since it started); nothing was done.
    #[error("this needs every member of the cluster to run a build that applies command level {needed}, and they are known to apply level {agreed} only (an upgrade not finished on every node, or a member not heard from since this node started); nothing was done")]
    Upgrading { needed: u32, agreed: u32 },
}

impl ServiceError for Replication {
    fn code(&self) -> &'static str {
        match self {
            Replication::NotLeader(_) => "not_leader",
            Replication::NoLeader => "no_leader",
            Replication::OutcomeUnknown(_) => "outcome_unknown",
            Replication::Unavailable(_) => "replication_unavailable",
            Replication::Storage => "storage_unavailable",
            Replication::InsufficientStorage => "insufficient_storage",
            Replication::Upgrading { .. } => "cluster_upgrading",
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Replication::OutcomeUnknown(_) => Kind::OutcomeUnknown,
            _ => Kind::Unavailable,
        }
    }
}

impl Replication {
    /// A failed read of the local vault: logged here (the detail is the storage's, never
    /// card data), answered as `storage_unavailable`.
    pub(crate) fn storage(e: crate::vault::StorageError) -> Replication {
        tracing::error!(error = %e, "vault storage read failed");
        Replication::Storage
    }

    /// A failed write: what the client may assume about it.
    pub(crate) fn of_write(e: WriteError) -> Replication {
        match e {
            WriteError::NotLeader { .. } => Replication::NotLeader(
                "leadership moved before the write was proposed; nothing was done; retry",
            ),
            WriteError::Unknown => Replication::OutcomeUnknown(
                "leadership changed while the write was in flight; it may or may not have been applied".into(),
            ),
            WriteError::Unavailable(e) => Replication::Unavailable(format!(
                "replication is unavailable ({e}); the write may or may not have been applied"
            )),
        }
    }
}

/// A key this node cannot unwrap with its key-encryption key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the {what} cannot be unwrapped with this node's key-encryption key")]
pub struct KeyUnavailable {
    pub what: &'static str,
}

impl ServiceError for KeyUnavailable {
    fn code(&self) -> &'static str {
        "key_unavailable"
    }
    fn kind(&self) -> Kind {
        Kind::Unavailable
    }
}

impl KeyUnavailable {
    /// Logs the provider's error (never a key) and names what could not be unwrapped.
    pub(crate) fn of(what: &'static str, e: crate::crypto::KeyError) -> KeyUnavailable {
        tracing::error!(error = %e, "cannot unwrap the {what}");
        KeyUnavailable { what }
    }
}

/// Implements [`ServiceError`] for an operation's enum: the variants that carry a
/// shared error delegate to it; the others name their code and kind.
macro_rules! service_error {
    ($ty:ty { $($pat:pat => ($code:expr, $kind:ident)),* $(,)? } delegate { $($d:ident),* $(,)? }) => {
        impl $crate::service::error::ServiceError for $ty {
            fn code(&self) -> &'static str {
                #[allow(unused_imports)]
                use $crate::service::error::ServiceError as _;
                match self {
                    $(Self::$d(e) => e.code(),)*
                    $($pat => $code,)*
                }
            }
            #[allow(unused_variables)]
            fn kind(&self) -> $crate::service::error::Kind {
                match self {
                    $(Self::$d(e) => e.kind(),)*
                    $($pat => $crate::service::error::Kind::$kind,)*
                }
            }
        }
    };
}
pub(crate) use service_error;

/// Errors of the reads that only check the caller and the cluster.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(ReadError {} delegate { Replication });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_failures_say_what_the_client_may_assume() {
        let e = Replication::of_write(WriteError::Unknown);
        assert_eq!(
            (e.code(), e.kind()),
            ("outcome_unknown", Kind::OutcomeUnknown)
        );
        let e = Replication::of_write(WriteError::NotLeader { leader: None });
        assert_eq!((e.code(), e.kind()), ("not_leader", Kind::Unavailable));
        assert!(e.to_string().contains("nothing was done"));
        let e = Replication::of_write(WriteError::Unavailable("no quorum".into()));
        assert_eq!(e.code(), "replication_unavailable");
        let e = ReadError::from(Replication::NoLeader);
        assert_eq!((e.code(), e.kind()), ("no_leader", Kind::Unavailable));
    }
}
