//! Write builders: inserts, and updates, replaces and deletes by key or by query.

use super::plan::Plan;
use super::{Query, References, Table};
use crate::db::backend::Job;
use crate::db::write::{Commit, OnConflict, PatchKind, Preview, ReplaceFn, WriteOp};
use crate::db::{Conflict, Database, Durability, Patch, TableState, WriteResult};
use crate::value::encode_key;
use crate::{Error, Result};
use serde_json::Value;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An insert of one or more documents; `.await` it to run it.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::{Conflict, Database, Durability};
/// use serde_json::json;
/// let db = Database::temporary().await?;
/// db.create_table("scores").await?;
/// let t = db.table("scores");
/// t.insert(json!({"id": "kim", "score": 1})).await?;
/// let r = t.insert(json!({"id": "kim", "score": 2}))
///     .conflict(Conflict::Replace)
///     .durability(Durability::Soft)
///     .return_changes(true)
///     .await?;
/// assert_eq!(r.replaced, 1);
/// assert_eq!(r.changes[0].old_val, Some(json!({"id": "kim", "score": 1})));
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "an insert does nothing until it is awaited"]
pub struct Insert {
    table: Table,
    docs: Vec<Value>,
    conflict: OnConflict,
    opts: Options,
}

#[derive(Clone, Copy, Default)]
struct Options {
    return_changes: bool,
    durability: Option<Durability>,
}

impl Insert {
    pub(crate) fn new(table: Table, docs: Vec<Value>) -> Self {
        Insert {
            table,
            docs,
            conflict: OnConflict::Policy(Conflict::Error),
            opts: Options::default(),
        }
    }

    /// What to do when the primary key exists (default: count an error).
    pub fn conflict(mut self, c: Conflict) -> Self {
        self.conflict = OnConflict::Policy(c);
        self
    }

    /// On a conflict, write what `resolve(stored, new)` returns instead (RethinkDB's
    /// conflict function). It runs under the commit lock against the document stored at
    /// that moment, so nothing written in between is lost; like a [`Patch::with`] closure
    /// it must not write to the database, and it cannot change the primary key (a document
    /// without one keeps the stored key).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::Database;
    /// use serde_json::json;
    /// let db = Database::temporary().await?;
    /// db.create_table("players").await?;
    /// let t = db.table("players");
    /// t.insert(json!({"id": "kim", "score": 5, "team": "red"})).await?;
    /// // Write the new document, but keep the stored team.
    /// t.insert(json!({"id": "kim", "score": 7}))
    ///     .conflict_with(|stored, new| {
    ///         let mut doc = new.clone();
    ///         doc["team"] = stored["team"].clone();
    ///         Ok(doc)
    ///     })
    ///     .await?;
    /// assert_eq!(t.get("kim").await?, Some(json!({"id": "kim", "score": 7, "team": "red"})));
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn conflict_with(
        mut self,
        resolve: impl Fn(&Value, &Value) -> Result<Value> + Send + Sync + 'static,
    ) -> Self {
        self.conflict = OnConflict::Resolve(Arc::new(resolve));
        self
    }

    /// Also return the `{old_val, new_val}` of each write.
    pub fn return_changes(mut self, yes: bool) -> Self {
        self.opts.return_changes = yes;
        self
    }

    /// The durability of this write (default: the database's).
    pub fn durability(mut self, d: Durability) -> Self {
        self.opts.durability = Some(d);
        self
    }

    async fn run(mut self) -> Result<WriteResult> {
        // The depth limit before anything else, so that no error path drops (recursively) a
        // document too deep to be dropped that way.
        let deep = self
            .docs
            .iter()
            .position(|d| crate::value::deeper_than(d, crate::value::MAX_DEPTH));
        if let Some(i) = deep {
            self.docs.drain(..).for_each(crate::value::drop_deep);
            return Err(crate::value::too_deep(&format!("document #{i}")));
        }
        let db = self.table.db.clone();
        let t = self.table.state_for_write().await?;
        let mut generated = Vec::new();
        let ops = db.prepare_inserts(&t, self.docs, self.conflict, &mut generated)?;
        let mut result = db
            .run_write(t, ops, self.opts.return_changes, self.opts.durability)
            .await?;
        result.generated_keys = generated;
        Ok(result)
    }
}

