//! How a write finds the groups it concerns: routes by key, index value, equality conjunct,
//! key range and top-N boundary, so that routing costs in proportion to the feeds a write
//! concerns, not to all feeds.

use super::group::{ChangeCtx, Group, Kind, Members};
use crate::db::write::Committed;
use crate::feed::ranges::RangeIndex;
use crate::feed::spec::Matcher;
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

#[derive(Default)]
pub(super) struct Routes {
    pub(super) next_id: u64,
    pub(super) groups: ById<Group>,
    pub(super) by_signature: HashMap<Arc<str>, GroupId>,
    pub(super) by_key: HashMap<Vec<u8>, Vec<GroupId>>,
    pub(super) by_index_value: HashMap<String, IndexRoutes>,
    pub(super) by_eq: HashMap<FieldPath, HashMap<Vec<u8>, Vec<GroupId>>>,
    /// Range groups by the primary key range (`None`) or index key range they watch.
    pub(super) by_range: HashMap<Option<String>, RangeRoutes>,
    /// Groups checked on every write of the table.
    pub(super) scan: Vec<GroupId>,
    /// Top-N groups by (index, descending), found by the boundary a write's key beats.
    pub(super) topn: HashMap<(Option<String>, bool), TopRoutes>,
    /// Top-N groups by the primary keys of the rows in their sets.
    pub(super) topn_members: HashMap<Vec<u8>, Vec<GroupId>>,
}

pub(super) struct TopRoutes {
    pub(super) ix: Option<Arc<crate::db::IndexState>>,
    /// Groups whose set is full, by the order key of their last row.
    pub(super) bounds: BTreeSet<(Vec<u8>, GroupId)>,
    /// Groups whose set holds every qualifying row: any qualifying write enters.
    pub(super) open: Vec<GroupId>,
}

/// Where a top-N group is registered: its boundary (`None`: open) and its rows' keys.
pub(super) struct TopReg {
    pub(super) bound: Option<Vec<u8>>,
    pub(super) members: Vec<Arc<[u8]>>,
}

/// Per-change work shared by every group: candidate groups, and the new document's keys in
/// each index that top-N feeds read (computed once, not once per feed).
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) ids: Vec<GroupId>,
    pub(super) keys: Vec<(Option<String>, Vec<Vec<u8>>)>,
    /// Reused for encoding values to look up.
    pub(super) buf: Vec<u8>,
}

/// The range groups of one key space: the primary keys, or an index's keys.
pub(super) struct RangeRoutes {
    pub(super) ix: Option<Arc<crate::db::IndexState>>,
    pub(super) ranges: RangeIndex,
}

pub(super) struct IndexRoutes {
    pub(super) ix: Arc<crate::db::IndexState>,
    pub(super) values: HashMap<Vec<u8>, Vec<GroupId>>,
}

/// How a group is found (keys and index values are the group matcher's own).
pub(super) enum Route {
    Keys,
    IndexValues,
    Eq { path: FieldPath, value: Vec<u8> },
    Range,
    Scan,
    TopN,
}

pub(super) fn add_route<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Vec<GroupId>>,
    k: K,
    g: GroupId,
) {
    map.entry(k).or_default().push(g);
}

pub(super) fn remove_route<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Vec<GroupId>>,
    k: &K,
    g: GroupId,
) {
    if let Some(v) = map.get_mut(k) {
        v.retain(|x| *x != g);
        if v.is_empty() {
            map.remove(k);
        }
    }
}

