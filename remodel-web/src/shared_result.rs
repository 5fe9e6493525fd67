//! One computation per distinct result: the subscriptions of a [`Live::shared`] result
//! (same publication, same parameters, same `shared_by` part) follow one feed.
//!
//! A shared result is a task that reads the feed once, applies the key, rules and view,
//! keeps the result's rows as JSON text, and writes each run of changes it reads as a
//! numbered **batch**: the rows' text (in parts of at most 1 KB when it is over 2 KB), and
//! the cursor after them. Its members (one per subscription, followed by the connection's driver like an
//! unshared subscription) each hold the number of the last batch they sent; a member
//! with batches to send builds their frames from the text (frames for the same
//! subscription id are built once per batch and shared, as most pages number their
//! subscriptions alike), so a change costs each subscriber one frame's write, not a feed's
//! item, a rule's check and a row's serialisation.
//!
//! - **Joining.** A new member waits until the result has read its initial rows, then gets
//!   the rows as held (one `reset`, its text made once per batch number) and follows from
//!   that batch. One that resumes from a cursor follows from the first batch after it when
//!   the result still holds every batch since; otherwise it resumes on a feed of its own
//!   (exactly, from the change log) or, failing that, is decided again and gets the rows
//!   as held. One that
//!   resumed on a feed of its own joins the result after the first frame it sends that the
//!   result's kept batches go on from (after a server-wide reconnect, every page resumes on
//!   its own feed: at the first change they are all members again).
//! - **Falling behind.** The result keeps its latest batches (as many as a subscription's
//!   own feed holds changes, [`crate::Limits::feed_queue`], and at most [`KEPT_BYTES`] of
//!   rows' text); a member whose next batch is gone restarts (its client gets the whole
//!   result again), as an unshared subscription whose feed overflowed. A member never holds
//!   the result up: the result's task reads its feed as changes come.
//! - **Ending.** When its feed fails or ends (its table dropped, or the task's own feed
//!   overflowed), every member stops the way an unshared subscription would (ends with the
//!   refusal, or restarts); later subscribers start a new result. When its last member goes,
//!   the task stops and its feed is dropped.

use crate::live::Live;
use crate::subscription::{gather, initial_rows, stop_for, Stop};
use crate::text::{self, RowText};
use crate::{lock, ErrorCode, Refusal};
use axum::extract::ws::Message;
use futures::{FutureExt, StreamExt};
use remodel::{Changes, Cursor};
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use tokio::task::AbortHandle;

/// The most bytes of text the kept batches hold (the newest batch is kept whatever its size).
pub(crate) const KEPT_BYTES: usize = 1024 * 1024;

/// The most subscription ids a batch keeps its frames for (each a copy of its text, on top
/// of [`KEPT_BYTES`], made only for ids that members use).
const FRAME_COPIES: usize = 4;

/// A batch's or reset's frames for one subscription id.
type Frames = Arc<[Message]>;

/// Which result: the publication (its function's address), the parameters' text, the part.
pub(crate) type ShareKey = (usize, Box<str>, Box<str>);

/// The shared results of a server, by key.
#[derive(Default)]
pub(crate) struct Registry {
    results: Mutex<HashMap<ShareKey, Weak<Handle>>>,
}

impl Registry {
    /// The result for `key` (a new one, following `changes` with `live`'s key, rules and
    /// view, when none is running), and a member of it that has not joined yet.
    pub(crate) fn join(
        self: &Arc<Self>,
        key: ShareKey,
        live: Live,
        changes: Changes,
        queue: usize,
        scope: u64,
    ) -> Arc<Handle> {
        // An ended result's handle, dropped after the lock (if it is the last one, its drop
        // takes the lock).
        let mut _ended = None;
        let mut results = lock(&self.results);
        if let Some(handle) = results.get(&key).and_then(Weak::upgrade) {
            if !handle.inner.ended.load(Ordering::Acquire) {
                return handle;
            }
            _ended = Some(handle);
        }
        let inner = Arc::new(Inner::new(&live, queue.max(1), scope));
        // The result's task reads its feed as changes come; a larger queue than a
        // subscription's own absorbs a moment without a worker (its overflow restarts every
        // member).
        let changes = changes.queue_size(queue.saturating_mul(4));
        let task = tokio::spawn(run(inner.clone(), live, changes));
        let handle = Arc::new(Handle {
            inner,
            task: task.abort_handle(),
            key: key.clone(),
            registry: Arc::downgrade(self),
        });
        results.insert(key, Arc::downgrade(&handle));
        handle
    }

