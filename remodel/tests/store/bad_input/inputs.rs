//! The inputs of the bad-input programs: descriptions of values, documents, predicates and
//! operations (deep values are built in the test, never held by proptest, which clones and
//! prints its inputs recursively), and the strategies that generate them.

use crate::common::rules::path_get;
use proptest::collection::vec;
use proptest::prelude::*;
use remodel::value::{compare, MAX_DEPTH};
use remodel::{field, has_fields, json, IndexSpec, Predicate, Value};
use serde_json::Map;
use std::cmp::Ordering;
use std::collections::HashMap;

/// A value: a small random one, or a chain of `depth` arrays/objects (chosen by the bits of
/// `pattern`) around a small one.
#[derive(Clone, Debug)]
pub(super) enum Val {
    Small(Value),
    Chain {
        depth: usize,
        pattern: u64,
        leaf: Value,
    },
}

impl Val {
    pub(super) fn build(&self) -> Value {
        match self {
            Val::Small(v) => v.clone(),
            Val::Chain {
                depth,
                pattern,
                leaf,
            } => {
                let mut v = leaf.clone();
                for i in 0..*depth {
                    v = if pattern >> (i % 64) & 1 == 1 {
                        let mut m = Map::new();
                        m.insert("k".into(), v);
                        Value::Object(m)
                    } else {
                        Value::Array(vec![v])
                    };
                }
                v
            }
        }
    }

    /// The nesting depth of the built value.
    pub(super) fn depth(&self) -> usize {
        match self {
            Val::Small(v) => depth_of(v),
            Val::Chain { depth, leaf, .. } => depth + depth_of(leaf),
        }
    }
}

pub(super) fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// A document: its key (absent, or a value of any kind) and fields.
#[derive(Clone, Debug)]
pub(super) struct Doc {
    pub(super) key: Option<Val>,
    pub(super) fields: Vec<(String, Val)>,
    /// Not an object at all (a bare value).
    pub(super) bare: Option<Val>,
}

impl Doc {
    pub(super) fn build(&self) -> Value {
        if let Some(b) = &self.bare {
            return b.build();
        }
        let mut m = Map::new();
        for (i, (k, v)) in self.fields.iter().enumerate() {
            // A later field of the same name wins; the shadowed value is never built (it
            // would be dropped recursively here).
            if self.fields[i + 1..].iter().all(|(later, _)| later != k) {
                m.insert(k.clone(), v.build());
            }
        }
        if let Some(k) = &self.key {
            m.insert("id".into(), k.build());
        }
        Value::Object(m)
    }

    pub(super) fn depth(&self) -> usize {
        if let Some(b) = &self.bare {
            return b.depth();
        }
        // A later field of the same name replaces an earlier one.
        let fields: HashMap<&str, &Val> =
            self.fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let inner = fields
            .values()
            .map(|v| v.depth())
            .chain(self.key.iter().map(Val::depth))
            .max()
            .unwrap_or(0);
        1 + inner
    }
}

#[derive(Clone, Debug)]
pub(super) enum Op {
    Insert(Vec<Doc>),
    Update(Val, Val),
    Replace(Val, Doc),
    Delete(Val),
    Filter(Pred),
    CreateTable(String),
    DropTable(String),
    CreateIndex(String, Spec),
    DropIndex(String),
    /// A create_index racing inserts on the same table.
    IndexDuringWrites(String, Spec, Vec<Doc>),
    /// drop_index of an index while it is being built.
    DropDuringBuild(String, Spec),
    /// drop_table racing inserts into it.
    DropTableDuringWrites(Vec<Doc>),
    Reopen,
}

#[derive(Clone, Debug)]
pub(super) enum Spec {
    Field(String),
    Compound(String, String),
    Multi(String),
}

impl Spec {
    pub(super) fn index_spec(&self) -> IndexSpec {
        match self {
            Spec::Field(p) => IndexSpec::field(p.as_str()),
            Spec::Compound(a, b) => IndexSpec::compound([a.as_str(), b.as_str()]),
            Spec::Multi(p) => IndexSpec::multi(p.as_str()),
        }
    }
}

