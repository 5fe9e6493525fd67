//! Attacks on Starfleet's rules: a member's personal log is read and written only by the
//! member and the captain of the member's ship. Through the forms, the live connection, the
//! session cookie and the pages' HTML.
//!
//! Tests marked `#[ignore = "BUG: …"]` fail today: each shows a bug (see the report). The
//! others are attacks that are refused correctly and stay as regression tests.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use remodel::json;
use remodel::Model;
use serde_json::Value;
use starfleet::models::Log;

mod common;
use common::*;

/// Tuvok writes an entry to his own log (through the form).
async fn tuvok_writes(app: &App, text: &str) {
    let tuvok = app.cookie_of("tuvok").await;
    let r = app
        .post_as("/member/tuvok/log", &format!("text={text}"), &tuvok)
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
}

/// Whether `cookie`'s member can read Tuvok's log: on his page, or live.
async fn reads_tuvoks_log(app: &App, cookie: &str, secret: &str) -> bool {
    let page = app.get_as("/member/tuvok", cookie).await.body;
    let addr = app.serve().await;
    let mut live = Live::connect(addr, Some(cookie)).await;
    live.sub(1, "logs", json!({"member": "tuvok"}), None).await;
    let v = live.frame_of(1, |_| true).await;
    page.contains(secret) || v["t"] == "reset"
}

/// Picard (Enterprise's captain, honestly signed in as himself) may not read Tuvok's log
/// (Voyager). The move form takes no session and checks no rule: Picard moves Tuvok onto the
/// Enterprise, and reads his log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captain_cannot_read_a_log_by_moving_its_member_onto_his_ship() {
    let app = app().await;
    tuvok_writes(&app, "Logic+is+the+beginning").await;
    let picard = app.cookie_of("picard").await;
    assert!(!reads_tuvoks_log(&app, &picard, "Logic is the beginning").await);
    app.post_as("/member/tuvok/move", "ship_id=enterprise", &picard)
        .await;
    assert!(
        !reads_tuvoks_log(&app, &picard, "Logic is the beginning").await,
        "Picard reads Tuvok's log after moving him with a form no rule checks"
    );
}

/// Neelix (Voyager, not captain) may not read Tuvok's log. The edit form takes no session and
/// checks no rule: Neelix makes himself a captain, and reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_promote_himself_to_read_a_crewmates_log() {
    let app = app().await;
    tuvok_writes(&app, "Logic+is+the+beginning").await;
    let neelix = app.cookie_of("neelix").await;
    assert!(!reads_tuvoks_log(&app, &neelix, "Logic is the beginning").await);
    app.post_as(
        "/member/neelix",
        "name=Neelix&rank=captain&species=talaxian",
        &neelix,
    )
    .await;
    assert!(
        !reads_tuvoks_log(&app, &neelix, "Logic is the beginning").await,
        "Neelix reads Tuvok's log after promoting himself"
    );
}

/// A log is written only by its member and their captain; deleting the member deletes the
/// log with it (cascade). The delete form takes no session: anyone wipes anyone's log.
#[tokio::test]
async fn an_anonymous_visitor_cannot_wipe_a_personal_log() {
    let app = app().await;
    tuvok_writes(&app, "Logic+is+the+beginning").await;
    let r = app.post("/member/tuvok/delete", "").await;
    let logs = Log::all(&app.state.db).await.unwrap();
    assert_eq!(
        logs.len(),
        1,
        "an anonymous POST ({}) deleted Tuvok and his log",
        r.status
    );
}

/// The log form is authenticated by the session cookie alone (SameSite=Lax stops cross-site
/// pages, not pages of the same site: another port of localhost, a sibling subdomain). A POST
/// whose Origin is not the app's is written anyway; so is a cross-origin sign-in (login CSRF).
#[tokio::test]
async fn a_form_post_from_another_origin_is_refused() {
    let app = app().await;
    let tuvok = app.cookie_of("tuvok").await;
    let forged = Request::post("/member/tuvok/log")
        .header(header::HOST, "localhost:8080")
        .header(header::ORIGIN, "http://localhost:3000")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, &tuvok)
        .body(Body::from("text=forged"))
        .unwrap();
    let r = app.send(forged).await;
    let logs = Log::all(&app.state.db).await.unwrap();
    assert!(
        logs.is_empty(),
        "a cross-origin POST ({}) wrote to Tuvok's log",
        r.status
    );
    let forged = Request::post("/signin")
        .header(header::HOST, "localhost:8080")
        .header(header::ORIGIN, "http://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("member_id=neelix"))
        .unwrap();
    let r = app.send(forged).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a cross-origin sign-in");
}

/// The live connection from a page of another origin, with the member's cookie: refused at
/// the handshake.
#[tokio::test]
async fn a_cross_origin_live_connection_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = app().await;
    let addr = app.serve().await;
    let tuvok = app.cookie_of("tuvok").await;
    for origin in [
        "http://evil.example".to_string(),
        format!("http://{addr}.evil.example"),
        format!("http://127.0.0.1:{}", addr.port() + 1),
        "null".to_string(),
    ] {
        let mut req = format!("ws://{addr}/remodel/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("cookie", tuvok.parse().unwrap());
        req.headers_mut().insert("origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 403, "{origin}")
            }
            other => panic!("{origin}: accepted ({})", other.is_ok()),
        }
    }
}

