//! The store's public API: tables, documents, reads, aggregates, joins and writes, with the
//! edge cases (missing fields, mixed types, ties, bounds, conflicts, no-ops, bad input).

use remodel::{
    asc, desc, field, has_fields, json, Change, Config, Conflict, Database, Durability, Error,
    IndexSpec, Order, Patch, Predicate, Value,
};
use std::ops::Bound::{Excluded, Included, Unbounded};

async fn db() -> Database {
    Config::temporary()
        .durability(Durability::Soft)
        .open()
        .await
        .unwrap()
}

async fn crew() -> Database {
    let db = db().await;
    db.create_table("crew").await.unwrap();
    let t = db.table("crew");
    t.insert_many(vec![
        json!({"id": 1, "name": "Picard", "rank": "captain", "age": 59, "ship": "enterprise", "tags": ["tea", "shakespeare"], "home": {"planet": "earth", "city": "La Barre"}}),
        json!({"id": 2, "name": "Data", "rank": "commander", "age": 30, "ship": "enterprise", "tags": ["poetry", "cats"], "home": {"planet": "omicron theta"}}),
        json!({"id": 3, "name": "Troi", "rank": "commander", "age": 35, "ship": "enterprise", "tags": ["chocolate"]}),
        json!({"id": 4, "name": "Sisko", "rank": "captain", "age": 45, "ship": "defiant", "tags": ["baseball", "cooking"], "home": {"planet": "earth", "city": "New Orleans"}}),
        json!({"id": 5, "name": "Kira", "rank": "major", "ship": "defiant", "tags": []}),
        json!({"id": 6, "name": "Janeway", "rank": "captain", "age": 41, "ship": "voyager", "tags": ["coffee", "tea"]}),
    ])
    .await
    .unwrap()
    .check()
    .unwrap();
    db
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

// ---- tables ----

#[tokio::test]
async fn tables_are_created_listed_and_dropped() {
    let db = db().await;
    db.create_table("b").await.unwrap();
    db.create_table("a").await.unwrap();
    assert_eq!(db.table_names().unwrap(), vec!["a", "b"]);
    assert_eq!(
        db.create_table("a").await,
        Err(Error::TableExists("a".into()))
    );
    assert!(!db.ensure_table("a").await.unwrap());
    assert!(db.ensure_table("c").await.unwrap());
    // A handle outlives its table: after a drop it reports the missing table, and after a
    // re-create it sees the new, empty one.
    let b = db.table("b");
    b.insert(json!({"id": 1})).await.unwrap();
    db.drop_table("b").await.unwrap();
    assert_eq!(db.table_names().unwrap(), vec!["a", "c"]);
    assert_eq!(b.get(1).await, Err(Error::NoSuchTable("b".into())));
    db.create_table("b").await.unwrap();
    assert_eq!(b.get(1).await, Ok(None));
    db.drop_table("b").await.unwrap();
    assert_eq!(
        db.drop_table("b").await,
        Err(Error::NoSuchTable("b".into()))
    );
    for bad in ["bad-name", "", "a b", "é", &"x".repeat(65)] {
        assert!(
            matches!(db.create_table(bad).await, Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn unknown_tables_and_indexes_are_typed_errors() {
    let db = db().await;
    let t = db.table("nope");
    assert_eq!(t.get(1).await, Err(Error::NoSuchTable("nope".into())));
    assert_eq!(
        t.insert(json!({"id": 1})).await,
        Err(Error::NoSuchTable("nope".into()))
    );
    assert_eq!(t.run().await, Err(Error::NoSuchTable("nope".into())));
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
async fn custom_primary_keys() {
    let db = db().await;
    db.create_table_with_key("users", "email").await.unwrap();
    let t = db.table("users");
    t.insert(json!({"email": "kim@voyager", "name": "Harry"}))
        .await
        .unwrap();
    assert_eq!(
        t.get("kim@voyager").await.unwrap().unwrap()["name"],
        "Harry"
    );
    assert_eq!(t.primary_key().unwrap(), "email");
    // Without its key the document gets a generated one.
    let r = t.insert(json!({"name": "Tom"})).await.unwrap();
    let key = r.generated_keys[0].clone();
    assert_eq!(t.get(key.clone()).await.unwrap().unwrap()["email"], key);
    assert!(matches!(
        db.create_table_with_key("x", "a.b").await,
        Err(Error::InvalidName { .. })
    ));
}

// ---- documents and keys ----

#[tokio::test]
async fn documents_keep_every_field_and_get_generated_keys() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let doc = json!({"nested": {"deep": {"list": [1, {"x": null}], "s": "é"}}, "n": 1.5});
    let r = t.insert(doc.clone()).await.unwrap();
    assert_eq!(r.inserted, 1);
    assert_eq!(r.generated_keys.len(), 1);
    let id = r.generated_keys[0].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID");
    let mut expected = doc;
    expected["id"] = json!(id);
    assert_eq!(t.get(id.as_str()).await.unwrap(), Some(expected));
    assert_eq!(t.get("missing").await.unwrap(), None);
}

#[tokio::test]
async fn keys_of_every_allowed_type_work_and_bad_keys_are_rejected() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    for k in [
        json!("s"),
        json!(1),
        json!(1.5),
        json!(true),
        json!([1, "a", [false]]),
        json!(u64::MAX),
    ] {
        t.insert(json!({"id": k.clone(), "v": 1}))
            .await
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(t.get(k.clone()).await.unwrap().unwrap()["id"], k);
    }
    // 1 and 1.0 are the same key.
    assert!(t.get(1.0).await.unwrap().is_some());
    let before = t.count().await.unwrap();
    for (bad, reason) in [
        (json!({"id": null}), "null"),
        (json!({"id": {"a": 1}}), "object"),
        (json!({"id": [1, null]}), "null"),
        (json!({"id": "k".repeat(2_000)}), "limit"),
    ] {
        match t.insert(bad).await {
            Err(Error::InvalidKey { reason: r, .. }) => assert!(r.contains(reason), "{r}"),
            other => panic!("expected InvalidKey, got {other:?}"),
        }
    }
    for bad in [json!([1, 2]), json!("doc"), json!(3), json!(null)] {
        assert!(matches!(
            t.insert(bad).await,
            Err(Error::InvalidDocument { .. })
        ));
    }
    // A batch with one bad document writes nothing.
    let r = t.insert_many(vec![json!({"id": "fine"}), json!(7)]).await;
    assert!(matches!(r, Err(Error::InvalidDocument { reason }) if reason.contains("#1")));
    assert_eq!(t.get("fine").await.unwrap(), None);
    assert_eq!(t.count().await.unwrap(), before);
    assert!(matches!(
        t.get(json!(null)).await,
        Err(Error::InvalidKey { .. })
    ));
}

// ---- reads ----

#[tokio::test]
async fn get_all_and_between_on_the_primary_key() {
    let db = crew().await;
    let t = db.table("crew");
    assert_eq!(ids(&t.get_all([3, 1, 99]).run().await.unwrap()), vec![3, 1]);
    assert_eq!(ids(&t.get_all([2, 2]).run().await.unwrap()), vec![2, 2]);
    assert_eq!(
        ids(&t
            .between(Included(json!(2)), Excluded(json!(4)))
            .run()
            .await
            .unwrap()),
        vec![2, 3]
    );
    assert_eq!(
        ids(&t
            .between(Excluded(json!(2)), Included(json!(4)))
            .run()
            .await
            .unwrap()),
        vec![3, 4]
    );
    assert_eq!(
        ids(&t
            .between(Unbounded, Excluded(json!(3)))
            .run()
            .await
            .unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        ids(&t
            .between(Included(json!(5)), Unbounded)
            .run()
            .await
            .unwrap()),
        vec![5, 6]
    );
    assert!(t
        .between(Included(json!(4)), Excluded(json!(4)))
        .run()
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn secondary_indexes_simple_nested_compound_multi() {
    let db = crew().await;
    let t = db.table("crew");
    t.create_index("rank", IndexSpec::field("rank"))
        .await
        .unwrap();
    t.create_index("planet", IndexSpec::field("home.planet"))
        .await
        .unwrap();
    t.create_index("ship_rank", IndexSpec::compound(["ship", "rank"]))
        .await
        .unwrap();
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    t.create_index("age", IndexSpec::field("age"))
        .await
        .unwrap();

    assert_eq!(
        ids(&t.get_all(["captain"]).index("rank").run().await.unwrap()),
        vec![1, 4, 6]
    );
    assert_eq!(
        ids(&t.get_all(["earth"]).index("planet").run().await.unwrap()),
        vec![1, 4]
    );
    assert_eq!(
        ids(&t
            .get_all([json!(["enterprise", "commander"])])
            .index("ship_rank")
            .run()
            .await
            .unwrap()),
        vec![2, 3]
    );
    assert_eq!(
        ids(&t.get_all(["tea"]).index("tags").run().await.unwrap()),
        vec![1, 6]
    );
    // A row is returned once per matching key.
    assert_eq!(
        ids(&t
            .get_all(["tea", "coffee"])
            .index("tags")
            .run()
            .await
            .unwrap()),
        vec![1, 6, 6]
    );
    // between on a compound index: every enterprise crew member. Strings sort last of all
    // types, so every ["enterprise", ..] lies below ["enterprise\0"].
    let enterprise = t
        .between(
            Included(json!(["enterprise"])),
            Excluded(json!(["enterprise\u{0}"])),
        )
        .index("ship_rank")
        .run()
        .await
        .unwrap();
    assert_eq!(ids(&enterprise), vec![1, 2, 3]);
    // Kira has no age: absent from the index.
    assert_eq!(
        ids(&t
            .between(Unbounded, Unbounded)
            .index("age")
            .run()
            .await
            .unwrap()),
        vec![2, 3, 6, 4, 1]
    );
    assert_eq!(
        ids(&t
            .between(Included(json!(35)), Included(json!(45)))
            .index("age")
            .run()
            .await
            .unwrap()),
        vec![3, 6, 4]
    );
    let names = t.index_names().unwrap();
    assert_eq!(names, vec!["rank", "planet", "ship_rank", "tags", "age"]);
    let status = t.index_status().unwrap();
    assert!(status.iter().all(|s| s.ready));
    assert_eq!(status.iter().find(|s| s.name == "tags").unwrap().entries, 9);
}

#[tokio::test]
async fn indexes_follow_writes_and_can_be_dropped() {
    let db = crew().await;
    let t = db.table("crew");
    t.create_index("rank", IndexSpec::field("rank"))
        .await
        .unwrap();
    assert_eq!(
        t.create_index("rank", IndexSpec::field("rank")).await,
        Err(Error::IndexExists {
            table: "crew".into(),
            index: "rank".into()
        })
    );
    assert!(!t
        .ensure_index("rank", IndexSpec::field("rank"))
        .await
        .unwrap());
    assert!(matches!(
        t.ensure_index("rank", IndexSpec::field("other")).await,
        Err(Error::IndexExists { .. })
    ));
    t.get(2).update(json!({"rank": "captain"})).await.unwrap();
    t.get(1).delete().await.unwrap();
    t.get(3).update(json!({"rank": null})).await.unwrap();
    assert_eq!(
        ids(&t.get_all(["captain"]).index("rank").run().await.unwrap()),
        vec![2, 4, 6]
    );
    assert!(t
        .get_all(["commander"])
        .index("rank")
        .run()
        .await
        .unwrap()
        .is_empty());
    t.drop_index("rank").await.unwrap();
    assert!(matches!(
        t.get_all(["captain"]).index("rank").run().await,
        Err(Error::NoSuchIndex { .. })
    ));
    assert!(matches!(
        t.drop_index("rank").await,
        Err(Error::NoSuchIndex { .. })
    ));
    assert!(matches!(
        t.create_index("bad name", IndexSpec::field("x")).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        t.create_index("c", IndexSpec::compound(Vec::<String>::new()))
            .await,
        Err(Error::InvalidIndexSpec(_))
    ));
}

#[tokio::test]
async fn mixed_types_in_one_index_follow_the_total_order() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    t.insert_many(vec![
        json!({"id": "string", "v": "abc"}),
        json!({"id": "object", "v": {"a": 1}}),
        json!({"id": "number", "v": -2.5}),
        json!({"id": "bool", "v": true}),
        json!({"id": "array", "v": [1, 2]}),
        json!({"id": "false", "v": false}),
        json!({"id": "null", "v": null}),
        json!({"id": "missing"}),
        json!({"id": "big", "v": 10}),
    ])
    .await
    .unwrap();
    let order: Vec<String> = t
        .order_by(Order::index("v"))
        .run()
        .await
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        order,
        vec!["array", "false", "bool", "number", "big", "object", "string"]
    );
    let reversed: Vec<String> = t
        .order_by(Order::index("v").desc())
        .run()
        .await
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reversed, order.iter().rev().cloned().collect::<Vec<_>>());
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
async fn filters_with_every_predicate() {
    let db = crew().await;
    let t = db.table("crew");
    let q = |p: Predicate| {
        let t = t.clone();
        async move { ids(&t.filter(p).run().await.unwrap()) }
    };
    assert_eq!(q(field("rank").eq("captain")).await, vec![1, 4, 6]);
    assert_eq!(q(field("rank").ne("captain")).await, vec![2, 3, 5]);
    assert_eq!(q(field("age").lt(35)).await, vec![2]);
    assert_eq!(q(field("age").le(35)).await, vec![2, 3]);
    assert_eq!(q(field("age").gt(45)).await, vec![1]);
    assert_eq!(q(field("age").ge(45)).await, vec![1, 4]);
    assert_eq!(q(field("tags").contains("tea")).await, vec![1, 6]);
    assert_eq!(q(has_fields(["home.city"])).await, vec![1, 4]);
    assert_eq!(q(field("name").starts_with("J")).await, vec![6]);
    assert_eq!(q(field("name").matches("^[DT]")).await, vec![2, 3]);
    assert_eq!(
        q(field("home.planet").eq("earth").and(field("age").lt(50))).await,
        vec![4]
    );
    assert_eq!(
        q(field("ship").eq("voyager").or(field("rank").eq("major"))).await,
        vec![5, 6]
    );
    assert_eq!(q(!field("ship").eq("enterprise")).await, vec![4, 5, 6]);
    // A missing field is false, never an error: Kira has no age.
    assert_eq!(q(field("age").lt(1000)).await, vec![1, 2, 3, 4, 6]);
    assert_eq!(q(field("age").ne(30)).await, vec![1, 3, 4, 6]);
    assert_eq!(q(field("nothing.here").eq(1)).await, Vec::<i64>::new());
    // Mixed types compare in the total order (numbers < strings).
    assert_eq!(q(field("age").lt("0")).await, vec![1, 2, 3, 4, 6]);
}

#[tokio::test]
async fn bad_predicates_are_typed_errors() {
    let db = crew().await;
    let t = db.table("crew");
    let from_json = |v: Value| serde_json::from_value::<Predicate>(v).unwrap();
    let bad = [
        from_json(json!({"op": "starts_with", "field": "name", "prefix": 5})),
        from_json(json!({"op": "matches", "field": "name", "pattern": true})),
        field("name").matches("("),
    ];
    for p in bad {
        assert!(matches!(
            t.filter(p).run().await,
            Err(Error::InvalidQuery(_))
        ));
    }
    assert!(matches!(
        t.filter(field("a..b").eq(1)).run().await,
        Err(Error::InvalidName { .. })
    ));
    assert!(serde_json::from_value::<Predicate>(json!({"op": "bogus"})).is_err());
    // The JSON form round-trips.
    let p = field("age").gt(3).and(!has_fields(["x"]));
    assert_eq!(from_json(serde_json::to_value(&p).unwrap()), p);
}

#[tokio::test]
async fn ordering_skip_limit_pluck_without() {
    let db = crew().await;
    let t = db.table("crew");
    // Rows without the field come last, both ways.
    assert_eq!(
        ids(&t.order_by(asc("age")).run().await.unwrap()),
        vec![2, 3, 6, 4, 1, 5]
    );
    assert_eq!(
        ids(&t.order_by(desc("age")).run().await.unwrap()),
        vec![1, 4, 6, 3, 2, 5]
    );
    assert_eq!(
        ids(&t.order_by(asc("age")).skip(1).limit(2).run().await.unwrap()),
        vec![3, 6]
    );
    assert_eq!(ids(&t.query().skip(4).run().await.unwrap()), vec![5, 6]);
    assert!(t.query().limit(0).run().await.unwrap().is_empty());
    assert_eq!(
        ids(&t
            .order_by(asc("id"))
            .skip(usize::MAX)
            .limit(usize::MAX)
            .run()
            .await
            .unwrap()),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(&t
            .order_by(asc("id"))
            .skip(5)
            .limit(usize::MAX)
            .run()
            .await
            .unwrap()),
        vec![6]
    );
    let plucked = t
        .get_all([1])
        .pluck(["name", "home.city"])
        .run()
        .await
        .unwrap();
    assert_eq!(
        plucked,
        vec![json!({"name": "Picard", "home": {"city": "La Barre"}})]
    );
    let without = t
        .get_all([4])
        .without(["tags", "home.city", "age"])
        .run()
        .await
        .unwrap();
    assert_eq!(
        without,
        vec![
            json!({"id": 4, "name": "Sisko", "rank": "captain", "ship": "defiant", "home": {"planet": "earth"}})
        ]
    );
    assert_eq!(
        t.order_by(asc("name")).first().await.unwrap().unwrap()["name"],
        "Data"
    );
    // order_by(index) must come first.
    t.create_index("age", IndexSpec::field("age"))
        .await
        .unwrap();
    let misplaced = t
        .filter(field("age").gt(1))
        .order_by(Order::index("age"))
        .run()
        .await;
    assert!(matches!(misplaced, Err(Error::InvalidQuery(m)) if m.contains("first")));
    let stream: Vec<Value> = futures::StreamExt::collect::<Vec<_>>(t.query().stream())
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids(&stream), vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn aggregates() {
    let db = crew().await;
    let t = db.table("crew");
    assert_eq!(t.count().await.unwrap(), 6);
    assert_eq!(
        t.filter(field("rank").eq("captain")).count().await.unwrap(),
        3
    );
    assert_eq!(t.query().sum("age").await.unwrap(), 210.0);
    assert_eq!(t.query().avg("age").await.unwrap(), Some(42.0));
    assert_eq!(
        t.filter(field("id").gt(100)).avg("age").await.unwrap(),
        None
    );
    assert_eq!(t.query().min("age").await.unwrap().unwrap()["name"], "Data");
    assert_eq!(
        t.query().max("age").await.unwrap().unwrap()["name"],
        "Picard"
    );
    assert!(
        matches!(t.query().sum("name").await, Err(Error::InvalidQuery(m)) if m.contains("not a number"))
    );
    let by_rank = t.query().group("rank").count().await.unwrap();
    let pairs: Vec<(Value, Value)> = by_rank
        .into_iter()
        .map(|g| (g.group, g.reduction))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (json!("captain"), json!(3)),
            (json!("commander"), json!(2)),
            (json!("major"), json!(1))
        ]
    );
    let ages = t.query().group("ship").sum("age").await.unwrap();
    assert_eq!(
        ages.iter().map(|g| g.reduction.clone()).collect::<Vec<_>>(),
        vec![json!(45.0), json!(124.0), json!(41.0)]
    );
    let avg = t.query().group("ship").avg("age").await.unwrap();
    assert_eq!(avg[0].reduction, json!(45.0));
    let oldest = t.query().group("ship").max("age").await.unwrap();
    assert_eq!(oldest[1].reduction["name"], "Picard");
    // Rows without the field form the group null.
    let by_city = t.query().group("home.city").count().await.unwrap();
    assert_eq!(by_city[0].group, Value::Null);
    assert_eq!(by_city[0].reduction, json!(4));
    // Grouping by a multi index puts a row in one group per value.
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    let tags = t.query().group_by_index("tags").count().await.unwrap();
    let tea = tags.iter().find(|g| g.group == json!("tea")).unwrap();
    assert_eq!(tea.reduction, json!(2));
}

#[tokio::test]
async fn eq_join_on_primary_and_secondary_indexes() {
    let db = crew().await;
    db.create_table("ships").await.unwrap();
    let ships = db.table("ships");
    ships
        .insert_many(vec![
            json!({"id": "enterprise", "registry": "NCC-1701-D", "class": "galaxy"}),
            json!({"id": "defiant", "registry": "NX-74205", "class": "defiant"}),
        ])
        .await
        .unwrap();
    let crew = db.table("crew");
    let joined = crew
        .filter(field("rank").eq("captain"))
        .eq_join("ship", "ships")
        .run()
        .await
        .unwrap();
    assert_eq!(
        joined.len(),
        2,
        "Janeway's voyager is not in the table: inner join"
    );
    assert_eq!(joined[0]["left"]["name"], "Picard");
    assert_eq!(joined[0]["right"]["registry"], "NCC-1701-D");
    let zipped = crew
        .get_all([4])
        .eq_join("ship", "ships")
        .zip()
        .await
        .unwrap();
    assert_eq!(zipped[0]["registry"], "NX-74205");
    assert_eq!(zipped[0]["name"], "Sisko");
    // Through a secondary index of the other table.
    ships
        .create_index("class", IndexSpec::field("class"))
        .await
        .unwrap();
    db.create_table("orders").await.unwrap();
    db.table("orders")
        .insert(json!({"id": 1, "wants": "galaxy"}))
        .await
        .unwrap();
    let by_class = db
        .table("orders")
        .query()
        .eq_join("wants", "ships")
        .index("class")
        .run()
        .await
        .unwrap();
    assert_eq!(by_class[0]["right"]["id"], "enterprise");
}

// ---- writes ----

#[tokio::test]
async fn insert_conflicts() {
    let db = crew().await;
    let t = db.table("crew");
    let r = t
        .insert(json!({"id": 1, "name": "Impostor"}))
        .await
        .unwrap();
    assert_eq!((r.inserted, r.errors), (0, 1));
    assert_eq!(
        r.first_error,
        Some(Error::KeyConflict {
            table: "crew".into(),
            key: json!(1)
        })
    );
    assert!(r.clone().check().is_err());
    assert_eq!(t.get(1).await.unwrap().unwrap()["name"], "Picard");
    // Several documents: the others still go in.
    let r = t
        .insert_many(vec![json!({"id": 1}), json!({"id": 10})])
        .await
        .unwrap();
    assert_eq!((r.inserted, r.errors), (1, 1));
    let r = t
        .insert(json!({"id": 1, "name": "Locutus"}))
        .conflict(Conflict::Replace)
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r.replaced, 1);
    assert_eq!(
        r.changes[0].new_val,
        Some(json!({"id": 1, "name": "Locutus"}))
    );
    let r = t
        .insert(json!({"id": 1, "rank": "drone"}))
        .conflict(Conflict::Update)
        .await
        .unwrap();
    assert_eq!(r.replaced, 1);
    assert_eq!(
        t.get(1).await.unwrap().unwrap(),
        json!({"id": 1, "name": "Locutus", "rank": "drone"})
    );
    let r = t
        .insert(json!({"id": 1, "rank": "drone"}))
        .conflict(Conflict::Update)
        .await
        .unwrap();
    assert_eq!((r.replaced, r.unchanged), (0, 1));
}

#[tokio::test]
async fn updates_replaces_and_deletes_by_key() {
    let db = crew().await;
    let t = db.table("crew");
    let r = t
        .get(2)
        .update(
            json!({"rank": "lieutenant commander", "home": {"moon": "none"}, "tags": ["violin"]}),
        )
        .return_changes(true)
        .await
        .unwrap();
    assert_eq!(r.replaced, 1);
    let data = t.get(2).await.unwrap().unwrap();
    assert_eq!(
        data["home"],
        json!({"planet": "omicron theta", "moon": "none"}),
        "nested objects merge"
    );
    assert_eq!(data["tags"], json!(["violin"]), "arrays replace");
    assert_eq!(r.changes[0].old_val.as_ref().unwrap()["rank"], "commander");
    let r = t
        .get(2)
        .update(json!({"rank": "lieutenant commander"}))
        .await
        .unwrap();
    assert_eq!(
        (r.replaced, r.unchanged),
        (0, 1),
        "a no-op write is unchanged"
    );
    assert!(r.changes.is_empty());
    let r = t.get(99).update(json!({"x": 1})).await.unwrap();
    assert_eq!(r.skipped, 1);
    let r = t.get(2).update(json!({"id": 7})).await.unwrap();
    assert!(
        matches!(r.first_error, Some(Error::InvalidDocument { reason }) if reason.contains("primary key"))
    );
    assert!(matches!(
        t.get(2).update(json!([1])).await.unwrap().first_error,
        Some(Error::InvalidDocument { .. })
    ));
    let r = t.get(3).replace(json!({"name": "Deanna"})).await.unwrap();
    assert_eq!(r.replaced, 1);
    assert_eq!(
        t.get(3).await.unwrap().unwrap(),
        json!({"id": 3, "name": "Deanna"})
    );
    assert!(matches!(
        t.get(3).replace(json!({"id": 4})).await,
        Err(Error::InvalidDocument { .. })
    ));
    let r = t.get(3).delete().return_changes(true).await.unwrap();
    assert_eq!(r.deleted, 1);
    assert_eq!(r.changes[0].new_val, None);
    assert_eq!(t.get(3).delete().await.unwrap().skipped, 1);
}

#[tokio::test]
async fn updates_and_deletes_by_query() {
    let db = crew().await;
    let t = db.table("crew");
    let r = t
        .filter(field("ship").eq("enterprise"))
        .update(json!({"ship": "enterprise-e"}))
        .await
        .unwrap();
    assert_eq!(r.replaced, 3);
    assert_eq!(
        t.filter(field("ship").eq("enterprise-e"))
            .count()
            .await
            .unwrap(),
        3
    );
    let r = t
        .filter(field("rank").eq("captain"))
        .update(Patch::with(|d| {
            Ok(json!({"age": d["age"].as_i64().unwrap_or(0) + 1}))
        }))
        .await
        .unwrap();
    assert_eq!(r.replaced, 3);
    assert_eq!(t.get(6).await.unwrap().unwrap()["age"], 42);
    let r = t
        .filter(field("ship").eq("enterprise-e"))
        .update(json!({"ship": "enterprise-e"}))
        .await
        .unwrap();
    assert_eq!(r.unchanged, 3);
    let r = t
        .filter(field("rank").eq("captain"))
        .delete()
        .await
        .unwrap();
    assert_eq!(r.deleted, 3);
    assert_eq!(ids(&t.run().await.unwrap()), vec![2, 3, 5]);
    assert!(matches!(
        db.stats().delete().await,
        Err(Error::InvalidQuery(_))
    ));
}

#[tokio::test]
async fn large_batches() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("g", IndexSpec::field("g")).await.unwrap();
    let r = t
        .insert_many((0..10_000).map(|i| json!({"id": i, "g": i % 10})))
        .await
        .unwrap();
    assert_eq!(r.inserted, 10_000);
    assert_eq!(t.count().await.unwrap(), 10_000);
    assert_eq!(t.get_all([3]).index("g").count().await.unwrap(), 1_000);
    let r = t.filter(field("g").eq(3)).delete().await.unwrap();
    assert_eq!(r.deleted, 1_000);
    assert_eq!(
        t.between(Unbounded, Unbounded)
            .index("g")
            .count()
            .await
            .unwrap(),
        9_000
    );
}

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

#[tokio::test]
async fn an_index_built_on_existing_data_is_backfilled() {
    let db = db().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_writes_lose_no_update() {
    let db = db().await;
    db.create_table("counters").await.unwrap();
    let t = db.table("counters");
    t.insert_many((0..4).map(|i| json!({"id": i, "n": 0})))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let t = t.clone();
            tokio::spawn(async move {
                for j in 0..50 {
                    let bump = Patch::with(|d| Ok(json!({"n": d["n"].as_i64().unwrap() + 1})));
                    t.get((task + j) % 4)
                        .update(bump)
                        .await
                        .unwrap()
                        .check()
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(t.query().sum("n").await.unwrap(), 800.0);
    for i in 0..4 {
        assert_eq!(t.get(i).await.unwrap().unwrap()["n"], 200);
    }
}

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

// ---- stats ----

#[tokio::test]
async fn stats_table_is_queryable_and_read_only() {
    let db = crew().await;
    let t = db.table("crew");
    t.get(1).await.unwrap();
    let rows = db.stats().run().await.unwrap();
    assert_eq!(rows[0]["id"], json!(["database"]));
    assert_eq!(rows[1]["id"], json!(["table", "crew"]));
    assert_eq!(rows[1]["writes_total"], 6);
    assert!(rows[1]["reads_total"].as_u64().unwrap() >= 1);
    let tables = db
        .stats()
        .filter(field("type").eq("table"))
        .pluck(["table"])
        .run()
        .await
        .unwrap();
    assert_eq!(tables, vec![json!({"table": "crew"})]);
    assert!(
        matches!(db.stats().update(json!({"x": 1})).await, Err(Error::InvalidQuery(m)) if m.contains("read-only"))
    );
}

// ---- persistence ----

#[tokio::test]
async fn data_and_indexes_persist_and_one_path_shares_one_handle() {
    let dir = std::env::temp_dir().join(format!("remodel-persist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let db = Database::open(&dir).await.unwrap();
        db.create_table("t").await.unwrap();
        let t = db.table("t");
        t.create_index("v", IndexSpec::field("v")).await.unwrap();
        t.insert_many((0..100).map(|i| json!({"id": i, "v": i % 3})))
            .await
            .unwrap();
        // The same path again: the open handle is shared.
        let again = Database::open(&dir).await.unwrap();
        assert_eq!(again.table("t").count().await.unwrap(), 100);
        again
            .table("t")
            .insert(json!({"id": 100, "v": 0}))
            .await
            .unwrap();
        assert_eq!(t.count().await.unwrap(), 101);
        db.close().await.unwrap();
        assert_eq!(again.table("t").count().await, Err(Error::Closed));
    }
    let db = Database::open(&dir).await.unwrap();
    let t = db.table("t");
    assert_eq!(t.count().await.unwrap(), 101);
    assert_eq!(t.get_all([0]).index("v").count().await.unwrap(), 35);
    assert_eq!(t.index_names().unwrap(), vec!["v"]);
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- batches across tables ----

#[tokio::test]
async fn a_batch_over_several_tables_commits_all_or_nothing() {
    let db = crew().await;
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
    let seqs: Vec<u64> = ship_items
        .iter()
        .chain(&crew_items)
        .map(|c| c.seq().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "one commit order across tables: {seqs:?}"
    );
}

#[tokio::test]
async fn batches_select_under_the_commit_lock_for_cascades_and_checks() {
    let db = crew().await;
    db.create_table("ships").await.unwrap();
    db.table("ships")
        .insert_many(vec![
            json!({"id": "enterprise"}),
            json!({"id": "defiant"}),
            json!({"id": "voyager"}),
        ])
        .await
        .unwrap();
    let crew = db.table("crew");
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
    assert_eq!((r.replaced, r.deleted), (2, 1));
    assert_eq!(
        crew.filter(field("ship").eq(Value::Null))
            .count()
            .await
            .unwrap(),
        2
    );

    // cascade: the crew goes with the ship.
    let r = db
        .batch()
        .delete_where(&aboard("enterprise"))
        .delete("ships", "enterprise")
        .await
        .unwrap();
    assert_eq!(r.deleted, 4);
    assert_eq!(ids(&crew.run().await.unwrap()), vec![4, 5, 6]);

    // An empty selection is fine; a read-only table is not.
    db.batch()
        .require_empty(&aboard("enterprise"), "gone")
        .delete("ships", "voyager")
        .await
        .unwrap();
    assert!(matches!(
        db.batch().delete_where(&db.stats()).await,
        Err(Error::InvalidQuery(_))
    ));
}
