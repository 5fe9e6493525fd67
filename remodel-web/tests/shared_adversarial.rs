//! An adversarial review of shared results ([`remodel_web::Live::shared`]): pages that come
//! and go at random, stop reading, reconnect all at once, lose their right to the result
//! mid-stream, or share a result whose rule panics or whose table is dropped. Each test
//! holds the pages to an oracle: the query re-run (through the publication's rules) after
//! a settle marker, and, for every row a page is sent, a version that never goes back (a
//! stale batch replayed, or one sent twice out of order, would set an older one).
//!
//! Two of them found bugs, since fixed: a member that reads but is held by its window was
//! restarted by large rows (the kept bytes counted every batch five times, and were a quarter
//! of a subscription's own feed), and pages that resumed on feeds of their own after a
//! server-wide reconnect never shared the result again.

mod common;

use common::{by_id, serve, App, Client, Member, Rng, User};
use remodel::{json, ChangeLogRetention, Database, Order, Value};
use remodel_web::{Limits, Live, Refusal, Web};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// The app under test: a board (a shared result without rules), the same unshared, a log
// read by those granted it (shared, a guard per caller), a publication whose rule, view or
// key panics on a row marked `boom`, and a shared top 3.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct How {
    how: String,
}

/// A database with the tables of the app (a change log of `retention` changes).
async fn database(retention: u64) -> Database {
    let retention = ChangeLogRetention {
        max_changes: Some(retention),
        max_age: None,
    };
    let tables = ["board", "logs", "grants"];
    common::database(retention, &tables, &[("board", "v"), ("logs", "owner")]).await
}

fn web(db: &Database, limits: Limits, window: Duration) -> Web<User> {
    Web::<User>::builder(db.clone())
        .limits(limits)
        .window(window)
        .publish("board", |caller, p: Value| async move {
            // Any parameters (they only tell results apart).
            let _ = p;
            let board = caller.db.table("board").query().changes();
            Ok(Live::new(board).sort_by("v").shared())
        })
        .publish("board_mine", |caller, _: Value| async move {
            let board = caller.db.table("board").query().changes();
            Ok(Live::new(board).sort_by("v"))
        })
        .publish("granted", |caller, p: Member| async move {
            let db = &caller.db;
            let me = caller.identity.0.clone();
            let grants = db.table("grants").get(me.as_str()).run().await?;
            if !grants.is_some_and(|g| g[p.member.as_str()] == true) {
                return Err(Refusal::forbidden("not granted"));
            }
            let member = p.member.clone();
            let logs = db.table("logs").get_all([p.member.as_str()]).index("owner");
            Ok(Live::new(logs.changes())
                .rule(move |row| row["owner"] == member.as_str())
                .view(|mut row| {
                    row.as_object_mut().map(|o| o.remove("secret"));
                    row
                })
                .sort_by("at")
                // Each caller's own grant: a guard of the subscription, not of the result.
                .guard(db.table("grants").get(me.as_str()).changes())
                .shared())
        })
        .publish("fragile", |caller, p: How| async move {
            let live = Live::new(caller.db.table("board").query().changes());
            let live = match p.how.as_str() {
                "rule" => live.rule(|row| {
                    assert!(row["boom"] != true, "a careless rule");
                    true
                }),
                "view" => live.view(|row| {
                    assert!(row["boom"] != true, "a careless view");
                    row
                }),
                _ => live.key_with(|row| {
                    assert!(row["boom"] != true, "a careless key");
                    Some(row["id"].clone())
                }),
            };
            Ok(live.shared())
        })
        .publish("top_board", |caller, _: Value| async move {
            let top = caller
                .db
                .table("board")
                .order_by(Order::index("v").desc())
                .limit(3);
            Ok(Live::new(top.changes()).sort_by_desc("v").shared())
        })
        .build()
}

async fn app(retention: u64, limits: Limits, window: Duration) -> App {
    let db = database(retention).await;
    let web = web(&db, limits, window);
    serve(&db, web).await
}

/// The board, read now.
async fn board(db: &Database) -> Vec<Value> {
    by_id(db.table("board").query().run().await.unwrap())
}

/// The board's forty first writes (rows padded with `pad`).
async fn seed_board(db: &Database, rng: &mut Rng, pad: &str) {
    for n in 0..40 {
        write_board(db, rng, n, pad).await;
    }
}

/// One random write to the board (40 rows): insert or replace, update, or delete; each
/// row written carries the write's number `v`, its version.
async fn write_board(db: &Database, rng: &mut Rng, v: u64, pad: &str) {
    let id = format!("b{:02}", rng.below(40));
    let t = db.table("board");
    match rng.below(5) {
        0 | 1 => {
            let doc = json!({"id": id, "v": v, "pad": pad});
            t.insert(doc)
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
        }
        2 | 3 => {
            t.get(id.as_str()).update(json!({"v": v})).await.unwrap();
        }
        _ => {
            t.get(id.as_str()).delete().await.unwrap();
        }
    }
}

/// Writes a marker row (the last write) and gives its key and the board with it.
async fn mark(db: &Database, n: u64) -> (Value, Vec<Value>) {
    let id = format!("marker{n}");
    db.table("board")
        .insert(json!({"id": id, "v": 1_000_000 + n}))
        .await
        .unwrap();
    (json!(id), board(db).await)
}

