//! Group commit: hard-durability writes from many tasks share fsyncs.
//!
//! A hard write waits until everything up to its commit is on disk. When a flush is already
//! running, it cannot cover commits made after it started, so a write arriving then waits
//! for it to end and for the next one, which one of the waiting writers starts for all of
//! them. However many writers there are, at most one flush runs and one more is due, so
//! eight writers cost about two fsyncs per round instead of eight.
//!
//! The writer that starts a flush first waits (yielding, for at most as long as the last
//! flush took) until the writers the last flush released are back, waiting or committing,
//! along with those that arrived while it ran: without that, the released writers are still
//! on their way back with their next commit when the next flush starts, and the writers
//! settle into two groups that take turns, each flush covering half of them. One writer
//! alone never waits.

use super::Visibility;
use crate::storage::Storage;
use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The longest a flush waits for commits in progress to join it.
const MAX_GATHER: Duration = Duration::from_millis(2);

pub(crate) struct GroupFlush {
    /// Everything committed up to this number is on disk, and whether a flush is running.
    state: watch::Sender<Flushed>,
    /// Flushes run so far.
    runs: AtomicU64,
    /// Hard writes that have started but not yet committed (see [`GroupFlush::committing`]).
    committing: AtomicUsize,
    /// Writers in `flush_upto`.
    waiting: AtomicUsize,
    /// How many writers the last flush covered (were waiting when it started).
    last_group: AtomicUsize,
    /// Writers that arrived while a flush was running (the next flush's share).
    arrived_running: AtomicUsize,
    /// How long the last flush took, in nanoseconds.
    last_flush_ns: AtomicU64,
}

/// One unit of a counter of writers (committing, or waiting for a flush) for as long as it
/// lives.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Copy, Default)]
struct Flushed {
    upto: u64,
    running: bool,
}

impl GroupFlush {
    pub(crate) fn new(seq: u64) -> Self {
        GroupFlush {
            state: watch::Sender::new(Flushed {
                upto: seq,
                running: false,
            }),
            runs: AtomicU64::new(0),
            committing: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            last_group: AtomicUsize::new(0),
            arrived_running: AtomicUsize::new(0),
            last_flush_ns: AtomicU64::new(0),
        }
    }

    /// Marks a hard write as committing until the guard is dropped, which the write does
    /// right after its commit, before it waits for the flush.
    pub(crate) fn committing(&self) -> Counted<'_> {
        Counted::new(&self.committing)
    }

    /// Lets the writers of the last group come back before a flush starts (bounded; see
    /// the module doc): waits until they are all waiting, none still committing.
    async fn gather(&self) {
        let limit =
            Duration::from_nanos(self.last_flush_ns.load(Ordering::Relaxed)).min(MAX_GATHER);
        let expected =
            self.last_group.load(Ordering::Relaxed) + self.arrived_running.load(Ordering::Relaxed);
        let started = Instant::now();
        // Yielding, not sleeping: the writers are back within microseconds, and a timer
        // would round the wait up to a millisecond. The clock is read every few turns.
        let mut turns = 0u32;
        loop {
            let committing = self.committing.load(Ordering::Acquire);
            if committing == 0 && self.waiting.load(Ordering::Acquire) >= expected {
                break;
            }
            turns += 1;
            if turns % 8 == 0 && started.elapsed() >= limit {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.last_group
            .store(self.waiting.load(Ordering::Acquire), Ordering::Relaxed);
        self.arrived_running.store(0, Ordering::Relaxed);
    }

    /// How many flushes ran.
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Waits until every commit up to `seq` is on disk, flushing when no running flush
    /// will cover it. Feeds are told (`visibility`) how far the disk has caught up.
    pub(crate) async fn flush_upto(
        &self,
        seq: u64,
        storage: &Storage,
        visibility: &Arc<Visibility>,
    ) -> Result<()> {
        let _waiting = Counted::new(&self.waiting);
        let mut rx = self.state.subscribe();
        if rx.borrow().running {
            self.arrived_running.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let mut start = false;
            self.state.send_if_modified(|s| {
                if s.upto >= seq || s.running {
                    return false;
                }
                s.running = true;
                start = true;
                true
            });
            if start {
                self.gather().await;
                // This flush covers every commit made before it starts.
                let target = visibility.last();
                let began = Instant::now();
                self.runs.fetch_add(1, Ordering::Relaxed);
                let storage = storage.clone();
                let flushed = tokio::task::spawn_blocking(move || storage.flush_blocking())
                    .await
                    .map_err(|e| Error::storage(format!("flush task failed: {e}")))
                    .and_then(|r| r);
                self.last_flush_ns
                    .store(began.elapsed().as_nanos() as u64, Ordering::Relaxed);
                self.state.send_modify(|s| {
                    s.running = false;
                    if flushed.is_ok() {
                        s.upto = s.upto.max(target);
                    }
                });
                flushed?;
                visibility.durable(target);
                continue;
            }
            if rx.borrow_and_update().upto >= seq {
                return Ok(());
            }
            // A flush is running (or just finished): wait for the state to move.
            if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }
}
