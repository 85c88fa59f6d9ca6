//! The vault's storage as the vault sees it: named tables of byte keys kept in order,
//! behind two small traits — [`Tables`] to read, [`TablesMut`] to change — and typed
//! handles ([`Table`]) over them.
//!
//! The vault never knows what holds its tables: [`MemTables`] in the unit and property
//! tests and offline tools, redb in `store/` on a node. Keys are encoded so that byte
//! order is the order of the typed keys (numbers big-endian, strings escaped and
//! terminated), so a range or prefix of typed keys is a range of bytes; values are
//! MessagePack with field names (fields added later read back with their defaults).
//!
//! A storage failure is sticky, like a buffered writer's: the operation goes on against
//! what it could read, and whoever runs it asks [`Tables::failure`] afterwards and
//! discards the result (a write transaction is then never committed). The vault's code
//! stays the domain's code, and nothing half-read is ever made durable or answered.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};

/// Every table the vault keeps. The discriminant is the table's id in snapshots: never
/// reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum TableId {
    /// Small singletons: the clock, counters, the audit head, the fingerprint key.
    Meta = 1,
    Merchants = 2,
    /// Key hash -> whose key.
    KeyIndex = 3,
    Tokens = 4,
    /// (merchant, member, fingerprint) -> card-on-file token.
    Cards = 5,
    /// (key version, token) for every token still holding its sealed card.
    CardsByKey = 6,
    /// (when spent, token) for one-time tokens still holding their card.
    OneTimeBySpend = 7,
    DataKeys = 8,
    Payments = 9,
    /// (merchant, order id) -> payment id.
    Orders = 10,
    /// (merchant, created at, payment id).
    PaymentsByTime = 11,
    /// Ids of payments pending at the acquirer.
    PendingPayments = 12,
    /// (merchant, key) -> idempotency record.
    Idempotency = 13,
    /// (created at, merchant, key).
    IdempotencyByTime = 14,
    /// Sequence number -> audit record.
    Audit = 15,
}

impl TableId {
    /// Every table, in id order.
    pub const ALL: [TableId; 15] = [
        TableId::Meta,
        TableId::Merchants,
        TableId::KeyIndex,
        TableId::Tokens,
        TableId::Cards,
        TableId::CardsByKey,
        TableId::OneTimeBySpend,
        TableId::DataKeys,
        TableId::Payments,
        TableId::Orders,
        TableId::PaymentsByTime,
        TableId::PendingPayments,
        TableId::Idempotency,
        TableId::IdempotencyByTime,
        TableId::Audit,
    ];

    /// The table's name in a database.
    pub fn name(self) -> &'static str {
        match self {
            TableId::Meta => "vault_meta",
            TableId::Merchants => "merchants",
            TableId::KeyIndex => "key_index",
            TableId::Tokens => "tokens",
            TableId::Cards => "cards",
            TableId::CardsByKey => "cards_by_key",
            TableId::OneTimeBySpend => "one_time_by_spend",
            TableId::DataKeys => "data_keys",
            TableId::Payments => "payments",
            TableId::Orders => "orders",
            TableId::PaymentsByTime => "payments_by_time",
            TableId::PendingPayments => "pending_payments",
            TableId::Idempotency => "idempotency",
            TableId::IdempotencyByTime => "idempotency_by_time",
            TableId::Audit => "audit",
        }
    }

    /// The table with id `id`.
    pub fn from_id(id: u8) -> Option<TableId> {
        TableId::ALL.into_iter().find(|t| *t as u8 == id)
    }
}

/// Storage could not be read or written; whatever the operation came to is void.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vault storage failed: {detail}")]
pub struct StorageError {
    pub detail: String,
}

impl StorageError {
    pub fn new(detail: impl Into<String>) -> StorageError {
        StorageError {
            detail: detail.into(),
        }
    }
}

/// Reading the vault's tables.
pub trait Tables {
    /// The value under `key`.
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>>;
    /// Calls `visit` with each entry whose key is within `(from, to)`, in key order
    /// (descending when `reverse`), until it returns false.
    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    );
    /// Records a failure found above the storage (a value that does not decode).
    fn fail(&self, e: StorageError);
    /// The first failure so far, if any: then every answer since is void.
    fn failure(&self) -> Option<StorageError>;
}

