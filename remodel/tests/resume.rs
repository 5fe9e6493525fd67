//! Resumable feeds: a feed reopened from the cursor of the last item it delivered gets
//! exactly the changes it missed, in order, then goes on live; across a drop, a reopen of the
//! database and a SIGKILL of the writer process. Cursors older than the change log's
//! retention give `Error::CursorExpired`.

use futures::StreamExt;
use remodel::feed::Cursor;
use remodel::{
    json, Change, ChangeLogRetention, Config, Database, Durability, Error, Feed, IndexSpec, Order,
};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

async fn logged_db() -> Database {
    logged_db_keeping(ChangeLogRetention::default()).await
}

/// A temporary database (soft writes) whose change log keeps `retention`.
async fn logged_db_keeping(retention: ChangeLogRetention) -> Database {
    Config::temporary()
        .durability(Durability::Soft)
        .change_log(retention)
        .open()
        .await
        .unwrap()
}

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

async fn quiet(feed: &mut Feed) {
    let next = tokio::time::timeout(Duration::from_millis(150), feed.next()).await;
    assert!(next.is_err(), "no more items expected, got {next:?}");
}

fn pairs(items: &[Change]) -> Vec<(Option<remodel::Value>, Option<remodel::Value>)> {
    items
        .iter()
        .map(|c| (c.old_val().cloned(), c.new_val().cloned()))
        .collect()
}

/// Inserts, updates and deletes touching keys 0..20.
async fn writes(t: &remodel::Table, round: u64) {
    for i in 0..20u64 {
        t.insert(json!({"id": i, "round": round, "v": i * round}))
            .conflict(remodel::Conflict::Replace)
            .await
            .unwrap();
    }
    for i in (0..20u64).step_by(3) {
        t.get(i).delete().await.unwrap();
    }
    t.get(1).update(json!({"v": -1})).await.unwrap();
}

#[tokio::test]
async fn a_dropped_feed_resumes_with_exactly_the_changes_it_missed() {
    let db = logged_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    // The witness never disconnects: it sees every change.
    let mut witness = t.changes().await.unwrap();
    let mut feed = t.changes().await.unwrap();
    writes(&t, 1).await;
    let all_round1 = take(&mut witness, 28).await;
    let seen = take(&mut feed, 11).await;
    assert_eq!(pairs(&seen), pairs(&all_round1[..11]));
    let cursor = seen
        .last()
        .unwrap()
        .cursor()
        .expect("a change has a cursor");
    drop(feed);
    writes(&t, 2).await;
    let round2 = take(&mut witness, 28).await;
    // Through its text form, as a browser would send it back.
    let cursor: Cursor = cursor.to_string().parse().unwrap();
    let mut resumed = t.changes().resume_from(cursor).await.unwrap();
    let missed = take(&mut resumed, 17 + 28).await;
    let mut expected = all_round1[11..].to_vec();
    expected.extend(round2);
    assert_eq!(pairs(&missed), pairs(&expected));
    assert!(missed.windows(2).all(|w| w[0].cursor() < w[1].cursor()));
    quiet(&mut resumed).await;
    // Then live.
    t.insert(json!({"id": 99})).await.unwrap();
    let live = take(&mut resumed, 1).await;
    assert_eq!(live[0].new_val(), Some(&json!({"id": 99})));
    quiet(&mut resumed).await;
}

#[tokio::test]
async fn filtered_and_duplicate_key_feeds_resume_per_item() {
    let db = logged_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("round", IndexSpec::field("round"))
        .await
        .unwrap();
    let queries = [
        t.get_all([json!(1), json!(1), json!(4)]),
        t.query()
            .filter(remodel::field("v").gt(5))
            .pluck(["id", "v"]),
        t.between(
            std::ops::Bound::Included(json!(3)),
            std::ops::Bound::Excluded(json!(9)),
        ),
        t.get_all([json!(2)]).index("round"),
    ];
    for q in queries {
        let mut witness = q.changes().await.unwrap();
        let mut feed = q.changes().await.unwrap();
        writes(&t, 1).await;
        writes(&t, 2).await;
        let mut all = Vec::new();
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(200), witness.next()).await
        {
            all.push(item.unwrap());
        }
        assert!(all.len() >= 3, "{} items", all.len());
        // Every cut: resume after item k gives items k+1.. exactly.
        let seen = take(&mut feed, all.len()).await;
        drop(feed);
        for k in [0, 1, all.len() / 2, all.len() - 1] {
            let cursor = seen[k].cursor().unwrap();
            let mut resumed = q.changes().resume_from(cursor).await.unwrap();
            let got = take(&mut resumed, all.len() - k - 1).await;
            assert_eq!(pairs(&got), pairs(&all[k + 1..]), "cut after item {k}");
            quiet(&mut resumed).await;
        }
        t.query().delete().await.unwrap();
    }
}

