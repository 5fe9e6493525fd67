//! Away teams: a ship's officers on a mission, from any crew (a has_and_belongs_to_many
//! relation through a join table).

use super::{find_member, find_ship};
use crate::error::{AppError, AppResult};
use crate::session::Session;
use crate::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::Form;
use remodel::Model;
use serde::Deserialize;

/// The assign form.
#[derive(Deserialize)]
pub struct Assign {
    member_id: String,
}

/// `POST /ship/{id}/away`: puts a member (of any ship) on this ship's away team. Away teams
/// are the fleet's: any signed-in member assigns and releases (no one signed in, no one).
pub async fn assign(
    State(app): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    form: Result<Form<Assign>, FormRejection>,
) -> AppResult<Redirect> {
    let ship = find_ship(&app.db, &id).await?;
    let Form(form) = form?;
    let member = match find_member(&app.db, form.member_id.trim()).await {
        Err(AppError::NotFound(_)) => Err(AppError::BadRequest(format!(
            "There is no crew member `{}` to assign.",
            form.member_id
        ))),
        other => other,
    }?;
    crate::rules::signed_in(&app.db, &session, "assign an away team").await?;
    // The link only: the member's own row is not written (a copy read a moment ago would
    // undo a move or a new rank made meanwhile).
    let key = member.key().ok_or_else(|| {
        crate::error::AppError::BadRequest("That crew member is not saved.".into())
    })?;
    ship.away_team(&app.db).relate(&[key]).await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}

/// `POST /ship/{id}/away/{member}/release`: takes a member off this ship's away team (their
/// other missions stay).
pub async fn release(
    State(app): State<AppState>,
    session: Session,
    Path((id, member)): Path<(String, String)>,
) -> AppResult<Redirect> {
    let ship = find_ship(&app.db, &id).await?;
    let member = find_member(&app.db, &member).await?;
    crate::rules::signed_in(&app.db, &session, "release an away team").await?;
    ship.away_team(&app.db).remove(&mut [member]).await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}
