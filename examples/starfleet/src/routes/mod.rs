//! Pages and forms, one module per concern, and what they share: looking rows up (an
//! unknown key is a 404), reading form fields (a bad value is a 400 that says why) and
//! rendering templates.

pub mod away;
pub mod captains;
pub mod leaderboard;
pub mod members;
pub mod ships;
pub mod species;

use crate::error::{AppError, AppResult};
use crate::models::{Crewmember, Starship};
use crate::templates::Templates;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use remodel::{Database, Model};

/// Renders a page.
pub fn page(name: &str, ctx: minijinja::Value) -> AppResult<Html<String>> {
    Ok(Html(Templates::shared().render(name, ctx)?))
}

/// The ship with this key, or a 404.
pub async fn find_ship(db: &Database, id: &str) -> AppResult<Starship> {
    found(Starship::get(db, id).await, || {
        format!("There is no starship `{id}`.")
    })
}

/// The crew member with this key, or a 404.
pub async fn find_member(db: &Database, id: &str) -> AppResult<Crewmember> {
    found(Crewmember::get(db, id).await, || {
        format!("There is no crew member `{id}`.")
    })
}

/// A row read by a key from the address bar: missing is a 404, and so is a key the store
/// refuses (too long, say), since no row can have it.
fn found<T>(row: remodel::Result<Option<T>>, missing: impl FnOnce() -> String) -> AppResult<T> {
    match row {
        Ok(Some(row)) => Ok(row),
        Ok(None) | Err(remodel::Error::InvalidKey { .. }) => Err(AppError::NotFound(missing())),
        Err(e) => Err(e.into()),
    }
}

/// A text field of a form: trimmed, not empty, at most `max` characters, no control
/// characters. Anything else is a 400 naming the field.
pub fn text_field(field: &str, value: &str, max: usize) -> AppResult<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(AppError::BadRequest(format!(
            "The {field} must not be empty."
        )));
    }
    if value.chars().count() > max {
        return Err(AppError::BadRequest(format!(
            "The {field} must be at most {max} characters long."
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::BadRequest(format!(
            "The {field} must not contain control characters."
        )));
    }
    Ok(value.to_string())
}

/// A member's fields as the add and edit forms send them.
#[derive(serde::Deserialize)]
pub struct MemberForm {
    name: String,
    rank: String,
    species: String,
}

impl MemberForm {
    /// The checked name, rank and species (see [`text_field`]).
    pub fn fields(&self) -> AppResult<(String, String, String)> {
        Ok((
            text_field("name", &self.name, 80)?,
            text_field("rank", &self.rank, 40)?,
            text_field("species", &self.species, 40)?,
        ))
    }
}

/// The browser side of live updates (no CDN, no framework).
pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../templates/live.js"),
    )
}

/// Any other address.
pub async fn not_found() -> AppError {
    AppError::NotFound("There is no such page.".into())
}
