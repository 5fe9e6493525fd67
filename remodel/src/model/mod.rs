//! The model layer (ODM): plain serde structs become models with `#[derive(Model)]`, with
//! their tables, indexes, relations, typed field names and live subscriptions.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use remodel::model::{create_schema, Id};
//! use remodel::{Database, Model};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Model, Serialize, Deserialize, Clone, Debug)]
//! #[remodel(has_many(Crewmember))]
//! struct Starship { id: Option<Id>, name: String }
//!
//! #[derive(Model, Serialize, Deserialize, Clone, Debug)]
//! #[remodel(belongs_to(Starship))]
//! struct Crewmember {
//!     id: Option<Id>,
//!     name: String,
//!     #[remodel(index)]
//!     species: String,
//!     starship_id: Option<Id>,
//! }
//!
//! let db = Database::temporary().await?;
//! create_schema(&db).await?; // every table and index of the program's models
//! let voyager = Starship { id: None, name: "Voyager".into() }.create(&db).await?;
//! voyager.crewmembers(&db).create(Crewmember {
//!     id: None, name: "Tuvok".into(), species: "vulcan".into(), starship_id: None,
//! }).await?;
//! let f = Crewmember::fields();
//! let vulcans = voyager.crewmembers(&db).filter(f.species.eq("vulcan")).run().await?;
//! assert_eq!(vulcans[0].name, "Tuvok");
//! assert_eq!(vulcans[0].starship(&db).await?.unwrap().name, "Voyager");
//! # Ok::<(), remodel::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## Attributes of `#[derive(Model)]`
//!
//! | where | attribute | meaning |
//! |---|---|---|
//! | struct | `table = "name"` | the table (default: snake_case plural, `Person` → `people`, `FavoriteCub` → `favorite_cubs`) |
//! | struct | `has_many(T, accessor = "..", foreign_key = "..", on_delete = "..")` | `T` rows hold this model's key in `foreign_key` (default `<this type>_id`, e.g. `favorite_cub_id`) |
//! | struct | `has_one(T, ...)` | the same, one child |
//! | struct | `belongs_to(T, accessor = "..", foreign_key = "..")` | this model's field `foreign_key` (default `<T>_id`) holds the owner's key |
//! | struct | `has_and_belongs_to_many(T, accessor, foreign_key, association_foreign_key, join_table)` | many-to-many through one join table shared by both sides (default name: the two tables sorted, joined by `_`) |
//! | struct | `index(name = "..", fields(a, b))` | a compound index |
//! | struct | `callbacks` | the hooks call the model's [`Callbacks`] impl |
//! | field | `primary_key` | the primary key (default: the field `id`) |
//! | field | `index`, `index(multi)`, `index(name = "..", path = "nested.path")` | a secondary index (named after the field unless `name` is given; [`Field::index`] finds it either way) |
//!
//! `on_delete` is `"nullify"` (default), `"cascade"` or `"restrict"`. Foreign keys are
//! indexed for you, and named by the field's Rust name (a belongs_to's also by its stored
//! name). serde's `rename` on a field is followed (in both its forms; not a name with `.`),
//! `skip` makes a field unstored, `flatten` and `rename_all` are refused; a field with
//! `with` / `serialize_with` is stored as its function writes it, so it
//! cannot be a key or indexed and has no typed field name (see the derive's docs). Every
//! mistake is a compile error at the attribute that says what to write instead.
//!
//! Two models share a table only when both name it with `table = ".."` (two versions of a
//! model); two whose default names meet are refused by [`create_schema`].
//!
//! ## What a model can do
//!
//! - [`Model`]: the trait the derive implements: CRUD (`create`, `save`, `update`,
//!   `delete`, `get`, `find`, `filter`, `all`, `count`, `get_or_create`), the model's
//!   [`Table`] for raw queries, and live feeds (`changes`, `watch`).
//! - [`create_schema`] / [`SchemaSet`]: tables and indexes, idempotently.
//! - Relations: [`HasMany`], [`HasOne`], [`BelongsTo`], [`ManyToMany`], and batched loading
//!   (`load_<accessor>` methods, see [below](#batched-loading)).
//! - [`ModelQuery`]: typed queries; [`Field`]: typed field names; [`Change`]: typed changes.
//! - [`Callbacks`]: hooks around saving, deleting and loading.
//!
//! ## Batched loading
//!
//! A relation for many rows at once, in a constant number of store queries (one, or two for
//! many-to-many), never one per row. The derive generates `load_<accessor>(db, rows)` for every relation, returning the related
//! models aligned with `rows`:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use remodel::model::{create_schema, Id};
//! use remodel::{Database, Model};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Model, Serialize, Deserialize, Debug)]
//! struct Ship { id: Option<Id>, name: String }
//!
//! #[derive(Model, Serialize, Deserialize, Debug)]
//! #[remodel(belongs_to(Ship))]
//! struct Captain { id: Option<Id>, name: String, ship_id: Option<Id> }
//!
//! let db = Database::temporary().await?;
//! create_schema(&db).await?;
//! let defiant = Ship { id: None, name: "Defiant".into() }.create(&db).await?;
//! let mut sisko = Captain { id: None, name: "Sisko".into(), ship_id: None };
//! sisko.set_ship(Some(&defiant))?;
//! sisko.create(&db).await?;
//!
//! let captains = Captain::all(&db).await?;
//! let ships = Captain::load_ship(&db, &captains).await?; // one query for all ships
//! assert_eq!(ships[0].as_ref().unwrap().name, "Defiant");
//! # Ok::<(), remodel::Error>(())
//! # }).unwrap();
//! ```

