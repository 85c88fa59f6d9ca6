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

use super::tables::{MemTables, Table, TableId, Tables, TablesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ops::Bound;

/// Largest page [`AuditLog::page`] returns.
pub const AUDIT_PAGE_RECORDS_MAX: usize = 1000;

/// One audited action, as it sits in the chain.
///
/// Readable formats (the API, exports) show it flat: `seq`, the entry's fields, `hash`
/// in hex. Stored (a binary format) it is `[seq, entry by position, hash as 32 bytes]`,
/// a third of the bytes of the named form, which still decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain, from 0.
    pub seq: u64,
    pub entry: AuditEntry,
    /// Hex SHA-256 chaining this record to the one before.
    pub hash: String,
}

/// [`AuditRecord`] in readable formats.
#[derive(Serialize, Deserialize)]
struct FlatRecord<E> {
    seq: u64,
    #[serde(flatten)]
    entry: E,
    hash: String,
}

impl Serialize for AuditRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return FlatRecord {
                seq: self.seq,
                entry: &self.entry,
                hash: self.hash.clone(),
            }
            .serialize(s);
        }
        (self.seq, &self.entry, StoredHash(&self.hash)).serialize(s)
    }
}

impl<'de> Deserialize<'de> for AuditRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AuditRecord, D::Error> {
        /// The stored form, or the named one written before it.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Compact(u64, AuditEntry, StoredHashOwned),
            Named(FlatRecord<AuditEntry>),
        }
        let flat = if d.is_human_readable() {
            FlatRecord::deserialize(d)?
        } else {
            match Stored::deserialize(d)? {
                Stored::Compact(seq, entry, hash) => FlatRecord {
                    seq,
                    entry,
                    hash: hash.0,
                },
                Stored::Named(flat) => flat,
            }
        };
        Ok(AuditRecord {
            seq: flat.seq,
            entry: flat.entry,
            hash: flat.hash,
        })
    }
}

/// A record's hash as stored: its 32 bytes (hex only if it is not a hash's hex, which
/// only a damaged record holds; `verify` then names it).
struct StoredHash<'a>(&'a str);

impl Serialize for StoredHash<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::hex_bytes::text::serialize(self.0, s)
    }
}

/// What [`StoredHash`] wrote, back as hex.
struct StoredHashOwned(String);

impl<'de> Deserialize<'de> for StoredHashOwned {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StoredHashOwned, D::Error> {
        super::hex_bytes::text::deserialize(d).map(StoredHashOwned)
    }
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

/// Where the audit trail's records live.
const RECORDS: Table<u64, AuditRecord> = Table::new(TableId::Audit);
/// The chain's head, kept beside the records so appending reads nothing else.
const HEAD: Table<String, AuditHead> = Table::new(TableId::Meta);
const HEAD_KEY: &str = "audit_head";

/// How many records the chain holds and the newest one's hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AuditHead {
    records: u64,
    /// Hex; empty while the chain is empty (its head is then the genesis hash).
    hash: String,
}

/// The hash-chained trail, over the vault's tables (`S`: a reference to them, or
/// [`MemTables`] owned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditLog<S = MemTables> {
    tables: S,
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

impl<S> AuditLog<S> {
    /// The trail kept in `tables`.
    pub fn new(tables: S) -> AuditLog<S> {
        AuditLog { tables }
    }
}

impl<S: TablesMut> AuditLog<S> {
    /// Appends `e`, chained to the newest record.
    pub fn append(&mut self, e: AuditEntry) {
        let head = self.stored_head();
        let seq = head.records;
        let hash = super::hex_bytes::lower(&chain(&head_bytes(&head.hash), seq, &e));
        let head = AuditHead {
            records: seq + 1,
            hash: hash.clone(),
        };
        RECORDS.put(
            &mut self.tables,
            &seq,
            &AuditRecord {
                seq,
                entry: e,
                hash,
            },
        );
        HEAD.put(&mut self.tables, &HEAD_KEY.to_owned(), &head);
    }
}

