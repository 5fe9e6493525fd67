//! The hub: where committed changes meet the feeds that watch them.
//!
//! Feeds that watch the same query share one group (found by the structural key of their
//! plan, [`GroupKey`]): its operator runs once per write, and each resulting item is
//! appended once to the group's log (squashing members, which merge per consumer, get it in
//! their own queue). Groups are found by the routes their operators declare
//! ([`crate::feed::ops::Route`], `routes.rs`), so that routing a write costs in proportion
//! to the feeds it concerns; groups that follow another table (joins) are also found by that
//! table's writes (`follow.rs`). The hub knows groups only through the
//! [`Operator`] trait (see `feed::ops`).
//!
//! Everything here that changes routes or sees a change runs under the commit lock, so a
//! feed's initial snapshot and its first change are separated by no gap and no overlap.
//! (Feeds leave without it: a group then goes, under its table's routes lock.)

mod follow;
mod group;
mod publish;
mod routes;
mod tail;

use super::log::{Log, Reader};
use super::ops::{AnyOperator, GroupKey, Operator};
use super::queue::Subscriber;
use super::spec::FeedPlan;
use crate::{Error, Result};
use follow::{FollowedEdits, Followers};
use group::Member;
use parking_lot::{Mutex, RwLock};
use routes::{GroupId, Routes};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub(crate) struct Hub {
    tables: RwLock<HashMap<String, Arc<TableFeeds>>>,
    /// Every open feed, stats feeds included (a fast "no feeds at all" check for writers).
    open: AtomicUsize,
    /// Routes from writes of one table to the groups of others that follow it.
    followers: Followers,
    /// The newest changes, ready for feeds that resume (`tail.rs`).
    tail: tail::Tail,
}

/// The groups of a table and their routes.
pub(crate) struct TableFeeds {
    /// The table's name (the followed routes of a group are kept under it), here rather
    /// than in every feed's registration.
    name: String,
    routes: Mutex<Routes>,
    open: AtomicUsize,
}

/// How a new feed receives its items.
pub(crate) enum Delivery {
    /// By reading the group's log, with this queue size (feeds that do not squash).
    Log(usize),
    /// Through a queue of its own (squashing feeds: merging is per consumer).
    Queue(Arc<Subscriber>),
}

/// A feed's membership in a group; dropping it leaves the group (the last member's leaving
/// removes the group and its routes).
pub(crate) struct Registration {
    table: Arc<TableFeeds>,
    hub: Arc<Hub>,
    group: GroupId,
    member: Member,
}

/// A new subscription: its membership, its initial rows if it asked for them, and (for
/// readers of the group's log) the log and its reader position.
pub(crate) struct Subscribed {
    pub registration: Registration,
    pub initial: Option<Vec<Arc<Value>>>,
    pub reader: Option<(Arc<Log>, Reader)>,
}

