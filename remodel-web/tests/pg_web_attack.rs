//! An adversarial attack on remodel-web served by **two app servers on one PostgreSQL
//! database**: A and B, each a `Web` on its own `Database` handle (its own replica and
//! replication slot), each served by axum on 127.0.0.1; pages are WebSocket clients that
//! rebuild their results from the frames, and hop between the servers as a load balancer
//! would make them.
//!
//! Every row written carries a unique, per-key increasing number `v` (each key is written by
//! one task at a time), so a page's frames are checked as they come:
//!
//! - a row never goes back in time (a smaller `v` than one already shown for that key, or a
//!   row shown again with the `v` it had when it left the result);
//! - a `change` never re-delivers a row the page already holds (same `v`: a duplicate);
//! - change cursors of a subscription strictly increase;
//! - a page of a private publication never gets a row of another member;
//!
//! and at the end each result must equal the query re-run (the oracle).
//!
//! One throwaway PostgreSQL cluster per test binary, one database per test; under `CI=true`
//! a test fails when no server can be started.

mod common;

use common::{serve, App, Client, User};
use futures::StreamExt;
use remodel::postgres::{Connect, TestCluster, TestDatabase};
use remodel::{json, Conflict, Database, Error, IndexSpec, Patch, Value};
use remodel_web::{Limits, Live, NoParams, Refusal, Web};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// The app, served by both servers.
// ---------------------------------------------------------------------------------------

const TABLES: &[&str] = &["items", "logs", "accounts", "seats", "ships", "crew"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberP {
    member: String,
}

#[derive(Deserialize)]
struct PutItem {
    id: String,
    v: u64,
    #[serde(default)]
    gone: bool,
}

#[derive(Deserialize)]
struct AddLog {
    id: String,
    v: u64,
}

#[derive(Deserialize)]
struct Withdraw {
    acct: String,
    amount: i64,
}

#[derive(Deserialize)]
struct Claim {
    slot: u64,
}

#[derive(Deserialize)]
struct Join {
    ship: String,
    member: String,
}

fn web(db: &Database, limits: Limits) -> Web<User> {
    Web::<User>::builder(db.clone())
        .limits(limits)
        .window(Duration::from_millis(20))
        .publish("items", |c, _: NoParams| async move {
            Ok(Live::new(c.db.table("items").query().changes()).sort_by("id"))
        })
        .publish("items_shared", |c, _: NoParams| async move {
            Ok(Live::new(c.db.table("items").query().changes())
                .sort_by("id")
                .shared())
        })
        // A member's own log, by the owner index; nobody else may read it.
        .publish("logs", |c, p: MemberP| async move {
            if c.identity.0 != p.member {
                return Err(Refusal::forbidden("only the member reads this log"));
            }
            let me = p.member.clone();
            let q =
                c.db.table("logs")
                    .get_all([p.member.as_str()])
                    .index("owner");
            Ok(Live::new(q.changes())
                .rule(move |r| r["owner"] == me.as_str())
                .sort_by("id"))
        })
        // The whole table, the caller's rows only (a rule).
        .publish("mylogs", |c, _: NoParams| async move {
            let me = c.identity.0.clone();
            Ok(Live::new(c.db.table("logs").query().changes())
                .rule(move |r| r["owner"] == me.as_str()))
        })
        .publish("mylogs_shared", |c, _: NoParams| async move {
            let me = c.identity.0.clone();
            let part = me.clone();
            Ok(Live::new(c.db.table("logs").query().changes())
                .rule(move |r| r["owner"] == me.as_str())
                .shared_by(part))
        })
        .method("put_item", |c, p: PutItem| async move {
            let t = c.db.table("items");
            if p.gone {
                t.get(p.id.as_str()).delete().await?;
            } else {
                t.insert(json!({"id": p.id, "v": p.v, "by": c.identity.0}))
                    .conflict(Conflict::Replace)
                    .await?;
            }
            Ok(())
        })
        .method("add_log", |c, p: AddLog| async move {
            let doc = json!({"id": p.id, "owner": c.identity.0, "v": p.v, "secret": "s"});
            c.db.table("logs")
                .insert(doc)
                .conflict(Conflict::Replace)
                .await?;
            Ok(())
        })
        // Checked at commit: `Patch::with` runs against the row as it is when it commits.
        .method("withdraw", |c, p: Withdraw| async move {
            let amount = p.amount;
            let r =
                c.db.table("accounts")
                    .get(p.acct.as_str())
                    .update(Patch::with(move |doc| {
                        let bal = doc["balance"].as_i64().unwrap_or(0);
                        if bal < amount {
                            return Err(Error::Precondition("insufficient funds".into()));
                        }
                        Ok(json!({"balance": bal - amount}))
                    }))
                    .await;
            match r {
                Ok(w) if w.replaced == 1 && w.errors == 0 => Ok(true),
                Ok(w) => Err(Refusal::invalid(format!(
                    "not withdrawn: {:?}",
                    w.first_error
                ))),
                Err(Error::Precondition(_)) => Err(Refusal::invalid("insufficient funds")),
                Err(e) => Err(Refusal::from(e)),
            }
        })
        // One seat per slot: the check and the insert in one commit.
        .method("claim", |c, p: Claim| async move {
            let q = c.db.table("seats").get_all([p.slot]).index("slot");
            let r =
                c.db.batch()
                    .require_empty(&q, "taken")
                    .insert("seats", json!({"slot": p.slot, "user": c.identity.0}))
                    .await;
            match r {
                Ok(_) => Ok(true),
                Err(Error::Precondition(_)) => Err(Refusal::invalid("taken")),
                Err(e) => Err(Refusal::from(e)),
            }
        })
        // A member joins a ship that must exist when the join commits.
        .method("join", |c, p: Join| async move {
            let r =
                c.db.batch()
                    .require_exists("ships", p.ship.as_str())
                    .insert("crew", json!({"id": p.member, "ship": p.ship}))
                    .await;
            match r {
                Ok(_) => Ok(true),
                Err(e @ Error::NotFound { .. }) => Err(Refusal::from(e)),
                Err(e) => Err(Refusal::from(e)),
            }
        })
        .build()
}

fn limits() -> Limits {
    Limits {
        calls_per_second: 10_000,
        subscribes_per_second: 10_000,
        ..Limits::default()
    }
}

async fn pg(test: &str) -> Option<TestDatabase> {
    let cluster = TestCluster::shared_or_skip(test)?;
    Some(cluster.create_database().await.expect("a test database"))
}

async fn open(url: &str) -> Database {
    Connect::new(url).open().await.expect("connects")
}

struct Pair {
    pg: TestDatabase,
    a: App,
    b: App,
}

/// Two servers on one new database, with the app's tables made through A.
async fn pair(test: &str, limits: Limits) -> Option<Pair> {
    let pg = pg(test).await?;
    let da = open(pg.url()).await;
    let db = open(pg.url()).await;
    for t in TABLES {
        da.create_table(t).await.unwrap();
    }
    for (t, f) in [("logs", "owner"), ("seats", "slot"), ("crew", "ship")] {
        da.table(t)
            .create_index(f, IndexSpec::field(f))
            .await
            .unwrap();
    }
    db.sync().await.unwrap();
    let a = serve(&da, web(&da, limits.clone())).await;
    let b = serve(&db, web(&db, limits)).await;
    Some(Pair { pg, a, b })
}

// ---------------------------------------------------------------------------------------
// Pages.
// ---------------------------------------------------------------------------------------

enum Got {
    Frame(Value),
    Quiet,
    Closed,
}

/// A cursor as remodel-web gives it: `seq-n.identity` (hex; the database's identity after
/// the dot, the same from both servers).
fn parse_cursor(c: &str) -> Option<(u64, u32)> {
    let (c, identity) = c.split_once('.')?;
    u64::from_str_radix(identity, 16).ok()?;
    let (a, b) = c.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u32::from_str_radix(b, 16).ok()?,
    ))
}

