//! Durability and persistence: hard and soft writes, data and indexes across a reopen, one
//! shared handle per open path and a reopen right after the last handle is dropped, a hard
//! write that failed on a full disk, and the temporary databases of a killed process.

use crate::common::crew::{ids, statuses};
use crate::common::files::{open_retry, TempDir, Tmpfs};
use crate::common::{db, test_name};
use futures::StreamExt;
use remodel::{json, Database, Durability, Error, IndexSpec, Order};
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test]
async fn hard_and_soft_durability() {
    let db = Database::temporary().await.unwrap(); // hard by default
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.insert(json!({"id": 1})).await.unwrap();
    t.insert(json!({"id": 2}))
        .durability(Durability::Soft)
        .await
        .unwrap();
    t.get(1)
        .update(json!({"a": 1}))
        .durability(Durability::Hard)
        .await
        .unwrap();
    db.sync().await.unwrap();
    assert_eq!(t.count().await.unwrap(), 2);
}

#[tokio::test]
async fn data_and_indexes_survive_a_reopen() {
    let dir = TempDir::new("reopen");
    let notes = vec![
        json!({"id": 1, "text": "alpha", "tags": ["x", "y"], "meta": {"n": 1}}),
        json!({"id": 2, "text": "beta", "tags": ["y"]}),
        json!({"id": 3, "text": "gamma"}),
    ];
    {
        let db = Database::open(dir.path()).await.unwrap();
        db.create_table("notes").await.unwrap();
        db.create_table_with_key("users", "email").await.unwrap();
        let t = db.table("notes");
        t.create_index("tags", IndexSpec::multi("tags"))
            .await
            .unwrap();
        t.insert_many(notes.clone()).await.unwrap();
        t.create_index("text", IndexSpec::field("text"))
            .await
            .unwrap();
        db.table("users")
            .insert(json!({"email": "a@b", "name": "A"}))
            .await
            .unwrap();
        // A table dropped before closing stays dropped.
        db.create_table("gone").await.unwrap();
        db.drop_table("gone").await.unwrap();
    }
    {
        let db = Database::open(dir.path()).await.unwrap();
        assert_eq!(db.table_names().unwrap(), vec!["notes", "users"]);
        let t = db.table("notes");
        assert_eq!(t.run().await.unwrap(), notes);
        assert_eq!(
            statuses(&t),
            vec![
                ("tags".into(), IndexSpec::multi("tags"), true, 3),
                ("text".into(), IndexSpec::field("text"), true, 3),
            ]
        );
        assert_eq!(
            ids(&t.get_all(["y"]).index("tags").run().await.unwrap()),
            vec![1, 2]
        );
        assert_eq!(
            ids(&t.order_by(Order::index("text").desc()).run().await.unwrap()),
            vec![3, 2, 1]
        );
        let users = db.table("users");
        assert_eq!(users.primary_key().unwrap(), "email");
        assert_eq!(
            users.get("a@b").await.unwrap(),
            Some(json!({"email": "a@b", "name": "A"}))
        );
        // Write again; that survives too.
        t.get(3).update(json!({"tags": ["z"]})).await.unwrap();
        t.get(1).delete().await.unwrap();
    }
    {
        let db = Database::open(dir.path()).await.unwrap();
        let t = db.table("notes");
        assert_eq!(ids(&t.run().await.unwrap()), vec![2, 3]);
        assert_eq!(
            ids(&t
                .get_all(["z", "y", "x"])
                .index("tags")
                .run()
                .await
                .unwrap()),
            vec![3, 2]
        );
        assert_eq!(t.index_status().unwrap()[0].entries, 2);
    }
}

