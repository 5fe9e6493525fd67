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

mod group;
mod routes;

use super::aggregate::LiveAgg;
use super::join::{JoinSpace, LiveJoin, RouteDelta};
use super::log::{Log, Reader};
use super::queue::Subscriber;
use super::spec::FeedPlan;
use super::topn::TopN;
use crate::db::write::Committed;
use crate::db::TableState;
use crate::{Error, Result};
use group::{ChangeCtx, Kind};
use parking_lot::{Mutex, RwLock};
use routes::{GroupId, Routes, Scratch};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;

#[derive(Default)]
pub(crate) struct Hub {
    tables: RwLock<HashMap<String, Arc<TableFeeds>>>,
    /// Every open feed, stats feeds included (a fast "no feeds at all" check for writers).
    open: AtomicUsize,
    /// Live joins by the right table's key space: join key -> (left table, group).
    joins: Mutex<HashMap<JoinSpace, JoinRoutes>>,
    /// Open join groups (writers skip the join routes when there are none).
    joins_open: AtomicUsize,
}

/// The join routes of one key space of a right table.
struct JoinRoutes {
    /// The right table's index (`None`: its primary key).
    ix: Option<Arc<crate::db::IndexState>>,
    by_key: HashMap<Vec<u8>, Vec<(String, GroupId)>>,
}

