//! The audit trail: paging through it, signing its head (on demand for export, and
//! through the log every interval), verifying the chain and its signatures, and the
//! security events written into it — failed authentications (summarised per interval,
//! so a flood of bad keys cannot flood the log), admin reads, key verification, fault
//! switches. Any node may have such an event; a follower hands it to the leader over
//! the peer plane, which writes it through the log.

use super::auth::Operator;
use super::error::{service_error, KeyUnavailable, ReadError, Replication};
use super::{response_kind, unexpected, Service};
use crate::vault::audit::{
    AuditRecord, MacCheck, SignatureReport, SignedHead, AUDIT_PAGE_RECORDS_MAX,
};
use crate::vault::{Command, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a follower hands an event to the leader, on the peer listener.
pub const EVENT_PATH: &str = "/peer/v1/audit-event";

/// How often failed authentications are summarised into the trail.
const FAILURES_FLUSH_MS: u64 = 10_000;
/// Distinct (plane, reason, address) kept between flushes; beyond it, counted as `*`.
const FAILURE_KEYS_MAX: usize = 1_000;
/// Distinct sources named in one summary record.
const SUMMARY_SOURCES_MAX: usize = 20;
/// Longest event detail a node may hand over.
const EVENT_DETAIL_CHARS_MAX: usize = 3072;

/// Actions a node may hand to the leader (anything else is refused).
const EVENT_ACTIONS: [&str; 3] = ["auth.failed", "faults.set", "leader.transfer"];

/// Failed authentications since the last flush.
#[derive(Default)]
pub struct AuthFailures {
    counts: Mutex<FailureCounts>,
}

impl AuthFailures {
    /// Counts one failure on `plane` for `reason` from `source` (an IP address).
    pub fn note(&self, plane: &'static str, reason: &'static str, source: &str) {
        self.restore(FailureCounts::from([(
            (plane, reason, source.to_owned()),
            1,
        )]));
    }

    /// The summary of the failures since the last call, if any, and forgets them.
    pub fn take_summary(&self) -> Option<String> {
        self.take().map(|c| Self::summary(&c))
    }

    /// The failures since the last call, if any, forgotten here.
    pub fn take(&self) -> Option<FailureCounts> {
        let counts = std::mem::take(&mut *self.counts.lock().expect("auth failures lock"));
        (!counts.is_empty()).then_some(counts)
    }

    /// Gives back failures taken but not written (they are summarised with the next
    /// ones: written at least once, not lost to a leader change).
    pub fn restore(&self, taken: FailureCounts) {
        for ((plane, reason, source), n) in taken {
            let mut c = self.counts.lock().expect("auth failures lock");
            let key = (plane, reason, source);
            if c.len() >= FAILURE_KEYS_MAX && !c.contains_key(&key) {
                *c.entry((plane, reason, "*".into())).or_default() += n;
            } else {
                *c.entry(key).or_default() += n;
            }
        }
    }

    /// One line: the total, then the sources by count.
    pub fn summary(counts: &FailureCounts) -> String {
        let total: u64 = counts.values().sum();
        let mut by_count: Vec<_> = counts.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let named: Vec<String> = by_count
            .iter()
            .take(SUMMARY_SOURCES_MAX)
            .map(|((plane, reason, src), n)| format!("{plane} {reason} from {src} x{n}"))
            .collect();
        let rest = by_count.len().saturating_sub(SUMMARY_SOURCES_MAX);
        let more = if rest > 0 {
            format!("; and {rest} more")
        } else {
            String::new()
        };
        format!("{total} failed: {}{more}", named.join(", "))
    }
}

/// Failed authentications by (plane, reason, source).
pub type FailureCounts = BTreeMap<(&'static str, &'static str, String), u64>;

/// An event a node hands to the leader.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    action: String,
    detail: String,
    by: Option<String>,
}

/// Why an event was not written to the trail.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("the event could not be written to the audit trail; nothing was done; retry")]
    AuditUnavailable,
    #[error("not an event a node may record")]
    NotAllowed,
    #[error("{0}")]
    Internal(String),
}

service_error!(RecordError {
    RecordError::AuditUnavailable => ("audit_unavailable", Unavailable),
    RecordError::NotAllowed => ("event_not_allowed", Invalid),
    RecordError::Internal(_) => ("internal", Internal),
} delegate { Replication });

