//! The one error type of Remodel.

use serde_json::Value;
use std::sync::Arc;

/// Every error a Remodel operation can return.
///
/// Variants are meant to be matched on: a caller can tell a missing table from a key conflict
/// from a storage failure without parsing messages. Messages name the offending value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named table does not exist.
    #[error("no such table: `{0}`")]
    NoSuchTable(String),
    /// The named index does not exist on the table.
    #[error("no such index `{index}` on table `{table}`")]
    NoSuchIndex {
        /// The table that was searched.
        table: String,
        /// The missing index.
        index: String,
    },
    /// A table with this name already exists.
    #[error("table `{0}` already exists")]
    TableExists(String),
    /// An index with this name already exists on the table.
    #[error("index `{index}` already exists on table `{table}`")]
    IndexExists {
        /// The table.
        table: String,
        /// The index that already exists.
        index: String,
    },
    /// A table, index or field name that is not allowed.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A document that cannot be stored (not an object, bad field, ...).
    #[error("invalid document: {reason}")]
    InvalidDocument {
        /// What is wrong with the document.
        reason: String,
    },
    /// A primary key that cannot be used (null, object, too long, ...).
    #[error("invalid primary key {key}: {reason}")]
    InvalidKey {
        /// The rejected key, as JSON.
        key: Value,
        /// Why it was rejected.
        reason: String,
    },
    /// An insert found a document with the same primary key (conflict policy `error`).
    #[error("duplicate primary key {key} in table `{table}`")]
    KeyConflict {
        /// The table written to.
        table: String,
        /// The key that already exists.
        key: Value,
    },
    /// A query that cannot be run, with the reason.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A query that can be run but not watched (`limit` without an index ordering, `skip`,
    /// a transform after `limit`, ...), with the reason.
    #[error("cannot watch this query: {0}")]
    Unwatchable(String),
    /// A changefeed option that cannot be honoured (a negative, NaN or infinite squash window, a
    /// queue size of 0, offsets on a feed that has no order, an unknown option).
    #[error("invalid feed option: {0}")]
    InvalidFeedOption(String),
    /// An index spec that cannot be built (no field, compound and multi at once, a bad path).
    #[error("invalid index spec: {0}")]
    InvalidIndexSpec(String),
    /// A batch that lists more writes than one batch may hold.
    #[error("a batch holds at most {max} writes, got {got}")]
    BatchTooLarge {
        /// The most writes a batch may list.
        max: usize,
        /// How many it listed.
        got: usize,
    },
    /// A feed was asked to resume from a cursor older than the change log keeps (or the
    /// database keeps no change log): the changes after it cannot all be delivered. Re-read
    /// the result with `include_initial` instead.
    #[error("cannot resume from cursor {cursor}: {reason}; re-read with include_initial")]
    CursorExpired {
        /// The cursor given.
        cursor: String,
        /// Why (older than the retention, no change log).
        reason: String,
    },
    /// A batch's precondition did not hold (see `Batch::require_empty`); nothing was written.
    #[error("precondition failed: {0}")]
    Precondition(String),
    /// A batch required a document that is not there when it commits (see
    /// `Batch::require_exists`); nothing was written.
    #[error("no document {key} in table `{table}`")]
    NotFound {
        /// The table.
        table: String,
        /// The missing document's primary key.
        key: Value,
    },
    /// An index that is still being built was queried.
    #[error("index `{index}` on table `{table}` is not ready yet (backfill in progress)")]
    IndexNotReady {
        /// The table.
        table: String,
        /// The index being built.
        index: String,
    },
    /// A changefeed ended because what it watched went away (table or index dropped,
    /// database closed).
    #[error("changefeed aborted: {0}")]
    FeedAborted(String),
    /// A changefeed consumer fell behind: its queue overflowed and `skipped` changes were
    /// discarded. The feed goes on after this item.
    #[error("changefeed queue overflowed: {skipped} changes were skipped")]
    FeedOverflow {
        /// How many changes were discarded.
        skipped: u64,
    },
    /// A value nests arrays and objects deeper than the store accepts
    /// ([`crate::value::MAX_DEPTH`] levels): a document, patch, key, predicate or index bound.
    /// Nothing was written.
    #[error("{what} is nested deeper than the limit of {limit} levels")]
    TooDeep {
        /// What was refused (`document #0`, `primary key`, `predicate`, ...).
        what: String,
        /// The limit, [`crate::value::MAX_DEPTH`].
        limit: usize,
    },
    /// A write is larger than a documented limit (see the README's "Limits"); nothing of it
    /// was written.
    #[error("{what}: {size} is over the limit of {limit}")]
    TooLarge {
        /// What was counted (`elements of the multi index `tags``, ...).
        what: String,
        /// How many there were.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The database cannot be used any more: a write to disk failed (a full disk, an I/O
    /// error) and what is in memory may differ from what is on disk. Every call fails with
    /// this error, so that nobody reads a write that was not acknowledged; drop every handle
    /// and open the database again to recover from what is on disk.
    #[error("the database cannot be used after a failed write ({0}); drop every handle and open it again")]
    Unusable(String),
    /// The files of a database are damaged or missing: it was not opened, and nothing was
    /// replaced by an empty database.
    #[error("the database at {path} is damaged: {reason}")]
    Damaged {
        /// The database folder.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A `Patch::with` closure tried to write to the database (or change its tables). The
    /// closure runs under the commit lock, so the write would wait for itself forever;
    /// compute the patch in the closure and write afterwards.
    #[error("a Patch::with closure cannot write to the database (it runs under the commit lock)")]
    WriteInPatch,
    /// A write gave up waiting for the commit lock: a write's closure (`Patch::with`,
    /// `replace_with`, `conflict_with`) has held it for `held_ms` milliseconds, longer than
    /// the 2 s a closure may take. Nothing of this write was written. A closure runs under
    /// the commit lock and must not wait for anything another write does (that write waits
    /// for the closure): compute from the document it is given, and return.
    #[error("a write's closure has held the commit lock for {held_ms} ms (a closure must not wait for other writes); this write was not made")]
    CommitStalled {
        /// How long the closure had held the lock.
        held_ms: u64,
    },
    /// A [`crate::Config`] setting that cannot work; nothing was opened.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The database was closed.
    #[error("the database is closed")]
    Closed,
    /// The underlying storage engine failed: what happened, and the engine's or the file
    /// system's own error when there is one ([`std::error::Error::source`]).
    #[error("storage error: {message}")]
    Storage {
        /// What failed, in words.
        message: String,
        /// The error behind it.
        #[source]
        source: Option<Source>,
    },
    /// A stored value could not be (de)serialized: what, and the parser's own error when
    /// there is one.
    #[error("serialization error: {message}")]
    Serialization {
        /// What failed, in words.
        message: String,
        /// The error behind it.
        #[source]
        source: Option<Source>,
    },
    /// A delete refused by a reference that restricts it (`ReferenceAction::Restrict`):
    /// rows of `referenced_by` still hold the deleted row's key in `field`; nothing was
    /// written.
    #[error("precondition failed: {why}")]
    Restricted {
        /// The table of the row whose delete was refused.
        table: String,
        /// The table whose rows refer to it.
        referenced_by: String,
        /// Their field holding the key.
        field: String,
        /// How many rows refer to it.
        rows: u64,
        /// The reference's own explanation.
        why: String,
    },
    /// An error of the model layer (`#[derive(Model)]`): a document that does not fit its
    /// struct, a row deleted meanwhile, a relation on an unsaved model, a delete a relation
    /// restricts, a hook that refused. Match on it directly:
    /// `Err(Error::Model(ModelError::NotFound { .. }))`.
    #[error(transparent)]
    Model(ModelError),
}

/// What can go wrong in the model layer (as [`Error::Model`]; also `remodel::model::ModelError`).
///
/// It lives beside [`Error`] (not in the model module) so that a program matches it
/// without unwrapping a boxed error; the store never produces it.
///
/// ```
/// use remodel::model::ModelError;
/// use remodel::Error;
/// let e: Error = ModelError::Rejected("names are required".into()).into();
/// assert!(matches!(e, Error::Model(ModelError::Rejected(_))));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A stored document does not fit the model's struct.
    #[error("document {key} of table `{table}` does not fit the model: field `{field}`: {reason}")]
    Decode {
        /// The table read from.
        table: String,
        /// The document's primary key (`null` when it has none); boxed, so that every
        /// `Result` of the crate stays small.
        key: Box<Value>,
        /// The field that does not fit (a dotted path for nested fields).
        field: String,
        /// What serde said.
        reason: String,
    },
    /// A relation (or an update, delete or feed) needs a saved model, one with a key.
    #[error("this {model} is not saved (it has no key yet): save it before `{operation}`")]
    NotSaved {
        /// The model's type name.
        model: String,
        /// What was asked for (a relation accessor or a method).
        operation: String,
    },
    /// The model's row is not in its table (deleted since the model was read); nothing was
    /// written and no hook ran.
    #[error("{model} {key} is not in table `{table}` (deleted since it was read?)")]
    NotFound {
        /// The model's type name.
        model: String,
        /// The table.
        table: String,
        /// The key.
        key: Box<Value>,
    },
    /// A delete refused because children still refer to the model through a relation with
    /// `on_delete = restrict`; nothing was written.
    #[error("cannot delete this {model}: {children} row(s) of `{relation}` still refer to it (on_delete = restrict)")]
    Restricted {
        /// The model's type name.
        model: String,
        /// The relation's accessor that restricts the delete.
        relation: String,
        /// How many children refer to it, counted in the commit that refused.
        children: u64,
    },
    /// A belongs_to relation's foreign key is empty, so there is no owner to watch.
    #[error("this {model} has no `{relation}` (its `{foreign_key}` is empty)")]
    NoOwner {
        /// The model's type name.
        model: String,
        /// The relation's accessor.
        relation: String,
        /// The empty foreign key field.
        foreign_key: String,
    },
    /// A relation names a model that is not part of the schema being created.
    #[error(
        "`{referenced_by}.{relation}` relates to `{model}`, which is not in the schema: add it \
         (derive Model on it, or list it in the SchemaSet)"
    )]
    Unregistered {
        /// The missing model.
        model: String,
        /// The model whose relation names it.
        referenced_by: String,
        /// The relation's accessor.
        relation: String,
    },
    /// A hook refused the operation (return this from a `before_` hook); nothing was written.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Anything else the model layer refuses, with the reason.
    #[error("{0}")]
    Invalid(String),
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        Error::Model(e)
    }
}

