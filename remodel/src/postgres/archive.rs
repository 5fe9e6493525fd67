//! The shared history: every change, archived in PostgreSQL, so that a cursor resumes in a
//! process that was not running when it was taken (a new app process, after a restart).
//!
//! A process resumes a cursor from its own replica's change log when that log reaches back
//! to it (the process followed the database since). An older cursor is served from
//! `history`, a table every process can read:
//!
//! - `history(pos, commit_pos, tbl, kind, key, old, new, at)`: one row per change (`kind`
//!   0), per table created (1) or dropped (2) and per index created (3) or dropped (4), at
//!   its position (the change numbers of every process: commit LSN × 4,096 + place in the
//!   commit);
//! - `history_meta(upto, floor)`: `history` holds every change numbered `floor` to `upto`.
//!
//! **One archiver.** The process holding the session advisory lock `remodel:<schema>:archiver`
//! writes `history`, every [`FLUSH_EVERY`], from what its own replica applied (no slot of its
//! own: the design study's persistent archiver slot would retain WAL after its process died,
//! which Remodel promises never to do). Every process runs the archiver task; the others try
//! the lock every [`TRY_EVERY`], so when the archiver's process ends (its session, and the
//! lock, end with it) another takes over within moments.
//!
//! **No gap at a takeover.** Every process keeps the commits it applied in the last
//! [`RING_FOR`] (at most [`RING_CHANGES`] changes and [`RING_BYTES`]) in memory: the new archiver goes on from
//! `upto` with those. If they do not reach back that far (it started later, or the archiver
//! fell that far behind), the history has a gap: `floor` is raised past it, and a cursor from
//! before it gets `CursorExpired`, never a silent gap.
//!
//! **Resuming** ([`PgBackend::read_history`]): a cursor older than the replica's log reads
//! the table's rows of `history` from the cursor up to where the replica's log starts, in a
//! snapshot that also checks `floor` (else `CursorExpired`), that `upto` has reached the log
//! (the archiver is at most a flush behind: the read waits for it, a few seconds at most),
//! and that the table was not dropped or created after the cursor. The feed then replays
//! those, then the replica's log, under the commit lock as for any resume.
//!
//! **Retention**: the archiver applies the process's [`ChangeLogRetention`] (count and age)
//! to `history` every [`RETAIN_EVERY`], raising `floor`.

use super::backend::{pg_error, PgBackend, MAX_COMMIT_CHANGES};
use super::schema::ident;
use crate::db::write::Committed;
use crate::db::ChangeLogRetention;
use crate::{Error, Result};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::Client;

/// How often the archiver writes what its replica applied.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(25);
/// How often the other processes try to become the archiver.
pub(super) const TRY_EVERY: Duration = Duration::from_millis(500);
/// How often the archiver applies the retention.
pub(super) const RETAIN_EVERY: Duration = Duration::from_secs(10);
/// How long every process keeps the commits it applied, for a takeover.
pub(super) const RING_FOR: Duration = Duration::from_secs(10);
/// At most this many changes are kept for a takeover.
pub(super) const RING_CHANGES: usize = 65_536;
/// At most this many bytes of changes (as they came from the server) are kept for a
/// takeover.
pub(super) const RING_BYTES: usize = 64 << 20;
/// How long a resume waits for the archiver to reach the replica's log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// How long a read of the history waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// What a row of `history` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Change = 0,
    TableCreated = 1,
    TableDropped = 2,
    IndexCreated = 3,
    IndexDropped = 4,
}

