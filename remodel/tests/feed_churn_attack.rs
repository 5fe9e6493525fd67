//! Adversarial tests of FEED LIFECYCLE UNDER CHURN: feeds of every kind opened, cancelled
//! while opening (the opening future dropped after a timeout or a few polls), dropped while a
//! consumer waits in `next()`, or never read, while 8 writer tasks commit (so the commit lock
//! is often busy and opens go to a blocking thread), and while indexes and tables are
//! dropped. Checked: once every feed is gone, `db.stats()` counts no open feed (database and
//! tables); writes are not slower than before the churn; feeds that survived rebuild the
//! query re-run at the end from their initial rows and items; never-read feeds do not slow
//! writers; every open racing a drop ends with a typed error or a working feed that ends
//! with `FeedAborted`, never a hang.
//!
//! Runs on the embedded store, or on PostgreSQL with `REMODEL_TEST_BACKEND=postgres`.
//! Seeded: each test prints its seed; `FEED_CHURN_SEED=<n>` replays its random choices (the
//! interleaving of tasks is not replayable).

#[path = "common/mod.rs"]
mod common;

use common::canon;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use remodel::{json, Change, Changes, Conflict, Database, Error, Feed, IndexSpec, Order, Value};
use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: i64 = 40;
const LIMIT: Duration = Duration::from_secs(30);

fn seed(test: &str) -> u64 {
    let s = std::env::var("FEED_CHURN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("[{test}] seed = {s} (replay with FEED_CHURN_SEED={s})");
    s
}

fn on_pg() -> bool {
    remodel::postgres::suites_on_postgres()
}

async fn setup(rng: &mut StdRng) -> Database {
    let db = common::soft_db().await;
    db.create_table("t").await.unwrap();
    db.create_table("u").await.unwrap();
    db.create_table("x").await.unwrap();
    let t = db.table("t");
    t.create_index("a", IndexSpec::field("a")).await.unwrap();
    t.create_index("tags", IndexSpec::multi("tags"))
        .await
        .unwrap();
    for i in 0..3 {
        db.table("u")
            .insert(json!({"id": i, "name": format!("u{i}")}))
            .await
            .unwrap();
    }
    let mut docs = Vec::new();
    for k in 0..KEYS {
        if rng.gen_bool(0.6) {
            docs.push(doc(rng, k, "seed"));
        }
    }
    t.insert_many(docs).await.unwrap();
    db
}

fn doc(rng: &mut StdRng, id: i64, tag: &str) -> Value {
    let tags: Vec<i64> = (0..rng.gen_range(0..3))
        .map(|_| rng.gen_range(0..4))
        .collect();
    json!({"id": id, "a": rng.gen_range(0..8), "b": rng.gen_range(0..3), "tags": tags, "op": tag})
}

async fn random_write(db: &Database, rng: &mut StdRng, tag: &str) {
    let t = db.table("t");
    let k = rng.gen_range(0..KEYS);
    match rng.gen_range(0..10) {
        0..=3 => {
            let d = doc(rng, k, tag);
            t.insert(d).conflict(Conflict::Replace).await.unwrap();
        }
        4 => {
            let a = rng.gen_range(0..8);
            t.get(k).update(json!({"a": a, "op": tag})).await.unwrap();
        }
        5 | 6 => {
            t.get(k).delete().await.unwrap();
        }
        7 | 8 => {
            let mut b = db.batch();
            for _ in 0..rng.gen_range(2..5) {
                let k = rng.gen_range(0..KEYS);
                b = if rng.gen_bool(0.7) {
                    b.insert_with("t", doc(rng, k, tag), Conflict::Replace)
                } else {
                    b.delete("t", k)
                };
            }
            // Two writes of one key in a batch may be refused: that is not what is tested.
            let _ = b.await;
        }
        _ => {
            let r = rng.gen_range(0..3);
            db.table("u")
                .insert(json!({"id": r, "name": tag}))
                .conflict(Conflict::Replace)
                .await
                .unwrap();
        }
    }
}

/// `n` writers committing until `stop`; counts their writes in `done`.
fn spawn_writers(
    db: &Database,
    seed: u64,
    n: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let (db, stop, done) = (db.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 1).wrapping_mul(0x9e37));
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    random_write(&db, &mut rng, &format!("w{w}-{i}")).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    if rng.gen_bool(0.1) {
                        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..500))).await;
                    }
                }
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Feed kinds and the state their items build
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Shape {
    /// A multiset of rows / pairs (top-N too: offsets are not asked for).
    Bag,
    /// Groups `{group, reduction}`.
    Grouped,
    /// An ungrouped aggregate's value.
    Value,
}