impl Routes {
    /// Registers a new group for `kind` under every route it needs; returns its id.
    pub(super) fn add_group(&mut self, signature: Arc<str>, kind: Kind) -> GroupId {
        let id = self.next_id;
        self.next_id += 1;
        let (route, index) = match &kind {
            Kind::Rows {
                matcher, view, agg, ..
            } => {
                // The index the group reads (dropping it ends the group): its matcher's, or
                // the one a live min/max refills from.
                let index = matcher
                    .index_name()
                    .or_else(|| agg.as_ref().and_then(|a| a.extreme_index()))
                    .map(str::to_string);
                let route = match matcher {
                    Matcher::Keys(_) => Route::Keys,
                    Matcher::IndexValues { .. } => Route::IndexValues,
                    Matcher::All => match view.routing_eq() {
                        Some((path, value)) => Route::Eq { path, value },
                        None => Route::Scan,
                    },
                    Matcher::PrimaryRange { .. } | Matcher::IndexRange { .. } => Route::Range,
                };
                if let Matcher::IndexValues { ix, .. } = matcher {
                    self.by_index_value
                        .entry(ix.name.clone())
                        .or_insert_with(|| IndexRoutes {
                            ix: ix.clone(),
                            values: HashMap::new(),
                        });
                }
                (route, index)
            }
            Kind::TopN(t) => (Route::TopN, t.order.ix.as_ref().map(|ix| ix.name.clone())),
        };
        match (&route, &kind) {
            (
                Route::Keys,
                Kind::Rows {
                    matcher: Matcher::Keys(keys),
                    ..
                },
            ) => {
                for (k, _) in keys {
                    add_route(&mut self.by_key, k.clone(), id);
                }
            }
            (
                Route::IndexValues,
                Kind::Rows {
                    matcher: Matcher::IndexValues { ix, values },
                    ..
                },
            ) => {
                let r = self
                    .by_index_value
                    .get_mut(&ix.name)
                    .expect("inserted above");
                for (v, _) in values {
                    add_route(&mut r.values, v.clone(), id);
                }
            }
            (Route::Keys | Route::IndexValues, _) => unreachable!("routes follow matchers"),
            (Route::Eq { path, value }, _) => {
                add_route(
                    self.by_eq.entry(path.clone()).or_default(),
                    value.clone(),
                    id,
                );
            }
            (
                Route::Range,
                Kind::Rows {
                    matcher: Matcher::PrimaryRange { lo, hi },
                    ..
                },
            ) => self
                .by_range
                .entry(None)
                .or_insert_with(|| RangeRoutes {
                    ix: None,
                    ranges: RangeIndex::default(),
                })
                .ranges
                .insert(lo, hi, id),
            (
                Route::Range,
                Kind::Rows {
                    matcher: Matcher::IndexRange { ix, lo, hi },
                    ..
                },
            ) => self
                .by_range
                .entry(Some(ix.name.clone()))
                .or_insert_with(|| RangeRoutes {
                    ix: Some(ix.clone()),
                    ranges: RangeIndex::default(),
                })
                .ranges
                .insert(lo, hi, id),
            (Route::Range, _) => unreachable!("range routes follow range matchers"),
            (Route::Scan, _) => self.scan.push(id),
            (Route::TopN, _) => {}
        }
        let is_topn = matches!(route, Route::TopN);
        self.by_signature.insert(signature.clone(), id);
        self.groups.insert(
            id,
            Group {
                signature,
                kind,
                route,
                index,
                topn_reg: None,
                members: Members::default(),
            },
        );
        if is_topn {
            self.register_topn(id);
        }
        id
    }

    pub(super) fn unroute(&mut self, id: GroupId, g: &Group) {
        let matcher = match &g.kind {
            Kind::Rows { matcher, .. } => Some(matcher),
            Kind::TopN(_) => None,
        };
        match (&g.route, matcher) {
            (Route::Keys, Some(Matcher::Keys(keys))) => keys
                .iter()
                .for_each(|(k, _)| remove_route(&mut self.by_key, k, id)),
            (Route::IndexValues, Some(Matcher::IndexValues { ix, values })) => {
                if let Some(r) = self.by_index_value.get_mut(&ix.name) {
                    values
                        .iter()
                        .for_each(|(v, _)| remove_route(&mut r.values, v, id));
                    if r.values.is_empty() {
                        self.by_index_value.remove(&ix.name);
                    }
                }
            }
            (Route::Keys | Route::IndexValues, _) => unreachable!("routes follow matchers"),
            (Route::Eq { path, value }, _) => {
                if let Some(m) = self.by_eq.get_mut(path) {
                    remove_route(m, value, id);
                    if m.is_empty() {
                        self.by_eq.remove(path);
                    }
                }
            }
            (Route::Range, Some(Matcher::PrimaryRange { lo, hi })) => {
                self.unroute_range(None, lo, hi, id)
            }
            (Route::Range, Some(Matcher::IndexRange { ix, lo, hi })) => {
                self.unroute_range(Some(ix.name.clone()), lo, hi, id)
            }
            (Route::Range, _) => unreachable!("range routes follow range matchers"),
            (Route::Scan, _) => self.scan.retain(|x| *x != id),
            (Route::TopN, _) => {}
        }
    }

