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

mod common;

use common::files::copy_into;
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

fn copy_dir(from: &Path, name: &str) -> PathBuf {
    let to = fresh_dir(name);
    copy_into(from, &to);
    to
}

// ---------------------------------------------------------------------------------------------
// 2. A damaged change log
// ---------------------------------------------------------------------------------------------

/// Segments of 100 changes (a sixteenth of the count limit): the writes below fill several.
fn small_log() -> ChangeLogRetention {
    ChangeLogRetention {
        max_changes: Some(1_600),
        max_age: None,
    }
}

/// A database with a resumable log of several segments, as it was left: every change a feed
/// saw (with its cursor), and the rows.
struct Pristine {
    dir: PathBuf,
    changes: Vec<Change>,
    rows: Vec<Value>,
}

/// Single inserts, replacements and deletes, and a few commits of several changes.
async fn fill(t: &remodel::Table, n: i64) {
    for i in 0..n {
        t.insert(json!({"id": i % 240, "v": i, "pad": "p".repeat(40)}))
            .conflict(remodel::Conflict::Replace)
            .await
            .unwrap();
        if i % 50 == 49 {
            t.get(i % 240).delete().await.unwrap();
        }
        if i % 97 == 0 {
            let docs: Vec<Value> = (0..3).map(|k| json!({"id": 1000 + i * 3 + k})).collect();
            t.insert_many(docs).await.unwrap();
        }
    }
}

/// Takes items until none comes for a while.
async fn drain(feed: &mut Feed) -> Vec<Change> {
    let mut out = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), feed.next()).await {
        out.push(item.unwrap());
    }
    out
}

async fn pristine(name: &str, close: bool) -> Pristine {
    let dir = fresh_dir(name);
    let db = config(&dir, false)
        .change_log(small_log())
        .open()
        .await
        .unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut witness = t.changes().await.unwrap();
    fill(&t, 600).await;
    let changes = drain(&mut witness).await;
    assert!(changes.len() > 600, "{} changes", changes.len());
    let rows = rows(&db, "t").await;
    drop((witness, t));
    if close {
        db.close().await.unwrap();
    }
    drop(db);
    // The files are released once the handle's engine is gone.
    drop(
        reopen(config(&dir, false).change_log(small_log()))
            .await
            .unwrap(),
    );
    let segments = segment_files(&dir.join("changelog"));
    assert!(segments.len() >= 6, "{} segments", segments.len());
    Pristine { dir, changes, rows }
}

