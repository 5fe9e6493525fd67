//! The attacker's tests, against a running server on 127.0.0.1: each attack gets a typed
//! refusal, the server stays responsive, and nothing is written that should not be.

mod common;

use common::{handshake, start, start_with, App, Client};
use futures::{SinkExt, StreamExt};
use remodel::json;
use remodel_web::Limits;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The server still serves: a new client subscribes and gets its rows.
async fn still_serves(app: &App) {
    let mut c = Client::connect(app, "uhura").await;
    c.sub(1, "members", json!(null)).await;
    c.until(|v| v["t"] == "reset").await;
    assert_eq!(c.docs(1).len(), 4);
}

fn code(v: &remodel::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn undeclared_names_are_refused() {
    let app = start(Limits::default()).await;
    let mut c = Client::connect(&app, "kirk").await;
    // No query text, table or index name gets through: only declared publications.
    for name in ["logs_all", "members ", "", "../members", "r.table('logs')"] {
        c.sub(1, name, json!(null)).await;
        let v = c.until(|v| v["t"] == "end").await;
        assert_eq!(code(&v), "unknown_publication", "{name}");
    }
    c.send(json!({"op": "call", "id": 1, "name": "drop_table", "params": {}}))
        .await;
    let v = c.until(|v| v["t"] == "result").await;
    assert_eq!(code(&v), "unknown_method");
    // A frame that names a table is not a frame of the protocol.
    c.send(json!({"op": "sub", "id": 2, "name": "members", "table": "logs"}))
        .await;
    let v = c.until(|v| v["t"] == "error").await;
    assert_eq!(code(&v), "bad_frame");
    still_serves(&app).await;
}

#[tokio::test]
async fn parameters_of_the_wrong_type_or_size() {
    let app = start(Limits::default()).await;
    let mut c = Client::connect(&app, "kirk").await;
    for params in [
        json!(null),
        json!({"member": 5}),
        json!({"member": "kirk", "extra": 1}),
        json!(["kirk", "spock"]),
        json!({"member": {"$ne": null}}),
    ] {
        c.sub(1, "logs", params.clone()).await;
        let v = c.until(|v| v["t"] == "end").await;
        assert_eq!(code(&v), "bad_params", "{params}");
    }
    for (i, params) in [
        json!({"text": 5}),
        json!({"text": "x".repeat(201)}),
        json!({"text": ""}),
    ]
    .into_iter()
    .enumerate()
    {
        c.send(json!({"op": "call", "id": i, "name": "add_log", "params": params}))
            .await;
        let v = c.until(|v| v["t"] == "result").await;
        assert!(["bad_params", "invalid"].contains(&code(&v)), "{v}");
    }
    assert_eq!(app.db.table("logs").query().count().await.unwrap(), 0);
    // A frame over the limit closes this connection, saying why; the server goes on.
    let big =
        json!({"op": "call", "id": 9, "name": "add_log", "params": {"text": "x".repeat(100_000)}});
    let _ = c.ws.send(Message::text(big.to_string())).await;
    let mut closed_with = None;
    while let Some(v) = c.recv().await {
        if v["t"] == "error" {
            closed_with = Some(code(&v).to_string());
        }
    }
    assert_eq!(closed_with.as_deref(), Some("frame_too_large"));
    assert_eq!(app.db.table("logs").query().count().await.unwrap(), 0);
    still_serves(&app).await;
}

#[tokio::test]
async fn another_members_private_log_does_not_leak() {
    let app = start(Limits::default()).await;
    let db = app.db.clone();
    db.table("logs")
        .insert_many([
            json!({"id": "k1", "owner": "kirk", "text": "captain's log", "at": 1, "secret": "s"}),
            json!({"id": "s1", "owner": "spock", "text": "fascinating", "at": 2, "secret": "s"}),
        ])
        .await
        .unwrap();
    // Spock may not read Kirk's log; Janeway (another ship's captain) may not read Spock's.
    let mut spock = Client::connect(&app, "spock").await;
    spock.sub(1, "logs", json!({"member": "kirk"})).await;
    let v = spock.until(|v| v["t"] == "end").await;
    assert_eq!(code(&v), "forbidden");
    let mut janeway = Client::connect(&app, "janeway").await;
    janeway.sub(1, "logs", json!({"member": "spock"})).await;
    assert_eq!(code(&janeway.until(|v| v["t"] == "end").await), "forbidden");

    // Kirk, Spock's captain, reads Spock's log without its secret field; Spock reads his own.
    let mut kirk = Client::connect(&app, "kirk").await;
    kirk.sub(1, "logs", json!({"member": "spock"})).await;
    kirk.until(|v| v["t"] == "reset").await;
    assert_eq!(
        kirk.docs(1),
        vec![json!({"id": "s1", "owner": "spock", "text": "fascinating", "at": 2})]
    );
    spock.sub(2, "logs", json!({"member": "spock"})).await;
    spock.until(|v| v["t"] == "reset").await;
    assert_eq!(spock.docs(2)[0]["secret"], "s");

    // Later changes: a row moved from Spock's log to Kirk's leaves Kirk's view of Spock's
    // log, and a new row of Kirk's own never reaches it.
    db.table("logs")
        .get("s1")
        .update(json!({"owner": "kirk"}))
        .await
        .unwrap();
    kirk.until(|v| v["t"] == "change").await;
    assert!(kirk.docs(1).is_empty());
    spock.until(|v| v["t"] == "change" && v["sub"] == 2).await;
    assert!(spock.docs(2).is_empty());

    // The rule changes mid-stream: Spock moves to Voyager, so Kirk is no longer his captain.
    db.table("logs")
        .insert(json!({"id": "s2", "owner": "spock", "text": "t", "at": 3, "secret": "s"}))
        .await
        .unwrap();
    kirk.until(|v| v["t"] == "change").await;
    assert_eq!(kirk.docs(1).len(), 1);
    db.table("members")
        .get("spock")
        .update(json!({"ship": "voyager"}))
        .await
        .unwrap();
    let v = kirk.until(|v| v["t"] == "end").await;
    assert_eq!(code(&v), "forbidden");
    assert!(kirk.docs(1).is_empty());
    // Nothing of Spock's later log reaches Kirk.
    db.table("logs")
        .insert(json!({"id": "s3", "owner": "spock", "text": "after", "at": 4, "secret": "s"}))
        .await
        .unwrap();
    kirk.send(json!({"op": "ping"})).await;
    let v = kirk.until(|v| v["t"] == "pong" || v["sub"] == 1).await;
    assert_eq!(
        v["t"], "pong",
        "nothing more for the ended subscription: {v}"
    );
    // Janeway, now Spock's captain, reads it.
    janeway.sub(2, "logs", json!({"member": "spock"})).await;
    janeway.until(|v| v["t"] == "reset" && v["sub"] == 2).await;
    assert_eq!(janeway.docs(2).len(), 2);
}

#[tokio::test]
async fn methods_that_break_their_checks_write_nothing() {
    let app = start(Limits::default()).await;
    let mut c = Client::connect(&app, "kirk").await;
    c.send(json!({"op": "call", "id": 1, "name": "add_log", "params": {"text": "ok"}}))
        .await;
    let v = c.until(|v| v["t"] == "result").await;
    assert!(v["ok"].is_string(), "{v}");
    // The owner is the caller, whatever the parameters say.
    c.send(json!({"op": "call", "id": 2, "name": "add_log", "params": {"text": "x", "owner": "spock"}}))
        .await;
    assert_eq!(code(&c.until(|v| v["t"] == "result").await), "bad_params");
    let rows = app.db.table("logs").query().run().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["owner"], "kirk");
}

