//! Payments with tokens: authorise (and capture if asked), capture, void, refund, read
//! one, find an order's, and report a range for reconciliation.
//!
//! Exactly once: the payment is opened in the log (consuming a one-time token, claiming
//! the order id and the idempotency key) *before* the acquirer is called, and settled in
//! the log after ([`saga`]). A leader that dies in between leaves it `pending`; the next
//! leader resolves it on the route it went to before anything may act again.

mod saga;

pub use saga::resolver_loop;

use super::auth::{AuthError, Caller};
use super::error::{service_error, Replication, ServiceError};
use super::sealing::SealError;
use super::Service;
use crate::acquirer::protocol::AuthRequest;
use crate::vault::payment::{Payment, PaymentState};
use crate::vault::token::{base62_u128, time_ordered};
use crate::vault::{
    Command, Idempotency, IdempotencyRecord, PaymentChange, Refusal, Response, StoredOutcome,
};
use std::collections::BTreeMap;

/// Longest idempotency key accepted.
const KEY_CHARS_MAX: usize = 255;
/// Longest order id accepted.
const ORDER_ID_CHARS_MAX: usize = 64;
/// Largest amount, in minor units.
const AMOUNT_MAX: u64 = 1_000_000_000_000;
/// Most payments one report lists.
const REPORT_PAYMENTS_MAX: usize = 10_000;
/// Longest field of a 3-D Secure result.
const THREE_DS_FIELD_CHARS_MAX: usize = 128;

/// An EMV 3-D Secure authentication result.
#[derive(Debug, Clone)]
pub struct ThreeDs {
    pub eci: String,
    pub authentication_value: String,
    pub ds_trans_id: String,
    pub version: String,
}

/// An authorisation to make.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub token: String,
    pub amount: u64,
    pub currency: String,
    pub order_id: String,
    /// Capture at once on approval.
    pub capture: bool,
    pub three_d_secure: Option<ThreeDs>,
}

/// The client's idempotency key and a digest of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The key as given (absent: refused).
    pub key: Option<String>,
    /// SHA-256 (hex) of the request, to tell a retry from a different request.
    pub request_sha256: String,
}

/// A change to an authorised payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Capture `amount`, or all that was authorised.
    Capture,
    Void,
    /// Refund `amount`, or all that was captured and not yet refunded.
    Refund,
}

/// A payment as a request left it.
#[derive(Debug, Clone)]
pub struct PaymentOutcome {
    pub payment: Payment,
    /// The request opened it (an authorisation), rather than changed it.
    pub opened: bool,
}

/// What the vault refused about a payment (also what an idempotency record replays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentRefused {
    #[error("no such token for this merchant")]
    TokenNotFound,
    #[error("this one-time token has already been used")]
    TokenAlreadyUsed,
    #[error("this one-time token has expired")]
    TokenExpired,
    #[error("this order already has a payment; GET /v1/payments?order_id= to see it")]
    OrderIdTaken,
    #[error("no such payment for this merchant")]
    PaymentNotFound,
    #[error("the payment's state does not allow this")]
    StateConflict,
    #[error("a payment is captured once")]
    AlreadyCaptured,
    #[error("the amount is zero or more than allowed")]
    AmountInvalid,
    #[error("unexpected refusal")]
    Unexpected,
}

service_error!(PaymentRefused {
    PaymentRefused::TokenNotFound => ("token_not_found", NotFound),
    PaymentRefused::TokenAlreadyUsed => ("token_already_used", Conflict),
    PaymentRefused::TokenExpired => ("token_expired", Gone),
    PaymentRefused::OrderIdTaken => ("order_id_taken", Conflict),
    PaymentRefused::PaymentNotFound => ("payment_not_found", NotFound),
    PaymentRefused::StateConflict => ("payment_state_conflict", Conflict),
    PaymentRefused::AlreadyCaptured => ("payment_already_captured", Conflict),
    PaymentRefused::AmountInvalid => ("amount_invalid", Unprocessable),
    PaymentRefused::Unexpected => ("internal", Internal),
} delegate {});

