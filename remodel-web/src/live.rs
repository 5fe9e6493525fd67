//! [`Live`]: what a publication serves — a feed, and how its rows are keyed, filtered by rules,
//! shown and ordered.

use crate::Refusal;
use remodel::model::ModelChanges;
use remodel::{Change, Changes, Model, Value};
use std::borrow::Cow;
use std::sync::Arc;

type KeyFn = dyn Fn(&Value) -> Option<Value> + Send + Sync;
type RuleFn = dyn Fn(&Value) -> bool + Send + Sync;
type ViewFn = dyn Fn(Value) -> Value + Send + Sync;

/// Anything a publication may serve: a feed set up and not yet opened.
pub trait IntoChanges {
    /// The untyped feed.
    fn into_changes(self) -> remodel::Result<Changes>;
}

impl IntoChanges for Changes {
    fn into_changes(self) -> remodel::Result<Changes> {
        Ok(self)
    }
}

impl<T: Model> IntoChanges for ModelChanges<T> {
    fn into_changes(self) -> remodel::Result<Changes> {
        ModelChanges::into_changes(self)
    }
}

impl IntoChanges for remodel::Result<Changes> {
    fn into_changes(self) -> remodel::Result<Changes> {
        self
    }
}

/// Which way a field sorts a result on the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// A live result as a publication declares it: the feed it follows, and
///
/// - the **key** of each row (default its `id` field): the client holds one row per key;
/// - **rules**: rows for which a rule says no are not sent, in the initial result or later (a
///   row that stops passing leaves the client's result, one that starts passing enters it);
/// - a **view**: what of a row the client sees (drop the fields it may not);
/// - an **order** the client keeps the rows in;
/// - **guards**: feeds of what the publication's own decision depended on (the caller's
///   membership, a ship's captain). When one of them changes, the publication is asked again:
///   if it now refuses, the subscription ends with its refusal; otherwise the client gets the
///   result it now gives.
///
/// Rules and views run on every row the feed delivers, so they see the row and whatever the
/// publication captured (the caller's identity), never a copy read earlier.
///
/// ```
/// use remodel_web::Live;
/// # async fn f(db: remodel::Database, me: String) -> remodel::Result<()> {
/// let live = Live::new(db.table("logs").query().changes())
///     .rule(move |row| row["author"] == me.as_str())
///     .view(|mut row| {
///         row.as_object_mut().map(|o| o.remove("secret"));
///         row
///     })
///     .sort_by("at");
/// # Ok(()) }
/// ```
#[must_use = "a Live is what a publication returns"]
pub struct Live {
    /// Taken when the feed is opened (a followed result keeps only what it shows rows with).
    /// Boxed: a query is ~450 bytes, and every open subscription keeps its `Live`.
    pub(crate) changes: Option<Box<remodel::Result<Changes>>>,
    key: Key,
    rules: Vec<Arc<RuleFn>>,
    view: Option<Arc<ViewFn>>,
    pub(crate) order: Vec<(String, Direction)>,
    pub(crate) guards: Vec<remodel::Result<Changes>>,
    /// Set by [`Live::shared`] / [`Live::shared_by`]: what, with the publication and its
    /// parameters, tells one shared result from another.
    pub(crate) share: Option<Box<str>>,
}

impl Live {
    /// A live result following `changes` (a query's `.changes()`, a model's or relation's).
    /// Options set on it (squash) are kept; the server sets the queue size
    /// ([`crate::Limits::feed_queue`]), the initial rows and
    /// resume options itself.
    pub fn new(changes: impl IntoChanges) -> Self {
        Live {
            changes: Some(Box::new(changes.into_changes())),
            key: Key::Field("id".into()),
            rules: Vec::new(),
            view: None,
            order: Vec::new(),
            guards: Vec::new(),
            share: None,
        }
    }

    /// Keys rows by `field` instead of `id` (a grouped aggregate's `group`, say).
    pub fn key(mut self, field: &str) -> Self {
        self.key = Key::Field(field.into());
        self
    }