#[tokio::test]
async fn forged_and_garbage_cursors() {
    for name in ["logs", "shared_logs"] {
        forged_and_garbage_cursors_of(name).await;
    }
}

async fn forged_and_garbage_cursors_of(name: &str) {
    let app = start(Limits::default()).await;
    app.db
        .table("logs")
        .insert(json!({"id": "k1", "owner": "kirk", "text": "t", "at": 1}))
        .await
        .unwrap();
    let mut c = Client::connect(&app, "kirk").await;
    // Running already: a shared result has kept batches a cursor could be followed from.
    c.sub(10, name, json!({"member": "kirk"})).await;
    c.until(|v| v["sub"] == 10).await;
    for (id, cursor) in [
        (1, "garbage"),
        (2, "1-2-3"),
        (3, ""),
        (4, "ffffffffffffffffff-0"),
    ] {
        c.send(json!({"op": "sub", "id": id, "name": name, "params": {"member": "kirk"}, "cursor": cursor}))
            .await;
        let v = c.until(|v| v["sub"] == id).await;
        assert_eq!(code(&v), "bad_cursor", "{name}: {cursor}");
    }
    // A well-formed cursor the server never gave (far ahead, or before the history): the
    // whole result, read afresh through the rules.
    for (id, cursor) in [(5, "ffffffff-0"), (6, "0-0")] {
        c.send(json!({"op": "sub", "id": id, "name": name, "params": {"member": "kirk"}, "cursor": cursor}))
            .await;
        let v = c.until(|v| v["sub"] == id).await;
        assert_eq!(v["t"], "reset", "{name}: {cursor}: {v}");
        assert_eq!(c.docs(id).len(), 1);
    }
    // A cursor into another member's log gives nothing of it: the publication decides first.
    let mut spock = Client::connect(&app, "spock").await;
    let cursor = c.cursor(5).unwrap();
    spock
        .send(json!({"op": "sub", "id": 1, "name": name, "params": {"member": "kirk"}, "cursor": cursor}))
        .await;
    assert_eq!(code(&spock.until(|v| v["sub"] == 1).await), "forbidden");
}

