//! An adversarial review of remodel-web: attacks through the rules, guards and cursors, the
//! protocol's frames and limits, the handshake's origin check, and the JavaScript client's
//! handling of odd frame sequences (run in Node, when it is installed).
//!
//! Tests marked `#[ignore = "BUG: …"]` fail today: each shows a bug (see the report). The
//! others are attacks that are refused correctly and stay as regression tests.

mod common;

use common::{handshake, may_read, start, start_with, App, Client, User};
use futures::{SinkExt, StreamExt};
use remodel::{json, Value};
use remodel_web::{Limits, Live, NoParams, Web};
use serde::Deserialize;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------
// Shared helpers

/// Bytes allocated now by the whole test process (to measure what a connection costs).
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The memory test runs alone (the others share); every test takes one of these first.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    SERIAL.read().await
}

async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    SERIAL.write().await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The next frame within `wait`, or `None` (nothing came, or the connection closed).
async fn recv_within(c: &mut Client, wait: Duration) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(wait, c.ws.next()).await.ok()??;
        match msg {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Sends a ping and reads every frame until its pong: what was queued before the ping.
async fn drain(c: &mut Client) -> Vec<Value> {
    c.send(json!({"op": "ping"})).await;
    let mut got = Vec::new();
    loop {
        let v = c.recv().await.expect("the connection is open");
        if v["t"] == "pong" {
            return got;
        }
        got.push(v);
    }
}

/// The server still serves: a new client subscribes and gets its rows.
async fn still_serves(app: &App) {
    let mut c = Client::connect(app, "uhura").await;
    c.sub(1, "members", json!(null)).await;
    c.until(|v| v["t"] == "reset").await;
    assert!(!c.docs(1).is_empty());
}

/// Serves `web` on 127.0.0.1, on the database of `base` (the test app of `common`).
async fn serve_on(base: &App, web: Web<User>) -> App {
    common::serve(&base.db, web).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    member: String,
}

// ---------------------------------------------------------------------------------------
// Leaks through rules and guards

/// Spock leaves Kirk's ship, then writes to his log: that entry is Janeway's to read, never
/// Kirk's. The move is committed before the entry, so the subscription must act on the move
/// (ask the publication again, which refuses) before it sends anything committed after it.
///
/// Reproduction: the subscription has just sent a frame and sleeps out its window; the move
/// and the entry both arrive meanwhile; `follow` then `select!`s between the feed and the
/// guards at random, and when the feed wins it drains every ready change into one frame
/// (the entry among them) before it looks at the guards again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_committed_after_a_guard_change_reaches_the_old_viewer() {
    let _serial = shared().await;
    let app = start_with(Limits::default(), Duration::from_millis(300)).await;
    let db = app.db.clone();
    let mut kirk = Client::connect(&app, "kirk").await;
    for trial in 0..12u32 {
        let sub = trial + 1;
        kirk.sub(sub, "logs", json!({"member": "spock"})).await;
        kirk.until(|v| v["t"] == "reset" && v["sub"] == sub).await;
        // A change: the subscription sends it, then waits out its window.
        db.table("logs")
            .insert(json!({"id": format!("ok{trial}"), "owner": "spock", "text": "ok", "at": 1}))
            .await
            .unwrap();
        kirk.until(|v| v["t"] == "change" && v["sub"] == sub).await;
        // Within the window: Spock moves to Voyager, then writes.
        db.table("members")
            .get("spock")
            .update(json!({"ship": "voyager"}))
            .await
            .unwrap();
        let secret = format!("secret{trial}");
        db.table("logs")
            .insert(json!({"id": secret, "owner": "spock", "text": "for Janeway only", "at": 2}))
            .await
            .unwrap();
        loop {
            let v = kirk.recv().await.expect("open");
            assert!(
                !v.to_string().contains("for Janeway only"),
                "trial {trial}: Kirk got an entry written after Spock left his ship: {v}"
            );
            if v["t"] == "end" && v["sub"] == sub {
                assert_eq!(code(&v), "forbidden");
                break;
            }
        }
        db.table("members")
            .get("spock")
            .update(json!({"ship": "enterprise"}))
            .await
            .unwrap();
    }
}

