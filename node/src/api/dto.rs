//! The wire types are `kura_types`' (shared with the SDK); this module turns the
//! service layer's results into them, and their requests into the service's.

use crate::service;
use crate::service::payments::PaymentReport;
use crate::service::tokens::{CardInput, TokenView};
use crate::vault;
use kura_types as wire;

/// The wire form of a vault enum with the same snake_case names.
macro_rules! same_names {
    ($from:ty => $to:ty { $($v:ident),* $(,)? }) => {
        impl From<$from> for Wire<$to> {
            fn from(x: $from) -> Wire<$to> {
                Wire(match x { $(<$from>::$v => <$to>::$v,)* })
            }
        }
    };
}

/// A conversion into a wire type (a local wrapper, so that conversions between two
/// foreign types can be written here).
pub struct Wire<T>(pub T);

/// `x` in its wire form.
pub fn wire<T, F>(x: F) -> T
where
    Wire<T>: From<F>,
{
    Wire::from(x).0
}

same_names!(vault::TokenKind => wire::TokenKind { OneTime, CardOnFile });
same_names!(vault::Brand => wire::Brand { Visa, Mastercard, Jcb, Amex, Diners, Discover, Unknown });
same_names!(crate::cvc::CvcState => wire::CvcState { NotSupplied, Available, Unavailable });
same_names!(vault::payment::PaymentState => wire::PaymentState {
    Pending, Authorized, Captured, Refunded, Declined, Voided, Failed
});
same_names!(vault::TokenFormat => wire::TokenFormat { Opaque, Numeric });
same_names!(vault::KeyRole => wire::KeyRole { Secret, Publishable });
same_names!(wire::TokenKind => vault::TokenKind { OneTime, CardOnFile });
same_names!(wire::TokenFormat => vault::TokenFormat { Opaque, Numeric });
same_names!(wire::KeyRole => vault::KeyRole { Secret, Publishable });
same_names!(crate::member::Role => wire::Role { Main, Dr, Bk });
same_names!(wire::Role => crate::member::Role { Main, Dr, Bk });
same_names!(crate::failover::CheckStatus => wire::CheckStatus { Pass, Fail, NotConfigured });

impl From<wire::CardIn> for CardInput {
    fn from(c: wire::CardIn) -> CardInput {
        CardInput {
            number: c.number,
            exp_month: c.exp_month,
            exp_year: c.exp_year,
            cvc: c.cvc,
        }
    }
}

impl From<TokenView> for Wire<wire::Token> {
    fn from(v: TokenView) -> Self {
        let m = v.meta;
        Wire(wire::Token {
            token: m.token,
            kind: wire(m.kind),
            member_id: m.member_id,
            brand: wire(m.brand),
            last4: m.last4,
            exp_month: m.exp_month,
            exp_year: m.exp_year,
            created_at: m.created_at_ms / 1000,
            expires_at: m.expires_at_ms.map(|t| t / 1000),
            used_at: m.used_at_ms.map(|t| t / 1000),
            cvc: v.cvc.map(wire),
        })
    }
}

impl From<vault::payment::Payment> for Wire<wire::Payment> {
    fn from(p: vault::payment::Payment) -> Self {
        Wire(wire::Payment {
            history: p
                .history
                .into_iter()
                .map(|e| wire::PaymentEvent {
                    at: e.at_ms / 1000,
                    kind: e.kind,
                    amount: e.amount,
                    detail: e.detail,
                })
                .collect(),
            id: p.id,
            order_id: p.order_id,
            token: p.token,
            amount: p.amount,
            currency: p.currency,
            state: wire(p.state),
            authorized_amount: p.authorized_amount,
            captured_amount: p.captured_amount,
            refunded_amount: p.refunded_amount,
            route: p.route,
            gateway_txn_id: p.gateway_txn_id,
            created_at: p.created_at_ms / 1000,
        })
    }
}

/// A report for the range `[from, to)` (Unix seconds).
pub fn report(from: u64, to: u64, r: PaymentReport) -> wire::PaymentReport {
    wire::PaymentReport {
        from,
        to,
        count: r.payments.len() as u64,
        truncated: r.truncated,
        by_state: r
            .by_state
            .into_iter()
            .map(|(s, t)| {
                let t = wire::StateTotals {
                    count: t.count,
                    authorized_amount: t.authorized_amount,
                    captured_amount: t.captured_amount,
                    refunded_amount: t.refunded_amount,
                };
                (s, t)
            })
            .collect(),
        payments: r.payments.into_iter().map(wire).collect(),
    }
}

