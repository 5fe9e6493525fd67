//! The embedded store, end to end through its public API (README.md's "Quick start"
//! and the rustdoc of `Database`, `Table`, `Query` and `Batch`): tables and keys, documents and
//! writes with their counts and conflicts, reads and their order, secondary indexes and the
//! total order of values in them, aggregates and joins, batches over several tables,
//! durability and persistence across reopen, the `stats` system table, and lazy reads.
//! Every expectation is an exact value.
//!
//! The randomized, model-based checks of the same API are in `properties.rs` and
//! `adversarial.rs`; changefeeds are in `feeds.rs` and the files named `feed_*`.

use futures::StreamExt;
use remodel::{
    asc, desc, field, has_fields, json, Change, ChangePair, Config, Conflict, Database, Durability,
    Error, IndexSpec, Order, Patch, Predicate, Table, Value, WriteResult,
};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::path::{Path, PathBuf};

// ---- helpers and fixtures ----

async fn db() -> Database {
    Database::temporary().await.unwrap()
}

/// A temporary database whose writes default to `Soft` durability, for tests that make
/// many small writes and check something other than durability.
async fn soft_db() -> Database {
    Config::temporary()
        .durability(Durability::Soft)
        .open()
        .await
        .unwrap()
}

/// No rows (as integer primary keys).
const NONE: Vec<i64> = Vec::new();

/// The integer primary keys of rows, in order.
fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter()
        .map(|r| {
            r["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("integer id in {r}"))
        })
        .collect()
}

/// The string primary keys of rows, in order.
fn sids(rows: &[Value]) -> Vec<String> {
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
async fn contents(t: &Table) -> Vec<Value> {
    t.run().await.unwrap()
}

fn groups(gs: Vec<remodel::Group>) -> Vec<(Value, Value)> {
    gs.into_iter().map(|g| (g.group, g.reduction)).collect()
}

/// Each index's (name, spec, ready, entries), to compare with expected values.
fn statuses(t: &remodel::Table) -> Vec<(String, IndexSpec, bool, usize)> {
    t.index_status()
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.spec, s.ready, s.entries))
        .collect()
}

fn crew_docs() -> Vec<Value> {
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
async fn crew(db: &Database) -> Table {
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

/// A folder under the system temp dir, unique to this test run, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "remodel-store-{tag}-{}-{nanos}",
            std::process::id()
        ));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- tables & keys ----

#[tokio::test]
async fn tables_are_created_ensured_listed_and_dropped() {
    let db = db().await;
    assert_eq!(db.table_names().unwrap(), Vec::<String>::new());
    db.create_table("zeta").await.unwrap();
    db.create_table("alpha").await.unwrap();
    assert_eq!(db.table_names().unwrap(), vec!["alpha", "zeta"]);

    // Creating an existing table is an error; ensure is idempotent.
    assert_eq!(
        db.create_table("alpha").await,
        Err(Error::TableExists("alpha".into()))
    );
    assert_eq!(db.ensure_table("alpha").await, Ok(false));
    assert_eq!(db.ensure_table("mid_1").await, Ok(true));
    assert_eq!(db.ensure_table("mid_1").await, Ok(false));
    assert_eq!(db.table_names().unwrap(), vec!["alpha", "mid_1", "zeta"]);

    // Dropping removes the table and its documents.
    let zeta = db.table("zeta");
    zeta.insert(json!({"id": 1})).await.unwrap();
    db.drop_table("zeta").await.unwrap();
    assert_eq!(db.table_names().unwrap(), vec!["alpha", "mid_1"]);
    assert_eq!(zeta.get(1).await, Err(Error::NoSuchTable("zeta".into())));
    assert_eq!(
        db.drop_table("zeta").await,
        Err(Error::NoSuchTable("zeta".into()))
    );
    // Re-created, it is empty.
    db.create_table("zeta").await.unwrap();
    assert_eq!(zeta.get(1).await, Ok(None));
    assert_eq!(zeta.count().await, Ok(0));
}

#[tokio::test]
async fn invalid_table_names_are_rejected() {
    let db = db().await;
    for bad in ["bad-name", "", "a b", "dot.ted", "é", &"x".repeat(65)] {
        match db.create_table(bad).await {
            Err(Error::InvalidName { name, .. }) => assert_eq!(name, bad),
            other => panic!("{bad:?}: expected InvalidName, got {other:?}"),
        }
        match db.ensure_table(bad).await {
            Err(Error::InvalidName { name, .. }) => assert_eq!(name, bad),
            other => panic!("{bad:?}: expected InvalidName, got {other:?}"),
        }
    }
    // Letters, digits and `_`, up to 64 of them, are fine.
    db.create_table("Ok_name_42").await.unwrap();
    db.create_table(&"y".repeat(64)).await.unwrap();
    assert_eq!(
        db.table_names().unwrap(),
        vec!["Ok_name_42".to_string(), "y".repeat(64)]
    );
}

#[tokio::test]
async fn unknown_tables_and_indexes_are_typed_errors() {
    let db = db().await;
    let t = db.table("nope");
    let gone = || Error::NoSuchTable("nope".into());
    assert_eq!(t.get(1).await, Err(gone()));
    assert_eq!(t.insert(json!({"id": 1})).await, Err(gone()));
    assert_eq!(t.insert_many(vec![json!({"id": 1})]).await, Err(gone()));
    assert_eq!(t.run().await, Err(gone()));
    assert_eq!(t.count().await, Err(gone()));
    assert_eq!(t.query().run().await, Err(gone()));
    assert_eq!(t.filter(field("a").eq(1)).run().await, Err(gone()));
    assert_eq!(t.get_all([1]).run().await, Err(gone()));
    assert_eq!(t.get(1).update(json!({"a": 1})).await, Err(gone()));
    assert_eq!(t.get(1).delete().await, Err(gone()));
    assert_eq!(t.query().delete().await, Err(gone()));
    assert_eq!(
        t.create_index("a", IndexSpec::field("a")).await,
        Err(gone())
    );
    assert_eq!(t.index_status(), Err(gone()));
    assert_eq!(t.primary_key(), Err(gone()));
    // The error names the table.
    assert_eq!(
        t.get(1).await.unwrap_err().to_string(),
        "no such table: `nope`"
    );
    // An unknown index of a table that exists: the error names both.
    db.create_table("t").await.unwrap();
    let err = db
        .table("t")
        .get_all([1])
        .index("missing")
        .run()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::NoSuchIndex {
            table: "t".into(),
            index: "missing".into()
        }
    );
    assert_eq!(err.to_string(), "no such index `missing` on table `t`");
}

#[tokio::test]
async fn custom_primary_key() {
    let db = db().await;
    db.create_table_with_key("users", "email").await.unwrap();
    let users = db.table("users");
    assert_eq!(users.primary_key().unwrap(), "email");
    assert_eq!(
        db.create_table_with_key("users", "email").await,
        Err(Error::TableExists("users".into()))
    );

    let r = users
        .insert(json!({"email": "kim@voyager", "name": "Harry"}))
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.inserted = 1;
        w
    });
    assert_eq!(
        users.get("kim@voyager").await.unwrap(),
        Some(json!({"email": "kim@voyager", "name": "Harry"}))
    );
    // An `id` field is just a field here.
    let r = users
        .insert(json!({"id": "kim@voyager", "name": "Tom"}))
        .await
        .unwrap();
    assert_eq!(r.inserted, 1);
    assert_eq!(r.generated_keys.len(), 1);
    let key = r.generated_keys[0].clone();
    assert_eq!(
        users.get(key.clone()).await.unwrap(),
        Some(json!({"id": "kim@voyager", "name": "Tom", "email": key}))
    );
    // A conflict is on `email`.
    let r = users.insert(json!({"email": "kim@voyager"})).await.unwrap();
    assert_eq!(r.errors, 1);
    assert_eq!(
        r.first_error,
        Some(Error::KeyConflict {
            table: "users".into(),
            key: json!("kim@voyager")
        })
    );
    // The primary key is usable as an index name.
    let rows = users
        .order_by(Order::index("email").desc())
        .limit(1)
        .run()
        .await
        .unwrap();
    assert_eq!(rows[0]["email"], "kim@voyager");
    let rows = users
        .get_all(["kim@voyager"])
        .index("email")
        .run()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    // The primary key is one top-level field.
    for bad in ["a.b", ""] {
        assert!(
            matches!(
                db.create_table_with_key("other", bad).await,
                Err(Error::InvalidName { name, .. }) if name == bad
            ),
            "{bad:?}"
        );
    }
    assert_eq!(db.table_names().unwrap(), vec!["users"]);
}

#[tokio::test]
async fn keys_of_every_allowed_type() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let keys = [
        json!("s"),
        json!(-7),
        json!(2.5),
        json!(u64::MAX),
        json!(false),
        json!(true),
        json!([1, "a", true, [2]]),
    ];
    for k in &keys {
        let r = t.insert(json!({"id": k, "v": 1})).await.unwrap();
        assert_eq!(r.inserted, 1, "{k}");
        assert_eq!(
            t.get(k.clone()).await.unwrap(),
            Some(json!({"id": k, "v": 1}))
        );
    }
    // The longest key: a 1,021-byte string encodes to exactly 1,024 bytes.
    let longest = "k".repeat(1021);
    assert_eq!(t.insert(json!({"id": longest})).await.unwrap().inserted, 1);
    assert!(t.get(longest.as_str()).await.unwrap().is_some());
    // Primary key order follows the total order: arrays < booleans < numbers < strings
    // (u64::MAX is a number like the others, above every smaller one).
    assert_eq!(
        contents(&t)
            .await
            .iter()
            .map(|d| d["id"].clone())
            .collect::<Vec<_>>(),
        vec![
            json!([1, "a", true, [2]]),
            json!(false),
            json!(true),
            json!(-7),
            json!(2.5),
            json!(u64::MAX),
            json!(longest),
            json!("s"),
        ]
    );
}

#[tokio::test]
async fn a_missing_key_is_generated_and_returned() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let r = t
        .insert_many(vec![
            json!({"v": 1}),
            json!({"id": "given", "v": 2}),
            json!({"v": 3}),
        ])
        .await
        .unwrap();
    assert_eq!(r.inserted, 3);
    assert_eq!(r.errors, 0);
    assert_eq!(r.generated_keys.len(), 2);
    for (key, v) in r.generated_keys.iter().zip([1, 3]) {
        let s = key.as_str().expect("a generated key is a string");
        // A v4 UUID: 8-4-4-4-12 lowercase hex digits, version 4.
        let parts: Vec<&str> = s.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12],
            "{s}"
        );
        assert!(s
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(&parts[2][..1], "4", "{s}");
        assert_eq!(
            t.get(key.clone()).await.unwrap(),
            Some(json!({"v": v, "id": key}))
        );
    }
    assert_ne!(r.generated_keys[0], r.generated_keys[1]);
    // A single insert returns its one generated key too.
    let r = t.insert(json!({"v": 4})).await.unwrap();
    assert_eq!((r.inserted, r.generated_keys.len()), (1, 1));
    let key = r.generated_keys[0].clone();
    assert_eq!(key.as_str().map(str::len), Some(36), "{key}");
    assert_eq!(
        t.get(key.clone()).await.unwrap(),
        Some(json!({"v": 4, "id": key}))
    );
    assert_eq!(t.count().await.unwrap(), 4);
}

// ---- documents & writes ----

#[tokio::test]
async fn documents_are_schemaless_and_keep_nested_fields() {
    let db = db().await;
    db.create_table("docs").await.unwrap();
    let t = db.table("docs");
    let a = json!({"id": "a", "n": 1.5, "nested": {"deep": {"list": [1, {"x": null}, [true]],
                   "s": "é\u{0}z"}}, "empty": {}, "none": null});
    let b = json!({"id": "b", "completely": ["different", {"shape": 1}]});
    t.insert_many(vec![a.clone(), b.clone()]).await.unwrap();
    assert_eq!(t.get("a").await.unwrap(), Some(a.clone()));
    assert_eq!(t.get("b").await.unwrap(), Some(b.clone()));
    assert_eq!(contents(&t).await, vec![a, b]);
}

