//! Incremental maintenance of `order_by(index).limit(n)` results.
//!
//! The set holds the first `n` qualifying rows in index order (ties are impossible: order
//! keys end with the primary key). A write outside the set costs one comparison with the
//! boundary; a row leaving the set is refilled by reading just past the boundary in the index.
//! The query is never re-run.
//!
//! A group is found by the writes that may change its set: those whose order key beats its
//! boundary (any qualifying write while the set holds every qualifying row), and those of the
//! rows in the set. Both move with the set, so the group is re-routed after every commit that
//! moves it.

use super::{check_live, Commit, Operator, Plan, Reroute, Route, Step};
use crate::db::TableState;
use crate::feed::change::Change;
use crate::feed::edits::{list_edits, ListRow};
use crate::feed::spec::{OrderedIndex, View, ViewKey};
use crate::Result;
use serde_json::Value;
use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;

/// An `order_by(index).limit(n)` feed, before its set is read.
pub(crate) struct TopNPlan {
    pub(crate) table: Arc<TableState>,
    pub(crate) order: OrderedIndex,
    pub(crate) view: View,
    pub(crate) limit: usize,
}

/// What tells top-N feeds of a table apart: the ordering (index by name, direction, range),
/// the view and the limit.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct TopNKey {
    index: Option<String>,
    desc: bool,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    view: ViewKey,
    limit: usize,
}

impl Plan for TopNPlan {
    type Operator = Box<TopN>;
    // Boxed: a group keeps its key, and rows keys (most groups) are much smaller.
    type Key = Box<TopNKey>;

    fn table(&self) -> &Arc<TableState> {
        &self.table
    }

    fn key(&self) -> Box<TopNKey> {
        Box::new(TopNKey {
            index: self.order.ix.as_ref().map(|ix| ix.name.clone()),
            desc: self.order.desc,
            lo: self.order.lo.clone(),
            hi: self.order.hi.clone(),
            view: self.view.key(),
            limit: self.limit,
        })
    }

    fn check_live(&self) -> Result<()> {
        check_live(&self.table, self.order.ix.as_ref())
    }

    fn load(self) -> Result<Box<TopN>> {
        let TopNPlan {
            table,
            order,
            view,
            limit,
        } = self;
        TopN::load(table, order, view, limit).map(Box::new)
    }
}

impl Operator for TopN {
    fn step(&self) -> Step {
        Step::Commit
    }

    /// Its boundary and its rows' keys, as of the last commit that moved the set.
    fn routes(&self, each: &mut dyn FnMut(Route<'_>)) {
        each(Route::Before {
            ix: self.order.ix.as_ref(),
            desc: self.order.desc,
            bound: self.routed.bound.as_deref(),
        });
        for pk in &self.routed.members {
            each(Route::Key(pk));
        }
    }

    fn reads_index(&self, name: &str) -> bool {
        self.order.ix.as_ref().is_some_and(|ix| ix.name == name)
    }

    fn apply_commit(
        &mut self,
        commit: &Commit<'_>,
        out: &mut Vec<Change>,
        routes: &mut impl Reroute,
    ) -> Result<()> {
        let moved = self.apply_changes(commit, out)?;
        if moved {
            self.routes(&mut |r| routes.remove(r));
            self.routed = Routed::of(self);
            self.routes(&mut |r| routes.add(r));
        }
        Ok(())
    }

    fn initial(&self, _read: impl FnOnce() -> Result<Vec<Arc<Value>>>) -> Result<Vec<Arc<Value>>> {
        Ok(self.rows().cloned().collect())
    }

    fn list(&self) -> Option<Vec<ListRow>> {
        Some(self.listed())
    }

    fn name(&self) -> &'static str {
        "the feed"
    }
}

/// Where a top-N group is routed: its boundary (`None`: open) and its rows' keys, as of the
/// last commit that moved the set (what the hub's routes hold).
#[derive(Default)]
struct Routed {
    bound: Option<Vec<u8>>,
    members: Vec<Arc<[u8]>>,
}

impl Routed {
    fn of(t: &TopN) -> Self {
        Routed {
            bound: t.boundary().map(<[u8]>::to_vec),
            members: t.members().cloned().collect(),
        }
    }
}

