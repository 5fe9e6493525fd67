//! Which queries can be watched, and how: a query's plan is turned into a feed plan, a plan
//! of one of the feed operators (`ops`), made of which rows belong to the result (matcher),
//! how a row is seen (filters and transforms) and, for top-N feeds, the ordering. Matchers
//! and views also describe themselves structurally ([`MatcherKey`], [`ViewKey`]): feeds
//! whose plans are described alike share one group.

use super::ops::rows::Rows;
use super::ops::topn::TopNPlan;
use super::ops::AnyPlan;
use crate::db::{IndexState, TableState};
use crate::query::plan::{Access, Op, Plan};
use crate::query::predicate::{CmpOp, Compiled};
use crate::storage::Bytes;
use crate::value::{encode_value, FieldPath};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::ops::Bound;
use std::sync::Arc;

/// Whether `k` lies within the bounds.
fn in_range(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>, k: &[u8]) -> bool {
    let above = match lo {
        Bound::Unbounded => true,
        Bound::Included(l) => k >= l.as_slice(),
        Bound::Excluded(l) => k > l.as_slice(),
    };
    above
        && match hi {
            Bound::Unbounded => true,
            Bound::Included(h) => k <= h.as_slice(),
            Bound::Excluded(h) => k < h.as_slice(),
        }
}

/// How many times `key` occurs in a sorted, counted list.
fn times(list: &[(Vec<u8>, usize)], key: &[u8]) -> usize {
    list.binary_search_by(|(k, _)| k.as_slice().cmp(key))
        .map_or(0, |i| list[i].1)
}

/// Which rows of the table a feed's source selects, and how many times (a key given twice to
/// `get_all` selects its row twice).
pub(crate) enum Matcher {
    All,
    /// Primary keys, sorted, each with how many times it was given.
    Keys(Vec<(Vec<u8>, usize)>),
    /// Index values, sorted, each with how many times it was given.
    IndexValues {
        ix: Arc<IndexState>,
        values: Vec<(Vec<u8>, usize)>,
    },
    PrimaryRange {
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
    },
    IndexRange {
        ix: Arc<IndexState>,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
    },
}

impl Matcher {
    /// How many times the document (with encoded primary key `key`) is in the source.
    pub(crate) fn count(&self, key: &[u8], doc: &Value) -> usize {
        match self {
            Matcher::All => 1,
            Matcher::Keys(keys) => times(keys, key),
            Matcher::IndexValues { ix, values } if !ix.spec.is_multi() => {
                // One value at most (a plain or compound index): not copied to be counted.
                let mut n = 0;
                ix.compiled
                    .each_value(doc, |v| n += times(values, &encode_value(v)));
                n
            }
            Matcher::IndexValues { ix, values } => ix
                .compiled
                .values(doc)
                .iter()
                .map(|v| times(values, &encode_value(v)))
                .sum(),
            Matcher::PrimaryRange { lo, hi } => usize::from(in_range(lo, hi, key)),
            Matcher::IndexRange { ix, lo, hi } => ix
                .compiled
                .keys(doc, key)
                .iter()
                .filter(|k| in_range(lo, hi, k))
                .count(),
        }
    }

    /// For an index range: how many of the document's index keys (`keys`) lie in it.
    pub(crate) fn count_keys(&self, keys: &[Vec<u8>]) -> usize {
        match self {
            Matcher::IndexRange { lo, hi, .. } => {
                keys.iter().filter(|k| in_range(lo, hi, k)).count()
            }
            _ => 0,
        }
    }

    /// The index the matcher reads, if any.
    pub(crate) fn index(&self) -> Option<&Arc<IndexState>> {
        match self {
            Matcher::IndexValues { ix, .. } | Matcher::IndexRange { ix, .. } => Some(ix),
            _ => None,
        }
    }

    pub(crate) fn index_name(&self) -> Option<&str> {
        self.index().map(|ix| ix.name.as_str())
    }

    /// The matcher described structurally (indexes by name: the groups of a dropped index
    /// end with it).
    pub(crate) fn key(&self) -> MatcherKey {
        match self {
            Matcher::All => MatcherKey::All,
            Matcher::Keys(keys) => MatcherKey::Keys(keys.clone()),
            Matcher::IndexValues { ix, values } => {
                MatcherKey::IndexValues(ix.name.clone(), values.clone())
            }
            Matcher::PrimaryRange { lo, hi } => MatcherKey::PrimaryRange(lo.clone(), hi.clone()),
            Matcher::IndexRange { ix, lo, hi } => {
                MatcherKey::IndexRange(ix.name.clone(), lo.clone(), hi.clone())
            }
        }
    }
}

