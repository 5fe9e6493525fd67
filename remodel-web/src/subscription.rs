//! One subscription: asks its publication for a [`Live`] result, opens its feed (resumed
//! from the client's cursor, or with its initial rows), and turns the feed's changes into
//! frames: each rule and view applied, the net effect of every change its feed holds when
//! its connection's window ends in one frame (the window is the connection's: see
//! `socket`).
//!
//! Opening runs in a task of its own (it asks the publication, reads the initial rows and
//! queues them, and may wait long for each); once open, the subscription is handed to its
//! connection's driver ([`Following`]), which follows the feeds of all the connection's
//! subscriptions and writes their changes itself. An idle subscription is then a small
//! struct, not a task (a task is as large as its largest state, ~3 KB), and a change costs
//! one wake-up of the connection, not one of the subscription and another of its writer.
//!
//! It starts over (asks the publication again, sends the whole result) when its feed
//! overflowed (the client did not keep up: its frames waited while the feed filled) and
//! when one of the result's guards changed (what the publication decided with changed).
//! It ends with a refusal when the publication refuses, and with [`ErrorCode::Aborted`] when
//! its feed is aborted (the table was dropped).

use crate::live::{Live, Shown};
use crate::net_effect::Batch;
use crate::outbox::{Inbox, Outbox};
use crate::protocol::ServerFrame;
use crate::shared_result::{Handle, Joined, Member};
use crate::text;
use crate::{Caller, ErrorCode, PublishFn, Refusal, Shared};
use axum::extract::ws::Message;
use futures::stream::StreamExt;
use futures::FutureExt;
use remodel::{ChangeKind, Changes, Cursor, Error, Feed, Value};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The most changes one frame gathers (a client resuming after a long cut gets several).
const MOST_PER_FRAME: usize = 4096;

/// Restarts in a row that sent nothing before a subscription ends.
const MOST_RESTARTS: u32 = 8;

/// What a subscription is, opening or followed.
pub(crate) struct Subscription<I> {
    pub(crate) id: u32,
    /// Which opening of the id this is (see [`Outbox`]).
    pub(crate) generation: u64,
    pub(crate) shared: Arc<Shared<I>>,
    pub(crate) caller: Caller<I>,
    pub(crate) publish: Arc<PublishFn<I>>,
    /// The parameters as the client sent them, as JSON text: parsed again when the
    /// publication decides again (a parsed object is ~300 bytes, and an open subscription
    /// keeps them).
    pub(crate) params: Box<str>,
}

impl<I> Drop for Subscription<I> {
    /// Counted as open from [`Subscription::start`] until it is dropped (ended, aborted, or
    /// its connection gone).
    fn drop(&mut self) {
        self.shared.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why following a feed stopped.
#[derive(Clone)]
pub(crate) enum Stop {
    /// Ask the publication again and send the whole result.
    Restart,
    /// Tell the client the subscription ended.
    End(Refusal),
    /// The connection is gone.
    Gone,
}

/// A subscription opening: the task that runs this owns it.
struct Opening<I> {
    sub: Subscription<I>,
    out: Outbox<I>,
}

impl<I: Clone + Send + Sync + 'static> Subscription<I> {
    /// Opens the subscription in a task of its own (resumed from `cursor`), which hands it to
    /// the connection's driver once its initial frames are queued.
    pub(crate) fn start(self, out: Outbox<I>, cursor: Option<Cursor>) {
        self.shared.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.reopen(out, cursor);
    }

    /// Opens it again (it was counted when started).
    fn reopen(self, out: Outbox<I>, cursor: Option<Cursor>) {
        let from = (self.id, self.generation);
        let common = out.common.clone();
        let opening = Opening { sub: self, out };
        // The task waits until its abort handle is noted (so that it can take it back when
        // it is done: a handle keeps a finished task's memory, ~3 KB, allocated).
        let (noted, note) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = note.await;
            let (id, out) = (opening.sub.id, opening.out.clone());
            // A publication that panics ends its subscription, with a word to the client.
            if AssertUnwindSafe(opening.run(cursor))
                .catch_unwind()
                .await
                .is_err()
            {
                let why = Refusal::new(ErrorCode::Internal, "the publication failed");
                let end = ServerFrame::End {
                    sub: id,
                    error: why,
                };
                let _ = out.send_end(from, end.message()).await;
            }
        });
        common.opening(from, task.abort_handle());
        let _ = noted.send(());
    }
}

