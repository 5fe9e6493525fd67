//! Many writers at once. On a multi-threaded runtime a small write that finds the commit lock
//! taken is left for the lock's holder to commit (flat combining): each writer must still get
//! its own write's result, every write must commit exactly once, in one order that feeds see,
//! and no writer may be stranded when the lock is held by something that takes no handoffs
//! (DDL, a feed opening). Read-modify-writes lose nothing, with either durability. A write's
//! closure runs under the commit lock: one that writes itself gets an error, and one that
//! waits for another thread's write makes that write fail with `CommitStalled` after the
//! stall limit instead of hanging every writer. A loop of soft writes lets the scheduler run.

use crate::common::crew::contents;
use crate::common::{db, test_name};
use futures::StreamExt;
use remodel::{json, Database, Durability, Error, IndexSpec, Patch, Value, WriteResult};
use std::collections::HashSet;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const TASKS: u64 = 8;
const PER_TASK: u64 = 300;

#[test]
fn every_writer_gets_its_own_result_and_every_write_commits_once_in_order() {
    let rt = runtime();
    rt.block_on(async {
        let db = crate::common::open(Durability::Soft).await.unwrap();
        db.create_table("w").await.unwrap();
        let t = db.table("w");
        let mut feed = t.changes().await.unwrap();
        let writers: Vec<_> = (0..TASKS)
            .map(|w| {
                let t = t.clone();
                tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        let id = w * PER_TASK + i;
                        let r = t.insert(json!({"id": id, "w": w})).await.unwrap();
                        assert_eq!((r.inserted, r.errors), (1, 0), "writer {w}, row {id}");
                        // Every tenth write collides with a row of this writer: the error is
                        // this writer's, not another's.
                        if i % 10 == 9 {
                            let r = t.insert(json!({"id": id - 1})).await.unwrap();
                            assert_eq!((r.inserted, r.errors), (0, 1), "writer {w}, row {id}");
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("no writer is stranded")
                .unwrap();
        }
        assert_eq!(t.count().await.unwrap(), TASKS * PER_TASK);
        // The feed saw each insert once, in commit order: positions never go back, and
        // each change has its own place (writes of concurrent tasks may share a commit:
        // group commit on PostgreSQL).
        let mut seen = HashSet::new();
        let mut last = 0;
        let mut last_cursor = None;
        while seen.len() < (TASKS * PER_TASK) as usize {
            let c = tokio::time::timeout(Duration::from_secs(10), feed.next())
                .await
                .expect("every insert reaches the feed")
                .unwrap()
                .unwrap();
            let seq = c.seq().expect("a change has a number");
            assert!(seq >= last, "commit order: {seq} after {last}");
            last = seq;
            let cursor = c.cursor();
            assert!(cursor > last_cursor, "one place per change: {cursor:?}");
            last_cursor = cursor;
            let id = c.new_val().unwrap()["id"].as_u64().unwrap();
            assert!(seen.insert(id), "row {id} delivered twice");
        }
    });
}

#[test]
fn writers_are_not_stranded_while_ddl_and_feeds_hold_the_lock() {
    let rt = runtime();
    rt.block_on(async {
        let db = crate::common::open(Durability::Hard).await.unwrap();
        db.create_table("w").await.unwrap();
        let t = db.table("w");
        let writers: Vec<_> = (0..TASKS)
            .map(|w| {
                let t = t.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        t.insert(json!({"id": w * 1000 + i, "n": i})).await.unwrap();
                    }
                })
            })
            .collect();
        // Meanwhile: index builds, index drops and feeds opening take the commit lock.
        for round in 0..5 {
            let name = format!("n{round}");
            t.create_index(&name, IndexSpec::field("n")).await.unwrap();
            let feed = t.changes().include_initial(true).await.unwrap();
            drop(feed);
            t.drop_index(&name).await.unwrap();
        }
        for w in writers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("no writer is stranded")
                .unwrap();
        }
        assert_eq!(t.count().await.unwrap(), TASKS * 100);
    });
}

/// 16 tasks x 50 read-modify-write increments, spread over the same 4 documents (200 each).
/// `durability` is per write (`None`: the database default).
async fn sixteen_tasks_increment_four_documents(durability: Option<Durability>) -> Vec<Value> {
    let db = db().await;
    db.create_table("counters").await.unwrap();
    let t = db.table("counters");
    t.insert_many((0..4).map(|i| json!({"id": i, "n": 0})))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let bump = Patch::with(|d| Ok(json!({"n": d["n"].as_i64().unwrap() + 1})));
                let write = t.get((task + i) % 4).update(bump);
                let write = match durability {
                    Some(d) => write.durability(d),
                    None => write,
                };
                let r = write.await.unwrap();
                assert_eq!(r, {
                    let mut w = WriteResult::default();
                    w.replaced = 1;
                    w
                });
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    contents(&t).await
}

fn two_hundred_each() -> Vec<Value> {
    (0..4).map(|i| json!({"id": i, "n": 200})).collect()
}

