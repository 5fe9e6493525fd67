//! The pump: how one app process learns of every commit made through Remodel, from
//! PostgreSQL itself.
//!
//! [`Pump::start`] opens a logical replication connection of its own, creates (if missing)
//! the empty publication `remodel` and a **temporary** logical replication slot
//! `remodel_<uuid>` (`pgoutput`, `SNAPSHOT 'nothing'`) on it, and starts replication with
//! messages on. A task then turns what PostgreSQL decodes into [`CommitBatch`]es, read with
//! [`Pump::next_batch`] (or as a [`Stream`](futures_core::Stream)).
//!
//! # Contract
//!
//! - **Every committed transaction that emitted Remodel records arrives exactly once, whole,
//!   in commit order**: one batch per transaction, its records in the order they were
//!   emitted, commit LSNs strictly increasing (checked: anything else ends the pump with
//!   [`PumpError::Protocol`]). A rolled-back transaction never arrives; a transaction with no
//!   Remodel record is not delivered (PostgreSQL 15 does not even send it). Every pump on a
//!   database sees the same batches (commit LSN, xid, records). Transactions that committed
//!   before the slot existed are not delivered; [`PumpStatus::start_lsn`] says from where on.
//! - **It never skips silently.** When the connection drops, the server stops or restarts,
//!   the slot is lost, or a record cannot be decoded, the batches decoded before are
//!   delivered, then one [`PumpError`] saying why, and the pump is over (a new pump starts
//!   from a new slot, at a later position: bridging the gap is the caller's job).
//! - **No slot outlives the process.** The slot is temporary: PostgreSQL drops it when the
//!   replication session ends, however it ends (stop, drop, crash, `kill -9`, network loss),
//!   and with it the WAL it retained.
//! - **Acknowledgement.** [`Pump::ack`] (or [`PumpHandle::ack`]) reports a batch's `end_lsn`
//!   once the caller has applied it; the server may then recycle the WAL before it. Positions
//!   with nothing to apply (transactions without records, idle keep-alives) are acknowledged
//!   by the pump itself once everything delivered before them is, so a process that writes
//!   nothing does not hold WAL back. (A temporary slot is never resumed, so acknowledging
//!   bounds retained WAL; it is not needed for correctness.)
//! - **Backpressure.** Batches wait in a bounded channel ([`PumpConfig::channel_batches`]);
//!   when it is full the pump stops reading and PostgreSQL stops sending. A batch larger than
//!   [`PumpConfig::max_batch_bytes`] ends the pump ([`PumpError::BatchTooLarge`]).
//! - **Start.** Creating the slot waits for transactions that are writing at that moment
//!   (PostgreSQL needs a consistent point); [`PumpConfig::start_timeout`] bounds the wait
//!   and the error names the transactions that held it up.
//!
//! The pump's position (the last delivered commit's LSN) and counters are in
//! [`PumpHandle::status`], for lag statistics.

use super::lsn::Lsn;
use super::record::{Record, RecordError};
use super::writer::{create_publication_sql, PUBLICATION};
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// How a [`Pump`] is set up.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    /// The publication to start replication with (created, empty, if missing).
    pub publication: String,
    /// How long connecting, creating the slot and starting replication may take.
    pub start_timeout: Duration,
    /// How often the acknowledged position is reported to the server (at most).
    pub status_interval: Duration,
    /// The largest transaction, in bytes of records, a pump accepts.
    pub max_batch_bytes: usize,
    /// How many decoded batches may wait for the caller.
    pub channel_batches: usize,
    /// Create the slot with an exported snapshot (see [`Pump::start_with_snapshot`]).
    pub export_snapshot: bool,
}

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            publication: PUBLICATION.to_string(),
            start_timeout: Duration::from_secs(30),
            status_interval: Duration::from_secs(1),
            max_batch_bytes: 256 << 20,
            channel_batches: 256,
            export_snapshot: false,
        }
    }
}