#[tokio::test]
async fn bad_documents_and_keys_are_typed_errors_and_lose_nothing() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.insert_many(vec![
        json!({"id": 1, "v": "one"}),
        json!({"id": 2, "v": "two"}),
    ])
    .await
    .unwrap();
    let before = contents(&t).await;
    assert_eq!(before.len(), 2);

    // Non-object documents.
    for bad in [
        json!(5),
        json!("doc"),
        json!([1, 2]),
        json!(null),
        json!(true),
    ] {
        assert!(
            matches!(
                t.insert(bad.clone()).await,
                Err(Error::InvalidDocument { .. })
            ),
            "{bad}"
        );
        assert_eq!(contents(&t).await, before);
    }
    // Null, object and overlong keys (and arrays holding them).
    // The reason says which rule the key breaks.
    let overlong = "k".repeat(1022); // encodes to 1,025 bytes
    for (bad_key, why) in [
        (json!(null), "null"),
        (json!({"a": 1}), "object"),
        (json!([1, null]), "null"),
        (json!([{"a": 1}]), "object"),
        (json!(overlong), "limit"),
        (json!("x".repeat(5000)), "limit"),
    ] {
        match t.insert(json!({"id": bad_key.clone(), "v": "bad"})).await {
            Err(Error::InvalidKey { key, reason }) => {
                assert_eq!(key, bad_key);
                assert!(reason.contains(why), "{bad_key}: {reason}");
            }
            other => panic!("{bad_key}: expected InvalidKey, got {other:?}"),
        }
        // Also with a conflict policy that would overwrite.
        assert!(matches!(
            t.insert(json!({"id": bad_key.clone()}))
                .conflict(Conflict::Replace)
                .await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            t.get(bad_key.clone()).await,
            Err(Error::InvalidKey { .. })
        ));
        assert_eq!(contents(&t).await, before);
    }
    let err = t.insert(json!({"id": overlong})).await.unwrap_err();
    assert!(err.to_string().contains("1025"), "{err}");
    assert!(err.to_string().contains("1024"), "{err}");

    // One bad document in a batch writes nothing, not even the good ones before it; the
    // error says which one it is.
    assert!(matches!(
        t.insert_many(vec![
            json!({"id": 3}),
            json!({"id": 1, "v": "over"}),
            json!(7)
        ])
        .conflict(Conflict::Replace)
        .await,
        Err(Error::InvalidDocument { reason }) if reason.contains("#2")
    ));
    assert!(matches!(
        t.insert_many(vec![json!({"id": 3}), json!({"id": null})])
            .await,
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(contents(&t).await, before);
    assert_eq!(t.get(3).await.unwrap(), None);
}

#[tokio::test]
async fn insert_conflicts_error_replace_update() {
    let db = db().await;
    db.create_table("w").await.unwrap();
    let t = db.table("w");
    let r = t
        .insert(json!({"id": 1, "v": "a", "o": {"x": 1}}))
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.inserted = 1;
        w.changes = vec![ChangePair::new(
            None,
            Some(json!({"id": 1, "v": "a", "o": {"x": 1}})),
        )];
        w
    });

    // Default: an error for that document, the stored one unchanged.
    let r = t
        .insert(json!({"id": 1, "v": "b"}))
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.errors = 1;
        w.first_error = Some(Error::KeyConflict {
            table: "w".into(),
            key: json!(1),
        });
        w
    });
    assert_eq!(
        r.check(),
        Err(Error::KeyConflict {
            table: "w".into(),
            key: json!(1)
        })
    );
    assert_eq!(
        t.get(1).await.unwrap(),
        Some(json!({"id": 1, "v": "a", "o": {"x": 1}}))
    );
    // 1.0 is the same key as 1.
    assert_eq!(t.insert(json!({"id": 1.0})).await.unwrap().errors, 1);

    // Replace.
    let r = t
        .insert(json!({"id": 1, "w": 2}))
        .conflict(Conflict::Replace)
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.replaced = 1;
        w.changes = vec![ChangePair::new(
            Some(json!({"id": 1, "v": "a", "o": {"x": 1}})),
            Some(json!({"id": 1, "w": 2})),
        )];
        w
    });
    assert_eq!(t.get(1).await.unwrap(), Some(json!({"id": 1, "w": 2})));

    // Update: merged into the stored document.
    let r = t
        .insert(json!({"id": 1, "x": {"y": 1}}))
        .conflict(Conflict::Update)
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.replaced = 1;
        w
    });
    assert_eq!(
        t.get(1).await.unwrap(),
        Some(json!({"id": 1, "w": 2, "x": {"y": 1}}))
    );
    // The same values again: unchanged, no change reported.
    for c in [Conflict::Update, Conflict::Replace] {
        let r = t
            .insert(json!({"id": 1, "w": 2, "x": {"y": 1}}))
            .conflict(c)
            .return_changes(true)
            .await
            .unwrap();
        assert_eq!(
            r,
            {
                let mut w = WriteResult::default();
                w.unchanged = 1;
                w
            },
            "{c:?}"
        );
    }

    // Many at once: counted per document.
    let r = t
        .insert_many(vec![
            json!({"id": 2}),
            json!({"id": 1, "v": "no"}),
            json!({"id": 3}),
            json!({"id": 3, "v": "dup in the batch"}),
        ])
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.inserted = 2;
        w.errors = 2;
        w.first_error = Some(Error::KeyConflict {
            table: "w".into(),
            key: json!(1),
        });
        w
    });
    assert_eq!(
        contents(&t).await,
        vec![
            json!({"id": 1, "w": 2, "x": {"y": 1}}),
            json!({"id": 2}),
            json!({"id": 3}),
        ]
    );
    let r = t
        .insert_many(vec![
            json!({"id": 2, "a": 1}),
            json!({"id": 4}),
            json!({"id": 3}),
        ])
        .conflict(Conflict::Replace)
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.inserted = 1;
        w.replaced = 1;
        w.unchanged = 1;
        w
    });
}

#[tokio::test]
async fn insert_with_numerically_equal_key_and_conflict_update_merges() {
    // 1 and 1.0 are the same primary key (the conflict is found); merging a document whose
    // key is written 1.0 into the stored one (key 1) does not change the key, so it must not
    // fail as "the primary key cannot be changed".
    let db = db().await;
    db.create_table("w").await.unwrap();
    let t = db.table("w");
    t.insert(json!({"id": 1, "a": 1})).await.unwrap();
    let r = t
        .insert(json!({"id": 1.0, "b": 2}))
        .conflict(Conflict::Update)
        .await
        .unwrap();
    assert_eq!(r.first_error, None);
    assert_eq!(r.errors, 0);
    assert_eq!(r.replaced, 1);
    let stored = t.get(1).await.unwrap().unwrap();
    assert_eq!(stored["a"], 1);
    assert_eq!(stored["b"], 2);
    // The same through an update by key that repeats the key as 1.0.
    let r = t.get(1).update(json!({"id": 1.0, "c": 3})).await.unwrap();
    assert_eq!(r.first_error, None);
    assert_eq!(r.replaced, 1);
    assert_eq!(t.get(1).await.unwrap().unwrap()["c"], 3);
}

#[tokio::test]
async fn update_merges_nested_objects_and_replaces_arrays() {
    let db = db().await;
    db.create_table("w").await.unwrap();
    let t = db.table("w");
    let doc = json!({"id": "m", "a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1, "s": {"t": 1}});
    t.insert(doc.clone()).await.unwrap();
    let r = t
        .get("m")
        .update(json!({"a": {"b": 5, "d": {"e": 1}}, "l": [3], "y": "new", "s": 7, "x": null}))
        .return_changes(true)
        .await
        .unwrap();
    let merged = json!({"id": "m", "a": {"b": 5, "c": 2, "d": {"e": 1}}, "l": [3], "x": null,
                        "s": 7, "y": "new"});
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.replaced = 1;
        w.changes = vec![ChangePair::new(Some(doc), Some(merged.clone()))];
        w
    });
    assert_eq!(t.get("m").await.unwrap(), Some(merged.clone()));

    // The same patch again changes nothing: unchanged, no change reported.
    let r = t
        .get("m")
        .update(json!({"a": {"b": 5}, "l": [3]}))
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.unchanged = 1;
        w
    });
    // An empty patch too.
    assert_eq!(t.get("m").update(json!({})).await.unwrap().unchanged, 1);
    // The primary key may be repeated unchanged.
    assert_eq!(
        t.get("m")
            .update(json!({"id": "m"}))
            .await
            .unwrap()
            .unchanged,
        1
    );
    // A missing document is skipped.
    assert_eq!(t.get("nope").update(json!({"a": 1})).await.unwrap(), {
        let mut w = WriteResult::default();
        w.skipped = 1;
        w
    });
    assert_eq!(t.get("nope").await.unwrap(), None);
    assert_eq!(t.get("m").await.unwrap(), Some(merged));
}

#[tokio::test]
async fn updates_that_cannot_apply_are_errors_and_change_nothing() {
    let db = db().await;
    db.create_table("w").await.unwrap();
    let t = db.table("w");
    t.insert(json!({"id": "m", "v": 1})).await.unwrap();
    // Changing the primary key.
    let r = t.get("m").update(json!({"id": "other"})).await.unwrap();
    assert_eq!(r.errors, 1);
    assert_eq!(r.replaced, 0);
    assert!(
        matches!(&r.first_error, Some(Error::InvalidDocument { reason }) if reason.contains("primary key")),
        "{r:?}"
    );
    assert_eq!(
        t.get("m")
            .update(Patch::with(|_| Ok(json!({"id": 5}))))
            .await
            .unwrap()
            .errors,
        1
    );
    // A patch that is not an object.
    for bad in [json!(5), json!([1]), json!(null)] {
        let r = t.get("m").update(bad).await.unwrap();
        assert_eq!(r.errors, 1);
        assert!(matches!(r.first_error, Some(Error::InvalidDocument { .. })));
    }
    // A patch function that fails: its error is reported.
    let r = t
        .get("m")
        .update(Patch::with(|_| Err(Error::InvalidQuery("nope".into()))))
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.errors = 1;
        w.first_error = Some(Error::InvalidQuery("nope".into()));
        w
    });
    assert_eq!(contents(&t).await, vec![json!({"id": "m", "v": 1})]);
    assert!(matches!(
        t.get(json!(null)).update(json!({"v": 2})).await,
        Err(Error::InvalidKey { .. })
    ));
}

#[tokio::test]
async fn replace_and_delete_by_key() {
    let db = db().await;
    db.create_table("w").await.unwrap();
    let t = db.table("w");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    t.insert(json!({"id": "m", "v": 1, "other": true}))
        .await
        .unwrap();

    // Replace: the key is filled in when absent.
    let r = t
        .get("m")
        .replace(json!({"v": 2}))
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.replaced = 1;
        w.changes = vec![ChangePair::new(
            Some(json!({"id": "m", "v": 1, "other": true})),
            Some(json!({"v": 2, "id": "m"})),
        )];
        w
    });
    assert_eq!(t.get("m").await.unwrap(), Some(json!({"id": "m", "v": 2})));
    assert_eq!(
        sids(&t.get_all([2]).index("v").run().await.unwrap()),
        vec!["m"]
    );
    assert_eq!(t.get_all([1]).index("v").count().await.unwrap(), 0);
    // With the same key written out, and with the same document: unchanged.
    assert_eq!(
        t.get("m")
            .replace(json!({"id": "m", "v": 2}))
            .await
            .unwrap(),
        {
            let mut w = WriteResult::default();
            w.unchanged = 1;
            w
        }
    );
    // Of a missing document: skipped.
    assert_eq!(t.get("nope").replace(json!({"v": 1})).await.unwrap(), {
        let mut w = WriteResult::default();
        w.skipped = 1;
        w
    });
    assert_eq!(t.get("nope").await.unwrap(), None);
    // Changing the key, or not an object: errors.
    assert!(matches!(
        t.get("m").replace(json!({"id": "x", "v": 3})).await,
        Err(Error::InvalidDocument { .. })
    ));
    assert!(matches!(
        t.get("m").replace(json!("v")).await,
        Err(Error::InvalidDocument { .. })
    ));
    assert_eq!(t.get("m").await.unwrap(), Some(json!({"id": "m", "v": 2})));

    // Delete.
    let r = t.get("m").delete().return_changes(true).await.unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.deleted = 1;
        w.changes = vec![ChangePair::new(Some(json!({"id": "m", "v": 2})), None)];
        w
    });
    assert_eq!(t.get("m").await.unwrap(), None);
    assert_eq!(t.index_status().unwrap()[0].entries, 0);
    assert_eq!(t.get("m").delete().await.unwrap(), {
        let mut w = WriteResult::default();
        w.skipped = 1;
        w
    });
    assert_eq!(t.count().await.unwrap(), 0);
}

