//! Changefeeds: every feed kind and option, with the exact items expected.

use futures::{FutureExt, StreamExt};
use remodel::{field, json, Change, ChangeKind, Database, Error, Feed, IndexSpec, Order, Value};
use std::collections::BTreeMap;
use std::ops::Bound;

async fn db_with(table: &str) -> Database {
    // Soft durability: paused-clock tests must not wait on fsync threads.
    let db = remodel::Config::temporary()
        .durability(remodel::Durability::Soft)
        .open()
        .await
        .unwrap();
    db.create_table(table).await.unwrap();
    db
}

/// Items already delivered (the write path delivers synchronously, so after a write
/// returns its items are queued).
fn drain(feed: &mut Feed) -> Vec<Result<Change, Error>> {
    let mut out = Vec::new();
    while let Some(Some(item)) = feed.next().now_or_never() {
        out.push(item);
    }
    out
}

/// `(old_val, new_val)` of the delivered items, as JSON (`null` for none).
fn pairs(feed: &mut Feed) -> Vec<(Value, Value)> {
    drain(feed)
        .into_iter()
        .map(|r| {
            let c = r.expect("a change, not an error");
            (
                c.old_val().cloned().unwrap_or(Value::Null),
                c.new_val().cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

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

#[tokio::test]
async fn a_batch_that_writes_a_row_back_to_its_value_emits_nothing() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.insert(json!({"id": 1, "v": 1})).await.unwrap();
    let mut feed = t.changes().await.unwrap();
    let r = t
        .insert_many(vec![
            json!({"id": 1, "v": 2}),
            json!({"id": 1, "v": 1}),
            json!({"id": 2}),
        ])
        .conflict(remodel::Conflict::Replace)
        .await
        .unwrap();
    assert_eq!((r.replaced, r.inserted), (2, 1));
    // One batch commits once: row 1 ends where it started, row 2 is new.
    assert_eq!(pairs(&mut feed), vec![(Value::Null, json!({"id": 2}))]);
}

#[tokio::test]
async fn table_feed_with_types() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut feed = t.changes().include_types(true).await.unwrap();
    t.insert(json!({"id": "a"})).await.unwrap();
    t.get("a").update(json!({"x": 1})).await.unwrap();
    t.get("a").delete().await.unwrap();
    let items: Vec<Value> = drain(&mut feed)
        .into_iter()
        .map(|c| c.unwrap().to_json())
        .collect();
    assert_eq!(
        items,
        vec![
            json!({"old_val": null, "new_val": {"id": "a"}, "type": "add"}),
            json!({"old_val": {"id": "a"}, "new_val": {"id": "a", "x": 1}, "type": "change"}),
            json!({"old_val": {"id": "a", "x": 1}, "new_val": null, "type": "remove"}),
        ]
    );
}

#[tokio::test]
async fn filter_feed_reports_rows_entering_and_leaving() {
    let db = db_with("t").await;
    let t = db.table("t");
    // An equality conjunct (routed by value) and a range conjunct (checked).
    let mut eq = t
        .filter(field("team").eq("red").and(field("score").ge(10)))
        .changes()
        .await
        .unwrap();
    let mut range = t
        .filter(field("score").ge(10))
        .pluck(["id", "score"])
        .changes()
        .await
        .unwrap();
    t.insert(json!({"id": 1, "team": "red", "score": 5}))
        .await
        .unwrap(); // matches neither
    t.get(1).update(json!({"score": 12})).await.unwrap(); // enters both
    t.get(1).update(json!({"team": "blue"})).await.unwrap(); // leaves eq; range's view unchanged
    t.get(1).update(json!({"score": 3})).await.unwrap(); // leaves range
    assert_eq!(
        pairs(&mut eq),
        vec![
            (Value::Null, json!({"id": 1, "team": "red", "score": 12})),
            (json!({"id": 1, "team": "red", "score": 12}), Value::Null),
        ]
    );
    assert_eq!(
        pairs(&mut range),
        vec![
            (Value::Null, json!({"id": 1, "score": 12})),
            (json!({"id": 1, "score": 12}), Value::Null)
        ]
    );
}

#[tokio::test]
async fn get_all_index_feed_follows_index_values_and_duplicates() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("color", IndexSpec::field("color"))
        .await
        .unwrap();
    let mut feed = t
        .get_all(["red", "red"])
        .index("color")
        .changes()
        .await
        .unwrap();
    t.insert(json!({"id": 1, "color": "blue"})).await.unwrap();
    t.get(1).update(json!({"color": "red"})).await.unwrap();
    t.get(1).update(json!({"color": "green"})).await.unwrap();
    let red = json!({"id": 1, "color": "red"});
    assert_eq!(
        pairs(&mut feed),
        vec![
            (Value::Null, red.clone()),
            (Value::Null, red.clone()),
            (red.clone(), Value::Null),
            (red, Value::Null)
        ]
    );
}

#[tokio::test]
async fn between_feed_on_an_index_reports_moves_across_bounds() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("age", IndexSpec::field("age"))
        .await
        .unwrap();
    let mut feed = t
        .between(Bound::Included(json!(18)), Bound::Excluded(json!(65)))
        .index("age")
        .changes()
        .await
        .unwrap();
    t.insert(json!({"id": "a", "age": 10})).await.unwrap();
    t.get("a").update(json!({"age": 18})).await.unwrap(); // in (closed lower bound)
    t.get("a").update(json!({"age": 30})).await.unwrap(); // change inside
    t.get("a").update(json!({"age": 65})).await.unwrap(); // out (open upper bound)
    assert_eq!(
        pairs(&mut feed),
        vec![
            (Value::Null, json!({"id": "a", "age": 18})),
            (json!({"id": "a", "age": 18}), json!({"id": "a", "age": 30})),
            (json!({"id": "a", "age": 30}), Value::Null),
        ]
    );
}

