//! The payment state machine, pure.
//!
//! A payment is opened (an *intent*, with the gateway transaction id the leader drew)
//! before the acquirer is called, and settled by a second entry with the acquirer's
//! answer. A payment left `pending` by a leader that died mid-call is settled by the next
//! leader after it asks the acquirer. Amounts are integers in minor units.
//!
//! ```text
//!   pending ──approved──▶ authorized ──capture──▶ captured ──refund(all)──▶ refunded
//!      │                      │                      └─refund(part)─▶ captured
//!      ├──declined──▶ declined └──void──▶ voided
//!      └──reversed──▶ failed
//! ```

use super::violation::Violation;
use serde::{Deserialize, Serialize};

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// The intent is committed; the acquirer's answer is not.
    Pending,
    Authorized,
    /// Captured (in full or in part); refunds may follow.
    Captured,
    /// Every captured amount was refunded.
    Refunded,
    Declined,
    Voided,
    /// The acquirer's answer could not be settled, and the authorisation was reversed.
    Failed,
}

impl PaymentState {
    /// The snake_case name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Pending => "pending",
            PaymentState::Authorized => "authorized",
            PaymentState::Captured => "captured",
            PaymentState::Refunded => "refunded",
            PaymentState::Declined => "declined",
            PaymentState::Voided => "voided",
            PaymentState::Failed => "failed",
        }
    }

    /// No transition leaves a final state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PaymentState::Refunded
                | PaymentState::Declined
                | PaymentState::Voided
                | PaymentState::Failed
        )
    }
}

/// The acquirer's answer to an authorisation, as the leader settles it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum AuthOutcome {
    Approved {
        auth_code: String,
    },
    Declined {
        reason: String,
    },
    /// Not settled at the acquirer (it was reversed there, or never arrived).
    Reversed,
}

/// One step of a payment's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub at_ms: u64,
    /// `opened`, `authorized`, `declined`, `reversed`, `captured`, `voided`, `refunded`.
    pub kind: String,
    pub amount: u64,
    pub detail: String,
}

/// A payment as the vault keeps it. Holds the token id, never card data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub merchant_id: String,
    pub order_id: String,
    pub token: String,
    pub amount: u64,
    /// ISO 4217 code, e.g. `JPY`.
    pub currency: String,
    /// Capture right after an approved authorisation.
    pub capture_on_approval: bool,
    pub state: PaymentState,
    /// The id the acquirer deduplicates by; drawn by the leader at open.
    pub gateway_txn_id: String,
    /// The route the authorisation went to.
    pub route: String,
    pub authorized_amount: u64,
    pub captured_amount: u64,
    pub refunded_amount: u64,
    pub created_at_ms: u64,
    pub history: Vec<PaymentEvent>,
    /// The idempotency key of the request that opened it.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Where a request left a payment: the fields a transition changes, and how many
/// events its history held. A payment's other fields never change after it is opened
/// and its history only grows, so this and the payment as it is now give back the
/// payment as it was ([`Payment::as_at`]). An idempotency record keeps this instead of
/// a copy of the payment (decision 0023).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAt {
    pub state: PaymentState,
    pub route: String,
    pub authorized_amount: u64,
    pub captured_amount: u64,
    pub refunded_amount: u64,
    /// Events in the history then.
    pub events: u32,
}

/// Why a payment transition was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PaymentRefusal {
    /// The payment is not in a state that allows this.
    WrongState,
    /// The amount is zero, or more than allowed.
    BadAmount,
    /// Capture happens once.
    AlreadyCaptured,
}

impl PaymentRefusal {
    /// Stable code for clients.
    pub fn code(self) -> &'static str {
        match self {
            PaymentRefusal::WrongState => "payment_state_conflict",
            PaymentRefusal::BadAmount => "amount_invalid",
            PaymentRefusal::AlreadyCaptured => "payment_already_captured",
        }
    }
}

impl Payment {
    fn event(&mut self, at_ms: u64, kind: &str, amount: u64, detail: String) {
        self.history.push(PaymentEvent {
            at_ms,
            kind: kind.into(),
            amount,
            detail,
        });
    }

