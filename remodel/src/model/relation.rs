//! Relation handles (has_many, has_one, belongs_to, many-to-many) and what deleting a model
//! does to its relations. Every lookup goes through the foreign-key index (or, for
//! many-to-many, the join table's indexes), and every write that touches several rows is one
//! atomic [`crate::Batch`].

use super::{codec, registered, IntoKey, Model, ModelChanges, ModelError, ModelQuery, OnDelete};
use super::{RelationDef, RelationKind, Schema};
use crate::{Batch, Conflict, Database, Error, Predicate, ReferenceAction, References, Result};
use serde_json::{json, Value};
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::OnceLock;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The key of `P` for a relation handle, or the error to give when it is used unsaved.
fn parent_key<P: Model>(parent: &P, rel: &RelationDef) -> Result<Value> {
    parent
        .key_value()
        .ok_or_else(|| ModelError::not_saved(P::schema(), rel.accessor).into())
}

/// `!(pk == k1 or pk == k2 ...)`: rows other than these.
fn not_one_of(field: &str, keys: &[Value]) -> Predicate {
    !Predicate::Or {
        any: keys
            .iter()
            .map(|k| crate::field(field).eq(k.clone()))
            .collect(),
    }
}

/// The text of the precondition that fails a detaching write when children joined the
/// relation after they were read (the write is then prepared again).
const CHILDREN_MOVED_IN: &str = "children joined the relation while it was being written";

/// How many times a detaching write is prepared again when children keep joining.
const DETACH_ATTEMPTS: usize = 16;

