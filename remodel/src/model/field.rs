//! Typed field names: a field of model `M` holding a `T`, to build predicates and orders.

use super::{Id, Model, ModelError, RelationKind, Schema};
use crate::{Order, Predicate, Result};
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::marker::PhantomData;

/// A field of model `M` whose Rust type is `T`, from the derive's `<Model>Fields` struct:
/// `Crewmember::fields().species.eq("human")`. A misspelt field is a compile error, and the
/// value's type is checked against the field's.
///
/// A comparison with `None` (`f.sector.eq(None::<String>)`) holds of the rows that read as
/// `None`: those storing `null` and those without the field (`skip_serializing_if`, rows of
/// an older version), like [`Field::is_null`]; `ne(None)` is [`Field::exists`]. A value JSON
/// cannot hold (a NaN or infinite float, an `i128` / `u128` past 64 bits) makes a predicate
/// that fails the query with [`crate::Error::InvalidQuery`] when it runs, never a comparison
/// with `null`.
///
/// ```
/// use remodel::model::{Field, Id};
/// use remodel::{Model, Predicate};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Model, Serialize, Deserialize)]
/// struct Score { id: Option<Id>, player: String, points: i64, tags: Vec<String> }
///
/// let f = Score::fields();
/// let p = f.points.ge(100).and(f.player.ne("bot")).and(f.tags.contains("ranked"));
/// assert_eq!(f.points.name(), "points");
/// assert!(matches!(f.player.one_of(Vec::<String>::new()), Predicate::Or { any } if any.is_empty()));
/// # let _ = p;
/// ```
pub struct Field<M, T> {
    name: &'static str,
    _types: PhantomData<fn() -> (M, T)>,
}

impl<M, T> Clone for Field<M, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M, T> Copy for Field<M, T> {}

impl<M, T> fmt::Debug for Field<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Field({})", self.name)
    }
}

/// A value as JSON, or an error for one JSON cannot hold: serde_json refuses integers past
/// 64 bits, and writes a NaN or infinite float as `null`, which a comparison would then
/// use in its place (every number is greater than `null`), so such floats are looked for.
fn json<V: Serialize>(v: V) -> Result<Value> {
    super::finite::to_json(&v).map_err(|e| ModelError::Invalid(e.to_string()).into())
}

/// A value that can be compared with a field holding a `T`: a `T`, a `T` for an
/// `Option<T>` field, and `&str` / `&Id` / `&String` where the field holds a `String` or an
/// [`Id`]. Integer and float literals take the field's type.
pub trait FieldValue<T> {
    /// The value as JSON; [`ModelError::Invalid`] for a value JSON cannot hold (a NaN or
    /// infinite float, an integer past 64 bits).
    fn into_json(self) -> Result<Value>;
}

impl<T: Serialize> FieldValue<T> for T {
    fn into_json(self) -> Result<Value> {
        json(self)
    }
}

impl<T: Serialize> FieldValue<Option<T>> for T {
    fn into_json(self) -> Result<Value> {
        json(self)
    }
}

macro_rules! borrowed {
    ($($from:ty => $to:ty),*) => {$(
        impl FieldValue<$to> for $from {
            fn into_json(self) -> Result<Value> {
                json(self)
            }
        }
    )*};
}

borrowed! {
    &str => String, &str => Option<String>, &String => String, &String => Option<String>,
    &str => Id, &str => Option<Id>, &Id => Id, &Id => Option<Id>
}