/// What a feed's items build: canonical row -> count, or group -> reduction.
type Held = BTreeMap<String, String>;

fn held_from(shape: Shape, rows: &[Value]) -> Held {
    let mut h = Held::new();
    for r in rows {
        let (k, v) = split(shape, r);
        if shape == Shape::Bag {
            let n: i64 = h.get(&k).map_or(0, |n| n.parse().unwrap());
            h.insert(k, (n + 1).to_string());
        } else {
            h.insert(k, v);
        }
    }
    h
}

fn split(shape: Shape, v: &Value) -> (String, String) {
    match shape {
        Shape::Bag => (canon(v), String::new()),
        Shape::Grouped => (canon(&v["group"]), canon(&v["reduction"])),
        Shape::Value => (String::new(), canon(v)),
    }
}

fn apply(h: &mut Held, shape: Shape, c: &Change) -> Result<(), String> {
    if let Some(old) = c.old_val() {
        let (k, r) = split(shape, old);
        match shape {
            Shape::Bag => {
                let n: i64 = h
                    .get(&k)
                    .ok_or_else(|| format!("old_val {k} is not held"))?
                    .parse()
                    .unwrap();
                if n == 1 {
                    h.remove(&k);
                } else {
                    h.insert(k, (n - 1).to_string());
                }
            }
            _ => {
                if h.get(&k) != Some(&r) {
                    return Err(format!("old_val {k}={r}, held {:?}", h.get(&k)));
                }
                h.remove(&k);
            }
        }
    }
    if let Some(new) = c.new_val() {
        let (k, r) = split(shape, new);
        if shape == Shape::Bag {
            let n: i64 = h.get(&k).map_or(0, |n| n.parse().unwrap());
            h.insert(k, (n + 1).to_string());
        } else {
            h.insert(k, r);
        }
    }
    Ok(())
}

type Rerun = Box<dyn Fn() -> BoxFuture<'static, Held> + Send + Sync>;

struct Kind {
    name: &'static str,
    shape: Shape,
    /// Can resume from a cursor (row feeds).
    rows: bool,
    changes: Box<dyn Fn() -> Changes + Send + Sync>,
    rerun: Rerun,
}

fn query_kind(name: &'static str, q: remodel::Query, rows: bool) -> Kind {
    let (q1, q2) = (q.clone(), q);
    Kind {
        name,
        shape: Shape::Bag,
        rows,
        changes: Box::new(move || q1.changes()),
        rerun: Box::new(move || {
            let q = q2.clone();
            async move { held_from(Shape::Bag, &q.run().await.unwrap()) }.boxed()
        }),
    }
}

