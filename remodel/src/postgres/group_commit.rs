//! Group commit: the single-table writes of many tasks in one PostgreSQL transaction.
//!
//! Each write is staged on its own (against the replica, as always) and then queued here
//! instead of being sent as a statement of its own. A *leader* (a task committing on a
//! connection of its own, at most one per commit connection) takes the queued writes of
//! one table and durability whose keys do not overlap, up to [`MAX_COMMIT_CHANGES`]
//! changes, and commits them with one execution of the table's prepared commit statement:
//! one transaction, one commit record and flush, one batch for every process's pump to
//! decode and apply. Writes that arrive while a group is being committed form the next
//! group, so the groups grow with the load and an idle database commits a lone write at
//! once, as before.
//!
//! Another leader starts when [`ANOTHER_LEADER_AT`] writes wait; and when a write is still
//! queued after [`ANOTHER_LEADER_AFTER`], a *relief* leader starts that takes only writes
//! of tables no group in flight is of, so that a group waiting on the server (for a table's
//! lock another process holds) holds up neither the other tables' writes nor every
//! connection.
//!
//! A group is all or nothing on the server, but its writes are not: when the server refuses
//! a group (a row of one write is no longer what it was staged against, another process
//! inserted one of its keys, any error of the statement), each of its writes is committed
//! again alone, so each gets the result it would have had without the others: its own
//! success, its own "stage again", its own error. When the connection fails with the
//! statement sent (it may have committed) or none can be had, each gets that error, as a
//! write alone would: none is sent twice. A queued write whose caller stopped waiting is
//! not sent. The writes of a group share their commit's position (their changes are
//! numbered in queue order within it), as the changes of one commit do.
//!
//! A leader is a spawned task: a write whose caller stops waiting (its future dropped)
//! does not take the other writes of its group with it.

use super::backend::{Failure, PgBackend, MAX_COMMIT_CHANGES};
use crate::{Error, Result};
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// How many writes must wait before a second (third, ...) leader starts on another
/// connection. Many small groups cost more than they save: every group is a transaction
/// that the server commits and every process's pump decodes and applies as one commit.
/// Measured with 64 writing tasks on 8 connections (`scale_out` bench, 20,000 inserts per
/// round): 8 gave 19,300 inserts/s, 32 gave 25,000/s, 48 (about one leader) 24,000-25,000/s.
const ANOTHER_LEADER_AT: usize = 32;

/// How long a write waits in the queue before it starts another leader (on another
/// connection, if one is free) whatever the queue's length: a leader whose group waits (for
/// a table's lock that another process holds, a slow server) must not hold up the writes
/// of other tables queued behind it. That leader starts with a table no group in flight is
/// of ([`Pick::OtherTable`]), so that the leaders do not all end up waiting on one lock; a
/// write already in a group starts none.
const ANOTHER_LEADER_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// A row of a single-table commit: key, document staged against (JSON text, `None`:
/// absent), new document (`None`: deleted), and whether it is written (else only checked).
#[derive(Clone, Debug)]
pub(super) struct Row {
    pub key: Vec<u8>,
    pub old: Option<String>,
    pub new: Option<String>,
    pub write: bool,
}

impl Row {
    /// A row absent when staged and written with a document: an insert, which the table's
    /// unique key decides at commit.
    pub fn is_insert(&self) -> bool {
        self.write && self.old.is_none() && self.new.is_some()
    }
}

/// One staged write of one table, ready to commit: its rows sorted by key, its change
/// records in commit order.
#[derive(Debug)]
pub(super) struct TableCommit {
    pub table: String,
    /// The table's primary key field as staged: a commit checks it against the catalog, so
    /// that a write staged against a table dropped and made again with another key is
    /// staged again instead of landing under a key of the old one.
    pub primary_key: String,
    pub rows: Vec<Row>,
    pub msgs: Vec<Vec<u8>>,
    pub hard: bool,
}

/// What a commit came to: `Some(xid)` committed in transaction `xid` (0: nothing to
/// write), `None`: a row is not what it was staged against (stage again).
pub(super) type Outcome = Result<Option<i64>>;

