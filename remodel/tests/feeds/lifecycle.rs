//! How a feed ends: when its table or index is dropped, when its database closes or its last
//! handle is dropped (with `FeedAborted`), and when its consumer drops it (unsubscribed).
//! Feeds opened while that happens never hang; and feeds opened at random moments while their
//! table is dropped and re-created under the same name, and while the database closes:
//!
//! Every row carries the generation of the table it was written to. A feed must open on a
//! table that was live while it opened (or fail with `NoSuchTable`/`Closed`), see the rows of
//! that one table only (never those of a newer table with the same name), and end with
//! `FeedAborted` within a bound once that table is dropped or the database closes. A feed
//! that neither ends nor errors is a hang.
//!
//! `REMODEL_RACE_ROUNDS=N` runs N drop/re-create rounds instead of the CI default;
//! `REMODEL_RACE_SEED=S` replays one schedule of random choices (the timing is still real).

use crate::common::feeds::{db_with, scores_table};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use remodel::{field, json, Conflict, Database, Durability, Error, Order, Value};
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

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
async fn dropping_a_feed_unsubscribes() {
    let db = db_with("t").await;
    let t = db.table("t");
    // Feeds, and the shared results they read (the two feeds of one query share one).
    let feeds_open = || async {
        let row = db.stats().run().await.unwrap()[0].clone();
        (row["feeds"].clone(), row["feed_groups"].clone())
    };
    let a = t.get(1).changes().await.unwrap();
    let b = t.get(1).changes().await.unwrap();
    let c = t.filter(field("x").eq(1)).changes().await.unwrap();
    assert_eq!(feeds_open().await, (json!(3), json!(2)));
    drop(a);
    assert_eq!(feeds_open().await, (json!(2), json!(2)));
    drop((b, c));
    assert_eq!(feeds_open().await, (json!(0), json!(0)));
    t.insert(json!({"id": 1, "x": 1})).await.unwrap();
}

/// Issue 6, defect 5: a feed set up while its table is dropped either fails or ends with an
/// abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_opened_while_a_table_is_dropped_never_hang() {
    for round in 0..30 {
        let db = db_with("t").await;
        db.table("t").insert(json!({"id": 1})).await.unwrap();
        let opener = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut feeds = Vec::new();
                for _ in 0..20 {
                    match db.table("t").changes().await {
                        Ok(f) => feeds.push(f),
                        Err(Error::NoSuchTable(_) | Error::Closed) => {}
                        Err(e) => panic!("unexpected error {e}"),
                    }
                    tokio::task::yield_now().await;
                }
                feeds
            })
        };
        tokio::task::yield_now().await;
        db.drop_table("t").await.unwrap();
        let feeds = opener.await.unwrap();
        // A table of the same name: no old feed may see its rows.
        db.create_table("t").await.unwrap();
        db.table("t").insert(json!({"id": "new"})).await.unwrap();
        for mut f in feeds {
            let first = tokio::time::timeout(Duration::from_secs(5), f.next())
                .await
                .unwrap_or_else(|_| panic!("round {round}: a feed hung"));
            assert!(
                matches!(first, Some(Err(Error::FeedAborted(_)))),
                "round {round}: {first:?}"
            );
        }
    }
}

/// Issue 6, defect 5, closing: feeds set up while the database closes end too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_opened_while_the_database_closes_never_hang() {
    for _ in 0..30 {
        let db = db_with("t").await;
        let opener = {
            let db = db.clone();
            tokio::spawn(async move {
                let mut feeds = Vec::new();
                for _ in 0..20 {
                    if let Ok(f) = db.table("t").changes().await {
                        feeds.push(f);
                    }
                    tokio::task::yield_now().await;
                }
                feeds
            })
        };
        tokio::task::yield_now().await;
        db.close().await.unwrap();
        for mut f in opener.await.unwrap() {
            let first = tokio::time::timeout(Duration::from_secs(5), f.next())
                .await
                .expect("a feed hung");
            assert!(matches!(first, Some(Err(Error::FeedAborted(_)))));
        }
    }
}

/// How long a feed may take to end once its table is dropped or the database closes, and how
/// long opening a feed may take.
const BOUND: Duration = Duration::from_secs(5);

const OPENERS_PER_ROUND: usize = 10;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// What one feed did.
#[derive(Debug)]
struct Outcome {
    what: String,
    /// The generation current when the open began and when it returned.
    gen_before: u64,
    gen_after: u64,
    /// `Ok(rows' generations)` if it opened, else the open's error.
    opened: Result<(), String>,
    gens: BTreeSet<u64>,
    /// When the feed ended, and how (`None`: still running when the reader was stopped).
    ended: Option<(Instant, Result<(), String>)>,
}