mod codec;
mod error;
mod feed;
mod field;
mod finite;
mod load;
mod query;
mod relation;
mod schema;
mod transaction;

pub use error::ModelError;
pub use feed::{Change, ModelChanges, ModelFeed};
pub use field::{Field, FieldValue, Numeric, Set};
pub use query::{ModelGroups, ModelQuery};
pub use relation::{BelongsTo, HasMany, HasOne, ManyToMany};
pub use schema::{
    create_schema, drop_schema, prune_indexes, registered, IndexDef, IndexKind, OnDelete,
    Registration, RelationDef, RelationKind, Schema, SchemaSet, TablePlan,
};
pub use transaction::Transaction;

use crate::{Database, Error, Predicate, Result, Table};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::future::Future;

/// A primary key made by the store: a UUID string, generated when a model without one is
/// created. Any serde type can be a key field; `Option<Id>` is the usual one.
///
/// ```
/// use remodel::model::Id;
/// let id = Id::from("voyager");
/// assert_eq!(id.as_str(), "voyager");
/// assert_eq!(serde_json::to_value(&id).unwrap(), "voyager");
/// assert_ne!(Id::generate(), Id::generate());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id(String);

impl Id {
    /// A new random key (a UUID v4), the kind the store generates.
    pub fn generate() -> Self {
        Id(uuid::Uuid::new_v4().to_string())
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id(s.to_string())
    }
}

impl From<String> for Id {
    fn from(s: String) -> Self {
        Id(s)
    }
}

impl From<Id> for Value {
    fn from(id: Id) -> Self {
        Value::String(id.0)
    }
}

impl From<&Id> for Value {
    fn from(id: &Id) -> Self {
        Value::String(id.0.clone())
    }
}

/// What [`Model::get`] and the relation handles accept as a key of type `K`: a `K`, a `&K`,
/// and for `String` and [`Id`] keys a `&str`. Anything else is a compile error: a string given for a
/// `u64` key, an `Id` given for another model's `u64` key.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::model::{create_schema, Id};
/// use remodel::{Database, Model};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Model, Serialize, Deserialize, Debug, PartialEq)]
/// struct Deck { id: u64, name: String }
///
/// let db = Database::temporary().await?;
/// create_schema(&db).await?;
/// Deck { id: 7, name: "Ten Forward".into() }.create(&db).await?;
/// assert_eq!(Deck::get(&db, 7).await?.unwrap().name, "Ten Forward");
/// assert_eq!(Deck::get(&db, &8).await?, None);
/// // Deck::get(&db, "7") does not compile: a Deck's key is a u64.
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a key of this model: its key type is `{K}`",
    label = "expected a `{K}` (or a `&{K}`)",
    note = "a model's key type is its primary-key field's type (`T` for `Option<T>`)"
)]
pub trait IntoKey<K> {
    /// The key.
    fn into_key(self) -> K;
}

