//! The `#[remodel(...)]` attributes as written, parsed with darling.
//!
//! Nothing here decides whether the attributes make sense together: that is [`super::check`].
//! Every value keeps its span so that errors point at what the user wrote.

use darling::ast::NestedMeta;
use darling::util::{Flag, SpannedValue};
use darling::{Error, FromDeriveInput, FromField, FromMeta, Result};
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Ident, Lit, Meta, Path, Type, Visibility};

/// The attributes of the struct.
#[derive(FromDeriveInput)]
#[darling(attributes(remodel), supports(struct_named), forward_attrs(serde))]
pub struct ContainerAttr {
    pub ident: Ident,
    pub vis: Visibility,
    pub generics: syn::Generics,
    pub data: darling::ast::Data<darling::util::Ignored, FieldAttr>,
    pub attrs: Vec<Attribute>,
    /// `table = "name"`: the table name instead of the snake_case plural of the type.
    #[darling(default)]
    pub table: Option<SpannedValue<String>>,
    #[darling(multiple)]
    pub has_many: Vec<RelationAttr>,
    #[darling(multiple)]
    pub has_one: Vec<RelationAttr>,
    #[darling(multiple)]
    pub belongs_to: Vec<RelationAttr>,
    #[darling(multiple)]
    pub has_and_belongs_to_many: Vec<RelationAttr>,
    /// `index(name = "..", fields(a, b))`: compound indexes.
    #[darling(multiple)]
    pub index: Vec<CompoundIndexAttr>,
    /// `callbacks`: the model implements `remodel::model::Callbacks`.
    pub callbacks: Flag,
}

/// The attributes of one field.
#[derive(FromField)]
#[darling(attributes(remodel), forward_attrs(serde))]
pub struct FieldAttr {
    pub ident: Option<Ident>,
    pub ty: Type,
    pub attrs: Vec<Attribute>,
    /// `primary_key`: this field is the primary key (default: the field called `id`).
    pub primary_key: Flag,
    /// `index`, `index(multi)`, `index(name = "..", path = "nested.path")`.
    #[darling(default)]
    pub index: Option<FieldIndexAttr>,
}

/// `on_delete = nullify | cascade | restrict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    Nullify,
    Cascade,
    Restrict,
}

/// One relation attribute: `has_many(Target, accessor = "..", foreign_key = "..", ...)`.
pub struct RelationAttr {
    /// The whole attribute, for errors about it.
    pub span: Span,
    pub target: Path,
    pub accessor: Option<SpannedValue<String>>,
    pub foreign_key: Option<SpannedValue<String>>,
    pub association_foreign_key: Option<SpannedValue<String>>,
    pub join_table: Option<SpannedValue<String>>,
    pub on_delete: Option<SpannedValue<OnDelete>>,
}

const RELATION_OPTIONS: &[&str] = &[
    "accessor",
    "foreign_key",
    "association_foreign_key",
    "join_table",
    "on_delete",
];

/// A string option: `name = "value"` (or a bare identifier, `name = value`).
fn string_value(nv: &syn::MetaNameValue) -> Result<SpannedValue<String>> {
    let span = nv.value.span();
    let s = match &nv.value {
        Expr::Lit(l) => match &l.lit {
            Lit::Str(s) => s.value(),
            other => {
                return Err(Error::custom(format!(
                    "expected a string here, like `{} = \"name\"`",
                    path_name(&nv.path)
                ))
                .with_span(other))
            }
        },
        Expr::Path(p) if p.path.get_ident().is_some() => p.path.get_ident().unwrap().to_string(),
        other => {
            return Err(Error::custom(format!(
                "expected a string here, like `{} = \"name\"`",
                path_name(&nv.path)
            ))
            .with_span(other))
        }
    };
    Ok(SpannedValue::new(s, span))
}