fn gen_of(v: &Value) -> Option<u64> {
    v.get("gen").and_then(Value::as_u64)
}

/// Opens a random feed on `r` after a random short delay, then reads it until it ends.
async fn open_and_read(db: Database, gen: Arc<AtomicU64>, seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let delay = Duration::from_micros(rng.gen_range(0..3000));
    let kind = rng.gen_range(0..6);
    let initial = rng.gen_bool(0.6);
    let squash = rng.gen_range(0..4);
    tokio::time::sleep(delay).await;
    let t = db.table("r");
    let (what, q) = match kind {
        0 => ("t", t.query()),
        1 => ("t.get(0)", t.get_all([0])),
        2 => ("t.get_all([1, 2])", t.get_all([1, 2])),
        3 => (
            "t.between(1, 3)",
            t.between(Bound::Included(json!(1)), Bound::Excluded(json!(3))),
        ),
        4 => ("t.filter(gen >= 0)", t.filter(field("gen").ge(0))),
        _ => (
            "t.order_by(index(id)).limit(2)",
            t.order_by(Order::index("id")).limit(2),
        ),
    };
    let changes = if kind == 1 {
        t.get(0).changes()
    } else {
        q.changes()
    };
    let changes = changes.include_initial(initial);
    let changes = match squash {
        0 => changes.squash(true),
        1 => changes.squash_window(0.001),
        _ => changes,
    };
    let what = format!("{what} include_initial({initial}) squash#{squash} (seed {seed})");
    let gen_before = gen.load(Ordering::SeqCst);
    let opened = tokio::time::timeout(BOUND, changes).await;
    let gen_after = gen.load(Ordering::SeqCst);
    let mut out = Outcome {
        what,
        gen_before,
        gen_after,
        opened: Ok(()),
        gens: BTreeSet::new(),
        ended: None,
    };
    let mut feed = match opened {
        Err(_) => {
            out.opened = Err(format!("opening took more than {BOUND:?}"));
            return out;
        }
        Ok(Err(e @ (Error::NoSuchTable(_) | Error::Closed | Error::FeedAborted(_)))) => {
            out.opened = Err(format!("refused: {e}"));
            out.ended = Some((Instant::now(), Ok(())));
            return out;
        }
        Ok(Err(e)) => {
            out.opened = Err(format!("unexpected error: {e:?}"));
            return out;
        }
        Ok(Ok(feed)) => feed,
    };
    while let Some(item) = feed.next().await {
        match item {
            Ok(c) => {
                for v in [c.old_val(), c.new_val()].into_iter().flatten() {
                    match gen_of(v) {
                        Some(g) => {
                            out.gens.insert(g);
                        }
                        None => {
                            out.ended =
                                Some((Instant::now(), Err(format!("a row without gen: {v}"))));
                            return out;
                        }
                    }
                }
            }
            Err(Error::FeedAborted(_)) => {
                out.ended = Some((Instant::now(), Ok(())));
                break;
            }
            Err(Error::FeedOverflow { .. }) => {}
            Err(e) => {
                out.ended = Some((Instant::now(), Err(format!("an error item: {e:?}"))));
                return out;
            }
        }
    }
    if out.ended.is_none() {
        out.ended = Some((
            Instant::now(),
            Err("the stream ended without FeedAborted".into()),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_opened_during_drops_recreates_and_close_end_and_never_see_a_new_table() {
    let rounds = env("REMODEL_RACE_ROUNDS", 100);
    let seed = env("REMODEL_RACE_SEED", rand::random::<u32>() as u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let db = crate::common::open(Durability::Soft).await.unwrap();
    let gen = Arc::new(AtomicU64::new(0));
    // Writers hold it shared while they read the generation and write, the dropper
    // exclusively while it drops, bumps the generation and re-creates: a row always carries
    // the generation of the table it went to. Feed openers never take it.
    let ddl = Arc::new(RwLock::new(()));
    db.create_table("r").await.unwrap();
    db.table("r")
        .insert_many([json!({"id": 0, "gen": 0}), json!({"id": 1, "gen": 0})])
        .await
        .unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, gen, ddl, stop) = (db.clone(), gen.clone(), ddl.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                {
                    let _w = ddl.read().await;
                    let g = gen.load(Ordering::SeqCst);
                    let _ = db
                        .table("r")
                        .insert(json!({"id": i % 4, "gen": g, "i": i}))
                        .conflict(Conflict::Replace)
                        .await;
                }
                i += 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };

    let mut readers = Vec::new();
    // When the table of each generation was dropped (index = generation).
    let mut dropped_at: Vec<Instant> = Vec::new();
    for _ in 0..rounds {
        for _ in 0..OPENERS_PER_ROUND {
            readers.push(tokio::spawn(open_and_read(
                db.clone(),
                gen.clone(),
                rng.gen(),
            )));
        }
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..3000))).await;
        {
            let _x = ddl.write().await;
            db.drop_table("r").await.unwrap();
            dropped_at.push(Instant::now());
            let g = gen.fetch_add(1, Ordering::SeqCst) + 1;
            db.create_table("r").await.unwrap();
            db.table("r")
                .insert_many([json!({"id": 0, "gen": g}), json!({"id": 1, "gen": g})])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..2000))).await;
    }
    // The last round races with close instead.
    for _ in 0..OPENERS_PER_ROUND {
        readers.push(tokio::spawn(open_and_read(
            db.clone(),
            gen.clone(),
            rng.gen(),
        )));
    }
    tokio::time::sleep(Duration::from_micros(rng.gen_range(0..3000))).await;
    let closing = Instant::now();
    db.close().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let last_gen = gen.load(Ordering::SeqCst);

    let mut problems = Vec::new();
    let deadline = Instant::now() + BOUND;
    let mut opened = 0;
    for r in readers {
        let left = deadline.saturating_duration_since(Instant::now());
        let o = match tokio::time::timeout(left, r).await {
            Ok(o) => o.unwrap(),
            Err(_) => {
                problems.push(format!(
                    "a feed neither ended nor failed within {BOUND:?} of the close"
                ));
                continue;
            }
        };
        if o.opened.is_ok() {
            opened += 1;
        }
        let mut bad = |why: String| {
            problems.push(format!(
                "{}: {why} (opened while generation {}..={} was current; rows seen of {:?})",
                o.what, o.gen_before, o.gen_after, o.gens
            ))
        };
        if let Err(e) = &o.opened {
            if !e.starts_with("refused") {
                bad(e.clone());
            }
            continue;
        }
        if o.gens.len() > 1 {
            bad(format!(
                "rows of several tables named `r`: generations {:?}",
                o.gens
            ));
        }
        let on = o.gens.iter().next().copied();
        if let Some(g) = on {
            if g < o.gen_before || g > o.gen_after {
                bad(format!(
                    "rows of generation {g}, but the table was of generation {}..={} while the feed opened",
                    o.gen_before, o.gen_after
                ));
            }
        }
        // Which table the feed is on (unknown without rows: at latest gen_after's).
        let g = on.unwrap_or(o.gen_after);
        match &o.ended {
            None => bad("never ended".into()),
            Some((_, Err(why))) => bad(why.clone()),
            Some((at, Ok(()))) => {
                if g < last_gen {
                    let dropped = dropped_at[g as usize];
                    // Dropping the table queues the abort before drop_table returns; half a
                    // second is ample for the reader to see it.
                    let late = *at > dropped + BOUND
                        || (*at >= closing && closing > dropped + Duration::from_millis(500));
                    if late {
                        bad(format!(
                            "its table (generation {g}) was dropped, but the feed ended only {:?} \
                             later{}",
                            at.saturating_duration_since(dropped),
                            if *at >= closing {
                                ", with the close"
                            } else {
                                ""
                            }
                        ));
                    }
                } else if *at > closing + BOUND {
                    bad("ended more than the bound after the close".into());
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "seed {seed} ({rounds} rounds, {opened} feeds opened), {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// `for_each_ready` hands over exactly what `next()` gives, in the same order, whatever its
/// limit and however the writes interleave with the reads: the items of a concurrent writer,
/// read by one feed with `next()` and by another (of the same query, and of a squashing
/// kind that reads its own queue) with limits of 13 and 5; several items in one call (a
/// commit of 3 is ready at once); then a limit of 0 (one item), and the end of the feed (its
/// abort item, then 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_ready_hands_over_what_next_gives() {
    let db = db_with("t").await;
    let t = db.table("t");
    let by_next = t.changes().await.unwrap();
    let by_runs = t.changes().await.unwrap();
    let squashed_next = t.changes().squash(true).await.unwrap();
    let squashed_runs = t.changes().squash(true).await.unwrap();
    const WRITES: u64 = 300;
    let writer = {
        let t = t.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            for i in 0..WRITES {
                let id = rng.gen_range(0..40);
                match rng.gen_range(0..4) {
                    0 => t.get(id).delete().await.map(drop),
                    1 => t
                        .insert_many((0..3).map(|k| json!({"id": 100 + i * 3 + k, "n": i})))
                        .await
                        .map(drop),
                    _ => t
                        .insert(json!({"id": id, "n": i}))
                        .conflict(Conflict::Replace)
                        .await
                        .map(drop),
                }
                .unwrap();
                if rng.gen_range(0..8) == 0 {
                    tokio::task::yield_now().await;
                }
            }
            t.insert(json!({"id": "end"})).await.unwrap();
        })
    };
    // Each feed read by its own task while the writer runs.
    let reader = |mut feed: remodel::Feed, runs: Option<usize>| {
        tokio::spawn(async move {
            let got = read(&mut feed, runs).await;
            (feed, got)
        })
    };
    let by_next = reader(by_next, None);
    let by_runs = reader(by_runs, Some(13));
    let squashed_next = reader(squashed_next, None);
    let squashed_runs = reader(squashed_runs, Some(5));
    writer.await.unwrap();
    let (_, expected) = by_next.await.unwrap();
    let (mut by_runs, got) = by_runs.await.unwrap();
    assert_eq!(got, expected);
    // Squashed feeds merge what waits in their queue, which depends on when they read:
    // both must rebuild the table as it is.
    let table: BTreeSet<String> = t
        .run()
        .await
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    for squashed in [squashed_next, squashed_runs] {
        let (_, items) = squashed.await.unwrap();
        let mut rows = std::collections::BTreeMap::new();
        for (old, new) in items {
            if let Some(id) = old.get("id") {
                rows.remove(&id.to_string());
            }
            if let Some(id) = new.get("id") {
                rows.insert(id.to_string(), new.to_string());
            }
        }
        assert_eq!(rows.into_values().collect::<BTreeSet<_>>(), table);
    }

    // A limit of 0 counts as 1 (0 says the feed ended).
    t.insert(json!({"id": "after"})).await.unwrap();
    let mut after = Vec::new();
    assert_eq!(by_runs.for_each_ready(0, |c| after.push(c)).await, 1);
    assert_eq!(after.len(), 1);

    db.drop_table("t").await.unwrap();
    let mut items = Vec::new();
    let handed = by_runs.for_each_ready(10, |c| items.push(c)).await;
    assert_eq!(handed, 1);
    assert!(matches!(&items[0], Err(Error::FeedAborted(m)) if m.contains("dropped")));
    assert_eq!(by_runs.for_each_ready(10, |_| panic!("ended")).await, 0);
}

/// The items of `feed` up to the row `{"id": "end"}`, read with `next()`, or with
/// `for_each_ready(limit)`.
async fn read(feed: &mut remodel::Feed, runs: Option<usize>) -> Vec<(Value, Value)> {
    use crate::common::feeds::pair;
    let (mut got, mut most): (Vec<(Value, Value)>, usize) = (Vec::new(), 0);
    loop {
        match runs {
            Some(limit) => {
                let handed = feed
                    .for_each_ready(limit, |c| got.push(pair(&c.unwrap())))
                    .await;
                assert!(handed > 0 && handed <= limit);
                most = most.max(handed);
            }
            None => got.push(pair(&feed.next().await.unwrap().unwrap())),
        }
        if got
            .last()
            .is_some_and(|p| p.1.get("id") == Some(&json!("end")))
        {
            // Items ready together go in one call (the writer commits runs of 3).
            assert!(runs.is_none() || most > 1, "one item per call");
            return got;
        }
    }
}

/// `for_each_ready` on a quiet feed: the items of one commit, a limit's worth per call.
#[tokio::test]
async fn for_each_ready_takes_a_limit_at_a_time() {
    let db = db_with("t").await;
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    t.insert_many((0..5).map(|i| json!({"id": i})))
        .await
        .unwrap();
    let mut ids = Vec::new();
    let mut push =
        |c: remodel::Result<remodel::Change>| ids.push(c.unwrap().new_val().unwrap()["id"].clone());
    assert_eq!(feed.for_each_ready(3, &mut push).await, 3);
    assert_eq!(feed.for_each_ready(3, &mut push).await, 2);
    assert_eq!(ids, [json!(0), json!(1), json!(2), json!(3), json!(4)]);
}
