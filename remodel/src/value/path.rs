//! Field paths such as `address.city`.

use serde_json::{Map, Value};
use std::fmt;

/// A path to a (possibly nested) field of a document: `name`, or `address.city`.
///
/// Segments are separated by dots. A segment is never empty.
///
/// ```
/// use remodel::value::FieldPath;
/// use serde_json::json;
/// let p = FieldPath::parse("address.city").unwrap();
/// assert_eq!(p.get(&json!({"address": {"city": "Paris"}})), Some(&json!("Paris")));
/// assert_eq!(p.get(&json!({"address": "none"})), None);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath {
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses a dotted path; empty paths and empty segments are rejected.
    pub fn parse(path: &str) -> crate::Result<Self> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(crate::Error::InvalidName {
                name: path.to_string(),
                reason: "a field path is one or more non-empty names separated by dots".into(),
            });
        }
        Ok(FieldPath {
            segments: path.split('.').map(str::to_string).collect(),
        })
    }

    /// The path's segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The value at this path, if every segment exists.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        let mut cur = doc;
        for s in &self.segments {
            cur = cur.as_object()?.get(s)?;
        }
        Some(cur)
    }

    /// Copies the value at this path (if any) from `src` into `dst`, creating the nested
    /// objects on the way (used by `pluck`).
    pub(crate) fn copy_into(&self, src: &Value, dst: &mut Map<String, Value>) {
        let Some(v) = self.get(src) else { return };
        let (last, parents) = self.segments.split_last().expect("paths are never empty");
        let mut cur = dst;
        for s in parents {
            let entry = cur
                .entry(s.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            cur = entry.as_object_mut().expect("just made an object");
        }
        cur.insert(last.clone(), v.clone());
    }

    /// Removes the field at this path from `doc`, if present (used by `without`).
    pub(crate) fn remove_from(&self, doc: &mut Value) {
        let (last, parents) = self.segments.split_last().expect("paths are never empty");
        let mut cur = doc;
        for s in parents {
            match cur.as_object_mut().and_then(|m| m.get_mut(s)) {
                Some(next) => cur = next,
                None => return,
            }
        }
        if let Some(m) = cur.as_object_mut() {
            m.remove(last);
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldPath({self})")
    }
}

impl serde::Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for FieldPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FieldPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_empty_segments() {
        assert!(FieldPath::parse("").is_err());
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse(".a").is_err());
    }

    #[test]
    fn copy_and_remove_nested() {
        let p = FieldPath::parse("a.b").unwrap();
        let src = json!({"a": {"b": 1, "c": 2}, "d": 3});
        let mut m = Map::new();
        p.copy_into(&src, &mut m);
        assert_eq!(Value::Object(m), json!({"a": {"b": 1}}));
        let mut doc = src.clone();
        p.remove_from(&mut doc);
        assert_eq!(doc, json!({"a": {"c": 2}, "d": 3}));
    }
}