fn path_name(p: &Path) -> String {
    p.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

impl FromMeta for RelationAttr {
    fn from_meta(item: &Meta) -> Result<Self> {
        let span = item.span();
        let kind = path_name(item.path());
        let list = match item {
            Meta::List(l) => l,
            _ => {
                return Err(Error::custom(format!(
                    "name the related model: write `{kind}(OtherModel)`"
                ))
                .with_span(item))
            }
        };
        let items = NestedMeta::parse_meta_list(list.tokens.clone())?;
        let mut iter = items.iter();
        let target = match iter.next() {
            Some(NestedMeta::Meta(Meta::Path(p))) => p.clone(),
            Some(other) => {
                return Err(Error::custom(format!(
                    "the first item is the related model's type: write `{kind}(OtherModel, ...)`"
                ))
                .with_span(other))
            }
            None => {
                return Err(Error::custom(format!(
                    "name the related model: write `{kind}(OtherModel)`"
                ))
                .with_span(item))
            }
        };
        let mut rel = RelationAttr {
            span,
            target,
            accessor: None,
            foreign_key: None,
            association_foreign_key: None,
            join_table: None,
            on_delete: None,
        };
        let mut errors = Error::accumulator();
        for nested in iter {
            let nv = match nested {
                NestedMeta::Meta(Meta::NameValue(nv)) => nv,
                other => {
                    errors.push(
                        Error::custom(format!(
                            "expected an option like `accessor = \"name\"`; the options of \
                             `{kind}` are: {}",
                            RELATION_OPTIONS.join(", ")
                        ))
                        .with_span(other),
                    );
                    continue;
                }
            };
            let name = path_name(&nv.path);
            let slot = match name.as_str() {
                "accessor" => &mut rel.accessor,
                "foreign_key" => &mut rel.foreign_key,
                "association_foreign_key" => &mut rel.association_foreign_key,
                "join_table" => &mut rel.join_table,
                "on_delete" => {
                    if let Some(v) = errors.handle(string_value(nv)) {
                        let parsed = match v.as_str() {
                            "nullify" => Some(OnDelete::Nullify),
                            "cascade" => Some(OnDelete::Cascade),
                            "restrict" => Some(OnDelete::Restrict),
                            _ => None,
                        };
                        match parsed {
                            Some(p) => rel.on_delete = Some(SpannedValue::new(p, v.span())),
                            None => errors.push(
                                Error::custom(format!(
                                    "unknown on_delete `{}`: write `on_delete = \"nullify\"` \
                                     (the default), `\"cascade\"` or `\"restrict\"`",
                                    v.as_str()
                                ))
                                .with_span(&v.span()),
                            ),
                        }
                    }
                    continue;
                }
                _ => {
                    errors.push(
                        Error::unknown_field_with_alts(&name, RELATION_OPTIONS.iter())
                            .with_span(&nv.path),
                    );
                    continue;
                }
            };
            if slot.is_some() {
                errors.push(Error::duplicate_field(&name).with_span(&nv.path));
                continue;
            }
            if let Some(v) = errors.handle(string_value(nv)) {
                *slot = Some(v);
            }
        }
        errors.finish_with(rel)
    }
}

/// `#[remodel(index ...)]` on a field.
#[derive(Default)]
pub struct FieldIndexAttr {
    pub span: Option<Span>,
    pub name: Option<SpannedValue<String>>,
    /// A path inside the field (`path = "city"` on `address` indexes `address.city`).
    pub path: Option<SpannedValue<String>>,
    pub multi: bool,
}

const FIELD_INDEX_OPTIONS: &[&str] = &["name", "path", "multi"];

impl FromMeta for FieldIndexAttr {
    fn from_meta(item: &Meta) -> Result<Self> {
        let mut attr = match item {
            Meta::Path(_) => FieldIndexAttr::default(),
            Meta::List(l) => {
                let items = NestedMeta::parse_meta_list(l.tokens.clone())?;
                let mut attr = FieldIndexAttr::default();
                let mut errors = Error::accumulator();
                for nested in &items {
                    match nested {
                        NestedMeta::Meta(Meta::Path(p)) if p.is_ident("multi") => attr.multi = true,
                        NestedMeta::Meta(Meta::NameValue(nv)) if nv.path.is_ident("name") => {
                            attr.name = errors.handle(string_value(nv))
                        }
                        NestedMeta::Meta(Meta::NameValue(nv)) if nv.path.is_ident("path") => {
                            attr.path = errors.handle(string_value(nv))
                        }
                        NestedMeta::Meta(m) => errors.push(
                            Error::unknown_field_with_alts(
                                &path_name(m.path()),
                                FIELD_INDEX_OPTIONS.iter(),
                            )
                            .with_span(m.path()),
                        ),
                        other => errors.push(
                            Error::custom(
                                "expected `multi`, `name = \"..\"` or `path = \"..\"` here",
                            )
                            .with_span(other),
                        ),
                    }
                }
                errors.finish_with(attr)?
            }
            Meta::NameValue(nv) => {
                return Err(Error::custom(
                    "write `index`, `index(multi)` or `index(name = \"..\", path = \"..\")`",
                )
                .with_span(nv))
            }
        };
        attr.span = Some(item.span());
        Ok(attr)
    }
}

/// `#[remodel(index(name = "..", fields(a, b)))]` on the struct: a compound index.
pub struct CompoundIndexAttr {
    pub span: Span,
    pub name: Option<SpannedValue<String>>,
    pub fields: Vec<Ident>,
}

impl FromMeta for CompoundIndexAttr {
    fn from_meta(item: &Meta) -> Result<Self> {
        const HINT: &str =
            "a struct-level index is compound: write `index(name = \"rank_species\", fields(rank, species))`; \
             put `#[remodel(index)]` on a field for a simple one";
        let list = match item {
            Meta::List(l) => l,
            _ => return Err(Error::custom(HINT).with_span(item)),
        };
        let items = NestedMeta::parse_meta_list(list.tokens.clone())?;
        let mut attr = CompoundIndexAttr {
            span: item.span(),
            name: None,
            fields: Vec::new(),
        };
        let mut errors = Error::accumulator();
        for nested in &items {
            match nested {
                NestedMeta::Meta(Meta::NameValue(nv)) if nv.path.is_ident("name") => {
                    attr.name = errors.handle(string_value(nv))
                }
                NestedMeta::Meta(Meta::List(l)) if l.path.is_ident("fields") => {
                    match NestedMeta::parse_meta_list(l.tokens.clone()) {
                        Ok(fs) => {
                            for f in fs {
                                match f {
                                    NestedMeta::Meta(Meta::Path(p)) if p.get_ident().is_some() => {
                                        attr.fields.push(p.get_ident().unwrap().clone())
                                    }
                                    other => errors.push(
                                        Error::custom("expected a field name, like `rank`")
                                            .with_span(&other),
                                    ),
                                }
                            }
                        }
                        Err(e) => errors.push(e.into()),
                    }
                }
                other => errors.push(Error::custom(HINT).with_span(other)),
            }
        }
        if attr.fields.len() < 2 {
            errors.push(Error::custom(HINT).with_span(item));
        }
        errors.finish_with(attr)
    }
}

/// What serde's field attributes change about where a field is stored.
#[derive(Default)]
pub struct SerdeField {
    /// `#[serde(rename = "..")]`, or `rename(serialize = "..", deserialize = "..")` with one
    /// name for both directions (see [`serde_field`]). The span is the name's.
    pub rename: Option<SpannedValue<String>>,
    /// `#[serde(alias = "..")]`: older names the field is read from (a renamed field).
    pub aliases: Vec<String>,
    /// `skip`, `skip_serializing` or `skip_deserializing`: a field that is not written (or
    /// not read) is not a stored field the model layer can rely on.
    pub skip: bool,
    /// `with` or `serialize_with` (the attribute's span): the field is
    /// stored as a function of the user's writes it, not as its Rust type serialises, so
    /// nothing that compares stored values with Rust values (keys, indexes, typed
    /// predicates) can use it.
    pub custom: Option<Span>,
}

/// Reads serde's field attributes; `flatten` is refused (its fields are stored at the top
/// level under names the derive cannot see), and so is a `rename` list that writes the field
/// under one name and reads it from another (the model layer reads and writes one name).
/// `field` is the field's own name, which serde uses for a direction `rename` leaves out.
pub fn serde_field(attrs: &[Attribute], field: &str) -> Result<SerdeField> {
    let mut out = SerdeField::default();
    let mut errors = Error::accumulator();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let Meta::List(list) = &attr.meta else {
            continue;
        };
        for nested in NestedMeta::parse_meta_list(list.tokens.clone())? {
            let NestedMeta::Meta(m) = nested else {
                continue;
            };
            let path = m.path();
            if path.is_ident("skip")
                || path.is_ident("skip_serializing")
                || path.is_ident("skip_deserializing")
            {
                out.skip = true;
            } else if path.is_ident("with") || path.is_ident("serialize_with") {
                // Stored as the function writes it (`deserialize_with` only reads: the field
                // is stored as its type serialises, and keeps its typed name).
                out.custom = Some(path.span());
            } else if path.is_ident("flatten") {
                errors.push(
                    Error::custom(
                        "#[derive(Model)] does not follow `#[serde(flatten)]`: write the flattened \
                         fields in the model, or keep them nested (without flatten)",
                    )
                    .with_span(&m),
                );
            } else if let (Meta::List(l), true) = (&m, path.is_ident("rename")) {
                if let Some(r) = errors.handle(rename_list(l, field)) {
                    out.rename = Some(r);
                }
            } else if let Meta::NameValue(nv) = &m {
                if let Expr::Lit(l) = &nv.value {
                    if let Lit::Str(s) = &l.lit {
                        if nv.path.is_ident("rename") {
                            out.rename = Some(SpannedValue::new(s.value(), s.span()));
                        } else if nv.path.is_ident("alias") {
                            out.aliases.push(s.value());
                        }
                    }
                }
            }
        }
    }
    errors.finish_with(out)
}

