//! Code generation, from the checked model only, one function per generated piece (as
//! serde_derive's `de.rs`/`ser.rs` do). Generated code names only `::remodel` paths (besides
//! `::std` / `::core`), so users depend on the `remodel` crate alone.
//!
//! The pieces: the struct of typed field names ([`fields_struct`]), the `Model` impl
//! ([`model_impl`]: schema, keys, field access, hooks), the relation accessors and batched
//! loaders ([`relation_methods`], shaped by [`RelationShape`]), the foreign keys' stored names
//! ([`foreign_key_name`]) and the schema registration ([`registration`]).

use crate::internals::ast::{Index, IndexKind, Model, OnDelete, Relation, RelationKind};
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

/// Everything `#[derive(Model)]` generates for `m`.
pub fn expand(m: &Model) -> TokenStream {
    let fields = fields_struct(m);
    let methods = relation_methods(m);
    let model = model_impl(m);
    let registration = registration(m);
    quote! {
        #fields
        #methods
        #model
        #registration
    }
}

/// `<Name>Fields`: one typed field name per stored field, except fields stored by a serde
/// `with` function (a typed comparison would compare the Rust value with what that function
/// stored: those fields have no typed name, so such a query does not compile).
fn fields_struct(m: &Model) -> TokenStream {
    let (ident, vis, fields_ident) = (&m.ident, &m.vis, m.fields_ident());
    let decls = m.typed_fields().map(|f| {
        let (fi, ty) = (&f.ident, &f.ty);
        let doc = format!("The stored field `{}`.", f.stored);
        quote! { #[doc = #doc] pub #fi: ::remodel::model::Field<#ident, #ty> }
    });
    let doc = format!(
        "The typed field names of [`{ident}`], for predicates: \
         `<{ident} as remodel::Model>::fields().{}.eq(..)`.",
        m.primary_key().ident
    );
    quote! {
        #[doc = #doc]
        #[derive(Clone, Copy, Debug)]
        #[allow(missing_docs)]
        #vis struct #fields_ident {
            #(#decls,)*
        }
    }
}

/// `impl remodel::model::Model for Name`.
fn model_impl(m: &Model) -> TokenStream {
    let (ident, fields_ident, table) = (&m.ident, m.fields_ident(), &m.table);
    let pk = m.primary_key();
    let (pk_ident, pk_stored) = (&pk.ident, &pk.stored);
    let schema = schema_static(m);
    let field_inits = m.typed_fields().map(|f| {
        let (fi, stored) = (&f.ident, &f.stored);
        quote! { #fi: ::remodel::model::Field::new(#stored) }
    });
    let access = field_access(m);
    let hooks = hooks(m);
    let key = key_methods(m);
    quote! {
        impl ::remodel::model::Model for #ident {
            type Fields = #fields_ident;
            #key

            fn schema() -> &'static ::remodel::model::Schema {
                #schema
            }

            const FIELDS: #fields_ident = #fields_ident { #(#field_inits,)* };

            fn set_key(&mut self, key: ::remodel::Value) -> ::remodel::Result<()> {
                self.#pk_ident = ::remodel::model::__private::field_from_value(#table, #pk_stored, key)?;
                ::std::result::Result::Ok(())
            }

            #access
            #hooks
        }
    }
}