/// One committed transaction's Remodel records.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitBatch {
    /// The WAL position of the transaction's commit record: its position in the commit order,
    /// the same in every process.
    pub commit_lsn: Lsn,
    /// The WAL position just past the commit record: acknowledge this once applied.
    pub end_lsn: Lsn,
    /// The transaction's id (32 bits, as decoding reports it: widen with the epoch of a
    /// snapshot to compare with `xid8` values).
    pub xid: u32,
    /// The commit's time, in microseconds since 2000-01-01 UTC (the server's clock).
    pub commit_time_micros: i64,
    /// The records, in the order the transaction emitted them (a change's index here is its
    /// position inside the commit).
    pub changes: Vec<Record>,
    /// The size of the records as they came (encoded).
    pub bytes: usize,
}

impl CommitBatch {
    /// The commit's time (the server's clock).
    pub fn commit_time(&self) -> SystemTime {
        let since_2000 = Duration::from_micros(self.commit_time_micros.max(0) as u64);
        SystemTime::UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS) + since_2000
    }
}

/// Why a pump could not start, or why it ended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PumpError {
    /// The configuration asks for something the pump cannot do (TLS, no host).
    #[error("pump configuration not supported: {message}")]
    Unsupported {
        /// What.
        message: String,
    },
    /// Connecting, authenticating, or a setup step failed.
    #[error("pump setup failed at {step}: {message}")]
    Setup {
        /// The step: `connect`, `publication`, `slot` or `start`.
        step: &'static str,
        /// The server's or the connection's error.
        message: String,
    },
    /// Setting up took longer than [`PumpConfig::start_timeout`], usually because creating
    /// the slot waits for transactions that were writing.
    #[error(
        "pump setup timed out after {waited:?} at {step}; transactions holding it up: {blockers:?}"
    )]
    StartTimedOut {
        /// The step that was waiting.
        step: &'static str,
        /// How long it waited.
        waited: Duration,
        /// The oldest writing transactions then (pid, xid, start, state, query).
        blockers: Vec<String>,
    },
    /// The replication connection failed: dropped, terminated, the server stopped, or the
    /// slot was lost. Batches after the last delivered one may have been committed.
    #[error("replication connection lost: {message}")]
    ConnectionLost {
        /// The error.
        message: String,
    },
    /// The replication stream ended without an error while the pump was running.
    #[error("the replication stream ended")]
    Ended,
    /// A Remodel record could not be decoded.
    #[error("record {op} of the commit at {commit_lsn} is damaged: {error}")]
    Record {
        /// The commit.
        commit_lsn: Lsn,
        /// The record's index in it.
        op: usize,
        /// What is wrong with it.
        error: RecordError,
    },
    /// The stream broke the rules (events out of order, a message outside a transaction).
    #[error("replication stream out of order: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// A transaction's records are larger than [`PumpConfig::max_batch_bytes`].
    #[error("the commit at {commit_lsn} carries more than {limit} bytes of records")]
    BatchTooLarge {
        /// The commit.
        commit_lsn: Lsn,
        /// The limit.
        limit: usize,
    },
    /// The pump was stopped ([`Pump::stop`]).
    #[error("the pump was stopped")]
    Stopped,
}

/// What a pump has done so far (see [`PumpHandle::status`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PumpStatus {
    /// The temporary slot's name.
    pub slot: String,
    /// The slot's consistent point: transactions committed after it are delivered.
    pub start_lsn: Lsn,
    /// How long creating the slot took.
    pub slot_created_in: Duration,
    /// The commit LSN of the last delivered batch (the pump's position; zero before any).
    pub last_commit_lsn: Lsn,
    /// The end LSN of the last delivered batch.
    pub last_end_lsn: Lsn,
    /// The highest position acknowledged by the caller.
    pub acked_lsn: Lsn,
    /// The position last reported to the server.
    pub reported_lsn: Lsn,
    /// The server's WAL end as last seen on the stream.
    pub server_wal_end: Lsn,
    /// Batches delivered.
    pub batches: u64,
    /// Records delivered.
    pub records: u64,
    /// Whether the pump is still running (false once it ended, with its error).
    pub running: bool,
    /// Why it ended, if it did.
    pub ended: Option<PumpError>,
}

