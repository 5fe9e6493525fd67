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

/// The number of 64-bit limbs of an exact sum: a finite double is an integer multiple of
/// 2^-1074 below 2^1024 (2,098 bits), and 2^64 of them add up to less than 2^2,162; one
/// more bit for the sign fits in 34 limbs, 35 leave a margin.
const SUM_LIMBS: usize = 35;

/// A sum of doubles kept exactly, rounded once when read (see [`ReduceKind::sum_add`]).
///
/// Why: a running `f64` total depends on the order of its additions and drifts when values
/// are taken out again (`0.1 + 0.2 + 0.3 - 0.1` is not `0.2 + 0.3`). A live sum adds and
/// removes rows in commit order while a query adds them in read order: both keep an exact
/// sum, so they agree to the last bit, whatever the order.
#[derive(Clone, Debug, Default)]
struct ExactSum(Vec<u64>);

impl ExactSum {
    fn add(&mut self, x: f64) {
        ReduceKind::sum_add(&mut self.0, x);
    }
    fn value(&self) -> f64 {
        ReduceKind::sum_value(&self.0)
    }
    /// The sum as a JSON number, or an error when it is beyond the doubles' range (JSON
    /// has no infinity: it would read as `null`, "no row has it").
    fn finite(&self) -> Result<f64> {
        let v = self.value();
        if v.is_finite() {
            Ok(v)
        } else {
            Err(Error::query(format!(
                "the sum is beyond the range of a double ({v})"
            )))
        }
    }
    fn mean(&self, n: u64) -> f64 {
        ReduceKind::sum_mean(&self.0, n)
    }
}

/// The arithmetic of exact sums. The limbs are a plain `Vec` and the functions hang on
/// [`ReduceKind`] because that is the one item of this module the rest of the crate can
/// name: the feed layer keeps its live sums with the same code as the query.
impl ReduceKind {
    /// Adds `x` to the exact sum held in `limbs` (empty: zero; a two's complement
    /// fixed-point integer counting units of 2^-1074, least significant limb first).
    /// `sum_add(limbs, -x)` exactly undoes `sum_add(limbs, x)`. Non-finite `x` (which JSON
    /// cannot hold) is ignored.
    pub(crate) fn sum_add(limbs: &mut Vec<u64>, x: f64) {
        if !x.is_finite() || x == 0.0 {
            return;
        }
        if limbs.len() != SUM_LIMBS {
            limbs.resize(SUM_LIMBS, 0);
        }
        let bits = x.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as u32;
        let frac = bits & ((1 << 52) - 1);
        // x = mantissa * 2^(shift - 1074): subnormals have exponent field 0 and no hidden bit.
        let (mantissa, shift) = if exp == 0 {
            (frac, 0)
        } else {
            (frac | (1 << 52), exp - 1)
        };
        let wide = (mantissa as u128) << (shift % 64);
        let (lo, hi) = (wide as u64, (wide >> 64) as u64);
        let first = (shift / 64) as usize;
        // Wrapping at the top limb is the two's complement arithmetic: a total that changes
        // sign borrows (or carries) through every limb above.
        if bits >> 63 == 1 {
            let (d, b1) = limbs[first].overflowing_sub(lo);
            limbs[first] = d;
            let (d, b2) = limbs[first + 1].overflowing_sub(hi);
            let (d, b3) = d.overflowing_sub(u64::from(b1));
            limbs[first + 1] = d;
            let mut borrow = b2 || b3;
            for limb in &mut limbs[first + 2..] {
                if !borrow {
                    break;
                }
                (*limb, borrow) = limb.overflowing_sub(1);
            }
        } else {
            let (d, c1) = limbs[first].overflowing_add(lo);
            limbs[first] = d;
            let (d, c2) = limbs[first + 1].overflowing_add(hi);
            let (d, c3) = d.overflowing_add(u64::from(c1));
            limbs[first + 1] = d;
            let mut carry = c2 || c3;
            for limb in &mut limbs[first + 2..] {
                if !carry {
                    break;
                }
                (*limb, carry) = limb.overflowing_add(1);
            }
        }
    }