/// The feeds open on `db` now.
async fn open_feeds(db: &Database) -> u64 {
    let rows = db.stats().run().await.unwrap();
    let row = rows.iter().find(|r| r["type"] == "database").unwrap();
    row["feeds"].as_u64().unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Waits until `f` holds, for at most `wait`.
async fn eventually(wait: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + wait;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A page: a client that checks every row it is sent against the newest version it was sent
// of that row.

struct Page {
    c: Client,
    name: String,
    /// The newest version (`v`) each (subscription, key) was sent.
    versions: HashMap<(u32, String), u64>,
    /// Subscriptions whose last change frame said `more` (a change in parts).
    partial: HashMap<u32, bool>,
    /// Each subscription's answers (`reset` and `end` frames, their type and error), and
    /// how many of them came before it was last asked for.
    answers: HashMap<u32, Vec<Value>>,
    asked: HashMap<u32, usize>,
}

impl Page {
    async fn open(app: &App, user: &str, name: impl Into<String>) -> Page {
        Page {
            c: Client::connect(app, user).await,
            name: name.into(),
            versions: HashMap::new(),
            partial: HashMap::new(),
            answers: HashMap::new(),
            asked: HashMap::new(),
        }
    }

    /// Notes that subscription `id` is asked for now: its next answer is a new one.
    fn ask(&mut self, id: u32) {
        let n = self.answers.get(&id).map_or(0, Vec::len);
        self.asked.insert(id, n);
    }

    async fn sub(&mut self, id: u32, name: &str, params: Value) {
        self.ask(id);
        self.c.sub(id, name, params).await;
    }

    async fn resume(&mut self, id: u32, name: &str, params: Value, cursor: Option<String>) {
        self.ask(id);
        let mut f = json!({"op": "sub", "id": id, "name": name, "params": params});
        if let Some(cursor) = cursor {
            f["cursor"] = json!(cursor);
        }
        self.c.send(f).await;
    }

    async fn unsub(&mut self, id: u32) {
        self.c.send(json!({"op": "unsub", "id": id})).await;
    }

    /// The next frame within `wait` (applied, its rows checked), or `None`.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let v = tokio::time::timeout(wait, self.c.frame()).await.ok()??;
        self.check(&v);
        self.c.results.apply(&v);
        Some(v)
    }

    fn check(&mut self, v: &Value) {
        let t = v["t"].as_str().unwrap_or("");
        if let ("reset" | "end", Some(sub)) = (t, v["sub"].as_u64()) {
            let answer = json!({"t": t, "error": v["error"]});
            self.answers.entry(sub as u32).or_default().push(answer);
        }
        if !matches!(t, "reset" | "more" | "change") {
            return;
        }
        let sub = v["sub"].as_u64().unwrap() as u32;
        match t {
            "change" => self.partial.insert(sub, v["more"] == true),
            _ => self.partial.insert(sub, false),
        };
        for row in v["rows"].as_array().into_iter().flatten() {
            let Some(version) = row[1]["v"].as_u64() else {
                continue;
            };
            let newest = self.versions.entry((sub, row[0].to_string())).or_insert(0);
            assert!(
                version >= *newest,
                "{}: sub {sub}, row {}: version {version} after {}: an older batch came \
                 after a newer one: {:.400}",
                self.name,
                row[0],
                *newest,
                v.to_string()
            );
            *newest = version;
        }
    }

    /// Whether subscription `sub`'s result is whole (no `more` part to come).
    fn whole(&self, sub: u32) -> bool {
        self.c.results.is_whole(sub) && !self.partial.get(&sub).copied().unwrap_or(false)
    }

    /// Reads until `pred` holds for a frame; panics after `wait`.
    async fn until(&mut self, wait: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => panic!("{}: nothing matching within {wait:?}", self.name),
            }
        }
    }

    /// The answers subscription `sub` got since it was last asked for.
    fn answers_since_asked(&self, sub: u32) -> &[Value] {
        let all = self.answers.get(&sub).map_or(&[][..], Vec::as_slice);
        &all[self.asked.get(&sub).copied().unwrap_or(0).min(all.len())..]
    }

    /// Reads until subscription `sub` has its first answer since it was asked for: a whole
    /// reset, or an end (returned as `{"t", "error"}`).
    async fn joined(&mut self, sub: u32) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(first) = self.answers_since_asked(sub).first().cloned() {
                if first["t"] == "end" || self.whole(sub) {
                    return first;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next(left).await.is_none() {
                panic!("{}: sub {sub} was not answered within 10 s", self.name);
            }
        }
    }

    /// Reads until subscription `sub` gets an `end` (since it was asked for), and returns
    /// it (as `{"t", "error"}`); `check` sees every frame read meanwhile.
    async fn end_of(&mut self, sub: u32, wait: Duration, check: impl Fn(&Value)) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let answers = self.answers_since_asked(sub);
            if let Some(end) = answers.iter().find(|a| a["t"] == "end") {
                return end.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(v) = self.next(left).await else {
                panic!("{}: sub {sub} did not end within {wait:?}", self.name);
            };
            check(&v);
        }
    }

    /// Reads until subscription `sub` holds the marker row `marker`, whole; then it must hold
    /// exactly `want` (the marker was the last write).
    async fn settle(&mut self, sub: u32, marker: &Value, want: &[Value], wait: Duration) {
        let deadline = Instant::now() + wait;
        while !(self.c.results.contains(sub, marker) && self.whole(sub)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next(left).await;
            let Some(v) = v else {
                panic!(
                    "{}: sub {sub} never got the marker {marker} within {wait:?} (holds {} rows, \
                     ended: {:?})",
                    self.name,
                    self.c.docs(sub).len(),
                    self.c.results.ended(sub)
                )
            };
            assert!(
                !(v["t"] == "end" && v["sub"] == sub),
                "{}: sub {sub} ended: {v}",
                self.name
            );
        }
        let got = by_id(self.c.docs(sub));
        if got != want {
            let ids = |rows: &[Value]| -> Vec<String> {
                rows.iter()
                    .map(|r| format!("{}@{}", r["id"], r["v"]))
                    .collect()
            };
            panic!(
                "{}: sub {sub} at the marker holds {:?}, the query gives {:?}",
                self.name,
                ids(&got),
                ids(want)
            );
        }
    }

    /// Reads until subscription `sub` holds `want` (whole), for at most `wait`.
    async fn reaches(&mut self, sub: u32, want: &[Value], wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while !(by_id(self.c.docs(sub)) == want && self.whole(sub)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next(left).await.is_none() {
                return false;
            }
        }
        true
    }

    /// Reads what comes for `d`.
    async fn read_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            if self.next(left).await.is_none() {
                break;
            }
        }
    }

    /// Sends a ping and reads every frame until its pong: what was queued before it.
    async fn drain(&mut self) -> Vec<Value> {
        self.c.send(json!({"op": "ping"})).await;
        let mut got = Vec::new();
        loop {
            let v = self
                .next(Duration::from_secs(10))
                .await
                .expect("the connection is open");
            if v["t"] == "pong" {
                return got;
            }
            got.push(v);
        }
    }

    /// The same page on a new connection (its rows and cursors kept), as a client that
    /// reconnects.
    async fn reconnect(mut self, app: &App, user: &str) -> Page {
        let mut c = Client::connect(app, user).await;
        c.results = self.c.results.clone();
        // The old connection goes.
        self.c = c;
        self
    }

    /// A page on a new connection with the rows (and versions seen) of one that went.
    async fn back(
        app: &App,
        user: &str,
        name: String,
        results: remodel_web::Results,
        versions: HashMap<(u32, String), u64>,
    ) -> Page {
        let mut p = Page::open(app, user, name).await;
        p.c.results = results;
        p.versions = versions;
        p
    }
}

/// A writer of random board rows in the background, until stopped; `pause` holds it.
struct Writer {
    stop: Arc<AtomicBool>,
    pub pause: Arc<tokio::sync::RwLock<()>>,
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(db: &Database, seed: u64, first: u64, pad: String, every: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(tokio::sync::RwLock::new(()));
        let written = Arc::new(AtomicU64::new(first));
        let (db, s, p, w) = (db.clone(), stop.clone(), pause.clone(), written.clone());
        let task = tokio::spawn(async move {
            let mut rng = Rng(seed);
            while !s.load(Ordering::Relaxed) {
                {
                    let _w = p.read().await;
                    let v = w.fetch_add(1, Ordering::Relaxed);
                    write_board(&db, &mut rng, v, &pad).await;
                }
                if every.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(every).await;
                }
            }
        });
        Writer {
            stop,
            pause,
            written,
            task,
        }
    }

    /// Stops it; the number of the next write.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.written.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------
// 1. Churn: pages join and leave at random while a writer commits.

