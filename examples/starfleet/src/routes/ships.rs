//! The ship list, a ship's page, and adding a crew member.

use super::{find_ship, page, MemberForm};
use crate::error::AppResult;
use crate::models::{Crewmember, Starship};
use crate::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::response::{Html, Redirect};
use axum::Form;
use minijinja::context;
use remodel::Model;
use std::collections::HashMap;

/// `/`: the starships with their crew counts (kept live by `/events/ships`).
pub async fn index(State(app): State<AppState>) -> AppResult<Html<String>> {
    let ships = Starship::all(&app.db).await?;
    let counts = crew_counts(&app).await?;
    page("index.html", context! { ships, counts })
}

/// Crew count per ship key (`""`: members without a ship), one group + count query.
pub async fn crew_counts(app: &AppState) -> AppResult<HashMap<String, u64>> {
    let groups = Crewmember::table(&app.db)
        .query()
        .group("starship_id")
        .count()
        .await?;
    Ok(groups
        .into_iter()
        .map(|g| {
            let ship = g.group.as_str().unwrap_or_default().to_string();
            (ship, g.reduction.as_u64().unwrap_or(0))
        })
        .collect())
}

/// `/ship/{id}`: the crew, the away team, and their forms (kept live by the two event
/// streams of the page).
pub async fn show(State(app): State<AppState>, Path(id): Path<String>) -> AppResult<Html<String>> {
    let ship = find_ship(&app.db, &id).await?;
    let crew = ship.crewmembers(&app.db).all().await?;
    let away = ship.away_team(&app.db).all().await?;
    let ships = Starship::all(&app.db).await?;
    // The assign form offers the officers not on this away team yet.
    let mut others = Crewmember::all(&app.db).await?;
    others.retain(|m| !away.iter().any(|a| a.id == m.id));
    page("ship.html", context! { ship, crew, away, ships, others })
}

/// `POST /ship/{id}/crew`: adds a member to the crew, then back to the ship.
pub async fn add_member(
    State(app): State<AppState>,
    Path(id): Path<String>,
    form: Result<Form<MemberForm>, FormRejection>,
) -> AppResult<Redirect> {
    let ship = find_ship(&app.db, &id).await?;
    let Form(form) = form?;
    let (name, rank, species) = form.fields()?;
    let member = Crewmember::new(&name, &rank, &species);
    ship.crewmembers(&app.db).create(member).await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}
