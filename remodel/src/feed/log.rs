//! A group's shared log: one copy of each item for every feed of the group.
//!
//! Feeds that watch the same query (and do not squash) read one log, each at its own cursor,
//! the way a broadcast channel works: a write appends its item once, and each consumer's
//! core reads the same memory instead of a private copy. Items are kept until every reader
//! has passed them (trimmed lazily) or until they exceed the largest reader's queue size.
//! A reader that falls more than its queue size behind loses what it had buffered and gets
//! one overflow item with the count, like a private queue.

use super::change::Change;
use super::queue::Next;
use crate::Error;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;

/// The most items a reader takes from the log at once.
const MAX_BATCH: u64 = 64;

#[derive(Default)]
pub(crate) struct Log {
    state: Mutex<State>,
    /// Mirrors of `State::head + items.len()` and `State::epoch`, written under the lock,
    /// so that a reader that has caught up can tell without locking that it has nothing to
    /// read and is already listed to be woken.
    tail: AtomicU64,
    epoch: AtomicU64,
}

#[derive(Default)]
struct State {
    items: VecDeque<Change>,
    /// Sequence number of `items[0]`.
    head: u64,
    /// Each reader's cursor (next sequence number to read) and queue size, by slot.
    readers: Vec<Option<(u64, usize)>>,
    free: Vec<usize>,
    live: usize,
    /// Readers waiting for an item, woken (and cleared) by the next push.
    waiters: Vec<(usize, Waker)>,
    /// Incremented whenever `waiters` is handed out, so a reader knows whether it is listed.
    epoch: u64,
    closed: Option<Error>,
    /// The largest queue size of the readers (items beyond it are dropped).
    cap: usize,
    /// The log position at which the next scan of cursors may run.
    scan_at: u64,
}

impl State {
    fn tail(&self) -> u64 {
        self.head + self.items.len() as u64
    }

    /// Drops items every reader has passed, and items beyond the largest queue size. The
    /// scan of cursors runs at most once per `live / 16` pushes (also when a slow reader
    /// keeps items alive), so it costs a constant per write however many readers there are.
    fn trim(&mut self) {
        while self.items.len() > self.cap {
            self.items.pop_front();
            self.head += 1;
        }
        let every = (self.live / 16).max(1) as u64;
        if self.items.len() as u64 > every && self.tail() >= self.scan_at {
            let min = self
                .readers
                .iter()
                .flatten()
                .map(|r| r.0)
                .min()
                .unwrap_or(u64::MAX);
            while self.head < min && self.items.pop_front().is_some() {
                self.head += 1;
            }
            self.scan_at = self.tail() + every;
        }
    }
}

/// A reader's own position in a log (kept by its feed).
pub(crate) struct Reader {
    slot: usize,
    capacity: usize,
    /// The reader's cursor (the log keeps a copy for trimming).
    cursor: u64,
    /// The log epoch in which this reader's waker was listed, and that waker.
    listed: Option<(u64, Waker)>,
    /// While the feed's initial rows are read in chunks: from which log position on each
    /// scan frontier holds (the last primary key read, or `None` once the scan is done).
    /// An item about a row the scan has not reached yet is skipped: the scan reads the row
    /// as it is after that item.
    frontier: Vec<(u64, Option<Vec<u8>>)>,
}

impl Reader {
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records that, from the log's current end on, the initial scan has read every row up
    /// to `last` (`None`: all of them).
    pub(crate) fn scanned(&mut self, log: &Log, last: Option<Vec<u8>>) {
        self.frontier.push((log.tail.load(Ordering::Acquire), last));
    }

    fn visible(&self, seq: u64, item: &Change) -> bool {
        let Some((_, last)) = self.frontier.iter().rev().find(|(from, _)| *from <= seq) else {
            return self.frontier.is_empty();
        };
        match (last, item.key()) {
            (None, _) => true,
            (Some(last), Some(key)) => **key <= **last,
            (Some(_), None) => true,
        }
    }

    /// Forgets the frontier once the reader is past the end of the scan.
    fn settle_frontier(&mut self) {
        if let Some((from, None)) = self.frontier.last() {
            if self.cursor >= *from {
                self.frontier.clear();
            }
        }
    }
}

