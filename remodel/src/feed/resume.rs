//! Resumable feeds: cursors, and reopening a feed from one by replaying the durable change
//! log (`Config::change_log`).
//!
//! A cursor names a place in the database's one commit order: the sequence number of a
//! change and which of the feed's items for that change (a row can be in a result more than
//! once: a key given twice to `get_all`, a multi index). A feed opened with
//! `resume_from(cursor)` registers its subscription and reads the log after the cursor under
//! the commit lock, exactly as `include_initial` reads its snapshot: no change is missed or
//! delivered twice between the replayed items and the live ones. A cursor older than the
//! hub's in-memory tail has its changes read from the log first, without the lock (writers
//! go on), up to where the database stood then, and only the rest under the lock.
//! `replay_at_most(n)` bounds what a resume reads: past `n` changes after the cursor (of
//! any table, as the log holds them in order), it stops with `CursorExpired`.
//!
//! Row feeds resume (table, `get`, `get_all`, `between`, with `filter` / `pluck` /
//! `without`): their items are a function of each change alone. Top-N and aggregate feeds
//! are refused: their items depend on the whole result at the time, which the log does not
//! hold; re-read them with `include_initial`.

use super::hub::{Delivery, Hub};
use super::spec::FeedPlan;
use super::stream::Feed;
use super::Change;
use crate::db::changelog::Logged;
use crate::db::Database;
use crate::{Error, Result};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A place in a database's change order, carried by every change item
/// ([`Change::cursor`]). Its text form (`Display` / `FromStr`) is opaque and short, so that it
/// can travel as an SSE event id or in a URL. Cursors of one database are comparable across
/// all its feeds: a cursor of one feed may resume another (it then gets that feed's changes
/// after that place). A cursor carries no identity of its database: resuming it on another
/// database is refused only when it is ahead of that database's last change (on PostgreSQL,
/// databases of one server share one space of positions), so keep cursors with the database
/// they came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    seq: u64,
    n: u32,
}

impl Cursor {
    pub(crate) fn new(seq: u64, n: u32) -> Self {
        Cursor { seq, n }
    }

    /// The commit sequence number of the change this cursor is at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The first change number a resume from this cursor needs: the cursor's own change
    /// (the feed's later items for it come first), except for a position
    /// ([`Database::position`]: `n` is `u32::MAX`), which needs nothing of its own number.
    fn first_needed(&self) -> u64 {
        if self.n == u32::MAX {
            self.seq.saturating_add(1)
        } else {
            self.seq
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{:x}", self.seq, self.n)
    }
}

impl FromStr for Cursor {
    type Err = Error;
    /// Reads a cursor's text form; anything else is [`Error::InvalidFeedOption`].
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::feed_option(format!("`{s}` is not a feed cursor"));
        let (seq, n) = s.split_once('-').ok_or_else(bad)?;
        let hex =
            |t: &str| !t.is_empty() && t.len() <= 16 && t.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(seq) || !hex(n) {
            return Err(bad());
        }
        Ok(Cursor {
            seq: u64::from_str_radix(seq, 16).map_err(|_| bad())?,
            n: u32::from_str_radix(n, 16).map_err(|_| bad())?,
        })
    }
}

impl Database {
    /// Where the database stands in its change order now: a feed resumed from this cursor
    /// ([`crate::Changes::resume_from`], with a change log) gets every change committed after
    /// the call. A server takes it before deciding something from what it reads, then resumes
    /// a feed of what it read from it: any change since the decision arrives, none is missed.
    /// (It waits for a commit in progress, a moment.)
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use remodel::{json, ChangeLogRetention, Config};
    /// use futures::StreamExt;
    /// let db = Config::temporary().change_log(ChangeLogRetention::default()).open().await?;
    /// db.create_table("ships").await?;
    /// db.table("ships").insert(json!({"id": "defiant"})).await?;
    /// let at = db.position();
    /// db.table("ships").insert(json!({"id": "voyager"})).await?;
    /// let mut feed = db.table("ships").get("voyager").changes().resume_from(at).await?;
    /// let c = feed.next().await.unwrap()?;
    /// assert_eq!(c.new_val().unwrap()["id"], "voyager");
    /// # Ok::<(), remodel::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// Called from a `Patch::with` closure (which runs under the commit lock), it gives the
    /// position before the commit being decided.
    pub fn position(&self) -> Cursor {
        if crate::db::patching() {
            return Cursor::new(self.inner.last_committed(), u32::MAX);
        }
        self.inner
            .with_commit_lock(|seq| Cursor::new(seq, u32::MAX))
    }
}

