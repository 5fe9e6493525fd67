//! The documented rules, written independently of the store, that the model-based tests
//! check it against.

use remodel::value::compare;
use remodel::{IndexSpec, Value};

/// The value at a dotted path.
pub fn path_get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |d, s| d.as_object()?.get(s))
}

/// Merge as documented: nested objects merge, other values (null included) replace.
pub fn merge(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(d), Value::Object(p)) => {
            for (k, v) in p {
                match d.get_mut(k) {
                    Some(old) if old.is_object() && v.is_object() => merge(old, v),
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (d, p) => *d = p.clone(),
    }
}

/// The values under which a document is in an index, as `remodel/src/db/index.rs` documents
/// them (`IndexSpec` and its compiled form): none for a missing or null field; compound: every
/// field present and non-null; multi: each distinct non-null element.
pub fn index_values(spec: &IndexSpec, doc: &Value) -> Vec<Value> {
    let get = |f: &str| path_get(doc, f).filter(|v| !v.is_null());
    if spec.is_compound() {
        return match spec.fields().iter().map(|f| get(f).cloned()).collect() {
            Some(parts) => vec![Value::Array(parts)],
            None => Vec::new(),
        };
    }
    match get(&spec.fields()[0]) {
        None => Vec::new(),
        Some(Value::Array(items)) if spec.is_multi() => {
            let mut out: Vec<Value> = Vec::new();
            for i in items.iter().filter(|i| !i.is_null()) {
                if !out.iter().any(|o| compare(o, i).is_eq()) {
                    out.push(i.clone());
                }
            }
            out
        }
        Some(v) => vec![v.clone()],
    }
}
