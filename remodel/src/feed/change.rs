//! What a changefeed delivers.

use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The kind of a change item (RethinkDB's `type` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A row entered the result (`old_val` is `None`).
    Add,
    /// A row left the result (`new_val` is `None`).
    Remove,
    /// A row of the result changed (or, in a top-N feed, one row replaced another).
    Change,
    /// A row of the initial result (`include_initial`).
    Initial,
    /// RethinkDB's "uninitial": an initial row withdrawn before it was sent. Remodel never
    /// interleaves initial rows with changes, so it never produces this kind; it exists so
    /// that code written against RethinkDB's kinds can match on it.
    Uninitial,
    /// A state marker (`include_states`).
    State,
}

impl ChangeKind {
    /// The kind's name as RethinkDB spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Add => "add",
            ChangeKind::Remove => "remove",
            ChangeKind::Change => "change",
            ChangeKind::Initial => "initial",
            ChangeKind::Uninitial => "uninitial",
            ChangeKind::State => "state",
        }
    }

    pub(crate) fn of(old: bool, new: bool) -> Self {
        match (old, new) {
            (false, _) => ChangeKind::Add,
            (true, false) => ChangeKind::Remove,
            (true, true) => ChangeKind::Change,
        }
    }
}

/// The state a feed announces with `include_states`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    /// Initial rows follow.
    Initializing,
    /// Every later item is a live change.
    Ready,
}

/// One item of a changefeed: a row's value before and after a write, as the query sees it
/// (after `pluck`/`without`), or a state marker.
///
/// Values are shared (`Arc`) between every feed that receives the same change.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// The row before (`None` when it entered the result).
    pub old_val: Option<Arc<Value>>,
    /// The row after (`None` when it left the result).
    pub new_val: Option<Arc<Value>>,
    /// Top-N feeds: the position the old row had (delete there first).
    pub old_offset: Option<usize>,
    /// Top-N feeds: the position the new row has (then insert there).
    pub new_offset: Option<usize>,
    /// The state, for [`ChangeKind::State`] items.
    pub state: Option<FeedState>,
    /// The primary key (encoded) of the row, used to squash changes.
    pub(crate) key: Option<Arc<[u8]>>,
    /// Whether `to_json` shows `type` (the feed's `include_types`).
    pub(crate) show_type: bool,
}

impl Change {
    pub(crate) fn state(s: FeedState) -> Self {
        Change {
            kind: ChangeKind::State,
            old_val: None,
            new_val: None,
            old_offset: None,
            new_offset: None,
            state: Some(s),
            key: None,
            show_type: false,
        }
    }

    pub(crate) fn initial(new: Option<Arc<Value>>, offset: Option<usize>) -> Self {
        Change {
            kind: ChangeKind::Initial,
            old_val: None,
            new_val: new,
            old_offset: None,
            new_offset: offset,
            state: None,
            key: None,
            show_type: false,
        }
    }

    pub(crate) fn row(
        key: Option<Arc<[u8]>>,
        old: Option<Arc<Value>>,
        new: Option<Arc<Value>>,
    ) -> Self {
        Change {
            kind: ChangeKind::of(old.is_some(), new.is_some()),
            old_val: old,
            new_val: new,
            old_offset: None,
            new_offset: None,
            state: None,
            key,
            show_type: false,
        }
    }

    /// The item in RethinkDB's JSON form: `{"old_val": .., "new_val": ..}`, plus `type` when
    /// the feed has `include_types`, `old_offset`/`new_offset` when present, and
    /// `{"state": ..}` for states. Initial rows are `{"new_val": ..}`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use futures_util::StreamExt;
    /// use remodel::Database;
    /// use serde_json::json;
    /// let db = Database::temporary().await?;
    /// db.create_table("t").await?;
    /// let mut feed = db.table("t").get(1).changes().include_types(true).await?;
    /// db.table("t").insert(json!({"id": 1})).await?;
    /// let change = feed.next().await.unwrap()?;
    /// assert_eq!(change.to_json(), json!({"old_val": null, "new_val": {"id": 1}, "type": "add"}));
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(s) = self.state {
            m.insert(
                "state".into(),
                json!(match s {
                    FeedState::Initializing => "initializing",
                    FeedState::Ready => "ready",
                }),
            );
        } else {
            if self.kind != ChangeKind::Initial {
                m.insert(
                    "old_val".into(),
                    self.old_val.as_deref().cloned().unwrap_or(Value::Null),
                );
            }
            m.insert(
                "new_val".into(),
                self.new_val.as_deref().cloned().unwrap_or(Value::Null),
            );
            if let Some(o) = self.old_offset {
                m.insert("old_offset".into(), json!(o));
            }
            if let Some(o) = self.new_offset {
                m.insert("new_offset".into(), json!(o));
            }
        }
        if self.show_type {
            m.insert("type".into(), json!(self.kind.as_str()));
        }
        Value::Object(m)
    }
}
