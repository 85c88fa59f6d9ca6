//! Applied changes not yet written to redb: the vault's write buffer.
//!
//! Writing every applied batch to redb in a transaction of its own rewrote each touched
//! table's path to its root — about 15 KB of pages per entry against 1.6 KB of log. So
//! applies write into an in-memory map instead (`top`), readers see it over the
//! database, and the state machine writes it out in one transaction every
//! [`super::sm::FLUSH_EVERY`], whose pages are then shared by every entry in it (as
//! etcd buffers its batch transaction over bbolt).
//!
//! The maps are persistent (`imbl`): a reader or an apply takes a copy in O(1) and
//! sees exactly the state it copied. While a flush writes one map out (`below`, frozen)
//! the applies go on into a new `top`. A deleted key is a tombstone (`None`), hiding
//! the key in the layers under it until the flush removes it from the database.

use crate::vault::{StorageError, TableId, Tables, TablesMut};
use bytes::Bytes;
use std::cmp::Ordering;
use std::iter::Peekable;
use std::ops::Bound;

/// Changes by key: the table's id then the key; `None` is a deletion.
pub(crate) type Changes = imbl::OrdMap<Bytes, Option<Bytes>>;

/// `key` of `table` as a key of [`Changes`].
fn change_key(table: TableId, key: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&lookup_key(table, key))
}

/// `key` of `table` as a key to look up in [`Changes`] (or a batch's changes), on the
/// stack: a point read looks in up to three maps, and allocates nothing for it.
fn lookup_key(table: TableId, key: &[u8]) -> smallvec::SmallVec<[u8; 80]> {
    let mut k = smallvec::SmallVec::with_capacity(key.len() + 1);
    k.push(table as u8);
    k.extend_from_slice(key);
    k
}

/// A change's table and key.
pub(crate) fn split_key(k: &[u8]) -> Option<(TableId, &[u8])> {
    let (&t, key) = k.split_first()?;
    Some((TableId::from_id(t)?, key))
}

/// `(from, to)` of `table` as bounds of [`Changes`] keys.
fn change_range(
    table: TableId,
    from: Bound<&[u8]>,
    to: Bound<&[u8]>,
) -> (Bound<Bytes>, Bound<Bytes>) {
    let t = table as u8;
    let from = match from {
        Bound::Included(k) => Bound::Included(change_key(table, k)),
        Bound::Excluded(k) => Bound::Excluded(change_key(table, k)),
        Bound::Unbounded => Bound::Included(Bytes::copy_from_slice(&[t])),
    };
    let to = match to {
        Bound::Included(k) => Bound::Included(change_key(table, k)),
        Bound::Excluded(k) => Bound::Excluded(change_key(table, k)),
        Bound::Unbounded => Bound::Excluded(Bytes::copy_from_slice(&[t + 1])),
    };
    (from, to)
}

/// True when `(from, to)` holds no key (an ordered map's range would panic on it).
fn empty_range(from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
            a >= b
        }
        _ => false,
    }
}

/// The entries of `m` in `(from, to)`, ascending or descending.
fn range<'a>(
    m: &'a Changes,
    (from, to): &'a (Bound<Bytes>, Bound<Bytes>),
    reverse: bool,
) -> Box<dyn Iterator<Item = (&'a Bytes, &'a Option<Bytes>)> + 'a> {
    let r = m.range::<_, Bytes>((from.as_ref(), to.as_ref()));
    if reverse {
        Box::new(r.rev())
    } else {
        Box::new(r)
    }
}

/// Two ordered streams of changes as one: on equal keys `upper`'s wins.
struct Merge<'a, I: Iterator<Item = (&'a Bytes, &'a Option<Bytes>)>> {
    upper: Peekable<I>,
    lower: Peekable<I>,
    reverse: bool,
}

impl<'a, I: Iterator<Item = (&'a Bytes, &'a Option<Bytes>)>> Iterator for Merge<'a, I> {
    type Item = (&'a Bytes, &'a Option<Bytes>);

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.upper.peek(), self.lower.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((u, _)), Some((l, _))) => {
                let o = u.cmp(l);
                if self.reverse {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        match order {
            Ordering::Less => self.upper.next(),
            Ordering::Greater => self.lower.next(),
            Ordering::Equal => {
                self.lower.next();
                self.upper.next()
            }
        }
    }
}

/// The vault's tables as `top` over `below` over `base`: reads see the newest layer
/// holding a key; writes go into `top`.
pub struct Layered<B> {
    top: Changes,
    below: Changes,
    base: B,
}

impl<B: Tables> Layered<B> {
    pub(crate) fn new(top: Changes, below: Changes, base: B) -> Layered<B> {
        Layered { top, below, base }
    }

    fn change(&self, table: TableId, key: &[u8]) -> Option<&Option<Bytes>> {
        let k = lookup_key(table, key);
        self.top
            .get(k.as_slice())
            .or_else(|| self.below.get(k.as_slice()))
    }
}

