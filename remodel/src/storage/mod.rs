//! The narrow storage interface the store is built on.
//!
//! Everything above this module sees named trees of ordered byte keys, crash-atomic
//! multi-tree write batches, and flushes; no engine type leaks out. The engine itself is
//! behind two small traits (`engine.rs`: named trees with single-key atomic writes, and a
//! flush); sled implements them (`sled_engine.rs`) for databases on disk and temporary ones,
//! and ordered maps in memory (`memory_engine.rs`) for in-memory ones. What the store needs beyond that is built
//! here once for every engine: multi-key crash atomicity through an intent journal, failure
//! tracking (a failed write or flush makes the storage unusable rather than inconsistent),
//! and the errors of dropped trees.

mod engine;
mod journal;
mod memory_engine;
mod sled_engine;

pub(crate) use engine::Bytes;
use engine::{Engine, EngineError, EngineIter, EngineTree};

use crate::{Error, Result};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

const JOURNAL_TREE: &str = "__remodel_journal";
/// Where the engine keeps its flush generation (see [`Generation`]).
const GENERATION_TREE: &str = "__remodel_storage";
const GENERATION_KEY: &[u8] = b"flush_generation";
/// The file next to the engine's that records the generation of its last flush.
const MANIFEST_FILE: &str = "remodel.flushed";

/// Engine settings taken from the database configuration.
#[derive(Clone, Copy)]
pub(crate) struct EngineConfig<'a> {
    pub path: Option<&'a Path>,
    /// Remove the folder when the engine is dropped (temporary databases, in memory or not).
    pub temporary: bool,
    /// Keep the trees in memory (`memory_engine.rs`) instead of sled: only for temporary
    /// databases.
    pub memory: bool,
    pub cache_bytes: u64,
    pub flush_every_ms: Option<u64>,
}

/// What every handle on one open engine shares: whether it failed, and (by its reference
/// count) whether anything of it (a tree, an iterator) is still alive.
#[derive(Default)]
struct EngineHealth {
    /// Set when a write or a flush failed in a way that leaves memory and disk disagreeing:
    /// from then on every operation fails, so that no reader sees what was not acknowledged.
    failed: OnceLock<String>,
    /// Counted flushes (apart: the timer holds them without keeping the engine "alive").
    flushes: Arc<Flushes>,
    /// Deleted when dropped: nothing of it survives a crash.
    temporary: bool,
}

/// Flushes started, and the highest number of one that ended well: everything written
/// before flush `n` started is on disk once `flushed >= n` (see [`Storage::flush_epoch`]).
#[derive(Default)]
struct Flushes {
    started: AtomicU64,
    flushed: AtomicU64,
    /// Written since the timer's last flush (set after each write).
    dirty: AtomicBool,
}

/// Detects an engine that lost data it had on disk (a data file cut short, or replaced by an
/// older copy), which the engine itself opens without a word as a smaller or empty database.
///
/// Every flush writes its *generation* (a number that grows with each flush, across runs) to
/// the engine before it flushes, and once the flush ended, to a small file of its own next to
/// the engine's ([`MANIFEST_FILE`]). So the engine's generation is never below the file's,
/// whatever the moment a crash stops the process: the file is written only after the engine
/// has the number on disk. An engine whose generation is below the file's has lost writes
/// that a flush had made durable, and is refused on open.
///
/// The file is written without an `fsync` (one `pwrite` per flush, no sync): after a power
/// loss it may be older than the engine, which only makes the check weaker, never wrong.
struct Generation {
    /// The engine's tree of the number (written directly: it is part of the flush that writes
    /// it, and does not mark the storage dirty).
    tree: Arc<dyn EngineTree>,
    /// The engine's generation when it was opened: flush `n` of this run is `base + n`.
    base: u64,
    /// Flushes of this run so far.
    count: AtomicU64,
    /// The highest generation written to the engine (under the lock: two flushes at once
    /// must not leave the lower number there).
    written: parking_lot::Mutex<u64>,
    manifest: std::fs::File,
    /// The highest generation written to the manifest.
    recorded: AtomicU64,
}