impl<K> IntoKey<K> for K {
    fn into_key(self) -> K {
        self
    }
}

impl<K: Clone> IntoKey<K> for &K {
    fn into_key(self) -> K {
        self.clone()
    }
}

impl IntoKey<String> for &str {
    fn into_key(self) -> String {
        self.to_string()
    }
}

impl IntoKey<Id> for &str {
    fn into_key(self) -> Id {
        Id::from(self)
    }
}

/// Hooks around a model's life. Implement it and add `#[remodel(callbacks)]` to the struct;
/// every method has a no-op default.
///
/// Hooks run in the calling task, never while the store's commit lock is held. The `before_`
/// hooks are async and get the database, so they can read other models (in a
/// [`Transaction`], they see what is committed, not what the transaction staged); they take
/// `&mut self` and may change the model (what they leave is what is written). A `before_`
/// hook that returns an error aborts the operation: nothing is written. `after_load` runs on
/// every model decoded from the store (reads, relation loads, feed items), after all its
/// fields are set.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::model::{create_schema, Callbacks, Id, ModelError};
/// use remodel::{Database, Model};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Model, Serialize, Deserialize, Debug)]
/// #[remodel(callbacks)]
/// struct Note { id: Option<Id>, text: String }
///
/// impl Callbacks for Note {
///     async fn before_save(&mut self, db: &Database) -> remodel::Result<()> {
///         if self.text.is_empty() {
///             return Err(ModelError::Rejected("a note needs text".into()).into());
///         }
///         if Note::count(db).await? >= 100 {
///             return Err(ModelError::Rejected("the notebook is full".into()).into());
///         }
///         self.text = self.text.trim().to_string();
///         Ok(())
///     }
/// }
///
/// let db = Database::temporary().await?;
/// create_schema(&db).await?;
/// assert!(Note { id: None, text: String::new() }.create(&db).await.is_err());
/// assert_eq!(Note::count(&db).await?, 0);
/// let n = Note { id: None, text: " hi ".into() }.create(&db).await?;
/// assert_eq!(n.text, "hi");
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
pub trait Callbacks: Send {
    /// Before `create`, `save`, `update` and relation writes of this model. May change the
    /// model (what it leaves is what is written) and read other models; an error aborts
    /// the write.
    fn before_save(&mut self, db: &Database) -> impl Future<Output = Result<()>> + Send {
        let _ = db;
        async { Ok(()) }
    }
    /// After the model was written.
    fn after_save(&self) {}
    /// Before `delete` of a model whose row is there; an error aborts it (nothing is
    /// deleted, no relation is touched).
    fn before_delete(&mut self, db: &Database) -> impl Future<Output = Result<()>> + Send {
        let _ = db;
        async { Ok(()) }
    }
    /// After the model and its relation effects were deleted.
    fn after_delete(&self) {}
    /// After the model was decoded from the store, with every field set.
    fn after_load(&mut self) {}
}

