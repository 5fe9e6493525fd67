//! How a write finds the groups it concerns: routes by key, index value, equality conjunct,
//! key range and top-N boundary (the [`Route`]s operators declare), so that routing costs
//! in proportion to the feeds a write concerns, not to all feeds.

use super::follow::FollowedEdits;
use super::group::{Group, Members};
use crate::db::write::Committed;
use crate::feed::ops::{AnyOperator, ChangeCtx, GroupKey, Operator, Plan, Reroute, Route};
use crate::feed::ranges::RangeIndex;
use crate::value::{encode_value_into, FieldPath};
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

pub(super) type GroupId = u64;

/// Hashes group ids (small sequential integers) as themselves: group lookups are on the
/// write path, once per group a change reaches.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread sequential ids over the table's buckets (Fibonacci hashing).
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(super) type ById<V> = HashMap<GroupId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The groups on one route. Most routes (a point feed's key, a `get_all` value) lead to one
/// group, kept inline: with a million such feeds a `Vec` each would be a million small
/// allocations.
pub(super) enum Ids {
    One(GroupId),
    Many(Vec<GroupId>),
}

impl Ids {
    pub(super) fn as_slice(&self) -> &[GroupId] {
        match self {
            Ids::One(g) => std::slice::from_ref(g),
            Ids::Many(v) => v,
        }
    }

    fn push(&mut self, g: GroupId) {
        match self {
            Ids::One(a) => *self = Ids::Many(vec![*a, g]),
            Ids::Many(v) => v.push(g),
        }
    }

    /// Removes `g`; returns whether no group is left.
    fn remove(&mut self, g: GroupId) -> bool {
        match self {
            Ids::One(a) => *a == g,
            Ids::Many(v) => {
                v.retain(|x| *x != g);
                if let [one] = v[..] {
                    *self = Ids::One(one);
                    return false;
                }
                v.is_empty()
            }
        }
    }
}

/// Gives back a map's memory once it is mostly empty (maps never shrink by themselves: a
/// million feeds opened and dropped would leave their routes' tables allocated).
pub(super) fn shrink<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// A table's groups, and the routes by which its writes find them.
#[derive(Default)]
pub(super) struct Routes {
    next_id: u64,
    /// Boxed: a million groups in a map that may be half empty after growing would cost
    /// twice their size; boxed, an empty slot costs a pointer.
    pub(super) groups: ById<Box<Group>>,
    /// Groups by what they watch: a feed of a query described like an open group's joins it.
    by_query: HashMap<Arc<GroupKey>, GroupId>,
    pub(super) table: RouteTable,
}

/// A watched key or index value (encoded) as a route map holds it: inline up to 16 bytes
/// (most keys: an id, a short string or number), so that a lookup in a map of a million
/// routes compares it in the map's own slot instead of following a pointer to a cache line
/// of its own; smaller than a boxed key with its allocation, too.
type RouteKey = smallvec::SmallVec<[u8; 16]>;

/// The routes of a table's writes, one map per kind of [`Route`].
#[derive(Default)]
pub(super) struct RouteTable {
    /// Point and `get_all` groups by key, top-N groups by the keys of the rows in their sets.
    by_key: HashMap<RouteKey, Ids>,
    by_index_value: HashMap<String, IndexRoutes>,
    by_eq: HashMap<FieldPath, HashMap<RouteKey, Ids>>,
    /// Range groups by the primary key range (`None`) or index key range they watch.
    by_range: HashMap<Option<String>, RangeRoutes>,
    /// Groups checked on every write of the table.
    scan: Vec<GroupId>,
    /// Top-N groups by (index, descending), found by the boundary a write's key beats.
    before: HashMap<(Option<String>, bool), BeforeRoutes>,
}

struct BeforeRoutes {
    ix: Option<Arc<crate::db::IndexState>>,
    /// Groups with a boundary, by it.
    bounds: BTreeSet<(Vec<u8>, GroupId)>,
    /// Groups without one: any write enters.
    open: Vec<GroupId>,
}

/// Per-change work shared by every group: candidate groups, and the new document's keys in
/// each ordering top-N feeds read (computed once, not once per feed).
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) ids: Vec<GroupId>,
    keys: Vec<(Option<String>, Vec<Vec<u8>>)>,
    /// Reused for encoding values to look up.
    buf: Vec<u8>,
}

/// The range groups of one key space: the primary keys, or an index's keys.
struct RangeRoutes {
    ix: Option<Arc<crate::db::IndexState>>,
    ranges: RangeIndex,
}

struct IndexRoutes {
    ix: Arc<crate::db::IndexState>,
    values: HashMap<RouteKey, Ids>,
}

fn add_route(map: &mut HashMap<RouteKey, Ids>, k: &[u8], g: GroupId) {
    match map.get_mut(k) {
        Some(ids) => ids.push(g),
        None => {
            map.insert(RouteKey::from_slice(k), Ids::One(g));
        }
    }
}