/// The log's segment files, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Where a file's bytes end, without the zeros reserved after the records of an open
/// segment.
fn data_len(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// One kind of damage done to the log's folder.
type Damage = Box<dyn Fn(&Path)>;

/// Every kind of damage, at several places: flipped bytes (in headers, frames, records and
/// seals), truncation, zeroed ranges, a deleted segment, garbage appended, for the first,
/// a middle, the last closed and the open segment; and stray files.
fn damages() -> Vec<(String, Damage)> {
    let mut out: Vec<(String, Damage)> = Vec::new();
    // Which segment: an index from the front, or from the back (-1: the open one).
    for which in [0i64, 3, -2, -1] {
        let pick = move |dir: &Path| {
            let files = segment_files(dir);
            let i = if which < 0 {
                (files.len() as i64 + which) as usize
            } else {
                which as usize
            };
            files[i].clone()
        };
        // Offsets: from the start, or from the end of the data (negative).
        for at in [
            0i64,
            3,
            20,
            39,
            40,
            44,
            48,
            200,
            -100,
            -12,
            -3,
            -1,
            i64::MIN,
        ] {
            out.push((
                format!("flip a byte at {at} of segment {which}"),
                Box::new(move |dir: &Path| {
                    let path = pick(dir);
                    let len = data_len(&path) as i64;
                    let at = match at {
                        i64::MIN => len / 2,
                        at if at < 0 => len + at,
                        at => at,
                    };
                    rewrite(&path, |b| {
                        if let Some(x) = b.get_mut(at.max(0) as usize) {
                            *x ^= 0x5A;
                        }
                    });
                }),
            ));
        }
        for keep in [0i64, 20, 40, 100, -1, -20, i64::MIN] {
            out.push((
                format!("truncate segment {which} to {keep}"),
                Box::new(move |dir: &Path| {
                    let path = pick(dir);
                    let len = data_len(&path) as i64;
                    let keep = match keep {
                        i64::MIN => len / 2,
                        k if k < 0 => len + k,
                        k => k,
                    };
                    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    file.set_len(keep.max(0) as u64).unwrap();
                }),
            ));
        }
        for (from, to) in [(0i64, 64i64), (30, 90), (-60, -40), (i64::MIN, -1), (-1, 0)] {
            out.push((
                format!("zero bytes {from}..{to} of segment {which}"),
                Box::new(move |dir: &Path| {
                    let path = pick(dir);
                    let len = data_len(&path) as i64;
                    let at = |x: i64| match x {
                        i64::MIN => len / 3,
                        x if x < 0 => len + x,
                        0 if from < 0 => len,
                        x => x,
                    };
                    let (a, b) = (at(from).max(0) as usize, at(to).max(0) as usize);
                    rewrite(&path, |bytes| {
                        let b = b.min(bytes.len());
                        if a < b {
                            bytes[a..b].iter_mut().for_each(|x| *x = 0);
                        }
                    });
                }),
            ));
        }
        out.push((
            format!("delete segment {which}"),
            Box::new(move |dir: &Path| std::fs::remove_file(pick(dir)).unwrap()),
        ));
        out.push((
            format!("append garbage to segment {which}"),
            Box::new(move |dir: &Path| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(pick(dir))
                    .unwrap();
                f.write_all(&[0xAB; 100]).unwrap();
            }),
        ));
        out.push((
            format!("append a copy of segment {which}'s start to it"),
            Box::new(move |dir: &Path| {
                let path = pick(dir);
                let bytes = std::fs::read(&path).unwrap();
                let head = bytes[..bytes.len().min(300)].to_vec();
                rewrite(&path, |b| b.extend_from_slice(&head));
            }),
        ));
    }
    let first_of =
        |p: &Path| u64::from_str_radix(p.file_stem().unwrap().to_str().unwrap(), 16).unwrap();
    let named = |dir: &Path, first: u64| dir.join(format!("{first:016x}.log"));
    out.push((
        "a stray file with another name".into(),
        Box::new(|dir: &Path| std::fs::write(dir.join("junk.log"), [0x42; 500]).unwrap()),
    ));
    out.push((
        "a stray segment between two (garbage)".into(),
        Box::new(move |dir: &Path| {
            let files = segment_files(dir);
            std::fs::write(named(dir, first_of(&files[2]) + 1), [0x42; 500]).unwrap()
        }),
    ));
    out.push((
        "a stray segment between two (a copy of another)".into(),
        Box::new(move |dir: &Path| {
            let files = segment_files(dir);
            std::fs::copy(&files[1], named(dir, first_of(&files[2]) + 1)).unwrap();
        }),
    ));
    out.push((
        "a stray segment after the last (garbage)".into(),
        Box::new(move |dir: &Path| {
            let files = segment_files(dir);
            let last = first_of(files.last().unwrap());
            std::fs::write(named(dir, last + 1_000), [0x42; 500]).unwrap()
        }),
    ));
    out.push((
        "a stray segment after the last (a copy of another)".into(),
        Box::new(move |dir: &Path| {
            let files = segment_files(dir);
            let last = first_of(files.last().unwrap());
            std::fs::copy(&files[2], named(dir, last + 1_000)).unwrap();
        }),
    ));
    out.push((
        "a stray segment after the last (zeros)".into(),
        Box::new(move |dir: &Path| {
            let files = segment_files(dir);
            let last = first_of(files.last().unwrap());
            std::fs::write(named(dir, last + 1_000), [0; 4096]).unwrap()
        }),
    ));
    out.push((
        "a stray segment before the first".into(),
        Box::new(move |dir: &Path| {
            let files = segment_files(dir);
            let first = first_of(&files[0]);
            std::fs::copy(&files[3], named(dir, first.saturating_sub(7))).unwrap();
        }),
    ));
    out.push((
        "two segments swapped".into(),
        Box::new(move |dir: &Path| {
            let files = segment_files(dir);
            let tmp = dir.join("swap.tmp");
            std::fs::rename(&files[2], &tmp).unwrap();
            std::fs::rename(&files[3], &files[2]).unwrap();
            std::fs::rename(&tmp, &files[3]).unwrap();
        }),
    ));
    out
}

