//! The Starfleet web app: Remodel's models, relations, aggregates and live feeds, served to
//! a browser with axum, minijinja templates and remodel-web.
//!
//! [`open_database`] opens (or creates) the app's database and loads the crews on first run;
//! [`router`] is the whole app as an axum `Router`, which `main.rs` serves and the tests call
//! directly. Pages are drawn on the server; their live parts subscribe to the publications of
//! [`publications`] through remodel-web's client (one WebSocket per tab) and redraw
//! themselves from the live results (`templates/starfleet.js`). One module per concern:
//!
//! - [`models`]: the `#[derive(Model)]` structs;
//! - [`publications`]: what a page may watch and the log's methods, with their rules;
//! - [`session`]: who is signed in (a signed cookie); [`rules`]: who may change whom;
//! - `routes::ships`, `routes::members`, `routes::away`, `routes::signin`: the pages and
//!   forms; `routes::captains`, `routes::species`, `routes::leaderboard`;
//! - [`templates`]: the HTML templates, compiled in; [`error`]: errors as 404 / 400 pages.

pub mod error;
pub mod models;
pub mod publications;
mod routes;
pub mod rules;
pub mod seed;
pub mod session;
pub mod templates;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::Key;
use remodel::{ChangeLogRetention, Config, Database};
use remodel_web::Web;
use session::Session;
use std::path::Path;
use std::sync::Arc;

/// What every handler shares: the database, the live-query server, the cookie key.
#[derive(Clone)]
pub struct AppState {
    /// The app's database.
    pub db: Database,
    /// The publications and methods, served on `/remodel/ws`.
    pub web: Web<Session>,
    key: Arc<Key>,
}

impl FromRef<AppState> for Key {
    fn from_ref(app: &AppState) -> Key {
        (*app.key).clone()
    }
}

impl AppState {
    /// The state of an app on `db` (reads the cookie key kept in it, making one if none).
    pub async fn new(db: Database) -> remodel::Result<Self> {
        let key = session::cookie_key(&db).await?;
        Ok(AppState {
            web: publications::web(db.clone()),
            db,
            key: Arc::new(key),
        })
    }

    /// The key that signs session cookies.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Closes every open live connection. Browsers reconnect by themselves and resume each
    /// subscription from its cursor. Used on shutdown (open connections would otherwise keep
    /// the server alive) and by the reconnect tests.
    pub fn disconnect_live_clients(&self) {
        self.web.disconnect_all();
    }
}

/// Opens the app's database in `data_dir` (a temporary one for `None`), with a change log so
/// that live pages resume after a reconnect, creates the tables and indexes of the models,
/// and loads the three crews if this database never had them.
pub async fn open_database(data_dir: Option<&Path>) -> remodel::Result<Database> {
    let config = match data_dir {
        Some(dir) => Config::new(dir),
        None => Config::temporary(),
    };
    open_with(config.change_log(ChangeLogRetention::default())).await
}

/// Connects the app to a shared PostgreSQL database at `url` (many app instances may run on
/// one database: each one's live pages show every instance's changes), creates the tables
/// and indexes of the models, and loads the three crews if this database never had them.
pub async fn open_postgres(url: &str) -> remodel::Result<Database> {
    prepare(Database::connect(url).await?).await
}

/// [`open_database`] with a configuration of your own (without a change log, reconnecting
/// pages read their results afresh instead of resuming).
pub async fn open_with(config: Config) -> remodel::Result<Database> {
    prepare(config.open().await?).await
}

/// The models' tables and indexes, and the three crews if this database never had them.
async fn prepare(db: Database) -> remodel::Result<Database> {
    remodel::model::create_schema(&db).await?;
    seed::seed_once(&db).await?;
    Ok(db)
}

/// The whole app: every page, form and the live connection.
pub fn router(state: AppState) -> Router {
    use routes::{away, captains, leaderboard, map, members, ships, signin, species};
    Router::new()
        .route("/", get(ships::index))
        .route("/starfleet.js", get(routes::script))
        .route("/ship/{id}", get(ships::show))
        .route("/ship/{id}/crew", post(ships::add_member))
        .route("/ship/{id}/away", post(away::assign))
        .route("/ship/{id}/away/{member}/release", post(away::release))
        .route("/member/{id}", get(members::show).post(members::edit))
        .route("/member/{id}/move", post(members::move_to))
        .route("/member/{id}/remove", post(members::remove_from_ship))
        .route("/member/{id}/delete", post(members::delete))
        .route("/member/{id}/log", post(members::add_log))
        .route("/captains", get(captains::index))
        .route("/species", get(species::chart))
        .route("/species.csv", get(species::csv))
        .route("/species.json", get(species::json))
        .route(
            "/leaderboard",
            get(leaderboard::show).post(leaderboard::post_score),
        )
        .route("/map", get(map::show))
        .route("/stats", get(map::stats))
        .route("/signin", get(signin::show).post(signin::sign_in))
        .route("/signout", post(signin::sign_out))
        .merge(state.web.router())
        .method_not_allowed_fallback(routes::form_only)
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn(routes::same_origin_posts))
        .with_state(state)
}
