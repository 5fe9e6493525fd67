//! [`Results`]: each subscription's rows rebuilt from the server's frames, as the JavaScript
//! client keeps them, for Rust clients of the protocol (an app's tests of its publications,
//! a bot, another server).

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Each subscription's result, rebuilt from the frames a client receives ([`Results::apply`]
/// every frame, in order): `reset` replaces a result (completed by its `more` frames),
/// `change` sets or removes rows, `end` drops it and keeps the refusal, `batch` applies the
/// frames it carries.
///
/// ```
/// use remodel_web::Results;
/// use serde_json::json;
/// let mut r = Results::default();
/// r.apply(&json!({"t": "reset", "sub": 1, "rows": [["a", {"id": "a"}]], "order": [], "cursor": "5-ffffffff"}));
/// r.apply(&json!({"t": "change", "sub": 1, "rows": [["b", {"id": "b"}], ["a", null]], "cursor": "6-0"}));
/// assert_eq!(r.rows(1), vec![json!({"id": "b"})]);
/// assert_eq!(r.cursor(1), Some("6-0"));
/// r.apply(&json!({"t": "batch", "frames": [
///     {"t": "change", "sub": 1, "rows": [["c", {"id": "c"}]], "cursor": "7-0"},
///     {"t": "change", "sub": 1, "rows": [["b", null]], "cursor": "8-0"},
/// ]}));
/// assert_eq!(r.rows(1), vec![json!({"id": "c"})]);
/// assert_eq!(r.cursor(1), Some("8-0"));
/// // A reset in parts gives no cursor until its last part came.
/// r.apply(&json!({"t": "reset", "sub": 1, "rows": [["d", {"id": "d"}]], "order": [], "cursor": "9-ffffffff", "more": true}));
/// assert_eq!(r.cursor(1), None);
/// r.apply(&json!({"t": "more", "sub": 1, "rows": [["e", {"id": "e"}]], "more": false}));
/// assert_eq!(r.cursor(1), Some("9-ffffffff"));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    subs: HashMap<u32, Result>,
}

/// One subscription's state.
#[derive(Clone, Debug, Default, PartialEq)]
struct Result {
    /// Rows by their key's JSON text.
    rows: BTreeMap<String, Value>,
    cursor: Option<String>,
    ended: Option<Value>,
    resets: usize,
    /// Inside a reset whose `more` frames are still coming.
    partial: bool,
}

impl Results {
    /// Applies one frame of the server's; returns the subscription it was about, if any. A
    /// `batch` applies each of its frames in order, and returns the last one's subscription.
    pub fn apply(&mut self, frame: &Value) -> Option<u32> {
        if frame["t"] == "batch" {
            let frames = frame["frames"].as_array()?;
            // A batch holds no batch: one inside is not applied.
            let inner = frames.iter().filter(|f| f["t"] != "batch");
            return inner.fold(None, |last, f| self.apply(f).or(last));
        }
        let sub = u32::try_from(frame["sub"].as_u64()?).ok()?;
        let rows = frame["rows"].as_array();
        let r = self.subs.entry(sub).or_default();
        match frame["t"].as_str()? {
            "reset" => {
                r.rows.clear();
                r.ended = None;
                r.resets += 1;
                r.partial = frame["more"] == true;
                r.cursor = frame["cursor"].as_str().map(String::from);
                set_rows(&mut r.rows, rows);
            }
            "more" if r.partial => {
                r.partial = frame["more"] == true;
                set_rows(&mut r.rows, rows);
            }
            "change" => {
                set_rows(&mut r.rows, rows);
                if let Some(c) = frame["cursor"].as_str() {
                    r.cursor = Some(c.to_string());
                }
            }
            "end" => {
                r.rows.clear();
                r.ended = Some(frame["error"].clone());
            }
            _ => return None,
        }
        Some(sub)
    }

    /// The rows of subscription `sub`, in the order of their keys' JSON text.
    pub fn rows(&self, sub: u32) -> Vec<Value> {
        self.subs
            .get(&sub)
            .map(|r| r.rows.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether subscription `sub` holds a row with this key.
    pub fn contains(&self, sub: u32, key: &Value) -> bool {
        self.subs
            .get(&sub)
            .is_some_and(|r| r.rows.contains_key(&key.to_string()))
    }

    /// The cursor to resume subscription `sub` from (`None` before any, for a feed that
    /// cannot resume, and while a reset's `more` frames are still coming: resuming from the
    /// reset's cursor would keep only the part of the result that came, as the JavaScript
    /// client knows too).
    pub fn cursor(&self, sub: u32) -> Option<&str> {
        let r = self.subs.get(&sub)?;
        if r.partial {
            return None;
        }
        r.cursor.as_deref()
    }

    /// The refusal that ended subscription `sub`, if it ended.
    pub fn ended(&self, sub: u32) -> Option<&Value> {
        self.subs.get(&sub)?.ended.as_ref()
    }

    /// How many `reset`s subscription `sub` received (a resumed subscription gets none).
    pub fn resets(&self, sub: u32) -> usize {
        self.subs.get(&sub).map_or(0, |r| r.resets)
    }

    /// Whether subscription `sub`'s last reset is complete (all its `more` frames came).
    pub fn is_whole(&self, sub: u32) -> bool {
        self.subs.get(&sub).is_some_and(|r| !r.partial)
    }
}

fn set_rows(rows: &mut BTreeMap<String, Value>, frame_rows: Option<&Vec<Value>>) {
    for row in frame_rows.into_iter().flatten() {
        let key = row[0].to_string();
        match &row[1] {
            Value::Null => rows.remove(&key),
            doc => rows.insert(key, doc.clone()),
        };
    }
}
