//! The hub: where committed changes meet the feeds that watch them.
//!
//! Feeds that watch the same query share one group: its matching, filtering and transforms
//! run once per write, and each resulting item is appended once to the group's shared log
//! (squashing members, which merge per consumer, get it in their own queue). Groups are found
//! by route, so that routing a write costs in proportion to the feeds it concerns: point and
//! `get_all` feeds by key or index value, filter feeds with an equality conjunct by that
//! field's value, range feeds by the key they contain (`ranges.rs`), top-N feeds by the
//! boundary the written key beats and by the rows they hold. Only filters without an equality
//! conjunct (on a whole table) are checked one by one.
//!
//! Everything here that changes routes or sees a change runs under the commit lock, so a
//! feed's initial snapshot and its first change are separated by no gap and no overlap.

use super::change::Change;
use super::log::{Log, Reader};
use super::queue::Subscriber;
use super::ranges::RangeIndex;
use super::spec::{FeedPlan, Matcher, View};
use super::topn::TopN;
use crate::db::write::Committed;
use crate::db::{IndexState, TableState};
use crate::value::{encode_value_into, FieldPath};
use crate::{Error, Result};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;

#[derive(Default)]
pub(crate) struct Hub {
    tables: RwLock<HashMap<String, Arc<TableFeeds>>>,
    /// Every open feed, stats feeds included (a fast "no feeds at all" check for writers).
    open: AtomicUsize,
}

#[derive(Default)]
pub(crate) struct TableFeeds {
    routes: Mutex<Routes>,
    open: AtomicUsize,
}

type GroupId = u64;

/// Hashes group ids (small sequential integers) as themselves: group lookups are on the
/// write path, once per group a change reaches.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

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

type ById<V> = HashMap<GroupId, V, std::hash::BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct Routes {
    next_id: u64,
    groups: ById<Group>,
    by_signature: HashMap<Arc<str>, GroupId>,
    by_key: HashMap<Vec<u8>, Vec<GroupId>>,
    by_index_value: HashMap<String, IndexRoutes>,
    by_eq: HashMap<FieldPath, HashMap<Vec<u8>, Vec<GroupId>>>,
    /// Range groups by the primary key range (`None`) or index key range they watch.
    by_range: HashMap<Option<String>, RangeRoutes>,
    /// Groups checked on every write of the table.
    scan: Vec<GroupId>,
    /// Top-N groups by (index, descending), found by the boundary a write's key beats.
    topn: HashMap<(Option<String>, bool), TopRoutes>,
    /// Top-N groups by the primary keys of the rows in their sets.
    topn_members: HashMap<Vec<u8>, Vec<GroupId>>,
}

struct TopRoutes {
    ix: Option<Arc<crate::db::IndexState>>,
    /// Groups whose set is full, by the order key of their last row.
    bounds: BTreeSet<(Vec<u8>, GroupId)>,
    /// Groups whose set holds every qualifying row: any qualifying write enters.
    open: Vec<GroupId>,
}

/// Where a top-N group is registered: its boundary (`None`: open) and its rows' keys.
struct TopReg {
    bound: Option<Vec<u8>>,
    members: Vec<Arc<[u8]>>,
}

/// Per-change work shared by every group: candidate groups, and the new document's keys in
/// each index that top-N feeds read (computed once, not once per feed).
#[derive(Default)]
struct Scratch {
    ids: Vec<GroupId>,
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
    values: HashMap<Vec<u8>, Vec<GroupId>>,
}

/// How a group is found (keys and index values are the group matcher's own).
enum Route {
    Keys,
    IndexValues,
    Eq { path: FieldPath, value: Vec<u8> },
    Range,
    Scan,
    TopN,
}

enum Kind {
    Rows { matcher: Matcher, view: View },
    TopN(TopN),
}

struct Group {
    signature: Arc<str>,
    kind: Kind,
    route: Route,
    /// The index this group reads, if any (dropping it aborts the group).
    index: Option<String>,
    /// Top-N groups: where the group is registered in the top-N routes.
    topn_reg: Option<TopReg>,
    members: Members,
}

/// The feeds of a group: readers of the shared log, and feeds with a private queue (those
/// that squash, since merging is per consumer).
#[derive(Default)]
struct Members {
    log: Option<Arc<Log>>,
    shared: usize,
    own: Vec<(u64, Arc<Subscriber>)>,
}

