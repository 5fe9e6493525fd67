//! A crew member's page: edit, move to another ship, remove from the ship, delete.

use super::{find_member, find_ship, page, MemberForm};
use crate::error::AppResult;
use crate::models::Starship;
use crate::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::response::{Html, Redirect};
use axum::Form;
use minijinja::context;
use remodel::Model;
use serde::Deserialize;

/// `/member/{id}`: rank, species, the ship (a link back), and the forms.
pub async fn show(State(app): State<AppState>, Path(id): Path<String>) -> AppResult<Html<String>> {
    let member = find_member(&app.db, &id).await?;
    let ship = member.starship(&app.db).await?; // belongs_to: None without a ship
    let missions = member.away_missions(&app.db).all().await?;
    let ships = Starship::all(&app.db).await?;
    page("member.html", context! { member, ship, missions, ships })
}

/// `POST /member/{id}`: changes name, rank and species (only changed fields are written).
pub async fn edit(
    State(app): State<AppState>,
    Path(id): Path<String>,
    form: Result<Form<MemberForm>, FormRejection>,
) -> AppResult<Redirect> {
    let mut member = find_member(&app.db, &id).await?;
    let Form(form) = form?;
    let (name, rank, species) = form.fields()?;
    member
        .update(&app.db, |m| {
            m.name = name;
            m.rank = rank;
            m.species = species;
        })
        .await?;
    Ok(Redirect::to(&format!("/member/{}", member.id_str())))
}

/// The move form: the ship to move to.
#[derive(Deserialize)]
pub struct MoveTo {
    ship_id: String,
}

/// `POST /member/{id}/move`: moves the member to another ship's crew (the member leaves one
/// ship page and appears on the other, live). Back to the new ship.
pub async fn move_to(
    State(app): State<AppState>,
    Path(id): Path<String>,
    form: Result<Form<MoveTo>, FormRejection>,
) -> AppResult<Redirect> {
    let mut member = find_member(&app.db, &id).await?;
    let Form(form) = form?;
    let ship = find_ship(&app.db, form.ship_id.trim()).await.map_err(|_| {
        crate::error::AppError::BadRequest(format!(
            "There is no starship `{}` to move to.",
            form.ship_id
        ))
    })?;
    // `add` sets the foreign key and saves: the member leaves its old crew.
    ship.crewmembers(&app.db)
        .add(std::slice::from_mut(&mut member))
        .await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}

/// `POST /member/{id}/remove`: takes the member off their ship (they stay in the database,
/// without a ship). Back to the ship they left.
pub async fn remove_from_ship(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Redirect> {
    let mut member = find_member(&app.db, &id).await?;
    let Some(ship) = member.starship(&app.db).await? else {
        return Ok(Redirect::to(&format!("/member/{}", member.id_str())));
    };
    ship.crewmembers(&app.db)
        .remove(std::slice::from_mut(&mut member))
        .await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}

/// `POST /member/{id}/delete`: deletes the member (and their away-team links, in the same
/// commit). Back to the ship list.
pub async fn delete(State(app): State<AppState>, Path(id): Path<String>) -> AppResult<Redirect> {
    let member = find_member(&app.db, &id).await?;
    member.delete(&app.db).await?;
    Ok(Redirect::to("/"))
}