    /// The exact sum in `limbs`, correctly rounded to the nearest double (ties to even);
    /// `±inf` beyond the doubles' range, `0.0` for an empty sum.
    pub(crate) fn sum_value(limbs: &[u64]) -> f64 {
        let Some(&last) = limbs.last() else {
            return 0.0;
        };
        let negative = last >> 63 == 1;
        let mut mag = limbs.to_vec();
        if negative {
            // Two's complement: the magnitude is the inverse plus one.
            let mut carry = true;
            for limb in mag.iter_mut() {
                (*limb, carry) = (!*limb).overflowing_add(u64::from(carry));
            }
        }
        let Some(top) = mag.iter().rposition(|&l| l != 0) else {
            return 0.0;
        };
        // The position of the highest set bit, counted from 2^-1074.
        let high = top * 64 + 63 - mag[top].leading_zeros() as usize;
        let (window, base) = if high < 64 {
            (mag[0], 0)
        } else {
            // The 64 bits from the highest down, and a sticky bit for anything set below
            // them, so that the one rounding below (u64 to f64) rounds as the exact value
            // would.
            let base = high - 63;
            let (limb, off) = (base / 64, base % 64);
            let window = if off == 0 {
                mag[limb]
            } else {
                (mag[limb] >> off) | (mag[limb + 1] << (64 - off))
            };
            let sticky =
                mag[..limb].iter().any(|&l| l != 0) || mag[limb] & ((1u64 << off) - 1) != 0;
            (window | u64::from(sticky), base)
        };
        // Exact when the result is subnormal (then `high` < 52: the window holds the whole
        // value, below 2^52), correctly rounded otherwise.
        let magnitude = scale(window as f64, base as i32 - 1074);
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }

    /// The mean of the `n` (> 0) numbers whose exact sum is in `limbs`: the rounded sum
    /// divided by `n`, as a double average is; when that sum is beyond the doubles' range,
    /// the exact sum divided by `n`, rounded once: the mean of finite numbers is finite
    /// (two rows of `f64::MAX` average `f64::MAX`, not infinity).
    pub(crate) fn sum_mean(limbs: &[u64], n: u64) -> f64 {
        let sum = Self::sum_value(limbs);
        if sum.is_finite() {
            return sum / n as f64;
        }
        let Some(&last) = limbs.last() else {
            return 0.0;
        };
        let negative = last >> 63 == 1;
        let mut q = limbs.to_vec();
        if negative {
            negate(&mut q);
        }
        // Long division of the magnitude, most significant limb first; a remainder left
        // sets the lowest bit (far below the 53 bits kept, unless the mean is subnormal),
        // so that the rounding in `sum_value` sees the quotient is not exact.
        let mut rem = 0u128;
        for limb in q.iter_mut().rev() {
            let cur = (rem << 64) | u128::from(*limb);
            *limb = (cur / u128::from(n)) as u64;
            rem = cur % u128::from(n);
        }
        if rem != 0 {
            q[0] |= 1;
        }
        if negative {
            negate(&mut q);
        }
        Self::sum_value(&q)
    }
}

/// Two's complement negation of a multi-limb integer, least significant limb first.
fn negate(limbs: &mut [u64]) {
    let mut carry = true;
    for limb in limbs.iter_mut() {
        (*limb, carry) = (!*limb).overflowing_add(u64::from(carry));
    }
}

/// `x * 2^e`, in steps that stay exact whenever the result is representable.
fn scale(mut x: f64, mut e: i32) -> f64 {
    let pow2 = |k: i32| f64::from_bits(((k + 1023) as u64) << 52);
    while e > 1023 {
        x *= pow2(1023);
        e -= 1023;
    }
    while e < -1022 {
        x *= pow2(-1022);
        e += 1022;
    }
    x * pow2(e)
}

