//! Refusals: the typed errors a client receives, and the codes it can match on.

use serde::Serialize;
use std::fmt;

/// What went wrong, as the client sees it (`error.code` in a frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No publication of that name is declared.
    UnknownPublication,
    /// No method of that name is declared.
    UnknownMethod,
    /// The parameters do not fit the publication's or method's parameter type.
    BadParams,
    /// A rule refused the caller.
    Forbidden,
    /// What was asked for does not exist.
    NotFound,
    /// A cursor that is not a cursor.
    BadCursor,
    /// The connection already has [`crate::Limits::subscriptions`] open subscriptions.
    TooManySubscriptions,
    /// More method calls than [`crate::Limits::calls_per_second`], or subscriptions than
    /// [`crate::Limits::subscribes_per_second`].
    RateLimited,
    /// A subscription id already in use on this connection.
    DuplicateId,
    /// A frame that is not one of the protocol's.
    BadFrame,
    /// A frame larger than [`crate::Limits::max_frame_bytes`] (the connection is closed).
    FrameTooLarge,
    /// Nothing came from the client for [`crate::Limits::idle_timeout`] (the connection is
    /// closed).
    IdleTimeout,
    /// A method's own checks refused the call.
    Invalid,
    /// What the subscription watches went away (its table was dropped, the database closed).
    Aborted,
    /// The server failed; the message says how.
    Internal,
}

/// A typed refusal: a publication, rule or method said no, or the server refused a frame.
/// Sent to the client as `{"code": …, "message": …}`. A store error the caller did not
/// cause is [`ErrorCode::Internal`] with a reference number into the server's log, where its
/// words are; a batch's or transaction's failed condition
/// ([`remodel::Error::Precondition`]) is [`ErrorCode::Invalid`] with the condition's words
/// (the app's own).
///
/// ```
/// use remodel_web::{ErrorCode, Refusal};
/// let r = Refusal::forbidden("only the captain reads this log");
/// assert_eq!(r.code(), ErrorCode::Forbidden);
/// assert_eq!(
///     serde_json::to_value(&r).unwrap(),
///     serde_json::json!({"code": "forbidden", "message": "only the captain reads this log"})
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// [`ErrorCode::Forbidden`]: a rule said no.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// [`ErrorCode::Invalid`]: a method's checks said no.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    /// [`ErrorCode::NotFound`]: what was asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// What went wrong.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// Why, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// A store error in a publication, method or feed: `NotFound` and bad input are the caller's
/// business ([`ErrorCode::NotFound`], [`ErrorCode::Invalid`]), a feed whose table went is
/// [`ErrorCode::Aborted`]; anything else is the server's ([`ErrorCode::Internal`]): logged
/// with a reference number, and only the number goes to the client (a storage or
/// PostgreSQL error's text names files, schemas and statements a browser has no business
/// seeing).
impl From<&remodel::Error> for Refusal {
    fn from(e: &remodel::Error) -> Self {
        use remodel::model::ModelError;
        use remodel::Error as E;
        match e {
            E::NotFound { .. } | E::Model(ModelError::NotFound { .. }) => {
                Refusal::not_found(e.to_string())
            }
            E::KeyConflict { .. }
            | E::InvalidDocument { .. }
            | E::InvalidKey { .. }
            | E::Restricted { .. }
            | E::Precondition(_)
            | E::Model(ModelError::Restricted { .. } | ModelError::Rejected(_)) => {
                Refusal::invalid(e.to_string())
            }
            E::FeedAborted(why) => Refusal::new(ErrorCode::Aborted, why.clone()),
            E::NoSuchTable(_) | E::Closed => Refusal::new(ErrorCode::Aborted, e.to_string()),
            _ => {
                static REFERENCE: std::sync::atomic::AtomicU64 =
                    std::sync::atomic::AtomicU64::new(1);
                let reference = REFERENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, reference, "a publication, method or feed failed");
                Refusal::new(
                    ErrorCode::Internal,
                    format!("the server failed (reference {reference} in its log)"),
                )
            }
        }
    }
}

impl From<remodel::Error> for Refusal {
    fn from(e: remodel::Error) -> Self {
        Refusal::from(&e)
    }
}