/// Which rows of a table a matcher selects, and how many times.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum MatcherKey {
    All,
    Keys(Vec<(Vec<u8>, usize)>),
    IndexValues(String, Vec<(Vec<u8>, usize)>),
    PrimaryRange(Bound<Vec<u8>>, Bound<Vec<u8>>),
    IndexRange(String, Bound<Vec<u8>>, Bound<Vec<u8>>),
}

/// How a view sees rows: its filters and transforms, in order.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ViewKey(Vec<ViewOpKey>);

#[derive(Clone, PartialEq, Eq, Hash)]
enum ViewOpKey {
    Filter(PredicateKey),
    Pluck(Vec<FieldPath>),
    Without(Vec<FieldPath>),
}

/// A filter described structurally. Values are kept encoded: two values with the same
/// encoding compare equal ([`crate::value::encode_value`]), and a filter looks at its values
/// only through comparisons, so predicates described alike select the same rows.
#[derive(Clone, PartialEq, Eq, Hash)]
enum PredicateKey {
    Cmp(FieldPath, u8, Vec<u8>),
    Contains(FieldPath, Vec<u8>),
    HasFields(Vec<FieldPath>),
    StartsWith(FieldPath, String),
    Matches(FieldPath, String),
    And(Vec<PredicateKey>),
    Or(Vec<PredicateKey>),
    Not(Box<PredicateKey>),
}

impl PredicateKey {
    fn of(p: &Compiled) -> Self {
        match p {
            Compiled::Cmp { path, op, value } => {
                let op = match op {
                    CmpOp::Eq => 0,
                    CmpOp::Ne => 1,
                    CmpOp::Lt => 2,
                    CmpOp::Le => 3,
                    CmpOp::Gt => 4,
                    CmpOp::Ge => 5,
                };
                PredicateKey::Cmp(path.clone(), op, encode_value(value))
            }
            Compiled::Contains { path, value } => {
                PredicateKey::Contains(path.clone(), encode_value(value))
            }
            Compiled::HasFields(paths) => PredicateKey::HasFields(paths.clone()),
            Compiled::StartsWith { path, prefix } => {
                PredicateKey::StartsWith(path.clone(), prefix.clone())
            }
            Compiled::Matches { path, re } => {
                PredicateKey::Matches(path.clone(), re.as_str().to_owned())
            }
            Compiled::And(all) => PredicateKey::And(all.iter().map(Self::of).collect()),
            Compiled::Or(any) => PredicateKey::Or(any.iter().map(Self::of).collect()),
            Compiled::Not(p) => PredicateKey::Not(Box::new(Self::of(p))),
        }
    }
}

/// The row view of a query: its filters and transforms, in order.
pub(crate) struct View {
    ops: Vec<Op>,
}

impl View {
    /// Whether rows are seen whole (no filter, no transform).
    pub(crate) fn is_identity(&self) -> bool {
        self.ops.is_empty()
    }

    /// The row as the query sees it, or `None` when a filter rejects it.
    pub(crate) fn apply(&self, doc: &Arc<Value>) -> Option<Arc<Value>> {
        let mut cur: Option<Value> = None; // copied on the first transform only
        for op in &self.ops {
            let seen = cur.as_ref().unwrap_or(doc);
            match op {
                Op::Filter(p) => {
                    if !p.eval(seen) {
                        return None;
                    }
                }
                Op::Pluck(paths) => {
                    let mut out = Map::new();
                    for p in paths {
                        p.copy_into(seen, &mut out);
                    }
                    cur = Some(Value::Object(out));
                }
                Op::Without(paths) => {
                    let mut v = seen.clone();
                    for p in paths {
                        p.remove_from(&mut v);
                    }
                    cur = Some(v);
                }
                Op::Sort { .. } | Op::Skip(_) | Op::Limit(_) => {
                    unreachable!("rejected by FeedPlan::new")
                }
            }
        }
        Some(match cur {
            Some(v) => Arc::new(v),
            None => doc.clone(),
        })
    }

    /// Whether a transform can change the value at `path` without removing it (a `pluck` or
    /// `without` of a field inside it): rows are then seen with a value other than the one
    /// an index on `path` orders them by.
    pub(crate) fn reshapes(&self, path: &crate::value::FieldPath) -> bool {
        let path = path.segments();
        let inside = |p: &crate::value::FieldPath| {
            p.segments().len() > path.len() && p.segments().starts_with(path)
        };
        // A pluck of the field itself (or of a field around it) keeps it whole.
        let whole = |p: &crate::value::FieldPath| path.starts_with(p.segments());
        self.ops.iter().any(|op| match op {
            Op::Pluck(ps) => ps.iter().any(inside) && !ps.iter().any(whole),
            Op::Without(ps) => ps.iter().any(inside),
            Op::Filter(_) | Op::Sort { .. } | Op::Skip(_) | Op::Limit(_) => false,
        })
    }