/// A shared result without guards, running: a cursor far ahead of the database, or before
/// what it kept, still gets the whole result (never "resumed" from a place it never was).
#[tokio::test]
async fn forged_cursors_on_a_running_shared_result() {
    let app = start(Limits::default()).await;
    let mut c = Client::connect(&app, "kirk").await;
    c.sub(1, "shared_members", json!(null)).await;
    c.until(|v| v["sub"] == 1).await;
    for (id, cursor) in [(2, "ffffffff-0"), (3, "0-0")] {
        c.send(json!({"op": "sub", "id": id, "name": "shared_members", "cursor": cursor}))
            .await;
        let v = c.until(|v| v["sub"] == id).await;
        assert_eq!(v["t"], "reset", "{cursor}: {v}");
        assert_eq!(c.docs(id).len(), 4);
    }
}

#[tokio::test]
async fn cross_origin_handshakes_are_refused() {
    let app = start(Limits::default()).await;
    let host = app.addr.to_string();
    let evil = handshake(app.addr, Some("kirk"), Some("http://evil.example")).await;
    match evil {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 403);
            let body = String::from_utf8(r.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("forbidden"), "{body}");
        }
        other => panic!("a cross-origin handshake was accepted: {:?}", other.is_ok()),
    }
    let lookalike = format!("http://{host}.evil.example");
    assert!(handshake(app.addr, Some("kirk"), Some(&lookalike))
        .await
        .is_err());
    assert!(
        handshake(app.addr, Some("kirk"), Some(&format!("http://{host}")))
            .await
            .is_ok()
    );
    // No identity, no connection.
    match handshake(app.addr, None, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("an anonymous handshake: {:?}", other.is_ok()),
    }
}

