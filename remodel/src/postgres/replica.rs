//! A process's replica of the shared database: loading it at an exported snapshot, and
//! following the database from there (the pump's task), commit by commit, in commit order.
//! See `backend.rs` for why every process keeps one.

use super::archive::{Archived, Kind};
use super::backend::{PgBackend, MAX_COMMIT_CHANGES, OP_BITS};
use super::pump::{CommitBatch, Pump, PumpConfig, PumpError};
use super::record::{DdlRecord, Record};
use super::schema::{self, docs_relation};
use super::{pg_error, pump_error};
use crate::db::{Database, IndexSpec};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A read-only transaction that reads at the exported `snapshot`.
async fn at_snapshot<'c>(
    client: &'c mut tokio_postgres::Client,
    snapshot: &str,
) -> Result<tokio_postgres::Transaction<'c>> {
    let tx = super::read_only_snapshot(client)
        .await
        .map_err(|e| pg_error(&e))?;
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT '{}'",
        snapshot.replace('\'', "")
    ))
    .await
    .map_err(|e| pg_error(&e))?;
    Ok(tx)
}

/// The catalog: every table's primary key field and secondary indexes, by name.
async fn read_catalog(
    tx: &tokio_postgres::Transaction<'_>,
    schema_name: &str,
) -> Result<std::collections::BTreeMap<String, (String, HashMap<String, IndexSpec>)>> {
    let rows = tx
        .query(
            &format!(
                "SELECT name, primary_key, indexes::text FROM {}.catalog ORDER BY name",
                schema::ident(schema_name)
            ),
            &[],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    let mut catalog = std::collections::BTreeMap::new();
    for row in rows {
        let (name, primary_key, indexes): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let indexes: HashMap<String, serde_json::Value> = serde_json::from_str(&indexes)?;
        let indexes = indexes
            .into_iter()
            .map(|(index, spec)| Ok((index, spec_of_catalog(spec)?)))
            .collect::<Result<_>>()?;
        catalog.insert(name, (primary_key, indexes));
    }
    Ok(catalog)
}

/// An index's spec as the catalog (a `jsonb` column) holds it: the spec's JSON, or, when its
/// JSON text holds the escape `\u0000` (a NUL in a field name, which `jsonb` refuses and the
/// embedded store accepts; also a name that spells the escape itself, harmlessly), the
/// spec's JSON text as a string.
pub(crate) fn catalog_spec(spec: &IndexSpec) -> Result<serde_json::Value> {
    let text = serde_json::to_string(spec)?;
    if text.contains("\\u0000") {
        return Ok(serde_json::Value::String(text));
    }
    Ok(serde_json::from_str(&text)?)
}

/// The spec that [`catalog_spec`] stored.
fn spec_of_catalog(stored: serde_json::Value) -> Result<IndexSpec> {
    Ok(match stored {
        serde_json::Value::String(text) => serde_json::from_str(&text)?,
        spec => serde_json::from_value(spec)?,
    })
}

/// How a replica is brought to a new slot's exported snapshot.
#[derive(Clone, Copy, Debug)]
pub(super) enum AtSnapshot {
    /// A new (empty) replica is loaded ([`load_replica`]).
    Load,
    /// A replica that lost its stream is brought up to date ([`resync_replica`]).
    Resync,
}

/// A new pump, its temporary slot created with an exported snapshot, and the replica
/// brought to that snapshot before replication starts: every commit is then either in the
/// replica or in the stream, never both.
pub(super) async fn pump_at_snapshot(
    db: &Database,
    config: &tokio_postgres::Config,
    schema_name: &str,
    how: AtSnapshot,
) -> Result<Pump> {
    pump_or_why(db, config, schema_name, how)
        .await
        .map_err(|e| pump_error(&e))
}

/// [`pump_at_snapshot`], its error as the pump's (what the caller may try again).
pub(super) async fn pump_or_why(
    db: &Database,
    config: &tokio_postgres::Config,
    schema_name: &str,
    how: AtSnapshot,
) -> std::result::Result<Pump, PumpError> {
    let options = PumpConfig {
        export_snapshot: true,
        ..PumpConfig::default()
    };
    let (replica, load_config, schema_name) = (db.clone(), config.clone(), schema_name.to_string());
    let (pump, ()) = Pump::start_with_snapshot(config, options, |snapshot, point| async move {
        let (db, config, schema) = (&replica, &load_config, schema_name.as_str());
        let done = match how {
            AtSnapshot::Load => load_replica(db, config, schema, &snapshot, point.0).await,
            AtSnapshot::Resync => resync_replica(db, config, schema, &snapshot, point.0).await,
        };
        done.map_err(|e| PumpError::Setup {
            step: "load",
            message: e.to_string(),
        })
    })
    .await?;
    Ok(pump)
}

/// Loads the replica with what the exported `snapshot` shows: the catalog's tables and
/// indexes, then every document. Numbers start after `point` (the slot's consistent point),
/// so that a cursor from before it does not resume here (this replica has no history
/// before it).
async fn load_replica(
    db: &Database,
    config: &tokio_postgres::Config,
    schema_name: &str,
    snapshot: &str,
    point: u64,
) -> Result<()> {
    db.inner.advance_seq(position(point)?.saturating_sub(1));
    let mut client = super::connect(config).await.map_err(|e| pg_error(&e))?;
    let tx = at_snapshot(&mut client, snapshot).await?;
    let catalog = read_catalog(&tx, schema_name).await?;
    for (name, (primary_key, indexes)) in catalog {
        db.create_table_local(&name, &primary_key).await?;
        for (index, spec) in indexes {
            db.create_index_local(&name, &index, spec).await?;
        }
        let table = db.table_state(&name)?;
        let rows = tx
            .query_raw(
                &format!(
                    "SELECT k, doc::text FROM {} ORDER BY k",
                    docs_relation(schema_name, &name)
                ),
                std::iter::empty::<&str>(),
            )
            .await
            .map_err(|e| pg_error(&e))?;
        futures_util::pin_mut!(rows);
        let mut chunk = Vec::new();
        loop {
            use futures_util::StreamExt;
            let next = rows.next().await;
            let done = next.is_none();
            if let Some(row) = next {
                let row = row.map_err(|e| pg_error(&e))?;
                let key: Vec<u8> = row.get(0);
                let doc: &str = row.get(1);
                chunk.push((key, serde_json::from_str(doc)?));
            }
            if chunk.len() >= 4096 || (done && !chunk.is_empty()) {
                db.inner.load_rows(&table, std::mem::take(&mut chunk))?;
            }
            if done {
                break;
            }
        }
    }
    tx.commit().await.map_err(|e| pg_error(&e))
}

/// The number of the first change of the commit at `lsn`.
pub(super) fn position(lsn: u64) -> Result<u64> {
    if lsn >> (64 - OP_BITS) != 0 {
        return Err(Error::storage(format!(
            "WAL position {lsn:x} is past what change numbers hold (2^52 bytes of WAL)"
        )));
    }
    Ok(lsn << OP_BITS)
}

/// The pump's task: applies each batch to the replica, in commit order, and tells the
/// writers waiting for it. A lost replication connection is bridged from the shared history
/// ([`reconnect`]), or else the replica is reloaded ([`reload`], ending every feed); any
/// other failure ends every feed and makes later writes fail: the replica no longer follows
/// the database, and silence would be a gap.
pub(super) async fn follow(
    mut pump: Pump,
    db_weak: Weak<crate::db::DbInner>,
    backend_weak: Weak<PgBackend>,
    mut stop: watch::Receiver<bool>,
) {
    let why = loop {
        let batch = tokio::select! {
            _ = stop.changed() => break None,
            batch = pump.next_batch() => batch,
        };
        let (Some(inner), Some(backend)) = (db_weak.upgrade(), backend_weak.upgrade()) else {
            break None;
        };
        let db = Database { inner };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e @ (PumpError::ConnectionLost { .. } | PumpError::Ended)) => {
                // Nothing held while the stream is recovered: a close, or the drop of the
                // last handle, ends the recovery (and this task).
                drop((db, backend));
                match recover(&db_weak, &backend_weak, &mut stop, &e).await {
                    Some(new) => {
                        let _ = std::mem::replace(&mut pump, new).stop().await;
                        continue;
                    }
                    None => break None,
                }
            }
            Err(e) => break Some((db, backend, pump_error(&e).to_string())),
        };
        match apply(&db, &batch).await {
            Ok((tokens, base, archived)) => {
                pump.ack(batch.end_lsn);
                backend.archive.applied(base, archived, batch.bytes);
                backend.applied(batch.xid, tokens);
            }
            Err(e) => break Some((db, backend, e.to_string())),
        }
    };
    match why {
        Some((db, backend, why)) => {
            tracing::error!("the replica stopped following PostgreSQL: {why}");
            backend.ended(why.clone(), false);
            db.inner
                .end_feeds(&format!("no longer following PostgreSQL: {why}"));
        }
        // Closed or dropped: writes and syncs still waiting end with `Closed`.
        None => {
            if let Some(backend) = backend_weak.upgrade() {
                backend.ended("the database was closed".into(), true);
            }
        }
    }
    let _ = pump.stop().await;
}