/// Twelve page slots, each connecting, subscribing (ids 1 to 3, sometimes two ids at once),
/// unsubscribing and resubscribing, dropping and resuming with their cursors at random,
/// while a writer inserts, updates and deletes board rows. Every few hundred milliseconds
/// the writer pauses, a marker is written, a page that stayed reaches it, and a page that
/// joins then gets a reset equal to the query. At the end every page still connected
/// holds exactly the query's rows at a final marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_joining_and_leaving_at_random_end_at_the_query() {
    let app = Arc::new(app(100_000, Limits::default(), Duration::from_millis(5)).await);
    let db = app.db.clone();
    let mut rng = Rng(0xC0FFEE);
    seed_board(&db, &mut rng, &"p".repeat(150)).await;
    let mut anchor = Page::open(&app, "janeway", "anchor").await;
    anchor.sub(1, "board", json!(null)).await;
    anchor.joined(1).await;
    // Some rows are large: resets and changes come in parts.
    let writer = Writer::start(&db, 42, 100, "q".repeat(1500), Duration::from_millis(1));
    let done = Arc::new(AtomicBool::new(false));
    let users = ["kirk", "spock", "uhura", "janeway"];
    let mut slots = Vec::new();
    for slot in 0..12u64 {
        let (app, done) = (app.clone(), done.clone());
        slots.push(tokio::spawn(async move {
            let mut rng = Rng(0x5EED ^ (slot * 7919));
            let user = users[slot as usize % 4];
            let mut page = Page::open(&app, user, format!("slot {slot}")).await;
            let mut subs: Vec<u32> = Vec::new();
            let mut round = 0;
            while !done.load(Ordering::Relaxed) || subs.is_empty() {
                round += 1;
                match rng.below(6) {
                    // Subscribe an id (a second one on the same result, at times).
                    0 | 1 if subs.len() < 2 => {
                        let id = (1..=3).find(|i| !subs.contains(i)).unwrap();
                        page.sub(id, "board", json!(null)).await;
                        let v = page.joined(id).await;
                        assert_eq!(v["t"], "reset", "{}: {v}", page.name);
                        subs.push(id);
                    }
                    // Unsubscribe, and at times take the id again at once.
                    2 if !subs.is_empty() => {
                        let id = subs.remove(rng.below(subs.len() as u64) as usize);
                        page.unsub(id).await;
                        if rng.below(2) == 0 {
                            page.sub(id, "board", json!(null)).await;
                            page.joined(id).await;
                            subs.push(id);
                        } else {
                            page.versions.retain(|(s, _), _| *s != id);
                        }
                    }
                    // Drop the connection and resume every subscription from its cursor.
                    3 if !subs.is_empty() => {
                        // (A page shows a reset once whole: it resumes from a whole one.)
                        for &id in &subs {
                            while !page.whole(id) {
                                page.next(Duration::from_secs(10)).await.expect("open");
                            }
                        }
                        page = page.reconnect(&app, user).await;
                        tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
                        for &id in &subs {
                            let cursor = page.c.cursor(id);
                            page.resume(id, "board", json!(null), cursor).await;
                        }
                    }
                    // Read for a while (or not at all: the page is slow).
                    _ => {
                        let d = Duration::from_millis(5 + rng.below(60));
                        page.read_for(d).await;
                    }
                }
                if round % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (page, subs)
        }));
    }
    // While they churn: pause the writer, write a marker, wait for the anchor to have it (the
    // result has read everything), and have a new page join: its reset is the query.
    let mut joiners = Vec::new();
    for k in 0..4u64 {
        anchor.read_for(Duration::from_millis(400)).await;
        let hold = writer.pause.write().await;
        let (marker, want) = mark(&db, k).await;
        anchor
            .settle(1, &marker, &want, Duration::from_secs(10))
            .await;
        let mut late = Page::open(&app, users[k as usize], format!("joiner {k}")).await;
        late.sub(1, "board", json!(null)).await;
        let v = late.joined(1).await;
        assert_eq!(v["t"], "reset", "{v}");
        assert_eq!(
            by_id(late.c.docs(1)),
            want,
            "joiner {k}: its reset is not the query"
        );
        drop(hold);
        joiners.push(late);
    }
    let next = writer.stop().await;
    done.store(true, Ordering::Relaxed);
    let mut pages = Vec::new();
    for s in slots {
        pages.push(s.await.unwrap());
    }
    let (marker, want) = mark(&db, next).await;
    anchor
        .settle(1, &marker, &want, Duration::from_secs(10))
        .await;
    for (page, subs) in pages.iter_mut() {
        for &id in subs.iter() {
            page.settle(id, &marker, &want, Duration::from_secs(10))
                .await;
        }
    }
    for late in joiners.iter_mut() {
        late.settle(1, &marker, &want, Duration::from_secs(10))
            .await;
    }
    // One result for every page.
    assert_eq!(app.web.stats().shared_results, 1);
    // Other parameters (`{}` is not `null`): another result, the same rows.
    let mut late = Page::open(&app, "uhura", "last joiner").await;
    late.sub(7, "board", json!({})).await;
    late.joined(7).await;
    assert_eq!(by_id(late.c.docs(7)), want);
    assert_eq!(app.web.stats().shared_results, 2);
    drop((pages, joiners, anchor, late));
    let web = app.web.clone();
    eventually(
        Duration::from_secs(5),
        "the last page gone stops the result",
        || web.stats().shared_results == 0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 2. A page that stops reading.

/// Sets the client's socket receive buffer: a small one makes a client that does not read
/// fill the server's buffers quickly (and one that reads crawl: set a large one again).
fn receive_buffer(c: &Client, size: libc::c_int) {
    use std::os::fd::AsRawFd;
    if let tokio_tungstenite::MaybeTlsStream::Plain(s) = c.ws.get_ref() {
        // SAFETY: a valid socket and a c_int option of its size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
    }
}

/// A page stops reading while hundreds of 40 KB rows go by: the pages that read get every
/// change meanwhile (they reach the final marker while it is still stuck, and the writer is
/// never slowed); once it reads again it gets the whole result (it fell behind) and ends at
/// the query's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_stops_reading_restarts_and_slows_no_other_page() {
    let app = app(100_000, Limits::default(), Duration::from_millis(20)).await;
    let db = app.db.clone();
    let pad = "x".repeat(40_000);
    for i in 0..20 {
        let doc = json!({"id": format!("b{i:02}"), "v": i, "pad": pad});
        db.table("board").insert(doc).await.unwrap();
    }
    let mut stuck = Page::open(&app, "kirk", "stuck").await;
    stuck.sub(1, "board", json!(null)).await;
    stuck.joined(1).await;
    receive_buffer(&stuck.c, 4096);
    let mut readers = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for r in 0..3 {
        let mut page = Page::open(&app, "spock", format!("reader {r}")).await;
        page.sub(1, "board", json!(null)).await;
        page.joined(1).await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut frames = 0;
            while !stop.load(Ordering::Relaxed) {
                if page.next(Duration::from_millis(20)).await.is_some() {
                    frames += 1;
                }
            }
            (page, frames)
        }));
    }
    let started = Instant::now();
    for n in 0..400u64 {
        let doc = json!({"id": format!("b{:02}", n % 20), "v": 100 + n, "pad": pad});
        db.table("board")
            .insert(doc)
            .conflict(remodel::Conflict::Replace)
            .await
            .unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "400 writes took {took:?}");
    stop.store(true, Ordering::Relaxed);
    let (marker, want) = mark(&db, 1).await;
    // The readers reach the marker while the stuck page still reads nothing.
    for r in readers {
        let (mut page, frames) = r.await.unwrap();
        assert!(
            frames > 10,
            "{}: {frames} frames while the writes went",
            page.name
        );
        page.settle(1, &marker, &want, Duration::from_secs(5)).await;
        // (Whether a reader was restarted meanwhile: see the next test.)
        eprintln!("{}: {} resets", page.name, page.c.results.resets(1));
    }
    // The stuck page reads again: the whole result, then the rows as they are.
    receive_buffer(&stuck.c, 4 << 20);
    stuck
        .settle(1, &marker, &want, Duration::from_secs(10))
        .await;
    assert!(
        stuck.c.results.resets(1) >= 2,
        "the stuck page fell behind 400 batches of 40 KB and got no reset"
    );
}

