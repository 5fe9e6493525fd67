//! What a changefeed delivers.

use super::shared::{Fanout, Shared};
use serde_json::{json, Map, Value};
use std::sync::{Arc, OnceLock};

/// The kind of a change item (RethinkDB's `type` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
#[non_exhaustive]
pub enum FeedState {
    /// Initial rows follow.
    Initializing,
    /// Every later item is a live change.
    Ready,
}

/// One item of a changefeed: a row's value before and after a write, as the query sees it
/// (after `pluck`/`without`), or a state marker.
///
/// An item is shared (one allocation, reference counted) between every feed that receives
/// the same change, so cloning it is cheap.
#[derive(Clone, Debug)]
pub struct Change {
    data: Shared<ChangeData>,
    /// Whether `to_json` shows `type` (the feed's `include_types`).
    show_type: bool,
    /// Whether offsets are shown (the feed's `include_offsets`).
    show_offsets: bool,
}

/// A value an item carries: a row as the query sees it, or a live join's `{left, right}`
/// pair, made from its two rows the first time it is read (by a consumer, not by the writer
/// under the commit lock; once, however many feeds share the item).
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Row(Arc<Value>),
    Pair(Arc<LazyPair>),
}

/// The two rows of a join pair, and the pair once made.
#[derive(Debug)]
pub(crate) struct LazyPair {
    left: Arc<Value>,
    right: Arc<Value>,
    made: OnceLock<Arc<Value>>,
}

impl Val {
    /// The pair of a live join's left row (as its query sees it) and right row.
    pub(crate) fn pair(left: Arc<Value>, right: Arc<Value>) -> Self {
        Val::Pair(Arc::new(LazyPair {
            left,
            right,
            made: OnceLock::new(),
        }))
    }

    fn arc(&self) -> &Arc<Value> {
        match self {
            Val::Row(v) => v,
            Val::Pair(p) => p.made.get_or_init(|| {
                let mut m = Map::with_capacity(2);
                m.insert("left".to_owned(), Value::clone(&p.left));
                m.insert("right".to_owned(), Value::clone(&p.right));
                Arc::new(Value::Object(m))
            }),
        }
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // Pairs are equal when their rows are (without making either).
            // Bit for bit (`-0.0` is not `0.0` to a reader: see `value::identical`).
            (Val::Pair(a), Val::Pair(b)) => {
                Arc::ptr_eq(a, b)
                    || (crate::value::identical(&a.left, &b.left)
                        && crate::value::identical(&a.right, &b.right))
            }
            _ => crate::value::identical_rows(Some(self.arc()), Some(other.arc())),
        }
    }
}

/// An item as a feed's shared log holds it: the shared data without the display options,
/// which each feed sets when it hands the item over. Half the size of a [`Change`] (one
/// pointer), so that a log's slots take half the memory a writer must touch.
#[derive(Clone)]
pub(crate) struct Item(Shared<ChangeData>);

impl Item {
    /// The item, not shown by a feed yet.
    pub(crate) fn into_change(self) -> Change {
        Change::of(self.0)
    }

    /// Another handle on the item, from this thread's handles paid for in advance (a reader
    /// of a shared log: see `shared.rs`).
    pub(crate) fn clone_local(&self) -> Item {
        Item(self.0.clone_local())
    }
}

/// One item handed to many feeds (see [`Change::fan_out`]).
pub(crate) struct ChangeFanout(Fanout<ChangeData>);

impl ChangeFanout {
    /// The item for one more feed, not shown by it yet.
    pub(crate) fn next(&mut self) -> Change {
        Change::of(self.0.next())
    }
}

// `repr(C)`, hot fields first: a consumer reading an item it has not seen for a while looks
// at its kind and sequence number (the visibility gate) next to the reference count, in one
// cache line rather than two.
#[derive(Clone, Debug, PartialEq)]
#[repr(C)]
pub(crate) struct ChangeData {
    /// The change's own number in the database's change order (what cursors and the
    /// visibility gate use).
    seq: Option<u64>,
    kind: ChangeKind,
    /// Which change of its commit this is (0 for the first): its commit's position is
    /// `seq - in_commit`. Kept beside `kind`, in what would be padding.
    in_commit: u32,
    old_val: Option<Val>,
    new_val: Option<Val>,
    old_offset: Option<usize>,
    new_offset: Option<usize>,
    state: Option<FeedState>,
    /// The primary key (encoded) of the row, used to squash changes.
    key: Option<Arc<[u8]>>,
    /// Which of the row's places in the result this item is about, when a row is there more
    /// than once (a multi index, a key given twice): squashing merges per row and place.
    occurrence: u32,
    /// Which of the feed's items for one change (or, in a top-N feed, one commit) this is:
    /// the second half of its cursor.
    ordinal: u32,
}