#[tokio::test]
async fn malformed_frames_get_typed_errors_and_the_connection_goes_on() {
    let app = start(Limits::default()).await;
    let mut c = Client::connect(&app, "kirk").await;
    let frames = [
        Message::text("not json"),
        Message::text("{}"),
        Message::text(r#"{"op":"sub"}"#),
        Message::text(r#"{"op":"sub","id":-1,"name":"members"}"#),
        Message::text(r#"{"op":"sub","id":99999999999,"name":"members"}"#),
        Message::text(r#"{"op":"nuke"}"#),
        Message::text("[".repeat(10_000)),
        Message::binary(vec![0u8, 159, 146, 150]),
    ];
    for f in frames {
        c.ws.send(f).await.unwrap();
        let v = c.until(|v| v["t"] == "error").await;
        assert_eq!(code(&v), "bad_frame");
    }
    // Twice the same subscription id.
    c.sub(1, "members", json!(null)).await;
    c.until(|v| v["t"] == "reset").await;
    c.sub(1, "members", json!(null)).await;
    assert_eq!(code(&c.until(|v| v["t"] == "error").await), "duplicate_id");
    c.send(json!({"op": "ping"})).await;
    c.until(|v| v["t"] == "pong").await;
}

#[tokio::test]
async fn ten_thousand_subscriptions_on_one_socket() {
    // (The subscription rate limit is another test's: here, the count limit alone.)
    let app = start(Limits {
        subscribes_per_second: 100_000,
        ..Limits::default()
    })
    .await;
    let mut c = Client::connect(&app, "kirk").await;
    let (mut resets, mut refused) = (0, 0);
    for id in 0..10_000u32 {
        let f = json!({"op": "sub", "id": id, "name": "members", "params": null});
        c.ws.feed(Message::text(f.to_string())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    while resets + refused < 10_000 {
        let v = c.recv().await.expect("open");
        match v["t"].as_str() {
            Some("reset") => resets += 1,
            Some("end") => {
                assert_eq!(code(&v), "too_many_subscriptions");
                refused += 1
            }
            _ => {}
        }
    }
    assert_eq!((resets, refused), (100, 9_900));
    assert_eq!(app.web.stats().subscriptions, 100);
    still_serves(&app).await;
    drop(c);
    // The connection's subscriptions go with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.web.stats().subscriptions > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.web.stats().subscriptions <= 1);
}

#[tokio::test]
async fn method_calls_are_rate_limited() {
    let app = start(Limits {
        calls_per_second: 5,
        ..Limits::default()
    })
    .await;
    let mut c = Client::connect(&app, "kirk").await;
    for id in 0..20 {
        c.send(json!({"op": "call", "id": id, "name": "add_log", "params": {"text": "x"}}))
            .await;
    }
    let mut limited = 0;
    for _ in 0..20 {
        let v = c.until(|v| v["t"] == "result").await;
        if code(&v) == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 14, "{limited} of 20 refused");
    let written = app.db.table("logs").query().count().await.unwrap();
    assert_eq!(written, 20 - limited);
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_a_reason() {
    let app = start(Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut c = Client::connect(&app, "kirk").await;
    let v = c.until(|v| v["t"] == "error").await;
    assert_eq!(code(&v), "idle_timeout");
    assert!(c.recv().await.is_none(), "closed");
    // Pings keep a connection open.
    let mut c = Client::connect(&app, "kirk").await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.send(json!({"op": "ping"})).await;
        c.until(|v| v["t"] == "pong").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_slows_no_writer_and_no_other_client() {
    let app = start(Limits {
        feed_queue: 64,
        write_timeout: Duration::from_secs(2),
        ..Limits::default()
    })
    .await;
    // The stalled client subscribes, then never reads again.
    let mut stalled = Client::connect(&app, "kirk").await;
    for id in 0..50 {
        stalled.sub(id, "logs", json!({"member": "kirk"})).await;
    }
    let mut reader = Client::connect(&app, "kirk").await;
    reader.sub(1, "logs", json!({"member": "kirk"})).await;
    reader.until(|v| v["t"] == "reset").await;
    // The reading client reads while the writes go (one that waited for them to end would
    // be a client that does not read, cut off after the write timeout on a slow machine).
    let reading = tokio::spawn(async move {
        while reader.docs(1).len() < 2_000 {
            reader.recv().await.expect("open");
        }
        reader
    });
    let pad = "x".repeat(2000);
    let started = Instant::now();
    for i in 0..2_000 {
        app.db
            .table("logs")
            .insert(json!({"id": format!("l{i}"), "owner": "kirk", "at": i, "text": pad}))
            .await
            .unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "writes took {took:?}");
    // The reading client has every row.
    let _reader = reading.await.unwrap();
    // The stalled one was cut off (its one frame in flight timed out) and its
    // subscriptions went with it.
    let deadline = Instant::now() + Duration::from_secs(15);
    // (Aborted subscription tasks count themselves out when the runtime drops them: wait
    // for both.)
    let gone = |s: remodel_web::WebStats| s.connections == 1 && s.subscriptions == 1;
    while !gone(app.web.stats()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.web.stats().connections, 1, "the stalled client is gone");
    assert_eq!(app.web.stats().subscriptions, 1);
    drop(stalled.ws.next());
}

/// Limits and a window of `Duration::MAX` (a natural way to say "never") are times that
/// never come, not a panic of the connection's driver the first time frames wait.
#[tokio::test]
async fn limits_and_windows_of_duration_max_mean_never() {
    let limits = Limits {
        write_timeout: Duration::MAX,
        idle_timeout: Duration::MAX,
        ..Limits::default()
    };
    let app = start_with(limits, Duration::MAX).await;
    let mut c = Client::connect(&app, "kirk").await;
    c.sub(1, "logs", json!({"member": "kirk"})).await;
    c.until(|v| v["t"] == "reset").await;
    for i in 0..3 {
        app.db
            .table("logs")
            .insert(json!({"id": format!("m{i}"), "owner": "kirk", "at": i, "text": "x"}))
            .await
            .unwrap();
    }
    // The first change goes at once and opens a window that never ends.
    c.until(|v| v["t"] == "change" || v["t"] == "batch").await;
    c.send(json!({"op": "ping"})).await;
    c.until(|v| v["t"] == "pong").await;
    still_serves(&app).await;
}

/// A page that resumes from a cursor with more changes after it than
/// `Limits::resume_changes` gets the whole result again (one read), not a replay of that
/// stretch of the change log, which it could ask for again and again; nearer, it resumes.
/// (A shared result still holding the batches after the cursor catches it up from memory.)
#[tokio::test]
async fn a_cursor_far_behind_gets_the_result_again_not_a_replay() {
    for name in ["logs", "shared_logs"] {
        let limits = Limits {
            resume_changes: 500,
            ..Limits::default()
        };
        let app = start(limits).await;
        let mut c = Client::connect(&app, "kirk").await;
        c.sub(1, name, json!({"member": "kirk"})).await;
        c.until(|v| v["t"] == "reset").await;
        let write = |id: &str| json!({"id": id, "owner": "kirk", "text": "t", "at": 1});
        app.db.table("logs").insert(write("k1")).await.unwrap();
        c.until(|v| v["sub"] == 1 && v["t"] != "reset").await;
        let cursor = c.cursor(1).expect("a change frame has a cursor");
        // 400 changes nobody watches, then one of Kirk's: within the limit, a resume.
        let others: Vec<_> = (0..400)
            .map(|i| json!({"id": format!("s{i}"), "owner": "spock", "text": "t", "at": 1}))
            .collect();
        app.db.table("logs").insert_many(others).await.unwrap();
        app.db.table("logs").insert(write("k2")).await.unwrap();
        let sub = |id: u32, cursor: &str| json!({"op": "sub", "id": id, "name": name, "params": {"member": "kirk"}, "cursor": cursor});
        c.send(sub(2, &cursor)).await;
        let v = c.until(|v| v["sub"] == 2).await;
        assert_ne!(v["t"], "reset", "{name}: resumed within the limit: {v}");
        // 400 more: now 801 behind, past the limit: the whole result.
        let more: Vec<_> = (400..800)
            .map(|i| json!({"id": format!("s{i}"), "owner": "spock", "text": "t", "at": 1}))
            .collect();
        app.db.table("logs").insert_many(more).await.unwrap();
        c.send(sub(3, &cursor)).await;
        let v = c.until(|v| v["sub"] == 3).await;
        match name {
            "logs" => assert_eq!(v["t"], "reset", "{name}: {v}"),
            _ => assert!(v["t"] == "reset" || v["t"] == "change", "{name}: {v}"),
        }
        if v["t"] == "reset" {
            assert_eq!(c.docs(3).len(), 2);
        }
    }
}
