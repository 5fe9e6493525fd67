//! The store, end to end through its public API (README.md's "Quick start" and the rustdoc
//! of `Database`, `Table` and `Batch`): tables and keys, documents and writes with their
//! counts and conflicts, batches, concurrent writers, durability, opening a database and
//! what goes wrong there, the limits on what is stored, and bad input on every entry point.
//! Expectations are exact values; `bad_input` runs random programs against a model of the
//! store.
//!
//! Reads, indexes, the order of values and aggregates are the `queries` binary; changefeeds
//! are `feeds` (exact items) and `feed_oracle` (differential); kills of a writing process are
//! `crashes`. The fixtures these binaries share are in `../common/`.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod batches;
mod concurrent_writes;
mod durability;
mod limits;
mod opening;
mod tables;
mod writes;
