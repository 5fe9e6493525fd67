//! The hub's tail: the newest changes, each kept as the plain item a table feed delivers for
//! it, for feeds that resume from a cursor (`feed::resume`). A reconnect reads them from
//! memory, without reading the change log's segments or building items again: each item is
//! built once, and shared by every feed that resumes over it. The change log itself keeps
//! records only; the database hands the hub every commit while it keeps a resumable log
//! ([`ChangeSink::remember`](crate::db::ChangeSink::remember)), idle or not.
//!
//! Cursors come only from feeds, so a cursor within the tail's length comes from a feed open
//! at most that many changes ago. The tail is filled while a feed is open and for `TAIL`
//! changes after the last one closed (every cursor that could read it from memory still
//! does); after that it is emptied, and no longer costs the inserts that keep it (about
//! 1.5 µs each: the documents of 16,384 changes held, and freed long after they were
//! written). It holds every change from its first one on, in order: a cursor at or after its
//! first change reads it, an older one reads the change log.

use super::Hub;
use crate::db::write::Committed;
use crate::db::TableState;
use crate::feed::Change;
use crate::Result;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How many of the newest changes the tail keeps.
const TAIL: usize = 16_384;

pub(super) struct Tail {
    kept: Mutex<Kept>,
    /// Changes committed since the last commit made while a feed was open (counted, not
    /// taken from change numbers: on PostgreSQL those are positions in the WAL, far apart).
    unwatched: AtomicU64,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            kept: Mutex::default(),
            // No feed yet: nothing is kept until one opens.
            unwatched: AtomicU64::new(TAIL as u64),
        }
    }
}

#[derive(Default)]
struct Kept {
    /// Interned table names (entries carry an index: no string compare or pointer chase per
    /// entry when a feed replays them).
    names: Vec<Arc<str>>,
    /// In change order.
    entries: VecDeque<Entry>,
}

/// One change: the plain item a table feed gets for it (as the rows operator makes it),
/// which also holds the change (key, documents, change and commit numbers).
struct Entry {
    table: u32,
    item: Change,
}

impl Kept {
    fn id(&mut self, table: &str) -> u32 {
        match self.names.iter().position(|n| &**n == table) {
            Some(i) => i as u32,
            None => {
                self.names.push(Arc::from(table));
                (self.names.len() - 1) as u32
            }
        }
    }

    fn push(&mut self, table: u32, c: &Committed) {
        if self.entries.len() == TAIL {
            // This frees the documents of a change 16,384 commits old (out of the cache by
            // now): part of what the tail costs (see the module doc).
            self.entries.pop_front();
        }
        let item = Change::row(Some(Arc::from(&c.key[..])), c.old.clone(), c.new.clone())
            .at(c.seq, c.commit);
        self.entries.push_back(Entry { table, item });
    }
}

impl Hub {
    /// Keeps a commit's changes ready for resuming feeds, while feeds are open or were
    /// lately (see the module doc). Called for every commit under the commit lock, once its
    /// changes are durable.
    pub(crate) fn remember(&self, committed: &[(Arc<TableState>, Vec<Committed>)]) {
        self.tail.remember(!self.is_idle(), committed);
    }

    /// Whether the tail holds every change numbered `from` and above, with a margin: a full
    /// tail drops its oldest change at every commit, and a resume that finds `from` gone
    /// when it reads (under the commit lock) reads the change log there instead.
    pub(crate) fn keeps_from(&self, from: u64) -> bool {
        let kept = self.tail.kept.lock();
        let margin = if kept.entries.len() == TAIL {
            TAIL / 4
        } else {
            0
        };
        kept.entries
            .get(margin)
            .is_some_and(|e| e.item.change_seq().unwrap_or(0) <= from)
    }

    /// Calls `f` with the plain item of each change of `table` numbered `from` and above, in
    /// order, when the tail holds them all; `None` when `from` is older than the tail (read
    /// the change log). The caller holds the commit lock, so nothing is appended meanwhile.
    ///
    /// `read` is told the number of every change read at or after `from`, of any table.
    pub(crate) fn for_each_kept(
        &self,
        table: &str,
        from: u64,
        read: impl FnMut(u64) -> Result<()>,
        f: impl FnMut(&Change) -> Result<()>,
    ) -> Option<Result<()>> {
        self.tail.for_each_from(table, from, read, f)
    }
}

impl Tail {
    fn remember(&self, watched: bool, committed: &[(Arc<TableState>, Vec<Committed>)]) {
        let n: usize = committed.iter().map(|(_, changes)| changes.len()).sum();
        if !self.keep(watched, n as u64) {
            return;
        }
        let mut kept = self.kept.lock();
        if let [(table, changes)] = committed {
            let id = kept.id(&table.name);
            for c in changes {
                kept.push(id, c);
            }
            return;
        }
        // A commit to several tables: its changes are numbered across them, and go in in
        // that order (a cursor is found by its change number).
        let mut all: Vec<(u32, &Committed)> = Vec::new();
        for (table, changes) in committed {
            let id = kept.id(&table.name);
            all.extend(changes.iter().map(|c| (id, c)));
        }
        all.sort_unstable_by_key(|(_, c)| c.seq);
        for (id, c) in all {
            kept.push(id, c);
        }
    }