impl PumpStatus {
    /// WAL bytes between what the server has sent and what the pump delivered.
    pub fn lag_bytes(&self) -> u64 {
        self.server_wal_end.0.saturating_sub(self.last_end_lsn.0)
    }
}

struct Shared {
    slot: String,
    start_lsn: Lsn,
    slot_created_in: Duration,
    last_commit: AtomicU64,
    last_end: AtomicU64,
    batches: AtomicU64,
    records: AtomicU64,
    running: AtomicBool,
    ended: Mutex<Option<PumpError>>,
    ack: watch::Sender<Lsn>,
    metrics: Arc<pgwire_replication::ReplicationMetrics>,
}

/// A clonable view of a running [`Pump`]: its status, and acknowledgements.
#[derive(Clone)]
pub struct PumpHandle {
    shared: Arc<Shared>,
}

impl PumpHandle {
    /// Reports that every batch up to `end_lsn` (a [`CommitBatch::end_lsn`]) was applied.
    /// Monotonic: a lower position than one acknowledged before changes nothing.
    pub fn ack(&self, end_lsn: Lsn) {
        self.shared.ack.send_if_modified(|acked| {
            let raise = end_lsn > *acked;
            if raise {
                *acked = end_lsn;
            }
            raise
        });
    }

    /// The commit LSN of the last delivered batch (zero before any).
    pub fn position(&self) -> Lsn {
        Lsn(self.shared.last_commit.load(Ordering::Acquire))
    }

    /// The slot's name.
    pub fn slot(&self) -> &str {
        &self.shared.slot
    }

    /// Counters and positions.
    pub fn status(&self) -> PumpStatus {
        let s = &self.shared;
        PumpStatus {
            slot: s.slot.clone(),
            start_lsn: s.start_lsn,
            slot_created_in: s.slot_created_in,
            last_commit_lsn: Lsn(s.last_commit.load(Ordering::Acquire)),
            last_end_lsn: Lsn(s.last_end.load(Ordering::Acquire)),
            acked_lsn: *s.ack.borrow(),
            reported_lsn: s.metrics.last_applied_lsn().into(),
            server_wal_end: s.metrics.last_wal_end().into(),
            batches: s.batches.load(Ordering::Acquire),
            records: s.records.load(Ordering::Acquire),
            running: s.running.load(Ordering::Acquire),
            ended: s.ended.lock().ok().and_then(|e| e.clone()),
        }
    }
}

impl std::fmt::Debug for PumpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PumpHandle")
            .field("slot", &self.shared.slot)
            .field("position", &self.position())
            .finish()
    }
}

/// A process's stream of committed transactions (see the module doc).
pub struct Pump {
    rx: mpsc::Receiver<Result<CommitBatch, PumpError>>,
    handle: PumpHandle,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), PumpError>>>,
    /// The pump's error was handed out: later calls report it again without waiting.
    finished: Option<PumpError>,
}

impl Pump {
    /// Connects with `config` (its host, port, user, password and database; TLS is not
    /// supported), creates the publication and a temporary slot, and starts the pump's task
    /// on the current tokio runtime.
    pub async fn start(
        config: &tokio_postgres::Config,
        options: PumpConfig,
    ) -> Result<Pump, PumpError> {
        let options = PumpConfig {
            export_snapshot: false,
            ..options
        };
        let (pump, ()) =
            Self::start_with_snapshot(config, options, |_, _| async { Ok(()) }).await?;
        Ok(pump)
    }