impl Log {
    /// Adds a reader that starts with the next item pushed.
    pub(crate) fn join(&self, capacity: usize) -> Reader {
        let mut s = self.state.lock();
        let entry = Some((s.tail(), capacity.max(1)));
        let slot = match s.free.pop() {
            Some(i) => {
                s.readers[i] = entry;
                i
            }
            None => {
                s.readers.push(entry);
                s.readers.len() - 1
            }
        };
        s.live += 1;
        s.cap = s.cap.max(capacity.max(1));
        let cursor = s.tail();
        Reader {
            slot,
            capacity: capacity.max(1),
            cursor,
            listed: None,
            frontier: Vec::new(),
        }
    }

    pub(crate) fn leave(&self, r: &Reader) {
        let mut s = self.state.lock();
        s.readers[r.slot] = None;
        s.free.push(r.slot);
        s.live -= 1;
        s.cap = s.readers.iter().flatten().map(|r| r.1).max().unwrap_or(0);
        s.waiters.retain(|(slot, _)| *slot != r.slot);
        s.trim();
    }

    /// Appends an item; returns the wakers of the readers that were waiting (the caller
    /// wakes them after releasing the commit lock).
    pub(crate) fn push(&self, item: Change, wakes: &mut Vec<Waker>) {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return;
        }
        s.items.push_back(item);
        s.trim();
        self.tail.store(s.tail(), Ordering::Release);
        if !s.waiters.is_empty() {
            s.epoch += 1;
            self.epoch.store(s.epoch, Ordering::Release);
            wakes.extend(s.waiters.drain(..).map(|(_, w)| w));
        }
    }

    /// Ends the log: readers get `why` after the items they have not read.
    pub(crate) fn close(&self, why: Error) {
        let waiters: Vec<(usize, Waker)> = {
            let mut s = self.state.lock();
            s.closed.get_or_insert(why);
            s.epoch += 1;
            self.epoch.store(s.epoch, Ordering::Release);
            s.waiters.drain(..).collect()
        };
        waiters.into_iter().for_each(|(_, w)| w.wake());
    }

    /// The reader's next item; with nothing to read, registers `waker` and returns `Empty`.
    /// Items after the first that are ready are moved to `more`.
    pub(crate) fn next(&self, r: &mut Reader, waker: &Waker, more: &mut VecDeque<Change>) -> Next {
        // Caught up and listed with this waker in the current epoch: nothing to do. A push
        // after these loads moves the epoch and wakes the listed waker.
        if let Some((epoch, listed)) = &r.listed {
            if *epoch == self.epoch.load(Ordering::Acquire)
                && r.cursor == self.tail.load(Ordering::Acquire)
                && listed.will_wake(waker)
            {
                return Next::Empty;
            }
        }
        let mut s = self.state.lock();
        let tail = s.tail();
        loop {
            let behind = tail - r.cursor;
            if behind > r.capacity as u64 {
                // Discard whole queues' worth, as a private queue would have on overflow.
                let skipped = ((behind - 1) / r.capacity as u64) * r.capacity as u64;
                r.cursor += skipped;
                s.readers[r.slot] = Some((r.cursor, r.capacity));
                return Next::Overflow(skipped);
            }
            if behind == 0 {
                break;
            }
            let Some(at) = r.cursor.checked_sub(s.head) else {
                // Trimmed past this reader (cannot happen while queue sizes hold, but a
                // reader must never read a wrong item): report the gap as skipped.
                let skipped = s.head - r.cursor;
                r.cursor = s.head;
                s.readers[r.slot] = Some((r.cursor, r.capacity));
                return Next::Overflow(skipped);
            };
            // Take what is there (up to a bound) in one go: the reader's later polls then
            // need no lock.
            let take = behind.min(MAX_BATCH) as usize;
            let at = at as usize;
            let mut first = None;
            for (i, item) in s.items.range(at..at + take).enumerate() {
                if !r.visible(r.cursor + i as u64, item) {
                    continue;
                }
                match first {
                    None => first = Some(item.clone()),
                    Some(_) => more.push_back(item.clone()),
                }
            }
            r.cursor += take as u64;
            r.settle_frontier();
            s.readers[r.slot] = Some((r.cursor, r.capacity));
            if let Some(item) = first {
                if r.cursor == tail {
                    // The last item: list the waker now, which spares the next poll the lock.
                    Self::list(&mut s, r, waker);
                }
                return Next::Item(item);
            }
        }
        if let Some(e) = &s.closed {
            return Next::Closed(e.clone());
        }
        Self::list(&mut s, r, waker);
        Next::Empty
    }

    /// Puts the reader's waker on the list the next push wakes (once per epoch).
    fn list(s: &mut State, r: &mut Reader, waker: &Waker) {
        if s.closed.is_some() {
            // Nothing will be pushed any more; the reader must take the locked path to see
            // the end.
            r.listed = None;
            return;
        }
        match &mut r.listed {
            Some((epoch, listed)) if *epoch == s.epoch => {
                if !listed.will_wake(waker) {
                    *listed = waker.clone();
                    if let Some(w) = s.waiters.iter_mut().find(|(slot, _)| *slot == r.slot) {
                        w.1 = waker.clone();
                    }
                }
            }
            _ => {
                s.waiters.push((r.slot, waker.clone()));
                r.listed = Some((s.epoch, waker.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn item(v: i64) -> Change {
        Change::row(None, None, Some(Arc::new(json!(v))))
    }

    fn val(n: Next) -> Option<i64> {
        match n {
            Next::Item(c) => c.new_val().and_then(|v| v.as_i64()),
            _ => None,
        }
    }

    #[test]
    fn readers_share_items_and_overflow_alone() {
        let log = Log::default();
        let waker = futures_util::task::noop_waker();
        let mut fast = log.join(100);
        let mut slow = log.join(3);
        let mut wakes = Vec::new();
        for i in 0..10 {
            log.push(item(i), &mut wakes);
            assert_eq!(
                val(log.next(&mut fast, &waker, &mut VecDeque::new())),
                Some(i)
            );
        }
        assert!(matches!(
            log.next(&mut slow, &waker, &mut VecDeque::new()),
            Next::Overflow(9)
        ));
        assert_eq!(
            val(log.next(&mut slow, &waker, &mut VecDeque::new())),
            Some(9)
        );
        assert!(matches!(
            log.next(&mut slow, &waker, &mut VecDeque::new()),
            Next::Empty
        ));
        // Both are waiting now: the next push hands out both wakers, once.
        assert!(matches!(
            log.next(&mut fast, &waker, &mut VecDeque::new()),
            Next::Empty
        ));
        assert!(matches!(
            log.next(&mut fast, &waker, &mut VecDeque::new()),
            Next::Empty
        ));
        wakes.clear();
        log.push(item(10), &mut wakes);
        assert_eq!(wakes.len(), 2);
        // Everything read by everyone is trimmed.
        assert_eq!(
            val(log.next(&mut fast, &waker, &mut VecDeque::new())),
            Some(10)
        );
        assert_eq!(
            val(log.next(&mut slow, &waker, &mut VecDeque::new())),
            Some(10)
        );
        log.push(item(11), &mut wakes);
        assert!(log.state.lock().items.len() <= 2);
    }

    #[test]
    fn a_reader_joining_late_starts_at_the_tail_and_close_ends_all() {
        let log = Log::default();
        let waker = futures_util::task::noop_waker();
        let mut wakes = Vec::new();
        let mut a = log.join(10);
        log.push(item(1), &mut wakes);
        let mut b = log.join(10);
        log.push(item(2), &mut wakes);
        assert_eq!(val(log.next(&mut b, &waker, &mut VecDeque::new())), Some(2));
        log.close(Error::FeedAborted("gone".into()));
        // A reader that is behind takes what is there at once.
        let mut more = VecDeque::new();
        assert_eq!(val(log.next(&mut a, &waker, &mut more)), Some(1));
        assert_eq!(
            more.pop_front()
                .and_then(|c| c.new_val().and_then(|v| v.as_i64())),
            Some(2)
        );
        assert!(matches!(
            log.next(&mut a, &waker, &mut more),
            Next::Closed(_)
        ));
        log.leave(&a);
        log.leave(&b);
    }
}