/// A model: a serde struct stored as one document of its table. Implemented by
/// `#[derive(Model)]` (see the [module docs](self)); the provided methods are the ODM.
///
/// Every method that reads or writes takes the [`Database`]; the futures they return own
/// what they need and are `Send`, so they can run in spawned tasks and web handlers.
///
/// **Every write is decided when it commits, against the row as it is then**, never against
/// a copy read earlier: `update` applies the fields it changed to the stored row (a row
/// deleted meanwhile is [`ModelError::NotFound`], not brought back); `save` writes the
/// struct's fields and keeps the stored fields the struct does not know **as they are at
/// commit** (another program's or a newer version's fields survive, even when written
/// after the model was read); `delete` selects the rows its relations reach in its own
/// commit.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a model",
    label = "not a model",
    note = "add `#[derive(remodel::Model)]` to `{Self}`, or relate to a type that has it"
)]
pub trait Model: Serialize + DeserializeOwned + Send + Sync + Sized + 'static {
    /// The generated struct of typed field names (`<Name>Fields`).
    type Fields: Copy;

    /// The model's table, key, indexes and relations.
    fn schema() -> &'static Schema;

    /// The typed field names, as a constant (what [`Model::fields`] returns). The derive
    /// reads a related model's stored field names from it when it builds a schema.
    const FIELDS: Self::Fields;

    /// The typed field names, for predicates: `Crewmember::fields().species.eq("human")`.
    /// Every stored field has one, except a field stored by a serde `with` or
    /// `serialize_with` function (see the derive's docs).
    fn fields() -> Self::Fields {
        Self::FIELDS
    }

    /// The model's key type: the primary-key field's own type (`u64`, `String`, a
    /// newtype), or `T` for an `Option<T>` field ([`Id`] for generated keys). [`Model::get`],
    /// relation handles and change items take and give keys of this type.
    type Key: Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static;

    /// The primary key, if the model has one (a model that was never saved, or was
    /// deleted, has none when its key field is an `Option`).
    fn key(&self) -> Option<Self::Key>;

    /// Sets the primary key (as the store returned it).
    #[doc(hidden)]
    fn set_key(&mut self, key: Value) -> Result<()>;

    /// Empties an `Option` key field (after a delete: the model no longer looks saved); a
    /// key field that is not an `Option` keeps its value.
    #[doc(hidden)]
    fn clear_key(&mut self);

    /// The primary key as the store holds it (JSON).
    fn key_value(&self) -> Option<Value> {
        self.key().and_then(|k| __private::key_of(&k))
    }

    /// A field's value by its stored name (`None` for an unknown name).
    fn field_value(&self, name: &str) -> Option<Value>;

    /// Sets a field by its stored name; `Ok(false)` for an unknown name.
    fn set_field_value(&mut self, name: &str, value: Value) -> Result<bool>;

    /// See [`Callbacks::before_save`] (generated: delegates with `#[remodel(callbacks)]`).
    fn before_save(&mut self, db: &Database) -> impl Future<Output = Result<()>> + Send {
        let _ = db;
        async { Ok(()) }
    }
    /// See [`Callbacks::after_save`].
    fn after_save(&self) {}
    /// See [`Callbacks::before_delete`].
    fn before_delete(&mut self, db: &Database) -> impl Future<Output = Result<()>> + Send {
        let _ = db;
        async { Ok(()) }
    }
    /// See [`Callbacks::after_delete`].
    fn after_delete(&self) {}
    /// See [`Callbacks::after_load`].
    fn after_load(&mut self) {}

    /// The model's table, for raw queries (`group`, `eq_join`, `pluck`, ...): the
    /// counterpart of Remodel's ReQL passthrough. Read rows back as models with
    /// [`Model::from_json`].
    fn table(db: &Database) -> Table {
        db.table(Self::schema().table)
    }

    /// Every row, as a typed query to refine (`filter`, `order_by`, `limit`, `changes`).
    fn query(db: &Database) -> ModelQuery<Self> {
        ModelQuery::table(db)
    }

    /// The model with this key (of the model's key type: `Id`, `&Id`, a `u64`, a `&str`
    /// for a `String` key); `Ok(None)` when there is none.
    fn get(
        db: &Database,
        key: impl IntoKey<Self::Key>,
    ) -> impl Future<Output = Result<Option<Self>>> + Send {
        let table = Self::table(db);
        let key = codec::key_to_value::<Self>(&key.into_key());
        async move { codec::get_model::<Self>(&table, &key?) }
    }

    /// The models with these keys, in the order of the keys (missing ones are left out).
    /// No keys, no models.
    fn get_many<K: IntoKey<Self::Key>>(
        db: &Database,
        keys: impl IntoIterator<Item = K>,
    ) -> impl Future<Output = Result<Vec<Self>>> + Send {
        let keys: Result<Vec<Value>> = keys
            .into_iter()
            .map(|k| codec::key_to_value::<Self>(&k.into_key()))
            .collect();
        let table = Self::table(db);
        async move {
            let keys = keys?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            codec::count_query();
            // Read as stored (in key order, see `Table::get_raw_many`) and decoded straight
            // into the models: no JSON `Value` in between.
            let keys: Vec<&Value> = keys.iter().collect();
            table
                .get_raw_many(&keys)
                .await?
                .into_iter()
                .flatten()
                .map(|doc| codec::decode_bytes::<Self>(&doc))
                .collect()
        }
    }

    /// The models with these keys, as a query to refine (`filter`, `count`, `update`,
    /// `delete`, ...): `Ship::with_keys(&db, &keys).filter(f.active.eq(true))`.
    fn with_keys<K: IntoKey<Self::Key>>(
        db: &Database,
        keys: impl IntoIterator<Item = K>,
    ) -> ModelQuery<Self> {
        let keys = keys
            .into_iter()
            .map(|k| codec::key_to_value::<Self>(&k.into_key()))
            .collect();
        ModelQuery::by_keys(db, keys)
    }

    /// The first model for which `predicate` holds (through an index when the predicate
    /// has an equality on an indexed field).
    fn find(
        db: &Database,
        predicate: Predicate,
    ) -> impl Future<Output = Result<Option<Self>>> + Send {
        let q = ModelQuery::<Self>::table(db).filter(predicate);
        async move { q.first().await }
    }

    /// The models for which `predicate` holds, as a query (see [`ModelQuery`]).
    fn filter(db: &Database, predicate: Predicate) -> ModelQuery<Self> {
        ModelQuery::table(db).filter(predicate)
    }

    /// Every model of the table.
    fn all(db: &Database) -> impl Future<Output = Result<Vec<Self>>> + Send {
        let q = ModelQuery::<Self>::table(db);
        async move { q.run().await }
    }

    /// The number of models in the table.
    fn count(db: &Database) -> impl Future<Output = Result<u64>> + Send {
        let table = Self::table(db);
        async move {
            codec::count_query();
            table.count().await
        }
    }

    /// The first model matching `predicate`, or a new one made by `make` and created, all
    /// in one commit: two concurrent calls create one row. Returns the model and whether it
    /// was created. The new model should match `predicate`.
    fn get_or_create(
        db: &Database,
        predicate: Predicate,
        make: impl FnOnce() -> Self + Send,
    ) -> impl Future<Output = Result<(Self, bool)>> + Send {
        let db = db.clone();
        async move {
            let q = ModelQuery::<Self>::table(&db).filter(predicate);
            if let Some(found) = q.first().await? {
                return Ok((found, false));
            }
            let mut model = make();
            model.before_save(&db).await?;
            codec::ensure_key(&mut model)?;
            let doc = codec::to_doc(&model)?;
            let schema = Self::schema();
            let raw = q.raw()?;
            let written = db
                .batch()
                .require_empty(&raw, format!("a matching {} exists", schema.model))
                .insert(schema.table, doc)
                .await;
            created_or_found(written.map(drop), model, &q, schema.table).await
        }
    }

    /// Watches the whole table: typed changes (see [`ModelChanges`] for the options).
    fn changes(db: &Database) -> ModelChanges<Self> {
        ModelChanges::new(Ok(Self::table(db).changes()))
    }

    /// Inserts the model and returns it saved, with its key (generated when it had none:
    /// an [`Id`], so a key field that cannot hold one, like an `Option<u64>`, must be given
    /// its key, or the create is [`ModelError::Invalid`] and nothing is written).
    /// A model whose key exists already is an error ([`Error::KeyConflict`]).
    fn create(mut self, db: &Database) -> impl Future<Output = Result<Self>> + Send {
        let table = Self::table(db);
        let db = db.clone();
        async move {
            self.before_save(&db).await?;
            codec::ensure_key(&mut self)?;
            let doc = codec::to_doc(&self)?;
            table.insert(doc).await?.check()?;
            self.after_save();
            Ok(self)
        }
    }

    /// Inserts the model, or writes it over the stored one (inserting it again if it is gone:
    /// `save` is an upsert). Stored fields the struct does not know are kept as they are when
    /// the write commits (see the [trait docs](Model)).
    fn save<'a>(&'a mut self, db: &Database) -> impl Future<Output = Result<()>> + Send + 'a {
        let table = Self::table(db);
        let db = db.clone();
        async move {
            self.before_save(&db).await?;
            match self.key_value() {
                None => {
                    codec::ensure_key(self)?;
                    let doc = match codec::to_doc(self) {
                        Ok(doc) => doc,
                        Err(e) => {
                            // Nothing was sent: the model stays unsaved, as it was.
                            self.clear_key();
                            return Err(e);
                        }
                    };
                    let stored = table.insert(doc).await.and_then(|r| r.check());
                    match stored {
                        Ok(_) => {}
                        // A storage failure may come after the commit was sent (a connection
                        // lost mid-commit): the row may be stored, so the key stays, and a
                        // retried save writes that row again rather than a second one.
                        Err(e @ Error::Storage { .. }) => return Err(e),
                        // Refused: nothing stored, the model stays unsaved.
                        Err(e) => {
                            self.clear_key();
                            return Err(e);
                        }
                    }
                }
                Some(_) => {
                    let doc = codec::to_doc(self)?;
                    let schema = Self::schema();
                    table
                        .insert(doc)
                        .conflict_with(move |stored, new| {
                            Ok(codec::with_unknown(schema, new, stored))
                        })
                        .await?
                        .check()?;
                }
            }
            self.after_save();
            Ok(())
        }
    }

    /// Changes some fields with `change` and writes only the fields that changed (merged
    /// into the stored document). The model must be saved, and still stored
    /// ([`ModelError::NotFound`] otherwise: an update does not bring a deleted row back).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use remodel::model::{create_schema, Id};
    /// # use remodel::{Database, Model};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Model, Serialize, Deserialize, Debug)]
    /// struct Officer { id: Option<Id>, name: String, rank: String }
    /// # let db = Database::temporary().await?;
    /// # create_schema(&db).await?;
    /// let mut troi = Officer { id: None, name: "Troi".into(), rank: "commander".into() }
    ///     .create(&db).await?;
    /// troi.update(&db, |o| o.rank = "captain".into()).await?;
    /// let stored = Officer::get(&db, troi.id.clone().unwrap()).await?.unwrap();
    /// assert_eq!(stored.rank, "captain");
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    fn update<'a>(
        &'a mut self,
        db: &Database,
        change: impl FnOnce(&mut Self) + Send + 'a,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let table = Self::table(db);
        let db = db.clone();
        async move {
            let key = self
                .key_value()
                .ok_or_else(|| ModelError::not_saved(Self::schema(), "update"))?;
            let before = codec::to_doc(self)?;
            change(self);
            self.before_save(&db).await?;
            let after = codec::to_doc(self)?;
            let changes = codec::FieldChanges::between(Self::schema(), &before, &after);
            // Applied to the row as it is when the write commits: fields this update did not
            // change stay as they are then, and a row deleted meanwhile stays deleted. Written
            // even when no field changed: fields the struct defaults and the row lacks are
            // filled in (as `save` stores them), and a deleted row is NotFound.
            let written = table
                .get(key.clone())
                .replace_with(move |stored| Ok(changes.apply(stored)))
                .await?
                .check()?;
            if written.skipped > 0 {
                return Err(ModelError::missing(Self::schema(), key).into());
            }
            self.after_save();
            Ok(())
        }
    }

    /// Deletes the model and, in the same commit, applies every relation's `on_delete`
    /// (nullify children's keys, cascade, or refuse with [`ModelError::Restricted`] for
    /// restrict, naming the relation and how many children block it) and removes its join
    /// rows. The rows a relation reaches are selected in that commit, so a child written just
    /// before it is not left behind. A model whose row is not stored (deleted already) is
    /// [`ModelError::NotFound`], and no hook runs. Once deleted, the model's key is cleared
    /// (when its key field is an `Option`): it no longer looks saved, and saving it again
    /// creates a new row.
    fn delete<'a>(&'a mut self, db: &Database) -> impl Future<Output = Result<()>> + Send + 'a {
        let db = db.clone();
        async move {
            let schema = Self::schema();
            let key = self
                .key_value()
                .ok_or_else(|| ModelError::not_saved(schema, "delete"))?;
            let table = Self::table(&db);
            codec::count_query();
            if table.get(key.clone()).await?.is_none() {
                // Absent when read, but only a commit decides: a write of the row may still be
                // on its way (one whose caller stopped waiting lands before any later write,
                // not before a read). A check alone writes nothing.
                db.batch()
                    .require_exists(schema.table, key.clone())
                    .await
                    .map_err(|e| relation::missing_as_model(e, &[schema]))?
                    .check()?;
            }
            self.before_delete(&db).await?;
            db.batch()
                .require_exists(schema.table, key.clone())
                .delete_cascading(schema.table, key, relation::references())
                .await
                .map_err(|e| relation::missing_as_model(e, &[schema]))?
                .check()?;
            self.clear_key();
            self.after_delete();
            Ok(())
        }
    }

    /// Watches this saved model's own row (a point feed). Errors when it is not saved.
    fn watch(&self, db: &Database) -> ModelChanges<Self> {
        let changes = match self.key_value() {
            Some(k) => Ok(Self::table(db).get(k).changes()),
            None => Err(ModelError::not_saved(Self::schema(), "watch").into()),
        };
        ModelChanges::new(changes)
    }

    /// Decodes a stored document (for example a row of a raw query). A document that does
    /// not fit gives [`ModelError::Decode`] naming the table, the key and the field.
    fn from_json(doc: Value) -> Result<Self> {
        codec::decode(doc)
    }

    /// The document the model is stored as.
    fn to_json(&self) -> Result<Value> {
        codec::to_doc(self)
    }
}

