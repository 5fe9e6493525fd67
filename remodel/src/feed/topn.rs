//! Incremental maintenance of `order_by(index).limit(n)` results.
//!
//! The set holds the first `n` qualifying rows in index order (ties are impossible: order
//! keys end with the primary key). A write outside the set costs one comparison with the
//! boundary; a row leaving the set is refilled by reading just past the boundary in the index.
//! The query is never re-run.

use super::change::Change;
use super::spec::{OrderedIndex, View};
use crate::db::write::Committed;
use crate::db::TableState;
use crate::Result;
use serde_json::Value;
use std::sync::Arc;

struct Slot {
    /// The row's key in the ordering (`encode(value) ++ encode(pk)`, or the pk).
    okey: Vec<u8>,
    pk: Arc<[u8]>,
    /// The row as the query sees it.
    seen: Arc<Value>,
}

pub(crate) struct TopN {
    pub order: OrderedIndex,
    pub view: View,
    pub limit: usize,
    set: Vec<Slot>,
    /// True when the set holds every qualifying row (there is nothing past it).
    complete: bool,
}

impl TopN {
    /// Reads the first `limit` qualifying rows.
    pub(crate) fn load(
        table: &TableState,
        order: OrderedIndex,
        view: View,
        limit: usize,
    ) -> Result<Self> {
        let mut t = TopN {
            order,
            view,
            limit,
            set: Vec::new(),
            complete: false,
        };
        t.refill(table, None)?;
        Ok(t)
    }

    /// `a` comes before `b` in the feed's order.
    fn before(&self, a: &[u8], b: &[u8]) -> bool {
        if self.order.desc {
            a > b
        } else {
            a < b
        }
    }

    fn refill(&mut self, table: &TableState, after: Option<Vec<u8>>) -> Result<()> {
        if self.set.len() >= self.limit {
            return Ok(());
        }
        for row in self.order.scan_after(table, after.as_deref()) {
            let (okey, pk, doc) = row?;
            let doc = Arc::new(doc);
            if let Some(seen) = self.view.apply(&doc) {
                self.set.push(Slot {
                    okey,
                    pk: Arc::from(&pk[..]),
                    seen,
                });
                if self.set.len() == self.limit {
                    return Ok(());
                }
            }
        }
        self.complete = true;
        Ok(())
    }

    /// The current rows, best first.
    pub(crate) fn rows(&self) -> impl Iterator<Item = &Arc<Value>> {
        self.set.iter().map(|s| &s.seen)
    }

    /// Where the set ends: a write whose order key comes before this may enter it. `None`
    /// when the set holds every qualifying row, so any qualifying write enters.
    pub(crate) fn boundary(&self) -> Option<&[u8]> {
        if self.complete {
            None
        } else {
            self.set.last().map(|s| s.okey.as_slice())
        }
    }

    /// The primary keys of the rows in the set.
    pub(crate) fn members(&self) -> impl Iterator<Item = &Arc<[u8]>> {
        self.set.iter().map(|s| &s.pk)
    }

    /// Applies a committed change, given the new document's keys in this index (`new_keys`,
    /// computed once per change for every feed on the index). Returns the items to deliver
    /// and whether the set changed.
    pub(crate) fn apply(
        &mut self,
        table: &TableState,
        c: &Committed,
        new_keys: &[Vec<u8>],
    ) -> Result<(Vec<Change>, bool)> {
        let old_pos = self.set.iter().position(|s| *s.pk == *c.key);
        let new_okey = new_keys.iter().find(|k| self.order.contains(k));
        let enters = |t: &Self, okey: &[u8]| match t.boundary() {
            None => true,
            Some(b) => t.before(okey, b),
        };
        // The common case: a write that neither touches nor enters the set costs a comparison.
        if old_pos.is_none() && new_okey.is_none_or(|k| !enters(self, k)) {
            return Ok((Vec::new(), false));
        }
        let entering = match (new_okey, &c.new) {
            (Some(k), Some(doc)) if enters(self, k) => {
                self.view.apply(doc).map(|seen| (k.clone(), seen))
            }
            _ => None,
        };
        if old_pos.is_none() && entering.is_none() {
            return Ok((Vec::new(), false));
        }
        let boundary = self.boundary().map(<[u8]>::to_vec);
        let before: Vec<(Arc<[u8]>, Arc<Value>)> = self
            .set
            .iter()
            .map(|s| (s.pk.clone(), s.seen.clone()))
            .collect();
        if let Some(p) = old_pos {
            self.set.remove(p);
        }
        if let Some((okey, seen)) = entering {
            let at = self.set.partition_point(|s| self.before(&s.okey, &okey));
            self.set.insert(
                at,
                Slot {
                    okey,
                    pk: Arc::from(&c.key[..]),
                    seen,
                },
            );
        }
        if self.set.len() > self.limit {
            self.set.pop();
            self.complete = false;
        }
        if self.set.len() < self.limit && !self.complete {
            self.refill(table, boundary)?;
        }
        Ok((self.diff(&before, &c.key), true))
    }

    /// The items that turn the list `before` into the current set: rows that left paired with
    /// rows that entered, and the written row (`written`) when it changed or moved. Other rows
    /// only shift, which deleting and inserting at the offsets already accounts for.
    fn diff(&self, before: &[(Arc<[u8]>, Arc<Value>)], written: &[u8]) -> Vec<Change> {
        let after_pos = |pk: &[u8]| self.set.iter().position(|s| *s.pk == *pk);
        let mut left = Vec::new();
        let mut changed = Vec::new();
        for (i, (pk, seen)) in before.iter().enumerate() {
            match after_pos(pk) {
                None => left.push(i),
                Some(j) if **pk == *written && (j != i || self.set[j].seen != *seen) => {
                    changed.push((i, j))
                }
                Some(_) => {}
            }
        }
        let entered: Vec<usize> = (0..self.set.len())
            .filter(|&j| !before.iter().any(|(pk, _)| *pk == self.set[j].pk))
            .collect();
        let mut out = Vec::new();
        let mut entered_it = entered.into_iter();
        let row = |j: usize| (Some(self.set[j].pk.clone()), Some(self.set[j].seen.clone()));
        for i in left {
            let (old_pk, old) = (Some(before[i].0.clone()), Some(before[i].1.clone()));
            out.push(match entered_it.next() {
                // The row that left is replaced by the one that entered.
                Some(j) => {
                    let (pk, new) = row(j);
                    Change::row(pk, old, new).with_offsets(Some(i), Some(j))
                }
                None => Change::row(old_pk, old, None).with_offsets(Some(i), None),
            });
        }
        for j in entered_it {
            let (pk, new) = row(j);
            out.push(Change::row(pk, None, new).with_offsets(None, Some(j)));
        }
        for (i, j) in changed {
            let (pk, new) = row(j);
            out.push(
                Change::row(pk, Some(before[i].1.clone()), new).with_offsets(Some(i), Some(j)),
            );
        }
        out
    }
}