/// Changing the vault's tables.
pub trait TablesMut: Tables {
    fn put(&mut self, table: TableId, key: &[u8], value: &[u8]);
    fn delete(&mut self, table: TableId, key: &[u8]);
}

impl<T: Tables + ?Sized> Tables for &T {
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
        (**self).get(table, key)
    }
    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) {
        (**self).scan(table, from, to, reverse, visit)
    }
    fn fail(&self, e: StorageError) {
        (**self).fail(e)
    }
    fn failure(&self) -> Option<StorageError> {
        (**self).failure()
    }
}

impl<T: Tables + ?Sized> Tables for &mut T {
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
        (**self).get(table, key)
    }
    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) {
        (**self).scan(table, from, to, reverse, visit)
    }
    fn fail(&self, e: StorageError) {
        (**self).fail(e)
    }
    fn failure(&self) -> Option<StorageError> {
        (**self).failure()
    }
}

impl<T: TablesMut + ?Sized> TablesMut for &mut T {
    fn put(&mut self, table: TableId, key: &[u8], value: &[u8]) {
        (**self).put(table, key, value)
    }
    fn delete(&mut self, table: TableId, key: &[u8]) {
        (**self).delete(table, key)
    }
}

/// Tables that note every key written through them, for a check that looks only at
/// what one command changed (the simulation's per-command invariant check).
/// With `record` false it only passes writes on.
pub struct Recording<T> {
    inner: T,
    record: bool,
    touched: std::cell::RefCell<Vec<(TableId, Vec<u8>)>>,
}

impl<T> Recording<T> {
    pub fn new(inner: T, record: bool) -> Recording<T> {
        Recording {
            inner,
            record,
            touched: Default::default(),
        }
    }

    /// The keys written (put or deleted) since the last call, in order, repeats kept.
    pub fn take_touched(&self) -> Vec<(TableId, Vec<u8>)> {
        std::mem::take(&mut *self.touched.borrow_mut())
    }
}

impl<T: Tables> Tables for Recording<T> {
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(table, key)
    }
    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) {
        self.inner.scan(table, from, to, reverse, visit)
    }
    fn fail(&self, e: StorageError) {
        self.inner.fail(e)
    }
    fn failure(&self) -> Option<StorageError> {
        self.inner.failure()
    }
}

impl<T: TablesMut> TablesMut for Recording<T> {
    fn put(&mut self, table: TableId, key: &[u8], value: &[u8]) {
        if self.record {
            self.touched.borrow_mut().push((table, key.to_vec()));
        }
        self.inner.put(table, key, value)
    }
    fn delete(&mut self, table: TableId, key: &[u8]) {
        if self.record {
            self.touched.borrow_mut().push((table, key.to_vec()));
        }
        self.inner.delete(table, key)
    }
}

/// An encoded key: on the stack up to 64 bytes (a token id, a merchant and an order id,
/// a sequence number), on the heap beyond.
pub type KeyBytes = smallvec::SmallVec<[u8; 64]>;

/// A key whose encoding sorts as the key does.
pub trait Key: Sized {
    /// Appends the encoding to `out`.
    fn encode(&self, out: &mut KeyBytes);
    /// Reads one key from the front of `bytes`, advancing it.
    fn decode(bytes: &mut &[u8]) -> Option<Self>;

    /// The encoding alone. Every read and write of a row encodes its key: most keys fit
    /// [`KeyBytes`]' inline space, so this allocates nothing.
    fn to_key(&self) -> KeyBytes {
        let mut out = KeyBytes::new();
        self.encode(&mut out);
        out
    }
}

impl Key for u64 {
    fn encode(&self, out: &mut KeyBytes) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode(bytes: &mut &[u8]) -> Option<u64> {
        let (head, rest) = bytes.split_first_chunk::<8>()?;
        *bytes = rest;
        Some(u64::from_be_bytes(*head))
    }
}

impl Key for u32 {
    fn encode(&self, out: &mut KeyBytes) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode(bytes: &mut &[u8]) -> Option<u32> {
        let (head, rest) = bytes.split_first_chunk::<4>()?;
        *bytes = rest;
        Some(u32::from_be_bytes(*head))
    }
}

