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
    pub method: &'static str,
    pub status_class: &'static str,
}

fn snapshot_histogram() -> Histogram {
    // 10 ms .. ~20 min
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
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
    pub route_requests: Family<RouteLabels, Counter>,
    pub route_errors: Family<RouteLabels, Counter>,
    pub acquirer_request_duration: Family<AcquirerLabels, Histogram, fn() -> Histogram>,
    pub build_info: Family<BuildLabels, Gauge>,
    pub process: ProcessMetrics,
    pub data_bytes: Family<PartLabels, Gauge>,
    pub filesystem_avail: Gauge,
    pub filesystem_size: Gauge,
    pub follower_matched_index: Family<FollowerLabels, Gauge>,
    pub follower_lag_entries: Family<FollowerLabels, Gauge>,
    pub snapshot_duration: Family<SnapshotLabels, Histogram, fn() -> Histogram>,
    pub snapshot_size: Family<SnapshotLabels, Gauge>,
    pub proposals: Counter,
    pub proposals_failed: Family<ReasonLabels, Counter>,
    pub proposals_pending: Gauge,
    pub payments: Family<PaymentLabels, Counter>,
    pub payments_pending: Gauge,
    pub payments_pending_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub cvc_capacity: Gauge,
    pub keys_cards_pending_rewrap: Gauge,
    pub node_ready: Gauge,
    pub node_healthy: Gauge,
    pub peer_up: Family<PeerLabels, Gauge>,
    pub clock_offset: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub tls_cert_expiry: Family<PlaneLabels, Gauge>,
    pub admin_auth_failures: Family<ReasonLabels, Counter>,
    pub admin_break_glass: Counter,
    pub api_auth_failures: Family<ReasonLabels, Counter>,
    pub api_rate_limited: Family<LimitLabels, Counter>,
    pub listener_connections: Family<PlaneLabels, Gauge>,
    pub listener_refused: Family<RefusedLabels, Counter>,
    pub listener_timeouts: Family<PlaneLabels, Counter>,
    pub listener_accept_failures: Family<PlaneLabels, Counter>,
    pub cvc_refused: Family<ReasonLabels, Counter>,
    pub purged_cards: Counter,
    pub vault_scrubs: Family<OutcomeLabels, Counter>,
    pub vault_scrub_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub vault_compares: Family<OutcomeLabels, Counter>,
    pub vault_digest_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub vault_digests_given_up: Family<ReasonLabels, Counter>,
}

/// How a comparison of the members' vaults can end (`kura_vault_compares_total`).
pub const COMPARE_OUTCOMES: [&str; 3] = ["agreed", "differed", "incomplete"];

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

/// `2xx` for 200–299, and so on; a status outside 100–599 is `other`, so the label
/// set stays fixed.
fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

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

/// Labels of `kura_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
}

/// Labels of the data directory's size: which part (`log`, `vault`, `snapshots`, `meta`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartLabels {
    pub part: String,
}

/// Labels of the leader's per-follower replication gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    pub follower: String,
}

/// Labels of per-peer reachability.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

/// Labels of snapshot metrics: `build` (this node made one), `mark` (it recorded a
/// compaction mark), `install` (it took one from the leader), `send` or
/// `send_while_built` (it sent one to a follower, whole or as it was built), `no_room`
/// (it gave a file up for want of room).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotLabels {
    pub kind: String,
}

/// Labels of acquirer request latency: the route and the request (`authorize`,
/// `query`, `reverse`, `health`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcquirerLabels {
    pub route: String,
    pub request: String,
}

/// Labels of payment operations: `authorize`, `capture`, `void`, `refund`; the outcome
/// (the payment's state after it, or `refused`); the route it went over.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PaymentLabels {
    pub operation: String,
    pub outcome: String,
    pub route: String,
}