/// The head's bytes from its hex (the genesis hash for an empty chain).
fn head_bytes(hex_hash: &str) -> [u8; 32] {
    let mut out = genesis();
    // A malformed stored hash is caught by `verify`; here it only seeds the chain.
    let _ = hex::decode_to_slice(hex_hash, &mut out);
    out
}

impl<S: Tables> AuditLog<S> {
    fn stored_head(&self) -> AuditHead {
        HEAD.get(&self.tables, &HEAD_KEY.to_owned())
            .unwrap_or_default()
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.stored_head().records
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest record's hash (the genesis hash when empty), hex.
    pub fn head(&self) -> String {
        super::hex_bytes::lower(&head_bytes(&self.stored_head().hash))
    }

    /// Up to `limit` (at most [`AUDIT_PAGE_RECORDS_MAX`]) records from `from_seq` on.
    pub fn page(&self, from_seq: u64, limit: usize) -> Vec<AuditRecord> {
        let limit = limit.min(AUDIT_PAGE_RECORDS_MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        RECORDS.scan(
            &self.tables,
            Bound::Included(&from_seq),
            Bound::Unbounded,
            false,
            |_, r| {
                out.push(r);
                out.len() < limit
            },
        );
        out
    }

    /// Recomputes the whole chain, reading it in order; names the first record whose
    /// sequence number or hash does not match, or a head that is not the last record's.
    pub fn verify(&self) -> Result<u64, AuditBreak> {
        let mut prev = genesis();
        let mut next = 0u64;
        let mut broken = None;
        RECORDS.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |pos, r| {
                let seq = next;
                if pos != seq || r.seq != seq {
                    broken = Some(AuditBreak {
                        seq,
                        reason: format!("record at position {seq} says seq {}", r.seq),
                    });
                    return false;
                }
                let want = chain(&prev, seq, &r.entry);
                if r.hash != super::hex_bytes::lower(&want) {
                    broken = Some(AuditBreak {
                        seq,
                        reason: "its hash does not match its contents and the record before it"
                            .into(),
                    });
                    return false;
                }
                prev = want;
                next += 1;
                true
            },
        );
        if let Some(b) = broken {
            return Err(b);
        }
        let head = self.stored_head();
        if head.records != next || head_bytes(&head.hash) != prev {
            return Err(AuditBreak {
                seq: next.min(head.records),
                reason: format!(
                    "the recorded head names {} records, the chain holds {next}",
                    head.records
                ),
            });
        }
        Ok(next)
    }

    /// The hash of record `seq`, hex.
    pub fn hash_at(&self, seq: u64) -> Option<String> {
        RECORDS.get(&self.tables, &seq).map(|r| r.hash)
    }

    /// True when the newest record is a signature of the head before it (nothing new
    /// to sign).
    pub fn head_is_signed(&self) -> bool {
        RECORDS
            .first(&self.tables, true)
            .is_some_and(|(_, r)| r.entry.action == SIGN_ACTION && r.entry.outcome == "ok")
    }

    /// Checks every signature record against the chain and `mac`. Call after
    /// [`AuditLog::verify`]: a signature proves the chain only if the chain verifies.
    pub fn check_signatures(&self, mac: impl Fn(&SignedHead) -> MacCheck) -> SignatureReport {
        let mut report = SignatureReport::default();
        // Records after the newest valid signature so far (cleared by each one).
        let mut tail: (u64, Option<u64>) = (0, None);
        RECORDS.scan(
            &self.tables,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            |_, r| {
                if r.entry.action != SIGN_ACTION {
                    tail.0 += 1;
                    tail.1.get_or_insert(r.entry.at_ms);
                    return true;
                }
                if r.entry.outcome != "ok" {
                    return true;
                }
                let Some(signed) = SignedHead::from_detail(&r.entry.detail) else {
                    report.invalid.push(r.seq);
                    return true;
                };
                let names_this_chain = signed.records == r.seq
                    && signed.records > 0
                    && self.hash_at(signed.records - 1).as_deref() == Some(signed.head.as_str());
                match (names_this_chain, mac(&signed)) {
                    (true, MacCheck::Valid) => {
                        report.verified += 1;
                        report.signed_through_records = signed.records;
                        report.last_signed_at_ms = Some(r.entry.at_ms);
                        tail = (0, None);
                    }
                    (true, MacCheck::UnknownKek) => report.unverifiable += 1,
                    _ => report.invalid.push(r.seq),
                }
                true
            },
        );
        (report.unsigned_tail_records, report.unsigned_since_ms) = tail;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_stored_by_position_and_shown_flat() {
        let mut log: AuditLog = AuditLog::default();
        log.append(entry(1));
        let r = log.page(0, 1).remove(0);
        // Shown flat, as before.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["seq"], 0);
        assert_eq!(json["action"], "token.create");
        assert_eq!(json["hash"], r.hash.as_str());
        assert_eq!(serde_json::from_value::<AuditRecord>(json).unwrap(), r);
        // Stored by position with the hash as bytes, and read back.
        let stored = crate::vault::tables::encode_value(&r);
        let named = rmp_serde::to_vec_named(&FlatRecord {
            seq: r.seq,
            entry: &r.entry,
            hash: r.hash.clone(),
        })
        .unwrap();
        assert!(
            stored.len() + 60 < named.len(),
            "{} vs {}",
            stored.len(),
            named.len()
        );
        let back: AuditRecord = crate::vault::tables::decode_value(&stored).unwrap();
        assert_eq!(back, r);
        // A record stored with names (before) still reads.
        let old: AuditRecord = crate::vault::tables::decode_value(&named).unwrap();
        assert_eq!(old, r);
        // A damaged hash (not a hash's hex) is kept as it is, for `verify` to name.
        let damaged = AuditRecord {
            hash: "xyz".into(),
            ..r.clone()
        };
        let back: AuditRecord =
            crate::vault::tables::decode_value(&crate::vault::tables::encode_value(&damaged))
                .unwrap();
        assert_eq!(back, damaged);
    }

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

    /// Rewrites the stored records as `f` leaves them, each at its position (the head
    /// stays as it was): what someone who can write the tables could do.
    fn tamper(l: &mut AuditLog, f: impl FnOnce(&mut Vec<AuditRecord>)) {
        let mut records = l.page(0, AUDIT_PAGE_RECORDS_MAX);
        for r in &records {
            RECORDS.delete(&mut l.tables, &r.seq);
        }
        f(&mut records);
        for (pos, r) in records.iter().enumerate() {
            RECORDS.put(&mut l.tables, &(pos as u64), r);
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
        type Tamper = fn(&mut Vec<AuditRecord>);
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
        for (tamper_with, first_bad) in cases {
            let mut l = base.clone();
            tamper(&mut l, tamper_with);
            assert_eq!(l.verify().map_err(|b| b.seq), Err(first_bad));
        }
        // Recomputing one record's hash after changing it still breaks the next record.
        let mut l = base.clone();
        tamper(&mut l, |recs| {
            recs[3].entry.detail = "forged".into();
            let prev = hex::decode(&recs[2].hash).unwrap().try_into().unwrap();
            recs[3].hash = hex::encode(chain(&prev, 3, &recs[3].entry));
        });
        assert_eq!(l.verify().map_err(|b| b.seq), Err(4));
        // Cutting the newest records off, however cleanly, leaves a head naming more.
        let mut l = base.clone();
        tamper(&mut l, |recs| recs.truncate(8));
        assert_eq!(l.verify().map_err(|b| b.seq), Err(8));
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
        let mut forged = AuditLog::<MemTables>::default();
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
        let mut kept = AuditLog::<MemTables>::default();
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
