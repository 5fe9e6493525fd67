//! `/captains`: every captain with their ship, in two queries (not one per captain).

use super::page;
use crate::error::AppResult;
use crate::models::Crewmember;
use crate::AppState;
use axum::extract::State;
use axum::response::Html;
use minijinja::context;
use remodel::Model;

/// `/captains`: the captains (through the `rank` index) and their ships (one batched load).
pub async fn index(State(app): State<AppState>) -> AppResult<Html<String>> {
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
    page("captains.html", context! { rows })
}
