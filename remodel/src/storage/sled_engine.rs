//! The sled engine: the only file of Remodel that names sled.

use super::engine::{Bytes, Engine, EngineError, EngineIter, EngineResult, EngineTree};
use super::{EngineConfig, OpenFailure};
use crate::{Error, Result};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

pub(crate) struct SledEngine {
    db: sled::Db,
    /// The files to fsync after sled's flush (databases on disk only).
    files: Option<DiskFiles>,
}

/// sled 0.34 makes its log "stable" on Linux with `sync_file_range`, which writes the pages
/// but neither flushes the device's write cache nor the file's metadata, and it writes
/// values too large for a log segment (about 128 KiB) to files under `blobs/` without any
/// sync. That survives a killed process, not a power cut. So a flush here is sled's flush
/// and then a real `fdatasync` of the log file and of the blob files written since the last
/// flush (and of their folder when one was).
struct DiskFiles {
    log: std::fs::File,
    blobs: std::path::PathBuf,
    /// When the last flush started: blob files modified after it (less a margin for coarse
    /// file times) are synced by the next one.
    last: parking_lot::Mutex<std::time::SystemTime>,
}

impl DiskFiles {
    fn open(dir: &Path) -> std::io::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("db"))?;
        // The log file's own name in its folder, made durable once.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(DiskFiles {
            log,
            blobs: dir.join("blobs"),
            last: parking_lot::Mutex::new(std::time::UNIX_EPOCH),
        })
    }

    fn sync(&self) -> std::io::Result<()> {
        let started = std::time::SystemTime::now();
        self.log.sync_data()?;
        let since = *self.last.lock() - std::time::Duration::from_secs(2);
        // Blob files are written once, when they are created, which also touches their
        // folder: a folder untouched since the last flush needs no listing.
        match std::fs::metadata(&self.blobs).and_then(|m| m.modified()) {
            Ok(touched) if touched < since => {
                *self.last.lock() = started;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            _ => {}
        }
        let mut synced_blob = false;
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            // A blob sled removed in the meantime needs no sync.
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if modified >= since {
                match std::fs::File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                synced_blob = true;
            }
        }
        if synced_blob {
            std::fs::File::open(&self.blobs)?.sync_all()?;
        }
        *self.last.lock() = started;
        Ok(())
    }
}

impl SledEngine {
    /// Opens sled with the database's settings. sled panics on some damaged files (and on
    /// some settings): those become a typed failure too.
    pub(crate) fn open(cfg: &EngineConfig<'_>) -> Result<Self, OpenFailure> {
        let open = || {
            let mut sc = sled::Config::new()
                .cache_capacity(cfg.cache_bytes)
                .mode(sled::Mode::HighThroughput)
                .flush_every_ms(cfg.flush_every_ms)
                .temporary(cfg.temporary);
            if let Some(p) = cfg.path {
                sc = sc.path(p);
            }
            sc.open()
        };
        let mut opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(open));
        if matches!(opened, Ok(Err(sled::Error::Corruption { .. }))) {
            // sled 0.34 writes a snapshot to `snap.<lsn>.generating`, syncs it and renames it;
            // a process killed before the rename leaves that file, and the next open takes it
            // (the newest name) for the snapshot and fails (sled#1527). Removing it is safe:
            // sled deletes the older snapshot only after the rename, so it reads that one and
            // replays its log from there. (A live sled of another process never leaves such a
            // file for long: it renames it as soon as it is written.)
            if cfg.path.is_some_and(remove_unfinished_snapshots) {
                opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(open));
            }
        }
        match opened {
            Ok(Ok(db)) => {
                let files = match cfg.path.filter(|_| !cfg.temporary) {
                    Some(dir) => Some(DiskFiles::open(dir).map_err(OpenFailure::Io)?),
                    None => None,
                };
                Ok(SledEngine { db, files })
            }
            Ok(Err(e)) => Err(open_failure(e)),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                Err(OpenFailure::Damaged(format!(
                    "the storage engine failed while reading it ({msg})"
                )))
            }
        }
    }
}

