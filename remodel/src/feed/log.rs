//! A group's shared log: one copy of each item for every feed of the group.
//!
//! Feeds that watch the same query (and do not squash) read one log, each at its own cursor,
//! the way a broadcast channel works: a write appends its item once, and each consumer's
//! core reads the same memory instead of a private copy. A reader that falls more than its
//! queue size behind loses what it had buffered and gets one overflow item with the count,
//! like a private queue.
//!
//! The log has exactly one writer, the [`Producer`] kept in its group (the hub appends
//! under the table's routes lock, in commit order), and it appends without taking a lock:
//! a write that reaches a thousand unshared groups pays a thousand appends, so each must
//! cost a store or two, not a lock and unlock (two atomic read-modify-writes, which also
//! wait for the cache misses of the writes before them). Items live in blocks of
//! [`BLOCK`] slots; the producer fills a slot and then publishes the new end (`tail`), so a
//! reader may read every slot below the `tail` it loaded, lock-free. The lock is taken only
//! once per block (to add it and trim old ones), by a reader moving to another block, and to
//! park or wake a reader.
//!
//! Waking without a lost wakeup: a reader with nothing to read lists its waker, raises
//! `waiting` and then looks at `tail` once more; the producer publishes `tail` and then
//! looks at `waiting`. A sequentially consistent fence sits between the store and the load
//! on both sides, so at least one of them sees the other: the reader reads the new item,
//! or the producer wakes it (or both: a spurious wake, harmless). The hub appends a
//! change's item to every log it reaches first and runs one fence for all of them.
//!
//! Memory: the log keeps the blocks a reader may still need (at most the largest queue size
//! behind the end), each reader holds the one block it is reading, and a block frees its
//! items when the last holder lets go.
//!
//! The model checker loom runs this code (`loom_models`, in .ci/run): appends across blocks
//! with one and two readers, a lagging reader whose blocks are trimmed and reused, a reader
//! dropped in the middle of a block. Every `unsafe` block states its argument where it is.

use super::change::{Change, Item};
use super::queue::Next;
use crate::Error;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;
use sync::{fence, AtomicBool, AtomicU64, AtomicUsize, Mutex, UnsafeCell};
#[cfg(not(loom))]
use sync::{AtomicAccess, CellAccess};

#[cfg(all(test, loom))]
mod loom_models;
mod sync;

/// Slots per block: a block is added (under the lock) once per this many items. The model
/// checker uses blocks of two, so that a few items cross block boundaries.
const BLOCK: usize = if cfg!(loom) { 2 } else { 32 };

/// A handle on a block: the log's list, the producer and each reader hold one. `Arc` (loom's
/// under `--cfg loom`, which checks that a block is emptied or reused only after every
/// other holder let go of it); the log itself is shared by a plain `Arc`.
type BlockRef = sync::Arc<Block>;

/// A run of [`BLOCK`] consecutive items of the log, from position `start` on.
struct Block {
    start: u64,
    slots: [Slot; BLOCK],
    /// How many slots (from the first) hold an item, for `Drop` only (readers go by the
    /// log's `tail`): written by the producer when it leaves the block (full) or is dropped,
    /// not at every append, since it holds the block until then (and reset to 0 when the
    /// emptied block is kept for reuse).
    filled: AtomicUsize,
    /// Slots from this one on may be read by more than one reader. Below it, a slot was
    /// appended while the log had at most one reader, and only that reader can ever read it
    /// (a reader joining later starts at the end), so it moves the item out instead of
    /// cloning it: no atomic add now and no atomic sub when the block goes, on a line that
    /// is usually not in the cache any more.
    shared_from: AtomicUsize,
    /// The slots the sole reader moved out, `taken.0..taken.1` (written by that reader,
    /// read by `Drop`).
    taken: (AtomicUsize, AtomicUsize),
}

struct Slot(UnsafeCell<MaybeUninit<Item>>);