/// A page that keeps reading a shared result is not restarted by a steady stream of large
/// rows any more than by an unshared one: the same connection follows the same rows
/// shared (sub 1) and unshared (sub 2), with the default 50 ms window, while 10 KB rows are
/// updated every 2 ms (a member held by its window for 50 ms meanwhile must find every
/// batch since still kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_keeps_reading_is_not_restarted_by_large_rows() {
    let app = app(100_000, Limits::default(), Duration::from_millis(50)).await;
    let db = app.db.clone();
    let pad = "x".repeat(10_000);
    for i in 0..20 {
        let doc = json!({"id": format!("b{i:02}"), "v": i, "pad": pad});
        db.table("board").insert(doc).await.unwrap();
    }
    let mut page = Page::open(&app, "kirk", "reader").await;
    page.sub(1, "board", json!(null)).await;
    page.joined(1).await;
    page.sub(2, "board_mine", json!(null)).await;
    page.joined(2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let reader = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            page.next(Duration::from_millis(20)).await;
        }
        page
    });
    for n in 0..150u64 {
        let doc = json!({"id": format!("b{:02}", n % 20), "v": 100 + n, "pad": pad});
        db.table("board")
            .insert(doc)
            .conflict(remodel::Conflict::Replace)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut page = reader.await.unwrap();
    let (marker, want) = mark(&db, 1).await;
    page.settle(2, &marker, &want, Duration::from_secs(10))
        .await;
    page.settle(1, &marker, &want, Duration::from_secs(10))
        .await;
    let resets = (page.c.results.resets(1), page.c.results.resets(2));
    assert_eq!(
        resets,
        (1, 1),
        "(shared, unshared) resets of a page that kept reading"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Guards change mid-stream.

/// The common app's `shared_logs`: Kirk follows Spock's log (as his captain) and has just
/// been sent a change (his window is open, 200 ms). Kirk is demoted (Uhura is made
/// captain), then Spock writes: nothing written after the demotion reaches Kirk, who gets
/// `forbidden`. Uhura then joins the same result (Spock's log as another member sees it):
/// her reset holds the entry. Kirk is made captain again and Spock writes: Uhura never gets
/// that one. Meanwhile Spock's own page (another result) keeps getting every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_captain_gets_nothing_committed_after_the_demotion() {
    let app = common::start_with(Limits::default(), Duration::from_millis(200)).await;
    let db = app.db.clone();
    let mut spock = Page::open(&app, "spock", "spock").await;
    spock
        .sub(1, "shared_logs", json!({"member": "spock"}))
        .await;
    spock.joined(1).await;
    let mut kirks = Vec::new();
    for k in 0..3 {
        kirks.push(Page::open(&app, "kirk", format!("kirk {k}")).await);
    }
    let mut uhura = Page::open(&app, "uhura", "uhura").await;
    let captain = |who: &'static str| {
        let db = db.clone();
        async move {
            db.table("ships")
                .get("enterprise")
                .update(json!({"captain": who}))
                .await
                .unwrap();
        }
    };
    let log = |id: String, text: String| {
        let db = db.clone();
        async move {
            let doc = json!({"id": id, "owner": "spock", "text": text, "at": 1, "secret": "s"});
            db.table("logs").insert(doc).await.unwrap();
        }
    };
    for trial in 0..6u32 {
        let sub = trial + 1;
        for kirk in kirks.iter_mut() {
            kirk.sub(sub, "shared_logs", json!({"member": "spock"}))
                .await;
            let v = kirk.joined(sub).await;
            assert_eq!(v["t"], "reset", "trial {trial}: {v}");
        }
        log(format!("ok{trial}"), "routine".into()).await;
        for kirk in kirks.iter_mut() {
            kirk.until(Duration::from_secs(5), |v| {
                v["t"] == "change" && v["sub"] == sub
            })
            .await;
        }
        // Within Kirk's window: he is demoted, then Spock writes.
        captain("uhura").await;
        log(format!("u{trial}"), format!("for Uhura only {trial}")).await;
        for kirk in kirks.iter_mut() {
            loop {
                let v = kirk.next(Duration::from_secs(5)).await.expect("an end");
                assert!(
                    !v.to_string().contains("for Uhura only"),
                    "trial {trial}: {} got an entry written after his demotion: {v}",
                    kirk.name
                );
                if v["t"] == "end" && v["sub"] == sub {
                    assert_eq!(code(&v), "forbidden", "{v}");
                    break;
                }
            }
        }
        // Uhura, now captain, joins Spock's log as another member sees it.
        uhura
            .sub(sub, "shared_logs", json!({"member": "spock"}))
            .await;
        let v = uhura.joined(sub).await;
        assert_eq!(v["t"], "reset", "trial {trial}: {v}");
        assert!(
            uhura.c.results.contains(sub, &json!(format!("u{trial}"))),
            "trial {trial}: Uhura's reset lacks the entry written for her"
        );
        assert!(uhura.c.docs(sub).iter().all(|r| r.get("secret").is_none()));
        // Uhura has been sent something (her window is open); Kirk is captain again.
        log(format!("ok2{trial}"), "routine".into()).await;
        uhura
            .until(Duration::from_secs(5), |v| {
                v["t"] == "change" && v["sub"] == sub
            })
            .await;
        captain("kirk").await;
        log(format!("k{trial}"), format!("for Kirk only {trial}")).await;
        loop {
            let v = uhura.next(Duration::from_secs(5)).await.expect("an end");
            assert!(
                !v.to_string().contains("for Kirk only"),
                "trial {trial}: Uhura got an entry written after Kirk was made captain again: {v}"
            );
            if v["t"] == "end" && v["sub"] == sub {
                assert_eq!(code(&v), "forbidden", "{v}");
                break;
            }
        }
        // Spock's own log (another result) has every entry.
        let k = json!(format!("k{trial}"));
        while !spock.c.results.contains(1, &k) {
            spock.next(Duration::from_secs(5)).await.expect("open");
        }
    }
    let all = db.table("logs").query().run().await.unwrap();
    assert_eq!(by_id(spock.c.docs(1)), by_id(all));
}

/// A guard per caller on one shared result: Kirk, Uhura and Janeway are granted Spock's
/// log and share its result. Kirk's grant is revoked (while his window is open, or with no
/// window), then Spock writes: Kirk gets `forbidden` and never the entry; Uhura and
/// Janeway, who share the same result, get it (and are not restarted). Kirk, granted again,
/// joins again and gets it in his reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_viewer_loses_a_shared_result_that_others_keep() {
    for window in [200, 0] {
        revoked_viewer(Duration::from_millis(window)).await;
    }
}

async fn revoked_viewer(window: Duration) {
    let app = app(100_000, Limits::default(), window).await;
    let db = app.db.clone();
    let grant = |who: &'static str, yes: bool| {
        let db = db.clone();
        async move {
            db.table("grants")
                .insert(json!({"id": who, "spock": yes}))
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
        }
    };
    for who in ["kirk", "uhura", "janeway"] {
        grant(who, true).await;
    }
    let mut kirk = Page::open(&app, "kirk", "kirk").await;
    let mut others = Vec::new();
    for who in ["uhura", "janeway"] {
        let mut p = Page::open(&app, who, who).await;
        p.sub(1, "granted", json!({"member": "spock"})).await;
        p.joined(1).await;
        others.push(p);
    }
    for trial in 0..4u32 {
        let sub = trial + 1;
        kirk.sub(sub, "granted", json!({"member": "spock"})).await;
        let v = kirk.joined(sub).await;
        assert_eq!(v["t"], "reset", "trial {trial}: {v}");
        if trial > 0 {
            assert!(kirk
                .c
                .results
                .contains(sub, &json!(format!("s{}", trial - 1))));
        }
        assert_eq!(
            app.web.stats().shared_results,
            1,
            "one result for the three"
        );
        let doc =
            json!({"id": format!("ok{trial}"), "owner": "spock", "text": "routine", "at": trial});
        db.table("logs").insert(doc).await.unwrap();
        kirk.until(Duration::from_secs(5), |v| {
            v["t"] == "change" && v["sub"] == sub
        })
        .await;
        grant("kirk", false).await;
        let doc = json!({"id": format!("s{trial}"), "owner": "spock", "text": "not for Kirk",
                         "at": trial, "secret": "s"});
        db.table("logs").insert(doc).await.unwrap();
        loop {
            let v = kirk.next(Duration::from_secs(5)).await.expect("an end");
            assert!(
                !v.to_string().contains("not for Kirk"),
                "trial {trial}: Kirk got an entry written after his grant was revoked: {v}"
            );
            if v["t"] == "end" && v["sub"] == sub {
                assert_eq!(code(&v), "forbidden", "{v}");
                break;
            }
        }
        let key = json!(format!("s{trial}"));
        for p in others.iter_mut() {
            while !p.c.results.contains(1, &key) {
                p.next(Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|| panic!("trial {trial}: {} lost the result", p.name));
            }
            assert_eq!(
                p.c.results.resets(1),
                1,
                "{}: restarted by Kirk's guard",
                p.name
            );
        }
        grant("kirk", true).await;
    }
    let want: Vec<Value> = by_id(db.table("logs").query().run().await.unwrap())
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("secret");
            r
        })
        .collect();
    for p in others.iter_mut() {
        assert!(
            p.reaches(1, &want, Duration::from_secs(5)).await,
            "{}",
            p.name
        );
    }
}

