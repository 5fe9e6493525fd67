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
//! refused). The index holds no `null` values, which the query's min and max take like any
//! other value (between booleans and numbers): each group keeps its rows whose field is `null`
//! (a refill weighs the first of them against what the index offers). Ties go to the row with
//! the smallest primary key, as in the query ([`ReduceKind::beats`]); sums are exact
//! ([`ReduceKind::sum_add`]), so that the live value is the query's to the last bit.

use super::rows::{Rows, RowsKey};
use super::{check_live, keyed_rows, Commit, Operator, Plan, Reroute, Route, Step};
use crate::db::{IndexState, TableState};
use crate::feed::change::Change;
use crate::feed::spec::{Matcher, View};
use crate::value::{encode_value, FieldPath};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

pub(crate) use crate::query::ReduceKind;

/// A watched aggregate: the rows it reduces (a rows plan), how, and the query that reads
/// those rows when its group is made.
pub(crate) struct AggPlan {
    pub(crate) rows: Rows,
    pub(crate) def: AggDef,
    pub(crate) source: crate::query::Query,
}

/// What tells aggregates of a table apart: their rows, grouping and reduction.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct AggKey {
    rows: RowsKey,
    /// Grouped by a field (`false`) or an index (`true`), by its name.
    by: Option<(bool, String)>,
    reduce: u8,
    field: Option<FieldPath>,
    extreme: Option<String>,
}

impl Plan for AggPlan {
    type Operator = Box<Aggregate>;
    // Boxed: a group keeps its key, and rows keys (most groups) are much smaller.
    type Key = Box<AggKey>;

    fn table(&self) -> &Arc<TableState> {
        &self.rows.table
    }

    fn key(&self) -> Box<AggKey> {
        let def = &self.def;
        Box::new(AggKey {
            rows: self.rows.key(),
            by: def.by.as_ref().map(|by| match by {
                By::Field(p) => (false, p.to_string()),
                By::Index(ix) => (true, ix.name.clone()),
            }),
            reduce: def.reduce as u8,
            field: def.field.clone(),
            extreme: def.extreme.as_ref().map(|ix| ix.name.clone()),
        })
    }

    fn check_live(&self) -> Result<()> {
        self.rows.check_live()?;
        check_live(&self.rows.table, self.def.extreme.as_ref())?;
        check_live(&self.rows.table, self.def.group_index())
    }

    fn load(self) -> Result<Box<Aggregate>> {
        let AggPlan { rows, def, source } = self;
        let agg = LiveAgg::load(
            rows.table.clone(),
            (&rows.matcher, &rows.view),
            def,
            keyed_rows(&source)?,
        )?;
        Ok(Box::new(Aggregate { rows, agg }))
    }
}

/// A live aggregate's group: its rows (routed like a rows feed of them) and its groups.
pub(crate) struct Aggregate {
    rows: Rows,
    agg: LiveAgg,
}

impl Operator for Aggregate {
    fn step(&self) -> Step {
        Step::Commit
    }

    fn routes(&self, each: &mut dyn FnMut(Route<'_>)) {
        self.rows.routes(each);
    }

    /// The index its rows are read by, the one a live min/max refills from, and the one
    /// its rows are grouped by (`group_by_index`: its values are that index's definition,
    /// which a drop and re-create may change).
    fn reads_index(&self, name: &str) -> bool {
        self.rows.reads_index(name)
            || self.agg.extreme_index() == Some(name)
            || self.agg.def.group_index().is_some_and(|ix| ix.name == name)
    }

    fn apply_commit(
        &mut self,
        commit: &Commit<'_>,
        out: &mut Vec<Change>,
        _routes: &mut impl Reroute,
    ) -> Result<()> {
        let rows = (&self.rows.matcher, &self.rows.view);
        self.agg.apply_commit(rows, commit, out)
    }

    fn initial(&self, _read: impl FnOnce() -> Result<Vec<Arc<Value>>>) -> Result<Vec<Arc<Value>>> {
        let rows = self.agg.rows();
        rows.iter().try_for_each(|r| self.agg.check_sum(Some(r)))?;
        Ok(rows)
    }

    fn name(&self) -> &'static str {
        "the aggregate"
    }
}

