//! The PostgreSQL backend: a [`Database`] whose database of record is a shared PostgreSQL
//! database, with every app process's reads and feeds following every process's commits.
//!
//! # How it works
//!
//! Each process keeps a **replica**: its own store (an in-memory database by default, see
//! [`Connect::replica_in_memory`]) holding the shared database's documents and indexes as of
//! the last commit it has applied. Its
//! [pump](super::pump) learns of every commit, in PostgreSQL's commit order, from a temporary
//! logical replication slot, and applies each one to the replica as one local commit, which
//! the feed router publishes exactly as it publishes an embedded commit. Every read (queries,
//! a feed's initial rows, top-N refills, join lookups) is a read of the replica, at an exact
//! commit position: so every feed guarantee of the embedded store holds here as is (one
//! commit order, no gap or duplicate between initial rows and changes, no state that was in
//! no committed result), in every process.
//!
//! **Start.** The slot is created with an exported snapshot; the replica is loaded in a
//! transaction that reads at that snapshot, then replication starts at the slot's consistent
//! point: every commit is either in the loaded rows or in the stream, never both.
//!
//! **Writes.** A write is staged against the replica (conflict policies, patches, closures,
//! exactly as on the embedded store) and sent to the `commit` function
//! (the `schema` module), which locks the rows and commits only if each is still what
//! was staged against; else the replica catches up ([`Database::sync`]) and the write is
//! staged again. So each write is decided against the current row, across processes. A
//! closure (`Patch::with`, `replace_with`, `conflict_with`) may therefore run more than once.
//! Writes that select their rows when they commit (by query, cascades, `require_empty`) hold
//! their tables' advisory locks exclusively in one transaction, catch the replica up, select
//! and commit. A write returns once the replica shows it: a process reads its own writes.
//!
//! **Positions.** A change's number is its commit's LSN × 4,096 plus its place in the commit
//! (a commit holds at most 4,096 changes), the same in every process, so a [`Cursor`] taken
//! in one process resumes in any process: from its replica's own change log when that
//! reaches back to the cursor, else from the shared history in PostgreSQL, which one
//! process at a time (the archiver) writes (`archive.rs`).
//!
//! **A lost replication connection** (a network blip, a walsender ended) is bridged: a
//! new pump, and the commits between the last one applied and its start applied from the
//! shared history, as they were committed (`replica.rs`), when another process archives.
//! When the history cannot (no other process archives; a table or index created or dropped
//! in the gap; the server restarted, which ends every process's stream and archiver at
//! once), every feed of the process ends with `FeedAborted` and the replica is reloaded
//! from a new snapshot (its differences applied as one commit), and the handle goes on.
//!
//! **Group commit.** Single-table writes of concurrent tasks go to PostgreSQL together, as
//! one transaction (`group_commit.rs`), each with its own outcome.
//!
//! **Closing.** [`Database::close`] ends the process's feeds and replication stream, waits
//! (at most 2 s) for the archiver's last flush and the writes already on their way, then ends
//! every connection it holds: a closed database keeps no session on the server, though the
//! program may keep its handle. Dropping the last handle does the same without the waits.
//!
//! **Stats.** [`Database::stats`] has a row `{"type": "postgres"}`: the replication slot,
//! the replica's position (`position`) and how far the server's WAL is ahead of it
//! (`lag_bytes`), PostgreSQL transactions this process committed (`commits`: a group
//! commit is one) and writes staged again (`restaged`), whether
//! this process archives (`archiving`), the history's end as it last saw it
//! (`archived_upto`), and, archiving, the applied changes not yet in the history and how
//! long the oldest has waited (`archive_lag_changes`, `archive_lag_ms`), whether the
//! replica follows the database (`following`: false while a lost replication connection is
//! being recovered or the server is unreachable, and once it stopped), and how many writes
//! wait for it to catch up (`sync_waiters`).
//!
//! [`Cursor`]: crate::Cursor

use super::archive::Archive;
use super::group_commit::{GroupCommit, Row, TableCommit};
use super::pump::{Pump, PumpError, PumpHandle};
use super::record::{encode_change, DdlRecord, Doc, DDL_PREFIX, SYNC_PREFIX};
use super::schema::{self, docs_relation, lock_name};
use crate::db::backend::{Backend, BoxFuture, Ddl, History, Job, SelectOps};
use crate::db::write::{BackendStaging, Commit, WriteOp};
use crate::db::{ChangeLogRetention, Config, Database, Durability, TableState, WriteResult};
use crate::{Error, Result};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// How many bits of a change number hold its place in its commit.
pub(super) const OP_BITS: u32 = 12;
/// The most changes one commit holds on PostgreSQL.
pub const MAX_COMMIT_CHANGES: usize = 1 << OP_BITS;
/// How many times a write is staged again when the rows it read changed meanwhile, before it
/// takes its table's lock instead (then it cannot be overtaken).
const RESTAGES_BEFORE_LOCKING: usize = 8;

/// How many times a write that selects its rows at commit takes its tables' locks again
/// after PostgreSQL picked its wait as a deadlock's victim (see `commit_locked`).
const LOCK_DEADLOCK_RETRIES: usize = 5;
/// How many applied transaction ids are remembered for writers that ask after the fact, and
/// for how long.
const RECENT_XIDS: usize = 1 << 16;
const RECENT_FOR: Duration = Duration::from_secs(10);
/// How long `close` waits for the archiver's last flush and the group commits in flight.
const CLOSE_FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How long a writer waits for its commit to be applied before it asks with a sync token.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// How to connect a [`Database`] to PostgreSQL.
///
/// ```no_run
/// # async fn f() -> remodel::Result<()> {
/// let db = remodel::postgres::Connect::new("postgresql://app@db.internal/app")
///     .schema("remodel")
///     .connections(8)
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Connect {
    url: String,
    schema: String,
    connections: usize,
    feed_queue_size: usize,
    retention: ChangeLogRetention,
    durability: Durability,
    replica_in_memory: bool,
    reconnect_for: Duration,
}

impl Connect {
    /// Connects to the database at `url` (a `postgresql://` URL or a `key=value` string).
    pub fn new(url: impl Into<String>) -> Self {
        Connect {
            url: url.into(),
            schema: "remodel".into(),
            connections: 4,
            feed_queue_size: 100_000,
            retention: ChangeLogRetention::default(),
            durability: Durability::Hard,
            replica_in_memory: true,
            reconnect_for: Duration::from_secs(30),
        }
    }

    /// The schema Remodel keeps its tables in (default `remodel`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How many connections writes use (default 4, at least 1), besides the replication
    /// connection and those of writes that select their rows at commit.
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// The default queue size of changefeeds (see [`Config::feed_queue_size`]).
    pub fn feed_queue_size(mut self, n: usize) -> Self {
        self.feed_queue_size = n.max(1);
        self
    }

    /// The durability of writes that do not choose one (default [`Durability::Hard`]): hard
    /// writes commit synchronously (`synchronous_commit = on`), soft ones asynchronously
    /// (`off`: the server flushes them within `wal_writer_delay`, and only then does any
    /// process, the writer's included, see them; a write returns once its process sees it,
    /// so on PostgreSQL a soft write saves the server a flush, not the writer time).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How much history this process keeps for feeds that resume from a cursor.
    pub fn retention(mut self, retention: ChangeLogRetention) -> Self {
        self.retention = retention;
        self
    }

