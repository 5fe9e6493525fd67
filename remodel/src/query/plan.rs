//! Turning a query into a plan: how rows are read (which tree, which range, which order) and
//! which steps follow. Reads are lazy: rows are pulled from storage as the caller iterates.

use super::{Order, OrderKey, Source, Step};
use crate::db::{IndexState, TableState};
use crate::query::predicate::Compiled;
use crate::storage::Bytes;
use crate::value::{compare, encode_key, encode_value, FieldPath};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::Arc;

/// A document with its encoded primary key (used to break ties).
pub(crate) struct Row {
    pub key: Bytes,
    pub doc: Value,
}

pub(crate) type Rows = Box<dyn Iterator<Item = Result<Row>> + Send>;

/// How rows are read from storage.
#[derive(Clone)]
pub(crate) enum Access {
    /// Documents in primary key order within a range.
    Primary {
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        desc: bool,
    },
    /// Documents by primary key.
    Keys(Vec<Vec<u8>>),
    /// Entries of a secondary index within a range (one row per entry).
    IndexRange {
        ix: Arc<IndexState>,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        desc: bool,
    },
    /// Entries of a secondary index with one of these values (one row per entry).
    IndexValues {
        ix: Arc<IndexState>,
        values: Vec<Vec<u8>>,
    },
    /// Rows computed in memory (the stats system table).
    Rows(Arc<Vec<(Vec<u8>, Value)>>),
}

/// A step after the access, ready to run.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Filter(Arc<Compiled>),
    Sort {
        path: FieldPath,
        desc: bool,
        top: Option<usize>,
    },
    Skip(usize),
    Limit(usize),
    Pluck(Vec<FieldPath>),
    Without(Vec<FieldPath>),
}

pub(crate) struct Plan {
    pub table: Arc<TableState>,
    pub access: Access,
    pub ops: Vec<Op>,
    /// Set when the access already yields rows in the order of an `order_by(index)`.
    pub index_order: Option<Order>,
}

/// Encodes index range bounds: index keys are `encode(value) ++ encode(pk)`, so an excluded
/// lower or included upper bound must skip past every key that starts with the value.
fn index_bound(b: &Bound<Value>, lower: bool) -> Bound<Vec<u8>> {
    match b {
        Bound::Unbounded => Bound::Unbounded,
        Bound::Included(v) if lower => Bound::Included(encode_value(v)),
        Bound::Excluded(v) if !lower => Bound::Excluded(encode_value(v)),
        Bound::Included(v) | Bound::Excluded(v) => {
            let mut k = encode_value(v);
            k.push(0xFF);
            if lower {
                Bound::Included(k)
            } else {
                Bound::Excluded(k)
            }
        }
    }
}

fn primary_bound(b: &Bound<Value>) -> Bound<Vec<u8>> {
    match b {
        Bound::Unbounded => Bound::Unbounded,
        Bound::Included(v) => Bound::Included(encode_value(v)),
        Bound::Excluded(v) => Bound::Excluded(encode_value(v)),
    }
}

/// Plans a query: how its rows are read (`access`), then the operations applied to them.
pub(crate) fn plan(
    table: Arc<TableState>,
    source: &Source,
    steps: &[Step],
    stats: Option<Vec<Value>>,
) -> Result<Plan> {
    let mut steps = steps.iter().peekable();
    // An order_by(index) right after the source is served by reading the index in order.
    let index_order = match steps.peek() {
        Some(Step::OrderBy(
            o @ Order {
                key: OrderKey::Index(name),
                ..
            },
        )) => {
            check_index_order(&table, source, name)?;
            steps.next();
            Some(o.clone())
        }
        _ => None,
    };
    let access = access(&table, source, index_order.as_ref(), stats)?;
    let steps: Vec<&Step> = steps.collect();
    let ops = (0..steps.len())
        .map(|i| op(&steps, i))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        table,
        access,
        ops,
        index_order,
    })
}

/// An `order_by(index)` first is read from the index: only after the table itself or a
/// `between` on that index.
fn check_index_order(table: &TableState, source: &Source, name: &str) -> Result<()> {
    let ok = match source {
        Source::Table => true,
        Source::Between { index, .. } => index.as_deref().unwrap_or(&table.primary_key) == name,
        Source::GetAll { .. } | Source::Stats => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::query(format!(
            "order_by(index `{name}`) must follow the table itself or a between on that index"
        )))
    }
}