impl PaymentRefused {
    /// The refusal a stored code names.
    pub fn of_code(code: &str) -> PaymentRefused {
        use crate::service::ServiceError;
        [
            PaymentRefused::TokenNotFound,
            PaymentRefused::TokenAlreadyUsed,
            PaymentRefused::TokenExpired,
            PaymentRefused::OrderIdTaken,
            PaymentRefused::PaymentNotFound,
            PaymentRefused::StateConflict,
            PaymentRefused::AlreadyCaptured,
            PaymentRefused::AmountInvalid,
        ]
        .into_iter()
        .find(|r| r.code() == code)
        .unwrap_or(PaymentRefused::Unexpected)
    }

    fn of_refusal(r: &Refusal) -> PaymentRefused {
        PaymentRefused::of_code(r.code())
    }
}

/// Why an authorisation was not made, or its retry not answered.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizeError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Invalid(#[from] PaymentInputError),
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error(
        "this merchant requires an EMV 3-D Secure result (three_d_secure) with every authorisation"
    )]
    ThreeDsRequired,
    #[error("the CVC given with this one-time token is no longer held (used, expired, or lost in a failover); collect the card again")]
    CvcUnavailable,
    #[error("no acquirer route is configured on this cluster")]
    RouteUnavailable,
    #[error(transparent)]
    Refused(#[from] PaymentRefused),
    #[error(transparent)]
    Sealing(#[from] SealError),
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(AuthorizeError {
    AuthorizeError::ThreeDsRequired => ("three_d_secure_required", Unprocessable),
    AuthorizeError::CvcUnavailable => ("cvc_unavailable", Conflict),
    AuthorizeError::RouteUnavailable => ("route_unavailable", Unavailable),
    AuthorizeError::Internal(_) => ("internal", Internal),
} delegate { Auth, Invalid, Idempotency, Refused, Sealing, Replication });

/// Why a capture, void or refund was not made, or its retry not answered.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChangePaymentError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error(transparent)]
    Refused(#[from] PaymentRefused),
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("{0}")]
    Internal(String),
}

service_error!(ChangePaymentError {
    ChangePaymentError::Internal(_) => ("internal", Internal),
} delegate { Auth, Idempotency, Refused, Replication });

/// Why payments could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentReadError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("no such payment for this merchant")]
    NotFound,
    #[error("to must be after from")]
    EmptyRange,
    #[error(transparent)]
    Replication(#[from] Replication),
}

service_error!(PaymentReadError {
    PaymentReadError::NotFound => ("payment_not_found", NotFound),
    PaymentReadError::EmptyRange => ("invalid_query", Invalid),
} delegate { Auth, Replication });

/// A malformed authorisation.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentInputError {
    #[error("amount must be a positive integer in minor units, at most 10^12")]
    Amount,
    #[error("currency must be an ISO 4217 code such as JPY")]
    Currency,
    #[error("order_id must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'")]
    OrderId,
    #[error("three_d_secure needs eci, authentication_value, ds_trans_id and version, each 1-128 characters")]
    ThreeDs,
}

service_error!(PaymentInputError {
    PaymentInputError::Amount => ("amount_invalid", Unprocessable),
    PaymentInputError::Currency => ("currency_invalid", Unprocessable),
    PaymentInputError::OrderId => ("order_id_invalid", Invalid),
    PaymentInputError::ThreeDs => ("three_d_secure_invalid", Unprocessable),
} delegate {});

/// An idempotency key that is missing, reused, or still in use.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    #[error("every POST to /v1/payments needs an Idempotency-Key header of 1-255 characters")]
    Required,
    #[error("this Idempotency-Key was used with a different request body; use a new key")]
    Reused,
    #[error("the first request with this key is still being processed; retry shortly")]
    InFlight,
}

