//! The net effect of a run of changes, as a subscription's client is shown it: each key's
//! last shown row, or `None` when the row left the result (each rule and view applied).

use crate::live::{Live, Shown};
use crate::Refusal;
use remodel::{ChangeKind, Cursor, Value};
use std::collections::HashMap;

/// The net effect of a run of changes: each key's last shown row, or `None` when it left.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) rows: indexed::Rows,
    pub(crate) len: usize,
    pub(crate) cursor: Option<Cursor>,
}

impl Batch {
    pub(crate) fn add(&mut self, live: &Live, change: &remodel::Change) -> Result<(), Refusal> {
        if change.kind() == ChangeKind::State {
            return Ok(());
        }
        self.len += 1;
        if let Some(c) = change.cursor() {
            self.cursor = self.cursor.max(Some(c));
        }
        let old = live.key_of(change.old_val())?;
        let new = live.visible(change)?;
        match (old, new) {
            (Some(old_key), Some((key, row))) if *old_key == key => self.rows.set(key, Some(row)),
            (old, new) => {
                // A row that left (or that a rule now hides), and a different one that came
                // (a top-N's entering row).
                if let Some(key) = old {
                    self.rows.set(key.into_owned(), None);
                }
                if let Some((key, row)) = new {
                    self.rows.set(key, Some(row));
                }
            }
        }
        Ok(())
    }
}

pub(crate) mod indexed {
    use super::*;
    use std::hash::{Hash, Hasher};

    /// Up to this many rows, a key is found by comparing (no map).
    const SCAN: usize = 16;

    /// Rows by key, in the order their keys first came.
    #[derive(Default)]
    pub(crate) struct Rows {
        /// A row by the hash of its key, once there are more than [`SCAN`] rows (a key whose
        /// hash another key has is found by comparing).
        at: HashMap<u64, usize>,
        rows: Vec<(Value, Option<Shown>)>,
    }

    impl Rows {
        pub(crate) fn set(&mut self, key: Value, row: Option<Shown>) {
            let found = if self.rows.len() < SCAN {
                self.scan(&key)
            } else {
                if self.at.is_empty() {
                    for (i, (k, _)) in self.rows.iter().enumerate() {
                        self.at.entry(hash(k)).or_insert(i);
                    }
                }
                let h = hash(&key);
                match self.at.get(&h) {
                    Some(&i) if self.rows[i].0 == key => Some(i),
                    Some(_) => self.scan(&key),
                    None => {
                        self.at.insert(h, self.rows.len());
                        None
                    }
                }
            };
            match found {
                Some(i) => self.rows[i].1 = row,
                None => self.rows.push((key, row)),
            }
        }

        /// Value equality tells keys of different types apart (`1` and `"1"`).
        fn scan(&self, key: &Value) -> Option<usize> {
            self.rows.iter().position(|(k, _)| k == key)
        }

        pub(crate) fn is_empty(&self) -> bool {
            self.rows.is_empty()
        }

        pub(crate) fn into_values(self) -> impl Iterator<Item = (Value, Option<Shown>)> {
            self.rows.into_iter()
        }
    }

    /// A hash of a key, equal for equal values (`Value`'s equality: numbers by kind and
    /// value, objects whatever their fields' order), without writing it out as text.
    fn hash(v: &Value) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        feed(v, &mut h);
        h.finish()
    }

    fn feed(v: &Value, h: &mut impl Hasher) {
        match v {
            Value::Null => 0u8.hash(h),
            Value::Bool(b) => (1u8, b).hash(h),
            Value::Number(n) => {
                2u8.hash(h);
                if let Some(u) = n.as_u64() {
                    (0u8, u).hash(h)
                } else if let Some(i) = n.as_i64() {
                    (1u8, i).hash(h)
                } else {
                    // `0.0 == -0.0`: one hash for both.
                    let f = n.as_f64().map(|f| if f == 0.0 { 0.0 } else { f });
                    (2u8, f.map(f64::to_bits)).hash(h)
                }
            }
            Value::String(s) => (3u8, s).hash(h),
            Value::Array(a) => {
                (4u8, a.len()).hash(h);
                for x in a {
                    feed(x, h);
                }
            }
            Value::Object(o) => {
                // Fields in any order: the sum of each field's own hash.
                let mut sum = 0u64;
                for (k, x) in o {
                    let mut f = std::collections::hash_map::DefaultHasher::new();
                    k.hash(&mut f);
                    feed(x, &mut f);
                    sum = sum.wrapping_add(f.finish());
                }
                (5u8, o.len(), sum).hash(h);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn keys_are_told_apart_by_value_and_type() {
            let mut rows = Rows::default();
            let keys: Vec<Value> = (0..40)
                .flat_map(|i| [json!(i), json!(i.to_string()), json!([i]), json!({"a": i})])
                .collect();
            for (i, k) in keys.iter().enumerate() {
                rows.set(k.clone(), Some(Shown::Owned(json!(i))));
            }
            // Again: each key finds its row.
            for (i, k) in keys.iter().enumerate() {
                rows.set(k.clone(), Some(Shown::Owned(json!(i + 1000))));
            }
            let got: Vec<_> = rows.into_values().collect();
            assert_eq!(got.len(), keys.len());
            for (i, (k, row)) in got.iter().enumerate() {
                assert_eq!(k, &keys[i]);
                assert!(matches!(row, Some(Shown::Owned(v)) if *v == json!(i + 1000)));
            }
            let mut rows = Rows::default();
            for i in 0..20 {
                rows.set(json!({"a": i, "b": 1}), None);
            }
            rows.set(serde_json::from_str(r#"{"b": 1, "a": 19}"#).unwrap(), None);
            assert_eq!(rows.into_values().count(), 20, "fields in another order");
        }
    }
}