/// How rows are grouped.
#[derive(Clone)]
pub(crate) enum By {
    Field(FieldPath),
    Index(Arc<IndexState>),
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
    /// The index the rows are grouped by (`group_by_index`), if they are.
    pub(crate) fn group_index(&self) -> Option<&Arc<IndexState>> {
        match &self.by {
            Some(By::Index(ix)) => Some(ix),
            _ => None,
        }
    }

    /// Checks the definition against the table and the rows' view; finds the index min/max
    /// need.
    pub(crate) fn resolve(
        table: &TableState,
        view: &View,
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
                    if view.reshapes(f) {
                        // The refill reads the index in the order of the stored values, which
                        // would not be the order of the values the rows are seen with.
                        return Err(Error::unwatchable(format!(
                            "a live min or max of `{name}` cannot follow a pluck or without of a \
                             field inside `{name}` (its index orders the whole value): pluck \
                             `{name}` itself, or watch the rows"
                        )));
                    }
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
    /// The exact sum of those numbers (sum, avg; see [`ReduceKind::sum_add`]).
    total: Vec<u64>,
    best: Option<Best>,
    /// min / max: the group's rows whose field is `null`, by primary key (the index, which
    /// refills the other values, does not hold them).
    nulls: BTreeMap<Vec<u8>, Arc<Value>>,
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
            total: Vec::new(),
            best: None,
            nulls: BTreeMap::new(),
            shown: None,
        }
    }

    /// The group's first row whose field is `null` (smallest key): its best row when no
    /// value beyond `null` is left.
    fn first_null(&self) -> Option<Best> {
        self.nulls.iter().next().map(|(pk, doc)| Best {
            value: Value::Null,
            pk: pk.clone(),
            doc: doc.clone(),
        })
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

    /// The number a sum or average takes from a row (the query's rule).
    fn number(&self, seen: &Value) -> Result<Option<f64>> {
        match &self.def.field {
            Some(path) => self.def.reduce.number_at(seen, path),
            None => Ok(None),
        }
    }

    /// Whether (value, pk) beats the group's best row (the query's rule).
    fn beats(&self, value: &Value, pk: &[u8], best: &Best) -> bool {
        self.def.reduce.beats(value, pk, (&best.value, &best.pk))
    }

    fn add(&mut self, pk: &[u8], seen: &Arc<Value>) -> Result<()> {
        let groups = self.groups_of(seen);
        if groups.is_empty() {
            // In no group (a multi index without values): the query never looks at its
            // field either, so a value a sum refuses is no error here.
            return Ok(());
        }
        let num = match self.def.reduce {
            ReduceKind::Sum | ReduceKind::Avg => self.number(seen)?,
            _ => None,
        };
        let extreme = match (self.def.reduce, &self.def.field) {
            (ReduceKind::Min | ReduceKind::Max, Some(p)) => p.get(seen).cloned(),
            _ => None,
        };
        for g in groups {
            let k = self.key_of(&g);
            let acc = self.groups.entry(k.clone()).or_insert_with_key(|k| {
                // Shown as the canonical value of its key, as the query shows it (`1` for
                // rows holding `1` or `1.0`, whichever came first).
                let shown = if k.is_empty() {
                    g
                } else {
                    crate::value::decode_value(k).map_or(g, |(v, _)| v)
                };
                Acc::new(shown)
            });
            acc.rows += 1;
            match self.def.reduce {
                ReduceKind::Count => acc.count += 1,
                ReduceKind::Sum | ReduceKind::Avg => {
                    if let Some(x) = num {
                        ReduceKind::sum_add(&mut acc.total, x);
                        acc.count += 1;
                    }
                }
                ReduceKind::Min | ReduceKind::Max => {}
            }
            if let Some(v) = &extreme {
                if v.is_null() {
                    acc.nulls.insert(pk.to_vec(), seen.clone());
                }
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
        let groups = self.groups_of(seen);
        if groups.is_empty() {
            return Ok(()); // see `add`
        }
        let num = match self.def.reduce {
            ReduceKind::Sum | ReduceKind::Avg => self.number(seen)?,
            _ => None,
        };
        let ungrouped = self.ungrouped();
        for g in groups {
            let k = self.key_of(&g);
            let Some(acc) = self.groups.get_mut(&k) else {
                continue;
            };
            acc.rows = acc.rows.saturating_sub(1);
            match self.def.reduce {
                ReduceKind::Count => acc.count = acc.count.saturating_sub(1),
                ReduceKind::Sum | ReduceKind::Avg => {
                    if let Some(x) = num {
                        // Exactly undoes the add (negating a double is exact).
                        ReduceKind::sum_add(&mut acc.total, -x);
                        acc.count = acc.count.saturating_sub(1);
                    }
                }
                ReduceKind::Min | ReduceKind::Max => {
                    // A row in the group more than once is removed as often: the first
                    // removal takes it out of the nulls, the others find nothing.
                    acc.nulls.remove(pk);
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
                acc.total.clear();
                acc.count = 0;
                acc.best = None;
                acc.nulls.clear();
                self.stale.remove(&k);
            }
        }
        Ok(())
    }

    /// Refills the groups whose best row left: the first qualifying row of the index on the
    /// field from its extreme end (for max, the smallest key among the largest values), or
    /// the group's first `null` row when no value beyond `null` is left.
    fn refill(&mut self, matcher: &Matcher, view: &View) -> Result<()> {
        let mut stale = std::mem::take(&mut self.stale);
        if stale.is_empty() {
            return Ok(());
        }
        let refilled = self.refill_from_index(&mut stale, matcher, view);
        if refilled.is_err() {
            // A storage error part way: the groups not refilled yet stay to be refilled
            // (from scratch: a refill starts by forgetting what a failed one found).
            self.stale = stale;
        }
        refilled
    }

    /// [`LiveAgg::refill`]'s scan: takes the groups it refills out of `stale`.
    ///
    /// In index order from the extreme end, a min group is done at its first row; a max
    /// group at the first row of a smaller value after its first (the index descends by
    /// value, then by key: the group's rows of the largest value come largest key first).
    /// `null` sits between booleans and numbers but is not in the index: a group with
    /// `null` rows is done, with its first one, when the scan passes where `null` would be.
    fn refill_from_index(
        &mut self,
        stale: &mut BTreeSet<Vec<u8>>,
        matcher: &Matcher,
        view: &View,
    ) -> Result<()> {
        let Some(ix) = self.def.extreme.clone() else {
            stale.clear();
            return Ok(());
        };
        let max = self.def.reduce == ReduceKind::Max;
        stale.retain(|k| self.groups.contains_key(k));
        for k in stale.iter() {
            if let Some(acc) = self.groups.get_mut(k) {
                acc.best = None;
            }
        }
        let null = encode_value(&Value::Null);
        // Only the part of the index beyond `null` (arrays and booleans for a min; numbers,
        // objects and strings for a max) can beat a group's `null` rows: when every stale
        // group has some, only that part is read.
        let all_have_nulls = stale
            .iter()
            .all(|k| self.groups.get(k).is_some_and(|a| !a.nulls.is_empty()));
        let (lo, hi) = match (all_have_nulls, max) {
            (false, _) => (Bound::Unbounded, Bound::Unbounded),
            (true, false) => (Bound::Unbounded, Bound::Excluded(null.clone())),
            (true, true) => (Bound::Excluded(null.clone()), Bound::Unbounded),
        };
        let it = ix.tree.range(lo, hi);
        let it: Box<dyn Iterator<Item = _>> = if max {
            Box::new(it.rev())
        } else {
            Box::new(it)
        };
        let table = self.table.clone();
        let field = self.def.field.clone().expect("min/max have a field");
        // max: the groups that found their best at the value being read (`at`), still
        // looking for a smaller key of it.
        let mut collecting: Vec<Vec<u8>> = Vec::new();
        let mut at: Vec<u8> = Vec::new();
        let mut crossed_null = false;
        for entry in it {
            if stale.is_empty() {
                break;
            }
            let (key, pk) = entry?;
            // An index key is the value's encoding followed by the primary key.
            let value_bytes = &key[..key.len().saturating_sub(pk.len())];
            if max && value_bytes != at.as_slice() {
                // A smaller value: the groups of the larger one are done.
                for k in collecting.drain(..) {
                    stale.remove(&k);
                }
                at = value_bytes.to_vec();
            }
            let past_null = if max {
                value_bytes < null.as_slice()
            } else {
                value_bytes > null.as_slice()
            };
            if past_null && !crossed_null {
                crossed_null = true;
                self.settle_with_nulls(stale, false);
                if stale.is_empty() {
                    break;
                }
            }
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
                let first = acc.best.is_none();
                acc.best = Some(Best {
                    value: v.clone(),
                    pk: pk.to_vec(),
                    doc: seen.clone(),
                });
                if !max {
                    stale.remove(&k);
                } else if first {
                    collecting.push(k);
                }
            }
        }
        // The scan ended: a max group found its best; the others have no value beyond
        // `null` left, so their first `null` row if any, else nothing.
        for k in collecting {
            stale.remove(&k);
        }
        self.settle_with_nulls(stale, true);
        Ok(())
    }

    /// Where the scan passes `null` (or ends: `end`), gives each group of `stale` that has
    /// `null` rows and found nothing beyond them its first one, and takes it out of `stale`.
    /// At the end, the groups that found nothing at all go too (they have no value left).
    fn settle_with_nulls(&mut self, stale: &mut BTreeSet<Vec<u8>>, end: bool) {
        stale.retain(|k| {
            let Some(acc) = self.groups.get_mut(k) else {
                return false;
            };
            if acc.best.is_some() {
                return !end; // a max still collecting the keys of its value
            }
            match acc.first_null() {
                Some(best) => {
                    acc.best = Some(best);
                    false
                }
                None => !end,
            }
        });
    }

    fn reduction(&self, a: &Acc) -> Value {
        match self.def.reduce {
            ReduceKind::Count => json!(a.count),
            ReduceKind::Sum => json!(ReduceKind::sum_value(&a.total)),
            ReduceKind::Avg if a.count == 0 => Value::Null,
            ReduceKind::Avg => json!(ReduceKind::sum_mean(&a.total, a.count)),
            ReduceKind::Min | ReduceKind::Max => {
                a.best.as_ref().map_or(Value::Null, |b| (*b.doc).clone())
            }
        }
    }

    /// A sum beyond the doubles' range (which JSON shows as `null`, "no row has it") ends
    /// the feed with the error the query gives for it.
    fn check_sum(&self, row: Option<&Value>) -> Result<()> {
        let Some(row) = row.filter(|_| self.def.reduce == ReduceKind::Sum) else {
            return Ok(());
        };
        let reduction = if self.ungrouped() {
            row
        } else {
            &row["reduction"]
        };
        if reduction.is_null() {
            return Err(Error::query(
                "the sum is beyond the range of a double (inf)",
            ));
        }
        Ok(())
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
    /// step; the changed group rows go to `out`, stamped with the commit. Storage holds the
    /// commit's state (refills read it).
    fn apply_commit(
        &mut self,
        (matcher, view): (&Matcher, &View),
        commit: &Commit<'_>,
        out: &mut Vec<Change>,
    ) -> Result<()> {
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
        for c in commit.changes {
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
        for (k, old) in before {
            let new = self.reshow(&k);
            self.check_sum(new.as_deref())?;
            if crate::value::identical_rows(old.as_ref(), new.as_ref()) {
                continue;
            }
            out.push(commit.stamp(Change::row(Some(Arc::from(&k[..])), old, new)));
        }
        Ok(())
    }
}