async fn scores_table() -> Database {
    let db = db_with("scores").await;
    let t = db.table("scores");
    t.create_index("points", IndexSpec::field("points"))
        .await
        .unwrap();
    t.insert_many(vec![
        json!({"id": "a", "points": 10}),
        json!({"id": "b", "points": 20}),
        json!({"id": "c", "points": 30}),
        json!({"id": "d", "points": 40}),
    ])
    .await
    .unwrap();
    db
}

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

#[tokio::test]
async fn identical_feeds_share_work_and_each_gets_every_item() {
    let db = scores_table().await;
    let t = db.table("scores");
    let q = t.order_by(Order::index("points").desc()).limit(3);
    let mut a = q.changes().await.unwrap();
    let mut b = q.changes().include_initial(true).await.unwrap();
    t.insert(json!({"id": "z", "points": 100})).await.unwrap();
    assert_eq!(
        pairs(&mut a),
        vec![(
            json!({"id": "b", "points": 20}),
            json!({"id": "z", "points": 100})
        )]
    );
    let items = pairs(&mut b);
    assert_eq!(items.len(), 4); // 3 initial rows, then the change
    assert_eq!(
        items[3],
        (
            json!({"id": "b", "points": 20}),
            json!({"id": "z", "points": 100})
        )
    );
}

#[tokio::test]
async fn squash_merges_per_row_and_drops_net_no_ops() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut feed = t.changes().squash(true).await.unwrap();
    t.insert(json!({"id": 1, "v": 1})).await.unwrap();
    t.get(1).update(json!({"v": 2})).await.unwrap(); // insert then update: one add
    t.insert(json!({"id": 2})).await.unwrap();
    t.get(2).delete().await.unwrap(); // insert then delete: nothing
    t.insert(json!({"id": 3, "v": 0})).await.unwrap();
    assert_eq!(
        pairs(&mut feed),
        vec![
            (Value::Null, json!({"id": 1, "v": 2})),
            (Value::Null, json!({"id": 3, "v": 0}))
        ]
    );
    t.get(3).update(json!({"v": 1})).await.unwrap();
    t.get(3).update(json!({"v": 0})).await.unwrap(); // update then revert: nothing
    assert!(drain(&mut feed).is_empty());
}

