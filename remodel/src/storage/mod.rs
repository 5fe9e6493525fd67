//! The narrow storage interface the store is built on.
//!
//! Everything above this module sees named trees of ordered byte keys, atomic multi-tree
//! write batches, and flushes; nothing else of sled leaks out. That keeps the engine
//! replaceable (sled 0.34 has known crash-consistency reports; another engine may be added
//! beside it) and keeps the write path in one place.

mod journal;

use crate::Result;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const JOURNAL_TREE: &str = "__remodel_journal";

/// Bytes handed out by the engine (cheap to clone, derefs to `[u8]`).
pub(crate) type Bytes = sled::IVec;

/// Engine settings taken from the database configuration.
pub(crate) struct EngineConfig<'a> {
    pub path: Option<&'a Path>,
    pub cache_bytes: u64,
    pub flush_every_ms: Option<u64>,
}

/// An open storage engine.
#[derive(Clone)]
pub(crate) struct Storage {
    db: sled::Db,
    /// Intent records of multi-key batches (see `journal`).
    journal: sled::Tree,
    journal_seq: Arc<AtomicU64>,
}

/// One ordered tree of byte keys.
#[derive(Clone)]
pub(crate) struct Tree {
    inner: sled::Tree,
    name: String,
}

impl Storage {
    pub(crate) fn open(cfg: EngineConfig<'_>) -> Result<Self> {
        let mut sc = sled::Config::new()
            .cache_capacity(cfg.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(cfg.flush_every_ms);
        sc = match cfg.path {
            Some(p) => sc.path(p),
            None => sc.temporary(true),
        };
        let db = sc.open()?;
        let journal = db.open_tree(JOURNAL_TREE)?;
        let mut storage = Storage {
            db,
            journal,
            journal_seq: Arc::new(AtomicU64::new(0)),
        };
        let next = storage.replay_journal()?;
        storage.journal_seq = Arc::new(AtomicU64::new(next));
        Ok(storage)
    }

    pub(crate) fn tree(&self, name: &str) -> Result<Tree> {
        Ok(Tree {
            inner: self.db.open_tree(name)?,
            name: name.to_string(),
        })
    }

    pub(crate) fn drop_tree(&self, name: &str) -> Result<()> {
        self.db.drop_tree(name)?;
        Ok(())
    }

    /// Applies all writes of the batch atomically: after a crash either all or none are there.
    pub(crate) fn apply(&self, batch: &WriteBatch) -> Result<()> {
        match batch.ops.as_slice() {
            [] => Ok(()),
            // One key is atomic by itself.
            [(i, key, value)] => batch.trees[*i].write(key, value.as_deref()),
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
                for (i, key, value) in ops {
                    batch.trees[*i].write(key, value.as_deref())?;
                }
                self.journal.remove(id)?;
                Ok(())
            }
        }
    }

    /// Applies the batches a crash left in the journal, oldest first.
    fn replay_journal(&self) -> Result<u64> {
        let mut next = 0;
        for entry in self.journal.iter() {
            let (id, bytes) = entry?;
            for (tree, key, value) in journal::decode(&bytes)? {
                self.tree(&tree)?.write(&key, value.as_deref())?;
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
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| crate::Error::Storage(format!("flush task failed: {e}")))??;
        Ok(())
    }

    /// Flushes on the calling thread.
    pub(crate) fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

impl Tree {
    fn write(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        match value {
            Some(v) => self.inner.insert(key, v)?,
            None => self.inner.remove(key)?,
        };
        Ok(())
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.inner.get(key)?)
    }

    /// Iterates the keys in `(lo, hi)`, in key order (reverse it for descending order).
    pub(crate) fn range(
        &self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
    ) -> impl DoubleEndedIterator<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        self.inner
            .range::<Vec<u8>, _>((lo, hi))
            .map(|r| r.map_err(Into::into))
    }

    pub(crate) fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        self.inner
            .scan_prefix(prefix)
            .map(|r| r.map_err(Into::into))
    }

    pub(crate) fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = Result<(Bytes, Bytes)>> + Send + 'static {
        self.inner.iter().map(|r| r.map_err(Into::into))
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.len()
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
