//! Adversarial tests of the PostgreSQL shared history (`postgres/archive.rs`): a feed cursor
//! taken in one app process resumes in any other, including one started later, exactly
//! (none missed, none twice, same cursors and documents), or fails with a typed error
//! (`CursorExpired`, or `InvalidFeedOption` for a cursor ahead of the database), never with a
//! silently shorter stream.
//!
//! A `Database::connect` handle stands for an app process (own replica, own slot). The
//! oracle is always a live feed of the same query opened before the writes: a resumed feed's
//! items must equal the live feed's items after the cursor.
//!
//! Set `REMODEL_HISTORY_SEED` to replay a random run (the seed is printed).
#![cfg(feature = "postgres")]

use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use remodel::postgres::{Connect, TestCluster, TestDatabase};
use remodel::{field, Change, ChangeLogRetention, Conflict, Cursor, Database, Error, Feed, Value};
use serde_json::json;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const LOCK_KEY: &str = "remodel:remodel:archiver";

async fn database(test: &str) -> Option<TestDatabase> {
    let cluster = TestCluster::shared_or_skip(test)?;
    Some(cluster.create_database().await.expect("a test database"))
}

async fn connect(pg: &TestDatabase) -> Database {
    Database::connect(pg.url())
        .await
        .expect("a process connects")
}

/// A test database with one process on it, which made table `t` and archives.
async fn archiving_process(test: &str) -> Option<(TestDatabase, Database)> {
    let pg = database(test).await?;
    let a = connect(&pg).await;
    a.create_table("t").await.unwrap();
    archiver(&[&a]).await;
    Some((pg, a))
}

fn seed(test: &str) -> u64 {
    let seed = std::env::var("REMODEL_HISTORY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: REMODEL_HISTORY_SEED={seed}");
    seed
}

/// A feed item as compared: where it is, what kind, and its documents as JSON text (so that
/// key order and number forms count too).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Item {
    cursor: Cursor,
    seq: Option<u64>,
    kind: String,
    old: Option<String>,
    new: Option<String>,
}

fn item(c: &Change) -> Item {
    Item {
        cursor: c.cursor().expect("a change item has a cursor"),
        seq: c.seq(),
        kind: format!("{:?}", c.kind()),
        old: c.old_val().map(|v| serde_json::to_string(v).unwrap()),
        new: c.new_val().map(|v| serde_json::to_string(v).unwrap()),
    }
}

/// The `stats` row of the PostgreSQL backend.
async fn pg_stats(db: &Database) -> Value {
    let rows = db.stats().run().await.unwrap();
    rows.into_iter()
        .find(|r| r["type"] == "postgres")
        .expect("a postgres stats row")
}

