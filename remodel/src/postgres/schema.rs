//! What Remodel keeps in a PostgreSQL database, in a schema of its own (`remodel` unless
//! chosen otherwise), and the SQL that reads and writes it.
//!
//! - `catalog(name text PRIMARY KEY, primary_key text, indexes jsonb)`: every table, its
//!   primary key field and its secondary indexes (name → [`IndexSpec`](crate::IndexSpec)).
//! - `"t_<table>"(k bytea PRIMARY KEY, doc json)`: a table's documents. `k` is the primary
//!   key in Remodel's order-preserving encoding ([`encode_key`](crate::value::encode_key)),
//!   so the B-tree orders keys as Remodel does; `doc` is the document's JSON text as Remodel
//!   wrote it (`json` keeps it byte for byte, field order included, and SQL can read it).
//! - `commit(...)`: the one function every document write goes through (see [`COMMIT_FN`]).
//!
//! Secondary indexes are not tables here: every process reads from its own replica
//! (`postgres::backend`), which builds them from the catalog, so index rows in PostgreSQL
//! would be written by every commit and read by none.

/// A PostgreSQL identifier, quoted.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The relation holding a table's documents, schema-qualified and quoted.
pub(crate) fn docs_relation(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(&relation_name(table)))
}

/// The longest table name a relation name (63 bytes) holds as `t_<name>`.
const MAX_PLAIN_NAME: usize = 61;

/// The name of the relation holding a table's documents: `t_<table>`, or for names too long
/// for PostgreSQL's 63-byte identifiers, `t_<first 40 bytes>_<FNV-1a hash of the name>`
/// (table names are ASCII; the same in every process and version).
pub(crate) fn relation_name(table: &str) -> String {
    if table.len() <= MAX_PLAIN_NAME {
        return format!("t_{table}");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in table.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("t_{}_{hash:016x}", &table[..40])
}

/// Reads the database's identity (made by [`setup_sql`]).
pub(crate) fn identity_sql(schema: &str) -> String {
    format!("SELECT id FROM {}.identity", ident(schema))
}

/// The name of a table's advisory lock (hashed with `hashtextextended`): shared by every
/// commit that writes the table, exclusive for DDL and for writes that select their rows
/// when they commit.
pub(crate) fn lock_name(schema: &str, table: &str) -> String {
    format!("remodel:{schema}.{}", relation_name(table))
}

/// Creates the schema, the catalog, the database's identity (made at random once: see
/// [`crate::Database::identity`]) and the commit function (idempotent; `{schema}` is the
/// quoted schema, `{schema_text}` its name as a string literal body).
pub(crate) fn setup_sql(schema: &str) -> String {
    let q = ident(schema);
    let lit = schema.replace('\'', "''");
    format!(
        "CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.catalog (
             name text PRIMARY KEY,
             primary_key text NOT NULL,
             indexes jsonb NOT NULL DEFAULT '{{}}'::jsonb
         );
         CREATE TABLE IF NOT EXISTS {q}.identity (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             id bigint NOT NULL
         );
         INSERT INTO {q}.identity (id)
             SELECT ('x' || substr(md5(random()::text || clock_timestamp()::text), 1, 16))::bit(64)::bigint
             ON CONFLICT DO NOTHING;
         {commit}",
        commit = COMMIT_FN
            .replace("{schema}", &q)
            .replace("{schema_text}", &lit)
    )
}

/// The commit function: `commit(rels, keys, olds, news, msgs, soft)` commits one staged
/// chunk. Row `i` says that the document with key `keys[i]` of the table whose relation is
/// `rels[i]` ([`relation_name`]) was
/// `olds[i]` (JSON text, NULL: absent) when the write was staged and becomes `news[i]`
/// (NULL: deleted); `msgs` are the change records, in commit order. Rows come sorted by
/// table and key, so that two commits lock rows in one order.
///
/// It takes each table's advisory lock shared, locks the rows (`FOR UPDATE`), and compares
/// each with what was staged: if one differs (another process wrote it since), it writes
/// nothing and returns -1, and the caller stages the write again against a caught-up
/// replica. Else it writes the rows, emits the records as transactional messages, and returns
/// the transaction's id. A row inserted by another process meanwhile makes the insert fail
/// with a unique violation (SQLSTATE 23505), which the caller treats as -1.
const COMMIT_FN: &str = r#"
CREATE OR REPLACE FUNCTION {schema}.commit(
    tbls text[], keys bytea[], olds text[], news text[], msgs bytea[], soft boolean,
    names text[], pks text[]
) RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    t text;
    rel text;
    bad bigint;
    m bytea;
