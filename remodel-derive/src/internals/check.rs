//! From parsed attributes to a checked [`Model`]: each rule is a named function, and every
//! error points at what the user wrote and says what to write instead.

use super::ast::{Field, Index, IndexKind, Model, OnDelete, Relation, RelationKind};
use super::attr::{self, ContainerAttr, RelationAttr};
use darling::util::SpannedValue;
use darling::{Error, FromDeriveInput, Result};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident};

/// Methods of the `Model` trait and names the derive generates: an accessor with one of these
/// names would shadow them.
const RESERVED: &[&str] = &[
    "create",
    "save",
    "update",
    "delete",
    "get",
    "get_many",
    "find",
    "filter",
    "all",
    "count",
    "query",
    "table",
    "changes",
    "watch",
    "get_or_create",
    "schema",
    "fields",
    "key",
    "key_value",
    "set_key",
    "clear_key",
    "field_value",
    "set_field_value",
    "from_json",
    "to_json",
];

/// Parses and checks the derive input.
pub fn checked(input: &DeriveInput) -> Result<Model> {
    rule_struct_with_named_fields(input)?;
    let container = ContainerAttr::from_derive_input(input)?;
    let mut errors = Error::accumulator();
    errors.handle(rule_no_generics(&container));
    errors.handle(attr::serde_container_renames(&container.attrs));
    let fields = collect_fields(&container, &mut errors);
    let table = rule_table_name(&container, &mut errors);
    let primary_key = errors.handle(rule_primary_key(&container, &fields));
    let indexes = rule_indexes(&container, &fields, primary_key, &mut errors);
    let relations = rule_relations(&container, &fields, &mut errors);
    rule_unique_accessors(&relations, &mut errors);
    rule_distinct_keys(&relations, &mut errors);
    rule_keys_are_stored(&fields, primary_key, &relations, &mut errors);
    errors.finish()?;
    Ok(Model {
        ident: container.ident.clone(),
        vis: container.vis.clone(),
        table,
        named_table: container.table.is_some(),
        fields,
        primary_key: primary_key.expect("errors were reported"),
        indexes,
        relations,
        callbacks: container.callbacks.is_present(),
    })
}

/// `snake_case` of a type name: `FavoriteCub` → `favorite_cub`.
pub fn snake(name: &str) -> String {
    cruet::to_snake_case(name)
}

/// The default table name: snake_case plural (`Person` → `people`).
pub fn table_name(name: &str) -> String {
    cruet::to_table_case(name)
}

/// The default foreign key naming a model: `FavoriteCub` → `favorite_cub_id`.
pub fn foreign_key(name: &str) -> String {
    format!("{}_id", snake(name))
}

/// Rule: only structs with named fields can be models (checked before darling so that the
/// message says what to write).
fn rule_struct_with_named_fields(input: &DeriveInput) -> Result<()> {
    let example = format!(
        "write a struct with named fields, like `struct {} {{ id: Option<remodel::model::Id>, name: String }}`",
        input.ident
    );
    match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(_) => Ok(()),
            Fields::Unnamed(f) => Err(Error::custom(format!(
                "#[derive(Model)] needs named fields (they become the document's fields): {example}"
            ))
            .with_span(f)),
            Fields::Unit => Err(Error::custom(format!(
                "#[derive(Model)] needs named fields (they become the document's fields): {example}"
            ))
            .with_span(&input.ident)),
        },
        Data::Enum(e) => Err(Error::custom(format!(
            "#[derive(Model)] works on structs, not enums (a model is one kind of document): {example}"
        ))
        .with_span(&e.enum_token)),
        Data::Union(u) => Err(Error::custom(format!(
            "#[derive(Model)] works on structs, not unions: {example}"
        ))
        .with_span(&u.union_token)),
    }
}

/// Rule: models are not generic (a table holds one kind of document).
fn rule_no_generics(c: &ContainerAttr) -> Result<()> {
    if c.generics.params.is_empty() && c.generics.where_clause.is_none() {
        Ok(())
    } else {
        Err(Error::custom(
            "a model cannot be generic (its table holds one kind of document): remove the \
             type parameters, or derive Model on a concrete wrapper struct",
        )
        .with_span(&c.generics))
    }
}