    /// How many shared results are running.
    pub(crate) fn len(&self) -> usize {
        lock(&self.results).len()
    }
}

/// A shared result, held by its members; the last one to go stops its task.
pub(crate) struct Handle {
    inner: Arc<Inner>,
    task: AbortHandle,
    key: ShareKey,
    registry: Weak<Registry>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(registry) = self.registry.upgrade() {
            let mut results = lock(&registry.results);
            // A later result of the same key may have taken the entry.
            if results
                .get(&self.key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), self))
            {
                results.remove(&self.key);
            }
        }
    }
}

/// What the result's task and its members share.
struct Inner {
    /// The number of the newest batch (0: the initial rows, none yet).
    seq: AtomicU64,
    /// The feed ended or failed: members stop ([`State::ending`] says how).
    ended: AtomicBool,
    /// The initial rows are read (or it ended first).
    ready: tokio::sync::watch::Sender<bool>,
    state: Mutex<State>,
    /// The drivers of members waiting for the next batch (each once: see [`Member::poll`]).
    waiting: Mutex<Waiting>,
    /// The order's JSON text, for resets.
    order: Box<str>,
    /// The most batches it keeps: as many as a subscription's own feed holds changes, so
    /// that a member that reads, held by its connection's window, is never further behind
    /// than an unshared subscription could be.
    kept_batches: usize,
    /// The waiting list's round (see [`Waiting`]), readable without its lock.
    round: AtomicU64,
    /// The database's identity, in the cursors it gives ([`text::cursor_text`]).
    scope: u64,
}

/// The wakers of the members waiting for the next batch: emptied (all woken) by each batch
/// and by the end, each emptying a new `round`. A member's entry is its slot in `wakers`
/// and the round it was left in; a member that goes clears its slot, so that a result that
/// stays quiet keeps no waker of a member long gone.
#[derive(Default)]
struct Waiting {
    round: u64,
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Waiting {
    fn take(&mut self, round: &AtomicU64) -> Vec<Option<Waker>> {
        self.round += 1;
        round.store(self.round, Ordering::Release);
        self.free.clear();
        // As many come back for the next batch: room for them, not regrown one by one.
        let room = Vec::with_capacity(self.wakers.len());
        std::mem::replace(&mut self.wakers, room)
    }
}

struct State {
    /// The rows: each key's JSON text (keys equal as values are written alike: see
    /// [`crate::live::canonical_key`]) and its row's.
    rows: HashMap<Arc<str>, Arc<str>>,
    /// Where the rows stand (`None`: the feed cannot resume).
    cursor: Option<Cursor>,
    /// The latest batches, the first numbered `first`.
    kept: VecDeque<Arc<SharedBatch>>,
    first: u64,
    /// Where the rows stood before the first kept batch (`None`: unknown, or the feed cannot
    /// resume).
    base: Option<Cursor>,
    kept_bytes: usize,
    /// The reset frames of the rows as they stand at batch number `.0`, by subscription id.
    resets: Option<(u64, Vec<(u32, Frames)>)>,
    /// Why it ended: what each member does (restart, or end with the refusal).
    ending: Option<Stop>,
}

/// One run of changes, as text.
struct SharedBatch {
    /// The rows' JSON text (`[[key,row],…]`), cut in parts ([`text::parts`]).
    parts: Vec<String>,
    /// Where the result stands after it.
    cursor: Option<Cursor>,
    cursor_text: Option<String>,
    bytes: usize,
    /// Its frames, by the subscription id they were built for.
    frames: Mutex<Vec<(u32, Frames)>>,
}

impl SharedBatch {
    /// The batch's frames for subscription `sub` (built once per id, for the first
    /// [`FRAME_COPIES`] ids).
    fn frames(&self, sub: u32) -> Frames {
        if let Some((_, f)) = lock(&self.frames).iter().find(|(id, _)| *id == sub) {
            return f.clone();
        }
        let built: Frames =
            text::change_frames(sub, &self.parts, self.cursor_text.as_deref()).into();
        // Pages number their subscriptions alike: a few ids cover most members.
        let mut frames = lock(&self.frames);
        if frames.len() < FRAME_COPIES && frames.iter().all(|(id, _)| *id != sub) {
            frames.push((sub, built.clone()));
        }
        built
    }
}

impl Inner {
    fn new(live: &Live, kept_batches: usize, scope: u64) -> Self {
        Inner {
            kept_batches,
            scope,
            round: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            ready: tokio::sync::watch::channel(false).0,
            state: Mutex::new(State {
                rows: HashMap::new(),
                cursor: None,
                kept: VecDeque::new(),
                first: 1,
                base: None,
                kept_bytes: 0,
                resets: None,
                ending: None,
            }),
            waiting: Mutex::new(Waiting::default()),
            order: serde_json::to_string(&live.order)
                .unwrap_or_else(|_| "[]".into())
                .into(),
        }
    }