/// How the rows of `source` are read (in the order of `index_order`, when there is one).
fn access(
    table: &TableState,
    source: &Source,
    index_order: Option<&Order>,
    stats: Option<Vec<Value>>,
) -> Result<Access> {
    let desc = index_order.is_some_and(|o| o.descending);
    Ok(match (source, index_order) {
        (Source::Stats, _) => Access::Rows(Arc::new(
            stats
                .unwrap_or_default()
                .into_iter()
                .map(|row| (encode_value(&row["id"]), row))
                .collect(),
        )),
        (
            Source::Table,
            Some(Order {
                key: OrderKey::Index(name),
                ..
            }),
        ) if !table.is_primary(Some(name)) => Access::IndexRange {
            ix: table.index(name)?,
            lo: Bound::Unbounded,
            hi: Bound::Unbounded,
            desc,
        },
        (Source::Table, _) => Access::Primary {
            lo: Bound::Unbounded,
            hi: Bound::Unbounded,
            desc,
        },
        (Source::GetAll { keys, index }, _) => get_all_access(table, keys, index.as_deref())?,
        (Source::Between { lo, hi, index }, _) => {
            for b in [lo, hi] {
                if let Bound::Included(v) | Bound::Excluded(v) = b {
                    crate::value::check_depth(v, "a between bound")?;
                }
            }
            if table.is_primary(index.as_deref()) {
                Access::Primary {
                    lo: primary_bound(lo),
                    hi: primary_bound(hi),
                    desc,
                }
            } else {
                Access::IndexRange {
                    ix: table.index(index.as_deref().unwrap_or_default())?,
                    lo: index_bound(lo, true),
                    hi: index_bound(hi, false),
                    desc,
                }
            }
        }
    })
}

/// `get_all`: by primary keys, or by values of a secondary index.
fn get_all_access(table: &TableState, keys: &[Value], index: Option<&str>) -> Result<Access> {
    for k in keys {
        crate::value::check_depth(k, "get_all value")?;
    }
    if table.is_primary(index) {
        Ok(Access::Keys(
            keys.iter().map(encode_key).collect::<Result<_>>()?,
        ))
    } else {
        Ok(Access::IndexValues {
            ix: table.index(index.unwrap_or_default())?,
            values: keys.iter().map(encode_value).collect(),
        })
    }
}

/// The operation of step `i` (a sort looks ahead at a limit that bounds it).
fn op(steps: &[&Step], i: usize) -> Result<Op> {
    let paths = |fs: &[String]| {
        fs.iter()
            .map(|f| FieldPath::parse(f))
            .collect::<Result<_>>()
    };
    Ok(match steps[i] {
        Step::Filter(p) => Op::Filter(Arc::new(p.compile()?)),
        Step::OrderBy(Order {
            key: OrderKey::Index(name),
            ..
        }) => {
            return Err(Error::query(format!(
                "order_by(index `{name}`) must come first, right after the table or a between"
            )))
        }
        Step::OrderBy(Order {
            key: OrderKey::Field(f),
            descending,
        }) => {
            // A limit right after the sort (possibly after a skip) bounds it to a top-k.
            let top = match (steps.get(i + 1), steps.get(i + 2)) {
                (Some(Step::Limit(l)), _) => Some(*l),
                (Some(Step::Skip(s)), Some(Step::Limit(l))) => Some(s.saturating_add(*l)),
                _ => None,
            };
            Op::Sort {
                path: FieldPath::parse(f)?,
                desc: *descending,
                top,
            }
        }
        Step::Skip(n) => Op::Skip(*n),
        Step::Limit(n) => Op::Limit(*n),
        Step::Pluck(fs) => Op::Pluck(paths(fs)?),
        Step::Without(fs) => Op::Without(paths(fs)?),
    })
}

/// Ends a row iterator after its first error: the error of a dropped table (or a failed
/// storage) would otherwise come again for every row that remains.
fn until_error(rows: Rows) -> Rows {
    let mut failed = false;
    Box::new(rows.map_while(move |r| {
        if failed {
            return None;
        }
        failed = r.is_err();
        Some(r)
    }))
}

impl Plan {
    /// Rows straight from the access, before any step.
    pub(crate) fn source_rows(&self) -> Rows {
        let table = self.table.clone();
        match self.access.clone() {
            Access::Primary { lo, hi, desc } => {
                let it = table.docs.range(lo, hi);
                let it: Box<dyn Iterator<Item = _> + Send> = if desc {
                    Box::new(it.rev())
                } else {
                    Box::new(it)
                };
                Box::new(it.map(move |r| {
                    let (key, bytes) = r?;
                    table
                        .reads
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(Row {
                        doc: table.parse_doc(&bytes)?,
                        key,
                    })
                }))
            }
            Access::Keys(keys) => Box::new(keys.into_iter().filter_map(move |k| {
                table
                    .get_doc(&k)
                    .transpose()
                    .map(|r| r.map(|doc| Row { key: k.into(), doc }))
            })),
            Access::IndexRange { ix, lo, hi, desc } => {
                let it = ix.tree.range(lo, hi);
                let it: Box<dyn Iterator<Item = _> + Send> = if desc {
                    Box::new(it.rev())
                } else {
                    Box::new(it)
                };
                Box::new(it.filter_map(move |r| fetch_entry(&table, &ix, r)))
            }
            Access::Rows(rows) => Box::new((0..rows.len()).map(move |i| {
                Ok(Row {
                    key: rows[i].0.clone().into(),
                    doc: rows[i].1.clone(),
                })
            })),
            Access::IndexValues { ix, values } => Box::new(values.into_iter().flat_map(move |v| {
                let table = table.clone();
                let ix2 = ix.clone();
                ix.tree
                    .scan_prefix(&v)
                    .filter_map(move |r| fetch_entry(&table, &ix2, r))
            })),
        }
    }