impl IntoFuture for Insert {
    type Output = Result<WriteResult>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

enum Target {
    Key(Table, Value),
    Query(Box<Query>),
}

enum Action {
    Update(Patch),
    Replace(Value),
    ReplaceWith(Arc<ReplaceFn>),
    Delete,
}

/// An update, replace or delete, of one document or of every row of a query; `.await` it.
///
/// Writes by query select their rows under the commit lock, so the selection and the write
/// see the same data.
#[must_use = "a write does nothing until it is awaited"]
pub struct Write {
    target: Target,
    action: Action,
    opts: Options,
}

impl Write {
    pub(crate) fn update_key(t: Table, key: Value, patch: Patch) -> Self {
        Write {
            target: Target::Key(t, key),
            action: Action::Update(patch),
            opts: Options::default(),
        }
    }
    pub(crate) fn replace_key(t: Table, key: Value, doc: Value) -> Self {
        Write {
            target: Target::Key(t, key),
            action: Action::Replace(doc),
            opts: Options::default(),
        }
    }
    pub(crate) fn replace_key_with(t: Table, key: Value, f: Arc<ReplaceFn>) -> Self {
        Write {
            target: Target::Key(t, key),
            action: Action::ReplaceWith(f),
            opts: Options::default(),
        }
    }
    pub(crate) fn delete_key(t: Table, key: Value) -> Self {
        Write {
            target: Target::Key(t, key),
            action: Action::Delete,
            opts: Options::default(),
        }
    }

    /// Also return the `{old_val, new_val}` of each write.
    pub fn return_changes(mut self, yes: bool) -> Self {
        self.opts.return_changes = yes;
        self
    }

    /// The durability of this write (default: the database's).
    pub fn durability(mut self, d: Durability) -> Self {
        self.opts.durability = Some(d);
        self
    }

    fn op(action: &Action, key: Vec<u8>) -> WriteOp {
        match action {
            Action::Update(p) => WriteOp::Update {
                key,
                patch: p.clone(),
            },
            Action::Replace(d) => WriteOp::Replace {
                key,
                doc: d.clone(),
            },
            Action::ReplaceWith(f) => WriteOp::ReplaceWith { key, f: f.clone() },
            Action::Delete => WriteOp::Delete { key },
        }
    }

    /// The depth-limit error of a key, patch or document of this write, if any.
    fn too_deep(&self) -> Option<Error> {
        let key = match &self.target {
            Target::Key(_, key) => Some(key),
            Target::Query(_) => None, // its predicates were checked when it was built
        };
        let checked = key
            .map_or(Ok(()), |k| crate::value::check_depth(k, "primary key"))
            .and_then(|()| match &self.action {
                Action::Update(p) => p.check_depth(),
                Action::Replace(d) => crate::value::check_depth(d, "replacement document"),
                Action::ReplaceWith(_) | Action::Delete => Ok(()),
            });
        checked.err()
    }

    /// Drops a refused write without recursing through its values.
    fn dispose(self) {
        if let Target::Key(_, key) = self.target {
            crate::value::drop_deep(key);
        }
        match self.action {
            Action::Update(Patch(PatchKind::Merge(v))) | Action::Replace(v) => {
                crate::value::drop_deep(v)
            }
            Action::Update(Patch(PatchKind::With(_))) | Action::ReplaceWith(_) | Action::Delete => {
            }
        }
    }