/// A string as `0x00 0xFF` for each zero byte, the other bytes as they are, then
/// `0x00 0x01`: order-preserving, and no encoded string is a prefix of another's.
impl Key for String {
    fn encode(&self, out: &mut KeyBytes) {
        // Ids and keys hold no zero byte: copied at once, not pushed a byte at a time.
        let mut rest = self.as_bytes();
        while let Some(at) = rest.iter().position(|&b| b == 0) {
            out.extend_from_slice(&rest[..=at]);
            out.push(0xFF);
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
        out.extend_from_slice(&[0, 1]);
    }
    fn decode(bytes: &mut &[u8]) -> Option<String> {
        let mut raw = Vec::new();
        let mut i = 0;
        loop {
            match (bytes.get(i)?, bytes.get(i + 1)) {
                (0, Some(0xFF)) => {
                    raw.push(0);
                    i += 2;
                }
                (0, Some(1)) => break,
                (0, _) => return None,
                (&b, _) => {
                    raw.push(b);
                    i += 1;
                }
            }
        }
        *bytes = &bytes[i + 2..];
        String::from_utf8(raw).ok()
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    fn encode(&self, out: &mut KeyBytes) {
        self.0.encode(out);
        self.1.encode(out);
    }
    fn decode(bytes: &mut &[u8]) -> Option<(A, B)> {
        Some((A::decode(bytes)?, B::decode(bytes)?))
    }
}

impl<A: Key, B: Key, C: Key> Key for (A, B, C) {
    fn encode(&self, out: &mut KeyBytes) {
        self.0.encode(out);
        self.1.encode(out);
        self.2.encode(out);
    }
    fn decode(bytes: &mut &[u8]) -> Option<(A, B, C)> {
        Some((A::decode(bytes)?, B::decode(bytes)?, C::decode(bytes)?))
    }
}

/// Encodes a value as stored: MessagePack, a struct's fields by position (an array, no
/// field names: a card on file's records are a third smaller than with names), byte
/// strings as bytes.
///
/// Position is the schema, so a stored type follows two rules: a new field goes at the
/// end with `#[serde(default)]`, and no field is skipped when serializing
/// (`skip_serializing_if` would shift every field after it; a flattened struct is
/// written with names). Values written with field names (before kura stored by
/// position) still decode: the decoder takes a map for a struct as well as an array.
pub fn encode_value<V: Serialize + ?Sized>(v: &V) -> Vec<u8> {
    // Sized for most rows at once (a payment, a token and its sealed card), instead of
    // growing from nothing by doubling.
    let mut out = Vec::with_capacity(256);
    rmp_serde::encode::write(&mut out, v).expect("vault values serialize");
    out
}

/// Decodes a stored value.
pub fn decode_value<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, StorageError> {
    rmp_serde::from_slice(bytes).map_err(|e| StorageError::new(format!("undecodable value: {e}")))
}

/// The smallest byte string greater than every string starting with `prefix` (`None`:
/// there is none, the prefix is all `0xFF`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A typed table: keys `K`, values `V`.
pub struct Table<K, V> {
    pub id: TableId,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

impl<K: Key, V: Serialize + DeserializeOwned> Table<K, V> {
    pub const fn new(id: TableId) -> Table<K, V> {
        Table {
            id,
            _types: PhantomData,
        }
    }

    /// The key `bytes` encode, if they encode exactly one.
    pub fn decode_key(&self, bytes: &[u8]) -> Option<K> {
        let mut rest = bytes;
        K::decode(&mut rest).filter(|_| rest.is_empty())
    }

    fn decode_or_fail<S: Tables + ?Sized>(&self, s: &S, bytes: &[u8]) -> Option<V> {
        match decode_value(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                s.fail(StorageError::new(format!(
                    "{}: {}",
                    self.id.name(),
                    e.detail
                )));
                None
            }
        }
    }

    pub fn get<S: Tables + ?Sized>(&self, s: &S, key: &K) -> Option<V> {
        let bytes = s.get(self.id, &key.to_key())?;
        self.decode_or_fail(s, &bytes)
    }

    pub fn contains<S: Tables + ?Sized>(&self, s: &S, key: &K) -> bool {
        s.get(self.id, &key.to_key()).is_some()
    }

    pub fn put<S: TablesMut + ?Sized>(&self, s: &mut S, key: &K, value: &V) {
        s.put(self.id, &key.to_key(), &encode_value(value));
    }

    pub fn delete<S: TablesMut + ?Sized>(&self, s: &mut S, key: &K) {
        s.delete(self.id, &key.to_key());
    }

    /// Visits the entries with keys in `(from, to)` in order (descending when
    /// `reverse`) until `visit` returns false.
    pub fn scan<S: Tables + ?Sized>(
        &self,
        s: &S,
        from: Bound<&K>,
        to: Bound<&K>,
        reverse: bool,
        mut visit: impl FnMut(K, V) -> bool,
    ) {
        let (from, to) = (from.map(Key::to_key), to.map(Key::to_key));
        self.scan_bytes(s, as_ref(&from), as_ref(&to), reverse, &mut visit);
    }

    /// Visits the entries whose keys start with `prefix` (the first components of a
    /// tuple key), in order, until `visit` returns false.
    pub fn scan_prefix<S: Tables + ?Sized, P: Key>(
        &self,
        s: &S,
        prefix: &P,
        reverse: bool,
        mut visit: impl FnMut(K, V) -> bool,
    ) {
        let start = prefix.to_key();
        let end = prefix_end(&start);
        let to = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        self.scan_bytes(s, Bound::Included(&start), to, reverse, &mut visit);
    }

    fn scan_bytes<S: Tables + ?Sized>(
        &self,
        s: &S,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(K, V) -> bool,
    ) {
        let mut failed = None;
        s.scan(self.id, from, to, reverse, &mut |k, v| {
            let mut kb = k;
            let key = K::decode(&mut kb).filter(|_| kb.is_empty());
            match (key, decode_value::<V>(v)) {
                (Some(k), Ok(v)) => visit(k, v),
                (None, _) => {
                    failed = Some(StorageError::new(format!(
                        "{}: undecodable key",
                        self.id.name()
                    )));
                    false
                }
                (_, Err(e)) => {
                    failed = Some(StorageError::new(format!(
                        "{}: {}",
                        self.id.name(),
                        e.detail
                    )));
                    false
                }
            }
        });
        if let Some(e) = failed {
            s.fail(e);
        }
    }

    /// The first entry (the last when `reverse`).
    pub fn first<S: Tables + ?Sized>(&self, s: &S, reverse: bool) -> Option<(K, V)> {
        let mut out = None;
        self.scan(s, Bound::Unbounded, Bound::Unbounded, reverse, |k, v| {
            out = Some((k, v));
            false
        });
        out
    }

    /// Every entry, in key order (small tables only).
    pub fn all<S: Tables + ?Sized>(&self, s: &S) -> Vec<(K, V)> {
        let mut out = Vec::new();
        self.scan(s, Bound::Unbounded, Bound::Unbounded, false, |k, v| {
            out.push((k, v));
            true
        });
        out
    }
}

/// SHA-256 over every table's entries in order, hex: equal for equal vaults, whatever
/// holds them.
pub fn digest(s: &(impl Tables + ?Sized)) -> String {
    digest_rows(s).0
}

/// [`digest`], and how many rows it hashed.
pub fn digest_rows(s: &(impl Tables + ?Sized)) -> (String, u64) {
    digest_rows_unless(s, &AtomicBool::new(false)).expect("a hash nothing stops ends")
}

/// [`digest_rows`], given up (`None`) as soon as `stop` is set, between two rows: a
/// hash that has waited past any use lets go of the read it holds open.
pub fn digest_rows_unless(s: &(impl Tables + ?Sized), stop: &AtomicBool) -> Option<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut rows = 0;
    let mut stopped = false;
    for t in TableId::ALL {
        s.scan(t, Bound::Unbounded, Bound::Unbounded, false, &mut |k, v| {
            if stop.load(Ordering::Relaxed) {
                stopped = true;
                return false;
            }
            h.update([t as u8]);
            h.update((k.len() as u64).to_be_bytes());
            h.update(k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
            rows += 1;
            true
        });
        if stopped {
            return None;
        }
    }
    Some((hex::encode(h.finalize()), rows))
}

fn as_ref(b: &Bound<KeyBytes>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The vault's tables in memory: for tests, offline tools and snapshot checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemTables {
    tables: BTreeMap<TableId, BTreeMap<Vec<u8>, Vec<u8>>>,
    failure: RefCell<Option<StorageError>>,
}

impl Tables for MemTables {
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
        self.tables.get(&table)?.get(key).cloned()
    }

    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) {
        let Some(t) = self.tables.get(&table) else {
            return;
        };
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) =
            (from, to)
        {
            // BTreeMap::range panics on an inverted or empty exclusive range; storage
            // returns nothing.
            if a > b || (a == b && !matches!((from, to), (Bound::Included(_), Bound::Included(_))))
            {
                return;
            }
        }
        let range = t.range::<[u8], _>((from, to));
        if reverse {
            for (k, v) in range.rev() {
                if !visit(k, v) {
                    return;
                }
            }
        } else {
            for (k, v) in range {
                if !visit(k, v) {
                    return;
                }
            }
        }
    }

    fn fail(&self, e: StorageError) {
        self.failure.borrow_mut().get_or_insert(e);
    }

    fn failure(&self) -> Option<StorageError> {
        self.failure.borrow().clone()
    }
}