/// The changes after a cursor that are older than this process's change log, read from the
/// database of record's history (a shared database: see [`older`]): where the log starts
/// (the first number it holds for the table), and the changes before it, or why the history
/// does not hold them all.
pub(crate) type Older = (u64, crate::db::backend::History);

/// Where this process's change log starts for `table`: the first change number it holds of
/// the table as it is now (not of an earlier table of that name).
fn log_start(log: &crate::db::changelog::ChangeLog, table: &str) -> u64 {
    log.floor().max(log.created(table).saturating_add(1))
}

/// Whether this process's change log cannot serve a resume of `table` from `cursor` alone:
/// the log does not reach back to the first change the cursor needs, or the table was
/// created at or after the cursor (`created` is the last change before it was: a cursor at
/// it, a position included, was taken before this table existed).
fn log_short(log: &crate::db::changelog::ChangeLog, table: &str, cursor: Cursor) -> bool {
    cursor.seq <= log.created(table) || cursor.first_needed() < log.floor()
}

/// On a shared database, reads from its history the changes of the query's table after
/// `cursor` that this process's change log does not reach back to (a cursor taken in a
/// process that ran before this one started): `None` when the log holds them all.
pub(super) async fn older(
    query: &crate::Query,
    (cursor, most): (Cursor, Option<u64>),
    backend: Arc<dyn crate::db::backend::Backend>,
) -> Result<Option<Older>> {
    let Some(log) = query.db.inner.resumable_log() else {
        return Ok(None);
    };
    if !log_short(log, &query.table, cursor) {
        return Ok(None);
    }
    let start = log_start(log, &query.table);
    // The cursor's own change is read again (its later items), not counted.
    let own = u64::from(cursor.first_needed() == cursor.seq);
    let most = most.map(|m| m.saturating_add(own));
    let history = backend
        .history(query.table.to_string(), cursor.first_needed(), start, most)
        .await?;
    Ok(Some((start, history)))
}

impl Feed {
    /// Subscribes `plan` and queues the changes after `cursor` from the change log (and,
    /// before the log's start, from `older`, the database of record's history, read before
    /// this), the last of them under the commit lock (see the module doc). `replay` is a
    /// second copy of the plan, used to make the items of logged changes as the live path
    /// makes them; `limit`: `replay_at_most`.
    pub(super) fn subscribe_resumed(
        &mut self,
        db: &Database,
        (plan, replay): (FeedPlan, FeedPlan),
        delivery: Delivery,
        (cursor, limit): (Cursor, Option<u64>),
        older: Option<&Older>,
    ) -> Result<()> {
        let Some(rows) = replay.rows() else {
            return Err(Error::unwatchable(
                "only row feeds (table, get, get_all, between, with filter/pluck/without) \
                 can resume from a cursor; re-read top-N and aggregate feeds with include_initial",
            ));
        };
        let table = rows.table.name.clone();
        let expired = |reason: String| expired(cursor, reason);
        let Some(log) = db.inner.resumable_log() else {
            return Err(expired(
                "the database keeps no change log (see Config::change_log)".into(),
            ));
        };
        let hub = db.inner.sink_as::<Hub>();
        // Older than the hub's tail: the log up to where the database stands now is read
        // first, without the commit lock (writers go on meanwhile), and only the rest
        // under it.
        let mut count = Count::new(limit, cursor);
        let early = read_early(db, (log, &hub), &table, &replay, cursor, &mut count)?;
        db.inner.with_commit_lock(|last| {
            db.check_open()?;
            let (start, first) = (log_start(log, &table), cursor.first_needed());
            // The changes before the log's start, from the shared history.
            let mut history: &[crate::db::write::Committed] = &[];
            match &early {
                // Read early from this table's log: the table is the one it was, and the log
                // still goes on from where the early read ended.
                Some(e) if log.created(&table) != e.created => {
                    return Err(expired(format!(
                        "table `{table}` was created again while the change log was read"
                    )))
                }
                Some(e) if log.floor() > e.upto.saturating_add(1) => {
                    return Err(expired(format!(
                        "the change log keeps only the changes from {:x} on",
                        log.floor()
                    )))
                }
                Some(_) => {}
                None if log_short(log, &table, cursor) => match older {
                    Some((from, Ok(changes))) if *from == start => history = changes,
                    Some((_, Err(reason))) => return Err(expired(reason.clone())),
                    Some(_) => {
                        return Err(expired(
                            "the change log moved on while the shared history was read".into(),
                        ))
                    }
                    None if first < log.floor() => {
                        return Err(expired(format!(
                            "the change log keeps only the changes from {:x} on",
                            log.floor()
                        )))
                    }
                    // `created` is the last change before the table was created: a cursor at
                    // it (or before) was taken before this table existed, maybe on an earlier
                    // table of that name whose drop the log does not record, so it cannot
                    // resume here.
                    None => {
                        return Err(expired(format!(
                            "table `{table}` was created after it (an earlier table of that name had it)"
                        )))
                    }
                },
                None => {}
            }
            if cursor.seq > last {
                return Err(Error::feed_option(format!(
                    "cursor {cursor} is ahead of this database's last change: it is from another database"
                )));
            }
            plan.check_live()?;
            let sub = hub.subscribe(plan, delivery, || Ok(Vec::new()), false)?;
            self.attach(sub);
            self.snapshot_seq = Some(cursor.seq);
            let mut items = Vec::new();
            let front = &mut self.front;
            for c in history {
                let logged = Logged {
                    seq: c.seq,
                    commit: c.commit,
                    key: &c.key,
                    old: c.old.as_ref(),
                    new: c.new.as_ref(),
                };
                count.one(c.seq)?;
                replay_one(&replay, &logged, None, cursor, &mut items, front);
            }
            let from = match early {
                Some(e) => {
                    front.extend(e.items);
                    e.upto.saturating_add(1).max(first)
                }
                None => first.max(start),
            };
            let mut replayed = |c: &Logged<'_>, plain: Option<&Change>| {
                replay_one(&replay, c, plain, cursor, &mut items, front);
                Ok(())
            };
            // Recent changes are in the hub's tail, ready; older ones in the log.
            let read = |seq| count.one(seq);
            let kept = hub.for_each_kept(&table, from, read, |item| {
                replayed(&logged(item), Some(item))
            });
            if let Some(read) = kept {
                return read;
            }
            log.for_each_from(&table, from, |seq| count.one(seq), |c| replayed(c, None))
                .map_err(|e| damaged_as_expired(e, cursor))
        })
    }
}