fn remove_route(map: &mut HashMap<RouteKey, Ids>, k: &[u8], g: GroupId) {
    if let Some(v) = map.get_mut(k) {
        if v.remove(g) {
            map.remove(k);
            shrink(map);
        }
    }
}

/// One group's route changes, through the [`Reroute`] operators change routes with: made in
/// the table's routes at once; followed routes (another table's) noted for the hub.
pub(super) struct RouteEdits<'a> {
    pub(super) table: &'a mut RouteTable,
    pub(super) id: GroupId,
    pub(super) followed: &'a mut FollowedEdits,
}

impl Reroute for RouteEdits<'_> {
    fn add(&mut self, route: Route<'_>) {
        match route {
            Route::Followed { table, ix, key } => {
                self.followed.push(self.id, true, (table, ix), key)
            }
            route => self.table.add(self.id, route),
        }
    }

    fn remove(&mut self, route: Route<'_>) {
        match route {
            Route::Followed { table, ix, key } => {
                self.followed.push(self.id, false, (table, ix), key)
            }
            route => self.table.remove(self.id, route),
        }
    }
}

/// The first route of a rows group of a point or `get_all` query (see [`Routes::find`]).
fn first_route(key: &GroupKey) -> Option<(Option<&str>, &[u8])> {
    match key {
        GroupKey::Rows(rows) => rows.first_route(),
        _ => None,
    }
}

impl Routes {
    /// The open group of a query described by `key`.
    pub(super) fn find(&self, key: &GroupKey) -> Option<GroupId> {
        let Some(route) = first_route(key) else {
            return self.by_query.get(key).copied();
        };
        // A point or `get_all` group: among the groups on its first route (usually none or
        // one), the one whose operator watches the same query.
        let ids = match route {
            (None, k) => self.table.by_key.get(k),
            (Some(ix), v) => self
                .table
                .by_index_value
                .get(ix)
                .and_then(|r| r.values.get(v)),
        }?;
        ids.as_slice().iter().copied().find(|id| {
            self.groups.get(id).is_some_and(|g| match (&g.op, key) {
                (AnyOperator::Rows(rows), GroupKey::Rows(k)) if g.key.is_none() => rows.key() == *k,
                _ => false,
            })
        })
    }

    /// A new id for a group or a member of one.
    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Adds a group for `op` under every route it declares; returns its id.
    pub(super) fn add_group(
        &mut self,
        key: GroupKey,
        op: AnyOperator,
        followed: &mut FollowedEdits,
    ) -> GroupId {
        let id = self.next_id();
        let mut edits = RouteEdits {
            table: &mut self.table,
            id,
            followed,
        };
        op.routes(&mut |r| edits.add(r));
        let key = if first_route(&key).is_some() {
            None
        } else {
            let key = Arc::new(key);
            self.by_query.insert(key.clone(), id);
            Some(key)
        };
        self.groups.insert(
            id,
            Box::new(Group {
                key,
                op,
                members: Members::default(),
            }),
        );
        id
    }

    /// Removes a group and its routes.
    pub(super) fn remove_group(
        &mut self,
        id: GroupId,
        followed: &mut FollowedEdits,
    ) -> Option<Box<Group>> {
        let g = self.groups.remove(&id)?;
        if let Some(key) = &g.key {
            self.by_query.remove(key);
        }
        shrink(&mut self.groups);
        shrink(&mut self.by_query);
        let mut edits = RouteEdits {
            table: &mut self.table,
            id,
            followed,
        };
        g.op.routes(&mut |r| edits.remove(r));
        Some(g)
    }
}

impl RouteTable {
    fn add(&mut self, id: GroupId, route: Route<'_>) {
        match route {
            Route::Key(k) => add_route(&mut self.by_key, k, id),
            Route::IndexValue(ix, v) => {
                let r = self
                    .by_index_value
                    .entry(ix.name.clone())
                    .or_insert_with(|| IndexRoutes {
                        ix: ix.clone(),
                        values: HashMap::new(),
                    });
                add_route(&mut r.values, v, id);
            }
            Route::Eq(path, v) => add_route(self.by_eq.entry(path.clone()).or_default(), v, id),
            Route::Range(ix, lo, hi) => self
                .by_range
                .entry(ix.map(|ix| ix.name.clone()))
                .or_insert_with(|| RangeRoutes {
                    ix: ix.cloned(),
                    ranges: RangeIndex::default(),
                })
                .ranges
                .insert(lo, hi, id),
            Route::Scan => self.scan.push(id),
            Route::Before { ix, desc, bound } => {
                let r = self
                    .before
                    .entry((ix.map(|ix| ix.name.clone()), desc))
                    .or_insert_with(|| BeforeRoutes {
                        ix: ix.cloned(),
                        bounds: BTreeSet::new(),
                        open: Vec::new(),
                    });
                match bound {
                    Some(b) => {
                        r.bounds.insert((b.to_vec(), id));
                    }
                    None => r.open.push(id),
                }
            }
            Route::Followed { .. } => unreachable!("followed routes are the hub's"),
        }
    }