/// A [`Error::NotFound`] of a required row, as the model error that names its model.
/// The store's errors about models as the model layer's: a missing row of one of `schemas`
/// is [`ModelError::NotFound`], a delete refused by a restricting relation is
/// [`ModelError::Restricted`] naming the relation.
pub(crate) fn missing_as_model(e: Error, schemas: &[&'static Schema]) -> Error {
    match e {
        Error::NotFound { table, key } => match schemas.iter().find(|s| s.table == table) {
            Some(s) => ModelError::missing(s, key).into(),
            None => Error::NotFound { table, key },
        },
        Error::Restricted {
            table,
            referenced_by,
            field,
            rows,
            why,
        } => {
            let restricting = registered().into_iter().find_map(|s| {
                let rel = s.relations.iter().find(|r| {
                    matches!(r.kind, RelationKind::HasMany | RelationKind::HasOne)
                        && r.on_delete == OnDelete::Restrict
                        && r.foreign_key == field
                        && r.target().table == referenced_by
                })?;
                (s.table == table).then_some((s.model, rel.accessor))
            });
            match restricting {
                Some((model, relation)) => ModelError::Restricted {
                    model: model.to_string(),
                    relation: relation.to_string(),
                    children: rows,
                }
                .into(),
                None => Error::Restricted {
                    table,
                    referenced_by,
                    field,
                    rows,
                    why,
                },
            }
        }
        e => e,
    }
}

/// A child made ready for a relation write: its key, its document, and whether it had a key
/// before (then it is a stored row, written back as `save` does and required to exist).
#[derive(Clone)]
struct Prepared {
    key: Value,
    doc: Value,
    existing: bool,
}

/// Runs every child's `before_save`, gives unsaved ones a key, points their foreign key at
/// the parent (`fk`: the field and the parent's key) and returns their documents. Nothing is
/// written: a hook that fails stops this before any write.
async fn prepare_children<C: Model>(
    db: &Database,
    children: &mut [C],
    fk: Option<(&str, &Value)>,
) -> Result<Vec<Prepared>> {
    let mut out = Vec::with_capacity(children.len());
    for c in children.iter_mut() {
        let existing = c.key_value().is_some();
        if let Some((field, parent)) = fk {
            c.set_field_value(field, parent.clone())?;
        }
        c.before_save(db).await?;
        let key = codec::ensure_key(c)?;
        let mut doc = codec::to_doc(c)?;
        if let (Some((field, parent)), Value::Object(m)) = (fk, &mut doc) {
            // The key is written even when the struct has no field for it.
            m.insert(field.to_string(), parent.clone());
        }
        out.push(Prepared { key, doc, existing });
    }
    Ok(out)
}

/// Adds to `batch` the write that stores a prepared child: a new one is inserted; a stored
/// one (unless `create`) is written back as `save` does (its fields, and the stored fields
/// it does not know as they are at commit) and must still exist: a row deleted meanwhile
/// fails the batch instead of coming back.
fn store<C: Model>(batch: Batch, child: Prepared, create: bool) -> Batch {
    let schema = C::schema();
    if child.existing && !create {
        let doc = child.doc;
        batch
            .require_exists(schema.table, child.key.clone())
            .replace_with(schema.table, child.key, move |stored| {
                Ok(codec::with_unknown(schema, &doc, stored))
            })
    } else {
        batch.insert(schema.table, child.doc)
    }
}

/// Runs a child's hooks for being detached (its foreign key `fk` set to null) and returns
/// its key and the fields that changed.
async fn detaching<C: Model>(
    db: &Database,
    child: &mut C,
    fk: &str,
) -> Result<Option<(Value, codec::FieldChanges)>> {
    let Some(key) = child.key_value() else {
        return Ok(None);
    };
    let before = codec::to_doc(child)?;
    child.set_field_value(fk, Value::Null)?;
    child.before_save(db).await?;
    let after = codec::to_doc(child)?;
    let mut changes = codec::FieldChanges::between(C::schema(), &before, &after);
    // Null even when the struct has no field for it.
    changes.set(fk, Value::Null);
    Ok(Some((key, changes)))
}

/// Adds to `batch` the write that detaches a child from `parent`: its changed fields are
/// applied to the stored row only if that row still belongs to `parent` when the batch
/// commits (a child moved to another parent meanwhile stays there).
fn detach<C: Model>(
    batch: Batch,
    fk: &'static str,
    parent: &Value,
    key: Value,
    changes: codec::FieldChanges,
) -> Batch {
    let parent = parent.clone();
    batch.replace_with(C::schema().table, key, move |stored| {
        let belongs = stored
            .get(fk)
            .is_some_and(|k| crate::value::compare(k, &parent).is_eq());
        Ok(if belongs {
            changes.apply(stored)
        } else {
            stored.clone()
        })
    })
}

/// The children of a has_many relation: `ship.crewmembers(&db)`.
///
/// Reads go through the foreign-key index; `add`, `remove`, `clear` and `set` are one atomic
/// batch each. The handle needs a saved parent: on an unsaved one, every method returns
/// [`ModelError::NotSaved`].
pub struct HasMany<P, C> {
    db: Database,
    key: Result<Value>,
    rel: &'static RelationDef,
    _t: PhantomData<fn() -> (P, C)>,
}

impl<P: Model, C: Model> HasMany<P, C> {
    /// The handle for `parent`'s relation `rel` (generated accessors call this).
    pub fn new(db: &Database, parent: &P, rel: &'static RelationDef) -> Self {
        HasMany {
            db: db.clone(),
            key: parent_key(parent, rel),
            rel,
            _t: PhantomData,
        }
    }

    fn parent(&self) -> Result<Value> {
        self.key.clone()
    }

    fn fk(&self) -> &'static str {
        self.rel.foreign_key
    }

    /// The children, as a typed query (through the foreign-key index).
    pub fn query(&self) -> ModelQuery<C> {
        match self.parent() {
            Ok(k) => ModelQuery::by_index(&self.db, self.fk(), vec![k]),
            Err(e) => ModelQuery::failed(&self.db, e),
        }
    }

    /// Every child.
    pub async fn all(&self) -> Result<Vec<C>> {
        self.query().run().await
    }

    /// The children for which `predicate` holds.
    pub fn filter(&self, predicate: Predicate) -> ModelQuery<C> {
        self.query().filter(predicate)
    }

    /// The child with this key, if it is a child of this parent.
    pub async fn get(&self, key: impl IntoKey<C::Key>) -> Result<Option<C>> {
        let parent = self.parent()?;
        let child = C::get(&self.db, key).await?;
        Ok(child.filter(|c| c.field_value(self.fk()).as_ref() == Some(&parent)))
    }

    /// The number of children.
    pub async fn count(&self) -> Result<u64> {
        self.query().count().await
    }

    /// Creates `child` as a child of this parent and returns it saved, in one commit that
    /// requires the parent to be stored ([`ModelError::NotFound`] when it was deleted).
    pub async fn create(&self, mut child: C) -> Result<C> {
        self.create_many(std::slice::from_mut(&mut child)).await?;
        Ok(child)
    }

    /// Creates these children of this parent, all in one commit (a child whose key is taken
    /// fails it with [`crate::Error::KeyConflict`]; nothing is written then). The way to
    /// create children that come with keys of their own: `add` takes a child with a key for
    /// a stored row.
    pub async fn create_many(&self, children: &mut [C]) -> Result<()> {
        let parent = self.parent()?;
        let prepared = prepare_children(&self.db, children, Some((self.fk(), &parent))).await?;
        let mut batch = self.db.batch().require_exists(P::schema().table, parent);
        for p in prepared {
            batch = store::<C>(batch, p, true);
        }
        self.commit(batch).await?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }

    /// Commits a relation write, naming a missing parent or child as its model.
    async fn commit(&self, batch: Batch) -> Result<crate::WriteResult> {
        batch
            .await
            .map_err(|e| missing_as_model(e, &[P::schema(), C::schema()]))?
            .check()
    }

    /// Makes the children belong to this parent and saves them, all in one commit. A child
    /// without a key is created; one with a key is a stored row, written back as `save`
    /// does (stored fields its struct does not know are kept as they are at commit), and
    /// [`ModelError::NotFound`] if it was deleted (nothing is written then: a row deleted
    /// meanwhile is not brought back). The parent must be stored too. New children that come
    /// with keys of their own are created with [`HasMany::create_many`].
    pub async fn add(&self, children: &mut [C]) -> Result<()> {
        let batch = self.stage_add(children, |_, _| false).await?(self.db.batch());
        self.commit(batch).await?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }

    /// `add`'s writes, to append to a batch (the `before_save` hooks run now: an error
    /// leaves nothing to append).
    /// `staged(table, key)` says whether a row is created by the same commit (a transaction's
    /// own): such a parent is not required to exist before it.
    pub(crate) async fn stage_add(
        &self,
        children: &mut [C],
        staged: impl Fn(&str, &Value) -> bool,
    ) -> Result<impl FnOnce(Batch) -> Batch> {
        let parent = self.parent()?;
        let prepared = prepare_children(&self.db, children, Some((self.fk(), &parent))).await?;
        let check = !staged(P::schema().table, &parent);
        Ok(move |batch: Batch| {
            let mut batch = if check {
                batch.require_exists(P::schema().table, parent)
            } else {
                batch
            };
            for p in prepared {
                batch = store::<C>(batch, p, false);
            }
            batch
        })
    }

    /// Detaches these children in one commit, those that belong to this parent: in each
    /// struct that says so the foreign key becomes null and `before_save` runs (a hook's
    /// error aborts before anything is written); in the store, the fields that changed are
    /// written to the rows that still belong to this parent when the commit happens (a child
    /// moved meanwhile stays where it went). Returns how many were detached.
    pub async fn remove(&self, children: &mut [C]) -> Result<u64> {
        let parent = self.parent()?;
        let mut writes = Vec::new();
        for c in children.iter_mut() {
            let elsewhere = c
                .field_value(self.fk())
                .is_some_and(|k| !crate::value::compare(&k, &parent).is_eq());
            if !elsewhere {
                writes.extend(detaching(&self.db, c, self.fk()).await?);
            }
        }
        if writes.is_empty() {
            return Ok(0);
        }
        let mut batch = self.db.batch();
        for (key, changes) in writes {
            batch = detach::<C>(batch, self.fk(), &parent, key, changes);
        }
        let r = self.commit(batch).await?;
        children.iter().for_each(|c| c.after_save());
        Ok(r.replaced)
    }

    /// Detaches every child (one commit), running each one's `before_save`. Returns how
    /// many were detached.
    pub async fn clear(&self) -> Result<u64> {
        Ok(self.replace_children(None).await?.replaced)
    }

    /// Makes `children` the children of this parent: the others are detached (with their
    /// `before_save`, as `remove` does), these are attached and saved (as `add` does), in one
    /// commit. Every child is validated (its `before_save`) before anything is written, so a
    /// refused replacement leaves the relation as it was.
    pub async fn set(&self, children: &mut [C]) -> Result<()> {
        let parent = self.parent()?;
        let prepared = prepare_children(&self.db, children, Some((self.fk(), &parent))).await?;
        self.replace_children(Some(prepared)).await?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }

    /// Detaches every child not in `keep` and stores `keep` (none: detaches every child), in
    /// one commit. The children to detach are read first, so that their hooks run; the
    /// commit requires that no other child joined meanwhile, and is prepared again if one
    /// did.
    async fn replace_children(&self, keep: Option<Vec<Prepared>>) -> Result<crate::WriteResult> {
        let parent = self.parent()?;
        let keep = keep.unwrap_or_default();
        let kept: Vec<Value> = keep.iter().map(|p| p.key.clone()).collect();
        let pk = C::schema().primary_key;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut others = self.filter(not_one_of(pk, &kept)).run().await?;
            let mut batch = self.db.batch();
            if !keep.is_empty() {
                batch = batch.require_exists(P::schema().table, parent.clone());
            }
            let mut known = kept.clone();
            for c in others.iter_mut() {
                if let Some((key, changes)) = detaching(&self.db, c, self.fk()).await? {
                    known.push(key.clone());
                    batch = detach::<C>(batch, self.fk(), &parent, key, changes);
                }
            }
            let newcomers = self.query().raw()?.filter(not_one_of(pk, &known));
            batch = batch.require_empty(&newcomers, CHILDREN_MOVED_IN);
            for p in keep.iter().cloned() {
                batch = store::<C>(batch, p, false);
            }
            match self.commit(batch).await {
                Err(Error::Precondition(why))
                    if why == CHILDREN_MOVED_IN && attempt < DETACH_ATTEMPTS => {}
                Ok(r) => {
                    others.iter().for_each(|c| c.after_save());
                    return Ok(r);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Watches the children (an index feed on the foreign key): a child added, changed or
    /// removed, typed. A child moved to another parent leaves this feed.
    pub fn changes(&self) -> ModelChanges<C> {
        self.query().changes()
    }

    /// The first child matching `predicate`, or a new one made by `make` and created in
    /// this relation, in one commit that checks no matching child exists: two concurrent
    /// calls create one row. Returns the child and whether it was created (its
    /// `before_save` ran then). The new child should match `predicate`.
    pub async fn get_or_create(
        &self,
        predicate: Predicate,
        make: impl FnOnce() -> C,
    ) -> Result<(C, bool)> {
        let parent = self.parent()?;
        let q = self.filter(predicate);
        if let Some(found) = q.first().await? {
            return Ok((found, false));
        }
        let mut child = make();
        let mut prepared = prepare_children(
            &self.db,
            std::slice::from_mut(&mut child),
            Some((self.fk(), &parent)),
        )
        .await?;
        let raw = q.raw()?;
        let why = format!("a matching {} exists", C::schema().model);
        let batch = self
            .db
            .batch()
            .require_exists(P::schema().table, parent)
            .require_empty(&raw, why)
            .insert(C::schema().table, prepared.remove(0).doc);
        let written = self.commit(batch).await.map(drop);
        super::created_or_found(written, child, &q, self.rel.accessor).await
    }
}

/// The single child of a has_one relation: `.await` it for `Option<C>`, or `set`, `clear`,
/// `changes`.
pub struct HasOne<P, C> {
    inner: HasMany<P, C>,
}

impl<P: Model, C: Model> HasOne<P, C> {
    /// The handle for `parent`'s relation `rel` (generated accessors call this).
    pub fn new(db: &Database, parent: &P, rel: &'static RelationDef) -> Self {
        HasOne {
            inner: HasMany::new(db, parent, rel),
        }
    }

    /// The child, if there is one.
    pub async fn get(&self) -> Result<Option<C>> {
        self.inner.query().first().await
    }

    /// Makes `child` the child (saving it) and detaches the previous one, in one commit.
    pub async fn set(&self, child: &mut C) -> Result<()> {
        self.inner.set(std::slice::from_mut(child)).await
    }

    /// Detaches the child. Returns whether there was one.
    pub async fn clear(&self) -> Result<bool> {
        Ok(self.inner.clear().await? > 0)
    }

    /// Watches the child (an index feed on the foreign key).
    pub fn changes(&self) -> ModelChanges<C> {
        self.inner.changes()
    }
}

impl<P: Model, C: Model> IntoFuture for HasOne<P, C> {
    type Output = Result<Option<C>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.get().await })
    }
}

