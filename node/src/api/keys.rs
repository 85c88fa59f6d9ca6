//! Data key management: `GET /admin/v1/keys`, `POST /admin/v1/keys/rotate`,
//! `POST /admin/v1/keys/{version}/retire`, and the background re-wrap that moves every
//! card to the current key.

use super::members::open_card;
use super::operator::Operator;
use super::tokens::{key_unavailable, unexpected};
use super::{result, AppState, Problem, St};
use crate::crypto::{seal_pan, DataKey};
use crate::vault::{Command, Refusal, Reseal, Response};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Extension;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle node looks for cards to re-wrap and retired keys to forget.
const REWRAP_IDLE_MS: u64 = 1_000;
/// Pause between re-wrap batches, so foreground writes keep most of the log.
const REWRAP_PAUSE_MS: u64 = 20;

fn keys_json(st: &AppState) -> serde_json::Value {
    let (versions, current) = st
        .cluster
        .vault()
        .read(|v| (v.data_keys(), v.current_data_key().map(|(ver, _)| ver)));
    let pending: u64 = versions
        .iter()
        .filter(|k| Some(k.version) != current)
        .map(|k| k.cards)
        .sum();
    let versions: Vec<_> = versions
        .iter()
        .map(|k| {
            json!({
                "version": k.version,
                "state": k.state,
                "installed_at": k.installed_at_ms / 1000,
                "retired_at": k.retired_at_ms.map(|t| t / 1000),
                "cards": k.cards,
                "kek_id": k.kek_id,
            })
        })
        .collect();
    let kek = st.keys.kek();
    let current_kek = kek.id();
    let wrapped = st.cluster.vault().read(|v| v.wrapped_keys());
    let under_other: usize = wrapped
        .iter()
        .filter(|(_, _, id)| id.as_deref() != Some(current_kek.as_str()))
        .count();
    json!({
        "provider": kek.kind(),
        "current_version": current,
        "versions": versions,
        "rewrap": { "pending_cards": pending, "done": pending == 0 },
        "kek": {
            "current": current_kek,
            "held": kek.ids(),
            "keys_under_other_keks": under_other,
            "rotation_done": under_other == 0,
        },
    })
}

/// `POST /admin/v1/keys/rotate-kek`: re-wraps every live data key and the fingerprint
/// key under this node's current KEK, in one log entry. Every node must already hold
/// the new KEK as its `kek_file` (and the old one in `kek_previous_files`, until this is
/// done): the leader checks the other nodes' reports first.
pub async fn rotate_kek(State(st): St, Extension(op): Extension<Operator>) -> HttpResponse {
    result(
        async {
            st.linearize().await?;
            let kek = st.keys.kek();
            let target = kek.id();
            let me = st.cluster.id();
            let reports = st.failover.health.peer_reports();
            let mut lagging = Vec::new();
            for (id, member) in st.cluster.members() {
                if *id == me {
                    continue;
                }
                let theirs = reports
                    .get(id)
                    .and_then(Option::as_ref)
                    .and_then(|r| r.kek_ids.first());
                if theirs != Some(&target) {
                    lagging.push(member.name.clone());
                }
            }
            if !lagging.is_empty() {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "kek_not_on_all_nodes",
                    format!(
                        "nodes {} do not report {target} as their current KEK (or did not answer); give every node the new kek_file, keep the old one in kek_previous_files, restart them, and retry",
                        lagging.join(", ")
                    ),
                ));
            }
            let keys = st.cluster.vault().read(|v| v.wrapped_keys());
            let (mut rewrapped, mut fingerprint) = (Vec::new(), None);
            for (version, wrapped, from) in keys {
                if from.as_deref() == Some(target.as_str()) {
                    continue;
                }
                let (key, what) = if version == 0 {
                    (kek.unwrap_fingerprint_key(&wrapped, from.as_deref()), "fingerprint key")
                } else {
                    (kek.unwrap_key(&wrapped, version, from.as_deref()), "data key")
                };
                let key = key.map_err(|e| key_unavailable(what, e))?;
                let (_, again) = if version == 0 {
                    kek.wrap_fingerprint_key(&key, &st.entropy)
                } else {
                    kek.wrap(&key, version, &st.entropy)
                }
                .map_err(|e| key_unavailable(what, e))?;
                let r = crate::vault::command::RewrappedKey {
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
                return Ok(axum::Json(keys_json(&st)).into_response());
            }
            let cmd = Command::RewrapKeys {
                kek_id: target.clone(),
                keys: rewrapped,
                fingerprint,
                at_ms: st.now_ms(),
                by: Some(op.actor()),
            };
            match st.write(cmd).await? {
                Response::KeysRewrapped { keys } => {
                    st.keys.forget_all();
                    tracing::info!(keys, kek = %target, "data keys re-wrapped under the current KEK");
                    Ok(axum::Json(keys_json(&st)).into_response())
                }
                Response::Refused(Refusal::KeyRewrapped | Refusal::UnknownDataKey) => {
                    Err(Problem::new(
                        StatusCode::CONFLICT,
                        "rotation_conflict",
                        "keys changed while they were re-wrapped; retry",
                    ))
                }
                other => Err(unexpected(&other)),
            }
        }
        .await,
    )
}

