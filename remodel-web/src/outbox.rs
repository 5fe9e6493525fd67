//! A connection's outgoing frames: one bounded queue, drained by the connection's driver task
//! (which also follows the subscriptions' feeds and writes their changes itself).
//!
//! The queue is bounded twice: by count, and by the bytes its frames hold ([`BYTES`]): an
//! opening subscription waits for room before it queues a frame of its initial result, so
//! that a client that does not read costs the server one queue's worth of frames, and its
//! feeds (never a writer) absorb the rest. Each subscription frame carries the subscription's
//! id and generation; the driver drops the frames of a subscription the client has ended
//! since (an `unsub`, or the id reused), so nothing of it arrives after the client moved on.
//!
//! The queue also carries the hand-over of an opened subscription to the driver
//! ([`Item::Follow`]): after its initial frames, so that no change of it goes out before them.

use crate::protocol::ServerFrame;
use crate::subscription::Following;
use axum::extract::ws::Message;
use futures::task::AtomicWaker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

/// Frames waiting for the client, per connection.
const FRAMES: usize = 32;

/// The bytes the frames waiting for one client may hold (a larger frame waits until the
/// queue is empty, then takes the whole budget).
pub(crate) const BYTES: usize = 1 << 20;

/// A frame on its way out.
pub(crate) struct Outgoing {
    pub(crate) message: Message,
    /// The subscription (id, generation) it belongs to, if any.
    pub(crate) from: Option<(u32, u64)>,
    /// It is that subscription's `end`: the driver forgets the subscription as it sends it.
    pub(crate) ends: bool,
    /// Its share of [`BYTES`], returned once it is written.
    _bytes: Option<OwnedSemaphorePermit>,
}

/// What the queue carries. Boxed in the channel: the channel allocates its slots in blocks
/// of 32 up front, and every idle connection keeps one (32 pointers, not 32 frames).
pub(crate) enum Item<I> {
    Frame(Outgoing),
    /// A subscription whose initial result is queued: the driver follows its feed now.
    Follow(Box<Following<I>>),
}

/// The connection is gone.
#[derive(Debug)]
pub(crate) struct Gone;

/// A subscription id the client has open.
pub(crate) struct Entry {
    /// Which opening of the id this is: frames of an earlier one are dropped.
    pub(crate) generation: u64,
    /// Ended by itself (refused, aborted): its `end` frame may still go out, and the client
    /// may reuse the id on it.
    pub(crate) ended: bool,
    /// The task opening it, while one does (aborted with an `unsub`).
    pub(crate) task: Option<AbortHandle>,
}

/// What the senders and the driver share.
pub(crate) struct Common {
    /// The byte budget of the frames waiting for the client ([`BYTES`]).
    pub(crate) bytes: Arc<Semaphore>,
    subs: Mutex<HashMap<u32, Entry>>,
    generations: AtomicU64,
    /// One initial result is read and queued at a time per connection (each can be large).
    pub(crate) resets: Arc<Semaphore>,
    /// Set when subscriptions were closed: the driver drops those it follows.
    closed: AtomicBool,
    driver: AtomicWaker,
}

/// The sending side of a connection's queue.
pub(crate) struct Outbox<I> {
    tx: mpsc::Sender<Box<Item<I>>>,
    pub(crate) common: Arc<Common>,
}

impl<I> Clone for Outbox<I> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            common: self.common.clone(),
        }
    }
}

/// The receiving side, for the driver. It holds no sender: the queue closes once the
/// connection and its opening subscriptions and calls are gone; `weak` makes a sender again
/// to reopen a subscription while the connection lives.
pub(crate) struct Inbox<I> {
    rx: mpsc::Receiver<Box<Item<I>>>,
    weak: mpsc::WeakSender<Box<Item<I>>>,
    pub(crate) common: Arc<Common>,
}

impl<I> Outbox<I> {
    pub(crate) fn new() -> (Outbox<I>, Inbox<I>) {
        let (tx, rx) = mpsc::channel(FRAMES);
        let common = Arc::new(Common {
            bytes: Arc::new(Semaphore::new(BYTES)),
            subs: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            resets: Arc::new(Semaphore::new(1)),
            closed: AtomicBool::new(false),
            driver: AtomicWaker::new(),
        });
        let inbox = Inbox {
            weak: tx.downgrade(),
            rx,
            common: common.clone(),
        };
        (Outbox { tx, common }, inbox)
    }

    /// Queues a frame of the connection's own (hello, pong, a result, an error).
    pub(crate) async fn send(&self, frame: &ServerFrame<'_>) -> Result<(), Gone> {
        let out = Outgoing {
            message: frame.message(),
            from: None,
            ends: false,
            _bytes: None,
        };
        self.queue(out).await
    }

    /// Queues `message` if there is room now (closing frames: best effort).
    pub(crate) fn try_send(&self, message: Message) {
        let _ = self.tx.try_send(Box::new(Item::Frame(Outgoing {
            message,
            from: None,
            ends: false,
            _bytes: None,
        })));
    }

    /// Queues a frame of subscription `from` (id, generation), once its bytes fit.
    pub(crate) async fn send_from(&self, from: (u32, u64), message: Message) -> Result<(), Gone> {
        self.send_sized(Some(from), message, false).await
    }

    /// Ends subscription `from` by itself with its `end` frame: from now on it no longer
    /// counts as open (the client may reuse its id once the frame arrives), and the driver
    /// forgets it when it sends the frame. Until then it stays known, so that its `end`
    /// still goes out (a subscription forgotten sooner would have it dropped as stale).
    pub(crate) async fn send_end(&self, from: (u32, u64), message: Message) -> Result<(), Gone> {
        self.common.ended(from);
        self.send_sized(Some(from), message, true).await
    }

