//! Opening a database: the configuration checks, the folder and the registry of databases
//! open in this process, the storage engine, the change log (and the redo of what a crash
//! lost), the catalog, and the index builds a crash interrupted.

use super::changelog::ChangeLog;
use super::group_flush::GroupFlush;
use super::stats::Stats;
use super::table::TableMeta;
use super::{
    write, Config, Database, DbInner, Durability, IndexState, TableState, Visibility, CATALOG_TREE,
    IDENTITY_KEY, META_TREE, SEQ_RESERVED_KEY,
};
use crate::storage::{EngineConfig, Liveness, OpenFailure, Storage, Tree, WriteBatch};
use crate::{Error, Result};
use parking_lot::{Mutex, MutexGuard, RwLock};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

impl Database {
    /// Opens the database `config` describes (on a blocking thread, see [`Config::open`]):
    /// the handle already open in this process for its folder, or a new one.
    pub(super) fn open_with(config: Config) -> Result<Database> {
        check_config(&config)?;
        let canonical = canonical_path(&config)?;
        // Held until the database is registered: one open of a folder at a time.
        let mut registry = open_registry().lock();
        if let Some(db) = open_here(&registry, canonical.as_deref())? {
            return Ok(db);
        }
        let was_open_here = canonical.as_ref().is_some_and(|p| registry.contains_key(p));
        let temporary = match &canonical {
            Some(_) => None,
            None => Some(temporary_dir()?),
        };
        let path = canonical.as_deref().or(temporary.as_deref());
        let storage = open_storage(&config, path, temporary.is_some(), was_open_here)
            .map_err(|f| open_error(canonical.as_deref(), f, false))?;
        let liveness = storage.liveness();
        let db_dir = path.ok_or_else(|| Error::storage("the database has no directory"))?;
        let meta = storage.tree(META_TREE)?;
        let seq = reserved_seq(&meta)?;
        let logs = open_change_log(&storage, &config, db_dir, seq)?;
        let db = Database {
            inner: Arc::new(DbInner::new(storage, config, meta, seq, logs.kept)?),
        };
        db.inner.reserve_seq(seq)?;
        let unfinished = db.load_catalog()?;
        db.redo(logs.stale, db_dir)?;
        if let Some(path) = canonical {
            mark_opened(&path);
            registry.retain(|_, r| r.db.strong_count() > 0 || r.storage.in_use());
            registry.insert(
                path,
                Registered {
                    db: Arc::downgrade(&db.inner),
                    storage: liveness,
                },
            );
        }
        drop(registry);
        db.finish_index_builds(unfinished);
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
            let docs = self.inner.docs_tree(&name)?;
            let table = Arc::new(TableState::new(name.clone(), meta.primary_key, docs));
            for im in meta.indexes {
                let tree = self.inner.index_tree(&name, &im.name)?;
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

    /// After a crash the engine may have lost the newest documents whose records the change
    /// log has: they are redone, once the tables are loaded. A log that was on in the last
    /// run but is not wanted now (`stale`) is redone too, then removed.
    fn redo(&self, stale: Option<Arc<ChangeLog>>, db_dir: &Path) -> Result<()> {
        if let Some(log) = &self.inner.changelog {
            let tables = self.inner.tables.read().clone();
            log.recover(&self.inner.storage, &tables)?;
        }
        if let Some(log) = stale {
            let tables = self.inner.tables.read().clone();
            log.recover(&self.inner.storage, &tables)?;
            self.inner.storage.flush_blocking()?;
            drop(log);
            ChangeLog::disable(&self.inner.storage, db_dir)?;
        }
        Ok(())
    }

    /// Index builds interrupted by a crash start again from scratch (they are idempotent).
    /// One that fails again is removed, as a failed create_index is: the rest of the
    /// database opens.
    fn finish_index_builds(&self, unfinished: Vec<(Arc<TableState>, Arc<IndexState>)>) {
        for (table, index) in unfinished {
            if let Err(e) = self.backfill_blocking(&table, &index) {
                tracing::warn!(
                    "index `{}` of table `{}` could not be built and was removed: {e}",
                    index.name,
                    table.name
                );
                self.abandon_index(&table, &index);
            }
        }
    }
}

impl DbInner {
    /// The state of a database just opened on `storage`, whose sequence numbers go on
    /// after `seq`; its tables are loaded next (`load_catalog`).
    fn new(
        storage: Storage,
        config: Config,
        meta: Tree,
        seq: u64,
        changelog: Option<Arc<ChangeLog>>,
    ) -> Result<Self> {
        let catalog = storage.tree(CATALOG_TREE)?;
        let identity = identity_of(&storage, &meta)?;
        let stats_table = Arc::new(TableState::new(
            "stats".into(),
            "id".into(),
            storage.tree("__remodel_stats")?,
        ));
        let visibility = Arc::new(Visibility::new(seq));
        Ok(DbInner {
            flusher: GroupFlush::new(seq, storage.clone(), changelog.clone(), visibility.clone()),
            changelog,
            storage,
            config,
            catalog,
            tables: RwLock::new(HashMap::new()),
            writer: Mutex::new(seq),
            handoffs: write::Handoffs::default(),
            closures: write::ClosureWatch::default(),
            seq_reserved: AtomicU64::new(seq),
            identity,
            meta,
            visibility,
            sink: OnceLock::new(),
            stats: Stats::default(),
            stats_table,
            closed: AtomicBool::new(false),
            closing: Default::default(),
            backend: Default::default(),
            ddl: tokio::sync::Mutex::new(()),
        })
    }
}

/// Refuses a configuration no database opens with.
fn check_config(config: &Config) -> Result<()> {
    // An in-memory database has no page cache.
    if config.cache_bytes < MIN_CACHE_BYTES && !config.in_memory {
        return Err(Error::InvalidConfig(format!(
            "cache_bytes must be at least {MIN_CACHE_BYTES}, got {}",
            config.cache_bytes
        )));
    }
    if config.change_log.is_some_and(|r| r.max_changes == Some(0)) {
        return Err(Error::InvalidConfig(
            "a change log keeps at least 1 change (max_changes: Some(0))".into(),
        ));
    }
    Ok(())
}

/// The database's folder, created when missing, as the registry knows it (`None`: a
/// temporary database).
fn canonical_path(config: &Config) -> Result<Option<PathBuf>> {
    let Some(p) = &config.path else {
        return Ok(None);
    };
    std::fs::create_dir_all(p)
        .map_err(|e| Error::storage_from(format!("cannot create {}: {e}", p.display()), e))?;
    let p = p
        .canonicalize()
        .map_err(|e| Error::storage_from(format!("cannot resolve {}: {e}", p.display()), e))?;
    Ok(Some(p))
}

/// The handle already open in this process for the folder `path`, if any. Refuses a folder
/// whose files something of an earlier open here still holds, or whose data files are
/// missing or damaged (see [`check_files`]).
fn open_here(
    registry: &MutexGuard<'_, HashMap<PathBuf, Registered>>,
    path: Option<&Path>,
) -> Result<Option<Database>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let mut here = false;
    if let Some(reg) = registry.get(path) {
        if let Some(inner) = reg.db.upgrade() {
            if !inner.closed.load(Ordering::Acquire) && !inner.storage.has_failed() {
                return Ok(Some(Database { inner }));
            }
        }
        here = reg.storage.in_use();
    }
    if here {
        // Waiting would not help: what holds the files is alive in this process.
        return Err(open_error(Some(path), OpenFailure::Locked, true));
    }
    check_files(path)?;
    Ok(None)
}

/// Opens the storage engine in `path`. A process that just dropped or closed the database
/// (or exited) may hold its lock a moment longer (sled's I/O threads release it last, 5 to
/// 40 ms later): a short wait, longer when it was open in this process, so that a real
/// holder is still refused quickly.
fn open_storage(
    config: &Config,
    path: Option<&Path>,
    temporary: bool,
    was_open_here: bool,
) -> std::result::Result<Storage, OpenFailure> {
    let patience = if was_open_here {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(500)
    };
    Storage::open_waiting_for_lock(
        EngineConfig {
            path,
            temporary,
            memory: config.in_memory,
            cache_bytes: config.cache_bytes,
            // Saturating: an interval beyond u64 milliseconds is "as rarely as can be", not
            // a wrapped (tiny) one.
            flush_every_ms: Some(
                u64::try_from(config.flush_interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
        },
        patience,
    )
}

/// The database's identity ([`Database::identity`]): the stored one, or one made at random
/// and stored now (a database just created; made durable with the sequence reservation that
/// follows at once).
fn identity_of(storage: &Storage, meta: &Tree) -> Result<u64> {
    if let Some(b) = meta.get(IDENTITY_KEY)? {
        let bytes = b.as_ref().try_into();
        return bytes
            .map(u64::from_be_bytes)
            .map_err(|_| Error::storage("the stored database identity is damaged"));
    }
    let id = uuid::Uuid::new_v4().as_u64_pair().0;
    let mut batch = WriteBatch::default();
    batch.insert(meta, IDENTITY_KEY.to_vec(), id.to_be_bytes().to_vec());
    storage.apply(&batch)?;
    Ok(id)
}

/// Where sequence numbers go on from: where the last run had reserved them (a crash may
/// skip some, never reuse one).
fn reserved_seq(meta: &Tree) -> Result<u64> {
    Ok(match meta.get(SEQ_RESERVED_KEY)? {
        Some(b) => u64::from_be_bytes(
            b.as_ref()
                .try_into()
                .map_err(|_| Error::storage("the stored sequence reservation is damaged"))?,
        ),
        None => 0,
    })
}

/// Opens the change log: the one the database keeps, or one that was on in the last run but
/// is not wanted now, opened only to redo what a crash lost and be removed. A database whose
/// writes are hard by default keeps the log at least as a redo log: a hard write then syncs
/// one file instead of flushing the engine (see `group_flush.rs`).
fn open_change_log(storage: &Storage, config: &Config, db_dir: &Path, seq: u64) -> Result<Logs> {
    let wanted = config.change_log.is_some() || config.durability == Durability::Hard;
    if !wanted && !ChangeLog::was_on(storage)? {
        return Ok(Logs::default());
    }
    let log = Some(Arc::new(ChangeLog::open(
        storage,
        db_dir,
        config.change_log,
        seq,
    )?));
    Ok(match wanted {
        true => Logs {
            kept: log,
            stale: None,
        },
        false => Logs {
            kept: None,
            stale: log,
        },
    })
}

/// The change logs a database opens with (see [`open_change_log`]).
#[derive(Default)]
struct Logs {
    /// The log the database keeps.
    kept: Option<Arc<ChangeLog>>,
    /// One only to redo and remove.
    stale: Option<Arc<ChangeLog>>,
}

/// What the registry of open paths keeps about a database opened in this process.
struct Registered {
    db: Weak<DbInner>,
    /// Alive while anything of its storage is (a table or iterator outliving the handle).
    storage: Liveness,
}

fn open_registry() -> &'static Mutex<HashMap<PathBuf, Registered>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Registered>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

/// The smallest page cache accepted (sled panics with none).
const MIN_CACHE_BYTES: u64 = 64 * 1024;

/// Where temporary databases go: shared memory when there is some (fast, as sled's own
/// temporary files), else the system's temporary folder. Each is a folder named after its
/// process, so that the next `temporary()` can remove those of processes that died without
/// cleaning up (the engine removes a temporary database's folder only when it is dropped).
fn temporary_dir() -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const PREFIX: &str = "remodel-tmp-";
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    // Where process ids can be checked (Linux), clean up after dead processes.
    if Path::new("/proc/self").exists() {
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                    continue;
                };
                let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{PREFIX}{}-{nanos}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::storage_from(
            format!(
                "cannot create a temporary database in {}: {e}",
                base.display()
            ),
            e,
        )
    })?;
    Ok(dir)
}

