//! Documents and writes: schemaless documents, inserts with their conflict policies, updates
//! (merge, closure), replaces and deletes by key and by query, each with its exact counts,
//! and bad documents and keys refused with typed errors that change nothing.

use crate::common::crew::{contents, crew, crew_docs, ids, sids};
use crate::common::db;
use remodel::{
    desc, field, has_fields, json, ChangePair, Conflict, Error, IndexSpec, Order, Patch, Value,
    WriteResult,
};
use std::ops::Bound::{Excluded, Included, Unbounded};

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