fn pairs(items: &[Change]) -> Vec<(Option<Value>, Option<Value>, Option<remodel::Cursor>)> {
    items
        .iter()
        .map(|c| (c.old_val().cloned(), c.new_val().cloned(), c.cursor()))
        .collect()
}

/// What one damaged copy came to.
#[derive(Debug, Default)]
struct Outcome {
    refused: bool,
    exact: usize,
    expired: usize,
}

/// Opens a damaged copy of `p` and resumes from cursors before, inside and after every
/// segment: opening works or fails with `Error::Damaged`; every row is there; each resume
/// delivers exactly the changes after its cursor (and then goes on live) or fails with
/// `Error::CursorExpired`.
async fn check_damaged(p: &Pristine, label: &str, damage: &Damage, n: usize) -> Outcome {
    let dir = fresh_dir(&format!("case-{n}"));
    copy_into(&p.dir, &dir);
    damage(&dir.join("changelog"));
    let cfg = config(&dir, false).change_log(small_log());
    let db = match reopen(cfg).await {
        Err(Error::Damaged { .. }) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Outcome {
                refused: true,
                ..Outcome::default()
            };
        }
        Err(e) => panic!("{label}: opening gave an untyped error {e:?}"),
        Ok(db) => db,
    };
    assert_eq!(rows(&db, "t").await, p.rows, "{label}: rows lost");
    let t = db.table("t");
    let mut outcome = Outcome::default();
    let mut live = Vec::new();
    let last = p.changes.len() - 1;
    for k in [
        0,
        1,
        60,
        99,
        100,
        101,
        250,
        333,
        420,
        500,
        last - 40,
        last - 1,
        last,
    ] {
        let cursor = p.changes[k].cursor().unwrap();
        match t.changes().resume_from(cursor).await {
            Ok(mut feed) => {
                let want = &p.changes[k + 1..];
                let mut got = Vec::with_capacity(want.len());
                for i in 0..want.len() {
                    match tokio::time::timeout(Duration::from_secs(3), feed.next()).await {
                        Ok(Some(Ok(item))) => got.push(item),
                        other => panic!(
                            "{label}: resumed after change #{k}, item {i} of {} did not come: \
                             {other:?}",
                            want.len()
                        ),
                    }
                }
                assert_eq!(pairs(&got), pairs(want), "{label}: resumed after #{k}");
                outcome.exact += 1;
                live.push((k, feed));
            }
            Err(Error::CursorExpired { .. }) => outcome.expired += 1,
            Err(e) => panic!("{label}: resuming after #{k} gave an untyped error {e:?}"),
        }
    }
    // Nothing more than that: the next item of each is the next write.
    t.insert(json!({"id": "sentinel"})).await.unwrap();
    for (k, feed) in &mut live {
        let next = tokio::time::timeout(Duration::from_secs(3), feed.next()).await;
        match next {
            Ok(Some(Ok(item))) => assert_eq!(
                item.new_val(),
                Some(&json!({"id": "sentinel"})),
                "{label}: resumed after #{k}, an extra item"
            ),
            other => panic!("{label}: resumed after #{k}, the live item: {other:?}"),
        }
    }
    drop((live, t, db));
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// The class test of item 2: every kind of damage × opening and resuming from cursors
/// before, inside and after it; a database closed, and one dropped without a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_change_log_never_gives_a_gap() {
    for close in [true, false] {
        let p = pristine(&format!("pristine-{close}"), close).await;
        let (mut refused, mut exact, mut expired) = (0, 0, 0);
        for (n, (label, damage)) in damages().iter().enumerate() {
            let label = format!("{label} (closed: {close})");
            let o = check_damaged(&p, &label, damage, n).await;
            refused += usize::from(o.refused);
            exact += o.exact;
            expired += o.expired;
        }
        println!(
            "closed {close}: {} cases, {refused} refused to open; resumes: {exact} exact, \
             {expired} expired",
            damages().len()
        );
        // After a clean shutdown nothing is needed to redo: the database always opens.
        assert_eq!(refused, 0);
        let _ = std::fs::remove_dir_all(&p.dir);
    }
}

