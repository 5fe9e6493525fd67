//! Models: CRUD, typed queries, naming rules, decode errors, unknown fields, get_or_create,
//! schema and registration errors, callbacks, two databases in one process (`crud`); and
//! writes decided when they commit, against the row as it is then (`writes`); transactions across models (`transactions`); schema evolution (`evolution`); the write paths storing one document (`write_paths`). A test that
//! pins a mistake of the Python Remodel names it in its doc comment.
//!
//! Relations are the `relations` binary, live models `live`, concurrent model writes
//! `model_races`. The Starfleet models the binaries share are in `../common/`.

#[path = "../common/mod.rs"]
mod common;

mod crud;
mod evolution;
mod transactions;
mod typed_paths;
mod write_paths;
mod writes;
