//! What the PostgreSQL server going away does to the processes connected to it (issue 18:
//! "the server restarting or the connection dropping ends feeds with a typed error or
//! bridges the gap exactly, never silently skips"), on a throwaway cluster of its own: the
//! suites' shared cluster is not stopped under their feet.
//!
//! 1. `server_restart_during_writes`: process A writes, process B watches (a table feed and
//!    a point feed, with their initial rows); the server is stopped (a crash, then a clean
//!    fast shutdown) and started again while A writes. Every write A had acknowledged is
//!    stored; each feed of B either ended with an error or, replayed onto its initial rows,
//!    equals the table as it is at the end; both handles work afterwards (a write of A
//!    reaches a new feed of B, B's reads see it).
//! 2. `outage_longer_than_the_reconnect_window`: the server stays down longer than a
//!    process tries to bridge the gap ([`Connect::reconnect_for`]): writes meanwhile fail
//!    with an error (none hangs), feeds end with one, and once the server is back the same
//!    handles work again, with no restart of the app.
//!
//! Seeds: none (the writes are numbered); the server's log tail is printed on a failure.

// The PostgreSQL attack suites' shared helpers (a cluster of the test's own).
mod pg_attack;

use futures::StreamExt;
use pg_attack::own_cluster;
use remodel::postgres::Connect;
use remodel::{json, ChangeKind, Database, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long anything may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(90);

/// What a feed delivered: its rows replayed onto its initial ones, or how it ended.
#[derive(Debug, Default)]
struct Watched {
    rows: BTreeMap<u64, Value>,
    ended: Option<String>,
    problems: Vec<String>,
}

/// Reads `feed` into a [`Watched`] until `stop` is set (and it has been idle a moment) or
/// it ends.
async fn watch(mut feed: remodel::Feed, stop: Arc<AtomicBool>) -> Watched {
    let mut w = Watched::default();
    let mut idle_since = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(100), feed.next()).await {
            Ok(Some(Ok(c))) => {
                idle_since = Instant::now();
                if c.kind() == ChangeKind::State {
                    continue;
                }
                if let Some(old) = c.old_val() {
                    let id = old["id"].as_u64().unwrap_or(u64::MAX);
                    if w.rows.remove(&id).as_ref() != Some(old) {
                        w.problems
                            .push(format!("old_val {old} is not what the feed showed"));
                    }
                }
                if let Some(new) = c.new_val() {
                    let id = new["id"].as_u64().unwrap_or(u64::MAX);
                    if w.rows.insert(id, new.clone()).is_some() && c.old_val().is_none() {
                        w.problems
                            .push(format!("{new} added over a row the feed showed"));
                    }
                }
            }
            Ok(Some(Err(e))) => {
                w.ended = Some(format!("{e} ({e:?})"));
                return w;
            }
            Ok(None) => {
                w.problems.push("the feed ended without an error".into());
                return w;
            }
            Err(_)
                if stop.load(Ordering::Relaxed)
                    && idle_since.elapsed() > Duration::from_millis(500) =>
            {
                return w;
            }
            Err(_) => {}
        }
    }
}

async fn rows(db: &Database) -> remodel::Result<BTreeMap<u64, Value>> {
    let mut out = BTreeMap::new();
    for row in db.table("t").run().await? {
        out.insert(row["id"].as_u64().unwrap_or(u64::MAX), row);
    }
    Ok(out)
}

/// Retries `f` until it succeeds (the handle works again) or `within` passes.
async fn until_ok<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = remodel::Result<T>>,
{
    let begin = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), f()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) if begin.elapsed() < within => {
                eprintln!("{what}: not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => panic!("{what}: still failing after {within:?}: {e}"),
            Err(_) => panic!("{what}: no answer within 20 s (a hang)"),
        }
    }
}

