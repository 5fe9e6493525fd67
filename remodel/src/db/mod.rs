//! The database handle: configuration, the catalog of tables and indexes, and DDL.

mod index;
mod stats;
mod table;
pub(crate) mod write;

pub(crate) use index::IndexState;
pub use index::{IndexSpec, IndexStatus};
pub(crate) use table::TableState;
pub use write::{ChangePair, Conflict, Durability, Patch, WriteResult};

use crate::feed::Hub;
use crate::storage::{EngineConfig, Storage, Tree, WriteBatch};
use crate::{Error, Result};
use parking_lot::{Mutex, RwLock};
use stats::Stats;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use table::{check_name, TableMeta};

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
        }
    }

    /// The page cache size in bytes (default 256 MiB).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// The durability of writes that do not choose one (default [`Durability::Hard`]).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// The default queue size of changefeeds (default 100,000; at least 1).
    pub fn feed_queue_size(mut self, n: usize) -> Self {
        self.feed_queue_size = n.max(1);
        self
    }

    /// How often soft writes are flushed to disk (default 500 ms).
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
    pub storage: Storage,
    pub config: Config,
    catalog: Tree,
    tables: RwLock<HashMap<String, Arc<TableState>>>,
    /// Serialises commits: one database, one commit order. Holds the last sequence number.
    pub writer: Mutex<u64>,
    pub hub: Arc<Hub>,
    pub stats: Stats,
    /// The (empty, never written) table that stands for the `stats` system table in plans.
    pub stats_table: Arc<TableState>,
    closed: AtomicBool,
    /// Serialises DDL (create/drop of tables and indexes).
    ddl: tokio::sync::Mutex<()>,
}