    async fn run(self) -> Result<WriteResult> {
        crate::db::check_not_in_patch()?;
        if let Some(e) = self.too_deep() {
            self.dispose();
            return Err(e);
        }
        match self.target {
            Target::Key(table, key) => {
                let db = table.db.clone();
                let t = table.state_for_write().await?;
                let enc = encode_key(&key)?;
                let action = match self.action {
                    Action::Replace(doc) => Action::Replace(replacement(&t, &key, &enc, doc)?),
                    a => a,
                };
                let ops = vec![Self::op(&action, enc)];
                db.run_write(t, ops, self.opts.return_changes, self.opts.durability)
                    .await
            }
            Target::Query(q) => {
                if matches!(self.action, Action::Replace(_) | Action::ReplaceWith(_)) {
                    return Err(Error::query(
                        "replace applies to one document (get(key).replace)",
                    ));
                }
                if q.source == super::Source::Stats {
                    return Err(Error::query("the stats table is read-only"));
                }
                let db = q.db.clone();
                // Planned against the shared catalog, as every write is (see
                // `Database::checked_in_sync`).
                let plan = db.checked_in_sync(|| q.plan()).await?;
                let patch = match self.action {
                    Action::Update(p) => Some(p),
                    _ => None,
                };
                let how = Commit {
                    return_changes: self.opts.return_changes,
                    all_or_nothing: false,
                    hard: db.is_hard(self.opts.durability),
                };
                if let Some(backend) = db.backend() {
                    let job = Job::Locked {
                        tables: vec![plan.table.name.clone()],
                        select: Box::new(move || expand(vec![Step::Where(plan, patch)])),
                    };
                    return backend.commit(db.clone(), job, how).await;
                }
                let inner = db.inner.clone();
                let result = crate::db::spawn_write(move |abandoned| {
                    let mut result = WriteResult::default();
                    let select = || {
                        abandoned.check()?;
                        expand(vec![Step::Where(plan, patch)])
                    };
                    inner
                        .commit_locked(select, how, &mut result)
                        .map(|()| result)
                })
                .await?;
                db.settle(self.opts.durability).await?;
                Ok(result)
            }
        }
    }
}

/// Checks a replacement document: an object whose primary key is absent (it gets `key`) or
/// equal to `key`.
fn replacement(t: &TableState, key: &Value, enc: &[u8], doc: Value) -> Result<Value> {
    let mut doc = crate::value::admit(doc, "replacement document")?;
    let Value::Object(map) = &mut doc else {
        return Err(Error::InvalidDocument {
            reason: format!("a replacement must be a JSON object, got {doc}"),
        });
    };
    match map.get(&t.primary_key) {
        None => {
            map.insert(t.primary_key.clone(), key.clone());
        }
        Some(k) if encode_key(k)? != enc => {
            return Err(Error::InvalidDocument {
                reason: format!("a replacement cannot change the primary key (from {key} to {k})"),
            })
        }
        Some(_) => {}
    }
    Ok(doc)
}

impl IntoFuture for Write {
    type Output = Result<WriteResult>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

impl Query {
    /// Merges a patch into every row of the query (see [`Patch`]).
    pub fn update(&self, patch: impl Into<Patch>) -> Write {
        Write {
            target: Target::Query(Box::new(self.clone())),
            action: Action::Update(patch.into()),
            opts: Options::default(),
        }
    }

    /// Deletes every row of the query.
    pub fn delete(&self) -> Write {
        Write {
            target: Target::Query(Box::new(self.clone())),
            action: Action::Delete,
            opts: Options::default(),
        }
    }
}

/// Writes to one or more tables that commit together: all of them, or none.
///
/// The writes run in order under one hold of the commit lock and reach storage as one
/// crash-atomic batch: after a crash, all of it is there or none of it. If any write fails (a
/// key conflict, a patch that does not apply), nothing is written and the batch returns that
/// error. Updates and deletes of missing documents are not failures: they count as
/// `skipped`. A batch lists at most 4,096 writes ([`Error::BatchTooLarge`]); the rows that
/// its `update_where` / `delete_where` select are not limited (a delete that cascades to
/// 100,000 children is one batch).
///
/// What others observe of a batch while it commits:
/// - **Writers** never interleave with it (one commit lock).
/// - **Changefeeds** see it whole, as one step: per row, its value before the batch and
///   after it (see the crate README's feed guarantees).
/// - **Readers** (`get`, queries) are not isolated from it: storage applies the batch's keys
///   one after the other, so a read that runs during the commit may see some of the batch's
///   documents changed and others not yet. Each document is read whole, and a row returned
///   through a secondary index always satisfies the index condition when it is returned.
///   Read through a feed (or after the batch returns) for a consistent view.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::{Database, Error};
/// use serde_json::json;
/// let db = Database::temporary().await?;
/// db.create_table("ships").await?;
/// db.create_table("crew").await?;
/// db.batch()
///     .insert("ships", json!({"id": "defiant"}))
///     .insert("crew", json!({"id": "worf", "ship": "defiant"}))
///     .await?;
/// // A conflict anywhere writes nothing.
/// let failed = db.batch()
///     .delete("ships", "defiant")
///     .insert("crew", json!({"id": "worf"}))
///     .await;
/// assert!(matches!(failed, Err(Error::KeyConflict { .. })));
/// assert!(db.table("ships").get("defiant").await?.is_some());
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[must_use = "a batch does nothing until it is awaited"]
pub struct Batch {
    db: Database,
    ops: Vec<(String, BatchOp)>,
    opts: Options,
}

enum BatchOp {
    Insert(Value, OnConflict),
    Update(Value, Patch),
    Replace(Value, Value),
    Delete(Value),
    ReplaceWith(Value, Arc<ReplaceFn>),
    UpdateWhere(Box<Query>, Patch),
    DeleteWhere(Box<Query>),
    DeleteCascading(Value, References),
    DeleteWhereCascading(Box<Query>, References),
    RequireEmpty(Box<Query>, String),
    RequireExists(Value),
}

impl Database {
    /// Starts a batch of writes that commit together (see [`Batch`]).
    pub fn batch(&self) -> Batch {
        Batch {
            db: self.clone(),
            ops: Vec::new(),
            opts: Options::default(),
        }
    }
}

impl Batch {
    fn push(mut self, table: &str, op: BatchOp) -> Self {
        self.ops.push((table.to_string(), op));
        self
    }

