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

/// A temporary database (hard durability, the default).
pub async fn db() -> Database {
    Database::temporary().await.unwrap()
}

/// A temporary database whose writes default to `Soft` durability, for tests that make
/// many small writes and check something other than durability.
pub async fn soft_db() -> Database {
    Config::temporary()
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