impl Hub {
    /// True when no feed is open anywhere (writers skip the hub).
    pub(crate) fn is_idle(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// The groups of a table, if it has any.
    #[inline]
    fn feeds_of(&self, table: &str) -> Option<Arc<TableFeeds>> {
        self.tables.read().get(table).cloned()
    }

    /// Adds a subscriber for `plan`, joining the group of an identical query when there is
    /// one. The caller holds the commit lock, so the initial rows (read here) and the
    /// changes that follow fit together exactly. `initial_rows` reads the feed's own query
    /// (for operators that keep no result), when `want_initial`.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        plan: FeedPlan,
        delivery: Delivery,
        initial_rows: impl FnOnce() -> Result<Vec<Arc<Value>>>,
        want_initial: bool,
    ) -> Result<Subscribed> {
        let FeedPlan::Table(plan) = plan else {
            unreachable!("stats feeds are timer feeds")
        };
        let name = &plan.table().name;
        // The read lock first: feeds are opened far more often than tables get their first.
        let found = self.tables.read().get(name).cloned();
        let feeds = match found {
            Some(feeds) => feeds,
            None => self
                .tables
                .write()
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(TableFeeds {
                        name: name.clone(),
                        routes: Mutex::default(),
                        open: AtomicUsize::new(0),
                    })
                })
                .clone(),
        };
        let name = &feeds.name;
        let mut routes = feeds.routes.lock();
        let key = plan.key();
        let id = match routes.find(&key) {
            Some(id) => id,
            None => self.add_group(&mut routes, name, key, plan.load()?),
        };
        let initial = match Self::initial(&routes, id, initial_rows, want_initial) {
            Ok(initial) => initial,
            Err(e) => {
                self.remove_if_empty(&mut routes, name, id);
                return Err(e);
            }
        };
        let member_id = routes.next_id();
        let group = routes.groups.get_mut(&id).expect("found or added above");
        let op = &group.op;
        let (member, reader) = group.members.join(member_id, delivery, || op.list());
        drop(routes);
        feeds.open.fetch_add(1, Ordering::AcqRel);
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(Subscribed {
            registration: Registration {
                table: feeds,
                hub: self.clone(),
                group: id,
                member,
            },
            initial,
            reader,
        })
    }

    /// Registers a new group of table `table` and its routes.
    fn add_group(
        &self,
        routes: &mut Routes,
        table: &str,
        key: GroupKey,
        op: AnyOperator,
    ) -> GroupId {
        let mut followed = FollowedEdits::default();
        let id = routes.add_group(key, op, &mut followed);
        // Under the table's routes, then the followers' (never the other way round while
        // both are held).
        self.followers.apply(table, followed);
        id
    }

    /// A new member's initial rows, if it asked for them.
    fn initial(
        routes: &Routes,
        id: GroupId,
        initial_rows: impl FnOnce() -> Result<Vec<Arc<Value>>>,
        want_initial: bool,
    ) -> Result<Option<Vec<Arc<Value>>>> {
        if !want_initial {
            return Ok(None);
        }
        let group = routes.groups.get(&id).expect("found or added above");
        group.op.initial(initial_rows).map(Some)
    }

    /// Removes a group no feed is a member of (one made for a feed that then failed to open).
    fn remove_if_empty(&self, routes: &mut Routes, table: &str, id: GroupId) {
        if routes.groups.get(&id).is_some_and(|g| g.members.is_empty()) {
            let mut followed = FollowedEdits::default();
            routes.remove_group(id, &mut followed);
            self.followers.apply(table, followed);
        }
    }

    /// The items a rows feed of `plan` gets for a change read back from the change log
    /// (a resuming feed), exactly as the live path makes them.
    pub(crate) fn replay_items(
        plan: &FeedPlan,
        c: &crate::db::write::Committed,
        out: &mut Vec<super::Change>,
    ) {
        if let Some(rows) = plan.rows() {
            rows.items(&mut super::ops::ChangeCtx::new(c), out);
        }
    }

    /// Counts a feed that is not routed through a table (stats feeds).
    pub(crate) fn count_timer_feed(&self, delta: isize) {
        if delta > 0 {
            self.open.fetch_add(1, Ordering::AcqRel);
        } else {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Ends the feeds of a dropped table, and those that follow it.
    pub(crate) fn abort_table(&self, table: &str, why: &str) {
        let removed = self.tables.write().remove(table);
        if let Some(feeds) = removed {
            let mut routes = feeds.routes.lock();
            let ids: Vec<GroupId> = routes.groups.keys().copied().collect();
            self.abort_groups(&mut routes, table, ids, why);
        }
        self.abort_followers(table, None, why);
    }

    /// Ends the feeds that read a dropped index, and those that follow the table in it.
    pub(crate) fn abort_index(&self, table: &str, index: &str, why: &str) {
        if let Some(feeds) = self.feeds_of(table) {
            let mut routes = feeds.routes.lock();
            let ids: Vec<GroupId> = routes
                .groups
                .iter()
                .filter(|(_, g)| g.op.reads_index(index))
                .map(|(id, _)| *id)
                .collect();
            self.abort_groups(&mut routes, table, ids, why);
            routes.table.forget_index(index);
        }
        self.abort_followers(table, Some(index), why);
    }

    /// Ends the groups that follow `table` (in its key space `index`, or in any), whether
    /// or not they route any key of it now. Looks at every group: tables and indexes are
    /// dropped rarely.
    fn abort_followers(&self, table: &str, index: Option<&str>, why: &str) {
        let tables: Vec<(String, Arc<TableFeeds>)> = self
            .tables
            .read()
            .iter()
            .map(|(name, feeds)| (name.clone(), feeds.clone()))
            .collect();
        for (name, feeds) in tables {
            let mut routes = feeds.routes.lock();
            let ids: Vec<GroupId> = routes
                .groups
                .iter()
                .filter(|(_, g)| g.op.follows(table, index))
                .map(|(id, _)| *id)
                .collect();
            if !ids.is_empty() {
                self.abort_groups(&mut routes, &name, ids, why);
            }
        }
    }

    /// Removes groups of `table` and their routes, and ends their feeds with `why`.
    fn abort_groups(&self, routes: &mut Routes, table: &str, ids: Vec<GroupId>, why: &str) {
        let mut followed = FollowedEdits::default();
        for id in ids {
            if let Some(g) = routes.remove_group(id, &mut followed) {
                g.members.close(&Error::FeedAborted(why.to_string()));
            }
        }
        self.followers.apply(table, followed);
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

impl Hub {
    /// Groups on `table`, or in the whole database (each table's routes locked in turn:
    /// for the stats table, not for writers).
    pub(crate) fn group_count(&self, table: Option<&str>) -> usize {
        let tables = self.tables.read();
        let count = |f: &Arc<TableFeeds>| f.routes.lock().groups.len();
        match table {
            None => tables.values().map(count).sum(),
            Some(t) => tables.get(t).map_or(0, count),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut routes = self.table.routes.lock();
        if let Some(g) = routes.groups.get_mut(&self.group) {
            g.members.leave(&self.member);
            if g.members.is_empty() {
                self.hub
                    .remove_if_empty(&mut routes, &self.table.name, self.group);
            }
        }
        drop(routes);
        self.table.open.fetch_sub(1, Ordering::AcqRel);
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use crate::{field, Database, Error};
    use futures_util::StreamExt;
    use serde_json::json;

    /// How many groups table `table` has.
    fn groups(db: &Database, table: &str) -> usize {
        let hub = db.inner.sink_as::<super::Hub>();
        hub.feeds_of(table)
            .map_or(0, |f| f.routes.lock().groups.len())
    }

    #[tokio::test]
    async fn feeds_of_queries_described_alike_share_one_group() {
        let db = Database::temporary().await.unwrap();
        db.create_table("t").await.unwrap();
        let t = db.table("t");
        // Built apart; 1 and 1.0 compare equal, so both filters select the same rows.
        let a = t.filter(field("n").eq(1)).changes().await.unwrap();
        let b = t.filter(field("n").eq(1.0)).changes().await.unwrap();
        assert_eq!(groups(&db, "t"), 1);
        let c = t.filter(field("n").eq(2)).changes().await.unwrap();
        let d = t.get_all([json!(1), json!(2)]).changes().await.unwrap();
        let e = t.get_all([json!(2), json!(1)]).changes().await.unwrap();
        let f = t.get_all([json!(1), json!(1)]).changes().await.unwrap();
        assert_eq!(groups(&db, "t"), 4, "n == 2, keys {{1, 2}}, key 1 twice");
        drop((a, b, c));
        assert_eq!(groups(&db, "t"), 2, "a group goes with its last feed");
        drop((d, e, f));
        assert_eq!(groups(&db, "t"), 0);
    }

    #[tokio::test]
    async fn a_join_ends_with_its_right_table_even_before_it_joins_anything() {
        let db = Database::temporary().await.unwrap();
        db.create_table("l").await.unwrap();
        db.create_table("r").await.unwrap();
        let mut pairs = db
            .table("l")
            .query()
            .eq_join("r_id", "r")
            .changes()
            .await
            .unwrap();
        db.drop_table("r").await.unwrap();
        let end = pairs.next().await;
        assert!(matches!(end, Some(Err(Error::FeedAborted(_)))), "{end:?}");
        assert!(pairs.next().await.is_none());
        assert_eq!(groups(&db, "l"), 0);
    }
}
