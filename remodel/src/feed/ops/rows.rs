//! The rows operator: table, `get`, `get_all` and `between` feeds, with their filters and
//! transforms. Which rows are in the result is a function of each row alone ([`Matcher`]
//! and [`View`]), so the operator keeps no state and takes a change at a time: the hot path
//! of the hub, shared by every group a change reaches through one [`ChangeCtx`]. Live
//! aggregates and joins are built on it (their rows are a rows operator's).

use super::{check_live, ChangeCtx, Operator, Plan, Route, Step};
use crate::db::TableState;
use crate::feed::change::Change;
use crate::feed::spec::{Matcher, MatcherKey, View, ViewKey};
use crate::Result;
use serde_json::Value;
use std::sync::Arc;

/// A rows feed: the plan and the operator are the same (nothing to load).
pub(crate) struct Rows {
    pub(crate) table: Arc<TableState>,
    pub(crate) matcher: Matcher,
    pub(crate) view: View,
}

/// What tells rows feeds of a table apart: which rows, how many times, and how they are seen.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct RowsKey {
    matcher: MatcherKey,
    view: ViewKey,
}

impl RowsKey {
    /// The first route of a point or `get_all` feed (the index's name, `None` for primary
    /// keys, and the key or value), by which the hub finds an open group of the same query
    /// without keeping its key apart (see `hub::routes`).
    pub(crate) fn first_route(&self) -> Option<(Option<&str>, &[u8])> {
        match &self.matcher {
            MatcherKey::Keys(keys) => keys.first().map(|(k, _)| (None, &k[..])),
            MatcherKey::IndexValues(ix, values) => {
                values.first().map(|(v, _)| (Some(ix.as_str()), &v[..]))
            }
            _ => None,
        }
    }
}

impl Plan for Rows {
    type Operator = Rows;
    type Key = RowsKey;

    fn table(&self) -> &Arc<TableState> {
        &self.table
    }

    fn key(&self) -> RowsKey {
        RowsKey {
            matcher: self.matcher.key(),
            view: self.view.key(),
        }
    }

    fn check_live(&self) -> Result<()> {
        check_live(&self.table, self.matcher.index())
    }

    fn load(self) -> Result<Rows> {
        Ok(self)
    }
}

impl Operator for Rows {
    #[inline]
    fn step(&self) -> Step {
        Step::Change
    }

    /// Point and `get_all` feeds by key or index value, filter feeds of a whole table with
    /// an equality conjunct by that field's value, range feeds by the key they contain; only
    /// filters without an equality conjunct (on a whole table) see every write.
    fn routes(&self, each: &mut dyn FnMut(Route<'_>)) {
        match &self.matcher {
            Matcher::Keys(keys) => keys.iter().for_each(|(k, _)| each(Route::Key(k))),
            Matcher::IndexValues { ix, values } => values
                .iter()
                .for_each(|(v, _)| each(Route::IndexValue(ix, v))),
            Matcher::All => match self.view.routing_eq() {
                Some((path, value)) => each(Route::Eq(&path, &value)),
                None => each(Route::Scan),
            },
            Matcher::PrimaryRange { lo, hi } => each(Route::Range(None, lo, hi)),
            Matcher::IndexRange { ix, lo, hi } => each(Route::Range(Some(ix), lo, hi)),
        }
    }

    fn reads_index(&self, name: &str) -> bool {
        self.matcher.index_name() == Some(name)
    }

    #[inline]
    fn change_items(&self, ctx: &mut ChangeCtx<'_>, out: &mut Vec<Change>) {
        self.items(ctx, out);
    }

    /// The feed's own query, read under the commit lock.
    fn initial(&self, read: impl FnOnce() -> Result<Vec<Arc<Value>>>) -> Result<Vec<Arc<Value>>> {
        read()
    }

    fn name(&self) -> &'static str {
        "the feed"
    }
}

impl Rows {
    /// The items a rows feed gets for a change: live, or replayed from the change log when
    /// a feed resumes.
    pub(crate) fn items(&self, ctx: &mut ChangeCtx<'_>, out: &mut Vec<Change>) {
        let (matcher, view) = (&self.matcher, &self.view);
        let old_n = ctx.count(matcher, false);
        let new_n = ctx.count(matcher, true);
        if old_n == 0 && new_n == 0 {
            return;
        }
        if view.is_identity() && old_n <= 1 && new_n <= 1 {
            // The common case: whole rows, each once. Every such group delivers the same item.
            out.push(ctx.plain(old_n == 1, new_n == 1));
            return;
        }
        let c = ctx.c;
        let seen = |n: usize, doc: &Option<Arc<Value>>| match doc {
            Some(d) if n > 0 => view.apply(d),
            _ => None,
        };
        let (old, new) = (seen(old_n, &c.old), seen(new_n, &c.new));
        let old_n = if old.is_some() { old_n } else { 0 };
        let new_n = if new.is_some() { new_n } else { 0 };
        let key = &ctx.key();
        let both = old_n.min(new_n);
        // The row's places in the result, numbered: place i is there before the write when
        // i < old_n and after it when i < new_n (squashing merges per row and place).
        let item = |old: Option<Arc<Value>>, new: Option<Arc<Value>>, i: usize| {
            Change::row(Some(key.clone()), old, new)
                .nth(i)
                .at(c.seq, c.commit)
        };
        if !crate::value::identical_rows(old.as_ref(), new.as_ref()) {
            for i in 0..both {
                out.push(item(old.clone(), new.clone(), i));
            }
        }
        for i in both..old_n {
            out.push(item(old.clone(), None, i));
        }
        for i in both..new_n {
            out.push(item(None, new.clone(), i));
        }
    }
}