#[tokio::test]
async fn items_of_one_commit_have_distinct_cursors() {
    let db = logged_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.get_all([json!(1), json!(1)]).changes().await.unwrap();
    t.insert(json!({"id": 1})).await.unwrap();
    let items = take(&mut feed, 2).await;
    let (a, b) = (items[0].cursor().unwrap(), items[1].cursor().unwrap());
    assert_ne!(a, b);
    assert_eq!(a.seq(), b.seq());
    drop(feed);
    let mut resumed = t
        .get_all([json!(1), json!(1)])
        .changes()
        .resume_from(a)
        .await
        .unwrap();
    let rest = take(&mut resumed, 1).await;
    assert_eq!(rest[0].cursor(), Some(b));
    quiet(&mut resumed).await;
}

#[tokio::test]
async fn expired_cursors_and_unresumable_feeds_are_refused() {
    let db = logged_db_keeping(ChangeLogRetention {
        max_changes: Some(100),
        max_age: None,
    })
    .await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    t.create_index("v", IndexSpec::field("v")).await.unwrap();
    let mut feed = t.changes().await.unwrap();
    t.insert(json!({"id": 0, "v": 0})).await.unwrap();
    let first = take(&mut feed, 1).await[0].cursor().unwrap();
    for i in 1..400 {
        t.insert(json!({"id": i, "v": i})).await.unwrap();
    }
    let all = take(&mut feed, 399).await;
    let err = t.changes().resume_from(first).await.unwrap_err();
    assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
    // A recent cursor still resumes.
    let recent = all[390].cursor().unwrap();
    let mut resumed = t.changes().resume_from(recent).await.unwrap();
    assert_eq!(pairs(&take(&mut resumed, 8).await), pairs(&all[391..]));
    // Feeds whose items are not a function of each change alone.
    let err = t
        .order_by(Order::index("v"))
        .limit(3)
        .changes()
        .resume_from(recent)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unwatchable(_)), "{err:?}");
    let err = db.stats().changes().resume_from(recent).await.unwrap_err();
    assert!(matches!(err, Error::Unwatchable(_)), "{err:?}");
    let err = t
        .changes()
        .include_initial(true)
        .resume_from(recent)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidFeedOption(_)), "{err:?}");
    // A cursor of no change this database made.
    let future: Cursor = "ffffffff-0".parse().unwrap();
    let err = t.changes().resume_from(future).await.unwrap_err();
    assert!(matches!(err, Error::InvalidFeedOption(_)), "{err:?}");
    // Without a change log, nothing resumes.
    let plain = Database::temporary().await.unwrap();
    plain.create_table("t").await.unwrap();
    let err = plain
        .table("t")
        .changes()
        .resume_from(recent)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
}

#[tokio::test]
async fn old_changes_expire_by_age() {
    let db = logged_db_keeping(ChangeLogRetention {
        max_changes: None,
        max_age: Some(Duration::from_millis(50)),
    })
    .await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    t.insert(json!({"id": 0})).await.unwrap();
    let first = take(&mut feed, 1).await[0].cursor().unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    // Age is checked every 1,024 changes (amortised).
    for i in 1..=1100 {
        t.insert(json!({"id": i})).await.unwrap();
    }
    let err = t.changes().resume_from(first).await.unwrap_err();
    assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
}

