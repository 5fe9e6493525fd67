//! The changefeed core: live queries whose result changes are pushed to subscribers.
//!
//! Call `.changes()` on a table, a `get`, or a query, set options, and `.await` it to get a
//! [`Feed`], a `futures::Stream` of [`Change`] items. Dropping the feed unsubscribes.
//!
//! | query | feed |
//! |---|---|
//! | `table` | every row |
//! | `get(key)` | one row (a missing row is `new_val: None` among the initial rows) |
//! | `get_all(keys)`, optionally `.index(name)` | rows by key or index value (a key given twice, twice) |
//! | `between(lo, hi)`, optionally `.index(name)` | rows in a range; rows moving in or out are reported |
//! | any of those + `filter` / `pluck` / `without` | the same, as the query sees the rows |
//! | `order_by(Order::index(..)).limit(n)` (also `min_by_index`, `max_by_index`) | the top `n`, maintained incrementally |
//! | `db.stats()` | changed stats rows, about once a second |
//! | `count()`, `sum/avg/min/max(field)`, `group(field)` / `group_by_index(name)` + any of them, over a table, `get_all` or `between` (with filters) | changed groups `{group, reduction}` (ungrouped: the value), maintained per commit; `min`/`max` need an index on the field |
//! | `eq_join(field, other)`, optionally `.index(name)` | `{left, right}` pairs, following both tables |
//!
//! Anything else is refused when the feed is created, with [`crate::Error::Unwatchable`]
//! saying why: `limit` without an index ordering ("cannot watch the first elements of an
//! unordered stream"), an `order_by` on a field, an index ordering without `limit`, `skip`,
//! anything after `limit`, an aggregate or join of a top-N query, a live `min`/`max`
//! without an index on its field.
//!
//! Row feeds (the first four lines, with their transforms) can resume from a cursor after a
//! disconnect or a restart when the database keeps a change log
//! ([`crate::Config::change_log`], [`Changes::resume_from`]).
//!
//! Items come in commit order. With `include_initial`, the current rows come first, and
//! no change is missing or repeated between them and the changes that follow: the
//! subscription is registered and the rows are read under the commit lock (tables and
//! primary key ranges are read in chunks, with a scan frontier that tells which changes the
//! scan has already seen, so writers never wait for a whole table to be read).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use futures_util::StreamExt;
//! use remodel::{Database, IndexSpec, Order};
//! use serde_json::json;
//!
//! let db = Database::temporary().await?;
//! db.create_table("scores").await?;
//! let scores = db.table("scores");
//! scores.create_index("points", IndexSpec::field("points")).await?;
//! scores.insert(json!({"id": "kim", "points": 10})).await?;
//!
//! // The top 2, live: initial rows first, then changes of the top 2 only.
//! let mut top = scores.order_by(Order::index("points").desc()).limit(2)
//!     .changes().include_initial(true).await?;
//! assert_eq!(top.next().await.unwrap()?.new_val().unwrap()["id"], "kim");
//! scores.insert(json!({"id": "ann", "points": 30})).await?;
//! let c = top.next().await.unwrap()?;
//! assert_eq!((c.old_val(), &c.new_val().unwrap()["id"]), (None, &json!("ann")));
//! # Ok::<(), remodel::Error>(())
//! # }).unwrap();
//! ```

pub(crate) mod aggregate;
mod change;
mod edits;
pub(crate) mod hub;
pub(crate) mod join;
mod log;
mod options;
mod queue;
mod ranges;
mod resume;
mod shared;
mod sink;
mod spec;
mod stream;
mod topn;

pub use change::{Change, ChangeKind, FeedState};
pub(crate) use hub::Hub;
pub use options::{FeedOptions, Squash};
pub(crate) use queue::Subscriber;
pub use resume::Cursor;
pub use stream::Feed;

