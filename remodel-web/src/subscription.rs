//! One subscription: asks its publication for a [`Live`] result, opens its feed (resumed
//! from the client's cursor, or with its initial rows), and turns the feed's changes into
//! frames: each rule and view applied, the net effect of every change ready within a window
//! in one frame.
//!
//! It starts over (asks the publication again, sends the whole result) when its feed
//! overflowed (the client did not keep up: its frames waited while the feed filled) and
//! when one of the result's guards changed (what the publication decided with changed).
//! It ends with a refusal when the publication refuses, and with [`ErrorCode::Aborted`] when
//! its feed is aborted (the table was dropped).

use crate::live::Live;
use crate::outbox::Outbox;
use crate::protocol::ServerFrame;
use crate::{Caller, ErrorCode, PublishFn, Refusal, Shared};
use futures::stream::StreamExt;
use futures::FutureExt;
use remodel::{ChangeKind, Cursor, Error, Feed, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The most changes one frame gathers (a client resuming after a long cut gets several).
const MOST_PER_FRAME: usize = 4096;

/// Restarts in a row that sent nothing before a subscription ends.
const MOST_RESTARTS: u32 = 8;

pub(crate) struct Subscription<I> {
    pub(crate) id: u32,
    /// Which opening of the id this is (see [`Outbox`]).
    pub(crate) generation: u64,
    /// Set when the subscription ends by itself, before the client hears of it.
    pub(crate) ended: Arc<AtomicBool>,
    pub(crate) shared: Arc<Shared<I>>,
    pub(crate) caller: Caller<I>,
    pub(crate) publish: Arc<PublishFn<I>>,
    pub(crate) params: Value,
    pub(crate) out: Outbox,
    /// The connection's turn to read and queue an initial result.
    pub(crate) resets: Arc<Semaphore>,
}

/// Why following a feed stopped.
enum Stop {
    /// Ask the publication again and send the whole result.
    Restart,
    /// Tell the client the subscription ended.
    End(Refusal),
    /// The connection is gone.
    Gone,
}

/// Counts a subscription as open while it lives.
struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<I: Clone + Send + Sync + 'static> Subscription<I> {
    pub(crate) async fn run(self, mut cursor: Option<Cursor>) {
        self.shared.subscriptions.fetch_add(1, Ordering::Relaxed);
        let _open = Counted(&self.shared.subscriptions);
        // Restarts in a row that sent nothing: each waits longer, and there is an end to them
        // (a guard that changes all the time, a feed that overflows while its result is read).
        let mut fruitless = 0u32;
        loop {
            // Boxed: opening holds much more state than following, and a task is as large as
            // its largest state for its whole life.
            let (stop, followed) = match Box::pin(self.open(cursor.take())).await {
                Ok((live, feed, guards)) => (self.follow(&live, feed, guards).await, true),
                Err(stop) => (stop, false),
            };
            match stop {
                Stop::Restart if followed => fruitless = 0,
                Stop::Restart if fruitless >= MOST_RESTARTS => {
                    let why = "the subscription's result kept changing under it; subscribe again";
                    self.ended.store(true, Ordering::Release);
                    let error = Refusal::new(ErrorCode::Aborted, why);
                    let _ = self
                        .send(ServerFrame::End {
                            sub: self.id,
                            error,
                        })
                        .await;
                    return;
                }
                Stop::Restart => {
                    // The first goes at once (a resume that must be a reset, say).
                    if fruitless > 0 {
                        let step = self.shared.window.max(Duration::from_millis(10));
                        let wait = step * 2u32.pow(fruitless - 1);
                        tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                    }
                    fruitless += 1;
                }
                Stop::End(why) => {
                    self.ended.store(true, Ordering::Release);
                    let end = ServerFrame::End {
                        sub: self.id,
                        error: why,
                    };
                    let _ = self.send(end).await;
                    return;
                }
                Stop::Gone => return,
            }
        }
    }

    async fn send(&self, frame: ServerFrame<'_>) -> Result<(), Stop> {
        let from = (self.id, self.generation);
        self.out
            .send_from(from, frame.message())
            .await
            .map_err(|_| Stop::Gone)
    }

    /// Asks the publication, opens the guards and the feed, and sends the initial rows when
    /// the feed does not resume from `cursor`.
    ///
    /// The guards watch from before the decision: from the database's position taken before
    /// the publication reads anything (or from the client's cursor, when it resumes: a guard
    /// that changed since then means the rows it missed were decided otherwise, and it gets
    /// the whole result again instead). A change to what the publication decided with is
    /// thus never missed, however close to the decision it comes. Without a change log
    /// (guards cannot resume), the publication decides again once its guards watch.
    async fn open(&self, cursor: Option<Cursor>) -> Result<(Live, Feed, Vec<Feed>), Stop> {
        let since = match cursor {
            Some(cursor) => cursor,
            // The position waits for a commit in progress: off the runtime's threads.
            None => {
                let db = self.caller.db.clone();
                tokio::task::spawn_blocking(move || db.position())
                    .await
                    .map_err(|_| Stop::End(Refusal::new(ErrorCode::Internal, "no position")))?
            }
        };
        let mut live = self.decide().await?;
        let mut guards = Vec::new();
        let mut watched_late = false;
        for guard in &live.guards {
            let guard = guard.as_ref().map_err(|e| Stop::End(refusal(e)))?;
            // A guard's every item means a change: no initial rows, no state markers, and no
            // squashing (which would hold a change back), whatever the publication asked.
            let guard = guard
                .clone()
                .include_initial(false)
                .include_states(false)
                .squash(false);
            let feed = match guard.clone().resume_from(since).await {
                Ok(feed) => feed,
                Err(_) => {
                    watched_late = true;
                    guard.await.map_err(|e| Stop::End(refusal(&e)))?
                }
            };
            guards.push(feed);
        }
        if watched_late {
            live = self.decide().await?;
        }
        let changes = match &live.changes {
            Ok(c) => c.clone().queue_size(self.shared.limits.feed_queue),
            Err(e) => return Err(Stop::End(refusal(e))),
        };
        if let Some(cursor) = cursor.filter(|_| !watched_late && !guards_moved(&mut guards)) {
            match changes.clone().resume_from(cursor).await {
                Ok(feed) => return Ok((live, feed, guards)),
                Err(e @ (Error::NoSuchTable(_) | Error::Closed)) => {
                    return Err(Stop::End(refusal(&e)))
                }
                // Expired, from another database, or a feed that cannot resume (top-N,
                // aggregates, joins): the whole result, read afresh.
                Err(_) => {}
            }
        }
        // Guards that moved since the client's cursor are spent (the reset below follows
        // a decision made after them): watch afresh from here.
        if cursor.is_some() {
            return Err(Stop::Restart);
        }
        // One initial result at a time per connection: each may be large, and a client that
        // does not read must not make the server hold many.
        let _turn = self.resets.acquire().await.map_err(|_| Stop::Gone)?;
        let mut feed = changes
            .include_initial(true)
            .include_states(true)
            .await
            .map_err(|e| Stop::End(refusal(&e)))?;
        let mut rows = Vec::new();
        while let Some(item) = feed.next().await {
            let change = item.map_err(|e| stop_for(&e))?;
            match change.kind() {
                ChangeKind::Initial => {
                    if let Some(row) = live.visible(change.new_val()).map_err(Stop::End)? {
                        rows.push(row);
                    }
                }
                ChangeKind::State => {
                    if change.state() == Some(remodel::FeedState::Ready) {
                        break;
                    }
                }
                // Initial rows come before any change; a feed that has none goes straight on.
                _ => {
                    return Err(Stop::End(Refusal::new(
                        ErrorCode::Internal,
                        "the feed changed before its initial rows were read",
                    )))
                }
            }
        }
        if guards_moved(&mut guards) {
            return Err(Stop::Restart);
        }
        let cursor = feed.snapshot_cursor().map(|c| c.to_string());
        let (sub, order) = (self.id, &live.order[..]);
        self.send_split(&rows, |rows, first, more| match first {
            true => ServerFrame::Reset {
                sub,
                rows,
                order,
                cursor: cursor.clone(),
                more,
            },
            false => ServerFrame::More { sub, rows, more },
        })
        .await?;
        Ok((live, feed, guards))
    }

    /// Sends `rows` as `frame(rows, first, more)`: one frame, serialised once, when its text
    /// is under [`FRAME_BYTES`]; else in runs of at most [`RESET_CHUNK`] bytes of rows, all
    /// but the last saying `more`.
    async fn send_split<'r, T: serde::Serialize>(
        &self,
        rows: &'r [T],
        frame: impl Fn(&'r [T], bool, bool) -> ServerFrame<'r>,
    ) -> Result<(), Stop> {
        let from = (self.id, self.generation);
        let whole = frame(rows, true, false).message();
        if crate::outbox::text_len(&whole) < FRAME_BYTES {
            return self
                .out
                .send_from(from, whole)
                .await
                .map_err(|_| Stop::Gone);
        }
        let ends = runs(rows);
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let more = i + 1 < ends.len();
            self.send(frame(&rows[start..end], i == 0, more)).await?;
            start = end;
        }
        Ok(())
    }

    /// The publication's answer for this caller and these parameters.
    async fn decide(&self) -> Result<Live, Stop> {
        (self.publish)(self.caller.clone(), self.params.clone())
            .await
            .map_err(Stop::End)
    }

    /// Sends the feed's changes, one frame per window, until something stops it. Before each
    /// change it takes and before each frame it sends, it looks at the guards: a change to
    /// what the publication decided with stops it, and what the feed had after that change
    /// is never sent under the old decision.
    async fn follow(&self, live: &Live, mut feed: Feed, mut guards: Vec<Feed>) -> Stop {
        let window = self.shared.window;
        loop {
            let first = tokio::select! {
                biased;
                // Any item of a guard (a change, or an error such as its table's drop) means:
                // decide again.
                _ = any_item(&mut guards), if !guards.is_empty() => return Stop::Restart,
                item = feed.next() => item,
            };
            let mut batch = Batch::default();
            let mut item = first;
            loop {
                if guards_moved(&mut guards) {
                    return Stop::Restart;
                }
                match item {
                    None => {
                        let why = Refusal::new(ErrorCode::Aborted, "the feed ended");
                        return Stop::End(why);
                    }
                    Some(Err(e)) => return stop_for(&e),
                    Some(Ok(change)) => {
                        if let Err(why) = batch.add(live, &change) {
                            return Stop::End(why);
                        }
                    }
                }
                if batch.len >= MOST_PER_FRAME {
                    break;
                }
                match feed.next().now_or_never() {
                    Some(next) => item = next,
                    None => break,
                }
            }
            if guards_moved(&mut guards) {
                return Stop::Restart;
            }
            if !batch.rows.is_empty() {
                // The cursor on the last frame, when it goes in several.
                let rows: Vec<_> = batch.rows.into_values().collect();
                let (sub, cursor) = (self.id, batch.cursor.map(|c| c.to_string()));
                let frames = |rows, _first, more: bool| ServerFrame::Change {
                    sub,
                    rows,
                    cursor: cursor.clone().filter(|_| !more),
                    more,
                };
                // Boxed, as the sleep: a subscription's task spends its life waiting for its
                // feed, and is as large as its largest state (a frame on its way out).
                if let Err(stop) = Box::pin(self.send_split(&rows, frames)).await {
                    return stop;
                }
                if !window.is_zero() {
                    Box::pin(tokio::time::sleep(window)).await;
                }
            }
        }
    }
}

