//! Typed field names: a field of model `M` holding a `T`, to build predicates and orders.

use super::Id;
use crate::{Order, Predicate};
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::marker::PhantomData;

/// A field of model `M` whose Rust type is `T`, from the derive's `<Model>Fields` struct:
/// `Crewmember::fields().species.eq("human")`. A misspelt field is a compile error, and the
/// value's type is checked against the field's.
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

/// A value as JSON. Serializing a plain value cannot fail except for maps with non-string
/// keys, which no comparison can use: those compare as `null`.
fn json<V: Serialize>(v: V) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A value that can be compared with a field holding a `T`: a `T`, a `T` for an
/// `Option<T>` field, and `&str` / `&Id` / `&String` where the field holds a `String` or an
/// [`Id`]. Integer and float literals take the field's type.
pub trait FieldValue<T> {
    /// The value as JSON.
    fn into_json(self) -> Value;
}

impl<T: Serialize> FieldValue<T> for T {
    fn into_json(self) -> Value {
        json(self)
    }
}

impl<T: Serialize> FieldValue<Option<T>> for T {
    fn into_json(self) -> Value {
        json(self)
    }
}

macro_rules! borrowed {
    ($($from:ty => $to:ty),*) => {$(
        impl FieldValue<$to> for $from {
            fn into_json(self) -> Value {
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
            self.raw().$name(value.into_json())
        }
    )*};
}

impl<M, T> Field<M, T> {
    /// The stored name of the field (also the name of its index, when it has one).
    pub fn name(&self) -> &'static str {
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

    comparisons! {
        /// `field == value`
        eq,
        /// `field != value`
        ne,
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
    /// `q.update(f.rank.set("captain").and(f.ship_id.set(None::<Id>)))`.
    pub fn set(self, value: impl FieldValue<T>) -> Set<M> {
        let mut fields = serde_json::Map::new();
        fields.insert(self.name.to_string(), value.into_json());
        Set {
            fields,
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

    /// Ascending order of the field's index (the index `#[remodel(index)]` made).
    pub fn index(self) -> Order {
        Order::index(self.name)
    }

    /// Ascending order of the field, sorted in memory.
    pub fn asc(self) -> Order {
        crate::asc(self.name)
    }

    /// Descending order of the field, sorted in memory.
    pub fn desc(self) -> Order {
        crate::desc(self.name)
    }
}

impl<M, E: Serialize> Field<M, Vec<E>> {
    /// The array field has an element equal to `value`.
    pub fn contains(self, value: impl FieldValue<E>) -> Predicate {
        self.raw().contains(value.into_json())
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
    _model: PhantomData<fn() -> M>,
}

impl<M> Set<M> {
    /// This assignment and another (of the same model; the later wins for one field).
    pub fn and(mut self, other: Set<M>) -> Set<M> {
        self.fields.extend(other.fields);
        self
    }

    /// The assignments as a merge patch of the stored documents.
    pub(crate) fn into_patch(self) -> crate::Patch {
        crate::Patch::merge(Value::Object(self.fields))
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