    /// As [`Pump::start`], but the slot is created with an exported snapshot (when
    /// [`PumpConfig::export_snapshot`] is set) and `read` runs with its name before
    /// replication starts (with the slot's consistent point): a transaction that sets it (`SET TRANSACTION SNAPSHOT`) reads
    /// exactly the state the pump's first batch follows, which is how a process loads its
    /// replica with no gap and no overlap. Without `export_snapshot`, `read` gets an empty
    /// name. An error of `read` ends the pump before it starts.
    pub async fn start_with_snapshot<T, F, Fut>(
        config: &tokio_postgres::Config,
        options: PumpConfig,
        read: F,
    ) -> Result<(Pump, T), PumpError>
    where
        F: FnOnce(String, Lsn) -> Fut,
        Fut: std::future::Future<Output = Result<T, PumpError>>,
    {
        let started = Instant::now();
        let slot = format!("remodel_{}", uuid::Uuid::new_v4().simple());
        let application_name = format!("remodel_pump_{}", &slot["remodel_".len()..]);
        let replication = replication_config(config, &options, &slot, &application_name)?;
        let mut client = ReplicationClient::connect_gated(replication)
            .await
            .map_err(|e| setup("connect", e))?;
        let deadline = started + options.start_timeout;
        let step = Step::default();
        let setup_result =
            tokio::time::timeout_at(deadline.into(), set_up(&mut client, &options, &slot, &step))
                .await;
        let (start_lsn, slot_created_in, snapshot) = match setup_result {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                client.abort();
                return Err(e);
            }
            Err(_) => {
                let blockers = blockers_and_cancel(config, &application_name).await;
                client.abort();
                return Err(PumpError::StartTimedOut {
                    step: step.get(),
                    waited: started.elapsed(),
                    blockers,
                });
            }
        };
        let value = match read(snapshot, start_lsn).await {
            Ok(value) => value,
            Err(e) => {
                client.abort();
                return Err(e);
            }
        };
        let begun = async {
            client.start().await.map_err(|e| setup("start", e))?;
            client.wait_started().await.map_err(|e| setup("start", e))
        };
        if let Err(e) = begun.await {
            client.abort();
            return Err(e);
        }
        client.update_applied_lsn(start_lsn.into());

        let (tx, rx) = mpsc::channel(options.channel_batches.max(1));
        let (ack, ack_rx) = watch::channel(start_lsn);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            slot,
            start_lsn,
            slot_created_in,
            last_commit: AtomicU64::new(0),
            last_end: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            records: AtomicU64::new(0),
            running: AtomicBool::new(true),
            ended: Mutex::new(None),
            ack,
            metrics: client.metrics(),
        });
        let task = Decoder {
            client,
            tx,
            ack_rx,
            stop_rx,
            shared: Arc::clone(&shared),
            max_batch_bytes: options.max_batch_bytes,
            open: None,
            last_commit: Lsn::ZERO,
            delivered_end: start_lsn,
            idle_upto: start_lsn,
            consumer_ack: start_lsn,
            applied: start_lsn,
        };
        let task = tokio::spawn(task.run());
        let pump = Pump {
            rx,
            handle: PumpHandle { shared },
            stop,
            task: Some(task),
            finished: None,
        };
        Ok((pump, value))
    }

    /// The next committed batch, in commit order. After an error (the pump is over) every
    /// later call returns that error again.
    pub async fn next_batch(&mut self) -> Result<CommitBatch, PumpError> {
        if let Some(e) = &self.finished {
            return Err(e.clone());
        }
        let item = match self.rx.recv().await {
            Some(item) => item,
            None => Err(self.ended_error()),
        };
        if let Err(e) = &item {
            self.finished = Some(e.clone());
        }
        item
    }

    /// Why the task ended when it left no error in the channel (it always does; this is the
    /// fallback should it have been cancelled, e.g. by a runtime shutting down).
    fn ended_error(&self) -> PumpError {
        self.handle
            .shared
            .ended
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or(PumpError::Ended)
    }

    /// See [`PumpHandle::ack`].
    pub fn ack(&self, end_lsn: Lsn) {
        self.handle.ack(end_lsn);
    }

    /// A clonable handle: status and acknowledgements from elsewhere.
    pub fn handle(&self) -> PumpHandle {
        self.handle.clone()
    }

    /// The slot's name.
    pub fn slot(&self) -> &str {
        self.handle.slot()
    }

    /// Ends replication (the server drops the slot as the session ends) and waits for the
    /// task. `Ok` if it ended cleanly; the pump's error if it had already failed.
    pub async fn stop(mut self) -> Result<(), PumpError> {
        // Closing the channel also frees a task waiting for room in it.
        self.rx.close();
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(PumpError::ConnectionLost {
                    message: format!("the pump's task failed: {e}"),
                }),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        // The task sees the stop (or the closed channel) and ends the session.
        let _ = self.stop.send(true);
    }
}

