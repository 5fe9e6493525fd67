//! A test app on 127.0.0.1 (members of ships, a private log per member, a top-3 by points),
//! and a WebSocket client that rebuilds each subscription's result from the frames, as the
//! JavaScript client does.
//!
//! Rules of the app: a member's log is read by the member and by the captain of the member's
//! ship (the captain does not see the `secret` field); `add_log` writes to the caller's own
//! log, at most 200 characters.

#![allow(dead_code)]

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use futures::{SinkExt, StreamExt};
use remodel::{json, ChangeLogRetention, Config, Database, IndexSpec, Order, Value};
use remodel_web::{Caller, Limits, Live, NoParams, Refusal, Results, Web};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Who is asking: the `x-user` header (a stand-in for the app's signed session).
#[derive(Clone, Debug)]
pub struct User(pub String);

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = StatusCode;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, StatusCode> {
        let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok());
        user.map(|u| User(u.to_string()))
            .ok_or(StatusCode::UNAUTHORIZED)
    }
}

pub struct App {
    pub addr: SocketAddr,
    pub db: Database,
    pub web: Web<User>,
}

/// The parameters of publications about one member.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub member: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Points {
    from: u64,
    to: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLog {
    text: String,
}

static CLOCK: AtomicU64 = AtomicU64::new(1);

/// May `caller` read `member`'s log? The member, or the captain of the member's ship.
/// Returns the member's ship.
pub async fn may_read(caller: &Caller<User>, member: &str) -> Result<String, Refusal> {
    let db = &caller.db;
    let m = db.table("members").get(member).run().await?;
    let m = m.ok_or_else(|| Refusal::not_found("no such member"))?;
    let ship = m["ship"].as_str().unwrap_or_default().to_string();
    if caller.identity.0 == member {
        return Ok(ship);
    }
    let s = db.table("ships").get(ship.as_str()).run().await?;
    match s {
        Some(s) if s["captain"] == caller.identity.0.as_str() => Ok(ship),
        _ => Err(Refusal::forbidden(
            "only the member and their captain read this log",
        )),
    }
}

/// A member's log as `caller` may read it (the captain does not see `secret`), decided
/// again when the member moves or the ship gets a new captain.
async fn logs(caller: Caller<User>, p: Member) -> Result<Live, Refusal> {
    let ship = may_read(&caller, &p.member).await?;
    let own = caller.identity.0 == p.member;
    let db = &caller.db;
    let member = p.member.clone();
    let logs = db.table("logs").get_all([p.member.as_str()]).index("owner");
    Ok(Live::new(logs.changes())
        .rule(move |row| row["owner"] == member.as_str())
        .view(move |mut row| {
            if !own {
                row.as_object_mut().map(|o| o.remove("secret"));
            }
            row
        })
        .sort_by("at")
        // A member who moves, or a ship with a new captain: decide again.
        .guard(db.table("members").get(p.member.as_str()).changes())
        .guard(db.table("ships").get(ship.as_str()).changes()))
}

/// The members keyed by an object whose fields come in an order that follows the row (a key
/// equal as a value, written differently).
fn keyed(caller: &Caller<User>) -> Live {
    let members = caller.db.table("members").query().changes();
    Live::new(members).key_with(|row| {
        let id = row["id"].clone();
        Some(match row["points"].as_u64().unwrap_or(0) % 2 {
            0 => json!({"id": id, "kind": "member"}),
            _ => json!({"kind": "member", "id": id}),
        })
    })
}

/// A small deterministic generator (no dependency for a test's random writes).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

pub async fn start(limits: Limits) -> App {
    start_with(limits, Duration::from_millis(20)).await
}

/// A temporary database with a change log of `retention`, these tables, and an index on
/// one field of each `(table, field)` (named after the field).
pub async fn database(
    retention: ChangeLogRetention,
    tables: &[&str],
    indexes: &[(&str, &str)],
) -> Database {
    let db = Config::temporary()
        .change_log(retention)
        .open()
        .await
        .unwrap();
    for t in tables {
        db.create_table(t).await.unwrap();
    }
    for &(t, field) in indexes {
        db.table(t)
            .create_index(field, IndexSpec::field(field))
            .await
            .unwrap();
    }
    db
}

