//! Crashes: a process that writes is killed with SIGKILL at random moments, and what it
//! acknowledged, or what a subscriber saw, must survive the reopen. Each test runs this
//! binary again as the child that writes (a test that does nothing unless its environment
//! variable is set), selected by its exact name.
//!
//! - `writes`: every acknowledged write survives and every index agrees with the documents,
//!   also with the change log's redo, during index drops and on a full disk;
//! - `feeds`: what a subscriber has seen, a crash cannot take back.

#[path = "../common/mod.rs"]
mod common;

mod feeds;
mod writes;