/// A row of `history`, as a replica applied it.
#[derive(Clone, Debug)]
pub(super) struct Archived {
    pub pos: u64,
    /// The number of its commit's first change (as the replica numbered it).
    pub commit: u64,
    pub table: Arc<str>,
    pub kind: Kind,
    pub key: Vec<u8>,
    pub old: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

/// A commit the replica applied: the last number of its range, and its rows.
struct Applied {
    end: u64,
    at: Instant,
    rows: Vec<Archived>,
    /// Its records' size as they came from the server.
    bytes: usize,
}

/// The commits this process applied lately (see the module doc).
pub(super) struct Ring {
    commits: VecDeque<Applied>,
    changes: usize,
    bytes: usize,
    /// Every commit numbered after this is in `commits`.
    covered_after: u64,
}

/// The archiver's state in this process.
pub(super) struct Archive {
    ring: Mutex<Ring>,
    archiving: AtomicBool,
    /// Set when this process's replica lost its replication connection: its archiver lets
    /// go of the lock, so that another process archives the commits it did not receive.
    resign: AtomicBool,
    /// The history's `upto` as this process last wrote or read it.
    upto: AtomicU64,
    retention: ChangeLogRetention,
}

impl Archive {
    /// An archive whose ring starts after change `last` (the replica's position once
    /// loaded).
    pub(super) fn new(last: u64, retention: ChangeLogRetention) -> Self {
        Archive {
            ring: Mutex::new(Ring {
                commits: VecDeque::new(),
                changes: 0,
                bytes: 0,
                covered_after: last,
            }),
            archiving: AtomicBool::new(false),
            resign: AtomicBool::new(false),
            upto: AtomicU64::new(0),
            retention,
        }
    }

    /// Keeps a commit the replica applied at `base` (its first number), with its rows and
    /// its records' size.
    pub(super) fn applied(&self, base: u64, rows: Vec<Archived>, bytes: usize) {
        let now = Instant::now();
        let mut ring = self.ring.lock();
        ring.changes += rows.len();
        ring.bytes += bytes;
        ring.commits.push_back(Applied {
            end: base | (MAX_COMMIT_CHANGES as u64 - 1),
            at: now,
            rows,
            bytes,
        });
        let past = |ring: &Ring| {
            ring.commits.front().is_some_and(|oldest| {
                ring.changes > RING_CHANGES
                    || ring.bytes > RING_BYTES
                    || now.duration_since(oldest.at) > RING_FOR
            })
        };
        while past(&ring) {
            let Some(oldest) = ring.commits.pop_front() else {
                break;
            };
            ring.changes -= oldest.rows.len();
            ring.bytes -= oldest.bytes;
            ring.covered_after = oldest.end;
        }
    }

    /// The rows of the commits after `upto`, the last number they reach, and whether the
    /// ring holds every commit after `upto` (false: some were let go).
    fn after(&self, upto: u64) -> (Vec<Archived>, u64, bool) {
        let ring = self.ring.lock();
        let whole = ring.covered_after <= upto;
        let from = ring.commits.partition_point(|c| c.end <= upto);
        let mut rows = Vec::new();
        let mut last = upto.max(ring.covered_after);
        for c in ring.commits.range(from..) {
            rows.extend(c.rows.iter().cloned());
            last = c.end;
        }
        (rows, last, whole)
    }

    /// Lets go of the archiver's lock (if held) until [`Archive::rejoin`]: this process
    /// lost commits it must not be the one to archive.
    pub(super) fn resign(&self) {
        self.resign.store(true, Ordering::Release);
    }

    /// Takes part again, with a ring that starts after change `last` (the commits before
    /// it were applied from the history, not received).
    pub(super) fn rejoin(&self, last: u64) {
        let mut ring = self.ring.lock();
        ring.commits.clear();
        ring.changes = 0;
        ring.bytes = 0;
        ring.covered_after = last;
        drop(ring);
        self.resign.store(false, Ordering::Release);
    }