    /// The rows of the whole query.
    pub(crate) fn rows(&self) -> Rows {
        let mut rows = until_error(self.source_rows());
        for op in self.ops.clone() {
            rows = match op {
                Op::Filter(p) => {
                    Box::new(rows.filter(move |r| r.as_ref().map_or(true, |row| p.eval(&row.doc))))
                }
                Op::Sort { path, desc, top } => sort(rows, path, desc, top),
                Op::Skip(n) => Box::new(rows.skip(n)),
                Op::Limit(n) => Box::new(rows.take(n)),
                Op::Pluck(paths) => Box::new(rows.map(move |r| {
                    r.map(|mut row| {
                        let mut out = Map::new();
                        for p in &paths {
                            p.copy_into(&row.doc, &mut out);
                        }
                        row.doc = Value::Object(out);
                        row
                    })
                })),
                Op::Without(paths) => Box::new(rows.map(move |r| {
                    r.map(|mut row| {
                        for p in &paths {
                            p.remove_from(&mut row.doc);
                        }
                        row
                    })
                })),
            };
        }
        rows
    }
}

/// Reads the document an index entry points to. Reads are not snapshot-isolated: between
/// reading the entry and the document, a commit may have deleted the document or moved it
/// elsewhere in the index. Such a stale entry is skipped, so a row returned through an index
/// always satisfies the index condition when it is returned.
fn fetch_entry(
    table: &TableState,
    ix: &IndexState,
    r: Result<(Bytes, Bytes)>,
) -> Option<Result<Row>> {
    let (entry, pk) = match r {
        Ok(kv) => kv,
        Err(e) => return Some(Err(e)),
    };
    match table.get_doc(&pk) {
        Err(e) => Some(Err(e)),
        Ok(None) => None,
        Ok(Some(doc)) => {
            let current = ix.compiled.keys(&doc, &pk);
            current
                .iter()
                .any(|k| k.as_slice() == &entry[..])
                .then_some(Ok(Row { key: pk, doc }))
        }
    }
}

/// A row with its sort value; ordered by (value, primary key), missing values last.
struct Sorted {
    value: Option<Value>,
    row: Row,
    desc: bool,
}

impl Sorted {
    fn cmp_asc(&self, other: &Self) -> Ordering {
        match (&self.value, &other.value) {
            (Some(a), Some(b)) => compare(a, b).then_with(|| self.row.key.cmp(&other.row.key)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => self.row.key.cmp(&other.row.key),
        }
    }

    /// The order of the result: descending reverses values and keys but keeps rows that
    /// lack the field last.
    fn cmp_result(&self, other: &Self) -> Ordering {
        match (&self.value, &other.value, self.desc) {
            (Some(_), Some(_), true) | (None, None, true) => self.cmp_asc(other).reverse(),
            _ => self.cmp_asc(other),
        }
    }
}

impl PartialEq for Sorted {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Sorted {}
impl PartialOrd for Sorted {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sorted {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_result(other)
    }
}

/// Sorts in memory; with `top`, keeps only the best `top` rows in a bounded heap.
fn sort(rows: Rows, path: FieldPath, desc: bool, top: Option<usize>) -> Rows {
    let mut heap: BinaryHeap<Sorted> = BinaryHeap::new();
    let mut all: Vec<Sorted> = Vec::new();
    for r in rows {
        let row = match r {
            Ok(row) => row,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let s = Sorted {
            value: path.get(&row.doc).cloned(),
            row,
            desc,
        };
        match top {
            Some(0) => {}
            Some(k) => {
                if heap.len() < k {
                    heap.push(s);
                } else if heap.peek().is_some_and(|worst| s < *worst) {
                    heap.pop();
                    heap.push(s);
                }
            }
            None => all.push(s),
        }
    }
    if top.is_some() {
        all = heap.into_vec();
    }
    all.sort();
    Box::new(all.into_iter().map(|s| Ok(s.row)))
}
