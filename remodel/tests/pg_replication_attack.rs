//! An adversarial, oracle-checked attack on the PostgreSQL replication path under
//! connection loss (`src/postgres/pump.rs`, `replica.rs`: `follow`, `reconnect`, `reload`;
//! `archive.rs`: the shared history and its one archiver).
//!
//! Every app process (here: a `Database::connect` handle) streams the WAL through a
//! temporary logical slot of its own. When that replication connection is lost, the process
//! starts a new slot and bridges the commits in between from the shared history
//! (`remodel.history`, written by whichever process holds the archiver's advisory lock), or,
//! when the history cannot bridge them, reloads its replica (ending its feeds with
//! `FeedAborted`) and goes on. The promises attacked: feeds never skip or repeat a change
//! silently, every acknowledged write is seen everywhere, cursors resume exactly in any
//! process, the handle keeps following, no slot outlives its handle.
//!
//! - **Walsender kills during a storm** (`walsender_kills_during_a_write_storm`). Handles A
//!   (4 commit connections) and B write continuously to t0 and t1 (upserts, updates,
//!   deletes, hot keys written by both, ~15% of the writes dropped after 0-3 ms), every
//!   write with a globally unique counter `c`. Meanwhile an admin session terminates one
//!   (sometimes two) of the test database's walsenders every 100-500 ms, at random among
//!   every handle's. Handles C and D hold feeds: table feeds, a point feed, a `between` range
//!   feed, a `filter` feed and an `order_by(index).limit(5)` feed, all with
//!   `include_initial`, and a feed resumed (`resume_from`) from a cursor C took before the
//!   storm. Mid-storm a "victim" feed on C is dropped at a cursor, a fresh handle E starts
//!   (during the kills) and resumes that cursor: E reads the older part from the shared
//!   history.
//!
//!   The oracle: each row feed's items, replayed onto its initial rows (an `old_val` must be
//!   exactly the row the feed last showed, a `new_val` without `old_val` must be of a row
//!   the feed did not show), equal the query re-run at the end; change positions strictly
//!   increase along every feed; C's and D's table feeds hold the same items after both
//!   snapshots; every acknowledged write's change (`id`, old, new, unique through `c`)
//!   appears exactly once in both table feeds, and every item is one of the issued writes;
//!   the resumed feeds equal the live table feed after their cursor (victim's items then
//!   E's: 0 missed, 0 duplicated); every handle (and a fresh one) reads the same state after
//!   `sync`. A feed may instead END with a typed error (`FeedAborted`: a reload), never
//!   hang. Afterwards the `postgres` stats must show `reconnects` > 0 (the attack hit) and
//!   `following` true on every handle, and a write on every handle must succeed.
//!
//! Not written yet (time ran out): killing the archiver's session
//! (`pg_terminate_backend` of the `remodel:remodel:archiver` lock holder) and checking the
//! history against a live feed; dropped handles leaving no slot; a walsender killed while a
//! replica reloads (`replica::reload` starts its pump once, with no retry, unlike
//! `reconnect`: a suspicion, not verified).
//!
//! Findings (the test failed, most runs, also with `REPL_ATTACK_NO_KILLS=1`, i.e. without
//! any walsender kill: a bug of the write path, not of replication):
//!
//! 1. Replicas diverge from PostgreSQL on hot keys. Every time the same shape: a delete of a
//!    key, then an insert (`Conflict::Replace` upsert or a plain insert, staged against the
//!    absent row) that is acknowledged with its change, whose record reaches every process
//!    (every replica, every feed, the shared history end with it), but PostgreSQL has no
//!    row for the key (a fresh process's load and `SELECT .. FROM remodel.t_t0` agree).
//!    From then on every write of that key restages, takes the table's lock and fails with
//!    `a row of a locked table changed under its lock: a write made outside Remodel?`
//!    (`backend.rs`, `commit_selected`), for good: the replica never learns. The same
//!    symptom commit 693b5bf saw in `pg_processes` and could not explain. The diverged keys
//!    are printed (`DIVERGED ...`) with D's last feed items, the write log, PostgreSQL's row
//!    and the history's last rows. The cause: an update of the missing row (skipped) commits
//!    the key as only *checked* absent, through the commit function (`schema.rs`,
//!    `COMMIT_FN`), which checked its rows and then deleted every row staged with no new
//!    document, the checked ones too, in a later statement with a newer snapshot: an insert
//!    another process committed between the two was deleted, with no record. Fixed: the
//!    function deletes only rows staged present (`a_skipped_update_never_deletes_a_row_
//!    inserted_meanwhile` in `pg_group_commit_attack.rs` is the focused test); with it this
//!    suite passed 5 runs of 5 (3 without kills, 2 with).
//! 2. One run (with kills) hung after the victim feed was dropped, past every tokio timeout
//!    of the test (so possibly both runtime workers blocked); not reproduced since.
//!
//! The seed is printed; set `REPL_ATTACK_SEED` to replay one (the interleaving still
//! varies).
#![cfg(feature = "postgres")]