#[tokio::test]
async fn update_and_delete_by_query() {
    let db = db().await;
    let t = crew(&db).await;
    // Update the captains.
    let r = t
        .filter(field("rank").eq("captain"))
        .update(json!({"fleet": {"flag": true}}))
        .await
        .unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.replaced = 3;
        w
    });
    assert_eq!(
        ids(&t.filter(field("fleet.flag").eq(true)).run().await.unwrap()),
        vec![1, 4, 6]
    );
    // Again: unchanged; mixed with new rows: counted apart.
    let r = t
        .filter(field("ship").ne("enterprise"))
        .update(json!({"fleet": {"flag": true}}))
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r.replaced, 2); // 5, 7
    assert_eq!(r.unchanged, 2); // 4, 6
    assert_eq!(r.changes.len(), 2);
    assert_eq!(
        r.changes
            .iter()
            .map(|c| c.new_val.as_ref().unwrap()["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!(5), json!(7)]
    );
    assert_eq!(r.changes[0].old_val, Some(crew_docs()[4].clone()));

    // Update through an index range, changing the indexed field (each row once).
    let r = t
        .between(Included(json!(40)), Unbounded)
        .index("age")
        .update(Patch::with(|d| {
            Ok(json!({"age": d["age"].as_i64().unwrap() + 100}))
        }))
        .await
        .unwrap();
    assert_eq!(r.replaced, 4); // 6, 4, 7, 1
    assert_eq!(
        ids(&t.order_by(Order::index("age")).run().await.unwrap()),
        vec![2, 3, 6, 4, 7, 1]
    );
    assert_eq!(t.get(1).await.unwrap().unwrap()["age"], 159);
    // An order and a limit select the rows.
    let r = t
        .order_by(desc("age"))
        .limit(1)
        .update(json!({"oldest": true}))
        .await
        .unwrap();
    assert_eq!(r.replaced, 1);
    assert_eq!(
        ids(&t.filter(has_fields(["oldest"])).run().await.unwrap()),
        vec![1]
    );

    // Delete by query.
    let r = t
        .filter(field("age").lt(40))
        .delete()
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r.deleted, 2);
    assert_eq!(
        r.changes,
        vec![
            ChangePair::new(Some(crew_docs()[1].clone()), None),
            ChangePair::new(Some(crew_docs()[2].clone()), None),
        ]
    );
    assert_eq!(ids(&contents(&t).await), vec![1, 4, 5, 6, 7]);
    // Nothing selected: nothing counted.
    assert_eq!(
        t.filter(field("age").lt(0)).delete().await.unwrap(),
        WriteResult::default()
    );
    // get_all with a key twice deletes it once.
    assert_eq!(t.get_all([4, 4, 99]).delete().await.unwrap(), {
        let mut w = WriteResult::default();
        w.deleted = 1;
        w
    });
    // Indexes agree.
    assert_eq!(
        ids(&t.order_by(Order::index("rank")).run().await.unwrap()),
        vec![1, 6, 7, 5]
    );
    assert_eq!(
        ids(&t.get_all(["tea"]).index("tags").run().await.unwrap()),
        vec![1, 6]
    );
    // Delete everything.
    assert_eq!(t.query().delete().await.unwrap().deleted, 4);
    assert_eq!(t.count().await.unwrap(), 0);
    for s in t.index_status().unwrap() {
        assert_eq!(s.entries, 0, "{}", s.name);
    }
}

#[tokio::test]
async fn read_modify_write_with_a_patch_function() {
    let db = db().await;
    db.create_table("c").await.unwrap();
    let t = db.table("c");
    t.insert_many(vec![
        json!({"id": "a", "n": 0}),
        json!({"id": "b", "n": 10}),
    ])
    .await
    .unwrap();
    let bump = Patch::with(|d| Ok(json!({"n": d["n"].as_i64().unwrap() + 1})));
    for _ in 0..10 {
        let r = t.get("a").update(bump.clone()).await.unwrap();
        assert_eq!(r.replaced, 1);
    }
    assert_eq!(t.get("a").await.unwrap(), Some(json!({"id": "a", "n": 10})));
    // By query: each row from its own value.
    let r = t
        .query()
        .update(Patch::with(|d| {
            Ok(json!({"n": d["n"].as_i64().unwrap() * 2, "was": d["n"].clone()}))
        }))
        .await
        .unwrap();
    assert_eq!(r.replaced, 2);
    assert_eq!(
        contents(&t).await,
        vec![
            json!({"id": "a", "n": 20, "was": 10}),
            json!({"id": "b", "n": 20, "was": 10}),
        ]
    );
    // A function that returns the document's own values: unchanged.
    let same = Patch::with(|d| Ok(json!({"n": d["n"].clone()})));
    assert_eq!(t.get("a").update(same).await.unwrap().unchanged, 1);
}

#[tokio::test]
async fn a_large_batch_in_one_insert() {
    let db = db().await;
    db.create_table("big").await.unwrap();
    let t = db.table("big");
    // One index maintained by the writes, one backfilled afterwards.
    t.create_index("bucket", IndexSpec::field("bucket"))
        .await
        .unwrap();
    let docs: Vec<Value> = (0..10_000)
        .map(|i| json!({"id": i, "bucket": i % 100, "even": i % 2 == 0}))
        .collect();
    let r = t.insert_many(docs).await.unwrap();
    assert_eq!(r, {
        let mut w = WriteResult::default();
        w.inserted = 10_000;
        w
    });
    assert_eq!(t.count().await.unwrap(), 10_000);
    assert_eq!(t.index_status().unwrap()[0].entries, 10_000);
    assert_eq!(
        t.order_by(Order::index("bucket")).count().await.unwrap(),
        10_000
    );
    let seven = t.get_all([7]).index("bucket").run().await.unwrap();
    assert_eq!(
        ids(&seven),
        (0..100).map(|k| 7 + 100 * k).collect::<Vec<_>>()
    );
    assert_eq!(
        t.between(Included(json!(0)), Excluded(json!(10)))
            .index("bucket")
            .count()
            .await
            .unwrap(),
        1_000
    );
    t.create_index("even", IndexSpec::field("even"))
        .await
        .unwrap();
    assert_eq!(t.index_status().unwrap()[1].entries, 10_000);
    assert_eq!(
        t.get_all([true]).index("even").count().await.unwrap(),
        5_000
    );
    assert_eq!(t.query().sum("bucket").await.unwrap(), 100.0 * 4950.0);
    // A large delete by query, and the index agrees.
    let r = t.filter(field("even").eq(false)).delete().await.unwrap();
    assert_eq!(r.deleted, 5_000);
    assert_eq!(t.count().await.unwrap(), 5_000);
    assert_eq!(t.index_status().unwrap()[0].entries, 5_000);
    assert_eq!(t.get_all([false]).index("even").count().await.unwrap(), 0);
    assert_eq!(t.get_all([7]).index("bucket").count().await.unwrap(), 0);
    assert_eq!(t.get_all([8]).index("bucket").count().await.unwrap(), 100);
}

/// 16 tasks x 50 read-modify-write increments, spread over the same 4 documents (200 each).
/// `durability` is per write (`None`: the database default).
async fn sixteen_tasks_increment_four_documents(durability: Option<Durability>) -> Vec<Value> {
    let db = db().await;
    db.create_table("counters").await.unwrap();
    let t = db.table("counters");
    t.insert_many((0..4).map(|i| json!({"id": i, "n": 0})))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let bump = Patch::with(|d| Ok(json!({"n": d["n"].as_i64().unwrap() + 1})));
                let write = t.get((task + i) % 4).update(bump);
                let write = match durability {
                    Some(d) => write.durability(d),
                    None => write,
                };
                let r = write.await.unwrap();
                assert_eq!(r, {
                    let mut w = WriteResult::default();
                    w.replaced = 1;
                    w
                });
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    contents(&t).await
}

fn two_hundred_each() -> Vec<Value> {
    (0..4).map(|i| json!({"id": i, "n": 200})).collect()
}

/// No update is lost. The writes are `Soft` here so that this test checks atomicity alone;
/// the default (`Hard`) durability is checked below, in a child process, because with it the
/// same workload hangs the process (see `concurrent_hard_writes_finish`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_writes_lose_nothing() {
    let docs = sixteen_tasks_increment_four_documents(Some(Durability::Soft)).await;
    assert_eq!(docs, two_hundred_each());
}

const HARD_CHILD_ENV: &str = "REMODEL_STORE_HARD_WRITES_CHILD";

/// The child of `concurrent_hard_writes_finish`: the same workload with the default
/// durability; prints the final documents. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_hard_writes_child() {
    if std::env::var_os(HARD_CHILD_ENV).is_none() {
        return;
    }
    let docs = sixteen_tasks_increment_four_documents(None).await;
    println!("\nfinal {}", Value::Array(docs));
}

/// Concurrent writes with the default (hard) durability finish, and lose nothing.
///
/// Run in a child process: if the store deadlocks, it takes sled's process-wide I/O thread
/// pool with it, and every other test of this binary would hang too. The child is given a
/// generous deadline (the workload normally takes well under a second) only to turn a hang
/// into a failure; nothing here measures speed.
#[test]
fn concurrent_hard_writes_finish() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "concurrent_hard_writes_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HARD_CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    assert!(
        finished,
        "16 tasks doing hard-durability updates never finished: the process is deadlocked \
         (every sled I/O thread waits in flush_async for a log write queued behind them)"
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("final "))
        .unwrap_or_else(|| panic!("the child did not finish its work:\n{out}"));
    let docs: Value = serde_json::from_str(line).unwrap();
    assert_eq!(docs, Value::Array(two_hundred_each()));
}

// ---- reads & ordering ----

#[tokio::test]
async fn get_and_get_all() {
    let db = db().await;
    let t = crew(&db).await;
    assert_eq!(t.get(3).await.unwrap(), Some(crew_docs()[2].clone()));
    assert_eq!(t.get(99).await.unwrap(), None);
    assert_eq!(t.get("3").await.unwrap(), None); // a string is another key
    assert_eq!(t.get(3.0).await.unwrap(), Some(crew_docs()[2].clone())); // 3 == 3.0

    // Primary: in the order asked, a key twice returns twice, missing keys are absent.
    let rows = t.get_all([6, 1, 99, 6]).run().await.unwrap();
    assert_eq!(ids(&rows), vec![6, 1, 6]);
    assert_eq!(rows[1], crew_docs()[0]);
    assert_eq!(
        t.get_all(Vec::<Value>::new()).run().await.unwrap(),
        Vec::<Value>::new()
    );

    // Secondary: per value in the order asked, then by primary key.
    let rows = t
        .get_all(["commander", "captain", "commander"])
        .index("rank")
        .run()
        .await
        .unwrap();
    assert_eq!(ids(&rows), vec![2, 3, 7, 1, 4, 6, 2, 3, 7]);
    assert_eq!(
        ids(&t.get_all(["admiral"]).index("rank").run().await.unwrap()),
        NONE
    );
    // The primary key by name works as an index.
    assert_eq!(
        ids(&t.get_all([2, 2]).index("id").run().await.unwrap()),
        vec![2, 2]
    );
    // A nested field index.
    assert_eq!(
        ids(&t
            .get_all(["New Orleans"])
            .index("city")
            .run()
            .await
            .unwrap()),
        vec![4]
    );
    // `index` applies only right after the source.
    assert!(matches!(
        t.query().index("rank").run().await,
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        t.get_all([1]).limit(1).index("rank").run().await,
        Err(Error::InvalidQuery(_))
    ));
}

