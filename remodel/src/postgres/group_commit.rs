//! Group commit: the single-table writes of many tasks in one PostgreSQL transaction.
//!
//! Each write is staged on its own (against the replica, as always) and then queued here
//! instead of being sent as a statement of its own. A *leader* (a task, at most one per
//! commit connection; another starts when [`ANOTHER_LEADER_AT`] writes wait, or when a
//! write has waited [`ANOTHER_LEADER_AFTER`] for its group) takes the queued writes of one
//! table and durability whose keys do not
//! overlap, up to [`MAX_COMMIT_CHANGES`] changes, and commits them with one execution of
//! the table's prepared commit statement: one transaction, one commit record and flush, one
//! batch for every process's pump to decode and apply. Writes that arrive while a group is
//! being committed form the next group, so the groups grow with the load and an idle
//! database commits a lone write at once, as before.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// How many writes must wait before a second (third, ...) leader starts on another
/// connection. Many small groups cost more than they save: every group is a transaction
/// that the server commits and every process's pump decodes and applies as one commit.
/// Measured with 64 writing tasks on 8 connections (`scale_out` bench, 20,000 inserts per
/// round): 8 gave 19,300 inserts/s, 32 gave 25,000/s, 48 (about one leader) 24,000-25,000/s.
const ANOTHER_LEADER_AT: usize = 32;

/// How long a write waits for its group before it starts another leader (on another
/// connection, if one is free) whatever the queue's length: a leader whose group waits (for
/// a table's lock that another process holds, a slow server) must not hold up every write
/// queued behind it, of that table or any other.
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

/// One staged write of one table, ready to commit: its rows sorted by key, its change
/// records in commit order.
#[derive(Debug)]
pub(super) struct TableCommit {
    pub table: String,
    pub rows: Vec<Row>,
    pub msgs: Vec<Vec<u8>>,
    pub hard: bool,
}

/// What a commit came to: `Some(xid)` committed in transaction `xid` (0: nothing to
/// write), `None`: a row is not what it was staged against (stage again).
pub(super) type Outcome = Result<Option<i64>>;

struct Queued {
    commit: TableCommit,
    done: oneshot::Sender<Outcome>,
}

/// The queue of writes waiting for a leader, and how many leaders run.
#[derive(Default)]
pub(super) struct GroupCommit {
    queue: Mutex<VecDeque<Queued>>,
    leaders: AtomicUsize,
    /// Which commit connections a leader commits on: each leader has its own, so that a
    /// group that waits on the server holds up no other leader's statements behind it.
    busy: Mutex<Vec<bool>>,
}