service_error!(IdempotencyError {
    IdempotencyError::Required => ("idempotency_key_required", Invalid),
    IdempotencyError::Reused => ("idempotency_key_reused", Unprocessable),
    IdempotencyError::InFlight => ("idempotency_key_in_flight", Conflict),
} delegate {});

impl IdempotencyKey {
    fn checked(self) -> Result<Idempotency, IdempotencyError> {
        let key = self
            .key
            .filter(|k| !k.is_empty() && k.len() <= KEY_CHARS_MAX)
            .ok_or(IdempotencyError::Required)?;
        Ok(Idempotency {
            key,
            body_sha256: self.request_sha256,
        })
    }
}

impl AuthorizeRequest {
    fn check(&self) -> Result<(), PaymentInputError> {
        if self.amount == 0 || self.amount > AMOUNT_MAX {
            return Err(PaymentInputError::Amount);
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(PaymentInputError::Currency);
        }
        let o = &self.order_id;
        if o.is_empty()
            || o.len() > ORDER_ID_CHARS_MAX
            || !o
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(PaymentInputError::OrderId);
        }
        if let Some(t) = &self.three_d_secure {
            let fields = [&t.eci, &t.authentication_value, &t.ds_trans_id, &t.version];
            if fields
                .iter()
                .any(|f| f.is_empty() || f.len() > THREE_DS_FIELD_CHARS_MAX)
            {
                return Err(PaymentInputError::ThreeDs);
            }
        }
        Ok(())
    }
}

/// A payment issued id (`pay_…`), by shape.
pub fn is_payment_id(id: &str) -> bool {
    crate::vault::token::is_issued_id(id, "pay_")
}

/// Totals of one state in a report.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateTotals {
    pub count: u64,
    pub authorized_amount: u64,
    pub captured_amount: u64,
    pub refunded_amount: u64,
}

/// The merchant's payments created in a range, with totals per state.
#[derive(Debug, Clone)]
pub struct PaymentReport {
    pub payments: Vec<Payment>,
    /// The range held more than a report lists.
    pub truncated: bool,
    pub by_state: BTreeMap<String, StateTotals>,
}

impl Service {
    /// Authorises a payment with a token (and captures it if asked), exactly once per
    /// idempotency key.
    pub async fn authorize(
        &self,
        caller: Caller,
        key: IdempotencyKey,
        req: AuthorizeRequest,
    ) -> Result<PaymentOutcome, AuthorizeError> {
        let mut replayed = false;
        let r = self.authorize_once(caller, key, req, &mut replayed).await;
        if !replayed {
            self.count_payment("authorize", &r);
        }
        r
    }

    /// Counts a payment operation that ran (not a replay) by its outcome: the payment's
    /// state and route, or the error's stable code.
    fn count_payment<E: ServiceError>(
        &self,
        operation: &'static str,
        r: &Result<PaymentOutcome, E>,
    ) {
        match r {
            Ok(o) => self
                .metrics
                .payment(operation, o.payment.state.as_str(), &o.payment.route),
            Err(e) => self.metrics.payment(operation, e.code(), "none"),
        }
    }