    /// Where this process keeps its replica of the shared database: in memory (the default,
    /// [`Config::in_memory`]), or, with `false`, in a temporary sled store
    /// ([`Config::temporary`]), slower but bounded by the disk rather than by the process's
    /// memory, for a database larger than the memory an app process may use.
    pub fn replica_in_memory(mut self, in_memory: bool) -> Self {
        self.replica_in_memory = in_memory;
        self
    }

    /// How long a lost replication connection is tried again before this process gives up
    /// bridging the gap (default 30 s, at least 100 ms). Within it, a server that comes back
    /// (a restart, a failover) finds the process following on where it was, its feeds
    /// uninterrupted when the shared history bridges what it missed. After it, every feed
    /// ends with an error and writes fail until the server answers again; the replica is
    /// then reloaded and the same handle works again (feeds opened anew, with
    /// `include_initial`, see the state).
    pub fn reconnect_for(mut self, window: Duration) -> Self {
        self.reconnect_for = window.max(Duration::from_millis(100));
        self
    }

    /// Connects, creates Remodel's schema if missing, loads this process's replica and starts
    /// following the database.
    pub async fn open(self) -> Result<Database> {
        PgBackend::open(self).await
    }
}

impl Database {
    /// Connects to a shared PostgreSQL database (cargo feature `postgres`): the same tables,
    /// queries, feeds and models as an embedded database, with every process's feeds seeing
    /// every process's commits. See [`Connect`] for the options and `postgres::backend` for
    /// how it works.
    pub async fn connect(url: &str) -> Result<Database> {
        Connect::new(url).open().await
    }
}

pub(super) fn pg_error(e: &tokio_postgres::Error) -> Error {
    Error::storage(format!("postgresql: {}", super::error_text(e)))
}

pub(super) fn pump_error(e: &PumpError) -> Error {
    Error::storage(format!("postgresql replication: {e}"))
}

/// A pool's error: `Closed` once the database was closed (its pool with it).
pub(super) fn pool_error(e: &deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Closed => Error::Closed,
        e => Error::storage(format!("postgresql pool: {e}")),
    }
}

/// A commit's error: the table gone, or the server's message.
fn commit_error(e: &tokio_postgres::Error, table: &str) -> Error {
    match e.code().map(|c| c.code()) {
        Some("42P01") => Error::NoSuchTable(table.to_string()),
        _ => pg_error(e),
    }
}

/// Writes `token` as a sync record, in a transaction of its own.
async fn emit_token(client: &Client, token: &[u8]) -> Result<()> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1::text, $2::bytea)",
            &[&SYNC_PREFIX, &token],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    Ok(())
}

/// TCP keepalives that notice a server gone without a word (a network cut, a host that
/// died) within about half a minute, and a limit on how long sent data may go unacknowledged:
/// with the defaults (keepalives after 2 hours, no limit), a commit connection cut off that
/// way would hold every write queued behind it for hours. Settings the connection string
/// gives are kept. (Nothing changes over a Unix socket.)
fn probe_dead_peers(config: &mut tokio_postgres::Config) {
    const DEFAULT_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
    if config.get_keepalives() && config.get_keepalives_idle() == DEFAULT_IDLE {
        config
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(30));
    }
}

/// Why a commit statement failed.
pub(super) struct CommitFailed {
    pub error: Error,
    pub how: Failure,
}

/// How a commit statement failed, which says what may be tried again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Failure {
    /// Nothing was committed, and the connection or the server is not available (none could
    /// be had, or the server says it is shutting down, out of resources or cut off):
    /// sending the writes again at once would meet the same.
    Unavailable,
    /// The server refused the statement itself (a row, a key, a document): nothing was
    /// committed.
    Refused,
    /// The connection failed after it was sent: it may have committed.
    Unknown,
}

impl Failure {
    fn of(e: &tokio_postgres::Error) -> Failure {
        match e.code().map(|c| c.code()) {
            // Classes 08 (connection), 53 (resources), 57 (operator intervention: a
            // shutdown, a terminated backend) and 58 (system): not the statement's fault.
            Some(code) if ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c)) => {
                Failure::Unavailable
            }
            Some(_) => Failure::Refused,
            None => Failure::Unknown,
        }
    }
}

/// Whether PostgreSQL ended the statement as a deadlock's victim.
fn is_deadlock(e: &tokio_postgres::Error) -> bool {
    e.code().map(|c| c.code()) == Some("40P01")
}

/// Whether the error means "staged against a stale row: stage again".
fn is_restage(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code().map(|c| c.code()),
        Some("23505" | "40P01" | "40001")
    )
}

/// What the pump has applied, and who waits for what.
#[derive(Default)]
struct Applied {
    recent: HashSet<u32>,
    /// When each remembered id was applied: ids are 32-bit and wrap, so one is remembered
    /// only for a while (a writer asks within moments of its commit).
    order: VecDeque<(u32, Instant)>,
    xid_waiters: HashMap<u32, Vec<oneshot::Sender<()>>>,
    token_waiters: HashMap<Vec<u8>, oneshot::Sender<()>>,
    /// Why the replica stopped following the database (then nothing more is applied).
    failed: Option<String>,
    /// Why the replica does not follow the database for now: the server was unreachable for
    /// longer than the reconnect window. Cleared once the replica is reloaded.
    down: Option<String>,
    /// It stopped because the database was closed (or dropped).
    closed: bool,
}

impl Applied {
    /// The error of a wait that cannot end: the replica no longer follows the database.
    fn error(&self) -> Option<Error> {
        if self.closed {
            return Some(Error::Closed);
        }
        if let Some(why) = &self.failed {
            return Some(Error::storage(format!(
                "no longer following PostgreSQL: {why}"
            )));
        }
        self.down.as_ref().map(|why| {
            Error::storage(format!(
                "PostgreSQL is unreachable ({why}); this process reloads its replica once the \
                 server answers again"
            ))
        })
    }

    /// Ends every wait (their senders are dropped: they see [`Applied::error`]).
    fn end(&mut self, why: String, closed: bool) {
        self.failed.get_or_insert(why);
        self.closed |= closed;
        self.xid_waiters.clear();
        self.token_waiters.clear();
    }
}

/// A row of a commit: table, key, document staged against (JSON text), new document.
type CommitRow<'a> = (
    &'a Arc<TableState>,
    &'a [u8],
    Option<String>,
    Option<String>,
);

/// The rows of `staged`'s changes as JSON text, and their change records in commit order.
fn encode(staged: &BackendStaging) -> Result<(Vec<CommitRow<'_>>, Vec<Vec<u8>>)> {
    let changes = &staged.changes;
    if changes.len() > MAX_COMMIT_CHANGES {
        return Err(Error::TooLarge {
            what: "changes in one commit on PostgreSQL".into(),
            size: changes.len(),
            limit: MAX_COMMIT_CHANGES,
        });
    }
    let mut rows = Vec::with_capacity(changes.len());
    let mut msgs = Vec::with_capacity(changes.len());
    for (table, key, old, new) in changes {
        let (old, new) = (json_text(old)?, json_text(new)?);
        let mut body = Vec::new();
        encode_change(
            &mut body,
            &table.name,
            key,
            old.as_deref().map(|s| Doc::Json(s.as_bytes())),
            new.as_deref().map(|s| Doc::Json(s.as_bytes())),
        );
        msgs.push(body);
        rows.push((table, key.as_slice(), old, new));
    }
    Ok((rows, msgs))
}

