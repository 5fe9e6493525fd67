//! Models to documents and back, with errors that name the table, the key and the field.

use super::{Id, Model, ModelError, Schema};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// Store queries issued by the model layer in this process.
static QUERIES: AtomicU64 = AtomicU64::new(0);

/// Counts one store query (a read the model layer sends to the store).
pub(crate) fn count_query() {
    QUERIES.fetch_add(1, Ordering::Relaxed);
}

/// The number of store reads (point reads and queries) the model layer has issued in this
/// process: a diagnostic, used to check that batched loading takes a constant number of
/// queries whatever the number of rows.
pub fn store_queries() -> u64 {
    QUERIES.load(Ordering::Relaxed)
}

/// Decodes a stored document into a model and runs its `after_load` hook (on the complete
/// model: every field is set before the hook sees it).
pub(crate) fn decode<T: Model>(doc: Value) -> Result<T> {
    decode_ref(&doc)
}

/// [`decode`] from a borrowed document (a document shared by several rows of a batch).
pub(crate) fn decode_ref<T: Model>(doc: &Value) -> Result<T> {
    // Plain serde first: tracking the path costs about half the decode, so it is done only
    // to explain a document that does not fit.
    let mut model = match T::deserialize(doc) {
        Ok(m) => m,
        Err(_) => match serde_path_to_error::deserialize::<_, T>(doc) {
            Ok(m) => m,
            Err(e) => return Err(decode_error(T::schema(), doc, e)),
        },
    };
    model.after_load();
    Ok(model)
}

fn decode_error(
    schema: &Schema,
    doc: &Value,
    e: serde_path_to_error::Error<serde_json::Error>,
) -> Error {
    let key = doc.get(schema.primary_key).cloned().unwrap_or(Value::Null);
    let path = e.path().to_string();
    let reason = e.into_inner().to_string();
    // "missing field `zip`": serde names a missing field only in the message, below the
    // path of the struct that lacks it.
    let missing = reason
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next());
    let field = match (path.as_str(), missing) {
        ("." | "", Some(m)) => m.to_string(),
        (p, Some(m)) => format!("{p}.{m}"),
        (p, None) => p.to_string(),
    };
    ModelError::Decode {
        table: schema.table.to_string(),
        key,
        field,
        reason,
    }
    .into()
}

/// Decodes every document.
pub(crate) fn decode_all<T: Model>(docs: Vec<Value>) -> Result<Vec<T>> {
    docs.into_iter().map(decode).collect()
}

/// The document a model is stored as: a JSON object, without a null primary key (so that the
/// store generates one).
pub(crate) fn to_doc<T: Model>(model: &T) -> Result<Value> {
    let schema = T::schema();
    let mut doc = serde_json::to_value(model).map_err(|e| {
        Error::from(ModelError::Invalid(format!(
            "a {} cannot be stored: {e}",
            schema.model
        )))
    })?;
    match &mut doc {
        Value::Object(m) => {
            if m.get(schema.primary_key).is_some_and(Value::is_null) {
                m.remove(schema.primary_key);
            }
        }
        other => {
            return Err(ModelError::Invalid(format!(
                "a {} must serialize to a JSON object, not {other}",
                schema.model
            ))
            .into())
        }
    }
    Ok(doc)
}

/// Gives a model without a key a new one ([`Id::generate`]), so that writes in one batch
/// can refer to it.
pub(crate) fn ensure_key<T: Model>(model: &mut T) -> Result<Value> {
    match model.key() {
        Some(k) => Ok(k),
        None => {
            let k = Value::from(Id::generate());
            model.set_key(k.clone())?;
            Ok(k)
        }
    }
}

/// Copies into `doc` the stored fields that the model does not know (so that `save` keeps
/// them).
pub(crate) fn keep_unknown(schema: &Schema, doc: &mut Value, stored: Map<String, Value>) {
    if let Value::Object(m) = doc {
        for (k, v) in stored {
            if !schema.fields.contains(&k.as_str()) && !m.contains_key(&k) {
                m.insert(k, v);
            }
        }
    }
}

/// What an update has to write.
pub(crate) enum Diff {
    None,
    /// Only these top-level fields changed, and none of them is an object on either side.
    Merge(Value),
    /// Write the whole document.
    Whole,
}

pub(crate) fn diff(before: &Value, after: &Value) -> Diff {
    let (Value::Object(b), Value::Object(a)) = (before, after) else {
        return Diff::Whole;
    };
    let mut patch = Map::new();
    for (k, v) in a {
        match b.get(k) {
            Some(old) if old == v => {}
            old => {
                if v.is_object() || old.is_some_and(Value::is_object) {
                    return Diff::Whole;
                }
                patch.insert(k.clone(), v.clone());
            }
        }
    }
    // A field that disappeared (skip_serializing_if) must be removed: write it whole.
    if b.keys().any(|k| !a.contains_key(k)) {
        return Diff::Whole;
    }
    if patch.is_empty() {
        Diff::None
    } else {
        Diff::Merge(Value::Object(patch))
    }
}

/// A key as a map key: its JSON text, except that a string is `"` and its raw text (no
/// escaping to do; still distinct from every other value, whose text never starts with `"`).
pub(crate) fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let mut t = String::with_capacity(s.len() + 1);
            t.push('"');
            t.push_str(s);
            t
        }
        other => other.to_string(),
    }
}
