//! Reads: `get` and `get_all`, `between` on the primary key, filters with every predicate
//! (also in JSON form, on missing fields, with operands of the wrong type), `pluck` and
//! `without`, `first` and streams; results are read lazily, and an iterator over a table
//! that is dropped while it runs ends with one error.

use crate::common::crew::{contents, crew, crew_docs, ids, NONE};
use crate::common::db;
use futures::StreamExt;
use remodel::{desc, field, has_fields, json, Error, IndexSpec, Order, Predicate, Value};
use std::ops::Bound::{Excluded, Included, Unbounded};

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

/// Pins issue 8, defect 4 (an iterator over a dropped table yielded errors forever).
///
/// An iterator over a table (and one over an index) that is dropped while it runs ends with
/// one `NoSuchTable` error, whose message names the table, not tree bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iterator_over_a_dropped_table_ends_with_one_error() {
    let db = crate::common::open(remodel::Durability::Hard)
        .await
        .unwrap();
    db.create_table("gone").await.unwrap();
    let t = db.table("gone");
    t.create_index("n", IndexSpec::field("n")).await.unwrap();
    let docs: Vec<Value> = (0..5000).map(|i| json!({"id": i, "n": i})).collect();
    t.insert_many(docs).await.unwrap();
    let mut rows = t.query().iter().unwrap();
    let mut by_index = t.order_by(Order::index("n")).iter().unwrap();
    assert!(rows.next().unwrap().is_ok());
    assert!(by_index.next().unwrap().is_ok());
    db.drop_table("gone").await.unwrap();
    for it in [&mut rows as &mut dyn Iterator<Item = _>, &mut by_index] {
        let mut errors = Vec::new();
        let mut seen = 0;
        for item in (&mut *it).take(100_000) {
            seen += 1;
            if let Err(e) = item {
                errors.push(e);
            }
        }
        assert!(seen < 100_000, "the iterator never ended");
        assert!(
            errors.len() <= 1,
            "{} errors: {:?}",
            errors.len(),
            &errors[..2]
        );
        if let Some(e) = errors.first() {
            assert!(
                matches!(e, Error::NoSuchTable(name) if name == "gone"),
                "{e}"
            );
        }
        assert!(it.next().is_none());
    }
}

/// A long `get_all` by primary keys runs in place but gives the scheduler turns as it goes:
/// a timer of the same single-threaded runtime fires while it reads, not after.
#[tokio::test(flavor = "current_thread")]
async fn a_long_keyed_read_gives_the_scheduler_turns() {
    let db = db().await;
    db.create_table("t").await.unwrap();
    let docs: Vec<Value> = (0..20_000).map(|i| json!({"id": i, "n": i})).collect();
    db.table("t").insert_many(docs).await.unwrap();
    let keys: Vec<Value> = (0..20_000).map(|i| json!(i)).collect();
    let t = db.table("t");
    let reader = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut reads = 0;
        // Reads of every key again and again for 1.5 s: far longer than the timer.
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            assert_eq!(t.get_all(keys.clone()).run().await.unwrap().len(), 20_000);
            reads += 1;
        }
        reads
    });
    let started = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let late = started.elapsed();
    assert!(reader.await.unwrap() > 0);
    // One read of 20,000 keys takes several milliseconds: without turns inside it the
    // timer would wait for a whole read (and on a loop of reads that never awaits, forever).
    assert!(
        late < std::time::Duration::from_millis(500),
        "a 20 ms timer fired after {late:?}"
    );
}
