//! Tables and their keys: created, ensured, listed and dropped; names and keys of every
//! allowed type and the typed errors of the others; and the read-only `stats` system table.

use crate::common::crew::contents;
use crate::common::db;
use remodel::{desc, field, has_fields, json, Error, IndexSpec, Order, Patch, WriteResult};

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
    // On PostgreSQL, one more row: the replica's replication (`id: ["postgres"]`).
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| r["type"] != "postgres")
        .collect();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        for rate in ["reads_per_sec", "writes_per_sec"] {
            assert!(row[rate].as_f64().is_some_and(|r| r >= 0.0), "{row}");
        }
    }
    // `flushes_total` counts the fsyncs hard writes waited for: the two hard writes above ran
    // one after the other, so each waited for its own.
    // (On PostgreSQL, durability is the server's: this process flushes nothing.)
    let pg = remodel::postgres::suites_on_postgres();
    assert_eq!(
        db.stats()
            .filter(field("type").ne("postgres"))
            .without(["reads_per_sec", "writes_per_sec"])
            .run()
            .await
            .unwrap(),
        vec![
            json!({"id": ["database"], "type": "database", "reads_total": 4, "writes_total": 4,
                   "flushes_total": if pg { 0 } else { 2 }, "tables": 2, "feeds": 0,
                   "feed_groups": 0}),
            json!({"id": ["table", "a"], "type": "table", "table": "a", "reads_total": 4,
                   "writes_total": 3, "feeds": 0, "feed_groups": 0}),
            json!({"id": ["table", "b"], "type": "table", "table": "b", "reads_total": 0,
                   "writes_total": 1, "feeds": 0, "feed_groups": 0}),
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
    assert_eq!(db.stats().count().await.unwrap(), if pg { 4 } else { 3 });
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
    assert_eq!(db.stats().count().await.unwrap(), if pg { 4 } else { 3 });
    assert_eq!(
        db.stats().filter(has_fields(["x"])).count().await.unwrap(),
        0
    );
}

/// A schema change whose caller stops waiting (a dropped future: a request cancelled, a
/// timeout) is done whole or not at all: a dropped table's feeds end, an index gets built
/// and is ready (on the embedded store the change has started once polled, and is done;
/// on PostgreSQL it may not have reached the server). Cancelled half-way, the DDL lock was
/// free while its work went on: feeds on a dropped table were left open forever, an index
/// stayed not ready (a review found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_whose_caller_stops_waiting_are_done_whole() {
    use futures::StreamExt;
    use std::time::Duration;
    let db = db().await;
    db.create_table("gone").await.unwrap();
    db.create_table("kept").await.unwrap();
    let rows: Vec<_> = (0..2000).map(|i| json!({"id": i, "n": i % 7})).collect();
    db.table("kept").insert_many(rows).await.unwrap();
    let mut feed = db.table("gone").changes().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_micros(1), db.drop_table("gone")).await;
    let _ = tokio::time::timeout(
        Duration::from_micros(1),
        db.table("kept").create_index("n", IndexSpec::field("n")),
    )
    .await;
    // Whatever was started settles.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if db.table_names().unwrap().contains(&"gone".to_string()) {
        // Not done at all: the feed goes on, and a drop now ends it.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), feed.next())
                .await
                .is_err()
        );
        db.drop_table("gone").await.unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("the dropped table's feed ends");
    assert!(
        matches!(ended, Some(Err(Error::FeedAborted(_)))),
        "{ended:?}"
    );
    assert_eq!(db.table_names().unwrap(), vec!["kept"]);
    let status = || {
        let all = db.table("kept").index_status().unwrap();
        all.into_iter().find(|s| s.name == "n").map(|s| s.ready)
    };
    if status().is_none() {
        db.table("kept")
            .create_index("n", IndexSpec::field("n"))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status() != Some(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "the index is never ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let three = db
        .table("kept")
        .get_all([3])
        .index("n")
        .count()
        .await
        .unwrap();
    assert_eq!(three, (0..2000).filter(|i| i % 7 == 3).count() as u64);
}