impl TablesMut for MemTables {
    fn put(&mut self, table: TableId, key: &[u8], value: &[u8]) {
        self.tables
            .entry(table)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
    }

    fn delete(&mut self, table: TableId, key: &[u8]) {
        if let Some(t) = self.tables.get_mut(&table) {
            t.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_are_stored_by_position_and_values_stored_with_names_still_read() {
        #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
        struct Stored {
            merchant_id: String,
            member_id: Option<String>,
            #[serde(with = "super::super::hex_bytes")]
            ciphertext: Vec<u8>,
            #[serde(default)]
            added_later: Option<u64>,
        }
        let v = Stored {
            merchant_id: "mer_1".into(),
            member_id: None,
            ciphertext: vec![7; 32],
            added_later: Some(3),
        };
        let stored = encode_value(&v);
        let named = rmp_serde::to_vec_named(&v).unwrap();
        // No field names; the ciphertext as its 32 bytes.
        assert!(!stored.windows(11).any(|w| w == b"merchant_id"));
        assert!(stored.len() < 32 + 16, "{}", stored.len());
        assert!(named.len() > stored.len() + 30);
        assert_eq!(decode_value::<Stored>(&stored).unwrap(), v);
        assert_eq!(decode_value::<Stored>(&named).unwrap(), v);
        // A field added at the end reads as its default from a value written before it.
        #[derive(Serialize)]
        struct Before<'a>(&'a str, Option<String>, &'a serde_bytes_like::B<'a>);
        let before = encode_value(&Before("mer_1", None, &serde_bytes_like::B(&[7; 32])));
        let read: Stored = decode_value(&before).unwrap();
        assert_eq!(read.added_later, None);
        assert_eq!(read.ciphertext, vec![7; 32]);
    }

    /// Bytes that serialize as a byte string.
    mod serde_bytes_like {
        pub struct B<'a>(pub &'a [u8]);
        impl serde::Serialize for B<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
    }