#[tokio::test]
async fn opening_an_open_path_shares_the_handle() {
    let dir = TempDir::new("shared");
    let first = Database::open(dir.path()).await.unwrap();
    first.create_table("t").await.unwrap();
    // The same path, and the same folder spelled differently.
    let second = Database::open(dir.path()).await.unwrap();
    let third = Database::open(dir.path().join(".")).await.unwrap();
    assert_eq!(second.table_names().unwrap(), vec!["t"]);
    second
        .table("t")
        .insert(json!({"id": 1, "by": "second"}))
        .await
        .unwrap();
    assert_eq!(
        first.table("t").get(1).await.unwrap(),
        Some(json!({"id": 1, "by": "second"}))
    );
    third.create_table("u").await.unwrap();
    assert_eq!(first.table_names().unwrap(), vec!["t", "u"]);
    third
        .table("t")
        .insert(json!({"id": 2, "by": "third"}))
        .await
        .unwrap();
    assert_eq!(second.table("t").count().await.unwrap(), 2);
    // Dropping some handles leaves the others working.
    drop(first);
    drop(third);
    assert_eq!(second.table("t").count().await.unwrap(), 2);
    second.table("t").insert(json!({"id": 3})).await.unwrap();
    drop(second);
    // All closed: it opens again with everything.
    let again = Database::open(dir.path()).await.unwrap();
    assert_eq!(ids(&again.table("t").run().await.unwrap()), vec![1, 2, 3]);
    assert_eq!(again.table_names().unwrap(), vec!["t", "u"]);
    // `close` closes the shared database: every handle to it is then `Closed`.
    let other = Database::open(dir.path()).await.unwrap();
    again.close().await.unwrap();
    assert_eq!(other.table("t").count().await, Err(Error::Closed));
    assert_eq!(again.table("t").get(1).await, Err(Error::Closed));
    drop((again, other));
    // And what it held is there after a reopen.
    let reopened = Database::open(dir.path()).await.unwrap();
    assert_eq!(
        ids(&reopened.table("t").run().await.unwrap()),
        vec![1, 2, 3]
    );
}