/// Which queued write a group starts with.
#[derive(Clone, Copy)]
enum Pick {
    /// The oldest.
    Oldest,
    /// The oldest of a table with no group being committed: a leader started because the
    /// others are slow must not wait on the same table's lock as they do.
    OtherTable,
}

struct Queued {
    commit: TableCommit,
    done: oneshot::Sender<Outcome>,
    /// Set when a leader takes the write into a group: from then on its caller waits for
    /// the server, and starts no leader however long that takes.
    taken: Arc<AtomicBool>,
}

/// The queue of writes waiting for a leader, and how many leaders run.
#[derive(Default)]
pub(super) struct GroupCommit {
    queue: Mutex<VecDeque<Queued>>,
    leaders: AtomicUsize,
    /// Which commit connections a leader commits on: each leader has its own, so that a
    /// group that waits on the server holds up no other leader's statements behind it.
    busy: Mutex<Vec<bool>>,
    /// The groups being committed (taken under the queue's lock, after it in lock order).
    in_flight: Mutex<Vec<InFlight>>,
    /// The ticket of the next group taken.
    tickets: AtomicU64,
    /// Woken whenever a group lands.
    landings: tokio::sync::Notify,
}

/// A group being committed: its table and keys, from the moment a leader takes it until its
/// outcome is known. A queued write with one of its keys waits until then, even when the
/// caller of the write in flight has stopped waiting: a write is never overtaken at the
/// server by a write of the same key queued after it (a dropped insert landing after the
/// same task's later delete found nothing would bring the row back).
struct InFlight {
    ticket: u64,
    table: String,
    keys: HashSet<Vec<u8>>,
}

impl InFlight {
    /// Whether `commit` touches a key of this group.
    fn blocks(&self, commit: &TableCommit) -> bool {
        self.table == commit.table && commit.rows.iter().any(|r| self.keys.contains(&r.key))
    }
}

