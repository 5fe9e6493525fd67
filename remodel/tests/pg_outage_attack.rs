//! Attacks on how a process outlives a PostgreSQL server outage (the lost replication
//! connection retried for `Connect::reconnect_for`, the replica reloaded, the backend
//! marked down until the server answers), each on a throwaway cluster of its own (the
//! server is stopped under the test's feet; the suites' shared cluster is never touched).
//!
//! Every check is against an oracle, not an example:
//!
//! 1. `locked_writes_and_ddl_through_an_outage`: serial tasks in two processes (one with a
//!    short reconnect window, one with the default) run batches that lock tables
//!    (`update_where`, `delete_where`, `require_empty` + inserts over two tables) and DDL
//!    (create / drop table and index) while the server crashes or shuts down and comes
//!    back. Every call returns within a bound with a typed error or a result; each task's
//!    rows, read by a fresh process afterwards, are the serial application of its
//!    acknowledged writes plus some of those whose outcome was an error, each of them whole
//!    (a model of each task is run over every candidate state, kept only where it returns
//!    what the call returned); the writers' own replicas agree with the fresh process.
//!    It failed now and then (a DDL task, when the timing lined up) on the bug that
//!    `ddl_while_down_commits_and_answers_from_the_stale_replica` and
//!    `ddl_while_reconnecting_answers_from_the_stale_replica` reproduced every time: a
//!    process whose replica does not follow (down, or still reconnecting) answered
//!    `NoSuchTable` from it for a table the database has, and DDL committed while down.
//!    Fixed: `run_ddl` refuses while down, and a catalog refusal is checked again after a
//!    `sync` (`Database::checked_in_sync`).
//! 2. `flapping_server`: the server is stopped and started several times quickly (a stop
//!    can hit a reload of 9,000 rows in progress) under writers in two processes, a feed, a
//!    feed opened every 250 ms on the short-window process and a stats poller: no call
//!    hangs, every acknowledged write is stored, each feed ends with an error or is exact,
//!    and the handles work again within a bound (a write, a sync, a new feed seeing the
//!    other process's write, every replica equal to a fresh one's).
//! 3. `close_while_reconnecting_releases_the_server`, `close_while_down_releases_the_server`,
//!    `dropping_handles_while_reconnecting_releases_the_server`,
//!    `dropping_handles_while_down_releases_the_server`: `close()` while the server is down
//!    returns promptly and later calls fail with `Closed`; once the server is back, a
//!    process closed or dropped meanwhile opens no session, no replication slot and writes
//!    nothing there, and holds nothing there a few seconds later. (The `reconnecting` two
//!    failed: the follow task's reconnect loop held the database and did not see the close
//!    or the drop. Fixed: `recover` in `replica.rs` holds weak references and watches the
//!    stop signal at every wait.)
//! 4. `cursors_from_before_an_outage`: feeds resumed after the outage, in a fresh process
//!    and in the processes that lived through it, from cursors taken before it (the last
//!    one just before the crash, likely not archived): either `CursorExpired` or exact
//!    (each change's `old_val` is the row as the feed showed it, cursors increase, and the
//!    replay ends equal to the table).
//! 5. `feeds_opened_while_down`: feeds opened while the backend is down (and while it is
//!    still trying to reconnect) either end with an error or, once the server is back,
//!    show later changes exactly; none goes on silently from a stale replica. Connecting
//!    while the server is down fails promptly; `stats()` answers (no hang) during the
//!    outage and says `following: false` while down, `true` after.
//!
//! Seeds: `OUTAGE_ATTACK_SEED` (printed at the start of each randomized test).

mod pg_attack;

use futures::StreamExt;
use pg_attack::{assert_no_failures, seed, Rng};
use remodel::postgres::{Connect, TestCluster};
use remodel::{field, json, ChangeKind, Cursor, Database, Error, IndexSpec, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one call may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(30);
/// How long the handles may take to work again once the server is back.
const RECOVER: Duration = Duration::from_secs(40);
/// A short reconnect window: past it, the backend reloads and then goes down.
const SHORT: Duration = Duration::from_millis(300);

fn cluster(test: &str) -> Option<Arc<TestCluster>> {
    pg_attack::own_cluster(test).map(Arc::new)
}

async fn open(url: &str, window: Option<Duration>) -> Database {
    let mut c = Connect::new(url);
    if let Some(w) = window {
        c = c.reconnect_for(w);
    }
    tokio::time::timeout(HANG, c.open())
        .await
        .expect("connecting hangs")
        .expect("a process connects")
}

/// Stops the server (off the runtime's threads: `pg_ctl` blocks).
async fn stop(cluster: &Arc<TestCluster>, immediate: bool) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_server(immediate))
        .await
        .unwrap()
        .expect("the server stops");
}

async fn start(cluster: &Arc<TestCluster>) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the server starts again: {e}"));
}

/// `f` bounded by [`HANG`]: `Err` when it did not return in time.
async fn bounded<T>(f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(HANG, f)
        .await
        .map_err(|_| format!("no answer within {HANG:?} (a hang)"))
}

/// Retries `f` until it succeeds or `within` passes (each try bounded by [`HANG`]).
async fn until_ok<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = remodel::Result<T>>,
{
    let begin = Instant::now();
    loop {
        match bounded(f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if begin.elapsed() < within => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => return Err(format!("{what}: still failing after {within:?}: {e}")),
            Err(hang) => return Err(format!("{what}: {hang}")),
        }
    }
}

/// Whether `db`'s replica follows the database, as its `stats()` say (`None`: no answer).
async fn is_following(db: &Database) -> Option<bool> {
    let rows = tokio::time::timeout(Duration::from_secs(5), db.stats().run())
        .await
        .ok()?
        .ok()?;
    following(&rows)
}