impl GroupCommit {
    /// Takes the next group: the first queued write, and every later one of the same table
    /// and durability whose keys overlap none taken and none of an earlier write left
    /// queued, while the group holds at most [`MAX_COMMIT_CHANGES`] changes. The others
    /// stay queued, in order.
    fn take_group(&self) -> Vec<Queued> {
        let mut queue = self.queue.lock();
        // A write whose caller stopped waiting (its future dropped) is not sent: under a
        // caller that retries on a timeout, the queue would otherwise only grow.
        queue.retain(|q| !q.done.is_closed());
        let Some(first) = queue.pop_front() else {
            return Vec::new();
        };
        let mut keys: HashSet<Vec<u8>> = first.commit.rows.iter().map(|r| r.key.clone()).collect();
        // Keys of the writes left queued: a later write of one of them is left too, so that
        // writes of a key reach the server in the order they were queued.
        let mut passed: HashSet<Vec<u8>> = HashSet::new();
        let mut changes = first.commit.msgs.len();
        let mut group = vec![first];
        let mut kept = VecDeque::with_capacity(queue.len());
        while let Some(next) = queue.pop_front() {
            let fits = next.commit.table == group[0].commit.table
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
        group
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

/// A leader's place while its task runs. A leader task that ends without giving it back
/// (a panic, or its runtime shutting down while it waits on the server) gives it back when
/// dropped; were it the last leader, the writes still queued would wait for one that never
/// comes (a later write starts a leader only when none runs), so they get an error instead:
/// they were never sent.
struct LeaderPlace<'a> {
    groups: &'a GroupCommit,
    /// The leader's connection, while it holds the place.
    held: Option<usize>,
}

impl Drop for LeaderPlace<'_> {
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

impl PgBackend {
    /// Commits `commit` in a group with the writes of other tasks (see the module doc).
    pub(super) async fn commit_grouped(&self, commit: TableCommit) -> Outcome {
        let (done, result) = oneshot::channel();
        let queued = {
            let mut queue = self.groups.queue.lock();
            queue.push_back(Queued { commit, done });
            queue.len()
        };
        // Another leader only for a queue worth a group of its own: more, smaller
        // transactions would cost every process's pump and replica more than they save.
        let wanted =
            self.groups.leaders.load(Ordering::Acquire) == 0 || queued >= ANOTHER_LEADER_AT;
        if wanted {
            self.start_leader()?;
        }
        let mut result = result;
        loop {
            match tokio::time::timeout(ANOTHER_LEADER_AFTER, &mut result).await {
                Ok(outcome) => {
                    return outcome.map_err(|_| self.failed().unwrap_or(Error::Closed))?
                }
                // The leaders are slow (a group waiting for a table's lock that another
                // process holds, say): another connection takes the queue, if one is free.
                Err(_) => self.start_leader()?,
            }
        }
    }

    /// Starts a leader if fewer than one per connection lead.
    fn start_leader(&self) -> Result<()> {
        let Some(conn) = self.groups.claim(self.connections()) else {
            return Ok(());
        };
        match self.me() {
            Some(me) => {
                tokio::spawn(async move { me.lead(conn).await });
                Ok(())
            }
            None => {
                self.groups.release(conn);
                Err(Error::Closed)
            }
        }
    }

    /// A leader on commit connection `conn`: commits groups until the queue is empty.
    async fn lead(self: Arc<Self>, mut conn: usize) {
        let mut place = LeaderPlace {
            groups: &self.groups,
            held: Some(conn),
        };
        loop {
            let group = self.groups.take_group();
            if group.is_empty() {
                place.held = None;
                self.groups.release(conn);
                // A write queued after the group was taken, by a task that found every
                // leader's place taken, must not wait for a leader that is gone.
                if self.groups.queue.lock().is_empty() {
                    return;
                }
                match self.groups.claim(self.connections()) {
                    Some(c) => {
                        conn = c;
                        place.held = Some(c);
                    }
                    None => return,
                }
                continue;
            }
            self.commit_group(conn, group).await;
        }
    }

    /// Commits a group as one transaction, or, when that fails, each write alone.
    async fn commit_group(&self, conn: usize, mut group: Vec<Queued>) {
        if group.len() == 1 {
            if let Some(Queued { commit, done }) = group.pop() {
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
            .commit_rows(conn, &first.table, first.hard, &rows, &msgs)
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
            rows,
            msgs,
            hard,
        };
        (Queued { commit, done }, rx)
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
        assert_eq!(keys_of(&groups.take_group()), vec![vec![1, 2], vec![6]]);
        // Key 2 overlapped the first group, and key 4 a write left queued before it; the
        // next group starts with the oldest left.
        assert_eq!(keys_of(&groups.take_group()), vec![vec![3]]);
        assert_eq!(keys_of(&groups.take_group()), vec![vec![2, 4]]);
        assert_eq!(keys_of(&groups.take_group()), vec![vec![5]]);
        assert_eq!(keys_of(&groups.take_group()), vec![vec![4]]);
        assert!(groups.take_group().is_empty());
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
                rows,
                msgs,
                hard: true,
            };
            groups.queue.lock().push_back(Queued { commit, done });
        }
        assert_eq!(groups.take_group().len(), 2);
        assert_eq!(groups.take_group().len(), 1);
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
        assert_eq!(keys_of(&groups.take_group()), vec![vec![2]]);
        assert!(groups.take_group().is_empty());
    }
}
