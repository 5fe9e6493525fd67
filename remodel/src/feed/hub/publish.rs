//! Publishing a commit: the steps by which one commit's changes of a table reach the feeds.
//!
//! 1. Changes of the table that other tables' groups follow (a join's right rows) are applied
//!    to those groups, a change at a time ([`Hub::publish_followed`]).
//! 2. Each change is routed to the groups it concerns; groups that take a change at a time
//!    make their items, which are appended to their logs and queues right away; the readers
//!    of every log that took an item are woken after one fence for all of them
//!    ([`deliver_changes`]).
//! 3. Groups that take a commit as one step get the changes that reached them together,
//!    once all of them are routed ([`apply_commit`]), so that none of their items reflects
//!    part of a commit; their route changes are made before the routes are released.
//!
//! A commit is published table by table, except for joins when it writes several tables
//! ([`Joins`]): a join's changes of its left table (step 3) and of the right table it
//! follows (step 1) are set aside, and once every table is published each join applies
//! them together in commit order and delivers their items as one step. Published as they
//! came, a commit that wrote both tables of a join gave its items table by table, out of
//! their positions' order, and in two deliveries that a reader could see apart.

use super::follow::FollowedEdits;
use super::group::Group;
use super::routes::{ById, GroupId, RouteEdits, Routes, Scratch};
use super::Hub;
use crate::db::write::Committed;
use crate::db::TableState;
use crate::feed::log::Log;
use crate::feed::ops::{ChangeCtx, Commit, Operator, Step};
use crate::Error;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::task::Waker;

impl Hub {
    /// Delivers one commit's changes (per table) to the feeds that watch them. Called by
    /// the write path under the commit lock, in commit order. The consumers to wake are
    /// added to `wakes`; the caller wakes them after releasing the commit lock, so that
    /// writers do not hold it while tasks are scheduled.
    pub(crate) fn publish(
        &self,
        committed: &[(Arc<TableState>, Vec<Committed>)],
        wakes: &mut Vec<Waker>,
    ) {
        if self.is_idle() {
            return;
        }
        let mut written = committed.iter().filter(|(_, c)| !c.is_empty());
        let (Some(first), second) = (written.next(), written.next()) else {
            return;
        };
        let Some(second) = second else {
            // One table (most commits): published as it comes.
            return self.publish_table(&first.0, &first.1, None, wakes);
        };
        let tables: Vec<&str> = [first, second]
            .into_iter()
            .chain(written)
            .map(|(t, _)| t.name.as_str())
            .collect();
        let mut joins = Joins::default();
        for (table, changes) in committed.iter().filter(|(_, c)| !c.is_empty()) {
            let deferred = Deferred {
                joins: &mut joins,
                tables: &tables,
            };
            self.publish_table(table, changes, Some(deferred), wakes);
        }
        joins.apply(self, committed, wakes);
    }