fn json_text(doc: &Option<Arc<Value>>) -> Result<Option<String>> {
    Ok(doc.as_deref().map(serde_json::to_string).transpose()?)
}

/// `staged` as a commit of one table (its changes, and the rows it only checks), when all
/// of them are of one table; `None` when they are of several.
fn one_table(staged: &BackendStaging, hard: bool) -> Result<Option<TableCommit>> {
    let first = staged
        .changes
        .first()
        .map(|c| &c.0)
        .or(staged.checks.first().map(|c| &c.0));
    let Some((table, primary_key)) = first.map(|t| (t.name.clone(), t.primary_key.clone())) else {
        return Ok(None);
    };
    let one = staged.changes.iter().all(|c| c.0.name == table)
        && staged.checks.iter().all(|c| c.0.name == table);
    if !one {
        return Ok(None);
    }
    let (written, msgs) = encode(staged)?;
    let mut rows = Vec::with_capacity(written.len() + staged.checks.len());
    for (_, key, old, new) in written {
        rows.push(Row {
            key: key.to_vec(),
            old,
            new,
            write: true,
        });
    }
    for (_, key, old) in &staged.checks {
        let old = json_text(old)?;
        rows.push(Row {
            key: key.clone(),
            new: old.clone(),
            old,
            write: false,
        });
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Some(TableCommit {
        table,
        primary_key,
        rows,
        msgs,
        hard,
    }))
}

/// One connection for commits, with its prepared statements.
struct Conn {
    client: Client,
    /// Statements prepared on this connection: per table its single-table commit
    /// ([`schema::single_table_commit_sql`]), and under [`FUNCTION_CALL`] the commit
    /// function's call.
    prepared: Mutex<HashMap<String, Statement>>,
}

/// The key of the commit function's call among a connection's prepared statements (a table
/// name is never empty).
const FUNCTION_CALL: &str = "";

impl Conn {
    fn new(client: Client) -> Conn {
        Conn {
            client,
            prepared: Mutex::default(),
        }
    }

    /// The statement prepared under `key`, preparing `sql()` the first time.
    async fn prepared(
        &self,
        key: &str,
        sql: impl FnOnce() -> String,
    ) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.prepared.lock().get(key).cloned() {
            return Ok(s);
        }
        let s = self.client.prepare(&sql()).await?;
        self.prepared.lock().insert(key.to_string(), s.clone());
        Ok(s)
    }
}

pub(crate) struct PgBackend {
    pub(super) schema: String,
    /// Replaced by a new connection when one is found closed (a server restart, an idle
    /// timeout, a proxy): writes pipeline on these.
    conns: Vec<Mutex<Arc<Conn>>>,
    /// For new connections.
    pub(super) config: tokio_postgres::Config,
    /// Sync tokens only: never behind a statement that waits for a lock (a write waiting
    /// for a table's lock must not hold up the sync its holder waits for).
    sync_client: Mutex<Arc<Client>>,
    next: AtomicUsize,
    pub(super) pool: deadpool_postgres::Pool,
    applied: Mutex<Applied>,
    token_prefix: [u8; 16],
    tokens: AtomicU64,
    /// The pump's handle (a new pump's after a reconnection).
    pub(super) pump: Mutex<PumpHandle>,
    /// Replication connections lost and bridged from the shared history.
    pub(super) reconnects: AtomicU64,
    stop: watch::Sender<bool>,
    /// Ends the commit and sync connections (sent by `close` once the last commits and the
    /// archiver's flush are done, and on drop): see [`super::connect_until`].
    hang_up: watch::Sender<bool>,
    restaged: AtomicU64,
    commits: AtomicU64,
    /// Single-table writes waiting to be committed in a group.
    pub(super) groups: GroupCommit,
    /// The shared history: this process's part in writing it (see `archive.rs`).
    pub(super) archive: Archive,
    /// The archiver task (awaited by `close`, for its last flush).
    archiver: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// How long a lost replication connection is tried again ([`Connect::reconnect_for`]).
    pub(super) reconnect_for: Duration,
    /// The database's identity, shared by every process ([`Database::identity`]).
    identity: u64,
    /// A lost replication connection is being recovered (reconnected, bridged, reloaded).
    pub(super) recovering: AtomicBool,
    me: Weak<PgBackend>,
}