fn collect_fields(c: &ContainerAttr, errors: &mut darling::error::Accumulator) -> Vec<Field> {
    let fields = c.data.as_ref().take_struct().expect("named struct").fields;
    let mut out = Vec::new();
    for f in fields {
        let ident = f.ident.clone().expect("named fields");
        let own = ident.to_string();
        let own = own.strip_prefix("r#").unwrap_or(&own).to_string();
        // A refused serde attribute is reported; the field still counts (so that no other
        // rule reports it missing).
        let serde = errors
            .handle(attr::serde_field(&f.attrs, &own))
            .unwrap_or_default();
        if let Some(r) = &serde.rename {
            errors.handle(rule_stored_name(r));
        }
        out.push(Field {
            ident,
            ty: f.ty.clone(),
            stored: serde.rename.map_or(own, |r| r.as_str().to_string()),
            skipped: serde.skip,
            aliases: serde.aliases,
            custom: serde.custom,
        });
    }
    out
}

/// Rule: a stored name (serde's `rename`) is one top-level field name: indexes, predicates
/// and orders read a `.` as a step into a nested object, so a stored `"geo.lat"` would never
/// be found by them; an empty name is no field at all.
fn rule_stored_name(name: &SpannedValue<String>) -> Result<()> {
    let why = if name.is_empty() {
        "a field cannot be stored under an empty name"
    } else if name.contains('.') {
        "a stored field name cannot contain `.`: indexes and predicates read it as a path into \
         a nested object, so this field would never be found by them"
    } else {
        return Ok(());
    };
    let suggestion = name.replace('.', "_");
    let suggestion = if suggestion.is_empty() {
        "name".to_string()
    } else {
        suggestion
    };
    Err(
        Error::custom(format!("{why}: write e.g. `rename = \"{suggestion}\"`"))
            .with_span(&name.span()),
    )
}

/// Rule: the table name is the snake_case plural of the type unless given; a given one must
/// be a usable table name.
fn rule_table_name(c: &ContainerAttr, errors: &mut darling::error::Accumulator) -> String {
    match &c.table {
        None => table_name(&c.ident.to_string()),
        Some(t) => {
            let ok = !t.is_empty()
                && t.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
            if !ok {
                errors.push(
                    Error::custom(
                        "a table name is letters, digits, `_` and `-`: write e.g. `table = \"starships\"`",
                    )
                    .with_span(&t.span()),
                );
            }
            t.as_str().to_string()
        }
    }
}

/// Rule: exactly one primary key field: the one marked `#[remodel(primary_key)]`, else the
/// field called `id`.
fn rule_primary_key(c: &ContainerAttr, fields: &[Field]) -> Result<usize> {
    let raw = c.data.as_ref().take_struct().expect("named struct").fields;
    let marked: Vec<usize> = raw
        .iter()
        .enumerate()
        .filter(|(_, f)| f.primary_key.is_present())
        .map(|(i, _)| i)
        .collect();
    match marked.as_slice() {
        [i] => Ok(*i),
        [_, second, ..] => Err(Error::custom(
            "a model has one primary key field: keep `#[remodel(primary_key)]` on one field only",
        )
        .with_span(&raw[*second].primary_key.span())),
        [] => fields.iter().position(|f| f.stored == "id").ok_or_else(|| {
            Error::custom(format!(
                "`{}` has no primary key field: add `id: Option<remodel::model::Id>` (filled in \
                 when the model is created), or mark a field with `#[remodel(primary_key)]`",
                c.ident
            ))
            .with_span(&c.ident)
        }),
    }
}