/// Why a page of the trail was not read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditPageError {
    #[error("limit must be between 1 and 1000")]
    LimitOutOfRange,
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(AuditPageError {
    AuditPageError::LimitOutOfRange => ("invalid_query", Invalid),
} delegate { Replication });

/// Why the head could not be signed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SignHeadError {
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error(transparent)]
    Key(#[from] KeyUnavailable),
}

service_error!(SignHeadError {} delegate { Replication, Key });

/// A page of the trail.
#[derive(Debug)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    pub next_from_seq: Option<u64>,
    pub total: u64,
    pub head_hash: String,
}

/// The head signed now.
#[derive(Debug)]
pub struct SignedHeadNow {
    pub signed_head: SignedHead,
    pub signed_at_ms: u64,
}

/// Checks a signed head's MAC with the KEKs this node holds.
pub fn check_mac(kek: &dyn crate::crypto::KekProvider, s: &SignedHead) -> MacCheck {
    let want = match kek.mac(
        &s.kek_id,
        SignedHead::message(s.records, &s.head).as_bytes(),
    ) {
        Ok(m) => m,
        Err(crate::crypto::KeyError::UnknownKek(_)) => return MacCheck::UnknownKek,
        Err(_) => return MacCheck::Invalid,
    };
    let Ok(given) = hex::decode(&s.mac) else {
        return MacCheck::Invalid;
    };
    if crate::crypto::constant_time_eq(&given, &want) {
        MacCheck::Valid
    } else {
        MacCheck::Invalid
    }
}

impl Service {
    /// Writes an event into the audit trail: through the log on the leader, else handed
    /// to the leader over the peer plane.
    pub async fn record(
        &self,
        action: &str,
        detail: String,
        by: Option<String>,
    ) -> Result<(), RecordError> {
        if self.cluster.is_leader() {
            let cmd = Command::RecordAdminAction {
                action: action.to_owned(),
                detail,
                at_ms: self.now_ms().await,
                by,
            };
            return match self.write(cmd).await? {
                Response::Recorded => Ok(()),
                other => Err(RecordError::Internal(unexpected(&other))),
            };
        }
        let Some((leader, _)) = self.cluster.leader() else {
            return Err(Replication::NoLeader.into());
        };
        let event = Event {
            action: action.to_owned(),
            detail,
            by,
        };
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        if self
            .cluster
            .post_to_peer(leader, EVENT_PATH, &event, timeout)
            .await
        {
            Ok(())
        } else {
            Err(RecordError::AuditUnavailable)
        }
    }

    /// The leader writes an event a member handed it.
    pub async fn record_peer_event(&self, ev: Event) -> Result<(), RecordError> {
        if !EVENT_ACTIONS.contains(&ev.action.as_str()) || ev.detail.len() > EVENT_DETAIL_CHARS_MAX
        {
            return Err(RecordError::NotAllowed);
        }
        if !self.cluster.is_leader() {
            return Err(Replication::NotLeader("not the leader").into());
        }
        self.record(&ev.action, ev.detail, ev.by).await
    }

    /// Records an operator's access before it happens; refuses the access if it cannot
    /// be recorded.
    pub(crate) async fn audited_access(
        &self,
        op: &Operator,
        action: &str,
        detail: String,
    ) -> Result<(), RecordError> {
        self.record(action, detail, Some(op.actor())).await
    }

    /// Records in order from `from_seq`, at most `limit` (1-1000, default 100), with the
    /// chain's head.
    pub async fn audit_page(
        &self,
        from_seq: u64,
        limit: Option<usize>,
    ) -> Result<AuditPage, AuditPageError> {
        let limit = limit.unwrap_or(100);
        if !(1..=AUDIT_PAGE_RECORDS_MAX).contains(&limit) {
            return Err(AuditPageError::LimitOutOfRange);
        }
        self.linearize().await?;
        Ok(self.read(|v| {
            let a = v.audit();
            let records = a.page(from_seq, limit);
            let next = records.last().map(|r| r.seq + 1);
            AuditPage {
                next_from_seq: next.filter(|n| *n < a.len()),
                total: a.len(),
                head_hash: a.head(),
                records,
            }
        })?)
    }