    /// Keys rows by what `f` makes of them (a join's pair of keys, say); `None` is a row the
    /// publication cannot key, which ends the subscription with [`crate::ErrorCode::Internal`].
    pub fn key_with(mut self, f: impl Fn(&Value) -> Option<Value> + Send + Sync + 'static) -> Self {
        self.key = Key::With(Arc::new(f));
        self
    }

    /// Shows only rows for which `f` is true (all rules must pass).
    pub fn rule(mut self, f: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Self {
        self.rules.push(Arc::new(f));
        self
    }

    /// Shows `f(row)` instead of the row (after the rules, which see the whole row). A view
    /// that returns `null` hides the row, as a rule does.
    pub fn view(mut self, f: impl Fn(Value) -> Value + Send + Sync + 'static) -> Self {
        self.view = Some(Arc::new(f));
        self
    }

    /// The client keeps rows in ascending order of `field` (ties by key). Called again, the
    /// next field breaks ties of the ones before.
    pub fn sort_by(mut self, field: &str) -> Self {
        self.order.push((field.to_string(), Direction::Asc));
        self
    }

    /// [`Live::sort_by`], largest first.
    pub fn sort_by_desc(mut self, field: &str) -> Self {
        self.order.push((field.to_string(), Direction::Desc));
        self
    }

    /// Asks the publication again whenever `changes` delivers a change (see [`Live`]).
    pub fn guard(mut self, changes: impl IntoChanges) -> Self {
        self.guards.push(changes.into_changes());
        self
    }

    /// Declares the result the same for every caller with the same parameters: its feed,
    /// key, rules and view depend on nothing of who asks (the publication may still refuse
    /// a caller, and its guards are each subscription's own). Every subscription of the
    /// publication with these parameters then follows **one** feed: each change is read,
    /// checked and written as text once, and a new subscriber gets the result as it is held,
    /// without reading the database. A shared board watched by 10,000 pages costs one feed,
    /// not 10,000.
    ///
    /// Everything the rules and view use besides the row and the parameters goes in
    /// [`Live::shared_by`]'s part, including what the publication read from the database to
    /// build them: a result already running keeps the rules and view of the decision that
    /// started it (a subscription whose guard moved decides again, but joins the same
    /// result if its part is the same).
    ///
    /// A subscriber that falls too far behind the shared result (its client does not read)
    /// gets the whole result again once it reads, as an unshared one whose feed overflowed.
    ///
    /// ```
    /// use remodel_web::Live;
    /// # fn f(db: remodel::Database) {
    /// // Every page watching the board shares one feed.
    /// let board = Live::new(db.table("board").query().changes()).sort_by("rank").shared();
    /// # }
    /// ```
    pub fn shared(self) -> Self {
        self.shared_by("")
    }

    /// [`Live::shared`] for results that depend on what `part` says of the caller (a fleet,
    /// a role): subscriptions share a result only when their parameters and `part` are
    /// equal. Put in `part` everything of the caller's that the feed, rules or view use.
    ///
    /// ```
    /// use remodel_web::Live;
    /// # fn f(db: remodel::Database, fleet: String, captain: bool) {
    /// let ships = Live::new(db.table("ships").get_all([fleet.as_str()]).index("fleet").changes())
    ///     .view(move |mut ship| {
    ///         if !captain {
    ///             ship.as_object_mut().map(|o| o.remove("orders"));
    ///         }
    ///         ship
    ///     })
    ///     .shared_by(format!("{fleet}/{}", if captain { "captain" } else { "crew" }));
    /// # }
    /// ```
    pub fn shared_by(mut self, part: impl Into<String>) -> Self {
        self.share = Some(part.into().into_boxed_str());
        self
    }

    /// How it shows rows (key, rules, view, order), without its feed and guards.
    pub(crate) fn shown_copy(&self) -> Live {
        Live {
            changes: None,
            key: self.key.clone(),
            rules: self.rules.clone(),
            view: self.view.clone(),
            order: self.order.clone(),
            guards: Vec::new(),
            share: None,
        }
    }

    /// The key of `row`, or `None` when there is no row or a rule hides it. A key that is a
    /// field is borrowed (it is compared, and copied only when it goes in a frame).
    pub(crate) fn key_of<'r>(
        &self,
        row: Option<&'r Value>,
    ) -> Result<Option<Cow<'r, Value>>, Refusal> {
        let Some(row) = row.filter(|r| !r.is_null()) else {
            return Ok(None);
        };
        if !self.rules.iter().all(|rule| rule(row)) {
            return Ok(None);
        }
        // `null` is a key like any other (a group of rows whose field is null).
        let key = match &self.key {
            Key::Field(field) => row.get(&**field).map(Cow::Borrowed),
            Key::With(f) => f(row).map(Cow::Owned),
        }
        .map(canonical_key);
        let key = key.ok_or_else(|| {
            Refusal::new(
                crate::ErrorCode::Internal,
                "the publication's rows have no key (see Live::key)",
            )
        })?;
        Ok(Some(key))
    }

    /// The key and shown form of `change`'s new row, or `None` when a rule hides it. Without
    /// a view the row is not copied: the change (shared by every feed of its group) is kept
    /// and its row serialised from it.
    pub(crate) fn visible(&self, change: &Change) -> Result<Option<(Value, Shown)>, Refusal> {
        let Some(key) = self.key_of(change.new_val())? else {
            return Ok(None);
        };
        let key = key.into_owned();
        let shown = match (&self.view, change.new_val()) {
            // `null` is how a row leaves a client's result: a view that gives it hides the row.
            (Some(view), Some(row)) => match view(row.clone()) {
                Value::Null => return Ok(None),
                shown => Shown::Owned(shown),
            },
            _ => Shown::New(change.clone()),
        };
        Ok(Some((key, shown)))
    }
}

