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
        key: Box::new(key),
        field,
        reason,
    }
    .into()
}

/// Decodes every document.
/// A stored document's bytes decoded straight into the model (no `Value` in between); a
/// document that does not fit is explained as [`decode_ref`] does.
pub(crate) fn decode_bytes<T: Model>(bytes: &[u8]) -> Result<T> {
    match serde_json::from_slice::<T>(bytes) {
        Ok(mut model) => {
            model.after_load();
            Ok(model)
        }
        Err(e) => {
            let doc: Value = serde_json::from_slice(bytes).map_err(|_| {
                Error::serialization_from(
                    format!(
                        "stored document in table `{}` is unreadable: {e}",
                        T::schema().table
                    ),
                    e,
                )
            })?;
            decode_ref(&doc)
        }
    }
}

/// The model with this key, read and decoded straight from the stored bytes.
pub(crate) fn get_model<T: Model>(table: &crate::Table, key: &Value) -> Result<Option<T>> {
    count_query();
    table
        .get_raw(key)?
        .map(|bytes| decode_bytes::<T>(&bytes))
        .transpose()
}

pub(crate) fn decode_all<T: Model>(docs: Vec<Value>) -> Result<Vec<T>> {
    docs.into_iter().map(decode).collect()
}

/// The document a model is stored as: a JSON object, without a null primary key (writes
/// give a model its key first, see [`ensure_key`]). A float JSON cannot hold (NaN,
/// ±infinity) is refused: serde_json would write it as `null`, losing the value and leaving
/// a row the model cannot read.
pub(crate) fn to_doc<T: Model>(model: &T) -> Result<Value> {
    let schema = T::schema();
    let invalid = |e: &dyn std::fmt::Display| {
        Error::from(ModelError::Invalid(format!(
            "a {} cannot be stored: {e}",
            schema.model
        )))
    };
    let mut doc = super::finite::to_json(model).map_err(|e| invalid(&e))?;
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

/// A typed key as the store holds it.
pub(crate) fn key_to_value<T: Model>(key: &T::Key) -> Result<Value> {
    match super::finite::to_json(key) {
        Ok(Value::Null) => {
            Err(ModelError::Invalid(format!("a {} key cannot be null", T::schema().model)).into())
        }
        Ok(v) => Ok(v),
        Err(e) => Err(ModelError::Invalid(format!(
            "a {} key cannot be stored: {e}",
            T::schema().model
        ))
        .into()),
    }
}

/// The model's key, generated (an [`Id`]) when it has none, before anything is written:
/// the store would generate the same kind of key, and a model whose key field cannot hold
/// it (an `Option<u64>`) would be committed and then fail to read its own key back. Such a
/// model is refused here with [`ModelError::Invalid`] saying to give it a key.
pub(crate) fn ensure_key<T: Model>(model: &mut T) -> Result<Value> {
    if let Some(key) = model.key_value() {
        return Ok(key);
    }
    let key = Value::from(Id::generate());
    match model.set_key(key.clone()) {
        Ok(()) => Ok(key),
        Err(Error::Model(ModelError::Decode { reason, .. })) => {
            let schema = T::schema();
            Err(ModelError::Invalid(format!(
                "this {} has no key, and its key field `{}` cannot hold a generated one (a \
                 UUID string: {reason}): give it its key before writing it, or make the field \
                 an `Option<Id>`",
                schema.model, schema.primary_key
            ))
            .into())
        }
        Err(e) => Err(e),
    }
}

/// The document `doc` of a model as it is written over the stored one: the model's own
/// fields as the model has them, and the stored fields that the model does not know, as
/// they are stored (when the write commits: this runs under the commit lock).
pub(crate) fn with_unknown(schema: &Schema, doc: &Value, stored: &Value) -> Value {
    let mut doc = doc.clone();
    if let (Value::Object(m), Value::Object(stored)) = (&mut doc, stored) {
        for (k, v) in stored {
            let known = schema.fields.contains(&k.as_str()) || schema.retired.contains(&k.as_str());
            if !known && !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    doc
}

/// The top-level fields a change of a model changed: set to a new value, or gone (a field
/// that `skip_serializing_if` left out). Applied to the stored document when the write
/// commits, so that every other field, known or not, stays as it is stored then.
pub(crate) struct FieldChanges {
    set: Map<String, Value>,
    unset: Vec<String>,
    /// The model's fields as it stores them: written where the stored row lacks them (a
    /// field the struct defaults), so that an update stores what a save would.
    fill: Map<String, Value>,
}

impl FieldChanges {
    /// What changed from `before` to `after` (two documents of one model).
    pub(crate) fn between(schema: &Schema, before: &Value, after: &Value) -> Self {
        let empty = Map::new();
        let b = before.as_object().unwrap_or(&empty);
        let a = after.as_object().unwrap_or(&empty);
        FieldChanges {
            set: a
                .iter()
                .filter(|(k, v)| b.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            unset: b
                .keys()
                .filter(|k| !a.contains_key(*k))
                .cloned()
                .chain(schema.retired.iter().map(|r| r.to_string()))
                .collect(),
            fill: a.clone(),
        }
    }

    /// Sets `field` to `value` as well.
    pub(crate) fn set(&mut self, field: &str, value: Value) {
        self.unset.retain(|k| k != field);
        self.set.insert(field.to_string(), value);
    }

    /// The stored document with these changes: each changed field replaced whole (an
    /// object-valued field too: entries the program removed stay removed).
    pub(crate) fn apply(&self, stored: &Value) -> Value {
        let mut doc = stored.clone();
        if let Value::Object(m) = &mut doc {
            for (k, v) in &self.set {
                m.insert(k.clone(), v.clone());
            }
            for k in &self.unset {
                m.remove(k);
            }
            for (k, v) in &self.fill {
                if !m.contains_key(k) && !self.unset.contains(k) {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        doc
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
