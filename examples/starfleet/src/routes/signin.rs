//! Signing in as a crew member (a picker, no passwords: the app shows rules, not accounts).

use super::{find_member, page, Viewer};
use crate::error::AppResult;
use crate::models::Crewmember;
use crate::session::{self, Session};
use crate::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect};
use axum::Form;
use axum_extra::extract::cookie::SignedCookieJar;
use minijinja::context;
use remodel::Model;
use serde::Deserialize;

/// `/signin`: every member, by name, each a button.
pub async fn show(State(app): State<AppState>, s: Session) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &s).await?;
    let mut members = Crewmember::all(&app.db).await?;
    members.sort_by(|a, b| a.name.cmp(&b.name));
    page(&me, "signin.html", context! { members })
}

/// The picker's form.
#[derive(Deserialize)]
pub struct SignIn {
    member_id: String,
}

/// `POST /signin`: signs in as the member (who must exist), then to their page.
pub async fn sign_in(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    form: Result<Form<SignIn>, FormRejection>,
) -> AppResult<impl IntoResponse> {
    let Form(form) = form?;
    let member = find_member(&app.db, form.member_id.trim()).await?;
    let jar = session::sign_in(jar, member.id_str());
    Ok((jar, Redirect::to(&format!("/member/{}", member.id_str()))))
}

/// `POST /signout`: back to no one, and to the ships.
pub async fn sign_out(jar: SignedCookieJar) -> impl IntoResponse {
    (session::sign_out(jar), Redirect::to("/"))
}
