//! Key management: data key status, rotation and retirement, KEK rotation (re-wrapping
//! every key under the new KEK), verification of every stored card, and the background
//! re-wrap that moves cards to the current data key.

use super::audit::RecordError;
use super::auth::Operator;
use super::error::{service_error, KeyUnavailable, Replication};
use super::sealing::SealError;
use super::{unexpected, Service};
use crate::crypto::{seal_pan, DataKey};
use crate::vault::command::RewrappedKey;
use crate::vault::{Command, Refusal, Reseal, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle node looks for cards to re-wrap and retired keys to forget.
const REWRAP_IDLE_MS: u64 = 1_000;
/// Pause between re-wrap batches, so foreground writes keep most of the log.
const REWRAP_PAUSE_MS: u64 = 20;
/// Cards opened per batch by a verification.
const VERIFY_BATCH_CARDS: usize = 1024;

/// One data key version.
#[derive(Debug, Clone)]
pub struct KeyVersion {
    pub version: u32,
    pub state: &'static str,
    /// Unix seconds.
    pub installed_at: u64,
    pub retired_at: Option<u64>,
    pub cards: u64,
    pub kek_id: Option<String>,
}

/// The re-wrap's progress.
#[derive(Debug, Clone)]
pub struct RewrapProgress {
    pub pending_cards: u64,
    pub done: bool,
}

/// The KEKs and the rotation's progress.
#[derive(Debug, Clone)]
pub struct KekStatus {
    pub current: String,
    pub held: Vec<String>,
    pub keys_under_other_keks: usize,
    pub rotation_done: bool,
}

/// Every data key version, its state and card count, and the re-wraps' progress.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub provider: &'static str,
    pub current_version: Option<u32>,
    pub versions: Vec<KeyVersion>,
    pub rewrap: RewrapProgress,
    pub kek: KekStatus,
}

/// What a verification of every stored card found.
#[derive(Debug, Clone)]
pub struct Verification {
    pub cards_checked: u64,
    pub cards_by_version: BTreeMap<u32, u64>,
    pub failures: u64,
    pub first_failure: Option<String>,
}