impl futures_core::Stream for Pump {
    type Item = Result<CommitBatch, PumpError>;

    /// The batches, then the error that ended the pump, then the end of the stream.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished.is_some() {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(item) => {
                let item = item.unwrap_or_else(|| Err(self.ended_error()));
                if let Err(e) = &item {
                    self.finished = Some(e.clone());
                }
                Poll::Ready(Some(item))
            }
        }
    }
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("handle", &self.handle)
            .finish()
    }
}

/// The setup step in progress, for a timeout's message.
#[derive(Default)]
struct Step(Mutex<&'static str>);

impl Step {
    fn set(&self, step: &'static str) {
        if let Ok(mut s) = self.0.lock() {
            *s = step;
        }
    }

    fn get(&self) -> &'static str {
        self.0.lock().map(|s| *s).unwrap_or("setup")
    }
}

fn setup(step: &'static str, e: pgwire_replication::PgWireError) -> PumpError {
    PumpError::Setup {
        step,
        message: e.to_string(),
    }
}

/// Publication and slot. Returns the slot's consistent point, how long creating it took and
/// the exported snapshot's name (empty when none was asked for).
async fn set_up(
    client: &mut ReplicationClient,
    options: &PumpConfig,
    slot: &str,
    step: &Step,
) -> Result<(Lsn, Duration, String), PumpError> {
    step.set("publication");
    client
        .simple_query(&create_publication_sql(&options.publication))
        .await
        // The session's first query: a failure that is not the server's is the connection's.
        .map_err(|e| {
            setup(
                if e.is_server() {
                    "publication"
                } else {
                    "connect"
                },
                e,
            )
        })?;
    step.set("slot");
    let t0 = Instant::now();
    let rows = client
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT '{}')",
            if options.export_snapshot {
                "export"
            } else {
                "nothing"
            }
        ))
        .await
        .map_err(|e| setup("slot", e))?;
    let slot_created_in = t0.elapsed();
    // slot_name, consistent_point, snapshot_name, output_plugin
    let point = rows
        .first()
        .and_then(|row| row.get(1))
        .and_then(|cell| cell.as_ref())
        .and_then(|text| std::str::from_utf8(text).ok())
        .and_then(|text| text.parse::<Lsn>().ok())
        .ok_or_else(|| PumpError::Setup {
            step: "slot",
            message: "CREATE_REPLICATION_SLOT returned no consistent point".into(),
        })?;
    let snapshot = rows
        .first()
        .and_then(|row| row.get(2))
        .and_then(|cell| cell.as_ref())
        .and_then(|text| std::str::from_utf8(text).ok())
        .unwrap_or_default()
        .to_string();
    if options.export_snapshot && snapshot.is_empty() {
        return Err(PumpError::Setup {
            step: "slot",
            message: "CREATE_REPLICATION_SLOT exported no snapshot".into(),
        });
    }
    step.set("start");
    Ok((point, slot_created_in, snapshot))
}

/// On a start timeout: the oldest writing transactions (what slot creation waits for), and the
/// pump's own session ended (it may be stuck inside CREATE_REPLICATION_SLOT).
async fn blockers_and_cancel(
    config: &tokio_postgres::Config,
    application_name: &str,
) -> Vec<String> {
    let Ok(client) = super::connect(config).await else {
        return vec!["(could not connect to look)".into()];
    };
    let blockers = client
        .query(
            "SELECT format('pid %s, xid %s, since %s, %s: %s', pid, backend_xid, xact_start, \
                    state, left(query, 120)) \
             FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
             ORDER BY xact_start LIMIT 5",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_else(|e| vec![format!("(could not look: {})", super::error_text(&e))]);
    let _ = client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await;
    blockers
}

fn replication_config(
    config: &tokio_postgres::Config,
    options: &PumpConfig,
    slot: &str,
    application_name: &str,
) -> Result<ReplicationConfig, PumpError> {
    if matches!(
        config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    ) {
        return Err(PumpError::Unsupported {
            message: "sslmode=require: the pump's replication connection has no TLS".into(),
        });
    }
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let replication = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => ReplicationConfig::new(
            host.as_str(),
            user,
            password,
            database,
            slot,
            options.publication.as_str(),
        )
        .with_port(port),
        #[cfg(unix)]
        Some(Host::Unix(dir)) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            port,
            user,
            password,
            database,
            slot,
            options.publication.as_str(),
        ),
        None => {
            return Err(PumpError::Unsupported {
                message: "the connection configuration names no host".into(),
            })
        }
    };
    Ok(replication
        .with_application_name(application_name)
        .with_status_interval(options.status_interval)
        // Between the decoder and the replication client: ~1 event per record.
        .with_buffer_size(8192))
}

