//! Feed options: `squash` (merged per row, net no-ops dropped) and squash windows (batches
//! handed over, early when the queue is half full; any finite non-negative window taken),
//! overflow (reported, the feed goes on; a consumer that never reads does not block
//! writers), and the typed errors of unwatchable queries and bad options.

use crate::common::feeds::{db_with, drain, pairs, paused_db_with, scores_table};
use futures::{FutureExt, StreamExt};
use remodel::{json, Error, Feed, Order, Value};
use std::time::Duration;

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
    let db = paused_db_with("t").await;
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
    let db = paused_db_with("t").await;
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

/// Issue 6, defect 6: a squash window too large to add to a clock is not a panic later. (It was
/// refused; issue 16 item 16 accepts it: see
/// `any_finite_non_negative_squash_window_is_accepted`.)
#[tokio::test]
async fn a_squash_window_that_is_not_a_number_of_seconds_is_refused() {
    let db = db_with("t").await;
    for s in [f64::INFINITY, f64::NEG_INFINITY, -1.0, -1e-300, f64::NAN] {
        let r = db.table("t").changes().squash_window(s).await;
        assert!(
            matches!(r, Err(Error::InvalidFeedOption(_))),
            "{s}: {:?}",
            r.err()
        );
    }
    assert!(db.table("t").changes().squash_window(0.05).await.is_ok());
}

/// Issue 16, item 16: any finite non-negative squash window is taken, as RethinkDB takes it
/// (its own tests use `squash: 1e6` with a half-full queue); a huge one neither overflows nor
/// panics: the first batch is handed over at once, the next when the queue is more than half
/// full.
#[tokio::test]
async fn any_finite_non_negative_squash_window_is_accepted() {
    let db = db_with("t").await;
    let t = db.table("t");
    let o = remodel::FeedOptions::from_json(&json!({"squash": 1e6})).unwrap();
    assert_eq!(o.squash, remodel::feed::Squash::Window(1e6));
    for (i, s) in [0.0, 86_401.0, 1e6, 1e12, 1e18, 1e19, f64::MAX]
        .into_iter()
        .enumerate()
    {
        let mut feed = t
            .changes()
            .squash_window(s)
            .queue_size(4)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
        let id = |j: usize| json!(format!("{i}-{j}"));
        t.insert(json!({"id": id(0)})).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), feed.next()).await;
        assert!(
            matches!(first, Ok(Some(Ok(_)))),
            "{s}: the first batch at once"
        );
        // Three changes waiting in a queue of four: more than half full, handed over early.
        for j in 1..4 {
            t.insert(json!({"id": id(j)})).await.unwrap();
        }
        for j in 1..4 {
            let c = tokio::time::timeout(Duration::from_secs(5), feed.next())
                .await
                .unwrap_or_else(|_| panic!("{s}: the half-full batch"))
                .unwrap()
                .unwrap();
            assert_eq!(c.new_val().unwrap()["id"], id(j), "{s}");
        }
    }
}