/// The most JSON text of rows one frame carries (at least one row), initial results and
/// changes alike.
/// The WebSocket layer keeps a buffer as large as the largest frame it ever wrote, for the
/// connection's life: a 1,000-row result sent whole would pin ~100 KB per connection.
const RESET_CHUNK: usize = 2048;

/// A frame under this size goes whole (the usual case: serialised once).
const FRAME_BYTES: usize = 2 * RESET_CHUNK;

/// The ends of the runs of `rows` of at most [`RESET_CHUNK`] bytes of JSON (at least one
/// row each). Each row is serialised to be measured: only frames too large to go whole pay it.
fn runs<T: serde::Serialize>(rows: &[T]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let size = serde_json::to_vec(row).map_or(0, |v| v.len()) + 1;
        if i > 0 && bytes + size > RESET_CHUNK {
            ends.push(i);
            bytes = 0;
        }
        bytes += size;
    }
    ends.push(rows.len());
    ends
}

/// Whether a guard has an item ready (a change, or its end).
///
/// Each guard is polled itself (not only those whose waker fired): a writer wakes a feed's
/// consumer after the commit, so a guard can hold a change its waker has not announced yet.
fn guards_moved(guards: &mut [Feed]) -> bool {
    guards.iter_mut().any(|g| g.next().now_or_never().is_some())
}

