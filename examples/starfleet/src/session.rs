//! Who is signed in: a crew member's key in a signed cookie (axum-extra's `SignedCookieJar`,
//! HMAC-signed by the `cookie` crate). No passwords: the sign-in page is a picker, enough to
//! show what the rules let each member see. The signing key is kept in the database, so that
//! sessions survive a restart and every app instance on a shared database accepts them.

use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum_extra::extract::cookie::{Cookie, Key, SameSite, SignedCookieJar};
use remodel::{json, Database};
use std::convert::Infallible;

/// The cookie that holds the signed-in member's key.
const COOKIE: &str = "starfleet_member";

/// The table and row that keep the cookie key.
const SECRETS: &str = "starfleet_secrets";
const KEY_ROW: &str = "cookie-key";

/// The signed-in member, if any: what every request and every live connection carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// The member's key.
    pub member: Option<String>,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Infallible> {
        let jar = SignedCookieJar::from_headers(&parts.headers, app.key().clone());
        Ok(Session {
            member: jar.get(COOKIE).map(|c| c.value().to_string()),
        })
    }
}

/// The jar with the session cookie for `member` set (HTTP-only, same-site: a page of another
/// site cannot send it along).
pub fn sign_in(jar: SignedCookieJar, member: &str) -> SignedCookieJar {
    let mut cookie = Cookie::new(COOKIE, member.to_string());
    cookie.set_http_only(true);
    cookie.set_same_site(SameSite::Lax);
    cookie.set_path("/");
    jar.add(cookie)
}

/// The jar without the session cookie.
pub fn sign_out(jar: SignedCookieJar) -> SignedCookieJar {
    jar.remove(Cookie::build(COOKIE).path("/"))
}

/// The cookie key of this database: read, or made and stored on first use (when two
/// instances start at once, the first write wins and both read it).
pub async fn cookie_key(db: &Database) -> remodel::Result<Key> {
    db.ensure_table(SECRETS).await?;
    let table = db.table(SECRETS);
    if table.get(KEY_ROW).await?.is_none() {
        let hex: String = Key::generate()
            .master()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // Another instance may have stored one meanwhile: keep theirs.
        table
            .insert(json!({"id": KEY_ROW, "key": hex}))
            .conflict(remodel::Conflict::Error)
            .await
            .or_else(|e| match e {
                remodel::Error::KeyConflict { .. } => Ok(Default::default()),
                e => Err(e),
            })?;
    }
    let row = table.get(KEY_ROW).await?.unwrap_or_default();
    let bytes: Option<Vec<u8>> = row["key"].as_str().and_then(|hex| {
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect()
    });
    match bytes {
        Some(bytes) if bytes.len() >= 64 => Ok(Key::from(&bytes)),
        _ => Err(remodel::Error::InvalidDocument {
            reason: format!("the row `{KEY_ROW}` of `{SECRETS}` holds no cookie key"),
        }),
    }
}