impl Members {
    fn deliver(&self, item: Change, wakes: &mut Vec<Waker>) {
        for (_, sub) in &self.own {
            if sub.push(item.clone()) {
                wakes.extend(sub.take_waker());
            }
        }
        if let Some(log) = &self.log {
            log.push(item, wakes);
        }
    }

    fn close(&self, why: &Error) {
        if let Some(log) = &self.log {
            log.close(why.clone());
        }
        self.own.iter().for_each(|(_, s)| s.close(why.clone()));
    }

    fn is_empty(&self) -> bool {
        self.shared == 0 && self.own.is_empty()
    }
}

/// How a new feed receives its items.
pub(crate) enum Join {
    /// Through the group's shared log, with this queue size.
    Shared(usize),
    /// Through its own queue.
    Own(Arc<Subscriber>),
}

/// A feed's membership in a group; dropping it leaves the group.
pub(crate) struct Registration {
    table: Arc<TableFeeds>,
    hub_open: Arc<Hub>,
    group: GroupId,
    /// The private queue's id, or `None` for a reader of the shared log.
    own: Option<u64>,
}

fn add_route<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<GroupId>>, k: K, g: GroupId) {
    map.entry(k).or_default().push(g);
}

fn remove_route<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<GroupId>>, k: &K, g: GroupId) {
    if let Some(v) = map.get_mut(k) {
        v.retain(|x| *x != g);
        if v.is_empty() {
            map.remove(k);
        }
    }
}

impl Routes {
    fn unroute(&mut self, id: GroupId, g: &Group) {
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

    fn unroute_range(
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

    fn topn_key(g: &Group) -> Option<(Option<String>, bool)> {
        match &g.kind {
            Kind::TopN(t) => Some((t.order.ix.as_ref().map(|ix| ix.name.clone()), t.order.desc)),
            Kind::Rows { .. } => None,
        }
    }

    /// Removes a top-N group's boundary and members from the routes.
    fn unregister_topn(&mut self, id: GroupId, key: &(Option<String>, bool), reg: &TopReg) {
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
    fn register_topn(&mut self, id: GroupId) {
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

    fn remove_group(&mut self, id: GroupId) -> Option<Group> {
        let mut g = self.groups.remove(&id)?;
        self.by_signature.remove(&g.signature);
        self.unroute(id, &g);
        if let (Some(key), Some(reg)) = (Self::topn_key(&g), g.topn_reg.take()) {
            self.unregister_topn(id, &key, &reg);
        }
        Some(g)
    }

    /// The groups a change may concern.
    fn candidates(&self, c: &Committed, scratch: &mut Scratch, ctx: &mut ChangeCtx<'_>) {
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
                    let keys = super::spec::OrderedIndex::index_keys(tr.ix.as_deref(), &c.key, doc);
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
                    for new in [false, true] {
                        for k in ctx.keys(ix, new) {
                            r.ranges.stab(k, out);
                        }
                    }
                }
            }
        }
        out.extend_from_slice(&self.scan);
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }
}

/// Per-change work shared by every rows group the change reaches: the row's key, the old
/// and new documents' keys in each index a range group reads, and the items of groups that
/// see whole rows (identical for all of them, so one allocation is shared).
struct ChangeCtx<'a> {
    c: &'a Committed,
    key: Arc<[u8]>,
    /// (index, keys of the old document, keys of the new one).
    index_keys: Vec<(*const IndexState, Vec<Vec<u8>>, Vec<Vec<u8>>)>,
    /// Items of untransformed groups, by (row before, row after) presence.
    plain: [Option<Change>; 3],
}

impl<'a> ChangeCtx<'a> {
    fn new(c: &'a Committed) -> Self {
        ChangeCtx {
            c,
            key: Arc::from(&c.key[..]),
            index_keys: Vec::new(),
            plain: [None, None, None],
        }
    }

    /// The keys of the old (`new: false`) or new document in `ix`, computed once.
    fn keys(&mut self, ix: &IndexState, new: bool) -> &[Vec<u8>] {
        let id = ix as *const IndexState;
        let at = match self.index_keys.iter().position(|(p, _, _)| *p == id) {
            Some(at) => at,
            None => {
                let of = |d: &Option<Arc<Value>>| {
                    d.as_deref()
                        .map(|d| ix.compiled.keys(d, &self.c.key))
                        .unwrap_or_default()
                };
                self.index_keys.push((id, of(&self.c.old), of(&self.c.new)));
                self.index_keys.len() - 1
            }
        };
        let (_, old, newk) = &self.index_keys[at];
        if new {
            newk
        } else {
            old
        }
    }

