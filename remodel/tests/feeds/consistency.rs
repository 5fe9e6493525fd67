//! What a consumer rebuilds from a feed equals the query, under concurrent writes: initial
//! rows then changes (also in chunks of a large table, and for top-N feeds with offsets);
//! feeds come and go while writers and DDL run. Changes arrive in commit order with no gaps,
//! hard and soft writes alike, and sequence numbers go on increasing across a restart.

use crate::common::feeds::{db_with, drain};
use futures::{FutureExt, StreamExt};
use remodel::{field, json, Change, Database, Error, IndexSpec, Order, Value};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

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
    // One commit order: commit positions never go back, and every item has its own place
    // in it (writes of concurrent tasks may share a commit: group commit on PostgreSQL).
    let seqs: Vec<u64> = items.iter().map(|c| c.seq().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "commit order");
    let cursors: Vec<_> = items.iter().map(|c| c.cursor().unwrap()).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "one place per change"
    );
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

/// Durable order (issue 6): sequence numbers go on increasing across a close and reopen, and a
/// feed tells the number its initial rows were read at.
#[tokio::test]
async fn sequence_numbers_survive_a_restart_and_snapshots_are_numbered() {
    let dir = std::env::temp_dir().join(format!("remodel-seq-{}", rand::random::<u64>()));
    let seq_of_a_write = |db: Database, id: i64| async move {
        let t = db.table("t");
        let mut feed = t.changes().await.unwrap();
        t.insert(json!({"id": id})).await.unwrap();
        let c = feed.next().await.unwrap().unwrap();
        assert!(c.seq().unwrap() > feed.snapshot_seq().unwrap());
        c.seq().unwrap()
    };
    let db = Database::open(&dir).await.unwrap();
    db.create_table("t").await.unwrap();
    let first = seq_of_a_write(db.clone(), 1).await;
    db.close().await.unwrap();
    drop(db);
    let db = Database::open(&dir).await.unwrap();
    let second = seq_of_a_write(db.clone(), 2).await;
    assert!(second > first, "{second} after {first}");
    let feed = db.table("t").changes().include_initial(true).await.unwrap();
    assert!(feed.snapshot_seq().unwrap() >= second);
    db.close().await.unwrap();
    drop((db, feed));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hard writes are shown once on disk (issue 6): a feed on a hard-durability database receives
/// them (the gate opens when the write's flush finishes), in commit order, with soft writes of
/// the same database interleaved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_and_soft_writes_are_delivered_in_commit_order() {
    let db = crate::common::open(remodel::Durability::Hard)
        .await
        .unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    for i in 0..40 {
        let d = if i % 3 == 0 {
            remodel::Durability::Soft
        } else {
            remodel::Durability::Hard
        };
        t.insert(json!({"id": i})).durability(d).await.unwrap();
    }
    let mut last = 0;
    for i in 0..40 {
        let c = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
        assert_eq!(c.new_val().unwrap()["id"], i);
        assert!(c.seq().unwrap() > last);
        last = c.seq().unwrap();
    }
}