/// A redo-only log (a database whose writes are hard by default) damaged after a clean
/// shutdown: nothing in it is needed any more, so the database opens with every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_redo_log_after_a_clean_shutdown_loses_nothing() {
    let dir = fresh_dir("redo-pristine");
    let expected;
    {
        let db = config(&dir, false).open().await.unwrap();
        db.create_table("t").await.unwrap();
        let t = db.table("t");
        // About 2.5 MB of records: segments of 1 MiB.
        for i in 0..800i64 {
            t.insert(json!({"id": i % 300, "v": i, "pad": "p".repeat(3000)}))
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
        }
        expected = rows(&db, "t").await;
        db.close().await.unwrap();
    }
    drop(reopen(config(&dir, false)).await.unwrap());
    assert!(segment_files(&dir.join("changelog")).len() >= 2);
    for (n, (label, damage)) in damages().iter().enumerate() {
        let case = fresh_dir(&format!("redo-case-{n}"));
        copy_into(&dir, &case);
        damage(&case.join("changelog"));
        let db = match reopen(config(&case, false)).await {
            Ok(db) => db,
            Err(e) => panic!("{label}: {e:?}"),
        };
        assert_eq!(rows(&db, "t").await, expected, "{label}");
        // It goes on: a write, and a reopen.
        db.table("t").insert(json!({"id": "after"})).await.unwrap();
        drop(db);
        let db = reopen(config(&case, false)).await.unwrap();
        assert_eq!(
            db.table("t").query().count().await.unwrap(),
            expected.len() as u64 + 1
        );
        drop(db);
        let _ = std::fs::remove_dir_all(&case);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A segment damaged while the database is open: a feed resuming across it reads it from
/// the disk (the in-memory tail does not reach back that far) and gets `CursorExpired`, not
/// the changes before the damage and then a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_damaged_while_open_fails_the_resume() {
    let dir = fresh_dir("damaged-while-open");
    let retention = ChangeLogRetention {
        max_changes: Some(20_000),
        max_age: None,
    };
    let db = config(&dir, false)
        .change_log(retention)
        .open()
        .await
        .unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    t.insert(json!({"id": -1})).await.unwrap();
    let cursor = take(&mut feed, 1).await[0].cursor().unwrap();
    drop(feed);
    // More than the in-memory tail keeps once no feed is open.
    let docs: Vec<Value> = (0..17_000).map(|i| json!({"id": i})).collect();
    t.insert_many(docs).await.unwrap();
    let files = segment_files(&dir.join("changelog"));
    assert!(files.len() >= 3, "{} segments", files.len());
    let len = data_len(&files[1]);
    rewrite(&files[1], |b| b[len / 2] ^= 0x5A);
    let err = t
        .changes()
        .resume_from(cursor)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
    // A deleted one too.
    std::fs::remove_file(&files[2]).unwrap();
    let err = t
        .changes()
        .resume_from(cursor)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
    drop((t, db));
    let _ = std::fs::remove_dir_all(&dir);
}

const ENV_CRASH_DIR: &str = "REMODEL_DAMAGE_CRASH_DIR";

