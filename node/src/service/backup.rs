//! Backups over the admin plane: a fresh snapshot of this node's vault, described by a
//! header (cluster id, log id, members, size, SHA-256), for `kura snapshot save`.

use super::auth::Operator;
use super::error::service_error;
use super::Service;
use crate::raft_types::SnapshotData;
use crate::store::backup::Header;
use std::time::Duration;

/// How long a backup waits for its snapshot to be built.
const BACKUP_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Why no backup was taken.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("the cluster is not formed yet")]
    NotFormed,
    #[error("no snapshot could be taken: {0}")]
    Failed(String),
    #[error("{0}")]
    NoRoom(String),
}

service_error!(BackupError {
    BackupError::NotFormed => ("not_formed", Conflict),
    BackupError::Failed(_) => ("backup_failed", Unavailable),
    BackupError::NoRoom(_) => ("insufficient_storage", Unavailable),
} delegate {});

impl Service {
    /// A snapshot of everything this node has applied, built now, and its header.
    pub async fn backup(&self, op: &Operator) -> Result<(Header, SnapshotData), BackupError> {
        if self.cluster.cluster_id().is_none() {
            return Err(BackupError::NotFormed);
        }
        let (header, data) = self
            .cluster
            .backup_snapshot(BACKUP_BUILD_TIMEOUT, self.now_ms().await)
            .await
            .map_err(|e| {
                if crate::files::no_room(&e) {
                    BackupError::NoRoom(e.to_string())
                } else {
                    BackupError::Failed(e.to_string())
                }
            })?;
        tracing::info!(
            index = header.last_log_id.index,
            bytes = header.snapshot_bytes,
            "backup snapshot served"
        );
        let detail = format!(
            "at index {}, {} bytes, sha256 {}",
            header.last_log_id.index, header.snapshot_bytes, header.snapshot_sha256
        );
        // The backup is taken; failing to record it is logged, not reported.
        if let Err(e) = self.record("snapshot.save", detail, Some(op.actor())).await {
            tracing::warn!(
                code = super::ServiceError::code(&e),
                "backup not recorded in the audit trail"
            );
        }
        Ok((header, data))
    }
}
