//! What feeds may show: the commit sequence numbers that no crash can take back.
//!
//! A feed never shows a hard-durability write before that write is on disk, and, since items
//! come in commit order, nothing committed after it either. Soft writes are shown at commit
//! (a crash may take back a soft write that a subscriber saw: that is what soft means).
//!
//! The write path tells [`Visibility::committed`] each commit's last sequence number and
//! durability (under the commit lock); a flush tells [`Visibility::durable`] how far the disk
//! has caught up. The visible number is then the last commit when no hard write waits for
//! its flush, and the flushed number otherwise. Feeds compare each item's number with it (one
//! atomic load) and wait, registered here, when it is ahead.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;

#[derive(Default)]
pub(crate) struct Visibility {
    visible: AtomicU64,
    /// Set when the storage failed to flush: what waits for the disk will never be shown.
    failed: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    waiters: Mutex<Vec<Waker>>,
}

#[derive(Default)]
struct State {
    /// The last committed sequence number.
    last: u64,
    /// Everything up to here is on disk.
    durable: u64,
    /// The last hard-durability commit.
    hard: u64,
}

impl Visibility {
    /// Starts after `seq` (everything before it is from an earlier run, on disk).
    pub(crate) fn new(seq: u64) -> Self {
        Visibility {
            visible: AtomicU64::new(seq),
            state: Mutex::new(State {
                last: seq,
                durable: seq,
                hard: seq,
            }),
            waiters: Mutex::default(),
            failed: Default::default(),
        }
    }

    /// The disk will not catch up (a flush failed): wakes everything that waits for it.
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.waiters.lock());
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Whether a flush failed, so that numbers not yet visible never will be.
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// A commit numbered up to `seq` is applied (called under the commit lock, before its
    /// changes reach the feeds).
    pub(crate) fn committed(&self, seq: u64, hard: bool) {
        let mut s = self.state.lock();
        s.last = seq;
        if hard {
            s.hard = seq;
        } else if s.hard <= s.durable {
            self.visible.store(seq, Ordering::Release);
        }
    }

    /// The last committed sequence number (what a flush started now covers).
    pub(crate) fn last(&self) -> u64 {
        self.state.lock().last
    }

    /// Everything committed up to `seq` is on disk.
    pub(crate) fn durable(&self, seq: u64) {
        let visible = {
            let mut s = self.state.lock();
            s.durable = s.durable.max(seq);
            if s.hard <= s.durable {
                s.last
            } else {
                s.durable
            }
        };
        if visible > self.visible.fetch_max(visible, Ordering::AcqRel) {
            let waiters = std::mem::take(&mut *self.waiters.lock());
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// Whether a feed may show the item numbered `seq`.
    pub(crate) fn shows(&self, seq: u64) -> bool {
        seq <= self.visible.load(Ordering::Acquire)
    }

    /// Wakes `waker` when the visible number next advances.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut w = self.waiters.lock();
        if !w.iter().any(|x| x.will_wake(waker)) {
            w.push(waker.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_commits_wait_for_their_flush_and_hold_later_soft_ones() {
        let v = Visibility::new(10);
        v.committed(11, false);
        assert!(v.shows(11));
        v.committed(12, true);
        assert!(!v.shows(12));
        v.committed(13, false); // behind the hard write, in commit order
        assert!(!v.shows(13));
        let upto = v.last();
        v.durable(upto);
        assert!(v.shows(13));
        v.committed(14, true);
        v.durable(12); // an older flush finishing late changes nothing
        assert!(!v.shows(14));
    }
}