/// The next item of any of `feeds` (each polled every time: there are a few).
async fn any_item(feeds: &mut [Feed]) {
    std::future::poll_fn(|cx| {
        for feed in feeds.iter_mut() {
            if feed.poll_next_unpin(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The net effect of a run of changes: each key's last shown row, or `None` when it left.
#[derive(Default)]
struct Batch {
    rows: indexed::Rows,
    len: usize,
    cursor: Option<Cursor>,
}

impl Batch {
    fn add(&mut self, live: &Live, change: &remodel::Change) -> Result<(), Refusal> {
        if change.kind() == ChangeKind::State {
            return Ok(());
        }
        self.len += 1;
        if let Some(c) = change.cursor() {
            self.cursor = self.cursor.max(Some(c));
        }
        let old = live.visible(change.old_val())?;
        let new = live.visible(change.new_val())?;
        match (old, new) {
            (Some((old_key, _)), Some((key, row))) if old_key == key => {
                self.rows.set(key, Some(row))
            }
            (old, new) => {
                // A row that left (or that a rule now hides), and a different one that came
                // (a top-N's entering row).
                if let Some((key, _)) = old {
                    self.rows.set(key, None);
                }
                if let Some((key, row)) = new {
                    self.rows.set(key, Some(row));
                }
            }
        }
        Ok(())
    }
}

mod indexed {
    use super::*;

    /// Rows by key, in the order their keys first came.
    #[derive(Default)]
    pub(super) struct Rows {
        at: HashMap<String, usize>,
        rows: Vec<(Value, Option<Value>)>,
    }

    impl Rows {
        pub(super) fn set(&mut self, key: Value, row: Option<Value>) {
            let text = key.to_string();
            match self.at.get(&text) {
                Some(&i) => self.rows[i].1 = row,
                None => {
                    self.at.insert(text, self.rows.len());
                    self.rows.push((key, row));
                }
            }
        }

        pub(super) fn is_empty(&self) -> bool {
            self.rows.is_empty()
        }

        pub(super) fn into_values(self) -> impl Iterator<Item = (Value, Option<Value>)> {
            self.rows.into_iter()
        }
    }
}

/// What a feed's error item means for the subscription.
fn stop_for(e: &Error) -> Stop {
    match e {
        // The client fell behind: its feed dropped changes. Start over with the whole result.
        Error::FeedOverflow { .. } => Stop::Restart,
        e => Stop::End(refusal(e)),
    }
}

/// A store error ending a subscription.
fn refusal(e: &Error) -> Refusal {
    Refusal::from(e)
}