/// No update is lost. The writes are `Soft` here so that this test checks atomicity alone;
/// the default (`Hard`) durability is checked below, in a child process, because with it the
/// same workload hangs the process (see `concurrent_hard_writes_finish`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_writes_lose_nothing() {
    let docs = sixteen_tasks_increment_four_documents(Some(Durability::Soft)).await;
    assert_eq!(docs, two_hundred_each());
}

const HARD_CHILD_ENV: &str = "REMODEL_STORE_HARD_WRITES_CHILD";

/// The child of `concurrent_hard_writes_finish`: the same workload with the default
/// durability; prints the final documents. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_hard_writes_child() {
    if std::env::var_os(HARD_CHILD_ENV).is_none() {
        return;
    }
    let docs = sixteen_tasks_increment_four_documents(None).await;
    println!("\nfinal {}", Value::Array(docs));
}

/// Concurrent writes with the default (hard) durability finish, and lose nothing.
///
/// Run in a child process: if the store deadlocks, it takes sled's process-wide I/O thread
/// pool with it, and every other test of this binary would hang too. The child is given a
/// generous deadline (the workload normally takes well under a second) only to turn a hang
/// into a failure; nothing here measures speed.
#[test]
fn concurrent_hard_writes_finish() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test_name!(concurrent_hard_writes_child).as_str(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HARD_CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    assert!(
        finished,
        "16 tasks doing hard-durability updates never finished: the process is deadlocked \
         (every sled I/O thread waits in flush_async for a log write queued behind them)"
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("final "))
        .unwrap_or_else(|| panic!("the child did not finish its work:\n{out}"));
    let docs: Value = serde_json::from_str(line).unwrap();
    assert_eq!(docs, Value::Array(two_hundred_each()));
}

/// Runs `write` on another thread with a runtime of its own, from inside a closure, and
/// waits for it there: the deadlock the stall limit breaks.
fn write_elsewhere_and_wait(db: &Database, docs: usize) -> remodel::Result<()> {
    let db = db.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let rows: Vec<_> = (0..docs)
                .map(|i| json!({ "id": format!("other{i}") }))
                .collect();
            db.table("t").insert_many(rows).await.map(|_| ())
        })
    })
    .join()
    .unwrap()
}

async fn stalled_writer_gives_up(docs: usize) {
    let db = Database::temporary().await.unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.insert(json!({"id": "a", "n": 0})).await.unwrap();
    let started = Instant::now();
    let (inner_db, outcome) = (db.clone(), std::sync::Arc::new(std::sync::Mutex::new(None)));
    let seen = outcome.clone();
    let r = t
        .get("a")
        .update(Patch::with(move |doc| {
            let r = write_elsewhere_and_wait(&inner_db, docs);
            *seen.lock().unwrap() = Some(r);
            Ok(json!({ "n": doc["n"].as_i64().unwrap() + 1 }))
        }))
        .await;
    let elapsed = started.elapsed();
    r.unwrap().check().unwrap();
    let inner = outcome.lock().unwrap().take().expect("the closure ran");
    assert!(
        matches!(inner, Err(Error::CommitStalled { held_ms }) if held_ms >= 2000),
        "{inner:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    // The closure's own write committed; the refused one wrote nothing.
    assert_eq!(t.get("a").await.unwrap().unwrap()["n"], 1);
    assert_eq!(t.count().await.unwrap(), 1);
    // And the lock is free again.
    t.insert(json!({"id": "b"})).await.unwrap().check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_write_behind_a_stalled_closure_fails_instead_of_hanging() {
    stalled_writer_gives_up(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_behind_a_stalled_closure_fails_instead_of_hanging() {
    stalled_writer_gives_up(500).await;
}

/// Pins issue 8, defect 7 (smaller defects).
///
/// A `Patch::with` closure that writes to the database gets `WriteInPatch` (its write would
/// wait forever for the commit lock its own thread holds); later writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_closure_that_writes_gets_an_error_not_a_deadlock() {
    let db = Database::temporary().await.unwrap();
    db.create_table("t").await.unwrap();
    db.create_table("log").await.unwrap();
    let t = db.table("t");
    t.insert(json!({"id": 1, "n": 0})).await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, inner_db, seen2) = (db.table("log"), db.clone(), seen.clone());
    let patch = Patch::with(move |doc| {
        let mut seen = seen2.lock().unwrap();
        type Pending = std::pin::Pin<
            Box<dyn std::future::Future<Output = remodel::Result<remodel::WriteResult>> + Send>,
        >;
        let block_on = |f: Pending| futures::executor::block_on(f).map(drop);
        seen.push(block_on(log.insert(json!({"id": 1})).into_future()));
        let many: Vec<Value> = (0..100).map(|i| json!({"id": 100 + i})).collect();
        seen.push(block_on(log.insert_many(many).into_future()));
        seen.push(block_on(log.query().delete().into_future()));
        seen.push(block_on(inner_db.batch().delete("log", 1).into_future()));
        seen.push(futures::executor::block_on(inner_db.create_table("x")));
        Ok(json!({"n": doc["n"].as_i64().unwrap_or(0) + 1}))
    });
    let done = tokio::time::timeout(Duration::from_secs(10), t.get(1).update(patch)).await;
    let r = done.expect("deadlock: the update never finished").unwrap();
    assert_eq!(r.replaced, 1);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), 5);
    for s in &seen {
        assert!(matches!(s, Err(Error::WriteInPatch)), "{s:?}");
    }
    let later = tokio::time::timeout(Duration::from_secs(10), t.insert(json!({"id": 2}))).await;
    later.expect("later writes wait forever").unwrap();
    assert_eq!(db.table("log").count().await.unwrap(), 0);
}

