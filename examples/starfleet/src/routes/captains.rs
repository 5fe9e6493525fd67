//! `/captains`: every captain with their ship, in two queries (not one per captain).

use super::{page, Viewer};
use crate::error::AppResult;
use crate::models::Crewmember;
use crate::session::Session;
use crate::AppState;
use axum::extract::State;
use axum::response::Html;
use minijinja::context;
use remodel::Model;

/// `/captains`: the captains (through the `rank` index) and their ships (one batched load).
pub async fn index(State(app): State<AppState>, s: Session) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &s).await?;
    let c = Crewmember::fields();
    let captains = Crewmember::filter(&app.db, c.rank.eq("captain"))
        .run()
        .await?;
    let ships = Crewmember::load_starship(&app.db, &captains).await?; // one query for all
    let rows: Vec<_> = captains
        .into_iter()
        .zip(ships)
        .map(|(captain, ship)| context! { captain, ship })
        .collect();
    page(&me, "captains.html", context! { rows })
}
