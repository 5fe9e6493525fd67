//! Races: many clients at once, through the forms (HTTP) and the live connection (WebSocket),
//! checked against the project's rules.
//!
//! Oracles:
//! - the stored rows are a serial replay of the acknowledged operations (at most one of several
//!   edits drawn from the same page wins; a deleted member never comes back; ...);
//! - every write is decided at commit: the database's own change log (read after the storm
//!   with `resume_from`) gives every commit in order, and is replayed to check that each log
//!   entry was written while its author was allowed to write it;
//! - live pages end with exactly the rows a fresh read shows, rebuilt from the frames as
//!   `remodel-web/src/client.js` applies them (a `Mirror` of its `Subscription`);
//! - every refusal is a 4xx page, never a 5xx, and nothing panics in the server.
//!
//! Seeded: each test prints its seed; `RACES_SEED=<n>` replays one (the writes it chooses;
//! the interleaving is the machine's).

use axum::http::StatusCode;
use futures::{SinkExt, StreamExt};
use remodel::{json, Cursor, Database, Model, Value};
use starfleet::models::{Crewmember, Starship};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// The away teams' join table (the two tables' names, sorted, joined by `_`).
const JOIN: &str = "crewmembers_starships";

// ---------------------------------------------------------------------------------------------
// Seeds, panics, replies

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// The test's seed: `RACES_SEED`, or the clock. Printed, so that a failure can be replayed.
fn seeded(test: &str) -> Rng {
    watch_panics();
    let seed = std::env::var("RACES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        });
    println!("[{test}] seed {seed} (replay: RACES_SEED={seed})");
    Rng(seed)
}

/// Panics outside the tests' own code (in the app, the library, the server's tasks).
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or("");
            if !file.contains("tests/") {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
                eprintln!("SERVER PANIC at {file}");
            }
            before(info)
        }));
    });
}

fn no_server_panics() {
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "a panic outside the tests (see the log)"
    );
}

/// A refusal is a page with a 4xx; a success a redirect. Never a 5xx.
fn proper(r: &Reply, what: &str) {
    assert!(
        !r.status.is_server_error(),
        "{what}: {} {}",
        r.status,
        message_of(&r.body)
    );
    if r.status != StatusCode::SEE_OTHER {
        assert!(
            r.status.is_client_error() && r.body.contains("<p id=\"message\">"),
            "{what}: {} is not an error page: {}",
            r.status,
            r.body
        );
    }
}

fn message_of(body: &str) -> &str {
    match body.find("<p id=\"message\">") {
        Some(i) => {
            let rest = &body[i + 16..];
            &rest[..rest.find("</p>").unwrap_or(rest.len())]
        }
        None => body.get(..200).unwrap_or(body),
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The app, shared by the tasks of a test, with every seeded member's session.
struct H {
    app: App,
    cookies: std::sync::Mutex<HashMap<String, String>>,
}

type Hs = Arc<H>;

async fn harness() -> Hs {
    Arc::new(H {
        app: app().await,
        cookies: Default::default(),
    })
}

impl H {
    fn db(&self) -> &Database {
        &self.app.state.db
    }

    async fn cookie(&self, who: &str) -> String {
        if let Some(c) = self.cookies.lock().unwrap().get(who) {
            return c.clone();
        }
        let c = self.app.cookie_of(who).await;
        self.cookies.lock().unwrap().insert(who.into(), c.clone());
        c
    }

    /// A form POST as `who` (or no one); the reply is checked to be a redirect or a 4xx page.
    async fn post(&self, who: Option<&str>, path: &str, form: &str) -> Reply {
        let r = match who {
            Some(w) => {
                let c = self.cookie(w).await;
                self.app.post_as(path, form, &c).await
            }
            None => self.app.post(path, form).await,
        };
        proper(&r, &format!("{who:?} POST {path} {form}"));
        r
    }

    /// The edit form of `member`'s page as drawn now: `[was_name, was_rank, was_species]`.
    async fn draw(&self, member: &str) -> Option<[String; 3]> {
        let page = self.app.get(&format!("/member/{member}")).await;
        if page.status != StatusCode::OK {
            return None;
        }
        let field = |f: &str| {
            let tag = format!("name=\"{f}\" value=\"");
            let i = page.body.find(&tag).expect(f) + tag.len();
            unescape(&page.body[i..i + page.body[i..].find('"').unwrap()])
        };
        Some([field("was_name"), field("was_rank"), field("was_species")])
    }

    /// A stored row (raw).
    async fn row(&self, table: &str, key: &str) -> Option<Value> {
        self.db().table(table).get(key).run().await.unwrap()
    }

    /// Sets fields of a row directly (the test's own setup between rounds).
    async fn set(&self, table: &str, key: &str, fields: Value) {
        let w = self
            .db()
            .table(table)
            .get(key)
            .update(fields)
            .await
            .unwrap();
        assert_eq!(w.skipped, 0, "{table} {key}");
    }

    async fn rows(&self, table: &str) -> Vec<Value> {
        self.db().table(table).run().await.unwrap()
    }
}

fn edit_form(new: [&str; 3], was: &[String; 3]) -> String {
    format!(
        "name={}&rank={}&species={}&was_name={}&was_rank={}&was_species={}",
        enc(new[0]),
        enc(new[1]),
        enc(new[2]),
        enc(&was[0]),
        enc(&was[1]),
        enc(&was[2])
    )
}

/// Runs the futures at once, each on a task of its own (both worker threads race them).
async fn race<T: Send + 'static>(
    tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>>,
) -> Vec<T> {
    let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("a racing task panicked"));
    }
    out
}

macro_rules! task {
    ($body:expr) => {
        Box::pin(async move { $body })
            as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
    };
}

// ---------------------------------------------------------------------------------------------
// The database's own history: every commit since a position, in commit order.

#[derive(Clone, Debug)]
struct Ev {
    seq: u64,
    n: u32,
    table: &'static str,
    key: String,
    old: Option<Value>,
    new: Option<Value>,
}

async fn history(db: &Database, from: Cursor) -> Vec<Ev> {
    history_of(db, from, &["crewmembers", "logs", "starships", JOIN]).await
}

