//! The `crew` table that the store and query tests read, and helpers that turn rows into
//! values to compare with expected ones.

use remodel::{json, Database, IndexSpec, Table, Value, WriteResult};

/// No rows (as integer primary keys).
pub const NONE: Vec<i64> = Vec::new();

/// The integer primary keys of rows, in order.
pub fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter()
        .map(|r| {
            r["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("integer id in {r}"))
        })
        .collect()
}

/// The string primary keys of rows, in order.
pub fn sids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            r["id"]
                .as_str()
                .unwrap_or_else(|| panic!("string id in {r}"))
                .to_string()
        })
        .collect()
}

/// Every document of a table, in primary key order.
pub async fn contents(t: &Table) -> Vec<Value> {
    t.run().await.unwrap()
}

pub fn groups(gs: Vec<remodel::Group>) -> Vec<(Value, Value)> {
    gs.into_iter().map(|g| (g.group, g.reduction)).collect()
}

/// Each index's (name, spec, ready, entries), to compare with expected values.
pub fn statuses(t: &remodel::Table) -> Vec<(String, IndexSpec, bool, usize)> {
    t.index_status()
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.spec, s.ready, s.entries))
        .collect()
}

pub fn crew_docs() -> Vec<Value> {
    vec![
        json!({"id": 1, "name": "Picard", "rank": "captain", "age": 59, "ship": "enterprise",
               "tags": ["tea", "shakespeare"], "home": {"planet": "earth", "city": "La Barre"}}),
        json!({"id": 2, "name": "Data", "rank": "commander", "age": 30, "ship": "enterprise",
               "tags": ["poetry", "cats"], "home": {"planet": "omicron theta"}}),
        json!({"id": 3, "name": "Troi", "rank": "commander", "age": 35, "ship": "enterprise",
               "tags": ["chocolate"]}),
        json!({"id": 4, "name": "Sisko", "rank": "captain", "age": 45, "ship": "defiant",
               "tags": ["baseball", "tea"], "home": {"planet": "earth", "city": "New Orleans"}}),
        json!({"id": 5, "name": "Kira", "rank": "major", "ship": "defiant", "tags": []}),
        json!({"id": 6, "name": "Janeway", "rank": "captain", "age": 41, "ship": "voyager",
               "tags": ["coffee", "tea"]}),
        json!({"id": 7, "name": "Worf", "rank": "commander", "age": 45, "ship": "defiant",
               "tags": ["opera"]}),
    ]
}

/// The `crew` table with its documents, then its indexes (so every index is backfilled):
/// `age` (field), `rank` (field), `tags` (multi), `ship_rank` (compound), `city` (nested).
pub async fn crew(db: &Database) -> Table {
    db.create_table("crew").await.unwrap();
    let t = db.table("crew");
    let r = t.insert_many(crew_docs()).await.unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.inserted = 7;
        w
    });
    t.create_index("age", IndexSpec::field("age"))
        .await
        .unwrap();
    t.create_index("rank", IndexSpec::field("rank"))
        .await
        .unwrap();
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    t.create_index("ship_rank", IndexSpec::compound(["ship", "rank"]))
        .await
        .unwrap();
    t.create_index("city", IndexSpec::field("home.city"))
        .await
        .unwrap();
    t
}