// SAFETY: `Block` is `Sync` but for its slots' `UnsafeCell`s (the other fields are atomics,
// and `start` changes only through `&mut Block`). Every access to a slot, from any thread:
// - Written by the log's one producer (appending takes `&mut Producer`) at its position
//   `tail`, in the block it holds, once per use of the block; the log's `tail` is stored
//   past the slot (release) only after that write.
// - Read (cloned) or moved out by a reader at a position below a `tail` it loaded with
//   acquire, so after the write; never written by a reader. Moved out only by the one
//   reader that can ever read the slot (below `shared_from`), once, and then skipped by
//   `clear` (`taken`); cloned otherwise, which leaves the item in place.
// - Dropped (`clear`) or written again after `reuse` only through `&mut Block`, which the
//   log gets from `Arc::get_mut` or the last handle's drop: every reader and the producer
//   have let go of the block, and their accesses happen before (the `Arc`'s release and
//   acquire).
// The items are `Send + Sync` (`Shared` of `Send + Sync` data), so reading them on any
// thread, and moving one out to another, is sound.
unsafe impl Sync for Block {}

impl Block {
    fn new(start: u64, shared: bool) -> BlockRef {
        sync::Arc::new(Block {
            start,
            slots: std::array::from_fn(|_| Slot(UnsafeCell::new(MaybeUninit::uninit()))),
            filled: AtomicUsize::new(0),
            shared_from: AtomicUsize::new(if shared { 0 } else { BLOCK }),
            taken: (AtomicUsize::new(0), AtomicUsize::new(0)),
        })
    }

    fn holds(&self, pos: u64) -> bool {
        pos >= self.start && pos < self.start + BLOCK as u64
    }
}

impl Block {
    /// The item at `pos` for the reader at `pos`: moved out when no other reader can read
    /// it (see `shared_from`), cloned otherwise.
    ///
    /// # Safety
    /// The caller has loaded the log's `tail` with acquire ordering and found it above
    /// `pos`; `pos` is in this block; the caller is a reader of the log (joined, not left)
    /// whose cursor is `pos`, and it moves its cursor past `pos` right after, so that it
    /// never asks for a position twice.
    unsafe fn take(&self, pos: u64) -> Change {
        let i = (pos - self.start) as usize;
        let (from, to) = (&self.taken.0, &self.taken.1);
        let (f, t) = (from.load(Ordering::Relaxed), to.load(Ordering::Relaxed));
        let contiguous = f == t || t == i;
        if i < self.shared_from.load(Ordering::Acquire) && contiguous {
            if f == t {
                from.store(i, Ordering::Relaxed);
            }
            to.store(i + 1, Ordering::Relaxed);
            // SAFETY: moving the item out is sound when the slot holds an item, nothing
            // else reads or drops it afterwards, and nothing writes it meanwhile.
            // - It holds one: the producer wrote slot `i` before storing a `tail` above
            //   `pos` (release), and the caller loaded that `tail` (acquire), so the write
            //   happens before this read. The block is the one the producer filled at `pos`
            //   (`pos` is in it, and a block is emptied and reused only when no one else
            //   holds it, which the caller's handle rules out).
            // - No other reader reads it. A reader can read `pos` only if it joined (and
            //   has not left) before `pos` was appended: a reader starts at the `tail` of
            //   its join, and joins and appends are serialised (the hub's routes lock). A
            //   second reader joining before that append either found this block the last
            //   one and lowered `shared_from` to its cursor, at or below `i`, or left the
            //   next blocks to be made shared from their first slot (`live > 1`); both
            //   happened before the append of `pos`, so before the `tail` the caller
            //   loaded (acquire), and this load of `shared_from` would see them. So
            //   `i < shared_from` means the caller is the only reader of `pos`.
            // - This reader reads it once (the caller's cursor moves past `pos`).
            // - `clear` skips it: `taken` now covers `i` (the range stays contiguous:
            //   `contiguous` above), and the reader's stores reach `clear` through the
            //   block's `Arc` (the reader lets go of its handle before the block is
            //   emptied).
            // - Nothing writes the slot until the block is emptied and reused, which needs
            //   every handle, the caller's too.
            return self.slots[i]
                .0
                .with_mut(|slot| unsafe { (*slot).assume_init_read() })
                .into_change();
        }
        // SAFETY: reading the item in place is sound when the slot holds an item and no
        // one moves it out, drops it or writes the slot while the reference lives (it is
        // cloned at once and the reference dropped).
        // - It holds one: the producer wrote slot `i` before storing a `tail` above `pos`
        //   (release), and the caller loaded that `tail` (acquire), so the write happens
        //   before this read; the block is the one the producer filled at `pos` (`pos` is
        //   in it, and it is emptied and reused only when no one else holds it).
        // - Not moved out: a reader moves a slot out only when it finds it below
        //   `shared_from`. If another reader can read this slot, both joined before its
        //   append, and the later join made the block shared from this slot or before it
        //   (or made the block shared from the start) before that append, so before either
        //   reader's acquire load of a `tail` above it: neither finds it below
        //   `shared_from`. If no other reader can read it, only the caller could move it
        //   out, and the caller reads each position once.
        // - Not dropped or written: `clear` and the producer's write after `reuse` need
        //   `&mut Block`, that is, no other handle, and the caller holds one.
        self.slots[i]
            .0
            .with(|slot| unsafe { (*slot).assume_init_ref() }.clone_local())
            .into_change()
    }
}