/// A session cookie whose value was changed (signed for Neelix, edited to Janeway) is no
/// session; so is the session of a member deleted since: neither reads nor writes the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_orphaned_sessions_read_and_write_nothing() {
    let app = app().await;
    tuvok_writes(&app, "Logic+is+the+beginning").await;
    let neelix = app.cookie_of("neelix").await;
    let tampered = neelix.replace("neelix", "janeway");
    assert_ne!(tampered, neelix);
    assert!(!reads_tuvoks_log(&app, &tampered, "Logic is the beginning").await);
    let r = app.post_as("/member/tuvok/log", "text=x", &tampered).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Janeway's session outlives her member row.
    let janeway = app.cookie_of("janeway").await;
    assert!(reads_tuvoks_log(&app, &janeway, "Logic is the beginning").await);
    app.post_by("janeway", "/member/janeway/delete", "").await;
    assert!(!reads_tuvoks_log(&app, &janeway, "Logic is the beginning").await);
    for (path, form) in [
        ("/member/tuvok/log", "text=x"),
        ("/member/janeway/log", "text=x"),
    ] {
        let r = app.post_as(path, form, &janeway).await;
        assert!(
            matches!(r.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
            "{path}: {}",
            r.status
        );
    }
    assert_eq!(Log::all(&app.state.db).await.unwrap().len(), 1);
}

/// Janeway watches Tuvok's log. Demoted by a rank change, her subscription ends at once; so
/// does Tuvok's own when his member row is deleted (his session remains).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_captain_and_a_deleted_member_stop_reading_at_once() {
    let app = app().await;
    let addr = app.serve().await;
    let janeway = app.cookie_of("janeway").await;
    let tuvok = app.cookie_of("tuvok").await;
    let mut captain = Live::connect(addr, Some(&janeway)).await;
    captain
        .sub(1, "logs", json!({"member": "tuvok"}), None)
        .await;
    captain.frame_of(1, |v| v["t"] == "reset").await;
    let mut own = Live::connect(addr, Some(&tuvok)).await;
    own.sub(1, "logs", json!({"member": "tuvok"}), None).await;
    own.frame_of(1, |v| v["t"] == "reset").await;

    // Janeway changes her own rank (a captain may).
    app.post_by(
        "janeway",
        "/member/janeway",
        "name=Kathryn+Janeway&rank=admiral&species=human",
    )
    .await;
    let v = captain.frame_of(1, |v| v["t"] == "end").await;
    assert_eq!(v["error"]["code"], "forbidden");
    tuvok_writes(&app, "after+the+demotion").await;
    own.until(1, |rows| rows.len() == 1).await;
    captain.send(json!({"op": "ping"})).await;
    let v = loop {
        let v = captain.next().await;
        if v["t"] == "pong" || v["sub"] == 1 {
            break v;
        }
    };
    assert_eq!(v["t"], "pong", "nothing more for the demoted captain: {v}");

    app.post_by("tuvok", "/member/tuvok/delete", "").await;
    let v = own.frame_of(1, |v| v["t"] == "end").await;
    assert_eq!(v["error"]["code"], "not_found", "{v}");
}

/// Methods over the live connection: a crewmate deletes no one else's entry, writes to no one
/// else's log, and control characters are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_methods_check_the_rule_for_every_entry() {
    let app = app().await;
    let addr = app.serve().await;
    tuvok_writes(&app, "Logic+is+the+beginning").await;
    let entry = Log::all(&app.state.db).await.unwrap()[0].clone();
    let entry_id = entry.id.unwrap().as_str().to_string();
    let neelix = app.cookie_of("neelix").await;
    let mut page = Live::connect(addr, Some(&neelix)).await;
    let calls = [
        json!({"name": "delete_log", "params": {"id": entry_id}}),
        json!({"name": "delete_log", "params": {"id": "x".repeat(5000)}}),
        json!({"name": "add_log", "params": {"member": "tuvok", "text": "forged"}}),
        json!({"name": "add_log", "params": {"member": "neelix", "text": "a\u{0}b"}}),
        json!({"name": "add_log", "params": {"member": "neelix", "text": "ok", "author": "tuvok"}}),
    ];
    for (id, call) in calls.iter().enumerate() {
        page.send(json!({"op": "call", "id": id, "name": call["name"], "params": call["params"]}))
            .await;
        let v = loop {
            let v = page.next().await;
            if v["t"] == "result" {
                break v;
            }
        };
        assert!(v["error"]["code"].is_string(), "{call}: {v}");
    }
    let logs = Log::all(&app.state.db).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].text, "Logic is the beginning");
}

/// Text from documents reaches the pages as text: a log entry and a species with markup.
#[tokio::test]
async fn markup_in_a_log_entry_or_a_species_is_shown_as_text() {
    let app = app().await;
    let xss = "<img src=x onerror=alert(1)>";
    let tuvok = app.cookie_of("tuvok").await;
    let r = app
        .post_as(
            "/member/tuvok/log",
            "text=%3Cimg+src%3Dx+onerror%3Dalert(1)%3E",
            &tuvok,
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let page = app.get_as("/member/tuvok", &tuvok).await.body;
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    assert!(!page.contains(xss));
    app.post_by(
        "janeway",
        "/ship/voyager/crew",
        "name=Kes&rank=ensign&species=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    )
    .await;
    let chart = app.get("/species").await.body;
    assert!(!chart.contains("<script>alert(1)"), "{chart}");
    let json: Value = serde_json::from_str(&app.get("/species.json").await.body).unwrap();
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["species"] == "\"><script>alert(1)</script>"));
}
