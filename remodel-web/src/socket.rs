//! One connection: reads the client's frames, starts and stops its subscriptions, runs its
//! method calls; its driver follows its subscriptions' feeds and writes every outgoing frame.
//!
//! Reading and driving are separate tasks, so that a client that does not read cannot stop
//! the server from reading it (and noticing it went idle), and a slow write times out
//! ([`crate::Limits::write_timeout`]) instead of holding the connection forever. Opening
//! subscriptions and calls put their frames in the bounded outgoing queue; the driver writes
//! them, and the changes of the subscriptions it follows, itself. While a write waits for the
//! client, the driver reads no feed, so the feeds (not the server's memory) absorb the
//! backlog, and overflow into a resynchronisation.
//!
//! **Coalescing.** A connection has one window (the [`crate::WebBuilder::window`]) for all
//! its subscriptions. A change of a subscription that has not sent within the open window
//! (or that finds the connection idle) goes at once, and opens the window if none is open;
//! every other subscription's pending changes go along in the same message, and each that
//! sent is then *held* until the window ends: the first change that comes for it meanwhile
//! arms the connection's timer for the window's end (once per window), and the driver reads
//! nothing more of its feed (which holds what comes, and wakes no one) until then, when what
//! every subscription gathered goes out together, and a new window opens. A window in which
//! nothing more comes costs no wake-up: the connection is idle again when it ends. A
//! subscription's change thus waits at most one window, and only when the same
//! subscription sent within it; a busy connection gets one message per window. Change
//! frames waiting for the socket together (those of one window, or of several while a
//! client reads slowly) go as one `batch` message of at most [`BATCH_BYTES`] (see
//! [`crate::protocol`]).
//!
//! (Windows that grow while a connection stays busy were tried: under the load of
//! `benches/ws_load.rs` the server's cycle through its connections is already longer than
//! the window, so they sent no fewer messages, and they would hold the last change of a
//! sustained stream, a dragged ship's final position, up to the longest window.)

use crate::outbox::{text_len, Inbox, Item, Outbox, BYTES};
use crate::protocol::{ClientFrame, Outcome, ServerFrame};
use crate::subscription::{Following, Step, Stop, Subscription};
use crate::text;
use crate::{Caller, ErrorCode, Refusal, Shared};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::SplitSink;
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// Below this much of the byte budget, the driver reads no feed (a change frame is rarely
/// larger).
const LOW: usize = BYTES / 16;

/// The most queued frames the driver takes from the queue at a time.
const BATCH: usize = 64;

/// The most text one `batch` message gathers (a frame alone may be larger): room for a
/// window's changes of a few subscriptions (each frame whole under 2 KB, larger changes in
/// parts of ~1 KB). The WebSocket layer keeps a write buffer as large as the largest
/// message it wrote, for the connection's life: a connection that was sent a full batch
/// keeps 4 KB (one that never was, its largest frame's ~2 KB).
pub(crate) const BATCH_BYTES: usize = 4096;

/// How a batch's text begins and ends (the frames in it, separated by commas, between).
const BATCH_OPEN: &str = r#"{"t":"batch","frames":["#;
const BATCH_CLOSE: &str = "]}";