pub async fn start_with(limits: Limits, window: Duration) -> App {
    let db = database(
        ChangeLogRetention::default(),
        &["members", "ships", "logs"],
        &[("logs", "owner"), ("members", "points")],
    )
    .await;
    db.table("ships")
        .insert_many([
            json!({"id": "enterprise", "captain": "kirk"}),
            json!({"id": "voyager", "captain": "janeway"}),
        ])
        .await
        .unwrap();
    db.table("members")
        .insert_many([
            json!({"id": "kirk", "name": "Kirk", "ship": "enterprise", "points": 5}),
            json!({"id": "spock", "name": "Spock", "ship": "enterprise", "points": 9}),
            json!({"id": "uhura", "name": "Uhura", "ship": "enterprise", "points": 7}),
            json!({"id": "janeway", "name": "Janeway", "ship": "voyager", "points": 8}),
        ])
        .await
        .unwrap();
    let web = Web::<User>::builder(db.clone())
        .limits(limits)
        .window(window)
        .publish("members", |caller, _: NoParams| async move {
            Ok(Live::new(caller.db.table("members").query().changes()).sort_by("name"))
        })
        .publish("shared_members", |caller, _: NoParams| async move {
            let members = caller.db.table("members").query().changes();
            Ok(Live::new(members).sort_by("name").shared())
        })
        // Members with points in [from, to): a result of two parameters.
        .publish("shared_points", |caller, p: Points| async move {
            let members = caller.db.table("members").query().changes();
            Ok(Live::new(members)
                .rule(move |row| {
                    let points = row["points"].as_u64().unwrap_or(0);
                    p.from <= points && points < p.to
                })
                .shared())
        })
        .publish(
            "keyed",
            |caller, _: NoParams| async move { Ok(keyed(&caller)) },
        )
        .publish("shared_keyed", |caller, _: NoParams| async move {
            Ok(keyed(&caller).shared())
        })
        .publish("top", |caller, _: NoParams| async move {
            let top = caller
                .db
                .table("members")
                .order_by(Order::index("points").desc())
                .limit(3);
            Ok(Live::new(top.changes()).sort_by_desc("points"))
        })
        .publish(
            "logs",
            |caller, p: Member| async move { logs(caller, p).await },
        )
        .publish("shared_logs", |caller, p: Member| async move {
            let own = caller.identity.0 == p.member;
            // The view depends on whether the caller is the member.
            Ok(logs(caller, p)
                .await?
                .shared_by(if own { "own" } else { "other" }))
        })
        .method("add_log", |caller, p: NewLog| async move {
            if p.text.is_empty() || p.text.chars().count() > 200 {
                return Err(Refusal::invalid("a log entry has 1 to 200 characters"));
            }
            let at = CLOCK.fetch_add(1, Ordering::Relaxed);
            let doc = json!({"owner": caller.identity.0, "text": p.text, "at": at, "secret": "s"});
            let written = caller.db.table("logs").insert(doc).await?;
            Ok(written.generated_keys.first().cloned())
        })
        .build();
    serve(&db, web).await
}

/// Serves `web` (on `db`) on 127.0.0.1.
pub async fn serve(db: &Database, web: Web<User>) -> App {
    let router = axum::Router::new().merge(web.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    App {
        addr,
        db: db.clone(),
        web,
    }
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client: one socket, and each subscription's rows as rebuilt from its frames.
pub struct Client {
    pub ws: Socket,
    /// Each subscription's rows, as the frames left them.
    pub results: Results,
    /// The frames of a `batch` not returned yet.
    pending: std::collections::VecDeque<Value>,
    /// How many `batch` messages came.
    pub batches: usize,
    /// How many text messages came (a batch is one).
    pub messages: usize,
}

pub async fn handshake(
    addr: SocketAddr,
    user: Option<&str>,
    origin: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}/remodel/ws")
        .into_client_request()
        .unwrap();
    if let Some(u) = user {
        req.headers_mut().insert("x-user", u.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

impl Client {
    pub async fn connect(app: &App, user: &str) -> Client {
        let ws = handshake(app.addr, Some(user), None).await.unwrap();
        let mut c = Client {
            ws,
            results: Results::default(),
            pending: Default::default(),
            batches: 0,
            messages: 0,
        };
        let hello = c.recv().await.expect("hello");
        assert_eq!(hello["t"], "hello");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends a frame as it is written.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn sub(&mut self, id: u32, name: &str, params: Value) {
        self.send(json!({"op": "sub", "id": id, "name": name, "params": params}))
            .await;
    }

    /// The next frame as it came, those of a `batch` one by one; `None` when the server
    /// closed.
    pub async fn frame(&mut self) -> Option<Value> {
        loop {
            if let Some(v) = self.pending.pop_front() {
                return Some(v);
            }
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s");
            match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(t))) => {
                    self.messages += 1;
                    let v: Value = serde_json::from_str(&t).expect("frames are JSON");
                    if v["t"] != "batch" {
                        return Some(v);
                    }
                    self.batches += 1;
                    let frames = v["frames"].as_array().expect("a batch carries frames");
                    assert!(frames.len() >= 2, "a batch of one frame: {v}");
                    for f in frames {
                        assert_ne!(f["t"], "batch", "a batch in a batch: {v}");
                        assert_eq!(f["t"], "change", "only changes are batched: {v}");
                        self.pending.push_back(f.clone());
                    }
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next JSON frame (applied to the results), `None` when the server closed.
    pub async fn recv(&mut self) -> Option<Value> {
        let mut v = self.frame().await?;
        // A large reset continues in `more` frames: returned whole, as one reset.
        while v["t"] == "reset" && v["more"] == true {
            let more = self.frame().await?;
            // A new reset of the id (its subscription ended, the id was reused) starts over;
            // anything else is a `more` of this one.
            if more["t"] == "reset" && more["sub"] == v["sub"] {
                v = more;
                continue;
            }
            assert_eq!(
                (&more["t"], &more["sub"]),
                (&Value::from("more"), &v["sub"])
            );
            let rows = more["rows"].as_array().cloned().unwrap_or_default();
            v["rows"].as_array_mut().expect("rows").extend(rows);
            v["more"] = more["more"].clone();
        }
        self.apply(&v);
        Some(v)
    }

    /// Reads frames until one matches `pred`, and returns it.
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await.expect("the connection is open");
            if pred(&v) {
                return v;
            }
        }
    }

    fn apply(&mut self, v: &Value) {
        self.results.apply(v);
    }

    /// Rows of subscription `sub`, by key.
    pub fn docs(&self, sub: u32) -> Vec<Value> {
        self.results.rows(sub)
    }

    /// The cursor subscription `sub` would resume from.
    pub fn cursor(&self, sub: u32) -> Option<String> {
        self.results.cursor(sub).map(String::from)
    }
}

/// `rows` as the rebuilt map compares them: by id.
pub fn by_id(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|r| r["id"].to_string());
    rows
}
