//! Which queries can be watched, and how: a query's plan is turned into a feed plan that says
//! which rows belong to the result (matcher), how a row is seen (filters and transforms), and
//! how writes are routed to it.

use crate::db::{IndexState, TableState};
use crate::query::plan::{Access, Op, Plan};
use crate::storage::Bytes;
use crate::value::encode_value;
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

    pub(crate) fn index_name(&self) -> Option<&str> {
        match self {
            Matcher::IndexValues { ix, .. } | Matcher::IndexRange { ix, .. } => Some(&ix.name),
            _ => None,
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
pub(crate) enum FeedPlan {
    /// Table, point, get_all and between feeds (with filters and transforms), and
    /// aggregates of those (`agg`).
    Rows {
        table: Arc<TableState>,
        matcher: Matcher,
        view: View,
        agg: Option<Box<super::aggregate::AggPlan>>,
        join: Option<Box<super::join::JoinPlan>>,
    },
    /// `order_by(index).limit(n)` feeds.
    TopN {
        table: Arc<TableState>,
        order: OrderedIndex,
        view: View,
        limit: usize,
    },
    /// The stats system table.
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
        let (table, ix) = match self {
            FeedPlan::Rows { table, matcher, .. } => (
                table,
                match matcher {
                    Matcher::IndexValues { ix, .. } | Matcher::IndexRange { ix, .. } => Some(ix),
                    _ => None,
                },
            ),
            FeedPlan::TopN { table, order, .. } => (table, order.ix.as_ref()),
            FeedPlan::Stats { .. } => return Ok(()),
        };
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

    /// For feeds over a primary key range (table feeds, `between` on the primary key), the
    /// range: their initial rows can be read in chunks.
    pub(crate) fn primary_range(&self) -> Option<ScanRange> {
        let (table, lo, hi) = match self {
            FeedPlan::Rows {
                table,
                matcher: Matcher::All,
                agg: None,
                join: None,
                ..
            } => (table, Bound::Unbounded, Bound::Unbounded),
            FeedPlan::Rows {
                table,
                matcher: Matcher::PrimaryRange { lo, hi },
                agg: None,
                join: None,
                ..
            } => (table, lo.clone(), hi.clone()),
            _ => return None,
        };
        Some(ScanRange {
            table: table.clone(),
            lo,
            hi,
        })
    }

    /// The row view of a rows feed.
    pub(crate) fn into_view(self) -> Option<View> {
        match self {
            FeedPlan::Rows { view, .. } => Some(view),
            _ => None,
        }
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
            return Ok(FeedPlan::TopN {
                table,
                order: OrderedIndex { ix, desc, lo, hi },
                view,
                limit,
            });
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
        Ok(FeedPlan::Rows {
            table,
            matcher,
            view,
            agg: None,
            join: None,
        })
    }
}