/// Counts a connection as open while it lives.
struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Actions a connection may take per second: a token bucket refilled at `rate` a second,
/// holding at most `rate`.
struct Bucket {
    rate: f64,
    /// The most tokens it holds (a burst).
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        // A rate of 0 allows nothing, burst or not.
        let burst = if rate == 0 {
            0.0
        } else {
            f64::from(rate.max(burst))
        };
        Bucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A close frame's reason: at most 123 bytes (the frame's payload is 125, the code takes
/// two), cut at a character boundary.
fn close_reason(message: &str) -> String {
    let mut end = message.len().min(123);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

/// `d` after `now`; a duration beyond what the clock holds (a limit set to `Duration::MAX`
/// for "never") is a time that never comes (tokio's own timers do the same).
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// Something for the driver to do.
enum Event<I> {
    Item(Item<I>),
    /// A subscription has something to send now (it is not held by an open window).
    Ready,
    /// The connection's window ended, and a held subscription has something for it.
    Window,
    /// Done: the queue closed (or a close frame went) and everything is written, or the
    /// socket failed, or the client took nothing within the write timeout.
    End,
}

/// Frames on their way to the socket. The driver writes them as the socket takes them and
/// follows the feeds meanwhile, until they hold [`BYTES`]: a client that reads slowly for a
/// moment keeps its changes coming instead of having its feeds overflow into a reset; one
/// that does not read costs this much, then its feeds absorb the rest.
struct Outgoing {
    /// Each frame, its share of the byte budget, and whether it is a change frame (which
    /// goes out in a batch with the change frames after it).
    frames: VecDeque<(Message, Option<OwnedSemaphorePermit>, bool)>,
    bytes: usize,
    /// Frames were handed to the socket and not flushed yet.
    unflushed: bool,
    /// A close frame was handed to the socket: the end, once it is flushed.
    closing: bool,
}

impl Outgoing {
    fn push(&mut self, message: Message, permit: Option<OwnedSemaphorePermit>) {
        self.bytes += text_len(&message);
        self.frames.push_back((message, permit, false));
    }

    /// Queues a change frame (it may go in a batch with the change frames around it).
    fn push_change(&mut self, message: Message, permit: Option<OwnedSemaphorePermit>) {
        self.bytes += text_len(&message);
        self.frames.push_back((message, permit, true));
    }

    /// `first` (a change frame) and the change frames queued right after it, as many as
    /// fit in [`BATCH_BYTES`], as one `batch` message with their shares of the byte budget;
    /// `first` alone when none fits.
    fn gather(
        &mut self,
        first: Message,
        mut permit: Option<OwnedSemaphorePermit>,
    ) -> (Message, Option<OwnedSemaphorePermit>) {
        let Message::Text(text) = &first else {
            return (first, permit);
        };
        let mut size = BATCH_OPEN.len() + text.len() + BATCH_CLOSE.len();
        let mut n = 0;
        for (message, _, change) in &self.frames {
            let len = text_len(message);
            if !change || !matches!(message, Message::Text(_)) || size + 1 + len > BATCH_BYTES {
                break;
            }
            size += 1 + len;
            n += 1;
        }
        if n == 0 {
            return (first, permit);
        }
        let mut batch = String::with_capacity(size);
        batch.push_str(BATCH_OPEN);
        batch.push_str(text.as_str());
        for (message, p, _) in self.frames.drain(..n) {
            self.bytes -= text_len(&message);
            if let Message::Text(t) = &message {
                batch.push(',');
                batch.push_str(t.as_str());
            }
            permit = match (permit, p) {
                (Some(mut a), Some(b)) => {
                    a.merge(b);
                    Some(a)
                }
                (a, b) => a.or(b),
            };
        }
        batch.push_str(BATCH_CLOSE);
        (Message::Text(batch.into()), permit)
    }

    fn idle(&self) -> bool {
        self.frames.is_empty() && !self.unflushed
    }

    /// Hands the socket what it takes now and flushes it: `Ready(true)` when it is done
    /// for good (a close frame went, or it failed), `Ready(false)` on progress.
    fn poll_write(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        cx: &mut Context<'_>,
    ) -> Poll<bool> {
        let mut progress = false;
        while !self.closing && !self.frames.is_empty() {
            match Pin::new(&mut *sink).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(true),
                Poll::Pending => break,
            }
            let Some((message, permit, change)) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= text_len(&message);
            let (message, permit) = match change {
                true => self.gather(message, permit),
                false => (message, permit),
            };
            self.closing = matches!(message, Message::Close(_));
            if Pin::new(&mut *sink).start_send(message).is_err() {
                return Poll::Ready(true);
            }
            // The frame's share of the queue's byte budget goes once it is written.
            drop(permit);
            self.unflushed = true;
            progress = true;
        }
        if self.unflushed {
            match Pin::new(&mut *sink).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    progress = true;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(true),
                Poll::Pending => {}
            }
        }
        if self.closing && !self.unflushed {
            return Poll::Ready(true);
        }
        if self.frames.is_empty() && self.frames.capacity() > 4 {
            // A burst (an initial result's frames) made it large: an idle connection keeps
            // none of that.
            self.frames = VecDeque::new();
        }
        if progress {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }
}

/// The connection's driver: writes the queued frames, and follows the feeds of the
/// connection's open subscriptions, writing their changes, until the queue closes, a close
/// frame went out, or the client takes nothing within `timeout` while frames wait.
async fn drive<I: Clone + Send + Sync + 'static>(
    mut sink: SplitSink<WebSocket, Message>,
    mut inbox: Inbox<I>,
    timeout: Duration,
    window: Duration,
) {
    let mut following: Vec<Box<Following<I>>> = Vec::new();
    // The end of the connection's window (open until then), and its timer, armed only once
    // a held subscription has something for the window's end: a window in which nothing
    // more comes costs no wake-up (an idle connection holds no timer).
    let mut window_end: Option<Instant> = None;
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut timer_armed = false;
    let mut out = Outgoing {
        frames: VecDeque::new(),
        bytes: 0,
        unflushed: false,
        closing: false,
    };
    // While frames wait: when the client must have taken something (one timer, armed
    // again rather than made again).
    let mut stall: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut armed = false;
    let mut queue_closed = false;
    loop {
        if inbox.take_closed() {
            // Unsubscribed, or the connection ends: dropping a subscription drops its feeds.
            following.retain(|f| inbox.common.current(Some(f.from())));
        }
        let event = std::future::poll_fn(|cx| {
            loop {
                match out.poll_write(&mut sink, cx) {
                    Poll::Ready(true) => return Poll::Ready(Event::End),
                    // Progress: the client has as long again.
                    Poll::Ready(false) => armed = false,
                    Poll::Pending => break,
                }
            }
            if out.idle() {
                armed = false;
                if queue_closed {
                    return Poll::Ready(Event::End);
                }
            } else {
                let timer = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if !armed {
                    timer.as_mut().reset(after(Instant::now(), timeout));
                    armed = true;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::End);
                }
            }
            // The connection's own frames (answers to the client's: pongs, errors, results)
            // are taken only while the byte budget has room: beyond it, the reader waits to
            // queue its next answer and stops reading the client, whose own socket fills, so
            // a client that sends and never reads costs the budget, not its answers.
            if !queue_closed && out.bytes < BYTES {
                match inbox.poll_next(cx) {
                    Poll::Ready(Some(item)) => return Poll::Ready(Event::Item(item)),
                    Poll::Ready(None) => queue_closed = true,
                    Poll::Pending => {}
                }
            }
            // A client that does not read: its feeds (not the server's memory) hold what
            // comes, until they overflow, once its frames hold (nearly) the byte budget.
            if out.bytes >= BYTES || inbox.common.bytes.available_permits() < LOW || out.closing {
                return Poll::Pending;
            }
            if timer_armed {
                if let Some(t) = timer.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        timer_armed = false;
                        return Poll::Ready(Event::Window);
                    }
                }
            }
            let open = window_end.is_some_and(|end| Instant::now() < end);
            // Every subscription is asked (not only up to the first with something): what
            // they all have goes together.
            let (mut now_ready, mut held_ready) = (false, false);
            for f in following.iter_mut() {
                f.poll_ready(cx);
                if f.pending() {
                    // A held one's change waits for the window's end; a guard that moved
                    // does not.
                    if open && f.held && f.has_change() {
                        held_ready = true;
                    } else {
                        now_ready = true;
                    }
                }
            }
            if now_ready {
                // What the held ones gathered goes along.
                return Poll::Ready(Event::Ready);
            }
            if held_ready && !timer_armed {
                if let Some(end) = window_end {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(end)));
                    t.as_mut().reset(end);
                    timer_armed = true;
                    if t.as_mut().poll(cx).is_ready() {
                        timer_armed = false;
                        return Poll::Ready(Event::Window);
                    }
                }
            }
            if queue_closed && out.idle() {
                return Poll::Ready(Event::End);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::End => break,
            Event::Item(item) => {
                let mut item = Some(item);
                // The queued items that are ready.
                while let Some(next) = item.take() {
                    match next {
                        Item::Frame(frame) if inbox.common.current(frame.from) => {
                            if let (true, Some(from)) = (frame.ends, frame.from) {
                                inbox.common.retire(from);
                            }
                            let (message, permit) = frame.into_parts();
                            out.push(message, permit);
                        }
                        Item::Frame(_) => {}
                        Item::Follow(f) => {
                            if inbox.common.current(Some(f.from())) {
                                following.push(f);
                            }
                        }
                    }
                    if out.frames.len() >= BATCH {
                        break;
                    }
                    item = inbox.ready();
                }
            }
            Event::Ready | Event::Window => {
                let now = Instant::now();
                // The window is over (its timer fired, or it ended with nothing more).
                let open = window_end.is_some_and(|end| now < end);
                let mut sent = false;
                let mut i = 0;
                while i < following.len() {
                    let f = &mut following[i];
                    let step = match std::panic::catch_unwind(AssertUnwindSafe(|| f.step())) {
                        Ok(step) => step,
                        // A rule, view or key that panics ends its subscription.
                        Err(_) => Step::Stop(Stop::End(Refusal::new(
                            ErrorCode::Internal,
                            "the publication failed",
                        ))),
                    };
                    match step {
                        Step::Idle => {
                            // Nothing at the window's end: no longer held.
                            if !open {
                                f.held = false;
                            }
                            i += 1;
                        }
                        Step::Frames(messages) => {
                            // Its next changes wait for the end of the window.
                            f.held = true;
                            // Unsubscribed meanwhile (the reader runs beside): nothing more.
                            if inbox.common.current(Some(f.from())) {
                                for m in messages {
                                    // Its share of the byte budget, as queued frames have: a
                                    // subscription restarting for a client that does not
                                    // read sends its whole result again once it reads.
                                    let size = text_len(&m).clamp(1, BYTES);
                                    let permit = u32::try_from(size).ok().and_then(|n| {
                                        inbox.common.bytes.clone().try_acquire_many_owned(n).ok()
                                    });
                                    out.push_change(m, permit);
                                    sent = true;
                                }
                            }
                            i += 1;
                            // A connection with many busy subscriptions (each frame up to
                            // 4,096 changes) yields now and then: other tasks of this
                            // thread wait for no more than a task's budget of frames.
                            tokio::task::consume_budget().await;
                        }
                        Step::Stop(stop) => {
                            let f = following.swap_remove(i);
                            match stop {
                                Stop::Restart => f.restart(&inbox),
                                Stop::End(why) => {
                                    if inbox.common.current(Some(f.from())) {
                                        out.push(f.end(&inbox, why), None);
                                    }
                                }
                                Stop::Gone => {}
                            }
                        }
                    }
                }
                if sent && !open {
                    // A window opens (the first, or the next after one that ended with
                    // something to send); its timer is armed once a held subscription has
                    // something for its end.
                    window_end = Some(after(now, window));
                    timer_armed = false;
                } else if !sent && !open {
                    // Nothing went, and no window is open: idle, the next change goes at once.
                    window_end = None;
                    timer = None;
                    timer_armed = false;
                }
            }
        }
    }
    // Closing writes a frame too: a client that does not read gets no longer for it.
    drop(following);
    let _ = tokio::time::timeout(timeout, sink.close()).await;
}

