//! Secondary index definitions and the index keys a document produces.

use crate::storage::Tree;
use crate::value::{encode_value_into, FieldPath};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a secondary index indexes.
///
/// ```
/// use remodel::IndexSpec;
/// let by_city = IndexSpec::field("address.city");
/// let by_name = IndexSpec::compound(["last_name", "first_name"]);
/// let by_tag = IndexSpec::multi("tags");
/// # let _ = (by_city, by_name, by_tag);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSpec {
    fields: Vec<String>,
    compound: bool,
    multi: bool,
}

impl IndexSpec {
    /// An index on one (possibly nested, dotted) field.
    pub fn field(path: impl Into<String>) -> Self {
        IndexSpec {
            fields: vec![path.into()],
            compound: false,
            multi: false,
        }
    }

    /// A compound index: the array of the fields' values, ordered lexicographically.
    /// A document missing any of the fields is not in the index.
    pub fn compound<S: Into<String>>(paths: impl IntoIterator<Item = S>) -> Self {
        IndexSpec {
            fields: paths.into_iter().map(Into::into).collect(),
            compound: true,
            multi: false,
        }
    }

    /// A multi index: an array field gives one index entry per distinct element.
    pub fn multi(path: impl Into<String>) -> Self {
        IndexSpec {
            fields: vec![path.into()],
            compound: false,
            multi: true,
        }
    }

    /// The indexed field paths, as written.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Whether this is a compound index.
    pub fn is_compound(&self) -> bool {
        self.compound
    }

    /// Whether this is a multi index.
    pub fn is_multi(&self) -> bool {
        self.multi
    }

    pub(crate) fn compile(&self) -> Result<CompiledIndex> {
        if self.fields.is_empty() {
            return Err(Error::InvalidIndexSpec(
                "an index needs at least one field".into(),
            ));
        }
        if self.compound && self.multi {
            return Err(Error::InvalidIndexSpec(
                "an index cannot be both compound and multi".into(),
            ));
        }
        let paths = self
            .fields
            .iter()
            .map(|f| FieldPath::parse(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(CompiledIndex {
            paths,
            compound: self.compound,
            multi: self.multi,
        })
    }
}

/// An index spec with parsed paths, ready to extract values from documents.
#[derive(Clone, Debug)]
pub(crate) struct CompiledIndex {
    paths: Vec<FieldPath>,
    compound: bool,
    multi: bool,
}

/// The most elements of one document's array that a multi index takes: a write of a longer
/// array fails with [`Error::TooLarge`] (its index entries are computed under the commit lock,
/// which every writer waits for).
pub const MAX_MULTI_ELEMENTS: usize = 10_000;

/// The most index entries one atomic commit computes under the commit lock (a few hundred
/// milliseconds of work in a release build, seconds in a debug one): a larger insert is split
/// into more commits, a larger batch is refused with [`Error::TooLarge`].
pub(crate) const MAX_COMMIT_INDEX_WORK: usize = 10 * MAX_MULTI_ELEMENTS;

impl CompiledIndex {
    /// About how many index entries `doc` gives (an upper bound: duplicates count).
    pub(crate) fn work(&self, doc: &Value) -> usize {
        match self.paths[0].get(doc) {
            Some(Value::Array(items)) if self.multi => items.len().max(1),
            _ => 1,
        }
    }

    /// The values under which `doc` is indexed (none when the field is missing or null); a
    /// multi index gives each distinct element once, in the order of first occurrence.
    pub(crate) fn values(&self, doc: &Value) -> Vec<Value> {
        if self.compound {
            let mut parts = Vec::with_capacity(self.paths.len());
            for p in &self.paths {
                match p.get(doc) {
                    None | Some(Value::Null) => return Vec::new(),
                    Some(v) => parts.push(v.clone()),
                }
            }
            return vec![Value::Array(parts)];
        }
        match self.paths[0].get(doc) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if self.multi => distinct(items)
                .into_iter()
                .map(|i| items[i].clone())
                .collect(),
            Some(v) => vec![v.clone()],
        }
    }

    /// Calls `f` with each value under which `doc` is indexed, without copying single
    /// values (a multi index may repeat an element; callers that care deduplicate).
    pub(crate) fn each_value(&self, doc: &Value, mut f: impl FnMut(&Value)) {
        if self.compound {
            self.values(doc).iter().for_each(f);
            return;
        }
        match self.paths[0].get(doc) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if self.multi => {
                items.iter().filter(|v| !v.is_null()).for_each(f)
            }
            Some(v) => f(v),
        }
    }

