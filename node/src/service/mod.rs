//! The service layer: every use case of kura — tokenize, use a one-time token, cards on
//! file, payments (and the resolver), keys, merchants, the audit trail, the cluster's
//! admin operations — taking typed requests and returning typed results, with one error
//! enum per operation ([`error`]). It authenticates and authorises callers
//! ([`auth`]), seals and opens cards ([`sealing`]), and changes the vault only by
//! proposing commands through the [`Cluster`]. It never sees HTTP: no bytes, headers or
//! status codes (`api/` maps to and from them).

pub mod audit;
pub mod auth;
pub mod backup;
pub mod cards;
pub mod compare;
pub mod error;
pub mod keys;
pub mod members;
pub mod merchants;
pub mod nodes;
pub mod payments;
pub mod peers;
pub mod scrub;
mod sealing;
pub mod tokens;

pub use crate::cluster::{ClusterStatus, InitOutcome};
pub use error::{Kind, ReadError, Replication, ServiceError};

use crate::acquirer::router::Router;
use crate::cluster::{Cluster, WriteError};
use crate::crypto::{Entropy, KeyRing};
use crate::cvc::CvcStore;
use crate::failover::Failover;
use crate::faults::FaultSwitches;
use crate::metrics::Metrics;
use crate::runtime::Clock;
use crate::setting::InvalidSetting;
use crate::vault::{Command, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// API limits and defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Largest request body accepted.
    pub request_body_bytes_max: usize,
    /// Lifetime of a one-time token.
    pub one_time_token_ttl_s: u64,
    /// How long a write may wait for commit before the answer is `504 outcome_unknown`.
    pub write_timeout_ms: u64,
    /// Most CVCs held in memory at once (each lives at most a one-time token's TTL).
    pub cvc_entries_max: usize,
    /// How long the leader waits for other nodes to take a copy of a CVC.
    pub cvc_replication_timeout_ms: u64,
    /// Cards moved to the current data key per re-wrap log entry.
    pub rewrap_batch_cards: usize,
    /// How often the leader signs the audit trail's head (when it has grown).
    pub audit_sign_interval_s: u64,
    /// How often the leader compares the members' vaults (`kura compare`); 0: only
    /// when an operator asks. Each comparison reads every member's whole vault.
    pub compare_interval_s: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            request_body_bytes_max: 64 * 1024,
            one_time_token_ttl_s: 1800,
            write_timeout_ms: 10_000,
            cvc_entries_max: 100_000,
            cvc_replication_timeout_ms: 250,
            rewrap_batch_cards: 256,
            audit_sign_interval_s: 60,
            compare_interval_s: 3_600,
        }
    }
}

impl ApiSettings {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.request_body_bytes_max < 1024 {
            return Err(InvalidSetting::new(
                "api.request_body_bytes_max",
                "must be at least 1024",
            ));
        }
        if self.one_time_token_ttl_s == 0 || self.one_time_token_ttl_s > 86_400 {
            return Err(InvalidSetting::new(
                "api.one_time_token_ttl_s",
                "must be between 1 and 86400",
            ));
        }
        if self.write_timeout_ms < 100 {
            return Err(InvalidSetting::new(
                "api.write_timeout_ms",
                "must be at least 100",
            ));
        }
        if !(1..=10_000_000).contains(&self.cvc_entries_max) {
            return Err(InvalidSetting::new(
                "api.cvc_entries_max",
                "must be between 1 and 10000000",
            ));
        }
        if !(10..=5_000).contains(&self.cvc_replication_timeout_ms) {
            return Err(InvalidSetting::new(
                "api.cvc_replication_timeout_ms",
                "must be between 10 and 5000",
            ));
        }
        if !(1..=4_096).contains(&self.rewrap_batch_cards) {
            return Err(InvalidSetting::new(
                "api.rewrap_batch_cards",
                "must be between 1 and 4096",
            ));
        }
        if !(1..=3_600).contains(&self.audit_sign_interval_s) {
            return Err(InvalidSetting::new(
                "api.audit_sign_interval_s",
                "must be between 1 and 3600",
            ));
        }
        if self.compare_interval_s > 604_800 {
            return Err(InvalidSetting::new(
                "api.compare_interval_s",
                "must be 0 (never) or at most 604800",
            ));
        }
        Ok(())
    }
}