/// A predicate description; `nest` wraps it in that many `not`s / single `and`s.
#[derive(Clone, Debug)]
pub(super) enum Pred {
    Cmp(u8, String, Val),
    HasFields(Vec<String>),
    StartsWith(String, String),
    Matches(String, String),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
    Nest(usize, Box<Pred>),
}

impl Pred {
    pub(super) fn build(&self) -> Predicate {
        match self {
            Pred::Cmp(op, f, v) => {
                let fl = field(f.as_str());
                let v = v.build();
                match op % 7 {
                    0 => fl.eq(v),
                    1 => fl.ne(v),
                    2 => fl.lt(v),
                    3 => fl.le(v),
                    4 => fl.gt(v),
                    5 => fl.ge(v),
                    _ => fl.contains(v),
                }
            }
            Pred::HasFields(fs) => has_fields(fs.iter().map(String::as_str)),
            Pred::StartsWith(f, p) => field(f.as_str()).starts_with(p.as_str()),
            Pred::Matches(f, p) => field(f.as_str()).matches(p.as_str()),
            Pred::And(ps) => Predicate::And {
                all: ps.iter().map(Pred::build).collect(),
            },
            Pred::Or(ps) => Predicate::Or {
                any: ps.iter().map(Pred::build).collect(),
            },
            Pred::Not(p) => !p.build(),
            Pred::Nest(n, p) => {
                let mut out = p.build();
                for i in 0..*n {
                    out = if i % 2 == 0 {
                        !out
                    } else {
                        Predicate::And { all: vec![out] }
                    };
                }
                out
            }
        }
    }

    /// Whether the predicate is within the limits (nesting and operand depth).
    pub(super) fn within_limits(&self, budget: usize) -> bool {
        match self {
            Pred::Cmp(_, _, v) => v.depth() <= MAX_DEPTH,
            Pred::HasFields(_) | Pred::StartsWith(..) | Pred::Matches(..) => true,
            Pred::And(ps) | Pred::Or(ps) => {
                budget > 0 && ps.iter().all(|p| p.within_limits(budget - 1))
            }
            Pred::Not(p) => budget > 0 && p.within_limits(budget - 1),
            Pred::Nest(n, p) => *n <= budget && p.within_limits(budget - n),
        }
    }

    pub(super) fn uses_regex(&self) -> bool {
        match self {
            Pred::Matches(..) => true,
            Pred::And(ps) | Pred::Or(ps) => ps.iter().any(Pred::uses_regex),
            Pred::Not(p) | Pred::Nest(_, p) => p.uses_regex(),
            _ => false,
        }
    }

    /// The documented semantics, for predicates without regexes and within the limits.
    pub(super) fn eval(&self, doc: &Value) -> bool {
        match self {
            Pred::Cmp(op, f, v) => {
                let v = v.build();
                let Some(x) = path_get(doc, f) else {
                    return false;
                };
                let o = compare(x, &v);
                match op % 7 {
                    0 => o == Ordering::Equal,
                    1 => o != Ordering::Equal,
                    2 => o == Ordering::Less,
                    3 => o != Ordering::Greater,
                    4 => o == Ordering::Greater,
                    5 => o != Ordering::Less,
                    _ => x
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| compare(i, &v).is_eq())),
                }
            }
            Pred::HasFields(fs) => fs
                .iter()
                .all(|f| path_get(doc, f).is_some_and(|v| !v.is_null())),
            Pred::StartsWith(f, p) => path_get(doc, f)
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(p.as_str())),
            Pred::Matches(..) => unreachable!("not evaluated"),
            Pred::And(ps) => ps.iter().all(|p| p.eval(doc)),
            Pred::Or(ps) => ps.iter().any(|p| p.eval(doc)),
            Pred::Not(p) => !p.eval(doc),
            Pred::Nest(n, p) => {
                // `not` at even steps, `and [x]` (the identity) at odd ones.
                let inner = p.eval(doc);
                if n.div_ceil(2) % 2 == 1 {
                    !inner
                } else {
                    inner
                }
            }
        }
    }

    pub(super) fn paths_valid(&self) -> bool {
        let ok = |f: &String| !f.is_empty() && f.split('.').all(|s| !s.is_empty());
        match self {
            Pred::Cmp(_, f, _) | Pred::StartsWith(f, _) | Pred::Matches(f, _) => ok(f),
            Pred::HasFields(fs) => fs.iter().all(ok),
            Pred::And(ps) | Pred::Or(ps) => ps.iter().all(Pred::paths_valid),
            Pred::Not(p) | Pred::Nest(_, p) => p.paths_valid(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

pub(super) fn arb_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => (-3i64..4).prop_map(Value::from),
        1 => (-3i64..4).prop_map(|i| json!(i as f64 + 0.5)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        3 => "[ab\u{0}é日]{0,3}".prop_map(Value::String),
        1 => any::<String>().prop_map(Value::String),
    ]
    .boxed()
}

pub(super) fn arb_small() -> BoxedStrategy<Value> {
    arb_leaf()
        .prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                vec(("[abk]{0,2}", inner), 0..3)
                    .prop_map(|kvs| Value::Object(kvs.into_iter().collect())),
            ]
        })
        .boxed()
}

