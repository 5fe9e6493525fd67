//! One connection: reads the client's frames, starts and stops its subscriptions, runs its
//! method calls, and writes every outgoing frame from one queue.
//!
//! Reading and writing are separate tasks, so that a client that does not read cannot stop
//! the server from reading it (and noticing it went idle), and a slow write times out
//! ([`crate::Limits::write_timeout`]) instead of holding the connection forever. Subscriptions
//! and calls put their frames in the bounded outgoing queue; a subscription that finds it
//! full waits without reading its feed, so its feed (not the server's memory) absorbs the
//! backlog, and overflows into a resynchronisation.

use crate::outbox::{Inbox, Outbox};
use crate::protocol::{ClientFrame, Outcome, ServerFrame};
use crate::subscription::Subscription;
use crate::{Caller, ErrorCode, Refusal, Shared};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::SplitSink;
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The most frames the writer hands the socket before one flush (one system call for a
/// burst of frames instead of one each).
const BATCH: usize = 64;

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
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Writes the queued frames to the socket, a batch per flush, until the queue closes, a
/// close frame went out, or the client does not take a batch within `timeout`.
async fn write(mut sink: SplitSink<WebSocket, Message>, mut queue: Inbox, timeout: Duration) {
    'frames: while let Some(first) = queue.next().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.ready() {
                Some(m) => batch.push(m),
                None => break,
            }
        }
        let mut close = false;
        let sent = tokio::time::timeout(timeout, async {
            for message in batch {
                close = matches!(message, Message::Close(_));
                sink.feed(message).await?;
                if close {
                    break;
                }
            }
            sink.flush().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) || close {
            break 'frames;
        }
    }
    // Closing writes a frame too: a client that does not read gets no longer for it.
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
    let mut writer = tokio::spawn(write(sink, queue, limits.write_timeout));
    let mut conn = Connection {
        caller: Caller {
            identity,
            db: shared.db.clone(),
        },
        shared: shared.clone(),
        out: out.clone(),
        subs: HashMap::new(),
        calls: Bucket::new(limits.calls_per_second),
        subscribes: Bucket::new(limits.subscribes_per_second),
        resets: Arc::new(Semaphore::new(1)),
    };
    let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let _ = out.send(&ServerFrame::Hello { idle_ms }).await;
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
                conn.frame(text.as_str()).await;
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
                reason: why.message().chars().take(100).collect::<String>().into(),
            })));
            break;
        }
    }
    // Every sender of the queue goes (the subscriptions' tasks are aborted with their
    // senders), so the writer ends once it has written what is queued (the closing frames).
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

/// A connection's state.
struct Connection<I> {
    caller: Caller<I>,
    shared: Arc<Shared<I>>,
    out: Outbox,
    subs: HashMap<u32, Running>,
    calls: Bucket,
    subscribes: Bucket,
    /// One initial result is read and queued at a time per connection (each can be large).
    resets: Arc<Semaphore>,
}

/// A subscription's task, and whether it ended by itself (set before its `end` frame is
/// sent, so that a client reusing the id on that frame finds it free).
struct Running {
    task: AbortHandle,
    ended: Arc<AtomicBool>,
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
            ClientFrame::Unsub { id } => {
                self.out.close(id);
                if let Some(sub) = self.subs.remove(&id) {
                    sub.task.abort();
                }
            }
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
        self.subs
            .retain(|_, sub| !sub.ended.load(Ordering::Acquire));
        let end = |error| ServerFrame::End { sub: id, error };
        if self.subs.contains_key(&id) {
            let why = Refusal::new(ErrorCode::DuplicateId, "this subscription id is in use");
            return self.send(ServerFrame::Error { error: why }).await;
        }
        let limits = &self.shared.limits;
        if self.subs.len() >= limits.subscriptions {
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
        let cursor = match cursor.map(|c| c.parse::<remodel::Cursor>()).transpose() {
            Ok(cursor) => cursor,
            Err(_) => {
                let why = Refusal::new(ErrorCode::BadCursor, "not a cursor this server gave");
                return self.send(end(why)).await;
            }
        };
        let ended = Arc::new(AtomicBool::new(false));
        let generation = self.out.open(id);
        let sub = Subscription {
            id,
            generation,
            ended: ended.clone(),
            shared: self.shared.clone(),
            caller: self.caller.clone(),
            publish,
            params,
            out: self.out.clone(),
            resets: self.resets.clone(),
        };
        let (out, gone) = (self.out.clone(), ended.clone());
        let task = tokio::spawn(async move {
            // A publication that panics ends its subscription, with a word to the client.
            if AssertUnwindSafe(sub.run(cursor))
                .catch_unwind()
                .await
                .is_err()
            {
                gone.store(true, Ordering::Release);
                let why = Refusal::new(ErrorCode::Internal, "the publication failed");
                let end = ServerFrame::End {
                    sub: id,
                    error: why,
                };
                let _ = out.send_from((id, generation), end.message()).await;
            }
        });
        let task = task.abort_handle();
        self.subs.insert(id, Running { task, ended });
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

    /// Ends every subscription of the connection (their feeds are dropped with their tasks).
    fn end(&mut self) {
        for (_, sub) in self.subs.drain() {
            sub.task.abort();
        }
    }
}