/// The commits since `from` of `tables` (read once the writes are quiet: the change log hands
/// them over at once; 300 ms for the first, then until 100 ms without one).
async fn history_of(db: &Database, from: Cursor, tables: &[&'static str]) -> Vec<Ev> {
    let mut all = Vec::new();
    for &table in tables {
        let mut feed = db.table(table).changes().resume_from(from).await.unwrap();
        let mut wait = Duration::from_millis(300);
        while let Ok(Some(item)) = tokio::time::timeout(wait, feed.next()).await {
            wait = Duration::from_millis(100);
            let c = item.unwrap();
            let key = c
                .new_val()
                .or(c.old_val())
                .map(|v| key_str(&v["id"]))
                .unwrap_or_default();
            all.push(Ev {
                seq: c.seq().unwrap(),
                n: c.position_in_commit().unwrap_or(0),
                table,
                key,
                old: c.old_val().cloned(),
                new: c.new_val().cloned(),
            });
        }
    }
    all.sort_by_key(|e| (e.seq, e.n));
    all
}

fn key_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// May `author` write `owner`'s log, with the members as in `members`? (The rule of
/// `publications::may_use_log`.)
fn may_write(members: &HashMap<String, Value>, author: &str, owner: &str) -> bool {
    let (Some(a), Some(o)) = (members.get(author), members.get(owner)) else {
        return false;
    };
    author == owner
        || (a["rank"]
            .as_str()
            .is_some_and(|r| r.eq_ignore_ascii_case("captain"))
            && !o["starship_id"].is_null()
            && a["starship_id"] == o["starship_id"])
}

async fn members_now(h: &H) -> HashMap<String, Value> {
    h.rows("crewmembers")
        .await
        .into_iter()
        .map(|r| (key_str(&r["id"]), r))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The live connection, applied as client.js applies it.

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One subscription as client.js's `Subscription` holds it.
#[derive(Default, Debug)]
struct Sub {
    open: bool,
    /// mapKey (the key's JSON) -> document.
    rows: BTreeMap<String, Value>,
    partial: bool,
    ended: Option<Value>,
    /// Every document this subscription was ever sent.
    seen: Vec<Value>,
}

#[derive(Default, Debug)]
struct Mirror {
    subs: HashMap<u64, Sub>,
}

impl Mirror {
    fn dispatch(&mut self, f: &Value) {
        match f["t"].as_str() {
            Some("batch") => {
                for fr in f["frames"].as_array().into_iter().flatten() {
                    if fr["t"] != "batch" {
                        self.dispatch(fr);
                    }
                }
            }
            Some(t @ ("reset" | "more" | "change" | "end")) => {
                let Some(sub) = f["sub"].as_u64().and_then(|id| self.subs.get_mut(&id)) else {
                    return;
                };
                if !sub.open {
                    return; // client.js: an unknown (ended) id, a late message
                }
                let rows = f["rows"].as_array().cloned().unwrap_or_default();
                let set = |sub: &mut Sub| {
                    for r in &rows {
                        let (k, d) = (r[0].to_string(), r[1].clone());
                        if d.is_null() {
                            sub.rows.remove(&k);
                        } else {
                            sub.seen.push(d.clone());
                            sub.rows.insert(k, d);
                        }
                    }
                };
                match t {
                    "reset" => {
                        sub.rows.clear();
                        set(sub);
                        sub.partial = f["more"] == true;
                    }
                    "more" if sub.partial => {
                        set(sub);
                        sub.partial = f["more"] == true;
                    }
                    "more" => {}
                    "change" => set(sub),
                    _ => {
                        sub.open = false;
                        sub.rows.clear();
                        sub.ended = Some(f["error"].clone());
                    }
                }
            }
            _ => {}
        }
    }
}

struct Ws {
    ws: WsStream,
    m: Mirror,
    results: HashMap<u64, Value>,
}

impl Ws {
    async fn connect(addr: SocketAddr, cookie: Option<&str>) -> Ws {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/remodel/ws")
            .into_client_request()
            .unwrap();
        if let Some(c) = cookie {
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Ws {
            ws,
            m: Mirror::default(),
            results: HashMap::new(),
        }
    }

    async fn send(&mut self, frame: Value) {
        let text = tokio_tungstenite::tungstenite::Message::text(frame.to_string());
        self.ws.send(text).await.unwrap();
    }

    async fn sub(&mut self, id: u64, name: &str, params: Value) {
        self.m.subs.insert(
            id,
            Sub {
                open: true,
                ..Default::default()
            },
        );
        self.send(json!({"op": "sub", "id": id, "name": name, "params": params}))
            .await;
    }

    /// The next frame within `wait` (applied), or None.
    async fn recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(other) => panic!("the live connection closed: {other:?}"),
                Err(_) => return None,
            };
            let Ok(text) = msg.into_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                panic!("an unreadable frame: {text}")
            };
            assert_ne!(v["t"], "error", "the server refused a frame: {v}");
            self.m.dispatch(&v);
            if v["t"] == "result" {
                self.results.insert(v["call"].as_u64().unwrap(), v.clone());
            }
            return Some(v);
        }
    }

    /// Calls a method and waits for its answer (frames meanwhile are applied).
    async fn call(&mut self, id: u64, name: &str, params: Value) -> Value {
        self.send(json!({"op": "call", "id": id, "name": name, "params": params}))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.results.remove(&id) {
                return r;
            }
            assert!(Instant::now() < deadline, "no answer to call {id} {name}");
            self.recv(Duration::from_millis(200)).await;
        }
    }

    /// Reads frames until every open subscription's first reset came.
    async fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.recv(Duration::from_millis(150)).await.is_none() {
                return;
            }
        }
    }

    fn rows(&self, sub: u64) -> &BTreeMap<String, Value> {
        &self.m.subs[&sub].rows
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Edits drawn from the same page

/// Four editors (the member twice, their captain twice) send the edit form drawn from the same
/// page at once, each with other values: exactly one is saved, the others get a 409 page, and
/// the stored member is the winner's edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_edits_from_one_drawn_form_save_exactly_one() {
    let mut rng = seeded("racing_edits_from_one_drawn_form_save_exactly_one");
    let h = harness().await;
    for round in 0..25 {
        let (member, captain) =
            *rng.pick(&[("tuvok", "janeway"), ("data", "picard"), ("kira", "sisko")]);
        let was = h.draw(member).await.unwrap();
        let ranks = ["ensign", "lieutenant", "commander", "lieutenant commander"];
        let mut edits = Vec::new();
        for i in 0..4 {
            let by_captain = i % 2 == 0;
            let rank = match by_captain {
                true => rng.pick(&ranks).to_string(),
                false => was[1].clone(), // no one changes their own rank
            };
            let new = [
                format!("{member}-{round}-{i}"),
                rank,
                format!("species{}", rng.below(1000)),
            ];
            let who = if by_captain { captain } else { member };
            edits.push((who, new));
        }
        let tasks = edits
            .iter()
            .map(|(who, new)| {
                let (h, who, form) = (
                    h.clone(),
                    who.to_string(),
                    edit_form([&new[0], &new[1], &new[2]], &was),
                );
                let path = format!("/member/{member}");
                task!(h.post(Some(&who), &path, &form).await.status)
            })
            .collect();
        let statuses = race(tasks).await;
        let won: Vec<usize> = (0..4)
            .filter(|&i| statuses[i] == StatusCode::SEE_OTHER)
            .collect();
        // A 403 for the member's own edit once the captain's new rank is stored: see
        // `a_members_edit_over_a_new_rank_is_a_conflict_not_a_forbidden_rank_change`.
        for (i, s) in statuses.iter().enumerate() {
            let by_member = i % 2 == 1;
            assert!(
                [StatusCode::SEE_OTHER, StatusCode::CONFLICT].contains(s)
                    || (by_member && *s == StatusCode::FORBIDDEN),
                "round {round}: {statuses:?}"
            );
        }
        assert_eq!(won.len(), 1, "round {round}: {statuses:?} (from {was:?})");
        let stored = h.row("crewmembers", member).await.unwrap();
        let new = &edits[won[0]].1;
        assert_eq!(
            [&stored["name"], &stored["rank"], &stored["species"]],
            [&json!(new[0]), &json!(new[1]), &json!(new[2])],
            "round {round}: the stored member is not the acknowledged edit"
        );
    }
    no_server_panics();
}

