//! The PostgreSQL backend: two handles on one shared database stand for two app processes
//! (each has its own replica and replication slot): writes of either are seen by both, in
//! one order, and writes are decided against the current row across them.
#![cfg(feature = "postgres")]

use futures::StreamExt;
use remodel::postgres::{TestCluster, TestDatabase};
use remodel::{Database, Error};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn database(test: &str) -> Option<TestDatabase> {
    let cluster = TestCluster::shared_or_skip(test)?;
    Some(cluster.create_database().await.expect("a test database"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_see_each_others_writes() {
    let Some(pg) = database("two_processes_see_each_others_writes").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.expect("a connects");
    // b keeps its replica in a temporary sled store rather than in memory.
    let b = remodel::postgres::Connect::new(pg.url())
        .replica_in_memory(false)
        .open()
        .await
        .expect("b connects");
    a.create_table("crew").await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(b.table_names().unwrap(), vec!["crew".to_string()]);
    let mut feed = b.table("crew").changes().await.unwrap();
    a.table("crew")
        .insert(json!({"id": "kirk", "rank": "captain"}))
        .await
        .unwrap();
    let item = tokio::time::timeout(WAIT, feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(item.new_val().unwrap()["rank"], "captain");
    // A write in b decided against a's row.
    b.table("crew")
        .get("kirk")
        .update(json!({"ship": "enterprise"}))
        .await
        .unwrap();
    a.sync().await.unwrap();
    let kirk = a.table("crew").get("kirk").await.unwrap().unwrap();
    assert_eq!(
        kirk,
        json!({"id": "kirk", "rank": "captain", "ship": "enterprise"})
    );
    // A key conflict across processes.
    let again = b.table("crew").insert(json!({"id": "kirk"})).await.unwrap();
    assert_eq!(again.errors, 1, "{again:?}");
    // A third process loads what is there.
    let c = Database::connect(pg.url()).await.expect("c connects");
    assert_eq!(c.table("crew").get("kirk").await.unwrap().unwrap(), kirk);
    a.table("crew").get("kirk").delete().await.unwrap();
    c.sync().await.unwrap();
    assert!(c.table("crew").get("kirk").await.unwrap().is_none());
    a.drop_table("crew").await.unwrap();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match feed.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(end, Some(Error::FeedAborted(_))), "{end:?}");
}

/// The next item of `feed`, or its error, within the wait.
async fn next(feed: &mut remodel::Feed) -> Option<Result<remodel::Change, Error>> {
    tokio::time::timeout(WAIT, feed.next())
        .await
        .expect("an item within the wait")
}

/// The `stats` row of the PostgreSQL backend.
async fn pg_stats(db: &Database) -> serde_json::Value {
    let rows = db.stats().run().await.unwrap();
    rows.into_iter()
        .find(|r| r["type"] == "postgres")
        .expect("a postgres stats row")
}

/// Waits until one of `dbs` archives; returns its index.
async fn archiver(dbs: &[&Database]) -> usize {
    let begin = std::time::Instant::now();
    loop {
        for (i, db) in dbs.iter().enumerate() {
            if pg_stats(db).await["archiving"] == true {
                return i;
            }
        }
        assert!(begin.elapsed() < WAIT, "no process archives");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The items of `feed` until none comes for a moment.
async fn drain_for_a_moment(feed: &mut remodel::Feed) -> Vec<remodel::Change> {
    let mut items = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(500), feed.next()).await {
        items.push(item.unwrap());
    }
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_resumes_in_any_process_from_the_shared_history() {
    let Some(pg) = database("a_cursor_resumes_in_any_process").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("t").await.unwrap();
    let b = Database::connect(pg.url()).await.unwrap();
    archiver(&[&a, &b]).await;
    let mut feed = a.table("t").changes().await.unwrap();
    a.table("t").insert(json!({"id": 1})).await.unwrap();
    let first = next(&mut feed).await.unwrap().unwrap().cursor().unwrap();
    a.table("t").insert(json!({"id": 2})).await.unwrap();
    b.table("t").get(1).update(json!({"x": 1})).await.unwrap();
    // b followed the database since before the cursor: it resumes from its own log
    // (catching up first: the cursor may be ahead of b's replica by a moment).
    let mut resumed = b.table("t").changes().resume_from(first).await.unwrap();
    let item = next(&mut resumed).await.unwrap().unwrap();
    assert_eq!(item.new_val().unwrap()["id"], 2);
    // c started after it: its replica has no history that far back; the shared history
    // has. Exactly the changes after the cursor, then the live ones.
    let c = Database::connect(pg.url()).await.unwrap();
    let mut resumed = c.table("t").changes().resume_from(first).await.unwrap();
    a.table("t").insert(json!({"id": 3})).await.unwrap();
    let items = drain_for_a_moment(&mut resumed).await;
    let seen: Vec<_> = items
        .iter()
        .map(|c| (c.old_val().cloned(), c.new_val().cloned()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (None, Some(json!({"id": 2}))),
            (Some(json!({"id": 1})), Some(json!({"id": 1, "x": 1}))),
            (None, Some(json!({"id": 3}))),
        ]
    );
    // Cursors carried through: each resumed item's cursor resumes after it, in c too.
    let mid = items[0].cursor().unwrap();
    let mut again = c.table("t").changes().resume_from(mid).await.unwrap();
    let rest = drain_for_a_moment(&mut again).await;
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].cursor(), items[1].cursor());
    // A cursor from before the history: expired.
    let ancient: remodel::Cursor = "1-0".parse().unwrap();
    let refused = c.table("t").changes().resume_from(ancient).await;
    assert!(
        matches!(refused, Err(Error::CursorExpired { .. })),
        "{:?}",
        refused.err()
    );
    // A table dropped and made again after the cursor: its cursors expire everywhere.
    a.drop_table("t").await.unwrap();
    a.create_table("t").await.unwrap();
    let d = Database::connect(pg.url()).await.unwrap();
    let refused = d.table("t").changes().resume_from(first).await;
    assert!(
        matches!(refused, Err(Error::CursorExpired { .. })),
        "{:?}",
        refused.err()
    );
}

/// When the archiving process ends, another takes over where the history stops: a cursor
/// from before the takeover resumes in a process started after it, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_has_no_gap_across_an_archiver_takeover() {
    let Some(pg) = database("the_history_has_no_gap_across_an_archiver_takeover").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("t").await.unwrap();
    let b = Database::connect(pg.url()).await.unwrap();
    let (archiving, other) = match archiver(&[&a, &b]).await {
        0 => (a, b),
        _ => (b, a),
    };
    let mut feed = other.table("t").changes().await.unwrap();
    other.table("t").insert(json!({"id": 0})).await.unwrap();
    let cursor = next(&mut feed).await.unwrap().unwrap().cursor().unwrap();
    for i in 1..=50 {
        archiving.table("t").insert(json!({"id": i})).await.unwrap();
    }
    // The archiver goes, with writes right behind its last flush.
    archiving.close().await.unwrap();
    drop(archiving);
    for i in 51..=100 {
        other.table("t").insert(json!({"id": i})).await.unwrap();
    }
    assert_eq!(archiver(&[&other]).await, 0);
    let late = Database::connect(pg.url()).await.unwrap();
    let mut resumed = late.table("t").changes().resume_from(cursor).await.unwrap();
    let items = drain_for_a_moment(&mut resumed).await;
    let ids: Vec<i64> = items
        .iter()
        .map(|c| c.new_val().unwrap()["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=100).collect::<Vec<_>>());
}

/// A lost replication connection that the shared history cannot bridge (a DDL in the gap;
/// also: no other process archives): the process's feeds end with a typed error, and its
/// replica is reloaded to the database's state, so the handle goes on (reads, writes, new
/// feeds) and shows exactly what another process shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replication_connection_that_cannot_be_bridged_reloads_the_replica() {
    let Some(pg) = database("a_lost_replication_connection_reloads").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("t").await.unwrap();
    for i in 0..20 {
        a.table("t").insert(json!({"id": i, "v": 0})).await.unwrap();
    }
    let b = Database::connect(pg.url()).await.unwrap();
    let mut feed = a.table("t").changes().await.unwrap();
    let admin = pg.connect().await.unwrap();
    // A transaction held open: a's new slot waits for it, so what b commits meanwhile falls
    // in a's gap, deterministically.
    admin
        .batch_execute("CREATE TABLE blocker (x int)")
        .await
        .unwrap();
    let mut holder = pg.connect().await.unwrap();
    let held = holder.transaction().await.unwrap();
    held.execute("INSERT INTO blocker VALUES (1)", &[])
        .await
        .unwrap();
    kill_pump(&admin, &a).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..10 {
        b.table("t").get(i).update(json!({"v": 1})).await.unwrap();
    }
    b.table("t").get(19).delete().await.unwrap();
    b.table("t").insert(json!({"id": 100})).await.unwrap();
    b.create_table("u").await.unwrap(); // DDL: the history does not bridge it
    b.table("u").insert(json!({"id": "x"})).await.unwrap();
    held.commit().await.unwrap();
    // The feed ends with a typed error, never silently.
    loop {
        match tokio::time::timeout(WAIT, feed.next()).await.unwrap() {
            Some(Ok(_)) => continue,
            Some(Err(Error::FeedAborted(why))) => {
                assert!(why.contains("PostgreSQL"), "{why}");
                break;
            }
            other => panic!("the feed ended with {other:?}"),
        }
    }
    // The handle goes on, with the database as it is.
    a.sync().await.unwrap();
    let rows = |db: &Database, t: &'static str| {
        let db = db.clone();
        async move {
            db.table(t)
                .order_by(remodel::asc("id"))
                .run()
                .await
                .unwrap()
        }
    };
    assert_eq!(rows(&a, "t").await, rows(&b, "t").await);
    assert_eq!(rows(&a, "u").await, vec![json!({"id": "x"})]);
    let mut feed = a.table("t").changes().await.unwrap();
    b.table("t").insert(json!({"id": 101})).await.unwrap();
    let item = next(&mut feed).await.unwrap().unwrap();
    assert_eq!(item.new_val().unwrap()["id"], 101);
    a.table("t").insert(json!({"id": 102})).await.unwrap();
    b.sync().await.unwrap();
    assert!(b.table("t").get(102).await.unwrap().is_some());
    assert_eq!(pg_stats(&a).await["reconnects"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_change_nothing_are_decided_against_the_row_at_commit() {
    let Some(pg) = database("writes_that_change_nothing_are_decided").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("t").await.unwrap();
    let b = Database::connect(pg.url()).await.unwrap();
    b.sync().await.unwrap();
    // b writes; a, at once and without waiting to see it, writes the same row: a's replica
    // may not have it yet, but the outcome must be the row's at commit.
    for i in 0..100 {
        b.table("t").insert(json!({"id": i, "n": 0})).await.unwrap();
        let r = a.table("t").get(i).update(json!({"n": 1})).await.unwrap();
        assert_eq!((r.replaced, r.skipped), (1, 0), "update of row {i}");
        let r = b.table("t").get(i).delete().await.unwrap();
        assert_eq!(r.deleted, 1);
        let again = a.table("t").insert(json!({"id": i, "n": 2})).await.unwrap();
        assert_eq!((again.inserted, again.errors), (1, 0), "insert of row {i}");
        let r = b.table("t").get(i).delete().await.unwrap();
        assert_eq!(r.deleted, 1, "b's delete of row {i}");
    }
    a.sync().await.unwrap();
    assert_eq!(a.table("t").count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_connections_are_replaced() {
    let Some(pg) = database("lost_commit_connections_are_replaced").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("t").await.unwrap();
    a.table("t").insert(json!({"id": 0})).await.unwrap();
    let admin = pg.connect().await.unwrap();
    // Every connection of the database but this one and the replication connection.
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND backend_type = 'client backend' \
               AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(killed.len() >= 2, "{} connections", killed.len());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A write may meet a connection as it dies (an error, never a wrong answer); each
    // connection is replaced once found closed, and the writes go on.
    let mut done = 0;
    for i in 1..=20 {
        match a.table("t").insert(json!({"id": i})).await {
            Ok(r) => done += r.inserted,
            Err(Error::Storage { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        done >= 15,
        "only {done} of 20 writes after the connections were lost"
    );
    a.sync().await.unwrap();
    assert_eq!(a.table("t").count().await.unwrap(), done + 1);
    let mut feed = a.table("t").changes().await.unwrap();
    a.table("t").insert(json!({"id": 100})).await.unwrap();
    assert!(next(&mut feed).await.unwrap().is_ok());
}

/// Group commit (`postgres/group_commit.rs`) under contention from two processes: many tasks
/// in each insert keys that collide across processes and increment shared counters. Writes
/// of one process go to the server in groups, but each keeps its own outcome: every key is
/// inserted by exactly one acknowledged insert, whose document is the one stored; every
/// counter equals the acknowledged increments (a serial replay), none lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_writes_each_keep_their_own_outcome() {
    let Some(pg) = database("grouped_writes_each_keep_their_own_outcome").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    let b = Database::connect(pg.url()).await.unwrap();
    a.create_table("keys").await.unwrap();
    a.create_table("counters").await.unwrap();
    let counters = 4;
    for c in 0..counters {
        a.table("counters")
            .insert(json!({"id": c, "n": 0}))
            .await
            .unwrap();
    }
    b.sync().await.unwrap();
    let before = a.stats().run().await.unwrap();
    let commits_of = |stats: &[serde_json::Value]| {
        stats
            .iter()
            .find_map(|row| row["commits"].as_u64())
            .expect("a commits figure")
    };
    let mut tasks = Vec::new();
    for (p, db) in [(0, &a), (1, &b)] {
        for task in 0..16u64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut inserted = Vec::new();
                let mut increments = vec![0u64; counters];
                for i in 0..20u64 {
                    // Keys 0..160: each wanted by one task of each process.
                    let key = task * 10 + i % 10;
                    let r = db
                        .table("keys")
                        .insert(json!({"id": key, "by": [p, task, i]}))
                        .await
                        .unwrap();
                    if r.inserted == 1 {
                        inserted.push((key, json!([p, task, i])));
                    } else {
                        assert_eq!(r.errors, 1, "{r:?}");
                    }
                    let c = ((task + i) % counters as u64) as usize;
                    let r = db
                        .table("counters")
                        .get(c as u64)
                        .update(remodel::Patch::with(|doc| {
                            let n = doc["n"].as_u64().unwrap();
                            Ok(json!({"n": n + 1}))
                        }))
                        .await
                        .unwrap();
                    assert_eq!(r.replaced, 1, "{r:?}");
                    increments[c] += 1;
                }
                (inserted, increments)
            }));
        }
    }
    let mut owner = std::collections::HashMap::new();
    let mut expected = vec![0u64; counters];
    let mut written_by_a = 0;
    for (n, t) in tasks.into_iter().enumerate() {
        let (inserted, increments) = t.await.unwrap();
        if n < 16 {
            written_by_a += inserted.len() + increments.iter().sum::<u64>() as usize;
        }
        for (key, by) in inserted {
            assert!(owner.insert(key, by).is_none(), "key {key} inserted twice");
        }
        for (c, n) in increments.into_iter().enumerate() {
            expected[c] += n;
        }
    }
    a.sync().await.unwrap();
    let rows = a.table("keys").run().await.unwrap();
    assert_eq!(rows.len(), owner.len());
    for row in rows {
        let key = row["id"].as_u64().unwrap();
        assert_eq!(Some(&row["by"]), owner.get(&key), "key {key}");
    }
    for (c, n) in expected.iter().enumerate() {
        let doc = a.table("counters").get(c as u64).await.unwrap().unwrap();
        assert_eq!(doc["n"].as_u64(), Some(*n), "counter {c}");
    }
    // The writes of a's 16 tasks went to the server in fewer transactions than writes.
    let commits = commits_of(&a.stats().run().await.unwrap()) - commits_of(&before);
    assert!(
        (commits as usize) < written_by_a,
        "{commits} transactions for {written_by_a} writes"
    );
}

/// Terminates the replication connection of `db`'s pump.
async fn kill_pump(admin: &tokio_postgres::Client, db: &Database) {
    let slot = pg_stats(db).await["slot"].as_str().unwrap().to_string();
    let app = format!("remodel_pump_{}", &slot["remodel_".len()..]);
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one replication connection of {slot}");
}

/// A replication connection lost while another process writes: the replica reconnects
/// and applies the commits it missed from the shared history (whichever process archived,
/// this one included: it lets go and another takes over), so its feeds go on with no gap
/// and no duplicate, and its writes and syncs go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replication_connection_is_bridged_from_the_shared_history() {
    let Some(pg) = database("a_lost_replication_connection_is_bridged").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("t").await.unwrap();
    let b = Database::connect(pg.url()).await.unwrap();
    archiver(&[&a, &b]).await;
    let admin = pg.connect().await.unwrap();
    for round in 0..2u64 {
        let mut watched = a.table("t").changes().await.unwrap();
        let mut reference = b.table("t").changes().await.unwrap();
        let writer = {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..200u64 {
                    let id = round * 1000 + i % 50;
                    if i % 3 == 2 {
                        b.table("t").get(id).delete().await.unwrap();
                    } else {
                        b.table("t")
                            .insert(json!({"id": id, "i": i}))
                            .conflict(remodel::Conflict::Replace)
                            .await
                            .unwrap();
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        kill_pump(&admin, &a).await;
        writer.await.unwrap();
        // a's own writes and syncs work again.
        a.table("t")
            .insert(json!({"id": format!("a{round}")}))
            .await
            .unwrap();
        b.sync().await.unwrap();
        a.sync().await.unwrap();
        let strip = |items: Vec<remodel::Change>| -> Vec<_> {
            items
                .into_iter()
                .map(|c| (c.cursor(), c.old_val().cloned(), c.new_val().cloned()))
                .collect()
        };
        let seen = strip(drain_for_a_moment(&mut watched).await);
        let expected = strip(drain_for_a_moment(&mut reference).await);
        assert!(seen.len() > 100, "{} items", seen.len());
        assert_eq!(
            seen, expected,
            "round {round}: a's feed across the lost connection"
        );
        assert_eq!(
            a.table("t").run().await.unwrap().len(),
            b.table("t").run().await.unwrap().len()
        );
        assert_eq!(pg_stats(&a).await["reconnects"], round + 1);
    }
}

/// A replication connection lost while nothing is written: the shared history must still
/// reach past the new slot's start (the reconnecting process makes a commit after it), so
/// the gap, empty, is bridged; the feed goes on instead of being aborted by a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replication_connection_of_a_quiet_database_is_bridged() {
    let Some(pg) = database("a_lost_connection_of_a_quiet_database").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("t").await.unwrap();
    a.table("t").insert(json!({"id": 0})).await.unwrap();
    let b = Database::connect(pg.url()).await.unwrap();
    b.sync().await.unwrap();
    // b archives (a lets go when it loses its stream either way).
    let admin = pg.connect().await.unwrap();
    archiver(&[&a, &b]).await;
    let mut watched = a.table("t").changes().await.unwrap();
    kill_pump(&admin, &a).await;
    // No write: the reconnect must not need one.
    let begin = std::time::Instant::now();
    while pg_stats(&a).await["reconnects"] != 1 {
        assert!(begin.elapsed() < WAIT, "a never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.table("t").insert(json!({"id": 1})).await.unwrap();
    let item = next(&mut watched).await.unwrap().expect("not aborted");
    assert_eq!(item.new_val().unwrap()["id"], 1);
    a.sync().await.unwrap();
    assert_eq!(a.table("t").run().await.unwrap().len(), 2);
}

/// Writes are decided at commit against the database's newest rows, whatever this
/// process's replica has seen: another process deletes a row, and this process, whose
/// replica stopped following for a moment (so it surely stages against the deleted row),
/// updates it by key (the single-table, grouped path) and runs batches that require it
/// (the path that locks its tables): nothing may be written, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_only_checked_are_decided_against_the_row_at_commit() {
    let Some(pg) = database("rows_only_checked_are_decided").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("ships").await.unwrap();
    a.create_table("crew").await.unwrap();
    let b = Database::connect(pg.url()).await.unwrap();
    b.sync().await.unwrap();
    let admin = pg.connect().await.unwrap();
    let (mut joined, mut refused) = (0, 0);
    let rounds = 12;
    for i in 0..rounds {
        let ship = format!("s{i}");
        b.table("ships").insert(json!({"id": ship})).await.unwrap();
        a.sync().await.unwrap();
        // a's replica stops following for a moment (its stream is cut; it reconnects), so
        // that it surely stages against the ship b deletes now.
        kill_pump(&admin, &a).await;
        b.table("ships").get(ship.as_str()).delete().await.unwrap();
        // By key: the row is gone at commit, so nothing is replaced (and nothing revived).
        let updated = a
            .table("ships")
            .get(ship.as_str())
            .update(json!({"v": 1}))
            .await
            .unwrap();
        assert_eq!(
            updated.replaced, 0,
            "round {i}: an update revived a deleted row"
        );
        // Several tables: the ship must still be there.
        let several = a
            .batch()
            .require_exists("ships", ship.as_str())
            .insert("crew", json!({"id": format!("c{i}"), "ship": ship}))
            .await;
        // One table: the same.
        let one = a
            .batch()
            .require_exists("ships", ship.as_str())
            .insert("ships", json!({"id": format!("{ship}-tender")}))
            .await;
        for outcome in [several, one] {
            match outcome {
                Err(Error::NotFound { .. }) => refused += 1,
                Ok(_) => joined += 1,
                Err(e) => panic!("round {i}: {e}"),
            }
        }
    }
    assert_eq!(joined, 0, "{joined} writes committed against a deleted row");
    assert_eq!(refused, 2 * rounds);
    a.sync().await.unwrap();
    assert_eq!(a.table("crew").count().await.unwrap(), 0);
    assert_eq!(a.table("ships").count().await.unwrap(), 0);
}

/// A write that finds its key absent is decided against the rows as they are when it holds
/// its table's lock, not as they were when its statement began: a row committed while it
/// waited for the lock (held here by hand, as a write of several rows holds it) makes it
/// stage again instead of committing "absent".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_found_absent_is_checked_after_the_tables_lock() {
    let Some(pg) = database("a_key_found_absent_is_checked").await else {
        return;
    };
    let a = Database::connect(pg.url()).await.unwrap();
    a.create_table("t").await.unwrap();
    let restaged = |db: &Database| {
        let db = db.clone();
        async move { pg_stats(&db).await["restaged"].as_u64().unwrap() }
    };
    let before = restaged(&a).await;
    let mut holder = pg.connect().await.unwrap();
    let held = holder.transaction().await.unwrap();
    held.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('remodel:remodel.t_t', 0))",
        &[],
    )
    .await
    .unwrap();
    let writer = {
        let a = a.clone();
        tokio::spawn(async move { a.table("t").get(1).update(json!({"v": 1})).await })
    };
    // The writer's statement now waits for the lock; the row appears before it gets it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = remodel::value::encode_key(&json!(1)).unwrap();
    held.execute(
        "INSERT INTO remodel.t_t (k, doc) VALUES ($1, $2::text::json)",
        &[&key, &r#"{"id": 1}"#],
    )
    .await
    .unwrap();
    held.commit().await.unwrap();
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("the write ends")
        .unwrap()
        .unwrap();
    // The row was put there by hand, without a change record, so this replica never learns
    // of it: the write stages again until it falls back to locking the table, and ends
    // "skipped". What shows the check is that it staged again at all. (Were the writer's
    // statement to start only after the row is in, it would stage again too: the pause above
    // can only hide the bug, never fail a correct build.)
    assert!(
        restaged(&a).await > before,
        "the write committed \"absent\" against a row committed before it held the lock"
    );
}

/// A group that waits (here for a table's lock another session holds, as a write selecting
/// its rows at commit in another process does) does not hold up the writes queued behind
/// it: after a short wait they go on another connection. The waiting write commits once the
/// lock is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_group_does_not_hold_up_the_writes_behind_it() {
    let Some(pg) = database("a_blocked_group_does_not_hold_up_the_writes_behind_it").await else {
        return;
    };
    let db = remodel::postgres::Connect::new(pg.url())
        .connections(2)
        .open()
        .await
        .unwrap();
    db.create_table("locked").await.unwrap();
    db.create_table("free").await.unwrap();
    // The lock every commit of `locked` takes shared (see `schema::lock_name`), held
    // exclusively by another session.
    let admin = pg.connect().await.unwrap();
    admin
        .execute(
            "SELECT pg_advisory_lock(hashtextextended('remodel:remodel.t_locked', 0))",
            &[],
        )
        .await
        .unwrap();
    let blocked = tokio::spawn({
        let db = db.clone();
        async move { db.table("locked").insert(json!({"id": 1})).await }
    });
    // The first write's group waits for the lock on the server.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let waiting: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first write waits for the table's lock");
    assert!(!blocked.is_finished(), "the lock holds the first write");
    // More writes of the locked table queue behind it: a leader started because they wait
    // must not take them to the lock too (with 2 connections, the writes of another table
    // would then have none).
    let more: Vec<_> = (2..6)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move { db.table("locked").insert(json!({"id": i})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..5 {
        tokio::time::timeout(
            Duration::from_secs(5),
            db.table("free").insert(json!({"id": i})),
        )
        .await
        .expect("a write of another table goes on while the first waits")
        .unwrap();
    }
    assert!(!blocked.is_finished());
    admin
        .execute(
            "SELECT pg_advisory_unlock(hashtextextended('remodel:remodel.t_locked', 0))",
            &[],
        )
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, blocked)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.inserted, 1);
    for w in more {
        let r = tokio::time::timeout(WAIT, w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.inserted, 1);
    }
    assert_eq!(db.table("free").count().await.unwrap(), 5);
    assert_eq!(db.table("locked").count().await.unwrap(), 5);
}

/// The sessions a database has on the server (but the one asking), as
/// `application_name | backend_type | state | query`.
async fn sessions_on(cluster: &TestCluster, db: &str) -> Vec<String> {
    let admin = remodel::postgres::connect(cluster.admin_config())
        .await
        .expect("the admin connects");
    admin
        .query(
            "SELECT coalesce(application_name, '') || ' | ' || coalesce(backend_type, '') \
             || ' | ' || coalesce(state, '') || ' | ' || coalesce(query, '') \
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// `close()` with the server up leaves no session on it though the program keeps the handle
/// (as a program may, in a struct that outlives the close): the commit, sync and pool
/// connections end with the replication one, after the writes already sent have committed.
/// (They stayed open until the handle was dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_every_session_though_the_handle_is_kept() {
    let test = "close_ends_every_session_though_the_handle_is_kept";
    let Some(cluster) = TestCluster::shared_or_skip(test) else {
        return;
    };
    let pg = cluster.create_database().await.expect("a test database");
    let db = remodel::postgres::Connect::new(pg.url())
        .connections(3)
        .open()
        .await
        .expect("connects");
    db.create_table("t").await.unwrap();
    let mut feed = db.table("t").changes().await.unwrap();
    // Every kind of connection used: group commits (concurrent inserts), a multi-table
    // batch (the pool), sync tokens.
    let writes: Vec<_> = (0..32)
        .map(|i| {
            let t = db.table("t");
            tokio::spawn(async move { t.insert(json!({"id": i})).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    db.batch().insert("t", json!({"id": "b"})).await.unwrap();
    db.sync().await.unwrap();
    assert!(next(&mut feed).await.is_some());
    assert!(
        !sessions_on(cluster, pg.name()).await.is_empty(),
        "an open database has sessions"
    );
    db.close().await.unwrap();
    let mut left = Vec::new();
    for _ in 0..50 {
        left = sessions_on(cluster, pg.name()).await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.is_empty(),
        "5 s after close(), the kept handle still holds sessions: {left:#?}"
    );
    assert!(matches!(
        db.table("t").insert(json!({"id": "late"})).await,
        Err(Error::Closed)
    ));
    // What was acknowledged before the close is there.
    let other = Database::connect(pg.url()).await.expect("another process");
    assert_eq!(other.table("t").count().await.unwrap(), 33);
    drop(db);
}

/// A replication connection lost while a process opens (its walsender terminated while the
/// replica loads, as a server's connection reset or an operator's kill would) does not fail
/// the open: the replica is loaded again from a new slot. (`Database::connect` failed with
/// the pump's error; seen as a rare failure of `pg_replication_attack`, whose fresh process
/// connects while walsenders are being killed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_connection_lost_while_opening_is_opened_again() {
    let Some(pg) = database("a_replication_connection_lost_while_opening_is_opened_again").await
    else {
        return;
    };
    let setup = Database::connect(pg.url()).await.expect("setup connects");
    setup.create_table("t").await.unwrap();
    // Rows enough that loading them takes a while: the kill lands during the load.
    let docs: Vec<serde_json::Value> = (0..20_000)
        .map(|i| json!({"id": i, "pad": "x".repeat(200)}))
        .collect();
    setup.table("t").insert_many(docs).await.unwrap();
    setup.close().await.unwrap();
    drop(setup);
    let admin = pg.connect().await.expect("the admin connects");
    for round in 0..3 {
        // Terminates the first walsender of this database it sees (the opening process's),
        // then stops.
        let kills = async {
            for _ in 0..5_000 {
                let pids: Vec<i32> = admin
                    .query(
                        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' \
                         AND datname = current_database()",
                        &[],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if let Some(pid) = pids.first() {
                    admin
                        .query_one("SELECT pg_terminate_backend($1)", &[pid])
                        .await
                        .expect("terminate");
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            false
        };
        let (db, killed) = tokio::join!(Database::connect(pg.url()), kills);
        assert!(killed, "round {round}: no walsender was seen to kill");
        let db = db.unwrap_or_else(|e| panic!("round {round}: connect failed: {e:?}"));
        assert_eq!(
            db.table("t").count().await.unwrap(),
            20_000,
            "round {round}"
        );
        // And it follows the database.
        let mut feed = db.table("t").get(round).changes().await.unwrap();
        db.table("t")
            .get(round)
            .update(json!({"round": round}))
            .await
            .unwrap();
        let item = next(&mut feed).await.expect("an item").unwrap();
        assert_eq!(item.new_val().unwrap()["round"], round);
        db.close().await.unwrap();
    }
}

/// `close()` under concurrent writers: every write is acknowledged (and stored) or answered
/// `Closed`; none gets the error of a connection cut under its statement (close waits for
/// the writes on their way before it ends the connections), and every acknowledged write is
/// in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_close_are_stored_or_closed() {
    let Some(pg) = database("writes_racing_close_are_stored_or_closed").await else {
        return;
    };
    let db = remodel::postgres::Connect::new(pg.url())
        .connections(3)
        .open()
        .await
        .expect("connects");
    db.create_table("t").await.unwrap();
    db.create_table("u").await.unwrap();
    let writers: Vec<_> = (0..24u64)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                // Acknowledged ids, the one answered `Closed` (its outcome unknown: it may
                // have committed as the close came), and anything else.
                let (mut acked, mut odd, mut unknown) = (Vec::new(), Vec::new(), None);
                for i in 0.. {
                    let id = w * 1_000_000 + i;
                    // Single-table writes (group commits) and two-table batches.
                    let r = if i % 3 == 0 {
                        db.batch()
                            .insert("t", json!({"id": id}))
                            .insert("u", json!({"id": id}))
                            .await
                            .map(drop)
                    } else {
                        db.table("t").insert(json!({"id": id})).await.map(drop)
                    };
                    match r {
                        Ok(()) => acked.push(id),
                        Err(Error::Closed) => {
                            unknown = Some(id);
                            break;
                        }
                        Err(e) => {
                            odd.push(format!("write {id}: {e:?}"));
                            break;
                        }
                    }
                }
                (acked, odd, unknown)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.close().await.unwrap();
    let mut acked = Vec::new();
    let mut odd = Vec::new();
    let mut unknown = Vec::new();
    for w in writers {
        let (a, o, u) = w.await.unwrap();
        acked.extend(a);
        odd.extend(o);
        unknown.extend(u);
    }
    assert!(odd.is_empty(), "writes racing close(): {odd:#?}");
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the close"
    );
    let other = Database::connect(pg.url()).await.expect("another process");
    let ids_of = |docs: Vec<serde_json::Value>| -> std::collections::BTreeSet<u64> {
        docs.iter()
            .map(|d| d["id"].as_u64().expect("a numeric id"))
            .collect()
    };
    let stored = ids_of(other.table("t").query().run().await.unwrap());
    // The serial replay: the stored rows are the acknowledged writes, plus at most the one
    // write per writer whose answer was `Closed` (its outcome unknown); nothing else.
    let missing: Vec<&u64> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes not stored: {missing:?}"
    );
    let extra: Vec<&u64> = stored
        .iter()
        .filter(|id| !acked.contains(id) && !unknown.contains(id))
        .collect();
    assert!(extra.is_empty(), "rows no write acknowledged: {extra:?}");
    // A two-table batch is whole: its `u` row is there exactly when its `t` row is.
    let u = ids_of(other.table("u").query().run().await.unwrap());
    let batched: std::collections::BTreeSet<u64> = stored
        .iter()
        .filter(|id| *id % 1_000_000 % 3 == 0)
        .copied()
        .collect();
    assert_eq!(u, batched, "two-table batches stored in part");
}