/// Serves one WebSocket until the client goes, idles out, or breaks the protocol's limits.
pub(crate) async fn serve<I: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<I>>,
    identity: I,
    socket: WebSocket,
) {
    let _open = Counted::new(&shared.connections);
    let limits = shared.limits.clone();
    let (sink, mut stream) = socket.split();
    let (out, queue) = Outbox::new();
    let mut writer = tokio::spawn(drive(sink, queue, limits.write_timeout, shared.window));
    let mut conn = Connection {
        caller: Caller {
            identity,
            db: shared.db.clone(),
        },
        shared: shared.clone(),
        out: out.clone(),
        calls: Bucket::new(limits.calls_per_second, 0),
        // A page that reconnects opens all its subscriptions again at once.
        subscribes: Bucket::new(
            limits.subscribes_per_second,
            u32::try_from(limits.subscriptions).unwrap_or(u32::MAX),
        ),
    };
    let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let hello = ServerFrame::Hello {
        idle_ms,
        max_frame_bytes: limits.max_frame_bytes,
    };
    let _ = out.send(&hello).await;
    let mut cut = shared.cut.subscribe();
    let mut writer_done = false;
    loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout(limits.idle_timeout, stream.next()) => frame,
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            _ = cut.changed() => {
                out.try_send(Message::Close(Some(CloseFrame {
                    code: 1001,
                    reason: "the server is going away".into(),
                })));
                break;
            }
        };
        let closing = match frame {
            Err(_) => Some(Refusal::new(
                ErrorCode::IdleTimeout,
                "nothing came from the client for too long",
            )),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(Message::Text(text)))) => {
                // Boxed: handling a frame holds more than waiting for one, and the
                // connection's task is as large as its largest state for its whole life.
                Box::pin(conn.frame(text.as_str())).await;
                None
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => None,
            Ok(Some(Ok(Message::Binary(_)))) => {
                conn.refuse(ErrorCode::BadFrame, "frames are JSON text")
                    .await;
                None
            }
            Ok(Some(Err(e))) => Some(read_error(&e)),
        };
        if let Some(why) = closing {
            // Say why, then close (best effort: the client may be gone).
            out.try_send(ServerFrame::Error { error: why.clone() }.message());
            out.try_send(Message::Close(Some(CloseFrame {
                code: close_code(why.code()),
                reason: close_reason(why.message()).into(),
            })));
            break;
        }
    }
    // Every sender of the queue goes (the opening subscriptions' tasks are aborted with their
    // senders, the driver drops those it follows), so the driver ends once it has written
    // what is queued (the closing frames).
    conn.end();
    drop(conn);
    drop(out);
    if !writer_done {
        // Method calls still running hold the queue too: past the timeout, the writer goes.
        if tokio::time::timeout(limits.write_timeout, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

/// A read error as a refusal: a frame over the limit, or anything else the WebSocket layer
/// could not read.
fn read_error(e: &axum::Error) -> Refusal {
    let text = e.to_string();
    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
        Refusal::new(ErrorCode::FrameTooLarge, "a frame over the size limit")
    } else {
        Refusal::new(ErrorCode::BadFrame, format!("an unreadable frame: {text}"))
    }
}

fn close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::FrameTooLarge => 1009,
        ErrorCode::IdleTimeout => 1001,
        _ => 1008,
    }
}

