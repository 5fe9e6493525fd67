//! Relations: every kind and option (`kinds`: has_many, belongs_to, has_one,
//! has_and_belongs_to_many through one shared join table, self-referencing, two relations to
//! the same model, the errors of unsaved parents, lookups through the foreign-key index), and
//! what deleting an owner does to its children (`on_delete`: nullify, cascade, restrict, all
//! in one commit). A test that pins a mistake of the Python Remodel names it in its doc
//! comment.
//!
//! The Starfleet models (`Starship`, `Crewmember`, `Captain`) are in `../common/`; the
//! models of one kind or option are declared beside their tests.

#[path = "../common/mod.rs"]
mod common;

mod kinds;
mod on_delete;
