//! The change log and the data files under outside damage (issue 16):
//!
//! - a commit larger than a log segment, as the first write of a fresh database or any later
//!   one, with a redo log and with a resumable log (it was killed by SIGBUS);
//! - a cursor taken on a table that was dropped and created again does not resume on the new
//!   table;
//! - a truncated data file is refused with `Error::Damaged`, not opened as a smaller database;
//! - a damaged change log (flipped bytes, truncated, zeroed or deleted segments, stray files,
//!   garbage appended): opening either works or fails with a typed error, and a resumed feed
//!   delivers exactly the changes after its cursor or fails with a typed error; never a gap,
//!   never a panic.

use futures::StreamExt;
use remodel::{json, Change, ChangeLogRetention, Config, Database, Error, Feed, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remodel-damage-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path, resumable: bool) -> Config {
    let c = Config::new(dir);
    match resumable {
        true => c.change_log(ChangeLogRetention::default()),
        false => c,
    }
}

/// Opens `dir`, waiting out the file lock of a handle of this process just dropped.
async fn reopen(cfg: Config) -> remodel::Result<Database> {
    let started = std::time::Instant::now();
    loop {
        match cfg.clone().open().await {
            Err(Error::Storage { message, .. })
                if message.contains("still open") && started.elapsed() < Duration::from_secs(5) =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => return other,
        }
    }
}

async fn rows(db: &Database, table: &str) -> Vec<Value> {
    let mut rows: Vec<Value> = db.table(table).query().run().await.unwrap();
    rows.sort_by_key(|r| r["id"].as_i64());
    rows
}

fn blob(id: i64, bytes: usize) -> Value {
    json!({"id": id, "blob": "x".repeat(bytes)})
}

// ---------------------------------------------------------------------------------------------
// 1. Commits larger than a segment
// ---------------------------------------------------------------------------------------------