mod pg_attack;

use futures::StreamExt;
use pg_attack::{assert_no_failures, database, seed, Rng};
use remodel::postgres::tokio_postgres::Client;
use remodel::postgres::Connect;
use remodel::{field, Change, ChangeKind, Conflict, Cursor, Database, Error, IndexSpec, Order};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::IntoFuture;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: u64 = 24;
const STORM: Duration = Duration::from_secs(8);
/// A feed silent this long while writes go on (or a write not done in it) is a hang.
const HANG: Duration = Duration::from_secs(40);
/// After the storm, a feed that delivered nothing for this long (its handle synced) is done.
const IDLE: Duration = Duration::from_millis(1500);

fn key(k: u64) -> String {
    format!("k{k:02}")
}

/// The `postgres` stats row of a handle.
async fn pg_stats(db: &Database) -> Value {
    db.stats()
        .filter(field("type").eq("postgres"))
        .run()
        .await
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .unwrap_or(Value::Null)
}

/// The walsenders of the test database (pid, application name): every handle's pump.
async fn walsenders(admin: &Client) -> Vec<(i32, String)> {
    admin
        .query(
            "SELECT pid, coalesce(application_name, '') FROM pg_stat_activity \
             WHERE backend_type = 'walsender' AND datname = current_database() ORDER BY pid",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn terminate(admin: &Client, pid: i32) -> bool {
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
}

/// One feed item, as the oracle compares it.
#[derive(Clone, Debug, PartialEq)]
struct Item {
    kind: ChangeKind,
    cursor: Option<Cursor>,
    /// (seq, position in commit)
    at: Option<(u64, u32)>,
    old: Option<Value>,
    new: Option<Value>,
}

fn item(c: &Change) -> Item {
    Item {
        kind: c.kind(),
        cursor: c.cursor(),
        at: c.seq().zip(c.position_in_commit()),
        old: c.old_val().cloned(),
        new: c.new_val().cloned(),
    }
}

/// What a feed delivered: its items, and how it ended (`None`: still live when drained).
#[derive(Debug, Default)]
struct Collected {
    items: Vec<Item>,
    end: Option<String>,
    /// The typed error it ended with, if any.
    aborted: bool,
    snapshot: Option<Cursor>,
}

/// Reads `feed` until `drain` is set and it stays idle for [`IDLE`], or it ends. Silence
/// for [`HANG`] while not draining is recorded as a hang.
async fn collect(
    mut feed: remodel::Feed,
    drain: Arc<AtomicBool>,
    shared: Option<Arc<Mutex<Vec<Item>>>>,
) -> Collected {
    let mut out = Collected {
        snapshot: feed.snapshot_cursor(),
        ..Collected::default()
    };
    let mut last = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(100), feed.next()).await {
            Ok(Some(Ok(c))) => {
                last = Instant::now();
                if c.kind() == ChangeKind::State {
                    continue;
                }
                let it = item(&c);
                if let Some(s) = &shared {
                    s.lock().unwrap().push(it.clone());
                }
                out.items.push(it);
            }
            Ok(Some(Err(e))) => {
                out.aborted = matches!(e, Error::FeedAborted(_));
                out.end = Some(format!("{e} ({e:?})"));
                return out;
            }
            Ok(None) => {
                out.end = Some("the feed ended without an error".into());
                return out;
            }
            Err(_) => {
                if drain.load(Ordering::Relaxed) && last.elapsed() > IDLE {
                    return out;
                }
                if last.elapsed() > HANG {
                    out.end = Some(format!("HANG: the feed was silent for {HANG:?}"));
                    return out;
                }
            }
        }
    }
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .map_or_else(|| v["id"].to_string(), str::to_string)
}

