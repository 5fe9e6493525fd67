//! Remodel's live queries in the browser, safely, with one connection per tab.
//!
//! The server **declares** what a browser may watch and change; nothing else crosses the
//! wire (no query text, no table or field name from the client):
//!
//! - **publications**: named live queries, each a function of the caller's identity and
//!   parameters (deserialised with serde into the publication's own type) that returns a
//!   [`Live`]: a feed with its rules, view, order and guards, or a [`Refusal`];
//! - **methods**: named writes with typed parameters and checks of their own.
//!
//! [`Web::router`] serves them on one WebSocket per tab (`/remodel/ws`, the protocol is in
//! [`protocol`]) and the JavaScript client (`/remodel/client.js`: one ES module, no build
//! step), which keeps each subscription's rows in order in the page, reconnects with backoff,
//! resumes every subscription where it stopped, and shows its connection state.
//!
//! The identity is any axum extractor of the app's (`I: FromRequestParts<S>`: a signed
//! session cookie, a bearer token): a handshake it rejects gets its rejection.
//!
//! ```no_run
//! use remodel_web::{Live, Refusal, Web};
//! use serde::Deserialize;
//! # #[derive(Clone)] struct User(String);
//! # impl<S: Send + Sync> axum::extract::FromRequestParts<S> for User {
//! #     type Rejection = axum::http::StatusCode;
//! #     async fn from_request_parts(_: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> { Ok(User("kirk".into())) }
//! # }
//!
//! #[derive(Deserialize)]
//! struct Ship {
//!     ship: String,
//! }
//!
//! # async fn app(db: remodel::Database) {
//! let web = Web::<User>::builder(db)
//!     // The crew of a ship, by name; anyone signed in may watch it.
//!     .publish("crew", |caller, p: Ship| async move {
//!         let crew = caller.db.table("crew").get_all([p.ship.as_str()]).index("ship_id");
//!         Ok(Live::new(crew.changes()).sort_by("name"))
//!     })
//!     // A write with its own checks.
//!     .method("rename", |caller, p: (String, String)| async move {
//!         if p.1.is_empty() {
//!             return Err(Refusal::invalid("a name is needed"));
//!         }
//!         caller.db.table("crew").get(p.0.as_str()).update(serde_json::json!({"name": p.1})).await?;
//!         Ok(())
//!     })
//!     .build();
//! let app: axum::Router = web.router();
//! # }
//! ```
//!
//! **Shared results.** A result that is the same for every caller allowed to see it (a
//! board, a ship's crew) is declared [`Live::shared`]: all its subscriptions follow one feed,
//! each change is checked and written as text once, and a new subscriber gets the rows as
//! they are held. Results that depend on the caller stay each subscription's own.
//!
//! **Limits** ([`Limits`]) protect the server: the handshake's `Origin` must be the app's own
//! (cross-site WebSocket hijacking), frames are bounded, and so are subscriptions per
//! connection and method calls per second; an idle connection is closed. A client that does
//! not keep up never slows writers or other clients: its subscriptions' feeds overflow into a
//! resynchronisation (the whole result again, once it reads). Every refusal is a typed message
//! to that client.

#![warn(missing_docs)]

mod error;
mod limits;
mod live;
mod net_effect;
mod origin;
mod outbox;
pub mod protocol;
mod results;
mod shared_result;
mod socket;
mod subscription;
mod text;