#[tokio::test]
async fn between_on_the_primary_key() {
    let db = db().await;
    let t = crew(&db).await;
    let b = |lo, hi| {
        let t = t.clone();
        async move { ids(&t.between(lo, hi).run().await.unwrap()) }
    };
    // The usual bounds: lower closed, upper open.
    assert_eq!(
        b(Included(json!(2)), Excluded(json!(5))).await,
        vec![2, 3, 4]
    );
    assert_eq!(
        b(Included(json!(2)), Included(json!(5))).await,
        vec![2, 3, 4, 5]
    );
    assert_eq!(b(Excluded(json!(2)), Excluded(json!(5))).await, vec![3, 4]);
    assert_eq!(
        b(Excluded(json!(2)), Included(json!(5))).await,
        vec![3, 4, 5]
    );
    assert_eq!(b(Unbounded, Excluded(json!(3))).await, vec![1, 2]);
    assert_eq!(b(Included(json!(6)), Unbounded).await, vec![6, 7]);
    assert_eq!(b(Unbounded, Unbounded).await, vec![1, 2, 3, 4, 5, 6, 7]);
    // Bounds between keys, and empty ranges.
    assert_eq!(
        b(Included(json!(1.5)), Included(json!(3.5))).await,
        vec![2, 3]
    );
    assert_eq!(b(Included(json!(4)), Excluded(json!(4))).await, NONE);
    assert_eq!(b(Included(json!(5)), Excluded(json!(2))).await, NONE);
    // Every number is below every string.
    assert_eq!(
        b(Included(json!(3)), Excluded(json!(""))).await,
        vec![3, 4, 5, 6, 7]
    );
    // With `.index(primary key)` it is the same thing.
    assert_eq!(
        ids(&t
            .between(Included(json!(2)), Excluded(json!(5)))
            .index("id")
            .run()
            .await
            .unwrap()),
        vec![2, 3, 4]
    );
}

