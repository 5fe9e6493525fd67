//! HTTP tests of every route, against a temporary database: status codes, content, 404 for
//! unknown ids, 400 with a message for malformed input, HTML in names shown escaped, and the
//! scripts of the live pages (their publications are tested in `live.rs`).

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use remodel::Model;
use starfleet::models::{Crewmember, Starship};
use starfleet::open_database;

mod common;
use common::*;

/// The crew table of a ship page (the page also lists everyone in the away-team form).
fn crew_of(page: &str) -> &str {
    let start = page.find("<tbody id=\"crew\"").expect("a ship page");
    &page[start..start + page[start..].find("</tbody>").unwrap()]
}

fn message(body: &str) -> &str {
    let start = body.find("<p id=\"message\">").expect("an error page") + 16;
    &body[start..start + body[start..].find("</p>").unwrap()]
}

#[tokio::test]
async fn the_ship_list_shows_every_ship_with_its_crew_count() {
    let app = app().await;
    let r = app.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    for ship in ["voyager", "enterprise", "defiant"] {
        assert!(r.body.contains(&format!("href=\"/ship/{ship}\"")), "{ship}");
        assert!(
            r.body.contains(&format!("data-count=\"{ship}\">3<")),
            "{ship}: {}",
            r.body
        );
    }
    assert!(r.body.contains("data-page=\"index\""));
    assert!(r
        .body
        .contains("<script type=\"module\" src=\"/starfleet.js\">"));
}

#[tokio::test]
async fn a_ship_page_shows_its_crew_and_forms() {
    let app = app().await;
    let r = app.get("/ship/voyager").await;
    assert_eq!(r.status, StatusCode::OK);
    for name in ["Kathryn Janeway", "Neelix", "Tuvok"] {
        assert!(r.body.contains(name), "{name}");
    }
    assert!(!crew_of(&r.body).contains("Picard"));
    assert!(r.body.contains("action=\"/ship/voyager/crew\""));
    assert!(r.body.contains("action=\"/member/tuvok/move\""));
    assert!(r
        .body
        .contains("<option value=\"enterprise\">Enterprise</option>"));
    assert!(r.body.contains("action=\"/member/tuvok/remove\""));
    assert!(r.body.contains("href=\"/member/tuvok\""));

    let r = app.get("/ship/excelsior").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(message(&r.body), "There is no starship `excelsior`.");
}

#[tokio::test]
async fn adding_a_member_shows_html_in_names_as_text() {
    let app = app().await;
    let r = app
        .post_by(
            "janeway",
            "/ship/voyager/crew",
            "name=%3Cscript%3Ealert(1)%3C%2Fscript%3E&rank=ensign&species=ocampa",
        )
        .await;
    assert_eq!(
        (r.status, r.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/ship/voyager"))
    );
    let page = app.get("/ship/voyager").await.body;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert"));
    let kes = app.member_named("<script>alert(1)</script>").await;
    assert_eq!(
        kes.starship_id.as_ref().map(|s| s.as_str()),
        Some("voyager")
    );
    let member_page = app.get(&format!("/member/{}", kes.id_str())).await.body;
    assert!(!member_page.contains("<script>alert"));
    assert!(app
        .get("/")
        .await
        .body
        .contains("data-count=\"voyager\">4<"));
}

#[tokio::test]
async fn malformed_forms_are_400_pages_that_say_what_is_wrong() {
    let app = app().await;
    let cases = [
        (
            "/ship/voyager/crew",
            "name=++&rank=ensign&species=ocampa",
            "The name must not be empty.",
        ),
        (
            "/ship/voyager/crew",
            "name=Kes&species=ocampa",
            "missing field `rank`",
        ),
        (
            "/ship/voyager/crew",
            &format!("name={}&rank=a&species=b", "x".repeat(81)),
            "at most 80 characters",
        ),
        (
            "/ship/voyager/crew",
            "name=K%00es&rank=a&species=b",
            "control characters",
        ),
        (
            "/member/tuvok",
            "name=Tuvok&rank=&species=vulcan",
            "The rank must not be empty.",
        ),
        (
            "/member/tuvok/move",
            "ship_id=excelsior",
            "There is no starship `excelsior` to move to.",
        ),
        ("/member/tuvok/move", "", "missing field `ship_id`"),
        (
            "/ship/voyager/away",
            "member_id=q",
            "There is no crew member `q` to assign.",
        ),
        (
            "/leaderboard",
            "player=Paris&points=lots",
            "The points must be a whole number, not `lots`.",
        ),
        (
            "/leaderboard",
            "player=Paris&points=-5",
            "between 0 and 1,000,000,000",
        ),
        (
            "/leaderboard",
            "player=Paris&points=99999999999999999999",
            "whole number",
        ),
        (
            "/leaderboard",
            "player=&points=5",
            "The player must not be empty.",
        ),
    ];
    for (path, form, expected) in cases {
        let r = app.post(path, form).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} {form}");
        assert!(
            message(&r.body).contains(expected),
            "{path} {form}: {}",
            message(&r.body)
        );
    }
    // Not a form at all.
    let req = Request::post("/ship/voyager/crew")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(message(&r.body).contains("could not be read"));
    // Nothing was written.
    assert_eq!(Crewmember::count(&app.state.db).await.unwrap(), 9);
}