/// Depths around the limit, and far past it.
pub(super) fn arb_depth() -> BoxedStrategy<usize> {
    prop_oneof![
        4 => 0usize..6,
        1 => Just(MAX_DEPTH - 2),
        1 => Just(MAX_DEPTH - 1),
        1 => Just(MAX_DEPTH),
        1 => Just(MAX_DEPTH + 1),
        1 => Just(130),
        1 => Just(10_000),
    ]
    .boxed()
}

pub(super) fn arb_val() -> BoxedStrategy<Val> {
    prop_oneof![
        6 => arb_small().prop_map(Val::Small),
        1 => (arb_depth(), any::<u64>(), arb_leaf())
            .prop_map(|(depth, pattern, leaf)| Val::Chain { depth, pattern, leaf }),
    ]
    .boxed()
}

/// Keys of every type: valid ones from a small pool (so that writes collide), and nulls,
/// objects, too-long strings, arrays (with nulls inside), too-deep arrays.
pub(super) fn arb_key() -> BoxedStrategy<Val> {
    let pool = prop::sample::select(vec![
        json!(0),
        json!(1),
        json!(1.0),
        json!(-2),
        json!(2.5),
        json!(u64::MAX),
        json!(""),
        json!("a"),
        json!("a\u{0}"),
        json!("é"),
        json!(true),
        json!(false),
        json!([]),
        json!([1, "a"]),
        json!([[true]]),
    ]);
    prop_oneof![
        40 => pool.prop_map(Val::Small),
        1 => Just(Val::Small(Value::Null)),
        1 => Just(Val::Small(json!({"a": 1}))),
        1 => Just(Val::Small(json!([1, null]))),
        1 => Just(Val::Small(json!("x".repeat(1100)))),
        1 => (arb_depth(), arb_leaf().prop_filter("keyable", |l| !l.is_null()))
            .prop_map(|(depth, leaf)| Val::Chain { depth, pattern: 0, leaf }),
    ]
    .boxed()
}

pub(super) fn arb_field_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "n", "tags", "meta"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", "a.b", "é", " ", "id2"]).prop_map(String::from),
    ]
    .boxed()
}

pub(super) fn arb_doc() -> BoxedStrategy<Doc> {
    let fields = vec(
        (
            arb_field_name(),
            prop_oneof![
                5 => arb_val(),
                1 => vec(arb_small(), 0..5).prop_map(|v| Val::Small(Value::Array(v))),
                1 => arb_small().prop_map(|v| Val::Small(json!({"tag": v}))),
            ],
        ),
        0..4,
    );
    prop_oneof![
        12 => (prop::option::weighted(0.9, arb_key()), fields)
            .prop_map(|(key, fields)| Doc { key, fields, bare: None }),
        1 => arb_val().prop_map(|b| Doc { key: None, fields: vec![], bare: Some(b) }),
    ]
    .boxed()
}

