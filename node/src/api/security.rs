//! Security events in the audit trail: failed authentications (counted per plane,
//! reason and source address, and written as one summary record per interval, so a
//! flood of bad keys cannot flood the log), admin reads, key verification and fault
//! switches. Any node may have such an event; a follower hands it to the leader over
//! the peer plane, which writes it through the log.

use super::{AppState, Problem};
use crate::vault::{Command, Response};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a follower hands an event to the leader.
pub const EVENT_PATH: &str = "/peer/v1/audit-event";

/// How often failed authentications are summarised into the trail.
const FAILURES_FLUSH_MS: u64 = 10_000;
/// Distinct (plane, reason, address) kept between flushes; beyond it, counted as `*`.
const FAILURE_KEYS_MAX: usize = 1_000;
/// Distinct sources named in one summary record.
const SUMMARY_SOURCES_MAX: usize = 20;

/// Actions a node may hand to the leader (anything else is refused).
const EVENT_ACTIONS: [&str; 2] = ["auth.failed", "faults.set"];

/// Failed authentications since the last flush.
#[derive(Default)]
pub struct AuthFailures {
    counts: Mutex<BTreeMap<(&'static str, &'static str, String), u64>>,
}

impl AuthFailures {
    /// Counts one failure on `plane` for `reason` from `source` (an IP address).
    pub fn note(&self, plane: &'static str, reason: &'static str, source: &str) {
        let mut c = self.counts.lock().expect("auth failures lock");
        let key = (plane, reason, source.to_owned());
        if c.len() >= FAILURE_KEYS_MAX && !c.contains_key(&key) {
            *c.entry((plane, reason, "*".into())).or_default() += 1;
        } else {
            *c.entry(key).or_default() += 1;
        }
    }

    /// The summary of the failures since the last call, if any, and forgets them.
    pub fn take_summary(&self) -> Option<String> {
        let counts = std::mem::take(&mut *self.counts.lock().expect("auth failures lock"));
        if counts.is_empty() {
            return None;
        }
        let total: u64 = counts.values().sum();
        let mut by_count: Vec<_> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
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
        Some(format!("{total} failed: {}{more}", named.join(", ")))
    }
}

/// An event a node hands to the leader.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    action: String,
    detail: String,
    by: Option<String>,
}

/// Writes an event into the audit trail: through the log on the leader, else handed to
/// the leader over the peer plane.
pub async fn record(
    st: &AppState,
    action: &str,
    detail: String,
    by: Option<String>,
) -> Result<(), Problem> {
    if st.cluster.is_leader() {
        let cmd = Command::RecordAdminAction {
            action: action.to_owned(),
            detail,
            at_ms: st.now_ms(),
            by,
        };
        return match st.write(cmd).await? {
            Response::Recorded => Ok(()),
            other => Err(super::tokens::unexpected(&other)),
        };
    }
    let Some((leader, _)) = st.cluster.leader() else {
        return Err(Problem::no_leader());
    };
    let body = serde_json::to_vec(&Event {
        action: action.to_owned(),
        detail,
        by,
    })
    .expect("an event serializes");
    let timeout = Duration::from_millis(st.settings.write_timeout_ms);
    if st
        .cluster
        .post_to_peer(leader, EVENT_PATH, Bytes::from(body), timeout)
        .await
    {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the event could not be written to the audit trail; nothing was done; retry",
        ))
    }
}

/// The peer route: the leader writes an event a member handed it.
pub async fn take_event(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    if let Err(r) = st.cluster.admit_peer(&headers).await {
        return r;
    }
    let Ok(ev) = serde_json::from_slice::<Event>(&body) else {
        return (StatusCode::BAD_REQUEST, "not an audit event").into_response();
    };
    if !EVENT_ACTIONS.contains(&ev.action.as_str()) || ev.detail.len() > 3072 {
        return (StatusCode::BAD_REQUEST, "not an event a node may record").into_response();
    }
    if !st.cluster.is_leader() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not the leader").into_response();
    }
    match record(&st, &ev.action, ev.detail, ev.by).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => p.into_response(),
    }
}

/// Runs for the node's lifetime: writes a summary of the failed authentications this
/// node saw into the audit trail every 10 s, or every audit signing interval if that
/// is shorter (when there were any).
pub async fn flush_loop(st: Arc<AppState>) {
    let every = Duration::from_millis(FAILURES_FLUSH_MS)
        .min(Duration::from_secs(st.settings.audit_sign_interval_s));
    loop {
        crate::runtime::sleep(every).await;
        let Some(summary) = st.auth_failures.take_summary() else {
            continue;
        };
        tracing::warn!(summary = %summary, "failed authentications");
        let by = Some(format!("node:{}", st.cluster.me().name));
        if let Err(p) = record(&st, "auth.failed", summary, by).await {
            tracing::warn!(
                code = p.code,
                "failed authentications not written to the audit trail"
            );
        }
    }
}

/// Records an admin's access before it happens; refuses the access if it cannot be
/// recorded.
pub async fn audited_access(
    st: &AppState,
    op: &super::operator::Operator,
    action: &str,
    detail: String,
) -> Result<(), Problem> {
    record(st, action, detail, Some(op.actor())).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