/// `rename(serialize = "..", deserialize = "..")`: the one name the field is stored under.
/// A direction left out keeps the field's own name (`field`), as serde does; two different
/// names are refused.
fn rename_list(list: &syn::MetaList, field: &str) -> Result<SpannedValue<String>> {
    let mut serialize = None;
    let mut deserialize = None;
    for nested in NestedMeta::parse_meta_list(list.tokens.clone())? {
        let slot = match &nested {
            NestedMeta::Meta(Meta::NameValue(nv)) if nv.path.is_ident("serialize") => {
                &mut serialize
            }
            NestedMeta::Meta(Meta::NameValue(nv)) if nv.path.is_ident("deserialize") => {
                &mut deserialize
            }
            // serde reports anything else itself.
            _ => continue,
        };
        if let NestedMeta::Meta(Meta::NameValue(nv)) = &nested {
            if let Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) = &nv.value
            {
                *slot = Some(SpannedValue::new(s.value(), s.span()));
            }
        }
    }
    let written = serialize
        .clone()
        .unwrap_or_else(|| SpannedValue::new(field.to_string(), list.span()));
    let read = deserialize.unwrap_or_else(|| SpannedValue::new(field.to_string(), list.span()));
    if *written != *read {
        let old = if *read == field || *read == *written {
            String::new()
        } else {
            format!(
                ", with `alias = \"{}\"` to read rows stored under the old name",
                *read
            )
        };
        return Err(Error::custom(format!(
            "this field would be written as `{}` and read as `{}`, but a model stores each field \
             under one name: write `#[serde(rename = \"{}\")]`{old}",
            *written, *read, *written
        ))
        .with_span(list));
    }
    Ok(written)
}

/// Container-level serde attributes that change stored field names, which the model layer
/// does not follow: reported as errors rather than silently producing wrong field names.
pub fn serde_container_renames(attrs: &[Attribute]) -> Result<()> {
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let Meta::List(list) = &attr.meta else {
            continue;
        };
        for nested in NestedMeta::parse_meta_list(list.tokens.clone())? {
            if let NestedMeta::Meta(m) = &nested {
                if m.path().is_ident("rename_all") {
                    return Err(Error::custom(
                        "#[derive(Model)] does not follow `#[serde(rename_all)]`: rename the \
                         fields one by one with `#[serde(rename = \"..\")]`",
                    )
                    .with_span(m));
                }
            }
        }
    }
    Ok(())
}
