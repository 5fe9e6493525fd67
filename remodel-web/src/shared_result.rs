//! One computation per distinct result: the subscriptions of a [`Live::shared`] result
//! (same publication, same parameters, same `shared_by` part) follow one feed.
//!
//! A shared result is a task that reads the feed once, applies the key, rules and view,
//! keeps the result's rows as JSON text, and writes each run of changes it reads as a
//! numbered **batch**: the rows' text, cut in parts of at most 1 KB, and the cursor after
//! them. Its members (one per subscription, followed by the connection's driver like an
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
//!   (exactly, from the change log) or, failing that, gets the rows as held.
//! - **Falling behind.** The result keeps its latest batches ([`KEPT_BATCHES`],
//!   [`KEPT_BYTES`]); a member whose next batch is gone restarts (its client gets the whole
//!   result again), as an unshared subscription whose feed overflowed. A member never holds
//!   the result up: the result's task reads its feed as changes come.
//! - **Ending.** When its feed fails or ends (its table dropped, or the task's own feed
//!   overflowed), every member stops the way an unshared subscription would (ends with the
//!   refusal, or restarts); later subscribers start a new result. When its last member goes,
//!   the task stops and its feed is dropped.

use crate::live::{Live, Shown};
use crate::net_effect::Batch;
use crate::subscription::Stop;
use crate::{ErrorCode, Refusal};
use axum::extract::ws::Message;
use futures::{FutureExt, StreamExt};
use remodel::{ChangeKind, Changes, Cursor, Error};
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Waker};
use tokio::task::AbortHandle;

/// The most batches a result keeps for members that are behind.
pub(crate) const KEPT_BATCHES: usize = 256;

/// The most bytes of text the kept batches hold (the newest batch is kept whatever its size).
pub(crate) const KEPT_BYTES: usize = 256 * 1024;

/// The most changes one batch gathers.
const MOST_PER_BATCH: usize = 4096;

/// The most JSON text of rows in one frame's part (at least one row).
const PART_BYTES: usize = 1024;

/// Rows under this much text go in one reset frame.
const WHOLE_BYTES: usize = 2048 - 128;

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
    ) -> Arc<Handle> {
        let mut results = lock(&self.results);
        if let Some(handle) = results.get(&key).and_then(Weak::upgrade) {
            if !handle.inner.ended.load(Ordering::Acquire) {
                return handle;
            }
        }
        let inner = Arc::new(Inner::new(&live));
        let task = tokio::spawn(run(inner.clone(), live, changes.queue_size(queue)));
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
    waiting: Mutex<Vec<Waker>>,
    /// The order's JSON text, for resets.
    order: Box<str>,
}

struct State {
    /// The rows: each key's JSON text and its row's.
    rows: HashMap<Box<str>, Arc<str>>,
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
    /// Why it ended.
    ending: Option<Ending>,
}

#[derive(Clone)]
enum Ending {
    Restart,
    End(Refusal),
}

impl Ending {
    fn stop(&self) -> Stop {
        match self {
            Ending::Restart => Stop::Restart,
            Ending::End(why) => Stop::End(why.clone()),
        }
    }
}

/// One run of changes, as text.
struct SharedBatch {
    /// The rows' JSON text (`[[key,row],…]`), in parts of at most [`PART_BYTES`].
    parts: Vec<String>,
    /// Where the result stands after it.
    cursor: Option<Cursor>,
    cursor_text: Option<String>,
    bytes: usize,
    /// Its frames, by the subscription id they were built for.
    frames: Mutex<Vec<(u32, Frames)>>,
}

impl SharedBatch {
    /// The batch's frames for subscription `sub` (built once per id).
    fn frames(&self, sub: u32) -> Frames {
        let mut frames = lock(&self.frames);
        if let Some((_, f)) = frames.iter().find(|(id, _)| *id == sub) {
            return f.clone();
        }
        let last = self.parts.len().saturating_sub(1);
        let built: Frames = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, rows)| {
                let (cursor, more) = match i == last {
                    true => (self.cursor_text.as_deref(), false),
                    false => (None, true),
                };
                let text = crate::text::change_frame_of(sub, rows, cursor, more);
                Message::Text(text.into())
            })
            .collect();
        // Pages number their subscriptions alike: a few ids cover most members.
        if frames.len() < 8 {
            frames.push((sub, built.clone()));
        }
        built
    }
}

impl Inner {
    fn new(live: &Live) -> Self {
        Inner {
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
            waiting: Mutex::new(Vec::new()),
            order: serde_json::to_string(&live.order)
                .unwrap_or_else(|_| "[]".into())
                .into(),
        }
    }