/// `Result` with Remodel's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serialization {
            message: e.to_string(),
            source: Some(Source::new(e)),
        }
    }
}

/// The error behind a storage or serialization failure, shared so that [`Error`] stays
/// `Clone`. Two sources are equal when they say the same.
#[derive(Clone)]
pub struct Source(Arc<dyn std::error::Error + Send + Sync>);

impl Source {
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Source(Arc::new(e))
    }

    /// The underlying error.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Source {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Error {
    /// A storage failure described by `message`.
    pub(crate) fn storage(message: impl Into<String>) -> Self {
        Error::Storage {
            message: message.into(),
            source: None,
        }
    }

    /// A storage failure described by `message`, caused by `source`.
    pub(crate) fn storage_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Storage {
            message: message.into(),
            source: Some(Source::new(source)),
        }
    }

    /// A value that could not be (de)serialized, described by `message`.
    pub(crate) fn serialization(message: impl Into<String>) -> Self {
        Error::Serialization {
            message: message.into(),
            source: None,
        }
    }

    /// A value that could not be (de)serialized, caused by `source`.
    pub(crate) fn serialization_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Serialization {
            message: message.into(),
            source: Some(Source::new(source)),
        }
    }

    pub(crate) fn query(reason: impl Into<String>) -> Self {
        Error::InvalidQuery(reason.into())
    }

    pub(crate) fn unwatchable(reason: impl Into<String>) -> Self {
        Error::Unwatchable(reason.into())
    }

    pub(crate) fn feed_option(reason: impl Into<String>) -> Self {
        Error::InvalidFeedOption(reason.into())
    }
}
