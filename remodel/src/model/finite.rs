//! Finds the floats JSON cannot hold in a value about to be stored.
//!
//! `serde_json` writes NaN and ±infinity as `null` without a word: a model saved with such
//! a field would be stored with `null` there, its old value lost, and the row would then no
//! longer decode (an `f64` field cannot be `null`), failing every read of the table that
//! meets it. [`check`] walks a value with serde's data model (a serializer that writes
//! nothing) and names the first such float's place, so the write is refused instead.

use serde::ser::{self, Serialize};
use serde_json::Value;
use std::fmt;

/// `value` as JSON, or why it cannot be: what serde_json refuses (an integer past 64 bits,
/// a map with keys that are not strings), and the NaN and infinite floats it would write as
/// `null` (only a value that came out holding a `null` is walked again, by [`check`]).
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Value, NonFinite> {
    let json = serde_json::to_value(value).map_err(|e| NonFinite(e.to_string()))?;
    if has_null(&json) {
        check(value)?;
    }
    Ok(json)
}

/// Whether `v` holds a `null` anywhere (where a non-finite float may have become one).
fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().any(has_null),
        Value::Object(m) => m.values().any(has_null),
        _ => false,
    }
}

/// Where the first non-finite float of `value` is (`field.inner[2]`), if it has one.
pub(crate) fn check<T: Serialize + ?Sized>(value: &T) -> Result<(), NonFinite> {
    value.serialize(Walker {
        path: &mut Vec::new(),
    })
}

/// A non-finite float, or what serde reported while walking (the store's own
/// serialisation reports it too).
#[derive(Debug)]
pub(crate) struct NonFinite(pub(crate) String);

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonFinite {}

impl ser::Error for NonFinite {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        NonFinite(msg.to_string())
    }
}

/// The serializer: it holds the path to the value it is at.
struct Walker<'p> {
    path: &'p mut Vec<String>,
}

impl Walker<'_> {
    fn float(self, f: f64) -> Result<(), NonFinite> {
        if f.is_finite() {
            return Ok(());
        }
        let at = if self.path.is_empty() {
            "the value".to_string()
        } else {
            format!("`{}`", self.path.join("."))
        };
        Err(NonFinite(format!(
            "{at} is {f}, which JSON cannot hold (it would be stored as null)"
        )))
    }

    fn at<T: Serialize + ?Sized>(&mut self, step: String, value: &T) -> Result<(), NonFinite> {
        self.path.push(step);
        let r = value.serialize(Walker { path: self.path });
        self.path.pop();
        r
    }
}

/// A compound value being walked: its elements are numbered, its fields named.
struct Compound<'p> {
    walker: Walker<'p>,
    next: usize,
}

impl<'p> Compound<'p> {
    fn new(walker: Walker<'p>) -> Self {
        Compound { walker, next: 0 }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        let i = self.next;
        self.next += 1;
        self.walker.at(format!("[{i}]"), value)
    }
}

macro_rules! nothing_to_check {
    ($($method:ident($($ty:ty),*)),* $(,)?) => {$(
        fn $method(self, $(_: $ty),*) -> Result<(), NonFinite> {
            Ok(())
        }
    )*};
}

impl<'p> ser::Serializer for Walker<'p> {
    type Ok = ();
    type Error = NonFinite;
    type SerializeSeq = Compound<'p>;
    type SerializeTuple = Compound<'p>;
    type SerializeTupleStruct = Compound<'p>;
    type SerializeTupleVariant = Compound<'p>;
    type SerializeMap = Compound<'p>;
    type SerializeStruct = Compound<'p>;
    type SerializeStructVariant = Compound<'p>;

    nothing_to_check! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_i128(i128), serialize_u8(u8), serialize_u16(u16),
        serialize_u32(u32), serialize_u64(u64), serialize_u128(u128), serialize_char(char),
        serialize_str(&str), serialize_bytes(&[u8]), serialize_none(), serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    }

    fn serialize_f32(self, v: f32) -> Result<(), NonFinite> {
        self.float(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), NonFinite> {
        self.float(v)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NonFinite> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NonFinite> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), NonFinite> {
        self.at(variant.to_string(), value)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'p>, NonFinite> {
        Ok(Compound::new(self))
    }

    fn serialize_tuple(self, _: usize) -> Result<Compound<'p>, NonFinite> {
        Ok(Compound::new(self))
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound<'p>, NonFinite> {
        Ok(Compound::new(self))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'p>, NonFinite> {
        self.path.push(variant.to_string());
        Ok(Compound::new(self))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'p>, NonFinite> {
        Ok(Compound::new(self))
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'p>, NonFinite> {
        Ok(Compound::new(self))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'p>, NonFinite> {
        self.path.push(variant.to_string());
        Ok(Compound::new(self))
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NonFinite> {
        self.walker.path.pop();
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NonFinite> {
        // A key is a string or a number in JSON; a float key is checked as any float.
        key.serialize(Walker {
            path: self.walker.path,
        })
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NonFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), NonFinite> {
        self.walker.at(name.to_string(), value)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), NonFinite> {
        self.walker.at(name.to_string(), value)
    }
    fn end(self) -> Result<(), NonFinite> {
        self.walker.path.pop();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    struct Probe {
        x: f64,
        inner: Vec<Option<f32>>,
        named: BTreeMap<String, f64>,
        kind: Kind,
    }

    #[derive(Serialize)]
    enum Kind {
        Point { at: (f64, f64) },
        Plain,
    }

    fn probe() -> Probe {
        Probe {
            x: 1.5,
            inner: vec![Some(0.0), None, Some(-2.0)],
            named: BTreeMap::from([("a".to_string(), 1e308)]),
            kind: Kind::Point { at: (0.0, -0.0) },
        }
    }

    #[test]
    fn finite_values_pass() {
        assert!(check(&probe()).is_ok());
        assert!(check(&Kind::Plain).is_ok());
    }

    #[test]
    fn each_non_finite_float_is_named_by_its_place() {
        let mut p = probe();
        p.x = f64::NAN;
        assert!(check(&p).unwrap_err().0.starts_with("`x` is NaN"));
        let mut p = probe();
        p.inner[2] = Some(f32::NEG_INFINITY);
        assert!(check(&p).unwrap_err().0.starts_with("`inner.[2]` is -inf"));
        let mut p = probe();
        p.named.insert("b".into(), f64::INFINITY);
        assert!(check(&p).unwrap_err().0.starts_with("`named.[1]` is inf"));
        let mut p = probe();
        p.kind = Kind::Point {
            at: (0.0, f64::NAN),
        };
        assert!(check(&p).unwrap_err().0.starts_with("`kind.Point.at.[1]`"));
        assert!(check(&f64::NAN).unwrap_err().0.starts_with("the value"));
    }
}
