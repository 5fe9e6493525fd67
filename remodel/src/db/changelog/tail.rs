//! The newest changes kept in memory as well (while feeds are open, see
//! [`ChangeLog::keep_tail`]), each with the plain feed item a table feed delivers for it.

use super::{ChangeLog, Logged};
use crate::db::write::Committed;
use crate::feed::Change;
use crate::Result;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How many of the newest changes the log keeps in memory as well.
const TAIL: usize = 16_384;

/// One change in the in-memory tail: the plain item a table feed gets for it (as
/// `feed::hub` makes it), which also holds the change (key, documents, sequence number).
struct TailEntry {
    table: u32,
    item: Change,
}

#[derive(Default)]
pub(super) struct Tail {
    /// Interned table names (entries carry an index: no string compare or pointer chase per
    /// entry when a feed replays them).
    names: Vec<Arc<str>>,
    entries: VecDeque<TailEntry>,
}

impl Tail {
    fn id(&mut self, table: &str) -> u32 {
        match self.names.iter().position(|n| &**n == table) {
            Some(i) => i as u32,
            None => {
                self.names.push(Arc::from(table));
                (self.names.len() - 1) as u32
            }
        }
    }

    /// Calls `f` with each change of `table` numbered `from` and above, in order, when the
    /// tail holds them all: it holds every change from its first one on, so a cursor at or
    /// after that one reads from memory. `None`: `from` is older (read the segments).
    pub(super) fn for_each_from(
        &self,
        table: &str,
        from: u64,
        f: &mut impl FnMut(&Logged<'_>) -> Result<()>,
    ) -> Option<Result<()>> {
        let seq = |e: &TailEntry| e.item.change_seq().unwrap_or(0);
        if self.entries.front().is_none_or(|e| seq(e) > from) {
            return None;
        }
        let Some(id) = self.names.iter().position(|n| &**n == table) else {
            return Some(Ok(()));
        };
        let id = id as u32;
        let at = self.entries.partition_point(|e| seq(e) < from);
        for e in self.entries.range(at..) {
            if e.table == id {
                let read = f(&Logged {
                    seq: seq(e),
                    commit: e.item.stamp().map_or(0, |(_, commit)| commit),
                    key: e.item.key().map_or(&[][..], |k| &k[..]),
                    old: e.item.old_arc(),
                    new: e.item.new_arc(),
                    plain: Some(&e.item),
                });
                if read.is_err() {
                    return Some(read);
                }
            }
        }
        Some(Ok(()))
    }
}

impl ChangeLog {
    /// Whether a commit whose last change is numbered `last` goes into the in-memory tail;
    /// `watched`: a feed is open. The tail serves resuming feeds, whose cursors only feeds
    /// hand out: a cursor within the tail's length comes from a feed open at most that many
    /// changes ago. So the tail is filled while a feed is open and for `TAIL` changes after
    /// the last one closed (every cursor that could read it from memory still does); after
    /// that it is emptied, and no longer costs the inserts that keep it (about 1.5 µs each:
    /// the documents of 16,384 changes held, and freed long after they were written).
    pub(crate) fn keep_tail(&self, watched: bool, last: u64) -> bool {
        if !self.resumable {
            return false;
        }
        if watched {
            self.last_watched.store(last, Ordering::Relaxed);
            return true;
        }
        let since = last.saturating_sub(self.last_watched.load(Ordering::Relaxed));
        if since < TAIL as u64 {
            return true;
        }
        let mut tail = self.tail.lock();
        if !tail.entries.is_empty() {
            // Nothing may be left with a gap after it.
            tail.entries = VecDeque::new();
        }
        false
    }

    /// Remembers a commit's changes to `table` in the in-memory tail, once they are in
    /// storage (the caller holds the commit lock).
    pub(crate) fn remember(&self, table: &str, changes: &[Committed]) {
        let mut tail = self.tail.lock();
        let id = tail.id(table);
        for c in changes {
            if tail.entries.len() == TAIL {
                // This frees the documents of a change 16,384 commits old (out of the cache
                // by now): part of what the tail costs (see `keep_tail`).
                tail.entries.pop_front();
            }
            let item = Change::row(Some(Arc::from(&c.key[..])), c.old.clone(), c.new.clone())
                .at(c.seq, c.commit);
            tail.entries.push_back(TailEntry { table: id, item });
        }
    }
}
