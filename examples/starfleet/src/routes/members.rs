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
use remodel::model::Transaction;
use remodel::Model;
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
        // The server failing is not "you may not read it".
        Err(why) if why.code() == remodel_web::ErrorCode::Internal => {
            return Err(AppError::Internal(why.message().to_string()))
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

/// Why an edit is refused when the member changed since its form was drawn.
const FORM_CHANGED: &str = "someone else changed this member since the form was drawn";

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
    // A rank change is one the form asks for, against the rank it was drawn with: a rank
    // given since is the conflict below, not this form's change.
    let drawn_rank = form
        .was_rank
        .as_deref()
        .map_or(member.rank.as_str(), str::trim);
    let authority = rules::may_edit(&me, &member, rank != drawn_rank)?;
    let was = [form.was_name, form.was_rank, form.was_species];
    let mut tx = Transaction::new(&app.db);
    authority.require(&mut tx, &me, Some(&member))?;
    tx.require(&member, FORM_CHANGED, move |now: &Crewmember| {
        [&now.name, &now.rank, &now.species]
            .iter()
            .zip(&was)
            .all(|(now, was)| was.as_deref().is_none_or(|w| now.as_str() == w.trim()))
    })?;
    let mut written = member.clone();
    tx.update(&mut written, |m| {
        (m.name, m.rank, m.species) = (name, rank, species);
    })
    .await?;
    match rules::commit(tx).await {
        Err(AppError::Conflict(why)) if why.contains(FORM_CHANGED) => {
            // What is there now, to say what changed.
            let now = find_member(&app.db, &id).await?;
            Err(AppError::Conflict(format!(
                "Not saved: {FORM_CHANGED} (now: {}, {}, {}). Open the page again to see \
                 what is there now.",
                now.name, now.rank, now.species
            )))
        }
        other => other,
    }?;
    Ok(Redirect::to(&format!("/member/{}", member.id_str())))
}

/// Writes what `change` makes of `member` (only the fields it changes, at commit) as `me`,
/// in a transaction that requires what the rule let `me` act as, and whatever `require`
/// adds; else a 403 or 409 page saying why, and nothing is written. A member deleted
/// meanwhile is a 404.
async fn write_checked(
    db: &remodel::Database,
    (me, authority): (&Crewmember, rules::Authority),
    member: &Crewmember,
    require: impl FnOnce(&mut Transaction) -> AppResult<()>,
    change: impl FnOnce(&mut Crewmember),
) -> AppResult<()> {
    let mut tx = Transaction::new(db);
    authority.require(&mut tx, me, Some(member))?;
    require(&mut tx)?;
    let mut written = member.clone();
    tx.update(&mut written, change).await?;
    rules::commit(tx).await
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
    let ship = match find_ship(&app.db, form.ship_id.trim()).await {
        Err(AppError::NotFound(_)) => Err(AppError::BadRequest(format!(
            "There is no starship `{}` to move to.",
            form.ship_id
        ))),
        other => other,
    }?;
    let me = rules::signed_in(&app.db, &session, "move a member").await?;
    let authority = rules::may_move(&me, &member, ship.id.as_ref())?;
    // The member's ship only (the member leaves its old crew), onto a ship still there; the
    // member still where the rule saw them, and still no captain (captains are not moved).
    let to = ship.id.clone();
    let seen = member.starship_id.clone();
    let require = |tx: &mut Transaction| -> AppResult<()> {
        tx.require(&ship, "the ship is gone", |_| true)?;
        tx.require(&member, rules::MEMBER_CHANGED, move |now: &Crewmember| {
            now.starship_id == seen && !now.rank.eq_ignore_ascii_case("captain")
        })?;
        Ok(())
    };
    write_checked(&app.db, (&me, authority), &member, require, |m| {
        m.starship_id = to
    })
    .await?;
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
    let authority = rules::may_release(&me, &member)?;
    let Some(ship) = member.starship(&app.db).await? else {
        return Ok(Redirect::to(&format!("/member/{}", member.id_str())));
    };
    let me = (&me, authority);
    write_checked(&app.db, me, &member, |_| Ok(()), |m| m.starship_id = None).await?;
    Ok(Redirect::to(&format!("/ship/{}", ship.id_str())))
}

/// `POST /member/{id}/delete`: deletes the member (with their away-team links and their log,
/// in the same commit). Back to the ship list.
pub async fn delete(
    State(app): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> AppResult<Redirect> {
    let member: Crewmember = find_member(&app.db, &id).await?;
    let me = rules::signed_in(&app.db, &session, "delete a member").await?;
    let authority = rules::may_release(&me, &member)?;
    let mut tx = Transaction::new(&app.db);
    authority.require(&mut tx, &me, Some(&member))?;
    tx.delete(member).await?;
    rules::commit(tx).await?;
    Ok(Redirect::to("/"))
}