/// Process A's writes: inserts of numbered rows and updates of earlier ones, until `stop`;
/// returns the rows as A's acknowledged writes left them (a write that failed may have
/// committed or not: its row is left out of the check) and the errors seen.
async fn writes(
    a: Database,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> (BTreeMap<u64, Value>, Vec<String>) {
    let mut mine = BTreeMap::new();
    let mut unsure = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (id, write) = if i % 3 == 2 && i > 3 {
            (i / 2, "update")
        } else {
            (i, "insert")
        };
        let doc = json!({"id": id, "n": i});
        let t = a.table("t");
        let result = match write {
            "insert" => tokio::time::timeout(HANG, async { t.insert(doc.clone()).await }).await,
            _ => tokio::time::timeout(HANG, async { t.get(id).replace(doc.clone()).await }).await,
        };
        match result {
            Ok(Ok(r)) => {
                if r.errors == 0 && (r.inserted + r.replaced + r.unchanged) > 0 {
                    mine.insert(id, doc);
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                unsure.insert(id);
                errors.push(format!("{write} {id}: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => panic!("{write} {id} did not return within {HANG:?}"),
        }
        i += 1;
    }
    for id in unsure {
        mine.remove(&id);
    }
    (mine, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_during_writes() {
    let Some(cluster) = own_cluster("server_restart_during_writes") else {
        return;
    };
    let cluster = Arc::new(cluster);
    let pg = cluster.create_database().await.expect("a test database");
    let a = Database::connect(pg.url()).await.expect("A connects");
    let b = Database::connect(pg.url()).await.expect("B connects");
    a.create_table("t").await.unwrap();
    for id in 0..10u64 {
        a.table("t")
            .insert(json!({"id": id, "n": 0}))
            .await
            .unwrap();
    }
    b.sync().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let table_feed = b.table("t").changes().include_initial(true).await.unwrap();
    let point_feed = b
        .table("t")
        .get(4u64)
        .changes()
        .include_initial(true)
        .await
        .unwrap();
    let watchers = [
        tokio::spawn(watch(table_feed, stop.clone())),
        tokio::spawn(watch(point_feed, stop.clone())),
    ];
    let acked = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(writes(a.clone(), stop.clone(), acked.clone()));

    for immediate in [true, false] {
        let before = acked.load(Ordering::Relaxed);
        while acked.load(Ordering::Relaxed) < before + 50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || {
            c.stop_server(immediate).expect("the server stops");
            std::thread::sleep(Duration::from_secs(1));
            c.start_server().expect("the server starts again");
        })
        .await
        .unwrap();
        // A's writes go on after the restart.
        let after = acked.load(Ordering::Relaxed);
        let begin = Instant::now();
        while acked.load(Ordering::Relaxed) < after + 50 {
            assert!(
                begin.elapsed() < HANG,
                "A's writes did not resume after the restart: {}",
                cluster.log_tail(30).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mine, errors) = writer.await.unwrap();
    eprintln!(
        "{} write errors during the restarts, e.g. {:?}",
        errors.len(),
        errors.first()
    );

    // The table as it is now, read by B once it has caught up.
    until_ok("B syncs", HANG, || b.sync()).await;
    let stored = rows(&b).await.unwrap();
    let mut failures = Vec::new();
    for (id, doc) in &mine {
        if stored.get(id) != Some(doc) {
            failures.push(format!(
                "A's acknowledged write of row {id} ({doc}) is not stored: {:?}",
                stored.get(id)
            ));
        }
    }
    for (label, w) in ["table", "point 4"].iter().zip(watchers) {
        let w = w.await.unwrap();
        failures.extend(w.problems.iter().map(|p| format!("{label} feed: {p}")));
        match &w.ended {
            Some(why) => eprintln!("{label} feed ended: {why}"),
            None => {
                let want: BTreeMap<u64, Value> = if *label == "table" {
                    stored.clone()
                } else {
                    stored
                        .get_key_value(&4)
                        .map(|(k, v)| (*k, v.clone()))
                        .into_iter()
                        .collect()
                };
                if w.rows != want {
                    failures.push(format!(
                        "{label} feed went on through the restarts but its rows are not the \
                         table's ({} rows against {}): a silent gap",
                        w.rows.len(),
                        want.len()
                    ));
                }
            }
        }
    }

    // Both handles work: a write of A reaches a new feed of B and B's reads.
    let mut feed = until_ok("B opens a feed", HANG, || async {
        b.table("t").changes().await
    })
    .await;
    until_ok("A writes", HANG, || async {
        a.table("t")
            .insert(json!({"id": 1_000_000u64, "n": 1}))
            .await
    })
    .await;
    let item = tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .expect("B's new feed sees A's write")
        .expect("an item")
        .expect("not an error");
    assert_eq!(
        item.new_val().map(|v| v["id"].clone()),
        Some(json!(1_000_000u64))
    );
    b.sync().await.unwrap();
    assert!(b.table("t").get(1_000_000u64).await.unwrap().is_some());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_longer_than_the_reconnect_window() {
    let Some(cluster) = own_cluster("outage_longer_than_the_reconnect_window") else {
        return;
    };
    let pg = cluster.create_database().await.expect("a test database");
    let open = || {
        Connect::new(pg.url())
            .reconnect_for(Duration::from_millis(500))
            .open()
    };
    let a = open().await.expect("A connects");
    let b = open().await.expect("B connects");
    a.create_table("t").await.unwrap();
    a.table("t").insert(json!({"id": 1u64})).await.unwrap();
    b.sync().await.unwrap();
    let mut feed = b.table("t").changes().await.unwrap();

    // (pg_ctl waits for the server: off the runtime's workers.)
    tokio::task::block_in_place(|| cluster.stop_server(true)).expect("the server stops");
    // Down for several times the reconnect window: writes fail (none hangs), the feed ends.
    let begin = Instant::now();
    let mut failed = 0;
    while begin.elapsed() < Duration::from_secs(4) {
        match tokio::time::timeout(HANG, a.table("t").insert(json!({"id": 2u64}))).await {
            Ok(Ok(r)) => panic!("a write succeeded with the server down: {r:?}"),
            Ok(Err(_)) => failed += 1,
            Err(_) => panic!("a write with the server down did not return within {HANG:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(failed > 0);
    match tokio::time::timeout(Duration::from_secs(30), feed.next()).await {
        Ok(Some(Err(e))) => eprintln!("the feed ended: {e}"),
        other => panic!("the feed did not end with an error while the server was down: {other:?}"),
    }
    tokio::task::block_in_place(|| cluster.start_server()).expect("the server starts again");

    // The same handles work again.
    until_ok("A writes", HANG, || async {
        a.table("t").insert(json!({"id": 3u64})).await
    })
    .await;
    until_ok("B syncs", HANG, || b.sync()).await;
    let stored = rows(&b).await.unwrap();
    assert!(
        stored.contains_key(&1) && stored.contains_key(&3),
        "{stored:?}"
    );
    let mut feed = until_ok("B opens a feed", HANG, || async {
        b.table("t").changes().await
    })
    .await;
    a.table("t").insert(json!({"id": 4u64})).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .expect("B's feed sees A's write")
        .expect("an item")
        .expect("not an error");
    assert_eq!(item.new_val().map(|v| v["id"].clone()), Some(json!(4u64)));
}