    proptest! {
        #[test]
        fn key_encodings_sort_as_their_keys(
            a in ("[a\\x00b]{0,4}", any::<u64>(), "[\\x00-\\x02z]{0,3}"),
            b in ("[a\\x00b]{0,4}", any::<u64>(), "[\\x00-\\x02z]{0,3}"),
        ) {
            let a: (String, u64, String) = a;
            let b: (String, u64, String) = b;
            prop_assert_eq!(a.to_key().cmp(&b.to_key()), a.cmp(&b));
            let mut bytes = a.to_key();
            bytes.extend_from_slice(b"tail");
            let mut rest = bytes.as_slice();
            prop_assert_eq!(<(String, u64, String)>::decode(&mut rest), Some(a));
            prop_assert_eq!(rest, b"tail");
        }
    }

    #[test]
    fn a_string_key_escapes_its_zero_bytes_and_ends_in_zero_one() {
        // The stored form: a vault written before must read back under the same keys.
        for (s, want) in [
            ("", &b"\x00\x01"[..]),
            ("ab", b"ab\x00\x01"),
            ("\0", b"\x00\xff\x00\x01"),
            ("a\0\0b\0", b"a\x00\xff\x00\xffb\x00\xff\x00\x01"),
        ] {
            assert_eq!(s.to_owned().to_key().as_slice(), want, "{s:?}");
        }
    }