    async fn authorize_once(
        &self,
        caller: Caller,
        key: IdempotencyKey,
        req: AuthorizeRequest,
        replayed: &mut bool,
    ) -> Result<PaymentOutcome, AuthorizeError> {
        let merchant_id = caller.secret()?;
        let idem = key.checked()?;
        req.check()?;
        if let Some(rec) = self.idempotency_record(&merchant_id, &idem.key)? {
            *replayed = true;
            return self.replay_as(&idem, &rec).await;
        }
        let requires_3ds = self.read(|v| {
            v.merchant_info(&merchant_id)
                .is_some_and(|m| m.settings.require_three_d_secure)
        })?;
        if requires_3ds && req.three_d_secure.is_none() {
            return Err(AuthorizeError::ThreeDsRequired);
        }
        let record = self
            .read(|v| v.record_for(&merchant_id, &req.token))?
            .ok_or(PaymentRefused::TokenNotFound)?;
        let now_ms = self.now_ms().await;
        record
            .usable_at(now_ms)
            .map_err(|r| PaymentRefused::of_refusal(&r))?;
        if record.cvc_supplied && !self.cvc.holds(&req.token, (self.clock)()) {
            return Err(AuthorizeError::CvcUnavailable);
        }
        let routes = self.router.order();
        let Some(first) = routes.first().cloned() else {
            return Err(AuthorizeError::RouteUnavailable);
        };
        // Time-ordered like token ids: the payments table takes each new one at its end.
        let payment_id = format!(
            "pay_{}",
            base62_u128(time_ordered(now_ms, self.entropy.bytes()))
        );
        let txn_id = format!(
            "gw_{}",
            base62_u128(u128::from_be_bytes(self.entropy.bytes()))
        );
        let open = Command::OpenPayment {
            payment_id: payment_id.clone(),
            merchant_id: merchant_id.clone(),
            order_id: req.order_id.clone(),
            token: req.token.clone(),
            amount: req.amount,
            currency: req.currency.clone(),
            capture: req.capture,
            gateway_txn_id: txn_id,
            route: first,
            idempotency: Some(idem.clone()),
            at_ms: now_ms,
        };
        self.in_flight(&payment_id, true);
        let outcome = async {
            let payment = match self.write(open).await? {
                Response::Payment(p) => p,
                Response::Refused(Refusal::IdempotencyKeyTaken(rec)) => return Ok(Err(rec)),
                Response::Refused(r) => return Err(PaymentRefused::of_refusal(&r).into()),
                other => return Err(AuthorizeError::Internal(super::unexpected(&other))),
            };
            let cvc = if record.cvc_supplied {
                self.cvc.take(&req.token, (self.clock)())
            } else {
                None
            };
            let auth = AuthRequest {
                txn_id: payment.gateway_txn_id.clone(),
                merchant_id: merchant_id.clone(),
                pan: self.open_card(&merchant_id, &req.token, &record.card)?,
                exp_month: record.card.exp_month,
                exp_year: record.card.exp_year,
                cvc: cvc.map(|c| zeroize::Zeroizing::new(c.digits().to_owned())),
                amount: req.amount,
                currency: req.currency.clone(),
                three_d_secure: req.three_d_secure.as_ref().map(|t| {
                    serde_json::json!({ "eci": t.eci, "authentication_value": t.authentication_value,
                        "ds_trans_id": t.ds_trans_id, "version": t.version })
                }),
            };
            Ok(Ok(self.send_authorization(&payment, &auth, &routes).await?))
        }
        .await;
        self.in_flight(&payment_id, false);
        match outcome? {
            Ok(payment) => Ok(PaymentOutcome {
                payment,
                opened: true,
            }),
            Err(rec) => {
                *replayed = true;
                self.replay_as(&idem, &rec).await
            }
        }
    }

    /// Captures, voids or refunds a payment, exactly once per idempotency key.
    pub async fn change_payment(
        &self,
        caller: Caller,
        key: IdempotencyKey,
        payment_id: &str,
        kind: ChangeKind,
        amount: Option<u64>,
    ) -> Result<PaymentOutcome, ChangePaymentError> {
        let mut replayed = false;
        let r = self
            .change_payment_once(caller, key, payment_id, kind, amount, &mut replayed)
            .await;
        if !replayed {
            let operation = match kind {
                ChangeKind::Capture => "capture",
                ChangeKind::Void => "void",
                ChangeKind::Refund => "refund",
            };
            self.count_payment(operation, &r);
        }
        r
    }