/// Kirk, granted Spock's log, takes a cursor and goes. While he is away his grant is
/// revoked, Spock writes an entry and deletes it, and Kirk is granted again; Janeway, who
/// stays, keeps the shared result running, and it still keeps every batch since Kirk's
/// cursor. Kirk resumes from it: the batches kept since hold the entry, written while he
/// was not allowed; he must get the log as it is now, never the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_kept_batches_does_not_replay_what_came_while_revoked() {
    let app = app(100_000, Limits::default(), Duration::from_millis(5)).await;
    let db = app.db.clone();
    let grant = |who: &'static str, yes: bool| {
        let db = db.clone();
        async move {
            db.table("grants")
                .insert(json!({"id": who, "spock": yes}))
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
        }
    };
    grant("kirk", true).await;
    grant("janeway", true).await;
    let log = |id: &str, text: &str| {
        let doc = json!({"id": id, "owner": "spock", "text": text, "at": 1});
        let db = db.clone();
        async move { db.table("logs").insert(doc).await.unwrap() }
    };
    let mut janeway = Page::open(&app, "janeway", "janeway").await;
    janeway.sub(1, "granted", json!({"member": "spock"})).await;
    janeway.joined(1).await;
    for trial in 0..5u32 {
        let mut kirk = Page::open(&app, "kirk", format!("kirk {trial}")).await;
        kirk.sub(1, "granted", json!({"member": "spock"})).await;
        kirk.joined(1).await;
        log(&format!("a{trial}"), "routine").await;
        kirk.until(Duration::from_secs(5), |v| v["t"] == "change")
            .await;
        let cursor = kirk.c.cursor(1);
        let results = kirk.c.results.clone();
        drop(kirk);
        grant("kirk", false).await;
        let secret = format!("w{trial}");
        log(&secret, "written while Kirk was not allowed").await;
        db.table("logs")
            .get(secret.as_str())
            .delete()
            .await
            .unwrap();
        grant("kirk", true).await;
        log(&format!("b{trial}"), "routine").await;
        // Janeway has it all: the result has read it.
        let key = json!(format!("b{trial}"));
        while !janeway.c.results.contains(1, &key) {
            janeway.next(Duration::from_secs(5)).await.expect("open");
        }
        let mut kirk = Page::back(
            &app,
            "kirk",
            format!("kirk {trial} back"),
            results,
            HashMap::new(),
        )
        .await;
        kirk.resume(1, "granted", json!({"member": "spock"}), cursor)
            .await;
        let want: Vec<Value> = by_id(db.table("logs").query().run().await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(by_id(kirk.c.docs(1)) == want && kirk.whole(1)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = kirk.next(left).await.unwrap_or_else(|| {
                panic!(
                    "trial {trial}: Kirk holds {:?}, the log is {want:?}",
                    kirk.c.docs(1)
                )
            });
            assert!(
                !v.to_string().contains("while Kirk was not allowed"),
                "trial {trial}: replayed to Kirk: {v}"
            );
        }
        let after = kirk.drain().await;
        assert!(
            !format!("{after:?}").contains("while Kirk was not allowed"),
            "trial {trial}: replayed to Kirk: {after:?}"
        );
        assert_eq!(app.web.stats().shared_results, 1);
    }
}

