//! Open tables: their trees, indexes and counters.

use super::index::IndexState;
use crate::storage::Tree;
use crate::value::encode_key;
use crate::{Error, Result};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What the catalog stores about a table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TableMeta {
    pub primary_key: String,
    pub indexes: Vec<IndexMeta>,
}

/// What the catalog stores about an index.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct IndexMeta {
    pub name: String,
    pub spec: crate::IndexSpec,
    pub ready: bool,
}

/// An open table.
pub(crate) struct TableState {
    pub name: String,
    pub primary_key: String,
    pub docs: Tree,
    pub indexes: RwLock<Vec<Arc<IndexState>>>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    dropped: AtomicBool,
}

impl TableState {
    pub(crate) fn new(name: String, primary_key: String, docs: Tree) -> Self {
        TableState {
            name,
            primary_key,
            docs,
            indexes: RwLock::new(Vec::new()),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            dropped: AtomicBool::new(false),
        }
    }

    pub(crate) fn meta(&self) -> TableMeta {
        TableMeta {
            primary_key: self.primary_key.clone(),
            indexes: self
                .indexes
                .read()
                .iter()
                .map(|i| IndexMeta {
                    name: i.name.clone(),
                    spec: i.spec.clone(),
                    ready: i.is_ready(),
                })
                .collect(),
        }
    }

    /// The index with this name, which must be ready to be queried.
    pub(crate) fn index(&self, name: &str) -> Result<Arc<IndexState>> {
        let ix = self
            .indexes
            .read()
            .iter()
            .find(|i| i.name == name)
            .cloned()
            .ok_or_else(|| Error::NoSuchIndex {
                table: self.name.clone(),
                index: name.to_string(),
            })?;
        if !ix.is_ready() {
            return Err(Error::IndexNotReady {
                table: self.name.clone(),
                index: name.to_string(),
            });
        }
        Ok(ix)
    }

    /// True when `name` is the primary key (which can be used wherever an index is expected).
    pub(crate) fn is_primary(&self, index: Option<&str>) -> bool {
        index.is_none_or(|i| i == self.primary_key)
    }

    /// The primary key of a document, encoded; errors when missing or invalid.
    pub(crate) fn key_of(&self, doc: &Value) -> Result<Vec<u8>> {
        match doc.get(&self.primary_key) {
            Some(k) => encode_key(k),
            None => Err(Error::InvalidDocument {
                reason: format!("document has no primary key field `{}`", self.primary_key),
            }),
        }
    }

    /// Checks a document about to be written against the limits of the table's indexes
    /// (see [`super::MAX_MULTI_ELEMENTS`]).
    pub(crate) fn check_index_limits(&self, doc: &Value) -> Result<()> {
        self.indexes
            .read()
            .iter()
            .try_for_each(|ix| ix.compiled.check_limits(doc, &ix.name))
    }

    /// About how many index entries writing `doc` computes (see
    /// [`super::index::MAX_COMMIT_INDEX_WORK`]).
    pub(crate) fn index_work(&self, doc: &Value) -> usize {
        self.indexes
            .read()
            .iter()
            .map(|ix| ix.compiled.work(doc))
            .sum()
    }

    pub(crate) fn parse_doc(&self, bytes: &[u8]) -> Result<Value> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::serialization_from(
                format!(
                    "stored document in table `{}` is unreadable: {e}",
                    self.name
                ),
                e,
            )
        })
    }

    /// The stored bytes of the document with this encoded key (counted as a read).
    pub(crate) fn get_raw(&self, key: &[u8]) -> Result<Option<crate::storage::Bytes>> {
        let bytes = self.docs.get(key)?;
        if bytes.is_some() {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(bytes)
    }

    /// A reader of many documents by encoded key, asked in ascending key order (see
    /// [`SortedReader`]).
    pub(crate) fn sorted_reader(&self) -> SortedReader<'_> {
        SortedReader {
            table: self,
            cursor: None,
            #[cfg(debug_assertions)]
            last: Vec::new(),
        }
    }

    pub(crate) fn get_doc(&self, key: &[u8]) -> Result<Option<Value>> {
        self.get_raw(key)?
            .map(|bytes| self.parse_doc(&bytes))
            .transpose()
    }

    pub(crate) fn mark_dropped(&self) {
        self.dropped.store(true, Ordering::Release)
    }

    pub(crate) fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }
}

/// Table and index names: 1 to 64 ASCII letters, digits or `_`.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: "names are 1 to 64 ASCII letters, digits or `_`".into(),
        })
    }
}

/// Reads documents by encoded key in ascending order. Keys close together in the tree (the
/// usual case for a batched load: rows made together, keys that sort together) are read by
/// stepping one iterator, which costs a fraction of a lookup from the root each; a key
/// further on than a few steps starts a new iterator there, which costs about one lookup.
///
/// An iterator steps through its copy of a leaf, so a document may be read as it was when
/// its leaf was reached rather than when its key is: a reader is for one run of reads
/// without a pause (the caller makes a new one after it yields), as consistent as the same
/// gets one after another.
pub(crate) struct SortedReader<'a> {
    table: &'a TableState,
    /// The iterator and the entry it stands on (the first not yet passed).
    cursor: Option<(
        crate::storage::Iter,
        (crate::storage::Bytes, crate::storage::Bytes),
    )>,
    /// The last key asked for (its callers' order is checked in debug builds: a key below
    /// it would be answered "absent" by a cursor already past it).
    #[cfg(debug_assertions)]
    last: Vec<u8>,
}

/// Entries an iterator steps over before a new one starts at the key instead: a step costs
/// far less than a lookup, so a few skipped rows are cheaper than a new descent.
const MAX_SKIP: usize = 4;

impl SortedReader<'_> {
    /// The document at `key`; `key` is not below the previous call's.
    pub(crate) fn get(&mut self, key: &[u8]) -> Result<Option<crate::storage::Bytes>> {
        #[cfg(debug_assertions)]
        {
            debug_assert!(*key >= *self.last, "keys asked in ascending order");
            self.last = key.to_vec();
        }
        let mut skipped = 0;
        while let Some((iter, (k, v))) = self.cursor.as_mut() {
            match (**k).cmp(key) {
                std::cmp::Ordering::Equal => {
                    self.table.reads.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(v.clone()));
                }
                std::cmp::Ordering::Greater => return Ok(None),
                std::cmp::Ordering::Less if skipped < MAX_SKIP => {
                    skipped += 1;
                    match iter.next().transpose()? {
                        Some(entry) => (*k, *v) = entry,
                        None => self.cursor = None,
                    }
                }
                std::cmp::Ordering::Less => break,
            }
        }
        let mut iter = self.table.docs.range(
            std::ops::Bound::Included(key.to_vec()),
            std::ops::Bound::Unbounded,
        );
        self.cursor = iter.next().transpose()?.map(|entry| (iter, entry));
        match &self.cursor {
            Some((_, (k, v))) if **k == *key => {
                self.table.reads.fetch_add(1, Ordering::Relaxed);
                Ok(Some(v.clone()))
            }
            _ => Ok(None),
        }
    }
}