    pub(super) fn unroute_range(
        &mut self,
        space: Option<String>,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        id: GroupId,
    ) {
        if let Some(r) = self.by_range.get_mut(&space) {
            r.ranges.remove(lo, hi, id);
            if r.ranges.is_empty() {
                self.by_range.remove(&space);
            }
        }
    }

    pub(super) fn topn_key(g: &Group) -> Option<(Option<String>, bool)> {
        match &g.kind {
            Kind::TopN(t) => Some((t.order.ix.as_ref().map(|ix| ix.name.clone()), t.order.desc)),
            Kind::Rows { .. } => None,
        }
    }

    /// Removes a top-N group's boundary and members from the routes.
    pub(super) fn unregister_topn(
        &mut self,
        id: GroupId,
        key: &(Option<String>, bool),
        reg: &TopReg,
    ) {
        if let Some(tr) = self.topn.get_mut(key) {
            match &reg.bound {
                Some(b) => {
                    tr.bounds.remove(&(b.clone(), id));
                }
                None => tr.open.retain(|x| *x != id),
            }
            if tr.bounds.is_empty() && tr.open.is_empty() {
                self.topn.remove(key);
            }
        }
        for pk in &reg.members {
            remove_route(&mut self.topn_members, &pk.to_vec(), id);
        }
    }

    /// (Re-)registers a top-N group under its current boundary and members.
    pub(super) fn register_topn(&mut self, id: GroupId) {
        let Some(g) = self.groups.get_mut(&id) else {
            return;
        };
        let Kind::TopN(t) = &g.kind else { return };
        let key = (t.order.ix.as_ref().map(|ix| ix.name.clone()), t.order.desc);
        let reg = TopReg {
            bound: t.boundary().map(<[u8]>::to_vec),
            members: t.members().cloned().collect(),
        };
        let ix = t.order.ix.clone();
        if let Some(old) = g.topn_reg.take() {
            self.unregister_topn(id, &key, &old);
        }
        let tr = self.topn.entry(key).or_insert_with(|| TopRoutes {
            ix,
            bounds: BTreeSet::new(),
            open: Vec::new(),
        });
        match &reg.bound {
            Some(b) => {
                tr.bounds.insert((b.clone(), id));
            }
            None => tr.open.push(id),
        }
        for pk in &reg.members {
            add_route(&mut self.topn_members, pk.to_vec(), id);
        }
        self.groups.get_mut(&id).expect("looked up above").topn_reg = Some(reg);
    }

    pub(super) fn remove_group(&mut self, id: GroupId) -> Option<Group> {
        let mut g = self.groups.remove(&id)?;
        self.by_signature.remove(&g.signature);
        self.unroute(id, &g);
        if let (Some(key), Some(reg)) = (Self::topn_key(&g), g.topn_reg.take()) {
            self.unregister_topn(id, &key, &reg);
        }
        Some(g)
    }

    /// The groups a change may concern, into `scratch.ids` (and their number into `ctx`,
    /// for the items it hands out).
    pub(super) fn candidates(&self, c: &Committed, scratch: &mut Scratch, ctx: &mut ChangeCtx<'_>) {
        let out = &mut scratch.ids;
        out.clear();
        scratch.keys.clear();
        if !self.topn.is_empty() {
            if let Some(g) = self.topn_members.get(&c.key) {
                out.extend_from_slice(g);
            }
            for ((index, desc), tr) in &self.topn {
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
        if let Some(g) = self.by_key.get(&c.key) {
            out.extend_from_slice(g);
        }
        let docs = [c.old.as_deref(), c.new.as_deref()];
        let buf = &mut scratch.buf;
        for r in self.by_index_value.values() {
            for doc in docs.into_iter().flatten() {
                r.ix.compiled.each_value(doc, |v| {
                    buf.clear();
                    encode_value_into(v, buf);
                    if let Some(g) = r.values.get(buf.as_slice()) {
                        out.extend_from_slice(g);
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
                        out.extend_from_slice(g);
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
