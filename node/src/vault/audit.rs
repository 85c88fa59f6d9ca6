//! The audit trail: one record per applied command, hash-chained, its head signed.
//!
//! Record `n`'s hash is SHA-256 over record `n-1`'s hash and record `n`'s fields, so
//! changing, removing or reordering any record breaks every hash after it. Records hold
//! who did what to which token and the outcome — never a PAN, CVC or key.
//!
//! A chain alone proves nothing to someone who can write the state: they can rebuild
//! it. So the leader regularly signs the head — an HMAC under a key only the KEK
//! provider holds, never in the log — and records the signature as an `audit.sign`
//! record in the chain itself. A signature that verifies proves every record up to the
//! head it names; operators also export signed heads (`kura audit head`) to catch a
//! chain cut back to an older signature.

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

/// The action of a record that carries a signature of the chain's head.
pub const SIGN_ACTION: &str = "audit.sign";

/// A signed head: the first `records` records end in `head`, signed under KEK `kek_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub records: u64,
    pub head: String,
    pub kek_id: String,
    /// Hex HMAC-SHA256 over [`SignedHead::message`].
    pub mac: String,
}

impl SignedHead {
    /// What the MAC covers.
    pub fn message(records: u64, head: &str) -> String {
        format!("kura:audit-head:v1|{records}|{head}")
    }

    /// The record detail that carries it.
    pub fn to_detail(&self) -> String {
        format!(
            "records={} head={} kek={} mac={}",
            self.records, self.head, self.kek_id, self.mac
        )
    }

    /// Reads a record detail written by [`SignedHead::to_detail`].
    pub fn from_detail(detail: &str) -> Option<SignedHead> {
        let mut f = detail.split(' ');
        let mut take = |k: &str| f.next()?.strip_prefix(k).map(str::to_owned);
        Some(SignedHead {
            records: take("records=")?.parse().ok()?,
            head: take("head=")?,
            kek_id: take("kek=")?,
            mac: take("mac=")?,
        })
    }
}

/// What checking a signature's MAC came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacCheck {
    Valid,
    Invalid,
    /// Signed under a KEK this checker does not hold.
    UnknownKek,
}