/// Adds the number at `path` to `sum` (and counts it) for a sum or an average (`how`).
fn add_number(
    sum: &mut ExactSum,
    count: &mut u64,
    doc: &Value,
    path: &FieldPath,
    how: ReduceKind,
) -> Result<()> {
    if let Some(x) = how.number_at(doc, path)? {
        sum.add(x);
        *count += 1;
    }
    Ok(())
}

/// The rules every sum, average, min and max follows, the query's and the live feed's alike
/// (see also the exact sums above).
impl ReduceKind {
    /// The number a sum or average takes from a row: `None` when the field is missing or
    /// `null` (the row is skipped), an error for any other value that is not a number.
    pub(crate) fn number_at(self, doc: &Value, path: &FieldPath) -> Result<Option<f64>> {
        match path.get(doc) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n.as_f64().unwrap_or(0.0))),
            Some(other) => Err(Error::query(format!(
                "{} of `{path}`: {other} is not a number",
                if self == ReduceKind::Sum {
                    "sum"
                } else {
                    "avg"
                }
            ))),
        }
    }

    /// Whether a row whose field holds `v`, with encoded primary key `key`, beats the best
    /// so far, `best` (its value and key), for a min (or a max): values compare in the total
    /// order (`null` is a value like any other, between booleans and numbers), and ties go
    /// to the smaller primary key. Ties are broken by key, not by which row came first, so
    /// that the answer does not depend on the order a plan reads rows in (a `get_all` reads
    /// them in the order of its keys, a `between` in index order), and so that a live
    /// min/max, which refills from an index, gives the same row.
    pub(crate) fn beats(self, v: &Value, key: &[u8], best: (&Value, &[u8])) -> bool {
        let want = if self == ReduceKind::Min {
            Ordering::Less
        } else {
            Ordering::Greater
        };
        match compare(v, best.0) {
            Ordering::Equal => key < best.1,
            o => o == want,
        }
    }
}

/// The value a group is shown with: the canonical value of its key (`1` for rows holding
/// `1` or `1.0`, which are one group), not the first row's, which depends on the order
/// rows are read in. (The live aggregate shows the same.)
fn shown_group(key: &[u8], g: Value) -> Value {
    crate::value::decode_value(key).map_or(g, |(v, _)| v)
}

/// Keeps the row whose value at `path` is the smallest (`how`: min) or largest (max); rows
/// without the field are skipped, ties keep the smaller key (see [`ReduceKind::beats`]).
fn pick(
    best: &mut Option<(Value, Vec<u8>, Value)>,
    key: &[u8],
    doc: Value,
    path: &FieldPath,
    how: ReduceKind,
) {
    let Some(v) = path.get(&doc).cloned() else {
        return;
    };
    if best
        .as_ref()
        .is_none_or(|(b, bk, _)| how.beats(&v, key, (b, bk)))
    {
        *best = Some((v, key.to_vec(), doc));
    }
}

impl Query {
    /// The number of rows. `.await` it for the number, or call `.changes()` on it for a live
    /// count.
    pub fn count(&self) -> Aggregate<u64> {
        Aggregate::new(self, None, ReduceKind::Count, None)
    }

    /// The sum of the numbers in `field` (rows without it, or with `null`, are skipped; any
    /// other value is an error); `.await` it, or watch it with `.changes()`. The sum is
    /// exact, rounded once: it does not depend on the order of the rows.
    pub fn sum(&self, field: &str) -> Aggregate<f64> {
        Aggregate::new(self, None, ReduceKind::Sum, Some(field))
    }

    /// The average of the numbers in `field`; `None` when no row has one.
    pub fn avg(&self, field: &str) -> Aggregate<Option<f64>> {
        Aggregate::new(self, None, ReduceKind::Avg, Some(field))
    }

    /// The row with the smallest value in `field`, in the total order of values (arrays <
    /// booleans < `null` < numbers < objects < strings); rows without the field are skipped,
    /// and of rows with equal values the one with the smallest primary key is taken. A live
    /// min needs an index on `field`.
    pub fn min(&self, field: &str) -> Aggregate<Option<Value>> {
        Aggregate::new(self, None, ReduceKind::Min, Some(field))
    }