/// The owner of a belongs_to relation: `member.starship(&db).await?` is `Option<Starship>`;
/// `.changes()` watches the owner's row. Set the owner with the generated `set_<accessor>`
/// and save.
pub struct BelongsTo<C, P> {
    db: Database,
    owner: Option<Value>,
    rel: &'static RelationDef,
    _t: PhantomData<fn() -> (C, P)>,
}

impl<C: Model, P: Model> BelongsTo<C, P> {
    /// The handle for `child`'s relation `rel` (generated accessors call this).
    pub fn new(db: &Database, child: &C, rel: &'static RelationDef) -> Self {
        BelongsTo {
            db: db.clone(),
            owner: child.field_value(rel.foreign_key).filter(|v| !v.is_null()),
            rel,
            _t: PhantomData,
        }
    }

    /// The owner's key, if the foreign key is set.
    pub fn key(&self) -> Option<P::Key> {
        self.owner
            .clone()
            .and_then(|k| serde_json::from_value(k).ok())
    }

    /// The owner (`None` when the foreign key is empty or points at nothing).
    pub async fn get(&self) -> Result<Option<P>> {
        match &self.owner {
            None => Ok(None),
            Some(k) => codec::get_model::<P>(&P::table(&self.db), k),
        }
    }

    /// Watches the owner's row (a point feed). Errors with [`ModelError::NoOwner`] when the
    /// foreign key is empty.
    pub fn changes(&self) -> ModelChanges<P> {
        match &self.owner {
            Some(k) => ModelChanges::new(Ok(P::table(&self.db).get(k.clone()).changes())),
            None => ModelChanges::new(Err(ModelError::NoOwner {
                model: C::schema().model.to_string(),
                relation: self.rel.accessor.to_string(),
                foreign_key: self.rel.foreign_key.to_string(),
            }
            .into())),
        }
    }
}