/// A publication decides (reads the member's ship), then takes a while (a slow database);
/// the member moves meanwhile. Its guards are opened only after it returned, "from here on":
/// the move is never seen, and the subscription follows the log forever under a decision
/// that no longer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_while_the_publication_decides_is_not_missed() {
    let _serial = shared().await;
    let base = start(Limits::default()).await;
    let web = Web::<User>::builder(base.db.clone())
        .window(Duration::from_millis(10))
        .publish("slow_logs", |caller, p: Member| async move {
            let ship = may_read(&caller, &p.member).await?;
            // The decision is made; the rest of the publication's work takes a while.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let db = &caller.db;
            let member = p.member.clone();
            let logs = db.table("logs").get_all([p.member.as_str()]).index("owner");
            Ok(Live::new(logs.changes())
                .rule(move |row| row["owner"] == member.as_str())
                .guard(db.table("members").get(p.member.as_str()).changes())
                .guard(db.table("ships").get(ship.as_str()).changes()))
        })
        .build();
    let app = serve_on(&base, web).await;
    let mut kirk = Client::connect(&app, "kirk").await;
    kirk.sub(1, "slow_logs", json!({"member": "spock"})).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // While the publication works: Spock leaves Kirk's ship.
    app.db
        .table("members")
        .get("spock")
        .update(json!({"ship": "voyager"}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut ended = false;
    while !ended && Instant::now() < deadline {
        if let Some(v) = recv_within(&mut kirk, Duration::from_millis(200)).await {
            ended = v["t"] == "end" && v["sub"] == 1;
        }
        app.db
            .table("logs")
            .insert(json!({"owner": "spock", "text": "for Janeway only", "at": 1}))
            .await
            .unwrap();
        if let Some(v) = recv_within(&mut kirk, Duration::from_millis(200)).await {
            assert!(
                !v.to_string().contains("for Janeway only"),
                "Kirk follows Spock's log after Spock left his ship: {v}"
            );
            ended = v["t"] == "end" && v["sub"] == 1;
        }
    }
    assert!(ended, "the subscription should have ended (forbidden)");
}

/// Kirk resumes from a cursor taken while he was Spock's captain. In between, Spock served on
/// Voyager, wrote an entry for Janeway and deleted it, then came back. The resumed changes
/// replay that history: the entry's insert and its delete land in different frames (a frame
/// holds at most 4,096 changes), so Kirk receives an entry written while he was not allowed to
/// read the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_does_not_replay_what_was_written_while_the_caller_was_not_allowed() {
    for name in ["logs", "shared_logs"] {
        no_replay_after_a_resume(name).await;
    }
}

async fn no_replay_after_a_resume(name: &str) {
    let _serial = shared().await;
    let app = start(Limits::default()).await;
    let db = app.db.clone();
    let mut kirk = Client::connect(&app, "kirk").await;
    kirk.sub(1, name, json!({"member": "spock"})).await;
    kirk.until(|v| v["t"] == "reset").await;
    let cursor = kirk.cursor(1).expect("a resumable cursor");
    drop(kirk);

    let members = db.table("members");
    members
        .get("spock")
        .update(json!({"ship": "voyager"}))
        .await
        .unwrap();
    db.table("logs")
        .insert(json!({"id": "secret", "owner": "spock", "text": "for Janeway only", "at": 0}))
        .await
        .unwrap();
    let pad: Vec<Value> = (0..4200)
        .map(|i| json!({"id": format!("p{i}"), "owner": "spock", "text": "routine", "at": i + 1}))
        .collect();
    db.table("logs").insert_many(pad).await.unwrap();
    db.table("logs").get("secret").delete().await.unwrap();
    members
        .get("spock")
        .update(json!({"ship": "enterprise"}))
        .await
        .unwrap();

    // Kirk is Spock's captain again, and resumes.
    let mut kirk = Client::connect(&app, "kirk").await;
    kirk.send(json!({"op": "sub", "id": 1, "name": name, "params": {"member": "spock"}, "cursor": cursor}))
        .await;
    while kirk.docs(1).len() < 4200 {
        let v = kirk.recv().await.expect("open");
        assert!(
            !v.to_string().contains("for Janeway only"),
            "{name}: replayed to Kirk: an entry written and deleted while he was not Spock's captain"
        );
    }
}

/// The captain is replaced, the member is deleted, the caller's own member row is deleted:
/// each ends the subscriptions it concerns, and nothing more of the log is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoted_captains_and_deleted_members_lose_the_log_at_once() {
    let _serial = shared().await;
    let app = start(Limits::default()).await;
    let db = app.db.clone();
    let mut kirk = Client::connect(&app, "kirk").await;
    kirk.sub(1, "logs", json!({"member": "spock"})).await;
    kirk.sub(2, "logs", json!({"member": "uhura"})).await;
    kirk.until(|v| v["t"] == "reset" && v["sub"] == 1).await;
    kirk.until(|v| v["t"] == "reset" && v["sub"] == 2).await;
    let mut spock = Client::connect(&app, "spock").await;
    spock.sub(1, "logs", json!({"member": "spock"})).await;
    spock.until(|v| v["t"] == "reset").await;

    // Kirk is no longer the Enterprise's captain: both his subscriptions end.
    db.table("ships")
        .get("enterprise")
        .update(json!({"captain": "spock"}))
        .await
        .unwrap();
    let mut ended = 0;
    while ended < 2 {
        let v = kirk.recv().await.expect("open");
        if v["t"] == "end" {
            assert_eq!(code(&v), "forbidden", "{v}");
            ended += 1;
        }
    }
    db.table("logs")
        .insert(json!({"owner": "uhura", "text": "after", "at": 1}))
        .await
        .unwrap();
    assert!(drain(&mut kirk).await.is_empty(), "nothing more for Kirk");

    // Spock's own member row is deleted while his connection (his session) remains.
    db.table("members").get("spock").delete().await.unwrap();
    let v = spock.until(|v| v["t"] == "end").await;
    assert_eq!(code(&v), "not_found", "{v}");
    spock.sub(2, "logs", json!({"member": "spock"})).await;
    assert_eq!(code(&spock.until(|v| v["sub"] == 2).await), "not_found");
}

