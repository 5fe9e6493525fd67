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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// The tables of the groups being committed (one entry per group; taken under the
    /// queue's lock, after it in lock order).
    in_flight: Mutex<Vec<String>>,
}

impl GroupCommit {
    /// Takes the next group: the first queued write (with `Pick::OtherTable`, the first of
    /// a table with no group being committed), and every later one of the same table and
    /// durability whose keys overlap none taken and none of an earlier write left queued,
    /// while the group holds at most [`MAX_COMMIT_CHANGES`] changes. The others stay
    /// queued, in order. The group's table counts as in flight until [`GroupCommit::landed`].
    fn take_group(&self, pick: Pick) -> Vec<Queued> {
        let mut queue = self.queue.lock();
        // A write whose caller stopped waiting (its future dropped) is not sent: under a
        // caller that retries on a timeout, the queue would otherwise only grow.
        queue.retain(|q| !q.done.is_closed());
        let at = match pick {
            Pick::Oldest => 0,
            Pick::OtherTable => {
                let in_flight = self.in_flight.lock();
                match queue
                    .iter()
                    .position(|q| !in_flight.contains(&q.commit.table))
                {
                    Some(at) => at,
                    None => return Vec::new(),
                }
            }
        };
        // Those before it are of other tables: they keep their places.
        let mut kept: VecDeque<Queued> = queue.drain(..at).collect();
        let Some(first) = queue.pop_front() else {
            *queue = kept;
            return Vec::new();
        };
        let mut keys: HashSet<Vec<u8>> = first.commit.rows.iter().map(|r| r.key.clone()).collect();
        // Keys of the writes left queued: a later write of one of them is left too, so that
        // writes of a key reach the server in the order they were queued.
        let mut passed: HashSet<Vec<u8>> = HashSet::new();
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
                    .all(|r| !keys.contains(&r.key) && !passed.contains(&r.key));
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
        self.in_flight.lock().push(group[0].commit.table.clone());
        group
    }

    /// A group of `table` taken by [`GroupCommit::take_group`] has its outcome.
    fn landed(&self, table: &str) {
        let mut in_flight = self.in_flight.lock();
        if let Some(at) = in_flight.iter().position(|t| t == table) {
            in_flight.swap_remove(at);
        }
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

/// Marks a group's table no longer in flight when dropped (also when its leader's task is
/// dropped mid-commit).
struct Landed<'a> {
    groups: &'a GroupCommit,
    table: String,
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.groups.landed(&self.table);
    }
}

impl PgBackend {
    /// Commits `commit` in a group with the writes of other tasks (see the module doc).
    pub(super) async fn commit_grouped(&self, commit: TableCommit) -> Outcome {
        let (done, result) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
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
                Err(_) if !taken.load(Ordering::Acquire) => self.start_leader(Pick::OtherTable)?,
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
            let group = self.groups.take_group(pick);
            if group.is_empty() {
                place.held = None;
                self.groups.release(conn);
                // A write queued after the group was taken, by a task that found every
                // leader's place taken, must not wait for a leader that is gone. (A relief
                // leader found nothing for it: the slow leaders it relieves are still there,
                // and a write of theirs left waiting starts another relief after a while.)
                if matches!(pick, Pick::OtherTable) || self.groups.queue.lock().is_empty() {
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
                table: group[0].commit.table.clone(),
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
        assert_eq!(
            keys_of(&groups.take_group(Pick::Oldest)),
            vec![vec![1, 2], vec![6]]
        );
        // Key 2 overlapped the first group, and key 4 a write left queued before it; the
        // next group starts with the oldest left.
        assert_eq!(keys_of(&groups.take_group(Pick::Oldest)), vec![vec![3]]);
        assert_eq!(keys_of(&groups.take_group(Pick::Oldest)), vec![vec![2, 4]]);
        assert_eq!(keys_of(&groups.take_group(Pick::Oldest)), vec![vec![5]]);
        assert_eq!(keys_of(&groups.take_group(Pick::Oldest)), vec![vec![4]]);
        assert!(groups.take_group(Pick::Oldest).is_empty());
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
        let first = groups.take_group(Pick::Oldest);
        assert_eq!(keys_of(&first), vec![vec![1], vec![2], vec![4]]);
        assert!(taken[0].load(Ordering::Acquire) && !taken[2].load(Ordering::Acquire));
        let (q, rx) = queued("a", &[5], true);
        groups.queue.lock().push_back(q);
        receivers.push(rx);
        assert_eq!(keys_of(&groups.take_group(Pick::OtherTable)), vec![vec![3]]);
        assert!(taken[2].load(Ordering::Acquire));
        // Only `a` is left, and `a` is in flight: a relief leader takes nothing.
        assert!(groups.take_group(Pick::OtherTable).is_empty());
        groups.landed("a");
        groups.landed("b");
        assert_eq!(keys_of(&groups.take_group(Pick::OtherTable)), vec![vec![5]]);
        assert!(groups.take_group(Pick::Oldest).is_empty());
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
        assert_eq!(groups.take_group(Pick::Oldest).len(), 2);
        assert_eq!(groups.take_group(Pick::Oldest).len(), 1);
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
        assert_eq!(keys_of(&groups.take_group(Pick::Oldest)), vec![vec![2]]);
        assert!(groups.take_group(Pick::Oldest).is_empty());
    }
}