    /// The view described structurally.
    pub(crate) fn key(&self) -> ViewKey {
        ViewKey(
            self.ops
                .iter()
                .map(|op| match op {
                    Op::Filter(p) => ViewOpKey::Filter(PredicateKey::of(p)),
                    Op::Pluck(paths) => ViewOpKey::Pluck(paths.clone()),
                    Op::Without(paths) => ViewOpKey::Without(paths.clone()),
                    Op::Sort { .. } | Op::Skip(_) | Op::Limit(_) => {
                        unreachable!("rejected by FeedPlan::new")
                    }
                })
                .collect(),
        )
    }

    /// The equality conjuncts of the filters that see the raw document (before any transform).
    pub(crate) fn routing_eq(&self) -> Option<(crate::value::FieldPath, Vec<u8>)> {
        for op in &self.ops {
            match op {
                Op::Filter(p) => {
                    if let Some((path, value)) = p.eq_conjuncts().first() {
                        return Some(((*path).clone(), encode_value(value)));
                    }
                }
                _ => return None,
            }
        }
        None
    }
}

/// A range of a table's primary keys, to read in order.
pub(crate) struct ScanRange {
    pub table: Arc<TableState>,
    pub lo: Bound<Vec<u8>>,
    pub hi: Bound<Vec<u8>>,
}

/// A watchable query.
// Made once per feed opened, and moved a few times: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum FeedPlan {
    /// A feed of a table, through one of the feed operators: a rows or top-N plan as a query
    /// plans it (aggregates and joins are made from a rows plan, see `Changes`).
    Table(AnyPlan),
    /// The stats system table (a timer feed: no group, no routes).
    Stats { view: View },
}

/// Rows in an ordering: (order key, primary key, document).
pub(crate) type OrderedRows = Box<dyn Iterator<Item = Result<(Vec<u8>, Bytes, Value)>> + Send>;

/// An index (or the primary key) read in a direction, for top-N feeds.
#[derive(Clone)]
pub(crate) struct OrderedIndex {
    /// `None` for the primary key.
    pub ix: Option<Arc<IndexState>>,
    pub desc: bool,
    pub lo: Bound<Vec<u8>>,
    pub hi: Bound<Vec<u8>>,
}

impl OrderedIndex {
    /// The keys under which `doc` sits in the index (whatever the range).
    pub(crate) fn index_keys(ix: Option<&IndexState>, key: &[u8], doc: &Value) -> Vec<Vec<u8>> {
        match ix {
            None => vec![key.to_vec()],
            Some(ix) => ix.compiled.keys(doc, key),
        }
    }

    /// Whether an order key lies within this ordering's range.
    pub(crate) fn contains(&self, okey: &[u8]) -> bool {
        in_range(&self.lo, &self.hi, okey)
    }

    /// Rows after `after` (exclusive) in this ordering, as (order key, primary key, doc bytes).
    pub(crate) fn scan_after(&self, table: &TableState, after: Option<&[u8]>) -> OrderedRows {
        let (mut lo, mut hi) = (self.lo.clone(), self.hi.clone());
        if let Some(a) = after {
            if self.desc {
                hi = Bound::Excluded(a.to_vec());
            } else {
                lo = Bound::Excluded(a.to_vec());
            }
        }
        let tree = match &self.ix {
            None => table.docs.clone(),
            Some(ix) => ix.tree.clone(),
        };
        let it = tree.range(lo, hi);
        let it: Box<dyn Iterator<Item = _> + Send> = if self.desc {
            Box::new(it.rev())
        } else {
            Box::new(it)
        };
        let primary = self.ix.is_none();
        let docs = table.docs.clone();
        let name = table.name.clone();
        Box::new(it.filter_map(move |r| {
            let (k, v) = match r {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e)),
            };
            let (pk, bytes) = if primary {
                (k.clone(), v)
            } else {
                match docs.get(&v) {
                    Ok(Some(b)) => (v, b),
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e)),
                }
            };
            Some(
                serde_json::from_slice(&bytes)
                    .map(|doc| (k.to_vec(), pk, doc))
                    .map_err(|e| {
                        Error::serialization_from(
                            format!("stored document in `{name}` is unreadable: {e}"),
                            e,
                        )
                    }),
            )
        }))
    }
}

impl FeedPlan {
    /// Refuses a plan whose table or index was dropped after it was made. Called under the
    /// commit lock, where drops happen, so a feed that passes is seen by the drop's abort.
    pub(crate) fn check_live(&self) -> Result<()> {
        match self {
            FeedPlan::Table(plan) => plan.check_live(),
            FeedPlan::Stats { .. } => Ok(()),
        }
    }