/// A cursor is a place in the database, not a capability: Spock's cursor of his own log
/// (with its secret field) given to Kirk resumes Kirk's view of it (without the field), and
/// resumes nothing for someone the publication refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_another_caller_or_publication_gives_only_what_the_rules_allow() {
    let _serial = shared().await;
    let app = start(Limits::default()).await;
    let db = app.db.clone();
    let mut spock = Client::connect(&app, "spock").await;
    spock.sub(1, "logs", json!({"member": "spock"})).await;
    spock.sub(2, "members", json!(null)).await;
    spock.until(|v| v["t"] == "reset" && v["sub"] == 1).await;
    spock.until(|v| v["t"] == "reset" && v["sub"] == 2).await;
    let own = spock.cursor(1).unwrap();
    let of_members = spock.cursor(2).unwrap();
    db.table("logs")
        .insert(json!({"id": "s1", "owner": "spock", "text": "t", "at": 1, "secret": "s"}))
        .await
        .unwrap();
    let mut kirk = Client::connect(&app, "kirk").await;
    for (id, cursor) in [(1u32, &own), (2, &of_members)] {
        kirk.send(json!({"op": "sub", "id": id, "name": "logs", "params": {"member": "spock"}, "cursor": cursor}))
            .await;
        let v = kirk.until(|v| v["sub"] == id).await;
        assert_eq!(v["t"], "change", "{v}");
        assert_eq!(
            kirk.docs(id),
            vec![json!({"id": "s1", "owner": "spock", "text": "t", "at": 1})]
        );
    }
    let mut janeway = Client::connect(&app, "janeway").await;
    janeway
        .send(json!({"op": "sub", "id": 1, "name": "logs", "params": {"member": "spock"}, "cursor": own}))
        .await;
    assert_eq!(code(&janeway.until(|v| v["sub"] == 1).await), "forbidden");
}

// ---------------------------------------------------------------------------------------
// Careless publications and methods

/// A method that panics (a careless `unwrap`) leaves its call unanswered for ever: the
/// client's promise never settles. A publication that panics leaves its subscription without
/// an `end`, and its id "in use" and its slot taken until the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::unnecessary_literal_unwrap)] // the careless code under test
async fn a_panicking_method_or_publication_still_answers() {
    let _serial = shared().await;
    let base = start(Limits::default()).await;
    let web = Web::<User>::builder(base.db.clone())
        .publish("boom", |_caller, _: NoParams| async move {
            let none: Option<Live> = None;
            Ok(none.expect("a careless unwrap"))
        })
        .method("boom", |_caller, _: NoParams| async move {
            let none: Option<u32> = None;
            Ok(none.expect("a careless unwrap"))
        })
        .build();
    let app = serve_on(&base, web).await;
    let mut c = Client::connect(&app, "kirk").await;
    c.send(json!({"op": "call", "id": 1, "name": "boom", "params": null}))
        .await;
    let v = recv_within(&mut c, Duration::from_secs(3)).await;
    let v = v.expect("the call is answered");
    assert_eq!(
        (v["t"].as_str(), code(&v)),
        (Some("result"), "internal"),
        "{v}"
    );
    c.sub(7, "boom", json!(null)).await;
    let v = recv_within(&mut c, Duration::from_secs(3)).await;
    let v = v.expect("the subscription ends");
    assert_eq!(
        (v["t"].as_str(), code(&v)),
        (Some("end"), "internal"),
        "{v}"
    );
    // The id is free again.
    c.sub(7, "boom", json!(null)).await;
    let v = recv_within(&mut c, Duration::from_secs(3)).await.unwrap();
    assert_ne!(code(&v), "duplicate_id", "{v}");
}

// ---------------------------------------------------------------------------------------
// Protocol abuse

/// Subscribing is not limited like calling: a connection that subscribes and unsubscribes in
/// a loop (never over the limit of open subscriptions) makes the server run the publication
/// and read its whole result every time, as fast as it sends 60-byte frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_churn_is_limited() {
    let _serial = shared().await;
    let base = start(Limits::default()).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let web = Web::<User>::builder(base.db.clone())
        .publish("members", move |caller, _: NoParams| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move { Ok(Live::new(caller.db.table("members").query().changes())) }
        })
        .build();
    let app = serve_on(&base, web).await;
    let mut c = Client::connect(&app, "kirk").await;
    let started = Instant::now();
    for _round in 0..20 {
        for id in 0..100u32 {
            let f = json!({"op": "sub", "id": id, "name": "members", "params": null});
            c.ws.feed(Message::text(f.to_string())).await.unwrap();
        }
        c.ws.flush().await.unwrap();
        let mut answered = 0;
        while answered < 100 {
            let v = c.recv().await.expect("open");
            if v["t"] == "reset" || v["t"] == "end" {
                answered += 1;
            }
        }
        for id in 0..100u32 {
            let f = json!({"op": "unsub", "id": id});
            c.ws.feed(Message::text(f.to_string())).await.unwrap();
        }
        c.ws.flush().await.unwrap();
    }
    let took = started.elapsed();
    let runs = runs.load(Ordering::Relaxed);
    assert!(
        runs <= 500,
        "{runs} publication runs (each a full read) in {took:?} from one connection"
    );
}