/// `GET /admin/v1/keys`: every data key version, its state and card count, and the
/// re-wrap's progress.
pub async fn status(State(st): St, Extension(op): Extension<Operator>) -> HttpResponse {
    result(
        async {
            st.linearize().await?;
            super::security::audited_access(&st, &op, "keys.read", "key status".into()).await?;
            Ok(axum::Json(keys_json(&st)).into_response())
        }
        .await,
    )
}

/// `POST /admin/v1/keys/rotate`: makes a new data key version current. Old versions keep
/// decrypting; the background re-wrap moves cards to the new one.
pub async fn rotate(State(st): St, Extension(op): Extension<Operator>) -> HttpResponse {
    result(
        async {
            st.linearize().await?;
            let next = st
                .cluster
                .vault()
                .read(|v| v.data_keys().last().map_or(1, |k| k.version + 1));
            let (kek_id, wrapped) = st
                .keys
                .kek()
                .wrap(&DataKey::generate(&st.entropy), next, &st.entropy)
                .map_err(|e| key_unavailable("new data key", e))?;
            let cmd = Command::InstallDataKey {
                version: next,
                wrapped,
                kek_id: Some(kek_id),
                at_ms: st.now_ms(),
                by_admin: true,
                by: Some(op.actor()),
            };
            match st.write(cmd).await? {
                Response::DataKeyInstalled { version } => {
                    tracing::info!(version, "data key rotated");
                    Ok((StatusCode::CREATED, axum::Json(keys_json(&st))).into_response())
                }
                Response::Refused(Refusal::DataKeyExists { .. }) => Err(Problem::new(
                    StatusCode::CONFLICT,
                    "rotation_conflict",
                    "another rotation made this version first; check GET /admin/v1/keys",
                )),
                other => Err(unexpected(&other)),
            }
        }
        .await,
    )
}

/// `POST /admin/v1/keys/{version}/retire`: destroys an old version once no card uses it.
pub async fn retire(
    State(st): St,
    Extension(op): Extension<Operator>,
    Path(version): Path<String>,
) -> HttpResponse {
    result(
        async {
            let version: u32 = version.parse().map_err(|_| {
                Problem::not_found("data_key_not_found", "no data key with this version")
            })?;
            let cmd = Command::RetireDataKey {
                version,
                at_ms: st.now_ms(),
                by: Some(op.actor()),
            };
            match st.write(cmd).await? {
                Response::DataKeyRetired { version } => {
                    st.keys.forget(version);
                    tracing::info!(version, "data key retired");
                    Ok(axum::Json(keys_json(&st)).into_response())
                }
                Response::Refused(Refusal::DataKeyInUse { cards }) => Err(Problem::new(
                    StatusCode::CONFLICT,
                    "data_key_in_use",
                    format!("{cards} cards are still sealed under this version; wait for the re-wrap (GET /admin/v1/keys)"),
                )),
                Response::Refused(Refusal::DataKeyCurrent) => Err(Problem::new(
                    StatusCode::CONFLICT,
                    "data_key_current",
                    "the current data key cannot be retired; rotate first",
                )),
                Response::Refused(Refusal::UnknownDataKey) => Err(Problem::not_found(
                    "data_key_not_found",
                    "no live data key with this version (unknown or already retired)",
                )),
                other => Err(unexpected(&other)),
            }
        }
        .await,
    )
}