pub use error::{ErrorCode, Refusal};
pub use limits::Limits;
pub use live::{Direction, IntoChanges, Live};
/// Whether a request with these headers comes from a page the app serves: no `Origin` (not a
/// browser), or an `Origin` among `allowed` (`scheme://host[:port]`), or, with none given,
/// naming the host the request was sent to. The check of the WebSocket handshake; an app
/// makes the same one of its cookie-authenticated form posts.
///
/// ```
/// use axum::http::HeaderMap;
/// let mut h = HeaderMap::new();
/// h.insert("host", "app.test".parse().unwrap());
/// h.insert("origin", "https://evil.test".parse().unwrap());
/// assert!(!remodel_web::same_origin(&h, &[]));
/// ```
pub use origin::allowed as same_origin;
pub use results::Results;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use remodel::{Database, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The JavaScript client, served at `/remodel/client.js`.
pub const CLIENT_JS: &str = include_str!("client.js");

/// Who is asking, and the database: what a publication or method gets.
#[derive(Clone)]
pub struct Caller<I> {
    /// The identity the app's extractor gave for this connection.
    pub identity: I,
    /// The database.
    pub db: Database,
}

type PublishFn<I> =
    dyn Fn(Caller<I>, Value) -> BoxFuture<'static, Result<Live, Refusal>> + Send + Sync;
type MethodFn<I> =
    dyn Fn(Caller<I>, Value) -> BoxFuture<'static, Result<Value, Refusal>> + Send + Sync;

/// Declares publications and methods; [`WebBuilder::build`] makes the [`Web`].
#[must_use = "build() makes the Web"]
pub struct WebBuilder<I> {
    db: Database,
    publications: HashMap<String, Arc<PublishFn<I>>>,
    methods: HashMap<String, Arc<MethodFn<I>>>,
    limits: Limits,
    origins: Vec<String>,
    window: Duration,
}

/// The parameters of a publication or method that takes none: `null`, `{}` or `[]` (what a
/// client sends for "nothing"); anything else is [`ErrorCode::BadParams`].
///
/// ```
/// use remodel_web::NoParams;
/// for none in ["null", "{}", "[]"] {
///     assert!(serde_json::from_str::<NoParams>(none).is_ok());
/// }
/// assert!(serde_json::from_str::<NoParams>(r#"{"table": "logs"}"#).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoParams;

impl<'de> serde::Deserialize<'de> for NoParams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(NoParams),
            Value::Object(o) if o.is_empty() => Ok(NoParams),
            Value::Array(a) if a.is_empty() => Ok(NoParams),
            other => Err(serde::de::Error::custom(format!(
                "this takes no parameters, not {other}"
            ))),
        }
    }
}

/// Parameters as the declared type, or [`ErrorCode::BadParams`].
fn params<P: DeserializeOwned>(v: Value) -> Result<P, Refusal> {
    serde_json::from_value(v).map_err(|e| Refusal::new(ErrorCode::BadParams, e.to_string()))
}

