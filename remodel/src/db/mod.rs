//! The database handle: configuration, the catalog of tables and indexes, and DDL (opening a
//! database: `open.rs`).

pub(crate) mod backend;
pub(crate) mod changelog;
mod group_flush;
mod index;
mod open;
mod patch;
mod sink;
mod stats;
mod table;
mod visibility;
pub(crate) mod write;
mod write_types;

pub use changelog::ChangeLogRetention;
use group_flush::GroupFlush;
pub(crate) use index::IndexState;
pub use index::{IndexSpec, IndexStatus, MAX_MULTI_ELEMENTS};
pub use patch::Patch;
pub(crate) use sink::ChangeSink;
pub(crate) use table::TableState;
pub(crate) use visibility::Visibility;
pub use write_types::{ChangePair, Conflict, Durability, WriteResult};

use crate::storage::{Storage, Tree, WriteBatch};
use crate::{Error, Result};
use parking_lot::{Mutex, RwLock};
use stats::Stats;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use table::check_name;

const CATALOG_TREE: &str = "__remodel_catalog";

fn docs_tree_name(table: &str) -> String {
    format!("t/{table}")
}

fn index_tree_name(table: &str, index: &str) -> String {
    format!("i/{table}/{index}")
}

/// How to open a database.
///
/// ```
/// # tokio_test_block_on(async {
/// use remodel::{Config, Durability};
/// let db = Config::temporary().durability(Durability::Soft).open().await.unwrap();
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    path: Option<PathBuf>,
    cache_bytes: u64,
    durability: Durability,
    pub(crate) feed_queue_size: usize,
    flush_interval: Duration,
    /// The durable change log's retention (`None`: no log).
    change_log: Option<ChangeLogRetention>,
    /// Documents and indexes in memory (temporary databases only).
    in_memory: bool,
}

impl Config {
    /// A database stored in the folder `path` (created when missing).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Config {
            path: Some(path.as_ref().to_path_buf()),
            ..Config::temporary()
        }
    }

    /// A temporary database, deleted when the last handle is dropped.
    pub fn temporary() -> Self {
        Config {
            path: None,
            cache_bytes: 256 * 1024 * 1024,
            durability: Durability::Hard,
            feed_queue_size: 100_000,
            flush_interval: Duration::from_millis(500),
            change_log: None,
            in_memory: false,
        }
    }

    /// A temporary database held in this process's memory: its documents and indexes are
    /// ordered maps in memory instead of a temporary sled store. Everything else is as with
    /// [`Config::temporary`] (the same queries, feeds, durability options and change log,
    /// which stays in a temporary folder); writes and reads are faster, and the database is
    /// bounded by the memory of the process rather than by the disk (`cache_bytes` has no
    /// effect). For tests, caches, and the replicas of the PostgreSQL backend.
    ///
    /// ```
    /// # tokio_test_block_on(async {
    /// use remodel::{json, Config};
    /// let db = Config::in_memory().open().await.unwrap();
    /// db.create_table("t").await.unwrap();
    /// db.table("t").insert(json!({"id": 1})).await.unwrap();
    /// assert_eq!(db.table("t").count().await.unwrap(), 1);
    /// # });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub fn in_memory() -> Self {
        Config {
            in_memory: true,
            ..Config::temporary()
        }
    }

    /// The page cache size in bytes (default 256 MiB).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// The durability of writes that do not choose one (default [`Durability::Hard`]).
    ///
    /// A database on disk whose writes are hard by default keeps a redo log next to its
    /// files (each commit copied there before its documents are written, redone on open
    /// after a crash): a hard write then waits for one `fdatasync` of that log, shared with
    /// the writes of other tasks, instead of a flush of the whole storage engine.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// The default queue size of changefeeds (default 100,000; at least 1).
    pub fn feed_queue_size(mut self, n: usize) -> Self {
        self.feed_queue_size = n.max(1);
        self
    }

    /// Keeps a durable change log with this retention, so that feeds can resume from a
    /// cursor after a disconnect or a restart (see [`crate::Changes::resume_from`]). Off by
    /// default: the log keeps every change (with its old document) for the retention, and
    /// the newest ones in memory while feeds are open. (A database whose writes are hard by
    /// default keeps the log anyway, as a redo log of the last few megabytes only, see
    /// [`Config::durability`]; this makes it resumable.)
    pub fn change_log(mut self, retention: ChangeLogRetention) -> Self {
        self.change_log = Some(retention);
        self
    }

    /// How often soft writes are flushed to disk (default 500 ms). With the change log or a
    /// redo log, the flush makes it durable too.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Opens the database. Opening a path that is already open in this process returns
    /// the handle that is already open (the configuration of the first open stays).
    ///
    /// Opening reads the catalog, lets sled recover its log, and finishes index builds that a
    /// crash interrupted; all of that runs on a blocking thread, not on the async workers.
    pub async fn open(self) -> Result<Database> {
        spawn_blocking(move || Database::open_with(self)).await
    }
}