    /// Adds a batch and wakes the members waiting for it.
    fn publish(&self, batch: SharedBatch, changed: Vec<(Box<str>, Option<Arc<str>>)>) {
        {
            let mut state = lock(&self.state);
            for (key, row) in changed {
                match row {
                    Some(row) => state.rows.insert(key, row),
                    None => state.rows.remove(&key),
                };
            }
            if batch.cursor.is_some() {
                state.cursor = batch.cursor;
            }
            state.kept_bytes += batch.bytes;
            state.kept.push_back(Arc::new(batch));
            while state.kept.len() > 1
                && (state.kept.len() > KEPT_BATCHES || state.kept_bytes > KEPT_BYTES)
            {
                if let Some(old) = state.kept.pop_front() {
                    state.kept_bytes -= old.bytes;
                    state.first += 1;
                    state.base = old.cursor;
                }
            }
            let seq = state.first + state.kept.len() as u64 - 1;
            self.seq.store(seq, Ordering::Release);
        }
        self.wake();
    }

    fn wake(&self) {
        let waiting = std::mem::take(&mut *lock(&self.waiting));
        for waker in waiting {
            waker.wake();
        }
    }

    fn end(&self, ending: Ending) {
        lock(&self.state).ending.get_or_insert(ending);
        self.ended.store(true, Ordering::Release);
        self.ready.send_replace(true);
        self.wake();
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
        Err(_) => Ending::End(Refusal::new(ErrorCode::Internal, "the publication failed")),
    };
    inner.end(ending);
}

async fn follow(inner: &Inner, live: &Live, changes: Changes) -> Ending {
    let mut feed = match changes.include_initial(true).include_states(true).await {
        Ok(feed) => feed,
        Err(e) => return ending_for(&e),
    };
    let mut initial = Vec::new();
    loop {
        let change = match feed.next().await {
            Some(Ok(change)) => change,
            Some(Err(e)) => return ending_for(&e),
            None => return feed_ended(),
        };
        match change.kind() {
            ChangeKind::Initial => match live.visible(&change) {
                Ok(Some((key, row))) => initial.push((key, Some(row))),
                Ok(None) => {}
                Err(why) => return Ending::End(why),
            },
            ChangeKind::State if change.state() == Some(remodel::FeedState::Ready) => break,
            ChangeKind::State => {}
            _ => {
                let why = "the feed changed before its initial rows were read";
                return Ending::End(Refusal::new(ErrorCode::Internal, why));
            }
        }
    }
    {
        let mut state = lock(&inner.state);
        for (key, row) in texts(initial) {
            if let Some(row) = row {
                state.rows.insert(key, row);
            }
        }
        state.cursor = feed.snapshot_cursor();
        state.base = state.cursor;
    }
    inner.ready.send_replace(true);
    loop {
        let mut batch = Batch::default();
        let mut item = feed.next().await;
        loop {
            match item {
                None => return feed_ended(),
                Some(Err(e)) => return ending_for(&e),
                Some(Ok(change)) => {
                    if let Err(why) = batch.add(live, &change) {
                        return Ending::End(why);
                    }
                }
            }
            if batch.len >= MOST_PER_BATCH {
                break;
            }
            match feed.next().now_or_never() {
                Some(next) => item = next,
                None => break,
            }
        }
        if !batch.rows.is_empty() {
            let cursor = batch.cursor;
            let changed = texts(batch.rows.into_values().collect());
            let parts = parts(changed.iter().map(|(k, r)| (&**k, r.as_deref())));
            let bytes = parts.iter().map(String::len).sum();
            let shared = SharedBatch {
                parts,
                cursor,
                cursor_text: cursor.map(|c| c.to_string()),
                bytes,
                frames: Mutex::new(Vec::new()),
            };
            inner.publish(shared, changed);
        }
        // Other tasks of this thread (the members' drivers) run between batches.
        tokio::task::consume_budget().await;
    }
}

/// Each row's key and shown row as JSON text.
fn texts(rows: Vec<(remodel::Value, Option<Shown>)>) -> Vec<(Box<str>, Option<Arc<str>>)> {
    rows.into_iter()
        .map(|(key, row)| {
            // Serialising JSON values cannot fail.
            let key = serde_json::to_string(&key).unwrap_or_default().into();
            let row = row.map(|r| serde_json::to_string(&r).unwrap_or_default().into());
            (key, row)
        })
        .collect()
}