fn open_registry() -> &'static Mutex<HashMap<PathBuf, Weak<DbInner>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Weak<DbInner>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
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

    fn open_with(config: Config) -> Result<Database> {
        let canonical = match &config.path {
            Some(p) => {
                std::fs::create_dir_all(p)
                    .map_err(|e| Error::Storage(format!("cannot create {}: {e}", p.display())))?;
                Some(
                    p.canonicalize().map_err(|e| {
                        Error::Storage(format!("cannot resolve {}: {e}", p.display()))
                    })?,
                )
            }
            None => None,
        };
        let mut registry = open_registry().lock();
        if let Some(path) = &canonical {
            if let Some(inner) = registry.get(path).and_then(Weak::upgrade) {
                if !inner.closed.load(Ordering::Acquire) {
                    return Ok(Database { inner });
                }
            }
        }
        // A handle of this process that was just dropped may still hold the file lock for a
        // moment (sled's I/O threads release it last): retry for a bounded time.
        let was_open_here = canonical.as_ref().is_some_and(|p| registry.contains_key(p));
        let mut attempts = 0;
        let storage = loop {
            let opened = Storage::open(EngineConfig {
                path: canonical.as_deref(),
                cache_bytes: config.cache_bytes,
                flush_every_ms: Some(config.flush_interval.as_millis().max(1) as u64),
            });
            match opened {
                Err(Error::Storage(m))
                    if was_open_here && attempts < 500 && m.contains("could not acquire lock") =>
                {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => break other,
            }
        }
        .map_err(|e| match &canonical {
            Some(p) => Error::Storage(format!(
                "cannot open the database at {} (is another process using it?): {e}",
                p.display()
            )),
            None => e,
        })?;
        let catalog = storage.tree(CATALOG_TREE)?;
        let stats_table = Arc::new(TableState::new(
            "stats".into(),
            "id".into(),
            storage.tree("__remodel_stats")?,
        ));
        let inner = Arc::new(DbInner {
            storage,
            config,
            catalog,
            tables: RwLock::new(HashMap::new()),
            writer: Mutex::new(0),
            hub: Arc::default(),
            stats: Stats::default(),
            stats_table,
            closed: AtomicBool::new(false),
            ddl: tokio::sync::Mutex::new(()),
        });
        let db = Database { inner };
        let unfinished = db.load_catalog()?;
        if let Some(path) = canonical {
            registry.retain(|_, w| w.strong_count() > 0);
            registry.insert(path, Arc::downgrade(&db.inner));
        }
        drop(registry);
        // Index builds interrupted by a crash start again from scratch (they are idempotent).
        for (table, index) in unfinished {
            db.backfill_blocking(&table, &index)?;
        }
        Ok(db)
    }

    /// Reads the catalog and opens every table; returns the indexes whose backfill did not
    /// finish before the last shutdown.
    fn load_catalog(&self) -> Result<Vec<(Arc<TableState>, Arc<IndexState>)>> {
        let mut unfinished = Vec::new();
        let mut tables = self.inner.tables.write();
        for entry in self.inner.catalog.iter() {
            let (name, meta) = entry?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let meta: TableMeta = serde_json::from_slice(&meta)?;
            let docs = self.inner.storage.tree(&docs_tree_name(&name))?;
            let table = Arc::new(TableState::new(name.clone(), meta.primary_key, docs));
            for im in meta.indexes {
                let tree = self.inner.storage.tree(&index_tree_name(&name, &im.name))?;
                let ix = Arc::new(IndexState::new(im.name, im.spec, tree, im.ready)?);
                if !im.ready {
                    unfinished.push((table.clone(), ix.clone()));
                }
                table.indexes.write().push(ix);
            }
            tables.insert(name, table);
        }
        Ok(unfinished)
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

    /// Creates a table whose primary key is `id`. Errors with [`Error::TableExists`] if it
    /// exists; see [`Database::ensure_table`] for the idempotent form.
    pub async fn create_table(&self, name: &str) -> Result<()> {
        self.create_table_with_key(name, "id").await
    }

    /// Creates a table whose primary key is the top-level field `primary_key`.
    pub async fn create_table_with_key(&self, name: &str, primary_key: &str) -> Result<()> {
        check_name(name)?;
        if primary_key.is_empty() || primary_key.contains('.') {
            return Err(Error::InvalidName {
                name: primary_key.to_string(),
                reason: "a primary key is one top-level field name".into(),
            });
        }
        let _ddl = self.inner.ddl.lock().await;
        self.check_open()?;
        if self.inner.tables.read().contains_key(name) {
            return Err(Error::TableExists(name.to_string()));
        }
        let tree_name = docs_tree_name(name);
        // A tree left behind by a crash in the middle of a drop is cleared first.
        self.inner.storage.drop_tree(&tree_name)?;
        let docs = self.inner.storage.tree(&tree_name)?;
        let table = Arc::new(TableState::new(
            name.to_string(),
            primary_key.to_string(),
            docs,
        ));
        self.save_meta(&table)?;
        self.inner.tables.write().insert(name.to_string(), table);
        self.inner.storage.flush().await
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
        let _ddl = self.inner.ddl.lock().await;
        let table = self.table_state(name)?;
        {
            // Under the commit lock, so that no write is half-way through this table.
            let _w = self.inner.writer.lock();
            self.inner.tables.write().remove(name);
            table.mark_dropped();
            self.inner.catalog_remove(name)?;
        }
        self.inner
            .hub
            .abort_table(name, &format!("table `{name}` was dropped"));
        let storage = self.inner.storage.clone();
        let indexes: Vec<String> = table
            .indexes
            .read()
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let name = name.to_string();
        spawn_blocking(move || {
            storage.drop_tree(&docs_tree_name(&name))?;
            for ix in indexes {
                storage.drop_tree(&index_tree_name(&name, &ix))?;
            }
            storage.flush_blocking()
        })
        .await
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
        check_name(name)?;
        spec.compile()?;
        let ix;
        let t;
        {
            let _ddl = self.inner.ddl.lock().await;
            t = self.table_state(table)?;
            if name == t.primary_key || t.indexes.read().iter().any(|i| i.name == name) {
                return Err(Error::IndexExists {
                    table: table.to_string(),
                    index: name.to_string(),
                });
            }
            let tree_name = index_tree_name(table, name);
            self.inner.storage.drop_tree(&tree_name)?;
            let tree = self.inner.storage.tree(&tree_name)?;
            ix = Arc::new(IndexState::new(name.to_string(), spec, tree, false)?);
            // From here on every write maintains the new index; the backfill below adds the
            // documents that were there before.
            let _w = self.inner.writer.lock();
            t.indexes.write().push(ix.clone());
            self.save_meta(&t)?;
        }
        let db = self.clone();
        spawn_blocking(move || db.backfill_blocking(&t, &ix)).await
    }

    /// Fills `ix` from the documents of `table`, in chunks, each under the commit lock so
    /// that it agrees with the writes that run during the backfill; then marks it ready.
    fn backfill_blocking(&self, table: &Arc<TableState>, ix: &Arc<IndexState>) -> Result<()> {
        use std::ops::Bound;
        const CHUNK: usize = 1024;
        let mut from: Bound<Vec<u8>> = Bound::Unbounded;
        loop {
            let _w = self.inner.writer.lock();
            if table.is_dropped() {
                return Err(Error::NoSuchTable(table.name.clone()));
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
        let _ddl = self.inner.ddl.lock().await;
        let t = self.table_state(table)?;
        {
            let _w = self.inner.writer.lock();
            let mut list = t.indexes.write();
            let pos =
                list.iter()
                    .position(|i| i.name == name)
                    .ok_or_else(|| Error::NoSuchIndex {
                        table: table.to_string(),
                        index: name.to_string(),
                    })?;
            list.remove(pos);
            drop(list);
            self.save_meta(&t)?;
        }
        self.inner.hub.abort_index(
            table,
            name,
            &format!("index `{name}` of table `{table}` was dropped"),
        );
        let storage = self.inner.storage.clone();
        let tree = index_tree_name(table, name);
        spawn_blocking(move || {
            storage.drop_tree(&tree)?;
            storage.flush_blocking()
        })
        .await
    }

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

    /// The read-only `stats` system table, as a query: one row for the database
    /// (`id: ["database"]`) and one per table (`id: ["table", name]`) with totals and
    /// per-second rates of documents read and written, and the number of open changefeeds.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::{field, Database};
    /// let db = Database::temporary().await?;
    /// db.create_table("logs").await?;
    /// let rows = db.stats().filter(field("type").eq("table")).run().await?;
    /// assert_eq!(rows[0]["table"], "logs");
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn stats(&self) -> crate::Query {
        crate::Query::new(self.clone(), "stats".into(), crate::query::Source::Stats)
    }

    /// Waits until everything written so far is on disk.
    pub async fn sync(&self) -> Result<()> {
        self.check_open()?;
        self.inner.storage.flush().await
    }

    /// Closes the database: flushes it, ends every changefeed with [`Error::FeedAborted`],
    /// and makes every later call on any handle return [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.hub.abort_all("the database was closed");
        self.inner.storage.flush().await
    }
}

impl DbInner {
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
        self.hub.abort_all("the database was closed");
    }
}

/// Runs blocking storage work off the async worker threads.
pub(crate) async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("storage task failed: {e}")))?
}