impl<C: Model, P: Model> IntoFuture for BelongsTo<C, P> {
    type Output = Result<Option<P>>;
    type IntoFuture = BoxFuture<'static, Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.get().await })
    }
}

/// The id of the join row pairing two keys: the same whichever side writes it (the values
/// in the order of their column names).
pub(crate) fn join_id(mine_col: &str, mine: &Value, other_col: &str, other: &Value) -> Value {
    if mine_col <= other_col {
        json!([mine, other])
    } else {
        json!([other, mine])
    }
}

/// The other side of a has_and_belongs_to_many relation, through a join table that both
/// sides share (`{id, <this>_id, <other>_id}`, indexed on both keys).
///
/// `remove` and `clear` delete only this parent's join rows: the other rows stay related to
/// their other parents.
pub struct ManyToMany<P, C> {
    db: Database,
    key: Result<Value>,
    rel: &'static RelationDef,
    join: String,
    _t: PhantomData<fn() -> (P, C)>,
}

impl<P: Model, C: Model> ManyToMany<P, C> {
    /// The handle for `parent`'s relation `rel` (generated accessors call this).
    pub fn new(db: &Database, parent: &P, rel: &'static RelationDef) -> Self {
        ManyToMany {
            db: db.clone(),
            key: parent_key(parent, rel),
            rel,
            join: rel.join_table_of(P::schema()),
            _t: PhantomData,
        }
    }