impl PartialEq for Change {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind()
            && self.old_val() == other.old_val()
            && self.new_val() == other.new_val()
            && self.old_offset() == other.old_offset()
            && self.new_offset() == other.new_offset()
            && self.state() == other.state()
    }
}

impl Change {
    fn new(data: ChangeData) -> Self {
        Change::of(Shared::new(data))
    }

    /// An item not shown by a feed yet (each feed sets its display options, see
    /// [`Change::shown`]).
    fn of(data: Shared<ChangeData>) -> Self {
        Change {
            data,
            show_type: false,
            show_offsets: true,
        }
    }

    /// The item as a log holds it, without display options.
    pub(crate) fn into_item(self) -> Item {
        Item(self.data)
    }

    pub(crate) fn state_marker(s: FeedState) -> Self {
        Change::new(ChangeData {
            kind: ChangeKind::State,
            old_val: None,
            new_val: None,
            old_offset: None,
            new_offset: None,
            state: Some(s),
            key: None,
            occurrence: 0,
            ordinal: 0,
            seq: None,
            in_commit: 0,
        })
    }

    pub(crate) fn initial(new: Option<Arc<Value>>, offset: Option<usize>) -> Self {
        Change::new(ChangeData {
            kind: ChangeKind::Initial,
            old_val: None,
            new_val: new.map(Val::Row),
            old_offset: None,
            new_offset: offset,
            state: None,
            key: None,
            occurrence: 0,
            ordinal: 0,
            seq: None,
            in_commit: 0,
        })
    }

    pub(crate) fn row(
        key: Option<Arc<[u8]>>,
        old: Option<Arc<Value>>,
        new: Option<Arc<Value>>,
    ) -> Self {
        Change::row_of(key, old.map(Val::Row), new.map(Val::Row))
    }

    /// A row item whose values may be pairs made on first read ([`Val::pair`]).
    pub(crate) fn row_of(key: Option<Arc<[u8]>>, old: Option<Val>, new: Option<Val>) -> Self {
        Change::new(ChangeData {
            kind: ChangeKind::of(old.is_some(), new.is_some()),
            old_val: old,
            new_val: new,
            old_offset: None,
            new_offset: None,
            state: None,
            key,
            occurrence: 0,
            ordinal: 0,
            seq: None,
            in_commit: 0,
        })
    }

    /// Stamps the item with its change's number `seq` in commit `commit` (the number of
    /// the commit's first change), only while the item is not shared yet.
    pub(crate) fn at(mut self, seq: u64, commit: u64) -> Self {
        let d = self.data.make_mut();
        d.seq = Some(seq);
        d.in_commit = u32::try_from(seq.saturating_sub(commit)).unwrap_or(u32::MAX);
        self
    }

    /// The item's change number and its commit's position, if stamped (see [`Change::at`]).
    pub(crate) fn stamp(&self) -> Option<(u64, u64)> {
        let seq = self.data.seq?;
        Some((seq, seq - u64::from(self.data.in_commit)))
    }

    /// The change's own number in the database's change order (cursors, visibility).
    pub(crate) fn change_seq(&self) -> Option<u64> {
        self.data.seq
    }

    /// Sets the offsets of a top-N item (only while the item is not shared yet).
    pub(crate) fn with_offsets(mut self, old: Option<usize>, new: Option<usize>) -> Self {
        let d = self.data.make_mut();
        d.old_offset = old;
        d.new_offset = new;
        self
    }

    /// Replaces the new value, keeping the old one (squashing). Copies the item if another
    /// feed shares it.
    pub(crate) fn squash_into(&mut self, later: &Change) {
        let d = self.data.make_mut();
        d.new_val = later.data.new_val.clone();
        d.kind = ChangeKind::of(d.old_val.is_some(), d.new_val.is_some());
        if later.data.seq.is_some() {
            d.seq = later.data.seq;
            d.in_commit = later.data.in_commit;
        }
        d.ordinal = later.data.ordinal;
    }

    /// Hands this item, not shown by a feed yet, to up to `n` feeds with one change of its
    /// reference count (see `feed::shared`).
    pub(crate) fn fan_out(self, n: usize) -> ChangeFanout {
        ChangeFanout(Fanout::new(self.data, n))
    }

    pub(crate) fn shown(mut self, types: bool, offsets: bool) -> Self {
        self.show_type = types;
        self.show_offsets = offsets;
        self
    }

    pub(crate) fn key(&self) -> Option<&Arc<[u8]>> {
        self.data.key.as_ref()
    }

    /// What squashing merges on: the row and which of its places in the result.
    pub(crate) fn squash_key(&self) -> Option<(Arc<[u8]>, u32)> {
        Some((self.data.key.clone()?, self.data.occurrence))
    }