impl PgBackend {
    async fn open(options: Connect) -> Result<Database> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| Error::storage(format!("not a PostgreSQL connection string: {e}")))?;
        probe_dead_peers(&mut config);
        check_schema_name(&options.schema)?;
        let identity = set_up_schema(&config, &options.schema).await?;
        let (hang_up, _) = watch::channel(false);
        let mut conns = Vec::new();
        for _ in 0..options.connections {
            let client = super::connect_until(&config, hang_up.subscribe())
                .await
                .map_err(|e| pg_error(&e))?;
            conns.push(Mutex::new(Arc::new(Conn::new(client))));
        }
        // `Clean` recycling ends a returned connection's session state, advisory locks
        // included: a write cancelled while holding them does not keep them.
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Clean,
            },
        );
        let sync_client = super::connect_until(&config, hang_up.subscribe())
            .await
            .map_err(|e| pg_error(&e))?;
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(options.connections.max(2))
            .build()
            .map_err(|e| Error::storage(format!("postgresql pool: {e}")))?;

        let (db, pump) = loaded_replica(&options, &config).await?;
        let (stop, stop_rx) = watch::channel(false);
        let backend = Arc::new_cyclic(|me| PgBackend {
            schema: options.schema,
            conns,
            sync_client: Mutex::new(Arc::new(sync_client)),
            config: config.clone(),
            next: AtomicUsize::new(0),
            pool,
            applied: Mutex::default(),
            token_prefix: *uuid::Uuid::new_v4().as_bytes(),
            tokens: AtomicU64::new(0),
            pump: Mutex::new(pump.handle()),
            reconnects: AtomicU64::new(0),
            stop,
            hang_up,
            restaged: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            groups: GroupCommit::default(),
            archive: Archive::new(db.inner.with_commit_lock(|last| last), options.retention),
            archiver: Mutex::new(None),
            reconnect_for: options.reconnect_for,
            identity,
            recovering: AtomicBool::new(false),
            me: me.clone(),
        });
        db.set_backend(backend.clone());
        let archiver = tokio::spawn(super::archive::run(
            Arc::downgrade(&backend),
            config.clone(),
            backend.schema.clone(),
            stop_rx.clone(),
        ));
        *backend.archiver.lock() = Some(archiver);
        tokio::spawn(super::replica::follow(
            pump,
            Arc::downgrade(&db.inner),
            Arc::downgrade(&backend),
            stop_rx,
        ));
        Ok(db)
    }

    /// A connection for a commit (round robin, passing over those a group commit leader
    /// commits on while another is free: a statement queued behind a leader's group would
    /// wait for it); a closed one is replaced first.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        let free = (0..n)
            .map(|k| start.wrapping_add(k))
            .find(|&i| !self.groups.leads_on(i % n));
        self.conn_at(free.unwrap_or(start)).await
    }

    /// Connection `n` (modulo their number); a closed one is replaced first. Each group
    /// commit leader commits on its own (see `group_commit.rs`).
    async fn conn_at(&self, n: usize) -> Result<Arc<Conn>> {
        let slot = &self.conns[n % self.conns.len()];
        let conn = slot.lock().clone();
        if !conn.client.is_closed() {
            return Ok(conn);
        }
        let client = self.connect_again().await?;
        let fresh = Arc::new(Conn::new(client));
        *slot.lock() = fresh.clone();
        Ok(fresh)
    }

    /// The connection for sync tokens; a closed one is replaced first.
    async fn sync_client(&self) -> Result<Arc<Client>> {
        let client = self.sync_client.lock().clone();
        if !client.is_closed() {
            return Ok(client);
        }
        let fresh = Arc::new(self.connect_again().await?);
        *self.sync_client.lock() = fresh.clone();
        Ok(fresh)
    }

    /// Whether no statement is on its way on a commit, sync or pool connection, and no write
    /// waits for a group: what `close` waits for before it ends them (a statement cut off
    /// may have committed, and its writer would not know).
    fn nothing_in_flight(&self) -> bool {
        let pool = self.pool.status();
        self.groups.is_idle()
            // Each connection in use is a clone of its slot's.
            && self.conns.iter().all(|c| Arc::strong_count(&c.lock()) == 1)
            && Arc::strong_count(&self.sync_client.lock()) == 1
            && pool.size == pool.available
    }

    /// A connection in place of a closed commit or sync connection; none once the database
    /// is closed (its connections were ended on purpose).
    async fn connect_again(&self) -> Result<Client> {
        if *self.hang_up.borrow() {
            return Err(Error::Closed);
        }
        super::connect_until(&self.config, self.hang_up.subscribe())
            .await
            .map_err(|e| pg_error(&e))
    }

    pub(super) fn failed(&self) -> Option<Error> {
        self.applied.lock().error()
    }

    /// Waits until the pump has applied the transaction `xid` (its low 32 bits).
    async fn wait_applied(&self, xid: i64) -> Result<()> {
        let xid = xid as u32;
        let rx = {
            let mut a = self.applied.lock();
            if a.recent.contains(&xid) {
                return Ok(());
            }
            if let Some(e) = a.error() {
                return Err(e);
            }
            let (tx, rx) = oneshot::channel();
            a.xid_waiters.entry(xid).or_default().push(tx);
            rx
        };
        match tokio::time::timeout(APPLY_WAIT, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => match self.failed() {
                Some(e) => Err(e),
                // Its commit fell in a gap bridged from the shared history: a sync token
                // is exact.
                None => self.sync_now().await,
            },
            // Not seen in time (remembered ids are few, the writer slow): a sync token is
            // exact, whatever happened to this id.
            Err(_) => {
                self.forget_closed_waiters(xid);
                self.sync_now().await
            }
        }
    }

    /// Drops the waiters of `xid` that stopped waiting.
    fn forget_closed_waiters(&self, xid: u32) {
        let mut a = self.applied.lock();
        if let Some(waiters) = a.xid_waiters.get_mut(&xid) {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                a.xid_waiters.remove(&xid);
            }
        }
    }

    /// A sync token no other writes or process use.
    fn new_token(&self) -> Vec<u8> {
        let mut token = self.token_prefix.to_vec();
        token.extend_from_slice(&self.tokens.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        token
    }

    /// Writes a sync token nobody waits for: a commit after every one so far, which the
    /// archiving process archives, so that the shared history reaches past a new slot's
    /// start even when nothing else is written (see `replica::reconnect`).
    pub(super) async fn emit_barrier(&self) -> Result<()> {
        let client = self.sync_client().await?;
        emit_token(&client, &self.new_token()).await
    }

    /// Writes a sync token in a transaction of its own and waits for the pump to apply it:
    /// then every commit before it is applied.
    async fn sync_now(&self) -> Result<()> {
        let client = self.sync_client().await?;
        let token = self.new_token();
        let rx = {
            let mut a = self.applied.lock();
            if let Some(e) = a.error() {
                return Err(e);
            }
            let (tx, rx) = oneshot::channel();
            a.token_waiters.insert(token.clone(), tx);
            rx
        };
        // Whatever ends the wait (the token applied, an error, the caller dropping this
        // future before the token was even sent) takes the waiter out: a token that never
        // reaches the server is never applied, and its waiter would stay for good.
        let _waiting = TokenWait {
            applied: &self.applied,
            token: &token,
        };
        emit_token(&client, &token).await?;
        match rx.await {
            Ok(()) => Ok(()),
            Err(_) => match self.failed() {
                Some(e) => Err(e),
                // The token fell in a gap bridged from the shared history after the
                // replication connection was lost (the history keeps no tokens): another.
                None => Box::pin(self.sync_now()).await,
            },
        }
    }

    /// Commits staged changes of any tables on `client` (an open transaction or a
    /// connection in autocommit) with the commit function. `Ok(None)`: a row is not what it
    /// was staged against; `Ok(Some(0))`: nothing to write.
    async fn commit_staged(
        &self,
        client: &impl tokio_postgres::GenericClient,
        staged: &BackendStaging,
        hard: bool,
    ) -> Result<Option<i64>> {
        let (rows, msgs) = encode(staged)?;
        let Some(table) = rows.first().map(|r| r.0.name.clone()) else {
            return Ok(Some(0));
        };
        let mut rows: Vec<_> = rows
            .into_iter()
            .map(|(t, k, old, new)| (schema::relation_name(&t.name), k, old, new, t))
            .collect();
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let tbls: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|r| r.1).collect();
        let olds: Vec<Option<&str>> = rows.iter().map(|r| r.2.as_deref()).collect();
        let news: Vec<Option<&str>> = rows.iter().map(|r| r.3.as_deref()).collect();
        let names: Vec<&str> = rows.iter().map(|r| r.4.name.as_str()).collect();
        let pks: Vec<&str> = rows.iter().map(|r| r.4.primary_key.as_str()).collect();
        let soft = !hard;
        let params: [&(dyn ToSql + Sync); 8] =
            [&tbls, &keys, &olds, &news, &msgs, &soft, &names, &pks];
        let sql = schema::commit_call_sql(&self.schema);
        match client.query_one(sql.as_str(), &params).await {
            Ok(row) => Ok(self.committed(row.get(0))),
            Err(e) if is_restage(&e) => Ok(None),
            Err(e) => Err(commit_error(&e, &table)),
        }
    }

    /// Commits one table's rows with the table's prepared statement, on commit connection
    /// `conn` (see [`schema::single_table_commit_sql`]).
    pub(super) async fn commit_table(
        &self,
        conn: usize,
        commit: &TableCommit,
    ) -> Result<Option<i64>> {
        let rows: Vec<&Row> = commit.rows.iter().collect();
        let msgs: Vec<&[u8]> = commit.msgs.iter().map(Vec::as_slice).collect();
        self.commit_rows(
            conn,
            &commit.table,
            &commit.primary_key,
            commit.hard,
            &rows,
            &msgs,
        )
        .await
        .map_err(|failed| failed.error)
    }

    /// [`PgBackend::commit_table`] of rows and records gathered by reference (rows sorted
    /// by key): a group commit's, with nothing copied.
    pub(super) async fn commit_rows(
        &self,
        conn: usize,
        table: &str,
        primary_key: &str,
        hard: bool,
        rows: &[&Row],
        msgs: &[&[u8]],
    ) -> std::result::Result<Option<i64>, CommitFailed> {
        let conn = self.conn_at(conn).await.map_err(|error| CommitFailed {
            error,
            how: Failure::Unavailable,
        })?;
        if rows.iter().any(|r| !r.write && r.old.is_none()) {
            return self
                .commit_rows_by_function(&conn, (table, primary_key), hard, rows, msgs)
                .await;
        }
        if !msgs.is_empty() && rows.iter().all(|r| r.is_insert()) {
            return self
                .insert_rows(&conn, (table, primary_key), hard, rows, msgs)
                .await;
        }
        let keys: Vec<&[u8]> = rows.iter().map(|r| r.key.as_slice()).collect();
        let olds: Vec<Option<&str>> = rows.iter().map(|r| r.old.as_deref()).collect();
        let news: Vec<Option<&str>> = rows.iter().map(|r| r.new.as_deref()).collect();
        let writes: Vec<bool> = rows.iter().map(|r| r.write).collect();
        let (soft, lock) = (!hard, lock_name(&self.schema, table));
        let sql = || schema::single_table_commit_sql(&self.schema, table);
        let params: [&(dyn ToSql + Sync); 9] = [
            &keys,
            &olds,
            &news,
            &msgs,
            &soft,
            &lock,
            &writes,
            &table,
            &primary_key,
        ];
        self.run_commit_statement(&conn, table, table, sql, &params)
            .await
    }

    /// [`PgBackend::commit_rows`] of rows that are all inserts, with the insert-only
    /// statement ([`schema::insert_commit_sql`]): the most common commit, and the cheapest.
    async fn insert_rows(
        &self,
        conn: &Conn,
        (table, primary_key): (&str, &str),
        hard: bool,
        rows: &[&Row],
        msgs: &[&[u8]],
    ) -> std::result::Result<Option<i64>, CommitFailed> {
        let keys: Vec<&[u8]> = rows.iter().map(|r| r.key.as_slice()).collect();
        let news: Vec<Option<&str>> = rows.iter().map(|r| r.new.as_deref()).collect();
        let (soft, lock) = (!hard, lock_name(&self.schema, table));
        let sql = || schema::insert_commit_sql(&self.schema, table);
        let params: [&(dyn ToSql + Sync); 7] =
            [&keys, &news, &soft, &lock, &msgs, &table, &primary_key];
        // Table names are letters, digits and `_`: no table's own statement key has a space.
        let key = format!("insert {table}");
        self.run_commit_statement(conn, table, &key, sql, &params)
            .await
    }

    /// Runs a single-table commit statement, prepared on `conn` under `key` (from `sql()`
    /// the first time): the commit's transaction id, or `None` when a row was not what it
    /// was staged against (stage again).
    async fn run_commit_statement(
        &self,
        conn: &Conn,
        table: &str,
        key: &str,
        sql: impl FnOnce() -> String,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Option<i64>, CommitFailed> {
        let failed = |e: tokio_postgres::Error| CommitFailed {
            error: commit_error(&e, table),
            how: Failure::of(&e),
        };
        let statement = conn.prepared(key, sql).await.map_err(failed)?;
        match conn.client.query_one(&statement, params).await {
            Ok(row) => Ok(self.committed(row.get(0))),
            Err(e) if is_restage(&e) => Ok(None),
            Err(e) => {
                // A table dropped and made again: prepare anew next time.
                conn.prepared.lock().remove(key);
                Err(failed(e))
            }
        }
    }

    /// [`PgBackend::commit_rows`] through the commit function, for rows that include a key
    /// only checked to be absent. The single statement reads every row in the snapshot it
    /// took when it began, before it waited for the table's lock: a row another process
    /// inserted while this one waited is invisible to it (`FOR UPDATE` follows only rows it
    /// sees), so "still absent" would be decided against a row older than the commit. (A
    /// row written here is safe: an insert meets the unique key, an update or delete the row's
    /// newest version.) The function's statements each take a new snapshot, after the lock.
    async fn commit_rows_by_function(
        &self,
        conn: &Conn,
        (table, primary_key): (&str, &str),
        hard: bool,
        rows: &[&Row],
        msgs: &[&[u8]],
    ) -> std::result::Result<Option<i64>, CommitFailed> {
        let rel = schema::relation_name(table);
        let tbls: Vec<&str> = rows.iter().map(|_| rel.as_str()).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|r| r.key.as_slice()).collect();
        let olds: Vec<Option<&str>> = rows.iter().map(|r| r.old.as_deref()).collect();
        // A checked row is written as it was (the function writes every row it is given).
        let news: Vec<Option<&str>> = rows.iter().map(|r| r.new.as_deref()).collect();
        let names: Vec<&str> = rows.iter().map(|_| table).collect();
        let pks: Vec<&str> = rows.iter().map(|_| primary_key).collect();
        let soft = !hard;
        let params: [&(dyn ToSql + Sync); 8] =
            [&tbls, &keys, &olds, &news, &msgs, &soft, &names, &pks];
        let failed = |e: tokio_postgres::Error| CommitFailed {
            error: commit_error(&e, table),
            how: Failure::of(&e),
        };
        let statement = conn
            .prepared(FUNCTION_CALL, || schema::commit_call_sql(&self.schema))
            .await
            .map_err(failed)?;
        match conn.client.query_one(&statement, &params).await {
            // Only checked rows: no change record, nothing for the replica to apply (the
            // transaction reaches no pump), as the single statement's 0 says.
            Ok(row) if msgs.is_empty() => Ok((row.get::<_, i64>(0) >= 0).then_some(0)),
            Ok(row) => Ok(self.committed(row.get(0))),
            Err(e) if is_restage(&e) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    /// What a commit statement returned: the transaction id (counted when it wrote), or
    /// `None` (-1) when a row was not what it was staged against.
    fn committed(&self, xid: i64) -> Option<i64> {
        if xid > 0 {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        (xid >= 0).then_some(xid)
    }

    /// The number of commit connections (and of group commit leaders).
    pub(super) fn connections(&self) -> usize {
        self.conns.len()
    }

    /// This backend, shared (for the tasks it spawns); `None` once it is being dropped.
    pub(super) fn me(&self) -> Option<Arc<PgBackend>> {
        self.me.upgrade()
    }

    async fn commit_keys(
        &self,
        db: &Database,
        table: Arc<TableState>,
        ops: Vec<WriteOp>,
        how: Commit,
    ) -> Result<WriteResult> {
        db.check_open()?;
        let mut total = WriteResult::default();
        let mut rest = ops;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(MAX_COMMIT_CHANGES));
            let chunk = std::mem::replace(&mut rest, tail);
            let mut restages = 0;
            let result = loop {
                if let Some(e) = self.failed() {
                    return Err(e);
                }
                if restages == RESTAGES_BEFORE_LOCKING {
                    // A hot row: take the table's lock, as writes that select rows do, and
                    // commit against the caught-up replica (no one else writes meanwhile).
                    let (t, ops) = (table.clone(), chunk.clone());
                    let select: SelectOps =
                        Box::new(move || Ok(ops.into_iter().map(|op| (t.clone(), op)).collect()));
                    let tables = vec![table.name.clone()];
                    break self.commit_locked(db, tables, select, how).await?;
                }
                let mut result = WriteResult::default();
                let ops = chunk.iter().map(|op| (table.clone(), op.clone())).collect();
                let staged = db.inner.stage_for_backend(|| Ok(ops), how, &mut result)?;
                let outcome = match one_table(&staged, how.hard)? {
                    Some(commit) => self.commit_grouped(commit).await?,
                    None => {
                        let conn = self.conn().await?;
                        self.commit_staged(&conn.client, &staged, how.hard).await?
                    }
                };
                match outcome {
                    Some(xid) => {
                        if xid > 0 {
                            self.wait_applied(xid).await?;
                        }
                        break result;
                    }
                    None => {
                        restages += 1;
                        self.restaged.fetch_add(1, Ordering::Relaxed);
                        self.sync_now().await?;
                        // The table it was staged for was dropped meanwhile (perhaps made
                        // again, perhaps with another key): its keys were made for that one.
                        if table.is_dropped() {
                            return Err(Error::NoSuchTable(table.name.clone()));
                        }
                    }
                }
            };
            merge(&mut total, result);
        }
        Ok(total)
    }

    /// A write that selects its rows when it commits: takes its tables' advisory locks
    /// (session-level, on a connection of its own: other processes' commits to them wait),
    /// catches the replica up, selects and stages against it, and commits in chunks of at
    /// most [`MAX_COMMIT_CHANGES`] (one chunk when it is all-or-nothing), then lets go.
    async fn commit_locked(
        &self,
        db: &Database,
        tables: Vec<String>,
        select: SelectOps,
        how: Commit,
    ) -> Result<WriteResult> {
        db.check_open()?;
        self.groups.wait_landed(&tables).await;
        let conn = self.pool.get().await.map_err(|e| pool_error(&e))?;
        // Until the locks are let go below, a cancelled write (its future dropped) cancels
        // its statement and closes this connection instead of returning it to the pool:
        // its session, and every lock it holds or waits for, ends with it.
        let mut held = LockedConnection(Some(conn));
        let Some(client) = held.0.as_ref() else {
            return Err(Error::Unusable("the locked connection was lost".into()));
        };
        let client: &Client = client;
        // PostgreSQL may pick a lock's wait as a deadlock's victim: a drop of the table
        // holds its advisory lock and waits for the relation, while a grouped write holds
        // the relation and waits behind this one. Nothing is held then but the locks
        // already taken: let them go and take them all again.
        let mut victims = 0;
        let locked = loop {
            match self.lock_tables(client, &tables).await {
                Err(e) if is_deadlock(&e) && victims < LOCK_DEADLOCK_RETRIES => {
                    victims += 1;
                    if let Err(e) = client
                        .batch_execute("SELECT pg_advisory_unlock_all()")
                        .await
                    {
                        break Err(pg_error(&e));
                    }
                }
                other => break other.map_err(|e| pg_error(&e)),
            }
        };
        let result = match locked {
            Ok(()) => self.commit_selected(db, client, select, how).await,
            Err(e) => Err(e),
        };
        let unlocked = client
            .batch_execute("SELECT pg_advisory_unlock_all()")
            .await;
        if unlocked.is_ok() {
            held.0.take(); // back to the pool, unlocked
        }
        let result = result?;
        unlocked.map_err(|e| pg_error(&e))?;
        Ok(result)
    }

    /// Takes the advisory locks of `tables`, in order, on `client`'s session.
    async fn lock_tables(
        &self,
        client: &Client,
        tables: &[String],
    ) -> std::result::Result<(), tokio_postgres::Error> {
        for t in tables {
            client
                .execute(
                    "SELECT pg_advisory_lock(hashtextextended($1, 0))",
                    &[&lock_name(&self.schema, t)],
                )
                .await?;
        }
        Ok(())
    }

    async fn commit_selected(
        &self,
        db: &Database,
        client: &Client,
        select: SelectOps,
        how: Commit,
    ) -> Result<WriteResult> {
        // Every commit to these tables before the locks is in the replica after this.
        self.sync_now().await?;
        let mut result = WriteResult::default();
        let staged = db
            .inner
            .stage_for_backend(select, how, &mut result)?
            .changes;
        if how.all_or_nothing && staged.len() > MAX_COMMIT_CHANGES {
            return Err(Error::TooLarge {
                what: "changes in one atomic commit on PostgreSQL".into(),
                size: staged.len(),
                limit: MAX_COMMIT_CHANGES,
            });
        }
        let mut last = None;
        for chunk in staged.chunks(MAX_COMMIT_CHANGES) {
            // Under the tables' locks, against the caught-up replica: nothing to check.
            let chunk = BackendStaging {
                changes: chunk.to_vec(),
                checks: Vec::new(),
            };
            let Some(xid) = self.commit_staged(client, &chunk, how.hard).await? else {
                return Err(Error::storage(
                    "a row of a locked table changed under its lock: a write made outside Remodel?",
                ));
            };
            last = Some(xid);
        }
        if let Some(xid) = last {
            self.wait_applied(xid).await?;
        }
        Ok(result)
    }

    /// Runs DDL, again when PostgreSQL picked it as a deadlock's victim (a drop waits for
    /// the writes to its table, which take the table's relation lock before its advisory
    /// lock: the other order).
    async fn run_ddl(&self, ddl: Ddl) -> Result<()> {
        // Not while the replica does not follow the database: the DDL would commit, and its
        // caller be told it failed.
        if let Some(e) = self.failed() {
            return Err(e);
        }
        let mut tries = 0;
        loop {
            match self.run_ddl_once(ddl.clone()).await {
                Ok(()) => return Ok(()),
                Err(DdlFailure::Deadlock(_)) if tries < 5 => tries += 1,
                Err(DdlFailure::Deadlock(e) | DdlFailure::Error(e)) => return Err(e),
            }
        }
    }

    async fn run_ddl_once(&self, ddl: Ddl) -> std::result::Result<(), DdlFailure> {
        let mut conn = self.pool.get().await.map_err(|e| pool_error(&e))?;
        let tx = conn.transaction().await.map_err(DdlFailure::of)?;
        let (table, record) = match &ddl {
            Ddl::CreateTable { table, primary_key } => (
                table,
                DdlRecord::TableCreated {
                    table: table.clone(),
                    primary_key: primary_key.clone(),
                },
            ),
            Ddl::DropTable { table } => (
                table,
                DdlRecord::TableDropped {
                    table: table.clone(),
                },
            ),
            Ddl::CreateIndex { table, index, spec } => (
                table,
                DdlRecord::IndexCreated {
                    table: table.clone(),
                    index: index.clone(),
                    spec: spec.clone(),
                },
            ),
            Ddl::DropIndex { table, index } => (
                table,
                DdlRecord::IndexDropped {
                    table: table.clone(),
                    index: index.clone(),
                },
            ),
        };
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock_name(&self.schema, table)],
        )
        .await
        .map_err(DdlFailure::of)?;
        self.change_catalog(&tx, &ddl).await?;
        let row = tx
            .query_one(
                "SELECT pg_logical_emit_message(true, $1::text, $2::bytea)::text, pg_current_xact_id()::text::bigint",
                &[&DDL_PREFIX, &record.encode()],
            )
            .await
            .map_err(DdlFailure::of)?;
        let xid: i64 = row.get(1);
        tx.commit().await.map_err(DdlFailure::of)?;
        Ok(self.wait_applied(xid).await?)
    }

    /// The catalog and relation changes of `ddl`, in its transaction (the table's lock held).
    async fn change_catalog(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        ddl: &Ddl,
    ) -> std::result::Result<(), DdlFailure> {
        let table = ddl_table(ddl);
        let catalog = format!("{}.catalog", schema::ident(&self.schema));
        let rel = docs_relation(&self.schema, table);
        let no_table = || Error::NoSuchTable(table.clone());
        match ddl {
            Ddl::CreateTable { primary_key, .. } => {
                let n = tx
                    .execute(
                        &format!(
                            "INSERT INTO {catalog} (name, primary_key) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                        ),
                        &[table, primary_key],
                    )
                    .await
                    .map_err(DdlFailure::of)?;
                if n == 0 {
                    return Err(Error::TableExists(table.clone()).into());
                }
                tx.batch_execute(&format!(
                    "CREATE TABLE {rel} (k bytea PRIMARY KEY, doc json NOT NULL)"
                ))
                .await
                .map_err(DdlFailure::of)?;
            }
            Ddl::DropTable { .. } => {
                let n = tx
                    .execute(&format!("DELETE FROM {catalog} WHERE name = $1"), &[table])
                    .await
                    .map_err(DdlFailure::of)?;
                if n == 0 {
                    return Err(no_table().into());
                }
                tx.batch_execute(&format!("DROP TABLE IF EXISTS {rel}"))
                    .await
                    .map_err(DdlFailure::of)?;
            }
            Ddl::CreateIndex { index, spec, .. } => {
                let spec = super::replica::catalog_spec(spec)?;
                let n = tx
                    .execute(
                        &format!(
                            "UPDATE {catalog} SET indexes = indexes || jsonb_build_object($2::text, $3::jsonb) \
                             WHERE name = $1 AND NOT indexes ? $2"
                        ),
                        &[table, index, &spec],
                    )
                    .await
                    .map_err(DdlFailure::of)?;
                if n == 0 {
                    // No row updated: the index is there, or the table is not (dropped by
                    // another process while this waited for its lock).
                    if !catalog_has(tx, &catalog, table).await? {
                        return Err(no_table().into());
                    }
                    return Err(Error::IndexExists {
                        table: table.clone(),
                        index: index.clone(),
                    }
                    .into());
                }
            }
            Ddl::DropIndex { index, .. } => {
                let n = tx
                    .execute(
                        &format!(
                            "UPDATE {catalog} SET indexes = indexes - $2::text WHERE name = $1 AND indexes ? $2"
                        ),
                        &[table, index],
                    )
                    .await
                    .map_err(DdlFailure::of)?;
                if n == 0 {
                    if !catalog_has(tx, &catalog, table).await? {
                        return Err(no_table().into());
                    }
                    return Err(Error::NoSuchIndex {
                        table: table.clone(),
                        index: index.clone(),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }
}

/// Whether the catalog (`catalog`, the schema's catalog relation) has a row for `table`.
async fn catalog_has(
    tx: &tokio_postgres::Transaction<'_>,
    catalog: &str,
    table: &str,
) -> std::result::Result<bool, DdlFailure> {
    let rows = tx
        .query(
            &format!("SELECT 1 FROM {catalog} WHERE name = $1"),
            &[&table],
        )
        .await
        .map_err(DdlFailure::of)?;
    Ok(!rows.is_empty())
}

/// Why a DDL transaction failed: as PostgreSQL's pick of a deadlock's victim (run it again),
/// or for good.
enum DdlFailure {
    Deadlock(Error),
    Error(Error),
}

impl DdlFailure {
    fn of(e: tokio_postgres::Error) -> Self {
        match e.code().map(|c| c.code()) {
            Some("40P01") => DdlFailure::Deadlock(pg_error(&e)),
            _ => DdlFailure::Error(pg_error(&e)),
        }
    }
}

impl From<Error> for DdlFailure {
    fn from(e: Error) -> Self {
        DdlFailure::Error(e)
    }
}

/// The table a DDL statement is about.
fn ddl_table(ddl: &Ddl) -> &String {
    match ddl {
        Ddl::CreateTable { table, .. }
        | Ddl::DropTable { table }
        | Ddl::CreateIndex { table, .. }
        | Ddl::DropIndex { table, .. } => table,
    }
}

/// A pooled connection that may hold (or wait for) session advisory locks: dropped while
/// it still does, its statement is cancelled and it is closed rather than returned to the
/// pool.
struct LockedConnection(Option<deadpool_postgres::Object>);

/// A sync token's waiter, taken out of [`Applied::token_waiters`] when the wait ends
/// (the pump takes it out first when it applies the token).
struct TokenWait<'a> {
    applied: &'a Mutex<Applied>,
    token: &'a [u8],
}

impl Drop for TokenWait<'_> {
    fn drop(&mut self) {
        self.applied.lock().token_waiters.remove(self.token);
    }
}

impl Drop for LockedConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // A session blocked waiting for a lock does not notice that its client closed
            // the connection: it would stay queued, take the lock when its holder lets go,
            // and hold up the table's writes until it tried to answer. Cancelling the
            // statement (whatever it is: nothing else is sent on this connection) ends it
            // at once; a session that is idle ignores the request.
            let cancel = conn.cancel_token();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
                });
            }
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