struct Slot {
    /// The row's key in the ordering (`encode(value) ++ encode(pk)`, or the pk).
    okey: Vec<u8>,
    pk: Arc<[u8]>,
    /// The row as the query sees it.
    seen: Arc<Value>,
}

pub(crate) struct TopN {
    order: OrderedIndex,
    view: View,
    limit: usize,
    set: Vec<Slot>,
    /// True when the set holds every qualifying row (there is nothing past it).
    complete: bool,
    routed: Routed,
}

impl TopN {
    /// Reads the first `limit` qualifying rows.
    fn load(table: Arc<TableState>, order: OrderedIndex, view: View, limit: usize) -> Result<Self> {
        let mut t = TopN {
            order,
            view,
            limit,
            set: Vec::new(),
            complete: false,
            routed: Routed::default(),
        };
        t.refill(&table, None)?;
        t.routed = Routed::of(&t);
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
    fn rows(&self) -> impl Iterator<Item = &Arc<Value>> {
        self.set.iter().map(|s| &s.seen)
    }

    /// Where the set ends: a write whose order key comes before this may enter it. `None`
    /// when the set holds every qualifying row, so any qualifying write enters.
    fn boundary(&self) -> Option<&[u8]> {
        if self.complete {
            None
        } else {
            self.set.last().map(|s| s.okey.as_slice())
        }
    }

    /// The primary keys of the rows in the set.
    fn members(&self) -> impl Iterator<Item = &Arc<[u8]>> {
        self.set.iter().map(|s| &s.pk)
    }

    /// Applies one commit's changes to this table (each key at most once, with its document
    /// before and after the commit), as one step: the set before the commit and the set after
    /// it are compared, so no row that was in no committed result is ever reported. Storage
    /// holds exactly this commit's state when this runs (the hub is called under the commit
    /// lock, right after the commit), so a refill reads the rows as they are after it.
    /// The items go to `out` (stamped with the commit); returns whether the set (or its
    /// boundary) changed.
    fn apply_changes(&mut self, commit: &Commit<'_>, out: &mut Vec<Change>) -> Result<bool> {
        let (table, changes) = (commit.table, commit.changes);
        // Where the set ended before the commit: a row at or before it may be in the set
        // after the commit; rows past it are read from the index when the set needs them.
        let boundary = self.boundary().map(<[u8]>::to_vec);
        let may_enter = |t: &Self, okey: &[u8]| match &boundary {
            None => true,
            Some(b) => okey == b.as_slice() || t.before(okey, b),
        };
        let keys: HashSet<&[u8]> = changes.iter().map(|c| c.key.as_slice()).collect();
        let touched = |pk: &[u8]| keys.contains(pk);
        let before: Vec<ListRow> = self
            .set
            .iter()
            .map(|s| (s.pk.clone(), s.seen.clone()))
            .collect();
        let len_before = self.set.len();
        self.set.retain(|s| !touched(&s.pk));
        let mut changed = self.set.len() != len_before;
        for c in changes {
            let Some(doc) = &c.new else { continue };
            let keys = OrderedIndex::index_keys(self.order.ix.as_deref(), &c.key, doc);
            let Some(okey) = keys.into_iter().find(|k| self.order.contains(k)) else {
                continue;
            };
            if !may_enter(self, &okey) {
                continue;
            }
            let Some(seen) = self.view.apply(doc) else {
                continue;
            };
            let at = self.set.partition_point(|s| self.before(&s.okey, &okey));
            self.set.insert(
                at,
                Slot {
                    okey,
                    pk: Arc::from(&c.key[..]),
                    seen,
                },
            );
            changed = true;
        }
        if !changed {
            return Ok(false);
        }
        if self.set.len() > self.limit {
            self.set.truncate(self.limit);
            self.complete = false;
        }
        if self.set.len() < self.limit && !self.complete {
            self.refill(table, boundary)?;
        }
        let after: Vec<ListRow> = self
            .set
            .iter()
            .map(|s| (s.pk.clone(), s.seen.clone()))
            .collect();
        out.extend(
            list_edits(&before, &after)
                .into_iter()
                .map(|c| commit.stamp(c)),
        );
        Ok(true)
    }

    /// The rows of the set with their keys, best first.
    fn listed(&self) -> Vec<ListRow> {
        self.set
            .iter()
            .map(|s| (s.pk.clone(), s.seen.clone()))
            .collect()
    }
}
