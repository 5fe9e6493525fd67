//! The engine seam: what a storage engine must offer, in engine-neutral types.
//!
//! An engine is a set of named, ordered trees of byte keys with single-key atomic writes and
//! a flush that makes everything written so far durable. That is all the store needs:
//! multi-key crash atomicity (the journal), failure tracking and the rest of `storage` are
//! built on top, once, for every engine. sled is the engine on disk (`sled_engine.rs`),
//! ordered maps in memory the other (`memory_engine.rs`); another (redb, or a networked one)
//! implements these two traits and nothing above `storage`
//! changes.

use std::fmt;
use std::ops::{Bound, Deref};
use std::sync::Arc;

/// A value handed out by an engine: cheap to clone, derefs to `[u8]`.
#[derive(Clone)]
pub(crate) struct Bytes(Repr);

#[derive(Clone)]
enum Repr {
    /// An engine's own shared buffer (no copy on the way out).
    Sled(sled::IVec),
    /// Bytes made here (keys a query names) or by an engine with owned buffers.
    Shared(Arc<[u8]>),
}

impl Bytes {
    pub(super) fn from_sled(v: sled::IVec) -> Self {
        Bytes(Repr::Sled(v))
    }
}

impl From<Arc<[u8]>> for Bytes {
    fn from(v: Arc<[u8]>) -> Self {
        Bytes(Repr::Shared(v))
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(Repr::Shared(v.into()))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Sled(v) => v,
            Repr::Shared(v) => v,
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl From<Bytes> for Arc<[u8]> {
    fn from(b: Bytes) -> Self {
        match b.0 {
            Repr::Shared(v) => v,
            Repr::Sled(v) => Arc::from(&*v),
        }
    }
}

/// An engine's failure, in terms the store can act on.
#[derive(Debug)]
pub(crate) enum EngineError {
    /// The tree was dropped.
    MissingTree,
    /// The file system refused (full, read-only, permission denied, ...).
    Io(std::io::Error),
    /// The engine found damaged data.
    Corruption(String),
    /// Anything else the engine reports.
    Other(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::MissingTree => f.write_str("the tree was dropped"),
            EngineError::Io(e) => write!(f, "{e}"),
            EngineError::Corruption(m) | EngineError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Io(e) => Some(e),
            _ => None,
        }
    }
}

pub(crate) type EngineResult<T> = std::result::Result<T, EngineError>;

/// Entries of a tree, in key order either way.
pub(crate) type EngineIter =
    Box<dyn DoubleEndedIterator<Item = EngineResult<(Bytes, Bytes)>> + Send>;

/// A storage engine: named trees and a flush.
pub(crate) trait Engine: Send + Sync + 'static {
    /// Opens (creating when missing) the tree called `name`.
    fn open_tree(&self, name: &str) -> EngineResult<Arc<dyn EngineTree>>;
    /// Removes a tree and its entries; `false` when there was none.
    fn drop_tree(&self, name: &str) -> EngineResult<bool>;
    /// Makes everything written so far durable (fsync).
    fn flush(&self) -> EngineResult<()>;
}

/// One ordered tree of byte keys; every single-key write is atomic.
pub(crate) trait EngineTree: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> EngineResult<Option<Bytes>>;
    /// Writes (`Some`) or removes (`None`) one key; returns its previous value.
    fn write(&self, key: &[u8], value: Option<&[u8]>) -> EngineResult<Option<Bytes>>;
    /// The entries with keys within the bounds.
    fn range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> EngineIter;
    /// The entries whose keys start with `prefix`.
    fn scan_prefix(&self, prefix: &[u8]) -> EngineIter;
    /// How many entries the tree holds (may read the whole tree).
    fn len(&self) -> usize;
}