use crate::query::{Get, PointQuery, Query, Source, Table};
use crate::{Error, Result};
use hub::Join;
use serde_json::Value;
use spec::FeedPlan;
use std::collections::{HashMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use stream::{Inbox, StatsTimer};

/// A changefeed being set up: choose options, then `.await` it to get the [`Feed`].
#[must_use = "a changefeed does nothing until it is awaited"]
pub struct Changes {
    query: Query,
    opts: FeedOptions,
    /// A point feed (`get(k)`, possibly with transforms): a missing row is one `null`
    /// initial item.
    point: bool,
    /// Resume after this cursor (`resume_from`).
    resume: Option<Cursor>,
    /// A live aggregate of the query's rows: (group by field or index, reduction, field).
    agg: Option<AggRequest>,
    /// A live join of the query's rows: (field, other table, its index).
    join: Option<(String, String, Option<String>)>,
}

/// An aggregate to watch, as asked for (resolved against the table when the feed starts).
struct AggRequest {
    by: Option<(String, bool)>,
    reduce: aggregate::ReduceKind,
    field: Option<String>,
}

impl Changes {
    /// First deliver the current result (default false).
    pub fn include_initial(mut self, yes: bool) -> Self {
        self.opts.include_initial = yes;
        self
    }
    /// Deliver `initializing` / `ready` state items (default false).
    pub fn include_states(mut self, yes: bool) -> Self {
        self.opts.include_states = yes;
        self
    }
    /// Include `type` in the JSON form of items (default false; [`Change::kind`] is always set).
    pub fn include_types(mut self, yes: bool) -> Self {
        self.opts.include_types = yes;
        self
    }
    /// Deliver offsets (top-N feeds only).
    pub fn include_offsets(mut self, yes: bool) -> Self {
        self.opts.include_offsets = yes;
        self
    }
    /// Merge changes that pile up while the consumer is not reading: one item per row, with
    /// its oldest `old_val` and newest `new_val`; a row whose changes cancel out disappears.
    /// A top-N feed hands over the net difference between its set when the batch started and
    /// when it is handed over (still valid list edits with `include_offsets`).
    pub fn squash(mut self, yes: bool) -> Self {
        self.opts.squash = if yes { Squash::Merge } else { Squash::Off };
        self
    }
    /// Merge changes and hand them over in batches at most `seconds` apart.
    pub fn squash_window(mut self, seconds: f64) -> Self {
        self.opts.squash = Squash::Window(seconds);
        self
    }
    /// The feed's buffer size (at least 1).
    pub fn queue_size(mut self, n: usize) -> Self {
        self.opts.queue_size = Some(n);
        self
    }
    /// Delivers exactly the changes after `cursor` (taken from an item of this or another
    /// feed of the database, see [`Change::cursor`]), read from the durable change log, then
    /// goes on live: nothing is missed or delivered twice in between, across a disconnect or
    /// a restart. Row feeds only (table, `get`, `get_all`, `between`, with `filter` /
    /// `pluck` / `without`); other feeds are refused with [`Error::Unwatchable`]. A cursor
    /// older than the log's retention, or a database without a change log, gives
    /// [`Error::CursorExpired`]: re-read with `include_initial` instead (the two options
    /// exclude each other).
    pub fn resume_from(mut self, cursor: Cursor) -> Self {
        self.resume = Some(cursor);
        self
    }
    /// Sets every option at once.
    pub fn options(mut self, opts: FeedOptions) -> Self {
        self.opts = opts;
        self
    }

    fn start(self) -> Result<Feed> {
        let Changes {
            query,
            opts,
            point,
            resume,
            agg,
            join,
        } = self;
        opts.validate()?;
        if resume.is_some() && opts.include_initial {
            return Err(Error::feed_option(
                "resume_from and include_initial exclude each other: a resumed feed delivers \
                 the changes after its cursor, a fresh one the current rows",
            ));
        }
        let db = query.db.clone();
        let stats = query.source == Source::Stats;
        let mut plan = FeedPlan::new(query.plan()?, stats)?;
        let mut agg_signature = String::new();
        if let Some(req) = agg {
            if resume.is_some() {
                return Err(Error::unwatchable(
                    "an aggregate feed cannot resume from a cursor (the log holds changes, not \
                     the groups): re-read it with include_initial",
                ));
            }
            let FeedPlan::Rows {
                table,
                view,
                agg: slot,
                ..
            } = &mut plan
            else {
                return Err(Error::unwatchable(
                    "only aggregates of a table, get_all or between (with filters) can be \
                     watched, not of order_by(..).limit(n)",
                ));
            };
            let by = req.by.as_ref().map(|(b, ix)| (b.as_str(), *ix));
            let def =
                aggregate::AggDef::resolve(table, view, by, req.reduce, req.field.as_deref())?;
            agg_signature = def.signature();
            *slot = Some(Box::new(aggregate::AggPlan {
                def,
                source: query.clone(),
            }));
        }
        if let Some((field, other, index)) = join {
            if resume.is_some() {
                return Err(Error::unwatchable(
                    "a join feed cannot resume from a cursor (its pairs depend on both tables \
                     at the time): re-read it with include_initial",
                ));
            }
            let FeedPlan::Rows { join: slot, .. } = &mut plan else {
                return Err(Error::unwatchable(
                    "only joins of a table, get_all or between (with filters) can be watched, \
                     not of order_by(..).limit(n)",
                ));
            };
            let right = db.table_state(&other)?;
            let index = match &index {
                Some(name) if !right.is_primary(Some(name)) => Some(right.index(name)?),
                _ => None,
            };
            let def = join::JoinDef {
                field: crate::value::FieldPath::parse(&field)?,
                right,
                index,
            };
            agg_signature.push_str(&def.signature());
            *slot = Some(Box::new(join::JoinPlan {
                def,
                source: query.clone(),
            }));
        }
        if stats && resume.is_some() {
            return Err(Error::unwatchable(
                "the stats feed cannot resume from a cursor (its rows are not logged changes)",
            ));
        }
        let top_n = matches!(plan, FeedPlan::TopN { .. });
        if opts.include_offsets && !top_n {
            return Err(Error::feed_option(
                "include_offsets applies only to order_by(index).limit(n) feeds",
            ));
        }
        let capacity = opts.queue_size.unwrap_or(db.inner.feed_queue_size());
        let window = opts.window();
        // Squashing feeds merge per row; squashing top-N feeds hand over the net difference
        // of the set per batch (see `queue::ListSquash`).
        let merge = opts.squash != Squash::Off;
        // Feeds that squash (and timer feeds) need a queue of their own; the others read
        // their group's shared log.
        let own_queue = opts.squash != Squash::Off || stats;
        let sub = Arc::new(Subscriber::new(capacity, merge, window.is_some()));

        let mut feed = Feed {
            inbox: Inbox::Own(sub.clone()),
            front: VecDeque::new(),
            batch: VecDeque::new(),
            registration: None,
            timer: None,
            include_types: opts.include_types,
            include_offsets: opts.include_offsets,
            window,
            handed_first: opts.include_initial,
            sleep: None,
            done: false,
            visibility: db.inner.visibility().clone(),
            held: None,
            snapshot_seq: None,
        };
        // Without initial rows there is nothing to initialise: the first state is `ready`.
        if opts.include_states && opts.include_initial {
            feed.front
                .push_back(Change::state_marker(FeedState::Initializing));
        }

        let initial_rows = match plan {
            FeedPlan::Stats { view } => {
                let rows = db.stats_rows();
                let mut timer = StatsTimer {
                    db: db.clone(),
                    view,
                    last: HashMap::new(),
                    interval: None,
                };
                let initial = timer.diff(rows);
                if opts.include_initial {
                    feed.front.extend(
                        initial
                            .into_iter()
                            .map(|c| Change::initial(c.new_arc().cloned(), None)),
                    );
                }
                db.inner.sink_as::<Hub>().count_timer_feed(1);
                feed.timer = Some(Box::new(timer));
                None
            }
            plan => {
                let signature = format!("{:?}|{:?}{agg_signature}", query.source, query.steps);
                let join = if own_queue {
                    Join::Own(sub)
                } else {
                    Join::Shared(capacity)
                };
                if let Some(cursor) = resume {
                    let replay = FeedPlan::new(query.plan()?, false)?;
                    feed.subscribe_resumed(&db, (plan, replay), signature, join, cursor)?;
                    None
                } else {
                    match plan.primary_range().filter(|_| opts.include_initial) {
                        // A table (or primary key range) can be large: its initial rows are read
                        // in chunks, releasing the commit lock in between, so writers wait for
                        // one chunk at most.
                        Some(range) => {
                            let view = FeedPlan::new(query.plan()?, false)?
                                .into_view()
                                .ok_or_else(|| {
                                    Error::query("a primary range feed has a row view")
                                })?;
                            Some(feed.subscribe_chunked(&db, plan, signature, join, range, &view)?)
                        }
                        None => {
                            let rows = || -> Result<Vec<Arc<Value>>> {
                                query
                                    .plan()?
                                    .rows()
                                    .map(|r| r.map(|row| Arc::new(row.doc)))
                                    .collect()
                            };
                            // Under the commit lock: the snapshot and the subscription see the
                            // same commit.
                            let sub = db.inner.with_commit_lock(|seq| {
                                feed.snapshot_seq = Some(seq);
                                db.check_open()?;
                                // The table (or index) may have been dropped since the plan
                                // was made: a feed opens on a live table or not at all.
                                plan.check_live()?;
                                db.inner.sink_as::<Hub>().subscribe(
                                    plan,
                                    signature,
                                    join,
                                    rows,
                                    opts.include_initial,
                                )
                            })?;
                            feed.join(sub)
                        }
                    }
                }
            }
        };
        if let Some(rows) = initial_rows {
            if rows.is_empty() && point {
                feed.front.push_back(Change::initial(None, None));
            }
            for (i, row) in rows.into_iter().enumerate() {
                feed.front
                    .push_back(Change::initial(Some(row), top_n.then_some(i)));
            }
        }
        if opts.include_states {
            feed.front.push_back(Change::state_marker(FeedState::Ready));
        }
        Ok(feed)
    }
}

impl IntoFuture for Changes {
    type Output = Result<Feed>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            // Reading initial rows (or filling a top-N set) may read many rows: that runs on
            // a blocking thread, never on the async workers.
            let reads = self.opts.include_initial
                || self.resume.is_some()
                || self.agg.is_some()
                || self.join.is_some()
                || self
                    .query
                    .steps
                    .iter()
                    .any(|s| matches!(s, crate::query::Step::Limit(_)));
            if reads {
                crate::db::spawn_blocking(move || self.start()).await
            } else {
                self.start()
            }
        })
    }
}