/// Replays a row feed's items onto its initial rows; checks that positions strictly
/// increase and that every change applies to what the feed showed. Returns the state.
fn replay(items: &[Item], label: &str, failures: &mut Vec<String>) -> BTreeMap<String, Value> {
    // A top-N item is about its whole commit: the items of one commit share a position.
    let strict = !label.ends_with("top5");
    let mut state = BTreeMap::new();
    let mut last_at: Option<(u64, u32)> = None;
    let mut seen_change = false;
    for (i, it) in items.iter().enumerate() {
        if it.kind == ChangeKind::Initial {
            if seen_change {
                failures.push(format!("{label}: initial item #{i} after a change"));
            }
            if let Some(new) = &it.new {
                state.insert(id_of(new), new.clone());
            }
            continue;
        }
        seen_change = true;
        match (it.at, last_at) {
            (None, _) => failures.push(format!("{label}: change #{i} without a position")),
            (Some(at), Some(prev)) if at < prev || (strict && at == prev) => {
                failures.push(format!(
                    "{label}: change #{i} at {at:?} not after the previous one at {prev:?} \
                 (duplicated or reordered): {it:?}"
                ))
            }
            _ => {}
        }
        last_at = it.at.or(last_at);
        if let Some(old) = &it.old {
            let shown = state.remove(&id_of(old));
            if shown.as_ref() != Some(old) {
                failures.push(format!(
                    "{label}: change #{i}'s old_val {old} is not what the feed showed: \
                     {shown:?} (a change was skipped or repeated)"
                ));
            }
        }
        if let Some(new) = &it.new {
            if let Some(prev) = state.insert(id_of(new), new.clone()) {
                if it.old.is_none() {
                    failures.push(format!(
                        "{label}: change #{i} adds {new} over {prev} the feed showed"
                    ));
                }
            }
        }
    }
    state
}

fn keyed(rows: Vec<Value>) -> BTreeMap<String, Value> {
    rows.into_iter().map(|r| (id_of(&r), r)).collect()
}

fn show_diff(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> String {
    let only_a: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .take(4)
        .collect();
    let only_b: Vec<_> = b
        .iter()
        .filter(|(k, v)| a.get(*k) != Some(v))
        .take(4)
        .collect();
    format!("replayed has {only_a:?}; query has {only_b:?}")
}

/// What a writer did: per issued write, its table, key, counter and outcome.
#[derive(Debug, Clone)]
enum Outcome {
    /// Acknowledged, with the change it made (old, new) if any.
    Acked(Option<(Option<Value>, Option<Value>)>),
    Dropped,
    Failed(String),
}

#[derive(Debug, Clone)]
struct Issued {
    table: usize,
    key: String,
    c: u64,
    delete: bool,
    outcome: Outcome,
}

/// A storm writer: random upserts, updates and deletes of t0/t1 until `stop`.
async fn writer(
    db: Database,
    w: u64,
    seed: u64,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<Issued> {
    let mut rng = Rng(seed ^ w.wrapping_mul(0xA24B_AED4_963E_E407));
    let mut log = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = rng.below(2) as usize;
        let table = db.table(format!("t{t}"));
        // A third of the writes go to the 3 hot keys.
        let k = if rng.chance(33) {
            rng.below(3)
        } else {
            rng.below(KEYS)
        };
        let id = key(k);
        let c = counter.fetch_add(1, Ordering::SeqCst);
        let n = rng.below(1000);
        let what = rng.below(100);
        let delete = what >= 80;
        let fut = if what < 45 {
            table
                .insert(json!({"id": id, "c": c, "n": n, "w": w}))
                .conflict(Conflict::Replace)
                .return_changes(true)
                .into_future()
        } else if !delete {
            table
                .get(id.as_str())
                .update(json!({"c": c, "n": n, "w": w}))
                .return_changes(true)
                .into_future()
        } else {
            table
                .get(id.as_str())
                .delete()
                .return_changes(true)
                .into_future()
        };
        let cancel = rng
            .chance(15)
            .then(|| Duration::from_micros(rng.below(3000)));
        let outcome = match cancel {
            Some(d) => match tokio::time::timeout(d, fut).await {
                Err(_) => Outcome::Dropped,
                Ok(r) => ack(r),
            },
            None => match tokio::time::timeout(HANG, fut).await {
                Err(_) => Outcome::Failed(format!("HANG: a write took over {HANG:?}")),
                Ok(r) => ack(r),
            },
        };
        log.push(Issued {
            table: t,
            key: id,
            c,
            delete,
            outcome,
        });
    }
    log
}

fn ack(r: remodel::Result<remodel::WriteResult>) -> Outcome {
    match r {
        Ok(r) => Outcome::Acked(
            r.changes
                .first()
                .map(|p| (p.old_val.clone(), p.new_val.clone())),
        ),
        Err(e) => Outcome::Failed(format!("{e} ({e:?})")),
    }
}

/// Kills one (sometimes two) of the database's walsenders every 100-500 ms until `stop`;
/// returns how many it terminated.
async fn walsender_killer(admin: Client, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng(seed ^ 0xDEAD);
    let mut killed = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        let senders = walsenders(&admin).await;
        if senders.is_empty() {
            continue;
        }
        let n = if rng.chance(15) { 2 } else { 1 };
        for _ in 0..n {
            let (pid, _) = &senders[rng.below(senders.len() as u64) as usize];
            if terminate(&admin, *pid).await {
                killed += 1;
            }
        }
    }
    killed
}

