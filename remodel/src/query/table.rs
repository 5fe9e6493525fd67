//! The table handle and point reads.

use super::{Insert, Order, Predicate, Query, Source, Write};
use crate::db::{Database, IndexSpec, IndexStatus, Patch, TableState};
use crate::value::encode_key;
use crate::{Error, Result};
use serde_json::Value;
use std::future::IntoFuture;
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

/// A handle to a table. Getting one does no I/O; a missing table is reported when the handle
/// is used ([`Error::NoSuchTable`]).
#[derive(Clone)]
pub struct Table {
    pub(crate) db: Database,
    pub(crate) name: Arc<str>,
    /// The open table, remembered after the first lookup (looked up again if it was dropped).
    cached: OnceLock<Arc<TableState>>,
}

impl Database {
    /// The read-only `stats` system table, as a query: one row for the database
    /// (`id: ["database"]`) and one per table (`id: ["table", name]`) with totals and
    /// per-second rates of documents read and written, the number of open changefeeds
    /// (`feeds`) and of the shared results they read (`feed_groups`: feeds of one query share
    /// one; 0 once every feed is dropped).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::{field, Database};
    /// let db = Database::temporary().await?;
    /// db.create_table("logs").await?;
    /// let rows = db.stats().filter(field("type").eq("table")).run().await?;
    /// assert_eq!(rows[0]["table"], "logs");
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn stats(&self) -> Query {
        Query::new(self.clone(), "stats".into(), Source::Stats)
    }

    /// A handle to the table called `name`.
    pub fn table(&self, name: impl Into<String>) -> Table {
        Table {
            db: self.clone(),
            name: Arc::from(name.into()),
            cached: OnceLock::new(),
        }
    }
}

impl Table {
    /// The open table behind this handle.
    pub(crate) fn state(&self) -> Result<Arc<TableState>> {
        match self.cached.get() {
            Some(t) if !t.is_dropped() => {
                self.db.check_open()?;
                Ok(t.clone())
            }
            _ => {
                let t = self.db.table_state(&self.name)?;
                let _ = self.cached.set(t.clone());
                Ok(t)
            }
        }
    }