/// The process's own gauges, read from `/proc/self` at each scrape (Linux), under the
/// names every Prometheus client library uses.
#[derive(Default)]
pub struct ProcessMetrics {
    pub resident_memory: Gauge,
    pub virtual_memory: Gauge,
    pub cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub open_fds: Gauge,
    pub max_fds: Gauge,
    pub start_time: Gauge,
    pub threads: Gauge,
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
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("kura");
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
            acquirer_request_duration: Family::new_with_constructor(latency_histogram),
            build_info: Family::default(),
            process: ProcessMetrics::default(),
            data_bytes: Family::default(),
            filesystem_avail: Gauge::default(),
            filesystem_size: Gauge::default(),
            follower_matched_index: Family::default(),
            follower_lag_entries: Family::default(),
            snapshot_duration: Family::new_with_constructor(snapshot_histogram),
            snapshot_size: Family::default(),
            proposals: Counter::default(),
            proposals_failed: Family::default(),
            proposals_pending: Gauge::default(),
            payments: Family::default(),
            payments_pending: Gauge::default(),
            payments_pending_oldest_age: Gauge::default(),
            cvc_capacity: Gauge::default(),
            keys_cards_pending_rewrap: Gauge::default(),
            node_ready: Gauge::default(),
            node_healthy: Gauge::default(),
            peer_up: Family::default(),
            clock_offset: Family::default(),
            tls_cert_expiry: Family::default(),
            admin_auth_failures: Family::default(),
            admin_break_glass: Counter::default(),
            api_auth_failures: Family::default(),
            api_rate_limited: Family::default(),
            listener_connections: Family::default(),
            listener_refused: Family::default(),
            listener_timeouts: Family::default(),
            listener_accept_failures: Family::default(),
            cvc_refused: Family::default(),
            purged_cards: Counter::default(),
            vault_scrubs: Family::default(),
            vault_scrub_duration: Gauge::default(),
            vault_compares: Family::default(),
            vault_digest_duration: Gauge::default(),
            vault_digests_given_up: Family::default(),
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
            "Leader changes this node has observed, by cause (formation, crash_or_partition, unhealthy_storage, unhealthy_keys, unhealthy_clock, unhealthy_routes, failback, operator, never_lead, follower_lost_log)",
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
            "Client API requests refused with 401 for want of a valid API key, by reason (missing_key, unknown_key, revoked_key)",
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
            "listener_accept_failures",
            "Accepts that failed and were retried, by plane: a connection reset or aborted before it was taken, or the process or machine short of file descriptors or memory",
            m.listener_accept_failures.clone(),
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
        // Both outcomes exported from the start, at 0: a series that first appears at 1
        // has no increase, and `KuraVaultScrubFailed` would miss the first failure.
        for outcome in ["passed", "failed"] {
            let _ = m.vault_scrubs.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            });
        }
        registry.register_with_unit(
            "vault_scrub_duration",
            "How long this node's last vault scrub took",
            Unit::Seconds,
            m.vault_scrub_duration.clone(),
        );
        registry.register(
            "vault_compares",
            "Comparisons of the members' vaults this node ran (`kura compare`, and the \
             leader's schedule), by outcome (agreed, differed, incomplete)",
            m.vault_compares.clone(),
        );
        // Every outcome exported from the start, at 0, as the scrubs' are.
        for outcome in COMPARE_OUTCOMES {
            let _ = m.vault_compares.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            });
        }
        registry.register_with_unit(
            "vault_digest_duration",
            "How long this node last took to hash its whole vault for a comparison",
            Unit::Seconds,
            m.vault_digest_duration.clone(),
        );
        registry.register(
            "vault_digests_given_up",
            "Hashes of this node's vault for a comparison given up, which let go of the \
             read they held open, by reason (time: after an hour, longer than any \
             comparison waits; room: the disk lost half its room above the free-space \
             floor)",
            m.vault_digests_given_up.clone(),
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
        registry.register_with_unit(
            "acquirer_request_duration",
            "Latency of requests over an acquirer route that got an answer, by route and request (authorize, query, reverse, health)",
            Unit::Seconds,
            m.acquirer_request_duration.clone(),
        );
        registry.register(
            "build_info",
            "Always 1; the labels name the running build (version, commit)",
            m.build_info.clone(),
        );
        registry.register_with_unit(
            "store_data",
            "Disk space (allocated blocks) of this node's data directory by part (log, vault, snapshots, meta)",
            Unit::Bytes,
            m.data_bytes.clone(),
        );
        registry.register_with_unit(
            "store_filesystem_avail",
            "Bytes an unprivileged writer may still use on the data directory's filesystem",
            Unit::Bytes,
            m.filesystem_avail.clone(),
        );
        registry.register_with_unit(
            "store_filesystem_size",
            "Size of the data directory's filesystem",
            Unit::Bytes,
            m.filesystem_size.clone(),
        );
        registry.register(
            "raft_follower_matched_index",
            "On the leader: the last log index known replicated to each follower",
            m.follower_matched_index.clone(),
        );
        registry.register(
            "raft_follower_lag_entries",
            "On the leader: entries each follower is behind the leader's last log index",
            m.follower_lag_entries.clone(),
        );
        registry.register_with_unit(
            "raft_snapshot_duration",
            "Time to build a snapshot file (kind=build), record a log compaction mark, which needs no file since the vault is durable beyond it (kind=mark: the vault made durable and the mark recorded), install one sent by the leader (kind=install), send one to a follower, from its first chunk to the follower's answer (kind=send; kind=send_while_built when it was sent as it was built), or give a snapshot file up for want of room, a compaction mark recorded instead (kind=no_room)",
            Unit::Seconds,
            m.snapshot_duration.clone(),
        );
        registry.register_with_unit(
            "raft_snapshot_size",
            "Size of the last snapshot this node built (kind=build; kind=mark is always 0), installed (kind=install) or sent (kind=send, send_while_built), or of what a snapshot file given up for want of room had written (kind=no_room)",
            Unit::Bytes,
            m.snapshot_size.clone(),
        );
        registry.register(
            "raft_proposals",
            "Commands this node proposed to the log (each write a client or the node itself asked for)",
            m.proposals.clone(),
        );
        registry.register(
            "raft_proposals_failed",
            "Proposals that did not commit, by reason (not_leader, discarded, unavailable, timeout, core_frozen; refused before proposing: insufficient_storage, cluster_upgrading)",
            m.proposals_failed.clone(),
        );
        registry.register(
            "raft_proposals_pending",
            "Proposals waiting to commit and apply now",
            m.proposals_pending.clone(),
        );
        registry.register(
            "payments",
            "Payment operations this node ran as leader, by operation (authorize, capture, void, refund), outcome (the payment's state after it, or refused) and route",
            m.payments.clone(),
        );
        registry.register(
            "payments_pending",
            "Payments in doubt at the acquirer (pending), in this node's copy of the vault",
            m.payments_pending.clone(),
        );
        registry.register_with_unit(
            "payments_pending_oldest_age",
            "Age of the oldest payment in doubt (0 when none)",
            Unit::Seconds,
            m.payments_pending_oldest_age.clone(),
        );
        registry.register(
            "cvc_capacity",
            "CVCs this node's memory may hold at most (cvc.entries_max)",
            m.cvc_capacity.clone(),
        );
        registry.register(
            "keys_cards_pending_rewrap",
            "Cards still sealed under a data key older than the current one",
            m.keys_cards_pending_rewrap.clone(),
        );
        registry.register(
            "node_ready",
            "1 if this node can serve client requests now (the /health/ready answer), else 0",
            m.node_ready.clone(),
        );
        registry.register(
            "node_healthy",
            "1 if this node's storage, keys and clock have not failed their threshold in a row, else 0",
            m.node_healthy.clone(),
        );
        registry.register(
            "peer_up",
            "1 if the peer answered this node's last health poll, else 0",
            m.peer_up.clone(),
        );
        registry.register_with_unit(
            "health_clock_offset",
            "The peer's wall clock minus this node's, as last measured from its health report",
            Unit::Seconds,
            m.clock_offset.clone(),
        );
        root.register_with_unit(
            "process_resident_memory",
            "Resident memory size",
            Unit::Bytes,
            m.process.resident_memory.clone(),
        );
        root.register_with_unit(
            "process_virtual_memory",
            "Virtual memory size",
            Unit::Bytes,
            m.process.virtual_memory.clone(),
        );
        root.register_with_unit(
            "process_cpu",
            "User and system CPU time spent",
            Unit::Seconds,
            m.process.cpu_seconds.clone(),
        );
        root.register(
            "process_open_fds",
            "Open file descriptors",
            m.process.open_fds.clone(),
        );
        root.register(
            "process_max_fds",
            "Limit on open file descriptors",
            m.process.max_fds.clone(),
        );
        root.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            m.process.start_time.clone(),
        );
        root.register(
            "process_threads",
            "Threads in the process",
            m.process.threads.clone(),
        );
        // Series that alerts take `increase()` of exist from the start at 0, so that
        // their first increment counts.
        for cause in crate::vault::LeaderChangeCause::ALL {
            m.leader_changed(cause, 0);
        }
        for reason in [
            "not_leader",
            "discarded",
            "unavailable",
            "timeout",
            "core_frozen",
        ] {
            m.proposals_failed
                .get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc_by(0);
        }
        for reason in ["time", "room"] {
            m.vault_digests_given_up
                .get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc_by(0);
        }
        for reason in ["missing_key", "unknown_key", "revoked_key"] {
            m.api_auth_failures
                .get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc_by(0);
        }
        for limit in [
            "address",
            "key",
            "one_time_tokens_key",
            "one_time_tokens_address",
        ] {
            m.api_rate_limited
                .get_or_create(&LimitLabels {
                    limit: limit.to_owned(),
                })
                .inc_by(0);
        }
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                commit: env!("KURA_COMMIT").to_owned(),
            })
            .set(1);
        Metrics {
            registry: root,
            ..m
        }
    }

    /// The OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }

    /// The exposition in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Prometheus => openmetrics_to_prometheus(&self.encode()),
        }
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
            self.listener_accept_failures.get_or_create(&p).clone(),
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

    /// Counts a comparison's hash this node gave up, for `reason` (`time`, `room`).
    pub fn digest_given_up(&self, reason: &'static str) {
        self.vault_digests_given_up
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
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
        // The router keeps running totals; the counters follow them.
        let requests = self.route_requests.get_or_create(&l);
        requests.inc_by(r.requests.saturating_sub(requests.get()));
        let errors = self.route_errors.get_or_create(&l);
        errors.inc_by(r.errors.saturating_sub(errors.get()));
    }

    /// Observes one answered request over an acquirer route.
    pub fn observe_acquirer(&self, route: &str, request: &'static str, elapsed: Duration) {
        self.acquirer_request_duration
            .get_or_create(&AcquirerLabels {
                route: route.to_owned(),
                request: request.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one payment operation (`authorize`, `capture`, `void`, `refund`).
    pub fn payment(&self, operation: &'static str, outcome: &str, route: &str) {
        self.payments
            .get_or_create(&PaymentLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
                route: route.to_owned(),
            })
            .inc();
    }

    /// Records a snapshot built, installed or sent (`kind`), how long it took and its
    /// size.
    pub fn snapshot(&self, kind: &'static str, elapsed: Duration, bytes: u64) {
        let l = SnapshotLabels {
            kind: kind.to_owned(),
        };
        self.snapshot_duration
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
        self.snapshot_size.get_or_create(&l).set(bytes as i64);
    }

    /// Counts a proposal that did not commit, for `reason` (a fixed set of values).
    pub fn proposal_failed(&self, reason: &'static str) {
        self.proposals_failed
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Sets the leader's per-follower gauges; an empty list (not the leader) removes them.
    pub fn set_followers(&self, followers: &[(String, u64, u64)]) {
        self.follower_matched_index.clear();
        self.follower_lag_entries.clear();
        for (name, matched, lag) in followers {
            let l = FollowerLabels {
                follower: name.clone(),
            };
            self.follower_matched_index
                .get_or_create(&l)
                .set(*matched as i64);
            self.follower_lag_entries.get_or_create(&l).set(*lag as i64);
        }
    }

    /// Records whether each peer answered its last health poll.
    pub fn set_peer_up(&self, peer: &str, up: bool) {
        self.peer_up
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .set(up as i64);
    }

    /// Records the peer's wall clock minus this node's.
    pub fn set_clock_offset(&self, peer: &str, seconds: f64) {
        self.clock_offset
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .set(seconds);
    }

    /// Records the size of one part of the data directory.
    pub fn set_data_bytes(&self, part: &'static str, bytes: u64) {
        self.data_bytes
            .get_or_create(&PartLabels {
                part: part.to_owned(),
            })
            .set(bytes as i64);
    }

    /// Reads the process's memory, CPU time, descriptors and start time from
    /// `/proc/self` (leaves the gauges as they were where it cannot).
    pub fn refresh_process(&self) {
        let p = &self.process;
        if let Some(stat) = proc_stat() {
            p.cpu_seconds
                .inc_by((stat.cpu_seconds - p.cpu_seconds.get()).max(0.0));
            p.virtual_memory.set(stat.vsize_bytes as i64);
            p.resident_memory.set(stat.rss_bytes as i64);
            p.threads.set(stat.threads as i64);
            if let Some(boot) = boot_time_s() {
                p.start_time
                    .set((boot + stat.start_ticks / CLOCK_TICKS) as i64);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            p.open_fds.set(fds.count() as i64);
        }
        if let Some(max) = max_fds() {
            p.max_fds.set(max as i64);
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

    /// Records a health check's last result: passed, failed, or `None` for a check
    /// that does not apply (not configured, or nothing to judge by), which exports no
    /// series rather than a failure an alert would take for one.
    pub fn set_check(&self, check: &str, passing: Option<bool>) {
        let labels = CheckLabels {
            check: check.to_owned(),
        };
        match passing {
            Some(p) => {
                self.health_check_passing
                    .get_or_create(&labels)
                    .set(p as i64);
            }
            None => {
                self.health_check_passing.remove(&labels);
            }
        }
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

    /// A finished vault scrub.
    pub fn observe_scrub(&self, outcome: &str, seconds: f64) {
        self.vault_scrubs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.vault_scrub_duration.set(seconds);
    }

    /// A finished comparison of the members' vaults.
    pub fn observe_compare(&self, outcome: &str) {
        self.vault_compares
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records one API request.
    pub fn observe_request(&self, endpoint: &str, method: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            endpoint: endpoint.to_owned(),
            method: method_label(method),
            status_class: status_class(status),
        };
        self.api_requests.get_or_create(&labels).inc();
        self.api_request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// The two text formats a scrape may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
    /// `text/plain; version=0.0.4`, what `promtool check metrics` and older scrapers read.
    Prometheus,
}

impl Format {
    /// OpenMetrics if the `Accept` header names it, else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition in the Prometheus text format: a counter family's
/// help and type lines take the `_total` name its samples carry, `# UNIT` and `# EOF`
/// go (the unit is in the name already), and `unknown` becomes `untyped`.
fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_owned(), "untyped"),
                k => (name.to_owned(), k),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Clock ticks per second for `/proc` times (`sysconf(_SC_CLK_TCK)` is 100 on every
/// Linux kura runs on).
const CLOCK_TICKS: u64 = 100;

struct ProcStat {
    cpu_seconds: f64,
    vsize_bytes: u64,
    rss_bytes: u64,
    threads: u64,
    start_ticks: u64,
}

/// Fields of `/proc/self/stat` (after the command name, which may hold spaces).
fn proc_stat() -> Option<ProcStat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let page = 4096;
    Some(ProcStat {
        cpu_seconds: (num(14)? + num(15)?) as f64 / CLOCK_TICKS as f64,
        threads: num(20)?,
        start_ticks: num(22)?,
        vsize_bytes: num(23)?,
        rss_bytes: num(24)? * page,
    })
}

fn boot_time_s() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_format_names_counters_with_total_and_drops_units_and_eof() {
        let m = Metrics::new();
        m.payment("authorize", "captured", "cafis");
        m.snapshot("build", Duration::from_millis(20), 4096);
        let om = m.encode();
        assert!(om.contains("# TYPE kura_payments counter"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = m.encode_as(Format::Prometheus);
        for needle in [
            "# HELP kura_payments_total Payment operations",
            "# TYPE kura_payments_total counter",
            "kura_payments_total{operation=\"authorize\",outcome=\"captured\",route=\"cafis\"} 1",
            "# TYPE kura_raft_snapshot_duration_seconds histogram",
            "kura_raft_snapshot_size_bytes{kind=\"build\"} 4096",
            "# TYPE kura_build_info gauge",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        for gone in ["# UNIT", "# EOF", "# TYPE kura_payments counter"] {
            assert!(!text.contains(gone), "{gone:?} left in\n{text}");
        }
        // Every sample's family has help and a type under the name the sample carries
        // (histograms: the base name of _bucket, _sum and _count).
        let typed: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let helped: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(typed, helped);
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(b)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{name} has no type line");
        }
    }

    #[test]
    fn a_scrape_gets_openmetrics_only_when_it_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }

    #[test]
    fn process_metrics_come_from_proc() {
        let m = Metrics::new();
        m.refresh_process();
        let p = &m.process;
        assert!(
            p.resident_memory.get() > 1 << 20,
            "{}",
            p.resident_memory.get()
        );
        assert!(p.open_fds.get() >= 3);
        assert!(p.max_fds.get() >= p.open_fds.get());
        assert!(p.threads.get() >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let started = p.start_time.get();
        assert!(
            started <= now + 1 && started > now - 86_400 * 30,
            "{started}"
        );
        // Burn some CPU (ticks are 10 ms): the counter sees it.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        m.refresh_process();
        assert!(p.cpu_seconds.get() > 0.0);
    }

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
        for status in [99, 600, 999] {
            m.observe_request("/v1/tokens", "GET", status, Duration::from_millis(1));
        }
        m.observe_request("/v1/tokens", "GET", 503, Duration::from_millis(1));
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
            "kura_api_requests_total{endpoint=\"/v1/tokens\",method=\"GET\",status_class=\"5xx\"} 1",
            // No status outside 100-599 adds a label value of its own.
            "kura_api_requests_total{endpoint=\"/v1/tokens\",method=\"GET\",status_class=\"other\"} 3",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        for invented in ["BREW", "X-ATTACK"] {
            assert!(!text.contains(invented), "{invented} became a label value");
        }
    }
}
