//! The ship list, a ship's page, and adding a crew member.

use super::{find_ship, page, MemberForm, Viewer};
use crate::error::AppResult;
use crate::models::{Crewmember, Starship};
use crate::session::Session;
use crate::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::response::{Html, Redirect};
use axum::Form;
use minijinja::context;
use remodel::Model;
use std::collections::HashMap;

/// `/`: the starships with their crew counts (kept live by the `ship_counts` publication).
pub async fn index(State(app): State<AppState>, s: Session) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &s).await?;
    let mut ships = Starship::all(&app.db).await?;
    ships.sort_by(|a, b| a.name.cmp(&b.name));
    let counts = crew_counts(&app).await?;
    page(&me, "index.html", context! { ships, counts })
}

/// Crew count per ship key (`""`: members without a ship), one group + count query.
pub async fn crew_counts(app: &AppState) -> AppResult<HashMap<String, u64>> {
    let f = Crewmember::fields();
    let groups = Crewmember::query(&app.db)
        .group(f.starship_id)
        .count()
        .await?;
    Ok(groups
        .into_iter()
        .map(|(ship, n)| (ship.map(|s| s.to_string()).unwrap_or_default(), n))
        .collect())
}

/// `/ship/{id}`: the crew and the away team by name, and their forms (kept live by the
/// `crew`, `away`, `members` and `ships` publications).
pub async fn show(
    State(app): State<AppState>,
    s: Session,
    Path(id): Path<String>,
) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &s).await?;
    let ship = find_ship(&app.db, &id).await?;
    let by_name = |a: &Crewmember, b: &Crewmember| a.name.cmp(&b.name).then(a.id.cmp(&b.id));
    let mut crew = ship.crewmembers(&app.db).all().await?;
    crew.sort_by(by_name);
    let mut away = ship.away_team(&app.db).all().await?;
    away.sort_by(by_name);
    let mut ships = Starship::all(&app.db).await?;
    ships.sort_by(|a, b| a.name.cmp(&b.name));
    // The assign form offers the officers not on this away team yet.
    let mut others = Crewmember::all(&app.db).await?;
    others.retain(|m| !away.iter().any(|a| a.id == m.id));
    others.sort_by(by_name);
    page(
        &me,
        "ship.html",
        context! { ship, crew, away, ships, others },
    )
}

/// `POST /ship/{id}/crew`: adds a member to the crew, then back to the ship.
pub async fn add_member(
    State(app): State<AppState>,
    s: Session,
    Path(id): Path<String>,
    form: Result<Form<MemberForm>, FormRejection>,
) -> AppResult<Redirect> {
    let ship = find_ship(&app.db, &id).await?;
    let Form(form) = form?;
    let (name, rank, species) = form.fields()?;
    let me = crate::rules::signed_in(&app.db, &s, "add to a crew").await?;
    let authority = crate::rules::may_add_to(&me, ship.id.as_ref())?;
    // Still the ship's captain at commit, and the ship still there (the add requires it).
    let mut tx = remodel::model::Transaction::new(&app.db);
    authority.require(&mut tx, &me, None)?;
    let mut member = Crewmember::new(&name, &rank, &species);
    tx.add(
        &ship.crewmembers(&app.db),
        std::slice::from_mut(&mut member),
    )
    .await?;
    crate::rules::commit(tx).await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}