    /// [`Table::state`] for a write: a table this process's store lacks may be one another
    /// process created that the store has not applied yet (see
    /// [`Database::checked_in_sync`]).
    pub(crate) async fn state_for_write(&self) -> Result<Arc<TableState>> {
        self.db.checked_in_sync(|| self.state()).await
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the primary key field.
    pub fn primary_key(&self) -> Result<String> {
        Ok(self.state()?.primary_key.clone())
    }

    /// Creates a secondary index and fills it from the existing documents. Returns once the
    /// index is ready; writes that run during the build are indexed too.
    pub async fn create_index(&self, name: &str, spec: IndexSpec) -> Result<()> {
        self.db.create_index(&self.name, name, spec).await
    }

    /// Creates the index unless an index of that name with the same spec exists; returns
    /// whether it was created. An index of that name with another spec is an error.
    pub async fn ensure_index(&self, name: &str, spec: IndexSpec) -> Result<bool> {
        // From the catalog in memory: an index that exists is not read.
        let existing = self
            .db
            .index_specs(&self.name)?
            .into_iter()
            .find(|(n, _)| n == name);
        match existing {
            Some((_, s)) if s == spec => Ok(false),
            Some(_) => Err(Error::IndexExists {
                table: self.name.to_string(),
                index: name.to_string(),
            }),
            None => match self.create_index(name, spec.clone()).await {
                Err(Error::IndexExists { .. }) => Box::pin(self.ensure_index(name, spec)).await,
                other => other.map(|()| true),
            },
        }
    }

    /// Drops a secondary index. Changefeeds that read it end with [`Error::FeedAborted`].
    pub async fn drop_index(&self, name: &str) -> Result<()> {
        self.db.drop_index(&self.name, name).await
    }

    /// The secondary indexes, their specs, whether they are ready, and how many entries each
    /// holds. Counting entries reads every index (on the calling thread): to list indexes, use
    /// [`Table::index_names`], which reads nothing.
    pub fn index_status(&self) -> Result<Vec<IndexStatus>> {
        self.db.index_status(&self.name)
    }

    /// The names of the secondary indexes.
    pub fn index_names(&self) -> Result<Vec<String>> {
        Ok(self
            .db
            .index_specs(&self.name)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// The document with this primary key: `.await` it to read, or update, replace, delete it.
    pub fn get(&self, key: impl Into<Value>) -> Get {
        let mut key = key.into();
        // A key too deep to use is swapped at once for one just too deep (each use refuses
        // it with `TooDeep`): cloning the handle, or a query made from it, would otherwise
        // recurse through the whole value and overflow the stack.
        if crate::value::deeper_than(&key, crate::value::MAX_DEPTH) {
            crate::value::drop_deep(std::mem::replace(&mut key, too_deep_key()));
        }
        Get {
            table: self.clone(),
            key,
        }
    }

    /// The stored documents (JSON bytes) with these primary keys, in their order (`None`
    /// for a key with no document), for loaders that decode them straight into their own
    /// types. Read in key order, a chunk at a time in place, giving the scheduler a turn
    /// every 200 µs (see `db::table::SortedReader` and `query::Turns`).
    pub(crate) async fn get_raw_many(
        &self,
        keys: &[&Value],
    ) -> Result<Vec<Option<crate::storage::Bytes>>> {
        let t = self.state()?;
        // Read in key order (see `SortedReader`), each found again by its place.
        let encoded = keys
            .iter()
            .map(|k| encode_key(k))
            .collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by(|&a, &b| encoded[a].cmp(&encoded[b]));
        let mut out = vec![None; keys.len()];
        let mut turns = super::Turns::new();
        for (i, chunk) in order.chunks(super::KEYED_CHUNK).enumerate() {
            if i > 0 {
                turns.take().await;
            }
            // A reader per chunk: what it stands on is read, not kept across a yield.
            let mut reader = t.sorted_reader();
            for &at in chunk {
                out[at] = reader.get(&encoded[at])?;
            }
        }
        Ok(out)
    }

    /// The stored document (JSON bytes) with this primary key, if any.
    pub(crate) fn get_raw(&self, key: &Value) -> Result<Option<crate::storage::Bytes>> {
        self.state()?.get_raw(&encode_key(key)?)
    }

    /// Every document of the table, as a query.
    pub fn query(&self) -> Query {
        Query::new(self.db.clone(), self.name.clone(), Source::Table)
    }

    /// The documents with one of these primary keys (or, after `.index(name)`, these index
    /// values). A key given twice returns its documents twice.
    pub fn get_all<V: Into<Value>>(&self, keys: impl IntoIterator<Item = V>) -> Query {
        let mut keys: Vec<Value> = keys.into_iter().map(Into::into).collect();
        // Too-deep values are refused here, before a clone of the query could walk them.
        let deep = keys
            .iter()
            .position(|k| crate::value::deeper_than(k, crate::value::MAX_DEPTH));
        if let Some(i) = deep {
            keys.drain(..).for_each(crate::value::drop_deep);
            let mut q = Query::new(self.db.clone(), self.name.clone(), Source::Table);
            q.error = Some(crate::value::too_deep(&format!("get_all value #{i}")));
            return q;
        }
        Query::new(
            self.db.clone(),
            self.name.clone(),
            Source::GetAll { keys, index: None },
        )
    }

    /// The documents whose primary key (or, after `.index(name)`, index value) is within the
    /// bounds. The usual range is `Included(lo)` to `Excluded(hi)`.
    pub fn between(&self, lo: Bound<Value>, hi: Bound<Value>) -> Query {
        let deep = |b: &Bound<Value>| match b {
            Bound::Included(v) | Bound::Excluded(v) => {
                crate::value::deeper_than(v, crate::value::MAX_DEPTH)
            }
            Bound::Unbounded => false,
        };
        if deep(&lo) || deep(&hi) {
            for b in [lo, hi] {
                if let Bound::Included(v) | Bound::Excluded(v) = b {
                    crate::value::drop_deep(v);
                }
            }
            let mut q = Query::new(self.db.clone(), self.name.clone(), Source::Table);
            q.error = Some(crate::value::too_deep("a between bound"));
            return q;
        }
        Query::new(
            self.db.clone(),
            self.name.clone(),
            Source::Between {
                lo,
                hi,
                index: None,
            },
        )
    }

    /// The row with the smallest value of an index (ties: the smallest primary key), as a
    /// query: `.run()` it, or watch it with `.changes()` (a top-1 feed).
    pub fn min_by_index(&self, index: &str) -> Query {
        self.order_by(Order::index(index)).limit(1)
    }

    /// The row with the largest value of an index, as a query (see [`Table::min_by_index`]).
    pub fn max_by_index(&self, index: &str) -> Query {
        self.order_by(Order::index(index).desc()).limit(1)
    }

    /// The table filtered by a predicate.
    pub fn filter(&self, predicate: Predicate) -> Query {
        self.query().filter(predicate)
    }

    /// The table in an order.
    pub fn order_by(&self, order: Order) -> Query {
        self.query().order_by(order)
    }

    /// Every document of the table.
    pub async fn run(&self) -> Result<Vec<Value>> {
        self.query().run().await
    }

    /// The number of documents.
    pub async fn count(&self) -> Result<u64> {
        self.query().count().await
    }

    /// Inserts one document (a JSON object). Without a primary key it gets a UUID.
    pub fn insert(&self, doc: Value) -> Insert {
        Insert::new(self.clone(), vec![doc])
    }

    /// Inserts many documents.
    pub fn insert_many(&self, docs: impl IntoIterator<Item = Value>) -> Insert {
        Insert::new(self.clone(), docs.into_iter().collect())
    }
}

/// A document by primary key: `.await` reads it (`None` when missing); `update`, `replace`
/// and `delete` write it.
#[derive(Clone)]
pub struct Get {
    pub(crate) table: Table,
    pub(crate) key: Value,
}

impl Get {
    /// Reads the document.
    pub async fn run(&self) -> Result<Option<Value>> {
        self.read()
    }

    /// A point read is one storage lookup: it runs in place, with no future to allocate.
    fn read(&self) -> Result<Option<Value>> {
        let t = self.table.state()?;
        t.get_doc(&encode_key(&self.key)?)
    }

    /// The key for a write: a copy (never deeper than one level past the limit, see
    /// [`Table::get`], so cheap to copy; a write refuses a too-deep one with `TooDeep`).
    pub(crate) fn key_for_write(&self) -> Value {
        self.key.clone()
    }

    /// Merges a patch into the document (see [`Patch`]); a missing document is skipped.
    pub fn update(&self, patch: impl Into<Patch>) -> Write {
        Write::update_key(self.table.clone(), self.key_for_write(), patch.into())
    }

    /// Replaces the document; the new one's primary key must be absent or the same.
    pub fn replace(&self, doc: Value) -> Write {
        Write::replace_key(self.table.clone(), self.key_for_write(), doc)
    }

    /// Replaces the document with what `f` makes of it, computed under the commit lock from
    /// the document stored at that moment (a read-modify-write that loses no concurrent
    /// write, like [`Patch::with`] but for the whole document: fields can be removed). A
    /// missing document is skipped (`WriteResult::skipped`): nothing is created. `f` must
    /// not write to the database ([`crate::Error::WriteInPatch`]); the primary key cannot
    /// change (a result without one keeps the stored key).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::Database;
    /// use serde_json::json;
    /// let db = Database::temporary().await?;
    /// db.create_table("ships").await?;
    /// let t = db.table("ships");
    /// t.insert(json!({"id": "defiant", "cloak": true, "crew": 50})).await?;
    /// t.get("defiant").replace_with(|doc| {
    ///     let mut doc = doc.clone();
    ///     doc.as_object_mut().unwrap().remove("cloak");
    ///     Ok(doc)
    /// }).await?;
    /// assert_eq!(t.get("defiant").await?, Some(json!({"id": "defiant", "crew": 50})));
    /// let r = t.get("nowhere").replace_with(|doc| Ok(doc.clone())).await?;
    /// assert_eq!(r.skipped, 1);
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn replace_with(
        &self,
        f: impl Fn(&Value) -> crate::Result<Value> + Send + Sync + 'static,
    ) -> Write {
        Write::replace_key_with(
            self.table.clone(),
            self.key_for_write(),
            std::sync::Arc::new(f),
        )
    }

    /// Deletes the document; a missing document is skipped.
    pub fn delete(&self) -> Write {
        Write::delete_key(self.table.clone(), self.key_for_write())
    }
}

impl IntoFuture for Get {
    type Output = Result<Option<Value>>;
    type IntoFuture = std::future::Ready<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        std::future::ready(self.read())
    }
}

impl Get {
    /// The document seen through row transforms: keeps it only when the predicate holds.
    /// A point query stays a point query: it reads one row (`None` when missing or filtered
    /// out) and can be watched as a point feed.
    pub fn filter(&self, predicate: Predicate) -> PointQuery {
        PointQuery::of(self).filter(predicate)
    }

    /// The document with only these (possibly nested) fields.
    pub fn pluck<S: Into<String>>(&self, fields: impl IntoIterator<Item = S>) -> PointQuery {
        PointQuery::of(self).pluck(fields)
    }

    /// The document without these (possibly nested) fields.
    pub fn without<S: Into<String>>(&self, fields: impl IntoIterator<Item = S>) -> PointQuery {
        PointQuery::of(self).without(fields)
    }
}

/// A key one level deeper than a key may be: what a too-deep key is replaced by, so that
/// the error names the limit without anything walking the original.
fn too_deep_key() -> Value {
    let mut v = Value::Null;
    for _ in 0..=crate::value::MAX_DEPTH {
        v = Value::Array(vec![v]);
    }
    v
}

/// A document by primary key seen through `filter`, `pluck` or `without`: `run` reads it
/// (`None` when it is missing or filtered out) and `changes` watches it as a point feed.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::Database;
/// use serde_json::json;
/// let db = Database::temporary().await?;
/// db.create_table("crew").await?;
/// db.table("crew").insert(json!({"id": "data", "rank": "commander", "ship": "enterprise"})).await?;
/// let rank = db.table("crew").get("data").pluck(["rank"]).run().await?;
/// assert_eq!(rank, Some(json!({"rank": "commander"})));
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct PointQuery {
    /// `get_all([key])` followed by the transforms.
    pub(crate) query: Query,
}

impl PointQuery {
    fn of(get: &Get) -> Self {
        PointQuery {
            query: get.table.get_all([get.key.clone()]),
        }
    }

    /// Keeps the document only when the predicate holds.
    pub fn filter(self, predicate: Predicate) -> Self {
        PointQuery {
            query: self.query.filter(predicate),
        }
    }

    /// Keeps only these (possibly nested) fields.
    pub fn pluck<S: Into<String>>(self, fields: impl IntoIterator<Item = S>) -> Self {
        PointQuery {
            query: self.query.pluck(fields),
        }
    }

    /// Removes these (possibly nested) fields.
    pub fn without<S: Into<String>>(self, fields: impl IntoIterator<Item = S>) -> Self {
        PointQuery {
            query: self.query.without(fields),
        }
    }

    /// Reads the document as the transforms see it.
    pub async fn run(&self) -> Result<Option<Value>> {
        self.query.iter()?.next().transpose()
    }
}
