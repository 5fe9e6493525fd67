//! An adversarial attack on **resume at batch boundaries** (a shared result resumes a
//! reconnecting member from its kept batches only when the member's cursor is where a kept
//! batch ends; otherwise on a feed of its own, rejoining the result later) and on **cursors
//! carrying the database's identity** (`{position}.{identity hex}`).
//!
//! 1. `storm_*`: ~100 pages on shared and unshared publications while a writer commits
//!    (single writes, `insert_many` batches of large rows that come in several `change`
//!    parts, bursts). Pages drop their socket at random frames: in the middle of a reset's
//!    `more` frames, in the middle of a change's parts, right after a reset, anywhere; then
//!    resume with their last whole cursor, many times. Every frame is checked: a row never
//!    goes back to an older write (`v`), a change never re-sends a row at the value the page
//!    holds (a duplicate), no `end`/`error`; after the writer stops each page's result equals
//!    the query re-run. Then, with writes quiet, rule calls per probe write tell whether every
//!    resumed page is a member of its shared result again (a page stuck on a feed of its own
//!    runs the rule once more per change).
//! 2. `restart_*`: the server is restarted on the same database folder (same identity): pages
//!    resume exactly, without a reset; then on a fresh database at the same path (folder
//!    deleted, sequence numbers pushed past the old cursors): pages get a reset with the new
//!    rows, never a resume, never an old row.
//! 3. `forged_*`: cursors with the right identity far ahead / behind / inside a batch / with
//!    `n` = ffffffff, of another identity, without one, and malformed ones. Each must be a
//!    typed `bad_cursor` refusal, a reset with the right rows, or (a real position of this
//!    database) exactly the changes after it; the server stays responsive.

mod common;

use common::{handshake, App, Rng, Socket, User};
use futures::{SinkExt, StreamExt};
use remodel::{json, ChangeLogRetention, Config, Conflict, Database, Durability, Value};
use remodel_web::{Limits, Live, Web};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------
// The app: one table `items` {id, grp, v, pad}; `v` is the unique number of the write that
// made the row.

const ROWS: u64 = 40;
const GROUPS: u64 = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grp {
    grp: u64,
}

/// Rule calls of the shared publications' rules, and of the unshared ones'.
struct Counters {
    shared: AtomicU64,
    unshared: AtomicU64,
}

fn web(db: &Database, counters: Arc<Counters>, limits: Limits) -> Web<User> {
    let (c1, c2, c3, c4) = (
        counters.clone(),
        counters.clone(),
        counters.clone(),
        counters,
    );
    Web::<User>::builder(db.clone())
        .limits(limits)
        .window(Duration::from_millis(10))
        .publish("all", move |caller, _: remodel_web::NoParams| {
            let c = c1.clone();
            async move {
                Ok(
                    Live::new(caller.db.table("items").query().changes()).rule(move |_| {
                        c.unshared.fetch_add(1, Ordering::Relaxed);
                        true
                    }),
                )
            }
        })
        .publish("shared_all", move |caller, _: remodel_web::NoParams| {
            let c = c2.clone();
            async move {
                Ok(Live::new(caller.db.table("items").query().changes())
                    .rule(move |_| {
                        c.shared.fetch_add(1, Ordering::Relaxed);
                        true
                    })
                    .sort_by("v")
                    .shared())
            }
        })
        .publish("grp", move |caller, p: Grp| {
            let c = c3.clone();
            async move {
                Ok(
                    Live::new(caller.db.table("items").query().changes()).rule(move |row| {
                        c.unshared.fetch_add(1, Ordering::Relaxed);
                        row["grp"].as_u64() == Some(p.grp)
                    }),
                )
            }
        })
        .publish("shared_grp", move |caller, p: Grp| {
            let c = c4.clone();
            async move {
                Ok(Live::new(caller.db.table("items").query().changes())
                    .rule(move |row| {
                        c.shared.fetch_add(1, Ordering::Relaxed);
                        row["grp"].as_u64() == Some(p.grp)
                    })
                    .shared())
            }
        })
        .build()
}

fn limits() -> Limits {
    Limits {
        subscribes_per_second: 1000,
        ..Limits::default()
    }
}

