//! The seam between the database and the layer that watches it.
//!
//! The database knows nothing of changefeeds: it hands every commit's changes to a
//! [`ChangeSink`], under the commit lock and in commit order (to `remember` when it keeps a
//! resumable change log, to `publish` while something watches), and tells it when tables and
//! indexes go away and when the database closes. The feed layer implements the sink and
//! installs it on first use ([`DbInner::sink_as`]); a database nobody watches has none, and
//! its writes skip this step entirely. The feed layer reaches back only through
//! [`DbInner::with_commit_lock`], which runs a closure under the commit lock with the current
//! sequence number (what a feed's snapshot and its first change are separated by).

use super::write::Committed;
use super::{DbInner, TableState};
use std::any::Any;
use std::sync::Arc;
use std::task::Waker;

/// Receives what the database commits (implemented by the feed layer's hub).
pub(crate) trait ChangeSink: Send + Sync + 'static {
    /// True when nothing watches anything: writers skip [`ChangeSink::publish`].
    fn is_idle(&self) -> bool;
    /// One commit's changes (per table; a table may have none), under the commit lock, in
    /// commit order. Consumers to wake go to `wakes`; the writer wakes them once the lock is
    /// released.
    fn publish(&self, committed: &[(Arc<TableState>, Vec<Committed>)], wakes: &mut Vec<Waker>);
    /// Every commit's changes (per table), once they are
    /// durable and before they are published, under the commit lock and in commit order,
    /// whenever the database keeps a resumable change log, idle or not: the feed layer keeps
    /// the newest ones ready for feeds that resume from a cursor (the log keeps records
    /// only).
    fn remember(&self, committed: &[(Arc<TableState>, Vec<Committed>)]);
    /// The table was dropped (what watches it ends).
    fn table_dropped(&self, table: &str, why: &str);
    /// The index was dropped (what reads it ends).
    fn index_dropped(&self, table: &str, index: &str, why: &str);
    /// The database closed (everything ends).
    fn closed(&self, why: &str);
    /// How many feeds are open on `table` (or anywhere), for the stats table.
    fn open_feeds(&self, table: Option<&str>) -> usize;
    /// How many shared results (groups of feeds of one query, each with the routes writes
    /// find it by) live on `table` (or anywhere), for the stats table: none once no feed is
    /// open, or something was left behind.
    fn open_groups(&self, table: Option<&str>) -> usize;
    /// For [`DbInner::sink_as`].
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl DbInner {
    /// The installed sink, if any.
    pub(super) fn sink(&self) -> Option<&Arc<dyn ChangeSink>> {
        self.sink.get()
    }

    /// The sink of type `S`, installed by the first caller. One database has one sink type
    /// (the feed layer's).
    pub(crate) fn sink_as<S: ChangeSink + Default>(&self) -> Arc<S> {
        let sink = self
            .sink
            .get_or_init(|| Arc::new(S::default()) as Arc<dyn ChangeSink>)
            .clone();
        match sink.into_any().downcast::<S>() {
            Ok(s) => s,
            Err(_) => unreachable!("a database has one kind of change sink"),
        }
    }

    /// Open feeds on `table` (or anywhere): 0 when nothing watches.
    pub(crate) fn open_feeds(&self, table: Option<&str>) -> usize {
        self.sink().map_or(0, |s| s.open_feeds(table))
    }

    /// Groups of feeds on `table` (or anywhere): 0 when nothing watches.
    pub(crate) fn open_groups(&self, table: Option<&str>) -> usize {
        self.sink().map_or(0, |s| s.open_groups(table))
    }

    /// Runs `f` under the commit lock with the last committed sequence number: no commit
    /// runs meanwhile, so what `f` reads and registers fits exactly between two commits.
    /// Ends every feed with `why` and closes the database (a backend that stopped following
    /// its database of record: what the feeds would show next is unknown).
    /// Later calls on any handle get [`Error::Closed`](crate::Error::Closed): its reads
    /// would be of a replica that no longer follows.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL backend
    pub(crate) fn end_feeds(&self, why: &str) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(sink) = self.sink() {
            sink.closed(why);
        }
    }

    pub(crate) fn with_commit_lock<T>(&self, f: impl FnOnce(u64) -> T) -> T {
        let seq = self.writer.lock();
        f(*seq)
    }

    /// As [`DbInner::with_commit_lock`], then hands the lock to a writer waiting for it, if
    /// any (a fair unlock): work done in steps under the lock (a table's initial rows, read
    /// in chunks) lets writers in between its steps, rather than taking the lock straight
    /// back before they wake.
    pub(crate) fn with_commit_lock_fair<T>(&self, f: impl FnOnce(u64) -> T) -> T {
        let seq = self.writer.lock();
        let out = f(*seq);
        parking_lot::MutexGuard::unlock_fair(seq);
        out
    }

    /// The last committed sequence number, without the commit lock: for a caller that may
    /// hold it already (a `Patch::with` closure asking for the database's position; the
    /// lock is not reentrant). Exact when the lock is held, as no commit can move it then.
    pub(crate) fn last_committed(&self) -> u64 {
        self.visibility.last()
    }

    /// Whether a commit holds the lock now: an async caller about to take it for a moment
    /// goes to a blocking thread instead of waiting on an async worker.
    pub(crate) fn commit_lock_busy(&self) -> bool {
        self.writer.is_locked()
    }
}