#[tokio::test]
async fn a_feed_resumes_across_a_reopen() {
    let dir = std::env::temp_dir().join(format!("remodel-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let open = || {
        Config::new(&dir)
            .change_log(ChangeLogRetention::default())
            .open()
    };
    let cursor;
    let expected;
    {
        let db = open().await.unwrap();
        db.create_table("t").await.unwrap();
        let t = db.table("t");
        let mut witness = t.changes().await.unwrap();
        writes(&t, 1).await;
        let all = take(&mut witness, 28).await;
        cursor = all[9].cursor().unwrap();
        expected = pairs(&all[10..]);
        db.close().await.unwrap();
    }
    // The first handle is gone once closed and dropped (reopen retries briefly).
    let db = open().await.unwrap();
    let t = db.table("t");
    let mut resumed = t.changes().resume_from(cursor).await.unwrap();
    assert_eq!(pairs(&take(&mut resumed, 18).await), expected);
    quiet(&mut resumed).await;
    t.insert(json!({"id": 500})).await.unwrap();
    let live = take(&mut resumed, 1).await;
    assert!(live[0].cursor().unwrap() > cursor);
    drop((resumed, t, db));
    let _ = std::fs::remove_dir_all(&dir);
}

const ENV_DIR: &str = "REMODEL_RESUME_CRASH_DIR";

/// The child: hard inserts, a feed printing each item's cursor and id. Returns at once
/// unless started by `a_feed_resumes_after_the_writer_is_killed`.
#[test]
fn resume_crash_child() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let db = Config::new(dir)
                .durability(Durability::Hard)
                .change_log(ChangeLogRetention::default())
                .open()
                .await
                .unwrap();
            db.ensure_table("log").await.unwrap();
            let log = db.table("log");
            let mut feed = log.changes().await.unwrap();
            let reader = tokio::spawn(async move {
                while let Some(item) = feed.next().await {
                    let c = item.unwrap();
                    let id = c.new_val().unwrap()["id"].clone();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "@@ seen {} {}", c.cursor().unwrap(), id).unwrap();
                    out.flush().unwrap();
                }
            });
            let writers: Vec<_> = (0..3)
                .map(|w| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        for i in 0u64.. {
                            log.insert(json!({"id": format!("{w}-{i}")})).await.unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.await.unwrap();
            }
            reader.await.unwrap();
        });
}

fn run_child(dir: &Path) -> Vec<(Cursor, String)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "resume_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // Until 300 items were seen (or 60 s), then SIGKILL mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lines.len() < 300 {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            // The harness prints `test resume_crash_child ... ` before the first line.
            Ok(l) if l.contains("@@ seen") => lines.push(l),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter().filter(|l| l.contains("@@ seen")));
    lines
        .iter()
        .filter_map(|l| {
            let at = l.find("@@ seen ")?;
            let mut parts = l[at..].strip_prefix("@@ seen ")?.splitn(2, ' ');
            let cursor = parts.next()?.parse().ok()?;
            let id: remodel::Value = serde_json::from_str(parts.next()?).ok()?;
            Some((cursor, id.as_str()?.to_string()))
        })
        .collect()
}