/// Adds what `more` did to `total`.
fn merge(total: &mut WriteResult, more: WriteResult) {
    total.inserted += more.inserted;
    total.replaced += more.replaced;
    total.unchanged += more.unchanged;
    total.deleted += more.deleted;
    total.skipped += more.skipped;
    total.errors += more.errors;
    if total.first_error.is_none() {
        total.first_error = more.first_error;
    }
    total.changes.extend(more.changes);
}

impl Backend for PgBackend {
    fn commit(
        self: Arc<Self>,
        db: Database,
        job: Job,
        how: Commit,
    ) -> BoxFuture<'static, Result<WriteResult>> {
        Box::pin(async move {
            match job {
                Job::Keys { table, ops } => self.commit_keys(&db, table, ops, how).await,
                Job::Locked { tables, select } => {
                    self.commit_locked(&db, tables, select, how).await
                }
            }
        })
    }

    fn ddl(self: Arc<Self>, _db: Database, ddl: Ddl) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.run_ddl(ddl).await })
    }

    fn sync(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { self.sync_now().await })
    }

    fn history(
        self: Arc<Self>,
        table: String,
        from: u64,
        to: u64,
        most: Option<u64>,
    ) -> BoxFuture<'static, Result<History>> {
        Box::pin(async move { self.read_history(&table, from, to, most).await })
    }

    fn close(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        self.applied
            .lock()
            .end("the database was closed".into(), true);
        let _ = self.stop.send(true);
        let archiver = self.archiver.lock().take();
        Box::pin(async move {
            // The archiver's last flush and the writes on their way (bounded: a server that
            // does not answer does not hold up the close).
            let _ = tokio::time::timeout(CLOSE_FLUSH_WAIT, async {
                if let Some(archiver) = archiver {
                    let _ = archiver.await;
                }
                // Polled: only a close waits for this, once.
                while !self.nothing_in_flight() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
            // Then no session is left on the server, though the program may keep its
            // handle: the commit and sync connections end, the pool's with them.
            let _ = self.hang_up.send(true);
            self.pool.close();
            Ok(())
        })
    }

    fn identity(&self) -> Option<u64> {
        Some(self.identity)
    }

    fn stats_rows(&self) -> Vec<Value> {
        let status = self.pump.lock().status();
        let (archiving, archived, pending, waiting) = self.archive.stats();
        vec![json!({
            "id": ["postgres"],
            "type": "postgres",
            "slot": status.slot,
            "position": status.last_commit_lsn.to_string(),
            "lag_bytes": status.lag_bytes(),
            "commits": self.commits.load(Ordering::Relaxed),
            "restaged": self.restaged.load(Ordering::Relaxed),
            "reconnects": self.reconnects.load(Ordering::Relaxed),
            "archiving": archiving,
            "archived_upto": format!("{archived:x}"),
            "archive_lag_changes": pending,
            "archive_lag_ms": waiting.as_secs_f64() * 1000.0,
            "following": self.applied.lock().error().is_none()
                && !self.recovering.load(Ordering::Relaxed),
            // Writes waiting for this process's replica to catch up (each with a token of
            // its own in flight): 0 when nothing is being written.
            "sync_waiters": self.applied.lock().token_waiters.len(),
        })]
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = self.hang_up.send(true);
    }
}

/// How many times opening loads the replica before it gives up: a replication connection
/// lost while the replica loads (a walsender terminated, a connection reset) is tried again
/// on a fresh replica, as a running process reconnects.
const LOAD_ATTEMPTS: usize = 3;

/// A replica loaded with the database as of a new replication slot's snapshot, and the pump
/// that follows the database from there.
async fn loaded_replica(
    options: &Connect,
    config: &tokio_postgres::Config,
) -> Result<(Database, Pump)> {
    let mut attempt = 1;
    loop {
        // The replica's own writes are never waited for (it is rebuilt on every start);
        // its default durability is the one writes to PostgreSQL get.
        let store = if options.replica_in_memory {
            Config::in_memory()
        } else {
            Config::temporary()
        };
        let db = store
            .durability(options.durability)
            .change_log(options.retention)
            .feed_queue_size(options.feed_queue_size)
            .open()
            .await?;
        let at = super::replica::AtSnapshot::Load;
        match super::replica::pump_or_why(&db, config, &options.schema, at).await {
            Ok(pump) => return Ok((db, pump)),
            // A connection or session lost, or a step that failed with it (the load's
            // snapshot is gone with the replication session that exported it): again. What
            // cannot pass on a second try (an unsupported configuration; a slot that waited
            // past its timeout for writing transactions) is reported at once.
            Err(e @ (PumpError::Unsupported { .. } | PumpError::StartTimedOut { .. })) => {
                return Err(pump_error(&e))
            }
            Err(e) if attempt < LOAD_ATTEMPTS => {
                tracing::warn!("loading the replica failed (attempt {attempt}), again: {e}");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(pump_error(&e)),
        }
    }
}

/// Schema names are plain identifiers (they are also part of advisory lock names).
fn check_schema_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: "a schema name is 1 to 63 lowercase ASCII letters, digits or `_`".into(),
        })
    }
}