/// Waits until one of `dbs` archives; returns its index.
async fn archiver(dbs: &[&Database]) -> usize {
    let begin = Instant::now();
    loop {
        for (i, db) in dbs.iter().enumerate() {
            if pg_stats(db).await["archiving"] == true {
                return i;
            }
        }
        assert!(begin.elapsed() < WAIT, "no process archives");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the history (as `db`, archiving, wrote it) reaches `seq`.
async fn archived_past(db: &Database, seq: u64) {
    let begin = Instant::now();
    loop {
        let s = pg_stats(db).await;
        let upto = u64::from_str_radix(s["archived_upto"].as_str().unwrap(), 16).unwrap();
        if upto >= seq {
            return;
        }
        assert!(begin.elapsed() < WAIT, "the history does not reach {seq:x}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The history's `(upto, floor)`, read in PostgreSQL.
async fn meta(pg: &TestDatabase) -> (u64, u64) {
    let client = pg.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT upto, floor FROM remodel.history_meta WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
}

/// The items of `feed` until `last` says so (within the wait).
async fn read_until(feed: &mut Feed, mut last: impl FnMut(&Item) -> bool) -> Vec<Item> {
    let mut items = Vec::new();
    loop {
        let next = tokio::time::timeout(WAIT, feed.next())
            .await
            .expect("an item within the wait")
            .expect("the feed goes on")
            .expect("an item, not an error");
        let i = item(&next);
        let done = last(&i);
        items.push(i);
        if done {
            return items;
        }
    }
}

/// The items of `feed` until none comes for a moment.
async fn drain(feed: &mut Feed, idle: Duration) -> Vec<Item> {
    let mut items = Vec::new();
    while let Ok(next) = tokio::time::timeout(idle, feed.next()).await {
        items.push(item(&next.expect("the feed goes on").expect("an item")));
    }
    items
}

/// One item of `feed` (within the wait), then every item queued by now.
async fn take_ready(feed: &mut Feed) -> Vec<Item> {
    let mut items = read_until(feed, |_| true).await;
    while let Some(next) = feed.next().now_or_never() {
        items.push(item(&next.expect("the feed goes on").expect("an item")));
    }
    items
}

/// Reads a resumed feed: exactly `n` items (each within the wait), then checks that nothing
/// more is queued. Returns what it read, or the error the feed ended with.
async fn read_resumed(feed: &mut Feed, n: usize) -> Result<Vec<Item>, String> {
    let mut items = Vec::with_capacity(n);
    while items.len() < n {
        match tokio::time::timeout(WAIT, feed.next()).await {
            Err(_) => return Err(format!("only {} of {n} items came", items.len())),
            Ok(None) => return Err(format!("the feed ended after {} of {n}", items.len())),
            Ok(Some(Err(e))) => return Err(format!("error after {} of {n}: {e}", items.len())),
            Ok(Some(Ok(c))) => items.push(item(&c)),
        }
    }
    // Anything replayed is queued at once: one more now is one too many.
    tokio::task::yield_now().await;
    if let Some(extra) = feed.next().now_or_never() {
        return Err(format!(
            "an item more than the {n} expected: {:?}",
            extra.map(|r| r.map(|c| item(&c)))
        ));
    }
    Ok(items)
}

/// The live items after `cursor`.
fn after(live: &[Item], cursor: Cursor) -> Vec<Item> {
    live.iter().filter(|i| i.cursor > cursor).cloned().collect()
}

/// The pid of the session holding the archiver's lock, if any.
async fn archiver_pid(admin: &tokio_postgres_client::Client) -> Option<i32> {
    admin
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)",
            &[&LOCK_KEY],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

use remodel::postgres::tokio_postgres as tokio_postgres_client;

fn expired(r: &Result<Feed, Error>) -> bool {
    matches!(r, Err(Error::CursorExpired { .. }))
}

fn describe(r: &Result<Feed, Error>) -> String {
    match r {
        Ok(_) => "a feed".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// The row feeds of the oracle: (name, how to open it on a handle).
type Opener = fn(&Database) -> remodel::Changes;

fn oracle_feeds() -> Vec<(&'static str, Opener)> {
    vec![
        ("t1 table", |db| db.table("t1").changes()),
        ("t2 table", |db| db.table("t2").changes()),
        ("t3 table", |db| db.table("t3").changes()),
        ("t1 filter n > 500", |db| {
            db.table("t1").filter(field("n").gt(500)).changes()
        }),
        ("t1 get 7", |db| db.table("t1").get(7).changes()),
        ("t1 between [10, 20)", |db| {
            db.table("t1")
                .between(Bound::Included(json!(10)), Bound::Excluded(json!(20)))
                .changes()
        }),
        ("t2 get_all [3, 5, 3]", |db| {
            db.table("t2").get_all([3, 5, 3]).changes()
        }),
        ("t3 pluck id, n", |db| {
            db.table("t3").query().pluck(["id", "n"]).changes()
        }),
        ("t2 filter tag and pluck", |db| {
            db.table("t2")
                .filter(field("tag").eq("odd"))
                .without(["by"])
                .changes()
        }),
    ]
}

const TABLES: [&str; 3] = ["t1", "t2", "t3"];
const KEYS: u64 = 30;

fn doc(rng: &mut StdRng, key: u64, by: (usize, usize)) -> Value {
    let n = rng.gen_range(0..1000);
    let tag = if n % 2 == 1 { "odd" } else { "even" };
    match rng.gen_range(0..6) {
        0 => json!({"id": key, "n": n, "tag": tag, "by": [by.0, by.1],
                    "s": "ünï©ødé ✓ 🚀 \"q\" \\ \n\t", "nested": {"a": [1, {"b": [null, true, 1.5]}]}}),
        _ => json!({"id": key, "n": n, "tag": tag, "by": [by.0, by.1]}),
    }
}

/// Random writes of one task until `ops` are done.
async fn random_writes(
    db: Database,
    task: usize,
    seed: u64,
    ops: usize,
    marks: Arc<Mutex<Vec<Cursor>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..ops {
        let table = TABLES[rng.gen_range(0..TABLES.len())];
        let t = db.table(table);
        let key = rng.gen_range(0..KEYS);
        let _ = match rng.gen_range(0..10) {
            0..=2 => t
                .insert(doc(&mut rng, key, (task, i)))
                .conflict(Conflict::Replace)
                .await
                .map(|_| ()),
            3 | 4 => t
                .get(key)
                .update(json!({"n": rng.gen_range(0..1000), "u": [task, i]}))
                .await
                .map(|_| ()),
            5 => t.get(key).delete().await.map(|_| ()),
            6 => {
                let n = rng.gen_range(2..8);
                let docs: Vec<Value> = (0..n)
                    .map(|j| doc(&mut rng, (key + j * 3) % KEYS, (task, i)))
                    .collect();
                t.insert_many(docs)
                    .conflict(Conflict::Replace)
                    .await
                    .map(|_| ())
            }
            7 => {
                // One commit across tables.
                let (a, b) = (doc(&mut rng, key, (task, i)), doc(&mut rng, key, (task, i)));
                db.batch()
                    .insert_with("t1", a, Conflict::Replace)
                    .insert_with("t2", b, Conflict::Replace)
                    .delete("t3", (key + 1) % KEYS)
                    .await
                    .map(|_| ())
            }
            8 => {
                // A write that selects its rows at commit.
                let lo = rng.gen_range(0..900);
                t.filter(field("n").gt(lo).and(field("n").lt(lo + 40)))
                    .delete()
                    .await
                    .map(|_| ())
            }
            _ => {
                marks.lock().unwrap().push(db.position());
                Ok(())
            }
        };
    }
}

/// Resumes every cursor on every oracle feed in `db`, concurrently; returns the failures.
async fn resume_all(
    db: &Database,
    who: &str,
    cursors: &[Cursor],
    live: &[Vec<Item>],
) -> Vec<String> {
    let feeds = oracle_feeds();
    let mut jobs = Vec::new();
    for &cursor in cursors {
        for (f, (name, open)) in feeds.iter().enumerate() {
            let expected = after(&live[f], cursor);
            let changes = open(db).resume_from(cursor);
            jobs.push(async move {
                let mut feed = match changes.await {
                    Ok(feed) => feed,
                    Err(e) => return Some(format!("{who}: {name} from {cursor}: refused: {e:?}")),
                };
                match read_resumed(&mut feed, expected.len()).await {
                    Ok(got) if got == expected => None,
                    Ok(got) => {
                        let first = got
                            .iter()
                            .zip(&expected)
                            .position(|(g, e)| g != e)
                            .unwrap_or(got.len().min(expected.len()));
                        Some(format!(
                            "{who}: {name} from {cursor}: differs at item {first}: got {:?}, expected {:?}",
                            got.get(first),
                            expected.get(first)
                        ))
                    }
                    Err(e) => Some(format!(
                        "{who}: {name} from {cursor} ({} expected): {e}",
                        expected.len()
                    )),
                }
            });
        }
    }
    join_all(jobs).await.into_iter().flatten().collect()
}

/// Random writes of 4 tasks in 2 processes, with table, filtered, point, between, get_all,
/// pluck and without feeds watching live in a third; then cursors taken at random (items of
/// every table, and `Database::position` marks taken mid-stream) resume in processes started
/// after all of it, on every feed: each resumed feed equals the live one after the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cursors_resume_exactly_in_processes_started_later() {
    let Some(pg) = database("random_cursors_resume_exactly").await else {
        return;
    };
    let seed = seed("random_cursors_resume_exactly");
    let a = connect(&pg).await;
    for t in TABLES {
        a.create_table(t).await.unwrap();
    }
    let b = connect(&pg).await;
    let w = connect(&pg).await;
    archiver(&[&a, &b, &w]).await;
    // A first change, so that the `position()` mark below is a change's (a position taken
    // before any change is refused, a known bug).
    a.table("t1").insert(json!({"id": "~start"})).await.unwrap();
    w.sync().await.unwrap();
    let feeds = oracle_feeds();
    let mut live_feeds = Vec::new();
    for (_, open) in &feeds {
        live_feeds.push(open(&w).await.unwrap());
    }
    let start = w.position();
    let marks = Arc::new(Mutex::new(vec![start]));
    let mut tasks = Vec::new();
    for (task, db) in [&a, &a, &b, &b].into_iter().enumerate() {
        tasks.push(tokio::spawn(random_writes(
            db.clone(),
            task,
            seed.wrapping_add(task as u64),
            60,
            marks.clone(),
        )));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The end of every table feed: a sentinel row each.
    for t in TABLES {
        w.table(t)
            .insert(json!({"id": "~end", "n": 999}))
            .await
            .unwrap();
    }
    let mut live: Vec<Vec<Item>> = Vec::new();
    for (f, feed) in live_feeds.iter_mut().enumerate() {
        let items = if f < 3 {
            read_until(feed, |i| {
                i.new.as_deref().is_some_and(|n| n.contains("\"~end\""))
            })
            .await
        } else {
            drain(feed, Duration::from_millis(300)).await
        };
        live.push(items);
    }
    for (f, items) in live.iter().enumerate() {
        assert!(
            items.windows(2).all(|p| p[0].cursor < p[1].cursor),
            "live feed {} out of order",
            feeds[f].0
        );
    }
    let t1 = &live[0];
    assert!(t1.len() > 40, "too few changes: {}", t1.len());
    // Cursors: random items of each table feed, the first and the last, and the marks.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut cursors: Vec<Cursor> = marks.lock().unwrap().clone();
    for items in &live[..3] {
        cursors.push(items[0].cursor);
        cursors.push(items[items.len() - 1].cursor);
        for _ in 0..3 {
            cursors.push(items[rng.gen_range(0..items.len())].cursor);
        }
    }
    // Multi-item changes (get_all with a key twice): a cursor between the two items.
    if let Some(dup) = live[6].windows(2).find(|p| p[0].seq == p[1].seq) {
        cursors.push(dup[0].cursor);
    }
    cursors.sort();
    cursors.dedup();
    // Processes started after it all: the history serves what their logs lack.
    let late = connect(&pg).await;
    let later = connect(&pg).await;
    let mut failures = resume_all(&late, "late", &cursors, &live).await;
    failures.extend(resume_all(&later, "later", &cursors, &live).await);
    // And the writers, whose own logs hold it all, agree.
    failures.extend(resume_all(&b, "b", &cursors[..cursors.len().min(6)], &live).await);
    assert!(
        failures.is_empty(),
        "{} of {} resumes wrong (seed {seed}):\n{}",
        failures.len(),
        cursors.len() * feeds.len() * 2,
        failures.join("\n")
    );
    eprintln!(
        "{} cursors resumed on {} feeds in 2 late processes; {} live table changes",
        cursors.len(),
        feeds.len(),
        live[..3].iter().map(Vec::len).sum::<usize>()
    );
}

/// The archiving process goes, again and again, in the middle of a stream of writes (closed,
/// dropped, or, when it is the watching process, its archiver session killed in
/// PostgreSQL): another takes over where the history stops. Every cursor taken before each
/// takeover resumes exactly in a process started after the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_resume_exactly_across_repeated_archiver_takeovers() {
    let Some(pg) = database("cursors_resume_exactly_across_takeovers").await else {
        return;
    };
    let admin = pg.connect().await.unwrap();
    let first = connect(&pg).await;
    first.create_table("t").await.unwrap();
    archiver(&[&first]).await;
    // The watcher starts after the first archiver took the lock.
    let w = connect(&pg).await;
    let mut live = w.table("t").changes().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // A stream of writes from the watcher's process, all along.
    let background = {
        let (w, stop) = (w.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = w.table("t");
                match i % 3 {
                    0 => t
                        .insert(json!({"id": format!("w{i}"), "i": i}))
                        .await
                        .unwrap(),
                    1 => t
                        .get(format!("w{}", i - 1))
                        .update(json!({"touched": i}))
                        .await
                        .unwrap(),
                    _ => t.get(format!("w{}", i - 2)).delete().await.unwrap(),
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            i
        })
    };
    let mut handles: Vec<Option<Database>> = vec![Some(first)];
    let mut seen: Vec<Item> = Vec::new();
    let mut cursors: Vec<Cursor> = Vec::new();
    let mut kinds = Vec::new();
    for round in 0..8 {
        // A spare process that can take over; the history reaches past its start (else a
        // takeover by it would rightly expire older cursors: its ring starts there).
        let spare = connect(&pg).await;
        spare
            .table("t")
            .insert(json!({"id": format!("spare{round}")}))
            .await
            .unwrap();
        let mark = spare.position().seq();
        handles.push(Some(spare));
        let alive: Vec<&Database> = handles.iter().flatten().chain([&w]).collect();
        let leader = archiver(&alive).await;
        archived_past(alive[leader], mark).await;
        // A cursor from before this takeover (the newest item so far).
        seen.extend(take_ready(&mut live).await);
        cursors.push(seen.last().expect("items so far").cursor);
        let old_pid = archiver_pid(&admin).await.expect("an archiver session");
        if leader == alive.len() - 1 {
            // The watcher archives: end its archiver session, not the process.
            admin
                .execute("SELECT pg_terminate_backend($1)", &[&old_pid])
                .await
                .unwrap();
            kinds.push("session killed");
        } else {
            let index = handles
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| std::ptr::eq(h, alive[leader])))
                .unwrap();
            let db = handles[index].take().unwrap();
            // Writes of its own right before it goes: some not flushed yet.
            for i in 0..20 {
                db.table("t")
                    .insert(json!({"id": format!("r{round}-{i}")}))
                    .await
                    .unwrap();
            }
            if round % 2 == 0 {
                db.close().await.unwrap();
                kinds.push("closed");
            } else {
                kinds.push("dropped");
            }
            drop(db);
        }
        // Another session takes the lock.
        let begin = Instant::now();
        loop {
            if let Some(pid) = archiver_pid(&admin).await {
                if pid != old_pid {
                    break;
                }
            }
            assert!(begin.elapsed() < WAIT, "no takeover in round {round}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = background.await.unwrap();
    w.table("t").insert(json!({"id": "~end"})).await.unwrap();
    seen.extend(
        read_until(&mut live, |i| {
            i.new.as_deref().is_some_and(|n| n.contains("~end"))
        })
        .await,
    );
    let late = connect(&pg).await;
    let mut failures = Vec::new();
    for (k, &cursor) in cursors.iter().enumerate() {
        let expected = after(&seen, cursor);
        match late.table("t").changes().resume_from(cursor).await {
            Ok(mut feed) => match read_resumed(&mut feed, expected.len()).await {
                Ok(got) if got == expected => {}
                Ok(got) => failures.push(format!(
                    "cursor {k} ({cursor}, before a takeover by `{}`): {} items differ from the {} live",
                    kinds[k],
                    got.iter().zip(&expected).filter(|(g, e)| g != e).count(),
                    expected.len()
                )),
                Err(e) => failures.push(format!("cursor {k} ({cursor}): {e}")),
            },
            Err(e) => failures.push(format!(
                "cursor {k} ({cursor}, before a takeover by `{}`): refused: {e:?}",
                kinds[k]
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} takeovers ({kinds:?}) under {writes} background writes; {} live items",
        kinds.len(),
        seen.len()
    );
}

/// Cursors that cannot resume are refused with a typed error, in an old process and in one
/// started later: made-up ones (before anything, far ahead), and cursors of a table dropped
/// (and made again) since, or of a table made after the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_that_cannot_resume_are_refused_typed() {
    let Some(pg) = database("cursors_that_cannot_resume_are_refused").await else {
        return;
    };
    let a = connect(&pg).await;
    a.create_table("t").await.unwrap();
    a.create_table("keep").await.unwrap();
    let b = connect(&pg).await;
    archiver(&[&a, &b]).await;
    let mut feed = a.table("t").changes().await.unwrap();
    for i in 0..5 {
        a.table("t").insert(json!({"id": i})).await.unwrap();
    }
    let items = read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":4}")).await;
    let old_t = items[1].cursor;
    let before_u = a.position();
    a.table("keep").insert(json!({"id": 1})).await.unwrap();
    let keep_cursor = a.position();
    // `t` dropped and made again, `u` made after the cursors.
    a.drop_table("t").await.unwrap();
    a.create_table("t").await.unwrap();
    a.create_table("u").await.unwrap();
    a.table("t").insert(json!({"id": "new"})).await.unwrap();
    a.table("u").insert(json!({"id": "u"})).await.unwrap();
    let late = connect(&pg).await;
    let ahead = |c: Cursor| -> Cursor { format!("{:x}-0", c.seq() + (1 << 20)).parse().unwrap() };
    let mut failures = Vec::new();
    for (who, db) in [("a (since before)", &a), ("b", &b), ("late", &late)] {
        let checks: Vec<(&str, remodel::Changes, Cursor, &str)> = vec![
            (
                "1-0",
                db.table("t").changes(),
                "1-0".parse().unwrap(),
                "expired",
            ),
            (
                "0-0",
                db.table("keep").changes(),
                "0-0".parse().unwrap(),
                "expired",
            ),
            (
                "0-ffffffff",
                db.table("keep").get(1).changes(),
                "0-ffffffff".parse().unwrap(),
                "expired",
            ),
            (
                "far future",
                db.table("t").changes(),
                "ffffffffffffffff-ffffffff".parse().unwrap(),
                "ahead",
            ),
            // Past this process's last change (a place between two processes' last changes
            // is a place like any other: it resumes what came after it, nothing).
            (
                "just ahead",
                db.table("keep").changes(),
                ahead(db.position()),
                "ahead",
            ),
            (
                "old table t, dropped and made again",
                db.table("t").changes(),
                old_t,
                "expired",
            ),
            (
                "old table t, as a point feed",
                db.table("t").get("new").changes(),
                old_t,
                "expired",
            ),
            (
                "a cursor of `keep` from before `u` was made, on `u`",
                db.table("u").changes(),
                before_u,
                "expired",
            ),
            (
                "a cursor of `keep` after t was made again... before: on t",
                db.table("t").filter(field("id").eq("new")).changes(),
                keep_cursor,
                "expired",
            ),
        ];
        for (what, changes, cursor, want) in checks {
            let r = changes.resume_from(cursor).await;
            let ok = match want {
                "expired" => expired(&r),
                _ => matches!(r, Err(Error::InvalidFeedOption(_))),
            };
            if !ok {
                failures.push(format!(
                    "{who}: {what} ({cursor}): wanted {want}, got {}",
                    describe(&r)
                ));
            }
        }
        // A cursor of `keep` taken before the drop resumes `keep` exactly (the other
        // tables' DDL is no reason to refuse it).
        let mut f = db
            .table("keep")
            .changes()
            .resume_from(before_u)
            .await
            .unwrap();
        let got = read_resumed(&mut f, 1).await.unwrap();
        assert_eq!(got[0].new.as_deref(), Some("{\"id\":1}"), "{who}");
        // The new table's own cursors resume.
        let mut f = db.table("t").changes().resume_from(keep_cursor).await;
        if let Ok(f) = f.as_mut() {
            failures.push(format!(
                "{who}: the recreated table resumed from before its making: {:?}",
                drain(f, Duration::from_millis(200)).await
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Resumes `cursor` on `t`'s table feed in `db`: `Ok(true)` exact, `Ok(false)` expired; any
/// other outcome (a shorter or different stream, another error) is `Err`.
async fn exact_or_expired(
    db: &Database,
    t: &str,
    cursor: Cursor,
    live: &[Item],
) -> Result<bool, String> {
    let expected = after(live, cursor);
    match db.table(t).changes().resume_from(cursor).await {
        Err(Error::CursorExpired { .. }) => Ok(false),
        Err(e) => Err(format!("{cursor}: {e:?}")),
        Ok(mut feed) => match read_resumed(&mut feed, expected.len()).await {
            Ok(got) if got == expected => Ok(true),
            Ok(got) => Err(format!("{cursor}: got {got:?}, expected {expected:?}")),
            Err(e) => Err(format!("{cursor}: {e}")),
        },
    }
}

/// The archiver applies its process's retention to the history (every 10 s): a cursor below
/// the floor then expires, typed, in a process started later; a cursor at or above it
/// resumes exactly. By count (the newest 20 changes stay) and by age (nothing older than
/// 1 s stays), on two databases at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_below_the_retained_history_expire_typed() {
    let (Some(count_pg), Some(age_pg)) = (
        database("cursors_below_the_retained_history_expire").await,
        database("cursors_below_the_retained_history_expire").await,
    ) else {
        return;
    };
    let by_count = async {
        let r = Connect::new(count_pg.url())
            .retention(ChangeLogRetention {
                max_changes: Some(20),
                max_age: None,
            })
            .open()
            .await
            .unwrap();
        r.create_table("t").await.unwrap();
        archiver(&[&r]).await;
        let (_, floor0) = meta(&count_pg).await;
        let mut feed = r.table("t").changes().await.unwrap();
        for i in 0..150 {
            r.table("t").insert(json!({"id": i})).await.unwrap();
        }
        let live = read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":149}")).await;
        // The retention pass.
        let begin = Instant::now();
        let floor = loop {
            let (_, floor) = meta(&count_pg).await;
            if floor > floor0 {
                break floor;
            }
            assert!(begin.elapsed() < WAIT, "no retention pass");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let kept = live.iter().filter(|i| i.cursor.seq() >= floor).count();
        assert_eq!(kept, 20, "the history keeps the newest 20 changes");
        let late = connect(&count_pg).await;
        let mut failures = Vec::new();
        for (k, i) in live.iter().enumerate() {
            // Every cursor near the floor, and some further.
            if !(k % 17 == 0 || (125..135).contains(&k) || k == live.len() - 1) {
                continue;
            }
            match exact_or_expired(&late, "t", i.cursor, &live).await {
                Ok(resumed) if resumed == (i.cursor.seq() >= floor) => {}
                Ok(resumed) => failures.push(format!(
                    "late: item {k} ({}; floor {floor:x}): resumed {resumed}",
                    i.cursor
                )),
                Err(e) => failures.push(format!("late: item {k}: {e}")),
            }
            // The archiving process: from its own log or the history, or expired.
            if let Err(e) = exact_or_expired(&r, "t", i.cursor, &live).await {
                failures.push(format!("archiver: item {k}: {e}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    };
    let by_age = async {
        let r = Connect::new(age_pg.url())
            .retention(ChangeLogRetention {
                max_changes: None,
                max_age: Some(Duration::from_secs(1)),
            })
            .open()
            .await
            .unwrap();
        r.create_table("t").await.unwrap();
        archiver(&[&r]).await;
        let (_, floor0) = meta(&age_pg).await;
        let mut feed = r.table("t").changes().await.unwrap();
        for i in 0..30 {
            r.table("t").insert(json!({"id": i})).await.unwrap();
        }
        let mut live = read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":29}")).await;
        let begin = Instant::now();
        let floor = loop {
            let (_, floor) = meta(&age_pg).await;
            if floor > floor0 {
                break floor;
            }
            assert!(begin.elapsed() < WAIT, "no retention pass");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            live.iter().all(|i| i.cursor.seq() < floor),
            "all older than 1 s"
        );
        r.table("t").insert(json!({"id": "after"})).await.unwrap();
        live.extend(read_until(&mut feed, |_| true).await);
        let late = connect(&age_pg).await;
        for i in &live[..live.len() - 1] {
            assert_eq!(
                exact_or_expired(&late, "t", i.cursor, &live).await,
                Ok(false),
                "{}",
                i.cursor
            );
        }
        // The newest cursor: no change after it, none before it needed.
        let newest = live.last().unwrap().cursor;
        assert_eq!(exact_or_expired(&late, "t", newest, &live).await, Ok(true));
    };
    tokio::join!(by_count, by_age);
}

/// Documents of every JSON shape go through the history as they were: unicode (astral,
/// combining, right-to-left, escapes, U+2028), deep nesting, big and odd numbers, key
/// order, empty keys, ~100 KB strings and long arrays. The resumed items' JSON text equals
/// the live items'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_documents_go_through_the_history_as_they_were() {
    let Some((pg, a)) = archiving_process("odd_documents_go_through_the_history").await else {
        return;
    };
    let mut feed = a.table("t").changes().await.unwrap();
    a.table("t").insert(json!({"id": "first"})).await.unwrap();
    read_until(&mut feed, |_| true).await;
    let start = a.position();
    let mut deep = json!("bottom");
    for i in 0..60 {
        deep = if i % 2 == 0 {
            json!([deep])
        } else {
            json!({"d": deep})
        };
    }
    let big: String = "ß→🚀ा\u{202e}x\u{2028}".repeat(100_000 / 16);
    let docs = vec![
        json!({"id": "unicode", "s": "𝄞 é é (combining) שלום עולם 🇫🇷 \u{feff} \u{7f} \u{1} \"\\/", "k": "\u{10ffff}"}),
        json!({"id": "order", "z": 1, "a": 2, "m": {"y": 1, "b": 2}, "": "empty key", "é": 0}),
        json!({"id": "numbers", "u": u64::MAX, "i": i64::MIN, "f": 0.1, "e": 1e300, "tiny": 5e-324,
               "neg0": -0.0, "third": 1.0 / 3.0, "whole": 2.0, "big": 12345678901234567890u64}),
        json!({"id": "deep", "v": deep}),
        json!({"id": "big", "s": big}),
        json!({"id": "array", "v": (0..10_000).collect::<Vec<_>>()}),
        json!({"id": ["compound", 1, true, "é"], "n": null}),
        json!({"id": 1.5, "float key": true}),
        json!({"id": -7, "neg key": []}),
        json!({"id": "emptyish", "o": {}, "a": [], "s": ""}),
    ];
    let n = docs.len();
    a.table("t").insert_many(docs.clone()).await.unwrap();
    for d in &docs {
        let mut changed = d.clone();
        changed["again"] = json!("✓ 2");
        a.table("t")
            .get(d["id"].clone())
            .replace(changed)
            .await
            .unwrap();
    }
    a.table("t").get("big").delete().await.unwrap();
    let live = read_until(&mut feed, |i| {
        i.old.as_deref().is_some_and(|o| o.contains(&big[..40])) && i.new.is_none()
    })
    .await;
    assert_eq!(live.len(), 2 * n + 1);
    let late = connect(&pg).await;
    for cursor in [
        start,
        live[0].cursor,
        live[n - 1].cursor,
        live[n + 3].cursor,
    ] {
        let expected = after(&live, cursor);
        let mut f = late.table("t").changes().resume_from(cursor).await.unwrap();
        let got = read_resumed(&mut f, expected.len()).await.unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g, e);
        }
    }
    // A point feed on a compound key, resumed from the history.
    let mut f = late
        .table("t")
        .get(json!(["compound", 1, true, "é"]))
        .changes()
        .resume_from(start)
        .await
        .unwrap();
    let got = read_resumed(&mut f, 2).await.unwrap();
    assert!(got[1].new.as_deref().unwrap().contains("✓ 2"), "{got:?}");
}

/// Many resumes at once in a process started later (more than its connection pool), while
/// other processes go on writing and make and drop other tables and an index of the
/// resumed one; a process with a small change log of its own (its log no longer reaches back:
/// the history serves the rest, the boundary inside its stream); then a resume racing the
/// drop of its table: it delivers every change then `FeedAborted`, or is refused, never
/// fewer changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_resumes_at_once_under_ddl_and_a_small_own_log() {
    let Some((pg, a)) = archiving_process("many_resumes_at_once_under_ddl").await else {
        return;
    };
    // A process whose own log keeps little (segments of 64 changes).
    let small = Connect::new(pg.url())
        .retention(ChangeLogRetention {
            max_changes: Some(5),
            max_age: None,
        })
        .open()
        .await
        .unwrap();
    let mut feed = a.table("t").changes().await.unwrap();
    for round in 0..30 {
        let docs: Vec<Value> = (0..8)
            .map(|j| json!({"id": (round * 8 + j) % 50, "round": round}))
            .collect();
        a.table("t")
            .insert_many(docs)
            .conflict(Conflict::Replace)
            .await
            .unwrap();
        small
            .table("t")
            .get(round % 50)
            .update(json!({"by": "small"}))
            .await
            .unwrap();
    }
    a.table("t").insert(json!({"id": "~mid"})).await.unwrap();
    let mut live = read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":\"~mid\"}")).await;
    let late = connect(&pg).await;
    // Resumes from every 7th item, all at once, with DDL of other tables (and an index of
    // this one) and more writes going on.
    let cursors: Vec<Cursor> = live.iter().step_by(7).map(|i| i.cursor).collect();
    let ddl = {
        let a = a.clone();
        tokio::spawn(async move {
            for k in 0..4 {
                a.create_table(&format!("other{k}")).await.unwrap();
                a.table(format!("other{k}"))
                    .insert(json!({"id": k}))
                    .await
                    .unwrap();
                if k == 1 {
                    a.table("t")
                        .create_index("round", remodel::IndexSpec::field("round"))
                        .await
                        .unwrap();
                }
                a.drop_table(&format!("other{k}")).await.unwrap();
                a.table("t").get(k).update(json!({"ddl": k})).await.unwrap();
            }
            a.table("t").insert(json!({"id": "~end"})).await.unwrap();
        })
    };
    let resumes = join_all(cursors.iter().map(|&c| {
        let late = late.clone();
        async move { (c, late.table("t").changes().resume_from(c).await) }
    }))
    .await;
    ddl.await.unwrap();
    live.extend(read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":\"~end\"}")).await);
    let mut failures = Vec::new();
    for (c, r) in resumes {
        let expected = after(&live, c);
        match r {
            Ok(mut f) => match read_resumed(&mut f, expected.len()).await {
                Ok(got) if got == expected => {}
                Ok(_) => failures.push(format!("late {c}: items differ")),
                Err(e) => failures.push(format!("late {c}: {e}")),
            },
            Err(e) => failures.push(format!("late {c}: refused: {e:?}")),
        }
    }
    // The process with the small log: its log start moved past its first changes.
    for c in [cursors[1], cursors[cursors.len() / 2]] {
        let expected = after(&live, c);
        match small.table("t").changes().resume_from(c).await {
            Ok(mut f) => match read_resumed(&mut f, expected.len()).await {
                Ok(got) if got == expected => {}
                Ok(_) => failures.push(format!("small {c}: items differ")),
                Err(e) => failures.push(format!("small {c}: {e}")),
            },
            Err(e) => failures.push(format!("small {c}: refused: {e:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A resume racing the drop of its table.
    let racer = connect(&pg).await;
    let from = live[live.len() / 3].cursor;
    let expected = after(&live, from);
    let (resumed, dropped) = tokio::join!(
        racer.table("t").changes().resume_from(from),
        a.drop_table("t")
    );
    dropped.unwrap();
    match resumed {
        Err(Error::NoSuchTable(_) | Error::CursorExpired { .. } | Error::FeedAborted(_)) => {}
        Err(e) => panic!("the resume racing the drop: {e:?}"),
        Ok(mut f) => {
            let mut got = Vec::new();
            let end = loop {
                match tokio::time::timeout(WAIT, f.next())
                    .await
                    .expect("an item or the end")
                {
                    Some(Ok(c)) => got.push(item(&c)),
                    other => break other,
                }
            };
            assert_eq!(got, expected, "the resume racing the drop");
            assert!(
                matches!(end, Some(Err(Error::FeedAborted(_)))),
                "{:?}",
                end.map(|r| r.map(|c| item(&c)))
            );
        }
    }
}

/// Every process ends (the archiver flushed, or not, its last changes) and a process starts
/// alone later: the history cannot know whether changes came in between, so an older cursor
/// resumes exactly or expires, typed; never a shorter stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_process_ended_a_cursor_resumes_exactly_or_expires() {
    let Some((pg, a)) = archiving_process("after_every_process_ended").await else {
        return;
    };
    let mut feed = a.table("t").changes().await.unwrap();
    for i in 0..20 {
        a.table("t").insert(json!({"id": i})).await.unwrap();
    }
    let live = read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":19}")).await;
    archived_past(&a, live[10].cursor.seq()).await;
    a.close().await.unwrap();
    drop((feed, a));
    let b = connect(&pg).await;
    for k in [0, 5, 10, 19] {
        let outcome = exact_or_expired(&b, "t", live[k].cursor, &live).await;
        assert!(outcome.is_ok(), "item {k}: {outcome:?}");
        eprintln!("after a full restart, item {k}: resumed {outcome:?}");
    }
}

/// The archiving process loses its replication connection (its walsender is terminated)
/// while another process writes: it lets go of the archiver's lock (it can archive nothing
/// until it follows again), a healthy process takes over, and a cursor resumes exactly in a
/// process started later. The process's own feed goes on over the lost connection with
/// every change once (bridged from the history), or ends with `FeedAborted`: never a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_whose_replica_stopped_following_hands_over() {
    let Some((pg, a)) = archiving_process("an_archiver_whose_replica_stopped_following").await
    else {
        return;
    };
    let b = connect(&pg).await;
    b.sync().await.unwrap();
    let mut a_feed = a.table("t").changes().await.unwrap();
    let mut feed = b.table("t").changes().await.unwrap();
    b.table("t").insert(json!({"id": 0})).await.unwrap();
    let first = read_until(&mut feed, |_| true).await;
    let cursor = first[0].cursor;
    // End a's replication connection (the walsender of a's slot).
    let admin = pg.connect().await.unwrap();
    let slot = pg_stats(&a).await["slot"].as_str().unwrap().to_string();
    let a_pid = archiver_pid(&admin).await.unwrap();
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1);
    // a lets go of the archiver's lock (whether it then bridges the gap with a new slot, or
    // gives up and closes).
    let begin = Instant::now();
    while archiver_pid(&admin).await == Some(a_pid) {
        assert!(begin.elapsed() < WAIT, "a keeps the archiver's lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 1..=5 {
        b.table("t").insert(json!({"id": i})).await.unwrap();
    }
    let live = read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":5}")).await;
    let late = connect(&pg).await;
    let r = late.table("t").changes().resume_from(cursor).await;
    let still_a = archiver_pid(&admin).await == Some(a_pid);
    let mut f = r.unwrap_or_else(|e| {
        panic!(
            "resume in a later process (a, no longer following, still holds the archiver lock: \
             {still_a}): {e:?}"
        )
    });
    assert_eq!(read_resumed(&mut f, 5).await.unwrap(), after(&live, cursor));
    // a's own feed: bridged over the lost connection (every change, none twice), or ended
    // with a typed error after a prefix; never a gap.
    let all: Vec<Item> = first.iter().chain(&live).cloned().collect();
    let mut got = Vec::new();
    let end = loop {
        if got.len() == all.len() {
            break None;
        }
        match tokio::time::timeout(WAIT, a_feed.next()).await {
            Ok(Some(Ok(c))) => got.push(item(&c)),
            Ok(other) => break Some(format!("{:?}", other.map(|r| r.map(|c| item(&c))))),
            Err(_) => break Some("nothing more within the wait".into()),
        }
    };
    assert_eq!(
        &all[..got.len()],
        &got[..],
        "a's feed across the lost connection"
    );
    eprintln!(
        "a's feed: {} of {} items, then {end:?}",
        got.len(),
        all.len()
    );
    match end {
        Some(end) => assert!(end.contains("FeedAborted"), "a's feed ended with {end}"),
        None => {
            let more = tokio::time::timeout(Duration::from_millis(300), a_feed.next()).await;
            assert!(
                more.is_err(),
                "a's feed: an item twice: {:?}",
                more.map(|r| r.map(|r| r.map(|c| item(&c))))
            );
        }
    }
}

/// No process can archive (the archiver's lock is held by a session that writes nothing, as
/// a frozen archiver process would): a resume in a process started later that needs the
/// history waits a few seconds for it, then expires, typed (the history does not reach the
/// process's log), never a shorter stream. Once a process archives again, the same cursor
/// resumes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_behind_a_stalled_archiver_expires_typed_then_resumes() {
    let Some((pg, a)) = archiving_process("a_resume_behind_a_stalled_archiver").await else {
        return;
    };
    let mut feed = a.table("t").changes().await.unwrap();
    a.table("t").insert(json!({"id": 0})).await.unwrap();
    let cursor = read_until(&mut feed, |_| true).await[0].cursor;
    archived_past(&a, cursor.seq()).await;
    // Take the archiver's lock from the archiving process.
    let admin = pg.connect().await.unwrap();
    let pid = archiver_pid(&admin).await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let begin = Instant::now();
    loop {
        let got: bool = admin
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&LOCK_KEY],
            )
            .await
            .unwrap()
            .get(0);
        if got {
            break;
        }
        assert!(begin.elapsed() < WAIT, "the lock is not free");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 1..=10 {
        a.table("t").insert(json!({"id": i})).await.unwrap();
    }
    let mut live = read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":10}")).await;
    let late = connect(&pg).await;
    let begin = Instant::now();
    let r = late.table("t").changes().resume_from(cursor).await;
    assert!(expired(&r), "behind a stalled archiver: {}", describe(&r));
    assert!(
        begin.elapsed() < Duration::from_secs(15),
        "{:?}",
        begin.elapsed()
    );
    // Archiving again, by the process that applied everything since (a process started
    // after the stall, such as `late`, would take over with a gap: then the cursor rightly
    // expires): the history goes on from where it stopped.
    late.close().await.unwrap();
    drop(late);
    drop(admin);
    archiver(&[&a]).await;
    a.table("t").insert(json!({"id": 11})).await.unwrap();
    live.extend(read_until(&mut feed, |_| true).await);
    let later = connect(&pg).await;
    let mut f = later
        .table("t")
        .changes()
        .resume_from(cursor)
        .await
        .unwrap();
    assert_eq!(
        read_resumed(&mut f, 11).await.unwrap(),
        after(&live, cursor)
    );
}

