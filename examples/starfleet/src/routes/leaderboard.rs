//! The holodeck leaderboard: the top five scores, and a form to post one.

use super::{page, text_field, Viewer};
use crate::error::{AppError, AppResult};
use crate::models::Score;
use crate::session::Session;
use crate::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::response::{Html, Redirect};
use axum::Form;
use minijinja::context;
use remodel::model::ModelQuery;
use remodel::{Database, Model};
use serde::Deserialize;

/// The top five, best first: read through the `points` index (the live page watches the
/// same query).
pub fn top_five(db: &Database) -> ModelQuery<Score> {
    Score::query(db)
        .order_by(Score::fields().points.index().desc())
        .limit(5)
}

/// `/leaderboard` (kept live by the `leaderboard` publication).
pub async fn show(State(app): State<AppState>, s: Session) -> AppResult<Html<String>> {
    let me = Viewer::of(&app.db, &s).await?;
    let scores = top_five(&app.db).run().await?;
    page(&me, "leaderboard.html", context! { scores })
}

/// The score form (points as text, to say what is wrong with them).
#[derive(Deserialize)]
pub struct NewScore {
    player: String,
    points: String,
}

/// `POST /leaderboard`: records a score, then back to the leaderboard.
pub async fn post_score(
    State(app): State<AppState>,
    form: Result<Form<NewScore>, FormRejection>,
) -> AppResult<Redirect> {
    let Form(form) = form?;
    let player = text_field("player", &form.player, 40)?;
    let points: i64 = form.points.trim().parse().map_err(|_| {
        AppError::BadRequest(format!(
            "The points must be a whole number, not `{}`.",
            form.points
        ))
    })?;
    if !(0..=1_000_000_000).contains(&points) {
        return Err(AppError::BadRequest(
            "The points must be between 0 and 1,000,000,000.".into(),
        ));
    }
    Score {
        id: None,
        player,
        points,
    }
    .create(&app.db)
    .await?;
    Ok(Redirect::to("/leaderboard"))
}
