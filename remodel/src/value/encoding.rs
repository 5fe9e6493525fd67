//! An order-preserving, self-delimiting byte encoding of JSON values.
//!
//! `encode_value(a) < encode_value(b)` (as bytes) exactly when `compare(a, b) == Less`, and no
//! encoding is a prefix of another. That makes concatenations such as
//! `encode(index value) ++ encode(primary key)` sort like the tuple they encode, which is how
//! index trees return documents in index order with ties broken by primary key.
//!
//! Layout (one tag byte, then the body):
//! - array `0x10`, each element's encoding, then `0x00`
//! - `false` `0x20`, `true` `0x21`, `null` `0x30`
//! - number `0x40`, the double as 8 sign-flipped big-endian bytes, then a marker:
//!   `0x01` when exact, or `0x00`/`0x02` followed by 8 bytes of the negative/positive remainder
//!   that an integer beyond 2^53 loses in its double
//! - object `0x50`, its key-sorted pairs each as `0x01`, key body, value, then `0x00`
//! - string `0x60`, its bytes with `0x00` escaped as `0x00 0xFF`, then `0x00 0x00`

use super::order::number_parts;
use crate::{Error, Result};
use serde_json::{Map, Number, Value};

const ARRAY: u8 = 0x10;
const FALSE: u8 = 0x20;
const TRUE: u8 = 0x21;
const NULL: u8 = 0x30;
const NUMBER: u8 = 0x40;
const OBJECT: u8 = 0x50;
const STRING: u8 = 0x60;
const END: u8 = 0x00;

/// The longest encoded primary key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Encodes a value in the order-preserving encoding.
///
/// ```
/// use remodel::value::encode_value;
/// use serde_json::json;
/// assert!(encode_value(&json!(2)) < encode_value(&json!(10)));
/// assert!(encode_value(&json!("a")) < encode_value(&json!("ab")));
/// assert!(encode_value(&json!([1, 2])) < encode_value(&json!(false)));
/// ```
pub fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    encode_value_into(v, &mut out);
    out
}

/// Appends the encoding of `v` to `out`.
pub fn encode_value_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Array(items) => {
            out.push(ARRAY);
            for item in items {
                encode_value_into(item, out);
            }
            out.push(END);
        }
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Null => out.push(NULL),
        Value::Number(n) => encode_number(n, out),
        Value::Object(map) => {
            out.push(OBJECT);
            let mut pairs: Vec<_> = map.iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in pairs {
                out.push(0x01);
                encode_str_body(k, out);
                encode_value_into(v, out);
            }
            out.push(END);
        }
        Value::String(s) => {
            out.push(STRING);
            encode_str_body(s, out);
        }
    }
}

fn encode_number(n: &Number, out: &mut Vec<u8>) {
    let (f, rest) = number_parts(n);
    let bits = f.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    out.push(NUMBER);
    out.extend_from_slice(&ordered.to_be_bytes());
    match rest.cmp(&0) {
        std::cmp::Ordering::Equal => out.push(0x01),
        o => {
            out.push(if o.is_lt() { 0x00 } else { 0x02 });
            let r = (rest as i64 as u64) ^ (1 << 63);
            out.extend_from_slice(&r.to_be_bytes());
        }
    }
}