impl<B: Tables> Tables for Layered<B> {
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
        match self.change(table, key) {
            Some(v) => v.as_ref().map(|v| v.to_vec()),
            None => self.base.get(table, key),
        }
    }

    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) {
        if empty_range(from, to) {
            return;
        }
        if self.top.is_empty() && self.below.is_empty() {
            return self.base.scan(table, from, to, reverse, visit);
        }
        let bounds = change_range(table, from, to);
        let changes = Merge {
            upper: range(&self.top, &bounds, reverse).peekable(),
            lower: range(&self.below, &bounds, reverse).peekable(),
            reverse,
        };
        scan_over(changes, &self.base, table, (from, to), reverse, visit);
    }

    fn fail(&self, e: StorageError) {
        self.base.fail(e)
    }

    fn failure(&self) -> Option<StorageError> {
        self.base.failure()
    }
}

/// Scans `base` with `changes` (ordered in the scan's direction, already bounded to
/// the range) over it: a change to a key replaces its stored value, a deletion hides it.
fn scan_over<'a>(
    changes: impl Iterator<Item = (&'a Bytes, &'a Option<Bytes>)>,
    base: &impl Tables,
    table: TableId,
    (from, to): (Bound<&[u8]>, Bound<&[u8]>),
    reverse: bool,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) {
    let mut changes = changes.peekable();
    // `a` comes before `b` in the scan's direction.
    let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
    let mut stopped = false;
    base.scan(table, from, to, reverse, &mut |k, v| {
        // The changes to keys before this one first; a change to this key instead
        // of the stored value.
        while let Some((ck, cv)) = changes.next_if(|(ck, _)| !before(k, &ck[1..])) {
            let same = &ck[1..] == k;
            if let Some(cv) = cv {
                if !visit(&ck[1..], cv) {
                    stopped = true;
                    return false;
                }
            }
            if same {
                return true;
            }
        }
        if !visit(k, v) {
            stopped = true;
            return false;
        }
        true
    });
    if stopped || base.failure().is_some() {
        return;
    }
    for (ck, cv) in changes {
        if let Some(cv) = cv {
            if !visit(&ck[1..], cv) {
                return;
            }
        }
    }
}

/// What one batch of applies changes, over the view it applies to.
///
/// The buffer's maps are shared with every reader's copy, so a write into them copies
/// each node on its path first (about a twentieth of a follower's CPU under payments).
/// A batch writes into a plain ordered map of its own instead, and the state machine
/// merges that into the buffer once the batch is done, when nothing but the odd reader
/// still holds the buffer's nodes.
pub(crate) struct Batch<B> {
    changes: std::collections::BTreeMap<Bytes, Option<Bytes>>,
    under: B,
}

impl<B: Tables> Batch<B> {
    pub(crate) fn new(under: B) -> Batch<B> {
        Batch {
            changes: Default::default(),
            under,
        }
    }

    /// The batch's changes, by key of [`Changes`]; the view under them is dropped.
    pub(crate) fn into_changes(self) -> std::collections::BTreeMap<Bytes, Option<Bytes>> {
        self.changes
    }
}

impl<B: Tables> Tables for Batch<B> {
    fn get(&self, table: TableId, key: &[u8]) -> Option<Vec<u8>> {
        match self.changes.get(lookup_key(table, key).as_slice()) {
            Some(v) => v.as_ref().map(|v| v.to_vec()),
            None => self.under.get(table, key),
        }
    }

    fn scan(
        &self,
        table: TableId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) {
        if empty_range(from, to) {
            return;
        }
        if self.changes.is_empty() {
            return self.under.scan(table, from, to, reverse, visit);
        }
        let (lo, hi) = change_range(table, from, to);
        let r = self.changes.range::<Bytes, _>((lo.as_ref(), hi.as_ref()));
        if reverse {
            scan_over(r.rev(), &self.under, table, (from, to), reverse, visit)
        } else {
            scan_over(r, &self.under, table, (from, to), reverse, visit)
        }
    }

    fn fail(&self, e: StorageError) {
        self.under.fail(e)
    }

    fn failure(&self) -> Option<StorageError> {
        self.under.failure()
    }
}

impl<B: Tables> TablesMut for Batch<B> {
    fn put(&mut self, table: TableId, key: &[u8], value: &[u8]) {
        self.changes
            .insert(change_key(table, key), Some(Bytes::copy_from_slice(value)));
    }

    fn delete(&mut self, table: TableId, key: &[u8]) {
        self.changes.insert(change_key(table, key), None);
    }
}

