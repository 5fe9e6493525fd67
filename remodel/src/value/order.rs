//! The one total order over JSON values.
//!
//! Modelled on RethinkDB's:
//! `arrays < booleans < null < numbers < objects < strings`.
//! Arrays compare element by element (a shorter prefix first), booleans `false < true`,
//! numbers as doubles (integers that round to the same double are then told apart by their
//! exact value, so that distinct integer keys never collide), objects as their key-sorted
//! `(key, value)` lists, strings by their UTF-8 bytes.

use serde_json::{Number, Value};
use std::cmp::Ordering;

/// The rank of a value's type in the total order (arrays first, strings last).
pub fn type_rank(v: &Value) -> u8 {
    match v {
        Value::Array(_) => 0,
        Value::Bool(_) => 1,
        Value::Null => 2,
        Value::Number(_) => 3,
        Value::Object(_) => 4,
        Value::String(_) => 5,
    }
}

/// Compares two JSON values in Remodel's total order.
///
/// ```
/// use remodel::value::compare;
/// use serde_json::json;
/// use std::cmp::Ordering;
/// assert_eq!(compare(&json!([1]), &json!(true)), Ordering::Less);
/// assert_eq!(compare(&json!(2), &json!(10.5)), Ordering::Less);
/// assert_eq!(compare(&json!(1), &json!(1.0)), Ordering::Equal);
/// assert_eq!(compare(&json!("b"), &json!({"a": 1})), Ordering::Greater);
/// ```
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => compare_seq(x.iter(), y.iter()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            for (p, q) in xs.iter().zip(ys.iter()) {
                let o =
                    p.0.as_bytes()
                        .cmp(q.0.as_bytes())
                        .then_with(|| compare(p.1, q.1));
                if o != Ordering::Equal {
                    return o;
                }
            }
            xs.len().cmp(&ys.len())
        }
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => type_rank(a).cmp(&type_rank(b)),
    }
}

/// Whether two values are the same JSON to the bit: `0.0` and `-0.0` are one number to
/// [`compare`] (and to `Value`'s `==`), but not one value a reader sees. A write of one over
/// the other is a change, and a feed that compares rows to decide whether anything changed
/// must show it.
pub(crate) fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y && (!x.is_f64() || x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| identical(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| identical(a, b)))
        }
        _ => a == b,
    }
}

/// [`identical`] for optional shared rows (absent on both sides, or the same).
pub(crate) fn identical_rows(
    a: Option<&std::sync::Arc<Value>>,
    b: Option<&std::sync::Arc<Value>>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b) || identical(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn compare_seq<'a>(
    mut x: impl Iterator<Item = &'a Value>,
    mut y: impl Iterator<Item = &'a Value>,
) -> Ordering {
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(a), Some(b)) => {
                let o = compare(a, b);
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Splits a number into its double and the exact remainder an integer loses in that double.
pub(crate) fn number_parts(n: &Number) -> (f64, i128) {
    if let Some(i) = n.as_i64() {
        let f = i as f64;
        (f, i as i128 - f as i128)
    } else if let Some(u) = n.as_u64() {
        let f = u as f64;
        (f, u as i128 - f as i128)
    } else {
        let f = n.as_f64().unwrap_or(0.0);
        // -0.0 and 0.0 are the same number.
        (if f == 0.0 { 0.0 } else { f }, 0)
    }
}

fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    let (fa, ra) = number_parts(a);
    let (fb, rb) = number_parts(b);
    fa.total_cmp(&fb).then(ra.cmp(&rb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_are_ordered_like_rethinkdb() {
        let ordered = [
            json!([]),
            json!([0]),
            json!(false),
            json!(true),
            json!(null),
            json!(-1e300),
            json!(0),
            json!(3.5),
            json!({}),
            json!({"a": 1}),
            json!(""),
            json!("a"),
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(&w[0], &w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
        }
    }

    #[test]
    fn large_integers_do_not_collide() {
        let a = json!(9007199254740993u64);
        let b = json!(9007199254740992u64);
        assert_eq!(compare(&b, &a), Ordering::Less);
        assert_eq!(compare(&json!(-0.0), &json!(0)), Ordering::Equal);
    }
}