#[derive(Default)]
pub(crate) struct TableFeeds {
    routes: Mutex<Routes>,
    open: AtomicUsize,
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
    /// The table's name (a join group's routes are kept under it).
    name: String,
    hub_open: Arc<Hub>,
    group: GroupId,
    /// The private queue's id, or `None` for a reader of the shared log.
    own: Option<u64>,
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
        if self.joins_open.load(Ordering::Acquire) > 0 {
            self.publish_right(table, changes, wakes);
        }
        let Some(feeds) = self.tables.read().get(&table.name).cloned() else {
            return;
        };
        let mut routes = feeds.routes.lock();
        let mut scratch = Scratch::default();
        // Top-N and aggregate groups see the commit as one step: their changes are collected
        // here and applied together once every change of the commit has been routed.
        let mut topn: Vec<(GroupId, Vec<&Committed>)> = Vec::new();
        // Where each per-commit group's entry is in `topn` (a large commit reaches them often).
        let mut topn_at: HashMap<GroupId, usize> = HashMap::new();
        let mut join_deltas: Vec<(JoinSpace, GroupId, Vec<RouteDelta>)> = Vec::new();
        let mut items = Vec::new();
        // The logs that took an item: their waiting readers are looked for once, after one
        // fence for all of them (see `feed::log`).
        let mut appended: Vec<*const Log> = Vec::new();
        for c in changes {
            let mut ctx = ChangeCtx::new(c);
            routes.candidates(c, &mut scratch, &mut ctx);
            for id in &scratch.ids {
                let Some(group) = routes.groups.get_mut(id) else {
                    continue;
                };
                if group.kind.per_commit() {
                    match topn_at.get(id) {
                        Some(&at) => topn[at].1.push(c),
                        None => {
                            topn_at.insert(*id, topn.len());
                            topn.push((*id, vec![c]));
                        }
                    }
                    continue;
                }
                group.items(&mut ctx, &mut items);
                for item in items.drain(..) {
                    appended.extend(group.members.deliver_deferred(item, wakes));
                }
            }
        }
        if !appended.is_empty() {
            std::sync::atomic::fence(Ordering::SeqCst);
            for &log in &appended {
                // SAFETY: each pointer is the log of a group's producer (`Arc::as_ptr`),
                // and the producer (so its `Arc`) lives as long as the group; groups leave
                // only under the routes lock, which this function holds throughout.
                unsafe { &*log }.wake_waiting(wakes);
            }
        }
        // The items of a top-N group carry the sequence number of the commit's last change.
        let last_seq = changes.last().map_or(0, |c| c.seq);
        let commit = changes.first().map_or(0, |c| c.commit);
        for (id, cs) in topn {
            let Some(group) = routes.groups.get_mut(&id) else {
                continue;
            };
            let t = match &mut group.kind {
                Kind::TopN(t) => t,
                Kind::Rows {
                    matcher,
                    view,
                    join: Some(j),
                    ..
                } => {
                    let mut deltas = Vec::new();
                    match j.apply_left((matcher, view), &cs, &mut deltas) {
                        Ok(items) => {
                            for (i, ((seq, commit), item)) in items.into_iter().enumerate() {
                                group
                                    .members
                                    .deliver(item.at(seq, commit).numbered(i), wakes);
                            }
                        }
                        Err(e) => group.members.close(&Error::FeedAborted(format!(
                            "the join could not be maintained: {e}"
                        ))),
                    }
                    if !deltas.is_empty() {
                        join_deltas.push((j.def.space(), id, deltas));
                    }
                    continue;
                }
                Kind::Rows {
                    matcher,
                    view,
                    agg: Some(agg),
                    ..
                } => {
                    match agg.apply_commit((matcher, view), &cs) {
                        Ok(items) => {
                            for (i, item) in items.into_iter().enumerate() {
                                group
                                    .members
                                    .deliver(item.at(last_seq, commit).numbered(i), wakes);
                            }
                        }
                        // A storage error while refilling a min/max, or a sum of a value
                        // that is not a number (the query itself now fails too).
                        Err(e) => group.members.close(&Error::FeedAborted(format!(
                            "the aggregate could not be maintained: {e}"
                        ))),
                    }
                    continue;
                }
                Kind::Rows { .. } => continue,
            };
            match t.apply_commit(table, &cs) {
                Ok((items, moved)) => {
                    for (i, item) in items.into_iter().enumerate() {
                        group
                            .members
                            .deliver(item.at(last_seq, commit).numbered(i), wakes);
                    }
                    if moved && !group.members.own.is_empty() {
                        // Squashing members diff against the set itself.
                        let list = t.list();
                        for (_, sub) in &group.members.own {
                            sub.set_list(list.clone());
                        }
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
        drop(routes);
        let left = &table.name;
        for (space, id, deltas) in join_deltas {
            self.route_join(&space, left, id, deltas);
        }
    }

    /// Applies a commit's changes of a right table to the live joins that route its keys.
    fn publish_right(
        &self,
        table: &Arc<TableState>,
        changes: &[Committed],
        wakes: &mut Vec<Waker>,
    ) {
        // The targets first, then the groups: the join routes and a table's routes are
        // never locked together in this order (subscribing locks them the other way).
        let mut targets: Vec<(String, GroupId, &Committed)> = Vec::new();
        {
            let joins = self.joins.lock();
            for ((right, _), routes) in joins.iter() {
                if *right != table.name {
                    continue;
                }
                for c in changes {
                    // Every key space's keys of the old and new document; a group reached
                    // by several is applied once.
                    let first = targets.len();
                    let mut keys = Vec::new();
                    for d in [&c.old, &c.new].into_iter().flatten() {
                        match &routes.ix {
                            None => keys.push(c.key.clone()),
                            Some(ix) => keys.extend(
                                ix.compiled.values(d).iter().map(crate::value::encode_value),
                            ),
                        }
                    }
                    for k in keys {
                        if let Some(gs) = routes.by_key.get(&k) {
                            for (left, gid) in gs {
                                if !targets[first..]
                                    .iter()
                                    .any(|(l, g, _)| l == left && g == gid)
                                {
                                    targets.push((left.clone(), *gid, c));
                                }
                            }
                        }
                    }
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        let tables = self.tables.read().clone();
        for (left, gid, c) in targets {
            let Some(feeds) = tables.get(&left) else {
                continue;
            };
            let mut routes = feeds.routes.lock();
            let Some(group) = routes.groups.get_mut(&gid) else {
                continue;
            };
            let Kind::Rows { join: Some(j), .. } = &mut group.kind else {
                continue;
            };
            if j.def.right.name != table.name {
                continue;
            }
            for (i, item) in j.apply_right(c).into_iter().enumerate() {
                group
                    .members
                    .deliver(item.at(c.seq, c.commit).numbered(i), wakes);
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
        // A new join group's keys, routed once the group has its id.
        let mut new_join_keys = None;
        let id = match routes.by_signature.get(&signature) {
            Some(id) => *id,
            None => {
                let kind = match plan {
                    FeedPlan::Rows {
                        matcher,
                        view,
                        agg,
                        join,
                        ..
                    } => {
                        let join = match join {
                            None => None,
                            Some(plan) => {
                                let rows = keyed_rows(&plan.source)?;
                                let (j, keys) = LiveJoin::load(plan.def, rows)?;
                                new_join_keys = Some(keys);
                                Some(Box::new(j))
                            }
                        };
                        let agg = match agg {
                            None => None,
                            Some(plan) => {
                                let rows = keyed_rows(&plan.source)?;
                                Some(Box::new(LiveAgg::load(
                                    table.clone(),
                                    (&matcher, &view),
                                    plan.def,
                                    rows,
                                )?))
                            }
                        };
                        Kind::Rows {
                            matcher,
                            view,
                            agg,
                            join,
                        }
                    }
                    FeedPlan::TopN {
                        order, view, limit, ..
                    } => Kind::TopN(TopN::load(&table, order, view, limit)?),
                    FeedPlan::Stats { .. } => unreachable!("checked above"),
                };
                let space = match &kind {
                    Kind::Rows { join: Some(j), .. } => Some((j.def.space(), j.def.index.clone())),
                    _ => None,
                };
                let id = routes.add_group(signature, kind);
                if let (Some((space, ix)), Some(keys)) = (space, new_join_keys.take()) {
                    // Under the table's routes, then the join routes (never the other way
                    // round while both are held).
                    let mut joins = self.joins.lock();
                    let r = joins.entry(space).or_insert_with(|| JoinRoutes {
                        ix,
                        by_key: HashMap::new(),
                    });
                    for k in keys {
                        r.by_key
                            .entry(k)
                            .or_default()
                            .push((table.name.clone(), id));
                    }
                    self.joins_open.fetch_add(1, Ordering::AcqRel);
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
                Kind::Rows { agg: Some(a), .. } => Initial::Rows(a.rows()),
                Kind::Rows { join: Some(j), .. } => Initial::Rows(j.rows()?),
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
                    .log()
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
                name: table.name.clone(),
                table: feeds,
                hub_open: self.clone(),
                group: id,
                own,
            },
            initial,
            reader,
        })
    }

    /// The items a rows feed of `plan` gets for a change read back from the change log
    /// (a resuming feed), exactly as the live path makes them.
    pub(crate) fn replay_items(plan: &FeedPlan, c: &Committed, out: &mut Vec<super::Change>) {
        if let FeedPlan::Rows { matcher, view, .. } = plan {
            let mut ctx = ChangeCtx::new(c);
            group::row_items(matcher, view, &mut ctx, out);
        }
    }

    /// Applies a join group's route changes.
    fn route_join(&self, space: &JoinSpace, left: &str, id: GroupId, deltas: Vec<RouteDelta>) {
        let mut joins = self.joins.lock();
        let Some(r) = joins.get_mut(space) else {
            return;
        };
        for d in deltas {
            match d {
                RouteDelta::Add(k) => r.by_key.entry(k).or_default().push((left.to_string(), id)),
                RouteDelta::Remove(k) => {
                    if let Some(v) = r.by_key.get_mut(&k) {
                        v.retain(|(l, g)| !(l == left && *g == id));
                        if v.is_empty() {
                            r.by_key.remove(&k);
                        }
                    }
                }
            }
        }
    }

    /// Removes a closed join group's routes.
    fn unroute_join(&self, space: &JoinSpace, left: &str, id: GroupId, keys: Vec<Vec<u8>>) {
        self.route_join(
            space,
            left,
            id,
            keys.into_iter().map(RouteDelta::Remove).collect(),
        );
        self.joins_open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a feed that is not routed through a table (stats feeds).
    pub(crate) fn count_timer_feed(&self, delta: isize) {
        if delta > 0 {
            self.open.fetch_add(1, Ordering::AcqRel);
        } else {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Ends the feeds of a dropped table, and the joins that read it as their right table.
    pub(crate) fn abort_table(&self, table: &str, why: &str) {
        let mut unroute = Vec::new();
        if let Some(feeds) = self.tables.write().remove(table) {
            let mut routes = feeds.routes.lock();
            let ids: Vec<GroupId> = routes.groups.keys().copied().collect();
            for id in ids {
                if let Some(g) = routes.remove_group(id) {
                    g.members.close(&Error::FeedAborted(why.to_string()));
                    forget_join(table, id, &g, &mut unroute);
                }
            }
        }
        self.abort_joins_on(table, None, why, &mut unroute);
        for (space, left, id, keys) in unroute {
            self.unroute_join(&space, &left, id, keys);
        }
    }

    /// Ends the join groups whose right side is `table` (its key space `index`, or any).
    fn abort_joins_on(
        &self,
        table: &str,
        index: Option<&str>,
        why: &str,
        unroute: &mut Vec<(JoinSpace, String, GroupId, Vec<Vec<u8>>)>,
    ) {
        let mut targets: Vec<(String, GroupId)> = Vec::new();
        for ((right, space), r) in self.joins.lock().iter() {
            if right == table && index.is_none_or(|i| space.as_deref() == Some(i)) {
                for gs in r.by_key.values() {
                    targets.extend(gs.iter().cloned());
                }
            }
        }
        targets.sort();
        targets.dedup();
        let tables = self.tables.read().clone();
        for (left, id) in targets {
            let Some(feeds) = tables.get(&left) else {
                continue;
            };
            let mut routes = feeds.routes.lock();
            let is_join_on = matches!(
                routes.groups.get(&id).map(|g| &g.kind),
                Some(Kind::Rows { join: Some(j), .. }) if j.def.right.name == table
            );
            if is_join_on {
                if let Some(g) = routes.remove_group(id) {
                    g.members.close(&Error::FeedAborted(why.to_string()));
                    forget_join(&left, id, &g, unroute);
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
        let mut unroute = Vec::new();
        for id in ids {
            if let Some(g) = routes.remove_group(id) {
                g.members.close(&Error::FeedAborted(why.to_string()));
                forget_join(table, id, &g, &mut unroute);
            }
        }
        routes.by_index_value.remove(index);
        drop(routes);
        self.abort_joins_on(table, Some(index), why, &mut unroute);
        for (space, left, id, keys) in unroute {
            self.unroute_join(&space, &left, id, keys);
        }
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

/// Notes a removed join group's routes, to remove once the table's routes are released.
fn forget_join(
    table: &str,
    id: GroupId,
    g: &group::Group,
    out: &mut Vec<(JoinSpace, String, GroupId, Vec<Vec<u8>>)>,
) {
    if let Kind::Rows { join: Some(j), .. } = &g.kind {
        out.push((j.def.space(), table.to_string(), id, j.keys()));
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
                if let Some(g) = routes.remove_group(self.group) {
                    if let Kind::Rows { join: Some(j), .. } = &g.kind {
                        let (space, keys) = (j.def.space(), j.keys());
                        drop(routes);
                        self.hub_open
                            .unroute_join(&space, &self.name, self.group, keys);
                        self.table.open.fetch_sub(1, Ordering::AcqRel);
                        self.hub_open.open.fetch_sub(1, Ordering::AcqRel);
                        return;
                    }
                }
            }
        }
        drop(routes);
        self.table.open.fetch_sub(1, Ordering::AcqRel);
        self.hub_open.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The rows of the query a live join or aggregate starts from, with their primary keys.
fn keyed_rows(
    source: &crate::query::Query,
) -> Result<impl Iterator<Item = Result<(Vec<u8>, Value)>>> {
    Ok(source
        .plan()?
        .rows()
        .map(|r| r.map(|row| (row.key.to_vec(), row.doc))))
}