    /// How many times the old or new document is in the matcher's rows.
    fn count(&mut self, matcher: &Matcher, new: bool) -> usize {
        let doc = if new { &self.c.new } else { &self.c.old };
        let Some(d) = doc else { return 0 };
        match matcher {
            Matcher::IndexRange { ix, .. } => {
                let keys = self.keys(ix, new);
                matcher.count_keys(keys)
            }
            _ => matcher.count(&self.c.key, d),
        }
    }

    /// The shared item of an untransformed row entering, leaving or changing.
    fn plain(&mut self, old: bool, new: bool) -> Change {
        let slot = match (old, new) {
            (true, true) => 0,
            (true, false) => 1,
            _ => 2,
        };
        let (c, key) = (self.c, &self.key);
        self.plain[slot]
            .get_or_insert_with(|| {
                Change::row(
                    Some(key.clone()),
                    c.old.clone().filter(|_| old),
                    c.new.clone().filter(|_| new),
                )
                .at(c.seq)
            })
            .clone()
    }
}

impl Group {
    /// The items a rows group's feeds get for a change.
    fn items(&mut self, ctx: &mut ChangeCtx<'_>, out: &mut Vec<Change>) {
        let (matcher, view) = match &mut self.kind {
            Kind::TopN(_) => unreachable!("top-N groups take a commit at a time"),
            Kind::Rows { matcher, view } => (matcher, view),
        };
        let old_n = ctx.count(matcher, false);
        let new_n = ctx.count(matcher, true);
        if old_n == 0 && new_n == 0 {
            return;
        }
        if view.is_identity() && old_n <= 1 && new_n <= 1 {
            // The common case: whole rows, each once. Every such group delivers the same item.
            out.push(ctx.plain(old_n == 1, new_n == 1));
            return;
        }
        let c = ctx.c;
        let seen = |n: usize, doc: &Option<Arc<Value>>| match doc {
            Some(d) if n > 0 => view.apply(d),
            _ => None,
        };
        let (old, new) = (seen(old_n, &c.old), seen(new_n, &c.new));
        let old_n = if old.is_some() { old_n } else { 0 };
        let new_n = if new.is_some() { new_n } else { 0 };
        let key = &ctx.key;
        let both = old_n.min(new_n);
        // The row's places in the result, numbered: place i is there before the write when
        // i < old_n and after it when i < new_n (squashing merges per row and place).
        if old != new {
            for i in 0..both {
                out.push(
                    Change::row(Some(key.clone()), old.clone(), new.clone())
                        .nth(i)
                        .at(c.seq),
                );
            }
        }
        for i in both..old_n {
            out.push(
                Change::row(Some(key.clone()), old.clone(), None)
                    .nth(i)
                    .at(c.seq),
            );
        }
        for i in both..new_n {
            out.push(
                Change::row(Some(key.clone()), None, new.clone())
                    .nth(i)
                    .at(c.seq),
            );
        }
    }
}

/// A new subscription: its membership, its initial rows, and (for readers of the group's
/// shared log) the log and its reader position.
pub(crate) struct Subscribed {
    pub registration: Registration,
    pub initial: Initial,
    pub reader: Option<(Arc<Log>, Reader)>,
}

/// What a new subscription starts from.
pub(crate) enum Initial {
    /// The rows to deliver first (already transformed), best first for top-N feeds.
    Rows(Vec<Arc<Value>>),
    /// Nothing was asked for.
    None,
}

