//! Typed queries on a model's table.

use super::{codec, IndexKind, Model, ModelChanges, RelationKind, Schema};
use crate::{Database, Error, Order, Predicate, Query, Result};
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
        self.error.is_none() && matches!(&self.source, Source::Index(_, v) if v.is_empty())
    }

    /// Runs the query: the matching models.
    pub async fn run(&self) -> Result<Vec<T>> {
        if self.empty_source() {
            return Ok(Vec::new());
        }
        codec::count_query();
        codec::decode_all(self.raw()?.run().await?)
    }

    /// The first matching model.
    pub async fn first(&self) -> Result<Option<T>> {
        if self.empty_source() {
            return Ok(None);
        }
        codec::count_query();
        match self.raw()?.first().await? {
            Some(doc) => codec::decode(doc).map(Some),
            None => Ok(None),
        }
    }

    /// The number of matching models.
    pub async fn count(&self) -> Result<u64> {
        if self.empty_source() {
            return Ok(0);
        }
        codec::count_query();
        self.raw()?.count().await
    }

    /// The matching documents as JSON, undecoded.
    pub async fn json(&self) -> Result<Vec<Value>> {
        if self.empty_source() {
            return Ok(Vec::new());
        }
        codec::count_query();
        self.raw()?.run().await
    }

    /// Watches the query's result: typed [`super::Change`] items (see [`ModelChanges`]).
    pub fn changes(&self) -> ModelChanges<T> {
        ModelChanges::new(self.raw().map(|q| q.changes()))
    }
}

fn is_index_order(o: &Order) -> bool {
    matches!(o.key, crate::query::OrderKey::Index(_))
}