impl GroupCommit {
    /// Takes the next group: the first queued write that no group being committed holds a
    /// key of (with `Pick::OtherTable`, the first of a table with no group being committed),
    /// and every later one of the same table and durability whose keys overlap none taken,
    /// none of a group being committed and none of an earlier write left queued, while the
    /// group holds at most [`MAX_COMMIT_CHANGES`] changes. The others stay queued, in order.
    /// The group counts as in flight until [`GroupCommit::landed`] with its ticket.
    fn take_group(&self, pick: Pick) -> (u64, Vec<Queued>) {
        let mut queue = self.queue.lock();
        // Taken before the writes whose callers stopped waiting are let go, and held until
        // the group is in flight: a write that selects its rows at commit, started after such
        // a drop, looks at `in_flight` (`wait_landed`) either before (then this sees the
        // drop) or after (then it sees the group).
        let mut in_flight = self.in_flight.lock();
        // A write whose caller stopped waiting (its future dropped) is not sent: under a
        // caller that retries on a timeout, the queue would otherwise only grow.
        queue.retain(|q| !q.done.is_closed());
        let blocked = |q: &Queued| in_flight.iter().any(|g| g.blocks(&q.commit));
        let (Some(at), passed) = first_free(&queue, &in_flight, pick) else {
            return (0, Vec::new());
        };
        let table = queue[at].commit.table.clone();
        let mut passed: HashSet<Vec<u8>> = passed
            .into_iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, k)| k.to_vec())
            .collect();
        // Those before it are of other tables, or wait for a group in flight or a write
        // before them: they keep their places.
        let mut kept: VecDeque<Queued> = queue.drain(..at).collect();
        let Some(first) = queue.pop_front() else {
            *queue = kept;
            return (0, Vec::new());
        };
        let mut keys: HashSet<Vec<u8>> = first.commit.rows.iter().map(|r| r.key.clone()).collect();
        let mut changes = first.commit.msgs.len();
        let mut group = vec![first];
        while let Some(next) = queue.pop_front() {
            let fits = next.commit.table == group[0].commit.table
                && next.commit.primary_key == group[0].commit.primary_key
                && next.commit.hard == group[0].commit.hard
                && changes + next.commit.msgs.len() <= MAX_COMMIT_CHANGES
                && next
                    .commit
                    .rows
                    .iter()
                    .all(|r| !keys.contains(&r.key) && !passed.contains(&r.key))
                && !blocked(&next);
            if fits {
                keys.extend(next.commit.rows.iter().map(|r| r.key.clone()));
                changes += next.commit.msgs.len();
                group.push(next);
            } else {
                if next.commit.table == group[0].commit.table {
                    passed.extend(next.commit.rows.iter().map(|r| r.key.clone()));
                }
                kept.push_back(next);
            }
        }
        *queue = kept;
        for q in &group {
            q.taken.store(true, Ordering::Release);
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        in_flight.push(InFlight {
            ticket,
            table: group[0].commit.table.clone(),
            keys,
        });
        (ticket, group)
    }

    /// The group with `ticket` taken by [`GroupCommit::take_group`] has its outcome: the
    /// writes queued behind its keys may go.
    fn landed(&self, ticket: u64) {
        let mut in_flight = self.in_flight.lock();
        if let Some(at) = in_flight.iter().position(|g| g.ticket == ticket) {
            in_flight.swap_remove(at);
        }
        drop(in_flight);
        self.landings.notify_waiters();
    }

    /// Waits until every group of `tables` in flight now has landed (not those taken later:
    /// a stream of groups cannot hold the caller up for ever). A write that selects its rows
    /// at commit calls it first, so that a grouped write its caller stopped waiting for is
    /// not committed after it.
    pub(super) async fn wait_landed(&self, tables: &[String]) {
        let tickets: Vec<u64> = self
            .in_flight
            .lock()
            .iter()
            .filter(|g| tables.contains(&g.table))
            .map(|g| g.ticket)
            .collect();
        if tickets.is_empty() {
            return;
        }
        loop {
            let landing = self.landings.notified();
            tokio::pin!(landing);
            landing.as_mut().enable();
            if !self
                .in_flight
                .lock()
                .iter()
                .any(|g| tickets.contains(&g.ticket))
            {
                return;
            }
            landing.await;
        }
    }

    /// Whether a group of `table` is being committed.
    fn in_flight_of(&self, table: &str) -> bool {
        self.in_flight.lock().iter().any(|g| g.table == table)
    }

    /// Whether a group taken now with `pick` would hold a write: if not, each queued write
    /// waits for a group in flight (or a write queued before it that does), whose leader
    /// takes it once it lands.
    fn could_take(&self, pick: Pick) -> bool {
        let queue = self.queue.lock();
        let in_flight = self.in_flight.lock();
        first_free(&queue, &in_flight, pick).0.is_some()
    }

    /// Whether a leader commits on connection `conn`.
    pub(super) fn leads_on(&self, conn: usize) -> bool {
        self.busy.lock().get(conn).copied().unwrap_or(false)
    }

    /// Whether no write waits in the queue and no leader commits a group.
    pub(super) fn is_idle(&self) -> bool {
        self.leaders.load(Ordering::Acquire) == 0 && self.queue.lock().is_empty()
    }

    /// Claims a leader's place if fewer than `max` lead: the connection (below `max`) that
    /// the leader commits on.
    fn claim(&self, max: usize) -> Option<usize> {
        let mut busy = self.busy.lock();
        if busy.len() < max {
            busy.resize(max, false);
        }
        let conn = busy.iter().take(max).position(|b| !b)?;
        busy[conn] = true;
        self.leaders.fetch_add(1, Ordering::AcqRel);
        Some(conn)
    }

    /// Gives back the place of the leader on `conn`; returns how many led before.
    fn release(&self, conn: usize) -> usize {
        if let Some(b) = self.busy.lock().get_mut(conn) {
            *b = false;
        }
        self.leaders.fetch_sub(1, Ordering::AcqRel)
    }
}

/// Where a group taken now would start: the first queued write that is `pick`'s and that
/// waits neither for a group in flight nor for a write queued before it with one of its keys
/// (writes of a key reach the server in the order they were queued), with the keys of the
/// writes before it, per table. (A write whose caller stopped waiting counts: it is only
/// dropped under the queue's lock, by `take_group`.)
fn first_free<'q>(
    queue: &'q VecDeque<Queued>,
    in_flight: &[InFlight],
    pick: Pick,
) -> (Option<usize>, HashSet<(&'q str, &'q [u8])>) {
    let mut passed: HashSet<(&str, &[u8])> = HashSet::new();
    let at = queue.iter().position(|q| {
        let table = q.commit.table.as_str();
        let free = match pick {
            Pick::Oldest => !in_flight.iter().any(|g| g.blocks(&q.commit)),
            Pick::OtherTable => !in_flight.iter().any(|g| g.table == table),
        } && q
            .commit
            .rows
            .iter()
            .all(|r| !passed.contains(&(table, r.key.as_slice())));
        if !free {
            passed.extend(q.commit.rows.iter().map(|r| (table, r.key.as_slice())));
        }
        free
    });
    (at, passed)
}

