//! Opening a feed: [`Changes`], the options of a feed being set up, and the steps from a
//! query to a subscribed [`Feed`] (check the options, plan the feed, make its inbox,
//! subscribe it and read its first items, queue them).

use super::hub::{Delivery, Hub};
use super::ops::aggregate::{AggDef, AggPlan, ReduceKind};
use super::ops::join::{JoinDef, JoinPlan};
use super::ops::AnyPlan;
use super::options::{FeedOptions, Squash};
use super::queue::Subscriber;
use super::resume::Cursor;
use super::spec::FeedPlan;
use super::stream::{Feed, Inbox, StatsTimer, Window};
use super::{Change, FeedState};
use crate::db::Database;
use crate::query::{Get, PointQuery, Query, Source, Table};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

/// A changefeed being set up: choose options, then `.await` it to get the [`Feed`]. Cloning
/// it copies the setup (a server reopens the same feed from a clone after a reconnect).
#[must_use = "a changefeed does nothing until it is awaited"]
#[derive(Clone)]
pub struct Changes {
    query: Query,
    opts: FeedOptions,
    /// A point feed (`get(k)`, possibly with transforms): a missing row is one `null`
    /// initial item.
    point: bool,
    /// Resume after this cursor (`resume_from`).
    resume: Option<Cursor>,
    /// The most changes a resume replays (`replay_at_most`).
    replay_limit: Option<u64>,
    /// On a shared database, the changes after `resume` older than this process's change
    /// log, read from the database of record's history before the feed starts.
    history: Option<super::resume::Older>,
    /// A live aggregate or join of the query's rows.
    of_rows: Option<OfRows>,
}

/// What a feed watches of a query's rows other than the rows themselves, as asked for
/// (resolved against the tables when the feed starts).
#[derive(Clone)]
enum OfRows {
    /// A live aggregate: grouped by field or index (`true`), reduction, field.
    Aggregate {
        by: Option<(String, bool)>,
        reduce: ReduceKind,
        field: Option<String>,
    },
    /// A live join: field, other table, its index.
    Join {
        field: String,
        other: String,
        index: Option<String>,
    },
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
    /// when it is handed over (still valid list edits with `include_offsets`). A merged item
    /// takes the place (cursor, [`Change::position_in_commit`](crate::Change::position_in_commit)) of the last change it holds
    /// and keeps the queue slot of its first, so squashed items are in the order their rows
    /// first changed, not in their places' order.
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