fn encode_str_body(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Validates a primary key and returns its encoding.
///
/// Keys are strings, numbers, booleans, or arrays of those; null and objects are rejected, and
/// so is a key whose encoding is longer than 1,024 bytes or that nests arrays deeper than
/// [`MAX_DEPTH`](super::MAX_DEPTH) ([`Error::TooDeep`], checked before anything else walks it).
pub fn encode_key(key: &Value) -> Result<Vec<u8>> {
    super::check_depth(key, "primary key")?;
    fn check(key: &Value, top: &Value) -> Result<()> {
        match key {
            Value::Null => Err(Error::InvalidKey {
                key: top.clone(),
                reason: "a primary key cannot be null".into(),
            }),
            Value::Object(_) => Err(Error::InvalidKey {
                key: top.clone(),
                reason: "a primary key cannot be an object".into(),
            }),
            Value::Array(items) => items.iter().try_for_each(|i| check(i, top)),
            _ => Ok(()),
        }
    }
    check(key, key)?;
    let bytes = encode_value(key);
    if bytes.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKey {
            key: key.clone(),
            reason: format!(
                "its encoding is {} bytes, over the limit of {MAX_KEY_BYTES}",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Decodes one value from the front of `bytes`, returning it and the number of bytes read.
///
/// Numbers come back as integers when they are whole and fit, otherwise as doubles; the result
/// compares equal (in the total order) to what was encoded.
pub fn decode_value(bytes: &[u8]) -> Result<(Value, usize)> {
    let mut d = Decoder {
        bytes,
        pos: 0,
        depth: 0,
    };
    let v = d.value()?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Arrays and objects open at `pos`: damaged bytes must not recurse without bound.
    depth: usize,
}

impl Decoder<'_> {
    fn corrupt(&self) -> Error {
        Error::serialization(format!("corrupt key encoding at byte {}", self.pos))
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self.bytes.get(self.pos).ok_or_else(|| self.corrupt())?;
        self.pos += 1;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64> {
        let end = self.pos + 8;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| self.corrupt())?;
        self.pos = end;
        Ok(u64::from_be_bytes(slice.try_into().expect("8 bytes")))
    }

    fn str_body(&mut self) -> Result<String> {
        let mut raw = Vec::new();
        loop {
            match self.byte()? {
                0 => match self.byte()? {
                    0 => break,
                    0xFF => raw.push(0),
                    _ => return Err(self.corrupt()),
                },
                b => raw.push(b),
            }
        }
        String::from_utf8(raw).map_err(|_| self.corrupt())
    }

    fn value(&mut self) -> Result<Value> {
        let tag = self.byte()?;
        if matches!(tag, ARRAY | OBJECT) {
            // Index keys wrap a document's value (depth <= MAX_DEPTH) in a compound array.
            if self.depth > super::MAX_DEPTH + 1 {
                return Err(self.corrupt());
            }
            self.depth += 1;
        }
        let v = self.value_tagged(tag);
        if matches!(tag, ARRAY | OBJECT) {
            self.depth -= 1;
        }
        v
    }

    fn value_tagged(&mut self, tag: u8) -> Result<Value> {
        Ok(match tag {
            ARRAY => {
                let mut items = Vec::new();
                while self.bytes.get(self.pos) != Some(&END) {
                    items.push(self.value()?);
                }
                self.pos += 1;
                Value::Array(items)
            }
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            NULL => Value::Null,
            NUMBER => {
                let ordered = self.u64()?;
                let bits = if ordered >> 63 == 1 {
                    ordered & !(1 << 63)
                } else {
                    !ordered
                };
                let f = f64::from_bits(bits);
                let rest = match self.byte()? {
                    0x01 => 0i128,
                    0x00 | 0x02 => ((self.u64()? ^ (1 << 63)) as i64) as i128,
                    _ => return Err(self.corrupt()),
                };
                number_from_parts(f, rest).ok_or_else(|| self.corrupt())?
            }
            OBJECT => {
                let mut map = Map::new();
                loop {
                    match self.byte()? {
                        END => break,
                        0x01 => {
                            let k = self.str_body()?;
                            let v = self.value()?;
                            map.insert(k, v);
                        }
                        _ => return Err(self.corrupt()),
                    }
                }
                Value::Object(map)
            }
            STRING => Value::String(self.str_body()?),
            _ => return Err(self.corrupt()),
        })
    }
}

fn number_from_parts(f: f64, rest: i128) -> Option<Value> {
    if f.fract() == 0.0 && f.abs() < 1.9e19 {
        let exact = f as i128 + rest;
        if let Ok(i) = i64::try_from(exact) {
            return Some(Value::from(i));
        }
        if let Ok(u) = u64::try_from(exact) {
            return Some(Value::from(u));
        }
    }
    Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::compare;
    use serde_json::json;

    #[test]
    fn strings_with_nul_bytes_keep_their_order() {
        let a = encode_value(&json!("a"));
        let b = encode_value(&json!("a\u{0}"));
        let c = encode_value(&json!("a\u{1}"));
        assert!(a < b && b < c);
    }

    #[test]
    fn round_trips() {
        for v in [
            json!(null),
            json!([1, "x", [true, false]]),
            json!({"b": 1, "a": {"c": null}}),
            json!(18446744073709551615u64),
            json!(-9223372036854775808i64),
            json!(2.5),
            json!("zé\u{0}"),
        ] {
            let enc = encode_value(&v);
            let (back, used) = decode_value(&enc).unwrap();
            assert_eq!(used, enc.len());
            assert_eq!(compare(&v, &back), std::cmp::Ordering::Equal, "{v}");
        }
    }

    #[test]
    fn key_validation() {
        assert!(matches!(
            encode_key(&json!(null)),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            encode_key(&json!({"a": 1})),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            encode_key(&json!([1, null])),
            Err(Error::InvalidKey { .. })
        ));
        assert!(encode_key(&json!("x".repeat(2000))).is_err());
        assert!(encode_key(&json!([1, "a", true])).is_ok());
    }

    #[test]
    fn deep_keys_and_damaged_bytes_are_errors() {
        let mut deep = json!(1);
        for _ in 0..200 {
            deep = Value::Array(vec![deep]);
        }
        assert!(matches!(encode_key(&deep), Err(Error::TooDeep { .. })));
        // 100,000 array tags: damaged bytes, not a stack overflow.
        let bytes = vec![ARRAY; 100_000];
        assert!(decode_value(&bytes).is_err());
    }
}