/// The race of the test above, one step at a time: Tuvok draws his page; Janeway (his captain)
/// promotes him; Tuvok saves his form (a new species, the rank as drawn). Nothing is saved,
/// as it should be, but the page says "Only a member's captain changes their rank." (403), a
/// change Tuvok never asked for: the form's drawn rank is compared to the stored one only
/// after the rank rule ran against the stored rank. Expected: the 409 page saying someone
/// else changed this member since the form was drawn (as for the other fields).
#[tokio::test]

async fn a_members_edit_over_a_new_rank_is_a_conflict_not_a_forbidden_rank_change() {
    let h = harness().await;
    let was = h.draw("tuvok").await.unwrap();
    let r = h
        .post(
            Some("janeway"),
            "/member/tuvok",
            &edit_form(["Tuvok", "commander", "vulcan"], &was),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = h
        .post(
            Some("tuvok"),
            "/member/tuvok",
            &edit_form(["Tuvok", &was[1], "romulan"], &was),
        )
        .await;
    assert_eq!(
        h.row("crewmembers", "tuvok").await.unwrap()["species"],
        "vulcan"
    );
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", message_of(&r.body));
}

/// Write skew: a ship with two captains. Each demotes the other at once, each with the form
/// drawn while both were captains. One after the other, the second is no longer a captain and
/// is refused: at most one demotion may be saved, and the ship keeps a captain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn two_captains_demoting_each_other_at_once_leave_one_captain() {
    let mut rng = seeded("two_captains_demoting_each_other_at_once_leave_one_captain");
    let h = harness().await;
    let r = h
        .post(
            Some("janeway"),
            "/ship/voyager/crew",
            "name=Chakotay&rank=captain&species=human",
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let chakotay = h.app.member_named("Chakotay").await.id_str().to_string();
    let mut both = Vec::new();
    for round in 0..120 {
        h.set("crewmembers", "janeway", json!({"rank": "captain"}))
            .await;
        h.set("crewmembers", &chakotay, json!({"rank": "captain"}))
            .await;
        let was_j = h.draw("janeway").await.unwrap();
        let was_c = h.draw(&chakotay).await.unwrap();
        let (h1, h2) = (h.clone(), h.clone());
        let f1 = edit_form([&was_c[0], "commander", &was_c[2]], &was_c);
        let f2 = edit_form([&was_j[0], "commander", &was_j[2]], &was_j);
        let (p1, c2) = (format!("/member/{chakotay}"), chakotay.clone());
        let spin = rng.below(3);
        let statuses = race(vec![
            task!(h1.post(Some("janeway"), &p1, &f1).await.status),
            task!({
                for _ in 0..spin {
                    tokio::task::yield_now().await;
                }
                h2.post(Some(&c2), "/member/janeway", &f2).await.status
            }),
        ])
        .await;
        if statuses.iter().all(|s| *s == StatusCode::SEE_OTHER) {
            both.push(round);
        }
    }
    let captains: Vec<String> = h
        .rows("crewmembers")
        .await
        .into_iter()
        .filter(|m| m["rank"] == "captain" && m["starship_id"] == "voyager")
        .map(|m| key_str(&m["id"]))
        .collect();
    assert!(
        both.is_empty(),
        "rounds {both:?} of 120: both demotions were saved (Voyager's captains now: {captains:?}); \
         one after the other, the second would be refused (403)"
    );
    no_server_panics();
}

/// Captains of three ships (and the member) race to take a member who has no ship: the rule
/// saw no ship, and the move is written only if the member still has none at commit. One move
/// takes him (a later "move" to the ship he is on already may be saved too: serially, his new
/// captain may do that), and he is on that ship.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captains_racing_for_a_member_without_a_ship_take_him_once() {
    let mut rng = seeded("captains_racing_for_a_member_without_a_ship_take_him_once");
    let h = harness().await;
    for round in 0..20 {
        let member = *rng.pick(&["tuvok", "data", "kira", "neelix"]);
        h.set("crewmembers", member, json!({"starship_id": null}))
            .await;
        let movers = [
            ("janeway", "voyager"),
            ("picard", "enterprise"),
            ("sisko", "defiant"),
            (member, *rng.pick(&["voyager", "enterprise", "defiant"])),
        ];
        let tasks = movers
            .iter()
            .map(|(who, ship)| {
                let (h, who, form) = (h.clone(), who.to_string(), format!("ship_id={ship}"));
                let path = format!("/member/{member}/move");
                task!(h.post(Some(&who), &path, &form).await.status)
            })
            .collect();
        let at = h.db().position();
        let statuses = race(tasks).await;
        let won: Vec<_> = (0..4)
            .filter(|&i| statuses[i] == StatusCode::SEE_OTHER)
            .collect();
        // Serially: the first move takes him; a later one is allowed only as a no-op (his
        // new captain "moving" him to the ship he is on). So every saved move names the same
        // ship, and the member's ship was written once.
        let commits = history_of(h.db(), at, &["crewmembers"]).await;
        let targets: HashSet<&str> = won.iter().map(|&i| movers[i].1).collect();
        let stored = h.row("crewmembers", member).await.unwrap();
        if won.is_empty()
            || targets.len() != 1
            || commits.len() != 1
            || stored["starship_id"] != *targets.iter().next().unwrap()
        {
            let commits: Vec<String> = commits
                .into_iter()
                .map(|e| {
                    format!(
                        "seq {}: {} -> {}",
                        e.seq,
                        e.old.unwrap_or_default(),
                        e.new.unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "round {round}: {movers:?} answered {statuses:?}; the commits:\n{}",
                commits.join("\n")
            );
        }
    }
    no_server_panics();
}

// ---------------------------------------------------------------------------------------------
// 2. Edits, logs and assignments racing a delete

/// A new member; at once: their captain and they themselves each delete them, edit them (from
/// the drawn form), write to their log, and put them on away teams. One delete is saved; the
/// member is gone with everything that was theirs: no log entry and no away-team link left
/// behind (the log cascades, the links go), and no write of their row after the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn writes_racing_a_member_delete_leave_nothing_of_them() {
    let mut rng = seeded("writes_racing_a_member_delete_leave_nothing_of_them");
    let h = harness().await;
    let from = h.db().position();
    let mut deleted = Vec::new();
    for round in 0..30 {
        let name = format!("Ensign {round}");
        let r = h
            .post(
                Some("janeway"),
                "/ship/voyager/crew",
                &format!("name={}&rank=ensign&species=human", enc(&name)),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let id = h.app.member_named(&name).await.id_str().to_string();
        let cookie = h.cookie(&id).await; // the member's own session, before the race
        h.cookies.lock().unwrap().insert(id.clone(), cookie);
        let was = h.draw(&id).await.unwrap();
        let mut ops: Vec<(Option<String>, String, String)> = vec![
            (
                Some("janeway".into()),
                format!("/member/{id}/delete"),
                String::new(),
            ),
            (
                Some(id.clone()),
                format!("/member/{id}/delete"),
                String::new(),
            ),
            (
                Some("janeway".into()),
                format!("/member/{id}"),
                edit_form([&name, "lieutenant", "human"], &was),
            ),
            (
                Some(id.clone()),
                format!("/member/{id}"),
                edit_form([&format!("{name}!"), "ensign", "vulcan"], &was),
            ),
            (
                Some(id.clone()),
                "/ship/enterprise/away".into(),
                format!("member_id={id}"),
            ),
            (
                Some(id.clone()),
                "/ship/voyager/away".into(),
                format!("member_id={id}"),
            ),
        ];
        for i in 0..4 {
            let who = if i % 2 == 0 {
                id.clone()
            } else {
                "janeway".into()
            };
            ops.push((
                Some(who),
                format!("/member/{id}/log"),
                format!("text=entry+{i}"),
            ));
        }
        // Shuffle, so that no one always starts first.
        for i in (1..ops.len()).rev() {
            ops.swap(i, rng.below(i + 1));
        }
        let tasks = ops
            .into_iter()
            .map(|(who, path, form)| {
                let h = h.clone();
                task!((
                    path.clone(),
                    h.post(who.as_deref(), &path, &form).await.status
                ))
            })
            .collect();
        let replies: Vec<(String, StatusCode)> = race(tasks).await;
        let deletes = replies
            .iter()
            .filter(|(p, s)| p.ends_with("/delete") && *s == StatusCode::SEE_OTHER)
            .count();
        assert_eq!(deletes, 1, "round {round}: {replies:?}");
        deleted.push(id);
    }
    // What is left of the deleted members.
    let gone: HashSet<&String> = deleted.iter().collect();
    let members = members_now(&h).await;
    let logs = h.rows("logs").await;
    let links = h.rows(JOIN).await;
    let back: Vec<_> = deleted
        .iter()
        .filter(|d| members.contains_key(*d))
        .collect();
    let orphan_logs: Vec<_> = logs
        .iter()
        .filter(|l| gone.contains(&key_str(&l["crewmember_id"])))
        .collect();
    let orphan_links: Vec<_> = links
        .iter()
        .filter(|l| gone.contains(&key_str(&l["crewmember_id"])))
        .collect();
    // In commit order: nothing of a member is written after their delete.
    let mut after = Vec::new();
    let mut dead: HashSet<String> = HashSet::new();
    for e in history(h.db(), from).await {
        match e.table {
            "crewmembers" if e.new.is_none() => {
                dead.insert(e.key.clone());
            }
            "crewmembers" if dead.contains(&e.key) => {
                after.push(format!("member {} rewritten", e.key))
            }
            "logs" | JOIN => {
                if let Some(n) = &e.new {
                    let owner = key_str(&n["crewmember_id"]);
                    if dead.contains(&owner) {
                        after.push(format!(
                            "{} row {} of member {owner} written after the delete (seq {})",
                            e.table, e.key, e.seq
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    assert!(back.is_empty(), "deleted members came back: {back:?}");
    assert!(
        orphan_links.is_empty(),
        "away-team links of deleted members: {orphan_links:?}"
    );
    assert!(
        orphan_logs.is_empty() && after.is_empty(),
        "{} log entries of deleted members remain: {orphan_logs:?}\nin commit order: {after:?}",
        orphan_logs.len()
    );
    no_server_panics();
}

/// Assignments of the same member to the same away team, with releases and the member's
/// delete, all at once: the member is on each team at most once, and never after their
/// delete. Releases of a member deleted meanwhile are a 404 page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn away_team_assignments_racing_releases_and_a_delete() {
    let mut rng = seeded("away_team_assignments_racing_releases_and_a_delete");
    let h = harness().await;
    for round in 0..20 {
        let name = format!("Crewman {round}");
        let r = h
            .post(
                Some("picard"),
                "/ship/enterprise/crew",
                &format!("name={}&rank=crewman&species=human", enc(&name)),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let id = h.app.member_named(&name).await.id_str().to_string();
        let delete = rng.chance(0.6);
        let mut tasks = Vec::new();
        for i in 0..8 {
            let ship = *rng.pick(&["voyager", "enterprise", "defiant"]);
            let (h, id) = (h.clone(), id.clone());
            let release = i % 3 == 2;
            tasks.push(task!({
                match release {
                    true => {
                        h.post(
                            Some("picard"),
                            &format!("/ship/{ship}/away/{id}/release"),
                            "",
                        )
                        .await
                        .status
                    }
                    false => {
                        h.post(
                            Some("picard"),
                            &format!("/ship/{ship}/away"),
                            &format!("member_id={id}"),
                        )
                        .await
                        .status
                    }
                }
            }));
        }
        if delete {
            let (h, id) = (h.clone(), id.clone());
            tasks.push(task!(
                h.post(Some("picard"), &format!("/member/{id}/delete"), "")
                    .await
                    .status
            ));
        }
        let statuses = race(tasks).await;
        for s in &statuses {
            assert!(
                [
                    StatusCode::SEE_OTHER,
                    StatusCode::NOT_FOUND,
                    StatusCode::BAD_REQUEST
                ]
                .contains(s),
                "round {round}: {statuses:?}"
            );
        }
        let links: Vec<Value> = h
            .rows(JOIN)
            .await
            .into_iter()
            .filter(|l| l["crewmember_id"] == id.as_str())
            .collect();
        let mut pairs = HashSet::new();
        for l in &links {
            assert!(
                pairs.insert(l["starship_id"].to_string()),
                "round {round}: twice on a team: {links:?}"
            );
        }
        if delete {
            assert!(h.row("crewmembers", &id).await.is_none());
            assert!(
                links.is_empty(),
                "round {round}: links of a deleted member: {links:?}"
            );
        }
    }
    no_server_panics();
}

// ---------------------------------------------------------------------------------------------
// 3. Personal logs racing a move or a demotion

/// Janeway (Voyager's captain) writes to Tuvok's log over and over (forms and the `add_log`
/// method) and watches it live, while, at a random moment, she moves Tuvok to the Defiant or
/// demotes herself. The rule "only the member and their ship's captain" must hold at commit:
/// in the database's commit order, no entry of hers is written after the commit that took her
/// right away; every acknowledged entry is stored, every refused one is not; and her live
/// subscription is sent nothing committed after that commit, then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn log_writes_racing_a_move_or_a_demotion_hold_at_commit() {
    let mut rng = seeded("log_writes_racing_a_move_or_a_demotion_hold_at_commit");
    let h = harness().await;
    let addr = h.app.serve().await;
    let janeway = h.cookie("janeway").await;
    let tuvok = h.cookie("tuvok").await;
    let before = members_now(&h).await;
    let from = h.db().position();
    let mut acked: HashSet<String> = HashSet::new();
    let mut refused: HashSet<String> = HashSet::new();
    // Per round: (its first position, the log ids Janeway's subscription was sent, its end).
    let mut watched: Vec<(u64, Vec<String>, Option<Value>)> = Vec::new();
    for round in 0..20 {
        h.set(
            "crewmembers",
            "tuvok",
            json!({"starship_id": "voyager", "rank": "lieutenant commander"}),
        )
        .await;
        h.set(
            "crewmembers",
            "janeway",
            json!({"starship_id": "voyager", "rank": "captain"}),
        )
        .await;
        let start = h.db().position().seq();
        let mut watch = Ws::connect(addr, Some(&janeway)).await;
        watch.sub(1, "logs", json!({"member": "tuvok"})).await;
        while watch.m.subs[&1].rows.is_empty()
            && watch.recv(Duration::from_millis(300)).await.is_some()
        {}
        let demote = rng.chance(0.5);
        let delay = rng.below(6) as u64;
        let mut tasks = Vec::new();
        // Two form writers.
        for w in 0..2 {
            let h = h.clone();
            tasks.push(task!({
                let mut out = Vec::new();
                for i in 0..12 {
                    let text = format!("r{round}-form{w}-{i}");
                    let s = h
                        .post(
                            Some("janeway"),
                            "/member/tuvok/log",
                            &format!("text={text}"),
                        )
                        .await
                        .status;
                    assert!(
                        [StatusCode::SEE_OTHER, StatusCode::FORBIDDEN].contains(&s),
                        "{text}: {s}"
                    );
                    out.push((text, s == StatusCode::SEE_OTHER));
                }
                out
            }));
        }
        // The method writer.
        {
            let janeway = janeway.clone();
            tasks.push(task!({
                let mut ws = Ws::connect(addr, Some(&janeway)).await;
                let mut out = Vec::new();
                for i in 0..8u64 {
                    let text = format!("r{round}-live-{i}");
                    let r = ws
                        .call(i, "add_log", json!({"member": "tuvok", "text": text}))
                        .await;
                    assert!(
                        r.get("ok").is_some() || r["error"]["code"] == "forbidden",
                        "{r}"
                    );
                    out.push((text, r.get("ok").is_some()));
                }
                out
            }));
        }
        // Tuvok writes too (always allowed).
        {
            let h = h.clone();
            let _ = &tuvok;
            tasks.push(task!({
                let mut out = Vec::new();
                for i in 0..3 {
                    let text = format!("r{round}-own-{i}");
                    let s = h
                        .post(Some("tuvok"), "/member/tuvok/log", &format!("text={text}"))
                        .await
                        .status;
                    out.push((text, s == StatusCode::SEE_OTHER));
                }
                out
            }));
        }
        // The revocation.
        {
            let h = h.clone();
            tasks.push(task!({
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let r = match demote {
                    true => {
                        h.post(
                            Some("janeway"),
                            "/member/janeway",
                            "name=Kathryn+Janeway&rank=commodore&species=human",
                        )
                        .await
                    }
                    false => {
                        h.post(Some("janeway"), "/member/tuvok/move", "ship_id=defiant")
                            .await
                    }
                };
                assert_eq!(
                    r.status,
                    StatusCode::SEE_OTHER,
                    "the revocation: {}",
                    message_of(&r.body)
                );
                Vec::new()
            }));
        }
        // Janeway's page meanwhile.
        let reader = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(8);
            while watch.m.subs[&1].open && Instant::now() < deadline {
                watch.recv(Duration::from_millis(100)).await;
            }
            watch
        });
        for out in race(tasks).await {
            for (text, ok) in out {
                if ok {
                    acked.insert(text);
                } else {
                    refused.insert(text);
                }
            }
        }
        let watch = reader.await.unwrap();
        let sub = &watch.m.subs[&1];
        let ids = sub.seen.iter().map(|d| key_str(&d["id"])).collect();
        watched.push((start, ids, sub.ended.clone()));
    }
    // Replay the commits: the members as they were at each commit of a log entry.
    let mut members = before;
    let mut log_seq: HashMap<String, u64> = HashMap::new();
    let mut stored: HashSet<String> = HashSet::new();
    let mut late = Vec::new();
    let mut revoked_at: Vec<u64> = Vec::new(); // commits after which Janeway may not write
    let hist = history(h.db(), from).await;
    let mut could = true;
    for e in &hist {
        match (e.table, &e.new) {
            ("crewmembers", Some(n)) => {
                members.insert(e.key.clone(), n.clone());
            }
            ("crewmembers", None) => {
                members.remove(&e.key);
            }
            ("logs", Some(n)) if e.old.is_none() => {
                let (author, owner) = (key_str(&n["author"]), key_str(&n["crewmember_id"]));
                let text = key_str(&n["text"]);
                log_seq.insert(key_str(&n["id"]), e.seq);
                stored.insert(text.clone());
                if !may_write(&members, &author, &owner) {
                    late.push(format!(
                        "seq {}: `{text}` by {author} (janeway now: {}, {}; tuvok's ship: {})",
                        e.seq,
                        members["janeway"]["rank"],
                        members["janeway"]["starship_id"],
                        members["tuvok"]["starship_id"]
                    ));
                }
            }
            _ => {}
        }
        let can = may_write(&members, "janeway", "tuvok");
        if could && !can {
            revoked_at.push(e.seq);
        }
        could = can;
    }
    let lost: Vec<_> = acked.difference(&stored).collect();
    let ghost: Vec<_> = refused.intersection(&stored).collect();
    assert!(lost.is_empty(), "acknowledged entries not stored: {lost:?}");
    assert!(ghost.is_empty(), "refused entries stored: {ghost:?}");
    // The live leak: what Janeway's page was sent after the commit that took her right away.
    let mut leaks = Vec::new();
    for (round, (start, ids, ended)) in watched.iter().enumerate() {
        let revoke = revoked_at.iter().find(|s| *s > start).copied();
        assert!(
            ended.as_ref().is_some_and(|e| e["code"] == "forbidden"),
            "round {round}: Janeway's subscription did not end: {ended:?}"
        );
        for id in ids {
            if let (Some(seq), Some(revoke)) = (log_seq.get(id), revoke) {
                if *seq > revoke {
                    leaks.push(format!(
                        "round {round}: entry {id} (seq {seq}) after the revocation (seq {revoke})"
                    ));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "Janeway's page was sent entries committed after she lost the right: {leaks:?}"
    );
    assert!(
        late.is_empty(),
        "{} log entries committed by someone no longer allowed:\n{}",
        late.len(),
        late.join("\n")
    );
    no_server_panics();
}

/// The same log entry deleted at once by its member and their captain, over the live
/// connection (the `delete_log` method), twice each, while the member may be deleted too:
/// one delete is answered ok, the others `not_found` (a typed refusal, never `internal`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_log_entry_deleted_at_once_is_deleted_once() {
    let mut rng = seeded("one_log_entry_deleted_at_once_is_deleted_once");
    let h = harness().await;
    let addr = h.app.serve().await;
    let janeway = h.cookie("janeway").await;
    for round in 0..15 {
        let name = format!("Yeoman {round}");
        let r = h
            .post(
                Some("janeway"),
                "/ship/voyager/crew",
                &format!("name={}&rank=yeoman&species=human", enc(&name)),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let id = h.app.member_named(&name).await.id_str().to_string();
        let own = h.cookie(&id).await;
        let mut ws = Ws::connect(addr, Some(&own)).await;
        let r = ws
            .call(1, "add_log", json!({"member": id, "text": "to be deleted"}))
            .await;
        let entry = r["ok"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string();
        drop(ws);
        let delete_member = rng.chance(0.3);
        let mut tasks = Vec::new();
        for (i, cookie) in [&own, &janeway, &own, &janeway].into_iter().enumerate() {
            let (cookie, entry) = (cookie.clone(), entry.clone());
            tasks.push(task!({
                let mut ws = Ws::connect(addr, Some(&cookie)).await;
                ws.call(i as u64, "delete_log", json!({"id": entry})).await
            }));
        }
        if delete_member {
            let (h, id) = (h.clone(), id.clone());
            tasks.push(task!({
                let r = h
                    .post(Some("janeway"), &format!("/member/{id}/delete"), "")
                    .await;
                json!({"member_delete": r.status.as_u16()})
            }));
        }
        let answers: Vec<Value> = race(tasks).await;
        let oks = answers.iter().filter(|a| a.get("ok").is_some()).count();
        for a in &answers {
            let code = a["error"]["code"].as_str();
            assert!(
                a.get("ok").is_some()
                    || a.get("member_delete").is_some()
                    || matches!(code, Some("not_found" | "forbidden")),
                "round {round}: {answers:?}"
            );
        }
        assert!(oks <= 1, "round {round}: deleted {oks} times: {answers:?}");
        assert!(delete_member || oks == 1, "round {round}: {answers:?}");
        assert!(h.row("logs", &entry).await.is_none(), "round {round}");
    }
    no_server_panics();
}

/// Janeway adds members to Voyager's crew, one form after another, while she demotes herself
/// (from another tab) at a random moment. "Adding a member to a ship's crew: that ship's
/// captain", decided at commit: in commit order, no member joins Voyager after the commit of
/// her demotion (she is Voyager's only captain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn crew_added_racing_the_captains_demotion_holds_at_commit() {
    let mut rng = seeded("crew_added_racing_the_captains_demotion_holds_at_commit");
    let h = harness().await;
    let mut late = Vec::new();
    for round in 0..20 {
        h.set("crewmembers", "janeway", json!({"rank": "captain"}))
            .await;
        let at = h.db().position();
        let delay = rng.below(4) as u64;
        let (h1, h2) = (h.clone(), h.clone());
        let adds = race(vec![
            task!({
                let mut n = 0usize;
                for i in 0..12 {
                    let r = h1
                        .post(
                            Some("janeway"),
                            "/ship/voyager/crew",
                            &format!("name=Crewman+{round}-{i}&rank=crewman&species=human"),
                        )
                        .await;
                    n += (r.status == StatusCode::SEE_OTHER) as usize;
                }
                n
            }),
            task!({
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let r = h2
                    .post(
                        Some("janeway"),
                        "/member/janeway",
                        "name=Kathryn+Janeway&rank=admiral&species=human",
                    )
                    .await;
                assert_eq!(r.status, StatusCode::SEE_OTHER);
                0usize
            }),
        ])
        .await;
        let hist = history_of(h.db(), at, &["crewmembers"]).await;
        let demoted = hist
            .iter()
            .find(|e| e.key == "janeway" && e.new.as_ref().is_some_and(|n| n["rank"] == "admiral"))
            .map(|e| e.seq)
            .unwrap();
        for e in hist
            .iter()
            .filter(|e| e.table == "crewmembers" && e.old.is_none() && e.seq > demoted)
        {
            late.push(format!(
                "round {round}: {} joined at seq {} after the demotion at seq {demoted} ({} added)",
                e.new.as_ref().unwrap()["name"],
                e.seq,
                adds[0]
            ));
        }
    }
    assert!(
        late.is_empty(),
        "members added by a captain no longer captain:\n{}",
        late.join("\n")
    );
    no_server_panics();
}

// ---------------------------------------------------------------------------------------------
// 4. A ship deleted while members are added, moved and assigned onto it

/// A ship (with its captain) is deleted (through the library: the app has no delete form)
/// while its captain adds members to it, takes members without a ship onto it, and puts
/// members on its away team. Whatever `on_delete` says must hold: the crew's `starship_id` is
/// nullified, and no member nor link points at the deleted ship afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_ship_deleted_while_members_join_it_leaves_no_orphans() {
    let mut rng = seeded("a_ship_deleted_while_members_join_it_leaves_no_orphans");
    let h = harness().await;
    let mut orphans = Vec::new();
    for round in 0..15 {
        let ship = format!("excelsior{round}");
        let captain = format!("sulu{round}");
        Starship {
            id: Some(ship.as_str().into()),
            name: ship.clone(),
            category: "Excelsior".into(),
            x: 1.0,
            y: 1.0,
        }
        .create(h.db())
        .await
        .unwrap();
        Crewmember {
            id: Some(captain.as_str().into()),
            starship_id: Some(ship.as_str().into()),
            ..Crewmember::new("Sulu", "captain", "human")
        }
        .create(h.db())
        .await
        .unwrap();
        let mut free = Vec::new();
        for i in 0..45 {
            let m = Crewmember::new(&format!("Free {round}-{i}"), "ensign", "human")
                .create(h.db())
                .await
                .unwrap();
            free.push(m.id_str().to_string());
        }
        // Three clients keep sending forms onto the ship until it is gone.
        let mut tasks = Vec::new();
        for kind in 0..3 {
            let (h, ship, captain) = (h.clone(), ship.clone(), captain.clone());
            let free: Vec<String> = free.iter().skip(kind).step_by(3).cloned().collect();
            tasks.push(task!({
                let mut last = StatusCode::OK;
                for m in free {
                    let r = match kind {
                        0 => {
                            h.post(
                                Some(&captain),
                                &format!("/member/{m}/move"),
                                &format!("ship_id={ship}"),
                            )
                            .await
                        }
                        1 => {
                            h.post(
                                Some(&captain),
                                &format!("/ship/{ship}/crew"),
                                &format!("name=New+{m}&rank=ensign&species=human"),
                            )
                            .await
                        }
                        _ => {
                            h.post(
                                Some(&m),
                                &format!("/ship/{ship}/away"),
                                &format!("member_id={m}"),
                            )
                            .await
                        }
                    };
                    last = r.status;
                    if r.status != StatusCode::SEE_OTHER {
                        break;
                    }
                }
                last
            }));
        }
        let at = h.db().position();
        let delay = rng.below(6) as u64;
        {
            let (h, ship) = (h.clone(), ship.clone());
            tasks.push(task!({
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let mut s = Starship::get(h.db(), ship.as_str()).await.unwrap().unwrap();
                s.delete(h.db()).await.unwrap();
                StatusCode::OK
            }));
        }
        let statuses = race(tasks).await;
        assert!(h.row("starships", &ship).await.is_none());
        let on: Vec<String> = h
            .rows("crewmembers")
            .await
            .into_iter()
            .filter(|m| m["starship_id"] == ship.as_str())
            .map(|m| format!("{} ({})", m["name"], m["id"]))
            .collect();
        // Whatever is left, the pages still draw (no 500 for a member of a missing ship).
        for m in h
            .rows("crewmembers")
            .await
            .into_iter()
            .filter(|m| m["starship_id"] == ship.as_str())
        {
            let page = h.app.get(&format!("/member/{}", key_str(&m["id"]))).await;
            assert_eq!(
                page.status,
                StatusCode::OK,
                "the page of a member of a deleted ship: {}",
                message_of(&page.body)
            );
        }
        assert_eq!(h.app.get("/").await.status, StatusCode::OK);
        let links: Vec<Value> = h
            .rows(JOIN)
            .await
            .into_iter()
            .filter(|l| l["starship_id"] == ship.as_str())
            .collect();
        assert!(
            links.is_empty(),
            "round {round}: away-team links to the deleted ship: {links:?}"
        );
        if !on.is_empty() {
            // In commit order: the ship's delete, then the member's write onto it.
            let hist = history_of(h.db(), at, &["starships", "crewmembers"]).await;
            let deleted_at = hist
                .iter()
                .find(|e| e.table == "starships" && e.new.is_none())
                .map(|e| e.seq);
            let after: Vec<String> = hist
                .iter()
                .filter(|e| e.table == "crewmembers" && Some(e.seq) > deleted_at)
                .filter(|e| {
                    e.new
                        .as_ref()
                        .is_some_and(|n| n["starship_id"] == ship.as_str())
                })
                .map(|e| {
                    format!(
                        "seq {}: {} -> {}",
                        e.seq,
                        e.old.clone().unwrap_or_default(),
                        e.new.clone().unwrap_or_default()
                    )
                })
                .collect();
            orphans.push(format!(
                "round {round}: {on:?} on the deleted {ship} (last replies: {statuses:?}); ship deleted at seq {deleted_at:?}, then {after:?}"
            ));
        }
    }
    assert!(
        orphans.is_empty(),
        "members on a deleted ship:\n{}",
        orphans.join("\n")
    );
    no_server_panics();
}

// ---------------------------------------------------------------------------------------------
// 5. Live pages under a storm of forms

/// A random operation of the storm, as a plausible user would send it (the actor read from the
/// rows a moment ago: races make some of them refused, which must be 4xx pages).
async fn storm_op(h: &H, rng: &mut Rng, made: &std::sync::Mutex<Vec<String>>, tag: &str) {
    let ships = ["voyager", "enterprise", "defiant"];
    let members = members_now(h).await;
    let ids: Vec<String> = members.keys().cloned().collect();
    let captain_of = |ship: &Value| {
        members
            .values()
            .find(|m| m["rank"] == "captain" && m["starship_id"] == *ship && !ship.is_null())
            .map(|m| key_str(&m["id"]))
    };
    let Some(x) = ids.get(rng.below(ids.len())).cloned() else {
        return;
    };
    let xm = &members[&x];
    let xcap = captain_of(&xm["starship_id"]);
    // The member or their captain.
    let actor = match (&xcap, rng.chance(0.5)) {
        (Some(c), true) => c.clone(),
        _ => x.clone(),
    };
    let seeded = [
        "janeway", "picard", "sisko", "tuvok", "neelix", "data", "troi", "dax", "kira",
    ];
    match rng.below(11) {
        0 => {
            let ship = *rng.pick(&ships);
            if let Some(c) = captain_of(&json!(ship)) {
                let name = format!("{tag}-{}", rng.below(1_000_000));
                let species = *rng.pick(&["human", "vulcan", "bajoran", "klingon"]);
                let r = h
                    .post(
                        Some(&c),
                        &format!("/ship/{ship}/crew"),
                        &format!("name={name}&rank=ensign&species={species}"),
                    )
                    .await;
                if r.status == StatusCode::SEE_OTHER {
                    made.lock().unwrap().push(name);
                }
            }
        }
        1 | 2 => {
            if let Some(was) = h.draw(&x).await {
                let rank = if actor == x || was[1] == "captain" {
                    was[1].clone()
                } else {
                    rng.pick(&["ensign", "lieutenant", "commander"]).to_string()
                };
                let species = *rng.pick(&["human", "vulcan", "bajoran", "klingon", "trill"]);
                let form = edit_form([&was[0].to_string(), &rank, species], &was);
                h.post(Some(&actor), &format!("/member/{x}"), &form).await;
            }
        }
        3 => {
            let ship = *rng.pick(&ships);
            h.post(
                Some(&actor),
                &format!("/member/{x}/move"),
                &format!("ship_id={ship}"),
            )
            .await;
        }
        4 => {
            h.post(Some(&actor), &format!("/member/{x}/remove"), "")
                .await;
        }
        5 => {
            // Created members only, and seldom: the seeded crews keep the storm going.
            if !seeded.contains(&x.as_str()) && rng.chance(0.5) {
                h.post(Some(&actor), &format!("/member/{x}/delete"), "")
                    .await;
            }
        }
        6 => {
            let ship = *rng.pick(&ships);
            h.post(
                Some(&x),
                &format!("/ship/{ship}/away"),
                &format!("member_id={x}"),
            )
            .await;
        }
        7 => {
            let ship = *rng.pick(&ships);
            h.post(Some(&x), &format!("/ship/{ship}/away/{x}/release"), "")
                .await;
        }
        8 => {
            static POINTS: AtomicUsize = AtomicUsize::new(1);
            let points = POINTS.fetch_add(1, Ordering::SeqCst) * 13 % 10_007;
            h.post(
                None,
                "/leaderboard",
                &format!("player={tag}&points={points}"),
            )
            .await;
        }
        _ => {
            let text = format!("{tag}-{}", rng.below(1_000_000));
            h.post(
                Some(&actor),
                &format!("/member/{x}/log"),
                &format!("text={text}"),
            )
            .await;
        }
    }
}

/// Pages watch every publication (ships, members, each ship's crew and away team, the counts,
/// the species, members' own logs and rows) over the WebSocket while 8 clients send 60 random
/// forms each. Once quiet, each page's rows, rebuilt from the frames as client.js applies them,
/// are exactly what a fresh read shows; a member watching their own log was only ever sent
/// entries of their own log; every reply was a redirect or a 4xx page; the server still
/// answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pages_end_with_what_a_fresh_read_shows() {
    let rng = seeded("live_pages_end_with_what_a_fresh_read_shows");
    let seed = rng.0;
    let h = harness().await;
    let addr = h.app.serve().await;
    let ships = ["voyager", "enterprise", "defiant"];
    // The anonymous page: everything public.
    let mut public = Ws::connect(addr, None).await;
    public.sub(1, "ships", json!(null)).await;
    public.sub(2, "members", json!(null)).await;
    public.sub(3, "ship_counts", json!(null)).await;
    public.sub(4, "species", json!(null)).await;
    public.sub(5, "map", json!({})).await;
    public.sub(6, "leaderboard", json!(null)).await;
    for (i, s) in ships.iter().enumerate() {
        public.sub(10 + i as u64, "crew", json!({"ship": s})).await;
        public.sub(20 + i as u64, "away", json!({"ship": s})).await;
    }
    public.settle().await;
    // Members watching their own log and row.
    let watchers = ["tuvok", "data", "kira", "neelix", "troi"];
    let mut own: Vec<(&str, Ws)> = Vec::new();
    for w in watchers {
        let mut ws = Ws::connect(addr, Some(&h.cookie(w).await)).await;
        ws.sub(1, "logs", json!({"member": w})).await;
        ws.sub(2, "member", json!({"member": w})).await;
        ws.sub(3, "missions", json!({"member": w})).await;
        ws.settle().await;
        own.push((w, ws));
    }
    // Readers keep reading during the storm (as a browser does).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawn_reader = |mut ws: Ws, stop: Arc<std::sync::atomic::AtomicBool>| {
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                ws.recv(Duration::from_millis(50)).await;
            }
            ws
        })
    };
    let public_reader = spawn_reader(public, stop.clone());
    let own_readers: Vec<(&str, tokio::task::JoinHandle<Ws>)> = own
        .into_iter()
        .map(|(w, ws)| (w, spawn_reader(ws, stop.clone())))
        .collect();

    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = (0..8u64)
        .map(|t| {
            let (h, made) = (h.clone(), made.clone());
            task!({
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                for _ in 0..60 {
                    storm_op(&h, &mut rng, &made, &format!("t{t}")).await;
                }
            })
        })
        .collect();
    // Two pages drag ships on the map and write logs over the live connection meanwhile: each
    // answer is ok or a typed refusal a user's page can show (never `internal`).
    let mut tasks = tasks;
    for (t, who) in ["janeway", "tuvok"].into_iter().enumerate() {
        let cookie = h.cookie(who).await;
        let h2 = h.clone();
        tasks.push(task!({
            let mut rng = Rng(seed ^ (100 + t as u64));
            let mut ws = Ws::connect(addr, Some(&cookie)).await;
            for i in 0..25u64 {
                let r = match rng.below(2) {
                    0 => {
                        let ship = *rng.pick(&["voyager", "enterprise", "defiant"]);
                        ws.call(i, "move_ship", json!({"ship": ship, "x": rng.below(800) as f64, "y": rng.below(500) as f64})).await
                    }
                    _ => {
                        let ids: Vec<String> = members_now(&h2).await.into_keys().collect();
                        let m = ids[rng.below(ids.len())].clone();
                        ws.call(i, "add_log", json!({"member": m, "text": format!("live {t}-{i}")})).await
                    }
                };
                let code = r["error"]["code"].as_str();
                assert!(
                    r.get("ok").is_some() || matches!(code, Some("forbidden" | "not_found" | "rate_limited")),
                    "a method's answer: {r}"
                );
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }));
    }
    race(tasks).await;
    println!(
        "storm: {:?}, {} members added",
        started.elapsed(),
        made.lock().unwrap().len()
    );
    stop.store(true, Ordering::SeqCst);
    let mut public = public_reader.await.unwrap();
    let mut own: Vec<(&str, Ws)> = Vec::new();
    for (w, r) in own_readers {
        own.push((w, r.await.unwrap()));
    }

    // Quiet now: the fresh reads.
    let members = h.rows("crewmembers").await;
    let links = h.rows(JOIN).await;
    let logs = h.rows("logs").await;
    let by = |rows: &[Value], pred: &dyn Fn(&Value) -> bool| -> BTreeMap<String, Value> {
        rows.iter()
            .filter(|r| pred(r))
            .map(|r| (r["id"].to_string(), r.clone()))
            .collect()
    };
    let groups = |field: &str| -> BTreeMap<String, Value> {
        let mut n: BTreeMap<String, (Value, u64)> = BTreeMap::new();
        for m in &members {
            n.entry(m[field].to_string())
                .or_insert((m[field].clone(), 0))
                .1 += 1;
        }
        n.into_iter()
            .map(|(k, (g, c))| (k, json!({"group": g, "reduction": c})))
            .collect()
    };
    let mut scores = h.rows("scores").await;
    scores.sort_by_key(|s| std::cmp::Reverse(s["points"].as_i64()));
    scores.truncate(5);
    let starships = h.rows("starships").await;
    let mut expected: Vec<(u64, BTreeMap<String, Value>)> = vec![
        (1, by(&starships, &|_| true)),
        (5, by(&starships, &|_| true)),
        (6, by(&scores, &|_| true)),
        (2, by(&members, &|_| true)),
        (3, groups("starship_id")),
        (4, groups("species")),
    ];
    for (i, s) in ships.iter().enumerate() {
        expected.push((10 + i as u64, by(&members, &|m| m["starship_id"] == *s)));
        expected.push((20 + i as u64, by(&links, &|l| l["starship_id"] == *s)));
    }
    let mut diffs = Vec::new();
    wait_for(&mut public, &expected, "public", &mut diffs).await;
    for (w, ws) in own.iter_mut() {
        let row: BTreeMap<String, Value> = by(&members, &|m| m["id"] == *w);
        let expected = vec![
            (1, by(&logs, &|l| l["crewmember_id"] == *w)),
            (2, row),
            (3, by(&links, &|l| l["crewmember_id"] == *w)),
        ];
        wait_for(ws, &expected, w, &mut diffs).await;
        println!(
            "{w}: {} log entries, {} sent",
            expected[0].1.len(),
            ws.m.subs[&1].seen.len()
        );
        let foreign: Vec<_> = ws.m.subs[&1]
            .seen
            .iter()
            .filter(|l| l["crewmember_id"] != *w)
            .collect();
        assert!(
            foreign.is_empty(),
            "{w} was sent others' log entries: {foreign:?}"
        );
    }
    let sizes: Vec<(u64, usize, usize)> = expected
        .iter()
        .map(|(s, want)| (*s, want.len(), public.m.subs[s].seen.len()))
        .collect();
    println!("public page (sub, rows, documents sent): {sizes:?}");
    assert!(
        diffs.is_empty(),
        "live pages differ from a fresh read:\n{}",
        diffs.join("\n")
    );

    // Still answering at once.
    let t = Instant::now();
    assert_eq!(h.app.get("/").await.status, StatusCode::OK);
    public.send(json!({"op": "ping"})).await;
    while public.recv(Duration::from_secs(2)).await.expect("a pong")["t"] != "pong" {}
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "slow after the storm: {:?}",
        t.elapsed()
    );
    no_server_panics();
}

/// Reads frames until each subscription's rows are `expected` (3 s of quiet at most); the
/// differences left are pushed to `diffs`.
async fn wait_for(
    ws: &mut Ws,
    expected: &[(u64, BTreeMap<String, Value>)],
    who: &str,
    diffs: &mut Vec<String>,
) {
    let same = |ws: &Ws, sub: u64, want: &BTreeMap<String, Value>| {
        let have = ws.rows(sub);
        let norm = |m: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
            m.iter().map(|(k, v)| (k.clone(), strip(v))).collect()
        };
        norm(have) == norm(want)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while expected
        .iter()
        .any(|(s, want)| ws.m.subs[s].open && !same(ws, *s, want))
        && Instant::now() < deadline
    {
        ws.recv(Duration::from_millis(200)).await;
    }
    for (s, want) in expected {
        let sub = &ws.m.subs[s];
        if sub.ended.is_some() {
            diffs.push(format!("{who} sub {s} ended: {:?}", sub.ended));
        } else if !same(ws, *s, want) {
            let have = ws.rows(*s);
            let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
            let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).collect();
            let stale: Vec<_> = want
                .iter()
                .filter(|(k, v)| have.get(*k).is_some_and(|h| strip(h) != strip(v)))
                .map(|(k, v)| format!("{k}: live {} vs stored {}", have[k], v))
                .collect();
            diffs.push(format!(
                "{who} sub {s}: missing {missing:?}, extra {extra:?}, stale {stale:?}"
            ));
        }
    }
}

/// A document as compared: stored fields only (a live aggregate row may carry its key twice).
fn strip(v: &Value) -> Value {
    v.clone()
}