/// Every size the store accepts commits, as the first write of a fresh database and as a
/// later one, with a redo log (segments of 1 MiB) and a resumable one (4 MiB); after a close
/// and after a drop without close, every row is there when the database is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_larger_than_a_segment_work_first_and_later() {
    for resumable in [false, true] {
        let seg: usize = if resumable { 4 << 20 } else { 1 << 20 };
        let sizes = [
            seg - 4096,
            seg - 60,
            seg - 20,
            seg,
            seg + 40,
            2 * seg + 1000,
            3 * seg,
        ];
        for (i, &size) in sizes.iter().enumerate() {
            let dir = fresh_dir(&format!("big-{resumable}-{i}"));
            let mut expected = Vec::new();
            {
                let db = config(&dir, resumable).open().await.unwrap();
                db.create_table("t").await.unwrap();
                let t = db.table("t");
                // First write of the database.
                t.insert(blob(0, size)).await.unwrap();
                expected.push(blob(0, size));
                t.insert(json!({"id": 1})).await.unwrap();
                expected.push(json!({"id": 1}));
                // A later one, after a small one, and one right after it.
                t.insert(blob(2, size)).await.unwrap();
                expected.push(blob(2, size));
                t.insert(blob(3, size / 2)).await.unwrap();
                expected.push(blob(3, size / 2));
                if i % 2 == 0 {
                    db.close().await.unwrap();
                }
            }
            let db = reopen(config(&dir, resumable)).await.unwrap();
            assert_eq!(
                rows(&db, "t").await,
                expected,
                "resumable {resumable}, size {size}"
            );
            // And it goes on accepting writes of every size.
            db.table("t").insert(blob(4, size)).await.unwrap();
            expected.push(blob(4, size));
            drop(db);
            let db = reopen(config(&dir, resumable)).await.unwrap();
            assert_eq!(rows(&db, "t").await, expected);
            drop(db);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// An ordinary first import: 5,000 documents of 400 bytes in one `insert_many` (one commit
/// of about 2 MB), both log modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_first_import_commits() {
    for resumable in [false, true] {
        let dir = fresh_dir(&format!("import-{resumable}"));
        let docs: Vec<Value> = (0..5_000)
            .map(|i| json!({"id": i, "pad": "p".repeat(380)}))
            .collect();
        {
            let db = config(&dir, resumable).open().await.unwrap();
            db.create_table("t").await.unwrap();
            let r = db.table("t").insert_many(docs.clone()).await.unwrap();
            assert_eq!(r.inserted, 5_000);
            db.close().await.unwrap();
        }
        let db = reopen(config(&dir, resumable)).await.unwrap();
        assert_eq!(rows(&db, "t").await, docs);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Cursors of a dropped table
// ---------------------------------------------------------------------------------------------

async fn take(feed: &mut Feed, n: usize) -> Vec<Change> {
    let mut out = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} items came", out.len()))
            .expect("the feed goes on")
            .expect("not an error");
        out.push(item);
    }
    out
}

/// Feed on `t`, insert, drop and create `t` again, insert: the old cursor must not resume
/// on the new table (it used to return the new table's rows as if nothing had happened,
/// when no other change came between the last one it saw and the new table).
#[tokio::test]
async fn a_cursor_of_a_dropped_table_does_not_resume_on_its_successor() {
    let db = Config::temporary()
        .change_log(ChangeLogRetention::default())
        .open()
        .await
        .unwrap();
    db.create_table("t").await.unwrap();
    let mut feed = db.table("t").changes().await.unwrap();
    db.table("t").insert(json!({"id": 1})).await.unwrap();
    let cursor = take(&mut feed, 1).await[0].cursor().unwrap();
    drop(feed);
    db.drop_table("t").await.unwrap();
    db.create_table("t").await.unwrap();
    db.table("t").insert(json!({"id": 2})).await.unwrap();
    let err = db
        .table("t")
        .changes()
        .resume_from(cursor)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
    // The same across a restart (the creation is recorded with the log).
    let dir = fresh_dir("recreated");
    let cursor;
    {
        let db = config(&dir, true).open().await.unwrap();
        db.create_table("t").await.unwrap();
        let mut feed = db.table("t").changes().await.unwrap();
        db.table("t").insert(json!({"id": 1})).await.unwrap();
        cursor = take(&mut feed, 1).await[0].cursor().unwrap();
        drop(feed);
        db.drop_table("t").await.unwrap();
        db.create_table("t").await.unwrap();
        db.table("t").insert(json!({"id": 2})).await.unwrap();
        db.close().await.unwrap();
    }
    let db = reopen(config(&dir, true)).await.unwrap();
    let err = db
        .table("t")
        .changes()
        .resume_from(cursor)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// 4. A truncated data file
// ---------------------------------------------------------------------------------------------

/// sled's data file cut to 90, 75 or 50 % of its length (after a close, or a drop without
/// one) is refused with `Error::Damaged`: it used to open as a database with fewer rows, or
/// none. Removing the manifest the error names opens what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_data_file_is_refused() {
    for (soft, close) in [(false, true), (true, true), (true, false), (false, false)] {
        let dir = fresh_dir(&format!("truncated-{soft}-{close}"));
        let cfg = || {
            let c = Config::new(&dir);
            match soft {
                true => c.durability(remodel::Durability::Soft),
                false => c,
            }
        };
        {
            let db = cfg().open().await.unwrap();
            db.create_table("t").await.unwrap();
            let docs: Vec<Value> = (0..20_000)
                .map(|i| json!({"id": i, "pad": "p".repeat(100)}))
                .collect();
            db.table("t").insert_many(docs).await.unwrap();
            if close {
                db.close().await.unwrap();
            }
        }
        // The handle's files are released once its engine is gone.
        reopen(cfg()).await.unwrap();
        let pristine = copy_dir(&dir, &format!("truncated-{soft}-{close}-pristine"));
        for percent in [99, 90, 75, 50, 10] {
            let _ = std::fs::remove_dir_all(&dir);
            copy_into(&pristine, &dir);
            let data = dir.join("db");
            let len = std::fs::metadata(&data).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
            file.set_len(len * percent / 100).unwrap();
            drop(file);
            match reopen(cfg()).await {
                Err(Error::Damaged { .. }) => {}
                Err(e) => panic!("{percent} %: an untyped error {e:?}"),
                Ok(db) if percent == 99 => {
                    // A cut inside data older than sled's last snapshot of its page table:
                    // sled's recovery does not read it, and neither does the open (see
                    // `storage::Generation`). Reading it fails with a typed error; it is
                    // never read as fewer rows.
                    match db.table("t").query().count().await {
                        Ok(n) => assert_eq!(n, 20_000, "soft {soft}, close {close}"),
                        Err(Error::Storage { .. }) => {}
                        Err(e) => panic!("{percent} %: {e:?}"),
                    }
                }
                Ok(db) => {
                    let n = db.table("t").query().count().await;
                    panic!("{percent} %: opened with {n:?} rows (soft {soft}, close {close})")
                }
            }
            if percent == 90 {
                // What the error says: without the manifest, what is left opens.
                std::fs::remove_file(dir.join("remodel.flushed")).unwrap();
                match reopen(cfg()).await {
                    Ok(_) | Err(Error::Damaged { .. }) => {}
                    Err(e) => panic!("{percent} % without the manifest: {e:?}"),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&pristine);
    }
}

fn copy_into(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_into(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn copy_dir(from: &Path, name: &str) -> PathBuf {
    let to = fresh_dir(name);
    copy_into(from, &to);
    to
}