/// Writes `changes` into `tables`.
pub(crate) fn write_changes(
    changes: &Changes,
    tables: &mut impl TablesMut,
) -> Result<(), StorageError> {
    for (k, v) in changes.iter() {
        let (table, key) =
            split_key(k).ok_or_else(|| StorageError::new("a buffered change has no table"))?;
        match v {
            Some(v) => tables.put(table, key, v),
            None => tables.delete(table, key),
        }
    }
    match tables.failure() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::MemTables;
    use proptest::prelude::*;

    const TABLES: [TableId; 3] = [TableId::Meta, TableId::Tokens, TableId::Audit];

    #[derive(Debug, Clone)]
    enum Op {
        Put(usize, u8, u8),
        Delete(usize, u8),
        /// The top layer becomes the frozen one (a flush begins).
        Freeze,
        /// The frozen layer is written into the base (a flush ends).
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3usize, 0..12u8, any::<u8>()).prop_map(|(t, k, v)| Op::Put(t, k, v)),
            3 => (0..3usize, 0..12u8).prop_map(|(t, k)| Op::Delete(t, k)),
            1 => Just(Op::Freeze),
            1 => Just(Op::Flush),
        ]
    }

    fn bound(b: Option<(bool, u8)>) -> Bound<Vec<u8>> {
        match b {
            None => Bound::Unbounded,
            Some((true, k)) => Bound::Included(vec![k]),
            Some((false, k)) => Bound::Excluded(vec![k]),
        }
    }

    fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        b.as_ref().map(|v| v.as_slice())
    }

    fn scanned(
        t: &impl Tables,
        table: TableId,
        from: &Bound<Vec<u8>>,
        to: &Bound<Vec<u8>>,
        reverse: bool,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        t.scan(table, as_ref(from), as_ref(to), reverse, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < limit
        });
        out
    }

    proptest! {
        /// Whatever was buffered, frozen or flushed, the layers read as one map that
        /// took every change directly; so does a batch of further changes over them,
        /// and the layers once the batch is merged into the top one.
        #[test]
        fn layers_and_a_batch_over_them_read_as_the_changes_applied_in_place(
            ops in proptest::collection::vec(op(), 0..60),
            batch in proptest::collection::vec(op(), 0..30),
            scans in proptest::collection::vec(
                (0..3usize, proptest::option::of((any::<bool>(), 0..13u8)),
                 proptest::option::of((any::<bool>(), 0..13u8)), any::<bool>(), 1..20usize),
                1..8),
        ) {
            let mut model = MemTables::default();
            let (mut base, mut top, mut below) =
                (MemTables::default(), Changes::new(), Changes::new());
            for op in ops {
                match op {
                    Op::Put(t, k, v) => {
                        model.put(TABLES[t], &[k], &[v]);
                        top.insert(change_key(TABLES[t], &[k]), Some(Bytes::from(vec![v])));
                    }
                    Op::Delete(t, k) => {
                        model.delete(TABLES[t], &[k]);
                        top.insert(change_key(TABLES[t], &[k]), None);
                    }
                    Op::Freeze if below.is_empty() => below = std::mem::take(&mut top),
                    Op::Freeze => {}
                    Op::Flush => {
                        write_changes(&below, &mut base).unwrap();
                        below = Changes::new();
                    }
                }
            }
            let layered = Layered::new(top.clone(), below.clone(), &base);
            reads_as(&layered, &model, &scans)?;
            let mut b = Batch::new(layered);
            for op in batch {
                match op {
                    Op::Put(t, k, v) => {
                        model.put(TABLES[t], &[k], &[v]);
                        b.put(TABLES[t], &[k], &[v]);
                    }
                    Op::Delete(t, k) => {
                        model.delete(TABLES[t], &[k]);
                        b.delete(TABLES[t], &[k]);
                    }
                    Op::Freeze | Op::Flush => {}
                }
            }
            reads_as(&b, &model, &scans)?;
            top.extend(b.into_changes());
            reads_as(&Layered::new(top, below, &base), &model, &scans)?;
        }
    }

    /// A scan to compare: table, lower and upper bound (inclusive?, key), reverse, limit.
    type Scan = (usize, Option<(bool, u8)>, Option<(bool, u8)>, bool, usize);

    /// Every get, each of `scans` and the digest of `t` against `model`'s.
    fn reads_as(t: &impl Tables, model: &MemTables, scans: &[Scan]) -> Result<(), TestCaseError> {
        for table in TABLES {
            for k in 0..13u8 {
                prop_assert_eq!(t.get(table, &[k]), model.get(table, &[k]));
            }
        }
        for (i, from, to, reverse, limit) in scans {
            let (from, to) = (bound(*from), bound(*to));
            prop_assert_eq!(
                scanned(t, TABLES[*i], &from, &to, *reverse, *limit),
                scanned(model, TABLES[*i], &from, &to, *reverse, *limit)
            );
        }
        prop_assert_eq!(
            crate::vault::tables::digest(t),
            crate::vault::tables::digest(model)
        );
        Ok(())
    }
}