/// The child of `damage_after_a_crash_never_loses_an_acknowledged_write`: hard inserts
/// (each acknowledged once its record is on disk), printing each id once acknowledged.
/// Returns at once unless started by it.
#[test]
fn damage_crash_child() {
    let Some(dir) = std::env::var_os(ENV_CRASH_DIR) else {
        return;
    };
    let resumable = std::env::var("REMODEL_DAMAGE_RESUMABLE").is_ok();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let db = config(Path::new(&dir), resumable)
                // The engine is not flushed on a timer: the log holds the writes.
                .flush_interval(Duration::from_secs(3600))
                .open()
                .await
                .unwrap();
            db.ensure_table("t").await.unwrap();
            let t = db.table("t");
            for i in 0u64.. {
                t.insert(json!({"id": i, "pad": "p".repeat(200)}))
                    .await
                    .unwrap();
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                writeln!(out, "@@ ok {i}").unwrap();
                out.flush().unwrap();
            }
        });
}

/// Runs the child until it has `n` acknowledged writes, kills it (SIGKILL) and returns the
/// acknowledged ids.
fn run_crash_child(dir: &Path, resumable: bool, n: usize) -> Vec<u64> {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "damage_crash_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ENV_CRASH_DIR, dir)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    if resumable {
        cmd.env("REMODEL_DAMAGE_RESUMABLE", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.split("@@ ok ").nth(1) {
                if tx.send(id.trim().parse().unwrap()).is_err() {
                    break;
                }
            }
        }
    });
    let mut acked = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(id) => acked.push(id),
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    acked
}

/// After a SIGKILL, the log holds acknowledged writes the data files may not have. Damage
/// to the part of its open segment that was on disk (what its header says) is refused with
/// `Error::Damaged`; whatever opens has every acknowledged write.
#[test]
fn damage_after_a_crash_never_loses_an_acknowledged_write() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for resumable in [false, true] {
        let dir = fresh_dir(&format!("crash-{resumable}"));
        let acked = run_crash_child(&dir, resumable, 300);
        assert!(acked.len() >= 300, "{} acknowledged writes", acked.len());
        let open_segment = segment_files(&dir.join("changelog")).pop().unwrap();
        // What the segment's header says was on disk (the end of its records, for a log of
        // the first format, which had no header).
        let header = std::fs::read(&open_segment).unwrap();
        let durable = match &header[..8] == b"RMDLLOG2" {
            true => u64::from_le_bytes(header[16..24].try_into().unwrap()) as usize,
            false => data_len(&open_segment),
        };
        assert!(durable > 1_000, "{durable} bytes on disk");
        let check = |case: &Path, what: &str| {
            rt.block_on(async {
                match reopen(config(case, resumable)).await {
                    Err(Error::Damaged { .. }) if what != "undamaged" => {}
                    Err(e) => panic!("{what}: {e:?}"),
                    Ok(db) => {
                        let ids: std::collections::HashSet<u64> = rows(&db, "t")
                            .await
                            .iter()
                            .map(|r| r["id"].as_u64().unwrap())
                            .collect();
                        for id in &acked {
                            assert!(ids.contains(id), "{what}: acknowledged write {id} lost");
                        }
                        assert!(what == "undamaged", "{what}: opened");
                    }
                }
            })
        };
        let cases: Vec<(&str, Damage)> = vec![
            ("undamaged", Box::new(|_: &Path| {})),
            (
                "a flipped byte",
                Box::new(move |p: &Path| rewrite(p, |b| b[durable / 2] ^= 0x5A)),
            ),
            (
                "a zeroed range",
                Box::new(move |p: &Path| rewrite(p, |b| b[durable / 3..durable / 2].fill(0))),
            ),
            (
                "truncated",
                Box::new(move |p: &Path| {
                    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                    f.set_len(durable as u64 / 2).unwrap();
                }),
            ),
        ];
        for (what, damage) in &cases {
            let case = fresh_dir(&format!("crash-{resumable}-{what}"));
            copy_into(&dir, &case);
            damage(
                &case
                    .join("changelog")
                    .join(open_segment.file_name().unwrap()),
            );
            check(&case, what);
            let _ = std::fs::remove_dir_all(&case);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
