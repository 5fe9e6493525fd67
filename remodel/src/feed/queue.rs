//! A feed's own bounded queue, for feeds that squash (merging is per consumer) and for the
//! stats timer feed; the other feeds read their group's shared log (`log.rs`).
//!
//! Writers never wait on a consumer: a push takes a short lock and, when the queue is full,
//! discards what is buffered and counts it, so the consumer next gets one overflow error item.
//! With squash on, a push merges into the queued change of the same row.

use super::change::Change;
use super::edits::{list_edits, ListRow};
use crate::Error;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

pub(crate) struct Subscriber {
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    capacity: usize,
    squash: bool,
    /// Whether the arrival time of the oldest item is kept (squash windows need it).
    timed: bool,
}

#[derive(Default)]
struct Queue {
    /// Queued items; `None` marks a squashed-away entry.
    items: VecDeque<Option<Change>>,
    /// Number of `Some` items.
    live: usize,
    /// Position (counted from `base`) of each row's queued change, when squashing.
    by_key: HashMap<(Arc<[u8]>, u32), u64>,
    /// How many items were ever popped from the front (positions are absolute).
    base: u64,
    skipped: u64,
    /// When the oldest queued item arrived (for squash windows).
    since: Option<Instant>,
    /// While the initial rows are read in chunks: the last primary key read. Changes of
    /// rows past it are dropped (the scan will read those rows as they are then).
    scanned: Option<Vec<u8>>,
    closed: Option<Error>,
    /// Squashing top-N feeds: changes are not queued but applied to a list (see
    /// [`Subscriber::track_list`]).
    list: Option<ListSquash>,
}

impl Queue {
    /// Drops the squashed-away entries at either end (all of them once nothing is live), so
    /// that a row that keeps entering and leaving the result while the consumer does not
    /// read leaves no trail: every remaining hole lies between two live items, so the
    /// queue holds fewer than twice its capacity.
    fn trim(&mut self) {
        if self.live == 0 {
            self.base += self.items.len() as u64;
            self.items.clear();
            self.since = None;
            return;
        }
        while matches!(self.items.back(), Some(None)) {
            self.items.pop_back();
        }
        while matches!(self.items.front(), Some(None)) {
            self.items.pop_front();
            self.base += 1;
        }
    }
}

/// A squashing top-N feed's state: the list as its consumer will have it after the queued
/// items, and the set as it is now (given by the hub after every commit that changes it, so
/// it never drifts from the group's own set). The next batch is the edits between the two, so rows
/// that entered and left in between produce nothing. Its size is bounded by the limit, so
/// such a feed never overflows.
struct ListSquash {
    shown: Vec<ListRow>,
    current: Vec<ListRow>,
    /// Changes applied to `current` since the last batch.
    pending: usize,
    /// The stamp (change number, commit position) of the last change applied.
    seq: Option<(u64, u64)>,
}

/// What the consumer gets next.
pub(crate) enum Next {
    Item(Change),
    Overflow(u64),
    Closed(Error),
    Empty,
}

impl Subscriber {
    pub(crate) fn new(capacity: usize, squash: bool, timed: bool) -> Self {
        Subscriber {
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            capacity: capacity.max(1),
            squash,
            timed,
        }
    }

