//! Prometheus metrics, registered with help text on kura's own registry.
//!
//! Naming: `kura_<subsystem>_<name>_<unit>`, `_total` on counters. Labels are bounded:
//! `endpoint` is the route template, never a raw path.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// Labels of API request counters and latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub method: String,
    pub status_class: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric a node exports.
pub struct Metrics {
    registry: Registry,
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_has_leader: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_committed_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_leader_changes: Family<CauseLabels, Counter>,
    pub store_log_fsync: Histogram,
    pub vault_tokens: Gauge,
    pub api_requests: Family<RequestLabels, Counter>,
    pub api_request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub cvc_held: Gauge,
    pub cvc_replications: Family<OutcomeLabels, Counter>,
    pub rewrap_cards: Counter,
    pub audit_records: Gauge,
    pub health_storage_canary: Histogram,
    pub health_check_passing: Family<CheckLabels, Gauge>,
    pub route_up: Family<RouteLabels, Gauge>,
    pub route_requests: Family<RouteLabels, Gauge>,
    pub route_errors: Family<RouteLabels, Gauge>,
    pub route_latency_ms: Family<RouteLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub tls_cert_expiry: Family<PlaneLabels, Gauge>,
    pub admin_auth_failures: Family<ReasonLabels, Counter>,
    pub admin_break_glass: Counter,
    pub api_auth_failures: Family<ReasonLabels, Counter>,
    pub api_rate_limited: Family<LimitLabels, Counter>,
    pub listener_connections: Family<PlaneLabels, Gauge>,
    pub listener_refused: Family<RefusedLabels, Counter>,
    pub listener_timeouts: Family<PlaneLabels, Counter>,
    pub cvc_refused: Family<ReasonLabels, Counter>,
    pub purged_cards: Counter,
    pub vault_scrubs: Family<OutcomeLabels, Counter>,
    pub vault_scrub_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// Labels of requests refused by a rate limit: which limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: String,
}

/// Labels of connections refused on accept.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub plane: String,
    pub reason: String,
}

/// HTTP methods that may become a label value; any other is counted as `other`, so a
/// client cannot grow the label set by inventing methods.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// Labels of failure counters: a fixed set of reasons.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Labels of per-plane TLS metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaneLabels {
    pub plane: String,
}

/// Labels of acquirer route metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Labels of leader change counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: String,
}

/// Labels of health check gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

