//! A write's closure runs under the commit lock: one that waits for another thread's write
//! must not hang every writer (issue 16, item 6). The waiting writes fail with
//! `Error::CommitStalled` after the stall limit, which ends the closure's wait.

use remodel::{Database, Error, Patch};
use serde_json::json;
use std::time::{Duration, Instant};

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
