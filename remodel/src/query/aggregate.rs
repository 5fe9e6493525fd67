//! Aggregates (count, sum, avg, min, max), grouping and joins.

use super::Query;
use crate::value::{compare, encode_key, FieldPath};
use crate::{Error, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;

/// Sums the numbers at `path`; rows without the field are skipped, other values are an error.
fn add_numbers(
    total: &mut f64,
    count: &mut u64,
    doc: &Value,
    path: &FieldPath,
    what: &str,
) -> Result<()> {
    match path.get(doc) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) => {
            *total += n.as_f64().unwrap_or(0.0);
            *count += 1;
            Ok(())
        }
        Some(other) => Err(Error::query(format!(
            "{what} of `{path}`: {other} is not a number"
        ))),
    }
}

/// Keeps the row whose value at `path` is the smallest (or largest); ties keep the first.
fn pick(best: &mut Option<(Value, Value)>, doc: Value, path: &FieldPath, want: Ordering) {
    let Some(v) = path.get(&doc).cloned() else {
        return;
    };
    if best.as_ref().is_none_or(|(b, _)| compare(&v, b) == want) {
        *best = Some((v, doc));
    }
}

impl Query {
    /// The number of rows. `.await` it for the number, or call `.changes()` on it for a live
    /// count.
    pub fn count(&self) -> Aggregate<u64> {
        Aggregate::new(self, None, ReduceKind::Count, None)
    }

    /// The sum of the numbers in `field` (rows without it are skipped); `.await` it, or
    /// watch it with `.changes()`.
    pub fn sum(&self, field: &str) -> Aggregate<f64> {
        Aggregate::new(self, None, ReduceKind::Sum, Some(field))
    }

    /// The average of the numbers in `field`; `None` when no row has one.
    pub fn avg(&self, field: &str) -> Aggregate<Option<f64>> {
        Aggregate::new(self, None, ReduceKind::Avg, Some(field))
    }

    /// The row with the smallest value in `field` (in the total order of values). A live
    /// min needs an index on `field`.
    pub fn min(&self, field: &str) -> Aggregate<Option<Value>> {
        Aggregate::new(self, None, ReduceKind::Min, Some(field))
    }

    /// The row with the largest value in `field`. A live max needs an index on `field`.
    pub fn max(&self, field: &str) -> Aggregate<Option<Value>> {
        Aggregate::new(self, None, ReduceKind::Max, Some(field))
    }

    fn count_now(&self) -> Result<u64> {
        let mut n = 0;
        for row in self.plan()?.rows() {
            row?;
            n += 1;
        }
        Ok(n)
    }

    fn sum_now(&self, field: &str, what: &str) -> Result<(f64, u64)> {
        let path = FieldPath::parse(field)?;
        let (mut total, mut n) = (0.0, 0);
        for row in self.plan()?.rows() {
            add_numbers(&mut total, &mut n, &row?.doc, &path, what)?;
        }
        Ok((total, n))
    }

    fn extreme(&self, field: &str, want: Ordering) -> Result<Option<Value>> {
        let path = FieldPath::parse(field)?;
        let mut best = None;
        for row in self.plan()?.rows() {
            pick(&mut best, row?.doc, &path, want);
        }
        Ok(best.map(|(_, doc)| doc))
    }

    /// Groups the rows by the value of `field` (rows without it form the group `null`); follow
    /// with an aggregation.
    pub fn group(&self, field: &str) -> Grouped {
        Grouped {
            query: self.clone(),
            by: field.to_string(),
            multi: false,
        }
    }

    /// Groups the rows by a secondary index's values: a multi index puts a row in one group
    /// per value.
    pub fn group_by_index(&self, index: &str) -> Grouped {
        Grouped {
            query: self.clone(),
            by: index.to_string(),
            multi: true,
        }
    }

    /// Joins each row's `field` to the primary key of table `other` (or, with
    /// [`Join::index`], to one of its secondary indexes). Rows without a match are dropped.
    pub fn eq_join(&self, field: &str, other: &str) -> Join {
        Join {
            query: self.clone(),
            field: field.to_string(),
            other: other.to_string(),
            index: None,
        }
    }
}

/// One group of a grouped aggregation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    /// The group's value.
    pub group: Value,
    /// The aggregation of the group's rows.
    pub reduction: Value,
}

/// An aggregate waiting to be run (`.await`) or watched (`.changes()`): see
/// [`Query::count`], [`Grouped::count`] and their siblings.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use futures_util::StreamExt;
/// use remodel::Database;
/// use serde_json::json;
/// let db = Database::temporary().await?;
/// db.create_table("crew").await?;
/// let crew = db.table("crew");
/// crew.insert(json!({"id": "data", "species": "android"})).await?;
/// assert_eq!(crew.query().count().await?, 1);
/// let mut chart = crew.query().group("species").count().changes().include_initial(true).await?;
/// let first = chart.next().await.unwrap()?;
/// assert_eq!(first.new_val(), Some(&json!({"group": "android", "reduction": 1})));
/// crew.insert(json!({"id": "worf", "species": "klingon"})).await?;
/// let c = chart.next().await.unwrap()?;
/// assert_eq!((c.old_val(), c.new_val()), (None, Some(&json!({"group": "klingon", "reduction": 1}))));
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "an aggregate does nothing until it is awaited or watched"]
pub struct Aggregate<T> {
    pub(crate) query: Query,
    /// Grouped by a field (`false`) or an index (`true`).
    pub(crate) by: Option<(String, bool)>,
    pub(crate) reduce: ReduceKind,
    pub(crate) field: Option<String>,
    _out: PhantomData<fn() -> T>,
}