impl Hub {
    /// True when no feed is open anywhere (writers skip the hub).
    pub(crate) fn is_idle(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// Delivers committed changes to the feeds that watch them. Called by the write path
    /// under the commit lock, in commit order.
    /// The consumers to wake are added to `wakes`; the caller wakes them after releasing
    /// the commit lock, so that writers do not hold it while tasks are scheduled.
    pub(crate) fn publish(
        &self,
        table: &Arc<TableState>,
        changes: &[Committed],
        wakes: &mut Vec<Waker>,
    ) {
        if self.is_idle() {
            return;
        }
        let Some(feeds) = self.tables.read().get(&table.name).cloned() else {
            return;
        };
        let mut routes = feeds.routes.lock();
        let mut scratch = Scratch::default();
        // Top-N groups see the commit as one step: their changes are collected here and
        // applied together once every change of the commit has been routed.
        let mut topn: Vec<(GroupId, Vec<&Committed>)> = Vec::new();
        let mut items = Vec::new();
        for c in changes {
            let mut ctx = ChangeCtx::new(c);
            routes.candidates(c, &mut scratch, &mut ctx);
            for id in &scratch.ids {
                let Some(group) = routes.groups.get_mut(id) else {
                    continue;
                };
                if let Kind::TopN(_) = group.kind {
                    match topn.iter_mut().find(|(g, _)| g == id) {
                        Some((_, cs)) => cs.push(c),
                        None => topn.push((*id, vec![c])),
                    }
                    continue;
                }
                group.items(&mut ctx, &mut items);
                for item in items.drain(..) {
                    group.members.deliver(item, wakes);
                }
            }
        }
        // The items of a top-N group carry the sequence number of the commit's last change.
        let last_seq = changes.last().map_or(0, |c| c.seq);
        for (id, cs) in topn {
            let Some(group) = routes.groups.get_mut(&id) else {
                continue;
            };
            let Kind::TopN(t) = &mut group.kind else {
                continue;
            };
            match t.apply_commit(table, &cs) {
                Ok((items, moved)) => {
                    for item in items {
                        group.members.deliver(item.at(last_seq), wakes);
                    }
                    if moved {
                        routes.register_topn(id);
                    }
                }
                Err(e) => {
                    // A storage error while refilling a top-N set: its feeds cannot go on
                    // correctly, so they end with the error.
                    group.members.close(&Error::FeedAborted(format!(
                        "the feed could not be maintained: {e}"
                    )));
                }
            }
        }
    }

    /// Adds a subscriber for `plan`, joining the group of an identical query when there is one.
    /// The caller holds the commit lock, so `initial` (read here) and the changes that follow
    /// fit together exactly.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        plan: FeedPlan,
        signature: String,
        join: Join,
        initial_rows: impl FnOnce() -> Result<Vec<Arc<Value>>>,
        want_initial: bool,
    ) -> Result<Subscribed> {
        let table = match &plan {
            FeedPlan::Rows { table, .. } | FeedPlan::TopN { table, .. } => table.clone(),
            FeedPlan::Stats { .. } => unreachable!("stats feeds are timer feeds"),
        };
        let feeds = self
            .tables
            .write()
            .entry(table.name.clone())
            .or_default()
            .clone();
        let mut routes = feeds.routes.lock();
        let signature: Arc<str> = signature.into();
        let id = match routes.by_signature.get(&signature) {
            Some(id) => *id,
            None => {
                let kind = match plan {
                    FeedPlan::Rows { matcher, view, .. } => Kind::Rows { matcher, view },
                    FeedPlan::TopN {
                        order, view, limit, ..
                    } => Kind::TopN(TopN::load(&table, order, view, limit)?),
                    FeedPlan::Stats { .. } => unreachable!("checked above"),
                };
                let id = routes.next_id;
                routes.next_id += 1;
                let (route, index) = match &kind {
                    Kind::Rows { matcher, view } => {
                        let index = matcher.index_name().map(str::to_string);
                        let route = match matcher {
                            Matcher::Keys(_) => Route::Keys,
                            Matcher::IndexValues { .. } => Route::IndexValues,
                            Matcher::All => match view.routing_eq() {
                                Some((path, value)) => Route::Eq { path, value },
                                None => Route::Scan,
                            },
                            Matcher::PrimaryRange { .. } | Matcher::IndexRange { .. } => {
                                Route::Range
                            }
                        };
                        if let Matcher::IndexValues { ix, .. } = matcher {
                            routes
                                .by_index_value
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
                            add_route(&mut routes.by_key, k.clone(), id);
                        }
                    }
                    (
                        Route::IndexValues,
                        Kind::Rows {
                            matcher: Matcher::IndexValues { ix, values },
                            ..
                        },
                    ) => {
                        let r = routes
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
                            routes.by_eq.entry(path.clone()).or_default(),
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
                    ) => routes
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
                    ) => routes
                        .by_range
                        .entry(Some(ix.name.clone()))
                        .or_insert_with(|| RangeRoutes {
                            ix: Some(ix.clone()),
                            ranges: RangeIndex::default(),
                        })
                        .ranges
                        .insert(lo, hi, id),
                    (Route::Range, _) => unreachable!("range routes follow range matchers"),
                    (Route::Scan, _) => routes.scan.push(id),
                    (Route::TopN, _) => {}
                }
                let is_topn = matches!(route, Route::TopN);
                routes.by_signature.insert(signature.clone(), id);
                routes.groups.insert(
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
                    routes.register_topn(id);
                }
                id
            }
        };
        let sub_id = routes.next_id;
        routes.next_id += 1;
        let group = routes.groups.get_mut(&id).expect("group exists");
        let initial = if want_initial {
            match &group.kind {
                Kind::TopN(t) => Initial::Rows(t.rows().cloned().collect()),
                Kind::Rows { .. } => Initial::Rows(initial_rows()?),
            }
        } else {
            Initial::None
        };
        let (own, reader) = match join {
            Join::Own(sub) => {
                if let Kind::TopN(t) = &group.kind {
                    // A squashing top-N feed reports batches as the difference between the
                    // set its consumer knows and the set now, starting from this one.
                    sub.track_list(t.list());
                }
                group.members.own.push((sub_id, sub));
                (Some(sub_id), None)
            }
            Join::Shared(capacity) => {
                let log = group
                    .members
                    .log
                    .get_or_insert_with(Default::default)
                    .clone();
                group.members.shared += 1;
                let reader = log.join(capacity);
                (None, Some((log, reader)))
            }
        };
        drop(routes);
        feeds.open.fetch_add(1, Ordering::AcqRel);
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(Subscribed {
            registration: Registration {
                table: feeds,
                hub_open: self.clone(),
                group: id,
                own,
            },
            initial,
            reader,
        })
    }

    /// Counts a feed that is not routed through a table (stats feeds).
    pub(crate) fn count_timer_feed(&self, delta: isize) {
        if delta > 0 {
            self.open.fetch_add(1, Ordering::AcqRel);
        } else {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Ends the feeds of a dropped table.
    pub(crate) fn abort_table(&self, table: &str, why: &str) {
        if let Some(feeds) = self.tables.write().remove(table) {
            let mut routes = feeds.routes.lock();
            let ids: Vec<GroupId> = routes.groups.keys().copied().collect();
            for id in ids {
                if let Some(g) = routes.remove_group(id) {
                    g.members.close(&Error::FeedAborted(why.to_string()));
                }
            }
        }
    }

    /// Ends the feeds that read a dropped index.
    pub(crate) fn abort_index(&self, table: &str, index: &str, why: &str) {
        let Some(feeds) = self.tables.read().get(table).cloned() else {
            return;
        };
        let mut routes = feeds.routes.lock();
        let ids: Vec<GroupId> = routes
            .groups
            .iter()
            .filter(|(_, g)| g.index.as_deref() == Some(index))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(g) = routes.remove_group(id) {
                g.members.close(&Error::FeedAborted(why.to_string()));
            }
        }
        routes.by_index_value.remove(index);
    }

    /// Ends every feed (the database is closing).
    pub(crate) fn abort_all(&self, why: &str) {
        let tables: Vec<String> = self.tables.read().keys().cloned().collect();
        for t in tables {
            self.abort_table(&t, why);
        }
    }

    /// Open feeds on `table`, or in the whole database.
    pub(crate) fn feed_count(&self, table: Option<&str>) -> usize {
        match table {
            None => self.open.load(Ordering::Acquire),
            Some(t) => self
                .tables
                .read()
                .get(t)
                .map_or(0, |f| f.open.load(Ordering::Acquire)),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut routes = self.table.routes.lock();
        if let Some(g) = routes.groups.get_mut(&self.group) {
            match self.own {
                Some(own) => g.members.own.retain(|(id, _)| *id != own),
                None => g.members.shared -= 1,
            }
            if g.members.is_empty() {
                routes.remove_group(self.group);
            }
        }
        drop(routes);
        self.table.open.fetch_sub(1, Ordering::AcqRel);
        self.hub_open.open.fetch_sub(1, Ordering::AcqRel);
    }
}