impl Block {
    /// Drops the items still in the block (those not moved out), leaving it empty.
    fn clear(&mut self) {
        let filled = self.filled.with_mut(std::mem::take);
        let taken = self.taken.0.with_mut(|f| *f)..self.taken.1.with_mut(|t| *t);
        for (i, slot) in self.slots[..filled].iter().enumerate() {
            if !taken.contains(&i) {
                // SAFETY: dropping the item in place is sound when the slot holds one that
                // nothing else reads or drops, now or later.
                // - It holds one: the first `filled` slots were written. `filled` is stored
                //   by the producer when it leaves the block (all `BLOCK` written) or is
                //   dropped (the count it wrote), each time before it lets go of its
                //   handle; `&mut self` means every handle is gone, and the `Arc`'s release
                //   and acquire make the producer's writes and that store visible here.
                // - Not moved out: those in `taken` were, by the block's sole reader (its
                //   stores of `taken` are visible here likewise), and are skipped.
                // - Nothing else reads it: `&mut self` (no handle left, no reader).
                // - Not dropped again: `filled` is now 0, so neither a later `clear` nor
                //   `Drop` comes back to it, and the producer writes the slot anew only
                //   after `reuse`.
                slot.0
                    .with_mut(|slot| unsafe { (*slot).assume_init_drop() });
            }
        }
        self.taken.0.with_mut(|f| *f = 0);
        self.taken.1.with_mut(|t| *t = 0);
    }