#[tokio::test(start_paused = true)]
async fn squash_window_hands_over_batches() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut feed = t.changes().squash_window(0.5).await.unwrap();
    t.insert(json!({"id": 1, "v": 1})).await.unwrap();
    // The first batch is not delayed.
    assert_eq!(
        feed.next().await.unwrap().unwrap().new_val().unwrap()["v"],
        1
    );
    t.get(1).update(json!({"v": 2})).await.unwrap();
    t.get(1).update(json!({"v": 3})).await.unwrap();
    assert!(
        feed.next().now_or_never().is_none(),
        "held back by the window"
    );
    let start = tokio::time::Instant::now();
    let c = feed.next().await.unwrap().unwrap();
    assert!(start.elapsed() >= std::time::Duration::from_millis(400));
    assert_eq!(
        (
            c.old_val().unwrap()["v"].clone(),
            c.new_val().unwrap()["v"].clone()
        ),
        (json!(1), json!(3))
    );
}

#[tokio::test(start_paused = true)]
async fn a_squash_window_hands_a_half_full_queue_over_early() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut feed = t.changes().squash_window(60.0).queue_size(4).await.unwrap();
    t.insert(json!({"id": 0})).await.unwrap();
    assert!(
        feed.next().await.unwrap().is_ok(),
        "the first batch is not delayed"
    );
    t.insert(json!({"id": 1})).await.unwrap();
    t.insert(json!({"id": 2})).await.unwrap();
    assert!(
        feed.next().now_or_never().is_none(),
        "half full: still waiting for the window"
    );
    t.insert(json!({"id": 3})).await.unwrap();
    // More than half of the queue: handed over now, not in a minute.
    let batch = pairs(&mut feed);
    assert_eq!(batch.len(), 3);
}

