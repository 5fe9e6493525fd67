//! Typed live feeds: the store's changefeeds, decoded into models per consumer.

use super::{codec, Model};
use crate::{ChangeKind, Changes, Feed, FeedOptions, FeedState, Result};
use futures_core::Stream;
use futures_util::StreamExt;
use serde_json::Value;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

/// One typed change: the model before and after a write, as the query sees it.
///
/// `old` is `None` for a row that entered the result (and for initial rows), `new` is `None`
/// for one that left it; both are `None` for state markers. [`Change::raw`] is the store's
/// item (its JSON form for a browser: [`crate::Change::to_json`]).
#[derive(Debug, Clone)]
pub struct Change<T> {
    /// The model before the write.
    pub old: Option<T>,
    /// The model after the write.
    pub new: Option<T>,
    /// What happened (add, remove, change, initial, state).
    pub kind: ChangeKind,
    /// The position of the commit behind the change, shared by every change of one atomic
    /// commit (see [`crate::Change::seq`]; `None` for initial rows and states).
    pub seq: Option<u64>,
    /// Top-N feeds with `include_offsets`: the old row's position.
    pub old_offset: Option<usize>,
    /// Top-N feeds with `include_offsets`: the new row's position.
    pub new_offset: Option<usize>,
    /// For state markers (`include_states`).
    pub state: Option<FeedState>,
    raw: crate::Change,
}

impl<T: Model> Change<T> {
    /// The key of the row this change is about (its new version's, else its old one's),
    /// typed; `None` for a state marker.
    pub fn key(&self) -> Option<T::Key> {
        self.new.as_ref().or(self.old.as_ref()).and_then(Model::key)
    }
}

impl<T> Change<T> {
    /// The store's change item behind this one.
    pub fn raw(&self) -> &crate::Change {
        &self.raw
    }

    /// Where this change sits in the database's change order, to resume a feed after it
    /// ([`ModelChanges::resume_from`]); `None` for initial rows and states.
    pub fn cursor(&self) -> Option<crate::Cursor> {
        self.raw.cursor()
    }

    /// The item in RethinkDB's JSON form (`{"old_val": .., "new_val": ..}`).
    pub fn to_json(&self) -> Value {
        self.raw.to_json()
    }
}

/// A typed changefeed being set up: the options of the store's feeds, then `.await` it for
/// a [`ModelFeed`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use futures_util::StreamExt;
/// use remodel::model::{create_schema, Id};
/// use remodel::{ChangeKind, Database, Model};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Model, Serialize, Deserialize, Debug)]
/// struct Probe { id: Option<Id>, target: String }
///
/// let db = Database::temporary().await?;
/// create_schema(&db).await?;
/// let mut feed = Probe::changes(&db).include_states(true).await?;
/// assert_eq!(feed.next().await.unwrap()?.kind, ChangeKind::State);
/// Probe { id: None, target: "Mars".into() }.create(&db).await?;
/// let c = feed.next().await.unwrap()?;
/// assert_eq!((c.kind, c.new.unwrap().target.as_str()), (ChangeKind::Add, "Mars"));
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "a changefeed does nothing until it is awaited"]
pub struct ModelChanges<T> {
    inner: Result<Changes>,
    /// The part of each item that is the model (`"right"` of a join's pairs), if not all.
    part: Option<&'static str>,
    _t: PhantomData<fn() -> T>,
}

macro_rules! option {
    ($($(#[$doc:meta])* $name:ident($ty:ty)),*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.inner = self.inner.map(|c| c.$name(v));
            self
        }
    )*};
}

impl<T: Model> ModelChanges<T> {
    pub(crate) fn new(inner: Result<Changes>) -> Self {
        ModelChanges {
            inner,
            part: None,
            _t: PhantomData,
        }
    }

    /// A feed whose items hold the model in a field (`"right"` of a live join's pairs).
    pub(crate) fn part_of(inner: Result<Changes>, part: &'static str) -> Self {
        ModelChanges {
            inner,
            part: Some(part),
            _t: PhantomData,
        }
    }

    /// The untyped feed being set up (items as JSON, not decoded into `T`): what a layer that
    /// serves any model's feed (such as a web publication) holds.
    pub fn into_changes(self) -> Result<Changes> {
        self.inner
    }

    option! {
        /// First deliver the current result (as `initial` items).
        include_initial(bool),
        /// Deliver `initializing` / `ready` state items.
        include_states(bool),
        /// Show `type` in [`Change::to_json`].
        include_types(bool),
        /// Deliver offsets (top-N feeds only).
        include_offsets(bool),
        /// Merge changes that pile up while the consumer is not reading.
        squash(bool),
        /// Merge changes and hand them over in batches at most `seconds` apart.
        squash_window(f64),
        /// The feed's buffer size.
        queue_size(usize),
        /// Deliver the changes after this cursor, then go on live
        /// (see [`crate::Changes::resume_from`]).
        resume_from(crate::Cursor),
        /// Every option at once.
        options(FeedOptions)
    }
}

impl<T: Model> IntoFuture for ModelChanges<T> {
    type Output = Result<ModelFeed<T>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let feed = self.inner?.await?;
            Ok(ModelFeed {
                feed,
                part: self.part,
                _t: PhantomData,
            })
        })
    }
}

/// A typed live query: a `Stream` of [`Change<T>`] in commit order. Items are decoded when
/// this consumer pulls them (the store shares one undecoded item between all its feeds), so
/// many feeds on the same rows stay cheap. Error items are the store's
/// ([`crate::Error::FeedOverflow`], [`crate::Error::FeedAborted`]) or a
/// [`super::ModelError::Decode`] for a row that does not fit `T` (the feed goes on).
pub struct ModelFeed<T> {
    feed: Feed,
    part: Option<&'static str>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ModelFeed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFeed")
            .field("feed", &self.feed)
            .finish()
    }
}

impl<T: Model> ModelFeed<T> {
    /// The store's feed behind this one.
    pub fn into_raw(self) -> Feed {
        self.feed
    }
}

fn typed<T: Model>(raw: crate::Change, part: Option<&str>) -> Result<Change<T>> {
    let model = |v: Option<&Value>| -> Result<Option<T>> {
        match (v, part) {
            (None, _) => Ok(None),
            (Some(v), None) => codec::decode_ref::<T>(v).map(Some),
            (Some(v), Some(p)) => v.get(p).map(codec::decode_ref::<T>).transpose(),
        }
    };
    let old = model(raw.old_val())?;
    let new = model(raw.new_val())?;
    Ok(Change {
        old,
        new,
        kind: raw.kind(),
        seq: raw.seq(),
        old_offset: raw.old_offset(),
        new_offset: raw.new_offset(),
        state: raw.state(),
        raw,
    })
}

impl<T: Model> Stream for ModelFeed<T> {
    type Item = Result<Change<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.feed.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(c))) => Poll::Ready(Some(typed(c, self.part))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