#[tokio::test]
async fn unknown_ids_are_404_pages() {
    let app = app().await;
    for path in [
        "/ship/nx-01",
        "/member/q",
        "/nowhere",
        "/ship/voyager/events/x",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(r.body.contains("404 Not Found"), "{path}");
    }
    let r = app.get("/member/%3Cb%3Eq%3C%2Fb%3E").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        message(&r.body),
        "There is no crew member `&lt;b&gt;q&lt;&#x2f;b&gt;`."
    );
    for (path, form) in [
        ("/ship/nx-01/crew", "name=a&rank=b&species=c"),
        ("/member/q", "name=a&rank=b&species=c"),
        ("/member/q/move", "ship_id=voyager"),
        ("/member/q/remove", ""),
        ("/member/q/delete", ""),
        ("/ship/nx-01/away", "member_id=tuvok"),
        ("/ship/voyager/away/q/release", ""),
    ] {
        assert_eq!(
            app.post(path, form).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_scripts_are_served() {
    let app = app().await;
    let r = app.get("/starfleet.js").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("from \"/remodel/client.js\""));
    let r = app.get("/remodel/client.js").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("export function connect"));
}

#[tokio::test]
async fn a_member_page_shows_rank_species_and_ship() {
    let app = app().await;
    let r = app.get("/member/tuvok").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("<h1 id=\"member-name\">Tuvok</h1>"));
    assert!(r
        .body
        .contains("<td id=\"member-rank\">lieutenant commander</td>"));
    assert!(r.body.contains("<td id=\"member-species\">vulcan</td>"));
    assert!(r.body.contains("<a href=\"/ship/voyager\">Voyager</a>"));
    assert!(r.body.contains("action=\"/member/tuvok/delete\""));
}

