//! Feed operators: each kind of feed behind one trait, as ReadySet's dataflow operators are
//! each behind its `Ingredient` trait and the graph holds them as one registered enum.
//!
//! A feed kind is a [`Plan`] (what `Changes` makes of a query: its table, a structural key,
//! how its state is loaded) and an [`Operator`] (the loaded state of a group of identical
//! feeds). The hub knows operators only through the trait: it shares a group between feeds
//! whose plans have equal keys ([`GroupKey`]), finds it for a write by the [`Route`]s it
//! declares, hands it either each change ([`Step::Change`]: the rows operator, the hot path,
//! with the per-change work shared by every group the change reaches in a [`ChangeCtx`]) or
//! each commit as one step ([`Step::Commit`]: top-N sets, aggregates, joins), and delivers
//! the items it makes. Dispatch is a `match` over the registered kinds (no virtual call, no
//! allocation per change and feed).
//!
//! | kind | file | step | routes |
//! |---|---|---|---|
//! | rows (table, `get`, `get_all`, `between`, with filters and transforms) | `rows.rs` | change | key, index value, equality conjunct, range, or every write |
//! | top-N (`order_by(index).limit(n)`) | `topn.rs` | commit | the boundary a write beats, the keys of the rows in the set |
//! | aggregate (`count`, `sum`, `avg`, `min`, `max`, grouped or not) | `aggregate.rs` | commit | those of its rows |
//! | join (`eq_join`) | `join.rs` | commit | those of its left rows, and its join keys in the right table |
//!
//! Adding a feed kind: a file here with its plan and operator (implementing [`Plan`] and
//! [`Operator`]), one line in the `operators!` registration below, and the place in
//! `Changes` that makes its plan from a query. A kind that needs a new way of being found
//! (a route the hub does not have) adds a [`Route`] variant and its map in `hub/routes.rs`.

mod context;

pub(crate) mod aggregate;
pub(crate) mod join;
pub(crate) mod rows;
pub(crate) mod topn;

pub(crate) use context::{ChangeCtx, Commit};

use super::change::Change;
use super::edits::ListRow;
use crate::db::write::Committed;
use crate::db::{IndexState, TableState};
use crate::value::FieldPath;
use crate::{Error, Result};
use serde_json::Value;
use std::hash::Hash;
use std::ops::Bound;
use std::sync::Arc;

/// How a commit reaches an operator.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Step {
    /// Each change on its own ([`Operator::change_items`]), with the work shared by every
    /// group the change reaches.
    Change,
    /// The commit's changes together, once every change of the commit has been routed
    /// ([`Operator::apply_commit`]): no item reflects part of a commit.
    Commit,
}

/// A way for a write to find a group: the hub keeps one map per kind of route, so that
/// routing a write costs in proportion to the groups it concerns (see `hub/routes.rs`).
/// Encoded values and keys are those of `crate::value`'s order-preserving encoding.
#[derive(Clone, Copy)]
pub(crate) enum Route<'a> {
    /// Writes of the row with this primary key.
    Key(&'a [u8]),
    /// Writes of rows whose value in index `ix` is this one, before or after.
    IndexValue(&'a Arc<IndexState>, &'a [u8]),
    /// Writes of rows whose field holds this value, before or after.
    Eq(&'a FieldPath, &'a [u8]),
    /// Writes of rows whose primary key (`None`) or key in the index lies within the
    /// bounds, before or after.
    Range(
        Option<&'a Arc<IndexState>>,
        &'a Bound<Vec<u8>>,
        &'a Bound<Vec<u8>>,
    ),
    /// Every write of the table.
    Scan,
    /// Writes whose key in an ordering (index `ix`, `None`: the primary key; descending or
    /// not) comes before `bound`, or every write when `bound` is `None`.
    Before {
        ix: Option<&'a Arc<IndexState>>,
        desc: bool,
        bound: Option<&'a [u8]>,
    },
    /// Writes of another table whose key in its index `ix` (`None`: its primary key) is
    /// `key`, before or after: that table's rows are part of the result (a join's right
    /// rows), and each such change is applied on its own ([`Operator::apply_followed`]).
    Followed {
        table: &'a str,
        ix: Option<&'a Arc<IndexState>>,
        key: &'a [u8],
    },
}