    fn parent(&self) -> Result<Value> {
        self.key.clone()
    }

    /// This parent's side of the join table.
    fn related(&self) -> Result<super::query::Related> {
        Ok(super::query::Related {
            join: self.join.clone(),
            fk: self.rel.foreign_key,
            parent: self.parent()?,
            assoc: self.rel.association_key,
        })
    }

    /// The keys of the related rows.
    pub async fn keys(&self) -> Result<Vec<C::Key>> {
        self.key_values()
            .await?
            .into_iter()
            .map(|k| {
                serde_json::from_value(k.clone()).map_err(|e| {
                    ModelError::Decode {
                        table: self.join.clone(),
                        key: Box::new(k),
                        field: self.rel.association_key.to_string(),
                        reason: e.to_string(),
                    }
                    .into()
                })
            })
            .collect()
    }

    /// The keys of the related rows as the join table holds them.
    async fn key_values(&self) -> Result<Vec<Value>> {
        self.related()?.keys(&self.db).await
    }

    /// Every related row.
    pub async fn all(&self) -> Result<Vec<C>> {
        self.query().run().await
    }

    /// The related rows, as a typed query (as [`HasMany::query`]): chain `filter`,
    /// `order_by`, `limit`, then `run`, `count`, `update`, `delete`, `changes`, ... Its keys
    /// are read from the join table when it runs.
    pub fn query(&self) -> ModelQuery<C> {
        match self.related() {
            Ok(related) => ModelQuery::related(&self.db, related),
            Err(e) => ModelQuery::failed(&self.db, e),
        }
    }