macro_rules! comparisons {
    ($($(#[$doc:meta])* $name:ident),*) => {$(
        $(#[$doc])*
        pub fn $name(self, value: impl FieldValue<T>) -> Predicate {
            self.compare(value, stringify!($name), |f, v| f.$name(v))
        }
    )*};
}

impl<M, T> Field<M, T> {
    /// The stored name of the field.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<M, T: Serialize> Field<M, T> {
    /// The field called `name` (its stored name). The derive makes these.
    pub const fn new(name: &'static str) -> Self {
        Field {
            name,
            _types: PhantomData,
        }
    }

    /// The untyped field, for the store's predicates.
    pub fn raw(self) -> crate::Field {
        crate::field(self.name)
    }

    /// A nested field inside this one: `address.path("city")` is `address.city` (untyped).
    pub fn path(self, sub: &str) -> crate::Field {
        crate::field(format!("{}.{sub}", self.name))
    }

    /// `op(field, value)`, or a predicate that fails the query when `value` has no JSON form.
    fn compare(
        self,
        value: impl FieldValue<T>,
        what: &str,
        op: impl FnOnce(crate::Field, Value) -> Predicate,
    ) -> Predicate {
        match value.into_json() {
            Ok(v) => op(self.raw(), v),
            Err(e) => Predicate::Invalid {
                reason: format!(
                    "`{}` cannot be compared ({what}) with this value: {e}",
                    self.name
                ),
            },
        }
    }

    /// `field == value`. With `None` (a `null`): the field is null or missing, as
    /// [`Field::is_null`], since a row without the field reads as `None` too.
    pub fn eq(self, value: impl FieldValue<T>) -> Predicate {
        self.compare(
            value,
            "eq",
            |f, v| if v.is_null() { !f.exists() } else { f.eq(v) },
        )
    }

    /// `field != value`: the rows [`Field::eq`] does not hold of, those without the field
    /// (which read as `None`) included. With `None`: the field is there and not null, as
    /// [`Field::exists`].
    pub fn ne(self, value: impl FieldValue<T>) -> Predicate {
        self.compare(
            value,
            "ne",
            |f, v| if v.is_null() { f.exists() } else { !f.eq(v) },
        )
    }

    // The orderings compare stored values in Remodel's order (where a stored `null` is
    // below every number and string); a row without the field is in none of them.
    comparisons! {
        /// `field < value`
        lt,
        /// `field <= value`
        le,
        /// `field > value`
        gt,
        /// `field >= value`
        ge
    }

    /// An assignment of this field, for [`super::ModelQuery::update`]:
    /// `q.update(f.rank.set("captain").and(f.ship_id.set(None::<Id>)))`. A value JSON
    /// cannot hold fails the update with [`ModelError::Invalid`], and nothing is written.
    pub fn set(self, value: impl FieldValue<T>) -> Set<M> {
        let mut fields = serde_json::Map::new();
        let error = match value.into_json() {
            Ok(v) => {
                fields.insert(self.name.to_string(), v);
                None
            }
            Err(e) => Some(format!("`{}` cannot be set to this value: {e}", self.name)),
        };
        Set {
            fields,
            error,
            _model: PhantomData,
        }
    }

    /// The field equals one of the values. No values, no match (never "everything").
    pub fn one_of<V: FieldValue<T>>(self, values: impl IntoIterator<Item = V>) -> Predicate {
        Predicate::Or {
            any: values.into_iter().map(|v| self.eq(v)).collect(),
        }
    }

    /// The field exists and is not null.
    pub fn exists(self) -> Predicate {
        self.raw().exists()
    }

    /// The field is null or missing.
    pub fn is_null(self) -> Predicate {
        !self.raw().exists()
    }

    /// Ascending order of the field, sorted in memory. Rows without the field (or with
    /// `null`) are kept, and come last.
    pub fn asc(self) -> Order {
        crate::asc(self.name)
    }

    /// Descending order of the field, sorted in memory.
    pub fn desc(self) -> Order {
        crate::desc(self.name)
    }
}

impl<M: Model, T> Field<M, T> {
    /// Ascending order of the field's own index, read from the index: the one
    /// `#[remodel(index)]` (or `index(multi)`, or `index(name = "..")`, by that name) made on
    /// this field, the index of a relation's foreign key, or the primary key. Chain `.desc()`
    /// for descending.
    ///
    /// **Rows whose value is `null` or missing are not in the order**: an index leaves them
    /// out (as RethinkDB's do), so for an `Option` field the rows holding `None` are not
    /// returned. Use [`Field::asc`] (sorted in memory) to keep every row.
    ///
    /// A field without an index of its own fails the query with
    /// [`crate::Error::NoSuchIndex`] when it runs, never ordering by another field's index.
    pub fn index(self) -> Order {
        match own_index(M::schema(), self.name) {
            Some(index) => Order::index(index),
            // Index names are ASCII letters, digits and `_` only, so this names no index the
            // store can have: the query fails with NoSuchIndex, naming what is missing.
            None => Order::index(format!("{} (the field has no index of its own)", self.name)),
        }
    }
}

/// The name of the index of the field stored as `field` in `schema`'s table: its declared
/// simple or multi index, the primary key, or the index a relation made on it (a belongs_to
/// of this model, or a has_many / has_one of any registered model pointing here).
fn own_index(schema: &'static Schema, field: &str) -> Option<&'static str> {
    if schema.primary_key == field {
        return Some(schema.primary_key);
    }
    let declared = schema
        .indexes
        .iter()
        .find(|ix| ix.kind != super::IndexKind::Compound && ix.paths == [field]);
    if let Some(ix) = declared {
        return Some(ix.name);
    }
    let belongs_to = schema
        .relations
        .iter()
        .find(|r| r.kind == RelationKind::BelongsTo && r.foreign_key == field);
    if let Some(r) = belongs_to {
        return Some(r.foreign_key);
    }
    super::registered().into_iter().find_map(|owner| {
        owner
            .relations
            .iter()
            .find(|r| {
                matches!(r.kind, RelationKind::HasMany | RelationKind::HasOne)
                    && r.foreign_key == field
                    && std::ptr::eq(r.target(), schema)
            })
            .map(|r| r.foreign_key)
    })
}

impl<M, E: Serialize> Field<M, Vec<E>> {
    /// The array field has an element equal to `value`.
    pub fn contains(self, value: impl FieldValue<E>) -> Predicate {
        match value.into_json() {
            Ok(v) => self.raw().contains(v),
            Err(e) => Predicate::Invalid {
                reason: format!("`{}` cannot be searched for this value: {e}", self.name),
            },
        }
    }
}

impl<M> Field<M, String> {
    /// The string field starts with `prefix`.
    pub fn starts_with(self, prefix: impl Into<String>) -> Predicate {
        self.raw().starts_with(prefix)
    }

    /// The string field matches the regular expression `pattern`.
    pub fn matches(self, pattern: impl Into<String>) -> Predicate {
        self.raw().matches(pattern)
    }
}

/// Field assignments of a model `M` (made by [`Field::set`]), for a bulk update.
#[derive(Clone, Debug)]
#[must_use = "an assignment does nothing until it is given to `update`"]
pub struct Set<M> {
    fields: serde_json::Map<String, Value>,
    /// Why an assignment has no value to write (a value JSON cannot hold): the update fails.
    error: Option<String>,
    _model: PhantomData<fn() -> M>,
}

impl<M> Set<M> {
    /// This assignment and another (of the same model; the later wins for one field).
    pub fn and(mut self, other: Set<M>) -> Set<M> {
        self.fields.extend(other.fields);
        self.error = self.error.or(other.error);
        self
    }

    /// The assignments as a merge patch of the stored documents; [`ModelError::Invalid`]
    /// when one of them has a value JSON cannot hold.
    pub(crate) fn into_patch(self) -> Result<crate::Patch> {
        match self.error {
            Some(e) => Err(ModelError::Invalid(e).into()),
            None => Ok(crate::Patch::merge(Value::Object(self.fields))),
        }
    }
}

/// Field types that [`super::ModelQuery::sum`] and [`super::ModelQuery::avg`] add up: the
/// numbers, and `Option`s of them (rows holding `null` are skipped).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a number: sums and averages take numeric fields",
    label = "not a numeric field"
)]
pub trait Numeric {}

macro_rules! numeric {
    ($($t:ty),*) => {$(
        impl Numeric for $t {}
        impl Numeric for Option<$t> {}
    )*};
}

numeric!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize, f32, f64);
