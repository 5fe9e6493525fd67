//! Point feeds (`get(k).changes()`): inserts, updates and deletes of one key, no-ops skipped;
//! the initial item of a missing key; transforms (`pluck`, `filter`, `without`), which start
//! like a plain `get`.

use crate::common::feeds::{db_with, drain, drain_changes, pair, pairs};
use futures::StreamExt;
use remodel::{json, Change, Value};

#[tokio::test]
async fn point_feed_reports_insert_update_delete_and_skips_no_ops() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut feed = t.get(1).changes().await.unwrap();
    t.insert(json!({"id": 2, "v": 0})).await.unwrap(); // another key: nothing
    t.insert(json!({"id": 1, "v": 1})).await.unwrap();
    t.get(1).update(json!({"v": 2})).await.unwrap();
    t.get(1).update(json!({"v": 2})).await.unwrap(); // no-op
    t.get(1).delete().await.unwrap();
    assert_eq!(
        pairs(&mut feed),
        vec![
            (Value::Null, json!({"id": 1, "v": 1})),
            (json!({"id": 1, "v": 1}), json!({"id": 1, "v": 2})),
            (json!({"id": 1, "v": 2}), Value::Null),
        ]
    );
}

#[tokio::test]
async fn point_feed_initial_on_missing_key_and_states() {
    let db = db_with("t").await;
    let mut feed = db
        .table("t")
        .get("nobody")
        .changes()
        .include_initial(true)
        .include_states(true)
        .include_types(true)
        .await
        .unwrap();
    let items: Vec<Value> = drain(&mut feed)
        .into_iter()
        .map(|c| c.unwrap().to_json())
        .collect();
    assert_eq!(
        items,
        vec![
            json!({"state": "initializing", "type": "state"}),
            json!({"new_val": null, "type": "initial"}),
            json!({"state": "ready", "type": "state"}),
        ]
    );
    let mut plain = db
        .table("t")
        .get("x")
        .changes()
        .include_states(true)
        .await
        .unwrap();
    let first = plain.next().await.unwrap().unwrap();
    assert_eq!(first.to_json(), json!({"state": "ready"}));
}

/// Issue 6, defect 7: point feeds take transforms; a missing key gives one `null` initial item
/// for a point feed and none for `get_all`.
#[tokio::test]
async fn point_feeds_take_transforms_and_initial_nulls_are_exact() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut plain = t.get(1).changes().include_initial(true).await.unwrap();
    let mut plucked = t
        .get(1)
        .pluck(["v"])
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    let mut filtered = t
        .get(1)
        .filter(remodel::field("v").gt(1))
        .without(["w"])
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    let mut all = t
        .get_all([1])
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    for f in [&mut plain, &mut plucked, &mut filtered] {
        let items = drain_changes(f);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].new_val(), None);
    }
    assert!(
        drain_changes(&mut all).is_empty(),
        "get_all: no initial item"
    );
    t.insert(json!({"id": 1, "v": 1, "w": 0})).await.unwrap();
    t.get(1).update(json!({"v": 2})).await.unwrap();
    let p: Vec<_> = drain_changes(&mut plucked).iter().map(pair).collect();
    assert_eq!(
        p,
        vec![
            (Value::Null, json!({"v": 1})),
            (json!({"v": 1}), json!({"v": 2}))
        ]
    );
    let f: Vec<_> = drain_changes(&mut filtered).iter().map(pair).collect();
    assert_eq!(f, vec![(Value::Null, json!({"id": 1, "v": 2}))]);
    // A point query with a transform reads like one.
    assert_eq!(
        t.get(1).pluck(["v"]).run().await.unwrap(),
        Some(json!({"v": 2}))
    );
    assert_eq!(t.get(2).pluck(["v"]).run().await.unwrap(), None);
}

/// Issue 16, item 15: `get(k)` with a transform (`pluck`, `filter`, `without`) gives, for a
/// missing row, the same initial item as plain `get(k)` (`{new_val: null}`, RethinkDB's), with
/// every option; a row its filter rejects reads as missing. (This already held when issue 16
/// was checked: the test pins it down for every combination.)
#[tokio::test]
async fn point_feeds_with_transforms_start_like_plain_get() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.insert(json!({"id": 2, "v": 0})).await.unwrap();
    type Build = fn(remodel::Changes) -> remodel::Changes;
    let options: [(&str, Build); 5] = [
        ("initial", |c| c.include_initial(true)),
        ("states", |c| c.include_initial(true).include_states(true)),
        ("types", |c| c.include_initial(true).include_types(true)),
        ("squash", |c| c.include_initial(true).squash(true)),
        ("window", |c| c.include_initial(true).squash_window(0.05)),
    ];
    for (how, build) in options {
        let shown = |items: Vec<Change>| items.iter().map(Change::to_json).collect::<Vec<_>>();
        let mut plain = build(t.get(1).changes()).await.unwrap();
        let want = shown(drain_changes(&mut plain));
        assert!(
            want.contains(&json!({"new_val": null}))
                || want.contains(&json!({"new_val": null, "type": "initial"})),
            "{how}: {want:?}"
        );
        let point = |k: i32| t.get(k);
        for (name, c) in [
            ("pluck", point(1).pluck(["v"]).changes()),
            ("without", point(1).without(["v"]).changes()),
            (
                "filter",
                point(1).filter(remodel::field("v").gt(1)).changes(),
            ),
            (
                "filter, without",
                point(1)
                    .filter(remodel::field("v").gt(1))
                    .without(["v"])
                    .changes(),
            ),
            (
                "filtered out",
                point(2).filter(remodel::field("v").gt(1)).changes(),
            ),
        ] {
            let mut feed = build(c).await.unwrap();
            assert_eq!(shown(drain_changes(&mut feed)), want, "{name}, {how}");
        }
    }
}
