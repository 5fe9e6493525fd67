//! Relation handles (has_many, has_one, belongs_to, many-to-many) and what deleting a model
//! does to its relations. Every lookup goes through the foreign-key index (or, for
//! many-to-many, the join table's indexes), and every write that touches several rows is one
//! atomic [`crate::Batch`].

use super::{codec, registered, Model, ModelChanges, ModelError, ModelQuery, OnDelete};
use super::{RelationDef, RelationKind, Schema};
use crate::{Batch, Conflict, Database, Predicate, Result};
use serde_json::{json, Value};
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The key of `P` for a relation handle, or the error to give when it is used unsaved.
fn parent_key<P: Model>(parent: &P, rel: &RelationDef) -> Result<Value> {
    parent
        .key()
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

/// Runs every child's `before_save`, gives unsaved ones a key, points their foreign key at
/// `parent` and returns their documents. Nothing is written: a hook that fails stops this
/// before any write (the replacement is validated before the relation is touched).
fn prepare_children<C: Model>(
    children: &mut [C],
    foreign_key: &str,
    parent: &Value,
) -> Result<Vec<Value>> {
    let mut docs = Vec::with_capacity(children.len());
    for c in children.iter_mut() {
        c.set_field_value(foreign_key, parent.clone())?;
        c.before_save()?;
        codec::ensure_key(c)?;
        let mut doc = codec::to_doc(c)?;
        if let Value::Object(m) = &mut doc {
            // The key is written even when the struct has no field for it.
            m.insert(foreign_key.to_string(), parent.clone());
        }
        docs.push(doc);
    }
    Ok(docs)
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

    fn key(&self) -> Result<Value> {
        self.key.clone()
    }

    fn fk(&self) -> &'static str {
        self.rel.foreign_key
    }

    /// The children, as a typed query (through the foreign-key index).
    pub fn query(&self) -> ModelQuery<C> {
        match self.key() {
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
    pub async fn get(&self, key: impl Into<Value>) -> Result<Option<C>> {
        let parent = self.key()?;
        let child = C::get(&self.db, key).await?;
        Ok(child.filter(|c| c.field_value(self.fk()).as_ref() == Some(&parent)))
    }

    /// The number of children.
    pub async fn count(&self) -> Result<u64> {
        self.query().count().await
    }

    /// Creates `child` as a child of this parent and returns it saved.
    pub async fn create(&self, mut child: C) -> Result<C> {
        let parent = self.key()?;
        let mut docs = prepare_children(std::slice::from_mut(&mut child), self.fk(), &parent)?;
        // One document: a plain insert (a batch would add a hop to a blocking thread).
        let doc = docs.pop().expect("one child, one document");
        C::table(&self.db).insert(doc).await?.check()?;
        child.after_save();
        Ok(child)
    }

    /// Makes the children belong to this parent and saves them (new ones are created), all in
    /// one commit. Stored fields the children's struct does not know are kept.
    pub async fn add(&self, children: &mut [C]) -> Result<()> {
        let parent = self.key()?;
        let docs = prepare_children(children, self.fk(), &parent)?;
        let table = C::schema().table;
        let mut batch = self.db.batch();
        for d in docs {
            batch = batch.insert_with(table, d, Conflict::Update);
        }
        batch.await?.check()?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }

    /// Detaches these children (their foreign key becomes null) in one commit, but only
    /// those that belong to this parent. Returns how many were detached.
    pub async fn remove(&self, children: &mut [C]) -> Result<u64> {
        let parent = self.key()?;
        let keys: Vec<Value> = children.iter().filter_map(Model::key).collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let q = self
            .db
            .table(C::schema().table)
            .get_all(keys)
            .filter(crate::field(self.fk()).eq(parent.clone()));
        let r = self
            .db
            .batch()
            .update_where(&q, json!({ self.fk(): null }))
            .await?
            .check()?;
        for c in children.iter_mut() {
            if c.field_value(self.fk()).as_ref() == Some(&parent) {
                c.set_field_value(self.fk(), Value::Null)?;
            }
        }
        Ok(r.replaced)
    }

    /// Detaches every child (one commit). Returns how many were detached.
    pub async fn clear(&self) -> Result<u64> {
        let q = self.query().raw()?;
        let r = self
            .db
            .batch()
            .update_where(&q, json!({ self.fk(): null }))
            .await?
            .check()?;
        Ok(r.replaced)
    }

    /// Makes `children` the children of this parent: the others are detached, these are
    /// attached and saved, in one commit. Every child is validated (its `before_save`) before
    /// anything is written, so a refused replacement leaves the relation as it was.
    pub async fn set(&self, children: &mut [C]) -> Result<()> {
        let parent = self.key()?;
        let docs = prepare_children(children, self.fk(), &parent)?;
        let schema = C::schema();
        let keys: Vec<Value> = children.iter().filter_map(Model::key).collect();
        let others = self
            .query()
            .raw()?
            .filter(not_one_of(schema.primary_key, &keys));
        let mut batch = self
            .db
            .batch()
            .update_where(&others, json!({ self.fk(): null }));
        for d in docs {
            batch = batch.insert_with(schema.table, d, Conflict::Update);
        }
        batch.await?.check()?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }

    /// Watches the children (an index feed on the foreign key): a child added, changed or
    /// removed, typed. A child moved to another parent leaves this feed.
    pub fn changes(&self) -> ModelChanges<C> {
        self.query().changes()
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
    pub fn key(&self) -> Option<&Value> {
        self.owner.as_ref()
    }

    /// The owner (`None` when the foreign key is empty or points at nothing).
    pub async fn get(&self) -> Result<Option<P>> {
        match &self.owner {
            None => Ok(None),
            Some(k) => P::get(&self.db, k.clone()).await,
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

    fn key(&self) -> Result<Value> {
        self.key.clone()
    }

    fn links(&self, parent: Value) -> crate::Query {
        self.db
            .table(self.join.as_str())
            .get_all([parent])
            .index(self.rel.foreign_key)
    }

    /// The keys of the related rows.
    pub async fn keys(&self) -> Result<Vec<Value>> {
        codec::count_query();
        let rows = self.links(self.key()?).run().await?;
        Ok(rows
            .into_iter()
            .filter_map(|mut r| r.get_mut(self.rel.association_key).map(Value::take))
            .collect())
    }

    /// Every related row.
    pub async fn all(&self) -> Result<Vec<C>> {
        let keys = self.keys().await?;
        C::get_many(&self.db, keys).await
    }

    /// The related rows for which `predicate` holds.
    pub async fn filter(&self, predicate: Predicate) -> Result<Vec<C>> {
        let keys = self.keys().await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let q = self
            .db
            .table(C::schema().table)
            .get_all(keys)
            .filter(predicate);
        codec::count_query();
        codec::decode_all(q.run().await?)
    }

    /// The related row with this key, if it is related to this parent.
    pub async fn get(&self, key: impl Into<Value>) -> Result<Option<C>> {
        let key = key.into();
        let id = join_id(
            self.rel.foreign_key,
            &self.key()?,
            self.rel.association_key,
            &key,
        );
        if self.db.table(self.join.as_str()).get(id).await?.is_none() {
            return Ok(None);
        }
        C::get(&self.db, key).await
    }

    /// The number of related rows.
    pub async fn count(&self) -> Result<u64> {
        codec::count_query();
        self.links(self.key()?).count().await
    }

    fn link(&self, parent: &Value, other: &Value) -> Value {
        let (mine, theirs) = (self.rel.foreign_key, self.rel.association_key);
        json!({
            "id": join_id(mine, parent, theirs, other),
            mine: parent,
            theirs: other,
        })
    }

    fn prepare(&self, children: &mut [C]) -> Result<Vec<(Value, Value)>> {
        let mut out = Vec::with_capacity(children.len());
        for c in children.iter_mut() {
            c.before_save()?;
            let k = codec::ensure_key(c)?;
            out.push((k, codec::to_doc(c)?));
        }
        Ok(out)
    }

    /// Creates `child` and relates it to this parent, in one commit.
    pub async fn create(&self, mut child: C) -> Result<C> {
        self.add(std::slice::from_mut(&mut child)).await?;
        Ok(child)
    }

    /// Saves the children (new ones are created) and relates them to this parent, in one
    /// commit. Relating a row twice changes nothing.
    pub async fn add(&self, children: &mut [C]) -> Result<()> {
        let parent = self.key()?;
        let prepared = self.prepare(children)?;
        let table = C::schema().table;
        let mut batch = self.db.batch();
        for (k, doc) in prepared {
            batch = batch.insert_with(table, doc, Conflict::Update).insert_with(
                &self.join,
                self.link(&parent, &k),
                Conflict::Replace,
            );
        }
        batch.await?.check()?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }

    /// Watches this parent's links (the join rows `{id, <this>_id, <other>_id}`): a row
    /// related or unrelated arrives as an add or a remove, untyped. Changes of the related
    /// rows themselves are not in this feed (that is a live join).
    pub fn link_changes(&self) -> Result<crate::Changes> {
        Ok(self.links(self.key()?).changes())
    }

    /// Watches the related rows themselves: a live join of this parent's links with the
    /// related table. Items are `{"left": join row, "right": related row}` pairs (read the
    /// model with `C::from_json(pair["right"].clone())`): a row arrives when it is related,
    /// changes when it is edited, and leaves when it is unrelated or deleted. A join feed
    /// cannot resume from a cursor: reopen it with `include_initial`.
    pub fn join_changes(&self) -> Result<crate::Changes> {
        let links = self.links(self.key()?);
        Ok(links
            .eq_join(self.rel.association_key, C::schema().table)
            .changes())
    }

    /// Unrelates these rows from this parent only (their other relations stay), in one
    /// commit. Returns how many links were removed.
    pub async fn remove(&self, children: &[C]) -> Result<u64> {
        let parent = self.key()?;
        let mut batch = self.db.batch();
        let mut any = false;
        for k in children.iter().filter_map(Model::key) {
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
        let q = self.links(self.key()?);
        Ok(self.db.batch().delete_where(&q).await?.check()?.deleted)
    }

    /// Makes `children` exactly the related rows: validated first, then in one commit the
    /// other links are removed and these saved and linked.
    pub async fn set(&self, children: &mut [C]) -> Result<()> {
        let parent = self.key()?;
        let prepared = self.prepare(children)?;
        let keys: Vec<Value> = prepared.iter().map(|(k, _)| k.clone()).collect();
        let others = self
            .links(parent.clone())
            .filter(not_one_of(self.rel.association_key, &keys));
        let table = C::schema().table;
        let mut batch = self.db.batch().delete_where(&others);
        for (k, doc) in prepared {
            batch = batch.insert_with(table, doc, Conflict::Update).insert_with(
                &self.join,
                self.link(&parent, &k),
                Conflict::Replace,
            );
        }
        batch.await?.check()?;
        children.iter().for_each(|c| c.after_save());
        Ok(())
    }
}

/// Adds to `batch` what deleting the rows `keys` of `schema` does to relations, in the same
/// commit:
/// - has_many / has_one declared on `schema`: nullify (default), cascade (recursively), or
///   restrict (the batch fails while children exist);
/// - belongs_to declared on other models pointing at `schema`, not covered by one of those:
///   nullify;
/// - many-to-many (declared on either side): the join rows naming the keys are deleted.
///
/// Cascades read the children's keys first, to apply their own relations' effects.
pub(crate) fn delete_effects<'a>(
    db: &'a Database,
    schema: &'static Schema,
    keys: Vec<Value>,
    batch: Batch,
) -> BoxFuture<'a, Result<Batch>> {
    Box::pin(async move {
        if keys.is_empty() {
            return Ok(batch);
        }
        let mut batch = batch;
        // (table, column) pairs already handled, so two declarations of one link act once.
        let mut done: Vec<(String, String)> = Vec::new();
        for rel in schema.relations {
            let target = rel.target();
            match rel.kind {
                RelationKind::HasMany | RelationKind::HasOne => {
                    done.push((target.table.to_string(), rel.foreign_key.to_string()));
                    let q = db
                        .table(target.table)
                        .get_all(keys.clone())
                        .index(rel.foreign_key);
                    batch = match rel.on_delete {
                        OnDelete::Nullify => batch.update_where(&q, json!({ rel.foreign_key: null })),
                        OnDelete::Restrict => batch.require_empty(
                            &q,
                            format!(
                                "cannot delete this {}: it still has {} (`{}` is on_delete = restrict)",
                                schema.model, target.table, rel.accessor
                            ),
                        ),
                        OnDelete::Cascade => {
                            let children: Vec<Value> = q
                                .clone()
                                .pluck([target.primary_key])
                                .run()
                                .await?
                                .into_iter()
                                .filter_map(|mut r| r.get_mut(target.primary_key).map(Value::take))
                                .collect();
                            let batch = batch.delete_where(&q);
                            delete_effects(db, target, children, batch).await?
                        }
                    };
                }
                RelationKind::ManyToMany => {
                    let join = rel.join_table_of(schema);
                    if !done.contains(&(join.clone(), rel.foreign_key.to_string())) {
                        let q = db
                            .table(join.as_str())
                            .get_all(keys.clone())
                            .index(rel.foreign_key);
                        batch = batch.delete_where(&q);
                        done.push((join, rel.foreign_key.to_string()));
                    }
                }
                RelationKind::BelongsTo => {}
            }
        }
        // Relations declared on the other side.
        let tables = db.table_names()?;
        for other in registered() {
            for rel in other.relations {
                if !std::ptr::eq(rel.target(), schema) {
                    continue;
                }
                let (table, column) = match rel.kind {
                    RelationKind::BelongsTo => (other.table.to_string(), rel.foreign_key),
                    RelationKind::ManyToMany => (rel.join_table_of(other), rel.association_key),
                    _ => continue,
                };
                if done.contains(&(table.clone(), column.to_string())) || !tables.contains(&table) {
                    continue;
                }
                let q = db.table(table.as_str()).get_all(keys.clone()).index(column);
                batch = if rel.kind == RelationKind::BelongsTo {
                    batch.update_where(&q, json!({ column: null }))
                } else {
                    batch.delete_where(&q)
                };
                done.push((table, column.to_string()));
            }
        }
        Ok(batch)
    })
}