    /// The index tree keys of `doc`: `encode(value) ++ encoded primary key`, sorted and
    /// distinct. O(n log n) in the elements of a multi index: equal values (in the total
    /// order) have equal encodings, so sorting the keys also de-duplicates the elements.
    pub(crate) fn keys(&self, doc: &Value, pk: &[u8]) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        self.each_value(doc, |v| {
            let mut k = Vec::with_capacity(24 + pk.len());
            encode_value_into(v, &mut k);
            k.extend_from_slice(pk);
            keys.push(k);
        });
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Checks that `doc` is within the limits of this index ([`MAX_MULTI_ELEMENTS`]).
    pub(crate) fn check_limits(&self, doc: &Value, index: &str) -> Result<()> {
        if !self.multi {
            return Ok(());
        }
        match self.paths[0].get(doc) {
            Some(Value::Array(items)) if items.len() > MAX_MULTI_ELEMENTS => Err(Error::TooLarge {
                what: format!(
                    "elements in the array `{}` of the multi index `{index}`",
                    self.paths[0]
                ),
                size: items.len(),
                limit: MAX_MULTI_ELEMENTS,
            }),
            _ => Ok(()),
        }
    }
}

/// The positions of the distinct non-null elements of `items` (first occurrences, in order),
/// in O(n log n): elements are compared by their order-preserving encoding, which is equal
/// exactly when the values are equal in the total order.
fn distinct(items: &[Value]) -> Vec<usize> {
    let mut encoded: Vec<(Vec<u8>, usize)> = items
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, v)| (crate::value::encode_value(v), i))
        .collect();
    // Sorting by (encoding, position) puts each value's first occurrence first.
    encoded.sort_unstable();
    encoded.dedup_by(|b, a| a.0 == b.0);
    let mut positions: Vec<usize> = encoded.into_iter().map(|(_, i)| i).collect();
    positions.sort_unstable();
    positions
}

/// A live secondary index of an open table.
pub(crate) struct IndexState {
    pub name: String,
    pub spec: IndexSpec,
    pub compiled: CompiledIndex,
    pub tree: Tree,
    ready: AtomicBool,
    /// Set (under the commit lock) when the index is dropped: a running backfill stops.
    dropped: AtomicBool,
}

impl IndexState {
    pub(crate) fn new(name: String, spec: IndexSpec, tree: Tree, ready: bool) -> Result<Self> {
        let compiled = spec.compile()?;
        Ok(IndexState {
            name,
            spec,
            compiled,
            tree,
            ready: AtomicBool::new(ready),
            dropped: AtomicBool::new(false),
        })
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release)
    }

    pub(crate) fn mark_dropped(&self) {
        self.dropped.store(true, Ordering::Release)
    }

    pub(crate) fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }
}

/// The status of a secondary index, as reported by `index_status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct IndexStatus {
    /// The index name.
    pub name: String,
    /// What it indexes.
    pub spec: IndexSpec,
    /// False while the backfill of existing documents runs.
    pub ready: bool,
    /// Number of entries in the index.
    pub entries: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_and_null_fields_are_not_indexed() {
        let ix = IndexSpec::field("a.b").compile().unwrap();
        assert!(ix.values(&json!({"a": {}})).is_empty());
        assert!(ix.values(&json!({"a": {"b": null}})).is_empty());
        assert_eq!(ix.values(&json!({"a": {"b": 1}})), vec![json!(1)]);
    }

    #[test]
    fn multi_gives_one_entry_per_distinct_element() {
        let ix = IndexSpec::multi("tags").compile().unwrap();
        assert_eq!(
            ix.values(&json!({"tags": ["a", "b", "a", null]})),
            vec![json!("a"), json!("b")]
        );
        assert_eq!(ix.values(&json!({"tags": "x"})), vec![json!("x")]);
        assert_eq!(
            ix.values(&json!({"tags": [2, 1.0, 1, 2.0, "a", [1], [1.0]]})),
            vec![json!(2), json!(1.0), json!("a"), json!([1])]
        );
    }

    #[test]
    fn a_large_multi_array_is_indexed_in_n_log_n() {
        let ix = IndexSpec::multi("tags").compile().unwrap();
        let n = 200_000;
        let tags: Vec<Value> = (0..n).map(|i| json!(i % (n / 2))).collect();
        let doc = json!({ "tags": tags });
        let t = std::time::Instant::now();
        assert_eq!(ix.keys(&doc, b"pk").len(), n / 2);
        assert_eq!(ix.values(&doc).len(), n / 2);
        // Quadratic, this took minutes; n log n takes well under a second even in debug.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
        assert!(matches!(
            ix.check_limits(&doc, "tags"),
            Err(Error::TooLarge {
                limit: MAX_MULTI_ELEMENTS,
                ..
            })
        ));
    }

    #[test]
    fn compound_needs_every_field() {
        let ix = IndexSpec::compound(["a", "b"]).compile().unwrap();
        assert_eq!(ix.values(&json!({"a": 1, "b": "x"})), vec![json!([1, "x"])]);
        assert!(ix.values(&json!({"a": 1})).is_empty());
        assert!(IndexSpec {
            fields: vec![],
            compound: true,
            multi: false
        }
        .compile()
        .is_err());
    }
}