impl<T> Clone for Aggregate<T> {
    fn clone(&self) -> Self {
        Aggregate {
            query: self.query.clone(),
            by: self.by.clone(),
            reduce: self.reduce,
            field: self.field.clone(),
            _out: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Aggregate<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("by", &self.by)
            .field("reduce", &self.reduce)
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

impl<T> Aggregate<T> {
    fn new(
        query: &Query,
        by: Option<(String, bool)>,
        reduce: ReduceKind,
        field: Option<&str>,
    ) -> Self {
        Aggregate {
            query: query.clone(),
            by,
            reduce,
            field: field.map(str::to_string),
            _out: PhantomData,
        }
    }
}

/// What an aggregate reduces its rows (or each group) to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReduceKind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// What an aggregate produces when it is run (sealed: `u64`, `f64`, `Option<f64>`,
/// `Option<Value>`, `Vec<Group>`).
pub trait AggregateOutput: sealed::Sealed + Sized + Send + 'static {
    #[doc(hidden)]
    fn compute(a: &Aggregate<Self>) -> Result<Self>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u64 {}
    impl Sealed for f64 {}
    impl Sealed for Option<f64> {}
    impl Sealed for Option<serde_json::Value> {}
    impl Sealed for Vec<super::Group> {}
}

impl AggregateOutput for u64 {
    fn compute(a: &Aggregate<Self>) -> Result<Self> {
        a.query.count_now()
    }
}

impl AggregateOutput for f64 {
    fn compute(a: &Aggregate<Self>) -> Result<Self> {
        Ok(a.query
            .sum_now(a.field.as_deref().unwrap_or_default(), "sum")?
            .0)
    }
}

impl AggregateOutput for Option<f64> {
    fn compute(a: &Aggregate<Self>) -> Result<Self> {
        let (total, n) = a
            .query
            .sum_now(a.field.as_deref().unwrap_or_default(), "avg")?;
        Ok((n > 0).then(|| total / n as f64))
    }
}

impl AggregateOutput for Option<Value> {
    fn compute(a: &Aggregate<Self>) -> Result<Self> {
        let want = if a.reduce == ReduceKind::Min {
            Ordering::Less
        } else {
            Ordering::Greater
        };
        a.query
            .extreme(a.field.as_deref().unwrap_or_default(), want)
    }
}

impl AggregateOutput for Vec<Group> {
    fn compute(a: &Aggregate<Self>) -> Result<Self> {
        let (by, multi) = a.by.clone().unwrap_or_default();
        let grouped = Grouped {
            query: a.query.clone(),
            by,
            multi,
        };
        let field = || FieldPath::parse(a.field.as_deref().unwrap_or_default());
        grouped.reduce(match a.reduce {
            ReduceKind::Count => Reduce::Count,
            ReduceKind::Sum => Reduce::Sum(field()?),
            ReduceKind::Avg => Reduce::Avg(field()?),
            ReduceKind::Min => Reduce::Min(field()?),
            ReduceKind::Max => Reduce::Max(field()?),
        })
    }
}

impl<T: AggregateOutput> IntoFuture for Aggregate<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            // Reading the rows runs off the async workers (see [`Query::run`]).
            let query = self.query.clone();
            query.offload(move |_| T::compute(&self)).await
        })
    }
}

/// Rows grouped by a field or an index, waiting for an aggregation.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::Database;
/// use serde_json::json;
/// let db = Database::temporary().await?;
/// db.create_table("crew").await?;
/// db.table("crew").insert_many(vec![
///     json!({"name": "Data", "species": "android"}),
///     json!({"name": "Picard", "species": "human"}),
///     json!({"name": "Troi", "species": "human"}),
/// ]).await?;
/// let by_species = db.table("crew").query().group("species").count().await?;
/// assert_eq!(by_species[1].group, json!("human"));
/// assert_eq!(by_species[1].reduction, json!(2));
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Grouped {
    query: Query,
    by: String,
    multi: bool,
}

enum Reduce {
    Count,
    Sum(FieldPath),
    Avg(FieldPath),
    Min(FieldPath),
    Max(FieldPath),
}