    /// Inserts a document; a document with the same key fails the batch.
    pub fn insert(self, table: &str, doc: Value) -> Self {
        self.push(
            table,
            BatchOp::Insert(doc, OnConflict::Policy(Conflict::Error)),
        )
    }

    /// Inserts a document with a conflict policy.
    pub fn insert_with(self, table: &str, doc: Value, conflict: Conflict) -> Self {
        self.push(table, BatchOp::Insert(doc, OnConflict::Policy(conflict)))
    }

    /// Inserts a document; when one with the same key is stored at commit, stores what
    /// `resolve(stored, new)` makes of them instead (as [`crate::Insert::conflict_with`]:
    /// decided under the commit lock, against the row as it is then).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::Database;
    /// use serde_json::json;
    /// let db = Database::temporary().await?;
    /// db.create_table("crew").await?;
    /// db.table("crew").insert(json!({"id": "kim", "score": 1, "team": "red"})).await?;
    /// db.batch()
    ///     .insert_resolving("crew", json!({"id": "kim", "score": 7}), |stored, new| {
    ///         let mut doc = new.clone();
    ///         doc["team"] = stored["team"].clone();
    ///         Ok(doc)
    ///     })
    ///     .insert_resolving("crew", json!({"id": "tom", "score": 2}), |_, new| Ok(new.clone()))
    ///     .await?;
    /// assert_eq!(db.table("crew").get("kim").await?, Some(json!({"id": "kim", "score": 7, "team": "red"})));
    /// assert_eq!(db.table("crew").count().await?, 2);
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn insert_resolving(
        self,
        table: &str,
        doc: Value,
        resolve: impl Fn(&Value, &Value) -> Result<Value> + Send + Sync + 'static,
    ) -> Self {
        self.push(
            table,
            BatchOp::Insert(doc, OnConflict::Resolve(Arc::new(resolve))),
        )
    }

    /// Merges a patch into the document with this key.
    pub fn update(self, table: &str, key: impl Into<Value>, patch: impl Into<Patch>) -> Self {
        self.push(table, BatchOp::Update(key.into(), patch.into()))
    }

    /// Replaces the document with this key.
    pub fn replace(self, table: &str, key: impl Into<Value>, doc: Value) -> Self {
        self.push(table, BatchOp::Replace(key.into(), doc))
    }

    /// Deletes the document with this key.
    pub fn delete(self, table: &str, key: impl Into<Value>) -> Self {
        self.push(table, BatchOp::Delete(key.into()))
    }

    /// Replaces the document with this key by what `f` makes of it, under the commit lock
    /// (see [`crate::Get::replace_with`]); a missing document is skipped.
    pub fn replace_with(
        self,
        table: &str,
        key: impl Into<Value>,
        f: impl Fn(&Value) -> Result<Value> + Send + Sync + 'static,
    ) -> Self {
        self.push(table, BatchOp::ReplaceWith(key.into(), Arc::new(f)))
    }

    /// Deletes the document with this key and applies `refs` to the rows that refer to it,
    /// recursively (nullify, delete, or fail the batch: see [`References`]). The rows are
    /// selected when the batch commits, in the same commit: none that refers to a deleted
    /// row is left behind, whenever it was written. They are selected as the batch's earlier
    /// steps leave them: a row an earlier step moved away from the deleted row is not
    /// touched, one it moved onto it (or inserted referring to it) is. (`update_where` and
    /// `delete_where` select from the rows as they were before the batch.)
    pub fn delete_cascading(self, table: &str, key: impl Into<Value>, refs: &References) -> Self {
        self.push(table, BatchOp::DeleteCascading(key.into(), refs.clone()))
    }

    /// Merges a patch into every row of `query` (selected when the batch commits, from the
    /// data as it was before the batch).
    pub fn update_where(self, query: &Query, patch: impl Into<Patch>) -> Self {
        let table = query.table.to_string();
        self.push(
            &table,
            BatchOp::UpdateWhere(Box::new(query.clone()), patch.into()),
        )
    }

    /// Deletes every row of `query` (selected when the batch commits, from the data as it was
    /// before the batch).
    pub fn delete_where(self, query: &Query) -> Self {
        let table = query.table.to_string();
        self.push(&table, BatchOp::DeleteWhere(Box::new(query.clone())))
    }

