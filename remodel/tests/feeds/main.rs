//! Changefeeds: every feed kind and option, with the exact items expected (point, row, top-N,
//! aggregate and join feeds; squash, overflow, initial rows, states, offsets, types), how a
//! feed ends, what a consumer rebuilds under concurrent writes, and commit order. The tests
//! that pin a defect say which issue found it in their doc comment.
//!
//! The differential suites that check feeds against re-running their query are the
//! `feed_oracle` binary; resuming a feed from a cursor is `resume.rs`.

#[path = "../common/mod.rs"]
mod common;

mod aggregates;
mod consistency;
mod joins;
mod lifecycle;
mod options;
mod point;
mod rows;
mod top_n;