/// Rule: index names are unique and compound indexes name existing fields.
fn rule_indexes(
    c: &ContainerAttr,
    fields: &[Field],
    primary_key: Option<usize>,
    errors: &mut darling::error::Accumulator,
) -> Vec<Index> {
    let raw = c.data.as_ref().take_struct().expect("named struct").fields;
    let mut out: Vec<(Index, proc_macro2::Span)> = Vec::new();
    for (f, field) in raw.iter().zip(fields) {
        let Some(ix) = &f.index else { continue };
        let span = ix.span.unwrap_or_else(|| field.ident.span());
        if let Some(e) = unindexable(field, "remove `#[remodel(index)]`") {
            errors.push(e.with_span(&span));
        }
        let (path, default_name) = match &ix.path {
            Some(p) => {
                if p.is_empty() || p.split('.').any(str::is_empty) {
                    errors.push(
                        Error::custom(
                            "write a dotted path inside the field, like `path = \"city\"`",
                        )
                        .with_span(&p.span()),
                    );
                }
                (
                    format!("{}.{}", field.stored, p.as_str()),
                    format!("{}_{}", field.stored, p.replace('.', "_")),
                )
            }
            None => (field.stored.clone(), field.stored.clone()),
        };
        let name = ix
            .name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or(default_name);
        let kind = if ix.multi {
            IndexKind::Multi
        } else {
            IndexKind::Simple
        };
        out.push((
            Index {
                name,
                kind,
                paths: vec![path],
            },
            span,
        ));
    }
    for ci in &c.index {
        let mut paths = Vec::new();
        for f in &ci.fields {
            match fields.iter().find(|x| x.ident == *f) {
                Some(x) => {
                    let fix = format!("remove `{f}` from `fields(..)`");
                    if let Some(e) = unindexable(x, &fix) {
                        errors.push(e.with_span(f));
                    }
                    paths.push(x.stored.clone())
                }
                None => errors.push(
                    Error::custom(format!(
                        "`{}` has no field `{f}`: a compound index lists fields of the struct, \
                         like `fields({})`",
                        c.ident,
                        fields
                            .iter()
                            .take(2)
                            .map(|x| x.ident.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .with_span(f),
                ),
            }
        }
        let name = ci
            .name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_else(|| paths.join("_"));
        out.push((
            Index {
                name,
                kind: IndexKind::Compound,
                paths,
            },
            ci.span,
        ));
    }
    let pk = primary_key.map(|i| fields[i].stored.clone());
    for i in 0..out.len() {
        if out[..i].iter().any(|(o, _)| o.name == out[i].0.name) {
            errors.push(
                Error::custom(format!(
                    "two indexes are called `{}`: give this one another name with `name = \"..\"`",
                    out[i].0.name
                ))
                .with_span(&out[i].1),
            );
        }
        if Some(&out[i].0.name) == pk.as_ref() {
            errors.push(
                Error::custom(
                    "the primary key is always indexed: remove `#[remodel(index)]` from it",
                )
                .with_span(&out[i].1),
            );
        }
    }
    out.into_iter().map(|(i, _)| i).collect()
}

/// Why `field` cannot be in an index, if it cannot, ending with `fix`: a field serde skips
/// is never stored (the index would hold no row), and one stored by a `with` function holds
/// values that a lookup or order of its Rust type cannot meet.
fn unindexable(field: &Field, fix: &str) -> Option<Error> {
    if field.skipped {
        Some(Error::custom(format!(
            "a field serde skips is not stored, so it cannot be indexed: {fix} or the skip"
        )))
    } else if field.custom.is_some() {
        Some(Error::custom(format!(
            "a field serde writes through a function of its own (`with`, \
             `serialize_with`) cannot be indexed: the index would hold what \
             is stored, which typed lookups and orders (values of the field's type) do not \
             meet; {fix}, or drop the function"
        )))
    } else {
        None
    }
}

fn last_ident(p: &syn::Path) -> String {
    p.segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default()
}

fn ident_from(name: &str, span: proc_macro2::Span) -> Option<Ident> {
    // Re-spanned, not rebuilt from its text: `Ident::new` panics on a raw `r#type`.
    syn::parse_str::<Ident>(name).ok().map(|mut i| {
        i.set_span(span);
        i
    })
}

/// Rules for each relation: defaults for accessor and keys, a belongs_to's foreign-key field
/// exists, options are used only where they mean something.
fn rule_relations(
    c: &ContainerAttr,
    fields: &[Field],
    errors: &mut darling::error::Accumulator,
) -> Vec<Relation> {
    let me = c.ident.to_string();
    let groups: [(&Vec<RelationAttr>, RelationKind); 4] = [
        (&c.has_many, RelationKind::HasMany),
        (&c.has_one, RelationKind::HasOne),
        (&c.belongs_to, RelationKind::BelongsTo),
        (&c.has_and_belongs_to_many, RelationKind::ManyToMany),
    ];
    let mut out = Vec::new();
    for (attrs, kind) in groups {
        for r in attrs {
            let target = last_ident(&r.target);
            let accessor_name = match &r.accessor {
                Some(a) => a.to_string(),
                None => match kind {
                    RelationKind::HasMany | RelationKind::ManyToMany => table_name(&target),
                    _ => snake(&target),
                },
            };
            let accessor_span = r.accessor.as_ref().map_or(r.target.span(), |a| a.span());
            let Some(accessor) = ident_from(&accessor_name, accessor_span) else {
                errors.push(
                    Error::custom(format!(
                        "`{accessor_name}` is not a method name: write e.g. `accessor = \"officers\"`"
                    ))
                    .with_span(&accessor_span),
                );
                continue;
            };
            let mut foreign_key = match (&r.foreign_key, kind) {
                (Some(f), _) => f.to_string(),
                (None, RelationKind::BelongsTo) => foreign_key(&target),
                (None, _) => foreign_key(&me),
            };
            let mut association_key = String::new();
            if kind == RelationKind::ManyToMany {
                association_key = match &r.association_foreign_key {
                    Some(a) => a.to_string(),
                    None => {
                        let k = foreign_key_of(&target);
                        if k == foreign_key {
                            format!("related_{k}")
                        } else {
                            k
                        }
                    }
                };
                if association_key == foreign_key {
                    errors.push(
                        Error::custom(format!(
                            "both columns of the join table are `{foreign_key}`: give one another \
                             name with `association_foreign_key = \"..\"`"
                        ))
                        .with_span(&r.span),
                    );
                }
            } else {
                for (opt, name) in [
                    (&r.association_foreign_key, "association_foreign_key"),
                    (&r.join_table, "join_table"),
                ] {
                    if let Some(o) = opt {
                        errors.push(
                            Error::custom(format!(
                                "`{name}` applies only to has_and_belongs_to_many: remove it from \
                                 this {}",
                                kind.attr_name()
                            ))
                            .with_span(&o.span()),
                        );
                    }
                }
            }
            if let Some(o) = &r.on_delete {
                if !matches!(kind, RelationKind::HasMany | RelationKind::HasOne) {
                    errors.push(
                        Error::custom(format!(
                            "`on_delete` belongs on the owner's side (has_many or has_one), not on \
                             {}: declare it on `{target}`'s has_many/has_one",
                            kind.attr_name()
                        ))
                        .with_span(&o.span()),
                    );
                }
            }
            let own_field = if kind == RelationKind::BelongsTo {
                let found = own_foreign_key(&me, &target, r, &foreign_key, fields, errors);
                if let Some(i) = found {
                    // At run time relations read and write the field as it is stored.
                    foreign_key = fields[i].stored.clone();
                }
                found
            } else {
                None
            };
            if RESERVED.contains(&accessor_name.as_str()) {
                errors.push(
                    Error::custom(format!(
                        "`{accessor_name}` would shadow the model method of that name: choose \
                         another with `accessor = \"..\"`"
                    ))
                    .with_span(&accessor_span),
                );
            }
            let target_field = if matches!(kind, RelationKind::HasMany | RelationKind::HasOne) {
                let field = ident_from(&foreign_key, r.span);
                if field.is_none() {
                    let span = r.foreign_key.as_ref().map_or(r.span, |f| f.span());
                    errors.push(
                        Error::custom(format!(
                            "`{foreign_key}` is not a field name: `foreign_key` names the field \
                             of `{target}` that holds the key by its Rust name (as it is written \
                             in the struct, not as serde stores it), like `foreign_key = \"{}\"`",
                            foreign_key_of(&me)
                        ))
                        .with_span(&span),
                    );
                }
                field
            } else {
                None
            };
            out.push(Relation {
                kind,
                target: r.target.clone(),
                accessor,
                foreign_key,
                own_field,
                target_field,
                association_key,
                join_table: r.join_table.as_ref().map(|j| j.to_string()),
                on_delete: r.on_delete.as_ref().map_or(OnDelete::Nullify, |o| **o),
                span: r.span,
            });
        }
    }
    out
}

/// belongs_to: the field of this model (`me`) that holds the owner's key, named by
/// `foreign_key`: its Rust name, or the name serde stores it under. Reports a missing field,
/// and a name that is one field's Rust name and another's stored name.
fn own_foreign_key(
    me: &str,
    target: &str,
    r: &RelationAttr,
    foreign_key: &str,
    fields: &[Field],
    errors: &mut darling::error::Accumulator,
) -> Option<usize> {
    // Unstored fields hold no key (serde skips them): a stored field of that name is meant.
    let by_rust = fields
        .iter()
        .position(|f| !f.skipped && f.rust_name() == foreign_key);
    let by_stored = fields
        .iter()
        .position(|f| !f.skipped && f.stored == foreign_key);
    match (by_rust, by_stored) {
        (Some(a), Some(b)) if a != b => {
            errors.push(
                Error::custom(format!(
                    "`{foreign_key}` is the field `{foreign_key}` (stored as `{}`) and the stored \
                     name of the field `{}`: rename one of them so that `foreign_key` names one \
                     field",
                    fields[a].stored,
                    fields[b].rust_name()
                ))
                .with_span(&r.foreign_key.as_ref().map_or(r.span, |f| f.span())),
            );
            None
        }
        (Some(i), _) | (None, Some(i)) => Some(i),
        (None, None) => {
            // Only an unstored field has that name: it is the one meant, and the rule that
            // keys are stored says to remove its skip.
            let unstored = fields
                .iter()
                .position(|f| f.rust_name() == foreign_key || f.stored == foreign_key);
            if unstored.is_some() {
                return unstored;
            }
            let hint = if r.foreign_key.is_some() {
                format!("add a field `{foreign_key}: Option<remodel::model::Id>` to `{me}`")
            } else {
                format!(
                    "add a field `{foreign_key}: Option<remodel::model::Id>` to `{me}`, or \
                     name the field that holds the key with `foreign_key = \"..\"`"
                )
            };
            errors.push(
                Error::custom(format!(
                    "belongs_to({target}) needs a foreign-key field: {hint}"
                ))
                .with_span(&r.span),
            );
            None
        }
    }
}

fn foreign_key_of(target: &str) -> String {
    foreign_key(target)
}

/// Rule: the primary key and belongs_to foreign keys are stored fields (not `serde(skip)`),
/// stored as their type serialises (not by a serde `with` function): keys are looked up,
/// compared and copied as the key type serialises, so a key stored otherwise is never found.
fn rule_keys_are_stored(
    fields: &[Field],
    primary_key: Option<usize>,
    rels: &[Relation],
    errors: &mut darling::error::Accumulator,
) {
    let keys = primary_key
        .into_iter()
        .chain(rels.iter().filter_map(|r| r.own_field));
    for i in keys {
        let f = &fields[i];
        if f.skipped {
            errors.push(
                Error::custom(format!(
                    "`{}` is a key, so it must be stored: remove its `#[serde(skip..)]`",
                    f.ident
                ))
                .with_span(&f.ident),
            );
        }
        if let Some(span) = f.custom {
            errors.push(
                Error::custom(format!(
                    "`{}` is a key, so serde must write and read it as its type does: keys are \
                     looked up and copied as their type serialises, which would not meet what a \
                     `with` / `serialize_with` function stores; remove the \
                     function (a newtype key with its own `Serialize` / `Deserialize` can change \
                     how it is stored)",
                    f.ident
                ))
                .with_span(&span),
            );
        }
    }
}

/// Rule: accessors (and the `set_` / `load_` methods made from them) are unique.
fn rule_unique_accessors(rels: &[Relation], errors: &mut darling::error::Accumulator) {
    for (i, r) in rels.iter().enumerate() {
        if rels[..i].iter().any(|o| o.accessor == r.accessor) {
            errors.push(
                Error::custom(format!(
                    "two relations are reached through `{}`: give this one another name with \
                     `accessor = \"..\"`",
                    r.accessor
                ))
                .with_span(&r.span),
            );
        }
    }
}

/// Rule: two relations to the same model keep separate keys (and join tables), so that they
/// never read or overwrite each other's rows.
fn rule_distinct_keys(rels: &[Relation], errors: &mut darling::error::Accumulator) {
    for (i, r) in rels.iter().enumerate() {
        let target = last_ident(&r.target);
        for o in &rels[..i] {
            if last_ident(&o.target) != target || o.accessor == r.accessor {
                continue;
            }
            let same_side =
                |k: RelationKind| matches!(k, RelationKind::HasMany | RelationKind::HasOne);
            let clash = match (o.kind, r.kind) {
                (a, b) if same_side(a) && same_side(b) => o.foreign_key == r.foreign_key,
                (RelationKind::BelongsTo, RelationKind::BelongsTo) => {
                    o.foreign_key == r.foreign_key
                }
                (RelationKind::ManyToMany, RelationKind::ManyToMany) => {
                    o.join_table == r.join_table
                        && o.foreign_key == r.foreign_key
                        && o.association_key == r.association_key
                }
                _ => false,
            };
            if clash {
                let what = if r.kind == RelationKind::ManyToMany {
                    "its own `join_table = \"..\"`"
                } else {
                    "its own `foreign_key = \"..\"`"
                };
                errors.push(
                    Error::custom(format!(
                        "a second relation to `{target}` (`{}`) would share `{}`'s key: give it {what}",
                        r.accessor, o.accessor
                    ))
                    .with_span(&r.span),
                );
            }
        }
    }
}