/// The end of a `get_or_create`: the model created (its `after_save` runs), or, when the
/// commit found a matching row after all (its precondition failed), that row.
pub(crate) async fn created_or_found<T: Model>(
    written: Result<()>,
    created: T,
    q: &ModelQuery<T>,
    what: &str,
) -> Result<(T, bool)> {
    match written {
        Ok(()) => {
            created.after_save();
            Ok((created, true))
        }
        Err(Error::Precondition(_)) => match q.first().await? {
            Some(found) => Ok((found, false)),
            None => Err(ModelError::Invalid(format!(
                "get_or_create on `{what}`: a matching row existed and is gone again"
            ))
            .into()),
        },
        Err(e) => Err(e),
    }
}

/// Support for generated code; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use super::codec::store_queries;
    pub use inventory;

    /// The batched loaders the generated `load_<accessor>` methods call.
    pub mod load {
        pub use super::super::load::{belongs_to, has_many, has_one, many_to_many};
    }

    use super::{Model, ModelError, RelationDef};
    use crate::Result;
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::Value;

    /// A field's value as JSON (`None` when it cannot be represented).
    pub fn to_value<T: Serialize>(v: &T) -> Option<Value> {
        serde_json::to_value(v).ok()
    }

    /// A primary key field as a key: `None` when it is null (`Option::None`).
    pub fn key_of<T: Serialize>(v: &T) -> Option<Value> {
        match serde_json::to_value(v) {
            Ok(Value::Null) | Err(_) => None,
            Ok(k) => Some(k),
        }
    }

    /// A field from a JSON value, with an error naming the table and field.
    pub fn field_from_value<F: DeserializeOwned>(table: &str, field: &str, v: Value) -> Result<F> {
        let key = v.clone();
        serde_json::from_value(v).map_err(|e| {
            ModelError::Decode {
                table: table.to_string(),
                key: Box::new(key),
                field: field.to_string(),
                reason: e.to_string(),
            }
            .into()
        })
    }

    /// The value of a belongs_to foreign key pointing at `owner` (or at nothing).
    pub fn owner_key<F: DeserializeOwned, P: Model>(
        rel: &'static RelationDef,
        owner: Option<&P>,
    ) -> Result<F> {
        let v = match owner {
            None => Value::Null,
            Some(p) => p
                .key_value()
                .ok_or_else(|| ModelError::not_saved(P::schema(), rel.accessor))?,
        };
        field_from_value(P::schema().table, rel.foreign_key, v)
    }
}