    /// The change; `replayed` says when the answer is an earlier request's outcome.
    async fn change_payment_once(
        &self,
        caller: Caller,
        key: IdempotencyKey,
        payment_id: &str,
        kind: ChangeKind,
        amount: Option<u64>,
        replayed: &mut bool,
    ) -> Result<PaymentOutcome, ChangePaymentError> {
        let merchant_id = caller.secret()?;
        if !is_payment_id(payment_id) {
            return Err(PaymentRefused::PaymentNotFound.into());
        }
        let idem = key.checked()?;
        if let Some(rec) = self.idempotency_record(&merchant_id, &idem.key)? {
            *replayed = true;
            return self.replay_as(&idem, &rec).await;
        }
        let p = self
            .read(|v| v.payment_for(&merchant_id, payment_id))?
            .ok_or(PaymentRefused::PaymentNotFound)?;
        let change = match kind {
            ChangeKind::Capture => PaymentChange::Capture {
                amount: amount.unwrap_or(p.authorized_amount),
            },
            ChangeKind::Void => PaymentChange::Void,
            ChangeKind::Refund => PaymentChange::Refund {
                amount: amount.unwrap_or(p.captured_amount - p.refunded_amount),
            },
        };
        let cmd = Command::ChangePayment {
            merchant_id,
            payment_id: payment_id.to_owned(),
            change,
            idempotency: Some(idem.clone()),
            at_ms: self.now_ms().await,
        };
        match self.write(cmd).await? {
            Response::Payment(p) => Ok(PaymentOutcome {
                payment: *p,
                opened: false,
            }),
            Response::Refused(Refusal::IdempotencyKeyTaken(rec)) => {
                *replayed = true;
                self.replay_as(&idem, &rec).await
            }
            Response::Refused(r) => Err(PaymentRefused::of_refusal(&r).into()),
            other => Err(ChangePaymentError::Internal(super::unexpected(&other))),
        }
    }

    /// One of the merchant's payments (linearizable).
    pub async fn payment(&self, caller: Caller, id: &str) -> Result<Payment, PaymentReadError> {
        let merchant_id = caller.secret()?;
        if !is_payment_id(id) {
            return Err(PaymentReadError::NotFound);
        }
        self.linearize().await?;
        self.read(|v| v.payment_for(&merchant_id, id))?
            .ok_or(PaymentReadError::NotFound)
    }

    /// The order's payment, if any (an order has at most one).
    pub async fn payment_by_order(
        &self,
        caller: Caller,
        order_id: &str,
    ) -> Result<Option<Payment>, PaymentReadError> {
        let merchant_id = caller.secret()?;
        self.linearize().await?;
        Ok(self.read(|v| v.payment_by_order(&merchant_id, order_id))?)
    }