/// Labels of outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every kura metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kura");
        let m = Metrics {
            registry: Registry::default(),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_has_leader: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_committed_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_leader_changes: Family::default(),
            store_log_fsync: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            vault_tokens: Gauge::default(),
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(latency_histogram),
            cvc_held: Gauge::default(),
            cvc_replications: Family::default(),
            rewrap_cards: Counter::default(),
            audit_records: Gauge::default(),
            health_storage_canary: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            health_check_passing: Family::default(),
            route_up: Family::default(),
            route_requests: Family::default(),
            route_errors: Family::default(),
            route_latency_ms: Family::default(),
            tls_cert_expiry: Family::default(),
            admin_auth_failures: Family::default(),
            admin_break_glass: Counter::default(),
            api_auth_failures: Family::default(),
            api_rate_limited: Family::default(),
            listener_connections: Family::default(),
            listener_refused: Family::default(),
            listener_timeouts: Family::default(),
            cvc_refused: Family::default(),
            purged_cards: Counter::default(),
            vault_scrubs: Family::default(),
            vault_scrub_duration: Gauge::default(),
        };
        registry.register(
            "raft_term",
            "Current Raft term seen by this node",
            m.raft_term.clone(),
        );
        registry.register(
            "raft_is_leader",
            "1 if this node is the Raft leader, else 0",
            m.raft_is_leader.clone(),
        );
        registry.register(
            "raft_has_leader",
            "1 if this node knows a leader, else 0",
            m.raft_has_leader.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Index of the last entry in this node's log",
            m.raft_last_log_index.clone(),
        );
        registry.register(
            "raft_committed_index",
            "Index of the last entry known committed",
            m.raft_committed_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Index of the last entry applied to the vault",
            m.raft_applied_index.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Leader changes this node has observed, by cause (crash_or_partition, unhealthy_storage, unhealthy_keys, unhealthy_routes, failback, operator, never_lead, follower_lost_log)",
            m.raft_leader_changes.clone(),
        );
        registry.register_with_unit(
            "store_log_fsync_duration",
            "Duration of durable storage commits (log appends, votes, snapshots): one fsync each",
            Unit::Seconds,
            m.store_log_fsync.clone(),
        );
        registry.register(
            "vault_tokens",
            "Tokens held in the vault",
            m.vault_tokens.clone(),
        );
        registry.register(
            "api_requests",
            "API requests by route, method and status class",
            m.api_requests.clone(),
        );
        registry.register_with_unit(
            "api_request_duration",
            "API request latency by route, method and status class, including forwarding to the leader",
            Unit::Seconds,
            m.api_request_duration.clone(),
        );
        registry.register(
            "cvc_held",
            "CVCs held in this node's memory (never on disk)",
            m.cvc_held.clone(),
        );
        registry.register(
            "cvc_replications",
            "CVC copies the leader sent to other nodes' memory, by outcome (copied: at least one node took it; not_copied: none did)",
            m.cvc_replications.clone(),
        );
        registry.register(
            "keys_rewrap_cards",
            "Cards moved to the current data key by the background re-wrap",
            m.rewrap_cards.clone(),
        );
        registry.register(
            "audit_records",
            "Records in the replicated audit trail",
            m.audit_records.clone(),
        );
        registry.register_with_unit(
            "health_storage_canary_duration",
            "Latency of the storage canary: a small durable write through the log's write path",
            Unit::Seconds,
            m.health_storage_canary.clone(),
        );
        registry.register(
            "health_check_passing",
            "1 if the named health check passed its last run, else 0",
            m.health_check_passing.clone(),
        );
        registry.register_with_unit(
            "tls_cert_expiry_timestamp",
            "When the certificate this node serves on the plane expires (Unix time)",
            Unit::Seconds,
            m.tls_cert_expiry.clone(),
        );
        registry.register(
            "admin_auth_failures",
            "Admin plane requests refused for want of a valid operator identity, by reason",
            m.admin_auth_failures.clone(),
        );
        registry.register(
            "admin_break_glass_uses",
            "Admin plane requests authenticated by the break-glass token",
            m.admin_break_glass.clone(),
        );
        registry.register(
            "api_auth_failures",
            "Client API requests refused for want of a valid API key, by reason (missing, unknown_key, secret_key_required)",
            m.api_auth_failures.clone(),
        );
        registry.register(
            "api_rate_limited",
            "Client API requests refused with 429, by limit (address, key, one_time_tokens_key, one_time_tokens_address)",
            m.api_rate_limited.clone(),
        );
        registry.register(
            "listener_connections",
            "Connections open now, by plane",
            m.listener_connections.clone(),
        );
        registry.register(
            "listener_connections_refused",
            "Connections closed on accept, by plane and reason (full, per_address)",
            m.listener_refused.clone(),
        );
        registry.register(
            "listener_timeouts",
            "Connections closed because a TLS handshake, a request head or the next request did not arrive in time, by plane",
            m.listener_timeouts.clone(),
        );
        registry.register(
            "vault_purged_cards",
            "Sealed cards of used or expired one-time tokens this node destroyed as leader",
            m.purged_cards.clone(),
        );
        registry.register(
            "vault_scrubs",
            "Full checks of this node's vault (admin scrub), by outcome (passed, failed)",
            m.vault_scrubs.clone(),
        );
        registry.register_with_unit(
            "vault_scrub_duration",
            "How long this node's last vault scrub took",
            Unit::Seconds,
            m.vault_scrub_duration.clone(),
        );
        registry.register(
            "cvc_refused",
            "CVCs not taken into the store, by reason (store_full, merchant_share)",
            m.cvc_refused.clone(),
        );
        registry.register(
            "acquirer_route_up",
            "1 if the acquirer route answered its last health check, else 0",
            m.route_up.clone(),
        );
        registry.register(
            "acquirer_route_requests",
            "Requests this node sent over the acquirer route (authorisations, queries, reversals, health checks)",
            m.route_requests.clone(),
        );
        registry.register(
            "acquirer_route_errors",
            "Requests over the acquirer route that failed or timed out",
            m.route_errors.clone(),
        );
        registry.register(
            "acquirer_route_last_latency_milliseconds",
            "Latency of the last successful request over the acquirer route",
            m.route_latency_ms.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }

    /// Counts `n` more leadership changes with `cause`.
    pub fn leader_changed(&self, cause: crate::vault::LeaderChangeCause, n: u64) {
        self.raft_leader_changes
            .get_or_create(&CauseLabels {
                cause: cause.as_str().to_owned(),
            })
            .inc_by(n);
    }

    /// Counts an admin request refused for `reason` (a fixed set of values).
    pub fn admin_auth_failed(&self, reason: &'static str) {
        self.admin_auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counters for a listener on `plane`, exported as this node's metrics.
    pub fn listener(&self, plane: &'static str) -> std::sync::Arc<crate::net::ListenerStats> {
        let p = PlaneLabels {
            plane: plane.into(),
        };
        let refused = |reason: &str| {
            self.listener_refused
                .get_or_create(&RefusedLabels {
                    plane: plane.into(),
                    reason: reason.into(),
                })
                .clone()
        };
        std::sync::Arc::new(crate::net::ListenerStats::new(
            self.listener_connections.get_or_create(&p).clone(),
            refused("full"),
            refused("per_address"),
            self.listener_timeouts.get_or_create(&p).clone(),
        ))
    }

    /// Counts a client API request refused for `reason` (a fixed set of values).
    pub fn api_auth_failed(&self, reason: &'static str) {
        self.api_auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a request refused by the rate limit `limit` (a fixed set of values).
    pub fn rate_limited(&self, limit: &'static str) {
        self.api_rate_limited
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .inc();
    }

    /// Counts a CVC the store did not take, for `reason` (a fixed set of values).
    pub fn cvc_not_taken(&self, reason: &'static str) {
        self.cvc_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a use of the break-glass token.
    pub fn admin_break_glass_used(&self) {
        self.admin_break_glass.inc();
    }

    /// Mirrors one acquirer route's state.
    pub fn set_route(&self, r: &crate::acquirer::router::RouteStatus) {
        let l = RouteLabels {
            route: r.name.clone(),
        };
        self.route_up.get_or_create(&l).set(r.up as i64);
        self.route_requests.get_or_create(&l).set(r.requests as i64);
        self.route_errors.get_or_create(&l).set(r.errors as i64);
        if let Some(ms) = r.last_latency_ms {
            self.route_latency_ms.get_or_create(&l).set(ms);
        }
    }

    /// Records when the certificate served on `plane` expires.
    pub fn set_tls_cert_expiry(&self, plane: &str, not_after_unix_s: i64) {
        self.tls_cert_expiry
            .get_or_create(&PlaneLabels {
                plane: plane.to_owned(),
            })
            .set(not_after_unix_s);
    }

    /// Records a health check's last result.
    pub fn set_check(&self, check: &str, passing: bool) {
        self.health_check_passing
            .get_or_create(&CheckLabels {
                check: check.to_owned(),
            })
            .set(passing as i64);
    }

    /// Records how many other nodes took a copy of one CVC.
    pub fn cvc_copies(&self, copies: usize) {
        let outcome = if copies > 0 { "copied" } else { "not_copied" };
        self.cvc_replications
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Records one API request.
    /// A finished vault scrub.
    pub fn observe_scrub(&self, outcome: &str, seconds: f64) {
        self.vault_scrubs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.vault_scrub_duration.set(seconds);
    }

    pub fn observe_request(&self, endpoint: &str, method: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            endpoint: endpoint.to_owned(),
            method: method_label(method).to_owned(),
            status_class: format!("{}xx", status / 100),
        };
        self.api_requests.get_or_create(&labels).inc();
        self.api_request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefixed_names_units_and_help() {
        let m = Metrics::new();
        m.raft_term.set(3);
        m.store_log_fsync.observe(0.002);
        m.leader_changed(crate::vault::LeaderChangeCause::Failback, 1);
        m.observe_request("/v1/tokens", "POST", 201, Duration::from_millis(3));
        for invented in ["BREW", "X-ATTACK-1", "X-ATTACK-2"] {
            m.observe_request("unmatched", invented, 404, Duration::from_millis(1));
        }
        let text = m.encode();
        for needle in [
            "# HELP kura_raft_term Current Raft term",
            "kura_raft_term 3",
            "kura_raft_leader_changes_total{cause=\"failback\"} 1",
            "# UNIT kura_store_log_fsync_duration_seconds seconds",
            "kura_store_log_fsync_duration_seconds_count 1",
            "kura_api_requests_total{endpoint=\"/v1/tokens\",method=\"POST\",status_class=\"2xx\"} 1",
            "kura_api_request_duration_seconds_count{endpoint=\"/v1/tokens\",method=\"POST\",status_class=\"2xx\"} 1",
            "kura_api_requests_total{endpoint=\"unmatched\",method=\"other\",status_class=\"4xx\"} 3",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        for invented in ["BREW", "X-ATTACK"] {
            assert!(!text.contains(invented), "{invented} became a label value");
        }
    }
}