/// A connection's state. Its subscriptions are in its outbox's map (see
/// [`crate::outbox::Common`]): the reader opens and closes them, the driver follows them.
struct Connection<I> {
    caller: Caller<I>,
    shared: Arc<Shared<I>>,
    out: Outbox<I>,
    calls: Bucket,
    subscribes: Bucket,
}

impl<I: Clone + Send + Sync + 'static> Connection<I> {
    async fn send(&self, frame: ServerFrame<'_>) {
        let _ = self.out.send(&frame).await;
    }

    async fn refuse(&self, code: ErrorCode, message: &str) {
        self.send(ServerFrame::Error {
            error: Refusal::new(code, message),
        })
        .await;
    }

    async fn frame(&mut self, text: &str) {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                let why = format!("not a frame of the protocol: {e}");
                return self.refuse(ErrorCode::BadFrame, &why).await;
            }
        };
        match frame {
            ClientFrame::Ping => self.send(ServerFrame::Pong).await,
            ClientFrame::Sub {
                id,
                name,
                params,
                cursor,
            } => self.subscribe(id, &name, params, cursor).await,
            ClientFrame::Unsub { id } => self.out.common.close(id),
            ClientFrame::Call { id, name, params } => self.call(id, &name, params).await,
        }
    }

    async fn subscribe(
        &mut self,
        id: u32,
        name: &str,
        params: remodel::Value,
        cursor: Option<String>,
    ) {
        // Subscriptions that ended by themselves (refused, aborted) no longer count.
        let open = self.out.common.open_count();
        let end = |error| ServerFrame::End { sub: id, error };
        if self.out.common.is_open(id) {
            let why = Refusal::new(ErrorCode::DuplicateId, "this subscription id is in use");
            return self.send(ServerFrame::Error { error: why }).await;
        }
        let limits = &self.shared.limits;
        if open >= limits.subscriptions {
            let why = format!(
                "at most {} subscriptions per connection",
                limits.subscriptions
            );
            let why = Refusal::new(ErrorCode::TooManySubscriptions, why);
            return self.send(end(why)).await;
        }
        if !self.subscribes.take() {
            // Each subscription runs its publication and reads its result: churning through
            // them is as costly as holding many.
            let why = format!(
                "at most {} subscriptions a second",
                limits.subscribes_per_second
            );
            return self
                .send(end(Refusal::new(ErrorCode::RateLimited, why)))
                .await;
        }
        let Some(publish) = self.shared.publications.get(name).cloned() else {
            let why = Refusal::new(ErrorCode::UnknownPublication, "no such publication");
            return self.send(end(why)).await;
        };
        let scope = self.shared.scope;
        let cursor = match cursor.map(|c| text::parse_cursor(&c, scope)).transpose() {
            Ok(cursor) => cursor.flatten(),
            Err(_) => {
                let why = Refusal::new(ErrorCode::BadCursor, "not a cursor this server gave");
                return self.send(end(why)).await;
            }
        };
        let generation = self.out.common.open(id);
        let sub = Subscription {
            id,
            generation,
            shared: self.shared.clone(),
            caller: self.caller.clone(),
            publish,
            // Written canonically (fields in order of name): equal parameters are the same
            // text, which is how a shared result is found (`Live::shared`).
            params: crate::live::canonical_key(std::borrow::Cow::Owned(params))
                .to_string()
                .into(),
        };
        sub.start(self.out.clone(), cursor);
    }

    async fn call(&mut self, id: u32, name: &str, params: remodel::Value) {
        let answer = |outcome| ServerFrame::Result { call: id, outcome };
        if !self.calls.take() {
            let why = format!(
                "at most {} method calls a second",
                self.shared.limits.calls_per_second
            );
            let why = Refusal::new(ErrorCode::RateLimited, why);
            return self.send(answer(Outcome::Error(why))).await;
        }
        let Some(method) = self.shared.methods.get(name).cloned() else {
            let why = Refusal::new(ErrorCode::UnknownMethod, "no such method");
            return self.send(answer(Outcome::Error(why))).await;
        };
        let (caller, out) = (self.caller.clone(), self.out.clone());
        // A call runs to its end even if the client goes meanwhile (it may be writing).
        tokio::spawn(async move {
            let outcome = match AssertUnwindSafe(method(caller, params))
                .catch_unwind()
                .await
            {
                Ok(Ok(v)) => Outcome::Ok(v),
                Ok(Err(why)) => Outcome::Error(why),
                // A method that panics still answers (its client would wait forever).
                Err(_) => Outcome::Error(Refusal::new(ErrorCode::Internal, "the method failed")),
            };
            let _ = out
                .send_result(&ServerFrame::Result { call: id, outcome })
                .await;
        });
    }

    /// Ends every subscription of the connection (opening tasks are aborted, the driver
    /// drops those it follows, and their feeds with them).
    fn end(&mut self) {
        self.out.common.close_all();
    }
}

#[cfg(test)]
mod close_reason_tests {
    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let r = super::close_reason(&long);
        assert!(r.len() <= 123 && long.starts_with(&r), "{}", r.len());
        assert_eq!(super::close_reason("short"), "short");
    }
}
