//! The writer's side: emitting Remodel's records in the writer's own transaction.
//!
//! [`MessageBatch`] collects the records of one transaction (encoded as they are added) and
//! [`emit`] sends them in one statement,
//!
//! ```sql
//! SELECT pg_logical_emit_message(true, p, m)
//! FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS u(p, m, i) ORDER BY i
//! ```
//!
//! which writes one transactional message per record, in the batch's order, into the WAL of
//! the transaction the statement runs in (outside an explicit transaction, a transaction of
//! its own). The messages reach the [pumps](super::pump) only if that transaction commits;
//! they cost about as much as nothing next to the row writes (`scale-out.md` §2).
//!
//! [`ensure_publication`] creates the empty publication the pumps start with (they create it
//! too: this is for setups that start no pump first).

use super::record::{
    encode_change, ChangeRecord, DdlRecord, Doc, Record, CHANGE_PREFIX, DDL_PREFIX,
};
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

/// The name of the publication the pumps read (empty: the records travel as messages).
pub const PUBLICATION: &str = "remodel";

/// The statement that emits a batch's messages in order (see the module doc).
pub const EMIT_SQL: &str = "SELECT count(*) FROM (SELECT pg_logical_emit_message(true, p, m) \
     FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS u(p, m, i) ORDER BY i) AS emitted";

/// The records of one transaction, encoded, in order.
#[derive(Debug, Clone, Default)]
pub struct MessageBatch {
    prefixes: Vec<&'static str>,
    bodies: Vec<Vec<u8>>,
    bytes: usize,
}

impl MessageBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a document change (`old`/`new` absent for an insert/delete).
    pub fn push_change(
        &mut self,
        table: &str,
        key: &[u8],
        old: Option<Doc<'_>>,
        new: Option<Doc<'_>>,
    ) {
        let mut body = Vec::new();
        encode_change(&mut body, table, key, old, new);
        self.push_body(CHANGE_PREFIX, body);
    }

    /// Adds a change record.
    pub fn push_change_record(&mut self, change: &ChangeRecord) {
        self.push_body(CHANGE_PREFIX, change.encode());
    }

    /// Adds a DDL record.
    pub fn push_ddl(&mut self, ddl: &DdlRecord) {
        self.push_body(DDL_PREFIX, ddl.encode());
    }

    /// Adds a record of either kind.
    pub fn push(&mut self, record: &Record) {
        self.push_body(record.prefix(), record.encode());
    }

    fn push_body(&mut self, prefix: &'static str, body: Vec<u8>) {
        self.bytes += body.len();
        self.prefixes.push(prefix);
        self.bodies.push(body);
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }

    /// The records' encoded size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.prefixes.clear();
        self.bodies.clear();
        self.bytes = 0;
    }
}

/// Emits `batch`'s records as transactional messages in the transaction `client` is in
/// (a [`tokio_postgres::Transaction`], or a client outside one: then the statement is its own
/// transaction). Nothing is sent for an empty batch.
pub async fn emit(
    client: &impl GenericClient,
    batch: &MessageBatch,
) -> Result<(), tokio_postgres::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    // Typed parameters: one round trip, no separate prepare.
    client
        .query_typed_one(
            EMIT_SQL,
            &[
                (&batch.prefixes, Type::TEXT_ARRAY),
                (&batch.bodies, Type::BYTEA_ARRAY),
            ],
        )
        .await?;
    Ok(())
}

/// Creates the (empty) publication `name` if it does not exist; safe to run from several
/// processes at once.
pub async fn ensure_publication(
    client: &impl GenericClient,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&create_publication_sql(name)).await
}

/// The SQL that creates the empty publication `name` unless it exists (it also runs on a
/// logical replication connection, where the pump uses it).
pub(crate) fn create_publication_sql(name: &str) -> String {
    let ident = quote_ident(name);
    let literal = name.replace('\'', "''");
    format!(
        "DO $remodel$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = '{literal}') THEN \
             CREATE PUBLICATION {ident}; \
           END IF; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
         END $remodel$"
    )
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