pub(super) fn arb_path() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(vec!["a", "b", "n", "tags", "meta.tag", "a.k"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", "a..b", ".a", "missing"]).prop_map(String::from),
    ]
    .boxed()
}

pub(super) fn arb_spec() -> BoxedStrategy<Spec> {
    prop_oneof![
        3 => arb_path().prop_map(Spec::Field),
        1 => (arb_path(), arb_path()).prop_map(|(a, b)| Spec::Compound(a, b)),
        2 => arb_path().prop_map(Spec::Multi),
    ]
    .boxed()
}

pub(super) fn arb_name() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(vec!["ia", "ib", "ic"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", "bad name", "é", "id"]).prop_map(String::from),
        1 => Just("x".repeat(65)),
    ]
    .boxed()
}

pub(super) fn arb_table_name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => Just("t".to_string()),
        2 => Just("u".to_string()),
        1 => prop::sample::select(vec!["", "t/x", "ü", "__remodel_catalog"]).prop_map(String::from),
        1 => Just("y".repeat(65)),
    ]
    .boxed()
}

pub(super) fn arb_pred() -> BoxedStrategy<Pred> {
    let leaf = prop_oneof![
        6 => (any::<u8>(), arb_path(), arb_val()).prop_map(|(o, f, v)| Pred::Cmp(o, f, v)),
        1 => vec(arb_path(), 0..3).prop_map(Pred::HasFields),
        1 => (arb_path(), "[ab]{0,2}").prop_map(|(f, p)| Pred::StartsWith(f, p)),
        1 => (arb_path(), prop::sample::select(vec!["^a", "(", "b+$", "[z-a]"]))
            .prop_map(|(f, p)| Pred::Matches(f, p.to_string())),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Pred::And),
            vec(inner.clone(), 0..3).prop_map(Pred::Or),
            inner.clone().prop_map(|p| Pred::Not(Box::new(p))),
            (arb_depth(), inner).prop_map(|(n, p)| Pred::Nest(n, Box::new(p))),
        ]
    })
    .boxed()
}

pub(super) fn arb_op() -> BoxedStrategy<Op> {
    prop_oneof![
        12 => vec(arb_doc(), 1..4).prop_map(Op::Insert),
        3 => (arb_key(), prop_oneof![
                4 => vec((arb_field_name(), arb_val()), 0..3).prop_map(|kvs| {
                    // Built as an object description; too-deep values stay descriptions.
                    Val::Small(Value::Object(kvs.iter()
                        .filter(|(_, v)| v.depth() <= 3)
                        .map(|(k, v)| (k.clone(), v.build())).collect()))
                }),
                1 => arb_val(),
            ]).prop_map(|(k, p)| Op::Update(k, p)),
        2 => (arb_key(), arb_doc()).prop_map(|(k, d)| Op::Replace(k, d)),
        2 => arb_key().prop_map(Op::Delete),
        3 => arb_pred().prop_map(Op::Filter),
        1 => arb_table_name().prop_map(Op::CreateTable),
        2 => Just(Op::CreateTable("t".into())),
        1 => prop::sample::select(vec!["t", "u", "u", "", "t/x", "__remodel_catalog"])
            .prop_map(|n| Op::DropTable(n.to_string())),
        2 => (arb_name(), arb_spec()).prop_map(|(n, s)| Op::CreateIndex(n, s)),
        1 => arb_name().prop_map(Op::DropIndex),
        1 => (arb_name(), arb_spec(), vec(arb_doc(), 1..6))
            .prop_map(|(n, s, d)| Op::IndexDuringWrites(n, s, d)),
        1 => (arb_name(), arb_spec()).prop_map(|(n, s)| Op::DropDuringBuild(n, s)),
        1 => vec(arb_doc(), 1..8).prop_map(Op::DropTableDuringWrites),
        1 => Just(Op::Reopen),
    ]
    .boxed()
}
