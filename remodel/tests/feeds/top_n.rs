//! Top-N feeds (`order_by(index).limit(n)`) with offsets, as the README's leaderboard applies
//! them: ascending and descending, ties broken by primary key, sets that shrink, on the
//! primary key and within a range; a member updated in place, a batch or a commit touching
//! several members is one step, refilled from its own state.

use crate::common::feeds::{db_with, drain, drain_changes, pair, pairs, scores_table};
use remodel::{json, Change, Database, Feed, IndexSpec, Order, Value};
use std::ops::Bound;

fn offsets(feed: &mut Feed) -> Vec<Value> {
    drain(feed)
        .into_iter()
        .map(|c| {
            let c = c.unwrap();
            json!([
                c.old_val().map(|v| v["id"].clone()),
                c.new_val().map(|v| v["id"].clone()),
                c.old_offset(),
                c.new_offset()
            ])
        })
        .collect()
}

#[tokio::test]
async fn top_n_feed_descending_with_offsets() {
    let db = scores_table().await;
    let t = db.table("scores");
    let mut top = t
        .order_by(Order::index("points").desc())
        .limit(2)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .await
        .unwrap();
    // Initial rows best first, with their offsets.
    assert_eq!(
        offsets(&mut top),
        vec![json!([null, "d", null, 0]), json!([null, "c", null, 1])]
    );
    // A write outside the set emits nothing.
    t.get("a").update(json!({"points": 11})).await.unwrap();
    assert!(drain(&mut top).is_empty());
    // A row entering a full set evicts the last one.
    t.insert(json!({"id": "e", "points": 35})).await.unwrap();
    assert_eq!(offsets(&mut top), vec![json!(["c", "e", 1, 1])]);
    // An update of a row that stays (and moves).
    t.get("e").update(json!({"points": 50})).await.unwrap();
    assert_eq!(offsets(&mut top), vec![json!(["e", "e", 1, 0])]);
    // A row leaving is paired with the row that replaces it from the index.
    t.get("e").delete().await.unwrap();
    assert_eq!(offsets(&mut top), vec![json!(["e", "c", 0, 1])]);
    // A row moving past the boundary is replaced too.
    t.get("d").update(json!({"points": 1})).await.unwrap();
    assert_eq!(offsets(&mut top), vec![json!(["d", "b", 0, 1])]);
}

#[tokio::test]
async fn top_n_ties_are_broken_by_primary_key_and_empty_sets_shrink() {
    let db = db_with("s").await;
    let t = db.table("s");
    t.create_index("p", IndexSpec::field("p")).await.unwrap();
    t.insert_many(vec![json!({"id": "y", "p": 1}), json!({"id": "x", "p": 1})])
        .await
        .unwrap();
    // A live min (order_by(index).limit(1)): the tie goes to the smaller key.
    let mut min = t
        .min_by_index("p")
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    assert_eq!(
        pairs(&mut min),
        vec![(Value::Null, json!({"id": "x", "p": 1}))]
    );
    t.get("x").delete().await.unwrap();
    assert_eq!(
        pairs(&mut min),
        vec![(json!({"id": "x", "p": 1}), json!({"id": "y", "p": 1}))]
    );
    t.get("y").delete().await.unwrap();
    assert_eq!(
        pairs(&mut min),
        vec![(json!({"id": "y", "p": 1}), Value::Null)]
    );
    t.insert(json!({"id": "z", "p": 9})).await.unwrap();
    assert_eq!(
        pairs(&mut min),
        vec![(Value::Null, json!({"id": "z", "p": 9}))]
    );
}

#[tokio::test]
async fn top_n_on_the_primary_key_and_within_a_range() {
    let db = scores_table().await;
    let t = db.table("scores");
    // The two largest ids.
    let mut by_id = t
        .order_by(Order::index("id").desc())
        .limit(2)
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    assert_eq!(
        offsets(&mut by_id),
        vec![
            json!([null, "d", null, null]),
            json!([null, "c", null, null])
        ]
    );
    // The two lowest scores from 15 up (between + order_by on the same index).
    let mut ranged = t
        .between(Bound::Included(json!(15)), Bound::Unbounded)
        .index("points")
        .order_by(Order::index("points"))
        .limit(2)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .await
        .unwrap();
    assert_eq!(
        offsets(&mut ranged),
        vec![json!([null, "b", null, 0]), json!([null, "c", null, 1])]
    );
    t.insert(json!({"id": "e", "points": 12})).await.unwrap(); // below the range: nothing
    t.insert(json!({"id": "f", "points": 16})).await.unwrap(); // enters, evicts c
    t.insert(json!({"id": "z", "points": 1})).await.unwrap(); // enters the id feed only
    assert_eq!(offsets(&mut ranged), vec![json!(["c", "f", 1, 0])]);
    // Each new largest id evicts the last of the two.
    assert_eq!(
        offsets(&mut by_id),
        vec![
            json!(["c", "e", null, null]),
            json!(["d", "f", null, null]),
            json!(["e", "z", null, null])
        ]
    );
    t.get("b").delete().await.unwrap(); // leaves; c comes back from the index
    assert_eq!(offsets(&mut ranged), vec![json!(["b", "c", 1, 1])]);
}

/// Applies offset items to a list the way the README's leaderboard does.
fn apply(list: &mut Vec<Value>, items: &[Change]) {
    for c in items {
        if let Some(i) = c.old_offset() {
            list.remove(i);
        }
        if let (Some(i), Some(v)) = (c.new_offset(), c.new_val()) {
            list.insert(i, v.clone());
        }
    }
}

