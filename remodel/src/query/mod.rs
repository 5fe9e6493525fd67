//! The query layer: tables, selections, ordering, transforms, aggregates, joins and writes,
//! in the spirit of RethinkDB's ReQL.

mod aggregate;
mod cascade;
pub(crate) mod plan;
pub(crate) mod predicate;
mod table;
mod write;

pub(crate) use aggregate::ReduceKind;
pub use aggregate::{Aggregate, AggregateOutput, Group, Grouped, Join};
pub use cascade::{ReferenceAction, References};
pub use predicate::{field, has_fields, Field, Predicate};
pub use table::{Get, PointQuery, Table};
pub use write::{Batch, Insert, Write};

use crate::db::Database;
use crate::{Error, Result};
use futures_core::Stream;
use serde_json::Value;
use std::ops::Bound;
use std::sync::Arc;

/// The most primary keys a `get_all` may name to run in place (see [`Query::offload`]).
const SMALL_READ: usize = 16;
/// How many primary-key lookups a `get_all` makes between two looks at the clock (see
/// [`Turns`]).
pub(crate) const KEYED_CHUNK: usize = 64;
/// How long a read by keys runs in place before it gives the scheduler a turn.
const TURN: std::time::Duration = std::time::Duration::from_micros(200);

/// Turns given to the scheduler by a long read that runs in place: one every [`TURN`] of
/// reading, not one per chunk. On a busy runtime each turn runs other tasks inside the
/// read (a process's pumps, feeds, other requests), so a read of a few hundred keys that
/// yields per chunk takes several times as long as the same gets one after another, which
/// yield none; measured at the clock, a short batched read yields at most once or twice and
/// a long one still every 200 µs.
pub(crate) struct Turns(std::time::Instant);

impl Turns {
    pub(crate) fn new() -> Self {
        Turns(std::time::Instant::now())
    }

    /// Yields when the read has run in place for [`TURN`] since the last turn.
    pub(crate) async fn take(&mut self) {
        if self.0.elapsed() >= TURN {
            tokio::task::yield_now().await;
            self.0 = std::time::Instant::now();
        }
    }
}
/// How many rows [`Query::stream`] reads per batch.
const STREAM_BATCH: usize = 256;

/// Where the rows of a query come from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Source {
    /// Every document of the table.
    Table,
    /// Documents whose primary key (or index value) is one of `keys`.
    GetAll {
        keys: Vec<Value>,
        index: Option<String>,
    },
    /// Documents whose primary key (or index value) lies between the bounds.
    Between {
        lo: Bound<Value>,
        hi: Bound<Value>,
        index: Option<String>,
    },
    /// The rows of the read-only `stats` system table.
    Stats,
}

/// One step of a query after its source.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    Filter(Predicate),
    OrderBy(Order),
    Skip(usize),
    Limit(usize),
    Pluck(Vec<String>),
    Without(Vec<String>),
}

/// What an `order_by` sorts on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum OrderKey {
    Field(String),
    Index(String),
}

/// An ordering: by a field (sorted in memory) or by an index (streamed from the index).
///
/// Ties are broken by primary key; descending order reverses both. Rows that lack the field
/// of a field ordering come last; rows missing from an index are not in an index ordering.
///
/// ```
/// use remodel::{asc, desc, Order};
/// let by_name = asc("name");
/// let best_first = Order::index("score").desc();
/// # let _ = (by_name, best_first, desc("age"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Order {
    pub(crate) key: OrderKey,
    pub(crate) descending: bool,
}

impl Order {
    /// Ascending order of a secondary index (or of the primary key, by its field name).
    pub fn index(name: impl Into<String>) -> Self {
        Order {
            key: OrderKey::Index(name.into()),
            descending: false,
        }
    }

    /// The same ordering, descending.
    pub fn desc(mut self) -> Self {
        self.descending = true;
        self
    }

    /// The same ordering, ascending.
    pub fn asc(mut self) -> Self {
        self.descending = false;
        self
    }
}

/// Ascending order of a field.
pub fn asc(field: impl Into<String>) -> Order {
    Order {
        key: OrderKey::Field(field.into()),
        descending: false,
    }
}

/// Descending order of a field.
pub fn desc(field: impl Into<String>) -> Order {
    Order {
        key: OrderKey::Field(field.into()),
        descending: true,
    }
}