impl<I: Clone + Send + Sync + 'static> Opening<I> {
    async fn run(self, mut cursor: Option<Cursor>) {
        // Restarts in a row that sent nothing: each waits longer, and there is an end to them
        // (a guard that changes all the time, a feed that overflows while its result is read).
        let mut fruitless = 0u32;
        loop {
            // Boxed: opening holds much more state than waiting, and a task is as large as
            // its largest state for its whole life.
            let stop = match Box::pin(self.open(cursor.take())).await {
                Ok((source, guards)) => {
                    let Opening { sub, out } = self;
                    // Done opening: nothing to abort any more (the driver drops it instead).
                    out.common.opened((sub.id, sub.generation));
                    let following = Box::new(Following {
                        sub,
                        source,
                        guards,
                        stop: None,
                        held: false,
                    });
                    // The driver takes it from here (or drops it: the client unsubscribed).
                    let _ = out.follow(following).await;
                    return;
                }
                Err(stop) => stop,
            };
            match stop {
                Stop::Restart if fruitless >= MOST_RESTARTS => {
                    let why = "the subscription's result kept changing under it; subscribe again";
                    let _ = self.end(Refusal::new(ErrorCode::Aborted, why)).await;
                    return;
                }
                Stop::Restart => {
                    // The first goes at once (a resume that must be a reset, say).
                    if fruitless > 0 {
                        let step = self.sub.shared.window.max(Duration::from_millis(10));
                        // Saturating: a window of `Duration::MAX` means "never", not a panic.
                        let wait = step.saturating_mul(2u32.saturating_pow(fruitless - 1));
                        tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                    }
                    fruitless += 1;
                }
                Stop::End(why) => {
                    let _ = self.end(why).await;
                    return;
                }
                Stop::Gone => return,
            }
        }
    }

    /// Ends the subscription with `why` (the client may reuse its id on this frame).
    async fn end(&self, why: Refusal) -> Result<(), Stop> {
        let from = (self.sub.id, self.sub.generation);
        let end = ServerFrame::End {
            sub: self.sub.id,
            error: why,
        };
        self.out
            .send_end(from, end.message())
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
    async fn open(&self, cursor: Option<Cursor>) -> Result<(Source, Vec<Feed>), Stop> {
        let sub = &self.sub;
        // The position waits for a commit in progress: off the runtime's threads.
        let db = sub.caller.db.clone();
        let now = tokio::task::spawn_blocking(move || db.position())
            .await
            .map_err(|_| Stop::End(Refusal::new(ErrorCode::Internal, "no position")))?;
        let since = cursor.unwrap_or(now);
        // A cursor with more changes after it than `Limits::resume_changes` gets the whole
        // result again: a replay costs the server that stretch of the change log (for each
        // guard too), which a page could ask for again and again; a reset costs one read.
        let most = sub.shared.limits.resume_changes;
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
            let feed = match guard.clone().resume_from(since).replay_at_most(most).await {
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
        // The followed result keeps no query of its feed or guards (a restart asks anew).
        live.guards = Vec::new();
        let Some(changes) = live.changes.take() else {
            let why = Refusal::new(ErrorCode::Internal, "the result has no feed");
            return Err(Stop::End(why));
        };
        let changes = match *changes {
            Ok(c) => c.queue_size(sub.shared.limits.feed_queue),
            Err(e) => return Err(Stop::End(refusal(&e))),
        };
        if live.share.is_some() {
            return self.join(live, changes, cursor, watched_late, guards).await;
        }
        if let Some(cursor) = cursor.filter(|_| !watched_late && !guards_moved(&mut guards)) {
            if let Some(feed) = resume_own(changes.clone().replay_at_most(most), cursor).await? {
                return Ok((Source::own(live, feed), guards));
            }
        }
        // Guards that moved since the client's cursor are spent (the reset below follows
        // a decision made after them): watch afresh from here.
        if cursor.is_some() {
            return Err(Stop::Restart);
        }
        // One initial result at a time per connection: each may be large, and a client that
        // does not read must not make the server hold many.
        let resets = self.out.common.resets.clone();
        let _turn = resets.acquire().await.map_err(|_| Stop::Gone)?;
        let mut feed = changes
            .include_initial(true)
            .include_states(true)
            .await
            .map_err(|e| Stop::End(refusal(&e)))?;
        let rows = initial_rows(&mut feed, &live).await?;
        if guards_moved(&mut guards) {
            return Err(Stop::Restart);
        }
        let cursor = feed
            .snapshot_cursor()
            .map(|c| text::cursor_text(c, sub.shared.scope));
        let order = serde_json::to_string(&live.order).unwrap_or_else(|_| "[]".into());
        let rows = text::row_texts(rows.into_iter().map(|(key, row)| (key, Some(row))));
        let frames = text::reset_frames(sub.id, &text::parts_of(&rows), &order, cursor.as_deref());
        let from = (sub.id, sub.generation);
        for frame in frames {
            self.out
                .send_from(from, frame)
                .await
                .map_err(|_| Stop::Gone)?;
        }
        Ok((Source::own(live, feed), guards))
    }

    /// Joins the shared result `live` declared (see [`crate::shared_result`]): follows it
    /// from the client's cursor when the result still holds every change since, or resumes
    /// on a feed of its own from the change log; sends the result's rows otherwise.
    async fn join(
        &self,
        mut live: Live,
        changes: Changes,
        cursor: Option<Cursor>,
        watched_late: bool,
        mut guards: Vec<Feed>,
    ) -> Result<(Source, Vec<Feed>), Stop> {
        let sub = &self.sub;
        let part = live.share.take().unwrap_or_default();
        let key = (
            Arc::as_ptr(&sub.publish) as *const () as usize,
            sub.params.clone(),
            part,
        );
        // Resumed only when no guard moved since the cursor (a guard's item taken here is
        // answered below, by deciding again).
        let resumable = cursor.filter(|_| !watched_late && !guards_moved(&mut guards));
        let most = sub.shared.limits.resume_changes;
        let private = resumable.map(|_| (live.shown_copy(), changes.clone().replay_at_most(most)));
        let queue = sub.shared.limits.feed_queue;
        // The result's task follows the feed with this decision's key, rules and view (equal
        // to every other member's: that is what declaring it shared says).
        let result = sub
            .shared
            .results
            .join(key, live, changes, queue, sub.shared.scope);
        if let Some(cursor) = resumable {
            if let Some(Joined::Resumed(member)) = result.clone().join(sub.id, Some(cursor)).await?
            {
                return Ok((Source::Shared(member), guards));
            }
            // Not held any more: exactly from the change log, on a feed of its own.
            if let Some((live, changes)) = private {
                if let Some(feed) = resume_own(changes, cursor).await? {
                    return Ok((Source::own_beside(live, feed, result, cursor), guards));
                }
            }
        }
        // Guards that moved since the client's cursor are spent (the reset follows a
        // decision made after them): decide again, watching afresh from here.
        if cursor.is_some() {
            return Err(Stop::Restart);
        }
        let resets = self.out.common.resets.clone();
        let _turn = resets.acquire().await.map_err(|_| Stop::Gone)?;
        let Some(Joined::Reset(frames, member)) = result.join(sub.id, None).await? else {
            let why = Refusal::new(ErrorCode::Internal, "the shared result gave no rows");
            return Err(Stop::End(why));
        };
        if guards_moved(&mut guards) {
            return Err(Stop::Restart);
        }
        let from = (sub.id, sub.generation);
        for frame in frames.iter() {
            self.out
                .send_from(from, frame.clone())
                .await
                .map_err(|_| Stop::Gone)?;
        }
        Ok((Source::Shared(member), guards))
    }

    /// The publication's answer for this caller and these parameters.
    async fn decide(&self) -> Result<Live, Stop> {
        let sub = &self.sub;
        // The text was made from a parsed value: it parses.
        let params = serde_json::from_str(&sub.params).unwrap_or(Value::Null);
        (sub.publish)(sub.caller.clone(), params)
            .await
            .map_err(Stop::End)
    }
}

/// An open subscription, followed by its connection's driver: its result's feed (or shared
/// result) and guards.
pub(crate) struct Following<I> {
    sub: Subscription<I>,
    source: Source,
    guards: Vec<Feed>,
    /// Why it stops (a guard moved, its feed failed or ended), seen by `poll_ready`.
    stop: Option<Stop>,
    /// It sent within its connection's window: while that is open, its next changes wait
    /// for the window's end.
    pub(crate) held: bool,
}

/// Where a followed subscription's changes come from.
pub(crate) enum Source {
    /// A feed of its own (boxed: a shared result's member is much smaller).
    Own(Box<OwnFeed>),
    /// A shared result's batches, as text.
    Shared(Member),
}

/// A subscription's own feed, and how its rows are shown.
pub(crate) struct OwnFeed {
    live: Live,
    feed: Feed,
    /// The first change of the next frame, read by `poll_ready`.
    first: Option<remodel::Change>,
    /// The shared result it resumed beside (on a feed of its own, since the result did not
    /// hold what it missed, or its cursor was inside one of the result's batches): joined
    /// when one of the result's batches ends where this feed's last frame did.
    rejoin: Option<Arc<Handle>>,
    /// Where its client stands: the cursor it resumed from, then its last frame's.
    sent: Option<Cursor>,
}

impl Source {
    fn own(live: Live, feed: Feed) -> Self {
        Source::Own(Box::new(OwnFeed {
            live,
            feed,
            first: None,
            rejoin: None,
            sent: None,
        }))
    }

    /// A feed of its own, resumed after `cursor`, beside the shared `result`, which it joins
    /// once it can (see [`OwnFeed::rejoin`]).
    fn own_beside(live: Live, feed: Feed, result: Arc<Handle>, cursor: Cursor) -> Self {
        Source::Own(Box::new(OwnFeed {
            live,
            feed,
            first: None,
            rejoin: Some(result),
            sent: Some(cursor),
        }))
    }
}

/// `changes` resumed after `cursor` on a feed of its own; `None` when it cannot be (the
/// cursor expired or is from another database, or the feed cannot resume: top-N, aggregates,
/// joins), which the caller answers with the whole result, read afresh.
async fn resume_own(changes: Changes, cursor: Cursor) -> Result<Option<Feed>, Stop> {
    match changes.resume_from(cursor).await {
        Ok(feed) => Ok(Some(feed)),
        Err(e @ (Error::NoSuchTable(_) | Error::Closed)) => Err(Stop::End(refusal(&e))),
        Err(_) => Ok(None),
    }
}

/// What a followed subscription has for its driver.
pub(crate) enum Step {
    /// Nothing to send now.
    Idle,
    /// Frames to write.
    Frames(Vec<Message>),
    Stop(Stop),
}

impl<I: Clone + Send + Sync + 'static> Following<I> {
    /// Its (id, generation).
    pub(crate) fn from(&self) -> (u32, u64) {
        (self.sub.id, self.sub.generation)
    }

    /// Whether it has something to do (a guard moved, or its feed has an item): registers
    /// `cx` with its guards and feed otherwise. Once it has, it reads nothing more until
    /// it is stepped (its feed holds what comes, and wakes no one).
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> bool {
        if self.pending() {
            return false;
        }
        // Any item of a guard (a change, or an error such as its table's drop) means: decide
        // again; `step` sees it (`guards_moved` polls each guard again).
        for guard in &mut self.guards {
            if let Poll::Ready(item) = guard.poll_next_unpin(cx) {
                // The item itself is spent: what matters is that it came.
                drop(item);
                self.stop = Some(Stop::Restart);
                return true;
            }
        }
        match &mut self.source {
            Source::Own(own) => match own.feed.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(change))) => own.first = Some(change),
                Poll::Ready(Some(Err(e))) => self.stop = Some(stop_for(&e)),
                Poll::Ready(None) => self.stop = Some(feed_ended()),
                Poll::Pending => return false,
            },
            Source::Shared(member) => return member.poll(cx),
        }
        true
    }

    /// Whether it has an item or a stop waiting to be stepped.
    pub(crate) fn pending(&self) -> bool {
        self.stop.is_some()
            || match &self.source {
                Source::Own(own) => own.first.is_some(),
                Source::Shared(member) => member.has_news(),
            }
    }

    /// Whether it has a change (not a stop) waiting to be stepped.
    pub(crate) fn has_change(&self) -> bool {
        self.stop.is_none()
            && match &self.source {
                Source::Own(own) => own.first.is_some(),
                Source::Shared(member) => member.has_change(),
            }
    }

    /// Gathers what its feed has ready into frames (the connection's window decides when).
    /// Before each change it takes and before the frame, it looks at the guards: a change to
    /// what the publication decided with stops it, and what the feed had after that change
    /// is never sent under the old decision.
    pub(crate) fn step(&mut self) -> Step {
        if let Some(stop) = self.stop.take() {
            return Step::Stop(stop);
        }
        let OwnFeed {
            live,
            feed,
            first,
            rejoin,
            sent,
        } = match &mut self.source {
            Source::Own(own) => &mut **own,
            Source::Shared(member) => {
                if !member.has_news() {
                    return Step::Idle;
                }
                let taken = member.take(self.sub.id);
                // After the batches are taken: a guard change committed before any change in
                // them has reached its guard by now (see `guards_moved`).
                if guards_moved(&mut self.guards) {
                    return Step::Stop(Stop::Restart);
                }
                return match taken {
                    Ok(frames) if frames.is_empty() => Step::Idle,
                    Ok(frames) => Step::Frames(frames),
                    Err(stop) => Step::Stop(stop),
                };
            }
        };
        let Some(first) = first.take() else {
            return Step::Idle;
        };
        // Back to the shared result it resumed beside when one of the result's batches ends
        // where its client stands: the result's later batches hold exactly what the client
        // lacks, the change just read included (dropped here). Tried when a change comes,
        // when the result has most likely read past where the client stands (right after a
        // frame of its own, the result may not have read that far: a batch of it that ends
        // later may begin earlier, and would send rows the client has).
        if let (Some(result), Some(at)) = (rejoin.as_ref(), *sent) {
            if let Some(member) = result.member_after(at) {
                drop(first);
                self.source = Source::Shared(member);
                return Step::Idle;
            }
        }
        let guards = &mut self.guards;
        let batch = match gather(feed, Some(Ok(first)), live, || guards_moved(guards)) {
            Ok(batch) => batch,
            Err(stop) => return Step::Stop(stop),
        };
        if guards_moved(&mut self.guards) {
            return Step::Stop(Stop::Restart);
        }
        if batch.rows.is_empty() {
            return Step::Idle;
        }
        // A result that ended has no successor to find from here: the feed of its own stays.
        if rejoin.as_ref().is_some_and(|r| r.ended()) {
            *rejoin = None;
        }
        if batch.cursor.is_some() {
            *sent = batch.cursor;
        }
        let rows = text::row_texts(batch.rows.into_values());
        let cursor = batch
            .cursor
            .map(|c| text::cursor_text(c, self.sub.shared.scope));
        let frames = text::change_frames(self.sub.id, &text::parts_of(&rows), cursor.as_deref());
        Step::Frames(frames)
    }

    /// Opens it again (a guard changed, its feed overflowed), while its connection lives.
    pub(crate) fn restart(self, inbox: &Inbox<I>) {
        if let Some(out) = inbox.outbox() {
            self.sub.reopen(out, None);
        }
    }

    /// Its `end` frame (it ended by itself: the client may reuse its id on it).
    pub(crate) fn end(self, inbox: &Inbox<I>, why: Refusal) -> Message {
        // Sent by the driver now: forgotten at once.
        inbox.common.retire(self.from());
        ServerFrame::End {
            sub: self.sub.id,
            error: why,
        }
        .message()
    }
}

