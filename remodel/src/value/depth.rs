//! The nesting limit of values, and how to get rid of a value of any depth.
//!
//! serde_json reads at most 127 nested arrays and objects, and every recursive walk of a
//! value (encoding, ordering, cloning, dropping, printing) needs stack in proportion to its
//! depth: a value nested 10,000 levels overflows a 2 MiB worker stack. So the store admits
//! values nested at most [`MAX_DEPTH`] levels, everywhere a value comes in (documents,
//! patches, keys, predicate operands, index bounds), and refuses deeper ones with
//! [`Error::TooDeep`] before it walks them in any other way. What was admitted is readable
//! again: [`MAX_DEPTH`] is below the reader's limit.

use crate::{Error, Result};
use serde_json::Value;

/// The deepest nesting of arrays and objects the store accepts in a document, a patch, a
/// primary key, a predicate operand or an index bound.
///
/// A scalar has depth 0, `[]` and `{}` have depth 1, `{"a": [1]}` has depth 2: a document of
/// depth 100 is accepted, one of depth 101 is refused with [`Error::TooDeep`]. Predicates
/// nest (`and`, `or`, `!`) at most as deep.
pub const MAX_DEPTH: usize = 100;

// Whatever is accepted must be readable: serde_json refuses the 128th nested level.
const _: () = assert!(MAX_DEPTH < 127);

/// Whether `v` nests more than `limit` arrays and objects. The walk stops one level past the
/// limit, so it never recurses deeper than `limit + 1` frames, whatever the depth of `v`.
pub(crate) fn deeper_than(v: &Value, limit: usize) -> bool {
    match v {
        Value::Array(items) => limit == 0 || items.iter().any(|i| deeper_than(i, limit - 1)),
        Value::Object(map) => limit == 0 || map.values().any(|i| deeper_than(i, limit - 1)),
        _ => false,
    }
}

/// Checks that `v` nests at most [`MAX_DEPTH`] levels; `what` names it in the error.
///
/// ```
/// use remodel::value::{check_depth, MAX_DEPTH};
/// use serde_json::{json, Value};
/// let mut v = json!(1);
/// for _ in 0..MAX_DEPTH {
///     v = Value::Array(vec![v]);
/// }
/// assert!(check_depth(&v, "a key").is_ok());
/// assert!(check_depth(&Value::Array(vec![v]), "a key").is_err());
/// ```
pub fn check_depth(v: &Value, what: &str) -> Result<()> {
    if deeper_than(v, MAX_DEPTH) {
        Err(too_deep(what))
    } else {
        Ok(())
    }
}

/// The error for a value nested deeper than [`MAX_DEPTH`].
pub(crate) fn too_deep(what: &str) -> Error {
    Error::TooDeep {
        what: what.to_string(),
        limit: MAX_DEPTH,
    }
}

/// Drops a value of any depth without recursion.
///
/// Dropping a `serde_json::Value` recurses once per level: a value nested 100,000 levels
/// overflows the stack when it is dropped. The store drops the values it refuses this way;
/// callers that build very deep values can use it too.
pub fn drop_deep(v: Value) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        // Each value is dropped after its children were moved out: one level at a time.
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Checks `v` like [`check_depth`]; when it is too deep, drops it without recursion and
/// returns the error, so that nothing else ever walks it.
pub(crate) fn admit(v: Value, what: &str) -> Result<Value> {
    if deeper_than(&v, MAX_DEPTH) {
        drop_deep(v);
        Err(too_deep(what))
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> Value {
        let mut v = json!("leaf");
        for i in 0..depth {
            v = if i % 2 == 0 {
                Value::Array(vec![v])
            } else {
                // (json! would copy `v` recursively)
                let mut m = serde_json::Map::new();
                m.insert("k".into(), v);
                Value::Object(m)
            };
        }
        v
    }

    #[test]
    fn the_limit_is_exact() {
        assert!(!deeper_than(&json!(1), 0));
        assert!(deeper_than(&json!([]), 0));
        assert!(!deeper_than(&json!({"a": [1]}), 2));
        assert!(deeper_than(&json!({"a": [1]}), 1));
        assert!(check_depth(&nested(MAX_DEPTH), "v").is_ok());
        assert!(matches!(
            check_depth(&nested(MAX_DEPTH + 1), "v"),
            Err(Error::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
    }

    #[test]
    fn what_is_admitted_is_readable() {
        let v = nested(MAX_DEPTH);
        let text = serde_json::to_vec(&v).unwrap();
        let back: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn very_deep_values_are_refused_and_dropped_without_recursion() {
        // Run on a small stack so that any recursion over the value would abort the test.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let v = nested(200_000);
                assert!(check_depth(&v, "v").is_err());
                assert!(admit(v, "v").is_err());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