/// The feeds a feed handle holds: name, the query re-run at the end, and whether it is a
/// top-N feed (compared as a set of rows).
fn feed_specs() -> Vec<&'static str> {
    vec!["t0", "t1", "t0_point", "t0_range", "t0_filter", "t0_top5"]
}

async fn open_feed(db: &Database, name: &str) -> remodel::Feed {
    let f = match name {
        "t0" => db.table("t0").changes(),
        "t1" => db.table("t1").changes(),
        "t0_point" => db.table("t0").get(key(0).as_str()).changes(),
        "t0_range" => db
            .table("t0")
            .between(
                Bound::Included(json!(key(5))),
                Bound::Excluded(json!(key(15))),
            )
            .changes(),
        "t0_filter" => db.table("t0").filter(field("n").lt(300)).changes(),
        "t0_top5" => db
            .table("t0")
            .order_by(Order::index("n").desc())
            .limit(5)
            .changes(),
        _ => unreachable!(),
    };
    f.include_initial(true).await.expect("a feed opens")
}

async fn rerun(db: &Database, name: &str) -> BTreeMap<String, Value> {
    let rows = match name {
        "t0" => db.table("t0").run().await,
        "t1" => db.table("t1").run().await,
        "t0_point" => db
            .table("t0")
            .get(key(0).as_str())
            .run()
            .await
            .map(|r| r.into_iter().collect()),
        "t0_range" => {
            db.table("t0")
                .between(
                    Bound::Included(json!(key(5))),
                    Bound::Excluded(json!(key(15))),
                )
                .run()
                .await
        }
        "t0_filter" => db.table("t0").filter(field("n").lt(300)).run().await,
        "t0_top5" => {
            db.table("t0")
                .order_by(Order::index("n").desc())
                .limit(5)
                .run()
                .await
        }
        _ => unreachable!(),
    };
    keyed(rows.expect("the query re-run"))
}

/// The change of an item as the write log knows it: (id, old, new).
type ChangeId = (String, Option<Value>, Option<Value>);