/// `key` (or a subscription's parameters) written so that values that are equal are equal
/// as text (object fields in order of
/// name, `-0.0` as `0.0`): a client tells keys apart by their JSON text, and a row whose key
/// object comes with its fields in another order is the same row.
pub(crate) fn canonical_key(key: Cow<'_, Value>) -> Cow<'_, Value> {
    fn needs(v: &Value) -> bool {
        match v {
            // Fields out of order, or a value inside that needs it.
            Value::Object(o) => !o.keys().is_sorted() || o.values().any(needs),
            Value::Array(a) => a.iter().any(needs),
            Value::Number(n) => n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()),
            _ => false,
        }
    }
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let mut fields: Vec<_> = o.iter().collect();
                fields.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k.clone(), canonical(v)))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            Value::Number(n) if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) => {
                serde_json::json!(0.0)
            }
            v => v.clone(),
        }
    }
    match needs(&key) {
        true => Cow::Owned(canonical(&key)),
        false => key,
    }
}

/// How a result's rows are keyed.
#[derive(Clone)]
enum Key {
    /// By a field of the row.
    Field(Box<str>),
    /// By what a function makes of the row.
    With(Arc<KeyFn>),
}

/// A row as the client is shown it.
#[derive(Debug)]
pub(crate) enum Shown {
    /// The new row of a change, as it is.
    New(Change),
    /// What the publication's view made of it.
    Owned(Value),
}

impl serde::Serialize for Shown {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shown::New(change) => change.new_val().serialize(s),
            Shown::Owned(v) => v.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_equal_as_values_are_equal_as_text() {
        let a: Value = serde_json::from_str(r#"{"a": 1, "b": [{"x": -0.0, "y": 2}]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b": [{"y": 2, "x": 0.0}], "a": 1}"#).unwrap();
        assert_eq!(a, b);
        let text = |v: &Value| serde_json::to_string(&canonical_key(Cow::Borrowed(v))).unwrap();
        assert_eq!(text(&a), text(&b));
        let one = serde_json::json!(1);
        assert!(matches!(
            canonical_key(Cow::Borrowed(&one)),
            Cow::Borrowed(_)
        ));
        assert_ne!(text(&one), text(&serde_json::json!("1")));
    }
}
