//! Transactions across models: [`Transaction`].

use super::relation::{self, HasMany, ManyToMany};
use super::{codec, Model, ModelError, Schema};
use crate::{Batch, Database, Result, WriteResult};
use serde_json::Value;

/// An `after_` hook to run once the transaction committed.
type AfterHook = Box<dyn FnOnce() + Send>;

/// Transactions across models: creates, saves, updates, deletes and relation writes of
/// several models (and tables) that commit together, or not at all.
///
/// A [`Transaction`] stages each write as it is called (the model's `before_` hook runs then,
/// seeing the database as committed, and its error aborts: drop the transaction and nothing
/// is written) and commits them as one
/// atomic [`crate::Batch`] in [`Transaction::commit`]. Every staged write is decided at
/// commit, against the rows as they are then, exactly as the single-model methods decide
/// it: an update applies the fields it changed to the stored row (a row deleted meanwhile
/// fails the whole transaction with [`ModelError::NotFound`]); a save keeps the stored
/// fields the struct does not know; a delete selects the rows its relations reach in the
/// commit. The `after_` hooks run once the commit succeeded.
///
/// Keys are made when a model is staged (`create` fills in a generated [`super::Id`]), so a
/// parent created in a transaction can be referred to by the children created with it:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::model::{create_schema, Id, Transaction};
/// use remodel::{Database, Model};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Model, Serialize, Deserialize, Clone, Debug)]
/// #[remodel(has_many(Crewmember))]
/// struct Starship { id: Option<Id>, name: String }
///
/// #[derive(Model, Serialize, Deserialize, Clone, Debug)]
/// #[remodel(belongs_to(Starship))]
/// struct Crewmember { id: Option<Id>, name: String, starship_id: Option<Id> }
///
/// let db = Database::temporary().await?;
/// create_schema(&db).await?;
///
/// // A ship and its crew, in one commit.
/// let mut tx = Transaction::new(&db);
/// let ship = tx.create(Starship { id: None, name: "Defiant".into() }).await?;
/// for name in ["Sisko", "Worf"] {
///     tx.create(Crewmember { id: None, name: name.into(), starship_id: ship.id.clone() }).await?;
/// }
/// tx.commit().await?;
/// assert_eq!(ship.crewmembers(&db).count().await?, 2);
///
/// // All or nothing: a transaction that fails at commit writes nothing.
/// let mut stale = ship.clone();
/// ship.clone().delete(&db).await?;
/// let mut tx = Transaction::new(&db);
/// tx.create(Crewmember { id: None, name: "Dax".into(), starship_id: None }).await?;
/// tx.update(&mut stale, |s| s.name = "Defiant II".into()).await?;
/// assert!(tx.commit().await.is_err()); // the ship is gone: NotFound
/// assert_eq!(Crewmember::count(&db).await?, 2); // Sisko and Worf: Dax was not created
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
///
/// Build it with [`Transaction::new`], stage writes, then [`Transaction::commit`]; dropping it
/// uncommitted writes nothing.
#[must_use = "a transaction writes nothing until it is committed"]
pub struct Transaction {
    db: Database,
    batch: Option<Batch>,
    /// The models staged, to name them in errors.
    schemas: Vec<&'static Schema>,
    /// The rows this transaction creates or saves, `(table, key as text)`: a relation write
    /// to them does not require them to exist before the commit.
    /// Shared with the relation writes staged meanwhile (copied only when written after).
    created: std::sync::Arc<std::collections::HashSet<(&'static str, String)>>,
    after: Vec<AfterHook>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field(
                "models",
                &self.schemas.iter().map(|s| s.model).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// An empty transaction on `db`.
    pub fn new(db: &Database) -> Self {
        Transaction {
            db: db.clone(),
            batch: Some(db.batch()),
            schemas: Vec::new(),
            created: Default::default(),
            after: Vec::new(),
        }
    }

    /// Appends a write. Whatever can fail (hooks, encoding) has run before: a write that
    /// fails to stage leaves the transaction as it was.
    fn stage(&mut self, schema: &'static Schema, append: impl FnOnce(Batch) -> Batch) {
        let batch = self.batch.take().unwrap_or_else(|| self.db.batch());
        self.batch = Some(append(batch));
        self.note(schema);
    }

    /// Names `schema` among the models whose missing rows are reported as theirs.
    fn note(&mut self, schema: &'static Schema) {
        if !self.schemas.iter().any(|s| std::ptr::eq(*s, schema)) {
            self.schemas.push(schema);
        }
    }

    /// Runs `T`'s `after_save` on the document as committed, when `T` has hooks.
    fn after_save<T: Model>(&mut self, doc: &Value) -> Result<()> {
        if T::schema().hooks {
            let model = codec::decode_ref::<T>(doc)?;
            self.after.push(Box::new(move || model.after_save()));
        }
        Ok(())
    }

    /// Stages the creation of `model` (its `before_save` runs now; a model without a key
    /// gets a generated one) and gives it back with its key. A taken key fails the commit
    /// with [`crate::Error::KeyConflict`].
    pub async fn create<T: Model>(&mut self, mut model: T) -> Result<T> {
        model.before_save(&self.db).await?;
        codec::ensure_key(&mut model)?;
        let doc = codec::to_doc(&model)?;
        self.after_save::<T>(&doc)?;
        let table = T::schema().table;
        if let Some(key) = model.key_value() {
            std::sync::Arc::make_mut(&mut self.created).insert((table, codec::key_text(&key)));
        }
        self.stage(T::schema(), |b| b.insert(table, doc));
        Ok(model)
    }

    /// Stages a save of `model`, as [`Model::save`] does: created when it has no key (one
    /// is generated now), else written with the stored fields it does not know kept as they
    /// are at commit (and created if its row is not there).
    pub async fn save<T: Model>(&mut self, model: &mut T) -> Result<()> {
        model.before_save(&self.db).await?;
        let existing = model.key_value().is_some();
        codec::ensure_key(model)?;
        let doc = codec::to_doc(model).and_then(|doc| self.after_save::<T>(&doc).map(|()| doc));
        let doc = match doc {
            Ok(doc) => doc,
            Err(e) => {
                // Nothing staged: a model that had no key stays without one.
                if !existing {
                    model.clear_key();
                }
                return Err(e);
            }
        };
        let schema = T::schema();
        if let Some(key) = model.key_value() {
            // Stored once this commits, whether inserted or written back.
            std::sync::Arc::make_mut(&mut self.created)
                .insert((schema.table, codec::key_text(&key)));
        }
        self.stage(schema, |b| {
            if existing {
                b.insert_resolving(schema.table, doc, move |stored, new| {
                    Ok(codec::with_unknown(schema, new, stored))
                })
            } else {
                b.insert(schema.table, doc)
            }
        });
        Ok(())
    }

    /// Stages an update, as [`Model::update`] does: `change` runs on the struct now, then
    /// its `before_save`, and the fields that changed are applied to the stored row at
    /// commit. A row missing at commit fails the transaction with
    /// [`ModelError::NotFound`].
    pub async fn update<T: Model>(
        &mut self,
        model: &mut T,
        change: impl FnOnce(&mut T),
    ) -> Result<()> {
        let schema = T::schema();
        let key = model
            .key_value()
            .ok_or_else(|| ModelError::not_saved(schema, "update"))?;
        let before = codec::to_doc(model)?;
        change(model);
        model.before_save(&self.db).await?;
        let after = codec::to_doc(model)?;
        self.after_save::<T>(&after)?;
        let changes = codec::FieldChanges::between(schema, &before, &after);
        self.stage(schema, |b| {
            b.require_exists(schema.table, key.clone()).replace_with(
                schema.table,
                key,
                move |stored| Ok(changes.apply(stored)),
            )
        });
        Ok(())
    }

    /// Stages the delete of `model` with its relations' `on_delete`, as [`Model::delete`]
    /// does (its `before_delete` runs now). A row missing at commit fails the transaction
    /// with [`ModelError::NotFound`]; a restricting relation with
    /// [`ModelError::Restricted`]. The model is consumed: once committed, it is gone.
    ///
    /// Its relations reach the rows as the writes staged before it leave them. A write
    /// staged after it is applied as written: an update or `require` of a row it deleted
    /// is `NotFound`, and a child saved with its key stores that key (references are
    /// required by `add` and `relate`, not by `save` and `create`).
    pub async fn delete<T: Model>(&mut self, mut model: T) -> Result<()> {
        let schema = T::schema();
        let key = model
            .key_value()
            .ok_or_else(|| ModelError::not_saved(schema, "delete"))?;
        model.before_delete(&self.db).await?;
        // Deleted, no longer one this transaction creates: a relation write staged after it
        // requires the row at commit (and is refused).
        let row = (schema.table, codec::key_text(&key));
        if self.created.contains(&row) {
            std::sync::Arc::make_mut(&mut self.created).remove(&row);
        }
        self.stage(schema, |b| {
            b.require_exists(schema.table, key.clone())
                .delete_cascading(schema.table, key, relation::references())
        });
        if schema.hooks {
            self.after.push(Box::new(move || model.after_delete()));
        }
        Ok(())
    }

    /// Stages a check of `model`'s row, made at commit: the transaction commits only if the
    /// row is still stored and `holds` is true of it as it is then; otherwise nothing is
    /// written and the commit fails with [`crate::Error::Precondition`] (`why`), or
    /// [`ModelError::NotFound`] for a row gone. Writes nothing itself.
    ///
    /// What a decision was made on is checked again in the commit that acts on it: a rule
    /// checked against the signed-in user's row (still a captain, still of that ship), a
    /// value a form was drawn with.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use remodel::model::{create_schema, Id, Transaction};
    /// # use remodel::{Database, Error, Model};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Model, Serialize, Deserialize, Debug, Clone)]
    /// struct Officer { id: Option<Id>, name: String, rank: String }
    /// # let db = Database::temporary().await?;
    /// # create_schema(&db).await?;
    /// let mut kirk = Officer { id: None, name: "Kirk".into(), rank: "captain".into() }
    ///     .create(&db).await?;
    /// let seen = kirk.clone();
    /// // Meanwhile, another request demotes him.
    /// kirk.update(&db, |k| k.rank = "admiral".into()).await?;
    /// // A transaction decided on the row as it was no longer commits.
    /// let mut tx = Transaction::new(&db);
    /// tx.require(&seen, "no longer a captain", |now: &Officer| now.rank == "captain")?;
    /// tx.create(Officer { id: None, name: "Sulu".into(), rank: "lieutenant".into() }).await?;
    /// assert!(matches!(tx.commit().await, Err(Error::Precondition(_))));
    /// assert_eq!(Officer::count(&db).await?, 1);
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn require<T: Model>(
        &mut self,
        model: &T,
        why: impl Into<String>,
        holds: impl Fn(&T) -> bool + Send + Sync + 'static,
    ) -> Result<()> {
        let schema = T::schema();
        let key = model
            .key_value()
            .ok_or_else(|| ModelError::not_saved(schema, "require"))?;
        let why = why.into();
        self.stage(schema, |b| {
            // A write that leaves the row as it is: nothing is written, and the closure runs
            // against the row at commit.
            b.require_exists(schema.table, key.clone()).replace_with(
                schema.table,
                key,
                move |stored| match holds(&codec::decode_ref::<T>(stored)?) {
                    true => Ok(stored.clone()),
                    false => Err(crate::Error::Precondition(why.clone())),
                },
            )
        });
        Ok(())
    }

    /// Stages [`HasMany::add`]: the children join the relation's parent (stored ones written
    /// back as `save` does); the parent must be stored at commit.
    pub async fn add<P: Model, C: Model>(
        &mut self,
        relation: &HasMany<P, C>,
        children: &mut [C],
    ) -> Result<()> {
        let append = relation.stage_add(children, self.staged()).await?;
        self.stage_related::<P, C>(append, children)
    }

    /// Stages [`ManyToMany::add`]: the children are written (created when new) and related
    /// to the relation's parent.
    pub async fn add_related<P: Model, C: Model>(
        &mut self,
        relation: &ManyToMany<P, C>,
        children: &mut [C],
    ) -> Result<()> {
        let append = relation.stage_add(children, self.staged()).await?;
        self.stage_related::<P, C>(append, children)
    }

    /// Stages [`ManyToMany::relate`]: links only, to rows that must be stored at commit.
    pub async fn relate<P: Model, C: Model>(
        &mut self,
        relation: &ManyToMany<P, C>,
        keys: &[C::Key],
    ) -> Result<()> {
        let append = relation.stage_relate(keys, self.staged())?;
        self.stage_related::<P, C>(append, &[])
    }

    /// Appends a relation's staged write: its parent named among the models of the
    /// transaction, the `after_save` hooks of the children it writes kept for the commit.
    fn stage_related<P: Model, C: Model>(
        &mut self,
        append: impl FnOnce(Batch) -> Batch,
        children: &[C],
    ) -> Result<()> {
        self.children_saved(children)?;
        self.note(P::schema());
        self.stage(C::schema(), append);
        Ok(())
    }

    /// Whether a row is one this transaction creates (a handle on the set: the relation's
    /// staged write keeps it past the borrow of `self`).
    fn staged(&self) -> impl Fn(&str, &Value) -> bool + 'static {
        let created = self.created.clone();
        move |table, key| created.contains(&(table, codec::key_text(key)))
    }

    fn children_saved<C: Model>(&mut self, children: &[C]) -> Result<()> {
        for c in children {
            self.after_save::<C>(&codec::to_doc(c)?)?;
        }
        Ok(())
    }

    /// Commits every staged write at once, or none of them, then runs the `after_` hooks.
    pub async fn commit(mut self) -> Result<WriteResult> {
        let batch = self.batch.take().unwrap_or_else(|| self.db.batch());
        let result = batch
            .await
            .map_err(|e| relation::missing_as_model(e, &self.schemas))?
            .check()?;
        self.after.drain(..).for_each(|hook| hook());
        Ok(result)
    }
}