fn change_id(table_item: &Item) -> ChangeId {
    let id = table_item
        .new
        .as_ref()
        .or(table_item.old.as_ref())
        .map(id_of)
        .unwrap_or_default();
    (id, table_item.old.clone(), table_item.new.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_kills_during_a_write_storm() {
    let Some(pg) = database("walsender_kills_during_a_write_storm").await else {
        return;
    };
    let seed = seed("REPL_ATTACK_SEED");
    let t0 = Instant::now();
    let a = Connect::new(pg.url())
        .connections(4)
        .open()
        .await
        .expect("a connects");
    for t in 0..2 {
        a.create_table(&format!("t{t}")).await.expect("a table");
        let rows: Vec<Value> = (0..KEYS)
            .step_by(2)
            .map(|k| json!({"id": key(k), "c": 0, "n": k * 40, "w": 99}))
            .collect();
        a.table(format!("t{t}"))
            .insert_many(rows)
            .await
            .expect("rows");
    }
    a.table("t0")
        .create_index("n", IndexSpec::field("n"))
        .await
        .expect("an index");
    let b = Database::connect(pg.url()).await.expect("b connects");
    let c = Database::connect(pg.url()).await.expect("c connects");
    let d = Database::connect(pg.url()).await.expect("d connects");
    for db in [&b, &c, &d] {
        db.sync().await.expect("sync");
    }
    let admin = pg.connect().await.expect("admin");
    println!(
        "walsenders before the storm: {:?}",
        walsenders(&admin).await
    );

    // The feeds of C and D, all with their initial rows.
    let drain = Arc::new(AtomicBool::new(false));
    let mut feeds = Vec::new();
    for (h, db) in [("C", &c), ("D", &d)] {
        for name in feed_specs() {
            let feed = open_feed(db, name).await;
            feeds.push((h, name, tokio::spawn(collect(feed, drain.clone(), None))));
        }
    }
    // A feed on D resumed from C's position (a cursor of another process, before the storm).
    let before_storm = c.position();
    let resumed_d = d
        .table("t1")
        .changes()
        .resume_from(before_storm)
        .await
        .expect("a resumed feed");
    let resumed_d = tokio::spawn(collect(resumed_d, drain.clone(), None));
    // The victim feed on C: dropped mid-storm at a cursor that a fresh process resumes.
    let victim_start = c.position();
    let victim_items = Arc::new(Mutex::new(Vec::new()));
    let victim_stop = Arc::new(AtomicBool::new(false));
    let victim = {
        let feed = c.table("t0").changes().await.expect("the victim feed");
        let (items, stop) = (victim_items.clone(), victim_stop.clone());
        tokio::spawn(async move {
            let mut feed = feed;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(r)) =
                    tokio::time::timeout(Duration::from_millis(50), feed.next()).await
                {
                    match r {
                        Ok(ch) => items.lock().unwrap().push(item(&ch)),
                        Err(e) => return Some(format!("{e} ({e:?})")),
                    }
                }
            }
            None // The feed is dropped here.
        })
    };

    // The storm.
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(1));
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let db = if w < 3 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(writer(
            db,
            w,
            seed,
            counter.clone(),
            stop.clone(),
        )));
    }
    // REPL_ATTACK_NO_KILLS=1: the same storm without the attack (a control run).
    let no_kills = std::env::var("REPL_ATTACK_NO_KILLS").is_ok();
    let kill_stop = Arc::new(AtomicBool::new(no_kills));
    let killer = tokio::spawn(walsender_killer(
        pg.connect().await.expect("admin"),
        seed,
        kill_stop.clone(),
    ));

    // Mid-storm: the victim feed is dropped at its last cursor; after more kills a fresh
    // process E resumes it (the older part from the shared history).
    tokio::time::sleep(STORM * 2 / 5).await;
    victim_stop.store(true, Ordering::Relaxed);
    let victim_end = victim.await.expect("the victim task");
    let victim_items: Vec<Item> = victim_items.lock().unwrap().clone();
    let victim_cursor = victim_items
        .last()
        .and_then(|i| i.cursor)
        .unwrap_or(victim_start);
    println!(
        "victim feed dropped after {} items at {victim_cursor}",
        victim_items.len()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = tokio::time::timeout(HANG, Database::connect(pg.url()))
        .await
        .expect("E connects in time")
        .expect("e connects");
    let resumed_e = tokio::time::timeout(
        HANG,
        e.table("t0")
            .changes()
            .resume_from(victim_cursor)
            .into_future(),
    )
    .await
    .expect("E's resume does not hang");
    let resumed_e = match resumed_e {
        Ok(feed) => Ok(tokio::spawn(collect(feed, drain.clone(), None))),
        Err(err) => Err(format!("{err} ({err:?})")),
    };
    tokio::time::sleep(STORM * 3 / 5).await;
    kill_stop.store(true, Ordering::Relaxed);
    let kills = killer.await.expect("the killer");
    stop.store(true, Ordering::Relaxed);
    let mut log: Vec<Issued> = Vec::new();
    for h in writers {
        log.extend(
            tokio::time::timeout(HANG * 2, h)
                .await
                .expect("a writer hung")
                .expect("a writer panicked"),
        );
    }
    let acked = log
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Acked(_)))
        .count();
    let dropped = log
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Dropped))
        .count();
    println!(
        "storm over after {:?}: {} writes issued, {acked} acknowledged, {dropped} dropped, \
         {kills} walsenders terminated",
        t0.elapsed(),
        log.len()
    );

    let mut failures: Vec<String> = Vec::new();
    for w in &log {
        if let Outcome::Failed(e) = &w.outcome {
            failures.push(format!("write c={} t{}/{}: {e}", w.c, w.table, w.key));
        }
    }

    // Every handle catches up; then the stats.
    let handles = [("A", &a), ("B", &b), ("C", &c), ("D", &d), ("E", &e)];
    for (h, db) in handles {
        match tokio::time::timeout(HANG, db.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failures.push(format!("{h}: sync after the storm failed: {err}")),
            Err(_) => failures.push(format!("{h}: sync after the storm hung")),
        }
    }
    let mut reconnects = 0;
    for (h, db) in handles {
        let s = pg_stats(db).await;
        println!("{h}'s postgres stats: {s}");
        reconnects += s["reconnects"].as_u64().unwrap_or(0);
        if s["following"] != json!(true) {
            failures.push(format!("{h} no longer follows the database: {s}"));
        }
        if s["sync_waiters"] != json!(0) {
            failures.push(format!("{h}: sync waiters left: {s}"));
        }
    }
    if kills > 0 && reconnects == 0 {
        failures.push(format!(
            "{kills} walsenders killed, but no reconnect counted"
        ));
    }
    assert!(
        no_kills || kills > 3,
        "the attack hit: {kills} walsenders terminated"
    );

    drain.store(true, Ordering::Relaxed);
    let mut collected: HashMap<(&str, &str), Collected> = HashMap::new();
    for (h, name, task) in feeds {
        let got = tokio::time::timeout(HANG * 2, task)
            .await
            .expect("a feed collector hung")
            .expect("a feed collector panicked");
        collected.insert((h, name), got);
    }
    let resumed_d = tokio::time::timeout(HANG * 2, resumed_d)
        .await
        .expect("hung")
        .expect("panicked");
    let resumed_e = match resumed_e {
        Ok(task) => Ok(tokio::time::timeout(HANG * 2, task)
            .await
            .expect("hung")
            .expect("panicked")),
        Err(err) => Err(err),
    };

    // The final state, from a fresh process; every handle reads the same.
    let f = Database::connect(pg.url()).await.expect("f connects");
    f.sync().await.expect("f syncs");
    let finals: Vec<BTreeMap<String, Value>> = vec![rerun(&f, "t0").await, rerun(&f, "t1").await];
    let mut diverged: BTreeMap<(usize, String), ()> = BTreeMap::new();
    for (h, db) in handles {
        for (t, fin) in finals.iter().enumerate().take(2) {
            let mine = rerun(db, &format!("t{t}")).await;
            if mine != *fin {
                for k in mine.keys().chain(fin.keys()) {
                    if mine.get(k) != fin.get(k) {
                        diverged.insert((t, k.clone()), ());
                    }
                }
                failures.push(format!(
                    "{h}: t{t} differs from a fresh process's read: {}",
                    show_diff(&mine, fin)
                ));
            }
        }
    }
    // What the write log and D's table feed say of each diverged row (diagnostics).
    for (t, k) in diverged.keys() {
        let mut writes: Vec<&Issued> = log
            .iter()
            .filter(|w| w.table == *t && &w.key == k)
            .collect();
        writes.sort_by_key(|w| w.c);
        println!("DIVERGED t{t}/{k}: fresh read {:?}", finals[*t].get(k));
        let name = if *t == 0 { "t0" } else { "t1" };
        let feed_items: Vec<&Item> = collected[&("D", name)]
            .items
            .iter()
            .filter(|i| i.new.as_ref().or(i.old.as_ref()).map(id_of).as_ref() == Some(k))
            .collect();
        for it in feed_items.iter().rev().take(6).rev() {
            println!("  D's feed: {:?} old {:?} new {:?}", it.at, it.old, it.new);
        }
        // What PostgreSQL holds of it, and the shared history's last rows of it.
        let rows = admin
            .query(
                &format!("SELECT doc::text FROM remodel.t_t{t} WHERE doc->>'id' = $1"),
                &[k],
            )
            .await
            .map(|r| r.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>());
        println!("  in PostgreSQL: {rows:?}");
        let hist = admin
            .query(
                "SELECT pos, coalesce(old, '-'), coalesce(new, '-') FROM remodel.history \
                 WHERE tbl = $1 AND (old::json->>'id' = $2 OR new::json->>'id' = $2) \
                 ORDER BY pos DESC LIMIT 3",
                &[&format!("t{t}"), k],
            )
            .await
            .map(|r| {
                r.iter()
                    .map(|r| {
                        format!(
                            "{} {} -> {}",
                            r.get::<_, i64>(0),
                            r.get::<_, String>(1),
                            r.get::<_, String>(2)
                        )
                    })
                    .collect::<Vec<_>>()
            });
        println!("  history (last 3): {hist:?}");
        // The writes issued after the last change D's feed showed.
        let last_c = feed_items
            .last()
            .and_then(|i| i.new.as_ref().or(i.old.as_ref()))
            .and_then(|v| v["c"].as_u64())
            .unwrap_or(0);
        for w in writes.iter().filter(|w| w.c + 30 >= last_c).take(25) {
            println!("  write c={} delete={} {:?}", w.c, w.delete, w.outcome);
        }
    }

    // Each feed: replayed onto its initial rows, it equals the query re-run on its handle.
    let mut aborted = Vec::new();
    for ((h, name), got) in &collected {
        let label = format!("{h}/{name}");
        if let Some(end) = &got.end {
            if got.aborted {
                aborted.push(format!("{label}: {end}"));
            } else {
                failures.push(format!("{label}: ended untyped or hung: {end}"));
            }
            // Its prefix must still be consistent.
            replay(&got.items, &label, &mut failures);
            continue;
        }
        let db = if *h == "C" { &c } else { &d };
        let state = replay(&got.items, &label, &mut failures);
        let expected = rerun(db, name).await;
        if *name == "t0_top5" {
            // Compared as sets of rows (the order is the index's).
            if state != expected {
                failures.push(format!(
                    "{label}: the replayed top 5 differs from the query: {}",
                    show_diff(&state, &expected)
                ));
            }
        } else if state != expected {
            failures.push(format!(
                "{label}: the replayed state differs from the query re-run: {}",
                show_diff(&state, &expected)
            ));
        }
    }

    // C's and D's table feeds hold the same changes after both snapshots.
    for name in ["t0", "t1"] {
        let (cc, dd) = (&collected[&("C", name)], &collected[&("D", name)]);
        let from = cc.snapshot.max(dd.snapshot);
        let changes = |x: &Collected| -> Vec<Item> {
            x.items
                .iter()
                .filter(|i| i.kind != ChangeKind::Initial && i.cursor > from)
                .cloned()
                .collect()
        };
        let (ci, di) = (changes(cc), changes(dd));
        let n = ci.len().min(di.len());
        if cc.end.is_none() && dd.end.is_none() && ci != di {
            let first = (0..n).find(|&i| ci[i] != di[i]).unwrap_or(n);
            failures.push(format!(
                "{name}: C's and D's feeds differ ({} vs {} changes), first at #{first}: C {:?} \
                 D {:?}",
                ci.len(),
                di.len(),
                ci.get(first),
                di.get(first)
            ));
        } else if ci[..n] != di[..n] {
            failures.push(format!("{name}: C's and D's feeds differ before one ended"));
        }
    }

    // Every acknowledged write's change is exactly once in each live table feed; every item
    // of them is an issued write.
    for t in 0..2usize {
        let name = if t == 0 { "t0" } else { "t1" };
        let issued: HashMap<(String, u64), &Issued> = log
            .iter()
            .filter(|w| w.table == t)
            .map(|w| ((w.key.clone(), w.c), w))
            .collect();
        for h in ["C", "D"] {
            let got = &collected[&(h, name)];
            let mut count: HashMap<ChangeId, usize> = HashMap::new();
            for it in got.items.iter().filter(|i| i.kind != ChangeKind::Initial) {
                *count.entry(change_id(it)).or_default() += 1;
                if let Some(new) = &it.new {
                    let cnum = new["c"].as_u64().unwrap_or(u64::MAX);
                    match issued.get(&(id_of(new), cnum)) {
                        Some(w) if !w.delete => {}
                        _ => failures
                            .push(format!("{h}/{name}: an item no issued write made: {it:?}")),
                    }
                }
            }
            if got.end.is_some() {
                continue;
            }
            for w in log.iter().filter(|w| w.table == t) {
                if let Outcome::Acked(Some((old, new))) = &w.outcome {
                    let id = (w.key.clone(), old.clone(), new.clone());
                    let n = count.get(&id).copied().unwrap_or(0);
                    if n != 1 {
                        failures.push(format!(
                            "{h}/{name}: the acknowledged write c={} on {} is in the feed {n} \
                             times (old {old:?}, new {new:?})",
                            w.c, w.key
                        ));
                    }
                }
            }
        }
    }

    // The resumed feeds equal the live table feed after their cursor.
    let reference = |name: &str, after: Cursor| -> Option<Vec<Item>> {
        let got = &collected[&("D", name)];
        got.end.is_none().then(|| {
            got.items
                .iter()
                .filter(|i| i.kind != ChangeKind::Initial && i.cursor > Some(after))
                .cloned()
                .collect()
        })
    };
    match (&resumed_d.end, reference("t1", before_storm)) {
        (None, Some(want)) if resumed_d.items != want => {
            failures.push(format!(
                "D's t1 feed resumed from C's cursor differs from D's live t1 feed: {} vs \
                 {} items",
                resumed_d.items.len(),
                want.len()
            ));
        }
        (Some(end), _) if resumed_d.aborted => aborted.push(format!("D/t1 resumed: {end}")),
        (Some(end), _) => failures.push(format!("D/t1 resumed: ended untyped: {end}")),
        _ => {}
    }
    if let Some(end) = &victim_end {
        failures.push(format!(
            "the victim feed ended before it was dropped: {end}"
        ));
    }
    match (&resumed_e, reference("t0", victim_start)) {
        (Ok(got), Some(want)) if got.end.is_none() => {
            let mut joined = victim_items.clone();
            joined.extend(got.items.iter().cloned());
            if joined != want {
                let n = joined.len().min(want.len());
                let first = (0..n).find(|&i| joined[i] != want[i]).unwrap_or(n);
                failures.push(format!(
                    "the victim's items ({}) then E's resumed items ({}) differ from D's live \
                     t0 feed after the same point ({} items), first at #{first}: got {:?}, \
                     want {:?}",
                    victim_items.len(),
                    got.items.len(),
                    want.len(),
                    joined.get(first),
                    want.get(first)
                ));
            }
        }
        (Ok(got), _) if got.end.is_some() => {
            let end = got.end.clone().unwrap_or_default();
            if got.aborted {
                aborted.push(format!("E/t0 resumed: {end}"));
            } else {
                failures.push(format!("E/t0 resumed: ended untyped: {end}"));
            }
        }
        (Err(err), _) => {
            if err.contains("CursorExpired") {
                aborted.push(format!("E's resume refused (typed): {err}"));
            } else {
                failures.push(format!("E's resume failed: {err}"));
            }
        }
        _ => {}
    }

    // Every handle writes again.
    for (h, db) in handles {
        let r = tokio::time::timeout(
            HANG,
            db.table("t1")
                .insert(json!({"id": format!("after_{h}")}))
                .into_future(),
        )
        .await;
        if !matches!(r, Ok(Ok(_))) {
            failures.push(format!("{h}: a write after the storm: {r:?}"));
        }
    }

    println!(
        "checked in {:?}; typed feed ends: {}; {} failures",
        t0.elapsed(),
        aborted.len(),
        failures.len()
    );
    for x in &aborted {
        println!("  typed end: {x}");
    }
    for db in [&a, &b, &c, &d, &e, &f] {
        let _ = db.close().await;
    }
    if let Ok(path) = std::env::var("REPL_ATTACK_FAILURES") {
        let _ = std::fs::write(path, failures.join("\n"));
    }
    assert_no_failures(&format!("REPL_ATTACK_SEED={seed}"), &failures);
}