    /// The row with the largest value in `field` (the order and ties as for [`Query::min`]).
    /// A live max needs an index on `field`.
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

    fn sum_now(&self, field: &str, how: ReduceKind) -> Result<(ExactSum, u64)> {
        let path = FieldPath::parse(field)?;
        let (mut total, mut n) = (ExactSum::default(), 0);
        for row in self.plan()?.rows() {
            add_number(&mut total, &mut n, &row?.doc, &path, how)?;
        }
        Ok((total, n))
    }

    fn extreme(&self, field: &str, how: ReduceKind) -> Result<Option<Value>> {
        let path = FieldPath::parse(field)?;
        let mut best = None;
        for row in self.plan()?.rows() {
            let row = row?;
            pick(&mut best, &row.key, row.doc, &path, how);
        }
        Ok(best.map(|(_, _, doc)| doc))
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
        a.query
            .sum_now(a.field.as_deref().unwrap_or_default(), ReduceKind::Sum)?
            .0
            .finite()
    }
}

impl AggregateOutput for Option<f64> {
    fn compute(a: &Aggregate<Self>) -> Result<Self> {
        let (total, n) = a
            .query
            .sum_now(a.field.as_deref().unwrap_or_default(), ReduceKind::Avg)?;
        Ok((n > 0).then(|| total.mean(n)))
    }
}