    /// The related rows for which `predicate` holds, as a query.
    pub fn filter(&self, predicate: Predicate) -> ModelQuery<C> {
        self.query().filter(predicate)
    }

    /// The related row with this key, if it is related to this parent.
    pub async fn get(&self, key: impl IntoKey<C::Key>) -> Result<Option<C>> {
        let key = codec::key_to_value::<C>(&key.into_key())?;
        let id = join_id(
            self.rel.foreign_key,
            &self.parent()?,
            self.rel.association_key,
            &key,
        );
        if self.db.table(self.join.as_str()).get(id).await?.is_none() {
            return Ok(None);
        }
        codec::get_model::<C>(&C::table(&self.db), &key)
    }

    /// The number of related rows.
    pub async fn count(&self) -> Result<u64> {
        codec::count_query();
        self.related()?.links(&self.db).count().await
    }

    fn link(&self, parent: &Value, other: &Value) -> Value {
        let (mine, theirs) = (self.rel.foreign_key, self.rel.association_key);
        json!({
            "id": join_id(mine, parent, theirs, other),
            mine: parent,
            theirs: other,
        })
    }

    /// Saves the prepared children (created, or written back when `create` is false and they
    /// had a key) and links them to this parent, in one commit that requires the parent.
    async fn store_linked(
        &self,
        prepared: Vec<Prepared>,
        create: bool,
        batch: Batch,
    ) -> Result<()> {
        self.link_prepared(self.parent()?, prepared, create, true)(batch)
            .await
            .map_err(|e| missing_as_model(e, &[P::schema(), C::schema()]))?
            .check()?;
        Ok(())
    }

    /// Creates these children and relates them to this parent, in one commit (a taken key
    /// fails it with [`crate::Error::KeyConflict`]).
    pub async fn create_many(&self, children: &mut [C]) -> Result<()> {
        let prepared = prepare_children(&self.db, children, None).await?;
        self.store_linked(prepared, true, self.db.batch()).await?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }

    /// Creates `child` and relates it to this parent, in one commit.
    pub async fn create(&self, mut child: C) -> Result<C> {
        self.create_many(std::slice::from_mut(&mut child)).await?;
        Ok(child)
    }

    /// Saves the children and relates them to this parent, in one commit. A child without a
    /// key is created; one with a key is a stored row, written back as `save` does, and
    /// [`ModelError::NotFound`] if it was deleted (nothing is written then). Relating a row
    /// twice changes nothing. New children with keys of their own: [`ManyToMany::create_many`].
    pub async fn add(&self, children: &mut [C]) -> Result<()> {
        let prepared = prepare_children(&self.db, children, None).await?;
        self.store_linked(prepared, false, self.db.batch()).await?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }

    /// `add`'s writes, to append to a batch (the `before_save` hooks run now: an error
    /// leaves nothing to append).
    pub(crate) async fn stage_add(
        &self,
        children: &mut [C],
        staged: impl Fn(&str, &Value) -> bool,
    ) -> Result<impl FnOnce(Batch) -> Batch + '_> {
        let parent = self.parent()?;
        let prepared = prepare_children(&self.db, children, None).await?;
        let check = !staged(P::schema().table, &parent);
        Ok(self.link_prepared(parent, prepared, false, check))
    }

    /// The children's writes and their links, to append to a batch.
    fn link_prepared(
        &self,
        parent: Value,
        prepared: Vec<Prepared>,
        create: bool,
        check_parent: bool,
    ) -> impl FnOnce(Batch) -> Batch + '_ {
        move |batch: Batch| {
            let mut batch = if check_parent {
                batch.require_exists(P::schema().table, parent.clone())
            } else {
                batch
            };
            for p in prepared {
                let link = self.link(&parent, &p.key);
                batch =
                    store::<C>(batch, p, create).insert_with(&self.join, link, Conflict::Replace);
            }
            batch
        }
    }

    /// Relates the stored rows with these keys to this parent, in one commit, without
    /// writing the rows themselves (unlike [`ManyToMany::add`], which writes back the models
    /// it is given: a copy read earlier would undo a change made since). A row deleted
    /// meanwhile (or never stored) is [`ModelError::NotFound`], and nothing is written;
    /// relating a row twice changes nothing.
    pub async fn relate(&self, keys: &[C::Key]) -> Result<()> {
        self.stage_relate(keys, |_, _| false)?(self.db.batch())
            .await
            .map_err(|e| missing_as_model(e, &[P::schema(), C::schema()]))?
            .check()?;
        Ok(())
    }

    /// `relate`'s checks and links, to append to a batch.
    pub(crate) fn stage_relate(
        &self,
        keys: &[C::Key],
        staged: impl Fn(&str, &Value) -> bool,
    ) -> Result<impl FnOnce(Batch) -> Batch + '_> {
        let parent = self.parent()?;
        let keys: Vec<(Value, bool)> = keys
            .iter()
            .map(|k| {
                let k = codec::key_to_value::<C>(k)?;
                let check = !staged(C::schema().table, &k);
                Ok((k, check))
            })
            .collect::<Result<_>>()?;
        let check_parent = !staged(P::schema().table, &parent);
        Ok(move |batch: Batch| {
            let mut batch = if check_parent {
                batch.require_exists(P::schema().table, parent.clone())
            } else {
                batch
            };
            for (key, check) in keys {
                let link = self.link(&parent, &key);
                if check {
                    batch = batch.require_exists(C::schema().table, key.clone());
                }
                batch = batch.insert_with(&self.join, link, Conflict::Replace);
            }
            batch
        })
    }

    /// Watches this parent's links (the join rows `{id, <this>_id, <other>_id}`): a row
    /// related or unrelated arrives as an add or a remove, untyped. Changes of the related
    /// rows themselves are not in this feed (that is a live join).
    pub fn link_changes(&self) -> Result<crate::Changes> {
        Ok(self.related()?.links(&self.db).changes())
    }

    /// Watches the related rows themselves: a live join of this parent's links with the
    /// related table. Items are `{"left": join row, "right": related row}` pairs (read the
    /// model with `C::from_json(pair["right"].clone())`): a row arrives when it is related,
    /// changes when it is edited, and leaves when it is unrelated or deleted. A join feed
    /// cannot resume from a cursor: reopen it with `include_initial`.
    pub fn join_changes(&self) -> Result<crate::Changes> {
        Ok(self.related()?.join(&self.db, C::schema().table).changes())
    }

    /// Watches the related rows, typed (as [`HasMany::changes`]): a row arrives when it is
    /// related, changes when it is edited, and leaves when it is unrelated or deleted (a
    /// live join of the links with the related table, read as its related side). Like every
    /// join feed it cannot resume from a cursor: reopen it with `include_initial`.
    pub fn changes(&self) -> ModelChanges<C> {
        self.query().changes()
    }

    /// The first related row matching `predicate`, or a new one made by `make`, created
    /// and related in one commit that checks the relation gained no link since it was
    /// read (else it reads again): two concurrent calls create one row. Returns the row
    /// and whether it was created (its `before_save` ran then, once per attempt). The new
    /// row should match `predicate`.
    pub async fn get_or_create(
        &self,
        predicate: Predicate,
        make: impl FnOnce() -> C,
    ) -> Result<(C, bool)> {
        let related = self.related()?;
        let parent = related.parent.clone();
        let mut make = Some(make);
        let mut made: Option<C> = None;
        for _ in 0..DETACH_ATTEMPTS {
            let keys = related.keys(&self.db).await?;
            let found = ModelQuery::<C>::by_keys(&self.db, Ok(keys.clone()))
                .filter(predicate.clone())
                .first()
                .await?;
            if let Some(found) = found {
                return Ok((found, false));
            }
            if made.is_none() {
                made = make.take().map(|f| f());
            }
            let Some(child) = made.as_mut() else {
                break;
            };
            let prepared = prepare_children(&self.db, std::slice::from_mut(child), None).await?;
            let newcomers = related
                .links(&self.db)
                .filter(not_one_of(self.rel.association_key, &keys));
            let batch = self.db.batch().require_empty(&newcomers, CHILDREN_MOVED_IN);
            match self.link_prepared(parent.clone(), prepared, true, true)(batch).await {
                Ok(r) => {
                    r.check()?;
                    child.after_save();
                    if let Some(created) = made {
                        return Ok((created, true));
                    }
                    break;
                }
                Err(Error::Precondition(why)) if why == CHILDREN_MOVED_IN => {}
                Err(e) => return Err(missing_as_model(e, &[P::schema(), C::schema()])),
            }
        }
        Err(ModelError::Invalid(format!(
            "get_or_create on `{}`: the relation kept changing while it was read",
            self.rel.accessor
        ))
        .into())
    }

    /// Unrelates these rows from this parent only (their other relations stay), in one
    /// commit. Returns how many links were removed.
    pub async fn remove(&self, children: &mut [C]) -> Result<u64> {
        let parent = self.parent()?;
        let mut batch = self.db.batch();
        let mut any = false;
        for k in children.iter().filter_map(Model::key_value) {
            let id = join_id(self.rel.foreign_key, &parent, self.rel.association_key, &k);
            batch = batch.delete(&self.join, id);
            any = true;
        }
        if !any {
            return Ok(0);
        }
        Ok(batch.await?.check()?.deleted)
    }

    /// Unrelates every row from this parent (one commit). Returns how many links were removed.
    pub async fn clear(&self) -> Result<u64> {
        let q = self.related()?.links(&self.db);
        Ok(self.db.batch().delete_where(&q).await?.check()?.deleted)
    }

    /// Makes `children` exactly the related rows: validated first, then in one commit the
    /// other links are removed and these saved (as `add` does) and linked.
    pub async fn set(&self, children: &mut [C]) -> Result<()> {
        let links = self.related()?.links(&self.db);
        let prepared = prepare_children(&self.db, children, None).await?;
        let keys: Vec<Value> = prepared.iter().map(|p| p.key.clone()).collect();
        let others = links.filter(not_one_of(self.rel.association_key, &keys));
        let batch = self.db.batch().delete_where(&others);
        self.store_linked(prepared, false, batch).await?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }
}