/// Ten pages of Kirk's follow Spock's log (one result). A change to the ship that leaves
/// Kirk captain makes every member decide again at once, while Spock writes: each gets a new
/// reset and ends at the log's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_change_restarts_every_member_at_once_and_each_ends_at_the_query() {
    let app = common::start_with(Limits::default(), Duration::from_millis(10)).await;
    let db = app.db.clone();
    let mut pages = Vec::new();
    for k in 0..10 {
        let mut p = Page::open(&app, "kirk", format!("kirk {k}")).await;
        p.sub(1, "shared_logs", json!({"member": "spock"})).await;
        p.joined(1).await;
        pages.push(p);
    }
    let mut rng = Rng(99);
    for round in 0..5u64 {
        for n in 0..30u64 {
            let id = format!("l{}", rng.below(15));
            let doc =
                json!({"id": id, "owner": "spock", "text": "t", "at": n, "v": round * 100 + n});
            db.table("logs")
                .insert(doc)
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
            if n == 15 {
                db.table("ships")
                    .get("enterprise")
                    .update(json!({"motto": format!("m{round}")}))
                    .await
                    .unwrap();
            }
        }
        let marker = json!(format!("marker{round}"));
        db.table("logs")
            .insert(json!({"id": marker, "owner": "spock", "at": 0, "v": round * 100 + 99}))
            .await
            .unwrap();
        let want: Vec<Value> = by_id(db.table("logs").query().run().await.unwrap());
        for p in pages.iter_mut() {
            p.settle(1, &marker, &want, Duration::from_secs(10)).await;
            assert_eq!(p.c.results.resets(1), round as usize + 2, "{}", p.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. Reconnect storms.

/// Twenty pages follow the board with 1 KB rows (the result keeps ~50 such batches); a
/// page stays. Six drop early (their cursors then pass out of the change log, 400
/// changes), seven later (past what the result keeps, still in the log), seven last (the
/// rows are small by then: the result still keeps every batch since). All twenty then
/// reconnect at once and resume with their cursors while the writer goes on: the first six
/// get the whole result again, the others resume exactly (no reset), the last seven from
/// the result's kept batches (no feed of their own); each ends at the query's rows, and no
/// row goes back to an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_resumes_every_page_exactly() {
    let app = Arc::new(app(400, Limits::default(), Duration::from_millis(10)).await);
    let db = app.db.clone();
    let big = "b".repeat(1000);
    let mut rng = Rng(1234);
    let mut n = 0u64;
    for _ in 0..40 {
        n += 1;
        write_board(&db, &mut rng, n, &big).await;
    }
    let mut anchor = Page::open(&app, "janeway", "anchor").await;
    anchor.sub(1, "board", json!(null)).await;
    anchor.joined(1).await;
    let mut pages = Vec::new();
    for k in 0..20 {
        let mut p = Page::open(&app, "kirk", format!("page {k}")).await;
        p.sub(1, "board", json!(null)).await;
        p.joined(1).await;
        pages.push(Some(p));
    }
    // Each group reads everything written so far (a marker), then goes; writes follow.
    struct Gone {
        k: usize,
        group: usize,
        versions: HashMap<(u32, String), u64>,
        results: remodel_web::Results,
    }
    let mut gone = Vec::new();
    let groups = [(0..6, 1300u64), (6..13, 150), (13..20, 5)];
    for (group, (range, writes)) in groups.into_iter().enumerate() {
        if group == 2 {
            // Small rows from here on (every row written again).
            for i in 0..40 {
                n += 1;
                let doc = json!({"id": format!("b{i:02}"), "v": n});
                db.table("board")
                    .insert(doc)
                    .conflict(remodel::Conflict::Replace)
                    .await
                    .unwrap();
            }
        }
        n += 1;
        let (marker, want) = mark(&db, n).await;
        anchor
            .settle(1, &marker, &want, Duration::from_secs(10))
            .await;
        for k in range {
            let mut p = pages[k].take().unwrap();
            p.settle(1, &marker, &want, Duration::from_secs(10)).await;
            gone.push(Gone {
                k,
                group,
                versions: p.versions.clone(),
                results: p.c.results.clone(),
            });
        }
        for _ in 0..writes {
            n += 1;
            let pad = if group < 2 { big.as_str() } else { "" };
            write_board(&db, &mut rng, n, pad).await;
            if n.is_multiple_of(16) {
                // The anchor keeps up (it is not the one to fall behind).
                anchor.read_for(Duration::from_millis(1)).await;
            }
        }
    }
    anchor.read_for(Duration::from_millis(50)).await;
    let feeds_before = open_feeds(&db).await;
    let writer = Writer::start(&db, 77, n + 1, String::new(), Duration::from_millis(2));
    let mut storm = Vec::new();
    for g in gone {
        let app = app.clone();
        storm.push(tokio::spawn(async move {
            let before = g.results.resets(1);
            let name = format!("page {} (group {})", g.k, g.group);
            let mut p = Page::back(&app, "kirk", name, g.results, g.versions).await;
            let cursor = p.c.cursor(1);
            assert!(cursor.is_some(), "{}: no cursor", p.name);
            p.resume(1, "board", json!(null), cursor).await;
            let first = p.until(Duration::from_secs(10), |v| v["sub"] == 1).await;
            (g.group, before, p, first)
        }));
    }
    let mut back = Vec::new();
    for s in storm {
        back.push(s.await.unwrap());
    }
    anchor.read_for(Duration::from_millis(100)).await;
    let next = writer.stop().await;
    let (marker, want) = mark(&db, next).await;
    anchor
        .settle(1, &marker, &want, Duration::from_secs(10))
        .await;
    let feeds_after = open_feeds(&db).await;
    for (group, before, p, first) in back.iter_mut() {
        assert_ne!(first["t"], "end", "{}: {first}", p.name);
        p.settle(1, &marker, &want, Duration::from_secs(10)).await;
        let resets = p.c.results.resets(1);
        match group {
            // Its cursor left the change log: a reset, unless the result still keeps every
            // batch since (its changes on few rows, net of each batch, are small).
            0 => eprintln!("{}: {} resets after resuming", p.name, resets - *before),
            _ => assert_eq!(
                resets,
                *before,
                "{}: resumed, not reset (first frame {:.200})",
                p.name,
                first.to_string()
            ),
        }
    }
    eprintln!(
        "storm: feeds {feeds_before} -> {feeds_after}; first frames: {:?}",
        back.iter()
            .map(|(g, _, _, f)| format!("{g}:{}", f["t"]))
            .collect::<Vec<_>>()
    );
    assert!(
        feeds_after <= feeds_before + 7,
        "{feeds_before} feeds before the storm, {feeds_after} after: only the 7 pages whose \
         cursors the result no longer keeps may follow a feed of their own"
    );
}

/// Every page of a shared result drops (the result stops), then all resume at once while
/// writes go on: each ends at the query's rows, with no reset, and later pages share one
/// result again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_dropping_and_resuming_at_once_resumes_exactly() {
    let app = Arc::new(app(100_000, Limits::default(), Duration::from_millis(5)).await);
    let db = app.db.clone();
    let mut rng = Rng(4321);
    seed_board(&db, &mut rng, "").await;
    let mut pages = Vec::new();
    for k in 0..20 {
        let mut p = Page::open(&app, "kirk", format!("page {k}")).await;
        p.sub(1, "board", json!(null)).await;
        p.joined(1).await;
        pages.push(p);
    }
    let writer = Writer::start(&db, 5, 100, String::new(), Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut left = Vec::new();
    for mut p in pages {
        while p.next(Duration::from_millis(5)).await.is_some() {}
        left.push((p.c.results.clone(), p.versions.clone(), p.name.clone()));
    }
    let web = app.web.clone();
    eventually(Duration::from_secs(5), "the result stops", || {
        web.stats().shared_results == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut storm = Vec::new();
    for (results, versions, name) in left {
        let app = app.clone();
        storm.push(tokio::spawn(async move {
            let mut p = Page::back(&app, "kirk", name, results, versions).await;
            let cursor = p.c.cursor(1);
            p.resume(1, "board", json!(null), cursor).await;
            p.until(Duration::from_secs(10), |v| v["sub"] == 1).await;
            p
        }));
    }
    let mut back = Vec::new();
    for s in storm {
        back.push(s.await.unwrap());
    }
    let next = writer.stop().await;
    let (marker, want) = mark(&db, next).await;
    for p in back.iter_mut() {
        p.settle(1, &marker, &want, Duration::from_secs(10)).await;
        assert_eq!(p.c.results.resets(1), 1, "{}: resumed, not reset", p.name);
    }
    let mut late = Page::open(&app, "spock", "late").await;
    late.sub(1, "board", json!(null)).await;
    late.joined(1).await;
    assert_eq!(by_id(late.c.docs(1)), want);
    assert_eq!(app.web.stats().shared_results, 1);
}

/// The server closes every connection (`Web::disconnect_all`, as on a deploy) and the
/// twenty pages of one shared board reconnect and resume with their cursors, nothing
/// written meanwhile: each resumes exactly (on a feed of its own: the result that starts
/// now holds nothing from before it), and after the next change made once every page is
/// back, the board is followed by one feed again, as before (a shared board watched by many pages costs one feed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_resuming_after_disconnect_all_share_one_feed_again() {
    let app = Arc::new(app(100_000, Limits::default(), Duration::from_millis(5)).await);
    let db = app.db.clone();
    let mut rng = Rng(2024);
    seed_board(&db, &mut rng, "").await;
    let mut pages = Vec::new();
    for k in 0..20 {
        let mut p = Page::open(&app, "kirk", format!("page {k}")).await;
        p.sub(1, "board", json!(null)).await;
        p.joined(1).await;
        pages.push(p);
    }
    // A few changes: each page's cursor is a change's.
    for n in 100..110 {
        write_board(&db, &mut rng, n, "").await;
    }
    let (marker, want) = mark(&db, 1).await;
    for p in pages.iter_mut() {
        p.settle(1, &marker, &want, Duration::from_secs(5)).await;
    }
    let feeds_before = open_feeds(&db).await;
    app.web.disconnect_all();
    let web = app.web.clone();
    eventually(Duration::from_secs(5), "every connection closed", || {
        web.stats().connections == 0 && web.stats().shared_results == 0
    })
    .await;
    let mut back = Vec::new();
    for p in pages {
        let app = app.clone();
        let (results, versions, name) = (p.c.results.clone(), p.versions.clone(), p.name.clone());
        back.push(tokio::spawn(async move {
            let mut p = Page::back(&app, "kirk", name, results, versions).await;
            let cursor = p.c.cursor(1);
            p.resume(1, "board", json!(null), cursor).await;
            p
        }));
    }
    let mut pages = Vec::new();
    for b in back {
        pages.push(b.await.unwrap());
    }
    let (marker, want) = mark(&db, 2).await;
    for p in pages.iter_mut() {
        p.settle(1, &marker, &want, Duration::from_secs(5)).await;
        assert_eq!(p.c.results.resets(1), 1, "{}: resumed, not reset", p.name);
    }
    // Every page is open again, and so is the result: the next change is after where it
    // started, and each page joins it once it has sent that change.
    let (marker, want) = mark(&db, 3).await;
    for p in pages.iter_mut() {
        p.settle(1, &marker, &want, Duration::from_secs(5)).await;
        assert_eq!(p.c.results.resets(1), 1, "{}: resumed, not reset", p.name);
    }
    let feeds_after = open_feeds(&db).await;
    let results = app.web.stats().shared_results;
    assert!(
        feeds_after <= feeds_before + 1 && results == 1,
        "{feeds_before} feeds for 20 pages of a shared board before they reconnected, \
         {feeds_after} after ({results} shared results)"
    );
}

// ---------------------------------------------------------------------------------------
// 5. A rule, view or key that panics.

/// A shared publication whose rule (view, key) panics on a row marked `boom`, with members
/// on five pages (two ids each, and each page also follows the board), and one page that
/// resumed on a feed of its own: a `boom` row ends every one of them with `internal`; the
/// board subscriptions go on; the server answers; a subscription while the row is there
/// ends too; once it is gone, a new subscription gets the query's rows and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_rule_view_or_key_ends_every_member_and_the_server_goes_on() {
    let app = app(100_000, Limits::default(), Duration::from_millis(5)).await;
    let db = app.db.clone();
    for how in ["rule", "view", "key"] {
        let params = json!({"how": how});
        db.table("board").query().delete().await.unwrap();
        for i in 0..10 {
            db.table("board")
                .insert(json!({"id": format!("b{i}"), "v": i}))
                .await
                .unwrap();
        }
        // A page takes a cursor and goes; the result stops; a write; other pages start a
        // new result; the page resumes from before it: on a feed of its own.
        let mut early = Page::open(&app, "kirk", format!("{how}: early")).await;
        early.sub(1, "fragile", params.clone()).await;
        early.joined(1).await;
        let mut early = early.reconnect(&app, "kirk").await;
        let web = app.web.clone();
        eventually(Duration::from_secs(5), "the result stops", || {
            web.stats().shared_results == 0
        })
        .await;
        db.table("board")
            .insert(json!({"id": "c0", "v": 50}))
            .await
            .unwrap();
        let mut pages = Vec::new();
        for k in 0..5 {
            let mut p = Page::open(&app, "spock", format!("{how}: page {k}")).await;
            p.sub(1, "fragile", params.clone()).await;
            p.sub(2, "fragile", params.clone()).await;
            p.sub(3, "board", json!(null)).await;
            for id in 1..=3 {
                let v = p.joined(id).await;
                assert_eq!(v["t"], "reset", "{v}");
            }
            pages.push(p);
        }
        let cursor = early.c.cursor(1);
        early.resume(1, "fragile", params.clone(), cursor).await;
        let v = early.until(Duration::from_secs(5), |v| v["sub"] == 1).await;
        assert_eq!(v["t"], "change", "{how}: the early page resumes: {v}");
        db.table("board")
            .insert(json!({"id": "bad", "v": 60, "boom": true}))
            .await
            .unwrap();
        for p in pages.iter_mut().chain(std::iter::once(&mut early)) {
            let ids: &[u32] = if p.name.ends_with("early") {
                &[1]
            } else {
                &[1, 2]
            };
            for &id in ids {
                let v = p.end_of(id, Duration::from_secs(5), |_| {}).await;
                assert_eq!(code(&v), "internal", "{}: {v}", p.name);
                assert!(!v.to_string().contains("boom"), "{v}");
            }
        }
        // The board subscriptions on the same connections go on.
        db.table("board")
            .insert(json!({"id": "c1", "v": 70}))
            .await
            .unwrap();
        for p in pages.iter_mut() {
            p.until(Duration::from_secs(5), |v| {
                v["sub"] == 3 && v.to_string().contains("\"c1\"")
            })
            .await;
            assert!(p
                .drain()
                .await
                .iter()
                .all(|v| v["sub"] != 1 && v["sub"] != 2));
        }
        // Asked again while the row is there: it ends again.
        let mut again = Page::open(&app, "uhura", format!("{how}: again")).await;
        again.sub(1, "fragile", params.clone()).await;
        let v = again.joined(1).await;
        assert_eq!(
            (v["t"].as_str(), code(&v)),
            (Some("end"), "internal"),
            "{v}"
        );
        // The row goes: a new subscription works, and follows.
        db.table("board").get("bad").delete().await.unwrap();
        again.sub(2, "fragile", params.clone()).await;
        let v = again.joined(2).await;
        assert_eq!(v["t"], "reset", "{how}: {v}");
        assert_eq!(by_id(again.c.docs(2)), board(&db).await);
        let (marker, want) = mark(&db, 1).await;
        again
            .settle(2, &marker, &want, Duration::from_secs(5))
            .await;
        drop((pages, early, again));
        eventually(Duration::from_secs(5), "the results stop", || {
            web.stats().shared_results == 0
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// 6. The table dropped.

/// Twelve pages follow the board (one of them with three ids, one resumed on a feed of its
/// own), one more page was disconnected meanwhile. The table is dropped: every member gets
/// `end` (`aborted`) and the result stops. The table is made again with other rows: a new
/// subscription gets them, the disconnected page resuming with its old cursor holds them
/// and nothing of the old table, and both follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_table_ends_every_member_and_a_new_one_is_followed() {
    let app = app(100_000, Limits::default(), Duration::from_millis(5)).await;
    let db = app.db.clone();
    let mut rng = Rng(8);
    seed_board(&db, &mut rng, "").await;
    let mut away = Page::open(&app, "kirk", "away").await;
    away.sub(1, "board", json!(null)).await;
    away.joined(1).await;
    let away_results = away.c.results.clone();
    let mut resumed = away.reconnect(&app, "kirk").await;
    resumed.name = "resumed".into();
    let web = app.web.clone();
    eventually(Duration::from_secs(5), "the result stops", || {
        web.stats().shared_results == 0
    })
    .await;
    // A write before the next result starts: the resumed page's cursor is before it.
    write_board(&db, &mut rng, 50, "").await;
    let mut pages = Vec::new();
    for k in 0..12 {
        let mut p = Page::open(&app, "spock", format!("page {k}")).await;
        let ids: &[u32] = if k == 0 { &[1, 2, 3] } else { &[1] };
        for &id in ids {
            p.sub(id, "board", json!(null)).await;
            p.joined(id).await;
        }
        pages.push(p);
    }
    write_board(&db, &mut rng, 100, "").await;
    let cursor = resumed.c.cursor(1);
    resumed.resume(1, "board", json!(null), cursor).await;
    resumed
        .until(Duration::from_secs(5), |v| v["sub"] == 1)
        .await;
    assert_eq!(app.web.stats().shared_results, 1);
    db.drop_table("board").await.unwrap();
    for p in pages.iter_mut().chain(std::iter::once(&mut resumed)) {
        let ids: &[u32] = if p.name == "page 0" { &[1, 2, 3] } else { &[1] };
        for &id in ids {
            let v = p.end_of(id, Duration::from_secs(5), |_| {}).await;
            assert_eq!(code(&v), "aborted", "{}: {v}", p.name);
        }
    }
    eventually(
        Duration::from_secs(5),
        "the result of a dropped table stops",
        || web.stats().shared_results == 0,
    )
    .await;
    db.create_table("board").await.unwrap();
    for i in 0..5 {
        db.table("board")
            .insert(json!({"id": format!("n{i}"), "v": 1000 + i}))
            .await
            .unwrap();
    }
    // The page that was away resumes from a cursor of the old table.
    let mut away = Page::open(&app, "kirk", "away").await;
    away.c.results = away_results;
    let cursor = away.c.cursor(1);
    away.resume(1, "board", json!(null), cursor).await;
    let mut fresh = Page::open(&app, "uhura", "fresh").await;
    fresh.sub(1, "board", json!(null)).await;
    fresh.joined(1).await;
    assert_eq!(by_id(fresh.c.docs(1)), board(&db).await);
    let (marker, want) = mark(&db, 1).await;
    fresh
        .settle(1, &marker, &want, Duration::from_secs(5))
        .await;
    away.settle(1, &marker, &want, Duration::from_secs(5)).await;
    // Ended pages subscribe again.
    for p in pages.iter_mut() {
        p.sub(9, "board", json!(null)).await;
        p.joined(9).await;
        assert_eq!(by_id(p.c.docs(9)), want, "{}", p.name);
    }
    assert_eq!(app.web.stats().shared_results, 1);
}

// ---------------------------------------------------------------------------------------
// 7. Ids, unsubscriptions, a small feed queue, a shared top 3.

/// One page subscribes to the same shared result under seven ids (more than the frame
/// copies a batch keeps), another under the same ids in another order; while a writer
/// commits, ids are unsubscribed and taken again. After an `unsub` and a ping, nothing of
/// the id comes until it is taken again; every id still open ends at the query's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_page_with_many_ids_on_one_result() {
    let app = app(100_000, Limits::default(), Duration::from_millis(5)).await;
    let db = app.db.clone();
    let mut rng = Rng(31);
    seed_board(&db, &mut rng, &"z".repeat(100)).await;
    let mut a = Page::open(&app, "kirk", "a").await;
    let mut b = Page::open(&app, "spock", "b").await;
    for id in 1..=7u32 {
        a.sub(id, "board", json!(null)).await;
        b.sub(8 - id, "board", json!(null)).await;
    }
    for id in 1..=7u32 {
        a.joined(id).await;
        b.joined(id).await;
    }
    let writer = Writer::start(&db, 9, 100, "z".repeat(100), Duration::from_millis(1));
    let mut open: Vec<u32> = (1..=7).collect();
    for round in 0..30u64 {
        let id = open[rng.below(open.len() as u64) as usize];
        a.unsub(id).await;
        // Frames of it on their way before the unsub may still come before the pong; none
        // after it.
        a.drain().await;
        let quiet_until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < quiet_until {
            if let Some(v) = a.next(Duration::from_millis(5)).await {
                assert_ne!(
                    v["sub"], id,
                    "round {round}: a frame of an id unsubscribed: {v:.200}"
                );
            }
        }
        a.versions.retain(|(s, _), _| *s != id);
        if round % 3 == 0 {
            open.retain(|i| *i != id);
        } else {
            a.sub(id, "board", json!(null)).await;
            a.joined(id).await;
        }
        b.read_for(Duration::from_millis(10)).await;
        if open.len() < 3 {
            let id = (1..=7).find(|i| !open.contains(i)).unwrap();
            a.sub(id, "board", json!(null)).await;
            a.joined(id).await;
            open.push(id);
        }
    }
    let next = writer.stop().await;
    let (marker, want) = mark(&db, next).await;
    for &id in &open {
        a.settle(id, &marker, &want, Duration::from_secs(10)).await;
    }
    for id in 1..=7 {
        b.settle(id, &marker, &want, Duration::from_secs(10)).await;
    }
    assert_eq!(app.web.stats().shared_results, 1);
}

/// An id unsubscribed and taken again at once for another shared result, over and over,
/// while both results change: once the new subscription's reset came, no frame of the old
/// result comes under the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_at_once_gets_only_the_new_result_after_its_reset() {
    let app = app(100_000, Limits::default(), Duration::from_millis(5)).await;
    let db = app.db.clone();
    db.table("grants")
        .insert(json!({"id": "kirk", "spock": true}))
        .await
        .unwrap();
    let mut rng = Rng(12);
    for n in 0..20 {
        write_board(&db, &mut rng, n, "").await;
        let doc = json!({"id": format!("l{n}"), "owner": "spock", "at": n, "text": "t"});
        db.table("logs").insert(doc).await.unwrap();
    }
    let writer = Writer::start(&db, 3, 100, String::new(), Duration::from_millis(1));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, logs_db) = (stop.clone(), db.clone());
    let log_writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !s.load(Ordering::Relaxed) {
            n += 1;
            let doc = json!({"id": format!("l{}", n % 20), "owner": "spock", "at": n, "text": "t"});
            logs_db
                .table("logs")
                .insert(doc)
                .conflict(remodel::Conflict::Replace)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // Board rows have a `v`, log rows an `owner` (a row that left, `null`, is neither).
    let is_board = |row: &Value| row[1].get("v").is_some();
    let is_row = |row: &Value| !row[1].is_null();
    let mut page = Page::open(&app, "kirk", "page").await;
    // Another page keeps both results running.
    let mut keeper = Page::open(&app, "kirk", "keeper").await;
    keeper.sub(1, "board", json!(null)).await;
    keeper.sub(2, "granted", json!({"member": "spock"})).await;
    keeper.joined(1).await;
    keeper.joined(2).await;
    for round in 0..40u32 {
        let board_now = round % 2 == 0;
        if round > 0 {
            page.unsub(1).await;
        }
        match board_now {
            true => page.sub(1, "board", json!(null)).await,
            false => page.sub(1, "granted", json!({"member": "spock"})).await,
        }
        page.versions.clear();
        // Frames of the old subscription may come first, up to the new one's reset.
        loop {
            let v = page.next(Duration::from_secs(5)).await.expect("open");
            if v["sub"] != 1 {
                continue;
            }
            let rows = v["rows"].as_array().cloned().unwrap_or_default();
            if v["t"] == "reset"
                && !rows.is_empty()
                && rows.iter().all(|r| is_board(r) == board_now)
            {
                break;
            }
        }
        while !page.whole(1) {
            page.next(Duration::from_secs(5)).await.expect("open");
        }
        let until = Instant::now() + Duration::from_millis(30);
        while Instant::now() < until {
            if let Some(v) = page.next(Duration::from_millis(5)).await {
                if v["sub"] == 1 {
                    for r in v["rows"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| is_row(r))
                    {
                        assert_eq!(
                            is_board(r),
                            board_now,
                            "round {round}: a row of the old result after the new reset: {v:.300}"
                        );
                    }
                }
            }
            keeper.read_for(Duration::from_millis(2)).await;
        }
    }
    writer.stop().await;
    stop.store(true, Ordering::Relaxed);
    log_writer.await.unwrap();
    assert_eq!(app.web.stats().shared_results, 2);
}

/// The last member of a result unsubscribes while batches come, and the id is taken again
/// at once, fifty times: each time the page gets the result's rows and follows, and once
/// it is gone for good the result stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_member_leaving_while_batches_come_and_joining_again() {
    let app = app(100_000, Limits::default(), Duration::from_millis(0)).await;
    let db = app.db.clone();
    let mut rng = Rng(77);
    seed_board(&db, &mut rng, "").await;
    let writer = Writer::start(&db, 17, 100, String::new(), Duration::from_millis(1));
    let mut page = Page::open(&app, "kirk", "page").await;
    for round in 0..50u32 {
        page.sub(1, "board", json!(null)).await;
        let v = page.joined(1).await;
        assert_eq!(v["t"], "reset", "round {round}: {v}");
        // A change follows.
        page.until(Duration::from_secs(5), |v| {
            v["t"] == "change" && v["sub"] == 1
        })
        .await;
        assert!(app.web.stats().shared_results <= 1, "{:?}", app.web.stats());
        page.unsub(1).await;
        page.versions.clear();
        if round % 10 == 9 {
            let pause = writer.pause.write().await;
            let (marker, want) = mark(&db, u64::from(round)).await;
            page.sub(1, "board", json!(null)).await;
            page.settle(1, &marker, &want, Duration::from_secs(5)).await;
            page.unsub(1).await;
            drop(pause);
        }
    }
    writer.stop().await;
    page.drain().await;
    let web = app.web.clone();
    eventually(Duration::from_secs(5), "the result stops", || {
        web.stats().shared_results == 0
    })
    .await;
}

/// With a feed queue of 2, the result's own feed (8) overflows on every commit of 30 rows:
/// every member restarts together, and each ends at the query's rows (none is ended for
/// restarting too often while the bursts come now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_own_feed_overflows_restarts_every_member() {
    let limits = Limits {
        feed_queue: 2,
        ..Limits::default()
    };
    let app = app(100_000, limits, Duration::from_millis(5)).await;
    let db = app.db.clone();
    let mut pages = Vec::new();
    for k in 0..8 {
        let mut p = Page::open(&app, "kirk", format!("page {k}")).await;
        p.sub(1, "board", json!(null)).await;
        p.joined(1).await;
        pages.push(p);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for mut p in pages {
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                p.next(Duration::from_millis(10)).await;
            }
            p
        }));
    }
    let mut v = 0u64;
    for burst in 0..12u64 {
        let rows: Vec<Value> = (0..30)
            .map(|i| {
                v += 1;
                json!({"id": format!("b{}", (burst * 7 + i) % 50), "v": v})
            })
            .collect();
        db.table("board")
            .insert_many(rows)
            .conflict(remodel::Conflict::Replace)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (marker, want) = mark(&db, 1).await;
    for r in readers {
        let mut p = r.await.unwrap();
        p.settle(1, &marker, &want, Duration::from_secs(10)).await;
        assert!(
            p.c.results.resets(1) >= 2,
            "{}: no restart although the result's feed overflowed",
            p.name
        );
    }
}