impl Generation {
    /// Reads the engine's generation and the manifest's, and refuses an engine that is older
    /// than its manifest says (see [`Generation`]).
    fn open(engine: &dyn Engine, dir: &Path) -> Result<Self, OpenFailure> {
        let tree = engine.open_tree(GENERATION_TREE).map_err(|e| match e {
            EngineError::Io(io) => OpenFailure::Io(io),
            e => OpenFailure::Damaged(format!("the storage engine refused it: {e}")),
        })?;
        let stored = match tree.get(GENERATION_KEY) {
            Ok(Some(b)) => match <[u8; 8]>::try_from(&*b) {
                Ok(b) => u64::from_be_bytes(b),
                Err(_) => {
                    return Err(OpenFailure::Damaged(
                        "its stored flush generation is damaged".into(),
                    ))
                }
            },
            Ok(None) => 0,
            Err(EngineError::Io(io)) => return Err(OpenFailure::Io(io)),
            Err(e) => return Err(OpenFailure::Damaged(e.to_string())),
        };
        let path = dir.join(MANIFEST_FILE);
        let recorded = match std::fs::read(&path) {
            Ok(bytes) => match decode_manifest(&bytes) {
                Some(g) => g,
                None => {
                    // Torn or damaged: this open cannot tell, the next flush rewrites it.
                    tracing::warn!(
                        "{} is unreadable: the data files are not checked against it",
                        path.display()
                    );
                    0
                }
            },
            // An engine made before the file existed, or its first open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(OpenFailure::Io(e)),
        };
        if stored < recorded {
            return Err(OpenFailure::Damaged(format!(
                "its data file lost writes that were on disk (it holds those of flush {stored}, \
                 but flush {recorded} had ended): it was cut short, damaged or replaced by an \
                 older copy. Restore it from a backup; to open what is left anyway, remove the \
                 file {MANIFEST_FILE}"
            )));
        }
        let manifest = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(OpenFailure::Io)?;
        Ok(Generation {
            tree,
            base: stored.max(recorded),
            count: AtomicU64::new(0),
            written: parking_lot::Mutex::new(stored),
            manifest,
            recorded: AtomicU64::new(recorded),
        })
    }

    /// Before a flush: writes its generation to the engine (unless a later flush already
    /// wrote a higher one), and returns it.
    fn before(&self) -> Result<u64, EngineError> {
        let generation = self.base + self.count.fetch_add(1, Ordering::AcqRel) + 1;
        let mut written = self.written.lock();
        if generation > *written {
            self.tree
                .write(GENERATION_KEY, Some(&generation.to_be_bytes()))?;
            *written = generation;
        }
        Ok(generation)
    }

    /// After the flush of `generation` ended well: the engine has that generation on disk
    /// (or a higher one), so the manifest may say so. A failure only weakens the check.
    fn after(&self, generation: u64) {
        use std::os::unix::fs::FileExt;
        if self.recorded.fetch_max(generation, Ordering::AcqRel) >= generation {
            return;
        }
        if let Err(e) = self.manifest.write_all_at(&encode_manifest(generation), 0) {
            tracing::warn!("{MANIFEST_FILE} could not be written: {e}");
        }
    }
}

const MANIFEST_MAGIC: &[u8; 8] = b"RMDLFLSH";

/// The manifest's bytes: magic, generation (u64 LE), and a check of both (u64 LE), so that a
/// torn or damaged file is told from a real number.
fn encode_manifest(generation: u64) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(MANIFEST_MAGIC);
    b[8..16].copy_from_slice(&generation.to_le_bytes());
    b[16..].copy_from_slice(&manifest_check(generation).to_le_bytes());
    b
}

fn decode_manifest(bytes: &[u8]) -> Option<u64> {
    // The first 24 bytes: the file is rewritten in place, never shortened.
    let b: &[u8; 24] = bytes.get(..24)?.try_into().ok()?;
    if &b[..8] != MANIFEST_MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let check = u64::from_le_bytes(b[16..].try_into().ok()?);
    (check == manifest_check(generation)).then_some(generation)
}

fn manifest_check(generation: u64) -> u64 {
    (generation ^ 0x5EED_F1A5_4C0F_FEE5)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(23)
}