impl AggregateOutput for Option<Value> {
    fn compute(a: &Aggregate<Self>) -> Result<Self> {
        a.query
            .extreme(a.field.as_deref().unwrap_or_default(), a.reduce)
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
            total: ExactSum,
            best: Option<(Value, Vec<u8>, Value)>,
        }
        let mut groups: std::collections::BTreeMap<Vec<u8>, Acc> = Default::default();
        for row in plan.rows() {
            let super::plan::Row { key, doc } = row?;
            for g in keys_of(&doc) {
                let k = crate::value::encode_value(&g);
                let acc = groups.entry(k).or_insert_with_key(|k| Acc {
                    group: shown_group(k, g),
                    count: 0,
                    total: ExactSum::default(),
                    best: None,
                });
                match &how {
                    Reduce::Count => acc.count += 1,
                    Reduce::Sum(p) => {
                        add_number(&mut acc.total, &mut acc.count, &doc, p, ReduceKind::Sum)?
                    }
                    Reduce::Avg(p) => {
                        add_number(&mut acc.total, &mut acc.count, &doc, p, ReduceKind::Avg)?
                    }
                    Reduce::Min(p) => pick(&mut acc.best, &key, doc.clone(), p, ReduceKind::Min),
                    Reduce::Max(p) => pick(&mut acc.best, &key, doc.clone(), p, ReduceKind::Max),
                }
            }
        }
        groups
            .into_values()
            .map(|a| {
                Ok(Group {
                    reduction: match &how {
                        Reduce::Count => json!(a.count),
                        Reduce::Sum(_) => json!(a.total.finite()?),
                        Reduce::Avg(_) if a.count == 0 => Value::Null,
                        Reduce::Avg(_) => json!(a.total.mean(a.count)),
                        Reduce::Min(_) | Reduce::Max(_) => {
                            a.best.map(|(_, _, d)| d).unwrap_or(Value::Null)
                        }
                    },
                    group: a.group,
                })
            })
            .collect()
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
        if self.index.is_some() {
            // Each left row may match any number of right rows through a secondary index:
            // however few the left rows, the read may be large.
            return crate::db::spawn_blocking(move || join.run_blocking()).await;
        }
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
                        let (entry, pk) = entry?;
                        let Some(right) = other.get_doc(&pk)? else {
                            continue;
                        };
                        // A commit between reading the entry and the row may have moved the
                        // row elsewhere in the index: such a stale entry is no match.
                        let current = ix.compiled.keys(&right, &pk);
                        if current.iter().any(|k| k.as_slice() == &entry[..]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(xs: &[f64]) -> f64 {
        let mut s = ExactSum::default();
        xs.iter().for_each(|&x| s.add(x));
        s.value()
    }

    /// A few random doubles of every magnitude (bit patterns), deterministically.
    fn doubles(n: usize) -> Vec<f64> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let x = f64::from_bits(z);
            if x.is_finite() {
                out.push(x);
            }
        }
        out
    }

    #[test]
    fn means_of_sums_beyond_the_range_are_finite() {
        let mean = |xs: &[f64]| {
            let mut s = ExactSum::default();
            xs.iter().for_each(|&x| s.add(x));
            s.mean(xs.len() as u64)
        };
        assert_eq!(mean(&[f64::MAX, f64::MAX]), f64::MAX);
        assert_eq!(mean(&[f64::MAX; 7]), f64::MAX);
        assert_eq!(mean(&[f64::MIN, f64::MIN, f64::MIN]), f64::MIN);
        assert_eq!(mean(&[f64::MAX, f64::MAX, -f64::MAX]), f64::MAX / 3.0);
        // 1.5 * MAX over 2, 3/4 of MAX: exact in doubles.
        let m = mean(&[f64::MAX, f64::MAX / 2.0]);
        assert_eq!(m, f64::MAX * 0.75);
        // In range, a mean is the rounded sum over the count, as before.
        assert_eq!(mean(&[0.1, 0.2, 0.3]), sum(&[0.1, 0.2, 0.3]) / 3.0);
    }

    #[test]
    fn exact_sums_round_like_one_ieee_addition() {
        // IEEE addition of two doubles is correctly rounded: so must the exact sum be.
        let xs = doubles(4000);
        let specials = [
            0.0,
            -0.0,
            5e-324,
            -5e-324,
            f64::MAX,
            f64::MIN,
            1.0,
            0.1,
            1e-310,
        ];
        let mut pairs: Vec<(f64, f64)> = xs.chunks(2).map(|p| (p[0], p[1])).collect();
        for &a in &specials {
            for &b in specials.iter().chain(&xs[..50]) {
                pairs.push((a, b));
                // Near cancellations and near neighbours.
                pairs.push((a, -b));
                pairs.push((b, -f64::from_bits(b.to_bits().wrapping_add(1))));
            }
        }
        for (a, b) in pairs {
            if !(a.is_finite() && b.is_finite()) {
                continue;
            }
            let got = sum(&[a, b]);
            assert!(got == a + b, "{a:e} + {b:e}: {got:e}, not {:e}", a + b);
        }
    }

    #[test]
    fn taking_a_value_out_undoes_adding_it() {
        let xs = doubles(300);
        let mut s = ExactSum::default();
        for (i, &x) in xs.iter().enumerate() {
            s.add(x);
            if i >= 2 {
                // Everything but the last two out again: the sum of two, correctly rounded.
                let mut t = s.clone();
                xs[..i - 1].iter().for_each(|&y| t.add(-y));
                assert_eq!(t.value(), xs[i - 1] + xs[i]);
            }
        }
        assert_eq!(sum(&[0.1, 0.2, 0.3, -0.1]), 0.2 + 0.3);
        assert_eq!(sum(&[1e20, 1.0, -1e20]), 1.0);
        assert_eq!(sum(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert_eq!(sum(&[f64::MAX, f64::MAX, -f64::MAX]), f64::MAX);
        assert_eq!(sum(&[f64::MIN, f64::MIN]), f64::NEG_INFINITY);
        assert_eq!(sum(&[5e-324, 5e-324]), 1e-323);
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(sum(&[3.0, -3.0]), 0.0);
    }

    #[test]
    fn sums_do_not_depend_on_the_order() {
        let xs = doubles(200);
        let mut rev = xs.clone();
        rev.reverse();
        assert_eq!(sum(&xs).to_bits(), sum(&rev).to_bits());
    }
}