#[tokio::test]
async fn filter_with_every_predicate() {
    let db = db().await;
    let t = crew(&db).await;
    let f = |p: Predicate| {
        let t = t.clone();
        async move { ids(&t.filter(p).run().await.unwrap()) }
    };
    assert_eq!(f(field("rank").eq("captain")).await, vec![1, 4, 6]);
    assert_eq!(f(field("age").eq(45.0)).await, vec![4, 7]); // numbers as doubles
    assert_eq!(f(field("rank").ne("captain")).await, vec![2, 3, 5, 7]);
    assert_eq!(f(field("age").ne(45)).await, vec![1, 2, 3, 6]); // 5 has no age
    assert_eq!(f(field("age").lt(41)).await, vec![2, 3]);
    assert_eq!(f(field("age").le(41)).await, vec![2, 3, 6]);
    assert_eq!(f(field("age").gt(45)).await, vec![1]);
    assert_eq!(f(field("age").ge(45)).await, vec![1, 4, 7]);
    assert_eq!(f(field("tags").contains("tea")).await, vec![1, 4, 6]);
    assert_eq!(f(field("name").contains("a")).await, NONE); // not an array
    assert_eq!(f(has_fields(["home.city"])).await, vec![1, 4]);
    assert_eq!(f(has_fields(["age", "home"])).await, vec![1, 2, 4]);
    assert_eq!(f(field("home").exists()).await, vec![1, 2, 4]);
    assert_eq!(f(field("name").starts_with("J")).await, vec![6]);
    assert_eq!(f(field("home.planet").starts_with("o")).await, vec![2]);
    assert_eq!(f(field("name").matches("^[DT]")).await, vec![2, 3]);
    assert_eq!(f(field("name").matches("r[fd]$")).await, vec![1, 7]);
    assert_eq!(
        f(field("rank").eq("captain").and(field("age").gt(42))).await,
        vec![1, 4]
    );
    assert_eq!(
        f(field("ship").eq("voyager").or(field("age").lt(31))).await,
        vec![2, 6]
    );
    assert_eq!(f(!field("ship").eq("enterprise")).await, vec![4, 5, 6, 7]);
    assert_eq!(
        f(field("a")
            .eq(1)
            .or(field("b").eq(2))
            .or(field("ship").eq("defiant")))
        .await,
        vec![4, 5, 7]
    );
    assert_eq!(f(Predicate::And { all: vec![] }).await.len(), 7);
    assert_eq!(f(Predicate::Or { any: vec![] }).await, NONE);
    // Comparisons across types use the total order: numbers < strings.
    assert_eq!(f(field("name").gt(100)).await, vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(f(field("tags").lt(false)).await, vec![1, 2, 3, 4, 5, 6, 7]);
    // Nested paths.
    assert_eq!(f(field("home.planet").eq("earth")).await, vec![1, 4]);
    // Filters chain.
    assert_eq!(
        ids(&t
            .filter(field("ship").eq("enterprise"))
            .filter(field("age").gt(31))
            .run()
            .await
            .unwrap()),
        vec![1, 3]
    );
}

#[tokio::test]
async fn predicates_on_missing_fields_are_false() {
    let db = db().await;
    let t = crew(&db).await;
    let f = |p: Predicate| {
        let t = t.clone();
        async move { ids(&t.filter(p).run().await.unwrap()) }
    };
    for p in [
        field("nope").eq(1),
        field("nope").eq(json!(null)),
        field("nope").ne(1),
        field("nope").lt(100),
        field("nope").le(100),
        field("nope").gt(-100),
        field("nope").ge(-100),
        field("nope").contains(1),
        field("nope").starts_with(""),
        field("nope").matches(".*"),
        field("name.first").eq("Picard"), // through a string
        field("tags.0").eq("tea"),        // through an array
        has_fields(["nope"]),
    ] {
        assert_eq!(f(p.clone()).await, NONE, "{p:?}");
    }
    // Kira has no age: every comparison on it is false, so its negation holds.
    assert_eq!(f(!field("age").gt(40)).await, vec![2, 3, 5]);
    assert_eq!(f(field("home.city").ne("x")).await, vec![1, 4]);
    // A null field is there for comparisons but not for has_fields.
    db.create_table("n").await.unwrap();
    let n = db.table("n");
    n.insert_many(vec![json!({"id": 1, "x": null}), json!({"id": 2})])
        .await
        .unwrap();
    assert_eq!(
        ids(&n.filter(field("x").eq(json!(null))).run().await.unwrap()),
        vec![1]
    );
    assert_eq!(ids(&n.filter(has_fields(["x"])).run().await.unwrap()), NONE);
}

#[tokio::test]
async fn predicates_in_json_form() {
    let db = db().await;
    let t = crew(&db).await;
    let p: Predicate = serde_json::from_value(json!({
        "op": "and",
        "all": [
            {"op": "eq", "field": "ship", "value": "enterprise"},
            {"op": "not", "not": {"op": "has_fields", "fields": ["home"]}}
        ]
    }))
    .unwrap();
    assert_eq!(p, field("ship").eq("enterprise").and(!has_fields(["home"])));
    assert_eq!(ids(&t.filter(p.clone()).run().await.unwrap()), vec![3]);
    // And back.
    assert_eq!(
        serde_json::to_value(field("age").ge(40)).unwrap(),
        json!({"op": "ge", "field": "age", "value": 40})
    );
    let round: Predicate = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(round, p);
    let p: Predicate = serde_json::from_value(json!({
        "op": "or", "any": [
            {"op": "starts_with", "field": "name", "prefix": "W"},
            {"op": "matches", "field": "name", "pattern": "^Ki"},
            {"op": "contains", "field": "tags", "value": "cats"}
        ]
    }))
    .unwrap();
    assert_eq!(ids(&t.filter(p).run().await.unwrap()), vec![2, 5, 7]);
    // An unknown operator does not deserialize.
    assert!(serde_json::from_value::<Predicate>(json!({"op": "bogus"})).is_err());
}

#[tokio::test]
async fn predicates_with_bad_types_are_invalid_queries() {
    let db = db().await;
    let t = crew(&db).await;
    for bad in [
        json!({"op": "starts_with", "field": "name", "prefix": 5}),
        json!({"op": "starts_with", "field": "name", "prefix": null}),
        json!({"op": "matches", "field": "name", "pattern": true}),
        json!({"op": "matches", "field": "name", "pattern": ["^P"]}),
        json!({"op": "matches", "field": "name", "pattern": "("}),
        json!({"op": "and", "all": [
            {"op": "eq", "field": "rank", "value": "captain"},
            {"op": "not", "not": {"op": "starts_with", "field": "name", "prefix": {"a": 1}}}
        ]}),
        json!({"op": "or", "any": [{"op": "matches", "field": "name", "pattern": 1.5}]}),
    ] {
        let p: Predicate = serde_json::from_value(bad.clone()).unwrap();
        let q = t.filter(p);
        assert!(
            matches!(q.run().await, Err(Error::InvalidQuery(_))),
            "{bad}"
        );
        assert!(
            matches!(q.count().await, Err(Error::InvalidQuery(_))),
            "{bad}"
        );
        assert!(
            matches!(q.first().await, Err(Error::InvalidQuery(_))),
            "{bad}"
        );
        assert!(
            matches!(q.update(json!({"x": 1})).await, Err(Error::InvalidQuery(_))),
            "{bad}"
        );
    }
    // The message says what was wrong.
    let p: Predicate =
        serde_json::from_value(json!({"op": "starts_with", "field": "name", "prefix": 5})).unwrap();
    let err = t.filter(p).run().await.unwrap_err();
    assert!(err.to_string().contains("string prefix"), "{err}");
    assert!(err.to_string().contains('5'), "{err}");
    // Nothing was written by the failed updates.
    assert_eq!(contents(&t).await, crew_docs());
    // A bad field path is a bad name.
    assert!(matches!(
        t.filter(field("a..b").eq(1)).run().await,
        Err(Error::InvalidName { .. })
    ));
}

#[tokio::test]
async fn order_by_a_field() {
    let db = db().await;
    let t = crew(&db).await;
    let o = |q: remodel::Query| async move { ids(&q.run().await.unwrap()) };
    // No order: primary key order.
    assert_eq!(o(t.query()).await, vec![1, 2, 3, 4, 5, 6, 7]);
    // Ascending; ties (4 and 7 are 45) by primary key; missing fields (5) last.
    assert_eq!(o(t.order_by(asc("age"))).await, vec![2, 3, 6, 4, 7, 1, 5]);
    // Descending reverses values and ties, missing fields stay last.
    assert_eq!(o(t.order_by(desc("age"))).await, vec![1, 7, 4, 6, 3, 2, 5]);
    assert_eq!(o(t.order_by(asc("name"))).await, vec![2, 6, 5, 1, 4, 3, 7]);
    assert_eq!(
        o(t.order_by(desc("home.planet"))).await,
        vec![2, 4, 1, 7, 6, 5, 3]
    );
    // Skip and limit (a limit after the sort keeps a bounded top-k).
    assert_eq!(o(t.order_by(asc("age")).limit(3)).await, vec![2, 3, 6]);
    assert_eq!(o(t.order_by(desc("age")).limit(2)).await, vec![1, 7]);
    assert_eq!(
        o(t.order_by(asc("age")).skip(1).limit(3)).await,
        vec![3, 6, 4]
    );
    assert_eq!(o(t.order_by(asc("age")).skip(5)).await, vec![1, 5]);
    assert_eq!(o(t.order_by(asc("age")).skip(9)).await, NONE);
    assert_eq!(o(t.order_by(asc("age")).limit(0)).await, NONE);
    assert_eq!(o(t.order_by(desc("age")).limit(100)).await.len(), 7);
    // Huge skips and limits do not overflow.
    assert_eq!(
        o(t.order_by(asc("id")).skip(usize::MAX).limit(usize::MAX)).await,
        NONE
    );
    assert_eq!(
        o(t.order_by(asc("id")).skip(6).limit(usize::MAX)).await,
        vec![7]
    );
    // Filter then order; limit then order.
    assert_eq!(
        o(t.filter(field("ship").eq("defiant")).order_by(desc("age"))).await,
        vec![7, 4, 5]
    );
    assert_eq!(
        o(t.query().limit(3).order_by(desc("id"))).await,
        vec![3, 2, 1]
    );
    // Without order_by: skip and limit on primary key order.
    assert_eq!(o(t.query().skip(2).limit(2)).await, vec![3, 4]);
    assert_eq!(o(t.query().skip(5)).await, vec![6, 7]);
    assert_eq!(o(t.query().limit(0)).await, NONE);
    // A later order wins.
    assert_eq!(
        o(t.order_by(asc("age")).order_by(asc("name"))).await,
        vec![2, 6, 5, 1, 4, 3, 7]
    );
}

#[tokio::test]
async fn ties_are_broken_by_primary_key() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("s", IndexSpec::field("s")).await.unwrap();
    t.insert_many((0..10).rev().map(|i| json!({"id": i, "s": i % 2})))
        .await
        .unwrap();
    assert_eq!(
        ids(&t.order_by(Order::index("s")).run().await.unwrap()),
        vec![0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    );
    assert_eq!(
        ids(&t.order_by(asc("s")).run().await.unwrap()),
        vec![0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    );
    assert_eq!(
        ids(&t.order_by(desc("s")).limit(3).run().await.unwrap()),
        vec![9, 7, 5]
    );
    assert_eq!(
        ids(&t
            .order_by(Order::index("s").desc())
            .limit(3)
            .run()
            .await
            .unwrap()),
        vec![9, 7, 5]
    );
}

#[tokio::test]
async fn pluck_and_without() {
    let db = db().await;
    let t = crew(&db).await;
    assert_eq!(
        t.get_all([1, 5])
            .pluck(["name", "home.planet"])
            .run()
            .await
            .unwrap(),
        vec![
            json!({"name": "Picard", "home": {"planet": "earth"}}),
            json!({"name": "Kira"}),
        ]
    );
    assert_eq!(
        t.get_all([1, 5])
            .without(["tags", "home.city", "age", "missing.deep"])
            .run()
            .await
            .unwrap(),
        vec![
            json!({"id": 1, "name": "Picard", "rank": "captain", "ship": "enterprise",
                   "home": {"planet": "earth"}}),
            json!({"id": 5, "name": "Kira", "rank": "major", "ship": "defiant"}),
        ]
    );
    // After an order and a limit.
    assert_eq!(
        t.order_by(desc("age"))
            .limit(2)
            .pluck(["id", "age"])
            .run()
            .await
            .unwrap(),
        vec![json!({"id": 1, "age": 59}), json!({"id": 7, "age": 45})]
    );
    assert_eq!(
        t.get_all([3]).pluck(["nope"]).run().await.unwrap(),
        vec![json!({})]
    );
}

#[tokio::test]
async fn first_and_stream() {
    let db = db().await;
    let t = crew(&db).await;
    assert_eq!(
        t.order_by(desc("age")).first().await.unwrap(),
        Some(crew_docs()[0].clone())
    );
    assert_eq!(
        t.filter(field("rank").eq("major")).first().await.unwrap(),
        Some(crew_docs()[4].clone())
    );
    assert_eq!(
        t.filter(field("rank").eq("ensign")).first().await.unwrap(),
        None
    );

    let streamed: Vec<Value> = t
        .order_by(Order::index("age"))
        .stream()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(ids(&streamed), vec![2, 3, 6, 4, 7, 1]);
    // Taking two rows of a lazy stream.
    let two: Vec<Value> = t
        .query()
        .stream()
        .take(2)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(ids(&two), vec![1, 2]);
    // Errors come through the stream.
    let errs: Vec<_> = db.table("nope").query().stream().collect().await;
    assert_eq!(errs, vec![Err(Error::NoSuchTable("nope".into()))]);
    // iter is lazy too.
    let it = t.query().iter().unwrap();
    assert_eq!(
        it.take(3)
            .map(|r| r.unwrap()["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!(1), json!(2), json!(3)]
    );
}

// ---- indexes ----

#[tokio::test]
async fn between_on_a_secondary_index() {
    let db = db().await;
    let t = crew(&db).await;
    // Ages: 2:30 3:35 6:41 4:45 7:45 1:59 (5 has none).
    let b = |lo, hi| {
        let t = t.clone();
        async move { ids(&t.between(lo, hi).index("age").run().await.unwrap()) }
    };
    assert_eq!(
        b(Included(json!(35)), Excluded(json!(45))).await,
        vec![3, 6]
    );
    assert_eq!(
        b(Included(json!(35)), Included(json!(45))).await,
        vec![3, 6, 4, 7]
    );
    assert_eq!(
        b(Excluded(json!(35)), Excluded(json!(59))).await,
        vec![6, 4, 7]
    );
    assert_eq!(b(Excluded(json!(45)), Included(json!(59))).await, vec![1]);
    assert_eq!(b(Excluded(json!(45)), Unbounded).await, vec![1]);
    assert_eq!(b(Unbounded, Included(json!(35))).await, vec![2, 3]);
    assert_eq!(b(Unbounded, Unbounded).await, vec![2, 3, 6, 4, 7, 1]);
    assert_eq!(b(Included(json!(46)), Excluded(json!(59))).await, NONE);
    // String index.
    assert_eq!(
        ids(&t
            .between(Included(json!("c")), Excluded(json!("d")))
            .index("rank")
            .run()
            .await
            .unwrap()),
        vec![1, 4, 6, 2, 3, 7]
    );
    // between then order_by on the same index, descending.
    assert_eq!(
        ids(&t
            .between(Included(json!(35)), Included(json!(45)))
            .index("age")
            .order_by(Order::index("age").desc())
            .run()
            .await
            .unwrap()),
        vec![7, 4, 6, 3]
    );
    // On another index it is an error.
    assert!(matches!(
        t.between(Included(json!(35)), Included(json!(45)))
            .index("age")
            .order_by(Order::index("rank"))
            .run()
            .await,
        Err(Error::InvalidQuery(_))
    ));
}

#[tokio::test]
async fn order_by_an_index() {
    let db = db().await;
    let t = crew(&db).await;
    let o = |q: remodel::Query| async move { ids(&q.run().await.unwrap()) };
    // Rows lacking the field (5) are not in the index.
    assert_eq!(
        o(t.order_by(Order::index("age"))).await,
        vec![2, 3, 6, 4, 7, 1]
    );
    assert_eq!(
        o(t.order_by(Order::index("age").desc())).await,
        vec![1, 7, 4, 6, 3, 2]
    );
    assert_eq!(
        o(t.order_by(Order::index("age").desc().asc())).await,
        vec![2, 3, 6, 4, 7, 1]
    );
    assert_eq!(
        o(t.order_by(Order::index("age")).skip(2).limit(2)).await,
        vec![6, 4]
    );
    assert_eq!(
        o(t.order_by(Order::index("rank")).filter(field("age").gt(40))).await,
        vec![1, 4, 6, 7]
    );
    // The primary key as an index.
    assert_eq!(
        o(t.order_by(Order::index("id").desc())).await,
        vec![7, 6, 5, 4, 3, 2, 1]
    );
    // A multi index gives one row per element.
    assert_eq!(
        o(t.order_by(Order::index("tags"))).await,
        vec![4, 2, 3, 6, 7, 2, 1, 1, 4, 6]
    );
    assert_eq!(ids(&t.min_by_index("age").run().await.unwrap()), vec![2]);
    assert_eq!(ids(&t.max_by_index("age").run().await.unwrap()), vec![1]);
    // It must come first, and the error says so.
    assert!(matches!(
        t.filter(field("age").gt(1))
            .order_by(Order::index("age"))
            .run()
            .await,
        Err(Error::InvalidQuery(m)) if m.contains("first")
    ));
    assert!(matches!(
        t.get_all([1]).order_by(Order::index("age")).run().await,
        Err(Error::InvalidQuery(_))
    ));
    assert_eq!(
        t.order_by(Order::index("nope")).run().await,
        Err(Error::NoSuchIndex {
            table: "crew".into(),
            index: "nope".into()
        })
    );
}

#[tokio::test]
async fn one_index_orders_mixed_types() {
    let db = db().await;
    db.create_table("mixed").await.unwrap();
    let t = db.table("mixed");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    t.insert_many(vec![
        json!({"id": "a", "v": "str"}),
        json!({"id": "b", "v": {"k": 1}}),
        json!({"id": "c", "v": 42}),
        json!({"id": "d", "v": true}),
        json!({"id": "e", "v": [1, 2]}),
        json!({"id": "f", "v": null}),
        json!({"id": "g"}),
        json!({"id": "h", "v": false}),
        json!({"id": "i", "v": []}),
        json!({"id": "j", "v": -1.5}),
        json!({"id": "k", "v": ""}),
        json!({"id": "l", "v": {}}),
        json!({"id": "m", "v": [1, 2, 0]}),
        json!({"id": "n", "v": 42.0}),
    ])
    .await
    .unwrap();
    // arrays < booleans < numbers < objects < strings; null and missing are not indexed;
    // equal values (42 and 42.0) by primary key.
    let asc_order = vec!["i", "e", "m", "h", "d", "j", "c", "n", "l", "b", "k", "a"];
    assert_eq!(
        sids(&t.order_by(Order::index("v")).run().await.unwrap()),
        asc_order
    );
    let mut desc_order = asc_order.clone();
    desc_order.reverse();
    assert_eq!(
        sids(&t.order_by(Order::index("v").desc()).run().await.unwrap()),
        desc_order
    );
    assert_eq!(t.index_status().unwrap()[0].entries, 12);
    // Ranges cross types: from false up to (not including) the first object.
    assert_eq!(
        sids(
            &t.between(Included(json!(false)), Excluded(json!({})))
                .index("v")
                .run()
                .await
                .unwrap()
        ),
        vec!["h", "d", "j", "c", "n"]
    );
    assert_eq!(
        sids(&t.get_all([42]).index("v").run().await.unwrap()),
        vec!["c", "n"]
    );
    assert_eq!(
        sids(&t.get_all([json!([1, 2])]).index("v").run().await.unwrap()),
        vec!["e"]
    );
    // A field sort sees null (between booleans and numbers) and puts the missing field last.
    assert_eq!(
        sids(&t.order_by(asc("v")).run().await.unwrap()),
        vec!["i", "e", "m", "h", "d", "f", "j", "c", "n", "l", "b", "k", "a", "g"]
    );
    assert_eq!(t.query().min("v").await.unwrap().unwrap()["id"], "i");
    assert_eq!(t.query().max("v").await.unwrap().unwrap()["id"], "a");
}

#[tokio::test]
async fn compound_indexes() {
    let db = db().await;
    let t = crew(&db).await;
    let by_key = |key: Value| {
        let t = t.clone();
        async move { ids(&t.get_all([key]).index("ship_rank").run().await.unwrap()) }
    };
    let in_range = |lo: std::ops::Bound<Value>, hi: std::ops::Bound<Value>| {
        let t = t.clone();
        async move { ids(&t.between(lo, hi).index("ship_rank").run().await.unwrap()) }
    };
    assert_eq!(by_key(json!(["enterprise", "commander"])).await, vec![2, 3]);
    assert_eq!(by_key(json!(["enterprise"])).await, NONE);
    // Every value that starts with a prefix: strings sort last of all types, so every
    // ["enterprise", ..] lies below ["enterprise\0"].
    assert_eq!(
        in_range(
            Included(json!(["enterprise"])),
            Excluded(json!(["enterprise\u{0}"]))
        )
        .await,
        vec![1, 2, 3]
    );
    // A prefix array bounds the range of every value that starts with it.
    assert_eq!(
        in_range(
            Included(json!(["defiant"])),
            Excluded(json!(["enterprise"]))
        )
        .await,
        vec![4, 7, 5]
    );
    assert_eq!(
        in_range(
            Included(json!(["enterprise", "captain"])),
            Included(json!(["enterprise", "commander"]))
        )
        .await,
        vec![1, 2, 3]
    );
    assert_eq!(
        in_range(Excluded(json!(["defiant", "captain"])), Unbounded).await,
        vec![7, 5, 1, 2, 3, 6]
    );
    assert_eq!(
        ids(&t.order_by(Order::index("ship_rank")).run().await.unwrap()),
        vec![4, 7, 5, 1, 2, 3, 6]
    );
    // A document missing one of the fields is not in a compound index.
    t.insert(json!({"id": 8, "ship": "enterprise"}))
        .await
        .unwrap();
    assert_eq!(
        t.order_by(Order::index("ship_rank")).count().await.unwrap(),
        7
    );
}

#[tokio::test]
async fn multi_indexes() {
    let db = db().await;
    let t = crew(&db).await;
    assert_eq!(
        ids(&t.get_all(["tea"]).index("tags").run().await.unwrap()),
        vec![1, 4, 6]
    );
    // A row is returned once per key it matches (6 has both).
    assert_eq!(
        ids(&t
            .get_all(["tea", "coffee"])
            .index("tags")
            .run()
            .await
            .unwrap()),
        vec![1, 4, 6, 6]
    );
    assert_eq!(
        ids(&t
            .get_all(["opera", "tea"])
            .index("tags")
            .run()
            .await
            .unwrap()),
        vec![7, 1, 4, 6]
    );
    assert_eq!(
        ids(&t
            .between(Included(json!("c")), Excluded(json!("d")))
            .index("tags")
            .run()
            .await
            .unwrap()),
        vec![2, 3, 6]
    );
    // A repeated element is one entry; a scalar is one entry; updates move entries.
    t.insert(json!({"id": 8, "tags": ["tea", "tea", null, "rum"]}))
        .await
        .unwrap();
    t.insert(json!({"id": 9, "tags": "tea"})).await.unwrap();
    assert_eq!(
        ids(&t.get_all(["tea"]).index("tags").run().await.unwrap()),
        vec![1, 4, 6, 8, 9]
    );
    t.get(1).update(json!({"tags": ["rum"]})).await.unwrap();
    assert_eq!(
        ids(&t.get_all(["tea"]).index("tags").run().await.unwrap()),
        vec![4, 6, 8, 9]
    );
    assert_eq!(
        ids(&t.get_all(["rum"]).index("tags").run().await.unwrap()),
        vec![1, 8]
    );
    t.get(8).delete().await.unwrap();
    assert_eq!(
        ids(&t.get_all(["rum"]).index("tags").run().await.unwrap()),
        vec![1]
    );
    let status = t.index_status().unwrap();
    let tags = status.iter().find(|s| s.name == "tags").unwrap();
    // 1:rum 2:poetry,cats 3:chocolate 4:baseball,tea 6:coffee,tea 7:opera 9:tea
    assert_eq!(tags.entries, 10);
}

#[tokio::test]
async fn indexes_are_backfilled_listed_and_reported() {
    let db = db().await;
    let t = crew(&db).await; // every index was created after the documents
    assert_eq!(
        statuses(&t),
        vec![
            ("age".into(), IndexSpec::field("age"), true, 6),
            ("rank".into(), IndexSpec::field("rank"), true, 7),
            ("tags".into(), IndexSpec::multi("tags"), true, 10),
            (
                "ship_rank".into(),
                IndexSpec::compound(["ship", "rank"]),
                true,
                7
            ),
            ("city".into(), IndexSpec::field("home.city"), true, 2),
        ]
    );
    assert_eq!(
        t.index_names().unwrap(),
        vec!["age", "rank", "tags", "ship_rank", "city"]
    );
    // Writes after the backfill are indexed.
    t.insert(json!({"id": 8, "age": 20, "home": {"city": "Paris"}}))
        .await
        .unwrap();
    assert_eq!(
        ids(&t
            .order_by(Order::index("age"))
            .limit(2)
            .run()
            .await
            .unwrap()),
        vec![8, 2]
    );
    assert_eq!(
        ids(&t.order_by(Order::index("city")).run().await.unwrap()),
        vec![1, 4, 8]
    );
    // Updates move entries, a null value or a delete removes them.
    t.get(2).update(json!({"rank": "captain"})).await.unwrap();
    t.get(1).delete().await.unwrap();
    t.get(3).update(json!({"rank": null})).await.unwrap();
    assert_eq!(
        ids(&t.get_all(["captain"]).index("rank").run().await.unwrap()),
        vec![2, 4, 6]
    );
    assert_eq!(
        ids(&t.get_all(["commander"]).index("rank").run().await.unwrap()),
        vec![7]
    );
    assert_eq!(
        t.index_status()
            .unwrap()
            .iter()
            .find(|s| s.name == "rank")
            .unwrap()
            .entries,
        5
    );
    // Creating an index that exists, or one named like the primary key, is an error.
    assert_eq!(
        t.create_index("age", IndexSpec::field("other")).await,
        Err(Error::IndexExists {
            table: "crew".into(),
            index: "age".into()
        })
    );
    assert_eq!(
        t.create_index("id", IndexSpec::field("id")).await,
        Err(Error::IndexExists {
            table: "crew".into(),
            index: "id".into()
        })
    );
    assert!(matches!(
        t.create_index("bad-name", IndexSpec::field("x")).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        t.create_index("bad_path", IndexSpec::field("a..b")).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        t.create_index("empty", IndexSpec::compound(Vec::<String>::new()))
            .await,
        Err(Error::InvalidIndexSpec(_))
    ));
    assert_eq!(t.index_names().unwrap().len(), 5);
}

#[tokio::test]
async fn an_index_built_while_writes_go_on_has_every_row() {
    let db = soft_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.insert_many((0..5_000).map(|i| json!({"id": i, "m": i % 7})))
        .await
        .unwrap();
    // Writes keep going while the index is built.
    let writer = tokio::spawn({
        let t = t.clone();
        async move {
            for i in 5_000..5_500 {
                t.insert(json!({"id": i, "m": i % 7})).await.unwrap();
            }
        }
    });
    t.create_index("m", IndexSpec::field("m")).await.unwrap();
    writer.await.unwrap();
    for m in 0..7 {
        let by_index = t.get_all([m]).index("m").count().await.unwrap();
        let by_scan = t.filter(field("m").eq(m)).count().await.unwrap();
        assert_eq!(by_index, by_scan);
    }
    assert_eq!(t.index_status().unwrap()[0].entries, 5_500);
}

#[tokio::test]
async fn ensure_and_drop_index() {
    let db = db().await;
    let t = crew(&db).await;
    // ensure is idempotent for the same spec, an error for another one.
    assert_eq!(
        t.ensure_index("name", IndexSpec::field("name")).await,
        Ok(true)
    );
    assert_eq!(
        t.ensure_index("name", IndexSpec::field("name")).await,
        Ok(false)
    );
    assert_eq!(
        t.ensure_index("age", IndexSpec::field("age")).await,
        Ok(false)
    );
    assert_eq!(
        t.ensure_index("name", IndexSpec::multi("name")).await,
        Err(Error::IndexExists {
            table: "crew".into(),
            index: "name".into()
        })
    );
    assert_eq!(
        t.index_names().unwrap(),
        vec!["age", "rank", "tags", "ship_rank", "city", "name"]
    );
    assert_eq!(
        ids(&t
            .order_by(Order::index("name"))
            .limit(2)
            .run()
            .await
            .unwrap()),
        vec![2, 6]
    );

    // Dropped, every use of it is NoSuchIndex.
    t.drop_index("age").await.unwrap();
    let gone = Error::NoSuchIndex {
        table: "crew".into(),
        index: "age".into(),
    };
    assert_eq!(t.get_all([45]).index("age").run().await, Err(gone.clone()));
    assert_eq!(
        t.between(Included(json!(1)), Unbounded)
            .index("age")
            .run()
            .await,
        Err(gone.clone())
    );
    assert_eq!(
        t.order_by(Order::index("age")).run().await,
        Err(gone.clone())
    );
    assert_eq!(
        t.order_by(Order::index("age")).count().await,
        Err(gone.clone())
    );
    assert_eq!(t.drop_index("age").await, Err(gone.clone()));
    assert_eq!(
        t.index_names().unwrap(),
        vec!["rank", "tags", "ship_rank", "city", "name"]
    );
    // The documents are untouched, writes go on, and the name can be used again.
    assert_eq!(contents(&t).await, crew_docs());
    t.insert(json!({"id": 8, "age": 1})).await.unwrap();
    assert_eq!(
        t.ensure_index("age", IndexSpec::field("age")).await,
        Ok(true)
    );
    assert_eq!(
        ids(&t
            .order_by(Order::index("age"))
            .limit(2)
            .run()
            .await
            .unwrap()),
        vec![8, 2]
    );
}

// ---- aggregates & joins ----

#[tokio::test]
async fn count_sum_avg_min_max() {
    let db = db().await;
    let t = crew(&db).await;
    assert_eq!(t.count().await.unwrap(), 7);
    assert_eq!(t.query().count().await.unwrap(), 7);
    assert_eq!(
        t.filter(field("rank").eq("captain")).count().await.unwrap(),
        3
    );
    assert_eq!(t.get_all([1, 1, 9]).count().await.unwrap(), 2);
    assert_eq!(t.get_all(["tea"]).index("tags").count().await.unwrap(), 3);
    // Rows without the field are skipped.
    assert_eq!(t.query().sum("age").await.unwrap(), 255.0);
    assert_eq!(t.query().avg("age").await.unwrap(), Some(42.5));
    assert_eq!(
        t.filter(field("ship").eq("defiant"))
            .avg("age")
            .await
            .unwrap(),
        Some(45.0)
    );
    assert_eq!(t.query().sum("nope").await.unwrap(), 0.0);
    assert_eq!(t.query().avg("nope").await.unwrap(), None);
    // No rows at all: the average is None too.
    assert_eq!(
        t.filter(field("id").gt(100)).avg("age").await.unwrap(),
        None
    );
    assert_eq!(
        t.query().min("age").await.unwrap(),
        Some(crew_docs()[1].clone())
    );
    assert_eq!(
        t.query().max("age").await.unwrap(),
        Some(crew_docs()[0].clone())
    );
    // Ties keep the first row read.
    assert_eq!(
        t.filter(field("age").eq(45)).max("age").await.unwrap(),
        Some(crew_docs()[3].clone())
    );
    assert_eq!(t.query().max("name").await.unwrap().unwrap()["id"], 7);
    assert_eq!(t.query().min("nope").await.unwrap(), None);
    assert_eq!(
        t.query().min("home.planet").await.unwrap().unwrap()["id"],
        1
    );
    // Summing something that is not a number is an invalid query that says so.
    assert!(matches!(
        t.query().sum("name").await,
        Err(Error::InvalidQuery(m)) if m.contains("not a number")
    ));
    assert!(matches!(
        t.query().avg("tags").await,
        Err(Error::InvalidQuery(_))
    ));
}

#[tokio::test]
async fn group_by_field_and_index() {
    let db = db().await;
    let t = crew(&db).await;
    assert_eq!(
        groups(t.query().group("rank").count().await.unwrap()),
        vec![
            (json!("captain"), json!(3)),
            (json!("commander"), json!(3)),
            (json!("major"), json!(1)),
        ]
    );
    assert_eq!(
        groups(t.query().group("rank").sum("age").await.unwrap()),
        vec![
            (json!("captain"), json!(145.0)),
            (json!("commander"), json!(110.0)),
            (json!("major"), json!(0.0)),
        ]
    );
    assert_eq!(
        groups(t.query().group("ship").avg("age").await.unwrap()),
        vec![
            (json!("defiant"), json!(45.0)),
            (json!("enterprise"), json!(124.0 / 3.0)),
            (json!("voyager"), json!(41.0)),
        ]
    );
    assert_eq!(
        groups(t.query().group("rank").avg("age").await.unwrap())[2],
        (json!("major"), Value::Null)
    );
    // Rows without the field form the group null (ordered before strings).
    assert_eq!(
        groups(t.query().group("home.planet").count().await.unwrap()),
        vec![
            (Value::Null, json!(4)),
            (json!("earth"), json!(2)),
            (json!("omicron theta"), json!(1)),
        ]
    );
    // min / max give the row.
    assert_eq!(
        groups(t.query().group("ship").max("age").await.unwrap()),
        vec![
            (json!("defiant"), crew_docs()[3].clone()),
            (json!("enterprise"), crew_docs()[0].clone()),
            (json!("voyager"), crew_docs()[5].clone()),
        ]
    );
    // After a filter.
    assert_eq!(
        groups(
            t.filter(field("age").gt(40))
                .group("ship")
                .count()
                .await
                .unwrap()
        ),
        vec![
            (json!("defiant"), json!(2)),
            (json!("enterprise"), json!(1)),
            (json!("voyager"), json!(1)),
        ]
    );
    // A multi index puts a row in one group per element; rows with no element are in none.
    assert_eq!(
        groups(t.query().group_by_index("tags").count().await.unwrap()),
        vec![
            (json!("baseball"), json!(1)),
            (json!("cats"), json!(1)),
            (json!("chocolate"), json!(1)),
            (json!("coffee"), json!(1)),
            (json!("opera"), json!(1)),
            (json!("poetry"), json!(1)),
            (json!("shakespeare"), json!(1)),
            (json!("tea"), json!(3)),
        ]
    );
    assert_eq!(
        groups(t.query().group_by_index("tags").sum("age").await.unwrap())[7],
        (json!("tea"), json!(145.0))
    );
    assert_eq!(
        groups(t.query().group_by_index("ship_rank").count().await.unwrap()),
        vec![
            (json!(["defiant", "captain"]), json!(1)),
            (json!(["defiant", "commander"]), json!(1)),
            (json!(["defiant", "major"]), json!(1)),
            (json!(["enterprise", "captain"]), json!(1)),
            (json!(["enterprise", "commander"]), json!(2)),
            (json!(["voyager", "captain"]), json!(1)),
        ]
    );
    assert_eq!(
        t.query().group_by_index("nope").count().await,
        Err(Error::NoSuchIndex {
            table: "crew".into(),
            index: "nope".into()
        })
    );
}

#[tokio::test]
async fn group_by_a_multi_index_counts_numerically_equal_elements_once() {
    // A multi index has one entry per distinct element, in the total order where 1 == 1.0;
    // grouping by it must put the row in group 1 once, as the index itself does.
    let db = db().await;
    db.create_table("m").await.unwrap();
    let t = db.table("m");
    t.create_index("xs", IndexSpec::multi("xs")).await.unwrap();
    t.insert_many(vec![
        json!({"id": "a", "xs": [1, 1.0, 2]}),
        json!({"id": "b", "xs": [1]}),
    ])
    .await
    .unwrap();
    assert_eq!(t.index_status().unwrap()[0].entries, 3);
    assert_eq!(
        sids(&t.get_all([1]).index("xs").run().await.unwrap()),
        vec!["a", "b"]
    );
    assert_eq!(
        groups(t.query().group_by_index("xs").count().await.unwrap()),
        vec![(json!(1), json!(2)), (json!(2), json!(1))]
    );
}

#[tokio::test]
async fn eq_join_and_zip() {
    let db = db().await;
    let crew = crew(&db).await;
    db.create_table("ships").await.unwrap();
    let ships = db.table("ships");
    ships
        .insert_many(vec![
            json!({"id": "enterprise", "class": "galaxy", "captain": 1}),
            json!({"id": "defiant", "class": "defiant", "captain": 4}),
            json!({"id": "stargazer", "class": "constellation", "captain": 1}),
        ])
        .await
        .unwrap();
    ships
        .create_index("captain", IndexSpec::field("captain"))
        .await
        .unwrap();

    // On the other table's primary key: rows without a match (voyager) are dropped.
    let joined = crew
        .filter(field("rank").eq("captain").or(field("id").eq(5)))
        .eq_join("ship", "ships")
        .run()
        .await
        .unwrap();
    assert_eq!(
        joined,
        vec![
            json!({"left": crew_docs()[0], "right": {"id": "enterprise", "class": "galaxy", "captain": 1}}),
            json!({"left": crew_docs()[3], "right": {"id": "defiant", "class": "defiant", "captain": 4}}),
            json!({"left": crew_docs()[4], "right": {"id": "defiant", "class": "defiant", "captain": 4}}),
        ]
    );
    // On a secondary index of the other table: one row per match.
    let joined = crew
        .query()
        .eq_join("id", "ships")
        .index("captain")
        .run()
        .await
        .unwrap();
    assert_eq!(
        joined
            .iter()
            .map(|j| (j["left"]["id"].clone(), j["right"]["id"].clone()))
            .collect::<Vec<_>>(),
        vec![
            (json!(1), json!("enterprise")),
            (json!(1), json!("stargazer")),
            (json!(4), json!("defiant")),
        ]
    );
    // zip merges the right row into the left one (the right one's fields win).
    let zipped = crew
        .get_all([1])
        .eq_join("ship", "ships")
        .zip()
        .await
        .unwrap();
    assert_eq!(
        zipped,
        vec![
            json!({"id": "enterprise", "name": "Picard", "rank": "captain", "age": 59,
                    "ship": "enterprise", "tags": ["tea", "shakespeare"],
                    "home": {"planet": "earth", "city": "La Barre"},
                    "class": "galaxy", "captain": 1})
        ]
    );
    let zipped = crew
        .get_all([4])
        .eq_join("id", "ships")
        .index("captain")
        .zip()
        .await
        .unwrap();
    assert_eq!(zipped.len(), 1);
    assert_eq!(zipped[0]["id"], "defiant");
    assert_eq!(zipped[0]["name"], "Sisko");
    assert_eq!(zipped[0]["class"], "defiant");
    // Errors: missing table or index.
    assert_eq!(
        crew.query().eq_join("ship", "nope").run().await,
        Err(Error::NoSuchTable("nope".into()))
    );
    assert_eq!(
        crew.query()
            .eq_join("id", "ships")
            .index("nope")
            .run()
            .await,
        Err(Error::NoSuchIndex {
            table: "ships".into(),
            index: "nope".into()
        })
    );
}

// ---- batches ----

#[tokio::test]
async fn a_batch_over_several_tables_commits_all_or_nothing() {
    let db = db().await;
    crew(&db).await;
    db.create_table("ships").await.unwrap();
    db.table("ships")
        .insert(json!({"id": "enterprise", "crew": 3}))
        .await
        .unwrap();
    let mut crew_feed = db.table("crew").changes().await.unwrap();
    let mut ship_feed = db.table("ships").changes().await.unwrap();

    // Moving Data to a new ship: three writes in two tables, one commit.
    let r = db
        .batch()
        .insert("ships", json!({"id": "sutherland", "crew": 1}))
        .update(
            "ships",
            "enterprise",
            Patch::with(|s| Ok(json!({"crew": s["crew"].as_i64().unwrap() - 1}))),
        )
        .update("crew", 2, json!({"ship": "sutherland"}))
        .delete("crew", 99) // missing: skipped, not a failure
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!((r.inserted, r.replaced, r.skipped, r.errors), (1, 2, 1, 0));
    assert_eq!(r.changes.len(), 3);
    assert_eq!(
        db.table("ships").get("enterprise").await.unwrap().unwrap()["crew"],
        2
    );
    assert_eq!(
        db.table("crew").get(2).await.unwrap().unwrap()["ship"],
        "sutherland"
    );

    // One failing write (a key conflict) and nothing is written at all.
    let failed = db
        .batch()
        .delete("ships", "enterprise")
        .update("crew", 1, json!({"ship": "none"}))
        .insert("crew", json!({"id": 3, "name": "duplicate"}))
        .await;
    assert_eq!(
        failed,
        Err(Error::KeyConflict {
            table: "crew".into(),
            key: json!(3)
        })
    );
    assert!(db.table("ships").get("enterprise").await.unwrap().is_some());
    assert_eq!(
        db.table("crew").get(1).await.unwrap().unwrap()["ship"],
        "enterprise"
    );

    // Bad input is refused before anything is written.
    assert!(matches!(
        db.batch()
            .insert("ships", json!({"id": "x"}))
            .insert("nope", json!({}))
            .await,
        Err(Error::NoSuchTable(_))
    ));
    assert!(matches!(
        db.batch()
            .insert("ships", json!({"id": "y"}))
            .insert("ships", json!(1))
            .await,
        Err(Error::InvalidDocument { .. })
    ));
    assert!(db.table("ships").get("x").await.unwrap().is_none());

    // Feeds saw the committed batch, in commit order, and nothing of the failed one.
    let crew_items: Vec<Change> = std::iter::from_fn(|| {
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut crew_feed)).flatten()
    })
    .map(|c| c.unwrap())
    .collect();
    let ship_items: Vec<Change> = std::iter::from_fn(|| {
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut ship_feed)).flatten()
    })
    .map(|c| c.unwrap())
    .collect();
    assert_eq!(crew_items.len(), 1);
    assert_eq!(ship_items.len(), 2);
    // One commit: one position for every item, ordered inside it across tables.
    let places: Vec<(u64, u32)> = ship_items
        .iter()
        .chain(&crew_items)
        .map(|c| (c.seq().unwrap(), c.position_in_commit().unwrap()))
        .collect();
    assert!(
        places.iter().all(|p| p.0 == places[0].0),
        "one commit position: {places:?}"
    );
    let mut inside: Vec<u32> = places.iter().map(|p| p.1).collect();
    inside.sort_unstable();
    assert_eq!(inside, [0, 1, 2], "one commit order across tables: {places:?}");
}