    /// With [`Changes::resume_from`]: a resume that would read more than `n` changes after
    /// the cursor is [`Error::CursorExpired`] (read the result again instead), found after
    /// reading at most `n + 1` of them. They are counted as the change log holds them, every
    /// table's in commit order (on a shared database, a cursor older than this process's log
    /// counts its table's changes in the shared history first). A server resuming feeds for
    /// clients it does not trust bounds what each resume costs it.
    pub fn replay_at_most(mut self, n: u64) -> Self {
        self.replay_limit = Some(n);
        self
    }
    /// Sets every option at once.
    pub fn options(mut self, opts: FeedOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Opens the feed: checks the options, plans it, makes its inbox, subscribes it (reading
    /// its initial rows or its missed changes), and queues its first items.
    fn start(self) -> Result<Feed> {
        self.check_options()?;
        let db = self.query.db.clone();
        let plan = self.plan(&db)?;
        let top_n = plan.is_top_n();
        if self.opts.include_offsets && !top_n {
            return Err(Error::feed_option(
                "include_offsets applies only to order_by(index).limit(n) feeds",
            ));
        }
        let stats = matches!(plan, FeedPlan::Stats { .. });
        let (mut feed, delivery) = self.new_feed(&db, stats);
        let initial = match plan {
            FeedPlan::Stats { view } => {
                feed.start_stats(&db, view, self.opts.include_initial);
                None
            }
            plan => self.subscribe(&mut feed, &db, plan, delivery)?,
        };
        feed.queue_first(initial, self.point, top_n, self.opts.include_states);
        Ok(feed)
    }

    /// Refuses options that exclude each other.
    fn check_options(&self) -> Result<()> {
        self.opts.validate()?;
        if self.resume.is_some() && self.opts.include_initial {
            return Err(Error::feed_option(
                "resume_from and include_initial exclude each other: a resumed feed delivers \
                 the changes after its cursor, a fresh one the current rows",
            ));
        }
        Ok(())
    }

    /// What the feed watches: the query's plan, or an aggregate or join of its rows.
    fn plan(&self, db: &Database) -> Result<FeedPlan> {
        let stats = self.query.source == Source::Stats;
        let plan = FeedPlan::new(self.query.plan()?, stats)?;
        let resumed = self.resume.is_some();
        let Some(of_rows) = &self.of_rows else {
            if stats && resumed {
                return Err(Error::unwatchable(
                    "the stats feed cannot resume from a cursor (its rows are not logged changes)",
                ));
            }
            return Ok(plan);
        };
        let what = match of_rows {
            OfRows::Aggregate { .. } => "aggregate",
            OfRows::Join { .. } => "join",
        };
        if resumed {
            return Err(Error::unwatchable(match of_rows {
                OfRows::Aggregate { .. } => {
                    "an aggregate feed cannot resume from a cursor (the log holds changes, not \
                     the groups): re-read it with include_initial"
                }
                OfRows::Join { .. } => {
                    "a join feed cannot resume from a cursor (its pairs depend on both tables \
                     at the time): re-read it with include_initial"
                }
            }));
        }
        let Some(rows) = plan.into_rows() else {
            return Err(Error::unwatchable(format!(
                "only {what}s of a table, get_all or between (with filters) can be watched, \
                 not of order_by(..).limit(n)"
            )));
        };
        let source = self.query.clone();
        let plan = match of_rows {
            OfRows::Aggregate { by, reduce, field } => {
                let by = by.as_ref().map(|(b, ix)| (b.as_str(), *ix));
                let def = AggDef::resolve(&rows.table, &rows.view, by, *reduce, field.as_deref())?;
                AnyPlan::from(AggPlan { rows, def, source })
            }
            OfRows::Join {
                field,
                other,
                index,
            } => {
                let right = db.table_state(other)?;
                let index = match index {
                    Some(name) if !right.is_primary(Some(name)) => Some(right.index(name)?),
                    _ => None,
                };
                let field = crate::value::FieldPath::parse(field)?;
                let def = JoinDef {
                    field,
                    right,
                    index,
                };
                AnyPlan::from(JoinPlan { rows, def, source })
            }
        };
        Ok(FeedPlan::Table(plan))
    }

    /// The feed, before it is subscribed, and how it will receive its items: feeds that
    /// squash (and timer feeds) need a queue of their own, the others read their group's log.
    fn new_feed(&self, db: &Database, stats: bool) -> (Feed, Delivery) {
        let opts = &self.opts;
        let capacity = opts.queue_size.unwrap_or(db.inner.feed_queue_size());
        let window = opts.window();
        // Squashing feeds merge per row; squashing top-N feeds hand over the net difference
        // of the set per batch (see `queue::ListSquash`).
        let merge = opts.squash != Squash::Off;
        // A reader of its group's log gets its inbox when it joins; only a feed with a queue
        // of its own makes one here.
        let (inbox, delivery) = if merge || stats {
            let sub = Arc::new(Subscriber::new(capacity, merge, window.is_some()));
            (Inbox::Queue(sub.clone()), Delivery::Queue(sub))
        } else {
            (Inbox::Unattached, Delivery::Log(capacity))
        };
        let mut feed = Feed {
            inbox,
            front: VecDeque::new(),
            registration: None,
            timer: None,
            include_types: opts.include_types,
            include_offsets: opts.include_offsets,
            window: window.map(|length| {
                Box::new(Window {
                    length,
                    batch: VecDeque::new(),
                    sleep: None,
                })
            }),
            // Set once initial rows are queued: with none, the first batch is the first
            // hand-over.
            handed_first: false,
            done: false,
            visibility: db.inner.visibility().clone(),
            held: None,
            snapshot_seq: None,
            snapshot_split: false,
        };
        // Without initial rows there is nothing to initialise: the first state is `ready`.
        if opts.include_states && opts.include_initial {
            feed.front
                .push_back(Change::state_marker(FeedState::Initializing));
        }
        (feed, delivery)
    }

    /// Subscribes a feed of a table: from a cursor, with its initial rows read in chunks
    /// (a table or primary key range), or with its initial rows (if any) read at once.
    /// Returns the initial rows.
    fn subscribe(
        &self,
        feed: &mut Feed,
        db: &Database,
        plan: FeedPlan,
        delivery: Delivery,
    ) -> Result<Option<Vec<Arc<Value>>>> {
        let query = &self.query;
        if let Some(cursor) = self.resume {
            let replay = FeedPlan::new(query.plan()?, false)?;
            let older = self.history.as_ref();
            let resume = (cursor, self.replay_limit);
            feed.subscribe_resumed(db, (plan, replay), delivery, resume, older)?;
            return Ok(None);
        }
        let include_initial = self.opts.include_initial;
        if let Some(range) = plan.primary_range().filter(|_| include_initial) {
            // A table (or primary key range) can be large: its initial rows are read in
            // chunks, releasing the commit lock in between, so writers wait for one chunk
            // at most.
            let view = FeedPlan::new(query.plan()?, false)?
                .into_view()
                .ok_or_else(|| Error::query("a primary range feed has a row view"))?;
            return feed
                .subscribe_chunked(db, plan, delivery, range, &view)
                .map(Some);
        }
        let rows = || -> Result<Vec<Arc<Value>>> {
            query
                .plan()?
                .rows()
                .map(|r| r.map(|row| Arc::new(row.doc)))
                .collect()
        };
        // Under the commit lock: the snapshot and the subscription see the same commit.
        let sub = db.inner.with_commit_lock(|seq| {
            feed.snapshot_seq = Some(seq);
            db.check_open()?;
            // The table (or index) may have been dropped since the plan was made: a feed
            // opens on a live table or not at all.
            plan.check_live()?;
            db.inner
                .sink_as::<Hub>()
                .subscribe(plan, delivery, rows, include_initial)
        })?;
        Ok(feed.attach(sub))
    }
}

impl Feed {
    /// Starts the stats feed: a timer recomputes its rows; the current ones are its initial
    /// rows.
    fn start_stats(&mut self, db: &Database, view: super::spec::View, include_initial: bool) {
        let mut timer = StatsTimer {
            db: db.clone(),
            view,
            last: HashMap::new(),
            interval: None,
        };
        let initial = timer.diff(db.stats_rows());
        if include_initial {
            self.handed_first = !initial.is_empty();
            self.front.extend(
                initial
                    .into_iter()
                    .map(|c| Change::initial(c.new_arc().cloned(), None)),
            );
        }
        db.inner.sink_as::<Hub>().count_timer_feed(1);
        self.timer = Some(Box::new(timer));
    }

    /// Queues the initial rows (a point feed's missing row as one `null`; top-N rows with
    /// their offsets), then the `ready` state.
    fn queue_first(
        &mut self,
        initial: Option<Vec<Arc<Value>>>,
        point: bool,
        top_n: bool,
        states: bool,
    ) {
        if let Some(rows) = initial {
            // A point feed's missing row is handed over as its `null`.
            self.handed_first = !rows.is_empty() || point;
            if rows.is_empty() && point {
                self.front.push_back(Change::initial(None, None));
            }
            for (i, row) in rows.into_iter().enumerate() {
                self.front
                    .push_back(Change::initial(Some(row), top_n.then_some(i)));
            }
        }
        if states {
            self.front.push_back(Change::state_marker(FeedState::Ready));
        }
    }
}

impl IntoFuture for Changes {
    type Output = Result<Feed>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;
    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move {
            // Opening takes the commit lock (and on a shared database waits for the replica,
            // which needs it): never from a `Patch::with` closure, which holds it already.
            crate::db::check_not_in_patch()?;
            // On a shared database, a cursor from another process may be ahead of this
            // process's replica by a moment: catch up first (a cursor ahead of every change
            // is still refused below). A cursor from before this process's change log is
            // read from the shared history.
            if let (Some(cursor), Some(backend)) = (self.resume, self.query.db.backend()) {
                self.query.db.sync().await?;
                let resume = (cursor, self.replay_limit);
                self.history = super::resume::older(&self.query, resume, backend).await?;
            }
            // Reading initial rows (or filling a top-N set) may read many rows: that runs on
            // a blocking thread, never on the async workers.
            let reads = self.opts.include_initial
                || self.resume.is_some()
                || self.of_rows.is_some()
                || self
                    .query
                    .steps
                    .iter()
                    .any(|s| matches!(s, crate::query::Step::Limit(_)));
            // Opening takes the commit lock for a moment: not on an async worker when a
            // commit (which may be large) holds it now (a check, not a guarantee: a commit
            // may start just after it, and opening then waits for that one commit).
            if reads || self.query.db.inner.commit_lock_busy() {
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
            replay_limit: None,
            history: None,
            of_rows: None,
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
        Changes {
            of_rows: Some(OfRows::Aggregate {
                by: self.by.clone(),
                reduce: self.reduce,
                field: self.field.clone(),
            }),
            ..self.query.changes()
        }
    }
}

impl crate::query::Join {
    /// Watches the join: items are `{"left": .., "right": ..}` pairs, which appear when a
    /// left row starts to match a right row (either one moved), change when either row
    /// changes, and go away when one of them leaves. Routed by the join keys (a write to
    /// either table costs the pairs it touches); all feed options apply (`include_initial`
    /// gives the current pairs). A join feed cannot resume from a cursor.
    pub fn changes(&self) -> Changes {
        Changes {
            of_rows: Some(OfRows::Join {
                field: self.field.clone(),
                other: self.other.clone(),
                index: self.index.clone(),
            }),
            ..self.query.changes()
        }
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
