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
//!
//! Anything else is refused when the feed is created, with [`crate::Error::InvalidQuery`]
//! saying why: `limit` without an index ordering ("cannot watch the first elements of an
//! unordered stream"), an `order_by` on a field, an index ordering without `limit`, `skip`,
//! anything after `limit`. Aggregates and terminals (`count`, `group`, `sum`, ...) return
//! values, not queries, so they cannot be watched by construction.
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

mod change;
pub(crate) mod hub;
mod log;
mod queue;
mod spec;
mod topn;

pub use change::{Change, ChangeKind, FeedState};
pub(crate) use hub::Hub;
pub(crate) use queue::Subscriber;

use crate::db::Database;
use crate::query::{Get, Query, Source, Table};
use crate::{Error, Result};
use futures_core::Stream;
use hub::{Initial, Join, Registration};
use log::{Log, Reader};
use queue::Next;
use serde_json::Value;
use spec::{FeedPlan, ScanRange, View};
use std::collections::{HashMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::ops::Bound;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How a feed squashes changes.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Squash {
    /// Every change is delivered (the default).
    #[default]
    Off,
    /// Changes that pile up while the consumer is not reading are merged per row.
    Merge,
    /// Like `Merge`, and a batch is handed over at most this many seconds after its first
    /// change arrived (the first batch is not delayed; a queue more than half full is handed
    /// over early).
    Window(f64),
}

/// The options of a changefeed. They can also be read from RethinkDB-style JSON
/// (`{"include_initial": true, "squash": 0.05, "queue_size": 1000}`) with
/// [`FeedOptions::from_json`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedOptions {
    /// First deliver the current result as `initial` items.
    pub include_initial: bool,
    /// Deliver `initializing` / `ready` state items.
    pub include_states: bool,
    /// Include `type` in [`Change::to_json`].
    pub include_types: bool,
    /// Deliver `old_offset` / `new_offset` (top-N feeds only).
    pub include_offsets: bool,
    /// Squash changes (see [`Squash`]).
    pub squash: Squash,
    /// The feed's buffer (default: the database's `feed_queue_size`, 100,000).
    pub queue_size: Option<usize>,
}

impl FeedOptions {
    /// Reads options from JSON, rejecting unknown options and values of the wrong type
    /// (for example a negative or non-number `squash`).
    ///
    /// ```
    /// use remodel::feed::{FeedOptions, Squash};
    /// use serde_json::json;
    /// let o = FeedOptions::from_json(&json!({"squash": 0.5, "include_initial": true})).unwrap();
    /// assert_eq!(o.squash, Squash::Window(0.5));
    /// assert!(FeedOptions::from_json(&json!({"squash": -1})).is_err());
    /// assert!(FeedOptions::from_json(&json!({"squash": "soon"})).is_err());
    /// ```
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::query(format!("feed options must be an object, got {v}")))?;
        let mut o = FeedOptions::default();
        for (k, v) in obj {
            let flag = || {
                v.as_bool().ok_or_else(|| {
                    Error::query(format!("feed option `{k}` must be a boolean, got {v}"))
                })
            };
            match k.as_str() {
                "include_initial" => o.include_initial = flag()?,
                "include_states" => o.include_states = flag()?,
                "include_types" => o.include_types = flag()?,
                "include_offsets" => o.include_offsets = flag()?,
                "squash" => {
                    o.squash = match v {
                        Value::Bool(true) => Squash::Merge,
                        Value::Bool(false) => Squash::Off,
                        Value::Number(n) => Squash::Window(n.as_f64().unwrap_or(-1.0)),
                        other => {
                            return Err(Error::query(format!(
                                "squash must be true, false or a number of seconds, got {other}"
                            )))
                        }
                    }
                }
                "queue_size" => {
                    o.queue_size = Some(v.as_u64().ok_or_else(|| {
                        Error::query(format!("queue_size must be a positive integer, got {v}"))
                    })? as usize)
                }
                other => return Err(Error::query(format!("unknown feed option `{other}`"))),
            }
        }
        o.validate()?;
        Ok(o)
    }

    fn validate(&self) -> Result<()> {
        if let Squash::Window(s) = self.squash {
            if !(s.is_finite() && s >= 0.0) || Duration::try_from_secs_f64(s).is_err() {
                return Err(Error::query(format!(
                    "squash must be a non-negative number of seconds, got {s}"
                )));
            }
        }
        if self.queue_size == Some(0) {
            return Err(Error::query("queue_size must be at least 1"));
        }
        Ok(())
    }
}