/// `type Key` and `key` / `clear_key`: the key type is the primary-key field's type, or `T`
/// for an `Option<T>` field (which a delete empties).
fn key_methods(m: &Model) -> TokenStream {
    let pk = m.primary_key();
    let pk_ident = &pk.ident;
    match option_inner(&pk.ty) {
        Some(inner) => quote_spanned! {pk.ty.span()=>
            type Key = #inner;

            fn key(&self) -> ::std::option::Option<#inner> {
                ::std::clone::Clone::clone(&self.#pk_ident)
            }

            fn clear_key(&mut self) {
                self.#pk_ident = ::std::option::Option::None;
            }
        },
        None => {
            let ty = &pk.ty;
            quote_spanned! {pk.ty.span()=>
                type Key = #ty;

                fn key(&self) -> ::std::option::Option<#ty> {
                    ::std::option::Option::Some(::std::clone::Clone::clone(&self.#pk_ident))
                }

                fn clear_key(&mut self) {}
            }
        }
    }
}

/// `T` when `ty` is written `Option<T>` (or `std::option::Option<T>`).
fn option_inner(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(p) = ty else {
        return None;
    };
    let last = p.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    match &last.arguments {
        syn::PathArguments::AngleBracketed(args) if args.args.len() == 1 => match &args.args[0] {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// The body of `Model::schema`: a static `Schema` (table, key, fields, indexes, relations).
fn schema_static(m: &Model) -> TokenStream {
    let model_name = m.ident.to_string();
    let (table, named_table) = (&m.table, m.named_table);
    let pk_stored = &m.primary_key().stored;
    let stored_names = m.stored_fields().map(|f| &f.stored);
    let indexes = m.indexes.iter().map(index_def);
    let relations = m.relations.iter().map(relation_def);
    let hooks = m.callbacks;
    let retired = m.stored_fields().flat_map(|f| &f.aliases);
    quote! {
        static SCHEMA: ::remodel::model::Schema = ::remodel::model::Schema {
            model: #model_name,
            table: #table,
            named_table: #named_table,
            primary_key: #pk_stored,
            fields: &[#(#stored_names),*],
            indexes: &[#(#indexes),*],
            relations: &[#(#relations),*],
            hooks: #hooks,
            retired: &[#(#retired),*],
        };
        &SCHEMA
    }
}

/// One `IndexDef`.
fn index_def(ix: &Index) -> TokenStream {
    let (name, paths) = (&ix.name, &ix.paths);
    let kind = match ix.kind {
        IndexKind::Simple => quote!(Simple),
        IndexKind::Multi => quote!(Multi),
        IndexKind::Compound => quote!(Compound),
    };
    quote! {
        ::remodel::model::IndexDef {
            name: #name,
            kind: ::remodel::model::IndexKind::#kind,
            paths: &[#(#paths),*],
        }
    }
}

/// One `RelationDef`.
fn relation_def(r: &Relation) -> TokenStream {
    let (target, assoc) = (&r.target, &r.association_key);
    let fk = foreign_key_name(r);
    let accessor = r.accessor.to_string();
    let kind = format_ident!("{}", RelationShape::of(r.kind).variant);
    let on_delete = match r.on_delete {
        OnDelete::Nullify => quote!(Nullify),
        OnDelete::Cascade => quote!(Cascade),
        OnDelete::Restrict => quote!(Restrict),
    };
    let join_table = match &r.join_table {
        Some(j) => quote!(::core::option::Option::Some(#j)),
        None => quote!(::core::option::Option::None),
    };
    // Spanned at the user's type: "`X` is not a model" points at the attribute.
    let target_schema = quote_spanned! {target.span()=>
        <#target as ::remodel::model::Model>::schema
    };
    quote! {
        ::remodel::model::RelationDef {
            kind: ::remodel::model::RelationKind::#kind,
            accessor: #accessor,
            target: #target_schema,
            foreign_key: #fk,
            association_key: #assoc,
            join_table: #join_table,
            on_delete: ::remodel::model::OnDelete::#on_delete,
        }
    }
}

/// The stored name of a relation's foreign key, as a constant expression. has_many /
/// has_one name a field of the target, whose stored name (serde's `rename`) only the target's
/// derive knows: it is read from the target's typed field names, so a field the target lacks
/// (or has no typed name for) is a compile error at the relation attribute, listing the
/// fields there are. belongs_to and many-to-many keys are known here.
fn foreign_key_name(r: &Relation) -> TokenStream {
    match (&r.target_field, r.kind) {
        (Some(field), RelationKind::HasMany | RelationKind::HasOne) => {
            let target = &r.target;
            quote_spanned! {r.span=>
                <#target as ::remodel::model::Model>::FIELDS.#field.name()
            }
        }
        _ => {
            let fk = &r.foreign_key;
            quote!(#fk)
        }
    }
}

/// What one relation kind generates: its runtime handle and loader, the shape of what the
/// loader returns per row, and the words of the docs. The one place a kind's generated API
/// is described; the runtime side of each kind is `remodel::model::{HasMany, HasOne,
/// BelongsTo, ManyToMany}` and the batched loaders behind `remodel::model::__private::load`.
struct RelationShape {
    /// The variant of `remodel::model::RelationKind`, and the handle type of that name in
    /// `remodel::model`.
    variant: &'static str,
    /// The batched loader in `remodel::model::load`.
    loader: &'static str,
    /// Whether a row has many related rows (`Vec`) or at most one (`Option`).
    many: bool,
    /// How many store queries the loader takes.
    queries: &'static str,
    /// What the accessor gives, after "The {target} ".
    doc: &'static str,
}

impl RelationShape {
    fn of(kind: RelationKind) -> Self {
        match kind {
            RelationKind::HasMany => RelationShape {
                variant: "HasMany",
                loader: "has_many",
                many: true,
                queries: "one store query",
                doc: "rows of this `{model}` (has_many, through the index of `{fk}`): query, all, \
                      filter, get, count, create, create_many, add, remove, clear, set, \
                      get_or_create, changes.",
            },
            RelationKind::HasOne => RelationShape {
                variant: "HasOne",
                loader: "has_one",
                many: false,
                queries: "one store query",
                doc: "of this `{model}` (has_one, through the index of `{fk}`): `.await` it, or \
                      set, clear, changes.",
            },
            RelationKind::BelongsTo => RelationShape {
                variant: "BelongsTo",
                loader: "belongs_to",
                many: false,
                queries: "one store query",
                doc: "this `{model}` belongs to (through `{fk}`): `.await` it for an `Option`, \
                      or watch it with `.changes()`.",
            },
            RelationKind::ManyToMany => RelationShape {
                variant: "ManyToMany",
                loader: "many_to_many",
                many: true,
                queries: "two store queries",
                doc: "rows related to this `{model}` through the shared join table \
                      (has_and_belongs_to_many): query, all, filter, get, count, create, \
                      create_many, add, relate, remove, clear, set, get_or_create, changes \
                      (typed), link_changes, join_changes.",
            },
        }
    }
}

/// The accessors and batched loaders of every relation, in one `impl` block.
fn relation_methods(m: &Model) -> TokenStream {
    if m.relations.is_empty() {
        return quote! {};
    }
    let ident = &m.ident;
    let methods = m
        .relations
        .iter()
        .enumerate()
        .map(|(i, r)| relation_accessors(m, i, r));
    quote! {
        // Generated for every relation: a program need not use them all.
        #[allow(dead_code)]
        impl #ident {
            #(#methods)*
        }
    }
}

/// One relation's accessor, its batched loader, and for belongs_to its setter.
fn relation_accessors(m: &Model, i: usize, r: &Relation) -> TokenStream {
    let (ident, target, acc) = (&m.ident, &r.target, &r.accessor);
    let shape = RelationShape::of(r.kind);
    let rel = quote! { &<#ident as ::remodel::model::Model>::schema().relations[#i] };
    let handle = format_ident!("{}", shape.variant);
    let loader = format_ident!("{}", shape.loader);
    let load = format_ident!("load_{}", acc);
    let per_row = if shape.many {
        quote!(::std::vec::Vec<#target>)
    } else {
        quote!(::std::option::Option<#target>)
    };
    let target_name = quote!(#target).to_string().replace(' ', "");
    let doc = format!(
        "The [`{target_name}`] {}",
        shape
            .doc
            .replace("{model}", &ident.to_string())
            .replace("{fk}", &r.foreign_key)
    );
    let load_doc = format!(
        "The `{acc}` of every row at once ({}), aligned with `rows`.",
        shape.queries
    );
    let setter = (r.kind == RelationKind::BelongsTo).then(|| belongs_to_setter(m, r, &rel));
    // Errors about the target (not a model) point at the user's attribute.
    quote_spanned! {target.span()=>
        #[doc = #doc]
        pub fn #acc(&self, db: &::remodel::Database) -> ::remodel::model::#handle<#ident, #target> {
            ::remodel::model::#handle::new(db, self, #rel)
        }
        #[doc = #load_doc]
        pub async fn #load(db: &::remodel::Database, rows: &[#ident]) -> ::remodel::Result<::std::vec::Vec<#per_row>> {
            ::remodel::model::__private::load::#loader::<#ident, #target>(db, #rel, rows).await
        }
        #setter
    }
}

/// belongs_to's `set_<accessor>`: points the foreign key at an owner (or at nothing).
fn belongs_to_setter(m: &Model, r: &Relation, rel: &TokenStream) -> TokenStream {
    let (target, fk) = (&r.target, &r.foreign_key);
    let set = format_ident!("set_{}", r.accessor);
    let fk_field = &m.fields[r.own_field.expect("checked: a belongs_to has its field")].ident;
    let doc = format!(
        "Points `{fk}` at `owner` (or at nothing); `save` the model to store it. \
         Errors if the owner is not saved."
    );
    quote_spanned! {target.span()=>
        #[doc = #doc]
        pub fn #set(&mut self, owner: ::std::option::Option<&#target>) -> ::remodel::Result<()> {
            self.#fk_field = ::remodel::model::__private::owner_key(#rel, owner)?;
            ::std::result::Result::Ok(())
        }
    }
}

/// `field_value` / `set_field_value`: a field by its stored name (foreign keys, loaders).
/// Only fields stored as their type serialises: the value of one stored by a serde `with`
/// function would not be what is stored.
fn field_access(m: &Model) -> TokenStream {
    let table = &m.table;
    let get_arms = m.typed_fields().map(|f| {
        let (fi, stored) = (&f.ident, &f.stored);
        quote! { #stored => ::remodel::model::__private::to_value(&self.#fi) }
    });
    let set_arms = m.typed_fields().map(|f| {
        let (fi, stored) = (&f.ident, &f.stored);
        quote! {
            #stored => {
                self.#fi = ::remodel::model::__private::field_from_value(#table, #stored, value)?;
                ::std::result::Result::Ok(true)
            }
        }
    });
    quote! {
        fn field_value(&self, name: &str) -> ::std::option::Option<::remodel::Value> {
            match name {
                #(#get_arms,)*
                _ => ::std::option::Option::None,
            }
        }

        fn set_field_value(&mut self, name: &str, value: ::remodel::Value) -> ::remodel::Result<bool> {
            match name {
                #(#set_arms)*
                _ => ::std::result::Result::Ok(false),
            }
        }
    }
}

/// With `#[remodel(callbacks)]`, the hooks delegate to the model's `Callbacks` impl.
fn hooks(m: &Model) -> TokenStream {
    if !m.callbacks {
        return quote! {};
    }
    quote! {
        fn before_save(&mut self, db: &::remodel::Database) -> impl ::std::future::Future<Output = ::remodel::Result<()>> + ::std::marker::Send { <Self as ::remodel::model::Callbacks>::before_save(self, db) }
        fn after_save(&self) { <Self as ::remodel::model::Callbacks>::after_save(self) }
        fn before_delete(&mut self, db: &::remodel::Database) -> impl ::std::future::Future<Output = ::remodel::Result<()>> + ::std::marker::Send { <Self as ::remodel::model::Callbacks>::before_delete(self, db) }
        fn after_delete(&self) { <Self as ::remodel::model::Callbacks>::after_delete(self) }
        fn after_load(&mut self) { <Self as ::remodel::model::Callbacks>::after_load(self) }
    }
}

/// Registers the model for `create_schema` (through `inventory`).
fn registration(m: &Model) -> TokenStream {
    let ident = &m.ident;
    quote! {
        const _: () = {
            ::remodel::model::__private::inventory::submit! {
                ::remodel::model::Registration::of::<#ident>()
            }
        };
    }
}