    /// One table's changes of a commit; `defer`: of a commit that writes several tables,
    /// whose joins are applied once all are published (see [`Joins`]).
    fn publish_table<'c>(
        &self,
        table: &Arc<TableState>,
        changes: &'c [Committed],
        mut defer: Option<Deferred<'_, 'c>>,
        wakes: &mut Vec<Waker>,
    ) {
        if self.followers.any() {
            self.publish_followed(table, changes, defer.as_mut().map(|d| &mut *d.joins), wakes);
        }
        let Some(feeds) = self.feeds_of(&table.name) else {
            return;
        };
        let mut routes = feeds.routes.lock();
        let reached = deliver_changes(&routes, changes, wakes);
        if reached.groups.is_empty() {
            return;
        }
        // Items about a whole commit carry the place of its last change.
        let last_seq = changes.last().map_or(0, |c| c.seq);
        let position = changes.first().map_or(0, |c| c.commit);
        let mut followed = FollowedEdits::default();
        for (id, changes) in reached.groups {
            if let Some(d) = &mut defer {
                // A join that follows another table this commit writes: set aside.
                let group = routes.groups.get(&id);
                let joins_other = group.is_some_and(|g| {
                    d.tables
                        .iter()
                        .any(|&t| t != table.name && g.op.follows(t, None))
                });
                if joins_other {
                    d.joins.left(&table.name, id, changes);
                    continue;
                }
            }
            let commit = Commit {
                table,
                changes: &changes,
                last_seq,
                position,
            };
            apply_commit(&mut routes, id, &commit, &mut followed, wakes);
        }
        // Under the table's routes, then the followers' (see `follow.rs`).
        self.followers.apply(&table.name, followed);
    }

    /// Applies changes of a table to the groups (of other tables) that follow it (or, in a
    /// commit of several tables, sets them aside for [`Joins::apply`]).
    fn publish_followed<'c>(
        &self,
        table: &Arc<TableState>,
        changes: &'c [Committed],
        mut joins: Option<&mut Joins<'c>>,
        wakes: &mut Vec<Waker>,
    ) {
        // The targets first, then the groups: the followers' routes and a table's routes
        // are never locked together in this order.
        let targets = self.followers.targets(&table.name, changes);
        if let Some(joins) = &mut joins {
            for (left, id, c) in targets {
                joins.right(left, id, c);
            }
            return;
        }
        let mut items = Vec::new();
        for (left, id, c) in targets {
            let Some(feeds) = self.feeds_of(&left) else {
                continue;
            };
            let mut routes = feeds.routes.lock();
            let Some(Group { op, members, .. }) = routes.groups.get_mut(&id).map(|g| &mut **g)
            else {
                continue;
            };
            if !op.follows(&table.name, None) {
                continue;
            }
            op.apply_followed(c, &mut items);
            members.deliver_step(std::mem::take(&mut items), || op.list(), wakes);
        }
    }
}

/// How a table of a commit that writes several tables is published: its joins' changes go
/// to `joins` when the join follows another of the tables the commit writes (`tables`).
struct Deferred<'j, 'c> {
    joins: &'j mut Joins<'c>,
    tables: &'j [&'j str],
}

/// The changes of a commit of several tables that reached joins, set aside until every table
/// is published: each join then applies its left table's changes and its right table's in
/// commit order (runs of left changes as one step, each right change on its own, as they
/// would be published alone) and delivers all their items at once.
#[derive(Default)]
struct Joins<'c> {
    /// Per join (its left table, its group): its changes.
    groups: Vec<(String, GroupId, Vec<Side<'c>>)>,
}

/// A change that reached a join: of its left table (`true`) or of the right one.
type Side<'c> = (bool, &'c Committed);

impl<'c> Joins<'c> {
    fn entry(&mut self, table: &str, id: GroupId) -> &mut Vec<Side<'c>> {
        let at = match self
            .groups
            .iter()
            .position(|(t, g, _)| *g == id && t == table)
        {
            Some(at) => at,
            None => {
                self.groups.push((table.to_owned(), id, Vec::new()));
                self.groups.len() - 1
            }
        };
        &mut self.groups[at].2
    }

    fn left(&mut self, table: &str, id: GroupId, changes: Vec<&'c Committed>) {
        self.entry(table, id)
            .extend(changes.into_iter().map(|c| (true, c)));
    }

    fn right(&mut self, table: String, id: GroupId, c: &'c Committed) {
        self.entry(&table, id).push((false, c));
    }

    /// Applies each join's changes in commit order, delivers its items, makes its route
    /// changes.
    fn apply(
        self,
        hub: &Hub,
        committed: &[(Arc<TableState>, Vec<Committed>)],
        wakes: &mut Vec<Waker>,
    ) {
        for (left, id, mut changes) in self.groups {
            let Some(feeds) = hub.feeds_of(&left) else {
                continue;
            };
            // The left table's changes, if the commit wrote it (a join may have only right
            // changes); their numbers as the table's would be published alone.
            let mine = committed.iter().find(|(t, _)| t.name == left);
            let last_seq = mine.and_then(|(_, c)| c.last()).map_or(0, |c| c.seq);
            changes.sort_by_key(|(_, c)| c.seq);
            let position = changes.first().map_or(0, |(_, c)| c.commit);
            let mut followed = FollowedEdits::default();
            {
                let mut routes = feeds.routes.lock();
                let routes = &mut *routes;
                let Some(Group { op, members, .. }) = routes.groups.get_mut(&id).map(|g| &mut **g)
                else {
                    continue;
                };
                let mut edits = RouteEdits {
                    table: &mut routes.table,
                    id,
                    followed: &mut followed,
                };
                let mut items = Vec::new();
                let mut failed = None;
                for run in changes.chunk_by(|a, b| a.0 && b.0) {
                    if run[0].0 {
                        // Left changes come from the left table's, so it is there.
                        let Some((table, _)) = mine else { continue };
                        let lefts: Vec<&Committed> = run.iter().map(|(_, c)| *c).collect();
                        let commit = Commit {
                            table,
                            changes: &lefts,
                            last_seq,
                            position,
                        };
                        if let Err(e) = op.apply_commit(&commit, &mut items, &mut edits) {
                            failed = Some(e);
                            break;
                        }
                    } else {
                        op.apply_followed(run[0].1, &mut items);
                    }
                }
                match failed {
                    None => members.deliver_step(items, || op.list(), wakes),
                    Some(e) => members.close(&Error::FeedAborted(format!(
                        "{} could not be maintained: {e}",
                        op.name()
                    ))),
                }
            }
            hub.followers.apply(&left, followed);
        }
    }
}

