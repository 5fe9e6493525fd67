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
    /// has_many / has_one: the field of the target that holds this model's key;
    /// belongs_to: this model's field holding the owner's key;
    /// many-to-many: the join table column holding this model's key.
    pub foreign_key: String,
    /// belongs_to: this model's foreign-key field.
    pub own_field: Option<usize>,
    /// has_many / has_one: the foreign key as a field of the target, checked at compile time
    /// when it is a Rust identifier.
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