/// What the service layer works with.
pub struct Service {
    cluster: Arc<Cluster>,
    keys: Arc<KeyRing>,
    entropy: Arc<Entropy>,
    clock: Clock,
    metrics: Arc<Metrics>,
    settings: ApiSettings,
    /// SHA-256 of the break-glass admin token, when one is configured.
    admin_token_sha256: Option<String>,
    /// CVCs of one-time tokens, in memory only.
    cvc: Arc<CvcStore>,
    /// Health checks, the view of the other nodes, and the leadership controller.
    failover: Arc<Failover>,
    /// Fault switches, when fault injection is enabled on this node.
    faults: Option<Arc<FaultSwitches>>,
    /// The acquirer routes.
    router: Arc<Router>,
    /// Payments this node is authorising right now (a retry of one answers 409).
    payments_in_flight: Mutex<HashSet<String>>,
    /// Failed authentications not yet summarised into the audit trail.
    auth_failures: audit::AuthFailures,
    /// This node's last vault scrub.
    scrubs: scrub::Scrubs,
    /// This node's hashes for comparisons, and the last comparison it ran.
    compares: compare::Compares,
}

/// The parts a [`Service`] is built from.
pub struct Parts {
    pub cluster: Arc<Cluster>,
    pub keys: Arc<KeyRing>,
    pub entropy: Arc<Entropy>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub settings: ApiSettings,
    pub admin_token_sha256: Option<String>,
    pub cvc: Arc<CvcStore>,
    pub failover: Arc<Failover>,
    pub faults: Option<Arc<FaultSwitches>>,
    pub router: Arc<Router>,
}

/// Leader-stamped time for a new command: `clock` (the time the other nodes' clocks
/// agree with, `PeerClocks::stamp_ms`), never before the replicated clock. A node
/// that has not yet measured the other nodes' clocks (just started, or just formed
/// the cluster) first waits a few check rounds for it to do so: its own clock could
/// have stepped, and the time in the log never goes back (decision 0030).
pub(crate) async fn leader_stamp(
    clocks: &crate::failover::PeerClocks,
    clock: &Clock,
    cluster: &Cluster,
) -> u64 {
    clocks.wait_judged().await;
    let wall = clock();
    // Unreadable, the wall clock stands in: apply never moves the clock back, and the
    // write this stamps fails on the same storage anyway.
    cluster.vault().read(|v| v.stamp(wall)).unwrap_or(wall)
}

impl Service {
    pub fn new(p: Parts) -> Service {
        Service {
            keys: p.keys,
            entropy: p.entropy,
            clock: p.clock,
            metrics: p.metrics,
            settings: p.settings,
            admin_token_sha256: p.admin_token_sha256,
            cvc: p.cvc,
            failover: p.failover,
            faults: p.faults,
            router: p.router,
            payments_in_flight: Mutex::default(),
            auth_failures: audit::AuthFailures::default(),
            scrubs: scrub::Scrubs::new(&p.cluster.me().name),
            compares: compare::Compares::new(),
            cluster: p.cluster,
        }
    }

    /// The settings of the API and its use cases.
    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Leader-stamped time for a new command ([`leader_stamp`]).
    pub(crate) async fn now_ms(&self) -> u64 {
        leader_stamp(&self.failover.clocks, &self.clock, &self.cluster).await
    }