#[tokio::test]
async fn overflow_is_reported_and_the_feed_goes_on() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut feed = t.changes().queue_size(3).await.unwrap();
    for i in 0..10 {
        t.insert(json!({"id": i})).await.unwrap();
    }
    // 3 queued, the 4th push discards 3, ..., the 10th discards 3: 9 skipped, 1 left.
    let items = drain(&mut feed);
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0].as_ref().unwrap_err(),
        &Error::FeedOverflow { skipped: 9 }
    );
    assert_eq!(
        items[1].as_ref().unwrap().new_val(),
        Some(&json!({"id": 9}))
    );
    t.insert(json!({"id": 10})).await.unwrap();
    assert_eq!(pairs(&mut feed), vec![(Value::Null, json!({"id": 10}))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_does_not_block_writers() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut stalled = t.changes().queue_size(100).await.unwrap();
    let writer = tokio::spawn({
        let t = t.clone();
        async move {
            for i in 0..2_000 {
                t.insert(json!({"id": i}))
                    .durability(remodel::Durability::Soft)
                    .await
                    .unwrap();
            }
        }
    });
    // The writer finishes although nobody reads the feed.
    tokio::time::timeout(std::time::Duration::from_secs(60), writer)
        .await
        .expect("writers never wait")
        .unwrap();
    let first = stalled.next().await.unwrap();
    assert!(matches!(first, Err(Error::FeedOverflow { skipped }) if skipped >= 1_900));
}

#[tokio::test]
async fn dropping_tables_and_indexes_or_closing_aborts_feeds() {
    let db = scores_table().await;
    let t = db.table("scores");
    let mut by_index = t
        .order_by(Order::index("points"))
        .limit(2)
        .changes()
        .await
        .unwrap();
    let mut whole = t.changes().await.unwrap();
    t.drop_index("points").await.unwrap();
    assert!(
        matches!(by_index.next().await, Some(Err(Error::FeedAborted(m))) if m.contains("points"))
    );
    assert!(by_index.next().await.is_none());
    db.drop_table("scores").await.unwrap();
    assert!(
        matches!(whole.next().await, Some(Err(Error::FeedAborted(m))) if m.contains("dropped"))
    );
    assert!(whole.next().await.is_none());

    db.create_table("other").await.unwrap();
    let mut other = db.table("other").changes().await.unwrap();
    db.close().await.unwrap();
    assert!(matches!(other.next().await, Some(Err(Error::FeedAborted(m))) if m.contains("closed")));
}

#[tokio::test]
async fn dropping_the_last_database_handle_ends_its_feeds() {
    let db = db_with("t").await;
    let mut feed = db.table("t").changes().await.unwrap();
    drop(db);
    assert!(matches!(
        feed.next().await,
        Some(Err(Error::FeedAborted(_)))
    ));
    assert!(feed.next().await.is_none());
}

#[tokio::test]
async fn unwatchable_queries_and_bad_options_are_refused() {
    let db = scores_table().await;
    let t = db.table("scores");
    // Each cause has its own variant: a query that cannot be watched, an option that
    // cannot be honoured.
    let reason = |r: Result<Feed, Error>| match r {
        Err(Error::Unwatchable(m)) => m,
        other => panic!("expected Unwatchable, got {other:?}"),
    };
    let option = |r: Result<Feed, Error>| match r {
        Err(Error::InvalidFeedOption(m)) => m,
        other => panic!("expected InvalidFeedOption, got {other:?}"),
    };
    assert!(reason(t.query().limit(3).changes().await).contains("unordered stream"));
    assert!(reason(t.order_by(remodel::asc("points")).changes().await).contains("without an index"));
    assert!(reason(t.order_by(Order::index("points")).changes().await).contains("without a limit"));
    assert!(reason(
        t.order_by(Order::index("points"))
            .limit(2)
            .pluck(["id"])
            .changes()
            .await
    )
    .contains("after limit"));
    assert!(reason(t.query().skip(1).changes().await).contains("skip"));
    assert!(option(t.changes().include_offsets(true).await).contains("include_offsets"));
    assert!(option(t.changes().squash_window(-1.0).await).contains("non-negative"));
    assert!(option(t.changes().squash_window(f64::NAN).await).contains("non-negative"));
    assert!(!option(t.changes().squash_window(f64::INFINITY).await).is_empty());
    // Any finite non-negative window is accepted (RethinkDB's own tests use 1e6).
    assert!(t.changes().squash_window(1e300).await.is_ok());
    assert!(option(t.changes().queue_size(0).await).contains("at least 1"));
    assert!(matches!(
        db.table("nope").changes().await,
        Err(Error::NoSuchTable(_))
    ));
}

#[tokio::test]
async fn dropping_a_feed_unsubscribes() {
    let db = db_with("t").await;
    let t = db.table("t");
    let feeds_open = || async { db.stats().run().await.unwrap()[0]["feeds"].clone() };
    let a = t.get(1).changes().await.unwrap();
    let b = t.get(1).changes().await.unwrap();
    let c = t.filter(field("x").eq(1)).changes().await.unwrap();
    assert_eq!(feeds_open().await, json!(3));
    drop((a, b, c));
    assert_eq!(feeds_open().await, json!(0));
    t.insert(json!({"id": 1, "x": 1})).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stats_feed_emits_changed_rows_about_once_a_second() {
    let db = db_with("t").await;
    let mut feed = db
        .stats()
        .filter(field("type").eq("table"))
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    let initial = feed.next().await.unwrap().unwrap();
    assert_eq!(initial.kind(), ChangeKind::Initial);
    assert_eq!(initial.new_val().unwrap()["writes_total"], 0);
    db.table("t").insert(json!({"id": 1})).await.unwrap();
    let c = tokio::time::timeout(std::time::Duration::from_secs(3), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(c.new_val().unwrap()["writes_total"], 1);
}

// ---- the include_initial invariant under concurrent writes ----

/// Random writers for the concurrency tests: each task upserts (`v` below `values`) or
/// deletes (one time in four) rows with ids below `ids`, `writes` times or until `stop`.
struct Writers {
    tasks: u64,
    seed: u64,
    ids: i64,
    values: i64,
    writes: usize,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

fn spawn_writers(t: &remodel::Table, w: Writers) -> Vec<tokio::task::JoinHandle<()>> {
    use rand::{Rng, SeedableRng};
    (0..w.tasks)
        .map(|task| {
            let t = t.clone();
            let stop = w.stop.clone();
            let (seed, ids, values, writes) = (w.seed + task, w.ids, w.values, w.writes);
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                for _ in 0..writes {
                    if stop
                        .as_ref()
                        .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
                    {
                        break;
                    }
                    let id = rng.gen_range(0..ids);
                    if rng.gen_bool(0.25) {
                        t.get(id).delete().await.unwrap();
                    } else {
                        let v = rng.gen_range(0..values);
                        t.insert(json!({"id": id, "v": v, "g": v % 3}))
                            .conflict(remodel::Conflict::Replace)
                            .durability(remodel::Durability::Soft)
                            .await
                            .unwrap();
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect()
}

/// Applies an item to the consumer's copy of the result, checking that it fits exactly: a
/// change's `old_val` is the row the consumer has (no gap), and a row that enters is not
/// there yet (no duplicate).
fn apply(map: &mut BTreeMap<String, Value>, c: &Change) {
    if let Some(old) = c.old_val() {
        let had = map.remove(&old["id"].to_string());
        assert_eq!(
            had.as_ref(),
            Some(old),
            "old_val must be the row the consumer has"
        );
    }
    if let Some(new) = c.new_val() {
        let had = map.insert(new["id"].to_string(), new.clone());
        assert_eq!(had, None, "a row that enters must not be there yet: {new}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_rows_then_changes_equal_the_query_under_concurrent_writes() {
    use rand::{Rng, SeedableRng};
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    let queries = [
        t.query(),
        t.filter(field("v").gt(50)),
        t.filter(field("g").eq(1)),
        t.between(Bound::Included(json!(20)), Bound::Excluded(json!(70)))
            .index("v"),
        t.get_all([json!(3), json!(7)]).index("v"),
    ];
    let writers = spawn_writers(
        &t,
        Writers {
            tasks: 3,
            seed: 0,
            ids: 60,
            values: 100,
            writes: 400,
            stop: None,
        },
    );
    let mut feeds = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for round in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(rng.gen_range(0..5))).await;
        let q = queries[round % queries.len()].clone();
        let feed = q.changes().include_initial(true).await.unwrap();
        feeds.push((q, feed, BTreeMap::new()));
        for (_, feed, map) in &mut feeds {
            for item in drain(feed) {
                apply(map, &item.unwrap());
            }
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    for (q, mut feed, mut map) in feeds {
        for item in drain(&mut feed) {
            apply(&mut map, &item.unwrap());
        }
        let expected: BTreeMap<String, Value> = q
            .run()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d["id"].to_string(), d))
            .collect();
        assert_eq!(map, expected, "feed on {q:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_initial_rows_of_a_large_table_fit_the_changes_exactly() {
    let db = db_with("t").await;
    let t = db.table("t");
    // Several chunks of initial rows, with writers running while they are read.
    t.insert_many((0..3_000).map(|i| json!({"id": i, "v": i % 100})))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = spawn_writers(
        &t,
        Writers {
            tasks: 2,
            seed: 0,
            ids: 3_500,
            values: 100,
            writes: usize::MAX,
            stop: Some(stop.clone()),
        },
    );
    let queries = [
        t.query(),
        t.filter(field("v").lt(30)),
        t.between(Bound::Included(json!(500)), Bound::Unbounded),
    ];
    let mut feeds = Vec::new();
    for q in queries {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let squashing = q
            .changes()
            .include_initial(true)
            .squash(true)
            .await
            .unwrap();
        let plain = q.changes().include_initial(true).await.unwrap();
        feeds.push((q.clone(), plain, BTreeMap::new()));
        feeds.push((q, squashing, BTreeMap::new()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    for (q, mut feed, mut map) in feeds {
        for item in drain(&mut feed) {
            apply(&mut map, &item.unwrap());
        }
        let expected: BTreeMap<String, Value> = q
            .run()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d["id"].to_string(), d))
            .collect();
        assert_eq!(map.len(), expected.len(), "feed on {q:?}");
        assert_eq!(map, expected, "feed on {q:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_initial_rows_then_offsets_equal_the_query_under_concurrent_writes() {
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    let writers = spawn_writers(
        &t,
        Writers {
            tasks: 3,
            seed: 10,
            ids: 40,
            values: 50,
            writes: 400,
            stop: None,
        },
    );
    let queries = [
        t.order_by(Order::index("v").desc()).limit(5),
        t.order_by(Order::index("v"))
            .filter(field("v").ne(7))
            .limit(3),
    ];
    let mut feeds = Vec::new();
    for round in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(round)).await;
        let q = queries[round as usize % 2].clone();
        let feed = q
            .changes()
            .include_initial(true)
            .include_offsets(true)
            .await
            .unwrap();
        feeds.push((q, feed, Vec::<Value>::new()));
    }
    for w in writers {
        w.await.unwrap();
    }
    for (q, mut feed, mut list) in feeds {
        for item in drain(&mut feed) {
            let c = item.unwrap();
            if let Some(i) = c.old_offset() {
                list.remove(i);
            }
            if let (Some(i), Some(v)) = (c.new_offset(), c.new_val()) {
                list.insert(i, v.clone());
            }
        }
        assert_eq!(list, q.run().await.unwrap(), "feed on {q:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_in_commit_order_with_no_gaps() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    let writers = spawn_writers(
        &t,
        Writers {
            tasks: 4,
            seed: 77,
            ids: 30,
            values: 10,
            writes: 300,
            stop: None,
        },
    );
    for w in writers {
        w.await.unwrap();
    }
    let items: Vec<Change> = drain(&mut feed).into_iter().map(|c| c.unwrap()).collect();
    let seqs: Vec<u64> = items.iter().map(|c| c.seq().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "commit order");
    // Every committed change is there: replaying them gives the table.
    let mut map = BTreeMap::new();
    for c in &items {
        apply(&mut map, c);
    }
    let expected: BTreeMap<String, Value> = t
        .run()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d["id"].to_string(), d))
        .collect();
    assert_eq!(map, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_come_and_go_while_writers_and_ddl_run() {
    use rand::{Rng, SeedableRng};
    // A soak of everything at once: nothing may deadlock, panic, or hang.
    let db = db_with("t").await;
    let t = db.table("t");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    let writers = spawn_writers(
        &t,
        Writers {
            tasks: 3,
            seed: 5,
            ids: 50,
            values: 20,
            writes: 600,
            stop: None,
        },
    );
    let churn = tokio::spawn({
        let t = t.clone();
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let mut feeds = Vec::new();
            for round in 0..200 {
                let q = match rng.gen_range(0..5) {
                    0 => t.query(),
                    1 => t.get_all([json!(rng.gen_range(0..20))]).index("v"),
                    2 => t.order_by(Order::index("v").desc()).limit(3),
                    3 => t.filter(field("v").eq(rng.gen_range(0..20))),
                    _ => t
                        .between(Bound::Included(json!(5)), Bound::Excluded(json!(9)))
                        .index("v"),
                };
                let mut opts = remodel::FeedOptions::default();
                opts.include_initial = rng.gen_bool(0.5);
                opts.squash = if rng.gen_bool(0.3) {
                    remodel::Squash::Merge
                } else {
                    remodel::Squash::Off
                };
                opts.queue_size = Some(rng.gen_range(1..50));
                match q.changes().options(opts).await {
                    Ok(feed) => feeds.push(feed),
                    Err(Error::NoSuchIndex { .. } | Error::IndexNotReady { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
                // Read a little from some, drop others.
                for f in feeds.iter_mut().take(3) {
                    drop(f.next().now_or_never());
                }
                if feeds.len() > 20 {
                    let i = rng.gen_range(0..feeds.len());
                    drop(feeds.swap_remove(i));
                }
                if round % 50 == 25 {
                    // Drop and rebuild the index the feeds read.
                    t.drop_index("v").await.unwrap();
                    t.create_index("v", IndexSpec::field("v")).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
            feeds
        }
    });
    for w in writers {
        w.await.unwrap();
    }
    let feeds = tokio::time::timeout(std::time::Duration::from_secs(60), churn)
        .await
        .expect("no hang")
        .unwrap();
    // The feeds still open end cleanly when the table goes.
    db.drop_table("t").await.unwrap();
    for mut f in feeds {
        let rest: Vec<_> = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut items = Vec::new();
            while let Some(item) = f.next().await {
                items.push(item);
            }
            items
        })
        .await
        .expect("every feed ends");
        assert!(
            rest.iter().any(|i| matches!(i, Err(Error::FeedAborted(_)))),
            "ends with an abort item"
        );
    }
}
