//! Result frames written as text: rows as JSON text, cut in parts of bounded size, spliced
//! into `reset`, `more` and `change` frames (as `ServerFrame` would serialise them; tests
//! hold them to it). Shared and unshared subscriptions alike.
//!
//! A change to a row many subscriptions show reaches each of them as the same change item of
//! the store (one allocation, shared by every feed of its group). Its row is serialised once
//! per worker thread, and the text spliced into each subscription's frame, instead of once
//! per subscription.

use crate::live::Shown;
use axum::extract::ws::Message;
use remodel::{Change, Cursor, Value};
use std::cell::RefCell;
use std::sync::Arc;

/// Rows whose text each thread keeps: the rows of the latest changes (a change reaches all
/// its subscriptions within a moment, so a few suffice).
const KEPT: usize = 8;

/// The text of the latest rows serialised on this thread, by the address of the row. Each
/// entry holds its change, so the row stays allocated (and its address is not reused) while
/// its text is kept.
#[derive(Default)]
struct Kept {
    rows: Vec<(usize, Change, Arc<str>)>,
    next: usize,
}

thread_local! {
    static KEPT_ROWS: RefCell<Kept> = RefCell::new(Kept::default());
}

/// The JSON of the new row of `change` (`null` when there is none), made once per thread.
fn new_row_text(change: &Change) -> Arc<str> {
    let Some(row) = change.new_val() else {
        return Arc::from("null");
    };
    let at = row as *const Value as usize;
    let kept = KEPT_ROWS.with(|kept| {
        let kept = kept.try_borrow().ok()?;
        kept.rows
            .iter()
            .find(|(a, _, _)| *a == at)
            .map(|(_, _, t)| t.clone())
    });
    if let Some(text) = kept {
        return text;
    }
    // Serialising a JSON value cannot fail.
    let text: Arc<str> = serde_json::to_string(row).unwrap_or_default().into();
    KEPT_ROWS.with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut() {
            let entry = (at, change.clone(), text.clone());
            if kept.rows.len() < KEPT {
                kept.rows.push(entry);
            } else {
                let i = kept.next;
                kept.rows[i] = entry;
            }
            kept.next = (kept.next + 1) % KEPT;
        }
    });
    text
}

/// A row of a frame as text.
pub(crate) struct RowText {
    /// Its key's JSON text.
    pub(crate) key: Arc<str>,
    /// Its shown row's JSON text, or `None` when it left the result.
    pub(crate) row: Option<Arc<str>>,
}

/// Each row's key and shown row as JSON text.
pub(crate) fn row_texts(rows: impl IntoIterator<Item = (Value, Option<Shown>)>) -> Vec<RowText> {
    rows.into_iter()
        .map(|(key, row)| RowText {
            // Serialising JSON values cannot fail.
            key: serde_json::to_string(&key).unwrap_or_default().into(),
            row: row.map(|r| match r {
                Shown::New(change) => new_row_text(&change),
                Shown::Owned(v) => serde_json::to_string(&v).unwrap_or_default().into(),
            }),
        })
        .collect()
}

/// The most JSON text of rows one frame carries (at least one row), initial results and
/// changes alike, once a result is cut.
/// The WebSocket layer keeps a buffer as large as the largest frame it ever wrote, for the
/// connection's life: a 1,000-row result sent whole would pin ~100 KB per connection, and
/// every connection keeps ~2 KB with frames of at most 2 KB (which a 100-row result fills).
const PART_BYTES: usize = 1024;

/// Rows under this much text go whole, in one frame with its own fields.
const WHOLE_BYTES: usize = 2 * PART_BYTES - 128;

/// `[[key,row],…]` texts of at most [`PART_BYTES`] each (at least one row), or one text when
/// the rows are under [`WHOLE_BYTES`] in all (`null` for a row that left).
pub(crate) fn parts<'a>(
    rows: impl Iterator<Item = (&'a str, Option<&'a str>)> + Clone,
) -> Vec<String> {
    let size = |(k, r): (&str, Option<&str>)| k.len() + r.map_or(4, str::len) + 4;
    let total: usize = rows.clone().map(size).sum();
    let most = if total < WHOLE_BYTES {
        usize::MAX
    } else {
        PART_BYTES
    };
    let mut parts = Vec::new();
    let mut part = String::from("[");
    for (key, row) in rows {
        if part.len() > 1 && part.len() + size((key, row)) > most {
            part.push(']');
            parts.push(std::mem::replace(&mut part, String::from("[")));
        }
        if part.len() > 1 {
            part.push(',');
        }
        part.push('[');
        part.push_str(key);
        part.push(',');
        part.push_str(row.unwrap_or("null"));
        part.push(']');
    }
    part.push(']');
    parts.push(part);
    parts
}