    /// Whether it merges the changes of a row (squash).
    pub(crate) fn squashes(&self) -> bool {
        self.squash
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues an item (called by writers; never blocks on the consumer). Returns true when
    /// the consumer may be waiting for it, so the caller must wake it
    /// ([`Subscriber::take_waker`]; writers wake after releasing the commit lock): the queue
    /// was empty, or (a squash window's queue, whose consumer waits for the window's end
    /// while items are queued) it just filled past half or overflowed, which are handed
    /// over at once. Otherwise an earlier push has already arranged a wake-up.
    pub(crate) fn push(&self, item: Change) -> bool {
        let mut q = self.queue.lock();
        if q.closed.is_some() {
            return false;
        }
        let timed = self.timed;
        let queued = q.live;
        if let Some(list) = &mut q.list {
            // The set itself comes with `set_list` after the commit's items.
            list.seq = item.stamp().or(list.seq);
            list.pending += 1;
            let first = list.pending == 1;
            let waiting = queued + list.pending;
            if first && queued == 0 && timed {
                q.since = Some(Instant::now());
            }
            let past_half = waiting * 2 > self.capacity && (waiting - 1) * 2 <= self.capacity;
            return (first && queued == 0) || (timed && past_half);
        }
        if let (Some(last), Some(key)) = (&q.scanned, item.key()) {
            if **key > **last {
                return false;
            }
        }
        if self.squash && self.merge(&mut q, &item) {
            return false;
        }
        let was_empty = q.live == 0 && q.skipped == 0;
        let overflows = q.live >= self.capacity;
        if overflows {
            q.skipped += q.live as u64;
            q.base += q.items.len() as u64;
            q.items.clear();
            q.by_key.clear();
            q.live = 0;
        }
        if q.live == 0 && self.timed {
            q.since = Some(Instant::now());
        }
        if self.squash {
            if let Some(k) = item.squash_key() {
                let pos = q.base + q.items.len() as u64;
                q.by_key.insert(k, pos);
            }
        }
        q.items.push_back(Some(item));
        q.live += 1;
        let past_half = q.live * 2 > self.capacity && (q.live - 1) * 2 <= self.capacity;
        was_empty || (timed && (overflows || past_half))
    }

    /// Makes this (squashing) queue track a top-N set instead of queueing its changes,
    /// starting from the set's rows at subscription. Called under the commit lock.
    pub(crate) fn track_list(&self, rows: Vec<ListRow>) {
        if self.squash {
            self.queue.lock().list = Some(ListSquash {
                shown: rows.clone(),
                current: rows,
                pending: 0,
                seq: None,
            });
        }
    }

    /// A squashing top-N feed: the group's set after the commit whose items were just pushed
    /// (the next batch is the difference between what the consumer has and this).
    pub(crate) fn set_list(&self, rows: Vec<ListRow>) {
        if let Some(list) = &mut self.queue.lock().list {
            list.current = rows;
        }
    }

    /// Records how far the initial scan has read (`None`: all rows). Called under the
    /// commit lock, like `push`.
    pub(crate) fn scanned(&self, last: Option<Vec<u8>>) {
        self.queue.lock().scanned = last;
    }

    /// The consumer's waker, to wake it later (after the commit lock is released).
    pub(crate) fn take_waker(&self) -> Option<std::task::Waker> {
        self.waker.take()
    }

    /// Merges `item` into the queued change of the same row: oldest `old_val`, newest
    /// `new_val`; an entry whose net effect is nothing is dropped. Returns false when there is
    /// nothing to merge with.
    fn merge(&self, q: &mut Queue, item: &Change) -> bool {
        let Some(key) = item.squash_key() else {
            return false;
        };
        let Some(&pos) = q.by_key.get(&key) else {
            return false;
        };
        let idx = (pos - q.base) as usize;
        let Some(Some(queued)) = q.items.get_mut(idx) else {
            return false;
        };
        let old = queued.old_arc().cloned();
        let new = item.new_arc().cloned();
        if crate::value::identical_rows(old.as_ref(), new.as_ref()) {
            q.items[idx] = None;
            q.live -= 1;
            q.by_key.remove(&key);
            q.trim();
        } else {
            queued.squash_into(item);
        }
        true
    }

    /// Ends the feed: the consumer gets `why` after the queued items, then the end.
    pub(crate) fn close(&self, why: Error) {
        self.queue.lock().closed.get_or_insert(why);
        self.waker.wake();
    }

    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Takes the next item.
    pub(crate) fn pop(&self) -> Next {
        let mut q = self.queue.lock();
        if q.items.is_empty() {
            q.take_list_batch();
        }
        if q.skipped > 0 {
            let n = std::mem::take(&mut q.skipped);
            return Next::Overflow(n);
        }
        while let Some(slot) = q.items.pop_front() {
            q.base += 1;
            if let Some(item) = slot {
                q.live -= 1;
                if let Some(k) = item.squash_key().filter(|_| self.squash) {
                    if q.by_key.get(&k) == Some(&(q.base - 1)) {
                        q.by_key.remove(&k);
                    }
                }
                if q.live == 0 {
                    q.since = None;
                }
                return Next::Item(item);
            }
        }
        match &q.closed {
            Some(e) => Next::Closed(e.clone()),
            None => Next::Empty,
        }
    }

    /// Moves every queued item out at once (a squash window's batch).
    pub(crate) fn drain(&self, out: &mut VecDeque<Change>) -> Option<u64> {
        let mut q = self.queue.lock();
        q.take_list_batch();
        if q.skipped > 0 {
            return Some(std::mem::take(&mut q.skipped));
        }
        q.base += q.items.len() as u64;
        out.extend(q.items.drain(..).flatten());
        q.by_key.clear();
        q.live = 0;
        q.since = None;
        None
    }

    /// How many items wait, and since when the oldest of them waits.
    pub(crate) fn pending(&self) -> (usize, Option<Instant>, bool) {
        let q = self.queue.lock();
        let listed = q.list.as_ref().map_or(0, |l| l.pending);
        (
            q.live + listed,
            q.since,
            q.closed.is_some() || q.skipped > 0,
        )
    }
}

impl Queue {
    /// A squashing top-N feed: turns the changes applied since the last batch into the
    /// edits from the consumer's list to the current set, and queues them.
    fn take_list_batch(&mut self) {
        let Some(list) = &mut self.list else { return };
        if list.pending == 0 {
            return;
        }
        list.pending = 0;
        let seq = list.seq;
        let edits = list_edits(&list.shown, &list.current);
        list.shown.clone_from(&list.current);
        for item in edits {
            let item = match seq {
                Some((seq, commit)) => item.at(seq, commit),
                None => item,
            };
            self.items.push_back(Some(item));
            self.live += 1;
        }
        if self.live == 0 {
            self.since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::change::ChangeKind;
    use super::*;
    use serde_json::json;

    fn change(key: &str, old: Option<i64>, new: Option<i64>) -> Change {
        let k: Arc<[u8]> = Arc::from(key.as_bytes());
        Change::row(
            Some(k),
            old.map(|v| Arc::new(json!(v))),
            new.map(|v| Arc::new(json!(v))),
        )
    }

    fn next_item(s: &Subscriber) -> Option<Change> {
        match s.pop() {
            Next::Item(c) => Some(c),
            _ => None,
        }
    }

    #[test]
    fn overflow_discards_and_counts() {
        let s = Subscriber::new(2, false, false);
        for i in 0..5 {
            let must_wake = s.push(change("a", None, Some(i)));
            assert_eq!(
                must_wake,
                i == 0,
                "only a push into an empty queue needs a wake-up"
            );
        }
        // 2 queued, third push discards them; fourth fills; fifth discards 2 more.
        assert!(matches!(s.pop(), Next::Overflow(4)));
        assert_eq!(next_item(&s).unwrap().new_val(), Some(&json!(4)));
        assert!(matches!(s.pop(), Next::Empty));
    }

    #[test]
    fn squash_merges_per_row_and_drops_no_ops() {
        let s = Subscriber::new(10, true, false);
        s.push(change("a", None, Some(1)));
        s.push(change("b", Some(1), Some(2)));
        s.push(change("a", Some(1), Some(2)));
        s.push(change("b", Some(2), Some(1))); // back to where it was: nothing
        let a = next_item(&s).unwrap();
        assert_eq!(
            (a.kind(), a.old_val(), a.new_val()),
            (ChangeKind::Add, None, Some(&json!(2)))
        );
        assert!(matches!(s.pop(), Next::Empty));
        s.push(change("c", None, Some(1)));
        s.push(change("c", Some(1), None)); // insert then delete: nothing
        assert!(matches!(s.pop(), Next::Empty));
    }

    /// A row that keeps entering and leaving the result while the consumer does not read
    /// left one empty slot per round, without bound (the capacity counts live items only).
    #[test]
    fn rows_squashed_away_leave_no_trail() {
        let s = Subscriber::new(4, true, true);
        s.push(change("x", None, Some(1)));
        for round in 0..10_000 {
            s.push(change("a", None, Some(round)));
            s.push(change("y", None, Some(round)));
            s.push(change("a", Some(round), None));
            s.push(change("y", Some(round), None));
        }
        let q = s.queue.lock();
        assert_eq!(q.live, 1);
        assert!(q.items.len() <= 2 * s.capacity, "{} slots", q.items.len());
        drop(q);
        assert_eq!(next_item(&s).unwrap().new_val(), Some(&json!(1)));
        assert!(matches!(s.pop(), Next::Empty));
    }

    #[test]
    fn close_comes_after_queued_items() {
        let s = Subscriber::new(10, false, false);
        s.push(change("a", None, Some(1)));
        s.close(Error::FeedAborted("gone".into()));
        assert!(next_item(&s).is_some());
        assert!(matches!(s.pop(), Next::Closed(Error::FeedAborted(_))));
    }
}