/// A server on 127.0.0.1 that can be stopped (its task aborted).
struct Server {
    app: App,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(db: &Database, web: Web<User>) -> Server {
    let router = axum::Router::new().merge(web.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Server {
        app: App {
            addr,
            db: db.clone(),
            web,
        },
        task,
    }
}

impl Server {
    /// Closes every connection, stops serving, closes the database and drops every handle.
    async fn stop(self) {
        self.app.web.disconnect_all();
        self.task.abort();
        let _ = self.task.await;
        // Connections go away once their sockets closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.app.web.stats().connections > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.app.db.close().await.unwrap();
        drop(self.app);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn items(db: &Database) -> Vec<Value> {
    db.table("items").query().run().await.unwrap()
}

/// What subscription `name` with `params` shows of `rows`: key text → row.
fn oracle(rows: &[Value], name: &str, params: &Value) -> BTreeMap<String, Value> {
    rows.iter()
        .filter(|r| match name {
            "grp" | "shared_grp" => r["grp"] == params["grp"],
            _ => true,
        })
        .map(|r| (r["id"].to_string(), r.clone()))
        .collect()
}

static V: AtomicU64 = AtomicU64::new(1);

fn next_v() -> u64 {
    V.fetch_add(1, Ordering::Relaxed)
}

fn doc(id: u64, grp: u64, v: u64, big: bool) -> Value {
    let pad = if big { "p".repeat(300) } else { String::new() };
    json!({"id": format!("i{id:02}"), "grp": grp, "v": v, "pad": pad})
}

/// One random write: a single insert/update/delete, a batch of large rows (several change
/// parts), or a burst of small writes.
async fn write_one(db: &Database, rng: &mut Rng) {
    let t = db.table("items");
    match rng.below(10) {
        0..=3 => {
            let d = doc(rng.below(ROWS), rng.below(GROUPS), next_v(), false);
            t.insert(d).conflict(Conflict::Replace).await.unwrap();
        }
        4 | 5 => {
            let id = format!("i{:02}", rng.below(ROWS));
            let patch = json!({"v": next_v(), "grp": rng.below(GROUPS)});
            t.get(id.as_str()).update(patch).await.unwrap();
        }
        6 => {
            let id = format!("i{:02}", rng.below(ROWS));
            t.get(id.as_str()).delete().await.unwrap();
        }
        7 | 8 => {
            let n = 5 + rng.below(12);
            let docs: Vec<Value> = (0..n)
                .map(|_| doc(rng.below(ROWS), rng.below(GROUPS), next_v(), true))
                .collect();
            // Duplicate ids in one batch: keep the last of each.
            let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
            for d in docs {
                by_id.insert(d["id"].as_str().unwrap().to_string(), d);
            }
            t.insert_many(by_id.into_values())
                .conflict(Conflict::Replace)
                .await
                .unwrap();
        }
        _ => {
            for _ in 0..(5 + rng.below(20)) {
                let d = doc(
                    rng.below(ROWS),
                    rng.below(GROUPS),
                    next_v(),
                    rng.below(4) == 0,
                );
                t.insert(d).conflict(Conflict::Replace).await.unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A page: one connection (or none while away) and its subscriptions, rebuilt from frames,
// every row checked as it is applied.

struct Sub {
    name: String,
    params: Value,
    rows: BTreeMap<String, Value>,
    cursor: Option<String>,
    partial_reset: Option<(Vec<Value>, Option<String>)>,
    partial_change: Vec<Value>,
    /// The newest `v` ever applied for each key.
    newest: HashMap<String, u64>,
    resets: usize,
    changes: usize,
    /// Rows of every frame received since the last connect (for "never an old row").
    seen_v: Vec<u64>,
}

struct Page {
    label: String,
    ws: Option<Socket>,
    subs: BTreeMap<u32, Sub>,
    faults: Vec<String>,
    drops: usize,
    resumes: usize,
    /// Answers to subs that were not rows: (sub, frame).
    ends: Vec<(u32, Value)>,
    errors: Vec<Value>,
    /// Cut the socket at random frames (boundaries included).
    cutting: bool,
    rng: Rng,
    /// Pongs received.
    pongs: usize,
}

impl Page {
    fn new(label: String, seed: u64) -> Page {
        Page {
            label,
            ws: None,
            subs: BTreeMap::new(),
            faults: Vec::new(),
            drops: 0,
            resumes: 0,
            ends: Vec::new(),
            errors: Vec::new(),
            cutting: false,
            rng: Rng(seed | 1),
            pongs: 0,
        }
    }

    fn add(&mut self, id: u32, name: &str, params: Value) {
        self.subs.insert(
            id,
            Sub {
                name: name.into(),
                params,
                rows: BTreeMap::new(),
                cursor: None,
                partial_reset: None,
                partial_change: Vec::new(),
                newest: HashMap::new(),
                resets: 0,
                changes: 0,
                seen_v: Vec::new(),
            },
        );
    }

    async fn send(&mut self, v: Value) -> bool {
        match self.ws.as_mut() {
            Some(ws) => ws.send(Message::text(v.to_string())).await.is_ok(),
            None => false,
        }
    }

    async fn connect(&mut self, addr: SocketAddr) {
        let mut ws = handshake(addr, Some("u"), None).await.unwrap();
        let hello = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("hello within 10 s");
        match hello {
            Some(Ok(Message::Text(t))) => assert!(t.contains("hello"), "{t}"),
            other => panic!("{}: no hello: {other:?}", self.label),
        }
        self.ws = Some(ws);
        let ids: Vec<u32> = self.subs.keys().copied().collect();
        for id in ids {
            let s = self.subs.get_mut(&id).unwrap();
            s.seen_v.clear();
            let mut f = json!({"op": "sub", "id": id, "name": s.name, "params": s.params});
            if let Some(c) = &s.cursor {
                f["cursor"] = json!(c);
                self.resumes += 1;
            }
            self.send(f).await;
        }
    }

    fn cut(&mut self) {
        if let Some(ws) = self.ws.take() {
            if self.rng.below(2) == 0 {
                linger_zero(&ws);
            }
            drop(ws);
            self.drops += 1;
        }
        for s in self.subs.values_mut() {
            s.partial_reset = None;
            s.partial_change.clear();
        }
    }

    /// Reads one message within `wait` and applies its frames (cutting at random frames when
    /// `cutting`); false when nothing came or the socket closed.
    async fn step(&mut self, wait: Duration) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        let msg = match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return false,
            Ok(m) => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => return true,
            None | Some(Err(_)) => {
                self.cut();
                return false;
            }
        };
        let v: Value = serde_json::from_str(&text).expect("frames are JSON");
        let frames = if v["t"] == "batch" {
            v["frames"].as_array().cloned().expect("frames")
        } else {
            vec![v]
        };
        for f in &frames {
            let boundary = self.frame(f);
            if self.cutting {
                // Cut more often inside a reset's or a change's parts, and right after a
                // reset.
                let odds = match boundary {
                    Boundary::MidParts => 4,
                    Boundary::AfterReset => 6,
                    Boundary::Other => 60,
                };
                if self.rng.below(odds) == 0 {
                    self.cut();
                    return false;
                }
            }
        }
        true
    }

    fn frame(&mut self, v: &Value) -> Boundary {
        let t = v["t"].as_str().unwrap_or("");
        match t {
            "hello" | "result" => return Boundary::Other,
            "pong" => {
                self.pongs += 1;
                return Boundary::Other;
            }
            "error" => {
                self.errors.push(v.clone());
                return Boundary::Other;
            }
            _ => {}
        }
        let id = v["sub"].as_u64().expect("a frame of a subscription") as u32;
        let label = self.label.clone();
        let Some(s) = self.subs.get_mut(&id) else {
            self.faults
                .push(format!("{label}: frame of unknown sub {id}: {v}"));
            return Boundary::Other;
        };
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        for r in &rows {
            if let Some(n) = r[1]["v"].as_u64() {
                s.seen_v.push(n);
            }
        }
        let mut faults = Vec::new();
        let boundary = match t {
            "reset" => {
                s.partial_change.clear();
                s.partial_reset = Some((rows, v["cursor"].as_str().map(String::from)));
                if v["more"] == true {
                    Boundary::MidParts
                } else {
                    s.apply_reset(&label, &mut faults);
                    Boundary::AfterReset
                }
            }
            "more" => match s.partial_reset.as_mut() {
                Some((held, _)) => {
                    held.extend(rows);
                    if v["more"] == true {
                        Boundary::MidParts
                    } else {
                        s.apply_reset(&label, &mut faults);
                        Boundary::AfterReset
                    }
                }
                None => {
                    faults.push(format!("{label}: a `more` outside a reset: {v:.300}"));
                    Boundary::Other
                }
            },
            "change" => {
                if s.partial_reset.is_some() {
                    faults.push(format!("{label}: a change inside a reset: {v:.300}"));
                }
                s.partial_change.extend(rows);
                if v["more"] == true {
                    if v.get("cursor").is_some() {
                        faults.push(format!("{label}: a part with a cursor: {v:.300}"));
                    }
                    Boundary::MidParts
                } else {
                    let parts = std::mem::take(&mut s.partial_change);
                    s.changes += 1;
                    for row in &parts {
                        let key = row[0].to_string();
                        if row[1].is_null() {
                            s.rows.remove(&key);
                            continue;
                        }
                        s.check(&label, row, true, &mut faults);
                        s.rows.insert(key, row[1].clone());
                    }
                    match v["cursor"].as_str() {
                        Some(c) => s.cursor = Some(c.to_string()),
                        None => faults.push(format!("{label}: a last change part with no cursor")),
                    }
                    Boundary::Other
                }
            }
            "end" => {
                s.rows.clear();
                self.ends.push((id, v.clone()));
                Boundary::Other
            }
            _ => {
                faults.push(format!("{label}: unknown frame {v:.300}"));
                Boundary::Other
            }
        };
        self.faults.extend(faults);
        boundary
    }

    fn matches(&self, rows: &[Value]) -> bool {
        self.ws.is_some()
            && self.subs.values().all(|s| {
                s.partial_reset.is_none()
                    && s.partial_change.is_empty()
                    && s.rows == oracle(rows, &s.name, &s.params)
            })
    }

    /// Reads until every subscription equals its query re-run; a fault after `wait`.
    async fn settle(&mut self, addr: SocketAddr, rows: &[Value], wait: Duration) {
        let deadline = Instant::now() + wait;
        while !self.matches(rows) {
            if Instant::now() > deadline {
                for (id, s) in &self.subs {
                    let want = oracle(rows, &s.name, &s.params);
                    if s.rows != want {
                        let missing: Vec<_> = want
                            .iter()
                            .filter(|(k, v)| s.rows.get(*k) != Some(v))
                            .map(|(k, v)| format!("{k}@v{}", v["v"]))
                            .collect();
                        let extra: Vec<_> = s
                            .rows
                            .iter()
                            .filter(|(k, v)| want.get(*k) != Some(v))
                            .map(|(k, v)| format!("{k}@v{}", v["v"]))
                            .collect();
                        self.faults.push(format!(
                            "{}: sub {id} {} {}: differs from the query re-run (resets {}, \
                             changes {}, cursor {:?}): want {:?}, held {:?}",
                            self.label,
                            s.name,
                            s.params,
                            s.resets,
                            s.changes,
                            s.cursor,
                            missing,
                            extra
                        ));
                    }
                }
                return;
            }
            if self.ws.is_none() {
                self.connect(addr).await;
            }
            self.step(Duration::from_millis(100)).await;
        }
    }
}

#[derive(Clone, Copy)]
enum Boundary {
    MidParts,
    AfterReset,
    Other,
}

impl Sub {
    fn apply_reset(&mut self, label: &str, faults: &mut Vec<String>) {
        let (rows, cursor) = self.partial_reset.take().unwrap();
        self.resets += 1;
        self.rows.clear();
        for row in &rows {
            self.check(label, row, false, faults);
            self.rows.insert(row[0].to_string(), row[1].clone());
        }
        self.cursor = cursor;
    }

    fn check(&mut self, label: &str, row: &Value, change: bool, faults: &mut Vec<String>) {
        let (key, doc) = (row[0].to_string(), &row[1]);
        if let ("grp" | "shared_grp", Some(g)) = (self.name.as_str(), self.params["grp"].as_u64()) {
            if doc["grp"].as_u64() != Some(g) {
                faults.push(format!(
                    "{label}: {} {}: row of another grp {doc:.200}",
                    self.name, self.params
                ));
            }
        }
        let v = doc["v"].as_u64().unwrap_or(0);
        let newest = self.newest.entry(key.clone()).or_insert(0);
        if v < *newest {
            faults.push(format!(
                "{label}: sub {} {}: row {key} went back from v{} to v{v} (in a {})",
                self.name,
                self.params,
                *newest,
                if change { "change" } else { "reset" }
            ));
        }
        *newest = (*newest).max(v);
        if change {
            if let Some(held) = self.rows.get(&key) {
                if held["v"].as_u64().unwrap_or(0) >= v {
                    faults.push(format!(
                        "{label}: sub {} {}: row {key} v{v} sent again while held at v{} \
                         (a duplicate change)",
                        self.name, self.params, held["v"]
                    ));
                }
            }
        }
    }
}

fn linger_zero(ws: &Socket) {
    use std::os::fd::AsRawFd;
    if let tokio_tungstenite::MaybeTlsStream::Plain(s) = ws.get_ref() {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a `linger` option of its size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

fn faults_of(pages: &[Page]) -> Vec<String> {
    let mut out = Vec::new();
    for p in pages {
        out.extend(p.faults.iter().cloned());
        for (id, e) in &p.ends {
            out.push(format!("{}: sub {id} ended: {e}", p.label));
        }
        for e in &p.errors {
            out.push(format!("{}: error frame: {e}", p.label));
        }
    }
    out
}

fn assert_no_faults(pages: &[Page], what: &str) {
    let faults = faults_of(pages);
    assert!(
        faults.is_empty(),
        "{what}: {} faults:\n{}",
        faults.len(),
        faults
            .iter()
            .take(30)
            .map(|f| format!("{f:.600}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every page settles on `rows` (all at once).
async fn settle_all(pages: Vec<Page>, addr: SocketAddr, rows: Arc<Vec<Value>>) -> Vec<Page> {
    let tasks: Vec<_> = pages
        .into_iter()
        .map(|mut p| {
            let rows = rows.clone();
            tokio::spawn(async move {
                p.settle(addr, &rows, Duration::from_secs(20)).await;
                p
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn seed(db: &Database) {
    db.create_table("items").await.unwrap();
    let docs: Vec<Value> = (0..ROWS)
        .map(|i| doc(i, i % GROUPS, next_v(), i % 3 == 0))
        .collect();
    db.table("items").insert_many(docs).await.unwrap();
}

/// The pages of the storm: sub 1 on `shared_all`; sub 2 on one group, shared or not; sub 3
/// on `all` for a third of them.
fn pages(n: usize, seed: u64) -> Vec<Page> {
    (0..n)
        .map(|i| {
            let mut p = Page::new(format!("p{i}"), seed.wrapping_mul(1000) + i as u64);
            p.add(1, "shared_all", json!(null));
            let g = json!({"grp": i as u64 % GROUPS});
            p.add(2, if i % 2 == 0 { "shared_grp" } else { "grp" }, g);
            if i % 3 == 0 {
                p.add(3, "all", json!(null));
            }
            p
        })
        .collect()
}

/// Probe writes (one row of each group updated, one write each): returns the shared rules'
/// calls the second round of them made, once every page has it.
/// Quiet probe writes, one row of each group at a time (each commit read alone), in rounds:
/// how many times the shared rules ran in the last round. With `until`, rounds go on (at
/// most 8) until a round runs them at most that many times: a subscription on a feed of its
/// own rejoins its shared result when one of the result's batches ends where its last frame
/// did, which quiet single commits give.
async fn probe_calls(
    pages: Vec<Page>,
    app: &App,
    counters: &Counters,
    until: Option<u64>,
) -> (Vec<Page>, u64, usize) {
    let mut pages = pages;
    let mut calls = 0;
    let mut rounds = 0;
    for round in 0..8 {
        rounds = round + 1;
        for g in 0..GROUPS {
            app.db
                .table("items")
                .insert(doc(g, g, next_v(), false))
                .conflict(Conflict::Replace)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rows = Arc::new(items(&app.db).await);
        pages = settle_all(pages, app.addr, rows).await;
        // The results' tasks read what their members have.
        tokio::time::sleep(Duration::from_millis(300)).await;
        calls = counters.shared.swap(0, Ordering::Relaxed);
        let done = match until {
            None => round == 1,
            Some(target) => round >= 1 && calls <= target,
        };
        if done {
            break;
        }
    }
    (pages, calls, rounds)
}

async fn storm(n_pages: usize, secs: u64, seed_n: u64) {
    let db = Config::temporary()
        .change_log(ChangeLogRetention::default())
        .open()
        .await
        .unwrap();
    seed(&db).await;
    let counters = Arc::new(Counters {
        shared: AtomicU64::new(0),
        unshared: AtomicU64::new(0),
    });
    let server = serve(&db, web(&db, counters.clone(), limits())).await;
    let addr = server.app.addr;
    let mut ps = pages(n_pages, seed_n);
    for p in &mut ps {
        p.connect(addr).await;
    }
    let rows = Arc::new(items(&db).await);
    let ps = settle_all(ps, addr, rows).await;
    assert_no_faults(&ps, "initial results");
    // Calibration: every page joined its shared results with their rows (members).
    let (ps, calls_members, _) = probe_calls(ps, &server.app, &counters, None).await;
    assert!(calls_members > 0, "the shared rules ran");
    assert_eq!(server.app.web.stats().shared_results, 1 + GROUPS as usize);

    // The storm.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed_n * 7919 + 1);
            let mut n = 0u64;
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                write_one(&db, &mut rng).await;
                slowest = slowest.max(t.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(rng.below(8))).await;
            }
            (n, slowest)
        })
    };
    let tasks: Vec<_> = ps
        .into_iter()
        .map(|mut p| {
            let stop = stop.clone();
            tokio::spawn(async move {
                p.cutting = true;
                while !stop.load(Ordering::Relaxed) {
                    if p.ws.is_none() {
                        let away = p.rng.below(60);
                        tokio::time::sleep(Duration::from_millis(away)).await;
                        p.connect(addr).await;
                    }
                    p.step(Duration::from_millis(50)).await;
                }
                p.cutting = false;
                p
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (writes, slowest) = writer.await.unwrap();
    let mut ps = Vec::new();
    for t in tasks {
        ps.push(t.await.unwrap());
    }
    let rows = Arc::new(items(&db).await);
    let ps = settle_all(ps, addr, rows).await;
    let drops: usize = ps.iter().map(|p| p.drops).sum();
    let resumes: usize = ps.iter().map(|p| p.resumes).sum();
    let resets: usize = ps
        .iter()
        .flat_map(|p| p.subs.values())
        .map(|s| s.resets)
        .sum();
    eprintln!(
        "storm: {n_pages} pages, {writes} writes (slowest {slowest:?}), {drops} drops, \
         {resumes} resumes, {resets} resets"
    );
    assert!(drops > n_pages, "pages dropped often ({drops})");
    assert!(resumes > n_pages, "pages resumed often ({resumes})");

    // Quiet: every resumed page is a member of its shared results again.
    let (ps, calls_after, rounds) =
        probe_calls(ps, &server.app, &counters, Some(calls_members)).await;
    eprintln!(
        "probe rounds: {calls_members} shared rule calls with members only, {calls_after} \
         after the storm ({rounds} rounds)"
    );
    assert_no_faults(&ps, "storm (and the probes after it)");
    assert!(
        calls_after <= calls_members,
        "after the storm, with writes quiet, a probe round ran the shared rules {calls_after} \
         times, against {calls_members} when every page was a member: about {} subscriptions \
         stayed on a feed of their own instead of rejoining their shared result",
        (calls_after - calls_members) / GROUPS
    );
    drop(ps);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_pages_cut_at_batch_boundaries_resume_exactly_and_rejoin() {
    storm(100, 6, 11).await;
}

// ---------------------------------------------------------------------------------------
// 2. Restarts on the same database folder, and on a fresh database at the same path.

fn folder(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "remodel-resume-boundaries-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn open_at(dir: &std::path::Path) -> Database {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Config::new(dir)
            .durability(Durability::Soft)
            .change_log(ChangeLogRetention::default())
            .open()
            .await
        {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reopen: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the folder could not be opened again: {e}"),
        }
    }
}

fn seq_of(cursor: &str) -> u64 {
    let pos = cursor.split('.').next().unwrap();
    u64::from_str_radix(pos.split('-').next().unwrap(), 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_same_folder_resumes_and_fresh_folder_resets() {
    let dir = folder("restart");
    let counters = Arc::new(Counters {
        shared: AtomicU64::new(0),
        unshared: AtomicU64::new(0),
    });
    let db = open_at(&dir).await;
    seed(&db).await;
    let identity = db.identity();
    let server = serve(&db, web(&db, counters.clone(), limits())).await;
    drop(db);
    let mut ps = pages(24, 5);
    for p in &mut ps {
        p.connect(server.app.addr).await;
    }
    let mut rng = Rng(99);
    for _ in 0..40 {
        write_one(&server.app.db, &mut rng).await;
    }
    let rows = Arc::new(items(&server.app.db).await);
    let mut ps = settle_all(ps, server.app.addr, rows).await;
    assert_no_faults(&ps, "before the restart");
    // The pages go; writes go on while they are away; the server stops.
    for p in &mut ps {
        p.cut();
    }
    for _ in 0..30 {
        write_one(&server.app.db, &mut rng).await;
    }
    server.stop().await;

    // The same folder: the same identity, the change log kept.
    let db = open_at(&dir).await;
    assert_eq!(db.identity(), identity, "the folder keeps its identity");
    let server = serve(&db, web(&db, counters.clone(), limits())).await;
    drop(db);
    for _ in 0..20 {
        write_one(&server.app.db, &mut rng).await;
    }
    let resets_before: Vec<usize> = ps
        .iter()
        .flat_map(|p| p.subs.values().map(|s| s.resets))
        .collect();
    let rows = Arc::new(items(&server.app.db).await);
    let mut ps = settle_all(ps, server.app.addr, rows).await;
    assert_no_faults(&ps, "after a restart on the same folder");
    let resets_after: Vec<usize> = ps
        .iter()
        .flat_map(|p| p.subs.values().map(|s| s.resets))
        .collect();
    let reset_subs: Vec<String> = ps
        .iter()
        .flat_map(|p| {
            p.subs
                .iter()
                .map(move |(id, s)| (p.label.clone(), *id, s.name.clone()))
        })
        .zip(resets_before.iter().zip(&resets_after))
        .filter(|(_, (b, a))| a > b)
        .map(|((l, id, n), _)| format!("{l}/{id}/{n}"))
        .collect();
    assert!(
        reset_subs.is_empty(),
        "after a restart on the same folder, {} subscriptions got a reset instead of resuming \
         from their (unexpired) cursor: {:?}",
        reset_subs.len(),
        &reset_subs[..reset_subs.len().min(10)]
    );
    let old_seq = ps
        .iter()
        .flat_map(|p| p.subs.values())
        .filter_map(|s| s.cursor.as_deref().map(seq_of))
        .max()
        .unwrap();
    let old_max_v = V.load(Ordering::Relaxed);
    for p in &mut ps {
        p.cut();
    }
    server.stop().await;

    // A fresh database at the same path: another identity; its positions pushed past the
    // old cursors, so that only the identity tells them apart.
    std::fs::remove_dir_all(&dir).unwrap();
    let db = open_at(&dir).await;
    assert_ne!(
        db.identity(),
        identity,
        "a database made again has another identity"
    );
    let fresh = db.identity();
    db.create_table("items").await.unwrap();
    // Opened again: its positions go on from its reserved block, as the old one's did.
    db.close().await.unwrap();
    drop(db);
    let db = open_at(&dir).await;
    assert_eq!(db.identity(), fresh);
    let t = db.table("items");
    let mut n = 0;
    while seq_of(&db.position().to_string()) <= old_seq + 10 {
        t.insert(json!({"id": "filler", "grp": 99, "v": next_v(), "pad": ""}))
            .conflict(Conflict::Replace)
            .await
            .unwrap();
        n += 1;
        assert!(
            n < 5_000,
            "old cursors at {old_seq:x}, the fresh database at {}",
            db.position()
        );
    }
    t.get("filler").delete().await.unwrap();
    for i in 0..(ROWS / 2) {
        t.insert(doc(i, i % GROUPS, next_v(), false)).await.unwrap();
    }
    let server = serve(&db, web(&db, counters, limits())).await;
    drop(db);
    let resets_before: Vec<usize> = ps
        .iter()
        .flat_map(|p| p.subs.values().map(|s| s.resets))
        .collect();
    // Fresh `newest` trackers: the new rows are newer writes anyway.
    let rows = Arc::new(items(&server.app.db).await);
    let ps = settle_all(ps, server.app.addr, rows).await;
    let mut faults = faults_of(&ps);
    for (p, (i, s)) in ps
        .iter()
        .flat_map(|p| p.subs.values().map(move |s| (p, s)))
        .enumerate()
        .map(|(i, (p, s))| (p, (i, s)))
    {
        if s.resets <= resets_before[i] {
            faults.push(format!(
                "{}: {} resumed on a fresh database instead of a reset",
                p.label, s.name
            ));
        }
        if let Some(old) = s.seen_v.iter().find(|v| **v < old_max_v) {
            faults.push(format!(
                "{}: {} was sent a row of the deleted database (v{old})",
                p.label, s.name
            ));
        }
    }
    assert!(
        faults.is_empty(),
        "fresh database at the same path: {} faults:\n{}",
        faults.len(),
        faults
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// 3. Forged cursors.

/// A connection for one forged `sub`: the frames it gets until `done` says so.
async fn raw(addr: SocketAddr) -> Socket {
    let mut ws = handshake(addr, Some("u"), None).await.unwrap();
    let hello = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(matches!(hello, Some(Ok(Message::Text(_)))));
    ws
}

/// The next frames of `ws` (batches opened), for `wait` at most after the last.
async fn frames_for(ws: &mut Socket, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(wait, ws.next()).await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["t"] == "batch" {
                out.extend(v["frames"].as_array().unwrap().iter().cloned());
            } else {
                out.push(v);
            }
        }
    }
    out
}

/// What a subscription's frames amount to: a reset's rows (whole), the changes' rows.
#[derive(Debug, Default)]
struct Outcome {
    reset: Option<BTreeMap<String, Value>>,
    /// Rows the changes set or removed, in order.
    changed: Vec<(String, Value)>,
    end: Option<Value>,
    other: Vec<Value>,
}

fn outcome(frames: &[Value], sub: u32) -> Outcome {
    let mut o = Outcome::default();
    for f in frames {
        if f["sub"] != sub {
            if f["t"] != "pong" {
                o.other.push(f.clone());
            }
            continue;
        }
        let rows = f["rows"].as_array().cloned().unwrap_or_default();
        match f["t"].as_str().unwrap() {
            "reset" => {
                let mut r = BTreeMap::new();
                for row in rows {
                    r.insert(row[0].to_string(), row[1].clone());
                }
                o.reset = Some(r);
                o.changed.clear();
            }
            "more" => {
                for row in rows {
                    o.reset
                        .as_mut()
                        .unwrap()
                        .insert(row[0].to_string(), row[1].clone());
                }
            }
            "change" => {
                for row in rows {
                    o.changed.push((row[0].to_string(), row[1].clone()));
                }
            }
            "end" => o.end = Some(f["error"].clone()),
            _ => o.other.push(f.clone()),
        }
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cursors_are_refused_reset_or_resumed_exactly() {
    let db = Config::temporary()
        .change_log(ChangeLogRetention::default())
        .open()
        .await
        .unwrap();
    seed(&db).await;
    let counters = Arc::new(Counters {
        shared: AtomicU64::new(0),
        unshared: AtomicU64::new(0),
    });
    let server = serve(&db, web(&db, counters, limits())).await;
    let addr = server.app.addr;
    let id = format!("{:x}", db.identity());
    // Members that keep the shared results running (and their batches kept).
    let mut keep = Vec::new();
    for name in ["shared_all", "all"] {
        let mut ws = raw(addr).await;
        ws.send(Message::text(
            json!({"op": "sub", "id": 1, "name": name, "params": null}).to_string(),
        ))
        .await
        .unwrap();
        let f = frames_for(&mut ws, Duration::from_millis(300)).await;
        assert_eq!(f[0]["t"], "reset", "{:?}", f);
        keep.push(ws);
    }
    // Where things stand, then one batch of five changes (one commit): each change's cursor
    // read from a feed of the test's own.
    let before = db.position();
    let mut watch = db
        .table("items")
        .query()
        .changes()
        .resume_from(before)
        .await
        .unwrap();
    let batch: Vec<Value> = (0..5).map(|i| doc(i, 0, next_v(), false)).collect();
    db.table("items")
        .insert_many(batch)
        .conflict(Conflict::Replace)
        .await
        .unwrap();
    let mut cursors = Vec::new();
    for _ in 0..5 {
        let c = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        cursors.push((c.cursor().unwrap(), c.new_val().unwrap()["id"].to_string()));
    }
    drop(watch);
    // The kept members read the batch (the shared result holds it as one batch).
    for ws in &mut keep {
        let f = frames_for(ws, Duration::from_millis(300)).await;
        assert!(!f.is_empty());
    }
    let last = cursors[4].0;
    let last_seq = seq_of(&last.to_string());
    let mid = cursors[2].0;
    let mid_seq = seq_of(&mid.to_string());
    let rows = items(&db).await;

    // Right identity, real positions: exactly the changes after them (a reset is allowed
    // too, with the right rows).
    let exact: Vec<(String, Vec<String>)> = vec![
        (
            format!("{before}.{id}"),
            cursors.iter().map(|c| c.1.clone()).collect(),
        ),
        (
            format!("{mid}.{id}"),
            cursors[3..].iter().map(|c| c.1.clone()).collect(),
        ),
        (
            format!("{mid_seq:x}-ffffffff.{id}"),
            cursors[3..].iter().map(|c| c.1.clone()).collect(),
        ),
        (
            format!("{}.{id}", cursors[0].0),
            cursors[1..].iter().map(|c| c.1.clone()).collect(),
        ),
        (format!("{last}.{id}"), vec![]),
        (format!("{last_seq:x}-fffffffe.{id}"), vec![]),
    ];
    // Cursors that must give a reset (or a `bad_cursor`).
    let other_id = format!("{:x}", db.identity() ^ 0x5a5a);
    let reset_or_refused: Vec<String> = vec![
        format!("ffffffffffff-0.{id}"),
        format!("ffffffffffffffff-ffffffff.{id}"),
        format!("{:x}-0.{id}", last_seq + 1),
        format!("{:x}-ffffffff.{id}", last_seq + 1000),
        format!("0-0.{id}"),
        format!("{mid}.{other_id}"),
        format!("{before}.{other_id}"),
        format!("{mid}"),
        format!("{before}"),
        format!("{mid}.0"),
    ];
    let refused: Vec<String> = vec![
        String::new(),
        ".".into(),
        format!(".{id}"),
        format!("{mid}."),
        format!("{mid}.xyz"),
        format!("{mid}.{id}.{id}"),
        format!("{mid}..{id}"),
        format!("{mid}.1{}", "0".repeat(16)),
        format!("-0.{id}"),
        format!("{mid_seq:x}-.{id}"),
        format!("{mid_seq:x}-100000000.{id}"),
        format!("{mid_seq:x}-0-0.{id}"),
        format!("zz-0.{id}"),
        format!("{mid_seq:x}.{id}"),
        format!("{}-0.{id}", "1".repeat(17)),
        format!("{mid} .{id}"),
        format!("{mid}.-{id}"),
        "\u{0}".into(),
        "é-é.é".into(),
    ];
    let mut faults = Vec::new();
    let publications = ["all", "shared_all", "shared_grp"];
    let mut cases: Vec<(String, &str, Option<Vec<String>>)> = Vec::new();
    for (c, want) in &exact {
        cases.push((c.clone(), "exact", Some(want.clone())));
    }
    for c in &reset_or_refused {
        cases.push((c.clone(), "reset", None));
    }
    for c in &refused {
        cases.push((c.clone(), "refused", None));
    }
    // An old position of this database (the seed's first writes): the changes since, each
    // row at its value now (or a reset).
    cases.push((format!("1-ffffffff.{id}"), "behind", None));
    // Non-canonical spellings of this identity: resumed, or refused.
    cases.push((
        format!("{:x}-ffffffff.{}", last_seq, id.to_uppercase()),
        "exact_or_refused",
        Some(vec![]),
    ));
    cases.push((format!("{last}.{id}0"), "reset", None));
    let mut ws = raw(addr).await;
    let mut next_id = 10u32;
    for name in publications {
        let params = if name == "shared_grp" {
            json!({"grp": 0})
        } else {
            json!(null)
        };
        let mut asked = Vec::new();
        for (cursor, expect, want) in &cases {
            let sub = next_id;
            next_id += 1;
            ws.send(Message::text(
                json!({"op": "sub", "id": sub, "name": name, "params": params, "cursor": cursor})
                    .to_string(),
            ))
            .await
            .unwrap();
            asked.push((sub, cursor, expect, want));
        }
        ws.send(Message::text(r#"{"op":"ping"}"#)).await.unwrap();
        let frames = frames_for(&mut ws, Duration::from_millis(400)).await;
        if !frames.iter().any(|f| f["t"] == "pong") {
            faults.push(format!("{name}: no pong"));
        }
        for (sub, cursor, expect, want) in asked {
            let mut o = outcome(&frames, sub);
            o.other.clear();
            faults.extend(check(&rows, cursor, expect, want.as_ref(), &o, name));
            ws.send(Message::text(json!({"op": "unsub", "id": sub}).to_string()))
                .await
                .unwrap();
        }
        let stray: Vec<&Value> = frames
            .iter()
            .filter(|f| f["t"] == "error" || (f["sub"].is_null() && f["t"] != "pong"))
            .collect();
        if !stray.is_empty() {
            faults.push(format!("{name}: frames of no subscription: {stray:?}"));
        }
    }
    // Cursors that are not strings: a typed error, and the connection goes on.
    for bad in [json!(5), json!({"c": 1}), json!(["a"]), json!(true)] {
        ws.send(Message::text(
            json!({"op": "sub", "id": 1, "name": "all", "params": null, "cursor": bad}).to_string(),
        ))
        .await
        .unwrap();
        ws.send(Message::text(r#"{"op":"ping"}"#)).await.unwrap();
        let frames = frames_for(&mut ws, Duration::from_millis(250)).await;
        if !frames.iter().any(|f| f["t"] == "error" || f["t"] == "end") {
            faults.push(format!("cursor {bad}: no refusal: {frames:?}"));
        }
        if frames
            .iter()
            .any(|f| f["t"] == "reset" || f["t"] == "change")
        {
            faults.push(format!("cursor {bad}: rows: {frames:?}"));
        }
        if !frames.iter().any(|f| f["t"] == "pong") {
            faults.push(format!("cursor {bad}: no pong (the connection closed?)"));
        }
    }
    // A write after all of it reaches a fresh subscription: the server is whole.
    let mut ws2 = raw(addr).await;
    ws2.send(Message::text(
        json!({"op": "sub", "id": 1, "name": "shared_all", "params": null}).to_string(),
    ))
    .await
    .unwrap();
    let _ = frames_for(&mut ws2, Duration::from_millis(200)).await;
    db.table("items")
        .insert(doc(39, 1, 4_000_000_000, false))
        .conflict(Conflict::Replace)
        .await
        .unwrap();
    let f = frames_for(&mut ws2, Duration::from_millis(500)).await;
    if !f.iter().any(|f| f.to_string().contains("4000000000")) {
        faults.push(format!(
            "a write after the forged cursors did not arrive: {f:?}"
        ));
    }
    assert!(
        faults.is_empty(),
        "{} faults:\n{}",
        faults.len(),
        faults
            .iter()
            .map(|f| format!("{f:.500}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(keep);
    server.stop().await;
}

/// What the frames of a subscription asked for with a forged `cursor` must be (see the test).
fn check(
    rows: &[Value],
    cursor: &str,
    expect: &str,
    want: Option<&Vec<String>>,
    o: &Outcome,
    name: &str,
) -> Vec<String> {
    let mut faults = Vec::new();
    let what = format!("{name} cursor {cursor:?} ({expect})");
    if !o.other.is_empty() {
        faults.push(format!("{what}: other frames {:?}", o.other));
    }
    let params = if name == "shared_grp" {
        json!({"grp": 0})
    } else {
        json!(null)
    };
    let now = oracle(rows, name, &params);
    if let Some(end) = &o.end {
        if end["code"] != "bad_cursor" || expect == "exact" {
            faults.push(format!("{what}: ended {end}"));
        }
        return faults;
    }
    if let Some(reset) = &o.reset {
        if expect == "refused" {
            faults.push(format!("{what}: a reset for a malformed cursor"));
        }
        if reset != &now {
            faults.push(format!(
                "{what}: a reset of other rows: {} rows, want {}",
                reset.len(),
                now.len()
            ));
        }
        return faults;
    }
    match want {
        None if expect == "behind" => {
            for (k, v) in &o.changed {
                if (now.contains_key(k) || !v.is_null()) && now.get(k) != Some(v) {
                    faults.push(format!(
                        "{what}: change {k} = {v:.200}, now {:?}",
                        now.get(k)
                    ));
                }
            }
            let got: BTreeMap<&String, &Value> = o.changed.iter().map(|(k, v)| (k, v)).collect();
            if got.len() != now.len() {
                faults.push(format!(
                    "{what}: {} rows changed, {} rows now",
                    got.len(),
                    now.len()
                ));
            }
        }
        Some(want) if expect.starts_with("exact") => {
            let mut got: Vec<String> = o.changed.iter().map(|(k, _)| k.clone()).collect();
            got.sort();
            got.dedup();
            let mut want: Vec<String> = want
                .iter()
                .filter(|k| name != "shared_grp" || now.contains_key(*k))
                .cloned()
                .collect();
            want.sort();
            if got != want {
                faults.push(format!(
                    "{what}: resumed with changes of {got:?}, want exactly {want:?}"
                ));
            }
            for (k, v) in &o.changed {
                if now.get(k) != Some(v) {
                    faults.push(format!(
                        "{what}: change {k} = {v:.200}, now {:?}",
                        now.get(k).map(|r| &r["v"])
                    ));
                }
            }
        }
        _ => faults.push(format!("{what}: neither a reset nor a refusal: {o:?}")),
    }
    faults
}