/// Waits until `db` says its replica does not follow the database (its backend is down
/// after its reconnect window, or it reconnects).
async fn wait_down(db: &Database, within: Duration) -> bool {
    let begin = Instant::now();
    while begin.elapsed() < within {
        if is_following(db).await == Some(false) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The rows of `table` by their `id` (as a string), read from `db`'s replica.
async fn rows_of(db: &Database, table: &str) -> remodel::Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for row in db.table(table).run().await? {
        out.insert(id_of(&row), row);
    }
    Ok(out)
}

fn id_of(row: &Value) -> String {
    match &row["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Feeds: what a feed delivered, replayed.

/// What a feed delivered: its rows replayed onto its initial ones (or onto a given state),
/// how it ended, and what did not add up.
#[derive(Debug, Default, Clone)]
struct Watched {
    rows: BTreeMap<String, Value>,
    ended: Option<String>,
    problems: Vec<String>,
    changes: usize,
    last_cursor: Option<Cursor>,
    seen: BTreeSet<String>,
}

impl Watched {
    /// Applies one item of the feed.
    fn apply(&mut self, c: &remodel::Change) {
        if c.kind() == ChangeKind::State {
            return;
        }
        if c.kind() != ChangeKind::Initial {
            self.changes += 1;
            if let Some(cur) = c.cursor() {
                if self.last_cursor.is_some_and(|l| cur <= l) {
                    self.problems.push(format!(
                        "cursor {cur} after {} (not increasing: a duplicate?)",
                        self.last_cursor.unwrap()
                    ));
                }
                self.last_cursor = Some(cur);
            }
        }
        if let Some(old) = c.old_val() {
            let id = id_of(old);
            if self.rows.remove(&id).as_ref() != Some(old) {
                self.problems
                    .push(format!("old_val {old} is not the row the feed showed"));
            }
        }
        if let Some(new) = c.new_val() {
            let id = id_of(new);
            if let Some(marker) = new.get("marker").and_then(Value::as_str) {
                self.seen.insert(marker.to_string());
            }
            if self.rows.insert(id, new.clone()).is_some() && c.old_val().is_none() {
                self.problems
                    .push(format!("{new} added over a row the feed showed"));
            }
        }
    }
}

/// Reads `feed` until it ends, or until `stop` is set and it has been idle for `idle`.
async fn watch(feed: remodel::Feed, w: Watched, stop: Arc<AtomicBool>, idle: Duration) -> Watched {
    let done = move |_: &Watched, quiet: Duration| stop.load(Ordering::Relaxed) && quiet > idle;
    let read = read_until(feed, w, done, None).await;
    read.expect("no time limit")
}

/// Reads `feed` until it ends with an error, or until it has shown `marker` (a row whose
/// `marker` field is it) and then been idle for a moment, or until `within` passes (then
/// `None`: the feed neither ended nor showed the marker).
async fn watch_for(
    feed: remodel::Feed,
    w: Watched,
    marker: String,
    within: Duration,
) -> Option<Watched> {
    let done = move |w: &Watched, quiet: Duration| {
        w.seen.contains(&marker) && quiet > Duration::from_millis(300)
    };
    read_until(feed, w, done, Some(within)).await
}

/// Reads `feed` into `w` until it ends, or `done(w, how long it has been idle)` holds while
/// it is idle; `None` when `within` passes first.
async fn read_until(
    mut feed: remodel::Feed,
    mut w: Watched,
    done: impl Fn(&Watched, Duration) -> bool,
    within: Option<Duration>,
) -> Option<Watched> {
    let begin = Instant::now();
    let mut idle_since = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(50), feed.next()).await {
            Ok(Some(Ok(c))) => {
                idle_since = Instant::now();
                w.apply(&c);
            }
            Ok(Some(Err(e))) => {
                w.ended = Some(format!("{e} ({e:?})"));
                return Some(w);
            }
            Ok(None) => {
                w.problems.push("the feed ended without an error".into());
                return Some(w);
            }
            Err(_) if done(&w, idle_since.elapsed()) => return Some(w),
            Err(_) if within.is_some_and(|within| begin.elapsed() > within) => return None,
            Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Locked writes and DDL through an outage, against a model of each serial task.

/// A task's state: its rows (`t/<id>` → its `v`; `b`, `c` → their `s`) or its DDL
/// (`x`: the table exists, `x.i`: its index exists).
type State = BTreeMap<String, Value>;

/// What a call can end with that tells something about the state it met.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `require_empty` failed (or the insert behind it met its row).
    Refused,
    TableExists,
    NoSuchTable,
    IndexExists,
    NoSuchIndex,
    /// A storage error or a hang: it may have committed, or not.
    Unsure,
}

#[derive(Clone, Debug)]
enum Op {
    /// `update_where(t.filter(owner == k), {v: s})`.
    UpdateWhere(u64),
    /// `require_empty(b.filter(owner == k))` + insert into `b` and `c`.
    PairIn(u64),
    /// `delete_where` of the task's rows of `b` and `c`.
    PairOut,
    CreateTable,
    DropTable,
    CreateIndex,
    DropIndex,
}

impl Op {
    /// The state after the op, and what it returns, from `s`.
    fn model(&self, s: &State) -> (State, Outcome) {
        let mut n = s.clone();
        let has = |k: &str| s.contains_key(k);
        let outcome = match self {
            Op::UpdateWhere(v) => {
                for (k, val) in n.iter_mut() {
                    if k.starts_with("t/") {
                        *val = json!(v);
                    }
                }
                Outcome::Ok
            }
            Op::PairIn(v) => {
                if has("b") || has("c") {
                    Outcome::Refused
                } else {
                    n.insert("b".into(), json!(v));
                    n.insert("c".into(), json!(v));
                    Outcome::Ok
                }
            }
            Op::PairOut => {
                n.remove("b");
                n.remove("c");
                Outcome::Ok
            }
            Op::CreateTable if has("x") => Outcome::TableExists,
            Op::CreateTable => {
                n.insert("x".into(), json!(true));
                Outcome::Ok
            }
            Op::DropTable if !has("x") => Outcome::NoSuchTable,
            Op::DropTable => {
                n.remove("x");
                n.remove("x.i");
                Outcome::Ok
            }
            Op::CreateIndex if !has("x") => Outcome::NoSuchTable,
            Op::CreateIndex if has("x.i") => Outcome::IndexExists,
            Op::CreateIndex => {
                n.insert("x.i".into(), json!(true));
                Outcome::Ok
            }
            Op::DropIndex if !has("x") => Outcome::NoSuchTable,
            Op::DropIndex if !has("x.i") => Outcome::NoSuchIndex,
            Op::DropIndex => {
                n.remove("x.i");
                Outcome::Ok
            }
        };
        if outcome != Outcome::Ok {
            n = s.clone();
        }
        (n, outcome)
    }
}

/// A task's log: each op and how it ended, with when (relative to the server's return).
#[derive(Debug, Default)]
struct TaskLog {
    /// Each op, its outcome, the error's text, and when it began and ended (ms after the
    /// tasks started).
    ops: Vec<(Op, Outcome, String, (u128, u128))>,
    problems: Vec<String>,
}

impl TaskLog {
    /// The last `n` ops, one a line.
    fn tail(&self, n: usize) -> String {
        let from = self.ops.len().saturating_sub(n);
        self.ops[from..]
            .iter()
            .enumerate()
            .map(|(i, (op, o, text, (t0, t1)))| {
                let text: String = text.chars().take(160).collect();
                format!("  #{} {t0}-{t1} ms {op:?} -> {o:?} ({text})", from + i)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn classify(
    r: Result<remodel::Result<()>, String>,
    problems: &mut Vec<String>,
    what: &str,
) -> (Outcome, String) {
    match r {
        Ok(Ok(())) => (Outcome::Ok, "ok".into()),
        Ok(Err(e)) => {
            let text = format!("{e}");
            let o = match &e {
                Error::Precondition(_) | Error::KeyConflict { .. } => Outcome::Refused,
                Error::TableExists(_) => Outcome::TableExists,
                Error::NoSuchTable(_) => Outcome::NoSuchTable,
                Error::IndexExists { .. } => Outcome::IndexExists,
                Error::NoSuchIndex { .. } => Outcome::NoSuchIndex,
                Error::Storage { .. } => Outcome::Unsure,
                other => {
                    problems.push(format!(
                        "{what}: an error that is neither the op's own nor a storage error: {other:?}"
                    ));
                    Outcome::Unsure
                }
            };
            (o, text)
        }
        Err(hang) => {
            problems.push(format!("{what}: {hang}"));
            (Outcome::Unsure, hang)
        }
    }
}

/// Runs `op` of task `k` on `db` (bounded).
async fn run_op(db: &Database, k: u64, op: &Op) -> Result<remodel::Result<()>, String> {
    let x = format!("x{k}");
    let mine = |t: &str| db.table(t).filter(field("owner").eq(k));
    bounded(async {
        match op {
            Op::UpdateWhere(v) => db
                .batch()
                .update_where(&mine("t"), json!({ "v": v }))
                .await
                .map(|_| ()),
            Op::PairIn(v) => db
                .batch()
                .require_empty(&mine("b"), format!("task {k} holds its pair"))
                .insert("b", json!({"id": format!("b{k}"), "owner": k, "s": v}))
                .insert("c", json!({"id": format!("c{k}"), "owner": k, "s": v}))
                .await
                .map(|_| ()),
            Op::PairOut => db
                .batch()
                .delete_where(&mine("b"))
                .delete_where(&mine("c"))
                .await
                .map(|_| ()),
            Op::CreateTable => db.create_table(&x).await,
            Op::DropTable => db.drop_table(&x).await,
            Op::CreateIndex => db.table(&x).create_index("i", IndexSpec::field("n")).await,
            Op::DropIndex => db.table(&x).drop_index("i").await,
        }
    })
    .await
}

/// A serial task: ops of one kind (`ddl` or rows) until `stop`, and at least `after_up`
/// calls that were not `Unsure` once `up` is set.
async fn task(
    db: Database,
    k: u64,
    ddl: bool,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    up: Arc<AtomicBool>,
    t0: Instant,
) -> TaskLog {
    let mut log = TaskLog::default();
    let mut sure_after_up = 0;
    let mut s = 0;
    while !(stop.load(Ordering::Relaxed) && sure_after_up >= 2) {
        s += 1;
        let op = if ddl {
            match rng.below(4) {
                0 => Op::CreateTable,
                1 => Op::DropTable,
                2 => Op::CreateIndex,
                _ => Op::DropIndex,
            }
        } else {
            match rng.below(3) {
                0 => Op::UpdateWhere(s),
                1 => Op::PairIn(s),
                _ => Op::PairOut,
            }
        };
        let was_up = up.load(Ordering::Relaxed);
        let began = t0.elapsed().as_millis();
        let r = run_op(&db, k, &op).await;
        let when = (began, t0.elapsed().as_millis());
        let what = format!("task {k} op #{} {op:?}", log.ops.len());
        let (o, text) = classify(r, &mut log.problems, &what);
        if o != Outcome::Unsure {
            if was_up {
                sure_after_up += 1;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
        }
        log.ops.push((op, o, text, when));
    }
    log
}

/// The states task `k` may have left, given its log: each op acknowledged (or refused)
/// applied to the states whose model returns what it returned, each `Unsure` op applied
/// whole or not at all. Problems: an outcome no candidate state explains.
fn candidates(k: u64, initial: &State, log: &TaskLog) -> (Vec<State>, Vec<String>) {
    let key = |s: &State| serde_json::to_string(s).unwrap();
    let mut cands: HashMap<String, State> = HashMap::from([(key(initial), initial.clone())]);
    let mut problems = Vec::new();
    for (i, (op, outcome, text, _)) in log.ops.iter().enumerate() {
        let mut next = HashMap::new();
        for s in cands.values() {
            let (after, would) = op.model(s);
            if *outcome == Outcome::Unsure {
                next.insert(key(s), s.clone());
                next.insert(key(&after), after);
            } else if would == *outcome {
                next.insert(key(&after), after);
            }
        }
        if next.is_empty() {
            problems.push(format!(
                "task {k} op #{i} {op:?} returned {outcome:?} ({text}), which no state its \
                 earlier outcomes allow explains: {:?}\n{}",
                cands.values().collect::<Vec<_>>(),
                log.tail(12)
            ));
            // Go on from every state, as if it were unsure.
            for s in cands.values() {
                let (after, _) = op.model(s);
                next.insert(key(s), s.clone());
                next.insert(key(&after), after);
            }
        }
        cands = next;
    }
    (cands.into_values().collect(), problems)
}

/// The state of task `k` as `db` shows it.
async fn state_of(db: &Database, k: u64, ddl: bool) -> remodel::Result<State> {
    let mut s = State::new();
    if ddl {
        let x = format!("x{k}");
        if db.table_names()?.contains(&x) {
            s.insert("x".into(), json!(true));
            if db.table(&x).index_names()?.contains(&"i".to_string()) {
                s.insert("x.i".into(), json!(true));
            }
        }
        return Ok(s);
    }
    for row in db.table("t").filter(field("owner").eq(k)).run().await? {
        s.insert(format!("t/{}", id_of(&row)), row["v"].clone());
    }
    for t in ["b", "c"] {
        for row in db.table(t).filter(field("owner").eq(k)).run().await? {
            if s.insert(t.to_string(), row["s"].clone()).is_some() {
                s.insert(format!("{t} twice"), json!(true));
            }
        }
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_writes_and_ddl_through_an_outage() {
    let Some(cluster) = cluster("locked_writes_and_ddl_through_an_outage") else {
        return;
    };
    let seed = seed("OUTAGE_ATTACK_SEED");
    let mut rng = Rng(seed);
    let pg = cluster.create_database().await.expect("a test database");
    // A gives up reconnecting quickly (reload, then down); B keeps the default window.
    let a = open(pg.url(), Some(Duration::from_millis(500 + rng.below(1000)))).await;
    let b = open(pg.url(), None).await;
    for t in ["t", "b", "c"] {
        a.create_table(t).await.unwrap();
    }
    // Tasks 0-3 and 6 on A, 4, 5 and 7 on B; 6 and 7 run DDL.
    let tasks: Vec<(u64, bool, &Database)> = vec![
        (0, false, &a),
        (1, false, &a),
        (2, false, &a),
        (3, false, &a),
        (4, false, &b),
        (5, false, &b),
        (6, true, &a),
        (7, true, &b),
    ];
    let mut initial = BTreeMap::new();
    for &(k, ddl, _) in &tasks {
        let mut s = State::new();
        if !ddl {
            for j in 0..3 {
                let id = format!("{k}-{j}");
                a.table("t")
                    .insert(json!({"id": id, "owner": k, "v": 0}))
                    .await
                    .unwrap();
                s.insert(format!("t/{id}"), json!(0));
            }
        }
        initial.insert(k, s);
    }
    b.sync().await.unwrap();

    let stop_flag = Arc::new(AtomicBool::new(false));
    let up = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let t0 = Instant::now();
    for &(k, ddl, db) in &tasks {
        handles.push((
            k,
            ddl,
            tokio::spawn(task(
                db.clone(),
                k,
                ddl,
                Rng(seed ^ (k + 1).wrapping_mul(0x9E37_79B9)),
                stop_flag.clone(),
                up.clone(),
                t0,
            )),
        ));
    }
    tokio::time::sleep(Duration::from_millis(800 + rng.below(800))).await;
    let immediate = rng.chance(60);
    let outage = Duration::from_millis(300 + rng.below(2500));
    let stopping = t0.elapsed().as_millis();
    stop(&cluster, immediate).await;
    let stopped = t0.elapsed().as_millis();
    tokio::time::sleep(outage).await;
    let starting = t0.elapsed().as_millis();
    start(&cluster).await;
    eprintln!(
        "outage: immediate {immediate}, {outage:?}; stop {stopping}-{stopped} ms, start \
         {starting}-{} ms",
        t0.elapsed().as_millis()
    );
    up.store(true, Ordering::Relaxed);
    stop_flag.store(true, Ordering::Relaxed);
    let back = Instant::now();
    let mut failures = Vec::new();
    let mut logs = Vec::new();
    for (k, ddl, h) in handles {
        match tokio::time::timeout(RECOVER + HANG, h).await {
            Ok(Ok(log)) => logs.push((k, ddl, log)),
            Ok(Err(e)) => failures.push(format!("task {k} panicked: {e}")),
            Err(_) => failures.push(format!(
                "task {k} made no two sure calls within {:?} of the server's return",
                RECOVER + HANG
            )),
        }
    }
    eprintln!(
        "every task worked again {:?} after the server's return",
        back.elapsed()
    );

    // A fresh process reads the state; the writers' replicas, caught up, agree with it.
    let c = open(pg.url(), None).await;
    let mut unsure = 0;
    for (k, ddl, log) in &logs {
        failures.extend(log.problems.iter().cloned());
        unsure += log.ops.iter().filter(|o| o.1 == Outcome::Unsure).count();
        let (cands, problems) = candidates(*k, &initial[k], log);
        failures.extend(problems);
        let fresh = state_of(&c, *k, *ddl).await.unwrap();
        if !cands.contains(&fresh) {
            failures.push(format!(
                "task {k}: a fresh process reads {fresh:?}, which no serial application of its \
                 acknowledged writes (and some of its failed ones, whole) makes; candidates \
                 {cands:?}; its last ops:\n{}",
                log.tail(25)
            ));
        }
    }
    eprintln!(
        "{} calls, {unsure} ended with a storage error",
        logs.iter().map(|l| l.2.ops.len()).sum::<usize>()
    );
    for (name, db) in [("A", &a), ("B", &b)] {
        if let Err(e) = until_ok(&format!("{name} syncs"), RECOVER, || db.sync()).await {
            failures.push(e);
            continue;
        }
        for t in ["t", "b", "c"] {
            let mine = rows_of(db, t).await.unwrap();
            let fresh = rows_of(&c, t).await.unwrap();
            if mine != fresh {
                failures.push(format!(
                    "{name}'s replica of `{t}` after the outage is not the database's: \
                     {mine:?} against {fresh:?}"
                ));
            }
        }
        let mut mine = db.table_names().unwrap();
        let mut fresh = c.table_names().unwrap();
        mine.sort();
        fresh.sort();
        if mine != fresh {
            failures.push(format!(
                "{name}'s tables after the outage are {mine:?}, the database's {fresh:?}"
            ));
        }
    }
    assert_no_failures(&format!("OUTAGE_ATTACK_SEED={seed}"), &failures);
}

// ---------------------------------------------------------------------------------------
// 2. A flapping server.

/// Inserts numbered rows `<name>-<i>` until `stop`; the ids acknowledged, and those whose
/// outcome was an error.
async fn writer(
    db: Database,
    name: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let (mut ok, mut unsure, mut problems) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{name}-{i}");
        let r = bounded(
            db.table("t")
                .insert(json!({"id": id, "n": i}))
                .into_future(),
        )
        .await;
        match r {
            Ok(Ok(_)) => {
                ok.insert(id);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(Error::Storage { .. })) => {
                unsure.insert(id);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => {
                problems.push(format!("{name}: insert {id}: not a storage error: {e:?}"));
                unsure.insert(id);
            }
            Err(hang) => {
                problems.push(format!("{name}: insert {id}: {hang}"));
                unsure.insert(id);
            }
        }
        i += 1;
    }
    (ok, unsure, problems)
}

/// Calls `stats()` on every handle every 100 ms until `stop`: each call bounded.
async fn stats_poller(dbs: Vec<Database>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut problems = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for db in &dbs {
            match tokio::time::timeout(Duration::from_secs(5), db.stats().run()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push(format!("stats() failed: {e:?}")),
                Err(_) => problems.push("stats() did not answer within 5 s".into()),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    problems
}

/// Both handles work: `a` writes, `b` syncs and a new feed of `b` sees the write, and
/// every handle's replica equals a fresh process's.
async fn handles_work(url: &str, a: &Database, b: &Database, failures: &mut Vec<String>) {
    let mut feed = match until_ok("B opens a feed", RECOVER, || async {
        b.table("t").changes().await
    })
    .await
    {
        Ok(f) => f,
        Err(e) => return failures.push(e),
    };
    let marker = json!({"id": "after", "n": 0});
    if let Err(e) = until_ok("A writes", RECOVER, || async {
        a.table("t")
            .insert(marker.clone())
            .conflict(remodel::Conflict::Replace)
            .await
    })
    .await
    {
        return failures.push(e);
    }
    // The feed may have been ended by a reload still under way when it opened: then
    // another is opened, and it must see a second write.
    let mut seen = false;
    for round in 0..3 {
        match tokio::time::timeout(Duration::from_secs(15), feed.next()).await {
            Ok(Some(Ok(item))) if item.new_val().map(id_of).as_deref() == Some("after") => {
                seen = true;
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => {
                eprintln!("B's new feed (round {round}): {other:?}; opening another");
                feed = match until_ok("B opens a feed", RECOVER, || async {
                    b.table("t").changes().await
                })
                .await
                {
                    Ok(f) => f,
                    Err(e) => return failures.push(e),
                };
                if let Err(e) = until_ok("A writes", RECOVER, || async {
                    a.table("t")
                        .get("after")
                        .update(json!({"n": round + 1}))
                        .await
                })
                .await
                {
                    return failures.push(e);
                }
            }
        }
    }
    if !seen {
        failures.push("B's new feed never saw A's write after the outage".into());
    }
    if let Err(e) = until_ok("B syncs", RECOVER, || b.sync()).await {
        failures.push(e);
    }
    if let Err(e) = until_ok("A syncs", RECOVER, || a.sync()).await {
        failures.push(e);
    }
    let c = open(url, None).await;
    let fresh = rows_of(&c, "t").await.unwrap();
    for (name, db) in [("A", a), ("B", b)] {
        let mine = rows_of(db, "t").await.unwrap();
        if mine != fresh {
            let missing: Vec<_> = fresh.keys().filter(|k| !mine.contains_key(*k)).collect();
            let extra: Vec<_> = mine.keys().filter(|k| !fresh.contains_key(*k)).collect();
            failures.push(format!(
                "{name}'s replica is not the database's after the outage: {} rows against {}; \
                 missing {missing:?}, extra {extra:?}",
                mine.len(),
                fresh.len()
            ));
        }
    }
}

/// Opens a feed of `db` (with its initial rows) every `every` until `stop`, each read by
/// [`watch`] until `watch_stop`: feeds opened while the server flaps (while down, during a
/// reload, while reconnecting).
async fn feed_opener(
    db: Database,
    every: Duration,
    stop: Arc<AtomicBool>,
    watch_stop: Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<Watched>>, Vec<String>) {
    let (mut feeds, mut problems) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        match bounded(db.table("t").changes().include_initial(true).into_future()).await {
            Ok(Ok(feed)) => feeds.push(tokio::spawn(watch(
                feed,
                Watched::default(),
                watch_stop.clone(),
                Duration::from_millis(300),
            ))),
            Ok(Err(Error::Storage { .. } | Error::FeedAborted(_))) => {}
            Ok(Err(e)) => problems.push(format!("opening a feed: {e:?}")),
            Err(hang) => problems.push(format!("opening a feed: {hang}")),
        }
        tokio::time::sleep(every).await;
    }
    (feeds, problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_server() {
    let Some(cluster) = cluster("flapping_server") else {
        return;
    };
    let seed = seed("OUTAGE_ATTACK_SEED");
    let mut rng = Rng(seed);
    let pg = cluster.create_database().await.expect("a test database");
    let a = open(pg.url(), Some(SHORT)).await;
    let b = open(pg.url(), None).await;
    a.create_table("t").await.unwrap();
    // Rows enough that a reload takes a moment (a stop can land in one).
    for chunk in 0..3u64 {
        let docs = (0..3000u64).map(|i| json!({"id": format!("base-{chunk}-{i}"), "n": i}));
        a.table("t").insert_many(docs).await.unwrap();
    }
    b.sync().await.unwrap();
    let stop_writes = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let feed = b.table("t").changes().include_initial(true).await.unwrap();
    let watcher = tokio::spawn(watch(
        feed,
        Watched::default(),
        stop_watch.clone(),
        Duration::from_millis(300),
    ));
    let acked = Arc::new(AtomicU64::new(0));
    let writers = [
        tokio::spawn(writer(a.clone(), "a", stop_writes.clone(), acked.clone())),
        tokio::spawn(writer(b.clone(), "b", stop_writes.clone(), acked.clone())),
    ];
    let opener = tokio::spawn(feed_opener(
        a.clone(),
        Duration::from_millis(250),
        stop_writes.clone(),
        stop_watch.clone(),
    ));
    let poller = tokio::spawn(stats_poller(
        vec![a.clone(), b.clone()],
        stop_writes.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cycles = 4 + rng.below(2);
    let mut plan = Vec::new();
    let t0 = Instant::now();
    for i in 0..cycles {
        let immediate = rng.chance(60);
        let down = Duration::from_millis(rng.below(1200));
        // Up for a moment only, now and then: a stop while A reloads its replica (its first
        // try comes 200 ms after the window), or B reconnects.
        let upfor = if i % 2 == 0 {
            Duration::from_millis(100 + rng.below(600))
        } else {
            Duration::from_millis(rng.below(2500))
        };
        let at = t0.elapsed().as_millis();
        stop(&cluster, immediate).await;
        tokio::time::sleep(down).await;
        start(&cluster).await;
        plan.push(format!(
            "at {at} ms: immediate {immediate}, down {down:?}, up {upfor:?} (A following: \
             {:?})",
            is_following(&a).await
        ));
        tokio::time::sleep(upfor).await;
    }
    eprintln!("flaps: {plan:#?}");
    let before = acked.load(Ordering::Relaxed);
    let begin = Instant::now();
    let mut failures = Vec::new();
    while acked.load(Ordering::Relaxed) < before + 20 {
        if begin.elapsed() > RECOVER {
            failures.push(format!(
                "the writers did not resume within {RECOVER:?} of the last start: {}",
                cluster.log_tail(20).unwrap_or_default()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("writes resumed {:?} after the last start", begin.elapsed());
    stop_writes.store(true, Ordering::Relaxed);
    let mut ok = BTreeSet::new();
    for w in writers {
        match tokio::time::timeout(HANG, w).await {
            Ok(Ok((acked, _unsure, problems))) => {
                ok.extend(acked);
                failures.extend(problems);
            }
            other => failures.push(format!("a writer did not end: {other:?}")),
        }
    }
    failures.extend(poller.await.unwrap());
    let (feeds, problems) = opener.await.unwrap();
    failures.extend(problems);
    // Both replicas caught up, then the feeds are read to their end.
    for (name, db) in [("A", &a), ("B", &b)] {
        if let Err(e) = until_ok(&format!("{name} syncs"), RECOVER, || db.sync()).await {
            failures.push(e);
        }
    }
    stop_watch.store(true, Ordering::Relaxed);
    let c = open(pg.url(), None).await;
    let stored = rows_of(&c, "t").await.unwrap();
    for id in &ok {
        if !stored.contains_key(id) {
            failures.push(format!("acknowledged insert {id} is not stored"));
        }
    }
    let mut watched = vec![("B's feed from the start".to_string(), watcher)];
    watched.extend(
        feeds
            .into_iter()
            .enumerate()
            .map(|(i, f)| (format!("A's feed #{i} opened during the flaps"), f)),
    );
    let (mut ended, mut exact) = (0, 0);
    for (what, w) in watched {
        let w = w.await.unwrap();
        failures.extend(w.problems.iter().map(|p| format!("{what}: {p}")));
        match &w.ended {
            Some(_) => ended += 1,
            None if w.rows == stored => exact += 1,
            None => {
                let differ: Vec<_> = stored
                    .iter()
                    .filter(|(k, v)| w.rows.get(*k) != Some(*v))
                    .map(|(k, _)| k)
                    .take(5)
                    .collect();
                failures.push(format!(
                    "{what} went on through the flaps but its rows are not the table's \
                     ({} against {}, e.g. {differ:?}): a silent gap",
                    w.rows.len(),
                    stored.len()
                ));
            }
        }
    }
    eprintln!("feeds: {ended} ended with an error, {exact} exact");
    handles_work(pg.url(), &a, &b, &mut failures).await;
    assert_no_failures(&format!("OUTAGE_ATTACK_SEED={seed}"), &failures);
}

// ---------------------------------------------------------------------------------------
// 3. Closing and dropping while the server is down.

/// The sessions (application name, state, query) and replication slots on database `db`.
async fn sessions_and_slots(cluster: &TestCluster, db: &str) -> Option<(Vec<String>, Vec<String>)> {
    let admin = remodel::postgres::connect(cluster.admin_config())
        .await
        .ok()?;
    let sessions = admin
        .query(
            "SELECT coalesce(application_name, '') || ' | ' || coalesce(backend_type, '') \
             || ' | ' || coalesce(state, '') || ' | ' || coalesce(query, '') \
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .ok()?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let slots = admin
        .query(
            "SELECT slot_name::text || ' active ' || active::text FROM pg_replication_slots \
             WHERE database = $1",
            &[&db],
        )
        .await
        .ok()?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    Some((sessions, slots))
}

/// Watches database `db` for `for_` once the server is back: every session or slot seen,
/// with when it was first and last seen (seconds), and those there at the end.
async fn watch_sessions(
    cluster: &TestCluster,
    db: &str,
    for_: Duration,
) -> (Vec<String>, Option<(Vec<String>, Vec<String>)>) {
    let begin = Instant::now();
    let mut seen: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut last = None;
    while begin.elapsed() < for_ {
        if let Some((sessions, slots)) = sessions_and_slots(cluster, db).await {
            let now = begin.elapsed().as_secs_f64();
            for s in sessions.iter().chain(&slots) {
                let query: String = s.chars().take(120).collect();
                seen.entry(query).or_insert((now, now)).1 = now;
            }
            last = Some((sessions, slots));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen
        .into_iter()
        .map(|(s, (first, last))| format!("{first:.1}-{last:.1} s: {s}"))
        .collect();
    (seen, last)
}

/// A process that lives through the outage with a feed, and its handles.
async fn with_feed(url: &str, window: Option<Duration>) -> (Database, remodel::Feed) {
    let db = open(url, window).await;
    db.sync().await.unwrap();
    let feed = db.table("t").changes().include_initial(true).await.unwrap();
    (db, feed)
}

/// One process with a feed, the server crashed under it; once it is not following (still
/// reconnecting with `window: None`, the default 30 s; down past a short window), it is
/// closed (`close`: the handle is kept, as a program may keep it) or every handle and feed
/// is dropped; then the server comes back. `close()` must return promptly and fail later
/// calls with `Closed`; the process must not connect to the server again (no session, no
/// replication slot, no write) and must hold nothing on it a few seconds later.
async fn gone_while_down(test: &str, window: Option<Duration>, close: bool) {
    let Some(cluster) = cluster(test) else {
        return;
    };
    let pg = cluster.create_database().await.expect("a test database");
    let setup = open(pg.url(), None).await;
    setup.create_table("t").await.unwrap();
    setup.table("t").insert(json!({"id": 1})).await.unwrap();
    setup.close().await.unwrap();
    drop(setup);
    let (a, feed) = with_feed(pg.url(), window).await;
    stop(&cluster, true).await;
    let mut failures = Vec::new();
    match window {
        // Down: its reload failed past the window.
        Some(_) => {
            if !wait_down(&a, Duration::from_secs(10)).await {
                failures.push("the process never said it stopped following".into());
            }
        }
        // Reconnecting (its stats say `following: false` meanwhile, as while down).
        None => tokio::time::sleep(Duration::from_millis(500)).await,
    }
    if close {
        let begin = Instant::now();
        match tokio::time::timeout(Duration::from_secs(10), a.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("close() with the server down: {e:?}")),
            Err(_) => failures.push("close() did not return within 10 s".into()),
        }
        if begin.elapsed() > Duration::from_secs(5) {
            failures.push(format!(
                "close() took {:?} with the server down",
                begin.elapsed()
            ));
        }
        match a.table("t").insert(json!({"id": 2})).await {
            Err(Error::Closed) => {}
            other => failures.push(format!("a write after close: {other:?}")),
        }
    }
    drop(feed);
    // Closed: the handle is kept (as a program may keep it). Else every handle goes now.
    let kept = close.then_some(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    start(&cluster).await;
    let (seen, last) = watch_sessions(&cluster, pg.name(), Duration::from_secs(8)).await;
    let how = if close { "closed" } else { "dropped" };
    match last {
        Some((sessions, slots)) if sessions.is_empty() && slots.is_empty() => {}
        other => failures.push(format!(
            "8 s after the server's return, a process {how} while it was down still holds \
             sessions / slots on it (the handle {}): {other:?}",
            if close { "kept" } else { "dropped" }
        )),
    }
    if !seen.is_empty() {
        failures.push(format!(
            "a process {how} while the server was down connected to it once it was back \
             (session, replication slot; seconds after the server answered): {seen:?}"
        ));
    }
    drop(kept);
    assert_no_failures(test, &failures);
}

/// Closed while it retries its replication connection (the default 30 s window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_reconnecting_releases_the_server() {
    gone_while_down("close_while_reconnecting_releases_the_server", None, true).await;
}

/// Closed once down (past a short window, its reload failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_down_releases_the_server() {
    gone_while_down("close_while_down_releases_the_server", Some(SHORT), true).await;
}

/// Every handle dropped while it retries its replication connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_handles_while_reconnecting_releases_the_server() {
    gone_while_down(
        "dropping_handles_while_reconnecting_releases_the_server",
        None,
        false,
    )
    .await;
}

/// Every handle dropped once down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_handles_while_down_releases_the_server() {
    gone_while_down(
        "dropping_handles_while_down_releases_the_server",
        Some(SHORT),
        false,
    )
    .await;
}

/// Minimal reproduction of what `locked_writes_and_ddl_through_an_outage` found: a process
/// whose backend is down (past its reconnect window) while the server is already back
/// (its reload waits out its backoff) runs DDL anyway. Writes refuse while down ("PostgreSQL
/// is unreachable"), before committing; DDL commits, then fails with that error (the table
/// is created: the caller is told it failed, and retrying gives `TableExists`); and DDL and
/// writes check the table against the stale replica first, answering `NoSuchTable` for a
/// table the database has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_while_down_commits_and_answers_from_the_stale_replica() {
    let test = "ddl_while_down_commits_and_answers_from_the_stale_replica";
    let Some(cluster) = cluster(test) else {
        return;
    };
    let pg = cluster.create_database().await.expect("a test database");
    let a = open(pg.url(), Some(SHORT)).await;
    a.create_table("t").await.unwrap();
    stop(&cluster, true).await;
    assert!(
        wait_down(&a, Duration::from_secs(10)).await,
        "A never stopped following"
    );
    // A's reload is tried 0.2, 0.6, 1.4, 3.0 and 6.2 s after it went down: the server comes
    // back between the last two.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    start(&cluster).await;
    let c = open(pg.url(), None).await;
    c.create_table("y").await.unwrap();
    // A following process applies it within milliseconds: it is given a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        is_following(&a).await,
        Some(false),
        "A reloaded too soon for this reproduction"
    );
    let mut failures = Vec::new();
    // A table the database has: a definite answer must be true of the database.
    let dropped = a.drop_table("y").await;
    let inserted = a.table("y").insert(json!({"id": 1})).await.map(|_| ());
    // A table created while down.
    let created = a.create_table("x").await;
    let still_down = is_following(&a).await == Some(false);
    c.sync().await.unwrap();
    let x_exists = c.table_names().unwrap().contains(&"x".to_string());
    let y_exists = c.table_names().unwrap().contains(&"y".to_string());
    eprintln!(
        "A down: drop_table(y) {dropped:?}; insert into y {inserted:?}; create_table(x) \
         {created:?} (x exists: {x_exists}, still down: {still_down})"
    );
    for (what, r) in [
        ("drop_table(\"y\")", &dropped),
        ("insert into y", &inserted),
    ] {
        if matches!(r, Err(Error::NoSuchTable(_))) && y_exists {
            failures.push(format!(
                "{what} on a process that is down answered {r:?}, but the table exists (its \
                 replica is stale); expected the storage error 'PostgreSQL is unreachable'"
            ));
        }
    }
    match (&created, x_exists) {
        (Ok(()), true) | (Err(_), false) => {}
        (Ok(()), false) => failures.push("create_table(x) returned Ok but x does not exist".into()),
        (Err(e), true) => failures.push(format!(
            "create_table(x) on a process that is down failed with {e:?}, yet x was created \
             (writes refuse before committing while down; DDL commits, then fails)"
        )),
    }
    assert_no_failures(test, &failures);
}

/// The same stale answers from a process that is still retrying its replication
/// connection (the default 30 s window; once the server is back it waits for the shared
/// history to bridge the gap, about 5 s here, where no process archives, before it
/// reloads): the server is back and another process has created a table, but this one
/// answers `NoSuchTable` for it from its replica, which it knows lost its stream.
/// (`locked_writes_and_ddl_through_an_outage` met it as a `drop_table` answering
/// `NoSuchTable` after the same task's `create_table` had committed just before the crash
/// and reported a storage error, then a `create_table` answering `TableExists`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_while_reconnecting_answers_from_the_stale_replica() {
    let test = "ddl_while_reconnecting_answers_from_the_stale_replica";
    let Some(cluster) = cluster(test) else {
        return;
    };
    let pg = cluster.create_database().await.expect("a test database");
    // Both keep the default window: after the restart neither archives until it reloads.
    let b = open(pg.url(), None).await;
    let c = open(pg.url(), None).await;
    b.create_table("t").await.unwrap();
    c.sync().await.unwrap();
    stop(&cluster, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    start(&cluster).await;
    let reconnects = |rows: &[Value]| {
        rows.iter()
            .find(|r| r["type"] == json!("postgres"))
            .and_then(|r| r["reconnects"].as_u64())
    };
    let before = reconnects(&b.stats().run().await.unwrap());
    // C creates `y` (its call returns once its own replica catches up; the table is in the
    // database at once).
    let creating = {
        let c = c.clone();
        tokio::spawn(async move { bounded(c.create_table("y")).await })
    };
    let sql = pg.connect().await.expect("an admin connection");
    let begin = Instant::now();
    loop {
        let n: i64 = sql
            .query_one("SELECT count(*) FROM remodel.catalog WHERE name = 'y'", &[])
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(begin.elapsed() < HANG, "C's create_table never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A following process applies it within milliseconds: it is given a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let inserted = b.table("y").insert(json!({"id": 1})).await.map(|_| ());
    let dropped = b.drop_table("y").await;
    let after = reconnects(&b.stats().run().await.unwrap());
    eprintln!(
        "B reconnecting (reloads {before:?} -> {after:?}): insert into y {inserted:?}; \
         drop_table(y) {dropped:?}; C's create_table {:?}",
        creating.await.unwrap()
    );
    let mut failures = Vec::new();
    for (what, r) in [
        ("insert into y", &inserted),
        ("drop_table(\"y\")", &dropped),
    ] {
        if matches!(r, Err(Error::NoSuchTable(_))) {
            failures.push(format!(
                "{what} on a process retrying its lost replication connection answered \
                 {r:?} 1 s after another process created the table, the server being back \
                 (its replica is stale: a definite answer should wait for it to catch up, \
                 or be a storage error)"
            ));
        }
    }
    assert_no_failures(test, &failures);
}

// ---------------------------------------------------------------------------------------
// 4. Cursors from before an outage.

/// Opens a feed of `db` on `t` resumed from `cursor` and checks it against `at` (the rows
/// as of the cursor): `CursorExpired`, or exact up to the marker written after it opened.
async fn check_resume(
    what: &str,
    db: &Database,
    writer: &Database,
    cursor: Cursor,
    at: &BTreeMap<String, Value>,
    round: &AtomicU64,
    failures: &mut Vec<String>,
) {
    let opened = bounded(db.table("t").changes().resume_from(cursor).into_future()).await;
    let feed = match opened {
        Ok(Ok(feed)) => feed,
        Ok(Err(Error::CursorExpired { reason, .. })) => {
            eprintln!("{what}: CursorExpired ({reason})");
            return;
        }
        Ok(Err(e)) => return failures.push(format!("{what}: resume failed with {e:?}")),
        Err(hang) => return failures.push(format!("{what}: resume: {hang}")),
    };
    let m = format!("m{}", round.fetch_add(1, Ordering::Relaxed));
    let w = Watched {
        rows: at.clone(),
        ..Watched::default()
    };
    let reader = tokio::spawn(watch_for(feed, w, m.clone(), RECOVER));
    if let Err(e) = until_ok("the marker write", RECOVER, || async {
        writer
            .table("t")
            .insert(json!({"id": m.clone(), "marker": m.clone()}))
            .await
    })
    .await
    {
        return failures.push(e);
    }
    let Some(w) = reader.await.unwrap() else {
        return failures.push(format!(
            "{what}: the resumed feed neither ended nor showed a later write within {RECOVER:?}"
        ));
    };
    failures.extend(w.problems.iter().map(|p| format!("{what}: {p}")));
    if let Some(why) = &w.ended {
        if !why.contains("CursorExpired") && !why.contains("FeedAborted") {
            failures.push(format!("{what}: the resumed feed ended with {why}"));
        }
        eprintln!("{what}: ended after {} changes: {why}", w.changes);
        return;
    }
    if let Err(e) = until_ok("a sync", RECOVER, || db.sync()).await {
        return failures.push(e);
    }
    let now = rows_of(db, "t").await.unwrap();
    // Markers of other resumes written after this one's may be missing from the replay.
    let now: BTreeMap<_, _> = now
        .into_iter()
        .filter(|(k, _)| !k.starts_with('m') || w.rows.contains_key(k) || *k == m)
        .collect();
    if w.rows != now {
        let gap: Vec<_> = now
            .iter()
            .filter(|(k, v)| w.rows.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .take(10)
            .collect();
        let extra: Vec<_> = w.rows.keys().filter(|k| !now.contains_key(*k)).collect();
        failures.push(format!(
            "{what}: resumed from {cursor}, {} changes replayed onto the rows at the cursor \
             are not the table: rows differing {gap:?}, rows not in the table {extra:?} \
             (a gap or a duplicate)",
            w.changes
        ));
    } else {
        eprintln!("{what}: exact, {} changes", w.changes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_from_before_an_outage() {
    let Some(cluster) = cluster("cursors_from_before_an_outage") else {
        return;
    };
    let seed = seed("OUTAGE_ATTACK_SEED");
    let mut rng = Rng(seed);
    let pg = cluster.create_database().await.expect("a test database");
    let a = open(pg.url(), Some(SHORT)).await;
    let b = open(pg.url(), Some(SHORT)).await;
    a.create_table("t").await.unwrap();
    for i in 0..20 {
        a.table("t")
            .insert(json!({"id": format!("r{i}"), "n": 0}))
            .await
            .unwrap();
    }
    b.sync().await.unwrap();
    let mut feed = b.table("t").changes().include_initial(true).await.unwrap();
    let mut w = Watched::default();
    // The initial rows, then changes: cursors (with the rows as of each) along the way.
    let writes = 40 + rng.below(40);
    let wr = {
        let a = a.clone();
        let mut rng = Rng(seed ^ 1);
        tokio::spawn(async move {
            for i in 0..writes {
                let id = format!("r{}", rng.below(30));
                let r = if rng.chance(20) {
                    a.table("t").get(id.as_str()).delete().await
                } else {
                    a.table("t")
                        .insert(json!({"id": id, "n": i}))
                        .conflict(remodel::Conflict::Replace)
                        .await
                };
                r.unwrap();
            }
        })
    };
    let mut cursors: Vec<(Cursor, BTreeMap<String, Value>)> = Vec::new();
    let mut changes = 0;
    let mut idle_since = Instant::now();
    loop {
        let item = match tokio::time::timeout(Duration::from_millis(50), feed.next()).await {
            Ok(item) => item.expect("an item").expect("not an error"),
            Err(_) if wr.is_finished() && idle_since.elapsed() > Duration::from_millis(500) => {
                break
            }
            Err(_) => {
                assert!(
                    idle_since.elapsed() < HANG,
                    "B's feed is silent for {HANG:?}"
                );
                continue;
            }
        };
        idle_since = Instant::now();
        w.apply(&item);
        if item.kind() == ChangeKind::Initial {
            continue;
        }
        changes += 1;
        if changes % 10 == 3 {
            if let Some(c) = item.cursor() {
                cursors.push((c, w.rows.clone()));
            }
        }
    }
    wr.await.unwrap();
    // The last change's cursor too (the most likely not to be archived yet).
    if let Some(c) = w.last_cursor {
        if cursors.last().map(|l| l.0) != Some(c) {
            cursors.push((c, w.rows.clone()));
        }
    }
    // The server crashes (or shuts down) at once: the last cursors may not be archived.
    let immediate = rng.chance(70);
    let down = Duration::from_millis(500 + rng.below(1500));
    eprintln!(
        "{} cursors; outage: immediate {immediate}, {down:?}",
        cursors.len()
    );
    stop(&cluster, immediate).await;
    tokio::time::sleep(down).await;
    start(&cluster).await;
    let mut failures = Vec::new();
    // More writes after the outage.
    for i in 0..10 {
        if let Err(e) = until_ok("A writes after the outage", RECOVER, || async {
            a.table("t")
                .insert(json!({"id": format!("p{i}"), "n": i}))
                .await
        })
        .await
        {
            failures.push(e);
            break;
        }
    }
    let round = AtomicU64::new(0);
    let e = open(pg.url(), None).await;
    for (i, (cursor, at)) in cursors.iter().enumerate() {
        for (name, db) in [("E (fresh)", &e), ("A", &a), ("B", &b)] {
            check_resume(
                &format!("{name}, cursor #{i} {cursor}"),
                db,
                &a,
                *cursor,
                at,
                &round,
                &mut failures,
            )
            .await;
        }
    }
    assert_no_failures(&format!("OUTAGE_ATTACK_SEED={seed}"), &failures);
}

// ---------------------------------------------------------------------------------------
// 5. Feeds opened while the server is down; stats meanwhile.

fn following(rows: &[Value]) -> Option<bool> {
    rows.iter()
        .find(|r| r["type"] == json!("postgres"))
        .and_then(|r| r["following"].as_bool())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_opened_while_down() {
    let Some(cluster) = cluster("feeds_opened_while_down") else {
        return;
    };
    let pg = cluster.create_database().await.expect("a test database");
    // A goes down quickly; B keeps trying to reconnect (the default window) all along.
    let a = open(pg.url(), Some(SHORT)).await;
    let b = open(pg.url(), None).await;
    a.create_table("t").await.unwrap();
    for i in 0..5 {
        a.table("t")
            .insert(json!({"id": format!("r{i}"), "n": 0}))
            .await
            .unwrap();
    }
    b.sync().await.unwrap();
    stop(&cluster, true).await;
    let mut failures = Vec::new();
    if !wait_down(&a, Duration::from_secs(10)).await {
        failures.push("A never said the server was unreachable".into());
    }
    // A process connecting meanwhile fails, promptly.
    match tokio::time::timeout(Duration::from_secs(10), Database::connect(pg.url())).await {
        Ok(Err(Error::Storage { .. })) => {}
        other => failures.push(format!(
            "connecting with the server down: {:?}",
            other.map(|r| r.map(|_| "a handle"))
        )),
    }
    for (name, db) in [("A", &a), ("B", &b)] {
        match tokio::time::timeout(Duration::from_secs(5), db.stats().run()).await {
            Ok(Ok(rows)) => {
                if name == "A" && following(&rows) != Some(false) {
                    failures.push(format!("A's stats say following while down: {rows:?}"));
                }
            }
            other => failures.push(format!("{name}.stats() with the server down: {other:?}")),
        }
    }
    // Feeds opened now: a table feed, a point feed and a filtered feed, on each handle.
    let mut readers = Vec::new();
    for (name, db) in [("A", &a), ("B", &b)] {
        // Each with the marker of the last write it shows.
        let specs: Vec<(&str, &str, remodel::Changes)> = vec![
            ("table", "last", db.table("t").changes()),
            ("point r1", "r1", db.table("t").get("r1").changes()),
            (
                "filter n>=0",
                "last",
                db.table("t").filter(field("n").ge(0)).changes(),
            ),
        ];
        for (what, marker, changes) in specs {
            let what = format!("{name}'s {what} feed opened while down");
            match bounded(changes.include_initial(true).into_future()).await {
                Ok(Ok(feed)) => readers.push((
                    what,
                    tokio::spawn(watch_for(
                        feed,
                        Watched::default(),
                        marker.to_string(),
                        RECOVER + Duration::from_secs(10),
                    )),
                )),
                Ok(Err(e)) => eprintln!("{what}: refused: {e}"),
                Err(hang) => failures.push(format!("{what}: {hang}")),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    start(&cluster).await;
    // A third process writes once the server is back: rows the feeds must show, or end.
    let c = open(pg.url(), None).await;
    for (i, id) in ["r1", "r2", "new"].iter().enumerate() {
        let doc = json!({"id": id, "n": i + 1, "marker": id});
        if let Err(e) = until_ok("C writes", RECOVER, || async {
            c.table("t")
                .insert(doc.clone())
                .conflict(remodel::Conflict::Replace)
                .await
        })
        .await
        {
            failures.push(e);
        }
    }
    if let Err(e) = until_ok("C writes", RECOVER, || async {
        c.table("t")
            .insert(json!({"id": "last", "n": 9, "marker": "last"}))
            .await
    })
    .await
    {
        failures.push(e);
    }
    let table = rows_of(&c, "t").await.unwrap();
    for (what, r) in readers {
        let Some(w) = r.await.unwrap() else {
            failures.push(format!(
                "{what}: neither ended nor showed the writes made after the server's return"
            ));
            continue;
        };
        failures.extend(w.problems.iter().map(|p| format!("{what}: {p}")));
        if let Some(why) = &w.ended {
            eprintln!("{what}: ended: {why}");
            continue;
        }
        let want: BTreeMap<String, Value> = if what.contains("point") {
            table
                .iter()
                .filter(|(k, _)| *k == "r1")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            table.clone()
        };
        if what.contains("point") {
            if w.rows != want {
                failures.push(format!(
                    "{what}: went on but shows {:?}, the row is {want:?}",
                    w.rows
                ));
            }
        } else if w.rows != want {
            failures.push(format!(
                "{what}: went on from a stale replica: shows {:?}, the table is {want:?}",
                w.rows
            ));
        }
    }
    // Stats once the server is back: following again.
    for (name, db) in [("A", &a), ("B", &b)] {
        let begin = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), db.stats().run()).await {
                Ok(Ok(rows)) if following(&rows) == Some(true) => break,
                Ok(Ok(rows)) if begin.elapsed() > RECOVER => {
                    failures.push(format!(
                        "{name}'s stats never said following again: {rows:?}"
                    ));
                    break;
                }
                Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                other => {
                    failures.push(format!("{name}.stats() after the outage: {other:?}"));
                    break;
                }
            }
        }
    }
    assert_no_failures("feeds_opened_while_down", &failures);
}
