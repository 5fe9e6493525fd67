//! How an update changes a document: a merge patch, or a read-modify-write closure.

use super::TableState;
use crate::{Error, Result};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// A function computing a patch from the current document (see [`Patch::with`]).
pub(crate) type PatchFn = dyn Fn(&Value) -> Result<Value> + Send + Sync;

/// How an update changes a document: [`Patch::merge`] an object into it, or compute that
/// object from the current document with [`Patch::with`]. A JSON value converts into a merge
/// patch (`update(json!({..}))`).
#[derive(Clone)]
pub struct Patch(pub(crate) PatchKind);

#[derive(Clone)]
pub(crate) enum PatchKind {
    Merge(Value),
    With(Arc<PatchFn>),
}

impl Patch {
    /// Merge this object into the document: nested objects merge, other values replace.
    ///
    /// ```
    /// use remodel::Patch;
    /// use serde_json::json;
    /// let promote = Patch::merge(json!({"rank": "captain"}));
    /// # let _ = promote;
    /// ```
    pub fn merge(object: Value) -> Self {
        Patch(PatchKind::Merge(object))
    }

    /// Compute the object to merge from the current document. It runs under the commit lock,
    /// so a read-modify-write through it never loses a concurrent update.
    ///
    /// The rule: **compute from the document, and return**. The closure must not write to
    /// the database itself ([`Error::WriteInPatch`]), nor wait for anything another write
    /// does: that write waits for the commit lock the closure holds. A closure that holds
    /// the lock for over 2 s makes the writes waiting behind it fail with
    /// [`Error::CommitStalled`] (so such a wait ends, with an error, instead of hanging
    /// every writer).
    ///
    /// ```
    /// use remodel::Patch;
    /// use serde_json::json;
    /// let bump = Patch::with(|doc| Ok(json!({"score": doc["score"].as_i64().unwrap_or(0) + 1})));
    /// # let _ = bump;
    /// ```
    pub fn with(f: impl Fn(&Value) -> Result<Value> + Send + Sync + 'static) -> Self {
        Patch(PatchKind::With(Arc::new(f)))
    }

    /// Checks a merge patch against the depth limit (a `with` closure's result is checked
    /// when it runs).
    pub(crate) fn check_depth(&self) -> Result<()> {
        match &self.0 {
            PatchKind::Merge(v) => crate::value::check_depth(v, "patch"),
            PatchKind::With(_) => Ok(()),
        }
    }

    pub(super) fn apply(&self, table: &TableState, doc: &Value) -> Result<Value> {
        let patch_owned;
        let patch = match &self.0 {
            PatchKind::Merge(v) => v,
            PatchKind::With(f) => {
                patch_owned = crate::value::admit(
                    super::in_patch(|| f(doc))?,
                    "the patch a Patch::with closure returned",
                )?;
                &patch_owned
            }
        };
        if !patch.is_object() {
            return Err(Error::InvalidDocument {
                reason: format!("an update must be an object, got {patch}"),
            });
        }
        let mut out = doc.clone();
        merge(&mut out, patch);
        settle(table, doc, out)
    }
}

/// A function computing a whole new document from the stored one, under the commit lock
/// (see [`crate::Get::replace_with`]).
pub(crate) type ReplaceFn = dyn Fn(&Value) -> Result<Value> + Send + Sync;

/// A function deciding what an insert writes over a stored document with the same key:
/// `(stored, new) -> written` (see [`crate::Insert::conflict_with`]).
pub(crate) type ResolveFn = dyn Fn(&Value, &Value) -> Result<Value> + Send + Sync;

/// Runs a replacement closure on the stored document `doc` and checks what it made.
pub(super) fn replace_with(table: &TableState, doc: &Value, f: &ReplaceFn) -> Result<Value> {
    let out = crate::value::admit(
        super::in_patch(|| f(doc))?,
        "the document a replace_with closure returned",
    )?;
    replaced(table, doc, out)
}

/// Runs a conflict closure on the stored document `doc` and the inserted one `new`, and
/// checks what it made.
pub(super) fn resolve(
    table: &TableState,
    doc: &Value,
    new: &Value,
    f: &ResolveFn,
) -> Result<Value> {
    let out = crate::value::admit(
        super::in_patch(|| f(doc, new))?,
        "the document a conflict_with closure returned",
    )?;
    replaced(table, doc, out)
}

/// Checks a whole replacement `out` of the stored `doc`: an object, whose key is absent (it
/// gets the stored one) or the same.
fn replaced(table: &TableState, doc: &Value, mut out: Value) -> Result<Value> {
    let Value::Object(map) = &mut out else {
        return Err(Error::InvalidDocument {
            reason: format!("a replacement must be a JSON object, got {out}"),
        });
    };
    if !map.contains_key(&table.primary_key) {
        if let Some(k) = doc.get(&table.primary_key) {
            map.insert(table.primary_key.clone(), k.clone());
        }
    }
    settle(table, doc, out)
}

/// Checks the document `out` that a write made of the stored `doc`: within the index limits,
/// with the same primary key (kept in its stored spelling).
fn settle(table: &TableState, doc: &Value, mut out: Value) -> Result<Value> {
    table.check_index_limits(&out)?;
    let same_key = match (out.get(&table.primary_key), doc.get(&table.primary_key)) {
        (Some(a), Some(b)) => crate::value::compare(a, b) == std::cmp::Ordering::Equal,
        (None, None) => true,
        _ => false,
    };
    if same_key {
        // Keep the stored spelling of the key (1 stays 1 when the patch says 1.0).
        if let (Some(k), Value::Object(m)) = (doc.get(&table.primary_key), &mut out) {
            m.insert(table.primary_key.clone(), k.clone());
        }
        Ok(out)
    } else {
        Err(Error::InvalidDocument {
            reason: format!(
                "the primary key `{}` of a document cannot be changed (from {} to {})",
                table.primary_key,
                doc.get(&table.primary_key).unwrap_or(&Value::Null),
                out.get(&table.primary_key).unwrap_or(&Value::Null)
            ),
        })
    }
}

impl fmt::Debug for Patch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PatchKind::Merge(v) => f.debug_tuple("Merge").field(v).finish(),
            PatchKind::With(_) => f.write_str("With(<function>)"),
        }
    }
}

impl From<Value> for Patch {
    fn from(v: Value) -> Self {
        Patch::merge(v)
    }
}

/// Merges `patch` into `doc`: nested objects merge recursively, other values replace.
pub(crate) fn merge(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(d), Value::Object(p)) => {
            for (k, v) in p {
                match d.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (d, p) => *d = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_deep_for_objects_only() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1});
        merge(&mut doc, &json!({"a": {"b": 5}, "l": [3], "y": null}));
        assert_eq!(
            doc,
            json!({"a": {"b": 5, "c": 2}, "l": [3], "x": 1, "y": null})
        );
    }
}