/// A page: one socket at a time, its subscriptions, and the checks of every frame.
struct Tab {
    c: Client,
    user: String,
    name: String,
    /// Open subscriptions: publication and parameters.
    subs: BTreeMap<u32, (String, Value)>,
    /// Per (sub, key): the largest `v` shown, and whether the row has left the result since.
    last_v: HashMap<(u32, String), (u64, bool)>,
    cursor: HashMap<u32, (u64, u32)>,
    resets: HashMap<u32, usize>,
    /// Subscriptions whose last frame was a part of a change (more to come): cut there, the
    /// page resumes from the cursor before it, and the parts it applied come again.
    mid_change: HashSet<u32>,
    tolerate: HashSet<u32>,
    /// Keys of a reset whose `more` frames are still coming.
    in_reset: HashMap<u32, HashSet<String>>,
    violations: Vec<String>,
    ends: Vec<Value>,
    errors: Vec<Value>,
    results: Vec<Value>,
    frames: usize,
}

impl Tab {
    async fn open(app: &App, user: &str, name: &str) -> Tab {
        Tab {
            c: Client::connect(app, user).await,
            user: user.to_string(),
            name: name.to_string(),
            subs: BTreeMap::new(),
            last_v: HashMap::new(),
            cursor: HashMap::new(),
            resets: HashMap::new(),
            in_reset: HashMap::new(),
            mid_change: HashSet::new(),
            tolerate: HashSet::new(),
            violations: Vec::new(),
            ends: Vec::new(),
            errors: Vec::new(),
            results: Vec::new(),
            frames: 0,
        }
    }

    async fn sub(&mut self, id: u32, name: &str, params: Value) {
        self.subs.insert(id, (name.to_string(), params.clone()));
        self.c.sub(id, name, params).await;
    }

    async fn sub_with_cursor(&mut self, id: u32, name: &str, params: Value, cursor: &str) {
        self.subs.insert(id, (name.to_string(), params.clone()));
        self.c
            .send(json!({"op": "sub", "id": id, "name": name, "params": params, "cursor": cursor}))
            .await;
    }

    async fn next(&mut self, wait: Duration) -> Got {
        // Under the common client's own 10 s limit (which panics).
        let wait = wait.min(Duration::from_secs(5));
        // Frames one by one (a `more` of one subscription may follow another's frames:
        // the JavaScript client and `Results` keep each subscription's partial reset).
        let recv = async {
            let f = self.c.frame().await?;
            self.c.results.apply(&f);
            Some(f)
        };
        match tokio::time::timeout(wait, recv).await {
            Err(_) => Got::Quiet,
            Ok(None) => Got::Closed,
            Ok(Some(f)) => {
                self.check(&f);
                Got::Frame(f)
            }
        }
    }

    /// Reads (and checks) frames for `d`; false if the server closed.
    async fn pump(&mut self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            if let Got::Closed = self.next(left).await {
                return false;
            }
        }
    }

    /// Reads frames until `pred` holds of one (which is returned), or `wait` passes.
    async fn until(&mut self, wait: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.next(left).await {
                Got::Frame(f) if pred(&f) => return Some(f),
                Got::Closed => return None,
                _ => {}
            }
        }
    }

    fn check(&mut self, f: &Value) {
        self.frames += 1;
        let t = f["t"].as_str().unwrap_or("");
        match t {
            "reset" | "change" | "more" => {}
            "end" => {
                self.ends.push(f.clone());
                return;
            }
            "error" => {
                self.errors.push(f.clone());
                return;
            }
            "result" => {
                self.results.push(f.clone());
                return;
            }
            _ => return,
        }
        let Some(sub) = f["sub"].as_u64().map(|s| s as u32) else {
            return;
        };
        let Some((publication, _)) = self.subs.get(&sub).cloned() else {
            return;
        };
        let private = publication.contains("logs");
        let who = format!("{} ({}) sub {sub} `{publication}`", self.name, self.user);
        if let Some(c) = f["cursor"].as_str() {
            match parse_cursor(c) {
                Some(c) => {
                    if t == "change" {
                        if let Some(prev) = self.cursor.get(&sub) {
                            if c <= *prev {
                                self.violations.push(format!(
                                    "{who}: change cursor {c:x?} not after the previous {prev:x?}: {f}"
                                ));
                            }
                        }
                    }
                    self.cursor.insert(sub, c);
                }
                None => self
                    .violations
                    .push(format!("{who}: unreadable cursor in {f}")),
            }
        }
        let rows = f["rows"].as_array().cloned().unwrap_or_default();
        if t == "reset" {
            *self.resets.entry(sub).or_default() += 1;
            self.in_reset.insert(sub, HashSet::new());
        }
        if t == "more" && !self.in_reset.contains_key(&sub) {
            return;
        }
        let mut in_reset = self.in_reset.remove(&sub).unwrap_or_default();
        for row in &rows {
            let key = row[0].to_string();
            let doc = &row[1];
            if doc.is_null() {
                if let Some(e) = self.last_v.get_mut(&(sub, key)) {
                    e.1 = true;
                }
                continue;
            }
            in_reset.insert(key.clone());
            if private && doc["owner"] != self.user.as_str() {
                self.violations.push(format!(
                    "{who}: LEAK: a row of another member: {doc} in {t}"
                ));
            }
            let Some(v) = doc["v"].as_u64() else {
                continue;
            };
            if let Some(&(lv, gone)) = self.last_v.get(&(sub, key.clone())) {
                if v < lv {
                    self.violations.push(format!(
                        "{who}: row {key} went back in time: v {v} after v {lv} ({t})"
                    ));
                } else if v == lv && gone {
                    self.violations.push(format!(
                        "{who}: row {key} came back as it was (v {v}) after it left ({t})"
                    ));
                } else if v == lv && t == "change" && !self.tolerate.contains(&sub) {
                    self.violations.push(format!(
                        "{who}: row {key} delivered again (v {v}): a duplicate change"
                    ));
                }
            }
            let lv = self.last_v.get(&(sub, key.clone())).map_or(0, |e| e.0);
            self.last_v.insert((sub, key), (v.max(lv), false));
        }
        if t == "change" {
            if f["more"] == true {
                self.mid_change.insert(sub);
            } else {
                self.mid_change.remove(&sub);
                self.tolerate.remove(&sub);
            }
        }
        if t == "reset" || t == "more" {
            if f["more"] == true {
                self.in_reset.insert(sub, in_reset);
            } else {
                for ((s, k), e) in self.last_v.iter_mut() {
                    if *s == sub && !in_reset.contains(k) {
                        e.1 = true;
                    }
                }
            }
        }
    }

    /// Rows of `sub` by key text.
    fn rows(&self, sub: u32) -> BTreeMap<String, Value> {
        self.c
            .docs(sub)
            .into_iter()
            .map(|d| (d["id"].to_string(), d))
            .collect()
    }

    /// Drops the socket (no close frame) and opens one to `to`, resuming every open
    /// subscription from the last cursor the page applied.
    async fn hop(&mut self, to: &App) {
        let results = std::mem::take(&mut self.c.results);
        let mut c = Client::connect(to, &self.user).await;
        c.results = results;
        let old = std::mem::replace(&mut self.c, c);
        drop(old);
        let subs: Vec<_> = self.subs.clone().into_iter().collect();
        for (id, (name, params)) in subs {
            if self.c.results.ended(id).is_some() {
                continue;
            }
            let mut frame = json!({"op": "sub", "id": id, "name": name, "params": params});
            // A reset cut before its last part is no result to resume from.
            if let Some(cur) = self.c.cursor(id).filter(|_| self.c.results.is_whole(id)) {
                frame["cursor"] = json!(cur);
            }
            if self.mid_change.remove(&id) {
                self.tolerate.insert(id);
            }
            self.c.send(frame).await;
        }
    }

    /// Calls `method` and waits for its answer.
    async fn call(&mut self, id: u32, method: &str, params: Value) -> Value {
        self.c
            .send(json!({"op": "call", "id": id, "name": method, "params": params}))
            .await;
        self.answer(id, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{}: no answer to call {id} of {method}", self.name))
    }

    /// The refusal that ended `sub`, once it came (within `wait`).
    async fn ended(&mut self, sub: u32, wait: Duration) -> Option<Value> {
        let end = Instant::now() + wait;
        loop {
            if let Some(e) = self.c.results.ended(sub) {
                return Some(e.clone());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Got::Closed = self.next(left).await {
                return None;
            }
        }
    }

    /// The answer to call `id` (already read, or read within `wait`).
    async fn answer(&mut self, id: u32, wait: Duration) -> Option<Value> {
        let end = Instant::now() + wait;
        loop {
            if let Some(i) = self.results.iter().position(|f| f["call"] == id) {
                return Some(self.results.remove(i));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Got::Closed = self.next(left).await {
                return None;
            }
        }
    }

    /// Reads until `sub`'s rows equal `want` (or `wait` passes); the difference otherwise.
    async fn settle(
        &mut self,
        sub: u32,
        want: &BTreeMap<String, Value>,
        wait: Duration,
    ) -> Result<(), String> {
        let end = Instant::now() + wait;
        loop {
            if &self.rows(sub) == want && self.c.results.is_whole(sub) {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(diff(&self.name, sub, &self.rows(sub), want));
            }
            if let Got::Closed = self.next(Duration::from_millis(100)).await {
                return Err(format!("{}: closed while settling sub {sub}", self.name));
            }
        }
    }
}

fn diff(
    who: &str,
    sub: u32,
    got: &BTreeMap<String, Value>,
    want: &BTreeMap<String, Value>,
) -> String {
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => out.push(format!("missing {k}: {w}")),
            Some(g) if g != w => out.push(format!("{k}: has {g}, should be {w}")),
            _ => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            out.push(format!("extra {k}: {g}"));
        }
    }
    out.truncate(12);
    format!(
        "{who} sub {sub}: {} rows, oracle {} rows; {}",
        got.len(),
        want.len(),
        out.join("; ")
    )
}