#[tokio::test]
async fn batches_select_under_the_commit_lock_for_cascades_and_checks() {
    let db = db().await;
    let crew = crew(&db).await;
    db.create_table("ships").await.unwrap();
    db.table("ships")
        .insert_many(vec![
            json!({"id": "enterprise"}),
            json!({"id": "defiant"}),
            json!({"id": "voyager"}),
        ])
        .await
        .unwrap();
    crew.create_index("ship", IndexSpec::field("ship"))
        .await
        .unwrap();
    let aboard = |ship: &str| crew.get_all([ship]).index("ship");

    // restrict: refused while a crew is aboard, and nothing is written.
    let refused = db
        .batch()
        .require_empty(&aboard("defiant"), "the defiant still has a crew")
        .delete("ships", "defiant")
        .await;
    assert_eq!(
        refused,
        Err(Error::Precondition("the defiant still has a crew".into()))
    );
    assert!(db.table("ships").get("defiant").await.unwrap().is_some());

    // nullify: the crew loses its ship, in the same commit as the ship's deletion.
    let r = db
        .batch()
        .update_where(&aboard("defiant"), json!({"ship": null}))
        .delete("ships", "defiant")
        .await
        .unwrap();
    assert_eq!((r.replaced, r.deleted), (3, 1));
    assert_eq!(
        crew.filter(field("ship").eq(Value::Null))
            .count()
            .await
            .unwrap(),
        3
    );
    assert!(db.table("ships").get("defiant").await.unwrap().is_none());

    // cascade: the crew goes with the ship.
    let r = db
        .batch()
        .delete_where(&aboard("enterprise"))
        .delete("ships", "enterprise")
        .await
        .unwrap();
    assert_eq!(r.deleted, 4);
    assert_eq!(ids(&crew.run().await.unwrap()), vec![4, 5, 6, 7]);

    // An empty selection is fine (a batch over the read-only `stats` table is refused: see
    // `stats_rows_are_queryable_and_read_only`).
    let r = db
        .batch()
        .require_empty(&aboard("enterprise"), "gone")
        .delete("ships", "voyager")
        .await
        .unwrap();
    assert_eq!(r.deleted, 1);
    assert_eq!(db.table("ships").count().await.unwrap(), 0);
}

