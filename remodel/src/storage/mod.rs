//! The narrow storage interface the store is built on.
//!
//! Everything above this module sees named trees of ordered byte keys, atomic multi-tree
//! write batches, and flushes; nothing else of sled leaks out. That keeps the engine
//! replaceable (sled 0.34 has known crash-consistency reports; another engine may be added
//! beside it) and keeps the write path in one place.

mod journal;

use crate::{Error, Result};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

const JOURNAL_TREE: &str = "__remodel_journal";

/// Bytes handed out by the engine (cheap to clone, derefs to `[u8]`).
pub(crate) type Bytes = sled::IVec;

/// Engine settings taken from the database configuration.
pub(crate) struct EngineConfig<'a> {
    pub path: Option<&'a Path>,
    /// Remove the files when the engine is dropped (temporary databases).
    pub temporary: bool,
    pub cache_bytes: u64,
    pub flush_every_ms: Option<u64>,
}

/// What every handle on one open engine shares: whether it failed, and (by its reference
/// count) whether anything of it (a tree, an iterator) is still alive.
#[derive(Default)]
struct Shared {
    /// Set when a write or a flush failed in a way that leaves memory and disk disagreeing:
    /// from then on every operation fails, so that no reader sees what was not acknowledged.
    failed: OnceLock<String>,
}