    /// Adds a batch and wakes the members waiting for it.
    fn publish(&self, batch: SharedBatch, changed: Vec<RowText>) {
        {
            let mut state = lock(&self.state);
            for row in changed {
                match row.row {
                    Some(text) => state.rows.insert(row.key, text),
                    None => state.rows.remove(&row.key),
                };
            }
            if batch.cursor.is_some() {
                state.cursor = batch.cursor;
            }
            state.kept_bytes += batch.bytes;
            state.kept.push_back(Arc::new(batch));
            while state.kept.len() > 1
                && (state.kept.len() > self.kept_batches || state.kept_bytes > KEPT_BYTES)
            {
                if let Some(old) = state.kept.pop_front() {
                    state.kept_bytes -= old.bytes;
                    state.first += 1;
                    state.base = old.cursor;
                }
            }
            // Reset frames are of the rows as they stood: none is of these.
            state.resets = None;
            let seq = state.first + state.kept.len() as u64 - 1;
            // The number and the wakers change together (see `Member::poll`).
            let waiting = {
                let mut waiting = lock(&self.waiting);
                self.seq.store(seq, Ordering::Release);
                waiting.take(&self.round)
            };
            drop(state);
            wake(waiting);
        }
    }

    fn end(&self, ending: Stop) {
        lock(&self.state).ending.get_or_insert(ending);
        let waiting = {
            let mut waiting = lock(&self.waiting);
            self.ended.store(true, Ordering::Release);
            waiting.take(&self.round)
        };
        self.ready.send_replace(true);
        wake(waiting);
    }
}

fn wake(wakers: Vec<Option<Waker>>) {
    for waker in wakers.into_iter().flatten() {
        waker.wake();
    }
}

/// Follows the feed for the result's members, until it fails or ends (or the last member
/// goes, which aborts it).
async fn run(inner: Arc<Inner>, live: Live, changes: Changes) {
    let ending = match AssertUnwindSafe(follow(&inner, &live, changes))
        .catch_unwind()
        .await
    {
        Ok(ending) => ending,
        // A rule, view or key that panics ends the result's subscriptions.
        Err(_) => Stop::End(Refusal::new(ErrorCode::Internal, "the publication failed")),
    };
    inner.end(ending);
}

async fn follow(inner: &Inner, live: &Live, changes: Changes) -> Stop {
    let mut feed = match changes.include_initial(true).include_states(true).await {
        Ok(feed) => feed,
        Err(e) => return stop_for(&e),
    };
    let initial = match initial_rows(&mut feed, live).await {
        Ok(rows) => rows.into_iter().map(|(key, row)| (key, Some(row))),
        Err(stop) => return stop,
    };
    let initial = text::row_texts(initial);
    {
        let mut state = lock(&inner.state);
        for row in initial {
            if let Some(text) = row.row {
                state.rows.insert(row.key, text);
            }
        }
        state.cursor = feed.snapshot_cursor();
        state.base = state.cursor;
    }
    inner.ready.send_replace(true);
    loop {
        let first = feed.next().await;
        let batch = match gather(&mut feed, first, live, || false) {
            Ok(batch) => batch,
            Err(stop) => return stop,
        };
        if !batch.rows.is_empty() {
            let cursor = batch.cursor;
            let changed = text::row_texts(batch.rows.into_values());
            let parts = text::parts_of(&changed);
            let bytes = parts.iter().map(String::len).sum::<usize>();
            let shared = SharedBatch {
                parts,
                cursor,
                cursor_text: cursor.map(|c| text::cursor_text(c, inner.scope)),
                bytes,
                frames: Mutex::new(Vec::new()),
            };
            inner.publish(shared, changed);
        }
        // Other tasks of this thread (the members' drivers) run between batches.
        tokio::task::consume_budget().await;
    }
}

/// A subscription following a shared result: the number of the last batch it sent.
pub(crate) struct Member {
    handle: Arc<Handle>,
    seen: u64,
    /// Where its driver's waker is in the waiting list, and in which round (see [`Waiting`]):
    /// it stays there until the round ends, so it is left once a round.
    slot: Option<(usize, u64)>,
}

/// How a member starts.
pub(crate) enum Joined {
    /// Its reset frames, and the member following from there.
    Reset(Frames, Member),
    /// The member following from the first batch after the cursor it resumed from.
    Resumed(Member),
}

impl Handle {
    /// Waits for the initial rows, then joins: from the first batch after `cursor` when
    /// every batch since is kept, else with the rows as they stand (`None` with a cursor
    /// that cannot be followed from: the caller resumes on a feed of its own, or asks again
    /// without one). A result that ended gives its members' stop.
    pub(crate) async fn join(
        self: Arc<Self>,
        sub: u32,
        cursor: Option<Cursor>,
    ) -> Result<Option<Joined>, Stop> {
        let mut ready = self.inner.ready.subscribe();
        // The sender lives in `inner`, which this handle holds.
        let _ = ready.wait_for(|r| *r).await;
        let (seq, rows, cursor_now) = {
            let state = lock(&self.inner.state);
            if let Some(ending) = &state.ending {
                return Err(ending.clone());
            }
            let seq = state.first + state.kept.len() as u64 - 1;
            if let Some(cursor) = cursor {
                let seen = resume_point(&state, cursor);
                drop(state);
                return Ok(seen.map(|seen| Joined::Resumed(self.member(seen))));
            }
            if let Some(frames) = cached_reset(&state, seq, sub) {
                drop(state);
                return Ok(Some(Joined::Reset(frames, self.member(seq))));
            }
            // The rows' text is shared: copied out, the frames are written without the lock.
            let rows: Vec<(Arc<str>, Arc<str>)> = state
                .rows
                .iter()
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect();
            (seq, rows, state.cursor)
        };
        let cursor_now = cursor_now.map(|c| text::cursor_text(c, self.inner.scope));
        let frames = reset_frames(&rows, &self.inner.order, cursor_now.as_deref(), sub);
        let mut state = lock(&self.inner.state);
        // Made for the rows as they stood at `seq`: kept only if they still do.
        let current = seq == state.first + state.kept.len() as u64 - 1;
        match &mut state.resets {
            Some((at, resets)) if *at == seq => {
                if resets.len() < FRAME_COPIES && resets.iter().all(|(id, _)| *id != sub) {
                    resets.push((sub, frames.clone()));
                }
            }
            resets => {
                if current {
                    *resets = Some((seq, vec![(sub, frames.clone())]));
                }
            }
        }
        drop(state);
        Ok(Some(Joined::Reset(frames, self.member(seq))))
    }