    /// Queues a frame that may be large (a method's result), once its bytes fit.
    pub(crate) async fn send_result(&self, frame: &ServerFrame<'_>) -> Result<(), Gone> {
        self.send_sized(None, frame.message(), false).await
    }

    /// Hands an opened subscription to the driver, after the frames queued before.
    pub(crate) async fn follow(&self, following: Box<Following<I>>) -> Result<(), Gone> {
        let item = Box::new(Item::Follow(following));
        self.tx.send(item).await.map_err(|_| Gone)
    }

    async fn send_sized(
        &self,
        from: Option<(u32, u64)>,
        message: Message,
        ends: bool,
    ) -> Result<(), Gone> {
        let size = text_len(&message);
        let permits = u32::try_from(size.clamp(1, BYTES)).unwrap_or(u32::MAX);
        let bytes = self
            .common
            .bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Gone)?;
        let out = Outgoing {
            message,
            from,
            ends,
            _bytes: Some(bytes),
        };
        self.queue(out).await
    }

    async fn queue(&self, out: Outgoing) -> Result<(), Gone> {
        let item = Box::new(Item::Frame(out));
        self.tx.send(item).await.map_err(|_| Gone)
    }
}

impl Common {
    /// The subscriptions the client has open (not those that ended by themselves, whose
    /// `end` frames are on their way).
    pub(crate) fn open_count(&self) -> usize {
        self.lock().values().filter(|e| !e.ended).count()
    }

    pub(crate) fn is_open(&self, id: u32) -> bool {
        self.lock().get(&id).is_some_and(|e| !e.ended)
    }

    /// Opens subscription `id`: its new generation (an earlier one's frames are dropped).
    pub(crate) fn open(&self, id: u32) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Entry {
            generation,
            ended: false,
            task: None,
        };
        if let Some(old) = self.lock().insert(id, entry) {
            self.closed(old);
        }
        generation
    }

    /// Notes the task opening subscription `from`, or aborts it when the client has closed
    /// the subscription meanwhile.
    pub(crate) fn opening(&self, from: (u32, u64), task: AbortHandle) {
        let mut subs = self.lock();
        match subs.get_mut(&from.0).filter(|e| e.generation == from.1) {
            Some(entry) => entry.task = Some(task),
            None => task.abort(),
        }
    }

    /// Subscription `from` is open: its opening task ends (and its handle goes with it).
    pub(crate) fn opened(&self, from: (u32, u64)) {
        let mut subs = self.lock();
        if let Some(entry) = subs.get_mut(&from.0).filter(|e| e.generation == from.1) {
            entry.task = None;
        }
    }

    /// Subscription `from` ended by itself (its `end` frame still goes out).
    fn ended(&self, from: (u32, u64)) {
        let mut subs = self.lock();
        if let Some(entry) = subs.get_mut(&from.0).filter(|e| e.generation == from.1) {
            entry.ended = true;
            entry.task = None;
        }
    }

    /// Forgets subscription `from`, whose `end` frame is going out now (not a later
    /// subscription under the same id).
    pub(crate) fn retire(&self, from: (u32, u64)) {
        let mut subs = self.lock();
        if subs.get(&from.0).is_some_and(|e| e.generation == from.1) {
            subs.remove(&from.0);
        }
    }

    /// Closes subscription `id`: frames of it still queued are dropped, its opening task is
    /// aborted, and the driver stops following it.
    pub(crate) fn close(&self, id: u32) {
        let old = self.lock().remove(&id);
        if let Some(old) = old {
            self.closed(old);
        }
    }

    /// Closes every subscription (the connection ends).
    pub(crate) fn close_all(&self) {
        let all: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        for entry in all {
            self.closed(entry);
        }
        // Even with none open: the driver drops what it follows.
        self.closed.store(true, Ordering::Release);
        self.driver.wake();
    }

    fn closed(&self, entry: Entry) {
        if let Some(task) = entry.task {
            task.abort();
        }
        self.closed.store(true, Ordering::Release);
        self.driver.wake();
    }

    /// Whether frames of `from` may go out (no subscription: the connection's own).
    pub(crate) fn current(&self, from: Option<(u32, u64)>) -> bool {
        let Some((id, generation)) = from else {
            return true;
        };
        self.lock()
            .get(&id)
            .is_some_and(|e| e.generation == generation)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        crate::lock(&self.subs)
    }
}

impl<I> Inbox<I> {
    /// The next item, if one is ready; `Ready(None)` once every sender is gone. Registers
    /// the driver's waker for closed subscriptions too.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> std::task::Poll<Option<Item<I>>> {
        self.common.driver.register(cx.waker());
        self.rx.poll_recv(cx).map(|item| item.map(|b| *b))
    }

    /// An item that is ready now, if any.
    pub(crate) fn ready(&mut self) -> Option<Item<I>> {
        self.rx.try_recv().ok().map(|b| *b)
    }

    /// Whether subscriptions were closed since the last call.
    pub(crate) fn take_closed(&self) -> bool {
        self.common.closed.swap(false, Ordering::AcqRel)
    }

    /// A sender, while the connection lives (to reopen a subscription).
    pub(crate) fn outbox(&self) -> Option<Outbox<I>> {
        Some(Outbox {
            tx: self.weak.upgrade()?,
            common: self.common.clone(),
        })
    }
}

/// The bytes of a text frame (0 for the others).
pub(crate) fn text_len(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        _ => 0,
    }
}

impl Outgoing {
    /// The frame, and its share of the byte budget (returned once it is dropped).
    pub(crate) fn into_parts(self) -> (Message, Option<OwnedSemaphorePermit>) {
        (self.message, self._bytes)
    }
}
