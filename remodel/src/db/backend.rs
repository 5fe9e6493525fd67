//! The backend seam: where a commit is decided and made, and where DDL runs, when the
//! database of record is not this process's own store.
//!
//! A [`Database`] always reads from its own store (sled, on disk or temporary, or in memory): queries,
//! feeds and their initial rows, top-N refills, joins. What differs between backends is who
//! decides and orders the commits:
//!
//! - **Embedded (sled)**: this process. A write is staged against the current row under the
//!   commit lock, numbered, made durable and published to the feeds in one step
//!   (`write.rs`). No [`Backend`] is installed: that is the path every figure in
//!   `BENCHMARKS.md` measures, with nothing between the caller and the commit lock.
//! - **A shared database of record** (PostgreSQL, `crate::postgres`): the backend. A write is
//!   staged here, against the store (a replica of the shared database at the last commit this
//!   process has applied), and handed to [`Backend::commit`], which commits it in the shared
//!   database only if every row it read is still as it was (else the replica catches up and
//!   the write is staged again: the write is still decided against the current row). The
//!   store then learns of the commit, as of every other process's commits, in the one commit
//!   order of the shared database, through [`DbInner::apply_replicated`], which writes it
//!   into the store and publishes it to this process's feeds exactly as a local commit is.
//!
//! Because the store is a replica at an exact commit position, every read a feed makes (its
//! initial rows, a top-N refill, a join lookup) is of a committed state, as on one machine:
//! the feed machinery does not know which backend runs.

// The fields are read by the PostgreSQL backend (feature `postgres`), the seam's only user.
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

use super::write::{Commit, Committed, WriteOp};
use super::{Database, IndexSpec, TableState, WriteResult};
use crate::Result;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future (the seam is object-safe).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Selects the writes of a [`Job::Locked`] (runs once, against the caught-up store).
pub(crate) type SelectOps =
    Box<dyn FnOnce() -> Result<Vec<(Arc<TableState>, WriteOp)>> + Send + 'static>;

/// A write for the backend to commit.
pub(crate) enum Job {
    /// Writes by key to one table, committed in chunks (each atomic) like local writes.
    Keys {
        table: Arc<TableState>,
        ops: Vec<WriteOp>,
    },
    /// Writes that select their rows when they commit (by query, cascades, preconditions):
    /// the backend keeps other writers off `tables` while `select` runs and the result
    /// commits.
    Locked {
        tables: Vec<String>,
        select: SelectOps,
    },
}

/// What [`Backend::history`] found: the changes, or why it cannot give them all.
pub(crate) type History = std::result::Result<Vec<Committed>, String>;

/// A table or index created or dropped.
#[derive(Debug, Clone)]
pub(crate) enum Ddl {
    CreateTable {
        table: String,
        primary_key: String,
    },
    DropTable {
        table: String,
    },
    CreateIndex {
        table: String,
        index: String,
        spec: IndexSpec,
    },
    DropIndex {
        table: String,
        index: String,
    },
}

/// A database of record other than this process's store (see the module doc).
pub(crate) trait Backend: Send + Sync + 'static {
    /// Commits `job` and returns once this process's store (and so its reads and feeds)
    /// shows the commit.
    fn commit(
        self: Arc<Self>,
        db: Database,
        job: Job,
        how: Commit,
    ) -> BoxFuture<'static, Result<WriteResult>>;
    /// Runs DDL and returns once the store shows it.
    fn ddl(self: Arc<Self>, db: Database, ddl: Ddl) -> BoxFuture<'static, Result<()>>;
    /// Returns once the store shows every commit made anywhere before the call.
    fn sync(self: Arc<Self>) -> BoxFuture<'static, Result<()>>;
    /// Stops following the database of record.
    fn close(self: Arc<Self>) -> BoxFuture<'static, Result<()>>;
    /// Rows for the `stats` table (lag, positions).
    fn stats_rows(&self) -> Vec<Value>;

    /// The identity of the database this backend stores ([`crate::Database::identity`]),
    /// when it is not the local store's own (a replica's store is made afresh by each
    /// process, the database it follows is not).
    fn identity(&self) -> Option<u64> {
        None
    }
    /// The changes of `table` numbered from `from` up to (not including) `to`, from the
    /// database of record's history, for a feed resuming from a cursor older than the
    /// store's own change log. `Ok(Err(reason))` when the history does not hold them all
    /// (the cursor has expired), or holds more than `most` of them (read up to one more).
    fn history(
        self: Arc<Self>,
        table: String,
        from: u64,
        to: u64,
        most: Option<u64>,
    ) -> BoxFuture<'static, Result<History>>;
}
