//! The vault scrub: `validate()` in full — every index both ways, every count, every
//! payment's state, the audit chain — over one read view of this node's storage, in
//! the background, on an operator's request (`POST /admin/v1/scrub`, `kura vault
//! scrub`). Nothing checks the whole vault on its own: at tens of millions of cards a
//! full check reads all of it, so it runs when an operator asks, one at a time per
//! node, and its last result stays for `GET /admin/v1/scrub` and the metrics.

use super::auth::Operator;
use super::{Kind, Service, ServiceError};
use kura_types::{Scrub, ScrubState};
use std::sync::{Arc, Mutex};

/// This node's last scrub.
pub(crate) struct Scrubs(Mutex<Scrub>);

impl Scrubs {
    pub(crate) fn new(node: &str) -> Scrubs {
        Scrubs(Mutex::new(Scrub {
            node: node.to_owned(),
            state: ScrubState::Never,
            started_at_ms: None,
            finished_at_ms: None,
            applied_index: None,
            violation: None,
        }))
    }

    fn get(&self) -> Scrub {
        self.0.lock().expect("scrub lock").clone()
    }
}

/// Why a scrub did not start.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("a scrub is running on this node already; see GET /admin/v1/scrub")]
    Running,
}

impl ServiceError for ScrubError {
    fn code(&self) -> &'static str {
        "scrub_running"
    }
    fn kind(&self) -> Kind {
        Kind::Conflict
    }
}

impl Service {
    /// This node's last scrub (or the one running).
    pub fn scrub_status(&self) -> Scrub {
        self.scrubs.get()
    }

    /// Starts a scrub of this node's vault in the background; answers at once.
    pub fn start_scrub(self: &Arc<Self>, op: &Operator) -> Result<Scrub, ScrubError> {
        let started = {
            let mut s = self.scrubs.0.lock().expect("scrub lock");
            if s.state == ScrubState::Running {
                return Err(ScrubError::Running);
            }
            s.state = ScrubState::Running;
            s.started_at_ms = Some((self.clock)());
            s.finished_at_ms = None;
            s.applied_index = Some(self.cluster.vault().applied_index());
            s.violation = None;
            s.clone()
        };
        tracing::info!(operator = %op.name, "vault scrub started");
        let svc = self.clone();
        crate::runtime::spawn(async move {
            let t = tokio::time::Instant::now();
            let result = svc
                .cluster
                .read_vault_blocking(|v| v.validate().map_err(|e| e.detail))
                .await
                .map_err(|e| format!("the vault could not be read: {e}"))
                .and_then(|r| r);
            let seconds = t.elapsed().as_secs_f64();
            let mut s = svc.scrubs.0.lock().expect("scrub lock");
            s.finished_at_ms = Some((svc.clock)());
            let outcome = match result {
                Ok(()) => {
                    s.state = ScrubState::Passed;
                    tracing::info!(seconds, "vault scrub passed");
                    "passed"
                }
                Err(violation) => {
                    s.state = ScrubState::Failed;
                    tracing::error!(seconds, %violation, "vault scrub FAILED");
                    s.violation = Some(violation);
                    "failed"
                }
            };
            svc.metrics.observe_scrub(outcome, seconds);
        });
        Ok(started)
    }
}
