//! What deleting a row does to the rows that refer to it, decided in the commit that deletes
//! it (see [`crate::Batch::delete_cascading`]).
//!
//! The rows that refer to a deleted row are selected under the commit lock, in the same
//! commit as the delete: a row that starts referring to it just before the commit is found
//! too, and nothing can start referring to it after the commit without seeing it gone. A
//! cascade follows the references of the rows it deletes, table by table, in that commit.

use super::plan::Row;
use crate::db::write::{Preview, WriteOp};
use crate::db::{Database, Patch, TableState};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What happens to a row that refers to a deleted row.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReferenceAction {
    /// Its reference field becomes `null`.
    Nullify,
    /// It is deleted too, and so are the rows that refer to it (following their own
    /// references).
    Delete,
    /// The delete fails with [`Error::Restricted`] (saying `why`, and how many rows refer to
    /// it) while such a row exists.
    Restrict {
        /// The precondition error's text.
        why: String,
    },
}

/// One reference: rows of `table` hold the key of a row of another table in `field`, which
/// an index of the same name covers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reference {
    table: String,
    field: String,
    action: ReferenceAction,
}

/// The references between tables that a cascading delete follows: for each table, the
/// fields of other tables that hold its keys, and what deleting a row does to the rows that
/// refer to it. Cheap to clone (shared).
///
/// A reference from a table that does not exist is skipped (it has no rows); a reference
/// whose index does not exist fails the delete ([`Error::NoSuchIndex`]).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use remodel::{Database, IndexSpec, ReferenceAction, References};
/// use serde_json::json;
/// let db = Database::temporary().await?;
/// db.create_table("ships").await?;
/// db.create_table("crew").await?;
/// db.table("crew").create_index("ship", IndexSpec::field("ship")).await?;
/// let mut refs = References::new();
/// refs.add("ships", "crew", "ship", ReferenceAction::Delete);
/// db.table("ships").insert(json!({"id": "defiant"})).await?;
/// db.table("crew").insert(json!({"id": "worf", "ship": "defiant"})).await?;
/// let r = db.batch().delete_cascading("ships", "defiant", &refs).await?;
/// assert_eq!(r.deleted, 2);
/// # Ok::<(), remodel::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct References {
    by_target: Arc<HashMap<String, Vec<Reference>>>,
}

impl References {
    /// No references.
    pub fn new() -> Self {
        References::default()
    }

    /// Rows of `table` refer to rows of `target` by their key in `field` (indexed by an
    /// index named `field`); deleting a row of `target` does `action` to them. Adding the
    /// same `(target, table, field)` twice keeps the first action.
    pub fn add(
        &mut self,
        target: &str,
        table: &str,
        field: &str,
        action: ReferenceAction,
    ) -> &mut Self {
        let refs = Arc::make_mut(&mut self.by_target)
            .entry(target.to_string())
            .or_default();
        if !refs.iter().any(|r| r.table == table && r.field == field) {
            refs.push(Reference {
                table: table.to_string(),
                field: field.to_string(),
                action,
            });
        }
        self
    }

    /// Whether a reference from `table.field` to `target` is listed.
    pub fn contains(&self, target: &str, table: &str, field: &str) -> bool {
        self.by_target
            .get(target)
            .is_some_and(|refs| refs.iter().any(|r| r.table == table && r.field == field))
    }

    /// Every table named, as a target or as referring (what a cascade may write).
    pub(crate) fn tables(&self) -> impl Iterator<Item = &str> {
        self.by_target.iter().flat_map(|(target, refs)| {
            std::iter::once(target.as_str()).chain(refs.iter().map(|r| r.table.as_str()))
        })
    }

    fn of(&self, target: &str) -> &[Reference] {
        self.by_target.get(target).map_or(&[], Vec::as_slice)
    }
}

/// Under the commit lock: the writes that delete `key` of `table` and apply `refs` to
/// what refers to it, recursively. Every selection reads the rows as stored, as the batch's
/// earlier steps leave them when `batch` has those steps' writes.
pub(crate) fn expand_delete(
    db: &Database,
    table: Arc<TableState>,
    key: Value,
    refs: &References,
    batch: Option<&Preview>,
    ops: &mut Vec<(Arc<TableState>, WriteOp)>,
) -> Result<()> {
    expand_deletes(db, table, vec![key], refs, batch, ops)
}

