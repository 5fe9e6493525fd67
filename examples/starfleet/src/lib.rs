//! The Starfleet web app: Remodel's models, relations, aggregates and live feeds, served to
//! a browser with axum, minijinja templates and Server-Sent Events.
//!
//! [`open_database`] opens (or creates) the app's database and loads the crews on first run;
//! [`router`] is the whole app as an axum `Router`, which `main.rs` serves and the tests call
//! directly. One module per concern:
//!
//! - [`models`]: the `#[derive(Model)]` structs;
//! - `routes::ships`, `routes::members`, `routes::away`: the pages and forms of ships,
//!   members and away teams; `routes::captains`, `routes::species`, `routes::leaderboard`;
//! - `live`: the Server-Sent Events streams, each fed by a Remodel feed;
//! - [`templates`]: the HTML templates, compiled in; [`error`]: errors as 404 / 400 pages.

pub mod error;
mod live;
pub mod models;
mod routes;
pub mod seed;
pub mod templates;

use axum::routing::{get, post};
use axum::Router;
use remodel::{ChangeLogRetention, Config, Database};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What every handler shares: the database, and the switch that ends live streams.
#[derive(Clone)]
pub struct AppState {
    /// The app's database.
    pub db: Database,
    inner: Arc<Shared>,
}

struct Shared {
    /// Bumped to end every open SSE stream (see [`AppState::disconnect_live_clients`]).
    cut: watch::Sender<u64>,
    /// How many SSE streams resumed from a browser's `Last-Event-ID`.
    resumed: AtomicU64,
    /// Rows already rendered, shared by the streams of every open page.
    rows: live::RowCache,
}

impl AppState {
    /// The state of an app on `db`.
    pub fn new(db: Database) -> Self {
        AppState {
            db,
            inner: Arc::new(Shared {
                cut: watch::channel(0).0,
                resumed: AtomicU64::new(0),
                rows: live::RowCache::default(),
            }),
        }
    }

    /// Ends every open live stream. Browsers reconnect by themselves, sending the id of the
    /// last event they received, and their feeds resume from it. Used on shutdown (open
    /// streams would otherwise keep the server alive) and by the reconnect test.
    pub fn disconnect_live_clients(&self) {
        self.inner.cut.send_modify(|n| *n += 1);
    }

    /// How many live streams so far resumed from a cursor (a reconnecting browser).
    pub fn resumed_streams(&self) -> u64 {
        self.inner.resumed.load(Ordering::Relaxed)
    }

    fn cut_signal(&self) -> watch::Receiver<u64> {
        self.inner.cut.subscribe()
    }

    fn count_resume(&self) {
        self.inner.resumed.fetch_add(1, Ordering::Relaxed);
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
/// pages reload their state instead of resuming).
pub async fn open_with(config: Config) -> remodel::Result<Database> {
    prepare(config.open().await?).await
}

/// The models' tables and indexes, and the three crews if this database never had them.
async fn prepare(db: Database) -> remodel::Result<Database> {
    remodel::model::create_schema(&db).await?;
    seed::seed_once(&db).await?;
    Ok(db)
}

/// The whole app: every page, form and live stream.
pub fn router(state: AppState) -> Router {
    use routes::{away, captains, leaderboard, members, ships, species};
    Router::new()
        .route("/", get(ships::index))
        .route("/live.js", get(routes::script))
        .route("/events/ships", get(live::ship_counts))
        .route("/ship/{id}", get(ships::show))
        .route("/ship/{id}/crew", post(ships::add_member))
        .route("/ship/{id}/events", get(live::ship))
        .route("/ship/{id}/away", post(away::assign))
        .route("/ship/{id}/away/{member}/release", post(away::release))
        .route("/member/{id}", get(members::show).post(members::edit))
        .route("/member/{id}/events", get(live::member))
        .route("/member/{id}/move", post(members::move_to))
        .route("/member/{id}/remove", post(members::remove_from_ship))
        .route("/member/{id}/delete", post(members::delete))
        .route("/captains", get(captains::index))
        .route("/species", get(species::chart))
        .route("/species.csv", get(species::csv))
        .route("/species.json", get(species::json))
        .route("/species/events", get(live::species))
        .route(
            "/leaderboard",
            get(leaderboard::show).post(leaderboard::post_score),
        )
        .route("/leaderboard/events", get(live::leaderboard))
        .fallback(routes::not_found)
        .with_state(state)
}
