//! Filter predicates: plain data that can be inspected, compared, serialised and analysed
//! (the changefeed core routes writes by a predicate's equality conjuncts).

use crate::value::{compare, FieldPath, MAX_DEPTH};
use crate::{Error, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Ordering;

/// A condition on a document.
///
/// Build one with [`field`] and [`has_fields`], combine with [`Predicate::and`],
/// [`Predicate::or`] and `!`. A condition on a missing field is false, never an error.
/// Comparisons use Remodel's total order of values (see [`crate::value::compare`]).
/// Predicates also have a JSON form (`{"op": "eq", "field": "age", "value": 3}`).
///
/// ```
/// use remodel::{field, has_fields};
/// let adult_captains = field("age").ge(18).and(field("rank").eq("captain"));
/// let no_email = !has_fields(["email"]);
/// assert_ne!(adult_captains, no_email);
/// ```
///
/// In every variant, `field` is a dotted path and `value` the operand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(missing_docs)] // the fields are described above
pub enum Predicate {
    /// `field == value`
    Eq { field: String, value: Value },
    /// `field != value` (false when the field is missing)
    Ne { field: String, value: Value },
    /// `field < value`
    Lt { field: String, value: Value },
    /// `field <= value`
    Le { field: String, value: Value },
    /// `field > value`
    Gt { field: String, value: Value },
    /// `field >= value`
    Ge { field: String, value: Value },
    /// The array `field` has an element equal to `value`.
    Contains { field: String, value: Value },
    /// Every field in the list exists (and is not null).
    HasFields { fields: Vec<String> },
    /// The string `field` starts with `prefix` (which must be a string).
    StartsWith { field: String, prefix: Value },
    /// The string `field` matches the regular expression `pattern` (which must be a string).
    Matches { field: String, pattern: Value },
    /// All conditions hold (true when empty).
    And { all: Vec<Predicate> },
    /// At least one condition holds (false when empty).
    Or { any: Vec<Predicate> },
    /// The condition does not hold.
    Not { not: Box<Predicate> },
    /// A condition that could not be built (a typed field compared with a value JSON cannot
    /// hold, like a NaN or an `i128` past 64 bits): running a query with it is
    /// [`Error::InvalidQuery`] with `reason`, rather than a comparison with something else.
    Invalid { reason: String },
}

/// A field of a document, to build predicates: `field("address.city").eq("Paris")`.
pub fn field(path: impl Into<String>) -> Field {
    Field(path.into())
}

/// A predicate that holds when every field exists and is not null.
pub fn has_fields<S: Into<String>>(fields: impl IntoIterator<Item = S>) -> Predicate {
    Predicate::HasFields {
        fields: fields.into_iter().map(Into::into).collect(),
    }
}

/// A field path on which predicates are built (see [`field`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Field(String);

macro_rules! comparisons {
    ($($(#[$doc:meta])* $name:ident => $variant:ident),*) => {$(
        $(#[$doc])*
        pub fn $name(self, value: impl Into<Value>) -> Predicate {
            Predicate::$variant { field: self.0, value: value.into() }
        }
    )*};
}

impl Field {
    comparisons! {
        /// `field == value`
        eq => Eq,
        /// `field != value`
        ne => Ne,
        /// `field < value`
        lt => Lt,
        /// `field <= value`
        le => Le,
        /// `field > value`
        gt => Gt,
        /// `field >= value`
        ge => Ge,
        /// The array field contains `value`.
        contains => Contains
    }

    /// The string field starts with `prefix`.
    pub fn starts_with(self, prefix: impl Into<String>) -> Predicate {
        Predicate::StartsWith {
            field: self.0,
            prefix: Value::String(prefix.into()),
        }
    }

    /// The string field matches the regular expression `pattern` (checked when the query runs).
    pub fn matches(self, pattern: impl Into<String>) -> Predicate {
        Predicate::Matches {
            field: self.0,
            pattern: Value::String(pattern.into()),
        }
    }

    /// The field exists and is not null.
    pub fn exists(self) -> Predicate {
        has_fields([self.0])
    }
}

impl Predicate {
    /// Both conditions hold.
    pub fn and(self, other: Predicate) -> Predicate {
        match self {
            Predicate::And { mut all } => {
                all.push(other);
                Predicate::And { all }
            }
            p => Predicate::And {
                all: vec![p, other],
            },
        }
    }

    /// At least one of the conditions holds.
    pub fn or(self, other: Predicate) -> Predicate {
        match self {
            Predicate::Or { mut any } => {
                any.push(other);
                Predicate::Or { any }
            }
            p => Predicate::Or {
                any: vec![p, other],
            },
        }
    }

    /// Checks the predicate and prepares it for evaluation (parses paths, compiles regexes).
    pub(crate) fn compile(&self) -> Result<Compiled> {
        check_depth(self)?;
        self.compile_checked()
    }

    /// [`Predicate::compile`] of a predicate within the depth limit.
    fn compile_checked(&self) -> Result<Compiled> {
        let path = |f: &str| FieldPath::parse(f);
        let cmp = |f: &str, op: CmpOp, v: &Value| -> Result<Compiled> {
            Ok(Compiled::Cmp {
                path: path(f)?,
                op,
                value: v.clone(),
            })
        };
        Ok(match self {
            Predicate::Eq { field, value } => cmp(field, CmpOp::Eq, value)?,
            Predicate::Ne { field, value } => cmp(field, CmpOp::Ne, value)?,
            Predicate::Lt { field, value } => cmp(field, CmpOp::Lt, value)?,
            Predicate::Le { field, value } => cmp(field, CmpOp::Le, value)?,
            Predicate::Gt { field, value } => cmp(field, CmpOp::Gt, value)?,
            Predicate::Ge { field, value } => cmp(field, CmpOp::Ge, value)?,
            Predicate::Contains { field, value } => Compiled::Contains {
                path: path(field)?,
                value: value.clone(),
            },
            Predicate::HasFields { fields } => {
                Compiled::HasFields(fields.iter().map(|f| path(f)).collect::<Result<_>>()?)
            }
            Predicate::StartsWith { field, prefix } => match prefix {
                Value::String(p) => Compiled::StartsWith {
                    path: path(field)?,
                    prefix: p.clone(),
                },
                other => {
                    return Err(Error::query(format!(
                        "starts_with on `{field}` needs a string prefix, got {other}"
                    )))
                }
            },
            Predicate::Matches { field, pattern } => match pattern {
                Value::String(p) => Compiled::Matches {
                    path: path(field)?,
                    re: Regex::new(p).map_err(|e| {
                        Error::query(format!("invalid regex {p:?} on `{field}`: {e}"))
                    })?,
                },
                other => {
                    return Err(Error::query(format!(
                        "matches on `{field}` needs a string pattern, got {other}"
                    )))
                }
            },
            Predicate::And { all } => Compiled::And(
                all.iter()
                    .map(Predicate::compile_checked)
                    .collect::<Result<_>>()?,
            ),
            Predicate::Or { any } => Compiled::Or(
                any.iter()
                    .map(Predicate::compile_checked)
                    .collect::<Result<_>>()?,
            ),
            Predicate::Not { not } => Compiled::Not(Box::new(not.compile_checked()?)),
            Predicate::Invalid { reason } => return Err(Error::query(reason.clone())),
        })
    }
}

/// Whether `p` nests `and`/`or`/`not` deeper than `limit`, or has an operand nested deeper
/// than [`MAX_DEPTH`]. Stops one level past the limit (bounded recursion).
fn deeper_than(p: &Predicate, limit: usize) -> bool {
    use crate::value::deeper_than as value_deeper;
    match p {
        Predicate::Eq { value, .. }
        | Predicate::Ne { value, .. }
        | Predicate::Lt { value, .. }
        | Predicate::Le { value, .. }
        | Predicate::Gt { value, .. }
        | Predicate::Ge { value, .. }
        | Predicate::Contains { value, .. } => value_deeper(value, MAX_DEPTH),
        Predicate::StartsWith { prefix: value, .. } | Predicate::Matches { pattern: value, .. } => {
            value_deeper(value, MAX_DEPTH)
        }
        Predicate::HasFields { .. } | Predicate::Invalid { .. } => false,
        Predicate::And { all: ps } | Predicate::Or { any: ps } => {
            limit == 0 || ps.iter().any(|p| deeper_than(p, limit - 1))
        }
        Predicate::Not { not } => limit == 0 || deeper_than(not, limit - 1),
    }
}

/// Checks that a predicate nests at most [`MAX_DEPTH`] levels of `and`, `or` and `not`, and
/// that its operands are within the depth limit of values.
pub(crate) fn check_depth(p: &Predicate) -> Result<()> {
    if deeper_than(p, MAX_DEPTH) {
        Err(crate::value::too_deep("predicate"))
    } else {
        Ok(())
    }
}

/// Drops a predicate of any depth without recursion (see [`crate::value::drop_deep`]).
pub(crate) fn drop_deep(p: Predicate) {
    let mut stack = vec![p];
    while let Some(p) = stack.pop() {
        match p {
            Predicate::Eq { value, .. }
            | Predicate::Ne { value, .. }
            | Predicate::Lt { value, .. }
            | Predicate::Le { value, .. }
            | Predicate::Gt { value, .. }
            | Predicate::Ge { value, .. }
            | Predicate::Contains { value, .. }
            | Predicate::StartsWith { prefix: value, .. }
            | Predicate::Matches { pattern: value, .. } => crate::value::drop_deep(value),
            Predicate::HasFields { .. } | Predicate::Invalid { .. } => {}
            Predicate::And { all: ps } | Predicate::Or { any: ps } => stack.extend(ps),
            Predicate::Not { not } => stack.push(*not),
        }
    }
}

impl std::ops::Not for Predicate {
    type Output = Predicate;
    fn not(self) -> Predicate {
        Predicate::Not {
            not: Box::new(self),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A checked predicate, ready to evaluate.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    Cmp {
        path: FieldPath,
        op: CmpOp,
        value: Value,
    },
    Contains {
        path: FieldPath,
        value: Value,
    },
    HasFields(Vec<FieldPath>),
    StartsWith {
        path: FieldPath,
        prefix: String,
    },
    Matches {
        path: FieldPath,
        re: Regex,
    },
    And(Vec<Compiled>),
    Or(Vec<Compiled>),
    Not(Box<Compiled>),
}

impl Compiled {
    /// Whether `doc` satisfies the predicate.
    pub(crate) fn eval(&self, doc: &Value) -> bool {
        match self {
            Compiled::Cmp { path, op, value } => {
                let Some(v) = path.get(doc) else { return false };
                let o = compare(v, value);
                match op {
                    CmpOp::Eq => o == Ordering::Equal,
                    CmpOp::Ne => o != Ordering::Equal,
                    CmpOp::Lt => o == Ordering::Less,
                    CmpOp::Le => o != Ordering::Greater,
                    CmpOp::Gt => o == Ordering::Greater,
                    CmpOp::Ge => o != Ordering::Less,
                }
            }
            Compiled::Contains { path, value } => match path.get(doc) {
                Some(Value::Array(items)) => {
                    items.iter().any(|i| compare(i, value) == Ordering::Equal)
                }
                _ => false,
            },
            Compiled::HasFields(paths) => paths
                .iter()
                .all(|p| p.get(doc).is_some_and(|v| !v.is_null())),
            Compiled::StartsWith { path, prefix } => path
                .get(doc)
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(prefix.as_str())),
            Compiled::Matches { path, re } => path
                .get(doc)
                .and_then(Value::as_str)
                .is_some_and(|s| re.is_match(s)),
            Compiled::And(all) => all.iter().all(|p| p.eval(doc)),
            Compiled::Or(any) => any.iter().any(|p| p.eval(doc)),
            Compiled::Not(p) => !p.eval(doc),
        }
    }

    /// The `field == value` conditions that must hold for the predicate to hold (the
    /// top-level equality conjuncts). The changefeed core routes writes by them.
    pub(crate) fn eq_conjuncts(&self) -> Vec<(&FieldPath, &Value)> {
        match self {
            Compiled::Cmp {
                path,
                op: CmpOp::Eq,
                value,
            } => vec![(path, value)],
            Compiled::And(all) => all.iter().flat_map(Compiled::eq_conjuncts).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(p: Predicate, doc: Value) -> bool {
        p.compile().unwrap().eval(&doc)
    }

    #[test]
    fn missing_fields_are_false() {
        let doc = json!({"a": 1});
        assert!(!holds(field("b").eq(1), doc.clone()));
        assert!(!holds(field("b").ne(1), doc.clone()));
        assert!(!holds(field("b").lt(1), doc.clone()));
        assert!(!holds(field("b").contains(1), doc.clone()));
        assert!(!holds(field("b").starts_with("x"), doc.clone()));
        assert!(holds(!field("b").eq(1), doc));
    }

    #[test]
    fn comparisons_use_the_total_order() {
        let doc = json!({"n": 3, "s": "abc", "t": ["x", "y"], "o": {"p": 1.0}});
        assert!(holds(field("n").eq(3.0), doc.clone()));
        assert!(holds(field("n").lt("a"), doc.clone())); // numbers < strings
        assert!(holds(field("s").ge("abc"), doc.clone()));
        assert!(holds(field("t").contains("y"), doc.clone()));
        assert!(holds(field("o.p").eq(1), doc.clone()));
        assert!(holds(field("s").matches("^a.c$"), doc.clone()));
        assert!(holds(has_fields(["n", "o.p"]), doc.clone()));
        assert!(holds(Predicate::And { all: vec![] }, doc.clone()));
        assert!(!holds(Predicate::Or { any: vec![] }, doc));
    }

    #[test]
    fn bad_predicates_are_typed_errors() {
        let bad: Predicate =
            serde_json::from_value(json!({"op": "starts_with", "field": "a", "prefix": 5}))
                .unwrap();
        assert!(
            matches!(bad.compile(), Err(Error::InvalidQuery(m)) if m.contains("string prefix"))
        );
        assert!(matches!(
            field("a").matches("(").compile(),
            Err(Error::InvalidQuery(_))
        ));
        assert!(matches!(
            field("a..b").eq(1).compile(),
            Err(Error::InvalidName { .. })
        ));
        let invalid = Predicate::Invalid {
            reason: "no operand".into(),
        };
        assert!(matches!(
            field("a").eq(1).or(!invalid).compile(),
            Err(Error::InvalidQuery(m)) if m == "no operand"
        ));
    }

    #[test]
    fn eq_conjuncts_are_found() {
        let p = field("a")
            .eq(1)
            .and(field("b").gt(2))
            .and(field("c.d").eq("x"))
            .compile()
            .unwrap();
        let eqs: Vec<String> = p
            .eq_conjuncts()
            .iter()
            .map(|(p, v)| format!("{p}={v}"))
            .collect();
        assert_eq!(eqs, vec!["a=1", "c.d=\"x\""]);
        assert!(field("a")
            .eq(1)
            .or(field("b").eq(2))
            .compile()
            .unwrap()
            .eq_conjuncts()
            .is_empty());
    }
}