/// A leader's place, from its claim until its task gives it back. A leader task that ends
/// without giving it back (a panic, its runtime shutting down while it waits on the server,
/// or before it ever ran) gives it back when dropped; were it the last leader, the writes
/// still queued would wait for the next write's arrival or their own callers' timers to
/// start another (on a runtime shutting down, never), so they get an error instead: they
/// were never sent.
struct LeaderPlace<G: std::ops::Deref<Target = GroupCommit>> {
    groups: G,
    /// The leader's connection, while it holds the place.
    held: Option<usize>,
}

/// The group commit of a backend, owned (a spawned leader's place holds it).
struct GroupsOf(Arc<PgBackend>);

impl std::ops::Deref for GroupsOf {
    type Target = GroupCommit;
    fn deref(&self) -> &GroupCommit {
        &self.0.groups
    }
}

impl<G: std::ops::Deref<Target = GroupCommit>> Drop for LeaderPlace<G> {
    fn drop(&mut self) {
        let Some(conn) = self.held else {
            return;
        };
        // Under the queue's lock: a write queued after the last place was given back sees
        // no leader and starts one; one queued before is failed here, none is both.
        let mut queue = self.groups.queue.lock();
        if self.groups.release(conn) != 1 {
            return;
        }
        let orphans = std::mem::take(&mut *queue);
        drop(queue);
        for q in orphans {
            let _ = q.done.send(Err(Error::storage(
                "the task committing this write's group ended before sending it (a panic, \
                 or its runtime shut down): the write was not sent",
            )));
        }
    }
}

/// Marks a group no longer in flight when dropped (also when its leader's task is dropped
/// mid-commit).
struct Landed<'a> {
    groups: &'a GroupCommit,
    ticket: u64,
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.groups.landed(self.ticket);
    }
}

impl PgBackend {
    /// Commits `commit` in a group with the writes of other tasks (see the module doc).
    pub(super) async fn commit_grouped(&self, commit: TableCommit) -> Outcome {
        let (done, result) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let table = commit.table.clone();
        let queued = {
            let mut queue = self.groups.queue.lock();
            queue.push_back(Queued {
                commit,
                done,
                taken: taken.clone(),
            });
            queue.len()
        };
        // Another leader only for a queue worth a group of its own: more, smaller
        // transactions would cost every process's pump and replica more than they save.
        let wanted =
            self.groups.leaders.load(Ordering::Acquire) == 0 || queued >= ANOTHER_LEADER_AT;
        if wanted {
            self.start_leader(Pick::Oldest)?;
        }
        let mut result = result;
        loop {
            match tokio::time::timeout(ANOTHER_LEADER_AFTER, &mut result).await {
                Ok(outcome) => {
                    return outcome.map_err(|_| self.failed().unwrap_or(Error::Closed))?
                }
                // Still queued: the leaders are slow (a group waiting for a table's lock
                // that another process holds, say), and another connection takes the
                // queue's writes of other tables, if one is free.
                // (Not while a group of its own table is in flight: a relief could not take
                // it, and the queued writes of other tables start their own.)
                Err(_) if !taken.load(Ordering::Acquire) && !self.groups.in_flight_of(&table) => {
                    self.start_leader(Pick::OtherTable)?
                }
                // In a group: waiting for the server, as its other writes are.
                Err(_) => {}
            }
        }
    }

