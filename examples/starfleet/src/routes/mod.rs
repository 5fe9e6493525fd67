//! Pages and forms, one module per concern, and what they share: looking rows up (an
//! unknown key is a 404), reading form fields (a bad value is a 400 that says why) and
//! rendering templates.

pub mod away;
pub mod captains;
pub mod leaderboard;
pub mod map;
pub mod members;
pub mod ships;
pub mod signin;
pub mod species;

use crate::error::{AppError, AppResult};
use crate::models::{Crewmember, Starship};
use crate::session::Session;
use crate::templates::Templates;
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse};
use minijinja::context;
use remodel::{Database, Model};

/// Renders a page for the signed-in member `me` (shown in the header).
pub fn page(me: &Viewer, name: &str, ctx: minijinja::Value) -> AppResult<Html<String>> {
    let ctx = context! { me => me.0, ..ctx };
    Ok(Html(Templates::shared().render(name, ctx)?))
}

/// Who reads the page: the signed-in member, if any (a session naming a member deleted since
/// is no one).
pub struct Viewer(pub Option<Crewmember>);

impl Viewer {
    /// The viewer of a request with `session`.
    pub async fn of(db: &Database, session: &Session) -> AppResult<Viewer> {
        let Some(id) = session.member.as_deref() else {
            return Ok(Viewer(None));
        };
        match Crewmember::get(db, id).await {
            Ok(m) => Ok(Viewer(m)),
            Err(remodel::Error::InvalidKey { .. }) => Ok(Viewer(None)),
            Err(e) => Err(e.into()),
        }
    }
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
    /// The form's fields as sent.
    pub fn new(name: String, rank: String, species: String) -> Self {
        MemberForm {
            name,
            rank,
            species,
        }
    }

    /// The checked name, rank and species (see [`text_field`]).
    pub fn fields(&self) -> AppResult<(String, String, String)> {
        Ok((
            text_field("name", &self.name, 80)?,
            text_field("rank", &self.rank, 40)?,
            text_field("species", &self.species, 40)?,
        ))
    }
}

/// The browser side of live pages (an ES module over remodel-web's client; no CDN, no
/// framework).
pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../templates/starfleet.js"),
    )
}

/// A form's address opened as a page (a GET after a reload, a bookmark): a page that says
/// where to go, with 405 as HTTP wants.
pub async fn form_only(uri: Uri) -> impl IntoResponse {
    // The page the form is on: the address up to the ship's or member's key.
    let path = uri.path();
    let back = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["", kind @ ("ship" | "member"), id, ..] => format!("/{kind}/{id}"),
        _ => "/".to_string(),
    };
    let message = "This address takes a form; it is not a page of its own.";
    let page = Templates::shared()
        .render(
            "error.html",
            context! { status => 405, reason => "Method Not Allowed", message, back },
        )
        .unwrap_or_else(|_| message.to_string());
    (StatusCode::METHOD_NOT_ALLOWED, Html(page))
}

/// Any other address.
pub async fn not_found() -> AppError {
    AppError::NotFound("There is no such page.".into())
}

/// Forms come from the app's own pages: a POST whose `Origin` is another origin (or that the
/// browser marks as sent from another site) is refused with a 403 page. The session cookie is
/// `SameSite=Lax`, which stops other sites from sending it along, but not other origins of the
/// same site (another port of the same host, a sibling subdomain).
pub async fn same_origin_posts(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.method() == axum::http::Method::POST {
        let headers = req.headers();
        // No `Origin`: a browser that sends none still says where the request came from.
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let cross = match headers.contains_key(header::ORIGIN) {
            true => !remodel_web::same_origin(headers, &[]),
            false => matches!(fetch_site, Some("cross-site" | "same-site")),
        };
        if cross {
            let why = "This form may only be sent from the app's own pages.";
            return AppError::Forbidden(why.into()).into_response();
        }
    }
    next.run(req).await
}
