//! The public types of writes: when they are acknowledged, what an insert does on a key
//! conflict, and what a write did.

use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// After the data reached the disk (fsync). Survives a crash once acknowledged.
    #[default]
    Hard,
    /// At once; the data is flushed within the configured flush interval.
    Soft,
}

/// What an insert does when a document with the same primary key exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Conflict {
    /// Count an error for that document and keep the stored one (the default).
    #[default]
    Error,
    /// Replace the stored document with the new one.
    Replace,
    /// Merge the new document into the stored one, like an update.
    Update,
}

/// A change to a document: how it looked before and after a write.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ChangePair {
    /// The document before the write (`None` for an insert).
    pub old_val: Option<Value>,
    /// The document after the write (`None` for a delete).
    pub new_val: Option<Value>,
}

/// What a write did.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct WriteResult {
    /// Documents inserted.
    pub inserted: u64,
    /// Documents replaced or updated with a different value.
    pub replaced: u64,
    /// Documents written with the value they already had (no change anywhere).
    pub unchanged: u64,
    /// Documents deleted.
    pub deleted: u64,
    /// Updates, replaces or deletes of documents that did not exist.
    pub skipped: u64,
    /// Documents that could not be written (the first error is in `first_error`).
    pub errors: u64,
    /// The primary keys generated for documents inserted without one.
    pub generated_keys: Vec<Value>,
    /// The first per-document error.
    pub first_error: Option<Error>,
    /// The `{old_val, new_val}` of each write, when asked for with `return_changes`.
    pub changes: Vec<ChangePair>,
}

impl ChangePair {
    /// A change from `old_val` to `new_val`.
    pub fn new(old_val: Option<Value>, new_val: Option<Value>) -> Self {
        ChangePair { old_val, new_val }
    }
}

impl WriteResult {
    /// Turns a result with per-document errors into `Err(first error)`.
    pub fn check(self) -> Result<Self> {
        match self.first_error {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }

    pub(super) fn error(&mut self, e: Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}