    /// The merchant's payments created in `[from_ms, to_ms)`, with totals per state.
    pub async fn payment_report(
        &self,
        caller: Caller,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<PaymentReport, PaymentReadError> {
        let merchant_id = caller.secret()?;
        if to_ms <= from_ms {
            return Err(PaymentReadError::EmptyRange);
        }
        self.linearize().await?;
        let payments =
            self.read(|v| v.payments_between(&merchant_id, from_ms, to_ms, REPORT_PAYMENTS_MAX))?;
        let mut by_state = BTreeMap::<String, StateTotals>::new();
        for p in &payments {
            let t = by_state.entry(p.state.as_str().to_owned()).or_default();
            t.count += 1;
            t.authorized_amount += p.authorized_amount;
            t.captured_amount += p.captured_amount;
            t.refunded_amount += p.refunded_amount;
        }
        Ok(PaymentReport {
            truncated: payments.len() == REPORT_PAYMENTS_MAX,
            payments,
            by_state,
        })
    }

    fn idempotency_record(
        &self,
        merchant_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, Replication> {
        self.read(|v| v.idempotency(merchant_id, key))
    }

    fn in_flight(&self, payment_id: &str, on: bool) {
        let mut set = self.payments_in_flight.lock().expect("in-flight lock");
        if on {
            set.insert(payment_id.to_owned());
        } else {
            set.remove(payment_id);
        }
    }

    fn is_in_flight(&self, payment_id: &str) -> bool {
        self.payments_in_flight
            .lock()
            .expect("in-flight lock")
            .contains(payment_id)
    }

    /// What to do with a request whose key is already taken: the same answer every
    /// time it is asked; a pending payment whose leader is gone is settled first.
    /// Answers as the operation itself (`E`) would.
    async fn replay_as<E>(
        &self,
        idem: &Idempotency,
        rec: &IdempotencyRecord,
    ) -> Result<PaymentOutcome, E>
    where
        E: From<IdempotencyError> + From<PaymentRefused> + From<saga::SettleError>,
    {
        if rec.body_sha256 != idem.body_sha256 {
            return Err(IdempotencyError::Reused.into());
        }
        let opened = rec.action == "payment.open";
        match (&rec.outcome, &rec.payment_id) {
            (StoredOutcome::Payment(p), Some(id)) if p.state == PaymentState::Pending => {
                if self.is_in_flight(id) {
                    return Err(IdempotencyError::InFlight.into());
                }
                // The leader that began it is gone: settle it now, then answer.
                let payment = self.resolve_pending(id).await?;
                Ok(PaymentOutcome { payment, opened })
            }
            (StoredOutcome::Payment(p), _) => Ok(PaymentOutcome {
                payment: (**p).clone(),
                opened,
            }),
            // The refusal it came to, again.
            (StoredOutcome::Refused(code), _) => Err(PaymentRefused::of_code(code).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Kind, ServiceError};

    fn req() -> AuthorizeRequest {
        AuthorizeRequest {
            token: "tok_x".into(),
            amount: 1000,
            currency: "JPY".into(),
            order_id: "order-1".into(),
            capture: false,
            three_d_secure: None,
        }
    }

    #[test]
    fn malformed_authorisations_are_refused_with_their_codes() {
        assert!(req().check().is_ok());
        let code = |r: AuthorizeRequest| r.check().unwrap_err().code();
        assert_eq!(
            code(AuthorizeRequest { amount: 0, ..req() }),
            "amount_invalid"
        );
        assert_eq!(
            code(AuthorizeRequest {
                amount: AMOUNT_MAX + 1,
                ..req()
            }),
            "amount_invalid"
        );
        assert_eq!(
            code(AuthorizeRequest {
                currency: "jpy".into(),
                ..req()
            }),
            "currency_invalid"
        );
        assert_eq!(
            code(AuthorizeRequest {
                order_id: "a b".into(),
                ..req()
            }),
            "order_id_invalid"
        );
        let tds = ThreeDs {
            eci: "05".into(),
            authentication_value: String::new(),
            ds_trans_id: "d".into(),
            version: "2.2.0".into(),
        };
        assert_eq!(
            code(AuthorizeRequest {
                three_d_secure: Some(tds),
                ..req()
            }),
            "three_d_secure_invalid"
        );
    }

    #[test]
    fn stored_refusal_codes_replay_as_the_same_refusals() {
        for r in [
            PaymentRefused::TokenNotFound,
            PaymentRefused::TokenAlreadyUsed,
            PaymentRefused::TokenExpired,
            PaymentRefused::OrderIdTaken,
            PaymentRefused::PaymentNotFound,
            PaymentRefused::StateConflict,
            PaymentRefused::AlreadyCaptured,
            PaymentRefused::AmountInvalid,
        ] {
            assert_eq!(PaymentRefused::of_code(r.code()), r);
            assert_ne!(r.kind(), Kind::Internal);
        }
        assert_eq!(
            PaymentRefused::of_code("nonsense"),
            PaymentRefused::Unexpected
        );
        assert_eq!(PaymentRefused::TokenExpired.kind(), Kind::Gone);
    }

    #[test]
    fn idempotency_keys_are_required_and_bounded() {
        let k = |key: Option<&str>| IdempotencyKey {
            key: key.map(str::to_owned),
            request_sha256: "h".into(),
        };
        assert!(k(None).checked().is_err());
        assert!(k(Some("")).checked().is_err());
        assert!(k(Some(&"k".repeat(256))).checked().is_err());
        assert_eq!(k(Some("k1")).checked().unwrap().key, "k1");
    }
}
