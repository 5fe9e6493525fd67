//! The wire protocol between a page and the server: JSON text frames over one WebSocket per
//! tab, multiplexing every subscription and method call of the page.
//!
//! # Client → server
//!
//! | frame | meaning |
//! |---|---|
//! | `{"op":"sub","id":7,"name":"crew","params":{…},"cursor":"1f-0"}` | subscribe to the publication `name` with `params` as subscription `id` (a number the client picks, unique among its open subscriptions); `cursor` (optional) is the last cursor the client received for this subscription: the server resumes after it |
//! | `{"op":"unsub","id":7}` | end subscription `id` |
//! | `{"op":"call","id":3,"name":"add_log","params":{…}}` | call the method `name`; `id` pairs the answer with the call |
//! | `{"op":"ping"}` | keeps the connection from the idle timeout; answered by `pong` |
//!
//! # Server → client
//!
//! | frame | meaning |
//! |---|---|
//! | `{"t":"hello","idle_ms":30000,"max_frame_bytes":65536}` | sent once on open: the client must send something (a `ping`) at least every `idle_ms`, and no frame longer than `max_frame_bytes` (a longer one closes the connection) |
//! | `{"t":"reset","sub":7,"rows":[["k1",{…}],…],"order":[["name","asc"]],"cursor":"1f-ffffffff"}` | the whole current result of subscription 7: replace what the client holds. `rows` are `[key, document]` pairs; `order` is how the publication sorts them (fields, `asc`/`desc`; ties by key); `cursor` (or `null` for a feed that cannot resume) is where the result stands |
//! | `{"t":"more","sub":7,"rows":[…],"more":false}` | the rest of a large result: a `reset` whose rows do not fit in one frame says `"more":true`, and its rows continue in `more` frames until one says `"more":false`. The result is whole only then (show it then: a part of it was never a result) |
//! | `{"t":"change","sub":7,"rows":[["k1",{…}],["k2",null]],"cursor":"20-1"}` | the net effect of one or more commits: each key's new document, or `null` when the row left the result. `cursor`: resume after it on reconnect (a change cut short of what a squashing publication had ready carries none: keep the one before). A large one comes in several `change` frames, all but the last saying `"more":true` and carrying no cursor: apply them all, show the result after the last |
//! | `{"t":"batch","frames":[{"t":"change","sub":7,…},{"t":"change","sub":9,…}]}` | several frames in one message: apply them in order, as if each had come alone. The server sends a connection's change frames this way when several go at once (the changes of several subscriptions in one window, the parts of a large change, the frames of several windows while the client reads slowly); a batch holds no batch, and a frame alone may come outside any |
//! | `{"t":"end","sub":7,"error":{"code":"forbidden","message":"…"}}` | the subscription ended (refused when asked, or later: its table was dropped, a guard changed and the publication now refuses, it kept restarting); the client drops its rows |
//! | `{"t":"result","call":3,"ok":…}` / `{"t":"result","call":3,"error":{…}}` | a method call's answer |
//! | `{"t":"error","error":{"code":"bad_frame","message":"…"}}` | a frame that could not be understood (no subscription or call to pin it on); the connection goes on, except after `frame_too_large`, `idle_timeout` and an unreadable frame, which close it |
//! | `{"t":"pong"}` | the answer to `ping` |
//!
//! **Coalescing.** A connection's changes are gathered in windows (50 ms by default,
//! [`crate::WebBuilder::window`]), one per connection. A change of a subscription that has
//! not sent within the open window (or that finds the connection idle) goes at once, with
//! whatever the connection's other subscriptions have pending; a subscription that sent
//! within the window sends again when it ends, together with what the others gathered: each
//! subscription's changes as one `change` (the net effect: a row changed five times is sent
//! once), all of them in one `batch`. A window that ends with nothing to send makes the
//! connection idle again.
//!
//! Every refusal carries one of the codes of [`ErrorCode`]. A change message carries the
//! cursor of the newest change in it; a reconnecting client sends it back with `sub`, and gets
//! exactly the changes after it (as `change` messages), or a `reset` when the server no longer
//! holds them (the cursor expired, or the publication's feed cannot resume: top-N, aggregates,
//! joins). Cursors are opaque to clients: a position in the database's commit order, then the
//! database's identity (`1f-0.9c2e41d07a3b5f18`), so that a cursor of another database (the
//! server's database deleted and made again, another deployment, another database of the
//! same PostgreSQL server) gets a `reset`, never a resume that would keep that database's
//! rows. Messages of one subscription arrive in commit order.
//!
//! After an `unsub`, nothing more of that subscription is sent; frames of it already on their
//! way may still arrive (a client that reuses the id ignores them until the new
//! subscription's `reset` or `end`, which comes after them).

use crate::live::{Direction, Shown};
use crate::Refusal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::ErrorCode;

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum ClientFrame {
    Sub {
        id: u32,
        name: String,
        #[serde(default)]
        params: Value,
        #[serde(default)]
        cursor: Option<String>,
    },
    Unsub {
        id: u32,
    },
    Call {
        id: u32,
        name: String,
        #[serde(default)]
        params: Value,
    },
    Ping,
}

/// A frame to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub(crate) enum ServerFrame<'a> {
    Hello {
        idle_ms: u64,
        max_frame_bytes: usize,
    },
    /// `Reset`, `More` and `Change` are written as text by `text` (rows as JSON text, cut in
    /// parts); these are their definitions, which its tests hold it to.
    #[cfg_attr(not(test), allow(dead_code))]
    Reset {
        sub: u32,
        rows: &'a [(Value, Shown)],
        order: &'a [(String, Direction)],
        cursor: Option<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    #[cfg_attr(not(test), allow(dead_code))]
    More {
        sub: u32,
        rows: &'a [(Value, Shown)],
        more: bool,
    },
    #[cfg_attr(not(test), allow(dead_code))]
    Change {
        sub: u32,
        rows: &'a [(Value, Option<Shown>)],
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    End {
        sub: u32,
        error: Refusal,
    },
    Result {
        call: u32,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Error {
        error: Refusal,
    },
    Pong,
}

/// A method call's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Ok(Value),
    Error(Refusal),
}

impl ServerFrame<'_> {
    /// The frame as a WebSocket text message.
    pub(crate) fn message(&self) -> axum::extract::ws::Message {
        // Serialising plain JSON values and strings cannot fail.
        let text = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"t":"error","error":{"code":"internal","message":"a frame could not be written"}}"#
                .to_string()
        });
        axum::extract::ws::Message::Text(text.into())
    }
}