impl EngineHealth {
    fn check(&self) -> Result<()> {
        match self.failed.get() {
            Some(cause) => Err(Error::Unusable(cause.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, cause: String) -> Error {
        let _ = self.failed.set(cause);
        Error::Unusable(self.failed.get().cloned().unwrap_or_default())
    }
}

/// Why an engine did not open.
#[derive(Debug)]
pub(crate) enum OpenFailure {
    /// Another open engine holds the lock on the files.
    Locked,
    /// The file system refused (full, read-only, permission denied, ...).
    Io(std::io::Error),
    /// The files are damaged or of an unsupported kind.
    Damaged(String),
}

/// Refuses a database folder whose data files are missing or damaged (the caller knows a
/// database was opened there before).
pub(crate) fn check_files(path: &Path) -> Result<()> {
    sled_engine::check_files(path)
}

/// An engine failure as the store reports it: a dropped tree as the error of what it was (a
/// table's or an index's), anything else as a storage error saying what happened.
fn engine_error(e: EngineError, missing: &Error) -> Error {
    match e {
        EngineError::MissingTree => missing.clone(),
        e => Error::storage_from(e.to_string(), e),
    }
}

/// Tells whether anything of an engine (a handle, tree or iterator) is still alive.
#[derive(Clone, Default)]
pub(crate) struct Liveness(Weak<EngineHealth>);

impl Liveness {
    /// True while any handle, tree or iterator of the engine is alive: its files stay locked.
    pub(crate) fn in_use(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// An open storage engine.
#[derive(Clone)]
pub(crate) struct Storage {
    engine: Arc<dyn Engine>,
    /// Intent records of multi-key batches (see `journal`).
    journal: Tree,
    journal_seq: Arc<AtomicU64>,
    shared: Arc<EngineHealth>,
    /// Runs before every flush of the engine (the change log makes itself durable first).
    before_flush: Arc<OnceLock<FlushHook>>,
}

/// What runs before a flush (see [`Storage::before_flush`]).
pub(crate) type FlushHook = Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// One ordered tree of byte keys.
#[derive(Clone)]
pub(crate) struct Tree {
    inner: Arc<dyn EngineTree>,
    name: String,
    shared: Arc<EngineHealth>,
    /// The error for "this tree was dropped" (which table or index it was).
    missing: Error,
}

impl Storage {
    /// [`Storage::open`], retrying for up to `patience` while the files are locked: an
    /// engine this process just dropped may hold its file lock a moment longer (sled's I/O
    /// threads release it last).
    pub(crate) fn open_waiting_for_lock(
        cfg: EngineConfig<'_>,
        patience: Duration,
    ) -> Result<Self, OpenFailure> {
        let started = std::time::Instant::now();
        loop {
            match Storage::open(cfg) {
                Err(OpenFailure::Locked) if started.elapsed() < patience => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                opened => return opened,
            }
        }
    }

    /// Opens the engine; a failure says what kind it is, so that the caller can name it.
    /// Batches a crash left in the journal are completed first.
    ///
    /// With `flush_every_ms`, a thread of its own flushes that often while there are writes
    /// to flush (not the engine's timer: the flushes are counted, see
    /// [`Storage::flush_epoch`], and run the [`Storage::before_flush`] hook).
    pub(crate) fn open(cfg: EngineConfig<'_>) -> Result<Self, OpenFailure> {
        let every = cfg.flush_every_ms.map(Duration::from_millis);
        let cfg = EngineConfig {
            flush_every_ms: None,
            ..cfg
        };
        let engine: Arc<dyn Engine> = if cfg.memory && cfg.temporary {
            Arc::new(memory_engine::MemoryEngine::new(cfg.path))
        } else {
            Arc::new(sled_engine::SledEngine::open(&cfg)?)
        };
        // Before anything is written: an engine that lost data is refused as it is.
        let generation = match cfg.path.filter(|_| !cfg.temporary) {
            Some(dir) => Some(Generation::open(&*engine, dir)?),
            None => None,
        };
        let shared = Arc::new(EngineHealth {
            temporary: cfg.temporary,
            ..EngineHealth::default()
        });
        let engine: Arc<dyn Engine> = Arc::new(Closing {
            engine,
            generation,
            shared: Arc::downgrade(&shared),
        });
        let failed = |e: EngineError| match e {
            EngineError::Io(io) => OpenFailure::Io(io),
            e => OpenFailure::Damaged(format!("the storage engine refused it: {e}")),
        };
        let journal = Tree {
            inner: engine.open_tree(JOURNAL_TREE).map_err(failed)?,
            name: JOURNAL_TREE.to_string(),
            shared: shared.clone(),
            missing: Error::storage(format!("tree `{JOURNAL_TREE}` does not exist")),
        };
        let mut storage = Storage {
            engine,
            journal,
            journal_seq: Arc::new(AtomicU64::new(0)),
            shared,
            before_flush: Arc::new(OnceLock::new()),
        };
        let next = storage.replay_journal().map_err(|e| match e {
            Error::Storage { message, .. } => OpenFailure::Damaged(message),
            e => OpenFailure::Damaged(e.to_string()),
        })?;
        storage.journal_seq = Arc::new(AtomicU64::new(next));
        if let Some(every) = every {
            storage.start_timer(every);
        }
        Ok(storage)
    }

    /// Starts the thread that flushes every `every` (see [`Storage::open`]). It holds the
    /// engine only while it flushes, and ends once the engine is gone.
    fn start_timer(&self, every: Duration) {
        let engine = Arc::downgrade(&self.engine);
        // Weak, and upgraded only for a moment: the registry of open paths counts the
        // strong references of `shared` to tell whether the files are still in use.
        let shared = Arc::downgrade(&self.shared);
        let flushes = self.shared.flushes.clone();
        let hook = Arc::downgrade(&self.before_flush);
        let spawned = std::thread::Builder::new()
            .name("remodel-flush".into())
            .spawn(move || {
                // Wakes at least every 100 ms to see whether the engine is gone.
                let tick = every.min(Duration::from_millis(100));
                let mut since = Duration::ZERO;
                loop {
                    std::thread::sleep(tick);
                    since += tick;
                    if shared.strong_count() == 0 {
                        return;
                    }
                    if since < every {
                        continue;
                    }
                    since = Duration::ZERO;
                    if shared.upgrade().is_none_or(|s| s.failed.get().is_some()) {
                        // Gone, or failed: nothing more reaches the disk (the failure was
                        // reported where it happened).
                        return;
                    }
                    if !flushes.dirty.swap(false, Ordering::AcqRel) {
                        continue;
                    }
                    let (Some(engine), Some(hook)) = (engine.upgrade(), hook.upgrade()) else {
                        return;
                    };
                    if let Err(cause) = flush_counted(&*engine, &flushes, &hook) {
                        tracing::error!("the timed flush failed: {cause}");
                        if let Some(shared) = shared.upgrade() {
                            shared.fail(cause);
                        }
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("the flush thread could not start ({e}): soft writes reach the disk at the next hard write or close");
        }
    }

    /// The number of flushes started so far: what was written before this call survives a
    /// crash once [`Storage::flushed_since`] says so for the number.
    pub(crate) fn flush_epoch(&self) -> u64 {
        self.shared.flushes.started.load(Ordering::SeqCst)
    }

    /// Whether a flush that started after [`Storage::flush_epoch`] returned `epoch` has
    /// ended well. Always true for a temporary storage, which no crash leaves behind: what
    /// waits for its writes to be on disk need not wait.
    pub(crate) fn flushed_since(&self, epoch: u64) -> bool {
        self.shared.temporary || self.shared.flushes.flushed.load(Ordering::SeqCst) > epoch
    }

    /// Whether anything of this engine is still alive, for the registry of open paths.
    pub(crate) fn liveness(&self) -> Liveness {
        Liveness(Arc::downgrade(&self.shared))
    }

    /// Fails when an earlier write or flush failed (see [`EngineHealth::failed`]).
    pub(crate) fn check(&self) -> Result<()> {
        self.shared.check()
    }

    /// Marks the storage failed (what it holds in memory may never reach the disk): every
    /// later write and flush is refused with `cause`.
    pub(crate) fn mark_failed(&self, cause: String) -> Error {
        self.shared.fail(cause)
    }

    /// Whether an earlier write or flush failed.
    pub(crate) fn has_failed(&self) -> bool {
        self.shared.failed.get().is_some()
    }

    pub(crate) fn tree(&self, name: &str) -> Result<Tree> {
        let missing = Error::storage(format!("tree `{name}` does not exist"));
        Ok(Tree {
            inner: self
                .engine
                .open_tree(name)
                .map_err(|e| engine_error(e, &missing))?,
            name: name.to_string(),
            shared: self.shared.clone(),
            missing,
        })
    }

    pub(crate) fn drop_tree(&self, name: &str) -> Result<()> {
        self.check()?;
        let missing = Error::storage(format!("tree `{name}` does not exist"));
        self.engine
            .drop_tree(name)
            .map_err(|e| engine_error(e, &missing))?;
        self.shared.flushes.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Applies all writes of the batch atomically: after a crash either all or none are there.
    /// A batch that fails part way is undone before the error returns, and leaves no journal
    /// entry: a later open must never apply it to other trees of the same names.
    ///
    /// A temporary storage, which no crash leaves behind, writes no journal entry: that
    /// saves two engine writes per multi-key batch (the entry, then its removal), as many as
    /// a document and one index entry. (A database on disk keeps the journal even for
    /// commits its change log could redo: the log's record is not on disk before the batch
    /// is, and the engine writes its own log as its buffers fill, so after a power cut the
    /// engine could hold part of a batch whose record was lost.)
    pub(crate) fn apply(&self, batch: &WriteBatch) -> Result<()> {
        self.check()?;
        let journaled = !self.shared.temporary;
        match batch.ops.as_slice() {
            [] => Ok(()),
            // One key is atomic by itself.
            [(i, key, value)] => {
                let tree = &batch.trees[*i];
                tree.write(key, value.as_deref()).map(drop)
            }
            ops => {
                // Several keys: through the journal (see `journal`), unless nothing outlives
                // a crash.
                let id = journaled.then(|| {
                    self.journal_seq
                        .fetch_add(1, Ordering::Relaxed)
                        .to_be_bytes()
                });
                if let Some(id) = &id {
                    let entry = journal::encode(ops.iter().map(|(i, k, v)| {
                        (batch.trees[*i].name.as_str(), k.as_slice(), v.as_deref())
                    }));
                    self.journal.write(id, Some(&entry))?;
                }
                let mut undo: Vec<(usize, &[u8], Option<Bytes>)> = Vec::with_capacity(ops.len());
                for (i, key, value) in ops {
                    match batch.trees[*i].write(key, value.as_deref()) {
                        Ok(previous) => undo.push((*i, key, previous)),
                        Err(e) => return Err(self.undo(batch, id, undo, e)),
                    }
                }
                if let Some(id) = &id {
                    if let Err(e) = self.journal.write(id, None) {
                        // The entry stays: nothing may be written after it, or the next open
                        // would apply it on top of later writes.
                        return Err(self
                            .shared
                            .fail(format!("removing a journal entry failed: {e}")));
                    }
                }
                Ok(())
            }
        }
    }

    /// Undoes the applied part of a failed batch, newest first, and removes its journal
    /// entry (if it has one); returns the error to report. When the undo fails too, the
    /// engine is marked failed (the entry stays and the next open completes the batch).
    fn undo(
        &self,
        batch: &WriteBatch,
        id: Option<[u8; 8]>,
        undo: Vec<(usize, &[u8], Option<Bytes>)>,
        cause: Error,
    ) -> Error {
        let undone = undo
            .iter()
            .rev()
            .try_for_each(|(i, key, previous)| {
                batch.trees[*i].write(key, previous.as_deref()).map(drop)
            })
            .and_then(|()| match &id {
                Some(id) => self.journal.write(id, None).map(drop),
                None => Ok(()),
            });
        match undone {
            Ok(()) => cause,
            Err(e) => self.shared.fail(format!(
                "a write failed ({cause}) and could not be undone ({e})"
            )),
        }
    }

    /// Applies the batches a crash left in the journal, oldest first.
    fn replay_journal(&self) -> Result<u64> {
        let mut next = 0;
        for entry in self.journal.iter() {
            let (id, bytes) = entry?;
            let ops = journal::decode(&bytes)
                .map_err(|_| Error::storage("a journal entry is damaged"))?;
            for (tree, key, value) in ops {
                self.tree(&tree)?.write(&key, value.as_deref())?;
            }
            self.journal.write(&id, None)?;
            next = u64::from_be_bytes((&*id).try_into().unwrap_or([0; 8])) + 1;
        }
        self.engine
            .flush()
            .map_err(|e| Error::storage(format!("writing to disk failed: {e}")))?;
        Ok(next)
    }

    /// Waits until everything written so far is on disk, without blocking the async runtime.
    /// The fsync runs on tokio's blocking pool, not with sled's `flush_async`: that one runs on
    /// sled's small global I/O pool, and seven concurrent flushes there wait forever for a log
    /// write queued behind them on the same pool (sled#1241).
    pub(crate) async fn flush(&self) -> Result<()> {
        let storage = self.clone();
        tokio::task::spawn_blocking(move || storage.flush_blocking())
            .await
            .map_err(|e| Error::storage(format!("flush task failed: {e}")))?
    }

    /// Sets what runs before every flush (once per open engine): a file whose writes must
    /// be on disk no later than the engine's (the change log) syncs itself there.
    pub(crate) fn before_flush(&self, hook: FlushHook) {
        if self.before_flush.set(hook).is_err() {
            tracing::warn!("a second flush hook was refused");
        }
    }

    /// Flushes on the calling thread. A failed flush marks the engine failed: what it did not
    /// write is still in memory, and readers must not see writes that were not acknowledged.
    ///
    /// So does a failed hook (the change log's `fdatasync`): Linux reports a failed
    /// writeback once, so the next sync of the same file would say it succeeded.
    pub(crate) fn flush_blocking(&self) -> Result<()> {
        self.check()?;
        flush_counted(&*self.engine, &self.shared.flushes, &self.before_flush)
            .map_err(|cause| self.shared.fail(cause))
    }
}

/// The engine as the storage uses it: each flush writes its [`Generation`] (on disk), and
/// the last handle's drop flushes once more (a database dropped without `close`: the engine
/// would flush itself as it closes, but without the generation that lets the next open tell
/// a truncated data file).
///
/// The generation is kept here, not with the flush counters: the flush timer holds those
/// for as long as it runs, and the engine's tree of the number would keep the engine (and
/// its file lock) alive that long after the last handle went.
struct Closing {
    engine: Arc<dyn Engine>,
    /// None for a temporary engine, which no crash leaves behind.
    generation: Option<Generation>,
    shared: Weak<EngineHealth>,
}

impl Engine for Closing {
    fn open_tree(&self, name: &str) -> engine::EngineResult<Arc<dyn EngineTree>> {
        self.engine.open_tree(name)
    }

    fn drop_tree(&self, name: &str) -> engine::EngineResult<bool> {
        self.engine.drop_tree(name)
    }

    fn flush(&self) -> engine::EngineResult<()> {
        let Some(generation) = &self.generation else {
            return self.engine.flush();
        };
        let n = generation.before()?;
        self.engine.flush()?;
        generation.after(n);
        Ok(())
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // Nothing of a failed storage may reach the disk; a temporary one is deleted; and one
        // with nothing written since its last flush has its generation on disk. (What
        // registered a flush hook, the change log, is gone, and synced itself as it went.)
        if shared.failed.get().is_some()
            || self.generation.is_none()
            || !shared.flushes.dirty.load(Ordering::Acquire)
        {
            return;
        }
        if let Err(e) = self.flush() {
            tracing::warn!("the last flush of the storage failed: {e}");
        }
    }
}

/// A flush (see [`Storage::flush_blocking`]), counted in `flushes`. On an error, the cause
/// the caller marks the storage failed with.
fn flush_counted(
    engine: &dyn Engine,
    flushes: &Flushes,
    hook: &OnceLock<FlushHook>,
) -> std::result::Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("writing to disk failed: {e}");
    let n = flushes.started.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(hook) = hook.get() {
        hook().map_err(|e| failed(&e))?;
    }
    engine.flush().map_err(|e| failed(&e))?;
    flushes.flushed.fetch_max(n, Ordering::SeqCst);
    Ok(())
}

impl Tree {
    /// The same tree, reporting `missing` when it was dropped (a table's or index's error).
    pub(crate) fn on_missing(mut self, missing: Error) -> Self {
        self.missing = missing;
        self
    }

    fn err(&self, e: EngineError) -> Error {
        engine_error(e, &self.missing)
    }

    /// Writes one key; returns its previous value.
    fn write(&self, key: &[u8], value: Option<&[u8]>) -> Result<Option<Bytes>> {
        let written = self.inner.write(key, value).map_err(|e| self.err(e));
        // After the write: a timer that took the flag before it would flush without it. Read
        // first: the write path stores to the shared line only once per timer flush (a flag
        // already set stays set until a flush that starts after this write).
        let dirty = &self.shared.flushes.dirty;
        if !dirty.load(Ordering::Acquire) {
            dirty.store(true, Ordering::Release);
        }
        written
    }

    /// Writes one key as part of the flush that is running: for a [`Storage::before_flush`]
    /// hook recording what that flush makes durable. Unlike [`Storage::apply`] it does not
    /// mark the storage written since its last flush: the flush that runs the hook covers
    /// the write, and marking it would make the timer flush again for nothing.
    pub(crate) fn write_in_flush(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.shared.check()?;
        self.inner
            .write(key, Some(value))
            .map(drop)
            .map_err(|e| self.err(e))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.shared.check()?;
        self.inner.get(key).map_err(|e| self.err(e))
    }

    fn wrap(&self, inner: EngineIter) -> Iter {
        Iter {
            inner,
            shared: self.shared.clone(),
            missing: self.missing.clone(),
            done: false,
        }
    }

    /// Iterates the keys in `(lo, hi)`, in key order (reverse it for descending order).
    pub(crate) fn range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Iter {
        self.wrap(self.inner.range(lo, hi))
    }

    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> Iter {
        self.wrap(self.inner.scan_prefix(prefix))
    }

    pub(crate) fn iter(&self) -> Iter {
        self.wrap(self.inner.range(Bound::Unbounded, Bound::Unbounded))
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

/// An iterator over a tree. It ends after its first error: a dropped tree gives one
/// `NoSuchTable`/`NoSuchIndex` error, not an error per call forever.
pub(crate) struct Iter {
    inner: EngineIter,
    shared: Arc<EngineHealth>,
    missing: Error,
    done: bool,
}

impl Iter {
    fn step(
        &mut self,
        item: Option<Result<(Bytes, Bytes), EngineError>>,
    ) -> Option<Result<(Bytes, Bytes)>> {
        if self.done {
            return None;
        }
        if let Err(e) = self.shared.check() {
            self.done = true;
            return Some(Err(e));
        }
        match item? {
            Ok(kv) => Some(Ok(kv)),
            Err(e) => {
                self.done = true;
                Some(Err(engine_error(e, &self.missing)))
            }
        }
    }
}

impl Iterator for Iter {
    type Item = Result<(Bytes, Bytes)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.inner.next();
        self.step(item)
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.inner.next_back();
        self.step(item)
    }
}

/// Writes to several trees, applied together by [`Storage::apply`].
#[derive(Default)]
pub(crate) struct WriteBatch {
    trees: Vec<Tree>,
    ops: Vec<(usize, Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    fn slot(&mut self, tree: &Tree) -> usize {
        match self.trees.iter().position(|t| t.name == tree.name) {
            Some(i) => i,
            None => {
                self.trees.push(tree.clone());
                self.trees.len() - 1
            }
        }
    }

    pub(crate) fn insert(&mut self, tree: &Tree, key: Vec<u8>, value: Vec<u8>) {
        let i = self.slot(tree);
        self.ops.push((i, key, Some(value)));
    }

    pub(crate) fn remove(&mut self, tree: &Tree, key: Vec<u8>) {
        let i = self.slot(tree);
        self.ops.push((i, key, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> Storage {
        Storage::open(EngineConfig {
            path: None,
            temporary: true,
            memory: false,
            cache_bytes: 1 << 20,
            flush_every_ms: None,
        })
        .unwrap()
    }

    #[test]
    fn batch_spans_trees() {
        let s = temp();
        let a = s.tree("a").unwrap();
        let b = s.tree("b").unwrap();
        let mut batch = WriteBatch::default();
        batch.insert(&a, b"k".to_vec(), b"1".to_vec());
        batch.insert(&b, b"k".to_vec(), b"2".to_vec());
        s.apply(&batch).unwrap();
        assert_eq!(a.get(b"k").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"2"[..]));
        let mut batch = WriteBatch::default();
        batch.remove(&a, b"k".to_vec());
        s.apply(&batch).unwrap();
        assert_eq!(a.get(b"k").unwrap(), None);
    }

    /// In-memory storage holds batches like any other, and its temporary folder (where the
    /// database keeps its change log) goes when the last handle does, trees included.
    #[test]
    fn in_memory_storage_keeps_batches_and_removes_its_folder() {
        let dir = std::env::temp_dir().join(format!("remodel-in-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Storage::open(EngineConfig {
            path: Some(&dir),
            temporary: true,
            memory: true,
            cache_bytes: 1 << 20,
            flush_every_ms: Some(1),
        })
        .unwrap();
        let (a, b) = (s.tree("a").unwrap(), s.tree("b").unwrap());
        let mut batch = WriteBatch::default();
        batch.insert(&a, b"k".to_vec(), b"1".to_vec());
        batch.insert(&b, b"k".to_vec(), b"2".to_vec());
        s.apply(&batch).unwrap();
        s.flush_blocking().unwrap();
        assert_eq!(a.get(b"k").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(b.iter().count(), 1);
        drop((s, batch));
        assert!(dir.exists(), "a tree still refers to the storage");
        drop((a, b));
        assert!(!dir.exists());
    }

    /// A multi-key batch goes through the journal on disk (a crash must not leave part of
    /// it), and not in temporary storage (nothing there outlives a crash).
    #[test]
    fn only_storage_on_disk_journals_its_batches() {
        let dir = std::env::temp_dir().join(format!("remodel-journaled-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let on_disk = Storage::open(EngineConfig {
            path: Some(&dir),
            temporary: false,
            memory: false,
            cache_bytes: 1 << 20,
            flush_every_ms: None,
        })
        .unwrap();
        for (s, journaled) in [(&on_disk, 1), (&temp(), 0)] {
            let (a, b) = (s.tree("a").unwrap(), s.tree("b").unwrap());
            let mut batch = WriteBatch::default();
            batch.insert(&a, b"k".to_vec(), b"1".to_vec());
            batch.insert(&b, b"k".to_vec(), b"2".to_vec());
            s.apply(&batch).unwrap();
            assert_eq!(s.journal_seq.load(Ordering::Relaxed), journaled);
            assert_eq!(s.journal.len(), 0, "no entry is left behind");
            assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"2"[..]));
        }
        drop(on_disk);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_left_in_the_journal_is_applied_on_open() {
        let dir = std::env::temp_dir().join(format!("remodel-journal-{}", std::process::id()));
        let cfg = || EngineConfig {
            path: Some(&dir),
            temporary: false,
            memory: false,
            cache_bytes: 1 << 20,
            flush_every_ms: None,
        };
        {
            let s = Storage::open(cfg()).unwrap();
            let t = s.tree("t").unwrap();
            t.write(b"gone", Some(b"x")).unwrap();
            // As if the process died right after writing the intent record.
            let ops: Vec<journal::Op> = vec![
                ("t", b"k", Some(b"v")),
                ("u", b"k2", Some(b"w")),
                ("t", b"gone", None),
            ];
            s.journal
                .write(&7u64.to_be_bytes(), Some(&journal::encode(ops.into_iter())))
                .unwrap();
            s.flush_blocking().unwrap();
        }
        let s = Storage::open_waiting_for_lock(cfg(), Duration::from_secs(5)).unwrap();
        assert_eq!(
            s.tree("t").unwrap().get(b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(
            s.tree("u").unwrap().get(b"k2").unwrap().as_deref(),
            Some(&b"w"[..])
        );
        assert_eq!(s.tree("t").unwrap().get(b"gone").unwrap(), None);
        assert_eq!(s.journal.len(), 0);
        assert_eq!(s.journal_seq.load(Ordering::Relaxed), 8);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The manifest records the generation of the last flush; an engine whose own is lower
    /// (it lost writes a flush had made durable) is refused, one at or above it opens.
    #[test]
    fn an_engine_older_than_its_manifest_is_refused() {
        let dir = std::env::temp_dir().join(format!("remodel-generation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = || EngineConfig {
            path: Some(&dir),
            temporary: false,
            memory: false,
            cache_bytes: 1 << 20,
            flush_every_ms: None,
        };
        let open = || Storage::open_waiting_for_lock(cfg(), Duration::from_secs(5));
        {
            let s = open().unwrap();
            s.tree("t").unwrap().write(b"k", Some(b"v")).unwrap();
            s.flush_blocking().unwrap();
            s.flush_blocking().unwrap();
        }
        let manifest = dir.join(MANIFEST_FILE);
        let recorded = decode_manifest(&std::fs::read(&manifest).unwrap()).unwrap();
        assert!(recorded >= 2, "{recorded}");
        drop(open().unwrap());
        // As if the engine had lost its newest flushes.
        std::fs::write(&manifest, encode_manifest(recorded + 100)).unwrap();
        assert!(matches!(open(), Err(OpenFailure::Damaged(_))));
        // A torn or damaged manifest is not a verdict on the engine.
        std::fs::write(&manifest, b"RMDLFLSH garbage").unwrap();
        let s = open().unwrap();
        s.flush_blocking().unwrap();
        drop(s);
        assert!(decode_manifest(&std::fs::read(&manifest).unwrap()).unwrap() > recorded);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ranges_are_ordered_both_ways() {
        let s = temp();
        let t = s.tree("t").unwrap();
        let mut batch = WriteBatch::default();
        for k in [b"a", b"b", b"c"] {
            batch.insert(&t, k.to_vec(), vec![]);
        }
        s.apply(&batch).unwrap();
        let keys: Vec<_> = t
            .range(Bound::Included(b"b".to_vec()), Bound::Unbounded)
            .rev()
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        assert_eq!(keys, vec![b"c".to_vec(), b"b".to_vec()]);
    }
}