/// A transaction being decoded.
struct Open {
    commit_lsn: Lsn,
    xid: u32,
    commit_time_micros: i64,
    changes: Vec<Record>,
    bytes: usize,
}

/// The pump's task: replication events in, batches out.
struct Decoder {
    client: ReplicationClient,
    tx: mpsc::Sender<Result<CommitBatch, PumpError>>,
    ack_rx: watch::Receiver<Lsn>,
    stop_rx: watch::Receiver<bool>,
    shared: Arc<Shared>,
    max_batch_bytes: usize,
    open: Option<Open>,
    /// The commit LSN of the last transaction decoded.
    last_commit: Lsn,
    /// The end of the last delivered batch.
    delivered_end: Lsn,
    /// A position up to which nothing was left to apply after `delivered_end`.
    idle_upto: Lsn,
    /// The caller's acknowledged position.
    consumer_ack: Lsn,
    /// The position handed to the replication client.
    applied: Lsn,
}

/// What the decoder does after an event.
enum Next {
    Continue,
    End(Result<(), PumpError>),
}

impl Decoder {
    async fn run(mut self) -> Result<(), PumpError> {
        let result = self.decode_until_end().await;
        self.shared.running.store(false, Ordering::Release);
        match &result {
            Ok(()) => {
                if let Ok(mut ended) = self.shared.ended.lock() {
                    *ended = Some(PumpError::Stopped);
                }
            }
            Err(e) => {
                if let Ok(mut ended) = self.shared.ended.lock() {
                    *ended = Some(e.clone());
                }
                // Delivered after every batch decoded before it.
                let _ = self.tx.send(Err(e.clone())).await;
            }
        }
        result
    }