    /// Whether a commit of `n` changes goes into the tail; `watched`: a feed is open (see
    /// the module doc). When it does not, the tail is emptied: nothing may be left with a
    /// gap after it.
    fn keep(&self, watched: bool, n: u64) -> bool {
        if watched {
            self.unwatched.store(0, Ordering::Relaxed);
            return true;
        }
        let since = self.unwatched.fetch_add(n, Ordering::Relaxed) + n;
        if since < TAIL as u64 {
            return true;
        }
        let mut kept = self.kept.lock();
        if !kept.entries.is_empty() {
            kept.entries = VecDeque::new();
        }
        false
    }

    fn for_each_from(
        &self,
        table: &str,
        from: u64,
        mut read: impl FnMut(u64) -> Result<()>,
        mut f: impl FnMut(&Change) -> Result<()>,
    ) -> Option<Result<()>> {
        let kept = self.kept.lock();
        let seq = |e: &Entry| e.item.change_seq().unwrap_or(0);
        if kept.entries.front().is_none_or(|e| seq(e) > from) {
            return None;
        }
        let id = kept
            .names
            .iter()
            .position(|n| &**n == table)
            .map(|id| id as u32);
        let at = kept.entries.partition_point(|e| seq(e) < from);
        for e in kept.entries.range(at..) {
            if let Err(e) = read(seq(e)) {
                return Some(Err(e));
            }
            if Some(e.table) == id {
                if let Err(e) = f(&e.item) {
                    return Some(Err(e));
                }
            }
        }
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Hub, TAIL};
    use crate::{json, ChangeLogRetention, Config, Database, Durability};
    use futures_util::StreamExt;

    async fn logged_db() -> Database {
        let db = Config::temporary()
            .durability(Durability::Soft)
            .change_log(ChangeLogRetention::default())
            .open()
            .await
            .unwrap();
        db.create_table("a").await.unwrap();
        db.create_table("b").await.unwrap();
        db
    }

    /// The change numbers the tail holds, in its order.
    fn kept(db: &Database) -> Vec<u64> {
        let hub = db.inner.sink_as::<Hub>();
        let kept = hub.tail.kept.lock();
        kept.entries
            .iter()
            .map(|e| e.item.change_seq().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_tail_is_kept_while_feeds_are_open_and_a_while_after() {
        let db = logged_db().await;
        let t = db.table("a");
        let mut feed = t.changes().await.unwrap();
        t.insert_many((0..10).map(|i| json!({"id": i})))
            .await
            .unwrap();
        let cursor = feed.next().await.unwrap().unwrap().cursor().unwrap();
        assert_eq!(kept(&db), (1..=10).collect::<Vec<_>>());
        drop(feed);
        // Fewer than `TAIL` changes after the last one a feed saw: still kept.
        t.insert_many((10..110).map(|i| json!({"id": i})))
            .await
            .unwrap();
        assert_eq!(kept(&db).len(), 110);
        // Then it is emptied, and a cursor reads the log.
        let n = TAIL as i64;
        t.insert_many((110..110 + n).map(|i| json!({"id": i})))
            .await
            .unwrap();
        assert!(kept(&db).is_empty());
        let mut resumed = t.changes().resume_from(cursor).await.unwrap();
        let next = resumed.next().await.unwrap().unwrap();
        assert_eq!(next.new_val().unwrap()["id"], 1);
    }

    /// A commit to several tables goes into the tail in change order, so that a cursor in
    /// the middle of it finds the rest. (Appended table by table, as the change log's tail
    /// was, this commit read [1, 4, 2, 5, 3], and the search for change 3 in it started at
    /// 5: a feed of `a` resumed from `c`'s cursor missed change 4.)
    #[tokio::test]
    async fn a_commit_to_several_tables_is_kept_in_change_order() {
        let db = logged_db().await;
        db.create_table("c").await.unwrap();
        let mut of_c = db.table("c").changes().await.unwrap();
        db.batch()
            .insert("a", json!({"id": 1}))
            .insert("b", json!({"id": 1}))
            .insert("c", json!({"id": 1}))
            .insert("a", json!({"id": 2}))
            .insert("b", json!({"id": 2}))
            .await
            .unwrap();
        assert_eq!(kept(&db), [1, 2, 3, 4, 5]);
        let cursor = of_c.next().await.unwrap().unwrap().cursor().unwrap();
        assert_eq!(cursor.seq(), 3);
        let mut of_a = db.table("a").changes().resume_from(cursor).await.unwrap();
        let next = of_a.next().await.unwrap().unwrap();
        assert_eq!(next.new_val().unwrap()["id"], 2);
    }
}