/// Removes the snapshot files sled never finished (see [`SledEngine::open`]); true when there
/// was one.
fn remove_unfinished_snapshots(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!("removed the unfinished snapshot {name} a crash left");
                    removed = true;
                }
                Err(e) => {
                    tracing::warn!("the unfinished snapshot {name} could not be removed: {e}")
                }
            }
        }
    }
    removed
}

fn open_failure(e: sled::Error) -> OpenFailure {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            OpenFailure::Locked
        }
        sled::Error::Io(io) => OpenFailure::Io(io),
        sled::Error::Corruption { at, .. } => OpenFailure::Damaged(match at {
            Some(at) => format!("the storage engine found damaged data at {at:?}"),
            None => "the storage engine found damaged data in its files".into(),
        }),
        e => OpenFailure::Damaged(format!("the storage engine refused it: {e}")),
    }
}

fn engine_error(e: sled::Error) -> EngineError {
    match e {
        sled::Error::CollectionNotFound(_) => EngineError::MissingTree,
        sled::Error::Io(io) => EngineError::Io(io),
        sled::Error::Corruption { .. } => EngineError::Corruption(e.to_string()),
        e => EngineError::Other(e.to_string()),
    }
}

impl Engine for SledEngine {
    fn open_tree(&self, name: &str) -> EngineResult<Arc<dyn EngineTree>> {
        let tree = self.db.open_tree(name).map_err(engine_error)?;
        Ok(Arc::new(SledTree(tree)))
    }

    fn drop_tree(&self, name: &str) -> EngineResult<bool> {
        self.db.drop_tree(name).map_err(engine_error)
    }

    fn flush(&self) -> EngineResult<()> {
        self.db.flush().map_err(engine_error)?;
        match &self.files {
            Some(files) => files.sync().map_err(EngineError::Io),
            None => Ok(()),
        }
    }
}

struct SledTree(sled::Tree);

fn entries(it: sled::Iter) -> EngineIter {
    Box::new(it.map(|r| {
        r.map(|(k, v)| (Bytes::from_sled(k), Bytes::from_sled(v)))
            .map_err(engine_error)
    }))
}

impl EngineTree for SledTree {
    fn get(&self, key: &[u8]) -> EngineResult<Option<Bytes>> {
        self.0
            .get(key)
            .map(|v| v.map(Bytes::from_sled))
            .map_err(engine_error)
    }

    fn write(&self, key: &[u8], value: Option<&[u8]>) -> EngineResult<Option<Bytes>> {
        match value {
            Some(v) => self.0.insert(key, v),
            None => self.0.remove(key),
        }
        .map(|v| v.map(Bytes::from_sled))
        .map_err(engine_error)
    }

    fn range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> EngineIter {
        entries(self.0.range::<Vec<u8>, _>((lo, hi)))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> EngineIter {
        entries(self.0.scan_prefix(prefix))
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Refuses a folder whose sled files are missing or damaged (the caller knows a database was
/// opened there): sled would silently start an empty database over a missing or empty data
/// file, and reports a damaged `conf` only as "corruption" without saying where.
pub(crate) fn check_files(path: &Path) -> Result<()> {
    let damaged = |reason: &str| Error::Damaged {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    // sled's conf: `key: value` lines, then a 4-byte checksum; sled reports a bad one only
    // as "corruption" without saying where.
    if let Ok(conf) = std::fs::read(path.join("conf")) {
        let text = conf.get(..conf.len().saturating_sub(4)).unwrap_or_default();
        let readable = std::str::from_utf8(text)
            .is_ok_and(|t| t.lines().all(|l| l.is_empty() || l.contains(": ")));
        if conf.len() > 8 && !readable {
            return Err(damaged("its `conf` file is damaged"));
        }
    }
    match std::fs::metadata(path.join("db")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(damaged("its data file `db` is missing"))
        }
        Err(e) => Err(Error::storage_from(
            format!(
                "cannot read the data file of the database at {}: {e}",
                path.display()
            ),
            e,
        )),
        Ok(m) if m.len() == 0 => Err(damaged("its data file `db` is empty (0 bytes)")),
        Ok(_) => Ok(()),
    }
}