/// The rows of the plan's table that hold one of `keys` in the indexed `field`, each once
/// (a multi index has a row once per matching value): as stored, and as the batch's earlier
/// writes leave them (a row the batch wrote is taken as written).
fn referring_rows(
    plan: &super::plan::Plan,
    field: &str,
    keys: &[Value],
    batch: Option<&Preview>,
) -> Result<Vec<Row>> {
    let written = batch.map(|b| b.written(&plan.table)).unwrap_or_default();
    let rewritten: HashSet<&[u8]> = written.iter().map(|(k, _)| *k).collect();
    let mut once: HashSet<Vec<u8>> = HashSet::new();
    let mut rows = Vec::new();
    for row in plan.rows() {
        let row = row?;
        if !rewritten.contains(&row.key[..]) && once.insert(row.key.to_vec()) {
            rows.push(row);
        }
    }
    if written.is_empty() {
        return Ok(rows);
    }
    let ix = plan.table.index(field)?;
    let wanted: HashSet<Vec<u8>> = keys.iter().map(crate::value::encode_value).collect();
    for (key, doc) in written {
        let Some(doc) = doc else { continue };
        let values = ix.compiled.values(doc);
        if values
            .iter()
            .any(|v| wanted.contains(&crate::value::encode_value(v)))
        {
            rows.push(Row {
                key: key.to_vec().into(),
                doc: (**doc).clone(),
            });
        }
    }
    Ok(rows)
}

/// [`expand_delete`] for several keys of one table at once (each row deleted once, however
/// many ways the cascade reaches it).
pub(crate) fn expand_deletes(
    db: &Database,
    table: Arc<TableState>,
    keys: Vec<Value>,
    refs: &References,
    batch: Option<&Preview>,
    ops: &mut Vec<(Arc<TableState>, WriteOp)>,
) -> Result<()> {
    let mut deleted: HashSet<(String, Vec<u8>)> = HashSet::new();
    let mut first = Vec::with_capacity(keys.len());
    for key in keys {
        let enc = crate::value::encode_key(&key)?;
        if deleted.insert((table.name.clone(), enc.clone())) {
            ops.push((table.clone(), WriteOp::Delete { key: enc }));
            first.push(key);
        }
    }
    if first.is_empty() {
        return Ok(());
    }
    // Tables whose deleted keys still have references to follow.
    let mut work: Vec<(Arc<TableState>, Vec<Value>)> = vec![(table, first)];
    while let Some((target, keys)) = work.pop() {
        for r in refs.of(&target.name) {
            let query = db
                .table(r.table.as_str())
                .get_all(keys.clone())
                .index(r.field.as_str());
            let plan = match query.plan() {
                Ok(plan) => plan,
                // No table, no rows that refer.
                Err(Error::NoSuchTable(_)) => continue,
                Err(e) => return Err(e),
            };
            let referring = &plan.table;
            let rows = referring_rows(&plan, &r.field, &keys, batch)?;
            match &r.action {
                ReferenceAction::Restrict { why } => {
                    if !rows.is_empty() {
                        return Err(Error::Restricted {
                            table: target.name.clone(),
                            referenced_by: r.table.clone(),
                            field: r.field.clone(),
                            rows: rows.len() as u64,
                            why: why.clone(),
                        });
                    }
                }
                ReferenceAction::Nullify => {
                    let patch = Patch::merge(json!({ r.field.as_str(): null }));
                    for Row { key, .. } in rows {
                        let op = WriteOp::Update {
                            key: key.to_vec(),
                            patch: patch.clone(),
                        };
                        ops.push((referring.clone(), op));
                    }
                }
                ReferenceAction::Delete => {
                    let mut next = Vec::new();
                    for Row { key, doc } in rows {
                        if deleted.insert((referring.name.clone(), key.to_vec())) {
                            ops.push((referring.clone(), WriteOp::Delete { key: key.to_vec() }));
                            if let Some(k) = doc.get(&referring.primary_key) {
                                next.push(k.clone());
                            }
                        }
                    }
                    if !next.is_empty() && !refs.of(&referring.name).is_empty() {
                        work.push((referring.clone(), next));
                    }
                }
            }
        }
    }
    Ok(())
}