/// Why key status could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStatusError {
    #[error(transparent)]
    Audit(#[from] RecordError),
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(KeyStatusError {} delegate { Audit, Replication });

/// Why no new data key version was made current.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RotateDataKeyError {
    #[error("another rotation made this version first; check GET /admin/v1/keys")]
    RotationConflict,
    #[error(transparent)]
    Key(#[from] KeyUnavailable),
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(RotateDataKeyError {
    RotateDataKeyError::RotationConflict => ("rotation_conflict", Conflict),
    RotateDataKeyError::Internal(_) => ("internal", Internal),
} delegate { Key, Replication });

/// Why the keys were not re-wrapped under the current KEK.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RotateKekError {
    #[error("nodes {nodes} do not report {kek} as their current KEK (or did not answer); give every node the new kek_file, keep the old one in kek_previous_files, restart them, and retry")]
    NotOnAllNodes { nodes: String, kek: String },
    #[error("keys changed while they were re-wrapped; retry")]
    Conflict,
    #[error(transparent)]
    Key(#[from] KeyUnavailable),
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(RotateKekError {
    RotateKekError::NotOnAllNodes { .. } => ("kek_not_on_all_nodes", Conflict),
    RotateKekError::Conflict => ("rotation_conflict", Conflict),
    RotateKekError::Internal(_) => ("internal", Internal),
} delegate { Key, Replication });

/// Why a data key version was not retired.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RetireDataKeyError {
    #[error(
        "{0} cards are still sealed under this version; wait for the re-wrap (GET /admin/v1/keys)"
    )]
    InUse(u64),
    #[error("the current data key cannot be retired; rotate first")]
    Current,
    #[error("no live data key with this version (unknown or already retired)")]
    NotFound,
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(RetireDataKeyError {
    RetireDataKeyError::InUse(_) => ("data_key_in_use", Conflict),
    RetireDataKeyError::Current => ("data_key_current", Conflict),
    RetireDataKeyError::NotFound => ("data_key_not_found", NotFound),
    RetireDataKeyError::Internal(_) => ("internal", Internal),
} delegate { Replication });

/// Why the stored cards could not be verified.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyCardsError {
    #[error(transparent)]
    Audit(#[from] RecordError),
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(VerifyCardsError {} delegate { Audit, Replication });

/// Why a re-wrap pass stopped (it is retried).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RewrapError {
    #[error(transparent)]
    Sealing(#[from] SealError),
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(RewrapError {
    RewrapError::Internal(_) => ("internal", Internal),
} delegate { Sealing, Replication });

impl Service {
    fn key_status_now(&self) -> Result<KeyStatus, Replication> {
        let (versions, current) =
            self.read(|v| (v.data_keys(), v.current_data_key().map(|(ver, _)| ver)))?;
        let pending: u64 = versions
            .iter()
            .filter(|k| Some(k.version) != current)
            .map(|k| k.cards)
            .sum();
        let kek = self.keys.kek();
        let current_kek = kek.id();
        let wrapped = self.read(|v| v.wrapped_keys())?;
        let under_other = wrapped
            .iter()
            .filter(|(_, _, id)| id.as_deref() != Some(current_kek.as_str()))
            .count();
        Ok(KeyStatus {
            provider: kek.kind(),
            current_version: current,
            versions: versions
                .into_iter()
                .map(|k| KeyVersion {
                    version: k.version,
                    state: k.state,
                    installed_at: k.installed_at_ms / 1000,
                    retired_at: k.retired_at_ms.map(|t| t / 1000),
                    cards: k.cards,
                    kek_id: k.kek_id,
                })
                .collect(),
            rewrap: RewrapProgress {
                pending_cards: pending,
                done: pending == 0,
            },
            kek: KekStatus {
                current: current_kek,
                held: kek.ids(),
                keys_under_other_keks: under_other,
                rotation_done: under_other == 0,
            },
        })
    }

    /// Every data key version, its state and card count, and the re-wraps' progress (an
    /// audited read).
    pub async fn key_status(&self, op: &Operator) -> Result<KeyStatus, KeyStatusError> {
        self.linearize().await?;
        self.audited_access(op, "keys.read", "key status".into())
            .await?;
        Ok(self.key_status_now()?)
    }

    /// Makes a new data key version current. Old versions keep decrypting; the
    /// background re-wrap moves cards to the new one.
    pub async fn rotate_data_key(&self, op: &Operator) -> Result<KeyStatus, RotateDataKeyError> {
        self.linearize().await?;
        let next = self.read(|v| v.data_keys().last().map_or(1, |k| k.version + 1))?;
        let (kek_id, wrapped) = self
            .keys
            .kek()
            .wrap(&DataKey::generate(&self.entropy), next, &self.entropy)
            .map_err(|e| KeyUnavailable::of("new data key", e))?;
        let cmd = Command::InstallDataKey {
            version: next,
            wrapped,
            kek_id: Some(kek_id),
            at_ms: self.now_ms().await,
            by_admin: true,
            by: Some(op.actor()),
        };
        match self.write(cmd).await? {
            Response::DataKeyInstalled { version } => {
                tracing::info!(version, "data key rotated");
                Ok(self.key_status_now()?)
            }
            Response::Refused(Refusal::DataKeyExists { .. }) => {
                Err(RotateDataKeyError::RotationConflict)
            }
            other => Err(RotateDataKeyError::Internal(unexpected(&other))),
        }
    }

    /// Destroys an old data key version once no card uses it.
    pub async fn retire_data_key(
        &self,
        op: &Operator,
        version: u32,
    ) -> Result<KeyStatus, RetireDataKeyError> {
        let cmd = Command::RetireDataKey {
            version,
            at_ms: self.now_ms().await,
            by: Some(op.actor()),
        };
        match self.write(cmd).await? {
            Response::DataKeyRetired { version } => {
                self.keys.forget(version);
                tracing::info!(version, "data key retired");
                Ok(self.key_status_now()?)
            }
            Response::Refused(Refusal::DataKeyInUse { cards }) => {
                Err(RetireDataKeyError::InUse(cards))
            }
            Response::Refused(Refusal::DataKeyCurrent) => Err(RetireDataKeyError::Current),
            Response::Refused(Refusal::UnknownDataKey) => Err(RetireDataKeyError::NotFound),
            other => Err(RetireDataKeyError::Internal(unexpected(&other))),
        }
    }

    /// Re-wraps every live data key and the fingerprint key under this node's current
    /// KEK, in one log entry. Every node must already hold the new KEK as its
    /// `kek_file` (and the old one in `kek_previous_files`, until this is done): the
    /// leader checks the other nodes' reports first.
    pub async fn rotate_kek(&self, op: &Operator) -> Result<KeyStatus, RotateKekError> {
        self.linearize().await?;
        let kek = self.keys.kek();
        let target = kek.id();
        let me = self.cluster.id();
        let reports = self.failover.health.peer_reports();
        let lagging: Vec<String> = self
            .cluster
            .members()
            .iter()
            .filter(|(id, _)| **id != me)
            .filter(|(id, _)| {
                reports
                    .get(id)
                    .and_then(Option::as_ref)
                    .and_then(|r| r.kek_ids.first())
                    != Some(&target)
            })
            .map(|(_, m)| m.name.clone())
            .collect();
        if !lagging.is_empty() {
            return Err(RotateKekError::NotOnAllNodes {
                nodes: lagging.join(", "),
                kek: target,
            });
        }
        let keys = self.read(|v| v.wrapped_keys())?;
        let (mut rewrapped, mut fingerprint) = (Vec::new(), None);
        for (version, wrapped, from) in keys {
            if from.as_deref() == Some(target.as_str()) {
                continue;
            }
            let (key, what) = if version == 0 {
                (
                    kek.unwrap_fingerprint_key(&wrapped, from.as_deref()),
                    "fingerprint key",
                )
            } else {
                (
                    kek.unwrap_key(&wrapped, version, from.as_deref()),
                    "data key",
                )
            };
            let key = key.map_err(|e| KeyUnavailable::of(what, e))?;
            let (_, again) = if version == 0 {
                kek.wrap_fingerprint_key(&key, &self.entropy)
            } else {
                kek.wrap(&key, version, &self.entropy)
            }
            .map_err(|e| KeyUnavailable::of(what, e))?;
            let r = RewrappedKey {
                version,
                from_kek_id: from,
                wrapped: again,
            };
            if version == 0 {
                fingerprint = Some(r);
            } else {
                rewrapped.push(r);
            }
        }
        if rewrapped.is_empty() && fingerprint.is_none() {
            return Ok(self.key_status_now()?);
        }
        let cmd = Command::RewrapKeys {
            kek_id: target.clone(),
            keys: rewrapped,
            fingerprint,
            at_ms: self.now_ms().await,
            by: Some(op.actor()),
        };
        match self.write(cmd).await? {
            Response::KeysRewrapped { keys } => {
                self.keys.forget_all();
                tracing::info!(keys, kek = %target, "data keys re-wrapped under the current KEK");
                Ok(self.key_status_now()?)
            }
            Response::Refused(Refusal::KeyRewrapped | Refusal::UnknownDataKey) => {
                Err(RotateKekError::Conflict)
            }
            other => Err(RotateKekError::Internal(unexpected(&other))),
        }
    }

    /// Opens every stored card under its data key (a scrub: proves each ciphertext
    /// still decrypts and is bound to its merchant, token and key version). Reports
    /// counts and the first failure's token id.
    pub async fn verify_cards(&self, op: &Operator) -> Result<Verification, VerifyCardsError> {
        // It opens every card: who asked is on record, in the trail, before it starts.
        tracing::info!(operator = %op.actor(), "key verification started");
        self.linearize().await?;
        self.audited_access(op, "keys.verify", "opens every stored card".into())
            .await?;
        let mut out = Verification {
            cards_checked: 0,
            cards_by_version: BTreeMap::new(),
            failures: 0,
            first_failure: None,
        };
        let mut cursor: Option<String> = None;
        loop {
            let batch = self.read(|v| v.cards_after(cursor.as_deref(), VERIFY_BATCH_CARDS))?;
            let Some((last, _)) = batch.last() else { break };
            cursor = Some(last.clone());
            for (token, r) in &batch {
                out.cards_checked += 1;
                *out.cards_by_version.entry(r.card.key_version).or_default() += 1;
                if self.open_card(&r.merchant_id, token, &r.card).is_err() {
                    out.failures += 1;
                    out.first_failure.get_or_insert_with(|| token.clone());
                }
            }
            tokio::task::yield_now().await;
        }
        Ok(out)
    }

    fn forget_retired(&self) {
        let Ok(retired) = self.read(|v| {
            v.data_keys()
                .into_iter()
                .filter(|k| k.retired_at_ms.is_some())
                .map(|k| k.version)
                .collect::<Vec<u32>>()
        }) else {
            return;
        };
        for v in retired {
            self.keys.forget(v);
        }
    }

    /// One pass over the cards under older keys, by key version; returns how many
    /// moved.
    async fn rewrap_pass(&self) -> Result<u64, RewrapError> {
        let Some(current) = self.read(|v| v.current_data_key().map(|(ver, _)| ver))? else {
            return Ok(0);
        };
        let (_, key) = self.current_data_key().await?;
        let mut cursor: Option<(u32, String)> = None;
        let mut moved = 0;
        loop {
            let batch = self.read(|v| {
                v.stale_cards(cursor.as_ref(), current, self.settings.rewrap_batch_cards)
            })?;
            let Some((last, r)) = batch.last() else {
                return Ok(moved);
            };
            cursor = Some((r.card.key_version, last.clone()));
            let mut cards = Vec::with_capacity(batch.len());
            for (token, r) in &batch {
                let pan = self.open_card(&r.merchant_id, token, &r.card)?;
                let nonce = self.entropy.nonce();
                let ciphertext = seal_pan(&key, current, &r.merchant_id, token, &pan, &nonce);
                cards.push(Reseal {
                    token: token.clone(),
                    from_version: r.card.key_version,
                    nonce: nonce.to_vec(),
                    ciphertext,
                });
            }
            let cmd = Command::ResealCards {
                to_version: current,
                cards,
                at_ms: self.now_ms().await,
            };
            match self.write(cmd).await? {
                Response::Resealed { moved: m, .. } => {
                    moved += m;
                    self.metrics.rewrap_cards.inc_by(m);
                }
                // Rotated again meanwhile: the next pass uses the newer key.
                Response::Refused(Refusal::UnknownDataKey) => return Ok(moved),
                other => return Err(RewrapError::Internal(unexpected(&other))),
            }
            crate::runtime::sleep(Duration::from_millis(REWRAP_PAUSE_MS)).await;
        }
    }
}

/// Runs for the node's lifetime: on the leader, moves cards sealed under old data keys
/// to the current one in bounded batches through the log; on every node, drops retired
/// keys from the key cache.
pub async fn rewrap_loop(svc: Arc<Service>) {
    loop {
        svc.forget_retired();
        let moved = if svc.cluster.is_leader() {
            match svc.rewrap_pass().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(code = super::ServiceError::code(&e), error = %e, "re-wrap pass stopped; retrying");
                    0
                }
            }
        } else {
            0
        };
        if moved > 0 {
            tracing::info!(cards = moved, "re-wrap pass finished");
        }
        crate::runtime::sleep(Duration::from_millis(REWRAP_IDLE_MS)).await;
    }
}