impl Query {
    /// Watches the query's result (see [`crate::feed`] for which queries can be watched).
    pub fn changes(&self) -> Changes {
        Changes {
            query: self.clone(),
            opts: FeedOptions::default(),
            point: false,
            resume: None,
            agg: None,
            join: None,
        }
    }
}

impl Changes {
    /// A feed of an aggregate of `query`'s rows (see [`crate::query::Aggregate::changes`]).
    pub(crate) fn aggregate(
        query: Query,
        by: Option<(String, bool)>,
        reduce: aggregate::ReduceKind,
        field: Option<String>,
    ) -> Changes {
        Changes {
            agg: Some(AggRequest { by, reduce, field }),
            ..query.changes()
        }
    }

    /// A feed of the `eq_join` of `query`'s rows with table `other` (see
    /// [`crate::Join::changes`]).
    pub(crate) fn join(
        query: Query,
        field: String,
        other: String,
        index: Option<String>,
    ) -> Changes {
        Changes {
            join: Some((field, other, index)),
            ..query.changes()
        }
    }
}

impl<T> crate::query::Aggregate<T> {
    /// Watches the aggregate: items are the changed group rows, `{"group": .., "reduction":
    /// ..}` (a group that appears has no `old_val`, one that empties no `new_val`), or, for
    /// an ungrouped aggregate, the value itself. Maintained incrementally, per commit; all
    /// feed options apply (`include_initial` gives the current groups). `min` / `max` need
    /// an index on their field, and an aggregate cannot resume from a cursor (re-read it
    /// with `include_initial`).
    pub fn changes(&self) -> Changes {
        Changes::aggregate(
            self.query.clone(),
            self.by.clone(),
            self.reduce,
            self.field.clone(),
        )
    }
}

impl crate::query::Join {
    /// Watches the join: items are `{"left": .., "right": ..}` pairs, which appear when a
    /// left row starts to match a right row (either one moved), change when either row
    /// changes, and go away when one of them leaves. Routed by the join keys (a write to
    /// either table costs the pairs it touches); all feed options apply (`include_initial`
    /// gives the current pairs). A join feed cannot resume from a cursor.
    pub fn changes(&self) -> Changes {
        Changes::join(
            self.query.clone(),
            self.field.clone(),
            self.other.clone(),
            self.index.clone(),
        )
    }
}

impl PointQuery {
    /// Watches the document as the transforms see it (a point feed): a row that stops
    /// passing the filter is reported as leaving.
    pub fn changes(&self) -> Changes {
        Changes {
            point: true,
            ..self.query.changes()
        }
    }
}

impl Table {
    /// Watches every document of the table.
    pub fn changes(&self) -> Changes {
        self.query().changes()
    }
}

impl Get {
    /// Watches one document (a point feed).
    pub fn changes(&self) -> Changes {
        Changes {
            point: true,
            ..self.table.get_all([self.key_for_write()]).changes()
        }
    }
}