/// `[[key,row],…]` texts of at most [`PART_BYTES`] each (at least one row), or one text when
/// the rows are under [`WHOLE_BYTES`] in all (`null` for a row that left).
fn parts<'a>(rows: impl Iterator<Item = (&'a str, Option<&'a str>)> + Clone) -> Vec<String> {
    let total: usize = rows
        .clone()
        .map(|(k, r)| k.len() + r.map_or(4, str::len) + 4)
        .sum();
    let most = if total < WHOLE_BYTES {
        usize::MAX
    } else {
        PART_BYTES
    };
    let mut parts = Vec::new();
    let mut part = String::from("[");
    for (key, row) in rows {
        let size = key.len() + row.map_or(4, str::len) + 4;
        if part.len() > 1 && part.len() + size > most {
            part.push(']');
            parts.push(std::mem::replace(&mut part, String::from("[")));
        }
        if part.len() > 1 {
            part.push(',');
        }
        part.push('[');
        part.push_str(key);
        part.push(',');
        part.push_str(row.unwrap_or("null"));
        part.push(']');
    }
    part.push(']');
    parts.push(part);
    parts
}

/// What a feed's error item means for the result's members.
fn ending_for(e: &Error) -> Ending {
    match e {
        Error::FeedOverflow { .. } => Ending::Restart,
        e => Ending::End(Refusal::from(e)),
    }
}

fn feed_ended() -> Ending {
    Ending::End(Refusal::new(ErrorCode::Aborted, "the feed ended"))
}

/// A subscription following a shared result: the number of the last batch it sent.
pub(crate) struct Member {
    handle: Arc<Handle>,
    seen: u64,
    /// One more than the batch number at which its driver's waker was left with the
    /// result (0: never): the waker stays there until the next batch, so it is left once.
    waiting_at: u64,
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
        let state = lock(&self.inner.state);
        if let Some(ending) = &state.ending {
            return Err(ending.stop());
        }
        let seq = state.first + state.kept.len() as u64 - 1;
        if let Some(cursor) = cursor {
            return Ok(resume_point(&state, cursor).map(|seen| {
                Joined::Resumed(Member {
                    handle: self.clone(),
                    seen,
                    waiting_at: 0,
                })
            }));
        }
        let frames = reset_frames(state, &self.inner, seq, sub);
        Ok(Some(Joined::Reset(
            frames,
            Member {
                handle: self,
                seen: seq,
                waiting_at: 0,
            },
        )))
    }
}

/// The number of the last batch that holds nothing after `cursor`, when every batch after
/// it is kept.
fn resume_point(state: &State, cursor: Cursor) -> Option<u64> {
    // A client from before what is kept misses what came between.
    if state.base? > cursor {
        return None;
    }
    let mut seen = state.first - 1;
    for batch in &state.kept {
        // A batch without a cursor (a feed that cannot resume): nothing to compare with.
        if batch.cursor? > cursor {
            break;
        }
        seen += 1;
    }
    Some(seen)
}

/// The reset frames of the rows as they stand at batch `seq`, for subscription `sub` (made
/// once per batch number and id).
fn reset_frames(mut state: MutexGuard<'_, State>, inner: &Inner, seq: u64, sub: u32) -> Frames {
    if let Some((at, resets)) = &state.resets {
        if *at == seq {
            if let Some((_, f)) = resets.iter().find(|(id, _)| *id == sub) {
                return f.clone();
            }
        }
    }
    let parts = parts(state.rows.iter().map(|(k, r)| (&**k, Some(&**r))));
    let cursor = state.cursor.map(|c| c.to_string());
    let last = parts.len() - 1;
    let frames: Frames = parts
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            let text = match i {
                0 => crate::text::reset_frame_of(
                    sub,
                    rows,
                    &inner.order,
                    cursor.as_deref(),
                    last > 0,
                ),
                _ => crate::text::more_frame_of(sub, rows, i < last),
            };
            Message::Text(text.into())
        })
        .collect();
    match &mut state.resets {
        Some((at, resets)) if *at == seq => {
            if resets.len() < 8 {
                resets.push((sub, frames.clone()));
            }
        }
        resets => *resets = Some((seq, vec![(sub, frames.clone())])),
    }
    frames
}

impl Member {
    /// Whether it has batches to send (or the result ended); leaves `cx`'s waker with the
    /// result otherwise (once per batch number).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let inner = &self.handle.inner;
        if self.has_news() {
            return true;
        }
        let seq = inner.seq.load(Ordering::Acquire);
        if self.waiting_at != seq + 1 {
            lock(&inner.waiting).push(cx.waker().clone());
            self.waiting_at = seq + 1;
            // A batch published before the waker was left woke no one for it.
            return self.has_news();
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
            return Err(ending.stop());
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

/// A lock whose holder cannot leave its data half-changed (each critical section here only
/// pushes, pops and swaps): a poisoned one is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
