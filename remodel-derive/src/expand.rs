//! Code generation, from the checked model only. Generated code names only `::remodel` paths
//! (besides `::std` / `::core`), so users depend on the `remodel` crate alone.

use crate::internals::ast::{IndexKind, Model, OnDelete, RelationKind};
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

pub fn expand(m: &Model) -> TokenStream {
    let ident = &m.ident;
    let vis = &m.vis;
    let fields_ident = m.fields_ident();
    let table = &m.table;
    let model_name = ident.to_string();
    let pk = m.primary_key();
    let pk_ident = &pk.ident;
    let pk_stored = &pk.stored;

    // The typed field names.
    let field_decls = m.stored_fields().map(|f| {
        let (fi, ty) = (&f.ident, &f.ty);
        let doc = format!("The stored field `{}`.", f.stored);
        quote! { #[doc = #doc] pub #fi: ::remodel::model::Field<#ident, #ty> }
    });
    let field_inits = m.stored_fields().map(|f| {
        let (fi, stored) = (&f.ident, &f.stored);
        quote! { #fi: ::remodel::model::Field::new(#stored) }
    });
    let stored_names = m.stored_fields().map(|f| &f.stored);
    let fields_doc = format!(
        "The typed field names of [`{model_name}`], for predicates: \
         `<{model_name} as remodel::Model>::fields().{}.eq(..)`.",
        pk_ident
    );

    // Indexes.
    let indexes = m.indexes.iter().map(|ix| {
        let name = &ix.name;
        let paths = &ix.paths;
        let kind = match ix.kind {
            IndexKind::Simple => quote!(::remodel::model::IndexKind::Simple),
            IndexKind::Multi => quote!(::remodel::model::IndexKind::Multi),
            IndexKind::Compound => quote!(::remodel::model::IndexKind::Compound),
        };
        quote! { ::remodel::model::IndexDef { name: #name, kind: #kind, paths: &[#(#paths),*] } }
    });

    // Relations: descriptors, accessors, batched loaders, compile-time checks.
    let mut relation_defs = Vec::new();
    let mut methods = Vec::new();
    let mut checks = Vec::new();
    for (i, r) in m.relations.iter().enumerate() {
        let target = &r.target;
        let acc = &r.accessor;
        let acc_name = acc.to_string();
        let fk = &r.foreign_key;
        let assoc = &r.association_key;
        let kind = match r.kind {
            RelationKind::HasMany => quote!(::remodel::model::RelationKind::HasMany),
            RelationKind::HasOne => quote!(::remodel::model::RelationKind::HasOne),
            RelationKind::BelongsTo => quote!(::remodel::model::RelationKind::BelongsTo),
            RelationKind::ManyToMany => quote!(::remodel::model::RelationKind::ManyToMany),
        };
        let on_delete = match r.on_delete {
            OnDelete::Nullify => quote!(::remodel::model::OnDelete::Nullify),
            OnDelete::Cascade => quote!(::remodel::model::OnDelete::Cascade),
            OnDelete::Restrict => quote!(::remodel::model::OnDelete::Restrict),
        };
        let join_table = match &r.join_table {
            Some(j) => quote!(::core::option::Option::Some(#j)),
            None => quote!(::core::option::Option::None),
        };
        // Spanned at the user's type: "`X` is not a model" points at the attribute.
        let target_schema = quote_spanned! {target.span()=>
            <#target as ::remodel::model::Model>::schema
        };
        relation_defs.push(quote! {
            ::remodel::model::RelationDef {
                kind: #kind,
                accessor: #acc_name,
                target: #target_schema,
                foreign_key: #fk,
                association_key: #assoc,
                join_table: #join_table,
                on_delete: #on_delete,
            }
        });
        let rel = quote! { &<#ident as ::remodel::model::Model>::schema().relations[#i] };
        // Errors about the target (not a model) point at the user's attribute.
        let tspan = target.span();
        let load = format_ident!("load_{}", acc);
        let model_doc = format!("[`{}`]", quote!(#target).to_string().replace(' ', ""));
        match r.kind {
            RelationKind::HasMany => {
                let doc = format!(
                    "The {model_doc} rows of this `{model_name}` (has_many, through the index \
                     `{fk}`): all, filter, get, count, create, add, remove, clear, set, changes."
                );
                let ldoc = format!(
                    "The `{acc_name}` of every row at once (one store query), aligned with `rows`."
                );
                methods.push(quote_spanned! {tspan=>
                    #[doc = #doc]
                    pub fn #acc(&self, db: &::remodel::Database) -> ::remodel::model::HasMany<#ident, #target> {
                        ::remodel::model::HasMany::new(db, self, #rel)
                    }
                    #[doc = #ldoc]
                    pub async fn #load(db: &::remodel::Database, rows: &[#ident]) -> ::remodel::Result<::std::vec::Vec<::std::vec::Vec<#target>>> {
                        ::remodel::model::load::has_many::<#ident, #target>(db, #rel, rows).await
                    }
                });
            }
            RelationKind::HasOne => {
                let doc = format!(
                    "The {model_doc} of this `{model_name}` (has_one, through the index `{fk}`): \
                     `.await` it, or set, clear, changes."
                );
                let ldoc = format!(
                    "The `{acc_name}` of every row at once (one store query), aligned with `rows`."
                );
                methods.push(quote_spanned! {tspan=>
                    #[doc = #doc]
                    pub fn #acc(&self, db: &::remodel::Database) -> ::remodel::model::HasOne<#ident, #target> {
                        ::remodel::model::HasOne::new(db, self, #rel)
                    }
                    #[doc = #ldoc]
                    pub async fn #load(db: &::remodel::Database, rows: &[#ident]) -> ::remodel::Result<::std::vec::Vec<::std::option::Option<#target>>> {
                        ::remodel::model::load::has_one::<#ident, #target>(db, #rel, rows).await
                    }
                });
            }
            RelationKind::BelongsTo => {
                let set = format_ident!("set_{}", acc);
                let fk_field = &m.fields[r.own_field.expect("checked")].ident;
                let doc = format!(
                    "The {model_doc} this `{model_name}` belongs to (through `{fk}`): `.await` it \
                     for `Option<{}>`, or watch it with `.changes()`.",
                    quote!(#target).to_string().replace(' ', "")
                );
                let sdoc = format!(
                    "Points `{fk}` at `owner` (or at nothing); `save` the model to store it. \
                     Errors if the owner is not saved."
                );
                let ldoc = format!(
                    "The `{acc_name}` of every row at once (one store query), aligned with `rows`."
                );
                methods.push(quote_spanned! {tspan=>
                    #[doc = #doc]
                    pub fn #acc(&self, db: &::remodel::Database) -> ::remodel::model::BelongsTo<#ident, #target> {
                        ::remodel::model::BelongsTo::new(db, self, #rel)
                    }
                    #[doc = #sdoc]
                    pub fn #set(&mut self, owner: ::std::option::Option<&#target>) -> ::remodel::Result<()> {
                        self.#fk_field = ::remodel::model::__private::owner_key(#rel, owner)?;
                        ::std::result::Result::Ok(())
                    }
                    #[doc = #ldoc]
                    pub async fn #load(db: &::remodel::Database, rows: &[#ident]) -> ::remodel::Result<::std::vec::Vec<::std::option::Option<#target>>> {
                        ::remodel::model::load::belongs_to::<#ident, #target>(db, #rel, rows).await
                    }
                });
            }
            RelationKind::ManyToMany => {
                let doc = format!(
                    "The {model_doc} rows related to this `{model_name}` through the shared join \
                     table (has_and_belongs_to_many): all, filter, get, count, create, add, \
                     remove, clear, set."
                );
                let ldoc = format!(
                    "The `{acc_name}` of every row at once (two store queries), aligned with `rows`."
                );
                methods.push(quote_spanned! {tspan=>
                    #[doc = #doc]
                    pub fn #acc(&self, db: &::remodel::Database) -> ::remodel::model::ManyToMany<#ident, #target> {
                        ::remodel::model::ManyToMany::new(db, self, #rel)
                    }
                    #[doc = #ldoc]
                    pub async fn #load(db: &::remodel::Database, rows: &[#ident]) -> ::remodel::Result<::std::vec::Vec<::std::vec::Vec<#target>>> {
                        ::remodel::model::load::many_to_many::<#ident, #target>(db, #rel, rows).await
                    }
                });
            }
        }
        // has_many / has_one: the target must have the foreign-key field (compile-time check,
        // pointed at the relation attribute).
        if let Some(tf) = &r.target_field {
            let span = r.span;
            let check = format_ident!("__remodel_check_foreign_key_{}", i);
            checks.push(quote_spanned! {span=>
                #[allow(dead_code, non_snake_case)]
                fn #check(f: <#target as ::remodel::model::Model>::Fields) {
                    let _ = f.#tf;
                }
            });
        }
    }

    // Field access by stored name (foreign keys, batched loading).
    let get_arms = m.stored_fields().map(|f| {
        let (fi, stored) = (&f.ident, &f.stored);
        quote! { #stored => ::remodel::model::__private::to_value(&self.#fi) }
    });
    let set_arms = m.stored_fields().map(|f| {
        let (fi, stored) = (&f.ident, &f.stored);
        quote! {
            #stored => {
                self.#fi = ::remodel::model::__private::field_from_value(#table, #stored, value)?;
                ::std::result::Result::Ok(true)
            }
        }
    });

    let hooks = if m.callbacks {
        quote! {
            fn before_save(&mut self) -> ::remodel::Result<()> { <Self as ::remodel::model::Callbacks>::before_save(self) }
            fn after_save(&self) { <Self as ::remodel::model::Callbacks>::after_save(self) }
            fn before_delete(&self) -> ::remodel::Result<()> { <Self as ::remodel::model::Callbacks>::before_delete(self) }
            fn after_delete(&self) { <Self as ::remodel::model::Callbacks>::after_delete(self) }
            fn after_load(&mut self) { <Self as ::remodel::model::Callbacks>::after_load(self) }
        }
    } else {
        quote! {}
    };

    let methods_block = if methods.is_empty() {
        quote! {}
    } else {
        quote! {
            // Generated for every relation: a program need not use them all.
            #[allow(dead_code)]
            impl #ident {
                #(#methods)*
            }
        }
    };

    quote! {
        #[doc = #fields_doc]
        #[derive(Clone, Copy, Debug)]
        #[allow(missing_docs)]
        #vis struct #fields_ident {
            #(#field_decls,)*
        }

        #methods_block

        impl ::remodel::model::Model for #ident {
            type Fields = #fields_ident;

            fn schema() -> &'static ::remodel::model::Schema {
                static SCHEMA: ::remodel::model::Schema = ::remodel::model::Schema {
                    model: #model_name,
                    table: #table,
                    primary_key: #pk_stored,
                    fields: &[#(#stored_names),*],
                    indexes: &[#(#indexes),*],
                    relations: &[#(#relation_defs),*],
                };
                &SCHEMA
            }

            fn fields() -> #fields_ident {
                #fields_ident { #(#field_inits,)* }
            }

            fn key(&self) -> ::std::option::Option<::remodel::Value> {
                ::remodel::model::__private::key_of(&self.#pk_ident)
            }

            fn set_key(&mut self, key: ::remodel::Value) -> ::remodel::Result<()> {
                self.#pk_ident = ::remodel::model::__private::field_from_value(#table, #pk_stored, key)?;
                ::std::result::Result::Ok(())
            }

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

            #hooks
        }

        const _: () = {
            ::remodel::model::__private::inventory::submit! {
                ::remodel::model::Registration::of::<#ident>()
            }
            #(#checks)*
        };
    }
}
