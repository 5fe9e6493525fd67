//! The sector map (ships dragged by anyone, moving live on every open map) and the live stats
//! page (the database's own reads and writes per second). Both pages are drawn by their
//! script from the `map` and `stats` publications; the server sends the frame.

use super::{page, Viewer};
use crate::error::AppResult;
use crate::models::{Starship, MAP_HEIGHT, MAP_WIDTH};
use crate::session::Session;
use crate::AppState;
use axum::extract::State;
use axum::response::Html;
use minijinja::context;
use remodel::Model;

/// `/map`: the ships where they are (the script keeps them live and makes them draggable).
pub async fn show(State(app): State<AppState>, s: Session) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &s).await?;
    let mut ships = Starship::all(&app.db).await?;
    ships.sort_by(|a, b| a.name.cmp(&b.name));
    page(
        &me,
        "map.html",
        context! { ships, width => MAP_WIDTH, height => MAP_HEIGHT },
    )
}

/// `/stats`: reads and writes per second of the app's database, as a live line chart.
pub async fn stats(State(app): State<AppState>, s: Session) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &s).await?;
    page(&me, "stats.html", context! {})
}
