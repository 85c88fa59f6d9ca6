//! Problems (RFC 9457): every error the API answers, with a stable code.

use serde::{Deserialize, Serialize};

/// An error response body (`application/problem+json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// `urn:kura:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// The stable machine code (see [`ProblemCode`]).
    pub code: String,
    /// A sentence for people; never echoes a submitted value.
    pub detail: String,
}

/// Every problem code the API answers with. Clients match on these; a code this
/// version does not know is [`ProblemCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemCode {
    NotLeader,
    NoLeader,
    OutcomeUnknown,
    ReplicationUnavailable,
    StorageUnavailable,
    /// The leader's disk is under its reserve: it takes no new cards or payments until
    /// space is freed (503); nothing was done.
    InsufficientStorage,
    /// A member of the cluster runs a build that cannot apply what was asked (an
    /// upgrade not finished on every node); nothing was done (503).
    ClusterUpgrading,
    ShuttingDown,
    Unauthorized,
    SecretKeyRequired,
    PublishableKeyNotAllowed,
    OriginNotAllowed,
    OperatorRoleForbidden,
    RateLimited,
    PanInField,
    InvalidJson,
    InvalidBody,
    InvalidQuery,
    RequestTooLarge,
    /// The request's line and headers are too large, or too many (431).
    HeadersTooLarge,
    /// The request is not HTTP/1.1 (400).
    InvalidHttp,
    /// Another HTTP version than the listener speaks (505).
    HttpVersionNotSupported,
    RouteNotFound,
    Internal,
    CardNumberNotDigits,
    CardNumberLength,
    CardNumberLuhn,
    CardExpiryInvalid,
    CardExpired,
    CardCvcInvalid,
    CvcNotAllowed,
    CvcStoreFull,
    CvcShareExhausted,
    KeyUnavailable,
    MemberIdRequired,
    MemberIdNotAllowed,
    MemberIdInvalid,
    TokenNotFound,
    TokenAlreadyUsed,
    TokenExpired,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
    IdempotencyKeyInFlight,
    OrderIdTaken,
    OrderIdInvalid,
    PaymentNotFound,
    PaymentStateConflict,
    PaymentAlreadyCaptured,
    AmountInvalid,
    CurrencyInvalid,
    ThreeDSecureRequired,
    ThreeDSecureInvalid,
    CvcUnavailable,
    RouteUnavailable,
    MerchantExists,
    MerchantNotFound,
    MerchantIdInvalid,
    MerchantNameInvalid,
    AllowedOriginInvalid,
    DataKeyInUse,
    DataKeyCurrent,
    DataKeyNotFound,
    RotationConflict,
    KekNotOnAllNodes,
    AuditUnavailable,
    EventNotAllowed,
    InitRefused,
    MemberNotFound,
    TransferFailed,
    FaultInjectionDisabled,
    ScrubRunning,
    CompareRunning,
    MemberInvalid,
    MemberExists,
    MemberNotCaughtUp,
    MembershipWouldLoseQuorum,
    MembershipWithoutLeaderCandidate,
    MembershipChangeInProgress,
    MembershipChangeRefused,
    NotFormed,
    BackupFailed,
    /// A node's certificate on a plane of a member that does not count it as a member
    /// (removed, or added and not yet known there); nothing was done.
    NotAMember,
    /// A code newer than this crate.
    Unknown,
}