    fn remove(&mut self, id: GroupId, route: Route<'_>) {
        match route {
            Route::Key(k) => remove_route(&mut self.by_key, k, id),
            Route::IndexValue(ix, v) => {
                if let Some(r) = self.by_index_value.get_mut(&ix.name) {
                    remove_route(&mut r.values, v, id);
                    if r.values.is_empty() {
                        self.by_index_value.remove(&ix.name);
                    }
                }
            }
            Route::Eq(path, v) => {
                if let Some(m) = self.by_eq.get_mut(path) {
                    remove_route(m, v, id);
                    if m.is_empty() {
                        self.by_eq.remove(path);
                    }
                }
            }
            Route::Range(ix, lo, hi) => {
                let space = ix.map(|ix| ix.name.clone());
                if let Some(r) = self.by_range.get_mut(&space) {
                    r.ranges.remove(lo, hi, id);
                    if r.ranges.is_empty() {
                        self.by_range.remove(&space);
                    }
                }
            }
            Route::Scan => self.scan.retain(|x| *x != id),
            Route::Before { ix, desc, bound } => {
                let space = (ix.map(|ix| ix.name.clone()), desc);
                if let Some(r) = self.before.get_mut(&space) {
                    match bound {
                        Some(b) => {
                            r.bounds.remove(&(b.to_vec(), id));
                        }
                        None => r.open.retain(|x| *x != id),
                    }
                    if r.bounds.is_empty() && r.open.is_empty() {
                        self.before.remove(&space);
                    }
                }
            }
            Route::Followed { .. } => unreachable!("followed routes are the hub's"),
        }
    }

    /// Forgets the routes by values of a dropped index (its groups are gone already).
    pub(super) fn forget_index(&mut self, index: &str) {
        self.by_index_value.remove(index);
    }

    /// The groups a change may concern, into `scratch.ids` (and their number into `ctx`,
    /// for the items it hands out).
    pub(super) fn candidates(&self, c: &Committed, scratch: &mut Scratch, ctx: &mut ChangeCtx<'_>) {
        let out = &mut scratch.ids;
        out.clear();
        scratch.keys.clear();
        if !self.before.is_empty() {
            for ((index, desc), tr) in &self.before {
                out.extend_from_slice(&tr.open);
                let Some(doc) = c.new.as_deref() else {
                    continue;
                };
                if !scratch.keys.iter().any(|(i, _)| i == index) {
                    let keys =
                        crate::feed::spec::OrderedIndex::index_keys(tr.ix.as_deref(), &c.key, doc);
                    scratch.keys.push((index.clone(), keys));
                }
                let keys = scratch
                    .keys
                    .iter()
                    .find(|(i, _)| i == index)
                    .map(|(_, k)| k)
                    .expect("pushed above");
                for k in keys {
                    // Ascending sets take keys below their boundary, descending ones above.
                    if *desc {
                        out.extend(tr.bounds.range(..(k.clone(), 0)).map(|(_, g)| *g));
                    } else {
                        let from = Bound::Excluded((k.clone(), GroupId::MAX));
                        out.extend(tr.bounds.range((from, Bound::Unbounded)).map(|(_, g)| *g));
                    }
                }
            }
        }
        if let Some(g) = self.by_key.get(&c.key[..]) {
            out.extend_from_slice(g.as_slice());
        }
        let docs = [c.old.as_deref(), c.new.as_deref()];
        let buf = &mut scratch.buf;
        for r in self.by_index_value.values() {
            for doc in docs.into_iter().flatten() {
                r.ix.compiled.each_value(doc, |v| {
                    buf.clear();
                    encode_value_into(v, buf);
                    if let Some(g) = r.values.get(buf.as_slice()) {
                        out.extend_from_slice(g.as_slice());
                    }
                });
            }
        }
        for (path, values) in &self.by_eq {
            for doc in docs.into_iter().flatten() {
                if let Some(v) = path.get(doc) {
                    buf.clear();
                    encode_value_into(v, buf);
                    if let Some(g) = values.get(buf.as_slice()) {
                        out.extend_from_slice(g.as_slice());
                    }
                }
            }
        }
        for r in self.by_range.values() {
            match &r.ix {
                None => r.ranges.stab(&c.key, out),
                Some(ix) => {
                    for k in ctx.route_keys(ix) {
                        r.ranges.stab(k, out);
                    }
                }
            }
        }
        out.extend_from_slice(&self.scan);
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        ctx.reaches(out.len());
    }
}