impl Shared {
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

impl OpenFailure {
    fn from_sled(e: sled::Error) -> Self {
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
}

/// Tells whether anything of an engine (a handle, tree or iterator) is still alive.
#[derive(Clone, Default)]
pub(crate) struct Liveness(Weak<Shared>);

impl Liveness {
    /// True while any handle, tree or iterator of the engine is alive: its files stay locked.
    pub(crate) fn in_use(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// An open storage engine.
#[derive(Clone)]
pub(crate) struct Storage {
    db: sled::Db,
    /// Intent records of multi-key batches (see `journal`).
    journal: sled::Tree,
    journal_seq: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

/// One ordered tree of byte keys.
#[derive(Clone)]
pub(crate) struct Tree {
    inner: sled::Tree,
    name: String,
    shared: Arc<Shared>,
    /// The error for "this tree was dropped" (which table or index it was).
    missing: Error,
}

impl Storage {
    /// Opens the engine; a failure says what kind it is, so that the caller can name it.
    pub(crate) fn open(cfg: EngineConfig<'_>) -> Result<Self, OpenFailure> {
        // sled panics on some damaged files (and on some settings): a typed error instead.
        let opened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open_sled(cfg)));
        match opened {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(OpenFailure::from_sled(e)),
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

    fn open_sled(cfg: EngineConfig<'_>) -> sled::Result<Self> {
        let mut sc = sled::Config::new()
            .cache_capacity(cfg.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(cfg.flush_every_ms)
            .temporary(cfg.temporary);
        if let Some(p) = cfg.path {
            sc = sc.path(p);
        }
        let db = sc.open()?;
        let journal = db.open_tree(JOURNAL_TREE)?;
        let mut storage = Storage {
            db,
            journal,
            journal_seq: Arc::new(AtomicU64::new(0)),
            shared: Arc::default(),
        };
        let next = storage.replay_journal()?;
        storage.journal_seq = Arc::new(AtomicU64::new(next));
        Ok(storage)
    }

    /// Whether anything of this engine is still alive, for the registry of open paths.
    pub(crate) fn liveness(&self) -> Liveness {
        Liveness(Arc::downgrade(&self.shared))
    }

    /// Fails when an earlier write or flush failed (see [`Shared::failed`]).
    pub(crate) fn check(&self) -> Result<()> {
        self.shared.check()
    }

    /// Whether an earlier write or flush failed.
    pub(crate) fn has_failed(&self) -> bool {
        self.shared.failed.get().is_some()
    }

    pub(crate) fn tree(&self, name: &str) -> Result<Tree> {
        Ok(Tree {
            inner: self.db.open_tree(name)?,
            name: name.to_string(),
            shared: self.shared.clone(),
            missing: Error::Storage(format!("tree `{name}` does not exist")),
        })
    }

    pub(crate) fn drop_tree(&self, name: &str) -> Result<()> {
        self.check()?;
        self.db.drop_tree(name)?;
        Ok(())
    }

    /// Applies all writes of the batch atomically: after a crash either all or none are there.
    /// A batch that fails part way is undone before the error returns, and leaves no journal
    /// entry: a later open must never apply it to other trees of the same names.
    pub(crate) fn apply(&self, batch: &WriteBatch) -> Result<()> {
        self.check()?;
        match batch.ops.as_slice() {
            [] => Ok(()),
            // One key is atomic by itself.
            [(i, key, value)] => {
                let tree = &batch.trees[*i];
                tree.write(key, value.as_deref()).map(drop)
            }
            ops => {
                // Several keys: through the journal (see `journal`).
                let id = self
                    .journal_seq
                    .fetch_add(1, Ordering::Relaxed)
                    .to_be_bytes();
                let entry =
                    journal::encode(ops.iter().map(|(i, k, v)| {
                        (batch.trees[*i].name.as_str(), k.as_slice(), v.as_deref())
                    }));
                self.journal.insert(id, entry)?;
                let mut undo: Vec<(usize, &[u8], Option<Bytes>)> = Vec::with_capacity(ops.len());
                for (i, key, value) in ops {
                    match batch.trees[*i].write(key, value.as_deref()) {
                        Ok(previous) => undo.push((*i, key, previous)),
                        Err(e) => return Err(self.undo(batch, id, undo, e)),
                    }
                }
                if let Err(e) = self.journal.remove(id) {
                    // The entry stays: nothing may be written after it, or the next open
                    // would apply it on top of later writes.
                    return Err(self.shared.fail(format!(
                        "removing a journal entry failed: {}",
                        Error::from(e)
                    )));
                }
                Ok(())
            }
        }
    }

    /// Undoes the applied part of a failed batch, newest first, and removes its journal
    /// entry; returns the error to report. When the undo fails too, the engine is marked
    /// failed (the entry stays and the next open completes the batch).
    fn undo(
        &self,
        batch: &WriteBatch,
        id: [u8; 8],
        undo: Vec<(usize, &[u8], Option<Bytes>)>,
        cause: Error,
    ) -> Error {
        let undone = undo
            .iter()
            .rev()
            .try_for_each(|(i, key, previous)| {
                batch.trees[*i].write(key, previous.as_deref()).map(drop)
            })
            .and_then(|()| self.journal.remove(id).map(drop).map_err(Error::from));
        match undone {
            Ok(()) => cause,
            Err(e) => self.shared.fail(format!(
                "a write failed ({cause}) and could not be undone ({e})"
            )),
        }
    }

    /// Applies the batches a crash left in the journal, oldest first.
    fn replay_journal(&self) -> sled::Result<u64> {
        let mut next = 0;
        for entry in self.journal.iter() {
            let (id, bytes) = entry?;
            let ops = journal::decode(&bytes)
                .map_err(|_| sled::Error::Unsupported("a journal entry is damaged".into()))?;
            for (tree, key, value) in ops {
                let tree = self.db.open_tree(&tree)?;
                match value {
                    Some(v) => tree.insert(key, v)?,
                    None => tree.remove(key)?,
                };
            }
            self.journal.remove(&id)?;
            next = u64::from_be_bytes(id.as_ref().try_into().unwrap_or([0; 8])) + 1;
        }
        self.db.flush()?;
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
            .map_err(|e| Error::Storage(format!("flush task failed: {e}")))?
    }

    /// Flushes on the calling thread. A failed flush marks the engine failed: what it did not
    /// write is still in memory, and readers must not see writes that were not acknowledged.
    pub(crate) fn flush_blocking(&self) -> Result<()> {
        self.check()?;
        self.db.flush().map_err(|e| {
            self.shared
                .fail(format!("writing to disk failed: {}", Error::from(e)))
        })?;
        Ok(())
    }
}

impl Tree {
    /// The same tree, reporting `missing` when it was dropped (a table's or index's error).
    pub(crate) fn on_missing(mut self, missing: Error) -> Self {
        self.missing = missing;
        self
    }

    fn err(&self, e: sled::Error) -> Error {
        match e {
            sled::Error::CollectionNotFound(_) => self.missing.clone(),
            e => e.into(),
        }
    }

    /// Writes one key; returns its previous value.
    fn write(&self, key: &[u8], value: Option<&[u8]>) -> Result<Option<Bytes>> {
        match value {
            Some(v) => self.inner.insert(key, v),
            None => self.inner.remove(key),
        }
        .map_err(|e| self.err(e))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.shared.check()?;
        self.inner.get(key).map_err(|e| self.err(e))
    }

    fn wrap(&self, inner: sled::Iter) -> Iter {
        Iter {
            inner,
            shared: self.shared.clone(),
            missing: self.missing.clone(),
            done: false,
        }
    }

    /// Iterates the keys in `(lo, hi)`, in key order (reverse it for descending order).
    pub(crate) fn range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Iter {
        self.wrap(self.inner.range::<Vec<u8>, _>((lo, hi)))
    }

    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> Iter {
        self.wrap(self.inner.scan_prefix(prefix))
    }

    pub(crate) fn iter(&self) -> Iter {
        self.wrap(self.inner.iter())
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

/// An iterator over a tree. It ends after its first error: a dropped tree gives one
/// `NoSuchTable`/`NoSuchIndex` error, not an error per call forever.
pub(crate) struct Iter {
    inner: sled::Iter,
    shared: Arc<Shared>,
    missing: Error,
    done: bool,
}

impl Iter {
    fn step(
        &mut self,
        item: Option<sled::Result<(Bytes, Bytes)>>,
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
                Some(Err(match e {
                    sled::Error::CollectionNotFound(_) => self.missing.clone(),
                    e => e.into(),
                }))
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
        match self
            .trees
            .iter()
            .position(|t| t.inner.name() == tree.inner.name())
        {
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

    #[test]
    fn a_batch_left_in_the_journal_is_applied_on_open() {
        let dir = std::env::temp_dir().join(format!("remodel-journal-{}", std::process::id()));
        let cfg = || EngineConfig {
            path: Some(&dir),
            temporary: false,
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
                .insert(7u64.to_be_bytes(), journal::encode(ops.into_iter()))
                .unwrap();
            s.db.flush().unwrap();
        }
        let s = Storage::open(cfg()).unwrap();
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