/// A changefeed being set up: choose options, then `.await` it to get the [`Feed`].
#[must_use = "a changefeed does nothing until it is awaited"]
pub struct Changes {
    query: Query,
    opts: FeedOptions,
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
    /// Top-N items pair two rows (and carry offsets), so top-N feeds are not merged; with a
    /// window they are still handed over in batches.
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
    /// Sets every option at once.
    pub fn options(mut self, opts: FeedOptions) -> Self {
        self.opts = opts;
        self
    }

    fn start(self) -> Result<Feed> {
        let Changes { query, opts } = self;
        opts.validate()?;
        let db = query.db.clone();
        let stats = query.source == Source::Stats;
        let plan = FeedPlan::new(query.plan()?, stats)?;
        let top_n = matches!(plan, FeedPlan::TopN { .. });
        if opts.include_offsets && !top_n {
            return Err(Error::query(
                "include_offsets applies only to order_by(index).limit(n) feeds",
            ));
        }
        let capacity = opts.queue_size.unwrap_or(db.inner.config.feed_queue_size);
        let window = match opts.squash {
            Squash::Window(s) if s > 0.0 => Some(Duration::from_secs_f64(s)),
            _ => None,
        };
        // Top-N items pair two rows, so merging them per row would break offsets: top-N feeds
        // batch (with a window) but do not merge.
        let merge = opts.squash != Squash::Off && !top_n;
        // Feeds that squash (and timer feeds) need a queue of their own; the others read
        // their group's shared log.
        let own_queue = opts.squash != Squash::Off || stats;
        let sub = Arc::new(Subscriber::new(capacity, merge, window.is_some()));
        let is_point = matches!(&query.source, Source::GetAll { keys, index: None } if keys.len() == 1)
            && query.steps.is_empty();

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
        };
        // Without initial rows there is nothing to initialise: the first state is `ready`.
        if opts.include_states && opts.include_initial {
            feed.front
                .push_back(Change::state_marker(FeedState::Initializing));
        }