    /// A member following from the kept batch that ends at `cursor` (where a subscription
    /// that resumed on a feed of its own stands), if there is one and every batch since is
    /// kept.
    pub(crate) fn member_after(self: &Arc<Self>, cursor: Cursor) -> Option<Member> {
        let state = lock(&self.inner.state);
        if state.ending.is_some() {
            return None;
        }
        let seen = resume_point(&state, cursor)?;
        drop(state);
        Some(self.member(seen))
    }

    /// Whether its feed ended or failed (its members stop).
    pub(crate) fn ended(&self) -> bool {
        self.inner.ended.load(Ordering::Acquire)
    }

    /// A member that has sent up to batch `seen`.
    fn member(self: &Arc<Self>, seen: u64) -> Member {
        Member {
            handle: self.clone(),
            seen,
            slot: None,
        }
    }
}

/// The number of the last batch that holds nothing after `cursor`, when every batch after
/// it is kept and holds nothing up to it: the cursor is where a kept batch ends (or where
/// the first one starts). A cursor inside a batch (where another server's batches, or a
/// feed of the subscription's own, ended) is not resumed from here: that batch would send
/// again rows of changes the client has; nor is one past where the result stands (one from
/// elsewhere, or forged; or a feed of the server's own that read further: it tries again
/// later, see `OwnFeed` in `subscription.rs`).
fn resume_point(state: &State, cursor: Cursor) -> Option<u64> {
    // A client from before what is kept misses what came between.
    if state.base? > cursor || state.cursor? < cursor {
        return None;
    }
    let mut seen = state.first - 1;
    let mut boundary = state.base;
    for batch in &state.kept {
        // A batch without a cursor (a feed that cannot resume): nothing to compare with.
        if batch.cursor? > cursor {
            break;
        }
        seen += 1;
        boundary = batch.cursor;
    }
    (boundary == Some(cursor)).then_some(seen)
}

/// The reset frames made for `sub` of the rows as they stand at batch `seq`, if any.
fn cached_reset(state: &State, seq: u64, sub: u32) -> Option<Frames> {
    let (at, resets) = state.resets.as_ref()?;
    if *at != seq {
        return None;
    }
    resets
        .iter()
        .find(|(id, _)| *id == sub)
        .map(|(_, f)| f.clone())
}

/// The reset frames of `rows` (key and row texts) for subscription `sub`.
fn reset_frames(
    rows: &[(Arc<str>, Arc<str>)],
    order: &str,
    cursor: Option<&str>,
    sub: u32,
) -> Frames {
    let parts = text::parts(rows.iter().map(|(k, r)| (&**k, Some(&**r))));
    text::reset_frames(sub, &parts, order, cursor).into()
}

impl Member {
    /// Whether it has batches to send (or the result ended); leaves `cx`'s waker with the
    /// result otherwise, once per round of the waiting list (see [`Waiting`]).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        if self.has_news() {
            return true;
        }
        let inner = &self.handle.inner;
        // Its waker is on the list of this round already: the batch that ends the round
        // wakes it (no lock for the polls of a driver woken by its other subscriptions).
        if self
            .slot
            .is_some_and(|(_, round)| round == inner.round.load(Ordering::Acquire))
        {
            return false;
        }
        // Under the list's lock the batch number cannot move: a batch after this look
        // empties the list with this waker in it.
        let mut waiting = lock(&inner.waiting);
        if self.has_news() {
            return true;
        }
        if self.slot.is_none_or(|(_, round)| round != waiting.round) {
            let waker = Some(cx.waker().clone());
            let at = match waiting.free.pop() {
                Some(at) => {
                    waiting.wakers[at] = waker;
                    at
                }
                None => {
                    waiting.wakers.push(waker);
                    waiting.wakers.len() - 1
                }
            };
            self.slot = Some((at, waiting.round));
        }
        false
    }

    /// Whether it has batches to send, or the result ended.
    pub(crate) fn has_news(&self) -> bool {
        let inner = &self.handle.inner;
        inner.seq.load(Ordering::Acquire) > self.seen || inner.ended.load(Ordering::Acquire)
    }

    /// Whether it has batches to send (not an end).
    pub(crate) fn has_change(&self) -> bool {
        let inner = &self.handle.inner;
        inner.seq.load(Ordering::Acquire) > self.seen && !inner.ended.load(Ordering::Acquire)
    }

    /// The frames of the batches after the last it sent, for subscription `sub`; a stop
    /// when the result ended, or when one of those batches is no longer kept (the member
    /// fell behind: it restarts).
    pub(crate) fn take(&mut self, sub: u32) -> Result<Vec<Message>, Stop> {
        let state = lock(&self.handle.inner.state);
        if let Some(ending) = &state.ending {
            return Err(ending.clone());
        }
        if self.seen + 1 < state.first {
            return Err(Stop::Restart);
        }
        let from = (self.seen + 1 - state.first) as usize;
        let batches: Vec<Arc<SharedBatch>> = state.kept.range(from..).cloned().collect();
        drop(state);
        self.seen += batches.len() as u64;
        let mut frames = Vec::new();
        for batch in batches {
            frames.extend(batch.frames(sub).iter().cloned());
        }
        Ok(frames)
    }
}