/// A client that subscribes to a large result many times and never reads holds the server's
/// memory: every subscription builds its whole reset and waits with it, on top of the 32
/// frames of the outgoing queue: about `subscriptions` copies of the result per connection
/// (and a user may open any number of connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_bounded_memory() {
    let _serial = alone().await;
    let app = start(Limits::default()).await;
    let pad = "x".repeat(1000);
    let rows: Vec<Value> = (0..600)
        .map(|i| json!({"id": format!("m{i}"), "name": format!("M{i}"), "ship": "none", "points": i, "bio": pad}))
        .collect();
    app.db.table("members").insert_many(rows).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = ALLOCATED.load(Ordering::Relaxed);
    let mut stalled = Client::connect(&app, "kirk").await;
    for id in 0..100u32 {
        let f = json!({"op": "sub", "id": id, "name": "members", "params": null});
        stalled.ws.feed(Message::text(f.to_string())).await.unwrap();
    }
    stalled.ws.flush().await.unwrap();
    // The subscriptions read their results; the client reads nothing.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut peak = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(ALLOCATED.load(Ordering::Relaxed).saturating_sub(before));
    }
    let result_bytes = 600 * 1100;
    assert!(
        peak < 40 * result_bytes,
        "one stalled connection holds {} MB for a {} KB result",
        peak / 1_000_000,
        result_bytes / 1000
    );
    drop(stalled);
}