    /// Makes an emptied block (see [`Block::clear`]) the block from `start` on.
    fn reuse(&mut self, start: u64, shared: bool) {
        self.start = start;
        self.shared_from
            .with_mut(|from| *from = if shared { 0 } else { BLOCK });
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The shared side of a log: what readers and the producer both reach.
#[derive(Default)]
pub(crate) struct Log {
    state: Mutex<State>,
    /// Positions below `tail` hold items readers may read.
    tail: AtomicU64,
    /// A mirror of `State::epoch`, written under the lock, so that a reader that has caught
    /// up can tell without locking that it is already listed to be woken.
    epoch: AtomicU64,
    /// Some reader is listed in `State::waiters` (see the module doc).
    waiting: AtomicBool,
    /// A mirror of `State::closed.is_some()`, for the producer.
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The blocks a reader may still need, in order; the first one starts at the log's head.
    blocks: VecDeque<BlockRef>,
    /// Each reader's cursor as it last told the log (at most its real one) and queue size,
    /// by slot.
    readers: Vec<Option<(u64, usize)>>,
    live: usize,
    /// Readers waiting for an item, woken (and cleared) by the next push.
    waiters: Vec<(usize, Waker)>,
    /// Incremented whenever `waiters` is handed out, so a reader knows whether it is listed.
    epoch: u64,
    /// Boxed: an error is large, and a log that is never closed should not pay for it.
    closed: Option<Box<Error>>,
    /// The largest queue size of the readers (older items are dropped).
    cap: usize,
    /// A trimmed block that nothing else held, emptied, for the producer's next block: a
    /// log that a write reaches with every change adds a block every [`BLOCK`] items, and
    /// a thousand of them would otherwise allocate and free one each that often.
    spare: Option<BlockRef>,
    /// The log position at which the next scan of the readers' cursors may run.
    scan_at: u64,
}

impl State {
    /// The first position the log still holds.
    fn head(&self, tail: u64) -> u64 {
        self.blocks.front().map_or(tail, |b| b.start)
    }

    /// The block holding `pos`, if the log still has it.
    fn block_at(&self, pos: u64) -> Option<&BlockRef> {
        let first = self.blocks.front()?.start;
        let at = pos.checked_sub(first)? / BLOCK as u64;
        self.blocks.get(at as usize)
    }

    /// A block for the items from `start` on: the spare one if there is one.
    fn new_block(&mut self, start: u64, shared: bool) -> BlockRef {
        if let Some(mut b) = self.spare.take() {
            if let Some(spare) = sync::Arc::get_mut(&mut b) {
                spare.reuse(start, shared);
                return b;
            }
        }
        Block::new(start, shared)
    }

    /// Lets go of the first block; kept as the spare (emptied) if nothing else holds it.
    fn drop_front(&mut self) {
        let Some(mut b) = self.blocks.pop_front() else {
            return;
        };
        if self.spare.is_none() {
            if let Some(empty) = sync::Arc::get_mut(&mut b) {
                empty.clear();
                self.spare = Some(b);
            }
        }
    }

    /// Drops the blocks no reader can need: those wholly more than the largest queue size
    /// behind `tail`, and those every reader has passed. The scan of cursors runs at most
    /// once per `2 × live` items, so it costs a constant per item however many readers
    /// there are.
    fn trim(&mut self, tail: u64) {
        let keep_from = tail.saturating_sub(self.cap as u64);
        while self.blocks.len() > 1 && self.blocks[0].start + BLOCK as u64 <= keep_from {
            self.drop_front();
        }
        if self.blocks.len() > 1 && tail >= self.scan_at {
            let min = self
                .readers
                .iter()
                .flatten()
                .map(|r| r.0)
                .min()
                .unwrap_or(u64::MAX);
            while self.blocks.len() > 1 && self.blocks[0].start + BLOCK as u64 <= min {
                self.drop_front();
            }
            self.scan_at = tail + (2 * self.live).max(BLOCK) as u64;
        }
    }
}

/// The one writer of a log, kept in its group: appending needs `&mut`, so the borrow
/// checker keeps it single.
#[derive(Default)]
pub(crate) struct Producer {
    log: Arc<Log>,
    /// The block being filled, and the position of the next item.
    block: Option<BlockRef>,
    tail: u64,
}

impl Producer {
    /// The shared side, for readers to join.
    pub(crate) fn log(&self) -> &Arc<Log> {
        &self.log
    }

    #[cfg(test)]
    /// Appends an item; adds the wakers of the readers that were waiting to `wakes` (the
    /// caller wakes them after releasing the commit lock).
    pub(crate) fn push(&mut self, item: Change, wakes: &mut Vec<Waker>) {
        if self.append(item) {
            fence(Ordering::SeqCst);
            self.log.wake_waiting(wakes);
        }
    }

    /// Appends an item without looking for waiting readers; returns whether it was
    /// appended. The caller must then run `fence(SeqCst)` and [`Log::wake_waiting`]
    /// (once for all the logs a change reached: the fence is the expensive part).
    pub(crate) fn append(&mut self, item: Change) -> bool {
        let log = &*self.log;
        if log.closed.load(Ordering::Acquire) {
            return false;
        }
        let block = match &self.block {
            Some(b) if b.holds(self.tail) => b,
            _ => {
                if let Some(full) = &self.block {
                    full.filled.store(BLOCK, Ordering::Release);
                }
                let mut s = log.state.lock();
                let shared = s.live > 1;
                let b = s.new_block(self.tail, shared);
                s.blocks.push_back(b.clone());
                s.trim(self.tail);
                drop(s);
                self.block.insert(b)
            }
        };
        let at = (self.tail - block.start) as usize;
        // SAFETY: writing the slot is sound when nothing else accesses it meanwhile and
        // no item in it is lost or dropped twice.
        // - Only this producer writes slots, and it is the log's only one (appending takes
        //   `&mut self`).
        // - No reader reads the slot yet: readers read only below a `tail` they loaded, and
        //   the log's `tail` is `self.tail`, stored past `at` only below, after this write
        //   (release). A reader still holding this block from an earlier use cannot
        //   exist: the block was emptied and reused only through `Arc::get_mut`, with no
        //   other handle. `clear` needs `&mut Block`, and this producer holds a handle.
        // - The slot holds no item: `at` is `self.tail - start`, positions only grow, so
        //   the slot was not written since the block was made, or since `clear` emptied it
        //   for reuse. `write` does not drop what was there.
        block.slots[at]
            .0
            .with_mut(|slot| unsafe { (*slot).write(item.into_item()) });
        self.tail += 1;
        log.tail.store(self.tail, Ordering::Release);
        true
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if let Some(block) = &self.block {
            // The items written into the block the producer was filling.
            let filled = (self.tail - block.start) as usize;
            block.filled.store(filled, Ordering::Release);
        }
    }
}

/// A reader's own position in a log (kept by its feed).
pub(crate) struct Reader {
    slot: usize,
    capacity: usize,
    /// The reader's cursor: the position of the next item it reads.
    cursor: u64,
    /// The block holding `cursor`, once the reader has been there.
    block: Option<BlockRef>,
    /// The log epoch in which this reader's waker was listed, and that waker.
    listed: Option<(u64, Waker)>,
    /// While the feed's initial rows are read in chunks: from which log position on each
    /// scan frontier holds (the last primary key read, or `None` once the scan is done).
    /// An item about a row the scan has not reached yet is skipped: the scan reads the row
    /// as it is after that item. Boxed, and only while the scan lasts: a million idle feeds
    /// should not carry an empty list each.
    frontier: Option<Box<Frontier>>,
}

/// Scan frontiers: from which log position on, the last primary key read (`None`: all).
type Frontier = Vec<(u64, Option<Vec<u8>>)>;

impl Reader {
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records that, from the log's current end on, the initial scan has read every row up
    /// to `last` (`None`: all of them).
    pub(crate) fn scanned(&mut self, log: &Log, last: Option<Vec<u8>>) {
        self.frontier
            .get_or_insert_with(Box::default)
            .push((log.tail.load(Ordering::Acquire), last));
    }

    fn visible(&self, seq: u64, item: &Change) -> bool {
        let Some(frontier) = &self.frontier else {
            return true;
        };
        let Some((_, last)) = frontier.iter().rev().find(|(from, _)| *from <= seq) else {
            return frontier.is_empty();
        };
        match (last, item.key()) {
            (None, _) => true,
            (Some(last), Some(key)) => **key <= **last,
            (Some(_), None) => true,
        }
    }

    /// Forgets the frontier once the reader is past the end of the scan.
    fn settle_frontier(&mut self) {
        if let Some((from, None)) = self.frontier.as_ref().and_then(|f| f.last()) {
            if self.cursor >= *from {
                self.frontier = None;
            }
        }
    }
}

impl Log {
    /// Hands out the wakers of waiting readers. Runs after a `fence(SeqCst)` that follows
    /// the appends (see the module doc); the hub runs it once for every log a change
    /// reached.
    pub(crate) fn wake_waiting(&self, wakes: &mut Vec<Waker>) {
        if self.waiting.load(Ordering::Relaxed) {
            let mut s = self.state.lock();
            self.waiting.store(false, Ordering::Relaxed);
            if !s.waiters.is_empty() {
                s.epoch += 1;
                self.epoch.store(s.epoch, Ordering::Release);
                wakes.extend(s.waiters.drain(..).map(|(_, w)| w));
            }
        }
    }

    /// Adds a reader that starts with the next item pushed. Called under the routes lock,
    /// which the producer also holds to push, so the end read here is exact.
    pub(crate) fn join(&self, capacity: usize) -> Reader {
        let capacity = capacity.max(1);
        let cursor = self.tail.load(Ordering::Acquire);
        let mut s = self.state.lock();
        let entry = Some((cursor, capacity));
        // A free slot, if some reader left (looked for only then: no list of free slots,
        // which every log of a million would carry).
        let free = if s.live < s.readers.len() {
            s.readers.iter().position(Option::is_none)
        } else {
            None
        };
        let slot = match free {
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
        s.cap = s.cap.max(capacity);
        if s.live > 1 {
            // From here on this block's slots have more than one reader.
            if let Some(b) = s.blocks.back().filter(|b| b.holds(cursor)) {
                let at = (cursor - b.start) as usize;
                b.shared_from.fetch_min(at, Ordering::Release);
            }
        }
        Reader {
            slot,
            capacity,
            cursor,
            block: None,
            listed: None,
            frontier: None,
        }
    }

    pub(crate) fn leave(&self, r: &Reader) {
        let mut s = self.state.lock();
        s.readers[r.slot] = None;
        while s.readers.last().is_some_and(Option::is_none) {
            s.readers.pop();
        }
        s.live -= 1;
        s.cap = s.readers.iter().flatten().map(|r| r.1).max().unwrap_or(0);
        s.waiters.retain(|(slot, _)| *slot != r.slot);
        s.scan_at = 0;
        let tail = self.tail.load(Ordering::Acquire);
        s.trim(tail);
    }

    /// Ends the log: readers get `why` after the items they have not read.
    pub(crate) fn close(&self, why: Error) {
        let waiters: Vec<(usize, Waker)> = {
            let mut s = self.state.lock();
            s.closed.get_or_insert_with(|| Box::new(why));
            self.closed.store(true, Ordering::Release);
            s.epoch += 1;
            self.epoch.store(s.epoch, Ordering::Release);
            s.waiters.drain(..).collect()
        };
        waiters.into_iter().for_each(|(_, w)| w.wake());
    }

    /// The reader's next item; with nothing to read, registers `waker` and returns `Empty`.
    pub(crate) fn next(&self, r: &mut Reader, waker: &Waker) -> Next {
        loop {
            let tail = self.tail.load(Ordering::Acquire);
            if r.cursor < tail {
                let behind = tail - r.cursor;
                if behind > r.capacity as u64 {
                    // Discard whole queues' worth, as a private queue would have on overflow.
                    let skipped = ((behind - 1) / r.capacity as u64) * r.capacity as u64;
                    r.cursor += skipped;
                    self.tell(r);
                    return Next::Overflow(skipped);
                }
                if !r.block.as_ref().is_some_and(|b| b.holds(r.cursor)) {
                    let mut s = self.state.lock();
                    Self::note(&mut s, r);
                    let head = s.head(tail);
                    let Some(block) = s.block_at(r.cursor).cloned() else {
                        // Trimmed past this reader (cannot happen while queue sizes hold,
                        // but a reader must never read a wrong item): report the gap.
                        let skipped = head.saturating_sub(r.cursor).max(1);
                        drop(s);
                        r.cursor += skipped;
                        r.block = None;
                        self.tell(r);
                        return Next::Overflow(skipped);
                    };
                    drop(s);
                    r.block = Some(block);
                }
                let block = r.block.as_ref().expect("set above");
                // SAFETY: `take`'s contract holds: `tail` was loaded above with acquire
                // ordering and `r.cursor < tail`; the block holds `r.cursor` (checked above,
                // or found by `block_at` for that position); `r` is a reader of this log
                // (a `Reader` comes from `join`, and `leave` is its last use), at
                // `r.cursor`, and the cursor moves past it on the next line.
                let item = unsafe { block.take(r.cursor) };
                let pos = r.cursor;
                r.cursor += 1;
                let shown = r.visible(pos, &item);
                r.settle_frontier();
                if shown {
                    return Next::Item(item);
                }
                continue;
            }
            // Caught up and listed with this waker in the current epoch: nothing to do. A
            // push after these loads moves the epoch and wakes the listed waker.
            if let Some((epoch, listed)) = &r.listed {
                if *epoch == self.epoch.load(Ordering::Acquire) && listed.will_wake(waker) {
                    return Next::Empty;
                }
            }
            let mut s = self.state.lock();
            Self::note(&mut s, r);
            if let Some(e) = &s.closed {
                if self.tail.load(Ordering::Acquire) == r.cursor {
                    return Next::Closed((**e).clone());
                }
                continue;
            }
            Self::list(&mut s, r, waker);
            drop(s);
            self.waiting.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.tail.load(Ordering::Acquire) == r.cursor {
                return Next::Empty;
            }
            // An item came in between: read it (the listing stays; a later wake is spurious).
        }
    }

    /// Tells the log the reader's cursor (for trimming).
    fn tell(&self, r: &Reader) {
        Self::note(&mut self.state.lock(), r);
    }

    fn note(s: &mut State, r: &Reader) {
        s.readers[r.slot] = Some((r.cursor, r.capacity));
    }

    /// Puts the reader's waker on the list the next push wakes (once per epoch).
    fn list(s: &mut State, r: &mut Reader, waker: &Waker) {
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use serde_json::json;

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
        let mut p = Producer::default();
        let log = p.log().clone();
        let waker = futures_util::task::noop_waker();
        let mut fast = log.join(100);
        let mut slow = log.join(3);
        let mut wakes = Vec::new();
        for i in 0..10 {
            p.push(item(i), &mut wakes);
            assert_eq!(val(log.next(&mut fast, &waker)), Some(i));
        }
        assert!(matches!(log.next(&mut slow, &waker), Next::Overflow(9)));
        assert_eq!(val(log.next(&mut slow, &waker)), Some(9));
        assert!(matches!(log.next(&mut slow, &waker), Next::Empty));
        // Both are waiting now: the next push hands out both wakers, once.
        assert!(matches!(log.next(&mut fast, &waker), Next::Empty));
        assert!(matches!(log.next(&mut fast, &waker), Next::Empty));
        wakes.clear();
        p.push(item(10), &mut wakes);
        assert_eq!(wakes.len(), 2);
        wakes.clear();
        p.push(item(11), &mut wakes);
        assert!(wakes.is_empty(), "nobody listed any more");
        assert_eq!(val(log.next(&mut fast, &waker)), Some(10));
        assert_eq!(val(log.next(&mut slow, &waker)), Some(10));
    }

    #[test]
    fn blocks_every_reader_passed_are_freed() {
        let mut p = Producer::default();
        let log = p.log().clone();
        let waker = futures_util::task::noop_waker();
        let mut a = log.join(1_000_000);
        let mut wakes = Vec::new();
        for i in 0..10_000 {
            p.push(item(i), &mut wakes);
            assert_eq!(val(log.next(&mut a, &waker)), Some(i));
        }
        assert!(log.state.lock().blocks.len() <= 3);
        // A reader that stops reading keeps everything within its queue size, no more.
        let mut b = log.join(100);
        log.leave(&a);
        for i in 0..10_000 {
            p.push(item(i), &mut wakes);
        }
        assert!(log.state.lock().blocks.len() <= 100 / BLOCK + 2);
        assert!(matches!(log.next(&mut b, &waker), Next::Overflow(9_900)));
        assert_eq!(val(log.next(&mut b, &waker)), Some(9_900));
    }

    #[test]
    fn a_reader_joining_late_starts_at_the_tail_and_close_ends_all() {
        let mut p = Producer::default();
        let log = p.log().clone();
        let waker = futures_util::task::noop_waker();
        let mut wakes = Vec::new();
        let mut a = log.join(10);
        p.push(item(1), &mut wakes);
        let mut b = log.join(10);
        p.push(item(2), &mut wakes);
        assert_eq!(val(log.next(&mut b, &waker)), Some(2));
        log.close(Error::FeedAborted("gone".into()));
        p.push(item(3), &mut wakes);
        // A reader that is behind reads what is there, then the end.
        assert_eq!(val(log.next(&mut a, &waker)), Some(1));
        assert_eq!(val(log.next(&mut a, &waker)), Some(2));
        assert!(matches!(log.next(&mut a, &waker), Next::Closed(_)));
        assert!(matches!(log.next(&mut b, &waker), Next::Closed(_)));
        log.leave(&a);
        log.leave(&b);
    }

    /// Items are moved out to a sole reader and cloned for shared ones: whoever joins,
    /// leaves or stops reading when, every item is dropped exactly once (a shared value's
    /// count comes back to one; a double drop would take it below, a leak keep it above).
    #[test]
    fn items_moved_or_cloned_are_dropped_once() {
        let v = Arc::new(json!("row"));
        let it = || Change::row(None, None, Some(v.clone()));
        let waker = futures_util::task::noop_waker();
        let mut wakes = Vec::new();
        {
            let mut p = Producer::default();
            let log = p.log().clone();
            let mut a = log.join(1000);
            for _ in 0..10 {
                p.push(it(), &mut wakes);
            }
            // `b` joins in the middle of a block: from here on items are shared.
            let mut b = log.join(1000);
            for _ in 0..50 {
                p.push(it(), &mut wakes);
            }
            let mut got = 0;
            while let Next::Item(_) = log.next(&mut a, &waker) {
                got += 1;
            }
            assert_eq!(got, 60);
            for _ in 0..20 {
                assert!(matches!(log.next(&mut b, &waker), Next::Item(_)));
            }
            log.leave(&a);
            // Alone again: `b` moves items out from the next block on; `c` never reads.
            for _ in 0..70 {
                p.push(it(), &mut wakes);
            }
            let mut got = 0;
            while let Next::Item(_) = log.next(&mut b, &waker) {
                got += 1;
            }
            assert_eq!(got, 100);
            let c = log.join(1000);
            for _ in 0..5 {
                p.push(it(), &mut wakes);
            }
            log.leave(&b);
            log.leave(&c);
            drop((a, b, c));
        }
        // This thread keeps handles of the last items it read (see `shared.rs`).
        crate::feed::shared::local::flush();
        assert_eq!(Arc::strong_count(&v), 1);
    }

    /// One producer thread, readers on other threads that park when caught up: every reader
    /// sees every item once, in order (or an overflow count that accounts for the gap), and
    /// none is left waiting for an item that was pushed (a lost wakeup hangs the test).
    #[test]
    fn concurrent_readers_see_every_item_in_order() {
        use std::sync::mpsc;
        use std::task::{Context, Poll};
        const N: i64 = 200_000;
        let mut p = Producer::default();
        let log = p.log().clone();
        let (tx, rx) = mpsc::channel();
        let readers: Vec<_> = [1usize << 20, 1 << 20, 64]
            .into_iter()
            .map(|cap| {
                let log = log.clone();
                let mut r = log.join(cap);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut next = 0i64;
                    futures::executor::block_on(std::future::poll_fn(
                        |cx: &mut Context<'_>| loop {
                            match log.next(&mut r, cx.waker()) {
                                Next::Item(c) => {
                                    let v = c.new_val().and_then(|v| v.as_i64()).unwrap();
                                    assert_eq!(v, next, "in order, once");
                                    next += 1;
                                    if next == N {
                                        return Poll::Ready(());
                                    }
                                }
                                Next::Overflow(k) => {
                                    assert!(cap < N as usize, "only the small reader overflows");
                                    next += k as i64;
                                }
                                Next::Closed(_) => panic!("not closed"),
                                Next::Empty => return Poll::Pending,
                            }
                        },
                    ));
                    log.leave(&r);
                    tx.send(()).unwrap();
                })
            })
            .collect();
        let mut wakes = Vec::new();
        for i in 0..N {
            p.push(item(i), &mut wakes);
            wakes.drain(..).for_each(Waker::wake);
            if i % 1000 == 0 {
                std::thread::yield_now();
            }
        }
        for _ in 0..readers.len() {
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("every reader finishes (no lost wakeup)");
        }
        readers.into_iter().for_each(|t| t.join().unwrap());
    }
}