    /// Deletes every row of `query` and applies `refs` to the rows that refer to them, as
    /// [`Batch::delete_cascading`] does for one key: the rows and what refers to them are
    /// selected when the batch commits, in that commit. The rows of `query` are selected as
    /// they were before the batch (as `delete_where` selects them); the rows that refer to
    /// them as the batch's earlier steps leave them (as `delete_cascading` selects them).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::{field, Database, IndexSpec, ReferenceAction, References};
    /// use serde_json::json;
    /// let db = Database::temporary().await?;
    /// db.create_table("ships").await?;
    /// db.create_table("crew").await?;
    /// db.table("crew").create_index("ship", IndexSpec::field("ship")).await?;
    /// let mut refs = References::new();
    /// refs.add("ships", "crew", "ship", ReferenceAction::Delete);
    /// db.table("ships").insert_many([json!({"id": "a", "old": true}), json!({"id": "b"})]).await?;
    /// db.table("crew").insert_many([json!({"id": 1, "ship": "a"}), json!({"id": 2, "ship": "b"})]).await?;
    /// let old = db.table("ships").filter(field("old").eq(true));
    /// db.batch().delete_where_cascading(&old, &refs).await?;
    /// assert_eq!(db.table("ships").count().await?, 1);
    /// assert_eq!(db.table("crew").run().await?, vec![json!({"id": 2, "ship": "b"})]);
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn delete_where_cascading(self, query: &Query, refs: &References) -> Self {
        let table = query.table.to_string();
        self.push(
            &table,
            BatchOp::DeleteWhereCascading(Box::new(query.clone()), refs.clone()),
        )
    }

    /// Fails the whole batch with [`Error::Precondition`] (`why`) if `query` has any row when
    /// the batch commits: a check and the writes that depend on it, in one commit.
    pub fn require_empty(self, query: &Query, why: impl Into<String>) -> Self {
        let table = query.table.to_string();
        self.push(
            &table,
            BatchOp::RequireEmpty(Box::new(query.clone()), why.into()),
        )
    }

    /// Fails the whole batch with [`Error::NotFound`] if the document with this key is not
    /// there when the batch commits (before the batch's own writes), or if another step of
    /// the batch deletes it (what refers to it would be left behind). A requirement put
    /// just before a write or delete of the same document is that write's own (the batch
    /// may update a document and then delete it), unless a step before it deleted the
    /// document: then it fails, at its step.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::{Database, Error};
    /// use serde_json::json;
    /// let db = Database::temporary().await?;
    /// db.create_table("ships").await?;
    /// db.create_table("crew").await?;
    /// // Join a ship's crew only if the ship is still there.
    /// let joined = db.batch()
    ///     .require_exists("ships", "defiant")
    ///     .insert("crew", json!({"id": "worf", "ship": "defiant"}))
    ///     .await;
    /// assert!(matches!(joined, Err(Error::NotFound { .. })));
    /// assert_eq!(db.table("crew").count().await?, 0);
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn require_exists(self, table: &str, key: impl Into<Value>) -> Self {
        self.push(table, BatchOp::RequireExists(key.into()))
    }

    /// Also return the `{old_val, new_val}` of each write.
    pub fn return_changes(mut self, yes: bool) -> Self {
        self.opts.return_changes = yes;
        self
    }

    /// The durability of this batch (default: the database's).
    pub fn durability(mut self, d: Durability) -> Self {
        self.opts.durability = Some(d);
        self
    }

    /// The depth-limit error of a document, key or patch of the batch, if any.
    fn too_deep(&self) -> Option<Error> {
        use crate::value::check_depth;
        self.ops.iter().enumerate().find_map(|(i, (_, op))| {
            let what = |w: &str| format!("{w} of write #{i} of the batch");
            let checked = match op {
                BatchOp::Insert(doc, _) => check_depth(doc, &what("document")),
                BatchOp::Update(key, patch) => {
                    check_depth(key, &what("primary key")).and_then(|()| patch.check_depth())
                }
                BatchOp::Replace(key, doc) => check_depth(key, &what("primary key"))
                    .and_then(|()| check_depth(doc, &what("document"))),
                BatchOp::Delete(key)
                | BatchOp::ReplaceWith(key, _)
                | BatchOp::DeleteCascading(key, _)
                | BatchOp::RequireExists(key) => check_depth(key, &what("primary key")),
                BatchOp::UpdateWhere(_, patch) => patch.check_depth(),
                BatchOp::DeleteWhere(_)
                | BatchOp::DeleteWhereCascading(..)
                | BatchOp::RequireEmpty(..) => Ok(()),
            };
            checked.err()
        })
    }