    /// Marks the item as being about the row's `n`th place in the result (only while the
    /// item is not shared yet).
    pub(crate) fn nth(mut self, n: usize) -> Self {
        let d = self.data.make_mut();
        d.occurrence = u32::try_from(n).unwrap_or(u32::MAX);
        d.ordinal = d.occurrence;
        self
    }

    /// Numbers the item among the items of one commit (top-N feeds), for its cursor (only
    /// while the item is not shared yet).
    pub(crate) fn numbered(mut self, n: usize) -> Self {
        self.data.make_mut().ordinal = u32::try_from(n).unwrap_or(u32::MAX);
        self
    }

    /// The second half of the item's cursor (see `numbered`).
    pub(crate) fn ordinal(&self) -> u32 {
        self.data.ordinal
    }

    pub(crate) fn old_arc(&self) -> Option<&Arc<Value>> {
        self.data.old_val.as_ref().map(Val::arc)
    }

    pub(crate) fn new_arc(&self) -> Option<&Arc<Value>> {
        self.data.new_val.as_ref().map(Val::arc)
    }

    /// The offsets of a top-N item, whether or not the feed shows them.
    #[cfg(test)]
    pub(crate) fn raw_old_offset(&self) -> Option<usize> {
        self.data.old_offset
    }

    #[cfg(test)]
    pub(crate) fn raw_new_offset(&self) -> Option<usize> {
        self.data.new_offset
    }

    /// What happened.
    pub fn kind(&self) -> ChangeKind {
        self.data.kind
    }

    /// The row before the write (`None` when it entered the result, and for initial rows).
    pub fn old_val(&self) -> Option<&Value> {
        self.old_arc().map(|v| &**v)
    }

    /// The row after the write (`None` when it left the result).
    pub fn new_val(&self) -> Option<&Value> {
        self.new_arc().map(|v| &**v)
    }

    /// Top-N feeds with `include_offsets`: the position the old row had (delete there first).
    pub fn old_offset(&self) -> Option<usize> {
        self.data.old_offset.filter(|_| self.show_offsets)
    }

    /// Top-N feeds with `include_offsets`: the position the new row has (then insert there).
    pub fn new_offset(&self) -> Option<usize> {
        self.data.new_offset.filter(|_| self.show_offsets)
    }

    /// The state, for [`ChangeKind::State`] items.
    pub fn state(&self) -> Option<FeedState> {
        self.data.state
    }

    /// The position of the commit behind this change: one database, one order, so positions
    /// increase along every feed from commit to commit, and **all items of one atomic commit
    /// share it** (a batch, a cascading delete, an `insert_many` chunk): a consumer sees where
    /// a commit ends when the position changes. [`Change::position_in_commit`] orders the
    /// items of one commit. `None` for initial rows, state markers and stats rows. A squashed
    /// item carries the position of its last change.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use futures::StreamExt;
    /// use remodel::Database;
    /// use serde_json::json;
    /// let db = Database::temporary().await?;
    /// db.create_table("t").await?;
    /// let mut feed = db.table("t").changes().await?;
    /// db.table("t").insert_many(vec![json!({"id": 1}), json!({"id": 2})]).await?;
    /// db.table("t").insert(json!({"id": 3})).await?;
    /// let (a, b, c) = (feed.next().await.unwrap()?, feed.next().await.unwrap()?, feed.next().await.unwrap()?);
    /// assert_eq!(a.seq(), b.seq()); // one commit
    /// assert_eq!((a.position_in_commit(), b.position_in_commit()), (Some(0), Some(1)));
    /// assert!(c.seq() > b.seq());
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn seq(&self) -> Option<u64> {
        self.stamp().map(|(_, commit)| commit)
    }

    /// Which change of its commit this item is about (0 for the first): with
    /// [`Change::seq`], the item's place in the database's change order. A top-N or
    /// aggregate item, which is about the whole commit, has the place of the commit's last
    /// change; a join's pair, the place of the change that made it.
    pub fn position_in_commit(&self) -> Option<u32> {
        self.data.seq.map(|_| self.data.in_commit)
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
        if let Some(s) = self.state() {
            m.insert(
                "state".into(),
                json!(match s {
                    FeedState::Initializing => "initializing",
                    FeedState::Ready => "ready",
                }),
            );
        } else {
            if self.kind() != ChangeKind::Initial {
                m.insert(
                    "old_val".into(),
                    self.old_val().cloned().unwrap_or(Value::Null),
                );
            }
            m.insert(
                "new_val".into(),
                self.new_val().cloned().unwrap_or(Value::Null),
            );
            if let Some(o) = self.old_offset() {
                m.insert("old_offset".into(), json!(o));
            }
            if let Some(o) = self.new_offset() {
                m.insert("new_offset".into(), json!(o));
            }
        }
        if self.show_type {
            m.insert("type".into(), json!(self.kind().as_str()));
        }
        Value::Object(m)
    }
}
