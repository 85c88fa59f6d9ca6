//! The audit trail: one record per applied command, hash-chained.
//!
//! Record `n`'s hash is SHA-256 over record `n-1`'s hash and record `n`'s fields, so
//! changing, removing or reordering any record breaks every hash after it. Records hold
//! who did what to which token and the outcome — never a PAN, CVC or key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest page [`AuditLog::page`] returns.
pub const AUDIT_PAGE_RECORDS_MAX: usize = 1000;

/// One audited action, as it sits in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 0.
    pub seq: u64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// Hex SHA-256 chaining this record to the one before.
    pub hash: String,
}

/// What was done, by whom, to what, with what outcome. Never card data or keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Leader-stamped time of the command.
    pub at_ms: u64,
    /// `admin`, `system`, or `merchant:<id>:<secret|publishable>`.
    pub actor: String,
    pub merchant_id: Option<String>,
    /// What was done, e.g. `token.create`.
    pub action: String,
    pub token: Option<String>,
    /// `ok`, `already_on_file`, or the refusal code.
    pub outcome: String,
    /// Free text without secrets (key versions, counts, member ids).
    pub detail: String,
}

/// Where a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBreak {
    /// The first record that does not verify.
    pub seq: u64,
    pub reason: String,
}

/// The hash-chained trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// Persistent: a copy of the vault shares it instead of duplicating every record.
    records: imbl::Vector<AuditRecord>,
}

fn genesis() -> [u8; 32] {
    Sha256::digest(b"kura:audit:genesis:v1").into()
}

fn chain(prev: &[u8; 32], seq: u64, e: &AuditEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(e.at_ms.to_be_bytes());
    // Length-prefixed, so no two different records hash the same bytes.
    let optional = |o: &Option<String>| o.clone().map_or(String::from("\u{0}"), |s| s);
    for field in [
        e.actor.as_str(),
        &optional(&e.merchant_id),
        e.action.as_str(),
        &optional(&e.token),
        e.outcome.as_str(),
        e.detail.as_str(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

impl AuditLog {
    /// Appends `e`, chained to the newest record.
    pub fn append(&mut self, e: AuditEntry) {
        let prev = self.head_bytes();
        let seq = self.records.len() as u64;
        let hash = hex::encode(chain(&prev, seq, &e));
        self.records.push_back(AuditRecord {
            seq,
            entry: e,
            hash,
        });
    }

    fn head_bytes(&self) -> [u8; 32] {
        let mut out = genesis();
        if let Some(last) = self.records.last() {
            // A malformed stored hash is caught by `verify`; here it only seeds the chain.
            let _ = hex::decode_to_slice(&last.hash, &mut out);
        }
        out
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.records.len() as u64
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The newest record's hash (the genesis hash when empty), hex.
    pub fn head(&self) -> String {
        hex::encode(self.head_bytes())
    }

    /// Up to `limit` (at most [`AUDIT_PAGE_RECORDS_MAX`]) records from `from_seq` on.
    pub fn page(&self, from_seq: u64, limit: usize) -> Vec<AuditRecord> {
        let from = usize::try_from(from_seq)
            .unwrap_or(usize::MAX)
            .min(self.records.len());
        let to = from
            .saturating_add(limit.min(AUDIT_PAGE_RECORDS_MAX))
            .min(self.records.len());
        // O(log n) to the page, then the page's records.
        self.records
            .skip(from)
            .take(to - from)
            .into_iter()
            .collect()
    }

    /// Recomputes the whole chain; names the first record whose sequence number or hash
    /// does not match.
    pub fn verify(&self) -> Result<u64, AuditBreak> {
        let mut prev = genesis();
        for (i, r) in self.records.iter().enumerate() {
            let seq = i as u64;
            if r.seq != seq {
                return Err(AuditBreak {
                    seq,
                    reason: format!("record at position {seq} says seq {}", r.seq),
                });
            }
            let want = chain(&prev, seq, &r.entry);
            if r.hash != hex::encode(want) {
                return Err(AuditBreak {
                    seq,
                    reason: "its hash does not match its contents and the record before it".into(),
                });
            }
            prev = want;
        }
        Ok(self.len())
    }

    /// Mutable access for tests that tamper with the trail.
    #[cfg(test)]
    pub(crate) fn records_mut(&mut self) -> &mut imbl::Vector<AuditRecord> {
        &mut self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            at_ms: 1000 + i,
            actor: "merchant:m1:secret".into(),
            merchant_id: Some("m1".into()),
            action: "token.create".into(),
            token: Some(format!("tok_{i}")),
            outcome: "ok".into(),
            detail: String::new(),
        }
    }

    fn log(n: u64) -> AuditLog {
        let mut l = AuditLog::default();
        for i in 0..n {
            l.append(entry(i));
        }
        l
    }

    #[test]
    fn an_untouched_chain_verifies_and_pages() {
        let l = log(10);
        assert_eq!(l.verify(), Ok(10));
        assert_eq!(l.page(8, 5).len(), 2);
        assert_eq!(l.page(3, 2)[0].seq, 3);
        assert!(l.page(99, 5).is_empty());
        assert_eq!(l.head(), l.page(9, 1)[0].hash);
        assert_ne!(log(0).head(), l.head());
    }

    #[test]
    fn any_change_names_the_first_changed_record() {
        let base = log(10);
        type Tamper = fn(&mut imbl::Vector<AuditRecord>);
        let cases: [(Tamper, u64); 5] = [
            (|r| r[4].entry.outcome = "token_not_found".into(), 4),
            (|r| r[6].entry.token = Some("tok_x".into()), 6),
            (|r| r[2].entry.merchant_id = None, 2),
            (
                |r| {
                    r.remove(5);
                },
                5,
            ),
            (|r| r.swap(7, 8), 7),
        ];
        for (tamper, first_bad) in cases {
            let mut l = base.clone();
            tamper(l.records_mut());
            assert_eq!(l.verify().map_err(|b| b.seq), Err(first_bad));
        }
        // Recomputing one record's hash after changing it still breaks the next record.
        let mut l = base.clone();
        let recs = l.records_mut();
        recs[3].entry.detail = "forged".into();
        let prev = hex::decode(&recs[2].hash).unwrap().try_into().unwrap();
        recs[3].hash = hex::encode(chain(&prev, 3, &recs[3].entry));
        assert_eq!(l.verify().map_err(|b| b.seq), Err(4));
    }
}