/// The groups a commit reached that take it as one step, with the changes that reached
/// each, in the order the groups were first reached.
#[derive(Default)]
struct Reached<'c> {
    groups: Vec<(GroupId, Vec<&'c Committed>)>,
    /// Where each group is in `groups` (a large commit reaches them often).
    at: ById<usize>,
}

impl<'c> Reached<'c> {
    fn add(&mut self, id: GroupId, c: &'c Committed) {
        match self.at.get(&id) {
            Some(&at) => self.groups[at].1.push(c),
            None => {
                self.at.insert(id, self.groups.len());
                self.groups.push((id, vec![c]));
            }
        }
    }
}

/// Routes each change to the groups it concerns and delivers the items of those that take
/// a change at a time; returns those that take the commit as one step. The hot path: per
/// change and group, a lookup, the operator's items, and an append; the logs that took an
/// item are kept (borrowed from the routes) to wake their readers after one fence.
fn deliver_changes<'c>(
    routes: &Routes,
    changes: &'c [Committed],
    wakes: &mut Vec<Waker>,
) -> Reached<'c> {
    let mut scratch = Scratch::default();
    let mut reached = Reached::default();
    let mut items = Vec::new();
    let mut appended: Vec<&Log> = Vec::new();
    for c in changes {
        let mut ctx = ChangeCtx::new(c);
        routes.table.candidates(c, &mut scratch, &mut ctx);
        for id in &scratch.ids {
            let Some(group) = routes.groups.get(id) else {
                continue;
            };
            if group.op.step() == Step::Commit {
                reached.add(*id, c);
                continue;
            }
            group.op.change_items(&mut ctx, &mut items);
            for item in items.drain(..) {
                appended.extend(group.members.deliver_deferred(item, wakes));
            }
        }
    }
    if !appended.is_empty() {
        // One fence for every log a change reached, then their waiting readers (see
        // `feed::log`).
        fence(Ordering::SeqCst);
        for log in appended {
            log.wake_waiting(wakes);
        }
    }
    reached
}

/// Applies a commit to a group that takes it as one step, delivers the items, and makes
/// its route changes; a group that cannot be maintained ends its feeds.
fn apply_commit(
    routes: &mut Routes,
    id: GroupId,
    commit: &Commit<'_>,
    followed: &mut FollowedEdits,
    wakes: &mut Vec<Waker>,
) {
    let Some(Group { op, members, .. }) = routes.groups.get_mut(&id).map(|g| &mut **g) else {
        return;
    };
    let mut edits = RouteEdits {
        table: &mut routes.table,
        id,
        followed,
    };
    let mut items = Vec::new();
    match op.apply_commit(commit, &mut items, &mut edits) {
        Ok(()) => members.deliver_step(items, || op.list(), wakes),
        // A storage error while refilling a top-N set or a min/max, or a sum of a value
        // that is not a number (the query itself now fails too): its feeds cannot go on
        // correctly, so they end with the error.
        Err(e) => members.close(&Error::FeedAborted(format!(
            "{} could not be maintained: {e}",
            op.name()
        ))),
    }
}