impl ProblemCode {
    /// Every known code.
    pub const ALL: &'static [ProblemCode] = &[
        ProblemCode::NotLeader,
        ProblemCode::NoLeader,
        ProblemCode::OutcomeUnknown,
        ProblemCode::ReplicationUnavailable,
        ProblemCode::StorageUnavailable,
        ProblemCode::InsufficientStorage,
        ProblemCode::ClusterUpgrading,
        ProblemCode::ShuttingDown,
        ProblemCode::Unauthorized,
        ProblemCode::SecretKeyRequired,
        ProblemCode::PublishableKeyNotAllowed,
        ProblemCode::OriginNotAllowed,
        ProblemCode::OperatorRoleForbidden,
        ProblemCode::RateLimited,
        ProblemCode::PanInField,
        ProblemCode::InvalidJson,
        ProblemCode::InvalidBody,
        ProblemCode::InvalidQuery,
        ProblemCode::RequestTooLarge,
        ProblemCode::HeadersTooLarge,
        ProblemCode::InvalidHttp,
        ProblemCode::HttpVersionNotSupported,
        ProblemCode::RouteNotFound,
        ProblemCode::Internal,
        ProblemCode::CardNumberNotDigits,
        ProblemCode::CardNumberLength,
        ProblemCode::CardNumberLuhn,
        ProblemCode::CardExpiryInvalid,
        ProblemCode::CardExpired,
        ProblemCode::CardCvcInvalid,
        ProblemCode::CvcNotAllowed,
        ProblemCode::CvcStoreFull,
        ProblemCode::CvcShareExhausted,
        ProblemCode::KeyUnavailable,
        ProblemCode::MemberIdRequired,
        ProblemCode::MemberIdNotAllowed,
        ProblemCode::MemberIdInvalid,
        ProblemCode::TokenNotFound,
        ProblemCode::TokenAlreadyUsed,
        ProblemCode::TokenExpired,
        ProblemCode::IdempotencyKeyRequired,
        ProblemCode::IdempotencyKeyReused,
        ProblemCode::IdempotencyKeyInFlight,
        ProblemCode::OrderIdTaken,
        ProblemCode::OrderIdInvalid,
        ProblemCode::PaymentNotFound,
        ProblemCode::PaymentStateConflict,
        ProblemCode::PaymentAlreadyCaptured,
        ProblemCode::AmountInvalid,
        ProblemCode::CurrencyInvalid,
        ProblemCode::ThreeDSecureRequired,
        ProblemCode::ThreeDSecureInvalid,
        ProblemCode::CvcUnavailable,
        ProblemCode::RouteUnavailable,
        ProblemCode::MerchantExists,
        ProblemCode::MerchantNotFound,
        ProblemCode::MerchantIdInvalid,
        ProblemCode::MerchantNameInvalid,
        ProblemCode::AllowedOriginInvalid,
        ProblemCode::DataKeyInUse,
        ProblemCode::DataKeyCurrent,
        ProblemCode::DataKeyNotFound,
        ProblemCode::RotationConflict,
        ProblemCode::KekNotOnAllNodes,
        ProblemCode::AuditUnavailable,
        ProblemCode::EventNotAllowed,
        ProblemCode::InitRefused,
        ProblemCode::MemberNotFound,
        ProblemCode::TransferFailed,
        ProblemCode::FaultInjectionDisabled,
        ProblemCode::ScrubRunning,
        ProblemCode::CompareRunning,
        ProblemCode::MemberInvalid,
        ProblemCode::MemberExists,
        ProblemCode::MemberNotCaughtUp,
        ProblemCode::MembershipWouldLoseQuorum,
        ProblemCode::MembershipWithoutLeaderCandidate,
        ProblemCode::MembershipChangeInProgress,
        ProblemCode::MembershipChangeRefused,
        ProblemCode::NotFormed,
        ProblemCode::BackupFailed,
        ProblemCode::NotAMember,
    ];

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::NotLeader => "not_leader",
            ProblemCode::NoLeader => "no_leader",
            ProblemCode::OutcomeUnknown => "outcome_unknown",
            ProblemCode::ReplicationUnavailable => "replication_unavailable",
            ProblemCode::StorageUnavailable => "storage_unavailable",
            ProblemCode::InsufficientStorage => "insufficient_storage",
            ProblemCode::ClusterUpgrading => "cluster_upgrading",
            ProblemCode::ShuttingDown => "shutting_down",
            ProblemCode::Unauthorized => "unauthorized",
            ProblemCode::SecretKeyRequired => "secret_key_required",
            ProblemCode::PublishableKeyNotAllowed => "publishable_key_not_allowed",
            ProblemCode::OriginNotAllowed => "origin_not_allowed",
            ProblemCode::OperatorRoleForbidden => "operator_role_forbidden",
            ProblemCode::RateLimited => "rate_limited",
            ProblemCode::PanInField => "pan_in_field",
            ProblemCode::InvalidJson => "invalid_json",
            ProblemCode::InvalidBody => "invalid_body",
            ProblemCode::InvalidQuery => "invalid_query",
            ProblemCode::RequestTooLarge => "request_too_large",
            ProblemCode::HeadersTooLarge => "headers_too_large",
            ProblemCode::InvalidHttp => "invalid_http",
            ProblemCode::HttpVersionNotSupported => "http_version_not_supported",
            ProblemCode::RouteNotFound => "route_not_found",
            ProblemCode::Internal => "internal",
            ProblemCode::CardNumberNotDigits => "card_number_not_digits",
            ProblemCode::CardNumberLength => "card_number_length",
            ProblemCode::CardNumberLuhn => "card_number_luhn",
            ProblemCode::CardExpiryInvalid => "card_expiry_invalid",
            ProblemCode::CardExpired => "card_expired",
            ProblemCode::CardCvcInvalid => "card_cvc_invalid",
            ProblemCode::CvcNotAllowed => "cvc_not_allowed",
            ProblemCode::CvcStoreFull => "cvc_store_full",
            ProblemCode::CvcShareExhausted => "cvc_share_exhausted",
            ProblemCode::KeyUnavailable => "key_unavailable",
            ProblemCode::MemberIdRequired => "member_id_required",
            ProblemCode::MemberIdNotAllowed => "member_id_not_allowed",
            ProblemCode::MemberIdInvalid => "member_id_invalid",
            ProblemCode::TokenNotFound => "token_not_found",
            ProblemCode::TokenAlreadyUsed => "token_already_used",
            ProblemCode::TokenExpired => "token_expired",
            ProblemCode::IdempotencyKeyRequired => "idempotency_key_required",
            ProblemCode::IdempotencyKeyReused => "idempotency_key_reused",
            ProblemCode::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ProblemCode::OrderIdTaken => "order_id_taken",
            ProblemCode::OrderIdInvalid => "order_id_invalid",
            ProblemCode::PaymentNotFound => "payment_not_found",
            ProblemCode::PaymentStateConflict => "payment_state_conflict",
            ProblemCode::PaymentAlreadyCaptured => "payment_already_captured",
            ProblemCode::AmountInvalid => "amount_invalid",
            ProblemCode::CurrencyInvalid => "currency_invalid",
            ProblemCode::ThreeDSecureRequired => "three_d_secure_required",
            ProblemCode::ThreeDSecureInvalid => "three_d_secure_invalid",
            ProblemCode::CvcUnavailable => "cvc_unavailable",
            ProblemCode::RouteUnavailable => "route_unavailable",
            ProblemCode::MerchantExists => "merchant_exists",
            ProblemCode::MerchantNotFound => "merchant_not_found",
            ProblemCode::MerchantIdInvalid => "merchant_id_invalid",
            ProblemCode::MerchantNameInvalid => "merchant_name_invalid",
            ProblemCode::AllowedOriginInvalid => "allowed_origin_invalid",
            ProblemCode::DataKeyInUse => "data_key_in_use",
            ProblemCode::DataKeyCurrent => "data_key_current",
            ProblemCode::DataKeyNotFound => "data_key_not_found",
            ProblemCode::RotationConflict => "rotation_conflict",
            ProblemCode::KekNotOnAllNodes => "kek_not_on_all_nodes",
            ProblemCode::AuditUnavailable => "audit_unavailable",
            ProblemCode::EventNotAllowed => "event_not_allowed",
            ProblemCode::InitRefused => "init_refused",
            ProblemCode::MemberNotFound => "member_not_found",
            ProblemCode::TransferFailed => "transfer_failed",
            ProblemCode::FaultInjectionDisabled => "fault_injection_disabled",
            ProblemCode::ScrubRunning => "scrub_running",
            ProblemCode::CompareRunning => "compare_running",
            ProblemCode::MemberInvalid => "member_invalid",
            ProblemCode::MemberExists => "member_exists",
            ProblemCode::MemberNotCaughtUp => "member_not_caught_up",
            ProblemCode::MembershipWouldLoseQuorum => "membership_would_lose_quorum",
            ProblemCode::MembershipWithoutLeaderCandidate => "membership_without_leader_candidate",
            ProblemCode::MembershipChangeInProgress => "membership_change_in_progress",
            ProblemCode::MembershipChangeRefused => "membership_change_refused",
            ProblemCode::NotFormed => "not_formed",
            ProblemCode::BackupFailed => "backup_failed",
            ProblemCode::NotAMember => "not_a_member",
            ProblemCode::Unknown => "unknown",
        }
    }

    /// The code named `s` ([`ProblemCode::Unknown`] when this version does not know it).
    pub fn parse(s: &str) -> ProblemCode {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .unwrap_or(ProblemCode::Unknown)
    }

    /// Nothing was done and the request may be sent again, to any node.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ProblemCode::NotLeader | ProblemCode::NoLeader | ProblemCode::ShuttingDown
        )
    }
}

impl std::fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ProblemCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for ProblemCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_unknown() {
        for c in ProblemCode::ALL {
            assert_eq!(ProblemCode::parse(c.as_str()), *c);
        }
        assert_eq!(ProblemCode::parse("brand_new"), ProblemCode::Unknown);
        assert!(ProblemCode::NotLeader == "not_leader");
        let unique: std::collections::HashSet<_> =
            ProblemCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(unique.len(), ProblemCode::ALL.len());
    }
}