        let initial_rows = match plan {
            FeedPlan::Stats { view } => {
                let rows = db.inner.stats.rows(&db);
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
                db.inner.hub.count_timer_feed(1);
                feed.timer = Some(Box::new(timer));
                None
            }
            plan => {
                let signature = format!("{:?}|{:?}", query.source, query.steps);
                let join = if own_queue {
                    Join::Own(sub)
                } else {
                    Join::Shared(capacity)
                };
                match plan.primary_range().filter(|_| opts.include_initial) {
                    // A table (or primary key range) can be large: its initial rows are read
                    // in chunks, releasing the commit lock in between, so writers wait for
                    // one chunk at most.
                    Some(range) => {
                        let view = FeedPlan::new(query.plan()?, false)?
                            .into_view()
                            .ok_or_else(|| Error::query("a primary range feed has a row view"))?;
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
                        let _commit = db.inner.writer.lock();
                        db.check_open()?;
                        let sub = db.inner.hub.subscribe(
                            plan,
                            signature,
                            join,
                            rows,
                            opts.include_initial,
                        )?;
                        feed.join(sub)
                    }
                }
            }
        };
        if let Some(rows) = initial_rows {
            if rows.is_empty() && is_point {
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
        Box::pin(async move { self.start() })
    }
}

impl Query {
    /// Watches the query's result (see [`crate::feed`] for which queries can be watched).
    pub fn changes(&self) -> Changes {
        Changes {
            query: self.clone(),
            opts: FeedOptions::default(),
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
        self.table.get_all([self.key.clone()]).changes()
    }
}

/// The stats table's feed: recomputed about once a second, changed rows only.
struct StatsTimer {
    db: Database,
    view: View,
    last: HashMap<Vec<u8>, Arc<Value>>,
    interval: Option<tokio::time::Interval>,
}

impl StatsTimer {
    fn diff(&mut self, rows: Vec<Value>) -> Vec<Change> {
        let mut next = HashMap::with_capacity(rows.len());
        let mut out = Vec::new();
        for row in rows {
            let key = crate::value::encode_value(&row["id"]);
            if let Some(seen) = self.view.apply(&Arc::new(row)) {
                next.insert(key, seen);
            }
        }
        for (k, new) in &next {
            let old = self.last.get(k);
            if old != Some(new) {
                out.push(Change::row(
                    Some(Arc::from(&k[..])),
                    old.cloned(),
                    Some(new.clone()),
                ));
            }
        }
        for (k, old) in &self.last {
            if !next.contains_key(k) {
                out.push(Change::row(
                    Some(Arc::from(&k[..])),
                    Some(old.clone()),
                    None,
                ));
            }
        }
        self.last = next;
        out
    }
}

/// A live query: a stream of [`Change`] items, in commit order.
///
/// Error items: [`Error::FeedOverflow`] when the consumer fell behind (the feed goes on),
/// and [`Error::FeedAborted`] when the table or index went away or the database closed (the
/// feed then ends). Dropping the feed unsubscribes it.
pub struct Feed {
    inbox: Inbox,
    /// State markers and initial rows, delivered before anything else.
    front: VecDeque<Change>,
    /// A squash window's batch being handed over.
    batch: VecDeque<Change>,
    registration: Option<Registration>,
    timer: Option<Box<StatsTimer>>,
    include_types: bool,
    include_offsets: bool,
    window: Option<Duration>,
    handed_first: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("queue_size", &self.inbox.capacity())
            .finish_non_exhaustive()
    }
}

/// Where a feed's items wait for it.
enum Inbox {
    /// A queue of its own (squashing and timer feeds).
    Own(Arc<Subscriber>),
    /// The group's shared log, at this reader's cursor.
    Shared(Arc<Log>, Reader),
}

impl Inbox {
    fn capacity(&self) -> usize {
        match self {
            Inbox::Own(s) => s.capacity(),
            Inbox::Shared(_, r) => r.capacity(),
        }
    }

    /// The next item; with nothing there, arranges for `cx` to be woken by the next one.
    fn next(&mut self, cx: &Context<'_>, more: &mut VecDeque<Change>) -> Next {
        match self {
            Inbox::Shared(log, reader) => log.next(reader, cx.waker(), more),
            Inbox::Own(sub) => match sub.pop() {
                Next::Empty => {
                    // Register, then look once more so that a push in between is not missed.
                    sub.register(cx.waker());
                    sub.pop()
                }
                next => next,
            },
        }
    }
}

/// How many rows a chunk of a chunked initial read holds.
const INITIAL_CHUNK: usize = 512;

impl Feed {
    /// Takes a new subscription's membership and inbox; returns its initial rows.
    fn join(&mut self, sub: hub::Subscribed) -> Option<Vec<Arc<Value>>> {
        self.registration = Some(sub.registration);
        if let Some((log, reader)) = sub.reader {
            self.inbox = Inbox::Shared(log, reader);
        }
        match sub.initial {
            Initial::Rows(rows) => Some(rows),
            Initial::None => None,
        }
    }