/// A query on one table: a source (the table, `get_all`, `between`) followed by steps.
///
/// Queries are values: building one does no I/O; `run`, `iter`, `stream`, the aggregates
/// and the writes execute it. Errors in how it was built come back when it runs.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::{field, asc, Database};
/// use serde_json::json;
/// let db = Database::temporary().await?;
/// db.create_table("crew").await?;
/// let crew = db.table("crew");
/// crew.insert_many(vec![
///     json!({"id": 1, "name": "Data", "rank": "lieutenant commander"}),
///     json!({"id": 2, "name": "Picard", "rank": "captain"}),
///     json!({"id": 3, "name": "Troi", "rank": "commander"}),
/// ]).await?;
/// let names: Vec<_> = crew.filter(field("rank").ne("captain")).order_by(asc("name"))
///     .pluck(["name"]).run().await?;
/// assert_eq!(names, vec![json!({"name": "Data"}), json!({"name": "Troi"})]);
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Query {
    pub(crate) db: Database,
    pub(crate) table: Arc<str>,
    pub(crate) source: Source,
    pub(crate) steps: Vec<Step>,
    pub(crate) error: Option<Error>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("table", &self.table)
            .field("source", &self.source)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Query {
    pub(crate) fn new(db: Database, table: Arc<str>, source: Source) -> Self {
        Query {
            db,
            table,
            source,
            steps: Vec::new(),
            error: None,
        }
    }

    fn step(mut self, s: Step) -> Self {
        self.steps.push(s);
        self
    }

    /// Reads `get_all` or `between` through the secondary index `name` instead of the
    /// primary key. Only valid right after `get_all` or `between`.
    pub fn index(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        match (&mut self.source, self.steps.is_empty()) {
            (Source::GetAll { index, .. } | Source::Between { index, .. }, true) => {
                *index = Some(name)
            }
            _ => {
                self.error.get_or_insert(Error::query(format!(
                    "index(`{name}`) applies only right after get_all or between"
                )));
            }
        }
        self
    }

    /// Keeps the rows for which the predicate holds.
    pub fn filter(mut self, predicate: Predicate) -> Self {
        // A too-deep predicate is refused here, before a clone of the query could walk it.
        if let Err(e) = predicate::check_depth(&predicate) {
            predicate::drop_deep(predicate);
            self.error.get_or_insert(e);
            return self;
        }
        self.step(Step::Filter(predicate))
    }

    /// Orders the rows (see [`Order`]).
    pub fn order_by(self, order: Order) -> Self {
        self.step(Step::OrderBy(order))
    }

    /// Skips the first `n` rows.
    pub fn skip(self, n: usize) -> Self {
        self.step(Step::Skip(n))
    }

    /// Keeps at most `n` rows.
    pub fn limit(self, n: usize) -> Self {
        self.step(Step::Limit(n))
    }

    /// Keeps only these (possibly nested) fields of each row.
    pub fn pluck<S: Into<String>>(self, fields: impl IntoIterator<Item = S>) -> Self {
        self.step(Step::Pluck(fields.into_iter().map(Into::into).collect()))
    }

    /// Removes these (possibly nested) fields from each row.
    pub fn without<S: Into<String>>(self, fields: impl IntoIterator<Item = S>) -> Self {
        self.step(Step::Without(fields.into_iter().map(Into::into).collect()))
    }

    pub(crate) fn plan(&self) -> Result<plan::Plan> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.source == Source::Stats {
            self.db.check_open()?;
            let rows = self.db.stats_rows();
            return plan::plan(
                self.db.inner.stats_table().clone(),
                &self.source,
                &self.steps,
                Some(rows),
            );
        }
        let table = self.db.table_state(&self.table)?;
        plan::plan(table, &self.source, &self.steps, None)
    }

    /// Runs the query lazily: rows are read from storage as the iterator is advanced (on
    /// the calling thread: in async code, prefer [`Query::stream`] or [`Query::run`]).
    pub fn iter(&self) -> Result<impl Iterator<Item = Result<Value>> + Send + 'static> {
        Ok(self.plan()?.rows().map(|r| r.map(|row| row.doc)))
    }

    /// Whether the query reads a few documents by primary key (or the in-memory stats
    /// table): such a query runs in place; any other may read many rows and runs on a
    /// blocking thread, so that it never holds up the async workers.
    fn is_small(&self) -> bool {
        match &self.source {
            Source::GetAll { keys, index: None } => keys.len() <= SMALL_READ,
            Source::Stats => true,
            _ => false,
        }
    }

    /// Runs `f` on this query: in place for small reads, else on a blocking thread.
    pub(crate) async fn offload<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Query) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.is_small() {
            return f(self);
        }
        let q = self.clone();
        crate::db::spawn_blocking(move || f(&q)).await
    }

    /// Runs the query and collects its rows.
    pub async fn run(&self) -> Result<Vec<Value>> {
        if self.is_keyed() {
            // Reads by primary key cost a lookup each: they run in place, a chunk at a time,
            // giving the scheduler a turn every 200 µs (no thread handoff for a batched load).
            let mut out = Vec::new();
            let mut rows = self.iter()?;
            let mut turns = Turns::new();
            loop {
                for _ in 0..KEYED_CHUNK {
                    match rows.next() {
                        Some(row) => out.push(row?),
                        None => return Ok(out),
                    }
                }
                turns.take().await;
            }
        }
        self.offload(|q| q.iter()?.collect()).await
    }

    /// A `get_all` on the primary key with no in-memory sort: each row is one lookup, and the
    /// rows can be read a chunk at a time.
    fn is_keyed(&self) -> bool {
        matches!(&self.source, Source::GetAll { index: None, .. })
            && !self.steps.iter().any(|s| matches!(s, Step::OrderBy(_)))
    }

    /// Runs the query as a lazy stream of rows. Rows are read in batches on a blocking
    /// thread (a filter that skips most of a large table does not hold up the async
    /// workers), one batch ahead of the consumer at most.
    pub fn stream(&self) -> impl Stream<Item = Result<Value>> + Send + 'static {
        type Rows = Box<dyn Iterator<Item = Result<Value>> + Send>;
        let rows: Rows = match self.iter() {
            Ok(it) => Box::new(it),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        let small = self.is_small();
        let batches = futures_util::stream::unfold(Some(rows), move |rows| async move {
            let mut rows = rows?;
            let read = move || {
                let batch: Vec<Result<Value>> = rows.by_ref().take(STREAM_BATCH).collect();
                (batch, rows)
            };
            let (batch, rows) = if small {
                read()
            } else {
                match tokio::task::spawn_blocking(read).await {
                    Ok(done) => done,
                    Err(e) => {
                        let failed = Error::storage(format!("storage task failed: {e}"));
                        return Some((vec![Err(failed)], None));
                    }
                }
            };
            if batch.is_empty() {
                return None;
            }
            let more = (batch.len() == STREAM_BATCH).then_some(rows);
            Some((batch, more))
        });
        futures_util::StreamExt::flat_map(batches, futures_util::stream::iter)
    }

    /// The first row, if any.
    pub async fn first(&self) -> Result<Option<Value>> {
        self.offload(|q| q.iter()?.next().transpose()).await
    }
}
