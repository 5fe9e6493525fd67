//! A group of identical feeds: its operator (what it watches, the items it makes of a change
//! or a commit, once for all its feeds) and its members.

use super::Delivery;
use crate::feed::change::Change;
use crate::feed::edits::ListRow;
use crate::feed::log::{Log, Producer, Reader};
use crate::feed::ops::{AnyOperator, GroupKey};
use crate::feed::queue::Subscriber;
use crate::Error;
use std::cell::RefCell;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::task::Waker;

pub(super) struct Group {
    /// What the group's feeds watch, by which the group is found; `None` for a rows group
    /// of a point or `get_all` query, found through its first route instead (its operator
    /// says what it watches): a million point feeds need not keep a million keys twice.
    pub(super) key: Option<Arc<GroupKey>>,
    pub(super) op: AnyOperator,
    pub(super) members: Members,
}

/// The feeds of a group: readers of the group's log, and feeds with a queue of their own
/// (those that squash, since merging is per consumer).
#[derive(Default)]
pub(super) struct Members {
    log: Option<GroupLog>,
    /// How many feeds read the log.
    readers: usize,
    /// The feeds with a queue of their own, by member id.
    queues: Vec<(u64, Arc<Subscriber>)>,
}

/// A group's log and its one writer.
struct GroupLog {
    /// The writer, in a cell so that items are appended through a shared borrow of the
    /// routes: the per-change pass over the groups keeps the logs it appended to (to wake
    /// their readers after one fence for all of them) while it looks other groups up. The
    /// routes are used under their lock, by one thread at a time.
    writer: RefCell<Producer>,
    /// The writer's log, lent out for as long as the group is borrowed.
    log: Arc<Log>,
}

/// A feed's place among a group's members.
pub(super) enum Member {
    /// A reader of the group's log.
    Reader,
    /// A queue of its own, by member id.
    Queue(u64),
}

impl Members {
    /// Adds a feed, as `delivery` says; returns its place, and the log and its reader
    /// position for a reader of the log. A squashing feed of an operator whose result is a
    /// list (top-N) tracks the list from here on (`list`).
    pub(super) fn join(
        &mut self,
        id: u64,
        delivery: Delivery,
        list: impl FnOnce() -> Option<Vec<ListRow>>,
    ) -> (Member, Option<(Arc<Log>, Reader)>) {
        match delivery {
            Delivery::Queue(sub) => {
                if let Some(rows) = list() {
                    // A squashing top-N feed reports batches as the difference between the
                    // set its consumer knows and the set now, starting from this one.
                    sub.track_list(rows);
                }
                self.queues.push((id, sub));
                (Member::Queue(id), None)
            }
            Delivery::Log(capacity) => {
                let log = self
                    .log
                    .get_or_insert_with(|| {
                        let writer = Producer::default();
                        let log = writer.log().clone();
                        GroupLog {
                            writer: RefCell::new(writer),
                            log,
                        }
                    })
                    .log
                    .clone();
                self.readers += 1;
                let reader = log.join(capacity);
                (Member::Reader, Some((log, reader)))
            }
        }
    }

    /// Removes a feed.
    pub(super) fn leave(&mut self, member: &Member) {
        match member {
            Member::Queue(id) => self.queues.retain(|(q, _)| q != id),
            Member::Reader => self.readers -= 1,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.readers == 0 && self.queues.is_empty()
    }

    /// Hands an item to every member without looking for waiting readers of the log;
    /// returns the log if it took the item, in which case the caller runs `fence(SeqCst)`
    /// and then [`Log::wake_waiting`] (once for every group a change reached: the fence is
    /// the expensive part, see `feed::log`). Returning the log spares the caller a second
    /// lookup of the group per change (a cache miss each, for a change reaching a thousand
    /// groups).
    pub(super) fn deliver_deferred(&self, item: Change, wakes: &mut Vec<Waker>) -> Option<&Log> {
        for (_, sub) in &self.queues {
            if sub.push(item.clone()) {
                wakes.extend(sub.take_waker());
            }
        }
        let log = self.log.as_ref()?;
        let appended = log.writer.borrow_mut().append(item);
        appended.then_some(&*log.log)
    }

    /// Hands the items of one step of the group (a commit, or a change of a table it
    /// follows) to every member, numbered in order (the second half of their cursors).
    /// Squashing members of a list-shaped result get the list after the step first
    /// (`list`), so that a batch they take in between is never one step behind the items.
    pub(super) fn deliver_step(
        &self,
        items: Vec<Change>,
        list: impl FnOnce() -> Option<Vec<ListRow>>,
        wakes: &mut Vec<Waker>,
    ) {
        if items.is_empty() {
            return;
        }
        if !self.queues.is_empty() {
            if let Some(rows) = list() {
                for (_, sub) in &self.queues {
                    sub.set_list(rows.clone());
                }
            }
        }
        let mut appended = false;
        for (i, item) in items.into_iter().enumerate() {
            debug_assert!(item.stamp().is_some(), "every item carries its change");
            appended |= self.deliver_deferred(item.numbered(i), wakes).is_some();
        }
        if appended {
            fence(Ordering::SeqCst);
            self.log.as_ref().expect("appended").log.wake_waiting(wakes);
        }
    }

    /// Ends every member's feed with `why` (after the items it has not read).
    pub(super) fn close(&self, why: &Error) {
        if let Some(log) = &self.log {
            log.log.close(why.clone());
        }
        self.queues.iter().for_each(|(_, s)| s.close(why.clone()));
    }
}
