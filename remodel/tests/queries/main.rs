//! Queries, end to end through the public API (the rustdoc of `Table` and `Query`): reads by
//! key, range and predicate, lazily streamed; secondary indexes (simple, nested, compound,
//! multi) built, listed, dropped and read, also while writers move rows; the total order of
//! values, its byte encoding, and the order of results; aggregates, groups and joins.
//! Expectations are exact values, and two property tests check the order's encoding and the
//! indexes against models written from the documented rules.

#[path = "../common/mod.rs"]
mod common;

mod aggregates;
mod index_model;
mod indexes;
mod order;
mod reads;