    /// Drops a refused batch without recursing through its values.
    fn dispose(self) {
        use crate::value::drop_deep;
        let merge = |p: Patch| {
            if let Patch(PatchKind::Merge(v)) = p {
                drop_deep(v)
            }
        };
        for (_, op) in self.ops {
            match op {
                BatchOp::Insert(doc, _)
                | BatchOp::Delete(doc)
                | BatchOp::ReplaceWith(doc, _)
                | BatchOp::DeleteCascading(doc, _)
                | BatchOp::RequireExists(doc) => drop_deep(doc),
                BatchOp::Update(key, patch) => {
                    drop_deep(key);
                    merge(patch);
                }
                BatchOp::Replace(key, doc) => {
                    drop_deep(key);
                    drop_deep(doc);
                }
                BatchOp::UpdateWhere(_, patch) => merge(patch),
                BatchOp::DeleteWhere(_)
                | BatchOp::DeleteWhereCascading(..)
                | BatchOp::RequireEmpty(..) => {}
            }
        }
    }

    async fn run(self) -> Result<WriteResult> {
        crate::db::check_not_in_patch()?;
        if let Some(e) = self.too_deep() {
            self.dispose();
            return Err(e);
        }
        if self.ops.len() > BATCH_MAX {
            return Err(Error::BatchTooLarge {
                max: BATCH_MAX,
                got: self.ops.len(),
            });
        }
        let db = self.db;
        // A table this store lacks may be one another process created that it has not
        // applied yet: caught up first (see `Database::checked_in_sync`).
        if let Some(b) = db.backend() {
            let missing =
                |name: &String| matches!(db.table_state(name), Err(Error::NoSuchTable(_)));
            if self.ops.iter().any(|(name, _)| missing(name)) {
                b.sync().await?;
            }
        }
        let mut generated = Vec::new();
        let mut steps = Vec::with_capacity(self.ops.len());
        // Everything is checked before anything is written; queries are planned here and run
        // under the commit lock.
        for (name, op) in self.ops {
            let table = || db.table(name.as_str()).state();
            let step = match op {
                BatchOp::Insert(doc, conflict) => {
                    let t = table()?;
                    let op = db
                        .prepare_inserts(&t, vec![doc], conflict, &mut generated)?
                        .remove(0);
                    Step::Write(t, op)
                }
                BatchOp::Update(key, patch) => Step::Write(
                    table()?,
                    WriteOp::Update {
                        key: encode_key(&key)?,
                        patch,
                    },
                ),
                BatchOp::Replace(key, doc) => {
                    let (t, enc) = (table()?, encode_key(&key)?);
                    let doc = replacement(&t, &key, &enc, doc)?;
                    Step::Write(t, WriteOp::Replace { key: enc, doc })
                }
                BatchOp::Delete(key) => Step::Write(
                    table()?,
                    WriteOp::Delete {
                        key: encode_key(&key)?,
                    },
                ),
                BatchOp::ReplaceWith(key, f) => Step::Write(
                    table()?,
                    WriteOp::ReplaceWith {
                        key: encode_key(&key)?,
                        f,
                    },
                ),
                BatchOp::DeleteCascading(key, refs) => {
                    encode_key(&key)?;
                    Step::DeleteCascading(db.clone(), table()?, key, refs)
                }
                BatchOp::RequireExists(key) => {
                    let enc = encode_key(&key)?;
                    Step::RequireExists(table()?, enc, key)
                }
                BatchOp::UpdateWhere(q, patch) => Step::Where(planned(&q)?, Some(patch)),
                BatchOp::DeleteWhere(q) => Step::Where(planned(&q)?, None),
                BatchOp::DeleteWhereCascading(q, refs) => {
                    Step::WhereCascading(db.clone(), planned(&q)?, refs)
                }
                BatchOp::RequireEmpty(q, why) => Step::RequireEmpty(planned(&q)?, why),
            };
            steps.push(step);
        }
        // A batch is one atomic commit: its index work under the commit lock is bounded.
        let work: usize = steps
            .iter()
            .map(|s| match s {
                Step::Write(t, op) => crate::db::write::op_index_work(t, op),
                Step::Where(..)
                | Step::DeleteCascading(..)
                | Step::WhereCascading(..)
                | Step::RequireEmpty(..)
                | Step::RequireExists(..) => 0,
            })
            .sum();
        let max = crate::db::write::MAX_COMMIT_INDEX_WORK;
        if work > max {
            return Err(Error::TooLarge {
                what: "index entries written by one batch".into(),
                size: work,
                limit: max,
            });
        }
        let how = Commit {
            return_changes: self.opts.return_changes,
            all_or_nothing: true,
            hard: db.is_hard(self.opts.durability),
        };
        if let Some(backend) = db.backend() {
            let job = Job::Locked {
                tables: step_tables(&steps),
                select: Box::new(move || expand(steps)),
            };
            let mut result = backend.commit(db.clone(), job, how).await?;
            result.generated_keys = generated;
            return Ok(result);
        }
        let inner = db.inner.clone();
        let mut result = crate::db::spawn_write(move |abandoned| {
            let mut result = WriteResult::default();
            let select = || {
                abandoned.check()?;
                expand(steps)
            };
            inner
                .commit_locked(select, how, &mut result)
                .map(|()| result)
        })
        .await?;
        db.settle(self.opts.durability).await?;
        result.generated_keys = generated;
        Ok(result)
    }
}

/// The most writes one batch commits.
const BATCH_MAX: usize = 4096;

/// A batch write, ready to commit.
enum Step {
    Write(Arc<TableState>, WriteOp),
    /// Update (with the patch) or delete every row of the plan.
    Where(Plan, Option<Patch>),
    /// Delete a row and what refers to it.
    DeleteCascading(Database, Arc<TableState>, Value, References),
    /// Delete every row of the plan and what refers to them.
    WhereCascading(Database, Plan, References),
    RequireEmpty(Plan, String),
    /// The document with this (encoded) key must exist.
    RequireExists(Arc<TableState>, Vec<u8>, Value),
}

/// The tables a batch's steps may read or write, sorted, once each.
fn step_tables(steps: &[Step]) -> Vec<String> {
    let mut names = Vec::new();
    for step in steps {
        match step {
            Step::Write(t, _) | Step::RequireExists(t, ..) => names.push(t.name.clone()),
            Step::Where(plan, _) | Step::RequireEmpty(plan, _) => {
                names.push(plan.table.name.clone())
            }
            Step::DeleteCascading(_, t, _, refs) => {
                names.push(t.name.clone());
                names.extend(refs.tables().map(str::to_string));
            }
            Step::WhereCascading(_, plan, refs) => {
                names.push(plan.table.name.clone());
                names.extend(refs.tables().map(str::to_string));
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn planned(q: &Query) -> Result<Plan> {
    if q.source == super::Source::Stats {
        return Err(Error::query("the stats table is read-only"));
    }
    q.plan()
}

/// Turns the steps into writes, running their queries (under the commit lock).
///
/// A row a step requires must exist when the batch commits (stored), and not be deleted by
/// a step before it (checked at its step: a batch's errors come in the order of its steps).
/// A row required as another's reference (a parent a child is added to, a side of a link)
/// must also be deleted by no step after it: a cascade selects the children as the steps
/// before it leave them, so a child a later step adds to a row it deletes would be left
/// behind. (A requirement just before a write of the same row is that write's own: a batch
/// may update a row and then delete it.)
fn expand(steps: Vec<Step>) -> Result<Vec<(Arc<TableState>, WriteOp)>> {
    let mut ops = Vec::with_capacity(steps.len());
    // Each required row, and whether the step after its requirement writes that row.
    let mut required = Vec::new();
    // A cascade after other writes selects from the rows as those leave them (its own
    // writes are seen by the steps after it), previewed up to the last cascade (a write's
    // closures run once more for it, and only when a cascade comes after it).
    let (mut batch, last_cascade) = match previewed(&steps) {
        Some((db, last)) => (Some(Preview::new(db)), last),
        None => (None, 0),
    };
    let mut applied = 0;
    // The rows the steps so far leave deleted: a requirement after a row's delete is not
    // met, whether or not the step after it writes the row. (Kept only for a batch with
    // requirements.)
    let mut gone = steps
        .iter()
        .any(|s| matches!(s, Step::RequireExists(..)))
        .then(Gone::default);
    let mut steps = steps.into_iter().enumerate().peekable();
    while let Some((at, step)) = steps.next() {
        if let Some(gone) = &mut gone {
            gone.note(&ops);
        }
        if at > last_cascade {
            batch = None;
        }
        if let Some(preview) = &mut batch {
            for (t, op) in &ops[applied..] {
                preview.apply(t, op)?;
            }
            applied = ops.len();
        }
        match step {
            Step::Write(t, op) => ops.push((t, op)),
            Step::Where(plan, patch) => {
                let mut seen = std::collections::HashSet::new();
                for row in plan.rows() {
                    let key = row?.key.to_vec();
                    if seen.insert(key.clone()) {
                        let op = match &patch {
                            Some(p) => WriteOp::Update {
                                key,
                                patch: p.clone(),
                            },
                            None => WriteOp::Delete { key },
                        };
                        ops.push((plan.table.clone(), op));
                    }
                }
            }
            Step::DeleteCascading(db, table, key, refs) => {
                super::cascade::expand_delete(&db, table, key, &refs, batch.as_ref(), &mut ops)?
            }
            Step::WhereCascading(db, plan, refs) => {
                let pk = plan.table.primary_key.clone();
                let mut keys = Vec::new();
                for row in plan.rows() {
                    let row = row?;
                    if let Some(k) = row.doc.get(&pk) {
                        keys.push(k.clone());
                    }
                }
                let table = plan.table.clone();
                super::cascade::expand_deletes(&db, table, keys, &refs, batch.as_ref(), &mut ops)?
            }
            Step::RequireEmpty(plan, why) => {
                if plan.rows().next().transpose()?.is_some() {
                    return Err(Error::Precondition(why));
                }
            }
            Step::RequireExists(table, enc, key) => {
                // Missing, or deleted by a step before: refused at this step (errors come in
                // the order of the steps); deleted by a later step: below, once all are known.
                let deleted = gone.as_ref().is_some_and(|g| g.has(&table, &enc));
                if deleted || table.get_doc(&enc)?.is_none() {
                    return Err(Error::NotFound {
                        table: table.name.clone(),
                        key,
                    });
                }
                let own = match steps.peek() {
                    // Keys compared encoded (`1` and `1.0` are one key).
                    Some((_, Step::DeleteCascading(_, t, k, _))) => {
                        t.name == table.name && encode_key(k).is_ok_and(|k| k == enc)
                    }
                    Some((_, Step::Write(t, op))) => {
                        t.name == table.name && op_key(op) == Some(&enc)
                    }
                    _ => false,
                };
                required.push((table, enc, key, own));
            }
        }
    }
    // The rows the batch deletes, by table and key (looked up once per requirement: a batch
    // holds up to BATCH_MAX steps).
    let deleted: std::collections::HashSet<(&str, &[u8])> = ops
        .iter()
        .filter_map(|(t, op)| match op {
            WriteOp::Delete { key } => Some((t.name.as_str(), key.as_slice())),
            _ => None,
        })
        .collect();
    for (table, enc, key, own) in required {
        if !own && deleted.contains(&(table.name.as_str(), enc.as_slice())) {
            return Err(Error::NotFound {
                table: table.name.clone(),
                key,
            });
        }
    }
    Ok(ops)
}

/// When a cascading delete comes after a step that writes (only then does a cascade need
/// the batch's rows as they are at its step): the database, and the last cascade's step.
fn previewed(steps: &[Step]) -> Option<(&Database, usize)> {
    let cascade = |s: &Step| matches!(s, Step::DeleteCascading(..) | Step::WhereCascading(..));
    let first_write = steps
        .iter()
        .position(|s| matches!(s, Step::Write(..) | Step::Where(..)) || cascade(s))?;
    let last = steps.iter().rposition(cascade)?;
    let db = steps[first_write + 1..=last].iter().find_map(|s| match s {
        Step::DeleteCascading(db, ..) | Step::WhereCascading(db, ..) => Some(db),
        _ => None,
    })?;
    Some((db, last))
}

/// The rows a batch's steps so far leave deleted, by table and key (a delete, undone by an
/// insert of the key after it: other writes of a missing row are skipped).
#[derive(Default)]
struct Gone {
    /// Table name -> keys.
    rows: std::collections::HashMap<String, std::collections::HashSet<Vec<u8>>>,
    /// How many of the batch's writes it has looked at.
    seen: usize,
}

impl Gone {
    /// Takes in the writes added since it last looked.
    fn note(&mut self, ops: &[(Arc<TableState>, WriteOp)]) {
        for (t, op) in &ops[self.seen..] {
            match op {
                WriteOp::Delete { key } => {
                    self.rows
                        .entry(t.name.clone())
                        .or_default()
                        .insert(key.clone());
                }
                WriteOp::Insert { doc, .. } => {
                    if let (Some(keys), Ok(key)) = (self.rows.get_mut(&t.name), t.key_of(doc)) {
                        keys.remove(&key);
                    }
                }
                _ => {}
            }
        }
        self.seen = ops.len();
    }

    fn has(&self, table: &TableState, key: &[u8]) -> bool {
        self.rows
            .get(&table.name)
            .is_some_and(|keys| keys.contains(key))
    }
}

/// The key of the row a write names (an insert's is in its document).
fn op_key(op: &WriteOp) -> Option<&Vec<u8>> {
    match op {
        WriteOp::Insert { .. } => None,
        WriteOp::Update { key, .. }
        | WriteOp::Replace { key, .. }
        | WriteOp::ReplaceWith { key, .. }
        | WriteOp::Delete { key } => Some(key),
    }
}

impl IntoFuture for Batch {
    type Output = Result<WriteResult>;
    type IntoFuture = BoxFuture<Self::Output>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
