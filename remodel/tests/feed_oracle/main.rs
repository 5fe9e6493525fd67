//! The changefeed oracles: differential, model-based tests of every feed kind and option.
//! After every random write, what a consumer rebuilds from a feed's items must equal
//! re-running the feed's query, and each item is checked on its own.
//!
//! - `rows`: row, point and top-N feeds, with every option;
//! - `aggregates`: live aggregates and groups;
//! - `joins`: live `eq_join`s.
//!
//! The feeds' exact items, example by example, are the `feeds` binary.

#[path = "../common/mod.rs"]
mod common;

mod aggregates;
mod joins;
mod rows;
