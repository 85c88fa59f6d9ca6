//! An authorisation's saga after its intent is in the log: send it over the routes in
//! order, settle the acquirer's answer in the log, and — for payments a dead leader left
//! pending — ask the route they went to and settle what it says.

use super::super::error::Replication;
use super::super::{unexpected, Service};
use super::{AuthorizeError, ChangePaymentError, PaymentRefused};
use crate::acquirer::protocol::{AuthRequest, TxnState, TxnStatus};
use crate::acquirer::router::{Attempt, Resolution};
use crate::vault::payment::{AuthOutcome, Payment, PaymentState};
use crate::vault::{Command, Refusal, Response};
use std::sync::Arc;
use std::time::Duration;

/// How long a pending payment may wait before the leader's resolver settles it.
const RESOLVE_AFTER_MS: u64 = 2_000;

/// Why an answer could not be settled.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SettleError {
    #[error(transparent)]
    Replication(#[from] Replication),
    #[error("no such payment")]
    NotFound,
    #[error("{0}")]
    Internal(String),
}

impl From<SettleError> for AuthorizeError {
    fn from(e: SettleError) -> Self {
        match e {
            SettleError::Replication(r) => AuthorizeError::Replication(r),
            SettleError::NotFound => PaymentRefused::PaymentNotFound.into(),
            SettleError::Internal(s) => AuthorizeError::Internal(s),
        }
    }
}

impl From<SettleError> for ChangePaymentError {
    fn from(e: SettleError) -> Self {
        match e {
            SettleError::Replication(r) => ChangePaymentError::Replication(r),
            SettleError::NotFound => PaymentRefused::PaymentNotFound.into(),
            SettleError::Internal(s) => ChangePaymentError::Internal(s),
        }
    }
}

fn outcome_of(s: &TxnStatus) -> AuthOutcome {
    match s.state {
        TxnState::Approved => AuthOutcome::Approved {
            auth_code: s.auth_code.clone().unwrap_or_default(),
        },
        TxnState::Declined => AuthOutcome::Declined {
            reason: s.reason.clone().unwrap_or_else(|| "declined".into()),
        },
        TxnState::Reversed => AuthOutcome::Reversed,
    }
}

impl Service {
    /// Sends the authorisation over the routes in order. Moves to the next route only
    /// when the acquirer on this one provably did not authorise it; leaves the payment
    /// pending when that cannot be known.
    pub(super) async fn send_authorization(
        &self,
        payment: &Payment,
        req: &AuthRequest,
        routes: &[String],
    ) -> Result<Payment, SettleError> {
        for (i, route) in routes.iter().enumerate() {
            if i > 0 {
                let cmd = Command::ReroutePayment {
                    payment_id: payment.id.clone(),
                    route: route.clone(),
                    at_ms: self.now_ms().await,
                };
                self.write(cmd).await?;
            }
            let status = match self.router.attempt(route, req).await {
                Attempt::Answered(s) => s,
                Attempt::NotSent(why) => {
                    tracing::warn!(route = %route, payment = %payment.id, reason = %why, "route unreachable; trying the next");
                    continue;
                }
                Attempt::InDoubt(why) => {
                    tracing::warn!(route = %route, payment = %payment.id, reason = %why, "authorisation in doubt; resolving on the same route");
                    match self.router.resolve(route, &req.txn_id).await {
                        Resolution::Known(s) => s,
                        Resolution::NeverArrived => continue,
                        Resolution::Unreachable(why) => {
                            tracing::warn!(route = %route, payment = %payment.id, reason = %why, "still in doubt; the payment stays pending");
                            return self.current(&payment.id);
                        }
                    }
                }
            };
            return self.settle(&payment.id, outcome_of(&status)).await;
        }
        // No route took it: nothing was authorised anywhere.
        self.settle(&payment.id, AuthOutcome::Reversed).await
    }

    fn current(&self, payment_id: &str) -> Result<Payment, SettleError> {
        self.read(|v| v.any_payment(payment_id))?
            .ok_or(SettleError::NotFound)
    }

    async fn settle(&self, payment_id: &str, outcome: AuthOutcome) -> Result<Payment, SettleError> {
        let cmd = Command::SettlePayment {
            payment_id: payment_id.to_owned(),
            outcome,
            at_ms: self.now_ms().await,
        };
        match self.write(cmd).await? {
            Response::Payment(p) => Ok(*p),
            // Settled meanwhile (by the resolver): the log's answer stands.
            Response::Refused(Refusal::Payment(_)) => self.current(payment_id),
            other => Err(SettleError::Internal(unexpected(&other))),
        }
    }

    /// Settles a pending payment left by a leader that died mid-call: asks the route it
    /// went to. Answers the payment as it stands afterwards (still pending if the route
    /// cannot be reached).
    pub(super) async fn resolve_pending(&self, payment_id: &str) -> Result<Payment, SettleError> {
        let p = self.current(payment_id)?;
        if p.state != PaymentState::Pending {
            return Ok(p);
        }
        match self.router.resolve(&p.route, &p.gateway_txn_id).await {
            Resolution::Known(s) => self.settle(payment_id, outcome_of(&s)).await,
            Resolution::NeverArrived => self.settle(payment_id, AuthOutcome::Reversed).await,
            Resolution::Unreachable(why) => {
                tracing::warn!(payment = %payment_id, route = %p.route, reason = %why, "pending payment still in doubt");
                Ok(p)
            }
        }
    }
}

/// On the leader, settles payments left pending by a previous leader.
pub async fn resolver_loop(svc: Arc<Service>) {
    loop {
        crate::runtime::sleep(Duration::from_millis(1_000)).await;
        if !svc.cluster.is_leader() || !svc.router.configured() {
            continue;
        }
        let now = svc.now_ms().await;
        let Ok(pending) = svc.read(|v| {
            v.pending_payments()
                .into_iter()
                .filter(|p| now.saturating_sub(p.created_at_ms) >= RESOLVE_AFTER_MS)
                .map(|p| p.id)
                .collect::<Vec<String>>()
        }) else {
            continue;
        };
        for id in pending {
            if svc.is_in_flight(&id) {
                continue;
            }
            if let Err(e) = svc.resolve_pending(&id).await {
                tracing::warn!(payment = %id, error = %e, "could not resolve a pending payment");
            }
        }
    }
}
