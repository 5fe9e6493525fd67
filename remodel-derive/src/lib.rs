//! `#[derive(Model)]` for [Remodel](https://docs.rs/remodel): plain serde structs become
//! models with their table, indexes, relations and typed field names.
//!
//! Use it through the `remodel` crate (`use remodel::Model;`), which re-exports it together
//! with the `Model` trait it implements. The attributes:
//!
//! | where | attribute | meaning |
//! |---|---|---|
//! | struct | `table = "name"` | the table (default: snake_case plural of the type, `Person` → `people`) |
//! | struct | `has_many(Target, accessor = "..", foreign_key = "..", on_delete = "..")` | children holding this model's key (default key `owner_type_id`) |
//! | struct | `has_one(Target, ...)` | one child holding this model's key |
//! | struct | `belongs_to(Target, accessor = "..", foreign_key = "..")` | this model holds the owner's key in a field (default `target_type_id`) |
//! | struct | `has_and_belongs_to_many(Target, accessor, foreign_key, association_foreign_key, join_table)` | many-to-many through a join table shared by both sides |
//! | struct | `index(name = "..", fields(a, b))` | a compound index |
//! | struct | `callbacks` | the hooks call the model's `remodel::model::Callbacks` impl |
//! | field | `primary_key` | the primary key (default: the field `id`) |
//! | field | `index`, `index(multi)`, `index(name = "..", path = "nested.path")` | a secondary index (the one `fields().<field>.index()` orders by, except with `path`) |
//!
//! `on_delete` is `"nullify"` (the default: children lose the key), `"cascade"` or
//! `"restrict"`. Mistakes are compile errors at the attribute, saying what to write instead.
//!
//! A `foreign_key` names a field by its Rust name (has_many / has_one: a field of the target;
//! belongs_to: a field of this model, which may also be named as serde stores it); at run
//! time every relation reads and writes the field under its stored name, so a foreign-key
//! field renamed with `#[serde(rename = "..")]` works from both sides.
//!
//! ## serde's attributes
//!
//! - `rename = ".."`, and `rename(serialize = "..", deserialize = "..")` when both name the
//!   same: the field's stored name, used by the schema, indexes, typed field names and
//!   relations. A list whose two names differ is a compile error (a model reads and writes
//!   one name: rename, with `alias` to read older rows), and so is a stored name that is
//!   empty or contains `.` (indexes and predicates would read it as a nested path).
//!   `rename_all` and `flatten` are refused.
//! - `skip` (and `skip_serializing` / `skip_deserializing`): the field is not stored, so it
//!   has no typed field name and cannot be a key or in an index (simple or compound).
//! - `alias = ".."`: older rows are read from that name; every write stores the new one.
//! - `with`, `serialize_with`: the field is stored as the function writes
//!   it, not as its type serialises, so nothing that compares stored values with values of
//!   its type can use it. Such a field cannot be the primary key, a belongs_to foreign key
//!   or in an index (compile errors), and has **no typed field name**: `fields().n.eq(7)`
//!   does not compile (a has_many naming it as the foreign key neither), rather than
//!   comparing `7` with a stored `"7"`. It is stored and read back as serde does; query it
//!   untyped, by its stored form: `remodel::field("n").eq("7")`.
//!
//! The crate is laid out like serde_derive: `internals::attr` parses the attributes (with
//! darling), `internals::check` applies the rules and builds the checked
//! `internals::ast::Model`, and `expand` generates code from that model only.

extern crate proc_macro;

mod expand;
mod internals;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `remodel::model::Model` for a struct with named fields. See the crate docs for the
/// attributes and `remodel::model` for what a model can do.
#[proc_macro_derive(Model, attributes(remodel))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match internals::check::checked(&input) {
        Ok(model) => expand::expand(&model).into(),
        Err(e) => e.write_errors().into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::internals::check::{foreign_key, snake, table_name};

    #[test]
    fn naming_rules() {
        assert_eq!(table_name("Starship"), "starships");
        assert_eq!(table_name("Crewmember"), "crewmembers");
        assert_eq!(table_name("Person"), "people");
        assert_eq!(table_name("FavoriteCub"), "favorite_cubs");
        assert_eq!(snake("FavoriteCub"), "favorite_cub");
        assert_eq!(foreign_key("FavoriteCub"), "favorite_cub_id");
        assert_eq!(foreign_key("Starship"), "starship_id");
    }
}