/// A handle to an open database: cheap to clone, safe to share across tasks and threads.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::Database;
/// use serde_json::json;
/// let db = Database::temporary().await?;
/// db.create_table("heroes").await?;
/// db.table("heroes").insert(json!({"id": "picard", "rank": "captain"})).await?;
/// assert_eq!(db.table("heroes").get("picard").await?.unwrap()["rank"], "captain");
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Database {
    pub(crate) inner: Arc<DbInner>,
}

pub(crate) struct DbInner {
    storage: Storage,
    config: Config,
    catalog: Tree,
    tables: RwLock<HashMap<String, Arc<TableState>>>,
    /// Serialises commits: one database, one commit order. Holds the last sequence number.
    writer: Mutex<u64>,
    /// Small writes that found `writer` taken, for its holder to commit (see
    /// `write::Handoff`).
    handoffs: write::Handoffs,
    /// Whether a write's closure (`Patch::with`, ...) runs under `writer`, and since when.
    closures: write::ClosureWatch,
    /// Sequence numbers up to here are reserved on disk (see `reserve_seq`).
    seq_reserved: std::sync::atomic::AtomicU64,
    /// This store's identity, made at random when it was created ([`Database::identity`]).
    identity: u64,
    /// Where the sequence reservation is kept.
    meta: Tree,
    /// The sequence numbers feeds may show (hard writes once on disk).
    visibility: Arc<Visibility>,
    /// Hard writes of many tasks share fsyncs.
    flusher: GroupFlush,
    /// Where committed changes go (the feed layer, once something watches).
    sink: OnceLock<Arc<dyn ChangeSink>>,
    /// The durable change log, when configured.
    changelog: Option<Arc<changelog::ChangeLog>>,
    stats: Stats,
    /// The (empty, never written) table that stands for the `stats` system table in plans.
    stats_table: Arc<TableState>,
    closed: AtomicBool,
    /// The close in progress or done, which every `close` waits for (see `Database::close`).
    closing: parking_lot::Mutex<Option<Closing>>,
    /// Serialises DDL (create/drop of tables and indexes).
    ddl: tokio::sync::Mutex<()>,
    /// The database of record when it is not this store (see `backend.rs`).
    backend: OnceLock<Arc<dyn backend::Backend>>,
}

impl Database {
    /// Opens (or creates) the database in the folder `path` with the default configuration.
    pub async fn open(path: impl AsRef<Path>) -> Result<Database> {
        Config::new(path).open().await
    }

    /// Opens a temporary database, deleted when the last handle is dropped.
    pub async fn temporary() -> Result<Database> {
        Config::temporary().open().await
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The open table called `name`.
    pub(crate) fn table_state(&self, name: &str) -> Result<Arc<TableState>> {
        self.check_open()?;
        self.inner
            .tables
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchTable(name.to_string()))
    }

    fn save_meta(&self, table: &TableState) -> Result<()> {
        let bytes = serde_json::to_vec(&table.meta())?;
        self.inner.catalog_insert(&table.name, bytes)
    }

    /// A check of this store's catalog made before DDL or a write goes to a backend. A
    /// refusal (no such table or index, an index that exists) may only mean that the store
    /// is behind the database of record: another process's DDL not applied here yet, or a
    /// replication stream being reconnected. So the store catches up first
    /// ([`Database::sync`], which fails while the server cannot be reached) and the check is
    /// made again: DDL and writes are decided against the database of record's catalog, not
    /// a stale copy. Without a backend the store is the record, and the first answer stands.
    pub(crate) async fn checked_in_sync<T>(&self, check: impl Fn() -> Result<T>) -> Result<T> {
        match check() {
            Err(
                e @ (Error::NoSuchTable(_) | Error::NoSuchIndex { .. } | Error::IndexExists { .. }),
            ) => match self.backend() {
                Some(b) => {
                    b.sync().await?;
                    check()
                }
                None => Err(e),
            },
            other => other,
        }
    }