/// [`parts`] of rows as text.
pub(crate) fn parts_of(rows: &[RowText]) -> Vec<String> {
    parts(rows.iter().map(|r| (&*r.key, r.row.as_deref())))
}

/// The `change` frames of rows cut in `parts`: all but the last say `more`, the last carries
/// the cursor if there is one (`cursor` is its text, unquoted).
pub(crate) fn change_frames(sub: u32, parts: &[String], cursor: Option<&str>) -> Vec<Message> {
    let last = parts.len().saturating_sub(1);
    parts
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            let (cursor, more) = match i == last {
                true => (cursor, false),
                false => (None, true),
            };
            Message::Text(change_frame(sub, rows, cursor, more).into())
        })
        .collect()
}

/// The `reset` frame of rows cut in `parts`, then a `more` frame for each further part;
/// `order` is the order's JSON text.
pub(crate) fn reset_frames(
    sub: u32,
    parts: &[String],
    order: &str,
    cursor: Option<&str>,
) -> Vec<Message> {
    let last = parts.len().saturating_sub(1);
    parts
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            let text = match i {
                0 => reset_frame(sub, rows, order, cursor, last > 0),
                _ => more_frame(sub, rows, i < last),
            };
            Message::Text(text.into())
        })
        .collect()
}

/// A `change` frame (see [`crate::protocol`]) of rows already written as JSON text.
fn change_frame(sub: u32, rows: &str, cursor: Option<&str>, more: bool) -> String {
    let mut out = String::with_capacity(48 + rows.len());
    out.push_str(r#"{"t":"change","sub":"#);
    out.push_str(&sub.to_string());
    out.push_str(r#","rows":"#);
    out.push_str(rows);
    if let Some(cursor) = cursor {
        out.push_str(r#","cursor":"#);
        push_str_json(&mut out, cursor);
    }
    if more {
        out.push_str(r#","more":true"#);
    }
    out.push('}');
    out
}

/// A `reset` frame (`more` with the rest to come) of rows already written as JSON text.
fn reset_frame(sub: u32, rows: &str, order: &str, cursor: Option<&str>, more: bool) -> String {
    let mut out = String::with_capacity(64 + rows.len() + order.len());
    out.push_str(r#"{"t":"reset","sub":"#);
    out.push_str(&sub.to_string());
    out.push_str(r#","rows":"#);
    out.push_str(rows);
    out.push_str(r#","order":"#);
    out.push_str(order);
    out.push_str(r#","cursor":"#);
    match cursor {
        Some(cursor) => push_str_json(&mut out, cursor),
        None => out.push_str("null"),
    }
    if more {
        out.push_str(r#","more":true"#);
    }
    out.push('}');
    out
}

/// A `more` frame (the rest of a reset) of rows already written as JSON text.
fn more_frame(sub: u32, rows: &str, more: bool) -> String {
    let mut out = String::with_capacity(48 + rows.len());
    out.push_str(r#"{"t":"more","sub":"#);
    out.push_str(&sub.to_string());
    out.push_str(r#","rows":"#);
    out.push_str(rows);
    out.push_str(if more {
        r#","more":true}"#
    } else {
        r#","more":false}"#
    });
    out
}

fn push_str_json(out: &mut String, s: &str) {
    // Writing a string as JSON cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// A cursor as clients get it: the feed's cursor, then the database's identity
/// ([`remodel::Database::identity`]), so that a cursor of another database (another
/// deployment, a database made again, another database of the same PostgreSQL server, whose
/// positions are of one space) is never resumed here.
pub(crate) fn cursor_text(cursor: Cursor, scope: u64) -> String {
    format!("{cursor}.{scope:x}")
}

/// Reads a client's cursor: `Err` when it is no cursor at all; `Ok(None)` when it is one of
/// another database (or of a server that gave cursors without their database: a resume
/// from it reads the result afresh, as from an expired one); `Ok(Some)` to resume from.
pub(crate) fn parse_cursor(text: &str, scope: u64) -> Result<Option<Cursor>, ()> {
    let (cursor, of) = match text.split_once('.') {
        Some((cursor, of)) => (cursor, Some(of)),
        None => (text, None),
    };
    let cursor = cursor.parse::<Cursor>().map_err(drop)?;
    let of = match of {
        None => return Ok(None),
        Some(of) if !of.is_empty() && of.len() <= 16 => {
            u64::from_str_radix(of, 16).map_err(drop)?
        }
        Some(_) => return Err(()),
    };
    Ok((of == scope).then_some(cursor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServerFrame;
    use serde_json::json;

    fn text(m: &Message) -> &str {
        match m {
            Message::Text(t) => t.as_str(),
            _ => panic!("a text frame"),
        }
    }

    #[test]
    fn the_same_text_as_the_frame_serialised() {
        let rows = vec![
            (
                json!("k1"),
                Some(Shown::Owned(json!({"a": "x\"y", "n": 1.5}))),
            ),
            (json!(2), None),
        ];
        let parts = parts_of(&row_texts(rows.iter().map(|(k, r)| {
            let r = r.as_ref().map(|r| match r {
                Shown::Owned(v) => Shown::Owned(v.clone()),
                Shown::New(c) => Shown::New(c.clone()),
            });
            (k.clone(), r)
        })));
        assert_eq!(parts.len(), 1);
        for (cursor, more) in [(Some("1f-2"), false), (None, true)] {
            let frame = ServerFrame::Change {
                sub: 7,
                rows: &rows,
                cursor: cursor.map(str::to_string),
                more,
            };
            let want = serde_json::to_string(&frame).unwrap();
            assert_eq!(change_frame(7, &parts[0], cursor, more), want);
        }
    }

    #[test]
    fn reset_and_more_frames_of_text_are_the_frames_serialised() {
        use crate::live::Direction;
        let rows = vec![(json!(1), Shown::Owned(json!({"a": "x\"y"})))];
        let text = serde_json::to_string(&rows).unwrap();
        let order = vec![("name".to_string(), Direction::Desc)];
        let order_text = serde_json::to_string(&order).unwrap();
        for (cursor, more) in [(Some("1f-2"), false), (None, true)] {
            let frame = ServerFrame::Reset {
                sub: 3,
                rows: &rows,
                order: &order,
                cursor: cursor.map(str::to_string),
                more,
            };
            let want = serde_json::to_string(&frame).unwrap();
            assert_eq!(reset_frame(3, &text, &order_text, cursor, more), want);
            let frame = ServerFrame::More {
                sub: 3,
                rows: &rows,
                more,
            };
            let want = serde_json::to_string(&frame).unwrap();
            assert_eq!(more_frame(3, &text, more), want);
        }
    }

    #[test]
    fn large_rows_are_cut_in_parts_with_one_cursor_and_more_on_the_others() {
        let rows: Vec<_> = (0..30)
            .map(|i| {
                (
                    json!(i),
                    Some(Shown::Owned(json!({"pad": "x".repeat(100)}))),
                )
            })
            .collect();
        let parts = parts_of(&row_texts(rows));
        assert!(parts.len() > 2, "{} parts", parts.len());
        let frames = change_frames(5, &parts, Some("a-1"));
        let mut keys = 0;
        for (i, f) in frames.iter().enumerate() {
            let v: Value = serde_json::from_str(text(f)).unwrap();
            let last = i + 1 == frames.len();
            assert_eq!(v["more"] == true, !last);
            assert_eq!(v["cursor"] == "a-1", last);
            assert!(text(f).len() < 2 * PART_BYTES);
            keys += v["rows"].as_array().unwrap().len();
        }
        assert_eq!(keys, 30);
        let resets = reset_frames(5, &parts, "[]", None);
        assert_eq!(resets.len(), parts.len());
        assert!(text(&resets[0]).starts_with(r#"{"t":"reset""#));
        assert!(resets[1..]
            .iter()
            .all(|f| text(f).starts_with(r#"{"t":"more""#)));
    }
}