impl Grouped {
    fn then<T>(&self, reduce: ReduceKind, field: Option<&str>) -> Aggregate<T> {
        Aggregate::new(
            &self.query,
            Some((self.by.clone(), self.multi)),
            reduce,
            field,
        )
    }
    /// The number of rows in each group (`.await` it, or watch it with `.changes()`).
    pub fn count(&self) -> Aggregate<Vec<Group>> {
        self.then(ReduceKind::Count, None)
    }
    /// The sum of `field` in each group.
    pub fn sum(&self, field: &str) -> Aggregate<Vec<Group>> {
        self.then(ReduceKind::Sum, Some(field))
    }
    /// The average of `field` in each group (`null` when no row has it).
    pub fn avg(&self, field: &str) -> Aggregate<Vec<Group>> {
        self.then(ReduceKind::Avg, Some(field))
    }
    /// The row with the smallest `field` in each group (live: needs an index on `field`).
    pub fn min(&self, field: &str) -> Aggregate<Vec<Group>> {
        self.then(ReduceKind::Min, Some(field))
    }
    /// The row with the largest `field` in each group (live: needs an index on `field`).
    pub fn max(&self, field: &str) -> Aggregate<Vec<Group>> {
        self.then(ReduceKind::Max, Some(field))
    }

    fn reduce(&self, how: Reduce) -> Result<Vec<Group>> {
        let plan = self.query.plan()?;
        enum By {
            Index(std::sync::Arc<crate::db::IndexState>),
            Field(FieldPath),
        }
        let by = if self.multi {
            By::Index(plan.table.index(&self.by)?)
        } else {
            By::Field(FieldPath::parse(&self.by)?)
        };
        let keys_of = |doc: &Value| match &by {
            By::Index(ix) => ix.compiled.values(doc),
            By::Field(path) => vec![path.get(doc).cloned().unwrap_or(Value::Null)],
        };
        // Groups keyed by the order-preserving encoding of their value: sorted and exact.
        struct Acc {
            group: Value,
            count: u64,
            total: f64,
            best: Option<(Value, Value)>,
        }
        let mut groups: std::collections::BTreeMap<Vec<u8>, Acc> = Default::default();
        for row in plan.rows() {
            let doc = row?.doc;
            for g in keys_of(&doc) {
                let k = crate::value::encode_value(&g);
                let acc = groups.entry(k).or_insert(Acc {
                    group: g,
                    count: 0,
                    total: 0.0,
                    best: None,
                });
                match &how {
                    Reduce::Count => acc.count += 1,
                    Reduce::Sum(p) => add_numbers(&mut acc.total, &mut acc.count, &doc, p, "sum")?,
                    Reduce::Avg(p) => add_numbers(&mut acc.total, &mut acc.count, &doc, p, "avg")?,
                    Reduce::Min(p) => pick(&mut acc.best, doc.clone(), p, Ordering::Less),
                    Reduce::Max(p) => pick(&mut acc.best, doc.clone(), p, Ordering::Greater),
                }
            }
        }
        Ok(groups
            .into_values()
            .map(|a| Group {
                reduction: match &how {
                    Reduce::Count => json!(a.count),
                    Reduce::Sum(_) => json!(a.total),
                    Reduce::Avg(_) if a.count == 0 => Value::Null,
                    Reduce::Avg(_) => json!(a.total / a.count as f64),
                    Reduce::Min(_) | Reduce::Max(_) => {
                        a.best.map(|(_, d)| d).unwrap_or(Value::Null)
                    }
                },
                group: a.group,
            })
            .collect())
    }
}

/// An equi-join of a query with another table (see [`Query::eq_join`]).
#[derive(Clone, Debug)]
pub struct Join {
    pub(crate) query: Query,
    pub(crate) field: String,
    pub(crate) other: String,
    pub(crate) index: Option<String>,
}

impl Join {
    /// Matches against this secondary index of the other table instead of its primary key.
    pub fn index(mut self, name: &str) -> Self {
        self.index = Some(name.to_string());
        self
    }

    /// The joined rows, each `{"left": row, "right": matching row}`.
    pub async fn run(&self) -> Result<Vec<Value>> {
        let join = self.clone();
        self.query.offload(move |_| join.run_blocking()).await
    }

    fn run_blocking(&self) -> Result<Vec<Value>> {
        let path = FieldPath::parse(&self.field)?;
        let plan = self.query.plan()?;
        let other = self.query.db.table_state(&self.other)?;
        let ix = match &self.index {
            Some(name) if !other.is_primary(Some(name)) => Some(other.index(name)?),
            _ => None,
        };
        let mut out = Vec::new();
        for row in plan.rows() {
            let left = row?.doc;
            let Some(v) = path.get(&left) else { continue };
            match &ix {
                None => {
                    let Ok(k) = encode_key(v) else { continue };
                    if let Some(right) = other.get_doc(&k)? {
                        out.push(json!({"left": left, "right": right}));
                    }
                }
                Some(ix) => {
                    for entry in ix.tree.scan_prefix(&crate::value::encode_value(v)) {
                        let (_, pk) = entry?;
                        if let Some(right) = other.get_doc(&pk)? {
                            out.push(json!({"left": left.clone(), "right": right}));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The joined rows with each right row's fields merged into its left row.
    pub async fn zip(&self) -> Result<Vec<Value>> {
        Ok(self
            .run()
            .await?
            .into_iter()
            .map(|mut pair| {
                let mut left = pair["left"].take();
                crate::db::write::merge(&mut left, &pair["right"]);
                left
            })
            .collect())
    }
}