/// The signatures found in a chain and what they prove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SignatureReport {
    pub verified: u64,
    /// Under a KEK no longer held (rotated away): neither proven nor refuted.
    pub unverifiable: u64,
    /// Sequence numbers of signature records that do not verify (forged, or naming a
    /// head the chain does not have): the trail was tampered with.
    pub invalid: Vec<u64>,
    /// Records proven by the newest valid signature.
    pub signed_through_records: u64,
    /// When the newest valid signature was made.
    pub last_signed_at_ms: Option<u64>,
    /// Records after the newest valid signature (besides signature records).
    pub unsigned_tail_records: u64,
    /// When the oldest record after the newest valid signature was made.
    pub unsigned_since_ms: Option<u64>,
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

    /// The hash of record `seq`, hex.
    pub fn hash_at(&self, seq: u64) -> Option<&str> {
        self.records
            .get(usize::try_from(seq).ok()?)
            .map(|r| r.hash.as_str())
    }

    /// True when the newest record is a signature of the head before it (nothing new
    /// to sign).
    pub fn head_is_signed(&self) -> bool {
        self.records
            .last()
            .is_some_and(|r| r.entry.action == SIGN_ACTION && r.entry.outcome == "ok")
    }

    /// Checks every signature record against the chain and `mac`. Call after
    /// [`AuditLog::verify`]: a signature proves the chain only if the chain verifies.
    pub fn check_signatures(&self, mac: impl Fn(&SignedHead) -> MacCheck) -> SignatureReport {
        let mut report = SignatureReport::default();
        for r in self.records.iter() {
            if r.entry.action != SIGN_ACTION || r.entry.outcome != "ok" {
                continue;
            }
            let Some(signed) = SignedHead::from_detail(&r.entry.detail) else {
                report.invalid.push(r.seq);
                continue;
            };
            let names_this_chain = signed.records == r.seq
                && signed.records > 0
                && self.hash_at(signed.records - 1) == Some(signed.head.as_str());
            match (names_this_chain, mac(&signed)) {
                (true, MacCheck::Valid) => {
                    report.verified += 1;
                    report.signed_through_records = signed.records;
                    report.last_signed_at_ms = Some(r.entry.at_ms);
                }
                (true, MacCheck::UnknownKek) => report.unverifiable += 1,
                _ => report.invalid.push(r.seq),
            }
        }
        let tail = self
            .records
            .skip(report.signed_through_records as usize)
            .into_iter()
            .filter(|r| r.entry.action != SIGN_ACTION);
        for r in tail {
            report.unsigned_tail_records += 1;
            report.unsigned_since_ms.get_or_insert(r.entry.at_ms);
        }
        report
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

    /// A MAC a test can compute: the "key" is a string only the signer knows.
    fn fake_mac(key: &str, s: &SignedHead) -> String {
        hex::encode(Sha256::digest(format!(
            "{key}|{}",
            SignedHead::message(s.records, &s.head)
        )))
    }

    fn sign(l: &mut AuditLog, key: &str, at_ms: u64) {
        let mut s = SignedHead {
            records: l.len(),
            head: l.head(),
            kek_id: "kek_a".into(),
            mac: String::new(),
        };
        s.mac = fake_mac(key, &s);
        l.append(AuditEntry {
            at_ms,
            actor: "system".into(),
            merchant_id: None,
            action: SIGN_ACTION.into(),
            token: None,
            outcome: "ok".into(),
            detail: s.to_detail(),
        });
    }

    fn checker(key: &'static str) -> impl Fn(&SignedHead) -> MacCheck {
        move |s| match s.kek_id.as_str() {
            "kek_a" if s.mac == fake_mac(key, s) => MacCheck::Valid,
            "kek_a" => MacCheck::Invalid,
            _ => MacCheck::UnknownKek,
        }
    }

    #[test]
    fn signatures_prove_the_records_before_them_and_the_tail_is_reported() {
        let mut l = log(5);
        sign(&mut l, "secret", 2000);
        for i in 5..8 {
            l.append(entry(i));
        }
        sign(&mut l, "secret", 3000);
        l.append(entry(9));
        assert!(l.verify().is_ok());
        let r = l.check_signatures(checker("secret"));
        assert_eq!((r.verified, r.unverifiable), (2, 0));
        assert!(r.invalid.is_empty());
        assert_eq!(r.signed_through_records, 9);
        assert_eq!(r.last_signed_at_ms, Some(3000));
        assert_eq!(
            (r.unsigned_tail_records, r.unsigned_since_ms),
            (1, Some(1009))
        );
        assert!(!l.head_is_signed());
        sign(&mut l, "secret", 4000);
        assert!(l.head_is_signed());
    }

    #[test]
    fn a_rebuilt_chain_verifies_but_its_forged_signatures_do_not() {
        // Whoever can write the state changes record 2 and rebuilds every hash, the
        // signatures included — but cannot make their MACs without the key.
        let mut honest = log(4);
        sign(&mut honest, "secret", 2000);
        let mut forged = AuditLog::default();
        for (i, r) in honest.page(0, 100).into_iter().enumerate() {
            let mut e = r.entry;
            if i == 2 {
                e.outcome = "token_not_found".into();
            }
            if e.action == SIGN_ACTION {
                let mut s = SignedHead::from_detail(&e.detail).unwrap();
                s.head = forged.head();
                s.mac = fake_mac("guess", &s);
                e.detail = s.to_detail();
            }
            forged.append(e);
        }
        assert!(forged.verify().is_ok(), "the hash chain alone is rebuilt");
        let r = forged.check_signatures(checker("secret"));
        assert_eq!(r.invalid, vec![4]);
        assert_eq!(r.verified, 0);
        // Keeping the honest signature record unchanged does not help either: it names
        // a head this chain does not have.
        let mut kept = AuditLog::default();
        for (i, r) in honest.page(0, 100).into_iter().enumerate() {
            let mut e = r.entry;
            if i == 2 {
                e.outcome = "token_not_found".into();
            }
            kept.append(e);
        }
        assert_eq!(kept.check_signatures(checker("secret")).invalid, vec![4]);
        // Under a KEK this checker does not hold: neither proven nor refuted.
        let mut other = log(2);
        let mut s = SignedHead {
            records: 2,
            head: other.head(),
            kek_id: "kek_gone".into(),
            mac: "00".into(),
        };
        s.mac = fake_mac("x", &s);
        other.append(AuditEntry {
            detail: s.to_detail(),
            action: SIGN_ACTION.into(),
            outcome: "ok".into(),
            ..entry(3)
        });
        let r = other.check_signatures(checker("secret"));
        assert_eq!((r.verified, r.unverifiable, r.invalid.len()), (0, 1, 0));
        assert_eq!(r.unsigned_tail_records, 2);
    }
}