/// The rows of `table` on `db` (after it caught up), those `keep` keeps, by key text.
async fn oracle(
    db: &Database,
    table: &str,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<String, Value> {
    db.sync().await.unwrap();
    db.table(table)
        .query()
        .run()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| keep(d))
        .map(|d| (d["id"].to_string(), d))
        .collect()
}

fn report(tabs: &[&Tab]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tabs {
        out.extend(t.violations.iter().cloned());
        for e in &t.ends {
            out.push(format!("{}: unexpected end: {e}", t.name));
        }
        for e in &t.errors {
            out.push(format!("{}: unexpected error frame: {e}", t.name));
        }
    }
    out
}

fn assert_clean(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn seed() -> u64 {
    let s = std::env::var("PG_WEB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("PG_WEB_SEED={s}");
    s | 1
}

// ---------------------------------------------------------------------------------------
// Writers.
// ---------------------------------------------------------------------------------------

/// Writes `keys` of `items` through `db` until `stop`: upserts with a fresh `v`, some
/// deletes. One task per key set, so each key's `v` grows in commit order.
async fn item_writer(
    db: Database,
    keys: Vec<String>,
    clock: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> u64 {
    let mut rng = common::Rng(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let k = keys[rng.below(keys.len() as u64) as usize].as_str();
        let v = clock.fetch_add(1, Ordering::Relaxed);
        let t = db.table("items");
        if rng.below(10) < 2 {
            t.get(k).delete().await.unwrap();
        } else {
            t.insert(json!({"id": k, "v": v, "pad": "x".repeat(rng.below(40) as usize)}))
                .conflict(Conflict::Replace)
                .await
                .unwrap();
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(12))).await;
    }
    n
}

/// Writes `keys` of `logs` through `db`: each write gives the row a (new) owner among
/// `owners` and a fresh `v`; some deletes.
async fn log_writer(
    db: Database,
    keys: Vec<String>,
    owners: Vec<&'static str>,
    clock: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> u64 {
    let mut rng = common::Rng(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let k = keys[rng.below(keys.len() as u64) as usize].as_str();
        let v = clock.fetch_add(1, Ordering::Relaxed);
        let owner = owners[rng.below(owners.len() as u64) as usize];
        let t = db.table("logs");
        match rng.below(10) {
            0 => {
                t.get(k).delete().await.unwrap();
            }
            1..=4 => {
                // A move: only the owner and v change (an update of a row that may exist).
                let r = t
                    .get(k)
                    .update(json!({"owner": owner, "v": v}))
                    .await
                    .unwrap();
                if r.skipped == 1 {
                    t.insert(json!({"id": k, "owner": owner, "v": v, "secret": owner}))
                        .conflict(Conflict::Replace)
                        .await
                        .unwrap();
                }
            }
            _ => {
                t.insert(json!({"id": k, "owner": owner, "v": v, "secret": owner}))
                    .conflict(Conflict::Replace)
                    .await
                    .unwrap();
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(12))).await;
    }
    n
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

// ---------------------------------------------------------------------------------------
// PostgreSQL helpers.
// ---------------------------------------------------------------------------------------

async fn pg_stats(db: &Database) -> Value {
    db.stats()
        .run()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r["type"] == "postgres")
        .expect("a postgres stats row")
}

/// The server process of `db`'s replication connection.
async fn walsender_pid(admin: &remodel::postgres::tokio_postgres::Client, db: &Database) -> i32 {
    let slot = pg_stats(db).await["slot"].as_str().unwrap().to_string();
    let app = format!("remodel_pump_{}", &slot["remodel_".len()..]);
    let rows = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one replication connection of {slot}");
    rows[0].get::<_, i32>(0)
}

/// Continues a stopped server process when dropped (also when the test panics).
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Self {
        // SAFETY: sends a signal to a process of the test's own PostgreSQL cluster.
        let r = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(r, 0, "SIGSTOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Tabs on B follow writes made on A (methods and direct), in commit order.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_tabs_follow_writes_made_on_a_in_commit_order() {
    let Some(p) = pair("b_tabs_follow_writes_made_on_a_in_commit_order", limits()).await else {
        return;
    };
    let seed = seed();
    let clock = Arc::new(AtomicU64::new(1));
    for k in keys("a", 10).into_iter().chain(keys("b", 10)) {
        p.a.db
            .table("items")
            .insert(json!({"id": k, "v": 0}))
            .await
            .unwrap();
    }
    p.b.db.sync().await.unwrap();
    let mut t1 = Tab::open(&p.b, "bob", "t1@B").await;
    t1.sub(1, "items", json!({})).await;
    t1.sub(2, "items_shared", json!({})).await;
    let mut t2 = Tab::open(&p.b, "carol", "t2@B").await;
    t2.sub(1, "items_shared", json!({})).await;
    t2.sub(2, "items", json!({})).await;
    let mut caller = Tab::open(&p.a, "alice", "caller@A").await;
    t1.pump(Duration::from_millis(300)).await;
    t2.pump(Duration::from_millis(300)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let wa = tokio::spawn(item_writer(
        p.a.db.clone(),
        keys("a", 10),
        clock.clone(),
        stop.clone(),
        seed,
    ));
    let wb = tokio::spawn(item_writer(
        p.b.db.clone(),
        keys("b", 10),
        clock.clone(),
        stop.clone(),
        seed.wrapping_mul(3),
    ));
    let mut rng = common::Rng(seed.wrapping_mul(7));
    let began = Instant::now();
    let mut call = 0;
    let mut failed_calls = Vec::new();
    while began.elapsed() < Duration::from_secs(3) {
        // A method call on A (the caller waits for its answer), then both B tabs read.
        call += 1;
        let k = format!("m{}", rng.below(8));
        let v = clock.fetch_add(1, Ordering::Relaxed);
        let gone = rng.below(10) < 2;
        let r = caller
            .call(call, "put_item", json!({"id": k, "v": v, "gone": gone}))
            .await;
        if r.get("ok").is_none() {
            failed_calls.push(r.to_string());
        }
        t1.pump(Duration::from_millis(15)).await;
        t2.pump(Duration::from_millis(15)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (na, nb) = (wa.await.unwrap(), wb.await.unwrap());
    p.a.db.sync().await.unwrap();
    let want = oracle(&p.b.db, "items", |_| true).await;
    let mut failures = Vec::new();
    for tab in [&mut t1, &mut t2] {
        for sub in [1, 2] {
            if let Err(e) = tab.settle(sub, &want, Duration::from_secs(10)).await {
                failures.push(e);
            }
        }
    }
    failures.extend(report(&[&t1, &t2]));
    failures.extend(failed_calls);
    eprintln!(
        "writes: A {na}, B {nb}, calls {call}; frames t1 {} t2 {}",
        t1.frames, t2.frames
    );
    assert_clean("tabs on B following A's writes", &failures);
}

// ---------------------------------------------------------------------------------------
// 2. Load balancer: a page hops between A and B, resuming each subscription.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_hopping_between_servers_resumes_exactly() {
    let Some(p) = pair("page_hopping_between_servers_resumes_exactly", limits()).await else {
        return;
    };
    let seed = seed();
    let clock = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut page = Tab::open(&p.a, "alice", "page").await;
    page.sub(1, "items", json!({})).await;
    page.sub(2, "items_shared", json!({})).await;
    page.sub(3, "logs", json!({"member": "alice"})).await;
    page.sub(4, "mylogs_shared", json!({})).await;
    page.sub(5, "mylogs", json!({})).await;
    // Another page on each server keeps the shared results running there.
    let mut wa = Tab::open(&p.a, "alice", "witness@A").await;
    wa.sub(1, "items_shared", json!({})).await;
    wa.sub(2, "mylogs_shared", json!({})).await;
    let mut wb = Tab::open(&p.b, "alice", "witness@B").await;
    wb.sub(1, "items_shared", json!({})).await;
    wb.sub(2, "mylogs_shared", json!({})).await;
    page.pump(Duration::from_millis(200)).await;
    let writers = vec![
        tokio::spawn(item_writer(
            p.a.db.clone(),
            keys("a", 12),
            clock.clone(),
            stop.clone(),
            seed,
        )),
        tokio::spawn(item_writer(
            p.b.db.clone(),
            keys("b", 12),
            clock.clone(),
            stop.clone(),
            seed.wrapping_mul(5),
        )),
        tokio::spawn(log_writer(
            p.a.db.clone(),
            keys("la", 10),
            vec!["alice", "bob"],
            clock.clone(),
            stop.clone(),
            seed.wrapping_mul(11),
        )),
        tokio::spawn(log_writer(
            p.b.db.clone(),
            keys("lb", 10),
            vec!["alice", "bob"],
            clock.clone(),
            stop.clone(),
            seed.wrapping_mul(13),
        )),
    ];
    let mut rng = common::Rng(seed.wrapping_mul(17));
    let mut on_b = false;
    for _ in 0..8 {
        let t = Duration::from_millis(150 + rng.below(400));
        let end = Instant::now() + t;
        while Instant::now() < end {
            page.pump(Duration::from_millis(20)).await;
            wa.pump(Duration::from_millis(5)).await;
            wb.pump(Duration::from_millis(5)).await;
        }
        on_b = !on_b;
        page.hop(if on_b { &p.b } else { &p.a }).await;
    }
    page.pump(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    p.a.db.sync().await.unwrap();
    let items = oracle(&p.b.db, "items", |_| true).await;
    let mine = oracle(&p.b.db, "logs", |d| d["owner"] == "alice").await;
    let mut failures = Vec::new();
    for (sub, want) in [(1, &items), (2, &items), (3, &mine), (4, &mine), (5, &mine)] {
        if let Err(e) = page.settle(sub, want, Duration::from_secs(10)).await {
            failures.push(e);
        }
    }
    failures.extend(report(&[&page, &wa, &wb]));
    eprintln!(
        "hops: resets per sub {:?} (1 each is the first subscription)",
        page.resets
    );
    assert_clean("a page hopping between A and B", &failures);
}

// ---------------------------------------------------------------------------------------
// 2b. A page resumes on a server whose replica is behind the cursor it got from A.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_lagging_server_never_goes_back_in_time() {
    let Some(p) = pair(
        "resume_on_a_lagging_server_never_goes_back_in_time",
        limits(),
    )
    .await
    else {
        return;
    };
    let items = p.a.db.table("items");
    for i in 0..5 {
        items
            .insert(json!({"id": format!("k{i}"), "v": 1}))
            .await
            .unwrap();
    }
    p.b.db.sync().await.unwrap();
    let mut page = Tab::open(&p.a, "alice", "page").await;
    page.sub(1, "items", json!({})).await;
    page.sub(2, "items_shared", json!({})).await;
    page.pump(Duration::from_millis(300)).await;
    // Keep B's shared result running, so that the shared resume meets it.
    let mut wb = Tab::open(&p.b, "bob", "witness@B").await;
    wb.sub(1, "items_shared", json!({})).await;
    wb.pump(Duration::from_millis(300)).await;

    // B's replica stops following: its walsender is paused.
    let admin = p.pg.connect().await.unwrap();
    let pid = walsender_pid(&admin, &p.b.db).await;
    let paused = Stopped::new(pid);
    items.get("k0").delete().await.unwrap();
    items
        .insert(json!({"id": "k1", "v": 2}))
        .conflict(Conflict::Replace)
        .await
        .unwrap();
    items.insert(json!({"id": "k9", "v": 3})).await.unwrap();
    let want = oracle(&p.a.db, "items", |_| true).await;
    for sub in [1, 2] {
        if let Err(e) = page.settle(sub, &want, Duration::from_secs(5)).await {
            panic!("the page on A did not see A's writes: {e}");
        }
    }
    let cursors = (page.c.cursor(1), page.c.cursor(2));
    // The load balancer sends the page to B, which has not applied these commits yet.
    eprintln!("B before the hop: {}", pg_stats(&p.b.db).await["position"]);
    page.hop(&p.b).await;
    let f0 = page.frames;
    page.pump(Duration::from_millis(1200)).await;
    let during = (page.rows(1), page.rows(2));
    eprintln!(
        "B while paused: {}; {} frames; rows {during:?}",
        pg_stats(&p.b.db).await["position"],
        page.frames - f0
    );
    drop(paused);
    p.b.db.sync().await.unwrap();
    let mut failures = Vec::new();
    for sub in [1, 2] {
        if let Err(e) = page.settle(sub, &want, Duration::from_secs(10)).await {
            failures.push(e);
        }
    }
    failures.extend(report(&[&page]));
    for (sub, rows) in [(1, &during.0), (2, &during.1)] {
        if rows.contains_key("\"k0\"") {
            failures.push(format!(
                "sub {sub}: while B lagged the page showed k0 again, deleted before its cursor: {rows:?}"
            ));
        }
    }
    eprintln!("cursors from A: {cursors:?}; resets {:?}", page.resets);
    assert_clean("a resume on a lagging server", &failures);
}

// ---------------------------------------------------------------------------------------
// 2c. Forged cursors on B: another database's, a future one, another subscription's.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cursors_on_b_give_a_reset_or_a_refusal() {
    let Some(p) = pair("forged_cursors_on_b_give_a_reset_or_a_refusal", limits()).await else {
        return;
    };
    let items = p.a.db.table("items");
    for i in 0..4 {
        items
            .insert(json!({"id": format!("k{i}"), "v": 1}))
            .await
            .unwrap();
    }
    let want = oracle(&p.b.db, "items", |_| true).await;
    let mut failures = Vec::new();
    let page = Tab::open(&p.b, "alice", "unused").await;

    // A cursor far in the future, on a page that holds stale rows.
    let mut fut = Tab::open(&p.b, "alice", "future").await;
    fut.c.results.apply(&json!({"t": "reset", "sub": 1, "rows": [["\"zz\"", {"id": "zz", "v": 1}]], "order": [], "cursor": "1-0"}));
    fut.c.results.apply(&json!({"t": "reset", "sub": 2, "rows": [["\"zz\"", {"id": "zz", "v": 1}]], "order": [], "cursor": "1-0"}));
    fut.sub_with_cursor(1, "items", json!({}), "fffffffffffff-0")
        .await;
    fut.sub_with_cursor(2, "items_shared", json!({}), "fffffffffffff-0")
        .await;
    for sub in [1, 2] {
        if fut.c.results.ended(sub).is_none() {
            if let Err(e) = fut.settle(sub, &want, Duration::from_secs(5)).await {
                failures.push(format!("a future cursor: {e}"));
            }
        }
    }
    items.insert(json!({"id": "late", "v": 9})).await.unwrap();
    let want = oracle(&p.b.db, "items", |_| true).await;
    for sub in [1, 2] {
        if fut.c.results.ended(sub).is_none() {
            if let Err(e) = fut.settle(sub, &want, Duration::from_secs(5)).await {
                failures.push(format!("after a future cursor, a later write: {e}"));
            }
        }
    }

    // Bob resumes his own log with a cursor of alice's and of another publication: only
    // his rows, ever.
    p.a.db
        .table("logs")
        .insert_many([
            json!({"id": "l1", "owner": "alice", "v": 1}),
            json!({"id": "l2", "owner": "bob", "v": 1}),
        ])
        .await
        .unwrap();
    let mut alice = Tab::open(&p.a, "alice", "alice@A").await;
    alice.sub(1, "logs", json!({"member": "alice"})).await;
    alice.pump(Duration::from_millis(200)).await;
    p.a.db
        .table("logs")
        .insert(json!({"id": "l3", "owner": "alice", "v": 2}))
        .await
        .unwrap();
    alice.pump(Duration::from_millis(300)).await;
    let acur = alice.c.cursor(1).expect("alice's cursor");
    let mut bob = Tab::open(&p.b, "bob", "bob@B").await;
    bob.sub_with_cursor(1, "logs", json!({"member": "bob"}), &acur)
        .await;
    bob.sub_with_cursor(2, "mylogs", json!({}), &acur).await;
    bob.sub_with_cursor(3, "logs", json!({"member": "alice"}), &acur)
        .await;
    p.a.db
        .table("logs")
        .insert_many([
            json!({"id": "l4", "owner": "alice", "v": 3}),
            json!({"id": "l5", "owner": "bob", "v": 3}),
        ])
        .await
        .unwrap();
    bob.pump(Duration::from_millis(800)).await;
    match bob.c.results.ended(3) {
        Some(e) if e["code"] == "forbidden" => {}
        other => failures.push(format!("bob on alice's log: {other:?}")),
    }
    bob.ends.retain(|e| e["sub"] != 3);
    failures.extend(report(&[&bob, &fut]));
    failures.extend(page.violations.iter().cloned());
    assert_clean("forged cursors", &failures);
}

// ---------------------------------------------------------------------------------------
// 2d. A cursor of another database (same PostgreSQL server, so one space of positions).
// ---------------------------------------------------------------------------------------

/// A cursor of another database on the same PostgreSQL server (whose databases share one
/// space of positions) is not resumed: the page gets the result afresh. (It was resumed, and
/// the page kept the other database's rows: cursors now carry the database's identity.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_another_database_is_not_resumed_on_b() {
    let Some(p) = pair("a_cursor_of_another_database_is_not_resumed_on_b", limits()).await else {
        return;
    };
    let items = p.a.db.table("items");
    for i in 0..4 {
        items
            .insert(json!({"id": format!("k{i}"), "v": 1}))
            .await
            .unwrap();
    }
    let mut failures = Vec::new();
    // Another database of the same PostgreSQL server, with its own app server.
    let Some(other) = pg("forged_cursors_other_database").await else {
        return;
    };
    let dx = open(other.url()).await;
    dx.create_table("items").await.unwrap();
    dx.create_table("logs").await.unwrap();
    dx.table("logs")
        .create_index("owner", IndexSpec::field("owner"))
        .await
        .unwrap();
    let x = serve(&dx, web(&dx, limits())).await;
    for i in 0..3 {
        dx.table("items")
            .insert(json!({"id": format!("x{i}"), "v": 1}))
            .await
            .unwrap();
    }
    let mut page = Tab::open(&x, "alice", "page@other").await;
    page.sub(1, "items", json!({})).await;
    page.sub(2, "items_shared", json!({})).await;
    page.pump(Duration::from_millis(300)).await;
    dx.table("items")
        .insert(json!({"id": "x9", "v": 2}))
        .await
        .unwrap();
    page.pump(Duration::from_millis(300)).await;
    let foreign = page.c.cursor(1).expect("a cursor of the other database");
    // This database moves on past that position.
    for i in 4..8 {
        items
            .insert(json!({"id": format!("k{i}"), "v": 1}))
            .await
            .unwrap();
    }
    p.b.db.sync().await.unwrap();
    let want = oracle(&p.b.db, "items", |_| true).await;
    // The page is sent to B (of the other database) with its cursors.
    page.hop(&p.b).await;
    for sub in [1, 2] {
        if page.c.results.ended(sub).is_none() {
            if let Err(e) = page.settle(sub, &want, Duration::from_secs(5)).await {
                failures.push(format!("cursor {foreign} of another database: {e}"));
            }
        }
    }

    failures.extend(page.violations.iter().cloned());
    assert_clean("a cursor of another database", &failures);
}

// ---------------------------------------------------------------------------------------
// 3. Rules across servers: private rows written on A, rows moving between owners.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rows_written_on_a_never_reach_another_member_on_b() {
    let Some(p) = pair(
        "private_rows_written_on_a_never_reach_another_member_on_b",
        limits(),
    )
    .await
    else {
        return;
    };
    let seed = seed();
    let clock = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tabs = Vec::new();
    for (user, app, name) in [
        ("alice", &p.b, "alice@B"),
        ("bob", &p.b, "bob@B"),
        ("bob", &p.a, "bob@A"),
    ] {
        let mut t = Tab::open(app, user, name).await;
        t.sub(1, "logs", json!({"member": user})).await;
        t.sub(2, "mylogs", json!({})).await;
        t.sub(3, "mylogs_shared", json!({})).await;
        tabs.push(t);
    }
    // Bob asks for alice's log: refused.
    tabs[1].sub(9, "logs", json!({"member": "alice"})).await;
    let writers = vec![
        tokio::spawn(log_writer(
            p.a.db.clone(),
            keys("x", 12),
            vec!["alice", "bob", "carol"],
            clock.clone(),
            stop.clone(),
            seed,
        )),
        tokio::spawn(log_writer(
            p.a.db.clone(),
            keys("y", 12),
            vec!["alice", "bob"],
            clock.clone(),
            stop.clone(),
            seed.wrapping_mul(3),
        )),
    ];
    // Alice also writes her own log by method on A.
    let mut alice_a = Tab::open(&p.a, "alice", "alice@A").await;
    let mut rng = common::Rng(seed.wrapping_mul(5));
    let began = Instant::now();
    let mut call = 0;
    while began.elapsed() < Duration::from_secs(3) {
        call += 1;
        let v = clock.fetch_add(1, Ordering::Relaxed);
        let r = alice_a
            .call(
                call,
                "add_log",
                json!({"id": format!("m{}", rng.below(6)), "v": v}),
            )
            .await;
        assert!(r.get("ok").is_some(), "add_log: {r}");
        for t in tabs.iter_mut() {
            t.pump(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // A deliberate move mid-stream: one of alice's rows goes to bob.
    let moved = {
        let all = oracle(&p.a.db, "logs", |d| d["owner"] == "alice").await;
        all.values().next().cloned()
    };
    if let Some(row) = &moved {
        let v = clock.fetch_add(1, Ordering::Relaxed);
        p.a.db
            .table("logs")
            .get(row["id"].as_str().unwrap())
            .update(json!({"owner": "bob", "v": v}))
            .await
            .unwrap();
    }
    let mut failures = Vec::new();
    match tabs[1].ended(9, Duration::from_secs(3)).await {
        Some(e) if e["code"] == "forbidden" => {}
        other => failures.push(format!("bob subscribing alice's log: {other:?}")),
    }
    tabs[1].ends.retain(|e| e["sub"] != 9);
    for t in tabs.iter_mut() {
        let user = t.user.clone();
        let want = oracle(&p.b.db, "logs", |d| d["owner"] == user.as_str()).await;
        for sub in [1, 2, 3] {
            if let Err(e) = t.settle(sub, &want, Duration::from_secs(10)).await {
                failures.push(e);
            }
        }
    }
    if let Some(row) = moved {
        let key = row["id"].to_string();
        if tabs[0].rows(1).contains_key(&key) {
            failures.push(format!("the moved row {key} stayed in alice's result"));
        }
        if !tabs[1].rows(1).contains_key(&key) {
            failures.push(format!("the moved row {key} did not reach bob's result"));
        }
    }
    let refs: Vec<&Tab> = tabs.iter().collect();
    failures.extend(report(&refs));
    assert_clean("private rows across servers", &failures);
}

// ---------------------------------------------------------------------------------------
// 4. Methods whose checks depend on current data, while the other server writes.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_checks_hold_at_commit_across_servers() {
    let Some(p) = pair("method_checks_hold_at_commit_across_servers", limits()).await else {
        return;
    };
    let seed = seed();
    let (da, dbb) = (p.a.db.clone(), p.b.db.clone());
    da.table("accounts")
        .insert(json!({"id": "acct", "balance": 100}))
        .await
        .unwrap();
    for s in 0..10 {
        da.table("ships")
            .insert(json!({"id": format!("s{s}")}))
            .await
            .unwrap();
    }
    dbb.sync().await.unwrap();
    // Every committed balance, as B's replica applies them.
    let mut balances = dbb.table("accounts").get("acct").changes().await.unwrap();
    let seen = tokio::spawn(async move {
        let mut low = i64::MAX;
        let mut n = 0;
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_secs(3), balances.next()).await
        {
            let c = item.unwrap();
            if let Some(b) = c.new_val().and_then(|d| d["balance"].as_i64()) {
                low = low.min(b);
                n += 1;
            }
        }
        (low, n)
    });
    // Crew and ships in commit order (one cursor space).
    let crew_feed = dbb.table("crew").query().changes().await.unwrap();
    let ship_feed = dbb.table("ships").query().changes().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // B deposits, checked at commit too.
    let deposits = {
        let (db, stop) = (dbb.clone(), stop.clone());
        tokio::spawn(async move {
            let mut total = 0;
            let mut rng = common::Rng(seed);
            while !stop.load(Ordering::Relaxed) {
                let amount = 1 + rng.below(6) as i64;
                let r = db
                    .table("accounts")
                    .get("acct")
                    .update(Patch::with(move |doc| {
                        Ok(json!({"balance": doc["balance"].as_i64().unwrap_or(0) + amount}))
                    }))
                    .await
                    .unwrap();
                assert_eq!(r.replaced, 1);
                total += amount;
                tokio::time::sleep(Duration::from_millis(rng.below(8))).await;
            }
            total
        })
    };
    // B removes ships while A's page joins them.
    let removals = {
        let (db, stop) = (dbb.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = common::Rng(seed.wrapping_mul(3));
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 10 {
                tokio::time::sleep(Duration::from_millis(100 + rng.below(150))).await;
                db.table("ships")
                    .get(format!("s{n}").as_str())
                    .delete()
                    .await
                    .unwrap();
                n += 1;
            }
        })
    };
    let mut ta = Tab::open(&p.a, "alice", "alice@A").await;
    let mut tb = Tab::open(&p.b, "bob", "bob@B").await;
    let mut rng = common::Rng(seed.wrapping_mul(7));
    let mut withdrawn = 0i64;
    let mut refused = 0;
    let mut joined = Vec::new();
    let began = Instant::now();
    let mut id = 0u32;
    while began.elapsed() < Duration::from_secs(2500 / 1000) + Duration::from_millis(500) {
        id += 1;
        // Both pages withdraw at once: send both calls, then read both answers.
        let (a1, a2) = (1 + rng.below(25) as i64, 1 + rng.below(25) as i64);
        ta.c.send(json!({"op": "call", "id": id, "name": "withdraw", "params": {"acct": "acct", "amount": a1}})).await;
        tb.c.send(json!({"op": "call", "id": id, "name": "withdraw", "params": {"acct": "acct", "amount": a2}})).await;
        let ship = format!("s{}", rng.below(10));
        let member = format!("m{id}");
        ta.c.send(json!({"op": "call", "id": id + 100_000, "name": "join", "params": {"ship": ship, "member": member}})).await;
        for (tab, amount) in [(&mut ta, a1), (&mut tb, a2)] {
            let r = tab
                .answer(id, Duration::from_secs(20))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no answer to withdraw {id} of {amount} within 20 s ({:?} into the test)",
                        tab.name,
                        began.elapsed()
                    )
                });
            if r["ok"] == true {
                withdrawn += amount;
            } else if r["error"]["code"] == "invalid" {
                refused += 1;
            } else {
                panic!("withdraw: {r}");
            }
        }
        let r = ta
            .answer(id + 100_000, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no answer to join {id} within 20 s ({:?} into the test)",
                    began.elapsed()
                )
            });
        if r["ok"] == true {
            joined.push((member, ship));
        } else {
            assert_eq!(r["error"]["code"], "not_found", "join: {r}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let deposited = deposits.await.unwrap();
    removals.await.unwrap();

    // Seats: both pages claim every slot at once.
    for s in 0..8u32 {
        ta.c.send(json!({"op": "call", "id": 200_000 + s, "name": "claim", "params": {"slot": s}}))
            .await;
        tb.c.send(json!({"op": "call", "id": 200_000 + s, "name": "claim", "params": {"slot": s}}))
            .await;
    }
    let mut claimed: HashMap<u64, usize> = HashMap::new();
    let mut failures = Vec::new();
    for tab in [&mut ta, &mut tb] {
        for s in 0..8u32 {
            let r = tab
                .answer(200_000 + s, Duration::from_secs(20))
                .await
                .expect("an answer to claim");
            if r["ok"] == true {
                *claimed.entry(s as u64).or_default() += 1;
            } else if r["error"]["code"] != "invalid" {
                failures.push(format!("claim {s}: {r}"));
            }
        }
    }
    da.sync().await.unwrap();
    dbb.sync().await.unwrap();
    let seats = dbb.table("seats").query().run().await.unwrap();
    let mut per_slot: HashMap<u64, usize> = HashMap::new();
    for s in &seats {
        *per_slot.entry(s["slot"].as_u64().unwrap()).or_default() += 1;
    }
    for s in 0..8u64 {
        let (rows, oks) = (
            per_slot.get(&s).copied().unwrap_or(0),
            claimed.get(&s).copied().unwrap_or(0),
        );
        if rows > 1 || rows != oks {
            failures.push(format!(
                "slot {s}: {rows} seats, {oks} successful claims (one at most, and equal)"
            ));
        }
    }
    let balance = dbb
        .table("accounts")
        .get("acct")
        .run()
        .await
        .unwrap()
        .unwrap()["balance"]
        .as_i64()
        .unwrap();
    if balance != 100 + deposited - withdrawn {
        failures.push(format!(
            "balance {balance} != 100 + {deposited} deposited - {withdrawn} withdrawn"
        ));
    }
    let (low, n) = seen.await.unwrap();
    if low < 0 {
        failures.push(format!("a committed balance went below zero: {low}"));
    }
    // Each successful join committed while its ship existed.
    let mut events: Vec<((u64, u32), String, Value, Value)> = Vec::new();
    for (name, mut feed) in [("crew", crew_feed), ("ships", ship_feed)] {
        while let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(300), feed.next()).await
        {
            let c = item.unwrap();
            // A feed's own cursor (no database identity: the test's parser wants one).
            let cur = parse_cursor(&format!("{}.0", c.cursor().unwrap())).unwrap();
            events.push((
                cur,
                name.to_string(),
                c.old_val().cloned().unwrap_or(Value::Null),
                c.new_val().cloned().unwrap_or(Value::Null),
            ));
        }
    }
    events.sort_by_key(|e| e.0);
    let mut ships: HashSet<String> = (0..10).map(|s| format!("s{s}")).collect();
    for (cur, table, old, new) in &events {
        if table == "ships" && new.is_null() {
            ships.remove(old["id"].as_str().unwrap());
        } else if table == "crew" && !new.is_null() {
            let ship = new["ship"].as_str().unwrap();
            if !ships.contains(ship) {
                failures.push(format!(
                    "crew {} joined ship {ship} at {cur:x?}, after the ship was removed",
                    new["id"]
                ));
            }
        }
    }
    let crew = dbb.table("crew").query().run().await.unwrap();
    if crew.len() != joined.len() {
        failures.push(format!(
            "{} crew rows, {} successful joins",
            crew.len(),
            joined.len()
        ));
    }
    eprintln!(
        "withdrawn {withdrawn}, refused {refused}, deposited {deposited}, balance {balance}, \
         {n} balances seen (lowest {low}), {} joins, {} events",
        joined.len(),
        events.len()
    );
    assert_clean("method checks across servers", &failures);
}