    /// Creates a table whose primary key is `id`. Errors with [`Error::TableExists`] if it
    /// exists; see [`Database::ensure_table`] for the idempotent form.
    pub async fn create_table(&self, name: &str) -> Result<()> {
        self.create_table_with_key(name, "id").await
    }

    /// Creates a table whose primary key is the top-level field `primary_key`.
    pub async fn create_table_with_key(&self, name: &str, primary_key: &str) -> Result<()> {
        check_not_in_patch()?;
        check_name(name)?;
        if primary_key.is_empty() || primary_key.contains('.') {
            return Err(Error::InvalidName {
                name: primary_key.to_string(),
                reason: "a primary key is one top-level field name".into(),
            });
        }
        if let Some(b) = self.backend() {
            self.check_open()?;
            let ddl = backend::Ddl::CreateTable {
                table: name.to_string(),
                primary_key: primary_key.to_string(),
            };
            return b.ddl(self.clone(), ddl).await;
        }
        self.create_table_local(name, primary_key).await
    }

    /// Creates a table in this process's store (checked names).
    pub(crate) async fn create_table_local(&self, name: &str, primary_key: &str) -> Result<()> {
        let (db, name, key) = (self.clone(), name.to_string(), primary_key.to_string());
        ddl_task(move || db.create_table_blocking(&name, &key)).await
    }

    /// [`Database::create_table_local`], on a blocking thread.
    fn create_table_blocking(&self, name: &str, primary_key: &str) -> Result<()> {
        let _ddl = self.inner.ddl.blocking_lock();
        self.check_open()?;
        if self.inner.tables.read().contains_key(name) {
            return Err(Error::TableExists(name.to_string()));
        }
        let tree_name = docs_tree_name(name);
        // A tree left behind by a crash in the middle of a drop is cleared first.
        self.inner.storage.drop_tree(&tree_name)?;
        let docs = self.inner.docs_tree(name)?;
        let table = Arc::new(TableState::new(
            name.to_string(),
            primary_key.to_string(),
            docs,
        ));
        if let Some(log) = &self.inner.changelog {
            // Cursors from before this table existed (an earlier table of the same name) must
            // not resume into it, nor its changes be redone into it after a crash: recorded
            // before the table is.
            let seq = self.inner.with_commit_lock(|seq| seq);
            log.table_created(&self.inner.storage, name, seq)?;
        }
        self.save_meta(&table)?;
        self.inner.tables.write().insert(name.to_string(), table);
        self.inner.storage.flush_blocking()
    }

    /// Ends every feed of every table with `why` (the store stays open): for a replica
    /// about to be brought to a new state without the commits in between.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL backend
    pub(crate) fn end_all_feeds(&self, why: &str) {
        let names: Vec<String> = self.inner.tables.read().keys().cloned().collect();
        if let Some(sink) = self.inner.sink() {
            for name in &names {
                sink.table_dropped(name, why);
            }
        }
    }

    /// The store's history restarts after change `seq`: a cursor up to it no longer resumes
    /// from this store's log, whose changes up to there are not the commits of the database
    /// of record one by one (a replica brought to a new state at once).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL backend
    pub(crate) fn restart_history(&self, seq: u64) -> Result<()> {
        if let Some(log) = &self.inner.changelog {
            let names: Vec<String> = self.inner.tables.read().keys().cloned().collect();
            for name in &names {
                log.table_created(&self.inner.storage, name, seq)?;
            }
        }
        Ok(())
    }

