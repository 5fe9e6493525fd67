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

    /// Applies a committed change; returns the items to deliver.
    pub(crate) fn apply(&mut self, table: &TableState, c: &Committed) -> Result<Vec<Change>> {
        let old_pos = self.set.iter().position(|s| *s.pk == *c.key);
        let entering = c.new.as_ref().and_then(|doc| {
            let okey = self.order.keys(&c.key, doc).into_iter().next()?;
            self.view.apply(doc).map(|seen| (okey, seen))
        });
        let boundary = if self.complete {
            None
        } else {
            self.set.last().map(|s| s.okey.clone())
        };
        let enters = |t: &Self, okey: &[u8]| match &boundary {
            None => true,
            Some(b) => t.before(okey, b),
        };
        // The common case: a write that neither touches nor enters the set.
        if old_pos.is_none() && entering.as_ref().is_none_or(|(k, _)| !enters(self, k)) {
            return Ok(Vec::new());
        }

        let before: Vec<(Arc<[u8]>, Arc<Value>)> = self
            .set
            .iter()
            .map(|s| (s.pk.clone(), s.seen.clone()))
            .collect();
        if let Some(p) = old_pos {
            self.set.remove(p);
        }
        if let Some((okey, seen)) = entering {
            if enters(self, &okey) {
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
        }
        if self.set.len() > self.limit {
            self.set.pop();
            self.complete = false;
        }
        if self.set.len() < self.limit && !self.complete {
            self.refill(table, boundary)?;
        }
        Ok(self.diff(&before, &c.key))
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
        for i in left {
            let mut c = Change::row(Some(before[i].0.clone()), Some(before[i].1.clone()), None);
            c.old_offset = Some(i);
            if let Some(j) = entered_it.next() {
                c = Change::row(
                    Some(self.set[j].pk.clone()),
                    Some(before[i].1.clone()),
                    Some(self.set[j].seen.clone()),
                );
                c.old_offset = Some(i);
                c.new_offset = Some(j);
            }
            out.push(c);
        }
        for j in entered_it {
            let mut c = Change::row(
                Some(self.set[j].pk.clone()),
                None,
                Some(self.set[j].seen.clone()),
            );
            c.new_offset = Some(j);
            out.push(c);
        }
        for (i, j) in changed {
            let mut c = Change::row(
                Some(self.set[j].pk.clone()),
                Some(before[i].1.clone()),
                Some(self.set[j].seen.clone()),
            );
            c.old_offset = Some(i);
            c.new_offset = Some(j);
            out.push(c);
        }
        out
    }
}