/// The initial rows of `feed` (opened with its initial rows and state markers) as `live`
/// shows them, read up to the marker that says they are all there (or the feed's end).
pub(crate) async fn initial_rows(
    feed: &mut Feed,
    live: &Live,
) -> Result<Vec<(Value, Shown)>, Stop> {
    let mut rows = Vec::new();
    while let Some(item) = feed.next().await {
        let change = item.map_err(|e| stop_for(&e))?;
        match change.kind() {
            ChangeKind::Initial => {
                if let Some(row) = live.visible(&change).map_err(Stop::End)? {
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
    Ok(rows)
}

/// The net effect of `first` and the changes `feed` has ready after it (at most
/// [`MOST_PER_FRAME`]). `moved` is asked before each change is taken: when it says so, the
/// gathering stops, to restart (see [`guards_moved`]).
pub(crate) fn gather(
    feed: &mut Feed,
    first: Option<remodel::Result<remodel::Change>>,
    live: &Live,
    mut moved: impl FnMut() -> bool,
) -> Result<Batch, Stop> {
    let mut batch = Batch::default();
    let mut item = first;
    loop {
        if moved() {
            return Err(Stop::Restart);
        }
        match item {
            None => return Err(feed_ended()),
            Some(Err(e)) => return Err(stop_for(&e)),
            Some(Ok(change)) => batch.add(live, &change).map_err(Stop::End)?,
        }
        if batch.len >= MOST_PER_FRAME {
            // Cut short: more is ready. A squashing feed hands its rows over in no order of
            // their cursors, so the greatest cursor taken so far may pass rows still queued:
            // only its batch that took everything ready gives the client a cursor to resume
            // from (`Feed::in_cursor_order`). (A frame without one leaves the client's as it
            // was.)
            if !feed.in_cursor_order() {
                batch.cursor = None;
            }
            return Ok(batch);
        }
        match feed.next().now_or_never() {
            Some(next) => item = next,
            None => return Ok(batch),
        }
    }
}

/// Whether a guard has an item ready (a change, or its end).
///
/// Each guard is polled itself (not only those whose waker fired): a writer wakes a feed's
/// consumer after the commit, so a guard can hold a change its waker has not announced yet.
fn guards_moved(guards: &mut [Feed]) -> bool {
    guards.iter_mut().any(|g| g.next().now_or_never().is_some())
}

/// A feed that ends ends its subscription.
fn feed_ended() -> Stop {
    Stop::End(Refusal::new(ErrorCode::Aborted, "the feed ended"))
}

/// What a feed's error item means for the subscription.
pub(crate) fn stop_for(e: &Error) -> Stop {
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

#[cfg(test)]
mod tests {
    use super::*;
    use remodel::{json, ChangeLogRetention, Config};

    /// A squashing feed hands rows over in no order of their cursors: a batch cut short
    /// must not give a cursor past rows it left queued (resumed from, it would skip them).
    #[tokio::test]
    async fn a_cut_batch_of_a_squashing_feed_gives_no_cursor_past_rows_it_left() {
        let db = Config::temporary()
            .change_log(ChangeLogRetention::default())
            .open()
            .await
            .unwrap();
        db.create_table("t").await.unwrap();
        let t = db.table("t");
        t.insert(json!({"id": "first"})).await.unwrap();
        let mut feed = t.changes().squash(true).await.unwrap();
        // The client's cursor before the burst: a frame without one leaves it so.
        let before = db.position();
        let rows = MOST_PER_FRAME as u64 + 1000;
        t.insert_many((0..rows).map(|i| json!({"id": i})))
            .await
            .unwrap();
        // Row 0 changes again: its queued item (first in the queue) takes the later cursor.
        t.get(0).update(json!({"v": 1})).await.unwrap();
        let live = Live::new(t.changes());
        let first = feed.next().await;
        let Ok(batch) = gather(&mut feed, first, &live, || false) else {
            panic!("the feed stopped");
        };
        assert_eq!(batch.len, MOST_PER_FRAME, "cut short");
        let mut seen: std::collections::HashSet<u64> = batch
            .rows
            .into_values()
            .filter_map(|(k, _)| k.as_u64())
            .collect();
        let cursor = batch.cursor.unwrap_or(before);
        let mut resumed = t.changes().resume_from(cursor).await.expect("resumes");
        while let Ok(Some(Ok(c))) =
            tokio::time::timeout(std::time::Duration::from_millis(300), resumed.next()).await
        {
            seen.extend(c.new_val().and_then(|v| v["id"].as_u64()));
        }
        let missed = (0..rows).filter(|i| !seen.contains(i)).count();
        assert_eq!(missed, 0, "rows neither in the batch nor after its cursor");
    }
}