// ---------------------------------------------------------------------------------------
// 5. DDL: a table dropped through A under B's subscriptions, then made again.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_on_a_ends_b_subscriptions_and_is_made_again_cleanly() {
    let Some(p) = pair(
        "a_table_dropped_on_a_ends_b_subscriptions_and_is_made_again_cleanly",
        limits(),
    )
    .await
    else {
        return;
    };
    let (da, dbb) = (p.a.db.clone(), p.b.db.clone());
    for i in 0..6 {
        da.table("items")
            .insert(json!({"id": format!("k{i}"), "v": 1, "inc": 1}))
            .await
            .unwrap();
    }
    dbb.sync().await.unwrap();
    let mut t1 = Tab::open(&p.b, "bob", "t1@B").await;
    t1.sub(1, "items", json!({})).await;
    t1.sub(2, "items_shared", json!({})).await;
    let mut t2 = Tab::open(&p.b, "carol", "t2@B").await;
    t2.sub(1, "items_shared", json!({})).await;
    // A page that leaves before the drop, holding its rows and cursors.
    let mut away = Tab::open(&p.a, "dave", "away").await;
    away.sub(1, "items", json!({})).await;
    away.sub(2, "items_shared", json!({})).await;
    for t in [&mut t1, &mut t2, &mut away] {
        t.pump(Duration::from_millis(200)).await;
    }
    da.table("items")
        .insert(json!({"id": "k6", "v": 2, "inc": 1}))
        .conflict(Conflict::Replace)
        .await
        .unwrap();
    for t in [&mut t1, &mut t2, &mut away] {
        t.pump(Duration::from_millis(300)).await;
    }
    let away_cursors = (away.c.cursor(1), away.c.cursor(2));
    let away_results = std::mem::take(&mut away.c.results);
    drop(away);

    let mut failures = Vec::new();
    da.drop_table("items").await.unwrap();
    let dropped = Instant::now();
    for (t, subs) in [(&mut t1, vec![1, 2]), (&mut t2, vec![1])] {
        for sub in subs {
            match t.ended(sub, Duration::from_secs(5)).await {
                Some(e) if e["code"] == "aborted" => {}
                other => failures.push(format!(
                    "{} sub {sub}: no `end` aborted within 5 s of the drop: {other:?}",
                    t.name
                )),
            }
            t.ends.retain(|e| e["sub"] != sub);
        }
    }
    eprintln!("ends came {:?} after the drop", dropped.elapsed());
    // The server answers, and a new subscription is refused with a type.
    t1.c.send(json!({"op": "ping"})).await;
    if t1
        .until(Duration::from_secs(3), |f| f["t"] == "pong")
        .await
        .is_none()
    {
        failures.push("no pong after the drop".into());
    }
    dbb.sync().await.unwrap();
    t1.subs.remove(&1);
    t1.sub(3, "items", json!({})).await;
    t1.sub(4, "items_shared", json!({})).await;
    for sub in [3, 4] {
        match t1.ended(sub, Duration::from_secs(5)).await {
            Some(e) if e["code"].is_string() && t1.c.results.resets(sub) == 0 => {}
            other => failures.push(format!(
                "subscribing a dropped table: end {other:?}, resets {}",
                t1.c.results.resets(sub)
            )),
        }
        t1.ends.retain(|e| e["sub"] != sub);
    }
    // Made again, with rows of the new incarnation (one key the old one had).
    da.create_table("items").await.unwrap();
    da.table("items")
        .insert_many([
            json!({"id": "k0", "v": 10, "inc": 2}),
            json!({"id": "n1", "v": 10, "inc": 2}),
        ])
        .await
        .unwrap();
    dbb.sync().await.unwrap();
    let want = oracle(&dbb, "items", |_| true).await;
    let mut t3 = Tab::open(&p.b, "erin", "t3@B").await;
    t3.sub(1, "items", json!({})).await;
    t3.sub(2, "items_shared", json!({})).await;
    // The page that was away comes back, to B, with its cursors of the old table.
    let mut back = Tab::open(&p.b, "dave", "back@B").await;
    back.c.results = away_results;
    back.subs.insert(1, ("items".into(), json!({})));
    back.subs.insert(2, ("items_shared".into(), json!({})));
    for (sub, name, cur) in [
        (1, "items", &away_cursors.0),
        (2, "items_shared", &away_cursors.1),
    ] {
        let cur = cur.clone().expect("a cursor");
        back.sub_with_cursor(sub, name, json!({}), &cur).await;
    }
    for t in [&mut t3, &mut back] {
        for sub in [1, 2] {
            if let Err(e) = t.settle(sub, &want, Duration::from_secs(5)).await {
                failures.push(format!("after the table was made again: {e}"));
            }
        }
    }
    // Writes to the new table arrive live.
    da.table("items")
        .insert(json!({"id": "n2", "v": 11, "inc": 2}))
        .await
        .unwrap();
    let want = oracle(&dbb, "items", |_| true).await;
    for t in [&mut t3, &mut back] {
        for sub in [1, 2] {
            if let Err(e) = t.settle(sub, &want, Duration::from_secs(5)).await {
                failures.push(format!("a write to the new table: {e}"));
            }
            for row in t.rows(sub).values() {
                if row["inc"] != 2 {
                    failures.push(format!(
                        "{} sub {sub}: a row of the dropped table: {row}",
                        t.name
                    ));
                }
            }
        }
    }

    // Drop and make again at once, under a live subscription on B.
    let mut t4 = Tab::open(&p.b, "frank", "t4@B").await;
    t4.sub(1, "items", json!({})).await;
    t4.sub(2, "items_shared", json!({})).await;
    t4.pump(Duration::from_millis(300)).await;
    da.drop_table("items").await.unwrap();
    da.create_table("items").await.unwrap();
    da.table("items")
        .insert(json!({"id": "r1", "v": 20, "inc": 3}))
        .await
        .unwrap();
    t4.pump(Duration::from_millis(1500)).await;
    for sub in [1, 2] {
        if t4.c.results.ended(sub).is_some() {
            continue;
        }
        let rows = t4.rows(sub);
        if rows.values().any(|r| r["inc"] != 3) {
            failures.push(format!(
                "t4 sub {sub}: still open after a drop + create, holding rows of the old table: {rows:?}"
            ));
        }
    }
    t4.ends.clear();
    failures.extend(report(&[&t1, &t2, &t3, &back, &t4]));
    assert_clean("DDL across servers", &failures);
}