    /// Signs `records`/`head` under the current KEK.
    fn sign(&self, records: u64, head: String) -> Result<SignedHead, crate::crypto::KeyError> {
        let kek = self.keys.kek();
        let kek_id = kek.id();
        let mac = kek.mac(&kek_id, SignedHead::message(records, &head).as_bytes())?;
        Ok(SignedHead {
            records,
            head,
            kek_id,
            mac: hex::encode(mac),
        })
    }

    /// The chain's head signed now, for operators to keep outside the cluster and check
    /// later.
    pub async fn signed_head(&self) -> Result<SignedHeadNow, SignHeadError> {
        self.linearize().await?;
        let (records, head) = self.read(|v| (v.audit().len(), v.audit().head()))?;
        let signed = self
            .sign(records, head)
            .map_err(|e| KeyUnavailable::of("audit signing key", e))?;
        Ok(SignedHeadNow {
            signed_head: signed,
            signed_at_ms: self.now_ms().await,
        })
    }

    /// Recomputes the whole chain, checks every signature in it, and, when given, that
    /// an exported signed head is still in it. Not ok if the chain breaks, a signature
    /// is forged, the exported head is not in the chain, or records have gone unsigned
    /// for more than three signing intervals.
    pub async fn verify_audit(
        &self,
        exported: Option<SignedHead>,
    ) -> Result<AuditCheck, ReadError> {
        self.linearize().await?;
        let now_ms = self.now_ms().await;
        let stale_after_ms = 3 * self.settings.audit_sign_interval_s * 1000;
        let kek = self.keys.kek();
        Ok(self.read(|v| {
            let a = v.audit();
            if let Err(b) = a.verify() {
                return AuditCheck::broken(b.seq, b.reason);
            }
            let sigs = a.check_signatures(|s| check_mac(kek, s));
            let stale = sigs
                .unsigned_since_ms
                .is_some_and(|t| now_ms.saturating_sub(t) > stale_after_ms);
            let exported = exported.as_ref().map(|s| {
                let mac = check_mac(kek, s);
                let in_chain = s.records > 0 && a.hash_at(s.records - 1).as_deref() == Some(s.head.as_str());
                ExportedCheck {
                    records: s.records,
                    mac,
                    in_chain,
                    ok: in_chain && mac == MacCheck::Valid,
                }
            });
            let mut reasons = Vec::new();
            if !sigs.invalid.is_empty() {
                reasons.push(format!(
                    "signature records {:?} do not verify: the trail was rewritten",
                    sigs.invalid
                ));
            }
            if stale {
                reasons.push(format!(
                    "{} records have gone unsigned for more than {} s",
                    sigs.unsigned_tail_records,
                    stale_after_ms / 1000
                ));
            }
            if exported.as_ref().is_some_and(|e| !e.ok) {
                reasons.push("the exported signed head is not in this chain, or its signature does not verify".into());
            }
            AuditCheck {
                ok: reasons.is_empty(),
                broken: None,
                reasons,
                records: a.len(),
                head_hash: a.head(),
                signatures: Some(sigs),
                exported,
            }
        })?)
    }
}

/// What verifying the audit trail found.
#[derive(Debug, Clone)]
pub struct AuditCheck {
    pub ok: bool,
    /// The first record that does not verify, and why (nothing else is checked then).
    pub broken: Option<(u64, String)>,
    /// Why it is not ok, when the chain holds.
    pub reasons: Vec<String>,
    pub records: u64,
    pub head_hash: String,
    pub signatures: Option<SignatureReport>,
    pub exported: Option<ExportedCheck>,
}

impl AuditCheck {
    fn broken(seq: u64, reason: String) -> AuditCheck {
        AuditCheck {
            ok: false,
            broken: Some((seq, reason)),
            reasons: Vec::new(),
            records: 0,
            head_hash: String::new(),
            signatures: None,
            exported: None,
        }
    }
}

/// How an exported signed head checked.
#[derive(Debug, Clone)]
pub struct ExportedCheck {
    pub records: u64,
    pub mac: MacCheck,
    pub in_chain: bool,
    pub ok: bool,
}