    /// Reads the local vault in one read transaction; a storage failure is
    /// [`Replication::Storage`].
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&crate::store::VaultView) -> T,
    ) -> Result<T, Replication> {
        self.cluster.vault().read(f).map_err(Replication::storage)
    }

    /// Proposes `cmd`, bounded by the write timeout. Gives up early, outcome unknown, if
    /// this node's Raft core gets stuck meanwhile.
    pub(crate) async fn write(&self, cmd: Command) -> Result<Response, Replication> {
        // Every node's disk short (or this one's filled faster than it could hand
        // over): keep what is left for what is already open. Proposals start on the
        // leader only (followers forward), so this is the leader's own disk.
        if cmd.starts_new() && self.failover.health.keeps_reserve() {
            self.metrics.proposal_failed("insufficient_storage");
            return Err(Replication::InsufficientStorage);
        }
        // A member whose build cannot apply the command would stop at its entry
        // (decision 0036): it waits until every member runs a build that can.
        let agreed = self.failover.health.cluster_level();
        if cmd.level() > agreed {
            self.metrics.proposal_failed("cluster_upgrading");
            return Err(Replication::Upgrading {
                needed: cmd.level(),
                agreed,
            });
        }
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        let write = tokio::time::timeout(timeout, self.cluster.write(cmd));
        self.metrics.proposals.inc();
        let _pending = Pending::new(&self.metrics.proposals_pending);
        let Some(outcome) = self.cluster.unless_core_freezes(write).await else {
            self.metrics.proposal_failed("core_frozen");
            return Err(Replication::OutcomeUnknown(
                "this node's Raft core got stuck on its storage while the write was in flight; it may or may not have been applied".into(),
            ));
        };
        match outcome {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.metrics.proposal_failed(match &e {
                    WriteError::NotLeader { .. } => "not_leader",
                    WriteError::Unknown => "discarded",
                    WriteError::Unavailable(_) => "unavailable",
                });
                Err(Replication::of_write(e))
            }
            Err(_) => {
                self.metrics.proposal_failed("timeout");
                Err(Replication::OutcomeUnknown(format!(
                    "the write was not committed within {} ms; it may still be applied",
                    self.settings.write_timeout_ms
                )))
            }
        }
    }

    /// Makes the next local read reflect every write committed before this call.
    pub(crate) async fn linearize(&self) -> Result<(), Replication> {
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        let linearize = tokio::time::timeout(timeout, self.cluster.linearize());
        let Some(outcome) = self.cluster.unless_core_freezes(linearize).await else {
            return Err(Replication::NotLeader(
                "this node's Raft core is stuck on its storage; nothing was done; retry",
            ));
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(WriteError::NotLeader { .. })) => {
                Err(Replication::NotLeader("leadership moved; retry"))
            }
            Ok(Err(e)) => Err(Replication::Unavailable(e.to_string())),
            Err(_) => Err(Replication::Unavailable(
                "could not confirm leadership in time".into(),
            )),
        }
    }
}

/// A vault response an operation did not expect: a bug, reported as internal.
pub(crate) fn unexpected(r: &Response) -> String {
    format!("unexpected vault response {}", response_kind(r))
}

/// A vault response's name, for logs.
pub(crate) fn response_kind(r: &Response) -> &'static str {
    match r {
        Response::None => "none",
        Response::DataKeyInstalled { .. } => "data_key_installed",
        Response::Merchant(_) => "merchant",
        Response::Tokenized(_) => "tokenized",
        Response::AlreadyOnFile(_) => "already_on_file",
        Response::FingerprintKeyInstalled => "fingerprint_key_installed",
        Response::CardDeleted => "card_deleted",
        Response::Resealed { .. } => "resealed",
        Response::DataKeyRetired { .. } => "data_key_retired",
        Response::KeysRewrapped { .. } => "keys_rewrapped",
        Response::Purged { .. } => "purged",
        Response::Recorded => "recorded",
        Response::Payment(_) => "payment",
        Response::Refused(r) => r.code(),
    }
}

/// Counts one operation in a gauge while it lasts (also when its future is dropped).
struct Pending<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Pending<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Pending<'a> {
        gauge.inc();
        Pending(gauge)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