#[test]
fn a_feed_resumes_after_the_writer_is_killed() {
    let dir = std::env::temp_dir().join(format!("remodel-resume-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let seen = run_child(&dir);
    assert!(
        seen.len() >= 100,
        "the child delivered {} items",
        seen.len()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Config::new(&dir)
            .change_log(ChangeLogRetention::default())
            .open()
            .await
            .unwrap();
        let t = db.table("log");
        let rows = t.count().await.unwrap() as usize;
        for k in [0, seen.len() / 2, seen.len() - 1] {
            let (cursor, _) = &seen[k];
            let mut resumed = t.changes().resume_from(*cursor).await.unwrap();
            // Every row is one insert: after the cursor come exactly the rows not seen up to
            // it, the ones seen after it first, in the order they were seen.
            let mut got = Vec::new();
            while let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(500), resumed.next()).await
            {
                got.push(item.unwrap());
            }
            quiet(&mut resumed).await;
            let ids: Vec<String> = got
                .iter()
                .map(|c| c.new_val().unwrap()["id"].as_str().unwrap().to_string())
                .collect();
            let seen_after: Vec<String> = seen[k + 1..].iter().map(|(_, id)| id.clone()).collect();
            assert_eq!(
                ids[..seen_after.len()],
                seen_after[..],
                "cut after item {k}"
            );
            let mut every: Vec<String> = seen[..=k].iter().map(|(_, id)| id.clone()).collect();
            every.extend(ids);
            let total = every.len();
            every.sort();
            every.dedup();
            assert_eq!(every.len(), total, "no change delivered twice");
            assert_eq!(total, rows, "no change lost");
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_cursor_older_than_the_in_memory_tail_resumes_from_disk() {
    let db = logged_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    t.insert(json!({"id": -1})).await.unwrap();
    let cursor = take(&mut feed, 1).await[0].cursor().unwrap();
    drop(feed);
    // More changes than the log keeps in memory (16,384), fewer than it keeps on disk.
    let docs: Vec<remodel::Value> = (0..20_000).map(|i| json!({"id": i})).collect();
    t.insert_many(docs).await.unwrap();
    db.create_table("other").await.unwrap();
    db.table("other").insert(json!({"id": 1})).await.unwrap();
    let mut resumed = t.changes().resume_from(cursor).await.unwrap();
    let got = take(&mut resumed, 20_000).await;
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c.new_val(), Some(&json!({"id": i})));
    }
    quiet(&mut resumed).await;
    // From a recent cursor, the same changes come from memory.
    let recent = got[19_000].cursor().unwrap();
    let mut resumed = t.changes().resume_from(recent).await.unwrap();
    assert_eq!(pairs(&take(&mut resumed, 999).await), pairs(&got[19_001..]));
    quiet(&mut resumed).await;
}

#[tokio::test]
async fn a_cursor_from_before_a_table_was_recreated_has_expired() {
    let db = logged_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    t.insert(json!({"id": 1, "old": true})).await.unwrap();
    let old = take(&mut feed, 1).await[0].cursor().unwrap();
    t.insert(json!({"id": 2, "old": true})).await.unwrap();
    drop(feed);
    db.drop_table("t").await.unwrap();
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    t.insert(json!({"id": 3})).await.unwrap();
    let new = take(&mut feed, 1).await[0].cursor().unwrap();
    // The old table's changes must not come back as the new table's.
    let err = t.changes().resume_from(old).await.unwrap_err();
    assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
    t.insert(json!({"id": 4})).await.unwrap();
    let mut resumed = t.changes().resume_from(new).await.unwrap();
    assert_eq!(
        take(&mut resumed, 1).await[0].new_val(),
        Some(&json!({"id": 4}))
    );
    quiet(&mut resumed).await;
}

/// The in-memory tail is kept only while feeds are open (and for its length after the last
/// one closed): across a stretch without feeds, longer than the tail, and a feed opened again,
/// every cursor still resumes with exactly the changes after it (old ones from disk, recent
/// ones from memory), one at a time or in bulk commits.
#[tokio::test]
async fn cursors_resume_across_a_stretch_without_feeds() {
    let db = logged_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    t.insert(json!({"id": -1})).await.unwrap();
    let first = take(&mut feed, 1).await[0].cursor().unwrap();
    drop(feed);
    // No feed open for more changes than the tail holds.
    let docs: Vec<remodel::Value> = (0..17_000).map(|i| json!({"id": i})).collect();
    t.insert_many(docs).await.unwrap();
    for i in 17_000..17_100 {
        t.insert(json!({"id": i})).await.unwrap();
    }
    // A feed again: the tail fills from here on.
    let mut witness = t.changes().await.unwrap();
    for i in 17_100..17_110 {
        t.insert(json!({"id": i})).await.unwrap();
    }
    let recent = take(&mut witness, 10).await;
    drop(witness);
    for i in 17_110..17_120 {
        t.insert(json!({"id": i})).await.unwrap();
    }
    let mut resumed = t.changes().resume_from(first).await.unwrap();
    let got = take(&mut resumed, 17_120).await;
    for (i, c) in got.iter().enumerate() {
        assert_eq!(c.new_val(), Some(&json!({"id": i})), "item {i}");
    }
    quiet(&mut resumed).await;
    let mut resumed = t
        .changes()
        .resume_from(recent[4].cursor().unwrap())
        .await
        .unwrap();
    let got = take(&mut resumed, 15).await;
    assert_eq!(pairs(&got[..5]), pairs(&recent[5..]));
    assert_eq!(got[14].new_val(), Some(&json!({"id": 17_119})));
    quiet(&mut resumed).await;
}

/// The items of one atomic commit share its position (`Change::seq`), ordered inside it by
/// `position_in_commit`; positions increase from commit to commit; a cursor taken in the
/// middle of a commit resumes with the rest of that commit, exactly (issue 16, item 14).
#[tokio::test]
async fn items_of_one_commit_share_its_position_and_cursors_inside_it_resume_exactly() {
    let db = logged_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut feed = t.changes().await.unwrap();
    t.insert(json!({"id": 0})).await.unwrap();
    let docs: Vec<_> = (1..=5).map(|i| json!({ "id": i })).collect();
    t.insert_many(docs).await.unwrap();
    db.batch()
        .delete("t", 1)
        .delete("t", 2)
        .insert("t", json!({"id": 9}))
        .await
        .unwrap();
    let items = take(&mut feed, 9).await;
    let commits: Vec<Option<u64>> = items.iter().map(Change::seq).collect();
    let places: Vec<Option<u32>> = items.iter().map(Change::position_in_commit).collect();
    assert!(commits[0] < commits[1], "{commits:?}");
    assert!(
        commits[1..6].iter().all(|c| *c == commits[1]),
        "{commits:?}"
    );
    assert!(
        commits[6..9].iter().all(|c| *c == commits[6]),
        "{commits:?}"
    );
    assert!(commits[5] < commits[6], "{commits:?}");
    assert_eq!(
        places,
        [0, 0, 1, 2, 3, 4, 0, 1, 2].map(Some).to_vec(),
        "the place of each item in its commit"
    );
    // Resume from every item's cursor, inside commits too: exactly the items after it.
    for (i, item) in items.iter().enumerate() {
        let mut resumed = t
            .changes()
            .resume_from(item.cursor().unwrap())
            .await
            .unwrap();
        let rest = take(&mut resumed, items.len() - i - 1).await;
        assert_eq!(rest, items[i + 1..], "resumed from item {i}");
        let again: Vec<_> = rest
            .iter()
            .map(|c| (c.seq(), c.position_in_commit()))
            .collect();
        let first: Vec<_> = items[i + 1..]
            .iter()
            .map(|c| (c.seq(), c.position_in_commit()))
            .collect();
        assert_eq!(again, first, "resumed items keep their positions");
    }
}

/// A cascading model delete is one commit: every item it makes shares one position.
#[tokio::test]
async fn a_batch_over_tables_is_one_position_in_every_feed() {
    let db = logged_db().await;
    db.create_table("ships").await.unwrap();
    db.create_table("crew").await.unwrap();
    let (mut ships, mut crew) = (
        db.table("ships").changes().await.unwrap(),
        db.table("crew").changes().await.unwrap(),
    );
    db.batch()
        .insert("ships", json!({"id": "a"}))
        .insert("crew", json!({"id": 1}))
        .insert("crew", json!({"id": 2}))
        .insert("ships", json!({"id": "b"}))
        .await
        .unwrap();
    let (s, c) = (take(&mut ships, 2).await, take(&mut crew, 2).await);
    let all: Vec<_> = s.iter().chain(&c).map(Change::seq).collect();
    assert!(all.iter().all(|p| *p == all[0]), "{all:?}");
    let places: Vec<_> = s
        .iter()
        .chain(&c)
        .map(|c| c.position_in_commit().unwrap())
        .collect();
    assert_eq!(places, [0, 3, 1, 2]);
}

/// A cursor far behind (read from the log mostly outside the commit lock) resumes exactly
/// while writers go on: its items are the witness feed's after the cursor, none missed,
/// none twice, in order; writers are not held for the length of the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_behind_cursor_resumes_exactly_while_writers_go_on() {
    let db = logged_db().await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut witness = t.changes().await.unwrap();
    t.insert(json!({"id": "start"})).await.unwrap();
    let start = take(&mut witness, 1).await[0].cursor().unwrap();
    for chunk in 0..10u64 {
        let docs: Vec<_> = (0..1000)
            .map(|i| json!({"id": chunk * 1000 + i, "v": 0}))
            .collect();
        t.insert_many(docs).await.unwrap();
    }
    let writer = {
        let t = t.clone();
        tokio::spawn(async move {
            for i in 0..2000u64 {
                t.get(i * 5 % 10_000)
                    .update(json!({"v": i + 1}))
                    .await
                    .unwrap();
            }
        })
    };
    let mut resumed = t.changes().resume_from(start).await.unwrap();
    writer.await.unwrap();
    let expected = take(&mut witness, 12_000).await;
    let got = take(&mut resumed, 12_000).await;
    quiet(&mut resumed).await;
    let cursors = |items: &[Change]| items.iter().map(Change::cursor).collect::<Vec<_>>();
    assert_eq!(cursors(&got), cursors(&expected));
    assert_eq!(pairs(&got), pairs(&expected));
}

/// Resumes from cursors older than the in-memory tail and near the retention edge, while a
/// writer goes on and the log drops its oldest segments: each resume is exact (the witness's
/// items after the cursor, in order) or `CursorExpired`, never one with a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_racing_the_retention_are_exact_or_expired() {
    let db = logged_db_keeping(ChangeLogRetention {
        max_changes: Some(40_000),
        max_age: None,
    })
    .await;
    db.create_table("t").await.unwrap();
    let t = db.table("t");
    let mut witness = t.changes().queue_size(1_000_000).await.unwrap();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(Cursor, remodel::Value)>>> = Default::default();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(c)) = witness.next().await {
                let id = c.new_val().map(|v| v["id"].clone()).unwrap_or_default();
                seen.lock().unwrap().push((c.cursor().unwrap(), id));
            }
        })
    };
    let writer = {
        let t = t.clone();
        tokio::spawn(async move {
            for chunk in 0..240u64 {
                let docs: Vec<_> = (0..500).map(|i| json!({"id": chunk * 500 + i})).collect();
                t.insert_many(docs).await.unwrap();
            }
        })
    };
    let (mut exact, mut expired) = (0, 0);
    while !writer.is_finished() {
        let picked = {
            let seen = seen.lock().unwrap();
            // Older than the tail (16,384), at or past the retention's edge.
            let back = 20_000 + (seen.len() * 7919) % 22_000;
            let at = seen.len().saturating_sub(back);
            (seen.len() >= 30_000).then(|| (seen[at].0, at + 1))
        };
        let Some((cursor, from)) = picked else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        match t.changes().resume_from(cursor).await {
            Ok(mut feed) => {
                for i in 0..2_000 {
                    let c = tokio::time::timeout(Duration::from_secs(10), feed.next())
                        .await
                        .expect("the resumed feed goes on")
                        .unwrap()
                        .unwrap();
                    let got = (c.cursor().unwrap(), c.new_val().unwrap()["id"].clone());
                    let want = loop {
                        if let Some(w) = seen.lock().unwrap().get(from + i).cloned() {
                            break w;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    };
                    assert_eq!(got, want, "item {i} after {cursor}");
                }
                exact += 1;
            }
            Err(Error::CursorExpired { .. }) => expired += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    drop(reader);
    eprintln!("resumes: {exact} exact, {expired} expired");
    assert!(exact > 0, "no resume was exact");
}

/// `replay_at_most(n)`: a resume that would read more than `n` changes after the cursor
/// (of any table: the log holds them in order) is `CursorExpired`; `n` or fewer resume
/// exactly. The cursor's own change (read again for its later items) does not count. From
/// the in-memory tail and from the log alike.
#[tokio::test]
async fn a_replay_limit_counts_the_changes_after_the_cursor() {
    for from_disk in [false, true] {
        let db = logged_db().await;
        db.create_table("t").await.unwrap();
        db.create_table("other").await.unwrap();
        let t = db.table("t");
        let mut feed = t.changes().await.unwrap();
        t.insert(json!({"id": "start"})).await.unwrap();
        let at = take(&mut feed, 1).await[0].cursor().unwrap();
        if from_disk {
            // Past the tail's 16,384 changes: the resume reads the change log.
            let filler: Vec<_> = (0..17_000).map(|i| json!({"id": i})).collect();
            db.table("other").insert_many(filler).await.unwrap();
        }
        let before = if from_disk { 17_000 } else { 0 };
        let docs: Vec<_> = (0..300).map(|i| json!({"id": i})).collect();
        t.insert_many(docs).await.unwrap();
        let others: Vec<_> = (0..100).map(|i| json!({"id": 100_000 + i})).collect();
        db.table("other").insert_many(others).await.unwrap();
        let after = before + 300 + 100;
        let resume = |n| t.changes().resume_from(at).replay_at_most(n);
        let mut resumed = resume(after).await.unwrap();
        assert_eq!(take(&mut resumed, 300).await.len(), 300);
        quiet(&mut resumed).await;
        let err = resume(after - 1).await.unwrap_err();
        assert!(matches!(err, Error::CursorExpired { .. }), "{err:?}");
    }
}