impl Drop for Member {
    /// A member that goes takes its waker off the list (a quiet result would keep it, and
    /// the driver's memory with it, until its next batch).
    fn drop(&mut self) {
        if let Some((at, round)) = self.slot {
            let mut waiting = lock(&self.handle.inner.waiting);
            if waiting.round == round {
                waiting.wakers[at] = None;
                waiting.free.push(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    /// A database with a table `t`, a registry, and a shared result of `t`'s rows in it.
    async fn result() -> (remodel::Database, Arc<Registry>, Arc<Handle>) {
        let db = remodel::Database::temporary().await.unwrap();
        db.create_table("t").await.unwrap();
        let registry = Arc::new(Registry::default());
        let mut live = Live::new(db.table("t").query().changes());
        let changes = match live.changes.take().map(|c| *c) {
            Some(Ok(changes)) => changes,
            _ => panic!("a feed"),
        };
        let handle = registry.join((1, "{}".into(), "".into()), live, changes, 16, 0);
        (db, registry, handle)
    }

    #[tokio::test]
    async fn members_that_go_leave_no_waker_behind_and_the_last_stops_the_result() {
        let (db, registry, handle) = result().await;
        let mut cx = Context::from_waker(noop_waker_ref());
        // A quiet result: members come, wait and go, one after the other.
        for _ in 0..100 {
            let Ok(Some(Joined::Reset(_, mut member))) = handle.clone().join(1, None).await else {
                panic!("joined with the rows")
            };
            assert!(!member.poll(&mut cx), "nothing to send");
            assert!(!member.poll(&mut cx), "left once a round");
            drop(member);
        }
        {
            let waiting = lock(&handle.inner.waiting);
            assert_eq!(waiting.wakers.iter().flatten().count(), 0);
            assert!(waiting.wakers.len() <= 1, "{} slots", waiting.wakers.len());
        }
        // A batch wakes the waiting member, which then finds it.
        let Ok(Some(Joined::Reset(_, mut member))) = handle.clone().join(1, None).await else {
            panic!("joined with the rows")
        };
        assert!(!member.poll(&mut cx));
        db.table("t")
            .insert(remodel::json!({"id": 1}))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !member.has_news() {
            assert!(std::time::Instant::now() < deadline, "the batch came");
            tokio::task::yield_now().await;
        }
        let frames = member.take(7).unwrap_or_default();
        assert_eq!(frames.len(), 1);
        assert!(matches!(&frames[0], Message::Text(t) if t.as_str().contains(r#""sub":7"#)));
        assert_eq!(registry.len(), 1);
        drop(member);
        drop(handle);
        assert_eq!(registry.len(), 0, "the last member stopped the result");
    }

    /// Waits until `member` has batches to take.
    async fn news(member: &Member) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !member.has_news() {
            assert!(std::time::Instant::now() < deadline, "a batch came");
            tokio::task::yield_now().await;
        }
    }

    /// The cursor of the change frame in `frames` (scope 0, as the registry above gives).
    fn cursor_of(frames: &[Message]) -> Cursor {
        let text = frames
            .iter()
            .find_map(|m| match m {
                Message::Text(t) => Some(t.as_str().to_owned()),
                _ => None,
            })
            .expect("a text frame");
        let start = text.find(r#""cursor":""#).expect("a cursor") + 10;
        let end = start + text[start..].find('"').expect("its end");
        text::parse_cursor(&text[start..end], 0)
            .ok()
            .flatten()
            .expect("a cursor of this database")
    }

    #[tokio::test]
    async fn a_member_from_a_feed_of_its_own_joins_only_where_a_batch_ends() {
        let (db, _registry, handle) = result().await;
        let Ok(Some(Joined::Reset(_, mut witness))) = handle.clone().join(1, None).await else {
            panic!("joined with the rows")
        };
        // Past where the result stands (a feed of its own that read further): not yet.
        let now = db.position();
        let ahead: Cursor = format!(
            "{:x}-0",
            u64::from_str_radix(now.to_string().split('-').next().unwrap(), 16).unwrap() + 2
        )
        .parse()
        .unwrap();
        assert!(handle.member_after(ahead).is_none());
        let mut ends = Vec::new();
        for v in 1..=3 {
            db.table("t")
                .insert(remodel::json!({"id": v, "v": v}))
                .await
                .unwrap();
            // Each write a batch of its own.
            news(&witness).await;
            let Ok(frames) = witness.take(1) else {
                panic!("the witness's batch")
            };
            ends.push(cursor_of(&frames));
        }
        // Inside a batch (not where one ends): not from here.
        let inside: Cursor = format!("{:x}-5", ends[1].seq()).parse().unwrap();
        assert!(handle.member_after(inside).is_none());
        // Where the second batch ends: the third only.
        let mut member = handle
            .member_after(ends[1])
            .expect("joined where a batch ends");
        news(&member).await;
        let Ok(frames) = member.take(1) else {
            panic!("a batch")
        };
        let text: Vec<&str> = frames
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text.len(), 1, "only the batch after it: {text:?}");
        assert!(text[0].contains(r#""v":3"#), "{text:?}");
    }
}
