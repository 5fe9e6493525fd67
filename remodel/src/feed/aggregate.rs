//! Live aggregates: `count`, `sum`, `avg`, `min`, `max`, optionally after `group(field)` or
//! `group_by_index(name)`, over a table, a `get_all` or a `between`, with filters.
//!
//! The groups are kept in memory and maintained per commit: a change removes the old
//! document's contributions and adds the new one's, so a write costs work for the groups it
//! touches, never a re-run. Each commit is applied as one step (like top-N sets): a group is
//! reported once per commit, comparing its value before and after the commit.
//!
//! `min` / `max` keep each group's best row; when it leaves, the group is refilled by reading
//! an index on the field from its extreme end (the index is required: a feed without one is
//! refused). Ties go to the row with the smallest primary key.

use super::change::Change;
use super::spec::{Matcher, View};
use crate::db::write::Committed;
use crate::db::{IndexState, TableState};
use crate::value::{compare, encode_value, FieldPath};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

pub(crate) use crate::query::ReduceKind;

/// How rows are grouped.
#[derive(Clone)]
pub(crate) enum By {
    Field(FieldPath),
    Index(Arc<IndexState>),
}

/// A watched aggregate and the query whose rows it reduces (read when its group is made).
#[derive(Clone)]
pub(crate) struct AggPlan {
    pub def: AggDef,
    pub source: crate::query::Query,
}

/// A watchable aggregate: grouping, reduction and (min/max) the index that refills it.
#[derive(Clone)]
pub(crate) struct AggDef {
    pub by: Option<By>,
    pub reduce: ReduceKind,
    pub field: Option<FieldPath>,
    /// min / max: an index on `field` (ascending keys: value, then primary key).
    pub extreme: Option<Arc<IndexState>>,
}

impl AggDef {
    /// Checks the definition against the table; finds the index min/max need.
    pub(crate) fn resolve(
        table: &TableState,
        by: Option<(&str, bool)>,
        reduce: ReduceKind,
        field: Option<&str>,
    ) -> Result<Self> {
        let by = match by {
            None => None,
            Some((name, true)) => Some(By::Index(table.index(name)?)),
            Some((path, false)) => Some(By::Field(FieldPath::parse(path)?)),
        };
        let field = field.map(FieldPath::parse).transpose()?;
        let extreme =
            match (reduce, &field) {
                (ReduceKind::Min | ReduceKind::Max, Some(f)) => {
                    let name = f.to_string();
                    let ix = table
                        .indexes
                        .read()
                        .iter()
                        .find(|ix| {
                            !ix.spec.is_multi()
                                && !ix.spec.is_compound()
                                && ix.spec.fields().first().map(String::as_str)
                                    == Some(name.as_str())
                        })
                        .cloned();
                    match ix {
                        Some(ix) => Some(ix),
                        None => {
                            return Err(Error::unwatchable(format!(
                            "a live {} of `{name}` needs an index on `{name}` (to find the next \
                             row when the current one leaves): create one with \
                             IndexSpec::field(\"{name}\")",
                            if reduce == ReduceKind::Min { "min" } else { "max" }
                        )))
                        }
                    }
                }
                _ => None,
            };
        Ok(AggDef {
            by,
            reduce,
            field,
            extreme,
        })
    }

    /// What tells this aggregate apart from others over the same rows (group signatures).
    pub(crate) fn signature(&self) -> String {
        let by = match &self.by {
            None => String::new(),
            Some(By::Field(p)) => format!("field:{p}"),
            Some(By::Index(ix)) => format!("index:{}", ix.name),
        };
        let field = self
            .field
            .as_ref()
            .map(|f| f.to_string())
            .unwrap_or_default();
        format!("agg|{:?}|{by}|{field}", self.reduce)
    }
}

/// A group's best row (min / max).
struct Best {
    value: Value,
    pk: Vec<u8>,
    doc: Arc<Value>,
}