/// Creates Remodel's schema, catalog and commit function, once per database however many
/// processes start together (under an advisory lock).
async fn set_up_schema(config: &tokio_postgres::Config, schema_name: &str) -> Result<u64> {
    let mut client = super::connect(config).await.map_err(|e| pg_error(&e))?;
    let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("remodel:setup:{schema_name}")],
    )
    .await
    .map_err(|e| pg_error(&e))?;
    tx.batch_execute(&schema::setup_sql(schema_name))
        .await
        .map_err(|e| pg_error(&e))?;
    tx.batch_execute(&super::archive::setup_sql(schema_name))
        .await
        .map_err(|e| pg_error(&e))?;
    tx.batch_execute(&super::writer::create_publication_sql(
        super::writer::PUBLICATION,
    ))
    .await
    .map_err(|e| pg_error(&e))?;
    let identity: i64 = tx
        .query_one(&schema::identity_sql(schema_name), &[])
        .await
        .map_err(|e| pg_error(&e))?
        .get(0);
    tx.commit().await.map_err(|e| pg_error(&e))?;
    Ok(identity as u64)
}

impl PgBackend {
    /// The replica stopped following the database: every wait ends (with `Closed` when it
    /// was closed).
    pub(super) fn ended(&self, why: String, closed: bool) {
        self.applied.lock().end(why, closed);
    }