/// The changes a resume replays, counted against its limit
/// ([`crate::Changes::replay_at_most`]).
struct Count {
    left: Option<u64>,
    cursor: Cursor,
}

impl Count {
    fn new(limit: Option<u64>, cursor: Cursor) -> Self {
        Count {
            left: limit,
            cursor,
        }
    }

    /// One more change read (numbered `seq`, of any table; the cursor's own change, read
    /// again for its later items, does not count): past the limit, the cursor has expired
    /// for this feed.
    fn one(&mut self, seq: u64) -> Result<()> {
        match &mut self.left {
            None => Ok(()),
            Some(_) if seq <= self.cursor.seq => Ok(()),
            Some(0) => Err(expired(
                self.cursor,
                "more changes after it than the feed replays (read the result again)".into(),
            )),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }
}

/// The items of a resume's changes read from the log before the commit lock is taken.
struct Early {
    /// Every change of the table numbered this or below (after the cursor) is in `items`.
    upto: u64,
    /// The table's incarnation in the log when they were read (`ChangeLog::created`).
    created: u64,
    items: Vec<Change>,
}

/// For a cursor older than the hub's tail that this process's log alone serves: the items
/// of the changes after it up to where the database stands now, read from the log without
/// the commit lock (writers go on meanwhile; the rest is read under it). `None` when the
/// tail has them (read from memory under the lock at once) or the log does not.
fn read_early(
    db: &Database,
    (log, hub): (&crate::db::changelog::ChangeLog, &Hub),
    table: &str,
    replay: &FeedPlan,
    cursor: Cursor,
    count: &mut Count,
) -> Result<Option<Early>> {
    let first = cursor.first_needed();
    // Read once: the table's incarnation is checked again under the lock, and the log must
    // still hold `first` once it has been read.
    let created = log.created(table);
    if cursor.seq <= created || first < log.floor() || hub.keeps_from(first) {
        return Ok(None);
    }
    let upto = db.position().seq;
    let (mut items, mut out) = (Vec::new(), std::collections::VecDeque::new());
    let counted = |seq| match seq <= upto {
        true => count.one(seq),
        false => Ok(()),
    };
    let read = log.for_each_from(table, first, counted, |c| {
        if c.seq <= upto {
            replay_one(replay, c, None, cursor, &mut items, &mut out);
        }
        Ok(())
    });
    // Segments dropped past the retention while they were read (the read may then have
    // started after `first`, or missed a file): the cursor expired meanwhile.
    if log.floor() > first {
        return Err(expired(
            cursor,
            format!(
                "the change log moved on past it (it keeps the changes from {:x} on)",
                log.floor()
            ),
        ));
    }
    read.map_err(|e| damaged_as_expired(e, cursor))?;
    Ok(Some(Early {
        upto,
        created,
        items: out.into(),
    }))
}

/// `cursor` cannot resume: `reason`.
fn expired(cursor: Cursor, reason: String) -> Error {
    Error::CursorExpired {
        cursor: cursor.to_string(),
        reason,
    }
}

/// A segment damaged since the log was opened: the changes after the cursor cannot all be
/// delivered (never some of them, with a gap).
fn damaged_as_expired(e: Error, cursor: Cursor) -> Error {
    match e {
        Error::Damaged { reason, .. } => {
            expired(cursor, format!("the change log is damaged: {reason}"))
        }
        e => e,
    }
}

/// Appends to `out` the feed's items of logged change `c` after `cursor` (`items`: scratch).
fn replay_one(
    replay: &FeedPlan,
    c: &Logged<'_>,
    plain: Option<&Change>,
    cursor: Cursor,
    items: &mut Vec<Change>,
    out: &mut std::collections::VecDeque<Change>,
) {
    if !plain_items(replay, c, plain, items) {
        Hub::replay_items(replay, &c.committed(), items);
    }
    // From the cursor's own change on: the feed's later items for it come first.
    if c.seq > cursor.seq {
        out.extend(items.drain(..));
    } else {
        out.extend(
            items
                .drain(..)
                .filter(|item| item.cursor().is_some_and(|at| at > cursor)),
        );
    }
}

/// A change kept in the hub's tail, as the log reads one back.
fn logged(item: &Change) -> Logged<'_> {
    Logged {
        seq: item.change_seq().unwrap_or(0),
        commit: item.stamp().map_or(0, |(_, commit)| commit),
        key: item.key().map_or(&[][..], |k| &k[..]),
        old: item.old_arc(),
        new: item.new_arc(),
    }
}

