//! What the HTTP tests share: the app behind a router, requests, and reading live streams.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use remodel::Database;
use remodel::Model;
use starfleet::models::Crewmember;
use starfleet::{open_database, router, AppState};
use std::time::Duration;
use tower::ServiceExt;

pub struct App {
    pub state: AppState,
    pub router: Router,
}

pub async fn app() -> App {
    let db = open_database(None).await.expect("a temporary database");
    let state = AppState::new(db);
    App {
        router: router(state.clone()),
        state,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

impl App {
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let location = res
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            location,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    pub async fn post(&self, path: &str, form: &str) -> Reply {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_string()))
            .unwrap();
        self.send(req).await
    }

    pub async fn member_named(&self, name: &str) -> Crewmember {
        let c = Crewmember::fields();
        Crewmember::find(&self.state.db, c.name.eq(name))
            .await
            .unwrap()
            .expect(name)
    }
}

/// The next SSE event of `body` (`event:`, `id:` and `data:` lines), within 5 s.
pub async fn next_event(body: &mut Body, buf: &mut String) -> (String, Option<String>, String) {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut name, mut id, mut data) = (String::new(), None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if name.is_empty() {
                continue; // the `retry:` preamble
            }
            return (name, id, data);
        }
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(bytes) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&bytes).unwrap());
        }
    }
}

/// The next event of a ship page's stream for `list` (`crew` or `away`), or a `reload`.
pub async fn next_of(
    body: &mut Body,
    buf: &mut String,
    list: &str,
) -> (String, Option<String>, String) {
    loop {
        let e = next_event(body, buf).await;
        if e.0 == "reload" || e.0.starts_with(&format!("{list}-")) {
            return e;
        }
    }
}

pub async fn open_stream(app: &App, path: &str, last_event_id: Option<&str>) -> Body {
    let mut req = Request::get(path);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = app
        .router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    res.into_body()
}

/// The app on a database of its own choosing.
pub fn app_on(db: Database) -> App {
    let state = AppState::new(db);
    App {
        router: router(state.clone()),
        state,
    }
}