fn kinds(db: &Database) -> Vec<Kind> {
    let t = db.table("t");
    let mut out = vec![
        query_kind("table", t.query(), true),
        query_kind("get_all a=2,5", t.get_all([2, 5]).index("a"), true),
        query_kind("get_all tags=1", t.get_all([1]).index("tags"), true),
        query_kind(
            "between 5..25",
            t.between(Bound::Included(json!(5)), Bound::Excluded(json!(25))),
            true,
        ),
        query_kind(
            "between a 2..=4",
            t.between(Bound::Included(json!(2)), Bound::Included(json!(4)))
                .index("a"),
            true,
        ),
        query_kind(
            "top3 a desc",
            t.order_by(Order::index("a").desc()).limit(3),
            false,
        ),
        query_kind("top2 id", t.order_by(Order::index("id")).limit(2), false),
    ];
    {
        let j = t.query().eq_join("b", "u");
        let (j1, j2) = (j.clone(), j);
        out.push(Kind {
            name: "eq_join b->u",
            shape: Shape::Bag,
            rows: false,
            changes: Box::new(move || j1.changes()),
            rerun: Box::new(move || {
                let j = j2.clone();
                async move { held_from(Shape::Bag, &j.run().await.unwrap()) }.boxed()
            }),
        });
    }
    {
        let (t1, t2) = (t.clone(), t.clone());
        out.push(Kind {
            name: "get 7",
            shape: Shape::Bag,
            rows: true,
            changes: Box::new(move || t1.get(7).changes()),
            rerun: Box::new(move || {
                let t = t2.clone();
                async move {
                    let rows: Vec<Value> = t.get(7).run().await.unwrap().into_iter().collect();
                    held_from(Shape::Bag, &rows)
                }
                .boxed()
            }),
        });
    }
    {
        let (a1, a2) = (t.query().group("b").count(), t.query().group("b").count());
        out.push(Kind {
            name: "group b count",
            shape: Shape::Grouped,
            rows: false,
            changes: Box::new(move || a1.changes()),
            rerun: Box::new(move || {
                let a = a2.clone();
                async move {
                    let gs: Vec<Value> = a
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|g| serde_json::to_value(g).unwrap())
                        .collect();
                    held_from(Shape::Grouped, &gs)
                }
                .boxed()
            }),
        });
    }
    {
        let (a1, a2) = (t.query().sum("a"), t.query().sum("a"));
        out.push(Kind {
            name: "sum a",
            shape: Shape::Value,
            rows: false,
            changes: Box::new(move || a1.changes()),
            rerun: Box::new(move || {
                let a = a2.clone();
                async move {
                    let v = serde_json::to_value(a.await.unwrap()).unwrap();
                    held_from(Shape::Value, &[v])
                }
                .boxed()
            }),
        });
    }
    out
}

/// A random set of options on a kind's feed; returns whether it includes its initial rows.
/// Also describes them.
fn options(
    rng: &mut StdRng,
    kind: &Kind,
    c: Changes,
    cursor: Option<remodel::Cursor>,
) -> (Changes, bool, String) {
    let initial = rng.gen_bool(0.6);
    let mut desc = format!("{} initial={initial}", kind.name);
    let mut c = c.include_initial(initial);
    if rng.gen_bool(0.3) {
        c = c.squash(true);
        desc += " squash";
    }
    if rng.gen_bool(0.2) {
        c = c.include_states(true);
        desc += " states";
    }
    if !initial && kind.rows && rng.gen_bool(0.3) {
        if let Some(cur) = cursor {
            c = c.resume_from(cur);
            desc += " resume";
        }
    }
    (c, initial, desc)
}

