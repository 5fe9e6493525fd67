//! Typed queries on a model's table.

use super::field::Numeric;
use super::{codec, Field, IndexKind, Model, ModelChanges, RelationKind, Schema};
use crate::{Database, Error, Order, Predicate, Query, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::marker::PhantomData;

/// Where a model query's rows come from.
#[derive(Clone)]
enum Source {
    /// The whole table (an equality on an indexed field is read through the index).
    Table,
    /// The rows with these values of an index (relations: the foreign-key index).
    Index(&'static str, Vec<Value>),
    /// The rows with these primary keys.
    Keys(Vec<Value>),
    /// The rows a many-to-many relation links to a parent (keys read from the join table
    /// when the query runs).
    Related(Box<Related>),
}

/// A many-to-many relation's side of a join table, for one parent.
#[derive(Clone)]
pub(crate) struct Related {
    /// The join table.
    pub(crate) join: String,
    /// Its column holding the parent's key (and the name of its index).
    pub(crate) fk: &'static str,
    /// The parent's key.
    pub(crate) parent: Value,
    /// Its column holding the related rows' keys.
    pub(crate) assoc: &'static str,
}

impl Related {
    /// The parent's join rows.
    pub(crate) fn links(&self, db: &Database) -> Query {
        db.table(self.join.as_str())
            .get_all([self.parent.clone()])
            .index(self.fk)
    }

    /// The related rows' keys, as the join table holds them.
    pub(crate) async fn keys(&self, db: &Database) -> Result<Vec<Value>> {
        codec::count_query();
        let links = self.links(db).run().await?;
        Ok(links
            .into_iter()
            .filter_map(|mut l| l.get_mut(self.assoc).map(Value::take))
            .collect())
    }

    /// The related rows, live: the links joined with the related table `table`.
    pub(crate) fn join(&self, db: &Database, table: &str) -> crate::Join {
        self.links(db).eq_join(self.assoc, table)
    }
}

#[derive(Clone)]
enum Step {
    Order(Order),
    Skip(usize),
    Limit(usize),
}

/// A query whose rows are models of type `T`: `filter`, `order_by`, `skip`, `limit`, then
/// `run`, `first`, `count`, `json` or `changes` (typed live feed, including
/// `order_by(index).limit(n)` leaderboards). [`ModelQuery::raw`] gives the store's query.
///
/// A filter with an equality on an indexed field (`fields().name.eq(..)` with
/// `#[remodel(index)] name`) reads through that index instead of scanning the table.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::model::{create_schema, Id};
/// use remodel::{Database, Model};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Model, Serialize, Deserialize, Debug)]
/// struct Score { id: Option<Id>, player: String, #[remodel(index)] points: i64 }
///
/// let db = Database::temporary().await?;
/// create_schema(&db).await?;
/// for (player, points) in [("ana", 30), ("bo", 70), ("cy", 50)] {
///     Score { id: None, player: player.into(), points }.create(&db).await?;
/// }
/// let f = Score::fields();
/// let top2 = Score::query(&db).order_by(f.points.index().desc()).limit(2).run().await?;
/// assert_eq!(top2.iter().map(|s| s.player.as_str()).collect::<Vec<_>>(), ["bo", "cy"]);
/// assert_eq!(Score::filter(&db, f.points.lt(60)).count().await?, 2);
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
pub struct ModelQuery<T> {
    db: Database,
    source: Source,
    filter: Option<Predicate>,
    steps: Vec<Step>,
    error: Option<Error>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ModelQuery<T> {
    fn clone(&self) -> Self {
        ModelQuery {
            db: self.db.clone(),
            source: self.source.clone(),
            filter: self.filter.clone(),
            steps: self.steps.clone(),
            error: self.error.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Model> fmt::Debug for ModelQuery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw() {
            Ok(q) => write!(f, "ModelQuery<{}>({q:?})", T::schema().model),
            Err(e) => write!(f, "ModelQuery<{}>(error: {e})", T::schema().model),
        }
    }
}

/// An equality on a field that has a simple index (a declared one or a foreign-key index),
/// or `contains` on a multi index, to read through the index. Looks at the predicate itself
/// and at the conjuncts of an `and`. An equality with `null` is not read through an index
/// (indexes leave out null values).
fn indexable(schema: &'static Schema, p: &Predicate) -> Option<(&'static str, Value)> {
    let index_on = |field: &str, multi: bool| -> Option<&'static str> {
        let declared = schema.indexes.iter().find(|ix| {
            ix.paths.len() == 1
                && ix.paths[0] == field
                && (ix.kind == IndexKind::Multi) == multi
                && ix.kind != IndexKind::Compound
        });
        match declared {
            Some(ix) => Some(ix.name),
            None if !multi => foreign_key_index(schema, field),
            None => None,
        }
    };
    match p {
        Predicate::Eq { field, value } if !value.is_null() => {
            index_on(field, false).map(|ix| (ix, value.clone()))
        }
        Predicate::Contains { field, value } if !value.is_null() => {
            index_on(field, true).map(|ix| (ix, value.clone()))
        }
        Predicate::And { all } => all.iter().find_map(|c| indexable(schema, c)),
        _ => None,
    }
}

/// Whether the index can be used: declared indexes and the model's own foreign keys are
/// created with its table; another model's has_many index exists only if that model's schema
/// was created too, so it is looked up.
fn has_index(schema: &Schema, table: &crate::Table, ix: &str) -> bool {
    schema.indexes.iter().any(|i| i.name == ix)
        || schema
            .relations
            .iter()
            .any(|r| r.kind == RelationKind::BelongsTo && r.foreign_key == ix)
        || table
            .index_names()
            .is_ok_and(|names| names.iter().any(|n| n == ix))
}

/// The foreign-key index of `schema`'s table on `field`, if a relation gives it one: its own
/// belongs_to, or another model's has_many / has_one pointing at it (the index is named after
/// the key).
fn foreign_key_index(schema: &'static Schema, field: &str) -> Option<&'static str> {
    let own = schema
        .relations
        .iter()
        .find(|r| r.kind == RelationKind::BelongsTo && r.foreign_key == field);
    if let Some(r) = own {
        return Some(r.foreign_key);
    }
    for r in inventory::iter::<super::Registration> {
        for rel in r.schema().relations {
            if matches!(rel.kind, RelationKind::HasMany | RelationKind::HasOne)
                && rel.foreign_key == field
                && std::ptr::eq(rel.target(), schema)
            {
                return Some(rel.foreign_key);
            }
        }
    }
    None
}

impl<T: Model> ModelQuery<T> {
    pub(crate) fn table(db: &Database) -> Self {
        ModelQuery {
            db: db.clone(),
            source: Source::Table,
            filter: None,
            steps: Vec::new(),
            error: None,
            _t: PhantomData,
        }
    }

    /// The rows whose index `index` has one of `values`.
    pub(crate) fn by_index(db: &Database, index: &'static str, values: Vec<Value>) -> Self {
        ModelQuery {
            source: Source::Index(index, values),
            ..Self::table(db)
        }
    }

    /// A query that fails with `error` when it runs (a relation of an unsaved model).
    pub(crate) fn related(db: &Database, related: Related) -> Self {
        ModelQuery {
            source: Source::Related(Box::new(related)),
            ..Self::table(db)
        }
    }

    pub(crate) fn by_keys(db: &Database, keys: Result<Vec<Value>>) -> Self {
        match keys {
            Ok(keys) => ModelQuery {
                source: Source::Keys(keys),
                ..Self::table(db)
            },
            Err(e) => Self::failed(db, e),
        }
    }

    pub(crate) fn failed(db: &Database, error: Error) -> Self {
        ModelQuery {
            error: Some(error),
            ..Self::table(db)
        }
    }

    /// Keeps the rows for which `predicate` holds (and-ed with earlier filters).
    pub fn filter(mut self, predicate: Predicate) -> Self {
        self.filter = Some(match self.filter.take() {
            None => predicate,
            Some(p) => p.and(predicate),
        });
        self
    }

    /// Orders the rows: by an index (`fields().points.index().desc()`) or a field.
    pub fn order_by(mut self, order: Order) -> Self {
        self.steps.push(Step::Order(order));
        self
    }

    /// Skips the first `n` rows.
    pub fn skip(mut self, n: usize) -> Self {
        self.steps.push(Step::Skip(n));
        self
    }

    /// Keeps at most `n` rows.
    pub fn limit(mut self, n: usize) -> Self {
        self.steps.push(Step::Limit(n));
        self
    }

    /// The store's query behind this one, to refine with anything the store offers (its
    /// rows are documents; read them as models with [`Model::from_json`]).
    pub fn raw(&self) -> Result<Query> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let schema = T::schema();
        let table = self.db.table(schema.table);
        let ordered_by_index = self
            .steps
            .iter()
            .any(|s| matches!(s, Step::Order(o) if is_index_order(o)));
        let mut steps = self.steps.iter().peekable();
        let mut q = match &self.source {
            Source::Index(ix, values) => table.get_all(values.clone()).index(*ix),
            Source::Keys(keys) => table.get_all(keys.clone()),
            Source::Related(_) => {
                return Err(Error::query(
                    "a many-to-many relation's query reads its keys from the join table when \
                     it runs: run it (`run`, `count`, ...) rather than asking for its raw query",
                ))
            }
            Source::Table => match self.filter.as_ref().and_then(|p| indexable(schema, p)) {
                Some((ix, v)) if !ordered_by_index && has_index(schema, &table, ix) => {
                    table.get_all([v]).index(ix)
                }
                _ => table.query(),
            },
        };
        // An index order reads the table through that index, so the store wants it right
        // after the table: the filter then applies to the ordered rows (a filtered top-N).
        if let (Source::Table, Some(Step::Order(o))) = (&self.source, steps.peek()) {
            if is_index_order(o) {
                q = q.order_by(o.clone());
                steps.next();
            }
        }
        if let Some(p) = &self.filter {
            q = q.filter(p.clone());
        }
        for s in steps {
            q = match s {
                Step::Order(o) => q.order_by(o.clone()),
                Step::Skip(n) => q.skip(*n),
                Step::Limit(n) => q.limit(*n),
            };
        }
        Ok(q)
    }

    fn empty_source(&self) -> bool {
        self.error.is_none()
            && matches!(&self.source, Source::Index(_, v) | Source::Keys(v) if v.is_empty())
    }

    /// The store query to run, read when the query runs: `None` when no row can match (no
    /// keys); a many-to-many relation's keys are read from its join table first.
    async fn resolve(&self) -> Result<Option<Query>> {
        // A filter that cannot run (a comparison with a NaN, say) is an error whether or not
        // any row could match: the answer must not depend on the rows.
        if let Some(p) = &self.filter {
            p.compile()?;
        }
        if self.empty_source() {
            return Ok(None);
        }
        let Source::Related(r) = &self.source else {
            return self.raw().map(Some);
        };
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let keys = r.keys(&self.db).await?;
        let keyed = ModelQuery {
            source: Source::Keys(keys),
            ..self.clone()
        };
        if keyed.empty_source() {
            return Ok(None);
        }
        keyed.raw().map(Some)
    }

    /// Runs the query: the matching models.
    pub async fn run(&self) -> Result<Vec<T>> {
        let Some(q) = self.resolve().await? else {
            return Ok(Vec::new());
        };
        codec::count_query();
        codec::decode_all(q.run().await?)
    }

    /// The first matching model.
    pub async fn first(&self) -> Result<Option<T>> {
        let Some(q) = self.resolve().await? else {
            return Ok(None);
        };
        codec::count_query();
        match q.first().await? {
            Some(doc) => codec::decode(doc).map(Some),
            None => Ok(None),
        }
    }

    /// The number of matching models.
    pub async fn count(&self) -> Result<u64> {
        let Some(q) = self.resolve().await? else {
            return Ok(0);
        };
        codec::count_query();
        q.count().await
    }

    /// The matching documents as JSON, undecoded.
    pub async fn json(&self) -> Result<Vec<Value>> {
        let Some(q) = self.resolve().await? else {
            return Ok(Vec::new());
        };
        codec::count_query();
        q.run().await
    }

    /// Watches the query's result: typed [`super::Change`] items (see [`ModelChanges`]).
    pub fn changes(&self) -> ModelChanges<T> {
        if let Source::Related(r) = &self.source {
            return self.related_changes(r);
        }
        ModelChanges::new(self.raw().map(|q| q.changes()))
    }

    /// A many-to-many relation's rows, live: its links joined with the related table, read
    /// as the related side. Filters and orderings are not followed live there.
    fn related_changes(&self, r: &Related) -> ModelChanges<T> {
        if let Some(e) = &self.error {
            return ModelChanges::new(Err(e.clone()));
        }
        if self.filter.is_some() || !self.steps.is_empty() {
            return ModelChanges::new(Err(Error::Unwatchable(
                "a many-to-many relation is watched whole (`changes()` on the relation): \
                 filter its items, or watch a query of the related table"
                    .into(),
            )));
        }
        let join = r.join(&self.db, T::schema().table);
        ModelChanges::part_of(Ok(join.changes()), "right")
    }

    /// Sets fields of every matching row, in one commit that selects the rows (so a row
    /// that matches when it commits is updated, whenever it was written); returns how many
    /// rows changed. A bulk write: the models' hooks do not run.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::model::{create_schema, Id};
    /// use remodel::{Database, Model};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Model, Serialize, Deserialize, Debug)]
    /// struct Cadet { id: Option<Id>, name: String, year: u32, rank: String }
    ///
    /// let db = Database::temporary().await?;
    /// create_schema(&db).await?;
    /// for (name, year) in [("Nog", 4), ("Wesley", 4), ("Sito", 2)] {
    ///     Cadet { id: None, name: name.into(), year, rank: "cadet".into() }.create(&db).await?;
    /// }
    /// let f = Cadet::fields();
    /// let graduated = Cadet::filter(&db, f.year.eq(4)).update(f.rank.set("ensign")).await?;
    /// assert_eq!(graduated, 2);
    /// assert_eq!(Cadet::filter(&db, f.rank.eq("ensign")).count().await?, 2);
    /// // Sums, averages and groups on typed fields, with typed results.
    /// assert_eq!(Cadet::query(&db).sum(f.year).await?, 10.0);
    /// let by_rank: Vec<(String, u64)> = Cadet::query(&db).group(f.rank).count().await?;
    /// assert_eq!(by_rank, vec![("cadet".to_string(), 1), ("ensign".to_string(), 2)]);
    /// assert_eq!(Cadet::query(&db).max(f.year).await?.unwrap().year, 4);
    /// // Deleting by predicate applies the model's relations, in the same commit.
    /// assert_eq!(Cadet::filter(&db, f.rank.eq("cadet")).delete().await?, 1);
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn update(&self, set: super::field::Set<T>) -> Result<u64> {
        // An assignment that cannot be written fails whether or not rows match.
        let patch = set.into_patch()?;
        let Some(q) = self.resolve().await? else {
            return Ok(0);
        };
        let r = self.db.batch().update_where(&q, patch).await?.check()?;
        Ok(r.replaced)
    }

    /// Deletes every matching row and applies the model's relations (`on_delete`: nullify,
    /// cascade, restrict; join rows removed) to what refers to them, in one commit that
    /// selects all of them; returns how many rows were deleted, rows a cascade deleted
    /// included. A relation that restricts the delete fails it with
    /// [`super::ModelError::Restricted`], and nothing is written. A bulk write: the models'
    /// hooks do not run.
    pub async fn delete(&self) -> Result<u64> {
        let Some(q) = self.resolve().await? else {
            return Ok(0);
        };
        let r = self
            .db
            .batch()
            .delete_where_cascading(&q, super::relation::references())
            .await
            .map_err(|e| super::relation::missing_as_model(e, &[T::schema()]))?
            .check()?;
        Ok(r.deleted)
    }

    /// The sum of a numeric field over the matching rows (rows holding `null` skipped).
    pub async fn sum<F: Numeric>(&self, field: Field<T, F>) -> Result<f64> {
        let Some(q) = self.resolve().await? else {
            return Ok(0.0);
        };
        codec::count_query();
        q.sum(field.name()).await
    }

    /// The average of a numeric field over the matching rows; `None` when none has one.
    pub async fn avg<F: Numeric>(&self, field: Field<T, F>) -> Result<Option<f64>> {
        let Some(q) = self.resolve().await? else {
            return Ok(None);
        };
        codec::count_query();
        q.avg(field.name()).await
    }

    /// The matching model with the smallest value of `field` (ties: the smallest key).
    pub async fn min<F>(&self, field: Field<T, F>) -> Result<Option<T>> {
        let Some(q) = self.resolve().await? else {
            return Ok(None);
        };
        codec::count_query();
        q.min(field.name()).await?.map(codec::decode).transpose()
    }

    /// The matching model with the largest value of `field` (ties: the smallest key).
    pub async fn max<F>(&self, field: Field<T, F>) -> Result<Option<T>> {
        let Some(q) = self.resolve().await? else {
            return Ok(None);
        };
        codec::count_query();
        q.max(field.name()).await?.map(codec::decode).transpose()
    }

    /// The matching rows grouped by the value of `field`, for a typed aggregation per group:
    /// `.count()`, `.sum(other)`, `.avg(other)`, each giving `(value, result)` pairs in the
    /// order of the values.
    pub fn group<F: DeserializeOwned>(&self, field: Field<T, F>) -> ModelGroups<T, F> {
        ModelGroups {
            query: self.clone(),
            field: field.name(),
            _t: PhantomData,
        }
    }
}

/// A model query's rows grouped by a field of type `F` (see [`ModelQuery::group`]).
pub struct ModelGroups<T, F> {
    query: ModelQuery<T>,
    field: &'static str,
    _t: PhantomData<fn() -> F>,
}

impl<T: Model, F: DeserializeOwned> ModelGroups<T, F> {
    async fn groups(
        &self,
        of: impl FnOnce(crate::Grouped) -> crate::Aggregate<Vec<crate::Group>>,
    ) -> Result<Vec<(F, Value)>> {
        let Some(q) = self.query.resolve().await? else {
            return Ok(Vec::new());
        };
        codec::count_query();
        let groups = of(q.group(self.field)).await?;
        let schema = T::schema();
        groups
            .into_iter()
            .map(|g| {
                let value = serde_json::from_value::<F>(g.group.clone()).map_err(|e| {
                    Error::from(super::ModelError::Decode {
                        table: schema.table.to_string(),
                        key: Box::new(Value::Null),
                        field: self.field.to_string(),
                        reason: format!("a group's value {}: {e}", g.group),
                    })
                })?;
                Ok((value, g.reduction))
            })
            .collect()
    }

    /// How many rows each value has.
    pub async fn count(&self) -> Result<Vec<(F, u64)>> {
        let groups = self.groups(|g| g.count()).await?;
        Ok(groups
            .into_iter()
            .map(|(v, n)| (v, n.as_u64().unwrap_or(0)))
            .collect())
    }

    /// The sum of a numeric field per value.
    pub async fn sum<N: Numeric>(&self, field: Field<T, N>) -> Result<Vec<(F, f64)>> {
        let groups = self.groups(|g| g.sum(field.name())).await?;
        Ok(groups
            .into_iter()
            .map(|(v, s)| (v, s.as_f64().unwrap_or(0.0)))
            .collect())
    }

    /// The average of a numeric field per value (`None` where no row of the value has one).
    pub async fn avg<N: Numeric>(&self, field: Field<T, N>) -> Result<Vec<(F, Option<f64>)>> {
        let groups = self.groups(|g| g.avg(field.name())).await?;
        Ok(groups.into_iter().map(|(v, a)| (v, a.as_f64())).collect())
    }
}

fn is_index_order(o: &Order) -> bool {
    matches!(o.key, crate::query::OrderKey::Index(_))
}