struct Acc {
    group: Value,
    /// Row contributions in the group (a row in it twice counts twice).
    rows: u64,
    /// Rows counted (count) or rows with a number (sum, avg).
    count: u64,
    total: f64,
    best: Option<Best>,
    /// The group's row as last shown (rebuilt once per commit that touches the group).
    shown: Option<Arc<Value>>,
}

impl Acc {
    /// An empty group.
    fn new(group: Value) -> Self {
        Acc {
            group,
            rows: 0,
            count: 0,
            total: 0.0,
            best: None,
            shown: None,
        }
    }
}

/// A live aggregate's state.
pub(crate) struct LiveAgg {
    table: Arc<TableState>,
    def: AggDef,
    /// Groups by the encoding of their value (one group, keyed by nothing, when ungrouped).
    groups: BTreeMap<Vec<u8>, Acc>,
    /// The groups whose best row (min, max) left during the commit being applied: refilled
    /// from the index once the commit is. A set, not a flag per group, so that a commit
    /// costs in proportion to the groups it touches, not to all of them.
    stale: BTreeSet<Vec<u8>>,
}

impl LiveAgg {
    /// Builds the state from the current rows (as the query sees them, with their keys).
    /// Called under the commit lock.
    pub(crate) fn load(
        table: Arc<TableState>,
        (matcher, view): (&Matcher, &View),
        def: AggDef,
        rows: impl Iterator<Item = Result<(Vec<u8>, Value)>>,
    ) -> Result<Self> {
        let mut agg = LiveAgg {
            table,
            def,
            groups: BTreeMap::new(),
            stale: BTreeSet::new(),
        };
        if agg.ungrouped() {
            // An ungrouped aggregate always has its one value (0, null), rows or not.
            agg.groups.insert(Vec::new(), Acc::new(Value::Null));
        }
        for row in rows {
            let (pk, doc) = row?;
            let doc = Arc::new(doc);
            agg.add(&pk, &doc)?;
        }
        agg.refill(matcher, view)?;
        let keys: Vec<Vec<u8>> = agg.groups.keys().cloned().collect();
        for k in keys {
            agg.reshow(&k);
        }
        Ok(agg)
    }

    /// The index a live min/max refills from.
    pub(crate) fn extreme_index(&self) -> Option<&str> {
        self.def.extreme.as_ref().map(|ix| ix.name.as_str())
    }

    fn ungrouped(&self) -> bool {
        self.def.by.is_none()
    }

    /// The groups a seen row is in (a multi index: one per distinct value).
    fn groups_of(&self, seen: &Value) -> Vec<Value> {
        match &self.def.by {
            None => vec![Value::Null],
            Some(By::Field(p)) => vec![p.get(seen).cloned().unwrap_or(Value::Null)],
            Some(By::Index(ix)) => ix.compiled.values(seen),
        }
    }

    fn key_of(&self, group: &Value) -> Vec<u8> {
        if self.ungrouped() {
            Vec::new()
        } else {
            encode_value(group)
        }
    }