async fn top(db: &Database, n: usize, desc: bool) -> Vec<Value> {
    let order = if desc {
        Order::index("a").desc()
    } else {
        Order::index("a")
    };
    db.table("t").order_by(order).limit(n).run().await.unwrap()
}

/// Issue 6, defect 1: the boundary member updated without moving stayed in the set.
#[tokio::test]
async fn a_boundary_member_updated_in_place_is_reported_as_itself() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    t.insert_many(vec![json!({"id": 1, "a": 1}), json!({"id": 2, "a": 2})])
        .await
        .unwrap();
    let mut feed = t
        .order_by(Order::index("a"))
        .limit(1)
        .changes()
        .await
        .unwrap();
    t.get(1).update(json!({"b": true})).await.unwrap();
    let items = drain_changes(&mut feed);
    assert_eq!(items.len(), 1);
    assert_eq!(
        pair(&items[0]),
        (
            json!({"id": 1, "a": 1}),
            json!({"id": 1, "a": 1, "b": true})
        )
    );
    // Same order value: still itself.
    t.get(1).update(json!({"a": 1, "c": 1})).await.unwrap();
    let items = drain_changes(&mut feed);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].new_val().unwrap()["id"], 1);
    assert_eq!(items[0].old_offset(), None, "offsets are off");
}

/// Issue 6, defect 2: a squashed top-N feed hands over the net difference of the set.
#[tokio::test]
async fn squashed_top_n_feeds_hand_over_the_net_difference() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    t.insert_many((0..5).map(|i| json!({"id": i, "a": i * 10})))
        .await
        .unwrap();
    let mut feed = t
        .order_by(Order::index("a"))
        .limit(3)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .squash(true)
        .await
        .unwrap();
    let mut list = Vec::new();
    apply(&mut list, &drain_changes(&mut feed));
    assert_eq!(list, top(&db, 3, false).await);
    // Enters and leaves before the consumer reads: nothing.
    t.insert(json!({"id": 9, "a": -1})).await.unwrap();
    t.get(9).delete().await.unwrap();
    // Deleted and re-inserted identically: nothing.
    t.get(1).delete().await.unwrap();
    t.insert(json!({"id": 1, "a": 10})).await.unwrap();
    assert!(drain_changes(&mut feed).is_empty());
    // Several changes of one member, and a row that enters (evicting another): two items.
    t.get(1).update(json!({"a": 11})).await.unwrap();
    t.get(1).update(json!({"a": 12})).await.unwrap();
    t.insert(json!({"id": 7, "a": 5})).await.unwrap();
    let items = drain_changes(&mut feed);
    assert_eq!(items.len(), 2, "{items:?}");
    apply(&mut list, &items);
    assert_eq!(list, top(&db, 3, false).await);
}

/// Issue 6, defect 3: one atomic batch is one step for a top-N feed.
#[tokio::test]
async fn a_batch_is_one_step_for_top_n_feeds() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    t.insert_many((0..3).map(|i| json!({"id": i, "a": 100 + i})))
        .await
        .unwrap();
    let mut feed = t
        .order_by(Order::index("a").desc())
        .limit(3)
        .changes()
        .include_offsets(true)
        .await
        .unwrap();
    let mut list = top(&db, 3, true).await;
    // Delete a member and insert ten rows that would each beat the boundary; then, in the same
    // commit, delete nine of them again.
    let mut batch = db.batch().delete("t", 0);
    for i in 10..20 {
        batch = batch.insert("t", json!({"id": i, "a": 1000 + i}));
    }
    let batch = (10..19).fold(batch, |b, i| b.delete("t", i));
    batch.await.unwrap();
    let items = drain_changes(&mut feed);
    assert_eq!(items.len(), 1, "only the net change: {items:?}");
    assert_eq!(
        pair(&items[0]),
        (json!({"id": 0, "a": 100}), json!({"id": 19, "a": 1019}))
    );
    apply(&mut list, &items);
    assert_eq!(list, top(&db, 3, true).await);
}

/// Issue 6, defect 4: a commit touching two rows near the boundary refilled from a later state.
#[tokio::test]
async fn a_commit_touching_several_members_refills_from_its_own_state() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    t.insert_many(vec![
        json!({"id": "d", "a": 8}),
        json!({"id": "b", "a": 8}),
        json!({"id": "a", "a": 8}),
        json!({"id": "e", "a": 2}),
        json!({"id": "c", "a": 2}),
    ])
    .await
    .unwrap();
    let mut feed = t
        .order_by(Order::index("a").desc())
        .limit(3)
        .changes()
        .include_initial(true)
        .include_offsets(true)
        .await
        .unwrap();
    let mut list = Vec::new();
    apply(&mut list, &drain_changes(&mut feed));
    db.batch()
        .update("t", "b", json!({"a": 4}))
        .update("t", "d", json!({"a": 4}))
        .await
        .unwrap();
    apply(&mut list, &drain_changes(&mut feed));
    assert_eq!(list, top(&db, 3, true).await);
    // The same through an update by query and an insert_many.
    t.filter(remodel::field("a").lt(5))
        .update(json!({"a": 9}))
        .await
        .unwrap();
    apply(&mut list, &drain_changes(&mut feed));
    assert_eq!(list, top(&db, 3, true).await);
    t.insert_many(vec![
        json!({"id": "x", "a": 9}),
        json!({"id": "y", "a": 10}),
    ])
    .await
    .unwrap();
    apply(&mut list, &drain_changes(&mut feed));
    assert_eq!(list, top(&db, 3, true).await);
}