    /// Where the payment is now, to give it back later with [`Payment::as_at`].
    pub fn at(&self) -> PaymentAt {
        PaymentAt {
            state: self.state,
            route: self.route.clone(),
            authorized_amount: self.authorized_amount,
            captured_amount: self.captured_amount,
            refunded_amount: self.refunded_amount,
            events: u32::try_from(self.history.len()).unwrap_or(u32::MAX),
        }
    }

    /// The payment as it was when [`Payment::at`] returned `at`; `None` if its history
    /// is shorter than `at` says (not a later version of that payment).
    pub fn as_at(&self, at: &PaymentAt) -> Option<Payment> {
        let events = usize::try_from(at.events).ok()?;
        if events > self.history.len() {
            return None;
        }
        Some(Payment {
            id: self.id.clone(),
            merchant_id: self.merchant_id.clone(),
            order_id: self.order_id.clone(),
            token: self.token.clone(),
            amount: self.amount,
            currency: self.currency.clone(),
            capture_on_approval: self.capture_on_approval,
            state: at.state,
            gateway_txn_id: self.gateway_txn_id.clone(),
            route: at.route.clone(),
            authorized_amount: at.authorized_amount,
            captured_amount: at.captured_amount,
            refunded_amount: at.refunded_amount,
            created_at_ms: self.created_at_ms,
            history: self.history[..events].to_vec(),
            idempotency_key: self.idempotency_key.clone(),
        })
    }