    async fn decode_until_end(&mut self) -> Result<(), PumpError> {
        loop {
            // `recv` is polled first; another branch completing while it waits cancels it,
            // which loses nothing (the client's events come from a channel) except, in the
            // instant between the worker ending and its result being joined, the worker's
            // error text: the pump then still ends with `ConnectionLost`.
            let event = tokio::select! {
                biased;
                event = self.client.recv() => event,
                changed = self.ack_rx.changed() => {
                    if changed.is_ok() {
                        self.consumer_ack = *self.ack_rx.borrow_and_update();
                        self.report_applied();
                    }
                    continue;
                }
                _ = self.stop_rx.changed() => {
                    return self.shut_down().await;
                }
                _ = self.tx.closed() => {
                    // The pump was dropped.
                    return self.shut_down().await;
                }
            };
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => return Err(PumpError::Ended),
                Err(e) => {
                    return Err(PumpError::ConnectionLost {
                        message: e.to_string(),
                    })
                }
            };
            match self.handle(event).await {
                Next::Continue => {}
                Next::End(result) => return result,
            }
        }
    }

    /// Ends replication: CopyDone, then the session ends (and the server drops the slot).
    async fn shut_down(&mut self) -> Result<(), PumpError> {
        self.client
            .shutdown()
            .await
            .map_err(|e| PumpError::ConnectionLost {
                message: e.to_string(),
            })
    }

    async fn handle(&mut self, event: ReplicationEvent) -> Next {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let commit_lsn = Lsn::from(final_lsn);
                if self.open.is_some() {
                    return protocol(format!("Begin of {commit_lsn} inside a transaction"));
                }
                if commit_lsn <= self.last_commit {
                    return protocol(format!(
                        "commit {commit_lsn} after commit {} (commit order)",
                        self.last_commit
                    ));
                }
                self.open = Some(Open {
                    commit_lsn,
                    xid,
                    commit_time_micros,
                    changes: Vec::new(),
                    bytes: 0,
                });
            }
            ReplicationEvent::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                if !Record::is_remodel_prefix(&prefix) {
                    return Next::Continue;
                }
                let Some(open) = self.open.as_mut().filter(|_| transactional) else {
                    return protocol(format!(
                        "a {prefix} message outside a transaction (transactional: {transactional})"
                    ));
                };
                open.bytes += content.len();
                if open.bytes > self.max_batch_bytes {
                    return Next::End(Err(PumpError::BatchTooLarge {
                        commit_lsn: open.commit_lsn,
                        limit: self.max_batch_bytes,
                    }));
                }
                match Record::decode(&prefix, &content) {
                    Ok(Some(record)) => open.changes.push(record),
                    Ok(None) => {}
                    Err(error) => {
                        return Next::End(Err(PumpError::Record {
                            commit_lsn: open.commit_lsn,
                            op: open.changes.len(),
                            error,
                        }))
                    }
                }
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                let (lsn, end_lsn) = (Lsn::from(lsn), Lsn::from(end_lsn));
                let Some(open) = self.open.take() else {
                    return protocol(format!("Commit of {lsn} without Begin"));
                };
                if open.commit_lsn != lsn {
                    return protocol(format!(
                        "Commit of {lsn} ends the transaction begun for {}",
                        open.commit_lsn
                    ));
                }
                self.last_commit = lsn;
                if open.changes.is_empty() {
                    self.idle_upto = self.idle_upto.max(end_lsn);
                    self.report_applied();
                    return Next::Continue;
                }
                let records = open.changes.len() as u64;
                let batch = CommitBatch {
                    commit_lsn: lsn,
                    end_lsn,
                    xid: open.xid,
                    commit_time_micros: commit_time_micros.max(open.commit_time_micros),
                    changes: open.changes,
                    bytes: open.bytes,
                };
                // Counted before it is sent: once a caller has the batch, the status shows it.
                let s = &self.shared;
                s.last_commit.store(lsn.0, Ordering::Release);
                s.last_end.store(end_lsn.0, Ordering::Release);
                s.batches.fetch_add(1, Ordering::AcqRel);
                s.records.fetch_add(records, Ordering::AcqRel);
                self.delivered_end = end_lsn;
                self.idle_upto = end_lsn;
                if self.tx.send(Ok(batch)).await.is_err() {
                    // The pump was dropped.
                    return Next::End(self.shut_down().await);
                }
            }
            // Between transactions, everything before the server's WAL end was seen.
            ReplicationEvent::KeepAlive { wal_end, .. } if self.open.is_none() => {
                self.idle_upto = self.idle_upto.max(wal_end.into());
                self.report_applied();
            }
            ReplicationEvent::KeepAlive { .. } => {}
            ReplicationEvent::StoppedAt { .. } => return Next::End(Err(PumpError::Ended)),
            // Row changes, relations, types, origins: not Remodel's (its publication is empty).
            ReplicationEvent::XLogData { .. } => {}
            // A later version's event (the enum is not exhaustive): nothing the pump reads.
            #[allow(unreachable_patterns)]
            _ => {}
        }
        Next::Continue
    }

    /// Hands the replication client the position that may be reported: what the caller
    /// acknowledged, and past it what needed nothing applied once everything delivered is
    /// acknowledged.
    fn report_applied(&mut self) {
        let mut applied = self.consumer_ack;
        if self.consumer_ack >= self.delivered_end {
            applied = applied.max(self.idle_upto);
        }
        if applied > self.applied {
            self.applied = applied;
            self.client.update_applied_lsn(applied.into());
        }
    }
}

fn protocol(message: String) -> Next {
    Next::End(Err(PumpError::Protocol { message }))
}
