//! The app's publications and rules, through its WebSocket (as the page's script uses them):
//! each live part follows the writes made through the forms, a reconnect resumes, and the
//! personal log reaches only its member and their captain.

use axum::http::StatusCode;
use remodel::json;
use serde_json::Value;

mod common;
use common::*;

fn names(rows: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = rows
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ship_page_follows_its_crew_and_away_team_and_resumes() {
    let app = app().await;
    let addr = app.serve().await;
    let mut page = Live::connect(addr, None).await;
    page.sub(1, "crew", json!({"ship": "voyager"}), None).await;
    let reset = page.frame_of(1, |v| v["t"] == "reset").await;
    assert_eq!(
        reset["order"],
        json!([["name", "asc"]]),
        "crew lists by name"
    );
    assert_eq!(names(&page.docs(1)), ["Kathryn Janeway", "Neelix", "Tuvok"]);

    app.post_by(
        "janeway",
        "/ship/voyager/crew",
        "name=Kes&rank=ensign&species=ocampa",
    )
    .await;
    page.until(1, |rows| rows.len() == 4).await;
    app.post_by("janeway", "/member/tuvok/move", "ship_id=defiant")
        .await;
    page.until(1, |rows| rows.len() == 3).await;
    assert_eq!(names(&page.docs(1)), ["Kathryn Janeway", "Kes", "Neelix"]);

    // The away team: links, joined with the members by the page.
    page.sub(2, "away", json!({"ship": "voyager"}), None).await;
    page.frame_of(2, |v| v["t"] == "reset").await;
    app.post_by("janeway", "/ship/voyager/away", "member_id=picard")
        .await;
    page.until(2, |rows| {
        rows.iter().any(|l| l["crewmember_id"] == "picard")
    })
    .await;

    // Cut, writes meanwhile, then resume from the cursor: only what was missed comes.
    let cursor = page.cursor(1).unwrap();
    drop(page);
    app.post_by("janeway", "/member/neelix/delete", "").await;
    let mut page = Live::connect(addr, None).await;
    page.sub(1, "crew", json!({"ship": "voyager"}), Some(&cursor))
        .await;
    let v = page.frame_of(1, |_| true).await;
    assert_eq!(v["t"], "change", "resumed, not reset: {v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
    assert_eq!(v["rows"][0][0], "neelix");
    assert!(v["rows"][0][1].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_members_and_the_leaderboard_are_live() {
    let app = app().await;
    let addr = app.serve().await;
    let mut page = Live::connect(addr, None).await;
    page.sub(1, "ship_counts", json!(null), None).await;
    page.sub(2, "member", json!({"member": "tuvok"}), None)
        .await;
    page.sub(3, "leaderboard", json!(null), None).await;
    page.sub(4, "species", json!(null), None).await;
    page.sub(5, "members", json!(null), None).await;
    page.sub(6, "ships", json!(null), None).await;
    page.until(5, |rows| rows.len() == 9).await;
    page.until(6, |rows| rows.len() == 3).await;
    let count = |p: &Live, ship: Value| {
        p.docs(1)
            .iter()
            .find(|g| g["group"] == ship)
            .map(|g| g["reduction"].clone())
    };
    page.until(1, |rows| rows.len() == 3).await;
    app.post_by("janeway", "/member/tuvok/remove", "").await;
    // A group that appears (members without a ship: `group` null) and one that shrinks.
    page.until(1, |rows| rows.len() == 4).await;
    assert_eq!(count(&page, json!(null)), Some(json!(1)));
    assert_eq!(count(&page, json!("voyager")), Some(json!(2)));
    page.until(2, |rows| {
        rows.first().is_some_and(|m| m["starship_id"].is_null())
    })
    .await;
    app.post_by("tuvok", "/member/tuvok/delete", "").await;
    page.until(2, |rows| rows.is_empty()).await;
    page.until(1, |rows| rows.len() == 3).await;
    page.until(4, |rows| !rows.iter().any(|g| g["group"] == "vulcan"))
        .await;
    for p in [10, 50, 20, 40, 30, 60] {
        app.post("/leaderboard", &format!("player=p{p}&points={p}"))
            .await;
    }
    page.until(3, |rows| {
        let mut points: Vec<i64> = rows.iter().map(|s| s["points"].as_i64().unwrap()).collect();
        points.sort();
        points == [20, 30, 40, 50, 60]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_personal_log_reaches_only_its_member_and_their_captain() {
    let app = app().await;
    let addr = app.serve().await;
    let tuvok = app.cookie_of("tuvok").await;
    let janeway = app.cookie_of("janeway").await; // Voyager's captain
    let neelix = app.cookie_of("neelix").await; // Voyager, not captain
    let picard = app.cookie_of("picard").await; // another ship's captain

    // Refused: no one signed in, a crewmate, another ship's captain, a forged cookie.
    for cookie in [
        None,
        Some(neelix.as_str()),
        Some(picard.as_str()),
        Some("starfleet_member=tuvok"),
    ] {
        let mut page = Live::connect(addr, cookie).await;
        page.sub(1, "logs", json!({"member": "tuvok"}), None).await;
        let v = page.frame_of(1, |_| true).await;
        assert_eq!(v["t"], "end", "{cookie:?}");
        assert_eq!(v["error"]["code"], "forbidden", "{cookie:?}");
        // Nor can they write to it.
        page.send(json!({"op": "call", "id": 1, "name": "add_log", "params": {"member": "tuvok", "text": "forged"}}))
            .await;
        let v = loop {
            let v = page.next().await;
            if v["t"] == "result" {
                break v;
            }
        };
        assert_eq!(v["error"]["code"], "forbidden", "{cookie:?}");
    }

    let mut own = Live::connect(addr, Some(&tuvok)).await;
    own.sub(1, "logs", json!({"member": "tuvok"}), None).await;
    own.frame_of(1, |v| v["t"] == "reset").await;
    let mut captain = Live::connect(addr, Some(&janeway)).await;
    captain
        .sub(1, "logs", json!({"member": "tuvok"}), None)
        .await;
    captain.frame_of(1, |v| v["t"] == "reset").await;

    own.send(json!({"op": "call", "id": 7, "name": "add_log", "params": {"member": "tuvok", "text": "Logic is the beginning of wisdom."}}))
        .await;
    own.until(1, |rows| rows.len() == 1).await;
    captain.until(1, |rows| rows.len() == 1).await;
    // Through the form too, as the captain.
    let r = app
        .post_as("/member/tuvok/log", "text=Well+done", &janeway)
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    own.until(1, |rows| rows.len() == 2).await;
    // The page shows the log to them only.
    assert!(app
        .get_as("/member/tuvok", &janeway)
        .await
        .body
        .contains("Logic is the beginning"));
    for page in [
        app.get("/member/tuvok").await,
        app.get_as("/member/tuvok", &neelix).await,
    ] {
        assert!(!page.body.contains("Logic is the beginning"));
        assert!(page.body.contains("id=\"log-locked\""));
    }
    assert_eq!(
        app.post_as("/member/tuvok/log", "text=forged", &neelix)
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // The rule changes mid-stream: Tuvok moves to the Defiant; Janeway is no longer his
    // captain, and her subscription ends before anything more of his log reaches her.
    app.post_by("janeway", "/member/tuvok/move", "ship_id=defiant")
        .await;
    let v = captain.frame_of(1, |v| v["t"] == "end").await;
    assert_eq!(v["error"]["code"], "forbidden");
    own.send(json!({"op": "call", "id": 8, "name": "add_log", "params": {"member": "tuvok", "text": "secret"}}))
        .await;
    own.until(1, |rows| rows.len() == 3).await;
    captain.send(json!({"op": "ping"})).await;
    let v = loop {
        let v = captain.next().await;
        if v["t"] == "pong" || v["sub"] == 1 {
            break v;
        }
    };
    assert_eq!(v["t"], "pong", "nothing more of the log: {v}");
    let written: Vec<Value> = remodel::Value::Array(own.docs(1))
        .as_array()
        .unwrap()
        .clone();
    assert!(written.iter().all(|l| l["crewmember_id"] == "tuvok"));
}

#[tokio::test]
async fn an_edit_over_someone_elses_change_is_refused() {
    let app = app().await;
    let page = app.get("/member/tuvok").await.body;
    assert!(page.contains("name=\"was_rank\" value=\"lieutenant commander\""));
    // Someone else promotes Tuvok meanwhile.
    app.post_by(
        "janeway",
        "/member/tuvok",
        "name=Tuvok&rank=commander&species=vulcan",
    )
    .await;
    let form = "name=Tuvok&rank=ensign&species=vulcan&was_name=Tuvok&was_rank=lieutenant+commander&was_species=vulcan";
    let r = app.post_by("janeway", "/member/tuvok", form).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("someone else changed"), "{}", r.body);
    assert!(app.get("/member/tuvok").await.body.contains(">commander<"));
    // From the current values, it saves.
    let form = "name=Tuvok&rank=captain&species=vulcan&was_name=Tuvok&was_rank=commander&was_species=vulcan";
    assert_eq!(
        app.post_by("janeway", "/member/tuvok", form).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_form_address_opened_as_a_page_is_a_page() {
    let app = app().await;
    for (path, back) in [
        ("/ship/voyager/crew", "/ship/voyager"),
        ("/member/tuvok/move", "/member/tuvok"),
        ("/signout", "/"),
    ] {
        let r = app.get(path).await;
        assert_eq!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{path}: {}",
            r.body
        );
        assert!(r.body.contains("<!doctype html>"), "{path}: {}", r.body);
        // (minijinja writes `/` in attributes as `&#x2f;`, which a browser reads as `/`.)
        let body = r.body.replace("&#x2f;", "/");
        assert!(body.contains(&format!("href=\"{back}\"")), "{path}: {body}");
    }
}

#[tokio::test]
async fn signing_in_shows_who_and_a_picker() {
    let app = app().await;
    let picker = app.get("/signin").await.body;
    assert!(picker.contains("value=\"tuvok\""));
    let cookie = app.cookie_of("tuvok").await;
    let page = app.get_as("/", &cookie).await.body;
    assert!(page.contains("Signed in as <a href=\"/member/tuvok\" id=\"me\">Tuvok</a>"));
    assert_eq!(
        app.post("/signin", "member_id=nobody").await.status,
        StatusCode::NOT_FOUND
    );
    // A tampered cookie is no one.
    let forged = cookie.replace("tuvok", "janeway");
    assert!(!app.get_as("/", &forged).await.body.contains("Signed in as"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_and_the_stats_follow_their_methods() {
    let app = app().await;
    let addr = app.serve().await;
    let mut page = Live::connect(addr, None).await;
    page.sub(1, "map", json!({}), None).await;
    page.sub(2, "stats", json!({}), None).await;
    page.until(1, |rows| rows.len() == 3).await;
    page.until(2, |rows| rows.iter().any(|r| r["type"] == "database"))
        .await;
    // Moves: refused off the map or for a ship that is not there; the last write wins.
    for (id, params, code) in [
        (
            1,
            json!({"ship": "voyager", "x": -1.0, "y": 10.0}),
            Some("invalid"),
        ),
        (
            2,
            json!({"ship": "voyager", "x": 10.0, "y": 1e9}),
            Some("invalid"),
        ),
        (
            3,
            json!({"ship": "nx-01", "x": 10.0, "y": 10.0}),
            Some("not_found"),
        ),
        (4, json!({"ship": "voyager", "x": 10.0, "y": 20.0}), None),
        (5, json!({"ship": "voyager", "x": 30.0, "y": 40.0}), None),
    ] {
        page.send(json!({"op": "call", "id": id, "name": "move_ship", "params": params}))
            .await;
        let v = loop {
            let v = page.next().await;
            if v["t"] == "result" && v["call"] == id {
                break v;
            }
        };
        assert_eq!(v["error"]["code"].as_str(), code, "{v}");
    }
    page.until(1, |rows| {
        rows.iter()
            .any(|s| s["id"] == "voyager" && s["x"] == 30.0 && s["y"] == 40.0)
    })
    .await;
    // Traffic shows in the stats within a few seconds.
    page.send(json!({"op": "call", "id": 9, "name": "traffic", "params": {}}))
        .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let db = page
            .docs(2)
            .into_iter()
            .find(|r| r["type"] == "database")
            .unwrap();
        if db["writes_per_sec"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no writes in the stats: {db}"
        );
        page.next().await;
    }
}
