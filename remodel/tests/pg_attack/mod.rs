//! What the PostgreSQL attack suites (`pg_group_commit_attack`, `pg_ddl_attack`,
//! `pg_replication_attack`) share: a test database on the throwaway cluster, a seeded
//! generator, and the advisory locks left in the database. Each suite includes it with
//! `mod pg_attack;` and uses what it needs of it.
#![allow(dead_code)]

use remodel::postgres::tokio_postgres::Client;
use remodel::postgres::{TestCluster, TestDatabase};

/// A database of its own on the shared throwaway cluster, or `None` (the test is skipped)
/// when PostgreSQL is not installed.
pub async fn database(test: &str) -> Option<TestDatabase> {
    let cluster = TestCluster::shared_or_skip(test)?;
    Some(cluster.create_database().await.expect("a test database"))
}

/// A throwaway cluster of the test's own, for tests that stop its server (never the shared
/// one), or `None` (the test is skipped) when PostgreSQL is not installed or the tests run
/// against the server of `REMODEL_PG_URL`, which is not theirs to stop.
pub fn own_cluster(test: &str) -> Option<TestCluster> {
    match TestCluster::start() {
        Ok(c) if !c.is_external() => Some(c),
        Ok(_) => {
            eprintln!("{test}: skipped (an external server is not stopped by tests)");
            None
        }
        Err(e) => {
            remodel::postgres::skip_or_fail(test, &e);
            None
        }
    }
}

/// The seed in the environment variable `var`, or one from the clock; printed as
/// `var=seed`, so that a failing run can be replayed.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{var}={seed}");
    seed
}

/// Fails the test with the first 40 of `failures`, if any (`what`: the run, e.g. its seed).
pub fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A small deterministic generator (splitmix64), one per task.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The advisory locks of tables `t0` .. `t{tables - 1}` held, and any advisory lock
/// awaited, in the test database, with their sessions (`remodel:<schema>.t_<table>`, see
/// `schema::lock_name`; the archiver's session lock, held by one process for as long as it
/// runs, is not a table's).
pub async fn advisory_locks(client: &Client, tables: usize) -> Vec<String> {
    let rows = client
        .query(
            "SELECT l.pid, l.granted, l.mode, coalesce(a.state, '?'), coalesce(a.query, '?') \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.database = \
               (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND (NOT l.granted OR ((l.classid::bigint << 32) | l.objid::bigint) = ANY( \
               SELECT hashtextextended('remodel:remodel.t_t' || n, 0) \
               FROM generate_series(0, $1::int - 1) AS n))",
            &[&(tables as i32)],
        )
        .await
        .expect("pg_locks");
    rows.iter()
        .map(|r| {
            format!(
                "pid {} granted {} mode {} state {} query {}",
                r.get::<_, i32>(0),
                r.get::<_, bool>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, String>(4)
            )
        })
        .collect()
}