/// A subscription refused by its publication (here: parameters of the wrong type) has its
/// `end` frame queued behind whatever the client has not read yet. A `sub` that comes
/// meanwhile counted the open subscriptions, and forgot the ended one: its `end`, once the
/// driver got to it, was dropped as a frame of a subscription the client no longer had. The
/// page never learned the subscription was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_waiting_behind_unread_frames_still_arrives() {
    let _serial = shared().await;
    let app = start(Limits::default()).await;
    let pad = "z".repeat(10_000);
    let rows: Vec<Value> = (0..600)
        .map(|i| json!({"id": format!("e{i}"), "name": format!("E{i}"), "ship": "none", "points": i, "bio": pad}))
        .collect();
    app.db.table("members").insert_many(rows).await.unwrap();
    let mut c = Client::connect(&app, "kirk").await;
    // A result of ~6 MB: more than the socket's buffers and the connection's 1 MiB of
    // waiting frames hold.
    c.sub(0, "members", json!(null)).await;
    // Its first frame: it is being sent; the client now reads nothing for a while, and the
    // rest of it fills the socket and the queue.
    let first = c.frame().await.expect("open");
    assert_eq!((&first["t"], &first["sub"]), (&json!("reset"), &json!(0)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.sub(99, "logs", json!({"member": 5})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in 1..4u32 {
        c.sub(id, "members", json!(null)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut resets = 0;
    loop {
        // Frames as they come (a result's `more` parts and other frames interleave).
        let v = tokio::time::timeout(Duration::from_secs(15), c.frame())
            .await
            .expect("the refusal of subscription 99 within 15 s")
            .expect("open");
        if v["t"] == "end" && v["sub"] == 99 {
            assert_eq!(v["error"]["code"], "bad_params", "{v}");
            break;
        }
        if v["t"] == "reset" {
            resets += 1;
            assert!(resets <= 3, "every reset came, but not the refusal of 99");
        }
    }
}

/// A subscription whose client fell behind (its feed overflowed: it is re-reading its whole
/// result) is unsubscribed, and its id reused at once for another publication. The old task
/// is aborted, but an abort does not stop a task in the middle of a poll: the resync's long
/// poll goes on, and queues its `reset` after the frames that answer the `unsub` and the new
/// `sub`. The client then holds the old publication's rows under the new subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_an_unsubscribed_subscription_comes_after_the_unsub() {
    let _serial = shared().await;
    let app = start(Limits {
        feed_queue: 4,
        ..Limits::default()
    })
    .await;
    let mut c = Client::connect(&app, "kirk").await;
    c.sub(1, "logs", json!({"member": "kirk"})).await;
    c.until(|v| v["t"] == "reset").await;
    // The client does not read while 300 rows come (its feed of 4 overflows).
    let pad = "y".repeat(3000);
    for i in 0..300 {
        app.db
            .table("logs")
            .insert(json!({"owner": "kirk", "text": pad, "at": i}))
            .await
            .unwrap();
    }
    c.send(json!({"op": "unsub", "id": 1})).await;
    c.sub(1, "members", json!(null)).await;
    // The members' reset comes (frames of the old subscription already on the wire before
    // the unsub may come first: a client that reuses ids skips them until this reset).
    c.until(|v| v["t"] == "reset" && v["sub"] == 1 && v["rows"][0][1]["name"].is_string())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = drain(&mut c).await;
    assert!(
        after.is_empty(),
        "after the unsub and the new sub: {:.300}",
        format!("{after:?}")
    );
    assert!(
        c.docs(1).iter().all(|r| r["name"].is_string()),
        "subscription 1 (the members) holds rows of the old log subscription"
    );
}

/// Many calls in flight when the socket drops: each runs to its end (exactly once), the
/// connection's state goes, the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_when_the_socket_drops_run_once() {
    let _serial = shared().await;
    let app = start(Limits::default()).await;
    let mut c = Client::connect(&app, "kirk").await;
    c.sub(1, "logs", json!({"member": "kirk"})).await;
    for id in 0..20u32 {
        let f = json!({"op": "call", "id": id, "name": "add_log", "params": {"text": format!("c{id}")}});
        c.ws.feed(Message::text(f.to_string())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while (app.web.stats().connections, app.web.stats().subscriptions) != (0, 0) {
        assert!(Instant::now() < deadline, "{:?}", app.web.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = app.db.table("logs").query().count().await.unwrap();
    assert_eq!(written, 20, "every call read before the close runs");
    let rows = app.db.table("logs").query().run().await.unwrap();
    let mut texts: Vec<String> = rows.iter().map(|r| r["text"].to_string()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), rows.len(), "a call ran twice");
    still_serves(&app).await;
}

/// A flood of pings from a client that does not read its pongs: the server stops reading it
/// once its queue is full, and cuts it off after the write timeout; others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_that_never_reads_is_cut_off() {
    let _serial = shared().await;
    let app = start(Limits {
        write_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let c = Client::connect(&app, "kirk").await;
    let (mut sink, stream) = c.ws.split();
    let flood = tokio::spawn(async move {
        let ping = json!({"op": "ping"}).to_string();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let sent = tokio::time::timeout(Duration::from_millis(500), async {
                for _ in 0..1000 {
                    sink.feed(Message::text(ping.clone())).await?;
                }
                sink.flush().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {} // the server stopped reading: keep trying until cut off
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.web.stats().connections > 0 {
        assert!(
            Instant::now() < deadline,
            "the flooding client is still connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    still_serves(&app).await;
    flood.abort();
    drop(stream);
}

/// Deeply nested parameters, within and beyond the JSON parser's depth limit, and a text
/// frame that is not UTF-8: typed refusals, and the server serves on.
#[tokio::test]
async fn nested_parameters_and_non_utf8_text_are_refused() {
    let _serial = shared().await;
    let app = start(Limits::default()).await;
    let mut c = Client::connect(&app, "kirk").await;
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let frame = format!(
        r#"{{"op":"sub","id":1,"name":"logs","params":{{"member":{}}}}}"#,
        nested(100)
    );
    c.ws.send(Message::text(frame)).await.unwrap();
    assert_eq!(code(&c.until(|v| v["sub"] == 1).await), "bad_params");
    let frame = format!(
        r#"{{"op":"call","id":1,"name":"add_log","params":{}}}"#,
        nested(5000)
    );
    c.ws.send(Message::text(frame)).await.unwrap();
    assert_eq!(code(&c.until(|v| v["t"] == "error").await), "bad_frame");
    c.send(json!({"op": "ping"})).await;
    c.until(|v| v["t"] == "pong").await;
    // A text frame of bytes that are not UTF-8: refused, the connection closed.
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let raw = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(raw)).await.unwrap();
    let mut refused = None;
    while let Some(v) = recv_within(&mut c, Duration::from_secs(3)).await {
        if v["t"] == "error" {
            refused = Some(code(&v).to_string());
        }
    }
    assert_eq!(refused.as_deref(), Some("bad_frame"));
    assert_eq!(app.db.table("logs").query().count().await.unwrap(), 0);
    still_serves(&app).await;
}

/// The handshake's origin check with odd `Origin` and `Host` headers: only the page's own
/// origin (scheme, host and port as the browser sent the request) gets through.
#[tokio::test]
async fn odd_origins_and_hosts_are_refused() {
    let _serial = shared().await;
    let app = start(Limits::default()).await;
    let port = app.addr.port();
    let with = |host: &str, origin: &str| {
        let mut req = format!("ws://{}/remodel/ws", app.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("x-user", "kirk".parse().unwrap());
        req.headers_mut().insert("host", host.parse().unwrap());
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let host = format!("127.0.0.1:{port}");
    for origin in [
        format!("http://127.0.0.1:{port}."),
        format!("http://127.0.0.1:{}", port + 1),
        "http://127.0.0.1".to_string(),
        format!("http://[::1]:{port}"),
        format!("http://127.0.0.1:{port}@evil.example"),
        format!("http://evil.example#127.0.0.1:{port}"),
        format!("http://evil.example/127.0.0.1:{port}"),
        format!("ws://127.0.0.1:{port}"),
        format!("file://127.0.0.1:{port}"),
        "null".to_string(),
    ] {
        match with(&host, &origin).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 403, "{origin}")
            }
            other => panic!("{origin}: accepted ({})", other.is_ok()),
        }
    }
    // The same origin, however its host is spelled (IPv6, upper case): accepted.
    for (host, origin) in [
        (format!("[::1]:{port}"), format!("http://[::1]:{port}")),
        (
            format!("LOCALHOST:{port}"),
            format!("http://localhost:{port}"),
        ),
    ] {
        assert!(with(&host, &origin).await.is_ok(), "{host} {origin}");
    }
    // The plain case, for comparison.
    assert!(
        handshake(app.addr, Some("kirk"), Some(&format!("http://{host}")))
            .await
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------
// The JavaScript client, in Node (with a fake WebSocket)

/// Runs `body` in Node with `connect` of the client imported, a fake `WebSocket` (`sockets`:
/// every one opened, `open(ws)`, `message(ws, frame)`, `closed(ws)`), and `tick(ms)`;
/// `body` ends with `return <value>`. Gives that value, or `None` when Node is not installed.
fn run_node(body: &str) -> Option<Value> {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("node is not installed: the client test is skipped");
        return None;
    }
    // A directory per run: tests run at once, and each removes its own when done.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "remodel-web-adv-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("client.mjs"), remodel_web::CLIENT_JS).unwrap();
    let harness = format!(
        r#"
import {{ connect }} from './client.mjs';
const sockets = [];
class FakeWebSocket {{
  constructor(url) {{ this.url = url; this.sent = []; sockets.push(this); }}
  send(text) {{ this.sent.push(JSON.parse(text)); }}
  close() {{ this.closed = true; }}
}}
globalThis.WebSocket = FakeWebSocket;
const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
// Opened, and the server's hello (the client sends nothing before it).
const open = (ws) => {{
  if (ws.onopen) ws.onopen();
  if (ws.onmessage) ws.onmessage({{ data: JSON.stringify({{ t: 'hello', idle_ms: 30000, max_frame_bytes: 65536 }}) }});
}};
const message = (ws, frame) => ws.onmessage && ws.onmessage({{ data: JSON.stringify(frame) }});
const closed = (ws) => ws.onclose && ws.onclose();
const main = async () => {{ {body} }};
main().then((out) => {{ console.log(JSON.stringify(out)); process.exit(0); }},
            (e) => {{ console.error(e); process.exit(1); }});
"#
    );
    std::fs::write(dir.join("test.mjs"), harness).unwrap();
    let out = std::process::Command::new("node")
        .arg(dir.join("test.mjs"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(serde_json::from_str(text.lines().last().unwrap()).unwrap())
}

/// `end`, then a late `change` and `reset` of the same subscription: the client keeps the
/// subscription ended and empty, and never resubscribes it.
#[test]
fn the_client_ignores_frames_after_end() {
    let _serial = SERIAL.blocking_read();
    let Some(out) = run_node(
        r#"
const live = connect({ url: 'ws://test/remodel/ws', minBackoffMs: 1, maxBackoffMs: 2 });
const ws = sockets[0]; open(ws);
let updates = 0;
const sub = live.subscribe('logs', { member: 'spock' }, () => { updates++; });
message(ws, { t: 'reset', sub: sub.id, rows: [['a', { text: 'ok' }]], order: [], cursor: '1-0' });
message(ws, { t: 'end', sub: sub.id, error: { code: 'forbidden', message: 'no' } });
message(ws, { t: 'change', sub: sub.id, rows: [['b', { text: 'late' }]], cursor: '2-0' });
message(ws, { t: 'reset', sub: sub.id, rows: [['c', { text: 'late' }]], order: [], cursor: '3-0' });
const after = { rows: sub.rows.length, error: sub.error.code, updates };
closed(ws); await tick(20); open(sockets[1]);
const resent = sockets[1].sent.filter((f) => f.op === 'sub').length;
live.close();
return { ...after, resent };
"#,
    ) else {
        return;
    };
    assert_eq!(
        out,
        json!({"rows": 0, "error": "forbidden", "updates": 2, "resent": 0})
    );
}

/// Calls in flight when the socket drops are rejected as `disconnected` (none left hanging);
/// a call made while disconnected goes out once on the next connection; each subscription
/// resumes from its last cursor.
#[test]
fn the_client_settles_calls_and_resumes_on_a_drop() {
    let _serial = SERIAL.blocking_read();
    let Some(out) = run_node(
        r#"
const live = connect({ url: 'ws://test/remodel/ws', minBackoffMs: 1, maxBackoffMs: 2 });
const ws = sockets[0]; open(ws);
const sub = live.subscribe('logs', { member: 'kirk' });
message(ws, { t: 'reset', sub: sub.id, rows: [['a', { at: 1 }]], order: [['at', 'asc']], cursor: '1-0' });
message(ws, { t: 'change', sub: sub.id, rows: [['b', { at: 2 }]], cursor: '2-0' });
const inFlight = [1, 2, 3, 4, 5].map((i) => live.call('add_log', { text: 't' + i }).then(() => 'ok', (e) => e.code));
closed(ws);
const settled = await Promise.all(inFlight);
const queued = live.call('add_log', { text: 'queued' });
await tick(20);
const ws2 = sockets[1]; open(ws2);
const subs = ws2.sent.filter((f) => f.op === 'sub');
const calls = ws2.sent.filter((f) => f.op === 'call');
message(ws2, { t: 'result', call: calls[0].id, ok: 'k1' });
const answer = await queued;
live.close();
return { settled, cursor: subs[0].cursor, calls: calls.length, answer, rows: sub.keys() };
"#,
    ) else {
        return;
    };
    assert_eq!(
        out,
        json!({
            "settled": ["disconnected", "disconnected", "disconnected", "disconnected", "disconnected"],
            "cursor": "2-0", "calls": 1, "answer": "k1", "rows": ["a", "b"]
        })
    );
}

/// Keys are JSON values: the string `"5"` and the number `5` (or `"null"` and `null`: a
/// group of rows whose field is null next to one whose field is the text "null") are two
/// rows, as the server sends them. The client keys its map by the string itself for strings
/// and by JSON text for the rest, so the two collide and one row is lost.
#[test]
fn the_client_keeps_rows_whose_keys_differ_only_in_type() {
    let _serial = SERIAL.blocking_read();
    let Some(out) = run_node(
        r#"
const live = connect({ url: 'ws://test/remodel/ws' });
const ws = sockets[0]; open(ws);
const sub = live.subscribe('species', {});
message(ws, { t: 'reset', sub: sub.id, order: [], cursor: null,
  rows: [['5', { group: '5', reduction: 1 }], [5, { group: 5, reduction: 2 }],
         ['null', { group: 'null', reduction: 3 }], [null, { group: null, reduction: 4 }]] });
const n = sub.rows.length;
live.close();
return n;
"#,
    ) else {
        return;
    };
    assert_eq!(out, json!(4));
}

/// A large result in `more` frames: the client shows it once, whole, and a `more` that comes
/// outside a reset changes nothing.
#[test]
fn the_client_shows_a_result_in_parts_once_whole() {
    let _serial = SERIAL.blocking_read();
    let Some(out) = run_node(
        r#"
const live = connect({ url: 'ws://test/remodel/ws' });
const ws = sockets[0]; open(ws);
const seen = [];
const sub = live.subscribe('logs', {}, (rows) => seen.push(rows.length));
message(ws, { t: 'more', sub: sub.id, rows: [['x', { id: 'x' }]], more: false });
message(ws, { t: 'reset', sub: sub.id, order: [], cursor: '1-0', more: true, rows: [['a', { id: 'a' }]] });
message(ws, { t: 'more', sub: sub.id, rows: [['b', { id: 'b' }]], more: true });
message(ws, { t: 'more', sub: sub.id, rows: [['c', { id: 'c' }]], more: false });
message(ws, { t: 'change', sub: sub.id, rows: [['d', { id: 'd' }]], cursor: '2-0' });
const out = { seen, rows: sub.rows.map((r) => r.id), cursor: sub.cursor };
live.close();
return out;
"#,
    ) else {
        return;
    };
    assert_eq!(
        out,
        json!({"seen": [3, 4], "rows": ["a", "b", "c", "d"], "cursor": "2-0"})
    );
}

/// A large change in parts: the client shows it once, after the last part, whose cursor it
/// keeps.
#[test]
fn the_client_shows_a_change_in_parts_once_whole() {
    let _serial = SERIAL.blocking_read();
    let Some(out) = run_node(
        r#"
const live = connect({ url: 'ws://test/remodel/ws' });
const ws = sockets[0]; open(ws);
const seen = [];
const sub = live.subscribe('logs', {}, (rows) => seen.push(rows.length));
message(ws, { t: 'reset', sub: sub.id, order: [], cursor: '1-0', rows: [] });
message(ws, { t: 'change', sub: sub.id, rows: [['a', { id: 'a' }]], more: true });
const during = sub.cursor;
message(ws, { t: 'change', sub: sub.id, rows: [['b', { id: 'b' }]], cursor: '2-0' });
const out = { seen, during, cursor: sub.cursor };
live.close();
return out;
"#,
    ) else {
        return;
    };
    assert_eq!(
        out,
        json!({"seen": [0, 2], "during": "1-0", "cursor": "2-0"})
    );
}

/// A batch with changes of two subscriptions, a frame in it that cannot be applied, and a
/// batch inside it: the client applies every good frame in order (each subscription shown
/// once per change), skips the bad one, and ignores the nested batch.
#[test]
fn the_client_applies_each_frame_of_a_batch() {
    let _serial = SERIAL.blocking_read();
    let Some(out) = run_node(
        r#"
const live = connect({ url: 'ws://test/remodel/ws' });
const ws = sockets[0]; open(ws);
const seen = [];
const a = live.subscribe('logs', {}, (rows) => seen.push(['a', rows.length]));
const b = live.subscribe('members', {}, (rows) => seen.push(['b', rows.length]));
message(ws, { t: 'reset', sub: a.id, order: [], cursor: '1-0', rows: [] });
message(ws, { t: 'reset', sub: b.id, order: [], cursor: '1-0', rows: [['k', { id: 'k' }]] });
message(ws, { t: 'batch', frames: [
  { t: 'change', sub: a.id, rows: [['x', { id: 'x' }]], more: true },
  { t: 'change', sub: b.id, rows: 'not rows', cursor: '9-9' },
  { t: 'change', sub: a.id, rows: [['y', { id: 'y' }]], cursor: '2-0' },
  { t: 'batch', frames: [{ t: 'change', sub: b.id, rows: [['n', { id: 'n' }]], cursor: '3-0' }] },
  { t: 'change', sub: b.id, rows: [['k', null], ['m', { id: 'm' }]], cursor: '2-1' },
] });
const out = { seen, a: a.rows.map((r) => r.id), b: b.rows.map((r) => r.id), ca: a.cursor, cb: b.cursor };
live.close();
return out;
"#,
    ) else {
        return;
    };
    assert_eq!(
        out,
        json!({"seen": [["a", 0], ["b", 1], ["a", 2], ["b", 1]], "a": ["x", "y"], "b": ["m"],
               "ca": "2-0", "cb": "2-1"})
    );
}

/// The JavaScript client fed what the server really sends a connection of three
/// subscriptions (their resets, a change that found the connection idle, a batch of two
/// subscriptions' changes, then the log's next ones) holds the rows of the three queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_applies_the_servers_batches() {
    let _serial = shared().await;
    let app = start_with(Limits::default(), Duration::from_millis(1000)).await;
    let mut ws = handshake(app.addr, Some("kirk"), None).await.unwrap();
    let subs = [
        ("members", json!(null)),
        ("top", json!(null)),
        ("logs", json!({"member": "kirk"})),
    ];
    for (i, (name, params)) in subs.iter().enumerate() {
        let f = json!({"op": "sub", "id": i + 1, "name": name, "params": params});
        ws.send(Message::text(f.to_string())).await.unwrap();
    }
    let mut texts: Vec<String> = Vec::new();
    let mut next = async || -> Value {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        let Ok(Some(Ok(Message::Text(t)))) = msg else {
            panic!("a frame: {msg:?}")
        };
        texts.push(t.to_string());
        serde_json::from_str(&t).unwrap()
    };
    let mut resets = 0;
    while resets < 3 {
        resets += usize::from(next().await["t"] == "reset");
    }
    let db = &app.db;
    let members = db.table("members");
    let chekov = json!({"id": "chekov", "name": "Chekov", "ship": "enterprise", "points": 1});
    members.insert(chekov).await.unwrap();
    assert_eq!(next().await["t"], "change", "the first change, alone");
    // A window is open, the members held: a change of the members waits, then one of the
    // log (which has not sent) goes at once, the members' change with it.
    members
        .get("chekov")
        .update(json!({"name": "Pavel"}))
        .await
        .unwrap();
    for i in 0..3 {
        let doc = json!({"id": format!("w{i}"), "owner": "kirk", "at": i, "text": "t"});
        db.table("logs").insert(doc).await.unwrap();
        if i == 0 {
            let batch = next().await;
            assert_eq!(batch["t"], "batch", "{batch}");
            let mut subs_in: Vec<u64> = batch["frames"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f["sub"].as_u64())
                .collect();
            subs_in.sort();
            assert_eq!(subs_in, [1, 3], "{batch}");
        }
    }
    // The log's next changes come at the window's end.
    while !next().await.to_string().contains(r#""w2""#) {}
    let body = format!(
        r#"
const live = connect({{ url: 'ws://test/remodel/ws' }});
const ws = sockets[0]; open(ws);
const subs = [live.subscribe('members', null), live.subscribe('top', null),
              live.subscribe('logs', {{ member: 'kirk' }})];
for (const text of {texts}) ws.onmessage({{ data: text }});
const out = subs.map((s) => s.rows);
live.close();
return out;
"#,
        texts = serde_json::to_string(&texts).unwrap()
    );
    let Some(out) = run_node(&body) else {
        return;
    };
    let by_id = |v: &Value| common::by_id(v.as_array().unwrap().clone());
    let all = common::by_id(members.query().run().await.unwrap());
    assert_eq!(by_id(&out[0]), all);
    let mut top = all.clone();
    top.sort_by_key(|m| std::cmp::Reverse(m["points"].as_i64()));
    assert_eq!(by_id(&out[1]), common::by_id(top[..3].to_vec()));
    let logs = db.table("logs").query().run().await.unwrap();
    assert_eq!(by_id(&out[2]), common::by_id(logs));
    assert_eq!(out[2].as_array().unwrap().len(), 3);
}