impl<I: Clone + Send + Sync + 'static> WebBuilder<I> {
    /// Declares the publication `name`: `f(caller, params)` gives the [`Live`] result a
    /// subscriber gets, or a refusal. It runs on every subscription (and again when one of the
    /// result's guards changes), so it decides with the caller's identity of the moment.
    pub fn publish<P, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(Caller<I>, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Live, Refusal>> + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: Arc<PublishFn<I>> = Arc::new(move |caller, v| {
            let f = f.clone();
            Box::pin(async move { f(caller, params(v)?).await })
        });
        self.publications.insert(name.to_string(), erased);
        self
    }

    /// Declares the method `name`: `f(caller, params)` makes its writes and checks, and gives
    /// the call's result (sent to the client as JSON) or a refusal.
    pub fn method<P, R, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize,
        F: Fn(Caller<I>, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Refusal>> + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: Arc<MethodFn<I>> = Arc::new(move |caller, v| {
            let f = f.clone();
            Box::pin(async move {
                let out = f(caller, params(v)?).await?;
                serde_json::to_value(out)
                    .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))
            })
        });
        self.methods.insert(name.to_string(), erased);
        self
    }

    /// The connection limits (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Accepts handshakes from pages of `origin` (`https://app.example`). With none declared,
    /// only pages of the host the request was sent to may connect; once one is declared, only
    /// the declared ones may (declare the app's own too).
    pub fn allow_origin(mut self, origin: &str) -> Self {
        self.origins.push(origin.trim_end_matches('/').to_string());
        self
    }

    /// The coalescing window (default 50 ms), one per connection: a subscription that sent
    /// within the open window sends again when it ends, the net effect of every change in
    /// it (a row changed five times is sent once), together with what the connection's other
    /// subscriptions gathered, in one message. A change of a subscription that has not sent
    /// within the window, or that finds the connection idle, goes at once (with what the
    /// others have pending). While changes keep coming, a busy connection gets one message
    /// per window; a window that ends with nothing to send makes it idle again. Zero sends
    /// every batch of ready changes as soon as it is read (the change frames waiting for a
    /// slow socket still go together).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The server.
    pub fn build(self) -> Web<I> {
        Web {
            shared: Arc::new(Shared {
                scope: self.db.identity(),
                db: self.db,
                publications: self.publications,
                methods: self.methods,
                limits: self.limits,
                origins: self.origins,
                window: self.window,
                connections: AtomicUsize::new(0),
                subscriptions: AtomicUsize::new(0),
                cut: tokio::sync::watch::channel(0).0,
                results: Arc::default(),
            }),
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared<I> {
    pub(crate) db: Database,
    /// The database's identity ([`Database::identity`]), in every cursor given to a client:
    /// a cursor of another database is not resumed here.
    pub(crate) scope: u64,
    pub(crate) publications: HashMap<String, Arc<PublishFn<I>>>,
    pub(crate) methods: HashMap<String, Arc<MethodFn<I>>>,
    pub(crate) limits: Limits,
    origins: Vec<String>,
    pub(crate) window: Duration,
    pub(crate) connections: AtomicUsize,
    pub(crate) subscriptions: AtomicUsize,
    /// Bumped to close every connection ([`Web::disconnect_all`]).
    pub(crate) cut: tokio::sync::watch::Sender<u64>,
    /// The shared results being followed ([`Live::shared`]).
    pub(crate) results: Arc<shared_result::Registry>,
}

/// The live-query server: publications and methods over one WebSocket per tab. Cheap to
/// clone (one shared state).
pub struct Web<I> {
    shared: Arc<Shared<I>>,
}

impl<I> Clone for Web<I> {
    fn clone(&self) -> Self {
        Web {
            shared: self.shared.clone(),
        }
    }
}

/// How many connections and subscriptions a [`Web`] serves now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebStats {
    /// Open WebSocket connections.
    pub connections: usize,
    /// Open subscriptions, over all connections.
    pub subscriptions: usize,
    /// Results followed once for all their subscribers ([`Live::shared`]).
    pub shared_results: usize,
}

impl<I: Clone + Send + Sync + 'static> Web<I> {
    /// Starts declaring a server on `db`.
    pub fn builder(db: Database) -> WebBuilder<I> {
        WebBuilder {
            db,
            publications: HashMap::new(),
            methods: HashMap::new(),
            limits: Limits::default(),
            origins: Vec::new(),
            window: Duration::from_millis(50),
        }
    }

    /// The routes: `GET /remodel/ws` (the WebSocket) and `GET /remodel/client.js` (the
    /// client). Merge them into the app's router; `I`, the identity, is extracted from each
    /// handshake with the app's state `S`.
    pub fn router<S>(&self) -> Router<S>
    where
        I: FromRequestParts<S>,
        S: Clone + Send + Sync + 'static,
    {
        let web = self.clone();
        Router::new()
            .route(
                "/remodel/ws",
                get(
                    move |identity: I, headers: HeaderMap, upgrade: WebSocketUpgrade| async move {
                        web.handshake(identity, &headers, upgrade)
                    },
                ),
            )
            .route("/remodel/client.js", get(client_js))
    }

    fn handshake(&self, identity: I, headers: &HeaderMap, upgrade: WebSocketUpgrade) -> Response {
        if !origin::allowed(headers, &self.shared.origins) {
            let body = serde_json::json!({"error": Refusal::forbidden(
                "this page's origin may not open the app's live connection"
            )});
            return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        }
        let limits = &self.shared.limits;
        let shared = self.shared.clone();
        upgrade
            .max_message_size(limits.max_frame_bytes)
            .max_frame_size(limits.max_frame_bytes)
            // A small read buffer: client frames are a few hundred bytes at most (a larger
            // one is read whole all the same), and each idle connection keeps its buffer.
            .read_buffer_size(256)
            // Each frame is written as it comes: the write buffer keeps its largest size for
            // the connection's life, and gathering frames up to a target size made it that
            // size plus a frame (~8 KB an idle connection held after its initial results);
            // written at once, it holds one frame at most. Frames are already gathered (a
            // window's changes, 2 KB of rows).
            .write_buffer_size(0)
            .on_upgrade(move |socket| socket::serve(shared, identity, socket))
    }

    /// Closes every open connection ("going away", as on shutdown: open WebSockets would
    /// keep a graceful shutdown waiting). Clients reconnect by themselves and resume their
    /// subscriptions, on this server or another.
    pub fn disconnect_all(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// How many connections and subscriptions are open now.
    pub fn stats(&self) -> WebStats {
        WebStats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            subscriptions: self.shared.subscriptions.load(Ordering::Relaxed),
            shared_results: self.shared.results.len(),
        }
    }
}

/// A lock whose holders leave its data whole at every point a panic could come (each
/// critical section of this crate only pushes, pops, inserts and swaps): a poisoned one is
/// used as it is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}