/// Polls `fut` at most `polls` times, then drops it (the result, if it came, is returned).
async fn poll_n<F: std::future::Future + Unpin>(mut fut: F, polls: usize) -> Option<F::Output> {
    for _ in 0..polls {
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.poll_unpin(cx))).await;
        if let std::task::Poll::Ready(out) = polled {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// What `db.stats()` counts open: feeds and their groups (shared results with their
/// routes), in the database and per table.
async fn open_feeds(db: &Database) -> (u64, Vec<(String, u64)>) {
    let rows = db.stats().run().await.unwrap();
    let open = |r: &Value| r["feeds"].as_u64().unwrap() + r["feed_groups"].as_u64().unwrap();
    let total = open(&rows[0]);
    // Table rows only (PostgreSQL adds a `postgres` row).
    let tables = rows[1..]
        .iter()
        .filter(|r| r["type"] == "table")
        .map(|r| (r["table"].as_str().unwrap().to_string(), open(r)))
        .collect();
    (total, tables)
}

/// Waits (a bounded time) until `db.stats()` counts no open feed and no group (a group left
/// behind would keep its routes, and every write would still visit it): openings cancelled
/// on a blocking thread finish there and drop their feed.
async fn assert_no_feeds_left(db: &Database, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (total, tables) = open_feeds(db).await;
        if total == 0 && tables.iter().all(|(_, n)| *n == 0) {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: feeds or groups still counted open after every feed was dropped: total {total}, tables {tables:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The time of `n` single inserts into table `x` (no feed watches it) then `n` into `t`
/// (keys past the watched ones, deleted again).
async fn time_inserts(db: &Database, n: i64, base: i64) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        db.table("t")
            .insert(json!({"id": 10_000 + base + i, "a": 100, "b": 9}))
            .await
            .unwrap();
    }
    let took = start.elapsed();
    db.table("t")
        .between(
            Bound::Included(json!(10_000 + base)),
            Bound::Excluded(json!(10_000 + base + n)),
        )
        .delete()
        .await
        .unwrap();
    took
}

// ---------------------------------------------------------------------------------------------
// 1 + 2: cancelled opens, survivors checked against the query re-run
// ---------------------------------------------------------------------------------------------

struct Survivor {
    kind: usize,
    desc: String,
    initial: bool,
    task: tokio::task::JoinHandle<(Vec<Result<Change, Error>>, Feed)>,
}

/// Reads `feed` until `stop`, then until it has been idle for a while.
fn consume(
    mut feed: Feed,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Result<Change, Error>>, Feed)> {
    tokio::spawn(async move {
        let mut items = Vec::new();
        loop {
            let idle = if stop.load(Ordering::Relaxed) {
                Duration::from_millis(300)
            } else {
                Duration::from_millis(100)
            };
            match tokio::time::timeout(idle, feed.next()).await {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        (items, feed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_opens_leave_no_feeds_and_survivors_rebuild_the_query() {
    tokio::time::timeout(LIMIT, cancelled_opens())
        .await
        .expect("hang: the test took over 30 s");
}

async fn cancelled_opens() {
    let s = seed("cancelled_opens");
    let mut rng = StdRng::seed_from_u64(s);
    let db = setup(&mut rng).await;
    let n_timed = if on_pg() { 200 } else { 2_000 };
    let before = time_inserts(&db, n_timed, 0).await;
    let kinds = Arc::new(kinds(&db));
    let stop = Arc::new(AtomicBool::new(false));
    let stop_readers = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers = spawn_writers(&db, s, 8, stop.clone(), done.clone());
    let mut survivors: Vec<Survivor> = Vec::new();
    let mut aborted = Vec::new();
    let (mut cancelled, mut opened, mut errors) = (0u32, 0u32, 0u32);
    let mut cursor = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let ki = rng.gen_range(0..kinds.len());
        let kind = &kinds[ki];
        let (c, initial, desc) = options(&mut rng, kind, (kind.changes)(), cursor);
        let opening = c.into_future();
        let outcome = match rng.gen_range(0..4) {
            0 => {
                let us = rng.gen_range(0..2_000);
                tokio::time::timeout(Duration::from_micros(us), opening)
                    .await
                    .ok()
            }
            1 => poll_n(opening, rng.gen_range(1..5)).await,
            _ => Some(
                tokio::time::timeout(LIMIT, opening)
                    .await
                    .unwrap_or_else(|_| panic!("opening {desc} hung")),
            ),
        };
        match outcome {
            None => cancelled += 1,
            Some(Err(e)) => {
                // A resume from a cursor may expire; nothing else may fail.
                assert!(
                    matches!(e, Error::CursorExpired { .. }),
                    "opening {desc} failed: {e:?}"
                );
                errors += 1;
            }
            Some(Ok(feed)) => {
                opened += 1;
                if kind.rows && cursor.is_none() {
                    cursor = feed.snapshot_cursor();
                }
                match rng.gen_range(0..3) {
                    0 => drop(feed),
                    1 => {
                        // Dropped while its consumer waits in next().
                        let h = consume(feed, stop_readers.clone());
                        aborted.push((h, rng.gen_range(0..50)));
                    }
                    _ => survivors.push(Survivor {
                        kind: ki,
                        desc,
                        initial,
                        task: consume(feed, stop_readers.clone()),
                    }),
                }
            }
        }
        // Abort consumers whose time has come.
        aborted.retain_mut(|(h, left): &mut (tokio::task::JoinHandle<_>, u32)| {
            if *left == 0 {
                h.abort();
                false
            } else {
                *left -= 1;
                true
            }
        });
    }
    for (h, _) in aborted {
        h.abort();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        tokio::time::timeout(LIMIT, w)
            .await
            .expect("writer hung")
            .unwrap();
    }
    let writes = done.load(Ordering::Relaxed);
    eprintln!(
        "{writes} writes; opens: {cancelled} cancelled, {opened} opened, {errors} failed; {} survivors",
        survivors.len()
    );
    assert!(writes > 100, "writers made only {writes} writes in 3 s");
    // A sentinel write after which every survivor has caught up once idle.
    stop_readers.store(true, Ordering::Relaxed);
    let mut checked = 0;
    for sv in survivors {
        let (items, feed) = tokio::time::timeout(LIMIT, sv.task)
            .await
            .unwrap_or_else(|_| panic!("consumer of {} hung", sv.desc))
            .unwrap();
        let kind = &kinds[sv.kind];
        if let Some(Err(e)) = items.iter().find(|i| i.is_err()) {
            assert!(
                matches!(e, Error::FeedOverflow { .. }),
                "survivor {} ended with {e:?}",
                sv.desc
            );
            drop(feed);
            continue;
        }
        if !sv.initial {
            drop(feed);
            continue;
        }
        let mut held = Held::new();
        for c in items.iter().map(|i| i.as_ref().unwrap()) {
            if c.state().is_some() {
                continue;
            }
            if let Err(e) = apply(&mut held, kind.shape, c) {
                panic!("survivor {}: {e} at {}", sv.desc, c.to_json());
            }
        }
        let expected = (kind.rerun)().await;
        assert_eq!(
            held,
            expected,
            "survivor {}: its items do not rebuild the query ({} items)",
            sv.desc,
            items.len()
        );
        checked += 1;
        drop(feed);
    }
    eprintln!("{checked} survivors checked against the query");
    assert_no_feeds_left(&db, "after churn").await;
    let after = time_inserts(&db, n_timed, n_timed).await;
    eprintln!("{n_timed} inserts: {before:?} before the churn, {after:?} after");
    assert!(
        after < before * 3 + Duration::from_millis(300),
        "writes slowed down after the churn: {before:?} -> {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3: never-read feeds, and drops while feeds open
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_never_read_feeds_do_not_slow_writers() {
    tokio::time::timeout(LIMIT, never_read())
        .await
        .expect("hang: the test took over 30 s");
}

async fn never_read() {
    let s = seed("never_read");
    let mut rng = StdRng::seed_from_u64(s);
    let db = setup(&mut rng).await;
    let n = if on_pg() { 200 } else { 1_000 };
    let run = |db: Database, base: u64| async move {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let ws = spawn_writers(&db, s ^ base, 8, stop.clone(), done.clone());
        let start = Instant::now();
        while done.load(Ordering::Relaxed) < n && start.elapsed() < Duration::from_secs(8) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        for w in ws {
            tokio::time::timeout(LIMIT, w)
                .await
                .expect("writer hung")
                .unwrap();
        }
        (done.load(Ordering::Relaxed), took)
    };
    let (w0, before) = run(db.clone(), 1).await;
    let kinds = kinds(&db);
    let mut feeds = Vec::new();
    for i in 0..200 {
        let kind = &kinds[i % kinds.len()];
        let (c, _, _) = options(&mut rng, kind, (kind.changes)(), None);
        let c = c.queue_size(rng.gen_range(1..20));
        feeds.push(
            tokio::time::timeout(LIMIT, c)
                .await
                .expect("open hung")
                .unwrap(),
        );
    }
    let (w1, after) = run(db.clone(), 2).await;
    eprintln!(
        "{n} writes: {w0} in {before:?} without feeds, {w1} in {after:?} with 200 unread feeds"
    );
    assert!(
        w1 >= n,
        "writers made only {w1} of {n} writes in 8 s with 200 unread feeds"
    );
    assert!(
        after < before * 5 + Duration::from_millis(500),
        "200 never-read feeds slowed writers: {before:?} -> {after:?}"
    );
    // Every feed overflowed at most into one item per read, then goes on.
    for f in &mut feeds {
        match tokio::time::timeout(Duration::from_millis(200), f.next()).await {
            Err(_) => {} // nothing it watches was written
            Ok(Some(Ok(_))) | Ok(Some(Err(Error::FeedOverflow { .. }))) => {}
            other => panic!("a never-read feed gave {other:?}"),
        }
    }
    drop(feeds);
    assert_no_feeds_left(&db, "after 200 unread feeds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_racing_drop_index_and_drop_table_end_typed_never_hang() {
    tokio::time::timeout(LIMIT, drops_while_opening())
        .await
        .expect("hang: the test took over 30 s");
}

async fn drops_while_opening() {
    let s = seed("drops_while_opening");
    let mut rng = StdRng::seed_from_u64(s);
    let db = setup(&mut rng).await;
    let rounds = if on_pg() { 4 } else { 40 };
    let (mut ok, mut failed) = (0, 0);
    for round in 0..rounds {
        let name = format!("d{round}");
        db.create_table(&name).await.unwrap();
        let d = db.table(&name);
        d.create_index("a", IndexSpec::field("a")).await.unwrap();
        let docs: Vec<Value> = (0..200).map(|k| doc(&mut rng, k, "seed")).collect();
        d.insert_many(docs).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // Writers of this table, ignoring its drop.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (d, stop) = (d.clone(), stop.clone());
                let mut r = StdRng::seed_from_u64(s ^ (round * 16 + w));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let k = r.gen_range(0..200);
                        let _ = d
                            .insert(json!({"id": k, "a": r.gen_range(0..8)}))
                            .conflict(Conflict::Replace)
                            .await;
                        // Once the table is gone, writes fail at once: let others run.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let openers: Vec<_> = (0..16)
            .map(|i| {
                let d = d.clone();
                let initial = rng.gen_bool(0.5);
                let delay = rng.gen_range(0..3_000);
                let desc = format!("kind {} initial={initial}", i % 6);
                let c = match i % 6 {
                    0 => d.changes(),
                    1 => d.get_all([3]).index("a").changes(),
                    2 => d.order_by(Order::index("a")).limit(3).changes(),
                    3 => d
                        .between(Bound::Included(json!(1)), Bound::Excluded(json!(4)))
                        .index("a")
                        .group("b")
                        .count()
                        .changes(),
                    4 => d.query().eq_join("a", "u").changes(),
                    _ => d.get(5).changes(),
                }
                .include_initial(initial);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(delay)).await;
                    match tokio::time::timeout(Duration::from_secs(10), c).await {
                        Err(_) => panic!("opening {desc} hung"),
                        Ok(Err(e)) => {
                            assert!(
                                matches!(
                                    e,
                                    Error::NoSuchTable(_)
                                        | Error::NoSuchIndex { .. }
                                        | Error::FeedAborted(_)
                                ),
                                "opening {desc} failed with {e:?}"
                            );
                            false
                        }
                        Ok(Ok(mut feed)) => {
                            // A working feed: it ends with FeedAborted once the table goes.
                            loop {
                                match tokio::time::timeout(Duration::from_secs(10), feed.next())
                                    .await
                                {
                                    Err(_) => panic!(
                                        "feed {desc} never ended after its table was dropped"
                                    ),
                                    Ok(Some(Ok(_))) | Ok(Some(Err(Error::FeedOverflow { .. }))) => {
                                    }
                                    Ok(Some(Err(Error::FeedAborted(_)))) => break,
                                    Ok(Some(Err(e))) => panic!("feed {desc} gave {e:?}"),
                                    Ok(None) => panic!("feed {desc} ended without FeedAborted"),
                                }
                            }
                            true
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..1_500))).await;
        d.drop_index("a").await.unwrap();
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..1_500))).await;
        db.drop_table(&name).await.unwrap();
        for o in openers {
            if tokio::time::timeout(LIMIT, o)
                .await
                .expect("opener hung")
                .unwrap()
            {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            tokio::time::timeout(LIMIT, w)
                .await
                .expect("writer hung")
                .unwrap();
        }
    }
    eprintln!("{ok} opens gave a feed that ended with FeedAborted, {failed} failed typed");
    assert_no_feeds_left(&db, "after the drops").await;
}
