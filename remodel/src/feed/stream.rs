//! The feed as a stream: where its items wait (a queue of its own or the group's log),
//! initial rows, squash windows, the stats timer, and unsubscribing on drop.

use super::change::Change;
use super::hub::{self, Delivery, Registration};
use super::log::{Log, Reader};
use super::queue::{Next, Subscriber};
use super::spec::{FeedPlan, ScanRange, View};
use crate::db::{Database, Visibility};
use crate::{Error, Result};
use futures_core::Stream;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The stats table's feed: recomputed about once a second, changed rows only.
pub(super) struct StatsTimer {
    pub(super) db: Database,
    pub(super) view: View,
    pub(super) last: HashMap<Vec<u8>, Arc<Value>>,
    pub(super) interval: Option<tokio::time::Interval>,
}

impl StatsTimer {
    pub(super) fn diff(&mut self, rows: Vec<Value>) -> Vec<Change> {
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
/// Error items: [`Error::FeedOverflow`] when the consumer fell more than its queue size
/// behind (the feed goes on), and [`Error::FeedAborted`] when what it watches went away
/// (the feed then ends). Dropping the feed unsubscribes it. The [`crate::feed`] module
/// states the whole contract: order and commit positions, queue size and overflow, squash,
/// visibility of hard writes, abort.
pub struct Feed {
    pub(super) inbox: Inbox,
    /// State markers and initial rows, delivered before anything else.
    pub(super) front: VecDeque<Change>,
    pub(super) registration: Option<Registration>,
    pub(super) timer: Option<Box<StatsTimer>>,
    pub(super) include_types: bool,
    pub(super) include_offsets: bool,
    /// A squash window's state (boxed: few feeds have one, and a process may hold a
    /// million feeds).
    pub(super) window: Option<Box<Window>>,
    pub(super) handed_first: bool,
    pub(super) done: bool,
    /// What may be shown yet: items of hard writes wait until those are on disk.
    pub(super) visibility: Arc<Visibility>,
    /// An item that waits to become visible (everything after it waits too).
    pub(super) held: Option<Change>,
    /// The sequence number the initial rows were read at: they are shown once it is
    /// visible (they may include hard writes not yet on disk).
    pub(super) snapshot_seq: Option<u64>,
    /// The initial rows were read in chunks with commits between them: no one position
    /// holds them all (see [`Feed::snapshot_cursor`]).
    pub(super) snapshot_split: bool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("queue_size", &self.inbox.capacity())
            .finish_non_exhaustive()
    }
}

/// A squashing feed's window: its length, the batch being handed over, and the timer of
/// the next hand-over.
pub(super) struct Window {
    pub(super) length: Duration,
    pub(super) batch: VecDeque<Change>,
    pub(super) sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Where a feed's items wait for it.
pub(super) enum Inbox {
    /// A queue of its own (squashing and timer feeds).
    Queue(Arc<Subscriber>),
    /// The group's log, at this reader's cursor.
    Log(Arc<Log>, Reader),
    /// A reader of a log that has not joined it yet (only while the feed is being opened:
    /// a feed that fails to join is not handed out).
    Unattached,
}

impl Inbox {
    fn capacity(&self) -> usize {
        match self {
            Inbox::Queue(s) => s.capacity(),
            Inbox::Log(_, r) => r.capacity(),
            Inbox::Unattached => 0,
        }
    }

    /// The next item; with nothing there, arranges for `cx` to be woken by the next one.
    fn next(&mut self, cx: &Context<'_>) -> Next {
        match self {
            Inbox::Log(log, reader) => log.next(reader, cx.waker()),
            Inbox::Queue(sub) => match sub.pop() {
                Next::Empty => {
                    // Register, then look once more so that a push in between is not missed.
                    sub.register(cx.waker());
                    sub.pop()
                }
                next => next,
            },
            Inbox::Unattached => Next::Closed(Error::FeedAborted("the feed was not opened".into())),
        }
    }
}

/// How many rows a chunk of a chunked initial read holds.
const INITIAL_CHUNK: usize = 512;

impl Feed {
    /// Takes a new subscription's membership and inbox; returns its initial rows.
    pub(super) fn attach(&mut self, sub: hub::Subscribed) -> Option<Vec<Arc<Value>>> {
        self.registration = Some(sub.registration);
        if let Some((log, reader)) = sub.reader {
            self.inbox = Inbox::Log(log, reader);
        }
        sub.initial
    }