/// A shared top 3 (a feed that cannot resume from a cursor): pages that follow it end at
/// the query's top 3, and a page that reconnects with its cursor gets the whole top again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_top_three_follows_the_query() {
    let app = app(100_000, Limits::default(), Duration::from_millis(5)).await;
    let db = app.db.clone();
    let mut rng = Rng(55);
    seed_board(&db, &mut rng, "").await;
    let top = |db: Database| async move {
        let rows = db
            .table("board")
            .order_by(Order::index("v").desc())
            .limit(3)
            .run()
            .await
            .unwrap();
        by_id(rows)
    };
    let mut pages = Vec::new();
    for k in 0..5 {
        let mut p = Page::open(&app, "kirk", format!("page {k}")).await;
        p.sub(1, "top_board", json!(null)).await;
        p.joined(1).await;
        assert_eq!(by_id(p.c.docs(1)), top(db.clone()).await);
        pages.push(p);
    }
    for round in 0..5u64 {
        for n in 0..40 {
            write_board(&db, &mut rng, 1000 * (round + 1) + n, "").await;
            // Some writes delete the best row (the next comes into the top).
            if n % 7 == 0 {
                let best = top(db.clone()).await;
                let id = best[0]["id"].as_str().unwrap().to_string();
                db.table("board").get(id.as_str()).delete().await.unwrap();
            }
        }
        let want = top(db.clone()).await;
        for p in pages.iter_mut() {
            assert!(
                p.reaches(1, &want, Duration::from_secs(5)).await,
                "round {round}: {} holds {:?}, the top is {want:?}",
                p.name,
                p.c.docs(1)
            );
        }
        let p = pages.pop().unwrap();
        let cursor = p.c.cursor(1);
        let mut p = p.reconnect(&app, "kirk").await;
        p.versions.clear();
        p.resume(1, "top_board", json!(null), cursor).await;
        // A new best row: the resumed page shows it (from a reset, or exactly resumed).
        let best = json!({"id": format!("best{round}"), "v": 100_000 + round});
        db.table("board").insert(best).await.unwrap();
        let want = top(db.clone()).await;
        assert!(
            p.reaches(1, &want, Duration::from_secs(5)).await,
            "round {round}: the resumed page holds {:?}, the top is {want:?}",
            p.c.docs(1)
        );
        pages.insert(0, p);
    }
}