    /// Creates the table unless it exists; returns whether it was created.
    pub async fn ensure_table(&self, name: &str) -> Result<bool> {
        match self.create_table(name).await {
            Ok(()) => Ok(true),
            Err(Error::TableExists(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops a table with its documents and indexes. Its changefeeds end with
    /// [`Error::FeedAborted`].
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        check_not_in_patch()?;
        if let Some(b) = self.backend() {
            self.checked_in_sync(|| self.table_state(name)).await?;
            let ddl = backend::Ddl::DropTable {
                table: name.to_string(),
            };
            return b.ddl(self.clone(), ddl).await;
        }
        self.drop_table_local(name).await
    }

    /// Drops a table of this process's store.
    pub(crate) async fn drop_table_local(&self, name: &str) -> Result<()> {
        let (db, name) = (self.clone(), name.to_string());
        ddl_task(move || db.drop_table_blocking(&name)).await
    }

    /// [`Database::drop_table_local`], on a blocking thread.
    fn drop_table_blocking(&self, name: &str) -> Result<()> {
        let _ddl = self.inner.ddl.blocking_lock();
        self.check_open()?;
        let table = self.table_state(name)?;
        let removed = {
            // Under the commit lock, so that no write is half-way through this table.
            let _w = self.inner.writer.lock();
            self.inner.tables.write().remove(name);
            table.mark_dropped();
            self.inner.catalog_remove(name)
        };
        // Gone from this process whatever the catalog said: its feeds end.
        if let Some(sink) = self.inner.sink() {
            sink.table_dropped(name, &format!("table `{name}` was dropped"));
        }
        removed?;
        let storage = &self.inner.storage;
        storage.drop_tree(&docs_tree_name(name))?;
        for ix in table.indexes.read().iter() {
            storage.drop_tree(&index_tree_name(name, &ix.name))?;
        }
        storage.flush_blocking()
    }

    /// The names of all tables, sorted.
    pub fn table_names(&self) -> Result<Vec<String>> {
        self.check_open()?;
        let mut names: Vec<String> = self.inner.tables.read().keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    pub(crate) async fn create_index(
        &self,
        table: &str,
        name: &str,
        spec: IndexSpec,
    ) -> Result<()> {
        check_not_in_patch()?;
        check_name(name)?;
        spec.compile()?;
        if let Some(b) = self.backend() {
            self.checked_in_sync(|| {
                let t = self.table_state(table)?;
                if name == t.primary_key || t.indexes.read().iter().any(|i| i.name == name) {
                    return Err(Error::IndexExists {
                        table: table.to_string(),
                        index: name.to_string(),
                    });
                }
                Ok(())
            })
            .await?;
            let ddl = backend::Ddl::CreateIndex {
                table: table.to_string(),
                index: name.to_string(),
                spec: spec.clone(),
            };
            b.clone().ddl(self.clone(), ddl).await?;
            // The table as it is now: the one the index went to may not be `t` (another
            // process dropped it and made another of the same name meanwhile).
            let t = self.table_state(table)?;
            if t.indexes.read().iter().any(|i| i.name == name) {
                return Ok(());
            }
            // Every process failed to build it (see the backend): say why, and take it out
            // of the catalog. The build is redone here, on the replica, for its error.
            let why = self
                .create_index_local(table, name, spec)
                .await
                .err()
                .unwrap_or_else(|| Error::storage("the index could not be built"));
            let _ = self.drop_index_local(table, name).await;
            let drop = backend::Ddl::DropIndex {
                table: table.to_string(),
                index: name.to_string(),
            };
            let _ = b.ddl(self.clone(), drop).await;
            return Err(why);
        }
        self.create_index_local(table, name, spec).await
    }

    /// Creates (and fills) an index of this process's store.
    pub(crate) async fn create_index_local(
        &self,
        table: &str,
        name: &str,
        spec: IndexSpec,
    ) -> Result<()> {
        let (db, table, name) = (self.clone(), table.to_string(), name.to_string());
        ddl_task(move || {
            let (t, ix) = db.add_index_blocking(&table, name, spec)?;
            let built = db.backfill_blocking(&t, &ix);
            if built.is_err() {
                // A failed build must not stay in the catalog (the next open would try it
                // again, and fail the same way).
                db.abandon_index(&t, &ix);
            }
            built
        })
        .await
    }

    /// Adds an empty index, not ready, that every write maintains from now on (the
    /// backfill adds the documents that were there before), under the DDL lock.
    fn add_index_blocking(
        &self,
        table: &str,
        name: String,
        spec: IndexSpec,
    ) -> Result<(Arc<TableState>, Arc<IndexState>)> {
        let _ddl = self.inner.ddl.blocking_lock();
        self.check_open()?;
        let t = self.table_state(table)?;
        if name == t.primary_key || t.indexes.read().iter().any(|i| i.name == name) {
            return Err(Error::IndexExists {
                table: table.to_string(),
                index: name,
            });
        }
        self.inner
            .storage
            .drop_tree(&index_tree_name(table, &name))?;
        let tree = self.inner.index_tree(table, &name)?;
        let ix = Arc::new(IndexState::new(name, spec, tree, false)?);
        let _w = self.inner.writer.lock();
        t.indexes.write().push(ix.clone());
        if let Err(e) = self.save_meta(&t) {
            // Not in the catalog: not in the table either (no write maintains it).
            t.indexes.write().retain(|i| !Arc::ptr_eq(i, &ix));
            ix.mark_dropped();
            return Err(e);
        }
        Ok((t, ix))
    }

    /// Removes an index whose build failed: from the table, the catalog and storage. Does
    /// nothing if it was dropped meanwhile.
    fn abandon_index(&self, table: &Arc<TableState>, ix: &Arc<IndexState>) {
        // Under the DDL lock: a create_index of the same name must not get its tree dropped.
        let _ddl = self.inner.ddl.blocking_lock();
        {
            let _w = self.inner.writer.lock();
            let mut list = table.indexes.write();
            let Some(pos) = list.iter().position(|i| Arc::ptr_eq(i, ix)) else {
                return;
            };
            list.remove(pos);
            drop(list);
            ix.mark_dropped();
            if table.is_dropped() {
                return; // drop_table removes its trees
            }
            if let Err(e) = self.save_meta(table) {
                tracing::warn!("could not remove index `{}` from the catalog: {e}", ix.name);
            }
        }
        // A build can fail after the index was marked ready (saving that, or the flush), so
        // feeds may already read it: they end as for a dropped index.
        if let Some(sink) = self.inner.sink() {
            sink.index_dropped(
                &table.name,
                &ix.name,
                &format!(
                    "index `{}` of table `{}` could not be built and was removed",
                    ix.name, table.name
                ),
            );
        }
        let removed = self
            .inner
            .storage
            .drop_tree(&index_tree_name(&table.name, &ix.name))
            .and_then(|()| self.inner.storage.flush_blocking());
        if let Err(e) = removed {
            tracing::warn!("could not remove the tree of index `{}`: {e}", ix.name);
        }
    }

    /// Fills `ix` from the documents of `table`, in chunks, each under the commit lock so
    /// that it agrees with the writes that run during the backfill; then marks it ready.
    fn backfill_blocking(&self, table: &Arc<TableState>, ix: &Arc<IndexState>) -> Result<()> {
        use std::ops::Bound;
        const CHUNK: usize = 1024;
        let mut from: Bound<Vec<u8>> = Bound::Unbounded;
        loop {
            let _w = self.inner.writer.lock();
            if self.inner.closed.load(Ordering::Acquire) {
                // Closed meanwhile: the build stops (the index is removed, as a failed one).
                return Err(Error::Closed);
            }
            if table.is_dropped() {
                return Err(Error::NoSuchTable(table.name.clone()));
            }
            if ix.is_dropped() {
                // drop_index ran during the build: not one more write into its tree.
                return Err(Error::NoSuchIndex {
                    table: table.name.clone(),
                    index: ix.name.clone(),
                });
            }
            let mut batch = WriteBatch::default();
            let mut last = None;
            for entry in table.docs.range(from.clone(), Bound::Unbounded).take(CHUNK) {
                let (key, bytes) = entry?;
                let doc = table.parse_doc(&bytes)?;
                for k in ix.compiled.keys(&doc, &key) {
                    batch.insert(&ix.tree, k, key.to_vec());
                }
                last = Some(key.to_vec());
            }
            self.inner.storage.apply(&batch)?;
            match last {
                Some(k) => from = Bound::Excluded(k),
                None => {
                    ix.set_ready();
                    self.save_meta(table)?;
                    return self.inner.storage.flush_blocking();
                }
            }
        }
    }

    pub(crate) async fn drop_index(&self, table: &str, name: &str) -> Result<()> {
        check_not_in_patch()?;
        if let Some(b) = self.backend() {
            self.checked_in_sync(|| {
                let t = self.table_state(table)?;
                if !t.indexes.read().iter().any(|i| i.name == name) {
                    return Err(Error::NoSuchIndex {
                        table: table.to_string(),
                        index: name.to_string(),
                    });
                }
                Ok(())
            })
            .await?;
            let ddl = backend::Ddl::DropIndex {
                table: table.to_string(),
                index: name.to_string(),
            };
            return b.ddl(self.clone(), ddl).await;
        }
        self.drop_index_local(table, name).await
    }

    /// Drops an index of this process's store.
    pub(crate) async fn drop_index_local(&self, table: &str, name: &str) -> Result<()> {
        let (db, table, name) = (self.clone(), table.to_string(), name.to_string());
        ddl_task(move || db.drop_index_blocking(&table, &name)).await
    }

    /// [`Database::drop_index_local`], on a blocking thread.
    fn drop_index_blocking(&self, table: &str, name: &str) -> Result<()> {
        let _ddl = self.inner.ddl.blocking_lock();
        self.check_open()?;
        let t = self.table_state(table)?;
        let saved = {
            let _w = self.inner.writer.lock();
            let mut list = t.indexes.write();
            let pos =
                list.iter()
                    .position(|i| i.name == name)
                    .ok_or_else(|| Error::NoSuchIndex {
                        table: table.to_string(),
                        index: name.to_string(),
                    })?;
            list.remove(pos).mark_dropped();
            drop(list);
            self.save_meta(&t)
        };
        // Gone from this process whatever the catalog said: what reads it ends.
        if let Some(sink) = self.inner.sink() {
            sink.index_dropped(
                table,
                name,
                &format!("index `{name}` of table `{table}` was dropped"),
            );
        }
        saved?;
        self.inner
            .storage
            .drop_tree(&index_tree_name(table, name))?;
        self.inner.storage.flush_blocking()
    }

    /// The name and spec of every secondary index of `table`, from the catalog in memory
    /// (no index is read).
    pub(crate) fn index_specs(&self, table: &str) -> Result<Vec<(String, IndexSpec)>> {
        let t = self.table_state(table)?;
        let list = t.indexes.read();
        Ok(list
            .iter()
            .map(|i| (i.name.clone(), i.spec.clone()))
            .collect())
    }

    /// Every index's status with its entry count: counting reads the whole index.
    pub(crate) fn index_status(&self, table: &str) -> Result<Vec<IndexStatus>> {
        let t = self.table_state(table)?;
        let list = t.indexes.read();
        Ok(list
            .iter()
            .map(|i| IndexStatus {
                name: i.name.clone(),
                spec: i.spec.clone(),
                ready: i.is_ready(),
                entries: i.tree.len(),
            })
            .collect())
    }

    /// Waits until everything written so far is on disk.
    ///
    /// On a shared database (PostgreSQL), also waits until this process's reads and feeds
    /// show every commit that any process made before the call.
    pub async fn sync(&self) -> Result<()> {
        self.check_open()?;
        if let Some(b) = self.backend() {
            return b.sync().await;
        }
        self.inner.flush_committed().await
    }

    /// The database's identity: made at random when the database is created and kept with
    /// it, so every handle and process on the same database has the same, and another
    /// database (or this one deleted and made again) another. Positions and [`Cursor`]s
    /// carry none (they are short and compared as numbers), so what hands cursors to others
    /// puts this beside them and checks it before resuming one: remodel-web's cursors do.
    /// A temporary or in-memory database has one of its own each time it is opened; on
    /// PostgreSQL it is the database's (its Remodel schema's), the same in every process.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let dir = std::env::temp_dir().join(format!("remodel-identity-doc-{}", std::process::id()));
    /// let a = remodel::Database::open(&dir).await?;
    /// let id = a.identity();
    /// a.close().await?;
    /// drop(a);
    /// assert_eq!(remodel::Database::open(&dir).await?.identity(), id);
    /// assert_ne!(remodel::Database::temporary().await?.identity(), id);
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// [`Cursor`]: crate::Cursor
    pub fn identity(&self) -> u64 {
        self.backend()
            .and_then(|b| b.identity())
            .unwrap_or(self.inner.identity)
    }

    /// The database of record, when it is not this process's store.
    pub(crate) fn backend(&self) -> Option<Arc<dyn backend::Backend>> {
        self.inner.backend.get().cloned()
    }

    /// Installs the database of record (once, before the handle is shared).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))] // used by the PostgreSQL backend
    pub(crate) fn set_backend(&self, b: Arc<dyn backend::Backend>) {
        if self.inner.backend.set(b).is_err() {
            unreachable!("a database has one backend");
        }
    }

    /// Closes the database: flushes it, ends every changefeed with [`Error::FeedAborted`],
    /// and makes every later call on any handle return [`Error::Closed`].
    ///
    /// The close runs once, in a task of its own, to its end even if the caller stops
    /// waiting; every call (concurrent or later) waits for that one and gets its outcome.
    pub async fn close(&self) -> Result<()> {
        check_not_in_patch()?;
        let closing = {
            let mut slot = self.inner.closing.lock();
            slot.get_or_insert_with(|| {
                let db = self.clone();
                let task = tokio::spawn(async move { db.close_once().await });
                let done = async move {
                    task.await
                        .map_err(|e| Error::storage(format!("closing the database failed: {e}")))?
                };
                futures_util::FutureExt::shared(Box::pin(done) as ClosingFuture)
            })
            .clone()
        };
        closing.await
    }

    async fn close_once(&self) -> Result<()> {
        let db = self.clone();
        let was_closed = ddl_task(move || {
            // After the schema change running now, if any (none starts after: each checks
            // that the database is open under the DDL lock).
            let _ddl = db.inner.ddl.blocking_lock();
            {
                // Under the commit lock, where feeds are set up: a feed either sees the
                // database closed, or is registered before the sink below ends it.
                let _w = db.inner.writer.lock();
                if db.inner.closed.swap(true, Ordering::AcqRel) {
                    // Closed already (a shared database this process stopped following).
                    return Ok(true);
                }
            }
            if let Some(sink) = db.inner.sink() {
                sink.closed("the database was closed");
            }
            Ok(false)
        })
        .await?;
        if was_closed {
            return Ok(());
        }
        if let Some(b) = self.backend() {
            b.close().await?;
        }
        self.inner.storage.flush().await
    }
}

impl DbInner {
    /// How many fsyncs hard writes and `sync` have run.
    pub(crate) fn flushes(&self) -> u64 {
        self.flusher.runs()
    }

    /// The default queue size of feeds.
    pub(crate) fn feed_queue_size(&self) -> usize {
        self.config.feed_queue_size
    }

    /// What feeds may show (hard writes once on disk).
    pub(crate) fn visibility(&self) -> &Arc<Visibility> {
        &self.visibility
    }

    /// The change log feeds resume from, when configured (not a redo-only one).
    pub(crate) fn resumable_log(&self) -> Option<&changelog::ChangeLog> {
        self.changelog.as_deref().filter(|log| log.resumable())
    }

    /// The table that stands for the `stats` system table in plans.
    pub(crate) fn stats_table(&self) -> &Arc<TableState> {
        &self.stats_table
    }
}

impl Database {
    /// The current rows of the `stats` system table.
    pub(crate) fn stats_rows(&self) -> Vec<serde_json::Value> {
        let mut rows = self.inner.stats.rows(self);
        if let Some(b) = self.backend() {
            rows.extend(b.stats_rows());
        }
        rows
    }
}

/// The tree of database-wide settings, and the key of the sequence reservation in it.
const META_TREE: &str = "__remodel_meta";
const SEQ_RESERVED_KEY: &[u8] = b"seq_reserved";
/// The key of the database's identity in the meta tree ([`Database::identity`]).
const IDENTITY_KEY: &[u8] = b"identity";
/// How many sequence numbers one reservation covers: a reservation is one small durable
/// write, so this many commits pass between two of them.
const SEQ_BLOCK: u64 = 1 << 20;

impl DbInner {
    /// Makes the sequence numbers after `seq` (up to `seq + SEQ_BLOCK`) durable before any
    /// of them is used, so that numbers stay strictly increasing across restarts and crashes
    /// (a restart continues after the reservation). The caller holds the commit lock or is
    /// opening the database.
    pub(crate) fn reserve_seq(&self, seq: u64) -> Result<()> {
        let upto = seq.saturating_add(SEQ_BLOCK);
        let mut batch = WriteBatch::default();
        batch.insert(
            &self.meta,
            SEQ_RESERVED_KEY.to_vec(),
            upto.to_be_bytes().to_vec(),
        );
        self.storage.apply(&batch)?;
        self.storage.flush_blocking()?;
        self.seq_reserved.store(upto, Ordering::Release);
        Ok(())
    }

    /// Waits until everything committed so far is on disk (sharing the fsync with other
    /// tasks that wait for the same).
    pub(crate) async fn flush_committed(&self) -> Result<()> {
        let upto = self.visibility.last();
        let flushed = self.flusher.flush_upto(upto).await;
        if let (Err(e), Some(sink)) = (&flushed, self.sink()) {
            if self.storage.has_failed() {
                // Hard writes that waited for this flush will never be shown: the storage
                // refuses everything from now on, so what watches it ends instead of waiting.
                self.visibility.fail();
                sink.closed(&format!("the database can no longer write to disk: {e}"));
            }
        }
        flushed
    }

    /// Whether sequence numbers up to `seq` are reserved.
    pub(crate) fn seq_reserved_for(&self, seq: u64) -> bool {
        seq <= self.seq_reserved.load(Ordering::Acquire)
    }

    /// The documents tree of a table; once dropped, it reports [`Error::NoSuchTable`].
    fn docs_tree(&self, table: &str) -> Result<Tree> {
        Ok(self
            .storage
            .tree(&docs_tree_name(table))?
            .on_missing(Error::NoSuchTable(table.to_string())))
    }

    /// The tree of an index; once dropped, it reports [`Error::NoSuchIndex`].
    fn index_tree(&self, table: &str, index: &str) -> Result<Tree> {
        Ok(self
            .storage
            .tree(&index_tree_name(table, index))?
            .on_missing(Error::NoSuchIndex {
                table: table.to_string(),
                index: index.to_string(),
            }))
    }

    fn catalog_insert(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.insert(&self.catalog, name.as_bytes().to_vec(), bytes);
        self.storage.apply(&batch)
    }

    fn catalog_remove(&self, name: &str) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.remove(&self.catalog, name.as_bytes().to_vec());
        self.storage.apply(&batch)
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        if let Some(sink) = self.sink() {
            sink.closed("the database was closed");
        }
    }
}

thread_local! {
    /// Set while this thread runs a `Patch::with` closure, under the commit lock.
    static IN_PATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a `Patch::with` closure, marking this thread as holding the commit lock for it: a
/// write the closure starts fails with [`Error::WriteInPatch`] instead of waiting forever for
/// the lock its own thread holds.
pub(crate) fn in_patch<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_PATCH.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(IN_PATCH.with(|c| c.replace(true)));
    f()
}

/// Whether this thread runs a `Patch::with` closure (and so holds the commit lock).
pub(crate) fn patching() -> bool {
    IN_PATCH.with(std::cell::Cell::get)
}

/// Fails when called from a `Patch::with` closure (see [`in_patch`]): every write and DDL
/// entry point checks it before it takes the commit lock (on the caller's thread, before any
/// hand-off to a blocking thread).
pub(crate) fn check_not_in_patch() -> Result<()> {
    if patching() {
        Err(Error::WriteInPatch)
    } else {
        Ok(())
    }
}

/// A close, shared by every caller of `Database::close`.
type ClosingFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;
type Closing = futures_util::future::Shared<ClosingFuture>;

/// Runs a schema change (or a close) on a blocking thread, whole: it takes the DDL lock
/// there and does its work (the commit lock, storage, ending feeds) in that one task, which
/// runs to its end even when the caller stops waiting for it (a dropped future), so no
/// change is ever left half-done, and no async worker waits on a lock or on storage. (An
/// index's backfill runs in the same task after the DDL lock is released: writes go on
/// meanwhile, and a close stops it.)
async fn ddl_task<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    spawn_blocking(f).await
}

/// Set once the caller of a write running on a blocking thread stops waiting for it (its
/// future dropped). The write looks at it under the commit lock, before each commit: so a
/// write its caller gave up on is either never made or had begun to commit, and then it
/// holds the lock until it is done, before any write its caller makes later. (Without it, a
/// dropped write could land after the same task's next write of the same key: an insert
/// after the delete that found nothing.)
#[derive(Clone, Default)]
pub(crate) struct Abandoned(Arc<std::sync::atomic::AtomicBool>);

impl Abandoned {
    /// `Err` once the caller stopped waiting (nobody reads the error).
    pub(crate) fn check(&self) -> Result<()> {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            true => Err(Error::storage("the write's caller stopped waiting for it")),
            false => Ok(()),
        }
    }
}

/// Sets its [`Abandoned`] when dropped holding it (the write's result came: it holds none).
struct Abandon(Option<Abandoned>);

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.0.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Runs a write on a blocking thread (see [`Abandoned`], which `f` checks under the commit
/// lock before each commit).
pub(crate) async fn spawn_write<T: Send + 'static>(
    f: impl FnOnce(&Abandoned) -> Result<T> + Send + 'static,
) -> Result<T> {
    let abandoned = Abandoned::default();
    let mut guard = Abandon(Some(abandoned.clone()));
    let result = spawn_blocking(move || f(&abandoned)).await;
    guard.0 = None;
    result
}

/// Runs blocking storage work off the async worker threads.
pub(crate) async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::storage(format!("storage task failed: {e}")))?
}