    /// A new pending payment.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        id: &str,
        merchant_id: &str,
        order_id: &str,
        token: &str,
        amount: u64,
        currency: &str,
        capture_on_approval: bool,
        gateway_txn_id: &str,
        route: &str,
        at_ms: u64,
    ) -> Payment {
        let mut p = Payment {
            id: id.into(),
            merchant_id: merchant_id.into(),
            order_id: order_id.into(),
            token: token.into(),
            amount,
            currency: currency.into(),
            capture_on_approval,
            state: PaymentState::Pending,
            gateway_txn_id: gateway_txn_id.into(),
            route: route.into(),
            authorized_amount: 0,
            captured_amount: 0,
            refunded_amount: 0,
            created_at_ms: at_ms,
            history: Vec::new(),
            idempotency_key: None,
        };
        p.event(at_ms, "opened", amount, format!("route {route}"));
        p
    }

    /// Records the acquirer's answer to a pending authorisation.
    pub fn settle(&mut self, outcome: &AuthOutcome, at_ms: u64) -> Result<(), PaymentRefusal> {
        if self.state != PaymentState::Pending {
            return Err(PaymentRefusal::WrongState);
        }
        match outcome {
            AuthOutcome::Approved { auth_code } => {
                self.state = PaymentState::Authorized;
                self.authorized_amount = self.amount;
                self.event(
                    at_ms,
                    "authorized",
                    self.amount,
                    format!("auth code {auth_code}"),
                );
                if self.capture_on_approval {
                    self.capture(self.amount, at_ms)?;
                }
            }
            AuthOutcome::Declined { reason } => {
                self.state = PaymentState::Declined;
                self.event(at_ms, "declined", 0, reason.clone());
            }
            AuthOutcome::Reversed => {
                self.state = PaymentState::Failed;
                self.event(at_ms, "reversed", 0, "not settled at the acquirer".into());
            }
        }
        Ok(())
    }

    /// Moves a pending payment to another route.
    pub fn reroute(&mut self, route: &str, at_ms: u64) -> Result<(), PaymentRefusal> {
        if self.state != PaymentState::Pending {
            return Err(PaymentRefusal::WrongState);
        }
        self.route = route.into();
        self.event(at_ms, "rerouted", 0, format!("route {route}"));
        Ok(())
    }

    /// Captures `amount` (at most the authorised amount), once.
    pub fn capture(&mut self, amount: u64, at_ms: u64) -> Result<(), PaymentRefusal> {
        match self.state {
            PaymentState::Authorized => {}
            PaymentState::Captured | PaymentState::Refunded => {
                return Err(PaymentRefusal::AlreadyCaptured)
            }
            _ => return Err(PaymentRefusal::WrongState),
        }
        if amount == 0 || amount > self.authorized_amount {
            return Err(PaymentRefusal::BadAmount);
        }
        self.state = PaymentState::Captured;
        self.captured_amount = amount;
        self.event(at_ms, "captured", amount, String::new());
        Ok(())
    }

    /// Voids an authorisation that was not captured.
    pub fn void(&mut self, at_ms: u64) -> Result<(), PaymentRefusal> {
        if self.state != PaymentState::Authorized {
            return Err(PaymentRefusal::WrongState);
        }
        self.state = PaymentState::Voided;
        self.event(at_ms, "voided", 0, String::new());
        Ok(())
    }

    /// Refunds `amount`; refunds never add up to more than was captured.
    pub fn refund(&mut self, amount: u64, at_ms: u64) -> Result<(), PaymentRefusal> {
        if self.state != PaymentState::Captured {
            return Err(PaymentRefusal::WrongState);
        }
        let left = self.captured_amount - self.refunded_amount;
        if amount == 0 || amount > left {
            return Err(PaymentRefusal::BadAmount);
        }
        self.refunded_amount += amount;
        if self.refunded_amount == self.captured_amount {
            self.state = PaymentState::Refunded;
        }
        self.event(at_ms, "refunded", amount, String::new());
        Ok(())
    }

    /// The invariants every reachable payment satisfies.
    pub fn validate(&self) -> Result<(), Violation> {
        let id = &self.id;
        if self.amount == 0 {
            return Err(Violation::new(format!("payment {id} has a zero amount")));
        }
        if self.authorized_amount > self.amount {
            return Err(Violation::new(format!(
                "payment {id}: authorised more than its amount"
            )));
        }
        if self.captured_amount > self.authorized_amount {
            return Err(Violation::new(format!(
                "payment {id}: captured more than authorised"
            )));
        }
        if self.refunded_amount > self.captured_amount {
            return Err(Violation::new(format!(
                "payment {id}: refunded more than captured"
            )));
        }
        let money = (
            self.authorized_amount,
            self.captured_amount,
            self.refunded_amount,
        );
        let consistent = match self.state {
            PaymentState::Pending | PaymentState::Declined | PaymentState::Failed => {
                money == (0, 0, 0)
            }
            PaymentState::Authorized | PaymentState::Voided => {
                money.0 > 0 && money.1 == 0 && money.2 == 0
            }
            PaymentState::Captured => money.1 > 0 && money.2 < money.1,
            PaymentState::Refunded => money.1 > 0 && money.2 == money.1,
        };
        if !consistent {
            return Err(Violation::new(format!(
                "payment {id}: state {:?} does not match amounts {money:?}",
                self.state
            )));
        }
        if self.history.first().map(|e| e.kind.as_str()) != Some("opened") {
            return Err(Violation::new(format!(
                "payment {id}: history does not start with opened"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pending(capture: bool) -> Payment {
        Payment::open(
            "pay_1", "m", "o1", "tok_1", 1_000, "JPY", capture, "gw_1", "cafis", 1,
        )
    }

    fn approved() -> AuthOutcome {
        AuthOutcome::Approved {
            auth_code: "A1".into(),
        }
    }

    #[test]
    fn state_names_are_their_serialized_form() {
        use PaymentState::*;
        for s in [
            Pending, Authorized, Captured, Refunded, Declined, Voided, Failed,
        ] {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }

    #[test]
    fn authorise_capture_refund_in_parts_until_refunded() {
        let mut p = pending(false);
        p.settle(&approved(), 2).unwrap();
        assert_eq!(
            p.settle(&approved(), 3),
            Err(PaymentRefusal::WrongState),
            "settled once"
        );
        assert_eq!(
            p.refund(1, 3),
            Err(PaymentRefusal::WrongState),
            "nothing captured"
        );
        assert_eq!(p.capture(1_001, 3), Err(PaymentRefusal::BadAmount));
        p.capture(800, 4).unwrap();
        assert_eq!(
            p.capture(200, 5),
            Err(PaymentRefusal::AlreadyCaptured),
            "once"
        );
        assert_eq!(
            p.void(5),
            Err(PaymentRefusal::WrongState),
            "captured: refund instead"
        );
        p.refund(300, 6).unwrap();
        assert_eq!(
            p.refund(501, 7),
            Err(PaymentRefusal::BadAmount),
            "never more than captured"
        );
        p.refund(500, 8).unwrap();
        assert_eq!(p.state, PaymentState::Refunded);
        assert!(p.state.is_final());
        assert_eq!(p.refund(1, 9), Err(PaymentRefusal::WrongState));
        p.validate().unwrap();
        let kinds: Vec<_> = p.history.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["opened", "authorized", "captured", "refunded", "refunded"]
        );
    }

    #[test]
    fn capture_on_approval_declines_and_reversals() {
        let mut p = pending(true);
        p.settle(&approved(), 2).unwrap();
        assert_eq!(
            (p.state, p.captured_amount),
            (PaymentState::Captured, 1_000)
        );
        let mut d = pending(true);
        d.settle(
            &AuthOutcome::Declined {
                reason: "insufficient_funds".into(),
            },
            2,
        )
        .unwrap();
        assert_eq!(d.state, PaymentState::Declined);
        assert_eq!(d.capture(1, 3), Err(PaymentRefusal::WrongState));
        let mut r = pending(false);
        r.settle(&AuthOutcome::Reversed, 2).unwrap();
        assert_eq!(r.state, PaymentState::Failed);
        for p in [p, d, r] {
            p.validate().unwrap();
        }
    }

    #[test]
    fn validate_catches_money_out_of_bounds() {
        let mut p = pending(false);
        p.settle(&approved(), 2).unwrap();
        p.capture(500, 3).unwrap();
        let mut bad = p.clone();
        bad.refunded_amount = 600;
        assert!(bad
            .validate()
            .unwrap_err()
            .detail
            .contains("refunded more than captured"));
        let mut bad = p.clone();
        bad.captured_amount = 2_000;
        assert!(bad
            .validate()
            .unwrap_err()
            .detail
            .contains("captured more than authorised"));
        let mut bad = p;
        bad.state = PaymentState::Pending;
        assert!(bad
            .validate()
            .unwrap_err()
            .detail
            .contains("does not match"));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Settle(u8),
        Capture(u64),
        Void,
        Refund(u64),
        Reroute,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..3).prop_map(Step::Settle),
            (0u64..1_200).prop_map(Step::Capture),
            Just(Step::Void),
            (0u64..1_200).prop_map(Step::Refund),
            Just(Step::Reroute),
        ]
    }

    proptest! {
        #[test]
        fn validate_holds_after_every_step_final_states_stay_final_and_each_version_comes_back(
            capture in any::<bool>(),
            steps in proptest::collection::vec(step(), 0..30),
        ) {
            let mut p = pending(capture);
            let mut seen = vec![(p.at(), p.clone())];
            for (i, s) in steps.iter().enumerate() {
                let before = p.clone();
                let at = 10 + i as u64;
                let r = match s {
                    Step::Settle(0) => p.settle(&approved(), at),
                    Step::Settle(1) => p.settle(&AuthOutcome::Declined { reason: "x".into() }, at),
                    Step::Settle(_) => p.settle(&AuthOutcome::Reversed, at),
                    Step::Capture(a) => p.capture(*a, at),
                    Step::Void => p.void(at),
                    Step::Refund(a) => p.refund(*a, at),
                    Step::Reroute => p.reroute("cardnet", at),
                };
                prop_assert!(p.validate().is_ok(), "{s:?}: {:?}", p.validate());
                if r.is_err() {
                    prop_assert_eq!(&p, &before, "a refused step changes nothing");
                }
                if before.state.is_final() {
                    prop_assert_eq!(p.state, before.state, "left a final state");
                }
                seen.push((p.at(), p.clone()));
            }
            // Every earlier version comes back from the payment as it ended and the
            // mark taken then; a mark that runs past the history gives nothing.
            for (at, then) in &seen {
                prop_assert_eq!(p.as_at(at), Some(then.clone()));
            }
            let mut past = p.at();
            past.events += 1;
            prop_assert!(p.as_at(&past).is_none());
        }
    }
}