impl From<vault::MerchantInfo> for Wire<wire::Merchant> {
    fn from(m: vault::MerchantInfo) -> Self {
        Wire(wire::Merchant {
            merchant_id: m.merchant_id,
            name: m.name,
            created_at: m.created_at_ms / 1000,
            key_rotated_at: m.key_rotated_at_ms / 1000,
            allowed_origins: m.settings.allowed_origins,
            token_format: wire(m.settings.token_format),
            require_three_d_secure: m.settings.require_three_d_secure,
            secret_key: None,
            publishable_key: None,
        })
    }
}

impl From<service::merchants::WithKeys> for Wire<wire::Merchant> {
    fn from(w: service::merchants::WithKeys) -> Self {
        Wire(wire::Merchant {
            secret_key: w.secret_key,
            publishable_key: w.publishable_key,
            ..wire(w.merchant)
        })
    }
}

impl From<service::keys::KeyStatus> for Wire<wire::KeyStatus> {
    fn from(s: service::keys::KeyStatus) -> Self {
        Wire(wire::KeyStatus {
            provider: s.provider.to_owned(),
            current_version: s.current_version,
            versions: s
                .versions
                .into_iter()
                .map(|k| wire::KeyVersion {
                    version: k.version,
                    state: k.state.to_owned(),
                    installed_at: k.installed_at,
                    retired_at: k.retired_at,
                    cards: k.cards,
                    kek_id: k.kek_id,
                })
                .collect(),
            rewrap: wire::RewrapProgress {
                pending_cards: s.rewrap.pending_cards,
                done: s.rewrap.done,
            },
            kek: wire::KekStatus {
                current: s.kek.current,
                held: s.kek.held,
                keys_under_other_keks: s.kek.keys_under_other_keks as u64,
                rotation_done: s.kek.rotation_done,
            },
        })
    }
}

impl From<service::keys::Verification> for Wire<wire::KeyVerification> {
    fn from(v: service::keys::Verification) -> Self {
        Wire(wire::KeyVerification {
            cards_checked: v.cards_checked,
            cards_by_version: v
                .cards_by_version
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            failures: v.failures,
            first_failure: v.first_failure,
        })
    }
}

fn signed_head(s: vault::audit::SignedHead) -> wire::SignedHead {
    wire::SignedHead {
        records: s.records,
        head: s.head,
        kek_id: s.kek_id,
        mac: s.mac,
    }
}

/// The vault's form of an exported signed head.
pub fn signed_head_in(s: wire::SignedHead) -> vault::audit::SignedHead {
    vault::audit::SignedHead {
        records: s.records,
        head: s.head,
        kek_id: s.kek_id,
        mac: s.mac,
    }
}

impl From<service::audit::AuditPage> for Wire<wire::AuditPage> {
    fn from(p: service::audit::AuditPage) -> Self {
        Wire(wire::AuditPage {
            records: p
                .records
                .into_iter()
                .map(|r| wire::AuditRecord {
                    seq: r.seq,
                    at_ms: r.entry.at_ms,
                    actor: r.entry.actor,
                    merchant_id: r.entry.merchant_id,
                    action: r.entry.action,
                    token: r.entry.token,
                    outcome: r.entry.outcome,
                    detail: r.entry.detail,
                    hash: r.hash,
                })
                .collect(),
            next_from_seq: p.next_from_seq,
            total: p.total,
            head_hash: p.head_hash,
        })
    }
}

impl From<service::audit::SignedHeadNow> for Wire<wire::SignedHeadNow> {
    fn from(s: service::audit::SignedHeadNow) -> Self {
        Wire(wire::SignedHeadNow {
            signed_head: signed_head(s.signed_head),
            signed_at_ms: s.signed_at_ms,
        })
    }
}

