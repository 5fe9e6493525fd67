//! The checked model of one `#[derive(Model)]` struct: what code generation works from.
//!
//! A [`Model`] is only ever built by [`super::check::checked`], so code generation can rely on
//! every rule of `check.rs` holding (a primary key exists, a belongs_to's foreign key field
//! exists, accessors are unique, ...).

pub use super::attr::OnDelete;
use proc_macro2::Span;
use syn::{Ident, Path, Type, Visibility};

/// One model.
pub struct Model {
    pub ident: Ident,
    pub vis: Visibility,
    /// The table name (snake_case plural of the type, or `table = ".."`).
    pub table: String,
    /// Whether the table was named with `table = ".."` (two models may share a table only
    /// when both name it so: a default name shared by accident is refused by the schema).
    pub named_table: bool,
    pub fields: Vec<Field>,
    /// Index into `fields`.
    pub primary_key: usize,
    pub indexes: Vec<Index>,
    pub relations: Vec<Relation>,
    /// Whether the hooks delegate to `remodel::model::Callbacks`.
    pub callbacks: bool,
}

impl Model {
    /// The name of the generated struct of typed field names.
    pub fn fields_ident(&self) -> Ident {
        Ident::new(&format!("{}Fields", self.ident), self.ident.span())
    }

    pub fn primary_key(&self) -> &Field {
        &self.fields[self.primary_key]
    }

    /// The fields stored in the document (not skipped by serde).
    pub fn stored_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| !f.skipped)
    }

    /// The fields with a typed field name (see [`Field::typed`]).
    pub fn typed_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| f.typed())
    }
}

/// One field of the struct.
pub struct Field {
    pub ident: Ident,
    pub ty: Type,
    /// The name the field is stored under (serde's `rename`, or the field's name).
    pub stored: String,
    /// serde skips it: not a stored field (no typed field name, not in the schema).
    pub skipped: bool,
    /// serde's `alias` names: where older rows hold the field (a rename).
    pub aliases: Vec<String>,
    /// serde's `with` / `serialize_with` (its span): stored as a function
    /// of the user's writes it, so it has no typed field name and cannot be a key or indexed.
    pub custom: Option<Span>,
}

impl Field {
    /// The field's Rust name, without `r#`: what attributes name it by.
    pub fn rust_name(&self) -> String {
        let s = self.ident.to_string();
        s.strip_prefix("r#").map(str::to_string).unwrap_or(s)
    }

    /// Whether the field gets a typed field name (`<Name>Fields`): it is stored, and stored
    /// as its Rust type serialises (what typed predicates compare with).
    pub fn typed(&self) -> bool {
        !self.skipped && self.custom.is_none()
    }
}

/// What kind of secondary index.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Simple,
    Multi,
    Compound,
}

/// A secondary index the model's table gets.
pub struct Index {
    pub name: String,
    pub kind: IndexKind,
    /// Dotted paths of stored names (one, or several for a compound index).
    pub paths: Vec<String>,
}

/// The four relation kinds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RelationKind {
    HasMany,
    HasOne,
    BelongsTo,
    ManyToMany,
}

impl RelationKind {
    pub fn attr_name(self) -> &'static str {
        match self {
            RelationKind::HasMany => "has_many",
            RelationKind::HasOne => "has_one",
            RelationKind::BelongsTo => "belongs_to",
            RelationKind::ManyToMany => "has_and_belongs_to_many",
        }
    }
}

/// A relation to another model (or to this one).
pub struct Relation {
    pub kind: RelationKind,
    /// The related model's type, as written (its span is where "not a model" errors point).
    pub target: Path,
    /// The method that reaches the relation (`crewmembers`, `starship`, ...).
    pub accessor: Ident,
    /// has_many / has_one: the Rust name of the target's field that holds this model's key
    /// (the generated schema stores that field's stored name, see `target_field`);
    /// belongs_to: the stored name of this model's field holding the owner's key;
    /// many-to-many: the join table column holding this model's key.
    pub foreign_key: String,
    /// belongs_to: this model's foreign-key field.
    pub own_field: Option<usize>,
    /// has_many / has_one: the target's foreign-key field. The target is another derive, so
    /// its stored name is read from the target's typed field names when the schema is built
    /// (`<Target as Model>::FIELDS.<field>.name()`, a constant): a field the target lacks is
    /// a compile error at the relation attribute.
    pub target_field: Option<Ident>,
    /// many-to-many: the join table column holding the other model's key.
    pub association_key: String,
    /// many-to-many: the join table, when named (otherwise both sides derive the same name
    /// from the two tables at run time).
    pub join_table: Option<String>,
    pub on_delete: OnDelete,
    /// The attribute, for errors in generated checks.
    pub span: Span,
}
