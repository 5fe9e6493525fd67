//! The PostgreSQL backend (cargo feature `postgres`): the same tables, queries, feeds and
//! models on a shared PostgreSQL database, with every app process's feeds seeing every
//! process's commits in one order. Start with [`Database::connect`](crate::Database::connect)
//! or [`Connect`]; [`backend`] says how it works.
//!
//! Every write made through Remodel is one PostgreSQL transaction that writes the rows and,
//! in the same transaction, one transactional logical message per change ([`record`]). Each
//! app process runs a [`pump`]: a temporary logical replication slot on its own replication
//! connection, which PostgreSQL feeds with the messages of every committed transaction,
//! whole, in commit order, identical in every process; rolled-back transactions never
//! arrive. The pump applies each one to the process's replica, which its reads and feeds
//! use. A transaction's position is its commit [`Lsn`].
//!
//! - [`backend`]: [`Connect`], the backend (writes, DDL, sync) and its design.
//! - `archive` (private): the shared history, from which a cursor resumes in any process.
//! - `replica` (private): loading a process's replica, and following the database.
//! - `group_commit` (private): the single-table writes of many tasks in one transaction.
//! - `schema` (private): what Remodel keeps in PostgreSQL, and the commit statement.
//! - [`record`]: the binary records (`remodel.v1` changes, `remodel.ddl.v1` DDL, sync
//!   tokens) and their decoder, which returns typed errors on damage and never panics.
//! - [`pump`]: [`Pump`], the per-process stream of [`CommitBatch`]es.
//! - [`writer`]: emitting records in a transaction of one's own, the publication.
//! - [`cluster`]: [`TestCluster`], a throwaway PostgreSQL server for tests and benchmarks,
//!   and [`suite_database`] for the suites parameterised by backend.
//!
//! Requires PostgreSQL 15 or newer (transactional messages over `pgoutput`, and transactions
//! with no message are not sent at all), with `wal_level = logical` and a free replication
//! slot and WAL sender per process; and Rust 1.88 (the replication client's minimum).

mod archive;
pub mod backend;
pub mod cluster;
mod group_commit;
pub mod lsn;
pub mod pump;
pub mod record;
mod replica;
mod schema;
pub mod writer;

use backend::{pg_error, pump_error};
pub use backend::{Connect, MAX_COMMIT_CHANGES};
pub use cluster::{
    skip_or_fail, suite_database, suites_on_postgres, ClusterError, TestCluster, TestDatabase,
    BACKEND_VAR,
};
pub use lsn::Lsn;
pub use pump::{CommitBatch, Pump, PumpConfig, PumpError, PumpHandle, PumpStatus};
pub use record::{ChangeRecord, DdlRecord, Record, RecordError};
/// The SQL client whose [`Config`](tokio_postgres::Config) this module's functions take.
pub use tokio_postgres;

/// Opens a connection with `config` (no TLS); its connection task runs on the current tokio
/// runtime until the returned client is dropped.
pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

/// [`connect`], but the connection also ends (its socket closed, the server's session with
/// it) once `hang_up` says so, though clones of the client may live on: a closed database
/// keeps no session on the server while a program still holds its handle.
pub(crate) async fn connect_until(
    config: &tokio_postgres::Config,
    mut hang_up: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        tokio::select! {
            ended = connection => {
                if let Err(e) = ended {
                    tracing::debug!("postgres connection ended: {e}");
                }
            }
            // A sender dropped counts as hung up too (its backend is gone).
            _ = hang_up.wait_for(|h| *h) => {}
        }
    });
    Ok(client)
}

/// Starts a read-only transaction at repeatable read on `client`: every read of it sees one
/// snapshot.
pub(crate) async fn read_only_snapshot(
    client: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// A tokio-postgres error as one line: the server's message and SQLSTATE when there is one.
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}
