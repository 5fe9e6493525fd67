//! The one error type of Remodel.

use serde_json::Value;

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
    /// A query that cannot be run (or watched), with the reason.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A batch's precondition did not hold (see `Batch::require_empty`); nothing was written.
    #[error("precondition failed: {0}")]
    Precondition(String),
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
    /// The database was closed.
    #[error("the database is closed")]
    Closed,
    /// The underlying storage engine failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored value could not be (de)serialized.
    #[error("serialization error: {0}")]
    Serialization(String),
    /// A model-layer error (see [`crate::model::ModelError`]): a document that does not fit
    /// its struct, a relation on an unsaved model, a model missing from the schema, a hook
    /// that refused.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

/// `Result` with Remodel's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serialization(e.to_string())
    }
}

impl Error {
    pub(crate) fn query(reason: impl Into<String>) -> Self {
        Error::InvalidQuery(reason.into())
    }
}