// ---------------------------------------------------------------------------------------
// 6. B loses its replication connection mid-stream: its pages stay exact.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_losing_its_replication_connection_keeps_its_pages_exact() {
    let Some(p) = pair(
        "b_losing_its_replication_connection_keeps_its_pages_exact",
        limits(),
    )
    .await
    else {
        return;
    };
    let seed = seed();
    let clock = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut t = Tab::open(&p.b, "alice", "alice@B").await;
    t.sub(1, "items", json!({})).await;
    t.sub(2, "items_shared", json!({})).await;
    t.sub(3, "mylogs", json!({})).await;
    t.pump(Duration::from_millis(200)).await;
    let writers = vec![
        tokio::spawn(item_writer(
            p.a.db.clone(),
            keys("a", 10),
            clock.clone(),
            stop.clone(),
            seed,
        )),
        tokio::spawn(log_writer(
            p.a.db.clone(),
            keys("l", 10),
            vec!["alice", "bob"],
            clock.clone(),
            stop.clone(),
            seed.wrapping_mul(3),
        )),
    ];
    let admin = p.pg.connect().await.unwrap();
    t.pump(Duration::from_millis(700)).await;
    for _ in 0..2 {
        let pid = walsender_pid(&admin, &p.b.db).await;
        admin
            .query("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        // New subscriptions while B recovers.
        t.pump(Duration::from_millis(900)).await;
    }
    let mut late = Tab::open(&p.b, "alice", "late@B").await;
    late.sub(1, "items", json!({})).await;
    late.sub(2, "items_shared", json!({})).await;
    t.pump(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    p.a.db.sync().await.unwrap();
    let items = oracle(&p.b.db, "items", |_| true).await;
    let mine = oracle(&p.b.db, "logs", |d| d["owner"] == "alice").await;
    let mut failures = Vec::new();
    for (sub, want) in [(1, &items), (2, &items), (3, &mine)] {
        if let Err(e) = t.settle(sub, want, Duration::from_secs(10)).await {
            failures.push(e);
        }
    }
    for sub in [1, 2] {
        if let Err(e) = late.settle(sub, &items, Duration::from_secs(10)).await {
            failures.push(e);
        }
    }
    failures.extend(report(&[&t, &late]));
    eprintln!(
        "B stats after: {}; resets {:?}",
        pg_stats(&p.b.db).await,
        t.resets
    );
    assert_clean("B's pages across a lost replication connection", &failures);
}

// ---------------------------------------------------------------------------------------
// 7. A page on B that does not read, while A writes heavily to a shared result.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_page_on_b_never_slows_a_and_resyncs_exactly() {
    let l = Limits {
        feed_queue: 64,
        write_timeout: Duration::from_secs(3),
        ..limits()
    };
    let Some(p) = pair("a_stuck_page_on_b_never_slows_a_and_resyncs_exactly", l).await else {
        return;
    };
    let mut stuck = Tab::open(&p.b, "alice", "stuck@B").await;
    stuck.sub(1, "items_shared", json!({})).await;
    stuck.sub(2, "items", json!({})).await;
    let mut fast = Tab::open(&p.b, "bob", "fast@B").await;
    fast.sub(1, "items_shared", json!({})).await;
    fast.sub(2, "items", json!({})).await;
    stuck.pump(Duration::from_millis(200)).await;
    fast.pump(Duration::from_millis(200)).await;
    let big = "y".repeat(1500);
    let began = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut v = 1u64;
    for round in 0..40 {
        let docs: Vec<Value> = (0..25)
            .map(|i| {
                v += 1;
                json!({"id": format!("k{}", (round * 25 + i) % 300), "v": v, "big": big})
            })
            .collect();
        let t0 = Instant::now();
        p.a.db
            .table("items")
            .insert_many(docs)
            .conflict(Conflict::Replace)
            .await
            .unwrap();
        slowest = slowest.max(t0.elapsed());
        fast.pump(Duration::from_millis(5)).await;
    }
    let wrote = began.elapsed();
    p.a.db.sync().await.unwrap();
    let want = oracle(&p.b.db, "items", |_| true).await;
    let mut failures = Vec::new();
    for sub in [1, 2] {
        if let Err(e) = fast.settle(sub, &want, Duration::from_secs(10)).await {
            failures.push(e);
        }
    }
    // The stuck page reads again; if it was cut off, it comes back (to A) with its cursors.
    let mut closed = false;
    for sub in [1, 2] {
        if closed {
            break;
        }
        if let Err(e) = stuck.settle(sub, &want, Duration::from_secs(10)).await {
            if e.contains("closed") {
                closed = true;
            } else {
                failures.push(e);
            }
        }
    }
    if closed {
        stuck.hop(&p.a).await;
        for sub in [1, 2] {
            if let Err(e) = stuck.settle(sub, &want, Duration::from_secs(10)).await {
                failures.push(format!("after coming back: {e}"));
            }
        }
    }
    if slowest > Duration::from_secs(3) {
        failures.push(format!(
            "a write of A waited {slowest:?} (a stuck page on B)"
        ));
    }
    failures.extend(report(&[&fast, &stuck]));
    eprintln!(
        "wrote in {wrote:?} (slowest {slowest:?}); stuck closed {closed}, resets {:?}",
        stuck.resets
    );
    assert_clean("a stuck page on B", &failures);
}

// ---------------------------------------------------------------------------------------
// 8. `Results` (the Rust client of the protocol): a reset cut before its last part.
// ---------------------------------------------------------------------------------------

/// The JavaScript client holds no cursor while a reset's `more` frames are still coming
/// ("its cursor holds only then (a reconnect in between starts afresh)"); a Rust client that
/// resumes from `Results::cursor` after a cut there would hold half a result and get only the
/// changes after it.
#[test]
fn results_give_no_cursor_for_a_reset_cut_before_its_last_part() {
    let mut r = remodel_web::Results::default();
    r.apply(&json!({"t": "reset", "sub": 1, "rows": [["a", {"id": "a"}]], "order": [], "cursor": "5-ffffffff", "more": true}));
    assert!(!r.is_whole(1));
    assert_eq!(
        r.cursor(1),
        None,
        "a cursor to resume from, with half of the result"
    );
}