/// The longest wait between two tries to reload the replica while the server is
/// unreachable.
const RELOAD_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// While the server is unreachable past the reconnect window: tries to reload the replica,
/// with a growing wait (at most [`RELOAD_BACKOFF_MAX`]), until it works (then writes go on:
/// [`PgBackend::up`]) or the database is closed or dropped (`None`). Holds neither between
/// tries, so that dropping every handle ends it.
async fn reload_when_back(
    db: &Weak<crate::db::DbInner>,
    backend: &Weak<PgBackend>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Pump> {
    let mut wait = Duration::from_millis(200);
    loop {
        if stopped(stop) {
            return None;
        }
        tokio::select! {
            _ = stop.changed() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        let (Some(inner), Some(backend)) = (db.upgrade(), backend.upgrade()) else {
            return None;
        };
        let db = Database { inner };
        match reload(&db, &backend, "the server was unreachable").await {
            Ok(pump) => {
                backend.up();
                return Some(pump);
            }
            Err(e) => {
                tracing::debug!("PostgreSQL still unreachable: {e}");
                wait = (wait * 2).min(RELOAD_BACKOFF_MAX);
            }
        }
    }
}

/// Whether the database was closed (or dropped: the sender is gone with the backend).
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// After the replication connection was lost: [`reconnect`], else [`reload`], else the
/// server is unreachable and the backend is down until [`reload_when_back`] reloads the
/// replica. `None`: the database was closed or dropped meanwhile (nothing more is opened or
/// written on the server for it).
async fn recover(
    db: &Weak<crate::db::DbInner>,
    backend: &Weak<PgBackend>,
    stop: &mut watch::Receiver<bool>,
    lost: &PumpError,
) -> Option<Pump> {
    let _recovering = Recovering::start(backend);
    let why = match reconnect(db, backend, stop).await {
        Reconnected::Pump(pump) => return Some(pump),
        Reconnected::Stopped => return None,
        Reconnected::Failed(why) => why,
    };
    if stopped(stop) {
        return None;
    }
    {
        let (inner, backend) = (db.upgrade()?, backend.upgrade()?);
        let db = Database { inner };
        match reload(&db, &backend, &format!("{lost}; {why}")).await {
            Ok(pump) => return Some(pump),
            Err(why) => {
                // Unreachable for longer than the window: down until it answers.
                backend.down(format!("{lost}; {why}"));
                tracing::error!(
                    "PostgreSQL is unreachable ({lost}; {why}): feeds have ended and writes \
                     fail until it answers again"
                );
            }
        }
    }
    reload_when_back(db, backend, stop).await
}

/// The backend's `recovering` flag (in its stats), set while [`recover`] runs.
struct Recovering(Weak<PgBackend>);

impl Recovering {
    fn start(backend: &Weak<PgBackend>) -> Self {
        if let Some(b) = backend.upgrade() {
            b.recovering
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Recovering(backend.clone())
    }
}

impl Drop for Recovering {
    fn drop(&mut self) {
        if let Some(b) = self.0.upgrade() {
            b.recovering
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What [`reconnect`] came to.
enum Reconnected {
    /// Following again, the gap bridged.
    Pump(Pump),
    /// The database was closed or dropped meanwhile.
    Stopped,
    /// The gap could not be bridged (or no stream was had within the window): why.
    Failed(Error),
}

/// After the replication connection was lost: a new pump (a new temporary slot, from its
/// consistent point on), and the commits between the last one applied and that point,
/// applied from the shared history as they were committed, so that feeds go on with no gap
/// and no duplicate. This process lets go of the archiver's lock first: it did not receive
/// those commits, another process archives them. Fails (and the replica stops following)
/// when the history cannot bridge the gap: no other process archives, or a table or index
/// was created or dropped in it. Holds neither the database nor the backend while it waits
/// for the server, and stops as soon as the database is closed or dropped.
async fn reconnect(
    db: &Weak<crate::db::DbInner>,
    backend: &Weak<PgBackend>,
    stop: &mut watch::Receiver<bool>,
) -> Reconnected {
    let Some((config, window)) = backend.upgrade().map(|b| {
        b.archive.resign();
        (b.config.clone(), b.reconnect_for)
    }) else {
        return Reconnected::Stopped;
    };
    let begin = Instant::now();
    let mut wait = Duration::from_millis(50);
    let pump = loop {
        if stopped(stop) {
            return Reconnected::Stopped;
        }
        let started = tokio::select! {
            _ = stop.changed() => return Reconnected::Stopped,
            started = Pump::start(&config, PumpConfig::default()) => started,
        };
        match started {
            Ok(pump) => break pump,
            Err(e) if begin.elapsed() < window => {
                tracing::debug!("reconnecting the replication stream: {e}");
                tokio::select! {
                    _ = stop.changed() => return Reconnected::Stopped,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Reconnected::Failed(pump_error(&e)),
        }
    };
    let (Some(inner), Some(backend)) = (db.upgrade(), backend.upgrade()) else {
        let _ = pump.stop().await;
        return Reconnected::Stopped;
    };
    let db = Database { inner };
    let bridged = tokio::select! {
        _ = stop.changed() => None,
        bridged = bridge(&db, &backend, &pump) => Some(bridged),
    };
    match bridged {
        Some(Ok(())) => Reconnected::Pump(pump),
        Some(Err(e)) => {
            let _ = pump.stop().await;
            Reconnected::Failed(e)
        }
        None => {
            let _ = pump.stop().await;
            Reconnected::Stopped
        }
    }
}

/// Applies the commits between the last one the replica applied and the start of the new
/// `pump` from the shared history (see [`reconnect`]).
async fn bridge(db: &Database, backend: &Arc<PgBackend>, pump: &Pump) -> Result<()> {
    let last = db.inner.with_commit_lock(|last| last);
    let start = position(pump.handle().status().start_lsn.0)?;
    // The archiving process's history reaches a position only once it applies a commit at
    // or after it: one is made now, so that a quiet database is bridged too. (Should it
    // fail, the read below waits for other writes, then the replica is reloaded.)
    if let Err(e) = backend.emit_barrier().await {
        tracing::debug!("no commit after the new slot's start: {e}");
    }
    let gap = backend.read_gap(last, start).await?;
    let commits = gap.len();
    for (first, changes) in gap {
        let mut group = Vec::with_capacity(changes.len());
        for (table, key, old, new) in changes {
            group.push((db.table_state(&table)?, key, old, new));
        }
        db.inner.apply_replicated(group, first)?;
    }
    db.inner.advance_seq(start.saturating_sub(1));
    backend.archive.rejoin(start.saturating_sub(1));
    backend.bridged();
    backend.reconnected(pump);
    tracing::warn!(
        "the replication connection was lost; {commits} commits were applied from the shared \
         history and the replica follows the database again"
    );
    Ok(())
}

/// When the gap after a lost replication connection cannot be bridged from the shared
/// history: every feed of the process ends with `FeedAborted` (re-read with
/// `include_initial`), and the replica is brought to the database's state at a new slot's
/// exported snapshot by applying the differences as local commits numbered before the new
/// slot's start (readers see the state before or after, both committed states). Cursors from
/// before that start no longer resume from this process's log (the shared history, or
/// `CursorExpired`). The handle goes on: writes, reads and new feeds.
async fn reload(db: &Database, backend: &Arc<PgBackend>, why: &str) -> Result<Pump> {
    db.end_all_feeds(&format!(
        "the replication connection to PostgreSQL was lost and the commits since could not \
         be read back ({why}): re-read with include_initial"
    ));
    let pump = pump_at_snapshot(db, &backend.config, &backend.schema, AtSnapshot::Resync).await?;
    let start = position(pump.handle().status().start_lsn.0)?;
    db.inner.advance_seq(start.saturating_sub(1));
    // Again, for the tables the resync created (the tables it found were marked when it
    // began, see `resync_replica`).
    db.restart_history(start.saturating_sub(1))?;
    backend.archive.rejoin(start.saturating_sub(1));
    backend.bridged();
    backend.reconnected(&pump);
    tracing::warn!("the replication connection was lost; the replica was reloaded");
    Ok(pump)
}

/// Brings the replica to what the exported `snapshot` shows: its tables and indexes as in
/// the catalog, and every document's difference applied as one local commit numbered just
/// before `point`'s position.
async fn resync_replica(
    db: &Database,
    config: &tokio_postgres::Config,
    schema_name: &str,
    snapshot: &str,
    point: u64,
) -> Result<()> {
    let start = position(point)?;
    // From now on a cursor from before the new slot's start resumes from the shared history
    // (which holds the lost commits, or refuses), never from this replica's log, which lacks
    // them. Feeds opened since the reload began (resumed from that log in the meantime) end
    // too: they received nothing yet (nothing was applied), and would otherwise go on past
    // the lost commits as if there were none.
    db.restart_history(start.saturating_sub(1))?;
    db.end_all_feeds(
        "the replica is being reloaded after its replication connection was lost: re-read \
         with include_initial",
    );
    let mut client = super::connect(config).await.map_err(|e| pg_error(&e))?;
    let tx = at_snapshot(&mut client, snapshot).await?;
    let wanted = read_catalog(&tx, schema_name).await?;
    for name in db.table_names()? {
        let same = wanted
            .get(&name)
            .is_some_and(|(pk, _)| db.table_state(&name).is_ok_and(|t| &t.primary_key == pk));
        if !same {
            db.drop_table_local(&name).await?;
        }
    }
    let parse =
        |bytes: &[u8]| -> Result<Arc<Value>> { Ok(Arc::new(serde_json::from_slice(bytes)?)) };
    let mut changes = Vec::new();
    for (name, (primary_key, indexes)) in &wanted {
        if db.table_state(name).is_err() {
            db.create_table_local(name, primary_key).await?;
        }
        for (index, spec) in db.index_specs(name)? {
            if indexes.get(&index) != Some(&spec) {
                db.drop_index_local(name, &index).await?;
            }
        }
        let have: Vec<String> = db.index_specs(name)?.into_iter().map(|(n, _)| n).collect();
        for (index, spec) in indexes {
            if !have.contains(index) {
                if let Err(e) = db.create_index_local(name, index, spec.clone()).await {
                    tracing::warn!("index `{index}` of `{name}` could not be built: {e}");
                }
            }
        }
        let table = db.table_state(name)?;
        let rows = tx
            .query_raw(
                &format!(
                    "SELECT k, doc::text FROM {} ORDER BY k",
                    docs_relation(schema_name, name)
                ),
                std::iter::empty::<&str>(),
            )
            .await
            .map_err(|e| pg_error(&e))?;
        futures_util::pin_mut!(rows);
        // Both in key order (`bytea` orders as the store does): a merge.
        let mut local = table.docs.iter();
        let mut here = local.next().transpose()?;
        loop {
            use futures_util::StreamExt;
            let remote = match rows.next().await {
                Some(row) => {
                    let row = row.map_err(|e| pg_error(&e))?;
                    Some((row.get::<_, Vec<u8>>(0), row.get::<_, String>(1)))
                }
                None => None,
            };
            // Local documents before the remote one's key are gone from the database.
            while let Some((key, old)) = &here {
                if remote
                    .as_ref()
                    .is_some_and(|(k, _)| k.as_slice() <= &key[..])
                {
                    break;
                }
                changes.push((table.clone(), key.to_vec(), Some(parse(old)?), None));
                here = local.next().transpose()?;
            }
            let Some((key, doc)) = remote else { break };
            let old = match &here {
                Some((k, v)) if k[..] == key[..] => {
                    let v = v.clone();
                    here = local.next().transpose()?;
                    Some(v)
                }
                _ => None,
            };
            if old.as_deref() != Some(doc.as_bytes()) {
                let new = parse(doc.as_bytes())?;
                let old = old.map(|o| parse(&o)).transpose()?;
                if old.as_deref() != Some(&*new) {
                    changes.push((table.clone(), key, old, Some(new)));
                }
            }
        }
    }
    // One local commit: a reader sees the state before or after, both committed states. It
    // is numbered just below the new slot's start, where no commit of the database can be
    // (a commit record takes at least 32 bytes of WAL before the slot's consistent point, and
    // a commit's numbers are its LSN × 4,096 on): a cursor from it, resumed here or in any
    // process, reads nothing of the shared history before the start, so no commit the
    // differences already hold comes again. (That holds for up to 31 × 4,096 = 126,976
    // differences; beyond, the first numbers can be a commit's before the start, and a
    // cursor taken from one of them by a feed opened during the reload may resume with
    // changes it already has. Left as is: such a reload is rare, and failing it instead
    // would leave the handle unable to follow at all.)
    if !changes.is_empty() {
        let last = db.inner.with_commit_lock(|last| last);
        let first = start.saturating_sub(changes.len() as u64);
        if first <= last {
            return Err(Error::storage(
                "the replica's differences do not fit before the new slot's start",
            ));
        }
        db.inner.apply_replicated(changes, first)?;
    }
    tx.commit().await.map_err(|e| pg_error(&e))
}

/// Applies one committed transaction to the replica; returns its sync tokens, its first
/// number and its rows for the shared history (numbered as the replica numbered them).
async fn apply(db: &Database, batch: &CommitBatch) -> Result<(Vec<Vec<u8>>, u64, Vec<Archived>)> {
    let base = position(batch.commit_lsn.0)?;
    let mut tokens = Vec::new();
    let mut group = Vec::new();
    let mut archived = Vec::new();
    let mut first = base;
    let mut last: Option<(Arc<crate::db::TableState>, Arc<str>)> = None;
    for (i, record) in batch.changes.iter().enumerate() {
        let pos = base + i as u64;
        match record {
            Record::Change(c) => {
                if i >= MAX_COMMIT_CHANGES {
                    return Err(Error::storage(format!(
                        "a commit holds more than {MAX_COMMIT_CHANGES} changes"
                    )));
                }
                if group.is_empty() {
                    first = pos;
                }
                // A commit's changes are mostly of one table: its state and name are
                // looked up and made once, not per change.
                let (table, name) = match &last {
                    Some((t, name)) if **name == *c.table => (t.clone(), name.clone()),
                    _ => {
                        let found = (
                            db.table_state(&c.table)?,
                            Arc::<str>::from(c.table.as_str()),
                        );
                        last = Some(found.clone());
                        found
                    }
                };
                archived.push(Archived {
                    pos,
                    commit: first,
                    table: name,
                    kind: Kind::Change,
                    key: c.key.clone(),
                    old: c.old.clone(),
                    new: c.new.clone(),
                });
                group.push((table, c.key.clone(), c.old.clone(), c.new.clone()));
            }
            Record::Ddl(d) => {
                // A table made or dropped here is another table state from now on.
                last = None;
                if !group.is_empty() {
                    db.inner
                        .apply_replicated(std::mem::take(&mut group), first)?;
                }
                let (table, kind) = match d {
                    DdlRecord::TableCreated { table, .. } => (table, Kind::TableCreated),
                    DdlRecord::TableDropped { table } => (table, Kind::TableDropped),
                    DdlRecord::IndexCreated { table, .. } => (table, Kind::IndexCreated),
                    DdlRecord::IndexDropped { table, .. } => (table, Kind::IndexDropped),
                };
                archived.push(Archived {
                    pos,
                    commit: pos,
                    table: Arc::from(table.as_str()),
                    kind,
                    key: Vec::new(),
                    old: None,
                    new: None,
                });
                // The DDL's own number, as the history has it: a table created here was
                // created after change `pos - 1` (a cursor there was taken before it), and a
                // position taken after it is `pos`.
                db.inner.advance_seq(pos.saturating_sub(1));
                apply_ddl(db, d).await?;
                db.inner.advance_seq(pos);
            }
            Record::Sync(token) => tokens.push(token.clone()),
        }
    }
    if !group.is_empty() {
        db.inner.apply_replicated(group, first)?;
    }
    Ok((tokens, base, archived))
}

async fn apply_ddl(db: &Database, ddl: &DdlRecord) -> Result<()> {
    match ddl {
        DdlRecord::TableCreated { table, primary_key } => {
            db.create_table_local(table, primary_key).await
        }
        DdlRecord::TableDropped { table } => db.drop_table_local(table).await,
        DdlRecord::IndexCreated { table, index, spec } => {
            // A build that fails here (a document the index cannot hold) fails in every
            // process alike: the index is absent, and the process that created it reports
            // the error and drops it from the catalog. The replica goes on.
            if let Err(e) = db.create_index_local(table, index, spec.clone()).await {
                tracing::warn!("index `{index}` of `{table}` could not be built: {e}");
            }
            Ok(())
        }
        // Absent where its build failed (see above).
        DdlRecord::IndexDropped { table, index } => match db.drop_index_local(table, index).await {
            Err(Error::NoSuchIndex { .. }) => Ok(()),
            other => other,
        },
    }
}