    /// Tables that raise `stop` once `after` rows have been read (the hash's time limit
    /// going off in the middle of it), counting every row read.
    struct StopAfter<'a> {
        inner: MemTables,
        stop: &'a AtomicBool,
        after: u64,
        read: std::cell::Cell<u64>,
    }

    impl Tables for StopAfter<'_> {
        fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
            self.inner.get(table, key)
        }
        fn scan(
            &self,
            table: TableId,
            from: Bound<&[u8]>,
            to: Bound<&[u8]>,
            reverse: bool,
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) {
            self.inner.scan(table, from, to, reverse, &mut |k, v| {
                self.read.set(self.read.get() + 1);
                if self.read.get() > self.after {
                    self.stop.store(true, Ordering::Relaxed);
                }
                visit(k, v)
            })
        }
        fn fail(&self, e: StorageError) {
            self.inner.fail(e)
        }
        fn failure(&self) -> Option<StorageError> {
            self.inner.failure()
        }
    }

    #[test]
    fn a_hash_stops_at_the_next_row_once_told_and_gives_no_answer() {
        let mut inner = MemTables::default();
        for t in [TableId::Meta, TableId::Orders, TableId::Audit] {
            for i in 0..10u64 {
                inner.put(t, &i.to_be_bytes(), b"v");
            }
        }
        let (want, rows) = digest_rows(&inner);
        assert_eq!(rows, 30);
        let unstopped = AtomicBool::new(false);
        assert_eq!(
            digest_rows_unless(&inner, &unstopped),
            Some((want, rows)),
            "a hash nothing stops is the plain hash"
        );
        let stop = AtomicBool::new(false);
        let tables = StopAfter {
            inner,
            stop: &stop,
            after: 4,
            read: Default::default(),
        };
        assert_eq!(digest_rows_unless(&tables, &stop), None);
        // The row that raised the flag was the last one read: no other table was scanned.
        assert_eq!(tables.read.get(), 5);
    }

    const T: Table<(String, String), u64> = Table::new(TableId::Orders);

    #[test]
    fn prefix_scans_see_only_their_prefix_in_either_direction() {
        let mut s = MemTables::default();
        for (a, b, n) in [
            ("m", "x", 1),
            ("m", "y", 2),
            ("m\0", "z", 3),
            ("ma", "a", 4),
            ("l", "q", 5),
        ] {
            T.put(&mut s, &(a.into(), b.into()), &n);
        }
        let mut seen = Vec::new();
        T.scan_prefix(&s, &"m".to_owned(), false, |_, v| {
            seen.push(v);
            true
        });
        assert_eq!(seen, vec![1, 2]);
        seen.clear();
        T.scan_prefix(&s, &"m".to_owned(), true, |_, v| {
            seen.push(v);
            true
        });
        assert_eq!(seen, vec![2, 1]);
        assert_eq!(T.first(&s, true).map(|(_, v)| v), Some(4));
        T.delete(&mut s, &("ma".into(), "a".into()));
        assert_eq!(T.first(&s, true).map(|(_, v)| v), Some(3));
        assert_eq!(s.failure(), None);
    }

    #[test]
    fn a_value_that_does_not_decode_is_a_sticky_failure() {
        let mut s = MemTables::default();
        s.put(
            TableId::Orders,
            &("a".to_owned(), "b".to_owned()).to_key(),
            b"\xc1",
        );
        assert_eq!(T.get(&s, &("a".into(), "b".into())), None);
        assert!(s.failure().unwrap().detail.contains("orders"));
        // Later reads that succeed do not clear it.
        assert_eq!(T.get(&s, &("x".into(), "y".into())), None);
        assert!(s.failure().is_some());
    }

    #[test]
    fn every_table_id_round_trips_and_names_are_unique() {
        let mut names = std::collections::BTreeSet::new();
        for t in TableId::ALL {
            assert_eq!(TableId::from_id(t as u8), Some(t));
            assert!(names.insert(t.name()));
        }
        assert_eq!(TableId::from_id(0), None);
    }
}
