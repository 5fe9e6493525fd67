//! A crew member's page: details, personal log, edit, move to another ship, remove from the
//! ship, delete.

use super::{find_member, find_ship, page, text_field, MemberForm, Viewer};
use crate::error::{AppError, AppResult};
use crate::models::{Crewmember, Starship};
use crate::publications::{self, may_use_log};
use crate::rules;
use crate::session::Session;
use crate::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::response::{Html, Redirect};
use axum::Form;
use minijinja::context;
use remodel::{json, Model, Patch};
use serde::Deserialize;

/// `/member/{id}`: rank, species, the ship (a link back), the personal log (for the member and
/// their captain), and the forms.
pub async fn show(
    State(app): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &session).await?;
    let member = find_member(&app.db, &id).await?;
    let ship = member.starship(&app.db).await?; // belongs_to: None without a ship
    let missions = member.away_missions(&app.db).all().await?;
    let mut ships = Starship::all(&app.db).await?;
    ships.sort_by(|a, b| a.name.cmp(&b.name));
    // The log, newest first, if the rules let this viewer read it.
    let logs = match may_use_log(&app.db, &session, &id).await {
        Ok(_) => {
            let mut logs = member.logs(&app.db).all().await?;
            logs.sort_by_key(|l| std::cmp::Reverse(l.at));
            Some(logs)
        }
        Err(_) => None,
    };
    page(
        &me,
        "member.html",
        context! { member, ship, missions, ships, logs, max_log => publications::MAX_LOG },
    )
}

/// The edit form: the new fields, and the ones the form was drawn with.
#[derive(Deserialize)]
pub struct EditForm {
    name: String,
    rank: String,
    species: String,
    was_name: Option<String>,
    was_rank: Option<String>,
    was_species: Option<String>,
}

/// `POST /member/{id}`: changes name, rank and species, only if nobody changed them since the
/// form was drawn (decided at commit, against the stored row): no silent overwrite. A form
/// without the fields it was drawn with (an old page) writes as asked.
pub async fn edit(
    State(app): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    form: Result<Form<EditForm>, FormRejection>,
) -> AppResult<Redirect> {
    let member = find_member(&app.db, &id).await?;
    let Form(form) = form?;
    let (name, rank, species) = MemberForm::new(form.name, form.rank, form.species).fields()?;
    let me = rules::signed_in(&app.db, &session, "edit a member").await?;
    rules::may_edit(&me, &member, rank != member.rank)?;
    let was = [form.was_name, form.was_rank, form.was_species];
    let fields = json!({"name": name, "rank": rank, "species": species});
    write_checked(&app.db, &member, fields, move |doc| {
        let unchanged = ["name", "rank", "species"]
            .iter()
            .zip(&was)
            .all(|(field, was)| was.as_deref().is_none_or(|w| doc[*field] == w.trim()));
        match unchanged {
            true => Ok(()),
            false => Err(format!(
                "someone else changed this member since the form was drawn (now: {}, {}, {})",
                doc["name"].as_str().unwrap_or_default(),
                doc["rank"].as_str().unwrap_or_default(),
                doc["species"].as_str().unwrap_or_default(),
            )),
        }
    })
    .await?;
    Ok(Redirect::to(&format!("/member/{}", member.id_str())))
}