#[tokio::test]
async fn editing_a_member_changes_its_page_and_its_ship_page() {
    let app = app().await;
    let r = app
        .post_by(
            "janeway",
            "/member/tuvok",
            "name=Tuvok&rank=commander&species=vulcan",
        )
        .await;
    assert_eq!(
        (r.status, r.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/member/tuvok"))
    );
    assert!(app
        .get("/member/tuvok")
        .await
        .body
        .contains("<td id=\"member-rank\">commander</td>"));
    assert!(app
        .get("/ship/voyager")
        .await
        .body
        .contains("<td>commander</td>"));
}

#[tokio::test]
async fn moving_removing_and_deleting_members() {
    let app = app().await;
    // Anonymous, or not his captain: refused.
    for who in [None, Some("picard"), Some("neelix")] {
        let r = match who {
            Some(who) => {
                app.post_by(who, "/member/tuvok/move", "ship_id=enterprise")
                    .await
            }
            None => app.post("/member/tuvok/move", "ship_id=enterprise").await,
        };
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{who:?}");
    }
    let r = app
        .post_by("janeway", "/member/tuvok/move", "ship_id=enterprise")
        .await;
    assert_eq!(
        (r.status, r.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/ship/enterprise"))
    );
    assert!(crew_of(&app.get("/ship/enterprise").await.body).contains("Tuvok"));
    assert!(!crew_of(&app.get("/ship/voyager").await.body).contains("Tuvok"));
    let index = app.get("/").await.body;
    assert!(
        index.contains("data-count=\"enterprise\">4<")
            && index.contains("data-count=\"voyager\">2<")
    );

    // His captain now is Picard.
    assert_eq!(
        app.post_by("janeway", "/member/tuvok/remove", "")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = app.post_by("picard", "/member/tuvok/remove", "").await;
    assert_eq!(
        (r.status, r.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/ship/enterprise"))
    );
    assert!(!crew_of(&app.get("/ship/enterprise").await.body).contains("Tuvok"));
    assert!(app
        .get("/member/tuvok")
        .await
        .body
        .contains("<th>Ship</th><td id=\"member-ship\">none</td>"));
    assert!(app.get("/").await.body.contains("data-count=\"\">1<"));

    // Without a ship, he decides for himself.
    let r = app.post_by("tuvok", "/member/tuvok/delete", "").await;
    assert_eq!(
        (r.status, r.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/"))
    );
    assert_eq!(app.get("/member/tuvok").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn captains_come_with_their_ships() {
    let app = app().await;
    let r = app.get("/captains").await;
    assert_eq!(r.status, StatusCode::OK);
    for (captain, ship) in [
        ("janeway", "Voyager"),
        ("picard", "Enterprise"),
        ("sisko", "Defiant"),
    ] {
        let row = format!("<a href=\"/member/{captain}\">");
        let at = r.body.find(&row).unwrap_or_else(|| panic!("{captain}"));
        let rest = &r.body[at..];
        let row_end = rest.find("</tr>").unwrap();
        assert!(
            rest[..row_end].contains(&format!(">{ship}</a>")),
            "{captain}"
        );
    }
    assert!(!r.body.contains("Tuvok"));
}

#[tokio::test]
async fn species_as_chart_csv_and_json() {
    let app = app().await;
    app.post_by(
        "sisko",
        "/ship/defiant/crew",
        "name=Worf&rank=lieutenant+commander&species=klingon",
    )
    .await;
    app.post_by(
        "sisko",
        "/ship/defiant/crew",
        "name=Quark&rank=civilian&species=%3Dferengi%2C+mostly",
    )
    .await;
    let r = app.get("/species").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("<svg"));
    assert!(r.body.contains("data-species=\"human\" data-count=\"3\""));
    assert!(r.body.contains("data-species=\"klingon\" data-count=\"1\""));
    assert_eq!(r.body.matches("class=\"bar\"").count(), 9);

    let csv = app.get("/species.csv").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(
        csv.body,
        "species,count\r\nhuman,3\r\n\"'=ferengi, mostly\",1\r\nandroid,1\r\nbajoran,1\r\nbetazoid,1\r\n\
         klingon,1\r\ntalaxian,1\r\ntrill,1\r\nvulcan,1\r\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&app.get("/species.json").await.body).unwrap();
    assert_eq!(json[0], serde_json::json!({"species": "human", "count": 3}));
    assert_eq!(json.as_array().unwrap().len(), 9);
}

#[tokio::test]
async fn the_leaderboard_keeps_the_top_five() {
    let app = app().await;
    assert!(app
        .get("/leaderboard")
        .await
        .body
        .contains("No scores yet."));
    for (player, points) in [
        ("Paris", 40),
        ("Kim", 10),
        ("Torres", 70),
        ("Seven", 90),
        ("Doctor", 20),
        ("Chakotay", 5),
    ] {
        let r = app
            .post("/leaderboard", &format!("player={player}&points={points}"))
            .await;
        assert_eq!(
            (r.status, r.location.as_deref()),
            (StatusCode::SEE_OTHER, Some("/leaderboard"))
        );
    }
    let body = app.get("/leaderboard").await.body;
    let order: Vec<usize> = ["Seven", "Torres", "Paris", "Doctor", "Kim"]
        .iter()
        .map(|p| body.find(p).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{body}");
    assert!(!body.contains("Chakotay"));
    assert_eq!(body.matches("class=\"score\"").count(), 5);
}

#[tokio::test]
async fn away_teams_assign_and_release() {
    let app = app().await;
    let r = app
        .post_by("janeway", "/ship/voyager/away", "member_id=picard")
        .await;
    assert_eq!(
        (r.status, r.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/ship/voyager"))
    );
    app.post_by("janeway", "/ship/voyager/away", "member_id=tuvok")
        .await;
    app.post_by("janeway", "/ship/defiant/away", "member_id=tuvok")
        .await;
    let voyager = app.get("/ship/voyager").await.body;
    assert!(voyager.contains("id=\"away-picard\"") && voyager.contains("id=\"away-tuvok\""));
    assert!(voyager.contains("action=\"/ship/voyager/away/picard/release\""));
    // The assign form offers only officers not on the team yet.
    assert!(!voyager.contains("<option value=\"picard\">"));
    assert!(voyager.contains("<option value=\"data\">Data</option>"));
    let tuvok = app.get("/member/tuvok").await.body;
    assert!(
        tuvok.contains(">Voyager</a>, <a href=\"/ship/defiant\">Defiant</a>")
            || tuvok.contains(">Defiant</a>, <a href=\"/ship/voyager\">Voyager</a>"),
        "{tuvok}"
    );
    // Picard's own crew is untouched.
    assert!(crew_of(&app.get("/ship/enterprise").await.body).contains("Jean-Luc Picard"));

    // No one signed in assigns or releases no one.
    let r = app.post("/ship/voyager/away", "member_id=data").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.post("/ship/voyager/away/picard/release", "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let voyager = app.get("/ship/voyager").await.body;
    assert!(!voyager.contains("id=\"away-data\"") && voyager.contains("id=\"away-picard\""));
    let r = app
        .post_by("janeway", "/ship/voyager/away/tuvok/release", "")
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(!app
        .get("/ship/voyager")
        .await
        .body
        .contains("id=\"away-tuvok\""));
    // Released from Voyager only: still on the Defiant's away team.
    assert!(app
        .get("/ship/defiant")
        .await
        .body
        .contains("id=\"away-tuvok\""));
}

#[tokio::test]
async fn the_crews_are_loaded_once() {
    let dir = std::env::temp_dir().join(format!("starfleet-seed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = open_database(Some(&dir)).await.unwrap();
    assert_eq!(Crewmember::count(&db).await.unwrap(), 9);
    assert_eq!(Starship::count(&db).await.unwrap(), 3);
    Crewmember::get(&db, "neelix")
        .await
        .unwrap()
        .unwrap()
        .delete(&db)
        .await
        .unwrap();
    db.close().await.unwrap();
    drop(db);
    let db = open_database(Some(&dir)).await.unwrap();
    assert_eq!(
        Crewmember::count(&db).await.unwrap(),
        8,
        "a deleted member stays deleted"
    );
    assert_eq!(Starship::count(&db).await.unwrap(), 3);
    db.close().await.unwrap();
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn odd_ids_are_404_not_500() {
    let app = app().await;
    let long = "x".repeat(5000);
    for id in [long.as_str(), "%00", "%20", "..", "%E2%80%AE", "a%2Fb"] {
        for path in [format!("/member/{id}"), format!("/ship/{id}")] {
            let r = app.get(&path).await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{}",
                &path[..path.len().min(40)]
            );
        }
        let r = app
            .post("/member/tuvok/move", &format!("ship_id={id}"))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = app
            .post("/ship/voyager/away", &format!("member_id={id}"))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
}

/// A delete and a move of the same member sent together: whichever commits first, a
/// deleted member stays deleted (the move is a 404 then), never brought back by the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_and_a_move_sent_together_never_bring_the_member_back() {
    let app = std::sync::Arc::new(app().await);
    let members: Vec<String> = Crewmember::all(&app.state.db)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id.unwrap().to_string())
        .collect();
    // Each member deletes themself while their captain moves them (a captain deleted
    // first can no longer move anyone: 403).
    let captain = |id: &str| match id {
        "janeway" | "neelix" | "tuvok" => "janeway",
        "picard" | "data" | "troi" => "picard",
        _ => "sisko",
    };
    let mut cookies = std::collections::HashMap::new();
    for id in &members {
        cookies.insert(id.clone(), app.cookie_of(id).await);
    }
    let mut tasks = Vec::new();
    for id in &members {
        let (a, b) = (app.clone(), app.clone());
        let (d, m) = (format!("/member/{id}/delete"), format!("/member/{id}/move"));
        let (me, cap) = (cookies[id].clone(), cookies[captain(id)].clone());
        tasks.push(tokio::spawn(
            async move { a.post_as(&d, "", &me).await.status },
        ));
        tasks.push(tokio::spawn(async move {
            b.post_as(&m, "ship_id=defiant", &cap).await.status
        }));
    }
    for t in tasks {
        let status = t.await.unwrap();
        assert!(
            [
                StatusCode::SEE_OTHER,
                StatusCode::NOT_FOUND,
                StatusCode::FORBIDDEN
            ]
            .contains(&status),
            "{status}"
        );
    }
    let left = Crewmember::count(&app.state.db).await.unwrap();
    assert_eq!(left, 0, "deleted members came back");
}

#[tokio::test]
async fn a_captain_moves_onto_no_other_ship() {
    let app = app().await;
    // On another ship she would be its captain too, and read its crew's logs: a captain is
    // never moved, not by herself, not by another captain; nor promoted by a crewmate.
    for (who, path) in [
        ("janeway", "/member/janeway/move"),
        ("picard", "/member/janeway/move"),
        ("sisko", "/member/janeway/move"),
    ] {
        let r = app.post_by(who, path, "ship_id=defiant").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{who}");
    }
    let r = app
        .post_by(
            "neelix",
            "/member/neelix",
            "name=Neelix&rank=captain&species=talaxian",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Without a ship, she still cannot take herself onto one.
    let r = app.post_by("janeway", "/member/janeway/remove", "").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = app
        .post_by("janeway", "/member/janeway/move", "ship_id=enterprise")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}