/// At most one process archives at a time, also after the archiver's session was ended
/// under it (a network blip, an idle timeout, a server-side terminate): the process that
/// lost its session must take the lock again before it writes the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_archiver_at_a_time_after_its_session_was_lost() {
    let Some((pg, a)) =
        archiving_process("one_archiver_at_a_time_after_its_session_was_lost").await
    else {
        return;
    };
    let b = connect(&pg).await;
    let admin = pg.connect().await.unwrap();
    let pid = archiver_pid(&admin).await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let begin = Instant::now();
    while begin.elapsed() < Duration::from_secs(3) {
        a.table("t")
            .insert(json!({"id": begin.elapsed().as_nanos() as u64}))
            .await
            .unwrap();
        let (sa, sb) = (pg_stats(&a).await, pg_stats(&b).await);
        let holder = archiver_pid(&admin).await;
        assert!(
            !(sa["archiving"] == true && sb["archiving"] == true),
            "two processes archive at once (lock held by session {holder:?}, the killed one was {pid})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Database::position` taken in the first process before it applied any change (a fresh
/// deployment: the process made its tables, then took the position before its first read):
/// every change after it is in the shared history (which starts right after it), so it
/// resumes in a process started later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_taken_before_any_change_resumes_in_a_later_process() {
    let Some((pg, a)) = archiving_process("a_position_taken_before_any_change").await else {
        return;
    };
    let at = a.position();
    let mut feed = a.table("t").changes().await.unwrap();
    for i in 0..3 {
        a.table("t").insert(json!({"id": i})).await.unwrap();
    }
    let live = read_until(&mut feed, |i| i.new.as_deref() == Some("{\"id\":2}")).await;
    // In the process itself (its own log): every change after it.
    let mut own = a.table("t").changes().resume_from(at).await.unwrap();
    assert_eq!(read_resumed(&mut own, 3).await.unwrap(), live);
    let (_, floor) = meta(&pg).await;
    let late = connect(&pg).await;
    let r = late.table("t").changes().resume_from(at).await;
    let mut f = r.unwrap_or_else(|e| {
        panic!("position {at} (history floor {floor:x}: it holds every change after it): {e:?}")
    });
    assert_eq!(read_resumed(&mut f, 3).await.unwrap(), live);
}

/// A process starts while the archiver's flush holds its lock on `history` (a frozen
/// archiver mid-flush): its start must not wait for it. Setup used to run `CREATE INDEX IF
/// NOT EXISTS` on `history`, whose lock waits behind the flush's. (The lock is taken here
/// without a transaction id: a transaction with one would hold up any new logical slot, a
/// server rule; the archiver's session ends a transaction left idle after 5 s for that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_starts_while_the_archivers_flush_is_held_up() {
    let Some((pg, _archiving)) =
        archiving_process("a_process_starts_while_the_archivers_flush").await
    else {
        return;
    };
    let mut admin = pg.connect().await.unwrap();
    let hold = admin.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE remodel.history IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = tokio::time::timeout(Duration::from_secs(10), connect(&pg)).await;
    hold.rollback().await.unwrap();
    assert!(
        started.is_ok(),
        "Database::connect waited 10 s behind a lock on the history"
    );
}
