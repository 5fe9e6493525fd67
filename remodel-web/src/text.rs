//! Change frames written as text directly, each row's JSON made once per thread.
//!
//! A change to a row many subscriptions show (a shared board, a group's list) reaches each of
//! them as the same change item of the store (one allocation, shared by every feed of its
//! group). Its row is serialised once per worker thread, and the text spliced into each
//! subscription's frame, instead of once per subscription.

use crate::live::Shown;
use remodel::{Change, Value};
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

/// Appends the JSON of the new row of `change` to `out`.
fn push_row(out: &mut Vec<u8>, change: &Change) {
    let Some(row) = change.new_val() else {
        out.extend_from_slice(b"null");
        return;
    };
    let at = row as *const Value as usize;
    let text = KEPT_ROWS.with(|kept| {
        let kept = kept.try_borrow().ok()?;
        kept.rows
            .iter()
            .find(|(a, _, _)| *a == at)
            .map(|(_, _, t)| t.clone())
    });
    let text = match text {
        Some(text) => text,
        None => {
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
    };
    out.extend_from_slice(text.as_bytes());
}

/// A `change` frame (see [`crate::protocol`]): as `ServerFrame::Change` serialises it, with
/// each row's text made once per thread.
pub(crate) fn change_frame(
    sub: u32,
    rows: &[(Value, Option<Shown>)],
    cursor: Option<&str>,
    more: bool,
) -> String {
    let mut out = Vec::with_capacity(64 + rows.len() * 96);
    out.extend_from_slice(br#"{"t":"change","sub":"#);
    out.extend_from_slice(sub.to_string().as_bytes());
    out.extend_from_slice(br#","rows":["#);
    for (i, (key, row)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        // Writing JSON values to a vector cannot fail.
        let _ = serde_json::to_writer(&mut out, key);
        out.push(b',');
        match row {
            None => out.extend_from_slice(b"null"),
            Some(Shown::New(change)) => push_row(&mut out, change),
            Some(Shown::Owned(v)) => {
                let _ = serde_json::to_writer(&mut out, v);
            }
        }
        out.push(b']');
    }
    out.push(b']');
    if let Some(cursor) = cursor {
        out.extend_from_slice(br#","cursor":"#);
        let _ = serde_json::to_writer(&mut out, cursor);
    }
    if more {
        out.extend_from_slice(br#","more":true"#);
    }
    out.push(b'}');
    // Only JSON text and ASCII went in.
    String::from_utf8(out).unwrap_or_default()
}

/// A `change` frame of rows already written as JSON text (`[[key,row],…]`); `cursor` is
/// the cursor's text, unquoted.
pub(crate) fn change_frame_of(sub: u32, rows: &str, cursor: Option<&str>, more: bool) -> String {
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

/// A `reset` frame (`more` with the rest to come) of rows already written as JSON text;
/// `order` is the order's JSON text.
pub(crate) fn reset_frame_of(
    sub: u32,
    rows: &str,
    order: &str,
    cursor: Option<&str>,
    more: bool,
) -> String {
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
pub(crate) fn more_frame_of(sub: u32, rows: &str, more: bool) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServerFrame;
    use serde_json::json;

    #[test]
    fn the_same_text_as_the_frame_serialised() {
        let rows = vec![
            (
                json!("k1"),
                Some(Shown::Owned(json!({"a": "x\"y", "n": 1.5}))),
            ),
            (json!(2), None),
        ];
        for (cursor, more) in [(Some("1f-2"), false), (None, true)] {
            let frame = ServerFrame::Change {
                sub: 7,
                rows: &rows,
                cursor: cursor.map(str::to_string),
                more,
            };
            let want = serde_json::to_string(&frame).unwrap();
            assert_eq!(change_frame(7, &rows, cursor, more), want);
            let text = serde_json::to_string(&rows).unwrap();
            assert_eq!(change_frame_of(7, &text, cursor, more), want);
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
            assert_eq!(reset_frame_of(3, &text, &order_text, cursor, more), want);
            let frame = ServerFrame::More {
                sub: 3,
                rows: &rows,
                more,
            };
            let want = serde_json::to_string(&frame).unwrap();
            assert_eq!(more_frame_of(3, &text, more), want);
        }
    }
}
