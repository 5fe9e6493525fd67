//! A connection's outgoing frames: one bounded queue, drained by the connection's writer task.
//!
//! The queue is bounded twice: by count, and by the bytes its frames hold ([`BYTES`]): a
//! subscription waits for room before it queues a frame, without reading its feed meanwhile,
//! so that a client that does not read costs the server one queue's worth of frames, and its
//! feeds (never a writer) absorb the rest. Each subscription frame carries the subscription's
//! id and generation; the writer drops the frames of a subscription the client has ended
//! since (an `unsub`, or the id reused), so nothing of it arrives after the client moved on.

use crate::protocol::ServerFrame;
use axum::extract::ws::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Frames waiting for the client, per connection.
const FRAMES: usize = 32;

/// The bytes the frames waiting for one client may hold (a larger frame waits until the
/// queue is empty, then takes the whole budget).
pub(crate) const BYTES: usize = 1 << 20;

/// A frame on its way out.
pub(crate) struct Outgoing {
    pub(crate) message: Message,
    /// The subscription (id, generation) it belongs to, if any.
    from: Option<(u32, u64)>,
    /// Its share of [`BYTES`], returned once it is written.
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The connection is gone.
#[derive(Debug)]
pub(crate) struct Gone;

/// The sending side of a connection's queue.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    bytes: Arc<Semaphore>,
    /// The generation of each subscription id the client has open.
    open: Arc<Mutex<HashMap<u32, u64>>>,
    generations: Arc<AtomicU64>,
}

/// The receiving side, for the writer.
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Outgoing>,
    open: Arc<Mutex<HashMap<u32, u64>>>,
}

impl Outbox {
    pub(crate) fn new() -> (Outbox, Inbox) {
        let (tx, rx) = mpsc::channel(FRAMES);
        let open = Arc::new(Mutex::new(HashMap::new()));
        let outbox = Outbox {
            tx,
            bytes: Arc::new(Semaphore::new(BYTES)),
            open: open.clone(),
            generations: Arc::new(AtomicU64::new(0)),
        };
        (outbox, Inbox { rx, open })
    }

    /// Queues a frame of the connection's own (hello, pong, a result, an error).
    pub(crate) async fn send(&self, frame: &ServerFrame<'_>) -> Result<(), Gone> {
        self.queue(frame.message(), None, None).await
    }

    /// Queues `message` if there is room now (closing frames: best effort).
    pub(crate) fn try_send(&self, message: Message) {
        let _ = self.tx.try_send(Outgoing {
            message,
            from: None,
            _bytes: None,
        });
    }

    /// Queues a frame of subscription `from` (id, generation), once its bytes fit.
    pub(crate) async fn send_from(&self, from: (u32, u64), message: Message) -> Result<(), Gone> {
        self.send_sized(Some(from), message).await
    }

    /// Queues a frame that may be large (a method's result), once its bytes fit.
    pub(crate) async fn send_result(&self, frame: &ServerFrame<'_>) -> Result<(), Gone> {
        self.send_sized(None, frame.message()).await
    }

    async fn send_sized(&self, from: Option<(u32, u64)>, message: Message) -> Result<(), Gone> {
        let size = text_len(&message);
        let permits = u32::try_from(size.clamp(1, BYTES)).unwrap_or(u32::MAX);
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Gone)?;
        self.queue(message, from, Some(bytes)).await
    }

    async fn queue(
        &self,
        message: Message,
        from: Option<(u32, u64)>,
        bytes: Option<OwnedSemaphorePermit>,
    ) -> Result<(), Gone> {
        let out = Outgoing {
            message,
            from,
            _bytes: bytes,
        };
        self.tx.send(out).await.map_err(|_| Gone)
    }

    /// Opens subscription `id`: its new generation (an earlier one's frames are dropped).
    pub(crate) fn open(&self, id: u32) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(id, generation);
        generation
    }

    /// Closes subscription `id`: frames of it still queued are dropped.
    pub(crate) fn close(&self, id: u32) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
        // A panic while the lock was held left a plain map behind: still usable.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inbox {
    /// The next frame to write (waiting for one), skipping frames of closed subscriptions.
    pub(crate) async fn next(&mut self) -> Option<Message> {
        loop {
            let out = self.rx.recv().await?;
            if self.current(out.from) {
                return Some(out.message);
            }
        }
    }

    /// A frame that is ready now, if any.
    pub(crate) fn ready(&mut self) -> Option<Message> {
        loop {
            let out = self.rx.try_recv().ok()?;
            if self.current(out.from) {
                return Some(out.message);
            }
        }
    }

    fn current(&self, from: Option<(u32, u64)>) -> bool {
        let Some((id, generation)) = from else {
            return true;
        };
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&id) == Some(&generation)
    }
}

/// The bytes of a text frame (0 for the others).
pub(crate) fn text_len(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        _ => 0,
    }
}
