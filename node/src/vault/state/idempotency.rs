//! Idempotency records: what a keyed request came to, kept to answer its retries the
//! same way for [`IDEMPOTENCY_KEEP_MS`], and dropped in time order after that.
//!
//! A record of a payment request keeps where the request left the payment
//! ([`PaymentAt`]), not a copy of it: the payment itself is in the vault for good, and
//! a retry's answer is rebuilt from it (decision 0023). Records that hold a copy, as
//! written before, still answer.

use super::*;
use crate::vault::payment::PaymentAt;
use crate::vault::StorageError;

/// An idempotency record as stored: [`IdempotencyRecord`], field for field, with the
/// payment it answers with kept as a point of that payment's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredIdempotency {
    /// A SHA-256 in hex; stored as its 32 bytes.
    #[serde(with = "crate::vault::hex_bytes::text")]
    pub body_sha256: String,
    pub action: String,
    pub payment_id: Option<String>,
    pub outcome: StoredAnswer,
    pub created_at_ms: u64,
}

/// [`StoredOutcome`] as stored. The first two are its own variants, under the same
/// names, so records written before decision 0023 decode as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum StoredAnswer {
    /// A copy of the payment (records written before decision 0023).
    Payment(Box<Payment>),
    Refused(String),
    /// The record's payment as it was at this point.
    PaymentAt(PaymentAt),
}

impl<S: TablesMut> Vault<S> {
    /// Records what a keyed command came to, and keeps a keyed authorisation's record up
    /// to date when its payment is settled or rerouted.
    pub(super) fn remember_idempotent(&mut self, cmd: &Command, response: &Response) {
        let outcome = match response {
            Response::Payment(p) => StoredAnswer::PaymentAt(p.at()),
            Response::Refused(r) => StoredAnswer::Refused(r.code().to_owned()),
            _ => return,
        };
        if let Some((merchant_id, idem)) = keyed(cmd) {
            // Both keyed commands name their payment, which a payment answer is.
            let payment_id = match cmd {
                Command::OpenPayment { payment_id, .. }
                | Command::ChangePayment { payment_id, .. } => Some(payment_id.clone()),
                _ => None,
            };
            let record = StoredIdempotency {
                body_sha256: idem.body_sha256.clone(),
                action: cmd.action().to_owned(),
                payment_id,
                outcome,
                created_at_ms: cmd.at_ms(),
            };
            // The key was free when the command began (`apply` answers a taken key
            // before getting here), and nothing else writes it: no record to replace.
            let key = (merchant_id.to_owned(), idem.key.clone());
            self.idempotency_floor_ms = self.idempotency_floor_ms.min(record.created_at_ms);
            IDEMPOTENCY_BY_TIME.put(
                &mut self.tables,
                &(record.created_at_ms, key.0.clone(), key.1.clone()),
                &(),
            );
            IDEMPOTENCY.put(&mut self.tables, &key, &record);
            return;
        }
        if let (
            Command::SettlePayment { .. } | Command::ReroutePayment { .. },
            Response::Payment(p),
        ) = (cmd, response)
        {
            if let Some(key) = &p.idempotency_key {
                let key = (p.merchant_id.clone(), key.clone());
                if let Some(mut r) = IDEMPOTENCY.get(&self.tables, &key) {
                    r.outcome = outcome;
                    IDEMPOTENCY.put(&mut self.tables, &key, &r);
                }
            }
        }
    }

    /// Drops a bounded number of idempotency keys older than the retention: the oldest
    /// first, read from the index by time (no scan of the keys still kept).
    pub(super) fn expire_idempotency_keys(&mut self, clock_ms: u64) {
        let Some(cutoff) = clock_ms.checked_sub(IDEMPOTENCY_KEEP_MS) else {
            return;
        };
        if cutoff <= self.idempotency_floor_ms {
            return;
        }
        let mut old = Vec::new();
        // The oldest record kept, once the expired ones are read.
        let mut oldest_kept = None;
        IDEMPOTENCY_BY_TIME.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |k: (u64, String, String), ()| {
                if k.0 >= cutoff || old.len() == IDEMPOTENCY_EXPIRE_PER_APPLY {
                    oldest_kept = Some(k.0);
                    return false;
                }
                old.push(k);
                true
            },
        );
        // Every record left was made at `oldest_kept` or later; with none left, any
        // floor holds until a record is made (which lowers it).
        self.idempotency_floor_ms = oldest_kept.unwrap_or(u64::MAX);
        for k in old {
            IDEMPOTENCY_BY_TIME.delete(&mut self.tables, &k);
            IDEMPOTENCY.delete(&mut self.tables, &(k.1, k.2));
        }
    }
}

impl<S: Tables> Vault<S> {
    /// The existing record, if `cmd` carries an idempotency key that is taken.
    pub(super) fn idempotency_taken(&self, cmd: &Command) -> Option<IdempotencyRecord> {
        let (merchant_id, idem) = keyed(cmd)?;
        self.idempotency(merchant_id, &idem.key)
    }

    /// The payment `payment_id` as it was at `at`: `None` if the vault lacks it or it
    /// never reached `at` (damage, since payments are kept for good).
    pub(super) fn payment_as_recorded(
        &self,
        payment_id: Option<&str>,
        at: &PaymentAt,
    ) -> Option<Payment> {
        PAYMENTS
            .get(&self.tables, &payment_id?.to_owned())?
            .as_at(at)
    }

    /// A merchant's idempotency record for `key`, its payment as the request left it.
    pub fn idempotency(&self, merchant_id: &str, key: &str) -> Option<IdempotencyRecord> {
        let r = IDEMPOTENCY.get(&self.tables, &(merchant_id.to_owned(), key.to_owned()))?;
        let outcome = match r.outcome {
            StoredAnswer::Payment(p) => StoredOutcome::Payment(p),
            StoredAnswer::Refused(code) => StoredOutcome::Refused(code),
            StoredAnswer::PaymentAt(at) => {
                match self.payment_as_recorded(r.payment_id.as_deref(), &at) {
                    Some(p) => StoredOutcome::Payment(Box::new(p)),
                    None => {
                        // The payment is kept for good: a record that names one the
                        // vault lacks (or a later point than it reached) is damage.
                        self.tables.fail(StorageError::new(format!(
                            "an idempotency record of merchant {merchant_id} names a payment \
                             the vault does not hold as recorded"
                        )));
                        StoredOutcome::Refused("idempotency_record_damaged".into())
                    }
                }
            }
        };
        Some(IdempotencyRecord {
            body_sha256: r.body_sha256,
            action: r.action,
            payment_id: r.payment_id,
            outcome,
            created_at_ms: r.created_at_ms,
        })
    }
}

/// The merchant and idempotency key of a keyed command.
fn keyed(cmd: &Command) -> Option<(&str, &Idempotency)> {
    match cmd {
        Command::OpenPayment {
            merchant_id,
            idempotency: Some(i),
            ..
        }
        | Command::ChangePayment {
            merchant_id,
            idempotency: Some(i),
            ..
        } => Some((merchant_id, i)),
        _ => None,
    }
}