// ---- durability & persistence ----

#[tokio::test]
async fn hard_and_soft_durability() {
    let db = Database::temporary().await.unwrap(); // hard by default
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.insert(json!({"id": 1})).await.unwrap();
    t.insert(json!({"id": 2}))
        .durability(Durability::Soft)
        .await
        .unwrap();
    t.get(1)
        .update(json!({"a": 1}))
        .durability(Durability::Hard)
        .await
        .unwrap();
    db.sync().await.unwrap();
    assert_eq!(t.count().await.unwrap(), 2);
}

#[tokio::test]
async fn data_and_indexes_survive_a_reopen() {
    let dir = TempDir::new("reopen");
    let notes = vec![
        json!({"id": 1, "text": "alpha", "tags": ["x", "y"], "meta": {"n": 1}}),
        json!({"id": 2, "text": "beta", "tags": ["y"]}),
        json!({"id": 3, "text": "gamma"}),
    ];
    {
        let db = Database::open(dir.path()).await.unwrap();
        db.create_table("notes").await.unwrap();
        db.create_table_with_key("users", "email").await.unwrap();
        let t = db.table("notes");
        t.create_index("tags", IndexSpec::multi("tags"))
            .await
            .unwrap();
        t.insert_many(notes.clone()).await.unwrap();
        t.create_index("text", IndexSpec::field("text"))
            .await
            .unwrap();
        db.table("users")
            .insert(json!({"email": "a@b", "name": "A"}))
            .await
            .unwrap();
        // A table dropped before closing stays dropped.
        db.create_table("gone").await.unwrap();
        db.drop_table("gone").await.unwrap();
    }
    {
        let db = Database::open(dir.path()).await.unwrap();
        assert_eq!(db.table_names().unwrap(), vec!["notes", "users"]);
        let t = db.table("notes");
        assert_eq!(t.run().await.unwrap(), notes);
        assert_eq!(
            statuses(&t),
            vec![
                ("tags".into(), IndexSpec::multi("tags"), true, 3),
                ("text".into(), IndexSpec::field("text"), true, 3),
            ]
        );
        assert_eq!(
            ids(&t.get_all(["y"]).index("tags").run().await.unwrap()),
            vec![1, 2]
        );
        assert_eq!(
            ids(&t.order_by(Order::index("text").desc()).run().await.unwrap()),
            vec![3, 2, 1]
        );
        let users = db.table("users");
        assert_eq!(users.primary_key().unwrap(), "email");
        assert_eq!(
            users.get("a@b").await.unwrap(),
            Some(json!({"email": "a@b", "name": "A"}))
        );
        // Write again; that survives too.
        t.get(3).update(json!({"tags": ["z"]})).await.unwrap();
        t.get(1).delete().await.unwrap();
    }
    {
        let db = Database::open(dir.path()).await.unwrap();
        let t = db.table("notes");
        assert_eq!(ids(&t.run().await.unwrap()), vec![2, 3]);
        assert_eq!(
            ids(&t
                .get_all(["z", "y", "x"])
                .index("tags")
                .run()
                .await
                .unwrap()),
            vec![3, 2]
        );
        assert_eq!(t.index_status().unwrap()[0].entries, 2);
    }
}