    /// The server has been unreachable for longer than the reconnect window: writes and
    /// syncs fail (and those waiting end) until [`PgBackend::up`].
    pub(super) fn down(&self, why: String) {
        let mut a = self.applied.lock();
        a.down = Some(why);
        a.xid_waiters.clear();
        a.token_waiters.clear();
    }

    /// The replica was reloaded after the server was unreachable: writes go on.
    pub(super) fn up(&self) {
        self.applied.lock().down = None;
    }

    /// The replica follows the database through `pump` now (after a lost connection).
    pub(super) fn reconnected(&self, pump: &Pump) {
        *self.pump.lock() = pump.handle();
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A gap was bridged from the shared history: the ids and tokens of the commits in it
    /// never arrive, so their waiters ask again (with new sync tokens).
    pub(super) fn bridged(&self) {
        let mut a = self.applied.lock();
        a.xid_waiters.clear();
        a.token_waiters.clear();
    }

    /// The pump applied the transaction `xid` (with these sync tokens).
    pub(super) fn applied(&self, xid: u32, tokens: Vec<Vec<u8>>) {
        let mut a = self.applied.lock();
        let now = Instant::now();
        if a.recent.insert(xid) {
            a.order.push_back((xid, now));
        }
        while let Some(&(old, at)) = a.order.front() {
            if a.order.len() <= RECENT_XIDS && now.duration_since(at) < RECENT_FOR {
                break;
            }
            a.order.pop_front();
            a.recent.remove(&old);
        }
        if let Some(waiters) = a.xid_waiters.remove(&xid) {
            waiters.into_iter().for_each(|w| {
                let _ = w.send(());
            });
        }
        for token in tokens {
            if let Some(w) = a.token_waiters.remove(&token) {
                let _ = w.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_peers_are_probed_unless_the_connection_string_says_otherwise() {
        let mut plain: tokio_postgres::Config = "postgres://u@db.example/x".parse().unwrap();
        probe_dead_peers(&mut plain);
        assert_eq!(plain.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(plain.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        let mut given: tokio_postgres::Config =
            "postgres://u@db.example/x?keepalives_idle=60&tcp_user_timeout=5"
                .parse()
                .unwrap();
        probe_dead_peers(&mut given);
        assert_eq!(given.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(given.get_tcp_user_timeout(), Some(&Duration::from_secs(5)));
        let mut off: tokio_postgres::Config =
            "postgres://u@db.example/x?keepalives=0".parse().unwrap();
        probe_dead_peers(&mut off);
        assert!(!off.get_keepalives());
    }
}
