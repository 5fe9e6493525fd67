//! Publishing a commit: the steps by which one commit's changes reach the feeds, table by
//! table.
//!
//! 1. Changes of the table that other groups follow (a join's right rows) are set aside
//!    for those joins ([`Joins`]).
//! 2. Each change is routed to the groups it concerns; groups that take a change at a time
//!    make their items, which are appended to their logs and queues right away; the readers
//!    of every log that took an item are woken after one fence for all of them
//!    ([`deliver_changes`]).
//! 3. Groups that take a commit as one step get the changes that reached them together,
//!    once all of them are routed ([`apply_commit`]), so that none of their items reflects
//!    part of a commit; their route changes are made before the routes are released. A join
//!    that follows a table the commit writes (another, or its own) sets them aside too.
//! 4. Once every table is published, each join applies what was set aside for it, its left
//!    and right changes together in commit order, and delivers their items as one step.
//!
//! Applied as they came (a join's right changes as each table was published, its left ones
//! with its table), a commit that wrote both tables of a join gave its items out of their
//! positions' order, in deliveries a reader could see apart; a join of a table with itself,
//! even when the commit wrote only that table.

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
        let mut joins = Joins::default();
        for (table, changes) in committed.iter().filter(|(_, c)| !c.is_empty()) {
            self.publish_table(table, changes, committed, &mut joins, wakes);
        }
        if !joins.groups.is_empty() {
            joins.apply(self, committed, wakes);
        }
    }

    /// One table's changes of `commit`; the changes that reach joins following a table the
    /// commit writes go to `joins` (see [`Joins`]).
    fn publish_table<'c>(
        &self,
        table: &Arc<TableState>,
        changes: &'c [Committed],
        commit: &[(Arc<TableState>, Vec<Committed>)],
        joins: &mut Joins<'c>,
        wakes: &mut Vec<Waker>,
    ) {
        if self.followers.any() {
            for (left, id, c) in self.followers.targets(&table.name, changes) {
                joins.right(left, id, c);
            }
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
            // A join that follows a table this commit writes (another, or its own: a join
            // of a table with itself) applies its changes of both with the others'.
            let joins_written = routes.groups.get(&id).is_some_and(|g| {
                commit
                    .iter()
                    .any(|(t, c)| !c.is_empty() && g.op.follows(&t.name, None))
            });
            if joins_written {
                joins.left(&table.name, id, changes);
                continue;
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
}

/// The changes of a commit that reached joins through the tables they follow (and, for a
/// join that follows a table the commit writes, through their own), set aside until every
/// table is published: each join then applies them in commit order (runs of left changes as
/// one step, each right change on its own; a change of a join of a table with itself as a
/// right change, then as a left one) and delivers all their items at once.
#[derive(Default)]
struct Joins<'c> {
    /// Per join (its left table, its group): its changes.
    groups: Vec<(String, GroupId, Vec<Side<'c>>)>,
    /// Where each join is in `groups` (a right row of a popular key reaches thousands).
    at: std::collections::HashMap<(String, GroupId), usize>,
}

/// A change that reached a join: of its left table (`true`) or of the right one.
type Side<'c> = (bool, &'c Committed);

impl<'c> Joins<'c> {
    fn entry(&mut self, table: String, id: GroupId) -> &mut Vec<Side<'c>> {
        let next = self.groups.len();
        let at = *self.at.entry((table.clone(), id)).or_insert(next);
        if at == next {
            self.groups.push((table, id, Vec::new()));
        }
        &mut self.groups[at].2
    }

    fn left(&mut self, table: &str, id: GroupId, changes: Vec<&'c Committed>) {
        self.entry(table.to_owned(), id)
            .extend(changes.into_iter().map(|c| (true, c)));
    }

    fn right(&mut self, table: String, id: GroupId, c: &'c Committed) {
        self.entry(table, id).push((false, c));
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
            {
                let mut followed = FollowedEdits::default();
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
                    Some(e) => members.close(&unmaintained(op, &e)),
                }
                // Under the table's routes, then the followers' (see `follow.rs`): a group
                // removed meanwhile (its last feed dropped) would otherwise get its followed
                // routes back, for good.
                hub.followers.apply(&left, followed);
            }
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
        Err(e) => members.close(&unmaintained(op, &e)),
    }
}

/// How the feeds of a group end when a commit cannot be applied to it: a storage error
/// while refilling a top-N set or a min/max (or reading a join's right rows), or a sum of a
/// value that is not a number (the query itself now fails too): they cannot go on
/// correctly, so they end with the error.
fn unmaintained(op: &impl Operator, e: &Error) -> Error {
    Error::FeedAborted(format!("{} could not be maintained: {e}", op.name()))
}