/// A `Patch::with` closure that asks for the database's position gets the position before
/// its commit, and one that opens a feed gets `WriteInPatch`: both took the commit lock its
/// own thread holds, and every later write failed with `CommitStalled` (found by a
/// read-only review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_closure_reading_the_position_or_opening_a_feed_does_not_deadlock() {
    let db = crate::common::db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.insert(json!({"id": 1, "n": 0})).await.unwrap();
    let before = db.position();
    let (inner_db, table) = (db.clone(), db.table("t"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let patch = Patch::with(move |doc| {
        let at = inner_db.position();
        let feed = futures::executor::block_on(table.changes().into_future());
        seen2.lock().unwrap().push((at, feed.map(drop)));
        Ok(json!({"n": doc["n"].as_i64().unwrap_or(0) + 1}))
    });
    let done = tokio::time::timeout(Duration::from_secs(10), t.get(1).update(patch)).await;
    done.expect("deadlock: the update never finished").unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(!seen.is_empty());
    for (at, feed) in &seen {
        assert_eq!(*at, before, "the position inside the patch");
        assert!(matches!(feed, Err(Error::WriteInPatch)), "{feed:?}");
    }
    let later = tokio::time::timeout(Duration::from_secs(10), t.insert(json!({"id": 2}))).await;
    later.expect("later writes wait forever").unwrap();
    assert!(db.position() > before);
}

/// Pins issue 8, defect 7 (smaller defects).
///
/// A loop of soft writes lets a timer of the same (single-threaded) runtime fire on time.
#[tokio::test(flavor = "current_thread")]
async fn a_loop_of_soft_writes_yields_to_the_scheduler() {
    let db = crate::common::open(Durability::Soft).await.unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(2) {
            t.insert(json!({"id": i})).await.unwrap();
            t.get(i).update(json!({"n": 1})).await.unwrap();
            i += 1;
        }
        i
    });
    // This task sleeps; the writer runs. The timer can fire only when the writer yields.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = started.elapsed();
    let written = writer.await.unwrap();
    assert!(written > 0);
    assert!(
        late < Duration::from_millis(1000),
        "a 100 ms timer fired after {late:?}"
    );
}

/// A write whose caller stopped waiting may still be made (it was on its way: handed to the
/// lock's holder, on a blocking thread, in a group on its way to PostgreSQL), but never after
/// a write of the same key that its caller made later: a task that dropped an insert and then
/// deleted the key (finding nothing) must not see the row come back. Inserts here are small
/// (committed in place or handed off) or large (a blocking thread), dropped at random points;
/// the write after each finds what the earlier ones left, and at the end no key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_never_lands_after_a_later_write_of_its_key() {
    let db = crate::common::soft_db().await;
    db.create_table("d").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let (t, stop) = (db.table("d"), stop.clone());
            tokio::spawn(async move {
                let key = format!("k{task}");
                let mut state = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut below = |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                let (mut failures, mut dropped, mut round) = (Vec::new(), 0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    round += 1;
                    // A large insert (filler rows of this task's own) goes to a blocking
                    // thread on the embedded store.
                    let mut docs = vec![json!({"id": key, "round": round})];
                    if below(4) == 0 {
                        docs.extend(
                            (0..100).map(|i| json!({"id": format!("f{task}_{round}_{i}")})),
                        );
                    }
                    let insert = t.insert_many(docs).into_future();
                    let wait = Duration::from_micros(below(2_000));
                    if tokio::time::timeout(wait, insert).await.is_err() {
                        dropped += 1;
                    }
                    let delete = t.get(key.as_str()).delete().await;
                    let again = t.get(key.as_str()).delete().await;
                    match (delete, again) {
                        (Ok(_), Ok(r)) if r.deleted != 0 => failures.push(format!(
                            "task {task} round {round}: the row came back after a delete"
                        )),
                        (Ok(_), Ok(_)) => {}
                        (a, b) => failures.push(format!("task {task} round {round}: {a:?} {b:?}")),
                    }
                }
                (dropped, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut dropped, mut failures) = (0, Vec::new());
    for t in tasks {
        let (d, f) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a task hung")
            .unwrap();
        dropped += d;
        failures.extend(f);
    }
    db.sync().await.unwrap();
    let keys = db
        .table("d")
        .filter(remodel::field("id").starts_with("k"))
        .count()
        .await
        .unwrap();
    assert!(
        dropped > 20,
        "too few writes were dropped to test ({dropped})"
    );
    assert!(
        failures.is_empty() && keys == 0,
        "{} failures, {keys} keys left: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}
