//! Fixtures shared by the test binaries of `remodel/tests`, in one place. Each binary is a
//! folder (`store/`, `queries/`, `feeds/`, `feed_oracle/`, `crashes/`) whose `main.rs`
//! includes this module with `#[path = "../common/mod.rs"] mod common;`; a binary uses what
//! it needs of it.
//!
//! - [`crew`]: the `crew` table of the store and query tests, and helpers that compare rows;
//! - [`files`]: databases in folders: unique scratch folders, reopening, small file systems;
//! - [`feeds`]: a database for one feed, and the items a feed has queued;
//! - [`rules`]: the documented rules that the model-based tests check the store against;
//! - here: temporary databases, and [`test_name!`] for tests that re-execute their binary.

// Each binary uses a part of the fixtures.
#![allow(dead_code, unused_macros)]

pub mod crew;
pub mod feeds;
pub mod files;
pub mod rules;

use remodel::{Config, Database, Durability};

/// A temporary database (hard durability, the default); on PostgreSQL when the suites run
/// there (`REMODEL_TEST_BACKEND=postgres`, see `remodel::postgres::suite_database`).
pub async fn db() -> Database {
    if remodel::postgres::suites_on_postgres() {
        return remodel::postgres::suite_database().await;
    }
    temporary().open().await.unwrap()
}

/// The configuration of the suites' temporary databases: `Config::temporary()`, or with
/// `REMODEL_TEST_BACKEND=memory`, `Config::in_memory()` (the in-memory storage engine).
pub fn temporary() -> Config {
    if std::env::var("REMODEL_TEST_BACKEND").is_ok_and(|v| v == "memory") {
        Config::in_memory()
    } else {
        Config::temporary()
    }
}

/// A temporary database whose writes default to `Soft` durability, for tests that make
/// many small writes and check something other than durability (on PostgreSQL when the
/// suites run there).
pub async fn soft_db() -> Database {
    if remodel::postgres::suites_on_postgres() {
        return remodel::postgres::suite_database().await;
    }
    temporary()
        .durability(Durability::Soft)
        .open()
        .await
        .unwrap()
}

/// The name under which the test harness lists `$test`, a test function of the calling
/// module (its module path without the binary's name), for a test that runs its own binary
/// again as a child process with `--exact`. Naming the function makes a typo or a move a
/// compile error instead of a child that runs no test.
macro_rules! test_name {
    ($test:ident) => {{
        let _ = $test;
        match module_path!().split_once("::") {
            Some((_, module)) => format!("{module}::{}", stringify!($test)),
            None => stringify!($test).to_string(),
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use test_name;

/// A temporary database whose writes default to `durability` (on PostgreSQL when the suites
/// run there, where durability is per write).
pub async fn open(durability: Durability) -> remodel::Result<Database> {
    if remodel::postgres::suites_on_postgres() {
        return Ok(remodel::postgres::suite_database().await);
    }
    temporary().durability(durability).open().await
}

/// How many cases a property test runs: `cases` on the embedded store, an eighth (at least 4)
/// on PostgreSQL, where each case starts a database of its own and a replica of it.
pub fn scaled_cases(cases: u32) -> u32 {
    if remodel::postgres::suites_on_postgres() {
        (cases / 8).max(4)
    } else {
        cases
    }
}

/// A canonical text of a value (object keys sorted, recursively): equal values, whatever
/// their keys' order, have equal texts.
pub fn canon(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                let b: std::collections::BTreeMap<_, _> =
                    m.iter().map(|(k, v)| (k.clone(), sorted(v))).collect();
                Value::Object(b.into_iter().collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            v => v.clone(),
        }
    }
    sorted(v).to_string()
}
