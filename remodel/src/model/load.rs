//! Batched (eager) loading: what the generated `load_<accessor>(db, rows)` methods call (see
//! the [module docs](super#batched-loading)). A relation for many rows at once, in a constant
//! number of store queries (one, or two for many-to-many), never one per row.

use super::codec::{self, count_query, key_text};
use super::{Model, RelationDef};
use crate::{Database, Result};
use serde_json::Value;
/// The loaders' maps, keyed by short keys they build per row: a fast seeded hash (SipHash
/// was a tenth of a batched load).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A key to look values up by, borrowing string keys (the usual kind) instead of copying.
#[derive(PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Str(&'a str),
    /// Any other value, by its JSON text.
    Text(String),
}

fn key_ref(v: &Value) -> KeyRef<'_> {
    match v {
        Value::String(s) => KeyRef::Str(s),
        other => KeyRef::Text(other.to_string()),
    }
}

/// The distinct non-null values, in first-seen order.
fn distinct<'a>(values: impl IntoIterator<Item = &'a Value>) -> Vec<Value> {
    let mut seen = HashSet::default();
    values
        .into_iter()
        .filter(|v| !v.is_null() && seen.insert(key_ref(v)))
        .cloned()
        .collect()
}

/// Documents by the text of one of their fields.
fn by_field(docs: Vec<Value>, field: &str) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::default();
    for d in docs {
        if let Some(v) = d.get(field) {
            out.entry(key_text(v)).or_default().push(d);
        }
    }
    out
}

/// belongs_to: each row's owner (one query for all owners).
pub async fn belongs_to<C: Model, P: Model>(
    db: &Database,
    rel: &'static RelationDef,
    rows: &[C],
) -> Result<Vec<Option<P>>> {
    let fks: Vec<Option<Value>> = rows
        .iter()
        .map(|r| r.field_value(rel.foreign_key).filter(|v| !v.is_null()))
        .collect();
    // Each distinct owner once (an owner of many rows is read once), found again by its
    // place: one hash per row.
    let mut places: HashMap<KeyRef<'_>, usize> = HashMap::default();
    let mut keys: Vec<&Value> = Vec::new();
    let at: Vec<Option<usize>> = fks
        .iter()
        .map(|fk| {
            fk.as_ref().map(|k| {
                *places.entry(key_ref(k)).or_insert_with(|| {
                    keys.push(k);
                    keys.len() - 1
                })
            })
        })
        .collect();
    if keys.is_empty() {
        return Ok(rows.iter().map(|_| None).collect());
    }
    count_query();
    // Read as stored and decoded straight into the owners (no JSON `Value` in between).
    let docs = P::table(db).get_raw_many(&keys).await?;
    at.iter()
        .map(|i| match i.and_then(|i| docs[i].as_ref()) {
            Some(doc) => codec::decode_bytes::<P>(doc).map(Some),
            None => Ok(None),
        })
        .collect()
}

/// has_many: each row's children (one query through the foreign-key index).
pub async fn has_many<P: Model, C: Model>(
    db: &Database,
    rel: &'static RelationDef,
    rows: &[P],
) -> Result<Vec<Vec<C>>> {
    let keys: Vec<Value> = rows.iter().filter_map(Model::key_value).collect();
    let keys = distinct(keys.iter());
    let mut children = if keys.is_empty() {
        HashMap::default()
    } else {
        count_query();
        by_field(
            C::table(db)
                .get_all(keys)
                .index(rel.foreign_key)
                .run()
                .await?,
            rel.foreign_key,
        )
    };
    // How many times each parent is given (counted once: a quadratic count would dominate
    // the load of a thousand rows).
    let row_keys: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.key_value().map(|k| key_text(&k)))
        .collect();
    let mut times: HashMap<&str, usize> = HashMap::default();
    for t in row_keys.iter().flatten() {
        *times.entry(t.as_str()).or_default() += 1;
    }
    let mut out = Vec::with_capacity(rows.len());
    for t in &row_keys {
        let docs = match t {
            // A parent given twice gets its children twice: they are cloned, not moved, then.
            Some(t) if times.get(t.as_str()).copied().unwrap_or(0) > 1 => {
                children.get(t).cloned().unwrap_or_default()
            }
            Some(t) => children.remove(t).unwrap_or_default(),
            None => Vec::new(),
        };
        out.push(codec::decode_all(docs)?);
    }
    Ok(out)
}

/// has_one: each row's child (one query through the foreign-key index).
pub async fn has_one<P: Model, C: Model>(
    db: &Database,
    rel: &'static RelationDef,
    rows: &[P],
) -> Result<Vec<Option<C>>> {
    Ok(has_many::<P, C>(db, rel, rows)
        .await?
        .into_iter()
        .map(|v| v.into_iter().next())
        .collect())
}

/// Many-to-many: each row's related rows (two queries: the join rows, then the rows).
pub async fn many_to_many<P: Model, C: Model>(
    db: &Database,
    rel: &'static RelationDef,
    rows: &[P],
) -> Result<Vec<Vec<C>>> {
    let keys: Vec<Value> = rows.iter().filter_map(Model::key_value).collect();
    let keys = distinct(keys.iter());
    if keys.is_empty() {
        return Ok(rows.iter().map(|_| Vec::new()).collect());
    }
    let join = rel.join_table_of(P::schema());
    count_query();
    let links = db
        .table(join.as_str())
        .get_all(keys)
        .index(rel.foreign_key)
        .run()
        .await?;
    let others = distinct(links.iter().filter_map(|l| l.get(rel.association_key)));
    let related = if others.is_empty() {
        HashMap::default()
    } else {
        count_query();
        by_field(
            C::table(db).get_all(others).run().await?,
            C::schema().primary_key,
        )
    };
    let links = by_field(links, rel.foreign_key);
    rows.iter()
        .map(|r| {
            let Some(k) = r.key_value() else {
                return Ok(Vec::new());
            };
            links
                .get(&key_text(&k))
                .into_iter()
                .flatten()
                .filter_map(|l| l.get(rel.association_key))
                .filter_map(|o| related.get(&key_text(o)))
                .map(|docs| codec::decode_ref::<C>(&docs[0]))
                .collect()
        })
        .collect()
}