    fn number(&self, seen: &Value) -> Result<Option<f64>> {
        let Some(path) = &self.def.field else {
            return Ok(None);
        };
        match path.get(seen) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n.as_f64().unwrap_or(0.0))),
            Some(other) => Err(Error::query(format!(
                "{} of `{path}`: {other} is not a number",
                if self.def.reduce == ReduceKind::Sum {
                    "sum"
                } else {
                    "avg"
                }
            ))),
        }
    }

    /// Whether (value, pk) beats the group's best row.
    fn beats(&self, value: &Value, pk: &[u8], best: &Best) -> bool {
        let want = if self.def.reduce == ReduceKind::Min {
            Ordering::Less
        } else {
            Ordering::Greater
        };
        match compare(value, &best.value) {
            Ordering::Equal => pk < best.pk.as_slice(),
            o => o == want,
        }
    }

    fn add(&mut self, pk: &[u8], seen: &Arc<Value>) -> Result<()> {
        let num = match self.def.reduce {
            ReduceKind::Sum | ReduceKind::Avg => self.number(seen)?,
            _ => None,
        };
        let extreme = match (self.def.reduce, &self.def.field) {
            (ReduceKind::Min | ReduceKind::Max, Some(p)) => p.get(seen).cloned(),
            _ => None,
        };
        for g in self.groups_of(seen) {
            let k = self.key_of(&g);
            let acc = self.groups.entry(k.clone()).or_insert_with(|| Acc::new(g));
            acc.rows += 1;
            match self.def.reduce {
                ReduceKind::Count => acc.count += 1,
                ReduceKind::Sum | ReduceKind::Avg => {
                    if let Some(x) = num {
                        acc.total += x;
                        acc.count += 1;
                    }
                }
                ReduceKind::Min | ReduceKind::Max => {}
            }
            if let Some(v) = &extreme {
                if self.stale.contains(&k) {
                    continue; // the refill reads the rows as they are after the commit
                }
                let acc = &self.groups[&k];
                let better = acc.best.as_ref().is_none_or(|b| self.beats(v, pk, b));
                if better {
                    let acc = self.groups.get_mut(&k).expect("inserted above");
                    acc.best = Some(Best {
                        value: v.clone(),
                        pk: pk.to_vec(),
                        doc: seen.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn remove(&mut self, pk: &[u8], seen: &Arc<Value>) -> Result<()> {
        let num = match self.def.reduce {
            ReduceKind::Sum | ReduceKind::Avg => self.number(seen)?,
            _ => None,
        };
        let ungrouped = self.ungrouped();
        for g in self.groups_of(seen) {
            let k = self.key_of(&g);
            let Some(acc) = self.groups.get_mut(&k) else {
                continue;
            };
            acc.rows = acc.rows.saturating_sub(1);
            match self.def.reduce {
                ReduceKind::Count => acc.count = acc.count.saturating_sub(1),
                ReduceKind::Sum | ReduceKind::Avg => {
                    if let Some(x) = num {
                        acc.total -= x;
                        acc.count = acc.count.saturating_sub(1);
                    }
                }
                ReduceKind::Min | ReduceKind::Max => {
                    if acc.best.as_ref().is_some_and(|b| b.pk == pk) {
                        acc.best = None;
                        self.stale.insert(k.clone());
                    }
                }
            }
            if acc.rows == 0 && !ungrouped {
                self.groups.remove(&k);
                self.stale.remove(&k);
            } else if acc.rows == 0 {
                // The one group of an ungrouped aggregate stays, empty.
                acc.total = 0.0;
                acc.count = 0;
                acc.best = None;
                self.stale.remove(&k);
            }
        }
        Ok(())
    }

    /// Refills the groups whose best row left, from the index on the field: the first
    /// qualifying row from the extreme end (for max, the smallest key among the largest
    /// values).
    fn refill(&mut self, matcher: &Matcher, view: &View) -> Result<()> {
        // Taken: whatever this does not refill has no qualifying row left with the field.
        let mut stale = std::mem::take(&mut self.stale);
        if stale.is_empty() {
            return Ok(());
        }
        let refilled = self.refill_from_index(&mut stale, matcher, view);
        if refilled.is_err() {
            // A storage error part way: the groups not refilled yet stay to be refilled.
            self.stale = stale;
        }
        refilled
    }

    /// [`LiveAgg::refill`]'s scan: takes the groups it refills out of `stale`.
    fn refill_from_index(
        &mut self,
        stale: &mut BTreeSet<Vec<u8>>,
        matcher: &Matcher,
        view: &View,
    ) -> Result<()> {
        let Some(ix) = self.def.extreme.clone() else {
            return Ok(());
        };
        let table = self.table.clone();
        let field = self.def.field.clone().expect("min/max have a field");
        let it = ix.tree.range(Bound::Unbounded, Bound::Unbounded);
        let it: Box<dyn Iterator<Item = _>> = if self.def.reduce == ReduceKind::Max {
            Box::new(it.rev())
        } else {
            Box::new(it)
        };
        for entry in it {
            if stale.is_empty() {
                break;
            }
            let (_, pk) = entry?;
            let Some(bytes) = table.docs.get(&pk)? else {
                continue;
            };
            let doc = table.parse_doc(&bytes)?;
            if matcher.count(&pk, &doc) == 0 {
                continue;
            }
            let Some(seen) = view.apply(&Arc::new(doc)) else {
                continue;
            };
            let Some(v) = field.get(&seen).cloned() else {
                continue;
            };
            for g in self.groups_of(&seen) {
                let k = self.key_of(&g);
                if !stale.contains(&k) {
                    continue;
                }
                let acc = self.groups.get_mut(&k).expect("stale groups exist");
                match &acc.best {
                    // Descending: a later row of the same value has a smaller key.
                    Some(b) if compare(&b.value, &v) != Ordering::Equal => {
                        stale.remove(&k);
                        continue;
                    }
                    _ => {}
                }
                acc.best = Some(Best {
                    value: v.clone(),
                    pk: pk.to_vec(),
                    doc: seen.clone(),
                });
                if self.def.reduce == ReduceKind::Min {
                    stale.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn reduction(&self, a: &Acc) -> Value {
        match self.def.reduce {
            ReduceKind::Count => json!(a.count),
            ReduceKind::Sum => json!(a.total),
            ReduceKind::Avg if a.count == 0 => Value::Null,
            ReduceKind::Avg => json!(a.total / a.count as f64),
            ReduceKind::Min | ReduceKind::Max => {
                a.best.as_ref().map_or(Value::Null, |b| (*b.doc).clone())
            }
        }
    }

    /// A group's row as a feed shows it: `{group, reduction}`, or the bare reduction when
    /// ungrouped.
    fn row(&self, a: &Acc) -> Value {
        if self.ungrouped() {
            self.reduction(a)
        } else {
            json!({"group": a.group, "reduction": self.reduction(a)})
        }
    }

    /// Rebuilds a group's shown row; returns it (`None`: the group is gone).
    fn reshow(&mut self, k: &[u8]) -> Option<Arc<Value>> {
        let row = Arc::new(self.row(self.groups.get(k)?));
        self.groups.get_mut(k)?.shown = Some(row.clone());
        Some(row)
    }

    /// The current groups, in group order.
    pub(crate) fn rows(&self) -> Vec<Arc<Value>> {
        self.groups
            .values()
            .map(|a| a.shown.clone().unwrap_or_else(|| Arc::new(self.row(a))))
            .collect()
    }

    /// Applies one commit's changes (each key once, before and after the commit) as one
    /// step; returns the changed group rows. Storage holds the commit's state (refills read
    /// it).
    pub(crate) fn apply_commit(
        &mut self,
        (matcher, view): (&Matcher, &View),
        changes: &[&Committed],
    ) -> Result<Vec<Change>> {
        let mut before: BTreeMap<Vec<u8>, Option<Arc<Value>>> = BTreeMap::new();
        let touched = |agg: &Self, seen: &Value, before: &mut BTreeMap<_, _>| {
            for g in agg.groups_of(seen) {
                let k = agg.key_of(&g);
                if let std::collections::btree_map::Entry::Vacant(e) = before.entry(k) {
                    let shown = agg.groups.get(e.key()).and_then(|a| a.shown.clone());
                    e.insert(shown);
                }
            }
        };
        for c in changes {
            let seen = |doc: &Option<Arc<Value>>| -> Option<(usize, Arc<Value>)> {
                let d = doc.as_ref()?;
                let n = matcher.count(&c.key, d);
                if n == 0 {
                    return None;
                }
                Some((n, view.apply(d)?))
            };
            let (old, new) = (seen(&c.old), seen(&c.new));
            if let Some((n, s)) = &old {
                touched(self, s, &mut before);
                for _ in 0..*n {
                    self.remove(&c.key, s)?;
                }
            }
            if let Some((n, s)) = &new {
                touched(self, s, &mut before);
                for _ in 0..*n {
                    self.add(&c.key, s)?;
                }
            }
        }
        self.refill(matcher, view)?;
        let mut out = Vec::new();
        for (k, old) in before {
            let new = self.reshow(&k);
            if old == new {
                continue;
            }
            out.push(Change::row(Some(Arc::from(&k[..])), old, new));
        }
        Ok(out)
    }
}