    /// Subscribes and reads the initial rows of a primary key range in chunks. Each chunk is
    /// read under the commit lock; after it, the inbox learns how far the scan got, so that
    /// changes to rows the scan has already read are delivered and changes to rows it has
    /// not reached are dropped (the scan reads those rows later, as they are then). Every
    /// row is thus seen once: in the initial rows, or through changes, never both, never
    /// neither.
    pub(super) fn subscribe_chunked(
        &mut self,
        db: &Database,
        plan: FeedPlan,
        delivery: Delivery,
        ScanRange { table, lo, hi }: ScanRange,
        view: &View,
    ) -> Result<Vec<Arc<Value>>> {
        let mut plan = Some((plan, delivery));
        let mut rows = Vec::new();
        let mut from = lo;
        loop {
            // One chunk under the commit lock; writers run between chunks.
            let next = db
                .inner
                .with_commit_lock_fair(|seq| -> Result<Option<Vec<u8>>> {
                    if self.snapshot_seq.is_some_and(|first| first != seq) {
                        self.snapshot_split = true;
                    }
                    self.snapshot_seq = Some(seq);
                    db.check_open()?;
                    if table.is_dropped() {
                        return Err(Error::NoSuchTable(table.name.clone()));
                    }
                    if let Some((plan, delivery)) = plan.take() {
                        let hub = db.inner.sink_as::<super::Hub>();
                        let sub = hub.subscribe(plan, delivery, || Ok(Vec::new()), false)?;
                        self.attach(sub);
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
                        Inbox::Log(log, reader) => reader.scanned(log, frontier),
                        Inbox::Queue(sub) => sub.scanned(frontier),
                        Inbox::Unattached => {}
                    }
                    Ok(last.filter(|_| !done))
                })?;
            match next {
                Some(k) => from = Bound::Excluded(k),
                None => return Ok(rows),
            }
        }
    }

    fn decorate(&self, c: Change) -> Change {
        c.shown(self.include_types, self.include_offsets)
    }

    /// Hands `c` over, or holds it (and what follows) until its commit may be shown: a hard
    /// write's items wait for its fsync; initial rows wait for the commit they were read at.
    fn show(&mut self, c: Change, cx: &Context<'_>) -> Poll<Option<Result<Change>>> {
        let gate = match c.kind() {
            super::ChangeKind::Initial => self.snapshot_seq,
            _ => c.change_seq(),
        };
        if let Some(seq) = gate.filter(|s| !self.visibility.shows(*s)) {
            self.visibility.register(cx.waker());
            // Look again: the flush may have finished in between.
            if !self.visibility.shows(seq) {
                if self.visibility.failed() {
                    // The write never reached the disk and never will: it is not shown, and
                    // the feed ends.
                    self.done = true;
                    self.registration = None;
                    return Poll::Ready(Some(Err(Error::FeedAborted(
                        "the database can no longer write to disk".into(),
                    ))));
                }
                self.held = Some(c);
                return Poll::Pending;
            }
        }
        Poll::Ready(Some(Ok(self.decorate(c))))
    }

    /// Waits for the feed's next item, then hands every item that is ready with it to `f`,
    /// in order, up to `limit` in all (a `limit` of 0 counts as 1); returns how many it
    /// handed over. `0` means the feed has ended. Error items are handed over like changes (after an
    /// [`Error::FeedOverflow`] the feed goes on; after an [`Error::FeedAborted`] it ends).
    ///
    /// The same items as calling `next()` that many times, for less: a task that serves one
    /// consumer (a WebSocket, an SSE stream) wakes once for a run of changes and turns each
    /// into what it sends as it comes. Items are handed over one at a time rather than
    /// gathered in a buffer on purpose: a change that many feeds share costs a thread
    /// nothing to read again when each reader lets go of it before the next is read, and an
    /// atomic count per item when readers keep runs of them (see the module `shared`). With
    /// a thousand feeds each read by its own task on two workers, this reads at 0.85–0.93 of
    /// one thread reading them all, `next()` per item at 0.74–0.82 and a `Vec` of the ready
    /// items at 0.56–0.69 (`BENCHMARKS.md`, issue 21).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::Database;
    /// use serde_json::json;
    /// let db = Database::temporary().await?;
    /// db.create_table("t").await?;
    /// let mut feed = db.table("t").changes().await?;
    /// db.table("t").insert_many(vec![json!({"id": 1}), json!({"id": 2})]).await?;
    /// db.table("t").insert(json!({"id": 3})).await?;
    /// let mut ids = Vec::new();
    /// while ids.len() < 3 {
    ///     feed.for_each_ready(100, |item| ids.push(item.unwrap().new_val().unwrap()["id"].clone()))
    ///         .await;
    /// }
    /// assert_eq!(ids, [json!(1), json!(2), json!(3)]);
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn for_each_ready(
        &mut self,
        limit: usize,
        mut f: impl FnMut(Result<Change>),
    ) -> usize {
        std::future::poll_fn(|cx| self.poll_for_each_ready(cx, limit, &mut f)).await
    }