/// The file that says a database was opened (and so may hold data) in a folder: written on
/// the first successful open. Without it, an empty or missing data file is a creation that a
/// crash interrupted, not a loss.
const MARKER_FILE: &str = "remodel.opened";

/// Refuses a database folder whose data files are missing or damaged although a database was
/// opened there before: the engine would silently start an empty database over it.
fn check_files(path: &Path) -> Result<()> {
    if !path.join(MARKER_FILE).exists() {
        return Ok(()); // a new database, or one whose creation a crash interrupted
    }
    // Which files must be there is the engine's business.
    crate::storage::check_files(path)
}

/// Writes the [`MARKER_FILE`] of a database folder that opened (once).
fn mark_opened(path: &Path) {
    let marker = path.join(MARKER_FILE);
    if marker.exists() {
        return;
    }
    let written = std::fs::File::create(&marker).and_then(|mut f| {
        use std::io::Write;
        f.write_all(b"a Remodel database was opened in this folder\n")?;
        f.sync_all()
    });
    if let Err(e) = written {
        // Only the detection of a lost data file depends on it.
        tracing::warn!("cannot write {}: {e}", marker.display());
    }
}

/// The error for a failed open, naming its cause.
fn open_error(path: Option<&Path>, failure: OpenFailure, here: bool) -> Error {
    let at = path.map_or_else(
        || "a temporary database".into(),
        |p| p.display().to_string(),
    );
    match failure {
        OpenFailure::Locked if here => Error::storage(format!(
            "cannot open the database at {at}: it is still open in this process (a handle, \
             table, iterator or feed of an earlier open is alive; drop it, or keep using it)"
        )),
        OpenFailure::Locked => Error::storage(format!(
            "cannot open the database at {at}: another process has it open"
        )),
        OpenFailure::Io(e) => {
            use std::io::ErrorKind;
            let cause = match e.kind() {
                ErrorKind::StorageFull => "the disk is full",
                ErrorKind::ReadOnlyFilesystem => "the file system is read-only",
                ErrorKind::PermissionDenied => "permission denied",
                _ => "an I/O error",
            };
            Error::storage_from(
                format!("cannot open the database at {at}: {cause} ({e})"),
                e,
            )
        }
        OpenFailure::Damaged(reason) => Error::Damaged { path: at, reason },
    }
}