    /// Starts a leader whose first group starts as `pick` says, if fewer than one per
    /// connection lead.
    fn start_leader(&self, pick: Pick) -> Result<()> {
        let Some(me) = self.me() else {
            return Err(Error::Closed);
        };
        // Every connection has its leader; or none for a leader to take (every queued write
        // waits for a group in flight, whose leader takes it once it lands): a leader would
        // only look and go.
        if self.groups.leaders.load(Ordering::Acquire) >= self.connections()
            || !self.groups.could_take(pick)
        {
            return Ok(());
        }
        let Some(conn) = self.groups.claim(self.connections()) else {
            return Ok(());
        };
        // Made before the task: a task dropped before it ever runs gives the place back.
        let place = LeaderPlace {
            groups: GroupsOf(me.clone()),
            held: Some(conn),
        };
        tokio::spawn(async move { me.lead(place, pick).await });
        Ok(())
    }

    /// A leader: commits groups on its place's connection until the queue is empty (or,
    /// started to relieve slow leaders, until no queued write is of a table that no group
    /// in flight is of: it never takes a group to the table the others wait on).
    async fn lead(self: Arc<Self>, mut place: LeaderPlace<GroupsOf>, pick: Pick) {
        loop {
            let Some(conn) = place.held else { return };
            let (ticket, group) = self.groups.take_group(pick);
            if group.is_empty() {
                place.held = None;
                self.groups.release(conn);
                // A write queued after the group was taken, by a task that found every
                // leader's place taken, must not wait for a leader that is gone. (A relief
                // leader found nothing for it: the slow leaders it relieves are still there,
                // and a write of theirs left waiting starts another relief after a while. A
                // write waiting for a group in flight is taken by the leader of a group of its
                // table when that lands: a relief leader's write may so wait for a slow
                // group of its table, as every write of that table does.)
                if matches!(pick, Pick::OtherTable) || !self.groups.could_take(Pick::Oldest) {
                    return;
                }
                match self.groups.claim(self.connections()) {
                    Some(c) => place.held = Some(c),
                    None => return,
                }
                continue;
            }
            let landed = Landed {
                groups: &self.groups,
                ticket,
            };
            self.commit_group(conn, group).await;
            drop(landed);
        }
    }