    /// Figures for the `stats` row: whether this process archives, the history's `upto`
    /// as it last saw it, and (archiving) how many changes it applied that the history
    /// does not hold yet, and since when the oldest of them waits.
    pub(super) fn stats(&self) -> (bool, u64, usize, Duration) {
        let archiving = self.archiving.load(Ordering::Relaxed);
        let upto = self.upto.load(Ordering::Relaxed);
        if !archiving {
            return (false, upto, 0, Duration::ZERO);
        }
        let ring = self.ring.lock();
        let from = ring.commits.partition_point(|c| c.end <= upto);
        let pending = ring.commits.range(from..).map(|c| c.rows.len()).sum();
        let waiting = ring
            .commits
            .get(from)
            .map_or(Duration::ZERO, |c| c.at.elapsed());
        (true, upto, pending, waiting)
    }
}

/// The SQL that makes the history's tables when they are missing. Nothing is run on tables
/// that exist: a `CREATE INDEX IF NOT EXISTS` would take a lock on `history` that waits
/// behind the archiver's open flush, holding up every process that connects.
pub(super) fn setup_sql(schema: &str) -> String {
    let q = ident(schema);
    let lit = schema.replace('\'', "''");
    format!(
        "DO $setup$ BEGIN
         IF to_regclass(format('%I.%I', '{lit}', 'history')) IS NULL THEN
             CREATE TABLE {q}.history (
                 pos bigint PRIMARY KEY,
                 commit_pos bigint NOT NULL,
                 tbl text NOT NULL,
                 kind smallint NOT NULL,
                 key bytea NOT NULL,
                 old text,
                 new text,
                 at timestamptz NOT NULL DEFAULT now()
             );
             CREATE INDEX history_tbl_pos ON {q}.history (tbl, pos);
         END IF;
         IF to_regclass(format('%I.%I', '{lit}', 'history_meta')) IS NULL THEN
             CREATE TABLE {q}.history_meta (
                 id int PRIMARY KEY CHECK (id = 1),
                 upto bigint NOT NULL,
                 floor bigint NOT NULL
             );
         END IF;
         END $setup$;"
    )
}

fn lock_key(schema: &str) -> String {
    format!("remodel:{schema}:archiver")
}

/// The archiver task of a process (see the module doc): tries the lock, and while it holds
/// it, writes the history and applies the retention. Ends when the database closes.
pub(super) async fn run(
    backend: Weak<PgBackend>,
    config: tokio_postgres::Config,
    schema: String,
    mut stop: watch::Receiver<bool>,
) {
    // One session, kept while it works: it tries the lock, and holds it while leading.
    let mut session: Option<Client> = None;
    let mut leading = false;
    let mut last_retention = Instant::now();
    loop {
        let wait = if leading { FLUSH_EVERY } else { TRY_EVERY };
        // Closing: a last flush (when leading), so that the history holds every commit this
        // process applied.
        let closing = tokio::select! {
            _ = stop.changed() => true,
            _ = tokio::time::sleep(wait) => false,
        };
        if closing && !leading {
            break;
        }
        let Some(b) = backend.upgrade() else { break };
        let archive = &b.archive;
        if archive.resign.load(Ordering::Acquire) {
            // Ending the session lets go of the lock.
            (session, leading) = (None, false);
            archive.archiving.store(false, Ordering::Relaxed);
            if closing {
                break;
            }
            continue;
        }
        let step = async {
            if session.as_ref().is_none_or(Client::is_closed) {
                // A new session holds no lock: lead again only once it takes the lock.
                leading = false;
                archive.archiving.store(false, Ordering::Relaxed);
                let client = super::connect(&config).await.map_err(|e| pg_error(&e))?;
                // A flush held up by a lock fails within a second, and a transaction of a
                // frozen archiver ends after 5 s: while one is open no process can create
                // its slot (a logical slot waits for every transaction in progress), so
                // none could start. The server probes the connection (TCP keepalives, and
                // unacknowledged data times out): the session of a process cut off by the
                // network ends within about 30 s, letting go of the lock, instead of after
                // the system's keepalive time (hours). Ignored over a Unix socket.
                client
                    .batch_execute(
                        "SET lock_timeout = '1s'; SET statement_timeout = '30s'; \
                         SET idle_in_transaction_session_timeout = '5s'; \
                         SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                         SET tcp_keepalives_count = 3; SET tcp_user_timeout = 30000",
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                session = Some(client);
            }
            let Some(client) = session.as_mut() else {
                return Ok(false);
            };
            if !leading && !try_lead(client, &schema, archive).await? {
                return Ok(false);
            }
            flush(client, &schema, archive).await?;
            if last_retention.elapsed() >= RETAIN_EVERY {
                last_retention = Instant::now();
                retain(client, &schema, archive.retention).await?;
            }
            Ok::<_, Error>(true)
        };
        match step.await {
            Ok(now_leading) => leading = now_leading,
            Err(e) => {
                // The session (and the lock with it) may be gone: start over; another
                // process may lead meanwhile.
                if leading {
                    tracing::warn!("the archiver stopped: {e}");
                }
                (session, leading) = (None, false);
            }
        }
        archive.archiving.store(leading, Ordering::Relaxed);
        if closing {
            break;
        }
    }
}

/// Tries the archiver's lock on `client`'s session; once taken, reads the history's meta
/// row (or makes it: the first archiver) and returns true.
async fn try_lead(client: &mut Client, schema: &str, archive: &Archive) -> Result<bool> {
    let got: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&lock_key(schema)],
        )
        .await
        .map_err(|e| pg_error(&e))?
        .get(0);
    if !got {
        return Ok(false);
    }
    let q = ident(schema);
    let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
    let meta = tx
        .query_opt(
            &format!("SELECT upto, floor FROM {q}.history_meta WHERE id = 1 FOR UPDATE"),
            &[],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    let upto = match meta {
        Some(row) => row.get::<_, i64>(0) as u64,
        None => {
            // The first archiver: the history starts with what its ring holds.
            let start = archive.ring.lock().covered_after;
            tx.execute(
                &format!("INSERT INTO {q}.history_meta (id, upto, floor) VALUES (1, $1, $2)"),
                &[&(start as i64), &(start as i64 + 1)],
            )
            .await
            .map_err(|e| pg_error(&e))?;
            start
        }
    };
    tx.commit().await.map_err(|e| pg_error(&e))?;
    archive.upto.store(upto, Ordering::Relaxed);
    Ok(true)
}

/// Writes the commits the replica applied after the history's `upto`, and moves `upto`.
async fn flush(client: &mut Client, schema: &str, archive: &Archive) -> Result<()> {
    let upto = archive.upto.load(Ordering::Relaxed);
    let (rows, last, whole) = archive.after(upto);
    if last <= upto {
        return Ok(());
    }
    let q = ident(schema);
    let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
    if !whole {
        // The ring let go of commits the history lacks: a gap. Cursors from before it
        // expire (the rows before it go; the retention would drop them anyway).
        let covered_after = archive.ring.lock().covered_after.max(upto);
        tracing::warn!(
            "the shared history has a gap after {upto:x}: it starts again after {covered_after:x}"
        );
        tx.execute(
            &format!("DELETE FROM {q}.history WHERE pos <= $1"),
            &[&(covered_after as i64)],
        )
        .await
        .map_err(|e| pg_error(&e))?;
        tx.execute(
            &format!("UPDATE {q}.history_meta SET floor = $1 WHERE id = 1"),
            &[&(covered_after as i64 + 1)],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    }
    if !rows.is_empty() {
        let mut pos = Vec::with_capacity(rows.len());
        let mut commit = Vec::with_capacity(rows.len());
        let mut tbl = Vec::with_capacity(rows.len());
        let mut kind = Vec::with_capacity(rows.len());
        let mut key = Vec::with_capacity(rows.len());
        let mut old = Vec::with_capacity(rows.len());
        let mut new = Vec::with_capacity(rows.len());
        let text = |d: &Option<Arc<Value>>| d.as_deref().map(serde_json::to_string).transpose();
        for r in &rows {
            pos.push(r.pos as i64);
            commit.push(r.commit as i64);
            tbl.push(&*r.table);
            kind.push(r.kind as i16);
            key.push(r.key.as_slice());
            old.push(text(&r.old)?);
            new.push(text(&r.new)?);
        }
        tx.execute(
            &format!(
                "INSERT INTO {q}.history (pos, commit_pos, tbl, kind, key, old, new)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int2[],
                                      $5::bytea[], $6::text[], $7::text[])
                 ON CONFLICT (pos) DO NOTHING"
            ),
            &[&pos, &commit, &tbl, &kind, &key, &old, &new],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    }
    tx.execute(
        &format!("UPDATE {q}.history_meta SET upto = $1 WHERE id = 1 AND upto < $1"),
        &[&(last as i64)],
    )
    .await
    .map_err(|e| pg_error(&e))?;
    tx.commit().await.map_err(|e| pg_error(&e))?;
    archive.upto.store(last, Ordering::Relaxed);
    Ok(())
}

/// Applies the retention to the history: drops the rows past it and raises `floor`.
async fn retain(client: &mut Client, schema: &str, retention: ChangeLogRetention) -> Result<()> {
    let q = ident(schema);
    let mut cut: Option<i64> = None;
    if let Some(max) = retention.max_changes {
        let row = client
            .query_opt(
                &format!("SELECT pos FROM {q}.history ORDER BY pos DESC OFFSET $1 LIMIT 1"),
                &[&(max.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        cut = cut.max(row.map(|r| r.get(0)));
    }
    if let Some(age) = retention.max_age {
        let row = client
            .query_one(
                &format!(
                    "SELECT max(pos) FROM {q}.history WHERE at < now() - make_interval(secs => $1)"
                ),
                &[&age.as_secs_f64()],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        cut = cut.max(row.get(0));
    }
    let Some(cut) = cut else { return Ok(()) };
    let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
    tx.execute(
        &format!("UPDATE {q}.history_meta SET floor = $1 WHERE id = 1 AND floor < $1"),
        &[&(cut + 1)],
    )
    .await
    .map_err(|e| pg_error(&e))?;
    tx.execute(&format!("DELETE FROM {q}.history WHERE pos <= $1"), &[&cut])
        .await
        .map_err(|e| pg_error(&e))?;
    tx.commit().await.map_err(|e| pg_error(&e))
}

/// Why the history cannot give what was asked (the reason a cursor expired).
type Refused = String;

/// The history's bounds in a snapshot: every change numbered `floor` to `upto` is in it.
struct Bounds {
    upto: u64,
    floor: u64,
}

impl PgBackend {
    /// Runs `read` in a read-only snapshot of the history once it holds every change from
    /// `from` up to before `to`: waits (a few seconds at most) for the archiver to reach
    /// `to`; refuses when the history does not reach back to `from`, or is not kept.
    async fn in_history_snapshot<T>(
        &self,
        from: u64,
        to: u64,
        read: impl for<'t> AsyncFnOnce(&'t tokio_postgres::Transaction<'t>, &'t str) -> Result<T>,
    ) -> Result<std::result::Result<T, Refused>> {
        let q = ident(&self.schema);
        let begin = Instant::now();
        loop {
            // Bounded: the pool's connections may all be held by writes that wait for the
            // replica, which may itself wait for this read (a reconnect's gap).
            let mut conn = tokio::time::timeout(POOL_WAIT, self.pool.get())
                .await
                .map_err(|_| {
                    Error::storage(format!(
                        "postgresql pool: no connection free within {POOL_WAIT:?} to read the \
                         shared history"
                    ))
                })?
                .map_err(|e| super::backend::pool_error(&e))?;
            let tx = super::read_only_snapshot(&mut conn)
                .await
                .map_err(|e| pg_error(&e))?;
            let meta = tx
                .query_opt(
                    &format!("SELECT upto, floor FROM {q}.history_meta WHERE id = 1"),
                    &[],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            let bounds = meta.map(|m| Bounds {
                upto: m.get::<_, i64>(0) as u64,
                floor: m.get::<_, i64>(1) as u64,
            });
            if let Some(b) = bounds.as_ref().filter(|b| from < b.floor) {
                return Ok(Err(format!(
                    "the shared history keeps only the changes from {:x} on",
                    b.floor
                )));
            }
            // Not there yet: no flush so far (an archiver just elected, or the process that
            // took the cursor archiving since a moment ago, makes its first within one
            // flush interval), or the history ends before `to`. Both are waited for.
            if bounds.as_ref().is_none_or(|b| b.upto + 1 < to) {
                drop(tx);
                if begin.elapsed() > CATCH_UP_WAIT + TRY_EVERY {
                    return Ok(Err(match bounds {
                        None => "no shared history is kept yet (no process archives)".into(),
                        Some(b) => format!(
                            "the shared history reaches only {:x}, not {:x} (no process \
                             archives what this one needs)",
                            b.upto,
                            to - 1
                        ),
                    }));
                }
                tokio::time::sleep(FLUSH_EVERY).await;
                continue;
            }
            return Ok(Ok(read(&tx, &q).await?));
        }
    }

    /// The changes of `table` numbered `from` up to before `to`, from the shared history;
    /// `Ok(Err(reason))` when the history does not hold all of them (see the module doc).
    pub(super) async fn read_history(
        &self,
        table: &str,
        from: u64,
        to: u64,
        most: Option<u64>,
    ) -> Result<crate::db::backend::History> {
        // One more than `most`: that many rows say there are more.
        let limit = most.map_or(i64::MAX, |m| {
            i64::try_from(m.saturating_add(1)).unwrap_or(i64::MAX)
        });
        let read = async |tx: &tokio_postgres::Transaction<'_>, q: &str| {
            let ddl = tx
                .query_opt(
                    &format!(
                        "SELECT pos FROM {q}.history WHERE tbl = $1 AND kind IN (1, 2) AND pos >= $2 LIMIT 1"
                    ),
                    &[&table, &(from as i64)],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            if ddl.is_some() {
                return Ok(Err(format!(
                    "table `{table}` was dropped or created after it"
                )));
            }
            let rows = tx
                .query(
                    &format!(
                        "SELECT pos, commit_pos, key, old, new FROM {q}.history
                         WHERE tbl = $1 AND kind = 0 AND pos >= $2 AND pos < $3 ORDER BY pos
                         LIMIT $4"
                    ),
                    &[&table, &(from as i64), &(to as i64), &limit],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            if most.is_some_and(|m| rows.len() as u64 > m) {
                return Ok(Err(
                    "more changes after it than the feed replays (read the result again)".into(),
                ));
            }
            let mut changes = Vec::with_capacity(rows.len());
            for row in rows {
                changes.push(Committed {
                    seq: row.get::<_, i64>(0) as u64,
                    commit: row.get::<_, i64>(1) as u64,
                    key: row.get(2),
                    old: doc(row.get(3))?,
                    new: doc(row.get(4))?,
                });
            }
            Ok(Ok(changes))
        };
        Ok(self
            .in_history_snapshot(from, to, read)
            .await?
            .and_then(|r| r))
    }
}

/// A document of the history (JSON text), parsed.
fn doc(text: Option<&str>) -> Result<Option<Arc<Value>>> {
    Ok(text.map(serde_json::from_str).transpose()?.map(Arc::new))
}

/// A commit of a gap, read back from the history: its first number and its changes (table,
/// key, document before and after).
pub(super) type GapCommit = (
    u64,
    Vec<(String, Vec<u8>, Option<Arc<Value>>, Option<Arc<Value>>)>,
);

impl PgBackend {
    /// Every commit numbered after `after` and before `before`, of every table, from the
    /// shared history, once it reaches `before` (waiting for the archiver, a few seconds at
    /// most); `Err` with the reason when it cannot give them all, or when a table or index
    /// was created or dropped among them (the replica would need more than changes).
    pub(super) async fn read_gap(&self, after: u64, before: u64) -> Result<Vec<GapCommit>> {
        let read = async |tx: &tokio_postgres::Transaction<'_>, q: &str| {
            let rows = tx
                .query(
                    &format!(
                        "SELECT commit_pos, tbl, kind, key, old, new FROM {q}.history
                         WHERE pos > $1 AND pos < $2 ORDER BY pos"
                    ),
                    &[&(after as i64), &(before as i64)],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            let mut commits: Vec<GapCommit> = Vec::new();
            for row in rows {
                let (commit, table, kind) = (
                    row.get::<_, i64>(0) as u64,
                    row.get::<_, String>(1),
                    row.get::<_, i16>(2),
                );
                if kind != Kind::Change as i16 {
                    return Err(Error::storage(format!(
                        "a table or index of `{table}` was created or dropped meanwhile"
                    )));
                }
                let change = (table, row.get(3), doc(row.get(4))?, doc(row.get(5))?);
                match commits.last_mut() {
                    Some((c, changes)) if *c == commit => changes.push(change),
                    _ => commits.push((commit, vec![change])),
                }
            }
            Ok(commits)
        };
        self.in_history_snapshot(after + 1, before, read)
            .await?
            .map_err(Error::storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pos: u64) -> Archived {
        Archived {
            pos,
            commit: pos,
            table: Arc::from("t"),
            kind: Kind::Change,
            key: vec![1],
            old: None,
            new: None,
        }
    }

    #[test]
    fn the_ring_says_what_it_holds_after_a_position() {
        let archive = Archive::new(4095, ChangeLogRetention::default());
        archive.applied(4096, vec![row(4096), row(4097)], 100);
        archive.applied(8192, vec![], 0);
        archive.applied(12288, vec![row(12288)], 50);
        let (rows, last, whole) = archive.after(4095);
        assert_eq!(
            rows.iter().map(|r| r.pos).collect::<Vec<_>>(),
            [4096, 4097, 12288]
        );
        assert_eq!((last, whole), (12288 | 4095, true));
        let (rows, last, whole) = archive.after(8192 | 4095);
        assert_eq!(rows.iter().map(|r| r.pos).collect::<Vec<_>>(), [12288]);
        assert_eq!((last, whole), (12288 | 4095, true));
        // From before the ring started: not whole.
        assert!(!archive.after(100).2);
    }

    #[test]
    fn the_ring_lets_go_of_the_oldest_past_its_size() {
        let archive = Archive::new(0, ChangeLogRetention::default());
        let per = 4096;
        for c in 1..=(RING_CHANGES / per + 1) as u64 {
            let base = c << 12;
            archive.applied(base, (0..per as u64).map(|i| row(base + i)).collect(), 0);
        }
        let (rows, _, whole) = archive.after(0);
        assert!(!whole);
        assert!(rows.len() <= RING_CHANGES);
        // Whole from where it now starts.
        let start = archive.ring.lock().covered_after;
        assert_eq!(start, (1 << 12) | 4095);
        assert!(archive.after(start).2);
    }

    #[test]
    fn the_ring_lets_go_of_the_oldest_past_its_bytes() {
        let archive = Archive::new(0, ChangeLogRetention::default());
        for c in 1..=3u64 {
            archive.applied(c << 12, vec![row(c << 12)], RING_BYTES / 2);
        }
        // Two commits of half the bytes each fit; the first went.
        assert_eq!(archive.ring.lock().commits.len(), 2);
        assert_eq!(archive.ring.lock().covered_after, (1 << 12) | 4095);
    }
}