impl From<service::audit::AuditCheck> for Wire<wire::AuditVerification> {
    fn from(c: service::audit::AuditCheck) -> Self {
        let (first_broken_seq, reason) = match c.broken {
            Some((seq, why)) => (Some(seq), Some(why)),
            None => (None, None),
        };
        let intact = first_broken_seq.is_none();
        Wire(wire::AuditVerification {
            ok: c.ok,
            first_broken_seq,
            reason,
            reasons: c.reasons,
            records: intact.then_some(c.records),
            head_hash: intact.then_some(c.head_hash),
            signatures: c.signatures.map(|s| wire::SignatureReport {
                verified: s.verified,
                unverifiable: s.unverifiable,
                invalid: s.invalid,
                signed_through_records: s.signed_through_records,
                last_signed_at_ms: s.last_signed_at_ms,
                unsigned_tail_records: s.unsigned_tail_records,
                unsigned_since_ms: s.unsigned_since_ms,
            }),
            exported_head: c.exported.map(|e| wire::ExportedHeadCheck {
                records: e.records,
                mac: format!("{:?}", e.mac).to_lowercase(),
                in_chain: e.in_chain,
                ok: e.ok,
            }),
        })
    }
}

impl From<crate::failover::NodeHealth> for Wire<wire::NodeHealth> {
    fn from(h: crate::failover::NodeHealth) -> Self {
        Wire(wire::NodeHealth {
            healthy: h.healthy,
            ready: h.ready,
            drained: h.drained,
            unhealthy_cause: h.unhealthy_cause.map(|c| c.as_str().to_owned()),
            routes_cut: h.routes_cut,
            checks: h
                .checks
                .into_iter()
                .map(|c| wire::HealthCheck {
                    name: c.name,
                    status: wire(c.status),
                    latency_ms: c.latency_ms,
                    message: c.message,
                    consecutive_failures: c.consecutive_failures,
                })
                .collect(),
            last_log_index: h.last_log_index,
            kek_ids: h.kek_ids,
            command_level: h.command_level,
        })
    }
}

/// This node's view of the cluster; the cluster id only when `with_id`.
pub fn cluster_status(v: service::nodes::StatusView, with_id: bool) -> wire::ClusterStatus {
    let s = v.status;
    let me = s.node_id;
    let health: wire::NodeHealth = wire(v.health);
    let peers = v.peers;
    wire::ClusterStatus {
        node_id: s.node_id,
        name: s.name,
        role: wire(s.role),
        cluster_id: s.cluster_id.filter(|_| with_id),
        state: s.state,
        leader_id: s.leader_id,
        leader_name: s.leader_name,
        term: s.term,
        last_log_index: s.last_log_index,
        committed_index: s.committed_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        members: s
            .members
            .into_iter()
            .map(|m| wire::MemberStatus {
                health: if m.id == me {
                    Some(health.clone())
                } else {
                    peers.get(&m.id).cloned().flatten().map(wire)
                },
                id: m.id,
                name: m.name,
                role: wire(m.role),
                api_addr: m.api_addr,
                raft_addr: m.raft_addr,
                voter: m.voter,
                never_lead: m.never_lead,
                matched_index: m.matched_index,
                lag_entries: m.lag_entries,
            })
            .collect(),
        health,
        acquirer_routes: v
            .routes
            .into_iter()
            .map(|r| wire::RouteStatus {
                name: r.name,
                addr: r.addr,
                up: r.up,
                last_latency_ms: r.last_latency_ms,
                requests: r.requests,
                errors: r.errors,
            })
            .collect(),
        cluster_command_level: v.cluster_command_level,
    }
}

/// The service's form of fault switches.
pub fn faults_in(f: wire::Faults) -> crate::faults::FaultState {
    crate::faults::FaultState {
        storage_stalled: f.storage_stalled,
        storage_delay_ms: f.storage_delay_ms,
        kek_failing: f.kek_failing,
        routes_blocked: f.routes_blocked,
        clock_offset_ms: f.clock_offset_ms,
        command_level: f.command_level,
        raft_core_panics: f.raft_core_panics,
        hash_paused: f.hash_paused,
    }
}

/// The wire form of fault switches.
pub fn faults_out(f: crate::faults::FaultState) -> wire::Faults {
    wire::Faults {
        storage_stalled: f.storage_stalled,
        storage_delay_ms: f.storage_delay_ms,
        kek_failing: f.kek_failing,
        routes_blocked: f.routes_blocked,
        clock_offset_ms: f.clock_offset_ms,
        command_level: f.command_level,
        raft_core_panics: f.raft_core_panics,
        hash_paused: f.hash_paused,
    }
}