/// What deleting a row of each model does to the rows related to it, from the relations of
/// every registered model (built once): a has_many / has_one's `on_delete` (nullify,
/// cascade or restrict); a belongs_to declared on the child, where the owner declares
/// nothing, nullifies; many-to-many join rows naming the row are deleted. Deletes apply them
/// in their own commit ([`crate::Batch::delete_cascading`]).
pub(crate) fn references() -> &'static References {
    static REFERENCES: OnceLock<References> = OnceLock::new();
    REFERENCES.get_or_init(|| {
        let mut refs = References::new();
        let models = registered();
        // The owners' declarations first: an owner's on_delete wins over the nullify that a
        // belongs_to on the child side implies (`References::add` keeps the first).
        for schema in &models {
            for rel in schema.relations {
                let target = rel.target();
                match rel.kind {
                    RelationKind::HasMany | RelationKind::HasOne => {
                        let action = match rel.on_delete {
                            OnDelete::Nullify => ReferenceAction::Nullify,
                            OnDelete::Cascade => ReferenceAction::Delete,
                            OnDelete::Restrict => ReferenceAction::Restrict {
                                why: format!(
                                    "cannot delete this {}: it still has {} (`{}` is on_delete = restrict)",
                                    schema.model, target.table, rel.accessor
                                ),
                            },
                        };
                        refs.add(schema.table, target.table, rel.foreign_key, action);
                    }
                    RelationKind::ManyToMany => {
                        let join = rel.join_table_of(schema);
                        refs.add(schema.table, &join, rel.foreign_key, ReferenceAction::Delete);
                        refs.add(target.table, &join, rel.association_key, ReferenceAction::Delete);
                    }
                    RelationKind::BelongsTo => {}
                }
            }
        }
        for schema in &models {
            for rel in schema.relations {
                if rel.kind == RelationKind::BelongsTo {
                    let owner = rel.target().table;
                    refs.add(owner, schema.table, rel.foreign_key, ReferenceAction::Nullify);
                }
            }
        }
        refs
    })
}