#[tokio::test]
async fn opening_an_open_path_shares_the_handle() {
    let dir = TempDir::new("shared");
    let first = Database::open(dir.path()).await.unwrap();
    first.create_table("t").await.unwrap();
    // The same path, and the same folder spelled differently.
    let second = Database::open(dir.path()).await.unwrap();
    let third = Database::open(dir.path().join(".")).await.unwrap();
    assert_eq!(second.table_names().unwrap(), vec!["t"]);
    second
        .table("t")
        .insert(json!({"id": 1, "by": "second"}))
        .await
        .unwrap();
    assert_eq!(
        first.table("t").get(1).await.unwrap(),
        Some(json!({"id": 1, "by": "second"}))
    );
    third.create_table("u").await.unwrap();
    assert_eq!(first.table_names().unwrap(), vec!["t", "u"]);
    third
        .table("t")
        .insert(json!({"id": 2, "by": "third"}))
        .await
        .unwrap();
    assert_eq!(second.table("t").count().await.unwrap(), 2);
    // Dropping some handles leaves the others working.
    drop(first);
    drop(third);
    assert_eq!(second.table("t").count().await.unwrap(), 2);
    second.table("t").insert(json!({"id": 3})).await.unwrap();
    drop(second);
    // All closed: it opens again with everything.
    let again = Database::open(dir.path()).await.unwrap();
    assert_eq!(ids(&again.table("t").run().await.unwrap()), vec![1, 2, 3]);
    assert_eq!(again.table_names().unwrap(), vec!["t", "u"]);
    // `close` closes the shared database: every handle to it is then `Closed`.
    let other = Database::open(dir.path()).await.unwrap();
    again.close().await.unwrap();
    assert_eq!(other.table("t").count().await, Err(Error::Closed));
    assert_eq!(again.table("t").get(1).await, Err(Error::Closed));
    drop((again, other));
    // And what it held is there after a reopen.
    let reopened = Database::open(dir.path()).await.unwrap();
    assert_eq!(
        ids(&reopened.table("t").run().await.unwrap()),
        vec![1, 2, 3]
    );
}

/// Reopening a path right after its last handle was dropped works every time, also while
/// another database of the process is busy (its writes share sled's I/O threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_right_after_the_last_handle_is_dropped_always_works() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let other = db().await;
            other.create_table("n").await.unwrap();
            let n = other.table("n");
            n.create_index("b", IndexSpec::field("b")).await.unwrap();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let docs = (0..3000).map(|k| json!({"id": round * 3000 + k, "b": k % 10}));
                n.insert_many(docs).await.unwrap();
                n.order_by(Order::index("b")).count().await.unwrap();
                round += 1;
            }
        })
    };
    let dir = TempDir::new("cycle");
    // Every open that fails is recorded, then retried (the lock is released moments later)
    // so that the cycle goes on.
    let mut failures = Vec::new();
    let mut open = async |what: String| loop {
        match Database::open(dir.path()).await {
            Ok(db) => break db,
            Err(e) => {
                assert!(failures.len() < 1000, "{e}");
                failures.push(format!("{what}: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    };
    for round in 0..100 {
        {
            let db = open(format!("round {round}, first open")).await;
            let t = db.table("t");
            db.ensure_table("t").await.unwrap();
            t.ensure_index("x", IndexSpec::multi("x")).await.unwrap();
            t.insert(json!({"id": round})).await.unwrap();
            t.get(round).update(json!({"x": [1, round]})).await.unwrap();
            t.get(round - 1).delete().await.unwrap();
        }
        let db = open(format!("round {round}, reopen")).await;
        assert_eq!(ids(&db.table("t").run().await.unwrap()), vec![round]);
        assert_eq!(
            ids(&db.table("t").get_all([1]).index("x").run().await.unwrap()),
            vec![round]
        );
    }
    stop.store(true, Ordering::Relaxed);
    busy.await.unwrap();
    assert_eq!(failures, Vec::<String>::new());
}

// ---- stats ----

#[tokio::test]
async fn stats_rows_are_queryable_and_read_only() {
    let db = db().await;
    db.create_table("a").await.unwrap();
    db.create_table("b").await.unwrap();
    let a = db.table("a");
    a.insert_many(vec![json!({"id": 1}), json!({"id": 2}), json!({"id": 3})])
        .await
        .unwrap();
    db.table("b").insert(json!({"id": 1})).await.unwrap();
    assert!(a.get(2).await.unwrap().is_some()); // 1 read
    assert_eq!(a.run().await.unwrap().len(), 3); // 3 reads

    let rows = db.stats().run().await.unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        for rate in ["reads_per_sec", "writes_per_sec"] {
            assert!(row[rate].as_f64().is_some_and(|r| r >= 0.0), "{row}");
        }
    }
    // `flushes_total` counts the fsyncs hard writes waited for: the two hard writes above ran
    // one after the other, so each waited for its own.
    assert_eq!(
        db.stats()
            .without(["reads_per_sec", "writes_per_sec"])
            .run()
            .await
            .unwrap(),
        vec![
            json!({"id": ["database"], "type": "database", "reads_total": 4, "writes_total": 4,
                   "flushes_total": 2, "tables": 2, "feeds": 0}),
            json!({"id": ["table", "a"], "type": "table", "table": "a", "reads_total": 4,
                   "writes_total": 3, "feeds": 0}),
            json!({"id": ["table", "b"], "type": "table", "table": "b", "reads_total": 0,
                   "writes_total": 1, "feeds": 0}),
        ]
    );
    // Queried like a table.
    assert_eq!(
        db.stats()
            .filter(field("type").eq("table"))
            .pluck(["table", "writes_total"])
            .run()
            .await
            .unwrap(),
        vec![
            json!({"table": "a", "writes_total": 3}),
            json!({"table": "b", "writes_total": 1}),
        ]
    );
    assert_eq!(
        db.stats()
            .filter(field("writes_total").gt(1))
            .order_by(desc("writes_total"))
            .pluck(["id"])
            .run()
            .await
            .unwrap(),
        vec![json!({"id": ["database"]}), json!({"id": ["table", "a"]})]
    );
    assert_eq!(db.stats().count().await.unwrap(), 3);
    assert_eq!(
        db.stats()
            .filter(field("table").eq("b"))
            .first()
            .await
            .unwrap()
            .unwrap()["writes_total"],
        1
    );
    // A new table gets a row; a dropped one loses it.
    db.create_table("c").await.unwrap();
    db.drop_table("b").await.unwrap();
    assert_eq!(
        db.stats()
            .filter(field("type").eq("table"))
            .pluck(["table"])
            .run()
            .await
            .unwrap(),
        vec![json!({"table": "a"}), json!({"table": "c"})]
    );

    // Writes are rejected, and the error says why.
    assert!(matches!(
        db.stats().update(json!({"x": 1})).await,
        Err(Error::InvalidQuery(m)) if m.contains("read-only")
    ));
    assert!(matches!(
        db.stats().delete().await,
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        db.stats()
            .filter(field("type").eq("table"))
            .update(Patch::with(|_| Ok(json!({"x": 1}))))
            .await,
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        db.batch().delete_where(&db.stats()).await,
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        db.batch().update_where(&db.stats(), json!({"x": 1})).await,
        Err(Error::InvalidQuery(_))
    ));
    assert_eq!(db.stats().count().await.unwrap(), 3);
    assert_eq!(
        db.stats().filter(has_fields(["x"])).count().await.unwrap(),
        0
    );
}

// ---- laziness ----

#[tokio::test]
async fn results_stream_lazily() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("n", IndexSpec::field("n")).await.unwrap();
    t.insert_many((0..20_000).map(|i| json!({"id": i, "n": i})))
        .await
        .unwrap();
    let reads = || async {
        db.stats()
            .filter(field("type").eq("table"))
            .run()
            .await
            .unwrap()[0]["reads_total"]
            .as_u64()
            .unwrap()
    };
    let before = reads().await;
    let first: Vec<Value> = t
        .query()
        .iter()
        .unwrap()
        .take(5)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids(&first), vec![0, 1, 2, 3, 4]);
    let top = t
        .order_by(Order::index("n").desc())
        .limit(3)
        .run()
        .await
        .unwrap();
    assert_eq!(ids(&top), vec![19_999, 19_998, 19_997]);
    // 5 + 3 documents read, not 40,000: nothing was loaded that was not asked for.
    assert!(
        reads().await - before <= 10,
        "read {} documents",
        reads().await - before
    );
}
