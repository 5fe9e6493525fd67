//! What the HTTP tests share: the app behind a router, requests, the app served on
//! 127.0.0.1, and a WebSocket client of its publications.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use remodel::{Database, Model, Value};
use starfleet::models::Crewmember;
use starfleet::{open_database, router, AppState};
use std::net::SocketAddr;
use std::time::Duration;
use tower::ServiceExt;

pub struct App {
    pub state: AppState,
    pub router: Router,
}

pub async fn app() -> App {
    let db = open_database(None).await.expect("a temporary database");
    app_on(db).await
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

/// The app on a database of its own choosing.
pub async fn app_on(db: Database) -> App {
    let state = AppState::new(db).await.expect("the cookie key");
    App {
        router: router(state.clone()),
        state,
    }
}

impl App {
    /// Serves the app on 127.0.0.1 (for WebSocket clients); the address.
    pub async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = self.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    /// The session cookie of `member` (signing in through the picker).
    pub async fn cookie_of(&self, member: &str) -> String {
        let req = Request::post("/signin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("member_id={member}")))
            .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_string()
    }

    /// A GET with a session cookie.
    pub async fn get_as(&self, path: &str, cookie: &str) -> Reply {
        let req = Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    /// A form POST signed in as `member` (the app's rules decide who may change whom).
    pub async fn post_by(&self, member: &str, path: &str, form: &str) -> Reply {
        let cookie = self.cookie_of(member).await;
        self.post_as(path, form, &cookie).await
    }

    /// A form POST with a session cookie.
    pub async fn post_as(&self, path: &str, form: &str, cookie: &str) -> Reply {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, cookie)
            .body(Body::from(form.to_string()))
            .unwrap();
        self.send(req).await
    }
}

/// A page's WebSocket, with each subscription's rows as the frames left them.
pub struct Live {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Each subscription's rows, as the frames left them.
    pub results: remodel_web::Results,
}

impl Live {
    /// Opens the app's live connection at `addr` with a session `cookie` (or none).
    pub async fn connect(addr: SocketAddr, cookie: Option<&str>) -> Live {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/remodel/ws")
            .into_client_request()
            .unwrap();
        if let Some(c) = cookie {
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Live {
            ws,
            results: remodel_web::Results::default(),
        }
    }

    pub async fn sub(&mut self, id: u32, name: &str, params: Value, cursor: Option<&str>) {
        let mut frame = serde_json::json!({"op": "sub", "id": id, "name": name, "params": params});
        if let Some(c) = cursor {
            frame["cursor"] = c.into();
        }
        self.send(frame).await;
    }

    pub async fn send(&mut self, frame: Value) {
        use futures::SinkExt;
        let text = tokio_tungstenite::tungstenite::Message::text(frame.to_string());
        self.ws.send(text).await.unwrap();
    }

    /// The next frame (applied to the rows), within 5 s.
    pub async fn next(&mut self) -> Value {
        use futures::StreamExt;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("a frame within 5 s")
                .expect("the connection is open")
                .unwrap();
            let Ok(text) = msg.into_text() else { continue };
            let Ok(mut v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            // A large reset continues in `more` frames: taken whole, as one reset.
            while v["t"] == "reset" && v["more"] == true {
                let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                    .await
                    .expect("the rest of a reset within 5 s")
                    .expect("the connection is open")
                    .unwrap();
                let more: Value = serde_json::from_str(&msg.into_text().unwrap()).unwrap();
                let rows = more["rows"].as_array().cloned().unwrap_or_default();
                v["rows"].as_array_mut().unwrap().extend(rows);
                v["more"] = more["more"].clone();
            }
            self.results.apply(&v);
            return v;
        }
    }

    /// Reads frames until `sub`'s rows satisfy `pred`.
    pub async fn until(&mut self, sub: u32, pred: impl Fn(&[Value]) -> bool) {
        while !pred(&self.docs(sub)) {
            self.next().await;
        }
    }

    /// Reads frames until one of `sub` matches `pred`; returns it.
    pub async fn frame_of(&mut self, sub: u32, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await;
            if v["sub"] == sub && pred(&v) {
                return v;
            }
        }
    }

    /// `sub`'s rows (in key order).
    pub fn docs(&self, sub: u32) -> Vec<Value> {
        self.results.rows(sub)
    }

    /// The cursor subscription `sub` would resume from.
    pub fn cursor(&self, sub: u32) -> Option<String> {
        self.results.cursor(sub).map(String::from)
    }
}