    /// [`Feed::for_each_ready`] as a poll: `Pending` (with `cx` registered) when no item is
    /// ready, else `Ready` with how many items it handed to `f` (`0`: the feed ended).
    pub fn poll_for_each_ready(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        f: &mut impl FnMut(Result<Change>),
    ) -> Poll<usize> {
        // `0` says the feed ended: a limit of 0 must not say so of a live feed.
        let limit = limit.max(1);
        let mut handed = 0;
        while handed < limit {
            match Pin::new(&mut *self).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    f(item);
                    handed += 1;
                }
                Poll::Ready(None) => break,
                // Items handed over: done for now; the waker stays registered (a wake-up
                // that then finds nothing new is harmless).
                Poll::Pending if handed > 0 => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(handed)
    }

    /// The commit sequence number at which the feed's initial rows were read (for feeds
    /// over a table or a primary key range, read in chunks: the number when the last chunk
    /// was read). Every change numbered above it is delivered as a change. `None` for timer
    /// feeds (stats).
    pub fn snapshot_seq(&self) -> Option<u64> {
        self.snapshot_seq
    }

    /// Whether the feed's changes come in the order of their cursors, so that the greatest
    /// cursor it delivered is where a resume takes up, whatever was still queued: every
    /// feed but a squashing one (its merged items come in the order of their rows' first
    /// change, each with the cursor of its last: resume it from the greatest cursor
    /// delivered only once its queue was empty, see [`Change::cursor`]).
    pub fn in_cursor_order(&self) -> bool {
        !matches!(&self.inbox, Inbox::Queue(sub) if sub.squashes())
    }

    /// Where the feed's initial rows stand in the change order: a feed resumed from this
    /// cursor ([`crate::Changes::resume_from`]) gets every change after those rows, none of
    /// them twice. `None` for timer feeds (stats), feeds opened without a snapshot, and
    /// feeds over a table or a primary key range whose rows were read in chunks while
    /// commits went on between them: no one position holds those rows (the changes of
    /// rows already read come first, as changes); resume from the cursor of the last change
    /// received instead.
    pub fn snapshot_cursor(&self) -> Option<super::Cursor> {
        if self.snapshot_split {
            return None;
        }
        self.snapshot_seq
            .map(|seq| super::Cursor::new(seq, u32::MAX))
    }

    /// The stats table's timer: recomputes the rows about once a second and queues the
    /// changed ones.
    fn poll_timer(&mut self, cx: &mut Context<'_>) {
        let (Some(timer), Inbox::Queue(sub)) = (&mut self.timer, &self.inbox) else {
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
            let rows = timer.db.stats_rows();
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
        if let Some(c) = this.held.take() {
            return this.show(c, cx);
        }
        if let Some(c) = this.front.pop_front() {
            return this.show(c, cx);
        }
        if let Some(c) = this.window.as_mut().and_then(|w| w.batch.pop_front()) {
            return this.show(c, cx);
        }
        if this.timer.is_some() {
            this.poll_timer(cx);
        }
        if let (Some(w), Inbox::Queue(sub)) = (this.window.as_deref_mut(), &this.inbox) {
            let window = w.length;
            sub.register(cx.waker());
            let (waiting, since, urgent) = sub.pending();
            if waiting > 0 && !urgent {
                // `None`: beyond what the clock can hold, never due (the window is capped far
                // below that, see `FeedOptions::window`; this only keeps the sum from
                // panicking on a clock that cannot reach it).
                let due = match since {
                    Some(s) => s.checked_add(window),
                    None => Some(Instant::now()),
                };
                let early = !this.handed_first || waiting * 2 > sub.capacity();
                if !early && due.is_none_or(|d| Instant::now() < d) {
                    let Some(due) = due else {
                        // Woken by the queue (`register` above) when it fills past half.
                        return Poll::Pending;
                    };
                    let deadline = tokio::time::Instant::from_std(due);
                    let sleep = w
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    sleep.as_mut().reset(deadline);
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                this.handed_first = true;
                if let Some(skipped) = sub.drain(&mut w.batch) {
                    return Poll::Ready(Some(Err(Error::FeedOverflow { skipped })));
                }
                if let Some(c) = w.batch.pop_front() {
                    return this.show(c, cx);
                }
            }
        }
        match this.inbox.next(cx) {
            Next::Item(c) => {
                this.handed_first = true;
                this.show(c, cx)
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
        if let Inbox::Log(log, reader) = &self.inbox {
            log.leave(reader);
        }
        if let Some(timer) = &self.timer {
            timer.db.inner.sink_as::<super::Hub>().count_timer_feed(-1);
        }
    }
}