    /// Commits a group as one transaction, or, when that fails, each write alone.
    async fn commit_group(&self, conn: usize, mut group: Vec<Queued>) {
        if group.len() == 1 {
            if let Some(Queued { commit, done, .. }) = group.pop() {
                let _ = done.send(self.commit_table(conn, &commit).await);
            }
            return;
        }
        // One statement for all: the rows (sorted by key: one order of locking rows for
        // every commit, so no deadlock between two groups) and records, by reference.
        let first = &group[0].commit;
        let mut rows: Vec<&Row> = group.iter().flat_map(|q| &q.commit.rows).collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        let msgs: Vec<&[u8]> = group
            .iter()
            .flat_map(|q| q.commit.msgs.iter().map(Vec::as_slice))
            .collect();
        let whole = self
            .commit_rows(
                conn,
                &first.table,
                &first.primary_key,
                first.hard,
                &rows,
                &msgs,
            )
            .await;
        drop((rows, msgs));
        match whole {
            Ok(Some(xid)) => {
                for q in group {
                    let _ = q.done.send(Ok(Some(xid)));
                }
                return;
            }
            // Refused by the server (a row not as staged, a unique key taken, a member's
            // error): nothing was committed, and each write alone gets its own outcome.
            Ok(None) => {}
            Err(failed) if failed.how == Failure::Refused => {}
            // The connection failed with the statement sent: the group may have committed,
            // and a write committed again alone would be applied twice (or find its own
            // insert and report a conflict). Unavailable: no connection could be had, or the
            // server is going away, and each write alone would try again, all at once.
            // Either way each gets the error, as a lone write does.
            Err(failed) => {
                for q in group {
                    let _ = q.done.send(Err(failed.error.clone()));
                }
                return;
            }
        }
        // Each write alone, pipelined: each gets the result it would have had by itself.
        let alone = group.iter().map(|q| self.commit_table(conn, &q.commit));
        let results = futures_util::future::join_all(alone).await;
        for (q, result) in group.into_iter().zip(results) {
            let _ = q.done.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(table: &str, keys: &[u8], hard: bool) -> (Queued, oneshot::Receiver<Outcome>) {
        let (done, rx) = oneshot::channel();
        let rows = keys
            .iter()
            .map(|k| Row {
                key: vec![*k],
                old: None,
                new: Some("{}".into()),
                write: true,
            })
            .collect::<Vec<_>>();
        let msgs = rows.iter().map(|r| r.key.clone()).collect();
        let commit = TableCommit {
            table: table.into(),
            primary_key: "id".into(),
            rows,
            msgs,
            hard,
        };
        (
            Queued {
                commit,
                done,
                taken: Arc::default(),
            },
            rx,
        )
    }

    fn keys_of(group: &[Queued]) -> Vec<Vec<u8>> {
        group
            .iter()
            .map(|q| q.commit.rows.iter().map(|r| r.key[0]).collect())
            .collect()
    }

    #[test]
    fn a_group_is_one_table_and_durability_with_disjoint_keys_in_queue_order() {
        let groups = GroupCommit::default();
        let mut receivers = Vec::new();
        for (table, keys, hard) in [
            ("a", &[1u8, 2][..], true),
            ("b", &[3][..], true),
            ("a", &[2, 4][..], true),
            ("a", &[5][..], false),
            ("a", &[6][..], true),
            ("a", &[4][..], true),
        ] {
            let (q, rx) = queued(table, keys, hard);
            groups.queue.lock().push_back(q);
            receivers.push(rx);
        }
        // Each group lands before the next is taken.
        let next = || {
            let (ticket, group) = groups.take_group(Pick::Oldest);
            groups.landed(ticket);
            keys_of(&group)
        };
        assert_eq!(next(), vec![vec![1, 2], vec![6]]);
        // Key 2 overlapped the first group, and key 4 a write left queued before it; the
        // next group starts with the oldest left.
        assert_eq!(next(), vec![vec![3]]);
        assert_eq!(next(), vec![vec![2, 4]]);
        assert_eq!(next(), vec![vec![5]]);
        assert_eq!(next(), vec![vec![4]]);
        assert!(next().is_empty());
    }

    #[test]
    fn a_relief_leader_takes_another_table_and_taken_writes_are_marked() {
        let groups = GroupCommit::default();
        let mut receivers = Vec::new();
        let mut taken = Vec::new();
        for (table, keys) in [
            ("a", &[1u8][..]),
            ("a", &[2][..]),
            ("b", &[3][..]),
            ("a", &[4][..]),
        ] {
            let (q, rx) = queued(table, keys, true);
            taken.push(q.taken.clone());
            groups.queue.lock().push_back(q);
            receivers.push(rx);
        }
        // A group of `a` is being committed: a relief leader starts with `b`, and the
        // writes of `a` before it keep their places.
        let (a, first) = groups.take_group(Pick::Oldest);
        assert_eq!(keys_of(&first), vec![vec![1], vec![2], vec![4]]);
        assert!(taken[0].load(Ordering::Acquire) && !taken[2].load(Ordering::Acquire));
        let (q, rx) = queued("a", &[5], true);
        groups.queue.lock().push_back(q);
        receivers.push(rx);
        let (b, second) = groups.take_group(Pick::OtherTable);
        assert_eq!(keys_of(&second), vec![vec![3]]);
        assert!(taken[2].load(Ordering::Acquire));
        // Only `a` is left, and `a` is in flight: a relief leader takes nothing.
        assert!(groups.take_group(Pick::OtherTable).1.is_empty());
        groups.landed(a);
        groups.landed(b);
        assert_eq!(
            keys_of(&groups.take_group(Pick::OtherTable).1),
            vec![vec![5]]
        );
        assert!(groups.take_group(Pick::Oldest).1.is_empty());
    }

    #[test]
    fn a_group_holds_at_most_one_commit_of_changes() {
        let groups = GroupCommit::default();
        let mut receivers = Vec::new();
        for i in 0..3u16 {
            let (done, rx) = oneshot::channel();
            receivers.push(rx);
            let n = MAX_COMMIT_CHANGES / 2;
            let rows = (0..n)
                .map(|j| Row {
                    key: (u32::from(i) << 16 | j as u32).to_be_bytes().to_vec(),
                    old: None,
                    new: None,
                    write: true,
                })
                .collect::<Vec<_>>();
            let msgs = vec![Vec::new(); n];
            let commit = TableCommit {
                table: "t".into(),
                primary_key: "id".into(),
                rows,
                msgs,
                hard: true,
            };
            groups.queue.lock().push_back(Queued {
                commit,
                done,
                taken: Arc::default(),
            });
        }
        assert_eq!(groups.take_group(Pick::Oldest).1.len(), 2);
        assert_eq!(groups.take_group(Pick::Oldest).1.len(), 1);
    }

    #[test]
    fn leaders_are_at_most_max_each_on_a_connection_of_its_own() {
        let groups = GroupCommit::default();
        assert_eq!(groups.claim(2), Some(0));
        assert_eq!(groups.claim(2), Some(1));
        assert_eq!(groups.claim(2), None);
        assert_eq!(groups.release(0), 2);
        assert_eq!(groups.claim(2), Some(0), "the connection given back");
        assert_eq!(groups.claim(3), Some(2), "a connection more");
    }

    #[test]
    fn a_leader_gone_without_giving_back_its_place_fails_the_orphaned_writes() {
        let groups = GroupCommit::default();
        let (q, mut rx) = queued("a", &[1], false);
        groups.queue.lock().push_back(q);
        // Two leaders: the first to vanish leaves the queue to the other.
        let (first, second) = (groups.claim(2), groups.claim(2));
        assert!(first.is_some() && second.is_some());
        drop(LeaderPlace {
            groups: &groups,
            held: first,
        });
        assert!(rx.try_recv().is_err(), "still queued for the other leader");
        assert_eq!(groups.queue.lock().len(), 1);
        // The last one gone: the queued write is told it was not sent, and a new write
        // can start a leader again (on either connection).
        drop(LeaderPlace {
            groups: &groups,
            held: second,
        });
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Storage { .. }))));
        assert!(groups.queue.lock().is_empty());
        assert_eq!(groups.leaders.load(Ordering::Acquire), 0);
        // A place given back normally is not given back twice.
        assert_eq!(groups.claim(1), Some(0));
        drop(LeaderPlace {
            groups: &groups,
            held: None,
        });
        assert_eq!(groups.leaders.load(Ordering::Acquire), 1);
        assert_eq!(groups.claim(1), None);
    }

    #[test]
    fn a_write_whose_caller_stopped_waiting_is_not_sent() {
        let groups = GroupCommit::default();
        let (gone, rx) = queued("a", &[1], false);
        groups.queue.lock().push_back(gone);
        drop(rx);
        let (kept, _rx) = queued("a", &[2], false);
        groups.queue.lock().push_back(kept);
        assert_eq!(keys_of(&groups.take_group(Pick::Oldest).1), vec![vec![2]]);
        assert!(groups.take_group(Pick::Oldest).1.is_empty());
    }

    #[test]
    fn a_write_waits_for_a_group_in_flight_with_one_of_its_keys() {
        let groups = GroupCommit::default();
        let push = |table: &str, keys: &[u8]| {
            let (q, rx) = queued(table, keys, true);
            groups.queue.lock().push_back(q);
            rx
        };
        let gone = push("a", &[1]);
        let (first, group) = groups.take_group(Pick::Oldest);
        assert_eq!(keys_of(&group), vec![vec![1]]);
        // The caller of the write in flight stops waiting; its next write of key 1 and
        // another of keys 2 and 1 wait for the group; key 3 and the other table do not,
        // and key 2 waits behind the write queued before it.
        drop(gone);
        let _receivers = [
            push("a", &[1]),
            push("a", &[2, 1]),
            push("a", &[3]),
            push("a", &[2]),
            push("b", &[1]),
        ];
        assert!(groups.could_take(Pick::Oldest));
        let (second, group) = groups.take_group(Pick::Oldest);
        assert_eq!(keys_of(&group), vec![vec![3]]);
        let (third, group) = groups.take_group(Pick::Oldest);
        assert_eq!(keys_of(&group), vec![vec![1]], "table b");
        groups.landed(second);
        groups.landed(third);
        assert!(
            !groups.could_take(Pick::Oldest),
            "the rest wait for the first group"
        );
        assert!(groups.take_group(Pick::Oldest).1.is_empty());
        groups.landed(first);
        assert_eq!(keys_of(&groups.take_group(Pick::Oldest).1), vec![vec![1]]);
    }
}