/// Cards opened per batch by `POST /admin/v1/keys/verify`.
const VERIFY_BATCH_CARDS: usize = 1024;

/// `POST /admin/v1/keys/verify`: opens every stored card under its data key on the
/// leader (a scrub: proves each ciphertext still decrypts and is bound to its merchant,
/// token and key version). Reports counts and the first failure's token id.
pub async fn verify(State(st): St, Extension(op): Extension<Operator>) -> HttpResponse {
    result(
        async {
            // It opens every card: who asked is on record, in the trail, before it starts.
            tracing::info!(operator = %op.actor(), "key verification started");
            st.linearize().await?;
            super::security::audited_access(
                &st,
                &op,
                "keys.verify",
                "opens every stored card".into(),
            )
            .await?;
            let (mut checked, mut failures, mut first_failure) = (0u64, 0u64, None);
            let mut by_version = std::collections::BTreeMap::<u32, u64>::new();
            let mut cursor: Option<String> = None;
            loop {
                let batch = st
                    .cluster
                    .vault()
                    .read(|v| v.cards_after(cursor.as_deref(), VERIFY_BATCH_CARDS));
                let Some((last, _)) = batch.last() else { break };
                cursor = Some(last.clone());
                for (token, r) in &batch {
                    checked += 1;
                    *by_version.entry(r.card.key_version).or_default() += 1;
                    if open_card(&st, &r.merchant_id, token, &r.card).is_err() {
                        failures += 1;
                        first_failure.get_or_insert_with(|| token.clone());
                    }
                }
                tokio::task::yield_now().await;
            }
            Ok(axum::Json(json!({
                "cards_checked": checked,
                "cards_by_version": by_version,
                "failures": failures,
                "first_failure": first_failure,
            }))
            .into_response())
        }
        .await,
    )
}

/// Runs for the node's lifetime: on the leader, moves cards sealed under old data keys to
/// the current one in bounded batches through the log; on every node, drops retired keys
/// from the key cache.
pub async fn rewrap_loop(st: Arc<AppState>) {
    loop {
        forget_retired(&st);
        let moved = if st.cluster.is_leader() {
            match rewrap_pass(&st).await {
                Ok(n) => n,
                Err(p) => {
                    tracing::warn!(code = p.code, detail = %p.detail, "re-wrap pass stopped; retrying");
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

fn forget_retired(st: &AppState) {
    let retired: Vec<u32> = st.cluster.vault().read(|v| {
        v.data_keys()
            .into_iter()
            .filter(|k| k.retired_at_ms.is_some())
            .map(|k| k.version)
            .collect()
    });
    for v in retired {
        st.keys.forget(v);
    }
}

/// One pass over the cards in token order; returns how many moved.
async fn rewrap_pass(st: &AppState) -> Result<u64, Problem> {
    let Some(current) = st
        .cluster
        .vault()
        .read(|v| v.current_data_key().map(|(ver, _)| ver))
    else {
        return Ok(0);
    };
    let (_, key) = super::tokens::current_data_key(st).await?;
    let mut cursor: Option<String> = None;
    let mut moved = 0;
    loop {
        let batch = st
            .cluster
            .vault()
            .read(|v| v.stale_cards(cursor.as_deref(), current, st.settings.rewrap_batch_cards));
        let Some((last, _)) = batch.last() else {
            return Ok(moved);
        };
        cursor = Some(last.clone());
        let mut cards = Vec::with_capacity(batch.len());
        for (token, r) in &batch {
            let pan = open_card(st, &r.merchant_id, token, &r.card)?;
            let nonce = st.entropy.nonce();
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
            at_ms: st.now_ms(),
        };
        match st.write(cmd).await? {
            Response::Resealed { moved: m, .. } => {
                moved += m;
                st.metrics.rewrap_cards.inc_by(m);
            }
            // Rotated again meanwhile: the next pass uses the newer key.
            Response::Refused(Refusal::UnknownDataKey) => return Ok(moved),
            other => return Err(unexpected(&other)),
        }
        crate::runtime::sleep(Duration::from_millis(REWRAP_PAUSE_MS)).await;
    }
}