BEGIN
    IF soft THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    FOR t IN SELECT DISTINCT x FROM unnest(tbls) AS x ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock_shared(hashtextextended('remodel:{schema_text}.' || t, 0));
        -- The table as staged (its name and primary key field) is the one in the catalog:
        -- not dropped, nor made again with another key, since.
        SELECT count(*) INTO bad FROM (
            SELECT DISTINCT u.tn, u.tp FROM unnest(tbls, names, pks) AS u(tb, tn, tp)
            WHERE u.tb = t) AS x
        WHERE NOT EXISTS (SELECT 1 FROM {schema}.catalog c
                          WHERE c.name = x.tn AND c.primary_key = x.tp);
        IF bad > 0 THEN
            RETURN -1;
        END IF;
        rel := format('%I.%I', '{schema_text}', t);
        EXECUTE format(
            'SELECT count(*) FROM (SELECT 1 FROM %s WHERE k = ANY($1) ORDER BY k FOR UPDATE) AS l',
            rel)
        USING ARRAY(SELECT u.k FROM unnest(tbls, keys) AS u(tb, k) WHERE u.tb = t);
        EXECUTE format(
            'SELECT count(*) FROM unnest($1::text[], $2::bytea[], $3::text[]) AS c(tb, k, old)
             LEFT JOIN %s AS d ON d.k = c.k
             WHERE c.tb = $4 AND d.doc::text IS DISTINCT FROM c.old', rel)
        INTO bad USING tbls, keys, olds, t;
        IF bad > 0 THEN
            RETURN -1;
        END IF;
    END LOOP;
    FOR t IN SELECT DISTINCT x FROM unnest(tbls) AS x ORDER BY 1 LOOP
        rel := format('%I.%I', '{schema_text}', t);
        -- Only rows staged present are deleted: a row staged absent and left so (only
        -- checked) may have been inserted by another process since the check above, and
        -- this statement's snapshot, newer than the check's, would see it.
        EXECUTE format(
            'DELETE FROM %s AS d
             USING unnest($1::text[], $2::bytea[], $3::text[], $4::text[]) AS c(tb, k, old, new)
             WHERE c.tb = $5 AND c.old IS NOT NULL AND c.new IS NULL AND d.k = c.k', rel)
        USING tbls, keys, olds, news, t;
        EXECUTE format(
            'UPDATE %s AS d SET doc = c.new::json
             FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[]) AS c(tb, k, old, new)
             WHERE c.tb = $5 AND c.old IS NOT NULL AND c.new IS NOT NULL AND d.k = c.k', rel)
        USING tbls, keys, olds, news, t;
        EXECUTE format(
            'INSERT INTO %s (k, doc)
             SELECT c.k, c.new::json
             FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[]) AS c(tb, k, old, new)
             WHERE c.tb = $5 AND c.old IS NULL AND c.new IS NOT NULL', rel)
        USING tbls, keys, olds, news, t;
    END LOOP;
    FOREACH m IN ARRAY msgs LOOP
        PERFORM pg_logical_emit_message(true, 'remodel.v1', m);
    END LOOP;
    RETURN pg_current_xact_id()::text::bigint;
END
$fn$;
"#;

/// The call of the commit function ([`COMMIT_FN`]): parameters `tbls, keys, olds, news,
/// msgs, soft, names, pks` (each row's table name and primary key field as staged).
pub(crate) fn commit_call_sql(schema: &str) -> String {
    format!(
        "SELECT {}.commit($1::text[], $2::bytea[], $3::text[], $4::text[], $5::bytea[], $6, \
         $7::text[], $8::text[])",
        ident(schema)
    )
}

/// The commit of a chunk that writes one table: what [`COMMIT_FN`] does, as one statement
/// that each connection prepares once per table (no PL/pgSQL, no SQL planned per commit).
/// Parameters: `$1` keys, `$2` the documents as staged against (JSON text, NULL: absent),
/// `$3` the new documents (NULL: deleted), `$4` the change records in commit order, `$5`
/// soft (asynchronous commit), `$6` the table's advisory lock name ([`lock_name`]), `$7`
/// whether each row is written (false: only checked, a key the write read and left as it
/// was), `$8` the table's name and `$9` its primary key field as staged (a table dropped
/// and made again with another key since is a row that differs: -1). Returns the transaction id (0 when nothing is written), or -1 (nothing written)
/// when a row is not what was staged against.
///
/// One snapshot serves the statement: the rows are locked `FOR UPDATE` (which reads their
/// newest committed version), compared, and every write is conditional on no row differing.
/// A row inserted by another process since the snapshot makes the insert fail with a unique
/// violation (stage again), one deleted makes the comparison fail. A row only checked to be
/// absent has no such guard (the snapshot may predate the lock and miss a row committed
/// since): such commits must go through [`COMMIT_FN`] instead, whose statements each take a
/// snapshot after its lock.
pub(crate) fn single_table_commit_sql(schema: &str, table: &str) -> String {
    let rel = docs_relation(schema, table);
    let catalog = format!("{}.catalog", ident(schema));
    format!(
        "WITH lk AS (SELECT pg_advisory_xact_lock_shared(hashtextextended($6::text, 0)) AS l),
         cfg AS (SELECT CASE WHEN $5::bool THEN set_config('synchronous_commit', 'off', true) END AS c),
         input AS (SELECT u.k, u.old, u.new, u.w
                   FROM unnest($1::bytea[], $2::text[], $3::text[], $7::bool[]) AS u(k, old, new, w)),
         locked AS (SELECT d.k, d.doc::text AS cur FROM {rel} d
                    WHERE d.k = ANY($1::bytea[]) AND (SELECT count(*) FROM lk) = 1
                    ORDER BY d.k FOR UPDATE),
         cat AS (SELECT count(*) AS n FROM {catalog}
                 WHERE name = $8 AND primary_key = $9 AND (SELECT count(*) FROM lk) = 1),
         bad AS (SELECT count(*) + 1 - (SELECT n FROM cat) AS n
                 FROM input i LEFT JOIN locked l ON l.k = i.k
                 WHERE l.cur IS DISTINCT FROM i.old),
         del AS (DELETE FROM {rel} d USING input i
                 WHERE (SELECT n FROM bad) = 0 AND i.w AND i.new IS NULL AND d.k = i.k RETURNING 1),
         upd AS (UPDATE {rel} d SET doc = i.new::json FROM input i
                 WHERE (SELECT n FROM bad) = 0 AND i.w AND i.old IS NOT NULL AND i.new IS NOT NULL
                   AND d.k = i.k RETURNING 1),
         ins AS (INSERT INTO {rel} (k, doc) SELECT i.k, i.new::json FROM input i
                 WHERE (SELECT n FROM bad) = 0 AND i.w AND i.old IS NULL AND i.new IS NOT NULL
                 RETURNING 1),
         msg AS (SELECT count(*) AS n FROM (
                   SELECT pg_logical_emit_message(true, 'remodel.v1', u.m)
                   FROM unnest($4::bytea[]) WITH ORDINALITY AS u(m, o)
                   WHERE (SELECT n FROM bad) = 0 ORDER BY u.o) AS e)
         SELECT CASE WHEN (SELECT n FROM bad) > 0 THEN -1
                     WHEN cardinality($4::bytea[]) = 0 THEN 0
                     ELSE pg_current_xact_id()::text::bigint END,
                (SELECT n FROM msg), (SELECT count(*) FROM cfg),
                (SELECT count(*) FROM del) + (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins)"
    )
}

/// The commit of a chunk that only inserts into one table (every row absent when staged,
/// written, not deleted): [`single_table_commit_sql`] without the rows' locking and
/// comparison, which for an insert decide nothing the unique key does not (a row inserted
/// by another process since the write was staged makes the insert fail with a unique
/// violation, and the caller stages again). The rows are inserted after the table's lock is
/// taken, as every commit's are. Parameters: `$1` keys, `$2` the new documents, `$3` soft,
/// `$4` the table's advisory lock name, `$5` the change records in commit order, `$6` the
/// table's name and `$7` its primary key field as staged. Returns the transaction id, or
/// -1 (nothing written) when the catalog has no such table with that key (dropped, or
/// made again with another key, since the rows were staged: their keys are of the old
/// one).
pub(crate) fn insert_commit_sql(schema: &str, table: &str) -> String {
    let rel = docs_relation(schema, table);
    let catalog = format!("{}.catalog", ident(schema));
    format!(
        "WITH lk AS (SELECT pg_advisory_xact_lock_shared(hashtextextended($4::text, 0)) AS l),
         cfg AS (SELECT CASE WHEN $3::bool THEN set_config('synchronous_commit', 'off', true) END AS c),
         cat AS (SELECT count(*) AS n FROM {catalog}
                 WHERE name = $6 AND primary_key = $7 AND (SELECT count(*) FROM lk) = 1),
         ins AS (INSERT INTO {rel} (k, doc)
                 SELECT u.k, u.new::json FROM unnest($1::bytea[], $2::text[]) AS u(k, new)
                 WHERE (SELECT n FROM cat) = 1
                 RETURNING 1),
         msg AS (SELECT count(*) AS n FROM (
                   SELECT pg_logical_emit_message(true, 'remodel.v1', u.m)
                   FROM unnest($5::bytea[]) WITH ORDINALITY AS u(m, o)
                   WHERE (SELECT n FROM cat) = 1 ORDER BY u.o) AS e)
         SELECT CASE WHEN (SELECT n FROM cat) = 1 THEN pg_current_xact_id()::text::bigint
                     ELSE -1 END,
                (SELECT n FROM msg), (SELECT count(*) FROM cfg), (SELECT count(*) FROM ins)"
    )
}
