//! One connection: reads the client's frames, starts and stops its subscriptions, runs its
//! method calls, and writes every outgoing frame from one queue.
//!
//! Reading and writing are separate tasks, so that a client that does not read cannot stop
//! the server from reading it (and noticing it went idle), and a slow write times out
//! ([`crate::Limits::write_timeout`]) instead of holding the connection forever. Subscriptions
//! and calls put their frames in the bounded outgoing queue; a subscription that finds it
//! full waits without reading its feed, so its feed (not the server's memory) absorbs the
//! backlog, and overflows into a resynchronisation.

use crate::protocol::{ClientFrame, Outcome, ServerFrame};
use crate::subscription::Subscription;
use crate::{Caller, ErrorCode, Refusal, Shared};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Frames waiting for the client, per connection.
const OUTGOING: usize = 32;

/// The outgoing queue of a connection.
pub(crate) type Outbox = mpsc::Sender<Message>;

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

/// Method calls a connection may make: a token bucket refilled at `rate` a second, holding
/// at most `rate`.
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

/// Serves one WebSocket until the client goes, idles out, or breaks the protocol's limits.
pub(crate) async fn serve<I: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<I>>,
    identity: I,
    socket: WebSocket,
) {
    let _open = Counted::new(&shared.connections);
    let limits = shared.limits.clone();
    let (mut sink, mut stream) = socket.split();
    let (out, mut outgoing) = mpsc::channel::<Message>(OUTGOING);
    let mut writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            let close = matches!(message, Message::Close(_));
            match tokio::time::timeout(limits.write_timeout, sink.send(message)).await {
                Ok(Ok(())) if !close => {}
                _ => break,
            }
        }
        // Closing writes a frame too: a client that does not read gets no longer for it.
        let _ = tokio::time::timeout(limits.write_timeout, sink.close()).await;
    });
    let mut conn = Connection {
        caller: Caller {
            identity,
            db: shared.db.clone(),
        },
        shared: shared.clone(),
        out: out.clone(),
        subs: HashMap::new(),
        calls: Bucket::new(shared.limits.calls_per_second),
    };
    let idle_ms = u64::try_from(shared.limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let _ = out.send(ServerFrame::Hello { idle_ms }.message()).await;
    let mut cut = shared.cut.subscribe();
    loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout(shared.limits.idle_timeout, stream.next()) => frame,
            _ = &mut writer => break,
            _ = cut.changed() => {
                let _ = out.try_send(Message::Close(Some(CloseFrame {
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
            let _ = out.try_send(ServerFrame::Error { error: why.clone() }.message());
            let _ = out.try_send(Message::Close(Some(CloseFrame {
                code: close_code(why.code()),
                reason: why.message().chars().take(100).collect::<String>().into(),
            })));
            break;
        }
    }
    conn.end();
    drop(out);
    // The writer sends what is queued (the closing frames) within its write timeout.
    let _ = tokio::time::timeout(shared.limits.write_timeout, writer).await;
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
}

/// A subscription's task, and whether it ended by itself (set before its `end` frame is
/// sent, so that a client reusing the id on that frame finds it free).
struct Running {
    task: AbortHandle,
    ended: Arc<AtomicBool>,
}

impl<I: Clone + Send + Sync + 'static> Connection<I> {
    async fn send(&self, frame: ServerFrame<'_>) {
        let _ = self.out.send(frame.message()).await;
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
        if self.subs.len() >= self.shared.limits.subscriptions {
            let why = format!(
                "at most {} subscriptions per connection",
                self.shared.limits.subscriptions
            );
            return self
                .send(end(Refusal::new(ErrorCode::TooManySubscriptions, why)))
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
        let sub = Subscription {
            id,
            ended: ended.clone(),
            shared: self.shared.clone(),
            caller: self.caller.clone(),
            publish,
            params,
            out: self.out.clone(),
        };
        let task = tokio::spawn(sub.run(cursor));
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
            let outcome = match method(caller, params).await {
                Ok(v) => Outcome::Ok(v),
                Err(why) => Outcome::Error(why),
            };
            let _ = out
                .send(ServerFrame::Result { call: id, outcome }.message())
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
