//! The app's errors, and the pages they become.

use crate::templates::Templates;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;

/// What can go wrong while serving a request.
#[derive(Debug)]
pub enum AppError {
    /// An unknown ship, member or page: 404.
    NotFound(String),
    /// Malformed input (a form, a path): 400 with what was wrong.
    BadRequest(String),
    /// A rule refused the signed-in member (or no one is signed in): 403.
    Forbidden(String),
    /// The row changed since the form was drawn: 409, nothing written.
    Conflict(String),
    /// The store failed: 500 (the message says why; nothing a visitor types leads here).
    Store(remodel::Error),
    /// A template failed to render: 500 (a bug in a template).
    Template(minijinja::Error),
    /// A rule could not be decided (the store failed while checking it): 500, with the
    /// reference the server logged.
    Internal(String),
}

/// Handlers return this.
pub type AppResult<T> = Result<T, AppError>;

impl From<remodel::Error> for AppError {
    fn from(e: remodel::Error) -> Self {
        match e.as_model() {
            // A row deleted by another request between this one's read and its write (a
            // member moved while someone deletes it): the write was refused, nothing changed.
            Some(remodel::model::ModelError::NotFound { model, key, .. }) => AppError::NotFound(
                format!("The {} {key} was deleted meanwhile.", model.to_lowercase()),
            ),
            _ => AppError::Store(e),
        }
    }
}

impl From<minijinja::Error> for AppError {
    fn from(e: minijinja::Error) -> Self {
        AppError::Template(e)
    }
}

impl From<axum::extract::rejection::FormRejection> for AppError {
    fn from(e: axum::extract::rejection::FormRejection) -> Self {
        AppError::BadRequest(format!("the form could not be read: {}", e.body_text()))
    }
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Store(_) | AppError::Template(_) | AppError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn message(&self) -> String {
        match self {
            AppError::NotFound(m)
            | AppError::BadRequest(m)
            | AppError::Forbidden(m)
            | AppError::Conflict(m) => m.clone(),
            AppError::Store(e) => format!("the database failed: {e}"),
            AppError::Template(e) => format!("a page could not be drawn: {e}"),
            AppError::Internal(m) => m.clone(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.message();
        let page = Templates::shared()
            .render("error.html", context! { status => status.as_u16(), reason => status.canonical_reason(), message })
            // The error page itself failed: plain text, still the right status.
            .unwrap_or_else(|_| message.clone());
        (status, Html(page)).into_response()
    }
}