/// Runs for the node's lifetime: on the leader, signs the audit trail's head through
/// the log every `api.audit_sign_interval_s` when records were added since the last
/// signature.
pub async fn sign_loop(svc: Arc<Service>) {
    let every = Duration::from_secs(svc.settings.audit_sign_interval_s);
    loop {
        crate::runtime::sleep(every).await;
        if !svc.cluster.is_leader() {
            continue;
        }
        let Ok((records, head, signed)) = svc.read(|v| {
            let a = v.audit();
            (a.len(), a.head(), a.head_is_signed())
        }) else {
            continue;
        };
        if records == 0 || signed {
            continue;
        }
        let signed = match svc.sign(records, head) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign the audit trail's head; retrying at the next interval");
                continue;
            }
        };
        let cmd = Command::SignAuditHead {
            signed,
            at_ms: svc.now_ms().await,
        };
        match svc.write(cmd).await {
            Ok(Response::Recorded) => {}
            // The trail grew meanwhile: the next interval signs the newer head.
            Ok(Response::Refused(_)) => {}
            Ok(other) => tracing::warn!(
                response = response_kind(&other),
                "unexpected answer to an audit signature"
            ),
            Err(e) => tracing::debug!(
                code = super::ServiceError::code(&e),
                "audit signature not written; retrying at the next interval"
            ),
        }
    }
}

/// Runs for the node's lifetime: writes a summary of the failed authentications this
/// node saw into the audit trail every 10 s, or every audit signing interval if that
/// is shorter (when there were any).
pub async fn flush_loop(svc: Arc<Service>) {
    let every = Duration::from_millis(FAILURES_FLUSH_MS)
        .min(Duration::from_secs(svc.settings.audit_sign_interval_s));
    loop {
        crate::runtime::sleep(every).await;
        let Some(taken) = svc.auth_failures.take() else {
            continue;
        };
        let summary = AuthFailures::summary(&taken);
        tracing::warn!(summary = %summary, "failed authentications");
        let by = Some(format!("node:{}", svc.cluster.me().name));
        if let Err(e) = svc.record("auth.failed", summary, by).await {
            tracing::warn!(
                code = super::ServiceError::code(&e),
                "failed authentications not written to the audit trail yet; kept for the next flush"
            );
            svc.auth_failures.restore(taken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_not_written_are_given_back_and_summarised_with_the_next() {
        let f = AuthFailures::default();
        f.note("api", "unknown_key", "127.0.0.2");
        let taken = f.take().unwrap();
        assert_eq!(f.take(), None);
        f.note("api", "unknown_key", "127.0.0.2");
        f.note("admin", "no_credentials", "127.0.0.3");
        f.restore(taken);
        assert_eq!(
            f.take_summary().unwrap(),
            "3 failed: api unknown_key from 127.0.0.2 x2, admin no_credentials from 127.0.0.3 x1"
        );
    }

    #[test]
    fn failures_are_summarised_by_count_and_bounded() {
        let f = AuthFailures::default();
        assert_eq!(f.take_summary(), None);
        for _ in 0..3 {
            f.note("api", "unknown_key", "127.0.0.2");
        }
        f.note("admin", "no_credentials", "127.0.0.3");
        let s = f.take_summary().unwrap();
        assert_eq!(
            s,
            "4 failed: api unknown_key from 127.0.0.2 x3, admin no_credentials from 127.0.0.3 x1"
        );
        assert_eq!(f.take_summary(), None, "taken once");
        for i in 0..(FAILURE_KEYS_MAX + 50) {
            f.note(
                "api",
                "unknown_key",
                &format!("10.0.{}.{}", i / 256, i % 256),
            );
        }
        assert!(f.counts.lock().unwrap().len() <= FAILURE_KEYS_MAX + 1);
        let s = f.take_summary().unwrap();
        assert!(
            s.starts_with(&format!("{} failed", FAILURE_KEYS_MAX + 50)),
            "{s}"
        );
        assert!(s.contains("from * x50"), "{s}");
        assert!(
            s.ends_with(&format!(
                "and {} more",
                FAILURE_KEYS_MAX + 1 - SUMMARY_SOURCES_MAX
            )),
            "{s}"
        );
    }
}