/// Writes `fields` to `member`'s row, decided at commit against the stored row: only if the
/// member's rank and ship are still those the rules were checked against (a new rank or a
/// move since changes who may do this) and `check` passes; else a 409 page saying why, and
/// nothing is written. A member deleted meanwhile is a 404. Only `fields` are written: a
/// copy of the member read earlier never overwrites what others changed.
async fn write_checked(
    db: &remodel::Database,
    member: &Crewmember,
    fields: remodel::Value,
    check: impl Fn(&remodel::Value) -> Result<(), String> + Send + Sync + 'static,
) -> AppResult<()> {
    let seen = (json!(member.rank), json!(member.starship_id));
    let patch = Patch::with(move |doc| {
        if (&doc["rank"], &doc["starship_id"]) != (&seen.0, &seen.1) {
            let why = "the member's rank or ship changed since this request was checked";
            return Err(remodel::Error::Precondition(why.into()));
        }
        check(doc).map_err(remodel::Error::Precondition)?;
        Ok(fields.clone())
    });
    let written = Crewmember::table(db)
        .get(member.id_str())
        .update(patch)
        .await;
    // The closure's refusal is the write's error (per row, as every write reports them).
    let written = written.and_then(|w| match w.first_error {
        Some(e) => Err(e),
        None => Ok(w),
    });
    match written {
        Ok(w) if w.skipped > 0 => Err(AppError::NotFound(format!(
            "The crew member `{}` was deleted meanwhile.",
            member.id_str()
        ))),
        Ok(_) => Ok(()),
        Err(remodel::Error::Precondition(why)) => Err(AppError::Conflict(format!(
            "Not saved: {why}. Open the page again to see what is there now."
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The log form.
#[derive(Deserialize)]
pub struct LogForm {
    text: String,
}

/// `POST /member/{id}/log`: writes to the member's log (the page's script calls the
/// `add_log` method instead; both check the same rule), then back to the member.
pub async fn add_log(
    State(app): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    form: Result<Form<LogForm>, FormRejection>,
) -> AppResult<Redirect> {
    let member = find_member(&app.db, &id).await?;
    let Form(form) = form?;
    let text = text_field("log entry", &form.text, publications::MAX_LOG)?;
    publications::add_log(&app.db, &session, member.id_str(), &text)
        .await
        .map_err(|r| match r.code() {
            remodel_web::ErrorCode::Forbidden => AppError::Forbidden(r.message().to_string()),
            remodel_web::ErrorCode::NotFound => AppError::NotFound(r.message().to_string()),
            _ => AppError::BadRequest(r.message().to_string()),
        })?;
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
    session: Session,
    Path(id): Path<String>,
    form: Result<Form<MoveTo>, FormRejection>,
) -> AppResult<Redirect> {
    let member = find_member(&app.db, &id).await?;
    let Form(form) = form?;
    let ship = find_ship(&app.db, form.ship_id.trim()).await.map_err(|_| {
        AppError::BadRequest(format!(
            "There is no starship `{}` to move to.",
            form.ship_id
        ))
    })?;
    let me = rules::signed_in(&app.db, &session, "move a member").await?;
    rules::may_move(&me, &member, ship.id.as_ref())?;
    // The member's ship only: the member leaves its old crew.
    let fields = json!({"starship_id": ship.id_str()});
    write_checked(&app.db, &member, fields, |_| Ok(())).await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}

/// `POST /member/{id}/remove`: takes the member off their ship (they stay in the database,
/// without a ship). Back to the ship they left.
pub async fn remove_from_ship(
    State(app): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> AppResult<Redirect> {
    let member = find_member(&app.db, &id).await?;
    let me = rules::signed_in(&app.db, &session, "take a member off their ship").await?;
    rules::may_release(&me, &member)?;
    let Some(ship) = member.starship(&app.db).await? else {
        return Ok(Redirect::to(&format!("/member/{}", member.id_str())));
    };
    write_checked(&app.db, &member, json!({"starship_id": null}), |_| Ok(())).await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}

/// `POST /member/{id}/delete`: deletes the member (with their away-team links and their log,
/// in the same commit). Back to the ship list.
pub async fn delete(
    State(app): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> AppResult<Redirect> {
    let mut member: Crewmember = find_member(&app.db, &id).await?;
    let me = rules::signed_in(&app.db, &session, "delete a member").await?;
    rules::may_release(&me, &member)?;
    member.delete(&app.db).await?;
    Ok(Redirect::to("/"))
}