/// Reopening a path right after its last handle was dropped works every time, also while
/// another database of the process is busy (its writes share sled's I/O threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_right_after_the_last_handle_is_dropped_always_works() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let other = db().await;
            other.create_table("n").await.unwrap();
            let n = other.table("n");
            n.create_index("b", IndexSpec::field("b")).await.unwrap();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let docs = (0..3000).map(|k| json!({"id": round * 3000 + k, "b": k % 10}));
                n.insert_many(docs).await.unwrap();
                n.order_by(Order::index("b")).count().await.unwrap();
                round += 1;
            }
        })
    };
    let dir = TempDir::new("cycle");
    // Every open that fails is recorded, then retried (the lock is released moments later)
    // so that the cycle goes on.
    let mut failures = Vec::new();
    let mut open = async |what: String| loop {
        match Database::open(dir.path()).await {
            Ok(db) => break db,
            Err(e) => {
                assert!(failures.len() < 1000, "{e}");
                failures.push(format!("{what}: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    };
    for round in 0..100 {
        {
            let db = open(format!("round {round}, first open")).await;
            let t = db.table("t");
            db.ensure_table("t").await.unwrap();
            t.ensure_index("x", IndexSpec::multi("x")).await.unwrap();
            t.insert(json!({"id": round})).await.unwrap();
            t.get(round).update(json!({"x": [1, round]})).await.unwrap();
            t.get(round - 1).delete().await.unwrap();
        }
        let db = open(format!("round {round}, reopen")).await;
        assert_eq!(ids(&db.table("t").run().await.unwrap()), vec![round]);
        assert_eq!(
            ids(&db.table("t").get_all([1]).index("x").run().await.unwrap()),
            vec![round]
        );
    }
    stop.store(true, Ordering::Relaxed);
    busy.await.unwrap();
    assert_eq!(failures, Vec::<String>::new());
}

/// Pins issue 8, defect 7 (smaller defects).
///
/// A hard write that failed because the disk is full is not readable afterwards in the same
/// process: either the handle refuses every call with `Unusable` (the write failed after its
/// commit) or the write was refused before it committed and nothing of it exists; after a
/// reopen, every acknowledged write is there and the failed one is not.
#[tokio::test]
async fn a_hard_write_that_failed_on_a_full_disk_is_not_readable() {
    let Some(fs) = Tmpfs::scratch("d7-full", "4m") else {
        return;
    };
    let dir = fs.0.join("db");
    let db = Database::open(&dir).await.unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    for i in 0..20 {
        t.insert(json!({"id": i})).await.unwrap();
    }
    // A subscriber must never see the write that failed, and must not wait for it forever.
    let mut feed = t.changes().await.unwrap();
    let filler = fs.fill();
    let mut failed = None;
    for i in 20..2000 {
        let doc = json!({"id": i, "pad": "y".repeat(4000)});
        if let Err(e) = t.insert(doc).durability(Durability::Hard).await {
            failed = Some((i, e));
            break;
        }
    }
    let (key, e) = failed.expect("a full disk must fail a hard write");
    assert!(
        matches!(e, Error::Unusable(_) | Error::Storage { .. }),
        "{e}"
    );
    // Either the write failed after its commit (the storage could not flush it): the
    // handle is unusable and the feed ends. Or it was refused before it committed (the change
    // log found no room for its record): nothing of it exists, the handle stays usable, and
    // the feed has nothing to wait for.
    let usable = !matches!(t.count().await, Err(Error::Unusable(_)));
    println!("the failed write: {e} (handle usable after it: {usable})");
    if usable {
        // Reads on the full disk may fail too (sled can need room to page a node in); what
        // they must never do is return the refused write, or lose an acknowledged one.
        match t.get(key).await {
            Ok(None) | Err(Error::Storage { .. }) => {}
            Ok(Some(_)) => panic!("a refused write is readable"),
            Err(e) => panic!("{e}"),
        }
        match t.count().await {
            Ok(n) => assert_eq!(n, key as u64, "acknowledged writes are missing"),
            Err(Error::Storage { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(500), feed.next()).await
        {
            let id = item.unwrap().new_val().map(|d| d["id"].clone());
            assert_ne!(id, Some(json!(key)), "a subscriber saw the refused write");
        }
    } else {
        let mut ended = false;
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
            match item {
                Ok(c) => assert_ne!(
                    c.new_val().map(|d| d["id"].clone()),
                    Some(json!(key)),
                    "a subscriber saw the write that failed"
                ),
                Err(Error::FeedAborted(_)) => {
                    ended = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            ended,
            "the feed must end, not wait for a write that never reached the disk"
        );
        // Not readable, by key or by scan.
        match t.get(key).await {
            Ok(Some(doc)) => panic!("a failed write is readable: {}", doc["id"]),
            Ok(None) | Err(Error::Unusable(_)) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(t.count().await, Err(Error::Unusable(_))));
        assert!(matches!(
            t.insert(json!({"id": -1})).await,
            Err(Error::Unusable(_))
        ));
    }
    // The same path does not hand out the failed handle again.
    drop((t, db));
    std::fs::remove_file(filler).unwrap();
    let db = open_retry(&dir).await.unwrap();
    let t = db.table("t");
    for i in 0..key {
        assert!(
            t.get(i).await.unwrap().is_some(),
            "acknowledged write {i} lost"
        );
    }
    assert_eq!(
        t.get(key).await.unwrap(),
        None,
        "the failed write came back"
    );
    db.close().await.unwrap();
}

const ENV_TMP_CHILD: &str = "REMODEL_ROBUSTNESS_TMP_CHILD";

/// Pins issue 8, defect 7 (smaller defects).
///
/// The child of `temporary_databases_of_a_killed_process_are_cleaned_up`.
#[tokio::test]
async fn temporary_child() {
    if std::env::var_os(ENV_TMP_CHILD).is_none() {
        return;
    }
    let db = Database::temporary().await.unwrap();
    db.create_table("t").await.unwrap();
    db.table("t").insert(json!({"id": 1})).await.unwrap();
    println!("@@ ready");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Pins issue 8, defect 7 (smaller defects).
///
/// The temporary database of a process killed with SIGKILL is removed by the next
/// `Database::temporary()` of another process.
#[tokio::test]
async fn temporary_databases_of_a_killed_process_are_cleaned_up() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test_name!(temporary_child).as_str(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_TMP_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        if line.unwrap().contains("@@ ready") {
            break;
        }
    }
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let leftovers = || -> Vec<PathBuf> {
        let mut found = Vec::new();
        for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
            for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("remodel-tmp-{pid}-")) {
                    found.push(e.path());
                }
            }
        }
        found
    };
    assert_eq!(leftovers().len(), 1, "the child's temporary database");
    let db = Database::temporary().await.unwrap();
    assert_eq!(leftovers(), Vec::<PathBuf>::new());
    drop(db);
}