/// The items of a feed of whole rows (no filter or transform) in which the row is at most
/// once before and after the change: the `plain` item the hub's tail keeps for it (shared
/// with every resuming feed) when there is one and the row is in the result both times it
/// exists, else one built as the live path builds it (`feed::ops::rows::Rows::items`).
/// Returns false for any other feed (the caller makes its items the general way).
fn plain_items(
    plan: &FeedPlan,
    c: &Logged<'_>,
    plain: Option<&Change>,
    out: &mut Vec<Change>,
) -> bool {
    let Some(super::ops::rows::Rows { matcher, view, .. }) = plan.rows() else {
        return false;
    };
    if !view.is_identity() {
        return false;
    }
    let count = |doc: Option<&Arc<Value>>| doc.map_or(0, |d| matcher.count(c.key, d));
    let (old_n, new_n) = (count(c.old), count(c.new));
    if old_n > 1 || new_n > 1 {
        return false;
    }
    if old_n == 0 && new_n == 0 {
        return true;
    }
    let (old, new) = (old_n == 1, new_n == 1);
    match plain {
        Some(item) if old == c.old.is_some() && new == c.new.is_some() => out.push(item.clone()),
        _ => out.push(
            Change::row(
                Some(Arc::from(c.key)),
                c.old.filter(|_| old).cloned(),
                c.new.filter(|_| new).cloned(),
            )
            .at(c.seq, c.commit),
        ),
    }
    true
}

impl Change {
    /// Where this change is in the database's change order: give it to
    /// [`crate::Changes::resume_from`] to get the changes after it. `None` for initial
    /// rows, state markers and stats rows. Items of one commit have distinct cursors.
    ///
    /// A squashed item carries the cursor of the last change merged into it; since squashed
    /// items of different rows are handed over in no particular order, resume a squashing
    /// feed from the greatest cursor it delivered only once its queue was empty.
    pub fn cursor(&self) -> Option<Cursor> {
        match self.kind() {
            super::ChangeKind::Initial | super::ChangeKind::State => None,
            _ => Some(Cursor::new(self.change_seq()?, self.ordinal())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order() {
        let c = Cursor::new(0x1234, 2);
        assert_eq!(c.to_string(), "1234-2");
        assert_eq!("1234-2".parse::<Cursor>().unwrap(), c);
        assert!(Cursor::new(5, 9) < Cursor::new(6, 0));
        for bad in ["", "12", "x-1", "1-", "-1", "1-2-3", "11111111111111111-0"] {
            assert!(
                matches!(bad.parse::<Cursor>(), Err(Error::InvalidFeedOption(_))),
                "{bad}"
            );
        }
    }
}