    /// Subscribes and reads the initial rows of a primary key range in chunks. Each chunk is
    /// read under the commit lock; after it, the inbox learns how far the scan got, so that
    /// changes to rows the scan has already read are delivered and changes to rows it has
    /// not reached are dropped (the scan reads those rows later, as they are then). Every
    /// row is thus seen once: in the initial rows, or through changes, never both, never
    /// neither.
    fn subscribe_chunked(
        &mut self,
        db: &Database,
        plan: FeedPlan,
        signature: String,
        join: Join,
        ScanRange { table, lo, hi }: ScanRange,
        view: &View,
    ) -> Result<Vec<Arc<Value>>> {
        let mut plan = Some((plan, signature, join));
        let mut rows = Vec::new();
        let mut from = lo;
        loop {
            let _commit = db.inner.writer.lock();
            db.check_open()?;
            if table.is_dropped() {
                return Err(Error::NoSuchTable(table.name.clone()));
            }
            if let Some((plan, signature, join)) = plan.take() {
                let sub =
                    db.inner
                        .hub
                        .subscribe(plan, signature, join, || Ok(Vec::new()), false)?;
                self.join(sub);
            }
            let mut last = None;
            let mut read = 0;
            for entry in table
                .docs
                .range(from.clone(), hi.clone())
                .take(INITIAL_CHUNK)
            {
                let (key, bytes) = entry?;
                let doc = Arc::new(table.parse_doc(&bytes)?);
                if let Some(seen) = view.apply(&doc) {
                    rows.push(seen);
                }
                last = Some(key.to_vec());
                read += 1;
            }
            let done = read < INITIAL_CHUNK;
            let frontier = if done { None } else { last.clone() };
            match &mut self.inbox {
                Inbox::Shared(log, reader) => reader.scanned(log, frontier),
                Inbox::Own(sub) => sub.scanned(frontier),
            }
            match (done, last) {
                (false, Some(k)) => from = Bound::Excluded(k),
                _ => return Ok(rows),
            }
        }
    }

    fn decorate(&self, c: Change) -> Change {
        c.shown(self.include_types, self.include_offsets)
    }

    /// The stats table's timer: recomputes the rows about once a second and queues the
    /// changed ones.
    fn poll_timer(&mut self, cx: &mut Context<'_>) {
        let (Some(timer), Inbox::Own(sub)) = (&mut self.timer, &self.inbox) else {
            return;
        };
        if timer.db.check_open().is_err() {
            sub.close(Error::FeedAborted("the database was closed".into()));
            return;
        }
        let mut interval = timer.interval.take().unwrap_or_else(|| {
            let start = tokio::time::Instant::now() + Duration::from_secs(1);
            let mut i = tokio::time::interval_at(start, Duration::from_secs(1));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        while interval.poll_tick(cx).is_ready() {
            let rows = timer.db.inner.stats.rows(&timer.db);
            for c in timer.diff(rows) {
                // Pushed from the consumer's own poll: no wake-up needed.
                sub.push(c);
            }
        }
        timer.interval = Some(interval);
    }
}

impl Stream for Feed {
    type Item = Result<Change>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(c) = this.front.pop_front() {
            return Poll::Ready(Some(Ok(this.decorate(c))));
        }
        if let Some(c) = this.batch.pop_front() {
            return Poll::Ready(Some(Ok(this.decorate(c))));
        }
        if this.timer.is_some() {
            this.poll_timer(cx);
        }
        if let (Some(window), Inbox::Own(sub)) = (this.window, &this.inbox) {
            sub.register(cx.waker());
            let (waiting, since, urgent) = sub.pending();
            if waiting > 0 && !urgent {
                let due = since.map_or(Instant::now(), |s| s + window);
                let early = !this.handed_first || waiting * 2 > sub.capacity();
                if !early && Instant::now() < due {
                    let deadline = tokio::time::Instant::from_std(due);
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    sleep.as_mut().reset(deadline);
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                this.handed_first = true;
                if let Some(skipped) = sub.drain(&mut this.batch) {
                    return Poll::Ready(Some(Err(Error::FeedOverflow { skipped })));
                }
                if let Some(c) = this.batch.pop_front() {
                    return Poll::Ready(Some(Ok(this.decorate(c))));
                }
            }
        }
        match this.inbox.next(cx, &mut this.batch) {
            Next::Item(c) => {
                this.handed_first = true;
                Poll::Ready(Some(Ok(this.decorate(c))))
            }
            Next::Overflow(skipped) => Poll::Ready(Some(Err(Error::FeedOverflow { skipped }))),
            Next::Closed(e) => {
                this.done = true;
                this.registration = None;
                Poll::Ready(Some(Err(e)))
            }
            Next::Empty => Poll::Pending,
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Inbox::Shared(log, reader) = &self.inbox {
            log.leave(reader);
        }
        if let Some(timer) = &self.timer {
            timer.db.inner.hub.count_timer_feed(-1);
        }
    }
}