    /// A rows feed's plan (table, `get`, `get_all`, `between`, with filters and transforms).
    pub(crate) fn rows(&self) -> Option<&Rows> {
        match self {
            FeedPlan::Table(AnyPlan::Rows(rows)) => Some(rows),
            _ => None,
        }
    }

    /// A rows feed's plan, taken out (to make an aggregate or join of its rows).
    pub(crate) fn into_rows(self) -> Option<Rows> {
        match self {
            FeedPlan::Table(AnyPlan::Rows(rows)) => Some(rows),
            _ => None,
        }
    }

    /// Whether the feed is a top-N feed (its items have offsets).
    pub(crate) fn is_top_n(&self) -> bool {
        matches!(self, FeedPlan::Table(AnyPlan::TopN(_)))
    }

    /// For feeds over a primary key range (table feeds, `between` on the primary key), the
    /// range: their initial rows can be read in chunks.
    pub(crate) fn primary_range(&self) -> Option<ScanRange> {
        let rows = self.rows()?;
        let (lo, hi) = match &rows.matcher {
            Matcher::All => (Bound::Unbounded, Bound::Unbounded),
            Matcher::PrimaryRange { lo, hi } => (lo.clone(), hi.clone()),
            _ => return None,
        };
        Some(ScanRange {
            table: rows.table.clone(),
            lo,
            hi,
        })
    }

    /// The row view of a rows feed.
    pub(crate) fn into_view(self) -> Option<View> {
        self.into_rows().map(|rows| rows.view)
    }

    pub(crate) fn new(plan: Plan, stats: bool) -> Result<Self> {
        let Plan {
            table,
            access,
            ops,
            index_order,
        } = plan;
        let mut view_ops = Vec::new();
        let mut limit = None;
        for op in ops {
            if limit.is_some() {
                return Err(Error::unwatchable(
                    "cannot watch a query with a transform or filter after limit",
                ));
            }
            match op {
                Op::Filter(_) | Op::Pluck(_) | Op::Without(_) => view_ops.push(op),
                Op::Limit(n) if index_order.is_some() => limit = Some(n),
                Op::Limit(_) => {
                    return Err(Error::unwatchable(
                        "cannot watch the first elements of an unordered stream: use order_by(Order::index(..)).limit(n)",
                    ))
                }
                Op::Sort { .. } => {
                    return Err(Error::unwatchable("cannot watch an order_by without an index: use order_by(Order::index(..))"))
                }
                Op::Skip(_) => return Err(Error::unwatchable("cannot watch a query with skip")),
            }
        }
        let view = View { ops: view_ops };
        if stats {
            return Ok(FeedPlan::Stats { view });
        }
        if let Some(order) = index_order {
            let Some(limit) = limit else {
                return Err(Error::unwatchable(
                    "cannot watch an order_by(index) without a limit",
                ));
            };
            let (ix, lo, hi, desc) = match access {
                Access::Primary { lo, hi, desc } => (None, lo, hi, desc),
                Access::IndexRange { ix, lo, hi, desc } => {
                    if ix.spec.is_multi() {
                        return Err(Error::unwatchable(format!(
                            "cannot watch order_by on the multi index `{}`",
                            ix.name
                        )));
                    }
                    (Some(ix), lo, hi, desc)
                }
                _ => unreachable!("order_by(index) plans read an ordered range"),
            };
            debug_assert_eq!(desc, order.descending);
            return Ok(FeedPlan::Table(AnyPlan::from(TopNPlan {
                table,
                order: OrderedIndex { ix, desc, lo, hi },
                view,
                limit,
            })));
        }
        let counted = |mut keys: Vec<Vec<u8>>| {
            keys.sort();
            let mut out: Vec<(Vec<u8>, usize)> = Vec::with_capacity(keys.len());
            for k in keys {
                match out.last_mut() {
                    Some((last, n)) if *last == k => *n += 1,
                    _ => out.push((k, 1)),
                }
            }
            out
        };
        let matcher = match access {
            Access::Primary {
                lo: Bound::Unbounded,
                hi: Bound::Unbounded,
                ..
            } => Matcher::All,
            Access::Primary { lo, hi, .. } => Matcher::PrimaryRange { lo, hi },
            Access::Keys(keys) => Matcher::Keys(counted(keys)),
            Access::IndexRange { ix, lo, hi, .. } => Matcher::IndexRange { ix, lo, hi },
            Access::IndexValues { ix, values } => Matcher::IndexValues {
                ix,
                values: counted(values),
            },
            Access::Rows(_) => unreachable!("only the stats table reads rows from memory"),
        };
        Ok(FeedPlan::Table(AnyPlan::from(Rows {
            table,
            matcher,
            view,
        })))
    }
}