/// Where an operator's route changes go while it applies a commit (the hub's routes).
pub(crate) trait Reroute {
    fn add(&mut self, route: Route<'_>);
    fn remove(&mut self, route: Route<'_>);
}

/// What a feed watches, before its group exists.
pub(crate) trait Plan {
    type Operator: Operator;
    /// A structural description of the result: two plans with equal keys give the same
    /// items for every commit, so their feeds share one group.
    type Key: Clone + Eq + Hash;

    /// The table whose writes reach the group (its routes are kept under it).
    fn table(&self) -> &Arc<TableState>;
    fn key(&self) -> Self::Key;
    /// Refuses a plan whose table or index was dropped after it was made. Called under the
    /// commit lock, where drops happen, so a feed that passes is seen by the drop's abort.
    fn check_live(&self) -> Result<()>;
    /// Builds the operator's state, reading storage if it needs to (under the commit lock,
    /// so that the state and the changes that follow fit together exactly).
    fn load(self) -> Result<Self::Operator>;
}

/// The loaded state of a group of identical feeds, as the hub drives it.
pub(crate) trait Operator {
    /// How commits reach it (the same for every operator of a kind).
    fn step(&self) -> Step;

    /// Every route the group is found by, as registered: called when the group is made
    /// (to register them) and when it goes (to remove them). Routes that move while the
    /// group lives are changed through [`Reroute`] in [`Operator::apply_commit`].
    fn routes(&self, each: &mut dyn FnMut(Route<'_>));

    /// Whether it reads index `name` of its table (dropping that index ends its feeds).
    fn reads_index(&self, name: &str) -> bool;

    /// Whether it follows `table`: its [`Route::Followed`] routes are in that table's key
    /// space `index` (`None`: in any of its key spaces). Dropping that table, or that index,
    /// ends its feeds.
    fn follows(&self, _table: &str, _index: Option<&str>) -> bool {
        false
    }

    /// [`Step::Change`]: the items for one change that reached the group, stamped with
    /// the change ([`Change::at`]). The hot path: no allocation or lookup beyond what the
    /// items need.
    fn change_items(&self, _ctx: &mut ChangeCtx<'_>, _out: &mut Vec<Change>) {
        unreachable!("the hub hands changes one by one only to Step::Change operators")
    }

    /// [`Step::Commit`]: applies the changes of one commit that reached the group, as one
    /// step, and returns the items, each stamped ([`Commit::stamp`] for an item about the
    /// whole commit; the hub numbers them in order). An error ends the group's feeds with
    /// [`Error::FeedAborted`] ("{name} could not be maintained").
    fn apply_commit(
        &mut self,
        _commit: &Commit<'_>,
        _out: &mut Vec<Change>,
        _routes: &mut impl Reroute,
    ) -> Result<()> {
        unreachable!("the hub hands whole commits only to Step::Commit operators")
    }

    /// A change of a table it follows, found by one of its [`Route::Followed`] routes
    /// (applied on its own, with the other table's commit); items stamped with the change.
    fn apply_followed(&mut self, _c: &Committed, _out: &mut Vec<Change>) {}

    /// The current result, for a new feed that asked for it (`include_initial`), best first
    /// for ordered results. `read` runs the feed's own query (for operators that keep no
    /// result of their own). Called under the commit lock.
    fn initial(&self, read: impl FnOnce() -> Result<Vec<Arc<Value>>>) -> Result<Vec<Arc<Value>>>;

    /// An ordered result as a list: squashing feeds of the group then hand over the net
    /// difference between two lists per batch (top-N feeds, see `queue::ListSquash`).
    fn list(&self) -> Option<Vec<ListRow>> {
        None
    }

    /// What its feeds call the result in the error they end with when it cannot be
    /// maintained (a storage error while refilling it, a sum of a value that is not a
    /// number): "{name} could not be maintained".
    fn name(&self) -> &'static str;
}

/// A boxed operator is the operator (kinds with a large state are boxed, so that a group
/// of the common kind, rows, stays small).
impl<O: Operator> Operator for Box<O> {
    #[inline]
    fn step(&self) -> Step {
        (**self).step()
    }
    fn routes(&self, each: &mut dyn FnMut(Route<'_>)) {
        (**self).routes(each)
    }
    fn reads_index(&self, name: &str) -> bool {
        (**self).reads_index(name)
    }
    fn follows(&self, table: &str, index: Option<&str>) -> bool {
        (**self).follows(table, index)
    }
    fn change_items(&self, ctx: &mut ChangeCtx<'_>, out: &mut Vec<Change>) {
        (**self).change_items(ctx, out)
    }
    fn apply_commit(
        &mut self,
        commit: &Commit<'_>,
        out: &mut Vec<Change>,
        routes: &mut impl Reroute,
    ) -> Result<()> {
        (**self).apply_commit(commit, out, routes)
    }
    fn apply_followed(&mut self, c: &Committed, out: &mut Vec<Change>) {
        (**self).apply_followed(c, out)
    }
    fn initial(&self, read: impl FnOnce() -> Result<Vec<Arc<Value>>>) -> Result<Vec<Arc<Value>>> {
        (**self).initial(read)
    }
    fn list(&self) -> Option<Vec<ListRow>> {
        (**self).list()
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// Registers the feed kinds: `Kind(PlanType)` makes variant `Kind` of [`AnyPlan`],
/// [`AnyOperator`] (of the plan's operator type) and [`GroupKey`] (of its key type), and
/// dispatches [`Plan`] and [`Operator`] over them.
macro_rules! operators {
    ($($kind:ident($plan:ty),)*) => {
        /// A plan of a registered kind.
        pub(crate) enum AnyPlan {
            $($kind($plan),)*
        }

        /// An operator of a registered kind: what a group holds.
        pub(crate) enum AnyOperator {
            $($kind(<$plan as Plan>::Operator),)*
        }

        /// What groups are shared by: the kind and the plan's structural key.
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub(crate) enum GroupKey {
            $($kind(<$plan as Plan>::Key),)*
        }

        $(impl From<$plan> for AnyPlan {
            fn from(plan: $plan) -> Self {
                AnyPlan::$kind(plan)
            }
        })*

        impl AnyPlan {
            pub(crate) fn table(&self) -> &Arc<TableState> {
                match self { $(AnyPlan::$kind(p) => p.table(),)* }
            }
            pub(crate) fn key(&self) -> GroupKey {
                match self { $(AnyPlan::$kind(p) => GroupKey::$kind(p.key()),)* }
            }
            pub(crate) fn check_live(&self) -> Result<()> {
                match self { $(AnyPlan::$kind(p) => p.check_live(),)* }
            }
            pub(crate) fn load(self) -> Result<AnyOperator> {
                match self { $(AnyPlan::$kind(p) => p.load().map(AnyOperator::$kind),)* }
            }
        }

        impl Operator for AnyOperator {
            #[inline]
            fn step(&self) -> Step {
                match self { $(AnyOperator::$kind(o) => o.step(),)* }
            }
            fn routes(&self, each: &mut dyn FnMut(Route<'_>)) {
                match self { $(AnyOperator::$kind(o) => o.routes(each),)* }
            }
            fn reads_index(&self, name: &str) -> bool {
                match self { $(AnyOperator::$kind(o) => o.reads_index(name),)* }
            }
            fn follows(&self, table: &str, index: Option<&str>) -> bool {
                match self { $(AnyOperator::$kind(o) => o.follows(table, index),)* }
            }
            #[inline]
            fn change_items(&self, ctx: &mut ChangeCtx<'_>, out: &mut Vec<Change>) {
                match self { $(AnyOperator::$kind(o) => o.change_items(ctx, out),)* }
            }
            fn apply_commit(
                &mut self,
                commit: &Commit<'_>,
                out: &mut Vec<Change>,
                routes: &mut impl Reroute,
            ) -> Result<()> {
                match self { $(AnyOperator::$kind(o) => o.apply_commit(commit, out, routes),)* }
            }
            fn apply_followed(&mut self, c: &Committed, out: &mut Vec<Change>) {
                match self { $(AnyOperator::$kind(o) => o.apply_followed(c, out),)* }
            }
            fn initial(
                &self,
                read: impl FnOnce() -> Result<Vec<Arc<Value>>>,
            ) -> Result<Vec<Arc<Value>>> {
                match self { $(AnyOperator::$kind(o) => o.initial(read),)* }
            }
            fn list(&self) -> Option<Vec<ListRow>> {
                match self { $(AnyOperator::$kind(o) => o.list(),)* }
            }
            fn name(&self) -> &'static str {
                match self { $(AnyOperator::$kind(o) => o.name(),)* }
            }
        }
    };
}

operators! {
    Rows(rows::Rows),
    TopN(topn::TopNPlan),
    Aggregate(aggregate::AggPlan),
    Join(join::JoinPlan),
}

/// Refuses a table that was dropped, or an index of it that is no longer there.
pub(crate) fn check_live(table: &TableState, ix: Option<&Arc<IndexState>>) -> Result<()> {
    if table.is_dropped() {
        return Err(Error::NoSuchTable(table.name.clone()));
    }
    if let Some(ix) = ix {
        if !table.indexes.read().iter().any(|i| Arc::ptr_eq(i, ix)) {
            return Err(Error::NoSuchIndex {
                table: table.name.clone(),
                index: ix.name.clone(),
            });
        }
    }
    Ok(())
}

/// The rows of a query with their primary keys: what a live join or aggregate starts from.
fn keyed_rows(
    source: &crate::query::Query,
) -> Result<impl Iterator<Item = Result<(Vec<u8>, Value)>>> {
    Ok(source
        .plan()?
        .rows()
        .map(|r| r.map(|row| (row.key.to_vec(), row.doc))))
}
